//! `spawn_app()` and the typed helpers every test uses.

use std::time::Duration;

use reqwest::{Response, StatusCode};
use sea_orm::{ConnectionTrait, Database};
use serde_json::Value;
use users_api::{Settings, keys::ApiKeySecret};

/// How a request authenticates.
#[derive(Debug, Clone, Copy)]
pub enum Auth<'a> {
    /// The app's bootstrap key, which holds every scope.
    Key,
    /// No `Authorization` header.
    None,
    /// This exact `Authorization` header value.
    Header(&'a str),
}

/// A server running on its own fresh database.
pub struct TestApp {
    /// `http://127.0.0.1:<port>`.
    pub address: String,
    /// The bootstrap key (every scope).
    pub key: String,
    /// The database URL the server uses.
    pub database_url: String,
    /// A client with a timeout, so that no test can hang.
    pub client: reqwest::Client,
    /// The server's state, to observe it (the hasher's count, say).
    pub state: users_api::AppState,
    _database: TestDatabase,
}

/// Boots the server with default settings.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Boots the server with settings adjusted by `configure`.
pub async fn spawn_app_with(configure: impl FnOnce(&mut Settings)) -> TestApp {
    spawn_on(TestDatabase::create().await, configure).await
}

/// Boots the server on `database`, which the app owns (and drops) from then on.
async fn spawn_on(database: TestDatabase, configure: impl FnOnce(&mut Settings)) -> TestApp {
    let key = ApiKeySecret::generate();
    let mut settings = Settings::defaults();
    settings.host = "127.0.0.1".into();
    settings.port = 0;
    settings.database_url = Some(database.url.clone());
    settings.database_max_connections = Some(5);
    settings.users_api_key = Some(key.clone());
    settings.public_signup = true;
    settings.dev_disable_auth = false;
    settings.body_limit = 64 * 1024;
    configure(&mut settings);
    let server = users_api::start(&settings, std::future::pending()).await.expect("the server starts");
    TestApp {
        address: format!("http://{}", server.local_addr),
        key: key.expose().to_owned(),
        database_url: database.url.clone(),
        client: reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap(),
        state: server.state.clone(),
        _database: database,
    }
}

impl TestApp {
    /// `POST /users` with the key.
    pub async fn post_users(&self, body: &Value) -> Response {
        self.post_json("/users", body, Auth::Key).await
    }

    /// `POST /v1/users` with the key.
    pub async fn post_v1_users(&self, body: &Value) -> Response {
        self.post_json("/v1/users", body, Auth::Key).await
    }

    /// `POST` a JSON body.
    pub async fn post_json(&self, path: &str, body: &Value, auth: Auth<'_>) -> Response {
        self.post_raw(path, Some("application/json"), body.to_string().into_bytes(), auth).await
    }

    /// `POST` raw bytes with a chosen Content-Type (or none).
    pub async fn post_raw(&self, path: &str, content_type: Option<&str>, body: Vec<u8>, auth: Auth<'_>) -> Response {
        let mut request = self.client.post(format!("{}{path}", self.address)).body(body);
        if let Some(content_type) = content_type {
            request = request.header("Content-Type", content_type);
        }
        request = match auth {
            Auth::Key => request.bearer_auth(&self.key),
            Auth::None => request,
            Auth::Header(value) => request.header("Authorization", value),
        };
        request.send().await.expect("the server answers")
    }

    /// `GET` a path.
    pub async fn get(&self, path: &str) -> Response {
        self.client.get(format!("{}{path}", self.address)).send().await.expect("the server answers")
    }

    /// Runs SQL against the server's database and returns the first column of the first row.
    pub async fn count(&self, sql: &str) -> i64 {
        let db = Database::connect(&self.database_url).await.unwrap();
        let row =
            db.query_one_raw(sea_orm::Statement::from_string(db.get_database_backend(), sql)).await.unwrap().unwrap();
        row.try_get_by_index::<i64>(0).unwrap()
    }
}

