//! TOTP MFA: enrolment, the login challenge, codes that work once, recovery codes,
//! sessions that record `amr`, credential changes that need the second factor, and
//! wrong codes that count toward the lockout.

use aia_testkit::Stack;
use diesel_async::RunQueryDsl;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{
    PASSWORD, SessionGate, assert_problem, email, field, from_ip, left_no_session, login_from,
    login_in_background, me_status, register,
};

/// The time now, in seconds.
pub(crate) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// What an authenticator app does with the enrolment URI: the code at `time`.
pub(crate) fn code_at(uri: &str, time: u64) -> anyhow::Result<String> {
    let totp = totp_rs::Totp::from_url(uri).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(totp.generate(time).to_string())
}

async fn post(
    stack: &Stack,
    path: &str,
    token: Option<&str>,
    body: Value,
) -> anyhow::Result<reqwest::Response> {
    let mut request = stack.http().post(stack.url(path)).json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    Ok(request.send().await?)
}

/// The token pair of a login with both factors, from the owner's address (the code
/// of the next time step: the enrolment used this one).
async fn both_factors(stack: &Stack, user: &Enrolled) -> anyhow::Result<Value> {
    let pending = challenge(stack.http(), stack, &user.email).await?;
    Ok(second_step(
        stack.http(),
        stack,
        &pending,
        &code_at(&user.uri, now() + 30)?,
    )
    .await?
    .json()
    .await?)
}

/// The first step of an MFA login: the challenge.
async fn challenge(client: &reqwest::Client, stack: &Stack, email: &str) -> anyhow::Result<String> {
    let answer = login_from(client, stack, email).await?;
    assert_eq!(answer["mfa_required"], true, "{answer}");
    assert!(answer.get("access_token").is_none(), "{answer}");
    assert_eq!(answer["methods"], json!(["totp", "recovery_code"]));
    assert_eq!(answer["expires_in"], 300);
    Ok(field(&answer, "challenge").to_owned())
}

async fn second_step(
    client: &reqwest::Client,
    stack: &Stack,
    challenge: &str,
    code: &str,
) -> anyhow::Result<reqwest::Response> {
    Ok(client
        .post(stack.url("/v1/auth/login/mfa"))
        .json(&json!({"challenge": challenge, "code": code}))
        .send()
        .await?)
}

async fn me(stack: &Stack, token: &str) -> anyhow::Result<Value> {
    Ok(stack
        .http()
        .get(stack.url("/v1/auth/me"))
        .bearer_auth(token)
        .send()
        .await?
        .json()
        .await?)
}

/// A user with TOTP on: their email, the enrolment URI, the recovery codes, and the
/// token pair of the session that confirmed it (a password-only session).
struct Enrolled {
    email: String,
    uri: String,
    recovery_codes: Vec<String>,
    tokens: Value,
}

