//! Assembling the service: state, routes, middleware, and the server itself.

use std::{
    future::Future,
    net::SocketAddr,
    sync::{Arc, OnceLock},
    time::Duration,
};

use bytes::Bytes;

use poem::{
    Endpoint, EndpointExt, IntoResponse, Route, Server, get, handler,
    listener::{Acceptor, Listener, TcpListener},
    middleware::{CatchPanic, Tracing},
    web::Redirect,
};
use sea_orm::DatabaseConnection;

use crate::{
    api::{body::BodyRules, reply},
    config::Settings,
    database,
    error::ApiError,
    hasher::PasswordHasher,
    keys::{self, Bootstrap, KeyCache},
    limits::{RateLimits, RateSlot},
    spec,
    writer::UserWriter,
};

/// Who may call without a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccessPolicy {
    /// SignUp without a key.
    pub public_signup: bool,
    /// Everything without a key (development only).
    pub auth_disabled: bool,
}

/// What every request needs. Everything that correctness depends on is in the database, so any
/// number of instances can share one PostgreSQL; the rate limits are per instance by design.
#[derive(Clone)]
pub struct AppState {
    /// The store.
    pub db: DatabaseConnection,
    /// Where creates hand their rows (group commit).
    pub writer: UserWriter,
    /// Recently read API keys.
    pub keys: Arc<KeyCache>,
    /// The password hasher.
    pub hasher: PasswordHasher,
    /// Who may call without a key.
    pub access: AccessPolicy,
    /// Rate limits.
    pub limits: Arc<RateLimits>,
}

/// The whole HTTP application.
pub fn build_app(state: AppState, body_rules: BodyRules) -> impl poem::Endpoint {
    let document = spec::document();
    // Each response shares the one copy of its document rather than copying it.
    let json = Bytes::from(spec::to_json(&document));
    let yaml = Bytes::from(spec::to_yaml(&document));
    // Swagger UI's page (1.5 MB with its assets) is built at its first request: a server nobody
    // browses neither builds nor holds it.
    let docs = OnceLock::<Bytes>::new();
    Route::new()
        .at("/", get(redirect_to_docs))
        .at(
            "/openapi.json",
            get(poem::endpoint::make_sync(move |_| json.clone().with_content_type("application/json"))),
        )
        .at(
            "/openapi.yaml",
            get(poem::endpoint::make_sync(move |_| yaml.clone().with_content_type("application/yaml"))),
        )
        .at(
            "/docs",
            get(poem::endpoint::make_sync(move |_| {
                let page = docs.get_or_init(|| Bytes::from(spec::swagger_ui_html(&document)));
                page.clone().with_content_type("text/html; charset=utf-8")
            })),
        )
        .at("/healthz", get(healthz))
        .at("/readyz", get(readyz))
        // The API is nested under its own paths: nested at `/`, it would shadow `/` itself.
        .nest_no_strip("/users", spec::service())
        .nest_no_strip("/v1/users", spec::service())
        .data(state)
        .data(body_rules)
        .catch_all_error(|err| async move { reply::from_status(&err).into_response() })
        .around(|endpoint, mut request| async move {
            // RFC 9110 asks a 405 to say what is allowed; each path here has one method.
            let allowed = if matches!(request.uri().path(), "/users" | "/v1/users") { "POST" } else { "GET" };
            // The access check leaves the rate-limit state here, for every answer's headers.
            let slot = RateSlot::default();
            request.extensions_mut().insert(slot.clone());
            let mut response = endpoint.call(request).await?.into_response();
            if response.status() == poem::http::StatusCode::METHOD_NOT_ALLOWED {
                response.headers_mut().insert(poem::http::header::ALLOW, poem::http::HeaderValue::from_static(allowed));
            }
            if let Some(state) = slot.get() {
                state.write_headers(&mut response);
            }
            Ok(response)
        })
        .with(CatchPanic::new().with_handler(|_| ApiError::internal(&"a request handler panicked").into_response()))
        .with(Tracing)
}

#[handler]
fn redirect_to_docs() -> Redirect {
    Redirect::see_other("/docs")
}

/// Liveness: the process serves HTTP. Never touches the database, so an orchestrator does not
/// restart a healthy process because the database is down.
#[handler]
fn healthz() -> poem::web::Json<serde_json::Value> {
    poem::web::Json(serde_json::json!({"status": "ok"}))
}

/// How long readiness waits for the database.
const READINESS_TIMEOUT: Duration = Duration::from_secs(2);

/// Readiness: the database answers within [`READINESS_TIMEOUT`], and takes a write; else 503,
/// so that a load balancer sends traffic elsewhere until it does.
#[handler]
async fn readyz(state: poem::web::Data<&AppState>) -> poem::Response {
    match tokio::time::timeout(READINESS_TIMEOUT, database::probe(&state.db)).await {
        Ok(Ok(())) => poem::web::Json(serde_json::json!({"status": "ready"})).into_response(),
        outcome => {
            let reason = match outcome {
                Ok(Err(err)) => err.to_string(),
                _ => "the database did not answer in time".to_owned(),
            };
            tracing::warn!("not ready: {reason}");
            let mut response = poem::web::Json(serde_json::json!({"status": "unavailable"}))
                .with_status(poem::http::StatusCode::SERVICE_UNAVAILABLE)
                .into_response();
            response.headers_mut().insert(poem::http::header::RETRY_AFTER, poem::http::HeaderValue::from(2u32));
            response
        }
    }
}

