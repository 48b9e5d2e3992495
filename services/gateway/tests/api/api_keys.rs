//! API keys: shown once, stored as an HMAC, scoped, revocable, expiring, and never
//! enough for account actions.

use aia_testkit::Stack;
use diesel_async::RunQueryDsl;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{PASSWORD, assert_problem, field, signed_in};

async fn create(stack: &Stack, token: &str, body: Value) -> anyhow::Result<reqwest::Response> {
    Ok(stack
        .http()
        .post(stack.url("/v1/api-keys"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await?)
}

/// The keys `GET /v1/api-keys` lists for the user of `token`.
async fn listed(stack: &Stack, token: &str) -> anyhow::Result<Vec<Value>> {
    Ok(stack
        .http()
        .get(stack.url("/v1/api-keys"))
        .bearer_auth(token)
        .send()
        .await?
        .json()
        .await?)
}

async fn me_with_key(stack: &Stack, key: &str) -> anyhow::Result<reqwest::Response> {
    Ok(stack
        .http()
        .get(stack.url("/v1/auth/me"))
        .header("x-api-key", key)
        .send()
        .await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_is_shown_once_works_until_revoked_and_a_wrong_secret_never_works()
-> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let user = signed_in(&stack).await?;
    let token = field(&user, "access_token");
    let response = create(
        &stack,
        token,
        json!({"name": "ci", "password": PASSWORD, "scopes": ["profile:read"]}),
    )
    .await?;
    assert_eq!(response.status(), StatusCode::CREATED);
    let created: Value = response.json().await?;
    let key = field(&created, "api_key").to_owned();
    let parts: Vec<&str> = key.split('_').collect();
    assert_eq!(
        (parts[0], parts[1].len(), key.len()),
        ("aia", 32, 4 + 32 + 1 + 43)
    );

    // Only an HMAC of the secret is stored.
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Bytea)]
        secret_hmac: Vec<u8>,
    }
    let mut conn = stack.db.connect().await?;
    let rows = diesel::sql_query("SELECT secret_hmac FROM auth.api_keys")
        .load::<Row>(&mut conn)
        .await?;
    // After `aia_<id>_` (the secret's own alphabet has `_`, so not split on it).
    let secret = key.get(4 + 32 + 1..).unwrap_or_default();
    assert_eq!(secret.len(), 43);
    assert_eq!(rows[0].secret_hmac.len(), 32);
    assert!(!String::from_utf8_lossy(&rows[0].secret_hmac).contains(secret));

    let me: Value = me_with_key(&stack, &key).await?.json().await?;
    assert_eq!(me["session_id"], Value::Null);
    assert!(me["email"].as_str().is_some());
    let via_authorization = stack
        .http()
        .get(stack.url("/v1/auth/me"))
        .header("authorization", format!("ApiKey {key}"))
        .send()
        .await?;
    assert_eq!(via_authorization.status(), StatusCode::OK);

    // Same id, another secret: refused.
    let forged = format!("aia_{}_{}", parts[1], "B".repeat(43));
    assert_problem(
        me_with_key(&stack, &forged).await?,
        StatusCode::UNAUTHORIZED,
    )
    .await?;
    assert_problem(
        me_with_key(&stack, "aia_junk").await?,
        StatusCode::UNAUTHORIZED,
    )
    .await?;

    let listed = listed(&stack, token).await?;
    assert_eq!(listed.len(), 1);
    assert!(
        listed[0].get("api_key").is_none(),
        "a listed key carries its secret"
    );
    assert!(listed[0]["last_used_at"].is_string());

    let id = field(&created, "id");
    let revoked = stack
        .http()
        .delete(stack.url(&format!("/v1/api-keys/{id}")))
        .bearer_auth(token)
        .send()
        .await?;
    assert_eq!(revoked.status(), StatusCode::NO_CONTENT);
    assert_problem(me_with_key(&stack, &key).await?, StatusCode::UNAUTHORIZED).await?;
    // Someone else cannot revoke or see it.
    let other = signed_in(&stack).await?;
    let theirs = stack
        .http()
        .delete(stack.url(&format!("/v1/api-keys/{id}")))
        .bearer_auth(field(&other, "access_token"))
        .send()
        .await?;
    assert_eq!(theirs.status(), StatusCode::NOT_FOUND);
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_limit_a_key_and_no_key_can_do_account_actions() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let user = signed_in(&stack).await?;
    let token = field(&user, "access_token");
    let created: Value = create(
        &stack,
        token,
        json!({"name": "introspector", "password": PASSWORD, "scopes": ["tokens:introspect"]}),
    )
    .await?
    .json()
    .await?;
    let key = field(&created, "api_key").to_owned();

    assert_problem(me_with_key(&stack, &key).await?, StatusCode::FORBIDDEN).await?;
    // A resource server introspects with its key.
    let active: Value = stack
        .http()
        .post(stack.url("/v1/oauth/introspect"))
        .header("x-api-key", &key)
        .form(&[("token", token)])
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(active["active"], true);

    // Account actions want the user's own bearer token.
    let attempts = [
        stack
            .http()
            .post(stack.url("/v1/api-keys"))
            .header("x-api-key", &key)
            .json(&json!({"name": "x", "password": PASSWORD, "scopes": ["profile:read"]})),
        stack
            .http()
            .get(stack.url("/v1/api-keys"))
            .header("x-api-key", &key),
        stack
            .http()
            .post(stack.url("/v1/auth/password/change"))
            .header("x-api-key", &key)
            .json(&json!({"current_password": "x", "new_password": "y"})),
        stack
            .http()
            .get(stack.url("/v1/auth/sessions"))
            .header("x-api-key", &key),
        stack
            .http()
            .post(stack.url("/v1/auth/logout-all"))
            .header("x-api-key", &key),
    ];
    for attempt in attempts {
        assert_eq!(attempt.send().await?.status(), StatusCode::UNAUTHORIZED);
    }
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_keys_and_bad_requests_are_refused() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let user = signed_in(&stack).await?;
    let token = field(&user, "access_token");
    for body in [
        json!({"name": "", "password": PASSWORD, "scopes": ["profile:read"]}),
        json!({"name": "x", "password": PASSWORD, "scopes": []}),
        json!({"name": "x", "password": PASSWORD, "scopes": ["admin"]}),
        json!({"name": "x", "password": PASSWORD, "scopes": ["profile:read"], "expires_in_days": 100000}),
        json!({"name": "x", "password": PASSWORD, "scopes": ["profile:read"], "owner": "someone else"}),
        // A key outlives the access token and a password reset: minting one takes
        // the password, which a stolen access token does not carry.
        json!({"name": "x", "scopes": ["profile:read"]}),
    ] {
        assert_problem(
            create(&stack, token, body.clone()).await?,
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await?;
    }
    let wrong = create(
        &stack,
        token,
        json!({"name": "x", "password": "not the password at all", "scopes": ["profile:read"]}),
    )
    .await?;
    let body = assert_problem(wrong, StatusCode::FORBIDDEN).await?;
    assert!(field(&body, "detail").contains("password"), "{body}");
    let created: Value = create(
        &stack,
        token,
        json!({"name": "short-lived", "password": PASSWORD, "scopes": ["profile:read"], "expires_in_days": 1}),
    )
    .await?
    .json()
    .await?;
    assert!(created["expires_at"].is_string());
    let key = field(&created, "api_key").to_owned();
    assert_eq!(me_with_key(&stack, &key).await?.status(), StatusCode::OK);
    let mut conn = stack.db.connect().await?;
    diesel::sql_query("UPDATE auth.api_keys SET expires_at = now() - interval '1 second'")
        .execute(&mut conn)
        .await?;
    assert_problem(me_with_key(&stack, &key).await?, StatusCode::UNAUTHORIZED).await?;
    stack.stop().await;
    Ok(())
}

/// A key is the request's credential wherever it is sent: the limiter charges it (or,
/// for a bad one, the address), so a bearer-only route does not act on a token sent
/// beside it (a junk key would move the token's requests out of its user's bucket;
/// another user's key would be charged for them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bearer_only_route_refuses_a_token_sent_with_a_key() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let user = signed_in(&stack).await?;
    let token = field(&user, "access_token");
    let list = |key: Option<&str>| {
        let mut request = stack
            .http()
            .get(stack.url("/v1/api-keys"))
            .bearer_auth(token);
        if let Some(key) = key {
            request = request.header("x-api-key", key);
        }
        request.send()
    };
    assert_eq!(list(None).await?.status(), StatusCode::OK);
    let answer = list(Some("aia_junk")).await?;
    assert_problem(answer, StatusCode::UNAUTHORIZED).await?;
    stack.stop().await;
    Ok(())
}

