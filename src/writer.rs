//! Group commit: concurrent creates share one database write.
//!
//! Every create hands its row to a writer task and waits for the row as stored. A writer takes
//! whatever rows have arrived (up to [`MAX_BATCH`]) and stores them with one multi-row
//! `INSERT … RETURNING` whatever the batch's size (its rows sent as one array per column on
//! PostgreSQL, as one JSON array on SQLite), under one commit: one WAL sync for the lot. On SQLite,
//! and on PostgreSQL once a unique index refused a row of the plain insert, the insert skips what
//! the indexes refuse (`ON CONFLICT DO NOTHING`). While it writes, the next rows gather, so
//! batches grow with the load and a lone request waits for no timer: it is written at once, alone.
//!
//! A row the insert skipped ran into a unique index. It is then inserted alone, after the batch's
//! commit, which fails on the index it ran into: the error names it for that request alone
//! ([`crate::users`] maps it to 409), and the batch's other rows are stored regardless.
//!
//! Nothing here is state that correctness depends on: uniqueness is still the database's call, a
//! row is acknowledged only after its commit, and a commit that fails fails every request in it.

use std::{collections::HashMap, sync::Arc, time::Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use entity::user;
use sea_orm::{
    ActiveValue::{self, Set},
    ConnectionTrait, DatabaseConnection, DbBackend, DbErr, EntityTrait, QueryResult, QueryTrait, RuntimeErr, SqlErr,
    TryIntoModel,
    sea_query::Query,
    sqlx::{self, SqliteConnection, pool::PoolConnection},
};
use sea_query_sqlx::SqlxValues;
use tokio::sync::{Mutex, mpsc, oneshot};
use uuid::Uuid;

use crate::database;

/// Most rows in one batch, and in one statement.
const MAX_BATCH: usize = 128;
/// Rows waiting for a writer before creates wait to hand theirs over.
const QUEUE: usize = 4 * MAX_BATCH;
/// How often a batch is written again after PostgreSQL broke a deadlock by aborting it: two
/// instances inserting the same emails in different orders can each wait for the other's row.
const DEADLOCK_ATTEMPTS: usize = 3;

/// The outcome of one row: stored, or refused by a unique index or a failed write (shared by
/// every row of a batch that failed as a whole).
pub type Stored = Result<user::Model, Arc<DbErr>>;

/// Hands rows to the writer tasks; cheap to clone. The tasks end when the last clone is dropped.
#[derive(Clone)]
pub struct UserWriter {
    rows: mpsc::Sender<Job>,
}

/// A row to store, and where to send it as stored.
struct Job {
    row: user::ActiveModel,
    uuid: Uuid,
    reply: oneshot::Sender<Stored>,
}

impl UserWriter {
    /// Writer tasks for `db`: one on SQLite, which has one writer per file anyway; two on
    /// PostgreSQL, so that one batch gathers while the other waits for its commit. (Four or
    /// eight took fewer creates per second at c=16 and c=64 than two, and one fewer still: each
    /// writer's batches grow smaller and its commits more.)
    pub fn start(db: DatabaseConnection) -> Self {
        let writers = match db.get_database_backend() {
            DbBackend::Sqlite => 1,
            _ => 2,
        };
        let (rows, receiver) = mpsc::channel(QUEUE);
        let receiver = Arc::new(Mutex::new(receiver));
        for _ in 0..writers {
            tokio::spawn(write_batches(db.clone(), Arc::clone(&receiver)));
        }
        Self { rows }
    }

    /// Stores `row`, whose UUID is `uuid`, and returns it as stored once committed.
    pub async fn insert(&self, row: user::ActiveModel, uuid: Uuid) -> Stored {
        let (reply, stored) = oneshot::channel();
        if self.rows.send(Job { row, uuid, reply }).await.is_err() {
            return Err(Arc::new(writer_stopped()));
        }
        stored.await.unwrap_or_else(|_| Err(Arc::new(writer_stopped())))
    }
}

/// The error of a create whose writer is gone (only while the runtime shuts down): retryable.
fn writer_stopped() -> DbErr {
    DbErr::Conn(RuntimeErr::Internal("the writer task stopped".to_owned()))
}

/// One writer task: takes what has arrived, writes it, answers, until every sender is dropped.
async fn write_batches(db: DatabaseConnection, receiver: Arc<Mutex<mpsc::Receiver<Job>>>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut held = Held::default();
    let mut written_at = Instant::now();
    loop {
        let received = {
            // When the other writer is waiting for rows, this one waits its turn with its
            // connection: see [`Held`].
            let mut queue = receiver.lock().await;
            let unused_for = written_at.elapsed();
            if idle_connections(&db) == 0 || unused_for >= database::PING_AFTER_IDLE {
                held.give_back();
            }
            match held.is_some() {
                true => {
                    let rows = queue.recv_many(&mut batch, MAX_BATCH);
                    match tokio::time::timeout(database::PING_AFTER_IDLE - unused_for, rows).await {
                        Ok(received) => received,
                        // None came (cancelling `recv_many` loses none): it goes back.
                        Err(_) => {
                            held.give_back();
                            queue.recv_many(&mut batch, MAX_BATCH).await
                        }
                    }
                }
                false => queue.recv_many(&mut batch, MAX_BATCH).await,
            }
        };
        if received == 0 {
            return;
        }
        let written = write(&db, &mut held, std::mem::take(&mut batch)).await;
        written_at = Instant::now();
        let Err(err) = written else { continue };
        // The rows that queued while that write waited (up to the pool's 5 s acquire timeout)
        // fail with it rather than each wait as long again: one outage, one wait.
        if let Ok(mut queued) = receiver.try_lock() {
            while let Ok(job) = queued.try_recv() {
                let _ = job.reply.send(Err(Arc::clone(&err)));
            }
        }
    }
}

/// Writes `batch` and answers each of its requests. Returns the error of a write that failed as a
/// whole because the database is unavailable.
async fn write(db: &DatabaseConnection, held: &mut Held, batch: Vec<Job>) -> Result<(), Arc<DbErr>> {
    let (rows, replies): (Vec<_>, Vec<_>) =
        batch.into_iter().map(|Job { row, uuid, reply }| ((uuid, row), (uuid, reply))).unzip();
    match insert_batch(db, held, &rows).await {
        Ok(mut stored) => {
            for (uuid, reply) in replies {
                let outcome = stored.remove(&uuid).unwrap_or_else(|| Err(Arc::new(DbErr::RecordNotInserted)));
                // A closed reply is a request that went away; its row is stored all the same.
                let _ = reply.send(outcome);
            }
            Ok(())
        }
        Err(err) => {
            let err = Arc::new(err);
            for (_, reply) in replies {
                let _ = reply.send(Err(Arc::clone(&err)));
            }
            match database::is_unavailable(&err) {
                true => Err(err),
                false => Ok(()),
            }
        }
    }
}

/// Inserts `rows` and commits them: first every row no unique index refuses, in a statement that
/// skips the others, then each skipped row alone, to learn which index refused it.
///
/// - SQLite: see [`insert_batch_sqlite`].
/// - PostgreSQL: a statement that commits by itself ([`insert_new_postgres`]); then each skipped
///   row is its own transaction, since a failed statement aborts the transaction it is in. A
///   deadlock between instances (two batches inserting the same emails in different orders)
///   rolls back only the transaction PostgreSQL aborted, which is written again.
async fn insert_batch(
    db: &DatabaseConnection,
    held: &mut Held,
    rows: &[(Uuid, user::ActiveModel)],
) -> Result<HashMap<Uuid, Stored>, DbErr> {
    if db.get_database_backend() == DbBackend::Sqlite {
        return insert_batch_sqlite(db, held, rows).await;
    }
    // As `retrying_deadlocks` does, but lending the held connection to each attempt. (An async
    // closure over `held` would let `retrying_deadlocks` serve here too, but rustc cannot yet prove
    // such a future `Send`, which `tokio::spawn` needs: tried, "implementation of `Send` is not
    // general enough".)
    let mut attempts = 1;
    let mut stored = loop {
        match insert_new_postgres(db, held, rows).await {
            Err(err) if is_deadlock(&err) && attempts < DEADLOCK_ATTEMPTS => attempts += 1,
            outcome => break outcome?,
        }
    };
    insert_skipped(db, rows, &mut stored).await;
    Ok(stored)
}

/// Inserts every row of `rows` that no unique index refuses, skipping the others, in statements
/// that commit by themselves, whatever the batch's size: the batch goes as one array per column,
/// which `UNNEST` turns back into rows. One round trip per batch, and one prepared statement per
/// connection, where a multi-row `VALUES` list needs a statement per batch size (or several
/// statements and a transaction around them: 4 to 5 round trips for 7 rows). A/B on one machine
/// in one hour, creates per second at c=16: 4,123 and 4,907 before, 5,656 and 6,119 after (p99 69
/// and 46 ms before, 25 and 19 ms after); at c=64: 7,539 and 6,339 before, 8,459 and 8,077 after.
/// It needs Nagle's algorithm off on the connection ([`crate::database`]): a batch of some 60 rows
/// otherwise waited 45 ms for a delayed ACK, run after run.
///
/// The batch goes first as a plain `INSERT`, and only if a unique index refuses one of its rows
/// (which fails the statement, storing none) again with `ON CONFLICT DO NOTHING`. That clause
/// makes PostgreSQL insert each row speculatively: it probes all five unique indexes before the
/// insert, then confirms the row with one more write. A/B alternated, 8 s at c=16 on a new
/// database each, three rounds, creates per second: 12,611 / 12,939 / 13,154 with the clause
/// always, 13,639 / 14,260 / 14,983 with it only after a refusal; PostgreSQL's CPU per create
/// (all its processes, `/proc/<pid>/stat`) 58.6 / 56.2 / 55.9 against 52.0 / 48.8 / 47.2 µs. At
/// c=64 and c=1, within the noise. A lone row needs no second statement: the unique violation is
/// its answer.
async fn insert_new_postgres(
    db: &DatabaseConnection,
    held: &mut Held,
    rows: &[(Uuid, user::ActiveModel)],
) -> Result<HashMap<Uuid, Stored>, DbErr> {
    let connection = match &mut held.postgres {
        Some(connection) => connection,
        None => held.postgres.insert(db.get_postgres_connection_pool().acquire().await.map_err(connection_error)?),
    };
    let inserted = match rows {
        // A lone row as a plain multi-row `VALUES` insert of one: at c=1, 1,411 creates per
        // second against 1,175 through `UNNEST`, whose arrays cost more to plan and read. On the
        // kept connection too: run through the pool instead (taken and given back for each
        // create), A/B median of five 6 s runs at c=1, 1,885 against 2,216 creates per second,
        // 0.18 against 0.13 ms of the service's CPU per create.
        [(uuid, _)] => {
            let statement = insert_returning(rows).build(DbBackend::Postgres);
            let values = statement.values.unwrap_or_else(|| sea_orm::Values(Vec::new()));
            let insert = sqlx::query_with(sqlx::AssertSqlSafe(statement.sql.as_str()), SqlxValues(values));
            match insert.fetch_all(&mut **connection).await.map_err(query_error) {
                Err(err) if is_unique_violation(&err) => return Ok(HashMap::from([(*uuid, Err(Arc::new(err)))])),
                inserted => inserted,
            }
        }
        _ => match insert_unnest(INSERT_UNNEST, rows)?.fetch_all(&mut **connection).await.map_err(query_error) {
            Err(err) if is_unique_violation(&err) => {
                insert_unnest(INSERT_UNNEST_NEW, rows)?.fetch_all(&mut **connection).await.map_err(query_error)
            }
            inserted => inserted,
        },
    };
    let inserted = match inserted {
        Ok(inserted) => inserted,
        Err(err) => {
            // Whatever state the failure left it in, it is not used again.
            held.close();
            return Err(err);
        }
    };
    stored_rows(rows, inserted.into_iter().map(QueryResult::from))
}

/// `statement` ([`INSERT_UNNEST`] or [`INSERT_UNNEST_NEW`]) with `rows` bound to it, one array
/// per column.
fn insert_unnest(
    statement: &'static str,
    rows: &[(Uuid, user::ActiveModel)],
) -> Result<sqlx::query::Query<'static, sqlx::Postgres, sqlx::postgres::PgArguments>, DbErr> {
    let columns = Columns::of(rows)?;
    Ok(sqlx::query(statement)
        .bind(columns.uuid)
        .bind(columns.user_id)
        .bind(columns.klaim_id)
        .bind(columns.email)
        .bind(columns.email_key)
        .bind(columns.first_name)
        .bind(columns.last_name)
        .bind(columns.name)
        .bind(columns.role)
        .bind(columns.status)
        .bind(columns.metadata)
        .bind(columns.password_hash)
        .bind(columns.credit_balance)
        .bind(columns.origin)
        .bind(columns.created_at)
        .bind(columns.updated_at))
}

