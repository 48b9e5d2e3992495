//! Password policy, password change, and disabling users, through the gateway.

use aia_testkit::Stack;
use diesel_async::RunQueryDsl;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{
    PASSWORD, SessionGate, admin, assert_problem, email, field, left_no_session, login,
    login_in_background, me_status, register, signed_in, user_id,
};

async fn register_with(
    stack: &Stack,
    email: &str,
    password: &str,
) -> anyhow::Result<reqwest::Response> {
    Ok(stack
        .http()
        .post(stack.url("/v1/auth/register"))
        .json(&json!({"email": email, "password": password}))
        .send()
        .await?)
}

async fn login_status(stack: &Stack, email: &str, password: &str) -> anyhow::Result<StatusCode> {
    Ok(stack
        .http()
        .post(stack.url("/v1/auth/login"))
        .json(&json!({"email": email, "password": password}))
        .send()
        .await?
        .status())
}

async fn change(
    stack: &Stack,
    token: &str,
    current: &str,
    new: &str,
) -> anyhow::Result<reqwest::Response> {
    Ok(stack
        .http()
        .post(stack.url("/v1/auth/password/change"))
        .bearer_auth(token)
        .json(&json!({"current_password": current, "new_password": new}))
        .send()
        .await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_names_the_policy_rule_a_password_breaks() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    for (password, rule) in [
        ("1q2w3e4r5t6y", "too common"),
        ("QazWsxEdcRfv", "too common"),
        ("short", "at least 12"),
        ("grace.hopper's secret", "email"),
    ] {
        let response = register_with(&stack, "grace.hopper@example.com", password).await?;
        let body = assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY).await?;
        let detail = body["detail"].as_str().unwrap_or_default().to_owned();
        assert!(detail.contains(rule), "{password}: {detail}");
    }
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_and_unicode_passwords_are_whole_never_truncated() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let email = email();
    // 129 characters; the last one is what makes it different.
    let long = format!(
        "{}é",
        "pass phrase "
            .repeat(11)
            .chars()
            .take(128)
            .collect::<String>()
    );
    assert_eq!(long.chars().count(), 129);
    assert_eq!(
        register_with(&stack, &email, &long).await?.status(),
        StatusCode::ACCEPTED
    );
    let almost: String = long.chars().take(128).collect::<String>() + "e";
    assert_eq!(
        login_status(&stack, &email, &almost).await?,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(login_status(&stack, &email, &long).await?, StatusCode::OK);
    // The same password in another Unicode normal form (NFD "é") logs in too.
    let decomposed = long.replace('é', "e\u{301}");
    assert_eq!(
        login_status(&stack, &email, &decomposed).await?,
        StatusCode::OK
    );
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_change_needs_the_current_one_and_ends_the_other_sessions() -> anyhow::Result<()>
{
    let stack = Stack::start().await?;
    let email = email();
    register(&stack, &email).await?;
    let here = login(&stack, &email).await?;
    let elsewhere = login(&stack, &email).await?;
    let token = field(&here, "access_token");
    let new = "a brand new passphrase 2026";

    assert_problem(
        change(&stack, token, "not the current one", new).await?,
        StatusCode::FORBIDDEN,
    )
    .await?;
    assert_problem(
        change(&stack, token, PASSWORD, "1q2w3e4r5t6y").await?,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await?;
    assert_problem(
        change(&stack, token, PASSWORD, PASSWORD).await?,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await?;

    let response = change(&stack, token, PASSWORD, new).await?;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await?;
    assert_eq!(body["other_sessions_ended"], 1);
    assert_eq!(body["sessions_deferred"], false);
    assert_eq!(
        me_status(&stack, field(&elsewhere, "access_token")).await?,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(me_status(&stack, token).await?, StatusCode::OK);
    assert_eq!(
        login_status(&stack, &email, PASSWORD).await?,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(login_status(&stack, &email, new).await?, StatusCode::OK);
    // Going back to a recent password is refused.
    let body = assert_problem(
        change(&stack, token, new, PASSWORD).await?,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await?;
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("recent")),
        "{body}"
    );
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stolen_token_guesses_the_password_no_faster_than_the_login_form() -> anyhow::Result<()> {
    let stack = Stack::start_with(&[("RATE_LIMIT_LOGIN_ACCOUNT", "2/60".into())]).await?;
    let user = signed_in(&stack).await?;
    let token = field(&user, "access_token");
    // Wrong guesses of the current password spend the account's budget...
    for guess in ["guess number one", "guess number two"] {
        let response = change(&stack, token, guess, "a brand new passphrase").await?;
        assert!(response.status().is_client_error(), "{}", response.status());
        assert_ne!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    }
    // ...then even the right one waits, as it would at the login form.
    let limited = change(&stack, token, PASSWORD, "a brand new passphrase").await?;
    assert!(limited.headers().contains_key("retry-after"));
    assert_problem(limited, StatusCode::TOO_MANY_REQUESTS).await?;
    // Turning TOTP off checks a code or the password: the same budget.
    let off = stack
        .http()
        .post(stack.url("/v1/auth/mfa/totp/disable"))
        .bearer_auth(token)
        .json(&json!({"password": "guess number three"}))
        .send()
        .await?;
    assert_problem(off, StatusCode::TOO_MANY_REQUESTS).await?;
    // Another account is not held back.
    let other = signed_in(&stack).await?;
    let response = change(
        &stack,
        field(&other, "access_token"),
        "a wrong guess here",
        "a brand new passphrase",
    )
    .await?;
    assert_ne!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabling_a_user_ends_their_sessions_at_once_and_only_admins_may() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let admin = admin(&stack).await?;
    let admin_token = field(&admin, "access_token");
    let email = email();
    register(&stack, &email).await?;
    let user = login(&stack, &email).await?;
    let user_token = field(&user, "access_token");
    let user_id = user_id(&stack, user_token).await?;

    // A user cannot disable anyone.
    let other = signed_in(&stack).await?;
    assert_problem(
        crate::helpers::disable(&stack, field(&other, "access_token"), &user_id).await?,
        StatusCode::FORBIDDEN,
    )
    .await?;

    assert_eq!(
        crate::helpers::disable(&stack, admin_token, &user_id)
            .await?
            .status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        me_status(&stack, user_token).await?,
        StatusCode::UNAUTHORIZED
    );
    let refresh = stack
        .http()
        .post(stack.url("/v1/auth/refresh"))
        .json(&json!({"refresh_token": field(&user, "refresh_token")}))
        .send()
        .await?;
    assert_eq!(refresh.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        login_status(&stack, &email, PASSWORD).await?,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        crate::helpers::disable(&stack, admin_token, &uuid::Uuid::new_v4().to_string())
            .await?
            .status(),
        StatusCode::NOT_FOUND
    );

    let enable = stack
        .http()
        .post(stack.url(&format!("/v1/admin/users/{user_id}/enable")))
        .bearer_auth(admin_token)
        .send()
        .await?;
    assert_eq!(enable.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        login_status(&stack, &email, PASSWORD).await?,
        StatusCode::OK
    );

    // An admin demoted in the database is refused even with an admin token in hand.
    let mut conn = stack.db.connect().await?;
    diesel::sql_query("UPDATE auth.users SET roles = ARRAY['user'] WHERE roles @> ARRAY['admin']")
        .execute(&mut conn)
        .await?;
    assert_problem(
        crate::helpers::disable(&stack, admin_token, &user_id).await?,
        StatusCode::FORBIDDEN,
    )
    .await?;
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_racing_a_password_change_gets_no_session_that_outlives_it() -> anyhow::Result<()> {
    // The attacker knows the old password; the owner changes it while the attacker's
    // login is between its password check and its new session. The change ends the
    // sessions it can see, which do not include one that does not exist yet: without
    // a second look, that session kept a refresh token working for its whole life.
    let stack = Stack::start().await?;
    let email = email();
    register(&stack, &email).await?;
    let owner = login(&stack, &email).await?;
    let gate = SessionGate::close(&stack).await?;
    let attacker = login_in_background(&stack, &email);
    // The attacker's password has been checked once its session is being inserted.
    gate.holding_one(&stack).await?;
    let changed = change(
        &stack,
        field(&owner, "access_token"),
        PASSWORD,
        "an entirely new passphrase",
    )
    .await?;
    assert!(changed.status().is_success(), "{}", changed.status());
    gate.open().await?;
    left_no_session(&stack, attacker.await??).await?;
    assert_eq!(
        login_status(&stack, &email, PASSWORD).await?,
        StatusCode::UNAUTHORIZED
    );
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_still_hashing_when_a_reset_commits_does_not_undo_it() -> anyhow::Result<()> {
    // Someone with a session and the old password starts a change; the owner resets
    // the password before the change writes. The change must not put back a password
    // its caller knows over the one the reset chose.
    let stack = Stack::start().await?;
    let (victim, other) = (email(), email());
    register(&stack, &victim).await?;
    let reset_to = "the owner's brand new passphrase";
    assert_eq!(
        register_with(&stack, &other, reset_to).await?.status(),
        StatusCode::ACCEPTED
    );
    let attacker = login(&stack, &victim).await?;
    // The test holds the victim's row: the change hashes, then waits at its writes.
    let mut held = stack.db.connect().await?;
    for statement in [
        "BEGIN".to_owned(),
        format!("SELECT id FROM auth.users WHERE email = '{victim}' FOR UPDATE"),
    ] {
        diesel::sql_query(statement).execute(&mut held).await?;
    }
    let change = {
        let (stack_http, url, token) = (
            stack.http().clone(),
            stack.url("/v1/auth/password/change"),
            field(&attacker, "access_token").to_owned(),
        );
        tokio::spawn(async move {
            stack_http
                .post(url)
                .bearer_auth(token)
                .json(&json!({"current_password": PASSWORD, "new_password": "the attacker's own choice"}))
                .send()
                .await
        })
    };
    aia_testkit::eventually(std::time::Duration::from_secs(20), || async {
        let waiting: Vec<aia_testkit::Count> = diesel::sql_query(
            "SELECT count(*) AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
             AND datname = current_database()",
        )
        .load(&mut stack.db.connect().await?)
        .await?;
        Ok(waiting.iter().any(|c| c.n == 1).then_some(()))
    })
    .await?;
    // The reset commits first (its new hash: the other account's, made from `reset_to`).
    for statement in [
        format!(
            "UPDATE auth.users SET password_hash = \
             (SELECT password_hash FROM auth.users WHERE email = '{other}') WHERE email = '{victim}'"
        ),
        "COMMIT".to_owned(),
    ] {
        diesel::sql_query(statement).execute(&mut held).await?;
    }
    assert_problem(change.await??, StatusCode::CONFLICT).await?;
    assert_eq!(
        login_status(&stack, &victim, reset_to).await?,
        StatusCode::OK
    );
    assert_eq!(
        login_status(&stack, &victim, "the attacker's own choice").await?,
        StatusCode::UNAUTHORIZED
    );
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_a_change_must_end_are_ended_once_session_is_back() -> anyhow::Result<()> {
    // A change commits, then its call to end the other sessions fails (session
    // stops answering this auth replica): the password did change (so the answer
    // says so: a retry could not succeed), and a stolen session must not keep
    // refreshing. (Auth checks the caller's token before the change, against its
    // copy of the blacklist, which its stream keeps current: the stream's connection
    // stays up while calls fail. With session unreachable and no current copy, auth
    // would refuse the change with 503 before writing anything.)
    let mut stack = Stack::start().await?;
    let proxy = aia_testkit::proxy::TcpProxy::start(stack.session.main).await?;
    let auth = stack
        .add_auth_with(&[("SESSION_GRPC_URL", format!("http://{}", proxy.addr))])
        .await?;
    let gateway = stack
        .add_gateway_with(&[("AUTH_GRPC_URL", auth.url())])
        .await?;
    let email = email();
    register(&stack, &email).await?;
    let owner = login(&stack, &email).await?;
    let thief = login(&stack, &email).await?;
    // The replica's only connection to session so far is its revocation stream's
    // (calls connect on first use).
    aia_testkit::eventually(std::time::Duration::from_secs(10), || async {
        Ok((proxy.accepted() > 0).then_some(()))
    })
    .await?;
    assert_eq!(proxy.accepted(), 1);
    proxy.set(aia_testkit::proxy::Mode::RefuseNewerThan(1));
    let changed = stack
        .http()
        .post(format!("{}/v1/auth/password/change", gateway.url()))
        .bearer_auth(field(&owner, "access_token"))
        .json(&json!({"current_password": PASSWORD, "new_password": "an entirely new passphrase"}))
        .send()
        .await?;
    assert_eq!(changed.status(), StatusCode::OK);
    let changed: Value = changed.json().await?;
    assert_eq!(changed["other_sessions_ended"], 0, "{changed}");
    assert_eq!(changed["sessions_deferred"], true, "{changed}");
    proxy.resume();
    // Retried until session ended them: the thief's access token is refused...
    aia_testkit::eventually(std::time::Duration::from_secs(30), || async {
        let status = me_status(&stack, field(&thief, "access_token")).await?;
        Ok((status == StatusCode::UNAUTHORIZED).then_some(()))
    })
    .await?;
    // ...and so is its refresh token; the session that made the change stays.
    let refresh = stack
        .http()
        .post(stack.url("/v1/auth/refresh"))
        .json(&json!({"refresh_token": field(&thief, "refresh_token")}))
        .send()
        .await?;
    assert_problem(refresh, StatusCode::UNAUTHORIZED).await?;
    assert_eq!(
        me_status(&stack, field(&owner, "access_token")).await?,
        StatusCode::OK
    );
    let mut conn = stack.db.connect().await?;
    let due: aia_testkit::Count =
        diesel::sql_query("SELECT count(*) AS n FROM auth.session_ends_due")
            .get_result(&mut conn)
            .await?;
    assert_eq!(due.n, 0);
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_passwords_presented_with_a_token_count_towards_the_lock() -> anyhow::Result<()> {
    // A stolen access token must not be a password oracle that the account lock never
    // sees: each wrong current password counts as a failed login does.
    let stack = Stack::start_with(&[
        ("LOCKOUT_THRESHOLD", "3".into()),
        ("LOGIN_BACKOFF_AFTER", "100".into()),
    ])
    .await?;
    let email = email();
    register(&stack, &email).await?;
    let owner = login(&stack, &email).await?;
    let token = field(&owner, "access_token");
    for guess in ["guess number one", "guess number two", "guess number three"] {
        let response = change(&stack, token, guess, "a brand new passphrase").await?;
        assert_problem(response, StatusCode::FORBIDDEN).await?;
    }
    // Locked for strangers, as three wrong logins would have locked it.
    let stranger = crate::helpers::from_ip(2)?
        .post(stack.url("/v1/auth/login"))
        .json(&json!({"email": email, "password": PASSWORD}))
        .send()
        .await?;
    assert_eq!(stranger.status(), StatusCode::TOO_MANY_REQUESTS);
    // The owner's known address is exempt, as at the login form.
    let changed = change(&stack, token, PASSWORD, "a brand new passphrase").await?;
    assert_eq!(changed.status(), StatusCode::OK);
    stack.stop().await;
    Ok(())
}
