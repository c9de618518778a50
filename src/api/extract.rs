//! Extractors whose rejections come out as Balanced errors: the caller's credential, JSON
//! bodies, list parameters and the `Idempotency-Key` header.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::header;
use axum::http::request::Parts;
use base64::Engine;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use subtle::ConstantTimeEq;

use super::AppState;
use super::error::ApiError;
use crate::store::{IdempotencyKey, Marketplace, Page, Scope};

/// Who is calling: a marketplace (by its API secret) or the platform operator.
#[derive(Debug, Clone)]
pub enum Caller {
    Marketplace(Marketplace),
    Operator,
}

impl Caller {
    /// The marketplace a create or update acts for; the operator acts for none.
    pub fn marketplace(&self) -> Result<&str, ApiError> {
        match self {
            Caller::Marketplace(m) => Ok(&m.id),
            Caller::Operator => Err(ApiError::forbidden(
                "This call acts for a marketplace: use that marketplace's API secret",
            )),
        }
    }

    pub fn require_operator(&self) -> Result<(), ApiError> {
        match self {
            Caller::Operator => Ok(()),
            Caller::Marketplace(_) => Err(ApiError::forbidden(
                "This call is for the operator credential only",
            )),
        }
    }

    /// What a read may see: a marketplace its own; the operator everything, or one
    /// marketplace with `?marketplace=MP...`.
    pub fn scope(&self, filter: Option<&str>) -> Scope {
        match (self, filter) {
            (Caller::Marketplace(m), _) => Scope::Marketplace(m.id.clone()),
            (Caller::Operator, Some(id)) => Scope::Marketplace(id.to_owned()),
            (Caller::Operator, None) => Scope::All,
        }
    }
}

/// The secret from `Authorization: Basic` (the secret as user name, as Balanced did) or
/// `Authorization: Bearer`.
fn presented_secret(parts: &Parts) -> Option<String> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = value.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.trim().to_owned());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest.trim())
            .ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        let (user, password) = decoded.split_once(':').unwrap_or((&decoded, ""));
        let secret = if user.is_empty() { password } else { user };
        return Some(secret.to_owned());
    }
    None
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Some(secret) = presented_secret(parts).filter(|s| !s.is_empty()) else {
            return Err(ApiError::unauthorized(
                "Authentication required: send your API secret with HTTP Basic (as the user name) or as a Bearer token",
            ));
        };
        if let Some(operator) = &state.config.operator_token
            && bool::from(operator.as_bytes().ct_eq(secret.as_bytes()))
        {
            return Ok(Caller::Operator);
        }
        match state.db.marketplace_by_secret(&secret).await? {
            Some(m) => Ok(Caller::Marketplace(m)),
            None => Err(ApiError::unauthorized(
                "The API secret presented is not valid",
            )),
        }
    }
}

/// A request body, read but not yet decoded (kept whole for `Idempotency-Key`).
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let raw = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                // Bad input like any other (Balanced had no 413): a 400 naming the body.
                ApiError::field("body", "is larger than this server accepts")
            } else {
                ApiError::new(
                    e.status(),
                    "request",
                    format!("Could not read the request body: {}", e.body_text()),
                )
            }
        })?;
        Ok(RawBody(raw))
    }
}

/// A JSON body decoded into `T` (see [`parse`]), with the raw bytes kept.
pub struct Json<T> {
    pub value: T,
    pub raw: Bytes,
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let RawBody(raw) = RawBody::from_request(req, state).await?;
        Ok(Json {
            value: parse(&raw)?,
            raw,
        })
    }
}

/// Decodes a body into a request type: it must be one JSON object (an empty body reads as
/// `{}`, so `POST /debits/{id}/refunds` with no body is a full refund), with no unknown
/// and no repeated fields. Errors name the field at fault.
pub fn parse<T: DeserializeOwned>(raw: &[u8]) -> Result<T, ApiError> {
    let text: &[u8] = if raw.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        raw
    };
    if text.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::field("body", "must be a JSON object"));
    }
    let mut de = serde_json::Deserializer::from_slice(text);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let inner = e.inner();
        if inner.is_syntax() || inner.is_eof() {
            return ApiError::field("body", format!("is not valid JSON: {inner}"));
        }
        let message = inner.to_string();
        let path = e.path().to_string();
        // Unknown, missing and repeated fields are reported at the object holding them,
        // with the field's name between backquotes.
        let named = ["unknown field", "missing field", "duplicate field"]
            .iter()
            .any(|p| message.starts_with(p));
        let field = match (path.as_str(), named) {
            (".", true) => message.split('`').nth(1).unwrap_or("body").to_owned(),
            (".", false) => "body".to_owned(),
            _ => path,
        };
        ApiError::field(&field, message)
    })?;
    de.end()
        .map_err(|e| ApiError::field("body", format!("is not valid JSON: {e}")))?;
    Ok(value)
}

