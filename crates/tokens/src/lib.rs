//! Access tokens: signing (auth), the JWKS that publishes the public keys, and the
//! one strict verifier that every service uses.
//!
//! - [`SigningKey`]: an Ed25519 key from PKCS#8 PEM, or generated for development.
//!   Its `kid` is the RFC 7638 thumbprint of the public key, so it is stable across
//!   restarts and needs no registry.
//! - [`Jwks`]: the public half, as served at `/.well-known/jwks.json`.
//! - [`Verifier`]: accepts only what the platform issues: `alg` EdDSA, `typ` at+jwt, a
//!   known `kid`, no `jku`/`x5u`/embedded `jwk`, and `exp`, `nbf`, `iss`, `aud`, `sub`
//!   all present and right.
//! - [`MemoVerifier`]: a verifier that answers tokens it accepted before from memory.

mod claims;
mod hmac;
mod jwks;
mod memo;
pub mod seal;
mod signing;
mod verify;

pub use claims::{ACCESS_TOKEN_TYPE, AccessClaims};
pub use hmac::{HmacKey, Signer};
pub use jwks::{Jwk, Jwks};
pub use memo::MemoVerifier;
pub use signing::{KeyError, SigningKey};
pub use verify::{LEEWAY_SECONDS, TokenError, Verifier};
