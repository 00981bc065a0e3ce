//! Configuration: one clap struct, every setting a flag with an environment fallback, so that
//! `users-api --help` is the configuration reference.

use std::{
    net::SocketAddr,
    num::{NonZeroU32, NonZeroUsize},
    path::PathBuf,
    time::Duration,
};

use clap::{ArgAction, Args, Parser, Subcommand};

use crate::keys::{ApiKeySecret, Scope};

/// A self-hosted user-creation API: five documented create-user contracts on one store.
#[derive(Debug, Parser)]
#[command(name = "users-api", version, about)]
pub struct Cli {
    /// What to do; `serve` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Settings shared by every command.
    #[command(flatten)]
    pub settings: Settings,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP server (the default).
    Serve,
    /// Apply pending database migrations and exit (the server also applies them at start).
    Migrate,
    /// Write the OpenAPI document derived from the code to `<dir>/openapi.json` and `.yaml`.
    Openapi {
        /// Directory to write to.
        #[arg(long, default_value = "openapi")]
        dir: PathBuf,
    },
    /// Manage API keys, on the same database as the server, also while it runs.
    #[command(subcommand)]
    Keys(KeysCommand),
}

/// `keys` subcommands.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key and print it once; only its SHA-256 digest is stored.
    Create {
        /// A unique name for the key, such as the team or service that holds it.
        #[arg(long)]
        name: String,
        /// A scope the key holds: `users:write` (create users) or `users:read`. Repeatable.
        #[arg(long = "scope", required = true)]
        scopes: Vec<Scope>,
        /// Let the key expire after this long, such as `30d` or `12h`.
        #[arg(long, value_parser = humantime::parse_duration)]
        expires_in: Option<Duration>,
    },
    /// List keys: name, scopes, created, last used, expiry, revocation. Never the key itself.
    List,
    /// Revoke the key named NAME; it is refused from its next request on.
    Revoke {
        /// The key's name.
        name: String,
    },
}

/// Settings shared by every command.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// Address to listen on.
    #[arg(long, env = "HOST", default_value = "127.0.0.1", global = true)]
    pub host: String,

    /// Port to listen on; 0 picks a free one.
    #[arg(long, env = "PORT", default_value_t = 3000, global = true)]
    pub port: u16,

    /// Database URL: `postgres://user@host/db`, or `sqlite://path?mode=rwc`. When unset, a SQLite
    /// file `users.db` in the data directory, created and migrated on first start.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,

    /// Directory of the default SQLite database.
    #[arg(long, env = "DATA_DIR", default_value = "data", global = true)]
    pub data_dir: PathBuf,

    /// Most database connections this instance opens [default: 16 on PostgreSQL, half of them at
    /// start; 4 on SQLite, where one writer stores every create and each connection keeps a thread
    /// and a page cache].
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", global = true)]
    pub database_max_connections: Option<u32>,

    /// When no API key exists at start, register this one with every scope (else one is
    /// generated and printed once to stderr). `uk_` followed by at least 32 letters and digits.
    #[arg(long, env = "USERS_API_KEY", global = true, hide_env_values = true)]
    pub users_api_key: Option<ApiKeySecret>,

    /// Let `POST /v1/users` with a password (SignUp) create users without an API key.
    #[arg(long, env = "PUBLIC_SIGNUP", default_value_t = true, action = ArgAction::Set, global = true)]
    pub public_signup: bool,

    /// DEVELOPMENT ONLY: accept every request without checking API keys. Never use in production.
    #[arg(long, env = "DEV_DISABLE_AUTH", default_value_t = false, action = ArgAction::Set, global = true)]
    pub dev_disable_auth: bool,

    /// Largest accepted request body, in bytes; larger ones get 413.
    #[arg(long, env = "BODY_LIMIT", default_value_t = 64 * 1024, global = true)]
    pub body_limit: usize,

    /// Apply the rate limits below (429 with `Retry-After` past them). Limits are per instance.
    #[arg(long, env = "RATE_LIMITS", default_value_t = true, action = ArgAction::Set, global = true)]
    pub rate_limits: bool,

    /// Requests per minute allowed to each API key.
    #[arg(long, env = "RATE_LIMIT_PER_KEY", default_value = "6000", global = true)]
    pub rate_limit_per_key: NonZeroU32,

    /// Public signups (no API key) per minute allowed from each client address.
    #[arg(long, env = "RATE_LIMIT_SIGNUP_PER_ADDRESS", default_value = "20", global = true)]
    pub rate_limit_signup_per_address: NonZeroU32,

    /// Take the client address from the last `X-Forwarded-For` entry. Only behind a proxy that
    /// sets it: otherwise clients can pick their own address and escape the signup limit.
    #[arg(long, env = "TRUST_FORWARDED_FOR", default_value_t = false, action = ArgAction::Set, global = true)]
    pub trust_forwarded_for: bool,

    /// Passwords hashed at once (Argon2id: ~12 ms of CPU on one core and 19 MiB each); default: the
    /// core count.
    #[arg(long, env = "HASH_CONCURRENCY", global = true)]
    pub hash_concurrency: Option<usize>,

    /// Of those, how many go on hashing while other requests (plain creates, reads) are served,
    /// on idle time only (a hash that gets under 10 ms of CPU in 200 ms there runs at normal
    /// priority instead, and so do the next ones for 10 s); the rest pause until a second after
    /// the last one. Default: one fewer than the core count, at least 1. Equal to the concurrency:
    /// never pause.
    #[arg(long, env = "HASH_BESIDE_REQUESTS", global = true)]
    pub hash_beside_requests: Option<usize>,

    /// Threads that serve requests [default: every core but one, at least one]. The core left
    /// over runs what a create waits for besides: SQLite's connection thread (or a PostgreSQL on
    /// the same machine) and the Argon2 hashes.
    #[arg(long, env = "WORKER_THREADS", global = true)]
    pub worker_threads: Option<NonZeroUsize>,

    /// Signups that may wait for a hasher; past that, 503 with `Retry-After` at once.
    #[arg(long, env = "HASH_QUEUE", default_value_t = 128, global = true)]
    pub hash_queue: usize,

    /// After SIGTERM or Ctrl-C: how long in-flight requests get to finish before the server exits.
    #[arg(long, env = "SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration, global = true)]
    pub shutdown_grace: Duration,

    /// How long a request body may take to arrive in full; slower ones get 408.
    #[arg(long, env = "BODY_READ_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration, global = true)]
    pub body_read_timeout: Duration,

    /// A connection that sends nothing for this long is closed, also mid-request (a stalled head).
    #[arg(long, env = "IDLE_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration, global = true)]
    pub idle_timeout: Duration,
}

