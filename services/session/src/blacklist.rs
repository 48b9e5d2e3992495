//! The access-token blacklist: Postgres is the durable truth, Redis the fast copy.
//!
//! Entries are of two kinds: `jti` (one access token) and `sid` (every access token of
//! a session). Each lives until the last token it covers has expired; Redis keys carry
//! that as their TTL.
//!
//! Redis can lose its data (a restart without persistence, `FLUSHALL`). A sentinel key
//! is written once Redis holds every unexpired entry; a lookup that finds no sentinel
//! asks Postgres instead and starts putting the entries back. A lookup that cannot
//! reach Redis asks Postgres too. So a revoked token is never accepted because Redis
//! forgot it. Redis can also lose only part of its data and keep the sentinel: a
//! restart from an append-only file that missed its last second, a failover to a
//! replica that lagged. The sentinel therefore holds the `run_id` of the Redis
//! process that was made complete, and every poll compares it with the current
//! one: another process means another history, so the sentinel is dropped and the
//! copy made again. Lookups may trust the old copy for up to one poll (about half a
//! second) after such a restart, and a Redis that refuses `INFO` cannot be checked.
//! Eviction is the one loss this cannot see: Redis must not evict keys
//! (`maxmemory-policy noeviction`, Redis's default).
//!
//! Replicas tell each other of new entries through Redis pub/sub (milliseconds), and
//! each also reads the entries stored in the last [`LOOKBACK_SECONDS`] from Postgres
//! every [`POLL_EVERY`], so an entry whose publication was lost (the storing replica
//! could not reach Redis, the subscriber was reconnecting) still reaches every
//! replica's watchers within about half a second. While those reads fail, a replica
//! does not vouch for its watchers' copies ([`Blacklist::vouches`]): their streams
//! end, and they reconnect for a snapshot (asking the service meanwhile).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use aia_db::PgPool;
use aia_db::redis::Pool as RedisPool;
use anyhow::Context;
use chrono::{DateTime, Utc};
use deadpool_redis::redis;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use tokio::sync::broadcast;

use crate::schema::revocations;

/// The sentinel's value where Redis does not say which process it is.
const UNNAMED: &str = "unnamed";

/// `jti:<uuid>:<expiry seconds>` or `sid:…`, as published.
fn parse_message(payload: &str) -> Option<Entry> {
    let mut parts = payload.splitn(3, ':');
    let kind = Kind::from_str(parts.next()?)?;
    let id = uuid::Uuid::parse_str(parts.next()?).ok()?;
    let until = DateTime::from_timestamp(parts.next()?.parse().ok()?, 0)?;
    Some((kind, id, until))
}

/// What an entry covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// One access token, by `jti`.
    Jti,
    /// Every access token of a session, by `sid`.
    Sid,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Jti => "jti",
            Self::Sid => "sid",
        }
    }

    fn from_str(s: &str) -> Option<Self> {
        match s {
            "jti" => Some(Self::Jti),
            "sid" => Some(Self::Sid),
            _ => None,
        }
    }
}

/// The blacklist.
#[derive(Clone)]
pub struct Blacklist {
    pg: PgPool,
    redis: RedisPool,
    prefix: String,
    rehydrating: Arc<AtomicBool>,
    /// New entries, for `WatchRevocations` streams of this process: those made here,
    /// those other replicas publish through Redis, and those read from Postgres.
    events: broadcast::Sender<Event>,
    /// When the last read of recent entries from Postgres succeeded (ms since the
    /// epoch).
    polled_ms: Arc<AtomicI64>,
}

/// How often each replica reads recent entries from Postgres.
pub const POLL_EVERY: Duration = Duration::from_millis(500);
/// How far back each read goes: entries committed late, a read or two that failed.
pub const LOOKBACK_SECONDS: i64 = 5;
/// How long after its last good read a replica still vouches for its watchers.
const VOUCH_FOR_MS: i64 = 1_500;

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// `clock_timestamp()`: when the statement runs, not when its transaction began
/// (`now()`), so that an entry written late in a long transaction is not dated
/// before the replicas' look-back.
fn statement_time() -> diesel::expression::SqlLiteral<diesel::sql_types::Timestamptz> {
    diesel::dsl::sql::<diesel::sql_types::Timestamptz>("clock_timestamp()")
}

