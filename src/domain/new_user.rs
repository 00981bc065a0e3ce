//! A user to create, and a user as stored.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::{BoundedText, Email, Metadata, Password};

/// Which documented contract created a user; each shows the user in its own shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Seed 000: `POST /users` with `email`, `userId`, `name`, `metadata`.
    Linked,
    /// Seed 001: `POST /users` with `firstName`, `lastName`, `contactEmail`.
    Contact,
    /// Seed 003: `POST /users` with `firstName`, `lastName`, `email`.
    Person,
    /// Seed 002: `POST /v1/users` with `email`, `name`, `role`, `metadata`.
    Member,
    /// Seed 004: `POST /v1/users` with `email`, `password`, `name`.
    SignUp,
}

impl Origin {
    /// The stored form.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Linked => "linked",
            Self::Contact => "contact",
            Self::Person => "person",
            Self::Member => "member",
            Self::SignUp => "signup",
        }
    }

    /// Reads the stored form back.
    pub fn from_stored(stored: &str) -> Option<Self> {
        [Self::Linked, Self::Contact, Self::Person, Self::Member, Self::SignUp]
            .into_iter()
            .find(|origin| origin.as_str() == stored)
    }
}

/// A user's role (seed 002).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Role {
    /// The default.
    #[default]
    User,
    /// An administrator.
    Admin,
}

impl Role {
    /// Every role, as the spec's enum lists them.
    pub const NAMES: [&'static str; 2] = ["user", "admin"];

    /// Parses the wire form; anything else is a rule broken (422), not a malformed body.
    pub fn parse(raw: &str) -> Result<Self, (&'static str, String)> {
        match raw {
            "user" => Ok(Self::User),
            "admin" => Ok(Self::Admin),
            _ => Err(("not_allowed", "must be one of: user, admin".to_owned())),
        }
    }

    /// The wire and stored form.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Admin => "admin",
        }
    }
}

/// A user to create: every value already parsed, so holding one means it is valid.
#[derive(Debug, Clone)]
pub struct NewUser {
    /// The contract it came through.
    pub origin: Origin,
    /// The email.
    pub email: Email,
    /// The caller's own id for the user; the service makes one when absent.
    pub user_id: Option<BoundedText>,
    /// First name (Contact, Person).
    pub first_name: Option<BoundedText>,
    /// Last name (Contact, Person).
    pub last_name: Option<BoundedText>,
    /// Full name (Linked, Member, SignUp).
    pub name: Option<BoundedText>,
    /// Role (Member; `user` elsewhere).
    pub role: Role,
    /// Custom key-value pairs (Linked, Member).
    pub metadata: Option<Metadata>,
    /// The password (SignUp), hashed before it is stored.
    pub password: Option<Password>,
}

impl NewUser {
    /// A user with only an email; the variants fill in the rest.
    pub fn new(origin: Origin, email: Email) -> Self {
        Self {
            origin,
            email,
            user_id: None,
            first_name: None,
            last_name: None,
            name: None,
            role: Role::User,
            metadata: None,
            password: None,
        }
    }
}

/// A stored user, in the domain's terms.
#[derive(Debug, Clone, PartialEq)]
pub struct User {
    /// The integer id from the sequence.
    pub id: i64,
    /// The UUIDv7.
    pub uuid: Uuid,
    /// The caller's own id, or the hyphenated UUID.
    pub user_id: String,
    /// `<created_at ms>_<5 random letters and digits>`.
    pub klaim_id: String,
    /// The email as given, trimmed.
    pub email: String,
    /// First name.
    pub first_name: Option<String>,
    /// Last name.
    pub last_name: Option<String>,
    /// Full name.
    pub name: Option<String>,
    /// Role.
    pub role: Role,
    /// Account status: `active`.
    pub status: String,
    /// Custom key-value pairs.
    pub metadata: Option<Map<String, Value>>,
    /// Credits, 0 at creation.
    pub credit_balance: i64,
    /// The contract it came through.
    pub origin: Origin,
    /// Created, to the millisecond.
    pub created_at: DateTime<Utc>,
    /// Last updated, to the millisecond.
    pub updated_at: DateTime<Utc>,
}
