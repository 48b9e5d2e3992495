//! `aia`: the operator's command line.
//!
//! It reads the same environment as the services (`DATABASE_URL`, `APP_ENV`, ...),
//! through the same settings code.

// A command-line tool: standard output is its interface.
#![allow(clippy::print_stdout)]

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use aia_settings::{Common, Env};
use clap::{Parser, Subcommand};
use secrecy::ExposeSecret;

/// Operate an AIA security platform deployment.
#[derive(Parser)]
#[command(name = "aia", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the database if it is missing, then apply pending migrations; with
    /// AUTH_DATABASE_PASSWORD, SESSION_DATABASE_PASSWORD or AUDIT_DATABASE_PASSWORD
    /// set, then create or update that service's own login (aia_auth_login, ...).
    Migrate {
        /// Only list pending migrations; exit 1 if there are any.
        #[arg(long)]
        check: bool,
    },
    /// Create an administrator. The password is read from AIA_ADMIN_PASSWORD, or else
    /// from the first line of standard input; it must pass the password policy.
    CreateAdmin {
        /// The administrator's email address.
        #[arg(long)]
        email: String,
    },
    /// Lift the lockout of an account (needs REDIS_URL and REDIS_KEY_PREFIX as the
    /// auth service has them).
    UnlockUser {
        /// The account's email address.
        #[arg(long)]
        email: String,
    },
    /// Check the audit trail's hash chain (needs DATABASE_URL); exit 1 and name the
    /// first broken event if any was altered, removed or inserted out of turn.
    VerifyAuditChain {
        /// First sequence number to check.
        #[arg(long, default_value_t = 1)]
        from: i64,
        /// Last sequence number to check (default: the newest).
        #[arg(long)]
        to: Option<i64>,
        /// `SEQ:HASH`, the head an earlier run printed, kept outside the database:
        /// the chain must still hold that event with that hash (catches events
        /// removed from the end and a chain recomputed after an edit).
        #[arg(long)]
        checkpoint: Option<aia_audit::Checkpoint>,
    },
    /// Seal the secrets auth keeps at rest (private signing keys, TOTP secrets) again
    /// under a new ENCRYPTION_KEY, in one transaction. Reads the current key from
    /// ENCRYPTION_KEY and the new one from NEW_ENCRYPTION_KEY (never from the command
    /// line). Stop the auth service first, and start it with the new key afterwards.
    RotateEncryptionKey,
    /// Check that the environment is ready for production, with the same rules every
    /// service applies at start-up: print every problem with its variable and the fix.
    /// Exit 0 only when all four services would start in production on it.
    CheckConfig {
        /// Also read variables from this file (`KEY=VALUE` lines, as Docker Compose's
        /// `env_file`); they take precedence over the process environment.
        #[arg(long)]
        env_file: Option<PathBuf>,
        /// `text` for people, `json` for pipelines.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Print a complete set of strong secrets (ENCRYPTION_KEY, API_KEY_SECRET,
    /// SESSION_SECRET, COOKIE_SECRET, and the Compose stack's database and Redis
    /// passwords) as a
    /// `.env` file or a Kubernetes Secret manifest.
    GenSecrets {
        /// `env` (a `.env` file) or `k8s` (a Secret manifest).
        #[arg(long, value_enum, default_value_t = SecretsFormat::Env)]
        format: SecretsFormat,
        /// Write to this file (created with mode 0600; an existing file is kept)
        /// instead of standard output.
        #[arg(long)]
        output: Option<PathBuf>,
        /// Also generate JWT_SECRET_KEY, for JWT_ALGORITHM=HS256 deployments.
        #[arg(long)]
        hs256: bool,
        /// The Secret's name (k8s format).
        #[arg(long, default_value = "aia-secrets")]
        name: String,
        /// The Secret's namespace (k8s format; default: none, kustomize sets it).
        #[arg(long)]
        namespace: Option<String>,
    },
    /// Exit 0 if URL answers 2xx within two seconds (a container health check that
    /// needs no shell or curl in the image).
    Healthcheck {
        /// e.g. `http://127.0.0.1:9100/readyz` (a service's admin port).
        url: String,
    },
    /// Remove audit events older than N days (needs DATABASE_URL), keeping an anchor
    /// so that `verify-audit-chain` still checks what remains; the newest event
    /// always stays. The audit service does this itself with AUDIT_RETENTION_DAYS.
    PruneAudit {
        /// Remove events recorded more than this many days ago (30 to 36500: the
        /// database refuses a shorter retention).
        #[arg(long, value_parser = clap::value_parser!(u32).range(30..=36_500))]
        older_than_days: u32,
    },
    /// Print a new Ed25519 signing key (PKCS#8 PEM) for JWT_SIGNING_KEY_FILE.
    GenSigningKey,
    /// Measure raw argon2id hashes per second with the auth service's parameters
    /// (ARGON2_MEMORY_KIB, ARGON2_ITERATIONS, ARGON2_PARALLELISM): the reference
    /// `make bench` compares the login rate with.
    BenchHash {
        /// How long to hash.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Threads (default: the cores, as PASSWORD_HASHING_CONCURRENCY).
        #[arg(long)]
        threads: Option<usize>,
    },
    /// `auth.ValidateToken` against a bare tonic rpc (`grpc.health.v1.Health/Check` on
    /// a server with nothing else, started with --serve-bare), same client, same run.
    /// The access token to validate is read from AIA_BENCH_TOKEN.
    BenchGrpc {
        /// Serve the bare rpc on this address instead, until stopped.
        #[arg(long)]
        serve_bare: Option<std::net::SocketAddr>,
        /// The bare server's URL.
        #[arg(long, default_value = "http://127.0.0.1:15060")]
        bare_url: String,
        /// The auth service's gRPC URL.
        #[arg(long, default_value = "http://127.0.0.1:50051")]
        auth_url: String,
        /// Concurrent calls in flight (over one HTTP/2 connection per target).
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Seconds of load per target.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Add a new signing key to the key store (needs DATABASE_URL and ENCRYPTION_KEY).
    /// It is published at once and signs after --activate-in seconds; the old key
    /// stays published until the tokens it signed have expired.
    RotateSigningKey {
        /// Seconds before the new key signs. Leave time for every gateway to fetch the
        /// key set (they do every 30 s).
        #[arg(long, default_value_t = 60)]
        activate_in: u32,
    },
    /// Withdraw a signing key after a compromise (needs DATABASE_URL): it stops being
    /// published, so every token it signed stops verifying within
    /// SIGNING_KEY_RELOAD_SECONDS at auth and 30 s at gateways. The key that signs
    /// now is refused: run `aia rotate-signing-key --activate-in 0` first and wait for
    /// the new key to sign. Users keep their sessions (refresh tokens are not signed).
    WithdrawSigningKey {
        /// The key's `kid` (the JWT header's, or the JWKS's).
        kid: String,
    },
}

/// How `check-config` reports.
#[derive(Clone, Copy, clap::ValueEnum)]
enum Format {
    Text,
    Json,
}

/// What `gen-secrets` writes.
#[derive(Clone, Copy, clap::ValueEnum)]
enum SecretsFormat {
    Env,
    K8s,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Migrate { check } => migrate(check).await,
        Command::CreateAdmin { email } => create_admin(&email).await,
        Command::UnlockUser { email } => {
            let settings = aia_settings::AuthSettings::from_env(Env::from_process());
            match settings {
                Ok(settings) => aia_auth::unlock_user(&settings, &email)
                    .await
                    .map(|was_locked| {
                        println!(
                            "{email}: {}",
                            if was_locked {
                                "unlocked"
                            } else {
                                "was not locked"
                            }
                        );
                        ExitCode::SUCCESS
                    }),
                Err(error) => Err(error.into()),
            }
        }
        Command::RotateSigningKey { activate_in } => rotate_signing_key(activate_in).await,
        Command::WithdrawSigningKey { kid } => withdraw_signing_key(&kid).await,
        Command::VerifyAuditChain {
            from,
            to,
            checkpoint,
        } => verify_audit_chain(from, to, checkpoint).await,
        Command::RotateEncryptionKey => rotate_encryption_key().await,
        Command::PruneAudit { older_than_days } => prune_audit(older_than_days).await,
        Command::BenchHash { seconds, threads } => bench_hash(seconds, threads),
        Command::BenchGrpc {
            serve_bare: Some(addr),
            ..
        } => aia_admin::bench_grpc::serve_bare(addr)
            .await
            .map(|()| ExitCode::SUCCESS),
        Command::BenchGrpc {
            serve_bare: None,
            bare_url,
            auth_url,
            concurrency,
            seconds,
        } => bench_grpc(&bare_url, &auth_url, concurrency, seconds).await,
        Command::CheckConfig { env_file, format } => check_config(env_file.as_deref(), format),
        Command::GenSecrets {
            format,
            output,
            hs256,
            name,
            namespace,
        } => gen_secrets(
            format,
            output.as_deref(),
            hs256,
            &name,
            namespace.as_deref(),
        ),
        Command::Healthcheck { url } => healthcheck(&url).await,
        Command::GenSigningKey => aia_tokens::SigningKey::generate_pem()
            .map(|pem| {
                print!("{pem}");
                ExitCode::SUCCESS
            })
            .map_err(Into::into),
    };
    result.unwrap_or_else(|error| {
        eprintln!("aia: {error:#}");
        ExitCode::FAILURE
    })
}

