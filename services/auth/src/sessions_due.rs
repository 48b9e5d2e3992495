//! Sessions a password change or reset must end, until the session service has
//! ended them (`auth.session_ends_due`).
//!
//! The row is written in the password's own transaction
//! ([`crate::users::UserStore::set_password`]); the request then asks session to end
//! the sessions and deletes the row. When that call fails the request answers 503
//! (the password did change) and the row stays: [`spawn`] retries every row older
//! than [`GRACE`], every [`EVERY`], in order, each row by one replica at a time
//! (`FOR UPDATE SKIP LOCKED`). Refreshing needs the session service too, so an old
//! session cannot refresh while the retry cannot reach it either.
//!
//! A retry ends every session of the user but the kept one, those opened after the
//! change included: a login made during the session outage may have to sign in
//! again (erring towards ending a session, never towards keeping one).

use std::time::Duration;

use aia_db::PgPool;
use aia_proto::session::v1 as session;
use aia_proto::session::v1::session_service_client::SessionServiceClient;
use aia_telemetry::otel::TracedChannel;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use tokio_util::sync::CancellationToken;

use crate::error::AuthError;
use crate::schema::session_ends_due;

/// How often the retry looks for rows left behind.
pub const EVERY: Duration = Duration::from_secs(2);
/// How old a row must be before the retry takes it (the request that wrote it is
/// still calling session until then).
pub const GRACE: Duration = Duration::from_secs(5);
/// Rows retried per round.
const BATCH: i64 = 20;

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
    pool: PgPool,
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
            match retry(&pool, &session).await {
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

/// One round: the rows older than [`GRACE`] this replica could lock, until session
/// refuses one; how many were done.
async fn retry(
    pool: &PgPool,
    session: &SessionServiceClient<TracedChannel>,
) -> anyhow::Result<usize> {
    let cutoff = chrono::Utc::now()
        - chrono::Duration::from_std(GRACE).unwrap_or(chrono::Duration::seconds(5));
    let mut conn = aia_db::conn(pool).await?;
    conn.transaction::<_, anyhow::Error, _>(async |conn| {
        let due: Vec<(i64, uuid::Uuid, Option<uuid::Uuid>, String)> = session_ends_due::table
            .filter(session_ends_due::requested_at.lt(cutoff))
            .order(session_ends_due::id)
            .limit(BATCH)
            .for_update()
            .skip_locked()
            .select((
                session_ends_due::id,
                session_ends_due::user_id,
                session_ends_due::keep_session_id,
                session_ends_due::reason,
            ))
            .load(conn)
            .await?;
        let mut ended = 0;
        for (id, user_id, keep, reason) in due {
            let keep = keep.map(|k| k.to_string());
            if let Err(error) = end(session, user_id, keep.as_deref(), &reason, None, None).await {
                // Session is still unreachable: the rest waits for the next round,
                // the rows done so far are committed.
                tracing::warn!(error = ?error, "sessions a password change must end are still due");
                break;
            }
            diesel::delete(session_ends_due::table.find(id))
                .execute(conn)
                .await?;
            ended += 1;
        }
        Ok(ended)
    })
    .await
}
