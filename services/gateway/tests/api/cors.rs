//! CORS: listed origins only, no reflection, `null` refused, preflights answered by
//! the gateway, `Vary: Origin` everywhere.

use aia_testkit::Stack;
use reqwest::{Method, StatusCode};

async fn cors_stack() -> anyhow::Result<Stack> {
    Stack::start_with(&[(
        "CORS_ORIGINS",
        "https://app.example.com, https://*.example.org".into(),
    )])
    .await
}

fn allow_origin(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get("access-control-allow-origin")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

async fn preflight(stack: &Stack, origin: &str) -> anyhow::Result<reqwest::Response> {
    Ok(stack
        .http()
        .request(Method::OPTIONS, stack.url("/v1/auth/login"))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
        .await?)
}

/// A listed front-end on another origin of the same site refreshes with its cookie
/// and the CSRF token header: its preflight must allow that header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listed_origin_may_send_the_csrf_token_header() -> anyhow::Result<()> {
    let stack = cors_stack().await?;
    let response = stack
        .http()
        .request(Method::OPTIONS, stack.url("/v1/auth/refresh"))
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "content-type, x-csrf-token",
        )
        .send()
        .await?;
    assert!(response.status().is_success(), "{}", response.status());
    let allowed = response
        .headers()
        .get("access-control-allow-headers")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert!(allowed.contains("x-csrf-token"), "{allowed}");
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listed_origins_get_a_preflight_answer_and_nothing_else_does() -> anyhow::Result<()> {
    let stack = cors_stack().await?;
    for origin in ["https://app.example.com", "https://eu.example.org"] {
        let response = preflight(&stack, origin).await?;
        assert!(
            response.status().is_success(),
            "{origin}: {}",
            response.status()
        );
        assert_eq!(allow_origin(&response).as_deref(), Some(origin));
        assert_eq!(
            response.headers()["access-control-allow-credentials"],
            "true"
        );
        let max_age: u64 = response.headers()["access-control-max-age"]
            .to_str()?
            .parse()?;
        assert!(max_age <= 7200);
    }
    for origin in [
        "https://evil.example",
        "null",
        "https://app.example.com.evil.net",
        "http://app.example.com",
        "https://example.org",
    ] {
        let response = preflight(&stack, origin).await?;
        assert_eq!(allow_origin(&response), None, "{origin} was allowed");
    }
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_never_reflect_a_refused_origin_and_always_vary_on_origin() -> anyhow::Result<()>
{
    let stack = cors_stack().await?;
    let allowed = stack
        .http()
        .get(stack.url("/healthz"))
        .header("origin", "https://app.example.com")
        .send()
        .await?;
    assert_eq!(
        allow_origin(&allowed).as_deref(),
        Some("https://app.example.com")
    );
    // A browser client may read the rate-limit fields, to pace itself.
    let exposed = allowed
        .headers()
        .get("access-control-expose-headers")
        .and_then(|v| v.to_str().ok())
        .map(str::to_lowercase)
        .unwrap_or_default();
    for name in ["retry-after", "ratelimit", "ratelimit-policy"] {
        assert!(
            exposed.split(',').any(|n| n.trim() == name),
            "{name}: {exposed}"
        );
    }
    let refused = stack
        .http()
        .get(stack.url("/healthz"))
        .header("origin", "https://evil.example")
        .send()
        .await?;
    assert_eq!(allow_origin(&refused), None);
    // Errors vary on Origin too, so a cache never serves one origin's answer to another.
    let missing = stack
        .http()
        .get(stack.url("/no-such-route"))
        .header("origin", "https://app.example.com")
        .send()
        .await?;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let vary: Vec<String> = missing
        .headers()
        .get_all("vary")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::to_lowercase)
        .collect();
    assert!(vary.iter().any(|v| v.contains("origin")), "{vary:?}");
    stack.stop().await;
    Ok(())
}
