//! Browser sessions: the refresh token in a cookie, and the CSRF defence that goes
//! with it.
//!
//! A login (or MFA login, or refresh) whose body says `"session": "cookie"` gets the
//! refresh token not in the body but in `__Host-aia_session`: `HttpOnly; Secure;
//! SameSite=Strict; Path=/`, sealed (AES-256-GCM, key derived from `COOKIE_SECRET`)
//! together with a CSRF token, so neither can be read, altered or swapped. The CSRF
//! token is also in the body (`csrf_token`) and in the script-readable
//! `__Host-aia_csrf` cookie.
//!
//! A refresh that uses the cookie (no `refresh_token` in the body) must pass both
//! defences, or gets 403:
//! - **Origin**: the request's `Origin` must be present and be the gateway's own or
//!   one of `CORS_ORIGINS`;
//! - **double submit, signed**: `X-CSRF-Token` must equal the token sealed inside the
//!   session cookie (a cookie planted by a sibling domain cannot carry a matching
//!   sealed value).
//!
//! The access token stays a bearer token in the `Authorization` header (never a
//! cookie), so no other route can be driven by a cookie. Logout clears both cookies.
//!
//! **Device cookies** (OWASP's "Slow Down Online Guessing Attacks with Device
//! Cookies"): a completed login (tokens issued, after the second factor if the user
//! has one) gets `__Host-aia_device`, a random device id sealed with the account and
//! the time (`HttpOnly; Secure; SameSite=Strict`, 180 days, checked here too; renewed
//! by each completed login; no CSRF role: it authorizes nothing by itself). A later
//! login to that account presenting it spends its guesses from the device's own
//! bucket instead of the account's (`RATE_LIMIT_LOGIN_ACCOUNT` either way), so a
//! stranger spending the account's guesses keeps out only browsers that never logged
//! in to it, not its owner's; auth, which registered the device at that login, also
//! spares it the account's lock. Only a completed login mints one, so a guesser,
//! even one who knows the password but not the second factor, cannot make buckets
//! or exemptions of their own.

use actix_web::HttpRequest;
use actix_web::cookie::{Cookie, SameSite, time::Duration as CookieDuration};
use aia_tokens::seal::SealingKey;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use subtle::ConstantTimeEq;

use crate::cors::Origins;
use crate::problem::Problem;

/// The session cookie.
pub const SESSION: &str = "__Host-aia_session";
/// The script-readable CSRF cookie.
pub const CSRF: &str = "__Host-aia_csrf";
/// The CSRF request header.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// The device cookie.
pub const DEVICE: &str = "__Host-aia_device";
/// Every cookie of the gateway's own: never forwarded to, nor set by, an upstream.
pub const OWN: [&str; 3] = [SESSION, CSRF, DEVICE];
/// Associated data of sealed session cookies.
const AAD: &[u8] = b"aia session cookie v1";
/// Associated data of sealed device cookies (a session cookie never opens as one).
const DEVICE_AAD: &[u8] = b"aia device cookie v1";
/// How long a device stays known without another completed login (auth keeps its
/// registration as long).
const DEVICE_MAX_AGE: CookieDuration = CookieDuration::days(180);

/// Seals and opens session cookies.
pub struct CookieSealer {
    key: SealingKey,
    /// How long the cookie lives (the refresh token's idle lifetime at most).
    max_age: std::time::Duration,
}

/// What a session cookie holds.
#[derive(Debug, PartialEq, Eq)]
pub struct Session {
    /// The refresh token.
    pub refresh_token: String,
    /// The CSRF token bound to it.
    pub csrf: String,
}

impl CookieSealer {
    /// A sealer keyed by `secret` (`COOKIE_SECRET`).
    pub fn new(secret: &[u8], max_age: std::time::Duration) -> anyhow::Result<Self> {
        let key = SealingKey::derive_for(secret, b"aia gateway session cookie v1")
            .map_err(|e| anyhow::anyhow!("COOKIE_SECRET: {e}"))?;
        Ok(Self { key, max_age })
    }

    /// The cookies (session and CSRF) for `refresh_token`, and the CSRF token.
    pub fn issue(&self, refresh_token: &str) -> Result<(Vec<Cookie<'static>>, String), Problem> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|_| Problem::internal())?;
        let csrf = URL_SAFE_NO_PAD.encode(bytes);
        let plain = format!("{csrf}.{refresh_token}");
        let sealed = self
            .key
            .seal(plain.as_bytes(), AAD)
            .map_err(|_| Problem::internal())?;
        let max_age = CookieDuration::seconds(i64::try_from(self.max_age.as_secs()).unwrap_or(0));
        let session = Cookie::build(SESSION, URL_SAFE_NO_PAD.encode(sealed))
            .path("/")
            .secure(true)
            .http_only(true)
            .same_site(SameSite::Strict)
            .max_age(max_age)
            .finish();
        let readable = Cookie::build(CSRF, csrf.clone())
            .path("/")
            .secure(true)
            .same_site(SameSite::Strict)
            .max_age(max_age)
            .finish();
        Ok((vec![session, readable], csrf))
    }

