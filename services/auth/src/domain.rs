//! Values that are valid by construction: parse at the edge, trust inside.

use secrecy::{ExposeSecret, SecretString};
use unicode_normalization::UnicodeNormalization;

/// Longest password accepted, in code points. Long enough for any passphrase or
/// password manager; argon2 hashes the whole of it (no truncation).
pub const MAX_PASSWORD_CHARS: usize = 1024;

/// Why an input was refused; the message is safe to show the caller.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Invalid {
    /// The email address is malformed.
    #[error("email: not a valid email address")]
    Email,
    /// The password is too short.
    #[error("password: must be at least {0} characters")]
    PasswordTooShort(usize),
    /// The password is too long.
    #[error("password: must be at most {MAX_PASSWORD_CHARS} characters")]
    PasswordTooLong,
    /// The password is on the list of common and breached passwords.
    #[error("password: is too common (it appears in lists of breached passwords)")]
    PasswordCommon,
    /// The password contains the user's email name.
    #[error("password: must not contain your email address's name")]
    PasswordContainsEmail,
    /// A composition rule the operator turned on.
    #[error("password: must contain {0}")]
    PasswordComposition(&'static str),
    /// An API key's name is empty, too long or has control characters.
    #[error("name: must be 1-100 characters without control characters")]
    ApiKeyName,
    /// An API key's scopes are empty or unknown.
    #[error("scopes: must be one or more of profile:read, tokens:introspect, api:access")]
    ApiKeyScopes,
    /// An API key's expiry is too far.
    #[error("expires_in_days: must be at most 3650")]
    ApiKeyExpiry,
    /// A page size out of range.
    #[error("limit: must be between 1 and 200")]
    PageSize,
    /// A cursor this service did not issue.
    #[error("cursor: not one this service issued")]
    Cursor,
    /// Unknown roles.
    #[error("roles: must be from user, admin")]
    Roles,
    /// An admin removing their own admin role.
    #[error("roles: you cannot remove your own admin role")]
    SelfDemotion,
    /// An admin disabling their own account.
    #[error("you cannot disable your own account")]
    SelfDisable,
    /// The new password is the current one or a recent one.
    #[error("password: must differ from your recent passwords")]
    PasswordReused,
    /// Disabling MFA needs a proof.
    #[error("code or password: one of them is required")]
    ProofMissing,
}

/// A syntactically valid email address, trimmed and lower-cased (addresses are
/// treated case-insensitively, as Keycloak and Kratos do).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailAddress(String);

impl EmailAddress {
    /// Parses and normalises `raw`.
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        let trimmed = raw.trim();
        let valid = !trimmed.is_empty()
            && trimmed.len() <= 254
            && !trimmed.chars().any(|c| c.is_whitespace() || c.is_control())
            && email_address::EmailAddress::parse_with_options(
                trimmed,
                email_address::Options::default()
                    .without_display_text()
                    .without_domain_literal(),
            )
            .is_ok();
        if valid {
            Ok(Self(trimmed.to_lowercase()))
        } else {
            Err(Invalid::Email)
        }
    }

    /// The normalised address.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A password, NFKC-normalised, never printed.
pub struct Password(SecretString);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(..)")
    }
}

impl Password {
    /// A password offered at registration: it must meet the length policy, counted in
    /// Unicode code points after NFKC normalisation.
    pub fn new(raw: &str, min_chars: usize) -> Result<Self, Invalid> {
        let normalised: String = raw.nfkc().collect();
        let chars = normalised.chars().count();
        if chars < min_chars {
            return Err(Invalid::PasswordTooShort(min_chars));
        }
        if chars > MAX_PASSWORD_CHARS {
            return Err(Invalid::PasswordTooLong);
        }
        Ok(Self(normalised.into()))
    }

    /// A password offered at login: no policy (it was checked when set), only the
    /// upper bound, so a huge input cannot cost more than a normal one.
    pub fn presented(raw: &str) -> Result<Self, Invalid> {
        Self::new(raw, 0)
    }

    /// The bytes to hash.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalised() {
        assert_eq!(
            EmailAddress::parse("  Ada@Example.COM ").map(|e| e.0),
            Ok("ada@example.com".into())
        );
    }

    #[test]
    fn malformed_emails_are_refused() {
        for bad in [
            "",
            "ada",
            "@example.com",
            "ada@",
            "a da@example.com",
            "Ada <ada@example.com>",
            "ada@[127.0.0.1]",
            "ada\0@example.com",
        ] {
            assert_eq!(EmailAddress::parse(bad), Err(Invalid::Email), "{bad:?}");
        }
        assert_eq!(
            EmailAddress::parse(&format!("{}@example.com", "a".repeat(250))),
            Err(Invalid::Email)
        );
    }

    #[test]
    fn password_length_counts_code_points_after_nfkc() {
        // Twelve code points, far more than twelve bytes.
        assert!(Password::new("пароль-пароль", 12).is_ok());
        assert_eq!(
            Password::new("short", 12).err(),
            Some(Invalid::PasswordTooShort(12))
        );
        assert_eq!(
            Password::new(&"x".repeat(MAX_PASSWORD_CHARS + 1), 12).err(),
            Some(Invalid::PasswordTooLong)
        );
        // NFKC: the ligature "ﬁ" becomes "fi".
        assert_eq!(
            Password::new("ﬁ", 0).map(|p| p.expose().to_owned()).ok(),
            Some("fi".to_owned())
        );
    }

    mod properties {
        //! Arbitrary input at the account edge (issue #8): never a panic; an accepted
        //! email is trimmed, lower-case and at most 254 bytes; a password shorter than
        //! the minimum (counted after NFKC) is always refused, and one in range never.
        use super::*;
        use proptest::prelude::*;

        proptest! {

            #[test]
            fn emails_are_normalised_or_refused(raw in prop_oneof![
                "\\PC{0,300}",
                " {0,2}[A-Za-z0-9._%+-]{1,30}@[A-Za-z0-9-]{1,30}\\.[A-Za-z]{2,8} {0,2}",
            ]) {
                if let Ok(email) = EmailAddress::parse(&raw) {
                    let normal = email.as_str();
                    prop_assert!(normal.len() <= 254);
                    prop_assert_eq!(normal, raw.trim().to_lowercase());
                    prop_assert!(!normal.chars().any(char::is_whitespace));
                }
            }

            #[test]
            fn passwords_are_judged_by_their_normalised_length(raw in "\\PC{0,40}") {
                let chars = raw.nfkc().count();
                let judged = Password::new(&raw, 12);
                if !(12..=MAX_PASSWORD_CHARS).contains(&chars) {
                    prop_assert!(judged.is_err());
                } else {
                    prop_assert!(judged.is_ok());
                }
            }
        }
    }
}
