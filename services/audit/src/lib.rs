//! The audit service: stores security events, append-only.
//!
//! - [`Application`]: binds the gRPC and admin ports (`build`), then serves them
//!   (`run_until_stopped`).
//! - `service`: the `aia.audit.v1.AuditService` implementation.
//! - `event`: turning a wire event into a row, refusing what is malformed.
//! - `schema`: the diesel description of the `audit` schema.

mod event;
mod schema;
mod service;

use std::net::SocketAddr;
use std::sync::Arc;

use aia_proto::audit::v1::audit_service_server::AuditServiceServer;
use aia_settings::AuditSettings;
use aia_telemetry::grpc::GrpcService;
use aia_telemetry::shutdown::CancellationToken;
use anyhow::Context;

pub use service::Audit;

/// A bound audit service.
pub struct Application {
    server: GrpcService,
    audit: Audit,
    shutdown: CancellationToken,
}

impl Application {
    /// Connects the pool (lazily) and binds the listeners.
    pub async fn build(
        settings: AuditSettings,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let pool = aia_db::pool(
            secrecy::ExposeSecret::expose_secret(&settings.common.database_url),
            settings.common.database_pool_size,
        )?;
        let ready_pool = pool.clone();
        let readiness: aia_telemetry::admin::ReadinessCheck = Arc::new(move || {
            let pool = ready_pool.clone();
            Box::pin(async move { aia_db::ping(&pool).await.map_err(|_| "postgres".to_owned()) })
        });
        let server = GrpcService::bind(settings.grpc_addr, settings.admin_addr, readiness)
            .await
            .context("binding the audit listeners")?;
        Ok(Self {
            server,
            audit: Audit::new(pool),
            shutdown,
        })
    }

    /// The bound gRPC address.
    pub fn grpc_addr(&self) -> std::io::Result<SocketAddr> {
        self.server.grpc_addr()
    }

    /// The bound admin address.
    pub fn admin_addr(&self) -> std::io::Result<SocketAddr> {
        self.server.admin_addr()
    }

    /// Serves until the shutdown token is cancelled.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let audit = self.audit;
        self.server
            .run(
                "aia.audit.v1.AuditService",
                move |health| {
                    tonic::transport::Server::builder()
                        .add_service(health)
                        .add_service(AuditServiceServer::new(audit))
                },
                self.shutdown,
            )
            .await
    }
}
