//! `/healthz` (the process is up) and `/readyz` (the database answers and is migrated),
//! for load balancers and orchestrators. No credential needed; they reveal nothing.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;
use super::extract::{Caller, ListQuery};
use super::openapi::{Op, Returns, Routes};

pub fn routes() -> Routes {
    Routes::default()
        .route("/healthz", get(healthz), vec![Op::get("The process is up", Returns::Object("ServiceStatus")).public()])
        .route(
            "/readyz",
            get(readyz),
            vec![Op::get("The database answers and is migrated (503 if not)", Returns::Object("ServiceStatus")).public()],
        )
        .route(
            "/queue",
            get(queue),
            vec![Op::get("Queue health: due deliveries, oldest due age, in flight, attempts of the last minute (this minute's, and the minute before's in proportion to the part the last 60 s cover)", Returns::Object("Queue")).query("marketplace", "The operator's filter: one marketplace's queue")],
        )
}

/// The caller's queue (the operator's: every marketplace's, or one with `?marketplace=`).
async fn queue(
    State(state): State<AppState>,
    caller: Caller,
    query: ListQuery,
) -> Result<axum::Json<Value>, ApiError> {
    query.without_filters()?;
    let q = state
        .db
        .queue(&caller.scope(query.marketplace.as_deref()))
        .await?;
    let age = q.oldest_due.map_or(0.0, |due| {
        ((crate::store::now_micros() - due).max(0)) as f64 / 1e6
    });
    Ok(axum::Json(json!({
        "due": q.due,
        "oldest_due_age_seconds": age,
        "in_flight": q.in_flight,
        "attempts_last_minute": { "succeeded": q.succeeded_last_minute, "failed": q.failed_last_minute },
    })))
}

async fn healthz() -> axum::Json<Value> {
    axum::Json(json!({ "status": "ok" }))
}

async fn readyz(State(state): State<AppState>) -> (StatusCode, axum::Json<Value>) {
    match state.db.ready().await {
        Ok(true) => (StatusCode::OK, axum::Json(json!({ "status": "ready" }))),
        Ok(false) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({ "status": "not migrated" })),
        ),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(json!({ "status": "database unavailable" })),
            )
        }
    }
}
