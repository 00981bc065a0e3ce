//! The one place that writes users.

use chrono::{DateTime, Utc};
use entity::user;
use rand::{Rng, distr::Alphanumeric};
use sea_orm::{ActiveValue::Set, ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, SqlErr};
use uuid::Uuid;

use crate::{
    domain::{NewUser, Origin, Role, User},
    hasher::{HashError, PasswordHasher},
    writer::UserWriter,
};

/// Why a user was not created.
#[derive(Debug, thiserror::Error)]
pub enum CreateUserError {
    /// The lower-cased email is taken.
    #[error("email taken")]
    EmailTaken,
    /// The userId is taken.
    #[error("userId taken")]
    UserIdTaken,
    /// The database failed (for every create that shared the failed write).
    #[error("database: {0}")]
    Database(std::sync::Arc<DbErr>),
    /// The password could not be hashed.
    #[error(transparent)]
    Hashing(#[from] HashError),
}

/// How often generated identifiers (UUID, klaim id) are drawn again after a collision. A
/// collision needs two users in one millisecond with the same five random characters (1 in 62^5),
/// so the second draw all but never happens; the bound keeps a broken clock from looping.
const IDENTIFIER_ATTEMPTS: usize = 3;

/// Creates `new_user`. Uniqueness of the email and the userId is the database's call: the insert
/// either succeeds or fails on a unique index, which becomes [`CreateUserError::EmailTaken`] or
/// [`CreateUserError::UserIdTaken`]. There is no check before the insert, which two concurrent
/// requests could both pass. The row is stored by the [`UserWriter`], in one commit with the
/// creates that arrive beside it.
pub async fn create(writer: &UserWriter, hasher: &PasswordHasher, new_user: NewUser) -> Result<User, CreateUserError> {
    let password_hash = match new_user.password.clone() {
        Some(password) => Some(hasher.hash(password).await?),
        None => {
            hasher.serving_other_requests();
            None
        }
    };
    let mut attempt = 0;
    loop {
        attempt += 1;
        let now = now_millis();
        let uuid = Uuid::now_v7();
        let row = user::ActiveModel {
            uuid: Set(uuid),
            user_id: Set(match &new_user.user_id {
                Some(user_id) => user_id.as_str().to_owned(),
                None => uuid.hyphenated().to_string(),
            }),
            klaim_id: Set(klaim_id(now)),
            email: Set(new_user.email.as_str().to_owned()),
            email_key: Set(new_user.email.key().to_owned()),
            first_name: Set(new_user.first_name.as_ref().map(|v| v.as_str().to_owned())),
            last_name: Set(new_user.last_name.as_ref().map(|v| v.as_str().to_owned())),
            name: Set(new_user.name.as_ref().map(|v| v.as_str().to_owned())),
            role: Set(new_user.role.as_str().to_owned()),
            status: Set("active".to_owned()),
            metadata: Set(new_user.metadata.as_ref().map(|m| serde_json::Value::Object(m.as_map().clone()))),
            password_hash: Set(password_hash.as_ref().map(|h| h.as_phc().to_owned())),
            credit_balance: Set(0),
            origin: Set(new_user.origin.as_str().to_owned()),
            created_at: Set(now),
            updated_at: Set(now),
            ..Default::default()
        };
        match writer.insert(row, uuid).await {
            Ok(model) => return user_from_row(model).map_err(|err| CreateUserError::Database(err.into())),
            Err(err) => match taken(&err) {
                Some(Taken::Email) => return Err(CreateUserError::EmailTaken),
                Some(Taken::UserId) => return Err(CreateUserError::UserIdTaken),
                Some(Taken::GeneratedIdentifier) if attempt < IDENTIFIER_ATTEMPTS => continue,
                _ => return Err(CreateUserError::Database(err)),
            },
        }
    }
}

/// The user with the integer id `id`.
pub async fn find_by_id(db: &DatabaseConnection, id: i64) -> Result<Option<User>, DbErr> {
    user::Entity::find_by_id(id).one(db).await?.map(user_from_row).transpose()
}

/// The user with the UUID `uuid`.
pub async fn find_by_uuid(db: &DatabaseConnection, uuid: Uuid) -> Result<Option<User>, DbErr> {
    user::Entity::find().filter(user::Column::Uuid.eq(uuid)).one(db).await?.map(user_from_row).transpose()
}

/// Which unique index an insert ran into.
enum Taken {
    Email,
    UserId,
    GeneratedIdentifier,
}

/// Reads the unique index out of a unique-violation. PostgreSQL names the index
/// (`users_email_key_key`), SQLite the column (`users.email_key`); both contain the column name.
fn taken(err: &DbErr) -> Option<Taken> {
    let Some(SqlErr::UniqueConstraintViolation(message)) = err.sql_err() else { return None };
    if message.contains("email_key") {
        Some(Taken::Email)
    } else if message.contains("user_id") {
        Some(Taken::UserId)
    } else {
        Some(Taken::GeneratedIdentifier)
    }
}

/// Now, to the millisecond: the precision every backend stores and every response shows, so
/// what is returned at creation is what is read back later.
fn now_millis() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap_or(now)
}

/// `<created_at ms>_<5 random letters and digits>`, as seed 000 shows (`1753306133860_A36dL`).
fn klaim_id(created_at: DateTime<Utc>) -> String {
    let suffix: String = rand::rng().sample_iter(Alphanumeric).take(5).map(char::from).collect();
    format!("{}_{suffix}", created_at.timestamp_millis())
}

/// Converts a stored row into the domain's user.
pub fn user_from_row(row: user::Model) -> Result<User, DbErr> {
    let origin = Origin::from_stored(&row.origin)
        .ok_or_else(|| DbErr::Type(format!("unknown origin {:?} in users.origin", row.origin)))?;
    let role = Role::parse(&row.role).map_err(|_| DbErr::Type(format!("unknown role {:?} in users.role", row.role)))?;
    let metadata = match row.metadata {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::Object(map)) => Some(map),
        Some(other) => return Err(DbErr::Type(format!("users.metadata is not an object: {other}"))),
    };
    Ok(User {
        id: row.id,
        uuid: row.uuid,
        user_id: row.user_id,
        klaim_id: row.klaim_id,
        email: row.email,
        first_name: row.first_name,
        last_name: row.last_name,
        name: row.name,
        role,
        status: row.status,
        metadata,
        credit_balance: row.credit_balance,
        origin,
        created_at: row.created_at,
        updated_at: row.updated_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn klaim_id_is_the_creation_millisecond_and_five_alphanumerics() {
        let at = DateTime::from_timestamp_millis(1_753_306_133_860).unwrap();
        let id = klaim_id(at);
        let (millis, suffix) = id.split_once('_').unwrap();
        assert_eq!(millis, "1753306133860");
        assert_eq!(suffix.len(), 5);
        assert!(suffix.chars().all(|c| c.is_ascii_alphanumeric()), "{id}");
    }
}
