//! The `users` table: one row per user, whichever documented contract created it.

use sea_orm_migration::{prelude::*, schema::*};

use crate::unique_index;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Users::Table)
                    .col(big_pk_auto(Users::Id))
                    .col(uuid(Users::Uuid))
                    .col(text(Users::UserId))
                    .col(text(Users::KlaimId))
                    .col(text(Users::Email))
                    // The email as given is what the user sees; this lower-cased copy carries the
                    // unique index. It is lower-cased in Rust rather than by an index on
                    // `lower(email)`, because SQLite's `lower()` folds ASCII only while
                    // PostgreSQL's folds Unicode: one rule for both backends.
                    .col(text(Users::EmailKey))
                    .col(text_null(Users::FirstName))
                    .col(text_null(Users::LastName))
                    .col(text_null(Users::Name))
                    .col(text(Users::Role))
                    .col(text(Users::Status))
                    .col(json_null(Users::Metadata))
                    .col(text_null(Users::PasswordHash))
                    .col(big_integer(Users::CreditBalance).default(0))
                    .col(text(Users::Origin))
                    .col(timestamp_with_time_zone(Users::CreatedAt))
                    .col(timestamp_with_time_zone(Users::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        crate::create_unique_indexes(
            manager,
            Users::Table,
            vec![
                (unique_index::USERS_EMAIL, Users::EmailKey),
                (unique_index::USERS_USER_ID, Users::UserId),
                (unique_index::USERS_UUID, Users::Uuid),
                (unique_index::USERS_KLAIM_ID, Users::KlaimId),
            ],
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(Users::Table).to_owned()).await
    }

    // SQLite runs DDL in transactions too; a start interrupted mid-migration leaves no half schema.
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}

#[derive(DeriveIden, Clone, Copy)]
enum Users {
    Table,
    Id,
    Uuid,
    UserId,
    KlaimId,
    Email,
    EmailKey,
    FirstName,
    LastName,
    Name,
    Role,
    Status,
    Metadata,
    PasswordHash,
    CreditBalance,
    Origin,
    CreatedAt,
    UpdatedAt,
}
