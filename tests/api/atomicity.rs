//! The outbox is written in the same database transaction as the change: when that
//! transaction fails, neither the change nor any of its events remain.
//!
//! The failure is real: a trigger makes the database refuse one event type, so the
//! transaction fails after the change itself was written.

use hookline::store::Backend;
use reqwest::StatusCode;
use serde_json::json;
use sqlx::Row;

use crate::common::*;

/// Makes the database refuse events of `event_type` until [`allow_events`].
async fn refuse_events(app: &TestApp, event_type: &str) {
    let sql = match app.backend() {
        Backend::Sqlite => format!(
            "CREATE TRIGGER refuse_events BEFORE INSERT ON events WHEN NEW.type = '{event_type}' \
             BEGIN SELECT RAISE(ABORT, 'injected failure'); END;"
        ),
        Backend::Postgres => format!(
            "CREATE FUNCTION refuse_event() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'injected failure'; END $$ \
             LANGUAGE plpgsql; \
             CREATE TRIGGER refuse_events BEFORE INSERT ON events FOR EACH ROW \
             WHEN (NEW.type = '{event_type}') EXECUTE FUNCTION refuse_event();"
        ),
    };
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(app.db.writer())
        .await
        .expect("install the trigger");
}

async fn allow_events(app: &TestApp) {
    let sql = match app.backend() {
        Backend::Sqlite => "DROP TRIGGER refuse_events",
        Backend::Postgres => "DROP TRIGGER refuse_events ON events; DROP FUNCTION refuse_event();",
    };
    sqlx::raw_sql(sql)
        .execute(app.db.writer())
        .await
        .expect("drop the trigger");
}

async fn count(app: &TestApp, sql: &'static str) -> i64 {
    sqlx::query(sql)
        .fetch_one(app.db.reader())
        .await
        .expect("count")
        .get::<i64, _>(0)
}

async fn failed_refund_transaction_leaves_no_refund_no_escrow_change_and_no_event(app: TestApp) {
    let order = app.order().await;
    let debit = app.debit(&order, CARD, 10_000).await;
    let events_before = count(&app, "SELECT COUNT(*) FROM events").await;
    refuse_events(&app, "refund.created").await;

    let (status, body) = app
        .post(
            &format!("/debits/{debit}/refunds"),
            json!({ "amount": 4_000 }),
        )
        .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    let description = error(&body)["description"].as_str().unwrap_or_default();
    assert!(
        !description.contains("injected"),
        "internals leaked: {description}"
    );

    assert_eq!(
        count(
            &app,
            "SELECT COUNT(*) FROM transactions WHERE kind = 'refund'"
        )
        .await,
        0
    );
    assert_eq!(
        count(&app, "SELECT COUNT(*) FROM events").await,
        events_before,
        "no event of the failed change"
    );
    assert_eq!(
        count(
            &app,
            "SELECT CAST(SUM(amount_returned) AS BIGINT) FROM transactions WHERE kind = 'debit'"
        )
        .await,
        0
    );
    assert_eq!(app.escrow(&order).await, (10_000, 10_000));

    // The same request goes through once the database accepts the event again.
    allow_events(&app).await;
    let (status, body) = app
        .post(
            &format!("/debits/{debit}/refunds"),
            json!({ "amount": 4_000 }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(app.escrow(&order).await, (6_000, 6_000));
}

async fn failed_status_change_leaves_the_old_status_and_no_event(app: TestApp) {
    let order = app.order().await;
    let debit = app.debit(&order, BANK, 2_000).await;
    let events_before = count(&app, "SELECT COUNT(*) FROM events").await;
    refuse_events(&app, "debit.succeeded").await;

    let (status, _) = app.settle(&debit, json!({ "status": "succeeded" })).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    let (_, body) = app.get(&format!("/debits/{debit}")).await;
    assert_eq!(body["debits"][0]["status"], "pending");
    assert_eq!(app.escrow(&order).await, (0, 0));
    // Not even the debit.updated event written before the refused one survives.
    assert_eq!(
        count(&app, "SELECT COUNT(*) FROM events").await,
        events_before
    );
    allow_events(&app).await;
}

async fn failed_creation_leaves_no_debit_and_no_event(app: TestApp) {
    let order = app.order().await;
    let events_before = count(&app, "SELECT COUNT(*) FROM events").await;
    refuse_events(&app, "order.updated").await;
    // The debit row and its own events are written before the order's event is refused.
    let (status, _) = app
        .post(
            &format!("/orders/{order}/debits"),
            json!({ "source": CARD, "amount": 500 }),
        )
        .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(count(&app, "SELECT COUNT(*) FROM transactions").await, 0);
    assert_eq!(
        count(&app, "SELECT COUNT(*) FROM events").await,
        events_before
    );
    assert_eq!(app.escrow(&order).await, (0, 0));
    allow_events(&app).await;
}

on_both_backends!(
    failed_refund_transaction_leaves_no_refund_no_escrow_change_and_no_event,
    failed_status_change_leaves_the_old_status_and_no_event,
    failed_creation_leaves_no_debit_and_no_event,
);
