//! The reverse proxy: configured prefixes (`UPSTREAMS`, e.g. `/api/`) go to their
//! upstream with the caller's identity attached.
//!
//! - **Authentication**: a prefix is protected unless listed in
//!   `UPSTREAM_PUBLIC_PREFIXES`: it needs a valid, unrevoked access token, or an API
//!   key with the `api:access` scope.
//! - **Identity headers**: whatever `x-auth-*` headers the client sent are removed,
//!   always; the gateway then adds `x-auth-user-id`, `x-auth-roles` (comma-separated;
//!   empty for an API key, which never carries its owner's roles),
//!   `x-auth-session-id` (bearer tokens) or `x-auth-api-key-id` (API keys), and
//!   `x-request-id`, `traceparent` (W3C: the caller's trace id kept, a new parent id),
//!   `x-forwarded-for` and `x-real-ip` (the client IP as `client_ip` decided it,
//!   replacing whatever the client sent), `x-forwarded-proto` and `x-forwarded-host`.
//! - **No overrides**: fields that frameworks take as the path, the method or the
//!   client's address (`X-Original-URL`, `X-HTTP-Method-Override`, `True-Client-IP`
//!   and their kin, see `OVERRIDES`) are not forwarded.
//! - **Credentials for the gateway stay here**: `X-API-Key`, `Authorization: ApiKey`
//!   and the gateway's own cookies (`__Host-aia_session`, `__Host-aia_csrf`,
//!   `__Host-aia_device`) are not forwarded, and an upstream's `Set-Cookie` for those names is dropped; nor is a
//!   bearer token, unless the prefix is listed in `UPSTREAM_TOKEN_PREFIXES` (an
//!   upstream that calls the platform on the user's behalf): it works on every route
//!   of the platform until it expires.
//!   Hop-by-hop headers (RFC 9110 §7.6.1) are dropped both ways, and so are an
//!   upstream's `Access-Control-*` fields (CORS is decided here alone) and its
//!   `Clear-Site-Data` (it would clear the gateway's cookies). A request header whose
//!   name has an underscore is not forwarded (as nginx by default: CGI-style servers
//!   read `X_Auth_Roles` as `X-Auth-Roles`).
//! - **Methods**: GET, HEAD, POST, PUT, PATCH, DELETE and OPTIONS; any other (TRACE,
//!   CONNECT, WebDAV's, a lowercase `trace`) is a 405.
//! - **Streaming**: request and response bodies are streamed, not buffered, and framed
//!   as the client framed them (no body, a declared length, or chunked); no
//!   `Accept-Encoding` is added for the client. A request body over
//!   `UPSTREAM_BODY_LIMIT_BYTES` gets 413 (by its length, or cut off when a chunked
//!   one passes the limit); a body over the limit or cut short by the client is its
//!   failure, not the upstream's, and does not count towards the circuit breaker.
//!   Nor does a timeout or broken connection that came before the client's body was
//!   read to its end: awc's timeout covers sending the body and waiting for the
//!   answer alike (an upload stalled past `UPSTREAM_TIMEOUT_SECONDS` is a 504, and
//!   an upstream that closes while a large body is still being sent a 502), and
//!   either may be one client's doing. A connection that could not be made at all
//!   does count. `Expect` is answered here, not forwarded. Redirects
//!   are passed to the client, not followed.
//! - **Failure**: a connection error or timeout (`UPSTREAM_TIMEOUT_SECONDS`) is a 502
//!   or 504 problem. Consecutive failures and 502, 503 and 504 answers (not other
//!   5xx, which a client can provoke) open the upstream's circuit
//!   (`UPSTREAM_BREAKER_FAILURES`, 5): for `UPSTREAM_BREAKER_OPEN_SECONDS` (10) it
//!   answers 503 at once, then lets one request through to probe (the next one too
//!   once a probe has been out for [`PROBE_LEASE_MS`]: a client's stalled upload
//!   cannot hold the probe until the upstream timeout).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use actix_web::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use actix_web::http::{Method, StatusCode, Uri};
use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};
use aia_settings::{Upstream, UpstreamSettings};
use aia_telemetry::metrics::Family;
use futures::StreamExt;

