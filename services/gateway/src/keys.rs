//! The public signing keys, fetched from auth and cached.
//!
//! Tokens are verified locally. The key set is fetched on first use and again when a
//! token names a `kid` the cache does not know (auth rotated its key), at most once
//! per [`REFRESH_INTERVAL`], so a flood of tokens with made-up `kid`s cannot turn into a
//! flood of calls to auth.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aia_proto::auth::v1::GetJwksRequest;
use aia_proto::auth::v1::auth_service_client::AuthServiceClient;
use aia_telemetry::otel::TracedChannel;
use aia_tokens::{AccessClaims, Jwks, TokenError, Verifier};
use tokio::sync::{Mutex, RwLock};

/// Least time between two fetches of the key set.
const REFRESH_INTERVAL: Duration = Duration::from_secs(10);

/// How often the key set is fetched anyway, to learn keys published ahead of use.
pub const PERIODIC_REFRESH: Duration = Duration::from_secs(30);

/// Tokens remembered as verified, per key set.
const VERIFIED_CAPACITY: usize = 10_000;

/// A fetched key set.
#[derive(Debug)]
pub struct KeySet {
    /// The verifier over its keys.
    pub verifier: Verifier,
    /// The document, as served at `/.well-known/jwks.json`.
    pub json: String,
    /// Tokens whose signature and claims this set verified, with their claims. An
    /// EdDSA verification costs tens of microseconds; a token is typically presented
    /// many times. Only tokens that verified get in; each is used only until its
    /// `exp`; the memo belongs to this key set, so it is gone when the keys change
    /// (a withdrawn key takes its tokens with it). Revocation is checked on every
    /// request regardless.
    verified: std::sync::RwLock<std::collections::HashMap<String, AccessClaims>>,
}

impl KeySet {
    fn new(verifier: Verifier, json: String) -> Self {
        Self {
            verifier,
            json,
            verified: std::sync::RwLock::new(std::collections::HashMap::new()),
        }
    }

    /// Verifies `token` (signature, `typ`, `kid`, `iss`, `aud`, `exp`, `nbf`), from
    /// the memo when this set verified it before and it has not expired since.
    pub fn verify(&self, token: &str) -> Result<AccessClaims, TokenError> {
        let now = chrono::Utc::now().timestamp();
        if let Some(claims) = self
            .verified
            .read()
            .ok()
            .and_then(|memo| memo.get(token).filter(|c| c.exp > now).cloned())
        {
            return Ok(claims);
        }
        let claims = self.verifier.verify(token)?;
        if let Ok(mut memo) = self.verified.write() {
            if memo.len() >= VERIFIED_CAPACITY {
                memo.retain(|_, c| c.exp > now);
                if memo.len() >= VERIFIED_CAPACITY {
                    memo.clear();
                }
            }
            memo.insert(token.to_owned(), claims.clone());
        }
        Ok(claims)
    }
}

/// The cache.
pub struct KeyCache {
    auth: AuthServiceClient<TracedChannel>,
    issuer: String,
    audience: String,
    current: RwLock<Option<Arc<KeySet>>>,
    last_fetch: Mutex<Option<Instant>>,
    /// HS256 mode: the key comes from settings and nothing is ever fetched.
    fixed: bool,
}

/// Auth could not be asked for keys, and none are cached.
#[derive(Debug, thiserror::Error)]
#[error("signing keys unavailable")]
pub struct KeysUnavailable;

impl KeyCache {
    /// An empty cache; nothing is fetched until needed.
    pub fn new(auth: AuthServiceClient<TracedChannel>, issuer: String, audience: String) -> Self {
        Self {
            auth,
            issuer,
            audience,
            current: RwLock::new(None),
            last_fetch: Mutex::new(None),
            fixed: false,
        }
    }

