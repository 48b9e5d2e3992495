//! `auth.cleanup` / `session.cleanup` remove exactly what no longer matters, one
//! replica at a time, and the services run them on their schedule.

use std::time::Duration;

use diesel::QueryableByName;
use diesel_async::RunQueryDsl;

#[derive(QueryableByName)]
struct Left {
    #[diesel(sql_type = diesel::sql_types::Text)]
    what: String,
}

const DAY: Duration = Duration::from_secs(86_400);

async fn exec(conn: &mut diesel_async::AsyncPgConnection, sql: &str) -> anyhow::Result<()> {
    diesel::sql_query(sql).execute(conn).await?;
    Ok(())
}

/// The labels of the rows still there, in order.
async fn left(
    conn: &mut diesel_async::AsyncPgConnection,
    sql: &str,
) -> anyhow::Result<Vec<String>> {
    let mut rows: Vec<String> = diesel::sql_query(sql)
        .load::<Left>(conn)
        .await?
        .into_iter()
        .map(|l| l.what)
        .collect();
    rows.sort();
    Ok(rows)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_removes_what_no_longer_matters_and_nothing_else() -> anyhow::Result<()> {
    let db = aia_testkit::TestDb::create().await?;
    let mut conn = db.connect().await?;
    // Sessions: one ended 40 days ago, one revoked 40 days ago, one revoked yesterday,
    // one live (with a token rotated 40 days ago and a current one).
    exec(&mut conn, "INSERT INTO session.sessions (id, user_id, created_at, last_used_at, expires_at, revoked_at, user_agent) VALUES \
        ('00000000-0000-0000-0000-000000000001', gen_random_uuid(), now() - interval '100 days', now() - interval '50 days', now() - interval '40 days', NULL, 'expired'), \
        ('00000000-0000-0000-0000-000000000002', gen_random_uuid(), now() - interval '60 days', now() - interval '50 days', now() + interval '30 days', now() - interval '40 days', 'revoked-long-ago'), \
        ('00000000-0000-0000-0000-000000000003', gen_random_uuid(), now() - interval '60 days', now() - interval '2 days', now() + interval '30 days', now() - interval '1 day', 'revoked-recently'), \
        ('00000000-0000-0000-0000-000000000004', gen_random_uuid(), now() - interval '80 days', now(), now() + interval '10 days', NULL, 'live')").await?;
    exec(&mut conn, "INSERT INTO session.refresh_tokens (token_hash, session_id, created_at, expires_at, rotated_at) VALUES \
        (sha256('rotated'::bytea), '00000000-0000-0000-0000-000000000004', now() - interval '80 days', now() - interval '40 days', now() - interval '79 days'), \
        (sha256('current'::bytea), '00000000-0000-0000-0000-000000000004', now(), now() + interval '10 days', NULL), \
        (sha256('of-expired'::bytea), '00000000-0000-0000-0000-000000000001', now() - interval '60 days', now() - interval '40 days', NULL)").await?;
    exec(
        &mut conn,
        "INSERT INTO session.revocations (kind, id, expires_at) VALUES \
        ('jti', '00000000-0000-0000-0000-00000000000a', now() - interval '1 second'), \
        ('jti', '00000000-0000-0000-0000-00000000000b', now() + interval '10 minutes')",
    )
    .await?;
    // Auth: tokens, keys and codes, each once stale and once current.
    exec(
        &mut conn,
        "INSERT INTO auth.users (id, email, password_hash) VALUES \
        ('00000000-0000-0000-0000-0000000000aa', 'c@example.com', 'x')",
    )
    .await?;
    exec(&mut conn, "INSERT INTO auth.email_tokens (token_hash, user_id, purpose, expires_at, used_at) VALUES \
        (sha256('used-long-ago'::bytea), '00000000-0000-0000-0000-0000000000aa', 'verify_email', now() + interval '1 day', now() - interval '40 days'), \
        (sha256('expired-long-ago'::bytea), '00000000-0000-0000-0000-0000000000aa', 'reset_password', now() - interval '40 days', NULL), \
        (sha256('pending'::bytea), '00000000-0000-0000-0000-0000000000aa', 'reset_password', now() + interval '1 hour', NULL)").await?;
    exec(&mut conn, "INSERT INTO auth.api_keys (id, user_id, name, scopes, secret_hmac, revoked_at) VALUES \
        (gen_random_uuid(), '00000000-0000-0000-0000-0000000000aa', 'revoked-long-ago', '{}', sha256('k1'::bytea), now() - interval '40 days'), \
        (gen_random_uuid(), '00000000-0000-0000-0000-0000000000aa', 'active', '{}', sha256('k2'::bytea), NULL)").await?;
    exec(&mut conn, "INSERT INTO auth.recovery_codes (code_hash, user_id, used_at) VALUES \
        (sha256('spent'::bytea), '00000000-0000-0000-0000-0000000000aa', now() - interval '40 days'), \
        (sha256('unspent'::bytea), '00000000-0000-0000-0000-0000000000aa', NULL)").await?;

    let pool = aia_db::pool(&db.url, 2)?;
    // Another replica is cleaning: this one skips.
    let mut other = db.connect().await?;
    exec(
        &mut other,
        "SELECT pg_advisory_lock(hashtext('aia cleanup session'))",
    )
    .await?;
    assert!(
        aia_db::cleanup::run_once(&pool, "session", 30 * DAY)
            .await?
            .is_empty()
    );
    exec(
        &mut other,
        "SELECT pg_advisory_unlock(hashtext('aia cleanup session'))",
    )
    .await?;

    let removed = aia_db::cleanup::run_once(&pool, "session", 30 * DAY).await?;
    assert_eq!(
        removed,
        vec![("revocations".to_owned(), 1), ("sessions".to_owned(), 2),]
    );
    assert_eq!(
        left(&mut conn, "SELECT user_agent AS what FROM session.sessions").await?,
        vec!["live", "revoked-recently"]
    );
    // The live session keeps its rotated token (a replay of it must still be
    // recognised as reuse); the ended session's token went with it.
    assert_eq!(
        left(
            &mut conn,
            "SELECT CASE WHEN token_hash = sha256('current'::bytea) THEN 'current' \
                         WHEN token_hash = sha256('rotated'::bytea) THEN 'rotated' \
                         ELSE 'other' END AS what FROM session.refresh_tokens"
        )
        .await?,
        vec!["current", "rotated"]
    );
    assert_eq!(
        left(
            &mut conn,
            "SELECT id::text AS what FROM session.revocations"
        )
        .await?,
        vec!["00000000-0000-0000-0000-00000000000b"]
    );
    let removed = aia_db::cleanup::run_once(&pool, "auth", 30 * DAY).await?;
    assert_eq!(
        removed,
        vec![
            ("email_tokens".to_owned(), 2),
            ("api_keys".to_owned(), 1),
            ("recovery_codes".to_owned(), 1),
        ]
    );
    assert_eq!(
        left(&mut conn, "SELECT name AS what FROM auth.api_keys").await?,
        vec!["active"]
    );
    // Nothing more to do.
    let again = aia_db::cleanup::run_once(&pool, "auth", 30 * DAY).await?;
    assert!(again.iter().all(|(_, n)| *n == 0), "{again:?}");
    drop((conn, other));
    db.drop_database().await?;
    Ok(())
}

/// The session service runs its cleanup on the configured schedule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_service_cleans_on_its_schedule() -> anyhow::Result<()> {
    let db = aia_testkit::TestDb::create().await?;
    let mut conn = db.connect().await?;
    exec(
        &mut conn,
        "INSERT INTO session.revocations (kind, id, expires_at) VALUES \
        ('sid', gen_random_uuid(), now() - interval '1 minute')",
    )
    .await?;
    let mut running = aia_testkit::services();
    running
        .session(aia_testkit::env(
            &db,
            &format!("test:{}:", uuid_like()),
            &[
                ("CLEANUP_INTERVAL_SECONDS", "1".into()),
                ("CLEANUP_KEEP_DAYS", "0".into()),
            ],
        ))
        .await?;
    aia_testkit::eventually(Duration::from_secs(10), || {
        let db = &db;
        async move {
            let mut conn = db.connect().await?;
            let rows = left(
                &mut conn,
                "SELECT id::text AS what FROM session.revocations",
            )
            .await?;
            Ok(rows.is_empty().then_some(()))
        }
    })
    .await?;
    running.stop().await;
    drop(conn);
    db.drop_database().await?;
    Ok(())
}

fn uuid_like() -> String {
    format!("{:?}", std::time::SystemTime::now())
        .chars()
        .filter(char::is_ascii_digit)
        .collect()
}
