//! Authentication, tenant isolation and the operator credential (issue item 2).
//!
//! A marketplace authenticates with its API secret (HTTP Basic with the secret as user
//! name, or Bearer); only a hash of the secret is stored. Every read and write is scoped to
//! the caller's marketplace: another marketplace's resource answers exactly like one that
//! does not exist. The operator credential creates marketplaces, reports processor
//! outcomes and reads across marketplaces, but cannot act for one.

use reqwest::header::{HeaderMap, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::Row;

use crate::bad_input::{assert_envelope, marketplace_count, rows, send_any, unknown};
use crate::common::*;

/// A request authenticated with `secret` (HTTP Basic, the secret as user name).
fn as_secret(app: &TestApp, secret: &str, method: Method, path: &str) -> reqwest::RequestBuilder {
    app.client
        .request(method, format!("{}{path}", app.base))
        .basic_auth(secret, Some(""))
}

/// A request with no credential at all.
fn anonymous(app: &TestApp, method: Method, path: &str) -> reqwest::RequestBuilder {
    app.client.request(method, format!("{}{path}", app.base))
}

async fn send_with_headers(request: reqwest::RequestBuilder) -> (StatusCode, HeaderMap, Value) {
    let response = request.send().await.expect("the request reaches the app");
    let (status, headers) = (response.status(), response.headers().clone());
    let text = response.text().await.expect("a body");
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, headers, body)
}

/// The ids in a list answer.
fn ids(body: &Value, collection: &str) -> Vec<String> {
    body[collection]
        .as_array()
        .unwrap_or_else(|| panic!("a list of {collection}: {body}"))
        .iter()
        .map(|item| item["id"].as_str().expect("an id").to_owned())
        .collect()
}

/// A list the operator reads; it must answer 200.
async fn operator_list(app: &TestApp, path: &str) -> Value {
    let (status, body) = send(app.operator(Method::GET, path)).await;
    assert_eq!(status, StatusCode::OK, "operator: {path}: {body}");
    body
}

#[track_caller]
fn assert_refused(label: &str, status: StatusCode, body: &Value, expected: StatusCode, code: &str) {
    assert_eq!(status, expected, "{label}: {body}");
    let e = assert_envelope(label, status, body);
    assert_eq!(e["category_code"], json!(code), "{label}: {body}");
}

async fn requests_without_a_valid_secret_get_401_in_the_envelope(app: TestApp) {
    let order = app.order().await;
    let debit = app.debit(&order, CARD, 1_000).await;
    let rows_before = rows(&app).await;
    let wrong = format!("{}x", app.secret);
    let attempts: Vec<(&str, reqwest::RequestBuilder)> = vec![
        ("no credential", anonymous(&app, Method::GET, "/orders")),
        (
            "no credential, a read",
            anonymous(&app, Method::GET, &format!("/debits/{debit}")),
        ),
        (
            "no credential, a create",
            anonymous(&app, Method::POST, &format!("/orders/{order}/debits"))
                .json(&json!({"source": CARD, "amount": 100})),
        ),
        (
            "a wrong secret in Basic",
            as_secret(&app, &wrong, Method::GET, "/orders"),
        ),
        (
            "a wrong secret as Bearer",
            anonymous(&app, Method::GET, "/orders").bearer_auth(&wrong),
        ),
        (
            "the secret cut short",
            anonymous(&app, Method::GET, "/orders")
                .bearer_auth(&app.secret[..app.secret.len() - 1]),
        ),
        (
            "an empty Bearer",
            anonymous(&app, Method::GET, "/orders").header("authorization", "Bearer "),
        ),
        (
            "an empty Basic user and password",
            as_secret(&app, "", Method::GET, "/orders"),
        ),
        (
            "Basic that is not base64",
            anonymous(&app, Method::GET, "/orders").header("authorization", "Basic %%%"),
        ),
        (
            "an unknown scheme",
            anonymous(&app, Method::GET, "/orders")
                .header("authorization", format!("Token {}", app.secret)),
        ),
        (
            "the secret with no scheme",
            anonymous(&app, Method::GET, "/orders").header("authorization", app.secret.clone()),
        ),
        (
            "a wrong secret, a create",
            as_secret(&app, &wrong, Method::POST, "/orders").json(&json!({"merchant": MERCHANT})),
        ),
        (
            "a wrong secret, an update",
            as_secret(&app, &wrong, Method::PUT, &format!("/debits/{debit}"))
                .json(&json!({"description": "changed"})),
        ),
        (
            "no credential, the processor",
            anonymous(
                &app,
                Method::PUT,
                &format!("/processor/transactions/{debit}"),
            )
            .json(&json!({"status": "failed"})),
        ),
        (
            "no credential, creating a marketplace",
            anonymous(&app, Method::POST, "/marketplaces").json(&json!({"name": "sneaky"})),
        ),
    ];
    for (label, request) in attempts {
        let (status, headers, body) = send_with_headers(request).await;
        assert_refused(
            label,
            status,
            &body,
            StatusCode::UNAUTHORIZED,
            "authentication-required",
        );
        assert!(
            headers.contains_key(WWW_AUTHENTICATE),
            "{label}: a 401 needs WWW-Authenticate"
        );
    }
    assert_eq!(
        rows(&app).await,
        rows_before,
        "an unauthenticated request wrote something"
    );
    assert_eq!(marketplace_count(&app).await, 1);
    let (_, body) = app.get(&format!("/debits/{debit}")).await;
    assert_eq!(body["debits"][0]["status"], "succeeded");
    assert_eq!(body["debits"][0]["description"], "order");
}

