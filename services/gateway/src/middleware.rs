//! Cross-cutting behaviour applied to every response: the request id, baseline
//! security headers, and request metrics.

use actix_web::HttpMessage;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::middleware::Next;

use crate::client::{REQUEST_ID, RequestId};

/// Headers every response carries. API responses are never framed, sniffed, cached by
/// shared caches or allowed to load anything.
const SECURITY_HEADERS: [(&str, &str); 6] = [
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
    (
        "content-security-policy",
        "default-src 'none'; frame-ancestors 'none'",
    ),
    ("cross-origin-resource-policy", "same-origin"),
    ("x-permitted-cross-domain-policies", "none"),
];

/// Accepts or makes the request id, records it for handlers, echoes it, adds the
/// security headers and counts the request.
pub async fn decorate(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody + 'static>, actix_web::Error> {
    let request_id = RequestId::from_header(req.headers().get(REQUEST_ID));
    let id_value = HeaderValue::from_str(&request_id.0).ok();
    req.extensions_mut().insert(request_id);
    let method = req.method().to_string();
    let started = std::time::Instant::now();
    let mut response = next.call(req).await?;
    let route = response
        .request()
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned());
    let status = response.status().as_u16().to_string();
    metrics::counter!("gateway_requests_total", "route" => route.clone(), "method" => method.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("gateway_request_duration_seconds", "route" => route, "method" => method)
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
    headers.remove(header::SERVER);
    Ok(response)
}
