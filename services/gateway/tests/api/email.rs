//! Email verification and password reset, with the messages read from a real SMTP
//! listener.

use aia_testkit::Stack;
use aia_testkit::smtp::SmtpSink;
use diesel_async::RunQueryDsl;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{PASSWORD, assert_problem, email, field, login, me_status};

/// The subject of password-reset mails.
pub(crate) const RESET: &str = "Reset your password";

/// The 43-character token in a message.
pub(crate) fn token_in(mail: &str) -> String {
    mail.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        .find(|w| w.len() == 43)
        .unwrap_or_default()
        .to_owned()
}

/// A message's text with quoted-printable soft line breaks and `=3D` undone (the
/// mailer may choose that encoding for a long line).
fn unfolded(data: &str) -> String {
    data.replace("=\r\n", "")
        .replace("=\n", "")
        .replace("=3D", "=")
}

async fn post(stack: &Stack, path: &str, body: Value) -> anyhow::Result<reqwest::Response> {
    Ok(stack
        .http()
        .post(stack.url(path))
        .json(&body)
        .send()
        .await?)
}

/// Registers `email`, then makes every email-token write take `seconds` (a trigger
/// in the test's database); the connection that made it.
async fn registered_with_slow_tokens(
    stack: &Stack,
    email: &str,
    seconds: f64,
) -> anyhow::Result<diesel_async::AsyncPgConnection> {
    let registered = post(
        stack,
        "/v1/auth/register",
        json!({"email": email, "password": PASSWORD}),
    )
    .await?;
    assert!(registered.status().is_success(), "{}", registered.status());
    let mut conn = stack.db.connect().await?;
    for statement in [
        format!(
            "CREATE FUNCTION public.slow() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN PERFORM pg_sleep({seconds}); RETURN NEW; END $$"
        ),
        "CREATE TRIGGER slow BEFORE INSERT ON auth.email_tokens \
         FOR EACH ROW EXECUTE FUNCTION public.slow()"
            .to_owned(),
    ] {
        diesel::sql_query(statement).execute(&mut conn).await?;
    }
    Ok(conn)
}

/// Reset requests for one address sent faster than its tokens can be written (each
/// issue waits for the one before it, holding a database connection meanwhile) take
/// no more than their share of auth's pool: a login still gets its connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_reset_requests_leaves_logins_their_connections() -> anyhow::Result<()> {
    let (stack, _smtp) = stack_with_mail(&[("DATABASE_POOL_SIZE", "4".into())]).await?;
    let other = email();
    crate::helpers::register(&stack, &other).await?;
    let target = email();
    let _slow = registered_with_slow_tokens(&stack, &target, 1.0).await?;
    let answers = futures::future::join_all(
        (0..12).map(|_| post(&stack, "/v1/auth/password/forgot", json!({"email": target}))),
    )
    .await;
    for answer in answers {
        assert_eq!(answer?.status(), StatusCode::ACCEPTED);
    }
    // Unbounded, the twelve issues held all four connections for about twelve
    // seconds, and the login waited out the pool's 5 s (503).
    let answer = post(
        &stack,
        "/v1/auth/login",
        json!({"email": other, "password": PASSWORD}),
    )
    .await?;
    assert_eq!(answer.status(), StatusCode::OK);
    stack.stop().await;
    Ok(())
}

