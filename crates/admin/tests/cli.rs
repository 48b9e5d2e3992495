//! `aia verify-audit-chain`, run as the operator runs it.

use aia_testkit::TestDb;
use diesel_async::RunQueryDsl;

fn verify(db: &TestDb) -> anyhow::Result<(i32, String)> {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_aia"))
        .arg("verify-audit-chain")
        .env("DATABASE_URL", &db.url)
        .env("APP_ENV", "development")
        .output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok((output.status.code().unwrap_or(-1), text))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_audit_chain_exits_1_and_names_the_altered_event() -> anyhow::Result<()> {
    let db = TestDb::create().await?;
    let mut conn = db.connect().await?;
    diesel::sql_query(
        "INSERT INTO audit.events (id, occurred_at, event_type, outcome, producer) \
         SELECT gen_random_uuid(), now(), 'auth.login', 'success', 'test' FROM generate_series(1, 5)",
    )
    .execute(&mut conn)
    .await?;
    let (code, text) = verify(&db)?;
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("intact: 5 events checked"), "{text}");

    diesel::sql_query("ALTER TABLE audit.events DISABLE TRIGGER events_append_only")
        .execute(&mut conn)
        .await?;
    diesel::sql_query("UPDATE audit.events SET actor = 'someone else' WHERE seq = 4")
        .execute(&mut conn)
        .await?;
    let (code, text) = verify(&db)?;
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("BROKEN at event seq 4"), "{text}");
    drop(conn);
    db.drop_database().await?;
    Ok(())
}
