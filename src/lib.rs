//! hookline: a payments ledger whose every state change is written, in the same database
//! transaction, to an outbox of events for marketplaces' callback URLs.
//!
//! # Layout
//!
//! - [`domain`]: plain Rust. Amounts ([`domain::money`]), ids ([`domain::ids`]), the
//!   transaction life cycle ([`domain::ledger`]), request validation ([`domain::input`])
//!   and the Balanced 1.1 JSON views ([`domain::views`]). No axum, no sqlx.
//! - [`store`]: the database. [`store::Db`] opens SQLite or PostgreSQL, applies
//!   `migrations/{sqlite,postgres}`, and offers whole units of work (create a refund,
//!   record a processor outcome, ...) that each own their transaction. The outbox
//!   ([`store::outbox`]) is written inside those transactions, with one delivery per
//!   matching callback; [`store::outbox::enqueue`] is also the library's entry point for
//!   services that write their own events in their own transactions.
//! - [`api`]: the axum routers, one file per resource, and [`api::error`], which turns every
//!   failure into Balanced's error envelope.
//! - [`dispatch`]: the dispatcher: claiming due deliveries under a lease, sending them
//!   signed ([`signing`]), the retry schedule and the outbound address guard.
//! - [`verify`]: for receivers, checking a delivery (pure; also `hookline verify`).
//! - [`observe`]: Prometheus metrics for `GET /metrics`: delivery attempts counted in
//!   process, queue depth read from the database at scrape time.
//! - [`config`]: every command-line flag and environment variable, with defaults.
//! - [`server`]: the process's runtime, first-start bootstrap, and serving the API until a
//!   signal.
//! - `src/main.rs`: parses the configuration, starts logging, runs a subcommand.

pub mod api;
pub mod config;
pub mod dispatch;
pub mod domain;
pub mod observe;
pub mod server;
pub mod signing;
pub mod store;
pub mod verify;
