//! `aia-gateway`: settings, telemetry, build, run.

use aia_settings::{Env, GatewaySettings};

/// mimalloc (MIT): under load the gateway spent 14% of its CPU in glibc's malloc and
/// free (perf during `make bench-gateway`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
