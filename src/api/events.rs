//! `/events`, and each resource's events (`/debits/{id}/events`, ...).

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::error::ApiError;
use super::extract::{Caller, Id, ListQuery};
use super::{AppState, listed};
use crate::domain::ledger::Kind;
use crate::domain::views::{self, CallbackStatuses, EventRow};

pub fn routes() -> Router<AppState> {
    let mut router = Router::new()
        .route("/events", get(list))
        .route("/events/{id}", get(show))
        .route(
            "/orders/{id}/events",
            get(|s, c, Id(id): Id, q| of_resource(s, c, id, q, None)),
        );
    for kind in Kind::ALL {
        router = router.route(
            &format!("/{}/{{id}}/events", kind.collection()),
            get(move |s, c, Id(id): Id, q| of_resource(s, c, id, q, Some(kind))),
        );
    }
    router
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
    let page = state.db.events(&scope, None, &query.page).await?;
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
        .events(&scope, Some(&resource), &query.page)
        .await?;
    let path = format!("/{collection}/{resource}/events");
    Ok(listed("events", &path, &query, page, id, view))
}
