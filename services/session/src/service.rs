//! `aia.session.v1.SessionService`.

use aia_audit_client::AuditClient;
use aia_proto::audit::v1::Outcome;
use aia_proto::common::v1::ClientInfo;
use aia_proto::session::v1::session_service_server::SessionService;
use aia_proto::session::v1::{
    CreateSessionRequest, CreateSessionResponse, IsRevokedRequest, IsRevokedResponse,
    ListSessionsRequest, ListSessionsResponse, Revocation, RevocationBatch, RevocationKind,
    RevokeAccessTokenRequest, RevokeAccessTokenResponse, RevokeRefreshTokenRequest,
    RevokeRefreshTokenResponse, RevokeRequest, RevokeResponse, RevokeUserSessionsRequest,
    RevokeUserSessionsResponse, RotateRequest, RotateResponse, SessionInfo,
    WatchRevocationsRequest,
};
use aia_telemetry::grpc::unavailable;
use aia_telemetry::tls::authorize;
use chrono::{DateTime, Utc};
use tonic::{Request, Response, Status};

use crate::blacklist::{Blacklist, Entry, Event, Kind};
use crate::refresh_token::RefreshToken;
use crate::store::{Client, Rotation, SessionStore};
use tokio::sync::{broadcast, mpsc};

/// The session service's state.
#[derive(Clone)]
pub struct Sessions {
    /// Ends `WatchRevocations` streams when the service stops.
    pub(crate) shutdown: aia_telemetry::shutdown::CancellationToken,
    pub(crate) store: SessionStore,
    pub(crate) blacklist: Blacklist,
    pub(crate) audit: AuditClient,
    /// Longest life of an access token: how long a revoked session stays blacklisted.
    pub(crate) access_ttl: chrono::Duration,
}

/// The one message for every refused refresh token: unknown, rotated, expired and
/// revoked look alike to the caller.
const INVALID_REFRESH: &str = "invalid refresh token";

fn uuid_arg(value: &str, field: &'static str) -> Result<uuid::Uuid, Status> {
    uuid::Uuid::parse_str(value)
        .map_err(|_| Status::invalid_argument(format!("{field} must be a UUID")))
}

/// The authentication methods a session may record (RFC 8176); none means `pwd`.
fn amr_arg(amr: Vec<String>) -> Result<Vec<String>, Status> {
    const KNOWN: [&str; 2] = ["pwd", "otp"];
    if amr.is_empty() {
        return Ok(vec!["pwd".to_owned()]);
    }
    let duplicated = amr.iter().enumerate().any(|(i, m)| amr[..i].contains(m));
    if duplicated || amr.iter().any(|m| !KNOWN.contains(&m.as_str())) {
        return Err(Status::invalid_argument("amr: only \"pwd\" and \"otp\""));
    }
    Ok(amr)
}

fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

fn client_of(info: Option<&ClientInfo>) -> Client {
    info.map(|c| Client {
        ip: c.ip.chars().take(64).collect(),
        user_agent: c.user_agent.chars().take(512).collect(),
    })
    .unwrap_or_default()
}

/// How often an idle `WatchRevocations` stream gets an empty batch.
const HEARTBEAT: std::time::Duration = std::time::Duration::from_millis(500);
/// Entries per snapshot batch (well under gRPC's 4 MiB message limit).
const SNAPSHOT_BATCH: usize = 1000;

type RevocationStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<RevocationBatch, Status>> + Send>>;

fn revocation(entry: &Entry) -> Revocation {
    let (kind, id, until) = entry;
    let kind = match kind {
        Kind::Jti => RevocationKind::Jti,
        Kind::Sid => RevocationKind::Sid,
    };
    Revocation {
        kind: kind.into(),
        id: id.to_string(),
        expires_at: Some(timestamp(*until)),
    }
}