/// What `WatchRevocations` streams are told.
#[derive(Debug, Clone)]
pub enum Event {
    /// A new entry.
    Revoked(Entry),
    /// Entries may have been missed (the Redis subscription was down): streams end so
    /// that gateways reconnect and load a fresh snapshot.
    Resync,
}

/// One blacklist entry: what it covers, which id, until when.
pub type Entry = (Kind, uuid::Uuid, DateTime<Utc>);

/// Entries a slow `WatchRevocations` stream may fall behind before it is ended.
const EVENT_BUFFER: usize = 4096;

impl Blacklist {
    /// A blacklist over these stores; Redis keys start with `prefix`.
    pub fn new(pg: PgPool, redis: RedisPool, prefix: String) -> Self {
        Self {
            pg,
            redis,
            prefix,
            rehydrating: Arc::new(AtomicBool::new(false)),
            events: broadcast::channel(EVENT_BUFFER).0,
            polled_ms: Arc::new(AtomicI64::new(now_ms())),
        }
    }

    /// Whether this replica has lately read the recent entries from Postgres, so that
    /// its watchers hold everything stored up to about half a second ago. Heartbeats
    /// are sent only while it does.
    pub fn vouches(&self) -> bool {
        now_ms() - AtomicI64::load(&self.polled_ms, Ordering::Acquire) <= VOUCH_FOR_MS
    }

    /// Entries stored (or extended) in the last [`LOOKBACK_SECONDS`], by the
    /// database's clock.
    async fn recent(&self) -> anyhow::Result<Vec<Entry>> {
        self.load(true).await.context("reading recent revocations")
    }

    /// The unexpired entries, all of them or (`recent`) those stored in the last
    /// [`LOOKBACK_SECONDS`], by the database's clock.
    async fn load(&self, recent: bool) -> anyhow::Result<Vec<Entry>> {
        let mut conn = aia_db::conn(&self.pg).await?;
        let mut query = revocations::table
            .select((revocations::kind, revocations::id, revocations::expires_at))
            .filter(diesel::dsl::sql::<diesel::sql_types::Bool>(
                "expires_at > now()",
            ))
            .into_boxed();
        if recent {
            query = query.filter(diesel::dsl::sql::<diesel::sql_types::Bool>(&format!(
                "revoked_at > now() - interval '{LOOKBACK_SECONDS} seconds'"
            )));
        }
        let rows: Vec<(String, uuid::Uuid, DateTime<Utc>)> = query.load(&mut conn).await?;
        Ok(rows
            .into_iter()
            .filter_map(|(kind, id, until)| Some((Kind::from_str(&kind)?, id, until)))
            .collect())
    }

