//! Per-service roles and row-level security (migration 000017), as the services see
//! them: a connection acting as a service's role sees no user-owned row until its
//! transaction says whose rows it may see, sees only that user's rows when it names
//! one, and cannot reach another service's schema or change the audit trail.

use diesel::QueryableByName;
use diesel::sql_types::Text;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use aia_testkit::Count;

#[derive(QueryableByName)]
struct Name {
    #[diesel(sql_type = Text)]
    name: String,
}

const ADA: &str = "00000000-0000-0000-0000-00000000000a";
const BOB: &str = "00000000-0000-0000-0000-00000000000b";

async fn exec(conn: &mut AsyncPgConnection, sql: &str) -> diesel::QueryResult<usize> {
    diesel::sql_query(sql).execute(conn).await
}

async fn count(conn: &mut AsyncPgConnection, sql: &str) -> diesel::QueryResult<i64> {
    Ok(diesel::sql_query(sql).get_result::<Count>(conn).await?.n)
}

/// Runs `sql` (a count) in a transaction with `setup` applied first.
async fn count_in(
    conn: &mut AsyncPgConnection,
    scope: Option<aia_db::scope::Scope<'_>>,
    sql: &str,
) -> anyhow::Result<i64> {
    let sql = sql.to_owned();
    Ok(conn
        .transaction::<_, diesel::result::Error, _>(async |conn| {
            if let Some(scope) = scope {
                aia_db::scope::set(conn, scope).await?;
            }
            count(conn, &sql).await
        })
        .await?)
}

