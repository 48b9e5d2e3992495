//! Usage tracking: requests per caller (a user, or an API key), route class and hour,
//! counted in memory and sent to audit in batches (`audit.RecordUsage`) every
//! `USAGE_FLUSH_SECONDS`; admins read them with `GET /v1/admin/usage`.
//!
//! Who the caller is comes from whatever identified them during the request (the
//! rate limiter, or the handler's own authentication): an [`Identified`] extension.
//! Anonymous requests are not counted here (metrics count them). At most [`MAX_KEYS`]
//! counts are held, plus one batch in flight: a batch that cannot be sent is sent
//! again, with the same id, at the next flush (audit adds each batch once); what does
//! not fit meanwhile is dropped and counted (`gateway_usage_dropped_total`), so an
//! audit outage costs counts, never memory.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use aia_proto::audit::v1::{RecordUsageRequest, UsageCount};
use aia_telemetry::shutdown::CancellationToken;

/// Counts held at most.
pub const MAX_KEYS: usize = 10_000;

/// The caller of this request, once something verified it: `user:<id>` or
/// `key:<api key id>`.
#[derive(Debug, Clone)]
pub struct Identified(pub String);

/// The route class of a path.
pub fn route_class(path: &str) -> &'static str {
    let Some(rest) = path.strip_prefix("/v1/") else {
        return "proxy";
    };
    match rest.split('/').next().unwrap_or("") {
        "auth" => "auth",
        "admin" => "admin",
        "api-keys" => "api-keys",
        "oauth" => "oauth",
        _ => "other",
    }
}

type Key = (i64, String, &'static str);

/// The counts not yet sent: (hour, caller, class) → (requests, errors).
#[derive(Default)]
pub struct Usage {
    counts: Mutex<HashMap<Key, (i64, i64)>>,
}

impl Usage {
    fn counts(&self) -> std::sync::MutexGuard<'_, HashMap<Key, (i64, i64)>> {
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts one request of `caller` on `path`, answered with `status`.
    pub fn record(&self, caller: &str, path: &str, status: u16) {
        let hour = chrono::Utc::now().timestamp().div_euclid(3600) * 3600;
        let error = i64::from(status >= 400);
        self.add((hour, caller.to_owned(), route_class(path)), 1, error);
    }

    fn add(&self, key: Key, requests: i64, errors: i64) {
        let mut counts = self.counts();
        let len = counts.len();
        match counts.get_mut(&key) {
            Some(c) => {
                c.0 += requests;
                c.1 += errors;
            }
            None if len < MAX_KEYS => {
                counts.insert(key, (requests, errors));
            }
            None => {
                metrics::counter!("gateway_usage_dropped_total").increment(1);
            }
        }
    }

    fn drain(&self) -> Vec<(Key, (i64, i64))> {
        self.counts().drain().collect()
    }
}

/// A batch on its way to audit: sent again as it is (same id) until audit has it.
struct Batch {
    id: String,
    counts: Vec<UsageCount>,
}

impl Batch {
    fn of(drained: Vec<(Key, (i64, i64))>) -> Self {
        Self {
            id: uuid::Uuid::new_v4().to_string(),
            counts: drained
                .into_iter()
                .map(|((hour, caller, class), (requests, errors))| UsageCount {
                    hour: Some(prost_types::Timestamp {
                        seconds: hour,
                        nanos: 0,
                    }),
                    caller,
                    route_class: class.to_owned(),
                    requests,
                    errors,
                })
                .collect(),
        }
    }
}

/// Sends the counts to audit every `every` until `shutdown` (and once more then). A
/// batch that fails is sent again with the same id (audit adds each id once) before
/// any newer counts; one audit refuses as invalid is dropped and logged.
pub async fn report(
    usage: Arc<Usage>,
    mut audit: aia_proto::audit::v1::audit_service_client::AuditServiceClient<
        aia_telemetry::otel::TracedChannel,
    >,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    let mut pending: Option<Batch> = None;
    loop {
        let stopping = tokio::select! {
            () = shutdown.cancelled() => true,
            _ = tick.tick() => false,
        };
        if pending.is_none() {
            let drained = usage.drain();
            if !drained.is_empty() {
                pending = Some(Batch::of(drained));
            }
        }
        if let Some(batch) = pending.take() {
            let request = RecordUsageRequest {
                counts: batch.counts.clone(),
                batch_id: batch.id.clone(),
            };
            match audit.record_usage(request).await {
                Ok(_) => {}
                Err(status) if status.code() == tonic::Code::InvalidArgument => {
                    metrics::counter!("gateway_usage_dropped_total")
                        .increment(batch.counts.len() as u64);
                    tracing::error!(reason = status.message(), "usage batch refused; dropped");
                }
                Err(status) => {
                    tracing::warn!(code = ?status.code(), "usage not sent; sent again at the next flush");
                    pending = Some(batch);
                }
            }
        }
        if stopping {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_and_counts_are_per_caller_class_and_hour_and_bounded() {
        assert_eq!(route_class("/v1/auth/me"), "auth");
        assert_eq!(route_class("/v1/admin/users"), "admin");
        assert_eq!(route_class("/v1/api-keys/abc"), "api-keys");
        assert_eq!(route_class("/v1/unknown"), "other");
        assert_eq!(route_class("/api/orders"), "proxy");
        let usage = Usage::default();
        usage.record("user:a", "/v1/auth/me", 200);
        usage.record("user:a", "/v1/auth/me", 401);
        usage.record("user:a", "/api/x", 200);
        usage.record("key:k", "/api/x", 502);
        let drained: HashMap<_, _> = usage
            .drain()
            .into_iter()
            .map(|((_, caller, class), c)| ((caller, class), c))
            .collect();
        assert_eq!(drained.get(&("user:a".to_owned(), "auth")), Some(&(2, 1)));
        assert_eq!(drained.get(&("user:a".to_owned(), "proxy")), Some(&(1, 0)));
        assert_eq!(drained.get(&("key:k".to_owned(), "proxy")), Some(&(1, 1)));
        for n in 0..(MAX_KEYS + 3) {
            usage.record(&format!("user:{n}"), "/v1/auth/me", 200);
        }
        assert_eq!(usage.drain().len(), MAX_KEYS);
    }
}
