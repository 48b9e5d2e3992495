//! An in-memory copy of the session service's blacklist, kept current by
//! `session.WatchRevocations`, so that a revocation check costs no network round
//! trip. The gateway checks every request with it, and auth every `ValidateToken`.
//!
//! The copy is trusted only while it is fresh: a message (a revocation or a
//! heartbeat, sent every 500 ms) arrived within `stale_after` (default 2 s) and the
//! current stream's snapshot is complete. Otherwise [`RevocationCache::check`] answers
//! `None` and the caller asks `session.IsRevoked`, failing closed if that fails too.
//! Entries are dropped once the tokens they cover have expired.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use aia_proto::session::v1::session_service_client::SessionServiceClient;
use aia_proto::session::v1::{Revocation, RevocationKind, WatchRevocationsRequest};
use aia_telemetry::otel::TracedChannel;
use aia_telemetry::shutdown::CancellationToken;

/// Revoked ids with the expiry (seconds since the epoch) of the last token they cover.
#[derive(Debug, Default)]
struct Set {
    jti: HashMap<uuid::Uuid, i64>,
    sid: HashMap<uuid::Uuid, i64>,
}

impl Set {
    fn insert(&mut self, revocation: &Revocation) {
        let Ok(id) = uuid::Uuid::parse_str(&revocation.id) else {
            return;
        };
        let until = revocation
            .expires_at
            .as_ref()
            .map_or(i64::MAX, |t| t.seconds);
        let map = match RevocationKind::try_from(revocation.kind) {
            Ok(RevocationKind::Jti) => &mut self.jti,
            Ok(RevocationKind::Sid) => &mut self.sid,
            _ => return,
        };
        let entry = map.entry(id).or_insert(until);
        *entry = (*entry).max(until);
    }

    fn prune(&mut self, now: i64) {
        self.jti.retain(|_, until| *until > now);
        self.sid.retain(|_, until| *until > now);
    }

    /// Adds `other`'s entries, each keeping the later expiry.
    fn absorb(&mut self, other: Set) {
        for (mine, theirs) in [(&mut self.jti, other.jti), (&mut self.sid, other.sid)] {
            for (id, until) in theirs {
                let entry = mine.entry(id).or_insert(until);
                *entry = (*entry).max(until);
            }
        }
    }
}

/// The in-memory blacklist.
#[derive(Debug)]
pub struct RevocationCache {
    set: RwLock<Set>,
    /// Whether the current stream delivered its whole snapshot.
    synced: AtomicBool,
    /// When the last message was applied, in ms since `epoch`.
    last_message_ms: AtomicU64,
    epoch: Instant,
    stale_after: Duration,
}

