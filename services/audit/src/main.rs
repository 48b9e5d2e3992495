//! `aia-audit`: settings, telemetry, build, run.

use aia_settings::{AuditSettings, Env};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let settings = AuditSettings::from_env(Env::from_process());
    aia_telemetry::service_main("audit", settings, |s| &s.common, |settings, shutdown| async move {
        let app = aia_audit::build(settings, shutdown).await?;
        tracing::info!(grpc = %app.grpc_addr()?, admin = %app.admin_addr()?, "audit service listening");
        app.run_until_stopped().await
    })
    .await
}
