//! Connecting to the store (a SQLite file by default, PostgreSQL by URL) and migrating it.

use std::{path::Path, time::Duration};

use migration::{Migrator, MigratorTrait};
use sea_orm::{
    ConnectOptions, Database, DatabaseConnection, DbBackend, DbErr, RuntimeErr,
    sqlx::{
        Error as SqlxError,
        postgres::PgConnectOptions,
        sqlite::{SqliteConnection, SqliteJournalMode, SqliteSynchronous},
    },
};

/// How long a request waits for a pooled connection before the service answers 503.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a pooled connection may sit idle before it is pinged when next taken.
pub(crate) const PING_AFTER_IDLE: Duration = Duration::from_secs(1);
/// Each SQLite connection's page cache, in KiB.
const SQLITE_CACHE_KIB: u32 = 256;
/// How long SQLite waits for another writer's lock before giving up on a statement.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The URL of the default store: `users.db` in `data_dir`, created if missing.
pub fn default_sqlite_url(data_dir: &Path) -> std::io::Result<String> {
    std::fs::create_dir_all(data_dir)?;
    Ok(format!("sqlite://{}?mode=rwc", data_dir.join("users.db").display()))
}

/// The pool size when none is configured: 4 on SQLite, whose creates all go through one writer
/// (the rest serve reads and key lookups, which are cached), 16 on PostgreSQL.
pub fn default_max_connections(url: &str) -> u32 {
    if url.starts_with("sqlite:") { 4 } else { 16 }
}

/// How many connections [`connect`] opens, all at once, before it returns: half the pool on
/// PostgreSQL, where a new connection is a new server process and a login, and under TLS took 88
/// ms on loopback (see [`no_delay_to`]). Without them, a burst just after start waited for the
/// pool to open each connection it found missing: the first run at c=16 on a new server had a
/// p99 of 48 to 170 ms, the next ones 3 to 7 ms. Half of 16: at c=16 and c=64 the pool ends a run
/// with 6 or 7 connections when it opens them as needed. Opened together, the lot takes about as
/// long as the one that sqlx would otherwise open alone. On SQLite one, as before: a connection
/// opens in the process in a millisecond.
fn opened_at_start(url: &str, max_connections: u32) -> u32 {
    match url.starts_with("postgres") {
        true => max_connections.div_ceil(2),
        false => 1,
    }
}

/// Opens a pool on `url`. For SQLite: WAL, so readers never wait for the writer, and
/// `synchronous=FULL`, so that every acknowledged write is on disk before the 201 goes out,
/// surviving power loss as well as a process crash.
pub async fn connect(url: &str, max_connections: u32) -> Result<DatabaseConnection, DbErr> {
    let postgres_port = postgres_tcp_port(url);
    let opened = opened_at_start(url, max_connections);
    let mut options = ConnectOptions::new(url.to_owned());
    options
        .max_connections(max_connections)
        .min_connections(1)
        // sqlx opens `min_connections` one after another; several are opened below, together.
        .connect_lazy(opened > 1)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_timeout(ACQUIRE_TIMEOUT)
        // Statements are not logged: they carry bound values, which may include emails.
        .sqlx_logging(false)
        // sqlx pings every connection it takes back (and closes one that broke in use); pinging
        // again on every acquire cost a round trip per write: a fifth of the creates per second at
        // c=1 on either backend. Only a connection idle long enough to have been cut while idle
        // (a database restart or failover, a proxy's or firewall's idle timeout) is pinged first.
        .test_before_acquire_if_idle_for(PING_AFTER_IDLE)
        // SQLite opens a file it cannot write read-only, silently; such a connection would keep
        // failing every write after the file is writable again (found by
        // `resilience::creates_succeed_again_…`). Each new connection proves it can write, or is
        // never pooled.
        .map_sqlx_sqlite_pool_opts(|pool| {
            pool.after_connect(|connection, _| Box::pin(prove_writable(connection)))
                .after_release(|connection, _| Box::pin(settled(connection)))
        })
        .map_sqlx_postgres_pool_opts(move |pool| {
            pool.after_connect(move |_, _| {
                Box::pin(async move {
                    if let Some(port) = postgres_port {
                        no_delay_to(port);
                    }
                    Ok(())
                })
            })
        })
        .map_sqlx_sqlite_opts(|sqlite| {
            sqlite
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(SQLITE_BUSY_TIMEOUT)
                // Each connection's page cache, in KiB (SQLite's default is 2,000). The writer keeps
                // its connection, and with it a cache the others' commits no longer empty: at c=64,
                // resident memory under plain creates 30.7 MiB with the default, 23.8 MiB with this,
                // and under signups after them (two 19 MiB Argon2 buffers on top) 68.9 against 62.0
                // MiB. Creates per second, A/B medians: 15,172 against 15,096 at c=64, 8,554
                // against 8,574 at c=16. The operating system's cache holds the file's pages anyway.
                .pragma("cache_size", format!("-{SQLITE_CACHE_KIB}"))
                .foreign_keys(true)
        });
    let db = Database::connect(options).await?;
    if opened > 1 {
        open_together(db.get_postgres_connection_pool(), opened).await?;
    }
    Ok(db)
}