/// Connects, migrates and registers the first key: everything before the first request.
pub async fn prepare(settings: &Settings) -> anyhow::Result<AppState> {
    let url = settings.database_url()?;
    let max_connections = settings.database_max_connections.unwrap_or_else(|| database::default_max_connections(&url));
    let db = database::open(&url, max_connections).await?;
    match keys::bootstrap(&db, settings.users_api_key.as_ref()).await? {
        Bootstrap::Generated(secret) => {
            // Printed once, here, and never logged: only its digest is stored.
            eprintln!(
                "\nNo API key existed, so one was generated with every scope. It is shown only now:\n\n    {}\n",
                secret.expose()
            );
        }
        Bootstrap::RegisteredConfigured => {
            tracing::info!("registered USERS_API_KEY as key {:?}", keys::BOOTSTRAP_KEY_NAME)
        }
        Bootstrap::KeysExist { configured_key_unknown: true } => tracing::warn!(
            "USERS_API_KEY is set but API keys already exist and it is not one of them; it is not registered"
        ),
        Bootstrap::KeysExist { .. } => {}
    }
    if settings.dev_disable_auth {
        tracing::warn!(
            "DEV_DISABLE_AUTH is on: EVERY REQUEST IS ACCEPTED WITHOUT AN API KEY. Never run this in production."
        );
        eprintln!("\n!!! WARNING: DEV_DISABLE_AUTH is on: API keys are not checked. Development only. !!!\n");
    }
    let limits = Arc::new(match settings.rate_limits {
        true => RateLimits::new(
            Some(settings.rate_limit_per_key),
            Some(settings.rate_limit_signup_per_address),
            settings.trust_forwarded_for,
        ),
        false => RateLimits::off(),
    });
    let weak = Arc::downgrade(&limits);
    tokio::spawn(async move {
        let mut every_minute = tokio::time::interval(Duration::from_secs(60));
        // Ends with the state: the limits are dropped when the server is.
        while let Some(limits) = {
            every_minute.tick().await;
            weak.upgrade()
        } {
            limits.forget_idle();
        }
    });
    let hash_concurrency = settings.hash_concurrency.unwrap_or_else(PasswordHasher::cores);
    let hash_beside_requests =
        settings.hash_beside_requests.unwrap_or_else(|| PasswordHasher::default_beside_requests(hash_concurrency));
    Ok(AppState {
        writer: UserWriter::start(db.clone()),
        keys: Arc::default(),
        db,
        hasher: PasswordHasher::new(hash_concurrency, hash_beside_requests, settings.hash_queue),
        access: AccessPolicy { public_signup: settings.public_signup, auth_disabled: settings.dev_disable_auth },
        limits,
    })
}

/// How long a stopped server waits for its database connections to close.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// A server that is accepting connections.
pub struct RunningServer {
    /// The address it listens on (the real port when 0 was asked for).
    pub local_addr: SocketAddr,
    /// Its state, for tests and embedders to observe (the hasher's count, say).
    pub state: AppState,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl RunningServer {
    /// Waits until the server stops, then closes the database connections: on SQLite the last
    /// one to close moves the WAL into the database file, so the file alone holds every user; on
    /// PostgreSQL each session ends cleanly rather than being reset. Closing waits for a write
    /// still in progress, for at most [`CLOSE_GRACE`].
    pub async fn wait(self) -> anyhow::Result<()> {
        let served = self.task.await?;
        match tokio::time::timeout(CLOSE_GRACE, self.state.db.close()).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::warn!("closing the database connections: {err}"),
            Err(_) => tracing::warn!("the database connections did not close within {CLOSE_GRACE:?}"),
        }
        Ok(served?)
    }
}

/// Accepts connections whose reads time out. poem's idle timeout asks hyper to shut a connection
/// down gracefully, and hyper then waits for a request head it has begun to read for ever: a
/// client that stops mid-head (a slow-loris) held its connection indefinitely (found by
/// `resilience::a_request_head_that_stalls_…`). A read that gets no byte for `read_timeout` now
/// fails, which ends the connection.
struct ReadTimeoutAcceptor<A> {
    inner: A,
    read_timeout: Duration,
}

impl<A: Acceptor> Acceptor for ReadTimeoutAcceptor<A> {
    type Io = std::pin::Pin<Box<tokio_io_timeout::TimeoutStream<A::Io>>>;

    fn local_addr(&self) -> Vec<poem::web::LocalAddr> {
        self.inner.local_addr()
    }

    async fn accept(
        &mut self,
    ) -> std::io::Result<(Self::Io, poem::web::LocalAddr, poem::web::RemoteAddr, poem::http::uri::Scheme)> {
        let (io, local, remote, scheme) = self.inner.accept().await?;
        let mut io = tokio_io_timeout::TimeoutStream::new(io);
        io.set_read_timeout(Some(self.read_timeout));
        Ok((Box::pin(io), local, remote, scheme))
    }
}

/// Prepares the state, binds, and serves until `shutdown` completes.
pub async fn start(
    settings: &Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<RunningServer> {
    let state = prepare(settings).await?;
    let acceptor = ReadTimeoutAcceptor {
        inner: TcpListener::bind(settings.listen_addr()?).into_acceptor().await?,
        read_timeout: settings.idle_timeout,
    };
    let local_addr = *acceptor
        .local_addr()
        .first()
        .and_then(|addr| addr.as_socket_addr())
        .ok_or_else(|| anyhow::anyhow!("the listener has no socket address"))?;
    let app =
        build_app(state.clone(), BodyRules { limit: settings.body_limit, read_timeout: settings.body_read_timeout });
    let grace = settings.shutdown_grace;
    let server = Server::new_with_acceptor(acceptor).idle_timeout(settings.idle_timeout);
    let task = tokio::spawn(async move { server.run_with_graceful_shutdown(app, shutdown, Some(grace)).await });
    Ok(RunningServer { local_addr, state, task })
}
