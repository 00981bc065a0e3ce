//! An email address as the contract defines one.

/// Fewest characters of a whole address.
const MIN_LENGTH: usize = 3;
/// Most characters of a whole address (RFC 5321's path limit less the angle brackets).
const MAX_LENGTH: usize = 254;
/// Most characters of the local part (RFC 5321).
const MAX_LOCAL_LENGTH: usize = 64;

/// A trimmed email address: one `@`, a local part of 1 to 64 characters, a domain with a dot and
/// no spaces, 3 to 254 characters in all. Kept as given; `key()` is the lower-cased form that
/// uniqueness is decided on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email {
    given: String,
    key: String,
}

impl Email {
    /// Parses `raw`, trimming it first.
    pub fn parse(raw: &str) -> Result<Self, (&'static str, String)> {
        let given = raw.trim();
        if given.is_empty() {
            return Err(("blank", "must not be blank".to_owned()));
        }
        let length = given.chars().count();
        if length < MIN_LENGTH {
            return Err(("too_short", format!("must be at least {MIN_LENGTH} characters")));
        }
        if length > MAX_LENGTH {
            return Err(("too_long", format!("must be at most {MAX_LENGTH} characters")));
        }
        let invalid = || ("invalid_format", "must be an email address".to_owned());
        if given.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid());
        }
        let Some((local, domain)) = given.split_once('@') else { return Err(invalid()) };
        if domain.contains('@') || local.is_empty() {
            return Err(invalid());
        }
        if local.chars().count() > MAX_LOCAL_LENGTH {
            return Err(("too_long", format!("the part before @ must be at most {MAX_LOCAL_LENGTH} characters")));
        }
        // A domain needs a dot between non-empty labels: `a@b.c`, not `a@b`, `a@.b` or `a@b..c`.
        if !domain.contains('.') || domain.split('.').any(str::is_empty) {
            return Err(invalid());
        }
        Ok(Self { given: given.to_owned(), key: given.to_lowercase() })
    }

    /// The address as given, trimmed.
    pub fn as_str(&self) -> &str {
        &self.given
    }

    /// The lower-cased address, which carries the unique index.
    pub fn key(&self) -> &str {
        &self.key
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_keeps_case_while_keying_lower_case() {
        let email = Email::parse("  Foo.Bar@Example.COM ").unwrap();
        assert_eq!(email.as_str(), "Foo.Bar@Example.COM");
        assert_eq!(email.key(), "foo.bar@example.com");
    }

    #[test]
    fn refuses_each_malformed_shape_with_its_rule() {
        let cases = [
            ("", "blank", "empty"),
            ("   ", "blank", "spaces only"),
            ("a@", "too_short", "two characters"),
            ("plainaddress", "invalid_format", "no @"),
            ("a@b@c.com", "invalid_format", "two @"),
            ("@example.com", "invalid_format", "empty local part"),
            ("a@example", "invalid_format", "domain without a dot"),
            ("a@.example.com", "invalid_format", "domain starting with a dot"),
            ("a@example.com.", "invalid_format", "domain ending with a dot"),
            ("a@exa mple.com", "invalid_format", "space in the domain"),
            ("a b@example.com", "invalid_format", "space in the local part"),
            ("a\u{0}@example.com", "invalid_format", "NUL byte"),
        ];
        for (raw, rule, why) in cases {
            assert_eq!(Email::parse(raw).map(|_| ()).unwrap_err().0, rule, "{why}: {raw:?}");
        }
        let long_local = format!("{}@example.com", "a".repeat(65));
        assert_eq!(Email::parse(&long_local).unwrap_err().0, "too_long");
        let long = format!("a@{}.com", "b".repeat(250));
        assert_eq!(Email::parse(&long).unwrap_err().0, "too_long");
        let at_limit = format!("{}@{}.com", "a".repeat(64), "b".repeat(254 - 64 - 5));
        assert_eq!(at_limit.len(), 254);
        assert!(Email::parse(&at_limit).is_ok());
    }
}
