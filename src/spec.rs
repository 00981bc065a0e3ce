//! The OpenAPI document: derived by poem-openapi from the annotated types, then refined in one
//! function where poem-openapi's schema model cannot say what the contract needs. The same
//! refined document is served at `/openapi.json`, inlined in Swagger UI and committed in `openapi/`.

use poem_openapi::{OpenApiService, ServerObject};
use serde_json::{Map, Value, json};

use crate::{
    api::{UserReadsApi, UsersApi},
    domain::FieldError,
    error::{ApiError, ErrorCode},
};

/// The OpenAPI service over the operations.
pub fn service() -> OpenApiService<(UsersApi, UserReadsApi), ()> {
    OpenApiService::new((UsersApi, UserReadsApi), "users-api", env!("CARGO_PKG_VERSION"))
        .description(
            "Creates users through five documented contracts on one store. Every error is one JSON \
             schema, `ErrorResponse`; match on its `error` code, never on `message`.",
        )
        // Relative: Swagger UI calls the server that served it, and SDKs take their base URL as
        // an argument, so no deployment's address is baked into the document.
        .server(ServerObject::new("/").description("The server this document is served from"))
}

/// The refined document.
pub fn document() -> Value {
    let mut document: Value = serde_json::from_str(&service().spec()).expect("poem-openapi emits valid JSON");
    refine(&mut document);
    document
}

/// The document as committed in `openapi/openapi.json`.
pub fn to_json(document: &Value) -> String {
    let mut text = serde_json::to_string_pretty(document).expect("a JSON value serialises");
    text.push('\n');
    text
}

/// The document as committed in `openapi/openapi.yaml`.
pub fn to_yaml(document: &Value) -> String {
    serde_yaml::to_string(document).expect("a JSON value serialises as YAML")
}

/// Swagger UI's page, with its assets built in (no network needed) and the refined document
/// inlined in place of the raw one poem-openapi puts there.
pub fn swagger_ui_html(document: &Value) -> String {
    let service = service();
    let html = service.swagger_ui_html();
    let raw = service.spec();
    assert!(html.contains(&raw), "poem-openapi's Swagger UI page inlines the document");
    html.replacen(&raw, &serde_json::to_string(document).expect("a JSON value serialises"), 1)
}

const JSON: &str = "application/json";

/// Everything poem-openapi's model cannot say, added over the JSON:
/// - `additionalProperties: false` on every object schema: the server refuses unknown keys, and
///   without it a validator finds a `NewPersonUser` body valid as a `NewUserWithExternalId` too;
/// - optional request properties are `nullable` (a `null` counts as absent);
/// - every 201 property is `required`, and those that may be `null` are `nullable`, so each 201
///   shape has its own required set and generated clients tell the shapes apart;
/// - one media type, `application/json`, where poem-openapi writes `…; charset=utf-8`;
/// - an example per request variant, per 201 shape and per error code, as named `examples`
///   that Swagger UI offers in "Try it out".
fn refine(document: &mut Value) {
    normalise_media_types(document);
    unwrap_single_references(document);
    canonicalise_header_names(document);
    let (requests, responses) = variant_schemas(document);
    let schemas = document["components"]["schemas"].as_object_mut().expect("the document has schemas");
    for (name, schema) in schemas.iter_mut() {
        let Some(object) = schema.as_object_mut() else { continue };
        if !object.contains_key("properties") {
            continue;
        }
        object.entry("additionalProperties").or_insert(Value::Bool(false));
        if requests.contains(name) {
            mark_optional_nullable(object, false);
        } else if responses.contains(name) {
            mark_optional_nullable(object, true);
        }
    }
    add_examples(document);
}

fn normalise_media_types(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if let Some(Value::Object(content)) = map.get_mut("content")
                && let Some(media) = content.remove("application/json; charset=utf-8")
            {
                content.insert(JSON.to_owned(), media);
            }
            map.values_mut().for_each(normalise_media_types);
        }
        Value::Array(items) => items.iter_mut().for_each(normalise_media_types),
        _ => {}
    }
}

