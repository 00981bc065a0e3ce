//! The HTTP API: `POST /users` and `POST /v1/users`. Handlers parse, call the users service,
//! and map; the rules live in the domain, the writing in [`crate::users`].

pub mod access;
pub mod body;
pub mod reply;
pub mod variants;
pub mod wire;

use poem::web::Data;
use poem_openapi::{ApiResponse, OpenApi, Tags, param::Path, payload::Json};
use serde_json::{Map, Value};

use self::{
    access::{Caller, ReadAccess, SignupAccess, WriteAccess},
    body::{JsonObject, read_object},
    reply::{ErrorStatuses, Reply},
    variants::{
        CreateUserBody, CreateUserV1Body, CreatedUser, CreatedUserV1, NewContactUser, NewPersonUser, NewSignUpUser,
        NewUserByOperator, NewUserWithExternalId, UserRecord,
    },
};
use crate::{
    app::AppState,
    database,
    domain::{FieldError, NewUser, Origin},
    error::{ApiError, ErrorCode},
    hasher::HashError,
    users::{self, CreateUserError},
};

/// The spec's tags.
#[derive(Tags)]
enum ApiTags {
    /// Creating users, through each of the five documented contracts.
    Users,
}

/// The 201 of `POST /users`.
#[derive(ApiResponse)]
pub enum UserCreated {
    /// Created. The body has the shape of the request's variant.
    #[oai(status = 201)]
    Created(
        Json<CreatedUser>,
        /// The new user's URL.
        #[oai(header = "Location")]
        String,
    ),
}

/// The 201 of `POST /v1/users`.
#[derive(ApiResponse)]
pub enum UserCreatedV1 {
    /// Created. The body has the shape of the request's variant.
    #[oai(status = 201)]
    Created(
        Json<CreatedUserV1>,
        /// The new user's URL.
        #[oai(header = "Location")]
        String,
    ),
}

/// A user, read.
#[derive(ApiResponse)]
pub enum UserFound {
    /// The user.
    #[oai(status = 200)]
    Ok(Json<UserRecord>),
}

impl ErrorStatuses for UserCreated {
    const ERROR_STATUSES: &'static [u16] = ApiError::CREATE_STATUSES;
}

impl ErrorStatuses for UserCreatedV1 {
    const ERROR_STATUSES: &'static [u16] = ApiError::CREATE_STATUSES;
}

impl ErrorStatuses for UserFound {
    const ERROR_STATUSES: &'static [u16] = ApiError::READ_STATUSES;
}

/// The operations.
pub struct UsersApi;

#[OpenApi]
impl UsersApi {
    /// Create a user
    ///
    /// Creates a user from one of three documented bodies, told apart by their keys:
    ///
    /// - `NewContactUser` (a body with `contactEmail`): `firstName`, `lastName`, `contactEmail`;
    ///   answered with the integer `userId`.
    /// - `NewPersonUser` (else a body with `firstName` or `lastName`): `firstName`, `lastName`,
    ///   `email`; answered with the integer `id`.
    /// - `NewUserWithExternalId` (any other body): `email`, optional `userId`, `name`, `metadata`;
    ///   answered with `user_id`, `klaim_id` and `created_at` in epoch milliseconds.
    ///
    /// A key the chosen body does not document is refused (400 `invalid_request`), never ignored.
    /// Emails are unique across every variant and both paths, compared case-insensitively (409).
    /// Needs an API key with the `users:write` scope.
    #[oai(path = "/users", method = "post", operation_id = "createUser", tag = "ApiTags::Users")]
    async fn create_user(
        &self,
        state: Data<&AppState>,
        _caller: WriteAccess,
        body: JsonObject<CreateUserBody>,
    ) -> Reply<UserCreated> {
        let created = async {
            let new_user = users_variant(body.fields)?;
            let user = create(&state, new_user).await?;
            let location = format!("/users/{}", user.id);
            Ok(UserCreated::Created(Json(user.into()), location))
        };
        created.await.into()
    }

    /// Create a user (v1)
    ///
    /// Creates a user from one of two documented bodies, told apart by their keys:
    ///
    /// - `NewSignUpUser` (a body with `password`): `email`, `password`, optional `name`; answered
    ///   with `id` `user_…` and `status`. Without an `Authorization` header this is public
    ///   self-signup (unless the operator turned it off); with one, the key must hold `users:write`.
    /// - `NewUserByOperator` (any other body): `email`, `name`, optional `role` (`user` or `admin`,
    ///   default `user`) and `metadata`; answered with `id` `usr_…`. Always needs an API key with
    ///   the `users:write` scope.
    ///
    /// A key the chosen body does not document is refused (400 `invalid_request`), never ignored:
    /// a signup cannot set `role`, `status` or `id`. Emails are unique across every variant and
    /// both paths, compared case-insensitively (409). Passwords are stored as Argon2id hashes only.
    #[oai(path = "/v1/users", method = "post", operation_id = "createUserV1", tag = "ApiTags::Users")]
    async fn create_user_v1(
        &self,
        state: Data<&AppState>,
        caller: SignupAccess,
        body: JsonObject<CreateUserV1Body>,
    ) -> Reply<UserCreatedV1> {
        let created = async {
            let new_user = v1_variant(body.fields, &caller.0)?;
            let user = create(&state, new_user).await?;
            let location = format!(
                "/v1/users/{}",
                match user.origin {
                    Origin::SignUp => format!("{}{}", variants::SIGNUP_ID_PREFIX, user.uuid.simple()),
                    _ => format!("{}{}", variants::MEMBER_ID_PREFIX, user.uuid.simple()),
                }
            );
            Ok(UserCreatedV1::Created(Json(user.into()), location))
        };
        created.await.into()
    }
}

