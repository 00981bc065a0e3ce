//! Passwords: the policy, and the Argon2id hash that is all the store ever keeps.

use std::{collections::HashSet, fmt, sync::LazyLock};

use super::Email;

/// Fewest characters of a password.
pub const MIN_LENGTH: usize = 8;
/// Most characters of a password; also bounds the CPU an attacker can make Argon2 spend.
pub const MAX_LENGTH: usize = 128;

/// The commonest passwords of at least eight characters, lower-cased: Django's
/// `common-passwords.txt` (BSD-3-Clause; compiled by Royce Williams), shipped in the binary.
static COMMON: LazyLock<HashSet<&'static str>> =
    LazyLock::new(|| include_str!("common-passwords.txt").lines().collect());

/// A password that passed the policy. Its `Debug` is redacted and it is never serialised.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    /// Checks the policy: 8 to 128 characters, not blank, not the email, not a common password.
    /// Error messages never contain the password.
    pub fn parse(raw: &str, email: Option<&Email>) -> Result<Self, (&'static str, String)> {
        if raw.trim().is_empty() {
            return Err(("blank", "must not be blank".to_owned()));
        }
        let length = raw.chars().count();
        if length < MIN_LENGTH {
            return Err(("too_short", format!("must be at least {MIN_LENGTH} characters")));
        }
        if length > MAX_LENGTH {
            return Err(("too_long", format!("must be at most {MAX_LENGTH} characters")));
        }
        let folded = raw.trim().to_lowercase();
        if email.is_some_and(|email| folded == email.key()) {
            return Err(("same_as_email", "must not be the email address".to_owned()));
        }
        if COMMON.contains(folded.as_str()) {
            return Err(("common_password", "is too common; choose another".to_owned()));
        }
        Ok(Self(raw.to_owned()))
    }

    /// The secret itself, for the hasher only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// An Argon2id PHC string. Not a secret in itself, but it is still kept out of `Debug` output,
/// since an offline guessing attack starts from it.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordHash(String);

impl PasswordHash {
    /// Wraps a PHC string made by the hasher.
    pub fn from_phc(phc: String) -> Self {
        Self(phc)
    }

    /// The PHC string, for the store.
    pub fn as_phc(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PasswordHash(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_refuses_each_weak_password_with_its_rule() {
        let email = Email::parse("jane@example.com").unwrap();
        let cases = [
            ("", "blank"),
            ("         ", "blank"),
            ("short", "too_short"),
            ("password", "common_password"),
            ("PassWord1", "common_password"),
            ("Jane@Example.com", "same_as_email"),
        ];
        for (raw, rule) in cases {
            assert_eq!(Password::parse(raw, Some(&email)).unwrap_err().0, rule, "{raw:?}");
        }
        assert_eq!(Password::parse(&"x".repeat(129), None).unwrap_err().0, "too_long");
        assert!(Password::parse(&"é".repeat(128), None).is_ok(), "128 characters is the bound, not bytes");
        assert!(Password::parse("correct horse battery staple", Some(&email)).is_ok());
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let password = Password::parse("tr0ub4dor&3-unique", None).unwrap();
        let shown = format!("{password:?} {:?}", PasswordHash::from_phc("$argon2id$v=19$secret".into()));
        assert!(!shown.contains("tr0ub4dor"), "{shown}");
        assert!(!shown.contains("secret"), "{shown}");
    }

    #[test]
    fn the_shipped_list_is_loaded() {
        assert!(COMMON.len() > 8000, "{} entries", COMMON.len());
        assert!(COMMON.iter().all(|p| p.chars().count() >= MIN_LENGTH));
    }
}
