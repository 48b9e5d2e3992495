//! The auth service over real gRPC, with real session and audit services behind it.

mod keys;

use std::time::Duration;

use aia_proto::audit::v1::QueryRequest;
use aia_proto::audit::v1::audit_service_client::AuditServiceClient;
use aia_proto::auth::v1::auth_service_client::AuthServiceClient;
use aia_proto::auth::v1::{
    GetJwksRequest, LoginRequest, LoginResponse, LogoutRequest, RegisterRequest, TokenPair,
    ValidateTokenRequest, login_response,
};
use aia_proto::common::v1::ClientInfo;
use aia_testkit::Stack;
use diesel_async::RunQueryDsl;
use tonic::transport::Channel;

const PASSWORD: &str = "correct horse battery staple";

pub(crate) fn email() -> String {
    format!("user-{}@example.com", uuid::Uuid::new_v4().simple())
}

pub(crate) async fn client(stack: &Stack) -> anyhow::Result<AuthServiceClient<Channel>> {
    Ok(AuthServiceClient::connect(stack.auth.url()).await?)
}

fn from(ip: &str) -> Option<ClientInfo> {
    Some(ClientInfo {
        ip: ip.into(),
        user_agent: "tests".into(),
        request_id: uuid::Uuid::new_v4().to_string(),
    })
}

pub(crate) async fn register_and_login(
    auth: &mut AuthServiceClient<Channel>,
    email: &str,
) -> anyhow::Result<TokenPair> {
    auth.register(RegisterRequest {
        email: email.into(),
        password: PASSWORD.into(),
        client: from("198.51.100.1"),
    })
    .await?;
    tokens(
        auth.login(LoginRequest {
            email: email.into(),
            password: PASSWORD.into(),
            client: from("198.51.100.1"),
            device_id: String::new(),
        })
        .await?
        .into_inner(),
    )
}

