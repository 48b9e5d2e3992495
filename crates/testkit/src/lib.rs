//! Real services for tests: each spawned in-process on port 0, against a database
//! of its own (created and migrated per test) and a Redis key prefix of its own, so
//! tests run in parallel and never share state.
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! let stack = aia_testkit::Stack::start().await?;
//! let response = stack.http().get(stack.url("/healthz")).send().await?;
//! stack.stop().await;
//! # Ok(()) }
//! ```
//!
//! Databases are named `aia_test_<unix seconds>_<random>`; each test drops its own at
//! [`Stack::stop`], and creating one also drops those left over for an hour by tests
//! that crashed.

pub mod otlp;
pub mod pki;
pub mod proxy;
pub mod smtp;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aia_settings::Env;
use aia_telemetry::shutdown::CancellationToken;
use anyhow::Context;
use diesel::QueryableByName;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

/// The Postgres server tests use: `TEST_DATABASE_URL`, else `DATABASE_URL` (its
/// database is replaced), else the local default.
fn server_url() -> String {
    let url = std::env::var("TEST_DATABASE_URL")
        .or_else(|_| std::env::var("DATABASE_URL"))
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let base = url.split('?').next().unwrap_or(&url);
    base.rsplit_once('/')
        .map_or(base.to_owned(), |(server, _)| server.to_owned())
}

/// The Redis tests use: `REDIS_URL` or the local default.
pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A fresh, migrated database of this test's own.
#[derive(Debug, Clone)]
pub struct TestDb {
    /// Its URL.
    pub url: String,
}

impl TestDb {
    /// Creates and migrates a new database.
    pub async fn create() -> anyhow::Result<Self> {
        let secs = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let name = format!("aia_test_{secs}_{}", uuid::Uuid::new_v4().simple());
        let url = format!("{}/{name}", server_url());
        drop_stale(secs).await;
        aia_db::ensure_database(&url).await?;
        aia_db::migrate(&url).await?;
        Ok(Self { url })
    }

    /// A direct connection, for a test to look at (or tamper with) what is stored.
    pub async fn connect(&self) -> anyhow::Result<AsyncPgConnection> {
        AsyncPgConnection::establish(&self.url)
            .await
            .context("connecting to the test database")
    }

    /// Drops the database.
    pub async fn drop_database(&self) -> anyhow::Result<()> {
        aia_db::drop_database(&self.url).await
    }
}

/// Best effort: drops test databases older than an hour.
async fn drop_stale(now_secs: u64) {
    #[derive(QueryableByName)]
    struct Name {
        #[diesel(sql_type = diesel::sql_types::Text)]
        datname: String,
    }
    let Ok(mut conn) = AsyncPgConnection::establish(&format!("{}/postgres", server_url())).await
    else {
        return;
    };
    let Ok(names) =
        diesel::sql_query("SELECT datname FROM pg_database WHERE datname LIKE 'aia\\_test\\_%'")
            .load::<Name>(&mut conn)
            .await
    else {
        return;
    };
    for name in names {
        let created = name
            .datname
            .split('_')
            .nth(2)
            .and_then(|s| s.parse::<u64>().ok());
        if created.is_some_and(|t| t + 3600 < now_secs) {
            let _ = diesel::sql_query(format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                name.datname
            ))
            .execute(&mut conn)
            .await;
        }
    }
}

/// One row of `SELECT count(*) AS n …`, for tests that count what is stored.
#[derive(Debug, diesel::QueryableByName)]
pub struct Count {
    /// The count.
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub n: i64,
}

