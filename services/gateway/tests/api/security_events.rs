//! The audit trail through the gateway: the admins' search and summary, and each
//! user's own security activity (and nobody else's).

use std::time::Duration;

use aia_testkit::{Stack, eventually};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{
    PASSWORD, admin, assert_problem, email, field, from_ip, login, me_status, register, user_id,
};

async fn get(stack: &Stack, token: &str, path: &str) -> anyhow::Result<reqwest::Response> {
    Ok(stack
        .http()
        .get(stack.url(path))
        .bearer_auth(token)
        .send()
        .await?)
}

fn events(page: &Value) -> Vec<&Value> {
    page["events"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_search_and_summarise_the_trail_users_see_only_their_own() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let admin = admin(&stack).await?;
    let admin_token = field(&admin, "access_token").to_owned();
    // Ada logs in, and someone at 127.0.0.7 tries her password; Bob just logs in.
    let ada = email();
    register(&stack, &ada).await?;
    let ada_tokens = login(&stack, &ada).await?;
    let ada_token = field(&ada_tokens, "access_token").to_owned();
    let ada_id = user_id(&stack, &ada_token).await?;
    let attacker = from_ip(7)?;
    for _ in 0..2 {
        let status = attacker
            .post(stack.url("/v1/auth/login"))
            .json(&json!({"email": ada, "password": format!("{PASSWORD} nope")}))
            .send()
            .await?
            .status();
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let bob = email();
    register(&stack, &bob).await?;
    let bob_token = field(&login(&stack, &bob).await?, "access_token").to_owned();
    let bob_id = user_id(&stack, &bob_token).await?;

    // The failures on Ada's account, by type, outcome and IP (the outbox delivers
    // them shortly).
    let query = format!(
        "/v1/admin/security-events?type=auth.login&outcome=failure&ip=127.0.0.7&subject={ada_id}"
    );
    let failures = eventually(Duration::from_secs(10), || {
        let (stack, token, query) = (&stack, &admin_token, &query);
        async move {
            let page: Value = get(stack, token, query).await?.json().await?;
            Ok((events(&page).len() == 2).then_some(page))
        }
    })
    .await?;
    for e in events(&failures) {
        assert_eq!(e["type"], "auth.login");
        assert_eq!(e["outcome"], "failure");
        assert_eq!(e["source_ip"], "127.0.0.7");
        assert_eq!(e["details"]["reason"], "wrong_password");
    }
    // Keyset pages: one at a time, newest first, no overlap.
    let first: Value = get(&stack, &admin_token, &format!("{query}&limit=1"))
        .await?
        .json()
        .await?;
    let cursor = first["next_cursor"].as_str().unwrap_or_default().to_owned();
    assert!(!cursor.is_empty());
    let second: Value = get(
        &stack,
        &admin_token,
        &format!("{query}&limit=1&cursor={cursor}"),
    )
    .await?
    .json()
    .await?;
    let seq = |page: &Value| {
        events(page)
            .first()
            .and_then(|e| e["seq"].as_i64())
            .unwrap_or(0)
    };
    assert!(seq(&second) < seq(&first) && seq(&second) > 0);
    assert!(second["next_cursor"].is_null());
    // Time windows and type prefixes; LIKE wildcards in a prefix are literal.
    let future: Value = get(
        &stack,
        &admin_token,
        "/v1/admin/security-events?since=2999-01-01T00:00:00Z",
    )
    .await?
    .json()
    .await?;
    assert!(events(&future).is_empty());
    let prefixed: Value = get(
        &stack,
        &admin_token,
        "/v1/admin/security-events?type_prefix=auth.",
    )
    .await?
    .json()
    .await?;
    assert!(!events(&prefixed).is_empty());
    assert!(
        events(&prefixed)
            .iter()
            .all(|e| e["type"].as_str().is_some_and(|t| t.starts_with("auth.")))
    );
    for wildcard in ["%25", "auth_login", "_"] {
        let page: Value = get(
            &stack,
            &admin_token,
            &format!("/v1/admin/security-events?type_prefix={wildcard}"),
        )
        .await?
        .json()
        .await?;
        assert!(events(&page).is_empty(), "{wildcard} matched {page}");
    }

    // The summary names Ada's account and the attacker's IP.
    let summary: Value = get(
        &stack,
        &admin_token,
        "/v1/admin/security-events/summary?window=3600&top=5",
    )
    .await?
    .json()
    .await?;
    let has = |list: &str, key: &str, value: &str| {
        summary[list].as_array().is_some_and(|a| {
            a.iter()
                .any(|k| k[key] == value && k["failures"].as_i64().unwrap_or(0) >= 2)
        })
    };
    assert!(has("top_failing_ips", "ip", "127.0.0.7"), "{summary}");
    assert!(has("top_failing_subjects", "subject", &ada_id), "{summary}");
    assert!(
        summary["counts"]
            .as_array()
            .is_some_and(|a| a.iter().any(|c| c["type"] == "auth.login"
                && c["outcome"] == "failure"
                && c["count"].as_i64() >= Some(2))),
        "{summary}"
    );

    // Bad filters are 4xx problems, never a 500.
    for (path, status) in [
        (
            "/v1/admin/security-events?outcome=maybe",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "/v1/admin/security-events?since=yesterday",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "/v1/admin/security-events?limit=501",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "/v1/admin/security-events?cursor=abc",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "/v1/admin/security-events?limit=-1",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "/v1/admin/security-events?colour=red",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "/v1/admin/security-events/summary?window=10",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "/v1/admin/security-events/summary?top=1000",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ] {
        assert_problem(get(&stack, &admin_token, path).await?, status).await?;
    }
    // Only admins search; nobody anonymously.
    for path in [
        "/v1/admin/security-events",
        "/v1/admin/security-events/summary",
    ] {
        assert_problem(get(&stack, &ada_token, path).await?, StatusCode::FORBIDDEN).await?;
        let anonymous = stack.http().get(stack.url(path)).send().await?;
        assert_problem(anonymous, StatusCode::UNAUTHORIZED).await?;
    }

    // An admin, from 127.0.0.9, lifts any lockout on Ada's account.
    let unlocked = from_ip(9)?
        .post(stack.url(&format!("/v1/admin/users/{ada_id}/unlock")))
        .bearer_auth(&admin_token)
        .send()
        .await?;
    assert_eq!(unlocked.status(), StatusCode::OK);
    // And sets her roles (the same ones: her sessions end all the same, a retry's
    // way of finishing the job); she logs in again.
    let roles = from_ip(9)?
        .put(stack.url(&format!("/v1/admin/users/{ada_id}/roles")))
        .bearer_auth(&admin_token)
        .json(&json!({"roles": []}))
        .send()
        .await?;
    assert_eq!(roles.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        me_status(&stack, &ada_token).await?,
        StatusCode::UNAUTHORIZED
    );
    let ada_token = field(&login(&stack, &ada).await?, "access_token").to_owned();

    // Ada sees her login, the failed attempts on her account (with the address they
    // came from) and that an administrator acted on it (without who or where from),
    // and nothing of Bob's.
    let mine: Value = eventually(Duration::from_secs(10), || {
        let (stack, token) = (&stack, &ada_token);
        async move {
            let page: Value = get(stack, token, "/v1/auth/me/security-events")
                .await?
                .json()
                .await?;
            let failures = events(&page)
                .iter()
                .filter(|e| e["type"] == "auth.login" && e["outcome"] == "failure")
                .count();
            let by_admin = ["admin.user_unlocked", "session.revoke_all"]
                .iter()
                .all(|kind| events(&page).iter().any(|e| e["type"] == *kind));
            Ok((failures == 2 && by_admin).then_some(page))
        }
    })
    .await?;
    for e in events(&mine) {
        if e["type"] == "auth.login" && e["outcome"] == "failure" {
            assert_eq!(e["source_ip"], "127.0.0.7", "{e}");
        }
        if e["type"] == "admin.user_unlocked" || e["type"] == "session.revoke_all" {
            assert_eq!(e["by_administrator"], true, "{e}");
            for hidden in ["actor", "source_ip", "user_agent", "request_id"] {
                assert!(e[hidden].is_null(), "{hidden} shown to the user: {e}");
            }
        }
    }
    let admin_id = user_id(&stack, &admin_token).await?;
    assert!(!mine.to_string().contains(&admin_id), "{mine}");
    assert!(!mine.to_string().contains("127.0.0.9"), "{mine}");
    assert!(
        events(&mine)
            .iter()
            .any(|e| e["type"] == "auth.login" && e["outcome"] == "success")
    );
    for e in events(&mine) {
        assert!(
            e["actor"] == ada_id.as_str() || e["subject"] == ada_id.as_str(),
            "not Ada's: {e}"
        );
        assert!(e["actor"] != bob_id.as_str() && e["subject"] != bob_id.as_str());
    }
    let anonymous = stack
        .http()
        .get(stack.url("/v1/auth/me/security-events"))
        .send()
        .await?;
    assert_problem(anonymous, StatusCode::UNAUTHORIZED).await?;
    stack.stop().await;
    Ok(())
}

/// Reads the stream until an event of `kind` arrives; its `id` (seq).
async fn next_event(
    body: &mut (impl futures::Stream<Item = reqwest::Result<actix_web::web::Bytes>> + Unpin),
    seen: &mut String,
    kind: &str,
) -> anyhow::Result<i64> {
    use futures::StreamExt;
    let marker = format!("event: {kind}\n");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(at) = seen.find(&marker) {
            let block_start = seen[..at].rfind("id: ").unwrap_or(0);
            let id: i64 = seen[block_start + 4..at].trim().parse()?;
            let data_end = seen[at..].find("\n\n").map_or(seen.len(), |e| at + e + 2);
            seen.drain(..data_end);
            return Ok(id);
        }
        let chunk = tokio::time::timeout_at(deadline, body.next())
            .await
            .map_err(|_| anyhow::anyhow!("no {kind} event within 10 s; got {seen:?}"))?;
        match chunk {
            Some(bytes) => seen.push_str(&String::from_utf8_lossy(&bytes?)),
            None => anyhow::bail!("the stream ended"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_watch_new_events_live_and_resume_where_they_left() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let admin = admin(&stack).await?;
    let token = field(&admin, "access_token").to_owned();
    let open = |last: Option<i64>| {
        let mut request = stack
            .http()
            .get(stack.url("/v1/admin/security-events/stream?type=auth.login"))
            .bearer_auth(&token);
        if let Some(seq) = last {
            request = request.header("last-event-id", seq.to_string());
        }
        request.send()
    };
    let response = open(None).await?;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream")),
        "{:?}",
        response.headers()
    );
    let mut body = response.bytes_stream();
    let mut seen = String::new();
    // Only events from now on: a login now shows up.
    let ada = email();
    register(&stack, &ada).await?;
    login(&stack, &ada).await?;
    let first = next_event(&mut body, &mut seen, "auth.login").await?;
    assert!(!seen.contains("auth.register"), "filtered out: {seen}");
    drop(body);

    // Two more logins while nobody watches; a client resuming from `first` gets both.
    login(&stack, &ada).await?;
    login(&stack, &ada).await?;
    let mut body = open(Some(first)).await?.bytes_stream();
    let mut seen = String::new();
    let second = next_event(&mut body, &mut seen, "auth.login").await?;
    let third = next_event(&mut body, &mut seen, "auth.login").await?;
    assert!(first < second && second < third, "{first} {second} {third}");
    drop(body);

    // Users cannot watch; bad resumption points are refused.
    let user = field(&login(&stack, &ada).await?, "access_token").to_owned();
    let refused = get(&stack, &user, "/v1/admin/security-events/stream").await?;
    assert_problem(refused, StatusCode::FORBIDDEN).await?;
    let bad = stack
        .http()
        .get(stack.url("/v1/admin/security-events/stream"))
        .bearer_auth(&token)
        .header("last-event-id", "yesterday")
        .send()
        .await?;
    assert_problem(bad, StatusCode::UNPROCESSABLE_ENTITY).await?;
    // An id past the newest event would be a stream silent until the trail caught up.
    let ahead = stack
        .http()
        .get(stack.url("/v1/admin/security-events/stream"))
        .bearer_auth(&token)
        .header("last-event-id", "1000000000000")
        .send()
        .await?;
    assert_problem(ahead, StatusCode::UNPROCESSABLE_ENTITY).await?;
    stack.stop().await;
    Ok(())
}

/// A stream lives no longer than its token: logging out (which revokes the session)
/// ends an admin's open stream, and nginx is told not to buffer it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_ends_when_its_session_is_revoked() -> anyhow::Result<()> {
    use futures::StreamExt;
    let stack = Stack::start().await?;
    let admin = admin(&stack).await?;
    let token = field(&admin, "access_token").to_owned();
    let response = get(&stack, &token, "/v1/admin/security-events/stream").await?;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response
            .headers()
            .get("x-accel-buffering")
            .and_then(|v| v.to_str().ok()),
        Some("no")
    );
    let mut body = response.bytes_stream();
    // Still open after a re-check: a keep-alive arrives (after any events the
    // admin's own login produced).
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match body.next().await {
                Some(Ok(bytes)) if String::from_utf8_lossy(&bytes).contains(": keep-alive") => {
                    return Ok(());
                }
                Some(Ok(_)) => {}
                other => anyhow::bail!("the stream ended early: {other:?}"),
            }
        }
    })
    .await
    .map_err(|_| anyhow::anyhow!("no keep-alive within 10 s"))??;
    let logout = stack
        .http()
        .post(stack.url("/v1/auth/logout-all"))
        .bearer_auth(&token)
        .send()
        .await?;
    assert!(logout.status().is_success(), "{}", logout.status());
    // Ends within a re-check; whatever it still sends before, it sends no event
    // after the end.
    tokio::time::timeout(Duration::from_secs(12), async {
        while let Some(chunk) = body.next().await {
            chunk?;
        }
        anyhow::Ok(())
    })
    .await
    .map_err(|_| anyhow::anyhow!("the stream outlived its session"))??;
    stack.stop().await;
    Ok(())
}

