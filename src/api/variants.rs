//! The five documented create-user contracts, each as a request type and a 201 body type. Their
//! names become class names in every generated SDK, so each says what it is.

use poem_openapi::{Object, Union, types::Example};
use serde_json::json;

use super::{
    body::wire_objects,
    wire::{EmailText, FullNameText, MetadataObject, PasswordText, PersonNameText, RoleText, Timestamp, UserIdText},
};
use crate::domain::{
    BoundedText, Email, FieldError, Metadata, NewUser, Origin, Password, Role, TextRule, User, Violations,
};

// ---------------------------------------------------------------------------------------------
// Requests

/// A user registered under the caller's own id (seed 000, "Add user"): `email`, and optionally
/// `userId`, `name` and `metadata`.
#[derive(Object, Debug, Clone)]
#[oai(rename = "NewUserWithExternalId", deny_unknown_fields, example)]
pub struct NewUserWithExternalId {
    /// The user's email address; unique, compared case-insensitively.
    pub email: EmailText,
    /// The caller's own identifier for the user; unique. A system-generated id is used when absent.
    #[oai(rename = "userId")]
    pub user_id: Option<UserIdText>,
    /// The user's name.
    pub name: Option<FullNameText>,
    /// Custom key-value pairs stored in the user's profile: at most 50 keys, each key 1 to 40
    /// characters, each string value at most 500 characters (any other value: its JSON text at
    /// most 500 characters), 8 KiB in all; no U+0000 anywhere; numbers exact (integers within
    /// 64 bits, other numbers below 2^53 in size).
    pub metadata: Option<MetadataObject>,
}

/// A user given by first name, last name and contact email (seed 001, "Create a user").
#[derive(Object, Debug, Clone)]
#[oai(rename = "NewContactUser", deny_unknown_fields, example)]
pub struct NewContactUser {
    /// The user's first name.
    #[oai(rename = "firstName")]
    pub first_name: PersonNameText,
    /// The user's last name.
    #[oai(rename = "lastName")]
    pub last_name: PersonNameText,
    /// The user's email address; unique, compared case-insensitively.
    #[oai(rename = "contactEmail")]
    pub contact_email: EmailText,
}

/// A user given by first name, last name and email (seed 003, "POST a user").
#[derive(Object, Debug, Clone)]
#[oai(rename = "NewPersonUser", deny_unknown_fields, example)]
pub struct NewPersonUser {
    /// The user's last name.
    #[oai(rename = "lastName")]
    pub last_name: PersonNameText,
    /// The user's first name.
    #[oai(rename = "firstName")]
    pub first_name: PersonNameText,
    /// The user's email address; unique, compared case-insensitively.
    pub email: EmailText,
}

/// A member account created by an operator (seed 002, "Create User"): `email`, `name`, and
/// optionally `role` and `metadata`. Needs an API key.
#[derive(Object, Debug, Clone)]
#[oai(rename = "NewUserByOperator", deny_unknown_fields, example)]
pub struct NewUserByOperator {
    /// The user's email address; unique, compared case-insensitively.
    pub email: EmailText,
    /// The user's full name.
    pub name: FullNameText,
    /// The user's role; `user` when absent.
    pub role: Option<RoleText>,
    /// Additional user metadata: at most 50 keys, each key 1 to 40 characters, each string value
    /// at most 500 characters (any other value: its JSON text at most 500 characters), 8 KiB in
    /// all; no U+0000 anywhere; numbers exact (integers within 64 bits, other numbers below 2^53).
    pub metadata: Option<MetadataObject>,
}

/// A self-service signup (seed 004, "Create a new user"): `email`, `password`, and optionally
/// `name`. Needs no API key while public signup is on; with a key, it is an admin-created account.
#[derive(Object, Debug, Clone)]
#[oai(rename = "NewSignUpUser", deny_unknown_fields, example)]
pub struct NewSignUpUser {
    /// The user's unique email address; compared case-insensitively.
    pub email: EmailText,
    /// A password of 8 to 128 characters, not the email and not a common password. Stored only
    /// as an Argon2id hash; never returned.
    pub password: PasswordText,
    /// The user's full name.
    pub name: Option<FullNameText>,
}

wire_objects!(NewUserWithExternalId, NewContactUser, NewPersonUser, NewUserByOperator, NewSignUpUser);

