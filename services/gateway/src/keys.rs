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
use aia_tokens::{Jwks, MemoVerifier, Verifier};
use tokio::sync::{Mutex, RwLock};

/// Least time between two fetches of the key set.
const REFRESH_INTERVAL: Duration = Duration::from_secs(10);

/// How often the key set is fetched anyway, to learn keys published ahead of use.
pub const PERIODIC_REFRESH: Duration = Duration::from_secs(30);

/// A fetched key set.
#[derive(Debug)]
pub struct KeySet {
    /// The verifier over its keys, with its memo of the tokens it accepted (the memo
    /// belongs to this set: when the keys change, it goes with them).
    pub verifier: MemoVerifier,
    /// The document, as served at `/.well-known/jwks.json`.
    pub json: String,
}

impl KeySet {
    fn new(verifier: Verifier, json: String) -> Self {
        Self {
            verifier: MemoVerifier::new(verifier),
            json,
        }
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
                // A gateway that cannot reach auth keeps verifying with the set it
                // has: a key withdrawn since is still taken here. Alerted on
                // (`AiaGatewaySigningKeysStale`) when this grows old.
                metrics::gauge!("gateway_signing_keys_fetched_timestamp_seconds")
                    .set(chrono::Utc::now().timestamp() as f64);
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
