//! Reads of the audit trail for the gateway's routes: a user's own security activity,
//! and for admins the search, the summary, the live stream and the usage counts.
//! Auth verifies the caller's access token (an admin's is re-checked in the database,
//! as for the other admin RPCs) and asks audit under its own identity; audit answers
//! reads to auth alone, so the gateway's certificate cannot read the trail, which
//! holds every user's addresses and activity.

use std::pin::Pin;

use aia_proto::audit::v1 as audit;
use aia_proto::auth::v1::{
    AdminQueryEventsRequest, AdminQueryUsageRequest, AdminStreamEventsRequest,
    AdminSummarizeEventsRequest, QueryOwnEventsRequest,
};
use futures::{Stream, StreamExt};

use crate::error::AuthError;
use crate::service::Auth;

/// The event families a user sees about their own account: logins (failed ones
/// included: someone tried their password), sessions, credential and MFA changes,
/// and what admins did to the account.
pub const OWN_FAMILIES: [&str; 3] = ["auth.", "session.", "admin."];

/// Audit's stream of stored events, as auth passes it on.
pub type EventStream =
    Pin<Box<dyn Stream<Item = Result<audit::StoredEvent, tonic::Status>> + Send>>;

/// An error of audit's, as auth answers it: audit's own refusals (a bad filter, a
/// bad cursor) go through as they are; an unreachable audit is 503.
fn from_audit(status: tonic::Status, what: &'static str) -> AuthError {
    match status.code() {
        tonic::Code::InvalidArgument | tonic::Code::OutOfRange => {
            AuthError::AuditRefused(status.message().to_owned())
        }
        _ => AuthError::from_upstream(status, what),
    }
}

impl Auth {
    pub(crate) async fn query_own_events(
        &self,
        req: QueryOwnEventsRequest,
    ) -> Result<audit::QueryResponse, AuthError> {
        let holder = self.holder(&req.access_token).await?;
        let query = audit::QueryRequest {
            involving: holder.user.id.to_string(),
            type_prefixes: OWN_FAMILIES.iter().map(|f| (*f).to_owned()).collect(),
            limit: req.limit,
            cursor: req.cursor,
            ..audit::QueryRequest::default()
        };
        Ok(self
            .audit_reads
            .clone()
            .query(query)
            .await
            .map_err(|s| from_audit(s, "audit.Query"))?
            .into_inner())
    }

    pub(crate) async fn admin_query_events(
        &self,
        req: AdminQueryEventsRequest,
    ) -> Result<audit::QueryResponse, AuthError> {
        self.require_admin(&req.access_token).await?;
        Ok(self
            .audit_reads
            .clone()
            .query(req.query.unwrap_or_default())
            .await
            .map_err(|s| from_audit(s, "audit.Query"))?
            .into_inner())
    }

    pub(crate) async fn admin_summarize_events(
        &self,
        req: AdminSummarizeEventsRequest,
    ) -> Result<audit::SummaryResponse, AuthError> {
        self.require_admin(&req.access_token).await?;
        Ok(self
            .audit_reads
            .clone()
            .summary(req.summary.unwrap_or_default())
            .await
            .map_err(|s| from_audit(s, "audit.Summary"))?
            .into_inner())
    }

    pub(crate) async fn admin_query_usage(
        &self,
        req: AdminQueryUsageRequest,
    ) -> Result<audit::QueryUsageResponse, AuthError> {
        self.require_admin(&req.access_token).await?;
        Ok(self
            .audit_reads
            .clone()
            .query_usage(req.query.unwrap_or_default())
            .await
            .map_err(|s| from_audit(s, "audit.QueryUsage"))?
            .into_inner())
    }

    /// Audit's stream, ended when the admin's token expires (the gateway also ends
    /// it within seconds of the token's revocation).
    pub(crate) async fn admin_stream_events(
        &self,
        req: AdminStreamEventsRequest,
    ) -> Result<EventStream, AuthError> {
        let expires_at = self.admin(&req.access_token).await?.expires_at;
        let events = self
            .audit_reads
            .clone()
            .stream(req.stream.unwrap_or_default())
            .await
            .map_err(|s| from_audit(s, "audit.Stream"))?
            .into_inner();
        let left = u64::try_from(expires_at - chrono::Utc::now().timestamp()).unwrap_or(0);
        Ok(Box::pin(events.take_until(tokio::time::sleep(
            std::time::Duration::from_secs(left),
        ))))
    }
}
