//! Request validation before any handler: bounded headers, no control characters in
//! header values or in the (percent-decoded) path.
//!
//! - more than [`MAX_HEADERS`] header fields, a field over [`MAX_HEADER_BYTES`], or
//!   all of them over [`MAX_HEADERS_TOTAL`] → 431 (what the HTTP parser lets through
//!   is bounded again here, at lower limits than actix's own);
//! - a control character (other than horizontal tab) in a header value → 400;
//! - NUL or another control character in the path, raw or percent-encoded (`%00`,
//!   `%0a`) → 400: such paths are the stuff of log injection and of path confusion
//!   between the gateway and an upstream.
//!
//! Body limits, content types and JSON depth are the extractors' (see `json`);
//! methods a route does not serve get 405 from the route table.

use actix_web::ResponseError;
use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::middleware::Next;

use crate::problem::Problem;

/// Header fields allowed in one request.
pub const MAX_HEADERS: usize = 64;
/// Bytes allowed in one header field (name and value).
pub const MAX_HEADER_BYTES: usize = 8 * 1024;
/// Bytes allowed in all header fields together.
pub const MAX_HEADERS_TOTAL: usize = 32 * 1024;

fn is_control(b: u8) -> bool {
    (b < 0x20 && b != b'\t') || b == 0x7f
}

/// The bytes of `path` with `%XX` escapes decoded (malformed escapes kept as is).
fn decoded(path: &str) -> impl Iterator<Item = u8> + '_ {
    let bytes = path.as_bytes();
    let mut i = 0;
    std::iter::from_fn(move || {
        let b = *bytes.get(i)?;
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b, hex) {
            (b'%', Some(v)) => {
                i += 3;
                Some(v)
            }
            _ => {
                i += 1;
                Some(b)
            }
        }
    })
}

/// What is wrong with the request line and headers, if anything.
pub fn check(req: &actix_web::HttpRequest) -> Option<Problem> {
    let headers = req.headers();
    if headers.len() > MAX_HEADERS {
        return Some(too_large(&format!("more than {MAX_HEADERS} header fields")));
    }
    let mut total = 0;
    for (name, value) in headers {
        let size = name.as_str().len() + value.len();
        if size > MAX_HEADER_BYTES {
            return Some(too_large(&format!(
                "a header field is over {MAX_HEADER_BYTES} bytes"
            )));
        }
        total += size;
        if value.as_bytes().iter().copied().any(is_control) {
            return Some(Problem::bad_request().detail("a header value has a control character"));
        }
    }
    if total > MAX_HEADERS_TOTAL {
        return Some(too_large(&format!(
            "the header fields are over {MAX_HEADERS_TOTAL} bytes"
        )));
    }
    if decoded(req.uri().path()).any(is_control) {
        return Some(Problem::bad_request().detail("the path has a control character"));
    }
    None
}

fn too_large(detail: &str) -> Problem {
    Problem::new(
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "urn:aia:problem:headers-too-large",
        "Request header fields too large",
    )
    .detail(detail)
}

/// The middleware.
pub async fn validate(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    if let Some(problem) = check(req.request()) {
        crate::rejections::record_request(req.request(), "validation");
        return Ok(req.into_response(problem.error_response()));
    }
    Ok(next.call(req).await?.map_into_boxed_body())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_escapes_are_decoded_and_bad_ones_kept() {
        assert_eq!(decoded("/a%00b").collect::<Vec<u8>>(), b"/a\0b");
        assert_eq!(decoded("/a%0Ab%2f").collect::<Vec<u8>>(), b"/a\nb/");
        assert_eq!(decoded("/a%zzb%").collect::<Vec<u8>>(), b"/a%zzb%");
        assert_eq!(decoded("/%e2%82%ac").collect::<Vec<u8>>(), "/€".as_bytes());
    }

    #[test]
    fn controls_are_refused_but_tabs_and_utf8_are_not() {
        for request in [
            actix_web::test::TestRequest::get().uri("/v1/a%00b"),
            actix_web::test::TestRequest::get().uri("/v1/a%0d%0aSet-Cookie:x"),
            actix_web::test::TestRequest::get().uri("/v1/%7f"),
        ] {
            assert!(check(&request.to_http_request()).is_some());
        }
        for fine in [
            actix_web::test::TestRequest::get().uri("/v1/caf%C3%A9"),
            actix_web::test::TestRequest::get()
                .uri("/v1/x")
                .insert_header(("x-note", "a\tb")),
        ] {
            assert!(check(&fine.to_http_request()).is_none());
        }
        let mut many = actix_web::test::TestRequest::get().uri("/");
        for n in 0..=MAX_HEADERS {
            many = many.insert_header((format!("x-h{n}"), "v"));
        }
        let problem = check(&many.to_http_request());
        assert_eq!(problem.map(|p| p.status), Some(431));
    }
}
