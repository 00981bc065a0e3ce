//! Rate limits (per key; per client address for public signup) and the bounded admission to the
//! password hasher: floods are refused cheaply, before any Argon2 work.

use std::num::NonZeroU32;

use futures::future::join_all;
use reqwest::Response;
use serde_json::json;
use users_api::keys::{self, Scope};

use crate::helpers::{Auth, assert_error, spawn_app_with};

fn per_minute(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

fn header(response: &Response, name: &str) -> Option<u64> {
    response.headers().get(name).map(|v| v.to_str().unwrap().parse().unwrap())
}

fn signup(email: &str) -> serde_json::Value {
    json!({"email": email, "password": "a fine passphrase"})
}

#[tokio::test]
async fn a_key_over_its_limit_gets_429_with_retry_after_and_ratelimit_headers() {
    let app = spawn_app_with(|s| s.rate_limit_per_key = per_minute(3)).await;
    for (i, remaining) in [2, 1, 0].into_iter().enumerate() {
        let response = app.post_users(&json!({"email": format!("k{i}@example.com")})).await;
        assert_eq!(response.status(), 201);
        assert_eq!(
            (header(&response, "ratelimit-limit"), header(&response, "ratelimit-remaining")),
            (Some(3), Some(remaining))
        );
    }
    let refused = app.post_users(&json!({"email": "k3@example.com"})).await;
    let retry_after = header(&refused, "retry-after").expect("Retry-After");
    assert!((1..=20).contains(&retry_after), "one request comes back every 20 s: {retry_after}");
    assert_eq!(header(&refused, "ratelimit-remaining"), Some(0));
    assert!(header(&refused, "ratelimit-reset").is_some_and(|reset| reset > 0));
    assert_error(refused, 429, "rate_limited", &[], "fourth create").await;
    // Every call with the key counts, reads too; the refused create wrote nothing.
    let read = app.client.get(format!("{}/users/1", app.address)).bearer_auth(&app.key).send().await.unwrap();
    assert_eq!(read.status(), 429);
    assert_eq!(app.count("SELECT COUNT(*) FROM users").await, 3);

    // Another key has its own allowance.
    let db = sea_orm::Database::connect(&app.database_url).await.unwrap();
    let other = keys::create(&db, "other", &[Scope::UsersWrite], None).await.unwrap();
    let header_value = format!("Bearer {}", other.expose());
    let response = app.post_json("/users", &json!({"email": "other@example.com"}), Auth::Header(&header_value)).await;
    assert_eq!(response.status(), 201);
}

#[tokio::test]
async fn public_signups_are_limited_per_client_address_and_keyed_ones_per_key() {
    let app = spawn_app_with(|s| s.rate_limit_signup_per_address = per_minute(2)).await;
    for i in 0..2 {
        let response = app.post_json("/v1/users", &signup(&format!("s{i}@example.com")), Auth::None).await;
        assert_eq!(response.status(), 201);
    }
    let refused = app.post_json("/v1/users", &signup("s2@example.com"), Auth::None).await;
    assert!(header(&refused, "retry-after").is_some());
    assert_error(refused, 429, "rate_limited", &[], "third public signup").await;
    // The limit is met before the body is read: an invalid body is refused the same way.
    let invalid = app.post_raw("/v1/users", Some("application/json"), b"not json".to_vec(), Auth::None).await;
    assert_error(invalid, 429, "rate_limited", &[], "invalid body past the limit").await;
    // An admin-created account (with a key) is counted against the key, not the address.
    assert_eq!(app.post_v1_users(&signup("admin-made@example.com")).await.status(), 201);
}

#[tokio::test]
async fn forwarded_for_is_honoured_only_when_trusted() {
    let post = |app: &crate::helpers::TestApp, email: String, forwarded: &'static str| {
        let request = app
            .client
            .post(format!("{}/v1/users", app.address))
            .header("X-Forwarded-For", forwarded)
            .json(&signup(&email));
        async move { request.send().await.unwrap().status().as_u16() }
    };
    let trusted = spawn_app_with(|s| {
        s.rate_limit_signup_per_address = per_minute(1);
        s.trust_forwarded_for = true;
    })
    .await;
    assert_eq!(post(&trusted, "t1@example.com".into(), "10.1.1.1").await, 201);
    assert_eq!(post(&trusted, "t2@example.com".into(), "10.1.1.1").await, 429, "same client");
    // The last entry is the one the trusted proxy added; earlier ones are the client's to forge.
    assert_eq!(post(&trusted, "t3@example.com".into(), "10.1.1.1, 10.2.2.2").await, 201, "another client");
    assert_eq!(post(&trusted, "t4@example.com".into(), "10.9.9.9, 10.2.2.2").await, 429, "forged first entry");

    let untrusted = spawn_app_with(|s| s.rate_limit_signup_per_address = per_minute(1)).await;
    assert_eq!(post(&untrusted, "u1@example.com".into(), "10.1.1.1").await, 201);
    assert_eq!(post(&untrusted, "u2@example.com".into(), "10.2.2.2").await, 429, "the header is ignored");
}

#[tokio::test]
async fn limits_can_be_switched_off() {
    let app = spawn_app_with(|s| {
        s.rate_limits = false;
        s.rate_limit_per_key = per_minute(1);
        s.rate_limit_signup_per_address = per_minute(1);
    })
    .await;
    for i in 0..4 {
        let response = app.post_users(&json!({"email": format!("off{i}@example.com")})).await;
        assert_eq!(response.status(), 201);
        assert!(response.headers().get("ratelimit-limit").is_none());
        let response = app.post_json("/v1/users", &signup(&format!("offs{i}@example.com")), Auth::None).await;
        assert_eq!(response.status(), 201);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signup_flood_is_refused_before_it_reaches_the_hasher() {
    let app = spawn_app_with(|s| s.rate_limit_signup_per_address = per_minute(5)).await;
    let bodies: Vec<_> = (0..40).map(|i| signup(&format!("flood{i}@example.com"))).collect();
    let flood = bodies.iter().map(|body| app.post_json("/v1/users", body, Auth::None));
    let statuses: Vec<u16> = join_all(flood).await.iter().map(|r| r.status().as_u16()).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 5, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 35, "{statuses:?}");
    assert_eq!(app.state.hasher.hashes_computed(), 5, "no hash beyond the limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signups_past_the_hash_queue_get_503_and_are_never_hashed() {
    let app = spawn_app_with(|s| {
        s.rate_limits = false;
        s.hash_concurrency = Some(1);
        s.hash_queue = 0;
    })
    .await;
    let bodies: Vec<_> = (0..16).map(|i| signup(&format!("burst{i}@example.com"))).collect();
    let burst = bodies.iter().map(|body| app.post_json("/v1/users", body, Auth::None));
    let responses = join_all(burst).await;
    let mut created = 0;
    let mut refused = 0;
    for response in responses {
        match response.status().as_u16() {
            201 => created += 1,
            503 => {
                refused += 1;
                assert_eq!(header(&response, "retry-after"), Some(1));
                assert_error(response, 503, "service_unavailable", &[], "hasher busy").await;
            }
            other => panic!("unexpected {other}: {}", response.text().await.unwrap()),
        }
    }
    assert!(refused > 0, "sixteen at once cannot all fit one hasher with no queue");
    assert_eq!(created + refused, 16);
    assert_eq!(app.state.hasher.hashes_computed(), created as u64, "refused signups were never hashed");
    assert_eq!(app.count("SELECT COUNT(*) FROM users").await, created);
}
