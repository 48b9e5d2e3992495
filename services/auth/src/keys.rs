//! Signing keys: stored in `auth.signing_keys` with the private half sealed under
//! `ENCRYPTION_KEY`, and held in memory as a [`KeyRing`] that is reloaded every
//! `SIGNING_KEY_RELOAD_SECONDS`, so that a rotation made by `aia rotate-signing-key` or by another
//! replica takes effect everywhere without a restart.
//!
//! Lifecycle of a key: inserted with an `activated_at`; published in the JWKS from
//! then on; signs once `activated_at` has passed and it is the newest such key; still
//! published for the access-token lifetime (plus a minute) after a newer key took
//! over, so tokens it signed keep verifying; then no longer published.
//!
//! At start, a key given in `JWT_SIGNING_KEY_FILE`/`JWT_SIGNING_KEY` is imported
//! (once), and if no key can sign, one is generated.
//!
//! A key can be withdrawn ([`withdraw`], `aia withdraw-signing-key`, after a
//! compromise): from each replica's next reload it neither signs nor is published,
//! so the tokens it signed stop verifying (here at once, at gateways when they next
//! fetch the key set) instead of at their expiry. The key that signs cannot be
//! withdrawn until a newer one signs (rotate first), so that no older key signs
//! again.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use aia_db::PgPool;
use aia_settings::{AuthSettings, JwtAlgorithm, SigningKeySource};
use aia_telemetry::shutdown::CancellationToken;
use aia_tokens::seal::SealingKey;
use aia_tokens::{HmacKey, Jwk, Jwks, MemoVerifier, Signer, SigningKey, Verifier};
use anyhow::Context;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use secrecy::ExposeSecret;

use crate::schema::signing_keys;

/// Arbitrary, fixed: serialises automatic rotation across replicas.
const ROTATION_LOCK: i64 = 0x6169_615f_6b65_7973;

/// The keys in use: the one that signs, and the set that verifies.
pub struct KeyRing {
    /// Signs new access tokens.
    pub active: Signer,
    /// Verifies access tokens against every published key, and remembers the ones it
    /// accepted (a new ring, new keys: a new memo).
    pub verifier: MemoVerifier,
    /// The published keys, as served by `GetJwks`.
    pub jwks_json: String,
}

/// The key store and its current ring.
pub struct KeyStore {
    pool: PgPool,
    sealing: Arc<SealingKey>,
    issuer: String,
    audience: String,
    /// How long a replaced key stays published.
    publish_window: chrono::Duration,
    rotation: Option<chrono::Duration>,
    publish_ahead: chrono::Duration,
    reload_every: Duration,
    /// HS256 mode: one key from settings, nothing stored, nothing to reload.
    fixed: bool,
    ring: RwLock<Arc<KeyRing>>,
}

/// The sealing key from settings; development without `ENCRYPTION_KEY` gets an
/// ephemeral one (and says so).
pub fn sealing_key(settings: &AuthSettings) -> anyhow::Result<SealingKey> {
    let secret = match &settings.encryption_key {
        Some(secret) => secret.expose_secret().as_bytes().to_vec(),
        None => {
            anyhow::ensure!(
                !settings.common.app_env.is_production(),
                "production needs ENCRYPTION_KEY"
            );
            tracing::warn!(
                "DEVELOPMENT: no ENCRYPTION_KEY; signing keys generated now will not be usable after a \
                 restart (tokens they signed stay verifiable until they expire)"
            );
            let mut secret = vec![0u8; 32];
            getrandom::fill(&mut secret).map_err(|e| anyhow::anyhow!("OS random source: {e}"))?;
            secret
        }
    };
    SealingKey::derive(&secret).map_err(|e| anyhow::anyhow!("ENCRYPTION_KEY: {e}"))
}

