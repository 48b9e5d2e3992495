//! One settings struct per service, plus what they share.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use crate::env::{Env, SettingsError};
use crate::production;

/// Which rules apply: development fills gaps and warns, production refuses them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppEnv {
    /// Ephemeral secrets are generated; local defaults are used.
    Development,
    /// Every secret must be given and strong; TLS is required.
    Production,
}

impl AppEnv {
    /// True in production.
    pub fn is_production(self) -> bool {
        self == Self::Production
    }
}

/// The forwarding header the trusted proxies write (`TRUSTED_PROXY_HEADER`): the
/// gateway reads that one alone, since a proxy passes the other through as the
/// client wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For` (nginx, Envoy, cloud load balancers, HAProxy `forwardfor`).
    #[default]
    XForwardedFor,
    /// `Forwarded` (RFC 7239: HAProxy `option forwarded`, some CDNs).
    Forwarded,
}

impl std::str::FromStr for ForwardedHeader {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        match s.to_ascii_lowercase().as_str() {
            "x-forwarded-for" => Ok(Self::XForwardedFor),
            "forwarded" => Ok(Self::Forwarded),
            _ => Err(()),
        }
    }
}

/// How services authenticate each other on internal gRPC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InternalTls {
    /// Plaintext, unauthenticated (development only).
    Off,
    /// A service mesh provides mTLS around the services; they speak plaintext.
    Mesh {
        /// `MESH_NAMESPACE`: the Kubernetes namespace the platform's services run in
        /// (from the downward API, `metadata.namespace`). A mesh identity of the right
        /// service account name in another namespace is not the platform's.
        namespace: String,
        /// `MESH_TRUST_DOMAIN`: the mesh's identity trust domain (default
        /// `cluster.local`, Linkerd's). An identity of another trust domain (another
        /// cluster sharing the trust anchor) is not the platform's.
        trust_domain: String,
    },
    /// The services speak mTLS themselves: every listener requires a client
    /// certificate from the CA, every client presents its own, and each rpc checks the
    /// caller's identity (the certificate's DNS name: `auth`, `session`, `audit`,
    /// `gateway`) against its allowlist.
    Mtls {
        /// `TLS_CA_FILE`: PEM of the CA that signs every service certificate.
        ca_file: PathBuf,
        /// `TLS_CERT_FILE`: PEM of this service's certificate (its DNS name is its identity).
        cert_file: PathBuf,
        /// `TLS_KEY_FILE`: PEM of this service's private key.
        key_file: PathBuf,
    },
}

/// Settings every service reads.
#[derive(Debug, Clone)]
pub struct Common {
    /// `APP_ENV`: `development` (default) or `production`.
    pub app_env: AppEnv,
    /// `DATABASE_URL`: Postgres URL. Secret: it may carry a password.
    pub database_url: SecretString,
    /// `DATABASE_POOL_SIZE`: connections per service (default 10).
    pub database_pool_size: usize,
    /// `REDIS_URL`: Redis URL. Secret: it may carry a password.
    pub redis_url: SecretString,
    /// `REDIS_KEY_PREFIX`: prepended to every Redis key (default empty). Lets several
    /// deployments, or parallel tests, share one Redis.
    pub redis_key_prefix: String,
    /// `LOG_FORMAT`: `json` (default in production) or `text`.
    pub log_json: bool,
    /// `INTERNAL_TLS`: `off` (default in development), `mtls` or `mesh`.
    pub internal_tls: InternalTls,
    /// `CLEANUP_INTERVAL_SECONDS`: how often auth and session remove rows that no
    /// longer matter (expired tokens, ended sessions, old blacklist entries; default
    /// 3600; 0 turns the schedule off).
    pub cleanup_interval: Option<Duration>,
    /// `CLEANUP_KEEP_DAYS`: how long ended rows are kept for investigation first
    /// (default 30).
    pub cleanup_keep: Duration,
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`: the OTLP/gRPC collector traces are sent to (e.g.
    /// `http://otel-collector:4317`); none by default (no export).
    pub otlp_endpoint: Option<String>,
}

/// How access tokens are signed: one algorithm per deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtAlgorithm {
    /// Ed25519 keys in auth's key store, public halves in the JWKS (the default).
    EdDsa,
    /// The original design's shared `JWT_SECRET_KEY` (HS256); nothing is published.
    Hs256,
}

/// Settings of access tokens, shared by the services that issue or check them.
#[derive(Debug, Clone)]
pub struct TokenSettings {
    /// `JWT_ALGORITHM`: `EdDSA` (default) or `HS256`.
    pub algorithm: JwtAlgorithm,
    /// `JWT_SECRET_KEY`: the HS256 secret (required in that mode, 64+ characters,
    /// and random-looking in production).
    pub hs256_secret: Option<SecretString>,
    /// `JWT_ISSUER`: the `iss` claim (default `http://localhost:8080`).
    pub issuer: String,
    /// `JWT_AUDIENCE`: the `aud` claim (default `aia`).
    pub audience: String,
    /// `ACCESS_TOKEN_TTL_SECONDS`: lifetime of an access token (default 900).
    pub access_ttl: Duration,
}

/// Where auth gets its Ed25519 signing key.
#[derive(Debug, Clone)]
pub enum SigningKeySource {
    /// `JWT_SIGNING_KEY_FILE`: a PKCS#8 PEM file.
    File(PathBuf),
    /// `JWT_SIGNING_KEY`: the PKCS#8 PEM itself.
    Pem(SecretString),
    /// Development only: a key generated at start, lost at exit.
    Ephemeral,
}

