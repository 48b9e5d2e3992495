//! Email verification and password-reset tokens: 256 random bits, base64url, stored
//! only as SHA-256, single use, expiring. Issuing a token voids the user's earlier
//! unused tokens of the same purpose.

use aia_db::PgPool;
use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use sha2::{Digest, Sha256};

use crate::schema::email_tokens;

/// What a token is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Proves the user reads the address.
    VerifyEmail,
    /// Lets the user set a new password.
    ResetPassword,
}

impl Purpose {
    fn as_str(self) -> &'static str {
        match self {
            Self::VerifyEmail => "verify_email",
            Self::ResetPassword => "reset_password",
        }
    }
}

fn hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// A token that cannot be one of ours is not looked up.
fn well_formed(token: &str) -> bool {
    token.len() == 43 && URL_SAFE_NO_PAD.decode(token).is_ok_and(|b| b.len() == 32)
}

/// Tokens in Postgres.
#[derive(Clone)]
pub struct EmailTokens {
    pool: PgPool,
}

impl EmailTokens {
    /// Tokens over `pool`.
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// A new token for `user_id`, valid until `expires_at`; earlier unused ones of the
    /// same purpose stop working.
    pub async fn issue(
        &self,
        user_id: uuid::Uuid,
        purpose: Purpose,
        expires_at: DateTime<Utc>,
    ) -> anyhow::Result<String> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("OS random source: {e}"))?;
        let token = URL_SAFE_NO_PAD.encode(bytes);
        let token_hash = hash(&token);
        let mut conn = aia_db::conn(&self.pool).await?;
        conn.transaction::<_, diesel::result::Error, _>(async |conn| {
            // One issue per user and purpose at a time (two requests sent together,
            // answered before their tokens are written, would otherwise both insert and
            // leave two live tokens): a transaction-scoped advisory lock on both.
            diesel::sql_query("SELECT pg_advisory_xact_lock(hashtextextended($1 || ':' || $2, 0))")
                .bind::<diesel::sql_types::Text, _>(user_id.to_string())
                .bind::<diesel::sql_types::Text, _>(purpose.as_str())
                .execute(conn)
                .await?;
            diesel::update(email_tokens::table)
                .filter(email_tokens::user_id.eq(user_id))
                .filter(email_tokens::purpose.eq(purpose.as_str()))
                .filter(email_tokens::used_at.is_null())
                .set(email_tokens::used_at.eq(Utc::now()))
                .execute(conn)
                .await?;
            diesel::insert_into(email_tokens::table)
                .values((
                    email_tokens::token_hash.eq(&token_hash),
                    email_tokens::user_id.eq(user_id),
                    email_tokens::purpose.eq(purpose.as_str()),
                    email_tokens::expires_at.eq(expires_at),
                ))
                .execute(conn)
                .await?;
            Ok(())
        })
        .await
        .context("issuing an email token")?;
        Ok(token)
    }

    /// The user of a live token, without using it up.
    pub async fn peek(
        &self,
        token: &str,
        purpose: Purpose,
        now: DateTime<Utc>,
    ) -> anyhow::Result<Option<uuid::Uuid>> {
        if !well_formed(token) {
            return Ok(None);
        }
        let mut conn = aia_db::conn(&self.pool).await?;
        email_tokens::table
            .find(hash(token))
            .filter(email_tokens::purpose.eq(purpose.as_str()))
            .filter(email_tokens::used_at.is_null())
            .filter(email_tokens::expires_at.gt(now))
            .select(email_tokens::user_id)
            .first(&mut conn)
            .await
            .optional()
            .context("looking up an email token")
    }

    /// Uses a live token up; its user, or `None` if it is unknown, used or expired.
    /// Atomic: of two concurrent uses, one wins.
    pub async fn consume(
        &self,
        token: &str,
        purpose: Purpose,
        now: DateTime<Utc>,
    ) -> anyhow::Result<Option<uuid::Uuid>> {
        if !well_formed(token) {
            return Ok(None);
        }
        let mut conn = aia_db::conn(&self.pool).await?;
        diesel::update(email_tokens::table.find(hash(token)))
            .filter(email_tokens::purpose.eq(purpose.as_str()))
            .filter(email_tokens::used_at.is_null())
            .filter(email_tokens::expires_at.gt(now))
            .set(email_tokens::used_at.eq(now))
            .returning(email_tokens::user_id)
            .get_result(&mut conn)
            .await
            .optional()
            .context("using an email token")
    }
}
