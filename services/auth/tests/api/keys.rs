//! Signing keys: stored sealed, surviving restarts, rotated without breaking tokens.

use std::time::Duration;

use aia_proto::auth::v1::auth_service_client::AuthServiceClient;
use aia_proto::auth::v1::{GetJwksRequest, ValidateTokenRequest};
use aia_testkit::{Stack, TestDb};
use aia_tokens::{Jwks, Verifier};
use reqwest::StatusCode;

use crate::{client, email, register_and_login};

/// A random-looking ENCRYPTION_KEY, made fresh for each test.
fn encryption_key() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

async fn jwks(auth: &mut AuthServiceClient<tonic::transport::Channel>) -> anyhow::Result<Jwks> {
    Ok(serde_json::from_str(
        &auth
            .get_jwks(GetJwksRequest {})
            .await?
            .into_inner()
            .jwks_json,
    )?)
}

/// Starts an auth service alone on `db` and returns its key set.
async fn auth_alone(db: &TestDb, extra: &[(&str, String)]) -> anyhow::Result<Jwks> {
    let mut running = aia_testkit::services();
    let addrs = running.auth(aia_testkit::env(db, "", extra)).await?;
    let mut auth = AuthServiceClient::connect(addrs.url()).await?;
    let keys = jwks(&mut auth).await?;
    running.stop().await;
    Ok(keys)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_signing_key_survives_a_restart_with_the_same_encryption_key() -> anyhow::Result<()> {
    let db = TestDb::create().await?;
    let key = [("ENCRYPTION_KEY", encryption_key())];
    let first = auth_alone(&db, &key).await?;
    let second = auth_alone(&db, &key).await?;
    assert_eq!(first.keys[0].kid, second.keys[0].kid);
    assert_eq!(second.keys.len(), 1);
    // The private key is stored sealed, never in the clear.
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Bytea)]
        private_key: Vec<u8>,
    }
    use diesel_async::RunQueryDsl;
    let mut conn = db.connect().await?;
    let rows = diesel::sql_query("SELECT private_key FROM auth.signing_keys")
        .load::<Row>(&mut conn)
        .await?;
    assert_eq!(rows.len(), 1);
    assert!(
        !rows[0]
            .private_key
            .windows(4)
            .any(|w| w == [0x30, 0x2e, 0x02, 0x01]),
        "PKCS#8 header in clear"
    );
    db.drop_database().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_encryption_key_a_restart_signs_with_a_new_key_and_still_publishes_the_old()
-> anyhow::Result<()> {
    let db = TestDb::create().await?;
    let first = auth_alone(&db, &[]).await?;
    let second = auth_alone(&db, &[]).await?;
    assert_ne!(first.keys[0].kid, second.keys[0].kid);
    assert!(
        second.keys.iter().any(|k| k.kid == first.keys[0].kid),
        "old key no longer published"
    );
    db.drop_database().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_rotation_new_tokens_use_the_new_key_and_old_tokens_still_work()
-> anyhow::Result<()> {
    let secret = encryption_key();
    let stack = Stack::start_with(&[
        ("ENCRYPTION_KEY", secret.clone()),
        ("SIGNING_KEY_RELOAD_SECONDS", "1".into()),
    ])
    .await?;
    let mut auth = client(&stack).await?;
    let old = register_and_login(&mut auth, &email()).await?;
    let old_kid = Verifier::kid_of(&old.access_token).unwrap_or_default();
    let http = stack.http();
    let me = |token: String| http.get(stack.url("/v1/auth/me")).bearer_auth(token).send();
    assert_eq!(me(old.access_token.clone()).await?.status(), StatusCode::OK);

    // What `aia rotate-signing-key --activate-in 0` does.
    let sealing = aia_tokens::seal::SealingKey::derive(secret.as_bytes())?;
    let pool = aia_db::pool(&stack.db.url, 1)?;
    let new_kid = aia_auth::rotate_signing_key(&pool, &sealing, chrono::Utc::now()).await?;
    assert_ne!(new_kid, old_kid);

    let fresh = aia_testkit::eventually(Duration::from_secs(10), || {
        let mut auth = auth.clone();
        let new_kid = new_kid.clone();
        async move {
            let pair = register_and_login(&mut auth, &email()).await?;
            Ok(
                (Verifier::kid_of(&pair.access_token).as_deref() == Some(new_kid.as_str()))
                    .then_some(pair),
            )
        }
    })
    .await?;
    let published = jwks(&mut auth).await?;
    assert_eq!(published.keys[0].kid, new_kid, "the active key comes first");
    assert!(published.keys.iter().any(|k| k.kid == old_kid));
    // The gateway picks the new kid up without a restart (it re-fetches on an unknown
    // kid, at most every 10 s), and the old token keeps working.
    aia_testkit::eventually(Duration::from_secs(15), || {
        let token = fresh.access_token.clone();
        let me = &me;
        async move { Ok((me(token).await?.status() == StatusCode::OK).then_some(())) }
    })
    .await?;
    assert_eq!(me(old.access_token.clone()).await?.status(), StatusCode::OK);
    let valid = auth
        .validate_token(ValidateTokenRequest {
            access_token: old.access_token,
        })
        .await?
        .into_inner();
    assert!(!valid.revoked);
    stack.stop().await;
    Ok(())
}
