//! Postgres over TLS against the local server, which (as Debian sets it up) serves
//! a self-signed certificate for `localhost`.

mod cleanup;
mod rls;

use diesel::QueryableByName;
use diesel_async::RunQueryDsl;

#[derive(QueryableByName)]
struct Text {
    #[diesel(sql_type = diesel::sql_types::Text)]
    value: String,
}

#[derive(QueryableByName)]
struct Flag {
    #[diesel(sql_type = diesel::sql_types::Bool)]
    ssl: bool,
}

/// The test database's URL pointed at `host`, with `options`.
fn url(db: &aia_testkit::TestDb, host: &str, options: &str) -> String {
    let name = db.url.rsplit('/').next().unwrap_or_default();
    format!("postgres://postgres@{host}:5432/{name}?{options}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_asking_for_tls_gets_a_verified_tls_connection_or_none() -> anyhow::Result<()> {
    let db = aia_testkit::TestDb::create().await?;
    let mut plain = db.connect().await?;
    let cert_file = diesel::sql_query("SELECT current_setting('ssl_cert_file') AS value")
        .get_result::<Text>(&mut plain)
        .await?
        .value;

    // The server's own certificate as the trusted root, and the name it was made for.
    let good = url(
        &db,
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={cert_file}"),
    );
    let pool = aia_db::pool(&good, 1)?;
    let mut conn = aia_db::conn(&pool).await?;
    let ssl = diesel::sql_query("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .get_result::<Flag>(&mut *conn)
        .await?
        .ssl;
    assert!(ssl, "the connection is not encrypted");
    drop(conn);
    // Migrations go the same way.
    assert!(aia_db::pending_migrations(&good).await?.is_empty());

    // A certificate the trusted root did not sign, or a name it was not made for: no
    // connection.
    let unrelated = aia_testkit::pki::TestPki::new()?;
    let unrelated_ca = unrelated.ca_file().display().to_string();
    for (name, bad) in [
        (
            "another CA",
            url(
                &db,
                "localhost",
                &format!("sslmode=require&sslrootcert={unrelated_ca}"),
            ),
        ),
        (
            "wrong host name",
            url(
                &db,
                "127.0.0.1",
                &format!("sslmode=verify-full&sslrootcert={cert_file}"),
            ),
        ),
    ] {
        let pool = aia_db::pool(&bad, 1)?;
        assert!(
            aia_db::conn(&pool).await.is_err(),
            "{name}: connected anyway"
        );
    }
    db.drop_database().await?;
    Ok(())
}

/// Every migration reverts (its `down.sql` undoes exactly what its `up.sql` did, or
/// applying it again would fail) and the whole set applies again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_migration_reverts_and_applies_again() -> anyhow::Result<()> {
    use diesel_migrations::MigrationHarness;
    type Wrapped = diesel_async::async_connection_wrapper::AsyncConnectionWrapper<
        diesel_async::AsyncPgConnection,
    >;
    let db = aia_testkit::TestDb::create().await?;
    let mut conn = Wrapped::from(db.connect().await?);
    let (reverted, applied) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let reverted = conn
            .revert_all_migrations(aia_db::MIGRATIONS)
            .map_err(|e| anyhow::anyhow!("reverting: {e}"))?
            .len();
        let applied = conn
            .run_pending_migrations(aia_db::MIGRATIONS)
            .map_err(|e| anyhow::anyhow!("applying again: {e}"))?
            .len();
        Ok((reverted, applied))
    })
    .await??;
    assert!(reverted > 10, "only {reverted} migrations reverted");
    assert_eq!(reverted, applied);
    // The chain still works after the round trip.
    let mut conn = db.connect().await?;
    diesel::sql_query(
        "INSERT INTO audit.events (id, occurred_at, event_type, outcome, producer) \
         VALUES (gen_random_uuid(), now(), 'test.roundtrip', 'success', 'test')",
    )
    .execute(&mut conn)
    .await?;
    let broken = diesel::sql_query(
        "SELECT coalesce(broken_seq::text, 'none') AS value FROM audit.verify_chain(0, 9223372036854775807)",
    )
    .get_result::<Text>(&mut conn)
    .await?
    .value;
    assert_eq!(broken, "none");
    drop(conn);
    db.drop_database().await?;
    Ok(())
}
