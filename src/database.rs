//! Connecting to the store (a SQLite file by default, PostgreSQL by URL) and migrating it.

use std::{path::Path, time::Duration};

use migration::{Migrator, MigratorTrait};
use sea_orm::{
    ConnectOptions, Database, DatabaseConnection, DbBackend, DbErr, RuntimeErr,
    sqlx::{
        Error as SqlxError,
        sqlite::{SqliteConnection, SqliteJournalMode, SqliteSynchronous},
    },
};

/// How long a request waits for a pooled connection before the service answers 503.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a pooled connection may sit idle before it is pinged when next taken.
const PING_AFTER_IDLE: Duration = Duration::from_secs(1);
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

/// Opens a pool on `url`. For SQLite: WAL, so readers never wait for the writer, and
/// `synchronous=FULL`, so that every acknowledged write is on disk before the 201 goes out,
/// surviving power loss as well as a process crash.
pub async fn connect(url: &str, max_connections: u32) -> Result<DatabaseConnection, DbErr> {
    let mut options = ConnectOptions::new(url.to_owned());
    options
        .max_connections(max_connections)
        .min_connections(1)
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
        .map_sqlx_sqlite_opts(|sqlite| {
            sqlite
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(SQLITE_BUSY_TIMEOUT)
                .foreign_keys(true)
        });
    Database::connect(options).await
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
