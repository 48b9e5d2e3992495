//! Login throttling and account lockout, held in Redis so that every auth replica
//! sees the same counts.
//!
//! Three axes, each a counter of failed logins over a sliding window
//! (`LOCKOUT_WINDOW_SECONDS`, 15 min):
//!
//! - **per source IP**: past `LOGIN_IP_FAILURE_LIMIT` failures (50), that IP gets no
//!   more tries until the window passes. This stops a sprayer long before it could
//!   lock a user base (it locks at most 50/10 = 5 accounts per window and IP).
//! - **per account and IP**: after `LOGIN_BACKOFF_AFTER` failures (3), each further
//!   try from that IP must wait 2^(n-3) s (at most 60 s) after the last failure.
//! - **per account**: after `LOCKOUT_THRESHOLD` failures (10) from anywhere, the
//!   account locks for `LOCKOUT_DURATION_SECONDS` (15 min), with an audit event; an
//!   admin can unlock it earlier.
//!
//! So that a stranger cannot keep someone locked out forever, a lock does not apply
//! to an IP address the account has logged in from successfully within 30 days: from
//! there, the correct password still works (the per-IP and per-account-and-IP axes
//! still apply, so the lock cannot be bypassed by guessing from such an address).
//!
//! Addresses are counted by their network as the gateway's limiter counts them (an
//! IPv6 address by its /64: one subscriber's, with 2^64 addresses to rotate through).
//!
//! Counters are keyed by the normalised email whether or not an account exists, so
//! throttling behaves the same for unknown emails and reveals nothing. If Redis
//! cannot be reached the check fails closed (logins answer 503) unless
//! `LOCKOUT_FAIL_OPEN=true`.

use std::time::Duration;

use aia_db::redis::Pool;
use anyhow::Context;
use deadpool_redis::redis;

/// How long a successful login makes an IP a known client of the account.
const KNOWN_CLIENT_TTL: Duration = Duration::from_secs(30 * 86_400);
/// How long a completed login keeps its device (the gateway's device cookie) a known
/// client of the account: the cookie's own lifetime.
const KNOWN_DEVICE_TTL: Duration = Duration::from_secs(180 * 86_400);
/// Devices an account keeps, at most (the most recently used): a client that keeps
/// no cookies makes a new device at every login.
const MAX_DEVICES: isize = 32;
/// Longest backoff between tries on one account from one IP.
const MAX_BACKOFF_SECS: u64 = 60;

/// Settings of the throttle.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Failures on one account before it locks.
    pub threshold: u64,
    /// How long a lock lasts.
    pub lock_for: Duration,
    /// The window the counters cover.
    pub window: Duration,
    /// Failures from one IP before it is refused.
    pub ip_limit: u64,
    /// Failures on one account from one IP before backoff starts.
    pub backoff_after: u64,
    /// Let logins through when Redis is unreachable.
    pub fail_open: bool,
}

/// Why a login is refused before its password is even checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Too many failures from this IP, or too soon after the last failure on this
    /// account from this IP, or the account is locked: retry after this long.
    RetryAfter(Duration),
}

/// What the pre-check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Precheck {
    /// Locked, but this IP is a known client: only a correct password gets in.
    pub locked_known_client: bool,
    /// This IP is a known client of the account (locked or not).
    pub known_client: bool,
}

/// The throttle.
#[derive(Clone)]
pub struct Lockout {
    redis: Pool,
    prefix: String,
    limits: Limits,
}

impl Lockout {
    /// A throttle over `redis`, keys under `prefix`.
    pub fn new(redis: Pool, prefix: String, limits: Limits) -> Self {
        Self {
            redis,
            prefix,
            limits,
        }
    }

    fn key(&self, kind: &str, id: &str) -> String {
        aia_db::redis::key(&self.prefix, "lo", &format!("{kind}:{id}"))
    }

    /// Before hashing: may this login be tried at all? A `device` (the id of the
    /// gateway's device cookie; empty for none) that a completed login of the account
    /// registered counts as a known client.
    pub async fn precheck(
        &self,
        email: &str,
        ip: &str,
        device: &str,
    ) -> anyhow::Result<Result<Precheck, Refusal>> {
        let ip = aia_telemetry::net::bucket_of_text(ip);
        let result = self.precheck_redis(email, &ip, device).await;
        match result {
            Ok(answer) => Ok(answer),
            Err(error) if self.limits.fail_open => {
                metrics::counter!("auth_lockout_redis_errors_total", "mode" => "open").increment(1);
                tracing::error!(
                    error = format!("{error:#}"),
                    "lockout check failed; failing open"
                );
                Ok(Ok(Precheck {
                    locked_known_client: false,
                    known_client: false,
                }))
            }
            Err(error) => {
                metrics::counter!("auth_lockout_redis_errors_total", "mode" => "closed")
                    .increment(1);
                Err(error)
            }
        }
    }

