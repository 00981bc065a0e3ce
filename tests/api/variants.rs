//! Each of the five documented variants: its seed's own example, and every way its body can be
//! wrong (missing, mistyped, unknown and rule-breaking fields).

use serde_json::{Value, json};

use crate::helpers::{Auth, assert_error, spawn_app, status_and_json};

/// Checks an RFC 3339 UTC timestamp with milliseconds and returns it.
fn rfc3339(value: &Value) -> chrono::DateTime<chrono::Utc> {
    let text = value.as_str().unwrap_or_else(|| panic!("a timestamp string, got {value}"));
    assert!(text.ends_with('Z') && text.len() == 24, "RFC 3339 UTC with milliseconds: {text}");
    chrono::DateTime::parse_from_rfc3339(text).unwrap().to_utc()
}

#[tokio::test]
async fn linked_seed_example_returns_201_with_the_seed_shape() {
    let app = spawn_app().await;
    let response = app
        .post_users(&json!({"email": "test@email.com", "userId": "testUserId", "name": "Test API", "metadata": {"test": "field"}}))
        .await;
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let (status, mut body) = status_and_json(response).await;
    assert_eq!(status, 201, "{body}");
    let created_at = body["created_at"].as_i64().expect("created_at is epoch milliseconds");
    let klaim_id = body["klaim_id"].as_str().unwrap().to_owned();
    let (millis, suffix) = klaim_id.split_once('_').unwrap();
    assert_eq!(millis, created_at.to_string(), "klaim_id starts with created_at");
    assert!(suffix.len() == 5 && suffix.chars().all(|c| c.is_ascii_alphanumeric()), "{klaim_id}");
    body["created_at"] = json!(0);
    body["klaim_id"] = json!("");
    assert_eq!(
        body,
        json!({"message": "resource created successfully", "user_id": "testUserId", "klaim_id": "",
               "email": "test@email.com", "credit_balance": 0, "created_at": 0, "name": "Test API",
               "metadata": {"test": "field"}})
    );
    assert_eq!(location, "/users/1");
}

#[tokio::test]
async fn linked_with_only_email_gets_a_generated_user_id_and_nulls() {
    let app = spawn_app().await;
    let (status, body) = status_and_json(app.post_users(&json!({"email": "  only@example.com "})).await).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["email"], "only@example.com", "trimmed");
    assert!(uuid::Uuid::parse_str(body["user_id"].as_str().unwrap()).is_ok(), "{body}");
    assert_eq!(body["name"], Value::Null);
    assert_eq!(body["metadata"], Value::Null);
    assert_eq!(body.as_object().unwrap().len(), 8, "exactly the documented fields: {body}");
}

#[tokio::test]
async fn contact_seed_example_returns_201_with_the_seed_shape() {
    let app = spawn_app().await;
    let response =
        app.post_users(&json!({"firstName": "John", "lastName": "Doe", "contactEmail": "john.doe@example.com"})).await;
    assert_eq!(response.headers()["location"], "/users/1");
    let (status, body) = status_and_json(response).await;
    assert_eq!(status, 201);
    assert_eq!(
        body,
        json!({"userId": 1, "firstName": "John", "lastName": "Doe", "contactEmail": "john.doe@example.com"})
    );
}

