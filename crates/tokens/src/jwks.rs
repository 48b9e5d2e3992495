//! The JSON Web Key Set of the public signing keys (RFC 7517, RFC 8037 for OKP).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One public key. Only Ed25519 (`kty: OKP`, `crv: Ed25519`) is ever published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    /// Always `OKP`.
    pub kty: String,
    /// Always `Ed25519`.
    pub crv: String,
    /// The public key, base64url without padding.
    pub x: String,
    /// Key id: RFC 7638 thumbprint.
    pub kid: String,
    /// Always `EdDSA`.
    pub alg: String,
    /// Always `sig`.
    #[serde(rename = "use")]
    pub use_: String,
}

impl Jwk {
    /// The JWK of an Ed25519 public key (`x`, base64url); its `kid` is the RFC 7638
    /// thumbprint, so the same key always has the same id.
    pub fn ed25519(x: String) -> Self {
        Self {
            kid: thumbprint(&x),
            kty: "OKP".into(),
            crv: "Ed25519".into(),
            x,
            alg: "EdDSA".into(),
            use_: "sig".into(),
        }
    }
}

/// RFC 7638 thumbprint of an Ed25519 public key: SHA-256 over the required members
/// in lexicographic order, base64url.
fn thumbprint(x: &str) -> String {
    let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

/// A key set: `{"keys": [...]}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwks {
    /// The keys, active one first.
    pub keys: Vec<Jwk>,
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc_8037_example_key_has_the_rfc_thumbprint() {
        // RFC 8037 Appendix A.3: thumbprint of the example public key.
        assert_eq!(
            super::thumbprint("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
    }
}
