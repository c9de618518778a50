//! Money rules: refunds and reversals never exceed what they return, escrow never goes
//! negative, and processor outcomes move escrow and write their events.

use reqwest::StatusCode;
use serde_json::json;

use crate::common::*;

async fn card_debit_settles_at_once_and_raises_order_escrow(app: TestApp) {
    let order = app.order().await;
    let debit = app.debit(&order, CARD, 10_000).await;
    let (_, body) = app.get(&format!("/debits/{debit}")).await;
    assert_eq!(body["debits"][0]["status"], "succeeded");
    assert_eq!(app.escrow(&order).await, (10_000, 10_000));
    assert_eq!(
        app.event_types(&format!("/debits/{debit}")).await,
        ["debit.created", "debit.updated", "debit.succeeded"]
    );
}

async fn bank_debit_stays_pending_until_the_processor_reports(app: TestApp) {
    let order = app.order().await;
    let debit = app.debit(&order, BANK, 5_000).await;
    let (_, body) = app.get(&format!("/debits/{debit}")).await;
    assert_eq!(body["debits"][0]["status"], "pending");
    assert_eq!(
        app.escrow(&order).await,
        (0, 0),
        "pending money is not in escrow"
    );

    let (status, body) = app.settle(&debit, json!({ "status": "succeeded" })).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["debits"][0]["status"], "succeeded");
    assert_eq!(app.escrow(&order).await, (5_000, 5_000));
    assert_eq!(
        app.event_types(&format!("/debits/{debit}")).await,
        ["debit.created", "debit.updated", "debit.succeeded"]
    );
    let (_, events) = app.get(&format!("/debits/{debit}/events")).await;
    let events = events["events"].as_array().expect("events");
    assert_eq!(
        events[0]["occurred_at"], events[1]["occurred_at"],
        "updated and succeeded share occurred_at"
    );
}

