//! The edge: who the client is (forwarding headers only from trusted proxies) and
//! which hosts are served.

use aia_testkit::Stack;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{PASSWORD, assert_problem, email, field, register};

/// Logs in with a forged X-Forwarded-For and returns the IP the session recorded.
async fn recorded_ip(stack: &Stack) -> anyhow::Result<String> {
    let email = email();
    register(stack, &email).await?;
    let tokens: Value = stack
        .http()
        .post(stack.url("/v1/auth/login"))
        .header("x-forwarded-for", "6.6.6.6, 203.0.113.9")
        .json(&json!({"email": email, "password": PASSWORD}))
        .send()
        .await?
        .json()
        .await?;
    let sessions: Vec<Value> = stack
        .http()
        .get(stack.url("/v1/auth/sessions"))
        .bearer_auth(field(&tokens, "access_token"))
        .send()
        .await?
        .json()
        .await?;
    Ok(sessions[0]["ip"].as_str().unwrap_or_default().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_for_header_from_an_untrusted_peer_is_ignored() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    assert_eq!(recorded_ip(&stack).await?, "127.0.0.1");
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_the_rightmost_untrusted_address_is_the_client() -> anyhow::Result<()>
{
    let stack = Stack::start_with(&[("TRUSTED_PROXIES", "127.0.0.1/32".into())]).await?;
    assert_eq!(recorded_ip(&stack).await?, "203.0.113.9");
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_allowed_hosts_are_served() -> anyhow::Result<()> {
    let stack =
        Stack::start_with(&[("ALLOWED_HOSTS", "api.example.com, *.example.org".into())]).await?;
    let get = |host: &str| {
        stack
            .http()
            .get(stack.url("/healthz"))
            .header("host", host)
            .send()
    };
    for host in ["api.example.com", "eu.example.org", "API.EXAMPLE.COM:8080"] {
        assert_eq!(get(host).await?.status(), StatusCode::OK, "{host}");
    }
    for host in [
        "evil.example",
        "api.example.com.evil.net",
        "example.org",
        "a.b.example.org",
        "127.0.0.1",
    ] {
        assert_problem(get(host).await?, StatusCode::BAD_REQUEST).await?;
    }
    // Even a route that would fail otherwise answers 400 first.
    let login = stack
        .http()
        .post(stack.url("/v1/auth/login"))
        .header("host", "evil.example")
        .body("{")
        .send()
        .await?;
    assert_problem(login, StatusCode::BAD_REQUEST).await?;
    // HTTP/1.1's other ways to name the host: a request-target in absolute form
    // (whose authority a server must use instead of Host, RFC 9112 §3.2.2) and a
    // second Host field. Each is checked, and a disagreement is refused.
    let port = stack.gateway.main.port();
    for (target, hosts, expected) in [
        (
            "http://api.example.com/healthz",
            vec!["api.example.com"],
            200,
        ),
        ("http://evil.example/healthz", vec!["api.example.com"], 400),
        (
            "http://eu.example.org/healthz",
            vec!["api.example.com"],
            400,
        ),
        ("/healthz", vec!["api.example.com", "evil.example"], 400),
        ("/healthz", vec!["api.example.com", "api.example.com"], 400),
        ("http://evil.example/healthz", vec![], 400),
    ] {
        let hosts: String = hosts.iter().map(|h| format!("Host: {h}\r\n")).collect();
        let request = format!("GET {target} HTTP/1.1\r\n{hosts}Connection: close\r\n\r\n");
        let (status, text) = crate::helpers::raw(&stack, request.as_bytes()).await?;
        assert_eq!(
            status, expected,
            "{target} {hosts:?} on port {port}: {text}"
        );
    }
    stack.stop().await;
    Ok(())
}
