//! `/orders`, and `/customers/{merchant}/orders` as Balanced created them.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::{get, post};

use super::error::ApiError;
use super::extract::{Caller, Id, Json, ListQuery, idempotency_key, if_match};
use super::openapi::{Op, Returns, Routes};
use super::{AppState, created, listed, versioned};
use crate::domain::input::{CreateOrder, Update};
use crate::domain::views;

pub fn routes() -> Routes {
    let orders = |status| Returns::Collection("orders", status);
    Routes::default()
        .route(
            "/orders",
            get(list).post(create),
            vec![
                Op::get("List orders", orders(200)).paged(),
                Op::post("Create an order (merchant in the body)", orders(201))
                    .body::<CreateOrder>()
                    .header(
                        "Idempotency-Key",
                        "A repeat with the same key returns the first response and creates nothing",
                    ),
            ],
        )
        .route(
            "/customers/{merchant}/orders",
            post(create_for_merchant),
            vec![
                Op::post(
                    "Create an order for a merchant, as Balanced did",
                    orders(201),
                )
                .body::<CreateOrder>()
                .header(
                    "Idempotency-Key",
                    "A repeat with the same key returns the first response and creates nothing",
                ),
            ],
        )
        .route(
            "/orders/{id}",
            get(show).put(update),
            vec![
                Op::get("Show an order", orders(200)),
                Op::put(
                    "Update an order's description, meta or delivery address",
                    orders(200),
                )
                .body::<Update>()
                .header(
                    "If-Match",
                    "The version (ETag) the update expects; a stale one gets 409",
                ),
            ],
        )
}

async fn create(
    state: State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Json<CreateOrder>,
) -> Result<Response, ApiError> {
    create_order(state, caller, headers, None, "/orders", body).await
}

async fn create_for_merchant(
    state: State<AppState>,
    caller: Caller,
    Id(merchant): Id,
    headers: HeaderMap,
    body: Json<CreateOrder>,
) -> Result<Response, ApiError> {
    if body.value.merchant.is_some() {
        return Err(ApiError::field("merchant", "is given by the path here"));
    }
    let path = format!("/customers/{merchant}/orders");
    create_order(state, caller, headers, Some(merchant), &path, body).await
}

async fn create_order(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    merchant: Option<String>,
    path: &str,
    Json { value, raw }: Json<CreateOrder>,
) -> Result<Response, ApiError> {
    let marketplace = caller.marketplace()?;
    let key = idempotency_key(&headers, "POST", path, &raw)?;
    let new = value.validate(merchant.as_deref())?;
    let body = state
        .db
        .create_order(marketplace, new, key.as_ref())
        .await?;
    Ok(created(body))
}

async fn list(
    State(state): State<AppState>,
    caller: Caller,
    query: ListQuery,
) -> Result<Response, ApiError> {
    query.without_filters()?;
    let scope = caller.scope(query.marketplace.as_deref());
    let page = state.db.orders(&scope, &query.page).await?;
    Ok(listed(
        "orders",
        "/orders",
        &query,
        page,
        |o| &o.id,
        views::order,
    ))
}

async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Id(id): Id,
) -> Result<Response, ApiError> {
    let order = state.db.order(&caller.scope(None), &id).await?;
    Ok(versioned(
        views::envelope("orders", vec![views::order(&order)], None),
        order.version,
    ))
}

async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Id(id): Id,
    headers: HeaderMap,
    Json { value, .. }: Json<Update>,
) -> Result<Response, ApiError> {
    let marketplace = caller.marketplace()?.to_owned();
    let mut changes = value.validate()?;
    changes.version = changes.version.or(if_match(&headers)?);
    let scope = crate::store::Scope::Marketplace(marketplace);
    let (body, version) = state.db.update_order(&scope, &id, changes).await?;
    Ok(versioned(body, version))
}
