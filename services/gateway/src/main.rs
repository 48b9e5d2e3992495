//! `aia-gateway`: settings, telemetry, build, run.

use aia_settings::{Env, GatewaySettings};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let settings = GatewaySettings::from_env(Env::from_process());
    aia_telemetry::service_main("gateway", settings, |s| &s.common, |settings, shutdown| async move {
        let app = aia_gateway::build(settings, shutdown).await?;
        tracing::info!(http = %app.http_addr(), admin = %app.admin_addr()?, "gateway listening");
        app.run_until_stopped().await
    })
    .await
}
