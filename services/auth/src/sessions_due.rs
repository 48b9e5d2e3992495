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

use aia_db::PgPool;
use aia_proto::session::v1 as session;
use aia_proto::session::v1::session_service_client::SessionServiceClient;
use aia_telemetry::otel::TracedChannel;
use anyhow::Context;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use tokio_util::sync::CancellationToken;

use crate::error::AuthError;
use crate::schema::session_ends_due;

/// How often the retry looks for rows left behind.
pub const EVERY: Duration = Duration::from_secs(2);
/// How long a retry holds a row it claimed.
pub const LEASE: Duration = Duration::from_secs(30);
/// Rows retried per round.
const BATCH: usize = 20;

/// A row claimed for a retry.
#[derive(diesel::QueryableByName)]
struct Due {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    id: i64,
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    user_id: uuid::Uuid,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Uuid>)]
    keep_session_id: Option<uuid::Uuid>,
    #[diesel(sql_type = diesel::sql_types::Text)]
    reason: String,
}

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

/// One round: claims due rows one at a time (by the database's clock) until none is
/// left, [`BATCH`] are done or session refuses one; how many were done.
async fn retry(
    pool: &PgPool,
    session: &SessionServiceClient<TracedChannel>,
) -> anyhow::Result<usize> {
    let mut ended = 0;
    while ended < BATCH {
        let claimed: Option<Due> = {
            let mut conn = aia_db::conn(pool).await?;
            diesel::sql_query(
                "UPDATE auth.session_ends_due \
                 SET attempt_after = now() + make_interval(secs => $1) \
                 WHERE id = (SELECT id FROM auth.session_ends_due WHERE attempt_after <= now() \
                             ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED) \
                 RETURNING id, user_id, keep_session_id, reason",
            )
            .bind::<diesel::sql_types::Double, _>(LEASE.as_secs_f64())
            .get_result(&mut conn)
            .await
            .optional()
            .context("claiming sessions due")?
        };
        let Some(due) = claimed else {
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
        let mut conn = aia_db::conn(pool).await?;
        diesel::delete(session_ends_due::table.find(due.id))
            .execute(&mut conn)
            .await
            .context("clearing sessions due")?;
        ended += 1;
    }
    Ok(ended)
}