/// Opens `count` connections of `pool` at once and leaves them idle in it. An error only if none
/// opened: the pool opens the others when they are needed, as it would have anyway.
async fn open_together(pool: &sea_orm::sqlx::PgPool, count: u32) -> Result<(), DbErr> {
    let mut opening = tokio::task::JoinSet::new();
    for _ in 0..count {
        let pool = pool.clone();
        // Each holds its connection until all are open: none is given back to be taken again.
        opening.spawn(async move { pool.acquire().await });
    }
    let outcomes = opening.join_all().await;
    let opened = outcomes.iter().filter(|outcome| outcome.is_ok()).count();
    match outcomes.into_iter().find_map(Result::err) {
        Some(err) if opened == 0 => Err(DbErr::Conn(RuntimeErr::SqlxError(err.into()))),
        Some(err) => {
            tracing::warn!("opened {opened} of {count} database connections at start: {err}");
            Ok(())
        }
        None => Ok(()),
    }
}

/// The TCP port of a PostgreSQL URL; `None` for other backends and for a Unix socket.
fn postgres_tcp_port(url: &str) -> Option<u16> {
    // Parsed only if it is one: sqlx-postgres reads any URL, warning at every start about the
    // parameters it does not know (`mode=rwc` of the default SQLite URL).
    if !url.starts_with("postgres") {
        return None;
    }
    let options = url.parse::<PgConnectOptions>().ok()?;
    options.get_socket().is_none().then(|| options.get_port())
}

/// Turns Nagle's algorithm off on every TCP connection of this process to `port`, as libpq and
/// sqlx 0.8 do on theirs. sqlx 0.9.0 leaves it on (sqlx issue #4335, fixed upstream by #4336 and
/// not yet released): the end of a statement too long for one segment then waits for the ACK of
/// the segment before it, which PostgreSQL delays by 40 ms. On loopback at c=64, batches of about
/// 60 rows took 44-53 ms instead of a few, twenty and more times per 10 s run, and creates' p99
/// was 52-55 ms in every run; with Nagle off, no such batch. sqlx does not hand out its sockets,
/// so a new connection's socket is found by its peer's port among the process's descriptors;
/// another connection to that port gets the same option, which suits it as well. Remove once
/// sqlx sets `TCP_NODELAY` itself. Elsewhere than Linux, a no-op.
///
/// This runs once a connection is made, too late for its TLS handshake: with `sslmode=prefer`
/// (the default) against a PostgreSQL with `ssl = on`, sqlx's client sends two small records back
/// to back twice, and each second one waits for PostgreSQL's delayed ACK: 88 ms per new
/// connection on loopback, measured with `PgConnection::connect` 20 times, against 2 ms with
/// `sslmode=disable`. Hence half the pool is opened at start, all at once ([`opened_at_start`]),
/// a writer keeps its connection ([`crate::writer`]), and a key's row is read, and read again, by
/// one request at a time ([`crate::keys::KeyCache`]): the pool grows less under load.
#[cfg_attr(not(target_os = "linux"), allow(unused_variables))]
fn no_delay_to(port: u16) {
    #[cfg(target_os = "linux")]
    {
        for fd in connections_to(port) {
            let on: libc::c_int = 1;
            // SAFETY: `setsockopt` reads `size_of::<c_int>()` bytes from `on`, which outlives the
            // call. On a descriptor that is not (or no longer) a TCP socket it fails, which
            // changes nothing and is ignored.
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::IPPROTO_TCP,
                    libc::TCP_NODELAY,
                    (&raw const on).cast(),
                    size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
        }
    }
}

