//! The rules a production configuration must satisfy. Each check adds a problem that
//! names the variable and the fix; none stops at the first failure. The same checks
//! run at every service's start-up.

use crate::env::Env;
use secrecy::SecretString;

use crate::services::{AppEnv, PasswordHashing};

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

/// A URL read as the clients that use it read it (redis-rs and lettre parse with the
/// `url` crate), without a fragment: redis-rs takes `#insecure` as "do not verify
/// the certificate", and a hand-made split on `?` or `@` read
/// `redis://cache:6379#@127.0.0.1` as loopback where the client connects to `cache`.
fn parse_url(url: &str) -> Option<url::Url> {
    let parsed = url::Url::parse(url).ok()?;
    parsed.fragment().is_none().then_some(parsed)
}

fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        // Non-special schemes (redis, smtp) leave an IPv4 address a name.
        Some(url::Host::Domain(name)) => {
            name.eq_ignore_ascii_case("localhost")
                || name
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// A Redis URL (in variable `name`) that leaves this host must use TLS (`rediss://`)
/// and a password.
pub fn check_redis_url(env: &mut Env, name: &str, url: &str) {
    let Some(parsed) = parse_url(url) else {
        env.problem(
            name,
            "must be a URL like `rediss://:password@host:6380` (no `#` part)",
        );
        return;
    };
    if is_loopback(&parsed) {
        return;
    }
    if parsed.scheme() != "rediss" {
        env.problem(
            name,
            "a remote Redis must use TLS: use the `rediss://` scheme",
        );
    }
    // `rediss://default@host` names a user and no password.
    if parsed.password().is_none_or(str::is_empty) {
        env.problem(
            name,
            "a remote Redis must require a password: `rediss://:PASSWORD@host`",
        );
    }
}

/// Production sends verification and password-reset links by mail: `SMTP_URL` must
/// be set (without it, messages, reset links included, would be written to disk),
/// and mail that leaves this host must be encrypted (`smtps://`, or `smtp://` with
/// `?tls=required`).
pub fn check_smtp_url(env: &mut Env, url: Option<&str>) {
    let Some(url) = url else {
        env.problem(
            "SMTP_URL",
            "production sends verification and password-reset mail: set the relay, e.g. \
             `smtps://user:PASSWORD@mail.example.com`",
        );
        return;
    };
    let Some(parsed) = parse_url(url) else {
        env.problem(
            "SMTP_URL",
            "must be a URL like `smtps://user:PASSWORD@host` (no `#` part)",
        );
        return;
    };
    // lettre reads the first `tls` of the decoded query (`%74ls` is `tls` too):
    // exactly one, `required`.
    let tls: Vec<String> = parsed
        .query_pairs()
        .filter(|(key, _)| key == "tls")
        .map(|(_, value)| value.into_owned())
        .collect();
    let encrypted =
        parsed.scheme() == "smtps" || (parsed.scheme() == "smtp" && tls == ["required"]);
    if !encrypted && !is_loopback(&parsed) {
        env.problem(
            "SMTP_URL",
            "mail with reset links must not travel in clear: use `smtps://` or add \
             `?tls=required`",
        );
    }
}

/// A secret from `name`: in production it must be set, at least `min_len`
/// characters long, and look random (see [`looks_random`]). In development a missing
/// secret is `None`, and the service generates an ephemeral one.
pub fn secret(env: &mut Env, name: &str, min_len: usize, app_env: AppEnv) -> Option<SecretString> {
    let value = env.get(name).map(str::to_owned);
    if app_env.is_production() {
        match &value {
            None => env.problem(name, format!("must be set in production; generate one with `aia gen-secrets` (or `openssl rand -base64 {min_len}`)")),
            Some(v) if v.chars().count() < min_len => {
                env.problem(name, format!("must be at least {min_len} characters; generate one with `aia gen-secrets`"))
            }
            Some(v) if !looks_random(v) => env.problem(
                name,
                "looks guessable (repeated characters, a pattern or a placeholder word); generate one with `aia gen-secrets`",
            ),
            Some(_) => {}
        }
    }
    value.map(SecretString::from)
}

/// Words that mark a placeholder or a made-up secret, not a generated one.
const PLACEHOLDER_WORDS: [&str; 19] = [
    "secret",
    "token",
    "insecure",
    "dummy",
    "12345",
    "abcde",
    "password",
    "passwd",
    "change",
    "example",
    "default",
    "sample",
    "placeholder",
    "your",
    "test",
    "prod",
    "admin",
    "letmein",
    "qwerty",
];

/// Heuristics that catch placeholders, phrases and patterns, and pass what
/// `openssl rand` or `aia gen-secrets` produce: at least 16 distinct characters and
/// 3.5 bits of Shannon entropy per character (hex, whose alphabet has only 16: at
/// least 10 and 3.2), no 6-character run that occurs twice, no 6 consecutive code
/// points (`abcdef`, `543210`: an alphabet written out), and none of a few
/// placeholder words.
pub fn looks_random(value: &str) -> bool {
    let chars: Vec<char> = value.chars().collect();
    let mut counts = std::collections::HashMap::new();
    for c in &chars {
        *counts.entry(*c).or_insert(0usize) += 1;
    }
    let n = chars.len() as f64;
    let entropy: f64 = counts
        .values()
        .map(|&k| {
            let p = k as f64 / n;
            -p * p.log2()
        })
        .sum();
    let mut runs = std::collections::HashSet::new();
    let repeats = chars.windows(6).any(|w| !runs.insert(w));
    let lower = value.to_lowercase();
    let placeholder = PLACEHOLDER_WORDS.iter().any(|w| lower.contains(w));
    let step = |w: &[char], by: i64| {
        w.windows(2)
            .all(|p| i64::from(u32::from(p[1])) - i64::from(u32::from(p[0])) == by)
    };
    let sequence = chars.windows(6).any(|w| step(w, 1) || step(w, -1));
    let hex = chars.iter().all(char::is_ascii_hexdigit);
    let varied = if hex {
        counts.len() >= 10 && entropy >= 3.2
    } else {
        counts.len() >= 16 && entropy >= 3.5
    };
    varied && !repeats && !sequence && !placeholder
}

/// A PEM file named by `name` must be readable and hold a PEM block (of type `label`
/// when given, e.g. `PRIVATE KEY`). Checked in every environment: a service would fail
/// on it a moment later anyway, with a less helpful message.
pub fn check_pem_file(env: &mut Env, name: &str, path: &std::path::Path, label: Option<&str>) {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) => {
            env.problem(
                name,
                format!("cannot read {}: {}", path.display(), error.kind()),
            );
            return;
        }
    };
    let expected = format!("-----BEGIN {}-----", label.unwrap_or(""));
    let found = match label {
        Some(_) => text.contains(&expected),
        None => text.contains("-----BEGIN "),
    };
    if !found {
        let what = label.map_or("a PEM block".to_owned(), |l| {
            format!("a `{l}` PEM block (PKCS#8)")
        });
        env.problem(name, format!("{} does not hold {what}", path.display()));
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

/// `PUBLIC_BASE_URL` in production: set (the default is a developer's
/// `http://localhost:8080`) and `https://`. Verification and reset mail carries
/// tokens in links to it: over `http://` the first click would send them in clear.
pub fn check_public_url(env: &mut Env, set: bool, url: &str) {
    let https = parse_url(url).is_some_and(|u| u.scheme() == "https" && u.host().is_some());
    if !set || !https {
        env.problem(
            "PUBLIC_BASE_URL",
            "production mails links with tokens to it: set your site's `https://` address",
        );
    }
}

/// `TRUSTED_PROXIES`: each an address or a CIDR (checked here, where check-config
/// sees it, not first at the gateway's start); in production none that trusts every
/// address (a prefix of 0), which would let any client name its own address in
/// `X-Forwarded-For` past the per-address limits.
pub fn check_trusted_proxies(env: &mut Env, items: &[String], app_env: AppEnv) {
    for item in items {
        let (address, prefix) = item.split_once('/').unwrap_or((item, ""));
        let Ok(ip) = address.parse::<std::net::IpAddr>() else {
            env.problem(
                "TRUSTED_PROXIES",
                format!("`{item}` is not an address or CIDR"),
            );
            continue;
        };
        let widest = if ip.is_ipv4() { 32 } else { 128 };
        let bits = match prefix {
            "" => widest,
            p => match p.parse::<u8>() {
                Ok(bits) if bits <= widest => bits,
                _ => {
                    env.problem(
                        "TRUSTED_PROXIES",
                        format!("`{item}` is not an address or CIDR"),
                    );
                    continue;
                }
            },
        };
        if bits == 0 && app_env.is_production() {
            env.problem(
                "TRUSTED_PROXIES",
                format!("`{item}` trusts every address: name your load balancers' networks"),
            );
        }
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
    fn weak_secrets_are_refused_in_production_only() {
        let weak = [
            "",
            "short",
            &"a".repeat(80),
            "your-secret-key-here-change-this-in-production-please-your-secret-key",
            &"0123456789".repeat(8),
            // Many distinct characters, but an alphabet written out.
            "BCDEFGHIJKLMNOPQRSTUVWXYZbcdefgh",
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/",
        ];
        for value in weak {
            let mut env: Env = [("S", value)].into_iter().collect();
            let _ = secret(&mut env, "S", 64, AppEnv::Production);
            assert!(env.finish(()).is_err(), "{value:?}");
        }
        // What a generator's output looks like: 64 distinct base64 characters.
        let alphabet: Vec<char> = ('A'..='Z')
            .chain('a'..='z')
            .chain('0'..='9')
            .chain(['+', '/'])
            .collect();
        let strong: String = (0..64).map(|i| alphabet[(i * 37 + 11) % 64]).collect();
        let strong = strong.as_str();
        let mut env: Env = [("S", strong)].into_iter().collect();
        assert!(secret(&mut env, "S", 64, AppEnv::Production).is_some());
        assert!(env.finish(()).is_ok());
        // `openssl rand -hex 32`: 64 hex digits, often (a quarter of the time) without
        // all sixteen of them; this one has fourteen.
        let mut state: u64 = 5;
        let hex: String = (0..64)
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                char::from(b"0123456789abcdef"[usize::try_from(state >> 60).unwrap_or(0)])
            })
            .collect();
        assert!(looks_random(&hex), "{hex}");
        let mut env = Env::default();
        assert!(secret(&mut env, "S", 64, AppEnv::Development).is_none());
        assert!(env.finish(()).is_ok());
    }

    #[test]
    fn production_mail_needs_an_encrypted_relay() {
        assert_eq!(problems(|e| check_smtp_url(e, None)), 1);
        assert_eq!(problems(|e| check_smtp_url(e, Some("smtp://mail:25"))), 1);
        assert_eq!(problems(|e| check_smtp_url(e, Some("mail.example.com"))), 1);
        for sneaky in [
            "smtp://u:tls=required@mail.example.com:25",
            "smtp://mail.example.com:25?x=tls=required",
            "smtp://mail.example.com:587?tls=required&tls=opportunistic",
            // What lettre reads: no query at all, and then `opportunistic` first.
            "smtp://mail.example.com:25#?tls=required",
            "smtp://mail.example.com:587?%74ls=opportunistic&tls=required",
        ] {
            assert_eq!(problems(|e| check_smtp_url(e, Some(sneaky))), 1, "{sneaky}");
        }
        for good in [
            "smtps://u:pw@mail.example.com",
            "smtp://mail.example.com:587?tls=required",
            "smtp://127.0.0.1:25",
        ] {
            assert_eq!(problems(|e| check_smtp_url(e, Some(good))), 0, "{good}");
        }
    }

    #[test]
    fn remote_redis_needs_tls_and_a_password() {
        assert_eq!(
            problems(|e| check_redis_url(e, "REDIS_URL", "redis://cache:6379")),
            2
        );
        assert_eq!(
            problems(|e| check_redis_url(e, "REDIS_URL", "rediss://cache:6379")),
            1
        );
        assert_eq!(
            problems(|e| check_redis_url(e, "REDIS_URL", "rediss://:pw@cache:6379/0")),
            0
        );
        assert_eq!(
            problems(|e| check_redis_url(e, "REDIS_URL", "redis://127.0.0.1:6379")),
            0
        );
        // Read as redis-rs reads them: a remote host behind a loopback-looking
        // fragment, a fragment that turns certificate checks off, a user without a
        // password.
        for sneaky in [
            "redis://cache.internal:6379#@127.0.0.1",
            "rediss://:pw@cache.internal:6380#insecure",
            "rediss://default@cache.internal:6380",
        ] {
            assert!(
                problems(|e| check_redis_url(e, "REDIS_URL", sneaky)) > 0,
                "{sneaky}"
            );
        }
    }
}