/// Stores `key`, signing from `activated_at` on. False if it was already stored.
pub async fn insert(
    pool: &PgPool,
    sealing: &SealingKey,
    key: &SigningKey,
    activated_at: DateTime<Utc>,
) -> anyhow::Result<bool> {
    let sealed = sealing
        .seal(key.pkcs8_der(), key.kid().as_bytes())
        .map_err(|e| anyhow::anyhow!("sealing a signing key: {e}"))?;
    let mut conn = aia_db::conn(pool).await?;
    let inserted = diesel::insert_into(signing_keys::table)
        .values((
            signing_keys::kid.eq(key.kid()),
            signing_keys::public_x.eq(&key.jwk().x),
            signing_keys::private_key.eq(sealed),
            signing_keys::sealing_key_id.eq(sealing.id()),
            signing_keys::activated_at.eq(activated_at),
        ))
        .on_conflict_do_nothing()
        .execute(&mut conn)
        .await
        .context("storing a signing key")?;
    Ok(inserted == 1)
}

/// Generates a new key that signs from `activated_at` on; returns its `kid`.
pub async fn rotate(
    pool: &PgPool,
    sealing: &SealingKey,
    activated_at: DateTime<Utc>,
) -> anyhow::Result<String> {
    let key = SigningKey::generate()?;
    insert(pool, sealing, &key, activated_at).await?;
    Ok(key.kid().to_owned())
}

/// A stored key: kid, public half, sealed private half, sealing key id, activation,
/// withdrawal.
type Row = (
    String,
    String,
    Vec<u8>,
    String,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
);

/// What [`withdraw`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Withdrawal {
    /// Withdrawn now.
    Withdrawn,
    /// Withdrawn before.
    AlreadyWithdrawn,
    /// No key with this `kid`.
    NotFound,
    /// It is the key that signs now (or none newer has activated): rotate first.
    Signing,
}

/// Withdraws the key `kid` (see the module's doc); `event` is written in the same
/// transaction if it is.
pub async fn withdraw(
    pool: &PgPool,
    kid: &str,
    event: aia_audit_client::EventBuilder<'_>,
) -> anyhow::Result<Withdrawal> {
    let mut conn = aia_db::conn(pool).await?;
    conn.transaction::<_, diesel::result::Error, _>(async |conn| {
        // Serialised with automatic rotation.
        diesel::sql_query(format!("SELECT pg_advisory_xact_lock({ROTATION_LOCK})"))
            .execute(conn)
            .await?;
        let key: Option<(DateTime<Utc>, Option<DateTime<Utc>>)> = signing_keys::table
            .filter(signing_keys::kid.eq(kid))
            .select((signing_keys::activated_at, signing_keys::withdrawn_at))
            .first(conn)
            .await
            .optional()?;
        let Some((activated_at, withdrawn_at)) = key else {
            return Ok(Withdrawal::NotFound);
        };
        if withdrawn_at.is_some() {
            return Ok(Withdrawal::AlreadyWithdrawn);
        }
        // The database's clock, the one every replica's activation check is
        // compared with here. A key published ahead (not yet signing) can go while
        // another signs; one that has activated only once a newer one has.
        let now: DateTime<Utc> =
            diesel::select(diesel::dsl::now.into_sql::<diesel::sql_types::Timestamptz>())
                .get_result(conn)
                .await?;
        // Pending: any other key that signs; activated: a newer one.
        let since = if activated_at > now {
            DateTime::<Utc>::UNIX_EPOCH
        } else {
            activated_at
        };
        let other_signer: i64 = signing_keys::table
            .filter(signing_keys::withdrawn_at.is_null())
            .filter(signing_keys::kid.ne(kid))
            .filter(signing_keys::activated_at.le(now))
            .filter(signing_keys::activated_at.gt(since))
            .count()
            .get_result(conn)
            .await?;
        if other_signer == 0 {
            return Ok(Withdrawal::Signing);
        }
        // The private half goes too: nothing can sign with it again, nor reseal it.
        diesel::update(signing_keys::table.filter(signing_keys::kid.eq(kid)))
            .set((
                signing_keys::withdrawn_at.eq(Some(now)),
                signing_keys::private_key.eq(Vec::<u8>::new()),
            ))
            .execute(conn)
            .await?;
        event.write_in(conn).await?;
        Ok(Withdrawal::Withdrawn)
    })
    .await
    .context("withdrawing a signing key")
}

