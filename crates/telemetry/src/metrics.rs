//! The process-wide Prometheus recorder.
//!
//! The `metrics` facade has one global recorder per process. It is installed on first
//! use; when tests run several services in one process they share it, which only
//! mixes their counters together.
//!
//! Durations (every metric named `*_seconds`) are Prometheus histograms with fixed
//! buckets, so that quantiles can be computed across replicas
//! (`histogram_quantile(0.99, sum by (le) (rate(x_bucket[5m])))`).

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Latency buckets, in seconds: 250 µs to 10 s.
const BUCKETS: &[f64] = &[
    0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the recorder if needed and returns a handle that renders the text format.
/// `None` only if another recorder was installed by someone else.
pub fn handle() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Suffix("_seconds".to_owned()),
                    BUCKETS,
                )
                .and_then(PrometheusBuilder::install_recorder);
            if let Err(error) = &handle {
                tracing::warn!(%error, "Prometheus recorder not installed");
            }
            handle.ok()
        })
        .clone()
}
