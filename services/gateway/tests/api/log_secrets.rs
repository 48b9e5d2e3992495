//! Logs never carry a secret: a whole account's life (registration, verification,
//! logins, refresh, an API key, TOTP with its recovery codes, a wrong password, a
//! password reset) runs with every platform crate logging at debug, as JSON; then the
//! logs are searched for every secret the run used.

use std::io::Write;
use std::sync::{Arc, Mutex};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::email::{stack_with_mail, token_in};
use crate::helpers::{PASSWORD, email, field};
use crate::mfa::{code_at, now};

/// Collects every log line of the process.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut all) = self.0.lock() {
            all.extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        self.0
            .lock()
            .map(|all| String::from_utf8_lossy(&all).into_owned())
            .unwrap_or_default()
    }
}

fn random(n: usize) -> String {
    (0..n)
        .map(|_| uuid::Uuid::new_v4().simple().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_logs() -> anyhow::Result<()> {
    let logs = Captured::default();
    let writer = logs.clone();
    // nextest runs each test in its own process: this subscriber sees only this test.
    tracing::subscriber::set_global_default(
        tracing_subscriber::fmt()
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "info,aia_auth=debug,aia_session=debug,aia_audit=debug,aia_gateway=debug,\
                 aia_telemetry=debug,aia_audit_client=debug,aia_db=debug,aia_tokens=debug",
            ))
            .with_writer(move || writer.clone())
            .finish(),
    )?;
    let (encryption_key, api_key_secret, session_secret, cookie_secret) =
        (random(2), random(2), random(2), random(2));
    let (stack, smtp) = stack_with_mail(&[
        ("ENCRYPTION_KEY", encryption_key.clone()),
        ("API_KEY_SECRET", api_key_secret.clone()),
        ("SESSION_SECRET", session_secret.clone()),
        ("COOKIE_SECRET", cookie_secret.clone()),
        ("REQUIRE_EMAIL_VERIFICATION", "true".into()),
    ])
    .await?;
    let post = |path: &str, token: Option<&str>, body: Value| {
        let mut request = stack.http().post(stack.url(path)).json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    let mut secrets: Vec<(&str, String)> = vec![
        ("password", PASSWORD.to_owned()),
        ("ENCRYPTION_KEY", encryption_key),
        ("API_KEY_SECRET", api_key_secret),
        ("SESSION_SECRET", session_secret),
        ("COOKIE_SECRET", cookie_secret),
    ];

    let who = email();
    let status = post(
        "/v1/auth/register",
        None,
        json!({"email": who, "password": PASSWORD}),
    )
    .await?
    .status();
    assert_eq!(status, StatusCode::ACCEPTED);
    let verification = token_in(&smtp.wait_for(&who).await?.data);
    let status = post(
        "/v1/auth/verify-email",
        None,
        json!({"token": verification}),
    )
    .await?
    .status();
    assert!(status.is_success(), "verify: {status}");
    secrets.push(("verification token", verification));

    let wrong = "a wrong guess that is secret too";
    let status = post(
        "/v1/auth/login",
        None,
        json!({"email": who, "password": wrong}),
    )
    .await?
    .status();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    secrets.push(("wrong password", wrong.to_owned()));

    let first: Value = post(
        "/v1/auth/login",
        None,
        json!({"email": who, "password": PASSWORD}),
    )
    .await?
    .json()
    .await?;
    let refreshed: Value = post(
        "/v1/auth/refresh",
        None,
        json!({"refresh_token": field(&first, "refresh_token")}),
    )
    .await?
    .json()
    .await?;
    let access = field(&refreshed, "access_token").to_owned();
    for (name, tokens) in [("first", &first), ("refreshed", &refreshed)] {
        for kind in ["access_token", "refresh_token"] {
            assert!(!field(tokens, kind).is_empty(), "{name} {kind}: {tokens}");
            secrets.push(("token", field(tokens, kind).to_owned()));
        }
    }

    let created: Value = post(
        "/v1/api-keys",
        Some(&access),
        json!({"name": "logs", "password": PASSWORD, "scopes": ["profile:read"]}),
    )
    .await?
    .json()
    .await?;
    let api_key = field(&created, "api_key").to_owned();
    let status = stack
        .http()
        .get(stack.url("/v1/auth/me"))
        .header("x-api-key", &api_key)
        .send()
        .await?
        .status();
    assert_eq!(status, StatusCode::OK);
    secrets.push(("API key", api_key.clone()));
    // The key's secret half alone, too.
    secrets.push((
        "API key secret",
        // `aia_<32-hex id>_<43 base64url>`: the secret may itself contain `_`.
        api_key.get(37..).unwrap_or_default().to_owned(),
    ));

    let enrolment: Value = post("/v1/auth/mfa/totp/enroll", Some(&access), json!({}))
        .await?
        .json()
        .await?;
    let uri = field(&enrolment, "otpauth_uri").to_owned();
    let totp_secret = uri
        .split(['?', '&'])
        .find_map(|p| p.strip_prefix("secret="))
        .unwrap_or_default()
        .to_owned();
    assert!(totp_secret.len() >= 26, "{uri}");
    let code = code_at(&uri, now())?;
    let confirmed: Value = post(
        "/v1/auth/mfa/totp/confirm",
        Some(&access),
        json!({"code": code, "password": PASSWORD}),
    )
    .await?
    .json()
    .await?;
    let recovery: Vec<String> = confirmed["recovery_codes"]
        .as_array()
        .map(|c| {
            c.iter()
                .filter_map(|c| c.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(recovery.len(), 10, "{confirmed}");
    secrets.push(("TOTP secret", totp_secret));
    // A six-digit code could equal some other number; as a JSON string it could not.
    secrets.push(("TOTP code", format!("\"{code}\"")));

    let challenge: Value = post(
        "/v1/auth/login",
        None,
        json!({"email": who, "password": PASSWORD}),
    )
    .await?
    .json()
    .await?;
    let challenge = field(&challenge, "challenge").to_owned();
    let second: Value = post(
        "/v1/auth/login/mfa",
        None,
        json!({"challenge": challenge, "code": recovery[0]}),
    )
    .await?
    .json()
    .await?;
    secrets.push(("MFA challenge", challenge));
    secrets.push(("access token", field(&second, "access_token").to_owned()));
    for code in recovery {
        secrets.push(("recovery code", code));
    }

    let status = post("/v1/auth/password/forgot", None, json!({"email": who}))
        .await?
        .status();
    assert!(status.is_success());
    let reset = token_in(&smtp.nth_with(&who, crate::email::RESET, 1).await?.data);
    let new_password = "another long secret passphrase 9";
    let status = post(
        "/v1/auth/password/reset",
        None,
        json!({"token": reset, "new_password": new_password}),
    )
    .await?
    .status();
    assert!(status.is_success(), "reset: {status}");
    secrets.push(("reset token", reset));
    secrets.push(("new password", new_password.to_owned()));

    stack.stop().await;
    let text = logs.text();
    // The run did log, as JSON, with request ids.
    assert!(text.lines().count() > 20, "{text}");
    let not_json = text
        .lines()
        .find(|l| serde_json::from_str::<Value>(l).is_err());
    assert!(not_json.is_none(), "a log line is not JSON: {not_json:?}");
    assert!(
        text.contains("\"request_id\""),
        "no request ids in the logs"
    );
    // Debug lines were captured (each served request writes one).
    assert!(text.contains("\"served\""), "no debug lines captured");
    for (what, secret) in &secrets {
        assert!(!secret.is_empty(), "{what} is empty");
        // The line is shown: these are the test's own throwaway secrets.
        let leak = text.lines().find(|l| l.contains(secret.as_str()));
        assert!(leak.is_none(), "the logs contain a {what}: {leak:?}");
    }
    Ok(())
}
