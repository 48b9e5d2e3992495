//! `aia-auth`: settings, telemetry, build, run.

use aia_settings::{AuthSettings, Env};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let settings = AuthSettings::from_env(Env::from_process());
    aia_telemetry::service_main("auth", settings, |s| &s.common, |settings, shutdown| async move {
        let app = aia_auth::build(settings, shutdown).await?;
        tracing::info!(grpc = %app.grpc_addr()?, admin = %app.admin_addr()?, "auth service listening");
        app.run_until_stopped().await
    })
    .await
}
