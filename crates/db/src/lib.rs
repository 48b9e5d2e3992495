//! Storage plumbing shared by the services:
//!
//! - [`PgPool`]: a diesel-async pool with bounded waits, so a dead Postgres turns into
//!   an error within seconds instead of a hung request;
//! - [`migrate`]: the embedded migrations of `migrations/` (one Postgres schema per
//!   owning service), and [`ensure_database`] to create the database on a fresh
//!   machine;
//! - [`redis`]: the Redis pool and key naming;
//! - [`pool_as`] and [`scope`]: each service acts as its own database role, and says
//!   in each transaction whose rows it may see (row-level security, migration 000017).

pub mod cleanup;
pub mod redis;
pub mod scope;
pub mod tls;

use std::time::Duration;

use anyhow::Context;
use diesel::sql_query;
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::pooled_connection::deadpool::{Object, Pool};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

/// Every migration of the platform, compiled in.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations");

/// A pool of Postgres connections.
pub type PgPool = Pool<AsyncPgConnection>;

/// A connection checked out of a [`PgPool`].
pub type PgConn = Object<AsyncPgConnection>;

/// How long a request may wait for a connection, or for a new one to be made.
const POOL_TIMEOUT: Duration = Duration::from_secs(5);

/// Builds a pool. Connections are made lazily, so this succeeds with Postgres down.
pub fn pool(url: &str, size: usize) -> anyhow::Result<PgPool> {
    let mut config = diesel_async::pooled_connection::ManagerConfig::default();
    config.custom_setup = Box::new(tls::establish);
    build(url, size, config)
}

fn build(
    url: &str,
    size: usize,
    config: diesel_async::pooled_connection::ManagerConfig<AsyncPgConnection>,
) -> anyhow::Result<PgPool> {
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(url, config);
    Pool::builder(manager)
        .max_size(size)
        .wait_timeout(Some(POOL_TIMEOUT))
        .create_timeout(Some(POOL_TIMEOUT))
        .recycle_timeout(Some(POOL_TIMEOUT))
        .runtime(deadpool::Runtime::Tokio1)
        .build()
        .context("building the Postgres pool")
}

/// Builds a pool whose connections act as `role` (`SET ROLE` as each is opened): a
/// service's own role (`aia_auth`, `aia_session`, `aia_audit`), which reaches only its
/// schema and is subject to row-level security. The login user of `url` must be a
/// member of it (`GRANT aia_auth TO <user>`); if not, no connection is made.
pub fn pool_as(url: &str, size: usize, role: &'static str) -> anyhow::Result<PgPool> {
    let mut config = diesel_async::pooled_connection::ManagerConfig::default();
    config.custom_setup = Box::new(move |url| {
        Box::pin(async move {
            let mut conn = tls::establish(url).await?;
            // `role` is one of the platform's constant names, never input.
            sql_query(format!("SET ROLE {role}"))
                .execute(&mut conn)
                .await
                .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
            Ok(conn)
        })
    });
    build(url, size, config)
}

/// Checks a connection out of the pool.
pub async fn conn(pool: &PgPool) -> anyhow::Result<PgConn> {
    pool.get().await.context("getting a Postgres connection")
}

/// Readiness: a connection answers `SELECT 1`.
pub async fn ping(pool: &PgPool) -> anyhow::Result<()> {
    let mut conn = conn(pool).await?;
    sql_query("SELECT 1")
        .execute(&mut conn)
        .await
        .context("SELECT 1")?;
    Ok(())
}

/// Applies every pending migration. Runs on the blocking pool (diesel's migration
/// harness is synchronous), over a connection made like the pool's (TLS included).
pub async fn migrate(url: &str) -> anyhow::Result<Vec<String>> {
    let mut conn = wrapped(url).await?;
    tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<String>> {
        let applied = conn
            .run_pending_migrations(MIGRATIONS)
            .map_err(|e| anyhow::anyhow!("applying migrations: {e}"))?;
        Ok(applied.iter().map(ToString::to_string).collect())
    })
    .await
    .context("migration task")?
}

