//! Dispatcher processes, as operators run them: `hookline dispatch` killed with SIGKILL in
//! the middle of a run loses nothing, two of them side by side on PostgreSQL deliver each
//! delivery exactly once, and one whose LISTEN connection was cut still claims at once the
//! work notified meanwhile.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use hookline::store::outbox::{self, NewEvent};
use hookline::store::{Db, DbOptions};
use serde_json::json;
use sqlx::Row;

#[path = "support/schema.rs"]
mod schema;

const POSTGRES_ENV: &str = "HOOKLINE_TEST_DATABASE_URL";

/// Counts the requests per `webhook-id` a receiver got; answers 200 after `delay`.
#[derive(Clone, Default)]
struct Tally(Arc<Mutex<HashMap<String, u32>>>);

impl Tally {
    fn total(&self) -> u32 {
        self.0.lock().expect("lock").values().sum()
    }

    fn snapshot(&self) -> HashMap<String, u32> {
        self.0.lock().expect("lock").clone()
    }
}

async fn receiver(delay: Duration) -> (String, Tally) {
    let tally = Tally::default();
    let t = tally.clone();
    let app = axum::Router::new().fallback(move |headers: HeaderMap| {
        let t = t.clone();
        async move {
            tokio::time::sleep(delay).await;
            let id = headers
                .get("webhook-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            *t.0.lock().expect("lock").entry(id).or_insert(0) += 1;
            "ok"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hooks", listener.local_addr().expect("address"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, tally)
}

/// A database with one marketplace, a callback per receiver URL and `events` events
/// enqueued through the library call. Returns the database and its URL.
async fn seeded(url: &str, receivers: &[&str], events: usize) -> Db {
    let db = Db::connect(url, &DbOptions::default())
        .await
        .expect("connect");
    let (marketplace, _) = db.create_marketplace("load").await.expect("marketplace");
    for (i, receiver) in receivers.iter().enumerate() {
        sqlx::query(
            "INSERT INTO callbacks (id, marketplace_id, url, method, revision, enabled, secret, created_at, updated_at) \
             VALUES ($1, $2, $3, 'post', '1.1', TRUE, $4, 0, 0)",
        )
        .bind(format!("CB{i:0>24}"))
        .bind(&marketplace.id)
        .bind(*receiver)
        .bind(hookline::signing::generate_secret())
        .execute(db.writer())
        .await
        .expect("a callback");
    }
    for chunk in (0..events).collect::<Vec<_>>().chunks(100) {
        enqueue(&db, &marketplace.id, chunk.len()).await;
    }
    db
}

/// Enqueues `events` order events in one transaction, through the library call.
async fn enqueue(db: &Db, marketplace_id: &str, events: usize) {
    let entity = json!({ "orders": [{ "id": "OR000000000000000000000001" }] });
    let mut tx = db.begin().await.expect("begin");
    for _ in 0..events {
        outbox::enqueue::<sqlx::Any>(
            &mut *tx,
            NewEvent {
                marketplace_id,
                event_type: "order.updated",
                entity_id: "OR000000000000000000000001",
                entity: &entity,
                occurred_at: hookline::store::now_micros(),
            },
        )
        .await
        .expect("enqueue");
    }
    tx.commit().await.expect("commit");
}

fn dispatcher(url: &str, per_callback: u32, poll_ms: u32) -> Child {
    Command::new(env!("CARGO_BIN_EXE_hookline"))
        .args([
            "dispatch",
            "--allow-network",
            "127.0.0.0/8",
            "--dispatch-lease-secs",
            "2",
        ])
        .args([
            "--dispatch-per-callback",
            &per_callback.to_string(),
            "--retry-initial-ms",
            "50",
        ])
        .args(["--dispatch-poll-ms", &poll_ms.to_string()])
        .args(["--request-timeout-ms", "1500"])
        .env("HOOKLINE_DATABASE_URL", url)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start hookline dispatch")
}

async fn count(db: &Db, sql: &'static str) -> i64 {
    sqlx::query(sql)
        .fetch_one(db.reader())
        .await
        .expect("count")
        .get::<i64, _>(0)
}

/// Waits until every delivery succeeded, up to `limit`.
async fn until_all_succeeded(db: &Db, total: i64, limit: Duration) {
    let start = Instant::now();
    while count(
        db,
        "SELECT COUNT(*) FROM deliveries WHERE status = 'succeeded'",
    )
    .await
        < total
    {
        assert!(
            start.elapsed() < limit,
            "not every delivery succeeded within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn killed_dispatcher_loses_nothing(url: String) {
    const EVENTS: usize = 300;
    const PER_CALLBACK: u32 = 4;
    let (a, tally_a) = receiver(Duration::from_millis(25)).await;
    let (b, tally_b) = receiver(Duration::from_millis(25)).await;
    let db = seeded(&url, &[&a, &b], EVENTS).await;
    let total = 2 * EVENTS as i64;
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM deliveries").await,
        total,
        "every event has its deliveries"
    );

    let started = Instant::now();
    let mut first = dispatcher(&url, PER_CALLBACK, 200);
    while tally_a.total() + tally_b.total() < 150 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the first dispatcher delivered too little"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    first.kill().expect("SIGKILL");
    first.wait().expect("reaped");
    let at_kill = tally_a.total() + tally_b.total();
    assert!((at_kill as i64) < total, "killed in the middle of the run");

    let mut second = dispatcher(&url, PER_CALLBACK, 200);
    until_all_succeeded(&db, total, Duration::from_secs(90)).await;
    second.kill().expect("stop the second dispatcher");
    second.wait().expect("reaped");
    let took = started.elapsed();

    let mut duplicates = 0;
    for tally in [tally_a.snapshot(), tally_b.snapshot()] {
        assert_eq!(tally.len(), EVENTS, "every event reached every callback");
        duplicates += tally.values().map(|n| n - 1).sum::<u32>();
    }
    // Only attempts in flight at the kill can be sent twice: at most per_callback each.
    assert!(duplicates <= 2 * PER_CALLBACK, "{duplicates} duplicates");
    let recorded_ok = count(
        &db,
        "SELECT COUNT(*) FROM attempts WHERE CAST(succeeded AS INTEGER) = 1",
    )
    .await;
    assert_eq!(
        recorded_ok, total,
        "each delivery's success is recorded once"
    );
    eprintln!(
        "crash test: {total} deliveries, killed after {at_kill}, {duplicates} duplicates, {took:?} in all"
    );
}

/// Runs `hookline serve` with debug logs, uses every kind of secret (the API secret, the
/// operator token, a callback's signing secret) through the API and a delivery, and reads
/// the logs: none of them appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_never_contain_secrets() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().expect("a directory");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let port = listener.local_addr().expect("address").port();
    drop(listener);
    let operator = "operator-secret-token-for-the-log-test";
    let mut child = Command::new(env!("CARGO_BIN_EXE_hookline"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--allow-network",
            "127.0.0.0/8",
        ])
        .args(["--log-format", "json"])
        .env("HOOKLINE_DATABASE_URL", dir.path().join("logs.db"))
        .env("HOOKLINE_OPERATOR_TOKEN", operator)
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start hookline serve");
    // Both streams are read as they come, so a pipe never fills and stalls hookline.
    let (announced, secret_rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(word) = line.split_whitespace().find(|w| w.starts_with("hlsk_")) {
                let _ = announced.send(word.to_owned());
            }
        }
    });
    let stderr = child.stderr.take().expect("stderr");
    let logs = Arc::new(Mutex::new(String::new()));
    let reader = {
        let logs = logs.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let mut all = logs.lock().expect("lock");
                all.push_str(&line);
                all.push('\n');
            }
        })
    };
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let started = Instant::now();
    while client.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "hookline did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The first marketplace's secret: shown once on standard output, by design.
    let secret = secret_rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the announced secret");
    let (hook, tally) = receiver(Duration::ZERO).await;
    let created: serde_json::Value = client
        .post(format!("{base}/callbacks"))
        .basic_auth(&secret, Some(""))
        .json(&json!({ "url": hook }))
        .send()
        .await
        .expect("create a callback")
        .json()
        .await
        .expect("json");
    let whsec = created["callbacks"][0]["secret"]
        .as_str()
        .expect("a whsec secret")
        .to_owned();
    let order = client
        .post(format!("{base}/orders"))
        .bearer_auth(&secret)
        .json(&json!({ "merchant": "/customers/CU1aISiQGTsURlHIHO0Ajnag" }))
        .send()
        .await
        .expect("create an order");
    assert_eq!(order.status(), 201);
    let _ = client
        .get(format!("{base}/marketplaces"))
        .bearer_auth(operator)
        .send()
        .await;
    let _ = client
        .get(format!("{base}/orders"))
        .bearer_auth("a-wrong-secret-value")
        .send()
        .await;
    // Wait until the delivery arrived and its attempt was recorded and logged.
    while tally.total() == 0
        || !logs
            .lock()
            .expect("lock")
            .contains("delivery attempt recorded")
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no delivery was recorded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.kill().expect("stop");
    child.wait().expect("reaped");
    reader.join().expect("the log reader");
    let logs = logs.lock().expect("lock").clone();
    for (what, value) in [
        ("API secret", secret.as_str()),
        ("operator token", operator),
        ("whsec secret", whsec.as_str()),
        ("wrong secret", "a-wrong-secret-value"),
    ] {
        assert!(!logs.contains(value), "the {what} appears in the logs");
    }
    let key = whsec.trim_start_matches("whsec_");
    assert!(!logs.contains(key), "the signing key appears in the logs");
}

