//! The JSON the API returns (and events carry): Balanced 1.1 shapes, built from stored rows.

use serde_json::value::RawValue;
use serde_json::{Value, json};

use super::input::Meta;
use super::ledger::{Kind, Status};

/// An order as stored.
#[derive(Debug, Clone)]
pub struct OrderRow {
    pub id: String,
    pub marketplace_id: String,
    pub merchant: String,
    pub description: Option<String>,
    pub meta: Meta,
    pub delivery_address: Value,
    pub amount: i64,
    pub amount_escrowed: i64,
    pub version: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A debit, refund, credit or reversal as stored.
#[derive(Debug, Clone)]
pub struct TxnRow {
    pub id: String,
    pub kind: Kind,
    pub marketplace_id: String,
    pub order_id: Option<String>,
    pub parent_id: Option<String>,
    pub instrument: Option<String>,
    pub amount: i64,
    pub amount_returned: i64,
    pub status: Status,
    pub failure_reason: Option<String>,
    pub failure_reason_code: Option<String>,
    pub appears_on_statement_as: Option<String>,
    pub transaction_number: String,
    pub description: Option<String>,
    pub meta: Meta,
    pub version: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

/// An event as stored in the outbox.
#[derive(Debug, Clone)]
pub struct EventRow {
    pub id: String,
    pub marketplace_id: String,
    pub event_type: String,
    pub entity_id: String,
    pub occurred_at: i64,
    /// The resource in envelope form, as JSON text.
    pub entity: String,
}

/// A callback as stored (its secrets are not part of it: they are shown only once).
#[derive(Debug, Clone)]
pub struct CallbackRow {
    pub id: String,
    pub marketplace_id: String,
    pub url: String,
    pub method: String,
    pub revision: String,
    pub event_types: Vec<String>,
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// How many of an event's deliveries are in each state. Fields in name order, the order a
/// JSON value's map writes them in, so that [`event_body`] serializes it as [`event`] does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CallbackStatuses {
    pub failed: i64,
    pub pending: i64,
    pub retrying: i64,
    pub succeeded: i64,
}

/// Microseconds since the epoch as ISO 8601 (`2014-12-16T20:44:56.396221Z`).
pub fn timestamp(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

pub fn order(row: &OrderRow) -> Value {
    json!({
        "id": row.id,
        "href": format!("/orders/{}", row.id),
        "created_at": timestamp(row.created_at),
        "updated_at": timestamp(row.updated_at),
        "currency": "USD",
        "amount": row.amount,
        "amount_escrowed": row.amount_escrowed,
        "description": row.description,
        "delivery_address": row.delivery_address,
        "meta": row.meta,
        "links": { "merchant": row.merchant },
    })
}

pub fn transaction(row: &TxnRow) -> Value {
    let collection = row.kind.collection();
    let mut v = json!({
        "id": row.id,
        "href": format!("/{collection}/{}", row.id),
        "created_at": timestamp(row.created_at),
        "updated_at": timestamp(row.updated_at),
        "amount": row.amount,
        "currency": "USD",
        "description": row.description,
        "status": row.status.as_str(),
        "transaction_number": row.transaction_number,
        "meta": row.meta,
    });
    let fields = v.as_object_mut().expect("a json! object");
    // The refund schema has no failure fields and no statement text; the others do.
    if row.kind != Kind::Refund {
        fields.insert("failure_reason".into(), json!(row.failure_reason));
        fields.insert("failure_reason_code".into(), json!(row.failure_reason_code));
    }
    if matches!(row.kind, Kind::Debit | Kind::Credit) {
        fields.insert(
            "appears_on_statement_as".into(),
            json!(row.appears_on_statement_as),
        );
    }
    let links = match row.kind {
        Kind::Debit => json!({
            "source": row.instrument, "order": row.order_id,
            "customer": null, "dispute": null, "card_hold": null,
        }),
        Kind::Credit => json!({
            "destination": row.instrument, "order": row.order_id,
            "customer": null, "settlement": null,
        }),
        Kind::Refund => json!({ "debit": row.parent_id, "order": row.order_id, "dispute": null }),
        Kind::Reversal => {
            json!({ "credit": row.parent_id, "order": row.order_id, "settlement": null })
        }
    };
    fields.insert("links".into(), links);
    v
}

/// The link templates Balanced put beside each collection.
fn collection_links(collection: &str) -> Value {
    match collection {
        "orders" => json!({
            "orders.merchant": "/customers/{orders.merchant}",
            "orders.debits": "/orders/{orders.id}/debits",
            "orders.refunds": "/orders/{orders.id}/refunds",
            "orders.credits": "/orders/{orders.id}/credits",
            "orders.reversals": "/orders/{orders.id}/reversals",
            "orders.buyers": "/orders/{orders.id}/buyers",
            "orders.events": "/orders/{orders.id}/events",
        }),
        "debits" => json!({
            "debits.refunds": "/debits/{debits.id}/refunds",
            "debits.customer": "/customers/{debits.customer}",
            "debits.order": "/orders/{debits.order}",
            "debits.source": "/resources/{debits.source}",
            "debits.events": "/debits/{debits.id}/events",
            "debits.dispute": "/disputes/{debits.dispute}",
            "debits.card_hold": "/holds/{debits.card_hold}",
        }),
        "refunds" => json!({
            "refunds.debit": "/debits/{refunds.debit}",
            "refunds.order": "/orders/{refunds.order}",
            "refunds.events": "/refunds/{refunds.id}/events",
            "refunds.dispute": "/disputes/{refunds.dispute}",
        }),
        "credits" => json!({
            "credits.reversals": "/credits/{credits.id}/reversals",
            "credits.settlements": "/credits/{credits.id}/settlements",
            "credits.customer": "/customers/{credits.customer}",
            "credits.order": "/orders/{credits.order}",
            "credits.destination": "/resources/{credits.destination}",
            "credits.settlement": "/settlements/{credits.settlement}",
            "credits.events": "/credits/{credits.id}/events",
        }),
        "reversals" => json!({
            "reversals.settlements": "/reversals/{reversals.id}/settlements",
            "reversals.credit": "/credits/{reversals.credit}",
            "reversals.order": "/orders/{reversals.order}",
            "reversals.settlement": "/settlements/{reversals.settlement}",
            "reversals.events": "/reversals/{reversals.id}/events",
        }),
        _ => json!({}),
    }
}

/// `{"debits": [...], "links": {...}}`, with `meta` on lists.
pub fn envelope(collection: &str, items: Vec<Value>, meta: Option<Value>) -> Value {
    let mut v = json!({ collection: items, "links": collection_links(collection) });
    if let Some(meta) = meta {
        v["meta"] = meta;
    }
    v
}

/// A callback; `secret` only in the answers to creation and rotation.
pub fn callback(row: &CallbackRow, secret: Option<&str>) -> Value {
    let mut v = json!({
        "id": row.id,
        "href": format!("/callbacks/{}", row.id),
        "url": row.url,
        "method": row.method,
        "revision": row.revision,
        "links": {},
        "event_types": row.event_types,
        "enabled": row.enabled,
        "disabled_reason": row.disabled_reason,
        "created_at": timestamp(row.created_at),
        "updated_at": timestamp(row.updated_at),
    });
    if let Some(secret) = secret {
        v["secret"] = json!(secret);
    }
    v
}

pub fn event(row: &EventRow, statuses: CallbackStatuses) -> Value {
    let entity: Value = serde_json::from_str(&row.entity).unwrap_or(Value::Null);
    json!({
        "id": row.id,
        "href": format!("/events/{}", row.id),
        "type": row.event_type,
        "occurred_at": timestamp(row.occurred_at),
        "entity": entity,
        "links": {},
        "callback_statuses": {
            "pending": statuses.pending,
            "retrying": statuses.retrying,
            "succeeded": statuses.succeeded,
            "failed": statuses.failed,
        },
    })
}

/// The body of an event's deliveries: the event as `GET /events/{id}` shows it ([`event`] in
/// an [`envelope`]), serialized. The stored entity's JSON text goes in as it is, not parsed
/// and written again: it was written from a JSON value, so that gives the same text, and
/// every claimed batch builds its events' bodies anew (their `callback_statuses` change).
pub fn event_body(row: &EventRow, statuses: CallbackStatuses) -> Vec<u8> {
    // Fields in the order of their names, as a JSON value's map writes them.
    #[derive(serde::Serialize)]
    struct Body<'a> {
        events: [Event<'a>; 1],
        links: Value,
    }
    #[derive(serde::Serialize)]
    struct Event<'a> {
        callback_statuses: CallbackStatuses,
        entity: &'a RawValue,
        href: String,
        id: &'a str,
        links: Value,
        occurred_at: String,
        #[serde(rename = "type")]
        event_type: &'a str,
    }
    let body = Body {
        events: [Event {
            callback_statuses: statuses,
            // As `event` has it: an entity that is not JSON shows as `null`.
            entity: serde_json::from_str(&row.entity).unwrap_or(RawValue::NULL),
            href: format!("/events/{}", row.id),
            id: &row.id,
            links: json!({}),
            occurred_at: timestamp(row.occurred_at),
            event_type: &row.event_type,
        }],
        links: collection_links("events"),
    };
    serde_json::to_vec(&body).expect("JSON values serialize")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `event_body` copies the stored entity text; parsing it into a value and writing the
    /// envelope gives the same bytes, for entities as hookline stores them.
    #[test]
    fn event_bodies_are_the_event_as_get_shows_it() {
        let entities = [
            json!({"debits": [{"amount": 5000, "meta": {"z": "last", "a": "first"}}],
                   "links": {"debits.order": "/orders/{debits.order}"}}),
            json!({"text": "quote \" backslash \\ tab \t nl \n ctrl \u{1} é 💸 </script>",
                   "float": 12.5, "big": 1e300, "neg": -0.001, "int": i64::MIN,
                   "nested": [[], {}, [null, true, false]], "empty": ""}),
            json!("a bare string"),
            json!(null),
        ];
        let statuses = CallbackStatuses {
            pending: 2,
            retrying: 1,
            succeeded: 7,
            failed: 3,
        };
        for entity in entities {
            let row = EventRow {
                id: "EV1".to_owned(),
                marketplace_id: "MP1".to_owned(),
                event_type: "debit.succeeded".to_owned(),
                entity_id: "WD1".to_owned(),
                occurred_at: 1_418_762_696_396_221,
                entity: entity.to_string(),
            };
            let parsed = envelope("events", vec![event(&row, statuses)], None);
            let expected = serde_json::to_vec(&parsed).unwrap();
            assert_eq!(
                String::from_utf8(event_body(&row, statuses)).unwrap(),
                String::from_utf8(expected).unwrap()
            );
        }
        // Text that is not JSON shows as null, both ways.
        let row = EventRow {
            id: "EV2".to_owned(),
            marketplace_id: "MP1".to_owned(),
            event_type: "debit.failed".to_owned(),
            entity_id: "WD2".to_owned(),
            occurred_at: 0,
            entity: "{not json".to_owned(),
        };
        let parsed = envelope("events", vec![event(&row, statuses)], None);
        let body: Value = serde_json::from_slice(&event_body(&row, statuses)).unwrap();
        assert_eq!(body, parsed);
        assert!(body["events"][0]["entity"].is_null());
    }

    #[test]
    fn timestamps_are_utc_with_microseconds() {
        assert_eq!(
            timestamp(1_418_762_696_396_221),
            "2014-12-16T20:44:56.396221Z"
        );
    }
}
