//! Uniqueness: the email (case-insensitively) and the userId, across variants and paths, and
//! under concurrency, decided by the database's unique indexes.

use futures::future::join_all;
use serde_json::json;

use crate::helpers::{Auth, assert_error, spawn_app};

#[tokio::test]
async fn create_user_returns_409_when_email_taken_in_another_case() {
    let app = spawn_app().await;
    assert_eq!(app.post_users(&json!({"email": "foo@example.com"})).await.status(), 201);
    let again = app.post_users(&json!({"email": "Foo@Example.COM", "userId": "other"})).await;
    assert_error(again, 409, "email_exists", &[("email", "taken")], "case-insensitive").await;
    let body_message =
        app.post_users(&json!({"email": "foo@example.com"})).await.json::<serde_json::Value>().await.unwrap();
    assert_eq!(body_message["message"], "Email already exists", "seed 000's message");
}

#[tokio::test]
async fn email_is_unique_across_every_variant_and_both_paths() {
    let app = spawn_app().await;
    assert_eq!(
        app.post_users(&json!({"firstName": "A", "lastName": "B", "email": "shared@example.com"})).await.status(),
        201
    );
    let attempts = [
        ("/users", json!({"email": "SHARED@example.com"}), "email"),
        ("/users", json!({"firstName": "A", "lastName": "B", "contactEmail": "shared@EXAMPLE.com"}), "contactEmail"),
        ("/users", json!({"firstName": "C", "lastName": "D", "email": " shared@example.com "}), "email"),
        ("/v1/users", json!({"email": "Shared@Example.com", "name": "N"}), "email"),
        ("/v1/users", json!({"email": "shared@example.com", "password": "a fine passphrase"}), "email"),
    ];
    for (path, body, field) in attempts {
        let case = format!("{path} {body}");
        assert_error(app.post_json(path, &body, Auth::Key).await, 409, "email_exists", &[(field, "taken")], &case)
            .await;
    }
    assert_eq!(app.count("SELECT COUNT(*) FROM users").await, 1);
}

#[tokio::test]
async fn create_user_returns_409_when_user_id_taken() {
    let app = spawn_app().await;
    assert_eq!(app.post_users(&json!({"email": "a@example.com", "userId": "ext-1"})).await.status(), 201);
    let again = app.post_users(&json!({"email": "b@example.com", "userId": "ext-1"})).await;
    assert_error(again, 409, "user_id_exists", &[("userId", "taken")], "same userId").await;
    let body = app
        .post_users(&json!({"email": "c@example.com", "userId": "ext-1"}))
        .await
        .json::<serde_json::Value>()
        .await
        .unwrap();
    assert_eq!(body["message"], "User ID already exists", "seed 000's message");
    // userId is compared exactly: another case is another id.
    assert_eq!(app.post_users(&json!({"email": "d@example.com", "userId": "EXT-1"})).await.status(), 201);
}

#[tokio::test]
async fn twenty_concurrent_creates_of_one_email_give_one_201_and_nineteen_409s() {
    let app = spawn_app().await;
    let requests = (0..20).map(|i| {
        // Mixed case and mixed variants: the index on the lower-cased email decides.
        let email = if i % 2 == 0 { "race@example.com" } else { "RACE@example.com" };
        let app = &app;
        async move {
            match i % 3 {
                0 => app.post_users(&json!({"email": email})).await,
                1 => app.post_users(&json!({"firstName": "R", "lastName": "C", "email": email})).await,
                _ => app.post_v1_users(&json!({"email": email, "name": "R"})).await,
            }
        }
    });
    let statuses: Vec<u16> = join_all(requests).await.iter().map(|r| r.status().as_u16()).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 409).count(), 19, "{statuses:?}");
    assert_eq!(app.count("SELECT COUNT(*) FROM users").await, 1);
}

#[tokio::test]
async fn twenty_concurrent_signups_of_one_email_give_one_201_and_nineteen_409s() {
    let app = spawn_app().await;
    let body = json!({"email": "signup-race@example.com", "password": "a fine passphrase"});
    let requests = (0..20).map(|_| app.post_json("/v1/users", &body, Auth::None));
    let statuses: Vec<u16> = join_all(requests).await.iter().map(|r| r.status().as_u16()).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 409).count(), 19, "{statuses:?}");
    assert_eq!(app.count("SELECT COUNT(*) FROM users").await, 1);
}

