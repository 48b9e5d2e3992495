//! The session service: refresh-token sessions and the access-token blacklist.
//!
//! - [`Application`]: binds the gRPC and admin ports (`build`), then serves them.
//! - `service`: the `aia.session.v1.SessionService` implementation.
//! - `store`: sessions and refresh-token chains in Postgres (atomic rotation).
//! - `blacklist`: revocations, durable in Postgres, fast in Redis.
//! - `refresh_token`: the opaque token format.

mod blacklist;
mod refresh_token;
mod schema;
mod service;
mod store;

use std::net::SocketAddr;
use std::sync::Arc;

use aia_proto::session::v1::session_service_server::SessionServiceServer;
use aia_settings::SessionSettings;
use aia_telemetry::grpc::GrpcService;
use aia_telemetry::shutdown::CancellationToken;
use anyhow::Context;
use secrecy::ExposeSecret;

pub use service::Sessions;

/// A bound session service.
pub struct Application {
    server: GrpcService,
    sessions: Sessions,
    shutdown: CancellationToken,
    relay: tokio::task::JoinHandle<()>,
}

fn chrono_duration(d: std::time::Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

impl Application {
    /// Connects the pools (lazily), starts the audit relay and binds the listeners.
    pub async fn build(
        settings: SessionSettings,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let pg = aia_db::pool(
            settings.common.database_url.expose_secret(),
            settings.common.database_pool_size,
        )?;
        let redis = aia_db::redis::pool(settings.common.redis_url.expose_secret())?;
        let (audit, relay) =
            aia_audit_client::AuditClient::spawn(&settings.audit_url, "session", shutdown.clone())?;
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
        let server = GrpcService::bind(settings.grpc_addr, settings.admin_addr, readiness)
            .await
            .context("binding the session listeners")?;
        let blacklist =
            blacklist::Blacklist::new(pg.clone(), redis, settings.common.redis_key_prefix.clone());
        let lifetimes = store::Lifetimes {
            idle: chrono_duration(settings.idle_ttl),
            absolute: chrono_duration(settings.absolute_ttl),
        };
        let sessions = Sessions {
            store: store::SessionStore::new(pg, lifetimes),
            blacklist,
            audit,
            access_ttl: chrono_duration(settings.access_ttl),
        };
        Ok(Self {
            server,
            sessions,
            shutdown,
            relay,
        })
    }

    /// The bound gRPC address.
    pub fn grpc_addr(&self) -> std::io::Result<SocketAddr> {
        self.server.grpc_addr()
    }

    /// The bound admin address.
    pub fn admin_addr(&self) -> std::io::Result<SocketAddr> {
        self.server.admin_addr()
    }

    /// Serves until the shutdown token is cancelled, then flushes pending audit events.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        // Make sure Redis holds every revocation before trusting it.
        self.sessions.blacklist.start_rehydration();
        let sessions = self.sessions;
        let result = self
            .server
            .run(
                "aia.session.v1.SessionService",
                move |health| {
                    tonic::transport::Server::builder()
                        .add_service(health)
                        .add_service(SessionServiceServer::new(sessions))
                },
                self.shutdown,
            )
            .await;
        let _ = self.relay.await;
        result
    }
}
