//! How services emit security events to the audit service.
//!
//! Two ways, one event builder ([`AuditClient::event`]):
//!
//! - **Outbox** ([`AuditClient::spawn_outbox`], auth and session): an event is a row
//!   of the service's own outbox table, written in the transaction of the change it
//!   describes ([`EventBuilder::write_in`]) or, for an event that describes no change
//!   (a failed login), on its own before the request is answered
//!   ([`EventBuilder::emit`]); one that cannot be written fails the request (or the
//!   work, when it runs after the answer). A relay delivers the rows in order with
//!   `audit.RecordBatch`, at least once, with backoff while audit is unreachable, and
//!   deletes them only once audit has acknowledged them. Nothing is lost when the
//!   process dies or audit is down for hours: the rows wait in Postgres. Depth and age
//!   are metrics (`audit_outbox_depth`, `audit_outbox_oldest_seconds`).
//! - **Queue** ([`AuditClient::spawn`], the gateway, whose own events are aggregated
//!   and may be lost with the process): a bounded in-memory queue and the same
//!   batching relay; when the queue is full, new events are dropped, logged and
//!   counted (`audit_events_dropped_total`).
//!
//! Event ids are made here, so a retried batch is deduplicated by the audit service.

use std::sync::Arc;
use std::time::Duration;

use aia_db::PgPool;
use aia_proto::audit::v1::audit_service_client::AuditServiceClient;
use aia_proto::audit::v1::{Event, Outcome, RecordBatchRequest};
use aia_proto::common::v1::ClientInfo;
use aia_telemetry::otel::TracedChannel;
use diesel::sql_types::{Array, BigInt, Bytea, Double};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use prost::Message;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

/// Events waiting to be sent, at most (queue mode).
const QUEUE: usize = 10_000;
/// Events per RecordBatch call, at most.
const BATCH: usize = 256;
/// Longest wait between retries.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long the relay keeps trying to flush once shutdown starts (queue mode).
const FLUSH_ON_SHUTDOWN: Duration = Duration::from_secs(3);
/// How often an idle outbox relay looks for rows committed by other transactions
/// (it is woken at once for events this process emits).
const OUTBOX_POLL: Duration = Duration::from_millis(500);

/// A handle that emits events; cheap to clone.
#[derive(Debug, Clone)]
pub struct AuditClient {
    sink: Sink,
    producer: &'static str,
}

#[derive(Debug, Clone)]
enum Sink {
    Queue(mpsc::Sender<Event>),
    Outbox(Arc<Outbox>),
}

/// A service's outbox table.
struct Outbox {
    pool: PgPool,
    /// Schema-qualified table name, fixed by the service (never input).
    table: &'static str,
    wake: Notify,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

fn channel(
    url: &str,
    tls: Option<&aia_telemetry::tls::TlsMaterial>,
) -> anyhow::Result<AuditServiceClient<TracedChannel>> {
    let channel = aia_telemetry::tls::endpoint(url, tls, "audit")?
        .timeout(Duration::from_secs(5))
        .connect_lazy();
    Ok(AuditServiceClient::new(aia_telemetry::otel::traced(
        channel,
    )))
}

impl AuditClient {
    /// Queue mode: starts the relay towards the audit service at `url` (connected
    /// lazily).
    pub fn spawn(
        url: &str,
        producer: &'static str,
        tls: Option<&aia_telemetry::tls::TlsMaterial>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<(Self, tokio::task::JoinHandle<()>)> {
        let client = channel(url, tls)?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let relay = tokio::spawn(relay(client, rx, shutdown));
        Ok((
            Self {
                sink: Sink::Queue(tx),
                producer,
            },
            relay,
        ))
    }

    /// Outbox mode: events go to `table` (e.g. `auth.audit_outbox`) in `pool`'s
    /// database, and a relay delivers them to the audit service at `url`.
    pub fn spawn_outbox(
        url: &str,
        producer: &'static str,
        tls: Option<&aia_telemetry::tls::TlsMaterial>,
        pool: PgPool,
        table: &'static str,
        shutdown: CancellationToken,
    ) -> anyhow::Result<(Self, tokio::task::JoinHandle<()>)> {
        let client = channel(url, tls)?;
        let outbox = Arc::new(Outbox {
            pool,
            table,
            wake: Notify::new(),
        });
        let relay = tokio::spawn(outbox_relay(client, outbox.clone(), producer, shutdown));
        Ok((
            Self {
                sink: Sink::Outbox(outbox),
                producer,
            },
            relay,
        ))
    }

    /// Outbox mode without a relay, for tools (`aia create-admin`) that change a
    /// service's data: their events go into that service's outbox, in the same
    /// transaction as the change, and the service's own relay delivers them.
    pub fn outbox_only(producer: &'static str, pool: PgPool, table: &'static str) -> Self {
        Self {
            sink: Sink::Outbox(Arc::new(Outbox {
                pool,
                table,
                wake: Notify::new(),
            })),
            producer,
        }
    }

    /// Starts building an event of this producer.
    pub fn event(&self, event_type: &str, outcome: Outcome) -> EventBuilder<'_> {
        EventBuilder {
            client: self,
            event: Event {
                id: uuid::Uuid::new_v4().to_string(),
                occurred_at: Some(now()),
                event_type: event_type.to_owned(),
                outcome: outcome.into(),
                producer: self.producer.to_owned(),
                traceparent: aia_telemetry::otel::current_traceparent().unwrap_or_default(),
                ..Event::default()
            },
        }
    }

