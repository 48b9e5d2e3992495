//! The password policy: length (in code points after NFKC, no truncation), a
//! blocklist of common and breached passwords, no email name inside, and the
//! composition rules an operator may turn on. The first rule that fails is named.

use std::collections::HashSet;
use std::io::Read;
use std::sync::Arc;

use aia_settings::PasswordPolicySettings;
use anyhow::Context;

use crate::domain::{EmailAddress, Invalid, Password};

/// The blocklist, compiled in (see `data/README.md` for its origin and licence).
const COMMON_PASSWORDS_GZ: &[u8] = include_bytes!("../data/common-passwords.txt.gz");

/// Email names shorter than this are too likely to occur by chance to refuse.
const MIN_EMAIL_NAME: usize = 3;

/// The policy, ready to check passwords.
#[derive(Clone)]
pub struct PasswordPolicy {
    settings: PasswordPolicySettings,
    blocklist: Arc<HashSet<String>>,
}

impl PasswordPolicy {
    /// Loads the blocklist (about 105,000 entries, some tens of milliseconds).
    pub fn load(settings: PasswordPolicySettings) -> anyhow::Result<Self> {
        let mut text = String::new();
        flate2::read::GzDecoder::new(COMMON_PASSWORDS_GZ)
            .read_to_string(&mut text)
            .context("decompressing the password blocklist")?;
        let blocklist = text
            .lines()
            .map(|l| l.trim().to_lowercase())
            .filter(|l| !l.is_empty())
            .collect();
        Ok(Self {
            settings,
            blocklist: Arc::new(blocklist),
        })
    }

    /// How many passwords are on the blocklist.
    #[cfg(test)]
    pub fn blocklist_len(&self) -> usize {
        self.blocklist.len()
    }

    /// How many previous passwords a change may not reuse.
    pub fn history(&self) -> usize {
        self.settings.history
    }

