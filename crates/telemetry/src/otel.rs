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
        );
        continue_from(&span, request.headers());
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