pub(crate) async fn stack_with_mail(extra: &[(&str, String)]) -> anyhow::Result<(Stack, SmtpSink)> {
    let smtp = SmtpSink::start().await?;
    let mut all = vec![("SMTP_URL", smtp.url.clone())];
    all.extend_from_slice(extra);
    Ok((Stack::start_with(&all).await?, smtp))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_sends_a_single_use_verification_token() -> anyhow::Result<()> {
    let (stack, smtp) = stack_with_mail(&[("REQUIRE_EMAIL_VERIFICATION", "true".into())]).await?;
    let email = email();
    assert_eq!(
        post(
            &stack,
            "/v1/auth/register",
            json!({"email": email, "password": PASSWORD})
        )
        .await?
        .status(),
        StatusCode::ACCEPTED
    );
    let mail = smtp.wait_for(&email).await?;
    let token = token_in(&mail.data);
    assert_eq!(token.len(), 43, "{}", mail.data);
    // The link goes to the web app's page, the token in its fragment (never sent to a
    // server), not to an API route a browser cannot call with GET.
    let text = unfolded(&mail.data);
    assert!(
        text.contains(&format!("http://localhost:8080/verify-email#token={token}")),
        "{text}"
    );
    assert!(!text.contains("?token="), "{text}");

    // Unverified: the right password is not enough.
    let refused = post(
        &stack,
        "/v1/auth/login",
        json!({"email": email, "password": PASSWORD}),
    )
    .await?;
    assert_problem(refused, StatusCode::FORBIDDEN).await?;
    // A resend voids the first token.
    post(
        &stack,
        "/v1/auth/verify-email/resend",
        json!({"email": email}),
    )
    .await?;
    let newer = token_in(&smtp.nth(&email, 2).await?.data);
    assert_ne!(newer, token);
    assert_problem(
        post(&stack, "/v1/auth/verify-email", json!({"token": token})).await?,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await?;

    assert_eq!(
        post(&stack, "/v1/auth/verify-email", json!({"token": newer}))
            .await?
            .status(),
        StatusCode::OK
    );
    assert_problem(
        post(&stack, "/v1/auth/verify-email", json!({"token": newer})).await?,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await?;
    let tokens = login(&stack, &email).await?;
    let me: Value = stack
        .http()
        .get(stack.url("/v1/auth/me"))
        .bearer_auth(field(&tokens, "access_token"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(me["email_verified"], true);
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_reset_ends_every_session_and_lifts_a_lockout() -> anyhow::Result<()> {
    let (stack, smtp) = stack_with_mail(&[("LOGIN_BACKOFF_AFTER", "100".into())]).await?;
    let email = email();
    post(
        &stack,
        "/v1/auth/register",
        json!({"email": email, "password": PASSWORD}),
    )
    .await?;
    // The owner is logged in from elsewhere (so this address is no known client).
    let elsewhere = reqwest::Client::builder()
        .local_address(std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 7)))
        .build()?;
    let session: Value = elsewhere
        .post(stack.url("/v1/auth/login"))
        .json(&json!({"email": email, "password": PASSWORD}))
        .send()
        .await?
        .json()
        .await?;
    // Whoever holds the account makes an API key (a taker would, to stay in).
    let created: Value = elsewhere
        .post(stack.url("/v1/api-keys"))
        .bearer_auth(field(&session, "access_token"))
        .json(&json!({"name": "kept", "password": PASSWORD, "scopes": ["profile:read"]}))
        .send()
        .await?
        .json()
        .await?;
    let key = field(&created, "api_key").to_owned();
    let with_key = || {
        stack
            .http()
            .get(stack.url("/v1/auth/me"))
            .header("x-api-key", key.as_str())
            .send()
    };
    assert_eq!(with_key().await?.status(), StatusCode::OK);
    // Someone locks the account.
    for _ in 0..10 {
        post(
            &stack,
            "/v1/auth/login",
            json!({"email": email, "password": "guess guess"}),
        )
        .await?;
    }
    assert_eq!(
        post(
            &stack,
            "/v1/auth/login",
            json!({"email": email, "password": PASSWORD})
        )
        .await?
        .status(),
        StatusCode::TOO_MANY_REQUESTS
    );

    // Forgot: the same answer as for an address nobody has.
    let known = post(&stack, "/v1/auth/password/forgot", json!({"email": email})).await?;
    let unknown = post(
        &stack,
        "/v1/auth/password/forgot",
        json!({"email": "nobody@example.com"}),
    )
    .await?;
    assert_eq!(
        (known.status(), known.text().await?),
        (unknown.status(), unknown.text().await?)
    );
    // The reset message (the verification went to the address too).
    let mail = smtp.nth_with(&email, RESET, 1).await?;
    assert!(mail.data.contains("Reset your password"), "{}", mail.data);
    let token = token_in(&mail.data);
    let text = unfolded(&mail.data);
    assert!(
        text.contains(&format!(
            "http://localhost:8080/reset-password#token={token}"
        )),
        "{text}"
    );

    // A password the policy refuses does not use the token up.
    let weak = post(
        &stack,
        "/v1/auth/password/reset",
        json!({"token": token, "new_password": "1q2w3e4r5t6y"}),
    )
    .await?;
    assert_problem(weak, StatusCode::UNPROCESSABLE_ENTITY).await?;
    let new = "a fresh passphrase after reset";
    let reset = post(
        &stack,
        "/v1/auth/password/reset",
        json!({"token": token, "new_password": new}),
    )
    .await?;
    assert_eq!(reset.status(), StatusCode::OK);
    let reset: Value = reset.json().await?;
    assert_eq!(reset["api_keys_revoked"], 1, "{reset}");
    // The key went with the sessions.
    assert_eq!(with_key().await?.status(), StatusCode::UNAUTHORIZED);
    // Single use.
    let again = post(
        &stack,
        "/v1/auth/password/reset",
        json!({"token": token, "new_password": "another fresh passphrase"}),
    )
    .await?;
    assert_problem(again, StatusCode::UNPROCESSABLE_ENTITY).await?;

    assert_eq!(
        me_status(&stack, field(&session, "access_token")).await?,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        post(
            &stack,
            "/v1/auth/login",
            json!({"email": email, "password": PASSWORD})
        )
        .await?
        .status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        post(
            &stack,
            "/v1/auth/login",
            json!({"email": email, "password": new})
        )
        .await?
        .status(),
        StatusCode::OK
    );
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_and_replaced_reset_tokens_are_refused() -> anyhow::Result<()> {
    let (stack, smtp) = stack_with_mail(&[]).await?;
    let email = email();
    post(
        &stack,
        "/v1/auth/register",
        json!({"email": email, "password": PASSWORD}),
    )
    .await?;
    post(&stack, "/v1/auth/password/forgot", json!({"email": email})).await?;
    let first = token_in(&smtp.nth_with(&email, RESET, 1).await?.data);
    post(&stack, "/v1/auth/password/forgot", json!({"email": email})).await?;
    let second = token_in(&smtp.nth_with(&email, RESET, 2).await?.data);
    assert_ne!(first, second);
    let replaced = post(
        &stack,
        "/v1/auth/password/reset",
        json!({"token": first, "new_password": "replaced token passphrase"}),
    )
    .await?;
    assert_problem(replaced, StatusCode::UNPROCESSABLE_ENTITY).await?;

    let mut conn = stack.db.connect().await?;
    diesel::sql_query("UPDATE auth.email_tokens SET expires_at = now() - interval '1 second'")
        .execute(&mut conn)
        .await?;
    let expired = post(
        &stack,
        "/v1/auth/password/reset",
        json!({"token": second, "new_password": "expired token passphrase"}),
    )
    .await?;
    assert_problem(expired, StatusCode::UNPROCESSABLE_ENTITY).await?;
    assert_eq!(
        post(
            &stack,
            "/v1/auth/login",
            json!({"email": email, "password": PASSWORD})
        )
        .await?
        .status(),
        StatusCode::OK
    );
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_token_raced_ten_times_works_exactly_once() -> anyhow::Result<()> {
    let (stack, smtp) = stack_with_mail(&[]).await?;
    let email = email();
    post(
        &stack,
        "/v1/auth/register",
        json!({"email": email, "password": PASSWORD}),
    )
    .await?;
    post(&stack, "/v1/auth/password/forgot", json!({"email": email})).await?;
    let token = token_in(&smtp.nth_with(&email, RESET, 1).await?.data);
    let attempts = (0..10).map(|i| {
        let body = json!({"token": token, "new_password": format!("raced passphrase number {i}")});
        let request = stack
            .http()
            .post(stack.url("/v1/auth/password/reset"))
            .json(&body);
        async move { request.send().await.map(|r| r.status()) }
    });
    let statuses = futures::future::join_all(attempts).await;
    let ok = statuses
        .iter()
        .filter(|s| matches!(s, Ok(StatusCode::OK)))
        .count();
    let refused = statuses
        .iter()
        .filter(|s| matches!(s, Ok(StatusCode::UNPROCESSABLE_ENTITY)))
        .count();
    assert_eq!((ok, refused), (1, 9), "{statuses:?}");
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_requests_and_registration_answer_before_any_work_that_reveals_an_account()
-> anyhow::Result<()> {
    // For a known address a reset (or verification) request writes a token and
    // queues a mail; for an unknown one it does neither. Were that work done before
    // the answer, its time would tell who has an account. Here writing a token takes
    // two seconds; the answers must not wait for it.
    let (stack, smtp) = stack_with_mail(&[]).await?;
    let email = email();
    registered_with_slow_tokens(&stack, &email, 2.0).await?;
    // Registering a new address writes a verification token; a taken one does not.
    let started = std::time::Instant::now();
    let registered = post(
        &stack,
        "/v1/auth/register",
        json!({"email": crate::helpers::email(), "password": PASSWORD}),
    )
    .await?;
    let took = started.elapsed();
    assert!(registered.status().is_success(), "{}", registered.status());
    assert!(
        took < std::time::Duration::from_millis(1500),
        "registering a new address answered after {took:?}: the token was written first"
    );
    // The registration's own mail first, so that the count below is of the new ones.
    smtp.wait_for(&email).await?;
    let before = smtp.count_for(&email);
    for path in ["/v1/auth/password/forgot", "/v1/auth/verify-email/resend"] {
        let started = std::time::Instant::now();
        let answer = post(&stack, path, json!({"email": email})).await?;
        let took = started.elapsed();
        assert!(answer.status().is_success(), "{path}: {}", answer.status());
        assert!(
            took < std::time::Duration::from_millis(1500),
            "{path} answered a known address after {took:?}: the token was written first"
        );
    }
    // The work is still done, after the answers: both mails arrive.
    aia_testkit::eventually(std::time::Duration::from_secs(20), || async {
        Ok((smtp.count_for(&email) >= before + 2).then_some(()))
    })
    .await?;
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_reset_requests_sent_together_leave_one_live_token() -> anyhow::Result<()> {
    // "A new token voids the older one" must hold when two requests (a double click)
    // write their tokens at the same time: here each write takes half a second.
    let (stack, _smtp) = stack_with_mail(&[]).await?;
    let email = email();
    let mut conn = registered_with_slow_tokens(&stack, &email, 0.5).await?;
    let (a, b) = tokio::join!(
        post(&stack, "/v1/auth/password/forgot", json!({"email": email})),
        post(&stack, "/v1/auth/password/forgot", json!({"email": email})),
    );
    assert!(a?.status().is_success() && b?.status().is_success());
    let count = |live: bool| {
        diesel::sql_query(format!(
            "SELECT count(*) AS n FROM auth.email_tokens t JOIN auth.users u ON u.id = t.user_id \
             WHERE u.email = '{email}' AND t.purpose = 'reset_password'{}",
            if live { " AND t.used_at IS NULL" } else { "" }
        ))
    };
    aia_testkit::eventually(std::time::Duration::from_secs(10), || async {
        let all: Vec<aia_testkit::Count> =
            count(false).load(&mut stack.db.connect().await?).await?;
        Ok(all.iter().any(|c| c.n == 2).then_some(()))
    })
    .await?;
    let live: Vec<aia_testkit::Count> = count(true).load(&mut conn).await?;
    assert!(live.iter().any(|c| c.n == 1), "two live reset tokens");
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_answered_before_a_shutdown_still_gets_its_token() -> anyhow::Result<()> {
    // The token is written after the 202; a shutdown right after the answer must
    // wait for it (within the grace period), not drop it.
    let (mut stack, _smtp) = stack_with_mail(&[]).await?;
    let email = email();
    let mut conn = registered_with_slow_tokens(&stack, &email, 1.0).await?;
    let answer = post(&stack, "/v1/auth/password/forgot", json!({"email": email})).await?;
    assert!(answer.status().is_success(), "{}", answer.status());
    stack.stop_service("auth").await;
    let tokens: Vec<aia_testkit::Count> = diesel::sql_query(format!(
        "SELECT count(*) AS n FROM auth.email_tokens t JOIN auth.users u ON u.id = t.user_id \
         WHERE u.email = '{email}' AND t.purpose = 'reset_password'"
    ))
    .load(&mut conn)
    .await?;
    assert!(
        tokens.iter().any(|c| c.n == 1),
        "the answered reset's token was dropped at shutdown"
    );
    stack.stop().await;
    Ok(())
}
