//! Audit events of auth and session go through their transactional outboxes: with the
//! audit service unreachable they wait in Postgres, survive a restart of the service
//! that wrote them, and arrive exactly once when audit is back.

use std::time::Duration;

use aia_testkit::proxy::TcpProxy;
use aia_testkit::{TestDb, eventually};
use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Text};
use diesel_async::RunQueryDsl;
use serde_json::{Value, json};

use crate::helpers::{PASSWORD, email};

#[derive(QueryableByName, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct TypeCount {
    #[diesel(sql_type = Text)]
    event_type: String,
    #[diesel(sql_type = BigInt)]
    n: i64,
}

use aia_testkit::Count;

async fn count(conn: &mut diesel_async::AsyncPgConnection, sql: &str) -> anyhow::Result<i64> {
    Ok(diesel::sql_query(sql).get_result::<Count>(conn).await?.n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_wait_out_an_audit_outage_and_a_restart_then_arrive_once() -> anyhow::Result<()> {
    let db = TestDb::create().await?;
    let prefix = format!("test:{}:", uuid::Uuid::new_v4().simple());
    let env = |extra: &[(&str, String)]| aia_testkit::env(&db, &prefix, extra);
    let mut running = aia_testkit::services();
    let audit = running.audit(env(&[])).await?;
    // Every producer reaches audit through a proxy that can refuse connections.
    let proxy = TcpProxy::start(audit.main).await?;
    let audit_url = format!("http://{}", proxy.addr);
    proxy.refuse();
    let session = running
        .session(env(&[("AUDIT_GRPC_URL", audit_url.clone())]))
        .await?;
    let auth_env = [
        ("AUDIT_GRPC_URL", audit_url.clone()),
        ("SESSION_GRPC_URL", session.url()),
    ];
    let auth = running.auth(env(&auth_env)).await?;
    let gateway = running
        .gateway(env(&[
            ("AUDIT_GRPC_URL", audit_url.clone()),
            ("AUTH_GRPC_URL", auth.url()),
            ("SESSION_GRPC_URL", session.url()),
        ]))
        .await?;

    // A whole flow while audit is unreachable.
    let http = reqwest::Client::new();
    let url = |path: &str| format!("{}{path}", gateway.url());
    let who = email();
    let credentials = json!({"email": who, "password": PASSWORD});
    let status = http
        .post(url("/v1/auth/register"))
        .json(&credentials)
        .send()
        .await?
        .status();
    assert_eq!(status, 202);
    let tokens: Value = http
        .post(url("/v1/auth/login"))
        .json(&credentials)
        .send()
        .await?
        .json()
        .await?;
    let refreshed: Value = http
        .post(url("/v1/auth/refresh"))
        .json(&json!({"refresh_token": tokens["refresh_token"]}))
        .send()
        .await?
        .json()
        .await?;
    let access = refreshed["access_token"].as_str().unwrap_or_default();
    let status = http
        .post(url("/v1/auth/logout"))
        .bearer_auth(access)
        .json(&json!({"refresh_token": refreshed["refresh_token"]}))
        .send()
        .await?
        .status();
    assert!(status.is_success(), "logout: {status}");

    // Nothing reached audit; the events wait in the producers' outboxes.
    let mut conn = db.connect().await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        count(&mut conn, "SELECT count(*) AS n FROM audit.events").await?,
        0
    );
    let waiting_auth = count(&mut conn, "SELECT count(*) AS n FROM auth.audit_outbox").await?;
    let waiting_session =
        count(&mut conn, "SELECT count(*) AS n FROM session.audit_outbox").await?;
    assert!(waiting_auth >= 2, "auth outbox: {waiting_auth}");
    assert!(waiting_session >= 2, "session outbox: {waiting_session}");
    let depth = reqwest::get(auth.admin_url("/metrics"))
        .await?
        .text()
        .await?;
    assert!(
        depth
            .lines()
            .any(|l| l.starts_with("audit_outbox_depth{producer=\"auth\"}") && !l.ends_with(" 0")),
        "{depth}"
    );

    // Auth stops (its relay with it) before delivering, and a new auth takes over.
    running.stop_service("auth").await;
    let _auth = running.auth(env(&auth_env)).await?;
    proxy.resume();

    // Everything arrives, once; the outboxes empty.
    let total = waiting_auth + waiting_session;
    let stored = eventually(Duration::from_secs(20), || {
        let db = &db;
        async move {
            let mut conn = db.connect().await?;
            let stored = count(&mut conn, "SELECT count(*) AS n FROM audit.events").await?;
            let left = count(
                &mut conn,
                "SELECT (SELECT count(*) FROM auth.audit_outbox) + \
                 (SELECT count(*) FROM session.audit_outbox) AS n",
            )
            .await?;
            Ok((stored >= total && left == 0).then_some(stored))
        }
    })
    .await?;
    assert_eq!(stored, total, "every waiting event stored exactly once");
    let mut types: Vec<TypeCount> =
        diesel::sql_query("SELECT event_type, count(*) AS n FROM audit.events GROUP BY event_type")
            .load(&mut conn)
            .await?;
    types.sort();
    for once in [
        "auth.register",
        "auth.login",
        "session.refresh",
        "session.logout",
    ] {
        assert!(
            types.iter().any(|t| t.event_type == once && t.n == 1),
            "{once}: {types:?}"
        );
    }
    drop(conn);
    running.stop().await;
    db.drop_database().await?;
    Ok(())
}

/// The scenario: the audit service itself stopped while 200 logins happen,
/// then started again on its address; every login event is stored exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_logins_while_audit_is_stopped_are_stored_once_after_it_restarts()
-> anyhow::Result<()> {
    let db = TestDb::create().await?;
    let prefix = format!("test:{}:", uuid::Uuid::new_v4().simple());
    // Cheap hashing: this test is about delivery, not argon2.
    let fast = crate::helpers::cheap_hashing();
    let env = |extra: &[(&str, String)]| {
        let mut all = fast.clone();
        all.extend_from_slice(extra);
        aia_testkit::env(&db, &prefix, &all)
    };
    let mut running = aia_testkit::services();
    let audit = running.audit(env(&[])).await?;
    // The producers reach audit through a proxy the test owns: when audit comes back
    // on another port, the proxy follows, and no other test's service can ever take
    // the stopped one's port and receive these events.
    let proxy = aia_testkit::proxy::TcpProxy::start(audit.main).await?;
    let audit_url = format!("http://{}", proxy.addr);
    let session = running
        .session(env(&[("AUDIT_GRPC_URL", audit_url.clone())]))
        .await?;
    let auth = running
        .auth(env(&[
            ("AUDIT_GRPC_URL", audit_url.clone()),
            ("SESSION_GRPC_URL", session.url()),
        ]))
        .await?;
    let gateway = running
        .gateway(env(&[
            ("AUDIT_GRPC_URL", audit_url.clone()),
            ("AUTH_GRPC_URL", auth.url()),
            ("SESSION_GRPC_URL", session.url()),
        ]))
        .await?;
    let http = reqwest::Client::new();
    let who = email();
    let credentials = json!({"email": who, "password": PASSWORD});
    let status = http
        .post(format!("{}/v1/auth/register", gateway.url()))
        .json(&credentials)
        .send()
        .await?
        .status();
    assert_eq!(status, 202);

    running.stop_service("audit").await;
    proxy.refuse();
    let logins = futures::future::join_all((0..200).map(|_| {
        let (http, credentials) = (&http, &credentials);
        let url = format!("{}/v1/auth/login", gateway.url());
        async move {
            http.post(url)
                .json(credentials)
                .send()
                .await
                .map(|r| r.status())
        }
    }))
    .await;
    for status in logins {
        assert_eq!(status?, 200);
    }
    let (stored, waiting) = logins_stored(&db).await?;
    assert_eq!(stored, 0);
    assert!(waiting >= 200, "{waiting} waiting");

    // Audit comes back (on a new port; the proxy follows it).
    let back = running.audit(env(&[])).await?;
    proxy.retarget(back.main);
    proxy.resume();
    let stored = eventually(Duration::from_secs(30), || async {
        let (stored, left) = logins_stored(&db).await?;
        Ok((left == 0).then_some(stored))
    })
    .await?;
    assert_eq!(stored, 200, "every login stored exactly once");
    running.stop().await;
    db.drop_database().await?;
    Ok(())
}

/// Login successes stored by audit, and rows still waiting in auth's outbox, read
/// in one statement (one snapshot): read one after the other, a delivery committed
/// between the two reads showed an empty outbox and none of its events stored.
async fn logins_stored(db: &TestDb) -> anyhow::Result<(i64, i64)> {
    #[derive(QueryableByName)]
    struct Both {
        #[diesel(sql_type = BigInt)]
        stored: i64,
        #[diesel(sql_type = BigInt)]
        waiting: i64,
    }
    let mut conn = db.connect().await?;
    let both: Both = diesel::sql_query(
        "SELECT (SELECT count(*) FROM audit.events \
                 WHERE event_type = 'auth.login' AND outcome = 'success') AS stored, \
                (SELECT count(*) FROM auth.audit_outbox) AS waiting",
    )
    .get_result(&mut conn)
    .await?;
    Ok((both.stored, both.waiting))
}

/// DESIGN §4: auth's events are never lost, so an action whose event cannot be
/// written does not happen unseen. With auth's outbox refusing rows, a right password
/// gets 503 and leaves no live session, a wrong one 503 too (and still counts toward
/// the lock); once the outbox takes rows again, the login works and is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_login_happens_unrecorded() -> anyhow::Result<()> {
    let stack = aia_testkit::Stack::start().await?;
    let who = email();
    crate::helpers::register(&stack, &who).await?;
    let mut conn = stack.db.connect().await?;
    diesel::sql_query("REVOKE INSERT ON auth.audit_outbox FROM aia_auth")
        .execute(&mut conn)
        .await?;
    let login = |password: &str| {
        stack
            .http()
            .post(stack.url("/v1/auth/login"))
            .json(&json!({"email": who, "password": password}))
            .send()
    };

    let answer = login(PASSWORD).await?;
    crate::helpers::assert_problem(answer, reqwest::StatusCode::SERVICE_UNAVAILABLE).await?;
    let live = "SELECT count(*) AS n FROM session.sessions WHERE revoked_at IS NULL";
    let made = count(&mut conn, "SELECT count(*) AS n FROM session.sessions").await?;
    assert_eq!(made, 1, "the login reached session");
    eventually(Duration::from_secs(10), || {
        let db = &stack.db;
        async move {
            let mut conn = db.connect().await?;
            Ok((count(&mut conn, live).await? == 0).then_some(()))
        }
    })
    .await?;
    let answer = login("wrong password, also unrecorded").await?;
    crate::helpers::assert_problem(answer, reqwest::StatusCode::SERVICE_UNAVAILABLE).await?;

    diesel::sql_query("GRANT INSERT ON auth.audit_outbox TO aia_auth")
        .execute(&mut conn)
        .await?;
    let answer = login(PASSWORD).await?;
    assert_eq!(answer.status(), reqwest::StatusCode::OK);
    assert_eq!(count(&mut conn, live).await?, 1);

    // Session's lone events likewise: a refused refresh token is 503, not 401, while
    // its event cannot be written.
    let refresh = || {
        stack
            .http()
            .post(stack.url("/v1/auth/refresh"))
            .json(&json!({"refresh_token": "A".repeat(43)}))
            .send()
    };
    diesel::sql_query("REVOKE INSERT ON session.audit_outbox FROM aia_session")
        .execute(&mut conn)
        .await?;
    let answer = refresh().await?;
    crate::helpers::assert_problem(answer, reqwest::StatusCode::SERVICE_UNAVAILABLE).await?;
    diesel::sql_query("GRANT INSERT ON session.audit_outbox TO aia_session")
        .execute(&mut conn)
        .await?;
    let answer = refresh().await?;
    crate::helpers::assert_problem(answer, reqwest::StatusCode::UNAUTHORIZED).await?;
    let logins = eventually(Duration::from_secs(20), || {
        let db = &stack.db;
        async move {
            let mut conn = db.connect().await?;
            let stored = count(
                &mut conn,
                "SELECT count(*) AS n FROM audit.events WHERE event_type = 'auth.login'",
            )
            .await?;
            Ok((stored > 0).then_some(stored))
        }
    })
    .await?;
    assert_eq!(logins, 1, "only the login that happened is on record");
    drop(conn);
    stack.stop().await;
    Ok(())
}

