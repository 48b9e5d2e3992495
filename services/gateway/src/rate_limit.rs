//! Rate limiting: GCRA in Redis, one atomic script per decision, with an in-process
//! fallback.
//!
//! - **Policies** by route class and key (`RATE_LIMIT_*`): `login` (login and its MFA
//!   step, per client IP), `login-account` (per email, checked by the login handler
//!   once it has read the body), `register` and `recovery` (forgot-password, resend
//!   verification; per client IP), and `api` (every other `/v1` route: per user for a
//!   verified bearer token, per API key id, else per client IP). Health, readiness
//!   and JWKS are not limited; preflights never reach here (CORS answers them).
//! - **One round trip**: a Lua script (loaded once, then `EVALSHA`) reads the
//!   theoretical arrival time, decides with Redis's own clock (`TIME`, so gateway
//!   clocks do not matter), and writes it back, atomically. The key is one
//!   `{hash tag}`, so Redis Cluster works.
//! - **Answers**: 429 `problem+json` with `Retry-After`; limited routes carry the
//!   draft-ietf-httpapi-ratelimit-headers fields `RateLimit-Policy: "login";q=20;w=60`
//!   and `RateLimit: "login";r=19;t=3` (remaining, seconds until the quota is whole).
//! - **Fallback**: if Redis does not answer within `RATE_LIMIT_REDIS_BUDGET_MS` (5 ms)
//!   or fails, the decision is taken by an in-process GCRA limiter (`governor`) with
//!   the same quota, per gateway instance; this is logged and counted
//!   (`gateway_rate_limit_fallback_total`). After an error, or three late answers in a
//!   row, Redis is left alone for one second and tried again, so the limiter recovers
//!   by itself; a single late answer costs only its own request a local decision.
//!   Classes listed in `RATE_LIMIT_FAIL_CLOSED` answer 503 instead of falling back.
//! - **API keys**: a key gets its own bucket once auth has accepted it, and a known
//!   key's bucket is checked before auth is asked again (a spent one is refused
//!   without a call to auth). A key this gateway has not seen accepted (in the last
//!   [`KNOWN_KEY_TTL`]) first spends from its address's bucket, before auth is asked:
//!   a flood of invented keys costs auth nothing once the address is limited.

use std::cell::RefCell;

use futures::FutureExt;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aia_settings::{Rate, RateLimitSettings};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::{Quota, RateLimiter};

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{HttpMessage, ResponseError, web};

use crate::problem::Problem;
use crate::state::State;
use crate::{authn, client};

/// GCRA. KEYS[1]: the bucket. ARGV: emission interval and period, in microseconds.
/// Returns {allowed (0/1), remaining, retry after (µs), reset (µs)}.
const GCRA: &str = r"
local interval = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - period
if now < allow_at then
  return {0, 0, allow_at - now, tat - now}
end
redis.call('SET', KEYS[1], new_tat, 'PX', math.max(1, math.ceil((new_tat - now) / 1000)))
return {1, math.floor((period - (new_tat - now)) / interval), 0, new_tat - now}
";

static DECISIONS: std::sync::LazyLock<aia_telemetry::metrics::Family<metrics::Counter>> =
    std::sync::LazyLock::new(|| {
        aia_telemetry::metrics::Family::counter(
            "gateway_rate_limit_decisions_total",
            &["policy", "decision"],
        )
    });

/// How long Redis is left alone after it failed to decide.
const REDIS_BACKOFF: Duration = Duration::from_secs(1);
/// Decisions over the time budget in a row before Redis is left alone. One late
/// answer under load (the gateway's own queueing counts against the budget) costs
/// that request a local decision, not the next second's worth of requests.
const SLOW_IN_A_ROW: u32 = 3;

type Local = RateLimiter<
    String,
    governor::state::keyed::DefaultKeyedStateStore<String>,
    DefaultClock,
    StateInformationMiddleware,
>;

/// One policy: a class, its quota, and its in-process twin.
pub struct Policy {
    /// The class name, used in keys, headers and metrics.
    pub name: &'static str,
    rate: Rate,
    fail_closed: bool,
    local: Local,
}

impl Policy {
    fn new(name: &'static str, rate: Rate, settings: &RateLimitSettings) -> Self {
        let limit = NonZeroU32::new(rate.limit).unwrap_or(NonZeroU32::MIN);
        let interval = rate.period / rate.limit.max(1);
        let quota = Quota::with_period(interval)
            .unwrap_or_else(|| Quota::per_second(limit))
            .allow_burst(limit);
        Self {
            name,
            rate,
            fail_closed: settings.fail_closed.iter().any(|c| c == name),
            local: RateLimiter::keyed(quota).with_middleware::<StateInformationMiddleware>(),
        }
    }

