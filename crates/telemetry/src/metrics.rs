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

/// At most this many label sets are kept per [`Family`]; past it, handles are
/// registered at each use as the `metrics` macros do (label values here come from
/// bounded sets, so this is a guard, not a working limit).
const FAMILY_MAX: usize = 4096;

/// One metric's handles, registered once per set of label values and then found
/// again without building a key.
///
/// The `metrics` macros allocate the label values and hash the whole key into the
/// recorder's registry at every use; on the gateway's proxied path that was six
/// registrations per request, and one per call in the gRPC metrics layer. Here a hit
/// hashes the values once and clones an `Arc`. Label values must come from bounded
/// sets (routes, status codes, method names): every distinct set is a series.
pub struct Family<H> {
    name: &'static str,
    labels: &'static [&'static str],
    register: fn(&'static str, Vec<metrics::Label>) -> H,
    handles: std::sync::RwLock<hashbrown::HashMap<Box<[Box<str>]>, H>>,
}

/// Label values as given at a use, looked up without making the stored key.
#[derive(Hash)]
struct Values<'a>(&'a [&'a str]);

impl hashbrown::Equivalent<Box<[Box<str>]>> for Values<'_> {
    fn equivalent(&self, key: &Box<[Box<str>]>) -> bool {
        key.len() == self.0.len() && key.iter().zip(self.0).all(|(k, v)| **k == **v)
    }
}

impl Family<metrics::Counter> {
    /// A counter named `name` with these label names.
    pub fn counter(name: &'static str, labels: &'static [&'static str]) -> Self {
        Self::new(name, labels, |name, labels| metrics::counter!(name, labels))
    }
}

impl Family<metrics::Histogram> {
    /// A histogram named `name` with these label names.
    pub fn histogram(name: &'static str, labels: &'static [&'static str]) -> Self {
        Self::new(name, labels, |name, labels| {
            metrics::histogram!(name, labels)
        })
    }
}

impl<H: Clone> Family<H> {
    fn new(
        name: &'static str,
        labels: &'static [&'static str],
        register: fn(&'static str, Vec<metrics::Label>) -> H,
    ) -> Self {
        Self {
            name,
            labels,
            register,
            handles: std::sync::RwLock::default(),
        }
    }

    /// The handle for these label values, given in the order of the label names.
    pub fn get(&self, values: &[&str]) -> H {
        let found = self
            .handles
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&Values(values))
            .cloned();
        if let Some(handle) = found {
            return handle;
        }
        let labels = self
            .labels
            .iter()
            .zip(values)
            .map(|(name, value)| metrics::Label::new(*name, (*value).to_owned()))
            .collect();
        let handle = (self.register)(self.name, labels);
        // A handle taken before the recorder was installed would count nowhere for
        // ever; only a live one is kept.
        if HANDLE.get().is_some_and(Option::is_some) {
            let mut handles = self
                .handles
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if handles.len() < FAMILY_MAX {
                handles.insert(
                    values.iter().map(|v| Box::<str>::from(*v)).collect(),
                    handle.clone(),
                );
            }
        }
        handle
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_family_counts_into_the_series_of_its_labels() -> anyhow::Result<()> {
        let recorder = handle().ok_or_else(|| anyhow::anyhow!("no recorder"))?;
        let family = Family::counter("test_family_total", &["route", "status"]);
        for _ in 0..3 {
            family.get(&["/a", "200"]).increment(1);
        }
        family.get(&["/a", "404"]).increment(2);
        // The same values under a different split are a different series.
        family.get(&["/a2", "00"]).increment(5);
        let text = recorder.render();
        assert!(
            text.contains("test_family_total{route=\"/a\",status=\"200\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("test_family_total{route=\"/a\",status=\"404\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("test_family_total{route=\"/a2\",status=\"00\"} 5"),
            "{text}"
        );
        let histograms = Family::histogram("test_family_seconds", &["route"]);
        histograms.get(&["/a"]).record(0.001);
        assert!(
            recorder
                .render()
                .contains("test_family_seconds_count{route=\"/a\"} 1"),
            "the histogram records into its series"
        );
        Ok(())
    }
}
