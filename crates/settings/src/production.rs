//! The rules a production configuration must satisfy. Each check adds a problem that
//! names the variable and the fix; none stops at the first failure. The same checks
//! run at every service's start-up.

use crate::env::Env;
use crate::services::{PasswordHashing, SigningKeySource};

/// `DATABASE_URL` must ask for TLS (`sslmode=require`, `verify-ca` or `verify-full`).
pub fn check_database_url(env: &mut Env, url: &str) {
    let query = url.split_once('?').map_or("", |(_, q)| q);
    let sslmode = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("sslmode="))
        .unwrap_or("");
    if !matches!(sslmode, "require" | "verify-ca" | "verify-full") {
        env.problem(
            "DATABASE_URL",
            "must use TLS: add `sslmode=verify-full` (or `require`) to the URL",
        );
    }
}

/// A `REDIS_URL` that leaves this host must use TLS (`rediss://`) and a password.
pub fn check_redis_url(env: &mut Env, url: &str) {
    let Some((scheme, rest)) = url.split_once("://") else {
        env.problem(
            "REDIS_URL",
            "must be a URL like `rediss://:password@host:6380`",
        );
        return;
    };
    let (userinfo, hostport) = match rest.split('/').next().unwrap_or("").rsplit_once('@') {
        Some((u, h)) => (u, h),
        None => ("", rest.split('/').next().unwrap_or("")),
    };
    let host = hostport
        .rsplit_once(':')
        .map_or(hostport, |(h, _)| h)
        .trim_matches(['[', ']']);
    let local = matches!(host, "127.0.0.1" | "localhost" | "::1");
    if local {
        return;
    }
    if scheme != "rediss" {
        env.problem(
            "REDIS_URL",
            "a remote Redis must use TLS: use the `rediss://` scheme",
        );
    }
    let password = userinfo.split_once(':').map_or(userinfo, |(_, p)| p);
    if password.is_empty() {
        env.problem(
            "REDIS_URL",
            "a remote Redis must require a password: `rediss://:PASSWORD@host`",
        );
    }
}

/// Production must not sign with a key that dies with the process.
pub fn check_signing_key(env: &mut Env, source: &SigningKeySource) {
    if matches!(source, SigningKeySource::Ephemeral) {
        env.problem(
            "JWT_SIGNING_KEY_FILE",
            "must name an Ed25519 PKCS#8 PEM file (or set JWT_SIGNING_KEY); \
             generate one with `openssl genpkey -algorithm ed25519`",
        );
    }
}

/// Argon2id must not be cheaper than OWASP's minimum (19 MiB, 2 iterations).
pub fn check_password_hashing(env: &mut Env, hashing: &PasswordHashing) {
    if hashing.memory_kib < 19_456 {
        env.problem("ARGON2_MEMORY_KIB", "must be at least 19456 in production");
    }
    if hashing.iterations < 2 {
        env.problem("ARGON2_ITERATIONS", "must be at least 2 in production");
    }
}

/// NIST SP 800-63B asks for at least 8; the platform's floor is 12 in production.
pub fn check_password_min_length(env: &mut Env, min: usize) {
    if min < 12 {
        env.problem("PASSWORD_MIN_LENGTH", "must be at least 12 in production");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(f: impl FnOnce(&mut Env)) -> usize {
        let mut env = Env::default();
        f(&mut env);
        env.finish(()).err().map_or(0, |e| e.0.len())
    }

    #[test]
    fn database_url_without_tls_is_refused() {
        assert_eq!(problems(|e| check_database_url(e, "postgres://h/db")), 1);
        assert_eq!(
            problems(|e| check_database_url(e, "postgres://h/db?sslmode=prefer")),
            1
        );
        assert_eq!(
            problems(|e| check_database_url(e, "postgres://h/db?x=1&sslmode=require")),
            0
        );
    }

    #[test]
    fn remote_redis_needs_tls_and_a_password() {
        assert_eq!(problems(|e| check_redis_url(e, "redis://cache:6379")), 2);
        assert_eq!(problems(|e| check_redis_url(e, "rediss://cache:6379")), 1);
        assert_eq!(
            problems(|e| check_redis_url(e, "rediss://:pw@cache:6379/0")),
            0
        );
        assert_eq!(
            problems(|e| check_redis_url(e, "redis://127.0.0.1:6379")),
            0
        );
    }
}