impl KeyStore {
    /// Imports the configured key, makes sure one can sign, and loads the ring.
    pub async fn open(
        pool: PgPool,
        settings: &AuthSettings,
        sealing: Arc<SealingKey>,
    ) -> anyhow::Result<Arc<Self>> {
        if settings.tokens.algorithm == JwtAlgorithm::Hs256 {
            let secret = settings
                .tokens
                .hs256_secret
                .as_ref()
                .context("JWT_SECRET_KEY")?;
            let key = HmacKey::new(secret.expose_secret().as_bytes());
            tracing::info!(
                kid = key.kid(),
                "HS256 mode: signing with JWT_SECRET_KEY; the JWKS stays empty"
            );
            let ring = KeyRing {
                verifier: MemoVerifier::new(Verifier::hs256(
                    &key,
                    &settings.tokens.issuer,
                    &settings.tokens.audience,
                )),
                jwks_json: serde_json::to_string(&Jwks::default())?,
                active: Signer::Hs256(key),
            };
            return Ok(Arc::new(Self::with_ring(
                pool, sealing, settings, ring, true,
            )));
        }
        let now = Utc::now();
        let configured = match &settings.signing_key {
            SigningKeySource::File(path) => {
                let pem = std::fs::read_to_string(path)
                    .with_context(|| format!("reading JWT_SIGNING_KEY_FILE {}", path.display()))?;
                Some(SigningKey::from_pkcs8_pem(&pem).context("JWT_SIGNING_KEY_FILE")?)
            }
            SigningKeySource::Pem(pem) => {
                Some(SigningKey::from_pkcs8_pem(pem.expose_secret()).context("JWT_SIGNING_KEY")?)
            }
            SigningKeySource::Ephemeral => None,
        };
        if let Some(key) = &configured
            && insert(&pool, &sealing, key, now).await?
        {
            tracing::info!(kid = key.kid(), "imported the configured signing key");
        }
        let (issuer, audience) = (&settings.tokens.issuer, &settings.tokens.audience);
        let window = publish_window(settings);
        let ring = match build_ring(
            &load_rows(&pool).await?,
            &sealing,
            now,
            window,
            issuer,
            audience,
        ) {
            Some(ring) => ring,
            None => {
                let kid = rotate(&pool, &sealing, now).await?;
                tracing::info!(%kid, "generated a signing key");
                build_ring(
                    &load_rows(&pool).await?,
                    &sealing,
                    now,
                    window,
                    issuer,
                    audience,
                )
                .context("a generated signing key does not load")?
            }
        };
        tracing::info!(kid = ring.active.kid(), "signing with this key");
        Ok(Arc::new(Self::with_ring(
            pool, sealing, settings, ring, false,
        )))
    }

    fn with_ring(
        pool: PgPool,
        sealing: Arc<SealingKey>,
        settings: &AuthSettings,
        ring: KeyRing,
        fixed: bool,
    ) -> Self {
        Self {
            pool,
            sealing,
            issuer: settings.tokens.issuer.clone(),
            audience: settings.tokens.audience.clone(),
            publish_window: publish_window(settings),
            rotation: settings
                .key_rotation
                .and_then(|d| chrono::Duration::from_std(d).ok()),
            publish_ahead: chrono::Duration::from_std(settings.key_publish_ahead)
                .unwrap_or_default(),
            reload_every: settings.key_reload,
            fixed,
            ring: RwLock::new(Arc::new(ring)),
        }
    }

