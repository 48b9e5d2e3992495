//! `aia-auth`: settings, telemetry, build, run.

use aia_settings::{AuthSettings, Env};

/// mimalloc (MIT): each password hash borrows 19 MiB (argon2id, m=19456). glibc kept
/// every hashing thread's blocks for good (60 MiB idle after two logins); mimalloc
/// reuses them while logins keep coming and gives them back to the system once tokio
/// retires the hashing threads (after 10 s without work): 22 MiB idle.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
