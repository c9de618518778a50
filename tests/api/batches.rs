//! The batched paths of the outbox and the dispatcher: many events in one call, many
//! attempts in one transaction, and busy callbacks refilled by claims of their own.

use std::time::{Duration, Instant};

use hookline::dispatch::{DispatchConfig, Dispatcher};
use hookline::store::deliveries::{AttemptRecord, Claimed, Finished, Health, Next};
use hookline::store::outbox::{self, NewEvent};
use hookline::store::{Backend, now_micros};
use reqwest::StatusCode;
use serde_json::json;
use sqlx::Row;

use crate::common::*;
use crate::delivery::{Running, attempt_record, fast, register, register_order_created};
use crate::receiver::{Answer, Receiver};

async fn count(app: &TestApp, sql: &str, bind: &str) -> i64 {
    sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
        .bind(bind)
        .fetch_one(app.db.reader())
        .await
        .expect("count")
        .get::<i64, _>(0)
}

/// A callback for `order.created` and `n` orders' deliveries to it, claimed for a minute,
/// in id order. The receiver comes back too, so its URL stays taken.
async fn claimed_orders(app: &TestApp, n: usize) -> (Receiver, String, Vec<Claimed>) {
    let receiver = Receiver::start(Answer::Status(200)).await;
    let (callback, _) = register_order_created(app, &receiver.url).await;
    for _ in 0..n {
        app.order().await;
    }
    let mut claimed = app
        .db
        .claim_due(n as i64 + 10, 60_000_000)
        .await
        .expect("claim");
    assert_eq!(claimed.len(), n);
    claimed.sort_by(|a, b| a.id.cmp(&b.id));
    (receiver, callback, claimed)
}

/// Two callbacks for every event type, at `/a` and `/b` of one receiver (which comes back
/// too, so its URLs stay taken).
async fn two_callbacks(app: &TestApp) -> (Receiver, String, String) {
    let receiver = Receiver::start(Answer::Status(200)).await;
    let (a, _) = register(app, json!({ "url": format!("{}/a", receiver.url) })).await;
    let (b, _) = register(app, json!({ "url": format!("{}/b", receiver.url) })).await;
    (receiver, a, b)
}

async fn enqueue_many_fans_each_event_out_to_the_callbacks_that_want_it(app: TestApp) {
    let receiver = Receiver::start(Answer::Status(200)).await;
    let (all, _) = register(&app, json!({ "url": format!("{}/all", receiver.url) })).await;
    let (orders, _) = register(
        &app,
        json!({ "url": format!("{}/orders", receiver.url), "event_types": ["order.updated"] }),
    )
    .await;
    let entity = json!({ "orders": [{ "id": "OR1" }] });
    // More than one statement's worth, so the chunks are exercised too.
    let types: Vec<&str> = (0..150)
        .map(|i| {
            if i % 3 == 0 {
                "debit.updated"
            } else {
                "order.updated"
            }
        })
        .collect();
    let events: Vec<NewEvent> = types
        .iter()
        .map(|event_type| NewEvent {
            marketplace_id: &app.marketplace,
            event_type,
            entity_id: "OR1",
            entity: &entity,
            occurred_at: now_micros(),
        })
        .collect();
    let mut tx = app.db.begin().await.expect("begin");
    let ids = outbox::enqueue_many::<sqlx::Any>(&mut *tx, &events)
        .await
        .expect("enqueue");
    tx.commit().await.expect("commit");
    assert_eq!(ids.len(), 150);
    let distinct: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), 150, "every event has its own id");
    for (id, event_type) in ids.iter().zip(&types) {
        let stored: String = sqlx::query("SELECT type FROM events WHERE id = $1")
            .bind(id)
            .fetch_one(app.db.reader())
            .await
            .expect("the event")
            .get("type");
        assert_eq!(stored, *event_type, "{id}");
    }
    assert_eq!(
        count(
            &app,
            "SELECT COUNT(*) FROM deliveries WHERE callback_id = $1",
            &all
        )
        .await,
        150,
        "the callback without a filter gets every event"
    );
    assert_eq!(
        count(
            &app,
            "SELECT COUNT(*) FROM deliveries WHERE callback_id = $1",
            &orders
        )
        .await,
        100,
        "the filtered callback gets only order.updated"
    );
    let mut tx = app.db.begin().await.expect("begin");
    outbox::enqueue_many::<sqlx::Any>(&mut *tx, &events)
        .await
        .expect("enqueue");
    tx.rollback().await.expect("rollback");
    assert_eq!(
        count(
            &app,
            "SELECT COUNT(*) FROM events WHERE marketplace_id = $1",
            &app.marketplace
        )
        .await,
        150,
        "a rolled-back batch leaves nothing"
    );
}