    /// `RateLimit-Policy` item: `"name";q=LIMIT;w=SECONDS`.
    pub fn header(&self) -> String {
        format!(
            "\"{}\";q={};w={}",
            self.name,
            self.rate.limit,
            self.rate.period.as_secs()
        )
    }

    /// The emission interval, at least 1 µs (a quota of more than a million a second
    /// is a million a second: Redis counts in microseconds).
    fn interval_micros(&self) -> u64 {
        let period = self.period_micros();
        (period / u64::from(self.rate.limit.max(1))).max(1)
    }

    fn period_micros(&self) -> u64 {
        u64::try_from(self.rate.period.as_micros()).unwrap_or(u64::MAX)
    }

    fn decide_locally(&self, key: &str) -> Decision {
        match self.local.check_key(&key.to_owned()) {
            Ok(snapshot) => Decision::Allowed {
                remaining: u64::from(snapshot.remaining_burst_capacity()),
                reset: Duration::ZERO,
            },
            Err(not_until) => Decision::Limited {
                retry_after: not_until.wait_time_from(DefaultClock::default().now()),
            },
        }
    }
}

/// What a policy says about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Go on; `remaining` more fit now, the quota is whole again after `reset`.
    Allowed {
        /// Requests left in the burst.
        remaining: u64,
        /// Time until the bucket is full again.
        reset: Duration,
    },
    /// Refused; retry after this long.
    Limited {
        /// Time until one more request fits.
        retry_after: Duration,
    },
    /// Redis could not decide and the class fails closed.
    Unavailable,
}

impl Decision {
    /// `RateLimit` item: `"name";r=REMAINING;t=SECONDS`.
    pub fn header(&self, policy: &Policy) -> Option<String> {
        let (remaining, reset) = match self {
            Self::Allowed { remaining, reset } => (*remaining, *reset),
            Self::Limited { retry_after } => (0, *retry_after),
            Self::Unavailable => return None,
        };
        Some(format!(
            "\"{}\";r={};t={}",
            policy.name,
            remaining,
            reset.as_secs_f64().ceil() as u64
        ))
    }
}

/// The policies and their Redis.
pub struct Limiter {
    /// Per client IP: login and its second step.
    pub login: Policy,
    /// Per email: login.
    pub login_account: Policy,
    /// Per client IP: registration.
    pub register: Policy,
    /// Per client IP: forgot-password and resend-verification.
    pub recovery: Policy,
    /// Per caller: everything else.
    pub api: Policy,
    enabled: bool,
    client: redis::Client,
    /// One multiplexed connection per worker thread, driven by that thread's own
    /// runtime: a decision never wakes another thread, and the decisions a worker
    /// has in flight go out together in one write. (One shared connection made
    /// every request on the second worker a round trip through the first.)
    connection: thread_local::ThreadLocal<RefCell<Connection>>,
    script: redis::Script,
    prefix: String,
    budget: Duration,
    /// Redis is not asked before this time (ms since the Unix epoch).
    skip_until_ms: AtomicU64,
    /// Decisions over the budget since the last one in time.
    slow_in_a_row: std::sync::atomic::AtomicU32,
    /// API keys auth accepted lately.
    known_keys: KnownKeys,
}

/// A worker thread's Redis connection: made, or being made.
#[derive(Default)]
struct Connection {
    ready: Option<redis::aio::MultiplexedConnection>,
    connecting: Option<
        futures::future::Shared<
            futures::future::BoxFuture<'static, Result<redis::aio::MultiplexedConnection, String>>,
        >,
    >,
}

/// How long an accepted API key is remembered as known.
pub const KNOWN_KEY_TTL: Duration = Duration::from_secs(600);
/// At most this many known keys are remembered (then the memory starts over).
const KNOWN_KEYS_MAX: usize = 100_000;

/// SHA-256 digests of the API keys auth accepted lately, with when. Only digests:
/// the gateway keeps no usable key in memory longer than a request.
#[derive(Default)]
struct KnownKeys(
    std::sync::Mutex<std::collections::HashMap<[u8; 32], (String, std::time::Instant)>>,
);

