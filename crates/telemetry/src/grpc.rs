//! Running a tonic service the same way in every gRPC service: the gRPC listener
//! with the standard `grpc.health.v1` service, beside the admin port, both stopping on
//! one shutdown token within one grace period.

use std::net::SocketAddr;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::{Router, TcpIncoming};

use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};

use crate::admin::AdminServer;
use crate::shutdown::GRACE_PERIOD;

/// A bound gRPC service and its admin port, ready to run.
pub struct GrpcService {
    grpc: TcpListener,
    admin: AdminServer,
}

impl GrpcService {
    /// Binds both listeners (port 0 picks free ports).
    pub async fn bind(
        grpc_addr: SocketAddr,
        admin_addr: SocketAddr,
        readiness: crate::admin::ReadinessCheck,
    ) -> std::io::Result<Self> {
        Ok(Self {
            grpc: TcpListener::bind(grpc_addr).await?,
            admin: AdminServer::bind(admin_addr, readiness).await?,
        })
    }

    /// The bound gRPC address.
    pub fn grpc_addr(&self) -> std::io::Result<SocketAddr> {
        self.grpc.local_addr()
    }

    /// The bound admin address.
    pub fn admin_addr(&self) -> std::io::Result<SocketAddr> {
        self.admin.local_addr()
    }

    /// Serves `router` (health is added here, reporting `name` as serving) until
    /// `shutdown` is cancelled; in-flight calls get [`GRACE_PERIOD`] to finish.
    pub async fn run(
        self,
        name: &'static str,
        router: impl FnOnce(HealthServer<HealthService>) -> Router,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let reporter = HealthReporter::new();
        let health = HealthServer::new(HealthService::from_health_reporter(reporter.clone()));
        reporter
            .set_service_status(name, tonic_health::ServingStatus::Serving)
            .await;
        reporter
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;
        let incoming = TcpIncoming::from(self.grpc).with_nodelay(Some(true));
        let stopping = shutdown.clone();
        let grpc = router(health).serve_with_incoming_shutdown(incoming, async move {
            stopping.cancelled().await;
            reporter
                .set_service_status("", tonic_health::ServingStatus::NotServing)
                .await;
        });
        let admin = self.admin.run(shutdown.clone());
        let both = async {
            let (grpc, admin) = tokio::join!(grpc, admin);
            grpc.context("gRPC server")?;
            admin.context("admin server")?;
            Ok::<(), anyhow::Error>(())
        };
        tokio::pin!(both);
        tokio::select! {
            result = &mut both => result,
            () = async { shutdown.cancelled().await; tokio::time::sleep(GRACE_PERIOD).await } => {
                tracing::warn!("grace period over; stopping with calls in flight");
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
