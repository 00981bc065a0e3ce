//! Group commit: concurrent creates share one database write.
//!
//! Every create hands its row to a writer task and waits for the row as stored. A writer takes
//! whatever rows have arrived (up to [`MAX_BATCH`]) and stores them with multi-row
//! `INSERT … ON CONFLICT DO NOTHING RETURNING` under one commit: one WAL sync for the lot (on
//! PostgreSQL one statement whatever the batch's size, its rows sent as one array per column). While
//! it writes, the next rows gather, so batches grow with the load and a lone request waits for no
//! timer: it is written at once, alone.
//!
//! A row the insert skipped ran into a unique index. It is then inserted alone (on SQLite in the
//! same transaction, on PostgreSQL after the batch's commit), which fails on the index it ran
//! into: the error names it for that request alone ([`crate::users`] maps it to 409), and the
//! batch's other rows are stored regardless.
//!
//! Nothing here is state that correctness depends on: uniqueness is still the database's call, a
//! row is acknowledged only after its commit, and a commit that fails fails every request in it.

use std::{collections::HashMap, sync::Arc};

use chrono::{DateTime, Utc};
use entity::user;
use sea_orm::{
    ActiveValue::{self, Set},
    ConnectionTrait, DatabaseConnection, DbBackend, DbErr, EntityTrait, QueryResult, QueryTrait, RuntimeErr, SqlErr,
    SqliteTransactionMode, TransactionOptions, TransactionTrait, TryIntoModel,
    sea_query::{OnConflict, Query},
    sqlx::{self, pool::PoolConnection},
};
use tokio::sync::{Mutex, mpsc, oneshot};
use uuid::Uuid;

use crate::database;

/// Most rows in one batch, and in one statement: 128 rows of 17 columns stay far below both backends' limits on
/// bound parameters (SQLite 32,766, PostgreSQL 65,535).
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
    let mut held = None;
    loop {
        let received = {
            let mut queue = match receiver.try_lock() {
                Ok(queue) => queue,
                Err(_) => {
                    // The other writer is waiting for rows: none is queued, and while this one
                    // waits its turn, a key check may need the connection.
                    held = None;
                    receiver.lock().await
                }
            };
            if held.is_some() && (queue.is_empty() || db.get_postgres_connection_pool().num_idle() == 0) {
                // Nothing waiting, or nothing else idle in the pool (another writer or a read may
                // be waiting for a connection): it goes back, as every idle one does.
                held = None;
            }
            queue.recv_many(&mut batch, MAX_BATCH).await
        };
        if received == 0 {
            return;
        }
        let Err(err) = write(&db, &mut held, std::mem::take(&mut batch)).await else { continue };
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

/// Inserts `rows` and commits them: first every row no unique index refuses, in multi-row
/// statements that skip the others ([`insert_new`]), then each skipped row alone, to learn
/// which index refused it ([`insert_skipped`]).
///
/// - SQLite: a lone row is one plain `INSERT`, its own transaction ([`insert_sqlite_row`]); more
///   rows go inside one explicit `BEGIN IMMEDIATE … COMMIT`, skipped rows included (a failed
///   statement undoes only itself there). Either way a failed commit is reported as an error,
///   which the implicit commit of an `INSERT … RETURNING` is not (sqlx-sqlite reads the returned
///   row before it, and discards its error: a 201 for a row never stored, found by
///   `resilience::an_unwritable_sqlite_file_…`).
/// - PostgreSQL: one statement that commits by itself ([`insert_new_postgres`]); then each skipped
///   row is its own transaction, since a failed statement aborts the transaction it is in. A
///   deadlock between instances (two batches inserting the same emails in different orders)
///   rolls back only the transaction PostgreSQL aborted, which is written again.
async fn insert_batch(
    db: &DatabaseConnection,
    held: &mut Held,
    rows: &[(Uuid, user::ActiveModel)],
) -> Result<HashMap<Uuid, Stored>, DbErr> {
    if db.get_database_backend() != DbBackend::Sqlite {
        // As `retrying_deadlocks` does, but lending the held connection to each attempt.
        let mut attempts = 1;
        let mut stored = loop {
            match insert_new_postgres(db, held, rows).await {
                Err(err) if is_deadlock(&err) && attempts < DEADLOCK_ATTEMPTS => attempts += 1,
                outcome => break outcome?,
            }
        };
        insert_skipped(db, rows, &mut stored).await?;
        return Ok(stored);
    }
    if let [(uuid, row)] = rows {
        return Ok(HashMap::from([(*uuid, insert_sqlite_row(db, row).await?)]));
    }
    let options =
        TransactionOptions { sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate), ..Default::default() };
    let transaction = db.begin_with_options(options).await?;
    let mut stored = insert_new(&transaction, rows).await?;
    insert_skipped(&transaction, rows, &mut stored).await?;
    transaction.commit().await?;
    Ok(stored)
}

