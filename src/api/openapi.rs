//! The OpenAPI 3 document, generated from the routes themselves: a route can only be
//! added with the description of each of its methods ([`Routes::route`]), so the document
//! and the router cannot drift apart. Request bodies are described by the request types
//! (`schemars`); Balanced resources by Balanced's own models; ours below.

use std::collections::BTreeMap;

use axum::Router;
use axum::routing::MethodRouter;
use schemars::generate::{SchemaGenerator, SchemaSettings};
use schemars::{JsonSchema, Schema};
use serde_json::{Map, Value, json};

use super::AppState;

/// The description of one method of one route.
#[derive(Clone)]
pub struct Op {
    method: &'static str,
    summary: String,
    request: Option<fn(&mut SchemaGenerator) -> Schema>,
    response: Returns,
    /// False for the few endpoints that need no credential.
    authenticated: bool,
    /// Optional query parameters and request headers, with what they do.
    query: Vec<(&'static str, &'static str)>,
    headers: Vec<(&'static str, &'static str)>,
}

/// What a route answers with on success.
#[derive(Clone, Copy)]
pub enum Returns {
    /// A Balanced envelope of one of our collections (`debits`, `callbacks`, ...).
    Collection(&'static str, u16),
    /// 204, no body.
    Empty,
    /// A small object of our own, by component name.
    Object(&'static str),
    /// Plain text (Prometheus) or HTML (the console).
    Text(&'static str),
}

fn subschema<T: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    generator.subschema_for::<T>()
}

impl Op {
    pub fn new(method: &'static str, summary: impl Into<String>, response: Returns) -> Op {
        Op {
            method,
            summary: summary.into(),
            request: None,
            response,
            authenticated: true,
            query: Vec::new(),
            headers: Vec::new(),
        }
    }

    pub fn get(summary: impl Into<String>, response: Returns) -> Op {
        Op::new("get", summary, response)
    }

    pub fn post(summary: impl Into<String>, response: Returns) -> Op {
        Op::new("post", summary, response)
    }

    pub fn put(summary: impl Into<String>, response: Returns) -> Op {
        Op::new("put", summary, response)
    }

    pub fn delete(summary: impl Into<String>) -> Op {
        Op::new("delete", summary, Returns::Empty)
    }

    /// The request body is a `T`.
    pub fn body<T: JsonSchema>(mut self) -> Op {
        self.request = Some(subschema::<T>);
        self
    }

    /// A list: `limit`, the `after`/`before` cursors, and the operator's `marketplace`.
    pub fn paged(self) -> Op {
        self.query("limit", "Items per page, 1 to 100 (default 10)")
            .query(
                "after",
                "Items older than this id (the meta.next link carries it)",
            )
            .query(
                "before",
                "Items newer than this id (the meta.previous link carries it)",
            )
            .query(
                "marketplace",
                "The operator's filter: one marketplace's items",
            )
    }

    pub fn query(mut self, name: &'static str, description: &'static str) -> Op {
        self.query.push((name, description));
        self
    }

    pub fn header(mut self, name: &'static str, description: &'static str) -> Op {
        self.headers.push((name, description));
        self
    }

    pub fn public(mut self) -> Op {
        self.authenticated = false;
        self
    }
}

/// A router that keeps the description of every route it serves.
pub struct Routes {
    router: Router<AppState>,
    ops: BTreeMap<String, Vec<Op>>,
}

impl Default for Routes {
    fn default() -> Self {
        Routes {
            router: Router::new(),
            ops: BTreeMap::new(),
        }
    }
}

impl Routes {
    /// Serves `path` with `handler`, described by `ops`, one per method it answers.
    pub fn route(mut self, path: &str, handler: MethodRouter<AppState>, ops: Vec<Op>) -> Routes {
        assert!(!ops.is_empty(), "{path} has no description");
        self.router = self.router.route(path, handler);
        self.ops.entry(path.to_owned()).or_default().extend(ops);
        self
    }

    pub fn merge(mut self, other: Routes) -> Routes {
        self.router = self.router.merge(other.router);
        for (path, ops) in other.ops {
            self.ops.entry(path).or_default().extend(ops);
        }
        self
    }

    /// Every path served, with the methods described for it.
    pub fn described(&self) -> Vec<(String, Vec<&'static str>)> {
        self.ops
            .iter()
            .map(|(path, ops)| (path.clone(), ops.iter().map(|o| o.method).collect()))
            .collect()
    }

    pub fn into_parts(self) -> (Router<AppState>, Value) {
        let document = document(&self.ops);
        (self.router, document)
    }
}

fn document(paths: &BTreeMap<String, Vec<Op>>) -> Value {
    // OpenAPI 3.1 schemas are JSON Schema 2020-12, which Balanced's models (draft-04,
    // `"type": ["string", "null"]`) fit; the request types' schemas are made to match.
    let mut settings = SchemaSettings::draft2020_12();
    settings.definitions_path = "/components/schemas".into();
    settings.meta_schema = None;
    let mut generator = settings.into_generator();
    let mut components = own_schemas();
    let mut out = Map::new();
    for (path, ops) in paths {
        let mut item = Map::new();
        let parameters: Vec<Value> = path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } }))
            .collect();
        for op in ops {
            let mut all = parameters.clone();
            for (place, list) in [("query", &op.query), ("header", &op.headers)] {
                for (name, description) in list {
                    all.push(json!({ "name": name, "in": place, "required": false,
                        "description": description, "schema": { "type": "string" } }));
                }
            }
            let mut operation = json!({
                "summary": op.summary,
                "parameters": all,
                "responses": responses(op.response, &mut components),
            });
            if let Some(request) = op.request {
                operation["requestBody"] = json!({
                    "required": op.method == "put",
                    "content": { "application/json": { "schema": request(&mut generator).to_value() } },
                });
            }
            if !op.authenticated {
                operation["security"] = json!([]);
            }
            item.insert(op.method.to_owned(), operation);
        }
        out.insert(path.clone(), Value::Object(item));
    }
    components.extend(generator.take_definitions(true));
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "hookline",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Payments ledger (Balanced 1.1 shapes) with a transactional outbox and signed webhook callbacks.",
        },
        "paths": out,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "basic": { "type": "http", "scheme": "basic", "description": "The API secret as the user name" },
                "bearer": { "type": "http", "scheme": "bearer" },
            },
        },
        "security": [{ "basic": [] }, { "bearer": [] }],
    })
}

