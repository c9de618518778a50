//! `/metrics`: Prometheus text (see [`crate::observe`]). No credential needed, like
//! `/healthz`: it shows aggregate numbers only, never a marketplace, callback or event.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::AppState;
use super::openapi::{Op, Returns, Routes};
use crate::observe::{self, Queue};
use crate::store::now_micros;

/// The content type of the Prometheus text exposition format.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

pub fn routes() -> Routes {
    Routes::default().route(
        "/metrics",
        get(metrics),
        vec![
            Op::get(
                "Prometheus metrics: attempts by outcome, attempt durations, attempt log writes and waits, queue depth",
                Returns::Text(TEXT_FORMAT),
            )
            .public(),
        ],
    )
}

async fn metrics(State(state): State<AppState>) -> Response {
    match state.db.queue_depth().await {
        Ok((due, oldest_due_at, in_flight)) => {
            let queue = Queue {
                due,
                oldest_due_at,
                in_flight,
            };
            let text = observe::render(&queue, now_micros());
            ([(header::CONTENT_TYPE, TEXT_FORMAT)], text).into_response()
        }
        Err(e) => {
            tracing::warn!(error = %e, "reading the delivery queue for /metrics failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                "database unavailable\n",
            )
                .into_response()
        }
    }
}
