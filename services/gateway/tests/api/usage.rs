//! Usage tracking: the gateway counts requests per caller (user or API key), route
//! class and hour, sends the counts to audit in batches, and admins read them.

use std::time::Duration;

use aia_testkit::{Stack, eventually};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{PASSWORD, admin, assert_problem, field, signed_in, user_id};

/// The (requests, errors) of `caller` on `class` in the admin view.
fn counted(page: &Value, caller: &str, class: &str) -> (i64, i64) {
    page["usage"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["caller"] == caller && r["route_class"] == class)
        .fold((0, 0), |(n, e), r| {
            (
                n + r["requests"].as_i64().unwrap_or(0),
                e + r["errors"].as_i64().unwrap_or(0),
            )
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_see_requests_per_user_and_api_key_per_route_class() -> anyhow::Result<()> {
    let stack = Stack::start_with(&[("USAGE_FLUSH_SECONDS", "1".into())]).await?;
    let user = signed_in(&stack).await?;
    let token = field(&user, "access_token").to_owned();
    let id = user_id(&stack, &token).await?; // one /v1/auth/me
    let http = stack.http();
    for _ in 0..2 {
        let status = http
            .get(stack.url("/v1/auth/me"))
            .bearer_auth(&token)
            .send()
            .await?
            .status();
        assert_eq!(status, StatusCode::OK);
    }
    let created: Value = http
        .post(stack.url("/v1/api-keys"))
        .bearer_auth(&token)
        .json(&json!({"name": "usage", "password": PASSWORD, "scopes": ["profile:read"]}))
        .send()
        .await?
        .json()
        .await?;
    let missing = http
        .delete(stack.url(&format!("/v1/api-keys/{}", uuid::Uuid::new_v4())))
        .bearer_auth(&token)
        .send()
        .await?;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let key = field(&created, "api_key").to_owned();
    let key_id = field(&created, "id").to_owned();
    for _ in 0..2 {
        let status = http
            .get(stack.url("/v1/auth/me"))
            .header("x-api-key", &key)
            .send()
            .await?
            .status();
        assert_eq!(status, StatusCode::OK);
    }

    let admin = admin(&stack).await?;
    let admin_token = field(&admin, "access_token").to_owned();
    let (user_caller, key_caller) = (format!("user:{id}"), format!("key:{key_id}"));
    let page = eventually(Duration::from_secs(15), || {
        let (stack, admin_token, user_caller, key_caller) =
            (&stack, &admin_token, &user_caller, &key_caller);
        async move {
            let page: Value = stack
                .http()
                .get(stack.url("/v1/admin/usage?limit=1000"))
                .bearer_auth(admin_token)
                .send()
                .await?
                .json()
                .await?;
            let done = counted(&page, user_caller, "auth") == (3, 0)
                && counted(&page, user_caller, "api-keys") == (2, 1)
                && counted(&page, key_caller, "auth") == (2, 0);
            Ok(done.then_some(page))
        }
    })
    .await?;
    assert!(
        page["usage"].as_array().is_some_and(|rows| rows
            .iter()
            .all(|r| r["hour"].as_str().is_some_and(|h| h.ends_with(":00:00Z")))),
        "{page}"
    );
    // One caller only.
    let mine: Value = http
        .get(stack.url(&format!("/v1/admin/usage?caller={key_caller}")))
        .bearer_auth(&admin_token)
        .send()
        .await?
        .json()
        .await?;
    assert!(
        mine["usage"].as_array().is_some_and(
            |rows| !rows.is_empty() && rows.iter().all(|r| r["caller"] == key_caller.as_str())
        ),
        "{mine}"
    );
    // Admins only; bad filters are 422.
    let refused = http
        .get(stack.url("/v1/admin/usage"))
        .bearer_auth(&token)
        .send()
        .await?;
    assert_problem(refused, StatusCode::FORBIDDEN).await?;
    for bad in [
        "caller=alice",
        "since=yesterday",
        "limit=5000",
        "colour=red",
    ] {
        let answer = http
            .get(stack.url(&format!("/v1/admin/usage?{bad}")))
            .bearer_auth(&admin_token)
            .send()
            .await?;
        assert_problem(answer, StatusCode::UNPROCESSABLE_ENTITY).await?;
    }
    stack.stop().await;
    Ok(())
}
