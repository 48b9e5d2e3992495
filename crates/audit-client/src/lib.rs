//! How services emit security events to the audit service.
//!
//! [`AuditClient::emit`] never blocks the request that emits: events go into a bounded
//! queue, and a background relay sends them in batches with `audit.RecordBatch`,
//! retrying with backoff while the audit service is unreachable. Event ids are made
//! here, so a retried batch is deduplicated by the audit service.
//!
//! Limits, until the transactional outbox lands: events still queued when the
//! process dies are lost, and when the queue is full (audit down for a long time
//! under load) new events are dropped, logged and counted
//! (`audit_events_dropped_total`).

use std::time::Duration;

use aia_proto::audit::v1::audit_service_client::AuditServiceClient;
use aia_proto::audit::v1::{Event, Outcome, RecordBatchRequest};
use aia_proto::common::v1::ClientInfo;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// Events waiting to be sent, at most.
const QUEUE: usize = 10_000;
/// Events per RecordBatch call, at most.
const BATCH: usize = 256;
/// Longest wait between retries.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long the relay keeps trying to flush once shutdown starts.
const FLUSH_ON_SHUTDOWN: Duration = Duration::from_secs(3);

/// A handle that emits events; cheap to clone.
#[derive(Debug, Clone)]
pub struct AuditClient {
    tx: mpsc::Sender<Event>,
    producer: &'static str,
}

impl AuditClient {
    /// Starts the relay towards the audit service at `url` (connected lazily).
    pub fn spawn(
        url: &str,
        producer: &'static str,
        tls: Option<&aia_telemetry::tls::TlsMaterial>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<(Self, tokio::task::JoinHandle<()>)> {
        let channel = aia_telemetry::tls::endpoint(url, tls, "audit")?
            .timeout(Duration::from_secs(5))
            .connect_lazy();
        let (tx, rx) = mpsc::channel(QUEUE);
        let relay = tokio::spawn(relay(AuditServiceClient::new(channel), rx, shutdown));
        Ok((Self { tx, producer }, relay))
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
                ..Event::default()
            },
        }
    }

    fn enqueue(&self, event: Event) {
        if let Err(error) = self.tx.try_send(event) {
            metrics::counter!("audit_events_dropped_total").increment(1);
            tracing::error!(%error, "audit event dropped: relay queue full or stopped");
        }
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

    /// Queues the event for delivery.
    pub fn emit(self) {
        self.client.enqueue(self.event);
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
    mut client: AuditServiceClient<Channel>,
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

/// Sends one batch, retrying with backoff. False if shutdown started first.
async fn send_with_retry(
    client: &mut AuditServiceClient<Channel>,
    batch: &[Event],
    shutdown: &CancellationToken,
) -> bool {
    let mut backoff = Duration::from_millis(100);
    loop {
        let request = RecordBatchRequest {
            events: batch.to_vec(),
        };
        match client.record_batch(request).await {
            Ok(_) => {
                metrics::counter!("audit_events_sent_total").increment(batch.len() as u64);
                return true;
            }
            Err(status) if status.code() == tonic::Code::InvalidArgument => {
                // Retrying cannot help; a producer bug, not an outage.
                metrics::counter!("audit_events_dropped_total").increment(batch.len() as u64);
                tracing::error!(message = status.message(), "audit refused a batch");
                return true;
            }
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

async fn flush(client: &mut AuditServiceClient<Channel>, events: Vec<Event>) {
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
