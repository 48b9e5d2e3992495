//! The second factor: TOTP (RFC 6238: HMAC-SHA-1, 6 digits, 30 s steps, one step of
//! skew either way), single-use recovery codes, and the pending MFA logins.
//!
//! - **TOTP secrets**: 160 random bits, sealed with `ENCRYPTION_KEY` (AES-256-GCM,
//!   associated data: the user id, so a sealed secret cannot be moved to another
//!   user), with the sealing key's id beside them so the key can be rotated.
//! - **A code works once**: the highest time step accepted is stored, and a code is
//!   accepted only for a later step, by one conditional UPDATE; of two concurrent
//!   uses of one code exactly one wins, and an older code inside the skew window is
//!   refused once a newer one was used.
//! - **Recovery codes**: ten per confirmation, 80 random bits each, shown once,
//!   stored only as SHA-256 (with the user id), each used by one conditional UPDATE.
//! - **Challenges**: after a correct password, an MFA user gets a challenge (256
//!   random bits) kept in Redis for five minutes under its SHA-256, with the user,
//!   the email and a digest of the password hash it was opened with (a password
//!   changed since ends it). It allows five tries: each request takes one, atomically, before
//!   its code is checked, so codes sent all at once get no more tries than codes
//!   sent one by one; the sixth request ends it. It is deleted by the one request
//!   that completes it.

use std::sync::Arc;
use std::time::Duration;

use aia_db::PgPool;
use aia_db::scope::{self, Scope};
use aia_tokens::seal::SealingKey;
use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::Utc;
use deadpool_redis::redis;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use sha2::{Digest, Sha256};
use totp_rs::{Algorithm, Builder, Secret, Totp};

use crate::schema::{recovery_codes, totp_credentials};

/// How many recovery codes a confirmation issues.
pub const RECOVERY_CODES: usize = 10;
/// How long a challenge lives.
pub const CHALLENGE_TTL: Duration = Duration::from_secs(300);
/// Tries (codes presented) a challenge allows.
const CHALLENGE_ATTEMPTS: u32 = 5;

/// Takes one try from a challenge. KEYS[1]: the challenge; ARGV[1]: the tries it
/// allows. Returns {user, email, password fingerprint, device} while tries remain;
/// nil (and the challenge is deleted) once they are spent, nil for a challenge that
/// does not exist (which is not created by asking).
const TAKE_A_TRY: &str = r"
local found = redis.call('HMGET', KEYS[1], 'user', 'email', 'password', 'device')
if not found[1] or not found[2] or not found[3] then return false end
if redis.call('HINCRBY', KEYS[1], 'tries', 1) > tonumber(ARGV[1]) then
  redis.call('DEL', KEYS[1])
  return false
end
return found
";
/// RFC 6238 time step.
const STEP_SECONDS: u64 = 30;

/// What a presented code turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Factor {
    /// A TOTP code, now spent.
    Totp,
    /// A recovery code, now spent.
    RecoveryCode,
}

/// A started enrolment, to show to the user once.
pub struct Enrolment {
    /// `otpauth://totp/...`.
    pub uri: String,
    /// The secret in base32.
    pub secret: String,
}

/// A pending MFA login.
#[derive(Debug, Clone)]
pub struct Pending {
    /// The user whose password was correct.
    pub user_id: uuid::Uuid,
    /// Their email (the throttle's key).
    pub email: String,
    /// [`Mfa::password_fingerprint`] of the hash the password was checked against.
    pub password: String,
    /// The device of the password step (`LoginRequest.device_id`; empty for none).
    pub device: String,
    /// The Redis key of the challenge.
    key: String,
}

/// TOTP credentials, recovery codes and challenges.
#[derive(Clone)]
pub struct Mfa {
    pool: PgPool,
    redis: aia_db::redis::Pool,
    prefix: String,
    sealing: Arc<SealingKey>,
    issuer: String,
}

fn random<const N: usize>() -> anyhow::Result<[u8; N]> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("OS random source: {e}"))?;
    Ok(bytes)
}

/// RFC 6238 with the parameters every authenticator app supports.
fn totp(secret: Vec<u8>, issuer: &str, account: &str) -> anyhow::Result<Totp> {
    Builder::new()
        .with_algorithm(Algorithm::SHA1)
        .with_digits(6)
        .with_skew(1)
        .with_step_duration(STEP_SECONDS)
        .with_secret(Secret::from(secret))
        .with_issuer(Some(issuer))
        .with_account_name(account)
        .build()
        .map_err(|e| anyhow::anyhow!("TOTP parameters: {e}"))
}

