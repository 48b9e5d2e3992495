//! RFC 7009 revocation and RFC 7662 introspection.

use aia_testkit::Stack;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{admin, assert_problem, field, me_status, signed_in};

async fn revoke(stack: &Stack, form: &[(&str, &str)]) -> anyhow::Result<reqwest::Response> {
    Ok(stack
        .http()
        .post(stack.url("/v1/oauth/revoke"))
        .form(form)
        .send()
        .await?)
}

async fn refresh_status(stack: &Stack, refresh: &str) -> anyhow::Result<StatusCode> {
    Ok(stack
        .http()
        .post(stack.url("/v1/auth/refresh"))
        .json(&json!({"refresh_token": refresh}))
        .send()
        .await?
        .status())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_an_access_token_kills_it_and_keeps_the_session() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let tokens = signed_in(&stack).await?;
    let access = field(&tokens, "access_token");
    let response = revoke(
        &stack,
        &[("token", access), ("token_type_hint", "access_token")],
    )
    .await?;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(me_status(&stack, access).await?, StatusCode::UNAUTHORIZED);
    assert_eq!(
        refresh_status(&stack, field(&tokens, "refresh_token")).await?,
        StatusCode::OK
    );
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_refresh_token_ends_its_session() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let tokens = signed_in(&stack).await?;
    // The hint is only a hint: a wrong one still revokes.
    let response = revoke(
        &stack,
        &[
            ("token", field(&tokens, "refresh_token")),
            ("token_type_hint", "access_token"),
        ],
    )
    .await?;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        refresh_status(&stack, field(&tokens, "refresh_token")).await?,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        me_status(&stack, field(&tokens, "access_token")).await?,
        StatusCode::UNAUTHORIZED
    );
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_answers_the_same_for_junk_and_refuses_malformed_requests() -> anyhow::Result<()>
{
    let stack = Stack::start().await?;
    for junk in ["junk", "a.b.c", &"A".repeat(43)] {
        let response = revoke(&stack, &[("token", junk)]).await?;
        assert_eq!(response.status(), StatusCode::OK, "{junk}");
        assert!(response.text().await?.is_empty());
    }
    assert_problem(
        revoke(&stack, &[("nothing", "here")]).await?,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await?;
    assert_problem(
        revoke(&stack, &[("token", "x"), ("token_type_hint", "id_token")]).await?,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await?;
    let json_body = stack
        .http()
        .post(stack.url("/v1/oauth/revoke"))
        .json(&json!({"token": "x"}))
        .send()
        .await?;
    assert_problem(json_body, StatusCode::UNSUPPORTED_MEDIA_TYPE).await?;
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn introspection_needs_an_admin_and_says_only_inactive_for_bad_tokens() -> anyhow::Result<()>
{
    let stack = Stack::start().await?;
    let user = signed_in(&stack).await?;
    let admin = admin(&stack).await?;
    let introspect = |caller: Option<&str>, token: &str| {
        let mut request = stack
            .http()
            .post(stack.url("/v1/oauth/introspect"))
            .form(&[("token", token)]);
        if let Some(caller) = caller {
            request = request.bearer_auth(caller);
        }
        request.send()
    };
    let target = field(&user, "access_token");
    assert_problem(introspect(None, target).await?, StatusCode::UNAUTHORIZED).await?;
    assert_problem(
        introspect(Some(target), target).await?,
        StatusCode::FORBIDDEN,
    )
    .await?;

    let admin_token = field(&admin, "access_token");
    let active: Value = introspect(Some(admin_token), target).await?.json().await?;
    assert_eq!(active["active"], true);
    assert_eq!(active["token_type"], "access_token");
    assert!(active["sub"].as_str().is_some_and(|s| !s.is_empty()));

    for inactive in ["junk", field(&user, "refresh_token")] {
        let body: Value = introspect(Some(admin_token), inactive)
            .await?
            .json()
            .await?;
        assert_eq!(body, json!({"active": false}));
    }
    stack
        .http()
        .post(stack.url("/v1/auth/logout"))
        .bearer_auth(target)
        .send()
        .await?;
    let body: Value = introspect(Some(admin_token), target).await?.json().await?;
    assert_eq!(body, json!({"active": false}));
    stack.stop().await;
    Ok(())
}

/// An access token past its `exp` is inactive at once: the 30 s leeway verifiers
/// allow for clock skew is not the issuer's to give (RFC 7662 §2.2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn introspection_calls_a_token_past_its_expiry_inactive() -> anyhow::Result<()> {
    let (stack, secret) = crate::helpers::hs256_stack().await?;
    let user = signed_in(&stack).await?;
    let admin = admin(&stack).await?;
    let key = aia_tokens::HmacKey::new(secret.as_bytes());
    let claims = aia_tokens::Verifier::hs256(&key, "http://localhost:8080", "aia")
        .verify(field(&user, "access_token"))?;
    let now = chrono::Utc::now().timestamp();
    let introspect = |exp: i64| {
        let token = key.sign(&aia_tokens::AccessClaims {
            exp,
            ..claims.clone()
        });
        let request = stack
            .http()
            .post(stack.url("/v1/oauth/introspect"))
            .bearer_auth(field(&admin, "access_token"));
        async move {
            let body: Value = request
                .form(&[("token", token?)])
                .send()
                .await?
                .json()
                .await?;
            anyhow::Ok(body)
        }
    };
    // The control: the same claims re-signed, still valid.
    assert_eq!(introspect(now + 60).await?["active"], true);
    // Ten seconds past: inside every verifier's leeway, but expired.
    assert_eq!(introspect(now - 10).await?, json!({"active": false}));
    stack.stop().await;
    Ok(())
}
