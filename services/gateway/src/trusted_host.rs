//! Trusted hosts: a request whose `Host` is not in `ALLOWED_HOSTS` gets 400 before
//! anything else runs (host-header poisoning of links, cache keys and redirects). So
//! does one with two `Host` fields, or with a request-target in absolute form whose
//! authority is not its `Host`.
//! Entries are exact names or `*.example.com`, which matches exactly one more label
//! (`api.example.com`, not `example.com` nor `a.b.example.com`). An empty list allows
//! any host (development only; production refuses it).

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{ResponseError, web};

use crate::problem::Problem;

/// The allowed hosts, lower-case.
#[derive(Debug, Clone, Default)]
pub struct AllowedHosts(Vec<String>);

impl AllowedHosts {
    /// From settings (already lower-cased).
    pub fn new(hosts: Vec<String>) -> Self {
        Self(hosts)
    }

    /// Whether `host` (from the `Host` header, port included or not) is allowed. It
    /// must be a name (letters, digits, `-`, `.`) or a bracketed IPv6 literal, then at
    /// most a numeric port: `api.example.com:@evil.com` or `api.example.com:evil.com`
    /// would pass a look at the name alone, and reach an upstream as
    /// `X-Forwarded-Host`, where links are built from it.
    pub fn allows(&self, host: &str) -> bool {
        if self.0.is_empty() {
            return true;
        }
        let host = host.to_ascii_lowercase();
        let (name, port) = match host.find(']') {
            Some(end) if host.starts_with('[') => host.split_at(end + 1),
            _ => host.split_at(host.find(':').unwrap_or(host.len())),
        };
        let literal = name
            .strip_prefix('[')
            .and_then(|n| n.strip_suffix(']'))
            .is_some_and(|inside| {
                !inside.is_empty()
                    && inside
                        .bytes()
                        .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
            });
        let dns = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        let port_ok = port.is_empty()
            || port.strip_prefix(':').is_some_and(|digits| {
                (1..=5).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit())
            });
        if !(port_ok && (literal || dns)) {
            return false;
        }
        self.0
            .iter()
            .any(|allowed| match allowed.strip_prefix("*.") {
                Some(domain) => name
                    .strip_suffix(domain)
                    .and_then(|label| label.strip_suffix('.'))
                    .is_some_and(|label| !label.is_empty() && !label.contains('.')),
                None => *allowed == name,
            })
    }
}

/// The one host the request names: its `Host` field, or the authority of a
/// request-target in absolute form (which a server must use instead, RFC 9112
/// §3.2.2). `None`, and so refused, when there is none, when there are two `Host`
/// fields, or when the target's authority and `Host` disagree.
fn named_host(req: &actix_web::HttpRequest) -> Option<&str> {
    let mut fields = req.headers().get_all(actix_web::http::header::HOST);
    let field = match (fields.next(), fields.next()) {
        (field, None) => field.map(|h| h.to_str().ok()),
        (_, Some(_)) => return None,
    };
    match (req.uri().authority(), field) {
        (Some(authority), None) => Some(authority.as_str()),
        (Some(authority), Some(Some(host))) => authority
            .as_str()
            .eq_ignore_ascii_case(host)
            .then_some(host),
        (None, Some(host)) => host,
        (Some(_), Some(None)) | (None, None) => None,
    }
}

/// The middleware.
pub async fn check(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let allowed = req
        .app_data::<web::Data<AllowedHosts>>()
        .is_none_or(|hosts| named_host(req.request()).is_some_and(|h| hosts.allows(h)));
    if !allowed {
        crate::rejections::record_request(req.request(), "host");
        let problem = Problem::bad_request().detail("this host is not served here");
        return Ok(req.into_response(problem.error_response()));
    }
    Ok(next.call(req).await?.map_into_boxed_body())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_names_and_one_label_wildcards_only() {
        let hosts = AllowedHosts::new(vec![
            "api.example.com".into(),
            "*.example.org".into(),
            "[::1]".into(),
        ]);
        for ok in [
            "api.example.com",
            "API.example.com:8443",
            "a.example.org",
            "[::1]:8080",
        ] {
            assert!(hosts.allows(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "example.org",
            "a.b.example.org",
            "example.org.evil.net",
            "api.example.com.evil.net",
            "xapi.example.com",
            "",
            ".example.org",
            // Only a numeric port may follow the name.
            "api.example.com:@evil.com",
            "api.example.com:evil.com",
            "api.example.com:",
            "api.example.com:443:443",
            "api.example.com:123456",
            "evil@a.example.org",
            "a.example.org\\evil",
            "[::1]evil",
            "[::1]:@evil.com",
        ] {
            assert!(!hosts.allows(bad), "{bad}");
        }
        assert!(AllowedHosts::default().allows("anything"));
    }
}