#[tokio::test]
async fn person_seed_example_returns_201_with_the_seed_shape() {
    let app = spawn_app().await;
    let (status, body) = status_and_json(
        app.post_users(&json!({"lastName": "Meere", "firstName": "John", "email": "johnm@gmail.com"})).await,
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(body, json!({"lastName": "Meere", "firstName": "John", "email": "johnm@gmail.com", "id": 1}));
    // The seed's key order is kept too.
    let keys: Vec<_> = body.as_object().unwrap().keys().cloned().collect();
    assert_eq!(keys, ["lastName", "firstName", "email", "id"]);
}

#[tokio::test]
async fn member_seed_example_returns_201_with_the_seed_shape() {
    let app = spawn_app().await;
    let response = app
        .post_v1_users(&json!({"email": "user@example.com", "name": "John Doe", "role": "user",
                               "metadata": {"company": "Acme Inc", "department": "Engineering"}}))
        .await;
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let (status, mut body) = status_and_json(response).await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_str().unwrap().to_owned();
    let uuid = uuid::Uuid::parse_str(id.strip_prefix("usr_").expect("usr_ prefix")).unwrap();
    assert_eq!(uuid.get_version_num(), 7);
    assert_eq!(location, format!("/v1/users/{id}"));
    assert_eq!(rfc3339(&body["created_at"]), rfc3339(&body["updated_at"]));
    for key in ["id", "created_at", "updated_at"] {
        body[key] = json!("");
    }
    assert_eq!(
        body,
        json!({"id": "", "email": "user@example.com", "name": "John Doe", "role": "user",
               "metadata": {"company": "Acme Inc", "department": "Engineering"},
               "created_at": "", "updated_at": ""})
    );
}

#[tokio::test]
async fn member_role_defaults_to_user_and_metadata_to_null() {
    let app = spawn_app().await;
    let (status, body) =
        status_and_json(app.post_v1_users(&json!({"email": "m@example.com", "name": "M"})).await).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["role"], "user");
    assert_eq!(body["metadata"], Value::Null);
    let (status, body) =
        status_and_json(app.post_v1_users(&json!({"email": "a@example.com", "name": "A", "role": "admin"})).await)
            .await;
    assert_eq!((status.as_u16(), &body["role"]), (201, &json!("admin")));
}

#[tokio::test]
async fn signup_seed_example_returns_201_without_a_key() {
    let app = spawn_app().await;
    let response = app
        .post_json(
            "/v1/users",
            &json!({"email": "newuser@example.com", "password": "a-strong-password-here", "name": "Jane Doe"}),
            Auth::None,
        )
        .await;
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let (status, mut body) = status_and_json(response).await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_str().unwrap().to_owned();
    assert!(uuid::Uuid::parse_str(id.strip_prefix("user_").expect("user_ prefix")).is_ok());
    assert_eq!(location, format!("/v1/users/{id}"));
    rfc3339(&body["created_at"]);
    for key in ["id", "created_at", "updated_at"] {
        body[key] = json!("");
    }
    assert_eq!(
        body,
        json!({"id": "", "email": "newuser@example.com", "name": "Jane Doe", "status": "active",
               "created_at": "", "updated_at": ""})
    );
    let stored =
        app.count("SELECT COUNT(*) FROM users WHERE password_hash LIKE '$argon2id$v=19$m=19456,t=2,p=1$%'").await;
    assert_eq!(stored, 1, "the password is stored as an Argon2id PHC string");
}

#[tokio::test]
async fn missing_fields_are_each_named() {
    let app = spawn_app().await;
    let cases: &[(&str, Value, &[&str])] = &[
        ("/users", json!({}), &["email"]),
        ("/users", json!({"userId": "u1", "name": "n"}), &["email"]),
        ("/users", json!({"email": null}), &["email"]),
        ("/users", json!({"contactEmail": "a@example.com"}), &["firstName", "lastName"]),
        ("/users", json!({"contactEmail": null, "firstName": "A"}), &["lastName", "contactEmail"]),
        ("/users", json!({"firstName": "A"}), &["lastName", "email"]),
        ("/users", json!({"lastName": "B", "firstName": null}), &["firstName", "email"]),
        ("/v1/users", json!({}), &["email", "name"]),
        ("/v1/users", json!({"email": "a@example.com"}), &["name"]),
        ("/v1/users", json!({"password": "long enough pass"}), &["email"]),
        ("/v1/users", json!({"email": "a@example.com", "password": null}), &["password"]),
    ];
    for (path, body, missing) in cases {
        let details: Vec<(&str, &str)> = missing.iter().map(|field| (*field, "missing")).collect();
        let case = format!("{path} {body}");
        assert_error(app.post_json(path, body, Auth::Key).await, 400, "missing_required_fields", &details, &case).await;
    }
    assert_eq!(app.count("SELECT COUNT(*) FROM users").await, 0);
}