/// The body of `POST /users`: one of three shapes, told apart by their keys. A body with
/// `contactEmail` is a `NewContactUser`; else one with `firstName` or `lastName` is a
/// `NewPersonUser`; else a `NewUserWithExternalId`.
#[derive(Union, Debug, Clone)]
#[oai(rename = "CreateUserBody", one_of)]
pub enum CreateUserBody {
    /// Seed 001.
    Contact(NewContactUser),
    /// Seed 003.
    Person(NewPersonUser),
    /// Seed 000.
    Linked(NewUserWithExternalId),
}

/// The body of `POST /v1/users`: a body with `password` is a `NewSignUpUser`, else a `NewUserByOperator`.
#[derive(Union, Debug, Clone)]
#[oai(rename = "CreateUserV1Body", one_of)]
pub enum CreateUserV1Body {
    /// Seed 004.
    SignUp(NewSignUpUser),
    /// Seed 002.
    Member(NewUserByOperator),
}

fn email(violations: &mut Violations, field: &str, text: &EmailText) -> Option<Email> {
    violations.check(field, Email::parse(&text.0))
}

fn text(violations: &mut Violations, field: &str, raw: &str, rule: TextRule) -> Option<BoundedText> {
    violations.check(field, BoundedText::parse(raw, rule))
}

fn metadata(violations: &mut Violations, raw: Option<MetadataObject>) -> Option<Metadata> {
    match Metadata::parse("metadata", raw?.0) {
        Ok(metadata) => Some(metadata),
        Err(errors) => {
            errors.into_iter().for_each(|error| violations.push(error));
            None
        }
    }
}

/// `Some` only when nothing was recorded; the `unwrap`s in the conversions below rely on it:
/// every `None` they could meet has recorded a violation.
fn finish<T>(violations: Violations, build: impl FnOnce() -> T) -> Result<T, Vec<FieldError>> {
    violations.finish().map(|()| build())
}

impl TryFrom<NewUserWithExternalId> for NewUser {
    type Error = Vec<FieldError>;

    fn try_from(wire: NewUserWithExternalId) -> Result<Self, Self::Error> {
        let mut v = Violations::default();
        let email = email(&mut v, "email", &wire.email);
        let user_id = wire.user_id.map(|id| text(&mut v, "userId", &id.0, TextRule::USER_ID));
        let name = wire.name.map(|name| text(&mut v, "name", &name.0, TextRule::FULL_NAME));
        let metadata = metadata(&mut v, wire.metadata);
        finish(v, || NewUser {
            user_id: user_id.flatten(),
            name: name.flatten(),
            metadata,
            ..NewUser::new(Origin::Linked, email.unwrap())
        })
    }
}

impl TryFrom<NewContactUser> for NewUser {
    type Error = Vec<FieldError>;

    fn try_from(wire: NewContactUser) -> Result<Self, Self::Error> {
        let mut v = Violations::default();
        let first_name = text(&mut v, "firstName", &wire.first_name.0, TextRule::PERSON_NAME);
        let last_name = text(&mut v, "lastName", &wire.last_name.0, TextRule::PERSON_NAME);
        let email = email(&mut v, "contactEmail", &wire.contact_email);
        finish(v, || NewUser { first_name, last_name, ..NewUser::new(Origin::Contact, email.unwrap()) })
    }
}

impl TryFrom<NewPersonUser> for NewUser {
    type Error = Vec<FieldError>;

    fn try_from(wire: NewPersonUser) -> Result<Self, Self::Error> {
        let mut v = Violations::default();
        let last_name = text(&mut v, "lastName", &wire.last_name.0, TextRule::PERSON_NAME);
        let first_name = text(&mut v, "firstName", &wire.first_name.0, TextRule::PERSON_NAME);
        let email = email(&mut v, "email", &wire.email);
        finish(v, || NewUser { first_name, last_name, ..NewUser::new(Origin::Person, email.unwrap()) })
    }
}

impl TryFrom<NewUserByOperator> for NewUser {
    type Error = Vec<FieldError>;

    fn try_from(wire: NewUserByOperator) -> Result<Self, Self::Error> {
        let mut v = Violations::default();
        let email = email(&mut v, "email", &wire.email);
        let name = text(&mut v, "name", &wire.name.0, TextRule::FULL_NAME);
        let role = match wire.role {
            Some(role) => v.check("role", Role::parse(&role.0)),
            None => Some(Role::User),
        };
        let metadata = metadata(&mut v, wire.metadata);
        finish(v, || NewUser { name, role: role.unwrap(), metadata, ..NewUser::new(Origin::Member, email.unwrap()) })
    }
}