/// Each key has a rate-limit bucket of its own, so a user holds at most 25 live keys
/// (403 past that, until one is revoked or expires; creations sent at once cannot
/// all pass the count); the list shows live keys only
/// (an expired one is not listed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_holds_at_most_25_live_keys() -> anyhow::Result<()> {
    let stack = Stack::start_with(&crate::helpers::cheap_hashing()).await?;
    let user = signed_in(&stack).await?;
    let token = field(&user, "access_token");
    let body = json!({"name": "k", "password": PASSWORD, "scopes": ["profile:read"]});
    let mut ids = Vec::new();
    for _ in 0..20 {
        let created: Value = create(&stack, token, body.clone()).await?.json().await?;
        ids.push(field(&created, "id").to_owned());
    }
    // Ten at once for the last five places: the count holds under the race.
    let racing =
        futures::future::join_all((0..10).map(|_| create(&stack, token, body.clone()))).await;
    let mut refused_in_race = 0;
    for answer in racing {
        let answer = answer?;
        if answer.status() == StatusCode::CREATED {
            let created: Value = answer.json().await?;
            ids.push(field(&created, "id").to_owned());
        } else {
            assert_eq!(answer.status(), StatusCode::FORBIDDEN);
            refused_in_race += 1;
        }
    }
    assert_eq!((ids.len(), refused_in_race), (25, 5));
    assert_eq!(listed(&stack, token).await?.len(), 25);
    let refused = create(&stack, token, body.clone()).await?;
    let problem = assert_problem(refused, StatusCode::FORBIDDEN).await?;
    assert!(
        problem["detail"].as_str().is_some_and(|d| d.contains("25")),
        "{problem}"
    );
    // One expires: it is no longer listed, and its place is free.
    let mut conn = stack.db.connect().await?;
    diesel::sql_query(
        "UPDATE auth.api_keys SET expires_at = now() - interval '1 second' WHERE id = $1::uuid",
    )
    .bind::<diesel::sql_types::Text, _>(&ids[0])
    .execute(&mut conn)
    .await?;
    let listed = Value::from(listed(&stack, token).await?).to_string();
    assert!(
        !listed.contains(&ids[0]) && listed.contains(&ids[1]),
        "{listed}"
    );
    assert_eq!(
        create(&stack, token, body).await?.status(),
        StatusCode::CREATED
    );
    drop(conn);
    stack.stop().await;
    Ok(())
}
