//! The outbox: events written in the same database transaction as the change they describe.
//!
//! An event is never written on its own: the change and its events commit together or not
//! at all, so no state change goes unannounced and no event announces a change that was
//! rolled back.

use serde_json::Value;

use super::Tx;
use crate::domain::ids;

/// One event to append.
#[derive(Debug, Clone)]
pub struct NewEvent<'a> {
    pub marketplace_id: &'a str,
    /// `debit.created`, `order.updated`, ...
    pub event_type: &'a str,
    /// The id of the resource the event is about.
    pub entity_id: &'a str,
    /// The resource as `GET` returns it now, in envelope form.
    pub entity: &'a Value,
    pub occurred_at: i64,
}

/// Appends an event inside `tx` and returns its id.
pub async fn append(tx: &mut Tx, event: NewEvent<'_>) -> Result<String, sqlx::Error> {
    let id = ids::new_id(ids::EVENT);
    sqlx::query(
        "INSERT INTO events (id, marketplace_id, type, entity_id, occurred_at, entity) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&id)
    .bind(event.marketplace_id)
    .bind(event.event_type)
    .bind(event.entity_id)
    .bind(event.occurred_at)
    .bind(event.entity.to_string())
    .execute(&mut **tx)
    .await?;
    Ok(id)
}