impl TryFrom<NewSignUpUser> for NewUser {
    type Error = Vec<FieldError>;

    fn try_from(wire: NewSignUpUser) -> Result<Self, Self::Error> {
        let mut v = Violations::default();
        let email = email(&mut v, "email", &wire.email);
        let password = v.check("password", Password::parse(&wire.password.0, email.as_ref()));
        let name = wire.name.map(|name| text(&mut v, "name", &name.0, TextRule::FULL_NAME));
        finish(v, || NewUser { name: name.flatten(), password, ..NewUser::new(Origin::SignUp, email.unwrap()) })
    }
}

// ---------------------------------------------------------------------------------------------
// 201 bodies. Each holds exactly the fields its seed documents, and each is told apart from the
// others of its operation by its required fields, so that generated clients read the right one.

/// The user created by `NewUserWithExternalId` (seed 000).
#[derive(Object, Debug, Clone, PartialEq)]
#[oai(rename = "LinkedUser", example)]
pub struct LinkedUser {
    /// Always `resource created successfully`.
    pub message: String,
    /// The caller's id for the user, or the system-generated one.
    pub user_id: String,
    /// `<created_at>_<5 random letters and digits>`, unique.
    pub klaim_id: String,
    /// The email as given, trimmed.
    pub email: String,
    /// Credits; 0 for a new user.
    pub credit_balance: i64,
    /// Creation time in milliseconds since the Unix epoch.
    pub created_at: i64,
    /// The name, or `null`.
    pub name: Option<String>,
    /// The metadata, or `null`.
    pub metadata: Option<MetadataObject>,
}

/// The user created by `NewContactUser` (seed 001).
#[derive(Object, Debug, Clone, PartialEq)]
#[oai(rename = "ContactUser", example)]
pub struct ContactUser {
    /// The user's integer id.
    #[oai(rename = "userId")]
    pub user_id: i64,
    /// First name, trimmed.
    #[oai(rename = "firstName")]
    pub first_name: String,
    /// Last name, trimmed.
    #[oai(rename = "lastName")]
    pub last_name: String,
    /// The email as given, trimmed.
    #[oai(rename = "contactEmail")]
    pub contact_email: String,
}

/// The user created by `NewPersonUser` (seed 003).
#[derive(Object, Debug, Clone, PartialEq)]
#[oai(rename = "PersonUser", example)]
pub struct PersonUser {
    /// Last name, trimmed.
    #[oai(rename = "lastName")]
    pub last_name: String,
    /// First name, trimmed.
    #[oai(rename = "firstName")]
    pub first_name: String,
    /// The email as given, trimmed.
    pub email: String,
    /// The user's integer id.
    pub id: i64,
}

/// The user created by `NewUserByOperator` (seed 002).
#[derive(Object, Debug, Clone, PartialEq)]
#[oai(rename = "MemberUser", example)]
pub struct MemberUser {
    /// `usr_` followed by the user's UUID (32 hex digits).
    pub id: String,
    /// The email as given, trimmed.
    pub email: String,
    /// The full name, trimmed.
    pub name: String,
    /// `user` or `admin`.
    pub role: RoleText,
    /// The metadata, or `null`.
    pub metadata: Option<MetadataObject>,
    /// Creation time, RFC 3339 UTC.
    pub created_at: Timestamp,
    /// Last update time, RFC 3339 UTC.
    pub updated_at: Timestamp,
}

/// The user created by `NewSignUpUser` (seed 004).
#[derive(Object, Debug, Clone, PartialEq)]
#[oai(rename = "SignUpUser", example)]
pub struct SignUpUser {
    /// `user_` followed by the user's UUID (32 hex digits).
    pub id: String,
    /// The email as given, trimmed.
    pub email: String,
    /// The full name, or `null`.
    pub name: Option<String>,
    /// Account status: `active` after creation.
    pub status: String,
    /// Creation time, RFC 3339 UTC.
    pub created_at: Timestamp,
    /// Last update time, RFC 3339 UTC.
    pub updated_at: Timestamp,
}

/// A user created through `POST /users`, in the shape of the body that created it.
#[derive(Union, Debug, Clone, PartialEq)]
#[oai(rename = "CreatedUser", one_of)]
pub enum CreatedUser {
    /// Answer to `NewContactUser`.
    Contact(ContactUser),
    /// Answer to `NewPersonUser`.
    Person(PersonUser),
    /// Answer to `NewUserWithExternalId`.
    Linked(LinkedUser),
}

