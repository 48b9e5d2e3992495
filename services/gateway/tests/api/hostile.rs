//! Hostile input from outside the Rust code (issue #8): tools an attacker would use,
//! against running stacks. They live in a virtualenv that `make test` installs
//! (`scripts/attack-tools.sh`).

use std::path::{Path, PathBuf};
use std::process::Command;

use aia_testkit::Stack;

use crate::helpers::{field, signed_in};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn python() -> PathBuf {
    root().join("target/attack-tools/venv/bin/python")
}

/// Runs an attack tool to its end (off the async threads); whether it succeeded, and
/// everything it printed.
async fn run(mut command: Command) -> anyhow::Result<(bool, String)> {
    let output = tokio::task::spawn_blocking(move || command.output())
        .await?
        .map_err(|e| anyhow::anyhow!("the attack tools (run scripts/attack-tools.sh): {e}"))?;
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok((output.status.success(), report))
}

/// `tests/attack/jwt_attacks.py` (PyJWT and cryptography): alg none in four
/// spellings, HS256 keyed with the public key in four forms, stripped and reused
/// signatures, tampered claims, an attacker's Ed25519/RSA/EC keys, unknown and
/// path-like `kid`, embedded `jwk`, `jku`, `x5u`, `crit`, garbage and an oversized
/// token against the default (EdDSA) gateway; expired, not-yet-valid, wrong audience
/// or issuer, missing claims, other HMAC algorithms and wrong secrets, correctly
/// signed, against an HS256 gateway whose secret the script knows. Every one refused
/// with a 4xx, and the controls (the real tokens, a correct re-signing) accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_jwt_attacks_are_all_refused() -> anyhow::Result<()> {
    let eddsa = Stack::start().await?;
    let eddsa_token = field(&signed_in(&eddsa).await?, "access_token").to_owned();
    let (hs256, secret) = crate::helpers::hs256_stack().await?;
    let hs256_token = field(&signed_in(&hs256).await?, "access_token").to_owned();
    let (eddsa_url, hs256_url) = (eddsa.url(""), hs256.url(""));
    let script = root().join("tests/attack/jwt_attacks.py");
    let mut command = Command::new(python());
    command
        .arg(script)
        .args(["--eddsa", eddsa_url.trim_end_matches('/'), &eddsa_token])
        .args([
            "--hs256",
            hs256_url.trim_end_matches('/'),
            &hs256_token,
            &secret,
        ]);
    let (success, report) = run(command).await?;
    assert!(success, "{report}");
    let refused = report.lines().filter(|l| l.starts_with("refused")).count();
    assert!(refused >= 40, "only {refused} attacks ran:\n{report}");
    eddsa.stop().await;
    hs256.stop().await;
    Ok(())
}

/// Schemathesis (PyPI) against `/openapi.json` of a running gateway, every check on,
/// a small example budget (a longer run is `make fuzz`): no 5xx, no answer that breaks
/// the document, no malformed input accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing_against_the_documented_api() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let admin = crate::helpers::admin(&stack).await?;
    let token = field(&admin, "access_token").to_owned();
    let base = stack.url("");
    let base = base.trim_end_matches('/').to_owned();
    let examples = std::env::var("SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| "10".to_owned());
    let st = root().join("target/attack-tools/venv/bin/st");
    let report_dir = std::env::temp_dir().join(format!(
        "aia-schemathesis-{}",
        uuid::Uuid::new_v4().simple()
    ));
    let mut command = Command::new(st);
    command
        .arg("--config-file")
        .arg(root().join("tests/attack/schemathesis.toml"))
        .arg("run")
        .arg(format!("{base}/openapi.json"))
        .args(["--url", &base])
        .args(["--checks", "all"])
        .args(["--max-examples", &examples])
        .args(["--seed", "20261130"])
        .args(["--request-timeout", "10"])
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .arg("--report-dir")
        .arg(&report_dir)
        .env("NO_COLOR", "1");
    let (success, report) = run(command).await?;
    assert!(success, "{report}");
    stack.stop().await;
    Ok(())
}
