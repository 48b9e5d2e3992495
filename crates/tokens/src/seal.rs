//! Secrets at rest: AES-256-GCM under a key derived from `ENCRYPTION_KEY`.
//!
//! The sealing key is HKDF-SHA256 of the configured secret, so any long random string
//! works as `ENCRYPTION_KEY`. Each sealed value records the id of the key that sealed
//! it (the first 8 bytes of SHA-256 of the derived key, hex), so that the key can be
//! rotated: values sealed under an old key are recognised as such instead of failing
//! as corrupt. The caller passes associated data (e.g. the row's primary key) so that
//! a sealed value cannot be moved to another row.

use aws_lc_rs::aead::{AES_256_GCM, Aad, Nonce, RandomizedNonceKey};
use aws_lc_rs::hkdf::{HKDF_SHA256, Salt};
use sha2::{Digest, Sha256};

/// Length of the nonce stored in front of each sealed value.
const NONCE_LEN: usize = 12;

/// Why sealing or opening failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    /// The key could not be derived or used.
    #[error("sealing key unusable")]
    Key,
    /// The value was not sealed by this key, or was altered, or its associated data
    /// differs.
    #[error("sealed value does not open with this key")]
    Open,
}

/// A key that seals and opens secrets.
pub struct SealingKey {
    key: RandomizedNonceKey,
    id: String,
}

impl std::fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealingKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl SealingKey {
    /// Derives the sealing key from a configured secret.
    pub fn derive(secret: &[u8]) -> Result<Self, SealError> {
        Self::derive_for(secret, b"aia sealing key v1")
    }

    /// Derives a key for one `purpose` (HKDF info) from a configured secret, so that
    /// one secret can key several uses without one use's values opening in another.
    pub fn derive_for(secret: &[u8], purpose: &[u8]) -> Result<Self, SealError> {
        let prk = Salt::new(HKDF_SHA256, b"aia sealing salt v1").extract(secret);
        let mut bytes = [0u8; 32];
        prk.expand(&[purpose], HKDF_SHA256)
            .and_then(|okm| okm.fill(&mut bytes))
            .map_err(|_| SealError::Key)?;
        let id = hex::encode(&Sha256::digest(bytes)[..8]);
        let key = RandomizedNonceKey::new(&AES_256_GCM, &bytes).map_err(|_| SealError::Key)?;
        Ok(Self { key, id })
    }

    /// The key id recorded beside sealed values.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// `nonce || ciphertext || tag`.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut in_out = plaintext.to_vec();
        let nonce = self
            .key
            .seal_in_place_append_tag(Aad::from(aad), &mut in_out)
            .map_err(|_| SealError::Key)?;
        let mut sealed = nonce.as_ref().to_vec();
        sealed.extend_from_slice(&in_out);
        Ok(sealed)
    }

    /// Opens what [`SealingKey::seal`] produced with the same `aad`.
    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, SealError> {
        if sealed.len() < NONCE_LEN {
            return Err(SealError::Open);
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Open)?;
        let mut in_out = ciphertext.to_vec();
        let plaintext = self
            .key
            .open_in_place(nonce, Aad::from(aad), &mut in_out)
            .map_err(|_| SealError::Open)?;
        Ok(plaintext.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_value_opens_only_with_its_key_and_associated_data() -> Result<(), SealError> {
        let key = SealingKey::derive(b"one long random secret for tests only")?;
        let sealed = key.seal(b"private key bytes", b"kid-1")?;
        assert!(!sealed.windows(7).any(|w| w == b"private"));
        assert_eq!(key.open(&sealed, b"kid-1")?, b"private key bytes");
        assert_eq!(key.open(&sealed, b"kid-2"), Err(SealError::Open));
        let other = SealingKey::derive(b"another long random secret for tests")?;
        assert_ne!(other.id(), key.id());
        assert_eq!(other.open(&sealed, b"kid-1"), Err(SealError::Open));
        let mut tampered = sealed.clone();
        if let Some(last) = tampered.last_mut() {
            *last ^= 1;
        }
        assert_eq!(key.open(&tampered, b"kid-1"), Err(SealError::Open));
        assert_eq!(key.open(&sealed[..5], b"kid-1"), Err(SealError::Open));
        Ok(())
    }

    #[test]
    fn sealing_twice_gives_different_ciphertexts() -> Result<(), SealError> {
        let key = SealingKey::derive(b"one long random secret for tests only")?;
        assert_ne!(key.seal(b"x", b"")?, key.seal(b"x", b"")?);
        Ok(())
    }
}