    /// Checks a new password of the user with `email`.
    pub fn check(&self, raw: &str, email: &EmailAddress) -> Result<Password, Invalid> {
        let password = Password::new(raw, self.settings.min_length)?;
        let lower = password.expose().to_lowercase();
        if self.blocklist.contains(&lower) {
            return Err(Invalid::PasswordCommon);
        }
        let name = email.as_str().split('@').next().unwrap_or("");
        if name.chars().count() >= MIN_EMAIL_NAME && lower.contains(name) {
            return Err(Invalid::PasswordContainsEmail);
        }
        type Rule = (bool, fn(char) -> bool, &'static str);
        let rules: [Rule; 4] = [
            (
                self.settings.require_uppercase,
                char::is_uppercase,
                "an upper-case letter",
            ),
            (
                self.settings.require_lowercase,
                char::is_lowercase,
                "a lower-case letter",
            ),
            (self.settings.require_numbers, char::is_numeric, "a digit"),
            (
                self.settings.require_symbols,
                |c| !c.is_alphanumeric() && !c.is_whitespace(),
                "a symbol",
            ),
        ];
        for (required, test, what) in rules {
            if required && !password.expose().chars().any(test) {
                return Err(Invalid::PasswordComposition(what));
            }
        }
        Ok(password)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> PasswordPolicySettings {
        PasswordPolicySettings {
            min_length: 12,
            require_uppercase: false,
            require_lowercase: false,
            require_numbers: false,
            require_symbols: false,
            history: 5,
        }
    }

    fn email() -> Result<EmailAddress, Invalid> {
        EmailAddress::parse("ada.lovelace@example.com")
    }

    #[test]
    fn the_blocklist_is_loaded_and_checked_case_insensitively() -> anyhow::Result<()> {
        let policy = PasswordPolicy::load(settings())?;
        assert!(
            policy.blocklist_len() >= 100_000,
            "{}",
            policy.blocklist_len()
        );
        // From deep in the top 100,000 breached passwords, in any case.
        for common in ["nissanskyline", "NodataInColumn", "parliament12345"] {
            assert_eq!(
                policy.check(common, &email()?).err(),
                Some(Invalid::PasswordCommon),
                "{common}"
            );
        }
        // Short ones matter when an operator lowers PASSWORD_MIN_LENGTH.
        let lax = PasswordPolicy::load(PasswordPolicySettings {
            min_length: 6,
            ..settings()
        })?;
        assert_eq!(
            lax.check("nhfdf123", &email()?).err(),
            Some(Invalid::PasswordCommon)
        );
        // "1q2w3e4r5t6y" is on the list; so is it in capitals.
        assert_eq!(
            policy.check("1q2w3e4r5t6y", &email()?).err(),
            Some(Invalid::PasswordCommon)
        );
        assert_eq!(
            policy.check("1Q2W3E4R5T6Y", &email()?).err(),
            Some(Invalid::PasswordCommon)
        );
        assert!(policy.check("violet kettle orbit 42", &email()?).is_ok());
        Ok(())
    }

    #[test]
    fn each_rule_names_itself() -> anyhow::Result<()> {
        let policy = PasswordPolicy::load(settings())?;
        let e = email()?;
        assert_eq!(
            policy.check("short", &e).err(),
            Some(Invalid::PasswordTooShort(12))
        );
        assert_eq!(
            policy.check("my Ada.Lovelace secret", &e).err(),
            Some(Invalid::PasswordContainsEmail)
        );
        let strict = PasswordPolicy::load(PasswordPolicySettings {
            require_uppercase: true,
            require_lowercase: true,
            require_numbers: true,
            require_symbols: true,
            ..settings()
        })?;
        assert_eq!(
            strict.check("violet kettle orbit", &e).err(),
            Some(Invalid::PasswordComposition("an upper-case letter"))
        );
        assert_eq!(
            strict.check("VIOLET KETTLE ORBIT", &e).err(),
            Some(Invalid::PasswordComposition("a lower-case letter"))
        );
        assert_eq!(
            strict.check("Violet kettle orbit", &e).err(),
            Some(Invalid::PasswordComposition("a digit"))
        );
        assert_eq!(
            strict.check("Violet kettle orbit 42", &e).err(),
            Some(Invalid::PasswordComposition("a symbol"))
        );
        assert!(strict.check("Violet kettle orbit 42!", &e).is_ok());
        Ok(())
    }

    #[test]
    fn length_counts_code_points_and_long_passwords_are_whole() -> anyhow::Result<()> {
        let policy = PasswordPolicy::load(settings())?;
        let e = email()?;
        // Twelve Cyrillic letters and a space: 13 code points, 25 bytes.
        assert!(policy.check("пароль пароль", &e).is_ok());
        // Eleven code points that are many more bytes: too short.
        assert_eq!(
            policy.check("🔐🔐🔐🔐🔐🔐🔐🔐🔐🔐🔐", &e).err(),
            Some(Invalid::PasswordTooShort(12))
        );
        // 129 characters are accepted, and not cut.
        let long = "x".repeat(128) + "y";
        assert_eq!(
            policy.check(&long, &e).map(|p| p.expose().len()).ok(),
            Some(129)
        );
        Ok(())
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;
        use unicode_normalization::UnicodeNormalization;

        /// Loaded once: decompressing it for every case would dominate the test.
        fn blocklist() -> Option<Arc<HashSet<String>>> {
            static LIST: std::sync::OnceLock<Option<Arc<HashSet<String>>>> =
                std::sync::OnceLock::new();
            LIST.get_or_init(|| PasswordPolicy::load(settings()).ok().map(|p| p.blocklist))
                .clone()
        }

        proptest! {
            /// Whatever the input and the composition rules, a password the policy
            /// accepts meets each of them, measured on what is stored (the NFKC form):
            /// long enough, not too long, not on the blocklist, not the email's
            /// name, and of every required kind of character.
            #[test]
            fn an_accepted_password_meets_every_rule(
                raw in prop_oneof![
                    "\\PC{0,40}",
                    "[a-zA-Z0-9 !?]{8,24}",
                    "[a-z]{0,6}[Aa][Dd][Aa]\\.[Ll]ovelace[0-9]{0,6}",
                    prop::sample::select(vec!["nissanskyline!1", "Parliament12345", "ｐａｒｌｉａｍｅｎｔ１２３４５"]).prop_map(str::to_owned),
                    "\\PC{1020,1030}",
                ],
                upper: bool, lower: bool, digits: bool, symbols: bool,
            ) {
                let blocklist = blocklist().ok_or_else(|| TestCaseError::fail("the blocklist does not load"))?;
                let policy = PasswordPolicy {
                    settings: PasswordPolicySettings {
                        require_uppercase: upper,
                        require_lowercase: lower,
                        require_numbers: digits,
                        require_symbols: symbols,
                        ..settings()
                    },
                    blocklist,
                };
                let email = email().map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
                if let Ok(password) = policy.check(&raw, &email) {
                    let stored = password.expose();
                    let normalised: String = raw.nfkc().collect();
                    prop_assert_eq!(stored, normalised.as_str());
                    let chars = stored.chars().count();
                    prop_assert!((12..=1024).contains(&chars), "{} chars", chars);
                    let lower_case = stored.to_lowercase();
                    prop_assert!(!policy.blocklist.contains(&lower_case));
                    prop_assert!(!lower_case.contains("ada.lovelace"));
                    prop_assert!(!upper || stored.chars().any(char::is_uppercase));
                    prop_assert!(!lower || stored.chars().any(char::is_lowercase));
                    prop_assert!(!digits || stored.chars().any(char::is_numeric));
                    prop_assert!(!symbols || stored.chars().any(|c| !c.is_alphanumeric() && !c.is_whitespace()));
                }
            }
        }
    }
}