use crate::authn::Caller;
use crate::client::{Client, RequestId};
use crate::problem::Problem;
use crate::rate_limit::now_ms;

static UPSTREAM_REQUESTS: std::sync::LazyLock<Family<metrics::Counter>> =
    std::sync::LazyLock::new(|| {
        Family::counter("gateway_upstream_requests_total", &["upstream", "outcome"])
    });
static UPSTREAM_DURATIONS: std::sync::LazyLock<Family<metrics::Histogram>> =
    std::sync::LazyLock::new(|| {
        Family::histogram("gateway_upstream_duration_seconds", &["upstream"])
    });

/// The API-key scope that opens proxied routes.
pub const SCOPE: &str = "api:access";

/// Hop-by-hop fields, never forwarded in either direction.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Request fields that frameworks behind a proxy take as the path, the method or the
/// client's address (Symfony and IIS read `X-Original-URL` for the path, many read
/// `X-HTTP-Method-Override` for the method, `X-Real-IP` or `True-Client-IP` for the
/// client). From a client they would undo what the gateway matched, authorized and
/// rate-limited, so they are never forwarded; `X-Real-IP` is then set to the address
/// the gateway decided on, as `X-Forwarded-For` is.
const OVERRIDES: [&str; 13] = [
    "x-original-url",
    "x-rewrite-url",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "x-cluster-client-ip",
    "fastly-client-ip",
    "x-originating-ip",
    "client-ip",
];

/// Whether the cookie a `Cookie` pair or a `Set-Cookie` value names is one of the
/// gateway's own (the sealed refresh token, its CSRF twin, the device cookie).
/// Compared without regard to case, as browsers compare the `__Host-` prefix; bytes,
/// not text, so a field with other octets is read too.
fn gateways_cookie(pair: &[u8]) -> bool {
    let name = pair
        .split(|b| *b == b'=' || *b == b';')
        .next()
        .unwrap_or(pair)
        .trim_ascii();
    // A nameless cookie (`=__Host-aia_session=x`) is sent back by older browsers as
    // `__Host-aia_session=x`: it counts as ours.
    name.is_empty()
        || crate::cookies::OWN
            .iter()
            .any(|ours| ours.as_bytes().eq_ignore_ascii_case(name))
}

/// A `Cookie` field without the gateway's own cookies; `None` when nothing is left.
fn without_gateway_cookies(value: &HeaderValue) -> Option<HeaderValue> {
    let kept: Vec<&[u8]> = value
        .as_bytes()
        .split(|b| *b == b';')
        .map(<[u8]>::trim_ascii)
        .filter(|pair| !pair.is_empty() && !gateways_cookie(pair))
        .collect();
    if kept.is_empty() {
        return None;
    }
    HeaderValue::from_bytes(&kept.join(&b"; "[..])).ok()
}

/// A circuit breaker: closed, open until a time, or half-open with one probe out.
#[derive(Debug, Default)]
pub struct Breaker {
    failures: AtomicU32,
    /// Open until this time (ms since the Unix epoch); 0 when closed.
    open_until_ms: AtomicU64,
    probing: AtomicBool,
    /// When the probe out now was let through (ms since the Unix epoch).
    probe_since_ms: AtomicU64,
    /// Which probe is out (each one let through takes the next number).
    probe_generation: AtomicU64,
}

/// How long a half-open probe holds its place before the next request may probe
/// too. A probe can be held up by its client (an upload declared and never sent
/// holds it until the upstream timeout): the upstream's recovery is then seen from
/// the next request within this long, at the cost of at most one more probe per
/// lease to an upstream that is merely slow.
const PROBE_LEASE_MS: u64 = 2_000;

/// A request the breaker let through. Settled by [`Admitted::success`] or
/// [`Admitted::failure`]; dropped unsettled (the client's body failed, the client went
/// away, the request never left), it leaves the breaker as it was, except that a
/// half-open probe is handed back so that the next request can probe.
struct Admitted<'a> {
    breaker: &'a Breaker,
    /// The probe's number, when this request is a half-open probe.
    probe: Option<u64>,
}