/// The status and the JSON body of a response.
pub async fn status_and_json(response: Response) -> (StatusCode, Value) {
    let status = response.status();
    let text = response.text().await.unwrap();
    let json = serde_json::from_str(&text).unwrap_or_else(|_| panic!("a JSON body, got {status} {text:?}"));
    (status, json)
}

/// Asserts an error answer: its status, its `error` code, and the `(field, error)` pairs of
/// its `details`, in order.
pub async fn assert_error(response: Response, status: u16, code: &str, details: &[(&str, &str)], case: &str) {
    let (actual, body) = status_and_json(response).await;
    assert_eq!(actual.as_u16(), status, "{case}: {body}");
    assert_eq!(body["error"], code, "{case}: {body}");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()), "{case}: {body}");
    let actual_details: Vec<(String, String)> = body["details"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|d| (d["field"].as_str().unwrap().to_owned(), d["error"].as_str().unwrap().to_owned()))
                .collect()
        })
        .unwrap_or_default();
    let expected: Vec<(String, String)> = details.iter().map(|(f, e)| ((*f).to_owned(), (*e).to_owned())).collect();
    assert_eq!(actual_details, expected, "{case}: {body}");
}

/// A database of its own for one test: a temporary SQLite file, or a fresh database on the
/// PostgreSQL server `TEST_DATABASE_URL` names, dropped when the test ends.
struct TestDatabase {
    url: String,
    postgres: Option<(String, String)>,
    _dir: Option<tempfile::TempDir>,
}

impl TestDatabase {
    async fn create() -> Self {
        match std::env::var("TEST_DATABASE_URL") {
            Ok(admin_url) if !admin_url.is_empty() => {
                let name = format!("users_api_test_{}", uuid::Uuid::now_v7().simple());
                let admin = Database::connect(&admin_url).await.expect("TEST_DATABASE_URL is reachable");
                admin.execute_unprepared(&format!("CREATE DATABASE {name}")).await.unwrap();
                let (base, _) = admin_url.rsplit_once('/').expect("TEST_DATABASE_URL ends in /<database>");
                Self { url: format!("{base}/{name}"), postgres: Some((admin_url, name)), _dir: None }
            }
            _ => {
                let dir = tempfile::tempdir().unwrap();
                let url = format!("sqlite://{}?mode=rwc", dir.path().join("users.db").display());
                Self { url, postgres: None, _dir: Some(dir) }
            }
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let Some((admin_url, name)) = self.postgres.take() else { return };
        // Drop runs inside the test's runtime; the clean-up gets a runtime of its own.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                if let Ok(admin) = Database::connect(&admin_url).await {
                    let _ = admin.execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
                }
            });
        })
        .join();
    }
}

/// A fresh database for servers a test starts as processes of their own (see `process.rs`): the
/// same databases [`spawn_app`] uses, created and dropped the same way, but handed out by URL.
pub struct FreshDatabase(TestDatabase);

impl FreshDatabase {
    /// The suite's database: fresh PostgreSQL when `TEST_DATABASE_URL` is set, else a SQLite file.
    pub async fn create() -> Self {
        Self(TestDatabase::create().await)
    }