async fn migrate(check: bool) -> anyhow::Result<ExitCode> {
    let (common, logins) = Common::with_service_logins(Env::from_process())?;
    let url = common.database_url.expose_secret();
    if check {
        let pending = aia_db::pending_migrations(url).await?;
        for name in &pending {
            println!("pending: {name}");
        }
        return Ok(if pending.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        });
    }
    if aia_db::ensure_database(url).await? {
        println!("created the database");
    }
    let applied = aia_db::migrate(url).await?;
    if applied.is_empty() {
        println!("the database is up to date");
    }
    for name in applied {
        println!("applied: {name}");
    }
    for (role, password) in logins {
        let created = aia_db::set_service_login(url, role, password.expose_secret()).await?;
        let done = if created { "created" } else { "updated" };
        println!("{done} the login {role}_login");
    }
    Ok(ExitCode::SUCCESS)
}

async fn rotate_signing_key(activate_in: u32) -> anyhow::Result<ExitCode> {
    let settings = aia_settings::AuthSettings::from_env(Env::from_process())?;
    anyhow::ensure!(
        settings.encryption_key.is_some(),
        "ENCRYPTION_KEY must be set to the value the auth service uses"
    );
    let sealing = aia_auth::sealing_key(&settings)?;
    let pool = aia_db::pool(settings.common.database_url.expose_secret(), 1)?;
    let activates = chrono::Utc::now() + chrono::Duration::seconds(i64::from(activate_in));
    let kid = aia_auth::rotate_signing_key(&pool, &sealing, activates).await?;
    println!(
        "new signing key {kid}: published now, signs from {}",
        activates.to_rfc3339()
    );
    Ok(ExitCode::SUCCESS)
}

