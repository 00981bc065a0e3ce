//! What serves the contract: the spec (committed, served, and complete), Swagger UI, and the
//! JSON error body for everything outside the operations' own rules.

use serde_json::Value;

use crate::helpers::{Auth, assert_error, spawn_app};

fn committed(file: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi").join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

#[test]
fn committed_spec_is_what_the_code_derives() {
    let document = users_api::spec::document();
    // On failure: `cargo run -- openapi` regenerates both files.
    assert!(
        committed("openapi.json") == users_api::spec::to_json(&document),
        "openapi/openapi.json is stale: run `cargo run -- openapi` and commit the result"
    );
    assert!(
        committed("openapi.yaml") == users_api::spec::to_yaml(&document),
        "openapi/openapi.yaml is stale: run `cargo run -- openapi` and commit the result"
    );
}

#[tokio::test]
async fn served_spec_is_the_committed_one() {
    let app = spawn_app().await;
    let json = app.get("/openapi.json").await;
    assert_eq!(json.status(), 200);
    assert!(json.headers()["content-type"].to_str().unwrap().starts_with("application/json"));
    assert!(json.text().await.unwrap() == committed("openapi.json"), "/openapi.json differs from openapi/openapi.json");
    let yaml = app.get("/openapi.yaml").await;
    assert_eq!(yaml.status(), 200);
    assert!(yaml.text().await.unwrap() == committed("openapi.yaml"), "/openapi.yaml differs from openapi/openapi.yaml");
}

#[test]
fn every_operation_is_documented_with_every_status_and_an_example_per_variant() {
    let document = users_api::spec::document();
    let expected = [
        ("/users", "createUser", vec!["NewContactUser", "NewPersonUser", "NewUserWithExternalId"]),
        ("/v1/users", "createUserV1", vec!["NewSignUpUser", "NewUserByOperator"]),
    ];
    for (path, operation_id, variants) in expected {
        let operation = &document["paths"][path]["post"];
        assert_eq!(operation["operationId"], operation_id);
        for key in ["summary", "description"] {
            assert!(operation[key].as_str().is_some_and(|s| !s.is_empty()), "{path} lacks {key}");
        }
        assert_eq!(operation["tags"], serde_json::json!(["Users"]), "{path}");
        let request = &operation["requestBody"]["content"]["application/json"];
        let examples: Vec<&String> = request["examples"].as_object().unwrap().keys().collect();
        assert_eq!(examples, variants, "{path}: one example per variant");
        let members: Vec<&str> = document["components"]["schemas"]
            [request["schema"]["$ref"].as_str().unwrap().rsplit('/').next().unwrap()]["oneOf"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["$ref"].as_str().unwrap().rsplit('/').next().unwrap())
            .collect();
        assert_eq!(members, variants, "{path}: the request body is a oneOf of the variants");
        for status in ["201", "400", "401", "403", "409", "413", "415", "422", "429", "500", "503"] {
            let response = &operation["responses"][status];
            assert!(response["description"].is_string(), "{path} {status} undocumented");
            let media = &response["content"]["application/json"];
            assert!(media["schema"]["$ref"].is_string(), "{path} {status} has no schema");
            assert!(media["examples"].as_object().is_some_and(|e| !e.is_empty()), "{path} {status} has no example");
        }
        assert!(operation["responses"]["201"]["headers"]["Location"].is_object(), "{path}: Location");
        assert!(operation["responses"]["401"]["headers"]["WWW-Authenticate"].is_object(), "{path}: WWW-Authenticate");
        for header in ["Retry-After", "RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"] {
            assert!(operation["responses"]["429"]["headers"][header].is_object(), "{path}: 429 {header}");
        }
    }
    assert_eq!(
        document["paths"]["/v1/users"]["post"]["security"],
        serde_json::json!([{"bearerAuth": []}, {}]),
        "public signup"
    );
    assert_eq!(document["paths"]["/users"]["post"]["security"], serde_json::json!([{"bearerAuth": []}]));
}

#[test]
fn every_schema_property_has_a_description_and_objects_refuse_extra_keys() {
    let document = users_api::spec::document();
    for (name, schema) in document["components"]["schemas"].as_object().unwrap() {
        let Some(properties) = schema["properties"].as_object() else { continue };
        assert_eq!(schema["additionalProperties"], Value::Bool(false), "{name}");
        for (property, definition) in properties {
            // A bare reference is described by the schema it names.
            let described = match definition["$ref"].as_str() {
                Some(reference) => &document["components"]["schemas"][reference.rsplit('/').next().unwrap()],
                None => definition,
            };
            assert!(described["description"].as_str().is_some_and(|d| !d.is_empty()), "{name}.{property}");
            assert!(definition.get("allOf").is_none(), "{name}.{property}: no allOf wrappers (generators refuse them)");
        }
    }
    let schemas = &document["components"]["schemas"];
    let email = &schemas["NewContactUser"]["properties"]["contactEmail"];
    assert_eq!((&email["format"], &email["minLength"], &email["maxLength"]), (&"email".into(), &3.into(), &254.into()));
    let name = &schemas["NewPersonUser"]["properties"]["firstName"];
    assert_eq!((&name["minLength"], &name["maxLength"]), (&1.into(), &100.into()));
    let password = &schemas["NewSignUpUser"]["properties"]["password"];
    assert_eq!(
        (&password["minLength"], &password["maxLength"], &password["writeOnly"]),
        (&8.into(), &128.into(), &true.into())
    );
    assert_eq!(schemas["NewUserByOperator"]["properties"]["role"]["enum"], serde_json::json!(["user", "admin"]));
    assert_eq!(schemas["NewUserWithExternalId"]["properties"]["metadata"]["maxProperties"], 50);
    // Each 201 shape requires every field it has, so that generated clients tell them apart.
    for (shape, nullable) in
        [("LinkedUser", vec!["name", "metadata"]), ("MemberUser", vec!["metadata"]), ("SignUpUser", vec!["name"])]
    {
        let schema = &schemas[shape];
        assert_eq!(
            schema["required"].as_array().unwrap().len(),
            schema["properties"].as_object().unwrap().len(),
            "{shape}"
        );
        for field in nullable {
            assert_eq!(schema["properties"][field]["nullable"], true, "{shape}.{field}");
        }
    }
}

#[tokio::test]
async fn root_redirects_to_swagger_ui_which_inlines_the_served_spec() {
    let app = spawn_app().await;
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let root = client.get(format!("{}/", app.address)).send().await.unwrap();
    assert!(root.status().is_redirection());
    assert_eq!(root.headers()["location"], "/docs");
    let docs = app.get("/docs").await;
    assert_eq!(docs.status(), 200);
    assert_eq!(docs.headers()["content-type"], "text/html; charset=utf-8");
    let html = docs.text().await.unwrap();
    // Built at the first request, then served as built.
    assert_eq!(app.get("/docs").await.text().await.unwrap(), html);
    assert!(html.contains("SwaggerUIBundle"), "Swagger UI's own script is built in");
    assert!(!html.contains("<script src=\"http"), "no asset is fetched from the network");
    let served: Value = serde_json::from_str(&committed("openapi.json")).unwrap();
    assert!(html.contains(&serde_json::to_string(&served).unwrap()), "the page inlines the refined spec");
}

#[tokio::test]
async fn unknown_paths_and_methods_get_the_json_error_body() {
    let app = spawn_app().await;
    assert_error(app.get("/nothing-here").await, 404, "not_found", &[], "unknown path").await;
    let wrong_method = app.get("/users").await;
    assert_eq!(wrong_method.headers()["allow"], "POST", "a 405 says what is allowed (RFC 9110)");
    assert_error(wrong_method, 405, "method_not_allowed", &[], "GET /users").await;
    let wrong_method = app.post_raw("/openapi.json", None, vec![], Auth::None).await;
    assert_eq!(wrong_method.headers()["allow"], "GET");
    assert_error(wrong_method, 405, "method_not_allowed", &[], "POST /openapi.json").await;
}

#[tokio::test]
async fn content_type_other_than_json_is_415() {
    let app = spawn_app().await;
    let body = br#"{"email":"a@example.com"}"#.to_vec();
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("application/json; charset=latin1"),
        Some("application/xml"),
    ] {
        let response = app.post_raw("/users", content_type, body.clone(), Auth::Key).await;
        assert_error(response, 415, "unsupported_media_type", &[], &format!("{content_type:?}")).await;
    }
    for (i, accepted) in ["application/json", "application/json; charset=utf-8", "Application/JSON; charset=UTF-8"]
        .into_iter()
        .enumerate()
    {
        let response = app
            .post_raw("/users", Some(accepted), format!(r#"{{"email":"ct{i}@example.com"}}"#).into_bytes(), Auth::Key)
            .await;
        assert_eq!(response.status(), 201, "{accepted}");
    }
}

#[tokio::test]
async fn bodies_over_the_limit_are_413_whether_declared_or_streamed() {
    let app = spawn_app().await;
    let big = format!(r#"{{"email":"a@example.com","name":"{}"}}"#, "x".repeat(70 * 1024)).into_bytes();
    assert_error(
        app.post_raw("/users", Some("application/json"), big.clone(), Auth::Key).await,
        413,
        "payload_too_large",
        &[],
        "declared",
    )
    .await;
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = big.chunks(8192).map(|c| Ok(c.to_vec())).collect();
    let streamed = app
        .client
        .post(format!("{}/users", app.address))
        .bearer_auth(&app.key)
        .header("Content-Type", "application/json")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_error(streamed, 413, "payload_too_large", &[], "chunked").await;
    assert_eq!(app.count("SELECT COUNT(*) FROM users").await, 0);
}

#[tokio::test]
async fn malformed_bodies_are_400_invalid_request() {
    let app = spawn_app().await;
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("not JSON", b"email=a@example.com".to_vec()),
        ("truncated", br#"{"email": "a@example.com""#.to_vec()),
        ("an array", b"[1, 2]".to_vec()),
        ("a string", br#""a@example.com""#.to_vec()),
        ("null", b"null".to_vec()),
        ("invalid UTF-8", b"{\"email\": \"a\xff@example.com\"}".to_vec()),
        ("deeply nested", deep.into_bytes()),
        ("trailing garbage", br#"{"email": "a@example.com"} x"#.to_vec()),
    ];
    for (case, body) in cases {
        assert_error(
            app.post_raw("/users", Some("application/json"), body, Auth::Key).await,
            400,
            "invalid_request",
            &[],
            case,
        )
        .await;
    }
    // A NUL inside a string is well-formed JSON: the rule refuses it (422), the store never sees it.
    let nul = app
        .post_raw("/users", Some("application/json"), br#"{"email":"a\u0000@example.com"}"#.to_vec(), Auth::Key)
        .await;
    assert_error(nul, 422, "validation_failed", &[("email", "invalid_format")], "NUL").await;
    assert_eq!(app.count("SELECT COUNT(*) FROM users").await, 0);
}