    /// The current ring.
    pub fn ring(&self) -> Arc<KeyRing> {
        match self.ring.read() {
            Ok(ring) => ring.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Rotates if automatic rotation is due, then reloads the ring.
    pub async fn reload(&self) -> anyhow::Result<()> {
        if self.fixed {
            return Ok(());
        }
        let now = Utc::now();
        if let Some(max_age) = self.rotation {
            self.rotate_if_due(now, max_age).await?;
        }
        let rows = load_rows(&self.pool).await?;
        let current = self.ring();
        let signer_withdrawn = rows
            .iter()
            .any(|r| r.0 == current.active.kid() && r.5.is_some());
        let build = |rows: &[Row]| {
            build_ring(
                rows,
                &self.sealing,
                now,
                self.publish_window,
                &self.issuer,
                &self.audience,
            )
        };
        let mut built = build(&rows);
        if built.is_none() && signer_withdrawn {
            // The key that signs here was withdrawn and the one that replaces it
            // cannot be opened here (sealed under another ENCRYPTION_KEY): a key of
            // this replica's, rather than an older one or the withdrawn one.
            let kid = rotate(&self.pool, &self.sealing, now).await?;
            tracing::error!(%kid, "the signing key was withdrawn and its successor does not open here; generated one");
            built = build(&load_rows(&self.pool).await?);
        }
        if built.is_none() {
            tracing::error!(
                kid = current.active.kid(),
                "no stored signing key can sign here; keeping the current one"
            );
        }
        if let Some(ring) = built {
            // The same keys: keep the ring, and what its verifier remembers.
            if current.jwks_json == ring.jwks_json && current.active.kid() == ring.active.kid() {
                return Ok(());
            }
            let previous = current.active.kid().to_owned();
            if previous != ring.active.kid() {
                tracing::info!(from = %previous, to = ring.active.kid(), "signing key rotated");
            }
            if let Ok(mut current) = self.ring.write() {
                *current = Arc::new(ring);
            }
        }
        Ok(())
    }

    /// One replica at a time: if the newest key is older than `max_age` and none is
    /// waiting to activate, insert one that activates after the publish-ahead delay.
    async fn rotate_if_due(
        &self,
        now: DateTime<Utc>,
        max_age: chrono::Duration,
    ) -> anyhow::Result<()> {
        let mut conn = aia_db::conn(&self.pool).await?;
        let due = conn
            .transaction::<_, diesel::result::Error, _>(async |conn| {
                diesel::sql_query(format!("SELECT pg_advisory_xact_lock({ROTATION_LOCK})"))
                    .execute(conn)
                    .await?;
                let newest: Option<DateTime<Utc>> = signing_keys::table
                    .select(diesel::dsl::max(signing_keys::activated_at))
                    .first(conn)
                    .await?;
                Ok(newest.is_none_or(|t| t + max_age <= now))
            })
            .await
            .context("checking whether rotation is due")?;
        drop(conn);
        if due {
            let kid = rotate(&self.pool, &self.sealing, now + self.publish_ahead).await?;
            tracing::info!(%kid, activates_in = ?self.publish_ahead, "automatic signing-key rotation");
        }
        Ok(())
    }

    /// Reloads every `reload_every` until `shutdown`.
    pub fn spawn_reload(
        self: Arc<Self>,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(self.reload_every);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = shutdown.cancelled() => return,
                }
                if let Err(error) = self.reload().await {
                    tracing::warn!(
                        error = format!("{error:#}"),
                        "reloading signing keys failed; keeping the current ones"
                    );
                }
            }
        })
    }
}

/// How long a replaced key stays published: the access-token lifetime plus a minute.
fn publish_window(settings: &AuthSettings) -> chrono::Duration {
    let ttl = chrono::Duration::from_std(settings.tokens.access_ttl)
        .unwrap_or(chrono::Duration::minutes(15));
    ttl + chrono::Duration::minutes(1)
}

async fn load_rows(pool: &PgPool) -> anyhow::Result<Vec<Row>> {
    let mut conn = aia_db::conn(pool).await?;
    signing_keys::table
        .select((
            signing_keys::kid,
            signing_keys::public_x,
            signing_keys::private_key,
            signing_keys::sealing_key_id,
            signing_keys::activated_at,
            signing_keys::withdrawn_at,
        ))
        .order(signing_keys::activated_at.asc())
        .load(&mut conn)
        .await
        .context("loading signing keys")
}

