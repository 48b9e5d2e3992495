//! Opaque refresh tokens: 256 random bits, base64url; only their SHA-256 is stored.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// Length of an encoded token: 32 bytes in base64url without padding.
const ENCODED_LEN: usize = 43;

/// A refresh token as handed to the client. Never logged.
pub struct RefreshToken(String);

impl std::fmt::Debug for RefreshToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RefreshToken(..)")
    }
}

impl RefreshToken {
    /// A fresh token from the OS random source.
    pub fn generate() -> anyhow::Result<Self> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("OS random source: {e}"))?;
        Ok(Self(URL_SAFE_NO_PAD.encode(bytes)))
    }

    /// A token presented by a client, if it has the right shape. Anything else cannot
    /// be one of ours, and is refused without a database lookup.
    pub fn parse(presented: &str) -> Option<Self> {
        let shaped = presented.len() == ENCODED_LEN
            && URL_SAFE_NO_PAD
                .decode(presented)
                .is_ok_and(|b| b.len() == 32);
        shaped.then(|| Self(presented.to_owned()))
    }

    /// The token that succeeds this one: HMAC-SHA256 of this token under `key`.
    ///
    /// Deriving rather than drawing the successor lets a retry of this token within
    /// the grace window get the very same successor, although only hashes are stored.
    /// Without `key` (`SESSION_SECRET`), neither the database nor an observer of old
    /// tokens can compute it.
    pub fn successor(&self, key: &[u8]) -> anyhow::Result<Self> {
        // HMAC takes keys of any length; this cannot fail.
        let mut mac =
            Hmac::<Sha256>::new_from_slice(key).map_err(|_| anyhow::anyhow!("HMAC key"))?;
        mac.update(b"aia refresh successor v1\0");
        mac.update(self.0.as_bytes());
        Ok(Self(URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())))
    }

    /// The stored form.
    pub fn hash(&self) -> Vec<u8> {
        Sha256::digest(self.0.as_bytes()).to_vec()
    }

    /// The token, to send to the client.
    pub fn into_string(self) -> String {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_parse_and_differ() -> anyhow::Result<()> {
        let a = RefreshToken::generate()?;
        let b = RefreshToken::generate()?;
        assert_ne!(a.hash(), b.hash());
        assert!(RefreshToken::parse(&a.into_string()).is_some());
        Ok(())
    }

    #[test]
    fn a_successor_is_a_token_determined_by_its_predecessor_and_the_key() -> anyhow::Result<()> {
        let token = RefreshToken::generate()?;
        let a = token.successor(b"key one")?;
        assert_eq!(a.hash(), token.successor(b"key one")?.hash());
        assert_ne!(a.hash(), token.successor(b"key two")?.hash());
        assert_ne!(a.hash(), token.hash());
        assert!(RefreshToken::parse(&a.into_string()).is_some());
        Ok(())
    }

    #[test]
    fn misshapen_tokens_are_refused_up_front() {
        for bad in [
            "",
            "short",
            &"A".repeat(44),
            &"!".repeat(43),
            &"A".repeat(4096),
        ] {
            assert!(RefreshToken::parse(bad).is_none(), "{bad}");
        }
    }
}
