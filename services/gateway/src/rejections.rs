//! Rejections (untrusted host, refused CORS origin, rate limit, invalid request, CSRF)
//! are counted in metrics at once and reported to audit aggregated: one
//! `gateway.rejected` event per reason and key (client IP, or policy and key) per
//! window (`AUDIT_REJECTIONS_WINDOW_SECONDS`, 60), carrying the count. A flood
//! therefore costs the audit store one event per key and minute, and at most
//! [`MAX_KEYS`] keys are told apart per window (the rest are summed under `other`),
//! so neither the gateway's memory nor the store grows with the flood.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aia_audit_client::AuditClient;
use aia_proto::audit::v1::Outcome;
use aia_telemetry::shutdown::CancellationToken;

/// Keys told apart per window: enough to name the sources of any flood one can
/// investigate; past it, a flood is distributed and its size is what matters. Each
/// key is a chained audit event kept for at least 30 days: at 10,000 a minute, one
/// IPv6 /48 (65,536 /64s, free from tunnel brokers) could write 14 million a day per
/// gateway replica.
pub const MAX_KEYS: usize = 1_000;

/// The counts of the current window.
#[derive(Default)]
pub struct Rejections {
    counts: Mutex<HashMap<(&'static str, String), u64>>,
}

impl Rejections {
    /// Counts one rejection for `reason` (`host`, `cors`, `rate_limit`, `validation`,
    /// `csrf`) and `key`.
    pub fn record(&self, reason: &'static str, key: &str) {
        metrics::counter!("gateway_rejections_total", "reason" => reason).increment(1);
        let Ok(mut counts) = self.counts.lock() else {
            return;
        };
        let len = counts.len();
        let entry = (reason, key.to_owned());
        if let Some(count) = counts.get_mut(&entry) {
            *count += 1;
        } else if len < MAX_KEYS {
            counts.insert(entry, 1);
        } else {
            *counts.entry((reason, "other".to_owned())).or_insert(0) += 1;
        }
    }

    fn drain(&self) -> Vec<((&'static str, String), u64)> {
        self.counts
            .lock()
            .map(|mut counts| counts.drain().collect())
            .unwrap_or_default()
    }
}

/// Records a rejection of `req` for `reason`, keyed by its client's bucket (an IPv6
/// client by its /64, as the rate limiter keys it: keyed per address, one /64 could
/// fill the window's keys and the audit trail with an event per request).
pub fn record_request(req: &actix_web::HttpRequest, reason: &'static str) {
    let key = crate::client::addr_of(req)
        .map(aia_telemetry::net::bucket_of)
        .unwrap_or_default();
    match req.app_data::<actix_web::web::Data<crate::state::State>>() {
        Some(state) => state.rejections.record(reason, &key),
        None => metrics::counter!("gateway_rejections_total", "reason" => reason).increment(1),
    }
}

/// Reports the window's counts to audit every `window` until `shutdown` (and once
/// more then).
pub async fn report(
    rejections: Arc<Rejections>,
    audit: AuditClient,
    window: Duration,
    shutdown: CancellationToken,
) {
    let mut every = tokio::time::interval(window);
    every.tick().await;
    loop {
        let stopping = tokio::select! {
            () = shutdown.cancelled() => true,
            _ = every.tick() => false,
        };
        for ((reason, key), count) in rejections.drain() {
            let recorded = audit
                .event("gateway.rejected", Outcome::Failure)
                .details(serde_json::json!({
                    "reason": reason,
                    "key": key,
                    "count": count,
                    "window_seconds": window.as_secs(),
                    "aggregated": true,
                }))
                .emit()
                .await;
            if let Err(error) = recorded {
                tracing::error!(%error, "rejection counts not recorded");
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
    fn counts_are_per_reason_and_key_and_bounded() {
        let rejections = Rejections::default();
        for _ in 0..3 {
            rejections.record("host", "203.0.113.1");
        }
        rejections.record("cors", "203.0.113.1");
        for n in 0..(MAX_KEYS + 5) {
            rejections.record("rate_limit", &format!("ip:{n}"));
        }
        let drained: HashMap<_, _> = rejections.drain().into_iter().collect();
        assert_eq!(drained.get(&("host", "203.0.113.1".to_owned())), Some(&3));
        assert_eq!(drained.get(&("cors", "203.0.113.1".to_owned())), Some(&1));
        assert_eq!(
            drained.len(),
            MAX_KEYS + 1,
            "the rest are summed under other"
        );
        assert!(
            drained
                .get(&("rate_limit", "other".to_owned()))
                .is_some_and(|c| *c >= 5)
        );
        assert!(rejections.drain().is_empty());
    }
}
