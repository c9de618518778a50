//! `Idempotency-Key` on creates, and `version` (optimistic locking) on updates.

use futures::future::join_all;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::Row;

use crate::common::*;

async fn post_with_key(app: &TestApp, path: &str, key: &str, body: Value) -> (StatusCode, Value) {
    send(
        app.request(Method::POST, path)
            .header("Idempotency-Key", key)
            .json(&body),
    )
    .await
}

async fn rows(app: &TestApp, sql: &'static str) -> i64 {
    sqlx::query(sql)
        .fetch_one(app.db.reader())
        .await
        .expect("count")
        .get::<i64, _>(0)
}

async fn repeated_create_with_the_same_key_returns_the_original_and_creates_nothing(app: TestApp) {
    let order = app.order().await;
    let body = json!({ "source": CARD, "amount": 2_000 });
    let path = format!("/orders/{order}/debits");
    let (s1, first) = post_with_key(&app, &path, "debit-1", body.clone()).await;
    let events = rows(&app, "SELECT COUNT(*) FROM events").await;
    let (s2, second) = post_with_key(&app, &path, "debit-1", body).await;
    assert_eq!((s1, s2), (StatusCode::CREATED, StatusCode::CREATED));
    assert_eq!(
        first, second,
        "the repeat answers with the original response"
    );
    assert_eq!(rows(&app, "SELECT COUNT(*) FROM transactions").await, 1);
    assert_eq!(
        rows(&app, "SELECT COUNT(*) FROM events").await,
        events,
        "no new events"
    );
    assert_eq!(app.escrow(&order).await, (2_000, 2_000));
}

async fn same_key_with_a_different_body_is_refused(app: TestApp) {
    let order = app.order().await;
    let path = format!("/orders/{order}/debits");
    post_with_key(&app, &path, "k", json!({ "source": CARD, "amount": 2_000 })).await;
    let (status, body) =
        post_with_key(&app, &path, "k", json!({ "source": CARD, "amount": 2_001 })).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(error(&body)["category_code"], "idempotency-key-reused");
    assert!(
        error(&body)["description"]
            .as_str()
            .unwrap_or_default()
            .contains("Idempotency-Key")
    );
    assert_eq!(rows(&app, "SELECT COUNT(*) FROM transactions").await, 1);
}

async fn repeated_refund_with_a_key_refunds_once(app: TestApp) {
    let order = app.order().await;
    let debit = app.debit(&order, CARD, 1_000).await;
    let path = format!("/debits/{debit}/refunds");
    let (_, a) = post_with_key(&app, &path, "refund-once", json!({ "amount": 300 })).await;
    let (_, b) = post_with_key(&app, &path, "refund-once", json!({ "amount": 300 })).await;
    assert_eq!(a["refunds"][0]["id"], b["refunds"][0]["id"]);
    assert_eq!(app.escrow(&order).await, (700, 700));
}

async fn concurrent_creates_with_one_key_create_one_resource(app: TestApp) {
    let order = app.order().await;
    let path = format!("/orders/{order}/debits");
    let body = json!({ "source": CARD, "amount": 100 });
    let answers =
        join_all((0..10).map(|_| post_with_key(&app, &path, "racing", body.clone()))).await;
    let ids: Vec<&Value> = answers
        .iter()
        .map(|(s, b)| {
            assert_eq!(*s, StatusCode::CREATED, "{b}");
            &b["debits"][0]["id"]
        })
        .collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    assert_eq!(rows(&app, "SELECT COUNT(*) FROM transactions").await, 1);
    assert_eq!(app.escrow(&order).await, (100, 100));
}

async fn keys_belong_to_one_marketplace(app: TestApp) {
    let (_, other_secret) = app.other_marketplace().await;
    let (status, mine) = post_with_key(
        &app,
        "/orders",
        "shared-key",
        json!({ "merchant": MERCHANT }),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, theirs) = send(
        app.client
            .post(format!("{}/orders", app.base))
            .basic_auth(&other_secret, Some(""))
            .header("Idempotency-Key", "shared-key")
            .json(&json!({ "merchant": MERCHANT })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_ne!(mine["orders"][0]["id"], theirs["orders"][0]["id"]);
}

async fn stale_version_gets_409_and_current_version_updates(app: TestApp) {
    let order = app.order().await;
    let debit = app.debit(&order, CARD, 100).await;
    let response = app
        .request(Method::GET, &format!("/debits/{debit}"))
        .send()
        .await
        .expect("get");
    let etag = response
        .headers()
        .get("etag")
        .expect("an ETag")
        .to_str()
        .expect("ascii")
        .to_owned();
    assert_eq!(etag, "\"1\"");

    let (status, body) = app
        .put(
            &format!("/debits/{debit}"),
            json!({ "description": "first", "version": 1 }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["debits"][0]["description"], "first");
    let (status, body) = app
        .put(
            &format!("/debits/{debit}"),
            json!({ "description": "late", "version": 1 }),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(error(&body)["category_code"], "version-conflict");
    assert_eq!(error(&body)["extras"]["version"], 2);

    let (status, _) = send(
        app.request(Method::PUT, &format!("/orders/{order}"))
            .header("If-Match", "\"7\"")
            .json(&json!({ "meta": {} })),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "If-Match is honoured too");
    let (_, body) = app.get(&format!("/debits/{debit}")).await;
    assert_eq!(
        body["debits"][0]["description"], "first",
        "the stale update changed nothing"
    );
}

on_both_backends!(
    repeated_create_with_the_same_key_returns_the_original_and_creates_nothing,
    same_key_with_a_different_body_is_refused,
    repeated_refund_with_a_key_refunds_once,
    concurrent_creates_with_one_key_create_one_resource,
    keys_belong_to_one_marketplace,
    stale_version_gets_409_and_current_version_updates,
);
