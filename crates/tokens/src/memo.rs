//! A verifier that remembers what it verified.

use std::collections::HashMap;
use std::sync::RwLock;

use crate::claims::AccessClaims;
use crate::verify::{TokenError, Verifier};

/// Tokens remembered, at most.
const CAPACITY: usize = 10_000;

/// A [`Verifier`] with a memo of the tokens it accepted.
///
/// An EdDSA verification costs tens of microseconds and a token is typically
/// presented many times in its life (every request of a client, every
/// `ValidateToken` of a service), so the gateway and auth answer a token seen before
/// from here. What keeps this safe:
/// - only tokens that verified get in, keyed by the whole token (signature included):
///   a token that differs in one byte is verified from scratch;
/// - an entry is used only while its `exp` is in the future (stricter than the
///   verifier's leeway);
/// - the memo belongs to one key set: a service that changes keys builds a new
///   `MemoVerifier`, so a withdrawn key takes its tokens with it;
/// - revocation is not this type's business: callers check it on every use;
/// - the map uses std's randomly keyed SipHash, and a full memo first drops expired
///   entries, then everything, so memory stays bounded (about 10,000 tokens).
pub struct MemoVerifier {
    verifier: Verifier,
    verified: RwLock<HashMap<String, AccessClaims>>,
}

impl std::fmt::Debug for MemoVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoVerifier")
            .field("verifier", &self.verifier)
            .finish_non_exhaustive()
    }
}

impl MemoVerifier {
    /// An empty memo in front of `verifier`.
    pub fn new(verifier: Verifier) -> Self {
        Self {
            verifier,
            verified: RwLock::new(HashMap::new()),
        }
    }

    /// Whether `kid` is one of the verifier's keys.
    pub fn knows(&self, kid: &str) -> bool {
        self.verifier.knows(kid)
    }

    /// [`Verifier::verify`], answered from the memo when this token verified before
    /// and has not expired since.
    pub fn verify(&self, token: &str) -> Result<AccessClaims, TokenError> {
        let now = i64::try_from(jsonwebtoken::get_current_timestamp()).unwrap_or(i64::MAX);
        if let Some(claims) = self
            .verified
            .read()
            .ok()
            .and_then(|memo| memo.get(token).filter(|c| c.exp > now).cloned())
        {
            return Ok(claims);
        }
        let claims = self.verifier.verify(token)?;
        if let Ok(mut memo) = self.verified.write() {
            if memo.len() >= CAPACITY {
                memo.retain(|_, c| c.exp > now);
                if memo.len() >= CAPACITY {
                    memo.clear();
                }
            }
            memo.insert(token.to_owned(), claims.clone());
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Jwks, SigningKey};

    fn now() -> i64 {
        i64::try_from(jsonwebtoken::get_current_timestamp()).unwrap_or(i64::MAX)
    }

    fn token(key: &SigningKey, exp_in: i64) -> Result<String, crate::KeyError> {
        key.sign(&AccessClaims {
            iss: "https://issuer.test".into(),
            aud: "aia".into(),
            sub: uuid::Uuid::new_v4().to_string(),
            exp: now() + exp_in,
            iat: now() - 60,
            nbf: now() - 60,
            jti: uuid::Uuid::new_v4().to_string(),
            sid: uuid::Uuid::new_v4().to_string(),
            roles: vec!["user".into()],
            amr: vec!["pwd".into()],
        })
    }

    fn memo_of(key: &SigningKey) -> MemoVerifier {
        let jwks = Jwks {
            keys: vec![key.jwk().clone()],
        };
        MemoVerifier::new(Verifier::new(&jwks, "https://issuer.test", "aia"))
    }

    #[test]
    fn the_memo_only_ever_answers_for_the_exact_token_it_verified()
    -> Result<(), Box<dyn std::error::Error>> {
        let key = SigningKey::generate()?;
        let memo = memo_of(&key);
        let good = token(&key, 600)?;
        let first = memo.verify(&good)?;
        assert_eq!(memo.verify(&good).ok(), Some(first));
        // One character changed in the signature: not the memo's token, refused.
        let mut forged = good.clone();
        let last = forged
            .pop()
            .map_or('A', |c| if c == 'A' { 'B' } else { 'A' });
        forged.push(last);
        assert!(memo.verify(&forged).is_err());
        // A prefix or an extension of a remembered token is not it either.
        assert!(memo.verify(&good[..good.len() - 1]).is_err());
        assert!(memo.verify(&format!("{good}A")).is_err());
        // Another key set (keys changed) knows nothing of it, and another key's
        // token is refused there as before.
        let other = SigningKey::generate()?;
        assert!(memo_of(&other).verify(&good).is_err());
        // A token that expired (beyond the verifier's leeway) is not answered from
        // the memo.
        let expired = token(&key, -120)?;
        assert!(memo.verify(&expired).is_err());
        Ok(())
    }

    fn claims_expiring_in(seconds: i64) -> AccessClaims {
        AccessClaims {
            iss: "https://issuer.test".into(),
            aud: "aia".into(),
            sub: "0b6a3f4e-5c1d-4e8a-9f2b-7d1c3e5a9b01".into(),
            exp: now() + seconds,
            iat: now() - 60,
            nbf: now() - 60,
            jti: "5e2d8c71-3a4b-4f6e-8d9c-1b2a3c4d5e6f".into(),
            sid: "9c8b7a6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d".into(),
            roles: Vec::new(),
            amr: Vec::new(),
        }
    }

    #[test]
    fn a_remembered_token_counts_only_until_its_expiry() -> Result<(), Box<dyn std::error::Error>> {
        let memo = memo_of(&SigningKey::generate()?);
        // Entries the verifier itself would refuse, to see what the memo decides.
        let mut verified = memo.verified.write().map_err(|_| "poisoned")?;
        verified.insert("live".into(), claims_expiring_in(60));
        verified.insert("expired".into(), claims_expiring_in(-1));
        drop(verified);
        assert_eq!(
            memo.verify("live")?.sub,
            "0b6a3f4e-5c1d-4e8a-9f2b-7d1c3e5a9b01"
        );
        assert!(memo.verify("expired").is_err());
        Ok(())
    }

    #[test]
    fn a_full_memo_stays_bounded() -> Result<(), Box<dyn std::error::Error>> {
        let key = SigningKey::generate()?;
        let memo = memo_of(&key);
        let mut verified = memo.verified.write().map_err(|_| "poisoned")?;
        for i in 0..CAPACITY {
            verified.insert(
                format!("t{i}"),
                claims_expiring_in(if i % 2 == 0 { 60 } else { -1 }),
            );
        }
        drop(verified);
        // Full: the expired half goes, the new token gets in.
        let fresh = token(&key, 600)?;
        memo.verify(&fresh)?;
        let verified = memo.verified.read().map_err(|_| "poisoned")?;
        assert_eq!(verified.len(), CAPACITY / 2 + 1);
        assert!(verified.contains_key(&fresh));
        drop(verified);
        // Full of live tokens: everything goes.
        let mut verified = memo.verified.write().map_err(|_| "poisoned")?;
        for i in 0..CAPACITY {
            verified.insert(format!("u{i}"), claims_expiring_in(60));
        }
        drop(verified);
        let another = token(&key, 600)?;
        memo.verify(&another)?;
        assert_eq!(memo.verified.read().map_err(|_| "poisoned")?.len(), 1);
        Ok(())
    }
}
