//! Browser sessions: the refresh token in a sealed `__Host-` cookie, and a refresh by
//! cookie that needs an allowed Origin and the CSRF token sealed with it.

use aia_testkit::Stack;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{PASSWORD, assert_problem, email, field, me_status, register};

const APP: &str = "https://app.example.com";

/// The `name=value` of a `Set-Cookie` called `name`, and the whole header.
fn set_cookie(response: &reqwest::Response, name: &str) -> Option<(String, String)> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(|v| {
            let pair = v.split(';').next().unwrap_or_default().to_owned();
            (pair, v.to_owned())
        })
}

struct Browser {
    cookie: String,
    csrf: String,
    access: String,
}

async fn cookie_login(stack: &Stack, email: &str) -> anyhow::Result<Browser> {
    let response = stack
        .http()
        .post(stack.url("/v1/auth/login"))
        .json(&json!({"email": email, "password": PASSWORD, "session": "cookie"}))
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::OK);
    let (cookie, header) = set_cookie(&response, "__Host-aia_session")
        .ok_or_else(|| anyhow::anyhow!("no session cookie"))?;
    for attribute in [
        "HttpOnly",
        "Secure",
        "SameSite=Strict",
        "Path=/",
        "Max-Age=2592000",
    ] {
        assert!(header.contains(attribute), "{attribute} missing: {header}");
    }
    assert!(!header.contains("Domain"), "{header}");
    let (_, readable) = set_cookie(&response, "__Host-aia_csrf")
        .ok_or_else(|| anyhow::anyhow!("no CSRF cookie"))?;
    assert!(
        !readable.contains("HttpOnly"),
        "scripts must read it: {readable}"
    );
    let body: Value = response.json().await?;
    assert!(body.get("refresh_token").is_none(), "{body}");
    Ok(Browser {
        cookie,
        csrf: field(&body, "csrf_token").to_owned(),
        access: field(&body, "access_token").to_owned(),
    })
}

async fn refresh(
    stack: &Stack,
    cookie: Option<&str>,
    origin: Option<&str>,
    csrf: Option<&str>,
) -> anyhow::Result<reqwest::Response> {
    let mut request = stack
        .http()
        .post(stack.url("/v1/auth/refresh"))
        .json(&json!({}));
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    if let Some(origin) = origin {
        request = request.header("origin", origin);
    }
    if let Some(csrf) = csrf {
        request = request.header("x-csrf-token", csrf);
    }
    Ok(request.send().await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cookie_session_refreshes_only_with_an_allowed_origin_and_its_csrf_token()
-> anyhow::Result<()> {
    let stack = Stack::start_with(&[("CORS_ORIGINS", APP.into())]).await?;
    let email = email();
    register(&stack, &email).await?;
    let browser = cookie_login(&stack, &email).await?;
    assert_eq!(me_status(&stack, &browser.access).await?, StatusCode::OK);
    // The cookie is sealed: the refresh token is nowhere in it.
    assert!(browser.cookie.len() > 100);

    // Each defence on its own refuses, and a refusal does not use the session up.
    let other = cookie_login(&stack, &email).await?;
    for (origin, csrf, why) in [
        (None, Some(browser.csrf.as_str()), "no Origin"),
        (
            Some("https://evil.example"),
            Some(browser.csrf.as_str()),
            "foreign Origin",
        ),
        (
            Some("https://app.example.com.evil.example"),
            Some(browser.csrf.as_str()),
            "lookalike",
        ),
        (Some(APP), None, "no CSRF header"),
        (Some(APP), Some("forged"), "wrong CSRF token"),
        (
            Some(APP),
            Some(other.csrf.as_str()),
            "another session's CSRF token",
        ),
    ] {
        let response = refresh(&stack, Some(&browser.cookie), origin, csrf).await?;
        assert_problem(response, StatusCode::FORBIDDEN)
            .await
            .map_err(|e| anyhow::anyhow!("{why}: {e}"))?;
    }
    // No cookie, or a tampered or foreign one: 401.
    let none = refresh(&stack, None, Some(APP), Some(&browser.csrf)).await?;
    assert_problem(none, StatusCode::UNAUTHORIZED).await?;
    let mut tampered = browser.cookie.clone();
    let last = tampered
        .pop()
        .map_or('A', |c| if c == 'A' { 'B' } else { 'A' });
    tampered.push(last);
    let bad = refresh(&stack, Some(&tampered), Some(APP), Some(&browser.csrf)).await?;
    assert_problem(bad, StatusCode::UNAUTHORIZED).await?;

    // Both defences met: a new access token, a renewed cookie, a new CSRF token.
    let ok = refresh(
        &stack,
        Some(&browser.cookie),
        Some(APP),
        Some(&browser.csrf),
    )
    .await?;
    assert_eq!(ok.status(), StatusCode::OK);
    let (renewed, _) = set_cookie(&ok, "__Host-aia_session")
        .ok_or_else(|| anyhow::anyhow!("cookie not renewed"))?;
    assert_ne!(renewed, browser.cookie);
    let body: Value = ok.json().await?;
    let next_csrf = field(&body, "csrf_token").to_owned();
    assert_ne!(next_csrf, browser.csrf);
    assert_eq!(
        me_status(&stack, field(&body, "access_token")).await?,
        StatusCode::OK
    );
    // The gateway's own origin may use the cookie too.
    let own = stack.gateway.url();
    let same_origin = refresh(&stack, Some(&renewed), Some(&own), Some(&next_csrf)).await?;
    assert_eq!(same_origin.status(), StatusCode::OK);

    // Logout clears both cookies.
    let logout = stack
        .http()
        .post(stack.url("/v1/auth/logout"))
        .bearer_auth(field(&body, "access_token"))
        .send()
        .await?;
    assert_eq!(logout.status(), StatusCode::NO_CONTENT);
    for name in ["__Host-aia_session", "__Host-aia_csrf"] {
        let (_, header) =
            set_cookie(&logout, name).ok_or_else(|| anyhow::anyhow!("{name} not cleared"))?;
        assert!(header.contains("Max-Age=0"), "{header}");
    }
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_clients_keep_the_refresh_token_in_the_body() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let email = email();
    register(&stack, &email).await?;
    let response = stack
        .http()
        .post(stack.url("/v1/auth/login"))
        .json(&json!({"email": email, "password": PASSWORD}))
        .send()
        .await?;
    assert!(set_cookie(&response, "__Host-aia_session").is_none());
    let body: Value = response.json().await?;
    assert!(body["refresh_token"].is_string());
    assert!(body.get("csrf_token").is_none());
    // An unknown session mode is a validation problem, not a silent default.
    let odd = stack
        .http()
        .post(stack.url("/v1/auth/login"))
        .json(&json!({"email": email, "password": PASSWORD, "session": "jar"}))
        .send()
        .await?;
    assert_problem(odd, StatusCode::UNPROCESSABLE_ENTITY).await?;
    stack.stop().await;
    Ok(())
}