async fn refund_without_amount_refunds_what_is_left(app: TestApp) {
    let order = app.order().await;
    let debit = app.debit(&order, CARD, 10_000).await;
    let (status, body) = app
        .post(
            &format!("/debits/{debit}/refunds"),
            json!({ "amount": 3_000 }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // No body at all: a full refund of what is left.
    let (status, body) =
        send(app.request(reqwest::Method::POST, &format!("/debits/{debit}/refunds"))).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["refunds"][0]["amount"], 7_000);
    assert_eq!(body["refunds"][0]["links"]["debit"], debit.as_str());
    assert_eq!(body["refunds"][0]["links"]["order"], order.as_str());
    assert_eq!(app.escrow(&order).await, (0, 0));

    let (status, body) = app
        .post(&format!("/debits/{debit}/refunds"), json!({}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(error(&body)["category_code"], "debit-already-refunded");
}

async fn refund_above_what_is_left_is_an_invalid_amount(app: TestApp) {
    let order = app.order().await;
    let debit = app.debit(&order, CARD, 1_000).await;
    let (status, _) = app
        .post(
            "/refunds",
            json!({ "debit": format!("/debits/{debit}"), "amount": 600 }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = app
        .post("/refunds", json!({ "debit": debit, "amount": 401 }))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(error(&body)["category_code"], "invalid-amount");
    assert!(
        error(&body)["description"]
            .as_str()
            .unwrap_or_default()
            .contains("400"),
        "{body}"
    );
    assert_eq!(app.escrow(&order).await, (400, 400));
}

async fn only_succeeded_debits_can_be_refunded(app: TestApp) {
    let order = app.order().await;
    let debit = app.debit(&order, BANK, 1_000).await;
    let (status, body) = app
        .post(&format!("/debits/{debit}/refunds"), json!({}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(error(&body)["category_code"], "refund-invalid-debit-state");

    app.settle(&debit, json!({ "status": "failed", "failure_reason": "R01", "failure_reason_code": "insufficient-funds" }))
        .await;
    let (status, body) = app
        .post(&format!("/debits/{debit}/refunds"), json!({}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(error(&body)["category_code"], "refund-invalid-debit-state");
}

async fn credit_beyond_escrow_is_refused_with_insufficient_funds(app: TestApp) {
    let order = app.order().await;
    app.debit(&order, CARD, 1_000).await;
    let (status, body) = app
        .post(
            &format!("/orders/{order}/credits"),
            json!({ "destination": BANK, "amount": 1_001 }),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(error(&body)["category_code"], "insufficient-funds");
    assert_eq!(app.escrow(&order).await, (1_000, 1_000));
    let credit = app.credit(&order, BANK, 1_000).await;
    assert_eq!(app.escrow(&order).await, (1_000, 0));
    // Escrow is empty: a refund of the debit would take it below zero.
    let (_, debits) = app.get(&format!("/orders/{order}/debits")).await;
    let debit = debits["debits"][0]["id"]
        .as_str()
        .expect("debit id")
        .to_owned();
    let (status, body) = app
        .post(&format!("/debits/{debit}/refunds"), json!({ "amount": 1 }))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(error(&body)["category_code"], "insufficient-funds");
    let (_, body) = app.get(&format!("/credits/{credit}")).await;
    assert_eq!(body["credits"][0]["status"], "pending");
}

/// The seed "Refunding an Order": debit, credit the merchant, reverse the credit, refund.
async fn refunding_an_order_reverses_the_credit_then_refunds_the_debit(app: TestApp) {
    let order = app.order().await;
    let debit = app.debit(&order, CARD, 10_000).await;
    let credit = app.credit(&order, CARD, 8_000).await;
    assert_eq!(app.escrow(&order).await, (10_000, 2_000));

    let (status, body) = app
        .post(
            &format!("/credits/{credit}/reversals"),
            json!({ "amount": 3_000 }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["reversals"][0]["status"], "succeeded");
    assert_eq!(app.escrow(&order).await, (10_000, 5_000));
    let (status, body) = app
        .post(&format!("/credits/{credit}/reversals"), json!({}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["reversals"][0]["amount"], 5_000);
    assert_eq!(app.escrow(&order).await, (10_000, 10_000));
    let (status, body) = app
        .post(&format!("/credits/{credit}/reversals"), json!({}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(error(&body)["category_code"], "credit-already-reversed");

    let (status, body) = app
        .post(&format!("/debits/{debit}/refunds"), json!({}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(app.escrow(&order).await, (0, 0));
    let (_, body) = app.get(&format!("/orders/{order}/reversals")).await;
    assert_eq!(body["reversals"].as_array().map(Vec::len), Some(2));
    let (_, body) = app.get(&format!("/orders/{order}/refunds")).await;
    assert_eq!(body["refunds"].as_array().map(Vec::len), Some(1));
}

async fn reversal_above_what_is_left_and_of_a_pending_credit_are_refused(app: TestApp) {
    let order = app.order().await;
    app.debit(&order, CARD, 5_000).await;
    let credit = app.credit(&order, BANK, 5_000).await;
    let (status, body) = app
        .post(&format!("/credits/{credit}/reversals"), json!({}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(error(&body)["category_code"], "cannot-reverse-credit");
    app.settle(&credit, json!({ "status": "succeeded" })).await;
    let (status, body) = app
        .post("/reversals", json!({ "credit": credit, "amount": 5_001 }))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(error(&body)["category_code"], "invalid-reversal-amount");
    // A bank reversal is pending: its money reaches escrow only when it succeeds.
    let (status, body) = app
        .post("/reversals", json!({ "credit": credit, "amount": 2_000 }))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let reversal = body["reversals"][0]["id"].as_str().expect("id").to_owned();
    assert_eq!(app.escrow(&order).await, (5_000, 0));
    app.settle(&reversal, json!({ "status": "succeeded" }))
        .await;
    assert_eq!(app.escrow(&order).await, (5_000, 2_000));
}

async fn illegal_transitions_are_refused_and_change_nothing(app: TestApp) {
    let order = app.order().await;
    let debit = app.debit(&order, BANK, 1_000).await;
    let (status, body) = app.settle(&debit, json!({ "status": "pending" })).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(error(&body)["extras"]["status"].is_string(), "{body}");
    app.settle(
        &debit,
        json!({ "status": "failed", "failure_reason": "R01", "failure_reason_code": "nsf" }),
    )
    .await;
    let (status, body) = app.settle(&debit, json!({ "status": "succeeded" })).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(error(&body)["category_code"], "illegal-status-transition");
    let (_, body) = app.get(&format!("/debits/{debit}")).await;
    assert_eq!(body["debits"][0]["status"], "failed");
    assert_eq!(body["debits"][0]["failure_reason"], "R01");
    assert_eq!(body["debits"][0]["failure_reason_code"], "nsf");
    assert_eq!(app.escrow(&order).await, (0, 0));
    assert_eq!(
        app.event_types(&format!("/debits/{debit}")).await,
        ["debit.created", "debit.updated", "debit.failed"]
    );
    // Reporting the status it already has is a harmless repeat.
    let (status, _) = app.settle(&debit, json!({ "status": "failed" })).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(app.event_types(&format!("/debits/{debit}")).await.len(), 3);
}

async fn failure_after_success_puts_escrow_back(app: TestApp) {
    let order = app.order().await;
    let debit = app.debit(&order, BANK, 10_000).await;
    app.settle(&debit, json!({ "status": "succeeded" })).await;
    let (status, body) = app
        .post(
            &format!("/debits/{debit}/refunds"),
            json!({ "amount": 2_500 }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let refund = body["refunds"][0]["id"].as_str().expect("id").to_owned();
    assert_eq!(
        body["refunds"][0]["status"], "pending",
        "a bank refund waits for the processor"
    );
    assert_eq!(app.escrow(&order).await, (7_500, 7_500));

    // The refund fails: its money is back in escrow and refundable again.
    let (status, body) = app
        .settle(
            &refund,
            json!({ "status": "failed", "failure_reason": "account closed" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(app.escrow(&order).await, (10_000, 10_000));
    assert_eq!(
        app.event_types(&format!("/refunds/{refund}")).await,
        ["refund.created", "refund.updated", "refund.failed"]
    );

    // The debit fails weeks after it succeeded: escrow gives its money back.
    let (status, _) = app
        .settle(
            &debit,
            json!({ "status": "failed", "failure_reason_code": "R10" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(app.escrow(&order).await, (0, 0));
    let order_events = app.event_types(&format!("/orders/{order}")).await;
    assert_eq!(
        order_events.first().map(String::as_str),
        Some("order.created")
    );
    assert!(
        order_events.len() >= 4,
        "each escrow move announces the order: {order_events:?}"
    );
}

async fn failed_credit_returns_its_money_to_escrow(app: TestApp) {
    let order = app.order().await;
    app.debit(&order, CARD, 4_000).await;
    let credit = app.credit(&order, BANK, 4_000).await;
    assert_eq!(app.escrow(&order).await, (4_000, 0));
    let (status, body) = app
        .settle(
            &credit,
            json!({ "status": "failed", "failure_reason": "invalid account" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["credits"][0]["failure_reason"], "invalid account");
    assert_eq!(app.escrow(&order).await, (4_000, 4_000));
}

async fn late_failure_beyond_escrow_floors_it_at_zero(app: TestApp) {
    let order = app.order().await;
    let debit = app.debit(&order, BANK, 1_000).await;
    app.settle(&debit, json!({ "status": "succeeded" })).await;
    app.credit(&order, CARD, 1_000).await;
    let (status, _) = app.settle(&debit, json!({ "status": "failed" })).await;
    assert_eq!(status, StatusCode::OK);
    let (amount, escrowed) = app.escrow(&order).await;
    assert_eq!((amount, escrowed), (0, 0), "escrow never goes negative");
    let row = sqlx::query("SELECT escrow_shortfall FROM orders WHERE id = $1")
        .bind(&order)
        .fetch_one(app.db.reader())
        .await
        .expect("the order");
    let shortfall: i64 = sqlx::Row::get(&row, "escrow_shortfall");
    assert_eq!(
        shortfall, 1_000,
        "the uncovered money is recorded, not lost"
    );
}

async fn debits_take_the_order_description_unless_they_bring_one(app: TestApp) {
    let order = app.order().await;
    let (_, body) = app
        .post(
            &format!("/orders/{order}/debits"),
            json!({ "source": CARD, "amount": 5 }),
        )
        .await;
    assert_eq!(body["debits"][0]["description"], "order");
    let (_, body) = app
        .post(
            &format!("/orders/{order}/debits"),
            json!({ "source": CARD, "amount": 5, "description": "own" }),
        )
        .await;
    assert_eq!(body["debits"][0]["description"], "own");
}

on_both_backends!(
    card_debit_settles_at_once_and_raises_order_escrow,
    bank_debit_stays_pending_until_the_processor_reports,
    refund_without_amount_refunds_what_is_left,
    refund_above_what_is_left_is_an_invalid_amount,
    only_succeeded_debits_can_be_refunded,
    credit_beyond_escrow_is_refused_with_insufficient_funds,
    refunding_an_order_reverses_the_credit_then_refunds_the_debit,
    reversal_above_what_is_left_and_of_a_pending_credit_are_refused,
    illegal_transitions_are_refused_and_change_nothing,
    failure_after_success_puts_escrow_back,
    failed_credit_returns_its_money_to_escrow,
    late_failure_beyond_escrow_floors_it_at_zero,
    debits_take_the_order_description_unless_they_bring_one,
);
