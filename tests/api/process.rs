//! Process-level tests ("nothing lost"): the real `users-api` binary, started and stopped the way an
//! operator or an orchestrator does it (environment variables, SIGKILL, SIGTERM, two instances on
//! one database), then read back through the API and the database.
//!
//! Every process is held by a [`Process`], which kills it when dropped, so a failing assertion
//! never leaves a server behind. Servers listen on port 0 on 127.0.0.1; the port is read from the
//! server's own "listening on" log line.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    io::{BufRead, BufReader, Read},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use futures::future::join_all;
use serde_json::{Value, json};
use tokio::sync::{Notify, watch};
use users_api::keys::ApiKeySecret;

use crate::helpers::{FreshDatabase, create_until_refused};

/// How long a server may take to start listening, a process to exit, or a test to see an event.
const PATIENCE: Duration = Duration::from_secs(15);

/// Everything a process wrote to stdout and stderr so far, and how many of the two are still open.
#[derive(Debug, Clone, Default)]
struct Captured {
    text: String,
    open_streams: usize,
}

/// A child process and everything it writes. Dropping it kills the process (SIGKILL) and reaps it.
struct Process {
    child: Child,
    output: watch::Receiver<Captured>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Process {
    /// Starts the binary with `args` and only the environment `env`: nothing from the test's own
    /// environment (a `DATABASE_URL` or `PORT` exported in the shell) can reach it.
    fn spawn(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_users-api"))
            .args(args)
            .env_clear()
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary starts");
        let (sender, output) = watch::channel(Captured { text: String::new(), open_streams: 2 });
        let sender = Arc::new(sender);
        let readers = vec![
            capture(child.stdout.take().unwrap(), Arc::clone(&sender)),
            capture(child.stderr.take().unwrap(), sender),
        ];
        Self { child, output, readers }
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    /// What the process wrote so far.
    fn log(&self) -> String {
        self.output.borrow().text.clone()
    }

    /// Waits until the output satisfies `seen`, or both streams closed; `false` on the latter or
    /// after [`PATIENCE`].
    async fn wait_for_output(&self, seen: impl Fn(&str) -> bool) -> bool {
        let mut output = self.output.clone();
        let outcome = tokio::time::timeout(PATIENCE, output.wait_for(|c| seen(&c.text) || c.open_streams == 0)).await;
        outcome.is_ok_and(|captured| captured.is_ok_and(|c| seen(&c.text)))
    }

    /// Sends SIGTERM, as an orchestrator stopping the service does.
    fn terminate(&self) {
        let status = Command::new("kill").args(["-TERM", &self.pid()]).status().expect("kill runs");
        assert!(status.success(), "kill -TERM {}", self.pid());
    }

    /// SIGKILL: the process dies wherever it is, as in a crash or an OOM kill.
    fn crash(&mut self) {
        self.child.kill().expect("SIGKILL is delivered");
        self.child.wait().expect("the killed process is reaped");
    }

    /// Waits up to `within` for the process to exit; `None` if it is still running then.
    async fn exit_within(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Everything the process wrote, once it has exited and both streams are closed.
    fn into_log(mut self) -> String {
        for reader in self.readers.drain(..) {
            reader.join().expect("the output reader ends");
        }
        self.log()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // A no-op when the process was already reaped: std never signals a reaped pid.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Copies `stream` into `into`, line by line, until it closes.
fn capture(stream: impl Read + Send + 'static, into: Arc<watch::Sender<Captured>>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut line = Vec::new();
        while reader.read_until(b'\n', &mut line).is_ok_and(|read| read > 0) {
            into.send_modify(|captured| captured.text.push_str(&String::from_utf8_lossy(&line)));
            line.clear();
        }
        into.send_modify(|captured| captured.open_streams -= 1);
    })
}

/// A `users-api serve` process that is listening.
struct Server {
    process: Process,
    api: Api,
}

/// How to call a server: apart from its process, so that a test can call it while killing it.
struct Api {
    /// `http://127.0.0.1:<port>`.
    address: String,
    /// The bootstrap key (every scope).
    key: String,
    client: reqwest::Client,
}

/// Starts a server on `database` with the key `key` and the extra settings `env`. Returns at once;
/// [`Starting::listening`] waits for it, so that several can be started together.
fn launch(database: &FreshDatabase, key: &str, env: &[(&str, &str)]) -> Starting {
    let mut settings = vec![
        ("DATABASE_URL", database.url()),
        ("USERS_API_KEY", key),
        ("HOST", "127.0.0.1"),
        ("PORT", "0"),
        ("DATABASE_MAX_CONNECTIONS", "5"),
        // The "listening on" line, which names the port, is an info line of users_api.
        ("RUST_LOG", "info"),
    ];
    for (name, value) in env {
        settings.retain(|(set, _)| set != name);
        settings.push((name, value));
    }
    Starting { process: Process::spawn(&["serve"], &settings), key: key.to_owned() }
}

/// A server process that may not be listening yet.
struct Starting {
    process: Process,
    key: String,
}

impl Starting {
    /// Waits for the "listening on http://…" line and reads the address from it.
    async fn listening(self) -> Server {
        const LISTENING: &str = "listening on http://";
        let process = self.process;
        assert!(
            process.wait_for_output(|text| text.contains(LISTENING)).await,
            "no server came up:\n{}",
            process.log()
        );
        let log = process.log();
        let (_, rest) = log.split_once(LISTENING).unwrap();
        let authority = rest.split_whitespace().next().unwrap().to_owned();
        assert!(authority.starts_with("127.0.0.1:"), "listens on loopback only: {authority}");
        let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
        Server { process, api: Api { address: format!("http://{authority}"), key: self.key, client } }
    }
}

async fn start(database: &FreshDatabase, key: &str, env: &[(&str, &str)]) -> Server {
    launch(database, key, env).listening().await
}

impl Api {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// `POST` a JSON body with the bootstrap key.
    fn post(&self, path: &str, body: &Value) -> reqwest::RequestBuilder {
        self.client.post(self.url(path)).bearer_auth(&self.key).json(body)
    }

    /// `GET` a path with the bootstrap key.
    async fn get_with_key(&self, path: &str) -> (u16, Value) {
        let response = self.client.get(self.url(path)).bearer_auth(&self.key).send().await.expect("an answer");
        (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
    }
}

impl Server {
    /// SIGTERM, then waits for the exit; the exit status and the whole log.
    async fn stop(mut self) -> (ExitStatus, String) {
        self.process.terminate();
        let status = self.process.exit_within(PATIENCE).await;
        let status = status.unwrap_or_else(|| panic!("no exit after SIGTERM:\n{}", self.process.log()));
        (status, self.process.into_log())
    }
}

fn fresh_key() -> String {
    ApiKeySecret::generate().expose().to_owned()
}

/// The `Location` header of a response.
fn location(response: &reqwest::Response) -> Option<String> {
    response.headers().get("location").map(|value| value.to_str().unwrap().to_owned())
}

/// A create request of the variant `variant` (any number; taken modulo the variants) for `email`.
/// Every variant with a key, so that none is held back by the public signup limit.
fn create_request(variant: usize, email: &str) -> (&'static str, Value) {
    match variant % 5 {
        0 => ("/users", json!({"email": email, "name": "Linked"})),
        1 => ("/users", json!({"firstName": "Contact", "lastName": "User", "contactEmail": email})),
        2 => ("/users", json!({"firstName": "Person", "lastName": "User", "email": email})),
        3 => ("/v1/users", json!({"email": email, "name": "Member"})),
        _ => ("/v1/users", json!({"email": email, "password": "a fine passphrase"})),
    }
}

// ---------------------------------------------------------------------------------------------
// 1. A crash loses no acknowledged user and keeps no refused one.
// ---------------------------------------------------------------------------------------------

/// What a client learnt of one create.
#[derive(Debug)]
enum Outcome {
    /// 201, with the `Location` of the user.
    Created(String),
    /// An error answer: status and body.
    Refused(u16, String),
    /// No answer: the process died first (or the connection could not be made).
    NoResponse(String),
}

/// Creates users with unique emails from `tasks` concurrent clients until `stop`, recording what
/// each got; signals `enough` once `acknowledged` creates were answered 201. One request in five
/// is invalid on purpose (a blank `firstName`), so that there are error answers whose email must
/// never be stored.
async fn create_until_stopped(
    server: &Api,
    tasks: usize,
    acknowledged: usize,
    stop: &AtomicBool,
    enough: &Notify,
) -> Vec<(String, Outcome)> {
    let created = AtomicUsize::new(0);
    let load = (0..tasks).map(|task| {
        let created = &created;
        async move {
            let mut outcomes = Vec::new();
            for i in 0.. {
                if stop.load(Ordering::Acquire) {
                    break;
                }
                let email = format!("crash-{task}-{i}@example.com");
                let (path, body) = match i % 5 {
                    4 => ("/users", json!({"firstName": " ", "lastName": "User", "contactEmail": email})),
                    variant => create_request(variant, &email),
                };
                let outcome = match server.post(path, &body).send().await {
                    Ok(response) if response.status() == 201 => {
                        let location = location(&response).expect("a 201 has a Location");
                        if created.fetch_add(1, Ordering::AcqRel) + 1 == acknowledged {
                            enough.notify_one();
                        }
                        Outcome::Created(location)
                    }
                    Ok(response) => {
                        let status = response.status().as_u16();
                        // The status is the server's verdict, even if the body is cut off by the kill.
                        let body = response.text().await.unwrap_or_else(|err| format!("(body lost: {err})"));
                        Outcome::Refused(status, body)
                    }
                    Err(err) => Outcome::NoResponse(err.to_string()),
                };
                outcomes.push((email, outcome));
            }
            outcomes
        }
    });
    join_all(load).await.into_iter().flatten().collect()
}

async fn a_crash_under_load_loses_no_acknowledged_user(database: FreshDatabase) {
    const ACKNOWLEDGED: usize = 100;
    let case = database.backend();
    let key = fresh_key();
    // Unlimited, so that every error answer is the server's verdict on the request itself.
    let settings = [("RATE_LIMITS", "false")];
    let Server { mut process, api } = start(&database, &key, &settings).await;
    let stop = AtomicBool::new(false);
    let enough = Notify::new();
    let (outcomes, ()) = tokio::join!(create_until_stopped(&api, 8, ACKNOWLEDGED, &stop, &enough), async {
        let reached = tokio::time::timeout(PATIENCE, enough.notified()).await;
        // Killed mid-load, with requests in flight, whether or not the count was reached in time.
        process.crash();
        stop.store(true, Ordering::Release);
        assert!(reached.is_ok(), "{case}: {ACKNOWLEDGED} creates were not acknowledged in time");
    });

    let mut created = Vec::new();
    let mut refused = Vec::new();
    let mut unanswered = HashMap::new();
    for (email, outcome) in &outcomes {
        match outcome {
            Outcome::Created(location) => created.push((email, location)),
            Outcome::Refused(status, body) => refused.push((email.as_str(), *status, body.as_str())),
            Outcome::NoResponse(reason) => {
                unanswered.insert(email.as_str(), reason.as_str());
            }
        }
    }
    assert!(created.len() >= ACKNOWLEDGED, "{case}: {} created", created.len());
    assert!(!refused.is_empty(), "{case}: the invalid requests were answered");

    // The same file (or database) after a restart: every acknowledged user is there, through the
    // API, and no refused one is, in the table.
    let restarted = start(&database, &key, &settings).await;
    for (email, location) in &created {
        let (status, user) = restarted.api.get_with_key(location).await;
        assert_eq!((status, user["email"].as_str()), (200, Some(email.as_str())), "{case}: {email} at {location}");
    }
    let stored: HashSet<String> = database.strings("SELECT email_key FROM users").await.into_iter().collect();
    let kept: Vec<_> = refused.iter().filter(|(email, _, _)| stored.contains(*email)).collect();
    assert!(kept.is_empty(), "{case}: refused creates were stored: {kept:?}");
    // Unanswered creates may or may not have been stored; nothing else may be.
    let acknowledged: HashSet<&str> = created.iter().map(|(email, _)| email.as_str()).collect();
    let unexplained: Vec<&String> = stored
        .iter()
        .filter(|email| !acknowledged.contains(email.as_str()) && !unanswered.contains_key(email.as_str()))
        .collect();
    assert!(unexplained.is_empty(), "{case}: rows no create accounts for: {unexplained:?}; unanswered: {unanswered:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_acknowledged_user_survives_sigkill_and_no_refused_one_is_stored() {
    let mut databases = vec![FreshDatabase::sqlite()];
    databases.extend(FreshDatabase::postgres().await);
    for database in databases {
        a_crash_under_load_loses_no_acknowledged_user(database).await;
    }
}

// ---------------------------------------------------------------------------------------------
// 2. SIGTERM finishes what was accepted, accepts nothing new, and exits 0.
// ---------------------------------------------------------------------------------------------

/// Public signups per minute in the shutdown test: each signup and each probe takes one; one comes
/// back every 100 ms, which only ever makes a probe undercount the admitted signups.
const SIGNUP_LIMIT: u32 = 600;

/// How many public signups the server has let through its access check, at least, judging by a
/// probe: a public `POST /v1/users` whose `RateLimit-Remaining` counts every signup and probe
/// checked before it. The check runs inside the request handler, after the request head was read,
/// so a signup counted here is one the server is processing, not one waiting in the kernel's
/// accept queue. The server logs nothing at a request's start (poem's `Tracing` writes its line at
/// the end), so this is the earliest trace a request leaves that a client can see.
async fn admitted_signups(server: &Server, probes_sent: u32) -> u32 {
    let probe = server
        .api
        .client
        .post(server.api.url("/v1/users"))
        .json(&json!({}))
        .send()
        .await
        .expect("the probe is answered");
    let remaining: u32 = probe.headers()["ratelimit-remaining"].to_str().unwrap().parse().unwrap();
    SIGNUP_LIMIT.saturating_sub(remaining).saturating_sub(probes_sent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_finishes_in_flight_signups_refuses_new_connections_and_exits_zero() {
    const SIGNUPS: usize = 10;
    const GRACE: Duration = Duration::from_secs(10);
    let database = FreshDatabase::create().await;
    let key = fresh_key();
    let limit = SIGNUP_LIMIT.to_string();
    // One hasher: the signups are hashed one after another (~30 ms each), so most are still
    // being processed when the signal comes.
    let settings = [("HASH_CONCURRENCY", "1"), ("SHUTDOWN_GRACE", "10s"), ("RATE_LIMIT_SIGNUP_PER_ADDRESS", &limit)];
    let mut server = start(&database, &key, &settings).await;

    let answered = Arc::new(AtomicUsize::new(0));
    let signups: Vec<_> = (0..SIGNUPS)
        .map(|i| {
            let email = format!("graceful-{i}@example.com");
            let request = server
                .api
                .client
                .post(server.api.url("/v1/users"))
                .json(&json!({"email": email, "password": "a fine passphrase"}));
            let answered = Arc::clone(&answered);
            tokio::spawn(async move {
                let response = request.send().await;
                answered.fetch_add(1, Ordering::AcqRel);
                let response = response.map_err(|err| format!("{email}: no answer: {err}"))?;
                let status = response.status().as_u16();
                let location = location(&response);
                let body = response.text().await.map_err(|err| format!("{email}: body lost: {err}"))?;
                Ok::<_, String>((email, status, location, body))
            })
        })
        .collect();

    // Every signup is inside the server before the signal: counted by the access check.
    let mut probes = 0;
    let deadline = Instant::now() + PATIENCE;
    loop {
        probes += 1;
        if admitted_signups(&server, probes).await >= SIGNUPS as u32 {
            break;
        }
        assert!(Instant::now() < deadline, "the signups never reached the server");
        // A poll interval, not a wait for the race: the loop ends on the count, not the clock.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let answered_before_signal = answered.load(Ordering::Acquire);
    let signalled = Instant::now();
    server.process.terminate();

    // A new connection at once: the signal may not have been handled yet, so it may be answered;
    // or it is refused, or closed unanswered if it was accepted just as shutdown began (hyper
    // closes a connection whose request it has not read yet). Never left hanging.
    let newcomer =
        reqwest::Client::builder().timeout(Duration::from_secs(5)).pool_max_idle_per_host(0).build().unwrap();
    match newcomer.get(server.api.url("/healthz")).send().await {
        Ok(response) => assert_eq!(response.status(), 200, "right after SIGTERM: answered, then properly"),
        Err(err) => assert!(!err.is_timeout(), "right after SIGTERM: a new connection hung: {err:?}"),
    }
    // poem logs this line once it has closed its listener, while connections are still open (the
    // signups', the probes' idle one): from then on a new connection is refused outright.
    let draining = server.process.wait_for_output(|text| text.contains("wait for all connections to close")).await;
    assert!(draining, "no draining line:\n{}", server.process.log());
    match newcomer.get(server.api.url("/healthz")).send().await {
        Ok(response) => panic!("while draining: a new connection was answered {}", response.status()),
        Err(err) => assert!(err.is_connect(), "while draining: a new connection was not refused: {err:?}"),
    }

    let mut created = Vec::new();
    for signup in signups {
        let answer = tokio::time::timeout(PATIENCE, signup).await.expect("every signup is answered").unwrap();
        let (email, status, location, body) =
            answer.unwrap_or_else(|lost| panic!("an in-flight signup was lost: {lost}"));
        assert_eq!(status, 201, "{email}: {body}");
        created.push((email, location.expect("a 201 has a Location")));
    }
    let exit = server.process.exit_within(PATIENCE).await;
    let exit = exit.unwrap_or_else(|| panic!("still running 15 s after SIGTERM:\n{}", server.process.log()));
    assert!(exit.success(), "exit status {exit}:\n{}", server.process.log());
    assert!(signalled.elapsed() < GRACE, "exited after {:?}, past the grace period", signalled.elapsed());
    assert!(server.process.log().contains("server stopped"), "{}", server.process.log());
    assert!(
        answered_before_signal < SIGNUPS,
        "every signup was answered before SIGTERM, so none was in flight: the test proved nothing"
    );

    let restarted = start(&database, &key, &[]).await;
    for (email, location) in &created {
        let (status, user) = restarted.api.get_with_key(location).await;
        assert_eq!((status, user["email"].as_str()), (200, Some(email.as_str())), "{email} at {location}");
    }
    assert_eq!(database.count("SELECT COUNT(*) FROM users").await, SIGNUPS as i64, "the probes created nobody");
}

/// On a clean stop the server closes its database. On SQLite the last connection to close copies
/// the WAL into the database file and removes it, so `users.db` alone holds every user: a backup
/// that copies only that file after a stop is complete. (PostgreSQL, likewise, sees each session
/// end instead of logging one "connection reset by peer" per pooled connection.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sigterm_the_sqlite_file_alone_holds_every_user() {
    let database = FreshDatabase::sqlite();
    let file = std::path::PathBuf::from(database.url().trim_start_matches("sqlite://").trim_end_matches("?mode=rwc"));
    let wal = file.with_extension("db-wal");
    let server = start(&database, &fresh_key(), &[]).await;
    let (path, body) = create_request(2, "whole-file@example.com");
    let response = server.api.post(path, &body).send().await.expect("an answer");
    assert_eq!(response.status(), 201);
    assert!(wal.metadata().is_ok_and(|wal| wal.len() > 0), "while serving, commits go to the WAL");

    let (status, log) = server.stop().await;
    assert!(status.success(), "exit status {status}:\n{log}");
    assert!(!wal.exists(), "the WAL is checkpointed and removed at a clean stop:\n{log}");
    let copy = tempfile::tempdir().unwrap();
    std::fs::copy(&file, copy.path().join("users.db")).unwrap();
    let copied = FreshDatabase::sqlite_at(copy.path().join("users.db"));
    assert_eq!(copied.count("SELECT COUNT(*) FROM users WHERE email_key = 'whole-file@example.com'").await, 1);
}

/// Runs the binary's command line on `database` with `RUST_LOG=trace`; its stdout and stderr.
async fn run_cli(database: &FreshDatabase, args: &[&str]) -> (String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_users-api"));
    command.args(args).env_clear().env("DATABASE_URL", database.url()).env("RUST_LOG", "trace");
    let output = tokio::task::spawn_blocking(move || command.output().expect("the CLI runs")).await.unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{args:?}: {stdout}{stderr}");
    (stdout.into_owned(), stderr.into_owned())
}

// ---------------------------------------------------------------------------------------------
// 3. No password and no key ever reaches a log or a response.
// ---------------------------------------------------------------------------------------------

/// One request of the secrets test.
struct Call {
    method: &'static str,
    path: String,
    authorization: Option<String>,
    body: Option<Value>,
    status: u16,
}

fn call(method: &'static str, path: &str, authorization: Option<&str>, body: Option<Value>, status: u16) -> Call {
    Call { method, path: path.to_owned(), authorization: authorization.map(str::to_owned), body, status }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_password_or_key_ever_reaches_a_log_or_a_response_even_at_trace_level() {
    let database = FreshDatabase::create().await;
    let key = fresh_key();
    let suffix = uuid::Uuid::now_v7().simple().to_string();
    let password = format!("secret passphrase {suffix}");
    let long_password = format!("{}{suffix}", "too long a passphrase ".repeat(6));
    let unknown_key = fresh_key();
    let malformed_key = format!("not-a-key-{suffix}");
    let server = start(&database, &key, &[("RUST_LOG", "trace"), ("RATE_LIMITS", "false")]).await;
    let bearer = format!("Bearer {key}");

    // The CLI, while the server runs: its key goes to stdout once, and nowhere else.
    let (cli_stdout, mut cli_stderr) =
        run_cli(&database, &["keys", "create", "--name", "x", "--scope", "users:write"]).await;
    let cli_key = cli_stdout.trim().to_owned();
    assert!(cli_key.parse::<ApiKeySecret>().is_ok() && cli_stdout.matches(&cli_key).count() == 1, "{cli_stdout}");
    assert!(cli_stderr.contains("sea_orm_migration"), "the CLI logs: {cli_stderr}");
    let cli_bearer = format!("Bearer {cli_key}");

    let signup = |email: &str| json!({"email": email, "password": password, "name": "Signed Up"});
    let calls = [
        call("POST", "/users", Some(&bearer), Some(json!({"email": "linked@example.com", "userId": "ext-1"})), 201),
        call(
            "POST",
            "/users",
            Some(&bearer),
            Some(json!({"firstName": "A", "lastName": "B", "contactEmail": "contact@example.com"})),
            201,
        ),
        call(
            "POST",
            "/users",
            Some(&bearer),
            Some(json!({"firstName": "A", "lastName": "B", "email": "person@example.com"})),
            201,
        ),
        call("POST", "/v1/users", Some(&bearer), Some(json!({"email": "member@example.com", "name": "M"})), 201),
        call("POST", "/v1/users", None, Some(signup("public@example.com")), 201),
        call("POST", "/v1/users", Some(&bearer), Some(signup("keyed@example.com")), 201),
        call("POST", "/users", Some(&cli_bearer), Some(json!({"email": "cli-key@example.com"})), 201),
        call("POST", "/v1/users", None, Some(signup("PUBLIC@example.com")), 409),
        call("POST", "/v1/users", None, Some(signup("not-an-email")), 422),
        call("POST", "/v1/users", None, Some(json!({"email": "long@example.com", "password": long_password})), 422),
        call(
            "POST",
            "/v1/users",
            None,
            Some(json!({"email": "x@example.com", "password": password, "role": "admin"})),
            400,
        ),
        call("POST", "/v1/users", None, Some(json!({"email": 5, "password": password})), 400),
        call("POST", "/v1/users", Some(&format!("Bearer {unknown_key}")), Some(signup("unknown@example.com")), 401),
        call("POST", "/users", Some(&format!("Bearer {malformed_key}")), Some(json!({"email": "m@example.com"})), 401),
        call("POST", "/users", Some(&format!("Basic {malformed_key}")), Some(json!({"email": "b@example.com"})), 401),
        call("GET", "/users/1", Some(&bearer), None, 200),
        call("GET", "/users/1", Some(&format!("Bearer {unknown_key}")), None, 401),
        call("GET", "/users/999", Some(&bearer), None, 404),
        call("GET", "/openapi.json", None, None, 200),
        call("GET", "/openapi.yaml", None, None, 200),
        call("GET", "/docs", None, None, 200),
        call("GET", "/healthz", None, None, 200),
        call("GET", "/readyz", None, None, 200),
    ];
    let mut responses = String::new();
    let mut locations = Vec::new();
    for Call { method, path, authorization, body, status } in &calls {
        let mut request = server.api.client.request(method.parse().unwrap(), server.api.url(path));
        if let Some(authorization) = authorization {
            request = request.header("Authorization", authorization);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.expect("an answer");
        assert_eq!(response.status(), *status, "{method} {path} {body:?}");
        locations.extend(location(&response).filter(|location| location.starts_with("/v1/")));
        responses.push_str(&format!("{:?}\n", response.headers()));
        responses.push_str(&response.text().await.unwrap());
    }
    for location in &locations {
        let response = server.api.client.get(server.api.url(location)).bearer_auth(&key).send().await.unwrap();
        assert_eq!(response.status(), 200, "{location}");
        responses.push_str(&format!("{:?}\n", response.headers()));
        responses.push_str(&response.text().await.unwrap());
    }
    // A revoked key: refused, and the refusal is a DEBUG line, which only a verbose filter shows.
    let (_, revoke_stderr) = run_cli(&database, &["keys", "revoke", "x"]).await;
    cli_stderr.push_str(&revoke_stderr);
    let (revoked, _) = create_until_refused(&server.api.client, &server.api.url("/users"), &cli_bearer).await;
    assert_eq!(revoked.status(), 401, "a revoked key");
    responses.push_str(&format!("{:?}\n", revoked.headers()));
    responses.push_str(&revoked.text().await.unwrap());
    let (status, log) = server.stop().await;
    assert!(status.success(), "{log}");

    // The log is the one of a server at trace level that saw every call: the check can fail.
    let request_lines = log.lines().filter(|line| line.contains("poem::middleware::tracing_mw")).count();
    assert!(request_lines > calls.len() + locations.len(), "{request_lines} request lines:\n{log}");
    assert!(log.contains(" DEBUG ") && log.contains("refused a revoked or expired key"), "not verbose:\n{log}");
    for status in ["201 Created", "401 Unauthorized", "409 Conflict", "422 Unprocessable Entity"] {
        assert!(log.contains(&format!("status={status}")), "no {status} line:\n{log}");
    }
    let secrets = [
        ("the password", password.as_str()),
        ("the too-long password", &long_password),
        ("the bootstrap key", &key),
        ("the unknown key", &unknown_key),
        ("the malformed key", &malformed_key),
        ("the CLI's key", &cli_key),
    ];
    let outputs =
        [("the server's log", log.as_str()), ("the CLI's stderr", &cli_stderr), ("the responses", &responses)];
    for (secret, value) in secrets {
        for (output, text) in outputs {
            assert!(!text.contains(value), "{secret} appears in {output}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Two instances on one empty database.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_migrating_one_empty_database_together_store_each_email_once() {
    const EMAILS: usize = 20;
    const ATTEMPTS_PER_INSTANCE: usize = 3;
    // PostgreSQL when TEST_DATABASE_URL is set, where the migration advisory lock is at stake;
    // else two processes on one SQLite file, which must come to the same result.
    let database = FreshDatabase::create().await;
    let case = database.backend();
    let key = fresh_key();
    let settings = [("RATE_LIMITS", "false")];
    // Both processes are running before either is waited for: they migrate the empty database at once.
    let starting = [launch(&database, &key, &settings), launch(&database, &key, &settings)];
    let servers = join_all(starting.map(Starting::listening)).await;
    let applied = servers
        .iter()
        .filter(|server| server.process.log().contains("Migration 'm20261123_000001_create_users' has been applied"))
        .count();
    assert_eq!(applied, 1, "{case}: exactly one instance applies the migrations");

    // Each email in three spellings and five variants, three times through each instance.
    let spellings =
        |i: usize| [format!("dup{i}@example.com"), format!("DUP{i}@example.com"), format!("Dup{i}@EXAMPLE.COM")];
    let attempts: Vec<(usize, &Server, usize, String)> = (0..EMAILS)
        .flat_map(|i| {
            let servers = &servers;
            (0..2 * ATTEMPTS_PER_INSTANCE).map(move |n| (i, &servers[n % 2], i + n, spellings(i)[n % 3].clone()))
        })
        .collect();
    let answers = join_all(attempts.iter().map(|(i, server, variant, email)| async move {
        let (path, body) = create_request(*variant, email);
        let response = server.api.post(path, &body).send().await.expect("an answer");
        let status = response.status().as_u16();
        (*i, status, response.json::<Value>().await.unwrap())
    }))
    .await;

    let mut by_email: BTreeMap<usize, HashMap<u16, usize>> = BTreeMap::new();
    for (i, status, body) in &answers {
        match status {
            201 => {}
            409 => assert_eq!(body["error"], "email_exists", "{case}: dup{i}: {body}"),
            other => panic!("{case}: dup{i}: {other} {body}"),
        }
        *by_email.entry(*i).or_default().entry(*status).or_default() += 1;
    }
    for (i, statuses) in &by_email {
        let expected = HashMap::from([(201, 1), (409, 2 * ATTEMPTS_PER_INSTANCE - 1)]);
        assert_eq!(statuses, &expected, "{case}: dup{i}");
    }
    assert_eq!(by_email.len(), EMAILS);
    assert_eq!(database.count("SELECT COUNT(*) FROM users").await, EMAILS as i64, "{case}");
    assert_eq!(database.count("SELECT COUNT(DISTINCT email_key) FROM users").await, EMAILS as i64, "{case}");
}
