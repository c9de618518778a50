//! Storage: one set of units of work over SQLite or PostgreSQL.
//!
//! Both backends go through sqlx's `Any` driver, so every statement is written once, with
//! `$N` parameters (SQLite reads them as numbered parameters too; the dispatcher's and the
//! outbox's many-parameter statements reach it with `?`s, see `positional`). Where the
//! backends differ (pool shape, pragmas, `FOR UPDATE SKIP LOCKED`, LISTEN/NOTIFY) the code
//! says so by matching on [`Backend`]. Each public method is a whole unit of work: it opens,
//! commits or rolls back its own database transaction.
//!
//! Concurrency: on PostgreSQL, money rules are enforced by guarded `UPDATE ... WHERE`
//! statements (compare-and-set), which re-check their condition on the newest committed
//! row. On SQLite all writes go through one connection, so they are serial; at most two
//! of the API's writes wait for it at a time, so the dispatcher's claims and attempt records
//! wait behind the one holding it and two more at most.

mod attempt_log;
mod callbacks;
pub mod deliveries;
pub mod history;
mod idempotency;
mod ledger;
mod marketplaces;
pub mod outbox;
mod outcomes;
mod pools;
pub mod queue;
mod reads;
mod rows;
mod sql;
mod updates;

use std::str::FromStr;
use std::sync::Arc;

use sqlx::any::{AnyArguments, AnyRow, install_default_drivers};
use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection, AnyPool, AssertSqlSafe, SqlSafeStr};
use tokio::sync::{Notify, Semaphore};

use crate::domain::ledger::{Kind, Status};
use pools::{
    DISPATCH_SESSION, SQLITE_ACQUIRE_TIMEOUT, UNFLUSHED_SESSION, postgres_pool, sqlite_pool,
};

pub use idempotency::IdempotencyKey;
pub use marketplaces::Marketplace;
pub use reads::{EventFilter, Page, PageOf, TxnFilter};
pub(crate) use sql::{Script, params, positional, sqlite_text, values, values_from};

/// A database transaction on either backend.
pub type Tx = sqlx::Transaction<'static, Any>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// The backend a database URL names: `postgres://` (or `postgresql://`) is PostgreSQL;
    /// anything else is SQLite (a `sqlite:` URL or a file path).
    pub fn of_url(url: &str) -> Backend {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            Backend::Sqlite
        }
    }

    /// tokio's worker threads for a process on this backend, by default. On SQLite one fewer
    /// than the machine's cores (at least one): SQLite's writer works on a thread of its own,
    /// which every write and so every delivery waits on, and with a worker on each core it
    /// waited for a core too (README, Benchmark). On PostgreSQL every core.
    pub fn default_worker_threads(self) -> usize {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        match self {
            Backend::Sqlite => cores.saturating_sub(1).max(1),
            Backend::Postgres => cores,
        }
    }
}

/// Whose data a call may see: one marketplace's, or (for the operator) every one's,
/// optionally narrowed to one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Marketplace(String),
    All,
}

impl Scope {
    /// The marketplace id to filter on, or `None` for all.
    pub fn marketplace(&self) -> Option<&str> {
        match self {
            Scope::Marketplace(id) => Some(id),
            Scope::All => None,
        }
    }
}