    async fn precheck_redis(
        &self,
        email: &str,
        ip: &str,
        device: &str,
    ) -> anyhow::Result<Result<Precheck, Refusal>> {
        let mut conn = self.redis.get().await.context("Redis connection")?;
        let pair = format!("{email}|{ip}");
        let (ip_failures, ip_ttl, pair_failures, last_failure, lock_ttl, known, device_seen): Counters =
            redis::pipe()
            .get(self.key("ip", ip))
            .ttl(self.key("ip", ip))
            .get(self.key("pair", &pair))
            .get(self.key("pairlast_ms", &pair))
            .ttl(self.key("lock", email))
            .sismember(self.key("known", email), ip)
            .zscore(self.key("known_devices", email), device_member(device))
            .query_async(&mut conn)
            .await
            .context("reading lockout counters")?;
        // Registered, and used by a completed login within the device's lifetime.
        let known_device = !device.is_empty()
            && device_seen.is_some_and(|seen| {
                (now_ms() / 1000).saturating_sub(seen as u64) <= KNOWN_DEVICE_TTL.as_secs()
            });
        let known = known || known_device;
        if ip_failures.unwrap_or(0) >= self.limits.ip_limit {
            return Ok(Err(Refusal::RetryAfter(Duration::from_secs(
                u64::try_from(ip_ttl.max(1)).unwrap_or(1),
            ))));
        }
        let pair_failures = pair_failures.unwrap_or(0);
        if pair_failures >= self.limits.backoff_after {
            let wait = 1u64 << (pair_failures - self.limits.backoff_after).min(6);
            let wait_ms = wait.min(MAX_BACKOFF_SECS) * 1000;
            // In milliseconds: counted in whole seconds, a one-second wait was no
            // wait at all when the next try fell just past a second boundary.
            let since_ms = now_ms().saturating_sub(last_failure.unwrap_or(0));
            if since_ms < wait_ms {
                // Whole seconds, rounded up: `Retry-After` must not invite a try
                // that is still too soon.
                let left = (wait_ms - since_ms).div_ceil(1000);
                return Ok(Err(Refusal::RetryAfter(Duration::from_secs(left))));
            }
        }
        let locked = lock_ttl > 0 || lock_ttl == -1;
        if locked && !known {
            return Ok(Err(Refusal::RetryAfter(Duration::from_secs(
                u64::try_from(lock_ttl.max(1)).unwrap_or(1),
            ))));
        }
        Ok(Ok(Precheck {
            locked_known_client: locked && known,
            known_client: known,
        }))
    }

    /// The failures on one account that lock it, and for how long.
    pub fn threshold(&self) -> (u64, Duration) {
        (self.limits.threshold, self.limits.lock_for)
    }

    /// The Redis part of [`Lockout::count_attempt`].
    async fn count_attempt_redis(&self, email: &str) -> anyhow::Result<u64> {
        let mut conn = self.redis.get().await.context("Redis connection")?;
        let (account_failures,): (u64,) = redis::pipe()
            .cmd("INCR")
            .arg(self.key("acct", email))
            .cmd("EXPIRE")
            .arg(self.key("acct", email))
            .arg(self.limits.window.as_secs())
            .arg("NX")
            .ignore()
            .query_async(&mut conn)
            .await
            .context("counting a second-factor attempt")?;
        Ok(account_failures)
    }

