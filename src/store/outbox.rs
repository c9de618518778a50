//! The outbox: events written in the same database transaction as the change they describe,
//! with one delivery per callback that wants them.
//!
//! An event is never written on its own: the change, its events and their deliveries commit
//! together or not at all, so no state change goes unannounced, no event announces a change
//! that was rolled back, and no event is left without its deliveries, whatever crashes.
//!
//! [`enqueue`] is also the library's entry point for services that keep their own tables:
//! it runs on the caller's own connection or transaction, on SQLite or PostgreSQL.

use serde_json::Value;
use sqlx::{AssertSqlSafe, Database, Encode, Executor, IntoArguments, Type};

use super::{Backend, positional};
use crate::domain::ids;

/// One event to append.
#[derive(Debug, Clone)]
pub struct NewEvent<'a> {
    /// The marketplace whose callbacks get it.
    pub marketplace_id: &'a str,
    /// `debit.created`, `order.updated`, ...
    pub event_type: &'a str,
    /// The id of the resource the event is about.
    pub entity_id: &'a str,
    /// The resource as `GET` returns it now, in envelope form (`{"debits": [...]}`).
    pub entity: &'a Value,
    /// Microseconds since the epoch.
    pub occurred_at: i64,
}

/// Appends an event and its deliveries on `conn` (a connection or an open transaction, of
/// any backend hookline supports) and returns the event's id. Deliveries go to every
/// enabled callback of the marketplace whose filter lists the type or lists nothing, as the
/// callbacks stand in this transaction. Commit the transaction to publish; roll it back and
/// nothing was sent. On PostgreSQL the commit also wakes the dispatchers (a trigger
/// NOTIFYs); elsewhere they find the work on their next poll, or at once if you call
/// [`crate::dispatch::Dispatcher::wake`].
pub async fn enqueue<DB>(
    conn: &mut DB::Connection,
    event: NewEvent<'_>,
) -> Result<String, sqlx::Error>
where
    DB: Database,
    DB::Connection: 'static,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    String: for<'q> Encode<'q, DB> + Type<DB>,
    i64: for<'q> Encode<'q, DB> + Type<DB>,
{
    let mut appended = enqueue_many::<DB>(conn, std::slice::from_ref(&event)).await?;
    Ok(appended.remove(0))
}