/// Why a money movement was refused. Each maps to one of Balanced's error codes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("State of debit to refund must be ``succeeded``; this debit is {0}.")]
    RefundInvalidDebitState(Status),
    #[error("Credit to reversal must have ``succeeded``; this credit is {0}.")]
    CannotReverseCredit(Status),
    #[error("Refund amount cannot be greater than the amount left to refund ({remaining}).")]
    RefundTooLarge { remaining: i64 },
    #[error("Reverse amount cannot be greater than the amount left to reverse ({remaining}).")]
    ReversalTooLarge { remaining: i64 },
    #[error("Debit has already been fully refunded.")]
    DebitAlreadyRefunded,
    #[error("Credit has already been fully reversed.")]
    CreditAlreadyReversed,
    #[error("Order escrow balance ({escrowed}) is insufficient for this {kind} of {amount}.")]
    InsufficientFunds {
        escrowed: i64,
        amount: i64,
        kind: &'static str,
    },
    #[error("A {kind} cannot go from {from} to {to}.")]
    IllegalTransition {
        kind: &'static str,
        from: Status,
        to: Status,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{kind} {id} not found")]
    NotFound { kind: &'static str, id: String },
    /// A reference in the request body that does not resolve (`field` names it).
    #[error("{field} {id} not found")]
    UnknownReference { field: &'static str, id: String },
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error("version {given} is stale; the current version is {current}")]
    StaleVersion { given: i64, current: i64 },
    /// A delivery has an attempt in flight; re-delivering it now could be lost.
    #[error("an attempt of this delivery is in flight")]
    InFlight,
    /// A compare-and-set kept losing to concurrent writers of the same row.
    #[error("the {0} kept changing concurrently")]
    Contention(&'static str),
    #[error("a callback to {method} {url} already exists")]
    DuplicateCallback { url: String, method: &'static str },
    #[error("Idempotency-Key {0:?} was already used with a different request")]
    IdempotencyMismatch(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// The handle every unit of work hangs off.
#[derive(Clone)]
pub struct Db {
    /// Writes (and reads that must see them). One connection on SQLite.
    write: AnyPool,
    /// Reads. On PostgreSQL the same pool as `write`.
    read: AnyPool,
    /// The dispatcher's connections ([`Db::for_dispatcher`]): on PostgreSQL a pool of its
    /// own ([`DISPATCH_SESSION`]), so claims and attempt records never queue behind the
    /// API's transactions; on SQLite the one writer, as for every other write.
    dispatch: AnyPool,
    /// Where claims run ([`Db::fetch_unflushed`]): on PostgreSQL one connection with
    /// `synchronous_commit = off` for the session ([`UNFLUSHED_SESSION`]), opened at once
    /// and kept, so a claim is one round trip; on SQLite the one writer.
    unflushed: AnyPool,
    backend: Backend,
    /// The URL connected to (PostgreSQL's LISTEN needs a connection of its own).
    url: String,
    /// Wakes this process's dispatcher when a unit of work may have created deliveries.
    wake: Arc<Notify>,
    /// SQLite only ([`Db::write_conn`]): the API's writes take one of
    /// [`SQLITE_UNITS_WAITING`] turns here before they wait for the writer, so that many at
    /// most wait there at a time. The dispatcher's claims and attempt records wait there
    /// directly: each comes after the write holding it and those waiting, not behind every
    /// one queued (at 1,000 transactions a second a claim had waited 3.4 ms for the writer,
    /// and the p99 from commit to receipt was 18-191 ms).
    turn: Arc<Semaphore>,
}

/// Connection settings that are not part of the URL.
#[derive(Debug, Clone)]
pub struct DbOptions {
    /// PostgreSQL pool size. 8 by default: with PostgreSQL on the same 2 cores, 16 gave a
    /// p99 commit-to-receipt of 12.1-30.8 ms at 1,000 events a second in the benchmark, 8
    /// gave 8.7-10.3 ms (4 runs each), and neither sustained more deliveries.
    pub max_connections: u32,
    /// SQLite reader connections (there is always exactly one writer).
    pub sqlite_readers: u32,
    /// The dispatcher's own PostgreSQL pool: its claim loop and its attempt writer each
    /// use one connection at a time.
    pub dispatch_connections: u32,
}

impl Default for DbOptions {
    fn default() -> Self {
        Self {
            max_connections: 8,
            sqlite_readers: 4,
            dispatch_connections: 4,
        }
    }
}

/// Without the URL, which may carry a password.
impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

impl Db {
    /// Connects and applies the migrations of the backend the URL names. A URL that is
    /// not `postgres://` or `sqlite:` is taken as the path of a SQLite file.
    pub async fn connect(url: &str, options: &DbOptions) -> Result<Db, StoreError> {
        install_default_drivers();
        let turn = Arc::new(Semaphore::new(SQLITE_UNITS_WAITING));
        let db = if Backend::of_url(url) == Backend::Postgres {
            let pool = postgres_pool(options.max_connections, "")
                .connect(url)
                .await?;
            Db {
                write: pool.clone(),
                read: pool,
                // Kept open: see `open_dispatch_connections`.
                dispatch: postgres_pool(options.dispatch_connections, DISPATCH_SESSION)
                    .min_connections(options.dispatch_connections)
                    .connect_lazy(url)?,
                unflushed: postgres_pool(1, UNFLUSHED_SESSION)
                    .min_connections(1)
                    .connect_lazy(url)?,
                backend: Backend::Postgres,
                url: url.to_owned(),
                wake: Arc::default(),
                turn,
            }
        } else {
            let url = sqlite_url(url);
            let write = sqlite_pool(1).connect(&url).await?;
            let read = sqlite_pool(options.sqlite_readers.max(1))
                .connect(&url)
                .await?;
            Db {
                dispatch: write.clone(),
                unflushed: write.clone(),
                write,
                read,
                backend: Backend::Sqlite,
                url,
                wake: Arc::default(),
                turn,
            }
        };
        db.migrate().await?;
        Ok(db)
    }

    /// Whether the database answers and has every migration this build knows.
    pub async fn ready(&self) -> Result<bool, StoreError> {
        let latest = migrator(self.backend)
            .iter()
            .map(|m| m.version)
            .max()
            .unwrap_or(0);
        let row = sqlx::query("SELECT MAX(version) AS version FROM _sqlx_migrations WHERE success")
            .fetch_one(self.reader())
            .await?;
        let applied: Option<i64> = sqlx::Row::try_get(&row, "version")?;
        Ok(applied.unwrap_or(0) >= latest)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        migrator(self.backend).run(&self.write).await?;
        Ok(())
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The pool for reads.
    pub fn reader(&self) -> &AnyPool {
        &self.read
    }

    /// Begins a write transaction. Library users who keep their own tables can use the
    /// same pools through [`Db::writer`].
    pub async fn begin(&self) -> Result<Tx, StoreError> {
        let begin = match self.backend {
            // SQLite: take the write lock at once. Another process's commit between a
            // deferred transaction's first read and its first write fails that write
            // (SQLITE_BUSY_SNAPSHOT) without waiting; the lock itself is waited for
            // (`busy_timeout`).
            Backend::Sqlite => Some("BEGIN IMMEDIATE".into_sql_str()),
            Backend::Postgres => None,
        };
        Ok(sqlx::Transaction::begin(self.write_conn().await?, begin).await?)
    }

    /// A connection to write with, on SQLite the writer taken in turn (see `turn`).
    pub(crate) async fn write_conn(&self) -> Result<PoolConnection<Any>, sqlx::Error> {
        if self.backend == Backend::Postgres {
            return self.write.acquire().await;
        }
        // The wait limit counts from the moment this write asked. Each write ahead in turn
        // asked earlier, so it has the writer or has given up before this one's limit.
        let deadline = tokio::time::Instant::now() + SQLITE_ACQUIRE_TIMEOUT;
        let _turn = self.turn.acquire().await.expect("the turn is never closed");
        tokio::time::timeout_at(deadline, self.write.acquire())
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)?
    }

    /// The pool for writes (one connection on SQLite). On SQLite, what is sent to it
    /// directly does not wait its turn (see [`Db::begin`]), as the dispatcher's writes do not.
    pub fn writer(&self) -> &AnyPool {
        &self.write
    }

    /// A connection of the writer's pool, closed unless settled: on SQLite the writer, for
    /// a transaction run as [`Script`]s (closing it rolls the transaction back); on
    /// PostgreSQL one for the attempt log's writes, which its writer may hold from one
    /// write to the next (`KEEP_WRITER`).
    pub(crate) async fn take_writer(&self) -> Result<CloseUnlessSettled, StoreError> {
        Ok(CloseUnlessSettled(Some(self.write.acquire().await?)))
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The signal this process's dispatcher waits on.
    pub fn wake_handle(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Commits a unit of work that may have written deliveries, and wakes the dispatcher.
    pub(crate) async fn commit(&self, tx: Tx) -> Result<(), StoreError> {
        tx.commit().await?;
        self.wake.notify_one();
        Ok(())
    }

    /// This handle with the dispatcher's connections for every read and write (on
    /// PostgreSQL a pool of its own; on SQLite the same as every handle's).
    pub fn for_dispatcher(&self) -> Db {
        Db {
            write: self.dispatch.clone(),
            read: match self.backend {
                Backend::Postgres => self.dispatch.clone(),
                Backend::Sqlite => self.read.clone(),
            },
            ..self.clone()
        }
    }

    /// Opens the dispatcher's PostgreSQL connections all at once, before its first claim: a
    /// claim round that has to open one (about 100 ms with TLS on a busy machine) holds up
    /// every delivery due meanwhile. Connections that cannot be opened now are opened when
    /// needed (and their errors reported then).
    pub(crate) async fn open_dispatch_connections(&self) {
        if self.backend != Backend::Postgres {
            return;
        }
        let n = self.dispatch.options().get_max_connections();
        let dispatch = (0..n).map(|_| self.dispatch.acquire());
        let opened = futures::future::join_all(dispatch.chain([self.unflushed.acquire()])).await;
        let failed = opened.iter().filter(|c| c.is_err()).count();
        if failed > 0 {
            tracing::warn!(
                failed,
                "could not open some of the dispatcher's connections yet"
            );
        }
    }

    /// Runs `sql`, one statement, with a commit that does not wait for the disk
    /// (PostgreSQL: on a connection with `synchronous_commit = off`; SQLite: on the writer,
    /// `synchronous = NORMAL` around it, in the same round trip). For claims alone: a claim
    /// lost to a crash leaves its deliveries due again, as when a lease runs out, and the
    /// next durable commit (an attempt record, say) makes every earlier one durable too.
    pub(crate) async fn fetch_unflushed(
        &self,
        sql: &str,
        args: AnyArguments,
    ) -> Result<Vec<AnyRow>, StoreError> {
        match self.backend {
            Backend::Postgres => Ok(sqlx::query_with(AssertSqlSafe(sql.to_owned()), args)
                .fetch_all(&self.unflushed)
                .await?),
            Backend::Sqlite => {
                let mut conn = CloseUnlessSettled(Some(self.unflushed.acquire().await?));
                let rows = sqlite_unflushed(conn.conn(), sql, args).await?;
                conn.settled();
                Ok(rows)
            }
        }
    }

    pub async fn close(&self) {
        self.write.close().await;
        self.read.close().await;
        self.dispatch.close().await;
        self.unflushed.close().await;
    }
}

/// Runs `sql` on SQLite's writer with a commit that does not wait for the disk (see
/// [`Db::fetch_unflushed`]). The setting cannot change inside a transaction, so it
/// brackets the statement, in the same round trip. Should the statement fail, or the future
/// be dropped, before the setting is back, the caller closes the connection rather than
/// hand it on with commits that do not wait for the disk.
pub(crate) async fn sqlite_unflushed(
    writer: &mut AnyConnection,
    sql: &str,
    args: AnyArguments,
) -> Result<Vec<AnyRow>, StoreError> {
    let bracketed = format!("PRAGMA synchronous = NORMAL; {sql}; PRAGMA synchronous = FULL");
    Ok(sqlx::query_with(AssertSqlSafe(bracketed), args)
        .fetch_all(writer)
        .await?)
}

/// The migrations of a backend, embedded in the binary.
fn migrator(backend: Backend) -> sqlx::migrate::Migrator {
    match backend {
        Backend::Sqlite => sqlx::migrate!("migrations/sqlite"),
        Backend::Postgres => sqlx::migrate!("migrations/postgres"),
    }
}

/// `meta` as stored: JSON text.
pub(crate) fn meta_json(meta: &crate::domain::input::Meta) -> String {
    serde_json::to_string(meta).expect("a map of strings always serializes")
}

/// `sqlite:` URLs pass through (with `mode=rwc` added so the file is created); anything
/// else is a file path.
fn sqlite_url(url: &str) -> String {
    let url = if url.starts_with("sqlite:") {
        url.to_owned()
    } else {
        format!("sqlite://{url}")
    };
    if url.contains("mode=") {
        url
    } else if url.contains('?') {
        format!("{url}&mode=rwc")
    } else {
        format!("{url}?mode=rwc")
    }
}

/// A writer connection that is closed when dropped, unless settled first: one whose
/// commits may not wait for the disk, or that is inside a transaction of its own (see
/// [`Script`]), must not serve anyone else. After a failure its holder drops it.
pub(crate) struct CloseUnlessSettled(Option<PoolConnection<Any>>);

impl CloseUnlessSettled {
    pub(crate) fn conn(&mut self) -> &mut AnyConnection {
        self.0.as_mut().expect("held until settled")
    }

    /// The connection is in a clean state again: back to the pool with it.
    pub(crate) fn settled(mut self) {
        self.0.take();
    }
}

impl Drop for CloseUnlessSettled {
    fn drop(&mut self) {
        if let Some(conn) = &mut self.0 {
            conn.close_on_drop();
        }
    }
}

/// How many of the API's writes wait for SQLite's writer at once (see `Db::turn`). One gave
/// the lowest p99 from commit to receipt at 1,000 events a second, but a third fewer API
/// creates a second while deliveries ran; two cost a fifth and kept the p99 under 10 ms;
/// with three it came within 0.2 ms of 10 (README, Benchmark).
const SQLITE_UNITS_WAITING: usize = 2;

/// The current time as microseconds since the epoch.
pub fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

fn parse_status(s: &str) -> Result<Status, sqlx::Error> {
    Status::from_str(s).map_err(|_| sqlx::Error::Decode(format!("unknown status {s:?}").into()))
}

fn parse_kind(s: &str) -> Result<Kind, sqlx::Error> {
    Kind::from_str(s).map_err(|_| sqlx::Error::Decode(format!("unknown kind {s:?}").into()))
}

/// A PostgreSQL unit test's own schema on `HOOKLINE_TEST_DATABASE_URL`: a pool on the
/// server, the schema's name, and a URL whose search path is the schema. Named as the
/// integration tests name theirs (`tests/support/schema.rs`), which drop those left over by
/// a failed run.
#[cfg(test)]
pub(crate) async fn test_schema() -> (sqlx::PgPool, String, String) {
    let base = std::env::var("HOOKLINE_TEST_DATABASE_URL").expect("a PostgreSQL URL");
    let schema = format!("t_{}", ulid::Ulid::new().to_string().to_lowercase());
    let admin = sqlx::PgPool::connect(&base).await.expect("connect");
    sqlx::raw_sql(AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&admin)
        .await
        .expect("create schema");
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
    (admin, schema, url)
}

/// Drops a schema [`test_schema`] made, with what is in it.
#[cfg(test)]
pub(crate) async fn drop_test_schema(admin: &sqlx::PgPool, schema: &str) {
    sqlx::raw_sql(AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .execute(admin)
        .await
        .expect("drop schema");
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::{Backend, Db, DbOptions, SQLITE_ACQUIRE_TIMEOUT, SQLITE_UNITS_WAITING};

    /// A SQLite connection to a fresh file in `dir`.
    async fn sqlite(dir: &tempfile::TempDir) -> Db {
        let path = dir.path().join("hookline.db");
        Db::connect(path.to_str().expect("utf-8"), &DbOptions::default())
            .await
            .expect("connect")
    }

    #[test]
    fn the_url_names_the_backend_and_sqlite_leaves_its_writer_a_core() {
        assert_eq!(Backend::of_url("postgres://u@h/db"), Backend::Postgres);
        assert_eq!(Backend::of_url("postgresql://u@h/db"), Backend::Postgres);
        assert_eq!(Backend::of_url("sqlite://x.db?mode=rwc"), Backend::Sqlite);
        assert_eq!(Backend::of_url("hookline.db"), Backend::Sqlite);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(Backend::Postgres.default_worker_threads(), cores);
        assert_eq!(Backend::Sqlite.default_worker_threads(), (cores - 1).max(1));
    }

    /// The bundled SQLite is built as `.cargo/config.toml` asks: without memory statistics
    /// or a page cache shared by every connection, each behind a lock of the whole process.
    #[tokio::test]
    async fn sqlite_is_built_without_its_process_wide_locks() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = sqlite(&dir).await;
        let options: Vec<String> = sqlx::query_scalar("PRAGMA compile_options")
            .fetch_all(db.reader())
            .await
            .expect("compile options");
        assert!(
            options.contains(&"DEFAULT_MEMSTATUS=0".to_owned()),
            "{options:?}"
        );
        assert!(
            !options.contains(&"ENABLE_MEMORY_MANAGEMENT".to_owned()),
            "{options:?}"
        );
        db.close().await;
    }

    /// SQLite: a claim that comes while units of work wait for the writer waits behind the
    /// one holding it and two more, not behind every one queued.
    #[tokio::test]
    async fn a_claim_waits_behind_two_queued_units_of_work_at_most() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = sqlite(&dir).await;
        let holding = db.begin().await.expect("begin");
        let done = Arc::new(Mutex::new(Vec::new()));
        let mut units = tokio::task::JoinSet::new();
        for _ in 0..4 {
            let (db, done) = (db.clone(), done.clone());
            units.spawn(async move {
                let tx = db.begin().await.expect("begin");
                done.lock().unwrap().push("unit of work");
                tx.commit().await.expect("commit");
            });
        }
        // On this one-thread runtime each task, polled once, queues where it waits: two
        // units for the writer, two for their turn. Nothing there needs the database.
        queue_up().await;
        let claim = {
            let (db, done) = (db.clone(), done.clone());
            tokio::spawn(async move {
                let args = sqlx::any::AnyArguments::default();
                db.fetch_unflushed("SELECT 1", args).await.expect("claim");
                done.lock().unwrap().push("claim");
            })
        };
        queue_up().await;
        holding.commit().await.expect("commit");
        claim.await.expect("claim task");
        units.join_all().await;
        let done = done.lock().unwrap().clone();
        let ahead = done.iter().position(|d| *d == "claim").expect("claimed");
        assert_eq!(ahead, SQLITE_UNITS_WAITING, "{done:?}");
    }

    /// Lets every task spawned on this one-thread runtime run until it waits.
    async fn queue_up() {
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
    }

    /// SQLite: units of work queued for the writer give up once the wait limit has passed
    /// since each asked, not one limit after another for each unit queued ahead.
    #[tokio::test]
    async fn queued_units_of_work_give_up_within_the_wait_limit() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = sqlite(&dir).await;
        let holding = db.begin().await.expect("begin");
        // From here the clock moves only when every task waits on it.
        tokio::time::pause();
        let asked = tokio::time::Instant::now();
        // One more than wait for the writer at once: the last waits for its turn first.
        let units: Vec<_> = (0..=SQLITE_UNITS_WAITING)
            .map(|_| {
                let db = db.clone();
                tokio::spawn(async move { db.begin().await.map(drop) })
            })
            .collect();
        for unit in units {
            let waited = unit.await.expect("task");
            assert!(waited.is_err(), "the writer stayed taken");
            let limit = SQLITE_ACQUIRE_TIMEOUT + std::time::Duration::from_secs(1);
            assert!(asked.elapsed() <= limit, "waited {:?}", asked.elapsed());
        }
        tokio::time::resume();
        holding.rollback().await.expect("rollback");
        db.close().await;
    }
}
