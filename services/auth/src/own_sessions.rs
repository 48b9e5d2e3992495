//! A user's own sessions: list them, end one, end all or all but the current one.
//! Auth verifies the caller's access token ([`Auth::holder`]) and asks session under
//! its own identity; session answers these for auth alone, so the gateway's
//! certificate names no account: it cannot list, nor end, the sessions of a user
//! without a live token of theirs.

use aia_proto::auth::v1::{
    EndOwnSessionRequest, EndOwnSessionResponse, EndOwnSessionsRequest, EndOwnSessionsResponse,
    ListOwnSessionsRequest,
};
use aia_proto::session::v1 as session;

use crate::error::AuthError;
use crate::service::Auth;

impl Auth {
    pub(crate) async fn list_own_sessions(
        &self,
        req: ListOwnSessionsRequest,
    ) -> Result<session::ListSessionsResponse, AuthError> {
        let holder = self.holder(&req.access_token).await?;
        Ok(self
            .session
            .clone()
            .list_sessions(session::ListSessionsRequest {
                user_id: holder.user.id.to_string(),
            })
            .await
            .map_err(|s| AuthError::from_upstream(s, "session.ListSessions"))?
            .into_inner())
    }

    pub(crate) async fn end_own_session(
        &self,
        req: EndOwnSessionRequest,
    ) -> Result<EndOwnSessionResponse, AuthError> {
        let holder = self.holder(&req.access_token).await?;
        let session_id = uuid::Uuid::parse_str(&req.session_id)
            .map_err(|_| AuthError::NotFound)?
            .to_string();
        let revoked = self
            .session
            .clone()
            .revoke(session::RevokeRequest {
                session_id: session_id.clone(),
                access_jti: String::new(),
                access_expires_at: None,
                client: req.client,
                user_id: holder.user.id.to_string(),
            })
            .await
            .map_err(|s| match s.code() {
                // Not a session of this user's (or none at all): the same answer.
                tonic::Code::NotFound => AuthError::NotFound,
                _ => AuthError::from_upstream(s, "session.Revoke"),
            })?
            .into_inner()
            .revoked;
        // This replica's ValidateToken refuses the session from now on, before the
        // stream brings the entry; its tokens all expire within a lifetime.
        let ttl = i64::try_from(self.tokens.access_ttl.as_secs()).unwrap_or(i64::MAX);
        self.revocations.session_ended(
            &session_id,
            chrono::Utc::now().timestamp().saturating_add(ttl),
        );
        Ok(EndOwnSessionResponse { revoked })
    }

    pub(crate) async fn end_own_sessions(
        &self,
        req: EndOwnSessionsRequest,
    ) -> Result<EndOwnSessionsResponse, AuthError> {
        let holder = self.holder(&req.access_token).await?;
        let (keep, reason) = if req.keep_current {
            (Some(holder.session_id.as_str()), "revoke_others")
        } else {
            (None, "logout_all")
        };
        let revoked = self
            .end_sessions(holder.user.id, keep, reason, req.client, None)
            .await?;
        if !req.keep_current {
            self.revocations
                .session_ended(&holder.session_id, holder.expires_at);
        }
        Ok(EndOwnSessionsResponse { revoked })
    }
}
