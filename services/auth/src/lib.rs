//! The auth service: users, credentials, access tokens.
//!
//! - [`build`]: binds the gRPC and admin ports; the [`Application`] it returns serves
//!   them.
//! - `service`: `aia.auth.v1.AuthService`: the gRPC adapter, and the token flows
//!   (register, login, refresh, logout, revoke, validate).
//! - `account`: password change, API keys, email verification, password reset.
//! - `admin`: user list and search, roles, unlock, disable.
//! - `mfa_flows`: the MFA challenge at login, TOTP enrolment and removal; `mfa`: the
//!   TOTP credentials, recovery codes and challenges they use.
//! - `policy`, `lockout`, `api_keys`, `email_tokens`, `mailer`: the pieces they use.
//! - `domain`: `EmailAddress`, `Password` (valid by construction).
//! - `hashing`: argon2id on a bounded blocking pool; the dummy hash for unknown users.
//! - `users`: the `auth.users` table.
//! - `keys`: the Ed25519 signing keys: stored sealed, rotated, reloaded.
//! - `reseal`: secrets at rest sealed again under a new `ENCRYPTION_KEY`.
//! - `error`: one error enum, mapped to gRPC statuses in one place.

mod account;
mod admin;
mod api_keys;
mod deferred;
mod domain;
mod email_tokens;
mod error;
mod hashing;
pub use hashing::raw_rate as raw_hash_rate;
mod keys;
mod lockout;
mod mailer;
mod mfa;
mod mfa_flows;
mod own_sessions;
mod policy;
mod reseal;
mod schema;
mod service;
mod sessions_due;
mod trail;
mod users;

use std::sync::Arc;
use std::time::Duration;

use aia_proto::audit::v1::audit_service_client::AuditServiceClient;
use aia_proto::auth::v1::auth_service_server::AuthServiceServer;
use aia_proto::session::v1::session_service_client::SessionServiceClient;
use aia_settings::AuthSettings;
use aia_telemetry::grpc::GrpcApplication;
use aia_telemetry::shutdown::CancellationToken;
use anyhow::Context;
use secrecy::ExposeSecret;

pub use keys::{Withdrawal, rotate as rotate_signing_key, sealing_key};
pub use reseal::{Resealed, reseal};
pub use service::Auth;

/// Where auth's audit events wait for delivery (migration 000011).
const AUDIT_OUTBOX: &str = "auth.audit_outbox";

/// The auth service, bound and ready to run.
pub type Application = GrpcApplication;

/// Loads the signing key, prepares the hasher, connects (lazily) and binds.
pub async fn build(
    settings: AuthSettings,
    shutdown: CancellationToken,
) -> anyhow::Result<Application> {
    let tls = aia_telemetry::tls::TlsMaterial::load(&settings.common.internal_tls)?;
    let pg = aia_db::pool_as(
        settings.common.database_url.expose_secret(),
        settings.common.database_pool_size,
        "aia_auth",
    )?;
    let session = aia_telemetry::tls::endpoint(&settings.session_url, tls.as_ref(), "session")
        .context("SESSION_GRPC_URL")?
        .timeout(Duration::from_secs(5))
        .connect_lazy();
    let revocations = aia_revocations::spawn_following(
        &settings.session_url,
        tls.as_ref(),
        settings.revocation_stale_after,
        shutdown.clone(),
    )?;
    if let Some(every) = settings.common.cleanup_interval {
        aia_db::cleanup::spawn(
            pg.clone(),
            "auth",
            every,
            settings.common.cleanup_keep,
            shutdown.clone(),
        );
    }
    let (audit, relay) = aia_audit_client::AuditClient::spawn_outbox(
        &settings.audit_url,
        "auth",
        tls.as_ref(),
        pg.clone(),
        AUDIT_OUTBOX,
        shutdown.clone(),
    )?;
    let redis = aia_db::redis::pool(settings.common.redis_url.expose_secret())?;
    let readiness: aia_telemetry::admin::ReadinessCheck = {
        let (pg, redis) = (pg.clone(), redis.clone());
        Arc::new(move || {
            let (pg, redis) = (pg.clone(), redis.clone());
            Box::pin(async move {
                aia_db::ping(&pg).await.map_err(|_| "postgres".to_owned())?;
                aia_db::redis::ping(&redis)
                    .await
                    .map_err(|_| "redis".to_owned())
            })
        })
    };
    let lockout = lockout_of(&settings, redis.clone());
    let sealing = Arc::new(keys::sealing_key(&settings)?);
    let keys = keys::KeyStore::open(pg.clone(), &settings, sealing.clone()).await?;
    let mfa = mfa::Mfa::new(
        pg.clone(),
        redis,
        settings.common.redis_key_prefix.clone(),
        sealing,
        settings.totp_issuer.clone(),
    );
    let reload = keys.clone().spawn_reload(shutdown.clone());
    let email_tokens = email_tokens::EmailTokens::new(pg.clone());
    let api_keys = api_keys::ApiKeys::new(pg.clone(), &api_key_secret(&settings)?);
    // Work done after an answer (tokens, mails): shutdown waits for it.
    let tracker = tokio_util::task::TaskTracker::new();
    let deferred =
        deferred::Deferred::for_pool(tracker.clone(), settings.common.database_pool_size);
    let session = SessionServiceClient::new(aia_telemetry::otel::traced(session));
    // Reads of the trail for the gateway's routes (`trail`); a stream's body is not
    // bound by the timeout, only its answer.
    let audit_reads = AuditServiceClient::new(aia_telemetry::otel::traced(
        aia_telemetry::tls::endpoint(&settings.audit_url, tls.as_ref(), "audit")
            .context("AUDIT_GRPC_URL")?
            .timeout(Duration::from_secs(10))
            .connect_lazy(),
    ));
    let sessions_due = sessions_due::spawn(
        users::UserStore::new(pg.clone()),
        session.clone(),
        shutdown.clone(),
    );
    let auth = Auth {
        users: users::UserStore::new(pg),
        hasher: hashing::Hasher::new(&settings.hashing).await?,
        keys: keys.clone(),
        tokens: settings.tokens,
        policy: policy::PasswordPolicy::load(settings.password_policy)?,
        lockout,
        api_keys,
        email_tokens,
        mailer: mailer::Mailer::new(&settings.mail, tracker.clone())?,
        mail: settings.mail.clone(),
        mfa,
        session,
        revocations,
        audit,
        audit_reads,
        deferred,
        shutdown: shutdown.clone(),
    };
    let app = GrpcApplication::bind(
        settings.grpc_addr,
        settings.admin_addr,
        readiness,
        "aia.auth.v1.AuthService",
        |router| router.add_service(AuthServiceServer::new(auth)),
        tls.as_ref(),
        shutdown,
    )
    .await?;
    // Work done after an answer (a reset token, a verification mail) is finished,
    // within the grace period, once the calls in flight at shutdown have been
    // answered too.
    Ok(app
        .with_drain(async move {
            tracker.close();
            tracker.wait().await;
        })
        .with_background(relay)
        .with_background(reload)
        .with_background(sessions_due))
}