#[tokio::test]
async fn values_of_the_wrong_json_type_are_400_not_coerced() {
    let app = spawn_app().await;
    let cases: &[(&str, Value, &[&str])] = &[
        ("/users", json!({"email": 5}), &["email"]),
        ("/users", json!({"email": "a@example.com", "name": true}), &["name"]),
        ("/users", json!({"email": "a@example.com", "userId": 42}), &["userId"]),
        ("/users", json!({"email": "a@example.com", "metadata": "x"}), &["metadata"]),
        ("/users", json!({"email": "a@example.com", "metadata": [1, 2]}), &["metadata"]),
        (
            "/users",
            json!({"firstName": 1, "lastName": ["B"], "contactEmail": {}}),
            &["firstName", "lastName", "contactEmail"],
        ),
        ("/users", json!({"firstName": "A", "lastName": "B", "email": 1.5}), &["email"]),
        (
            "/users",
            json!({"firstName": false, "lastName": {"x": 1}, "email": "a@example.com"}),
            &["lastName", "firstName"],
        ),
        ("/v1/users", json!({"email": "a@example.com", "name": "N", "role": 1}), &["role"]),
        ("/v1/users", json!({"email": ["a@example.com"], "name": 7, "metadata": true}), &["email", "name", "metadata"]),
        ("/v1/users", json!({"email": "a@example.com", "password": 12345678}), &["password"]),
        ("/v1/users", json!({"email": {}, "password": "long enough pass", "name": 3}), &["email", "name"]),
    ];
    for (path, body, fields) in cases {
        let details: Vec<(&str, &str)> = fields.iter().map(|field| (*field, "invalid_type")).collect();
        let case = format!("{path} {body}");
        assert_error(app.post_json(path, body, Auth::Key).await, 400, "invalid_request", &details, &case).await;
    }
    assert_eq!(app.count("SELECT COUNT(*) FROM users").await, 0);
}

#[tokio::test]
async fn unknown_keys_are_refused_which_stops_mass_assignment() {
    let app = spawn_app().await;
    let cases: &[(&str, Value, &[&str])] = &[
        ("/users", json!({"email": "a@example.com", "role": "admin"}), &["role"]),
        ("/users", json!({"email": "a@example.com", "credit_balance": 1000}), &["credit_balance"]),
        ("/users", json!({"email": "a@example.com", "id": 1, "klaim_id": "x"}), &["id", "klaim_id"]),
        (
            "/users",
            json!({"firstName": "A", "lastName": "B", "contactEmail": "a@example.com", "email": "b@example.com"}),
            &["email"],
        ),
        (
            "/users",
            json!({"firstName": "A", "lastName": "B", "email": "a@example.com", "status": "active"}),
            &["status"],
        ),
        ("/v1/users", json!({"email": "a@example.com", "password": "long enough pass", "role": "admin"}), &["role"]),
        (
            "/v1/users",
            json!({"email": "a@example.com", "password": "long enough pass", "status": "banned", "id": "user_1"}),
            &["status", "id"],
        ),
        ("/v1/users", json!({"email": "a@example.com", "name": "N", "credit_balance": 5}), &["credit_balance"]),
    ];
    for (path, body, fields) in cases {
        let details: Vec<(&str, &str)> = fields.iter().map(|field| (*field, "unknown_field")).collect();
        let case = format!("{path} {body}");
        assert_error(app.post_json(path, body, Auth::Key).await, 400, "invalid_request", &details, &case).await;
    }
    assert_eq!(app.count("SELECT COUNT(*) FROM users").await, 0, "no partial record of a refused body");
}

