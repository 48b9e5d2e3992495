//! Bad input gets a clear 4xx problem, never a 500.

use aia_testkit::Stack;
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{PASSWORD, assert_problem};

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
