//! Bad input never gets a 5xx and never half-writes (issue item 8).
//!
//! Every refused request must answer in Balanced's error envelope with the right status, a
//! `category_code`, and a description and `extras` that name the field at fault (404s name
//! the id instead). After every refused create or update, the rows in `transactions`,
//! `orders` and `events` are counted again and the order's escrow read again: nothing may
//! have changed.

use reqwest::{Method, StatusCode};
use serde_json::{Map, Value, json};
use sqlx::Row;

use crate::common::*;

/// A well-formed id of `prefix` that no row has.
pub(crate) fn unknown(prefix: &str) -> String {
    format!("{prefix}{}", ulid::Ulid::new())
}

/// How many rows the ledger and the outbox hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rows {
    pub transactions: i64,
    pub orders: i64,
    pub events: i64,
}

pub(crate) async fn marketplace_count(app: &TestApp) -> i64 {
    let row = sqlx::query("SELECT COUNT(*) AS n FROM marketplaces")
        .fetch_one(app.db.reader())
        .await
        .expect("a count");
    row.try_get::<i64, _>("n").expect("an integer count")
}

pub(crate) async fn rows(app: &TestApp) -> Rows {
    async fn count(app: &TestApp, sql: &'static str) -> i64 {
        let row = sqlx::query(sql)
            .fetch_one(app.db.reader())
            .await
            .expect("a count");
        row.try_get::<i64, _>("n").expect("an integer count")
    }
    Rows {
        transactions: count(app, "SELECT COUNT(*) AS n FROM transactions").await,
        orders: count(app, "SELECT COUNT(*) AS n FROM orders").await,
        events: count(app, "SELECT COUNT(*) AS n FROM events").await,
    }
}

/// Like `send`, but a body that is not JSON comes back as a string instead of panicking,
/// so the assertion that follows says what was answered.
pub(crate) async fn send_any(request: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let response = request.send().await.expect("the request reaches the app");
    let status = response.status();
    let text = response.text().await.expect("a body");
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}

/// Asserts that `body` is Balanced's error envelope for `status`, and returns its one error.
#[track_caller]
pub(crate) fn assert_envelope<'a>(label: &str, status: StatusCode, body: &'a Value) -> &'a Value {
    assert!(
        !status.is_server_error(),
        "{label}: answered {status}: {body}"
    );
    let errors = body["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("{label}: not an error envelope: {body}"));
    assert_eq!(errors.len(), 1, "{label}: {body}");
    let e = &errors[0];
    for key in [
        "status",
        "status_code",
        "category_code",
        "category_type",
        "description",
        "request_id",
        "extras",
        "additional",
    ] {
        assert!(
            e.get(key).is_some(),
            "{label}: the error has no {key}: {body}"
        );
    }
    assert_eq!(e["status_code"], json!(status.as_u16()), "{label}: {body}");
    assert_eq!(
        e["status"],
        json!(status.canonical_reason().expect("a known status")),
        "{label}: {body}"
    );
    let code = e["category_code"].as_str().unwrap_or_default();
    assert!(!code.is_empty(), "{label}: no category_code: {body}");
    assert!(
        e["category_type"].as_str().is_some_and(|t| !t.is_empty()),
        "{label}: {body}"
    );
    let request_id = e["request_id"].as_str().unwrap_or_default();
    assert!(
        request_id.starts_with("OHM"),
        "{label}: request id {request_id:?}"
    );
    let description = e["description"].as_str().unwrap_or_default();
    assert!(
        description.ends_with(&format!("Your request id is {request_id}.")),
        "{label}: the description must end with the request id: {description}"
    );
    assert!(
        e["extras"].is_object(),
        "{label}: extras must be an object: {body}"
    );
    e
}

/// Asserts a 4xx whose description says `Invalid field [field]` and whose extras have `field`.
#[track_caller]
pub(crate) fn assert_names_field(
    label: &str,
    status: StatusCode,
    body: &Value,
    expected: StatusCode,
    field: &str,
) {
    assert_eq!(status, expected, "{label}: {body}");
    let e = assert_envelope(label, status, body);
    let description = e["description"].as_str().unwrap_or_default();
    assert!(
        description.contains(&format!("[{field}]")),
        "{label}: the description should name [{field}]: {description}"
    );
    assert!(
        e["extras"].get(field).is_some(),
        "{label}: extras should have the key {field:?}: {}",
        e["extras"]
    );
}

/// One refused request.
struct Case {
    operator: bool,
    method: Method,
    path: String,
    body: String,
    header: Option<(&'static str, String)>,
    status: StatusCode,
    /// The field the error must name; for a 404, the id its description must name.
    names: String,
    code: Option<&'static str>,
    /// A money rule's refusal: Balanced's own wording, with the field in `extras`.
    refusal: bool,
}

impl Case {
    fn new(
        method: Method,
        path: impl Into<String>,
        body: impl Into<String>,
        status: StatusCode,
        names: impl Into<String>,
    ) -> Case {
        Case {
            operator: false,
            method,
            path: path.into(),
            body: body.into(),
            header: None,
            status,
            names: names.into(),
            code: None,
            refusal: false,
        }
    }

    fn post(path: impl Into<String>, body: Value, field: &str) -> Case {
        Case::new(
            Method::POST,
            path,
            body.to_string(),
            StatusCode::BAD_REQUEST,
            field,
        )
    }

    fn post_raw(path: impl Into<String>, body: impl Into<String>, field: &str) -> Case {
        Case::new(Method::POST, path, body, StatusCode::BAD_REQUEST, field)
    }

    fn put(path: impl Into<String>, body: Value, field: &str) -> Case {
        Case::new(
            Method::PUT,
            path,
            body.to_string(),
            StatusCode::BAD_REQUEST,
            field,
        )
    }

    fn code(mut self, code: &'static str) -> Case {
        self.code = Some(code);
        self
    }

    /// A refusal by a money rule, answered with `code` in Balanced's wording.
    fn refusal(mut self, code: &'static str) -> Case {
        self.refusal = true;
        self.code = Some(code);
        self
    }

    fn status(mut self, status: StatusCode) -> Case {
        self.status = status;
        self
    }