    /// A cache that always holds `verifier` (HS256 mode) and publishes no key.
    pub fn fixed(auth: AuthServiceClient<TracedChannel>, verifier: Verifier) -> Self {
        let set = KeySet::new(verifier, r#"{"keys":[]}"#.to_owned());
        Self {
            auth,
            issuer: String::new(),
            audience: String::new(),
            current: RwLock::new(Some(Arc::new(set))),
            last_fetch: Mutex::new(None),
            fixed: true,
        }
    }

    /// The key set to verify a token naming `kid` with.
    pub async fn for_kid(&self, kid: Option<&str>) -> Result<Arc<KeySet>, KeysUnavailable> {
        if let Some(set) = self.current.read().await.clone()
            && kid.is_none_or(|kid| set.verifier.knows(kid))
        {
            return Ok(set);
        }
        self.refresh().await
    }

    /// Fetches the key set unless that was done less than [`REFRESH_INTERVAL`] ago;
    /// returns whatever is current afterwards.
    pub async fn refresh(&self) -> Result<Arc<KeySet>, KeysUnavailable> {
        let mut last = self.last_fetch.lock().await;
        let cached = self.current.read().await.clone();
        if self.fixed {
            return cached.ok_or(KeysUnavailable);
        }
        if last.is_some_and(|at| at.elapsed() < REFRESH_INTERVAL) {
            return cached.ok_or(KeysUnavailable);
        }
        match self.fetch().await {
            Ok(set) => {
                *last = Some(Instant::now());
                // The same keys again: keep the set (and what it has verified).
                if let Some(cached) = cached.filter(|c| c.json == set.json) {
                    return Ok(cached);
                }
                let set = Arc::new(set);
                *self.current.write().await = Some(set.clone());
                Ok(set)
            }
            Err(error) => {
                // Do not stamp the attempt when nothing is cached: the next request
                // retries at once instead of failing for ten seconds.
                if cached.is_some() {
                    *last = Some(Instant::now());
                }
                tracing::warn!(error = format!("{error:#}"), "fetching signing keys failed");
                cached.ok_or(KeysUnavailable)
            }
        }
    }

    /// Fetches the key set every [`PERIODIC_REFRESH`] until `shutdown`.
    pub async fn refresh_periodically(
        self: std::sync::Arc<Self>,
        shutdown: aia_telemetry::shutdown::CancellationToken,
    ) {
        if self.fixed {
            return;
        }
        let mut tick = tokio::time::interval(PERIODIC_REFRESH);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = shutdown.cancelled() => return,
            }
            let _ = self.refresh().await;
        }
    }

    async fn fetch(&self) -> anyhow::Result<KeySet> {
        let json = self
            .auth
            .clone()
            .get_jwks(GetJwksRequest {})
            .await?
            .into_inner()
            .jwks_json;
        let jwks: Jwks = serde_json::from_str(&json)?;
        metrics::counter!("gateway_jwks_fetches_total").increment(1);
        Ok(KeySet::new(
            Verifier::new(&jwks, &self.issuer, &self.audience),
            json,
        ))
    }
}

#[cfg(test)]
mod tests {
    use aia_tokens::SigningKey;

    use super::*;

    fn token(key: &SigningKey, exp_in: i64) -> anyhow::Result<String> {
        let now = chrono::Utc::now().timestamp();
        Ok(key.sign(&AccessClaims {
            iss: "https://issuer.test".into(),
            aud: "aia".into(),
            sub: uuid::Uuid::new_v4().to_string(),
            exp: now + exp_in,
            iat: now - 60,
            nbf: now - 60,
            jti: uuid::Uuid::new_v4().to_string(),
            sid: uuid::Uuid::new_v4().to_string(),
            roles: vec!["user".into()],
            amr: vec!["pwd".into()],
        })?)
    }

    fn set_of(key: &SigningKey) -> KeySet {
        let jwks = Jwks {
            keys: vec![key.jwk().clone()],
        };
        KeySet::new(
            Verifier::new(&jwks, "https://issuer.test", "aia"),
            String::new(),
        )
    }

    #[test]
    fn the_memo_only_ever_answers_for_the_exact_token_it_verified() -> anyhow::Result<()> {
        let key = SigningKey::generate()?;
        let set = set_of(&key);
        let good = token(&key, 600)?;
        let first = set.verify(&good).map_err(|e| anyhow::anyhow!("{e}"))?;
        assert_eq!(set.verify(&good).ok(), Some(first));
        // One character changed in the signature: not the memo's token, refused.
        let mut forged = good.clone();
        let last = forged
            .pop()
            .map_or('A', |c| if c == 'A' { 'B' } else { 'A' });
        forged.push(last);
        assert!(set.verify(&forged).is_err());
        // Another key set (keys changed) knows nothing of it, and another key's
        // token is refused there as before.
        let other = SigningKey::generate()?;
        assert!(set_of(&other).verify(&good).is_err());
        // A token that expired (beyond the verifier's leeway) is not answered from
        // the memo.
        let expired = token(&key, -120)?;
        assert!(set.verify(&expired).is_err());
        Ok(())
    }
}
