//! Delivery: callbacks, fan-out, signing, retries, the attempt log, the outbound guard and
//! fairness between receivers, with real HTTP receivers on 127.0.0.1.

use std::time::{Duration, Instant};

use hookline::dispatch::schedule::RetrySchedule;
use hookline::dispatch::{DispatchConfig, Dispatcher};
use hookline::signing;
use hookline::store::deliveries::{AttemptRecord, Finished, Health, Next};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::Row;

use crate::common::*;
use crate::receiver::{Answer, Receiver};

/// Millisecond retries, 127.0.0.0/8 allowed, short timeouts.
pub(crate) fn fast() -> DispatchConfig {
    DispatchConfig {
        poll_interval: Duration::from_millis(50),
        lease: Duration::from_secs(10),
        request_timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(1),
        schedule: RetrySchedule {
            initial: Duration::from_millis(20),
            factor: 2.0,
            max_delay: Duration::from_millis(200),
            max_attempts: 4,
            max_age: Duration::from_secs(60),
            jitter: 0.0,
            retry_after_max: Duration::from_secs(5),
        },
        allow: vec!["127.0.0.0/8".parse().expect("a range")],
        shutdown_grace: Duration::from_millis(500),
        ..DispatchConfig::default()
    }
}

/// A dispatcher running in the background until [`Running::stop`].
pub(crate) struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), hookline::dispatch::DispatchError>>,
}

impl Running {
    pub(crate) fn start(dispatcher: Dispatcher) -> Running {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            dispatcher
                .run(async {
                    let _ = stopped.await;
                })
                .await
        });
        Running { stop, task }
    }

    /// Stops the dispatcher and waits until it has stopped cleanly.
    pub(crate) async fn stop(self) {
        let _ = self.stop.send(());
        self.task
            .await
            .expect("join")
            .expect("the dispatcher stops cleanly");
    }
}

/// The record of an attempt answered with `status`.
pub(crate) fn attempt_record(status: i64, succeeded: bool) -> AttemptRecord {
    AttemptRecord {
        started_at: hookline::store::now_micros(),
        duration_us: 1,
        request_headers: vec![("webhook-id".into(), "x".into())],
        request_body: "{}".into(),
        response_status: Some(status),
        response_headers: Some(vec![]),
        response_body: Some(String::new()),
        error_code: None,
        error_detail: None,
        succeeded,
    }
}

pub(crate) async fn register(app: &TestApp, body: Value) -> (String, String) {
    let (status, body) = app.post("/callbacks", body).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let cb = &body["callbacks"][0];
    (
        cb["id"].as_str().expect("id").to_owned(),
        cb["secret"].as_str().expect("secret").to_owned(),
    )
}

/// Deletes callback `id`, which answers 204; returns the answer.
pub(crate) async fn delete_callback(app: &TestApp, id: &str) -> reqwest::Response {
    let response = app
        .request(Method::DELETE, &format!("/callbacks/{id}"))
        .send()
        .await
        .expect("delete");
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    response
}

/// Registers a callback to `url` for `order.created` events only.
pub(crate) async fn register_order_created(app: &TestApp, url: &str) -> (String, String) {
    register(app, json!({ "url": url, "event_types": ["order.created"] })).await
}

