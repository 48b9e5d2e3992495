//! `aia-session`: settings, telemetry, build, run.

use aia_settings::{Env, SessionSettings};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let settings = SessionSettings::from_env(Env::from_process());
    aia_telemetry::service_main("session", settings, |s| &s.common, |settings, shutdown| async move {
        let app = aia_session::build(settings, shutdown).await?;
        tracing::info!(grpc = %app.grpc_addr()?, admin = %app.admin_addr()?, "session service listening");
        app.run_until_stopped().await
    })
    .await
}
