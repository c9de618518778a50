//! Money rules under real concurrency: many requests in flight at once against one debit,
//! credit or order. Exactly those that fit succeed.

use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::*;

/// Sends every `(path, body)` at once and returns the answers in the same order.
async fn all_at_once(app: &TestApp, requests: Vec<(String, Value)>) -> Vec<(StatusCode, Value)> {
    join_all(
        requests
            .iter()
            .map(|(path, body)| app.post(path, body.clone())),
    )
    .await
}

async fn concurrent_refunds_beyond_the_debit_exactly_those_that_fit_succeed(app: TestApp) {
    let order = app.order().await;
    let debit = app.debit(&order, CARD, 10_000).await;
    let path = format!("/debits/{debit}/refunds");
    let answers = all_at_once(
        &app,
        (0..25)
            .map(|_| (path.clone(), json!({ "amount": 1_000 })))
            .collect(),
    )
    .await;

    let created = answers
        .iter()
        .filter(|(s, _)| *s == StatusCode::CREATED)
        .count();
    assert_eq!(
        created, 10,
        "ten refunds of 1,000 fit in 10,000: {answers:?}"
    );
    for (status, body) in answers.iter().filter(|(s, _)| *s != StatusCode::CREATED) {
        assert_eq!(*status, StatusCode::CONFLICT, "{body}");
        assert_eq!(error(body)["category_code"], "debit-already-refunded");
    }
    let (_, refunds) = app.get(&format!("{path}?limit=100")).await;
    let total: i64 = refunds["refunds"]
        .as_array()
        .expect("refunds")
        .iter()
        .map(|r| r["amount"].as_i64().unwrap_or(0))
        .sum();
    assert_eq!(total, 10_000);
    assert_eq!(app.escrow(&order).await, (0, 0));
}

async fn concurrent_refunds_of_mixed_amounts_never_sum_past_the_debit(app: TestApp) {
    let order = app.order().await;
    let debit = app.debit(&order, CARD, 10_000).await;
    let amounts = [
        3_000, 3_000, 3_000, 3_000, 2_500, 2_000, 1_500, 1_000, 700, 300, 200, 100,
    ];
    let path = format!("/debits/{debit}/refunds");
    let answers = all_at_once(
        &app,
        amounts
            .iter()
            .map(|a| (path.clone(), json!({ "amount": a })))
            .collect(),
    )
    .await;

    let refunded: i64 = amounts
        .iter()
        .zip(&answers)
        .filter(|(_, (s, _))| *s == StatusCode::CREATED)
        .map(|(a, _)| a)
        .sum();
    assert!(refunded <= 10_000, "refunds sum past the debit: {refunded}");
    let left = 10_000 - refunded;
    for (amount, (status, body)) in amounts.iter().zip(&answers) {
        if *status != StatusCode::CREATED {
            // What is left only shrinks, so a refused refund did not fit when refused.
            assert!(
                *amount > left,
                "a refund of {amount} was refused though {left} was left: {body}"
            );
            let code = error(body)["category_code"].as_str().unwrap_or_default();
            assert!(
                matches!(code, "invalid-amount" | "debit-already-refunded"),
                "{body}"
            );
        }
    }
    assert_eq!(app.escrow(&order).await, (left, left));
}

async fn concurrent_full_refunds_only_one_succeeds(app: TestApp) {
    let order = app.order().await;
    let debit = app.debit(&order, CARD, 7_777).await;
    let path = format!("/debits/{debit}/refunds");
    let answers = all_at_once(&app, (0..10).map(|_| (path.clone(), json!({}))).collect()).await;
    let created: Vec<_> = answers
        .iter()
        .filter(|(s, _)| *s == StatusCode::CREATED)
        .collect();
    assert_eq!(created.len(), 1, "{answers:?}");
    assert_eq!(created[0].1["refunds"][0]["amount"], 7_777);
}

async fn concurrent_credits_never_take_escrow_below_zero(app: TestApp) {
    let order = app.order().await;
    app.debit(&order, CARD, 10_000).await;
    let path = format!("/orders/{order}/credits");
    let answers = all_at_once(
        &app,
        (0..12)
            .map(|_| {
                (
                    path.clone(),
                    json!({ "destination": BANK, "amount": 3_000 }),
                )
            })
            .collect(),
    )
    .await;
    let created = answers
        .iter()
        .filter(|(s, _)| *s == StatusCode::CREATED)
        .count();
    assert_eq!(
        created, 3,
        "three credits of 3,000 fit in 10,000: {answers:?}"
    );
    for (status, body) in answers.iter().filter(|(s, _)| *s != StatusCode::CREATED) {
        assert_eq!(*status, StatusCode::CONFLICT, "{body}");
        assert_eq!(error(body)["category_code"], "insufficient-funds");
    }
    assert_eq!(app.escrow(&order).await, (10_000, 1_000));
}