#[tokio::test]
async fn every_user_gets_distinct_integer_uuid_and_klaim_ids() {
    let app = spawn_app().await;
    let requests = (0..30).map(|i| {
        let app = &app;
        async move {
            app.post_users(&json!({"email": format!("u{i}@example.com")}))
                .await
                .json::<serde_json::Value>()
                .await
                .unwrap()
        }
    });
    let bodies = join_all(requests).await;
    let klaims: std::collections::HashSet<_> =
        bodies.iter().map(|b| b["klaim_id"].as_str().unwrap().to_owned()).collect();
    let user_ids: std::collections::HashSet<_> =
        bodies.iter().map(|b| b["user_id"].as_str().unwrap().to_owned()).collect();
    assert_eq!((klaims.len(), user_ids.len()), (30, 30));
    assert_eq!(app.count("SELECT COUNT(DISTINCT id) FROM users").await, 30);
    assert_eq!(app.count("SELECT COUNT(DISTINCT uuid) FROM users").await, 30);
}

#[tokio::test]
async fn creates_sent_together_each_get_their_own_answer_and_a_conflict_fails_only_its_own() {
    let app = spawn_app().await;
    assert_eq!(app.post_users(&json!({"email": "taken@example.com"})).await.status(), 201);
    assert_eq!(app.post_users(&json!({"email": "holder@example.com", "userId": "taken-id"})).await.status(), 201);
    // Sent at once, so that they are stored together (group commit): fresh creates interleaved
    // with ones that run into the email index and ones that run into the userId index.
    let requests = (0..60).map(|i| {
        let app = &app;
        async move {
            let (kind, body) = match i % 6 {
                0 => ("email taken", json!({"email": "TAKEN@example.com", "userId": format!("free-{i}")})),
                1 => ("userId taken", json!({"email": format!("other{i}@example.com"), "userId": "taken-id"})),
                _ => ("fresh", json!({"email": format!("fresh{i}@example.com"), "userId": format!("id-{i}")})),
            };
            (kind, i, app.post_users(&body).await)
        }
    });
    let mut fresh = 0;
    for (kind, i, response) in join_all(requests).await {
        let case = format!("{kind} #{i}");
        match kind {
            "email taken" => assert_error(response, 409, "email_exists", &[("email", "taken")], &case).await,
            "userId taken" => assert_error(response, 409, "user_id_exists", &[("userId", "taken")], &case).await,
            _ => {
                let body: serde_json::Value = response.json().await.unwrap();
                assert_eq!(body["email"], format!("fresh{i}@example.com"), "{case}: its own row back: {body}");
                assert_eq!(body["user_id"], format!("id-{i}"), "{case}: {body}");
                fresh += 1;
            }
        }
    }
    assert_eq!(fresh, 40);
    assert_eq!(
        app.count("SELECT COUNT(*) FROM users WHERE email LIKE 'fresh%'").await,
        40,
        "every fresh create is stored"
    );
    assert_eq!(app.count("SELECT COUNT(*) FROM users").await, 42, "and nothing else");
}

/// How long the one-connection load below runs: past more than one expiry of the key cache, so
/// that key checks need the pool's only connection in the midst of the creates.
const ONE_CONNECTION_LOAD: std::time::Duration = std::time::Duration::from_millis(2500);

/// With a pool of one connection, the writers (two on PostgreSQL) and the key checks take turns on
/// it: a writer never keeps it while another task waits. Sixteen clients create without pause
/// across two expiries of the key cache; every create is a 201.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_one_pooled_connection_continuous_creates_and_key_checks_all_succeed() {
    let app = crate::helpers::spawn_app_with(|s| {
        s.database_max_connections = Some(1);
        // The load is far above the per-key limit, which is not what is tested here.
        s.rate_limits = false;
    })
    .await;
    let started = std::time::Instant::now();
    let clients = (0..16).map(|client| {
        let app = &app;
        async move {
            let mut statuses = Vec::new();
            while started.elapsed() < ONE_CONNECTION_LOAD {
                let email = format!("c{client}-{}@example.com", statuses.len());
                statuses.push(app.post_users(&json!({"email": email})).await.status().as_u16());
            }
            statuses
        }
    });
    let statuses: Vec<u16> = join_all(clients).await.into_iter().flatten().collect();
    let mut refused = std::collections::BTreeMap::<u16, usize>::new();
    for status in statuses.iter().filter(|status| **status != 201) {
        *refused.entry(*status).or_default() += 1;
    }
    assert!(refused.is_empty(), "of {} creates, refused by status: {refused:?}", statuses.len());
}