/// Creates an administrator (for `aia create-admin`): the password must pass the
/// policy; the email must be new. There is no default admin and no default password.
pub async fn create_admin(
    settings: &AuthSettings,
    email: &str,
    password: &str,
) -> anyhow::Result<uuid::Uuid> {
    let email = domain::EmailAddress::parse(email)?;
    let password =
        policy::PasswordPolicy::load(settings.password_policy)?.check(password, &email)?;
    let hash = hashing::Hasher::new(&settings.hashing)
        .await?
        .hash(password)
        .await?;
    let pool = aia_db::pool(settings.common.database_url.expose_secret(), 1)?;
    // The running auth service's relay delivers the event from its outbox.
    let audit = aia_audit_client::AuditClient::outbox_only("auth", pool.clone(), AUDIT_OUTBOX);
    users::UserStore::new(pool)
        .insert_with_roles(&email, &hash, &["user", "admin"], |id| {
            audit
                .event("admin.created", aia_proto::audit::v1::Outcome::Success)
                .actor("aia create-admin")
                .subject(id.to_string())
                .details(serde_json::json!({"roles": ["user", "admin"]}))
        })
        .await?
        .context("a user with this email exists already")
}

/// Withdraws the signing key `kid` (for `aia withdraw-signing-key`; see
/// [`keys`]), recording `admin.signing_key_withdrawn` with it.
pub async fn withdraw_signing_key(
    settings: &AuthSettings,
    kid: &str,
) -> anyhow::Result<Withdrawal> {
    let pool = aia_db::pool(settings.common.database_url.expose_secret(), 1)?;
    let audit = aia_audit_client::AuditClient::outbox_only("auth", pool.clone(), AUDIT_OUTBOX);
    let event = audit
        .event(
            "admin.signing_key_withdrawn",
            aia_proto::audit::v1::Outcome::Success,
        )
        .actor("aia withdraw-signing-key")
        .subject(kid.to_owned())
        .details(serde_json::json!({"risk": "high"}));
    keys::withdraw(&pool, kid, event).await
}

fn lockout_of(settings: &AuthSettings, redis: aia_db::redis::Pool) -> lockout::Lockout {
    let l = settings.lockout;
    lockout::Lockout::new(
        redis,
        settings.common.redis_key_prefix.clone(),
        lockout::Limits {
            threshold: l.threshold,
            lock_for: l.duration,
            window: l.window,
            ip_limit: l.ip_limit,
            backoff_after: l.backoff_after,
            fail_open: l.fail_open,
        },
    )
}

/// Lifts the lock of the account with `email` (for `aia unlock-user`). True if it
/// was locked.
pub async fn unlock_user(settings: &AuthSettings, email: &str) -> anyhow::Result<bool> {
    let email = domain::EmailAddress::parse(email)?;
    let redis = aia_db::redis::pool(settings.common.redis_url.expose_secret())?;
    lockout_of(settings, redis).unlock(email.as_str()).await
}

/// The API-key HMAC secret; development without `API_KEY_SECRET` gets an ephemeral one.
fn api_key_secret(settings: &AuthSettings) -> anyhow::Result<Vec<u8>> {
    match &settings.api_key_secret {
        Some(secret) => Ok(secret.expose_secret().as_bytes().to_vec()),
        None => {
            anyhow::ensure!(
                !settings.common.app_env.is_production(),
                "production needs API_KEY_SECRET"
            );
            tracing::warn!(
                "DEVELOPMENT: no API_KEY_SECRET; API keys created now stop working at a restart"
            );
            let mut secret = vec![0u8; 32];
            getrandom::fill(&mut secret).map_err(|e| anyhow::anyhow!("OS random source: {e}"))?;
            Ok(secret)
        }
    }
}