/// An administrator holds at most four streams open at once (each costs a poller in
/// audit): the fifth gets 429 until one of the four ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_holds_a_bounded_number_of_streams() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let admin = admin(&stack).await?;
    let token = field(&admin, "access_token").to_owned();
    let open = || {
        stack
            .http()
            .get(stack.url("/v1/admin/security-events/stream"))
            .bearer_auth(&token)
            .send()
    };
    let mut held = Vec::new();
    for _ in 0..4 {
        let response = open().await?;
        assert_eq!(response.status(), StatusCode::OK);
        held.push(response);
    }
    let refused = assert_problem(open().await?, StatusCode::TOO_MANY_REQUESTS).await?;
    assert!(refused.to_string().contains("streams"), "{refused}");
    // Another administrator is not held back by the first one's streams.
    let other = crate::helpers::admin(&stack).await?;
    let theirs = stack
        .http()
        .get(stack.url("/v1/admin/security-events/stream"))
        .bearer_auth(field(&other, "access_token"))
        .send()
        .await?;
    assert_eq!(theirs.status(), StatusCode::OK);
    // One closed by its client: its place comes back (at the latest when the
    // gateway's next keep-alive, every 5 s, finds the connection gone).
    drop(held.pop());
    eventually(Duration::from_secs(20), || async {
        let response = open().await?;
        Ok((response.status() == StatusCode::OK).then_some(response))
    })
    .await?;
    stack.stop().await;
    Ok(())
}