/// An admin's unlock (Redis, no transaction to share with the outbox) is recorded
/// before it is done: with the outbox refusing rows it answers 503 and the account
/// stays locked; afterwards it unlocks, and says the account was locked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_unlock_happens_unrecorded() -> anyhow::Result<()> {
    let stack = aia_testkit::Stack::start_with(&[("LOGIN_BACKOFF_AFTER", "100".into())]).await?;
    let who = email();
    crate::helpers::register(&stack, &who).await?;
    let admin = crate::helpers::admin(&stack).await?;
    let admin_token = crate::helpers::field(&admin, "access_token").to_owned();
    let own = crate::helpers::login(&stack, &who).await?;
    let user_id =
        crate::helpers::user_id(&stack, crate::helpers::field(&own, "access_token")).await?;
    let guesser = crate::helpers::from_ip(40)?;
    for _ in 0..10 {
        let answer = guesser
            .post(stack.url("/v1/auth/login"))
            .json(&json!({"email": who, "password": "guess guess guess"}))
            .send()
            .await?;
        assert_eq!(answer.status(), reqwest::StatusCode::UNAUTHORIZED);
    }
    let locked = || async {
        let answer = crate::helpers::from_ip(41)?
            .post(stack.url("/v1/auth/login"))
            .json(&json!({"email": who, "password": PASSWORD}))
            .send()
            .await?;
        anyhow::Ok(answer.status() == reqwest::StatusCode::TOO_MANY_REQUESTS)
    };
    assert!(locked().await?);
    let mut conn = stack.db.connect().await?;
    let unlock = || {
        stack
            .http()
            .post(stack.url(&format!("/v1/admin/users/{user_id}/unlock")))
            .bearer_auth(&admin_token)
            .send()
    };

    diesel::sql_query("REVOKE INSERT ON auth.audit_outbox FROM aia_auth")
        .execute(&mut conn)
        .await?;
    let answer = unlock().await?;
    crate::helpers::assert_problem(answer, reqwest::StatusCode::SERVICE_UNAVAILABLE).await?;

    diesel::sql_query("GRANT INSERT ON auth.audit_outbox TO aia_auth")
        .execute(&mut conn)
        .await?;
    // (Checked once the outbox takes rows: a refused login's event must be written.)
    assert!(locked().await?, "unlocked without a record");
    let answer: Value = unlock().await?.json().await?;
    assert_eq!(answer["was_locked"], true);
    assert!(!locked().await?);
    drop(conn);
    stack.stop().await;
    Ok(())
}
