//! Column lists and row decoding, shared by every query that reads a whole row.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{parse_kind, parse_status};
use crate::domain::views::{EventRow, OrderRow, TxnRow};

/// The columns of `orders` that [`order`] decodes, as a literal for `concat!`.
macro_rules! order_columns {
    () => {
        "id, marketplace_id, merchant, description, meta, delivery_address, amount, \
         amount_escrowed, version, created_at, updated_at"
    };
}

/// The columns of `transactions` that [`transaction`] decodes.
macro_rules! txn_columns {
    () => {
        "id, kind, marketplace_id, order_id, parent_id, instrument, amount, amount_returned, \
         status, failure_reason, failure_reason_code, appears_on_statement_as, \
         transaction_number, description, meta, version, created_at, updated_at"
    };
}

/// The columns of `events` that [`event`] decodes.
macro_rules! event_columns {
    () => {
        "id, marketplace_id, type, entity_id, occurred_at, entity"
    };
}

pub(crate) use {event_columns, order_columns, txn_columns};

fn json<T: serde::de::DeserializeOwned>(row: &AnyRow, column: &str) -> Result<T, sqlx::Error> {
    let text: String = row.try_get(column)?;
    serde_json::from_str(&text).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

pub fn order(row: &AnyRow) -> Result<OrderRow, sqlx::Error> {
    Ok(OrderRow {
        id: row.try_get("id")?,
        marketplace_id: row.try_get("marketplace_id")?,
        merchant: row.try_get("merchant")?,
        description: row.try_get("description")?,
        meta: json(row, "meta")?,
        delivery_address: json(row, "delivery_address")?,
        amount: row.try_get("amount")?,
        amount_escrowed: row.try_get("amount_escrowed")?,
        version: row.try_get("version")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

pub fn transaction(row: &AnyRow) -> Result<TxnRow, sqlx::Error> {
    Ok(TxnRow {
        id: row.try_get("id")?,
        kind: parse_kind(&row.try_get::<String, _>("kind")?)?,
        marketplace_id: row.try_get("marketplace_id")?,
        order_id: row.try_get("order_id")?,
        parent_id: row.try_get("parent_id")?,
        instrument: row.try_get("instrument")?,
        amount: row.try_get("amount")?,
        amount_returned: row.try_get("amount_returned")?,
        status: parse_status(&row.try_get::<String, _>("status")?)?,
        failure_reason: row.try_get("failure_reason")?,
        failure_reason_code: row.try_get("failure_reason_code")?,
        appears_on_statement_as: row.try_get("appears_on_statement_as")?,
        transaction_number: row.try_get("transaction_number")?,
        description: row.try_get("description")?,
        meta: json(row, "meta")?,
        version: row.try_get("version")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

pub fn event(row: &AnyRow) -> Result<EventRow, sqlx::Error> {
    event_with_id(row, "id")
}

/// [`event`] from a row of several tables, whose event id is in the column `id_column`.
pub fn event_with_id(row: &AnyRow, id_column: &str) -> Result<EventRow, sqlx::Error> {
    Ok(EventRow {
        id: row.try_get(id_column)?,
        marketplace_id: row.try_get("marketplace_id")?,
        event_type: row.try_get("type")?,
        entity_id: row.try_get("entity_id")?,
        occurred_at: row.try_get("occurred_at")?,
        entity: row.try_get("entity")?,
    })
}
