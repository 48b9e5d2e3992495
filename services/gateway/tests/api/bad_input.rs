//! Bad input gets a clear 4xx problem, never a 500.

use aia_testkit::Stack;
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{PASSWORD, assert_problem, raw};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_kind_of_bad_input_gets_its_status_and_a_problem_body() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let http = stack.http();
    let login = stack.url("/v1/auth/login");
    let register = stack.url("/v1/auth/register");
    let json_body = |body: String| {
        http.post(&register)
            .header("content-type", "application/json")
            .body(body)
    };

    let cases: Vec<(&str, reqwest::RequestBuilder, StatusCode)> = vec![
        (
            "malformed JSON",
            json_body("{\"email\": ".into()),
            StatusCode::BAD_REQUEST,
        ),
        (
            "not an object",
            json_body("[1,2,3]".into()),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "deeply nested",
            json_body(format!(
                r#"{{"email":"a@example.com","password":"{PASSWORD}","x":{}{}}}"#,
                "[".repeat(10_000),
                "]".repeat(10_000)
            )),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "wrong content type",
            http.post(&login)
                .header("content-type", "text/plain")
                .body("{}"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "no content type",
            http.post(&login).body("{}"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "body over 64 KiB",
            json_body(
                json!({"email": "a@example.com", "password": "x".repeat(70_000)}).to_string(),
            ),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            "missing field",
            http.post(&login).json(&json!({"email": "a@example.com"})),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "unknown field",
            http.post(&login)
                .json(&json!({"email": "a@example.com", "pasword": PASSWORD})),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "wrong type",
            http.post(&login)
                .json(&json!({"email": "a@example.com", "password": 12345})),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "invalid email",
            http.post(&register)
                .json(&json!({"email": "not-an-email", "password": PASSWORD})),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "short password",
            http.post(&register)
                .json(&json!({"email": "a@example.com", "password": "short"})),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "unknown route",
            http.get(stack.url("/v1/nothing-here")),
            StatusCode::NOT_FOUND,
        ),
        (
            "wrong method",
            http.get(&login),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            "me without a token",
            http.get(stack.url("/v1/auth/me")),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "me with a junk token",
            http.get(stack.url("/v1/auth/me")).bearer_auth("junk"),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "logout without a token",
            http.post(stack.url("/v1/auth/logout")),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "refresh with junk",
            http.post(stack.url("/v1/auth/refresh"))
                .json(&json!({"refresh_token": "junk"})),
            StatusCode::UNAUTHORIZED,
        ),
    ];
    for (name, request, status) in cases {
        let response = request.send().await?;
        assert_eq!(response.status(), status, "{name}");
        let body = assert_problem(response, status).await?;
        let text = body.to_string();
        assert!(
            !text.contains("12345"),
            "{name}: the submitted value is echoed: {text}"
        );
        assert!(!text.to_lowercase().contains("sql"), "{name}: {text}");
    }
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_problems_say_which_field_is_wrong() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let response = stack
        .http()
        .post(stack.url("/v1/auth/register"))
        .json(&json!({"email": "ada@example.com", "password": "short"}))
        .send()
        .await?;
    let body = assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY).await?;
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with("password")),
        "{body}"
    );
    let response = stack
        .http()
        .post(stack.url("/v1/auth/login"))
        .json(&json!({"password": "x"}))
        .send()
        .await?;
    let body = assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY).await?;
    assert!(
        body["detail"].as_str().is_some_and(|d| d.contains("email")),
        "{body}"
    );
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_carry_a_request_id_and_security_headers() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let response = stack
        .http()
        .get(stack.url("/healthz"))
        .header("x-request-id", "abc-123")
        .send()
        .await?;
    assert_eq!(response.headers()["x-request-id"], "abc-123");
    assert_eq!(response.headers()["x-content-type-options"], "nosniff");
    assert_eq!(response.headers()["x-frame-options"], "DENY");
    for header in [
        "content-security-policy",
        "referrer-policy",
        "permissions-policy",
        "cross-origin-opener-policy",
        "cross-origin-embedder-policy",
        "cross-origin-resource-policy",
        "x-permitted-cross-domain-policies",
    ] {
        assert!(response.headers().contains_key(header), "{header} missing");
    }
    // Development is plain HTTP: no HSTS pin.
    assert!(!response.headers().contains_key("strict-transport-security"));
    assert!(!response.headers().contains_key("server"));
    // A request id that could inject into logs is replaced.
    let response = stack
        .http()
        .get(stack.url("/nope"))
        .header("x-request-id", "a b\tc")
        .send()
        .await?;
    let id = response.headers()["x-request-id"].to_str()?.to_owned();
    assert_ne!(id, "a b\tc");
    assert_eq!(id.len(), 36);
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_are_bounded_and_control_characters_refused() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let host = format!("Host: {}\r\nConnection: close\r\n", stack.gateway.main);
    let get = |path: &str, extra: &str| format!("GET {path} HTTP/1.1\r\n{host}{extra}\r\n");

    // Sixty-five header fields: 431 as a problem.
    let many: String = (0..65).map(|n| format!("X-Filler-{n}: {n}\r\n")).collect();
    let (status, text) = raw(&stack, get("/healthz", &many).as_bytes()).await?;
    assert_eq!(status, 431, "{text}");
    assert!(text.contains("urn:aia:problem:headers-too-large"), "{text}");
    // One field of 9 KiB: 431.
    let big = format!("X-Big: {}\r\n", "a".repeat(9 * 1024));
    let (status, _) = raw(&stack, get("/healthz", &big).as_bytes()).await?;
    assert_eq!(status, 431);
    // Five fields of 7 KiB (each fine, 35 KiB together): 431.
    let heavy: String = (0..5)
        .map(|n| format!("X-Heavy-{n}: {}\r\n", "b".repeat(7 * 1024)))
        .collect();
    let (status, _) = raw(&stack, get("/healthz", &heavy).as_bytes()).await?;
    assert_eq!(status, 431);
    // NUL and CR LF in the path, percent-encoded: 400 problems, nothing reaches a route.
    for path in [
        "/v1/auth/me%00",
        "/v1/auth/me%0d%0aX-Injected:%201",
        "/v1/%7f",
    ] {
        let (status, text) = raw(&stack, get(path, "").as_bytes()).await?;
        assert_eq!(status, 400, "{path}: {text}");
        assert!(text.contains("application/problem+json"), "{text}");
        assert!(!text.contains("X-Injected: 1\r\n"), "{text}");
    }
    // A raw control character in a header value never gets through either (the
    // HTTP parser or this gateway refuses it).
    let (status, _) = raw(&stack, get("/healthz", "X-Evil: a\x01b\r\n").as_bytes()).await?;
    assert_eq!(status, 400);
    // Obs-text (bytes over 0x7f) is not a control character: served.
    let (status, _) = raw(&stack, get("/healthz", "X-Note: caf\u{e9}\r\n").as_bytes()).await?;
    assert_eq!(status, 200);
    // A method a route does not serve: 405 problem.
    let (status, text) = raw(
        &stack,
        format!("DELETE /v1/auth/login HTTP/1.1\r\n{host}\r\n").as_bytes(),
    )
    .await?;
    assert_eq!(status, 405, "{text}");
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_body_names_its_charset() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    for (path, expected) in [
        ("/healthz", "text/plain; charset=utf-8"),
        (
            "/.well-known/jwks.json",
            "application/jwk-set+json; charset=utf-8",
        ),
        ("/nope", "application/problem+json; charset=utf-8"),
    ] {
        let response = stack.http().get(stack.url(path)).send().await?;
        assert_eq!(response.headers()["content-type"], expected, "{path}");
    }
    let registered = stack
        .http()
        .post(stack.url("/v1/auth/register"))
        .json(&json!({"email": "charset@example.com", "password": PASSWORD}))
        .send()
        .await?;
    assert_eq!(
        registered.headers()["content-type"],
        "application/json; charset=utf-8"
    );
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_body_framing_is_refused() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let host = format!("Host: {}\r\nConnection: close\r\n", stack.gateway.main);
    // The framings request smuggling lives on: whichever reading a front proxy took,
    // the gateway must not take another. Each is refused outright.
    for (framing, body) in [
        (
            "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
            "0\r\n\r\n",
        ),
        (
            "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n",
            "0\r\n\r\n",
        ),
        ("Content-Length: 4\r\nContent-Length: 5\r\n", "{}{}}"),
        ("Content-Length: 4, 5\r\n", "{}{}}"),
        ("Transfer-Encoding: xchunked\r\n", "0\r\n\r\n"),
        ("Transfer-Encoding: chunked, identity\r\n", "0\r\n\r\n"),
        ("Transfer-Encoding : chunked\r\n", "0\r\n\r\n"),
        ("Content-Length: +4\r\n", "{}{}"),
        ("X-Folded: a\r\n b\r\nContent-Length: 2\r\n", "{}"),
    ] {
        let request = format!(
            "POST /v1/auth/login HTTP/1.1\r\n{host}Content-Type: application/json\r\n{framing}\r\n{body}"
        );
        let (status, text) = crate::helpers::raw(&stack, request.as_bytes()).await?;
        assert_eq!(status, 400, "{framing:?}: {text}");
    }
    stack.stop().await;
    Ok(())
}