    /// A temporary SQLite file, whatever `TEST_DATABASE_URL` says.
    pub fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("users.db").display());
        Self(TestDatabase { url, postgres: None, _dir: Some(dir) })
    }

    /// The SQLite file at `path`, which the caller keeps.
    pub fn sqlite_at(path: std::path::PathBuf) -> Self {
        Self(TestDatabase { url: format!("sqlite://{}?mode=rwc", path.display()), postgres: None, _dir: None })
    }

    /// A fresh PostgreSQL database when `TEST_DATABASE_URL` is set; `None` when it is not.
    pub async fn postgres() -> Option<Self> {
        let configured = std::env::var("TEST_DATABASE_URL").is_ok_and(|url| !url.is_empty());
        match configured {
            true => Some(Self::create().await),
            false => None,
        }
    }

    /// The URL a server is given as `DATABASE_URL`.
    pub fn url(&self) -> &str {
        &self.0.url
    }

    /// `postgres` or `sqlite`, to name a case.
    pub fn backend(&self) -> &'static str {
        if self.0.postgres.is_some() { "postgres" } else { "sqlite" }
    }

    /// Runs SQL against the database and returns the first column of the first row.
    pub async fn count(&self, sql: &str) -> i64 {
        let db = Database::connect(self.url()).await.unwrap();
        let row =
            db.query_one_raw(sea_orm::Statement::from_string(db.get_database_backend(), sql)).await.unwrap().unwrap();
        row.try_get_by_index::<i64>(0).unwrap()
    }

    /// Runs SQL against the database and returns the first column of every row, as text.
    pub async fn strings(&self, sql: &str) -> Vec<String> {
        let db = Database::connect(self.url()).await.unwrap();
        let rows = db.query_all_raw(sea_orm::Statement::from_string(db.get_database_backend(), sql)).await.unwrap();
        rows.iter().map(|row| row.try_get_by_index::<String>(0).unwrap()).collect()
    }
}

/// Boots the server on a database the test chose and cleans up itself (`database_url`), whatever
/// `TEST_DATABASE_URL` says, with settings adjusted by `configure`: for tests that put something
/// between the server and its store (a proxy, a file made unwritable).
pub async fn spawn_app_on(database_url: &str, configure: impl FnOnce(&mut Settings)) -> TestApp {
    spawn_on(TestDatabase { url: database_url.to_owned(), postgres: None, _dir: None }, configure).await
}

/// A fresh database on the PostgreSQL server `admin_url` names, whatever `TEST_DATABASE_URL` says;
/// dropped (with `FORCE`, through `admin_url`) when this is.
pub struct PostgresDatabase {
    /// The database's name.
    pub name: String,
    _database: TestDatabase,
}

impl PostgresDatabase {
    /// Creates the database.
    pub async fn create(admin_url: &str) -> Self {
        let name = format!("users_api_test_{}", uuid::Uuid::now_v7().simple());
        let admin = Database::connect(admin_url).await.expect("the PostgreSQL admin URL is reachable");
        admin.execute_unprepared(&format!("CREATE DATABASE {name}")).await.unwrap();
        let (base, _) = admin_url.rsplit_once('/').expect("the admin URL ends in /<database>");
        let database = TestDatabase {
            url: format!("{base}/{name}"),
            postgres: Some((admin_url.to_owned(), name.clone())),
            _dir: None,
        };
        Self { name, _database: database }
    }
}

/// Creates users at `users_url` with `authorization` (a key just revoked) until a create is
/// refused, and returns the refusal and how many creates were still made. A key's row is reused
/// for at most `KEY_CACHE_TTL` (1 s) after it was read, so the refusal must come within that; the
/// deadline adds a second for a loaded machine, and a cache that never expired would miss it by far.
pub async fn create_until_refused(client: &reqwest::Client, users_url: &str, authorization: &str) -> (Response, i64) {
    let revoked_at = tokio::time::Instant::now();
    let deadline = revoked_at + users_api::keys::KEY_CACHE_TTL + Duration::from_secs(1);
    let mut accepted = 0;
    loop {
        let body = serde_json::json!({"email": format!("revoking{accepted}@example.com")});
        let response = client.post(users_url).header("Authorization", authorization).json(&body).send().await.unwrap();
        if response.status() != 201 {
            println!("the revoked key was refused after {:?}", revoked_at.elapsed());
            return (response, accepted);
        }
        accepted += 1;
        assert!(
            tokio::time::Instant::now() < deadline,
            "the revoked key still creates users after {:?}",
            revoked_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