/// Creates the database login of service role `role` (`aia_auth` gets
/// `aia_auth_login`: LOGIN, NOINHERIT, a member of `aia_auth` only, so it reaches
/// nothing until the service's pool has `SET ROLE`; see [`pool_as`]) or, if it
/// exists, gives it `password` and puts it back to that shape (no superuser or other
/// attribute, no membership but its role's, granted anew so that it does not
/// inherit: a login someone widened by hand is narrowed again); true if it was
/// created. Run by the schemas' owner, after
/// the migrations (which create the roles). The password reaches Postgres as a
/// SCRAM-SHA-256 verifier made here, never in clear: a server that logs DDL would
/// log it, and `pg_stat_activity` would show it.
pub async fn set_service_login(url: &str, role: &str, password: &str) -> anyhow::Result<bool> {
    #[derive(diesel::QueryableByName)]
    struct Exists {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        exists: bool,
    }

    anyhow::ensure!(
        ["aia_auth", "aia_session", "aia_audit"].contains(&role),
        "no service role {role}"
    );
    let login = format!("{role}_login");
    let verifier = postgres_protocol::password::scram_sha_256(password.as_bytes());
    // Base64, `$` and `:` only: nothing that could end the literal.
    anyhow::ensure!(
        verifier
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+/=$:-".contains(c)),
        "unexpected characters in a SCRAM verifier"
    );
    let mut conn = tls::establish(url)
        .await
        .context("connecting to the database")?;
    let exists = sql_query("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1) AS exists")
        .bind::<diesel::sql_types::Text, _>(&login)
        .get_result::<Exists>(&mut conn)
        .await?
        .exists;
    let verb = if exists { "ALTER" } else { "CREATE" };
    // `role` is one of the platform's constant names, `login` made from it.
    sql_query(format!(
        "{verb} ROLE {login} LOGIN NOINHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE \
         NOREPLICATION NOBYPASSRLS CONNECTION LIMIT -1 VALID UNTIL 'infinity' \
         PASSWORD '{verifier}'"
    ))
    .execute(&mut conn)
    .await
    .with_context(|| format!("{verb} ROLE {login}"))?;
    // Every membership goes, its own role's included: granted again below, after
    // NOINHERIT, it does not inherit (Postgres 16 keeps a grant's inherit option).
    #[derive(diesel::QueryableByName)]
    struct Statement {
        #[diesel(sql_type = diesel::sql_types::Text)]
        revoke: String,
    }
    let memberships = sql_query(
        "SELECT format('REVOKE %I FROM %I', g.rolname, $1) AS revoke \
         FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid \
         JOIN pg_roles r ON r.oid = m.member WHERE r.rolname = $1",
    )
    .bind::<diesel::sql_types::Text, _>(&login)
    .load::<Statement>(&mut conn)
    .await?;
    for statement in memberships {
        sql_query(&statement.revoke)
            .execute(&mut conn)
            .await
            .with_context(|| format!("narrowing {login}"))?;
    }
    sql_query(format!("GRANT {role} TO {login}"))
        .execute(&mut conn)
        .await
        .with_context(|| format!("GRANT {role} TO {login}"))?;
    Ok(!exists)
}

