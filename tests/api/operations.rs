//! Operators over HTTP: an event's deliveries and their logs, re-delivery, a callback's
//! recent attempts and health, and filtering events.

use hookline::dispatch::Dispatcher;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::*;
use crate::delivery::{delete_callback, deliver_all, fast, register, register_order_created};
use crate::receiver::{Answer, Receiver};

/// The newest event of `type`, visible to the app's marketplace.
async fn newest(app: &TestApp, event_type: &str) -> String {
    let (status, body) = app.get(&format!("/events?type={event_type}&limit=1")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["events"][0]["id"]
        .as_str()
        .expect("an event of that type")
        .to_owned()
}

async fn an_events_deliveries_and_attempt_logs_are_readable(app: TestApp) {
    let mut receiver = Receiver::scripted(vec![Answer::Status(500)], Answer::Status(200)).await;
    let (callback, _) = register_order_created(&app, &receiver.url).await;
    app.order().await;
    deliver_all(&app, &Dispatcher::new(app.db.clone(), fast())).await;
    let event = newest(&app, "order.created").await;

    let (status, body) = app.get(&format!("/events/{event}/callbacks")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let delivery = &body["callbacks"][0];
    assert_eq!(delivery["id"], callback.as_str());
    assert_eq!(delivery["status"], "succeeded");
    assert_eq!(delivery["attempts"], 2);
    assert_eq!(delivery["attempts_remaining"], 0);
    assert!(delivery["attempt_limit"].as_i64().unwrap_or(0) >= 2);
    assert_eq!(delivery["webhook_id"], format!("{event}_{callback}"));
    let logs_href = delivery["logs"].as_str().expect("a logs link").to_owned();

    let (status, logs) = app.get(&logs_href).await;
    assert_eq!(status, StatusCode::OK, "{logs}");
    let logs = logs["callback_logs"].as_array().expect("logs").clone();
    assert_eq!(logs.len(), 2);
    assert_eq!(
        (
            logs[0]["attempt"].clone(),
            logs[0]["status"].clone(),
            logs[0]["response_status"].clone()
        ),
        (json!(1), json!("failed"), json!(500))
    );
    assert_eq!(
        (
            logs[1]["attempt"].clone(),
            logs[1]["status"].clone(),
            logs[1]["response_status"].clone()
        ),
        (json!(2), json!("succeeded"), json!(200))
    );
    for log in &logs {
        assert_eq!(log["request_mime_type"], "application/json");
        assert!(
            log["request_body"]
                .as_str()
                .unwrap_or_default()
                .contains(&event),
            "{log}"
        );
        assert!(
            log["request_headers"]["webhook-signature"]
                .as_str()
                .unwrap_or_default()
                .starts_with("v1,")
        );
        assert!(log["duration_ms"].as_f64().is_some_and(|d| d >= 0.0));
        assert!(log["occurred_at"].is_string());
    }
    assert_eq!(receiver.drain().len(), 2);
}

async fn redelivery_by_hand_requeues_once_while_pending(app: TestApp) {
    let mut receiver = Receiver::start(Answer::Status(200)).await;
    let (callback, _) = register_order_created(&app, &receiver.url).await;
    app.order().await;
    let dispatcher = Dispatcher::new(app.db.clone(), fast());
    deliver_all(&app, &dispatcher).await;
    let event = newest(&app, "order.created").await;
    let path = format!("/events/{event}/callbacks/{callback}");

    let (status, first) = app.put(&path, json!({})).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(first["callbacks"][0]["status"], "pending");
    assert!(
        first["callbacks"][0]["attempts_remaining"]
            .as_i64()
            .unwrap_or(0)
            >= 1
    );
    let (_, again) = app.put(&path, json!({})).await;
    assert_eq!(
        again["callbacks"][0], first["callbacks"][0],
        "a second replay while pending changes nothing"
    );

    deliver_all(&app, &dispatcher).await;
    let got = receiver.drain();
    assert_eq!(got.len(), 2, "delivered once, then once more by hand");
    assert_eq!(got[0].header("webhook-id"), got[1].header("webhook-id"));
    let (_, logs) = app.get(&format!("{path}/logs")).await;
    assert_eq!(logs["callback_logs"].as_array().map(Vec::len), Some(2));
}

async fn failed_deliveries_of_a_time_range_are_requeued_in_bulk(app: TestApp) {
    let receiver = Receiver::start(Answer::Status(503)).await;
    let (callback, _) = register_order_created(&app, &receiver.url).await;
    for _ in 0..3 {
        app.order().await;
    }
    let dispatcher = Dispatcher::new(app.db.clone(), fast());
    deliver_all(&app, &dispatcher).await;
    let path = format!("/callbacks/{callback}/redeliveries");
    let (status, body) = app
        .post(&path, json!({ "from": "2000-01-01T00:00:00Z" }))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["requeued"], 3);
    let (_, body) = app.post(&path, json!({})).await;
    assert_eq!(
        body["requeued"], 0,
        "already queued again: idempotent while pending"
    );
    let (_, failed_only) = app.get("/events?delivery_status=pending").await;
    assert_eq!(failed_only["events"].as_array().map(Vec::len), Some(3));
    let (status, body) = app.post(&path, json!({ "from": "yesterday" })).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(error(&body)["extras"].get("from").is_some());
}

async fn a_callbacks_health_and_recent_attempts_are_readable(app: TestApp) {
    let receiver = Receiver::scripted(vec![Answer::Status(502)], Answer::Status(200)).await;
    let (callback, _) = register_order_created(&app, &receiver.url).await;
    app.order().await;
    deliver_all(&app, &Dispatcher::new(app.db.clone(), fast())).await;
    let (status, body) = app.get(&format!("/callbacks/{callback}/health")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let health = &body["health"][0];
    assert_eq!(health["attempts_last_hour"], 2);
    assert_eq!(health["success_rate_last_hour"], 0.5);
    assert_eq!(health["enabled"], true);
    assert!(health["last_success_at"].is_string());
    assert_eq!(health["last_failure"]["response_status"], 502);
    let (status, body) = app
        .get(&format!("/callbacks/{callback}/attempts?limit=1"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["callback_logs"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        body["callback_logs"][0]["status"], "succeeded",
        "newest first"
    );
}

/// Each callback's attempts are its own, newest first: one registered before the first
/// order has an attempt for each of four, one registered after it for the last three.
async fn a_callbacks_attempts_are_its_own(app: TestApp) {
    let early = Receiver::start(Answer::Status(200)).await;
    let (early_callback, _) = register_order_created(&app, &early.url).await;
    app.order().await;
    let dispatcher = Dispatcher::new(app.db.clone(), fast());
    deliver_all(&app, &dispatcher).await;
    let first = format!("{}_{early_callback}", newest(&app, "order.created").await);
    let late = Receiver::start(Answer::Status(200)).await;
    let (late_callback, _) = register_order_created(&app, &late.url).await;
    for _ in 0..3 {
        app.order().await;
    }
    deliver_all(&app, &dispatcher).await;

    let webhook_ids = |callback: &str| {
        let path = format!("/callbacks/{callback}/attempts?limit=100");
        let app = &app;
        async move {
            let (status, body) = app.get(&path).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            body["callback_logs"]
                .as_array()
                .expect("logs")
                .iter()
                .map(|log| log["webhook_id"].as_str().unwrap_or_default().to_owned())
                .collect::<Vec<_>>()
        }
    };
    let early_ids = webhook_ids(&early_callback).await;
    let late_ids = webhook_ids(&late_callback).await;
    assert_eq!(early_ids.len(), 4, "an order each: {early_ids:?}");
    assert_eq!(
        late_ids.len(),
        3,
        "the orders after it was registered: {late_ids:?}"
    );
    assert!(
        early_ids
            .iter()
            .all(|id| id.ends_with(&format!("_{early_callback}")))
    );
    assert!(
        late_ids
            .iter()
            .all(|id| id.ends_with(&format!("_{late_callback}")))
    );
    assert_eq!(
        early_ids.last(),
        Some(&first),
        "newest first: the first order's is last"
    );
}

async fn events_filter_by_type_entity_time_and_delivery_state(app: TestApp) {
    let receiver = Receiver::start(Answer::Status(410)).await;
    register(
        &app,
        json!({ "url": receiver.url, "event_types": ["debit.succeeded"] }),
    )
    .await;
    let order = app.order().await;
    let debit = app.debit(&order, CARD, 100).await;
    app.debit(&order, CARD, 200).await;
    deliver_all(&app, &Dispatcher::new(app.db.clone(), fast())).await;

    let types = |body: &Value| -> Vec<String> {
        body["events"]
            .as_array()
            .expect("events")
            .iter()
            .map(|e| e["type"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    let (_, body) = app.get("/events?type=debit.created&limit=100").await;
    assert_eq!(types(&body), ["debit.created", "debit.created"]);
    let (_, body) = app.get(&format!("/events?entity={debit}&limit=100")).await;
    assert_eq!(types(&body).len(), 3);
    let (_, body) = app.get("/events?delivery_status=failed&limit=100").await;
    assert_eq!(
        types(&body),
        ["debit.succeeded", "debit.succeeded"],
        "the 410 failed both deliveries"
    );
    let (_, body) = app.get("/events?occurred_until=2000-01-01T00:00:00Z").await;
    assert_eq!(types(&body).len(), 0);
    let (_, body) = app
        .get("/events?occurred_from=2000-01-01T00:00:00Z&type=debit.created&limit=1")
        .await;
    let next = body["meta"]["next"]
        .as_str()
        .expect("a next page")
        .to_owned();
    assert!(
        next.contains("type=debit.created"),
        "filters stay on the page links: {next}"
    );
    let (_, page2) = app.get(&next).await;
    assert_eq!(types(&page2), ["debit.created"]);
    assert!(page2["meta"]["next"].is_null());
    let (status, body) = app.get("/events?delivery_status=lost").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = app.get("/debits?type=debit.created").await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "only events take filters: {body}"
    );
}

async fn another_marketplace_sees_none_of_it_and_the_operator_sees_all(app: TestApp) {
    let receiver = Receiver::start(Answer::Status(200)).await;
    let (callback, _) = register_order_created(&app, &receiver.url).await;
    app.order().await;
    deliver_all(&app, &Dispatcher::new(app.db.clone(), fast())).await;
    let event = newest(&app, "order.created").await;
    let (_, other) = app.other_marketplace().await;
    for (method, path) in [
        (Method::GET, format!("/events/{event}/callbacks")),
        (Method::GET, format!("/events/{event}/callbacks/{callback}")),
        (
            Method::GET,
            format!("/events/{event}/callbacks/{callback}/logs"),
        ),
        (Method::PUT, format!("/events/{event}/callbacks/{callback}")),
        (Method::GET, format!("/callbacks/{callback}/health")),
        (Method::GET, format!("/callbacks/{callback}/attempts")),
        (Method::POST, format!("/callbacks/{callback}/redeliveries")),
    ] {
        let request = app
            .client
            .request(method.clone(), format!("{}{path}", app.base))
            .basic_auth(&other, Some(""))
            .json(&json!({}));
        let (status, body) = send(request).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {body}");
    }
    let (status, body) = send(app.operator(
        Method::GET,
        &format!("/events/{event}/callbacks/{callback}/logs"),
    ))
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["callback_logs"].as_array().map(Vec::len), Some(1));
    let (_, body) = send(app.operator(
        Method::GET,
        &format!("/events?marketplace={}&type=order.created", app.marketplace),
    ))
    .await;
    assert_eq!(body["events"].as_array().map(Vec::len), Some(1));
}

async fn queue_health_counts_due_work_and_the_last_minutes_attempts(app: TestApp) {
    let receiver = Receiver::scripted(vec![Answer::Status(500)], Answer::Status(200)).await;
    register_order_created(&app, &receiver.url).await;
    app.order().await;
    app.order().await;
    let (status, before) = app.get("/queue").await;
    assert_eq!(status, StatusCode::OK, "{before}");
    assert_eq!(before["due"], 2);
    assert!(
        before["oldest_due_age_seconds"]
            .as_f64()
            .is_some_and(|a| a >= 0.0)
    );
    deliver_all(&app, &Dispatcher::new(app.db.clone(), fast())).await;
    let (_, after) = app.get("/queue").await;
    assert_eq!(after["due"], 0);
    assert_eq!(after["in_flight"], 0);
    assert_eq!(
        after["attempts_last_minute"],
        json!({ "succeeded": 2, "failed": 1 })
    );
    let (_, other) = app.other_marketplace().await;
    let (_, theirs) = send(
        app.client
            .get(format!("{}/queue", app.base))
            .basic_auth(&other, Some("")),
    )
    .await;
    assert_eq!(
        theirs["attempts_last_minute"],
        json!({ "succeeded": 0, "failed": 0 }),
        "a marketplace sees its own queue"
    );
    let (_, all) = send(app.operator(Method::GET, "/queue")).await;
    assert_eq!(all["attempts_last_minute"]["succeeded"], 2);
}

async fn redelivery_is_refused_while_an_attempt_is_in_flight_and_after_a_delete(app: TestApp) {
    let receiver = Receiver::start(Answer::Status(500)).await;
    let (callback, _) = register_order_created(&app, &receiver.url).await;
    app.order().await;
    let event = newest(&app, "order.created").await;
    let path = format!("/events/{event}/callbacks/{callback}");
    let claimed = app.db.claim_due(10, 60_000_000).await.expect("claim");
    assert_eq!(claimed.len(), 1);
    let (status, body) = app.put(&path, json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(error(&body)["category_code"], "attempt-in-flight");
    app.db.release(&claimed).await.expect("release");
    delete_callback(&app, &callback).await;
    let (status, _) = app.put(&path, json!({})).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "a deleted callback gets no re-delivery"
    );
}

async fn event_filters_refuse_malformed_values(app: TestApp) {
    for query in [
        "entity=%00",
        "entity=WD%27x",
        "type=Debit%20Created",
        "type=%00",
        "occurred_from=soon",
    ] {
        let (status, body) = app.get(&format!("/events?{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
    }
    let receiver = Receiver::start(Answer::Status(200)).await;
    let (callback, _) = register(&app, json!({ "url": receiver.url })).await;
    let (status, body) = send(
        app.operator(Method::PUT, &format!("/callbacks/{callback}"))
            .json(&json!({ "event_types": ["debit.created"] })),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "the operator does not change subscriptions: {body}"
    );
    let (_, body) = send(
        app.operator(Method::PUT, &format!("/callbacks/{callback}"))
            .json(&json!({ "enabled": false })),
    )
    .await;
    assert_eq!(
        body["callbacks"][0]["disabled_reason"],
        "turned off by the operator"
    );
}

on_both_backends!(
    redelivery_is_refused_while_an_attempt_is_in_flight_and_after_a_delete,
    event_filters_refuse_malformed_values,
    queue_health_counts_due_work_and_the_last_minutes_attempts,
    an_events_deliveries_and_attempt_logs_are_readable,
    redelivery_by_hand_requeues_once_while_pending,
    failed_deliveries_of_a_time_range_are_requeued_in_bulk,
    a_callbacks_health_and_recent_attempts_are_readable,
    a_callbacks_attempts_are_its_own,
    events_filter_by_type_entity_time_and_delivery_state,
    another_marketplace_sees_none_of_it_and_the_operator_sees_all,
);