#[tokio::test]
async fn rule_breaks_are_422_listing_every_failing_field() {
    let app = spawn_app().await;
    let long = |n: usize| "x".repeat(n);
    /// Path, body, and the `(field, rule)` pairs the 422 must list.
    type Case<'a> = (&'a str, Value, Vec<(&'a str, &'a str)>);
    let cases: Vec<Case> = vec![
        ("/users", json!({"email": "not-an-email"}), vec![("email", "invalid_format")]),
        ("/users", json!({"email": "   "}), vec![("email", "blank")]),
        ("/users", json!({"email": "a@b"}), vec![("email", "invalid_format")]),
        ("/users", json!({"email": format!("{}@example.com", long(65))}), vec![("email", "too_long")]),
        ("/users", json!({"email": format!("a@{}.com", long(250))}), vec![("email", "too_long")]),
        (
            "/users",
            json!({"email": "a@example.com", "userId": " ", "name": long(201)}),
            vec![("userId", "blank"), ("name", "too_long")],
        ),
        ("/users", json!({"email": "a@example.com", "userId": long(129)}), vec![("userId", "too_long")]),
        (
            "/users",
            json!({"email": "x", "metadata": {"k": long(501)}}),
            vec![("email", "too_short"), ("metadata.k", "too_long")],
        ),
        (
            "/users",
            json!({"email": "a@example.com", "metadata": (0..51).map(|i| (format!("k{i}"), json!(i))).collect::<serde_json::Map<_, _>>()}),
            vec![("metadata", "too_many_keys")],
        ),
        (
            "/users",
            json!({"firstName": "", "lastName": long(101), "contactEmail": "bad"}),
            vec![("firstName", "blank"), ("lastName", "too_long"), ("contactEmail", "invalid_format")],
        ),
        (
            "/users",
            json!({"firstName": "A", "lastName": "\t", "email": "a@.com"}),
            vec![("lastName", "blank"), ("email", "invalid_format")],
        ),
        (
            "/users",
            json!({"firstName": "A\u{0}", "lastName": "B", "email": "a@example.com"}),
            vec![("firstName", "invalid_format")],
        ),
        (
            "/users",
            json!({"email": "a@example.com", "metadata": {"k": "a\u{0}b", "n": {"deep": ["\u{0}"]}}}),
            vec![("metadata.k", "invalid_format"), ("metadata.n", "invalid_format")],
        ),
        (
            "/v1/users",
            json!({"email": "a@example.com", "name": "", "role": "superuser"}),
            vec![("name", "blank"), ("role", "not_allowed")],
        ),
        ("/v1/users", json!({"email": "a@example.com", "password": "short"}), vec![("password", "too_short")]),
        ("/v1/users", json!({"email": "a@example.com", "password": long(129)}), vec![("password", "too_long")]),
        (
            "/v1/users",
            json!({"email": "a@example.com", "password": "password1"}),
            vec![("password", "common_password")],
        ),
        (
            "/v1/users",
            json!({"email": "Jane@Example.com", "password": "jane@example.com"}),
            vec![("password", "same_as_email")],
        ),
        (
            "/v1/users",
            json!({"email": "bad", "password": "fine passphrase", "name": ""}),
            vec![("email", "invalid_format"), ("name", "blank")],
        ),
    ];
    for (path, body, details) in &cases {
        let case = format!("{path} {}", body.to_string().chars().take(120).collect::<String>());
        assert_error(app.post_json(path, body, Auth::Key).await, 422, "validation_failed", details, &case).await;
    }
    assert_eq!(app.count("SELECT COUNT(*) FROM users").await, 0);
}

#[tokio::test]
async fn lengths_count_characters_not_bytes() {
    let app = spawn_app().await;
    // 100 characters of three bytes each, and astral characters (two UTF-16 units each).
    let body = json!({"firstName": "語".repeat(100), "lastName": "😀".repeat(100), "email": "wide@example.com"});
    let (status, created) = status_and_json(app.post_users(&body).await).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["firstName"], body["firstName"]);
    let password = "é".repeat(128);
    let (status, created) = status_and_json(
        app.post_json("/v1/users", &json!({"email": "p@example.com", "password": password}), Auth::None).await,
    )
    .await;
    assert_eq!(status, 201, "128 two-byte characters is within the bound: {created}");
}

#[tokio::test]
async fn a_password_never_comes_back_in_any_answer() {
    let app = spawn_app().await;
    let password = "Unique-Secret-Passphrase-7731";
    let answers = [
        app.post_json("/v1/users", &json!({"email": "s@example.com", "password": password}), Auth::None).await,
        app.post_json("/v1/users", &json!({"email": "s@example.com", "password": password}), Auth::None).await,
        app.post_json("/v1/users", &json!({"email": "bad", "password": password}), Auth::None).await,
        app.post_json("/v1/users", &json!({"email": "t@example.com", "password": password, "x": 1}), Auth::None).await,
    ];
    let mut statuses = Vec::new();
    for answer in answers {
        statuses.push(answer.status().as_u16());
        let text = answer.text().await.unwrap();
        assert!(!text.contains(password), "{text}");
    }
    assert_eq!(statuses, [201, 409, 422, 400]);
}
