//! Every response the API sends has the shape Balanced 1.1 published: each envelope
//! validates against its collection schema and each resource in it against its model
//! schema, from the Balanced API 1.1 JSON schemas (draft-04) vendored in
//! `tests/spec/balanced/` (its README says where they come from and what is patched).
//!
//! Covered, for orders, debits, refunds, credits, reversals and events: the create, show,
//! list and PUT responses (where the resource has them), transactions pending, succeeded
//! and failed, the operator's outcome reports, each event's `entity` (itself an envelope),
//! and the errors whose codes Balanced defined. Our own error codes (401
//! `authentication-required`, 403, 422 `idempotency-key-reused`, 409 `version-conflict`
//! and `illegal-status-transition`, 500) lie outside Balanced's enums and are not checked
//! here. One test proves the check rejects what breaks a schema, so it cannot pass by
//! accepting everything.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::LazyLock;

use jsonschema::{Draft, Registry, Validator};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::*;

// ---------------------------------------------------------------------------------------
// The schemas
// ---------------------------------------------------------------------------------------

/// Where the schemas are registered: collections at the root and models under `_models/`,
/// as in Balanced's `fixtures/`, so a collection's `_models/debit.json` and a model's
/// `status.json` resolve as published.
const BASE: &str = "https://balanced.test/";

/// The collections this API serves, with the model of their items.
const COLLECTIONS: [(&str, &str); 6] = [
    ("orders", "order"),
    ("debits", "debit"),
    ("refunds", "refund"),
    ("credits", "credit"),
    ("reversals", "reversal"),
    ("events", "event"),
];

/// The collections an event's `entity` may carry.
const ENTITY_COLLECTIONS: [&str; 5] = ["orders", "debits", "refunds", "credits", "reversals"];

fn spec_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/spec/balanced")
}

/// One validator per vendored schema, by its path under `tests/spec/balanced/`
/// (`models/debit.json`, `collections/debits.json`, ...).
static SCHEMAS: LazyLock<BTreeMap<String, Validator>> = LazyLock::new(load_schemas);