async fn withdraw_signing_key(kid: &str) -> anyhow::Result<ExitCode> {
    let settings = aia_settings::AuthSettings::from_env(Env::from_process())?;
    anyhow::ensure!(
        settings.tokens.algorithm != aia_settings::JwtAlgorithm::Hs256,
        "HS256 mode signs with JWT_SECRET_KEY, not with stored keys: change that secret instead"
    );
    let message = match aia_auth::withdraw_signing_key(&settings, kid).await? {
        aia_auth::Withdrawal::Withdrawn => {
            println!(
                "signing key {kid} withdrawn: tokens it signed stop verifying as each auth \
                 replica and gateway reloads the key set"
            );
            return Ok(ExitCode::SUCCESS);
        }
        aia_auth::Withdrawal::AlreadyWithdrawn => {
            println!("signing key {kid} was withdrawn already");
            return Ok(ExitCode::SUCCESS);
        }
        aia_auth::Withdrawal::NotFound => format!("no signing key {kid}"),
        aia_auth::Withdrawal::Signing => format!(
            "signing key {kid} still signs (no newer key has activated): run \
             `aia rotate-signing-key --activate-in 0`, then withdraw it"
        ),
    };
    eprintln!("{message}");
    Ok(ExitCode::FAILURE)
}

/// The new administrator's password: asked on the terminal without echo (twice) when
/// standard input is one; else one line of standard input (a pipe, a file, a
/// secret mounted by the orchestrator); `AIA_ADMIN_PASSWORD` first if set (for
/// automation: an environment is readable by the user's other processes, so a person
/// at a terminal is better asked).
fn admin_password(email: &str) -> anyhow::Result<String> {
    use std::io::IsTerminal;

    if let Ok(password) = std::env::var("AIA_ADMIN_PASSWORD") {
        return Ok(password);
    }
    if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password(format!("Password for {email}: "))?;
        let again = rpassword::prompt_password("The same password again: ")?;
        anyhow::ensure!(
            first == again,
            "the two passwords differ; no administrator was created"
        );
        return Ok(first);
    }
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