/// The connection a writer keeps from one batch to the next, so that a batch neither takes one
/// from the pool nor gives it back: sqlx pings every connection given back, one more round trip
/// per batch. Given back when the pool has no other connection idle (another writer or a read may
/// be waiting for one), and when no row came for [`database::PING_AFTER_IDLE`], after which the
/// pool tests a connection before handing it out again; closed after a failed statement. Kept
/// while the writer waits its turn behind the other one: given back there, at c=16 on PostgreSQL
/// some 700 times a second, each was pinged, and the other writer's next `acquire`, finding none
/// idle meanwhile, opened a new connection (88 ms each under TLS, see [`crate::database`]).
/// On PostgreSQL, A/B in one hour, creates per second (CPU per create: the service's,
/// PostgreSQL's): at c=16 7,266 / 8,638 / 7,848 / 6,716 / 7,430 given back every batch (77-89 µs,
/// 89-107 µs), 9,001 / 8,566 / 8,615 / 8,544 / 8,405 kept (63-72 µs, 81-88 µs); at c=64 12,196 /
/// 10,653 against 13,281 / 11,710.
///
/// On SQLite, keeping it also keeps its page cache: the pool hands out its connections in turn,
/// and each one's cache was stale after the others' commits, its pages read again. Given back
/// whenever no row was waiting, it still was at c=1, where the queue is empty after every create:
/// 12.8 `pread`s per create (`strace -c`), none once kept across the pause. A/B, median of five
/// 6 s runs at c=1, creates per second: 2,453 given back, 2,881 kept (service CPU per create 0.29
/// and 0.23 ms); at c=16, six runs, 17,281 and 18,249. (On PostgreSQL, see the lone row in
/// [`insert_new_postgres`].)
#[derive(Default)]
struct Held {
    postgres: Option<PoolConnection<sqlx::Postgres>>,
    sqlite: Option<PoolConnection<sqlx::Sqlite>>,
}