fn responses(response: Returns, components: &mut Map<String, Value>) -> Value {
    let error = json!({
        "description": "Balanced's error envelope, naming the field at fault",
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Errors" } } },
    });
    let (status, body) = match response {
        Returns::Empty => ("204".to_owned(), json!({ "description": "No content" })),
        Returns::Text(mime) => (
            "200".to_owned(),
            json!({
                "description": "OK",
                "content": { mime: { "schema": { "type": "string" } } },
            }),
        ),
        Returns::Object(name) => (
            "200".to_owned(),
            json!({
                "description": "OK",
                "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{name}") } } },
            }),
        ),
        Returns::Collection(collection, status) => {
            let envelope = format!("{}Envelope", capitalized(collection));
            components.entry(envelope.clone()).or_insert_with(|| json!({
                "type": "object",
                "required": [collection],
                "properties": {
                    collection: { "type": "array", "items": { "$ref": format!("#/components/schemas/{}", item_name(collection)) } },
                    "links": { "type": "object" },
                    "meta": { "$ref": "#/components/schemas/PageMeta" },
                },
            }));
            (
                status.to_string(),
                json!({
                    "description": "OK",
                    "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{envelope}") } } },
                }),
            )
        }
    };
    json!({ status: body, "4XX": error, "5XX": error })
}

