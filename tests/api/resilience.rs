//! Resilience: the store going away (PostgreSQL behind a proxy the test switches off, a SQLite
//! file made unwritable) answers 503 with `Retry-After` and recovers without a restart; hostile
//! clients get a 4xx or a closed connection while everyone else is still served; and the body
//! reader and variant dispatch hold their contract for arbitrary JSON objects.

use std::{
    cell::RefCell,
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::future::join_all;
use proptest::{
    prelude::*,
    test_runner::{Config, TestRunner},
};
use reqwest::{Response, StatusCode};
use sea_orm::ConnectionTrait;
use serde_json::{Map, Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::{JoinHandle, JoinSet},
};
use users_api::{
    api::{self, access::Caller},
    domain::{NewUser, Origin},
    error::{ApiError, ErrorCode},
    keys::KeyIdentity,
};

use crate::helpers::{Auth, PostgresDatabase, TestApp, assert_error, spawn_app_on, spawn_app_with, status_and_json};

// ---------------------------------------------------------------------------------------------
// The store goes away
// ---------------------------------------------------------------------------------------------

/// How long a client waits for any answer during an outage: the service must answer well within it.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the service may take to notice that the store is back.
const RECOVERY_BOUND: Duration = Duration::from_secs(15);

/// The PostgreSQL server the outage test runs against: the one `TEST_DATABASE_URL` names, else
/// the local one. The outage test always runs; it needs PostgreSQL on 127.0.0.1.
fn postgres_admin_url() -> String {
    match std::env::var("TEST_DATABASE_URL") {
        Ok(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => url,
        _ => "postgres://postgres@127.0.0.1:5432/postgres".to_owned(),
    }
}

/// A PostgreSQL URL taken apart: `<scheme>://<userinfo@><address>/<database><?query>`.
struct PostgresUrl {
    scheme: String,
    userinfo: String,
    address: SocketAddr,
    query: String,
}

impl PostgresUrl {
    fn parse(url: &str) -> Self {
        let (scheme, rest) = url.split_once("://").expect("a URL with a scheme");
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let (userinfo, host_port) = match authority.rsplit_once('@') {
            Some((userinfo, host_port)) => (format!("{userinfo}@"), host_port),
            None => (String::new(), authority),
        };
        let (host, port) = match host_port.rsplit_once(':') {
            Some((host, port)) => (host, port.parse().expect("a numeric port")),
            None => (host_port, 5432),
        };
        let ip = match host {
            "localhost" => Ipv4Addr::LOCALHOST,
            host => host.parse().unwrap_or_else(|_| panic!("the outage test needs 127.0.0.1, not {host:?}")),
        };
        // The proxy forwards to this address: it must never be anything but this machine.
        assert_eq!(ip, Ipv4Addr::LOCALHOST, "the outage test only ever targets 127.0.0.1");
        let query = path.split_once('?').map(|(_, query)| format!("?{query}")).unwrap_or_default();
        Self { scheme: scheme.to_owned(), userinfo, address: SocketAddr::from((ip, port)), query }
    }

    /// The URL of `database` on this server, reached at `address` instead.
    fn via(&self, address: SocketAddr, database: &str) -> String {
        format!("{}://{}{address}/{database}{}", self.scheme, self.userinfo, self.query)
    }
}

/// A TCP proxy on 127.0.0.1 in front of PostgreSQL that the test switches off (its port closes
/// and every forwarded connection is cut, as when the database host goes away) and on again at
/// the same port.
struct Proxy {
    address: SocketAddr,
    upstream: SocketAddr,
    forwarding: Option<Forwarding>,
}

/// A running proxy: its accept loop and one task per forwarded connection.
struct Forwarding {
    accepting: JoinHandle<()>,
    connections: Arc<Mutex<JoinSet<()>>>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let address = listener.local_addr().unwrap();
        Self { address, upstream, forwarding: Some(Self::forward(listener, upstream)) }
    }

    fn forward(listener: TcpListener, upstream: SocketAddr) -> Forwarding {
        let connections = Arc::new(Mutex::new(JoinSet::new()));
        let spawned = connections.clone();
        let accepting = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                spawned.lock().unwrap().spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        Forwarding { accepting, connections }
    }

    /// Closes the port and cuts every forwarded connection; done when this returns.
    async fn switch_off(&mut self) {
        let Forwarding { accepting, connections } = self.forwarding.take().expect("the proxy is on");
        accepting.abort();
        let _ = accepting.await; // the listener is dropped with the task
        let mut cut = std::mem::take(&mut *connections.lock().unwrap());
        cut.shutdown().await; // each task drops both of its sockets
        assert!(TcpStream::connect(self.address).await.is_err(), "the proxy's port is closed");
    }

    /// Listens on the same port again.
    async fn switch_on(&mut self) {
        assert!(self.forwarding.is_none(), "the proxy is off");
        // The port was ours a moment ago, but a client's ephemeral port could briefly hold it.
        let deadline = Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match TcpListener::bind(self.address).await {
                Ok(listener) => break listener,
                Err(err) if Instant::now() < deadline => {
                    eprintln!("rebinding {}: {err}; retrying", self.address);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(err) => panic!("the proxy cannot listen on {} again: {err}", self.address),
            }
        };
        self.forwarding = Some(Self::forward(listener, self.upstream));
    }
}

/// What one request during an outage got, and how long it took.
struct Timed {
    case: &'static str,
    response: Response,
    elapsed: Duration,
}

/// Sends `request` and reads its whole answer at once: the client's timeout counts from the send,
/// so a body left unread while other requests wait would time out on reading.
async fn timed(case: &'static str, request: reqwest::RequestBuilder) -> Timed {
    let started = Instant::now();
    let response =
        request.send().await.unwrap_or_else(|err| panic!("{case}: no answer within {CLIENT_TIMEOUT:?}: {err}"));
    let mut head = poem::http::Response::builder().status(response.status());
    for (name, value) in response.headers() {
        head = head.header(name, value);
    }
    let body = response.bytes().await.unwrap_or_else(|err| panic!("{case}: the body of the answer: {err}"));
    Timed { case, response: Response::from(head.body(body).unwrap()), elapsed: started.elapsed() }
}

/// Asserts a 503 `service_unavailable` with `Retry-After`, answered before the client gave up.
async fn assert_unavailable(timed: Timed) {
    let Timed { case, response, elapsed } = timed;
    println!("{case}: {} after {elapsed:?}", response.status());
    assert!(elapsed < CLIENT_TIMEOUT, "{case}: answered after {elapsed:?}");
    let retry_after = response.headers().get("retry-after").map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
    assert!(retry_after.is_some_and(|secs| secs > 0), "{case}: Retry-After {retry_after:?}");
    assert_error(response, 503, "service_unavailable", &[], case).await;
}

fn outage_client() -> reqwest::Client {
    reqwest::Client::builder().timeout(CLIENT_TIMEOUT).build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_postgres_outage_answers_503_with_retry_after_and_recovers_without_a_restart() {
    let admin_url = postgres_admin_url();
    let server = PostgresUrl::parse(&admin_url);
    let database = PostgresDatabase::create(&admin_url).await;
    let mut proxy = Proxy::start(server.address).await;
    let url = server.via(proxy.address, &database.name);
    let app = spawn_app_on(&url, |_| {}).await;
    // A second instance on the same store with key checks off: its reads and creates reach the
    // handlers' own error mapping, not only the key check's.
    let open = spawn_app_on(&url, |s| s.dev_disable_auth = true).await;
    let client = outage_client();
    let get = |app: &TestApp, path: &str| client.get(format!("{}{path}", app.address)).bearer_auth(&app.key);
    let post = |app: &TestApp, path: &str, body: Value| {
        client.post(format!("{}{path}", app.address)).bearer_auth(&app.key).json(&body)
    };

    assert_eq!(app.post_users(&json!({"email": "before@example.com"})).await.status(), 201);
    assert_eq!(app.get("/readyz").await.status(), 200);

    proxy.switch_off().await;
    let outage = join_all([
        timed("create with a key", post(&app, "/users", json!({"email": "during@example.com"}))),
        timed(
            "public signup",
            client
                .post(format!("{}/v1/users", app.address))
                .json(&json!({"email": "signup@example.com", "password": "a fine passphrase"})),
        ),
        timed("read with a key", get(&app, "/users/1")),
        timed("create without key checks", post(&open, "/v1/users", json!({"email": "m@example.com", "name": "M"}))),
        timed("read without key checks", get(&open, "/users/1")),
    ]);
    let probes = async {
        let ready = timed("readyz", get(&app, "/readyz")).await;
        let healthy = timed("healthz", get(&app, "/healthz")).await;
        (ready, healthy)
    };
    let (outage, (ready, healthy)) = tokio::join!(outage, probes);
    for timed in outage {
        assert_unavailable(timed).await;
    }
    println!("readyz during the outage: {} after {:?}", ready.response.status(), ready.elapsed);
    assert!(ready.response.headers().contains_key("retry-after"), "readyz 503 carries Retry-After");
    let (status, body) = status_and_json(ready.response).await;
    assert_eq!((status, body), (StatusCode::SERVICE_UNAVAILABLE, json!({"status": "unavailable"})));
    println!("healthz during the outage: {} after {:?}", healthy.response.status(), healthy.elapsed);
    let (status, body) = status_and_json(healthy.response).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"status": "ok"})), "liveness never asks the database");

    proxy.switch_on().await;
    let back_on = Instant::now();
    loop {
        let status = get(&app, "/readyz").send().await.expect("readyz answers").status();
        if status == 200 {
            break;
        }
        assert!(back_on.elapsed() < RECOVERY_BOUND, "still {status} {RECOVERY_BOUND:?} after the proxy came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("ready again {:?} after the proxy came back", back_on.elapsed());
    // Every pooled connection the outage broke is replaced: creates on both instances succeed at
    // once, several at a time, with no restart.
    let creates = (0..6).map(|i| {
        let (app, path, body) = match i % 2 {
            0 => (&app, "/users", json!({"email": format!("after{i}@example.com")})),
            _ => (&open, "/v1/users", json!({"email": format!("after{i}@example.com"), "name": "After"})),
        };
        post(app, path, body).send()
    });
    for response in join_all(creates).await {
        let response = response.expect("the server answers");
        assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    }
    println!("creates succeed {:?} after the proxy came back", back_on.elapsed());
    let (status, body) = status_and_json(get(&open, "/users/1").send().await.unwrap()).await;
    assert_eq!((status, &body["email"]), (StatusCode::OK, &json!("before@example.com")), "{body}");
}

/// How long the database is gone, unasked, in the test below: longer than the service lets a
/// pooled connection idle before pinging it when next taken (a second), as any restart is.
const QUIET_OUTAGE: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_postgres_restart_while_nobody_calls_costs_no_request() {
    let admin_url = postgres_admin_url();
    let server = PostgresUrl::parse(&admin_url);
    let database = PostgresDatabase::create(&admin_url).await;
    let mut proxy = Proxy::start(server.address).await;
    let app = spawn_app_on(&server.via(proxy.address, &database.name), |_| {}).await;
    let client = outage_client();
    assert_eq!(app.post_users(&json!({"email": "first@example.com"})).await.status(), 201);
    for response in burst(&app, &client, "before").await {
        assert!(response.status().is_success(), "{}", response.text().await.unwrap());
    }

    // The database goes away and comes back while no request arrives: every pooled connection is
    // now dead, and only a ping tells.
    proxy.switch_off().await;
    tokio::time::sleep(QUIET_OUTAGE).await;
    proxy.switch_on().await;

    for response in burst(&app, &client, "after").await {
        let status = response.status();
        assert!(status.is_success(), "{status}: {}", response.text().await.unwrap());
    }
}

/// A server on PostgreSQL opens half its pool before it starts to listen, so that a burst just
/// after start waits for no connection to be opened (88 ms each under TLS with sqlx 0.9.0:
/// `database::opened_at_start`). Without that, the pool holds the one connection it started with.
#[tokio::test]
async fn a_server_on_postgres_opens_half_its_pool_before_it_listens() {
    let admin_url = postgres_admin_url();
    let server = PostgresUrl::parse(&admin_url);
    let database = PostgresDatabase::create(&admin_url).await;
    let url = server.via(server.address, &database.name);
    let _app = spawn_app_on(&url, |settings| settings.database_max_connections = Some(16)).await;

    let admin = sea_orm::Database::connect(&admin_url).await.unwrap();
    let sessions = format!("SELECT count(*) FROM pg_stat_activity WHERE datname = '{}'", database.name);
    let row = admin.query_one_raw(sea_orm::Statement::from_string(admin.get_database_backend(), sessions)).await;
    let open = row.unwrap().unwrap().try_get_by_index::<i64>(0).unwrap();
    assert!((8..=16).contains(&open), "{open} connections open once the server listens, not 8 to 16 of a pool of 16");
}

/// Eight requests at once, creates and reads, so that several connections are pooled.
async fn burst(app: &TestApp, client: &reqwest::Client, round: &str) -> Vec<Response> {
    join_all((0..8).map(|i| {
        let request = match i % 2 {
            0 => {
                client.post(format!("{}/users", app.address)).json(&json!({"email": format!("{round}{i}@example.com")}))
            }
            _ => client.get(format!("{}/users/1", app.address)),
        };
        async move { request.bearer_auth(&app.key).send().await.expect("the server answers") }
    }))
    .await
}

/// Sets the immutable attribute (`chattr +i`) on files and directories, and clears it when
/// dropped, so that a failing test neither leaves them unwritable nor leaks its temporary directory.
///
/// This is how the test makes SQLite unwritable although it runs as root, who ignores file
/// modes: ext4 refuses every `write` to an immutable file with EPERM, also through a descriptor
/// opened before (SQLite's pooled connections), where a mode change would only stop the next `open`.
struct Immutable(Vec<PathBuf>);

impl Immutable {
    /// Fails, saying why, where the attribute cannot be set (not root, no CAP_LINUX_IMMUTABLE,
    /// or a filesystem without the attribute).
    fn set(paths: &[PathBuf]) -> Result<Self, String> {
        chattr("+i", paths)?;
        Ok(Self(paths.to_vec()))
    }

    fn clear(mut self) {
        chattr("-i", &std::mem::take(&mut self.0)).expect("the immutable attribute is cleared");
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            let _ = chattr("-i", &self.0);
        }
    }
}