fn now_seconds() -> u64 {
    u64::try_from(Utc::now().timestamp()).unwrap_or(0)
}

/// Six ASCII digits, spaces allowed (as apps display them).
fn totp_code(code: &str) -> Option<String> {
    let digits: String = code.chars().filter(|c| *c != ' ').collect();
    (digits.len() == 6 && digits.bytes().all(|b| b.is_ascii_digit())).then_some(digits)
}

/// A recovery code without separators, lower case; `None` if it cannot be one.
fn recovery_code(code: &str) -> Option<String> {
    let code: String = code
        .chars()
        .filter(|c| *c != '-' && *c != ' ')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    (code.len() == 16
        && data_encoding::BASE32_NOPAD
            .decode(code.to_ascii_uppercase().as_bytes())
            .is_ok())
    .then_some(code)
}

fn recovery_hash(user_id: uuid::Uuid, code: &str) -> Vec<u8> {
    Sha256::new_with_prefix(b"aia recovery code v1\0")
        .chain_update(user_id.as_bytes())
        .chain_update(code.as_bytes())
        .finalize()
        .to_vec()
}

/// `xxxx-xxxx-xxxx-xxxx`, base32 (80 bits).
fn new_recovery_code() -> anyhow::Result<String> {
    let encoded = data_encoding::BASE32_NOPAD
        .encode(&random::<10>()?)
        .to_ascii_lowercase();
    let groups: Vec<&str> = (0..4)
        .filter_map(|i| encoded.get(i * 4..i * 4 + 4))
        .collect();
    Ok(groups.join("-"))
}

impl Mfa {
    /// The store; `issuer` names the service in authenticator apps.
    pub fn new(
        pool: PgPool,
        redis: aia_db::redis::Pool,
        prefix: String,
        sealing: Arc<SealingKey>,
        issuer: String,
    ) -> Self {
        Self {
            pool,
            redis,
            prefix,
            sealing,
            issuer,
        }
    }

    /// Whether `user_id` has a confirmed TOTP factor.
    pub async fn is_enabled(&self, user_id: uuid::Uuid) -> anyhow::Result<bool> {
        let owner = user_id.to_string();
        let mut conn = aia_db::conn(&self.pool).await?;
        let confirmed: Option<Option<chrono::DateTime<Utc>>> = conn
            .transaction::<_, diesel::result::Error, _>(async |conn| {
                scope::set(conn, Scope::User(&owner)).await?;
                totp_credentials::table
                    .find(user_id)
                    .select(totp_credentials::confirmed_at)
                    .first(conn)
                    .await
                    .optional()
            })
            .await
            .context("reading a TOTP credential")?;
        Ok(matches!(confirmed, Some(Some(_))))
    }

    /// Starts (or restarts) an enrolment; `None` if TOTP is already on.
    pub async fn enroll(
        &self,
        user_id: uuid::Uuid,
        account: &str,
    ) -> anyhow::Result<Option<Enrolment>> {
        let secret = random::<20>()?.to_vec();
        // An account name with ':' cannot be in an otpauth label; the id always can.
        let totp = totp(secret.clone(), &self.issuer, account)
            .or_else(|_| totp(secret.clone(), &self.issuer, &user_id.to_string()))?;
        let uri = totp
            .to_url()
            .map_err(|e| anyhow::anyhow!("otpauth URI: {e}"))?;
        let sealed = self
            .sealing
            .seal(&secret, user_id.as_bytes())
            .map_err(|e| anyhow::anyhow!("sealing a TOTP secret: {e}"))?;
        let key_id = self.sealing.id();
        let owner = user_id.to_string();
        let mut conn = aia_db::conn(&self.pool).await?;
        let stored = conn
            .transaction::<_, diesel::result::Error, _>(async |conn| {
                scope::set(conn, Scope::User(&owner)).await?;
                let existing: Option<Option<chrono::DateTime<Utc>>> = totp_credentials::table
                    .find(user_id)
                    .select(totp_credentials::confirmed_at)
                    .for_update()
                    .first(conn)
                    .await
                    .optional()?;
                match existing {
                    // On already: a new enrolment must not replace it silently.
                    Some(Some(_)) => Ok(0),
                    // Pending: the new secret replaces the unconfirmed one.
                    Some(None) => {
                        diesel::update(totp_credentials::table.find(user_id))
                            .set((
                                totp_credentials::secret.eq(&sealed),
                                totp_credentials::sealing_key_id.eq(key_id),
                                totp_credentials::created_at.eq(Utc::now()),
                                totp_credentials::last_step.eq(0),
                            ))
                            .execute(conn)
                            .await
                    }
                    None => {
                        diesel::insert_into(totp_credentials::table)
                            .values((
                                totp_credentials::user_id.eq(user_id),
                                totp_credentials::secret.eq(&sealed),
                                totp_credentials::sealing_key_id.eq(key_id),
                            ))
                            .on_conflict_do_nothing()
                            .execute(conn)
                            .await
                    }
                }
            })
            .await
            .context("storing a TOTP enrolment")?;
        Ok((stored == 1).then(|| Enrolment {
            uri,
            secret: totp.secret().to_base32(),
        }))
    }