    fn header(mut self, name: &'static str, value: impl Into<String>) -> Case {
        self.header = Some((name, value.into()));
        self
    }

    fn by_operator(mut self) -> Case {
        self.operator = true;
        self
    }

    fn label(&self) -> String {
        let body: String = self.body.chars().take(120).collect();
        format!("{} {} {body}", self.method, self.path)
    }

    async fn send(&self, app: &TestApp) -> (StatusCode, Value) {
        let mut request = if self.operator {
            app.operator(self.method.clone(), &self.path)
        } else {
            app.request(self.method.clone(), &self.path)
        };
        if !self.body.is_empty() {
            request = request
                .header("content-type", "application/json")
                .body(self.body.clone());
        }
        if let Some((name, value)) = &self.header {
            request = request.header(*name, value.as_str());
        }
        send_any(request).await
    }

    #[track_caller]
    fn check(&self, status: StatusCode, body: &Value) {
        let label = self.label();
        if self.status == StatusCode::NOT_FOUND {
            assert_eq!(status, StatusCode::NOT_FOUND, "{label}: {body}");
            let e = assert_envelope(&label, status, body);
            let description = e["description"].as_str().unwrap_or_default();
            assert!(
                description.contains(&self.names),
                "{label}: the description should name {}: {description}",
                self.names
            );
        } else if self.refusal {
            assert_eq!(status, self.status, "{label}: {body}");
            let e = assert_envelope(&label, status, body);
            assert!(
                e["extras"].get(&self.names).is_some(),
                "{label}: extras should have {:?}: {body}",
                self.names
            );
        } else {
            assert_names_field(&label, status, body, self.status, &self.names);
        }
        if let Some(code) = self.code {
            assert_eq!(error(body)["category_code"], json!(code), "{label}: {body}");
        }
    }
}

/// Runs each case and asserts that it was refused as expected and that no row was written
/// and the order's escrow did not move. Every case is tried; the failures are reported
/// together, so one bug does not hide the cases after it.
async fn refuse_all(app: &TestApp, order: &str, cases: &[Case]) {
    assert!(!cases.is_empty());
    let mut failures = Vec::new();
    let mut rows_before = rows(app).await;
    let mut escrow_before = app.escrow(order).await;
    for case in cases {
        let label = case.label();
        let (status, body) = case.send(app).await;
        let checked =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| case.check(status, &body)));
        if let Err(panic) = checked {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            failures.push(message);
        }
        let (rows_after, escrow_after) = (rows(app).await, app.escrow(order).await);
        if rows_after != rows_before {
            failures.push(format!(
                "{label}: a refused request wrote rows: {rows_before:?} -> {rows_after:?}"
            ));
        }
        if escrow_after != escrow_before {
            failures.push(format!(
                "{label}: a refused request moved escrow: {escrow_before:?} -> {escrow_after:?}"
            ));
        }
        (rows_before, escrow_before) = (rows_after, escrow_after);
    }
    assert!(
        failures.is_empty(),
        "on {:?}, {} failures in {} cases:\n{}",
        app.backend(),
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

fn long(n: usize) -> String {
    "x".repeat(n)
}

fn many_meta_keys(n: usize) -> Value {
    Value::Object(
        (0..n)
            .map(|i| (format!("k{i}"), json!("v")))
            .collect::<Map<String, Value>>(),
    )
}

/// `body` with the annotation fields set to each bad value, paired with the field named.
fn bad_annotations(base: &Value) -> Vec<(Value, String)> {
    let with = |key: &str, value: Value| {
        let mut b = base.clone();
        b[key] = value;
        b
    };
    vec![
        (
            with("description", json!({"text": "an object"})),
            "description".into(),
        ),
        (with("description", json!(42)), "description".into()),
        (with("description", json!(long(1025))), "description".into()),
        (
            with("description", json!("nul \u{0} inside")),
            "description".into(),
        ),
        (with("meta", json!({"k": 1})), "meta.k".into()),
        (
            with("meta", json!({"k": {"nested": "object"}})),
            "meta.k".into(),
        ),
        (with("meta", json!({"k": null})), "meta.k".into()),
        (with("meta", json!({"k": ["a"]})), "meta.k".into()),
        (with("meta", json!("not a map")), "meta".into()),
        (with("meta", json!({ long(65): "v" })), "meta".into()),
        (with("meta", json!({"k": long(1025)})), "meta.k".into()),
        (with("meta", many_meta_keys(51)), "meta".into()),
        (with("colour", json!("red")), "colour".into()),
    ]
}

/// An order with a succeeded card debit of 10 000, a succeeded card credit of 2 000 (escrow
/// 8 000), and a pending bank debit of 500.
struct World {
    order: String,
    debit: String,
    credit: String,
    pending: String,
}

async fn world(app: &TestApp) -> World {
    let order = app.order().await;
    let debit = app.debit(&order, CARD, 10_000).await;
    let credit = app.credit(&order, CARD, 2_000).await;
    let pending = app.debit(&order, BANK, 500).await;
    assert_eq!(app.escrow(&order).await, (10_000, 8_000));
    World {
        order,
        debit,
        credit,
        pending,
    }
}

async fn orders_refuse_bad_input_naming_the_field_and_write_nothing(app: TestApp) {
    let w = world(&app).await;
    let base = json!({ "merchant": MERCHANT });
    let mut cases = vec![
        Case::post_raw("/orders", r#"{"merchant": "#, "body"),
        Case::post_raw(
            "/orders",
            r#"{"merchant": "/customers/CU1aISiQGTsURlHIHO0Ajnag",}"#,
            "body",
        ),
        Case::post_raw("/orders", "not json at all", "body"),
        Case::post_raw(
            "/orders",
            r#"{"merchant": "/customers/CU1aISiQGTsURlHIHO0Ajnag"} trailing"#,
            "body",
        ),
        Case::post_raw(
            "/orders",
            format!(r#"{{"meta": {}1{}}}"#, "[".repeat(500), "]".repeat(500)),
            "meta",
        ),
        Case::post_raw(
            format!("/orders/{}/debits", w.order),
            format!(r#"{{"meta": {}1{}}}"#, "[".repeat(500), "]".repeat(500)),
            "meta",
        ),
        Case::post("/orders", json!({}), "merchant"),
        Case::post("/orders", json!({"merchant": 5}), "merchant"),
        Case::post(
            "/orders",
            json!({"merchant": "/customers/nope"}),
            "merchant",
        ),
        Case::post(
            "/orders",
            json!({"merchant": "/debits/CU1aISiQGTsURlHIHO0Ajnag/x"}),
            "merchant",
        ),
        Case::post(
            "/orders",
            json!({"merchant": MERCHANT, "amount": 100}),
            "amount",
        ),
        Case::post(
            "/orders",
            json!({"merchant": MERCHANT, "delivery_address": {"country_code": "usa"}}),
            "delivery_address.country_code",
        ),
        Case::post(
            "/orders",
            json!({"merchant": MERCHANT, "delivery_address": {"city": long(256)}}),
            "delivery_address.city",
        ),
        Case::post(
            "/orders",
            json!({"merchant": MERCHANT, "delivery_address": "Main Street"}),
            "delivery_address",
        ),
        Case::post(
            "/customers/CU1aISiQGTsURlHIHO0Ajnag/orders",
            json!({"merchant": MERCHANT}),
            "merchant",
        ),
        Case::post("/customers/nope/orders", json!({}), "merchant"),
    ];
    for (body, field) in bad_annotations(&base) {
        cases.push(Case::post("/orders", body, &field));
    }
    refuse_all(&app, &w.order, &cases).await;
}

async fn debits_refuse_bad_input_naming_the_field_and_write_nothing(app: TestApp) {
    let w = world(&app).await;
    let on_order = format!("/orders/{}/debits", w.order);
    let base = json!({ "source": CARD, "amount": 100 });
    let mut cases = vec![
        Case::post_raw(
            &on_order,
            r#"{"source": "/cards/CC1cEczBXQmQz8GhkV1I9gje", "amount": 1"#,
            "body",
        ),
        Case::post_raw("/debits", "{amount: 100}", "body"),
        Case::post(
            &on_order,
            json!({"source": CARD, "amount": "100"}),
            "amount",
        ),
        Case::post(&on_order, json!({"source": CARD, "amount": 1.5}), "amount"),
        Case::post(&on_order, json!({"source": CARD, "amount": true}), "amount"),
        Case::post_raw(
            &on_order,
            format!(r#"{{"source": "{CARD}", "amount": 9223372036854775808}}"#),
            "amount",
        ),
        Case::post_raw(
            &on_order,
            format!(r#"{{"source": "{CARD}", "amount": 100000000000000000000000}}"#),
            "amount",
        ),
        Case::post_raw(
            &on_order,
            format!(r#"{{"source": "{CARD}", "amount": 1e3}}"#),
            "amount",
        ),
        Case::post(&on_order, json!({"source": CARD, "amount": 0}), "amount")
            .code("invalid-amount"),
        Case::post(&on_order, json!({"source": CARD, "amount": -1}), "amount")
            .code("invalid-amount"),
        Case::post(
            &on_order,
            json!({"source": CARD, "amount": i64::MIN}),
            "amount",
        )
        .code("invalid-amount"),
        Case::post(
            &on_order,
            json!({"source": CARD, "amount": 1_000_000_001}),
            "amount",
        ),
        Case::post(
            &on_order,
            json!({"source": CARD, "amount": i64::MAX}),
            "amount",
        ),
        Case::post(&on_order, json!({"source": CARD}), "amount"),
        Case::post(&on_order, json!({"source": CARD, "amount": null}), "amount"),
        Case::post(&on_order, json!({"amount": 100}), "source"),
        Case::post(&on_order, json!({"source": 7, "amount": 100}), "source"),
        Case::post(
            &on_order,
            json!({"source": "/debits/CC1cEczBXQmQz8GhkV1I9gje", "amount": 100}),
            "source",
        ),
        Case::post(
            &on_order,
            json!({"source": "/cards/XX1cEczBXQmQz8GhkV1I9gje", "amount": 100}),
            "source",
        ),
        Case::post(
            &on_order,
            json!({"source": "CCshort", "amount": 100}),
            "source",
        ),
        Case::post(&on_order, json!({"source": "", "amount": 100}), "source"),
        Case::post(
            &on_order,
            json!({"source": CARD, "amount": 100, "status": "succeeded"}),
            "status",
        ),
        Case::post(
            &on_order,
            json!({"source": CARD, "amount": 100, "appears_on_statement_as": long(19)}),
            "appears_on_statement_as",
        ),
        Case::post(
            &on_order,
            json!({"source": CARD, "amount": 100, "appears_on_statement_as": "no!"}),
            "appears_on_statement_as",
        ),
        Case::post(
            &on_order,
            json!({"source": CARD, "amount": 100, "appears_on_statement_as": ""}),
            "appears_on_statement_as",
        ),
        Case::post(
            "/debits",
            json!({"source": CARD, "amount": 100, "order": unknown("OR")}),
            "order",
        ),
        Case::post(
            "/debits",
            json!({"source": CARD, "amount": 100, "order": format!("/orders/{}", unknown("OR"))}),
            "order",
        ),
        Case::post(
            "/debits",
            json!({"source": CARD, "amount": 100, "order": format!("/debits/{}", w.order)}),
            "order",
        ),
        Case::post(
            "/debits",
            json!({"source": CARD, "amount": 100, "order": w.debit}),
            "order",
        ),
        Case::post(
            "/debits",
            json!({"source": CARD, "amount": 100, "order": 5}),
            "order",
        ),
    ];
    for (body, field) in bad_annotations(&base) {
        cases.push(Case::post(&on_order, body, &field));
    }
    refuse_all(&app, &w.order, &cases).await;
}

async fn credits_refuse_bad_input_naming_the_field_and_write_nothing(app: TestApp) {
    let w = world(&app).await;
    let on_order = format!("/orders/{}/credits", w.order);
    let base = json!({ "destination": BANK, "amount": 100 });
    let mut cases = vec![
        Case::post_raw(&on_order, "{", "body"),
        Case::post(
            &on_order,
            json!({"destination": BANK, "amount": "100"}),
            "amount",
        ),
        Case::post(
            &on_order,
            json!({"destination": BANK, "amount": 99.9}),
            "amount",
        ),
        Case::post_raw(
            &on_order,
            format!(r#"{{"destination": "{BANK}", "amount": 18446744073709551616}}"#),
            "amount",
        ),
        Case::post(
            &on_order,
            json!({"destination": BANK, "amount": 0}),
            "amount",
        )
        .code("invalid-amount"),
        Case::post(
            &on_order,
            json!({"destination": BANK, "amount": -100}),
            "amount",
        )
        .code("invalid-amount"),
        Case::post(
            &on_order,
            json!({"destination": BANK, "amount": 1_000_000_001}),
            "amount",
        ),
        Case::post(&on_order, json!({"destination": BANK}), "amount"),
        Case::post(&on_order, json!({"amount": 100}), "destination"),
        Case::post(
            &on_order,
            json!({"destination": "/debits/BA3NAMVxvcWacA3IcfMprtiU", "amount": 100}),
            "destination",
        ),
        Case::post(
            &on_order,
            json!({"destination": {"href": BANK}, "amount": 100}),
            "destination",
        ),
        Case::post(
            &on_order,
            json!({"destination": BANK, "amount": 100, "appears_on_statement_as": long(19)}),
            "appears_on_statement_as",
        ),
        // More than escrow holds (8 000): refused, and nothing taken.
        Case::post(
            &on_order,
            json!({"destination": BANK, "amount": 8_001}),
            "amount",
        )
        .status(StatusCode::CONFLICT)
        .refusal("insufficient-funds"),
        Case::post(
            "/credits",
            json!({"destination": BANK, "amount": 100}),
            "order",
        ),
        Case::post(
            "/credits",
            json!({"destination": BANK, "amount": 100, "order": unknown("OR")}),
            "order",
        ),
        Case::post(
            "/credits",
            json!({"destination": BANK, "amount": 100, "order": format!("/credits/{}", w.order)}),
            "order",
        ),
    ];
    for (body, field) in bad_annotations(&base) {
        cases.push(Case::post(&on_order, body, &field));
    }
    refuse_all(&app, &w.order, &cases).await;
}

async fn refunds_refuse_bad_input_naming_the_field_and_write_nothing(app: TestApp) {
    let w = world(&app).await;
    let of_debit = format!("/debits/{}/refunds", w.debit);
    let base = json!({ "amount": 100 });
    let mut cases = vec![
        Case::post_raw(&of_debit, r#"{"amount": }"#, "body"),
        Case::post(&of_debit, json!({"amount": "100"}), "amount"),
        Case::post(&of_debit, json!({"amount": 2.5}), "amount"),
        Case::post_raw(&of_debit, r#"{"amount": 9223372036854775808}"#, "amount"),
        Case::post(&of_debit, json!({"amount": 0}), "amount").code("invalid-amount"),
        Case::post(&of_debit, json!({"amount": -5}), "amount").code("invalid-amount"),
        Case::post(&of_debit, json!({"amount": 1_000_000_001}), "amount").code("invalid-amount"),
        // More than the debit has left (10 000).
        Case::post(&of_debit, json!({"amount": 10_001}), "amount").refusal("invalid-amount"),
        Case::post(
            &of_debit,
            json!({"amount": 100, "credit": w.credit}),
            "credit",
        ),
        // Only a succeeded debit can be refunded.
        Case::post(format!("/debits/{}/refunds", w.pending), json!({}), "debit")
            .refusal("refund-invalid-debit-state"),
        Case::post("/refunds", json!({"amount": 100}), "debit"),
        Case::post("/refunds", json!({"debit": unknown("WD")}), "debit"),
        Case::post(
            "/refunds",
            json!({"debit": format!("/debits/{}", unknown("WD"))}),
            "debit",
        ),
        Case::post(
            "/refunds",
            json!({"debit": format!("/credits/{}", w.debit)}),
            "debit",
        ),
        Case::post("/refunds", json!({"debit": w.credit}), "debit"),
        Case::post("/refunds", json!({"debit": "WD!!"}), "debit"),
        Case::post("/refunds", json!({"debit": 5}), "debit"),
        Case::post("/refunds", json!({"debit": w.debit, "amount": 0}), "amount")
            .code("invalid-amount"),
    ];
    for (body, field) in bad_annotations(&base) {
        cases.push(Case::post(&of_debit, body, &field));
    }
    refuse_all(&app, &w.order, &cases).await;
    let (_, body) = app.get(&of_debit).await;
    assert_eq!(
        body["refunds"],
        json!([]),
        "no refund may exist after only refused ones"
    );
}

async fn reversals_refuse_bad_input_naming_the_field_and_write_nothing(app: TestApp) {
    let w = world(&app).await;
    let of_credit = format!("/credits/{}/reversals", w.credit);
    let base = json!({ "amount": 100 });
    let mut cases = vec![
        Case::post_raw(&of_credit, "{{}}", "body"),
        Case::post(&of_credit, json!({"amount": "1"}), "amount"),
        Case::post(&of_credit, json!({"amount": 0}), "amount").code("invalid-reversal-amount"),
        Case::post(&of_credit, json!({"amount": -1}), "amount").code("invalid-reversal-amount"),
        Case::post(&of_credit, json!({"amount": 1_000_000_001}), "amount")
            .code("invalid-reversal-amount"),
        // More than the credit has left (2 000).
        Case::post(&of_credit, json!({"amount": 2_001}), "amount")
            .refusal("invalid-reversal-amount"),
        Case::post(
            &of_credit,
            json!({"amount": 100, "debit": w.debit}),
            "debit",
        ),
        Case::post("/reversals", json!({"amount": 100}), "credit"),
        Case::post("/reversals", json!({"credit": unknown("CR")}), "credit"),
        Case::post("/reversals", json!({"credit": w.debit}), "credit"),
        Case::post(
            "/reversals",
            json!({"credit": format!("/debits/{}", w.credit)}),
            "credit",
        ),
    ];
    for (body, field) in bad_annotations(&base) {
        cases.push(Case::post(&of_credit, body, &field));
    }
    refuse_all(&app, &w.order, &cases).await;
    let (_, body) = app.get(&of_credit).await;
    assert_eq!(
        body["reversals"],
        json!([]),
        "no reversal may exist after only refused ones"
    );
}

async fn creates_under_unknown_parents_answer_404_and_write_nothing(app: TestApp) {
    let w = world(&app).await;
    let (order, debit, credit) = (unknown("OR"), unknown("WD"), unknown("CR"));
    let not_found = |path: String, body: Value, id: &str| {
        Case::new(
            Method::POST,
            path,
            body.to_string(),
            StatusCode::NOT_FOUND,
            id,
        )
    };
    let cases = vec![
        not_found(
            format!("/orders/{order}/debits"),
            json!({"source": CARD, "amount": 100}),
            &order,
        ),
        not_found(
            format!("/orders/{order}/credits"),
            json!({"destination": BANK, "amount": 100}),
            &order,
        ),
        not_found(
            format!("/debits/{debit}/refunds"),
            json!({"amount": 100}),
            &debit,
        ),
        not_found(
            format!("/credits/{credit}/reversals"),
            json!({"amount": 100}),
            &credit,
        ),
        // Ids of the wrong kind are unknown ids too.
        not_found(
            format!("/orders/{}/debits", w.debit),
            json!({"source": CARD, "amount": 100}),
            &w.debit,
        ),
        not_found(
            format!("/debits/{}/refunds", w.credit),
            json!({"amount": 100}),
            &w.credit,
        ),
        not_found(
            format!("/credits/{}/reversals", w.debit),
            json!({"amount": 100}),
            &w.debit,
        ),
        not_found("/debits/not-an-id/refunds".into(), json!({}), "not-an-id"),
    ];
    refuse_all(&app, &w.order, &cases).await;
}

async fn updates_refuse_bad_input_and_change_nothing(app: TestApp) {
    let w = world(&app).await;
    let debit = format!("/debits/{}", w.debit);
    let order = format!("/orders/{}", w.order);
    let (status, _) = app
        .put(&debit, json!({"description": "before", "meta": {"k": "v"}}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let mut cases = vec![
        Case::new(
            Method::PUT,
            &debit,
            r#"{"description": "#,
            StatusCode::BAD_REQUEST,
            "body",
        ),
        Case::put(&debit, json!({"amount": 1}), "amount"),
        Case::put(&debit, json!({"status": "failed"}), "status"),
        Case::put(&debit, json!({"source": BANK}), "source"),
        Case::put(&debit, json!({"version": 0}), "version"),
        Case::put(&debit, json!({"version": "1"}), "version"),
        Case::put(&debit, json!({"version": 1.5}), "version"),
        Case::put(
            &debit,
            json!({"delivery_address": {"city": "Oakland"}}),
            "delivery_address",
        ),
        Case::put(&debit, json!({"description": "x"}), "If-Match")
            .header("if-match", "not-a-version"),
        Case::put(&order, json!({"amount": 5}), "amount"),
        Case::put(&order, json!({"amount_escrowed": 5}), "amount_escrowed"),
        Case::put(
            &order,
            json!({"delivery_address": {"country_code": "usa"}}),
            "delivery_address.country_code",
        ),
        Case::put(
            &order,
            json!({"delivery_address": {"zip": "94110"}}),
            "delivery_address.zip",
        ),
    ];
    for path in [&debit, &order, &format!("/credits/{}", w.credit)] {
        for (body, field) in bad_annotations(&json!({})) {
            cases.push(Case::put(path.as_str(), body, &field));
        }
    }
    let debit_before = app.get(&debit).await;
    let order_before = app.get(&order).await;
    refuse_all(&app, &w.order, &cases).await;
    assert_eq!(
        app.get(&debit).await,
        debit_before,
        "a refused PUT changed the debit"
    );
    assert_eq!(
        app.get(&order).await,
        order_before,
        "a refused PUT changed the order"
    );
    assert_eq!(debit_before.1["debits"][0]["description"], "before");
}

async fn updates_of_unknown_ids_answer_404(app: TestApp) {
    let w = world(&app).await;
    let body = json!({"description": "new"});
    let mut cases = Vec::new();
    for (collection, prefix) in [
        ("orders", "OR"),
        ("debits", "WD"),
        ("refunds", "RF"),
        ("credits", "CR"),
        ("reversals", "RV"),
    ] {
        let id = unknown(prefix);
        cases.push(Case::new(
            Method::PUT,
            format!("/{collection}/{id}"),
            body.to_string(),
            StatusCode::NOT_FOUND,
            id,
        ));
    }
    // A debit's id under /refunds and an order's under /debits are unknown there.
    cases.push(Case::new(
        Method::PUT,
        format!("/refunds/{}", w.debit),
        body.to_string(),
        StatusCode::NOT_FOUND,
        &w.debit,
    ));
    cases.push(Case::new(
        Method::PUT,
        format!("/debits/{}", w.order),
        body.to_string(),
        StatusCode::NOT_FOUND,
        &w.order,
    ));
    refuse_all(&app, &w.order, &cases).await;
}

async fn the_processor_endpoint_refuses_bad_outcomes_and_changes_nothing(app: TestApp) {
    let w = world(&app).await;
    let path = format!("/processor/transactions/{}", w.pending);
    let op = |body: Value, field: &str| Case::put(&path, body, field).by_operator();
    let cases = vec![
        Case::new(
            Method::PUT,
            &path,
            r#"{"status": "succeeded""#,
            StatusCode::BAD_REQUEST,
            "body",
        )
        .by_operator(),
        op(json!({"status": "pending"}), "status"),
        op(json!({"status": "refunded"}), "status"),
        op(json!({"status": "SUCCEEDED"}), "status"),
        op(json!({}), "status"),
        op(json!({"status": null}), "status"),
        op(json!({"status": 1}), "status"),
        op(json!({"status": "succeeded", "amount": 1}), "amount"),
        op(
            json!({"status": "succeeded", "failure_reason": "why"}),
            "failure_reason",
        ),
        op(
            json!({"status": "succeeded", "failure_reason_code": "x"}),
            "failure_reason_code",
        ),
        op(
            json!({"status": "failed", "failure_reason": 5}),
            "failure_reason",
        ),
        op(
            json!({"status": "failed", "failure_reason": long(1025)}),
            "failure_reason",
        ),
        op(
            json!({"status": "failed", "failure_reason_code": {"code": "x"}}),
            "failure_reason_code",
        ),
    ];
    let before = app.get(&format!("/debits/{}", w.pending)).await;
    refuse_all(&app, &w.order, &cases).await;
    let after = app.get(&format!("/debits/{}", w.pending)).await;
    assert_eq!(after, before, "a refused outcome changed the debit");
    assert_eq!(after.1["debits"][0]["status"], "pending");
}

async fn the_processor_endpoint_answers_404_for_unknown_transactions(app: TestApp) {
    let w = world(&app).await;
    let body = json!({"status": "succeeded"});
    let mut cases = Vec::new();
    for id in [
        unknown("WD"),
        unknown("RF"),
        unknown("CR"),
        unknown("RV"),
        w.order.clone(),
        "garbage".to_owned(),
    ] {
        cases.push(
            Case::put(format!("/processor/transactions/{id}"), body.clone(), &id)
                .status(StatusCode::NOT_FOUND)
                .by_operator(),
        );
    }
    refuse_all(&app, &w.order, &cases).await;
}

async fn lists_refuse_bad_paging_parameters_naming_them(app: TestApp) {
    let w = world(&app).await;
    let get = |path: String, field: &str| {
        Case::new(Method::GET, path, "", StatusCode::BAD_REQUEST, field)
    };
    let mut cases = Vec::new();
    for list in [
        "/orders".to_owned(),
        "/debits".to_owned(),
        "/refunds".to_owned(),
        "/credits".to_owned(),
        "/reversals".to_owned(),
        "/events".to_owned(),
        format!("/orders/{}/debits", w.order),
        format!("/orders/{}/events", w.order),
        format!("/debits/{}/refunds", w.debit),
        format!("/debits/{}/events", w.debit),
    ] {
        for limit in ["0", "-1", "101", "abc", "1.5", "", "99999999999999999999"] {
            cases.push(get(format!("{list}?limit={limit}"), "limit"));
        }
        cases.push(get(format!("{list}?after="), "after"));
        cases.push(get(format!("{list}?after=WD%21%21"), "after"));
        cases.push(get(format!("{list}?before={}", long(65)), "before"));
        cases.push(get(format!("{list}?after=WD1&before=WD2"), "before"));
        cases.push(get(format!("{list}?marketplace=MP%20x"), "marketplace"));
    }
    refuse_all(&app, &w.order, &cases).await;
    // An unknown parameter is refused too, and the description names it.
    let (status, body) = app.get("/debits?colour=red").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let e = assert_envelope("GET /debits?colour=red", status, &body);
    assert!(
        e["description"]
            .as_str()
            .unwrap_or_default()
            .contains("colour"),
        "{body}"
    );
    // And a good limit still works: the refusals above are not refusing everything.
    let (status, body) = app.get("/debits?limit=100").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["debits"].as_array().map(Vec::len), Some(2), "{body}");
}

async fn reads_of_unknown_ids_answer_404(app: TestApp) {
    let w = world(&app).await;
    let get = |path: String, id: &str| Case::new(Method::GET, path, "", StatusCode::NOT_FOUND, id);
    let mut cases = Vec::new();
    for (collection, prefix) in [
        ("orders", "OR"),
        ("debits", "WD"),
        ("refunds", "RF"),
        ("credits", "CR"),
        ("reversals", "RV"),
    ] {
        let id = unknown(prefix);
        cases.push(get(format!("/{collection}/{id}"), &id));
        cases.push(get(format!("/{collection}/{id}/events"), &id));
    }
    let (order, debit, credit, event) =
        (unknown("OR"), unknown("WD"), unknown("CR"), unknown("EV"));
    cases.push(get(format!("/events/{event}"), &event));
    for kind in ["debits", "refunds", "credits", "reversals"] {
        cases.push(get(format!("/orders/{order}/{kind}"), &order));
    }
    cases.push(get(format!("/debits/{debit}/refunds"), &debit));
    cases.push(get(format!("/credits/{credit}/reversals"), &credit));
    // Ids of another kind.
    cases.push(get(format!("/refunds/{}", w.debit), &w.debit));
    cases.push(get(format!("/credits/{}", w.debit), &w.debit));
    cases.push(get(format!("/orders/{}", w.debit), &w.debit));
    cases.push(get(format!("/events/{}", w.debit), &w.debit));
    cases.push(get(format!("/credits/{}/reversals", w.debit), &w.debit));
    refuse_all(&app, &w.order, &cases).await;
}

/// Ids in the path go to the database as they come: NUL bytes (which PostgreSQL text
/// cannot hold), quotes, slashes and over-long ids must answer 404 in the envelope.
async fn odd_characters_in_path_ids_answer_404_never_a_5xx(app: TestApp) {
    let w = world(&app).await;
    let long_id = format!("WD{}", long(2_000));
    let mut cases = Vec::new();
    for id in [
        "WD%00",
        "WD01JD3XKQ%00ABCDEFGHIJKLMNOP",
        long_id.as_str(),
        "..%2F..%2Fetc",
        "WD'%20OR%20'1'='1",
    ] {
        let named = id
            .replace("%00", "\u{0}")
            .replace("%2F", "/")
            .replace("%20", " ");
        let named = named.chars().take(40).collect::<String>();
        let description = json!({"description": "x"}).to_string();
        let refund = json!({"amount": 1}).to_string();
        for (method, path, body) in [
            (Method::GET, format!("/debits/{id}"), String::new()),
            (Method::GET, format!("/orders/{id}"), String::new()),
            (Method::GET, format!("/events/{id}"), String::new()),
            (Method::GET, format!("/orders/{id}/debits"), String::new()),
            (Method::GET, format!("/debits/{id}/events"), String::new()),
            (Method::PUT, format!("/debits/{id}"), description.clone()),
            (Method::PUT, format!("/orders/{id}"), description.clone()),
            (
                Method::POST,
                format!("/debits/{id}/refunds"),
                refund.clone(),
            ),
            (
                Method::POST,
                format!("/orders/{id}/debits"),
                json!({"source": CARD, "amount": 1}).to_string(),
            ),
        ] {
            cases.push(Case::new(
                method,
                path,
                body,
                StatusCode::NOT_FOUND,
                named.clone(),
            ));
        }
        cases.push(
            Case::put(
                format!("/processor/transactions/{id}"),
                json!({"status": "succeeded"}),
                &named,
            )
            .status(StatusCode::NOT_FOUND)
            .by_operator(),
        );
    }
    refuse_all(&app, &w.order, &cases).await;
}

/// A path id that is not UTF-8 once percent-decoded cannot name anything: it must still be
/// answered in the envelope (404, or 400 naming the id), not with axum's plain-text rejection.
async fn non_utf8_path_ids_answer_in_the_envelope(app: TestApp) {
    let w = world(&app).await;
    let rows_before = rows(&app).await;
    let mut failures = Vec::new();
    for (method, path) in [
        (Method::GET, "/debits/%FF%FE"),
        (Method::GET, "/orders/WD%C3%28"),
        (Method::GET, "/events/%FF"),
        (Method::GET, "/orders/%FF/debits"),
        (Method::GET, "/debits/%FF/events"),
        (Method::PUT, "/debits/%FF"),
        (Method::PUT, "/orders/%FF"),
        (Method::POST, "/debits/%FF/refunds"),
        (Method::POST, "/orders/%FF/debits"),
        (Method::PUT, "/processor/transactions/%FF"),
    ] {
        let label = format!("{method} {path}");
        let request = if path.starts_with("/processor") {
            app.operator(method, path)
        } else {
            app.request(method, path)
        };
        let (status, body) = send_any(request.json(&json!({"status": "succeeded"}))).await;
        let checked = std::panic::catch_unwind(|| {
            assert!(
                status == StatusCode::NOT_FOUND || status == StatusCode::BAD_REQUEST,
                "{label}: answered {status}: {body}"
            );
            assert_envelope(&label, status, &body);
        });
        if checked.is_err() {
            failures.push(format!("{label}: {status} {body}"));
        }
    }
    assert!(
        failures.is_empty(),
        "not in the envelope:\n{}",
        failures.join("\n")
    );
    assert_eq!(rows(&app).await, rows_before);
    assert_eq!(app.escrow(&w.order).await, (10_000, 8_000));
}

/// Every request body is a JSON object. serde's derived structs also accept a JSON array
/// as their fields in order; that must not become a way to create things, and a bare
/// number or string must be refused as `body`, not as a field named after its value.
async fn request_bodies_must_be_json_objects(app: TestApp) {
    let w = world(&app).await;
    let debit = format!("/debits/{}", w.debit);
    let mut cases = Vec::new();
    for (path, positional) in [
        ("/orders".to_owned(), json!([MERCHANT, null, null, null])),
        (
            format!("/orders/{}/debits", w.order),
            json!([100, CARD, null, null, null, null]),
        ),
        (
            "/debits".to_owned(),
            json!([100, CARD, null, null, null, null]),
        ),
        (
            format!("/orders/{}/credits", w.order),
            json!([100, BANK, null, null, null, null]),
        ),
        (
            format!("/debits/{}/refunds", w.debit),
            json!([100, null, null, null, null]),
        ),
        (
            format!("/credits/{}/reversals", w.credit),
            json!([100, null, null, null, null]),
        ),
    ] {
        for body in [
            positional,
            json!([]),
            json!(100),
            json!("a string"),
            json!(true),
            json!(null),
        ] {
            cases.push(Case::post(&path, body, "body"));
        }
    }
    for body in [
        json!(["new description", null, null, null]),
        json!(7),
        json!("text"),
    ] {
        cases.push(Case::put(&debit, body.clone(), "body"));
        cases.push(Case::put(format!("/orders/{}", w.order), body, "body"));
    }
    for body in [
        json!(["succeeded", null, null]),
        json!(["failed", "why", "code"]),
        json!(1),
    ] {
        cases.push(
            Case::put(
                format!("/processor/transactions/{}", w.pending),
                body,
                "body",
            )
            .by_operator(),
        );
    }
    let before = (
        app.get(&debit).await,
        app.get(&format!("/debits/{}", w.pending)).await,
    );
    refuse_all(&app, &w.order, &cases).await;
    let after = (
        app.get(&debit).await,
        app.get(&format!("/debits/{}", w.pending)).await,
    );
    assert_eq!(after, before);
}

/// A key given twice is ambiguous (parsers disagree on which one wins), so it is refused
/// and named, as `POST /orders` already does, rather than silently taking the last one.
async fn duplicate_keys_in_a_body_are_refused(app: TestApp) {
    let w = world(&app).await;
    let cases = vec![
        Case::post_raw(
            "/orders",
            format!(r#"{{"merchant": "{MERCHANT}", "merchant": "{MERCHANT}"}}"#),
            "merchant",
        ),
        Case::post_raw(
            format!("/orders/{}/debits", w.order),
            format!(r#"{{"source": "{CARD}", "amount": 100, "amount": 100000}}"#),
            "amount",
        ),
        Case::post_raw(
            format!("/orders/{}/credits", w.order),
            format!(r#"{{"destination": "{BANK}", "amount": 100, "amount": 5000}}"#),
            "amount",
        ),
        Case::post_raw(
            format!("/debits/{}/refunds", w.debit),
            r#"{"amount": 1, "amount": 9000}"#,
            "amount",
        ),
        Case::post_raw(
            format!("/credits/{}/reversals", w.credit),
            r#"{"amount": 1, "amount": 2000}"#,
            "amount",
        ),
        Case::new(
            Method::PUT,
            format!("/debits/{}", w.debit),
            r#"{"description": "a", "description": "b"}"#,
            StatusCode::BAD_REQUEST,
            "description",
        ),
        Case::new(
            Method::PUT,
            format!("/processor/transactions/{}", w.pending),
            r#"{"status": "succeeded", "status": "failed"}"#,
            StatusCode::BAD_REQUEST,
            "status",
        )
        .by_operator(),
    ];
    refuse_all(&app, &w.order, &cases).await;
}

/// Headers that travel with a create or update are input too.
async fn bad_idempotency_keys_and_versions_are_refused_naming_the_header(app: TestApp) {
    let w = world(&app).await;
    let debit = json!({"source": CARD, "amount": 100});
    let on_order = format!("/orders/{}/debits", w.order);
    let cases = vec![
        Case::post(&on_order, debit.clone(), "Idempotency-Key").header("idempotency-key", ""),
        Case::post(&on_order, debit.clone(), "Idempotency-Key")
            .header("idempotency-key", long(256)),
        Case::post("/orders", json!({"merchant": MERCHANT}), "Idempotency-Key")
            .header("idempotency-key", long(256)),
        Case::post(
            format!("/debits/{}/refunds", w.debit),
            json!({"amount": 1}),
            "Idempotency-Key",
        )
        .header("idempotency-key", long(300)),
        Case::put(
            format!("/debits/{}", w.debit),
            json!({"description": "x"}),
            "If-Match",
        )
        .header("if-match", "\"three\""),
        Case::put(
            format!("/orders/{}", w.order),
            json!({"description": "x"}),
            "If-Match",
        )
        .header("if-match", "\"0\""),
    ];
    refuse_all(&app, &w.order, &cases).await;
}

async fn a_body_over_the_size_limit_is_refused_in_the_envelope(app: TestApp) {
    let w = world(&app).await;
    let rows_before = rows(&app).await;
    let big = json!({"source": CARD, "amount": 100, "description": long(70 * 1024)});
    let (status, body) = send_any(
        app.request(Method::POST, &format!("/orders/{}/debits", w.order))
            .json(&big),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_envelope("an oversized body", status, &body);
    assert!(body["errors"][0]["extras"].get("body").is_some(), "{body}");
    assert_eq!(rows(&app).await, rows_before);
    assert_eq!(app.escrow(&w.order).await, (10_000, 8_000));
}

/// The limits themselves are accepted: the refusals above are at the limits, not below.
async fn values_at_the_limits_are_accepted(app: TestApp) {
    let order = app.order().await;
    let meta: Map<String, Value> = (0..50)
        .map(|i| (format!("{i:0>64}"), json!(long(1000))))
        .collect();
    let (status, body) = app
        .post(
            &format!("/orders/{order}/debits"),
            json!({
                "source": CARD,
                "amount": 1_000_000_000,
                "description": "é".repeat(1024),
                "meta": meta,
                "appears_on_statement_as": "ABC def.-123456789",
            }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let debit = &body["debits"][0];
    assert_eq!(debit["amount"], 1_000_000_000);
    assert_eq!(debit["meta"].as_object().map(Map::len), Some(50));
    let (status, body) = app
        .post(
            &format!("/orders/{order}/credits"),
            json!({"destination": BANK, "amount": 1}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

async fn unsupported_methods_and_routes_answer_in_the_envelope(app: TestApp) {
    let w = world(&app).await;
    let rows_before = rows(&app).await;
    for (method, path, expected) in [
        (
            Method::DELETE,
            format!("/debits/{}", w.debit),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            Method::PATCH,
            format!("/orders/{}", w.order),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            Method::POST,
            format!("/orders/{}/refunds", w.order),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (Method::GET, "/debitz".to_owned(), StatusCode::NOT_FOUND),
    ] {
        let label = format!("{method} {path}");
        let (status, body) = send_any(app.request(method, &path).json(&json!({}))).await;
        assert_eq!(status, expected, "{label}: {body}");
        assert_envelope(&label, status, &body);
    }
    assert_eq!(rows(&app).await, rows_before);
}

async fn marketplace_creates_refuse_bad_names(app: TestApp) {
    let before = marketplace_count(&app).await;
    for (body, field) in [
        (r#"{"name": "#.to_owned(), "body"),
        (json!({}).to_string(), "name"),
        (json!({"name": ""}).to_string(), "name"),
        (json!({"name": "   "}).to_string(), "name"),
        (json!({"name": 5}).to_string(), "name"),
        (json!({"name": long(256)}).to_string(), "name"),
        (
            json!({"name": "ok", "secret": "mine"}).to_string(),
            "secret",
        ),
    ] {
        let label = format!("POST /marketplaces {body}");
        let request = app
            .operator(Method::POST, "/marketplaces")
            .header("content-type", "application/json")
            .body(body);
        let (status, response) = send_any(request).await;
        assert_names_field(&label, status, &response, StatusCode::BAD_REQUEST, field);
        assert_eq!(
            marketplace_count(&app).await,
            before,
            "{label}: a marketplace was created"
        );
    }
}

on_both_backends!(
    orders_refuse_bad_input_naming_the_field_and_write_nothing,
    debits_refuse_bad_input_naming_the_field_and_write_nothing,
    credits_refuse_bad_input_naming_the_field_and_write_nothing,
    refunds_refuse_bad_input_naming_the_field_and_write_nothing,
    reversals_refuse_bad_input_naming_the_field_and_write_nothing,
    creates_under_unknown_parents_answer_404_and_write_nothing,
    updates_refuse_bad_input_and_change_nothing,
    updates_of_unknown_ids_answer_404,
    the_processor_endpoint_refuses_bad_outcomes_and_changes_nothing,
    the_processor_endpoint_answers_404_for_unknown_transactions,
    lists_refuse_bad_paging_parameters_naming_them,
    reads_of_unknown_ids_answer_404,
    odd_characters_in_path_ids_answer_404_never_a_5xx,
    non_utf8_path_ids_answer_in_the_envelope,
    request_bodies_must_be_json_objects,
    a_body_over_the_size_limit_is_refused_in_the_envelope,
    values_at_the_limits_are_accepted,
    unsupported_methods_and_routes_answer_in_the_envelope,
    duplicate_keys_in_a_body_are_refused,
    bad_idempotency_keys_and_versions_are_refused_naming_the_header,
    marketplace_creates_refuse_bad_names,
);