impl Admitted<'_> {
    fn success(self) {
        self.breaker.success();
    }

    fn failure(self, threshold: u32, open_for: Duration) {
        self.breaker.failure(threshold, open_for);
    }
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        // After success or failure this is already false; a probe whose lease a
        // later one took over leaves the later one's place alone.
        if self
            .probe
            .is_some_and(|n| self.breaker.probe_generation.load(Ordering::Acquire) == n)
        {
            self.breaker.probing.store(false, Ordering::Release);
        }
    }
}

impl Breaker {
    /// Whether a request may go now; `Err` carries the time to wait.
    fn admit(&self) -> Result<Admitted<'_>, Duration> {
        let until = self.open_until_ms.load(Ordering::Acquire);
        if until == 0 {
            return Ok(Admitted {
                breaker: self,
                probe: None,
            });
        }
        let now = now_ms();
        if now < until {
            return Err(Duration::from_millis(until - now));
        }
        // Half-open: one probe at a time, each holding its place for a lease.
        let free = self
            .probing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        let since = self.probe_since_ms.load(Ordering::Acquire);
        let taken_over = !free
            && now.saturating_sub(since) >= PROBE_LEASE_MS
            && self
                .probe_since_ms
                .compare_exchange(since, now, Ordering::AcqRel, Ordering::Acquire)
                .is_ok();
        if !free && !taken_over {
            return Err(Duration::from_secs(1));
        }
        if free {
            self.probe_since_ms.store(now, Ordering::Release);
        }
        let generation = self.probe_generation.fetch_add(1, Ordering::AcqRel) + 1;
        Ok(Admitted {
            breaker: self,
            probe: Some(generation),
        })
    }

    fn success(&self) {
        self.failures.store(0, Ordering::Release);
        self.open_until_ms.store(0, Ordering::Release);
        self.probing.store(false, Ordering::Release);
    }

    fn failure(&self, threshold: u32, open_for: Duration) {
        let failures = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        let probing = self.probing.swap(false, Ordering::AcqRel);
        if failures >= threshold || probing {
            let open_for = u64::try_from(open_for.as_millis()).unwrap_or(10_000);
            self.open_until_ms
                .store(now_ms() + open_for, Ordering::Release);
        }
    }
}

/// The configured upstreams, longest prefix first, each with its breaker.
pub struct Upstreams {
    routes: Vec<(Upstream, Arc<Breaker>)>,
    /// Each route's prefix as [`loosely`] reads it, and whether it is public, for
    /// the public routes' check; `None` when no protected prefix lies inside a public
    /// one (then a public route is public without a look).
    loose: Option<Vec<(Vec<u8>, bool)>>,
    settings: UpstreamSettings,
}

impl Upstreams {
    /// From settings.
    pub fn new(settings: UpstreamSettings) -> Self {
        let mut routes: Vec<(Upstream, Arc<Breaker>)> = settings
            .upstreams
            .iter()
            .map(|u| (u.clone(), Arc::new(Breaker::default())))
            .collect();
        routes.sort_by_key(|(u, _)| std::cmp::Reverse(u.prefix.len()));
        let loose: Vec<(Vec<u8>, bool)> = routes
            .iter()
            .map(|(u, _)| (loosely(u.prefix.as_bytes()), u.public))
            .collect();
        let nested = loose.iter().any(|(protected, public)| {
            !public
                && loose
                    .iter()
                    .any(|(outer, outer_public)| *outer_public && protected.starts_with(outer))
        });
        Self {
            routes,
            loose: nested.then_some(loose),
            settings,
        }
    }

    /// The prefixes to route here.
    pub fn prefixes(&self) -> Vec<String> {
        self.routes.iter().map(|(u, _)| u.prefix.clone()).collect()
    }