    /// Reads recent entries from Postgres every [`POLL_EVERY`] and hands the ones not
    /// seen yet to this replica's watchers, until `shutdown`. After a gap longer than
    /// the look-back, watchers are told to resync (entries may have been missed).
    pub async fn poll_recent(self, shutdown: aia_telemetry::shutdown::CancellationToken) {
        // Entry -> (its expiry, the poll that saw it). Kept for twice the look-back in
        // polls (polls are never closer than POLL_EVERY, so that is at least twice the
        // look-back in time, by no clock but the database's).
        let mut seen: HashMap<(Kind, uuid::Uuid), (DateTime<Utc>, u64)> = HashMap::new();
        let keep_polls = u64::try_from(2 * LOOKBACK_SECONDS * 1000).unwrap_or(10_000)
            / u64::try_from(POLL_EVERY.as_millis()).unwrap_or(500).max(1);
        let mut poll = 0u64;
        let mut every = tokio::time::interval(POLL_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = every.tick() => {}
            }
            poll += 1;
            // The gap is measured between query starts: a slow iteration (Redis) must
            // not hide a window the queries did not cover.
            let started = now_ms();
            let entries = match self.recent().await {
                Ok(entries) => entries,
                Err(error) => {
                    if !failing {
                        tracing::warn!(
                            error = format!("{error:#}"),
                            "recent revocations not read; this replica's revocation streams end"
                        );
                    }
                    failing = true;
                    metrics::counter!("session_revocation_poll_failures_total").increment(1);
                    continue;
                }
            };
            failing = false;
            let gap_ms = started - AtomicI64::load(&self.polled_ms, Ordering::Acquire);
            if gap_ms > (LOOKBACK_SECONDS - 1) * 1000 {
                tracing::warn!(
                    gap_ms,
                    "recent revocations unread too long; watchers resync"
                );
                let _ = self.events.send(Event::Resync);
            }
            let mut new = Vec::new();
            for (kind, id, until) in entries {
                let unseen = seen
                    .get(&(kind, id))
                    .is_none_or(|(known_until, _)| *known_until < until);
                if unseen {
                    seen.insert((kind, id), (until, poll));
                    let _ = self.events.send(Event::Revoked((kind, id, until)));
                    new.push((kind, id, until));
                }
            }
            // The Redis copy too: the replica that stored an entry may have died before
            // copying it (or could not reach Redis), and lookups trust the copy while
            // its sentinel is there.
            // Bounded in time: the polls go on while Redis hangs.
            if !new.is_empty() {
                let copied = tokio::time::timeout(POLL_EVERY, self.copy_to_redis(&new)).await;
                if !matches!(copied, Ok(Ok(()))) {
                    tracing::warn!("recent revocations not copied to Redis");
                    let _ = tokio::time::timeout(POLL_EVERY, self.forget_sentinel()).await;
                }
            }
            // A sentinel made complete by another Redis process (a restart from its
            // append-only file, a failover) vouches for a history this one may not
            // have.
            if matches!(
                tokio::time::timeout(POLL_EVERY, self.sentinel_outlived_its_redis()).await,
                Ok(Ok(true))
            ) {
                tracing::warn!(
                    "Redis restarted or failed over since the blacklist was copied; copying it again"
                );
                metrics::counter!("session_blacklist_redis_changed_total").increment(1);
                let _ = tokio::time::timeout(POLL_EVERY, self.forget_sentinel()).await;
                self.start_rehydration();
            }
            // What fell out of the look-back cannot come back unless extended, which
            // gives it a new revoked_at.
            seen.retain(|_, (_, at)| poll - *at <= keep_polls);
            self.polled_ms.store(started, Ordering::Release);
        }
    }

    fn key(&self, kind: Kind, id: uuid::Uuid) -> String {
        aia_db::redis::key(&self.prefix, "bl", &format!("{}:{id}", kind.as_str()))
    }

    fn sentinel(&self) -> String {
        aia_db::redis::key(&self.prefix, "bl", "complete")
    }

    /// Adds an entry, durably first. Fails only if Postgres fails.
    pub async fn revoke(
        &self,
        kind: Kind,
        id: uuid::Uuid,
        until: DateTime<Utc>,
    ) -> anyhow::Result<()> {
        let mut conn = aia_db::conn(&self.pg).await?;
        Self::store_in(&mut conn, (kind, id, until))
            .await
            .context("storing a revocation")?;
        self.announce((kind, id, until)).await;
        Ok(())
    }

    /// Stores an entry in Postgres with `conn`, in whatever transaction it is in (a
    /// session's revocation and its entry commit together, or neither does); the
    /// caller then [`Blacklist::announce`]s it, after the commit. An entry already
    /// there keeps the later expiry.
    pub async fn store_in(
        conn: &mut diesel_async::AsyncPgConnection,
        (kind, id, until): Entry,
    ) -> diesel::QueryResult<()> {
        diesel::insert_into(revocations::table)
            .values((
                revocations::kind.eq(kind.as_str()),
                revocations::id.eq(id),
                revocations::expires_at.eq(until),
                revocations::revoked_at.eq(statement_time()),
            ))
            .on_conflict((revocations::kind, revocations::id))
            .do_update()
            .set((
                revocations::expires_at.eq(diesel::dsl::sql::<diesel::sql_types::Timestamptz>(
                    "GREATEST(session.revocations.expires_at, excluded.expires_at)",
                )),
                // Read again by the replicas' polls (see `poll_recent`).
                revocations::revoked_at.eq(statement_time()),
            ))
            .execute(conn)
            .await
            .map(|_| ())
    }

    /// Tells this replica's watchers, the other replicas and the Redis copy of an
    /// entry stored in Postgres (best effort: the replicas' polls of Postgres and the
    /// Redis sentinel cover what fails here).
    pub async fn announce(&self, (kind, id, until): Entry) {
        metrics::counter!("session_revocations_total", "kind" => kind.as_str()).increment(1);
        // No receiver is not an error: no gateway is watching.
        let _ = self.events.send(Event::Revoked((kind, id, until)));
        self.publish((kind, id, until)).await;
        if let Err(error) = self.copy_to_redis(&[(kind, id, until)]).await {
            // Redis now lacks an entry: drop the sentinel so lookups ask Postgres.
            tracing::warn!(
                error = format!("{error:#}"),
                "revocation not copied to Redis"
            );
            self.forget_sentinel().await;
        }
    }

    async fn copy_to_redis(
        &self,
        entries: &[(Kind, uuid::Uuid, DateTime<Utc>)],
    ) -> anyhow::Result<()> {
        let now = Utc::now();
        let mut pipe = redis::pipe();
        for &(kind, id, until) in entries {
            let ttl_ms = (until - now).num_milliseconds();
            if ttl_ms > 0 {
                pipe.cmd("SET")
                    .arg(self.key(kind, id))
                    .arg(1)
                    .arg("PX")
                    .arg(ttl_ms)
                    .ignore();
            }
        }
        let mut conn = self.redis.get().await.context("Redis connection")?;
        let () = pipe
            .query_async(&mut conn)
            .await
            .context("copying revocations to Redis")?;
        Ok(())
    }

    /// The `run_id` of the Redis process that answers, or [`UNNAMED`] where `INFO`
    /// is not allowed (an ACL without `+info`, a managed Redis that renamed it): the
    /// restart check is then off, and a partial loss goes unseen as before it
    /// existed (warned once).
    async fn redis_run_id(conn: &mut deadpool_redis::Connection) -> String {
        static WARNED: std::sync::Once = std::sync::Once::new();
        let info: Result<String, _> = redis::cmd("INFO").arg("server").query_async(conn).await;
        let run_id = info.ok().and_then(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("run_id:"))
                .map(|id| id.trim().to_owned())
        });
        run_id.unwrap_or_else(|| {
            WARNED.call_once(|| {
                tracing::warn!("Redis answers no INFO server: a restart that kept part of the blacklist copy cannot be noticed (allow +info)");
            });
            UNNAMED.to_owned()
        })
    }

    /// Whether a sentinel is there that another Redis process wrote.
    async fn sentinel_outlived_its_redis(&self) -> anyhow::Result<bool> {
        let mut conn = self.redis.get().await.context("Redis connection")?;
        let written: Option<String> = redis::cmd("GET")
            .arg(self.sentinel())
            .query_async(&mut conn)
            .await
            .context("reading the sentinel")?;
        let Some(written) = written else {
            return Ok(false);
        };
        let current = Self::redis_run_id(&mut conn).await;
        Ok(current != UNNAMED && written != current)
    }

    async fn forget_sentinel(&self) {
        if let Ok(mut conn) = self.redis.get().await {
            let _: Result<(), _> = redis::cmd("DEL")
                .arg(self.sentinel())
                .query_async(&mut conn)
                .await;
        }
    }

    /// Whether the token `jti` or its session `sid` is revoked.
    pub async fn is_revoked(&self, jti: uuid::Uuid, sid: uuid::Uuid) -> anyhow::Result<bool> {
        match self.lookup_redis(jti, sid).await {
            Ok(Some(revoked)) => Ok(revoked),
            Ok(None) => {
                // Redis lost its data: answer from Postgres and refill Redis.
                self.start_rehydration();
                self.lookup_postgres(jti, sid).await
            }
            Err(error) => {
                tracing::warn!(
                    error = format!("{error:#}"),
                    "Redis lookup failed; asking Postgres"
                );
                metrics::counter!("session_blacklist_fallback_total").increment(1);
                self.lookup_postgres(jti, sid).await
            }
        }
    }

    /// `Some(answer)` when Redis is complete, `None` when its sentinel is missing.
    async fn lookup_redis(&self, jti: uuid::Uuid, sid: uuid::Uuid) -> anyhow::Result<Option<bool>> {
        let mut conn = self.redis.get().await.context("Redis connection")?;
        let (jti_hit, sid_hit, complete): (bool, bool, bool) = redis::pipe()
            .exists(self.key(Kind::Jti, jti))
            .exists(self.key(Kind::Sid, sid))
            .exists(self.sentinel())
            .query_async(&mut conn)
            .await
            .context("EXISTS")?;
        if jti_hit || sid_hit {
            return Ok(Some(true));
        }
        Ok(complete.then_some(false))
    }

    async fn lookup_postgres(&self, jti: uuid::Uuid, sid: uuid::Uuid) -> anyhow::Result<bool> {
        let mut conn = aia_db::conn(&self.pg).await?;
        let hit = diesel::select(diesel::dsl::exists(
            revocations::table
                .filter(
                    (revocations::kind
                        .eq(Kind::Jti.as_str())
                        .and(revocations::id.eq(jti)))
                    .or(revocations::kind
                        .eq(Kind::Sid.as_str())
                        .and(revocations::id.eq(sid))),
                )
                .filter(revocations::expires_at.gt(Utc::now())),
        ))
        .get_result::<bool>(&mut conn)
        .await
        .context("looking up a revocation")?;
        Ok(hit)
    }

    /// Starts [`Blacklist::rehydrate`] in the background unless it is already running.
    pub fn start_rehydration(&self) {
        if self.rehydrating.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            match this.rehydrate().await {
                Ok(count) => tracing::info!(count, "blacklist copied back to Redis"),
                Err(error) => {
                    tracing::warn!(error = format!("{error:#}"), "blacklist rehydration failed")
                }
            }
            this.rehydrating.store(false, Ordering::Release);
        });
    }

    /// New entries from now on (those added through this process).
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    fn channel(&self) -> String {
        format!("{}bl:events", self.prefix)
    }

    /// Tells the other replicas (best effort: if Redis is down, their watchers resync
    /// when the subscription comes back).
    async fn publish(&self, (kind, id, until): Entry) {
        let message = format!("{}:{id}:{}", kind.as_str(), until.timestamp());
        let result: anyhow::Result<()> = async {
            let mut conn = self.redis.get().await.context("Redis connection")?;
            let _: i64 = redis::cmd("PUBLISH")
                .arg(self.channel())
                .arg(message)
                .query_async(&mut conn)
                .await
                .context("PUBLISH")?;
            Ok(())
        }
        .await;
        if let Err(error) = result {
            tracing::warn!(
                error = format!("{error:#}"),
                "revocation not published to other replicas"
            );
        }
    }

    /// Relays what other replicas publish to this replica's watchers, until
    /// `shutdown`. Each (re)subscription starts with a resync, since messages published
    /// while unsubscribed are lost.
    pub async fn relay_from_replicas(
        self,
        redis_url: String,
        shutdown: aia_telemetry::shutdown::CancellationToken,
    ) {
        let mut backoff = std::time::Duration::from_millis(100);
        loop {
            let followed = tokio::select! {
                result = self.follow_channel(&redis_url) => result,
                () = shutdown.cancelled() => return,
            };
            if let Err(error) = followed {
                tracing::warn!(
                    error = format!("{error:#}"),
                    "revocation channel down; resubscribing"
                );
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = shutdown.cancelled() => return,
            }
            backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
        }
    }

    async fn follow_channel(&self, redis_url: &str) -> anyhow::Result<()> {
        use futures::StreamExt;
        let client = aia_db::redis::client(redis_url)?;
        let mut pubsub = client
            .get_async_pubsub()
            .await
            .context("Redis pub/sub connection")?;
        pubsub
            .subscribe(self.channel())
            .await
            .context("SUBSCRIBE")?;
        let _ = self.events.send(Event::Resync);
        let mut messages = pubsub.into_on_message();
        while let Some(message) = messages.next().await {
            let Ok(payload) = message.get_payload::<String>() else {
                continue;
            };
            if let Some(entry) = parse_message(&payload) {
                let _ = self.events.send(Event::Revoked(entry));
            }
        }
        anyhow::bail!("subscription ended")
    }

    /// Every entry that still matters, from the durable store.
    pub async fn unexpired(&self) -> anyhow::Result<Vec<Entry>> {
        self.load(false).await.context("loading revocations")
    }

    /// Copies every unexpired entry from Postgres to Redis, then marks Redis complete.
    pub async fn rehydrate(&self) -> anyhow::Result<usize> {
        // The process the copy goes to, named before it starts: if Redis restarts
        // meanwhile, the sentinel names the process before and the next poll copies
        // again.
        let run_id = {
            let mut conn = self.redis.get().await.context("Redis connection")?;
            Self::redis_run_id(&mut conn).await
        };
        let entries = self.unexpired().await?;
        for chunk in entries.chunks(1000) {
            self.copy_to_redis(chunk).await?;
        }
        let mut conn = self.redis.get().await.context("Redis connection")?;
        let () = redis::cmd("SET")
            .arg(self.sentinel())
            .arg(run_id)
            .query_async(&mut conn)
            .await
            .context("marking the blacklist complete")?;
        metrics::counter!("session_blacklist_rehydrations_total").increment(1);
        Ok(entries.len())
    }
}
