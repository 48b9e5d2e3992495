//! `aia bench-grpc`: `auth.ValidateToken` against a bare tonic rpc, both over
//! loopback gRPC from the same client, so their ratio holds on a noisy machine.
//!
//! The reference is `grpc.health.v1.Health/Check` served by a tonic server with
//! nothing else on it (`aia bench-grpc serve-bare`, its own process like auth): the
//! cheapest unary rpc tonic answers. The load is `concurrency` tasks calling in a loop
//! over one HTTP/2 channel, as the gateway calls auth.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use aia_proto::auth::v1::ValidateTokenRequest;
use aia_proto::auth::v1::auth_service_client::AuthServiceClient;
use anyhow::Context;
use tonic::transport::{Channel, Endpoint, Server};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// Serves only `grpc.health.v1.Health` on `addr` until the process is stopped.
pub async fn serve_bare(addr: SocketAddr) -> anyhow::Result<()> {
    let (_reporter, health) = tonic_health::server::health_reporter();
    Server::builder()
        .add_service(health)
        .serve(addr)
        .await
        .context("the bare tonic server stopped")
}

/// Calls per second and latency percentiles of one target.
pub struct Figures {
    /// Completed calls per second.
    pub rate: f64,
    /// Median latency.
    pub p50: Duration,
    /// 99th percentile latency.
    pub p99: Duration,
    /// Calls that failed (any status).
    pub errors: u64,
}

/// Runs `concurrency` loops of `call` for `duration` (after a one-second warm-up).
async fn load<F, Fut>(concurrency: usize, duration: Duration, call: F) -> Figures
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let run = |length: Duration| {
        let tasks: Vec<_> = (0..concurrency)
            .map(|_| {
                let call = call.clone();
                tokio::spawn(async move {
                    let end = Instant::now() + length;
                    let mut latencies = Vec::new();
                    let mut errors = 0u64;
                    while Instant::now() < end {
                        let start = Instant::now();
                        if !call().await {
                            errors += 1;
                        }
                        latencies.push(start.elapsed());
                    }
                    (latencies, errors)
                })
            })
            .collect();
        async move {
            let mut all = Vec::new();
            let mut errors = 0;
            for task in tasks {
                if let Ok((latencies, e)) = task.await {
                    all.extend(latencies);
                    errors += e;
                }
            }
            (all, errors)
        }
    };
    run(Duration::from_secs(1)).await;
    let (mut latencies, errors) = run(duration).await;
    latencies.sort_unstable();
    let at = |q: f64| {
        let i = ((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len().max(1));
        latencies.get(i - 1).copied().unwrap_or_default()
    };
    Figures {
        rate: latencies.len() as f64 / duration.as_secs_f64(),
        p50: at(0.50),
        p99: at(0.99),
        errors,
    }
}

async fn channel(url: &str) -> anyhow::Result<Channel> {
    Endpoint::from_shared(url.to_owned())?
        .connect()
        .await
        .with_context(|| format!("cannot connect to {url}"))
}

/// The bare rpc's figures, then ValidateToken's (with `token`, which must be valid).
pub async fn compare(
    bare_url: &str,
    auth_url: &str,
    token: String,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<(Figures, Figures)> {
    let health = HealthClient::new(channel(bare_url).await?);
    let auth = AuthServiceClient::new(channel(auth_url).await?);
    let check = auth
        .clone()
        .validate_token(ValidateTokenRequest {
            access_token: token.clone(),
        })
        .await
        .context("ValidateToken refused the benchmark's token")?
        .into_inner();
    anyhow::ensure!(
        check.claims.is_some() && !check.revoked,
        "the token is not valid"
    );
    let bare = load(concurrency, duration, move || {
        let mut client = health.clone();
        async move {
            client
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .is_ok()
        }
    })
    .await;
    let validate = load(concurrency, duration, move || {
        let mut client = auth.clone();
        let access_token = token.clone();
        async move {
            client
                .validate_token(ValidateTokenRequest { access_token })
                .await
                .is_ok_and(|r| r.get_ref().claims.is_some())
        }
    })
    .await;
    Ok((bare, validate))
}
