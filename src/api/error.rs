//! One error type for the API, answered in Balanced's error envelope.
//!
//! Every 4xx and 5xx body is `{"errors": [{status, status_code, category_code,
//! category_type, description, request_id, extras, additional}]}`. The description names
//! the field at fault and ends with the request id, as Balanced's did. Internal causes are
//! logged with the request id and never sent.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use crate::domain::input::InputError;
use crate::store::{Refusal, StoreError};

tokio::task_local! {
    /// The id of the request being answered, quoted in its errors.
    pub static REQUEST_ID: String;
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub category_code: &'static str,
    pub category_type: &'static str,
    pub message: String,
    pub extras: Map<String, Value>,
}

impl ApiError {
    pub fn new(
        status: StatusCode,
        category_code: &'static str,
        message: impl Into<String>,
    ) -> Self {
        let category_type = if status == StatusCode::CONFLICT {
            "logical"
        } else {
            "request"
        };
        Self {
            status,
            category_code,
            category_type,
            message: message.into(),
            extras: Map::new(),
        }
    }

    /// A 400 that names the field at fault.
    pub fn field(field: &str, message: impl Into<String>) -> Self {
        InputError::new(field, message).into()
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not-found",
            format!("{what} not found."),
        )
    }

    pub fn unauthorized(message: &str) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "authentication-required", message)
    }

    pub fn forbidden(message: &str) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal-error",
            "An internal error occurred; it has been logged.",
        )
    }
}

impl From<InputError> for ApiError {
    fn from(e: InputError) -> Self {
        let mut err = Self::new(StatusCode::BAD_REQUEST, e.category_code, e.to_string());
        err.extras.insert(e.field, Value::String(e.message));
        err
    }
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        let (status, code, field) = match &r {
            Refusal::RefundInvalidDebitState(_) => (
                StatusCode::BAD_REQUEST,
                "refund-invalid-debit-state",
                "debit",
            ),
            Refusal::CannotReverseCredit(_) => {
                (StatusCode::BAD_REQUEST, "cannot-reverse-credit", "credit")
            }
            Refusal::RefundTooLarge { .. } => (StatusCode::BAD_REQUEST, "invalid-amount", "amount"),
            Refusal::ReversalTooLarge { .. } => {
                (StatusCode::BAD_REQUEST, "invalid-reversal-amount", "amount")
            }
            Refusal::DebitAlreadyRefunded => {
                (StatusCode::CONFLICT, "debit-already-refunded", "debit")
            }
            Refusal::CreditAlreadyReversed => {
                (StatusCode::CONFLICT, "credit-already-reversed", "credit")
            }
            Refusal::InsufficientFunds { .. } => {
                (StatusCode::CONFLICT, "insufficient-funds", "amount")
            }
            Refusal::IllegalTransition { .. } => {
                (StatusCode::CONFLICT, "illegal-status-transition", "status")
            }
        };
        let mut err = Self::new(status, code, r.to_string());
        err.extras
            .insert(field.to_owned(), Value::String(r.to_string()));
        err
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { kind, id } => Self::not_found(&format!("{kind} {id}")),
            StoreError::UnknownReference { field, id } => {
                Self::field(field, format!("{id} not found"))
            }
            StoreError::Refused(r) => r.into(),
            StoreError::StaleVersion { given, current } => {
                let mut err = Self::new(
                    StatusCode::CONFLICT,
                    "version-conflict",
                    format!(
                        "Version {given} is stale: the resource is at version {current}. Fetch it and retry."
                    ),
                );
                err.extras.insert("version".into(), json!(current));
                err
            }
            StoreError::InFlight => Self::new(
                StatusCode::CONFLICT,
                "attempt-in-flight",
                "An attempt of this delivery is in flight; re-deliver once it has finished.",
            ),
            StoreError::Contention(what) => Self::new(
                StatusCode::CONFLICT,
                "concurrent-update",
                format!("The {what} was changed by many concurrent requests; retry."),
            ),
            StoreError::DuplicateCallback { url, method } => {
                let mut err = Self::new(
                    StatusCode::CONFLICT,
                    "duplicate-webhook-url",
                    format!("A callback to {method} {url} is already registered."),
                );
                err.extras.insert("url".into(), json!(url));
                err
            }
            StoreError::IdempotencyMismatch(key) => {
                let mut err = Self::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "idempotency-key-reused",
                    format!("Idempotency-Key {key:?} was already used with a different request."),
                );
                err.extras.insert("Idempotency-Key".into(), json!(key));
                err
            }
            StoreError::Database(cause) => {
                tracing::error!(error = %cause, "database error");
                Self::internal()
            }
            StoreError::Migrate(cause) => {
                tracing::error!(error = %cause, "migration error");
                Self::internal()
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let request_id = REQUEST_ID
            .try_with(Clone::clone)
            .unwrap_or_else(|_| crate::domain::ids::request_id());
        if self.status.is_server_error() {
            tracing::error!(
                request_id,
                status = self.status.as_u16(),
                "answered with a server error"
            );
        }
        let message = self.message.trim_end_matches('.');
        let body = json!({ "errors": [{
            "status": self.status.canonical_reason().unwrap_or("Error"),
            "status_code": self.status.as_u16(),
            "category_code": self.category_code,
            "category_type": self.category_type,
            "description": format!("{message}. Your request id is {request_id}."),
            "request_id": request_id,
            "extras": self.extras,
            "additional": null,
        }]});
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"hookline\""),
            );
        }
        response
    }
}
