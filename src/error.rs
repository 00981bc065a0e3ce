//! The error table: every code the API answers with, its HTTP status and its default message.
//!
//! The body of every error is built from its code, so a code can never drift from its status.
//! Codes are part of the contract: clients match on them, so they are never renamed.

use std::fmt;

use poem::{IntoResponse, Response, http::StatusCode};
use poem_openapi::{
    Enum, Object,
    registry::{MetaHeader, MetaMediaType, MetaResponse, MetaResponses, MetaSchema, MetaSchemaRef, Registry},
    types::Type,
};
use uuid::Uuid;

use crate::domain::FieldError;

/// The stable, machine-readable error codes. Clients match on these, never on `message`.
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[oai(rename = "ErrorCode", rename_all = "snake_case")]
pub enum ErrorCode {
    /// A required field is absent or `null`; `details` names each one.
    MissingRequiredFields,
    /// The body is not JSON, not an object, has a value of the wrong JSON type or an unknown field.
    InvalidRequest,
    /// No bearer key, or an unknown, malformed, expired or revoked one.
    Unauthorized,
    /// A valid key without the scope the call needs.
    Forbidden,
    /// No such resource.
    NotFound,
    /// The resource exists but not with this method.
    MethodNotAllowed,
    /// A user with this email (compared case-insensitively) exists.
    EmailExists,
    /// A user with this userId exists.
    UserIdExists,
    /// The body did not arrive in time.
    RequestTimeout,
    /// The body is over the size limit.
    PayloadTooLarge,
    /// The Content-Type is missing or not `application/json`.
    UnsupportedMediaType,
    /// Too many requests from this key (or, for public signup, this address); see `Retry-After`.
    RateLimited,
    /// The body is well-formed but values break the rules; `details` lists every failing field.
    ValidationFailed,
    /// A bug. The body carries an `id` that the server's log line carries too.
    InternalError,
    /// The database cannot be reached. Safe to retry after `Retry-After` seconds.
    ServiceUnavailable,
}

impl ErrorCode {
    /// Every code, in the order of the table.
    pub const ALL: [ErrorCode; 15] = [
        Self::MissingRequiredFields,
        Self::InvalidRequest,
        Self::Unauthorized,
        Self::Forbidden,
        Self::NotFound,
        Self::MethodNotAllowed,
        Self::EmailExists,
        Self::UserIdExists,
        Self::RequestTimeout,
        Self::PayloadTooLarge,
        Self::UnsupportedMediaType,
        Self::RateLimited,
        Self::ValidationFailed,
        Self::InternalError,
        Self::ServiceUnavailable,
    ];

    /// The one table: HTTP status, wire code, default message.
    /// Seed 000's messages ("missing required fields", "Email already exists", "User ID already
    /// exists") are used as they are, as the contract asks.
    const fn entry(self) -> (u16, &'static str, &'static str) {
        match self {
            Self::MissingRequiredFields => (400, "missing_required_fields", "missing required fields"),
            Self::InvalidRequest => (400, "invalid_request", "the request body is invalid"),
            Self::Unauthorized => (401, "unauthorized", "a valid API key is required"),
            Self::Forbidden => (403, "forbidden", "the API key lacks the scope this call needs"),
            Self::NotFound => (404, "not_found", "no such resource"),
            Self::MethodNotAllowed => (405, "method_not_allowed", "method not allowed on this resource"),
            Self::EmailExists => (409, "email_exists", "Email already exists"),
            Self::UserIdExists => (409, "user_id_exists", "User ID already exists"),
            Self::RequestTimeout => (408, "request_timeout", "the request body did not arrive in time"),
            Self::PayloadTooLarge => (413, "payload_too_large", "the request body is too large"),
            Self::UnsupportedMediaType => (415, "unsupported_media_type", "Content-Type must be application/json"),
            Self::RateLimited => (429, "rate_limited", "too many requests; retry after Retry-After seconds"),
            Self::ValidationFailed => (422, "validation_failed", "a field is invalid"),
            Self::InternalError => (500, "internal_error", "an internal error occurred"),
            Self::ServiceUnavailable => (503, "service_unavailable", "the database cannot be reached; retry later"),
        }
    }

    /// The HTTP status this code is answered with.
    pub fn status(self) -> StatusCode {
        StatusCode::from_u16(self.entry().0).expect("every status in the table is valid")
    }

    /// The wire form of the code, as in the `error` field.
    pub const fn as_str(self) -> &'static str {
        self.entry().1
    }

    /// The message used when the situation has nothing more specific to say.
    pub const fn default_message(self) -> &'static str {
        self.entry().2
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One field's problem, as it appears in `details`.
#[derive(Object, Clone, Debug, PartialEq, Eq)]
#[oai(rename = "ErrorDetail")]
pub struct ErrorDetail {
    /// The field, as named in the request body (`metadata.<key>` for a metadata entry).
    pub field: String,
    /// What is wrong, as a stable code: `missing`, `invalid_type`, `unknown_field`, `blank`,
    /// `too_short`, `too_long`, `invalid_format`, `not_allowed`, `common_password`,
    /// `same_as_email`, `too_many_keys`, `too_large`, `taken`.
    pub error: String,
    /// What is wrong, for people.
    pub message: String,
}

