//! users-api: a self-hosted user-creation service. Five public documents describe a "create
//! user" call, each differently; this service implements all five on one store, and derives its
//! OpenAPI document from the same annotated types that parse the requests.

pub mod api;
pub mod app;
pub mod cli;
pub mod config;
pub mod database;
pub mod domain;
pub mod error;
pub mod hasher;
pub mod keys;
pub mod limits;
pub mod spec;
pub mod users;
pub mod writer;

pub use app::{AppState, RunningServer, build_app, start};
pub use config::{Cli, Settings};
