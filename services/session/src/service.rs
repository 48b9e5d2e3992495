//! `aia.session.v1.SessionService`.

use aia_audit_client::AuditClient;
use aia_proto::audit::v1::Outcome;
use aia_proto::session::v1::session_service_server::SessionService;
use aia_proto::session::v1::{
    ClientInfo, CreateSessionRequest, CreateSessionResponse, IsRevokedRequest, IsRevokedResponse,
    RevokeRequest, RevokeResponse, RotateRequest, RotateResponse,
};
use aia_telemetry::grpc::unavailable;
use chrono::{DateTime, Utc};
use tonic::{Request, Response, Status};

use crate::blacklist::{Blacklist, Kind};
use crate::refresh_token::RefreshToken;
use crate::store::{Client, SessionStore};

/// The session service's state.
#[derive(Clone)]
pub struct Sessions {
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

fn request_id(info: Option<&ClientInfo>) -> &str {
    info.map_or("", |c| c.request_id.as_str())
}

#[tonic::async_trait]
impl SessionService for Sessions {
    #[tracing::instrument(level = "debug", skip_all)]
    async fn create_session(
        &self,
        request: Request<CreateSessionRequest>,
    ) -> Result<Response<CreateSessionResponse>, Status> {
        let req = request.into_inner();
        let user_id = uuid_arg(&req.user_id, "user_id")?;
        let created = self
            .store
            .create(user_id, &client_of(req.client.as_ref()), Utc::now())
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
        let req = request.into_inner();
        let client = client_of(req.client.as_ref());
        let request_id = request_id(req.client.as_ref());
        let rotated = match RefreshToken::parse(&req.refresh_token) {
            Some(token) => self
                .store
                .rotate(&token, Utc::now())
                .await
                .map_err(unavailable)?,
            None => None,
        };
        let Some(rotated) = rotated else {
            metrics::counter!("session_refresh_total", "outcome" => "refused").increment(1);
            self.audit
                .event("session.refresh", Outcome::Failure)
                .client(&client.ip, &client.user_agent, request_id)
                .details(serde_json::json!({"reason": "invalid_refresh_token"}))
                .emit();
            return Err(Status::unauthenticated(INVALID_REFRESH));
        };
        metrics::counter!("session_refresh_total", "outcome" => "rotated").increment(1);
        self.audit
            .event("session.refresh", Outcome::Success)
            .actor(rotated.user_id.to_string())
            .subject(rotated.session_id.to_string())
            .client(&client.ip, &client.user_agent, request_id)
            .emit();
        Ok(Response::new(RotateResponse {
            session_id: rotated.session_id.to_string(),
            user_id: rotated.user_id.to_string(),
            refresh_token: rotated.token.into_string(),
            refresh_expires_at: Some(timestamp(rotated.expires_at)),
        }))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn revoke(
        &self,
        request: Request<RevokeRequest>,
    ) -> Result<Response<RevokeResponse>, Status> {
        let req = request.into_inner();
        let session_id = uuid_arg(&req.session_id, "session_id")?;
        let user_id = uuid_arg(&req.user_id, "user_id")?;
        let now = Utc::now();
        let revoked = self
            .store
            .revoke(session_id, user_id, "logout", now)
            .await
            .map_err(unavailable)?
            .ok_or_else(|| Status::not_found("no such session for this user"))?;
        // Every access token of the session, for as long as one could still be valid.
        self.blacklist
            .revoke(Kind::Sid, session_id, now + self.access_ttl)
            .await
            .map_err(unavailable)?;
        if !req.access_jti.is_empty() {
            let jti = uuid_arg(&req.access_jti, "access_jti")?;
            let until = req
                .access_expires_at
                .and_then(|t| DateTime::from_timestamp(t.seconds, 0))
                .map_or(now + self.access_ttl, |exp| exp.min(now + self.access_ttl));
            self.blacklist
                .revoke(Kind::Jti, jti, until)
                .await
                .map_err(unavailable)?;
        }
        let client = client_of(req.client.as_ref());
        self.audit
            .event("session.logout", Outcome::Success)
            .actor(user_id.to_string())
            .subject(session_id.to_string())
            .client(
                &client.ip,
                &client.user_agent,
                request_id(req.client.as_ref()),
            )
            .details(serde_json::json!({"already_revoked": !revoked}))
            .emit();
        Ok(Response::new(RevokeResponse { revoked }))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn is_revoked(
        &self,
        request: Request<IsRevokedRequest>,
    ) -> Result<Response<IsRevokedResponse>, Status> {
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
