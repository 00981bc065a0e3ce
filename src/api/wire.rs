//! Scalar wire types. Each one's schema states the contract's constraints (`minLength`,
//! `maxLength`, `format`, `enum`), yet each accepts any value of its JSON type: the rules are the
//! domain's to enforce, answering 422 with every failing field, where poem-openapi's validators
//! would answer a parse-time 400 naming none. A value of another JSON type is refused (poem's
//! `String` would turn `5` into `"5"`).

use std::{borrow::Cow, fmt};

use poem_openapi::{
    registry::{MetaSchema, MetaSchemaRef},
    types::{ParseError, ParseFromJSON, ParseResult, ToJSON, Type},
};
use serde_json::{Map, Value};

use crate::domain::{METADATA_LIMITS, Role};

/// Implements poem-openapi's type traits for a newtype over `$inner`, with a fixed schema.
macro_rules! wire_type {
    ($name:ident($inner:ty), $json:ident, $schema:expr) => {
        impl Type for $name {
            const IS_REQUIRED: bool = true;
            type RawValueType = Self;
            type RawElementValueType = Self;

            fn name() -> Cow<'static, str> {
                stringify!($name).into()
            }

            fn schema_ref() -> MetaSchemaRef {
                MetaSchemaRef::Inline(Box::new($schema))
            }

            fn as_raw_value(&self) -> Option<&Self> {
                Some(self)
            }

            fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a Self> + 'a> {
                Box::new(std::iter::once(self))
            }
        }

        impl ParseFromJSON for $name {
            fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
                match value {
                    Some(Value::$json(inner)) => Ok(Self(inner)),
                    other => Err(ParseError::expected_type(other.unwrap_or_default())),
                }
            }
        }

        impl ToJSON for $name {
            fn to_json(&self) -> Option<Value> {
                Some(Value::$json(self.0.clone()))
            }
        }
    };
}

fn string_schema(min: usize, max: usize, format: Option<&'static str>) -> MetaSchema {
    MetaSchema { min_length: Some(min), max_length: Some(max), format, ..MetaSchema::new("string") }
}

/// What the text rules accept, said as a pattern so that clients and fuzzers can know it: no
/// control characters (Unicode category Cc), and at least one character that is not white space.
const TEXT_PATTERN: &str = r"^[^\x00-\x1F\x7F-\x9F]*[^\s\x00-\x1F\x7F-\x9F][^\x00-\x1F\x7F-\x9F]*$";

/// A bounded text field: its lengths and [`TEXT_PATTERN`].
fn text_schema(min: usize, max: usize) -> MetaSchema {
    MetaSchema { pattern: Some(TEXT_PATTERN.to_owned()), ..string_schema(min, max, None) }
}

/// An email address: trimmed, one `@`, a local part of at most 64 characters, a domain with a dot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailText(pub String);
wire_type!(EmailText(String), String, string_schema(3, 254, Some("email")));

/// `firstName` or `lastName`: 1 to 100 characters after trimming.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersonNameText(pub String);
wire_type!(PersonNameText(String), String, text_schema(1, 100));

/// `name`: 1 to 200 characters after trimming.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FullNameText(pub String);
wire_type!(FullNameText(String), String, text_schema(1, 200));

/// `userId`: 1 to 128 characters after trimming.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserIdText(pub String);
wire_type!(UserIdText(String), String, text_schema(1, 128));

/// A password: 8 to 128 characters. Write-only in the schema; `Debug` is redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordText(pub String);
wire_type!(PasswordText(String), String, MetaSchema { write_only: true, ..string_schema(8, 128, Some("password")) });

impl fmt::Debug for PasswordText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PasswordText(<redacted>)")
    }
}

/// A role: `user` or `admin`. A string outside the list is a 422, not a 400.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleText(pub String);
wire_type!(
    RoleText(String),
    String,
    MetaSchema {
        enum_items: Role::NAMES.iter().map(|name| Value::from(*name)).collect(),
        default: Some(Value::from(Role::User.as_str())),
        ..MetaSchema::new("string")
    }
);

/// An RFC 3339 UTC timestamp, to the millisecond.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timestamp(pub String);
wire_type!(Timestamp(String), String, MetaSchema { format: Some("date-time"), ..MetaSchema::new("string") });

impl From<chrono::DateTime<chrono::Utc>> for Timestamp {
    fn from(at: chrono::DateTime<chrono::Utc>) -> Self {
        Self(at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
    }
}

/// Custom key-value pairs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataObject(pub Map<String, Value>);
wire_type!(
    MetadataObject(Map<String, Value>),
    Object,
    MetaSchema {
        max_properties: Some(METADATA_LIMITS.max_keys),
        additional_properties: Some(Box::new(MetaSchemaRef::Inline(Box::new(MetaSchema::ANY)))),
        ..MetaSchema::new("object")
    }
);