async fn enrolled(stack: &Stack) -> anyhow::Result<Enrolled> {
    let email = email();
    register(stack, &email).await?;
    let tokens = login_from(stack.http(), stack, &email).await?;
    let token = field(&tokens, "access_token");
    let enrolment: Value = post(stack, "/v1/auth/mfa/totp/enroll", Some(token), json!({}))
        .await?
        .json()
        .await?;
    let uri = field(&enrolment, "otpauth_uri").to_owned();
    let code = code_at(&uri, now())?;
    let confirmed = post(
        stack,
        "/v1/auth/mfa/totp/confirm",
        Some(token),
        json!({"code": code, "password": PASSWORD}),
    )
    .await?;
    assert_eq!(confirmed.status(), StatusCode::OK);
    let confirmed: Value = confirmed.json().await?;
    let recovery_codes = confirmed["recovery_codes"]
        .as_array()
        .map(|codes| {
            codes
                .iter()
                .filter_map(|c| c.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    Ok(Enrolled {
        email,
        uri,
        recovery_codes,
        tokens,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrolment_shows_the_secret_once_seals_it_and_turns_login_into_two_steps()
-> anyhow::Result<()> {
    let stack = Stack::start_with(&[("LOGIN_BACKOFF_AFTER", "100".into())]).await?;
    let email = email();
    register(&stack, &email).await?;
    let tokens = login_from(stack.http(), &stack, &email).await?;
    let token = field(&tokens, "access_token").to_owned();
    let other = login_from(stack.http(), &stack, &email).await?;
    assert_eq!(me(&stack, &token).await?["mfa_enabled"], false);

    let response = post(&stack, "/v1/auth/mfa/totp/enroll", Some(&token), json!({})).await?;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let enrolment: Value = response.json().await?;
    let uri = field(&enrolment, "otpauth_uri").to_owned();
    assert!(uri.starts_with("otpauth://totp/AIA:"), "{uri}");
    assert!(uri.contains("issuer=AIA"), "{uri}");
    let secret = field(&enrolment, "secret").to_owned();
    assert_eq!(secret.len(), 32, "160 bits in base32");

    // At rest the secret is sealed: its bytes are not in the row.
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Bytea)]
        secret: Vec<u8>,
        #[diesel(sql_type = diesel::sql_types::Text)]
        sealing_key_id: String,
    }
    let mut conn = stack.db.connect().await?;
    let rows = diesel::sql_query("SELECT secret, sealing_key_id FROM auth.totp_credentials")
        .load::<Row>(&mut conn)
        .await?;
    let raw = totp_rs::Secret::try_from_base32(&secret).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    assert_eq!(rows.len(), 1);
    assert!(!rows[0].secret.windows(20).any(|w| w == raw.as_ref()));
    assert_eq!(rows[0].sealing_key_id.len(), 16);

    // Not on until confirmed: the password alone still logs in.
    assert!(login_from(stack.http(), &stack, &email).await?["access_token"].is_string());
    // A wrong first code confirms nothing.
    let wrong = code_at(&uri, now() + 3600)?;
    let refused = post(
        &stack,
        "/v1/auth/mfa/totp/confirm",
        Some(&token),
        json!({"code": wrong, "password": PASSWORD}),
    )
    .await?;
    assert_problem(refused, StatusCode::FORBIDDEN).await?;
    // Nor does the right code without the password, or with a wrong one: a stolen
    // access token alone cannot put someone else's authenticator on the account.
    let code = code_at(&uri, now())?;
    let no_password = post(
        &stack,
        "/v1/auth/mfa/totp/confirm",
        Some(&token),
        json!({"code": code}),
    )
    .await?;
    assert_problem(no_password, StatusCode::UNPROCESSABLE_ENTITY).await?;
    let wrong_password = post(
        &stack,
        "/v1/auth/mfa/totp/confirm",
        Some(&token),
        json!({"code": code, "password": "not the password at all"}),
    )
    .await?;
    let body = assert_problem(wrong_password, StatusCode::FORBIDDEN).await?;
    assert!(field(&body, "detail").contains("password"), "{body}");
    assert_eq!(me(&stack, &token).await?["mfa_enabled"], false);

    let confirmed = post(
        &stack,
        "/v1/auth/mfa/totp/confirm",
        Some(&token),
        json!({"code": code, "password": PASSWORD}),
    )
    .await?;
    assert_eq!(confirmed.status(), StatusCode::OK);
    let confirmed: Value = confirmed.json().await?;
    let codes = confirmed["recovery_codes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(codes.len(), 10);
    let distinct: std::collections::HashSet<_> = codes.iter().filter_map(|c| c.as_str()).collect();
    assert_eq!(distinct.len(), 10);
    assert!(
        distinct
            .iter()
            .all(|c| c.len() == 19 && c.matches('-').count() == 3)
    );
    // Recovery codes are stored hashed.
    #[derive(diesel::QueryableByName)]
    struct Hash {
        #[diesel(sql_type = diesel::sql_types::Bytea)]
        code_hash: Vec<u8>,
    }
    let hashes = diesel::sql_query("SELECT code_hash FROM auth.recovery_codes")
        .load::<Hash>(&mut conn)
        .await?;
    assert_eq!(hashes.len(), 10);
    assert!(hashes.iter().all(|h| h.code_hash.len() == 32));

    // Confirming ended the other session and kept this one.
    assert_eq!(
        me_status(&stack, field(&other, "access_token")).await?,
        StatusCode::UNAUTHORIZED
    );
    let profile = me(&stack, &token).await?;
    assert_eq!(profile["mfa_enabled"], true);
    assert_eq!(profile["amr"], json!(["pwd"]));
    // A second enrolment cannot silently replace the factor.
    let again = post(&stack, "/v1/auth/mfa/totp/enroll", Some(&token), json!({})).await?;
    assert_problem(again, StatusCode::FORBIDDEN).await?;

    // Login is now two steps. The code used to confirm is spent: replay refused.
    let first = challenge(stack.http(), &stack, &email).await?;
    let replay = second_step(stack.http(), &stack, &first, &code).await?;
    assert_problem(replay, StatusCode::UNAUTHORIZED).await?;
    // The next step's code (inside the ±1 step window) works, once.
    let next = code_at(&uri, now() + 30)?;
    let done = second_step(stack.http(), &stack, &first, &next).await?;
    assert_eq!(done.status(), StatusCode::OK);
    assert_eq!(done.headers()["cache-control"], "no-store");
    let pair: Value = done.json().await?;
    let mfa_token = field(&pair, "access_token").to_owned();
    assert_eq!(me(&stack, &mfa_token).await?["amr"], json!(["pwd", "otp"]));
    // The challenge is single use, and so is the code.
    let reused = second_step(stack.http(), &stack, &first, &next).await?;
    assert_problem(reused, StatusCode::UNAUTHORIZED).await?;
    let fresh = challenge(stack.http(), &stack, &email).await?;
    let replayed = second_step(stack.http(), &stack, &fresh, &next).await?;
    assert_problem(replayed, StatusCode::UNAUTHORIZED).await?;

    // A refresh keeps the session's amr.
    let refreshed: Value = post(
        &stack,
        "/v1/auth/refresh",
        None,
        json!({"refresh_token": field(&pair, "refresh_token")}),
    )
    .await?
    .json()
    .await?;
    assert_eq!(
        me(&stack, field(&refreshed, "access_token")).await?["amr"],
        json!(["pwd", "otp"])
    );

    // A recovery code works once (upper case and without dashes too).
    let recovery = codes[0].as_str().unwrap_or_default().to_owned();
    let typed = recovery.replace('-', "").to_uppercase();
    let ok = second_step(stack.http(), &stack, &fresh, &typed).await?;
    assert_eq!(ok.status(), StatusCode::OK);
    let later = challenge(stack.http(), &stack, &email).await?;
    let spent = second_step(stack.http(), &stack, &later, &recovery).await?;
    assert_problem(spent, StatusCode::UNAUTHORIZED).await?;
    // Another user's recovery code is not this user's.
    let stranger = enrolled(&stack).await?;
    let theirs = second_step(stack.http(), &stack, &later, &stranger.recovery_codes[0]).await?;
    assert_problem(theirs, StatusCode::UNAUTHORIZED).await?;
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_challenges_and_five_wrong_codes_get_nowhere() -> anyhow::Result<()> {
    let stack = Stack::start_with(&[("LOGIN_BACKOFF_AFTER", "100".into())]).await?;
    let user = enrolled(&stack).await?;
    let right = code_at(&user.uri, now() + 30)?;
    for forged in [
        "",
        "not-a-challenge",
        &"A".repeat(43),
        &"x".repeat(10_000),
        "../../etc/passwd",
    ] {
        let response = second_step(stack.http(), &stack, forged, &right).await?;
        assert_problem(response, StatusCode::UNAUTHORIZED).await?;
    }
    let pending = challenge(stack.http(), &stack, &user.email).await?;
    // The fifth wrong code ends the challenge.
    for wrong in ["000000", "12345", "1234567", "abcdef", "١٢٣٤٥٦"] {
        let response = second_step(stack.http(), &stack, &pending, wrong).await?;
        assert_problem(response, StatusCode::UNAUTHORIZED).await?;
    }
    // The challenge is gone: even the right code is refused now.
    let late = second_step(stack.http(), &stack, &pending, &right).await?;
    assert_problem(late, StatusCode::UNAUTHORIZED).await?;
    // Unknown fields are refused, not ignored.
    let extra = stack
        .http()
        .post(stack.url("/v1/auth/login/mfa"))
        .json(&json!({"challenge": pending, "code": right, "trust_device": true}))
        .send()
        .await?;
    assert_problem(extra, StatusCode::UNPROCESSABLE_ENTITY).await?;
    stack.stop().await;
    Ok(())
}

/// The sum of auth's counter `series` over its label sets that contain `labels`
/// (this process's counters: the services of the test run in it).
async fn auth_counter(stack: &Stack, series: &str, labels: &str) -> anyhow::Result<u64> {
    let text = stack
        .http()
        .get(stack.auth.admin_url("/metrics"))
        .send()
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .filter(|l| {
            l.strip_prefix(series)
                .is_some_and(|rest| rest.starts_with(['{', ' ']))
        })
        .filter(|l| l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64)
}

/// How many second-factor codes auth has checked and found wrong.
async fn wrong_codes_checked(stack: &Stack) -> anyhow::Result<u64> {
    auth_counter(stack, "auth_login_total", "wrong_mfa_code").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codes_sent_at_once_still_get_five_tries_per_challenge() -> anyhow::Result<()> {
    // Someone with the password fires many codes at one challenge at once: each try
    // is taken from the challenge before its code is checked, so no more than five
    // codes are ever checked, however many arrive together (counting only after the
    // check let every request of a burst through).
    let stack = Stack::start_with(&[
        ("LOGIN_BACKOFF_AFTER", "100".into()),
        ("RATE_LIMIT_LOGIN", "1000/60".into()),
    ])
    .await?;
    let user = enrolled(&stack).await?;
    let pending = challenge(stack.http(), &stack, &user.email).await?;
    let before = wrong_codes_checked(&stack).await?;
    let burst = (0..30).map(|n| {
        let code = format!("{:06}", 100_000 + n);
        let (stack, pending) = (&stack, &pending);
        async move { second_step(stack.http(), stack, pending, &code).await }
    });
    for answer in futures::future::join_all(burst).await {
        assert_problem(answer?, StatusCode::UNAUTHORIZED).await?;
    }
    let checked = wrong_codes_checked(&stack).await? - before;
    assert_eq!(checked, 5, "codes checked against one challenge");
    // And the challenge is spent: the right code gets nowhere with it.
    let late = second_step(
        stack.http(),
        &stack,
        &pending,
        &code_at(&user.uri, now() + 30)?,
    )
    .await?;
    assert_problem(late, StatusCode::UNAUTHORIZED).await?;
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_changes_need_a_session_that_used_the_second_factor() -> anyhow::Result<()> {
    let stack = Stack::start_with(&[("LOGIN_BACKOFF_AFTER", "100".into())]).await?;
    let user = enrolled(&stack).await?;
    // The confirming session was opened with the password alone.
    let pwd_only = field(&user.tokens, "access_token").to_owned();
    let change = post(
        &stack,
        "/v1/auth/password/change",
        Some(&pwd_only),
        json!({"current_password": PASSWORD, "new_password": "a brand new passphrase"}),
    )
    .await?;
    let body = assert_problem(change, StatusCode::FORBIDDEN).await?;
    assert!(field(&body, "detail").contains("second factor"), "{body}");
    let key = post(
        &stack,
        "/v1/api-keys",
        Some(&pwd_only),
        json!({"name": "ci", "password": PASSWORD, "scopes": ["profile:read"]}),
    )
    .await?;
    assert_problem(key, StatusCode::FORBIDDEN).await?;
    let disable = post(
        &stack,
        "/v1/auth/mfa/totp/disable",
        Some(&pwd_only),
        json!({"password": PASSWORD}),
    )
    .await?;
    assert_problem(disable, StatusCode::FORBIDDEN).await?;

    // With the second factor, they work. An API key made here cannot turn MFA off.
    let pair = both_factors(&stack, &user).await?;
    let strong = field(&pair, "access_token").to_owned();
    let created = post(
        &stack,
        "/v1/api-keys",
        Some(&strong),
        json!({"name": "ci", "password": PASSWORD, "scopes": ["profile:read"]}),
    )
    .await?;
    assert_eq!(created.status(), StatusCode::CREATED);
    let api_key = field(&created.json::<Value>().await?, "api_key").to_owned();
    let by_key = stack
        .http()
        .post(stack.url("/v1/auth/mfa/totp/disable"))
        .header("x-api-key", &api_key)
        .json(&json!({"password": PASSWORD}))
        .send()
        .await?;
    assert_problem(by_key, StatusCode::UNAUTHORIZED).await?;

    // Disabling needs a proof: none, or a wrong one, is refused.
    let none = post(
        &stack,
        "/v1/auth/mfa/totp/disable",
        Some(&strong),
        json!({}),
    )
    .await?;
    assert_problem(none, StatusCode::UNPROCESSABLE_ENTITY).await?;
    let wrong = post(
        &stack,
        "/v1/auth/mfa/totp/disable",
        Some(&strong),
        json!({"password": "not the password at all"}),
    )
    .await?;
    assert_problem(wrong, StatusCode::FORBIDDEN).await?;
    let off = post(
        &stack,
        "/v1/auth/mfa/totp/disable",
        Some(&strong),
        json!({"password": PASSWORD}),
    )
    .await?;
    assert_eq!(off.status(), StatusCode::NO_CONTENT);
    // Off: the password alone logs in again, and the old recovery codes are gone.
    assert!(login_from(stack.http(), &stack, &user.email).await?["access_token"].is_string());
    let mut conn = stack.db.connect().await?;
    let left = diesel::sql_query("SELECT count(*) AS n FROM auth.recovery_codes")
        .load::<aia_testkit::Count>(&mut conn)
        .await?;
    assert_eq!(left[0].n, 0);
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_codes_count_toward_the_lock_and_a_known_password_does_not_reset_them()
-> anyhow::Result<()> {
    let stack = Stack::start_with(&[
        ("LOGIN_BACKOFF_AFTER", "100".into()),
        ("LOCKOUT_THRESHOLD", "4".into()),
    ])
    .await?;
    // The owner enrols from 127.0.0.1 (which becomes a known client).
    let user = enrolled(&stack).await?;
    let attacker = from_ip(2)?;
    // Someone with the password but not the authenticator: three wrong codes...
    let first = challenge(&attacker, &stack, &user.email).await?;
    for _ in 0..3 {
        let response = second_step(&attacker, &stack, &first, "000000").await?;
        assert_problem(response, StatusCode::UNAUTHORIZED).await?;
    }
    // ...then the password again (which must not clear the count), one more wrong code.
    let second = challenge(&attacker, &stack, &user.email).await?;
    let response = second_step(&attacker, &stack, &second, "000001").await?;
    assert_problem(response, StatusCode::UNAUTHORIZED).await?;
    // Four failures: locked for strangers, before any password check.
    let locked = attacker
        .post(stack.url("/v1/auth/login"))
        .json(&json!({"email": user.email, "password": PASSWORD}))
        .send()
        .await?;
    assert_eq!(locked.status(), StatusCode::TOO_MANY_REQUESTS);
    let pending_second_step = second_step(&attacker, &stack, &second, "000002").await?;
    assert_eq!(pending_second_step.status(), StatusCode::TOO_MANY_REQUESTS);
    // The owner's known client still gets in, with both factors.
    let owner = challenge(stack.http(), &stack, &user.email).await?;
    let ok = second_step(
        stack.http(),
        &stack,
        &owner,
        &code_at(&user.uri, now() + 30)?,
    )
    .await?;
    assert_eq!(ok.status(), StatusCode::OK);
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_code_raced_on_ten_challenges_logs_in_once() -> anyhow::Result<()> {
    let stack = Stack::start_with(&[("LOGIN_BACKOFF_AFTER", "100".into())]).await?;
    let user = enrolled(&stack).await?;
    let mut challenges = Vec::new();
    for _ in 0..10 {
        challenges.push(challenge(stack.http(), &stack, &user.email).await?);
    }
    let code = code_at(&user.uri, now() + 30)?;
    let attempts = challenges
        .iter()
        .map(|c| second_step(stack.http(), &stack, c, &code));
    let statuses: Vec<StatusCode> = futures::future::join_all(attempts)
        .await
        .into_iter()
        .map(|r| r.map(|r| r.status()))
        .collect::<Result<_, _>>()?;
    let won = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    assert_eq!(won, 1, "{statuses:?}");
    assert!(
        statuses
            .iter()
            .all(|s| *s == StatusCode::OK || *s == StatusCode::UNAUTHORIZED),
        "{statuses:?}"
    );
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_reset_does_not_skip_the_second_factor() -> anyhow::Result<()> {
    let (stack, smtp) = crate::email::stack_with_mail(&[]).await?;
    let user = enrolled(&stack).await?;
    post(
        &stack,
        "/v1/auth/password/forgot",
        None,
        json!({"email": user.email}),
    )
    .await?;
    let mail = smtp.nth_with(&user.email, crate::email::RESET, 1).await?;
    let token = crate::email::token_in(&mail.data);
    let new = "a fresh passphrase after reset";
    let reset = post(
        &stack,
        "/v1/auth/password/reset",
        None,
        json!({"token": token, "new_password": new}),
    )
    .await?;
    assert_eq!(reset.status(), StatusCode::OK);
    let answer: Value = stack
        .http()
        .post(stack.url("/v1/auth/login"))
        .json(&json!({"email": user.email, "password": new}))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(answer["mfa_required"], true, "{answer}");
    assert!(answer.get("access_token").is_none());
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_challenge_opened_before_a_password_change_dies_with_the_old_password()
-> anyhow::Result<()> {
    // Someone with the old password opens a challenge and waits (it lives five
    // minutes); the owner changes the password meanwhile. The change ends the
    // sessions; the pending login must end too, whatever code it comes with.
    let stack = Stack::start_with(&[("LOGIN_BACKOFF_AFTER", "100".into())]).await?;
    let user = enrolled(&stack).await?;
    let attacker = from_ip(2)?;
    let pending = challenge(&attacker, &stack, &user.email).await?;
    // The owner signs in with both factors (a recovery code: the confirmation spent
    // the current TOTP step) and changes the password.
    let own = challenge(stack.http(), &stack, &user.email).await?;
    let recovery = <[String]>::first(&user.recovery_codes)
        .cloned()
        .unwrap_or_default();
    let pair: Value = second_step(stack.http(), &stack, &own, &recovery)
        .await?
        .json()
        .await?;
    let changed = post(
        &stack,
        "/v1/auth/password/change",
        Some(field(&pair, "access_token")),
        json!({"current_password": PASSWORD, "new_password": "a brand new passphrase"}),
    )
    .await?;
    assert!(changed.status().is_success(), "{}", changed.status());
    let late = second_step(
        &attacker,
        &stack,
        &pending,
        &code_at(&user.uri, now() + 30)?,
    )
    .await?;
    assert_problem(late, StatusCode::UNAUTHORIZED).await?;
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codes_sent_at_once_on_many_challenges_stop_at_the_lock() -> anyhow::Result<()> {
    // Five tries per challenge, and the account locks after LOCKOUT_THRESHOLD wrong
    // codes; but the lock was checked before any code of a burst had been counted,
    // so codes sent at once on several challenges were all checked. Each code now
    // counts before it is checked: past the threshold a stranger's codes are not.
    let stack = Stack::start_with(&[
        ("LOGIN_BACKOFF_AFTER", "100".into()),
        ("LOCKOUT_THRESHOLD", "4".into()),
        ("RATE_LIMIT_LOGIN", "1000/60".into()),
    ])
    .await?;
    let user = enrolled(&stack).await?;
    let attacker = from_ip(2)?;
    let mut challenges = Vec::new();
    for _ in 0..3 {
        challenges.push(challenge(&attacker, &stack, &user.email).await?);
    }
    let before = wrong_codes_checked(&stack).await?;
    let tries: Vec<(String, String)> = challenges
        .iter()
        .flat_map(|pending| (0..5).map(move |n| (pending.clone(), format!("{:06}", 200_000 + n))))
        .collect();
    let burst = tries
        .iter()
        .map(|(pending, code)| second_step(&attacker, &stack, pending, code));
    for answer in futures::future::join_all(burst).await {
        let status = answer?.status();
        assert!(
            status == StatusCode::UNAUTHORIZED || status == StatusCode::TOO_MANY_REQUESTS,
            "{status}"
        );
    }
    let checked = wrong_codes_checked(&stack).await? - before;
    assert!(
        (1..=4).contains(&checked),
        "{checked} codes were checked with a lock at 4"
    );
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_correct_code_at_the_threshold_neither_locks_nor_alerts() -> anyhow::Result<()> {
    // Codes count on the account before they are checked; a right one must not be
    // the failure that locks the account (which would shut the owner's other
    // devices out for the lock's length after a perfectly good login).
    let stack = Stack::start_with(&[
        ("LOGIN_BACKOFF_AFTER", "100".into()),
        ("LOCKOUT_THRESHOLD", "4".into()),
    ])
    .await?;
    let user = enrolled(&stack).await?;
    let stranger = from_ip(2)?;
    let pending = challenge(&stranger, &stack, &user.email).await?;
    for wrong in ["000000", "000001", "000002"] {
        let answer = second_step(&stranger, &stack, &pending, wrong).await?;
        assert_problem(answer, StatusCode::UNAUTHORIZED).await?;
    }
    // The owner, from a new device (a new address), with the right code: the fourth.
    let new_device = from_ip(3)?;
    let own = challenge(&new_device, &stack, &user.email).await?;
    let ok = second_step(&new_device, &stack, &own, &code_at(&user.uri, now() + 30)?).await?;
    assert_eq!(ok.status(), StatusCode::OK);
    // Not locked: a third address still gets as far as the password.
    let third = from_ip(4)?;
    let answer = third
        .post(stack.url("/v1/auth/login"))
        .json(&json!({"email": user.email, "password": PASSWORD}))
        .send()
        .await?;
    assert_eq!(answer.status(), StatusCode::OK);
    // And no lock was recorded (no auth.lockout event, no lock counted).
    let locks = auth_counter(&stack, "auth_lockouts_total", "").await?;
    assert_eq!(locks, 0, "a lock was recorded");
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_reset_keeps_the_count_of_wrong_codes() -> anyhow::Result<()> {
    // Someone with the password and the mailbox (what the second factor is for) locks
    // the account with wrong codes, then resets the password: the reset must not
    // clear the count, or each reset would buy another round of guesses.
    let (stack, smtp) = crate::email::stack_with_mail(&[
        ("LOGIN_BACKOFF_AFTER", "100".into()),
        ("LOCKOUT_THRESHOLD", "4".into()),
    ])
    .await?;
    let user = enrolled(&stack).await?;
    let attacker = from_ip(2)?;
    let pending = challenge(&attacker, &stack, &user.email).await?;
    for code in ["000000", "000001", "000002", "000003"] {
        let response = second_step(&attacker, &stack, &pending, code).await?;
        assert_problem(response, StatusCode::UNAUTHORIZED).await?;
    }
    attacker
        .post(stack.url("/v1/auth/password/forgot"))
        .json(&json!({"email": user.email}))
        .send()
        .await?;
    let mail = smtp.nth_with(&user.email, crate::email::RESET, 1).await?;
    let new = "a fresh passphrase after reset";
    let reset = attacker
        .post(stack.url("/v1/auth/password/reset"))
        .json(&json!({"token": crate::email::token_in(&mail.data), "new_password": new}))
        .send()
        .await?;
    assert_eq!(reset.status(), StatusCode::OK);
    let locked = attacker
        .post(stack.url("/v1/auth/login"))
        .json(&json!({"email": user.email, "password": new}))
        .send()
        .await?;
    assert_eq!(locked.status(), StatusCode::TOO_MANY_REQUESTS);
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_login_racing_the_totp_confirmation_gets_no_session_that_outlives_it()
-> anyhow::Result<()> {
    // The attacker has the password; the owner turns TOTP on while the attacker's
    // login (which found no second factor) is between its checks and its session.
    // The confirmation ends the sessions it can see; the attacker's did not exist yet.
    let stack = Stack::start().await?;
    let email = email();
    register(&stack, &email).await?;
    let owner = login_from(stack.http(), &stack, &email).await?;
    let token = field(&owner, "access_token");
    let enrolment: Value = post(&stack, "/v1/auth/mfa/totp/enroll", Some(token), json!({}))
        .await?
        .json()
        .await?;
    let uri = field(&enrolment, "otpauth_uri").to_owned();
    let gate = SessionGate::close(&stack).await?;
    let attacker = login_in_background(&stack, &email);
    gate.holding_one(&stack).await?;
    let confirmed = post(
        &stack,
        "/v1/auth/mfa/totp/confirm",
        Some(token),
        json!({"code": code_at(&uri, now())?, "password": PASSWORD}),
    )
    .await?;
    assert_eq!(confirmed.status(), StatusCode::OK);
    gate.open().await?;
    left_no_session(&stack, attacker.await??).await?;
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codes_sent_at_once_to_turn_totp_off_stop_at_the_lock() -> anyhow::Result<()> {
    // A stolen session that used the second factor may turn TOTP off with a code:
    // codes sent at once must not all be checked before the lock bites (each counts
    // before it is checked, as at the login's second step).
    let stack = Stack::start_with(&[
        ("LOGIN_BACKOFF_AFTER", "100".into()),
        ("LOCKOUT_THRESHOLD", "4".into()),
    ])
    .await?;
    let user = enrolled(&stack).await?;
    let full = both_factors(&stack, &user).await?;
    let token = field(&full, "access_token").to_owned();
    let thief = from_ip(3)?;
    let burst = (0..12).map(|n| {
        thief
            .post(stack.url("/v1/auth/mfa/totp/disable"))
            .bearer_auth(&token)
            .json(&json!({"code": format!("{:06}", 300_000 + n)}))
            .send()
    });
    let mut checked = 0;
    for answer in futures::future::join_all(burst).await {
        match answer?.status() {
            StatusCode::FORBIDDEN => checked += 1,
            StatusCode::TOO_MANY_REQUESTS => {}
            other => anyhow::bail!("unexpected {other}"),
        }
    }
    assert!(
        (1..=4).contains(&checked),
        "{checked} codes were checked with a lock at 4"
    );
    // TOTP is still on.
    let again = challenge(stack.http(), &stack, &user.email).await?;
    assert!(!again.is_empty());
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_right_code_to_turn_totp_off_does_not_make_the_address_known() -> anyhow::Result<()> {
    // A login with both factors makes its address a known client (exempt from the
    // account lock). A right code sent with a session is not a login: a thief with a
    // stolen session and one code must not earn that exemption on the way to a
    // password-only account.
    let stack = Stack::start_with(&[
        ("LOGIN_BACKOFF_AFTER", "100".into()),
        ("LOCKOUT_THRESHOLD", "3".into()),
    ])
    .await?;
    let user = enrolled(&stack).await?;
    let full = both_factors(&stack, &user).await?;
    let thief = from_ip(3)?;
    let code = user
        .recovery_codes
        .as_slice()
        .first()
        .cloned()
        .unwrap_or_default();
    let off = thief
        .post(stack.url("/v1/auth/mfa/totp/disable"))
        .bearer_auth(field(&full, "access_token"))
        .json(&json!({"code": code}))
        .send()
        .await?;
    assert!(off.status().is_success(), "{}", off.status());
    // The account locks (wrong passwords from elsewhere)...
    let other = from_ip(4)?;
    for _ in 0..3 {
        let wrong = other
            .post(stack.url("/v1/auth/login"))
            .json(&json!({"email": user.email, "password": "not the password"}))
            .send()
            .await?;
        assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    }
    // ...and the thief's address is a stranger's: locked out, right password or not.
    let locked = thief
        .post(stack.url("/v1/auth/login"))
        .json(&json!({"email": user.email, "password": PASSWORD}))
        .send()
        .await?;
    assert_eq!(locked.status(), StatusCode::TOO_MANY_REQUESTS);
    stack.stop().await;
    Ok(())
}

/// A lock spares the owner's device, as it spares their usual address: a second
/// factor's challenge remembers that its password step came from a device a completed
/// login registered, so the owner signs in from a new address while strangers keep
/// the account locked; without the cookie that address is refused. The password
/// alone (a challenge) mints no cookie: it would let whoever stole it guess codes
/// past the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_account_lets_its_owners_device_in_from_a_new_address() -> anyhow::Result<()> {
    let stack = Stack::start_with(&[("LOGIN_BACKOFF_AFTER", "100".into())]).await?;
    let user = enrolled(&stack).await?;
    let password_step = |client, device| {
        crate::helpers::login_with_device(client, &stack, &user.email, PASSWORD, device)
    };
    // The password step alone gets no cookie; the completed login does.
    let usual = from_ip(30)?;
    let first = password_step(&usual, None).await?;
    assert_eq!(first.status(), StatusCode::OK);
    assert!(crate::helpers::device_cookie(&first).is_none());
    let first: Value = first.json().await?;
    let done = second_step(
        &usual,
        &stack,
        field(&first, "challenge"),
        &code_at(&user.uri, now() + 30)?,
    )
    .await?;
    assert_eq!(done.status(), StatusCode::OK);
    let (device, _) =
        crate::helpers::device_cookie(&done).ok_or_else(|| anyhow::anyhow!("no device cookie"))?;
    // A stranger locks the account.
    let stranger = from_ip(32)?;
    for _ in 0..10 {
        let answer = stranger
            .post(stack.url("/v1/auth/login"))
            .json(&json!({"email": user.email, "password": "guess guess guess"}))
            .send()
            .await?;
        assert_eq!(answer.status(), StatusCode::UNAUTHORIZED);
    }
    let new_address = from_ip(31)?;
    let refused = password_step(&new_address, None).await?;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    // The owner's device, from that same new address: both steps pass the lock.
    let answer = password_step(&new_address, Some(&device)).await?;
    assert_eq!(answer.status(), StatusCode::OK);
    let answer: Value = answer.json().await?;
    let pending = field(&answer, "challenge");
    let [recovery, ..] = user.recovery_codes.as_slice() else {
        anyhow::bail!("no recovery code");
    };
    let tokens = second_step(&new_address, &stack, pending, recovery).await?;
    assert_eq!(tokens.status(), StatusCode::OK);
    let tokens: Value = tokens.json().await?;
    assert_eq!(
        me(&stack, field(&tokens, "access_token")).await?["email"],
        json!(user.email)
    );
    // The recovery code was recorded with it, and what it left.
    let left = i64::try_from(user.recovery_codes.len())? - 1;
    aia_testkit::eventually(std::time::Duration::from_secs(20), || {
        let db = &stack.db;
        async move {
            let mut conn = db.connect().await?;
            let found = diesel::sql_query(
                "SELECT count(*) AS n FROM audit.events \
                 WHERE event_type = 'auth.recovery_code_used' \
                 AND (details->>'codes_left')::bigint = $1",
            )
            .bind::<diesel::sql_types::BigInt, _>(left)
            .get_result::<aia_testkit::Count>(&mut conn)
            .await?
            .n;
            Ok((found == 1).then_some(()))
        }
    })
    .await?;
    stack.stop().await;
    Ok(())
}