/// The lease of `claimed` taken over by a newer claim before its attempt is written: it
/// is released, and due again at once.
async fn lose_lease(app: &TestApp, claimed: &Claimed) {
    app.db
        .release(std::slice::from_ref(claimed))
        .await
        .expect("release");
    let taken = app.db.claim_due(10, 60_000_000).await.expect("reclaim");
    assert_eq!(taken.len(), 1, "the released one is due again at once");
}

/// The claims of `callback` among `claimed`, in id order.
fn claims_of(claimed: &[Claimed], callback: &str) -> Vec<Claimed> {
    let mut own: Vec<Claimed> = claimed
        .iter()
        .filter(|c| c.callback_id == callback)
        .cloned()
        .collect();
    own.sort_by(|x, y| x.id.cmp(&y.id));
    own
}

async fn one_batch_of_attempts_is_fenced_per_delivery_and_folds_callback_health(app: TestApp) {
    let (_receiver, callback, mut claimed) = claimed_orders(&app, 3).await;
    // The third claim's lease is taken over by someone else before its attempt is written.
    let stale = claimed.pop().expect("the third");
    lose_lease(&app, &stale).await;
    let failed_at = now_micros();
    let batch = vec![
        Finished {
            claimed: claimed[0].clone(),
            record: attempt_record(200, true),
            next: Next::Succeeded,
            health: Health::Ok,
        },
        Finished {
            claimed: claimed[1].clone(),
            record: AttemptRecord {
                started_at: failed_at,
                ..attempt_record(500, false)
            },
            next: Next::RetryAt(now_micros() + 60_000_000),
            health: Health::Failing,
        },
        Finished {
            claimed: stale,
            record: attempt_record(500, false),
            next: Next::GiveUp,
            health: Health::Failing,
        },
    ];
    let kept = app
        .db
        .record_attempts(&batch, i64::MAX / 2)
        .await
        .expect("record");
    assert_eq!(kept, [true, true, false]);
    assert_eq!(
        count(&app, "SELECT COUNT(*) FROM attempts a JOIN deliveries d ON d.id = a.delivery_id WHERE d.callback_id = $1", &callback).await,
        3,
        "every attempt is in the log, the fenced-out one too"
    );
    let statuses: Vec<(String, Option<String>)> = sqlx::query(
        "SELECT status, lease_token FROM deliveries WHERE callback_id = $1 ORDER BY id",
    )
    .bind(&callback)
    .fetch_all(app.db.reader())
    .await
    .expect("statuses")
    .iter()
    .map(|r| (r.get("status"), r.get("lease_token")))
    .collect();
    assert_eq!(statuses[0], ("succeeded".to_owned(), None));
    assert_eq!(statuses[1], ("retrying".to_owned(), None));
    assert_eq!(
        statuses[2].0, "pending",
        "the newer claim's delivery is untouched"
    );
    assert!(statuses[2].1.is_some(), "and still under the newer lease");
    let row = sqlx::query("SELECT last_success_at, failing_since FROM callbacks WHERE id = $1")
        .bind(&callback)
        .fetch_one(app.db.reader())
        .await
        .expect("callback");
    assert!(row.get::<Option<i64>, _>("last_success_at").is_some());
    assert_eq!(
        row.get::<Option<i64>, _>("failing_since"),
        Some(failed_at),
        "a failure after the batch's success starts a run of failures"
    );
}

