//! Operators' view of deliveries: an event's deliveries and their attempt logs (Balanced's
//! `/events/{id}/callbacks`), a callback's recent attempts and health, and re-delivery.

use axum::extract::{FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;
use super::extract::{Caller, Id, Json};
use super::openapi::{Op, Returns, Routes};
use crate::domain::views::timestamp;
use crate::store::history::{AttemptRow, DeliveryRow};

pub fn routes() -> Routes {
    let deliveries = Returns::Object("DeliveryEnvelope");
    let logs_ = Returns::Collection("callback_logs", 200);
    Routes::default()
        .route(
            "/events/{id}/callbacks",
            get(event_deliveries),
            vec![Op::get(
                "An event's deliveries, one per callback",
                deliveries,
            )],
        )
        .route(
            "/events/{id}/callbacks/{callback}",
            get(show).put(redeliver),
            vec![
                Op::get("One delivery of an event", deliveries),
                Op::put(
                    "Re-deliver the event to the callback (Balanced's replay)",
                    deliveries,
                ),
            ],
        )
        .route(
            "/events/{id}/callbacks/{callback}/logs",
            get(logs),
            vec![Op::get("A delivery's attempts", logs_)],
        )
        .route(
            "/callbacks/{id}/attempts",
            get(callback_attempts),
            vec![
                Op::get("A callback's latest attempts", logs_)
                    .query("limit", "How many, 1 to 100 (default 20)"),
            ],
        )
        .route(
            "/callbacks/{id}/health",
            get(health),
            vec![Op::get(
                "A callback's health",
                Returns::Collection("health", 200),
            )],
        )
        .route(
            "/callbacks/{id}/redeliveries",
            axum::routing::post(redeliver_failed),
            vec![
                Op::post(
                    "Re-deliver a callback's failed deliveries of a time range",
                    Returns::Object("Requeued"),
                )
                .body::<Window>(),
            ],
        )
}

/// `/events/{event}/callbacks/{callback}`: two ids, checked like [`Id`].
struct EventCallback(String, String);

impl<S: Send + Sync> FromRequestParts<S> for EventCallback {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let ok = |id: &str| {
            (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric())
        };
        match axum::extract::Path::<(String, String)>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path((event, callback))) if ok(&event) && ok(&callback) => {
                Ok(EventCallback(event, callback))
            }
            _ => Err(ApiError::not_found(&format!(
                "The resource at {}",
                parts.uri.path()
            ))),
        }
    }
}

fn delivery_view(row: &DeliveryRow, attempt_limit: i64) -> Value {
    let unfinished = matches!(row.status.as_str(), "pending" | "retrying");
    let remaining = if unfinished {
        (attempt_limit - row.attempts_in_schedule).max(0)
    } else {
        0
    };
    let href = format!("/events/{}/callbacks/{}", row.event_id, row.callback_id);
    json!({
        "id": row.callback_id,
        "href": href,
        "url": row.url,
        "status": row.status,
        "attempts": row.attempts,
        "attempts_remaining": remaining,
        "attempt_limit": attempt_limit,
        "next_attempt_at": row.next_attempt_at.map(timestamp),
        "last_attempt_at": row.last_attempt_at.map(timestamp),
        "webhook_id": row.id,
        "logs": format!("{href}/logs"),
    })
}

fn attempt_view(row: &AttemptRow) -> Value {
    let headers = |text: Option<&str>| -> Value {
        text.and_then(|t| serde_json::from_str(t).ok())
            .unwrap_or(Value::Null)
    };
    let response_headers = headers(row.response_headers.as_deref());
    let response_mime_type = response_headers
        .get("content-type")
        .cloned()
        .unwrap_or(Value::Null);
    json!({
        "webhook_id": row.delivery_id,
        "attempt": row.attempt,
        "occurred_at": timestamp(row.started_at),
        "duration_ms": row.duration_us as f64 / 1000.0,
        "status": if row.succeeded { "succeeded" } else { "failed" },
        "request_mime_type": "application/json",
        "request_headers": headers(Some(&row.request_headers)),
        "request_body": row.request_body,
        "response_status": row.response_status,
        "response_mime_type": response_mime_type,
        "response_headers": response_headers,
        "response_body": row.response_body,
        "error_code": row.error_code,
        "error_detail": row.error_detail,
    })
}

async fn event_deliveries(
    State(state): State<AppState>,
    caller: Caller,
    Id(event): Id,
) -> Result<Response, ApiError> {
    let rows = state
        .db
        .event_deliveries(&caller.scope(None), &event)
        .await?;
    Ok(deliveries(&rows, state.config.attempt_limit))
}

