//! The hash chain over `audit.events` (see `migrations/*_audit_hash_chain`): each row
//! stores `hash = SHA-256(prev_hash || canonical row)`, set by an insert trigger
//! under an advisory lock. Verification recomputes a range in the database
//! (`audit.verify_chain`) and names the first row that does not hold; a checkpoint
//! (an earlier head kept elsewhere) shows what the links cannot: a removed tail or a
//! chain recomputed by someone who can write the table.

use aia_db::PgPool;
use anyhow::Context;
use diesel::OptionalExtension;
use diesel::sql_types::{BigInt, Bytea, Nullable, Text, Timestamptz};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

/// An event the chain must still hold: the head of an earlier verification, kept
/// outside the database (a file, a ticket, another system's log). The links alone
/// cannot show events removed from the end of the chain, nor a chain that someone
/// who can write the table recomputed from an altered event on; a checkpoint does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The event's sequence number.
    pub seq: i64,
    /// Its hash.
    pub hash: [u8; 32],
}

impl std::fmt::Display for Checkpoint {
    /// `SEQ:HEX`, as `aia verify-audit-chain --checkpoint` takes it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.seq, hex::encode(self.hash))
    }
}

impl std::str::FromStr for Checkpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let malformed = || "a checkpoint is SEQ:HASH (a positive number, 64 hex digits)".to_owned();
        let (seq, hash) = s.split_once(':').ok_or_else(malformed)?;
        let seq = seq
            .parse::<i64>()
            .ok()
            .filter(|seq| *seq > 0)
            .ok_or_else(malformed)?;
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hash, &mut bytes).map_err(|_| malformed())?;
        Ok(Self { seq, hash: bytes })
    }
}

/// What a verification found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainReport {
    /// Events checked.
    pub checked: i64,
    /// The first event whose link or hash does not hold, or the checkpoint's event
    /// when the chain no longer holds it.
    pub broken_seq: Option<i64>,
    /// Why it does not.
    pub reason: Option<String>,
    /// The newest event checked, when everything held: the next checkpoint.
    pub head: Option<Checkpoint>,
    /// The checkpoint's event was removed by retention (an anchor at or after it), so
    /// only the anchors vouch for it.
    pub checkpoint_pruned: bool,
}

#[derive(diesel::QueryableByName)]
struct Links {
    #[diesel(sql_type = BigInt)]
    checked: i64,
    #[diesel(sql_type = Nullable<BigInt>)]
    broken_seq: Option<i64>,
    #[diesel(sql_type = Nullable<Text>)]
    reason: Option<String>,
}

#[derive(diesel::QueryableByName)]
struct Stored {
    #[diesel(sql_type = BigInt)]
    seq: i64,
    #[diesel(sql_type = Bytea)]
    hash: Vec<u8>,
}

/// How the chain stands towards a checkpoint.
enum Held {
    Yes,
    Pruned,
    No(&'static str),
}

/// Verifies the events with `from_seq <= seq <= to_seq`, and that the chain still
/// holds `checkpoint` (wherever it lies).
pub async fn verify(
    pool: &PgPool,
    from_seq: i64,
    to_seq: i64,
    checkpoint: Option<&Checkpoint>,
) -> anyhow::Result<ChainReport> {
    let mut conn = aia_db::conn(pool).await?;
    conn.transaction::<_, diesel::result::Error, _>(async |conn| {
        // The whole chain, every account's events.
        aia_db::scope::set(conn, aia_db::scope::Scope::Service).await?;
        // The head first, and the range up to it: events stored meanwhile are
        // neither checked nor named as the head.
        let head = diesel::sql_query(
            "SELECT seq, hash FROM audit.events WHERE seq BETWEEN $1 AND $2 ORDER BY seq DESC LIMIT 1",
        )
        .bind::<BigInt, _>(from_seq)
        .bind::<BigInt, _>(to_seq)
        .get_result::<Stored>(conn)
        .await
        .optional()?;
        let links: Links =
            diesel::sql_query("SELECT checked, broken_seq, reason FROM audit.verify_chain($1, $2)")
                .bind::<BigInt, _>(from_seq)
                .bind::<BigInt, _>(head.as_ref().map_or(to_seq, |head| head.seq))
                .get_result(conn)
                .await?;
        let mut report = ChainReport {
            checked: links.checked,
            broken_seq: links.broken_seq,
            reason: links.reason,
            head: None,
            checkpoint_pruned: false,
        };
        if report.broken_seq.is_some() {
            return Ok(report);
        }
        if let Some(checkpoint) = checkpoint {
            match held(conn, checkpoint).await? {
                Held::Yes => {}
                Held::Pruned => report.checkpoint_pruned = true,
                Held::No(reason) => {
                    report.broken_seq = Some(checkpoint.seq);
                    report.reason = Some(reason.to_owned());
                    return Ok(report);
                }
            }
        }
        report.head = head.and_then(|head| {
            Some(Checkpoint {
                seq: head.seq,
                hash: head.hash.try_into().ok()?,
            })
        });
        Ok(report)
    })
    .await
    .context("verifying the audit chain")
}

/// Whether the chain still holds the checkpoint's event with its hash.
async fn held(conn: &mut AsyncPgConnection, checkpoint: &Checkpoint) -> diesel::QueryResult<Held> {
    const REWRITTEN: &str = "the event differs from the checkpoint (the chain was recomputed from it or from an event before it)";
    let stored = diesel::sql_query("SELECT seq, hash FROM audit.events WHERE seq = $1")
        .bind::<BigInt, _>(checkpoint.seq)
        .get_result::<Stored>(conn)
        .await
        .optional()?;
    if let Some(event) = stored {
        return Ok(if event.hash == checkpoint.hash {
            Held::Yes
        } else {
            Held::No(REWRITTEN)
        });
    }
    // Not stored: legitimately gone only if a pruning removed it, which leaves an
    // anchor at or after it (the anchor at its very seq keeps its hash).
    let anchor = diesel::sql_query(
        "SELECT seq, hash FROM audit.anchors WHERE seq >= $1 ORDER BY seq LIMIT 1",
    )
    .bind::<BigInt, _>(checkpoint.seq)
    .get_result::<Stored>(conn)
    .await
    .optional()?;
    Ok(match anchor {
        None => Held::No(
            "the checkpoint's event is gone and no pruning removed it (events were deleted from the chain)",
        ),
        Some(anchor) if anchor.seq == checkpoint.seq && anchor.hash != checkpoint.hash => {
            Held::No(REWRITTEN)
        }
        Some(_) => Held::Pruned,
    })
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
