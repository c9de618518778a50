//! `/callbacks`: where a marketplace's events are delivered.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use super::error::ApiError;
use super::extract::{Caller, Id, Json, ListQuery};
use super::openapi::{Op, Returns, Routes};
use super::{AppState, created, listed};
use crate::domain::callbacks::{CreateCallback, UpdateCallback};
use crate::domain::views;
use crate::store::Scope;

pub fn routes() -> Routes {
    let callbacks = |status| Returns::Collection("callbacks", status);
    Routes::default()
        .route(
            "/callbacks",
            get(list).post(create),
            vec![
                Op::get("List callbacks", callbacks(200)).paged(),
                Op::post(
                    "Register a callback; the answer shows its signing secret once",
                    callbacks(201),
                )
                .body::<CreateCallback>(),
            ],
        )
        .route(
            "/callbacks/{id}",
            get(show).put(update).delete(remove),
            vec![
                Op::get("Show a callback", callbacks(200)),
                Op::put(
                    "Turn a callback on or off, or change its event filter",
                    callbacks(200),
                )
                .body::<UpdateCallback>(),
                Op::delete("Delete a callback"),
            ],
        )
        .route(
            "/callbacks/{id}/secret",
            post(rotate),
            vec![Op::post(
                "Rotate the signing secret (the old one signs too for a grace period)",
                callbacks(200),
            )],
        )
}

fn one(row: &views::CallbackRow, secret: Option<&str>) -> serde_json::Value {
    serde_json::json!({ "callbacks": [views::callback(row, secret)], "links": {} })
}

/// Registers a callback. The answer carries its signing secret, shown only now.
async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Json { value, .. }: Json<CreateCallback>,
) -> Result<Response, ApiError> {
    let marketplace = caller.marketplace()?;
    let new = value.validate(state.config.require_https)?;
    let (row, secret) = state.db.create_callback(marketplace, new).await?;
    Ok(created(one(&row, Some(&secret))))
}

async fn list(
    State(state): State<AppState>,
    caller: Caller,
    query: ListQuery,
) -> Result<Response, ApiError> {
    query.without_filters()?;
    let scope = caller.scope(query.marketplace.as_deref());
    let page = state.db.callbacks(&scope, &query.page).await?;
    Ok(listed(
        "callbacks",
        "/callbacks",
        &query,
        page,
        |c| &c.id,
        |c| views::callback(c, None),
    ))
}

async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Id(id): Id,
) -> Result<Response, ApiError> {
    let row = state.db.callback(&caller.scope(None), &id).await?;
    Ok(axum::Json(one(&row, None)).into_response())
}

/// Turns a callback on or off (turning it on clears why it was off), or changes its filter.
async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Id(id): Id,
    Json { value, .. }: Json<UpdateCallback>,
) -> Result<Response, ApiError> {
    // The marketplace, or the operator, who may turn any callback on or off but not change
    // what it subscribes to.
    let scope = caller.scope(None);
    if scope == Scope::All && value.event_types.is_some() {
        return Err(ApiError::field(
            "event_types",
            "is the marketplace's to change, not the operator's",
        ));
    }
    let row = state
        .db
        .update_callback(&scope, &id, value.validate()?)
        .await?;
    Ok(axum::Json(one(&row, None)).into_response())
}

async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    Id(id): Id,
) -> Result<Response, ApiError> {
    let scope = Scope::Marketplace(caller.marketplace()?.to_owned());
    state.db.delete_callback(&scope, &id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// A new signing secret, shown once; the old one signs beside it for the grace period.
async fn rotate(
    State(state): State<AppState>,
    caller: Caller,
    Id(id): Id,
) -> Result<Response, ApiError> {
    let scope = Scope::Marketplace(caller.marketplace()?.to_owned());
    let grace = state
        .config
        .rotation_grace
        .as_micros()
        .min(i64::MAX as u128) as i64;
    let (row, secret) = state.db.rotate_callback_secret(&scope, &id, grace).await?;
    Ok(axum::Json(one(&row, Some(&secret))).into_response())
}
