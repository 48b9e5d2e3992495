//! One shutdown signal per process.
//!
//! A [`CancellationToken`] is cancelled by SIGTERM or SIGINT; every server and
//! background loop holds a clone and stops when it is cancelled. Tests cancel it
//! themselves.

pub use tokio_util::sync::CancellationToken;

/// How long servers get to finish in-flight requests once shutdown starts.
pub const GRACE_PERIOD: std::time::Duration = std::time::Duration::from_secs(10);

/// A token cancelled on SIGTERM or SIGINT.
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received");
        trigger.cancel();
    });
    token
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C stops the service");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
