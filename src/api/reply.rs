//! The answer of every operation: its success responses, or an [`ApiError`], with poem-openapi's
//! own extractor failures (content type, auth, body) routed into the same JSON error body.

use poem::{IntoResponse, Response};
use poem_openapi::{
    ApiResponse,
    error::{AuthorizationError, ContentTypeError, ParseRequestPayloadError},
    registry::{MetaResponses, Registry},
};

use crate::error::{ApiError, ErrorCode};

/// The error statuses an operation's success type comes with, for the spec.
pub trait ErrorStatuses {
    /// The statuses, each documented with the one error schema.
    const ERROR_STATUSES: &'static [u16];
}

/// An operation's answer: `T` (its success responses) or an error. The spec lists both: `T`'s
/// statuses and its error statuses, each with the one error schema.
pub enum Reply<T> {
    /// Success.
    Ok(T),
    /// An error answer.
    Err(ApiError),
}

impl<T> From<Result<T, ApiError>> for Reply<T> {
    fn from(result: Result<T, ApiError>) -> Self {
        match result {
            Ok(value) => Self::Ok(value),
            Err(error) => Self::Err(error),
        }
    }
}

impl<T: ApiResponse + ErrorStatuses> ApiResponse for Reply<T> {
    const BAD_REQUEST_HANDLER: bool = true;

    fn meta() -> MetaResponses {
        let mut meta = T::meta();
        meta.responses.extend(ApiError::meta(T::ERROR_STATUSES).responses);
        meta
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
        ApiError::register(registry);
    }

    fn from_parse_request_error(err: poem::Error) -> Self {
        Self::Err(from_extractor_error(err))
    }
}

impl<T: IntoResponse> IntoResponse for Reply<T> {
    fn into_response(self) -> Response {
        match self {
            Self::Ok(value) => value.into_response(),
            Self::Err(error) => error.into_response(),
        }
    }
}

/// Maps a failure of any extractor to the error body. Our own extractors fail with an
/// [`ApiError`] already; poem-openapi's fail with its own types, mapped here by kind.
pub fn from_extractor_error(err: poem::Error) -> ApiError {
    let err = match err.downcast::<ApiError>() {
        Ok(api_error) => return api_error,
        Err(other) => other,
    };
    if let Some(content_type) = err.downcast_ref::<ContentTypeError>() {
        let message = match content_type {
            ContentTypeError::ExpectContentType => "Content-Type is missing; send application/json".to_owned(),
            ContentTypeError::NotSupported { content_type } => {
                format!("Content-Type {content_type:?} is not supported; send application/json")
            }
        };
        return ApiError::new(ErrorCode::UnsupportedMediaType).with_message(message);
    }
    if err.is::<AuthorizationError>() {
        return ApiError::new(ErrorCode::Unauthorized);
    }
    if let Some(payload) = err.downcast_ref::<ParseRequestPayloadError>() {
        return ApiError::new(ErrorCode::InvalidRequest).with_message(payload.reason.clone());
    }
    from_status(&err)
}

/// Maps an error that carries only a status (routing, body reading) to the error body.
pub fn from_status(err: &poem::Error) -> ApiError {
    match err.status().as_u16() {
        400 => ApiError::new(ErrorCode::InvalidRequest).with_message(err.to_string()),
        401 => ApiError::new(ErrorCode::Unauthorized),
        404 => ApiError::new(ErrorCode::NotFound),
        405 => ApiError::new(ErrorCode::MethodNotAllowed),
        413 => ApiError::new(ErrorCode::PayloadTooLarge),
        415 => ApiError::new(ErrorCode::UnsupportedMediaType),
        _ => ApiError::internal(err),
    }
}