/// Migrations compiled in but not applied to the database at `url`. Only reads
/// diesel's table of applied versions, so a service's own login (no CREATE anywhere,
/// see migration 000017) may ask: an absent table means nothing was applied.
pub async fn pending_migrations(url: &str) -> anyhow::Result<Vec<String>> {
    use diesel::migration::MigrationSource;

    #[derive(diesel::QueryableByName)]
    struct Applied {
        #[diesel(sql_type = diesel::sql_types::Text)]
        version: String,
    }

    let mut conn = tls::establish(url)
        .await
        .context("connecting to Postgres")?;
    let exists = sql_query(
        "SELECT to_regclass('public.__diesel_schema_migrations') IS NOT NULL AS version_table",
    )
    .get_result::<VersionTable>(&mut conn)
    .await
    .context("looking for the migrations table")?
    .version_table;
    let applied: std::collections::HashSet<String> = if exists {
        sql_query("SELECT version FROM public.__diesel_schema_migrations")
            .load::<Applied>(&mut conn)
            .await
            .context("reading the applied migrations")?
            .into_iter()
            .map(|a| a.version)
            .collect()
    } else {
        Default::default()
    };
    let all = MigrationSource::<diesel::pg::Pg>::migrations(&MIGRATIONS)
        .map_err(|e| anyhow::anyhow!("listing migrations: {e}"))?;
    Ok(all
        .iter()
        .map(|m| m.name())
        .filter(|name| !applied.contains(&name.version().to_string()))
        .map(ToString::to_string)
        .collect())
}

#[derive(diesel::QueryableByName)]
struct VersionTable {
    #[diesel(sql_type = diesel::sql_types::Bool)]
    version_table: bool,
}

type Wrapped = diesel_async::async_connection_wrapper::AsyncConnectionWrapper<AsyncPgConnection>;

async fn wrapped(url: &str) -> anyhow::Result<Wrapped> {
    let conn = tls::establish(url)
        .await
        .context("connecting to Postgres")?;
    Ok(Wrapped::from(conn))
}

/// Splits a Postgres URL into (URL of the `postgres` maintenance database, name of the
/// database it names).
fn split_database(url: &str) -> anyhow::Result<(String, String)> {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let (server, name) = base
        .rsplit_once('/')
        .filter(|(server, _)| server.contains("://") && !server.ends_with('/'))
        .context("DATABASE_URL must name a database: postgres://user@host:port/NAME")?;
    let maintenance = match query {
        Some(q) => format!("{server}/postgres?{q}"),
        None => format!("{server}/postgres"),
    };
    Ok((maintenance, name.to_owned()))
}

/// Creates the database named in `url` if it does not exist. The name must be a plain
/// identifier (letters, digits, `_`), since it cannot be a bind parameter.
pub async fn ensure_database(url: &str) -> anyhow::Result<bool> {
    #[derive(diesel::QueryableByName)]
    struct Exists {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        exists: bool,
    }
    let (maintenance, name) = split_database(url)?;
    anyhow::ensure!(
        !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
        "database name must contain only letters, digits and `_`"
    );
    let mut conn = tls::establish(&maintenance)
        .await
        .context("connecting to the `postgres` database")?;
    let found: Exists =
        sql_query("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1) AS exists")
            .bind::<diesel::sql_types::Text, _>(&name)
            .get_result(&mut conn)
            .await
            .context("looking up the database")?;
    if found.exists {
        return Ok(false);
    }
    match sql_query(format!("CREATE DATABASE \"{name}\""))
        .execute(&mut conn)
        .await
    {
        Ok(_) => Ok(true),
        // Another process created it between the check and now.
        Err(diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::UniqueViolation,
            _,
        )) => Ok(false),
        Err(e) if e.to_string().contains("already exists") => Ok(false),
        Err(e) => Err(e).context("creating the database"),
    }
}

/// Drops the database named in `url` (tests only clean up after themselves with it).
pub async fn drop_database(url: &str) -> anyhow::Result<()> {
    let (maintenance, name) = split_database(url)?;
    anyhow::ensure!(
        name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
        "database name must contain only letters, digits and `_`"
    );
    let mut conn = tls::establish(&maintenance)
        .await
        .context("connecting to the `postgres` database")?;
    sql_query(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .execute(&mut conn)
        .await
        .context("dropping the database")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_maintenance_url_keeps_host_and_options() -> anyhow::Result<()> {
        let (m, n) = split_database("postgres://u@h:5432/aia?sslmode=require")?;
        assert_eq!(m, "postgres://u@h:5432/postgres?sslmode=require");
        assert_eq!(n, "aia");
        assert!(split_database("postgres://u@h:5432").is_err());
        Ok(())
    }
}
