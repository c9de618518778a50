//! The HTTP API: Balanced 1.1 paths and envelopes, one router per resource.

mod callbacks;
mod console;
mod deliveries;
pub mod error;
mod events;
mod extract;
mod health;
mod metrics;
pub mod openapi;
mod operator;
mod orders;
mod transactions;

use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::domain::ids;
use crate::domain::views;
use crate::store::{Db, PageOf};
use error::{ApiError, REQUEST_ID};
use extract::ListQuery;

/// What the API needs beyond the database.
#[derive(Clone)]
pub struct ApiConfig {
    /// The operator credential; `None` turns the operator-only endpoints off.
    pub operator_token: Option<String>,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Refuse plain http callback URLs.
    pub require_https: bool,
    /// How long a rotated-out secret keeps signing.
    pub rotation_grace: std::time::Duration,
    /// Attempts per delivery schedule, as the dispatchers are configured (shown in the
    /// delivery views).
    pub attempt_limit: i64,
}

/// Never prints the operator token.
impl std::fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiConfig")
            .field(
                "operator_token",
                &self.operator_token.as_ref().map(|_| "<redacted>"),
            )
            .field("max_body_bytes", &self.max_body_bytes)
            .field("require_https", &self.require_https)
            .field("rotation_grace", &self.rotation_grace)
            .field("attempt_limit", &self.attempt_limit)
            .finish()
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            operator_token: None,
            max_body_bytes: 256 * 1024,
            require_https: false,
            rotation_grace: std::time::Duration::from_secs(24 * 3600),
            attempt_limit: i64::from(
                crate::dispatch::schedule::RetrySchedule::default().max_attempts,
            ),
        }
    }
}

#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    pub config: Arc<ApiConfig>,
}

/// Every route, each with its description.
pub fn routes() -> openapi::Routes {
    openapi::Routes::default()
        .merge(health::routes())
        .merge(console::routes())
        .merge(metrics::routes())
        .merge(callbacks::routes())
        .merge(deliveries::routes())
        .merge(orders::routes())
        .merge(transactions::routes())
        .merge(events::routes())
        .merge(operator::routes())
        .route(
            "/openapi.json",
            axum::routing::get(openapi_document),
            vec![
                openapi::Op::get(
                    "This document: OpenAPI 3, made from the routes",
                    openapi::Returns::Object("OpenApi"),
                )
                .public(),
            ],
        )
}

/// The document, made once from [`routes`].
static OPENAPI: std::sync::OnceLock<Value> = std::sync::OnceLock::new();

async fn openapi_document() -> axum::Json<Value> {
    axum::Json(OPENAPI.get_or_init(|| routes().into_parts().1).clone())
}

pub fn router(db: Db, config: ApiConfig) -> Router {
    let max_body = config.max_body_bytes.max(1024);
    let state = AppState {
        db,
        config: Arc::new(config),
    };
    let (router, document) = routes().into_parts();
    let _ = OPENAPI.set(document);
    router
        .fallback(|req: Request| async move {
            ApiError::not_found(&format!("The route {} {}", req.method(), req.uri().path()))
        })
        .method_not_allowed_fallback(|req: Request| async move {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                format!("{} is not allowed on {}", req.method(), req.uri().path()),
            )
        })
        .layer(axum::extract::DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn(with_request_id))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

/// Gives each request an `OHM...` id, quoted in its errors and sent as `x-request-id`.
async fn with_request_id(req: Request, next: Next) -> Response {
    let id = ids::request_id();
    let mut response = REQUEST_ID.scope(id.clone(), next.run(req)).await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

/// 201 with the created resource.
fn created(body: Value) -> Response {
    (StatusCode::CREATED, axum::Json(body)).into_response()
}

/// 200 with one resource and its version as the `ETag` (send it back in `If-Match`).
fn versioned(body: Value, version: i64) -> Response {
    let mut response = axum::Json(body).into_response();
    if let Ok(tag) = HeaderValue::from_str(&format!("\"{version}\"")) {
        response.headers_mut().insert(header::ETAG, tag);
    }
    response
}

/// A list in the Balanced envelope, with `meta` carrying the page links.
fn listed<T>(
    collection: &str,
    path: &str,
    query: &ListQuery,
    page: PageOf<T>,
    id: fn(&T) -> &str,
    view: fn(&T) -> Value,
) -> Response {
    let limit = query.page.limit;
    let mut base = format!("{path}?limit={limit}");
    if let Some(m) = &query.marketplace {
        base.push_str(&format!("&marketplace={m}"));
    }
    for (name, value) in &query.filters {
        let value: String = url::form_urlencoded::byte_serialize(value.as_bytes()).collect();
        base.push_str(&format!("&{name}={value}"));
    }
    let first = page.items.first().map(id);
    let last = page.items.last().map(id);
    let going_back = query.page.before.is_some();
    let next = match last {
        Some(last) if page.more || going_back => json!(format!("{base}&after={last}")),
        _ => Value::Null,
    };
    let has_newer = query.page.after.is_some() || (going_back && page.more);
    let previous = match first {
        Some(first) if has_newer => json!(format!("{base}&before={first}")),
        _ => Value::Null,
    };
    let mut href = base.clone();
    if let Some(a) = &query.page.after {
        href.push_str(&format!("&after={a}"));
    }
    if let Some(b) = &query.page.before {
        href.push_str(&format!("&before={b}"));
    }
    let meta =
        json!({ "limit": limit, "href": href, "first": base, "next": next, "previous": previous });
    let items = page.items.iter().map(view).collect();
    axum::Json(views::envelope(collection, items, Some(meta))).into_response()
}
