//! Who is calling: the bearer-key check as poem-openapi extractors. The extractor *is* the check,
//! so a handler that takes one cannot run without it, and the spec's security follows from it.

use poem::{Request, RequestBody, http::header::AUTHORIZATION};
use poem_openapi::{
    ApiExtractor, ApiExtractorType, ExtractParamOptions,
    registry::{MetaSecurityScheme, Registry},
};

use crate::{
    app::AppState,
    database,
    error::{ApiError, ErrorCode},
    keys::{self, KeyIdentity, Refusal, Scope},
    limits::RateSlot,
};

/// The security scheme's name in the spec.
const SCHEME: &str = "bearerAuth";

/// Who a request was made by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A valid key holding the scope.
    Key(KeyIdentity),
    /// Nobody: public signup, which only the SignUp variant accepts.
    Public,
    /// Key checks are off (the development setting).
    Development,
}

/// Requires a key with `users:write` (or the development setting).
pub struct WriteAccess(pub Caller);

/// Requires a key with `users:read` (or the development setting).
pub struct ReadAccess(pub Caller);

/// For `POST /v1/users`: a key with `users:write` when an `Authorization` header is sent; without
/// one, [`Caller::Public`] when public signup is on (the handler then accepts SignUp only).
pub struct SignupAccess(pub Caller);

fn register_scheme(registry: &mut Registry) {
    registry.create_security_scheme(
        SCHEME,
        MetaSecurityScheme {
            ty: "http",
            description: Some(
                "An API key, sent as `Authorization: Bearer uk_…`. Keys are created with \
                 `users-api keys create`; creating users needs the `users:write` scope, reading \
                 them `users:read`.",
            ),
            name: None,
            key_in: None,
            scheme: Some("bearer"),
            bearer_format: Some("uk_ followed by at least 32 letters and digits"),
            flows: None,
            openid_connect_url: None,
        },
    );
}

fn state(request: &Request) -> Result<&AppState, ApiError> {
    request.data::<AppState>().ok_or_else(|| ApiError::internal(&"the application state is not attached to the route"))
}

/// The key from `Authorization: Bearer <key>`, or `None` when the header is absent.
fn presented_key(request: &Request) -> Result<Option<&str>, ApiError> {
    let Some(header) = request.headers().get(AUTHORIZATION) else { return Ok(None) };
    // Another scheme is no key at all: RFC 6750 (3.1) has the challenge carry no error code then.
    let not_bearer =
        || ApiError::new(ErrorCode::Unauthorized).with_message("the Authorization header must be `Bearer <API key>`");
    let header = header.to_str().map_err(|_| not_bearer())?;
    let (scheme, key) = header.split_once(' ').unwrap_or((header, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(not_bearer());
    }
    match key.trim() {
        "" => Err(ApiError::invalid_token("the Authorization header must be `Bearer <API key>`")),
        key => Ok(Some(key)),
    }
}

async fn check(state: &AppState, key: &str, scope: Scope) -> Result<Caller, ApiError> {
    match keys::authenticate(&state.db, &state.keys, key, scope).await {
        Ok(identity) => Ok(Caller::Key(identity)),
        Err(Refusal::Malformed) => Err(ApiError::invalid_token("the API key is malformed")),
        Err(Refusal::NotAccepted) => Err(ApiError::invalid_token("the API key is unknown, revoked or expired")),
        Err(Refusal::MissingScope(scope)) => {
            Err(ApiError::new(ErrorCode::Forbidden).with_message(format!("the API key lacks the scope {scope}")))
        }
        Err(Refusal::Database(err)) if database::is_unavailable(&err) => {
            Err(ApiError::new(ErrorCode::ServiceUnavailable))
        }
        Err(Refusal::Database(err)) => Err(ApiError::internal(&err)),
    }
}

/// The one check behind both extractors. `public_signup_applies` is whether this operation lets
/// a caller without a key through when public signup is on.
async fn authorize(request: &Request, scope: Scope, public_signup_applies: bool) -> Result<Caller, ApiError> {
    let state = state(request)?;
    if state.access.auth_disabled {
        return Ok(Caller::Development);
    }
    let caller = match presented_key(request)? {
        // A presented key is always checked, even where the call could be made without one.
        Some(key) => check(state, key, scope).await?,
        None if public_signup_applies && state.access.public_signup => Caller::Public,
        None if public_signup_applies => {
            return Err(ApiError::new(ErrorCode::Unauthorized)
                .with_message("public signup is off; send an API key as `Authorization: Bearer <key>`"));
        }
        None => {
            return Err(
                ApiError::new(ErrorCode::Unauthorized).with_message("send an API key as `Authorization: Bearer <key>`")
            );
        }
    };
    // Limits count before the body is read: a flood is refused for the price of a map lookup.
    let limited = match &caller {
        Caller::Key(identity) => state.limits.check_key(identity.id),
        Caller::Public => state.limits.check_address(request),
        Caller::Development => None,
    };
    if let Some(rate) = limited {
        if let Some(slot) = request.extensions().get::<RateSlot>() {
            slot.set(rate);
        }
        if let Some(retry_after) = rate.retry_after_secs {
            return Err(ApiError::rate_limited(retry_after));
        }
    }
    Ok(caller)
}

/// Implements poem-openapi's extractor for an access type over [`authorize`].
macro_rules! security_extractor {
    ($name:ident, $scope:expr, public_signup_applies = $public:expr) => {
        impl<'a> ApiExtractor<'a> for $name {
            const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::SecurityScheme];
            type ParamType = ();
            type ParamRawType = ();

            fn register(registry: &mut Registry) {
                register_scheme(registry);
            }

            fn security_schemes() -> Vec<&'static str> {
                vec![SCHEME]
            }

            /// Where a caller may come without a key, the spec says so with an empty requirement.
            fn has_security_fallback() -> bool {
                $public
            }

            async fn from_request(
                request: &'a Request,
                _body: &mut RequestBody,
                _options: ExtractParamOptions<()>,
            ) -> poem::Result<Self> {
                Ok(Self(authorize(request, $scope, $public).await?))
            }
        }
    };
}

security_extractor!(WriteAccess, Scope::UsersWrite, public_signup_applies = false);
security_extractor!(SignupAccess, Scope::UsersWrite, public_signup_applies = true);
security_extractor!(ReadAccess, Scope::UsersRead, public_signup_applies = false);