/// The ring for `now`: the newest activated key that is not withdrawn signs (if
/// this sealing key cannot open it, `None`: an older key never signs again in its
/// place); published are the keys not yet active, the active one, and those replaced
/// less than `window` ago, withdrawn keys never (a withdrawn key still counts as the
/// replacement of the one before it, so withdrawing does not publish that again).
/// `None` if no key can sign.
fn build_ring(
    rows: &[Row],
    sealing: &SealingKey,
    now: DateTime<Utc>,
    window: chrono::Duration,
    issuer: &str,
    audience: &str,
) -> Option<KeyRing> {
    let (kid, _, sealed, sealing_id, _, _) =
        rows.iter().rev().find(|r| r.4 <= now && r.5.is_none())?;
    if sealing_id != sealing.id() {
        tracing::error!(
            %kid,
            "the newest signing key is sealed under another ENCRYPTION_KEY; it cannot sign here"
        );
        return None;
    }
    let der = sealing.open(sealed, kid.as_bytes()).ok()?;
    let active = SigningKey::from_pkcs8_der(&der).ok()?;
    let mut keys = vec![active.jwk().clone()];
    for (i, (kid, x, _, _, _, withdrawn)) in rows.iter().enumerate() {
        // Replaced when a later key has activated (withdrawn or not).
        let replaced_at = rows[i + 1..].iter().map(|r| r.4).find(|t| *t <= now);
        let published = replaced_at.is_none_or(|t| t + window > now);
        if published && withdrawn.is_none() && kid != active.kid() {
            keys.push(Jwk::ed25519(x.clone()));
        }
    }
    let jwks = Jwks { keys };
    Some(KeyRing {
        verifier: MemoVerifier::new(Verifier::new(&jwks, issuer, audience)),
        jwks_json: serde_json::to_string(&jwks).ok()?,
        active: Signer::Ed25519(active),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(
        sealing: &SealingKey,
        activated: DateTime<Utc>,
        withdrawn: bool,
    ) -> anyhow::Result<(Row, String)> {
        let key = SigningKey::generate()?;
        let sealed = sealing
            .seal(key.pkcs8_der(), key.kid().as_bytes())
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let kid = key.kid().to_owned();
        Ok((
            (
                kid.clone(),
                key.jwk().x.clone(),
                sealed,
                sealing.id().to_owned(),
                activated,
                withdrawn.then_some(activated),
            ),
            kid,
        ))
    }

    fn published(ring: &KeyRing) -> anyhow::Result<Vec<String>> {
        let jwks: serde_json::Value = serde_json::from_str(&ring.jwks_json)?;
        Ok(jwks["keys"]
            .as_array()
            .map(|keys| {
                keys.iter()
                    .filter_map(|k| k["kid"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Withdrawing a key publishes no older one again (a withdrawn key still counts
    /// as the replacement of the one before it), a withdrawn key is never published,
    /// a pending one withdrawn leaves the signer as it was, and a newest key that
    /// does not open here signs nothing: no older key signs in its place.
    #[test]
    fn a_withdrawal_brings_no_older_key_back() -> anyhow::Result<()> {
        let secret = [7u8; 32];
        let sealing = SealingKey::derive(&secret).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let now = Utc::now();
        let window = chrono::Duration::minutes(16);
        let (a, _) = row(&sealing, now - chrono::Duration::hours(2), false)?;
        let (b, b_kid) = row(&sealing, now - chrono::Duration::hours(1), true)?;
        let (c, c_kid) = row(&sealing, now - chrono::Duration::minutes(1), false)?;
        let (pending, _) = row(&sealing, now + chrono::Duration::minutes(1), true)?;
        let rows = vec![a, b, c, pending];
        let ring = build_ring(&rows, &sealing, now, window, "iss", "aud")
            .ok_or_else(|| anyhow::anyhow!("no ring"))?;
        assert_eq!(ring.active.kid(), c_kid);
        // A was replaced by B an hour ago: not published again; B withdrawn: never.
        assert_eq!(published(&ring)?, vec![c_kid]);
        assert!(!published(&ring)?.contains(&b_kid));

        // The newest key sealed under another ENCRYPTION_KEY: no ring, not C's.
        let other = SealingKey::derive(&[9u8; 32]).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let (d, _) = row(&other, now - chrono::Duration::seconds(5), false)?;
        let mut rows = rows;
        rows.push(d);
        assert!(build_ring(&rows, &sealing, now, window, "iss", "aud").is_none());
        Ok(())
    }
}