impl Held {
    fn is_some(&self) -> bool {
        self.postgres.is_some() || self.sqlite.is_some()
    }

    /// Gives the held connection back to the pool.
    fn give_back(&mut self) {
        *self = Self::default();
    }

    /// Closes the held connection rather than give it back: a statement on it failed, and
    /// whatever state that left it in, it is not used again.
    fn close(&mut self) {
        if let Some(mut connection) = self.postgres.take() {
            connection.close_on_drop();
        }
        if let Some(mut connection) = self.sqlite.take() {
            connection.close_on_drop();
        }
    }
}

/// How many connections sit idle in `db`'s pool.
fn idle_connections(db: &DatabaseConnection) -> usize {
    match db.get_database_backend() {
        DbBackend::Sqlite => db.get_sqlite_connection_pool().num_idle(),
        _ => db.get_postgres_connection_pool().num_idle(),
    }
}

/// The error of a connection that could not be had.
fn connection_error(err: sqlx::Error) -> DbErr {
    DbErr::Conn(RuntimeErr::SqlxError(err.into()))
}

/// The error of a statement that failed.
fn query_error(err: sqlx::Error) -> DbErr {
    DbErr::Query(RuntimeErr::SqlxError(err.into()))
}

/// The `INSERT` of every column of `users` but the generated `id`, each from one array parameter.
macro_rules! insert_unnest {
    () => {
        "INSERT INTO users (uuid, user_id, klaim_id, email, email_key, first_name, last_name, name, \
         role, status, metadata, password_hash, credit_balance, origin, created_at, updated_at) \
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], \
         $8::text[], $9::text[], $10::text[], $11::jsonb[], $12::text[], $13::int8[], $14::text[], \
         $15::timestamptz[], $16::timestamptz[])"
    };
}