    /// The user's TOTP, if any, with whether it is confirmed.
    async fn credential(
        &self,
        conn: &mut diesel_async::AsyncPgConnection,
        user_id: uuid::Uuid,
    ) -> anyhow::Result<Option<(Totp, bool)>> {
        let row: Option<(Vec<u8>, String, Option<chrono::DateTime<Utc>>)> = totp_credentials::table
            .find(user_id)
            .select((
                totp_credentials::secret,
                totp_credentials::sealing_key_id,
                totp_credentials::confirmed_at,
            ))
            .first(conn)
            .await
            .optional()
            .context("reading a TOTP credential")?;
        let Some((sealed, key_id, confirmed_at)) = row else {
            return Ok(None);
        };
        anyhow::ensure!(
            key_id == self.sealing.id(),
            "the TOTP secret of {user_id} was sealed by key {key_id}, not the configured ENCRYPTION_KEY"
        );
        let secret = self
            .sealing
            .open(&sealed, user_id.as_bytes())
            .map_err(|e| anyhow::anyhow!("opening the TOTP secret of {user_id}: {e}"))?;
        Ok(Some((
            totp(secret, &self.issuer, "")?,
            confirmed_at.is_some(),
        )))
    }

    /// Spends a TOTP `code` of `user_id` if it is right for a step later than the
    /// last one used; `confirmed` selects a confirmed or a pending credential.
    async fn spend_totp(
        &self,
        conn: &mut diesel_async::AsyncPgConnection,
        user_id: uuid::Uuid,
        code: &str,
        confirmed: bool,
    ) -> anyhow::Result<bool> {
        let Some(code) = totp_code(code) else {
            return Ok(false);
        };
        let Some((totp, is_confirmed)) = self.credential(conn, user_id).await? else {
            return Ok(false);
        };
        if is_confirmed != confirmed {
            return Ok(false);
        }
        let Some(step) = totp.check(&code, now_seconds()) else {
            return Ok(false);
        };
        let step = i64::try_from(step).context("TOTP step")?;
        let unspent = totp_credentials::table
            .filter(totp_credentials::user_id.eq(user_id))
            .filter(totp_credentials::last_step.lt(step));
        let spent = if confirmed {
            diesel::update(unspent.filter(totp_credentials::confirmed_at.is_not_null()))
                .set(totp_credentials::last_step.eq(step))
                .execute(conn)
                .await
        } else {
            diesel::update(unspent.filter(totp_credentials::confirmed_at.is_null()))
                .set((
                    totp_credentials::last_step.eq(step),
                    totp_credentials::confirmed_at.eq(Some(Utc::now())),
                ))
                .execute(conn)
                .await
        }
        .context("spending a TOTP code")?;
        Ok(spent == 1)
    }