/// The id in a path (`/debits/{id}`). Ids are ASCII letters and digits; anything else
/// cannot name a resource, so it answers 404 without asking the database.
pub struct Id(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Id {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Path::<String>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(id))
                if (1..=64).contains(&id.len())
                    && id.bytes().all(|b| b.is_ascii_alphanumeric()) =>
            {
                Ok(Id(id))
            }
            Ok(axum::extract::Path(id)) => Err(ApiError::not_found(&format!("The resource {id}"))),
            Err(_) => Err(ApiError::not_found(&format!(
                "The resource at {}",
                parts.uri.path()
            ))),
        }
    }
}

/// The operator, or a 403 before anything else of the request is read.
pub struct Operator;

impl FromRequestParts<AppState> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        Caller::from_request_parts(parts, state)
            .await?
            .require_operator()?;
        Ok(Operator)
    }
}

pub const DEFAULT_LIMIT: i64 = 10;
pub const MAX_LIMIT: i64 = 100;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListQuery {
    limit: Option<String>,
    after: Option<String>,
    before: Option<String>,
    marketplace: Option<String>,
    #[serde(rename = "type")]
    event_type: Option<String>,
    entity: Option<String>,
    occurred_from: Option<String>,
    occurred_until: Option<String>,
    delivery_status: Option<String>,
}

/// `?limit=&after=&before=&marketplace=` on every list, and the filters of `/events`.
#[derive(Debug, Clone)]
pub struct ListQuery {
    pub page: Page,
    pub marketplace: Option<String>,
    /// The event filters given, by name, as given (they go into the page links too).
    pub filters: Vec<(&'static str, String)>,
}

impl ListQuery {
    /// Refuses event filters on a list that has none.
    pub fn without_filters(&self) -> Result<(), ApiError> {
        match self.filters.first() {
            Some((name, _)) => Err(ApiError::field(name, "is not a filter of this list")),
            None => Ok(()),
        }
    }

    /// A filter's value, if given.
    pub fn filter(&self, name: &str) -> Option<&str> {
        self.filters
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ListQuery {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let Query(raw) = Query::<RawListQuery>::try_from_uri(&parts.uri)
            .map_err(|e| ApiError::field("query", e.body_text()))?;
        let limit = match raw.limit {
            None => DEFAULT_LIMIT,
            Some(l) => l
                .parse::<i64>()
                .ok()
                .filter(|l| (1..=MAX_LIMIT).contains(l))
                .ok_or_else(|| {
                    ApiError::field(
                        "limit",
                        format!("must be a whole number from 1 to {MAX_LIMIT}"),
                    )
                })?,
        };
        if raw.after.is_some() && raw.before.is_some() {
            return Err(ApiError::field("before", "cannot be given with after"));
        }
        for (name, cursor) in [
            ("after", &raw.after),
            ("before", &raw.before),
            ("marketplace", &raw.marketplace),
        ] {
            if cursor.as_ref().is_some_and(|c| {
                c.is_empty() || c.len() > 64 || !c.bytes().all(|b| b.is_ascii_alphanumeric())
            }) {
                return Err(ApiError::field(name, "must be an id"));
            }
        }
        let filters: Vec<(&'static str, String)> = [
            ("type", raw.event_type),
            ("entity", raw.entity),
            ("occurred_from", raw.occurred_from),
            ("occurred_until", raw.occurred_until),
            ("delivery_status", raw.delivery_status),
        ]
        .into_iter()
        .filter_map(|(name, value)| value.map(|v| (name, v)))
        .collect();
        Ok(ListQuery {
            filters,
            page: Page {
                limit,
                after: raw.after,
                before: raw.before,
            },
            marketplace: raw.marketplace,
        })
    }
}

/// The `Idempotency-Key` header, if sent, bound to what the request asks for.
pub fn idempotency_key(
    parts: &axum::http::HeaderMap,
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<Option<IdempotencyKey>, ApiError> {
    let Some(value) = parts.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= 255)
        .ok_or_else(|| {
            ApiError::field(
                "Idempotency-Key",
                "must be 1 to 255 visible ASCII characters",
            )
        })?;
    Ok(Some(IdempotencyKey::new(key, method, path, body)))
}

/// The version a `PUT` expects: `If-Match: "3"` or the body's `version`. `If-Match: *`
/// asks for no particular version.
pub fn if_match(headers: &axum::http::HeaderMap) -> Result<Option<i64>, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or_default().trim();
    if text == "*" {
        return Ok(None);
    }
    text.trim_start_matches("W/")
        .trim_matches('"')
        .parse::<i64>()
        .ok()
        .filter(|v| *v >= 1)
        .map(Some)
        .ok_or_else(|| ApiError::field("If-Match", "must be a version number such as \"3\""))
}