/// This process's descriptors that are sockets connected to `port`.
#[cfg(target_os = "linux")]
fn connections_to(port: u16) -> impl Iterator<Item = libc::c_int> {
    let descriptors = std::fs::read_dir("/proc/self/fd").into_iter().flatten().flatten();
    descriptors
        .filter_map(|entry| entry.file_name().to_str()?.parse::<libc::c_int>().ok())
        .filter(move |&fd| tcp_peer_port(fd) == Some(port))
}

/// The peer's port of `fd`, if it is a connected IPv4 or IPv6 socket.
#[cfg(target_os = "linux")]
fn tcp_peer_port(fd: libc::c_int) -> Option<u16> {
    // SAFETY: all-zero bytes are a valid `sockaddr_storage`.
    let mut address: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut length = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `getpeername` writes at most `length` bytes into `address`, which is that large.
    if unsafe { libc::getpeername(fd, (&raw mut address).cast(), &mut length) } != 0 {
        return None;
    }
    // SAFETY: the family says which of the layouts `sockaddr_storage` is large enough for was written.
    match libc::c_int::from(address.ss_family) {
        libc::AF_INET => Some(u16::from_be(unsafe { (*(&raw const address).cast::<libc::sockaddr_in>()).sin_port })),
        libc::AF_INET6 => Some(u16::from_be(unsafe { (*(&raw const address).cast::<libc::sockaddr_in6>()).sin6_port })),
        _ => None,
    }
}

/// Connects and applies every pending migration: what every command does first.
///
/// Several processes may do this at once on one database (instances starting together, or a
/// `keys` command beside a server's first start), so each backend takes turns:
/// - SQLite has no advisory locks; switching a new file to WAL and creating tables both fail
///   with "database is locked" / "already exists" when two processes race (sea-orm-migration
///   decides what is pending before each migration's transaction). An exclusive lock on a file
///   beside the database, held from before connecting until migrated, serialises them.
/// - PostgreSQL: an advisory lock held by a session of its own around the migrations.
pub async fn open(url: &str, max_connections: u32) -> Result<DatabaseConnection, DbErr> {
    let _turn = match sqlite_file(url) {
        Some(database) => Some(lock_file(database.with_extension("migrate.lock")).await?),
        None => None,
    };
    let db = connect(url, max_connections).await?;
    match db.get_database_backend() {
        DbBackend::Postgres => migrate_postgres(&db).await?,
        _ => Migrator::up(&db, None).await?,
    }
    Ok(db)
}

/// The file of a SQLite URL; `None` for other backends and in-memory databases.
fn sqlite_file(url: &str) -> Option<std::path::PathBuf> {
    if !url.starts_with("sqlite:") {
        return None;
    }
    let options = url.parse::<sea_orm::sqlx::sqlite::SqliteConnectOptions>().ok()?;
    let file = options.get_filename();
    (!file.as_os_str().is_empty() && file != std::path::Path::new(":memory:")).then(|| file.to_owned())
}