/// Argon2id cost parameters and how many hashes may run at once.
#[derive(Debug, Clone, Copy)]
pub struct PasswordHashing {
    /// `ARGON2_MEMORY_KIB` (default 19456, the OWASP minimum for argon2id).
    pub memory_kib: u32,
    /// `ARGON2_ITERATIONS` (default 2).
    pub iterations: u32,
    /// `ARGON2_PARALLELISM` (default 1).
    pub parallelism: u32,
    /// `PASSWORD_HASHING_CONCURRENCY`: hashes running at once (default: the number of
    /// cores). Bounds memory and keeps a login flood from starving other work.
    pub concurrency: usize,
}

/// The password policy (NIST SP 800-63B by default: length and a blocklist, no
/// composition rules unless the operator turns them on).
#[derive(Debug, Clone, Copy)]
pub struct PasswordPolicySettings {
    /// `PASSWORD_MIN_LENGTH`: in Unicode code points after NFKC (default 12).
    pub min_length: usize,
    /// `PASSWORD_REQUIRE_UPPERCASE` (default off).
    pub require_uppercase: bool,
    /// `PASSWORD_REQUIRE_LOWERCASE` (default off).
    pub require_lowercase: bool,
    /// `PASSWORD_REQUIRE_NUMBERS` (default off).
    pub require_numbers: bool,
    /// `PASSWORD_REQUIRE_SYMBOLS` (default off).
    pub require_symbols: bool,
    /// `PASSWORD_HISTORY`: how many previous passwords a change may not reuse
    /// (default 5).
    pub history: usize,
}

/// Email delivery.
#[derive(Debug, Clone)]
pub struct MailSettings {
    /// `SMTP_URL`, e.g. `smtps://user:password@mail.example.com` (secret: it may
    /// carry a password). Without it, messages are written to `MAIL_DIR` instead.
    pub smtp_url: Option<SecretString>,
    /// `MAIL_FROM` (default `AIA <no-reply@localhost>`).
    pub from: String,
    /// `PUBLIC_BASE_URL`: where links in messages point (default `http://localhost:8080`).
    pub public_url: String,
    /// `MAIL_DIR`: where messages go without SMTP (default `.run/mail`).
    pub folder: PathBuf,
    /// `REQUIRE_EMAIL_VERIFICATION`: refuse logins of unverified users (default on in
    /// production, off in development).
    pub require_verification: bool,
    /// `EMAIL_VERIFICATION_TTL_SECONDS` (default 86400).
    pub verification_ttl: Duration,
    /// `PASSWORD_RESET_TTL_SECONDS` (default 3600).
    pub reset_ttl: Duration,
}

/// Login throttling and lockout (see the auth service's `lockout` module).
#[derive(Debug, Clone, Copy)]
pub struct LockoutSettings {
    /// `LOCKOUT_THRESHOLD`: failures on one account before it locks (default 10).
    pub threshold: u64,
    /// `LOCKOUT_DURATION_SECONDS`: how long a lock lasts (default 900).
    pub duration: Duration,
    /// `LOCKOUT_WINDOW_SECONDS`: the window failures are counted over (default 900).
    pub window: Duration,
    /// `LOGIN_IP_FAILURE_LIMIT`: failures from one IP before it is refused (default 50).
    pub ip_limit: u64,
    /// `LOGIN_BACKOFF_AFTER`: failures on one account from one IP before each try
    /// must wait, doubling (default 3).
    pub backoff_after: u64,
    /// `LOCKOUT_FAIL_OPEN`: let logins through when Redis is down (default false:
    /// logins answer 503 instead, so an attacker cannot switch throttling off).
    pub fail_open: bool,
}

/// The auth service.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// Shared settings.
    pub common: Common,
    /// `AUTH_GRPC_ADDR` (default `127.0.0.1:50051`).
    pub grpc_addr: SocketAddr,
    /// `AUTH_ADMIN_ADDR`: `/healthz`, `/readyz`, `/metrics` (default `127.0.0.1:9101`).
    pub admin_addr: SocketAddr,
    /// `SESSION_GRPC_URL` (default `http://127.0.0.1:50052`).
    pub session_url: String,
    /// `REVOCATION_STALE_AFTER_MS`, as the gateway's: `ValidateToken` checks
    /// revocation against an in-memory copy of the blacklist while it is this fresh.
    pub revocation_stale_after: Duration,
    /// `AUDIT_GRPC_URL` (default `http://127.0.0.1:50053`).
    pub audit_url: String,
    /// Access-token settings.
    pub tokens: TokenSettings,
    /// `JWT_SIGNING_KEY_FILE` or `JWT_SIGNING_KEY`: a key to import into the key
    /// store at start (if it is not there yet) and sign with from then on.
    pub signing_key: SigningKeySource,
    /// `ENCRYPTION_KEY`: seals private signing keys and TOTP secrets at rest.
    /// Required in production (32+ random characters); development generates one per
    /// start, so its stored keys do not survive a restart.
    pub encryption_key: Option<SecretString>,
    /// `SIGNING_KEY_ROTATION_DAYS`: rotate the signing key automatically when the
    /// active one is this old (default 0: only by `aia rotate-signing-key`).
    pub key_rotation: Option<Duration>,
    /// `SIGNING_KEY_PUBLISH_AHEAD_SECONDS`: an automatically rotated key is published
    /// in the JWKS this long before it signs (default 60), so that every verifier
    /// knows it first.
    pub key_publish_ahead: Duration,
    /// `SIGNING_KEY_RELOAD_SECONDS`: how often the key store is re-read, so that a
    /// rotation by the CLI or another replica takes effect (default 10).
    pub key_reload: Duration,
    /// Argon2id parameters.
    pub hashing: PasswordHashing,
    /// The password policy.
    pub password_policy: PasswordPolicySettings,
    /// Login throttling and lockout.
    pub lockout: LockoutSettings,
    /// Email delivery and the verification and reset tokens it carries.
    pub mail: MailSettings,
    /// `API_KEY_SECRET`: keys the HMAC under which API-key secrets are stored.
    /// Required in production (64+ random characters); development generates one per
    /// start, so its API keys stop working at a restart.
    pub api_key_secret: Option<SecretString>,
    /// `TOTP_ISSUER`: the name authenticator apps show for this service (default
    /// `AIA`; no `:`).
    pub totp_issuer: String,
}