impl Settings {
    /// The address to listen on.
    pub fn listen_addr(&self) -> anyhow::Result<SocketAddr> {
        let host = self.host.trim_start_matches('[').trim_end_matches(']');
        let ip: std::net::IpAddr =
            host.parse().map_err(|_| anyhow::anyhow!("HOST {:?} is not an IP address", self.host))?;
        Ok(SocketAddr::new(ip, self.port))
    }

    /// The database URL, defaulting to the SQLite file in the data directory.
    pub fn database_url(&self) -> anyhow::Result<String> {
        match &self.database_url {
            Some(url) => Ok(url.clone()),
            None => Ok(crate::database::default_sqlite_url(&self.data_dir)?),
        }
    }

    /// The number of threads that serve requests: `WORKER_THREADS`, else every core but one.
    ///
    /// On two cores, one thread against tokio's default of one per core, A/B on one machine (a
    /// new database per 6 s run, median of three), creates per second and the service's CPU per
    /// create: SQLite c=1 2,409 against 2,723 (273 against 237 µs), c=16 19,620 against 21,038
    /// (50.5 against 44.3 µs), c=64 33,266 against 36,308 (36.3 against 32.5 µs); PostgreSQL c=1
    /// 2,131 against 2,294, c=16 14,856 against 15,330 (38.7 against 32.4 µs), c=64 27,810
    /// against 28,176. Two workers woke each other across the cores, and the store's threads,
    /// for every request, where one keeps them on its core. Plain creates' p99 beside signups
    /// and the signup rate did not change.
    pub fn worker_threads(&self) -> usize {
        let every_core_but_one = || std::thread::available_parallelism().map_or(1, |cores| cores.get() - 1).max(1);
        self.worker_threads.map_or_else(every_core_but_one, NonZeroUsize::get)
    }

    /// Defaults, as if no flag or variable were given: for tests and embedding.
    pub fn defaults() -> Self {
        Cli::parse_from(["users-api"]).settings
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn requests_are_served_by_every_core_but_one_unless_told_otherwise() {
        let mut settings = Settings::defaults();
        settings.worker_threads = None;
        let cores = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
        assert_eq!(settings.worker_threads(), cores.saturating_sub(1).max(1));
        settings.worker_threads = NonZeroUsize::new(3);
        assert_eq!(settings.worker_threads(), 3);
    }

    #[test]
    fn debug_of_settings_redacts_the_key() {
        let mut settings = Settings::defaults();
        let key = ApiKeySecret::generate();
        settings.users_api_key = Some(key.clone());
        assert!(!format!("{settings:?}").contains(key.expose()));
    }
}
