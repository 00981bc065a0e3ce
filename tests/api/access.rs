//! Who may create users: bearer keys and their scopes, revocation and expiry, public signup, the
//! development switch, the bootstrap key, and the `keys` command line against a running server.

use std::{process::Output, time::Duration};

use chrono::Utc;
use reqwest::Response;
use sea_orm::{Database, DatabaseConnection};
use serde_json::{Value, json};
use users_api::keys::{self, ApiKeySecret, BOOTSTRAP_KEY_NAME, Scope};

use crate::helpers::{Auth, TestApp, assert_error, create_until_refused, spawn_app, spawn_app_with, status_and_json};

/// The challenge of a 401 when no key was sent.
const NO_KEY_CHALLENGE: &str = "Bearer";
/// The challenge of a 401 when a bearer key was sent and refused (RFC 6750 `invalid_token`).
const INVALID_TOKEN_CHALLENGE: &str = r#"Bearer error="invalid_token""#;

fn linked(email: &str) -> Value {
    json!({"email": email})
}

fn member(email: &str) -> Value {
    json!({"email": email, "name": "Member Name"})
}

fn signup(email: &str) -> Value {
    json!({"email": email, "password": "a-strong-passphrase"})
}

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

/// Asserts a 401 `unauthorized` whose `WWW-Authenticate` is a `Bearer` challenge, and exactly
/// `challenge` when one is given.
async fn assert_unauthorized(response: Response, challenge: Option<&str>, case: &str) {
    let header = response.headers().get("www-authenticate").map(|value| value.to_str().unwrap().to_owned());
    assert!(header.as_deref().is_some_and(|h| h.starts_with("Bearer")), "{case}: WWW-Authenticate is {header:?}");
    if let Some(challenge) = challenge {
        assert_eq!(header.as_deref(), Some(challenge), "{case}: WWW-Authenticate");
    }
    assert_error(response, 401, "unauthorized", &[], case).await;
}

/// A way of calling without a usable key.
struct Unusable {
    case: &'static str,
    /// The `Authorization` header; none when `None`.
    header: Option<String>,
    /// The exact challenge the 401 carries; any `Bearer` one when `None`.
    challenge: Option<&'static str>,
}

/// Every way of calling without a usable key: no header, another scheme, an empty token, a
/// malformed key, and a well-formed key the service does not know. Where no bearer token was
/// sent, RFC 6750 (3.1) would rather have no `error=` in the challenge, while a refused token is
/// `invalid_token`; those cases accept any `Bearer` challenge instead of pinning either.
fn unusable_credentials(app: &TestApp) -> Vec<Unusable> {
    let unknown = ApiKeySecret::generate();
    let cases = [
        ("no Authorization header", None, Some(NO_KEY_CHALLENGE)),
        ("Basic scheme", Some("Basic dXNlcjpwYXNzd29yZA==".to_owned()), None),
        ("Basic scheme carrying a valid key", Some(format!("Basic {}", app.key)), None),
        ("Token scheme carrying a valid key", Some(format!("Token {}", app.key)), None),
        ("Bearer with an empty token", Some("Bearer ".to_owned()), None),
        ("Bearer with no token at all", Some("Bearer".to_owned()), None),
        ("a valid key with no scheme", Some(app.key.clone()), None),
        ("a malformed key: too short", Some(bearer("uk_short")), Some(INVALID_TOKEN_CHALLENGE)),
        (
            "a malformed key: no uk_ prefix",
            Some(bearer("not_a_key_0123456789abcdefghijklmnopqrstuvwxyz")),
            Some(INVALID_TOKEN_CHALLENGE),
        ),
        ("a malformed key: not base62", Some(bearer(&format!("uk_{}", "-".repeat(40)))), Some(INVALID_TOKEN_CHALLENGE)),
        (
            "a malformed key: over 256 characters",
            Some(bearer(&format!("uk_{}", "a".repeat(300)))),
            Some(INVALID_TOKEN_CHALLENGE),
        ),
        ("a well-formed but unknown key", Some(bearer(unknown.expose())), Some(INVALID_TOKEN_CHALLENGE)),
        (
            "an unknown key with a lower-case scheme",
            Some(format!("bearer {}", unknown.expose())),
            Some(INVALID_TOKEN_CHALLENGE),
        ),
        (
            "the valid key with one character more",
            Some(bearer(&format!("{}x", app.key))),
            Some(INVALID_TOKEN_CHALLENGE),
        ),
    ];
    cases.into_iter().map(|(case, header, challenge)| Unusable { case, header, challenge }).collect()
}

