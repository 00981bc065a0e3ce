//! Reading users back: every `Location` a create answers with names the new user, readable with
//! the `users:read` scope.

use serde_json::{Value, json};
use users_api::keys::{self, Scope};

use crate::helpers::{Auth, assert_error, spawn_app, status_and_json};

/// Creates through `path` and returns the `Location` and the 201 body.
async fn create(app: &crate::helpers::TestApp, path: &str, body: Value) -> (String, Value) {
    let response = app.post_json(path, &body, Auth::Key).await;
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let (status, created) = status_and_json(response).await;
    assert_eq!(status, 201, "{created}");
    (location, created)
}

async fn get(app: &crate::helpers::TestApp, path: &str, auth: Auth<'_>) -> reqwest::Response {
    let request = app.client.get(format!("{}{path}", app.address));
    let request = match auth {
        Auth::Key => request.bearer_auth(&app.key),
        Auth::None => request,
        Auth::Header(value) => request.header("Authorization", value),
    };
    request.send().await.unwrap()
}

#[tokio::test]
async fn every_location_names_the_created_user_whichever_variant_created_it() {
    let app = spawn_app().await;
    let cases = [
        (
            "/users",
            json!({"email": "linked@example.com", "userId": "ext-9", "name": "L", "metadata": {"k": 1}}),
            "linked",
        ),
        ("/users", json!({"firstName": "C", "lastName": "D", "contactEmail": "contact@example.com"}), "contact"),
        ("/users", json!({"firstName": "P", "lastName": "Q", "email": "person@example.com"}), "person"),
        ("/v1/users", json!({"email": "member@example.com", "name": "M", "role": "admin"}), "member"),
        ("/v1/users", json!({"email": "signup@example.com", "password": "a fine passphrase"}), "signup"),
    ];
    for (path, body, created_via) in cases {
        let (location, created) = create(&app, path, body.clone()).await;
        let (status, user) = status_and_json(get(&app, &location, Auth::Key).await).await;
        assert_eq!(status, 200, "GET {location}: {user}");
        assert_eq!(user["created_via"], created_via, "{user}");
        let email = body.get("email").or(body.get("contactEmail")).unwrap();
        assert_eq!(&user["email"], email, "{user}");
        assert_eq!(user.as_object().unwrap().len(), 15, "every field, null where absent: {user}");
        assert!(user.get("password").is_none() && user.get("password_hash").is_none(), "{user}");
        // The same user by its integer id, whichever path created it.
        let (status, by_id) = status_and_json(get(&app, &format!("/users/{}", user["id"]), Auth::Key).await).await;
        assert_eq!((status.as_u16(), &by_id), (200, &user));
        // The identifiers agree with what the create answered.
        match created_via {
            "linked" => assert_eq!((&user["user_id"], &user["klaim_id"]), (&created["user_id"], &created["klaim_id"])),
            "contact" => assert_eq!(user["id"], created["userId"]),
            "person" => assert_eq!(user["id"], created["id"]),
            _ => assert!(created["id"].as_str().unwrap().ends_with(&user["uuid"].as_str().unwrap().replace('-', ""))),
        }
    }
    let (_, linked) = status_and_json(get(&app, "/users/1", Auth::Key).await).await;
    assert_eq!(
        (&linked["name"], &linked["metadata"], &linked["first_name"]),
        (&json!("L"), &json!({"k": 1}), &Value::Null)
    );
}

/// Creates sent at once are stored together, in one statement (group commit), which returns only
/// each row's id, UUID and metadata: each 201 still names its own row, and says what a read shows.
#[tokio::test]
async fn creates_stored_together_each_read_back_as_answered() {
    let app = spawn_app().await;
    let requests = (0..40).map(|i| {
        let app = &app;
        async move {
            let body = match i % 2 {
                0 => json!({"firstName": format!("F{i}"), "lastName": "L", "email": format!("Person{i}@Example.com")}),
                // Keys out of order: PostgreSQL's jsonb keeps its own.
                _ => json!({
                    "email": format!("linked{i}@example.com"),
                    "userId": format!("ext-{i}"),
                    "metadata": {"zeta": i, "alpha": {"b": 2.5, "a": [1, "x", null]}, "mid": 1e2},
                }),
            };
            (i, body.clone(), create(app, "/users", body).await)
        }
    });
    for (i, sent, (location, created)) in futures::future::join_all(requests).await {
        let (status, user) = status_and_json(get(&app, &location, Auth::Key).await).await;
        assert_eq!(status, 200, "#{i} GET {location}: {user}");
        assert_eq!(user["email"], sent["email"], "#{i}: {location} names its own row: {user}");
        match i % 2 {
            0 => {
                assert_eq!((&user["id"], &user["first_name"]), (&created["id"], &sent["firstName"]), "#{i}: {user}");
                assert_eq!(created["email"], sent["email"], "#{i}: {created}");
            }
            _ => {
                assert_eq!((&user["user_id"], &user["klaim_id"]), (&created["user_id"], &created["klaim_id"]));
                // As text, so in the same key order too.
                let (answered, read) = (created["metadata"].to_string(), user["metadata"].to_string());
                assert_eq!(answered, read, "#{i}: the 201 shows what a read shows");
                assert_eq!(user["metadata"]["zeta"], i, "#{i}: {user}");
            }
        }
    }
}

#[tokio::test]
async fn unknown_or_mismatched_ids_are_404_and_malformed_ones_400() {
    let app = spawn_app().await;
    let (member, _) = create(&app, "/v1/users", json!({"email": "m@example.com", "name": "M"})).await;
    let hex = member.rsplit('_').next().unwrap().to_owned();
    assert_error(get(&app, "/users/999", Auth::Key).await, 404, "not_found", &[], "no such integer id").await;
    let signup_prefix = format!("/v1/users/user_{hex}");
    assert_error(get(&app, &signup_prefix, Auth::Key).await, 404, "not_found", &[], "a member's UUID behind user_")
        .await;
    let unknown = format!("/v1/users/usr_{}", "0".repeat(32));
    assert_error(get(&app, &unknown, Auth::Key).await, 404, "not_found", &[], "unknown UUID").await;
    for malformed in ["/users/abc", "/v1/users/usr_XYZ", "/v1/users/nope"] {
        assert_error(get(&app, malformed, Auth::Key).await, 400, "invalid_request", &[], malformed).await;
    }
}

#[tokio::test]
async fn reading_needs_a_key_with_users_read() {
    let app = spawn_app().await;
    let (location, _) = create(&app, "/users", json!({"email": "r@example.com"})).await;
    let response = get(&app, &location, Auth::None).await;
    assert!(response.headers()["www-authenticate"].to_str().unwrap().starts_with("Bearer"));
    assert_error(response, 401, "unauthorized", &[], "no key").await;

    let db = sea_orm::Database::connect(&app.database_url).await.unwrap();
    let writer = keys::create(&db, "writer", &[Scope::UsersWrite], None).await.unwrap();
    let header = format!("Bearer {}", writer.expose());
    assert_error(get(&app, &location, Auth::Header(&header)).await, 403, "forbidden", &[], "write-only key").await;
    let reader = keys::create(&db, "reader", &[Scope::UsersRead], None).await.unwrap();
    let header = format!("Bearer {}", reader.expose());
    assert_eq!(get(&app, &location, Auth::Header(&header)).await.status(), 200);
}