fn capitalized(s: &str) -> String {
    s.split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

/// `debits` -> `Debit`, `callback_logs` -> `CallbackLog`.
fn item_name(collection: &str) -> String {
    let singular = collection.strip_suffix('s').unwrap_or(collection);
    capitalized(singular)
}

/// Balanced's models (draft-04), with their references pointed at the components.
fn balanced_model(text: &str) -> Value {
    let mut value: Value = serde_json::from_str(text).expect("a vendored Balanced model is JSON");
    fn rewrite(v: &mut Value) {
        match v {
            Value::Object(map) => {
                map.remove("$schema");
                if let Some(Value::String(r)) = map.get_mut("$ref") {
                    let name = r
                        .trim_end_matches(".json")
                        .rsplit('/')
                        .next()
                        .unwrap_or_default()
                        .to_owned();
                    *r = format!("#/components/schemas/{}", capitalized(&name));
                }
                map.values_mut().for_each(rewrite);
            }
            Value::Array(items) => items.iter_mut().for_each(rewrite),
            _ => {}
        }
    }
    rewrite(&mut value);
    value
}

fn own_schemas() -> Map<String, Value> {
    let mut s = Map::new();
    for (name, text) in [
        (
            "Order",
            include_str!("../../tests/spec/balanced/models/order.json"),
        ),
        (
            "Debit",
            include_str!("../../tests/spec/balanced/models/debit.json"),
        ),
        (
            "Refund",
            include_str!("../../tests/spec/balanced/models/refund.json"),
        ),
        (
            "Credit",
            include_str!("../../tests/spec/balanced/models/credit.json"),
        ),
        (
            "Reversal",
            include_str!("../../tests/spec/balanced/models/reversal.json"),
        ),
        (
            "Event",
            include_str!("../../tests/spec/balanced/models/event.json"),
        ),
        (
            "Error",
            include_str!("../../tests/spec/balanced/models/error.json"),
        ),
        (
            "Status",
            include_str!("../../tests/spec/balanced/models/status.json"),
        ),
        (
            "Meta",
            include_str!("../../tests/spec/balanced/models/meta.json"),
        ),
        (
            "Address",
            include_str!("../../tests/spec/balanced/models/address.json"),
        ),
        (
            "AppearsOnStatementAs",
            include_str!("../../tests/spec/balanced/models/appears_on_statement_as.json"),
        ),
    ] {
        s.insert(name.to_owned(), balanced_model(text));
    }
    // Balanced's event model lists every resource kind it had; ours carries ours.
    s["Event"]["properties"]["entity"] = json!({
        "type": "object",
        "description": "The resource as GET returned it when the event occurred, in its envelope",
    });
    let string = json!({ "type": "string" });
    let nullable_string = json!({ "type": ["string", "null"] });
    let int = json!({ "type": "integer" });
    let objects = [
        (
            "Errors",
            json!({ "type": "object", "properties": { "errors": { "type": "array", "items": { "$ref": "#/components/schemas/Error" } } } }),
        ),
        (
            "PageMeta",
            json!({ "type": "object", "properties": {
            "limit": int, "href": string, "first": string, "next": nullable_string, "previous": nullable_string } }),
        ),
        (
            "Callback",
            json!({ "type": "object", "properties": {
            "id": string, "href": string, "url": string, "method": { "type": "string", "enum": ["post", "put", "get"] },
            "revision": string, "links": { "type": "object" }, "event_types": { "type": "array", "items": string },
            "enabled": { "type": "boolean" }, "disabled_reason": nullable_string, "created_at": string, "updated_at": string,
            "secret": { "type": "string", "description": "Only when created and when rotated" } } }),
        ),
        (
            "Marketplace",
            json!({ "type": "object", "properties": {
            "id": string, "href": string, "name": string, "secret": { "type": "string", "description": "Only when created" } } }),
        ),
        (
            "Delivery",
            json!({ "type": "object", "properties": {
            "id": { "type": "string", "description": "The callback's id" }, "href": string, "url": string,
            "status": { "type": "string", "enum": ["pending", "retrying", "succeeded", "failed"] },
            "attempts": int, "attempts_remaining": int, "attempt_limit": int, "next_attempt_at": nullable_string,
            "last_attempt_at": nullable_string, "webhook_id": string, "logs": string } }),
        ),
        (
            "CallbackLog",
            json!({ "type": "object", "properties": {
            "webhook_id": string, "attempt": int, "occurred_at": string, "duration_ms": { "type": "number" },
            "status": { "type": "string", "enum": ["succeeded", "failed"] }, "request_mime_type": string,
            "request_headers": { "type": "object" }, "request_body": string, "response_status": { "type": ["integer", "null"] },
            "response_mime_type": nullable_string, "response_headers": { "type": ["object", "null"] },
            "response_body": nullable_string,
            "error_code": { "type": ["string", "null"], "enum": ["timeout", "connect", "dns", "tls", "blocked", "body-too-large", "internal", null] },
            "error_detail": nullable_string } }),
        ),
        (
            "Health",
            json!({ "type": "object", "properties": {
            "callback": string, "enabled": { "type": "boolean" }, "disabled_reason": nullable_string,
            "success_rate_last_hour": { "type": ["number", "null"] },
            "attempts_last_hour": { "type": "integer", "description": "Attempts counted by the minute they \
                started, from the start of the minute an hour ago (60 to 61 minutes)" },
            "success_rate_last_day": { "type": ["number", "null"] },
            "attempts_last_day": { "type": "integer", "description": "As the hour's, from the start of \
                the minute a day ago" },
            "last_success_at": nullable_string, "last_failure": { "type": ["object", "null"] } } }),
        ),
        (
            "DeliveryEnvelope",
            json!({ "type": "object", "required": ["callbacks"], "properties": {
            "callbacks": { "type": "array", "items": { "$ref": "#/components/schemas/Delivery" } } } }),
        ),
        (
            "TransactionEnvelope",
            json!({ "type": "object", "description":
            "The transaction in its collection's envelope: debits, refunds, credits or reversals",
            "anyOf": [
                { "$ref": "#/components/schemas/DebitsEnvelope" }, { "$ref": "#/components/schemas/RefundsEnvelope" },
                { "$ref": "#/components/schemas/CreditsEnvelope" }, { "$ref": "#/components/schemas/ReversalsEnvelope" },
            ] }),
        ),
        (
            "Requeued",
            json!({ "type": "object", "properties": { "requeued": int } }),
        ),
        (
            "Status",
            json!({ "type": "object", "properties": { "status": string } }),
        ),
        (
            "OpenApi",
            json!({ "type": "object", "description": "An OpenAPI 3 document" }),
        ),
        (
            "Queue",
            json!({ "type": "object", "properties": {
            "due": int, "oldest_due_age_seconds": { "type": "number" }, "in_flight": int,
            "attempts_last_minute": { "type": "object" } } }),
        ),
    ];
    for (name, schema) in objects {
        // "Status" is Balanced's status enum; the health answer's is "ServiceStatus".
        let name = if name == "Status" && s.contains_key("Status") {
            "ServiceStatus"
        } else {
            name
        };
        s.insert(name.to_owned(), schema);
    }
    s
}
