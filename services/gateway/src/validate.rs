//! Request validation before any handler: bounded headers, no control characters in
//! header values or in the (percent-decoded) path.
//!
//! - more than [`MAX_HEADERS`] header fields, a field over [`MAX_HEADER_BYTES`], or
//!   all of them over [`MAX_HEADERS_TOTAL`] → 431 (what the HTTP parser lets through
//!   is bounded again here, at lower limits than actix's own);
//! - a control character (other than horizontal tab) in a header value → 400;
//! - NUL or another control character in the path, raw or percent-encoded (`%00`,
//!   `%0a`) → 400: such paths are the stuff of log injection and of path confusion
//!   between the gateway and an upstream;
//! - a dot-segment in the path (`.` or `..`, raw, percent-encoded once or twice,
//!   joined by an encoded slash or a backslash, or followed by `;` parameters) → 400: an upstream that normalizes
//!   would serve a route other than the one the gateway matched and authorized
//!   (Envoy's CVE-2019-9901). Refused rather than normalized: no client of an API
//!   needs them, and a path the gateway rewrote could still be read differently by
//!   the upstream. Dots inside a segment (`.well-known`, `a..b`) are ordinary.
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

/// `bytes` with `%XX` escapes decoded (malformed escapes kept as is).
pub(crate) fn decoded(bytes: &[u8]) -> impl Iterator<Item = u8> + '_ {
    let hex = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    };
    let mut i = 0;
    std::iter::from_fn(move || {
        let b = *bytes.get(i)?;
        let escaped = match (b, bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&high), Some(&low)) => hex(high).zip(hex(low)),
            _ => None,
        };
        match escaped {
            Some((high, low)) => {
                i += 3;
                Some(high << 4 | low)
            }
            None => {
                i += 1;
                Some(b)
            }
        }
    })
}

/// Whether a segment of `path` is `.` or `..`, with `\` counted as a separator too
/// and a segment's parameters (`;` onwards) left out: Tomcat and servers like it read
/// `..;x` as `..`.
fn has_dot_segment(path: impl IntoIterator<Item = u8>) -> bool {
    let (mut dots, mut other, mut params) = (0, false, false);
    for b in path.into_iter().chain([b'/']) {
        match b {
            b'/' | b'\\' => {
                if !other && (dots == 1 || dots == 2) {
                    return true;
                }
                (dots, other, params) = (0, false, false);
            }
            _ if params => {}
            b';' => params = true,
            b'.' => dots += 1,
            _ => other = true,
        }
    }
    false
}

/// Whether `path` walks: a segment that is `.` or `..` once percent-decoded
/// (`%2e%2e`), or once decoded twice (`%252e%252e`), with `\` and encoded slashes
/// (`..%2f`, `..%5c`) counted as separators. An upstream that decodes and normalizes
/// the path would serve another route than the one the gateway matched:
/// `/public/../api/orders` is checked as public and served as `/api/orders`.
fn walks(path: &str) -> bool {
    if has_dot_segment(decoded(path.as_bytes())) {
        return true;
    }
    // Escaped escapes (`%25`) are rare: only then is the path decoded twice.
    path.contains("%25") && {
        let once: Vec<u8> = decoded(path.as_bytes()).collect();
        has_dot_segment(decoded(&once))
    }
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
    let path = req.uri().path();
    if decoded(path.as_bytes()).any(is_control) {
        return Some(Problem::bad_request().detail("the path has a control character"));
    }
    if walks(path) {
        return Some(Problem::bad_request().detail(
            "the path has a dot-segment (`.` or `..`, possibly percent-encoded or with an encoded slash)",
        ));
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
        let decode = |path: &str| decoded(path.as_bytes()).collect::<Vec<u8>>();
        assert_eq!(decode("/a%00b"), b"/a\0b");
        assert_eq!(decode("/a%0Ab%2f"), b"/a\nb/");
        assert_eq!(decode("/a%zzb%"), b"/a%zzb%");
        assert_eq!(decode("/a%+1b%-f"), b"/a%+1b%-f");
        assert_eq!(decode("/%e2%82%ac"), "/€".as_bytes());
    }

    #[test]
    fn dot_segments_are_found_however_they_are_written() {
        for path in [
            "/..",
            "/.",
            "/a/../b",
            "/a/./b",
            "/a/..",
            "/%2e%2e/b",
            "/%2E%2e/b",
            "/.%2e/b",
            "/a/..%2fb",
            "/a/..%2Fb",
            "/a/..%5cb",
            "/a/..\\b",
            "/a/%252e%252e/b",
            "/a/..%252fb",
            "/a/%25%32%65%25%32%65/b",
        ] {
            assert!(walks(path), "{path}");
        }
        for path in [
            "/",
            "/a/b",
            "/.well-known/x",
            "/a..b",
            "/a/.../b",
            "/a/..b",
            "/a/b.",
            "/a%2fb",
            "/a/%2e%2ex",
            "/a/%25%25/b",
        ] {
            assert!(!walks(path), "{path}");
        }
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