/// The read operations, beside the create operations in [`UsersApi`].
pub struct UserReadsApi;

#[OpenApi]
impl UserReadsApi {
    /// Get a user by integer id
    ///
    /// The user whose integer id is `id`, as the `Location` of `POST /users` names it, whichever
    /// body created the user. Needs an API key with the `users:read` scope.
    #[oai(path = "/users/:id", method = "get", operation_id = "getUser", tag = "ApiTags::Users")]
    async fn get_user(
        &self,
        state: Data<&AppState>,
        _caller: ReadAccess,
        /// The user's integer id.
        id: Path<i64>,
    ) -> Reply<UserFound> {
        state.hasher.serving_other_requests();
        found(users::find_by_id(&state.db, id.0).await).into()
    }

    /// Get a user by member or signup id
    ///
    /// The user whose public id is `usr_…` (created as a member) or `user_…` (created by signup), as
    /// the `Location` of `POST /v1/users` names it: the `id` of `MemberUser` and `SignUpUser`. Needs
    /// an API key with the `users:read` scope.
    #[oai(path = "/v1/users/:public_id", method = "get", operation_id = "getUserV1", tag = "ApiTags::Users")]
    async fn get_user_v1(
        &self,
        state: Data<&AppState>,
        _caller: ReadAccess,
        /// `usr_` or `user_` followed by the user's UUID in 32 lower-case hex digits.
        #[oai(validator(pattern = "^(usr|user)_[0-9a-f]{32}$"))]
        public_id: Path<String>,
    ) -> Reply<UserFound> {
        state.hasher.serving_other_requests();
        let (origin, hex) = match public_id.0.split_once('_') {
            Some(("usr", hex)) => (Origin::Member, hex),
            Some(("user", hex)) => (Origin::SignUp, hex),
            _ => return Reply::Err(ApiError::new(ErrorCode::NotFound)),
        };
        let Ok(uuid) = uuid::Uuid::try_parse(hex) else { return Reply::Err(ApiError::new(ErrorCode::NotFound)) };
        // The prefix is part of the id: a member's UUID behind `user_` names nobody.
        let user = users::find_by_uuid(&state.db, uuid).await.map(|user| user.filter(|user| user.origin == origin));
        found(user).into()
    }
}

/// Maps a lookup to the read answer.
fn found(user: Result<Option<crate::domain::User>, sea_orm::DbErr>) -> Result<UserFound, ApiError> {
    match user {
        Ok(Some(user)) => Ok(UserFound::Ok(Json(user.into()))),
        Ok(None) => Err(ApiError::new(ErrorCode::NotFound).with_message("no user has this id")),
        Err(err) if database::is_unavailable(&err) => Err(ApiError::new(ErrorCode::ServiceUnavailable)),
        Err(err) => Err(ApiError::internal(&err)),
    }
}

/// Picks the `POST /users` variant by the body's keys and parses it.
pub fn users_variant(fields: Map<String, Value>) -> Result<NewUser, ApiError> {
    let parsed = if fields.contains_key("contactEmail") {
        NewUser::try_from(read_object::<NewContactUser>(fields)?)
    } else if fields.contains_key("firstName") || fields.contains_key("lastName") {
        NewUser::try_from(read_object::<NewPersonUser>(fields)?)
    } else {
        NewUser::try_from(read_object::<NewUserWithExternalId>(fields)?)
    };
    parsed.map_err(ApiError::validation)
}

/// Picks the `POST /v1/users` variant by the body's keys and parses it. A Member needs a key even
/// where public signup lets a SignUp through without one; that is told before the body is read
/// further, so an anonymous caller learns nothing about a Member body's fields.
pub fn v1_variant(fields: Map<String, Value>, caller: &Caller) -> Result<NewUser, ApiError> {
    let parsed = if fields.contains_key("password") {
        NewUser::try_from(read_object::<NewSignUpUser>(fields)?)
    } else {
        if *caller == Caller::Public {
            return Err(ApiError::new(ErrorCode::Unauthorized)
                .with_message("creating a member needs an API key; only a signup (with `password`) is public"));
        }
        NewUser::try_from(read_object::<NewUserByOperator>(fields)?)
    };
    parsed.map_err(ApiError::validation)
}

/// Creates the user and maps the service's errors to the contract's.
async fn create(state: &AppState, new_user: NewUser) -> Result<crate::domain::User, ApiError> {
    let email_field = match new_user.origin {
        Origin::Contact => "contactEmail",
        _ => "email",
    };
    users::create(&state.writer, &state.hasher, new_user).await.map_err(|err| match err {
        CreateUserError::EmailTaken => ApiError::new(ErrorCode::EmailExists).with_details(vec![FieldError::new(
            email_field,
            "taken",
            "a user with this email exists",
        )]),
        CreateUserError::UserIdTaken => ApiError::new(ErrorCode::UserIdExists).with_details(vec![FieldError::new(
            "userId",
            "taken",
            "a user with this userId exists",
        )]),
        CreateUserError::Hashing(HashError::Busy) => {
            ApiError::overloaded("too many signups are being processed; retry shortly")
        }
        CreateUserError::Database(err) if database::is_unavailable(&err) => {
            tracing::warn!("database unavailable: {err}");
            ApiError::new(ErrorCode::ServiceUnavailable)
        }
        other => ApiError::internal(&other),
    })
}