/// Waits for an exclusive lock on `path`, held until the returned file is dropped.
async fn lock_file(path: std::path::PathBuf) -> Result<std::fs::File, DbErr> {
    tokio::task::spawn_blocking(move || {
        if let Some(directory) = path.parent() {
            std::fs::create_dir_all(directory)?;
        }
        let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path)?;
        file.lock()?;
        Ok::<_, std::io::Error>(file)
    })
    .await
    .map_err(|err| DbErr::Custom(format!("waiting for the migration lock: {err}")))?
    .map_err(|err| DbErr::Custom(format!("taking the migration lock: {err}")))
}

/// Migrations under a PostgreSQL advisory lock, held by a session detached from the pool:
/// advisory locks belong to a session, and pooled sessions are shared.
async fn migrate_postgres(db: &DatabaseConnection) -> Result<(), DbErr> {
    let sqlx_error = |err: SqlxError| DbErr::Conn(RuntimeErr::SqlxError(err.into()));
    let mut lock_holder = db.get_postgres_connection_pool().acquire().await.map_err(sqlx_error)?.detach();
    sea_orm::sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut lock_holder)
        .await
        .map_err(sqlx_error)?;
    let migrated = Migrator::up(db, None).await;
    // Closing the session releases the lock whatever happened above.
    let _ = sea_orm::sqlx::Connection::close(lock_holder).await;
    migrated
}

/// The advisory lock key of migrations: "usersapi" in ASCII.
const MIGRATION_LOCK: i64 = 0x7573_6572_7361_7069;

/// Whether the database can serve creates: on PostgreSQL, that it answers; on SQLite, that it
/// takes a write too (a file that cannot be written still answers reads).
pub async fn probe(db: &DatabaseConnection) -> Result<(), DbErr> {
    if db.get_database_backend() != DbBackend::Sqlite {
        return db.ping().await;
    }
    let sqlx_error = |err: SqlxError| DbErr::Conn(RuntimeErr::SqlxError(err.into()));
    let mut connection = db.get_sqlite_connection_pool().acquire().await.map_err(sqlx_error)?;
    prove_writable(&mut connection).await.map_err(sqlx_error)
}

/// Proves a SQLite connection can write, by rewriting the header's `user_version` with its own
/// value: nothing changes but the file's change counter.
async fn prove_writable(connection: &mut SqliteConnection) -> Result<(), SqlxError> {
    let version: i64 = sea_orm::sqlx::query_scalar("PRAGMA user_version").fetch_one(&mut *connection).await?;
    // An integer just read: nothing injectable (PRAGMA takes no bind parameters).
    let rewrite = sea_orm::sqlx::AssertSqlSafe(format!("PRAGMA user_version = {version}"));
    sea_orm::sqlx::query(rewrite).execute(&mut *connection).await?;
    Ok(())
}

/// Whether a SQLite connection given back to the pool may be used again: only with no
/// transaction open by sqlx's count.
///
/// When a `COMMIT` fails on I/O, SQLite has already rolled the transaction back; the `ROLLBACK`
/// that follows then fails too, and sqlx never lowers its count. Reused, that connection would
/// turn the next `BEGIN` into a `SAVEPOINT` whose `RELEASE` commits nothing: 201s for users never
/// stored (found by `resilience::an_unwritable_sqlite_file_…` once creates ran in transactions).
/// Such a connection is closed instead.
async fn settled(connection: &mut SqliteConnection) -> Result<bool, SqlxError> {
    Ok(!sea_orm::sqlx::Connection::is_in_transaction(connection))
}

