//! The reverse proxy: identity headers the client cannot forge, authentication,
//! streaming bodies with a limit, timeouts, the circuit breaker, redirects passed on.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use aia_testkit::Stack;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode as AxumStatus, Uri};
use axum::response::IntoResponse;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{api_key, assert_problem, field, raw, signed_in, user_id};

/// An upstream that answers what it received, and counts calls.
struct Echo {
    url: String,
    calls: Arc<AtomicUsize>,
}

async fn echo(
    State(calls): State<Arc<AtomicUsize>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    calls.fetch_add(1, Ordering::SeqCst);
    match uri.path() {
        "/api/slow" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            return "late".into_response();
        }
        "/api/fail" | "/public/fail" => {
            return (AxumStatus::SERVICE_UNAVAILABLE, "overloaded").into_response();
        }
        "/api/crash" => return (AxumStatus::INTERNAL_SERVER_ERROR, "boom").into_response(),
        "/public/cookies" => {
            return (
                axum::response::AppendHeaders([
                    (
                        "set-cookie",
                        "__Host-aia_session=; Max-Age=0; Path=/; Secure",
                    ),
                    ("set-cookie", "__host-AIA_csrf=chosen; Path=/; Secure"),
                    // Nameless: older browsers send it back as `__Host-aia_session=x`.
                    ("set-cookie", "=__Host-aia_session=x; Path=/; Secure"),
                    ("set-cookie", "theme=dark; Path=/"),
                    ("clear-site-data", "\"cookies\", \"storage\""),
                ]),
                "{}",
            )
                .into_response();
        }
        "/public/leaky" => {
            return (
                [
                    ("access-control-allow-origin", "*"),
                    ("access-control-allow-credentials", "true"),
                    ("access-control-expose-headers", "x-secret"),
                    ("x-powered-by", "Express"),
                    ("server", "Apache/2.4.1"),
                ],
                "{}",
            )
                .into_response();
        }
        "/api/redirect" => {
            return (
                AxumStatus::FOUND,
                [("location", "https://elsewhere.example/")],
                "",
            )
                .into_response();
        }
        _ => {}
    }
    let mut seen = serde_json::Map::new();
    for (name, value) in &headers {
        let entry = seen
            .entry(name.as_str().to_owned())
            .or_insert_with(|| json!([]));
        if let Some(list) = entry.as_array_mut() {
            list.push(json!(value.to_str().unwrap_or("<binary>")));
        }
    }
    (
        [("x-upstream", "echo"), ("content-type", "application/json")],
        json!({
            "method": method.as_str(),
            "uri": uri.to_string(),
            "headers": seen,
            "body_length": body.len(),
        })
        .to_string(),
    )
        .into_response()
}

