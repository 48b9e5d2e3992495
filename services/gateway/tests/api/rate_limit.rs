//! Rate limiting: GCRA in Redis per route class and key, 429 with the draft
//! RateLimit fields, and an in-process fallback when Redis is slow or down that
//! gives way to Redis again by itself.

use aia_testkit::Stack;
use aia_testkit::proxy::TcpProxy;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{
    assert_problem, device_cookie, email, field, from_ip, login_with_device, register, signed_in,
};

async fn login(
    client: &reqwest::Client,
    stack: &Stack,
    email: &str,
) -> anyhow::Result<reqwest::Response> {
    Ok(client
        .post(stack.url("/v1/auth/login"))
        .json(&json!({"email": email, "password": "not the password at all"}))
        .send()
        .await?)
}

async fn me(stack: &Stack, token: &str) -> anyhow::Result<reqwest::Response> {
    Ok(stack
        .http()
        .get(stack.url("/v1/auth/me"))
        .bearer_auth(token)
        .send()
        .await?)
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> &'a str {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_are_limited_per_address_with_the_draft_fields() -> anyhow::Result<()> {
    let stack = Stack::start_with(&[("RATE_LIMIT_LOGIN", "3/60".into())]).await?;
    let client = from_ip(1)?;
    for remaining in [2, 1, 0] {
        let response = login(&client, &stack, &email()).await?;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(header(&response, "ratelimit-policy"), "\"login\";q=3;w=60");
        let fields = header(&response, "ratelimit");
        assert!(
            fields.starts_with(&format!("\"login\";r={remaining};t=")),
            "{fields}"
        );
    }
    let limited = login(&client, &stack, &email()).await?;
    let retry: u64 = header(&limited, "retry-after").parse()?;
    assert!((1..=20).contains(&retry), "one login per 20 s: {retry}");
    assert_eq!(header(&limited, "ratelimit-policy"), "\"login\";q=3;w=60");
    assert!(header(&limited, "ratelimit").starts_with("\"login\";r=0;t="));
    assert!(header(&limited, "vary").contains("Origin"));
    assert_eq!(header(&limited, "x-content-type-options"), "nosniff");
    let body = assert_problem(limited, StatusCode::TOO_MANY_REQUESTS).await?;
    assert_eq!(body["type"], "urn:aia:problem:too-many-requests");

    // The MFA step shares the login budget of the address.
    let step = client
        .post(stack.url("/v1/auth/login/mfa"))
        .json(&json!({"challenge": "x", "code": "123456"}))
        .send()
        .await?;
    assert_eq!(step.status(), StatusCode::TOO_MANY_REQUESTS);
    // Another address has its own budget; health and keys are never limited.
    let other = login(&from_ip(2)?, &stack, &email()).await?;
    assert_eq!(other.status(), StatusCode::UNAUTHORIZED);
    for path in ["/healthz", "/.well-known/jwks.json"] {
        let response = client.get(stack.url(path)).send().await?;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert!(response.headers().get("ratelimit").is_none());
    }
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_path_spelled_otherwise_is_limited_as_a_login() -> anyhow::Result<()> {
    let stack = Stack::start_with(&[("RATE_LIMIT_LOGIN", "2/60".into())]).await?;
    let client = from_ip(3)?;
    // Spellings the router takes for the login route (it decodes escapes of
    // unreserved characters before matching): each must spend the same budget.
    let spellings = ["/v1/auth/%6cogin", "/v1/auth/logi%6E", "/v1/%61uth/login"];
    for path in &spellings[..2] {
        let response = client
            .post(stack.url(path))
            .json(&json!({"email": email(), "password": "not the password at all"}))
            .send()
            .await?;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(
            header(&response, "ratelimit-policy"),
            "\"login\";q=2;w=60",
            "{path}"
        );
    }
    for path in ["/v1/auth/login", spellings[2]] {
        let response = client
            .post(stack.url(path))
            .json(&json!({"email": email(), "password": "not the password at all"}))
            .send()
            .await?;
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS, "{path}");
    }
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_clients_are_limited_by_their_64() -> anyhow::Result<()> {
    // Loopback is a trusted proxy here, so X-Forwarded-For names the client.
    let stack = Stack::start_with(&[
        ("RATE_LIMIT_LOGIN", "2/60".into()),
        ("TRUSTED_PROXIES", "127.0.0.1/32".into()),
    ])
    .await?;
    let login_from = |ip: &'static str| {
        stack
            .http()
            .post(stack.url("/v1/auth/login"))
            .header("x-forwarded-for", ip)
            .json(&json!({"email": email(), "password": "not the password at all"}))
            .send()
    };
    // Three addresses of one /64 share its budget of two.
    for ip in ["2001:db8:1:2::1", "2001:db8:1:2::2"] {
        assert_eq!(
            login_from(ip).await?.status(),
            StatusCode::UNAUTHORIZED,
            "{ip}"
        );
    }
    let third = login_from("2001:db8:1:2:ffff::3").await?;
    assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
    // The next /64 has its own.
    let neighbour = login_from("2001:db8:1:3::1").await?;
    assert_eq!(neighbour.status(), StatusCode::UNAUTHORIZED);
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_account_is_limited_whatever_the_address() -> anyhow::Result<()> {
    let stack = Stack::start_with(&[("RATE_LIMIT_LOGIN_ACCOUNT", "2/60".into())]).await?;
    let victim = email();
    for n in 1..=2 {
        let response = login(&from_ip(n)?, &stack, &victim).await?;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    // A third address, the same account (in another case): limited.
    let limited = login(&from_ip(3)?, &stack, &victim.to_uppercase()).await?;
    assert_eq!(
        header(&limited, "ratelimit-policy"),
        "\"login\";q=100000;w=60, \"login-account\";q=2;w=60"
    );
    assert!(header(&limited, "ratelimit").contains("\"login-account\";r=0;t="));
    assert_problem(limited, StatusCode::TOO_MANY_REQUESTS).await?;
    // Other accounts are not affected.
    let other = login(&from_ip(3)?, &stack, &email()).await?;
    assert_eq!(other.status(), StatusCode::UNAUTHORIZED);
    // Redis holds a hash of the account, not the address.
    let mut redis = redis::Client::open(aia_testkit::redis_url())?
        .get_multiplexed_async_connection()
        .await?;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}rl:*", stack.redis_prefix))
        .query_async(&mut redis)
        .await?;
    assert!(!keys.is_empty());
    assert!(keys.iter().all(|k| !k.contains('@')), "{keys:?}");
    stack.stop().await;
    Ok(())
}

/// OWASP's device cookies: a stranger who spends an account's guesses keeps out the
/// browsers that never proved its password, not its owner's, whose device cookie
/// spends from a bucket of its own. The cookie counts for its account only, altered
/// it is no cookie, and its own bucket limits as the account's does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_spending_an_accounts_guesses_does_not_keep_its_owner_out() -> anyhow::Result<()>
{
    let stack = Stack::start_with(&[("RATE_LIMIT_LOGIN_ACCOUNT", "3/60".into())]).await?;
    let (victim, other) = (email(), email());
    register(&stack, &victim).await?;
    register(&stack, &other).await?;
    let owner = from_ip(20)?;
    let right = crate::helpers::PASSWORD;

    // The owner's first login completes: it gets a device cookie.
    let first = login_with_device(&owner, &stack, &victim, right, None).await?;
    assert_eq!(first.status(), StatusCode::OK);
    let (device, attributes) =
        device_cookie(&first).ok_or_else(|| anyhow::anyhow!("no device cookie"))?;
    for attribute in [
        "HttpOnly",
        "Secure",
        "SameSite=Strict",
        "Path=/",
        "Max-Age=15552000",
    ] {
        assert!(attributes.contains(attribute), "{attributes}");
    }
    // A wrong password proves nothing: no cookie.
    let wrong = login(&from_ip(21)?, &stack, &victim).await?;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert!(device_cookie(&wrong).is_none());
    // A stranger spends the rest of the account's guesses.
    assert_eq!(
        login(&from_ip(22)?, &stack, &victim).await?.status(),
        StatusCode::UNAUTHORIZED
    );
    let stranger = login(&from_ip(23)?, &stack, &victim).await?;
    assert_problem(stranger, StatusCode::TOO_MANY_REQUESTS).await?;
    // A browser that never logged in is kept out, the right password or not ...
    let fresh = login_with_device(&owner, &stack, &victim, right, None).await?;
    assert_problem(fresh, StatusCode::TOO_MANY_REQUESTS).await?;
    // ... and so is an altered cookie, and this cookie at another spent account.
    let mut altered = device.clone();
    let at = altered.len() - 5;
    let flipped = if &altered[at..=at] == "A" { "B" } else { "A" };
    altered.replace_range(at..=at, flipped);
    let answer = login_with_device(&owner, &stack, &victim, right, Some(&altered)).await?;
    assert_problem(answer, StatusCode::TOO_MANY_REQUESTS).await?;
    for n in 24..=26 {
        login(&from_ip(n)?, &stack, &other).await?;
    }
    let answer = login_with_device(&owner, &stack, &other, right, Some(&device)).await?;
    assert_problem(answer, StatusCode::TOO_MANY_REQUESTS).await?;

    // The owner's browser gets in, and its cookie is renewed (the same device: its
    // bucket goes on).
    let back = login_with_device(&owner, &stack, &victim, right, Some(&device)).await?;
    assert_eq!(back.status(), StatusCode::OK);
    let (device, _) = device_cookie(&back).ok_or_else(|| anyhow::anyhow!("not renewed"))?;
    // Its own bucket: two more guesses, then 429.
    for _ in 0..2 {
        let answer = login_with_device(
            &owner,
            &stack,
            &victim,
            "not the password at all",
            Some(&device),
        )
        .await?;
        assert_eq!(answer.status(), StatusCode::UNAUTHORIZED);
    }
    let answer = login_with_device(&owner, &stack, &victim, right, Some(&device)).await?;
    assert_problem(answer, StatusCode::TOO_MANY_REQUESTS).await?;
    stack.stop().await;
    Ok(())
}

/// A token its owner revoked (a thief's copy, replayed until it expires) spends its
/// address's quota, not the owner's: the owner's own session is not held at 429.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_does_not_spend_its_owners_quota() -> anyhow::Result<()> {
    let stack = Stack::start_with(&[("RATE_LIMIT_API", "5/60".into())]).await?;
    let email = email();
    register(&stack, &email).await?;
    let stolen = field(
        &crate::helpers::login(&stack, &email).await?,
        "access_token",
    )
    .to_owned();
    let own = field(
        &crate::helpers::login(&stack, &email).await?,
        "access_token",
    )
    .to_owned();
    let logout = stack
        .http()
        .post(stack.url("/v1/auth/logout"))
        .bearer_auth(&stolen)
        .send()
        .await?;
    assert!(logout.status().is_success(), "{}", logout.status());
    let thief = from_ip(9)?;
    for n in 0..8 {
        let status = thief
            .get(stack.url("/v1/auth/me"))
            .bearer_auth(&stolen)
            .send()
            .await?
            .status();
        assert!(
            status == StatusCode::UNAUTHORIZED || status == StatusCode::TOO_MANY_REQUESTS,
            "replay {n}: {status}"
        );
    }
    assert_eq!(me(&stack, &own).await?.status(), StatusCode::OK);
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_is_limited_per_user_not_per_address() -> anyhow::Result<()> {
    let stack = Stack::start_with(&[("RATE_LIMIT_API", "3/60".into())]).await?;
    let first = signed_in(&stack).await?;
    let second = signed_in(&stack).await?;
    let token = field(&first, "access_token");
    for _ in 0..3 {
        assert_eq!(me(&stack, token).await?.status(), StatusCode::OK);
    }
    let limited = me(&stack, token).await?;
    assert_eq!(header(&limited, "ratelimit-policy"), "\"api\";q=3;w=60");
    assert_problem(limited, StatusCode::TOO_MANY_REQUESTS).await?;
    // The other user, from the same address, is not limited.
    assert_eq!(
        me(&stack, field(&second, "access_token")).await?.status(),
        StatusCode::OK
    );
    // Forged tokens do not get a bucket of their own: they count on the address.
    for n in 0..4 {
        let forged = format!("{token}x{n}");
        let response = from_ip(9)?
            .get(stack.url("/v1/auth/me"))
            .bearer_auth(&forged)
            .send()
            .await?;
        let expected = if n < 3 {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::TOO_MANY_REQUESTS
        };
        assert_eq!(response.status(), expected, "forged token {n}");
    }
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_the_limit_holds_in_process_and_redis_takes_over_again() -> anyhow::Result<()>
{
    let redis: std::net::SocketAddr = "127.0.0.1:6379".parse()?;
    let proxy = TcpProxy::start(redis).await?;
    // A quota that does not refill within the test (3 per 10 minutes), a budget a
    // loaded test run does not overrun once Redis is back, and one worker: each
    // worker has its own Redis connection, and a second worker whose connection the
    // outage broke finds out on its first decision after it (which then goes
    // in-process, where the first user's bucket was never spent, for the one-second
    // back-off), whichever worker the wait below happened to reach.
    let stack = Stack::start_with(&[
        ("GATEWAY_WORKERS", "1".into()),
        ("RATE_LIMIT_API", "3/600".into()),
        ("RATE_LIMIT_FAIL_CLOSED", "register".into()),
        ("RATE_LIMIT_REDIS_BUDGET_MS", "400".into()),
        ("RATE_LIMIT_REDIS_URL", format!("redis://{}", proxy.addr)),
    ])
    .await?;
    let users: Vec<Value> = vec![
        signed_in(&stack).await?,
        signed_in(&stack).await?,
        signed_in(&stack).await?,
    ];
    let token = |i: usize| field(&users[i], "access_token").to_owned();
    // Redis decides: the first user spends their budget.
    for _ in 0..3 {
        assert_eq!(me(&stack, &token(0)).await?.status(), StatusCode::OK);
    }
    assert_eq!(
        me(&stack, &token(0)).await?.status(),
        StatusCode::TOO_MANY_REQUESTS
    );

    // Redis hangs (every command waits): each decision gives up after the budget
    // and the in-process limiter decides, with the same quota.
    proxy.pause();
    for _ in 0..3 {
        assert_eq!(me(&stack, &token(1)).await?.status(), StatusCode::OK);
    }
    assert_eq!(
        me(&stack, &token(1)).await?.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // Redis refuses connections: the same.
    proxy.refuse();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(
        me(&stack, &token(1)).await?.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // A class configured to fail closed answers 503 meanwhile.
    let register = stack
        .http()
        .post(stack.url("/v1/auth/register"))
        .json(&json!({"email": email(), "password": "correct horse battery staple"}))
        .send()
        .await?;
    assert_problem(register, StatusCode::SERVICE_UNAVAILABLE).await?;
    let metrics = crate::helpers::metrics(&stack).await?;
    assert!(
        metrics.contains("gateway_rate_limit_fallback_total"),
        "{metrics}"
    );

    // Redis is back: after its back-off it decides again. The second user's budget
    // was spent in-process only, so Redis lets them through.
    proxy.resume();
    crate::helpers::eventually_status(&stack, &token(1), StatusCode::OK).await?;
    assert_eq!(
        me(&stack, &token(0)).await?.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "the first user's Redis bucket is still spent"
    );
    stack.stop().await;
    Ok(())
}

/// One decision over the time budget is taken in-process, but Redis decides the next
/// request again: under load the gateway's own queueing counts against the budget, and
/// one late answer must not switch Redis off for a second (it backs off only after
/// several late answers in a row, or an error).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_late_answer_from_redis_does_not_switch_redis_off() -> anyhow::Result<()> {
    let redis: std::net::SocketAddr = "127.0.0.1:6379".parse()?;
    let proxy = TcpProxy::start(redis).await?;
    // One worker, so one Redis connection (each worker has its own), made and used by
    // the sign-in before the pause; a budget a busy test machine does not miss when
    // nothing is paused, and under redis-rs's own response timeout (500 ms), which
    // would otherwise report the paused command as an error.
    let stack = Stack::start_with(&[
        ("RATE_LIMIT_API", "3/60".into()),
        ("RATE_LIMIT_REDIS_BUDGET_MS", "200".into()),
        ("RATE_LIMIT_REDIS_URL", format!("redis://{}", proxy.addr)),
        ("GATEWAY_WORKERS", "1".into()),
    ])
    .await?;
    let user = signed_in(&stack).await?;
    let token = field(&user, "access_token").to_owned();
    assert_eq!(me(&stack, &token).await?.status(), StatusCode::OK); // Redis: 1 of 3
    proxy.pause();
    // Late: decided in-process (1 of 3 there); the command waits in the proxy.
    assert_eq!(me(&stack, &token).await?.status(), StatusCode::OK);
    proxy.resume();
    // The late command reached Redis after all (2 of 3 there). Redis decides at once:
    // one more, then 429. Had the gateway backed off, the in-process limiter would
    // have let two more through.
    assert_eq!(me(&stack, &token).await?.status(), StatusCode::OK);
    assert_eq!(
        me(&stack, &token).await?.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    stack.stop().await;
    Ok(())
}

/// The sum of the gateway's fallback counters.
async fn fallbacks(stack: &Stack) -> anyhow::Result<f64> {
    Ok(crate::helpers::metrics(stack)
        .await?
        .lines()
        .filter(|l| l.starts_with("gateway_rate_limit_fallback_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// A Redis whose connection takes longer to set up than a decision's budget is still
/// reached: the attempt outlives the decision that started it, and the decisions
/// that follow carry it on (had each started over, every one would fall back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_slower_than_the_budget_is_still_made() -> anyhow::Result<()> {
    // Every connection through here waits 150 ms before it reaches Redis.
    let slow = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = slow.local_addr()?;
    let redis = aia_testkit::redis_url()
        .trim_start_matches("redis://")
        .trim_end_matches('/')
        .to_owned();
    let forwarder = tokio::spawn(async move {
        while let Ok((mut client, _)) = slow.accept().await {
            let redis = redis.clone();
            tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_millis(150)).await;
                if let Ok(mut upstream) = tokio::net::TcpStream::connect(&redis).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                }
            });
        }
    });
    let stack = Stack::start_with(&[
        ("RATE_LIMIT_REDIS_BUDGET_MS", "50".into()),
        ("RATE_LIMIT_REDIS_URL", format!("redis://{addr}")),
        ("GATEWAY_WORKERS", "1".into()),
    ])
    .await?;
    let user = signed_in(&stack).await?;
    let token = field(&user, "access_token").to_owned();
    let decided_in_redis = aia_testkit::eventually(std::time::Duration::from_secs(10), || async {
        let before = fallbacks(&stack).await?;
        let status = me(&stack, &token).await?.status();
        let after = fallbacks(&stack).await?;
        Ok((status == StatusCode::OK && after == before).then_some(()))
    })
    .await;
    assert!(
        decided_in_redis.is_ok(),
        "every decision fell back: the connection was never made"
    );
    forwarder.abort();
    stack.stop().await;
    Ok(())
}

/// How many times the gateway has asked auth about an API key.
async fn api_key_checks(stack: &Stack) -> anyhow::Result<f64> {
    let text = crate::helpers::metrics(stack).await?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix("gateway_api_key_checks_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0))
}

/// Invented API keys get no bucket of their own: guessing keys from one address is
/// limited like any anonymous traffic, while a real key keeps its own bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guessed_api_keys_share_their_addresss_bucket() -> anyhow::Result<()> {
    let stack = Stack::start_with(&[("RATE_LIMIT_API", "4/60".into())]).await?;
    // A real key, already used from elsewhere.
    let user = crate::helpers::signed_in(&stack).await?;
    let (key, key_id) = crate::helpers::api_key(
        &stack,
        crate::helpers::field(&user, "access_token"),
        &["profile:read"],
    )
    .await?;
    let me = |client: &reqwest::Client, key: &str| {
        client
            .get(stack.url("/v1/auth/me"))
            .header("x-api-key", key)
            .send()
    };
    assert_eq!(me(&crate::helpers::from_ip(24)?, &key).await?.status(), 200);

    let checks = || api_key_checks(&stack);
    let before = checks().await?;
    let guesser = crate::helpers::from_ip(23)?;
    let mut statuses = Vec::new();
    for _ in 0..7 {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let secret: String = uuid::Uuid::new_v4()
            .simple()
            .to_string()
            .chars()
            .chain("abcdefghijk".chars())
            .collect();
        let status = me(&guesser, &format!("aia_{id}_{secret}")).await?.status();
        statuses.push(status.as_u16());
    }
    assert_eq!(statuses, vec![401, 401, 401, 401, 429, 429, 429]);
    // Auth was asked about the four the address could afford, not the refused three.
    assert_eq!(checks().await? - before, 4.0);

    // The real key, used from that same address, has its own bucket.
    assert_eq!(me(&guesser, &key).await?.status(), 200);

    // Revoked, it loses it: it falls back into the address's (spent) bucket, however
    // recently it was known to be good.
    let revoked = stack
        .http()
        .delete(stack.url(&format!("/v1/api-keys/{key_id}")))
        .bearer_auth(crate::helpers::field(&user, "access_token"))
        .send()
        .await?;
    assert!(revoked.status().is_success(), "{}", revoked.status());
    for _ in 0..2 {
        assert_eq!(me(&guesser, &key).await?.status(), 429);
    }
    stack.stop().await;
    Ok(())
}

/// A real key that has spent its bucket is refused before auth is asked: its holder's
/// flood costs auth and its database nothing once limited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_key_past_its_quota_costs_auth_nothing() -> anyhow::Result<()> {
    let stack = Stack::start_with(&[("RATE_LIMIT_API", "3/60".into())]).await?;
    let user = crate::helpers::signed_in(&stack).await?;
    let (key, _) = crate::helpers::api_key(
        &stack,
        crate::helpers::field(&user, "access_token"),
        &["profile:read"],
    )
    .await?;
    let checks = || api_key_checks(&stack);
    let before = checks().await?;
    let client = crate::helpers::from_ip(30)?;
    let mut statuses = Vec::new();
    for _ in 0..23 {
        let response = client
            .get(stack.url("/v1/auth/me"))
            .header("x-api-key", &key)
            .send()
            .await?;
        statuses.push(response.status().as_u16());
    }
    assert_eq!(statuses[..3], [200, 200, 200], "{statuses:?}");
    assert!(statuses[3..].iter().all(|s| *s == 429), "{statuses:?}");
    assert_eq!(
        checks().await? - before,
        3.0,
        "auth was asked past the quota"
    );
    stack.stop().await;
    Ok(())
}

/// A very large quota (the benchmark's) is still decided in Redis: the emission
/// interval and the key's expiry never round down to zero, which Redis would refuse
/// (and the limiter would silently fall back to in-process decisions).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_quotas_are_decided_in_redis() -> anyhow::Result<()> {
    let stack = Stack::start_with(&[("RATE_LIMIT_API", "1000000000/60".into())]).await?;
    let user = signed_in(&stack).await?;
    let token = field(&user, "access_token").to_owned();
    for _ in 0..5 {
        assert_eq!(me(&stack, &token).await?.status(), StatusCode::OK);
    }
    let text = crate::helpers::metrics(&stack).await?;
    assert!(
        !text.contains("gateway_rate_limit_fallback_total"),
        "fell back: {text}"
    );
    assert!(
        text.contains("gateway_rate_limit_decisions_total{policy=\"api\",decision=\"allowed\"}"),
        "{text}"
    );
    stack.stop().await;
    Ok(())
}