    /// The device cookie of `device` (an id from [`new_device_id`], or the one the
    /// request presented) for `account` (a `rate_limit::account_key`), dated now.
    pub fn device(&self, account: &str, device: &str) -> Result<Cookie<'static>, Problem> {
        let issued = chrono::Utc::now().timestamp();
        let plain = format!("{account}.{device}.{issued}");
        let sealed = self
            .key
            .seal(plain.as_bytes(), DEVICE_AAD)
            .map_err(|_| Problem::internal())?;
        Ok(Cookie::build(DEVICE, URL_SAFE_NO_PAD.encode(sealed))
            .path("/")
            .secure(true)
            .http_only(true)
            .same_site(SameSite::Strict)
            .max_age(DEVICE_MAX_AGE)
            .finish())
    }

    /// The device id in `req`'s device cookie, if the cookie is one of ours, was
    /// made for `account`, and is younger than its lifetime (a browser's word on
    /// `Max-Age` is not needed).
    pub fn device_of(&self, req: &HttpRequest, account: &str) -> Option<String> {
        let cookie = req.cookie(DEVICE)?;
        let sealed = URL_SAFE_NO_PAD.decode(cookie.value()).ok()?;
        let plain = String::from_utf8(self.key.open(&sealed, DEVICE_AAD).ok()?).ok()?;
        let mut parts = plain.rsplitn(3, '.');
        let issued: i64 = parts.next()?.parse().ok()?;
        let device = parts.next()?;
        let sealed_for = parts.next()?;
        let age = chrono::Utc::now().timestamp().saturating_sub(issued);
        let fresh = (0..=DEVICE_MAX_AGE.whole_seconds()).contains(&age);
        (sealed_for == account && fresh).then(|| device.to_owned())
    }

    /// What the session cookie of `req` holds, if it is one of ours.
    pub fn open(&self, req: &HttpRequest) -> Option<Session> {
        let cookie = req.cookie(SESSION)?;
        let sealed = URL_SAFE_NO_PAD.decode(cookie.value()).ok()?;
        let plain = self.key.open(&sealed, AAD).ok()?;
        let plain = String::from_utf8(plain).ok()?;
        let (csrf, refresh_token) = plain.split_once('.')?;
        Some(Session {
            refresh_token: refresh_token.to_owned(),
            csrf: csrf.to_owned(),
        })
    }
}

/// A new device id: 128 random bits, base64url.
pub fn new_device_id() -> Result<String, Problem> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|_| Problem::internal())?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// Cookies that remove both session cookies.
pub fn removal() -> Vec<Cookie<'static>> {
    [SESSION, CSRF]
        .into_iter()
        .map(|name| {
            let mut cookie = Cookie::build(name, "")
                .path("/")
                .secure(true)
                .same_site(SameSite::Strict)
                .finish();
            cookie.make_removal();
            cookie
        })
        .collect()
}

/// The gateway's own origin for `req`: scheme (as `client_ip` decides it) and `Host`.
fn own_origin(req: &HttpRequest) -> Option<String> {
    let scheme = req
        .app_data::<actix_web::web::Data<crate::client_ip::TrustedProxies>>()
        .map_or("http", |p| p.scheme(req));
    let host = req
        .headers()
        .get(actix_web::http::header::HOST)?
        .to_str()
        .ok()?;
    Some(format!("{scheme}://{}", host.to_ascii_lowercase()))
}

