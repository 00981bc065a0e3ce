//! This machine's raw SQLite rate at one row per transaction, with the service's own connection
//! settings (sqlx, WAL, synchronous=FULL): the reference for plain creates on SQLite.
//! `cargo run --release --example sqlite_rate -- <seconds> <directory>`; prints rows per second.

use std::time::{Duration, Instant};

use sea_orm::{ConnectionTrait, Statement};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let seconds: u64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(10);
    let directory = std::env::args().nth(2).unwrap_or_else(|| std::env::temp_dir().display().to_string());
    let url = format!("sqlite://{directory}/sqlite-rate.db?mode=rwc");
    let db = users_api::database::connect(&url, 1).await.expect("the database opens");
    let backend = db.get_database_backend();
    db.execute_unprepared(
        "CREATE TABLE IF NOT EXISTS rows (id INTEGER PRIMARY KEY AUTOINCREMENT, email TEXT NOT NULL, \
         email_key TEXT NOT NULL UNIQUE, first_name TEXT, last_name TEXT, created_at TEXT NOT NULL)",
    )
    .await
    .expect("the table is created");
    let started = Instant::now();
    let mut rows = 0u64;
    while started.elapsed() < Duration::from_secs(seconds) {
        let email = format!("raw-{rows}-{}@example.com", started.elapsed().as_nanos());
        // Autocommit: one statement, one transaction, one WAL sync.
        db.execute_raw(Statement::from_sql_and_values(
            backend,
            "INSERT INTO rows (email, email_key, first_name, last_name, created_at) VALUES (?, ?, 'Bench', 'User', ?)",
            [email.clone().into(), email.into(), chrono::Utc::now().to_rfc3339().into()],
        ))
        .await
        .expect("the row is inserted");
        rows += 1;
    }
    let rate = rows as f64 / started.elapsed().as_secs_f64();
    println!("{{\"rows_per_second\":{rate:.1}}}");
}
