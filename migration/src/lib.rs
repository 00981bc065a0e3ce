//! The schema of the users-api store, applied at every start and in every test.

pub use sea_orm_migration::prelude::*;

mod m20261123_000001_create_users;
mod m20261123_000002_create_api_keys;

/// Every migration of the store, oldest first.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(m20261123_000001_create_users::Migration), Box::new(m20261123_000002_create_api_keys::Migration)]
    }
}

/// Creates one unique index per `(name, column)` on `table`.
async fn create_unique_indexes<T, C>(
    manager: &SchemaManager<'_>,
    table: T,
    indexes: Vec<(&str, C)>,
) -> Result<(), DbErr>
where
    T: IntoIden + Copy + 'static,
    C: IntoIden + 'static,
{
    for (name, column) in indexes {
        manager.create_index(Index::create().name(name).table(table).col(column).unique().to_owned()).await?;
    }
    Ok(())
}

/// Names of the unique indexes, which the service reads back out of a unique-violation error to
/// tell a taken email from a taken userId.
pub mod unique_index {
    /// Unique index on `users.email_key`, the lower-cased email.
    pub const USERS_EMAIL: &str = "users_email_key_key";
    /// Unique index on `users.user_id`, the caller's own id for the user.
    pub const USERS_USER_ID: &str = "users_user_id_key";
    /// Unique index on `users.uuid`.
    pub const USERS_UUID: &str = "users_uuid_key";
    /// Unique index on `users.klaim_id`.
    pub const USERS_KLAIM_ID: &str = "users_klaim_id_key";
    /// Unique index on `api_keys.name`.
    pub const API_KEYS_NAME: &str = "api_keys_name_key";
    /// Unique index on `api_keys.digest`.
    pub const API_KEYS_DIGEST: &str = "api_keys_digest_key";
}