/// Deliveries in Balanced's envelope (`/events/{id}/callbacks` called them callbacks).
fn deliveries(rows: &[DeliveryRow], attempt_limit: i64) -> Response {
    let items: Vec<Value> = rows
        .iter()
        .map(|r| delivery_view(r, attempt_limit))
        .collect();
    axum::Json(json!({ "callbacks": items, "links": {} })).into_response()
}

/// Attempts in the envelope of Balanced's callback logs.
fn attempts(rows: &[AttemptRow]) -> Response {
    let items: Vec<Value> = rows.iter().map(attempt_view).collect();
    axum::Json(json!({ "callback_logs": items, "links": {} })).into_response()
}

async fn show(
    State(state): State<AppState>,
    caller: Caller,
    EventCallback(event, callback): EventCallback,
) -> Result<Response, ApiError> {
    let row = state
        .db
        .delivery(&caller.scope(None), &event, &callback)
        .await?;
    Ok(deliveries(&[row], state.config.attempt_limit))
}

/// Balanced's replay: delivers the event to the callback again.
async fn redeliver(
    State(state): State<AppState>,
    caller: Caller,
    EventCallback(event, callback): EventCallback,
) -> Result<Response, ApiError> {
    let row = state
        .db
        .redeliver(&caller.scope(None), &event, &callback)
        .await?;
    Ok(deliveries(&[row], state.config.attempt_limit))
}

async fn logs(
    State(state): State<AppState>,
    caller: Caller,
    EventCallback(event, callback): EventCallback,
) -> Result<Response, ApiError> {
    let rows = state
        .db
        .delivery_attempts(&caller.scope(None), &event, &callback)
        .await?;
    Ok(attempts(&rows))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Recent {
    limit: Option<i64>,
}

async fn callback_attempts(
    State(state): State<AppState>,
    caller: Caller,
    Id(callback): Id,
    query: Result<Query<Recent>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(recent) = query.map_err(|e| ApiError::field("query", e.body_text()))?;
    let limit = recent.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::field(
            "limit",
            "must be a whole number from 1 to 100",
        ));
    }
    let rows = state
        .db
        .callback_attempts(&caller.scope(None), &callback, limit)
        .await?;
    Ok(attempts(&rows))
}

async fn health(
    State(state): State<AppState>,
    caller: Caller,
    Id(callback): Id,
) -> Result<Response, ApiError> {
    let scope = caller.scope(None);
    let cb = state.db.callback(&scope, &callback).await?;
    let h = state.db.callback_health(&scope, &callback).await?;
    let rate = |ok: i64, n: i64| {
        if n == 0 {
            Value::Null
        } else {
            json!(ok as f64 / n as f64)
        }
    };
    Ok(axum::Json(json!({ "health": [{
        "callback": cb.id,
        "enabled": cb.enabled,
        "disabled_reason": cb.disabled_reason,
        "success_rate_last_hour": rate(h.succeeded_last_hour, h.attempts_last_hour),
        "attempts_last_hour": h.attempts_last_hour,
        "success_rate_last_day": rate(h.succeeded_last_day, h.attempts_last_day),
        "attempts_last_day": h.attempts_last_day,
        "last_success_at": h.last_success_at.map(timestamp),
        "last_failure": h.last_failure.as_ref().map(|f| json!({
            "occurred_at": timestamp(f.started_at),
            "response_status": f.response_status,
            "error_code": f.error_code,
            "error_detail": f.error_detail,
        })),
    }]}))
    .into_response())
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Window {
    /// RFC 3339; from this time on (inclusive).
    from: Option<String>,
    /// RFC 3339; before this time.
    to: Option<String>,
}

/// Queues again a callback's failed deliveries of events that occurred in `[from, to)`
/// (RFC 3339; either end open), and says how many.
async fn redeliver_failed(
    State(state): State<AppState>,
    caller: Caller,
    Id(callback): Id,
    Json { value, .. }: Json<Window>,
) -> Result<Response, ApiError> {
    let from = instant(value.from.as_deref(), "from")?.unwrap_or(i64::MIN);
    let to = instant(value.to.as_deref(), "to")?.unwrap_or(i64::MAX);
    if from >= to {
        return Err(ApiError::field("to", "must be later than from"));
    }
    let requeued = state
        .db
        .redeliver_failed(&caller.scope(None), &callback, from, to)
        .await?;
    Ok(axum::Json(json!({ "requeued": requeued })).into_response())
}

/// An RFC 3339 time as microseconds since the epoch.
pub fn instant(text: Option<&str>, field: &str) -> Result<Option<i64>, ApiError> {
    text.map(|t| {
        chrono::DateTime::parse_from_rfc3339(t)
            .map(|d| d.timestamp_micros())
            .map_err(|_| {
                ApiError::field(
                    field,
                    format!("\"{t}\" is not an RFC 3339 time like 2026-11-22T21:00:00Z"),
                )
            })
    })
    .transpose()
}