#[test]
fn hookline_verify_accepts_a_known_vector_and_refuses_a_tampered_body() {
    use std::io::Write;
    let run = |body: &str| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_hookline"))
            .args([
                "verify",
                "--secret",
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            ])
            .args([
                "--id",
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                "--timestamp",
                "1614265330",
            ])
            .args([
                "--signature",
                "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
                "--ignore-time",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run hookline verify");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(body.as_bytes())
            .expect("write the body");
        let out = child.wait_with_output().expect("wait");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        )
    };
    assert_eq!(
        run(r#"{"test": 2432232314}"#),
        (Some(0), "valid".to_owned())
    );
    let (code, said) = run(r#"{"test": 2432232315}"#);
    assert_eq!(code, Some(1));
    assert!(said.starts_with("invalid: no v1 signature"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_killed_dispatcher_loses_nothing() {
    let dir = tempfile::tempdir().expect("a directory");
    let path = dir.path().join("crash.db");
    killed_dispatcher_loses_nothing(path.to_str().expect("utf-8").to_owned()).await;
}

/// A fresh schema in the PostgreSQL test database, as a URL.
async fn postgres_url() -> String {
    let base =
        std::env::var(POSTGRES_ENV).expect("HOOKLINE_TEST_DATABASE_URL was set at build time");
    schema::fresh_schema(&base).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(hookline_postgres),
    ignore = "PostgreSQL half skipped: set HOOKLINE_TEST_DATABASE_URL=postgres://postgres@127.0.0.1:5432/test to run it"
)]
async fn postgres_killed_dispatcher_loses_nothing() {
    killed_dispatcher_loses_nothing(postgres_url().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(hookline_postgres),
    ignore = "PostgreSQL half skipped: set HOOKLINE_TEST_DATABASE_URL=postgres://postgres@127.0.0.1:5432/test to run it"
)]
async fn postgres_two_dispatchers_deliver_each_delivery_exactly_once() {
    const EVENTS: usize = 500;
    let url = postgres_url().await;
    let (a, tally_a) = receiver(Duration::from_millis(2)).await;
    let (b, tally_b) = receiver(Duration::from_millis(2)).await;
    let db = seeded(&url, &[&a, &b], EVENTS).await;
    let total = 2 * EVENTS as i64;
    let mut one = dispatcher(&url, 8, 200);
    let mut two = dispatcher(&url, 8, 200);
    until_all_succeeded(&db, total, Duration::from_secs(90)).await;
    for child in [&mut one, &mut two] {
        child.kill().expect("stop");
        child.wait().expect("reaped");
    }
    for tally in [tally_a.snapshot(), tally_b.snapshot()] {
        assert_eq!(tally.len(), EVENTS);
        assert!(tally.values().all(|n| *n == 1), "a delivery was sent twice");
    }
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM attempts").await,
        total,
        "one attempt per delivery"
    );
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM deliveries WHERE attempts = 1").await,
        total
    );
}

/// A NOTIFY sent while a dispatcher's listener connects again is lost; the dispatcher must
/// still claim that work at once, not at its next poll (a minute here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(hookline_postgres),
    ignore = "PostgreSQL half skipped: set HOOKLINE_TEST_DATABASE_URL=postgres://postgres@127.0.0.1:5432/test to run it"
)]
async fn postgres_dispatcher_listening_again_claims_what_it_missed() {
    let name = format!("listen_{}", ulid::Ulid::new().to_string().to_lowercase());
    let url = format!("{}&application_name={name}", postgres_url().await);
    let (a, tally) = receiver(Duration::ZERO).await;
    let db = seeded(&url, &[&a], 0).await;
    let marketplace_id: String = sqlx::query("SELECT id FROM marketplaces")
        .fetch_one(db.reader())
        .await
        .expect("the marketplace")
        .get(0);
    let mut child = dispatcher(&url, 8, 60_000);
    let listener = "SELECT pid FROM pg_stat_activity WHERE application_name = $1 \
         AND query = 'LISTEN \"hookline_deliveries\"'";
    let start = Instant::now();
    let pid: i32 = loop {
        if let Some(row) = sqlx::query(listener)
            .bind(&name)
            .fetch_optional(db.reader())
            .await
            .expect("pg_stat_activity")
        {
            break row.get(0);
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the dispatcher never listened"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Once the dispatcher has found nothing to do and sleeps until its next poll, cut the
    // listener's connection, and commit while it connects again (a new connection takes
    // tens of milliseconds here).
    tokio::time::sleep(Duration::from_secs(1)).await;
    sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .execute(db.writer())
        .await
        .expect("terminate the listener");
    enqueue(&db, &marketplace_id, 1).await;
    let start = Instant::now();
    while tally.total() == 0 && start.elapsed() < Duration::from_secs(15) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.kill().expect("stop");
    child.wait().expect("reaped");
    assert_eq!(
        tally.total(),
        1,
        "the event committed while the listener reconnected was not delivered before the next poll"
    );
}