async fn create_admin(email: &str) -> anyhow::Result<ExitCode> {
    let settings = aia_settings::AuthSettings::from_env(Env::from_process())?;
    let password = admin_password(email)?;
    let id = aia_auth::create_admin(&settings, email, &password).await?;
    println!("created administrator {email} ({id})");
    Ok(ExitCode::SUCCESS)
}

async fn verify_audit_chain(
    from: i64,
    to: Option<i64>,
    checkpoint: Option<aia_audit::Checkpoint>,
) -> anyhow::Result<ExitCode> {
    let common = Common::from_env(Env::from_process())?;
    let pool = aia_db::pool(common.database_url.expose_secret(), 1)?;
    let report = aia_audit::verify_chain(
        &pool,
        from.max(1),
        to.unwrap_or(i64::MAX),
        checkpoint.as_ref(),
    )
    .await?;
    Ok(match report.broken_seq {
        None => {
            println!("audit chain intact: {} events checked", report.checked);
            if let Some(checkpoint) = checkpoint.filter(|_| report.checkpoint_pruned) {
                println!(
                    "checkpoint seq {} was removed by retention: only its anchor vouches for it",
                    checkpoint.seq
                );
            }
            match (report.head, to) {
                (Some(head), None) => println!(
                    "head {head} (keep it outside the database; next time pass --checkpoint {head})"
                ),
                (Some(head), Some(_)) => println!("newest event checked {head}"),
                (None, _) => {}
            }
            ExitCode::SUCCESS
        }
        Some(seq) => {
            eprintln!(
                "audit chain BROKEN at event seq {seq}: {} ({} events checked)",
                report.reason.unwrap_or_default(),
                report.checked
            );
            ExitCode::FAILURE
        }
    })
}