async fn concurrent_reversals_beyond_the_credit_exactly_those_that_fit_succeed(app: TestApp) {
    let order = app.order().await;
    app.debit(&order, CARD, 5_000).await;
    let credit = app.credit(&order, CARD, 5_000).await;
    let path = format!("/credits/{credit}/reversals");
    let answers = all_at_once(
        &app,
        (0..12)
            .map(|_| (path.clone(), json!({ "amount": 1_000 })))
            .collect(),
    )
    .await;
    let created = answers
        .iter()
        .filter(|(s, _)| *s == StatusCode::CREATED)
        .count();
    assert_eq!(created, 5, "{answers:?}");
    for (status, body) in answers.iter().filter(|(s, _)| *s != StatusCode::CREATED) {
        assert_eq!(*status, StatusCode::CONFLICT, "{body}");
        assert_eq!(error(body)["category_code"], "credit-already-reversed");
    }
    assert_eq!(app.escrow(&order).await, (5_000, 5_000));
}

/// A refund and the debit's late failure, at once: whichever wins, the order ends empty and
/// nothing is short (the refund either took its money first or was refused).
async fn a_late_debit_failure_racing_a_full_refund_leaves_the_order_consistent(app: TestApp) {
    for _ in 0..5 {
        let order = app.order().await;
        let debit = app.debit(&order, CARD, 10_000).await;
        let refund_path = format!("/debits/{debit}/refunds");
        let (refund, failure) = tokio::join!(
            app.post(&refund_path, json!({})),
            app.settle(&debit, json!({ "status": "failed" })),
        );
        assert_eq!(failure.0, StatusCode::OK, "{}", failure.1);
        assert!(
            matches!(refund.0, StatusCode::CREATED | StatusCode::BAD_REQUEST),
            "{}",
            refund.1
        );
        assert_eq!(app.escrow(&order).await, (0, 0));
        let row = sqlx::query("SELECT escrow_shortfall FROM orders WHERE id = $1")
            .bind(&order)
            .fetch_one(app.db.reader())
            .await
            .expect("order");
        assert_eq!(sqlx::Row::get::<i64, _>(&row, "escrow_shortfall"), 0);
    }
}

/// A reversal succeeding while its credit fails: the credit's money comes back once.
async fn a_reversal_success_racing_its_credit_failure_returns_the_money_once(app: TestApp) {
    for _ in 0..5 {
        let order = app.order().await;
        app.debit(&order, CARD, 10_000).await;
        let credit = app.credit(&order, BANK, 10_000).await;
        app.settle(&credit, json!({ "status": "succeeded" })).await;
        let (status, body) = app
            .post(&format!("/credits/{credit}/reversals"), json!({}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let reversal = body["reversals"][0]["id"].as_str().expect("id").to_owned();
        let (a, b) = tokio::join!(
            app.settle(&reversal, json!({ "status": "succeeded" })),
            app.settle(&credit, json!({ "status": "failed" })),
        );
        assert_eq!(
            (a.0, b.0),
            (StatusCode::OK, StatusCode::OK),
            "{} {}",
            a.1,
            b.1
        );
        assert_eq!(app.escrow(&order).await, (10_000, 10_000));
    }
}

/// Concurrent retries of one full refund with one key: every answer is the one refund.
async fn concurrent_refunds_with_one_key_all_answer_the_same_refund(app: TestApp) {
    let order = app.order().await;
    let debit = app.debit(&order, CARD, 5_000).await;
    let path = format!("/debits/{debit}/refunds");
    let answers = join_all((0..8).map(|_| {
        send(
            app.request(reqwest::Method::POST, &path)
                .header("Idempotency-Key", "refund-1")
                .json(&json!({})),
        )
    }))
    .await;
    let ids: Vec<&Value> = answers
        .iter()
        .map(|(s, b)| {
            assert_eq!(*s, StatusCode::CREATED, "{b}");
            &b["refunds"][0]["id"]
        })
        .collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    assert_eq!(app.escrow(&order).await, (0, 0));
}

on_both_backends!(
    a_late_debit_failure_racing_a_full_refund_leaves_the_order_consistent,
    a_reversal_success_racing_its_credit_failure_returns_the_money_once,
    concurrent_refunds_with_one_key_all_answer_the_same_refund,
    concurrent_refunds_beyond_the_debit_exactly_those_that_fit_succeed,
    concurrent_refunds_of_mixed_amounts_never_sum_past_the_debit,
    concurrent_full_refunds_only_one_succeeds,
    concurrent_credits_never_take_escrow_below_zero,
    concurrent_reversals_beyond_the_credit_exactly_those_that_fit_succeed,
);