/// The token pair of a login without a second factor.
pub(crate) fn tokens(answer: LoginResponse) -> anyhow::Result<TokenPair> {
    match answer.result {
        Some(login_response::Result::Tokens(pair)) => Ok(pair),
        other => anyhow::bail!("expected tokens, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_token_returns_the_claims_and_sees_a_logout() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let mut auth = client(&stack).await?;
    let pair = register_and_login(&mut auth, &email()).await?;
    let valid = auth
        .validate_token(ValidateTokenRequest {
            access_token: pair.access_token.clone(),
        })
        .await?
        .into_inner();
    let claims = valid.claims.ok_or_else(|| anyhow::anyhow!("no claims"))?;
    assert!(!valid.revoked);
    assert_eq!(claims.aud, "aia");
    assert_eq!(claims.roles, vec!["user".to_owned()]);
    assert!(uuid::Uuid::parse_str(&claims.sid).is_ok());
    auth.logout(LogoutRequest {
        access_token: pair.access_token.clone(),
        client: None,
    })
    .await?;
    let after = auth
        .validate_token(ValidateTokenRequest {
            access_token: pair.access_token,
        })
        .await?
        .into_inner();
    assert!(after.revoked);
    let junk = auth
        .validate_token(ValidateTokenRequest {
            access_token: "junk".into(),
        })
        .await
        .err();
    assert_eq!(junk.map(|s| s.code()), Some(tonic::Code::Unauthenticated));
    stack.stop().await;
    Ok(())
}

/// The sum of the Prometheus series of `name` whose line contains `filter`.
async fn metric(stack: &Stack, url: &str, name: &str, filter: &str) -> anyhow::Result<f64> {
    let text = stack.http().get(url).send().await?.text().await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with(name) && l.contains(filter))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// ValidateToken answers revocation from auth's copy of the blacklist: no
/// session.IsRevoked call per token once the copy is synced, and a revocation made
/// elsewhere (here: at the session service directly) reaches it within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_token_checks_revocation_in_memory_and_follows_the_session_service()
-> anyhow::Result<()> {
    use aia_proto::session::v1::RevokeRequest;
    use aia_proto::session::v1::session_service_client::SessionServiceClient;

    let stack = Stack::start().await?;
    let mut auth = client(&stack).await?;
    let pair = register_and_login(&mut auth, &email()).await?;
    let (auth_metrics, session_metrics) = (
        stack.auth.admin_url("/metrics"),
        stack.session.admin_url("/metrics"),
    );
    let validate = |auth: &mut AuthServiceClient<Channel>, token: String| {
        let mut auth = auth.clone();
        async move {
            anyhow::Ok(
                auth.validate_token(ValidateTokenRequest {
                    access_token: token,
                })
                .await?
                .into_inner(),
            )
        }
    };
    // Once the copy is synced, checks are answered from memory.
    aia_testkit::eventually(Duration::from_secs(5), || {
        let (mut auth, token) = (auth.clone(), pair.access_token.clone());
        let (stack, url) = (&stack, auth_metrics.clone());
        async move {
            let before = metric(stack, &url, "auth_revocation_checks_total", "memory").await?;
            validate(&mut auth, token).await?;
            let after = metric(stack, &url, "auth_revocation_checks_total", "memory").await?;
            Ok((after > before).then_some(()))
        }
    })
    .await?;
    let asked = metric(
        &stack,
        &session_metrics,
        "grpc_server_requests_total",
        "IsRevoked",
    )
    .await?;
    for _ in 0..20 {
        let answer = validate(&mut auth, pair.access_token.clone()).await?;
        assert!(!answer.revoked);
    }
    assert_eq!(
        metric(
            &stack,
            &session_metrics,
            "grpc_server_requests_total",
            "IsRevoked"
        )
        .await?,
        asked,
        "ValidateToken asked session.IsRevoked"
    );

    // Revoked behind auth's back: at the session service itself.
    let claims = validate(&mut auth, pair.access_token.clone())
        .await?
        .claims
        .ok_or_else(|| anyhow::anyhow!("no claims"))?;
    SessionServiceClient::connect(stack.session.url())
        .await?
        .revoke(RevokeRequest {
            session_id: claims.sid,
            access_jti: claims.jti,
            access_expires_at: Some(prost_types::Timestamp {
                seconds: claims.exp,
                nanos: 0,
            }),
            client: None,
            user_id: claims.sub,
        })
        .await?;
    let seen = aia_testkit::eventually(Duration::from_secs(1), || {
        let (mut auth, token) = (auth.clone(), pair.access_token.clone());
        async move { Ok(validate(&mut auth, token).await?.revoked.then_some(())) }
    })
    .await;
    assert!(
        seen.is_ok(),
        "auth's copy did not learn of the revocation within a second"
    );
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_email_and_wrong_password_are_indistinguishable() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let mut auth = client(&stack).await?;
    let known = email();
    register_and_login(&mut auth, &known).await?;
    let wrong = auth
        .login(LoginRequest {
            email: known.clone(),
            password: "not the password".into(),
            client: None,
            device_id: String::new(),
        })
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("wrong password accepted"))?;
    let unknown = auth
        .login(LoginRequest {
            email: email(),
            password: PASSWORD.into(),
            client: None,
            device_id: String::new(),
        })
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("unknown email accepted"))?;
    assert_eq!(wrong.code(), tonic::Code::Unauthenticated);
    assert_eq!(
        (wrong.code(), wrong.message()),
        (unknown.code(), unknown.message())
    );
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_are_stored_as_argon2id_with_the_configured_cost() -> anyhow::Result<()> {
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Text)]
        password_hash: String,
    }
    let stack = Stack::start().await?;
    let mut auth = client(&stack).await?;
    let email = email();
    register_and_login(&mut auth, &email).await?;
    // A second registration of the same email changes nothing.
    auth.register(RegisterRequest {
        email: email.clone(),
        password: "another long password".into(),
        client: None,
    })
    .await?;
    let mut conn = stack.db.connect().await?;
    let rows = diesel::sql_query("SELECT password_hash FROM auth.users")
        .load::<Row>(&mut conn)
        .await?;
    assert_eq!(rows.len(), 1);
    assert!(
        rows[0]
            .password_hash
            .starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{}",
        rows[0].password_hash
    );
    assert!(!rows[0].password_hash.contains(PASSWORD));
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_is_an_invalid_argument_naming_the_field() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let mut auth = client(&stack).await?;
    for (email, password, field) in [
        ("not-an-email", PASSWORD, "email"),
        ("a@example.com", "short", "password"),
        ("a@example.com", &"x".repeat(1025), "password"),
    ] {
        let status = auth
            .register(RegisterRequest {
                email: email.into(),
                password: password.into(),
                client: None,
            })
            .await
            .err()
            .ok_or_else(|| anyhow::anyhow!("accepted"))?;
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().starts_with(field), "{}", status.message());
        assert!(
            !status.message().contains(password),
            "the password is echoed"
        );
    }
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_failures_reach_the_audit_trail_with_their_reason() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let mut auth = client(&stack).await?;
    let known = email();
    register_and_login(&mut auth, &known).await?;
    let _ = auth
        .login(LoginRequest {
            email: known,
            password: "not the password".into(),
            client: from("192.0.2.9"),
            device_id: String::new(),
        })
        .await;
    let audit = AuditServiceClient::connect(stack.audit.url()).await?;
    let failure = aia_testkit::eventually(Duration::from_secs(10), || {
        let mut audit = audit.clone();
        async move {
            let events = audit
                .query(QueryRequest {
                    event_type: "auth.login".into(),
                    ..Default::default()
                })
                .await?
                .into_inner()
                .events;
            Ok(events
                .into_iter()
                .filter_map(|e| e.event)
                .find(|e| e.source_ip == "192.0.2.9"))
        }
    })
    .await?;
    assert_eq!(failure.producer, "auth");
    assert!(
        failure.details_json.contains("wrong_password"),
        "{}",
        failure.details_json
    );
    assert!(!failure.details_json.contains("not the password"));
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_signing_key_is_used_and_published() -> anyhow::Result<()> {
    let pem = aia_tokens::SigningKey::generate_pem()?;
    let expected = aia_tokens::SigningKey::from_pkcs8_pem(&pem)?
        .kid()
        .to_owned();
    let path = std::env::temp_dir().join(format!("aia-key-{}.pem", uuid::Uuid::new_v4()));
    std::fs::write(&path, &pem)?;
    let stack = Stack::start_with(&[("JWT_SIGNING_KEY_FILE", path.display().to_string())]).await?;
    let mut auth = client(&stack).await?;
    let jwks: aia_tokens::Jwks = serde_json::from_str(
        &auth
            .get_jwks(GetJwksRequest {})
            .await?
            .into_inner()
            .jwks_json,
    )?;
    assert_eq!(
        jwks.keys.iter().map(|k| k.kid.as_str()).collect::<Vec<_>>(),
        vec![expected.as_str()]
    );
    let pair = register_and_login(&mut auth, &email()).await?;
    let verifier = aia_tokens::Verifier::new(&jwks, "http://localhost:8080", "aia");
    assert!(verifier.verify(&pair.access_token).is_ok());
    stack.stop().await;
    let _ = std::fs::remove_file(path);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_admin_makes_an_admin_and_refuses_weak_passwords_and_taken_emails()
-> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let settings = aia_settings::AuthSettings::from_env(aia_testkit::env(&stack.db, "", &[]))?;
    let weak = aia_auth::create_admin(&settings, "root@example.com", "password123").await;
    assert!(weak.is_err(), "a weak admin password was accepted");
    let passphrase = "the first admin's long passphrase";
    aia_auth::create_admin(&settings, "root@example.com", passphrase).await?;
    assert!(
        aia_auth::create_admin(
            &settings,
            "ROOT@example.com",
            "another long passphrase here"
        )
        .await
        .is_err()
    );
    let mut auth = client(&stack).await?;
    let pair = tokens(
        auth.login(LoginRequest {
            email: "root@example.com".into(),
            password: passphrase.into(),
            client: None,
            device_id: String::new(),
        })
        .await?
        .into_inner(),
    )?;
    let claims = auth
        .validate_token(ValidateTokenRequest {
            access_token: pair.access_token,
        })
        .await?
        .into_inner()
        .claims
        .ok_or_else(|| anyhow::anyhow!("no claims"))?;
    assert!(claims.roles.contains(&"admin".to_owned()));
    stack.stop().await;
    Ok(())
}