    /// The Redis part of [`Lockout::record_failure`].
    async fn record_failure_redis(
        &self,
        email: &str,
        ip: &str,
        device: &str,
        counted: Option<u64>,
    ) -> anyhow::Result<bool> {
        let ip = aia_telemetry::net::bucket_of_text(ip);
        let ip = ip.as_str();
        let mut conn = self.redis.get().await.context("Redis connection")?;
        let window = self.limits.window.as_secs();
        let pair = format!("{email}|{ip}");
        let mut pipe = redis::pipe();
        if counted.is_none() {
            pipe.cmd("INCR")
                .arg(self.key("acct", email))
                .cmd("EXPIRE")
                .arg(self.key("acct", email))
                .arg(window)
                .arg("NX")
                .ignore();
        }
        pipe.cmd("INCR")
            .arg(self.key("ip", ip))
            .ignore()
            .cmd("EXPIRE")
            .arg(self.key("ip", ip))
            .arg(window)
            .arg("NX")
            .ignore()
            .cmd("INCR")
            .arg(self.key("pair", &pair))
            .ignore()
            .cmd("EXPIRE")
            .arg(self.key("pair", &pair))
            .arg(window)
            .arg("NX")
            .ignore()
            .cmd("SET")
            .arg(self.key("pairlast_ms", &pair))
            .arg(now_ms())
            .arg("EX")
            .arg(window)
            .ignore();
        let account_failures = match counted {
            Some(count) => {
                let () = pipe
                    .query_async(&mut conn)
                    .await
                    .context("counting a failed login")?;
                count
            }
            None => {
                let (count,): (u64,) = pipe
                    .query_async(&mut conn)
                    .await
                    .context("counting a failed login")?;
                count
            }
        };
        if !device.is_empty() {
            self.count_device_failure(&mut conn, email, device).await?;
        }
        if account_failures < self.limits.threshold {
            return Ok(false);
        }
        let newly: Option<String> = redis::cmd("SET")
            .arg(self.key("lock", email))
            .arg(1)
            .arg("EX")
            .arg(self.limits.lock_for.as_secs())
            .arg("NX")
            .query_async(&mut conn)
            .await
            .context("locking an account")?;
        Ok(newly.is_some())
    }

    /// A failure from `device` (OWASP's device-cookie lockout): past the account's
    /// lock threshold within the window, the device is no longer a known client of
    /// the account, so a device once used (a thief's, a shared computer) does not
    /// guess past the lock for ever.
    async fn count_device_failure(
        &self,
        conn: &mut deadpool_redis::Connection,
        email: &str,
        device: &str,
    ) -> anyhow::Result<()> {
        let member = device_member(device);
        let failures = self.key("device_failures", &format!("{email}|{member}"));
        let (count,): (u64,) = redis::pipe()
            .cmd("INCR")
            .arg(&failures)
            .cmd("EXPIRE")
            .arg(&failures)
            .arg(self.limits.window.as_secs())
            .arg("NX")
            .ignore()
            .query_async(conn)
            .await
            .context("counting a device's failed login")?;
        if count >= self.limits.threshold {
            let () = redis::pipe()
                .zrem(self.key("known_devices", email), &member)
                .ignore()
                .del(&failures)
                .ignore()
                .query_async(conn)
                .await
                .context("forgetting a device")?;
        }
        Ok(())
    }

    /// The Redis part of [`Lockout::record_success`].
    async fn record_success_redis(
        &self,
        email: &str,
        ip: &str,
        device: &str,
    ) -> anyhow::Result<()> {
        let ip = aia_telemetry::net::bucket_of_text(ip);
        let ip = ip.as_str();
        let mut conn = self.redis.get().await.context("Redis connection")?;
        let pair = format!("{email}|{ip}");
        let mut pipe = redis::pipe();
        if !device.is_empty() {
            // A sorted set by last use: the oldest past MAX_DEVICES go.
            let devices = self.key("known_devices", email);
            pipe.zadd(&devices, device_member(device), now_ms() / 1000)
                .ignore()
                .zremrangebyrank(&devices, 0, -(MAX_DEVICES + 1))
                .ignore()
                .expire(
                    &devices,
                    i64::try_from(KNOWN_DEVICE_TTL.as_secs()).unwrap_or(i64::MAX),
                )
                .ignore();
        }
        let () = pipe
            .del(self.key("acct", email))
            .ignore()
            .del(self.key("pair", &pair))
            .ignore()
            .del(self.key("pairlast_ms", &pair))
            .ignore()
            .sadd(self.key("known", email), ip)
            .ignore()
            .expire(
                self.key("known", email),
                i64::try_from(KNOWN_CLIENT_TTL.as_secs()).unwrap_or(i64::MAX),
            )
            .ignore()
            .query_async(&mut conn)
            .await
            .context("recording a successful login")?;
        Ok(())
    }

    /// [`Lockout::unlock`] whose Redis error is an error whatever
    /// `LOCKOUT_FAIL_OPEN` says (an admin's unlock must not answer success for an
    /// account that stays locked).
    pub async fn unlock_or_fail(&self, email: &str) -> anyhow::Result<bool> {
        self.unlock_redis(email).await
    }

    /// Whether the account is locked now.
    pub async fn is_locked(&self, email: &str) -> anyhow::Result<bool> {
        let mut conn = self.redis.get().await.context("Redis connection")?;
        let ttl: i64 = redis::cmd("TTL")
            .arg(self.key("lock", email))
            .query_async(&mut conn)
            .await
            .context("reading an account's lock")?;
        Ok(ttl > 0 || ttl == -1)
    }

