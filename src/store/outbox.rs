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
use sqlx::{Database, Encode, Executor, IntoArguments, Type};

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
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    String: for<'q> Encode<'q, DB> + Type<DB>,
    i64: for<'q> Encode<'q, DB> + Type<DB>,
{
    let id = ids::new_id(ids::EVENT);
    sqlx::query::<DB>(
        "INSERT INTO events (id, marketplace_id, type, entity_id, occurred_at, entity) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(id.as_str())
    .bind(event.marketplace_id)
    .bind(event.event_type)
    .bind(event.entity_id)
    .bind(event.occurred_at)
    .bind(event.entity.to_string())
    .execute(&mut *conn)
    .await?;
    sqlx::query::<DB>(
        "INSERT INTO deliveries (id, event_id, callback_id, marketplace_id, status, attempts, schedule_start, \
         next_attempt_at, created_at, updated_at) \
         SELECT $1 || '_' || c.id, $1, c.id, c.marketplace_id, 'pending', 0, $3, $3, $3, $3 FROM callbacks c \
         WHERE c.marketplace_id = $2 AND c.enabled AND c.deleted_at IS NULL \
         AND (NOT EXISTS (SELECT 1 FROM callback_event_types t WHERE t.callback_id = c.id) \
              OR EXISTS (SELECT 1 FROM callback_event_types t WHERE t.callback_id = c.id AND t.event_type = $4))",
    )
    .bind(id.as_str())
    .bind(event.marketplace_id)
    .bind(event.occurred_at)
    .bind(event.event_type)
    .execute(&mut *conn)
    .await?;
    Ok(id)
}

/// [`enqueue`] inside one of hookline's own transactions.
pub(crate) async fn append(tx: &mut super::Tx, event: NewEvent<'_>) -> Result<String, sqlx::Error> {
    enqueue::<sqlx::Any>(&mut **tx, event).await
}