/// Every row, or none if a unique index refuses one; `RETURNING` names [`RETURNED`].
const INSERT_UNNEST: &str = concat!(insert_unnest!(), " RETURNING id, uuid, metadata");

/// Every row the unique indexes let in, skipping the others; `RETURNING` names [`RETURNED`].
const INSERT_UNNEST_NEW: &str = concat!(insert_unnest!(), " ON CONFLICT DO NOTHING RETURNING id, uuid, metadata");

/// A batch as one array per column, in the order of [`INSERT_UNNEST`]'s parameters.
#[derive(Default)]
struct Columns {
    uuid: Vec<Uuid>,
    user_id: Vec<String>,
    klaim_id: Vec<String>,
    email: Vec<String>,
    email_key: Vec<String>,
    first_name: Vec<Option<String>>,
    last_name: Vec<Option<String>>,
    name: Vec<Option<String>>,
    role: Vec<String>,
    status: Vec<String>,
    metadata: Vec<Option<serde_json::Value>>,
    password_hash: Vec<Option<String>>,
    credit_balance: Vec<i64>,
    origin: Vec<String>,
    created_at: Vec<DateTime<Utc>>,
    updated_at: Vec<DateTime<Utc>>,
}

impl Columns {
    fn of(rows: &[(Uuid, user::ActiveModel)]) -> Result<Self, DbErr> {
        let mut columns = Self::default();
        for (_, row) in rows {
            columns.uuid.push(set(&row.uuid)?);
            columns.user_id.push(set(&row.user_id)?);
            columns.klaim_id.push(set(&row.klaim_id)?);
            columns.email.push(set(&row.email)?);
            columns.email_key.push(set(&row.email_key)?);
            columns.first_name.push(set(&row.first_name)?);
            columns.last_name.push(set(&row.last_name)?);
            columns.name.push(set(&row.name)?);
            columns.role.push(set(&row.role)?);
            columns.status.push(set(&row.status)?);
            columns.metadata.push(set(&row.metadata)?);
            columns.password_hash.push(set(&row.password_hash)?);
            columns.credit_balance.push(set(&row.credit_balance)?);
            columns.origin.push(set(&row.origin)?);
            columns.created_at.push(set(&row.created_at)?);
            columns.updated_at.push(set(&row.updated_at)?);
        }
        Ok(columns)
    }
}

/// The value of a column every row sets; an error (a bug) if a row left it out.
fn set<V: Clone + Into<sea_orm::Value>>(value: &ActiveValue<V>) -> Result<V, DbErr> {
    set_ref(value).cloned()
}

/// As [`set`], borrowed.
fn set_ref<V: Into<sea_orm::Value>>(value: &ActiveValue<V>) -> Result<&V, DbErr> {
    value.try_as_ref().ok_or_else(|| DbErr::Custom("a new user's row left a column unset".to_owned()))
}

/// Runs `attempt` again when PostgreSQL aborted it to break a deadlock, up to
/// [`DEADLOCK_ATTEMPTS`] times. Only for work that is one transaction: an aborted one left nothing.
async fn retrying_deadlocks<T, F: Future<Output = Result<T, DbErr>>>(attempt: impl Fn() -> F) -> Result<T, DbErr> {
    let mut attempts = 1;
    loop {
        match attempt().await {
            Err(err) if is_deadlock(&err) && attempts < DEADLOCK_ATTEMPTS => attempts += 1,
            outcome => return outcome,
        }
    }
}

