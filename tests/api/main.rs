//! Integration tests: each boots the real server on port 0 against its own fresh database (a
//! temporary SQLite file, or a fresh PostgreSQL database when `TEST_DATABASE_URL` is set) and
//! talks to it over HTTP.

mod helpers;

mod access;
mod conflicts;
mod documents;
mod limits;
mod process;
mod reads;
mod resilience;
mod variants;