/// Feeds one `WatchRevocations` stream: the snapshot, then live entries and
/// heartbeats, until the client goes away, falls behind, or the service stops.
async fn feed(
    snapshot: Vec<Entry>,
    blacklist: crate::blacklist::Blacklist,
    mut live: broadcast::Receiver<Event>,
    tx: mpsc::Sender<Result<RevocationBatch, Status>>,
    shutdown: aia_telemetry::shutdown::CancellationToken,
) {
    let batches = snapshot
        .chunks(SNAPSHOT_BATCH)
        .map(|c| c.iter().map(revocation).collect::<Vec<_>>());
    let mut batches: Vec<Vec<Revocation>> = batches.collect();
    if batches.is_empty() {
        batches.push(Vec::new());
    }
    let last = batches.len() - 1;
    for (i, revocations) in batches.into_iter().enumerate() {
        let batch = RevocationBatch {
            revocations,
            snapshot_complete: i == last,
        };
        if tx.send(Ok(batch)).await.is_err() {
            return;
        }
    }
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    loop {
        let batch = tokio::select! {
            event = live.recv() => match event {
                Ok(Event::Revoked(entry)) => RevocationBatch { revocations: vec![revocation(&entry)], snapshot_complete: true },
                Ok(Event::Resync) => {
                    let _ = tx.send(Err(Status::unavailable("revocations may have been missed; reconnect"))).await;
                    return;
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "a revocation watcher fell behind; ending its stream");
                    let _ = tx.send(Err(Status::aborted("fell behind; reconnect for a fresh snapshot"))).await;
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            // A heartbeat says "your copy is current": only while this replica has read
            // the recent entries from Postgres.
            // Nor may live entries keep the watcher's copy fresh then (each batch
            // does): the stream ends, and the watcher reconnects for a snapshot from
            // Postgres, asking the session service meanwhile.
            _ = heartbeat.tick() => {
                if !blacklist.vouches() {
                    let _ = tx.send(Err(Status::unavailable("this replica cannot read new revocations; reconnect"))).await;
                    return;
                }
                RevocationBatch { revocations: Vec::new(), snapshot_complete: true }
            }
            () = tx.closed() => return,
            () = shutdown.cancelled() => return,
        };
        if tx.send(Ok(batch)).await.is_err() {
            return;
        }
    }
}

impl Sessions {
    /// When the blacklist entry of a session revoked at `now` may go: past every
    /// access token the session may have been issued (see [`SESSION_ENTRY_MARGIN`]).
    fn session_entry_until(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        past_leeway(now + self.access_ttl + SESSION_ENTRY_MARGIN)
    }

    /// Revokes a session and blacklists every access token of it, for as long as one
    /// could still be valid. `None` if `user_id` has no such session.
    /// Revokes the session (and blacklists its access tokens). `event` is written in
    /// the revocation's transaction if this call revokes it; if not (already revoked,
    /// or no such session), it is recorded on its own.
    async fn end_session(
        &self,
        session_id: uuid::Uuid,
        user_id: uuid::Uuid,
        reason: &str,
        event: Option<aia_audit_client::EventBuilder<'_>>,
    ) -> Result<Option<bool>, Status> {
        let now = Utc::now();
        let until = self.session_entry_until(now);
        let (revoked, unwritten) = self
            .store
            .revoke(session_id, user_id, reason, now, until, event)
            .await
            .map_err(unavailable)?;
        let recorded = match unwritten {
            Some(event) => event.emit().await.map_err(unrecorded),
            None => Ok(()),
        };
        let Some(revoked) = revoked else {
            return recorded.map(|()| None);
        };
        // Announced whether or not a lone event could be written: the revocation
        // is stored.
        self.blacklist
            .announce((Kind::Sid, session_id, until))
            .await;
        recorded?;
        Ok(Some(revoked))
    }
}

/// An event that could not be written to the outbox: the call answers
/// `Unavailable` rather than happen unrecorded (DESIGN §4); what it changed stays
/// changed, and a retry is harmless.
fn unrecorded(error: aia_audit_client::Unrecorded) -> Status {
    unavailable(error.into())
}

/// How much longer than its newest possible token a session's blacklist entry lives.
/// A revocation reads the clock before it waits for a connection and the session's
/// lock (the pool waits up to 5 s), and auth signs a rotation's access token after
/// this service answered the rotation: the session's last token may be dated a little
/// after the revocation's `now`.
const SESSION_ENTRY_MARGIN: chrono::Duration = chrono::Duration::seconds(60);

/// When a blacklist entry for tokens that expire by `expiry` may go: that long plus
/// the verifiers' leeway ([`aia_tokens::LEEWAY_SECONDS`]), during which they still
/// accept a token past its `exp`.
fn past_leeway(expiry: DateTime<Utc>) -> DateTime<Utc> {
    expiry
        + chrono::Duration::from_std(std::time::Duration::from_secs(aia_tokens::LEEWAY_SECONDS))
            .unwrap_or_default()
}

#[tonic::async_trait]
impl SessionService for Sessions {
    type WatchRevocationsStream = RevocationStream;

    #[tracing::instrument(level = "debug", skip_all)]
    async fn watch_revocations(
        &self,
        request: Request<WatchRevocationsRequest>,
    ) -> Result<Response<Self::WatchRevocationsStream>, Status> {
        // The gateway checks requests with the copy, auth its ValidateToken answers.
        authorize(&request, &["auth", "gateway"])?;
        // Subscribe before reading the snapshot, so nothing falls in between (an entry
        // in both is harmless).
        let live = self.blacklist.subscribe();
        let snapshot = self.blacklist.unexpired().await.map_err(unavailable)?;
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(feed(
            snapshot,
            self.blacklist.clone(),
            live,
            tx,
            self.shutdown.clone(),
        ));
        metrics::counter!("session_revocation_watchers_total").increment(1);
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn create_session(
        &self,
        request: Request<CreateSessionRequest>,
    ) -> Result<Response<CreateSessionResponse>, Status> {
        authorize(&request, &["auth"])?;
        let req = request.into_inner();
        let user_id = uuid_arg(&req.user_id, "user_id")?;
        let amr = amr_arg(req.amr)?;
        let created = self
            .store
            .create(user_id, &client_of(req.client.as_ref()), &amr, Utc::now())
            .await
            .map_err(unavailable)?;
        metrics::counter!("session_created_total").increment(1);
        Ok(Response::new(CreateSessionResponse {
            session_id: created.session_id.to_string(),
            refresh_token: created.token.into_string(),
            refresh_expires_at: Some(timestamp(created.expires_at)),
        }))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn rotate(
        &self,
        request: Request<RotateRequest>,
    ) -> Result<Response<RotateResponse>, Status> {
        authorize(&request, &["auth"])?;
        let req = request.into_inner();
        let rotation = match RefreshToken::parse(&req.refresh_token) {
            Some(token) => self
                .store
                .rotate(&token, Utc::now(), |session_id, user_id| {
                    self.audit
                        .event("session.refresh", Outcome::Success)
                        .actor(user_id.to_string())
                        .subject(session_id.to_string())
                        .client(req.client.as_ref())
                        .details(serde_json::json!({"replayed_within_grace": false}))
                })
                .await
                .map_err(unavailable)?,
            None => Rotation::Refused,
        };
        let (rotated, replayed) = match rotation {
            Rotation::Rotated(rotated) => (rotated, false),
            Rotation::Replayed(rotated) => (rotated, true),
            Rotation::Reused {
                session_id,
                user_id,
            } => {
                // Two holders of one token: end the family, access tokens included.
                metrics::counter!("session_refresh_total", "outcome" => "reuse").increment(1);
                tracing::warn!(%session_id, "refresh token reuse: revoking the session");
                let event = self
                    .audit
                    .event("session.refresh_reuse", Outcome::Failure)
                    .actor(user_id.to_string())
                    .subject(session_id.to_string())
                    .client(req.client.as_ref())
                    .details(serde_json::json!({"risk": "high", "action": "session_revoked"}));
                self.end_session(session_id, user_id, "refresh_token_reuse", Some(event))
                    .await?;
                return Err(Status::unauthenticated(INVALID_REFRESH));
            }
            Rotation::Refused => {
                metrics::counter!("session_refresh_total", "outcome" => "refused").increment(1);
                self.audit
                    .event("session.refresh", Outcome::Failure)
                    .client(req.client.as_ref())
                    .details(serde_json::json!({"reason": "invalid_refresh_token"}))
                    .emit()
                    .await
                    .map_err(unrecorded)?;
                return Err(Status::unauthenticated(INVALID_REFRESH));
            }
        };
        let outcome = if replayed { "replayed" } else { "rotated" };
        metrics::counter!("session_refresh_total", "outcome" => outcome).increment(1);
        if replayed {
            // No change to record with: the rotation's own event was written with it.
            self.audit
                .event("session.refresh", Outcome::Success)
                .actor(rotated.user_id.to_string())
                .subject(rotated.session_id.to_string())
                .client(req.client.as_ref())
                .details(serde_json::json!({"replayed_within_grace": true}))
                .emit()
                .await
                .map_err(unrecorded)?;
        }
        Ok(Response::new(RotateResponse {
            session_id: rotated.session_id.to_string(),
            user_id: rotated.user_id.to_string(),
            refresh_token: rotated.token.into_string(),
            refresh_expires_at: Some(timestamp(rotated.expires_at)),
            issued_at: Some(timestamp(rotated.issued_at)),
            amr: rotated.amr,
        }))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn revoke(
        &self,
        request: Request<RevokeRequest>,
    ) -> Result<Response<RevokeResponse>, Status> {
        // Auth alone: it verified the token of the user it names (a user ending one
        // of their sessions goes through auth's EndOwnSession).
        authorize(&request, &["auth"])?;
        let req = request.into_inner();
        let session_id = uuid_arg(&req.session_id, "session_id")?;
        let user_id = uuid_arg(&req.user_id, "user_id")?;
        // Parse everything before changing anything.
        let jti = match req.access_jti.as_str() {
            "" => None,
            jti => Some(uuid_arg(jti, "access_jti")?),
        };
        let now = Utc::now();
        let logout = |already_revoked: bool| {
            self.audit
                .event("session.logout", Outcome::Success)
                .actor(user_id.to_string())
                .subject(session_id.to_string())
                .client(req.client.as_ref())
                .details(serde_json::json!({"already_revoked": already_revoked}))
        };
        // Written with the revocation; a logout of a session already ended has no
        // change to go with and is recorded below.
        let sid_until = self.session_entry_until(now);
        let revoked = self
            .store
            .revoke(
                session_id,
                user_id,
                "logout",
                now,
                sid_until,
                Some(logout(false)),
            )
            .await
            .map_err(unavailable)?
            .0
            .ok_or_else(|| Status::not_found("no such session for this user"))?;
        self.blacklist
            .announce((Kind::Sid, session_id, sid_until))
            .await;
        if let Some(jti) = jti {
            let until = past_leeway(
                req.access_expires_at
                    .and_then(|t| DateTime::from_timestamp(t.seconds, 0))
                    .map_or(now + self.access_ttl, |exp| exp.min(now + self.access_ttl)),
            );
            self.blacklist
                .revoke(Kind::Jti, jti, until)
                .await
                .map_err(unavailable)?;
        }
        if !revoked {
            logout(true).emit().await.map_err(unrecorded)?;
        }
        Ok(Response::new(RevokeResponse { revoked }))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn revoke_access_token(
        &self,
        request: Request<RevokeAccessTokenRequest>,
    ) -> Result<Response<RevokeAccessTokenResponse>, Status> {
        authorize(&request, &["auth"])?;
        let req = request.into_inner();
        let jti = uuid_arg(&req.jti, "jti")?;
        let now = Utc::now();
        // A token is accepted for the verifier's leeway past its `exp`: one revoked
        // in that time is blacklisted too, and every entry lasts that much longer.
        let until = past_leeway(
            req.expires_at
                .and_then(|t| DateTime::from_timestamp(t.seconds, 0))
                .map_or(now + self.access_ttl, |exp| exp.min(now + self.access_ttl)),
        );
        if until > now {
            self.blacklist
                .revoke(Kind::Jti, jti, until)
                .await
                .map_err(unavailable)?;
        }
        self.audit
            .event("token.revoked", Outcome::Success)
            .actor(req.user_id.clone())
            .subject(jti.to_string())
            .client(req.client.as_ref())
            .details(serde_json::json!({"token_type": "access_token"}))
            .emit()
            .await
            .map_err(unrecorded)?;
        Ok(Response::new(RevokeAccessTokenResponse {}))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn revoke_refresh_token(
        &self,
        request: Request<RevokeRefreshTokenRequest>,
    ) -> Result<Response<RevokeRefreshTokenResponse>, Status> {
        authorize(&request, &["auth"])?;
        let req = request.into_inner();
        let Some(token) = RefreshToken::parse(&req.refresh_token) else {
            return Ok(Response::new(RevokeRefreshTokenResponse { revoked: false }));
        };
        let Some((session_id, user_id)) =
            self.store.session_of(&token).await.map_err(unavailable)?
        else {
            return Ok(Response::new(RevokeRefreshTokenResponse { revoked: false }));
        };
        let revoked = self
            .end_session(session_id, user_id, "token_revoked", None)
            .await?
            .unwrap_or(false);
        self.audit
            .event("token.revoked", Outcome::Success)
            .actor(user_id.to_string())
            .subject(session_id.to_string())
            .client(req.client.as_ref())
            .details(serde_json::json!({"token_type": "refresh_token", "session_ended": revoked}))
            .emit()
            .await
            .map_err(unrecorded)?;
        Ok(Response::new(RevokeRefreshTokenResponse { revoked }))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn list_sessions(
        &self,
        request: Request<ListSessionsRequest>,
    ) -> Result<Response<ListSessionsResponse>, Status> {
        // Auth alone (ListOwnSessions), which read the user from their verified token.
        authorize(&request, &["auth"])?;
        let user_id = uuid_arg(&request.into_inner().user_id, "user_id")?;
        let rows = self
            .store
            .live_sessions(user_id, Utc::now())
            .await
            .map_err(unavailable)?;
        Ok(Response::new(ListSessionsResponse {
            sessions: rows
                .into_iter()
                .map(|r| SessionInfo {
                    id: r.id.to_string(),
                    created_at: Some(timestamp(r.created_at)),
                    last_used_at: Some(timestamp(r.last_used_at)),
                    expires_at: Some(timestamp(r.expires_at)),
                    ip: r.ip,
                    user_agent: r.user_agent,
                })
                .collect(),
        }))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn revoke_user_sessions(
        &self,
        request: Request<RevokeUserSessionsRequest>,
    ) -> Result<Response<RevokeUserSessionsResponse>, Status> {
        // Auth alone: a user's own request comes through EndOwnSessions, with their
        // verified token; a password change, reset or admin action from auth itself.
        authorize(&request, &["auth"])?;
        let req = request.into_inner();
        let user_id = uuid_arg(&req.user_id, "user_id")?;
        let keep = match req.except_session_id.as_str() {
            "" => None,
            id => Some(uuid_arg(id, "except_session_id")?),
        };
        let actor = match req.actor_id.as_str() {
            "" => user_id,
            id => uuid_arg(id, "actor_id")?,
        };
        let reason = match req.reason.as_str() {
            "" => "revoke_all",
            r if r.len() <= 64 && r.chars().all(|c| c.is_ascii_lowercase() || c == '_') => r,
            _ => {
                return Err(Status::invalid_argument(
                    "reason must be lower_snake_case, at most 64 characters",
                ));
            }
        };
        // One transaction: every session and its blacklist entry, with the event, or
        // nothing (a retry then finds them all still live). Sessions that ended
        // lately are included: their last access tokens may still be valid.
        let now = Utc::now();
        let until = self.session_entry_until(now);
        let since = now - self.access_ttl;
        let client = req.client.as_ref();
        let (ended, live) = self
            .store
            .revoke_all(user_id, keep, reason, (now, since), until, |count| {
                self.audit
                    .event("session.revoke_all", Outcome::Success)
                    .actor(actor.to_string())
                    .subject(user_id.to_string())
                    .client(client)
                    .details(serde_json::json!({"reason": reason, "revoked": count, "kept_current": keep.is_some()}))
            })
            .await
            .map_err(unavailable)?;
        for id in &ended {
            self.blacklist.announce((Kind::Sid, *id, until)).await;
        }
        let revoked = u32::try_from(live).unwrap_or(u32::MAX);
        Ok(Response::new(RevokeUserSessionsResponse { revoked }))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn is_revoked(
        &self,
        request: Request<IsRevokedRequest>,
    ) -> Result<Response<IsRevokedResponse>, Status> {
        authorize(&request, &["auth", "gateway"])?;
        let req = request.into_inner();
        let jti = uuid_arg(&req.jti, "jti")?;
        let sid = uuid_arg(&req.session_id, "session_id")?;
        let revoked = self
            .blacklist
            .is_revoked(jti, sid)
            .await
            .map_err(unavailable)?;
        Ok(Response::new(IsRevokedResponse { revoked }))
    }
}