/// Three callbacks' attempts in one batch: each callback's health is folded in the batch's
/// order, over the attempts that kept their lease (SQLite folds it in Rust, PostgreSQL in
/// the batch's one statement; both must agree).
async fn a_batch_folds_each_callbacks_health_in_order_over_the_attempts_kept(app: TestApp) {
    let receiver = Receiver::start(Answer::Status(200)).await;
    let mut callbacks = Vec::new();
    for path in ["a", "b", "c"] {
        let url = format!("{}/{path}", receiver.url);
        callbacks.push(register_order_created(&app, &url).await.0);
    }
    for _ in 0..5 {
        app.order().await;
    }
    let claimed = app.db.claim_due(100, 60_000_000).await.expect("claim");
    let [a, b, c] = [0, 1, 2].map(|i| claims_of(&claimed, &callbacks[i]));
    assert_eq!((a.len(), b.len(), c.len()), (5, 5, 5));
    // c's last claim loses its lease to a newer claim before its failure is written.
    lose_lease(&app, &c[4]).await;
    let t = now_micros() - 1_000_000;
    let attempt = |claimed: &Claimed, at: i64, health: Health| {
        let ok = health == Health::Ok;
        Finished {
            claimed: claimed.clone(),
            record: AttemptRecord {
                started_at: at,
                ..attempt_record(if ok { 200 } else { 500 }, ok)
            },
            next: if ok {
                Next::Succeeded
            } else {
                Next::RetryAt(t + 60_000_000)
            },
            health,
        }
    };
    let batch = [
        attempt(&a[0], t, Health::Failing),
        attempt(&b[0], t + 1, Health::Disable("410 Gone".into())),
        attempt(&a[1], t + 2, Health::Ok),
        attempt(&c[0], t + 3, Health::Ok),
        // a's run of failures starts after its last success.
        attempt(&a[2], t + 4, Health::Failing),
        attempt(&a[3], t + 5, Health::Failing),
        // A success after the 410 does not turn b on again.
        attempt(&b[1], t + 6, Health::Ok),
        // Fenced out: c is not failing.
        attempt(&c[4], t + 7, Health::Failing),
    ];
    let kept = app
        .db
        .record_attempts(&batch, i64::MAX / 2)
        .await
        .expect("record");
    assert_eq!(kept, [true, true, true, true, true, true, true, false]);
    let health = |id: &str| {
        let id = id.to_owned();
        let db = app.db.clone();
        async move {
            let row = sqlx::query(
                "SELECT CASE WHEN enabled THEN 'on' ELSE 'off' END AS enabled, disabled_reason, \
                 last_success_at, failing_since FROM callbacks WHERE id = $1",
            )
            .bind(&id)
            .fetch_one(db.reader())
            .await
            .expect("callback");
            (
                row.get::<String, _>("enabled") == "on",
                row.get::<Option<String>, _>("disabled_reason"),
                row.get::<Option<i64>, _>("last_success_at").is_some(),
                row.get::<Option<i64>, _>("failing_since"),
            )
        }
    };
    assert_eq!(health(&callbacks[0]).await, (true, None, true, Some(t + 4)));
    assert_eq!(
        health(&callbacks[1]).await,
        (false, Some("410 Gone".to_owned()), true, None)
    );
    assert_eq!(health(&callbacks[2]).await, (true, None, true, None));

    // A later failure of a: its run of failures still started at the earlier one.
    let kept = app
        .db
        .record_attempts(&[attempt(&a[4], t + 8, Health::Failing)], i64::MAX / 2)
        .await
        .expect("record a's failure");
    assert_eq!(kept, [true]);
    assert_eq!(health(&callbacks[0]).await, (true, None, true, Some(t + 4)));
    // c fails with a disable window shorter than its run of failures: turned off.
    let kept = app
        .db
        .record_attempts(&[attempt(&c[1], t + 9, Health::Failing)], 500_000)
        .await
        .expect("record c's failure");
    assert_eq!(kept, [true]);
    let reason = "no successful delivery for 0 s (the disable window)".to_owned();
    assert_eq!(
        health(&callbacks[2]).await,
        (false, Some(reason), true, Some(t + 9))
    );
}

