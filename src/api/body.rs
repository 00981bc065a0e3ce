//! Reading request bodies: the payload type that takes a JSON object off the wire within the
//! size limit, and the reader that turns it into a wire struct while naming every field at fault.

use std::marker::PhantomData;

use poem::{Request, RequestBody, http::header::CONTENT_LENGTH};
use poem_openapi::{
    impl_apirequest_for_payload,
    payload::{ParsePayload, Payload},
    registry::{MetaSchemaRef, Registry},
    types::{ParseFromJSON, Type},
};
use serde_json::{Map, Value};

use crate::{
    domain::FieldError,
    error::{ApiError, ErrorCode},
};

/// How request bodies are read; set per server as request data.
#[derive(Debug, Clone, Copy)]
pub struct BodyRules {
    /// The largest body accepted, in bytes.
    pub limit: usize,
    /// How long the whole body may take to arrive.
    pub read_timeout: std::time::Duration,
}

impl Default for BodyRules {
    fn default() -> Self {
        Self { limit: 64 * 1024, read_timeout: std::time::Duration::from_secs(10) }
    }
}

/// A request body that is a JSON object. Documented in the spec as `T` (a `oneOf` of the
/// operation's variants), but read as a plain object: which variant it is gets decided by its
/// keys, so that errors can name the missing field of the variant the caller meant.
pub struct JsonObject<T> {
    /// The object's fields.
    pub fields: Map<String, Value>,
    documented_as: PhantomData<fn() -> T>,
}

impl<T: Type> Payload for JsonObject<T> {
    const CONTENT_TYPE: &'static str = "application/json";

    /// `application/json`, with no parameter but an optional `charset=utf-8`: JSON is UTF-8.
    fn check_content_type(content_type: &str) -> bool {
        let Ok(mime) = content_type.parse::<mime::Mime>() else { return false };
        mime.essence_str() == "application/json"
            && mime.params().all(|(name, value)| name == "charset" && value.as_str().eq_ignore_ascii_case("utf-8"))
    }

    fn schema_ref() -> MetaSchemaRef {
        T::schema_ref()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

impl<T: Type> ParsePayload for JsonObject<T> {
    const IS_REQUIRED: bool = true;

    async fn from_request(request: &Request, body: &mut RequestBody) -> poem::Result<Self> {
        let rules = request.data::<BodyRules>().copied().unwrap_or_default();
        let limit = rules.limit;
        let too_large = || {
            ApiError::new(ErrorCode::PayloadTooLarge)
                .with_message(format!("the request body must be at most {limit} bytes"))
        };
        // A declared length over the limit is refused before a byte of the body is read.
        let declared = request.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|length| length > limit as u64) {
            return Err(too_large().into());
        }
        // A client that trickles its body holds a connection and a task; it gets a deadline.
        let read = tokio::time::timeout(rules.read_timeout, body.take()?.into_bytes_limit(limit));
        let bytes = read
            .await
            .map_err(|_| {
                ApiError::new(ErrorCode::RequestTimeout)
                    .with_message(format!("the request body did not arrive within {:?}", rules.read_timeout))
            })?
            .map_err(|err| match err {
                poem::error::ReadBodyError::PayloadTooLarge => too_large(),
                other => ApiError::new(ErrorCode::InvalidRequest)
                    .with_message(format!("the request body could not be read: {other}")),
            })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(invalid("the request body is empty; send a JSON object").into());
        }
        let value: Value = serde_json::from_slice(&bytes)
            .map_err(|err| invalid(format!("the request body is not valid JSON: {err}")))?;
        match value {
            Value::Object(fields) => Ok(Self { fields, documented_as: PhantomData }),
            _ => Err(invalid("the request body must be a JSON object").into()),
        }
    }
}

impl_apirequest_for_payload!(JsonObject<T>, T: Type);

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::InvalidRequest).with_message(message)
}

/// The JSON type a property of a wire struct takes, read from its schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JsonKind {
    String,
    Object,
    Integer,
    Boolean,
}

impl JsonKind {
    fn of(schema_type: &str) -> Self {
        match schema_type {
            "object" => Self::Object,
            "integer" => Self::Integer,
            "boolean" => Self::Boolean,
            _ => Self::String,
        }
    }

    fn admits(self, value: &Value) -> bool {
        match self {
            Self::String => value.is_string(),
            Self::Object => value.is_object(),
            Self::Integer => value.is_i64() || value.is_u64(),
            Self::Boolean => value.is_boolean(),
        }
    }