/// Whether `err` means the database cannot be reached or cannot write right now (503, safe to
/// retry), as opposed to a bug (500): no connection could be had, a pooled connection broke, SQLite
/// found its file locked, read-only, unopenable or failing I/O, or PostgreSQL is shutting down,
/// starting up or out of resources.
pub fn is_unavailable(err: &DbErr) -> bool {
    let runtime = match err {
        DbErr::Conn(_) | DbErr::ConnectionAcquire(_) => return true,
        DbErr::Exec(runtime) | DbErr::Query(runtime) => runtime,
        _ => return false,
    };
    let RuntimeErr::SqlxError(sqlx_error) = runtime else { return false };
    match sqlx_error.as_ref() {
        SqlxError::Io(_) | SqlxError::PoolTimedOut | SqlxError::PoolClosed | SqlxError::WorkerCrashed => true,
        SqlxError::Database(database) => {
            let code = database.code().unwrap_or_default();
            match database.try_downcast_ref::<sea_orm::sqlx::sqlite::SqliteError>() {
                // SQLite primary result codes (the low byte of an extended code): BUSY 5, LOCKED 6,
                // NOMEM 7, READONLY 8, IOERR 10, FULL 13, CANTOPEN 14.
                Some(_) => code.parse::<i32>().is_ok_and(|code| [5, 6, 7, 8, 10, 13, 14].contains(&(code & 0xff))),
                // PostgreSQL SQLSTATE classes: 08 connection exception, 53 insufficient resources,
                // 57P admin shutdown, crash shutdown, cannot connect now.
                None => code.starts_with("08") || code.starts_with("53") || code.starts_with("57P"),
            }
        }
        _ => false,
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// Whether Nagle's algorithm is off on every connection of this process to `port`, and how many there are.
    fn nagle_off_on_connections_to(port: u16) -> (bool, usize) {
        let mut found = 0;
        let mut all_off = true;
        for fd in connections_to(port) {
            let mut on: libc::c_int = 0;
            let mut length = size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: `getsockopt` writes at most `length` bytes into `on`.
            let read = unsafe {
                libc::getsockopt(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, (&raw mut on).cast(), &mut length)
            };
            found += 1;
            all_off &= read == 0 && on == 1;
        }
        (all_off, found)
    }

    #[test]
    fn no_delay_to_a_port_turns_nagle_off_on_connections_to_that_port_only() {
        let (chosen, other) =
            (std::net::TcpListener::bind("127.0.0.1:0").unwrap(), std::net::TcpListener::bind("127.0.0.1:0").unwrap());
        let to_chosen = std::net::TcpStream::connect(chosen.local_addr().unwrap()).unwrap();
        let to_other = std::net::TcpStream::connect(other.local_addr().unwrap()).unwrap();
        assert!(!to_chosen.nodelay().unwrap() && !to_other.nodelay().unwrap(), "Nagle is on by default");
        no_delay_to(chosen.local_addr().unwrap().port());
        assert!(to_chosen.nodelay().unwrap(), "the connection to the chosen port has Nagle off");
        assert!(!to_other.nodelay().unwrap(), "a connection to another port is left as it was");
    }

    #[test]
    fn only_a_postgresql_url_over_tcp_has_a_port_to_turn_nagle_off_for() {
        assert_eq!(postgres_tcp_port("postgres://postgres@127.0.0.1:6543/db"), Some(6543));
        assert_eq!(postgres_tcp_port("postgresql://postgres@localhost/db"), Some(5432));
        assert_eq!(postgres_tcp_port("postgres://postgres@%2Fvar%2Frun%2Fpostgresql/db"), None);
        assert_eq!(postgres_tcp_port("sqlite://data/users.db?mode=rwc"), None);
    }

    /// On the suite's PostgreSQL run (`TEST_DATABASE_URL` over TCP), the pool's connections have
    /// Nagle off from their first statement. The SQLite run has no such connection to look at.
    #[tokio::test]
    async fn pooled_postgres_connections_have_nagle_off() {
        let Some((url, port)) =
            std::env::var("TEST_DATABASE_URL").ok().and_then(|url| Some((url.clone(), postgres_tcp_port(&url)?)))
        else {
            return;
        };
        let db = connect(&url, 2).await.unwrap();
        let held = db.get_postgres_connection_pool().acquire().await.unwrap();
        let (all_off, found) = nagle_off_on_connections_to(port);
        assert!(found >= 1 && all_off, "{found} connections to port {port}, Nagle off on all: {all_off}");
        drop(held);
        db.close().await.unwrap();
    }
}