/// Inserts every row of `rows` that no unique index refuses, skipping the others, in one
/// statement that commits by itself, whatever the batch's size: the batch goes as one array per
/// column, which `UNNEST` turns back into rows. One round trip per batch, and one prepared
/// statement per connection, where a multi-row `VALUES` list needs a statement per batch size
/// (or several statements and a transaction around them: 4 to 5 round trips for 7 rows). A/B on
/// one machine in one hour, creates per second at c=16: 4,123 and 4,907 before, 5,656 and 6,119
/// after (p99 69 and 46 ms before, 25 and 19 ms after); at c=64: 7,539 and 6,339 before, 8,459
/// and 8,077 after. It needs Nagle's algorithm off on the connection ([`crate::database`]): a
/// batch of some 60 rows otherwise waited 45 ms for a delayed ACK, run after run.
async fn insert_new_postgres(
    db: &DatabaseConnection,
    held: &mut Held,
    rows: &[(Uuid, user::ActiveModel)],
) -> Result<HashMap<Uuid, Stored>, DbErr> {
    // A lone row as a plain multi-row `VALUES` insert of one: at c=1, 1,411 creates per second
    // against 1,175 through `UNNEST`, whose arrays cost more to plan and read.
    if let [_] = rows {
        return insert_new(db, rows).await;
    }
    let columns = Columns::of(rows)?;
    let inserted = sqlx::query(INSERT_UNNEST)
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
        .bind(columns.updated_at);
    let connection = match held {
        Some(connection) => connection,
        None => held.insert(
            db.get_postgres_connection_pool()
                .acquire()
                .await
                .map_err(|err| DbErr::Conn(RuntimeErr::SqlxError(err.into())))?,
        ),
    };
    let inserted = match inserted.fetch_all(&mut **connection).await {
        Ok(inserted) => inserted,
        Err(err) => {
            // Whatever state the failure left it in, it is not used again.
            if let Some(mut connection) = held.take() {
                connection.close_on_drop();
            }
            return Err(DbErr::Query(RuntimeErr::SqlxError(err.into())));
        }
    };
    stored_rows(rows, inserted.into_iter().map(QueryResult::from))
}

/// A PostgreSQL connection a writer keeps from one batch to the next while rows are waiting, so
/// that a batch neither takes one from the pool nor gives it back: sqlx pings every connection
/// given back, one more round trip per batch. Given back when no row is waiting, when the pool has no
/// other connection idle, and before waiting behind the other writer; closed after a failed statement. A/B in one hour, creates per second
/// (CPU per create: the service's, PostgreSQL's): at c=16 7,266 / 8,638 / 7,848 / 6,716 / 7,430
/// given back every batch (77-89 µs, 89-107 µs), 9,001 / 8,566 / 8,615 / 8,544 / 8,405 kept
/// (63-72 µs, 81-88 µs); at c=64 12,196 / 10,653 against 13,281 / 11,710.
type Held = Option<PoolConnection<sqlx::Postgres>>;

/// Every column of `users` but the generated `id`, each from one array parameter; `RETURNING`
/// names [`RETURNED`].
const INSERT_UNNEST: &str = "INSERT INTO users (uuid, user_id, klaim_id, email, email_key, first_name, last_name, name, \
     role, status, metadata, password_hash, credit_balance, origin, created_at, updated_at) \
     SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], \
     $8::text[], $9::text[], $10::text[], $11::jsonb[], $12::text[], $13::int8[], $14::text[], $15::timestamptz[], \
     $16::timestamptz[]) \
     ON CONFLICT DO NOTHING \
     RETURNING id, uuid, metadata";

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
    value.try_as_ref().cloned().ok_or_else(|| DbErr::Custom("a new user's row left a column unset".to_owned()))
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

