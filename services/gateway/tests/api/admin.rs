//! Admin routes: user list and search with keyset pagination, role changes.

use aia_testkit::Stack;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{admin, assert_problem, field, me_status, register, signed_in, user_id};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_page_through_and_search_users_and_users_cannot() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let admin = admin(&stack).await?;
    let token = field(&admin, "access_token");
    let tag = uuid::Uuid::new_v4().simple().to_string();
    for i in 0..5 {
        register(&stack, &format!("member{i}-{tag}@example.com")).await?;
    }
    let list = |query: String| {
        stack
            .http()
            .get(stack.url(&format!("/v1/admin/users?{query}")))
            .bearer_auth(token)
            .send()
    };
    let page1: Value = list(format!("q={tag}&limit=2")).await?.json().await?;
    let emails = |page: &Value| -> Vec<String> {
        page["users"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|u| u["email"].as_str().map(str::to_owned))
            .collect()
    };
    assert_eq!(
        emails(&page1),
        vec![
            format!("member0-{tag}@example.com"),
            format!("member1-{tag}@example.com")
        ]
    );
    let cursor = page1["next_cursor"].as_str().unwrap_or_default().to_owned();
    let page2: Value = list(format!("q={tag}&limit=2&cursor={cursor}"))
        .await?
        .json()
        .await?;
    assert_eq!(
        emails(&page2),
        vec![
            format!("member2-{tag}@example.com"),
            format!("member3-{tag}@example.com")
        ]
    );
    let cursor = page2["next_cursor"].as_str().unwrap_or_default().to_owned();
    let page3: Value = list(format!("q={tag}&limit=2&cursor={cursor}"))
        .await?
        .json()
        .await?;
    assert_eq!(emails(&page3).len(), 1);
    assert!(page3["next_cursor"].is_null());
    // LIKE wildcards are searched for literally.
    let wild: Value = list("q=%25".to_owned()).await?.json().await?;
    assert_eq!(emails(&wild).len(), 0);
    assert_problem(
        list("limit=999".to_owned()).await?,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await?;
    assert_problem(
        list("cursor=!!".to_owned()).await?,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await?;
    assert_problem(
        list("bogus=1".to_owned()).await?,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await?;

    let user = signed_in(&stack).await?;
    let denied = stack
        .http()
        .get(stack.url("/v1/admin/users"))
        .bearer_auth(field(&user, "access_token"))
        .send()
        .await?;
    assert_problem(denied, StatusCode::FORBIDDEN).await?;
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_change_takes_effect_at_once_and_an_admin_cannot_demote_or_disable_themselves()
-> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let admin = admin(&stack).await?;
    let admin_token = field(&admin, "access_token");
    let user = signed_in(&stack).await?;
    let user_token = field(&user, "access_token");
    let user_id = user_id(&stack, user_token).await?;
    let set = |token: &str, id: &str, roles: Value| {
        stack
            .http()
            .put(stack.url(&format!("/v1/admin/users/{id}/roles")))
            .bearer_auth(token)
            .json(&json!({"roles": roles}))
            .send()
    };
    assert_problem(
        set(user_token, &user_id, json!(["admin"])).await?,
        StatusCode::FORBIDDEN,
    )
    .await?;
    assert_problem(
        set(admin_token, &user_id, json!(["root"])).await?,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await?;
    assert_eq!(
        set(admin_token, &user_id, json!(["admin"])).await?.status(),
        StatusCode::NO_CONTENT
    );
    // Old tokens carry the old roles: they stop working at once.
    assert_eq!(
        me_status(&stack, user_token).await?,
        StatusCode::UNAUTHORIZED
    );
    let admin_id = crate::helpers::user_id(&stack, admin_token).await?;
    assert_problem(
        set(admin_token, &admin_id, json!(["user"])).await?,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await?;
    // Nor disable their own account (which would also end their admin role's use).
    let disable_self = stack
        .http()
        .post(stack.url(&format!("/v1/admin/users/{admin_id}/disable")))
        .bearer_auth(admin_token)
        .send()
        .await?;
    let body = assert_problem(disable_self, StatusCode::UNPROCESSABLE_ENTITY).await?;
    assert!(
        field(&body, "detail").contains("your own account"),
        "{body}"
    );
    assert_eq!(me_status(&stack, admin_token).await?, StatusCode::OK);
    stack.stop().await;
    Ok(())
}
