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
use diesel_async::{AsyncPgConnection, RunQueryDsl};

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
    /// Nullable in the table: a NULL is a tampered row (`verify_chain` names it).
    #[diesel(sql_type = Nullable<Bytea>)]
    hash: Option<Vec<u8>>,
}

/// How the chain stands towards a checkpoint.
enum Held {
    Yes,
    Pruned,
    No(String),
}

/// Verifies the events with `from_seq <= seq <= to_seq`, and that the chain still
/// holds `checkpoint`; the range is widened to include the checkpoint, so that its
/// link to the event before it is checked too (an edit before it, with the hashes
/// recomputed up to it, breaks that link).
pub async fn verify(
    pool: &PgPool,
    from_seq: i64,
    to_seq: i64,
    checkpoint: Option<&Checkpoint>,
) -> anyhow::Result<ChainReport> {
    let (from_seq, to_seq) = match checkpoint {
        Some(checkpoint) => (from_seq.min(checkpoint.seq), to_seq.max(checkpoint.seq)),
        None => (from_seq, to_seq),
    };
    let mut conn = aia_db::conn(pool).await?;
    // One snapshot for the head, the links and the checkpoint: a pruning or new
    // events meanwhile change none of them.
    conn.build_transaction()
        .read_only()
        .repeatable_read()
        .run::<_, diesel::result::Error, _>(async |conn| {
            // The whole chain, every account's events.
            aia_db::scope::set(conn, aia_db::scope::Scope::Service).await?;
            let head = diesel::sql_query(
                "SELECT seq, hash FROM audit.events WHERE seq BETWEEN $1 AND $2 ORDER BY seq DESC LIMIT 1",
            )
            .bind::<BigInt, _>(from_seq)
            .bind::<BigInt, _>(to_seq)
            .get_result::<Stored>(conn)
            .await
            .optional()?;
            let links: Links = diesel::sql_query(
                "SELECT checked, broken_seq, reason FROM audit.verify_chain($1, $2)",
            )
            .bind::<BigInt, _>(from_seq)
            .bind::<BigInt, _>(to_seq)
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
                        report.reason = Some(reason);
                        return Ok(report);
                    }
                }
            }
            report.head = head.and_then(|head| {
                Some(Checkpoint {
                    seq: head.seq,
                    hash: head.hash?.try_into().ok()?,
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
        return Ok(if event.hash.as_deref() == Some(&checkpoint.hash[..]) {
            Held::Yes
        } else {
            Held::No(REWRITTEN.to_owned())
        });
    }
    // Not stored: legitimately gone only if a pruning removed it. A pruning removes
    // a whole prefix and keeps the newest event, so its anchor (at or after the
    // checkpoint; the one at its very seq keeps its hash) has no event stored at or
    // before it and at least one after it. An anchor inserted above a deleted tail
    // has neither.
    let anchor = diesel::sql_query(
        "SELECT a.seq, a.hash FROM audit.anchors a \
          WHERE a.seq >= $1 \
            AND NOT EXISTS (SELECT 1 FROM audit.events e WHERE e.seq <= a.seq) \
            AND EXISTS (SELECT 1 FROM audit.events e WHERE e.seq > a.seq) \
          ORDER BY a.seq LIMIT 1",
    )
    .bind::<BigInt, _>(checkpoint.seq)
    .get_result::<Stored>(conn)
    .await
    .optional()?;
    Ok(match anchor {
        None => {
            #[derive(diesel::QueryableByName)]
            struct Newest {
                #[diesel(sql_type = Nullable<BigInt>)]
                seq: Option<i64>,
            }
            let newest = diesel::sql_query("SELECT max(seq) AS seq FROM audit.events")
                .get_result::<Newest>(conn)
                .await?
                .seq
                .map_or_else(|| "none".to_owned(), |seq| seq.to_string());
            Held::No(format!(
                "no event with the checkpoint's seq is stored (the newest is {newest}) and no pruning removed it: events were deleted from the chain, or this is not the chain the checkpoint came from"
            ))
        }
        Some(anchor)
            if anchor.seq == checkpoint.seq
                && anchor.hash.as_deref() != Some(&checkpoint.hash[..]) =>
        {
            Held::No(REWRITTEN.to_owned())
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
