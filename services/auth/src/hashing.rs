//! Password hashing: argon2id on the blocking pool, at most N at once.
//!
//! Hashing is deliberately expensive (19 MiB and two passes by default), so it runs
//! off the async threads, and a semaphore bounds how many run at once: a login flood
//! queues here instead of starving every other request of CPU and memory, and the
//! threads that hash run at a lower priority ([`HASHING_NICENESS`]).
//!
//! Unknown users: [`Hasher::verify`] with no stored hash verifies against a dummy hash
//! made at start with the same parameters, so an unknown email costs what a wrong
//! password costs.

use std::sync::Arc;
use std::time::Duration;

use aia_settings::PasswordHashing;
use anyhow::Context;
use argon2::{Algorithm, Argon2, Params, PasswordHash, PasswordHasher, PasswordVerifier, Version};
use tokio::sync::Semaphore;

use crate::domain::Password;

/// Longest wait for a hashing slot before the request is refused as overloaded.
const QUEUE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why hashing could not be done.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// Every slot stayed busy for [`QUEUE_TIMEOUT`].
    #[error("password hashing is overloaded")]
    Overloaded,
    /// Anything else (a bug, or a corrupt stored hash).
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

fn params(settings: &PasswordHashing) -> anyhow::Result<Params> {
    Params::new(
        settings.memory_kib,
        settings.iterations,
        settings.parallelism,
        None,
    )
    .map_err(|e| anyhow::anyhow!("argon2 parameters: {e}"))
}

/// Raw argon2id hashes per second with the parameters of `settings`, on `threads`
/// OS threads for `duration`: the reference `make bench` compares logins with (a
/// login costs one such hash).
pub fn raw_rate(
    settings: &PasswordHashing,
    threads: usize,
    duration: Duration,
) -> anyhow::Result<f64> {
    let params = params(settings)?;
    let deadline = std::time::Instant::now() + duration;
    let workers: Vec<_> = (0..threads.max(1))
        .map(|_| {
            let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
            std::thread::spawn(move || -> anyhow::Result<u64> {
                let (salt, mut out, mut done) = ([7u8; 16], [0u8; 32], 0u64);
                while std::time::Instant::now() < deadline {
                    argon2
                        .hash_password_into(b"a benchmark passphrase", &salt, &mut out)
                        .map_err(|e| anyhow::anyhow!("argon2: {e}"))?;
                    done += 1;
                }
                Ok(done)
            })
        })
        .collect();
    let mut total = 0u64;
    for worker in workers {
        total += worker
            .join()
            .map_err(|_| anyhow::anyhow!("a hashing thread panicked"))??;
    }
    Ok(total as f64 / duration.as_secs_f64())
}

/// The niceness a thread hashes at. A login flood then takes the CPU the rest of the
/// platform leaves over instead of competing with it: requests that need no hash
/// (health checks, proxied calls, token refreshes) keep their latency while logins queue.
/// With nothing else to run, hashing still gets every core, so the login rate of an
/// otherwise idle machine is unchanged.
pub const HASHING_NICENESS: i32 = 10;

/// Lowers the calling thread's priority to [`HASHING_NICENESS`] (Linux: per thread).
/// An unprivileged thread cannot raise it again, so a blocking-pool thread that hashed
/// once keeps it until tokio retires the thread (after 10 s without work); the only other
/// blocking work in auth is name resolution when a gRPC channel reconnects. A process
/// already run at a lower priority is left as it is.
fn step_aside() {
    let thread = Some(rustix::thread::gettid());
    match rustix::process::getpriority_process(thread) {
        Ok(current) if current >= HASHING_NICENESS => {}
        _ => {
            if let Err(error) = rustix::process::setpriority_process(thread, HASHING_NICENESS) {
                tracing::debug!(%error, "could not lower the hashing thread's priority");
            }
        }
    }
}

/// The password hasher.
#[derive(Clone)]
pub struct Hasher {
    params: Params,
    slots: Arc<Semaphore>,
    dummy: Arc<str>,
}

impl Hasher {
    /// A hasher with these parameters; computes the dummy hash (one hash's time).
    pub async fn new(settings: &PasswordHashing) -> anyhow::Result<Self> {
        let params = params(settings)?;
        let mut hasher = Self {
            params,
            slots: Arc::new(Semaphore::new(settings.concurrency)),
            dummy: Arc::from(""),
        };
        let mut random = [0u8; 32];
        getrandom::fill(&mut random).map_err(|e| anyhow::anyhow!("OS random source: {e}"))?;
        let dummy = hasher.hash(Password::presented(&hex(&random))?).await?;
        hasher.dummy = Arc::from(dummy);
        Ok(hasher)
    }

