//! CORS: an exact allowlist (`CORS_ORIGINS`), never a reflected origin.
//!
//! - `https://*.example.com` is compiled to an anchored match of one label, so
//!   `https://app.example.com.evil.net` and `https://evil-example.com` fail;
//! - the `null` origin (sandboxed frames, `file:`) is refused;
//! - credentials are allowed, but only ever for a listed origin;
//! - preflights are answered here (never forwarded), cached at most 7200 s;
//! - `Vary: Origin` is on every response (set in `middleware`), errors included.

use actix_cors::Cors;
use actix_web::http::header::{self, HeaderValue};

/// How long browsers may cache a preflight.
const MAX_AGE_SECONDS: usize = 7200;

/// The allowlist.
#[derive(Debug, Clone, Default)]
pub struct Origins(Vec<String>);

impl Origins {
    /// From settings (lower-cased).
    pub fn new(origins: Vec<String>) -> Self {
        Self(
            origins
                .into_iter()
                .filter(|o| o != "*" && o != "null")
                .collect(),
        )
    }

    /// Whether `origin` is listed.
    pub fn allows(&self, origin: &str) -> bool {
        let origin = origin.to_ascii_lowercase();
        if origin == "null" {
            return false;
        }
        self.0
            .iter()
            .any(|allowed| match allowed.split_once("://*.") {
                Some((scheme, domain)) => origin
                    .strip_prefix(scheme)
                    .and_then(|rest| rest.strip_prefix("://"))
                    .and_then(|host| host.strip_suffix(domain))
                    .and_then(|label| label.strip_suffix('.'))
                    .is_some_and(|label| {
                        !label.is_empty()
                            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    }),
                None => *allowed == origin,
            })
    }
}

/// Records a request whose `Origin` is not allowed (actix-cors then refuses it, or
/// the browser does); the request itself goes on unchanged.
pub async fn observe(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody + 'static>,
) -> Result<
    actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody + 'static>,
    actix_web::Error,
> {
    let refused = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .zip(req.app_data::<actix_web::web::Data<crate::state::State>>())
        .is_some_and(|(origin, state)| !state.origins.allows(origin));
    if refused {
        crate::rejections::record_request(req.request(), "cors");
    }
    next.call(req).await
}

/// The actix-cors middleware for `origins`.
pub fn middleware(origins: Origins) -> Cors {
    Cors::default()
        .allowed_origin_fn(move |origin: &HeaderValue, _| {
            origin.to_str().is_ok_and(|o| origins.allows(o))
        })
        .allowed_methods(["GET", "POST", "PUT", "DELETE"])
        .allowed_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::HeaderName::from_static("x-api-key"),
            header::HeaderName::from_static("x-request-id"),
            // The double-submit token of the cookie refresh, sent by a listed
            // front-end on another origin of the same site.
            header::HeaderName::from_static("x-csrf-token"),
        ])
        .expose_headers([
            header::HeaderName::from_static("x-request-id"),
            header::RETRY_AFTER,
            // A browser client may pace itself by the draft rate-limit fields.
            header::HeaderName::from_static("ratelimit"),
            header::HeaderName::from_static("ratelimit-policy"),
        ])
        .supports_credentials()
        .max_age(MAX_AGE_SECONDS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listed_origins_and_anchored_wildcards() {
        let origins = Origins::new(vec![
            "https://app.example.com".into(),
            "https://*.example.org".into(),
            "*".into(),
        ]);
        for ok in [
            "https://app.example.com",
            "https://eu.example.org",
            "HTTPS://APP.EXAMPLE.COM",
        ] {
            assert!(origins.allows(ok), "{ok}");
        }
        for bad in [
            "null",
            "https://evil.example",
            "http://app.example.com",
            "https://app.example.com.evil.net",
            "https://example.org",
            "https://a.b.example.org",
            "https://evil.com/.example.org",
            "https://app.example.com:8443",
        ] {
            assert!(!origins.allows(bad), "{bad}");
        }
        assert!(!Origins::new(vec!["*".into()]).allows("https://anything.example"));
    }

    mod properties {
        //! Lookalike origins (issue #8): nothing added before, after or inside an
        //! allowed origin is allowed, and a wildcard stands for exactly one label.
        use super::*;
        use proptest::prelude::*;

        proptest! {

            #[test]
            fn only_the_listed_origin_or_one_label_under_the_wildcard_passes(
                prefix in "[ -~]{0,12}",
                suffix in "[ -~]{0,12}",
                label in "[a-z0-9-]{1,12}",
                extra in "[a-z0-9-]{1,12}",
            ) {
                let origins = Origins::new(vec![
                    "https://app.example.com".into(),
                    "https://*.example.org".into(),
                ]);
                let exact = "https://app.example.com";
                let candidate = format!("{prefix}{exact}{suffix}");
                prop_assert_eq!(
                    origins.allows(&candidate),
                    prefix.is_empty() && suffix.is_empty(),
                    "{}", candidate
                );
                let one_label = format!("https://{label}.example.org");
                prop_assert!(origins.allows(&one_label));
                let two_labels = format!("https://{extra}.{label}.example.org");
                prop_assert!(!origins.allows(&two_labels));
                let lookalike = format!("https://{label}.example.org.{extra}");
                prop_assert!(!origins.allows(&lookalike));
                let other_scheme = format!("http://{label}.example.org");
                prop_assert!(!origins.allows(&other_scheme));
            }
        }
    }
}