/// The one error body, for every operation and status.
#[derive(Object, Clone, Debug, PartialEq, Eq)]
#[oai(rename = "ErrorResponse")]
pub struct ErrorResponse {
    /// The stable error code. Match on this, never on `message`.
    pub error: ErrorCode,
    /// What went wrong, for people. May change between versions.
    pub message: String,
    /// One entry per failing field, where fields are at fault.
    #[oai(skip_serializing_if_is_none)]
    pub details: Option<Vec<ErrorDetail>>,
    /// For `internal_error`: the incident id that the server's log line carries too.
    #[oai(skip_serializing_if_is_none)]
    pub id: Option<String>,
}

/// An error answer: a code, a message and the fields at fault. Domain errors are converted into
/// this at the API edge; it is the only way the API answers an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    code: ErrorCode,
    message: String,
    details: Vec<FieldError>,
    incident: Option<Uuid>,
    retry_after_secs: Option<u32>,
    www_authenticate: Option<&'static str>,
}

/// Seconds a client should wait before retrying a 503.
const RETRY_AFTER_SECS: u32 = 2;

impl ApiError {
    /// An error with the code's default message.
    pub fn new(code: ErrorCode) -> Self {
        let mut error = Self {
            code,
            message: code.default_message().to_owned(),
            details: Vec::new(),
            incident: None,
            retry_after_secs: None,
            www_authenticate: None,
        };
        match code {
            ErrorCode::Unauthorized => error.www_authenticate = Some("Bearer"),
            ErrorCode::ServiceUnavailable => error.retry_after_secs = Some(RETRY_AFTER_SECS),
            _ => {}
        }
        error
    }

    /// Replaces the message.
    pub fn with_message(mut self, message: impl Into<String>) -> Self {
        self.message = message.into();
        self
    }

    /// Adds the fields at fault.
    pub fn with_details(mut self, details: Vec<FieldError>) -> Self {
        self.details = details;
        self
    }

