//! Running a tonic service the same way in every gRPC service: the gRPC listener
//! with the standard `grpc.health.v1` service, beside the admin port, both stopping on
//! one shutdown token within one grace period.

use std::net::SocketAddr;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;

/// The router every gRPC service builds on: tonic's, with the metrics layer.
pub type Router = tonic::transport::server::Router<
    tower::layer::util::Stack<crate::grpc_metrics::GrpcMetricsLayer, tower::layer::util::Identity>,
>;

use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};

use crate::admin::AdminServer;
use crate::shutdown::GRACE_PERIOD;

/// A gRPC service, bound and ready to run: its gRPC listener (with `grpc.health.v1`
/// added), its admin port, and the background tasks to wait for after it stops.
/// Every gRPC service's `build` returns one.
pub struct GrpcApplication {
    grpc: TcpListener,
    admin: AdminServer,
    name: &'static str,
    router: Router,
    reporter: HealthReporter,
    shutdown: CancellationToken,
    background: Vec<tokio::task::JoinHandle<()>>,
    drains: Vec<futures::future::BoxFuture<'static, ()>>,
}

impl GrpcApplication {
    /// Binds both listeners (port 0 picks free ports) and builds the router:
    /// `add_services` receives a router that already serves health, and adds the
    /// service named `name` (its health status is reported under that name).
    pub async fn bind(
        grpc_addr: SocketAddr,
        admin_addr: SocketAddr,
        readiness: crate::admin::ReadinessCheck,
        name: &'static str,
        add_services: impl FnOnce(Router) -> Router,
        tls: Option<&crate::tls::TlsMaterial>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let reporter = HealthReporter::new();
        let health = HealthServer::new(HealthService::from_health_reporter(reporter.clone()));
        // One span per call, continuing the caller's trace.
        let mut server =
            tonic::transport::Server::builder().trace_fn(crate::otel::server_span(name));
        if let Some(tls) = tls {
            server = server
                .tls_config(tls.server())
                .context("TLS server configuration")?;
        }
        Ok(Self {
            grpc: TcpListener::bind(grpc_addr)
                .await
                .with_context(|| format!("binding the gRPC port {grpc_addr}"))?,
            admin: AdminServer::bind(admin_addr, readiness)
                .await
                .with_context(|| format!("binding the admin port {admin_addr}"))?,
            name,
            router: add_services(
                server
                    .layer(crate::grpc_metrics::GrpcMetricsLayer)
                    .add_service(health),
            ),
            reporter,
            shutdown,
            background: Vec::new(),
            drains: Vec::new(),
        })
    }

    /// A task to wait for (bounded by the grace period) once serving has stopped,
    /// such as a relay that flushes queued events.
    pub fn with_background(mut self, task: tokio::task::JoinHandle<()>) -> Self {
        self.background.push(task);
        self
    }

    /// Work to finish once serving has stopped, before the background tasks are
    /// waited for (bounded by the grace period): what calls answered during the
    /// shutdown left behind them, such as the mails of answered requests.
    pub fn with_drain(mut self, drain: impl Future<Output = ()> + Send + 'static) -> Self {
        self.drains.push(Box::pin(drain));
        self
    }

    /// The bound gRPC address.
    pub fn grpc_addr(&self) -> std::io::Result<SocketAddr> {
        self.grpc.local_addr()
    }

    /// The bound admin address.
    pub fn admin_addr(&self) -> std::io::Result<SocketAddr> {
        self.admin.local_addr()
    }

    /// Serves until the shutdown token is cancelled; in-flight calls and background
    /// tasks get [`GRACE_PERIOD`] to finish.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let reporter = self.reporter;
        for service in [self.name, ""] {
            reporter
                .set_service_status(service, tonic_health::ServingStatus::Serving)
                .await;
        }
        let incoming = TcpIncoming::from(self.grpc).with_nodelay(Some(true));
        let stopping = self.shutdown.clone();
        let grpc = self
            .router
            .serve_with_incoming_shutdown(incoming, async move {
                stopping.cancelled().await;
                reporter
                    .set_service_status("", tonic_health::ServingStatus::NotServing)
                    .await;
            });
        let admin = self.admin.run(self.shutdown.clone());
        let background = self.background;
        let drains = self.drains;
        let all = async {
            let (grpc, admin) = tokio::join!(grpc, admin);
            for drain in drains {
                drain.await;
            }
            for task in background {
                let _ = task.await;
            }
            grpc.context("gRPC server")?;
            admin.context("admin server")?;
            Ok::<(), anyhow::Error>(())
        };
        let shutdown = self.shutdown;
        tokio::select! {
            result = all => result,
            () = async { shutdown.cancelled().await; tokio::time::sleep(GRACE_PERIOD).await } => {
                tracing::warn!("grace period over; stopping with work in flight");
                Ok(())
            }
        }
    }
}

/// A failure the caller cannot fix: logged with its cause chain, answered opaquely.
pub fn internal(error: anyhow::Error) -> tonic::Status {
    tracing::error!(error = format!("{error:#}"), "internal error");
    tonic::Status::internal("internal error")
}

/// A dependency (database, cache) is unreachable: logged, answered as UNAVAILABLE so
/// callers may retry.
pub fn unavailable(error: anyhow::Error) -> tonic::Status {
    tracing::error!(error = format!("{error:#}"), "dependency unavailable");
    tonic::Status::unavailable("temporarily unavailable")
}

/// Whether a call failed because its connection broke (the service died or
/// restarted), rather than with an answer the service sent. tonic reports such a call
/// as `Unknown` with the transport error as its source when it broke mid-call, and as
/// `Cancelled` with one when the connection closed while it was being set up (a
/// dependency that accepts and drops connections); a status read off the wire never
/// has a source. Callers treat it like `Unavailable`: a dependency gone, not a bug.
pub fn broke_in_transport(status: &tonic::Status) -> bool {
    matches!(status.code(), tonic::Code::Unknown | tonic::Code::Cancelled)
        && std::error::Error::source(status).is_some()
}