fn load_schemas() -> BTreeMap<String, Validator> {
    // (name, registered URI, patched schema)
    let mut documents: Vec<(String, String, Value)> = Vec::new();
    for (dir, prefix) in [("models", "_models/"), ("collections", "")] {
        let path = spec_dir().join(dir);
        let mut files: Vec<String> = std::fs::read_dir(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .map(|entry| {
                entry
                    .expect("a directory entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .filter(|file| file.ends_with(".json"))
            .collect();
        files.sort();
        for file in files {
            let name = format!("{dir}/{file}");
            let text =
                std::fs::read_to_string(path.join(&file)).unwrap_or_else(|e| panic!("{name}: {e}"));
            let mut schema: Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            patch_known_defects(&name, &mut schema);
            if let Err(e) = jsonschema::draft4::meta::validate(&schema) {
                panic!(
                    "{name} is not a valid draft-04 schema even after patching: {e} at {}",
                    e.instance_path()
                );
            }
            documents.push((name, format!("{BASE}{prefix}{file}"), schema));
        }
    }
    let registry = Registry::new()
        .draft(Draft::Draft4)
        .extend(
            documents
                .iter()
                .map(|(_, uri, schema)| (uri.as_str(), schema)),
        )
        .expect("schema URIs are valid")
        .prepare()
        .expect("the vendored schemas form one registry");
    documents
        .iter()
        .map(|(name, uri, _)| {
            let validator = jsonschema::options()
                .with_draft(Draft::Draft4)
                .with_registry(&registry)
                .should_validate_formats(true)
                .with_format("uri", is_uri_reference)
                .build(&json!({ "$ref": uri }))
                .unwrap_or_else(|e| panic!("{name} does not compile: {e}"));
            (name.clone(), validator)
        })
        .collect()
}

/// Fixes, in memory, the defects of the published collection schemas that stop them
/// compiling or make them say what their authors did not mean, each the way its author
/// meant it (see `tests/spec/balanced/README.md`). Every fix first checks that the defect
/// is there, so a changed vendored copy fails here instead of being patched blindly.
fn patch_known_defects(name: &str, schema: &mut Value) {
    const LINKS: &str = "/properties/links/properties";
    match name {
        "collections/debits.json" => {
            replace(
                schema,
                &format!("{LINKS}/debits.dispute/type"),
                json!("stirng"),
                json!("string"),
            );
            // `require` is no keyword: as published, nothing requires the `debits` array.
            let fields = schema.as_object_mut().expect("an object schema");
            let required = fields
                .remove("require")
                .expect("debits.json has the `require` typo");
            assert!(
                !fields.contains_key("required"),
                "debits.json already has `required`"
            );
            fields.insert("required".into(), required);
        }
        "collections/refunds.json" => {
            replace(
                schema,
                &format!("{LINKS}/refunds.dispute/type"),
                json!("stirng"),
                json!("string"),
            );
        }
        "collections/reversals.json" => {
            // Draft-03 style booleans; each of these links is already in `links.required`.
            let listed = schema
                .pointer("/properties/links/required")
                .cloned()
                .expect("links.required");
            for link in ["reversals.credit", "reversals.order", "reversals.events"] {
                let property = schema
                    .pointer_mut(&format!("{LINKS}/{link}"))
                    .and_then(Value::as_object_mut)
                    .unwrap_or_else(|| panic!("reversals.json has no link {link}"));
                assert_eq!(
                    property.remove("required"),
                    Some(json!(true)),
                    "reversals.json {link}"
                );
                assert!(
                    listed.as_array().is_some_and(|l| l.contains(&json!(link))),
                    "{link} not in links.required"
                );
            }
        }
        _ => {}
    }
    if name.starts_with("collections/") {
        escape_template_braces(schema);
    }
}

fn replace(schema: &mut Value, pointer: &str, published: Value, meant: Value) {
    let slot = schema
        .pointer_mut(pointer)
        .unwrap_or_else(|| panic!("no {pointer}"));
    assert_eq!(
        *slot, published,
        "the published value at {pointer} changed: re-check the patch"
    );
    *slot = meant;
}

/// A collection's link `pattern` is the link's URI template (`/debits/{debits.id}/refunds`):
/// the braces are literal characters, as an ECMAScript (Annex B) engine reads them, but the
/// regex engine here refuses them as broken quantifiers. Escaping them keeps the meaning.
fn escape_template_braces(schema: &mut Value) {
    let Some(links) = schema
        .pointer_mut("/properties/links/properties")
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    for link in links.values_mut() {
        if let Some(Value::String(pattern)) = link.get_mut("pattern") {
            *pattern = pattern.replace('{', r"\{").replace('}', r"\}");
        }
    }
}

/// `format: "uri"` as Balanced used it: its responses carry relative hrefs (`/debits/WD...`)
/// and link templates (`/debits/{debits.id}/refunds`), which a strict draft-04 `uri`
/// (absolute only) refuses. So: an RFC 3986 URI reference once each `{name}` template
/// expression is expanded. Anything else (spaces, stray braces, ...) still fails.
fn is_uri_reference(text: &str) -> bool {
    static URI_REFERENCE: LazyLock<Validator> = LazyLock::new(|| {
        jsonschema::options()
            .with_draft(Draft::Draft7)
            .should_validate_formats(true)
            .build(&json!({ "type": "string", "format": "uri-reference" }))
            .expect("a uri-reference validator")
    });
    URI_REFERENCE.is_valid(&Value::String(expand_template(text)))
}

/// Replaces each `{name}` (letters, digits, `_`, `.`) with `x`; any other brace stays.
fn expand_template(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find('}') {
            Some(close)
                if close > 0
                    && after[..close]
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.') =>
            {
                out.push('x');
                rest = &after[close + 1..];
            }
            _ => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

// ---------------------------------------------------------------------------------------
// Checking responses
// ---------------------------------------------------------------------------------------

/// Every way `value` breaks `schema` (a path under `tests/spec/balanced/`), one line each:
/// the instance path, the error, and the schema and keyword that refused it.
fn violations(schema: &str, value: &Value) -> Vec<String> {
    violations_under(schema, value, "")
}

/// [`violations`] of a value found at the instance path `under` of a larger document.
fn violations_under(schema: &str, value: &Value, under: &str) -> Vec<String> {
    let validator = SCHEMAS
        .get(schema)
        .unwrap_or_else(|| panic!("no vendored schema {schema}"));
    validator
        .iter_errors(value)
        .map(|e| {
            let at = format!("{under}{}", e.instance_path());
            let at = if at.is_empty() { "(root)" } else { &at };
            format!("{at}: {e}  [{schema}#{}]", e.schema_path())
        })
        .collect()
}

/// Panics, listing every validation error with its instance path, unless `value` is valid
/// against `schema` (`models/debit.json`, `collections/debits.json`, ...).
fn assert_valid(schema: &str, value: &Value) {
    let errors = violations(schema, value);
    assert!(
        errors.is_empty(),
        "not valid against {schema}:\n  {}\n{}",
        errors.join("\n  "),
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

/// What an envelope of `collection` breaks: its collection schema, each item's model
/// schema and, for events, each `entity` as an envelope of what it carries.
fn envelope_violations(collection: &str, body: &Value) -> Vec<String> {
    envelope_violations_under(collection, body, "")
}

fn envelope_violations_under(collection: &str, body: &Value, under: &str) -> Vec<String> {
    let model = COLLECTIONS
        .iter()
        .find(|(c, _)| *c == collection)
        .map(|(_, m)| *m)
        .unwrap_or_else(|| panic!("unknown collection {collection}"));
    // The collection schema checks the items too (`$ref`); their errors are reported once,
    // under the model's name, below.
    let items_at = format!("{under}/{collection}/");
    let mut found: Vec<String> =
        violations_under(&format!("collections/{collection}.json"), body, under)
            .into_iter()
            .filter(|v| !v.starts_with(&items_at))
            .collect();
    for (i, item) in body
        .get(collection)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let at = format!("{under}/{collection}/{i}");
        found.extend(violations_under(&format!("models/{model}.json"), item, &at));
        if collection == "events" {
            let entity = &item["entity"];
            match entity_collection(entity) {
                Some(carried) => found.extend(envelope_violations_under(
                    carried,
                    entity,
                    &format!("{at}/entity"),
                )),
                None => found.push(format!(
                    "{at}/entity: not an envelope of one of {ENTITY_COLLECTIONS:?}"
                )),
            }
        }
    }
    found
}

/// The collection an event's entity carries: the one known collection key it has.
fn entity_collection(entity: &Value) -> Option<&'static str> {
    let fields = entity.as_object()?;
    let mut carried = ENTITY_COLLECTIONS
        .into_iter()
        .filter(|c| fields.contains_key(*c));
    let first = carried.next()?;
    carried.next().is_none().then_some(first)
}

/// The responses of one test and what they break, reported all together by
/// [`Audit::assert_all_valid`] so one run shows every response that breaks the schemas.
#[derive(Default)]
struct Audit {
    checked: Vec<String>,
    problems: Vec<String>,
}

impl Audit {
    fn envelope(&mut self, what: &str, collection: &str, body: &Value) {
        self.checked.push(what.to_owned());
        let found = envelope_violations(collection, body);
        if !found.is_empty() {
            self.problems.push(format!(
                "{what}:\n    {}\n    body: {body}",
                found.join("\n    ")
            ));
        }
    }

    /// A success: `status` expected, then the envelope checked.
    fn response(
        &mut self,
        what: &str,
        expected: StatusCode,
        collection: &str,
        (status, body): (StatusCode, Value),
    ) -> Value {
        assert_eq!(status, expected, "{what}: {body}");
        self.envelope(what, collection, &body);
        body
    }

    /// A create: 201 and a valid envelope; returns the new resource's id.
    async fn post(
        &mut self,
        app: &TestApp,
        path: &str,
        request: Value,
        collection: &str,
    ) -> String {
        let response = app.post(path, request.clone()).await;
        let body = self.response(
            &format!("POST {path} {request}"),
            StatusCode::CREATED,
            collection,
            response,
        );
        id_of(&body, collection)
    }

    async fn get(&mut self, app: &TestApp, path: &str, collection: &str) -> Value {
        let response = app.get(path).await;
        self.response(&format!("GET {path}"), StatusCode::OK, collection, response)
    }

    async fn put(&mut self, app: &TestApp, path: &str, request: Value, collection: &str) -> Value {
        let response = app.put(path, request.clone()).await;
        self.response(
            &format!("PUT {path} {request}"),
            StatusCode::OK,
            collection,
            response,
        )
    }

    /// The operator reports a processor outcome; the answer is the transaction.
    async fn settle(&mut self, app: &TestApp, id: &str, outcome: Value, collection: &str) -> Value {
        let response = app.settle(id, outcome.clone()).await;
        self.response(
            &format!("PUT /processor/transactions/{id} {outcome}"),
            StatusCode::OK,
            collection,
            response,
        )
    }

    /// A list that must not be empty (so it cannot pass vacuously) and must hold the
    /// resources `ids`, so each of them is checked.
    async fn list(&mut self, app: &TestApp, path: &str, collection: &str, ids: &[&str]) -> Value {
        let body = self.get(app, path, collection).await;
        let listed: BTreeSet<&str> = body[collection]
            .as_array()
            .map(|items| items.iter().filter_map(|i| i["id"].as_str()).collect())
            .unwrap_or_default();
        assert!(!listed.is_empty(), "GET {path} lists nothing: {body}");
        for id in ids {
            assert!(listed.contains(id), "GET {path} does not list {id}: {body}");
        }
        body
    }

    /// An error answer: `status` and Balanced `category_code` expected, then the envelope
    /// checked against `collections/errors.json` and each error against `models/error.json`.
    fn error(
        &mut self,
        what: &str,
        (status, body): (StatusCode, Value),
        expected: StatusCode,
        code: &str,
    ) {
        self.checked.push(what.to_owned());
        let mut found = Vec::new();
        if status != expected || error(&body)["category_code"] != json!(code) {
            found.push(format!("expected {expected} `{code}`, got {status}"));
        }
        let in_items = |v: &String| v.starts_with("/errors/");
        found.extend(
            violations("collections/errors.json", &body)
                .into_iter()
                .filter(|v| !in_items(v)),
        );
        for (i, item) in body["errors"].as_array().into_iter().flatten().enumerate() {
            found.extend(violations_under(
                "models/error.json",
                item,
                &format!("/errors/{i}"),
            ));
        }
        if !found.is_empty() {
            self.problems.push(format!(
                "{what}:\n    {}\n    body: {body}",
                found.join("\n    ")
            ));
        }
    }

    fn assert_all_valid(self) {
        assert!(!self.checked.is_empty(), "no response was checked");
        assert!(
            self.problems.is_empty(),
            "{} of {} responses do not validate against the Balanced 1.1 schemas:\n\n{}",
            self.problems.len(),
            self.checked.len(),
            self.problems.join("\n\n")
        );
    }
}

fn id_of(body: &Value, collection: &str) -> String {
    body[collection][0]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no {collection} id in {body}"))
        .to_owned()
}

const FAILED: &str = "R01 insufficient funds";

fn failed() -> Value {
    json!({ "status": "failed", "failure_reason": FAILED, "failure_reason_code": "insufficient-funds" })
}

fn succeeded() -> Value {
    json!({ "status": "succeeded" })
}

/// A PUT as a client sends one: a new description and meta.
fn annotate(what: &str) -> Value {
    json!({ "description": format!("{what}, annotated"), "meta": { "note": what } })
}

// ---------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------

#[test]
fn every_vendored_schema_compiles_as_draft_04_once_its_known_defects_are_patched() {
    let names: Vec<&str> = SCHEMAS.keys().map(String::as_str).collect();
    for (collection, model) in COLLECTIONS {
        assert!(
            names.contains(&format!("collections/{collection}.json").as_str()),
            "{names:?}"
        );
        assert!(
            names.contains(&format!("models/{model}.json").as_str()),
            "{names:?}"
        );
    }
    assert!(names.contains(&"collections/errors.json") && names.contains(&"models/error.json"));
}

#[test]
fn uri_format_accepts_relative_hrefs_and_link_templates_but_not_junk() {
    for good in [
        "/debits/WD01JD3XQ0F8Y2H1D7Q7T3N5C1",
        "/debits/{debits.id}/refunds",
        "/orders?limit=10&after=OR01JD3XQ0F8Y2H1D7Q7T3N5C1",
        "https://example.com/a?b=c",
    ] {
        assert!(is_uri_reference(good), "{good:?} should pass");
    }
    for bad in [
        "/debits/WD 1",
        "/debits/{debits.id/refunds",
        "/debits/{}/refunds",
        "/a{b",
        "http://[::1",
    ] {
        assert!(!is_uri_reference(bad), "{bad:?} should fail");
    }
}

async fn order_responses_match_the_order_schemas(app: TestApp) {
    let mut audit = Audit::default();
    let plain = audit
        .post(&app, "/orders", json!({ "merchant": MERCHANT }), "orders")
        .await;
    let address = json!({ "line1": "965 Mission St", "city": "San Francisco", "state": "CA", "postal_code": "94103", "country_code": "US" });
    let full = json!({ "merchant": MERCHANT, "description": "Order #1", "meta": { "cart": "42" }, "delivery_address": address });
    let full = audit.post(&app, "/orders", full, "orders").await;
    let merchant = MERCHANT.rsplit('/').next().expect("a merchant id");
    let nested = audit
        .post(
            &app,
            &format!("/customers/{merchant}/orders"),
            json!({}),
            "orders",
        )
        .await;
    // Money in and out moves the order's amounts.
    app.debit(&plain, CARD, 5_000).await;
    app.credit(&plain, BANK, 1_000).await;

    for id in [&plain, &full, &nested] {
        audit.get(&app, &format!("/orders/{id}"), "orders").await;
    }
    audit
        .list(
            &app,
            "/orders?limit=100",
            "orders",
            &[&plain, &full, &nested],
        )
        .await;
    let page = audit.list(&app, "/orders?limit=1", "orders", &[]).await;
    let next = page["meta"]["next"]
        .as_str()
        .expect("a next page")
        .to_owned();
    audit.list(&app, &next, "orders", &[]).await;
    audit
        .put(
            &app,
            &format!("/orders/{plain}"),
            json!({ "meta": { "shipped": "yes" } }),
            "orders",
        )
        .await;
    audit
        .put(
            &app,
            &format!("/orders/{full}"),
            annotate("order"),
            "orders",
        )
        .await;
    let cleared = json!({ "description": null, "delivery_address": null });
    audit
        .put(&app, &format!("/orders/{full}"), cleared, "orders")
        .await;
    audit.assert_all_valid();
}

async fn debit_responses_match_the_debit_schemas_succeeded_pending_and_failed(app: TestApp) {
    let mut audit = Audit::default();
    let order = app.order().await;
    let debits = format!("/orders/{order}/debits");
    let card = audit
        .post(
            &app,
            &debits,
            json!({ "source": CARD, "amount": 10_000 }),
            "debits",
        )
        .await;
    let described = json!({
        "source": CARD, "amount": 1, "order": order, "description": "one cent",
        "meta": { "k": "v" }, "appears_on_statement_as": "example.com",
    });
    let described = audit.post(&app, "/debits", described, "debits").await;
    let unordered = audit
        .post(
            &app,
            "/debits",
            json!({ "source": BANK, "amount": 700 }),
            "debits",
        )
        .await;
    let pending = audit
        .post(
            &app,
            &debits,
            json!({ "source": BANK, "amount": 2_500 }),
            "debits",
        )
        .await;
    let settled = app.debit(&order, BANK, 3_000).await;
    audit.settle(&app, &settled, succeeded(), "debits").await;
    let bounced = app.debit(&order, BANK, 4_000).await;
    audit.settle(&app, &bounced, failed(), "debits").await;
    // Reporting the status it already has answers with the debit as it is.
    audit.settle(&app, &bounced, failed(), "debits").await;
    // A create replayed under its Idempotency-Key answers with the stored response.
    let request = json!({ "source": CARD, "amount": 900 });
    let mut replayed = BTreeSet::new();
    for round in ["first", "replayed"] {
        let post = app
            .request(Method::POST, &debits)
            .header("Idempotency-Key", "schemas-1")
            .json(&request);
        let body = audit.response(
            &format!("POST {debits} ({round})"),
            StatusCode::CREATED,
            "debits",
            send(post).await,
        );
        replayed.insert(id_of(&body, "debits"));
    }
    assert_eq!(
        replayed.len(),
        1,
        "the replay answered with another debit: {replayed:?}"
    );

    let all = [
        card.as_str(),
        &described,
        &unordered,
        &pending,
        &settled,
        &bounced,
    ];
    for id in all {
        audit.get(&app, &format!("/debits/{id}"), "debits").await;
    }
    let (_, shown) = app.get(&format!("/debits/{bounced}")).await;
    assert_eq!(shown["debits"][0]["status"], "failed", "{shown}");
    assert_eq!(shown["debits"][0]["failure_reason"], FAILED, "{shown}");
    audit.list(&app, "/debits?limit=100", "debits", &all).await;
    let ordered = [card.as_str(), &described, &pending, &settled, &bounced];
    audit
        .list(&app, &format!("{debits}?limit=100"), "debits", &ordered)
        .await;
    for id in [&card, &pending, &bounced] {
        audit
            .put(&app, &format!("/debits/{id}"), annotate("debit"), "debits")
            .await;
    }
    audit
        .put(
            &app,
            &format!("/debits/{described}"),
            json!({ "description": null, "meta": {} }),
            "debits",
        )
        .await;
    audit.assert_all_valid();
}

async fn refund_responses_match_the_refund_schemas_succeeded_pending_and_failed(app: TestApp) {
    let mut audit = Audit::default();
    let order = app.order().await;
    let card_debit = app.debit(&order, CARD, 10_000).await;
    let of_card = format!("/debits/{card_debit}/refunds");
    let partial = audit
        .post(&app, &of_card, json!({ "amount": 2_000 }), "refunds")
        .await;
    let rest =
        json!({ "debit": card_debit, "description": "the rest", "meta": { "why": "returned" } });
    let rest = audit.post(&app, "/refunds", rest, "refunds").await;
    // A full refund: no body at all.
    let whole_debit = app.debit(&order, CARD, 1_500).await;
    let path = format!("/debits/{whole_debit}/refunds");
    let response = send(app.request(Method::POST, &path)).await;
    let whole = audit.response(
        &format!("POST {path} (no body)"),
        StatusCode::CREATED,
        "refunds",
        response,
    );
    let whole = id_of(&whole, "refunds");
    // Refunds of a bank debit wait for the processor.
    let bank_debit = app.debit(&order, BANK, 8_000).await;
    app.settle(&bank_debit, succeeded()).await;
    let of_bank = format!("/debits/{bank_debit}/refunds");
    let pending = audit
        .post(&app, &of_bank, json!({ "amount": 1_000 }), "refunds")
        .await;
    let settled = audit
        .post(&app, &of_bank, json!({ "amount": 1_000 }), "refunds")
        .await;
    audit.settle(&app, &settled, succeeded(), "refunds").await;
    let bounced = audit
        .post(&app, &of_bank, json!({ "amount": 1_000 }), "refunds")
        .await;
    audit.settle(&app, &bounced, failed(), "refunds").await;

    let all = [
        partial.as_str(),
        &rest,
        &whole,
        &pending,
        &settled,
        &bounced,
    ];
    for id in all {
        audit.get(&app, &format!("/refunds/{id}"), "refunds").await;
    }
    audit
        .list(&app, "/refunds?limit=100", "refunds", &all)
        .await;
    audit
        .list(
            &app,
            &format!("/orders/{order}/refunds?limit=100"),
            "refunds",
            &all,
        )
        .await;
    audit
        .list(&app, &of_card, "refunds", &[&partial, &rest])
        .await;
    audit
        .list(&app, &of_bank, "refunds", &[&pending, &settled, &bounced])
        .await;
    audit
        .put(
            &app,
            &format!("/refunds/{partial}"),
            json!({ "meta": { "ticket": "7" } }),
            "refunds",
        )
        .await;
    audit
        .put(
            &app,
            &format!("/refunds/{rest}"),
            annotate("refund"),
            "refunds",
        )
        .await;
    audit
        .put(
            &app,
            &format!("/refunds/{bounced}"),
            json!({ "description": null }),
            "refunds",
        )
        .await;
    audit.assert_all_valid();
}

async fn credit_responses_match_the_credit_schemas_succeeded_pending_and_failed(app: TestApp) {
    let mut audit = Audit::default();
    let order = app.order().await;
    app.debit(&order, CARD, 50_000).await;
    let credits = format!("/orders/{order}/credits");
    let card = audit
        .post(
            &app,
            &credits,
            json!({ "destination": CARD, "amount": 5_000 }),
            "credits",
        )
        .await;
    let described = json!({
        "destination": BANK, "amount": 1, "order": order, "description": "payout",
        "meta": { "k": "v" }, "appears_on_statement_as": "hookline",
    });
    let described = audit.post(&app, "/credits", described, "credits").await;
    let pending = audit
        .post(
            &app,
            &credits,
            json!({ "destination": BANK, "amount": 2_000 }),
            "credits",
        )
        .await;
    let settled = app.credit(&order, BANK, 3_000).await;
    audit.settle(&app, &settled, succeeded(), "credits").await;
    let bounced = app.credit(&order, BANK, 4_000).await;
    audit.settle(&app, &bounced, failed(), "credits").await;

    let all = [card.as_str(), &described, &pending, &settled, &bounced];
    for id in all {
        audit.get(&app, &format!("/credits/{id}"), "credits").await;
    }
    audit
        .list(&app, "/credits?limit=100", "credits", &all)
        .await;
    audit
        .list(&app, &format!("{credits}?limit=100"), "credits", &all)
        .await;
    for id in [&card, &pending, &bounced] {
        audit
            .put(
                &app,
                &format!("/credits/{id}"),
                annotate("credit"),
                "credits",
            )
            .await;
    }
    audit
        .put(
            &app,
            &format!("/credits/{described}"),
            json!({ "description": null }),
            "credits",
        )
        .await;
    audit.assert_all_valid();
}

async fn reversal_responses_match_the_reversal_schemas_succeeded_pending_and_failed(app: TestApp) {
    let mut audit = Audit::default();
    let order = app.order().await;
    app.debit(&order, CARD, 50_000).await;
    let card_credit = app.credit(&order, CARD, 10_000).await;
    let of_card = format!("/credits/{card_credit}/reversals");
    let partial = audit
        .post(&app, &of_card, json!({ "amount": 2_500 }), "reversals")
        .await;
    let rest = json!({ "credit": card_credit, "description": "clawback", "meta": { "k": "v" } });
    let rest = audit.post(&app, "/reversals", rest, "reversals").await;
    // Reversals of a bank credit wait for the processor.
    let bank_credit = app.credit(&order, BANK, 9_000).await;
    app.settle(&bank_credit, succeeded()).await;
    let of_bank = format!("/credits/{bank_credit}/reversals");
    let pending = audit
        .post(&app, &of_bank, json!({ "amount": 1_000 }), "reversals")
        .await;
    let settled = audit
        .post(&app, &of_bank, json!({ "amount": 1_000 }), "reversals")
        .await;
    audit.settle(&app, &settled, succeeded(), "reversals").await;
    let bounced = audit
        .post(&app, &of_bank, json!({ "amount": 1_000 }), "reversals")
        .await;
    audit.settle(&app, &bounced, failed(), "reversals").await;

    let all = [partial.as_str(), &rest, &pending, &settled, &bounced];
    for id in all {
        audit
            .get(&app, &format!("/reversals/{id}"), "reversals")
            .await;
    }
    audit
        .list(&app, "/reversals?limit=100", "reversals", &all)
        .await;
    audit
        .list(
            &app,
            &format!("/orders/{order}/reversals?limit=100"),
            "reversals",
            &all,
        )
        .await;
    audit
        .list(&app, &of_card, "reversals", &[&partial, &rest])
        .await;
    audit
        .list(&app, &of_bank, "reversals", &[&pending, &settled, &bounced])
        .await;
    for id in [&partial, &bounced] {
        audit
            .put(
                &app,
                &format!("/reversals/{id}"),
                annotate("reversal"),
                "reversals",
            )
            .await;
    }
    audit
        .put(
            &app,
            &format!("/reversals/{rest}"),
            json!({ "description": null }),
            "reversals",
        )
        .await;
    audit.assert_all_valid();
}

async fn event_responses_and_the_entities_they_carry_match_the_schemas(app: TestApp) {
    let mut audit = Audit::default();
    // A life of every kind, with pending, succeeded and failed transactions.
    let order = app.order().await;
    let card_debit = app.debit(&order, CARD, 20_000).await;
    let bank_debit = app.debit(&order, BANK, 5_000).await;
    app.settle(&bank_debit, failed()).await;
    let pending_debit = app.debit(&order, BANK, 1_000).await;
    let (_, refund) = app
        .post(
            &format!("/debits/{card_debit}/refunds"),
            json!({ "amount": 500 }),
        )
        .await;
    let refund = id_of(&refund, "refunds");
    let credit = app.credit(&order, BANK, 4_000).await;
    app.settle(&credit, succeeded()).await;
    let (_, reversal) = app
        .post(
            &format!("/credits/{credit}/reversals"),
            json!({ "amount": 1_000 }),
        )
        .await;
    let reversal = id_of(&reversal, "reversals");
    app.settle(&reversal, failed()).await;
    app.put(
        &format!("/orders/{order}"),
        json!({ "meta": { "stage": "done" } }),
    )
    .await;

    let list = audit.list(&app, "/events?limit=100", "events", &[]).await;
    let events = list["events"].as_array().expect("events").clone();
    let carried: BTreeSet<&str> = events
        .iter()
        .filter_map(|e| entity_collection(&e["entity"]))
        .collect();
    assert_eq!(
        carried,
        ENTITY_COLLECTIONS.into_iter().collect(),
        "not every kind of entity: {list}"
    );
    let types: BTreeSet<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    for t in [
        "order.created",
        "order.updated",
        "debit.created",
        "debit.succeeded",
        "debit.failed",
        "refund.created",
        "credit.succeeded",
        "reversal.failed",
    ] {
        assert!(types.contains(t), "no {t} event among {types:?}");
    }
    for event in &events {
        let id = event["id"].as_str().expect("an event id");
        audit.get(&app, &format!("/events/{id}"), "events").await;
    }
    let page = audit.list(&app, "/events?limit=2", "events", &[]).await;
    let next = page["meta"]["next"]
        .as_str()
        .expect("a next page")
        .to_owned();
    audit.list(&app, &next, "events", &[]).await;
    let resources = [
        format!("/orders/{order}"),
        format!("/debits/{card_debit}"),
        format!("/debits/{bank_debit}"),
        format!("/debits/{pending_debit}"),
        format!("/refunds/{refund}"),
        format!("/credits/{credit}"),
        format!("/reversals/{reversal}"),
    ];
    for resource in resources {
        audit
            .list(&app, &format!("{resource}/events?limit=100"), "events", &[])
            .await;
    }
    audit.assert_all_valid();
}

/// Balanced's collection schemas ask for at least one item (`minItems: 1`; events: 0), so
/// an empty list breaks exactly that and nothing else: its links and meta are valid.
async fn empty_lists_break_only_the_collection_schemas_min_items(app: TestApp) {
    let order = app.order().await;
    let debit = app.debit(&order, CARD, 1_000).await;
    let credit = app.credit(&order, CARD, 100).await;
    let empty = [
        (format!("/orders/{order}/refunds"), "refunds"),
        (format!("/orders/{order}/reversals"), "reversals"),
        (format!("/debits/{debit}/refunds"), "refunds"),
        (format!("/credits/{credit}/reversals"), "reversals"),
        (format!("/debits?limit=10&after={debit}"), "debits"),
        (format!("/credits?limit=10&after={credit}"), "credits"),
        (format!("/orders?limit=10&after={order}"), "orders"),
    ];
    for (path, collection) in empty {
        let (status, body) = app.get(&path).await;
        assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
        assert_eq!(body[collection], json!([]), "GET {path}: {body}");
        let found = envelope_violations(collection, &body);
        assert!(
            found.len() == 1 && found[0].contains(&format!("/properties/{collection}/minItems")),
            "GET {path} should break only minItems:\n  {}\n{body}",
            found.join("\n  ")
        );
    }
    let (status, body) = app
        .get("/events?limit=10&after=EV00000000000000000000000000")
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["events"], json!([]), "{body}");
    assert_valid("collections/events.json", &body);
}

async fn errors_with_balanced_codes_match_the_error_schemas(app: TestApp) {
    let mut audit = Audit::default();
    let order = app.order().await;
    let debits = format!("/orders/{order}/debits");
    let (bad, conflict) = (StatusCode::BAD_REQUEST, StatusCode::CONFLICT);

    let zero = app
        .post(&debits, json!({ "source": CARD, "amount": 0 }))
        .await;
    audit.error("POST a debit of 0", zero, bad, "invalid-amount");
    let huge = app
        .post(
            &debits,
            json!({ "source": CARD, "amount": 1_000_000_001_i64 }),
        )
        .await;
    audit.error(
        "POST a debit over the limit",
        huge,
        bad,
        "amount-exceeds-limit",
    );
    let no_source = app.post(&debits, json!({ "amount": 100 })).await;
    audit.error("POST a debit without a source", no_source, bad, "request");
    let bad_query = app.get("/debits?limit=lots").await;
    audit.error("GET a list with a bad limit", bad_query, bad, "request");
    // Too large is bad input: 400, a status Balanced had.
    let oversized = json!({ "source": CARD, "amount": 100, "description": "x".repeat(70 * 1024) });
    let oversized = app.post(&debits, oversized).await;
    let too_large = StatusCode::BAD_REQUEST;
    audit.error(
        "POST a body over the size limit",
        oversized,
        too_large,
        "request",
    );
    let missing = app.get("/debits/WD00000000000000000000000000").await;
    audit.error(
        "GET a debit that does not exist",
        missing,
        StatusCode::NOT_FOUND,
        "not-found",
    );
    let no_route = app.get("/nowhere").await;
    audit.error(
        "GET an unknown route",
        no_route,
        StatusCode::NOT_FOUND,
        "not-found",
    );
    let delete = send(app.request(Method::DELETE, &format!("/orders/{order}"))).await;
    audit.error(
        "DELETE an order",
        delete,
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
    );

    let broke = app.order().await;
    let no_escrow = app
        .post(
            &format!("/orders/{broke}/credits"),
            json!({ "destination": BANK, "amount": 100 }),
        )
        .await;
    audit.error(
        "POST a credit beyond the escrow",
        no_escrow,
        conflict,
        "insufficient-funds",
    );

    let debit = app.debit(&order, CARD, 1_000).await;
    let refunds = format!("/debits/{debit}/refunds");
    let too_much = app.post(&refunds, json!({ "amount": 1_001 })).await;
    audit.error(
        "POST a refund larger than its debit",
        too_much,
        bad,
        "invalid-amount",
    );
    app.post(&refunds, json!({})).await;
    let again = app.post(&refunds, json!({})).await;
    audit.error(
        "POST a refund of a refunded debit",
        again,
        conflict,
        "debit-already-refunded",
    );
    let pending_debit = app.debit(&order, BANK, 1_000).await;
    let early = app
        .post(&format!("/debits/{pending_debit}/refunds"), json!({}))
        .await;
    audit.error(
        "POST a refund of a pending debit",
        early,
        bad,
        "refund-invalid-debit-state",
    );

    app.debit(&order, CARD, 10_000).await;
    let credit = app.credit(&order, CARD, 1_000).await;
    let reversals = format!("/credits/{credit}/reversals");
    let too_much = app.post(&reversals, json!({ "amount": 1_001 })).await;
    audit.error(
        "POST a reversal larger than its credit",
        too_much,
        bad,
        "invalid-reversal-amount",
    );
    app.post(&reversals, json!({})).await;
    let again = app.post(&reversals, json!({})).await;
    audit.error(
        "POST a reversal of a reversed credit",
        again,
        conflict,
        "credit-already-reversed",
    );
    let pending_credit = app.credit(&order, BANK, 1_000).await;
    let early = app
        .post(&format!("/credits/{pending_credit}/reversals"), json!({}))
        .await;
    audit.error(
        "POST a reversal of a pending credit",
        early,
        bad,
        "cannot-reverse-credit",
    );
    audit.assert_all_valid();
}

/// The check is no blank cheque: a real debit passes, and the same debit with an extra
/// field, a malformed id, a missing field or a bad value does not.
async fn schema_check_rejects_a_debit_that_breaks_the_debit_schema(app: TestApp) {
    let order = app.order().await;
    let id = app.debit(&order, CARD, 1_000).await;
    let (status, body) = app.get(&format!("/debits/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_valid("collections/debits.json", &body);
    let debit = body["debits"][0].clone();
    assert_valid("models/debit.json", &debit);

    // (what, where to set it, the value, where the error must be reported)
    let breaks = [
        ("an extra property", "/fee", json!(30), ""),
        (
            "an id without the WD prefix",
            "/id",
            json!("XX01JD3XQ0F8Y2H1D7Q7T3N5C1"),
            "/id",
        ),
        ("an id too short", "/id", json!("WD123"), "/id"),
        (
            "a status outside the enum",
            "/status",
            json!("settled"),
            "/status",
        ),
        ("an amount of 0", "/amount", json!(0), "/amount"),
        (
            "a created_at that is no date-time",
            "/created_at",
            json!("yesterday"),
            "/created_at",
        ),
        (
            "an href that is no URI reference",
            "/href",
            json!("/debits/WD 1"),
            "/href",
        ),
        ("an extra link", "/links/refund", json!(null), "/links"),
        (
            "a source that is no funding instrument",
            "/links/source",
            json!("OR01JD3XQ0F8Y2H1D7Q7T3N5C1"),
            "/links/source",
        ),
    ];
    for (what, pointer, value, at) in breaks {
        let mut broken = debit.clone();
        let (parent, field) = pointer.rsplit_once('/').expect("a pointer");
        let slot = if parent.is_empty() {
            &mut broken
        } else {
            broken.pointer_mut(parent).expect("a parent")
        };
        slot[field] = value;
        let found = violations("models/debit.json", &broken);
        let expected = if at.is_empty() {
            "(root): ".to_owned()
        } else {
            format!("{at}: ")
        };
        assert!(
            found.iter().any(|v| v.starts_with(&expected)),
            "a debit with {what} was not refused at {expected}: {found:?}\n{broken}"
        );
        let wrapped = json!({ "debits": [broken], "links": body["links"] });
        let found = envelope_violations("debits", &wrapped);
        let expected = format!("/debits/0{at}: ");
        assert!(
            found.iter().any(|v| v.starts_with(&expected)),
            "an envelope of a debit with {what} was not refused at {expected}: {found:?}"
        );
    }
    let mut missing = debit.clone();
    missing
        .as_object_mut()
        .expect("an object")
        .remove("transaction_number");
    assert!(
        !violations("models/debit.json", &missing).is_empty(),
        "a debit without transaction_number passed"
    );

    // The collection schema: the array is required (the patched `require` typo), must not
    // be empty, and the link templates are required.
    assert!(
        !violations(
            "collections/debits.json",
            &json!({ "links": body["links"] })
        )
        .is_empty()
    );
    assert!(
        !violations(
            "collections/debits.json",
            &json!({ "debits": [], "links": body["links"] })
        )
        .is_empty()
    );
    let mut no_link = body.clone();
    no_link["links"]
        .as_object_mut()
        .expect("links")
        .remove("debits.refunds");
    assert!(
        !violations("collections/debits.json", &no_link).is_empty(),
        "a missing collection link passed"
    );
    let mut wrong_link = body.clone();
    wrong_link["links"]["debits.refunds"] = json!("/debits/{debits.id}/reversals");
    assert!(
        !violations("collections/debits.json", &wrong_link).is_empty(),
        "a wrong link template passed"
    );

    // An event whose entity breaks its collection is caught too.
    let mut events = json!({ "events": [{
        "id": "EV01JD3XQ0F8Y2H1D7Q7T3N5C1", "href": "/events/EV01JD3XQ0F8Y2H1D7Q7T3N5C1",
        "occurred_at": "2014-12-16T20:44:56.396221Z", "type": "debit.created", "entity": body,
    }] });
    assert!(
        envelope_violations("events", &events).is_empty(),
        "{events}"
    );
    events["events"][0]["entity"]["debits"][0]["status"] = json!("settled");
    assert!(
        !envelope_violations("events", &events).is_empty(),
        "a broken entity passed"
    );
    events["events"][0]["entity"] = json!({ "debits": "none" });
    assert!(
        !envelope_violations("events", &events).is_empty(),
        "a malformed entity passed"
    );
}

on_both_backends!(
    order_responses_match_the_order_schemas,
    debit_responses_match_the_debit_schemas_succeeded_pending_and_failed,
    refund_responses_match_the_refund_schemas_succeeded_pending_and_failed,
    credit_responses_match_the_credit_schemas_succeeded_pending_and_failed,
    reversal_responses_match_the_reversal_schemas_succeeded_pending_and_failed,
    event_responses_and_the_entities_they_carry_match_the_schemas,
    empty_lists_break_only_the_collection_schemas_min_items,
    errors_with_balanced_codes_match_the_error_schemas,
    schema_check_rejects_a_debit_that_breaks_the_debit_schema,
);
