//! API keys: `aia_<id>_<secret>`, shown once. Only HMAC-SHA256(`API_KEY_SECRET`,
//! secret) is stored; a presented key is looked up by its id and its secret compared
//! in constant time. Keys have a name, scopes, an optional expiry, `last_used_at`, and
//! are listed and revoked by their owner.

use aia_db::PgPool;
use aia_db::scope::{self, Scope};
use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::schema::api_keys;

/// Scopes a key may carry. `profile:read` reads the owner's profile;
/// `tokens:introspect` may call the RFC 7662 endpoint; `api:access` may call the
/// proxied upstream routes. Account actions (password,
/// sessions, keys, MFA) never accept an API key, whatever its scopes.
pub const SCOPES: [&str; 3] = ["profile:read", "tokens:introspect", "api:access"];

/// `last_used_at` is written at most this often per key.
const LAST_USED_GRANULARITY: chrono::Duration = chrono::Duration::minutes(1);

/// A key as listed to its owner (no secret).
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = api_keys)]
pub struct ApiKey {
    /// Key id (the `<id>` part).
    pub id: uuid::Uuid,
    /// Owner.
    pub user_id: uuid::Uuid,
    /// Name given by the owner.
    pub name: String,
    /// Scopes.
    pub scopes: Vec<String>,
    /// Creation.
    pub created_at: DateTime<Utc>,
    /// Expiry, if any.
    pub expires_at: Option<DateTime<Utc>>,
    /// Last use, to the minute.
    pub last_used_at: Option<DateTime<Utc>>,
}

/// API keys in Postgres.
#[derive(Clone)]
pub struct ApiKeys {
    pool: PgPool,
    key: std::sync::Arc<[u8]>,
}

fn split(presented: &str) -> Option<(uuid::Uuid, &str)> {
    let rest = presented.strip_prefix("aia_")?;
    let (id, secret) = rest.split_once('_')?;
    (id.len() == 32 && secret.len() == 43).then_some(())?;
    Some((uuid::Uuid::parse_str(id).ok()?, secret))
}

/// A key that is neither revoked nor expired (what "live" means for the list and
/// the cap).
fn live() -> diesel::expression::SqlLiteral<diesel::sql_types::Bool> {
    diesel::dsl::sql("revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())")
}

/// Live (neither revoked nor expired) keys a user may hold at once.
pub const MAX_LIVE_KEYS: i64 = 25;

impl ApiKeys {
    /// Keys over `pool`, HMAC-keyed with `secret`.
    pub fn new(pool: PgPool, secret: &[u8]) -> Self {
        Self {
            pool,
            key: secret.into(),
        }
    }