    /// The Redis part of [`Lockout::unlock`].
    async fn unlock_redis(&self, email: &str) -> anyhow::Result<bool> {
        let mut conn = self.redis.get().await.context("Redis connection")?;
        let (removed, _): (u64, u64) = redis::pipe()
            .del(self.key("lock", email))
            .del(self.key("acct", email))
            .query_async(&mut conn)
            .await
            .context("unlocking an account")?;
        Ok(removed > 0)
    }
}

impl Lockout {
    /// A counter update's outcome under `LOCKOUT_FAIL_OPEN`: with it, a Redis error is
    /// logged and counted and `fallback` stands in (logins that the pre-check let
    /// through are not then refused by the bookkeeping after them); without it, the
    /// error stands (the caller answers 503).
    fn open_on_error<T>(&self, outcome: anyhow::Result<T>, fallback: T) -> anyhow::Result<T> {
        match outcome {
            Err(error) if self.limits.fail_open => {
                metrics::counter!("auth_lockout_redis_errors_total", "mode" => "open").increment(1);
                tracing::error!(
                    error = format!("{error:#}"),
                    "lockout bookkeeping failed; failing open"
                );
                Ok(fallback)
            }
            other => other,
        }
    }

    /// Before a second-factor code is checked: counts it on the account alone (a
    /// success clears it; a failure is then recorded with this count). The account's
    /// failures now (0 when Redis fails and `LOCKOUT_FAIL_OPEN` is set). Counting
    /// first, atomically, is what keeps codes sent at once from all passing a check
    /// made before any of them counted.
    pub async fn count_attempt(&self, email: &str) -> anyhow::Result<u64> {
        let outcome = self.count_attempt_redis(email).await;
        self.open_on_error(outcome, 0)
    }

    /// Takes back a count of [`Lockout::count_attempt`] for a code that was right
    /// (where a right code is not a login, which clears the count altogether).
    pub async fn uncount_attempt(&self, email: &str) -> anyhow::Result<()> {
        let outcome = async {
            let mut conn = self.redis.get().await.context("Redis connection")?;
            let _: i64 = redis::Script::new(
                "local n = redis.call('DECR', KEYS[1]) \
                 if n <= 0 then redis.call('DEL', KEYS[1]) end return n",
            )
            .key(self.key("acct", email))
            .invoke_async(&mut conn)
            .await
            .context("taking back a second-factor attempt")?;
            anyhow::Ok(())
        }
        .await;
        self.open_on_error(outcome, ())
    }

    /// After a failed password or code: counts it on every axis (on the account
    /// already, when `counted` is what [`Lockout::count_attempt`] returned) and locks
    /// the account once due, and on `device` (empty for none), which stops being a
    /// known client after as many. True if this failure locked it (it was not
    /// locked).
    pub async fn record_failure(
        &self,
        email: &str,
        ip: &str,
        device: &str,
        counted: Option<u64>,
    ) -> anyhow::Result<bool> {
        let outcome = self.record_failure_redis(email, ip, device, counted).await;
        self.open_on_error(outcome, false)
    }

    /// After a successful login: this IP (and `device`, unless empty) becomes a
    /// known client, and the account's counters start again.
    pub async fn record_success(&self, email: &str, ip: &str, device: &str) -> anyhow::Result<()> {
        let outcome = self.record_success_redis(email, ip, device).await;
        self.open_on_error(outcome, ())
    }

    /// Lifts a lock and clears the account's counter (password reset). True if the
    /// account was locked. Under `LOCKOUT_FAIL_OPEN` a Redis error reads as "was not
    /// locked"; [`Lockout::unlock_or_fail`] never hides one.
    pub async fn unlock(&self, email: &str) -> anyhow::Result<bool> {
        let outcome = self.unlock_redis(email).await;
        self.open_on_error(outcome, false)
    }
}

/// What the pre-check reads: failures from the address and its TTL, failures of the
/// account from the address and the last one's time, the lock's TTL, whether the
/// address is a known client, when the device was last registered.
type Counters = (
    Option<u64>,
    i64,
    Option<u64>,
    Option<u64>,
    i64,
    bool,
    Option<f64>,
);

/// How a device id is kept in the account's set: its hash, so that Redis holds no
/// cookie values and an id of any length costs the same.
fn device_member(device: &str) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(device.as_bytes())[..16])
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