impl KnownKeys {
    /// What the set holds of `key` (computed once per request).
    fn digest(key: &str) -> [u8; 32] {
        use sha2::Digest;
        sha2::Sha256::digest(key.as_bytes()).into()
    }

    fn map(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<[u8; 32], (String, std::time::Instant)>>
    {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The id of the key auth accepted under `digest` lately, if it did.
    fn key_id(&self, digest: &[u8; 32]) -> Option<String> {
        self.map()
            .get(digest)
            .filter(|(_, at)| at.elapsed() < KNOWN_KEY_TTL)
            .map(|(id, _)| id.clone())
    }

    /// Auth accepted the key under `digest` as `key_id`.
    fn accepted(&self, digest: [u8; 32], key_id: &str) {
        let mut map = self.map();
        if map.len() >= KNOWN_KEYS_MAX {
            map.retain(|_, (_, at)| at.elapsed() < KNOWN_KEY_TTL);
            if map.len() >= KNOWN_KEYS_MAX {
                map.clear();
            }
        }
        map.insert(digest, (key_id.to_owned(), std::time::Instant::now()));
    }

    /// Auth refused the key under `digest`.
    fn refused(&self, digest: &[u8; 32]) {
        self.map().remove(digest);
    }
}

/// Milliseconds since the Unix epoch (for back-off deadlines shared across workers).
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl Limiter {
    /// The limiter of `settings`, keys under `prefix` in the Redis at `url`.
    pub fn new(settings: &RateLimitSettings, url: &str, prefix: &str) -> anyhow::Result<Self> {
        Ok(Self {
            login: Policy::new("login", settings.login, settings),
            login_account: Policy::new("login-account", settings.login_account, settings),
            register: Policy::new("register", settings.register, settings),
            recovery: Policy::new("recovery", settings.recovery, settings),
            api: Policy::new("api", settings.api, settings),
            enabled: settings.enabled,
            client: aia_db::redis::client(url)?,
            connection: thread_local::ThreadLocal::new(),
            script: redis::Script::new(GCRA),
            prefix: prefix.to_owned(),
            budget: settings.redis_budget,
            skip_until_ms: AtomicU64::new(0),
            slow_in_a_row: std::sync::atomic::AtomicU32::new(0),
            known_keys: KnownKeys::default(),
        })
    }

    /// Whether limits apply at all.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Forgets idle in-process buckets (call now and then).
    pub fn forget_idle(&self) {
        for policy in [
            &self.login,
            &self.login_account,
            &self.register,
            &self.recovery,
            &self.api,
        ] {
            policy.local.retain_recent();
            policy.local.shrink_to_fit();
        }
    }

    /// This thread's connection, made on first use and after a failure dropped it.
    ///
    /// Making it is not cut short by the decision's time budget: the attempt is kept in
    /// the slot, and the decisions that follow carry it on until it succeeds or fails
    /// (redis-rs bounds it with its own connection timeout). Otherwise a set-up slower
    /// than the budget (TLS to a remote Redis against 5 ms) would start over at every
    /// decision and never finish.
    async fn connection(&self) -> anyhow::Result<redis::aio::MultiplexedConnection> {
        let attempt = {
            let mut slot = self.connection.get_or_default().borrow_mut();
            if let Some(conn) = &slot.ready {
                return Ok(conn.clone());
            }
            slot.connecting
                .get_or_insert_with(|| {
                    let client = self.client.clone();
                    async move {
                        client
                            .get_multiplexed_async_connection()
                            .await
                            .map_err(|e| e.to_string())
                    }
                    .boxed()
                    .shared()
                })
                .clone()
        };
        // No reference to the slot is held across this await.
        let made = attempt.await;
        let mut slot = self.connection.get_or_default().borrow_mut();
        slot.connecting = None;
        let conn = made.map_err(|e| anyhow::anyhow!("connecting to Redis: {e}"))?;
        slot.ready = Some(conn.clone());
        Ok(conn)
    }

    fn forget_connection(&self) {
        if let Some(slot) = self.connection.get() {
            slot.borrow_mut().ready = None;
        }
    }

    async fn decide_in_redis(&self, policy: &Policy, key: &str) -> anyhow::Result<Decision> {
        let mut conn = self.connection().await?;
        let bucket = aia_db::redis::key(&self.prefix, "rl", &format!("{}:{key}", policy.name));
        let (allowed, remaining, retry_after, reset): (i64, i64, i64, i64) = self
            .script
            .key(bucket)
            .arg(policy.interval_micros())
            .arg(policy.period_micros())
            .invoke_async(&mut conn)
            .await?;
        let micros = |v: i64| Duration::from_micros(u64::try_from(v).unwrap_or(0));
        Ok(if allowed == 1 {
            Decision::Allowed {
                remaining: u64::try_from(remaining).unwrap_or(0),
                reset: micros(reset),
            }
        } else {
            Decision::Limited {
                retry_after: micros(retry_after),
            }
        })
    }

    /// The decision of `policy` for `key` (an IP, a user id, an email...).
    pub async fn check(&self, policy: &Policy, key: &str) -> Decision {
        let decision = self.decide(policy, key).await;
        let label = match decision {
            Decision::Allowed { .. } => "allowed",
            Decision::Limited { .. } => "limited",
            Decision::Unavailable => "unavailable",
        };
        DECISIONS.get(&[policy.name, label]).increment(1);
        decision
    }

    async fn decide(&self, policy: &Policy, key: &str) -> Decision {
        if now_ms() >= self.skip_until_ms.load(Ordering::Relaxed) {
            let back_off =
                match tokio::time::timeout(self.budget, self.decide_in_redis(policy, key)).await {
                    Ok(Ok(decision)) => {
                        self.slow_in_a_row.store(0, Ordering::Relaxed);
                        return decision;
                    }
                    Ok(Err(error)) => {
                        tracing::warn!(
                            error = format!("{error:#}"),
                            policy = policy.name,
                            "rate limit: Redis failed; deciding in-process"
                        );
                        // A broken connection is replaced at the next try.
                        self.forget_connection();
                        true
                    }
                    Err(_) => {
                        let slow = self.slow_in_a_row.fetch_add(1, Ordering::Relaxed) + 1;
                        tracing::warn!(
                            policy = policy.name,
                            budget_ms = self.budget.as_millis(),
                            in_a_row = slow,
                            "rate limit: Redis too slow; deciding in-process"
                        );
                        slow >= SLOW_IN_A_ROW
                    }
                };
            if back_off {
                self.slow_in_a_row.store(0, Ordering::Relaxed);
                self.skip_until_ms.store(
                    now_ms() + u64::try_from(REDIS_BACKOFF.as_millis()).unwrap_or(1000),
                    Ordering::Relaxed,
                );
            }
        }
        metrics::counter!("gateway_rate_limit_fallback_total", "policy" => policy.name, "mode" => if policy.fail_closed { "closed" } else { "local" }).increment(1);
        if policy.fail_closed {
            Decision::Unavailable
        } else {
            policy.decide_locally(key)
        }
    }
}

/// The policy and key of a request, and the decision when it was already taken;
/// `None` for routes that are not limited.
async fn classify<'a>(
    limiter: &'a Limiter,
    state: &State,
    req: &ServiceRequest,
) -> Option<(&'a Policy, String, Option<Decision>)> {
    // The path as the router matches it (escapes of ordinary characters decoded), not
    // as sent: `/v1/auth/%6cogin` is served by the login route, so it is limited as
    // a login.
    let path = req.match_info().as_str();
    // CORS preflights never get here: the CORS middleware, outside this one, answers
    // them itself. An OPTIONS that reaches this point is one it did not take for a
    // preflight (an `Access-Control-Request-Method` that is no method, say) and goes
    // on like any request, so it pays like one.
    if matches!(path, "/healthz" | "/readyz" | "/.well-known/jwks.json") {
        return None;
    }
    let by_ip = || {
        client::addr_of(req.request()).map_or_else(
            || "ip:".to_owned(),
            |ip| format!("ip:{}", aia_telemetry::net::bucket_of(ip)),
        )
    };
    let post = req.method() == Method::POST;
    Some(match path {
        "/v1/auth/login" | "/v1/auth/login/mfa" if post => (&limiter.login, by_ip(), None),
        "/v1/auth/register" if post => (&limiter.register, by_ip(), None),
        "/v1/auth/password/forgot" | "/v1/auth/verify-email/resend" if post => {
            (&limiter.recovery, by_ip(), None)
        }
        _ => {
            let (key, decided) = caller_key(limiter, state, req, by_ip).await;
            (&limiter.api, key, decided)
        }
    })
}

/// `user:<id>` for a bearer token that verifies, `key:<id>` for an API key auth
/// accepts (each kept for the handler, so it is not checked twice). Anything else is
/// limited by client IP: an invented key id gets no bucket of its own, so guessing
/// keys is limited like any anonymous traffic; and a key not known to be good pays
/// from the address's bucket before auth is asked (the decision is returned then).
async fn caller_key(
    limiter: &Limiter,
    state: &State,
    req: &ServiceRequest,
    by_ip: impl Fn() -> String,
) -> (String, Option<Decision>) {
    // Refused further in; meanwhile it is nobody's but the address's to pay for.
    if authn::ambiguous(req.headers()) {
        return (by_ip(), None);
    }
    // An API key, when there is one, is the credential (as for authentication): a
    // token beside it, perhaps someone else's, spends nobody's quota.
    if let Some(token) = authn::bearer(req.headers())
        && authn::api_key(req.headers()).is_none()
    {
        let Ok(claims) = authn::verify(state, &token).await else {
            return (by_ip(), None);
        };
        // A token its owner revoked (a thief's copy replayed until it expires) spends
        // its address's quota, not the owner's, and is not the owner's usage.
        if authn::known_revoked(state, &claims) {
            return (by_ip(), None);
        }
        let key = format!("user:{}", claims.sub);
        req.extensions_mut()
            .insert(authn::Verified { token, claims });
        authn::identify(req.request(), key.clone());
        return (key, None);
    }
    let Some(api_key) = authn::api_key(req.headers()) else {
        return (by_ip(), None);
    };
    let digest = KnownKeys::digest(&api_key);
    // A key auth accepted lately pays from its own bucket, and one that has spent it
    // is refused before auth is asked (a flood with a real key costs auth nothing
    // once it is limited); any other pays from its address's bucket first.
    let bucket = match limiter.known_keys.key_id(&digest) {
        Some(key_id) => format!("key:{key_id}"),
        None => by_ip(),
    };
    let paid = limiter.check(&limiter.api, &bucket).await;
    if !matches!(paid, Decision::Allowed { .. }) {
        return (bucket, Some(paid));
    }
    let checked = authn::check_api_key(state, api_key).await;
    // Only auth's verdict moves a key in or out of the known set (not an outage).
    let accepted = match &checked {
        Ok(authn::Caller::ApiKey { key_id, .. }) => {
            limiter.known_keys.accepted(digest, key_id);
            Some(format!("key:{key_id}"))
        }
        Err(problem) if problem.status == 401 => {
            limiter.known_keys.refused(&digest);
            None
        }
        _ => None,
    };
    req.extensions_mut().insert(authn::CheckedKey(checked));
    match accepted {
        Some(key) => {
            authn::identify(req.request(), key.clone());
            // Paid already when it was the key's own bucket.
            let decided = (key == bucket).then_some(paid);
            (key, decided)
        }
        // The address paid; a key refused now (revoked since it was known) pays from
        // its address's bucket, not its owner's.
        None if !bucket.starts_with("key:") => (bucket, Some(paid)),
        None => (by_ip(), None),
    }
}

/// The key of an account for the per-account policy: a hash of the normalised
/// email, so that Redis holds no addresses.
pub fn account_key(email: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(email.trim().to_lowercase().as_bytes());
    format!("acct:{}", hex::encode(&digest[..16]))
}

/// The `RateLimit-Policy` and `RateLimit` fields of a decision.
fn fields(policy: &Policy, decision: &Decision) -> Vec<(HeaderName, HeaderValue)> {
    let mut fields = Vec::with_capacity(2);
    if let Ok(value) = HeaderValue::from_str(&policy.header()) {
        fields.push((HeaderName::from_static("ratelimit-policy"), value));
    }
    if let Some(value) = decision
        .header(policy)
        .and_then(|h| HeaderValue::from_str(&h).ok())
    {
        fields.push((HeaderName::from_static("ratelimit"), value));
    }
    fields
}

/// The answer to a request the policy refuses for `key`, if it does (the refusal is
/// recorded in `rejections`).
pub fn refusal(
    policy: &Policy,
    key: &str,
    decision: &Decision,
    rejections: &crate::rejections::Rejections,
) -> Option<Problem> {
    let mut problem = match decision {
        Decision::Allowed { .. } => return None,
        Decision::Limited { retry_after } => {
            rejections.record("rate_limit", &format!("{}:{key}", policy.name));
            let seconds = retry_after.as_secs_f64().ceil().max(1.0) as u64;
            Problem::too_many_requests(HeaderValue::from(seconds))
                .detail("too many requests; retry after the time in Retry-After")
        }
        Decision::Unavailable => Problem::unavailable(),
    };
    problem.headers.extend(fields(policy, decision));
    Some(problem)
}

/// Spends one of an account's guesses at a secret (its password or a one-time code)
/// from the per-account policy (`RATE_LIMIT_LOGIN_ACCOUNT`): the 429 (or 503) problem
/// once they are spent. Logins spend them by the email's [`account_key`]; the routes
/// that check a signed-in user's password or code (password change, TOTP on and off,
/// API-key creation) by the user id, so that a stolen access token is no faster a password oracle than the
/// login form.
pub async fn spend_guess(state: &State, account: &str) -> Result<(), Problem> {
    let limiter = &state.limiter;
    if !limiter.enabled() {
        return Ok(());
    }
    let decision = limiter.check(&limiter.login_account, account).await;
    match refusal(
        &limiter.login_account,
        account,
        &decision,
        &state.rejections,
    ) {
        Some(problem) => Err(problem),
        None => Ok(()),
    }
}

/// The key under which a signed-in user's guesses are counted.
pub fn user_account_key(user_id: &str) -> String {
    format!("user:{user_id}")
}

/// The middleware: one decision per request, before validation and handlers.
pub async fn limit(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let Some(state) = req.app_data::<web::Data<State>>().cloned() else {
        return Ok(next.call(req).await?.map_into_boxed_body());
    };
    let limiter = state.limiter.clone();
    if !limiter.enabled() {
        return Ok(next.call(req).await?.map_into_boxed_body());
    }
    let Some((policy, key, decided)) = classify(&limiter, &state, &req).await else {
        return Ok(next.call(req).await?.map_into_boxed_body());
    };
    let decision = match decided {
        Some(decision) => decision,
        None => limiter.check(policy, &key).await,
    };
    if let Some(problem) = refusal(policy, &key, &decision, &state.rejections) {
        return Ok(req.into_response(problem.error_response()));
    }
    let mut response = next.call(req).await?.map_into_boxed_body();
    let headers = response.headers_mut();
    for (name, value) in fields(policy, &decision) {
        // A handler's own policy (login-account) is listed beside this one.
        let combined = match headers.get(&name).and_then(|v| v.to_str().ok()) {
            Some(inner) => {
                HeaderValue::from_str(&format!("{}, {inner}", value.to_str().unwrap_or_default()))
                    .unwrap_or(value)
            }
            None => value,
        };
        headers.insert(name, combined);
    }
    Ok(response)
}

/// Forgets idle in-process buckets every minute until `shutdown`.
pub async fn sweep(limiter: Arc<Limiter>, shutdown: aia_telemetry::shutdown::CancellationToken) {
    let mut every = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = every.tick() => limiter.forget_idle(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(limit: u32) -> RateLimitSettings {
        let rate = Rate {
            limit,
            period: Duration::from_secs(60),
        };
        RateLimitSettings {
            enabled: true,
            login: rate,
            login_account: rate,
            register: rate,
            recovery: rate,
            api: rate,
            redis_budget: Duration::from_millis(5),
            fail_closed: vec!["register".into()],
            redis_url: None,
        }
    }

    #[test]
    fn the_in_process_limiter_lets_the_burst_through_then_refuses() {
        let settings = settings(3);
        let policy = Policy::new("login", settings.login, &settings);
        let decisions: Vec<Decision> = (0..4).map(|_| policy.decide_locally("k")).collect();
        assert!(
            matches!(decisions[0], Decision::Allowed { remaining: 2, .. }),
            "{decisions:?}"
        );
        assert!(
            matches!(decisions[2], Decision::Allowed { remaining: 0, .. }),
            "{decisions:?}"
        );
        // One request per 20 s comes back.
        assert!(
            matches!(decisions[3], Decision::Limited { retry_after }
                if retry_after > Duration::from_secs(15) && retry_after <= Duration::from_secs(20)),
            "{decisions:?}"
        );
        // Another key has its own bucket.
        assert!(matches!(
            policy.decide_locally("other"),
            Decision::Allowed { .. }
        ));
    }

    #[test]
    fn headers_follow_the_draft() {
        let settings = settings(20);
        let policy = Policy::new("login", settings.login, &settings);
        assert_eq!(policy.header(), "\"login\";q=20;w=60");
        let allowed = Decision::Allowed {
            remaining: 19,
            reset: Duration::from_millis(2_100),
        };
        assert_eq!(
            allowed.header(&policy).as_deref(),
            Some("\"login\";r=19;t=3")
        );
        assert!(Policy::new("register", settings.register, &settings).fail_closed);
    }
}