    /// The upstream of `path` (longest prefix first, at a segment boundary: `/api/x`
    /// and `/api/x/y` are `/api/x/`'s, `/api/xy` is not), and whether it is public.
    ///
    /// A path is public only if the longest prefix that claims it as an upstream might
    /// read it (percent-decoded, without `;parameters`, empty segments or case) is
    /// public too. With
    /// `/api/` public and `/api/private/` protected, `/api//private/x`,
    /// `/api/PRIVATE/x`, `/api/private;p/x` and `/api/private%2Fx` all need a
    /// credential, as the frameworks that merge slashes, route without case, drop
    /// matrix parameters or decode `%2F` would serve them from the private routes.
    fn find(&self, path: &str) -> Option<(&Upstream, &Breaker, bool)> {
        let (upstream, breaker) = self.routes.iter().find(|(u, _)| {
            path.strip_prefix(u.prefix.trim_end_matches('/'))
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })?;
        let public = upstream.public
            && self.loose.as_ref().is_none_or(|loose| {
                let read = loosely(path.as_bytes());
                loose
                    .iter()
                    .find(|(prefix, _)| read.starts_with(prefix))
                    .is_none_or(|(_, public)| *public)
            });
        Some((upstream, breaker, public))
    }
}

/// A path as the loosest upstream reads it, for prefix checks: percent-decoded
/// (twice where an escape is escaped), `\` a separator, each segment cut at `;`,
/// empty segments dropped, ASCII lowercase, ending in `/`.
fn loosely(path: &[u8]) -> Vec<u8> {
    let mut decoded: Vec<u8> = crate::validate::decoded(path).collect();
    // Escaped escapes (`%252F`) are rare: only then is the path decoded twice.
    if path.windows(3).any(|w| w.eq_ignore_ascii_case(b"%25")) {
        decoded = crate::validate::decoded(&decoded).collect();
    }
    let mut read = Vec::with_capacity(decoded.len() + 1);
    for segment in decoded.split(|b| *b == b'/' || *b == b'\\') {
        let segment = segment.split(|b| *b == b';').next().unwrap_or_default();
        if !segment.is_empty() {
            read.push(b'/');
            read.extend(segment.iter().map(u8::to_ascii_lowercase));
        }
    }
    read.push(b'/');
    read
}

/// An HTTP client per worker thread (awc is single-threaded, like actix's workers).
pub fn http_client(settings: &UpstreamSettings) -> awc::Client {
    // awc's own TCP connector, with TCP_NODELAY on each connection (as nginx sets it
    // on upstream connections): a streamed request body would otherwise wait behind
    // its head for the upstream's acknowledgement.
    let tcp = actix_service::ServiceExt::map(
        actix_tls::connect::Connector::new(actix_tls::connect::Resolver::default()).service(),
        |connection: actix_tls::connect::Connection<Uri, tokio::net::TcpStream>| {
            if let Err(error) = connection.io_ref().set_nodelay(true) {
                tracing::debug!(%error, "TCP_NODELAY on an upstream connection");
            }
            connection
        },
    );
    awc::Client::builder()
        .connector(
            awc::Connector::new()
                .connector(tcp)
                .timeout(settings.connect_timeout)
                .limit(0),
        )
        .timeout(settings.timeout)
        .disable_redirects()
        .no_default_headers()
        .finish()
}

/// A W3C `traceparent` continuing the caller's trace, or starting one.
fn traceparent(incoming: Option<&HeaderValue>) -> Option<HeaderValue> {
    // The thread's CSPRNG (seeded from the OS), not a system call per request: these
    // ids must not collide or be guessed, but they guard nothing.
    let mut random = [0u8; 24];
    rand::Rng::fill_bytes(&mut rand::rng(), &mut random);
    let (parent, fresh_trace) = random.split_at(8);
    let trace_id = incoming
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let parts: Vec<&str> = v.split('-').collect();
            match parts.as_slice() {
                ["00", trace, span, flags]
                    if trace.len() == 32
                        && span.len() == 16
                        && flags.len() == 2
                        && trace.bytes().all(|b| b.is_ascii_hexdigit())
                        && *trace != "00000000000000000000000000000000" =>
                {
                    Some((*trace).to_ascii_lowercase())
                }
                _ => None,
            }
        })
        .unwrap_or_else(|| hex::encode(fresh_trace));
    HeaderValue::from_str(&format!("00-{trace_id}-{}-01", hex::encode(parent))).ok()
}