/// A callback's health reads its attempts by the minute from `attempt_counts` (every
/// attempt logged, kept or not) and its last failure among the attempts kept.
async fn a_callbacks_health_counts_its_attempts_by_the_minute_and_keeps_its_last_failure(
    app: TestApp,
) {
    let receiver = Receiver::start(Answer::Status(200)).await;
    let (a, _) = register_order_created(&app, &format!("{}/a", receiver.url)).await;
    let (b, _) = register_order_created(&app, &format!("{}/b", receiver.url)).await;
    for _ in 0..8 {
        app.order().await;
    }
    let claimed = app.db.claim_due(100, 60_000_000).await.expect("claim");
    let (mine, theirs) = (claims_of(&claimed, &a), claims_of(&claimed, &b));
    assert_eq!((mine.len(), theirs.len()), (8, 8));
    // a's fifth claim loses its lease before its failure is written.
    lose_lease(&app, &mine[4]).await;
    // Away from a minute's end, so that the health is read in the minute of `now`.
    let minute = 60_000_000;
    if now_micros() % minute > 50_000_000 {
        tokio::time::sleep(Duration::from_secs(11)).await;
    }
    let now = now_micros();
    let ago = |seconds: i64| now - seconds * 1_000_000;
    // The first minute of the last hour: in the hour, however old within it.
    let hour_start = (ago(3_600) / minute) * minute;
    let attempt = |claimed: &Claimed, at: i64, status: i64| {
        let ok = status == 200;
        Finished {
            claimed: claimed.clone(),
            record: AttemptRecord {
                started_at: at,
                ..attempt_record(status, ok)
            },
            next: if ok {
                Next::Succeeded
            } else {
                Next::RetryAt(now + 60_000_000)
            },
            health: if ok { Health::Ok } else { Health::Failing },
        }
    };
    let batch = [
        attempt(&mine[0], ago(2 * 86_400), 501),
        attempt(&mine[1], ago(2 * 3_600), 200),
        attempt(&mine[6], hour_start - 1, 200),
        attempt(&theirs[0], ago(1), 505),
        attempt(&mine[7], hour_start, 200),
        attempt(&mine[2], ago(30 * 60), 502),
        attempt(&mine[3], ago(1), 200),
        attempt(&mine[4], now, 504),
        attempt(&theirs[1], now, 200),
    ];
    let kept = app
        .db
        .record_attempts(&batch, i64::MAX / 2)
        .await
        .expect("record");
    assert_eq!(
        kept,
        [true, true, true, true, true, true, true, false, true]
    );
    let health = |id: &str| {
        let path = format!("/callbacks/{id}/health");
        let app = &app;
        async move {
            let (status, body) = app.get(&path).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            body["health"][0].clone()
        }
    };
    let got = health(&a).await;
    assert_eq!(
        (&got["attempts_last_hour"], &got["attempts_last_day"]),
        (&json!(4), &json!(6)),
        "the last hour: the hour's first minute's 200, the 502, the 200 and the fenced-out \
         504; the day also the 200s of two hours ago and of the minute before the hour: {got}"
    );
    assert_eq!(got["success_rate_last_hour"], 0.5);
    assert_eq!(
        got["last_failure"]["response_status"], 502,
        "the fenced-out 504 is logged and counted, but is not the callback's health: {got}"
    );
    let got = health(&b).await;
    assert_eq!(got["attempts_last_hour"], 2);
    assert_eq!(got["success_rate_last_hour"], 0.5);
    assert_eq!(got["last_failure"]["response_status"], 505);

    // A later success adds to the minute's count and leaves the last failure.
    let kept = app
        .db
        .record_attempts(&[attempt(&mine[5], now, 200)], i64::MAX / 2)
        .await
        .expect("record a's success");
    assert_eq!(kept, [true]);
    let got = health(&a).await;
    assert_eq!(got["attempts_last_hour"], 5);
    assert_eq!(got["success_rate_last_hour"], 0.6);
    assert_eq!(got["last_failure"]["response_status"], 502);
}

