//! The admin HTTP port: `/healthz` (the process answers), `/readyz` (its own
//! dependencies answer) and `/metrics` (Prometheus text). It is meant for the
//! orchestrator and the metrics scraper, not the public: bind it to a private address.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio_util::sync::CancellationToken;

/// A dependency check: `Err` names what is not ready (never a secret).
pub type ReadinessCheck =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// A bound admin server, ready to run.
pub struct AdminServer {
    listener: tokio::net::TcpListener,
    router: Router,
}

impl AdminServer {
    /// Binds `addr` (port 0 picks a free port).
    pub async fn bind(addr: SocketAddr, readiness: ReadinessCheck) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        // Install the recorder now, not at the first scrape: counters recorded before
        // it would be lost.
        let _ = crate::metrics::handle();
        let router = Router::new()
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .with_state(readiness);
        Ok(Self { listener, router })
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` is cancelled.
    pub async fn run(self, shutdown: CancellationToken) -> std::io::Result<()> {
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
    }
}

async fn readyz(State(check): State<ReadinessCheck>) -> Response {
    match check().await {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(what) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, "application/problem+json")],
            serde_json::json!({
                "type": "urn:aia:problem:not-ready",
                "title": "Not ready",
                "status": 503,
                "detail": what,
            })
            .to_string(),
        )
            .into_response(),
    }
}

async fn metrics() -> Response {
    match crate::metrics::handle() {
        Some(handle) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            handle.render(),
        )
            .into_response(),
        None => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}
