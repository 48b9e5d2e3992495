//! The hash chain over `audit.events` (see `migrations/*_audit_hash_chain`): each row
//! stores `hash = SHA-256(prev_hash || canonical row)`, set by an insert trigger
//! under an advisory lock. Verification recomputes a range in the database
//! (`audit.verify_chain`) and names the first row that does not hold.

use aia_db::PgPool;
use anyhow::Context;
use diesel::sql_types::{BigInt, Nullable, Text};
use diesel_async::RunQueryDsl;

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
    diesel::sql_query("SELECT checked, broken_seq, reason FROM audit.verify_chain($1, $2)")
        .bind::<BigInt, _>(from_seq)
        .bind::<BigInt, _>(to_seq)
        .get_result(&mut conn)
        .await
        .context("verifying the audit chain")
}