/// The session service.
#[derive(Debug, Clone)]
pub struct SessionSettings {
    /// Shared settings.
    pub common: Common,
    /// `SESSION_GRPC_ADDR` (default `127.0.0.1:50052`).
    pub grpc_addr: SocketAddr,
    /// `SESSION_ADMIN_ADDR` (default `127.0.0.1:9102`).
    pub admin_addr: SocketAddr,
    /// `AUDIT_GRPC_URL` (default `http://127.0.0.1:50053`).
    pub audit_url: String,
    /// `ACCESS_TOKEN_TTL_SECONDS`: how long a revoked session's access tokens must stay
    /// blacklisted (default 900).
    pub access_ttl: Duration,
    /// `SESSION_IDLE_TTL_SECONDS`: a refresh token unused this long expires
    /// (default 30 days).
    pub idle_ttl: Duration,
    /// `SESSION_ABSOLUTE_TTL_SECONDS`: no session lives longer (default 90 days).
    pub absolute_ttl: Duration,
    /// `REFRESH_GRACE_SECONDS`: for this long after a rotation, presenting the old
    /// refresh token again returns the same successor instead of counting as reuse
    /// (default 10, at most 60; 0 turns the window off).
    pub refresh_grace: Duration,
    /// `SESSION_SECRET`: keys the derivation of successor refresh tokens. Required in
    /// production (64+ characters); development generates one per start.
    pub secret: Option<SecretString>,
}

/// The audit service.
#[derive(Debug, Clone)]
pub struct AuditSettings {
    /// Shared settings.
    pub common: Common,
    /// `AUDIT_GRPC_ADDR` (default `127.0.0.1:50053`).
    pub grpc_addr: SocketAddr,
    /// `AUDIT_ADMIN_ADDR` (default `127.0.0.1:9103`).
    pub admin_addr: SocketAddr,
    /// `AUDIT_RETENTION_DAYS`: events older than this are pruned hourly, keeping an
    /// anchor so the chain still verifies (default 0: kept forever).
    pub retention: Option<Duration>,
    /// The detectors' thresholds and windows.
    pub detectors: DetectorSettings,
}

/// When the audit service's detectors raise their alerts: COUNT/SECONDS, COUNT
/// events within a sliding window of SECONDS.
#[derive(Debug, Clone, Copy)]
pub struct DetectorSettings {
    /// `DETECT_BRUTE_FORCE`: failed logins on one account (default `10/300`).
    pub brute_force: crate::Rate,
    /// `DETECT_CREDENTIAL_STUFFING`: accounts one IP failed to log in to (default
    /// `5/600`).
    pub credential_stuffing: crate::Rate,
    /// `DETECT_STUFFING_UNKNOWN_EMAILS`: failed logins for unknown emails from one IP
    /// within the same window (default 10).
    pub stuffing_unknown_emails: u32,
    /// `DETECT_MANY_IPS`: IPs one account logged in from (default `4/600`).
    pub many_ips: crate::Rate,
    /// `DETECT_RATE_LIMIT_SURGE`: rate-limited requests, all keys (default `1000/300`).
    pub rate_limit_surge: crate::Rate,
}

impl DetectorSettings {
    fn read(env: &mut Env) -> Self {
        use crate::rate_limit::rate;
        Self {
            brute_force: rate(env, "DETECT_BRUTE_FORCE", 10, 300),
            credential_stuffing: rate(env, "DETECT_CREDENTIAL_STUFFING", 5, 600),
            stuffing_unknown_emails: env.parse_in(
                "DETECT_STUFFING_UNKNOWN_EMAILS",
                10,
                1,
                1_000_000,
            ),
            many_ips: rate(env, "DETECT_MANY_IPS", 4, 600),
            rate_limit_surge: rate(env, "DETECT_RATE_LIMIT_SURGE", 1000, 300),
        }
    }
}

impl Default for DetectorSettings {
    fn default() -> Self {
        Self::read(&mut Env::default())
    }
}

