//! The session service: refresh-token sessions and the access-token blacklist.
//!
//! - [`build`]: binds the gRPC and admin ports; the [`Application`] it returns serves
//!   them.
//! - `service`: the `aia.session.v1.SessionService` implementation.
//! - `store`: sessions and refresh-token chains in Postgres (atomic rotation).
//! - `blacklist`: revocations, durable in Postgres, fast in Redis.
//! - `refresh_token`: the opaque token format.

mod blacklist;
mod refresh_token;
mod schema;
mod service;
mod store;

use std::sync::Arc;

use aia_proto::session::v1::session_service_server::SessionServiceServer;
use aia_settings::SessionSettings;
use aia_telemetry::grpc::GrpcApplication;
use aia_telemetry::shutdown::CancellationToken;
use secrecy::ExposeSecret;

pub use service::Sessions;

/// The session service, bound and ready to run.
pub type Application = GrpcApplication;

fn chrono_duration(d: std::time::Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// Connects the pools (lazily), starts the audit relay and the blacklist
/// rehydration, and binds the listeners.
pub async fn build(
    settings: SessionSettings,
    shutdown: CancellationToken,
) -> anyhow::Result<Application> {
    let tls = aia_telemetry::tls::TlsMaterial::load(&settings.common.internal_tls)?;
    let pg = aia_db::pool_as(
        settings.common.database_url.expose_secret(),
        settings.common.database_pool_size,
        "aia_session",
    )?;
    let redis = aia_db::redis::pool(settings.common.redis_url.expose_secret())?;
    if let Some(every) = settings.common.cleanup_interval {
        aia_db::cleanup::spawn(
            pg.clone(),
            "session",
            every,
            settings.common.cleanup_keep,
            shutdown.clone(),
        );
    }
    let (audit, relay) = aia_audit_client::AuditClient::spawn_outbox(
        &settings.audit_url,
        "session",
        tls.as_ref(),
        pg.clone(),
        "session.audit_outbox",
        shutdown.clone(),
    )?;
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
    let blacklist =
        blacklist::Blacklist::new(pg.clone(), redis, settings.common.redis_key_prefix.clone());
    // Make sure Redis holds every revocation before trusting it.
    blacklist.start_rehydration();
    let relay_from_replicas = tokio::spawn(blacklist.clone().relay_from_replicas(
        settings.common.redis_url.expose_secret().to_owned(),
        shutdown.clone(),
    ));
    let poll_recent = tokio::spawn(blacklist.clone().poll_recent(shutdown.clone()));
    let lifetimes = store::Lifetimes {
        idle: chrono_duration(settings.idle_ttl),
        absolute: chrono_duration(settings.absolute_ttl),
        grace: chrono_duration(settings.refresh_grace),
    };
    let secret = match &settings.secret {
        Some(secret) => secret.expose_secret().as_bytes().to_vec(),
        None => {
            tracing::warn!(
                "DEVELOPMENT: no SESSION_SECRET; using an ephemeral one. Refresh retries \
                 across a restart will be refused."
            );
            let mut key = vec![0u8; 32];
            getrandom::fill(&mut key).map_err(|e| anyhow::anyhow!("OS random source: {e}"))?;
            key
        }
    };
    let sessions = Sessions {
        shutdown: shutdown.clone(),
        store: store::SessionStore::new(pg, lifetimes, &secret),
        blacklist,
        audit,
        access_ttl: chrono_duration(settings.access_ttl),
    };
    let app = GrpcApplication::bind(
        settings.grpc_addr,
        settings.admin_addr,
        readiness,
        "aia.session.v1.SessionService",
        |router| router.add_service(SessionServiceServer::new(sessions)),
        tls.as_ref(),
        shutdown,
    )
    .await?;
    Ok(app
        .with_background(relay)
        .with_background(relay_from_replicas)
        .with_background(poll_recent))
}