fn chattr(flag: &str, paths: &[PathBuf]) -> Result<(), String> {
    let output = std::process::Command::new("chattr")
        .arg(flag)
        .args(paths)
        .output()
        .map_err(|err| format!("chattr cannot run: {err}"))?;
    match output.status.success() {
        true => Ok(()),
        false => Err(format!("chattr {flag}: {}", String::from_utf8_lossy(&output.stderr).trim())),
    }
}

/// A server on a SQLite file of its own, with one user created, whose file the test can make
/// unwritable.
struct SqliteApp {
    app: TestApp,
    dir: tempfile::TempDir,
    client: reqwest::Client,
}

impl SqliteApp {
    async fn spawn() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("users.db").display());
        let app = spawn_app_on(&url, |_| {}).await;
        assert_eq!(app.post_users(&json!({"email": "before@example.com"})).await.status(), 201);
        Self { app, dir, client: outage_client() }
    }

    /// Makes the database unwritable, or says why it cannot be done here.
    fn make_unwritable(&self) -> Result<Immutable, String> {
        let file = self.dir.path().join("users.db");
        let wal = sibling(&file, "-wal");
        assert!(file.exists() && wal.exists(), "WAL mode keeps users.db-wal open beside users.db");
        // Not users.db-shm: SQLite writes it through a shared memory map, and a write fault on an
        // immutable file is SIGBUS, which would kill the test instead of failing a statement.
        // Without the database and its log SQLite cannot write anyway; the directory is made
        // immutable too, so that no journal or log can be created beside them.
        Immutable::set(&[file, wal, self.dir.path().to_owned()])
    }

    /// A create: `POST /users` with the key when `i` is even, a public signup when odd.
    fn create(&self, email: &str, i: usize) -> (&'static str, reqwest::RequestBuilder) {
        let app = &self.app;
        match i % 2 {
            0 => (
                "create with a key",
                self.client.post(format!("{}/users", app.address)).bearer_auth(&app.key).json(&json!({"email": email})),
            ),
            _ => (
                "public signup",
                self.client
                    .post(format!("{}/v1/users", app.address))
                    .json(&json!({"email": email, "password": "a fine passphrase"})),
            ),
        }
    }

    /// Creates one at a time (on the connections opened before), then more at once than the
    /// pool holds (so that connections are also opened while the file is unwritable).
    async fn create_during_outage(&self) -> Vec<(String, Timed)> {
        let mut outcomes = Vec::new();
        for i in 0..4 {
            let email = format!("one{i}@example.com");
            let (case, request) = self.create(&email, i);
            outcomes.push((email, timed(case, request).await));
        }
        let emails: Vec<String> = (0..12).map(|i| format!("many{i}@example.com")).collect();
        let many = emails.iter().enumerate().map(|(i, email)| {
            let (case, request) = self.create(email, i);
            timed(case, request)
        });
        outcomes.extend(emails.iter().cloned().zip(join_all(many).await));
        for (email, timed) in &outcomes {
            let status = timed.response.status();
            println!("{} {email} while unwritable: {status} after {:?}", timed.case, timed.elapsed);
            assert!(status == 201 || status == 503, "{} {email}: {status}, never a 500", timed.case);
            assert!(timed.elapsed < CLIENT_TIMEOUT, "{}: answered after {:?}", timed.case, timed.elapsed);
        }
        outcomes
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unwritable_sqlite_file_answers_503_with_retry_after_and_acknowledges_nothing() {
    let sqlite = SqliteApp::spawn().await;
    let unwritable = match sqlite.make_unwritable() {
        Ok(unwritable) => unwritable,
        Err(reason) => {
            eprintln!("SKIPPED: SQLite cannot be made unwritable here ({reason}); this needs root on ext4");
            return;
        }
    };
    let outcomes = sqlite.create_during_outage().await;
    let healthy = sqlite.client.get(format!("{}/healthz", sqlite.app.address)).send().await.unwrap();
    assert_eq!(healthy.status(), 200, "liveness never asks the database");
    let ready = sqlite.client.get(format!("{}/readyz", sqlite.app.address)).send().await.unwrap();
    assert_eq!(ready.status(), 503, "not ready while the database cannot write");
    assert!(ready.headers().contains_key("retry-after"));
    unwritable.clear();
    let ready = sqlite.client.get(format!("{}/readyz", sqlite.app.address)).send().await.unwrap();
    assert_eq!(ready.status(), 200, "ready again once it can, with no restart");

    // A 201 promises the user is stored: none may be answered for a write that never happened.
    let acknowledged: Vec<&str> =
        outcomes.iter().filter(|(_, timed)| timed.response.status() == 201).map(|(email, _)| email.as_str()).collect();
    let listed = acknowledged.iter().map(|email| format!("'{email}'")).collect::<Vec<_>>().join(",");
    let stored = match acknowledged.len() {
        0 => 0,
        _ => sqlite.app.count(&format!("SELECT COUNT(*) FROM users WHERE email IN ({listed})")).await,
    };
    assert_eq!(
        stored,
        acknowledged.len() as i64,
        "of {} creates answered 201 while the file was unwritable, {stored} are stored: {acknowledged:?}",
        acknowledged.len()
    );
    for (_, timed) in outcomes {
        assert_unavailable(timed).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn creates_succeed_again_once_the_sqlite_file_is_writable_without_a_restart() {
    let sqlite = SqliteApp::spawn().await;
    let unwritable = match sqlite.make_unwritable() {
        Ok(unwritable) => unwritable,
        Err(reason) => {
            eprintln!("SKIPPED: SQLite cannot be made unwritable here ({reason}); this needs root on ext4");
            return;
        }
    };
    sqlite.create_during_outage().await;
    unwritable.clear();

    // SQLite opens a file it cannot write read-only, without an error, so the connections opened
    // during the outage are read-only ones. Every pooled connection, also those opened during the outage, writes again: creates succeed
    // at once, many at a time and one after another, whichever connection they get.
    let emails: Vec<String> = (0..10).map(|i| format!("after{i}@example.com")).collect();
    let at_once = emails.iter().enumerate().map(|(i, email)| sqlite.create(email, 2 * i).1.send());
    let mut statuses: Vec<u16> = join_all(at_once).await.into_iter().map(|r| r.unwrap().status().as_u16()).collect();
    for i in 0..10 {
        statuses.push(sqlite.create(&format!("later{i}@example.com"), i).1.send().await.unwrap().status().as_u16());
    }
    assert_eq!(statuses, [201; 20], "creates after the file is writable again");
}

fn sibling(file: &Path, suffix: &str) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

// ---------------------------------------------------------------------------------------------
// Hostile clients
// ---------------------------------------------------------------------------------------------

/// Hostile connections held open at once in the slow-client tests.
const STALLED_CLIENTS: usize = 20;

/// An HTTP/1.1 answer read off a raw connection.
#[derive(Debug)]
struct RawAnswer {
    status: u16,
    body: Vec<u8>,
}

/// Reads one answer (a head and a `Content-Length` body).
async fn read_answer(stream: &mut TcpStream) -> std::io::Result<RawAnswer> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        match stream.read(&mut chunk).await? {
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            n => buffer.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status line");
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length").then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buffer.len() < head_end + 4 + length {
        match stream.read(&mut chunk).await? {
            0 => break,
            n => buffer.extend_from_slice(&chunk[..n]),
        }
    }
    Ok(RawAnswer { status, body: buffer[head_end + 4..].to_vec() })
}

/// Asserts a raw answer is `status` with the JSON error body `code`.
fn assert_raw_error(answer: &RawAnswer, status: u16, code: &str, case: &str) {
    let body: Value = serde_json::from_slice(&answer.body)
        .unwrap_or_else(|_| panic!("{case}: a JSON body, got {:?}", String::from_utf8_lossy(&answer.body)));
    assert_eq!((answer.status, body["error"].as_str()), (status, Some(code)), "{case}: {body}");
}

/// A create that must succeed while hostile clients are connected.
async fn create_meanwhile(app: &TestApp, email: &str) {
    let response = app.post_users(&json!({"email": email})).await;
    assert_eq!(response.status(), 201, "a normal create meanwhile: {}", response.text().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_body_that_stalls_gets_408_after_the_read_timeout_while_others_are_served() {
    let read_timeout = Duration::from_secs(1);
    let app = spawn_app_with(|s| s.body_read_timeout = read_timeout).await;
    let address = app.address.trim_start_matches("http://").to_owned();
    let mut stalled = Vec::new();
    for i in 0..STALLED_CLIENTS {
        let mut stream = TcpStream::connect(&address).await.unwrap();
        let partial = format!(
            "POST /users HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"email\": \"slow{i}@exa",
            app.key
        );
        // Timed from before the write: the server's timer starts when it reads these bytes, which
        // may be before this task runs again after writing them (999.8 ms was seen otherwise).
        let sent = Instant::now();
        stream.write_all(partial.as_bytes()).await.unwrap();
        stalled.push((stream, sent));
    }
    create_meanwhile(&app, "meanwhile@example.com").await;
    let served = Instant::now();

    let answers = stalled.into_iter().map(|(mut stream, sent)| async move {
        let answer = tokio::time::timeout(read_timeout + Duration::from_secs(10), read_answer(&mut stream)).await;
        (answer.expect("an answer, not a hang").expect("an HTTP answer"), sent, Instant::now())
    });
    let mut waits = Vec::new();
    for (answer, sent, answered) in join_all(answers).await {
        assert_raw_error(&answer, 408, "request_timeout", "a stalled body");
        let waited = answered - sent;
        assert!(waited >= read_timeout, "answered after {waited:?}, before the read timeout");
        assert!(waited < read_timeout + Duration::from_secs(5), "answered only after {waited:?}");
        assert!(served < answered, "the normal create was served while this client stalled");
        waits.push(waited);
    }
    println!("408 after {:?} to {:?}", waits.iter().min().unwrap(), waits.iter().max().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_head_that_stalls_is_closed_after_the_idle_timeout_while_others_are_served() {
    let idle_timeout = Duration::from_secs(1);
    let app = spawn_app_with(|s| s.idle_timeout = idle_timeout).await;
    let address = app.address.trim_start_matches("http://").to_owned();
    let mut stalled = Vec::new();
    for i in 0..STALLED_CLIENTS {
        let mut stream = TcpStream::connect(&address).await.unwrap();
        // Half stop inside the request line, half inside the headers.
        let partial: &[u8] = match i % 2 {
            0 => b"POST /users HT",
            _ => b"POST /users HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty",
        };
        stream.write_all(partial).await.unwrap();
        stalled.push((stream, Instant::now()));
    }
    create_meanwhile(&app, "meanwhile@example.com").await;
    let served = Instant::now();

    let bound = idle_timeout + Duration::from_secs(4);
    let closes = stalled.into_iter().map(|(mut stream, sent)| async move {
        // Whatever the server says first (if anything), the connection must end.
        let mut said = Vec::new();
        let ended = tokio::time::timeout(bound, stream.read_to_end(&mut said)).await;
        (ended.is_ok(), sent, Instant::now(), String::from_utf8_lossy(&said).into_owned())
    });
    let results = join_all(closes).await;
    let open = results.iter().filter(|(closed, ..)| !closed).count();
    println!("stalled request heads: {open} of {STALLED_CLIENTS} still open {bound:?} after they stalled");
    for (closed, sent, ended, said) in results {
        assert!(closed, "a stalled request head still holds its connection {:?} later ({said:?})", ended - sent);
        assert!(served < ended, "the normal create was served while the heads stalled");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overlong_headers_and_urls_get_a_4xx_never_a_5xx_or_a_hang() {
    let app = spawn_app_with(|_| {}).await;
    let address = app.address.trim_start_matches("http://").to_owned();
    let key = &app.key;
    let a = |n: usize| "a".repeat(n);
    let nines = |n: usize| "9".repeat(n);
    // (case, request, status, the service's error code; none where hyper answers before the service)
    let cases: Vec<(&str, String, u16, Option<&str>)> = vec![
        // hyper refuses a request head past its read buffer (~408 KiB) with 431, a URI past
        // 65534 bytes with 414.
        ("a 600 KB header", format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Filler: {}\r\n\r\n", a(600_000)), 431, None),
        (
            "600 KB of short headers",
            format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{}\r\n", "X-Filler: aaaaaaaaaa\r\n".repeat(27_000)),
            431,
            None,
        ),
        ("a 100 KB path", format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", a(100_000)), 414, None),
        ("a 100 KB integer id", format!("GET /users/{} HTTP/1.1\r\nHost: x\r\n\r\n", nines(100_000)), 414, None),
        // Within hyper's bounds: the service's own answers, with its error body.
        ("a 60 KB path", format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", a(60_000)), 404, Some("not_found")),
        (
            "a 60 KB integer id",
            format!("GET /users/{} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\r\n", nines(60_000)),
            400,
            Some("invalid_request"),
        ),
        (
            "a 60 KB public id",
            format!("GET /v1/users/usr_{} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\r\n", a(60_000)),
            400,
            Some("invalid_request"),
        ),
        (
            "a 200 KB API key",
            format!(
                "POST /users HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer uk_{}\r\n\
                 Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}",
                a(200_000)
            ),
            401,
            Some("unauthorized"),
        ),
        (
            "a 200 KB Content-Type",
            format!(
                "POST /users HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\
                 Content-Type: application/json; x={}\r\nContent-Length: 2\r\n\r\n{{}}",
                a(200_000)
            ),
            415,
            Some("unsupported_media_type"),
        ),
    ];
    let hostile = cases.iter().map(|(case, request, status, code)| {
        let address = address.clone();
        async move {
            let mut stream = TcpStream::connect(&address).await.unwrap();
            // The server may answer and close before it has read everything: a failed write is
            // fine as long as the answer arrives.
            let _ = stream.write_all(request.as_bytes()).await;
            let answer = tokio::time::timeout(Duration::from_secs(10), read_answer(&mut stream)).await;
            let answer = answer.unwrap_or_else(|_| panic!("{case}: no answer within 10 s"));
            let answer = answer.unwrap_or_else(|err| panic!("{case}: no HTTP answer: {err}"));
            println!("{case}: {}", answer.status);
            match code {
                Some(code) => assert_raw_error(&answer, *status, code, case),
                None => assert_eq!(answer.status, *status, "{case}"),
            }
        }
    });
    let (_, ()) = tokio::join!(join_all(hostile), create_meanwhile(&app, "meanwhile@example.com"));
    assert_eq!(app.get("/healthz").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_json_gets_a_4xx_with_the_error_body_never_a_500() {
    let app = spawn_app_with(|_| {}).await;
    let nested = |depth: usize| format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
    let nested_objects = |depth: usize| format!("{}1{}", r#"{"a":"#.repeat(depth), "}".repeat(depth));
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("1e400 as the email", br#"{"email": 1e400}"#.to_vec(), 400, "invalid_request"),
        (
            "1e400 in metadata",
            br#"{"email": "a@example.com", "metadata": {"n": 1e400}}"#.to_vec(),
            400,
            "invalid_request",
        ),
        ("-1e400 as a name", br#"{"email": "a@example.com", "name": -1e400}"#.to_vec(), 400, "invalid_request"),
        (
            "a 30-digit integer as the email",
            br#"{"email": 123456789012345678901234567890}"#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            "a 30-digit integer as the contactEmail",
            br#"{"firstName": "A", "lastName": "B", "contactEmail": 123456789012345678901234567890}"#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            "a 400-digit integer as the userId",
            format!(r#"{{"email": "a@example.com", "userId": {}}}"#, "9".repeat(400)).into_bytes(),
            400,
            "invalid_request",
        ),
        (
            "metadata nested past the parser's depth",
            format!(r#"{{"email": "a@example.com", "metadata": {{"deep": {}}}}}"#, nested(20_000)).into_bytes(),
            400,
            "invalid_request",
        ),
        (
            "objects nested past the parser's depth",
            format!(r#"{{"email": "a@example.com", "metadata": {}}}"#, nested_objects(10_000)).into_bytes(),
            400,
            "invalid_request",
        ),
        // The control: nesting within the parser's depth and the metadata bounds is stored.
        (
            "metadata nested within the parser's depth",
            format!(r#"{{"email": "a@example.com", "metadata": {{"deep": {}}}}}"#, nested(120)).into_bytes(),
            201,
            "",
        ),
        (
            "metadata objects nested 120 deep",
            format!(r#"{{"email": "a@example.com", "metadata": {}}}"#, nested_objects(120)).into_bytes(),
            422,
            "validation_failed",
        ),
        ("invalid UTF-8 in the email", b"{\"email\": \"\xff\xfe@example.com\"}".to_vec(), 400, "invalid_request"),
        ("invalid UTF-8 in a key", b"{\"\xc3\x28\": \"x\"}".to_vec(), 400, "invalid_request"),
        (
            "a truncated UTF-8 sequence",
            b"{\"email\": \"a@example.com\", \"name\": \"\xe2\x82\"}".to_vec(),
            400,
            "invalid_request",
        ),
        ("an escaped NUL in the email", br#"{"email": "a\u0000@example.com"}"#.to_vec(), 422, "validation_failed"),
        (
            "an escaped NUL in the name",
            br#"{"email": "a@example.com", "name": "A\u0000B"}"#.to_vec(),
            422,
            "validation_failed",
        ),
        (
            "an escaped NUL in a metadata value",
            br#"{"email": "a@example.com", "metadata": {"k": "v\u0000"}}"#.to_vec(),
            422,
            "validation_failed",
        ),
        (
            "an escaped NUL in a metadata key",
            br#"{"email": "a@example.com", "metadata": {"k\u0000": "v"}}"#.to_vec(),
            422,
            "validation_failed",
        ),
        (
            "an escaped NUL in a nested metadata value",
            br#"{"email": "a@example.com", "metadata": {"k": ["\u0000"]}}"#.to_vec(),
            422,
            "validation_failed",
        ),
        (
            "an escaped NUL in an unknown key",
            br#"{"email": "a@example.com", "x\u0000": 1}"#.to_vec(),
            400,
            "invalid_request",
        ),
        ("a raw NUL byte in a string", b"{\"email\": \"a\x00@example.com\"}".to_vec(), 400, "invalid_request"),
        ("a raw NUL byte between tokens", b"{\"email\":\x00\"a@example.com\"}".to_vec(), 400, "invalid_request"),
        (
            "a lone surrogate escape",
            br#"{"email": "a@example.com", "name": "\ud800"}"#.to_vec(),
            400,
            "invalid_request",
        ),
    ];
    let app = &app;
    let hostile = cases.iter().map(|(case, body, status, code)| async move {
        let response = app.post_raw("/users", Some("application/json"), body.clone(), Auth::Key).await;
        let (actual, json) = status_and_json(response).await;
        println!("{case}: {actual}");
        assert_eq!(actual.as_u16(), *status, "{case}: {json}");
        if *status != 201 {
            assert_eq!(json["error"], *code, "{case}: {json}");
            assert!(json["message"].as_str().is_some_and(|m| !m.is_empty()), "{case}: {json}");
        }
    });
    let (_, ()) = tokio::join!(join_all(hostile), create_meanwhile(app, "meanwhile@example.com"));
}

/// serde_json reads an integer past `u64` as the nearest `f64`; a metadata value the client sent
/// must not come back as another number.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_30_digit_metadata_number_is_refused_or_kept_exactly_never_rounded() {
    let app = spawn_app_with(|_| {}).await;
    let body = br#"{"email": "big@example.com", "metadata": {"n": 123456789012345678901234567890}}"#;
    let response = app.post_raw("/users", Some("application/json"), body.to_vec(), Auth::Key).await;
    let (status, json) = status_and_json(response).await;
    assert!(status.is_success() || status.is_client_error(), "{status}: {json}");
    if status.is_success() {
        // Accepted: then the user's metadata must be what was sent, not a float near it.
        let kept = json["metadata"]["n"].to_string();
        assert_eq!(kept, "123456789012345678901234567890", "the metadata number came back as {kept}");
    } else {
        assert!(json["error"].is_string(), "{json}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_concurrent_bodies_just_over_the_limit_all_get_413_and_the_server_still_answers() {
    let limit = 64 * 1024;
    let app = spawn_app_with(|s| s.body_limit = limit).await;
    let over = format!(r#"{{"email": "a@example.com", "name": "{}"}}"#, "x".repeat(limit));
    let over = over.as_bytes()[..limit + 1].to_vec();
    let flood = (0..40).map(|i| {
        let mut request = app
            .client
            .post(format!("{}/users", app.address))
            .bearer_auth(&app.key)
            .header("Content-Type", "application/json");
        // Half declare their length (refused before a byte is read), half are chunked (refused
        // once the limit is passed while reading).
        request = match i % 2 {
            0 => request.body(over.clone()),
            _ => request.body(reqwest::Body::wrap_stream(futures::stream::iter(
                over.chunks(4096).map(|chunk| Ok::<_, std::io::Error>(chunk.to_vec())).collect::<Vec<_>>(),
            ))),
        };
        async move { (i, request.send().await) }
    });
    let (answers, ()) = tokio::join!(join_all(flood), create_meanwhile(&app, "meanwhile@example.com"));
    for (i, answer) in answers {
        let response = answer.unwrap_or_else(|err| panic!("body {i}: no answer: {err}"));
        assert_eq!(response.headers()["connection"], "close", "body {i}: the unread connection is not reused");
        assert_error(response, 413, "payload_too_large", &[], &format!("body {i}")).await;
    }
    assert_eq!(app.get("/healthz").await.status(), 200);
    create_meanwhile(&app, "after@example.com").await;
}

// ---------------------------------------------------------------------------------------------
// Body parsing and variant dispatch, for any JSON object
// ---------------------------------------------------------------------------------------------

/// Every documented body field.
const DOCUMENTED: [&str; 9] =
    ["email", "userId", "name", "metadata", "firstName", "lastName", "contactEmail", "role", "password"];

/// The fields of each variant; a generated body mostly keeps to one of them, so that valid bodies
/// are common enough for the `Ok` properties to be exercised.
const VARIANT_FIELDS: [&[&str]; 5] = [
    &["email", "userId", "name", "metadata"],
    &["firstName", "lastName", "contactEmail"],
    &["firstName", "lastName", "email"],
    &["email", "name", "role", "metadata"],
    &["email", "password", "name"],
];

/// Text of every kind: printable, control characters, arbitrary Unicode, long.
fn any_text() -> BoxedStrategy<String> {
    prop_oneof![
        "\\PC{0,20}",
        "[\\x00-\\x1f\\x7f\\u{80}-\\u{9f} \\t\\n]{0,8}",
        any::<String>(),
        prop::collection::vec(any::<char>(), 190..560).prop_map(String::from_iter),
    ]
    .boxed()
}

fn email_like() -> BoxedStrategy<String> {
    prop_oneof![
        8 => "[ \\t\\n]{0,2}[A-Za-z0-9.+_-]{1,16}@[a-z0-9-]{1,12}\\.[a-z]{2,5}[ \\t\\n]{0,2}",
        1 => "[a-z]{60,68}@[a-z]{1,5}\\.io",
        1 => "a@[a-z]{240,255}\\.io",
        1 => "[a-z]{0,2}@?[a-z.]{0,3}",
        1 => any_text(),
    ]
    .boxed()
}

fn any_json() -> BoxedStrategy<Value> {
    json_leaf(any_text())
        .prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec((any_key(), inner), 0..6)
                    .prop_map(|entries| Value::Object(entries.into_iter().collect())),
            ]
        })
        .boxed()
}

/// A JSON value that is not an array or object, with strings from `text`.
fn json_leaf(text: BoxedStrategy<String>) -> BoxedStrategy<Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("JSON numbers are finite", |f| serde_json::Number::from_f64(f).map(Value::Number)),
        text.prop_map(Value::String),
    ]
    .boxed()
}

fn any_key() -> BoxedStrategy<String> {
    prop_oneof![prop::sample::select(&DOCUMENTED[..]).prop_map(str::to_owned), "[a-zA-Z_]{0,12}", any_text(),].boxed()
}

/// A value for `field`: mostly one of the kind it documents, sometimes anything.
fn field_value(field: &'static str) -> BoxedStrategy<Value> {
    let plausible = match field {
        "email" | "contactEmail" => email_like().prop_map(Value::String).boxed(),
        "role" => prop::sample::select(&["user", "admin", "Admin", " user ", "root", ""][..])
            .prop_map(|role| Value::String(role.to_owned()))
            .boxed(),
        "password" => prop_oneof![
            6 => "[a-z ]{8,24}",
            1 => Just("password".to_owned()),
            1 => "[a-z]{0,7}",
            1 => "[a-z]{125,135}",
        ]
        .prop_map(Value::String)
        .boxed(),
        "metadata" => prop::collection::vec(
            (
                prop_oneof![6 => "[a-z]{1,10}", 1 => "\\PC{0,45}"],
                prop_oneof![6 => json_leaf("\\PC{0,20}".boxed()), 1 => any_json()],
            ),
            0..6,
        )
        .prop_map(|entries| Value::Object(entries.into_iter().collect()))
        .boxed(),
        _ => prop_oneof![
            6 => "[ ]{0,2}[A-Za-z0-9][A-Za-z0-9 ]{0,29}[ ]{0,2}",
            1 => "[ ]{0,3}",
            1 => "[a-z]{95,210}",
            1 => any_text(),
        ]
        .prop_map(Value::String)
        .boxed(),
    };
    prop_oneof![8 => plausible, 1 => any_json()].boxed()
}

/// A JSON object with documented keys (mostly one variant's), strays and random keys, and values
/// of every JSON type.
fn any_body() -> impl Strategy<Value = Map<String, Value>> {
    let values: Vec<_> = DOCUMENTED.iter().map(|field| prop::option::weighted(0.85, field_value(field))).collect();
    (
        prop::sample::select(&VARIANT_FIELDS[..]),
        values,
        prop::collection::vec(prop::bool::weighted(0.03), DOCUMENTED.len()),
        prop::collection::vec((any_key(), any_json()), 0..3),
        prop::bool::weighted(0.1),
    )
        .prop_map(|(variant, values, strays, extras, with_extras)| {
            let mut body = Map::new();
            for ((field, value), stray) in DOCUMENTED.iter().zip(values).zip(strays) {
                if let Some(value) = value.filter(|_| stray || variant.contains(field)) {
                    body.insert((*field).to_owned(), value);
                }
            }
            if with_extras {
                body.extend(extras);
            }
            body
        })
}

/// What the fuzz target saw, to check that it reached every outcome.
#[derive(Default, Debug)]
struct Outcomes {
    created: BTreeMap<&'static str, usize>,
    refused: BTreeMap<&'static str, usize>,
}

/// Checks one answer of the dispatch against the properties.
fn check(
    outcome: Result<NewUser, ApiError>,
    body: &Map<String, Value>,
    outcomes: &RefCell<Outcomes>,
) -> Result<(), TestCaseError> {
    match outcome {
        Ok(user) => {
            let email = user.email.as_str();
            prop_assert_eq!(email, email.trim(), "the email is trimmed");
            prop_assert!((3..=254).contains(&email.chars().count()), "3 to 254 characters: {:?}", email);
            let field = if user.origin == Origin::Contact { "contactEmail" } else { "email" };
            prop_assert_eq!(body.get(field).and_then(Value::as_str).map(str::trim), Some(email), "from {}", field);
            *outcomes.borrow_mut().created.entry(origin_name(user.origin)).or_default() += 1;
        }
        Err(err) => {
            let code = err.code();
            prop_assert!(
                matches!(
                    code,
                    ErrorCode::InvalidRequest
                        | ErrorCode::MissingRequiredFields
                        | ErrorCode::ValidationFailed
                        | ErrorCode::Unauthorized
                ),
                "unexpected code {:?}: {}",
                code,
                err
            );
            if matches!(code, ErrorCode::MissingRequiredFields | ErrorCode::ValidationFailed) {
                prop_assert!(!err.details().is_empty(), "{:?} without details: {}", code, err);
            }
            for detail in err.details() {
                // An unknown key is named as sent, and `""` is a key like any other.
                prop_assert!(!detail.field.is_empty() || detail.rule == "unknown_field", "{:?}", detail);
                prop_assert!(!detail.message.is_empty(), "{:?}", detail);
            }
            *outcomes.borrow_mut().refused.entry(code.as_str()).or_default() += 1;
        }
    }
    Ok(())
}

fn origin_name(origin: Origin) -> &'static str {
    match origin {
        Origin::Linked => "linked",
        Origin::Contact => "contact",
        Origin::Person => "person",
        Origin::Member => "member",
        Origin::SignUp => "signup",
    }
}

#[test]
fn dispatch_of_any_json_object_never_panics_and_answers_only_documented_errors() {
    let outcomes = RefCell::new(Outcomes::default());
    let key = Caller::Key(KeyIdentity { id: 1, name: "fuzz".to_owned() });
    let config = Config { cases: 2000, source_file: Some(file!()), ..Config::default() };
    let started = Instant::now();
    let result = TestRunner::new(config).run(&any_body(), |body| {
        check(api::users_variant(body.clone()), &body, &outcomes)?;
        check(api::v1_variant(body.clone(), &key), &body, &outcomes)?;
        let public = api::v1_variant(body.clone(), &Caller::Public);
        if !body.contains_key("password") {
            // Only a signup is public; anything else is refused before its fields are looked at.
            prop_assert_eq!(public.as_ref().map(|_| ()).map_err(ApiError::code), Err(ErrorCode::Unauthorized));
        } else {
            prop_assert!(
                public.as_ref().is_ok() || public.as_ref().is_err_and(|e| e.code() != ErrorCode::Unauthorized)
            );
        }
        check(public, &body, &outcomes)
    });
    let outcomes = outcomes.into_inner();
    println!("{:?} in {:?}", outcomes, started.elapsed());
    if let Err(failure) = result {
        panic!("{failure}");
    }
    // The generator reaches every outcome; if it stopped, the properties above would hold vacuously.
    for origin in ["linked", "contact", "person", "member", "signup"] {
        assert!(outcomes.created.get(origin).is_some_and(|n| *n >= 10), "too few valid {origin} bodies: {outcomes:?}");
    }
    for code in ["invalid_request", "missing_required_fields", "validation_failed", "unauthorized"] {
        assert!(outcomes.refused.get(code).is_some_and(|n| *n >= 10), "too few {code}: {outcomes:?}");
    }
}
