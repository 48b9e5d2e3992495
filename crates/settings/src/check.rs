//! Production readiness of a whole deployment's environment, as `aia check-config`
//! reports it.
//!
//! There is no second rule book: this runs the four services' own settings readers
//! (the code each service runs at start-up) under production rules and gathers what
//! they refuse. A configuration this approves is one every service starts on.

use std::collections::HashMap;

use crate::env::{Env, Problem};
use crate::{AuditSettings, AuthSettings, GatewaySettings, SessionSettings};

/// Every problem that stands between `vars` and a production deployment of all four
/// services, each named once, in the order found. Empty means production-ready.
///
/// The rules are judged as production's even when `APP_ENV` says otherwise, and an
/// `APP_ENV` other than `production` is itself a problem: a deployment that would
/// start in development mode (ephemeral secrets, plaintext) is not ready.
pub fn production_readiness(vars: &HashMap<String, String>) -> Vec<Problem> {
    let mut problems = Vec::new();
    let app_env = vars.get("APP_ENV").map(|v| v.trim()).unwrap_or("");
    if !matches!(app_env, "production" | "prod") {
        problems.push(Problem {
            variable: "APP_ENV".to_owned(),
            message: "must be `production` (unset or `development` starts services with \
                      ephemeral secrets and without TLS checks)"
                .to_owned(),
        });
    }
    let mut production = vars.clone();
    production.insert("APP_ENV".to_owned(), "production".to_owned());
    let env = || Env::from_iter(production.clone());
    let found = [
        AuthSettings::from_env(env()).err(),
        SessionSettings::from_env(env()).err(),
        AuditSettings::from_env(env()).err(),
        GatewaySettings::from_env(env()).err(),
    ];
    for problem in found.into_iter().flatten().flat_map(|e| e.0) {
        if !problems.contains(&problem) {
            problems.push(problem);
        }
    }
    // Each service's reader sees its own secret only.
    let secret = |name: &str| vars.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());
    if secret("COOKIE_SECRET").is_some() && secret("COOKIE_SECRET") == secret("SESSION_SECRET") {
        problems.push(Problem {
            variable: "COOKIE_SECRET".to_owned(),
            message: "must differ from SESSION_SECRET: the gateway's cookie key must not be \
                      the key of refresh-token successors (generate one with `aia gen-secrets`)"
                .to_owned(),
        });
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A random-looking string of `len` characters from a 64-character alphabet, as
    /// a generator would produce (a fixed stride, so the test is repeatable).
    fn strong(len: usize, seed: usize) -> String {
        let alphabet: Vec<char> = ('A'..='Z')
            .chain('a'..='z')
            .chain('0'..='9')
            .chain(['+', '/'])
            .collect();
        (0..len)
            .map(|i| alphabet[(i * 37 + seed * 11 + i * i / 7) % alphabet.len()])
            .collect()
    }

    fn ready() -> HashMap<String, String> {
        [
            ("APP_ENV", "production".to_owned()),
            (
                "DATABASE_URL",
                "postgres://aia@db.internal:5432/aia?sslmode=verify-full".to_owned(),
            ),
            ("REDIS_URL", "rediss://:pw@cache.internal:6380".to_owned()),
            ("ENCRYPTION_KEY", strong(44, 1)),
            ("API_KEY_SECRET", strong(88, 2)),
            ("SESSION_SECRET", strong(88, 3)),
            ("COOKIE_SECRET", strong(88, 7)),
            ("INTERNAL_TLS", "mesh".to_owned()),
            ("MESH_NAMESPACE", "aia".to_owned()),
            ("ALLOWED_HOSTS", "api.example.com".to_owned()),
            ("CORS_ORIGINS", "https://app.example.com".to_owned()),
            ("SMTP_URL", "smtps://aia:pw@mail.example.com".to_owned()),
            ("PUBLIC_BASE_URL", "https://app.example.com".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    fn variables(vars: &HashMap<String, String>) -> Vec<String> {
        production_readiness(vars)
            .into_iter()
            .map(|p| p.variable)
            .collect()
    }

    #[test]
    fn a_complete_strong_configuration_is_ready() {
        assert_eq!(variables(&ready()), Vec::<String>::new());
    }

    /// The weak settings of the original deployment guide and its usual mistakes:
    /// each one alone makes the configuration not ready, naming its variable.
    #[test]
    fn each_weak_setting_is_named() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("APP_ENV", "development")], "APP_ENV"),
            (&[("APP_ENV", "")], "APP_ENV"),
            (
                &[("API_KEY_SECRET", "your-api-key-secret-here")],
                "API_KEY_SECRET",
            ),
            (&[("API_KEY_SECRET", "")], "API_KEY_SECRET"),
            (&[("SESSION_SECRET", &"a".repeat(96))], "SESSION_SECRET"),
            (
                &[(
                    "SESSION_SECRET",
                    "change-this-session-secret-in-production-0123456789-abcdefghijklmnop",
                )],
                "SESSION_SECRET",
            ),
            (&[("ENCRYPTION_KEY", "changeme")], "ENCRYPTION_KEY"),
            (&[("ENCRYPTION_KEY", "Zx8Qw2Lp5Rt7Vb3N")], "ENCRYPTION_KEY"),
            (
                &[
                    ("JWT_ALGORITHM", "HS256"),
                    ("JWT_SECRET_KEY", "your-secret-key-change-in-production"),
                ],
                "JWT_SECRET_KEY",
            ),
            (&[("JWT_ALGORITHM", "HS256")], "JWT_SECRET_KEY"),
            (&[("CORS_ORIGINS", "*")], "CORS_ORIGINS"),
            (
                &[("CORS_ORIGINS", "http://app.example.com")],
                "CORS_ORIGINS",
            ),
            (&[("CORS_ORIGINS", "https://*.example.com")], "CORS_ORIGINS"),
            (&[("ALLOWED_HOSTS", "")], "ALLOWED_HOSTS"),
            (
                &[("DATABASE_URL", "postgresql://user:password@db:5432/aia")],
                "DATABASE_URL",
            ),
            (
                &[("DATABASE_URL", "postgres://aia@db/aia?sslmode=prefer")],
                "DATABASE_URL",
            ),
            (&[("REDIS_URL", "redis://cache:6379")], "REDIS_URL"),
            (&[("REDIS_URL", "rediss://cache:6380")], "REDIS_URL"),
            (
                &[("RATE_LIMIT_REDIS_URL", "redis://:pw@limits:6379")],
                "RATE_LIMIT_REDIS_URL",
            ),
            (&[("PASSWORD_MIN_LENGTH", "8")], "PASSWORD_MIN_LENGTH"),
            (&[("SMTP_URL", "")], "SMTP_URL"),
            (&[("SMTP_URL", "smtp://mail.example.com:25")], "SMTP_URL"),
            (&[("ARGON2_MEMORY_KIB", "4096")], "ARGON2_MEMORY_KIB"),
            (&[("ARGON2_ITERATIONS", "1")], "ARGON2_ITERATIONS"),
            (&[("INTERNAL_TLS", "off")], "INTERNAL_TLS"),
            (&[("INTERNAL_TLS", "")], "INTERNAL_TLS"),
            (&[("MESH_NAMESPACE", "")], "MESH_NAMESPACE"),
            (&[("TRUSTED_PROXIES", "0.0.0.0/0")], "TRUSTED_PROXIES"),
            (
                &[("PUBLIC_BASE_URL", "http://app.example.com")],
                "PUBLIC_BASE_URL",
            ),
            (&[("PUBLIC_BASE_URL", "app.example.com")], "PUBLIC_BASE_URL"),
            (&[("TRUSTED_PROXIES", "10.0.0.0/8,::/0")], "TRUSTED_PROXIES"),
            (&[("TRUSTED_PROXIES", "10.0.0.0/33")], "TRUSTED_PROXIES"),
            (&[("TRUSTED_PROXIES", "lb.internal")], "TRUSTED_PROXIES"),
            (&[("MESH_NAMESPACE", "aia.evil")], "MESH_NAMESPACE"),
            (
                &[("MESH_TRUST_DOMAIN", "cluster..local")],
                "MESH_TRUST_DOMAIN",
            ),
            (
                &[
                    ("INTERNAL_TLS", "mtls"),
                    ("TLS_CA_FILE", "/nonexistent/ca.pem"),
                ],
                "TLS_CA_FILE",
            ),
            (
                &[("JWT_SIGNING_KEY_FILE", "/nonexistent/signing-key.pem")],
                "JWT_SIGNING_KEY_FILE",
            ),
        ];
        for (overrides, variable) in cases {
            let mut vars = ready();
            for (k, v) in *overrides {
                vars.insert((*k).to_owned(), (*v).to_owned());
            }
            let found = variables(&vars);
            assert!(
                found.iter().any(|v| v == variable),
                "{overrides:?}: expected a problem with {variable}, got {found:?}"
            );
        }
    }

    #[test]
    fn every_problem_is_named_once_and_never_shows_the_value() {
        let mut vars = ready();
        let weak = "password-password-password";
        vars.remove("REDIS_URL");
        vars.insert("SESSION_SECRET".to_owned(), weak.to_owned());
        let problems = production_readiness(&vars);
        // REDIS_URL is read by auth, session and the gateway.
        for name in ["REDIS_URL", "SESSION_SECRET"] {
            assert_eq!(
                problems.iter().filter(|p| p.variable == name).count(),
                1,
                "{name}: {problems:?}"
            );
        }
        assert!(problems.iter().all(|p| !p.message.contains(weak)));
    }

    #[test]
    fn the_gateways_cookie_key_is_not_the_session_services_secret() {
        let mut vars = ready();
        let shared = strong(88, 5);
        vars.insert("SESSION_SECRET".to_owned(), shared.clone());
        vars.insert("COOKIE_SECRET".to_owned(), shared.clone());
        let problems = production_readiness(&vars);
        assert_eq!(
            problems
                .iter()
                .map(|p| p.variable.as_str())
                .collect::<Vec<_>>(),
            ["COOKIE_SECRET"]
        );
        assert!(problems.iter().all(|p| !p.message.contains(&shared)));
    }
}