/// Whether `sql` fails in a transaction with `scope`.
async fn refused(
    conn: &mut AsyncPgConnection,
    scope: Option<aia_db::scope::Scope<'_>>,
    sql: &str,
) -> bool {
    let sql = sql.to_owned();
    conn.transaction::<_, diesel::result::Error, _>(async |conn| {
        if let Some(scope) = scope {
            aia_db::scope::set(conn, scope).await?;
        }
        exec(conn, &sql).await
    })
    .await
    .is_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_service_sees_only_what_its_transaction_names() -> anyhow::Result<()> {
    use aia_db::scope::Scope;
    let db = aia_testkit::TestDb::create().await?;
    let mut owner = db.connect().await?;
    exec(&mut owner, &format!(
        "INSERT INTO auth.users (id, email, password_hash) VALUES ('{ADA}', 'ada@example.com', 'x'), ('{BOB}', 'bob@example.com', 'x')"
    )).await?;

    // The session service's pool acts as aia_session.
    let pool = aia_db::pool_as(&db.url, 1, "aia_session")?;
    let mut conn = aia_db::conn(&pool).await?;
    let who = diesel::sql_query("SELECT current_user::text AS name")
        .get_result::<Name>(&mut *conn)
        .await?
        .name;
    assert_eq!(who, "aia_session");
    // Writing needs a scope too: without one, even an insert is refused.
    let insert = |id: &str, user: &str| {
        format!(
            "INSERT INTO session.sessions (id, user_id, created_at, last_used_at, expires_at) \
             VALUES ('{id}', '{user}', now(), now(), now() + interval '1 day')"
        )
    };
    let s_ada = "10000000-0000-0000-0000-00000000000a";
    let s_bob = "10000000-0000-0000-0000-00000000000b";
    assert!(refused(&mut conn, None, &insert(s_ada, ADA)).await);
    // Acting for Ada, her session can be written, Bob's cannot.
    assert!(!refused(&mut conn, Some(Scope::User(ADA)), &insert(s_ada, ADA)).await);
    assert!(refused(&mut conn, Some(Scope::User(ADA)), &insert(s_bob, BOB)).await);
    assert!(!refused(&mut conn, Some(Scope::Service), &insert(s_bob, BOB)).await);
    for (hash, session) in [("a", s_ada), ("b", s_bob)] {
        exec(&mut owner, &format!(
            "INSERT INTO session.refresh_tokens (token_hash, session_id, created_at, expires_at) \
             VALUES (sha256('{hash}'::bytea), '{session}', now(), now() + interval '1 day')"
        )).await?;
    }

    let sessions = "SELECT count(*) AS n FROM session.sessions";
    let tokens = "SELECT count(*) AS n FROM session.refresh_tokens";
    // A query without the setting sees nothing.
    assert_eq!(count_in(&mut conn, None, sessions).await?, 0);
    assert_eq!(count_in(&mut conn, None, tokens).await?, 0);
    // Outside a transaction too (the setting never outlives one).
    assert_eq!(count(&mut conn, sessions).await?, 0);
    // Acting for Ada: her session and its token only, whatever the WHERE says.
    assert_eq!(
        count_in(&mut conn, Some(Scope::User(ADA)), sessions).await?,
        1
    );
    assert_eq!(
        count_in(&mut conn, Some(Scope::User(ADA)), tokens).await?,
        1
    );
    assert_eq!(
        count_in(
            &mut conn,
            Some(Scope::User(ADA)),
            &format!("SELECT count(*) AS n FROM session.sessions WHERE user_id = '{BOB}'")
        )
        .await?,
        0
    );
    let revoke_bob = format!("UPDATE session.sessions SET revoked_at = now() WHERE id = '{s_bob}'");
    let changed = conn
        .transaction::<_, diesel::result::Error, _>(async |conn| {
            aia_db::scope::set(conn, Scope::User(ADA)).await?;
            exec(conn, &revoke_bob).await
        })
        .await?;
    assert_eq!(changed, 0, "Ada's scope revoked Bob's session");
    // The service scope sees every row.
    assert_eq!(
        count_in(&mut conn, Some(Scope::Service), sessions).await?,
        2
    );
    // An empty user id is nobody.
    assert_eq!(
        count_in(&mut conn, Some(Scope::User("")), sessions).await?,
        0
    );
    // Another service's schema is out of reach.
    assert!(
        refused(
            &mut conn,
            Some(Scope::Service),
            "SELECT 1 FROM auth.api_keys"
        )
        .await
    );
    drop(conn);

    // Auth: API keys and second factors, the same way.
    let pool = aia_db::pool_as(&db.url, 1, "aia_auth")?;
    let mut conn = aia_db::conn(&pool).await?;
    for (user, name) in [(ADA, "a"), (BOB, "b")] {
        exec(
            &mut owner,
            &format!(
                "INSERT INTO auth.api_keys (id, user_id, name, scopes, secret_hmac) \
             VALUES (gen_random_uuid(), '{user}', '{name}', '{{}}', sha256('{name}'::bytea))"
            ),
        )
        .await?;
        exec(&mut owner, &format!(
            "INSERT INTO auth.recovery_codes (code_hash, user_id) VALUES (sha256('{name}'::bytea), '{user}')"
        )).await?;
    }
    for table in ["auth.api_keys", "auth.recovery_codes"] {
        let sql = format!("SELECT count(*) AS n FROM {table}");
        assert_eq!(count_in(&mut conn, None, &sql).await?, 0, "{table}");
        assert_eq!(
            count_in(&mut conn, Some(Scope::User(BOB)), &sql).await?,
            1,
            "{table}"
        );
        assert_eq!(
            count_in(&mut conn, Some(Scope::Service), &sql).await?,
            2,
            "{table}"
        );
    }
    assert!(
        refused(
            &mut conn,
            Some(Scope::Service),
            "SELECT 1 FROM session.sessions"
        )
        .await
    );
    drop(conn);

    // Audit: events are appended in the service scope; a user sees their own; nobody
    // changes or deletes one (no privilege, before the trigger even runs).
    let pool = aia_db::pool_as(&db.url, 1, "aia_audit")?;
    let mut conn = aia_db::conn(&pool).await?;
    let event = |subject: &str| {
        format!(
            "INSERT INTO audit.events (id, occurred_at, event_type, outcome, subject, producer) \
             VALUES (gen_random_uuid(), now(), 'auth.login', 'success', '{subject}', 'auth')"
        )
    };
    assert!(refused(&mut conn, None, &event(ADA)).await);
    assert!(refused(&mut conn, Some(Scope::User(ADA)), &event(ADA)).await);
    assert!(!refused(&mut conn, Some(Scope::Service), &event(ADA)).await);
    assert!(!refused(&mut conn, Some(Scope::Service), &event(BOB)).await);
    let events = "SELECT count(*) AS n FROM audit.events";
    assert_eq!(count_in(&mut conn, None, events).await?, 0);
    assert_eq!(
        count_in(&mut conn, Some(Scope::User(ADA)), events).await?,
        1
    );
    assert_eq!(count_in(&mut conn, Some(Scope::Service), events).await?, 2);
    // Pruning what is old enough is allowed (nothing is that old here).
    assert!(
        !refused(
            &mut conn,
            Some(Scope::Service),
            "SELECT * FROM audit.prune_retained(now() - interval '31 days')"
        )
        .await
    );
    assert_eq!(count_in(&mut conn, Some(Scope::Service), events).await?, 2);
    // Nor can the role date an event back to make retention cut past the 30 days: an
    // event's recorded_at is the database's, whatever the insert says, so pruning
    // what is "31 days old" after a backdated insert still removes nothing.
    let backdated = "INSERT INTO audit.events (id, occurred_at, recorded_at, event_type, outcome, producer) \
         VALUES (gen_random_uuid(), now(), now() - interval '400 days', 'auth.login', 'success', 'auth')";
    assert!(!refused(&mut conn, Some(Scope::Service), backdated).await);
    assert!(!refused(&mut conn, Some(Scope::Service), &event(BOB)).await);
    assert!(
        !refused(
            &mut conn,
            Some(Scope::Service),
            "SELECT * FROM audit.prune_retained(now() - interval '31 days')"
        )
        .await
    );
    assert_eq!(count_in(&mut conn, Some(Scope::Service), events).await?, 4);
    assert_eq!(
        count_in(
            &mut conn,
            Some(Scope::Service),
            "SELECT count(*) AS n FROM audit.events WHERE recorded_at < now() - interval '1 day'"
        )
        .await?,
        0,
        "an event kept the date its writer gave it"
    );
    for change in [
        "UPDATE audit.events SET subject = 'someone else'",
        "DELETE FROM audit.events",
        "DELETE FROM audit.anchors",
        // Retention is the role's only way to remove events, and it keeps 30 days.
        "SELECT * FROM audit.prune_retained('infinity')",
        "SELECT * FROM audit.prune_retained(now() - interval '29 days')",
        "SELECT * FROM audit.prune(now() - interval '400 days')",
    ] {
        assert!(
            refused(&mut conn, Some(Scope::Service), change).await,
            "{change}"
        );
    }
    // The chain the role appended still verifies.
    let broken = conn
        .transaction::<_, diesel::result::Error, _>(async |conn| {
            aia_db::scope::set(conn, Scope::Service).await?;
            diesel::sql_query(
                "SELECT coalesce(broken_seq::text, 'none') AS name FROM audit.verify_chain(0, 9223372036854775807)",
            )
            .get_result::<Name>(conn)
            .await
        })
        .await?
        .name;
    assert_eq!(broken, "none");
    drop((conn, owner));
    db.drop_database().await?;
    Ok(())
}

/// A deployment's own logins: a non-superuser login that is a member of one
/// service's role (NOINHERIT) gets that role's connection, checks the migrations, and
/// has no privilege of its own once the role is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_services_own_login_acts_only_through_its_role() -> anyhow::Result<()> {
    use aia_db::scope::Scope;
    let db = aia_testkit::TestDb::create().await?;
    let mut owner = db.connect().await?;
    let login = format!("aia_test_{}", uuid::Uuid::new_v4().simple());
    exec(&mut owner, &format!("CREATE ROLE {login} LOGIN NOINHERIT")).await?;
    exec(&mut owner, &format!("GRANT aia_auth TO {login}")).await?;
    let name = db.url.rsplit('/').next().unwrap_or_default();
    let url = format!("postgres://{login}@127.0.0.1:5432/{name}");

    let outcome = async {
        // `aia migrate --check`, as the init container runs it.
        assert!(aia_db::pending_migrations(&url).await?.is_empty());
        let pool = aia_db::pool_as(&url, 1, "aia_auth")?;
        let mut conn = aia_db::conn(&pool).await?;
        assert_eq!(
            count_in(
                &mut conn,
                Some(Scope::Service),
                "SELECT count(*) AS n FROM auth.api_keys"
            )
            .await?,
            0
        );
        // Back to the login itself: nothing.
        exec(&mut conn, "RESET ROLE").await?;
        assert!(
            refused(
                &mut conn,
                Some(Scope::Service),
                "SELECT 1 FROM auth.api_keys"
            )
            .await
        );
        // Nor may it become another service.
        assert!(refused(&mut conn, None, "SET ROLE aia_audit").await);
        drop(conn);
        // A role it is not a member of: no connection at all.
        let other = aia_db::pool_as(&url, 1, "aia_session")?;
        assert!(aia_db::conn(&other).await.is_err());
        anyhow::Ok(())
    }
    .await;
    exec(&mut owner, &format!("DROP ROLE IF EXISTS {login}")).await?;
    drop(owner);
    db.drop_database().await?;
    outcome
}
