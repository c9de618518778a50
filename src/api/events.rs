//! `/events`, and each resource's events (`/debits/{id}/events`, ...).

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::error::ApiError;
use super::extract::{Caller, Id, ListQuery};
use super::openapi::{Op, Returns, Routes};
use super::{AppState, listed};
use crate::domain::ledger::Kind;
use crate::domain::views::{self, CallbackStatuses, EventRow};
use crate::store::EventFilter;

pub fn routes() -> Routes {
    let events = Returns::Collection("events", 200);
    let mut routes = Routes::default()
        .route(
            "/events",
            get(list),
            vec![
                Op::get(
                    "List events, filtered by type, entity, time and delivery state",
                    events,
                )
                .paged()
                .query("type", "Events of this type, e.g. debit.succeeded")
                .query("entity", "Events of this resource id")
                .query(
                    "occurred_from",
                    "Events that occurred at or after this RFC 3339 time",
                )
                .query(
                    "occurred_until",
                    "Events that occurred before this RFC 3339 time",
                )
                .query(
                    "delivery_status",
                    "Events with a delivery in this state: pending, retrying, succeeded or failed",
                ),
            ],
        )
        .route(
            "/events/{id}",
            get(show),
            vec![Op::get("Show an event", events)],
        )
        .route(
            "/orders/{id}/events",
            get(|s, c, Id(id): Id, q| of_resource(s, c, id, q, None)),
            vec![Op::get("List an order's events", events).paged()],
        );
    for kind in Kind::ALL {
        routes = routes.route(
            &format!("/{}/{{id}}/events", kind.collection()),
            get(move |s, c, Id(id): Id, q| of_resource(s, c, id, q, Some(kind))),
            vec![Op::get(format!("List a {}'s events", kind.as_str()), events).paged()],
        );
    }
    routes
}

/// `?type=&entity=&occurred_from=&occurred_until=&delivery_status=`.
fn event_filter(query: &ListQuery) -> Result<EventFilter, ApiError> {
    let text = |name: &str, max: usize| -> Result<Option<String>, ApiError> {
        match query.filter(name) {
            Some(v) if v.is_empty() || v.len() > max => Err(ApiError::field(
                name,
                format!("must be 1 to {max} characters"),
            )),
            other => Ok(other.map(str::to_owned)),
        }
    };
    let delivery_status = text("delivery_status", 16)?;
    if let Some(s) = &delivery_status
        && !matches!(s.as_str(), "pending" | "retrying" | "succeeded" | "failed")
    {
        return Err(ApiError::field(
            "delivery_status",
            "must be pending, retrying, succeeded or failed",
        ));
    }
    let entity = text("entity", 64)?;
    if entity
        .as_ref()
        .is_some_and(|e| !e.bytes().all(|b| b.is_ascii_alphanumeric()))
    {
        return Err(ApiError::field("entity", "must be a resource id"));
    }
    let event_type = text("type", 64)?;
    let well_formed = |t: &str| {
        t.split('.')
            .all(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
    };
    if event_type.as_deref().is_some_and(|t| !well_formed(t)) {
        return Err(ApiError::field(
            "type",
            "must be an event type like debit.created",
        ));
    }
    Ok(EventFilter {
        entity,
        event_type,
        occurred_from: super::deliveries::instant(query.filter("occurred_from"), "occurred_from")?,
        occurred_until: super::deliveries::instant(
            query.filter("occurred_until"),
            "occurred_until",
        )?,
        delivery_status,
    })
}

fn view((row, statuses): &(EventRow, CallbackStatuses)) -> serde_json::Value {
    views::event(row, *statuses)
}

fn id((row, _): &(EventRow, CallbackStatuses)) -> &str {
    &row.id
}

async fn list(
    State(state): State<AppState>,
    caller: Caller,
    query: ListQuery,
) -> Result<Response, ApiError> {
    let scope = caller.scope(query.marketplace.as_deref());
    let filter = event_filter(&query)?;
    let page = state.db.events(&scope, &filter, &query.page).await?;
    Ok(listed("events", "/events", &query, page, id, view))
}

async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Id(event_id): Id,
) -> Result<Response, ApiError> {
    let event = state.db.event(&caller.scope(None), &event_id).await?;
    Ok(axum::Json(views::envelope("events", vec![view(&event)], None)).into_response())
}

/// The events of one order (`kind` None) or transaction, which must be visible to the caller.
async fn of_resource(
    State(state): State<AppState>,
    caller: Caller,
    resource: String,
    query: ListQuery,
    kind: Option<Kind>,
) -> Result<Response, ApiError> {
    let scope = caller.scope(query.marketplace.as_deref());
    let collection = match kind {
        None => {
            state.db.order(&scope, &resource).await?;
            "orders"
        }
        Some(kind) => {
            state.db.transaction(&scope, kind, &resource).await?;
            kind.collection()
        }
    };
    let page = state
        .db
        .events(
            &scope,
            &EventFilter {
                entity: Some(resource.clone()),
                ..event_filter(&query)?
            },
            &query.page,
        )
        .await?;
    let path = format!("/{collection}/{resource}/events");
    Ok(listed("events", &path, &query, page, id, view))
}
