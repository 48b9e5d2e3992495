//! Sessions and their refresh-token chains in Postgres.

use aia_db::PgPool;
use anyhow::Context;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};

use crate::refresh_token::RefreshToken;
use crate::schema::{refresh_tokens, sessions};

/// Lifetimes of sessions and refresh tokens.
#[derive(Debug, Clone, Copy)]
pub struct Lifetimes {
    /// A refresh token unused this long expires.
    pub idle: chrono::Duration,
    /// No session outlives this.
    pub absolute: chrono::Duration,
}

/// A new session's first token.
#[derive(Debug)]
pub struct Created {
    /// The session id.
    pub session_id: uuid::Uuid,
    /// Its first refresh token.
    pub token: RefreshToken,
    /// When that token expires if unused.
    pub expires_at: DateTime<Utc>,
}

/// The outcome of a successful rotation.
#[derive(Debug)]
pub struct Rotated {
    /// The session (unchanged by rotation).
    pub session_id: uuid::Uuid,
    /// Its user.
    pub user_id: uuid::Uuid,
    /// The successor token.
    pub token: RefreshToken,
    /// When the successor expires if unused.
    pub expires_at: DateTime<Utc>,
}

/// Where a request came from.
#[derive(Debug, Default, Clone)]
pub struct Client {
    /// Client IP.
    pub ip: String,
    /// User agent.
    pub user_agent: String,
}

/// Sessions in Postgres.
#[derive(Clone)]
pub struct SessionStore {
    pool: PgPool,
    lifetimes: Lifetimes,
}

impl SessionStore {
    /// A store over `pool`.
    pub fn new(pool: PgPool, lifetimes: Lifetimes) -> Self {
        Self { pool, lifetimes }
    }

    /// Starts a session and issues its first refresh token.
    pub async fn create(
        &self,
        user_id: uuid::Uuid,
        client: &Client,
        now: DateTime<Utc>,
    ) -> anyhow::Result<Created> {
        let session_id = uuid::Uuid::new_v4();
        let token = RefreshToken::generate()?;
        let session_end = now + self.lifetimes.absolute;
        let expires_at = (now + self.lifetimes.idle).min(session_end);
        let hash = token.hash();
        let mut conn = aia_db::conn(&self.pool).await?;
        conn.transaction::<_, diesel::result::Error, _>(async |conn| {
            diesel::insert_into(sessions::table)
                .values((
                    sessions::id.eq(session_id),
                    sessions::user_id.eq(user_id),
                    sessions::created_at.eq(now),
                    sessions::last_used_at.eq(now),
                    sessions::expires_at.eq(session_end),
                    sessions::ip.eq(&client.ip),
                    sessions::user_agent.eq(&client.user_agent),
                ))
                .execute(conn)
                .await?;
            diesel::insert_into(refresh_tokens::table)
                .values((
                    refresh_tokens::token_hash.eq(&hash),
                    refresh_tokens::session_id.eq(session_id),
                    refresh_tokens::created_at.eq(now),
                    refresh_tokens::expires_at.eq(expires_at),
                ))
                .execute(conn)
                .await?;
            Ok(())
        })
        .await
        .context("creating a session")?;
        Ok(Created {
            session_id,
            token,
            expires_at,
        })
    }

    /// Exchanges `presented` for a successor. `None` when the token is unknown,
    /// already rotated, expired, or its session is revoked or over.
    ///
    /// Atomic: the token row is claimed with one conditional UPDATE
    /// (`rotated_at IS NULL`), so of concurrent calls exactly one wins; the others wait
    /// on the row lock, re-check the condition and find it false.
    pub async fn rotate(
        &self,
        presented: &RefreshToken,
        now: DateTime<Utc>,
    ) -> anyhow::Result<Option<Rotated>> {
        let successor = RefreshToken::generate()?;
        let old_hash = presented.hash();
        let new_hash = successor.hash();
        let idle = self.lifetimes.idle;
        let mut conn = aia_db::conn(&self.pool).await?;
        let outcome = conn
            .transaction::<_, diesel::result::Error, _>(async |conn| {
                let claimed: Option<uuid::Uuid> = diesel::update(refresh_tokens::table)
                    .filter(refresh_tokens::token_hash.eq(&old_hash))
                    .filter(refresh_tokens::rotated_at.is_null())
                    .filter(refresh_tokens::expires_at.gt(now))
                    .set((
                        refresh_tokens::rotated_at.eq(now),
                        refresh_tokens::successor_hash.eq(&new_hash),
                    ))
                    .returning(refresh_tokens::session_id)
                    .get_result(conn)
                    .await
                    .optional()?;
                let Some(session_id) = claimed else {
                    return Ok(None);
                };
                let live: Option<(uuid::Uuid, DateTime<Utc>)> =
                    diesel::update(sessions::table.find(session_id))
                        .filter(sessions::revoked_at.is_null())
                        .filter(sessions::expires_at.gt(now))
                        .set(sessions::last_used_at.eq(now))
                        .returning((sessions::user_id, sessions::expires_at))
                        .get_result(conn)
                        .await
                        .optional()?;
                let Some((user_id, session_end)) = live else {
                    // Undo the claim: the session is over, nothing rotates.
                    return Err(diesel::result::Error::RollbackTransaction);
                };
                let expires_at = (now + idle).min(session_end);
                diesel::insert_into(refresh_tokens::table)
                    .values((
                        refresh_tokens::token_hash.eq(&new_hash),
                        refresh_tokens::session_id.eq(session_id),
                        refresh_tokens::created_at.eq(now),
                        refresh_tokens::expires_at.eq(expires_at),
                    ))
                    .execute(conn)
                    .await?;
                Ok(Some((session_id, user_id, expires_at)))
            })
            .await;
        match outcome {
            Ok(Some((session_id, user_id, expires_at))) => Ok(Some(Rotated {
                session_id,
                user_id,
                token: successor,
                expires_at,
            })),
            Ok(None) | Err(diesel::result::Error::RollbackTransaction) => Ok(None),
            Err(e) => Err(e).context("rotating a refresh token"),
        }
    }

    /// Marks a session of `user_id` revoked. `Some(true)` if it was live until now,
    /// `Some(false)` if it was already revoked, `None` if `user_id` has no such session.
    pub async fn revoke(
        &self,
        session_id: uuid::Uuid,
        user_id: uuid::Uuid,
        reason: &str,
        now: DateTime<Utc>,
    ) -> anyhow::Result<Option<bool>> {
        let mut conn = aia_db::conn(&self.pool).await?;
        let exists: Option<Option<DateTime<Utc>>> = sessions::table
            .find(session_id)
            .filter(sessions::user_id.eq(user_id))
            .select(sessions::revoked_at)
            .first(&mut conn)
            .await
            .optional()
            .context("looking up a session")?;
        let Some(previous) = exists else {
            return Ok(None);
        };
        if previous.is_some() {
            return Ok(Some(false));
        }
        // Conditional on still being live: of two concurrent logouts one revokes.
        let changed = diesel::update(sessions::table.find(session_id))
            .filter(sessions::revoked_at.is_null())
            .set((
                sessions::revoked_at.eq(now),
                sessions::revoke_reason.eq(reason),
            ))
            .execute(&mut conn)
            .await
            .context("revoking a session")?;
        Ok(Some(changed == 1))
    }
}
