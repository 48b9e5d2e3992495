//! The symmetric HS256 mode, for deployments that keep the original design's
//! `JWT_SECRET_KEY`. One algorithm per deployment: in this mode EdDSA tokens are
//! refused, and nothing is published in the JWKS (the key is a secret).

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use sha2::{Digest, Sha256};

use crate::claims::{ACCESS_TOKEN_TYPE, AccessClaims};
use crate::signing::KeyError;

/// An HS256 key. Its `kid` is derived from the key (`hs-` and 16 hex digits of
/// SHA-256), so a changed secret shows as an unknown key rather than a bad signature.
pub struct HmacKey {
    secret: Vec<u8>,
    kid: String,
}

impl std::fmt::Debug for HmacKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HmacKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl HmacKey {
    /// The key from `JWT_SECRET_KEY`.
    pub fn new(secret: &[u8]) -> Self {
        let digest = Sha256::digest([b"aia hs256 kid v1\0".as_slice(), secret].concat());
        Self {
            secret: secret.to_vec(),
            kid: format!("hs-{}", hex::encode(&digest[..8])),
        }
    }

    /// The key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub(crate) fn decoding_key(&self) -> DecodingKey {
        DecodingKey::from_secret(&self.secret)
    }

    /// Signs an access token: `alg: HS256`, `typ: at+jwt`, `kid`.
    pub fn sign(&self, claims: &AccessClaims) -> Result<String, KeyError> {
        let mut header = Header::new(Algorithm::HS256);
        header.typ = Some(ACCESS_TOKEN_TYPE.into());
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(&self.secret))
            .map_err(KeyError::Sign)
    }
}

/// What signs access tokens in a deployment: an Ed25519 key (the default) or, in
/// HS256 mode, the shared secret.
#[derive(Debug)]
pub enum Signer {
    /// `JWT_ALGORITHM=EdDSA`.
    Ed25519(crate::SigningKey),
    /// `JWT_ALGORITHM=HS256`.
    Hs256(HmacKey),
}

impl Signer {
    /// The key id put in the header.
    pub fn kid(&self) -> &str {
        match self {
            Self::Ed25519(key) => key.kid(),
            Self::Hs256(key) => key.kid(),
        }
    }

    /// Signs an access token.
    pub fn sign(&self, claims: &AccessClaims) -> Result<String, KeyError> {
        match self {
            Self::Ed25519(key) => key.sign(claims),
            Self::Hs256(key) => key.sign(claims),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Jwks, SigningKey, Verifier};

    fn claims() -> AccessClaims {
        let now = jsonwebtoken::get_current_timestamp() as i64;
        AccessClaims {
            iss: "iss".into(),
            aud: "aud".into(),
            sub: "0b6a3f4e-5c1d-4e8a-9f2b-7d1c3e5a9b01".into(),
            exp: now + 600,
            iat: now,
            nbf: now,
            jti: "5e2d8c71-3a4b-4f6e-8d9c-1b2a3c4d5e6f".into(),
            sid: "9c8b7a6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d".into(),
            roles: vec![],
            amr: vec!["pwd".into()],
        }
    }

    #[test]
    fn hs256_mode_accepts_its_own_tokens_and_nothing_else() -> Result<(), Box<dyn std::error::Error>>
    {
        let key = HmacKey::new(b"a shared secret of the deployment, long and random enough");
        let verifier = Verifier::hs256(&key, "iss", "aud");
        assert_eq!(verifier.verify(&key.sign(&claims())?)?, claims());
        let other = HmacKey::new(b"another secret entirely, also long and random enough");
        assert!(verifier.verify(&other.sign(&claims())?).is_err());
        // An EdDSA token, even a valid one of some key, is refused in HS256 mode ...
        let ed = SigningKey::generate()?;
        assert_eq!(
            verifier.verify(&ed.sign(&claims())?),
            Err(crate::TokenError::Algorithm)
        );
        // ... and an HS256 token is refused in EdDSA mode.
        let ed_verifier = Verifier::new(
            &Jwks {
                keys: vec![ed.jwk().clone()],
            },
            "iss",
            "aud",
        );
        assert_eq!(
            ed_verifier.verify(&key.sign(&claims())?),
            Err(crate::TokenError::Algorithm)
        );
        Ok(())
    }
}
