//! gRPC server metrics: every call's latency in `grpc_server_duration_seconds` and its
//! count in `grpc_server_requests_total`, labelled by method (the request path, e.g.
//! `/aia.auth.v1.AuthService/Login`) and by the `grpc-status` the response headers
//! carry (`0` for a unary answer whose status travels in the trailers). A path that
//! names no method (answered `UNIMPLEMENTED`) is counted as `unknown`, so callers
//! cannot grow the label set. For a server stream, the duration ends when the
//! response starts (its headers), not when the stream ends.

use std::pin::Pin;
use std::task::{Context, Poll};

use crate::metrics::Family;

static DURATIONS: std::sync::LazyLock<Family<metrics::Histogram>> =
    std::sync::LazyLock::new(|| Family::histogram("grpc_server_duration_seconds", &["method"]));
static REQUESTS: std::sync::LazyLock<Family<metrics::Counter>> =
    std::sync::LazyLock::new(|| Family::counter("grpc_server_requests_total", &["method", "code"]));

/// The layer [`crate::grpc::GrpcApplication`] puts around every service.
#[derive(Clone, Copy, Debug, Default)]
pub struct GrpcMetricsLayer;

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics { inner }
    }
}

/// See [`GrpcMetricsLayer`].
#[derive(Clone, Debug)]
pub struct GrpcMetrics<S> {
    inner: S,
}

impl<S, B, R> tower::Service<http::Request<B>> for GrpcMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = request.uri().path().to_owned();
        let started = std::time::Instant::now();
        let answer = self.inner.call(request);
        Box::pin(async move {
            let result = answer.await;
            let code = match &result {
                Ok(response) => response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("0"),
                Err(_) => "transport",
            };
            // 12: UNIMPLEMENTED, the answer to a path that is no method.
            let method = if code == "12" { "unknown" } else { &method };
            DURATIONS
                .get(&[method])
                .record(started.elapsed().as_secs_f64());
            REQUESTS.get(&[method, code]).increment(1);
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{Layer, Service, ServiceExt};

    async fn call(path: &str, status: &str) -> anyhow::Result<()> {
        let status = status.to_owned();
        let inner = tower::service_fn(move |_: http::Request<()>| {
            let status = status.clone();
            async move {
                http::Response::builder()
                    .header("grpc-status", status)
                    .body(())
                    .map_err(anyhow::Error::from)
            }
        });
        let mut service = GrpcMetricsLayer.layer(inner);
        let request = http::Request::builder().uri(path).body(())?;
        service.ready().await?.call(request).await?;
        Ok(())
    }

    #[tokio::test]
    async fn methods_are_labelled_and_unknown_paths_do_not_grow_the_labels() -> anyhow::Result<()> {
        let handle = crate::metrics::handle().ok_or_else(|| anyhow::anyhow!("no recorder"))?;
        call("/aia.auth.v1.AuthService/Login", "0").await?;
        for n in 0..5 {
            call(&format!("/made.up/Path{n}"), "12").await?;
        }
        let text = handle.render();
        assert!(
            text.contains(
                "grpc_server_requests_total{method=\"/aia.auth.v1.AuthService/Login\",code=\"0\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("grpc_server_requests_total{method=\"unknown\",code=\"12\"} 5"),
            "{text}"
        );
        assert!(!text.contains("made.up"), "{text}");
        Ok(())
    }
}