    /// Confirms a pending enrolment with its first code; returns the recovery codes,
    /// or `None` if the code is wrong or nothing is pending.
    ///
    /// `event` is written in the confirming transaction (not at all if the code is
    /// wrong).
    pub async fn confirm(
        &self,
        user_id: uuid::Uuid,
        code: &str,
        event: aia_audit_client::EventBuilder<'_>,
    ) -> anyhow::Result<Option<Vec<String>>> {
        let codes = (0..RECOVERY_CODES)
            .map(|_| new_recovery_code())
            .collect::<anyhow::Result<Vec<_>>>()?;
        let hashes: Vec<Vec<u8>> = codes
            .iter()
            .map(|c| recovery_hash(user_id, &c.replace('-', "")))
            .collect();
        let owner = user_id.to_string();
        let mut conn = aia_db::conn(&self.pool).await?;
        let confirmed = conn
            .transaction::<_, anyhow::Error, _>(async |conn| {
                scope::set(conn, Scope::User(&owner)).await?;
                if !self.spend_totp(conn, user_id, code, false).await? {
                    return Ok(false);
                }
                diesel::delete(recovery_codes::table.filter(recovery_codes::user_id.eq(user_id)))
                    .execute(conn)
                    .await?;
                let rows: Vec<_> = hashes
                    .iter()
                    .map(|h| {
                        (
                            recovery_codes::code_hash.eq(h),
                            recovery_codes::user_id.eq(user_id),
                        )
                    })
                    .collect();
                diesel::insert_into(recovery_codes::table)
                    .values(rows)
                    .execute(conn)
                    .await?;
                event.write_in(conn).await?;
                Ok(true)
            })
            .await
            .context("confirming a TOTP enrolment")?;
        Ok(confirmed.then_some(codes))
    }

    /// Spends `code` (a TOTP code or a recovery code) of a user with TOTP on. A
    /// recovery code spent writes `recovery_used` (if any) in the same transaction,
    /// with the codes left in its details (the login's second step passes one;
    /// turning TOTP off records the code with its own event, which a failure
    /// between the two can miss).
    pub async fn verify(
        &self,
        user_id: uuid::Uuid,
        code: &str,
        recovery_used: Option<aia_audit_client::EventBuilder<'_>>,
    ) -> anyhow::Result<Option<Factor>> {
        let owner = user_id.to_string();
        let mut conn = aia_db::conn(&self.pool).await?;
        if totp_code(code).is_some() {
            let spent = conn
                .transaction::<_, anyhow::Error, _>(async |conn| {
                    scope::set(conn, Scope::User(&owner)).await?;
                    self.spend_totp(conn, user_id, code, true).await
                })
                .await?;
            return Ok(spent.then_some(Factor::Totp));
        }
        let Some(code) = recovery_code(code) else {
            return Ok(None);
        };
        if !self.is_enabled(user_id).await? {
            return Ok(None);
        }
        let hash = recovery_hash(user_id, &code);
        let spent = conn
            .transaction::<_, diesel::result::Error, _>(async |conn| {
                scope::set(conn, Scope::User(&owner)).await?;
                let spent = diesel::update(recovery_codes::table)
                    .filter(recovery_codes::code_hash.eq(hash))
                    .filter(recovery_codes::user_id.eq(user_id))
                    .filter(recovery_codes::used_at.is_null())
                    .set(recovery_codes::used_at.eq(Some(Utc::now())))
                    .execute(conn)
                    .await?;
                if spent == 1
                    && let Some(event) = recovery_used
                {
                    let left: i64 = recovery_codes::table
                        .filter(recovery_codes::user_id.eq(user_id))
                        .filter(recovery_codes::used_at.is_null())
                        .count()
                        .get_result(conn)
                        .await?;
                    event
                        .details(serde_json::json!({"risk": "medium", "codes_left": left}))
                        .write_in(conn)
                        .await?;
                }
                Ok(spent)
            })
            .await
            .context("spending a recovery code")?;
        Ok((spent == 1).then_some(Factor::RecoveryCode))
    }

    /// Removes the user's TOTP and recovery codes. True if TOTP was on; `event` is
    /// written in the same transaction, if it was.
    pub async fn disable(
        &self,
        user_id: uuid::Uuid,
        event: aia_audit_client::EventBuilder<'_>,
    ) -> anyhow::Result<bool> {
        let owner = user_id.to_string();
        let mut conn = aia_db::conn(&self.pool).await?;
        conn.transaction::<_, diesel::result::Error, _>(async |conn| {
            scope::set(conn, Scope::User(&owner)).await?;
            diesel::delete(recovery_codes::table.filter(recovery_codes::user_id.eq(user_id)))
                .execute(conn)
                .await?;
            let removed = diesel::delete(
                totp_credentials::table
                    .filter(totp_credentials::user_id.eq(user_id))
                    .filter(totp_credentials::confirmed_at.is_not_null()),
            )
            .execute(conn)
            .await?;
            if removed == 1 {
                event.write_in(conn).await?;
            }
            Ok(removed == 1)
        })
        .await
        .context("disabling TOTP")
    }

