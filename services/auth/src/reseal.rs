//! Re-sealing the secrets auth keeps at rest (private signing keys, TOTP secrets)
//! under a new `ENCRYPTION_KEY`: what `aia rotate-encryption-key` runs.
//!
//! One transaction, rows locked: each value sealed by the current key is opened
//! (with its associated data: the key id, the user id) and sealed again by the new
//! one; a value already under the new key is left alone, so a second run is a no-op.
//! A value sealed by neither key aborts the whole run: nothing is half rotated.

use aia_db::PgPool;
use aia_tokens::seal::SealingKey;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use uuid::Uuid;

use crate::schema::{signing_keys, totp_credentials};

/// What a run changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Resealed {
    /// Private signing keys sealed again.
    pub signing_keys: usize,
    /// TOTP secrets sealed again.
    pub totp_secrets: usize,
    /// Values already under the new key.
    pub already: usize,
}

/// Which key a value is under, and the value re-sealed when it needs it.
fn reseal_one(
    what: &str,
    sealed: &[u8],
    key_id: &str,
    aad: &[u8],
    current: &SealingKey,
    new: &SealingKey,
) -> anyhow::Result<Option<Vec<u8>>> {
    if key_id == new.id() {
        return Ok(None);
    }
    anyhow::ensure!(
        key_id == current.id(),
        "{what} is sealed by key {key_id}, neither the current ENCRYPTION_KEY ({}) nor the new one ({}): nothing was changed",
        current.id(),
        new.id()
    );
    let plain = current
        .open(sealed, aad)
        .map_err(|e| anyhow::anyhow!("opening {what}: {e}"))?;
    let resealed = new
        .seal(&plain, aad)
        .map_err(|e| anyhow::anyhow!("sealing {what}: {e}"))?;
    Ok(Some(resealed))
}

/// Re-seals every value under `current` with `new`, in one transaction.
pub async fn reseal(
    pool: &PgPool,
    current: &SealingKey,
    new: &SealingKey,
) -> anyhow::Result<Resealed> {
    anyhow::ensure!(
        current.id() != new.id(),
        "the new ENCRYPTION_KEY is the current one"
    );
    let mut conn = aia_db::conn(pool).await?;
    conn.transaction::<_, anyhow::Error, _>(async |conn| {
        // Every user's second factor.
        aia_db::scope::set(conn, aia_db::scope::Scope::Service).await?;
        let mut report = Resealed::default();
        let keys: Vec<(String, Vec<u8>, String)> = signing_keys::table
            .select((
                signing_keys::kid,
                signing_keys::private_key,
                signing_keys::sealing_key_id,
            ))
            .for_update()
            .load(conn)
            .await?;
        for (kid, sealed, key_id) in keys {
            let what = format!("signing key {kid}");
            match reseal_one(&what, &sealed, &key_id, kid.as_bytes(), current, new)? {
                None => report.already += 1,
                Some(resealed) => {
                    diesel::update(signing_keys::table.find(&kid))
                        .set((
                            signing_keys::private_key.eq(resealed),
                            signing_keys::sealing_key_id.eq(new.id()),
                        ))
                        .execute(conn)
                        .await?;
                    report.signing_keys += 1;
                }
            }
        }
        let secrets: Vec<(Uuid, Vec<u8>, String)> = totp_credentials::table
            .select((
                totp_credentials::user_id,
                totp_credentials::secret,
                totp_credentials::sealing_key_id,
            ))
            .for_update()
            .load(conn)
            .await?;
        for (user_id, sealed, key_id) in secrets {
            let what = format!("the TOTP secret of {user_id}");
            match reseal_one(&what, &sealed, &key_id, user_id.as_bytes(), current, new)? {
                None => report.already += 1,
                Some(resealed) => {
                    diesel::update(totp_credentials::table.find(user_id))
                        .set((
                            totp_credentials::secret.eq(resealed),
                            totp_credentials::sealing_key_id.eq(new.id()),
                        ))
                        .execute(conn)
                        .await?;
                    report.totp_secrets += 1;
                }
            }
        }
        Ok(report)
    })
    .await
}
