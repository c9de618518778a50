//! The endpoints: paths, envelopes, lists and their pages, updates and events.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::*;

fn ids(body: &Value, collection: &str) -> Vec<String> {
    body[collection]
        .as_array()
        .expect("a collection")
        .iter()
        .map(|item| item["id"].as_str().expect("an id").to_owned())
        .collect()
}

async fn orders_are_created_under_a_customer_as_balanced_did(app: TestApp) {
    let (status, body) = app
        .post("/customers/CU1aISiQGTsURlHIHO0Ajnag/orders", json!({}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let order = &body["orders"][0];
    assert_eq!(order["links"]["merchant"], "CU1aISiQGTsURlHIHO0Ajnag");
    assert_eq!(order["amount"], 0);
    assert_eq!(body["links"]["orders.debits"], "/orders/{orders.id}/debits");
    let id = order["id"].as_str().expect("id");
    assert_eq!(order["href"], format!("/orders/{id}"));
    assert_eq!(
        app.event_types(&format!("/orders/{id}")).await,
        ["order.created"]
    );
}

async fn refunds_are_listed_per_debit_per_order_and_per_marketplace(app: TestApp) {
    let order_a = app.order().await;
    let order_b = app.order().await;
    let debit_a = app.debit(&order_a, CARD, 1_000).await;
    let debit_b = app.debit(&order_b, CARD, 1_000).await;
    for debit in [&debit_a, &debit_a, &debit_b] {
        let (status, _) = app
            .post(
                &format!("/debits/{debit}/refunds"),
                json!({ "amount": 100 }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let (_, per_debit) = app.get(&format!("/debits/{debit_a}/refunds")).await;
    let (_, per_order) = app.get(&format!("/orders/{order_b}/refunds")).await;
    let (_, all) = app.get("/refunds").await;
    assert_eq!(ids(&per_debit, "refunds").len(), 2);
    assert_eq!(ids(&per_order, "refunds").len(), 1);
    assert_eq!(ids(&all, "refunds").len(), 3);
    assert_eq!(per_order["refunds"][0]["links"]["debit"], debit_b.as_str());
}

async fn lists_page_by_cursor_and_stay_correct_as_items_arrive(app: TestApp) {
    for _ in 0..5 {
        app.order().await;
    }
    let (status, first) = app.get("/orders?limit=2").await;
    assert_eq!(status, StatusCode::OK);
    let page1 = ids(&first, "orders");
    assert_eq!(page1.len(), 2);
    assert_eq!(first["meta"]["limit"], 2);
    assert!(first["meta"]["previous"].is_null());
    let next = first["meta"]["next"]
        .as_str()
        .expect("a next link")
        .to_owned();

    // A new order arrives: it must not shift the pages already being walked.
    let newest = app.order().await;
    let (_, second) = app.get(&next).await;
    let page2 = ids(&second, "orders");
    let (_, third) = app
        .get(second["meta"]["next"].as_str().expect("next"))
        .await;
    let page3 = ids(&third, "orders");
    assert_eq!(page3.len(), 1);
    assert!(third["meta"]["next"].is_null());
    let walked: Vec<String> = [page1.clone(), page2.clone(), page3].concat();
    assert_eq!(walked.len(), 5);
    assert!(!walked.contains(&newest));
    assert!(
        walked.windows(2).all(|w| w[0] > w[1]),
        "newest first, no repeats: {walked:?}"
    );

    // And back: the page before page 2 is page 1.
    let (_, back) = app
        .get(second["meta"]["previous"].as_str().expect("previous"))
        .await;
    assert_eq!(ids(&back, "orders"), page1);
}

async fn put_updates_description_and_meta_and_announces_it(app: TestApp) {
    let order = app.order().await;
    let debit = app.debit(&order, CARD, 500).await;
    let (status, body) = app
        .post(&format!("/debits/{debit}/refunds"), json!({}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let refund = body["refunds"][0]["id"].as_str().expect("id").to_owned();
    let credit_order = app.order().await;
    app.debit(&credit_order, CARD, 500).await;
    let credit = app.credit(&credit_order, CARD, 500).await;
    let (_, body) = app
        .post(&format!("/credits/{credit}/reversals"), json!({}))
        .await;
    let reversal = body["reversals"][0]["id"].as_str().expect("id").to_owned();

    for (collection, id) in [
        ("orders", &order),
        ("debits", &debit),
        ("refunds", &refund),
        ("credits", &credit),
        ("reversals", &reversal),
    ] {
        let path = format!("/{collection}/{id}");
        let (status, body) = app
            .put(
                &path,
                json!({ "description": "changed", "meta": { "ticket": "42" } }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{collection}: {body}");
        assert_eq!(body[collection][0]["description"], "changed");
        assert_eq!(body[collection][0]["meta"], json!({ "ticket": "42" }));
        let (_, shown) = app.get(&path).await;
        assert_eq!(shown[collection][0]["meta"]["ticket"], "42");
        let singular = collection.trim_end_matches('s');
        let types = app.event_types(&path).await;
        assert_eq!(
            types.last().map(String::as_str),
            Some(format!("{singular}.updated").as_str()),
            "{types:?}"
        );
        // description: null clears it; meta left out stays.
        let (_, body) = app.put(&path, json!({ "description": null })).await;
        assert!(body[collection][0]["description"].is_null());
        assert_eq!(body[collection][0]["meta"]["ticket"], "42");
    }
}

async fn events_carry_the_entity_as_it_was_when_they_occurred(app: TestApp) {
    let order = app.order().await;
    let debit = app.debit(&order, BANK, 900).await;
    app.settle(&debit, json!({ "status": "succeeded" })).await;
    let (_, list) = app.get(&format!("/debits/{debit}/events")).await;
    let events = list["events"].as_array().expect("events");
    let created = events
        .iter()
        .find(|e| e["type"] == "debit.created")
        .expect("debit.created");
    let succeeded = events
        .iter()
        .find(|e| e["type"] == "debit.succeeded")
        .expect("debit.succeeded");
    assert_eq!(created["entity"]["debits"][0]["status"], "pending");
    assert_eq!(succeeded["entity"]["debits"][0]["status"], "succeeded");
    assert_eq!(
        created["callback_statuses"],
        json!({ "pending": 0, "retrying": 0, "succeeded": 0, "failed": 0 })
    );

    let id = succeeded["id"].as_str().expect("id");
    let (status, shown) = app.get(&format!("/events/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(shown["events"][0], *succeeded);
    assert_eq!(shown["events"][0]["href"], format!("/events/{id}"));
    let (_, all) = app.get("/events?limit=100").await;
    assert!(ids(&all, "events").contains(&id.to_owned()));
}

async fn credits_and_debits_can_be_created_at_the_top_level_with_an_order_link(app: TestApp) {
    let order = app.order().await;
    let (status, body) = app
        .post(
            "/debits",
            json!({ "source": CARD, "amount": 300, "order": format!("/orders/{order}") }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["debits"][0]["links"]["order"], order.as_str());
    assert_eq!(
        body["debits"][0]["appears_on_statement_as"],
        "BAL*test market"
    );
    let (status, body) = app
        .post(
            "/credits",
            json!({ "destination": BANK, "amount": 300, "order": order }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = app
        .post("/credits", json!({ "destination": BANK, "amount": 300 }))
        .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "a credit needs an order: {body}"
    );
    assert_eq!(error(&body)["extras"]["order"], "is required");
    let (status, body) = app
        .post("/debits", json!({ "source": CARD, "amount": 300 }))
        .await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "a debit may stand alone: {body}"
    );
    assert!(body["debits"][0]["links"]["order"].is_null());
}

async fn health_and_readiness_answer_without_credentials(app: TestApp) {
    for (path, status) in [("/healthz", "ok"), ("/readyz", "ready")] {
        let (code, body) = send(app.client.get(format!("{}{path}", app.base))).await;
        assert_eq!(code, StatusCode::OK, "{path}: {body}");
        assert_eq!(body["status"], status);
    }
    // A database missing the newest migration is not ready.
    sqlx::query(
        "DELETE FROM _sqlx_migrations WHERE version = (SELECT MAX(version) FROM _sqlx_migrations)",
    )
    .execute(app.db.writer())
    .await
    .expect("forget a migration");
    let (code, body) = send(app.client.get(format!("{}/readyz", app.base))).await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
}

on_both_backends!(
    health_and_readiness_answer_without_credentials,
    orders_are_created_under_a_customer_as_balanced_did,
    refunds_are_listed_per_debit_per_order_and_per_marketplace,
    lists_page_by_cursor_and_stay_correct_as_items_arrive,
    put_updates_description_and_meta_and_announces_it,
    events_carry_the_entity_as_it_was_when_they_occurred,
    credits_and_debits_can_be_created_at_the_top_level_with_an_order_link,
);
