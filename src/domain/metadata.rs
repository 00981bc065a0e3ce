//! `metadata`: custom key-value pairs, bounded so one user cannot bloat the store.

use serde_json::{Map, Value};

use super::FieldError;

/// The bounds on metadata, which the spec and the 422 message state too.
#[derive(Debug, Clone, Copy)]
pub struct MetadataLimits {
    /// Most keys.
    pub max_keys: usize,
    /// Most characters of a key (and at least one).
    pub max_key_chars: usize,
    /// Most characters of a string value, or of the JSON text of any other value.
    pub max_value_chars: usize,
    /// Most bytes of the whole object as compact JSON.
    pub max_total_bytes: usize,
}

/// The contract's bounds.
pub const METADATA_LIMITS: MetadataLimits =
    MetadataLimits { max_keys: 50, max_key_chars: 40, max_value_chars: 500, max_total_bytes: 8192 };

/// A metadata object within [`METADATA_LIMITS`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata(Map<String, Value>);

impl Metadata {
    /// Checks every bound and reports each breach, naming the key (`metadata.<key>`).
    pub fn parse(field: &str, object: Map<String, Value>) -> Result<Self, Vec<FieldError>> {
        let limits = METADATA_LIMITS;
        let mut errors = Vec::new();
        if object.len() > limits.max_keys {
            errors.push(FieldError::new(field, "too_many_keys", format!("must have at most {} keys", limits.max_keys)));
        }
        for (key, value) in &object {
            let key_chars = key.chars().count();
            if key_chars == 0 || key_chars > limits.max_key_chars {
                errors.push(FieldError::new(
                    format!("{field}.{}", shorten(key)),
                    "invalid_key",
                    format!("keys must be 1 to {} characters", limits.max_key_chars),
                ));
                continue;
            }
            if key.contains('\0') || contains_nul(value) {
                // PostgreSQL's jsonb cannot hold U+0000; refusing it on every backend keeps them alike.
                errors.push(FieldError::new(
                    format!("{field}.{}", shorten(key)),
                    "invalid_format",
                    "must not contain the NUL character (U+0000)",
                ));
                continue;
            }
            if inexact_number(value) {
                // Without arbitrary precision, JSON numbers are read as doubles: a larger
                // integer would be stored rounded. Refused rather than changed.
                errors.push(FieldError::new(
                    format!("{field}.{}", shorten(key)),
                    "inexact_number",
                    "numbers must be exact: integers within 64 bits, other numbers below 2^53 in size",
                ));
                continue;
            }
            let value_chars = match value {
                Value::String(text) => text.chars().count(),
                other => other.to_string().chars().count(),
            };
            if value_chars > limits.max_value_chars {
                errors.push(FieldError::new(
                    format!("{field}.{key}"),
                    "too_long",
                    format!(
                        "values must be at most {} characters (a non-string value: its JSON text)",
                        limits.max_value_chars
                    ),
                ));
            }
        }
        if errors.is_empty() {
            let total = Value::Object(object.clone()).to_string().len();
            if total > limits.max_total_bytes {
                errors.push(FieldError::new(
                    field,
                    "too_large",
                    format!("must be at most {} bytes as JSON", limits.max_total_bytes),
                ));
            }
        }
        if errors.is_empty() { Ok(Self(object)) } else { Err(errors) }
    }

    /// The object.
    pub fn into_inner(self) -> Map<String, Value> {
        self.0
    }

    /// The object, borrowed.
    pub fn as_map(&self) -> &Map<String, Value> {
        &self.0
    }
}

/// A number read as a double of 2^53 or more in size: not exactly what was sent.
fn inexact_number(value: &Value) -> bool {
    const EXACT: f64 = 9_007_199_254_740_992.0;
    match value {
        Value::Number(number) => number.is_f64() && number.as_f64().is_some_and(|n| n.abs() >= EXACT),
        Value::Array(items) => items.iter().any(inexact_number),
        Value::Object(map) => map.values().any(inexact_number),
        _ => false,
    }
}

fn contains_nul(value: &Value) -> bool {
    match value {
        Value::String(text) => text.contains('\0'),
        Value::Array(items) => items.iter().any(contains_nul),
        Value::Object(map) => map.iter().any(|(key, value)| key.contains('\0') || contains_nul(value)),
        _ => false,
    }
}

/// An over-long key is named in the error by its first characters only, to keep errors small.
fn shorten(key: &str) -> String {
    key.chars().take(60).collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse(value: Value) -> Result<Metadata, Vec<FieldError>> {
        Metadata::parse("metadata", value.as_object().unwrap().clone())
    }

    #[test]
    fn accepts_values_of_every_json_type_within_bounds() {
        assert!(parse(json!({"a": "x", "b": 1, "c": true, "d": null, "e": [1], "f": {"g": 1}})).is_ok());
    }

    #[test]
    fn names_each_breach() {
        let many: Map<String, Value> = (0..51).map(|i| (format!("k{i}"), json!(i))).collect();
        assert_eq!(Metadata::parse("metadata", many).unwrap_err()[0].rule, "too_many_keys");

        let errors =
            parse(json!({"": 1, "k".repeat(41): 1, "long": "v".repeat(501), "nested": {"x": "v".repeat(500)}}))
                .unwrap_err();
        let fields: Vec<_> = errors.iter().map(|e| (e.field.as_str(), e.rule)).collect();
        assert!(fields.contains(&("metadata.", "invalid_key")), "{fields:?}");
        assert!(fields.contains(&("metadata.long", "too_long")), "{fields:?}");
        assert!(fields.contains(&("metadata.nested", "too_long")), "{fields:?}");
        assert_eq!(errors.len(), 4, "{fields:?}");

        let nul = parse(json!({"a": "x\u{0}y", "b\u{0}": 1, "c": {"d": ["\u{0}"]}, "ok": "fine"})).unwrap_err();
        let fields: Vec<_> = nul.iter().map(|e| (e.field.as_str(), e.rule)).collect();
        assert_eq!(
            fields,
            [("metadata.a", "invalid_format"), ("metadata.b\u{0}", "invalid_format"), ("metadata.c", "invalid_format")]
        );

        let big: Value = serde_json::from_str(
            r#"{"n": 123456789012345678901234567890, "m": [1e300], "i": 9223372036854775807, "f": 0.5}"#,
        )
        .unwrap();
        let fields: Vec<_> = parse(big).unwrap_err().iter().map(|e| (e.field.clone(), e.rule)).collect();
        assert_eq!(fields, [("metadata.n".to_owned(), "inexact_number"), ("metadata.m".to_owned(), "inexact_number")]);

        // 500 characters is the bound, counted in characters, not bytes.
        assert!(parse(json!({"k": "é".repeat(500)})).is_ok());

        // Within every per-key bound, yet over 8 KiB in all.
        let big: Map<String, Value> = (0..20).map(|i| (format!("k{i}"), json!("v".repeat(450)))).collect();
        assert_eq!(Metadata::parse("metadata", big).unwrap_err()[0].rule, "too_large");
    }
}