/// Inserts `rows` on SQLite, on the writer's held connection, and commits them.
///
/// A lone row is one plain `INSERT` ([`insert_one_sqlite`]). More rows go in one statement
/// whatever the batch's size ([`insert_new_sqlite`]), which skips the rows a unique index refuses
/// and, outside any transaction, commits as it ends; then each skipped row alone. After any error
/// but a unique violation the connection is closed.
///
/// No `BEGIN … COMMIT` around the batch: those were two more round trips to the connection's
/// thread, and inside a transaction SQLite gives a statement that writes many rows a statement
/// journal (so that its failure undoes only itself), into which it copies every page the
/// statement changes: 15% of that thread's time in a profile at c=64, and a temporary file
/// opened whenever the copies passed 64 KiB. A failed commit is still an error: it is the last
/// step of the statement, which `fetch_all` reads to its end (as `fetch_one`, which stops at the
/// first row, does not: `writer::tests::sqlite_batch_whose_commit_fails_…`). A/B on one machine,
/// a new database per 6 s run, creates per second (median of three): c=16 17,969 in a
/// transaction, 23,969 without; c=64 33,735 against 40,094. CPU of the connection's thread per
/// row: 24.7 against 18.5 µs at c=16, 13.0 against 9.6 µs at c=64.
///
/// A/B in one hour against power-of-two `VALUES` statements on a connection taken from the pool
/// per batch, creates per second (median of three 8 s runs each): c=16 5,361 against 6,511; c=64
/// 8,757 against 10,737.
async fn insert_batch_sqlite(
    db: &DatabaseConnection,
    held: &mut Held,
    rows: &[(Uuid, user::ActiveModel)],
) -> Result<HashMap<Uuid, Stored>, DbErr> {
    let connection = match &mut held.sqlite {
        Some(connection) => connection,
        None => held.sqlite.insert(db.get_sqlite_connection_pool().acquire().await.map_err(connection_error)?),
    };
    let inserted = match rows {
        [(uuid, row)] => insert_one_sqlite(connection, row).await.map(|stored| HashMap::from([(*uuid, stored)])),
        _ => insert_together_sqlite(connection, rows).await,
    };
    let failed = match &inserted {
        Ok(stored) => stored.values().any(|outcome| outcome.as_ref().is_err_and(|err| !is_unique_violation(err))),
        Err(_) => true,
    };
    if failed {
        held.close();
    }
    inserted
}

/// Inserts more than one row; see [`insert_batch_sqlite`]. Once the batch is committed, a skipped
/// row's failure is its own: the others are stored.
async fn insert_together_sqlite(
    connection: &mut SqliteConnection,
    rows: &[(Uuid, user::ActiveModel)],
) -> Result<HashMap<Uuid, Stored>, DbErr> {
    let mut stored = insert_new_sqlite(connection, rows).await?;
    for (uuid, row) in rows {
        if !stored.contains_key(uuid) {
            let outcome = insert_one_sqlite(connection, row).await.unwrap_or_else(|err| Err(Arc::new(err)));
            stored.insert(*uuid, outcome);
        }
    }
    Ok(stored)
}

/// The `INSERT` of rows given as one JSON array ([`json_rows`]): every column of `users` but the
/// generated `id`, each stored as sea-orm binds it (the UUID as its 16 bytes, times as RFC 3339
/// text, metadata as JSON text), which `writer::tests` checks column by column.
macro_rules! insert_from_json {
    () => {
        "INSERT INTO users (uuid, user_id, klaim_id, email, email_key, first_name, last_name, name, role, status, \
         metadata, password_hash, credit_balance, origin, created_at, updated_at) \
         SELECT unhex(value ->> 0), value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5, value ->> 6, \
         value ->> 7, value ->> 8, value ->> 9, value ->> 10, value ->> 11, value ->> 12, value ->> 13, value ->> 14, \
         value ->> 15 \
         FROM jsonb_each(?1) WHERE true"
    };
}

/// Every row the unique indexes let in, skipping the others; `RETURNING` names [`RETURNED`].
/// (`WHERE true` tells SQLite's parser that `ON CONFLICT` is the upsert clause, not a join's.)
const INSERT_NEW_SQLITE: &str = concat!(insert_from_json!(), " ON CONFLICT DO NOTHING RETURNING id, uuid, metadata");

/// Inserts every row of `rows` that no unique index refuses, skipping the others, in one
/// statement whatever the batch's size: the rows go as one JSON array, which `jsonb_each` turns
/// back into rows (each as JSONB, which `->>` reads without parsing it again: with `json_each`,
/// 8% fewer creates per second at c=64). One statement, prepared once per connection, where a
/// `VALUES` list took a statement per power of two in the batch's size (37 rows: 32, 4 and 1),
/// each a round trip to the connection's thread, and each after the first copying the pages it
/// changed into the statement journal.
async fn insert_new_sqlite(
    connection: &mut SqliteConnection,
    rows: &[(Uuid, user::ActiveModel)],
) -> Result<HashMap<Uuid, Stored>, DbErr> {
    let inserted = sqlx::query(INSERT_NEW_SQLITE)
        .bind(json_rows(rows.iter().map(|(_, row)| row))?)
        .fetch_all(&mut *connection)
        .await
        .map_err(query_error)?;
    stored_rows(rows, inserted.into_iter().map(QueryResult::from))
}