/// A user created through `POST /v1/users`, in the shape of the body that created it.
#[derive(Union, Debug, Clone, PartialEq)]
#[oai(rename = "CreatedUserV1", one_of)]
pub enum CreatedUserV1 {
    /// Answer to `NewSignUpUser`.
    SignUp(SignUpUser),
    /// Answer to `NewUserByOperator`.
    Member(MemberUser),
}

/// Prefix of a Member's public id.
pub const MEMBER_ID_PREFIX: &str = "usr_";
/// Prefix of a SignUp user's public id.
pub const SIGNUP_ID_PREFIX: &str = "user_";

impl From<User> for CreatedUser {
    fn from(user: User) -> Self {
        match user.origin {
            Origin::Contact => Self::Contact(ContactUser {
                user_id: user.id,
                first_name: user.first_name.unwrap_or_default(),
                last_name: user.last_name.unwrap_or_default(),
                contact_email: user.email,
            }),
            Origin::Person => Self::Person(PersonUser {
                last_name: user.last_name.unwrap_or_default(),
                first_name: user.first_name.unwrap_or_default(),
                email: user.email,
                id: user.id,
            }),
            _ => Self::Linked(LinkedUser {
                message: "resource created successfully".to_owned(),
                user_id: user.user_id,
                klaim_id: user.klaim_id,
                email: user.email,
                credit_balance: user.credit_balance,
                created_at: user.created_at.timestamp_millis(),
                name: user.name,
                metadata: user.metadata.map(MetadataObject),
            }),
        }
    }
}

