//! Whose rows a transaction may see. Row-level security (migration 000017) shows a
//! service's role nothing in a user-owned table (sessions, refresh tokens, API keys,
//! second factors, security events) until the transaction says who it acts for:
//!
//! - [`Scope::User`]: one user's rows only. Use it wherever the user is known (their
//!   own sessions, keys, factors, events): a mistake in a query's `WHERE` cannot then
//!   reach anyone else's rows.
//! - [`Scope::Service`]: every row, for what is not one user's view: lookups by a
//!   token's or key's hash (the user is what the lookup finds), admin views, cleanup.
//!
//! The setting lasts until the transaction ends (`set_config(…, true)`), so a pooled
//! connection never carries it to its next user; outside a transaction it would last
//! one statement, which is why every caller opens one.

use diesel::sql_types::Text;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

/// Who a transaction acts for.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    /// The service itself: every row.
    Service,
    /// One user (their id): only their rows.
    User(&'a str),
}

/// Sets `scope` for the rest of the current transaction.
pub async fn set(conn: &mut AsyncPgConnection, scope: Scope<'_>) -> diesel::QueryResult<()> {
    set_with(conn, scope, None).await
}

/// [`set`], and a statement timeout for the rest of the transaction, in the same
/// round trip (reads that must not scan on for a client that has left).
pub async fn set_with_timeout(
    conn: &mut AsyncPgConnection,
    scope: Scope<'_>,
    timeout_ms: u32,
) -> diesel::QueryResult<()> {
    set_with(conn, scope, Some(timeout_ms)).await
}

async fn set_with(
    conn: &mut AsyncPgConnection,
    scope: Scope<'_>,
    timeout_ms: Option<u32>,
) -> diesel::QueryResult<()> {
    let (scope, user) = match scope {
        Scope::Service => ("service", ""),
        Scope::User(id) => ("user", id),
    };
    let query = diesel::sql_query(
        "SELECT set_config('aia.scope', $1, true), set_config('aia.user_id', $2, true)",
    )
    .bind::<Text, _>(scope)
    .bind::<Text, _>(user);
    match timeout_ms {
        None => query.execute(conn).await?,
        Some(ms) => {
            query
                .sql(", set_config('statement_timeout', $3, true)")
                .bind::<Text, _>(format!("{ms}ms"))
                .execute(conn)
                .await?
        }
    };
    Ok(())
}