/// poem-openapi wraps a documented property of a named type as `allOf: [{$ref}, {description}]`,
/// which openapi-python-client refuses for a non-object (it dropped `ErrorResponse` whole). The
/// bare `$ref` says the same: the referenced schema carries its own description.
fn unwrap_single_references(document: &mut Value) {
    let Some(schemas) = document["components"]["schemas"].as_object_mut() else { return };
    for schema in schemas.values_mut() {
        let Some(properties) = schema.get_mut("properties").and_then(Value::as_object_mut) else { continue };
        for property in properties.values_mut() {
            let Some(all_of) = property.get("allOf").and_then(Value::as_array) else { continue };
            let references: Vec<&Value> = all_of.iter().filter(|member| member.get("$ref").is_some()).collect();
            let only_annotations = all_of
                .iter()
                .filter(|member| member.get("$ref").is_none())
                .all(|member| member.as_object().is_some_and(|m| m.keys().all(|k| k == "description")));
            if let [reference] = references.as_slice()
                && only_annotations
            {
                *property = json!({ "$ref": reference["$ref"] });
            }
        }
    }
}

/// poem-openapi writes response header names upper-cased (`LOCATION`); the spec shows them as
/// the RFCs spell them (`Location`, `WWW-Authenticate`), which is what generated clients expose.
fn canonicalise_header_names(document: &mut Value) {
    let Some(paths) = document["paths"].as_object_mut() else { return };
    let responses = paths
        .values_mut()
        .filter_map(Value::as_object_mut)
        .flat_map(|item| item.values_mut())
        .filter_map(|operation| operation["responses"].as_object_mut())
        .flat_map(|responses| responses.values_mut());
    for response in responses {
        let Some(headers) = response.get_mut("headers").and_then(Value::as_object_mut) else { continue };
        *headers =
            std::mem::take(headers).into_iter().map(|(name, header)| (canonical_header(&name), header)).collect();
    }
}

fn canonical_header(name: &str) -> String {
    // Names given in mixed case (`RateLimit-Limit`) are already spelled as meant.
    if name.chars().any(|c| c.is_ascii_lowercase()) {
        return name.to_owned();
    }
    name.split('-')
        .map(|part| {
            if part.eq_ignore_ascii_case("www") {
                "WWW".to_owned()
            } else {
                let lower = part.to_ascii_lowercase();
                let mut chars = lower.chars();
                chars.next().map(|first| first.to_ascii_uppercase().to_string() + chars.as_str()).unwrap_or_default()
            }
        })
        .collect::<Vec<_>>()
        .join("-")
}

/// The schemas named in the `oneOf` of each operation's request body and of each 201, and each 200.
fn variant_schemas(document: &Value) -> (Vec<String>, Vec<String>) {
    let schemas = &document["components"]["schemas"];
    let (mut requests, mut responses) = (Vec::new(), Vec::new());
    for operation in operations(document) {
        requests.extend(union_members(schemas, &operation["requestBody"]["content"][JSON]["schema"]));
        responses.extend(union_members(schemas, &operation["responses"]["201"]["content"][JSON]["schema"]));
        responses.extend(schema_name(&operation["responses"]["200"]["content"][JSON]["schema"]).map(str::to_owned));
    }
    (requests, responses)
}

fn operations(document: &Value) -> Vec<Value> {
    let Some(paths) = document["paths"].as_object() else { return vec![] };
    paths.values().filter_map(Value::as_object).flat_map(|item| item.values().cloned()).collect()
}

fn schema_name(reference: &Value) -> Option<&str> {
    reference["$ref"].as_str()?.strip_prefix("#/components/schemas/")
}

/// The schemas a `oneOf` names, given a reference to it and the document's `components.schemas`.
fn union_members(schemas: &Value, reference: &Value) -> Vec<String> {
    let Some(union) = schema_name(reference) else { return vec![] };
    let Some(members) = schemas[union]["oneOf"].as_array() else { return vec![] };
    members.iter().filter_map(schema_name).map(str::to_owned).collect()
}

