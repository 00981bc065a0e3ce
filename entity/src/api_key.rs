//! A bearer API key. Only the SHA-256 digest of the key is stored.

use sea_orm::entity::prelude::*;

/// One row of `api_keys`.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "api_keys")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    /// The operator's name for the key, unique.
    #[sea_orm(unique)]
    pub name: String,
    /// Lower-case hex SHA-256 of the key: a digest, so `Debug` of this row leaks nothing usable.
    #[sea_orm(unique)]
    pub digest: String,
    /// Space-separated scopes, such as `users:write users:read`.
    pub scopes: String,
    pub created_at: DateTimeUtc,
    pub last_used_at: Option<DateTimeUtc>,
    pub expires_at: Option<DateTimeUtc>,
    pub revoked_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