/// Both CSRF defences for a cookie-authenticated request carrying `session`.
pub fn check_csrf(req: &HttpRequest, session: &Session, origins: &Origins) -> Result<(), Problem> {
    let refuse = |why: &str| {
        crate::rejections::record_request(req, "csrf");
        Err(Problem::forbidden(why))
    };
    let Some(origin) = req
        .headers()
        .get(actix_web::http::header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .map(str::to_ascii_lowercase)
    else {
        return refuse("a cookie session needs an Origin header");
    };
    if Some(&origin) != own_origin(req).as_ref() && !origins.allows(&origin) {
        return refuse("this origin may not use the session cookie");
    }
    let presented = req
        .headers()
        .get(CSRF_HEADER)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if presented.is_empty() || !bool::from(presented.ct_eq(session.csrf.as_bytes())) {
        return refuse("the X-CSRF-Token header is missing or wrong");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer() -> anyhow::Result<CookieSealer> {
        CookieSealer::new(
            b"a test secret that is long enough to key the cookie sealer with",
            std::time::Duration::from_secs(3600),
        )
    }

    #[test]
    fn a_session_cookie_opens_only_unaltered_and_under_its_key() -> anyhow::Result<()> {
        let sealer = sealer()?;
        let (cookies, csrf) = sealer
            .issue("the-refresh-token")
            .map_err(|p| anyhow::anyhow!("{p}"))?;
        let session = cookies
            .iter()
            .find(|c| c.name() == SESSION)
            .ok_or_else(|| anyhow::anyhow!("no session cookie"))?;
        assert_eq!(session.http_only(), Some(true));
        assert_eq!(session.secure(), Some(true));
        assert_eq!(session.same_site(), Some(SameSite::Strict));
        assert!(!session.value().contains("the-refresh-token"));
        let request = |value: &str| {
            actix_web::test::TestRequest::default()
                .cookie(Cookie::new(SESSION, value.to_owned()))
                .to_http_request()
        };
        assert_eq!(
            sealer.open(&request(session.value())),
            Some(Session {
                refresh_token: "the-refresh-token".into(),
                csrf
            })
        );
        let mut tampered = session.value().to_owned();
        tampered.replace_range(10..11, if &tampered[10..11] == "A" { "B" } else { "A" });
        assert_eq!(sealer.open(&request(&tampered)), None);
        let other = CookieSealer::new(
            b"another secret, also long enough, for a second gateway deployment",
            std::time::Duration::from_secs(60),
        )?;
        assert_eq!(other.open(&request(session.value())), None);
        Ok(())
    }

    #[test]
    fn a_device_cookie_opens_only_for_its_account_and_under_its_key() -> anyhow::Result<()> {
        let sealer = sealer()?;
        let problem = |p: Problem| anyhow::anyhow!("{p}");
        let cookie = sealer
            .device("acct:one", &new_device_id().map_err(problem)?)
            .map_err(problem)?;
        assert_eq!(cookie.http_only(), Some(true));
        assert_eq!(cookie.secure(), Some(true));
        assert_eq!(cookie.same_site(), Some(SameSite::Strict));
        let request = |name: &str, value: &str| {
            actix_web::test::TestRequest::default()
                .cookie(Cookie::new(name.to_owned(), value.to_owned()))
                .to_http_request()
        };
        let presented = request(DEVICE, cookie.value());
        let device = sealer.device_of(&presented, "acct:one");
        assert!(device.as_ref().is_some_and(|d| d.len() == 22), "{device:?}");
        assert_eq!(sealer.device_of(&presented, "acct:two"), None);
        // Each new id is a device of its own; a renewed cookie keeps its device.
        let again = sealer
            .device("acct:one", &new_device_id().map_err(problem)?)
            .map_err(problem)?;
        assert_ne!(
            sealer.device_of(&request(DEVICE, again.value()), "acct:one"),
            device
        );
        let renewed = sealer
            .device("acct:one", device.as_deref().unwrap_or_default())
            .map_err(problem)?;
        assert_eq!(
            sealer.device_of(&request(DEVICE, renewed.value()), "acct:one"),
            device
        );
        // Past its lifetime (or dated ahead), a cookie is no cookie, whatever the
        // browser kept.
        for issued in [
            chrono::Utc::now().timestamp() - DEVICE_MAX_AGE.whole_seconds() - 60,
            chrono::Utc::now().timestamp() + 3600,
        ] {
            let plain = format!("acct:one.someid.{issued}");
            let sealed = sealer
                .key
                .seal(plain.as_bytes(), DEVICE_AAD)
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            let stale = request(DEVICE, &URL_SAFE_NO_PAD.encode(sealed));
            assert_eq!(sealer.device_of(&stale, "acct:one"), None);
        }
        // A session cookie's sealed value is no device cookie, nor the other way.
        let (session, _) = sealer.issue("acct:one.x").map_err(problem)?;
        let session = session
            .iter()
            .find(|c| c.name() == SESSION)
            .ok_or_else(|| anyhow::anyhow!("no session cookie"))?;
        assert_eq!(
            sealer.device_of(&request(DEVICE, session.value()), "acct:one"),
            None
        );
        assert_eq!(sealer.open(&request(SESSION, cookie.value())), None);
        let other = CookieSealer::new(
            b"another secret, also long enough, for a second gateway deployment",
            std::time::Duration::from_secs(60),
        )?;
        assert_eq!(other.device_of(&presented, "acct:one"), None);
        Ok(())
    }
}