    fn argon2(&self) -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, self.params.clone())
    }

    async fn on_pool<R: Send + 'static>(
        &self,
        work: impl FnOnce() -> anyhow::Result<R> + Send + 'static,
    ) -> Result<R, HashError> {
        let permit = tokio::time::timeout(QUEUE_TIMEOUT, self.slots.clone().acquire_owned())
            .await
            .map_err(|_| HashError::Overloaded)?
            .context("hashing semaphore closed")?;
        let result = aia_telemetry::spawn_blocking_with_tracing(move || {
            let _permit = permit;
            step_aside();
            work()
        })
        .await
        .context("hashing task")??;
        Ok(result)
    }

    /// Hashes a password into a PHC string carrying its parameters.
    pub async fn hash(&self, password: Password) -> Result<String, HashError> {
        let argon2 = self.argon2();
        self.on_pool(move || {
            let hash = argon2
                .hash_password(password.expose().as_bytes())
                .map_err(|e| anyhow::anyhow!("argon2: {e}"))?;
            Ok(hash.to_string())
        })
        .await
    }

    /// Whether `password` matches `stored`. With no stored hash (unknown user) the
    /// same work is done against the dummy hash and the answer is false.
    pub async fn verify(
        &self,
        password: Password,
        stored: Option<String>,
    ) -> Result<bool, HashError> {
        Ok(self.check(password, stored).await?.matches)
    }

    /// Like [`Hasher::verify`], and also says whether a matching hash should be
    /// replaced: it is a legacy bcrypt hash (imported from the previous system), or an
    /// argon2 hash with other parameters than the current ones.
    pub async fn check(
        &self,
        password: Password,
        stored: Option<String>,
    ) -> Result<Checked, HashError> {
        let known = stored.is_some();
        let phc = stored.unwrap_or_else(|| self.dummy.to_string());
        let argon2 = self.argon2();
        let current = self.params.clone();
        self.on_pool(move || {
            if phc.starts_with("$2a$") || phc.starts_with("$2b$") || phc.starts_with("$2y$") {
                // bcrypt looks at the first 72 bytes only; the argon2id hash that
                // replaces it after this login takes the whole password.
                let matches = bcrypt::verify(password.expose(), &phc).unwrap_or(false);
                return Ok(Checked {
                    matches: matches && known,
                    outdated: true,
                });
            }
            let parsed = PasswordHash::new(&phc)
                .map_err(|e| anyhow::anyhow!("stored hash is not PHC: {e}"))?;
            let matches = argon2
                .verify_password(password.expose().as_bytes(), &parsed)
                .is_ok()
                && known;
            let same = parsed.algorithm == argon2::ARGON2ID_IDENT
                && Params::try_from(&parsed).is_ok_and(|p| {
                    p.m_cost() == current.m_cost()
                        && p.t_cost() == current.t_cost()
                        && p.p_cost() == current.p_cost()
                });
            Ok(Checked {
                matches,
                outdated: !same,
            })
        })
        .await
    }
}

/// What checking a password found.
#[derive(Debug, Clone, Copy)]
pub struct Checked {
    /// The password is right (never true for an unknown user).
    pub matches: bool,
    /// The stored hash should be replaced by one with the current parameters.
    pub outdated: bool,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cheap() -> PasswordHashing {
        PasswordHashing {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
            concurrency: 2,
        }
    }

    /// The niceness of each thread of this process (field 19 of /proc/self/task/*/stat).
    fn niceness_of_threads() -> anyhow::Result<Vec<i32>> {
        let mut values = Vec::new();
        for task in std::fs::read_dir("/proc/self/task")? {
            let stat = std::fs::read_to_string(task?.path().join("stat"))?;
            // After the ")" closing the command name: state is field 3, nice is 19.
            let after = stat
                .rsplit_once(')')
                .map(|(_, rest)| rest)
                .unwrap_or_default();
            let nice = after
                .split_whitespace()
                .nth(16)
                .and_then(|v| v.parse().ok())
                .context("stat without nice")?;
            values.push(nice);
        }
        Ok(values)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hashing_runs_at_a_lower_priority_than_the_async_threads() -> anyhow::Result<()> {
        // Whatever the test itself runs at (CI may run it under `nice`).
        let base = rustix::process::getpriority_process(Some(rustix::thread::gettid()))?;
        let hasher = Hasher::new(&cheap()).await?;
        let seen = hasher
            .on_pool(|| {
                let thread = Some(rustix::thread::gettid());
                Ok(rustix::process::getpriority_process(thread)?)
            })
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        assert_eq!(seen, base.max(HASHING_NICENESS));
        // Only the hashing threads: this one (an async worker or the test's) is not.
        let here = rustix::process::getpriority_process(Some(rustix::thread::gettid()))?;
        assert_eq!(here, base);
        let threads = niceness_of_threads()?;
        assert!(threads.contains(&seen), "{threads:?}");
        assert!(threads.contains(&base), "{threads:?}");
        Ok(())
    }

    #[tokio::test]
    async fn a_hash_verifies_its_password_only() -> anyhow::Result<()> {
        let hasher = Hasher::new(&cheap()).await?;
        let hash = hasher
            .hash(Password::presented("correct horse battery")?)
            .await?;
        assert!(hash.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{hash}");
        assert!(
            hasher
                .verify(
                    Password::presented("correct horse battery")?,
                    Some(hash.clone())
                )
                .await?
        );
        assert!(
            !hasher
                .verify(Password::presented("correct horse batterz")?, Some(hash))
                .await?
        );
        Ok(())
    }

    #[tokio::test]
    async fn passwords_differing_only_at_the_end_of_a_long_input_differ() -> anyhow::Result<()> {
        let hasher = Hasher::new(&cheap()).await?;
        let long = "a".repeat(200);
        let hash = hasher.hash(Password::presented(&long)?).await?;
        let other = format!("{}b", &long[..199]);
        assert!(
            !hasher
                .verify(Password::presented(&other)?, Some(hash))
                .await?
        );
        Ok(())
    }

    #[tokio::test]
    async fn an_unknown_user_never_verifies_even_with_the_dummy_password() -> anyhow::Result<()> {
        let hasher = Hasher::new(&cheap()).await?;
        assert!(
            !hasher
                .verify(Password::presented("anything")?, None)
                .await?
        );
        Ok(())
    }
}
