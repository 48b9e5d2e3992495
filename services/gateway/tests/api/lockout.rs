//! Brute force and enumeration: throttling on three axes, lockout that a stranger
//! cannot keep up forever, and answers that tell nothing about which emails exist.

use std::time::{Duration, Instant};

use aia_proto::audit::v1::QueryRequest;
use aia_proto::audit::v1::audit_service_client::AuditServiceClient;
use aia_testkit::Stack;
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{PASSWORD, admin, email, field, from_ip, login_with_device, register};

async fn login(
    stack: &Stack,
    client: &reqwest::Client,
    email: &str,
    password: &str,
) -> anyhow::Result<reqwest::Response> {
    Ok(client
        .post(stack.url("/v1/auth/login"))
        .json(&json!({"email": email, "password": password}))
        .send()
        .await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_failures_lock_the_account_for_strangers_but_not_for_its_known_client()
-> anyhow::Result<()> {
    let stack = Stack::start_with(&[("LOGIN_BACKOFF_AFTER", "100".into())]).await?;
    let victim = email();
    register(&stack, &victim).await?;
    let owner = from_ip(1)?;
    assert_eq!(
        login(&stack, &owner, &victim, PASSWORD).await?.status(),
        StatusCode::OK
    );

    let attacker = from_ip(2)?;
    for _ in 0..10 {
        assert_eq!(
            login(&stack, &attacker, &victim, "guess guess guess")
                .await?
                .status(),
            StatusCode::UNAUTHORIZED
        );
    }
    // Locked: even the right password from a stranger's address is refused, with a
    // retry time, before any hashing.
    let locked = login(&stack, &from_ip(3)?, &victim, PASSWORD).await?;
    assert_eq!(locked.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = locked.headers()["retry-after"].to_str()?.parse()?;
    assert!(retry > 0 && retry <= 900, "{retry}");
    // The owner's usual address still gets in with the right password.
    assert_eq!(
        login(&stack, &owner, &victim, PASSWORD).await?.status(),
        StatusCode::OK
    );

    let audit = AuditServiceClient::connect(stack.audit.url()).await?;
    aia_testkit::eventually(Duration::from_secs(10), || {
        let mut audit = audit.clone();
        async move {
            let events = audit
                .query(QueryRequest {
                    event_type: "auth.lockout".into(),
                    ..Default::default()
                })
                .await?
                .into_inner()
                .events;
            Ok((events.len() == 1).then_some(()))
        }
    })
    .await?;
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_email_locks_exactly_like_a_real_one_and_an_admin_unlocks() -> anyhow::Result<()>
{
    let stack = Stack::start_with(&[("LOGIN_BACKOFF_AFTER", "100".into())]).await?;
    let real = email();
    register(&stack, &real).await?;
    let ghost = email();
    let attacker = from_ip(2)?;
    let mut answers = Vec::new();
    for target in [&real, &ghost] {
        let mut statuses = Vec::new();
        for _ in 0..11 {
            statuses.push(
                login(&stack, &attacker, target, "guess guess guess")
                    .await?
                    .status(),
            );
        }
        answers.push(statuses);
    }
    assert_eq!(
        answers[0], answers[1],
        "the lockout tells real accounts apart"
    );
    assert_eq!(answers[0][10], StatusCode::TOO_MANY_REQUESTS);

    let admin = admin(&stack).await?;
    let me: serde_json::Value = login(&stack, &from_ip(1)?, &real, PASSWORD)
        .await?
        .json()
        .await
        .unwrap_or_default();
    assert!(me.get("access_token").is_none(), "still locked");
    let user_id = {
        let mut conn = stack.db.connect().await?;
        #[derive(diesel::QueryableByName)]
        struct Id {
            #[diesel(sql_type = diesel::sql_types::Uuid)]
            id: uuid::Uuid,
        }
        use diesel_async::RunQueryDsl;
        diesel::sql_query("SELECT id FROM auth.users WHERE email = $1")
            .bind::<diesel::sql_types::Text, _>(&real)
            .get_result::<Id>(&mut conn)
            .await?
            .id
    };
    let unlock = stack
        .http()
        .post(stack.url(&format!("/v1/admin/users/{user_id}/unlock")))
        .bearer_auth(field(&admin, "access_token"))
        .send()
        .await?;
    assert_eq!(unlock.status(), StatusCode::OK);
    assert_eq!(
        login(&stack, &from_ip(3)?, &real, PASSWORD).await?.status(),
        StatusCode::OK
    );
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sprayer_is_stopped_by_its_address_before_it_locks_anyone() -> anyhow::Result<()> {
    let stack = Stack::start_with(&[
        ("LOGIN_BACKOFF_AFTER", "100".into()),
        ("LOGIN_IP_FAILURE_LIMIT", "20".into()),
    ])
    .await?;
    let accounts: Vec<String> = (0..6).map(|_| email()).collect();
    for account in &accounts {
        register(&stack, account).await?;
    }
    let sprayer = from_ip(9)?;
    let mut refused = 0;
    for round in 0..5 {
        for account in &accounts {
            let status = login(&stack, &sprayer, account, &format!("Spring2026!{round}"))
                .await?
                .status();
            if status == StatusCode::TOO_MANY_REQUESTS {
                refused += 1;
            }
        }
    }
    assert_eq!(refused, 30 - 20, "the sprayer got past its limit");
    // No account was locked: their owners log in from elsewhere.
    for account in &accounts {
        assert_eq!(
            login(&stack, &from_ip(1)?, account, PASSWORD)
                .await?
                .status(),
            StatusCode::OK
        );
    }
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sprayer_rotating_through_its_ipv6_network_is_one_address() -> anyhow::Result<()> {
    // One subscriber's /64 holds 2^64 addresses: counted per address, a sprayer
    // would never reach its limit.
    let stack = Stack::start_with(&[
        ("LOGIN_BACKOFF_AFTER", "100".into()),
        ("LOGIN_IP_FAILURE_LIMIT", "3".into()),
        ("TRUSTED_PROXIES", "127.0.0.1/32".into()),
    ])
    .await?;
    let mut statuses = Vec::new();
    for n in 1..=5 {
        let response = stack
            .http()
            .post(stack.url("/v1/auth/login"))
            .header("x-forwarded-for", format!("2001:db8:1:2::{n:x}"))
            .json(&json!({"email": email(), "password": "Spring2026!"}))
            .send()
            .await?;
        statuses.push(response.status().as_u16());
    }
    assert_eq!(statuses, [401, 401, 401, 429, 429]);
    // Another network is another address.
    let elsewhere = stack
        .http()
        .post(stack.url("/v1/auth/login"))
        .header("x-forwarded-for", "2001:db8:1:3::1")
        .json(&json!({"email": email(), "password": "Spring2026!"}))
        .send()
        .await?;
    assert_eq!(elsewhere.status(), StatusCode::UNAUTHORIZED);
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failures_from_one_address_back_off() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let victim = email();
    register(&stack, &victim).await?;
    let attacker = from_ip(4)?;
    for _ in 0..3 {
        assert_eq!(
            login(&stack, &attacker, &victim, "guess guess guess")
                .await?
                .status(),
            StatusCode::UNAUTHORIZED
        );
    }
    let too_soon = login(&stack, &attacker, &victim, "guess guess guess").await?;
    assert_eq!(too_soon.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(too_soon.headers().contains_key("retry-after"));
    // Another address is not slowed down by it.
    assert_eq!(
        login(&stack, &from_ip(5)?, &victim, PASSWORD)
            .await?
            .status(),
        StatusCode::OK
    );
    stack.stop().await;
    Ok(())
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_users_and_wrong_passwords_take_the_same_time() -> anyhow::Result<()> {
    let stack = Stack::start_with(&[("LOGIN_IP_FAILURE_LIMIT", "1000".into())]).await?;
    let known: Vec<String> = (0..30).map(|_| email()).collect();
    for account in &known {
        register(&stack, account).await?;
    }
    let client = from_ip(6)?;
    // Warm up connections and caches.
    login(&stack, &client, &email(), "warm up warm up").await?;
    let (mut unknown_times, mut wrong_times) = (Vec::new(), Vec::new());
    // Interleaved, and alternating which goes first, so that drift and order effects
    // on a shared machine hit both sides alike.
    for (i, account) in known.iter().enumerate() {
        let unknown_email = email();
        let order: [(&str, bool); 2] = if i % 2 == 0 {
            [(unknown_email.as_str(), true), (account, false)]
        } else {
            [(account, false), (unknown_email.as_str(), true)]
        };
        for (target, is_unknown) in order {
            let started = Instant::now();
            let response = login(&stack, &client, target, "wrong password here").await?;
            let elapsed = started.elapsed();
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
            if is_unknown {
                unknown_times.push(elapsed)
            } else {
                wrong_times.push(elapsed)
            }
        }
    }
    let (unknown, wrong) = (median(unknown_times), median(wrong_times));
    let ratio = unknown.as_secs_f64() / wrong.as_secs_f64();
    assert!(
        (0.9..=1.1).contains(&ratio),
        "unknown {unknown:?} vs wrong password {wrong:?}"
    );
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_failures_are_all_counted_and_lock_once() -> anyhow::Result<()> {
    let stack = Stack::start_with(&[("LOGIN_BACKOFF_AFTER", "100".into())]).await?;
    let victim = email();
    register(&stack, &victim).await?;
    let attacker = from_ip(2)?;
    let attempts = (0..12).map(|_| login(&stack, &attacker, &victim, "guess guess guess"));
    let statuses: Vec<StatusCode> = futures::future::join_all(attempts)
        .await
        .into_iter()
        .map(|r| r.map(|r| r.status()))
        .collect::<anyhow::Result<_>>()?;
    assert!(
        statuses
            .iter()
            .all(|s| matches!(*s, StatusCode::UNAUTHORIZED | StatusCode::TOO_MANY_REQUESTS)),
        "{statuses:?}"
    );
    // However the twelve interleaved, ten or more were counted: the account is locked.
    assert_eq!(
        login(&stack, &from_ip(3)?, &victim, PASSWORD)
            .await?
            .status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    let audit = AuditServiceClient::connect(stack.audit.url()).await?;
    aia_testkit::eventually(Duration::from_secs(10), || {
        let mut audit = audit.clone();
        async move {
            let events = audit
                .query(QueryRequest {
                    event_type: "auth.lockout".into(),
                    ..Default::default()
                })
                .await?
                .into_inner()
                .events;
            Ok((!events.is_empty()).then_some(events.len()))
        }
    })
    .await
    .map(|n| assert_eq!(n, 1, "one lock, one event"))?;
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_open_lets_logins_through_a_redis_outage_whole() -> anyhow::Result<()> {
    // LOCKOUT_FAIL_OPEN=true lets a login past the throttle's check while Redis is
    // down; the bookkeeping after it (a success recorded, a failure counted) must not
    // then refuse it.
    let mut stack = Stack::start().await?;
    let auth = stack
        .add_auth_with(&[
            ("REDIS_URL", "redis://127.0.0.1:1".to_owned()),
            ("LOCKOUT_FAIL_OPEN", "true".to_owned()),
        ])
        .await?;
    let gateway = stack
        .add_gateway_with(&[("AUTH_GRPC_URL", auth.url())])
        .await?;
    let who = email();
    register(&stack, &who).await?;
    let http = reqwest::Client::new();
    let login = |password: &'static str| {
        http.post(format!("{}/v1/auth/login", gateway.url()))
            .json(&json!({"email": who, "password": password}))
            .send()
    };
    assert_eq!(login(PASSWORD).await?.status(), StatusCode::OK);
    assert_eq!(
        login("not the password at all").await?.status(),
        StatusCode::UNAUTHORIZED
    );
    stack.stop().await;
    Ok(())
}

/// A client that keeps no cookies makes a new device at every completed login; the
/// account keeps only its 32 most recently used devices (Redis stays bounded), and
/// the newest still counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_keeps_only_its_most_recent_devices() -> anyhow::Result<()> {
    let mut settings = crate::helpers::cheap_hashing();
    settings.push(("LOGIN_BACKOFF_AFTER", "100".to_owned()));
    let stack = Stack::start_with(&settings).await?;
    let who = email();
    register(&stack, &who).await?;
    let mut newest = String::new();
    for _ in 0..40 {
        let answer = login(&stack, stack.http(), &who, PASSWORD).await?;
        assert_eq!(answer.status(), StatusCode::OK);
        newest = crate::helpers::device_cookie(&answer)
            .ok_or_else(|| anyhow::anyhow!("no device cookie"))?
            .0;
    }
    let mut redis = redis::Client::open(aia_testkit::redis_url())?
        .get_multiplexed_async_connection()
        .await?;
    let devices: u64 = redis::cmd("ZCARD")
        .arg(format!("{}lo:{{known_devices:{who}}}", stack.redis_prefix))
        .query_async(&mut redis)
        .await?;
    assert_eq!(devices, 32);
    // The newest device is one of them: locked by a stranger, the account still lets
    // it in from an address it never used.
    for _ in 0..10 {
        let answer = login(&stack, &from_ip(51)?, &who, "guess guess guess").await?;
        assert_eq!(answer.status(), StatusCode::UNAUTHORIZED);
    }
    let elsewhere = from_ip(52)?;
    let refused = login(&stack, &elsewhere, &who, PASSWORD).await?;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let answer = login_with_device(&elsewhere, &stack, &who, PASSWORD, Some(&newest)).await?;
    assert_eq!(answer.status(), StatusCode::OK);
    stack.stop().await;
    Ok(())
}

/// OWASP's device-cookie lockout: a device spared by the lock stops being spared once
/// as many wrong passwords came from it as lock the account (a thief's device, or a
/// shared computer's, cannot guess past the lock for ever); the owner's usual
/// address still gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_keeps_guessing_is_spared_no_more() -> anyhow::Result<()> {
    let mut settings = crate::helpers::cheap_hashing();
    settings.push(("LOGIN_BACKOFF_AFTER", "100".to_owned()));
    let stack = Stack::start_with(&settings).await?;
    let who = email();
    register(&stack, &who).await?;
    let usual = from_ip(60)?;
    let first = login(&stack, &usual, &who, PASSWORD).await?;
    assert_eq!(first.status(), StatusCode::OK);
    let (device, _) =
        crate::helpers::device_cookie(&first).ok_or_else(|| anyhow::anyhow!("no device cookie"))?;
    let guesser = from_ip(61)?;
    for _ in 0..10 {
        let answer =
            login_with_device(&guesser, &stack, &who, "guess guess guess", Some(&device)).await?;
        assert_eq!(answer.status(), StatusCode::UNAUTHORIZED);
    }
    // Locked, and the device that made the guesses is no longer a known client.
    let answer = login_with_device(&from_ip(62)?, &stack, &who, PASSWORD, Some(&device)).await?;
    assert_eq!(answer.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        login(&stack, &usual, &who, PASSWORD).await?.status(),
        StatusCode::OK
    );
    stack.stop().await;
    Ok(())
}
