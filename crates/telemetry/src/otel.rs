//! OpenTelemetry traces: spans of `tracing` exported over OTLP/gRPC when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set, and the W3C trace context (`traceparent`)
//! carried across every hop, so that one login is one trace:
//!
//! - **gRPC clients** are built on [`TracedChannel`]: an interceptor writes the
//!   caller's current span context into the request's metadata.
//! - **gRPC servers** ([`crate::grpc::GrpcApplication`]) open a span per call,
//!   [`server_span`], whose parent is the context the caller sent.
//! - **The gateway** opens its request span with the incoming `traceparent` as parent
//!   ([`parent_from`]), and forwards its own context to upstreams.
//! - **Audit events** carry the context of the span that produced them
//!   ([`current_traceparent`]) through the outbox, and the audit service stores each
//!   one in a span with that parent: the trace shows the event reaching the trail,
//!   even when it was delivered later.
//!
//! Without an endpoint, spans are still made (they carry the log fields) but nothing
//! is exported, and context is still propagated when a caller sent one.

use std::sync::OnceLock;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The exporting provider, once tracing was initialised with an endpoint.
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// The exporter and the layer that feeds it spans of `service`, sent to the OTLP/gRPC
/// collector at `endpoint` (e.g. `http://otel-collector:4317`) in batches.
pub fn layer<S>(service: &str, endpoint: &str) -> anyhow::Result<impl tracing_subscriber::Layer<S>>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::WithExportConfig;

    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        // The endpoint is not repeated: it may carry credentials.
        .map_err(|e| anyhow::anyhow!("OTLP exporter: {e}"))?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(format!("aia-{service}"))
                .build(),
        )
        .build();
    let tracer = provider.tracer("aia");
    // The first provider wins (tests may start several services in one process).
    let _ = PROVIDER.set(provider);
    Ok(tracing_opentelemetry::layer().with_tracer(tracer))
}

/// Sends every finished span now (tests, and before the process exits).
pub fn flush() {
    if let Some(provider) = PROVIDER.get()
        && let Err(error) = provider.force_flush()
    {
        tracing::warn!(%error, "flushing traces failed");
    }
}

/// Flushes and stops the exporter (at the end of `main`).
pub fn shutdown() {
    if let Some(provider) = PROVIDER.get() {
        let _ = provider.shutdown();
    }
}

fn propagator() -> &'static TraceContextPropagator {
    static PROPAGATOR: OnceLock<TraceContextPropagator> = OnceLock::new();
    PROPAGATOR.get_or_init(TraceContextPropagator::new)
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value),
        ) {
            self.0.insert(key, value);
        }
    }
}

struct StringInjector(Option<String>);

impl Injector for StringInjector {
    fn set(&mut self, key: &str, value: String) {
        if key == "traceparent" {
            self.0 = Some(value);
        }
    }
}

struct StringExtractor<'a>(&'a str);

impl Extractor for StringExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        (key == "traceparent").then_some(self.0)
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent"]
    }
}

/// The remote parent named by the `traceparent` header of `headers`, if any valid.
pub fn parent_from(headers: &http::HeaderMap) -> Option<opentelemetry::Context> {
    let cx = propagator().extract(&HeaderExtractor(headers));
    cx.span().span_context().is_valid().then_some(cx)
}

/// Makes `span`'s parent the context in `headers` (when there is one).
pub fn continue_from(span: &tracing::Span, headers: &http::HeaderMap) {
    if let Some(cx) = parent_from(headers) {
        let _ = span.set_parent(cx);
    }
}

