//! Cross-cutting behaviour applied to every response: the request id, baseline
//! security headers, and request metrics.

use actix_web::HttpMessage;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::middleware::Next;
use tracing::Instrument;

use aia_telemetry::metrics::Family;

use crate::client::{REQUEST_ID, RequestId};

/// Headers every response carries. API responses are never framed, sniffed, cached by
/// shared caches or allowed to load anything.
const SECURITY_HEADERS: [(&str, &str); 9] = [
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
    (
        "content-security-policy",
        "default-src 'none'; frame-ancestors 'none'",
    ),
    ("cross-origin-resource-policy", "same-origin"),
    ("cross-origin-opener-policy", "same-origin"),
    ("cross-origin-embedder-policy", "require-corp"),
    ("x-permitted-cross-domain-policies", "none"),
    (
        "permissions-policy",
        "accelerometer=(), autoplay=(), camera=(), display-capture=(), fullscreen=(), geolocation=(), \
         gyroscope=(), magnetometer=(), microphone=(), midi=(), payment=(), picture-in-picture=(), \
         publickey-credentials-get=(), screen-wake-lock=(), usb=(), xr-spatial-tracking=()",
    ),
];

/// `Strict-Transport-Security`, sent in production only (development is plain HTTP
/// on localhost, where a pinned HSTS entry would break other local apps).
pub const HSTS: &str = "max-age=31536000; includeSubDomains";

/// Whether to send [`HSTS`].
#[derive(Debug, Clone, Copy)]
pub struct SendHsts(pub bool);

static REQUESTS: std::sync::LazyLock<Family<metrics::Counter>> = std::sync::LazyLock::new(|| {
    Family::counter("gateway_requests_total", &["route", "method", "status"])
});
static DURATIONS: std::sync::LazyLock<Family<metrics::Histogram>> =
    std::sync::LazyLock::new(|| {
        Family::histogram("gateway_request_duration_seconds", &["route", "method"])
    });

/// The method as a metric label and log field: the methods of RFC 9110 and PATCH by
/// name, any other token as `other` (a client can send any token as a method, and
/// each would otherwise be a series of its own).
fn method_label(method: &actix_web::http::Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "CONNECT" => "CONNECT",
        "OPTIONS" => "OPTIONS",
        "TRACE" => "TRACE",
        "PATCH" => "PATCH",
        _ => "other",
    }
}

/// A JSON or text content type without a charset parameter.
fn needs_charset(content_type: &str) -> bool {
    let lower = content_type.to_ascii_lowercase();
    let essence = lower.split(';').next().unwrap_or("").trim();
    let textual =
        essence.starts_with("text/") || essence == "application/json" || essence.ends_with("+json");
    textual && !lower.contains("charset=")
}

/// Accepts or makes the request id, records it for handlers, echoes it, adds the
/// security headers and counts the request.
pub async fn decorate(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody + 'static>, actix_web::Error> {
    let request_id = RequestId::from_header(req.headers().get(REQUEST_ID));
    let id_value = HeaderValue::from_str(&request_id.0).ok();
    let method = method_label(req.method());
    // Everything logged while serving the request carries its id; the span continues
    // the caller's trace (W3C `traceparent`), or starts one.
    let span = tracing::info_span!(
        "request",
        otel.name = %format!("HTTP {method}"),
        otel.kind = "server",
        http.request.method = %method,
        url.path = %req.path(),
        request_id = %request_id.0,
        method = %method,
        trace_id = tracing::field::Empty,
    );
    if let Some(incoming) = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
    {
        // Only a trusted proxy's context is continued; a client's is linked.
        let trusted = req
            .app_data::<actix_web::web::Data<crate::client_ip::TrustedProxies>>()
            .is_some_and(|proxies| proxies.trusts_peer(req.request()));
        aia_telemetry::otel::at_the_edge(&span, incoming, trusted);
    }
    aia_telemetry::otel::record_trace_id(&span);
    req.extensions_mut().insert(request_id);
    let hsts = req
        .app_data::<actix_web::web::Data<SendHsts>>()
        .is_some_and(|h| h.0);
    let started = std::time::Instant::now();
    let mut response = next.call(req).instrument(span.clone()).await?;
    let route = response
        .request()
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned());
    // Usage of an identified caller (a user or an API key), for the admins' view.
    let served = response.request();
    if let Some(state) = served.app_data::<actix_web::web::Data<crate::state::State>>()
        && let Some(caller) = served.extensions().get::<crate::usage::Identified>()
    {
        state
            .usage
            .record(&caller.0, served.path(), response.status().as_u16());
    }
    let status = response.status();
    span.in_scope(|| {
        tracing::debug!(route = %route, status = status.as_u16(), elapsed_us = started.elapsed().as_micros() as u64, "served");
    });
    REQUESTS
        .get(&[&route, method, status.as_str()])
        .increment(1);
    DURATIONS
        .get(&[&route, method])
        .record(started.elapsed().as_secs_f64());
    let headers = response.headers_mut();
    if let Some(id) = id_value {
        headers.insert(HeaderName::from_static(REQUEST_ID), id);
    }
    for (name, value) in SECURITY_HEADERS {
        headers.insert(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    if hsts {
        headers.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static(HSTS),
        );
    }
    // No software names, whoever set them (an upstream's `X-Powered-By: Express`).
    headers.remove(header::SERVER);
    headers.remove(HeaderName::from_static("x-powered-by"));
    // Every text body names its charset (JSON is UTF-8; say so for every client).
    if let Some(with_charset) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .filter(|v| needs_charset(v))
        .and_then(|v| HeaderValue::from_str(&format!("{v}; charset=utf-8")).ok())
    {
        headers.insert(header::CONTENT_TYPE, with_charset);
    }
    // Answers differ by Origin (CORS), so caches must key on it, errors included.
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use actix_web::{App, HttpResponse, test, web};

    use super::*;

    async fn headers_with(send_hsts: bool) -> actix_web::http::header::HeaderMap {
        let app = test::init_service(
            App::new()
                .app_data(web::Data::new(SendHsts(send_hsts)))
                .wrap(actix_web::middleware::from_fn(decorate))
                .route("/", web::get().to(HttpResponse::Ok)),
        )
        .await;
        test::call_service(&app, test::TestRequest::get().uri("/").to_request())
            .await
            .headers()
            .clone()
    }

    #[actix_web::test]
    async fn production_pins_https_and_development_does_not() {
        let production = headers_with(true).await;
        assert_eq!(
            production
                .get(header::STRICT_TRANSPORT_SECURITY)
                .and_then(|v| v.to_str().ok()),
            Some(HSTS)
        );
        assert!(production.get(header::SERVER).is_none());
        assert!(
            headers_with(false)
                .await
                .get(header::STRICT_TRANSPORT_SECURITY)
                .is_none()
        );
    }
}
