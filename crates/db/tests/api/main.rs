//! Postgres over TLS against the local server, which (as Debian sets it up) serves
//! a self-signed certificate for `localhost`.

mod cleanup;

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