fn mark_optional_nullable(object: &mut Map<String, Value>, require_all: bool) {
    let required: Vec<String> = object
        .get("required")
        .and_then(Value::as_array)
        .map(|names| names.iter().filter_map(|n| n.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    let Some(Value::Object(properties)) = object.get_mut("properties") else { return };
    let mut all = Vec::new();
    for (name, property) in properties.iter_mut() {
        all.push(Value::from(name.as_str()));
        if required.contains(name) {
            continue;
        }
        let Value::Object(property) = property else { continue };
        if property.contains_key("$ref") {
            // OpenAPI 3.0 ignores siblings of `$ref`; wrap it so `nullable` counts.
            let reference = property.remove("$ref").expect("checked");
            property.insert("allOf".to_owned(), json!([{ "$ref": reference }]));
        }
        property.insert("nullable".to_owned(), Value::Bool(true));
    }
    if require_all {
        object.insert("required".to_owned(), Value::Array(all));
    }
}

fn add_examples(document: &mut Value) {
    let schemas = document["components"]["schemas"].clone();
    let Some(paths) = document["paths"].as_object_mut() else { return };
    for operation in paths.values_mut().filter_map(Value::as_object_mut).flat_map(|item| item.values_mut()) {
        if let Some(request) = operation.get_mut("requestBody") {
            let request = &mut request["content"][JSON];
            let members = union_members(&schemas, &request["schema"]);
            request["examples"] = variant_examples(&schemas, &members);
        }
        let Some(responses) = operation["responses"].as_object_mut() else { continue };
        for (status, response) in responses.iter_mut() {
            let media = &mut response["content"][JSON];
            if status == "200" {
                continue;
            }
            if status == "201" {
                let members = union_members(&schemas, &media["schema"]);
                media["examples"] = variant_examples(&schemas, &members);
            } else if let Ok(status) = status.parse::<u16>() {
                media["examples"] = error_examples(status);
            }
        }
    }
}

fn variant_examples(schemas: &Value, members: &[String]) -> Value {
    let examples: Map<String, Value> = members
        .iter()
        .map(|name| {
            let summary = schemas[name]["description"].as_str().unwrap_or(name).split(':').next().unwrap_or(name);
            (name.clone(), json!({ "summary": summary.trim(), "value": schemas[name]["example"] }))
        })
        .collect();
    Value::Object(examples)
}

/// One example per error code of `status`, each built by the code path that builds real answers.
fn error_examples(status: u16) -> Value {
    let examples: Map<String, Value> = ErrorCode::ALL
        .into_iter()
        .filter(|code| code.status().as_u16() == status)
        .map(|code| {
            let error = match code {
                ErrorCode::MissingRequiredFields => {
                    ApiError::new(code).with_details(vec![FieldError::new("email", "missing", "is required")])
                }
                ErrorCode::InvalidRequest => ApiError::new(code)
                    .with_message("role: unknown field")
                    .with_details(vec![FieldError::new("role", "unknown_field", "unknown field")]),
                ErrorCode::EmailExists => ApiError::new(code).with_details(vec![FieldError::new(
                    "email",
                    "taken",
                    "a user with this email exists",
                )]),
                ErrorCode::UserIdExists => ApiError::new(code).with_details(vec![FieldError::new(
                    "userId",
                    "taken",
                    "a user with this userId exists",
                )]),
                ErrorCode::ValidationFailed => ApiError::validation(vec![
                    FieldError::new("contactEmail", "invalid_format", "must be an email address"),
                    FieldError::new("firstName", "too_long", "must be at most 100 characters"),
                ]),
                _ => ApiError::new(code),
            };
            let mut value = poem_openapi::types::ToJSON::to_json(&error.body()).unwrap_or_default();
            if code == ErrorCode::InternalError {
                value["id"] = Value::from("019ab2f4-c1d8-7e5f-9a3b-2c1d0e9f8a7b");
            }
            (code.as_str().to_owned(), json!({ "summary": code.default_message(), "value": value }))
        })
        .collect();
    Value::Object(examples)
}
