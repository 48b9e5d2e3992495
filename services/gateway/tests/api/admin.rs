//! Admin routes: user list and search with keyset pagination, role changes.

use aia_testkit::Stack;
use diesel_async::RunQueryDsl;
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

/// One change went through; the other was refused: 403 from auth's locked check, or
/// 401 at the gateway if it arrived after the winner had already ended its sessions
/// (a slow machine).
fn assert_loser_refused(statuses: [StatusCode; 2]) {
    assert_eq!(statuses[0], StatusCode::NO_CONTENT, "{statuses:?}");
    assert!(
        matches!(
            statuses[1],
            StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED
        ),
        "{statuses:?}"
    );
}

/// The last two admins remove each other's role (or disable each other) at the same
/// moment: the actor is checked under the rows' lock, so the second change finds its
/// actor no longer an admin (403) and one admin remains. Role writes are slowed (a
/// trigger), so that both requests are past any check made before the write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_admins_removing_each_other_at_once_leave_one() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let (ada, bob) = (admin(&stack).await?, admin(&stack).await?);
    let (ada_token, bob_token) = (field(&ada, "access_token"), field(&bob, "access_token"));
    let (ada_id, bob_id) = (
        user_id(&stack, ada_token).await?,
        user_id(&stack, bob_token).await?,
    );
    let mut conn = stack.db.connect().await?;
    for statement in [
        "CREATE FUNCTION public.slow_roles() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN PERFORM pg_sleep(1); RETURN NEW; END $$",
        "CREATE TRIGGER slow_roles BEFORE UPDATE OF roles, disabled_at ON auth.users \
         FOR EACH ROW EXECUTE FUNCTION public.slow_roles()",
    ] {
        diesel::sql_query(statement).execute(&mut conn).await?;
    }
    let demote = |token: &str, id: &str| {
        stack
            .http()
            .put(stack.url(&format!("/v1/admin/users/{id}/roles")))
            .bearer_auth(token)
            .json(&json!({"roles": []}))
            .send()
    };
    let (one, other) = tokio::join!(demote(ada_token, &bob_id), demote(bob_token, &ada_id));
    let mut statuses = [one?.status(), other?.status()];
    statuses.sort();
    assert_loser_refused(statuses);
    #[derive(diesel::QueryableByName)]
    struct Admins {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let admins = || {
        diesel::sql_query(
            "SELECT count(*) AS n FROM auth.users \
             WHERE 'admin' = ANY(roles) AND disabled_at IS NULL",
        )
    };
    assert_eq!(admins().get_result::<Admins>(&mut conn).await?.n, 1);

    // The same with disabling, between the one left and a new admin.
    let carl = admin(&stack).await?;
    let carl_token = field(&carl, "access_token");
    let carl_id = user_id(&stack, carl_token).await?;
    let (survivor_token, survivor_id) = {
        let ada_is_admin = me_status(&stack, ada_token).await? == StatusCode::OK;
        if ada_is_admin {
            (ada_token, ada_id.as_str())
        } else {
            (bob_token, bob_id.as_str())
        }
    };
    let (one, other) = tokio::join!(
        crate::helpers::disable(&stack, survivor_token, &carl_id),
        crate::helpers::disable(&stack, carl_token, survivor_id)
    );
    let mut statuses = [one?.status(), other?.status()];
    statuses.sort();
    assert_loser_refused(statuses);
    assert_eq!(admins().get_result::<Admins>(&mut conn).await?.n, 1);
    stack.stop().await;
    Ok(())
}
