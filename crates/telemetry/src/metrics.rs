//! The process-wide Prometheus recorder.
//!
//! The `metrics` facade has one global recorder per process. It is installed on first
//! use; when tests run several services in one process they share it, which only
//! mixes their counters together.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the recorder if needed and returns a handle that renders the text format.
/// `None` only if another recorder was installed by someone else.
pub fn handle() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new().install_recorder();
            if let Err(error) = &handle {
                tracing::warn!(%error, "Prometheus recorder not installed");
            }
            handle.ok()
        })
        .clone()
}