    fn enqueue(tx: &mpsc::Sender<Event>, event: Event) {
        if let Err(error) = tx.try_send(event) {
            metrics::counter!("audit_events_dropped_total").increment(1);
            tracing::error!(%error, "audit event dropped: relay queue full or stopped");
        }
    }
}

async fn insert(
    conn: &mut AsyncPgConnection,
    table: &str,
    event: &Event,
) -> diesel::QueryResult<usize> {
    diesel::sql_query(format!("INSERT INTO {table} (event) VALUES ($1)"))
        .bind::<Bytea, _>(event.encode_to_vec())
        .execute(conn)
        .await
}

/// An event [`EventBuilder::emit`] could not write to the outbox.
#[derive(Debug)]
pub struct Unrecorded {
    /// The event's type (never a secret).
    pub event_type: String,
    source: anyhow::Error,
}

impl std::fmt::Display for Unrecorded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the audit event {} could not be recorded",
            self.event_type
        )
    }
}

impl std::error::Error for Unrecorded {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.source.as_ref())
    }
}

/// An event under construction; [`EventBuilder::emit`] queues it.
#[must_use = "an event is only sent by emit()"]
pub struct EventBuilder<'a> {
    client: &'a AuditClient,
    event: Event,
}

impl EventBuilder<'_> {
    /// Who acted.
    pub fn actor(mut self, actor: impl Into<String>) -> Self {
        self.event.actor = actor.into();
        self
    }

    /// What the action was about.
    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.event.subject = subject.into();
        self
    }

    /// Where the request came from, as the gateway reported it.
    pub fn client(mut self, client: Option<&ClientInfo>) -> Self {
        if let Some(c) = client {
            self.event.source_ip.clone_from(&c.ip);
            self.event.user_agent.clone_from(&c.user_agent);
            self.event.request_id.clone_from(&c.request_id);
        }
        self
    }

    /// Details; must never hold a secret.
    pub fn details(mut self, details: serde_json::Value) -> Self {
        self.event.details_json = details.to_string();
        self
    }

    /// Records the event on its own: in outbox mode, a row committed before this
    /// returns; in queue mode, queued (or, with the queue full, dropped and counted:
    /// the gateway's events may be lost, and say so).
    ///
    /// # Errors
    /// Outbox mode: the row could not be written (the pool timed out, Postgres is
    /// down, the insert was refused). The event is not recorded, and the caller must
    /// not answer as if the action it describes happened unseen: auth and session
    /// answer `Unavailable` (DESIGN §4: their events are never lost).
    pub async fn emit(self) -> Result<(), Unrecorded> {
        match &self.client.sink {
            Sink::Queue(tx) => AuditClient::enqueue(tx, self.event),
            Sink::Outbox(outbox) => {
                let stored = match aia_db::conn(&outbox.pool).await {
                    Ok(mut conn) => insert(&mut conn, outbox.table, &self.event)
                        .await
                        .map_err(anyhow::Error::from),
                    Err(error) => Err(error),
                };
                match stored {
                    Ok(_) => outbox.wake.notify_one(),
                    Err(error) => {
                        metrics::counter!("audit_events_unrecorded_total").increment(1);
                        return Err(Unrecorded {
                            event_type: self.event.event_type,
                            source: error,
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// Writes the event into the outbox through `conn`, inside the caller's
    /// transaction: it is stored if and only if the change it describes is. In queue
    /// mode the event is queued (and `conn` unused).
    pub async fn write_in(self, conn: &mut AsyncPgConnection) -> diesel::QueryResult<()> {
        match &self.client.sink {
            Sink::Queue(tx) => AuditClient::enqueue(tx, self.event),
            Sink::Outbox(outbox) => {
                insert(conn, outbox.table, &self.event).await?;
                // The relay may look before the caller commits; its poll finds the row.
                outbox.wake.notify_one();
            }
        }
        Ok(())
    }
}

impl EventBuilder<'_> {
    /// After an UPDATE inside the caller's transaction: writes the event (as
    /// [`EventBuilder::write_in`]) if exactly one row changed; whether one did.
    pub async fn write_in_if_changed(
        self,
        changed: usize,
        conn: &mut AsyncPgConnection,
    ) -> diesel::QueryResult<bool> {
        if changed == 1 {
            self.write_in(conn).await?;
        }
        Ok(changed == 1)
    }
}

#[derive(diesel::QueryableByName)]
struct OutboxRow {
    #[diesel(sql_type = BigInt)]
    seq: i64,
    #[diesel(sql_type = Bytea)]
    event: Vec<u8>,
}

#[derive(diesel::QueryableByName)]
struct Depth {
    #[diesel(sql_type = BigInt)]
    rows: i64,
    #[diesel(sql_type = Double)]
    oldest: f64,
}

/// Delivers the outbox until shutdown: batches in seq order, each in a transaction
/// that locks its rows (so replicas take turns), sends them, and deletes exactly the
/// rows sent once audit has acknowledged them. A failed send rolls back: the rows
/// stay for the next try.
async fn outbox_relay(
    mut client: AuditServiceClient<TracedChannel>,
    outbox: Arc<Outbox>,
    producer: &'static str,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        let wait = match deliver(&mut client, &outbox).await {
            Ok(0) => {
                backoff = Duration::from_millis(100);
                report_depth(&outbox, producer).await;
                tokio::select! {
                    () = outbox.wake.notified() => {}
                    () = tokio::time::sleep(OUTBOX_POLL) => {}
                    () = shutdown.cancelled() => {}
                }
                continue;
            }
            Ok(_) => {
                backoff = Duration::from_millis(100);
                report_depth(&outbox, producer).await;
                continue;
            }
            Err(error) => {
                tracing::warn!(
                    error = format!("{error:#}"),
                    retry_in = ?backoff,
                    "audit outbox not delivered; the rows wait"
                );
                report_depth(&outbox, producer).await;
                backoff
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shutdown.cancelled() => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One batch; the number of rows it took off the outbox.
async fn deliver(
    client: &mut AuditServiceClient<TracedChannel>,
    outbox: &Outbox,
) -> anyhow::Result<usize> {
    let table = outbox.table;
    let mut conn = aia_db::conn(&outbox.pool).await?;
    conn.transaction::<_, anyhow::Error, _>(async |conn| {
        let rows: Vec<OutboxRow> = diesel::sql_query(format!(
            "SELECT seq, event FROM {table} ORDER BY seq LIMIT {BATCH} FOR UPDATE"
        ))
        .load(conn)
        .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let mut events = Vec::with_capacity(rows.len());
        for row in &rows {
            match Event::decode(row.event.as_slice()) {
                Ok(event) => events.push(event),
                Err(_) => {
                    metrics::counter!("audit_events_dropped_total").increment(1);
                    tracing::error!(seq = row.seq, table, "undecodable outbox row dropped");
                }
            }
        }
        if !events.is_empty()
            && let Err(status) = record(client, events).await
        {
            anyhow::bail!("audit unreachable: {:?}", status.code());
        }
        let seqs: Vec<i64> = rows.iter().map(|r| r.seq).collect();
        diesel::sql_query(format!("DELETE FROM {table} WHERE seq = ANY($1)"))
            .bind::<Array<BigInt>, _>(seqs)
            .execute(conn)
            .await?;
        Ok(rows.len())
    })
    .await
}

async fn report_depth(outbox: &Outbox, producer: &'static str) {
    let table = outbox.table;
    let depth = async {
        let mut conn = aia_db::conn(&outbox.pool).await?;
        let depth: Depth = diesel::sql_query(format!(
            "SELECT count(*)::bigint AS rows, \
             COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)), 0)::float8 AS oldest FROM {table}"
        ))
        .get_result(&mut conn)
        .await?;
        Ok::<_, anyhow::Error>(depth)
    };
    if let Ok(depth) = depth.await {
        metrics::gauge!("audit_outbox_depth", "producer" => producer).set(depth.rows as f64);
        metrics::gauge!("audit_outbox_oldest_seconds", "producer" => producer).set(depth.oldest);
    }
}

fn now() -> prost_types::Timestamp {
    let now = chrono::Utc::now();
    prost_types::Timestamp {
        seconds: now.timestamp(),
        nanos: i32::try_from(now.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

async fn relay(
    mut client: AuditServiceClient<TracedChannel>,
    mut rx: mpsc::Receiver<Event>,
    shutdown: CancellationToken,
) {
    loop {
        let first = tokio::select! {
            event = rx.recv() => event,
            () = shutdown.cancelled() => None,
        };
        let Some(first) = first else { break };
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(event) => batch.push(event),
                Err(_) => break,
            }
        }
        if !send_with_retry(&mut client, &batch, &shutdown).await {
            // Shutdown interrupted the retries: put the batch back in front.
            rx.close();
            let mut rest = batch;
            while let Ok(event) = rx.try_recv() {
                rest.push(event);
            }
            flush(&mut client, rest).await;
            return;
        }
    }
    rx.close();
    let mut rest = Vec::new();
    while let Ok(event) = rx.try_recv() {
        rest.push(event);
    }
    flush(&mut client, rest).await;
}

/// Delivers `events`: as one batch, or, when audit refuses the batch as invalid (it
/// refuses a batch whole for one bad event), one by one, so that only the events it
/// refuses are dropped (a producer bug: counted and logged; retrying cannot help).
/// An error is an outage: nothing is lost by sending again (audit stores an event id
/// once).
async fn record(
    client: &mut AuditServiceClient<TracedChannel>,
    events: Vec<Event>,
) -> Result<(), tonic::Status> {
    let count = events.len() as u64;
    let refused = match client
        .record_batch(RecordBatchRequest {
            events: events.clone(),
        })
        .await
    {
        Ok(_) => {
            metrics::counter!("audit_events_sent_total").increment(count);
            return Ok(());
        }
        Err(status) if status.code() == tonic::Code::InvalidArgument => status,
        Err(status) => return Err(status),
    };
    if events.len() == 1 {
        metrics::counter!("audit_events_dropped_total").increment(1);
        tracing::error!(message = refused.message(), "audit refused an event");
        return Ok(());
    }
    for event in events {
        match client
            .record_batch(RecordBatchRequest {
                events: vec![event],
            })
            .await
        {
            Ok(_) => metrics::counter!("audit_events_sent_total").increment(1),
            Err(status) if status.code() == tonic::Code::InvalidArgument => {
                metrics::counter!("audit_events_dropped_total").increment(1);
                tracing::error!(message = status.message(), "audit refused an event");
            }
            Err(status) => return Err(status),
        }
    }
    Ok(())
}

/// Sends one batch, retrying with backoff. False if shutdown started first.
async fn send_with_retry(
    client: &mut AuditServiceClient<TracedChannel>,
    batch: &[Event],
    shutdown: &CancellationToken,
) -> bool {
    let mut backoff = Duration::from_millis(100);
    loop {
        match record(client, batch.to_vec()).await {
            Ok(()) => return true,
            Err(status) => {
                tracing::warn!(code = ?status.code(), retry_in = ?backoff, "audit unreachable");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = shutdown.cancelled() => return false,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

async fn flush(client: &mut AuditServiceClient<TracedChannel>, events: Vec<Event>) {
    if events.is_empty() {
        return;
    }
    let count = events.len();
    let send = async {
        for chunk in events.chunks(BATCH) {
            client
                .record_batch(RecordBatchRequest {
                    events: chunk.to_vec(),
                })
                .await?;
        }
        Ok::<(), tonic::Status>(())
    };
    match tokio::time::timeout(FLUSH_ON_SHUTDOWN, send).await {
        Ok(Ok(())) => {}
        _ => {
            metrics::counter!("audit_events_dropped_total").increment(count as u64);
            tracing::error!(count, "audit events lost at shutdown: audit unreachable");
        }
    }
}
