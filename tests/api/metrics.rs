//! `GET /metrics`: Prometheus text with delivery attempts by outcome, their duration, the
//! attempt log's writes and the attempts' waits for them, and the delivery queue as the
//! database has it.
//!
//! Attempt counters are global to the test binary, and other tests deliver at the same
//! time, so those checks compare values before and after with `>=`. The queue gauges come
//! from each test's own database and are checked exactly.

use std::time::{Duration, Instant};

use hookline::dispatch::schedule::RetrySchedule;
use hookline::dispatch::{DispatchConfig, Dispatcher};
use reqwest::StatusCode;
use serde_json::json;
use sqlx::Row;

use crate::common::*;
use crate::receiver::{Answer, Receiver};

const SUCCEEDED: &str = "hookline_delivery_attempts_total{outcome=\"succeeded\"}";
const RETRYING: &str = "hookline_delivery_attempts_total{outcome=\"retrying\"}";
const FAILED: &str = "hookline_delivery_attempts_total{outcome=\"failed\"}";
const DURATION_COUNT: &str = "hookline_delivery_attempt_duration_seconds_count";
const LOG_WRITES: &str = "hookline_attempt_log_write_seconds_count";
const LOG_WAITS: &str = "hookline_attempt_log_wait_seconds_count";
const DUE: &str = "hookline_queue_due_deliveries";
const OLDEST_AGE: &str = "hookline_queue_oldest_due_age_seconds";
const IN_FLIGHT: &str = "hookline_queue_in_flight_deliveries";

/// Millisecond retries, two attempts at most, 127.0.0.0/8 allowed.
fn fast() -> DispatchConfig {
    let config = crate::delivery::fast();
    DispatchConfig {
        schedule: RetrySchedule {
            max_attempts: 2,
            ..config.schedule
        },
        ..config
    }
}

/// `/metrics` without any credential: its text, after checking status and content type.
async fn scrape(app: &TestApp) -> String {
    let response = app
        .client
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .expect("the request reaches the app");
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    response.text().await.expect("a body")
}

/// The value of one series (name with its labels, as rendered), if the text has it.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().expect("a number"))
}

fn must(text: &str, series: &str) -> f64 {
    value(text, series).unwrap_or_else(|| panic!("{series} missing from:\n{text}"))
}

/// The queue gauges: `(due, oldest due age in seconds, in flight)`.
fn queue(text: &str) -> (f64, f64, f64) {
    (
        must(text, DUE),
        must(text, OLDEST_AGE),
        must(text, IN_FLIGHT),
    )
}

async fn register(app: &TestApp, url: &str) -> String {
    let (status, body) = app
        .post(
            "/callbacks",
            json!({ "url": url, "event_types": ["order.created"] }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["callbacks"][0]["id"].as_str().expect("id").to_owned()
}

/// Runs the dispatcher step by step until no delivery is pending or retrying.
async fn deliver_all(app: &TestApp, dispatcher: &Dispatcher) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if dispatcher.run_once().await.expect("a dispatch step") > 0 {
            continue;
        }
        let unfinished: i64 =
            sqlx::query("SELECT COUNT(*) FROM deliveries WHERE status IN ('pending', 'retrying')")
                .fetch_one(app.db.reader())
                .await
                .expect("count")
                .get(0);
        if unfinished == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "deliveries unfinished after 20 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn attempts_are_counted_by_outcome_and_timed(app: TestApp) {
    let ok = Receiver::start(Answer::Status(200)).await;
    let failing = Receiver::start(Answer::Status(500)).await;
    let ok_id = register(&app, &ok.url).await;
    let failing_id = register(&app, &failing.url).await;

    let before = scrape(&app).await;
    assert_eq!(queue(&before), (0.0, 0.0, 0.0), "a fresh database");
    // Every outcome is shown from the start, at 0 or more.
    for series in [
        SUCCEEDED,
        RETRYING,
        FAILED,
        DURATION_COUNT,
        LOG_WRITES,
        LOG_WAITS,
    ] {
        must(&before, series);
    }

    app.order().await; // one delivery to each callback
    tokio::time::sleep(Duration::from_millis(50)).await;
    let pending = scrape(&app).await;
    let (due, age, in_flight) = queue(&pending);
    assert_eq!(due, 2.0, "both deliveries are due");
    assert!((0.05..60.0).contains(&age), "oldest due age {age}");
    assert_eq!(in_flight, 0.0);

    // One success; one 500, retried once, then given up.
    deliver_all(&app, &Dispatcher::new(app.db.clone(), fast())).await;
    let after = scrape(&app).await;
    let grew = |series: &str| must(&after, series) - must(&before, series);
    assert!(grew(SUCCEEDED) >= 1.0, "{after}");
    assert!(grew(RETRYING) >= 1.0, "{after}");
    assert!(grew(FAILED) >= 1.0, "{after}");
    assert!(grew(DURATION_COUNT) >= 3.0, "three attempts timed: {after}");
    // `run_once` writes each step's attempts together: at least one write, each attempt's
    // wait for it timed.
    assert!(grew(LOG_WRITES) >= 1.0, "{after}");
    assert!(grew(LOG_WAITS) >= 3.0, "three waits timed: {after}");
    must(&after, "hookline_attempt_log_write_seconds_sum");
    must(
        &after,
        "hookline_attempt_log_wait_seconds_bucket{le=\"+Inf\"}",
    );
    must(
        &after,
        "hookline_delivery_attempt_duration_seconds_bucket{le=\"+Inf\"}",
    );
    must(&after, "hookline_delivery_attempt_duration_seconds_sum");
    assert_eq!(queue(&after), (0.0, 0.0, 0.0), "nothing left due");

    // Aggregates only: nothing that names a tenant, a callback or where it points.
    for secret in [
        app.marketplace.as_str(),
        ok_id.as_str(),
        failing_id.as_str(),
        ok.url.as_str(),
        failing.url.as_str(),
    ] {
        assert!(!after.contains(secret), "/metrics shows {secret}");
    }
}

async fn queue_gauges_follow_the_database(app: TestApp) {
    let receiver = Receiver::start(Answer::Status(200)).await;
    let id = register(&app, &receiver.url).await;
    app.order().await;
    let (due, age, in_flight) = queue(&scrape(&app).await);
    assert_eq!((due, in_flight), (1.0, 0.0));
    assert!(age >= 0.0);

    let claimed = app.db.claim_due(10, 60_000_000).await.expect("claim");
    assert_eq!(claimed.len(), 1);
    let (due, _, in_flight) = queue(&scrape(&app).await);
    assert_eq!(
        (due, in_flight),
        (0.0, 1.0),
        "a delivery being attempted is in flight, not due"
    );
    app.db.release(&claimed).await.expect("release");
    let (due, _, in_flight) = queue(&scrape(&app).await);
    assert_eq!((due, in_flight), (1.0, 0.0), "released: due again at once");

    let (status, _) = app
        .put(&format!("/callbacks/{id}"), json!({ "enabled": false }))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        queue(&scrape(&app).await),
        (0.0, 0.0, 0.0),
        "work of a turned-off callback is not due"
    );
}

async fn a_database_failure_answers_503(app: TestApp) {
    app.db.close().await;
    let response = app
        .client
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .expect("the request reaches the app");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let text = response.text().await.expect("a body");
    assert!(!text.contains("hookline_"), "no partial metrics: {text}");
}

on_both_backends!(
    attempts_are_counted_by_outcome_and_timed,
    queue_gauges_follow_the_database,
    a_database_failure_answers_503,
);
