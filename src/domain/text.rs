//! Bounded, trimmed text: names and caller-chosen ids.

/// Length bounds of a text field, in Unicode scalar values (what Rust calls `char`s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextRule {
    /// Fewest characters after trimming.
    pub min: usize,
    /// Most characters after trimming.
    pub max: usize,
}

impl TextRule {
    /// `firstName` and `lastName`.
    pub const PERSON_NAME: TextRule = TextRule { min: 1, max: 100 };
    /// `name`.
    pub const FULL_NAME: TextRule = TextRule { min: 1, max: 200 };
    /// `userId`.
    pub const USER_ID: TextRule = TextRule { min: 1, max: 128 };
}

/// Text that is trimmed, not blank, free of control characters and within its rule's bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundedText(String);

impl BoundedText {
    /// Trims `raw` and checks it against `rule`.
    pub fn parse(raw: &str, rule: TextRule) -> Result<Self, (&'static str, String)> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(("blank", "must not be blank".to_owned()));
        }
        if trimmed.chars().any(char::is_control) {
            return Err(("invalid_format", "must not contain control characters".to_owned()));
        }
        let length = trimmed.chars().count();
        if length < rule.min {
            return Err(("too_short", format!("must be at least {} characters", rule.min)));
        }
        if length > rule.max {
            return Err(("too_long", format!("must be at most {} characters", rule.max)));
        }
        Ok(Self(trimmed.to_owned()))
    }

    /// The trimmed text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The trimmed text, owned.
    pub fn into_string(self) -> String {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_characters_not_bytes() {
        // 100 three-byte characters are 300 bytes but within a 100-character bound.
        let name = "語".repeat(100);
        assert!(BoundedText::parse(&name, TextRule::PERSON_NAME).is_ok());
        let too_long = "語".repeat(101);
        assert_eq!(BoundedText::parse(&too_long, TextRule::PERSON_NAME).unwrap_err().0, "too_long");
        // An astral character is one scalar value, though two UTF-16 units.
        assert!(BoundedText::parse(&"😀".repeat(100), TextRule::PERSON_NAME).is_ok());
    }

    #[test]
    fn trims_and_refuses_blank_or_control_characters() {
        assert_eq!(BoundedText::parse("  Ada ", TextRule::FULL_NAME).unwrap().as_str(), "Ada");
        assert_eq!(BoundedText::parse(" \t\n", TextRule::FULL_NAME).unwrap_err().0, "blank");
        assert_eq!(BoundedText::parse("a\u{0}b", TextRule::FULL_NAME).unwrap_err().0, "invalid_format");
    }
}