async fn a_busy_callback_is_refilled_by_claims_of_its_own(app: TestApp) {
    let mut receiver = Receiver::start(Answer::Status(200)).await;
    let (callback, _) = register_order_created(&app, &receiver.url).await;
    for _ in 0..20 {
        app.order().await;
    }
    // One look for due work at the start, then none for a minute: that look claims
    // 2 x per_callback = 4, so the other 16 arrive only through the lane's own claims.
    let config = DispatchConfig {
        per_callback: 2,
        poll_interval: Duration::from_secs(60),
        ..fast()
    };
    let running = Running::start(Dispatcher::new(app.db.clone(), config));
    let started = Instant::now();
    for got in 0..20 {
        assert!(
            receiver.next(Duration::from_secs(10)).await.is_some(),
            "only {got} of 20 arrived"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(20));
    running.stop().await;
    assert_eq!(
        count(
            &app,
            "SELECT COUNT(*) FROM deliveries WHERE callback_id = $1 AND status = 'succeeded'",
            &callback
        )
        .await,
        20
    );
}

async fn a_rounds_claims_commit_together_and_later_commits_stay_durable(app: TestApp) {
    let (_receiver, first, second) = two_callbacks(&app).await;
    for _ in 0..3 {
        app.order().await;
    }
    let claimed = app
        .db
        .claim_due_for_each(&[(first.as_str(), 2), (second.as_str(), 5)], 60_000_000)
        .await
        .expect("claim");
    let sizes: Vec<usize> = claimed.iter().map(Vec::len).collect();
    assert_eq!(
        sizes,
        [2, 3],
        "each callback gets at most what it asked for"
    );
    assert!(claimed[0].iter().all(|c| c.callback_id == first));
    assert!(claimed[1].iter().all(|c| c.callback_id == second));
    let token = &claimed[0][0].lease_token;
    assert!(
        claimed.iter().flatten().all(|c| &c.lease_token == token),
        "one transaction, one lease"
    );
    assert_eq!(
        count(
            &app,
            "SELECT COUNT(*) FROM deliveries WHERE lease_token = $1",
            token
        )
        .await,
        5
    );
    // The claim's commit did not wait for the disk; every other commit still does.
    let durable = match app.db.backend() {
        Backend::Sqlite => {
            let level: i64 = sqlx::query("PRAGMA synchronous")
                .fetch_one(app.db.writer())
                .await
                .expect("pragma")
                .get(0);
            level == 2
        }
        Backend::Postgres => {
            let mut on = true;
            for db in [app.db.clone(), app.db.for_dispatcher()] {
                let mut tx = db.begin().await.expect("begin");
                let setting: String = sqlx::query("SELECT current_setting('synchronous_commit')")
                    .fetch_one(&mut *tx)
                    .await
                    .expect("setting")
                    .get(0);
                on &= setting == "on";
            }
            on
        }
    };
    assert!(
        durable,
        "the writer is back to commits that wait for the disk"
    );
}

/// Neither a claim for a turned-off callback's work nor a claim for any callback's takes
/// it: the callback is checked in both forms of a claim's branch.
async fn a_claim_takes_nothing_of_a_turned_off_callback(app: TestApp) {
    let (_receiver, off, on) = two_callbacks(&app).await;
    for _ in 0..3 {
        app.order().await;
    }
    let (status, _) = app
        .put(&format!("/callbacks/{off}"), json!({ "enabled": false }))
        .await;
    assert_eq!(status, StatusCode::OK);
    let claimed = app
        .db
        .claim_due_for_each(&[(off.as_str(), 5), (on.as_str(), 2)], 60_000_000)
        .await
        .expect("claim");
    let sizes: Vec<usize> = claimed.iter().map(Vec::len).collect();
    assert_eq!(
        sizes,
        [0, 2],
        "the turned-off callback's branch takes nothing"
    );
    let rest = app.db.claim_due(10, 60_000_000).await.expect("claim any");
    assert_eq!(rest.len(), 1, "{rest:?}");
    assert_eq!(rest[0].callback_id, on);
    assert_eq!(
        count(
            &app,
            "SELECT COUNT(*) FROM deliveries WHERE callback_id = $1 AND lease_token IS NULL",
            &off
        )
        .await,
        3,
        "its deliveries stay unclaimed"
    );
}

async fn a_claim_reads_what_its_attempts_send_as_a_read_after_it_would(app: TestApp) {
    let (_receiver, first, second) = two_callbacks(&app).await;
    let (status, body) = app
        .post(&format!("/callbacks/{second}/secret"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    app.order().await;
    app.order().await;
    // One event's delivery to the second callback is done: its counts differ from the
    // other event's.
    let done: String =
        sqlx::query("SELECT id FROM deliveries WHERE callback_id = $1 ORDER BY id LIMIT 1")
            .bind(&second)
            .fetch_one(app.db.reader())
            .await
            .expect("a delivery")
            .get("id");
    sqlx::query("UPDATE deliveries SET status = 'succeeded', next_attempt_at = NULL WHERE id = $1")
        .bind(&done)
        .execute(app.db.writer())
        .await
        .expect("mark done");

    let (claimed, inputs) = app
        .db
        .claim_due_for_each_with_inputs(&[(first.as_str(), 10), (second.as_str(), 10)], 60_000_000)
        .await
        .expect("claim");
    let sizes: Vec<usize> = claimed.iter().map(Vec::len).collect();
    assert_eq!(sizes, [2, 1]);
    let read_after = app.db.inputs(claimed.iter().flatten()).await.expect("read");
    assert_eq!(inputs.bodies, read_after.bodies);
    assert_eq!(inputs.targets.len(), 2);
    for (callback, target) in &read_after.targets {
        let claimed_with = &inputs.targets[callback];
        assert_eq!(
            (
                &claimed_with.url,
                &claimed_with.method,
                &claimed_with.secrets
            ),
            (&target.url, &target.method, &target.secrets)
        );
    }
    assert_eq!(
        inputs.targets[&second].secrets.len(),
        2,
        "rotated: both sign"
    );
    for claimed in claimed.iter().flatten() {
        let (_, body) = inputs.request(claimed).expect("what the attempt sends");
        let sent: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        let (_, shown) = app.get(&format!("/events/{}", claimed.event_id)).await;
        assert_eq!(sent, shown, "the body is the event as GET shows it");
        let done_here = done.starts_with(&claimed.event_id);
        let statuses = &sent["events"][0]["callback_statuses"];
        assert_eq!(statuses["pending"], if done_here { 1 } else { 2 });
        assert_eq!(statuses["succeeded"], if done_here { 1 } else { 0 });
    }
}

async fn the_dispatcher_claims_on_connections_of_its_own(app: TestApp) {
    let mut receiver = Receiver::start(Answer::Status(200)).await;
    register_order_created(&app, &receiver.url).await;
    app.order().await;
    let dispatcher = Dispatcher::new(app.db.clone(), fast());
    // Every connection the API writes with is inside a transaction that goes on.
    let writers = match app.db.backend() {
        Backend::Sqlite => 1,
        Backend::Postgres => 8,
    };
    let mut open = Vec::new();
    for _ in 0..writers {
        open.push(app.db.begin().await.expect("begin"));
    }
    let step = tokio::time::timeout(Duration::from_millis(500), dispatcher.run_once()).await;
    match app.db.backend() {
        Backend::Postgres => {
            let attempted = step.expect("no wait for the API's pool").expect("step");
            assert_eq!(attempted, 1);
        }
        Backend::Sqlite => {
            assert!(
                step.is_err(),
                "SQLite has one writer: the claim waits for it"
            );
            drop(open);
            assert_eq!(dispatcher.run_once().await.expect("step"), 1);
        }
    }
    assert_eq!(receiver.drain().len(), 1);
}

/// The database refuses one attempt of a batch (a trigger, as a full disk or a constraint
/// would): nothing of the batch is written, and the writer serves the next batch.
async fn a_refused_batch_of_attempts_leaves_nothing_and_the_writer_goes_on(app: TestApp) {
    let (_receiver, callback, claimed) = claimed_orders(&app, 2).await;
    let refuse = match app.backend() {
        Backend::Sqlite => {
            "CREATE TRIGGER refuse_attempts BEFORE INSERT ON attempts WHEN NEW.error_detail = 'poison' \
             BEGIN SELECT RAISE(ABORT, 'injected failure'); END;"
        }
        Backend::Postgres => {
            "CREATE FUNCTION refuse_attempt() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'injected failure'; END $$ \
             LANGUAGE plpgsql; \
             CREATE TRIGGER refuse_attempts BEFORE INSERT ON attempts FOR EACH ROW \
             WHEN (NEW.error_detail = 'poison') EXECUTE FUNCTION refuse_attempt();"
        }
    };
    sqlx::raw_sql(refuse)
        .execute(app.db.writer())
        .await
        .expect("install the trigger");
    let good = Finished {
        claimed: claimed[0].clone(),
        record: attempt_record(200, true),
        next: Next::Succeeded,
        health: Health::Ok,
    };
    let poison = Finished {
        claimed: claimed[1].clone(),
        record: AttemptRecord {
            error_detail: Some("poison".into()),
            ..attempt_record(200, true)
        },
        next: Next::Succeeded,
        health: Health::Ok,
    };
    let refused = app
        .db
        .record_attempts(&[good.clone(), poison], i64::MAX / 2)
        .await;
    assert!(refused.is_err(), "the trigger refuses the batch");
    let attempts = "SELECT COUNT(*) FROM attempts a JOIN deliveries d ON d.id = a.delivery_id WHERE d.callback_id = $1";
    assert_eq!(
        count(&app, attempts, &callback).await,
        0,
        "no attempt of the batch is in the log"
    );
    let leased = "SELECT COUNT(*) FROM deliveries WHERE callback_id = $1 AND status = 'pending' AND lease_token IS NOT NULL";
    assert_eq!(
        count(&app, leased, &callback).await,
        2,
        "both deliveries are as claimed"
    );
    let row = sqlx::query("SELECT last_success_at FROM callbacks WHERE id = $1")
        .bind(&callback)
        .fetch_one(app.db.reader())
        .await
        .expect("callback");
    assert_eq!(
        row.get::<Option<i64>, _>("last_success_at"),
        None,
        "nor the callback's health"
    );

    let kept = app
        .db
        .record_attempts(&[good], i64::MAX / 2)
        .await
        .expect("the next batch is written");
    assert_eq!(kept, [true]);
    assert_eq!(count(&app, attempts, &callback).await, 1);
    let succeeded =
        "SELECT COUNT(*) FROM deliveries WHERE callback_id = $1 AND status = 'succeeded'";
    assert_eq!(count(&app, succeeded, &callback).await, 1);
}

/// A batch of more attempts than one statement takes (several statements of each kind) is
/// written whole: one of 70, whose text SQLite keeps prepared (batches of up to 128), and
/// one of 130, whose text it prepares for that run alone. Each is written twice, so a kept
/// text also runs again.
async fn a_batch_of_many_chunks_is_written_whole(app: TestApp) {
    let (_receiver, callback, claimed) = claimed_orders(&app, 200).await;
    let finished: Vec<Finished> = claimed
        .into_iter()
        .map(|claimed| Finished {
            claimed,
            record: attempt_record(200, true),
            next: Next::Succeeded,
            health: Health::Ok,
        })
        .collect();
    let (kept_text, own_text) = finished.split_at(70);
    for batch in [kept_text, own_text] {
        let kept = app
            .db
            .record_attempts(batch, i64::MAX / 2)
            .await
            .expect("record");
        assert!(kept.iter().all(|k| *k), "every one held its lease");
        // Again: every lease is gone now, so none moves, and all are logged all the same.
        let kept = app
            .db
            .record_attempts(batch, i64::MAX / 2)
            .await
            .expect("record again");
        assert!(kept.iter().all(|k| !*k), "none holds its lease any more");
    }
    let attempts = "SELECT COUNT(*) FROM attempts a JOIN deliveries d ON d.id = a.delivery_id WHERE d.callback_id = $1";
    assert_eq!(count(&app, attempts, &callback).await, 400);
    let (_, health) = app.get(&format!("/callbacks/{callback}/health")).await;
    assert_eq!(
        health["health"][0]["attempts_last_hour"], 400,
        "every attempt counted once: {health}"
    );
    let succeeded = "SELECT COUNT(*) FROM deliveries WHERE callback_id = $1 AND status = 'succeeded' AND attempts = 1";
    assert_eq!(count(&app, succeeded, &callback).await, 200);
}

on_both_backends!(
    enqueue_many_fans_each_event_out_to_the_callbacks_that_want_it,
    one_batch_of_attempts_is_fenced_per_delivery_and_folds_callback_health,
    a_batch_folds_each_callbacks_health_in_order_over_the_attempts_kept,
    a_callbacks_health_counts_its_attempts_by_the_minute_and_keeps_its_last_failure,
    a_refused_batch_of_attempts_leaves_nothing_and_the_writer_goes_on,
    a_batch_of_many_chunks_is_written_whole,
    a_busy_callback_is_refilled_by_claims_of_its_own,
    a_rounds_claims_commit_together_and_later_commits_stay_durable,
    a_claim_takes_nothing_of_a_turned_off_callback,
    a_claim_reads_what_its_attempts_send_as_a_read_after_it_would,
    the_dispatcher_claims_on_connections_of_its_own,
);
