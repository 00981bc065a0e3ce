//! A user, whichever of the five documented contracts created it.

use sea_orm::entity::prelude::*;

/// One row of `users`.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "users")]
pub struct Model {
    /// The integer id from the table's sequence, shown by the Contact and Person contracts.
    #[sea_orm(primary_key)]
    pub id: i64,
    /// The UUIDv7, shown behind a prefix by the Member and SignUp contracts.
    #[sea_orm(unique)]
    pub uuid: Uuid,
    /// The caller's own id for the user (Linked contract); the hyphenated UUID when not given.
    #[sea_orm(unique)]
    pub user_id: String,
    /// `<created_at ms>_<5 random letters and digits>`.
    #[sea_orm(unique)]
    pub klaim_id: String,
    /// The email as given, trimmed.
    pub email: String,
    /// The lower-cased email, which carries the unique index.
    #[sea_orm(unique)]
    pub email_key: String,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub name: Option<String>,
    /// `user` or `admin`.
    pub role: String,
    /// `active` for every user created so far.
    pub status: String,
    /// Custom key-value pairs, bounded by the API before they get here.
    pub metadata: Option<Json>,
    /// Argon2id PHC string, for users created by SignUp.
    pub password_hash: Option<String>,
    pub credit_balance: i64,
    /// Which contract created the user: `linked`, `contact`, `person`, `member` or `signup`.
    pub origin: String,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