/// [`enqueue`] for many events at once: two statements per 64 events instead of two per
/// event (on SQLite sent together, one round trip). Returns the events' ids in order.
pub async fn enqueue_many<DB>(
    conn: &mut DB::Connection,
    events: &[NewEvent<'_>],
) -> Result<Vec<String>, sqlx::Error>
where
    DB: Database,
    DB::Connection: 'static,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    String: for<'q> Encode<'q, DB> + Type<DB>,
    i64: for<'q> Encode<'q, DB> + Type<DB>,
{
    let backend = backend_of::<DB>(conn);
    let mut appended = Vec::with_capacity(events.len());
    for chunk in events.chunks(CHUNK) {
        let first = appended.len();
        appended.extend(chunk.iter().map(|_| ids::new_id(ids::EVENT)));
        let chunk_ids = &appended[first..];
        let insert = format!(
            "INSERT INTO events (id, marketplace_id, type, entity_id, occurred_at, entity) VALUES {}",
            super::values(chunk.len(), 6)
        );
        // On SQLite both statements go to the connection's thread in one round trip (their
        // parameters bind in order across them), so a transaction holds the one writer for
        // less time; PostgreSQL takes one statement at a time.
        let joined = backend == Backend::Sqlite;
        // The number of the fan-out's first parameter (its events' ids).
        let first_param = if joined { 6 * chunk.len() + 1 } else { 1 };
        // A delivery's id is `{event}_{callback}`: an event's deliveries are read by it
        // (`deliveries` has no index on `event_id`).
        let fan_out = format!(
            "INSERT INTO deliveries (id, event_id, callback_id, marketplace_id, status, attempts, schedule_start, \
             next_attempt_at, created_at, updated_at) \
             SELECT e.id || '_' || c.id, e.id, c.id, c.marketplace_id, 'pending', 0, e.occurred_at, e.occurred_at, \
             e.occurred_at, e.occurred_at FROM {} \
             WHERE c.enabled AND c.deleted_at IS NULL \
             AND (NOT EXISTS (SELECT 1 FROM callback_event_types t WHERE t.callback_id = c.id) \
                  OR EXISTS (SELECT 1 FROM callback_event_types t WHERE t.callback_id = c.id AND t.event_type = e.type))",
            fan_out_sources(backend, first_param, chunk.len())
        );
        let sql = if joined {
            format!("{insert};\n{fan_out}")
        } else {
            insert
        };
        let mut query = sqlx::query::<DB>(AssertSqlSafe(positional(sql, backend)));
        for (id, event) in chunk_ids.iter().zip(chunk) {
            query = query
                .bind(id.as_str())
                .bind(event.marketplace_id)
                .bind(event.event_type)
                .bind(event.entity_id)
                .bind(event.occurred_at)
                .bind(event.entity.to_string());
        }
        // PostgreSQL: the events now, and the fan-out as a statement of its own.
        if !joined {
            query.execute(&mut *conn).await?;
            query = sqlx::query::<DB>(AssertSqlSafe(fan_out));
        }
        for id in chunk_ids {
            query = query.bind(id.as_str());
        }
        query.execute(&mut *conn).await?;
    }
    Ok(appended)
}

/// The fan-out's events (`e`, those with the ids from parameter `first` on) and their
/// marketplaces' callbacks (`c`). PostgreSQL reads each event by its id, then the callbacks
/// of its marketplace, in lateral subqueries that cannot be merged into a join (`OFFSET 0`;
/// SQLite has no `LATERAL`), so each is an index probe in any plan: a plan made while
/// `events` was small read all of the marketplace's events for each callback (560 ms to
/// 1.2 s a statement once it had 500,000).
fn fan_out_sources(backend: Backend, first: usize, count: usize) -> String {
    match backend {
        Backend::Sqlite => format!(
            "events e JOIN callbacks c ON c.marketplace_id = e.marketplace_id AND e.id IN ({})",
            super::params(first, count)
        ),
        Backend::Postgres => format!(
            "(VALUES {}) k (id) \
             CROSS JOIN LATERAL (SELECT id, marketplace_id, type, occurred_at FROM events \
                 WHERE id = k.id OFFSET 0) e \
             CROSS JOIN LATERAL (SELECT id, marketplace_id, enabled, deleted_at FROM callbacks \
                 WHERE marketplace_id = e.marketplace_id OFFSET 0) c",
            super::values_from(first, count, 1)
        ),
    }
}

/// Which backend `conn` talks to, for [`positional`]: sqlx's own SQLite driver, or its `Any`
/// driver connected to SQLite, is SQLite; anything else is treated as PostgreSQL (left as
/// written).
fn backend_of<DB: Database>(conn: &DB::Connection) -> Backend
where
    DB::Connection: 'static,
{
    let any: &dyn std::any::Any = conn;
    let sqlite = match any.downcast_ref::<sqlx::AnyConnection>() {
        Some(conn) => conn.backend_name() == <sqlx::Sqlite as Database>::NAME,
        None => DB::NAME == <sqlx::Sqlite as Database>::NAME,
    };
    if sqlite {
        Backend::Sqlite
    } else {
        Backend::Postgres
    }
}

/// Events per pair of statements: a few hundred parameters at most, which keeps each
/// statement's text and bound values small, and its prepared form worth caching.
const CHUNK: usize = 64;

/// [`enqueue`] inside one of hookline's own transactions.
pub(crate) async fn append(tx: &mut super::Tx, event: NewEvent<'_>) -> Result<String, sqlx::Error> {
    enqueue::<sqlx::Any>(&mut **tx, event).await
}