async fn start_echo() -> anyhow::Result<Echo> {
    let calls = Arc::new(AtomicUsize::new(0));
    let app = axum::Router::new().fallback(echo).with_state(calls.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(Echo { url, calls })
}

async fn stack_with(echo: &Echo, extra: &[(&str, String)]) -> anyhow::Result<Stack> {
    let mut all = vec![("UPSTREAMS", format!("/api/={0},/public/={0}", echo.url))];
    all.push(("UPSTREAM_PUBLIC_PREFIXES", "/public/".into()));
    all.extend_from_slice(extra);
    Stack::start_with(&all).await
}

/// The first value of a header the upstream saw.
fn seen<'a>(answer: &'a Value, name: &str) -> Option<&'a str> {
    answer["headers"][name][0].as_str()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_headers_replace_whatever_the_client_sent() -> anyhow::Result<()> {
    let echo = start_echo().await?;
    let stack = stack_with(&echo, &[]).await?;
    let user = signed_in(&stack).await?;
    let token = field(&user, "access_token");
    let id = user_id(&stack, token).await?;
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let response = stack
        .http()
        .get(stack.url("/api/orders/42?expand=items&x=%2F"))
        .bearer_auth(token)
        .header("x-auth-user-id", "00000000-0000-0000-0000-000000000000")
        .header("X-Auth-Roles", "admin")
        .header("x-auth-session-id", "forged")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "evil.example")
        .header("x-request-id", "req-42")
        .header("traceparent", format!("00-{trace}-b7ad6b7169203331-01"))
        .header("connection", "keep-alive, x-secret")
        .header("x-secret", "hop")
        // CGI-style servers (Django, PHP) read these as the dashed names.
        .header("X_Auth_Roles", "admin")
        .header("x_auth_user_id", "00000000-0000-0000-0000-000000000000")
        .header("x_forwarded_for", "6.6.6.6")
        .header("X_Original_URL", "/api/admin")
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::OK);
    // The upstream's headers come back, with the gateway's own on top.
    assert_eq!(response.headers()["x-upstream"], "echo");
    assert_eq!(response.headers()["x-content-type-options"], "nosniff");
    assert_eq!(response.headers()["x-request-id"], "req-42");
    let answer: Value = response.json().await?;
    assert_eq!(answer["method"], "GET");
    assert_eq!(answer["uri"], "/api/orders/42?expand=items&x=%2F");
    assert_eq!(answer["headers"]["x-auth-user-id"], json!([id]));
    assert_eq!(answer["headers"]["x-auth-roles"], json!(["user"]));
    assert_ne!(seen(&answer, "x-auth-session-id"), Some("forged"));
    assert_eq!(seen(&answer, "x-auth-session-id").map(str::len), Some(36));
    assert_eq!(answer["headers"]["x-forwarded-for"], json!(["127.0.0.1"]));
    // A client that is no trusted proxy cannot claim https or another host.
    assert_eq!(answer["headers"]["x-forwarded-proto"], json!(["http"]));
    assert_ne!(seen(&answer, "x-forwarded-host"), Some("evil.example"));
    assert_eq!(seen(&answer, "x-request-id"), Some("req-42"));
    let traceparent = seen(&answer, "traceparent").unwrap_or_default();
    assert!(
        traceparent.starts_with(&format!("00-{trace}-")),
        "{traceparent}"
    );
    assert!(!traceparent.contains("b7ad6b7169203331"), "a new parent id");
    // The bearer token stays here (the identity headers say who the caller is; the
    // token would work on every route of the platform); hop-by-hop fields do not go.
    assert!(answer["headers"].get("authorization").is_none(), "{answer}");
    assert!(answer["headers"].get("x-secret").is_none(), "{answer}");
    let names: Vec<&String> = answer["headers"]
        .as_object()
        .map(|headers| headers.keys().collect())
        .unwrap_or_default();
    assert!(names.iter().all(|name| !name.contains('_')), "{names:?}");
    assert_ne!(seen(&answer, "connection"), Some("keep-alive, x-secret"));
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protected_prefixes_need_a_token_or_a_scoped_api_key() -> anyhow::Result<()> {
    let echo = start_echo().await?;
    let stack = stack_with(&echo, &[]).await?;
    // No credentials, or forged identity headers alone: 401, nothing reaches it.
    let anonymous = stack
        .http()
        .get(stack.url("/api/orders"))
        .header("x-auth-user-id", "someone")
        .send()
        .await?;
    assert_problem(anonymous, StatusCode::UNAUTHORIZED).await?;
    let forged = stack
        .http()
        .get(stack.url("/api/orders"))
        .bearer_auth("eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.")
        .send()
        .await?;
    assert_problem(forged, StatusCode::UNAUTHORIZED).await?;
    assert_eq!(echo.calls.load(Ordering::SeqCst), 0);

    let user = signed_in(&stack).await?;
    let token = field(&user, "access_token");
    let (unscoped, _) = api_key(&stack, token, &["profile:read"]).await?;
    let refused = stack
        .http()
        .get(stack.url("/api/orders"))
        .header("x-api-key", &unscoped)
        .send()
        .await?;
    assert_problem(refused, StatusCode::FORBIDDEN).await?;
    let (scoped, key_id) = api_key(&stack, token, &["api:access"]).await?;
    let answer: Value = stack
        .http()
        .get(stack.url("/api/orders"))
        .header("authorization", format!("ApiKey {scoped}"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(seen(&answer, "x-auth-api-key-id"), Some(key_id.as_str()));
    assert_eq!(
        seen(&answer, "x-auth-roles"),
        Some(""),
        "keys carry no roles"
    );
    assert!(answer["headers"].get("authorization").is_none(), "{answer}");
    assert!(answer["headers"].get("x-api-key").is_none());

    // A public prefix needs nothing, and still gets no forged identity.
    let public: Value = stack
        .http()
        .get(stack.url("/public/status"))
        .header("x-auth-user-id", "someone")
        .send()
        .await?
        .json()
        .await?;
    assert!(
        public["headers"].get("x-auth-user-id").is_none(),
        "{public}"
    );
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_stream_within_the_limit_and_failures_open_the_circuit() -> anyhow::Result<()> {
    let echo = start_echo().await?;
    let stack = stack_with(
        &echo,
        &[
            ("UPSTREAM_BODY_LIMIT_BYTES", "2000000".into()),
            ("UPSTREAM_TIMEOUT_SECONDS", "1".into()),
            ("UPSTREAM_BREAKER_FAILURES", "3".into()),
            ("UPSTREAM_BREAKER_OPEN_SECONDS", "2".into()),
        ],
    )
    .await?;
    let user = signed_in(&stack).await?;
    let token = field(&user, "access_token").to_owned();
    let post = |path: &'static str, body: Vec<u8>| {
        let (stack, token) = (&stack, token.clone());
        async move {
            stack
                .http()
                .post(stack.url(path))
                .bearer_auth(token)
                .body(body)
                .send()
                .await
        }
    };
    // A megabyte goes through whole (far over the 64 KiB JSON limit of /v1).
    let answer: Value = post("/api/upload", vec![b'x'; 1 << 20])
        .await?
        .json()
        .await?;
    assert_eq!(answer["body_length"], 1 << 20);
    assert_eq!(answer["method"], "POST");
    // Over the proxy's limit: 413 before the upstream sees anything.
    let before = echo.calls.load(Ordering::SeqCst);
    let too_big = post("/api/upload", vec![b'x'; 2_000_001]).await?;
    assert_problem(too_big, StatusCode::PAYLOAD_TOO_LARGE).await?;
    assert_eq!(echo.calls.load(Ordering::SeqCst), before);

    // Redirects are the client's business.
    let redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?
        .get(stack.url("/api/redirect"))
        .bearer_auth(&token)
        .send()
        .await?;
    assert_eq!(redirect.status(), StatusCode::FOUND);
    assert_eq!(redirect.headers()["location"], "https://elsewhere.example/");

    // An upstream's 500 passes through and does not count towards the breaker (one
    // client's input can make a handler crash): more of them than the threshold
    // leave the circuit closed.
    for _ in 0..4 {
        let crashed = stack
            .http()
            .get(stack.url("/api/crash"))
            .bearer_auth(&token)
            .send()
            .await?;
        assert_eq!(crashed.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
    // Too slow: 504.
    let slow = stack
        .http()
        .get(stack.url("/api/slow"))
        .bearer_auth(&token)
        .send()
        .await?;
    assert_problem(slow, StatusCode::GATEWAY_TIMEOUT).await?;
    // Failing: the upstream's 503 passes through until the circuit opens (3
    // failures, the timeout included), then 503 at once without calling it.
    for _ in 0..2 {
        let failed = stack
            .http()
            .get(stack.url("/api/fail"))
            .bearer_auth(&token)
            .send()
            .await?;
        assert_eq!(failed.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(failed.text().await?, "overloaded");
    }
    let calls = echo.calls.load(Ordering::SeqCst);
    let open = stack
        .http()
        .get(stack.url("/api/orders"))
        .bearer_auth(&token)
        .send()
        .await?;
    assert!(open.headers().contains_key("retry-after"));
    assert_problem(open, StatusCode::SERVICE_UNAVAILABLE).await?;
    assert_eq!(echo.calls.load(Ordering::SeqCst), calls);
    // After the open period one probe goes through; it succeeds, so it closes.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let probe = stack
        .http()
        .get(stack.url("/api/orders"))
        .bearer_auth(&token)
        .send()
        .await?;
    assert_eq!(probe.status(), StatusCode::OK);
    let after = stack
        .http()
        .get(stack.url("/api/orders"))
        .bearer_auth(&token)
        .send()
        .await?;
    assert_eq!(after.status(), StatusCode::OK);
    stack.stop().await;
    Ok(())
}

/// A request body the client sends in `chunks`, so it goes chunked.
fn chunked_body(chunks: usize, size: usize) -> reqwest::Body {
    let chunks = (0..chunks).map(move |_| Ok::<_, std::io::Error>(vec![b'x'; size]));
    reqwest::Body::wrap_stream(futures::stream::iter(chunks))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_gets_the_body_framed_as_the_client_sent_it() -> anyhow::Result<()> {
    let echo = start_echo().await?;
    let stack = stack_with(
        &echo,
        &[
            ("UPSTREAM_BODY_LIMIT_BYTES", "1000".into()),
            ("UPSTREAM_BREAKER_FAILURES", "2".into()),
            ("UPSTREAM_BREAKER_OPEN_SECONDS", "1".into()),
        ],
    )
    .await?;
    let framing = |answer: &Value| {
        ["content-length", "transfer-encoding", "accept-encoding"]
            .map(|name| seen(answer, name).map(str::to_owned))
    };
    // No body: no framing fields at all (not `content-length: 0` on a GET), and no
    // `accept-encoding` the client did not send.
    let answer: Value = stack
        .http()
        .get(stack.url("/public/plain"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(framing(&answer), [None, None, None], "{answer}");
    // A body of a declared length keeps it, and is not re-sent chunked.
    let answer: Value = stack
        .http()
        .post(stack.url("/public/sized"))
        .header("accept-encoding", "gzip")
        .body(vec![b'x'; 600])
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(
        framing(&answer),
        [Some("600".to_owned()), None, Some("gzip".to_owned())],
        "{answer}"
    );
    assert_eq!(answer["body_length"], 600);
    // A chunked body goes on chunked.
    let answer: Value = stack
        .http()
        .post(stack.url("/public/chunked"))
        .body(chunked_body(3, 300))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(
        framing(&answer),
        [None, Some("chunked".to_owned()), None],
        "{answer}"
    );
    assert_eq!(answer["body_length"], 900);
    // A chunked body that passes the limit is cut off: 413, and the upstream never
    // serves it. It is the client's fault, not the upstream's: however often it
    // happens, the upstream's circuit stays closed for everyone else.
    let calls = echo.calls.load(Ordering::SeqCst);
    for _ in 0..3 {
        let too_big = stack
            .http()
            .post(stack.url("/public/chunked"))
            .body(chunked_body(4, 300))
            .send()
            .await?;
        assert_problem(too_big, StatusCode::PAYLOAD_TOO_LARGE).await?;
    }
    assert_eq!(echo.calls.load(Ordering::SeqCst), calls);
    let after = stack.http().get(stack.url("/public/plain")).send().await?;
    assert_eq!(after.status(), StatusCode::OK);
    // `Expect: 100-continue` on a request without a body is answered here and not
    // passed on (awc refuses to send it, which made each such request a 502 and an
    // upstream failure).
    for _ in 0..3 {
        let expecting = stack
            .http()
            .get(stack.url("/public/plain"))
            .header("expect", "100-continue")
            .send()
            .await?;
        assert_eq!(expecting.status(), StatusCode::OK);
    }
    // A client's broken body while the circuit is half-open leaves the probe to the
    // next request (it had kept the circuit shut until a restart).
    for _ in 0..2 {
        let failed = stack.http().get(stack.url("/public/fail")).send().await?;
        assert_eq!(failed.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
    let open = stack.http().get(stack.url("/public/plain")).send().await?;
    assert_eq!(open.status(), StatusCode::SERVICE_UNAVAILABLE);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let probe = stack
        .http()
        .post(stack.url("/public/chunked"))
        .body(chunked_body(4, 300))
        .send()
        .await?;
    assert_problem(probe, StatusCode::PAYLOAD_TOO_LARGE).await?;
    let next = stack.http().get(stack.url("/public/plain")).send().await?;
    assert_eq!(next.status(), StatusCode::OK);
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_upgrade_is_refused_before_its_body_is_read() -> anyhow::Result<()> {
    let echo = start_echo().await?;
    let stack = stack_with(&echo, &[]).await?;
    // The parser reads such a body to the end of the connection, not by its length:
    // forwarded, the request would hang until the upstream timeout and count against
    // the upstream. It is answered at once.
    let request = format!(
        "POST /public/chat HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nContent-Length: 2\r\n\r\n{{}}",
        stack.gateway.main
    );
    // (`raw` gives up after 5 s: a request left hanging reads as status 0.)
    let (status, text) = raw(&stack, request.as_bytes()).await?;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("WebSocket"), "{text}");
    assert_eq!(echo.calls.load(Ordering::SeqCst), 0);
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_credential_checked_is_the_one_the_upstream_sees() -> anyhow::Result<()> {
    let echo = start_echo().await?;
    let stack = stack_with(&echo, &[]).await?;
    let owner = signed_in(&stack).await?;
    let (key, _) = api_key(&stack, field(&owner, "access_token"), &["api:access"]).await?;
    // Someone else's token, logged out (revoked) before it expired.
    let victim = signed_in(&stack).await?;
    let stolen = format!("Bearer {}", field(&victim, "access_token"));
    let logout = stack
        .http()
        .post(stack.url("/v1/auth/logout"))
        .header("authorization", &stolen)
        .json(&json!({"refresh_token": field(&victim, "refresh_token")}))
        .send()
        .await?;
    assert!(logout.status().is_success(), "{}", logout.status());
    let get = || stack.http().get(stack.url("/api/orders"));
    // Beside an API key, the key is the credential (for authentication and the rate
    // limiter alike) and the token goes nowhere: an upstream that verifies bearer
    // tokens with the JWKS would take a revoked one.
    let answer: Value = get()
        .header("x-api-key", &key)
        .header("authorization", &stolen)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(
        seen(&answer, "x-auth-user-id"),
        Some(
            user_id(&stack, field(&owner, "access_token"))
                .await?
                .as_str()
        )
    );
    assert!(answer["headers"].get("authorization").is_none(), "{answer}");
    // Two fields of one credential: the gateway would check one and an upstream
    // could read the other. Refused.
    let own = format!("Bearer {}", field(&owner, "access_token"));
    for (name, first, second) in [
        ("authorization", own.as_str(), stolen.as_str()),
        ("x-api-key", key.as_str(), "aia_k_another"),
    ] {
        let doubled = get()
            .header(name, first)
            .header(name, second)
            .send()
            .await?;
        assert_problem(doubled, StatusCode::BAD_REQUEST).await?;
    }
    assert_eq!(echo.calls.load(Ordering::SeqCst), 1);
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_segments_cannot_walk_from_a_public_prefix_to_a_protected_one() -> anyhow::Result<()> {
    let echo = start_echo().await?;
    let stack = stack_with(&echo, &[]).await?;
    let request = |path: &str| {
        format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            stack.gateway.main
        )
    };
    // Matched as /public/ (no token needed), resolved by an upstream that normalizes
    // the path as /api/orders: the bypass behind Envoy's CVE-2019-9901 and its kin.
    for path in [
        "/public/../api/orders",
        "/public/%2e%2e/api/orders",
        "/public/%2E./api/orders",
        "/public/.%2e/api/orders",
        "/public/..%2fapi/orders",
        "/public/..%5capi/orders",
        "/public/..%5Capi/orders",
        "/public/%252e%252e/api/orders",
        "/public/..%252fapi/orders",
        "/public/..;/api/orders",
        "/public/./orders",
        "/public/orders/..",
        "/api/./orders",
    ] {
        let (status, text) = raw(&stack, request(path).as_bytes()).await?;
        assert_eq!(status, 400, "{path}: {text}");
        assert!(text.contains("application/problem+json"), "{path}: {text}");
    }
    assert_eq!(
        echo.calls.load(Ordering::SeqCst),
        0,
        "nothing reached the upstream"
    );
    // Dots inside a segment, and in the query, are ordinary characters.
    for path in [
        "/public/.well-known/thing",
        "/public/a..b/c.d",
        "/public/...",
        "/public/orders?next=../x",
    ] {
        let (status, text) = raw(&stack, request(path).as_bytes()).await?;
        assert_eq!(status, 200, "{path}: {text}");
        assert!(
            text.contains(&format!("\"uri\":\"{path}\"")),
            "{path}: {text}"
        );
    }
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_escaped_prefix_is_the_prefix_it_spells() -> anyhow::Result<()> {
    let echo = start_echo().await?;
    let stack = stack_with(&echo, &[]).await?;
    // The router reads /%61pi/ as /api/: protected like it, and forwarded as sent.
    let anonymous = stack.http().get(stack.url("/%61pi/orders")).send().await?;
    assert_problem(anonymous, StatusCode::UNAUTHORIZED).await?;
    assert_eq!(echo.calls.load(Ordering::SeqCst), 0);
    let user = signed_in(&stack).await?;
    let response = stack
        .http()
        .get(stack.url("/%61pi/orders"))
        .bearer_auth(field(&user, "access_token"))
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::OK);
    let answer: Value = response.json().await?;
    assert_eq!(answer["uri"], "/%61pi/orders");
    assert!(seen(&answer, "x-auth-user-id").is_some());
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_that_rewrite_the_path_method_or_client_address_stay_here() -> anyhow::Result<()> {
    let echo = start_echo().await?;
    let stack = stack_with(&echo, &[]).await?;
    // Frameworks behind a proxy honour these (Symfony and IIS take X-Original-URL for
    // the path, many take X-HTTP-Method-Override for the method, X-Real-IP or
    // True-Client-IP for the client): sent through, they would undo what the gateway
    // matched, authorized and rate-limited.
    let claims = [
        ("x-original-url", "/api/admin"),
        ("x-rewrite-url", "/api/admin"),
        ("x-http-method-override", "DELETE"),
        ("x-http-method", "DELETE"),
        ("x-method-override", "DELETE"),
        ("x-real-ip", "6.6.6.6"),
        ("x-client-ip", "6.6.6.6"),
        ("true-client-ip", "6.6.6.6"),
        ("cf-connecting-ip", "6.6.6.6"),
        ("x-cluster-client-ip", "6.6.6.6"),
        ("fastly-client-ip", "6.6.6.6"),
        ("x-originating-ip", "6.6.6.6"),
        ("client-ip", "6.6.6.6"),
    ];
    let mut request = stack.http().get(stack.url("/public/page"));
    for (name, value) in claims {
        request = request.header(name, value);
    }
    let response = request.send().await?;
    assert_eq!(response.status(), StatusCode::OK);
    let answer: Value = response.json().await?;
    for (name, _) in claims {
        if name == "x-real-ip" {
            continue;
        }
        assert!(answer["headers"].get(name).is_none(), "{name}: {answer}");
    }
    // The address the gateway decided on, as nginx deployments name it too.
    assert_eq!(answer["headers"]["x-real-ip"], json!(["127.0.0.1"]));
    assert_eq!(answer["uri"], "/public/page");
    assert_eq!(answer["method"], "GET");
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_cannot_widen_cors_or_name_its_software() -> anyhow::Result<()> {
    let echo = start_echo().await?;
    let stack = stack_with(
        &echo,
        &[("CORS_ORIGINS", "https://app.example.com".to_owned())],
    )
    .await?;
    // The gateway alone decides CORS: an upstream that allows every origin (or
    // reflects one) would otherwise undo the allowlist for its routes.
    for origin in [
        None,
        Some("https://evil.example"),
        Some("https://app.example.com"),
    ] {
        let mut request = stack.http().get(stack.url("/public/leaky"));
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        let response = request.send().await?;
        let headers = response.headers();
        let allowed = headers
            .get("access-control-allow-origin")
            .and_then(|v| v.to_str().ok());
        assert_eq!(
            allowed,
            origin.filter(|o| *o == "https://app.example.com"),
            "{origin:?}"
        );
        assert!(
            headers
                .get("access-control-expose-headers")
                .and_then(|v| v.to_str().ok())
                .is_none_or(|v| !v.contains("x-secret")),
            "{origin:?}: {headers:?}"
        );
        for name in ["x-powered-by", "server"] {
            assert!(headers.get(name).is_none(), "{name}: {headers:?}");
        }
    }
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_cors_preflights_skip_the_rate_limit() -> anyhow::Result<()> {
    let echo = start_echo().await?;
    let stack = stack_with(
        &echo,
        &[
            ("RATE_LIMIT_API", "2/60".to_owned()),
            ("CORS_ORIGINS", "https://app.example.com".to_owned()),
        ],
    )
    .await?;
    // A preflight is answered by the gateway itself and costs nothing...
    for _ in 0..4 {
        let preflight = stack
            .http()
            .request(reqwest::Method::OPTIONS, stack.url("/public/page"))
            .header("origin", "https://app.example.com")
            .header("access-control-request-method", "GET")
            .send()
            .await?;
        assert!(preflight.status().is_success(), "{}", preflight.status());
    }
    assert_eq!(echo.calls.load(Ordering::SeqCst), 0, "preflights stay here");
    // ...any other OPTIONS goes upstream, so it spends the budget like a GET, even
    // one dressed as a preflight whose requested method is no method (the CORS
    // middleware does not answer it, so it is forwarded).
    let options = |method: &'static str| {
        stack
            .http()
            .request(reqwest::Method::OPTIONS, stack.url("/public/page"))
            .header("origin", "https://app.example.com")
            .header("access-control-request-method", method)
            .send()
    };
    for method in ["", "@"] {
        assert_eq!(options(method).await?.status(), StatusCode::OK);
    }
    assert_problem(options("").await?, StatusCode::TOO_MANY_REQUESTS).await?;
    assert_eq!(echo.calls.load(Ordering::SeqCst), 2);
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateways_own_cookies_stay_between_it_and_the_browser() -> anyhow::Result<()> {
    let echo = start_echo().await?;
    let stack = stack_with(&echo, &[]).await?;
    // The session cookie seals a refresh token, and with the CSRF cookie it is all a
    // replay at /v1/auth/refresh needs; the device cookie spares its holder the
    // account's login bucket: an upstream never sees them...
    let response = stack
        .http()
        .get(stack.url("/public/page"))
        .header(
            "cookie",
            "a=1; __Host-aia_session=sealed; b=2; __Host-aia_csrf=token; __host-aia_device=d",
        )
        .send()
        .await?;
    let answer: Value = response.json().await?;
    assert_eq!(answer["headers"]["cookie"], json!(["a=1; b=2"]), "{answer}");
    let only_ours = stack
        .http()
        .get(stack.url("/public/page"))
        .header("cookie", "__Host-aia_session=sealed")
        .send()
        .await?;
    let answer: Value = only_ours.json().await?;
    assert!(answer["headers"].get("cookie").is_none(), "{answer}");
    // ...and cannot set or clear them (names compared case-insensitively, as
    // browsers compare the __Host- prefix); its own cookies pass.
    let response = stack
        .http()
        .get(stack.url("/public/cookies"))
        .send()
        .await?;
    let set: Vec<&str> = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    assert_eq!(set, ["theme=dark; Path=/"]);
    assert!(
        !response.headers().contains_key("clear-site-data"),
        "{:?}",
        response.headers()
    );
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_is_not_proxied() -> anyhow::Result<()> {
    let echo = start_echo().await?;
    let stack = stack_with(&echo, &[]).await?;
    let user = signed_in(&stack).await?;
    // An upstream answering TRACE would echo the request: the bearer token and the
    // identity headers the gateway added. Some servers read methods without case, and
    // the gateway proxies the methods of an API only.
    let methods = [
        reqwest::Method::TRACE,
        reqwest::Method::from_bytes(b"trace")?,
        reqwest::Method::from_bytes(b"PROPFIND")?,
    ];
    for (path, method) in ["/public/page", "/api/orders"]
        .into_iter()
        .flat_map(|path| methods.iter().map(move |method| (path, method)))
    {
        let response = stack
            .http()
            .request(method.clone(), stack.url(path))
            .bearer_auth(field(&user, "access_token"))
            .send()
            .await?;
        assert!(
            response
                .headers()
                .get("allow")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.contains("GET") && !v.contains("TRACE")),
            "{method} {path}"
        );
        assert_problem(response, StatusCode::METHOD_NOT_ALLOWED).await?;
    }
    assert_eq!(echo.calls.load(Ordering::SeqCst), 0);
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_uploads_cannot_open_the_circuit_for_everyone() -> anyhow::Result<()> {
    let echo = start_echo().await?;
    let stack = stack_with(
        &echo,
        &[
            ("UPSTREAM_TIMEOUT_SECONDS", "1".into()),
            ("UPSTREAM_BREAKER_FAILURES", "2".into()),
            ("UPSTREAM_BREAKER_OPEN_SECONDS", "60".into()),
        ],
    )
    .await?;
    let head = |framing: &str| {
        format!(
            "POST /public/upload HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Type: text/plain\r\n{framing}\r\n\r\n",
            stack.gateway.main
        )
    };
    // A declared body that never comes, and a chunked one that stops: awc's timeout
    // covers sending the body, so each ends in a 504; neither is the upstream's
    // failure, and twice the threshold of them leaves the circuit closed.
    for request in [
        head("Content-Length: 10"),
        format!("{}5\r\nhello\r\n", head("Transfer-Encoding: chunked")),
        head("Content-Length: 10"),
        format!("{}5\r\nhello\r\n", head("Transfer-Encoding: chunked")),
    ] {
        let (status, text) = raw(&stack, request.as_bytes()).await?;
        assert_eq!(status, 504, "{text}");
    }
    let after = stack.http().get(stack.url("/public/page")).send().await?;
    assert_eq!(after.status(), StatusCode::OK);
    // A failing upstream still opens it.
    for _ in 0..2 {
        let failed = stack.http().get(stack.url("/public/fail")).send().await?;
        assert_eq!(failed.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
    let calls = echo.calls.load(Ordering::SeqCst);
    let open = stack.http().get(stack.url("/public/page")).send().await?;
    assert_problem(open, StatusCode::SERVICE_UNAVAILABLE).await?;
    assert_eq!(echo.calls.load(Ordering::SeqCst), calls);
    stack.stop().await;
    Ok(())
}

/// An upload declared and never sent cannot hold a half-open circuit's one probe
/// for the whole upstream timeout (it was, so anyone could keep an upstream that came
/// back shut by sending one at each half-open): within the probe's lease the next
/// request probes, and the upstream is used again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upload_holds_the_half_open_probe_only_for_its_lease() -> anyhow::Result<()> {
    use tokio::io::AsyncWriteExt;

    let echo = start_echo().await?;
    let stack = stack_with(
        &echo,
        &[
            ("UPSTREAM_TIMEOUT_SECONDS", "30".into()),
            ("UPSTREAM_BREAKER_FAILURES", "2".into()),
            ("UPSTREAM_BREAKER_OPEN_SECONDS", "1".into()),
        ],
    )
    .await?;
    for _ in 0..2 {
        let failed = stack.http().get(stack.url("/public/fail")).send().await?;
        assert_eq!(failed.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
    let open = stack.http().get(stack.url("/public/page")).send().await?;
    assert_problem(open, StatusCode::SERVICE_UNAVAILABLE).await?;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    // Half-open: the upload takes the probe and sends nothing more.
    let mut stalled = tokio::net::TcpStream::connect(stack.gateway.main).await?;
    stalled
        .write_all(
            format!(
                "POST /public/upload HTTP/1.1\r\nHost: {}\r\nContent-Type: text/plain\r\nContent-Length: 10\r\n\r\n",
                stack.gateway.main
            )
            .as_bytes(),
        )
        .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let held = stack.http().get(stack.url("/public/page")).send().await?;
    assert_problem(held, StatusCode::SERVICE_UNAVAILABLE).await?;
    // Served again within the lease, long before the upload's 30 s timeout.
    let served = aia_testkit::eventually(Duration::from_secs(8), || async {
        let status = stack
            .http()
            .get(stack.url("/public/page"))
            .send()
            .await?
            .status();
        Ok((status == StatusCode::OK).then_some(()))
    })
    .await;
    assert!(served.is_ok(), "the stalled upload kept the circuit shut");
    drop(stalled);
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protected_prefix_inside_a_public_one_is_not_reached_around() -> anyhow::Result<()> {
    let echo = start_echo().await?;
    let stack = Stack::start_with(&[
        (
            "UPSTREAMS",
            format!(
                "/api/={0},/api/private/={0},/api/private/open/={0}",
                echo.url
            ),
        ),
        (
            "UPSTREAM_PUBLIC_PREFIXES",
            "/api/,/api/private/open/".to_owned(),
        ),
    ])
    .await?;
    let request = |path: &str| {
        format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            stack.gateway.main
        )
    };
    // Each is /api/private/... to an upstream that ignores the trailing slash, merges
    // slashes, routes without case, drops matrix parameters or decodes `%2F`.
    for path in [
        "/api/private",
        "/api/private?x=1",
        "/api/private;x/orders",
        "/api//private/orders",
        "/api/PRIVATE/orders",
        "/api/Private/orders",
        "/api/private%2Forders",
        "/api/private%252Forders",
        "/api/%70rivate/orders",
    ] {
        let (status, text) = raw(&stack, request(path).as_bytes()).await?;
        assert!(status == 401 || status == 400, "{path}: {text}");
        assert!(text.contains("application/problem+json"), "{path}: {text}");
    }
    assert_eq!(
        echo.calls.load(Ordering::SeqCst),
        0,
        "nothing was forwarded"
    );
    // What is public stays public: a longer public prefix inside the protected one,
    // and names that only begin like the protected prefix.
    for path in [
        "/api/orders",
        "/api/privateer/x",
        "/api/private/open/x",
        "/api/private/open",
    ] {
        let (status, text) = raw(&stack, request(path).as_bytes()).await?;
        assert_eq!(status, 200, "{path}: {text}");
    }
    let user = signed_in(&stack).await?;
    let response = stack
        .http()
        .get(stack.url("/api/private/orders"))
        .bearer_auth(field(&user, "access_token"))
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::OK);
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bearer_token_reaches_only_the_upstreams_that_ask_for_it() -> anyhow::Result<()> {
    // An upstream holding (or logging) an administrator's token could replay it at
    // the admin routes until it expires: only a prefix listed in
    // UPSTREAM_TOKEN_PREFIXES gets it.
    let echo = start_echo().await?;
    let stack = stack_with(&echo, &[("UPSTREAM_TOKEN_PREFIXES", "/api/".into())]).await?;
    let admin = crate::helpers::admin(&stack).await?;
    let bearer = format!("Bearer {}", field(&admin, "access_token"));
    let to = |path: &str| {
        stack
            .http()
            .get(stack.url(path))
            .header("authorization", &bearer)
            .send()
    };
    let asked: Value = to("/api/orders").await?.json().await?;
    assert_eq!(seen(&asked, "authorization"), Some(bearer.as_str()));
    let other: Value = to("/public/page").await?.json().await?;
    assert!(other["headers"].get("authorization").is_none(), "{other}");
    // Another scheme is the upstream's own business, and goes on.
    let basic = "Basic dXBzdHJlYW06Y3JlZGVudGlhbHM=";
    let own: Value = stack
        .http()
        .get(stack.url("/public/page"))
        .header("authorization", basic)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(seen(&own, "authorization"), Some(basic));
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_upstream_opens_the_circuit_for_requests_with_a_body_too()
-> anyhow::Result<()> {
    // awc connects before it reads a body: a refused connection is the upstream's
    // failure however much of the client's body was read (none).
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.local_addr()?
    };
    let stack = Stack::start_with(&[
        ("UPSTREAMS", format!("/down/=http://{closed}")),
        ("UPSTREAM_PUBLIC_PREFIXES", "/down/".into()),
        ("UPSTREAM_BREAKER_FAILURES", "2".into()),
        ("UPSTREAM_BREAKER_OPEN_SECONDS", "60".into()),
    ])
    .await?;
    let post = |body: &'static str| {
        stack
            .http()
            .post(stack.url("/down/hook"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    for body in ["{\"a\":1}", ""] {
        assert_problem(post(body).await?, StatusCode::BAD_GATEWAY).await?;
    }
    let open = post("{\"a\":2}").await?;
    assert!(open.headers().contains_key("retry-after"));
    assert_problem(open, StatusCode::SERVICE_UNAVAILABLE).await?;
    stack.stop().await;
    Ok(())
}