/// One row on SQLite, in a plain `INSERT` that, outside a transaction, commits as it completes:
/// sea-orm's own statement for the row, with its values bound as sea-orm's SQLite driver binds
/// them, run on the writer's connection. Its id is the statement's rowid; every other column is
/// the value just written. A row a unique index refuses is an error naming that index.
async fn insert_one_sqlite(connection: &mut SqliteConnection, row: &user::ActiveModel) -> Result<Stored, DbErr> {
    let statement = user::Entity::insert(row.clone()).build(DbBackend::Sqlite);
    let values = statement.values.unwrap_or_else(|| sea_orm::Values(Vec::new()));
    let insert = sqlx::query_with(sqlx::AssertSqlSafe(statement.sql.as_str()), SqlxValues(values));
    let inserted = match insert.execute(&mut *connection).await {
        Ok(done) => {
            let mut stored = row.clone();
            stored.id = Set(done.last_insert_rowid());
            stored.try_into_model()
        }
        Err(err) => Err(query_error(err)),
    };
    refused_by_index(inserted)
}

/// `rows` as the JSON array [`insert_from_json`] reads: one array per row, its columns in that
/// statement's order, each as the text (or integer, or null) that sqlx-sqlite binds for it.
fn json_rows<'a>(rows: impl IntoIterator<Item = &'a user::ActiveModel>) -> Result<String, DbErr> {
    let timestamp = |at: &DateTime<Utc>| at.to_rfc3339_opts(SecondsFormat::AutoSi, false);
    let mut array = Vec::new();
    for row in rows {
        let metadata = match set_ref(&row.metadata)? {
            Some(metadata) => Some(serde_json::to_string(metadata).map_err(|err| DbErr::Json(err.to_string()))?),
            None => None,
        };
        array.push((
            set_ref(&row.uuid)?.simple().to_string(),
            set_ref(&row.user_id)?,
            set_ref(&row.klaim_id)?,
            set_ref(&row.email)?,
            set_ref(&row.email_key)?,
            set_ref(&row.first_name)?,
            set_ref(&row.last_name)?,
            set_ref(&row.name)?,
            set_ref(&row.role)?,
            set_ref(&row.status)?,
            metadata,
            set_ref(&row.password_hash)?,
            set_ref(&row.credit_balance)?,
            set_ref(&row.origin)?,
            timestamp(set_ref(&row.created_at)?),
            timestamp(set_ref(&row.updated_at)?),
        ));
    }
    serde_json::to_string(&array).map_err(|err| DbErr::Json(err.to_string()))
}

/// The outcome of one row's insert: stored, or refused by a unique index (that request's own
/// answer). Any other error is returned as such.
fn refused_by_index(inserted: Result<user::Model, DbErr>) -> Result<Stored, DbErr> {
    match inserted {
        Ok(model) => Ok(Ok(model)),
        Err(err) if is_unique_violation(&err) => Ok(Err(Arc::new(err))),
        Err(err) => Err(err),
    }
}

/// Whether a unique index refused the row.
fn is_unique_violation(err: &DbErr) -> bool {
    matches!(err.sql_err(), Some(SqlErr::UniqueConstraintViolation(_)))
}

/// The insert of `rows`, returning [`RETURNED`] of each.
fn insert_returning(rows: &[(Uuid, user::ActiveModel)]) -> sea_orm::InsertMany<user::ActiveModel> {
    let mut insert = user::Entity::insert_many(rows.iter().map(|(_, row)| row.clone()));
    insert.query().returning(Query::returning().columns(RETURNED));
    insert
}

/// What a multi-row insert returns of each row it stored: the generated id, the UUID that says
/// which row it is, and the metadata as stored (PostgreSQL's `jsonb` orders keys its own way, and a
/// 201 shows what a later read will). Every other column is the value just written. Returning all
/// 17 columns cost both ends of the connection encoding, decoding and copying them row by row.
const RETURNED: [user::Column; 3] = [user::Column::Id, user::Column::Uuid, user::Column::Metadata];

/// The rows of `rows` that an insert returned ([`RETURNED`]), as stored.
fn stored_rows(
    rows: &[(Uuid, user::ActiveModel)],
    returned: impl IntoIterator<Item = QueryResult>,
) -> Result<HashMap<Uuid, Stored>, DbErr> {
    let written: HashMap<Uuid, &user::ActiveModel> = rows.iter().map(|(uuid, row)| (*uuid, row)).collect();
    let mut stored = HashMap::with_capacity(rows.len());
    for result in returned {
        let uuid: Uuid = result.try_get("", "uuid")?;
        let row =
            written.get(&uuid).ok_or_else(|| DbErr::Custom(format!("an insert returned a row not in it: {uuid}")))?;
        let mut model = (*row).clone();
        model.id = Set(result.try_get("", "id")?);
        model.metadata = Set(result.try_get("", "metadata")?);
        stored.insert(uuid, Ok(model.try_into_model()?));
    }
    Ok(stored)
}

/// Inserts each row of `rows` that is not in `stored` alone, after the batch's commit, and records
/// its outcome: the unique violation naming its index, stored (when the row it ran into has gone
/// since), or any other error, which is that row's alone: the batch's other rows are stored.
async fn insert_skipped<C: ConnectionTrait>(
    connection: &C,
    rows: &[(Uuid, user::ActiveModel)],
    stored: &mut HashMap<Uuid, Stored>,
) {
    for (uuid, row) in rows {
        if stored.contains_key(uuid) {
            continue;
        }
        let inserted = retrying_deadlocks(|| user::Entity::insert(row.clone()).exec_with_returning(connection)).await;
        stored.insert(*uuid, inserted.map_err(Arc::new));
    }
}