/// Runs the dispatcher step by step until no delivery is pending or retrying.
pub(crate) async fn deliver_all(app: &TestApp, dispatcher: &Dispatcher) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let attempted = dispatcher.run_once().await.expect("a dispatch step");
        if attempted == 0 {
            if count(
                app,
                "SELECT COUNT(*) FROM deliveries WHERE status IN ('pending', 'retrying')",
            )
            .await
                == 0
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "deliveries still unfinished after 20 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

async fn count(app: &TestApp, sql: &'static str) -> i64 {
    sqlx::query(sql)
        .fetch_one(app.db.reader())
        .await
        .expect("count")
        .get::<i64, _>(0)
}

/// `(attempt, response_status, error_code, succeeded)` of every attempt, in order.
async fn attempts(app: &TestApp) -> Vec<(i64, Option<i64>, Option<String>, bool)> {
    sqlx::query("SELECT attempt, response_status, error_code, CAST(succeeded AS INTEGER) AS succeeded FROM attempts ORDER BY id")
        .fetch_all(app.db.reader())
        .await
        .expect("attempts")
        .iter()
        .map(|r| (r.get("attempt"), r.get("response_status"), r.get("error_code"), r.get::<i64, _>("succeeded") != 0))
        .collect()
}

async fn callbacks_are_created_shown_listed_and_deleted(app: TestApp) {
    let (status, body) = app
        .post("/callbacks", json!({ "url": "https://example.com/hooks" }))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let cb = &body["callbacks"][0];
    assert_eq!(cb["method"], "post");
    assert_eq!(cb["revision"], "1.1");
    assert_eq!(cb["enabled"], true);
    assert_eq!(cb["event_types"], json!([]));
    assert!(
        cb["secret"]
            .as_str()
            .unwrap_or_default()
            .starts_with("whsec_"),
        "{cb}"
    );
    let id = cb["id"].as_str().expect("id").to_owned();
    assert!(id.starts_with("CB"));

    let (_, shown) = app.get(&format!("/callbacks/{id}")).await;
    assert!(
        shown["callbacks"][0].get("secret").is_none(),
        "the secret is shown only at creation"
    );
    let (status, dup) = app
        .post("/callbacks", json!({ "url": "https://example.com/hooks" }))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{dup}");
    assert_eq!(error(&dup)["category_code"], "duplicate-webhook-url");
    let (status, _) = app
        .post(
            "/callbacks",
            json!({ "url": "https://example.com/hooks", "method": "put" }),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "another method is another callback"
    );
    let (_, list) = app.get("/callbacks").await;
    assert_eq!(list["callbacks"].as_array().map(Vec::len), Some(2));

    for (body, field) in [
        (json!({ "url": "/relative" }), "url"),
        (json!({ "url": "ftp://example.com/" }), "url"),
        (
            json!({ "url": "https://example.com/", "method": "patch" }),
            "method",
        ),
        (
            json!({ "url": "https://example.com/", "revision": "1.0" }),
            "revision",
        ),
        (
            json!({ "url": "https://example.com/", "event_types": ["Debit Created"] }),
            "event_types",
        ),
    ] {
        let (status, err) = app.post("/callbacks", body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
        assert!(error(&err)["extras"].get(field).is_some(), "{err}");
    }

    let response = delete_callback(&app, &id).await;
    assert!(
        response.bytes().await.expect("body").is_empty(),
        "204 has no body"
    );
    let (status, _) = app.get(&format!("/callbacks/{id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = app
        .post("/callbacks", json!({ "url": "https://example.com/hooks" }))
        .await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "a deleted callback's url can be registered again"
    );
}

async fn each_event_reaches_every_matching_callback_signed(app: TestApp) {
    let order = app.order().await; // before any callback: gets no delivery
    let mut all = Receiver::start(Answer::Status(200)).await;
    let mut some = Receiver::start(Answer::Status(204)).await;
    let (_, all_secret) = register(&app, json!({ "url": all.url })).await;
    let (_, some_secret) = register(
        &app,
        json!({ "url": some.url, "event_types": ["debit.succeeded"] }),
    )
    .await;
    let (_, off_secret) = register(
        &app,
        json!({ "url": format!("{}/off", all.url), "enabled": false }),
    )
    .await;
    assert_ne!(all_secret, off_secret);

    let debit = app.debit(&order, CARD, 700).await;
    let dispatcher = Dispatcher::new(app.db.clone(), fast());
    deliver_all(&app, &dispatcher).await;

    let got = all.drain();
    let types: Vec<String> = got
        .iter()
        .map(|r| {
            r.json()["events"][0]["type"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(types.len(), 4, "{types:?}");
    for t in [
        "debit.created",
        "debit.updated",
        "debit.succeeded",
        "order.updated",
    ] {
        assert!(types.iter().any(|x| x == t), "{t} missing from {types:?}");
    }
    let filtered = some.drain();
    assert_eq!(filtered.len(), 1);
    assert_eq!(filtered[0].json()["events"][0]["type"], "debit.succeeded");

    for (request, secret) in got
        .iter()
        .map(|r| (r, &all_secret))
        .chain(filtered.iter().map(|r| (r, &some_secret)))
    {
        assert_eq!(request.method, Method::POST);
        let now = chrono::Utc::now().timestamp();
        signing::verify(
            secret,
            request.header("webhook-id"),
            request.header("webhook-timestamp"),
            request.header("webhook-signature"),
            &request.body,
            now,
        )
        .expect("the signature verifies with the callback's secret");
        let event = &request.json()["events"][0];
        let (_, shown) = app
            .get(&format!("/events/{}", event["id"].as_str().expect("id")))
            .await;
        assert_eq!(
            shown["events"][0]["entity"], event["entity"],
            "the body is the event as GET shows it"
        );
        assert_eq!(
            request.header("webhook-id"),
            format!(
                "{}_{}",
                event["id"].as_str().unwrap_or_default(),
                request_callback(&app, request).await
            )
        );
    }
    let (_, events) = app.get(&format!("/debits/{debit}/events")).await;
    let succeeded = events["events"]
        .as_array()
        .expect("events")
        .iter()
        .find(|e| e["type"] == "debit.succeeded")
        .expect("event");
    assert_eq!(
        succeeded["callback_statuses"],
        json!({ "pending": 0, "retrying": 0, "succeeded": 2, "failed": 0 })
    );
}

/// The callback a request was sent for, from its delivery record.
async fn request_callback(app: &TestApp, request: &crate::receiver::Received) -> String {
    sqlx::query("SELECT callback_id FROM deliveries WHERE id = $1")
        .bind(request.header("webhook-id"))
        .fetch_one(app.db.reader())
        .await
        .expect("the delivery of this webhook-id")
        .get("callback_id")
}

async fn failed_attempts_are_retried_and_every_attempt_is_recorded(app: TestApp) {
    let mut receiver = Receiver::scripted(
        vec![Answer::Status(500), Answer::Status(502)],
        Answer::Status(200),
    )
    .await;
    register_order_created(&app, &receiver.url).await;
    app.order().await;
    deliver_all(&app, &Dispatcher::new(app.db.clone(), fast())).await;

    assert_eq!(
        attempts(&app).await,
        [
            (1, Some(500), None, false),
            (2, Some(502), None, false),
            (3, Some(200), None, true)
        ]
    );
    let got = receiver.drain();
    assert_eq!(got.len(), 3);
    assert!(
        got.iter()
            .all(|r| r.header("webhook-id") == got[0].header("webhook-id")),
        "one webhook-id on every retry"
    );
    let row = sqlx::query(
        "SELECT request_headers, request_body, duration_us FROM attempts WHERE attempt = 3",
    )
    .fetch_one(app.db.reader())
    .await
    .expect("attempt 3");
    let headers: Value =
        serde_json::from_str(row.get::<String, _>("request_headers").as_str()).expect("json");
    assert_eq!(headers["webhook-id"], got[0].header("webhook-id"));
    assert!(
        headers["webhook-signature"]
            .as_str()
            .unwrap_or_default()
            .starts_with("v1,")
    );
    let body: Value =
        serde_json::from_str(row.get::<String, _>("request_body").as_str()).expect("json body");
    assert_eq!(body["events"][0]["type"], "order.created");
    assert!(row.get::<i64, _>("duration_us") > 0);
    assert_eq!(
        count(
            &app,
            "SELECT COUNT(*) FROM deliveries WHERE status = 'succeeded' AND attempts = 3"
        )
        .await,
        1
    );
}

async fn after_the_last_attempt_the_delivery_is_failed(app: TestApp) {
    let _receiver = Receiver::start(Answer::Status(500)).await;
    register(
        &app,
        json!({ "url": _receiver.url, "event_types": ["order.created"] }),
    )
    .await;
    let order = app.order().await;
    deliver_all(&app, &Dispatcher::new(app.db.clone(), fast())).await;
    assert_eq!(attempts(&app).await.len(), 4, "max_attempts");
    assert_eq!(
        count(
            &app,
            "SELECT COUNT(*) FROM deliveries WHERE status = 'failed' AND next_attempt_at IS NULL"
        )
        .await,
        1
    );
    let (_, events) = app.get(&format!("/orders/{order}/events")).await;
    assert_eq!(events["events"][0]["callback_statuses"]["failed"], 1);
}

async fn gone_disables_the_callback_and_keeps_the_reason(app: TestApp) {
    let receiver = Receiver::start(Answer::Status(410)).await;
    let (id, _) = register(&app, json!({ "url": receiver.url })).await;
    app.order().await;
    deliver_all(&app, &Dispatcher::new(app.db.clone(), fast())).await;
    assert_eq!(attempts(&app).await.len(), 1, "410 is not retried");
    let (_, cb) = app.get(&format!("/callbacks/{id}")).await;
    assert_eq!(cb["callbacks"][0]["enabled"], false);
    assert!(
        cb["callbacks"][0]["disabled_reason"]
            .as_str()
            .unwrap_or_default()
            .contains("410"),
        "{cb}"
    );
    app.order().await;
    assert_eq!(
        count(&app, "SELECT COUNT(*) FROM deliveries").await,
        1,
        "a disabled callback gets no new deliveries"
    );
    let (status, cb) = app
        .put(&format!("/callbacks/{id}"), json!({ "enabled": true }))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(cb["callbacks"][0]["disabled_reason"].is_null());
}

async fn a_callback_failing_for_the_whole_disable_window_is_turned_off(app: TestApp) {
    let receiver = Receiver::start(Answer::Status(500)).await;
    let (id, _) = register_order_created(&app, &receiver.url).await;
    app.order().await;
    let config = DispatchConfig {
        disable_after: Duration::from_millis(30),
        ..fast()
    };
    let dispatcher = Dispatcher::new(app.db.clone(), config);
    dispatcher.run_once().await.expect("attempt 1");
    let (_, cb) = app.get(&format!("/callbacks/{id}")).await;
    assert_eq!(
        cb["callbacks"][0]["enabled"], true,
        "one failure is not a failing window"
    );
    tokio::time::sleep(Duration::from_millis(60)).await;
    dispatcher.run_once().await.expect("attempt 2");
    let (_, cb) = app.get(&format!("/callbacks/{id}")).await;
    assert_eq!(cb["callbacks"][0]["enabled"], false, "{cb}");
    let reason = cb["callbacks"][0]["disabled_reason"]
        .as_str()
        .unwrap_or_default();
    assert!(reason.contains("no successful delivery"), "{reason}");
    // Its due retry waits: a turned-off callback is not delivered to.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(dispatcher.run_once().await.expect("a step"), 0);
}

async fn redirects_are_failures_and_never_followed(app: TestApp) {
    let mut elsewhere = Receiver::start(Answer::Status(200)).await;
    let receiver = Receiver::start(Answer::WithHeaders(
        302,
        vec![("location", elsewhere.url.clone())],
    ))
    .await;
    register_order_created(&app, &receiver.url).await;
    app.order().await;
    deliver_all(&app, &Dispatcher::new(app.db.clone(), fast())).await;
    assert!(
        attempts(&app)
            .await
            .iter()
            .all(|a| a.1 == Some(302) && !a.3)
    );
    assert!(
        elsewhere.drain().is_empty(),
        "the redirect was not followed"
    );
}

async fn retry_after_on_429_sets_the_next_attempt(app: TestApp) {
    let receiver =
        Receiver::start(Answer::WithHeaders(429, vec![("retry-after", "3".into())])).await;
    register_order_created(&app, &receiver.url).await;
    app.order().await;
    let dispatcher = Dispatcher::new(app.db.clone(), fast());
    assert_eq!(dispatcher.run_once().await.expect("a step"), 1);
    let row = sqlx::query("SELECT next_attempt_at, last_attempt_at FROM deliveries")
        .fetch_one(app.db.reader())
        .await
        .expect("delivery");
    let wait = row.get::<i64, _>("next_attempt_at") - row.get::<i64, _>("last_attempt_at");
    assert!(
        (2_900_000..=3_100_000).contains(&wait),
        "Retry-After: 3 honoured, not the 20 ms schedule: {wait} us"
    );
}

async fn refused_destinations_are_recorded_as_blocked(app: TestApp) {
    let mut receiver = Receiver::start(Answer::Status(200)).await;
    let port = receiver
        .url
        .split(':')
        .nth(2)
        .and_then(|p| p.split('/').next())
        .expect("port")
        .to_owned();
    register_order_created(&app, &receiver.url).await;
    register(&app, json!({ "url": format!("http://localhost:{port}/hooks"), "event_types": ["order.created"] })).await;
    register(&app, json!({ "url": "http://169.254.169.254/latest/meta-data", "event_types": ["order.created"] })).await;
    register(
        &app,
        json!({ "url": "http://[::ffff:127.0.0.1]:9/x", "event_types": ["order.created"] }),
    )
    .await;
    app.order().await;
    // No allow-list: the production default.
    let config = DispatchConfig {
        allow: vec![],
        ..fast()
    };
    Dispatcher::new(app.db.clone(), config)
        .run_once()
        .await
        .expect("a step");
    let attempts = attempts(&app).await;
    assert_eq!(attempts.len(), 4);
    assert!(
        attempts
            .iter()
            .all(|a| a.2.as_deref() == Some("blocked") && a.1.is_none()),
        "{attempts:?}"
    );
    assert!(
        receiver.drain().is_empty(),
        "nothing reached the loopback receiver"
    );
}

async fn attempts_without_an_answer_name_the_reason(app: TestApp) {
    let hang = Receiver::start(Answer::Hang).await;
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        drop(listener);
        format!("http://127.0.0.1:{port}/hooks")
    };
    let plain = Receiver::start(Answer::Status(200)).await;
    let tls_to_plain = plain.url.replace("http://", "https://");
    let big = Receiver::start(Answer::Big(200_000)).await;
    for url in [&hang.url, &closed, &tls_to_plain, &big.url] {
        register(
            &app,
            json!({ "url": url, "event_types": ["order.created"] }),
        )
        .await;
    }
    app.order().await;
    let config = DispatchConfig {
        request_timeout: Duration::from_millis(300),
        max_response_bytes: 1024,
        ..fast()
    };
    Dispatcher::new(app.db.clone(), config)
        .run_once()
        .await
        .expect("a step");
    let rows = sqlx::query(
        "SELECT c.url, a.error_code, a.error_detail, a.response_status, a.response_body, CAST(a.succeeded AS INTEGER) AS succeeded FROM attempts a \
         JOIN deliveries d ON d.id = a.delivery_id JOIN callbacks c ON c.id = d.callback_id",
    )
    .fetch_all(app.db.reader())
    .await
    .expect("attempts");
    let code_of = |url: &str| -> Option<String> {
        rows.iter()
            .find(|r| r.get::<String, _>("url") == url)
            .and_then(|r| r.get("error_code"))
    };
    assert_eq!(code_of(&hang.url).as_deref(), Some("timeout"));
    assert_eq!(code_of(&closed).as_deref(), Some("connect"));
    let detail_of = |url: &str| -> Option<String> {
        rows.iter()
            .find(|r| r.get::<String, _>("url") == url)
            .and_then(|r| r.get("error_detail"))
    };
    assert_eq!(
        code_of(&tls_to_plain).as_deref(),
        Some("tls"),
        "{:?}",
        detail_of(&tls_to_plain)
    );
    let big_row = rows
        .iter()
        .find(|r| r.get::<String, _>("url") == big.url)
        .expect("big");
    assert_eq!(
        big_row.get::<Option<String>, _>("error_code").as_deref(),
        Some("body-too-large")
    );
    assert_eq!(
        big_row
            .get::<Option<String>, _>("response_body")
            .map(|b| b.len()),
        Some(1024),
        "read no further than the cap"
    );
    assert_eq!(
        big_row.get::<i64, _>("succeeded"),
        1,
        "the 200 still counts"
    );
}

async fn a_rotated_secret_signs_beside_the_new_one(app: TestApp) {
    let mut receiver = Receiver::start(Answer::Status(200)).await;
    let (id, old) = register_order_created(&app, &receiver.url).await;
    let (status, body) = app
        .post(&format!("/callbacks/{id}/secret"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let new = body["callbacks"][0]["secret"]
        .as_str()
        .expect("the new secret")
        .to_owned();
    assert_ne!(new, old);
    app.order().await;
    deliver_all(&app, &Dispatcher::new(app.db.clone(), fast())).await;
    let request = receiver.drain().pop().expect("a delivery");
    let header = request.header("webhook-signature");
    assert_eq!(
        header.split(' ').filter(|s| s.starts_with("v1,")).count(),
        2,
        "{header}"
    );
    let now = chrono::Utc::now().timestamp();
    for secret in [&old, &new] {
        signing::verify(
            secret,
            request.header("webhook-id"),
            request.header("webhook-timestamp"),
            header,
            &request.body,
            now,
        )
        .expect("both secrets verify during the grace period");
    }
}

async fn a_slow_receiver_never_holds_up_another(app: TestApp) {
    let mut stuck = Receiver::start(Answer::Hang).await;
    let mut quick = Receiver::start(Answer::Status(200)).await;
    let (stuck_id, _) = register(
        &app,
        json!({ "url": stuck.url, "event_types": ["order.created"] }),
    )
    .await;
    register(
        &app,
        json!({ "url": quick.url, "event_types": ["order.created"] }),
    )
    .await;
    let config = DispatchConfig {
        request_timeout: Duration::from_secs(30),
        per_callback: 2,
        concurrency: 16,
        batch_size: 4,
        ..fast()
    };
    let running = Running::start(Dispatcher::new(app.db.clone(), config));
    for _ in 0..20 {
        app.order().await;
    }
    let started = Instant::now();
    let mut got = 0;
    while got < 20 {
        assert!(
            quick.next(Duration::from_secs(10)).await.is_some(),
            "the quick receiver waited behind the stuck one ({got} of 20)"
        );
        got += 1;
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    let stuck_in_flight: i64 = sqlx::query(
        "SELECT COUNT(*) FROM deliveries WHERE callback_id = $1 AND lease_token IS NOT NULL",
    )
    .bind(&stuck_id)
    .fetch_one(app.db.reader())
    .await
    .expect("count")
    .get(0);
    assert!(
        stuck_in_flight <= 8,
        "the stuck callback holds per_callback in flight and at most three times as many \
         waiting: {stuck_in_flight}"
    );
    assert_eq!(
        stuck.drain().len(),
        2,
        "per_callback attempts reached the stuck receiver"
    );
    running.stop().await;
    assert_eq!(
        count(
            &app,
            "SELECT COUNT(*) FROM deliveries WHERE lease_token IS NOT NULL"
        )
        .await,
        0,
        "shutdown released what was in flight"
    );
}

async fn new_work_wakes_an_idle_dispatcher_at_once(app: TestApp) {
    let mut receiver = Receiver::start(Answer::Status(200)).await;
    register_order_created(&app, &receiver.url).await;
    // On PostgreSQL a connection of its own, so only the NOTIFY can wake it; on SQLite the
    // dispatcher lives in the API's process and shares its in-process signal.
    let db = match app.backend() {
        hookline::store::Backend::Postgres => {
            hookline::store::Db::connect(app.db.url(), &Default::default())
                .await
                .expect("connect")
        }
        hookline::store::Backend::Sqlite => app.db.clone(),
    };
    let config = DispatchConfig {
        poll_interval: Duration::from_secs(30),
        ..fast()
    };
    let running = Running::start(Dispatcher::new(db, config));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let created = Instant::now();
    app.order().await;
    assert!(
        receiver.next(Duration::from_secs(5)).await.is_some(),
        "woken well before the 30 s poll"
    );
    assert!(created.elapsed() < Duration::from_secs(5));
    running.stop().await;
}

/// The attempt log's writes are refused for a while (a trigger on `attempts`): the attempts
/// wait, and once the database takes writes again they are recorded, each once, and their
/// deliveries move on; none is sent again. (What becomes of the writer's connection is
/// tested in `dispatch::recorder`.)
async fn attempts_refused_for_a_while_are_recorded_once_the_database_takes_them(app: TestApp) {
    let mut receiver = Receiver::start(Answer::Status(200)).await;
    register_order_created(&app, &receiver.url).await;
    let (refuse, allow) = match app.backend() {
        hookline::store::Backend::Sqlite => (
            "CREATE TRIGGER refuse_attempts BEFORE INSERT ON attempts \
             BEGIN SELECT RAISE(ABORT, 'injected failure'); END;",
            "DROP TRIGGER refuse_attempts",
        ),
        hookline::store::Backend::Postgres => (
            "CREATE FUNCTION refuse_attempt() RETURNS trigger AS $$ \
             BEGIN RAISE EXCEPTION 'injected failure'; END $$ LANGUAGE plpgsql; \
             CREATE TRIGGER refuse_attempts BEFORE INSERT ON attempts FOR EACH ROW \
             EXECUTE FUNCTION refuse_attempt();",
            "DROP TRIGGER refuse_attempts ON attempts; DROP FUNCTION refuse_attempt();",
        ),
    };
    let running = Running::start(Dispatcher::new(app.db.clone(), fast()));
    let succeeded = "SELECT COUNT(*) FROM deliveries WHERE status = 'succeeded'";
    let settle = async |expected: i64| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while count(&app, succeeded).await < expected {
            assert!(Instant::now() < deadline, "not delivered after 20 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    app.order().await;
    settle(1).await;
    sqlx::raw_sql(refuse)
        .execute(app.db.writer())
        .await
        .expect("refuse attempts");
    for _ in 0..3 {
        app.order().await;
    }
    assert!(receiver.next(Duration::from_secs(5)).await.is_some());
    assert!(receiver.next(Duration::from_secs(5)).await.is_some());
    // Sent, and their records refused: their deliveries wait under their leases.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(count(&app, succeeded).await, 1);
    sqlx::raw_sql(allow)
        .execute(app.db.writer())
        .await
        .expect("allow attempts");
    settle(4).await;
    running.stop().await;
    assert_eq!(count(&app, "SELECT COUNT(*) FROM attempts").await, 4);
    assert_eq!(
        receiver.drain().len(),
        2,
        "the rest sent once, and nothing sent again"
    );
}

async fn a_dispatcher_that_lost_its_lease_cannot_overwrite_the_newer_result(app: TestApp) {
    let receiver = Receiver::start(Answer::Status(200)).await;
    register_order_created(&app, &receiver.url).await;
    app.order().await;
    let stale = app
        .db
        .claim_due(10, 1)
        .await
        .expect("claim")
        .pop()
        .expect("one due delivery");
    tokio::time::sleep(Duration::from_millis(5)).await;
    // The lease ran out; another dispatcher takes the delivery and succeeds.
    Dispatcher::new(app.db.clone(), fast())
        .run_once()
        .await
        .expect("a step");
    let finished = Finished {
        claimed: stale,
        record: attempt_record(500, false),
        next: Next::GiveUp,
        health: Health::Failing,
    };
    let kept = app
        .db
        .record_attempts(&[finished], i64::MAX / 2)
        .await
        .expect("record");
    assert_eq!(kept, [false], "the stale lease is fenced out");
    assert_eq!(
        count(
            &app,
            "SELECT COUNT(*) FROM deliveries WHERE status = 'succeeded'"
        )
        .await,
        1,
        "the newer result stands"
    );
    assert_eq!(
        count(&app, "SELECT COUNT(*) FROM attempts").await,
        2,
        "both attempts are in the log"
    );
}

async fn deleting_a_callback_stops_an_attempt_in_flight_from_rescheduling(app: TestApp) {
    let receiver = Receiver::start(Answer::Status(500)).await;
    let (id, _) = register_order_created(&app, &receiver.url).await;
    app.order().await;
    let claimed = app
        .db
        .claim_due(10, 60_000_000)
        .await
        .expect("claim")
        .pop()
        .expect("a due delivery");
    delete_callback(&app, &id).await;
    let record = hookline::dispatch::http::not_sent("connect", "refused".into());
    let finished = Finished {
        claimed,
        record,
        next: Next::RetryAt(hookline::store::now_micros()),
        health: Health::Failing,
    };
    let kept = app
        .db
        .record_attempts(&[finished], i64::MAX / 2)
        .await
        .expect("record");
    assert_eq!(kept, [false], "the deletion is the newer result");
    assert_eq!(
        count(
            &app,
            "SELECT COUNT(*) FROM deliveries WHERE status = 'failed' AND next_attempt_at IS NULL"
        )
        .await,
        1
    );
    assert_eq!(
        app.db.next_due().await.expect("next due"),
        None,
        "nothing left to wake for"
    );
}

async fn work_of_turned_off_callbacks_is_not_due(app: TestApp) {
    let receiver = Receiver::start(Answer::Status(200)).await;
    let (id, _) = register_order_created(&app, &receiver.url).await;
    app.order().await;
    assert!(app.db.next_due().await.expect("next due").is_some());
    let (status, _) = app
        .put(&format!("/callbacks/{id}"), json!({ "enabled": false }))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        app.db.next_due().await.expect("next due"),
        None,
        "an idle dispatcher must not spin on it"
    );
    assert_eq!(
        Dispatcher::new(app.db.clone(), fast())
            .run_once()
            .await
            .expect("a step"),
        0
    );
}

/// A receiver's answer is logged as text whatever its bytes: PostgreSQL's text holds no NUL
/// and no invalid UTF-8, and an attempt refused by the database would not be in the log.
async fn an_answer_of_any_bytes_is_logged(app: TestApp) {
    let receiver = Receiver::start(Answer::Body(b"ok\0then \xff\xfe end")).await;
    register_order_created(&app, &receiver.url).await;
    app.order().await;
    Dispatcher::new(app.db.clone(), fast())
        .run_once()
        .await
        .expect("a step");
    let row = sqlx::query(
        "SELECT a.response_body, d.status FROM attempts a JOIN deliveries d ON d.id = a.delivery_id",
    )
    .fetch_one(app.db.reader())
    .await
    .expect("the attempt is logged");
    assert_eq!(
        row.get::<String, _>("response_body"),
        "ok\u{fffd}then \u{fffd}\u{fffd} end"
    );
    assert_eq!(row.get::<String, _>("status"), "succeeded");
}

/// On PostgreSQL deliveries and attempts have no foreign keys (its migration 0006): the
/// statements that write them take their references from rows in hand. The paths that
/// write them, each taken (a filtered fan-out, a retry, a callback deleted with work left,
/// a re-delivery by hand), leave no delivery without its event and callback and no attempt
/// without its delivery. On SQLite, which keeps the keys, a wrong reference fails the write
/// instead, and the test with it.
async fn every_delivery_and_attempt_refers_to_rows_that_exist(app: TestApp) {
    let mut receiver = Receiver::scripted(vec![Answer::Status(500)], Answer::Status(200)).await;
    let (all, _) = register(&app, json!({ "url": receiver.url })).await;
    register_order_created(&app, &format!("{}/orders", receiver.url)).await;
    let (deleted, _) = register(&app, json!({ "url": format!("{}/deleted", receiver.url) })).await;
    let order = app.order().await;
    app.debit(&order, CARD, 700).await;
    delete_callback(&app, &deleted).await;
    let dispatcher = Dispatcher::new(app.db.clone(), fast());
    deliver_all(&app, &dispatcher).await;
    let event = sqlx::query("SELECT event_id FROM deliveries WHERE callback_id = $1 LIMIT 1")
        .bind(&all)
        .fetch_one(app.db.reader())
        .await
        .expect("a delivery")
        .get::<String, _>("event_id");
    let (status, body) = app
        .put(&format!("/events/{event}/callbacks/{all}"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    deliver_all(&app, &dispatcher).await;
    assert!(!receiver.drain().is_empty(), "the receiver was reached");

    let taken = [
        "SELECT COUNT(*) FROM deliveries d JOIN callbacks c ON c.id = d.callback_id WHERE c.deleted_at IS NOT NULL",
        "SELECT COUNT(*) FROM attempts WHERE attempt > 1",
        "SELECT COUNT(*) FROM deliveries WHERE schedule_base > 0",
        "SELECT COUNT(*) FROM deliveries d JOIN callback_event_types t ON t.callback_id = d.callback_id",
    ];
    for sql in taken {
        assert!(count(&app, sql).await > 0, "the path was taken: {sql}");
    }
    let orphans = [
        "SELECT COUNT(*) FROM deliveries d WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.id = d.event_id)",
        "SELECT COUNT(*) FROM deliveries d WHERE NOT EXISTS (SELECT 1 FROM callbacks c WHERE c.id = d.callback_id)",
        "SELECT COUNT(*) FROM attempts a WHERE NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.id = a.delivery_id)",
    ];
    for sql in orphans {
        assert_eq!(count(&app, sql).await, 0, "{sql}");
    }
}

on_both_backends!(
    an_answer_of_any_bytes_is_logged,
    every_delivery_and_attempt_refers_to_rows_that_exist,
    deleting_a_callback_stops_an_attempt_in_flight_from_rescheduling,
    work_of_turned_off_callbacks_is_not_due,
    callbacks_are_created_shown_listed_and_deleted,
    each_event_reaches_every_matching_callback_signed,
    failed_attempts_are_retried_and_every_attempt_is_recorded,
    after_the_last_attempt_the_delivery_is_failed,
    gone_disables_the_callback_and_keeps_the_reason,
    a_callback_failing_for_the_whole_disable_window_is_turned_off,
    redirects_are_failures_and_never_followed,
    retry_after_on_429_sets_the_next_attempt,
    refused_destinations_are_recorded_as_blocked,
    attempts_without_an_answer_name_the_reason,
    a_rotated_secret_signs_beside_the_new_one,
    a_slow_receiver_never_holds_up_another,
    new_work_wakes_an_idle_dispatcher_at_once,
    a_dispatcher_that_lost_its_lease_cannot_overwrite_the_newer_result,
    attempts_refused_for_a_while_are_recorded_once_the_database_takes_them,
);