/// The request headers an upstream gets.
fn upstream_headers(
    req: &HttpRequest,
    upstream: &Upstream,
    caller: Option<&Caller>,
    client: &Client,
) -> HeaderMap {
    // Fields the client named in `Connection` are hop-by-hop too.
    let named: Vec<String> = req
        .headers()
        .get_all(header::CONNECTION)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect();
    let mut headers = HeaderMap::new();
    for (name, value) in req.headers() {
        let lower = name.as_str();
        // A name with `_` is not forwarded (nginx's default, `underscores_in_headers
        // off`): CGI-style servers (Django, WSGI/ASGI, PHP) read `X_Auth_Roles` and
        // `X-Auth-Roles` as one variable, so it would pass every rule below that
        // strips the dashed spelling.
        if lower.contains('_') || named.iter().any(|n| n == lower) {
            continue;
        }
        // An API key stays here; so does a bearer token unless the upstream is one
        // that asked for it, and any `Authorization` beside an API key (a token
        // nobody checked: the key was the credential). Other schemes (Basic, an
        // upstream's own) are the upstream's business.
        let scheme = |wanted: &str| {
            value
                .as_bytes()
                .get(..wanted.len())
                .is_some_and(|start| start.eq_ignore_ascii_case(wanted.as_bytes()))
        };
        let gateway_credential = lower == "x-api-key"
            || (name == header::AUTHORIZATION
                && ((!upstream.pass_token && scheme("bearer "))
                    || matches!(caller, Some(Caller::ApiKey { .. }))
                    || scheme("apikey ")));
        if lower.starts_with("x-auth-")
            || lower.starts_with("x-forwarded-")
            || lower == "forwarded"
            || lower == "traceparent"
            || lower == "host"
            // The framing is awc's to write for the body it sends, and `Expect` was
            // answered here (awc refuses to send one with no body).
            || name == header::CONTENT_LENGTH
            || name == header::EXPECT
            || HOP_BY_HOP.contains(&lower)
            || OVERRIDES.contains(&lower)
            || gateway_credential
        {
            continue;
        }
        if name == header::COOKIE {
            // The gateway's session and CSRF cookies stay here (a replay of both at
            // /v1/auth/refresh is a session), like `X-API-Key`.
            if let Some(value) = without_gateway_cookies(value) {
                headers.append(name.clone(), value);
            }
            continue;
        }
        headers.append(name.clone(), value.clone());
    }
    let mut add = |name: &'static str, value: &str| {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    };
    match caller {
        Some(Caller::User(auth)) => {
            add("x-auth-user-id", &auth.claims.sub);
            add("x-auth-roles", &auth.claims.roles.join(","));
            add("x-auth-session-id", &auth.claims.sid);
        }
        Some(Caller::ApiKey {
            user_id, key_id, ..
        }) => {
            add("x-auth-user-id", user_id);
            add("x-auth-roles", "");
            add("x-auth-api-key-id", key_id);
        }
        None => {}
    }
    add("x-request-id", &client.request_id);
    add("x-forwarded-for", &client.ip);
    add("x-real-ip", &client.ip);
    let scheme = req
        .app_data::<web::Data<crate::client_ip::TrustedProxies>>()
        .map_or("http", |proxies| proxies.scheme(req));
    add("x-forwarded-proto", scheme);
    if let Some(host) = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
    {
        add("x-forwarded-host", host);
    }
    // This request's own span context when traces are on; else the caller's trace id
    // with a new parent id.
    let ours =
        aia_telemetry::otel::current_traceparent().and_then(|t| HeaderValue::from_str(&t).ok());
    if let Some(value) = ours.or_else(|| traceparent(req.headers().get("traceparent"))) {
        headers.insert(HeaderName::from_static("traceparent"), value);
    }
    headers
}