/// The gateway.
#[derive(Debug, Clone)]
pub struct GatewaySettings {
    /// Shared settings.
    pub common: Common,
    /// `GATEWAY_HTTP_ADDR`: the public port (default `127.0.0.1:8080`).
    pub http_addr: SocketAddr,
    /// `GATEWAY_ADMIN_ADDR` (default `127.0.0.1:9100`).
    pub admin_addr: SocketAddr,
    /// `AUTH_GRPC_URL` (default `http://127.0.0.1:50051`).
    pub auth_url: String,
    /// `SESSION_GRPC_URL` (default `http://127.0.0.1:50052`).
    pub session_url: String,
    /// Access-token settings (issuer and audience to require).
    pub tokens: TokenSettings,
    /// `GATEWAY_JSON_LIMIT_BYTES`: largest JSON body accepted (default 65536).
    pub json_limit: usize,
    /// `GATEWAY_WORKERS`: HTTP worker threads (default: the number of cores).
    pub workers: usize,
    /// `TRUSTED_PROXIES`: comma-separated CIDRs of the proxies in front of the
    /// gateway. Their forwarding header is believed only from them (default: none,
    /// so the TCP peer is the client).
    pub trusted_proxies: Vec<String>,
    /// `TRUSTED_PROXY_HEADER`: `x-forwarded-for` (default) or `forwarded`, the one
    /// header the trusted proxies write.
    pub forwarded_header: ForwardedHeader,
    /// `ALLOWED_HOSTS`: comma-separated host names (`api.example.com`) and wildcards
    /// (`*.example.com`, one label). Any other `Host` gets 400. Empty allows any host,
    /// which production refuses.
    pub allowed_hosts: Vec<String>,
    /// `CORS_ORIGINS`: comma-separated origins allowed to call the API from a
    /// browser, exact (`https://app.example.com`) or with one wildcard label
    /// (`https://*.example.com`, development and tests). Empty: no cross-origin
    /// access. Production accepts only exact `https://` origins.
    pub cors_origins: Vec<String>,
    /// `REVOCATION_STALE_AFTER_MS`: how long the in-memory blacklist is trusted
    /// without news from the session service (default 2000); after that, each request
    /// asks the session service.
    pub revocation_stale_after: Duration,
    /// Rate limits (`RATE_LIMIT_*`).
    pub rate_limits: crate::RateLimitSettings,
    /// The reverse proxy (`UPSTREAM*`).
    pub upstreams: crate::UpstreamSettings,
    /// `COOKIE_SECRET`: seals the refresh-token cookie of browser sessions. The
    /// gateway's own, never the session service's `SESSION_SECRET` (which keys the
    /// successors of refresh tokens: with it, the internet-facing gateway's secrets
    /// and an old refresh token would compute the current one). Required in
    /// production; development generates one per start (cookie sessions then end at
    /// a restart).
    pub cookie_secret: Option<SecretString>,
    /// `SESSION_IDLE_TTL_SECONDS` (the session service's): how long the session cookie
    /// is kept (default 30 days).
    pub session_cookie_max_age: Duration,
    /// `AUDIT_GRPC_URL` (default `http://127.0.0.1:50053`).
    pub audit_url: String,
    /// `AUDIT_REJECTIONS_WINDOW_SECONDS`: rejections are sent to audit as one event per
    /// reason and key per window (default 60).
    pub rejections_window: Duration,
    /// `USAGE_FLUSH_SECONDS`: how often the gateway sends its usage counts (requests
    /// per caller and route class per hour) to audit (default 30).
    pub usage_flush: Duration,
}

const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/aia";
const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, usize::from)
}