    fn challenge_key(&self, challenge: &str) -> String {
        let digest = hex::encode(Sha256::digest(challenge.as_bytes()));
        aia_db::redis::key(&self.prefix, "mfa", &digest)
    }

    /// What a challenge keeps of the password hash it was opened with (to refuse it
    /// once the password changed): a digest, so Redis holds nothing of the hash.
    pub fn password_fingerprint(password_hash: &str) -> String {
        hex::encode(&Sha256::digest(password_hash.as_bytes())[..16])
    }

    /// A new challenge for `user_id`, whose password (of hash `password_hash`) was
    /// correct.
    pub async fn challenge(
        &self,
        user_id: uuid::Uuid,
        email: &str,
        password_hash: &str,
        device: &str,
    ) -> anyhow::Result<String> {
        let challenge = URL_SAFE_NO_PAD.encode(random::<32>()?);
        let key = self.challenge_key(&challenge);
        let mut conn = self.redis.get().await.context("redis")?;
        redis::pipe()
            .atomic()
            .hset_multiple(
                &key,
                &[
                    ("user", user_id.to_string()),
                    ("email", email.to_owned()),
                    ("password", Self::password_fingerprint(password_hash)),
                    ("tries", "0".to_owned()),
                    ("device", device.to_owned()),
                ],
            )
            .ignore()
            .expire(&key, i64::try_from(CHALLENGE_TTL.as_secs()).unwrap_or(300))
            .ignore()
            .query_async::<()>(&mut conn)
            .await
            .context("storing an MFA challenge")?;
        Ok(challenge)
    }

    /// The pending login of `challenge`, if it is live and has a try left; the try
    /// is taken (whatever the code then turns out to be).
    pub async fn take_a_try(&self, challenge: &str) -> anyhow::Result<Option<Pending>> {
        let well_formed = challenge.len() == 43
            && URL_SAFE_NO_PAD
                .decode(challenge)
                .is_ok_and(|b| b.len() == 32);
        if !well_formed {
            return Ok(None);
        }
        let key = self.challenge_key(challenge);
        let mut conn = self.redis.get().await.context("redis")?;
        let found: Option<(String, String, String, Option<String>)> =
            redis::Script::new(TAKE_A_TRY)
                .key(&key)
                .arg(CHALLENGE_ATTEMPTS)
                .invoke_async(&mut conn)
                .await
                .context("taking a try from an MFA challenge")?;
        let Some((user, email, password, device)) = found else {
            return Ok(None);
        };
        let user_id = uuid::Uuid::parse_str(&user).context("MFA challenge user")?;
        Ok(Some(Pending {
            user_id,
            email,
            password,
            device: device.unwrap_or_default(),
            key,
        }))
    }

    /// Ends the challenge; true for the one caller that ended it.
    pub async fn complete(&self, pending: &Pending) -> anyhow::Result<bool> {
        let mut conn = self.redis.get().await.context("redis")?;
        let deleted: i64 = redis::cmd("DEL")
            .arg(&pending.key)
            .query_async(&mut conn)
            .await
            .context("ending an MFA challenge")?;
        Ok(deleted == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_codes_are_80_bits_in_four_groups_and_parse_back() -> anyhow::Result<()> {
        let code = new_recovery_code()?;
        assert_eq!(code.len(), 19, "{code}");
        assert_eq!(code.matches('-').count(), 3);
        assert_eq!(recovery_code(&code).map(|c| c.len()), Some(16));
        assert_eq!(recovery_code(&code.to_uppercase()), recovery_code(&code));
        assert_ne!(new_recovery_code()?, code);
        assert_eq!(recovery_code("123456"), None);
        assert_eq!(recovery_code("aaaa-aaaa-aaaa-aaa1"), None);
        Ok(())
    }

    #[test]
    fn totp_codes_are_six_digits() {
        assert_eq!(totp_code("123 456").as_deref(), Some("123456"));
        assert_eq!(totp_code("12345"), None);
        assert_eq!(totp_code("1234567"), None);
        assert_eq!(totp_code("12345a"), None);
        assert_eq!(totp_code("١٢٣٤٥٦"), None);
    }

    #[test]
    fn recovery_hashes_are_bound_to_the_user() {
        let (a, b) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
        assert_ne!(recovery_hash(a, "x"), recovery_hash(b, "x"));
    }
}