async fn stored_hash(stack: &Stack, email: &str) -> anyhow::Result<String> {
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Text)]
        password_hash: String,
    }
    let mut conn = stack.db.connect().await?;
    Ok(
        diesel::sql_query("SELECT password_hash FROM auth.users WHERE email = $1")
            .bind::<diesel::sql_types::Text, _>(email)
            .get_result::<Row>(&mut conn)
            .await?
            .password_hash,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_imported_bcrypt_hash_logs_in_and_becomes_argon2id() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let email = email();
    let legacy = bcrypt::hash("the old system's password", 4)?;
    let mut conn = stack.db.connect().await?;
    diesel::sql_query("INSERT INTO auth.users (id, email, password_hash) VALUES ($1, $2, $3)")
        .bind::<diesel::sql_types::Uuid, _>(uuid::Uuid::new_v4())
        .bind::<diesel::sql_types::Text, _>(&email)
        .bind::<diesel::sql_types::Text, _>(&legacy)
        .execute(&mut conn)
        .await?;
    let mut auth = client(&stack).await?;
    let wrong = auth
        .login(LoginRequest {
            email: email.clone(),
            password: "not it".into(),
            client: None,
            device_id: String::new(),
        })
        .await;
    assert_eq!(
        wrong.err().map(|s| s.code()),
        Some(tonic::Code::Unauthenticated)
    );
    assert!(
        stored_hash(&stack, &email).await?.starts_with("$2"),
        "rehashed without the right password"
    );
    auth.login(LoginRequest {
        email: email.clone(),
        password: "the old system's password".into(),
        client: None,
        device_id: String::new(),
    })
    .await?;
    let upgraded = stored_hash(&stack, &email).await?;
    assert!(
        upgraded.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{upgraded}"
    );
    // And the upgraded hash works.
    auth.login(LoginRequest {
        email,
        password: "the old system's password".into(),
        client: None,
        device_id: String::new(),
    })
    .await?;
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hash_with_old_argon2_parameters_is_upgraded_at_login() -> anyhow::Result<()> {
    // Users registered while the parameters were cheaper ...
    let cheap = Stack::start_with(&[
        ("ARGON2_MEMORY_KIB", "1024".into()),
        ("ARGON2_ITERATIONS", "1".into()),
    ])
    .await?;
    let email = email();
    let mut auth = client(&cheap).await?;
    register_and_login(&mut auth, &email).await?;
    assert!(
        stored_hash(&cheap, &email)
            .await?
            .starts_with("$argon2id$v=19$m=1024,t=1,p=1$")
    );
    // ... log in after the upgrade (same database, default parameters).
    let mut running = aia_testkit::services();
    let session = running
        .session(aia_testkit::env(&cheap.db, &cheap.redis_prefix, &[]))
        .await?;
    let addrs = running
        .auth(aia_testkit::env(
            &cheap.db,
            &cheap.redis_prefix,
            &[("SESSION_GRPC_URL", session.url())],
        ))
        .await?;
    let mut upgraded_auth = AuthServiceClient::connect(addrs.url()).await?;
    upgraded_auth
        .login(LoginRequest {
            email: email.clone(),
            password: PASSWORD.into(),
            client: None,
            device_id: String::new(),
        })
        .await?;
    assert!(
        stored_hash(&cheap, &email)
            .await?
            .starts_with("$argon2id$v=19$m=19456,t=2,p=1$")
    );
    running.stop().await;
    cheap.stop().await;
    Ok(())
}