    fn mac(&self, secret: &str) -> anyhow::Result<Hmac<Sha256>> {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.key).map_err(|_| anyhow::anyhow!("HMAC key"))?;
        mac.update(secret.as_bytes());
        Ok(mac)
    }

    /// Creates a key; returns it with the full `aia_<id>_<secret>` (shown once), or
    /// `None` if the owner has [`MAX_LIVE_KEYS`] live keys already (each key has a
    /// rate-limit bucket of its own: no cap, no quota).
    ///
    /// The audit event `event` makes for the key's id is written in the same
    /// transaction.
    pub async fn create<'a>(
        &self,
        user_id: uuid::Uuid,
        name: &str,
        scopes: &[String],
        expires_at: Option<DateTime<Utc>>,
        event: impl FnOnce(uuid::Uuid) -> aia_audit_client::EventBuilder<'a>,
    ) -> anyhow::Result<Option<(ApiKey, String)>> {
        let id = uuid::Uuid::new_v4();
        let event = event(id);
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("OS random source: {e}"))?;
        let secret = URL_SAFE_NO_PAD.encode(bytes);
        let digest = self.mac(&secret)?.finalize().into_bytes().to_vec();
        let owner = user_id.to_string();
        let mut conn = aia_db::conn(&self.pool).await?;
        let key = conn
            .transaction::<_, diesel::result::Error, _>(async |conn| {
                scope::set(conn, Scope::User(&owner)).await?;
                // One creation per owner at a time, so the count holds.
                diesel::sql_query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
                    .bind::<diesel::sql_types::Text, _>(&owner)
                    .execute(conn)
                    .await?;
                let live: i64 = api_keys::table
                    .filter(api_keys::user_id.eq(user_id))
                    .filter(live())
                    .count()
                    .get_result(conn)
                    .await?;
                if live >= MAX_LIVE_KEYS {
                    return Ok(None);
                }
                let key = diesel::insert_into(api_keys::table)
                    .values((
                        api_keys::id.eq(id),
                        api_keys::user_id.eq(user_id),
                        api_keys::name.eq(name),
                        api_keys::scopes.eq(scopes),
                        api_keys::secret_hmac.eq(digest),
                        api_keys::expires_at.eq(expires_at),
                    ))
                    .returning(ApiKey::as_returning())
                    .get_result(conn)
                    .await?;
                event.write_in(conn).await?;
                Ok(Some(key))
            })
            .await
            .context("creating an API key")?;
        Ok(key.map(|key| (key, format!("aia_{}_{secret}", id.simple()))))
    }

    /// The owner's live keys (neither revoked nor expired), newest first.
    pub async fn list(&self, user_id: uuid::Uuid) -> anyhow::Result<Vec<ApiKey>> {
        let owner = user_id.to_string();
        let mut conn = aia_db::conn(&self.pool).await?;
        conn.transaction::<_, diesel::result::Error, _>(async |conn| {
            scope::set(conn, Scope::User(&owner)).await?;
            api_keys::table
                .filter(api_keys::user_id.eq(user_id))
                .filter(live())
                .order(api_keys::created_at.desc())
                .select(ApiKey::as_select())
                .load(conn)
                .await
        })
        .await
        .context("listing API keys")
    }

    /// Revokes one of the owner's keys. False if they have no such live key.
    pub async fn revoke(
        &self,
        user_id: uuid::Uuid,
        id: uuid::Uuid,
        event: aia_audit_client::EventBuilder<'_>,
    ) -> anyhow::Result<bool> {
        let owner = user_id.to_string();
        let mut conn = aia_db::conn(&self.pool).await?;
        conn.transaction::<_, diesel::result::Error, _>(async |conn| {
            scope::set(conn, Scope::User(&owner)).await?;
            let changed = diesel::update(api_keys::table.find(id))
                .filter(api_keys::user_id.eq(user_id))
                .filter(api_keys::revoked_at.is_null())
                .set(api_keys::revoked_at.eq(Utc::now()))
                .execute(conn)
                .await?;
            event.write_in_if_changed(changed, conn).await
        })
        .await
        .context("revoking an API key")
    }

    /// The live key `presented` is, if its secret matches (constant time), it is not
    /// revoked and not expired. Notes its use.
    pub async fn authenticate(
        &self,
        presented: &str,
        now: DateTime<Utc>,
    ) -> anyhow::Result<Option<ApiKey>> {
        let Some((id, secret)) = split(presented) else {
            return Ok(None);
        };
        let mut conn = aia_db::conn(&self.pool).await?;
        // Found by its id: the owner is what the lookup finds.
        let row: Option<(ApiKey, Vec<u8>, Option<DateTime<Utc>>)> = conn
            .transaction::<_, diesel::result::Error, _>(async |conn| {
                scope::set(conn, Scope::Service).await?;
                api_keys::table
                    .find(id)
                    .select((
                        ApiKey::as_select(),
                        api_keys::secret_hmac,
                        api_keys::revoked_at,
                    ))
                    .first(conn)
                    .await
                    .optional()
            })
            .await
            .context("looking up an API key")?;
        // Compute the MAC even for unknown ids, so timing does not tell them apart.
        let mac = self.mac(secret)?;
        let Some((key, stored, revoked_at)) = row else {
            let _ = mac.verify_slice(&[0u8; 32]);
            return Ok(None);
        };
        if mac.verify_slice(&stored).is_err()
            || revoked_at.is_some()
            || key.expires_at.is_some_and(|t| t <= now)
        {
            return Ok(None);
        }
        if key
            .last_used_at
            .is_none_or(|t| now - t >= LAST_USED_GRANULARITY)
        {
            let owner = key.user_id.to_string();
            conn.transaction::<_, diesel::result::Error, _>(async |conn| {
                scope::set(conn, Scope::User(&owner)).await?;
                diesel::update(api_keys::table.find(id))
                    .set(api_keys::last_used_at.eq(now))
                    .execute(conn)
                    .await
            })
            .await
            .context("noting an API key's use")?;
        }
        Ok(Some(key))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_well_formed_keys_are_looked_up() {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let secret = "A".repeat(43);
        assert!(super::split(&format!("aia_{id}_{secret}")).is_some());
        for bad in [
            "",
            "aia_",
            &format!("aia_{id}"),
            &format!("xyz_{id}_{secret}"),
            &format!("aia_{id}_short"),
            &format!("aia_nothex_{secret}"),
        ] {
            assert!(super::split(bad).is_none(), "{bad}");
        }
    }
}
