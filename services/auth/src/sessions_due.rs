//! Sessions a password change or reset must end, until the session service has
//! ended them (`auth.session_ends_due`).
//!
//! The row is written in the password's own transaction
//! ([`crate::users::UserStore::set_password`]); the request then asks session to end
//! the sessions and deletes the row. When that call fails the request still answers
//! (the password did change; `sessions_ended` is 0) and the row stays: [`spawn`]
//! retries every row whose `attempt_after` has passed (15 s after it was written),
//! every [`EVERY`], one row at a time under a lease ([`LEASE`]): a row is claimed in
//! a short transaction, session is called outside it, and the row is deleted once
//! session ended the sessions. A replica that dies holding a row delays it by the
//! lease, never loses it. Refreshing needs the session service too, so an old
//! session cannot refresh while the retry cannot reach it either.
//!
//! A retry ends every session of the user but the kept one, those opened after the
//! change included: a login made during the session outage may have to sign in
//! again (erring towards ending a session, never towards keeping one).

use std::time::Duration;

use aia_proto::session::v1 as session;
use aia_proto::session::v1::session_service_client::SessionServiceClient;
use aia_telemetry::otel::TracedChannel;
use tokio_util::sync::CancellationToken;

use crate::error::AuthError;
use crate::users::UserStore;

/// How often the retry looks for rows left behind.
pub const EVERY: Duration = Duration::from_secs(2);
/// How long a retry holds a row it claimed.
pub const LEASE: Duration = Duration::from_secs(30);
/// Rows retried per round.
const BATCH: usize = 20;

/// Asks session to end every session of `user_id` but `keep`; the number that were
/// live.
pub(crate) async fn end(
    session: &SessionServiceClient<TracedChannel>,
    user_id: uuid::Uuid,
    keep: Option<&str>,
    reason: &str,
    client: Option<aia_proto::common::v1::ClientInfo>,
    by_admin: Option<uuid::Uuid>,
) -> Result<u32, AuthError> {
    Ok(session
        .clone()
        .revoke_user_sessions(session::RevokeUserSessionsRequest {
            user_id: user_id.to_string(),
            except_session_id: keep.unwrap_or_default().to_owned(),
            reason: reason.to_owned(),
            client,
            actor_id: by_admin.map(|id| id.to_string()).unwrap_or_default(),
        })
        .await
        .map_err(|s| AuthError::from_upstream(s, "session.RevokeUserSessions"))?
        .into_inner()
        .revoked)
}

/// Retries the rows left behind until `shutdown`.
pub fn spawn(
    users: UserStore,
    session: SessionServiceClient<TracedChannel>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = shutdown.cancelled() => return,
            }
            match retry(&users, &session).await {
                Ok(0) => {}
                Ok(ended) => {
                    metrics::counter!("auth_session_ends_retried_total").increment(ended as u64);
                    tracing::info!(
                        ended,
                        "ended the sessions of password changes whose first try failed"
                    );
                }
                Err(error) => tracing::warn!(
                    error = format!("{error:#}"),
                    "sessions a password change must end are still due; retrying"
                ),
            }
        }
    })
}

/// One round: claims due rows one at a time (by the database's clock) until none is
/// left, [`BATCH`] are done or session refuses one; how many were done.
async fn retry(
    users: &UserStore,
    session: &SessionServiceClient<TracedChannel>,
) -> anyhow::Result<usize> {
    let mut ended = 0;
    while ended < BATCH {
        let Some(due) = users.claim_session_ends_due(LEASE).await? else {
            break;
        };
        let keep = due.keep_session_id.map(|k| k.to_string());
        if let Err(error) = end(
            session,
            due.user_id,
            keep.as_deref(),
            &due.reason,
            None,
            None,
        )
        .await
        {
            // Session is still unreachable: this row waits out its lease, the rest
            // the next round.
            tracing::warn!(error = ?error, "sessions a password change must end are still due");
            break;
        }
        users.session_ends_done(due.id).await?;
        ended += 1;
    }
    Ok(ended)
}
