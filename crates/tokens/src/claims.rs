//! The claims of an access token (RFC 9068 profile, plus `sid` and `roles`).

use serde::{Deserialize, Serialize};

/// The JOSE `typ` of an access token (RFC 9068 §2.1).
pub const ACCESS_TOKEN_TYPE: &str = "at+jwt";

/// Claims of an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    /// Issuer.
    pub iss: String,
    /// Audience.
    pub aud: String,
    /// Subject: the user id.
    pub sub: String,
    /// Expiry, seconds since the epoch.
    pub exp: i64,
    /// Issued at, seconds since the epoch.
    pub iat: i64,
    /// Not before, seconds since the epoch.
    pub nbf: i64,
    /// Unique token id (UUID); what logout blacklists.
    pub jti: String,
    /// Session id (UUID): revoking the session revokes every token that names it.
    pub sid: String,
    /// The user's roles at issue time.
    #[serde(default)]
    pub roles: Vec<String>,
    /// How the session authenticated (RFC 8176 values: `pwd`, `otp`).
    #[serde(default)]
    pub amr: Vec<String>,
}
