//! The gateway: the only public door. HTTP/JSON outside, gRPC to the services inside.
//!
//! - [`build`]: binds the public and admin ports; the [`Application`] it returns
//!   serves them.
//! - `routes`: the route table and the `/v1/auth/*` handlers.
//! - `authn`: bearer-token verification (local, against cached keys) and the
//!   revocation check.
//! - `keys`: the signing-key cache.
//! - `cookies`: the refresh token in a sealed cookie for browsers, and CSRF checks.
//! - `json`: JSON body limits and parse errors as problems.
//! - `problem`: RFC 9457 bodies, and the mapping from gRPC statuses.
//! - `client`: request id, client IP, user agent.
//! - `middleware`: request id, security headers, metrics on every response.
//! - `rejections`: rejections counted, and sent to audit aggregated per minute.
//! - `rate_limit`: GCRA in Redis with an in-process fallback, per route class.
//! - `openapi`: `GET /openapi.json`, from the route table.
//! - `proxy`: the identity-injecting reverse proxy for `UPSTREAMS`.
//! - `validate`: header counts and sizes, control characters in headers and path.

mod authn;
mod client;
mod client_ip;
mod cookies;
mod cors;
mod json;
mod keys;
mod middleware;
mod openapi;
mod problem;
mod proxy;
mod rate_limit;
mod rejections;
mod routes;
mod state;
mod streams;
mod trusted_host;
mod usage;
mod validate;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{App, HttpServer, web};
use aia_proto::audit::v1::audit_service_client::AuditServiceClient;
use aia_proto::auth::v1::auth_service_client::AuthServiceClient;
use aia_proto::session::v1::session_service_client::SessionServiceClient;
use aia_settings::{GatewaySettings, JwtAlgorithm};
use aia_telemetry::admin::AdminServer;
use aia_telemetry::otel::TracedChannel;
use aia_telemetry::shutdown::{CancellationToken, GRACE_PERIOD};
use aia_telemetry::tls::TlsMaterial;
use anyhow::Context;
use secrecy::ExposeSecret;

/// A bound gateway.
pub struct Application {
    server: actix_web::dev::Server,
    http_addr: SocketAddr,
    admin: AdminServer,
    shutdown: CancellationToken,
}

fn channel(
    url: &str,
    tls: Option<&TlsMaterial>,
    peer: &str,
    what: &str,
    timeout: Duration,
) -> anyhow::Result<TracedChannel> {
    Ok(aia_telemetry::otel::traced(
        aia_telemetry::tls::endpoint(url, tls, peer)
            .context(what.to_owned())?
            .timeout(timeout)
            .connect_lazy(),
    ))
}

