//! The Redis pool and key naming.
//!
//! Keys are `{prefix}{owner}:{{id}}`: the owner tag (`bl`, `sess`, `rl`) says which
//! service owns the key, the configurable prefix separates deployments (and parallel
//! tests), and the braces make the id a Redis Cluster hash tag.

use std::time::Duration;

use anyhow::Context;
pub use deadpool_redis::{Connection, Pool};

/// How long a request may wait for a Redis connection.
const POOL_TIMEOUT: Duration = Duration::from_secs(2);

/// Builds a Redis pool. Connections are made lazily.
pub fn pool(url: &str) -> anyhow::Result<Pool> {
    let mut config = deadpool_redis::Config::from_url(url);
    let mut pool_config = deadpool_redis::PoolConfig::new(32);
    pool_config.timeouts.wait = Some(POOL_TIMEOUT);
    pool_config.timeouts.create = Some(POOL_TIMEOUT);
    pool_config.timeouts.recycle = Some(POOL_TIMEOUT);
    config.pool = Some(pool_config);
    config
        .create_pool(Some(deadpool_redis::Runtime::Tokio1))
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