/// The password of a service's own database login, by the service's role
/// (`aia_auth`, ...).
pub type ServiceLogin = (&'static str, SecretString);

/// The services' own database logins, as `aia migrate` may create them: each
/// service's role (`aia_auth`, ...) with the variable of its login's password.
pub const SERVICE_LOGINS: [(&str, &str); 3] = [
    ("aia_auth", "AUTH_DATABASE_PASSWORD"),
    ("aia_session", "SESSION_DATABASE_PASSWORD"),
    ("aia_audit", "AUDIT_DATABASE_PASSWORD"),
];

impl Common {
    /// Reads only the shared settings (for tools such as `aia migrate`).
    pub fn from_env(mut env: Env) -> Result<Self, SettingsError> {
        let common = Self::read(&mut env);
        env.finish(common)
    }

    /// [`Common::from_env`], and the passwords of the services' database logins
    /// that are set (`AUTH_DATABASE_PASSWORD`, `SESSION_DATABASE_PASSWORD`,
    /// `AUDIT_DATABASE_PASSWORD`), for `aia migrate` to create or update the logins
    /// `aia_auth_login`, ... where no database administrator makes them (Compose).
    /// Each is a generated secret: 32+ characters that look random.
    pub fn with_service_logins(mut env: Env) -> Result<(Self, Vec<ServiceLogin>), SettingsError> {
        let common = Self::read(&mut env);
        let mut logins = Vec::new();
        for (role, variable) in SERVICE_LOGINS {
            let Some(password) = env.get(variable).map(str::to_owned) else {
                continue;
            };
            if password.chars().count() < 32 || !crate::production::looks_random(&password) {
                env.problem(
                    variable,
                    "must be 32+ characters that look random; generate one with `aia gen-secrets`",
                );
            } else if !password
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.~".contains(c))
            {
                env.problem(
                    variable,
                    "must be letters, digits and - _ . ~ only: it goes into the service's DATABASE_URL as it is",
                );
            }
            logins.push((role, SecretString::from(password)));
        }
        env.finish((common, logins))
    }

    fn read(env: &mut Env) -> Self {
        Self::read_for(env, true)
    }

    /// The shared settings of a service that `uses_database` or not (the gateway
    /// keeps no state in Postgres: it needs no `DATABASE_URL`).
    fn read_for(env: &mut Env, uses_database: bool) -> Self {
        let app_env = match env.string("APP_ENV", "development").as_str() {
            "development" | "dev" => AppEnv::Development,
            "production" | "prod" => AppEnv::Production,
            _ => {
                env.problem("APP_ENV", "must be `development` or `production`");
                AppEnv::Production
            }
        };
        let log_json = match env.get("LOG_FORMAT") {
            None => app_env.is_production(),
            Some("json") => true,
            Some("text") => false,
            Some(_) => {
                env.problem("LOG_FORMAT", "must be `json` or `text`");
                true
            }
        };
        let database_url = env.string("DATABASE_URL", DEFAULT_DATABASE_URL);
        let redis_url = env.string("REDIS_URL", DEFAULT_REDIS_URL);
        if app_env.is_production() {
            if uses_database {
                if env.get("DATABASE_URL").is_none() {
                    env.problem("DATABASE_URL", "must be set in production");
                }
                production::check_database_url(env, &database_url);
            }
            if env.get("REDIS_URL").is_none() {
                env.problem("REDIS_URL", "must be set in production");
            }
            production::check_redis_url(env, "REDIS_URL", &redis_url);
        }
        let internal_tls = match env.get("INTERNAL_TLS").unwrap_or("off") {
            "off" => {
                if app_env.is_production() {
                    env.problem(
                        "INTERNAL_TLS",
                        "production refuses plaintext internal gRPC: set `mtls` (with TLS_CA_FILE, \
                         TLS_CERT_FILE, TLS_KEY_FILE) or `mesh` if a service mesh provides mTLS",
                    );
                }
                InternalTls::Off
            }
            "mesh" => {
                let namespace = env.string("MESH_NAMESPACE", "");
                if !is_dns_label(&namespace) {
                    env.problem(
                        "MESH_NAMESPACE",
                        "is required when INTERNAL_TLS=mesh: the Kubernetes namespace the \
                         services run in (set it from the downward API, metadata.namespace); \
                         a caller's mesh identity must be of that namespace",
                    );
                }
                let trust_domain = env.string("MESH_TRUST_DOMAIN", "cluster.local");
                if !trust_domain.split('.').all(is_dns_label) {
                    env.problem(
                        "MESH_TRUST_DOMAIN",
                        "must be a DNS name (the mesh's identity trust domain, e.g. cluster.local)",
                    );
                }
                InternalTls::Mesh {
                    namespace,
                    trust_domain,
                }
            }
            "mtls" => {
                let mut file = |name: &str| match env.get(name).map(PathBuf::from) {
                    None => {
                        env.problem(name, "is required when INTERNAL_TLS=mtls (a PEM file)");
                        PathBuf::new()
                    }
                    Some(path) => {
                        production::check_pem_file(env, name, &path, None);
                        path
                    }
                };
                InternalTls::Mtls {
                    ca_file: file("TLS_CA_FILE"),
                    cert_file: file("TLS_CERT_FILE"),
                    key_file: file("TLS_KEY_FILE"),
                }
            }
            _ => {
                env.problem("INTERNAL_TLS", "must be `off`, `mtls` or `mesh`");
                InternalTls::Off
            }
        };
        let cleanup_every: u64 = env.parse_in("CLEANUP_INTERVAL_SECONDS", 3600, 0, 7 * 86_400);
        let cleanup_keep_days: u64 = env.parse_in("CLEANUP_KEEP_DAYS", 30, 0, 3650);
        Self {
            app_env,
            internal_tls,
            cleanup_interval: (cleanup_every > 0).then(|| Duration::from_secs(cleanup_every)),
            cleanup_keep: Duration::from_secs(cleanup_keep_days * 86_400),
            database_pool_size: env.parse_in("DATABASE_POOL_SIZE", 10, 1, 1000),
            database_url: database_url.into(),
            redis_url: redis_url.into(),
            redis_key_prefix: env.string("REDIS_KEY_PREFIX", ""),
            log_json,
            otlp_endpoint: env.get("OTEL_EXPORTER_OTLP_ENDPOINT").map(str::to_owned),
        }
    }
}

impl TokenSettings {
    fn read(env: &mut Env, app_env: AppEnv) -> Self {
        let algorithm = match env.get("JWT_ALGORITHM").unwrap_or("EdDSA") {
            "EdDSA" => JwtAlgorithm::EdDsa,
            "HS256" => JwtAlgorithm::Hs256,
            _ => {
                env.problem("JWT_ALGORITHM", "must be `EdDSA` (the default) or `HS256`");
                JwtAlgorithm::EdDsa
            }
        };
        let hs256_secret = match algorithm {
            JwtAlgorithm::EdDsa => None,
            JwtAlgorithm::Hs256 => {
                // Every service must hold the same secret, so even development
                // cannot make one up.
                let secret = production::secret(env, "JWT_SECRET_KEY", 64, app_env);
                match &secret {
                    None if !app_env.is_production() => env.problem(
                        "JWT_SECRET_KEY",
                        "is required with JWT_ALGORITHM=HS256 (64+ random characters)",
                    ),
                    Some(s) if secrecy::ExposeSecret::expose_secret(s).chars().count() < 64 => {
                        env.problem("JWT_SECRET_KEY", "must be at least 64 characters")
                    }
                    _ => {}
                }
                secret
            }
        };
        Self {
            algorithm,
            hs256_secret,
            issuer: env.string("JWT_ISSUER", "http://localhost:8080"),
            audience: env.string("JWT_AUDIENCE", "aia"),
            access_ttl: Self::access_ttl(env),
        }
    }

    /// `ACCESS_TOKEN_TTL_SECONDS` alone (for the session service, which needs no key).
    fn access_ttl(env: &mut Env) -> Duration {
        Duration::from_secs(env.parse_in("ACCESS_TOKEN_TTL_SECONDS", 900, 30, 86_400))
    }
}

/// A comma-separated list, trimmed, empty items dropped.
fn list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn addr(env: &mut Env, name: &str, default: &str) -> SocketAddr {
    let fallback = SocketAddr::from(([127, 0, 0, 1], 0));
    let default = default.parse().unwrap_or(fallback);
    env.parse(name, default)
}

impl AuthSettings {
    /// Reads the auth service's settings.
    pub fn from_env(mut env: Env) -> Result<Self, SettingsError> {
        let common = Common::read(&mut env);
        let signing_key = match (env.get("JWT_SIGNING_KEY_FILE"), env.get("JWT_SIGNING_KEY")) {
            (Some(_), Some(_)) => {
                env.problem(
                    "JWT_SIGNING_KEY",
                    "set either JWT_SIGNING_KEY or JWT_SIGNING_KEY_FILE, not both",
                );
                SigningKeySource::Ephemeral
            }
            (Some(path), None) => {
                let path = PathBuf::from(path);
                production::check_pem_file(
                    &mut env,
                    "JWT_SIGNING_KEY_FILE",
                    &path,
                    Some("PRIVATE KEY"),
                );
                SigningKeySource::File(path)
            }
            (None, Some(pem)) => SigningKeySource::Pem(pem.to_owned().into()),
            (None, None) => SigningKeySource::Ephemeral,
        };
        let encryption_key = production::secret(&mut env, "ENCRYPTION_KEY", 32, common.app_env);
        let rotation_days: u64 = env.parse_in("SIGNING_KEY_ROTATION_DAYS", 0, 0, 3650);
        let settings = Self {
            encryption_key,
            key_rotation: (rotation_days > 0).then(|| Duration::from_secs(rotation_days * 86_400)),
            key_reload: Duration::from_secs(env.parse_in(
                "SIGNING_KEY_RELOAD_SECONDS",
                10,
                1,
                3600,
            )),
            key_publish_ahead: Duration::from_secs(env.parse_in(
                "SIGNING_KEY_PUBLISH_AHEAD_SECONDS",
                60,
                0,
                86_400,
            )),
            grpc_addr: addr(&mut env, "AUTH_GRPC_ADDR", "127.0.0.1:50051"),
            admin_addr: addr(&mut env, "AUTH_ADMIN_ADDR", "127.0.0.1:9101"),
            session_url: env.string("SESSION_GRPC_URL", "http://127.0.0.1:50052"),
            revocation_stale_after: revocation_stale_after(&mut env),
            audit_url: env.string("AUDIT_GRPC_URL", "http://127.0.0.1:50053"),
            tokens: TokenSettings::read(&mut env, common.app_env),
            signing_key,
            hashing: PasswordHashing {
                memory_kib: env.parse_in("ARGON2_MEMORY_KIB", 19_456, 8, 4_194_304),
                iterations: env.parse_in("ARGON2_ITERATIONS", 2, 1, 100),
                parallelism: env.parse_in("ARGON2_PARALLELISM", 1, 1, 64),
                concurrency: env.parse_in("PASSWORD_HASHING_CONCURRENCY", cores(), 1, 1024),
            },
            api_key_secret: production::secret(&mut env, "API_KEY_SECRET", 64, common.app_env),
            totp_issuer: env.string("TOTP_ISSUER", "AIA"),
            mail: MailSettings {
                smtp_url: env
                    .get("SMTP_URL")
                    .map(|u| SecretString::from(u.to_owned())),
                from: env.string("MAIL_FROM", "AIA <no-reply@localhost>"),
                public_url: {
                    let url = env.string("PUBLIC_BASE_URL", "http://localhost:8080");
                    if common.app_env.is_production() {
                        let set = env.get("PUBLIC_BASE_URL").is_some();
                        production::check_public_url(&mut env, set, &url);
                    }
                    url
                },
                folder: PathBuf::from(env.string("MAIL_DIR", ".run/mail")),
                require_verification: env
                    .flag("REQUIRE_EMAIL_VERIFICATION", common.app_env.is_production()),
                verification_ttl: Duration::from_secs(env.parse_in(
                    "EMAIL_VERIFICATION_TTL_SECONDS",
                    86_400,
                    60,
                    30 * 86_400,
                )),
                reset_ttl: Duration::from_secs(env.parse_in(
                    "PASSWORD_RESET_TTL_SECONDS",
                    3600,
                    60,
                    86_400,
                )),
            },
            lockout: LockoutSettings {
                threshold: env.parse_in("LOCKOUT_THRESHOLD", 10, 1, 1000),
                duration: Duration::from_secs(env.parse_in(
                    "LOCKOUT_DURATION_SECONDS",
                    900,
                    1,
                    86_400,
                )),
                window: Duration::from_secs(env.parse_in("LOCKOUT_WINDOW_SECONDS", 900, 1, 86_400)),
                ip_limit: env.parse_in("LOGIN_IP_FAILURE_LIMIT", 50, 1, 1_000_000),
                backoff_after: env.parse_in("LOGIN_BACKOFF_AFTER", 3, 1, 1000),
                fail_open: env.flag("LOCKOUT_FAIL_OPEN", false),
            },
            password_policy: PasswordPolicySettings {
                min_length: env.parse_in("PASSWORD_MIN_LENGTH", 12, 1, 128),
                require_uppercase: env.flag("PASSWORD_REQUIRE_UPPERCASE", false),
                require_lowercase: env.flag("PASSWORD_REQUIRE_LOWERCASE", false),
                require_numbers: env.flag("PASSWORD_REQUIRE_NUMBERS", false),
                require_symbols: env.flag("PASSWORD_REQUIRE_SYMBOLS", false),
                history: env.parse_in("PASSWORD_HISTORY", 5, 0, 24),
            },
            common,
        };
        if settings.totp_issuer.is_empty() || settings.totp_issuer.contains(':') {
            env.problem("TOTP_ISSUER", "must be a non-empty name without ':'");
        }
        if settings.common.app_env.is_production() {
            production::check_password_hashing(&mut env, &settings.hashing);
            production::check_password_min_length(&mut env, settings.password_policy.min_length);
            production::check_smtp_url(
                &mut env,
                settings
                    .mail
                    .smtp_url
                    .as_ref()
                    .map(ExposeSecret::expose_secret),
            );
        }
        // A replaced key stays published for the access-token lifetime and a minute:
        // a replica that re-reads the store less often would go on signing with (and
        // publishing) a key the others have withdrawn.
        if settings.key_reload >= settings.tokens.access_ttl + Duration::from_secs(60) {
            env.problem(
                "SIGNING_KEY_RELOAD_SECONDS",
                "must be shorter than the access-token lifetime plus a minute (how long a replaced signing key stays published)",
            );
        }
        env.finish(settings)
    }
}

impl SessionSettings {
    /// Reads the session service's settings.
    pub fn from_env(mut env: Env) -> Result<Self, SettingsError> {
        let common = Common::read(&mut env);
        let settings = Self {
            grpc_addr: addr(&mut env, "SESSION_GRPC_ADDR", "127.0.0.1:50052"),
            admin_addr: addr(&mut env, "SESSION_ADMIN_ADDR", "127.0.0.1:9102"),
            audit_url: env.string("AUDIT_GRPC_URL", "http://127.0.0.1:50053"),
            access_ttl: TokenSettings::access_ttl(&mut env),
            idle_ttl: Duration::from_secs(env.parse_in(
                "SESSION_IDLE_TTL_SECONDS",
                30 * 86_400,
                60,
                365 * 86_400,
            )),
            absolute_ttl: Duration::from_secs(env.parse_in(
                "SESSION_ABSOLUTE_TTL_SECONDS",
                90 * 86_400,
                60,
                3 * 365 * 86_400,
            )),
            refresh_grace: Duration::from_secs(env.parse_in("REFRESH_GRACE_SECONDS", 10, 0, 60)),
            secret: production::secret(&mut env, "SESSION_SECRET", 64, common.app_env),
            common,
        };
        env.finish(settings)
    }
}

impl AuditSettings {
    /// Reads the audit service's settings.
    pub fn from_env(mut env: Env) -> Result<Self, SettingsError> {
        let common = Common::read(&mut env);
        let settings = Self {
            grpc_addr: addr(&mut env, "AUDIT_GRPC_ADDR", "127.0.0.1:50053"),
            admin_addr: addr(&mut env, "AUDIT_ADMIN_ADDR", "127.0.0.1:9103"),
            retention: match env.parse_in::<u64>("AUDIT_RETENTION_DAYS", 0, 0, 36_500) {
                0 => None,
                1..30 => {
                    env.problem(
                        "AUDIT_RETENTION_DAYS",
                        "must be 0 (keep everything) or at least 30: audit.prune refuses less",
                    );
                    None
                }
                days => Some(Duration::from_secs(days * 86_400)),
            },
            detectors: DetectorSettings::read(&mut env),
            common,
        };
        env.finish(settings)
    }
}

impl GatewaySettings {
    /// Reads the gateway's settings.
    pub fn from_env(mut env: Env) -> Result<Self, SettingsError> {
        let common = Common::read_for(&mut env, false);
        let settings = Self {
            http_addr: addr(&mut env, "GATEWAY_HTTP_ADDR", "127.0.0.1:8080"),
            admin_addr: addr(&mut env, "GATEWAY_ADMIN_ADDR", "127.0.0.1:9100"),
            auth_url: env.string("AUTH_GRPC_URL", "http://127.0.0.1:50051"),
            session_url: env.string("SESSION_GRPC_URL", "http://127.0.0.1:50052"),
            tokens: TokenSettings::read(&mut env, common.app_env),
            json_limit: env.parse_in("GATEWAY_JSON_LIMIT_BYTES", 65_536, 1_024, 16 << 20),
            workers: env.parse_in("GATEWAY_WORKERS", cores(), 1, 256),
            trusted_proxies: {
                let proxies = list(&env.string("TRUSTED_PROXIES", ""));
                production::check_trusted_proxies(&mut env, &proxies, common.app_env);
                proxies
            },
            forwarded_header: match env.get("TRUSTED_PROXY_HEADER").map(str::parse) {
                None => ForwardedHeader::default(),
                Some(Ok(header)) => header,
                Some(Err(())) => {
                    env.problem(
                        "TRUSTED_PROXY_HEADER",
                        "must be x-forwarded-for or forwarded (the header your proxies write)",
                    );
                    ForwardedHeader::default()
                }
            },
            cors_origins: list(&env.string("CORS_ORIGINS", ""))
                .into_iter()
                .map(|o| o.to_lowercase())
                .collect(),
            allowed_hosts: list(&env.string("ALLOWED_HOSTS", ""))
                .into_iter()
                .map(|h| h.to_lowercase())
                .collect(),
            revocation_stale_after: revocation_stale_after(&mut env),
            rate_limits: crate::RateLimitSettings::read(&mut env, common.app_env.is_production()),
            upstreams: crate::UpstreamSettings::read(&mut env, common.app_env.is_production()),
            cookie_secret: production::secret(&mut env, "COOKIE_SECRET", 64, common.app_env),
            audit_url: env.string("AUDIT_GRPC_URL", "http://127.0.0.1:50053"),
            rejections_window: Duration::from_secs(env.parse_in(
                "AUDIT_REJECTIONS_WINDOW_SECONDS",
                60,
                1,
                3600,
            )),
            usage_flush: Duration::from_secs(env.parse_in("USAGE_FLUSH_SECONDS", 30, 1, 3600)),
            session_cookie_max_age: Duration::from_secs(env.parse_in(
                "SESSION_IDLE_TTL_SECONDS",
                30 * 86_400,
                60,
                365 * 86_400,
            )),
            common,
        };
        if settings.common.app_env.is_production() && settings.allowed_hosts.is_empty() {
            env.problem(
                "ALLOWED_HOSTS",
                "must list the gateway's public host names in production",
            );
        }
        if settings.common.app_env.is_production()
            && settings
                .cors_origins
                .iter()
                .any(|o| o.contains('*') || !o.starts_with("https://"))
        {
            env.problem(
                "CORS_ORIGINS",
                "must list exact https:// origins in production (no `*`, no wildcard \
                 subdomains, no http://): e.g. `https://app.example.com`",
            );
        }
        env.finish(settings)
    }
}

/// `REVOCATION_STALE_AFTER_MS` (default 2000, 600 to 60,000): how long an in-memory
/// copy of the blacklist is trusted without news from the session service.
fn revocation_stale_after(env: &mut Env) -> Duration {
    Duration::from_millis(env.parse_in("REVOCATION_STALE_AFTER_MS", 2000, 600, 60_000))
}

/// A DNS label (RFC 1123), as Kubernetes namespaces are.
fn is_dns_label(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn development_needs_nothing_set() {
        let settings = AuthSettings::from_env(Env::default());
        assert!(settings.is_ok(), "{settings:?}");
        assert!(matches!(
            settings.ok().map(|s| s.signing_key),
            Some(SigningKeySource::Ephemeral)
        ));
    }

    #[test]
    fn production_names_every_problem_at_once() {
        let env: Env = [
            ("APP_ENV", "production"),
            ("DATABASE_URL", "postgres://aia@db.internal/aia"),
            ("ARGON2_MEMORY_KIB", "1024"),
        ]
        .into_iter()
        .collect();
        let problems = AuthSettings::from_env(env)
            .err()
            .map(|e| e.0)
            .unwrap_or_default();
        let vars: Vec<&str> = problems.iter().map(|p| p.variable.as_str()).collect();
        assert!(vars.contains(&"DATABASE_URL"), "{vars:?}");
        assert!(vars.contains(&"REDIS_URL"), "{vars:?}");
        assert!(vars.contains(&"ENCRYPTION_KEY"), "{vars:?}");
        assert!(vars.contains(&"ARGON2_MEMORY_KIB"), "{vars:?}");
        assert!(vars.contains(&"INTERNAL_TLS"), "{vars:?}");
    }

    #[test]
    fn signing_keys_are_reloaded_within_their_publish_window() {
        let reload = |seconds: &str| {
            let env: Env = [
                ("ACCESS_TOKEN_TTL_SECONDS", "300"),
                ("SIGNING_KEY_RELOAD_SECONDS", seconds),
            ]
            .into_iter()
            .collect();
            AuthSettings::from_env(env)
                .err()
                .map(|e| e.0.iter().map(|p| p.variable.clone()).collect::<Vec<_>>())
                .unwrap_or_default()
        };
        assert_eq!(reload("359"), Vec::<String>::new());
        assert_eq!(reload("360"), ["SIGNING_KEY_RELOAD_SECONDS"]);
    }

    #[test]
    fn mtls_needs_its_three_files() {
        let env: Env = [
            ("INTERNAL_TLS", "mtls"),
            ("TLS_CA_FILE", "/nonexistent/ca.pem"),
        ]
        .into_iter()
        .collect();
        let problems = AuditSettings::from_env(env)
            .err()
            .map(|e| e.0)
            .unwrap_or_default();
        let vars: Vec<&str> = problems.iter().map(|p| p.variable.as_str()).collect();
        // The CA file is named but cannot be read; the other two are missing.
        assert_eq!(vars, vec!["TLS_CA_FILE", "TLS_CERT_FILE", "TLS_KEY_FILE"]);
    }

    #[test]
    fn production_accepts_a_complete_configuration() {
        let alphabet: Vec<char> = ('A'..='Z').chain('a'..='z').chain('0'..='9').collect();
        let strong: String = (0..40)
            .map(|i| alphabet[(i * 23 + 5) % alphabet.len()])
            .collect();
        let base64: Vec<char> = alphabet.iter().copied().chain(['+', '/']).collect();
        let strong64: String = (0..64).map(|i| base64[(i * 37 + 11) % 64]).collect();
        let env: Env = [
            ("APP_ENV", "production"),
            (
                "DATABASE_URL",
                "postgres://aia@db.internal/aia?sslmode=verify-full",
            ),
            ("REDIS_URL", "rediss://:pw@cache.internal:6380"),
            ("ENCRYPTION_KEY", &strong),
            ("API_KEY_SECRET", &strong64),
            ("INTERNAL_TLS", "mesh"),
            ("MESH_NAMESPACE", "aia"),
            ("SMTP_URL", "smtps://aia:pw@mail.example.com"),
            ("PUBLIC_BASE_URL", "https://app.example.com"),
        ]
        .into_iter()
        .collect();
        let settings = AuthSettings::from_env(env);
        assert!(settings.is_ok(), "{settings:?}");
    }

    #[test]
    fn a_typo_in_app_env_is_not_development() {
        let env: Env = [("APP_ENV", "prodution")].into_iter().collect();
        let problems = AuditSettings::from_env(env)
            .err()
            .map(|e| e.0)
            .unwrap_or_default();
        assert!(problems.iter().any(|p| p.variable == "APP_ENV"));
    }
}