/// Connects (lazily) to the services, starts following the revocation stream, and
/// binds the listeners.
pub async fn build(
    settings: GatewaySettings,
    shutdown: CancellationToken,
) -> anyhow::Result<Application> {
    let tls = TlsMaterial::load(&settings.common.internal_tls)?;
    let auth = AuthServiceClient::new(channel(
        &settings.auth_url,
        tls.as_ref(),
        "auth",
        "AUTH_GRPC_URL",
        Duration::from_secs(5),
    )?);
    // Reads of the audit trail through auth: audit bounds each statement (3 s) and a
    // summary runs three, so these get longer than the other calls.
    let auth_reads = AuthServiceClient::new(channel(
        &settings.auth_url,
        tls.as_ref(),
        "auth",
        "AUTH_GRPC_URL",
        Duration::from_secs(12),
    )?);
    let session = SessionServiceClient::new(channel(
        &settings.session_url,
        tls.as_ref(),
        "session",
        "SESSION_GRPC_URL",
        Duration::from_secs(5),
    )?);
    let revocations = aia_revocations::spawn_following(
        &settings.session_url,
        tls.as_ref(),
        settings.revocation_stale_after,
        shutdown.clone(),
    )?;
    let key_cache = Arc::new(
        match (settings.tokens.algorithm, &settings.tokens.hs256_secret) {
            (JwtAlgorithm::Hs256, Some(secret)) => {
                let key = aia_tokens::HmacKey::new(secret.expose_secret().as_bytes());
                let verifier = aia_tokens::Verifier::hs256(
                    &key,
                    &settings.tokens.issuer,
                    &settings.tokens.audience,
                );
                keys::KeyCache::fixed(auth.clone(), verifier)
            }
            (JwtAlgorithm::Hs256, None) => {
                anyhow::bail!("JWT_ALGORITHM=HS256 needs JWT_SECRET_KEY")
            }
            (JwtAlgorithm::EdDsa, _) => keys::KeyCache::new(
                auth.clone(),
                settings.tokens.issuer.clone(),
                settings.tokens.audience.clone(),
            ),
        },
    );
    tokio::spawn(key_cache.clone().refresh_periodically(shutdown.clone()));
    let limiter = Arc::new(rate_limit::Limiter::new(
        &settings.rate_limits,
        settings
            .rate_limits
            .redis_url
            .as_ref()
            .unwrap_or(&settings.common.redis_url)
            .expose_secret(),
        &settings.common.redis_key_prefix,
    )?);
    tokio::spawn(rate_limit::sweep(limiter.clone(), shutdown.clone()));
    let cookie_secret = match &settings.cookie_secret {
        Some(secret) => secret.expose_secret().as_bytes().to_vec(),
        None => {
            tracing::warn!(
                "DEVELOPMENT: no COOKIE_SECRET; browser session cookies end at a restart"
            );
            let mut secret = vec![0u8; 64];
            getrandom::fill(&mut secret).map_err(|e| anyhow::anyhow!("OS random source: {e}"))?;
            secret
        }
    };
    let (audit, _relay) = aia_audit_client::AuditClient::spawn(
        &settings.audit_url,
        "gateway",
        tls.as_ref(),
        shutdown.clone(),
    )?;
    // Usage counts go to audit; reads of the trail go through auth (`routes::security_events`).
    let audit_usage = AuditServiceClient::new(aia_telemetry::otel::traced(
        aia_telemetry::tls::endpoint(&settings.audit_url, tls.as_ref(), "audit")
            .context("AUDIT_GRPC_URL")?
            .timeout(Duration::from_secs(10))
            .connect_lazy(),
    ));
    let rejections = Arc::new(rejections::Rejections::default());
    tokio::spawn(rejections::report(
        rejections.clone(),
        audit,
        settings.rejections_window,
        shutdown.clone(),
    ));
    let usage = Arc::new(usage::Usage::default());
    tokio::spawn(usage::report(
        usage.clone(),
        audit_usage,
        settings.usage_flush,
        shutdown.clone(),
    ));
    let state = web::Data::new(state::State {
        keys: key_cache,
        auth,
        auth_reads,
        session,
        revocations,
        access_ttl: settings.tokens.access_ttl,
        limiter,
        cookies: cookies::CookieSealer::new(&cookie_secret, settings.session_cookie_max_age)?,
        origins: cors::Origins::new(settings.cors_origins.clone()),
        rejections,
        usage,
        streams: Arc::default(),
        shutdown: shutdown.clone(),
    });
    let ready_state = state.clone();
    let readiness: aia_telemetry::admin::ReadinessCheck = Arc::new(move || {
        let state = ready_state.clone();
        Box::pin(async move {
            state
                .keys
                .for_kid(None)
                .await
                .map(|_| ())
                .map_err(|_| "auth".to_owned())
        })
    });
    let admin = AdminServer::bind(settings.admin_addr, readiness)
        .await
        .context("binding the admin port")?;
    let listener =
        std::net::TcpListener::bind(settings.http_addr).context("binding the HTTP port")?;
    let http_addr = listener.local_addr()?;
    let json_limit = settings.json_limit;
    let trusted_proxies = web::Data::new(client_ip::TrustedProxies::parse(
        &settings.trusted_proxies,
        settings.forwarded_header,
    )?);
    let origins = cors::Origins::new(settings.cors_origins.clone());
    let send_hsts = web::Data::new(middleware::SendHsts(
        settings.common.app_env.is_production(),
    ));
    let allowed_hosts = web::Data::new(trusted_host::AllowedHosts::new(
        settings.allowed_hosts.clone(),
    ));
    let upstream_settings = settings.upstreams.clone();
    let upstreams = web::Data::new(proxy::Upstreams::new(settings.upstreams.clone()));
    let prefixes = upstreams.prefixes();
    let document = web::Data::new(openapi::Document(
        openapi::document(&prefixes)
            .to_json()
            .context("serialising the OpenAPI document")?,
    ));
    let server = HttpServer::new(move || {
        App::new()
            .app_data(upstreams.clone())
            .app_data(document.clone())
            // One upstream client per worker: awc, like the worker, is single-threaded.
            .app_data(web::Data::new(proxy::http_client(&upstream_settings)))
            .app_data(state.clone())
            .app_data(trusted_proxies.clone())
            .app_data(allowed_hosts.clone())
            .app_data(send_hsts.clone())
            .app_data(json::config(json_limit))
            .app_data(json::form_config(json_limit))
            .app_data(json::query_config())
            .wrap(actix_web::middleware::from_fn(validate::validate))
            .wrap(actix_web::middleware::from_fn(rate_limit::limit))
            .wrap(cors::middleware(origins.clone()))
            .wrap(actix_web::middleware::from_fn(cors::observe))
            // An untrusted Host is refused before anything else runs...
            .wrap(actix_web::middleware::from_fn(trusted_host::check))
            // ...and yet its answer, like every other, gets the request id, the
            // security headers and a charset.
            .wrap(actix_web::middleware::from_fn(middleware::decorate))
            .configure(|cfg| routes::configure(cfg, &prefixes))
    })
    .workers(settings.workers)
    // Answers go out as written, as nginx sends them (`tcp_nodelay on`): a streamed
    // answer's head and body are two writes, and Nagle's algorithm would hold the
    // second until the client acknowledged the first.
    .tcp_nodelay(true)
    .disable_signals()
    .shutdown_timeout(GRACE_PERIOD.as_secs())
    .listen(listener)?
    .run();
    Ok(Application {
        server,
        http_addr,
        admin,
        shutdown,
    })
}

impl Application {
    /// The bound public address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The bound admin address.
    pub fn admin_addr(&self) -> std::io::Result<SocketAddr> {
        self.admin.local_addr()
    }

    /// Serves until the shutdown token is cancelled.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let handle = self.server.handle();
        let stopping = self.shutdown.clone();
        tokio::spawn(async move {
            stopping.cancelled().await;
            handle.stop(true).await;
        });
        let (http, admin) = tokio::join!(self.server, self.admin.run(self.shutdown));
        http.context("HTTP server")?;
        admin.context("admin server")?;
        Ok(())
    }
}