async fn basic_with_the_secret_as_user_and_bearer_both_authenticate(app: TestApp) {
    // Basic, the secret as user name and an empty password (as Balanced's clients sent it).
    let (status, body) = send(
        as_secret(&app, &app.secret, Method::POST, "/orders").json(&json!({"merchant": MERCHANT})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let order = body["orders"][0]["id"]
        .as_str()
        .expect("an order id")
        .to_owned();
    // Basic with no password at all.
    let no_password = anonymous(&app, Method::GET, &format!("/orders/{order}"))
        .basic_auth(&app.secret, None::<&str>);
    let (status, body) = send(no_password).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["orders"][0]["id"], json!(order));
    // Bearer, reading and writing as the same marketplace.
    let (status, body) =
        send(anonymous(&app, Method::GET, &format!("/orders/{order}")).bearer_auth(&app.secret))
            .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["orders"][0]["id"], json!(order));
    let bearer_debit = anonymous(&app, Method::POST, &format!("/orders/{order}/debits"))
        .bearer_auth(&app.secret)
        .json(&json!({"source": CARD, "amount": 250}));
    let (status, body) = send(bearer_debit).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let debit = body["debits"][0]["id"]
        .as_str()
        .expect("a debit id")
        .to_owned();
    let (status, body) = app.get(&format!("/orders/{order}/debits")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(ids(&body, "debits"), [debit]);
}

async fn api_secrets_are_stored_only_as_hashes(app: TestApp) {
    let (status, body) = send(
        app.operator(Method::POST, "/marketplaces")
            .json(&json!({"name": "third market"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let third = body["marketplaces"][0]["secret"]
        .as_str()
        .expect("a secret")
        .to_owned();
    let (_, other) = app.other_marketplace().await;
    let secrets = [app.secret.clone(), third, other];
    let stored = sqlx::query("SELECT id, name, secret_hash FROM marketplaces")
        .fetch_all(app.db.reader())
        .await
        .expect("the marketplaces");
    assert_eq!(stored.len(), 3);
    let mut hashes = Vec::new();
    for row in &stored {
        let hash: String = row.try_get("secret_hash").expect("a secret_hash");
        let id: String = row.try_get("id").expect("an id");
        let name: String = row.try_get("name").expect("a name");
        assert!(!hash.is_empty(), "{id}: no hash stored");
        for secret in &secrets {
            assert!(
                secret.len() >= 32,
                "a secret must be long enough to be unguessable: {secret}"
            );
            // Neither the secret nor its random part may appear in any column.
            let random_part = secret.rsplit('_').next().unwrap_or(secret);
            for column in [&hash, &id, &name] {
                assert_ne!(column, secret, "{id}: a secret is stored as it is");
                assert!(
                    !column.contains(random_part),
                    "{id}: a secret is stored in plain text: {column}"
                );
            }
        }
        hashes.push(hash);
    }
    hashes.sort();
    hashes.dedup();
    assert_eq!(hashes.len(), 3, "each marketplace has its own hash");
    // And each secret still authenticates as its own marketplace.
    for secret in &secrets {
        let (status, body) = send(as_secret(&app, secret, Method::GET, "/orders")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
}

/// Marketplace A's resources: an order with a card debit of 10 000, a refund of 1 000 of it,
/// a card credit of 2 000 and a reversal of 500 of that.
struct AsResources {
    order: String,
    debit: String,
    refund: String,
    credit: String,
    reversal: String,
    event: String,
}

async fn as_resources(app: &TestApp) -> AsResources {
    let order = app.order().await;
    let debit = app.debit(&order, CARD, 10_000).await;
    let (status, body) = app
        .post(
            &format!("/debits/{debit}/refunds"),
            json!({"amount": 1_000}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let refund = body["refunds"][0]["id"]
        .as_str()
        .expect("a refund id")
        .to_owned();
    let credit = app.credit(&order, CARD, 2_000).await;
    let (status, body) = app
        .post(
            &format!("/credits/{credit}/reversals"),
            json!({"amount": 500}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let reversal = body["reversals"][0]["id"]
        .as_str()
        .expect("a reversal id")
        .to_owned();
    let (status, body) = app.get(&format!("/debits/{debit}/events")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let event = ids(&body, "events")
        .into_iter()
        .next()
        .expect("the debit's events");
    assert_eq!(app.escrow(&order).await, (9_000, 7_500));
    AsResources {
        order,
        debit,
        refund,
        credit,
        reversal,
        event,
    }
}

impl AsResources {
    /// Everything A can read about its resources, to compare before and after B's attempts.
    async fn snapshot(&self, app: &TestApp) -> Vec<(StatusCode, Value)> {
        let (o, d, rf, c, rv, ev) = (
            &self.order,
            &self.debit,
            &self.refund,
            &self.credit,
            &self.reversal,
            &self.event,
        );
        let mut paths = vec![
            format!("/orders/{o}"),
            format!("/debits/{d}"),
            format!("/refunds/{rf}"),
            format!("/credits/{c}"),
            format!("/reversals/{rv}"),
            format!("/events/{ev}"),
            format!("/debits/{d}/refunds"),
            format!("/credits/{c}/reversals"),
            "/events?limit=100".to_owned(),
        ];
        for kind in ["debits", "refunds", "credits", "reversals", "events"] {
            paths.push(format!("/orders/{o}/{kind}"));
        }
        let mut snapshot = Vec::new();
        for path in paths {
            snapshot.push(app.get(&path).await);
        }
        snapshot
    }
}

/// What must be the same between "not yours" and "does not exist": everything but the
/// id itself and the request id.
fn shape(status: StatusCode, body: &Value, id: &str) -> Value {
    let e = error(body);
    let request_id = e["request_id"].as_str().unwrap_or("no request id");
    let description = e["description"]
        .as_str()
        .unwrap_or_default()
        .replace(id, "<id>")
        .replace(request_id, "<request id>");
    let extras: Value =
        serde_json::from_str(&e["extras"].to_string().replace(id, "<id>")).expect("extras");
    json!({
        "status": status.as_u16(),
        "status_code": e["status_code"],
        "category_code": e["category_code"],
        "category_type": e["category_type"],
        "description": description,
        "extras": extras,
    })
}

/// B's request on `id` (one of A's), and the same request on a made-up id of the same
/// kind: both must answer `expected` with the same error.
async fn assert_like_unknown(
    app: &TestApp,
    b_secret: &str,
    method: Method,
    template: &str,
    body: Option<&Value>,
    id: &str,
    expected: StatusCode,
) {
    let made_up = format!("{}{}", &id[..2], ulid::Ulid::new());
    assert_eq!(made_up.len(), id.len());
    let mut answers = Vec::new();
    for target in [id, made_up.as_str()] {
        let path = template.replace("{id}", target);
        let mut request = as_secret(app, b_secret, method.clone(), &path);
        if let Some(body) = body {
            let body: Value =
                serde_json::from_str(&body.to_string().replace("{id}", target)).expect("a body");
            request = request.json(&body);
        }
        let (status, answer) = send_any(request).await;
        let label = format!("B: {method} {path}");
        assert_eq!(status, expected, "{label}: {answer}");
        assert_envelope(&label, status, &answer);
        answers.push(shape(status, &answer, target));
    }
    assert_eq!(
        answers[0], answers[1],
        "B: {method} {template} on A's {id} must answer exactly like an id that does not exist"
    );
}

async fn another_marketplace_gets_404_on_every_path_to_a_resource_like_an_unknown_id(app: TestApp) {
    let a = as_resources(&app).await;
    let (_, b) = app.other_marketplace().await;
    let before = a.snapshot(&app).await;
    let rows_before = rows(&app).await;
    let debit_events = app.event_types(&format!("/debits/{}", a.debit)).await;
    assert_eq!(
        debit_events,
        ["debit.created", "debit.updated", "debit.succeeded"]
    );
    let update = json!({"description": "hijacked", "meta": {"owner": "B"}});
    let probes: Vec<(Method, String, Option<Value>, &str)> = vec![
        (Method::GET, "/orders/{id}".into(), None, &a.order),
        (Method::GET, "/debits/{id}".into(), None, &a.debit),
        (Method::GET, "/refunds/{id}".into(), None, &a.refund),
        (Method::GET, "/credits/{id}".into(), None, &a.credit),
        (Method::GET, "/reversals/{id}".into(), None, &a.reversal),
        (Method::GET, "/events/{id}".into(), None, &a.event),
        (Method::GET, "/orders/{id}/debits".into(), None, &a.order),
        (Method::GET, "/orders/{id}/refunds".into(), None, &a.order),
        (Method::GET, "/orders/{id}/credits".into(), None, &a.order),
        (Method::GET, "/orders/{id}/reversals".into(), None, &a.order),
        (Method::GET, "/orders/{id}/events".into(), None, &a.order),
        (Method::GET, "/debits/{id}/refunds".into(), None, &a.debit),
        (
            Method::GET,
            "/credits/{id}/reversals".into(),
            None,
            &a.credit,
        ),
        (Method::GET, "/debits/{id}/events".into(), None, &a.debit),
        (Method::GET, "/refunds/{id}/events".into(), None, &a.refund),
        (Method::GET, "/credits/{id}/events".into(), None, &a.credit),
        (
            Method::GET,
            "/reversals/{id}/events".into(),
            None,
            &a.reversal,
        ),
        (
            Method::PUT,
            "/orders/{id}".into(),
            Some(update.clone()),
            &a.order,
        ),
        (
            Method::PUT,
            "/debits/{id}".into(),
            Some(update.clone()),
            &a.debit,
        ),
        (
            Method::PUT,
            "/refunds/{id}".into(),
            Some(update.clone()),
            &a.refund,
        ),
        (
            Method::PUT,
            "/credits/{id}".into(),
            Some(update.clone()),
            &a.credit,
        ),
        (
            Method::PUT,
            "/reversals/{id}".into(),
            Some(update.clone()),
            &a.reversal,
        ),
        (
            Method::POST,
            "/debits/{id}/refunds".into(),
            Some(json!({"amount": 100})),
            &a.debit,
        ),
        (
            Method::POST,
            "/debits/{id}/refunds".into(),
            Some(json!({})),
            &a.debit,
        ),
        (
            Method::POST,
            "/credits/{id}/reversals".into(),
            Some(json!({"amount": 100})),
            &a.credit,
        ),
        (
            Method::POST,
            "/orders/{id}/debits".into(),
            Some(json!({"source": CARD, "amount": 100})),
            &a.order,
        ),
        (
            Method::POST,
            "/orders/{id}/credits".into(),
            Some(json!({"destination": BANK, "amount": 100})),
            &a.order,
        ),
    ];
    for (method, template, body, id) in &probes {
        assert_like_unknown(
            &app,
            &b,
            method.clone(),
            template,
            body.as_ref(),
            id,
            StatusCode::NOT_FOUND,
        )
        .await;
    }
    // The same request with a list's paging parameters.
    assert_like_unknown(
        &app,
        &b,
        Method::GET,
        "/orders/{id}/debits?limit=5",
        None,
        &a.order,
        StatusCode::NOT_FOUND,
    )
    .await;
    // B naming A's marketplace as a filter is ignored: B sees only its own.
    let (status, body) = send(as_secret(
        &app,
        &b,
        Method::GET,
        &format!("/debits?marketplace={}", app.marketplace),
    ))
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(ids(&body, "debits"), Vec::<String>::new());
    assert_like_unknown(
        &app,
        &b,
        Method::GET,
        &format!("/debits/{{id}}?marketplace={}", app.marketplace),
        None,
        &a.debit,
        StatusCode::NOT_FOUND,
    )
    .await;

    assert_eq!(rows(&app).await, rows_before, "B's attempts wrote rows");
    assert_eq!(
        a.snapshot(&app).await,
        before,
        "B's attempts changed what A sees"
    );
    assert_eq!(app.escrow(&a.order).await, (9_000, 7_500));
    assert_eq!(
        app.event_types(&format!("/debits/{}", a.debit)).await,
        debit_events
    );
    let (_, refunds) = app.get(&format!("/debits/{}/refunds", a.debit)).await;
    assert_eq!(
        ids(&refunds, "refunds"),
        [a.refund.as_str()],
        "A's debit got a refund from B"
    );
}

async fn another_marketplaces_resources_named_in_a_body_are_refused_like_unknown_ones(
    app: TestApp,
) {
    let a = as_resources(&app).await;
    let (_, b) = app.other_marketplace().await;
    let before = a.snapshot(&app).await;
    let rows_before = rows(&app).await;
    for (path, body, id) in [
        (
            "/refunds",
            json!({"debit": "{id}", "amount": 100}),
            &a.debit,
        ),
        ("/refunds", json!({"debit": "/debits/{id}"}), &a.debit),
        (
            "/reversals",
            json!({"credit": "{id}", "amount": 100}),
            &a.credit,
        ),
        (
            "/debits",
            json!({"order": "{id}", "source": CARD, "amount": 100}),
            &a.order,
        ),
        (
            "/debits",
            json!({"order": "/orders/{id}", "source": CARD, "amount": 100}),
            &a.order,
        ),
        (
            "/credits",
            json!({"order": "{id}", "destination": BANK, "amount": 100}),
            &a.order,
        ),
    ] {
        assert_like_unknown(
            &app,
            &b,
            Method::POST,
            path,
            Some(&body),
            id,
            StatusCode::BAD_REQUEST,
        )
        .await;
    }
    assert_eq!(rows(&app).await, rows_before, "B's attempts wrote rows");
    assert_eq!(
        a.snapshot(&app).await,
        before,
        "B's attempts changed what A sees"
    );
}

async fn a_marketplaces_lists_never_contain_another_marketplaces_items(app: TestApp) {
    let a = as_resources(&app).await;
    let (_, b) = app.other_marketplace().await;
    // B has resources of its own, so its lists are not trivially empty.
    let (status, body) =
        send(as_secret(&app, &b, Method::POST, "/orders").json(&json!({"merchant": MERCHANT})))
            .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let b_order = body["orders"][0]["id"]
        .as_str()
        .expect("an order id")
        .to_owned();
    let b_debit = as_secret(&app, &b, Method::POST, &format!("/orders/{b_order}/debits"))
        .json(&json!({"source": CARD, "amount": 700}));
    let (status, body) = send(b_debit).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let b_debit = body["debits"][0]["id"]
        .as_str()
        .expect("a debit id")
        .to_owned();

    let a_ids = [
        &a.order,
        &a.debit,
        &a.refund,
        &a.credit,
        &a.reversal,
        &a.event,
    ];
    for (path, collection) in [
        ("/orders?limit=100", "orders"),
        ("/debits?limit=100", "debits"),
        ("/refunds?limit=100", "refunds"),
        ("/credits?limit=100", "credits"),
        ("/reversals?limit=100", "reversals"),
        ("/events?limit=100", "events"),
    ] {
        for filter in ["".to_owned(), format!("&marketplace={}", app.marketplace)] {
            let path = format!("{path}{filter}");
            let (status, body) = send(as_secret(&app, &b, Method::GET, &path)).await;
            assert_eq!(status, StatusCode::OK, "B: {path}: {body}");
            let listed = ids(&body, collection);
            for id in a_ids {
                assert!(!listed.contains(id), "B: {path} lists A's {id}");
            }
            let text = body.to_string();
            for id in a_ids {
                assert!(!text.contains(id.as_str()), "B: {path} mentions A's {id}");
            }
        }
    }
    let (_, body) = send(as_secret(&app, &b, Method::GET, "/orders")).await;
    assert_eq!(ids(&body, "orders"), [b_order.as_str()]);
    let (_, body) = send(as_secret(&app, &b, Method::GET, "/debits")).await;
    assert_eq!(ids(&body, "debits"), [b_debit.as_str()]);
    // And A's lists do not contain B's.
    for (path, collection) in [
        ("/orders?limit=100", "orders"),
        ("/debits?limit=100", "debits"),
        ("/events?limit=100", "events"),
    ] {
        let (status, body) = app.get(path).await;
        assert_eq!(status, StatusCode::OK, "A: {path}: {body}");
        let text = body.to_string();
        assert!(
            !text.contains(&b_order) && !text.contains(&b_debit),
            "A: {path} shows B's resources"
        );
        assert!(!ids(&body, collection).is_empty());
    }
}

/// An `Idempotency-Key` belongs to the marketplace that sent it: B reusing A's key (same
/// path, same body) creates B's own resource and never replays A's.
async fn idempotency_keys_do_not_cross_marketplaces(app: TestApp) {
    let (_, b) = app.other_marketplace().await;
    let key = "shared-key-1";
    let body = json!({"merchant": MERCHANT, "description": "keyed"});
    let (status, a_body) = send(
        app.request(Method::POST, "/orders")
            .header("idempotency-key", key)
            .json(&body),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{a_body}");
    let a_order = a_body["orders"][0]["id"]
        .as_str()
        .expect("an order id")
        .to_owned();
    let (status, b_body) = send(
        as_secret(&app, &b, Method::POST, "/orders")
            .header("idempotency-key", key)
            .json(&body),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{b_body}");
    let b_order = b_body["orders"][0]["id"]
        .as_str()
        .expect("an order id")
        .to_owned();
    assert_ne!(
        b_order, a_order,
        "B got A's order back from A's idempotency key"
    );
    let (status, _) = send(as_secret(
        &app,
        &b,
        Method::GET,
        &format!("/orders/{b_order}"),
    ))
    .await;
    assert_eq!(status, StatusCode::OK);
    // A's replay is still A's own.
    let (status, again) = send(
        app.request(Method::POST, "/orders")
            .header("idempotency-key", key)
            .json(&body),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{again}");
    assert_eq!(again["orders"][0]["id"], json!(a_order));
    // A different body under B's key is B's conflict, whatever A did with the key.
    let other = json!({"merchant": MERCHANT, "description": "other"});
    let (status, conflict) = send(
        as_secret(&app, &b, Method::POST, "/orders")
            .header("idempotency-key", key)
            .json(&other),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{conflict}");
    assert!(!conflict.to_string().contains(&a_order), "{conflict}");
}

async fn the_operator_creates_marketplaces_whose_secret_is_shown_once_and_works(app: TestApp) {
    let (status, body) = send(
        app.operator(Method::POST, "/marketplaces")
            .json(&json!({"name": "Third Market"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let created = &body["marketplaces"][0];
    let id = created["id"].as_str().expect("an id").to_owned();
    assert!(id.starts_with("MP"), "{id}");
    assert_eq!(created["name"], "Third Market");
    let secret = created["secret"]
        .as_str()
        .expect("the secret, once")
        .to_owned();

    // The secret works, as Basic and as Bearer, and acts for the new marketplace only.
    let (status, body) = send(
        as_secret(&app, &secret, Method::POST, "/orders").json(&json!({"merchant": MERCHANT})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let order = body["orders"][0]["id"]
        .as_str()
        .expect("an order id")
        .to_owned();
    let (status, body) = send(anonymous(&app, Method::GET, "/orders").bearer_auth(&secret)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(ids(&body, "orders"), [order.as_str()]);
    let (status, _) = app.get(&format!("/orders/{order}")).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "the first marketplace sees the new one's order"
    );

    // The list shows every marketplace, and no secret.
    let (status, body) = send(app.operator(Method::GET, "/marketplaces")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let listed = ids(&body, "marketplaces");
    assert!(
        listed.contains(&id) && listed.contains(&app.marketplace),
        "{body}"
    );
    assert!(
        !body.to_string().contains(&secret),
        "the list shows a secret: {body}"
    );
    assert!(
        body["marketplaces"]
            .as_array()
            .expect("a list")
            .iter()
            .all(|m| m.get("secret").is_none()),
        "{body}"
    );
}

/// A and B each have an order with a debit; the operator sees both, and `?marketplace=`
/// narrows every list (and nested list) to one.
async fn the_operator_reads_across_marketplaces_and_filters_by_marketplace(app: TestApp) {
    let a_order = app.order().await;
    let a_debit = app.debit(&a_order, CARD, 1_000).await;
    let (b_id, b) = app.other_marketplace().await;
    let (status, body) =
        send(as_secret(&app, &b, Method::POST, "/orders").json(&json!({"merchant": MERCHANT})))
            .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let b_order = body["orders"][0]["id"]
        .as_str()
        .expect("an order id")
        .to_owned();
    let request = as_secret(&app, &b, Method::POST, &format!("/orders/{b_order}/debits"))
        .json(&json!({"source": CARD, "amount": 2_000}));
    let (status, body) = send(request).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let b_debit = body["debits"][0]["id"]
        .as_str()
        .expect("a debit id")
        .to_owned();

    let body = operator_list(&app, "/orders?limit=100").await;
    assert_eq!(ids(&body, "orders"), [b_order.clone(), a_order.clone()]);
    let body = operator_list(&app, "/debits?limit=100").await;
    assert_eq!(ids(&body, "debits"), [b_debit.clone(), a_debit.clone()]);
    let body = operator_list(&app, &format!("/orders?marketplace={}", app.marketplace)).await;
    assert_eq!(ids(&body, "orders"), [a_order.as_str()]);
    let body = operator_list(&app, &format!("/orders?marketplace={b_id}")).await;
    assert_eq!(ids(&body, "orders"), [b_order.as_str()]);
    let body = operator_list(&app, &format!("/debits?marketplace={b_id}&limit=100")).await;
    assert_eq!(ids(&body, "debits"), [b_debit.as_str()]);
    assert!(
        body["meta"]["href"]
            .as_str()
            .is_some_and(|h| h.contains(&b_id)),
        "the page links keep the filter: {body}"
    );

    let all_events = operator_list(&app, "/events?limit=100").await;
    let a_events = operator_list(
        &app,
        &format!("/events?limit=100&marketplace={}", app.marketplace),
    )
    .await;
    let b_events = operator_list(&app, &format!("/events?limit=100&marketplace={b_id}")).await;
    let (all, a_only, b_only) = (
        ids(&all_events, "events"),
        ids(&a_events, "events"),
        ids(&b_events, "events"),
    );
    assert!(!a_only.is_empty() && !b_only.is_empty());
    assert_eq!(all.len(), a_only.len() + b_only.len());
    assert!(a_only.iter().all(|e| !b_only.contains(e)));
    assert!(a_events.to_string().contains(&a_debit) && !a_events.to_string().contains(&b_debit));
    assert!(b_events.to_string().contains(&b_debit) && !b_events.to_string().contains(&a_debit));

    // A single resource of any marketplace, and nested lists narrowed by the filter.
    let (status, body) = send(app.operator(Method::GET, &format!("/debits/{b_debit}"))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["debits"][0]["amount"], 2_000);
    let body = operator_list(&app, &format!("/orders/{a_order}/debits")).await;
    assert_eq!(ids(&body, "debits"), [a_debit.as_str()]);
    let (status, body) = send(app.operator(
        Method::GET,
        &format!("/orders/{a_order}/debits?marketplace={b_id}"),
    ))
    .await;
    assert_refused(
        "operator: A's order filtered to B",
        status,
        &body,
        StatusCode::NOT_FOUND,
        "not-found",
    );
    // An unknown marketplace filter finds nothing; a malformed one is refused.
    let body = operator_list(&app, &format!("/orders?marketplace={}", unknown("MP"))).await;
    assert_eq!(ids(&body, "orders"), Vec::<String>::new());
    let (status, body) = send(app.operator(Method::GET, "/orders?marketplace=MP%20x")).await;
    assert_refused(
        "operator: a malformed filter",
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "request",
    );
}

async fn marketplace_secrets_get_403_on_operator_endpoints(app: TestApp) {
    let order = app.order().await;
    let pending = app.debit(&order, BANK, 1_000).await;
    let (_, b) = app.other_marketplace().await;
    let rows_before = rows(&app).await;
    let marketplaces_before = marketplace_count(&app).await;
    for secret in [app.secret.clone(), b] {
        for (label, request) in [
            (
                "create a marketplace",
                as_secret(&app, &secret, Method::POST, "/marketplaces")
                    .json(&json!({"name": "mine"})),
            ),
            (
                "list marketplaces",
                as_secret(&app, &secret, Method::GET, "/marketplaces"),
            ),
            (
                "report an outcome",
                as_secret(
                    &app,
                    &secret,
                    Method::PUT,
                    &format!("/processor/transactions/{pending}"),
                )
                .json(&json!({"status": "succeeded"})),
            ),
            (
                "report a failure",
                as_secret(
                    &app,
                    &secret,
                    Method::PUT,
                    &format!("/processor/transactions/{pending}"),
                )
                .json(&json!({"status": "failed", "failure_reason": "no"})),
            ),
        ] {
            let (status, body) = send_any(request).await;
            assert_refused(label, status, &body, StatusCode::FORBIDDEN, "forbidden");
        }
    }
    assert_eq!(
        marketplace_count(&app).await,
        marketplaces_before,
        "a marketplace created one"
    );
    assert_eq!(
        rows(&app).await,
        rows_before,
        "a marketplace's outcome was recorded"
    );
    let (_, body) = app.get(&format!("/debits/{pending}")).await;
    assert_eq!(body["debits"][0]["status"], "pending");
    assert_eq!(app.escrow(&order).await, (0, 0));
    // The operator's own call goes through (the 403s above are about the caller).
    let (status, body) = app.settle(&pending, json!({"status": "succeeded"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(app.escrow(&order).await, (1_000, 1_000));
}

async fn the_operator_gets_403_on_creates_and_updates_that_act_for_a_marketplace(app: TestApp) {
    let order = app.order().await;
    let debit = app.debit(&order, CARD, 5_000).await;
    let credit = app.credit(&order, CARD, 1_000).await;
    let rows_before = rows(&app).await;
    let before = (
        app.get(&format!("/orders/{order}")).await,
        app.get(&format!("/debits/{debit}")).await,
    );
    for (method, path, body) in [
        (
            Method::POST,
            format!("/orders/{order}/debits"),
            json!({"source": CARD, "amount": 100}),
        ),
        (
            Method::POST,
            "/debits".to_owned(),
            json!({"source": CARD, "amount": 100, "order": order}),
        ),
        (
            Method::POST,
            "/debits".to_owned(),
            json!({"source": CARD, "amount": 100}),
        ),
        (
            Method::POST,
            format!("/orders/{order}/credits"),
            json!({"destination": BANK, "amount": 100}),
        ),
        (
            Method::POST,
            "/orders".to_owned(),
            json!({"merchant": MERCHANT}),
        ),
        (
            Method::POST,
            format!("/debits/{debit}/refunds"),
            json!({"amount": 100}),
        ),
        (
            Method::POST,
            "/refunds".to_owned(),
            json!({"debit": debit, "amount": 100}),
        ),
        (
            Method::POST,
            format!("/credits/{credit}/reversals"),
            json!({"amount": 100}),
        ),
        (
            Method::PUT,
            format!("/debits/{debit}"),
            json!({"description": "operator was here"}),
        ),
        (
            Method::PUT,
            format!("/orders/{order}"),
            json!({"description": "operator was here"}),
        ),
    ] {
        let label = format!("operator: {method} {path}");
        let (status, answer) = send_any(app.operator(method, &path).json(&body)).await;
        assert_refused(&label, status, &answer, StatusCode::FORBIDDEN, "forbidden");
    }
    assert_eq!(
        rows(&app).await,
        rows_before,
        "the operator wrote as a marketplace"
    );
    let after = (
        app.get(&format!("/orders/{order}")).await,
        app.get(&format!("/debits/{debit}")).await,
    );
    assert_eq!(after, before);
    // The operator may still read them.
    let (status, body) = send(app.operator(Method::GET, &format!("/debits/{debit}"))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

on_both_backends!(
    requests_without_a_valid_secret_get_401_in_the_envelope,
    basic_with_the_secret_as_user_and_bearer_both_authenticate,
    api_secrets_are_stored_only_as_hashes,
    another_marketplace_gets_404_on_every_path_to_a_resource_like_an_unknown_id,
    another_marketplaces_resources_named_in_a_body_are_refused_like_unknown_ones,
    a_marketplaces_lists_never_contain_another_marketplaces_items,
    idempotency_keys_do_not_cross_marketplaces,
    the_operator_creates_marketplaces_whose_secret_is_shown_once_and_works,
    the_operator_reads_across_marketplaces_and_filters_by_marketplace,
    marketplace_secrets_get_403_on_operator_endpoints,
    the_operator_gets_403_on_creates_and_updates_that_act_for_a_marketplace,
);