fn check_config(env_file: Option<&Path>, format: Format) -> anyhow::Result<ExitCode> {
    let mut vars: HashMap<String, String> = std::env::vars().collect();
    if let Some(path) = env_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading {}: {}", path.display(), e.kind()))?;
        let file = aia_admin::env_file::parse(&text)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        vars.extend(file);
    }
    let problems = aia_settings::production_readiness(&vars);
    match format {
        Format::Json => {
            let report = serde_json::json!({
                "ready": problems.is_empty(),
                "problems": problems
                    .iter()
                    .map(|p| serde_json::json!({"variable": p.variable, "message": p.message}))
                    .collect::<Vec<_>>(),
            });
            println!("{report:#}");
        }
        Format::Text if problems.is_empty() => {
            println!("ready for production: every service starts on this configuration");
        }
        Format::Text => {
            for p in &problems {
                println!("✗ {}: {}", p.variable, p.message);
            }
            println!(
                "{} problem{}: not ready for production",
                problems.len(),
                if problems.len() == 1 { "" } else { "s" }
            );
        }
    }
    Ok(if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn gen_secrets(
    format: SecretsFormat,
    output: Option<&Path>,
    hs256: bool,
    name: &str,
    namespace: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let set = aia_admin::secrets::generate(hs256)?;
    let text = match format {
        SecretsFormat::Env => aia_admin::secrets::env_file(&set),
        SecretsFormat::K8s => aia_admin::secrets::kubernetes_secret(&set, name, namespace),
    };
    match output {
        None => print!("{text}"),
        Some(path) => {
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options
                .open(path)
                .map_err(|e| anyhow::anyhow!("creating {}: {}", path.display(), e.kind()))?;
            file.write_all(text.as_bytes())?;
            eprintln!("wrote {} secrets to {}", set.len(), path.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn healthcheck(url: &str) -> anyhow::Result<ExitCode> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let status = client.get(url).send().await?.status();
    if status.is_success() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("aia: {url} answered {status}");
        Ok(ExitCode::FAILURE)
    }
}

async fn rotate_encryption_key() -> anyhow::Result<ExitCode> {
    let settings = aia_settings::AuthSettings::from_env(Env::from_process())?;
    anyhow::ensure!(
        settings.encryption_key.is_some(),
        "ENCRYPTION_KEY must be set to the value the auth service uses now"
    );
    let current = aia_auth::sealing_key(&settings)?;
    // The new key must pass the production rules whatever APP_ENV says.
    let mut env = Env::from_process();
    let new = aia_settings::production::secret(
        &mut env,
        "NEW_ENCRYPTION_KEY",
        32,
        aia_settings::AppEnv::Production,
    );
    let new = env
        .finish(new)?
        .ok_or_else(|| anyhow::anyhow!("NEW_ENCRYPTION_KEY is not set"))?;
    let new = aia_tokens::seal::SealingKey::derive(new.expose_secret().as_bytes())
        .map_err(|e| anyhow::anyhow!("NEW_ENCRYPTION_KEY: {e}"))?;
    let pool = aia_db::pool(settings.common.database_url.expose_secret(), 1)?;
    let report = aia_auth::reseal(&pool, &current, &new).await?;
    println!(
        "re-sealed {} signing key(s) and {} TOTP secret(s) under key {} ({} already were); \
         start auth with ENCRYPTION_KEY set to the new value",
        report.signing_keys,
        report.totp_secrets,
        new.id(),
        report.already
    );
    Ok(ExitCode::SUCCESS)
}

async fn prune_audit(older_than_days: u32) -> anyhow::Result<ExitCode> {
    let common = Common::from_env(Env::from_process())?;
    let pool = aia_db::pool(common.database_url.expose_secret(), 1)?;
    let before = chrono::Utc::now()
        .checked_sub_signed(chrono::Duration::days(i64::from(older_than_days)))
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
    let pruned = aia_audit::prune(&pool, before).await?;
    match pruned.anchor_seq {
        Some(seq) => println!(
            "pruned {} audit events recorded before {}; the chain now starts after anchor seq {seq}",
            pruned.pruned,
            before.to_rfc3339()
        ),
        None => println!("no audit event is older than {older_than_days} days"),
    }
    Ok(ExitCode::SUCCESS)
}

async fn bench_grpc(
    bare_url: &str,
    auth_url: &str,
    concurrency: usize,
    seconds: u64,
) -> anyhow::Result<ExitCode> {
    let token = std::env::var("AIA_BENCH_TOKEN")
        .map_err(|_| anyhow::anyhow!("AIA_BENCH_TOKEN must hold a valid access token"))?;
    let duration = Duration::from_secs(seconds.max(1));
    let (bare, validate) =
        aia_admin::bench_grpc::compare(bare_url, auth_url, token, concurrency.max(1), duration)
            .await?;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    // One line per target, then the ratios: easy to read and to parse.
    for (name, f) in [("bare", &bare), ("validate", &validate)] {
        println!(
            "{name}: {:.0} calls/s p50 {:.3} ms p99 {:.3} ms errors {}",
            f.rate,
            ms(f.p50),
            ms(f.p99),
            f.errors
        );
    }
    println!(
        "ratio: {:.2} throughput, {:.2} p99",
        validate.rate / bare.rate.max(f64::MIN_POSITIVE),
        ms(validate.p99) / ms(bare.p99).max(f64::MIN_POSITIVE)
    );
    Ok(ExitCode::SUCCESS)
}

fn bench_hash(seconds: u64, threads: Option<usize>) -> anyhow::Result<ExitCode> {
    let settings = aia_settings::AuthSettings::from_env(Env::from_process())?;
    let h = &settings.hashing;
    let threads = threads.unwrap_or(h.concurrency);
    let rate = aia_auth::raw_hash_rate(h, threads, std::time::Duration::from_secs(seconds.max(1)))?;
    println!(
        "argon2id m={} t={} p={}: {rate:.1} hashes/s on {threads} threads",
        h.memory_kib, h.iterations, h.parallelism
    );
    Ok(ExitCode::SUCCESS)
}