impl Unusable {
    fn auth(&self) -> Auth<'_> {
        self.header.as_deref().map_or(Auth::None, Auth::Header)
    }
}

/// A connection of the test's own to the server's database, for the `keys` functions.
async fn connect(app: &TestApp) -> DatabaseConnection {
    Database::connect(&app.database_url).await.expect("the test database is reachable")
}

/// Runs the real binary's `keys <args>` on the app's database, on a blocking thread so that the
/// server, which shares the test's runtime, keeps serving meanwhile.
async fn keys_cli(app: &TestApp, args: &[&str]) -> Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_users-api"));
    command.arg("keys").args(args).env("DATABASE_URL", &app.database_url).env_remove("USERS_API_KEY");
    tokio::task::spawn_blocking(move || command.output()).await.unwrap().expect("the binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).expect("UTF-8 output")
}

/// The whitespace-separated columns of the `keys list` row of the key named `name`.
fn list_row(list: &str, name: &str) -> Vec<String> {
    list.lines()
        .map(|line| line.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .find(|columns| columns.first().is_some_and(|first| first == name))
        .unwrap_or_else(|| panic!("a row for {name:?} in:\n{list}"))
}

#[tokio::test]
async fn create_user_without_a_usable_key_is_401_with_www_authenticate() {
    let app = spawn_app().await;
    for (i, unusable) in unusable_credentials(&app).iter().enumerate() {
        let response = app.post_json("/users", &linked(&format!("u{i}@example.com")), unusable.auth()).await;
        assert_unauthorized(response, unusable.challenge, &format!("POST /users, {}", unusable.case)).await;
    }
    assert_eq!(app.count("SELECT COUNT(*) FROM users").await, 0, "no user was created");
}

#[tokio::test]
async fn member_without_a_usable_key_is_401_with_www_authenticate() {
    let app = spawn_app().await;
    for (i, unusable) in unusable_credentials(&app).iter().enumerate() {
        let response = app.post_json("/v1/users", &member(&format!("m{i}@example.com")), unusable.auth()).await;
        assert_unauthorized(response, unusable.challenge, &format!("POST /v1/users Member, {}", unusable.case)).await;
    }
    assert_eq!(app.count("SELECT COUNT(*) FROM users").await, 0, "no user was created");
}

#[tokio::test]
async fn the_key_is_checked_before_the_body_so_a_bad_body_without_a_key_is_401() {
    let app = spawn_app().await;
    let json = Some("application/json");
    let cases: &[(&str, Option<&str>, &str, Auth<'_>, &str)] = &[
        ("not JSON", json, r#"{"email":"#, Auth::None, NO_KEY_CHALLENGE),
        ("an empty body", json, "", Auth::None, NO_KEY_CHALLENGE),
        ("a JSON array", json, "[]", Auth::None, NO_KEY_CHALLENGE),
        ("a missing field", json, "{}", Auth::None, NO_KEY_CHALLENGE),
        ("a wrong type", json, r#"{"email": 5}"#, Auth::None, NO_KEY_CHALLENGE),
        ("an unknown field", json, r#"{"email": "a@example.com", "role": "admin"}"#, Auth::None, NO_KEY_CHALLENGE),
        ("a rule break", json, r#"{"email": "not-an-email"}"#, Auth::None, NO_KEY_CHALLENGE),
        ("no Content-Type", None, r#"{"email": "a@example.com"}"#, Auth::None, NO_KEY_CHALLENGE),
        ("a text/plain body", Some("text/plain"), r#"{"email": "a@example.com"}"#, Auth::None, NO_KEY_CHALLENGE),
        ("not JSON, a malformed key", json, "nonsense", Auth::Header("Bearer uk_short"), INVALID_TOKEN_CHALLENGE),
        (
            "an unknown field, a malformed key",
            json,
            r#"{"email": "a@example.com", "x": 1}"#,
            Auth::Header("Bearer uk_short"),
            INVALID_TOKEN_CHALLENGE,
        ),
    ];
    for (what, content_type, body, auth, challenge) in cases {
        let response = app.post_raw("/users", *content_type, body.as_bytes().to_vec(), *auth).await;
        assert_unauthorized(response, Some(*challenge), &format!("POST /users with {what}")).await;
    }
    assert_eq!(app.count("SELECT COUNT(*) FROM users").await, 0);
}

#[tokio::test]
async fn a_key_without_users_write_is_403_forbidden_on_both_paths() {
    let app = spawn_app().await;
    let db = connect(&app).await;
    let reader = keys::create(&db, "reader", &[Scope::UsersRead], None).await.unwrap();
    let reader = bearer(reader.expose());
    let cases = [
        ("POST /users", "/users", linked("r1@example.com")),
        ("POST /v1/users Member", "/v1/users", member("r2@example.com")),
        ("POST /v1/users SignUp, though signup is public", "/v1/users", signup("r3@example.com")),
    ];
    for (case, path, body) in &cases {
        assert_error(app.post_json(path, body, Auth::Header(&reader)).await, 403, "forbidden", &[], case).await;
    }
    assert_eq!(app.count("SELECT COUNT(*) FROM users").await, 0);
    // The same kind of key, with the scope, is let in: the 403 is about the scope alone.
    let writer = keys::create(&db, "writer", &[Scope::UsersWrite], None).await.unwrap();
    for (case, path, body) in &cases {
        let (status, body) =
            status_and_json(app.post_json(path, body, Auth::Header(&bearer(writer.expose()))).await).await;
        assert_eq!(status, 201, "{case} with users:write: {body}");
    }
}

#[tokio::test]
async fn a_revoked_key_is_401_from_its_next_request() {
    let app = spawn_app().await;
    let db = connect(&app).await;
    let key = keys::create(&db, "temporary", &[Scope::UsersWrite], None).await.unwrap();
    let header = bearer(key.expose());
    let (status, body) =
        status_and_json(app.post_json("/users", &linked("before@example.com"), Auth::Header(&header)).await).await;
    assert_eq!(status, 201, "the key works before it is revoked: {body}");

    assert!(keys::revoke(&db, "temporary").await.unwrap(), "the key is found and revoked");
    let accepted_after_revoking = refused_within_the_key_cache_bound(&app, &header).await;

    let cases = [
        ("POST /users", "/users", linked("after1@example.com")),
        ("POST /v1/users Member", "/v1/users", member("after2@example.com")),
        ("POST /v1/users SignUp does not fall back to public signup", "/v1/users", signup("after3@example.com")),
    ];
    for (case, path, body) in &cases {
        let response = app.post_json(path, body, Auth::Header(&header)).await;
        assert_unauthorized(response, Some(INVALID_TOKEN_CHALLENGE), &format!("revoked key, {case}")).await;
    }
    assert_eq!(app.count("SELECT COUNT(*) FROM users").await, 1 + accepted_after_revoking);
}

/// Asserts that the key of `header`, just revoked, is refused within the key cache's bound, and
/// returns how many creates it still made.
async fn refused_within_the_key_cache_bound(app: &TestApp, header: &str) -> i64 {
    let (refusal, accepted) = create_until_refused(&app.client, &format!("{}/users", app.address), header).await;
    assert_unauthorized(refusal, Some(INVALID_TOKEN_CHALLENGE), "the revoked key").await;
    accepted
}

#[tokio::test]
async fn an_expired_key_is_401_and_one_not_yet_expired_works() {
    let app = spawn_app().await;
    let db = connect(&app).await;
    let expired = keys::create(&db, "expired", &[Scope::UsersWrite], Some(Utc::now() - chrono::Duration::minutes(1)))
        .await
        .unwrap();
    let cases = [
        ("POST /users", "/users", linked("e1@example.com")),
        ("POST /v1/users Member", "/v1/users", member("e2@example.com")),
        ("POST /v1/users SignUp", "/v1/users", signup("e3@example.com")),
    ];
    for (case, path, body) in &cases {
        let response = app.post_json(path, body, Auth::Header(&bearer(expired.expose()))).await;
        assert_unauthorized(response, Some(INVALID_TOKEN_CHALLENGE), &format!("expired key, {case}")).await;
    }
    assert_eq!(app.count("SELECT COUNT(*) FROM users").await, 0);

    let later =
        keys::create(&db, "later", &[Scope::UsersWrite], Some(Utc::now() + chrono::Duration::hours(1))).await.unwrap();
    for (case, path, body) in &cases {
        let (status, body) =
            status_and_json(app.post_json(path, body, Auth::Header(&bearer(later.expose()))).await).await;
        assert_eq!(status, 201, "a key expiring in an hour, {case}: {body}");
    }
}

#[tokio::test]
async fn signup_without_a_key_is_201_while_public_signup_is_on() {
    let app = spawn_app().await;
    let (status, body) =
        status_and_json(app.post_json("/v1/users", &signup("self@example.com"), Auth::None).await).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["email"], "self@example.com");
    assert_eq!(body["status"], "active", "a SignUp answer: {body}");
    assert_eq!(app.count("SELECT COUNT(*) FROM users WHERE origin = 'signup'").await, 1);
}

#[tokio::test]
async fn member_without_a_key_is_401_under_public_signup_even_when_the_body_is_invalid() {
    let app = spawn_app().await;
    let cases = [
        ("a valid Member", member("valid@example.com")),
        ("a missing name", json!({"email": "a@example.com"})),
        ("an unknown field", json!({"email": "a@example.com", "name": "N", "credit_balance": 5})),
        ("a wrong type", json!({"email": "a@example.com", "name": "N", "role": 1})),
        ("a rule break", json!({"email": "not-an-email", "name": "", "role": "superuser"})),
        ("an empty object", json!({})),
    ];
    for (what, body) in &cases {
        let response = app.post_json("/v1/users", body, Auth::None).await;
        assert_unauthorized(response, Some(NO_KEY_CHALLENGE), &format!("POST /v1/users without a key, {what}")).await;
    }
    assert_eq!(app.count("SELECT COUNT(*) FROM users").await, 0);
}

#[tokio::test]
async fn signup_without_a_key_is_401_when_public_signup_is_off() {
    let app = spawn_app_with(|settings| settings.public_signup = false).await;
    let cases = [
        ("a valid SignUp", signup("off@example.com")),
        ("a SignUp breaking the rules", json!({"email": "bad", "password": "short"})),
        (
            "a SignUp with an unknown field",
            json!({"email": "a@example.com", "password": "a-strong-passphrase", "role": "admin"}),
        ),
        ("a Member", member("member@example.com")),
    ];
    for (what, body) in &cases {
        let response = app.post_json("/v1/users", body, Auth::None).await;
        assert_unauthorized(response, Some(NO_KEY_CHALLENGE), &format!("public signup off, {what}")).await;
    }
    let response = app.post_raw("/v1/users", Some("application/json"), b"not json".to_vec(), Auth::None).await;
    assert_unauthorized(response, Some(NO_KEY_CHALLENGE), "public signup off, not JSON").await;
    assert_eq!(app.count("SELECT COUNT(*) FROM users").await, 0);

    let (status, body) = status_and_json(app.post_v1_users(&signup("off@example.com")).await).await;
    assert_eq!(status, 201, "a SignUp with a key still works: {body}");
}

#[tokio::test]
async fn signup_with_a_valid_key_is_201_as_an_admin_created_account() {
    let app = spawn_app().await;
    let (status, body) = status_and_json(app.post_v1_users(&signup("admin-made@example.com")).await).await;
    assert_eq!(status, 201, "{body}");
    assert!(body["id"].as_str().is_some_and(|id| id.starts_with("user_")), "a SignUp answer: {body}");
    assert_eq!(body["status"], "active");
    assert_eq!(app.count("SELECT COUNT(*) FROM users WHERE origin = 'signup'").await, 1);
}

#[tokio::test]
async fn signup_with_an_unusable_key_is_401_though_signup_is_public() {
    let app = spawn_app().await;
    let presented = unusable_credentials(&app).into_iter().filter(|unusable| unusable.header.is_some());
    for (i, unusable) in presented.enumerate() {
        let response = app.post_json("/v1/users", &signup(&format!("s{i}@example.com")), unusable.auth()).await;
        assert_unauthorized(response, unusable.challenge, &format!("POST /v1/users SignUp, {}", unusable.case)).await;
    }
    assert_eq!(app.count("SELECT COUNT(*) FROM users").await, 0, "a presented key is always checked");
}

#[tokio::test]
async fn dev_disable_auth_accepts_calls_without_a_key_on_both_paths() {
    let app = spawn_app_with(|settings| settings.dev_disable_auth = true).await;
    let cases = [
        ("POST /users", "/users", linked("dev1@example.com")),
        ("POST /v1/users Member", "/v1/users", member("dev2@example.com")),
    ];
    for (case, path, body) in &cases {
        let (status, body) = status_and_json(app.post_json(path, body, Auth::None).await).await;
        assert_eq!(status, 201, "{case} without a key, checks off: {body}");
    }
    assert_eq!(app.count("SELECT COUNT(*) FROM users").await, 2);
}

#[tokio::test]
async fn the_users_api_key_given_at_start_is_registered_and_works_on_both_paths() {
    let app = spawn_app().await;
    let registered = format!(
        "SELECT COUNT(*) FROM api_keys WHERE name = '{BOOTSTRAP_KEY_NAME}' AND scopes = 'users:write users:read'"
    );
    assert_eq!(app.count(&registered).await, 1, "registered with every scope");
    assert_eq!(app.count("SELECT COUNT(*) FROM api_keys").await, 1, "and nothing else");
    let digest: ApiKeySecret = app.key.parse().unwrap();
    let by_digest = format!("SELECT COUNT(*) FROM api_keys WHERE digest = '{}'", digest.digest());
    assert_eq!(app.count(&by_digest).await, 1, "stored as its digest");

    let cases = [
        ("POST /users", "/users", linked("boot1@example.com")),
        ("POST /v1/users Member", "/v1/users", member("boot2@example.com")),
    ];
    for (case, path, body) in &cases {
        let (status, body) = status_and_json(app.post_json(path, body, Auth::Key).await).await;
        assert_eq!(status, 201, "{case} with USERS_API_KEY: {body}");
    }
}

#[tokio::test]
async fn a_successful_call_records_when_the_key_was_last_used() {
    let app = spawn_app().await;
    let used = "SELECT COUNT(*) FROM api_keys WHERE last_used_at IS NOT NULL";
    assert_eq!(app.count(used).await, 0, "a fresh key has never been used");
    let db = connect(&app).await;
    let reader = keys::create(&db, "reader", &[Scope::UsersRead], None).await.unwrap();
    let refused = app.post_json("/users", &linked("refused@example.com"), Auth::Header(&bearer(reader.expose()))).await;
    assert_eq!(refused.status(), 403);

    assert_eq!(app.post_users(&linked("used@example.com")).await.status(), 201);

    // The write happens in a task the request spawned, so it is waited for, within a bound.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while app.count(used).await == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let bootstrap_used = format!("{used} AND name = '{BOOTSTRAP_KEY_NAME}'");
    assert_eq!(app.count(&bootstrap_used).await, 1, "the key that made the call records its use within 2 s");
    assert_eq!(app.count(used).await, 1, "a refused key records no use");
}

#[tokio::test]
async fn the_keys_command_line_manages_keys_the_running_server_honours() {
    let app = spawn_app().await;

    let created = keys_cli(&app, &["create", "--name", "ci", "--scope", "users:write"]).await;
    let (stdout, stderr) = (text(&created.stdout), text(&created.stderr));
    assert!(created.status.success(), "keys create: {stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "only the key on stdout: {stdout:?}");
    let key = lines[0];
    assert!(key.starts_with("uk_") && key.parse::<ApiKeySecret>().is_ok(), "a well-formed key: {key:?}");
    assert!(!stderr.contains(key), "the key is printed once, on stdout");

    let (status, body) =
        status_and_json(app.post_json("/users", &linked("ci@example.com"), Auth::Header(&bearer(key))).await).await;
    assert_eq!(status, 201, "the running server accepts the new key: {body}");

    let listed = keys_cli(&app, &["list"]).await;
    let list = text(&listed.stdout);
    assert!(listed.status.success(), "keys list: {}", text(&listed.stderr));
    assert_eq!(list_row(&list, "ci")[1], "users:write", "{list}");
    assert_eq!(list_row(&list, BOOTSTRAP_KEY_NAME)[1], "users:write,users:read", "{list}");
    assert!(!list.contains(&key["uk_".len()..]), "keys list never shows a key:\n{list}");
    assert!(!list.contains(&app.key["uk_".len()..]), "keys list never shows a key:\n{list}");

    let again = keys_cli(&app, &["create", "--name", "ci", "--scope", "users:read"]).await;
    assert!(!again.status.success(), "a taken name is refused");
    assert!(again.stdout.is_empty(), "no key is printed for a refused name: {}", text(&again.stdout));

    let revoked = keys_cli(&app, &["revoke", "ci"]).await;
    assert!(revoked.status.success(), "keys revoke ci: {}", text(&revoked.stderr));
    refused_within_the_key_cache_bound(&app, &bearer(key)).await;
    let list = text(&keys_cli(&app, &["list"]).await.stdout);
    assert_ne!(list_row(&list, "ci")[5], "-", "ci shows as revoked:\n{list}");
    assert_eq!(list_row(&list, BOOTSTRAP_KEY_NAME)[5], "-", "only ci is revoked:\n{list}");

    let missing = keys_cli(&app, &["revoke", "nosuch"]).await;
    assert!(!missing.status.success(), "revoking an unknown name fails");
    assert!(text(&missing.stderr).contains("nosuch"), "and says which: {}", text(&missing.stderr));
}

#[tokio::test]
async fn keys_create_sets_an_expiry_and_refuses_one_past_the_calendar_cleanly() {
    let app = spawn_app().await;
    let expiring = keys_cli(&app, &["create", "--name", "temp", "--scope", "users:write", "--expires-in", "1h"]).await;
    assert!(expiring.status.success(), "keys create --expires-in 1h: {}", text(&expiring.stderr));
    let list = text(&keys_cli(&app, &["list"]).await.stdout);
    assert_ne!(list_row(&list, "temp")[4], "-", "temp shows its expiry:\n{list}");

    for huge in ["100000000y", "1000000000y"] {
        let refused =
            keys_cli(&app, &["create", "--name", "forever", "--scope", "users:write", "--expires-in", huge]).await;
        assert_eq!(
            refused.status.code(),
            Some(1),
            "--expires-in {huge} is an error, not a panic: {}",
            text(&refused.stderr)
        );
        assert!(text(&refused.stderr).contains("--expires-in"), "and names the flag: {}", text(&refused.stderr));
    }
    assert_eq!(app.count("SELECT COUNT(*) FROM api_keys WHERE name = 'forever'").await, 0);
}
