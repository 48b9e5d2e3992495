//! The gateway's reverse-proxy settings.

use std::time::Duration;

use crate::env::Env;

/// One proxied prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// A path prefix such as `/api/` (starts and ends with `/`).
    pub prefix: String,
    /// Where it goes: `http(s)://host:port`, no path.
    pub url: String,
    /// Served without authentication (identity headers are still stripped).
    pub public: bool,
    /// Gets the caller's bearer token in `Authorization` (`UPSTREAM_TOKEN_PREFIXES`).
    /// Off by default, as Envoy's `jwt_authn` removes a verified token: the identity
    /// headers say who the caller is, and a token an upstream holds (or logs) works
    /// on every route of the platform, the admin routes included, until it expires.
    pub pass_token: bool,
}

/// The reverse proxy.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    /// `UPSTREAMS`: comma-separated `PREFIX=URL` (`/api/=http://127.0.0.1:9000`); the
    /// longest matching prefix wins; the path and query go on unchanged. Default none.
    pub upstreams: Vec<Upstream>,
    /// `UPSTREAM_TIMEOUT_SECONDS`: for the whole upstream exchange (default 30).
    pub timeout: Duration,
    /// `UPSTREAM_CONNECT_TIMEOUT_MS` (default 2000).
    pub connect_timeout: Duration,
    /// `UPSTREAM_BODY_LIMIT_BYTES`: largest request body forwarded (default 10 MiB).
    pub body_limit: usize,
    /// `UPSTREAM_BREAKER_FAILURES`: consecutive failures (connection errors,
    /// timeouts, 5xx) that open an upstream's circuit (default 5).
    pub breaker_failures: u32,
    /// `UPSTREAM_BREAKER_OPEN_SECONDS`: how long an open circuit answers 503 before
    /// one request may try again (default 10).
    pub breaker_open_for: Duration,
}

impl UpstreamSettings {
    pub(crate) fn read(env: &mut Env, production: bool) -> Self {
        let prefixes = |env: &Env, name: &str| -> Vec<String> {
            env.string(name, "")
                .split(',')
                .map(|p| p.trim().to_owned())
                .filter(|p| !p.is_empty())
                .collect()
        };
        let public = prefixes(env, "UPSTREAM_PUBLIC_PREFIXES");
        let token = prefixes(env, "UPSTREAM_TOKEN_PREFIXES");
        let mut upstreams = Vec::new();
        for (n, entry) in env
            .string("UPSTREAMS", "")
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .enumerate()
        {
            match parse(entry, production) {
                Ok((prefix, url)) => upstreams.push(Upstream {
                    public: public.contains(&prefix),
                    pass_token: token.contains(&prefix),
                    prefix,
                    url,
                }),
                // Named by position and prefix, never the URL: one refused for its
                // credentials would otherwise print them.
                Err(why) => {
                    let named = entry.split_once('=').map_or_else(
                        || format!("entry {}", n + 1),
                        |(prefix, _)| format!("entry {} (`{}`)", n + 1, prefix.trim()),
                    );
                    env.problem("UPSTREAMS", format!("{named}: {why}"));
                }
            }
        }
        for (name, listed) in [
            ("UPSTREAM_PUBLIC_PREFIXES", &public),
            ("UPSTREAM_TOKEN_PREFIXES", &token),
        ] {
            if let Some(unknown) = listed
                .iter()
                .find(|p| !upstreams.iter().any(|u| &u.prefix == *p))
            {
                env.problem(name, format!("`{unknown}` is not a prefix of UPSTREAMS"));
            }
        }
        Self {
            upstreams,
            timeout: Duration::from_secs(env.parse_in("UPSTREAM_TIMEOUT_SECONDS", 30, 1, 3600)),
            connect_timeout: Duration::from_millis(env.parse_in(
                "UPSTREAM_CONNECT_TIMEOUT_MS",
                2000,
                10,
                60_000,
            )),
            body_limit: env.parse_in("UPSTREAM_BODY_LIMIT_BYTES", 10 << 20, 0, 1 << 30),
            breaker_failures: env.parse_in("UPSTREAM_BREAKER_FAILURES", 5, 1, 1000),
            breaker_open_for: Duration::from_secs(env.parse_in(
                "UPSTREAM_BREAKER_OPEN_SECONDS",
                10,
                1,
                3600,
            )),
        }
    }
}

fn parse(entry: &str, production: bool) -> Result<(String, String), &'static str> {
    let (prefix, url) = entry.split_once('=').ok_or("must be PREFIX=URL")?;
    let (prefix, url) = (prefix.trim(), url.trim().trim_end_matches('/'));
    if !prefix.starts_with('/') || !prefix.ends_with('/') || prefix.len() < 3 {
        return Err("the prefix must look like /api/ (a path that starts and ends with /)");
    }
    if prefix.starts_with("/v1/") || prefix.starts_with("/.well-known/") {
        return Err("the prefix must not shadow the gateway's own routes");
    }
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or("the URL must be http:// or https://")?;
    if rest.is_empty() || rest.contains('/') || rest.contains('@') {
        return Err("the URL must be scheme://host[:port], without path or credentials");
    }
    if production && url.starts_with("http://") {
        return Err("production needs https:// upstreams");
    }
    Ok((prefix.to_owned(), url.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_entry_is_named_without_its_url() {
        let mut env: Env = [(
            "UPSTREAMS",
            "/ok/=https://a.internal, /api/=https://svc:hunter2@backend",
        )]
        .into_iter()
        .collect();
        let _ = UpstreamSettings::read(&mut env, true);
        let problems = env.finish(()).err().map(|e| e.0).unwrap_or_default();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].message.contains("entry 2 (`/api/`)"),
            "{problems:?}"
        );
        assert!(!problems[0].message.contains("hunter2"), "{problems:?}");
    }

    #[test]
    fn prefixes_and_urls_are_checked() {
        assert_eq!(
            parse("/api/=http://127.0.0.1:9000/", false),
            Ok(("/api/".into(), "http://127.0.0.1:9000".into()))
        );
        for bad in [
            "/api/",
            "api/=http://a",
            "/api=http://a",
            "/v1/x/=http://a",
            "/api/=ftp://a",
            "/api/=http://a/path",
            "/api/=http://user:pw@a",
            "/api/=http://",
        ] {
            assert!(parse(bad, false).is_err(), "{bad}");
        }
        assert!(parse("/api/=http://a", true).is_err());
        assert!(parse("/api/=https://a", true).is_ok());
    }
}
