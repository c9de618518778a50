//! Operator-only endpoints: marketplaces, and the processor reporting outcomes.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use serde_json::json;

use super::error::ApiError;
use super::extract::{Id, Json, Operator};
use super::openapi::{Op, Returns, Routes};
use super::{AppState, created};
use crate::domain::input::{CreateMarketplace, ProcessorOutcome};

pub fn routes() -> Routes {
    Routes::default()
        .route(
            "/marketplaces",
            get(list_marketplaces).post(create_marketplace),
            vec![
                Op::get(
                    "List marketplaces (operator)",
                    Returns::Collection("marketplaces", 200),
                ),
                Op::post(
                    "Create a marketplace; the answer shows its API secret once (operator)",
                    Returns::Collection("marketplaces", 201),
                )
                .body::<CreateMarketplace>(),
            ],
        )
        .route(
            "/processor/transactions/{id}",
            put(record_outcome),
            vec![
                Op::put(
                    "Record the payment processor's outcome for a transaction (operator)",
                    Returns::Object("TransactionEnvelope"),
                )
                .body::<ProcessorOutcome>(),
            ],
        )
}

async fn create_marketplace(
    State(state): State<AppState>,
    _: Operator,
    Json { value, .. }: Json<CreateMarketplace>,
) -> Result<Response, ApiError> {
    let name = value.validate()?;
    let (marketplace, secret) = state.db.create_marketplace(&name).await?;
    Ok(created(json!({ "marketplaces": [{
        "id": marketplace.id,
        "href": format!("/marketplaces/{}", marketplace.id),
        "name": marketplace.name,
        // Shown once: only its hash is stored.
        "secret": secret,
    }]})))
}

async fn list_marketplaces(
    State(state): State<AppState>,
    _: Operator,
) -> Result<Response, ApiError> {
    let items: Vec<_> = state
        .db
        .marketplaces()
        .await?
        .into_iter()
        .map(|m| json!({ "id": m.id, "href": format!("/marketplaces/{}", m.id), "name": m.name }))
        .collect();
    Ok(axum::Json(json!({ "marketplaces": items })).into_response())
}

/// The payment processor's word on a transaction: `succeeded`, or `failed` with a reason.
async fn record_outcome(
    State(state): State<AppState>,
    _: Operator,
    Id(id): Id,
    Json { value, .. }: Json<ProcessorOutcome>,
) -> Result<Response, ApiError> {
    let outcome = value.validate()?;
    let body = state.db.record_outcome(&id, outcome).await?;
    Ok(axum::Json(body).into_response())
}
