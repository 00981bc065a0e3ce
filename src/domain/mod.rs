//! Domain types: each parses raw input into a value that holds the contract's rules, so that
//! holding one is proof it is valid. They know nothing of HTTP; the API module converts.

mod email;
mod metadata;
mod new_user;
mod password;
mod text;

pub use email::Email;
pub use metadata::{METADATA_LIMITS, Metadata};
pub use new_user::{NewUser, Origin, Role, User};
pub use password::{Password, PasswordHash};
pub use text::{BoundedText, TextRule};

/// One field's rule broken: the field as the caller named it, a stable rule code, and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field as named in the request body.
    pub field: String,
    /// A stable snake_case code for the rule, such as `too_long`.
    pub rule: &'static str,
    /// What is wrong, for people. Never contains the value itself (it may be a secret).
    pub message: String,
}

impl FieldError {
    /// A field error.
    pub fn new(field: impl Into<String>, rule: &'static str, message: impl Into<String>) -> Self {
        Self { field: field.into(), rule, message: message.into() }
    }
}

/// Collects every broken rule of a request, so that one answer lists them all.
#[derive(Debug, Default)]
pub struct Violations(Vec<FieldError>);

impl Violations {
    /// Keeps the value when it parsed; records the error under `field` when not.
    pub fn check<T>(&mut self, field: &str, parsed: Result<T, (&'static str, String)>) -> Option<T> {
        match parsed {
            Ok(value) => Some(value),
            Err((rule, message)) => {
                self.0.push(FieldError::new(field, rule, message));
                None
            }
        }
    }

    /// Records an error directly.
    pub fn push(&mut self, error: FieldError) {
        self.0.push(error);
    }

    /// `Ok` when nothing was recorded, else every error.
    pub fn finish(self) -> Result<(), Vec<FieldError>> {
        if self.0.is_empty() { Ok(()) } else { Err(self.0) }
    }
}