fn declared_length(req: &HttpRequest) -> Option<usize> {
    req.headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// Whether the body comes chunked: HTTP/1.1 with `chunked` as the last transfer
/// coding, as the HTTP parser read it (it refuses a request with `Content-Length`
/// too, and ignores `Transfer-Encoding` in HTTP/1.0).
fn chunked(req: &HttpRequest) -> bool {
    req.version() >= actix_web::http::Version::HTTP_11
        && req
            .headers()
            .get(header::TRANSFER_ENCODING)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .is_some_and(|coding| coding.trim().eq_ignore_ascii_case("chunked"))
}

/// The handler of every proxied path.
pub async fn forward(
    req: HttpRequest,
    payload: web::Payload,
    upstreams: web::Data<Upstreams>,
    http: web::Data<awc::Client>,
    client: Client,
) -> Result<HttpResponse, Problem> {
    // Matched on the path the router matched (`/%61pi/x` is `/api/x` to it, and to
    // an upstream that decodes it); forwarded as sent.
    // TRACE would have an upstream echo the request, the gateway's identity headers
    // and the bearer token included; CONNECT asks for a tunnel. Neither is proxied
    // (nginx refuses TRACE too).
    // Methods are case-sensitive (RFC 9110 §9.1) but some servers compare them
    // without case, so a made-up method (`trace`, `PROPFIND`) is refused too.
    if !matches!(
        *req.method(),
        Method::GET
            | Method::HEAD
            | Method::POST
            | Method::PUT
            | Method::PATCH
            | Method::DELETE
            | Method::OPTIONS
    ) {
        return Err(Problem::method_not_allowed().header(
            header::ALLOW,
            "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS",
        ));
    }
    // A WebSocket upgrade is not proxied (`Upgrade` is hop-by-hop). Its body would be
    // read to the end of the connection (that is how the HTTP parser frames such a
    // request), not by its declared length, so it is refused before any of it is.
    let websocket = req
        .headers()
        .get_all(header::UPGRADE)
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.trim().eq_ignore_ascii_case("websocket"));
    if websocket {
        return Err(Problem::bad_request().detail("WebSocket upgrades are not proxied"));
    }
    let Some((upstream, breaker, public)) = upstreams.find(req.match_info().as_str()) else {
        return Err(Problem::not_found());
    };
    let caller = if public {
        None
    } else {
        let caller = <Caller as actix_web::FromRequest>::extract(&req).await?;
        if !caller.may(SCOPE) {
            return Err(Problem::forbidden(
                "this API key lacks the api:access scope",
            ));
        }
        Some(caller)
    };
    let settings = &upstreams.settings;
    if declared_length(&req).is_some_and(|n| n > settings.body_limit) {
        return Err(Problem::payload_too_large(settings.body_limit));
    }
    let admitted = match breaker.admit() {
        Ok(admitted) => admitted,
        Err(wait) => {
            UPSTREAM_REQUESTS
                .get(&[&upstream.prefix, "circuit_open"])
                .increment(1);
            let seconds = wait.as_secs().max(1);
            let mut problem = Problem::unavailable().detail("the upstream is failing; retry later");
            problem
                .headers
                .push((header::RETRY_AFTER, HeaderValue::from(seconds)));
            return Err(problem);
        }
    };
    let path_and_query = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.path().to_owned(), |pq| pq.as_str().to_owned());
    let Ok(uri) = format!("{}{path_and_query}", upstream.url).parse::<Uri>() else {
        return Err(Problem::bad_request().detail("this path cannot be forwarded"));
    };
    // The upstream gets the client's request as it was framed: no body, a body of the
    // declared length, or a chunked one (cut off past the limit). awc would otherwise
    // add `content-length: 0` to a GET, send a sized body chunked, and ask for
    // `accept-encoding: identity` on the client's behalf.
    let mut outgoing = http.request(req.method().clone(), uri).no_decompress();
    *outgoing.headers_mut() = upstream_headers(&req, upstream, caller.as_ref(), &client);
    let limit = settings.body_limit;
    // Whether the client's body was read to its end: a failure before it was (the
    // client stalled its upload past the timeout, or the upstream closed while it was
    // still being sent) may be the client's doing, and does not count towards the
    // breaker: a few stalled uploads would otherwise shut the upstream for everyone.
    let body_read = std::rc::Rc::new(std::cell::Cell::new(false));
    let read_to_end = {
        let body_read = body_read.clone();
        futures::stream::poll_fn(move |_| {
            body_read.set(true);
            std::task::Poll::Ready(None)
        })
    };
    let started = std::time::Instant::now();
    let sent = match (declared_length(&req), chunked(&req)) {
        (None, false) => {
            body_read.set(true);
            outgoing.send_body(actix_web::body::None::new()).await
        }
        (Some(length), false) => {
            // awc never polls an empty body.
            body_read.set(length == 0);
            let (mut seen, body_read) = (0usize, body_read.clone());
            let body = payload
                .map(move |chunk| {
                    let chunk = chunk?;
                    seen += chunk.len();
                    if seen >= length {
                        body_read.set(true);
                    }
                    Ok(chunk)
                })
                .chain(read_to_end);
            outgoing
                .send_body(actix_web::body::SizedStream::new(length as u64, body))
                .await
        }
        (_, true) => {
            let mut seen = 0usize;
            let body = payload
                .map(move |chunk| {
                    let chunk = chunk?;
                    seen += chunk.len();
                    if seen > limit {
                        return Err(actix_web::error::PayloadError::Overflow);
                    }
                    Ok(chunk)
                })
                .chain(read_to_end);
            outgoing.send_stream(body).await
        }
    };
    let elapsed = started.elapsed().as_secs_f64();
    let response = match sent {
        Ok(response) => response,
        Err(awc::error::SendRequestError::Body(error)) => {
            // The client's body, not the upstream, failed: over the limit, or cut
            // short by the client.
            let overflow = error
                .downcast_ref::<actix_web::error::PayloadError>()
                .is_some_and(|e| matches!(e, actix_web::error::PayloadError::Overflow));
            return Err(if overflow {
                Problem::payload_too_large(limit)
            } else {
                Problem::bad_request().detail("the request body could not be read")
            });
        }
        Err(error) => {
            // A connection that could not be made is the upstream's failure whatever
            // the body (awc connects before it reads any of it).
            if body_read.get() || matches!(error, awc::error::SendRequestError::Connect(_)) {
                admitted.failure(settings.breaker_failures, settings.breaker_open_for);
            }
            let (status, outcome) = match error {
                awc::error::SendRequestError::Timeout => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
                _ => (StatusCode::BAD_GATEWAY, "error"),
            };
            UPSTREAM_REQUESTS
                .get(&[&upstream.prefix, outcome])
                .increment(1);
            tracing::warn!(upstream = %upstream.url, %error, "upstream request failed");
            return Err(Problem::upstream(status));
        }
    };
    // Only answers that say the upstream cannot serve count (as Envoy's
    // consecutive_gateway_failure): a 500 or a 501 can be one client's doing (input
    // that crashes a handler, a made-up method), and would let any client shut the
    // upstream for everyone.
    if matches!(
        response.status(),
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
    ) {
        admitted.failure(settings.breaker_failures, settings.breaker_open_for);
    } else {
        admitted.success();
    }
    UPSTREAM_REQUESTS
        .get(&[&upstream.prefix, response.status().as_str()])
        .increment(1);
    UPSTREAM_DURATIONS.get(&[&upstream.prefix]).record(elapsed);
    let mut answer = HttpResponse::build(response.status());
    for (name, value) in response.headers() {
        // CORS is the gateway's alone: an upstream's `Access-Control-*` fields (say
        // `Allow-Origin: *`) would widen the allowlist for its routes.
        // Nor may an upstream set or clear the gateway's own cookies.
        // `Clear-Site-Data: "cookies"` would clear them too (the gateway sends its
        // own on logout).
        let sets_ours = name == header::SET_COOKIE && gateways_cookie(value.as_bytes());
        if !HOP_BY_HOP.contains(&name.as_str())
            && name != header::CONTENT_LENGTH
            && name.as_str() != "clear-site-data"
            && !name.as_str().starts_with("access-control-")
            && !sets_ours
        {
            answer.append_header((name.clone(), value.clone()));
        }
    }
    // The request id the gateway used (the middleware echoes it too).
    if let Some(value) = req
        .extensions()
        .get::<RequestId>()
        .and_then(|id| HeaderValue::from_str(&id.0).ok())
    {
        answer.insert_header((HeaderName::from_static("x-request-id"), value));
    }
    let length = response
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    Ok(match length {
        // A known length stays known (no chunking the upstream did not do).
        Some(length) => answer.body(actix_web::body::SizedStream::new(length, response)),
        None => answer.streaming(response),
    })
}
