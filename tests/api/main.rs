//! The API's behaviour, proven over real HTTP against the real router, on SQLite always
//! and on PostgreSQL when `HOOKLINE_TEST_DATABASE_URL` names a database.
//!
//! Every test is an `async fn(TestApp)`; `on_both_backends!` turns each into
//! `sqlite::<name>` and `postgres::<name>`.

#[macro_use]
mod common;
#[path = "../support/schema.rs"]
mod schema;

mod atomicity;
mod auth;
mod bad_input;
mod batches;
mod concurrency;
mod delivery;
mod idempotency;
mod metrics;
mod money;
mod openapi;
mod operations;
mod plans;
mod receiver;
mod resources;
mod schemas;