impl From<User> for CreatedUserV1 {
    fn from(user: User) -> Self {
        match user.origin {
            Origin::SignUp => Self::SignUp(SignUpUser {
                id: format!("{SIGNUP_ID_PREFIX}{}", user.uuid.simple()),
                email: user.email,
                name: user.name,
                status: user.status,
                created_at: user.created_at.into(),
                updated_at: user.updated_at.into(),
            }),
            _ => Self::Member(MemberUser {
                id: format!("{MEMBER_ID_PREFIX}{}", user.uuid.simple()),
                email: user.email,
                name: user.name.unwrap_or_default(),
                role: RoleText(user.role.as_str().to_owned()),
                metadata: user.metadata.map(MetadataObject),
                created_at: user.created_at.into(),
                updated_at: user.updated_at.into(),
            }),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Examples: each seed's own example, shown in Swagger UI and used by "Try it out".

fn object(value: serde_json::Value) -> MetadataObject {
    MetadataObject(value.as_object().cloned().unwrap_or_default())
}

impl Example for NewUserWithExternalId {
    fn example() -> Self {
        Self {
            email: EmailText("test@email.com".into()),
            user_id: Some(UserIdText("testUserId".into())),
            name: Some(FullNameText("Test API".into())),
            metadata: Some(object(json!({"test": "field"}))),
        }
    }
}

impl Example for NewContactUser {
    fn example() -> Self {
        Self {
            first_name: PersonNameText("John".into()),
            last_name: PersonNameText("Doe".into()),
            contact_email: EmailText("john.doe@example.com".into()),
        }
    }
}

impl Example for NewPersonUser {
    fn example() -> Self {
        Self {
            last_name: PersonNameText("Meere".into()),
            first_name: PersonNameText("John".into()),
            email: EmailText("johnm@gmail.com".into()),
        }
    }
}

impl Example for NewUserByOperator {
    fn example() -> Self {
        Self {
            email: EmailText("user@example.com".into()),
            name: FullNameText("John Doe".into()),
            role: Some(RoleText("user".into())),
            metadata: Some(object(json!({"company": "Acme Inc", "department": "Engineering"}))),
        }
    }
}

impl Example for NewSignUpUser {
    fn example() -> Self {
        Self {
            email: EmailText("newuser@example.com".into()),
            password: PasswordText("correct-horse-battery-staple".into()),
            name: Some(FullNameText("Jane Doe".into())),
        }
    }
}

impl Example for LinkedUser {
    fn example() -> Self {
        Self {
            message: "resource created successfully".into(),
            user_id: "testUserId".into(),
            klaim_id: "1753306133860_A36dL".into(),
            email: "test@email.com".into(),
            credit_balance: 0,
            created_at: 1_753_306_133_860,
            name: Some("Test API".into()),
            metadata: Some(object(json!({"test": "field"}))),
        }
    }
}

impl Example for ContactUser {
    fn example() -> Self {
        Self {
            user_id: 1,
            first_name: "John".into(),
            last_name: "Doe".into(),
            contact_email: "john.doe@example.com".into(),
        }
    }
}

impl Example for PersonUser {
    fn example() -> Self {
        Self { last_name: "Meere".into(), first_name: "John".into(), email: "johnm@gmail.com".into(), id: 1 }
    }
}

impl Example for MemberUser {
    fn example() -> Self {
        Self {
            id: "usr_019ab2f4c1d87e5f9a3b2c1d0e9f8a7b".into(),
            email: "user@example.com".into(),
            name: "John Doe".into(),
            role: RoleText("user".into()),
            metadata: Some(object(json!({"company": "Acme Inc", "department": "Engineering"}))),
            created_at: Timestamp("2024-01-11T10:00:00.000Z".into()),
            updated_at: Timestamp("2024-01-11T10:00:00.000Z".into()),
        }
    }
}

impl Example for SignUpUser {
    fn example() -> Self {
        Self {
            id: "user_019ab2f4c1d87e5f9a3b2c1d0e9f8a7c".into(),
            email: "newuser@example.com".into(),
            name: Some("Jane Doe".into()),
            status: "active".into(),
            created_at: Timestamp("2025-09-18T19:40:00.000Z".into()),
            updated_at: Timestamp("2025-09-18T19:40:00.000Z".into()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Reads: one shape for every user, whichever body created it.

/// A stored user, whichever documented body created it, with every identifier it can be found by.
#[derive(Object, Debug, Clone, PartialEq)]
#[oai(rename = "User", example)]
pub struct UserRecord {
    /// The integer id: `GET /users/{id}`. What `ContactUser.userId` and `PersonUser.id` show.
    pub id: i64,
    /// The UUIDv7. `MemberUser.id` and `SignUpUser.id` show it behind `usr_` / `user_`.
    pub uuid: uuid::Uuid,
    /// The caller's own id given to `NewUserWithExternalId`, or the system-generated one.
    pub user_id: String,
    /// `<created_at ms>_<5 random letters and digits>`.
    pub klaim_id: String,
    /// The email as given, trimmed.
    pub email: String,
    /// First name, or `null`.
    pub first_name: Option<String>,
    /// Last name, or `null`.
    pub last_name: Option<String>,
    /// Full name, or `null`.
    pub name: Option<String>,
    /// `user` or `admin`.
    pub role: RoleText,
    /// Account status: `active`.
    pub status: String,
    /// Custom key-value pairs, or `null`.
    pub metadata: Option<MetadataObject>,
    /// Credits.
    pub credit_balance: i64,
    /// Which documented body created the user: `linked`, `contact`, `person`, `member` or `signup`.
    pub created_via: String,
    /// Creation time, RFC 3339 UTC.
    pub created_at: Timestamp,
    /// Last update time, RFC 3339 UTC.
    pub updated_at: Timestamp,
}

impl From<User> for UserRecord {
    fn from(user: User) -> Self {
        Self {
            id: user.id,
            uuid: user.uuid,
            user_id: user.user_id,
            klaim_id: user.klaim_id,
            email: user.email,
            first_name: user.first_name,
            last_name: user.last_name,
            name: user.name,
            role: RoleText(user.role.as_str().to_owned()),
            status: user.status,
            metadata: user.metadata.map(MetadataObject),
            credit_balance: user.credit_balance,
            created_via: user.origin.as_str().to_owned(),
            created_at: user.created_at.into(),
            updated_at: user.updated_at.into(),
        }
    }
}

impl Example for UserRecord {
    fn example() -> Self {
        Self {
            id: 1,
            uuid: uuid::Uuid::from_u128(0x019ab2f4_c1d8_7e5f_9a3b_2c1d0e9f8a7b),
            user_id: "testUserId".into(),
            klaim_id: "1753306133860_A36dL".into(),
            email: "test@email.com".into(),
            first_name: None,
            last_name: None,
            name: Some("Test API".into()),
            role: RoleText("user".into()),
            status: "active".into(),
            metadata: Some(object(json!({"test": "field"}))),
            credit_balance: 0,
            created_via: "linked".into(),
            created_at: Timestamp("2025-07-23T21:28:53.860Z".into()),
            updated_at: Timestamp("2025-07-23T21:28:53.860Z".into()),
        }
    }
}