/// Whether PostgreSQL aborted the statement to break a deadlock (SQLSTATE 40P01).
fn is_deadlock(err: &DbErr) -> bool {
    let (DbErr::Exec(RuntimeErr::SqlxError(sqlx_error)) | DbErr::Query(RuntimeErr::SqlxError(sqlx_error))) = err else {
        return false;
    };
    sqlx_error.as_database_error().and_then(|database| database.code()).is_some_and(|code| code == "40P01")
}

#[cfg(test)]
mod tests {
    use sea_orm::{ActiveModelTrait, Statement};

    use super::*;

    /// Rows with what the API can give each column: every optional column set and left out,
    /// metadata with escapes, non-ASCII text and numbers at the edges of JSON, and times with and
    /// without a fraction of a second.
    fn rows() -> Vec<(Uuid, user::ActiveModel)> {
        let metadata = serde_json::json!({
            "quote\"back\\slash": "tab\tnewline\nnul\u{0}line separator\u{2028}é😀",
            "large": 1.5e300,
            "past_f64": 9_007_199_254_740_993_i64,
            "negative": -0.000_001,
            "nested": {"list": [true, false, null, 0.1, "", {}]},
        });
        let full = |n: u32, at: i64| {
            let uuid = Uuid::now_v7();
            let created_at = DateTime::from_timestamp_millis(at).unwrap();
            let row = user::ActiveModel {
                uuid: Set(uuid),
                user_id: Set(format!("ext-{n}-ünï")),
                klaim_id: Set(format!("{at}_abcd{n}")),
                email: Set(format!("Ünïcode.{n}@Example.com")),
                email_key: Set(format!("ünïcode.{n}@example.com")),
                first_name: Set(Some("Zoë".to_owned())),
                last_name: Set(Some("O'Brien".to_owned())),
                name: Set(Some("Zoë O'Brien 李".to_owned())),
                role: Set("admin".to_owned()),
                status: Set("active".to_owned()),
                metadata: Set(Some(metadata.clone())),
                password_hash: Set(Some("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".to_owned())),
                credit_balance: Set(i64::MAX),
                origin: Set("signup".to_owned()),
                created_at: Set(created_at),
                updated_at: Set(created_at),
                ..Default::default()
            };
            (uuid, row)
        };
        let sparse = |mut row: user::ActiveModel| {
            row.first_name = Set(None);
            row.last_name = Set(None);
            row.name = Set(None);
            row.metadata = Set(None);
            row.password_hash = Set(None);
            row.credit_balance = Set(0);
            row
        };
        let (first, second, third) =
            (full(1, 1_753_306_133_860), full(2, 1_753_306_134_000), full(3, 1_753_306_134_001));
        vec![first, (second.0, sparse(second.1)), third]
    }

    /// Every stored column of `users`, as SQLite holds it: its storage class and its literal.
    async fn stored(db: &DatabaseConnection) -> Vec<Vec<String>> {
        let columns = [
            "id",
            "uuid",
            "user_id",
            "klaim_id",
            "email",
            "email_key",
            "first_name",
            "last_name",
            "name",
            "role",
            "status",
            "metadata",
            "password_hash",
            "credit_balance",
            "origin",
            "created_at",
            "updated_at",
        ];
        let select = columns.map(|column| format!("typeof({column}) || ' ' || quote({column})")).join(", ");
        let statement = Statement::from_string(DbBackend::Sqlite, format!("SELECT {select} FROM users ORDER BY id"));
        let rows = db.query_all_raw(statement).await.unwrap();
        rows.iter()
            .map(|row| (0..columns.len()).map(|i| row.try_get_by_index::<String>(i).unwrap()).collect())
            .collect()
    }

