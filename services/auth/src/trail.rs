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

/// How often an open admin stream re-checks its token (as the gateway does): a
/// logout, a disabled or demoted admin ends it within this long.
const RECHECK: std::time::Duration = std::time::Duration::from_secs(5);

/// An error of audit's, as auth answers it: audit's own refusals (a bad filter, a
/// bad cursor, a read too costly) go through as they are, message and all; an
/// unreachable audit is 503.
fn from_audit(status: tonic::Status, what: &'static str) -> AuthError {
    match status.code() {
        code @ (tonic::Code::InvalidArgument
        | tonic::Code::OutOfRange
        | tonic::Code::DeadlineExceeded) => AuthError::Audit {
            code,
            message: status.message().to_owned(),
        },
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

    /// Audit's stream, for as long as its token is an admin's: it ends when the
    /// token expires, within [`RECHECK`] of the token's revocation or of its holder
    /// no longer being an active admin (or of that becoming unknowable), and when
    /// auth shuts down (rather than holding up the shutdown).
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
        let (auth, token) = (self.clone(), req.access_token);
        let over = async move {
            let expiry = tokio::time::sleep(std::time::Duration::from_secs(left));
            tokio::pin!(expiry);
            let mut every =
                tokio::time::interval_at(tokio::time::Instant::now() + RECHECK, RECHECK);
            loop {
                tokio::select! {
                    () = &mut expiry => return,
                    () = auth.shutdown.cancelled() => return,
                    _ = every.tick() => {
                        if auth.admin(&token).await.is_err() {
                            return;
                        }
                    }
                }
            }
        };
        Ok(Box::pin(events.take_until(over)))
    }
}

#[cfg(test)]
mod tests {
    use super::from_audit;

    /// Audit's own refusals reach the caller as audit worded them ("narrow its
    /// filters"); audit unreachable is 503.
    #[test]
    fn audits_refusals_pass_through_and_its_absence_is_unavailable() {
        for (code, message) in [
            (
                tonic::Code::DeadlineExceeded,
                "the query ran too long: narrow its filters",
            ),
            (tonic::Code::InvalidArgument, "cursor: not one of ours"),
        ] {
            let passed =
                tonic::Status::from(from_audit(tonic::Status::new(code, message), "audit.Query"));
            assert_eq!((passed.code(), passed.message()), (code, message));
        }
        let down = tonic::Status::from(from_audit(
            tonic::Status::unavailable("connection refused"),
            "audit.Query",
        ));
        assert_eq!(down.code(), tonic::Code::Unavailable);
    }
}
