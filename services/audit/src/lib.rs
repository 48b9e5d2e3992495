//! The audit service: stores security events, append-only.
//!
//! - [`build`]: binds the gRPC and admin ports; the [`Application`] it returns serves
//!   them (`run_until_stopped`).
//! - `service`: the `aia.audit.v1.AuditService` implementation.
//! - `chain`: the hash chain's verification.
//! - `event`: turning a wire event into a row, refusing what is malformed.
//! - `schema`: the diesel description of the `audit` schema.

mod chain;
mod event;
mod reads;
mod risk;
mod schema;
mod service;
mod usage;

use std::sync::Arc;

use aia_proto::audit::v1::audit_service_server::AuditServiceServer;
use aia_settings::AuditSettings;
use aia_telemetry::grpc::GrpcApplication;
use aia_telemetry::shutdown::CancellationToken;

pub use chain::{ChainReport, Checkpoint, Pruned, prune, verify as verify_chain};
pub use service::Audit;

/// The audit service, bound and ready to run.
pub type Application = GrpcApplication;

/// Connects the pool (lazily) and binds the listeners.
pub async fn build(
    settings: AuditSettings,
    shutdown: CancellationToken,
) -> anyhow::Result<Application> {
    let tls = aia_telemetry::tls::TlsMaterial::load(&settings.common.internal_tls)?;
    let pool = aia_db::pool_as(
        secrecy::ExposeSecret::expose_secret(&settings.common.database_url),
        settings.common.database_pool_size,
        "aia_audit",
    )?;
    if let Some(keep) = settings.retention {
        chain::spawn_retention(pool.clone(), keep, shutdown.clone());
    }
    let ready_pool = pool.clone();
    let readiness: aia_telemetry::admin::ReadinessCheck = Arc::new(move || {
        let pool = ready_pool.clone();
        Box::pin(async move { aia_db::ping(&pool).await.map_err(|_| "postgres".to_owned()) })
    });
    GrpcApplication::bind(
        settings.grpc_addr,
        settings.admin_addr,
        readiness,
        "aia.audit.v1.AuditService",
        |router| {
            router.add_service(AuditServiceServer::new(Audit::new(
                pool,
                risk::Detectors::new(&settings.detectors),
            )))
        },
        tls.as_ref(),
        shutdown,
    )
    .await
}
