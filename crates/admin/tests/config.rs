//! `aia check-config` and `aia gen-secrets`, run as an operator runs them, and the
//! services started in production on exactly the environment `check-config` approved.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use aia_testkit::{TestDb, pki::TestPki};

type Vars = HashMap<String, String>;

/// Runs `aia` with only `vars` in its environment; returns the exit code and output.
fn aia(args: &[&str], vars: &Vars) -> anyhow::Result<(i32, String)> {
    let output = Command::new(env!("CARGO_BIN_EXE_aia"))
        .args(args)
        .env_clear()
        .envs(vars)
        .output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok((output.status.code().unwrap_or(-1), text))
}

fn vars(pairs: &[(&str, &str)]) -> Vars {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn scratch() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("aia-config-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn write_env(path: &Path, vars: &Vars) -> anyhow::Result<()> {
    let text: String = vars.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    std::fs::write(path, text)?;
    Ok(())
}

/// What a production deployment sets besides the secrets.
fn deployment() -> Vars {
    vars(&[
        ("APP_ENV", "production"),
        (
            "DATABASE_URL",
            "postgres://aia@db.internal:5432/aia?sslmode=verify-full",
        ),
        ("REDIS_URL", "rediss://:a-password@cache.internal:6380"),
        ("INTERNAL_TLS", "mesh"),
        ("MESH_NAMESPACE", "aia"),
        ("ALLOWED_HOSTS", "api.example.com"),
        ("CORS_ORIGINS", "https://app.example.com"),
        ("SMTP_URL", "smtps://aia:pw@mail.example.com"),
        ("PUBLIC_BASE_URL", "https://app.example.com"),
    ])
}

#[test]
fn gen_secrets_passes_check_config_and_the_original_guides_examples_fail() -> anyhow::Result<()> {
    let dir = scratch()?;
    let secrets = dir.join("secrets.env");
    let secrets_arg = secrets.display().to_string();
    let (code, text) = aia(&["gen-secrets", "--output", &secrets_arg], &Vars::new())?;
    assert_eq!(code, 0, "{text}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&secrets)?.permissions().mode() & 0o777,
            0o600
        );
    }
    // An existing file is never overwritten.
    let before = std::fs::read_to_string(&secrets)?;
    let (code, _) = aia(&["gen-secrets", "--output", &secrets_arg], &Vars::new())?;
    assert_eq!(code, 1);
    assert_eq!(std::fs::read_to_string(&secrets)?, before);

    // The generated set plus the deployment's own settings: ready.
    let (code, text) = aia(&["check-config", "--env-file", &secrets_arg], &deployment())?;
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("ready for production"), "{text}");

    // Without the secrets: each missing one is named.
    let (code, text) = aia(&["check-config"], &deployment())?;
    assert_eq!(code, 1, "{text}");
    for name in [
        "ENCRYPTION_KEY",
        "API_KEY_SECRET",
        "SESSION_SECRET",
        "COOKIE_SECRET",
    ] {
        assert!(text.contains(&format!("✗ {name}: must be set")), "{text}");
    }

    // The original deployment guide's examples, as people paste them.
    let weak = vars(&[
        ("APP_ENV", "production"),
        ("JWT_ALGORITHM", "HS256"),
        (
            "JWT_SECRET_KEY",
            "your-super-secret-jwt-key-change-this-in-production",
        ),
        (
            "API_KEY_SECRET",
            "your-api-key-secret-change-this-in-production-0123456789",
        ),
        (
            "SESSION_SECRET",
            "changemechangemechangemechangemechangemechangemechangemechangeme",
        ),
        ("ENCRYPTION_KEY", "0123456789abcdef0123456789abcdef"),
        ("CORS_ORIGINS", "*"),
        ("ALLOWED_HOSTS", ""),
        ("DATABASE_URL", "postgresql://user:password@db:5432/aia"),
        ("REDIS_URL", "redis://redis:6379/0"),
        ("PASSWORD_MIN_LENGTH", "8"),
        ("INTERNAL_TLS", "off"),
    ]);
    let weak_file = dir.join("weak.env");
    write_env(&weak_file, &weak)?;
    let (code, text) = aia(
        &[
            "check-config",
            "--format",
            "json",
            "--env-file",
            &weak_file.display().to_string(),
        ],
        &Vars::new(),
    )?;
    assert_eq!(code, 1, "{text}");
    let report: serde_json::Value = serde_json::from_str(&text)?;
    assert_eq!(report["ready"], false);
    let named: Vec<&str> = report["problems"]
        .as_array()
        .map(|a| a.iter().filter_map(|p| p["variable"].as_str()).collect())
        .unwrap_or_default();
    for (name, value) in &weak {
        if name == "APP_ENV" || name == "JWT_ALGORITHM" {
            continue;
        }
        assert!(
            named.contains(&name.as_str()),
            "{name} not named: {named:?}"
        );
        if value.len() > 8 {
            assert!(!text.contains(value.as_str()), "{name}'s value is printed");
        }
    }

    // The Kubernetes form carries the same names, and JWT_SECRET_KEY on request.
    let (code, text) = aia(&["gen-secrets", "--format", "k8s", "--hs256"], &Vars::new())?;
    assert_eq!(code, 0, "{text}");
    for needle in [
        "kind: Secret",
        "name: aia-secrets",
        "ENCRYPTION_KEY:",
        "API_KEY_SECRET:",
        "SESSION_SECRET:",
        "COOKIE_SECRET:",
        "JWT_SECRET_KEY:",
    ] {
        assert!(text.contains(needle), "{needle} missing:\n{text}");
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// The four services, started in production from the very variables `aia
/// check-config` approved: secrets from `aia gen-secrets`, Postgres over verified TLS,
/// mTLS between the services.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_start_in_production_on_what_check_config_approved() -> anyhow::Result<()> {
    let dir = scratch()?;
    let (code, secrets) = aia(&["gen-secrets"], &Vars::new())?;
    assert_eq!(code, 0, "{secrets}");
    let secrets = aia_admin::env_file::parse(&secrets)?;
    let db = TestDb::create().await?;
    let pki = TestPki::new()?;
    // The local Postgres serves TLS with Debian's snakeoil certificate, made for
    // `localhost`.
    let database_url = format!(
        "{}?sslmode=verify-full&sslrootcert=/etc/ssl/certs/ssl-cert-snakeoil.pem",
        db.url.replace("@127.0.0.1:", "@localhost:")
    );
    let prefix = format!("test:{}:", uuid::Uuid::new_v4().simple());
    // A mail relay on this host (plain SMTP is accepted on loopback only).
    let smtp = aia_testkit::smtp::SmtpSink::start().await?;
    let base = |service: &str, more: &[(&str, String)]| -> anyhow::Result<Vars> {
        let mut v: Vars = secrets.clone();
        v.extend(vars(&[
            ("APP_ENV", "production"),
            ("DATABASE_URL", &database_url),
            ("DATABASE_POOL_SIZE", "4"),
            ("REDIS_URL", &aia_testkit::redis_url()),
            ("REDIS_KEY_PREFIX", &prefix),
            ("ALLOWED_HOSTS", "127.0.0.1"),
            ("CORS_ORIGINS", "https://app.example.com"),
            ("GATEWAY_WORKERS", "2"),
            ("RATE_LIMIT_REDIS_BUDGET_MS", "200"),
            ("SMTP_URL", &smtp.url),
            ("PUBLIC_BASE_URL", "https://app.example.com"),
        ]));
        for suffix in ["GRPC_ADDR", "ADMIN_ADDR"] {
            for s in ["AUTH", "SESSION", "AUDIT"] {
                v.insert(format!("{s}_{suffix}"), "127.0.0.1:0".to_owned());
            }
        }
        v.insert("GATEWAY_HTTP_ADDR".to_owned(), "127.0.0.1:0".to_owned());
        v.insert("GATEWAY_ADMIN_ADDR".to_owned(), "127.0.0.1:0".to_owned());
        v.insert(
            "MAIL_DIR".to_owned(),
            dir.join("mail").display().to_string(),
        );
        for (k, value) in pki.env(service)?.into_iter().chain(more.iter().cloned()) {
            v.insert(k.to_owned(), value);
        }
        // The operator's gate: exactly this environment must be approved.
        let file = dir.join(format!("{service}.env"));
        write_env(&file, &v)?;
        let (code, text) = aia(
            &["check-config", "--env-file", &file.display().to_string()],
            &Vars::new(),
        )?;
        assert_eq!(code, 0, "{service}: {text}");
        Ok(v)
    };
    let env = |v: Vars| aia_settings::Env::from_iter(v);
    let mut running = aia_testkit::services();
    let audit = running.audit(env(base("audit", &[])?)).await?;
    let session = running
        .session(env(base("session", &[("AUDIT_GRPC_URL", audit.url())])?))
        .await?;
    let auth = running
        .auth(env(base(
            "auth",
            &[
                ("AUDIT_GRPC_URL", audit.url()),
                ("SESSION_GRPC_URL", session.url()),
            ],
        )?))
        .await?;
    let gateway = running
        .gateway(env(base(
            "gateway",
            &[
                ("AUTH_GRPC_URL", auth.url()),
                ("SESSION_GRPC_URL", session.url()),
                ("AUDIT_GRPC_URL", audit.url()),
            ],
        )?))
        .await?;

    // Each admin port answers `aia healthcheck`, the image's health check.
    for addrs in [audit, session, auth, gateway] {
        let (code, text) = aia(&["healthcheck", &addrs.admin_url("/readyz")], &Vars::new())?;
        assert_eq!(code, 0, "{text}");
    }
    let (code, _) = aia(
        &["healthcheck", &gateway.admin_url("/no-such-page")],
        &Vars::new(),
    )?;
    assert_eq!(code, 1);

    // A registration crosses gateway → auth (mTLS) → Postgres (TLS); production's
    // headers are on.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let response = http
        .post(format!("{}/v1/auth/register", gateway.url()))
        .json(&serde_json::json!({
            "email": "operator@example.com",
            "password": "a long production passphrase 7",
        }))
        .send()
        .await?;
    assert_eq!(response.status(), 202);
    assert!(
        response
            .headers()
            .get("strict-transport-security")
            .is_some(),
        "production sends HSTS"
    );
    // Production requires verification; the link went to the relay.
    let mail = smtp.wait_for("operator@example.com").await?;
    assert!(
        mail.data.contains("Confirm your email address"),
        "{}",
        mail.data
    );
    let jwks: serde_json::Value = http
        .get(format!("{}/.well-known/jwks.json", gateway.url()))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(jwks["keys"].as_array().map(Vec::len), Some(1), "{jwks}");

    running.stop().await;
    db.drop_database().await?;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[test]
fn every_command_has_help() -> anyhow::Result<()> {
    let (code, text) = aia(&["--help"], &Vars::new())?;
    assert_eq!(code, 0, "{text}");
    let commands: Vec<String> = text
        .split("Commands:")
        .nth(1)
        .unwrap_or_default()
        .lines()
        .skip(1)
        .map_while(|l| l.strip_prefix("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .filter(|c| c != "help")
        .collect();
    assert!(commands.len() >= 10, "{commands:?}");
    for command in &commands {
        let (code, help) = aia(&[command, "--help"], &Vars::new())?;
        assert_eq!(code, 0, "{command}: {help}");
        assert!(
            help.contains(&format!("Usage: aia {command}")),
            "{command}: {help}"
        );
    }
    Ok(())
}