/// The environment every test service gets: its database, its Redis prefix, port 0
/// everywhere, plain logs. `extra` overrides or adds variables.
pub fn env(db: &TestDb, redis_prefix: &str, extra: &[(&str, String)]) -> Env {
    let mut vars: HashMap<String, String> = [
        ("APP_ENV", "development".to_owned()),
        ("DATABASE_URL", db.url.clone()),
        ("DATABASE_POOL_SIZE", "4".to_owned()),
        ("REDIS_URL", redis_url()),
        ("REDIS_KEY_PREFIX", redis_prefix.to_owned()),
        ("LOG_FORMAT", "text".to_owned()),
        ("AUTH_GRPC_ADDR", "127.0.0.1:0".to_owned()),
        ("AUTH_ADMIN_ADDR", "127.0.0.1:0".to_owned()),
        ("SESSION_GRPC_ADDR", "127.0.0.1:0".to_owned()),
        ("SESSION_ADMIN_ADDR", "127.0.0.1:0".to_owned()),
        ("AUDIT_GRPC_ADDR", "127.0.0.1:0".to_owned()),
        ("AUDIT_ADMIN_ADDR", "127.0.0.1:0".to_owned()),
        ("GATEWAY_HTTP_ADDR", "127.0.0.1:0".to_owned()),
        ("GATEWAY_ADMIN_ADDR", "127.0.0.1:0".to_owned()),
        ("GATEWAY_WORKERS", "2".to_owned()),
        // Tests make many requests from 127.0.0.1: limits high enough not to
        // interfere; the rate-limit tests set their own.
        ("RATE_LIMIT_LOGIN", "100000/60".to_owned()),
        ("RATE_LIMIT_LOGIN_ACCOUNT", "100000/60".to_owned()),
        ("RATE_LIMIT_REGISTER", "100000/60".to_owned()),
        ("RATE_LIMIT_RECOVERY", "100000/60".to_owned()),
        ("RATE_LIMIT_API", "100000/60".to_owned()),
        // A loaded CI machine is slower than production Redis budgets assume.
        ("RATE_LIMIT_REDIS_BUDGET_MS", "200".to_owned()),
        (
            "MAIL_DIR",
            std::env::temp_dir()
                .join("aia-test-mail")
                .display()
                .to_string(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    for (k, v) in extra {
        vars.insert((*k).to_owned(), v.clone());
    }
    vars.into_iter().collect()
}

/// Addresses of a running service.
#[derive(Debug, Clone, Copy)]
pub struct Addrs {
    /// The gRPC (or, for the gateway, public HTTP) address.
    pub main: SocketAddr,
    /// The admin HTTP address.
    pub admin: SocketAddr,
}

impl Addrs {
    /// `http://<main>`, for a gRPC client or an HTTP request.
    pub fn url(&self) -> String {
        format!("http://{}", self.main)
    }

    /// `http://<admin><path>`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }
}

/// A handle on services started by the kit; each can be stopped on its own.
pub struct Running {
    shutdown: CancellationToken,
    services: Vec<(&'static str, CancellationToken, tokio::task::JoinHandle<()>)>,
}

impl Running {
    fn new(shutdown: CancellationToken) -> Self {
        Self {
            shutdown,
            services: Vec::new(),
        }
    }

    fn spawn(
        &mut self,
        name: &'static str,
        token: CancellationToken,
        run: impl Future<Output = anyhow::Result<()>> + Send + 'static,
    ) {
        let task = tokio::spawn(async move {
            if let Err(error) = run.await {
                eprintln!("{name} stopped with an error: {error:#}");
            }
        });
        self.services.push((name, token, task));
    }

    /// Starts the audit service.
    pub async fn audit(&mut self, env: Env) -> anyhow::Result<Addrs> {
        let token = self.shutdown.child_token();
        let app =
            aia_audit::build(aia_settings::AuditSettings::from_env(env)?, token.clone()).await?;
        let addrs = Addrs {
            main: app.grpc_addr()?,
            admin: app.admin_addr()?,
        };
        self.spawn("audit", token, app.run_until_stopped());
        Ok(addrs)
    }

    /// Starts the session service.
    pub async fn session(&mut self, env: Env) -> anyhow::Result<Addrs> {
        let token = self.shutdown.child_token();
        let app = aia_session::build(aia_settings::SessionSettings::from_env(env)?, token.clone())
            .await?;
        let addrs = Addrs {
            main: app.grpc_addr()?,
            admin: app.admin_addr()?,
        };
        self.spawn("session", token, app.run_until_stopped());
        Ok(addrs)
    }

    /// Starts the auth service.
    pub async fn auth(&mut self, env: Env) -> anyhow::Result<Addrs> {
        let token = self.shutdown.child_token();
        let app =
            aia_auth::build(aia_settings::AuthSettings::from_env(env)?, token.clone()).await?;
        let addrs = Addrs {
            main: app.grpc_addr()?,
            admin: app.admin_addr()?,
        };
        self.spawn("auth", token, app.run_until_stopped());
        Ok(addrs)
    }

    /// Starts a gateway.
    pub async fn gateway(&mut self, env: Env) -> anyhow::Result<Addrs> {
        let token = self.shutdown.child_token();
        let app = aia_gateway::build(aia_settings::GatewaySettings::from_env(env)?, token.clone())
            .await?;
        let addrs = Addrs {
            main: app.http_addr(),
            admin: app.admin_addr()?,
        };
        self.spawn("gateway", token, app.run_until_stopped());
        Ok(addrs)
    }

    /// Stops every service called `name` and waits (bounded) for them to finish.
    pub async fn stop_service(&mut self, name: &str) {
        let (stopping, kept) = std::mem::take(&mut self.services)
            .into_iter()
            .partition(|(n, _, _)| *n == name);
        self.services = kept;
        Self::wait(stopping).await;
    }

    async fn wait(services: Vec<(&'static str, CancellationToken, tokio::task::JoinHandle<()>)>) {
        for (_, token, _) in &services {
            token.cancel();
        }
        let all = async {
            for (_, _, task) in services {
                let _ = task.await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(15), all).await;
    }

    /// Stops everything and waits (bounded) for it to finish.
    pub async fn stop(self) {
        self.shutdown.cancel();
        Self::wait(self.services).await;
    }
}

/// The whole platform: audit, session, auth and a gateway, wired together.
pub struct Stack {
    /// The test's database.
    pub db: TestDb,
    /// The test's Redis key prefix.
    pub redis_prefix: String,
    /// The audit service.
    pub audit: Addrs,
    /// The session service.
    pub session: Addrs,
    /// The auth service.
    pub auth: Addrs,
    /// The gateway.
    pub gateway: Addrs,
    running: Running,
    http: reqwest::Client,
    extra: Vec<(String, String)>,
}

impl Stack {
    /// Starts all four services with default settings.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(&[]).await
    }

    /// Starts all four services; `extra` variables go to every service.
    pub async fn start_with(extra: &[(&str, String)]) -> anyhow::Result<Self> {
        Self::start_configured(extra, None).await
    }

    /// Starts all four services speaking mTLS to each other, with certificates from
    /// `pki` (one per service, named after it).
    pub async fn start_mtls(pki: &pki::TestPki) -> anyhow::Result<Self> {
        Self::start_configured(&[], Some(pki)).await
    }

    async fn start_configured(
        extra: &[(&str, String)],
        pki: Option<&pki::TestPki>,
    ) -> anyhow::Result<Self> {
        let db = TestDb::create().await?;
        let redis_prefix = format!("test:{}:", uuid::Uuid::new_v4().simple());
        let mut running = Running::new(CancellationToken::new());
        let extra: Vec<(String, String)> = extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        let base = |service: &str, more: &[(&str, String)]| -> anyhow::Result<Env> {
            let mut all: Vec<(&str, String)> =
                extra.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
            all.extend_from_slice(more);
            if let Some(pki) = pki {
                all.extend(pki.env(service)?);
            }
            Ok(env(&db, &redis_prefix, &all))
        };
        let audit = running.audit(base("audit", &[])?).await?;
        let session = running
            .session(base("session", &[("AUDIT_GRPC_URL", audit.url())])?)
            .await?;
        let auth = running
            .auth(base(
                "auth",
                &[
                    ("AUDIT_GRPC_URL", audit.url()),
                    ("SESSION_GRPC_URL", session.url()),
                ],
            )?)
            .await?;
        let gateway = running
            .gateway(base(
                "gateway",
                &[
                    ("AUTH_GRPC_URL", auth.url()),
                    ("SESSION_GRPC_URL", session.url()),
                    ("AUDIT_GRPC_URL", audit.url()),
                ],
            )?)
            .await?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?;
        Ok(Self {
            db,
            redis_prefix,
            audit,
            session,
            auth,
            gateway,
            running,
            http,
            extra,
        })
    }

    /// Starts one more gateway in front of the same services.
    pub async fn add_gateway(&mut self) -> anyhow::Result<Addrs> {
        self.add_gateway_with(&[]).await
    }

    /// Starts one more gateway in front of the same services, with `extra` variables
    /// over the stack's (a proxy's address for one of the services, say).
    pub async fn add_gateway_with(&mut self, extra: &[(&str, String)]) -> anyhow::Result<Addrs> {
        let env = self.env_beside(extra);
        self.running.gateway(env).await
    }

    /// Starts one more auth service beside the first, with `extra` variables over the
    /// stack's (a proxy's address for session, say); a gateway reaches it through
    /// [`Stack::add_gateway_with`] and `AUTH_GRPC_URL`.
    pub async fn add_auth_with(&mut self, extra: &[(&str, String)]) -> anyhow::Result<Addrs> {
        let env = self.env_beside(extra);
        self.running.auth(env).await
    }

    /// The environment of one more service beside the stack's: its variables, the
    /// addresses of its services, then `extra` over them.
    fn env_beside(&self, extra: &[(&str, String)]) -> Env {
        let mut all: Vec<(&str, String)> = self
            .extra
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        all.push(("AUTH_GRPC_URL", self.auth.url()));
        all.push(("SESSION_GRPC_URL", self.session.url()));
        all.push(("AUDIT_GRPC_URL", self.audit.url()));
        all.extend(extra.iter().cloned());
        env(&self.db, &self.redis_prefix, &all)
    }

    /// Stops one service (`audit`, `session`, `auth` or `gateway`: every gateway).
    pub async fn stop_service(&mut self, name: &str) {
        self.running.stop_service(name).await;
    }

    /// An HTTP client.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// A URL on the gateway.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.gateway.url())
    }

    /// Stops the services and drops the database.
    pub async fn stop(self) {
        self.running.stop().await;
        if let Err(error) = self.db.drop_database().await {
            eprintln!("could not drop the test database: {error:#}");
        }
    }
}

/// Starts services one by one (for tests of a single service).
pub fn services() -> Running {
    Running::new(CancellationToken::new())
}

/// Polls `check` until it returns `Some`, or fails after `timeout`. For effects that
/// happen in the background (audit delivery); never a fixed sleep.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut pause = Duration::from_millis(10);
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {timeout:?}"
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}
