//! The JSON Web Key Set of the public signing keys (RFC 7517, RFC 8037 for OKP).

use serde::{Deserialize, Serialize};

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

/// A key set: `{"keys": [...]}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwks {
    /// The keys, active one first.
    pub keys: Vec<Jwk>,
}