/// One row on SQLite, in a plain `INSERT` that commits as it completes: one statement where a
/// batch takes three (`BEGIN`, `INSERT`, `COMMIT`), each a round trip to the connection's thread.
/// That is the case of every create when creates do not overlap: at c=1, a fifth more of them per
/// second. Its id is the statement's rowid; every other column is the value just written.
async fn insert_sqlite_row(db: &DatabaseConnection, row: &user::ActiveModel) -> Result<Stored, DbErr> {
    let statement = user::Entity::insert(row.clone()).build(DbBackend::Sqlite);
    let inserted = match db.execute_raw(statement).await {
        Ok(done) => {
            let mut stored = row.clone();
            stored.id = Set(i64::try_from(done.last_insert_id()).map_err(|err| DbErr::Custom(err.to_string()))?);
            stored.try_into_model()
        }
        Err(err) => Err(err),
    };
    refused_by_index(inserted)
}

/// The outcome of one row's insert: stored, or refused by a unique index (that request's own
/// answer). Any other error fails the whole batch.
fn refused_by_index(inserted: Result<user::Model, DbErr>) -> Result<Stored, DbErr> {
    match inserted {
        Ok(model) => Ok(Ok(model)),
        Err(err) if matches!(err.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => Ok(Err(Arc::new(err))),
        Err(err) => Err(err),
    }
}

/// Inserts every row of `rows` that no unique index refuses, in power-of-two statements (37
/// rows: 32, 4 and 1) that skip the others: every batch on SQLite, a lone row on PostgreSQL.
///
/// Power-of-two statements because each connection keeps its prepared statements, in this
/// process: with one statement per batch size, 128 sizes of a 17-column insert, each prepared
/// anew and cached, took resident memory under plain creates at c=64 from 28 to 48 MiB on SQLite,
/// and from 27 to 42 MiB on PostgreSQL. Eight shapes stay cached.
async fn insert_new<C: ConnectionTrait>(
    connection: &C,
    rows: &[(Uuid, user::ActiveModel)],
) -> Result<HashMap<Uuid, Stored>, DbErr> {
    let mut stored: HashMap<Uuid, Stored> = HashMap::with_capacity(rows.len());
    let mut rest = rows;
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(1 << rest.len().ilog2());
        let skip_conflicts = OnConflict::new().do_nothing().to_owned();
        let mut insert =
            user::Entity::insert_many(chunk.iter().map(|(_, row)| row.clone())).on_conflict(skip_conflicts);
        insert.query().returning(Query::returning().columns(RETURNED));
        let inserted = connection.query_all_raw(insert.build(connection.get_database_backend())).await?;
        stored.extend(stored_rows(chunk, inserted)?);
        rest = tail;
    }
    Ok(stored)
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

/// Inserts each row of `rows` that is not in `stored` alone, and records its outcome: the unique
/// violation naming its index, or stored (when the row it ran into has gone since). Only an error
/// other than a unique violation fails the whole batch.
async fn insert_skipped<C: ConnectionTrait>(
    connection: &C,
    rows: &[(Uuid, user::ActiveModel)],
    stored: &mut HashMap<Uuid, Stored>,
) -> Result<(), DbErr> {
    for (uuid, row) in rows {
        if stored.contains_key(uuid) {
            continue;
        }
        let inserted = retrying_deadlocks(|| user::Entity::insert(row.clone()).exec_with_returning(connection)).await;
        stored.insert(*uuid, refused_by_index(inserted)?);
    }
    Ok(())
}

/// Whether PostgreSQL aborted the statement to break a deadlock (SQLSTATE 40P01).
fn is_deadlock(err: &DbErr) -> bool {
    let (DbErr::Exec(RuntimeErr::SqlxError(sqlx_error)) | DbErr::Query(RuntimeErr::SqlxError(sqlx_error))) = err else {
        return false;
    };
    sqlx_error.as_database_error().and_then(|database| database.code()).is_some_and(|code| code == "40P01")
}