    /// A 401 for a key that was presented but is not accepted (RFC 6750 `invalid_token`).
    pub fn invalid_token(message: impl Into<String>) -> Self {
        let mut error = Self::new(ErrorCode::Unauthorized).with_message(message);
        error.www_authenticate = Some(r#"Bearer error="invalid_token""#);
        error
    }

    /// A 429 for a client over its limit, retrying after `retry_after_secs`.
    pub fn rate_limited(retry_after_secs: u64) -> Self {
        let mut error = Self::new(ErrorCode::RateLimited);
        error.retry_after_secs = Some(u32::try_from(retry_after_secs).unwrap_or(u32::MAX));
        error
    }

    /// A 503 that is not the database: the server is busy; retry after a second.
    pub fn overloaded(message: impl Into<String>) -> Self {
        let mut error = Self::new(ErrorCode::ServiceUnavailable).with_message(message);
        error.retry_after_secs = Some(1);
        error
    }

    /// A 422 listing every failing field.
    pub fn validation(details: Vec<FieldError>) -> Self {
        let message = match details.len() {
            1 => "1 field is invalid".to_owned(),
            n => format!("{n} fields are invalid"),
        };
        Self::new(ErrorCode::ValidationFailed).with_message(message).with_details(details)
    }

    /// A 500. Logs the cause with a fresh incident id, and answers with that id alone: nothing
    /// internal reaches the client.
    pub fn internal(cause: &dyn fmt::Display) -> Self {
        let incident = Uuid::now_v7();
        tracing::error!(incident = %incident, "internal error: {cause}");
        let mut error = Self::new(ErrorCode::InternalError);
        error.incident = Some(incident);
        error
    }

    /// The code.
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// The fields at fault.
    pub fn details(&self) -> &[FieldError] {
        &self.details
    }

    /// The wire body.
    pub fn body(&self) -> ErrorResponse {
        ErrorResponse {
            error: self.code,
            message: self.message.clone(),
            details: (!self.details.is_empty()).then(|| {
                self.details
                    .iter()
                    .map(|d| ErrorDetail {
                        field: d.field.clone(),
                        error: d.rule.to_owned(),
                        message: d.message.clone(),
                    })
                    .collect()
            }),
            id: self.incident.map(|id| id.to_string()),
        }
    }

    /// The error statuses of a create operation.
    pub const CREATE_STATUSES: &'static [u16] = &[400, 401, 403, 408, 409, 413, 415, 422, 429, 500, 503];
    /// The error statuses of a read operation.
    pub const READ_STATUSES: &'static [u16] = &[400, 401, 403, 404, 429, 500, 503];

    /// The error statuses an operation can answer, each with the error schema, for the spec.
    pub fn meta(statuses: &[u16]) -> MetaResponses {
        let described: [(u16, &'static str); 12] = [
            (
                400,
                "The request is malformed: a path parameter or a body value of the wrong type, a body that is not a JSON object, an unknown field (`invalid_request`), or a required field missing (`missing_required_fields`).",
            ),
            (401, "No `Authorization: Bearer` key, or an unknown, malformed, expired or revoked one (`unauthorized`)."),
            (403, "The key lacks the scope the call needs (`forbidden`)."),
            (404, "No user has this id (`not_found`)."),
            (408, "The body did not arrive in full within the server's read timeout (`request_timeout`)."),
            (409, "The email (compared case-insensitively) or the userId is taken (`email_exists`, `user_id_exists`)."),
            (413, "The body is over the size limit (`payload_too_large`)."),
            (415, "The Content-Type is missing or not `application/json` (`unsupported_media_type`)."),
            (
                422,
                "The body is well-formed but values break the rules; `details` lists every failing field (`validation_failed`).",
            ),
            (
                429,
                "Too many requests from this key, or (public signup) from this client address; retry after `Retry-After` seconds (`rate_limited`).",
            ),
            (500, "A bug; `id` is the incident id in the server's log (`internal_error`)."),
            (
                503,
                "The database cannot be reached, or too many signups are being hashed at once; retry after `Retry-After` seconds (`service_unavailable`).",
            ),
        ];
        let responses = described
            .into_iter()
            .filter(|(status, _)| statuses.contains(status))
            .map(|(status, description)| MetaResponse {
                description,
                status: Some(status),
                status_range: None,
                content: vec![MetaMediaType { content_type: "application/json", schema: ErrorResponse::schema_ref() }],
                headers: match status {
                    401 => vec![header(
                        "WWW-Authenticate",
                        "`Bearer`, with `error=\"invalid_token\"` when a key was presented.",
                    )],
                    429 => vec![
                        header("Retry-After", "Seconds to wait before retrying."),
                        header("RateLimit-Limit", "Requests allowed per minute."),
                        header("RateLimit-Remaining", "Requests left now: 0."),
                        header("RateLimit-Reset", "Seconds until the whole allowance is back."),
                    ],
                    503 => vec![header("Retry-After", "Seconds to wait before retrying.")],
                    _ => vec![],
                },
            })
            .collect();
        MetaResponses { responses }
    }

    /// Registers the error schema.
    pub fn register(registry: &mut Registry) {
        ErrorResponse::register(registry);
    }
}

fn header(name: &str, description: &str) -> MetaHeader {
    MetaHeader {
        name: name.to_owned(),
        description: Some(description.to_owned()),
        required: true,
        deprecated: false,
        schema: MetaSchemaRef::Inline(Box::new(MetaSchema::new("string"))),
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = poem_openapi::types::ToJSON::to_json(&self.body()).unwrap_or_default();
        let mut response = poem::web::Json(body).with_status(self.code.status()).into_response();
        if let Some(challenge) = self.www_authenticate {
            response.headers_mut().insert("WWW-Authenticate", challenge.parse().expect("static header"));
        }
        if let Some(secs) = self.retry_after_secs {
            response.headers_mut().insert("Retry-After", secs.into());
        }
        // The body was not read to its end: the connection cannot carry another request, and a
        // client that reused it would fail on the next one (RFC 9112, 9.6).
        if matches!(self.code, ErrorCode::PayloadTooLarge | ErrorCode::RequestTimeout) {
            response.headers_mut().insert("Connection", poem::http::HeaderValue::from_static("close"));
        }
        response
    }
}

impl poem::error::ResponseError for ApiError {
    fn status(&self) -> StatusCode {
        self.code.status()
    }

    fn as_response(&self) -> Response {
        self.clone().into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_a_distinct_wire_name_and_an_error_status() {
        let mut names = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            assert!(names.insert(code.as_str()), "{code:?} repeats a wire name");
            assert!(code.status().as_u16() >= 400, "{code:?} is not an error status");
            // The Enum derive and the table must agree on the wire name.
            let json = poem_openapi::types::ToJSON::to_json(&code).unwrap();
            assert_eq!(json, serde_json::json!(code.as_str()), "{code:?}");
        }
    }

    #[test]
    fn validation_message_counts_fields() {
        let one = ApiError::validation(vec![FieldError::new("email", "blank", "must not be blank")]);
        assert_eq!(one.body().message, "1 field is invalid");
        let two = ApiError::validation(vec![
            FieldError::new("email", "blank", "must not be blank"),
            FieldError::new("name", "blank", "must not be blank"),
        ]);
        assert_eq!(two.body().message, "2 fields are invalid");
    }
}
