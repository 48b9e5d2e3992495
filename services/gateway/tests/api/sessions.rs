//! A user lists and ends their own sessions, and only their own.

use aia_testkit::Stack;
use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{email, field, login, me_status, register, signed_in};

async fn sessions(stack: &Stack, token: &str) -> anyhow::Result<Vec<Value>> {
    let response = stack
        .http()
        .get(stack.url("/v1/auth/sessions"))
        .bearer_auth(token)
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::OK);
    Ok(response.json().await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_lists_ends_one_and_ends_the_others() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let email = email();
    register(&stack, &email).await?;
    let laptop = login(&stack, &email).await?;
    let phone = login(&stack, &email).await?;
    let tablet = login(&stack, &email).await?;
    let (laptop, phone, tablet) = (
        field(&laptop, "access_token"),
        field(&phone, "access_token"),
        field(&tablet, "access_token"),
    );

    let listed = sessions(&stack, laptop).await?;
    assert_eq!(listed.len(), 3);
    assert_eq!(listed.iter().filter(|s| s["current"] == true).count(), 1);
    assert_eq!(listed[0]["ip"], "127.0.0.1");

    // End the phone's session from the laptop.
    let phone_sid = sessions(&stack, phone)
        .await?
        .into_iter()
        .find(|s| s["current"] == true);
    let phone_sid = phone_sid
        .and_then(|s| s["id"].as_str().map(str::to_owned))
        .unwrap_or_default();
    let response = stack
        .http()
        .delete(stack.url(&format!("/v1/auth/sessions/{phone_sid}")))
        .bearer_auth(laptop)
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(me_status(&stack, phone).await?, StatusCode::UNAUTHORIZED);
    assert_eq!(sessions(&stack, laptop).await?.len(), 2);

    // End all but the current one.
    let response = stack
        .http()
        .delete(stack.url("/v1/auth/sessions"))
        .bearer_auth(laptop)
        .send()
        .await?;
    let body: Value = response.json().await?;
    assert_eq!(body["revoked"], 1);
    assert_eq!(me_status(&stack, tablet).await?, StatusCode::UNAUTHORIZED);
    assert_eq!(me_status(&stack, laptop).await?, StatusCode::OK);
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_all_ends_every_session_including_the_current_one() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let email = email();
    register(&stack, &email).await?;
    let a = login(&stack, &email).await?;
    let b = login(&stack, &email).await?;
    let response = stack
        .http()
        .post(stack.url("/v1/auth/logout-all"))
        .bearer_auth(field(&a, "access_token"))
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    for tokens in [&a, &b] {
        assert_eq!(
            me_status(&stack, field(tokens, "access_token")).await?,
            StatusCode::UNAUTHORIZED
        );
        let refresh = stack
            .http()
            .post(stack.url("/v1/auth/refresh"))
            .json(&serde_json::json!({"refresh_token": field(tokens, "refresh_token")}))
            .send()
            .await?;
        assert_eq!(refresh.status(), StatusCode::UNAUTHORIZED);
    }
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_can_end_or_see_someone_elses_session() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let victim = signed_in(&stack).await?;
    let attacker = signed_in(&stack).await?;
    let victim_token = field(&victim, "access_token");
    let victim_sid = sessions(&stack, victim_token).await?[0]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(
        sessions(&stack, field(&attacker, "access_token"))
            .await?
            .len(),
        1,
        "only their own"
    );
    for target in [
        victim_sid.as_str(),
        &uuid::Uuid::new_v4().to_string(),
        "junk",
        "..%2F..%2Fetc",
    ] {
        let response = stack
            .http()
            .delete(stack.url(&format!("/v1/auth/sessions/{target}")))
            .bearer_auth(field(&attacker, "access_token"))
            .send()
            .await?;
        // A path that walks is refused by validation before any route sees it.
        let expected = if target.contains("..") {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::NOT_FOUND
        };
        assert_eq!(response.status(), expected, "{target}");
    }
    assert_eq!(me_status(&stack, victim_token).await?, StatusCode::OK);
    let unauthenticated = stack
        .http()
        .get(stack.url("/v1/auth/sessions"))
        .send()
        .await?;
    assert_eq!(unauthenticated.status(), StatusCode::UNAUTHORIZED);
    stack.stop().await;
    Ok(())
}