/// Makes `span`'s parent the context of a `traceparent` value (when valid).
pub fn continue_traceparent(span: &tracing::Span, traceparent: &str) {
    if traceparent.is_empty() {
        return;
    }
    let cx = propagator().extract(&StringExtractor(traceparent));
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// The public edge's request span and a `traceparent` that came with the request.
/// Whatever its sampled flag says, the request is traced (a client cannot switch
/// tracing off for its own requests). The trace is continued only when the header
/// came from a `trusted` peer (a proxy of the deployment); a client's context is kept
/// as a link instead, so a client can neither pick the trace id its requests (and
/// their audit events) are filed under nor graft them onto someone else's trace.
pub fn at_the_edge(span: &tracing::Span, traceparent: &str, trusted: bool) {
    use opentelemetry::trace::{SpanContext, TraceFlags};
    let cx = propagator().extract(&StringExtractor(traceparent));
    let remote = cx.span().span_context().clone();
    if !remote.is_valid() {
        return;
    }
    if trusted {
        let sampled = SpanContext::new(
            remote.trace_id(),
            remote.span_id(),
            TraceFlags::SAMPLED,
            true,
            remote.trace_state().clone(),
        );
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(sampled));
    } else {
        span.add_link(remote);
    }
}

/// Writes the trace id of `span` into its `trace_id` field (declared empty when the
/// span was made), so every log line within it names its trace; nothing without a
/// trace (no exporter).
pub fn record_trace_id(span: &tracing::Span) {
    let cx = span.context();
    let span_context = cx.span().span_context().clone();
    if span_context.is_valid() {
        span.record("trace_id", span_context.trace_id().to_string());
    }
}

/// The `traceparent` of the current span, when it belongs to a trace (exported or
/// continued from a caller).
pub fn current_traceparent() -> Option<String> {
    let cx = tracing::Span::current().context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut injector = StringInjector(None);
    propagator().inject_context(&cx, &mut injector);
    injector.0
}

/// The trace id (32 hex digits) of a `traceparent` value.
pub fn trace_id_of(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.split('-');
    let (_, id) = (parts.next()?, parts.next()?);
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

/// The span of one gRPC call on the server: named after the method, its parent the
/// context the caller sent in the metadata. For tonic's `Server::trace_fn`.
pub fn server_span(service: &'static str) -> impl Fn(&http::Request<()>) -> tracing::Span + Clone {
    move |request: &http::Request<()>| {
        let method = request.uri().path();
        let span = tracing::info_span!(
            "grpc.server",
            otel.name = method,
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.method = method,
            aia.service = service,
            trace_id = tracing::field::Empty,
        );
        continue_from(&span, request.headers());
        record_trace_id(&span);
        span
    }
}

/// A tonic interceptor that sends the current span's context with each call.
#[derive(Clone, Copy, Debug, Default)]
pub struct InjectContext;

impl tonic::service::Interceptor for InjectContext {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        let cx = tracing::Span::current().context();
        if cx.span().span_context().is_valid() {
            propagator().inject_context(&cx, &mut MetadataInjector(request.metadata_mut()));
        }
        Ok(request)
    }
}

/// The channel every internal gRPC client uses: a tonic channel that carries the
/// trace context.
pub type TracedChannel =
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, InjectContext>;

/// Wraps a channel so that its calls carry the trace context.
pub fn traced(channel: tonic::transport::Channel) -> TracedChannel {
    tonic::service::interceptor::InterceptedService::new(channel, InjectContext)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .extend_from_slice(data);
            Ok(data.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A log line written while serving a call names the trace the caller sent.
    #[test]
    fn log_lines_within_a_call_carry_its_trace_id() {
        use opentelemetry::trace::TracerProvider as _;
        let provider = SdkTracerProvider::builder().build();
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_span_list(true)
                    .with_writer(move || writer.clone()),
            );
        let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        tracing::subscriber::with_default(subscriber, || {
            let request = http::Request::builder()
                .uri("/aia.auth.v1.AuthService/Login")
                .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
                .body(())
                .unwrap_or_default();
            let span = server_span("auth")(&request);
            span.in_scope(|| {
                let inner = tracing::info_span!("auth.login");
                inner.in_scope(|| tracing::info!("checked"));
            });
        });
        let text = String::from_utf8_lossy(
            &buffer
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
        .into_owned();
        assert!(
            text.contains(&format!("\"trace_id\":\"{trace}\"")),
            "{text}"
        );
    }
}
