//! The hash chain over `audit.events` (see `migrations/*_audit_hash_chain`): each row
//! stores `hash = SHA-256(prev_hash || canonical row)`, set by an insert trigger
//! under an advisory lock. Verification recomputes a range in the database
//! (`audit.verify_chain`) and names the first row that does not hold.

use aia_db::PgPool;
use anyhow::Context;
use diesel::sql_types::{BigInt, Nullable, Text, Timestamptz};
use diesel_async::{AsyncConnection, RunQueryDsl};

/// What a verification found.
#[derive(Debug, Clone, PartialEq, Eq, diesel::QueryableByName)]
pub struct ChainReport {
    /// Events checked.
    #[diesel(sql_type = BigInt)]
    pub checked: i64,
    /// The first event whose link or hash does not hold, if any.
    #[diesel(sql_type = Nullable<BigInt>)]
    pub broken_seq: Option<i64>,
    /// Why it does not.
    #[diesel(sql_type = Nullable<Text>)]
    pub reason: Option<String>,
}

/// Verifies the events with `from_seq <= seq <= to_seq`.
pub async fn verify(pool: &PgPool, from_seq: i64, to_seq: i64) -> anyhow::Result<ChainReport> {
    let mut conn = aia_db::conn(pool).await?;
    conn.transaction::<_, diesel::result::Error, _>(async |conn| {
        // The whole chain, every account's events.
        aia_db::scope::set(conn, aia_db::scope::Scope::Service).await?;
        diesel::sql_query("SELECT checked, broken_seq, reason FROM audit.verify_chain($1, $2)")
            .bind::<BigInt, _>(from_seq)
            .bind::<BigInt, _>(to_seq)
            .get_result(conn)
            .await
    })
    .await
    .context("verifying the audit chain")
}

/// What a pruning did.
#[derive(Debug, Clone, PartialEq, Eq, diesel::QueryableByName)]
pub struct Pruned {
    /// Events removed.
    #[diesel(sql_type = BigInt)]
    pub pruned: i64,
    /// The anchor kept (the last removed event's seq), if any were removed.
    #[diesel(sql_type = Nullable<BigInt>)]
    pub anchor_seq: Option<i64>,
}

/// Removes the events recorded before `before` and keeps an anchor, so the rest of
/// the chain still verifies (`audit.prune`; the newest event always stays).
pub async fn prune(pool: &PgPool, before: chrono::DateTime<chrono::Utc>) -> anyhow::Result<Pruned> {
    let mut conn = aia_db::conn(pool).await?;
    // The floor-keeping wrapper (30 days), the only retention the service's role may run.
    diesel::sql_query("SELECT pruned, anchor_seq FROM audit.prune_retained($1)")
        .bind::<Timestamptz, _>(before)
        .get_result(&mut conn)
        .await
        .context("pruning the audit trail")
}

/// Prunes events older than `keep`, every hour, until `shutdown`.
pub fn spawn_retention(
    pool: PgPool,
    keep: std::time::Duration,
    shutdown: aia_telemetry::shutdown::CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(3600));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = shutdown.cancelled() => return,
            }
            let keep = chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::MAX);
            let before = chrono::Utc::now()
                .checked_sub_signed(keep)
                .unwrap_or_default();
            match prune(&pool, before).await {
                Ok(p) if p.pruned > 0 => {
                    metrics::counter!("audit_events_pruned_total")
                        .increment(p.pruned.unsigned_abs());
                    tracing::info!(
                        pruned = p.pruned,
                        anchor_seq = p.anchor_seq,
                        "audit retention"
                    );
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(error = format!("{error:#}"), "audit retention failed")
                }
            }
            // Usage counts follow the same retention.
            if let Err(error) = crate::usage::prune(&pool, before).await {
                tracing::warn!(error = format!("{error:#}"), "usage retention failed");
            }
        }
    })
}
