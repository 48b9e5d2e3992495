//! The scheduled cleanup of a service's schema: every `every`, one replica (the one
//! that gets a Postgres advisory lock) calls `<schema>.cleanup(keep)` (see migration
//! 000013) and logs and counts what it removed (`cleanup_removed_total{table}`).

use std::time::Duration;

use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Bool, Double, Text};
use diesel_async::{AsyncConnection, RunQueryDsl};
use tokio_util::sync::CancellationToken;

use crate::PgPool;

#[derive(QueryableByName, Debug, PartialEq, Eq)]
struct Removed {
    #[diesel(sql_type = Text)]
    what: String,
    #[diesel(sql_type = BigInt)]
    removed: i64,
}

#[derive(QueryableByName)]
struct Locked {
    #[diesel(sql_type = Bool)]
    locked: bool,
}

/// Runs `<schema>.cleanup(keep)` once, unless another replica is running it; the rows
/// removed per table (empty when skipped).
pub async fn run_once(
    pool: &PgPool,
    schema: &'static str,
    keep: Duration,
) -> anyhow::Result<Vec<(String, i64)>> {
    let mut conn = crate::conn(pool).await?;
    let removed = conn
        .transaction::<_, diesel::result::Error, _>(async |conn| {
            let locked = diesel::sql_query(
                "SELECT pg_try_advisory_xact_lock(hashtext('aia cleanup ' || $1)) AS locked",
            )
            .bind::<Text, _>(schema)
            .get_result::<Locked>(conn)
            .await?
            .locked;
            if !locked {
                return Ok(Vec::new());
            }
            // Expired rows of every user.
            crate::scope::set(conn, crate::scope::Scope::Service).await?;
            diesel::sql_query(format!(
                "SELECT what, removed FROM {schema}.cleanup(make_interval(secs => $1))"
            ))
            .bind::<Double, _>(keep.as_secs_f64())
            .load::<Removed>(conn)
            .await
        })
        .await?;
    Ok(removed.into_iter().map(|r| (r.what, r.removed)).collect())
}

/// Calls [`run_once`] every `every` until `shutdown`.
pub fn spawn(
    pool: PgPool,
    schema: &'static str,
    every: Duration,
    keep: Duration,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = shutdown.cancelled() => return,
            }
            match run_once(&pool, schema, keep).await {
                Ok(removed) => {
                    for (table, n) in removed.into_iter().filter(|(_, n)| *n > 0) {
                        metrics::counter!("cleanup_removed_total", "table" => format!("{schema}.{table}"))
                            .increment(n.unsigned_abs());
                        tracing::info!(schema, table, removed = n, "cleanup");
                    }
                }
                Err(error) => {
                    tracing::warn!(schema, error = format!("{error:#}"), "cleanup failed")
                }
            }
        }
    })
}