    fn expected(self) -> &'static str {
        match self {
            Self::String => "must be a string",
            Self::Object => "must be a JSON object",
            Self::Integer => "must be an integer",
            Self::Boolean => "must be true or false",
        }
    }
}

/// The shape of a wire struct (its properties, their JSON types, which are required), read once
/// from the schema poem-openapi derives for it: the schema is the one source of truth for what
/// the spec documents and what the reader accepts.
#[derive(Debug)]
pub struct ObjectShape {
    properties: Vec<(&'static str, JsonKind)>,
    required: Vec<&'static str>,
}

impl ObjectShape {
    /// Reads `T`'s shape from its derived schema.
    pub fn of<T: Type>() -> Self {
        let mut registry = Registry::new();
        T::register(&mut registry);
        let MetaSchemaRef::Reference(name) = T::schema_ref() else {
            panic!("{} is not a named object schema", T::name());
        };
        let schema = &registry.schemas[&name];
        let kind = |property: &MetaSchemaRef| match property {
            MetaSchemaRef::Inline(inline) => JsonKind::of(inline.ty),
            MetaSchemaRef::Reference(name) => JsonKind::of(registry.schemas[name].ty),
        };
        Self {
            properties: schema.properties.iter().map(|(name, property)| (*name, kind(property))).collect(),
            required: schema.required.clone(),
        }
    }
}

/// A wire struct read from a JSON object: poem-openapi derives its schema and construction, and
/// [`read_object`] checks its shape first so that every problem is named.
pub trait WireObject: ParseFromJSON {
    /// The struct's shape, computed once.
    fn shape() -> &'static ObjectShape;
}

/// Implements [`WireObject`] for wire structs.
macro_rules! wire_objects {
    ($($name:ty),* $(,)?) => {$(
        impl $crate::api::body::WireObject for $name {
            fn shape() -> &'static $crate::api::body::ObjectShape {
                static SHAPE: std::sync::LazyLock<$crate::api::body::ObjectShape> =
                    std::sync::LazyLock::new($crate::api::body::ObjectShape::of::<$name>);
                &SHAPE
            }
        }
    )*};
}
pub(crate) use wire_objects;

/// Reads `fields` as `T`. Every unknown key (what stops mass assignment: `role` or `id` in a
/// signup), every value of the wrong JSON type and every missing required field is named; a
/// `null` counts as absent. Unknown keys and wrong types answer `invalid_request`, missing fields
/// alone `missing_required_fields`.
pub fn read_object<T: WireObject>(mut fields: Map<String, Value>) -> Result<T, ApiError> {
    let shape = T::shape();
    let mut malformed = Vec::new();
    let mut missing = Vec::new();
    for key in fields.keys() {
        if !shape.properties.iter().any(|(name, _)| name == key) {
            malformed.push(FieldError::new(shorten(key), "unknown_field", "unknown field"));
        }
    }
    for (name, kind) in &shape.properties {
        match fields.get(*name) {
            None | Some(Value::Null) => {
                fields.remove(*name);
                if shape.required.contains(name) {
                    missing.push(FieldError::new(*name, "missing", "is required"));
                }
            }
            Some(value) if !kind.admits(value) => {
                malformed.push(FieldError::new(*name, "invalid_type", kind.expected()));
            }
            Some(_) => {}
        }
    }
    if !malformed.is_empty() {
        let message = match malformed.as_slice() {
            [one] => format!("{}: {}", one.field, one.message),
            many => format!("{} fields are malformed", many.len()),
        };
        malformed.extend(missing);
        return Err(invalid(message).with_details(malformed));
    }
    if !missing.is_empty() {
        return Err(ApiError::new(ErrorCode::MissingRequiredFields).with_details(missing));
    }
    // The shape check above admits only what the derived parser accepts, so this cannot fail on
    // input; should it ever, the caller still gets a 400, not a 500.
    T::parse_from_json(Some(Value::Object(fields))).map_err(|err| invalid(err.into_message()))
}

/// Unknown keys are echoed back; a huge one is cut so that the error stays small.
fn shorten(key: &str) -> String {
    const MAX: usize = 64;
    if key.chars().count() <= MAX { key.to_owned() } else { key.chars().take(MAX).chain(['…']).collect() }
}
