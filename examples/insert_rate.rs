//! This machine's raw insert rates, with the service's own connection settings: the references for
//! plain creates, and what bounds them.
//!
//! `cargo run --release --example insert_rate -- <seconds> <directory>` prints SQLite's rows per
//! second at one row per transaction (sqlx, WAL, synchronous=FULL), `<seconds>` each:
//! - `rows_per_second`: a small table with one unique index, the same as the pgbench reference;
//! - `own_table_rows_per_second`: the service's own `users` table (migrated as the service does),
//!   with its five B-trees (the rowid and the unique `uuid`, `user_id`, `klaim_id` and
//!   `email_key`), each row the service's own `INSERT` of a Person create. Every row dirties a
//!   page in each B-tree, and each dirty page is a 4 KiB frame in the WAL before the sync.
//!
//! `cargo run --release --example insert_rate -- <seconds> <database URL> <rows per transaction>…`
//! migrates the database at the URL (SQLite or PostgreSQL) as the service does and prints, as
//! `own_table`, the rows per second into its `users` table at each number of rows per transaction
//! given (one multi-row `INSERT` each, back to back): what the database alone commits when each
//! commit holds the rows a group commit could gather, with no HTTP, no hand-off between the
//! service's tasks and no wait for the next rows. The benchmark takes from it the rate that no
//! server storing each create before it answers could pass at a given concurrency.
//!
//! Each rate is measured on one connection held throughout, as the service's writer holds its
//! own, each statement prepared once.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use entity::user;
use rand::{Rng, distr::Alphanumeric};
use sea_orm::{
    ActiveValue::Set,
    ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait, QueryTrait, Statement,
    sqlx::{self, pool::PoolConnection},
};
use sea_query_sqlx::SqlxValues;
use uuid::Uuid;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let seconds: u64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(10);
    let place = std::env::args().nth(2).unwrap_or_else(|| std::env::temp_dir().display().to_string());
    let sizes: Vec<u64> = std::env::args().skip(3).filter_map(|s| s.parse().ok()).filter(|&size| size > 0).collect();
    let run_for = Duration::from_secs(seconds);

    if !sizes.is_empty() {
        let db = users_api::database::open(&place, 1).await.expect("the database opens and migrates");
        let backend = db.get_database_backend();
        let mut rates = Vec::new();
        for size in sizes {
            let statement =
                |n: u64| user::Entity::insert_many((0..size).map(|i| person_row(n * size + i))).build(backend);
            let transactions_per_second = rate(run_for, statement, &db).await;
            rates.push(format!("\"{size}\":{:.1}", transactions_per_second * size as f64));
        }
        println!("{{\"own_table\":{{{}}}}}", rates.join(","));
        return;
    }

    let small = users_api::database::connect(&format!("sqlite://{place}/sqlite-rate.db?mode=rwc"), 1)
        .await
        .expect("the database opens");
    small
        .execute_unprepared(
            "CREATE TABLE IF NOT EXISTS rows (id INTEGER PRIMARY KEY AUTOINCREMENT, email TEXT NOT NULL, \
             email_key TEXT NOT NULL UNIQUE, first_name TEXT, last_name TEXT, created_at TEXT NOT NULL)",
        )
        .await
        .expect("the table is created");
    let small_rate = rate(run_for, |n| {
        let email = format!("raw-{n}-{}@example.com", Uuid::now_v7().simple());
        Statement::from_sql_and_values(
            DbBackend::Sqlite,
            "INSERT INTO rows (email, email_key, first_name, last_name, created_at) VALUES (?, ?, 'Bench', 'User', ?)",
            [email.clone().into(), email.into(), Utc::now().to_rfc3339().into()],
        )
    }, &small)
    .await;
    let own = users_api::database::open(&format!("sqlite://{place}/sqlite-rate-own.db?mode=rwc"), 1)
        .await
        .expect("the database opens and migrates");
    let own_rate = rate(run_for, |n| user::Entity::insert(person_row(n)).build(DbBackend::Sqlite), &own).await;

    println!("{{\"rows_per_second\":{small_rate:.1},\"own_table_rows_per_second\":{own_rate:.1}}}");
}

/// A connection held for a whole measurement.
enum Held {
    Sqlite(PoolConnection<sqlx::Sqlite>),
    Postgres(PoolConnection<sqlx::Postgres>),
}

/// Runs the statements `statement` makes, one per autocommit transaction, for `run_for`, on one
/// connection of `db`'s pool held throughout: statements per second.
async fn rate(run_for: Duration, statement: impl Fn(u64) -> Statement, db: &DatabaseConnection) -> f64 {
    let mut held = match db.get_database_backend() {
        DbBackend::Sqlite => Held::Sqlite(db.get_sqlite_connection_pool().acquire().await.expect("a connection opens")),
        _ => Held::Postgres(db.get_postgres_connection_pool().acquire().await.expect("a connection opens")),
    };
    let started = Instant::now();
    let mut statements = 0u64;
    while started.elapsed() < run_for {
        // Autocommit: one statement, one transaction, one sync of the log.
        let statement = statement(statements);
        let values = SqlxValues(statement.values.unwrap_or_else(|| sea_orm::Values(Vec::new())));
        let query = statement.sql.as_str();
        let done = match &mut held {
            Held::Sqlite(connection) => {
                sqlx::query_with(sqlx::AssertSqlSafe(query), values).execute(&mut **connection).await.map(drop)
            }
            Held::Postgres(connection) => {
                sqlx::query_with(sqlx::AssertSqlSafe(query), values).execute(&mut **connection).await.map(drop)
            }
        };
        done.expect("the rows are inserted");
        statements += 1;
    }
    statements as f64 / started.elapsed().as_secs_f64()
}

/// The row a Person create stores (`users::create`): a UUIDv7, the user id it gives, a klaim id,
/// the email as given and lower-cased, first and last name, millisecond timestamps.
fn person_row(n: u64) -> user::ActiveModel {
    let uuid = Uuid::now_v7();
    let now = Utc::now();
    let now = DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap_or(now);
    let suffix: String = rand::rng().sample_iter(Alphanumeric).take(5).map(char::from).collect();
    let email = format!("Bench.User+{n}-{}@Example.com", uuid.simple());
    user::ActiveModel {
        uuid: Set(uuid),
        user_id: Set(uuid.hyphenated().to_string()),
        klaim_id: Set(format!("{}_{suffix}", now.timestamp_millis())),
        email_key: Set(email.to_lowercase()),
        email: Set(email),
        first_name: Set(Some("Bench".to_owned())),
        last_name: Set(Some("User".to_owned())),
        name: Set(None),
        role: Set("user".to_owned()),
        status: Set("active".to_owned()),
        metadata: Set(None),
        password_hash: Set(None),
        credit_balance: Set(0),
        origin: Set("person".to_owned()),
        created_at: Set(now),
        updated_at: Set(now),
        ..Default::default()
    }
}
