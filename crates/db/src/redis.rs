//! The Redis pool and key naming.
//!
//! Keys are `{prefix}{owner}:{{id}}`: the owner tag (`bl`, `sess`, `rl`) says which
//! service owns the key, the configurable prefix separates deployments (and parallel
//! tests), and the braces make the id a Redis Cluster hash tag.

use std::time::Duration;

use anyhow::Context;
use deadpool_redis::redis;
pub use deadpool_redis::{Connection, Pool};

/// How long a request may wait for a Redis connection.
const POOL_TIMEOUT: Duration = Duration::from_secs(2);

/// Where Redis is and how to talk to it: `url` (`REDIS_URL`), with `TCP_NODELAY` on.
/// Commands are small and each waits for its answer; Nagle's algorithm would hold a
/// command written while an earlier one is unacknowledged (as Jedis and Lettuce do,
/// redis-rs leaves it on unless told).
pub fn connection_info(url: &str) -> anyhow::Result<redis::ConnectionInfo> {
    use redis::IntoConnectionInfo;
    let info = url
        .into_connection_info()
        .context("REDIS_URL is not a Redis URL")?;
    let tcp = info.tcp_settings().clone().set_nodelay(true);
    Ok(info.set_tcp_settings(tcp))
}

/// A client for [`connection_info`].
pub fn client(url: &str) -> anyhow::Result<redis::Client> {
    redis::Client::open(connection_info(url)?).context("REDIS_URL")
}

/// Builds a Redis pool. Connections are made lazily.
pub fn pool(url: &str) -> anyhow::Result<Pool> {
    let manager = deadpool_redis::Manager::new(connection_info(url)?).context("REDIS_URL")?;
    Pool::builder(manager)
        .max_size(32)
        .wait_timeout(Some(POOL_TIMEOUT))
        .create_timeout(Some(POOL_TIMEOUT))
        .recycle_timeout(Some(POOL_TIMEOUT))
        .runtime(deadpool_redis::Runtime::Tokio1)
        .build()
        .context("building the Redis pool")
}

/// Readiness: Redis answers PING.
pub async fn ping(pool: &Pool) -> anyhow::Result<()> {
    let mut conn = pool.get().await.context("getting a Redis connection")?;
    let _: String = deadpool_redis::redis::cmd("PING")
        .query_async(&mut conn)
        .await
        .context("PING")?;
    Ok(())
}

/// A key: `{prefix}{owner}:{{id}}`.
pub fn key(prefix: &str, owner: &str, id: &str) -> String {
    format!("{prefix}{owner}:{{{id}}}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_send_at_once_and_keep_what_the_url_says() -> anyhow::Result<()> {
        let info = connection_info("redis://:pw-from-url@127.0.0.1:6379/3")?;
        assert!(info.tcp_settings().nodelay());
        assert_eq!(info.redis_settings().db(), 3);
        assert!(info.redis_settings().password().is_some());
        Ok(())
    }

    #[test]
    fn a_bad_url_is_an_error_that_does_not_repeat_it() {
        let error = connection_info("redis://:pw-from-url@[::1")
            .map(|_| ())
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default();
        assert!(error.contains("REDIS_URL"), "{error}");
        assert!(!error.contains("pw-from-url"), "{error}");
    }
}
