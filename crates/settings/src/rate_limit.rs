//! The gateway's rate-limit settings.

use std::str::FromStr;
use std::time::Duration;

use secrecy::SecretString;

use crate::env::Env;

/// A rate: `limit` requests per `period`, written `N/SECONDS` (`20/60`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Requests allowed per period (also the burst).
    pub limit: u32,
    /// The period.
    pub period: Duration,
}

impl FromStr for Rate {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        let (limit, seconds) = s.trim().split_once('/').ok_or(())?;
        let limit: u32 = limit.trim().parse().map_err(|_| ())?;
        let seconds: u64 = seconds.trim().parse().map_err(|_| ())?;
        if limit == 0 || !(1..=86_400).contains(&seconds) {
            return Err(());
        }
        Ok(Self {
            limit,
            period: Duration::from_secs(seconds),
        })
    }
}

/// The route classes a policy applies to.
pub const CLASSES: [&str; 5] = ["login", "login-account", "register", "recovery", "api"];

/// Rate limits of the gateway, one policy per route class and key.
#[derive(Debug, Clone)]
pub struct RateLimitSettings {
    /// `RATE_LIMIT_ENABLED` (default true).
    pub enabled: bool,
    /// `RATE_LIMIT_LOGIN` (per client IP, login and its MFA step; default `20/60`).
    pub login: Rate,
    /// `RATE_LIMIT_LOGIN_ACCOUNT` (per account, guesses at its password or a code:
    /// logins by email, a signed-in user's password change and TOTP disable by user
    /// id; default `10/60`).
    pub login_account: Rate,
    /// `RATE_LIMIT_REGISTER` (per client IP; default `10/3600`).
    pub register: Rate,
    /// `RATE_LIMIT_RECOVERY` (per client IP: forgot-password and resend-verification;
    /// default `5/900`).
    pub recovery: Rate,
    /// `RATE_LIMIT_API` (per user, per API key, or per client IP for anonymous calls;
    /// default `600/60`).
    pub api: Rate,
    /// `RATE_LIMIT_REDIS_BUDGET_MS`: how long a decision may wait for Redis before
    /// the in-process limiter decides instead (default 5).
    pub redis_budget: Duration,
    /// `RATE_LIMIT_FAIL_CLOSED`: classes refused (503) rather than limited in-process
    /// while Redis cannot decide (default none: every class falls back to the
    /// in-process limiter, per gateway instance).
    pub fail_closed: Vec<String>,
    /// `RATE_LIMIT_REDIS_URL`: a Redis of its own for the counters (default: the
    /// `REDIS_URL` one).
    pub redis_url: Option<SecretString>,
}

impl RateLimitSettings {
    pub(crate) fn read(env: &mut Env, production: bool) -> Self {
        let redis_url = env.get("RATE_LIMIT_REDIS_URL").map(str::to_owned);
        if let (true, Some(url)) = (production, &redis_url) {
            crate::production::check_redis_url(env, "RATE_LIMIT_REDIS_URL", url);
        }
        let fail_closed: Vec<String> = env
            .string("RATE_LIMIT_FAIL_CLOSED", "")
            .split(',')
            .map(|c| c.trim().to_owned())
            .filter(|c| !c.is_empty())
            .collect();
        if let Some(unknown) = fail_closed.iter().find(|c| !CLASSES.contains(&c.as_str())) {
            env.problem(
                "RATE_LIMIT_FAIL_CLOSED",
                format!("unknown class `{unknown}`; classes: {}", CLASSES.join(", ")),
            );
        }
        Self {
            enabled: env.flag("RATE_LIMIT_ENABLED", true),
            login: rate(env, "RATE_LIMIT_LOGIN", 20, 60),
            login_account: rate(env, "RATE_LIMIT_LOGIN_ACCOUNT", 10, 60),
            register: rate(env, "RATE_LIMIT_REGISTER", 10, 3600),
            recovery: rate(env, "RATE_LIMIT_RECOVERY", 5, 900),
            api: rate(env, "RATE_LIMIT_API", 600, 60),
            redis_budget: Duration::from_millis(env.parse_in(
                "RATE_LIMIT_REDIS_BUDGET_MS",
                5,
                1,
                1000,
            )),
            fail_closed,
            redis_url: redis_url.map(SecretString::from),
        }
    }
}

pub(crate) fn rate(env: &mut Env, name: &str, limit: u32, seconds: u64) -> Rate {
    let default = Rate {
        limit,
        period: Duration::from_secs(seconds),
    };
    match env.get(name).map(str::parse::<Rate>) {
        None => default,
        Some(Ok(rate)) => rate,
        Some(Err(())) => {
            env.problem(
                name,
                "must be REQUESTS/SECONDS, e.g. 20/60 (1 to 86400 seconds)",
            );
            default
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_and_nonsense_is_refused() {
        assert_eq!(
            "20/60".parse::<Rate>(),
            Ok(Rate {
                limit: 20,
                period: Duration::from_secs(60)
            })
        );
        for bad in [
            "",
            "20",
            "0/60",
            "20/0",
            "20/100000",
            "-1/60",
            "a/b",
            "20/60/1",
        ] {
            assert!(bad.parse::<Rate>().is_err(), "{bad}");
        }
    }
}
