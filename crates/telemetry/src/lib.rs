//! What every service needs to be observable and stoppable:
//!
//! - [`init_tracing`]: JSON or text logs, filtered by `RUST_LOG` (default `info`).
//! - [`metrics`]: the process-wide Prometheus recorder.
//! - [`admin`]: the admin HTTP port with `/healthz`, `/readyz` and `/metrics`.
//! - [`shutdown`]: one cancellation token that SIGTERM or SIGINT cancels.
//! - [`spawn_blocking_with_tracing`]: CPU-heavy work off the async threads, in the
//!   caller's span.

pub mod admin;
pub mod metrics;
pub mod net;
pub mod otel;
pub mod shutdown;
pub mod tls;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Installs the global tracing subscriber: logs (JSON or text) and, with an OTLP
/// endpoint, span export ([`otel`]). Safe to call more than once (later calls do
/// nothing), so tests that start several services in one process may all call it.
pub fn init_tracing(service: &'static str, json: bool, otlp_endpoint: Option<&str>) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (otel, otel_error) = match otlp_endpoint.map(|e| otel::layer(service, e)) {
        Some(Ok(layer)) => (Some(layer), None),
        Some(Err(error)) => (None, Some(error)),
        None => (None, None),
    };
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    let result = if json {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    // The enclosing spans too: a line deep in a call still shows the
                    // request id and trace id of the request it serves.
                    .with_span_list(true)
                    .with_target(true),
            )
            .try_init()
    } else {
        registry
            .with(tracing_subscriber::fmt::layer().with_target(false))
            .try_init()
    };
    if result.is_ok() {
        tracing::info!(
            service,
            otlp = otlp_endpoint.is_some(),
            "tracing initialised"
        );
        if let Some(error) = otel_error {
            tracing::error!(error = format!("{error:#}"), "traces will not be exported");
        }
    }
}

/// Runs `f` on tokio's blocking pool inside the current span.
pub fn spawn_blocking_with_tracing<F, R>(f: F) -> tokio::task::JoinHandle<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(f))
}
pub mod grpc;
pub mod grpc_metrics;

/// The body of every service's `main`: report bad settings and exit 64, start
/// tracing, then run `start` with a shutdown token tied to SIGTERM/SIGINT and turn its
/// result into an exit code.
pub async fn service_main<S, E, Fut>(
    service: &'static str,
    settings: Result<S, E>,
    common: impl FnOnce(&S) -> &aia_settings::Common,
    start: impl FnOnce(S, shutdown::CancellationToken) -> Fut,
) -> std::process::ExitCode
where
    E: std::fmt::Display,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let settings = match settings {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("aia-{service}: {error}");
            return std::process::ExitCode::from(64);
        }
    };
    let c = common(&settings);
    init_tracing(service, c.log_json, c.otlp_endpoint.as_deref());
    let result = start(settings, shutdown::on_signal()).await;
    otel::shutdown();
    match result {
        Ok(()) => {
            tracing::info!(service, "stopped");
            std::process::ExitCode::SUCCESS
        }
        Err(error) => {
            tracing::error!(
                service,
                error = format!("{error:#}"),
                "stopped with an error"
            );
            std::process::ExitCode::FAILURE
        }
    }
}