    /// A writer keeps its connection from one create to the next, but not through a pause: once no
    /// row came for [`database::PING_AFTER_IDLE`], the connection is back in the pool (which tests
    /// it before handing it out again), and the next create takes one from the pool.
    #[tokio::test]
    async fn a_writer_gives_its_connection_back_once_no_row_came_for_a_while() {
        let directory = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", directory.path().join("users.db").display());
        let db = database::open(&url, 2).await.unwrap();
        let pool = db.get_sqlite_connection_pool().clone();
        // Both connections open, so that the pool has another one idle beside the writer's.
        drop(tokio::join!(pool.acquire(), pool.acquire()));
        let writer = UserWriter::start(db.clone());
        let all_idle = || async {
            let deadline = Instant::now() + 10 * database::PING_AFTER_IDLE;
            while pool.num_idle() < pool.size() as usize && Instant::now() < deadline {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            pool.num_idle() == pool.size() as usize
        };

        let rows = rows();
        for (uuid, row) in &rows[..2] {
            writer.insert(row.clone(), *uuid).await.unwrap();
            assert!(
                all_idle().await,
                "the writer still holds a connection: {} of {} idle",
                pool.num_idle(),
                pool.size()
            );
        }
        assert_eq!(user::Entity::find().all(&db).await.unwrap().len(), 2);
    }

    /// The JSON insert stores every column exactly as sea-orm's own insert does (the byte-for-byte
    /// literal and the storage class), through both the lone row's statement and the batch's; and
    /// each row it returns is the row as read back.
    #[tokio::test]
    async fn sqlite_json_inserts_store_each_column_as_sea_orm_binds_it() {
        let directory = tempfile::tempdir().unwrap();
        let open = |name: &str| {
            let url = format!("sqlite://{}?mode=rwc", directory.path().join(name).display());
            async move { database::open(&url, 2).await.unwrap() }
        };
        let (by_sea_orm, by_json) = (open("sea-orm.db").await, open("json.db").await);
        let rows = rows();
        for (_, row) in &rows {
            row.clone().insert(&by_sea_orm).await.unwrap();
        }

        let mut connection = by_json.get_sqlite_connection_pool().acquire().await.unwrap();
        let lone = insert_one_sqlite(&mut connection, &rows[0].1).await.unwrap().unwrap();
        let together = insert_together_sqlite(&mut connection, &rows[1..]).await.unwrap();
        drop(connection);

        assert_eq!(stored(&by_json).await, stored(&by_sea_orm).await);
        let mut answered = vec![lone];
        answered.extend(rows[1..].iter().map(|(uuid, _)| together[uuid].as_ref().unwrap().clone()));
        let read_back = user::Entity::find().all(&by_json).await.unwrap();
        assert_eq!(answered, read_back);
    }

    /// A batch whose commit fails after its insert returned every row is refused as a whole: no
    /// row is acknowledged, none is stored. The commit is the end of the insert itself, which
    /// the writer reads to its end. (A deferred foreign key is checked at commit time, as a full disk
    /// or an unwritable log fails it; the table is `users` as the insert names it, with one.)
    #[tokio::test]
    async fn sqlite_batch_whose_commit_fails_acknowledges_none_of_its_rows() {
        let directory = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", directory.path().join("users.db").display());
        let db = database::connect(&url, 2).await.unwrap();
        for table in [
            "CREATE TABLE parents (key TEXT PRIMARY KEY)",
            "CREATE TABLE users (id INTEGER PRIMARY KEY, uuid BLOB NOT NULL, user_id TEXT NOT NULL, \
             klaim_id TEXT NOT NULL, email TEXT NOT NULL, \
             email_key TEXT NOT NULL REFERENCES parents (key) DEFERRABLE INITIALLY DEFERRED, first_name TEXT, \
             last_name TEXT, name TEXT, role TEXT NOT NULL, status TEXT NOT NULL, metadata TEXT, password_hash TEXT, \
             credit_balance INTEGER NOT NULL, origin TEXT NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL)",
        ] {
            db.execute_unprepared(table).await.unwrap();
        }

        let mut connection = db.get_sqlite_connection_pool().acquire().await.unwrap();
        let refused = insert_together_sqlite(&mut connection, &rows()).await;
        drop(connection);

        let err = refused.expect_err("a batch whose commit failed was acknowledged");
        assert!(err.to_string().contains("FOREIGN KEY"), "{err}");
        let count = Statement::from_string(DbBackend::Sqlite, "SELECT COUNT(*) AS n FROM users");
        let stored: i64 = db.query_one_raw(count).await.unwrap().unwrap().try_get("", "n").unwrap();
        assert_eq!(stored, 0);
    }

    /// A batch whose rows run into unique indexes, among themselves and with a stored row: each
    /// refused row gets the violation naming its column, and the others are stored.
    #[tokio::test]
    async fn sqlite_batch_refuses_only_the_rows_a_unique_index_refuses() {
        let directory = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", directory.path().join("users.db").display());
        let db = database::open(&url, 2).await.unwrap();
        let rows = rows();
        let mut connection = db.get_sqlite_connection_pool().acquire().await.unwrap();
        insert_one_sqlite(&mut connection, &rows[0].1).await.unwrap().unwrap();

        let with_uuid = |mut row: user::ActiveModel| {
            let uuid = Uuid::now_v7();
            row.uuid = Set(uuid);
            (uuid, row)
        };
        let mut same_email = rows[0].1.clone();
        same_email.user_id = Set("another-user-id".to_owned());
        same_email.klaim_id = Set("1_other".to_owned());
        let mut same_user_id_as_next = rows[1].1.clone();
        same_user_id_as_next.email_key = Set("someone.else@example.com".to_owned());
        same_user_id_as_next.klaim_id = Set("2_other".to_owned());
        let batch = [with_uuid(same_email), rows[1].clone(), with_uuid(same_user_id_as_next), rows[2].clone()];
        let outcome = insert_together_sqlite(&mut connection, &batch).await.unwrap();

        let refused_on = |uuid: &Uuid| match outcome[uuid].as_ref().unwrap_err().sql_err() {
            Some(SqlErr::UniqueConstraintViolation(message)) => message,
            other => panic!("{other:?}"),
        };
        assert!(refused_on(&batch[0].0).contains("email_key"));
        assert!(refused_on(&batch[2].0).contains("user_id"));
        assert!(outcome[&batch[1].0].is_ok() && outcome[&batch[3].0].is_ok());
        drop(connection);
        assert_eq!(user::Entity::find().all(&db).await.unwrap().len(), 3);
    }
}