impl RevocationCache {
    /// An empty, not yet trusted cache.
    pub fn new(stale_after: Duration) -> Self {
        Self {
            set: RwLock::new(Set::default()),
            synced: AtomicBool::new(false),
            last_message_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            stale_after,
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_message_ms.store(ms, Ordering::Release);
    }

    fn fresh(&self) -> bool {
        let last = Duration::from_millis(self.last_message_ms.load(Ordering::Acquire));
        self.synced.load(Ordering::Acquire)
            && self.epoch.elapsed().saturating_sub(last) < self.stale_after
    }

    /// `Some(revoked)` when the copy is fresh, `None` when the caller must ask the
    /// session service.
    pub fn check(&self, jti: uuid::Uuid, sid: uuid::Uuid) -> Option<bool> {
        if !self.fresh() {
            return None;
        }
        let set = self.set.read().ok()?;
        Some(set.jti.contains_key(&jti) || set.sid.contains_key(&sid))
    }

    /// Records a revocation this process has just made, so that its own next check
    /// sees it without waiting for the stream (read-your-writes). The stream brings
    /// the same entry anyway; an entry keeps the later of the two expiries.
    pub fn insert(&self, revocation: &Revocation) {
        if let Ok(mut set) = self.set.write() {
            set.insert(revocation);
        }
    }

    /// Records that this process has just ended session `sid`, whose presented token
    /// expires at `exp` (seconds since the epoch): [`RevocationCache::insert`] of
    /// the session's revocation, for the logout paths of auth and the gateway. Kept
    /// for the verifiers' leeway past `exp`, while the token is still accepted.
    pub fn session_ended(&self, sid: &str, exp: i64) {
        let leeway = i64::try_from(aia_tokens::LEEWAY_SECONDS).unwrap_or(i64::MAX);
        self.insert(&Revocation {
            kind: RevocationKind::Sid.into(),
            id: sid.to_owned(),
            expires_at: Some(prost_types::Timestamp {
                seconds: exp.saturating_add(leeway),
                nanos: 0,
            }),
        });
    }

    /// Takes a stream's complete snapshot in, and trusts the copy again. The
    /// snapshot joins what is there rather than replacing it: revocations are never
    /// undone, and a snapshot read before this process's own latest revocation (a
    /// logout made while the stream was reconnecting, [`RevocationCache::insert`])
    /// would otherwise drop it, and the logged-out token pass until the stream
    /// brought it again. Expired entries go.
    fn load_snapshot(&self, snapshot: Set) {
        if let Ok(mut current) = self.set.write() {
            current.absorb(snapshot);
            current.prune(chrono::Utc::now().timestamp());
        }
        self.synced.store(true, Ordering::Release);
        self.touch();
    }

    fn apply(&self, revocations: &[Revocation]) {
        if !revocations.is_empty()
            && let Ok(mut set) = self.set.write()
        {
            for r in revocations {
                set.insert(r);
            }
        }
        self.touch();
    }

    fn prune(&self) {
        let now = chrono::Utc::now().timestamp();
        if let Ok(mut set) = self.set.write() {
            set.prune(now);
        }
    }
}

/// A cache kept current from the session service at `session_url` until `shutdown`
/// (a task of its own, on a channel of its own: the stream lives long, so HTTP/2
/// keep-alive instead of a per-call timeout).
pub fn spawn_following(
    session_url: &str,
    tls: Option<&aia_telemetry::tls::TlsMaterial>,
    stale_after: Duration,
    shutdown: CancellationToken,
) -> anyhow::Result<Arc<RevocationCache>> {
    use anyhow::Context;
    let channel = aia_telemetry::tls::endpoint(session_url, tls, "session")
        .context("SESSION_GRPC_URL")?
        .http2_keep_alive_interval(Duration::from_secs(1))
        .keep_alive_timeout(Duration::from_secs(2))
        .connect_lazy();
    let cache = Arc::new(RevocationCache::new(stale_after));
    tokio::spawn(watch(
        cache.clone(),
        SessionServiceClient::new(aia_telemetry::otel::traced(channel)),
        shutdown,
    ));
    Ok(cache)
}

/// Keeps `cache` current until `shutdown`: watches, and reconnects with backoff when
/// the stream ends, fails or stalls.
async fn watch(
    cache: std::sync::Arc<RevocationCache>,
    session: SessionServiceClient<TracedChannel>,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let outcome = tokio::select! {
            outcome = follow(&cache, session.clone()) => outcome,
            () = shutdown.cancelled() => return,
        };
        cache.synced.store(false, Ordering::Release);
        match outcome {
            Ok(()) => backoff = Duration::from_millis(50),
            Err(error) => tracing::warn!(
                error = format!("{error:#}"),
                "revocation stream down; reconnecting"
            ),
        }
        metrics::counter!("revocation_stream_reconnects_total").increment(1);
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = shutdown.cancelled() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

/// Follows one stream until it ends. Ok(()) if it had delivered its snapshot.
async fn follow(
    cache: &RevocationCache,
    mut session: SessionServiceClient<TracedChannel>,
) -> anyhow::Result<()> {
    let mut stream = session
        .watch_revocations(WatchRevocationsRequest {})
        .await?
        .into_inner();
    let mut snapshot: Option<Set> = Some(Set::default());
    let mut last_prune = Instant::now();
    loop {
        // A silent stream is a dead one: heartbeats come every 500 ms.
        let message = tokio::time::timeout(cache.stale_after, stream.message())
            .await
            .map_err(|_| anyhow::anyhow!("no message for {:?}", cache.stale_after))??;
        let Some(batch) = message else {
            anyhow::ensure!(snapshot.is_none(), "stream ended before its snapshot");
            return Ok(());
        };
        match snapshot.as_mut() {
            Some(set) => {
                for r in &batch.revocations {
                    set.insert(r);
                }
                if batch.snapshot_complete {
                    cache.load_snapshot(snapshot.take().unwrap_or_default());
                    tracing::info!("revocation snapshot loaded");
                }
            }
            None => cache.apply(&batch.revocations),
        }
        if last_prune.elapsed() > Duration::from_secs(10) {
            cache.prune();
            last_prune = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn revocation(kind: RevocationKind, id: uuid::Uuid, until: i64) -> Revocation {
        Revocation {
            kind: kind.into(),
            id: id.to_string(),
            expires_at: Some(prost_types::Timestamp {
                seconds: until,
                nanos: 0,
            }),
        }
    }

    /// A logout made here while the stream reconnected stays revoked when the
    /// snapshot, read before it, arrives.
    #[test]
    fn a_snapshot_older_than_a_local_revocation_keeps_it() {
        let cache = RevocationCache::new(Duration::from_secs(60));
        let (jti, sid) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
        let later = chrono::Utc::now().timestamp() + 600;
        cache.session_ended(&sid.to_string(), later);
        let mut snapshot = Set::default();
        let other = uuid::Uuid::new_v4();
        snapshot.insert(&revocation(RevocationKind::Jti, other, later));
        // And an entry already expired, which goes.
        let expired = uuid::Uuid::new_v4();
        snapshot.insert(&revocation(RevocationKind::Jti, expired, 1));
        cache.load_snapshot(snapshot);
        assert_eq!(cache.check(jti, sid), Some(true));
        assert_eq!(cache.check(other, uuid::Uuid::new_v4()), Some(true));
        assert_eq!(cache.check(expired, uuid::Uuid::new_v4()), Some(false));
    }

    #[test]
    fn an_unsynced_or_stale_cache_is_not_trusted() {
        let cache = RevocationCache::new(Duration::from_millis(0));
        let (a, b) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
        assert_eq!(cache.check(a, b), None);
        cache.load_snapshot(Set::default());
        // stale_after of zero: stale at once.
        assert_eq!(cache.check(a, b), None);
        let cache = RevocationCache::new(Duration::from_secs(60));
        cache.load_snapshot(Set::default());
        assert_eq!(cache.check(a, b), Some(false));
    }

    #[test]
    fn a_revoked_session_covers_every_token_of_it() {
        let cache = RevocationCache::new(Duration::from_secs(60));
        cache.load_snapshot(Set::default());
        let (jti, sid) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
        let far = chrono::Utc::now().timestamp() + 600;
        cache.apply(&[revocation(RevocationKind::Sid, sid, far)]);
        assert_eq!(cache.check(jti, sid), Some(true));
        assert_eq!(cache.check(jti, uuid::Uuid::new_v4()), Some(false));
        cache.apply(&[revocation(RevocationKind::Jti, jti, far)]);
        assert_eq!(cache.check(jti, uuid::Uuid::new_v4()), Some(true));
    }

    #[test]
    fn expired_entries_are_pruned() {
        let cache = RevocationCache::new(Duration::from_secs(60));
        cache.load_snapshot(Set::default());
        let sid = uuid::Uuid::new_v4();
        cache.apply(&[revocation(
            RevocationKind::Sid,
            sid,
            chrono::Utc::now().timestamp() - 1,
        )]);
        cache.prune();
        assert_eq!(cache.check(uuid::Uuid::new_v4(), sid), Some(false));
    }
}
