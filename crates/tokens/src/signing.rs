//! Ed25519 signing keys.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};

use crate::claims::{ACCESS_TOKEN_TYPE, AccessClaims};
use crate::jwks::Jwk;

/// Why a key could not be loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The PEM is not an Ed25519 PKCS#8 private key.
    #[error("not an Ed25519 PKCS#8 private key in PEM form")]
    NotEd25519,
    /// Key generation failed (the OS random source).
    #[error("could not generate a key")]
    Generate,
    /// Signing failed.
    #[error("could not sign the token")]
    Sign(#[source] jsonwebtoken::errors::Error),
}

/// An Ed25519 private key with its public JWK. The private half is never printed.
pub struct SigningKey {
    encoding: EncodingKey,
    jwk: Jwk,
    pkcs8: Vec<u8>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.jwk.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Loads a PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`), as written by
    /// `openssl genpkey -algorithm ed25519`.
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, KeyError> {
        let block = pem::parse(pem).map_err(|_| KeyError::NotEd25519)?;
        if block.tag() != "PRIVATE KEY" {
            return Err(KeyError::NotEd25519);
        }
        Self::from_pkcs8_der(block.contents())
    }

    /// Generates a fresh key (development only: it is lost when the process exits).
    pub fn generate() -> Result<Self, KeyError> {
        let doc =
            Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| KeyError::Generate)?;
        Self::from_pkcs8_der(doc.as_ref())
    }

    /// The PEM of this key, to write a generated key to a file.
    pub fn generate_pem() -> Result<String, KeyError> {
        let doc =
            Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| KeyError::Generate)?;
        Ok(pem::encode(&pem::Pem::new(
            "PRIVATE KEY",
            doc.as_ref().to_vec(),
        )))
    }

    /// Loads a PKCS#8 DER document (as stored, sealed, by auth).
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, KeyError> {
        let pair = Ed25519KeyPair::from_pkcs8(der).map_err(|_| KeyError::NotEd25519)?;
        let x = URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
        Ok(Self {
            encoding: EncodingKey::from_ed_der(der),
            jwk: Jwk::ed25519(x),
            pkcs8: der.to_vec(),
        })
    }

    /// The private key as PKCS#8 DER, to seal it for storage. Handle with care.
    pub fn pkcs8_der(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The key id.
    pub fn kid(&self) -> &str {
        &self.jwk.kid
    }

    /// The public key as a JWK.
    pub fn jwk(&self) -> &Jwk {
        &self.jwk
    }

    #[cfg(test)]
    pub(crate) fn encoding_key(&self) -> &EncodingKey {
        &self.encoding
    }

    /// Signs an access token: `alg: EdDSA`, `typ: at+jwt`, `kid`.
    pub fn sign(&self, claims: &AccessClaims) -> Result<String, KeyError> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.typ = Some(ACCESS_TOKEN_TYPE.into());
        header.kid = Some(self.jwk.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).map_err(KeyError::Sign)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pem_that_is_not_ed25519_is_refused() {
        assert!(SigningKey::from_pkcs8_pem("not a pem").is_err());
        let pem = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n";
        assert!(SigningKey::from_pkcs8_pem(pem).is_err());
    }

    #[test]
    fn a_generated_pem_loads_back_with_a_stable_kid() -> Result<(), KeyError> {
        let pem = SigningKey::generate_pem()?;
        let a = SigningKey::from_pkcs8_pem(&pem)?;
        let b = SigningKey::from_pkcs8_pem(&pem)?;
        assert_eq!(a.kid(), b.kid());
        Ok(())
    }
}
