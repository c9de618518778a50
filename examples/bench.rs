//! End-to-end benchmark: state changes written -> outbox -> dispatcher -> K receivers that
//! verify every signature. Loopback only, bounded in time, stops by itself.
//!
//! ```sh
//! cargo run --release --example bench -- --smoke
//! cargo run --release --example bench -- --events 5000 --callbacks 2
//! cargo run --release --example bench -- --database postgres://postgres@127.0.0.1:5432/test \
//!     --events 5000 --callbacks 2
//! # several dispatcher processes (PostgreSQL only; build the binary first):
//! cargo build --release --bin hookline
//! cargo run --release --example bench -- --database postgres://postgres@127.0.0.1:5432/test \
//!     --dispatchers 2
//! ```
//!
//! Phases, each waiting until every delivery is settled (succeeded or failed) before the next:
//!
//! 1. **API**: `--api-requests` creates through the in-process HTTP API (an order, then a debit
//!    on it, alternately), `--api-concurrency` at once, with the marketplace's secret.
//! 2. **Throughput**: `--events` events through `hookline::store::outbox::enqueue_many`, by
//!    `--writers` tasks committing `--tx-batch` events per transaction, while the dispatcher
//!    runs. Deliveries per second = events x K / (first enqueue -> last delivery settled).
//!    For scale, bare HTTP round trips follow (`--bare-seconds`): the dispatcher's HTTP
//!    client alone, as many at once as phase 2's attempts, to receivers that answer at once,
//!    with phase 2's mean body size; the table shows phase 2's rate as a share of theirs.
//! 3. **Latency**: events at a fixed offered `--rate` (one per transaction) for
//!    `--latency-seconds`; commit-to-receipt is measured from the moment `commit()` returned
//!    to the first 2xx arrival of that delivery at its receiver (so failed first attempts count
//!    their retries). The entity also carries the time it was written (`bench.written_us`),
//!    which the receiver reads from the body; both are reported.
//!
//! Options (all have defaults; see `--help`):
//!
//! - `--database URL`: omitted = a temporary SQLite file; `postgres://...` = a fresh schema
//!   created for the run and dropped at the end.
//! - `--events N`, `--callbacks K`, `--payload-bytes B` (padding in each outbox entity),
//!   `--delay-ms D` (each receiver answers after D ms), `--fail-rate F` (each receiver answers
//!   500 to a fraction F of requests; retries are milliseconds apart, `--max-attempts` in all).
//! - `--dispatchers P`: 1 = an in-process `hookline::dispatch::Dispatcher` (default);
//!   P > 1 (PostgreSQL only), or `--external`, = P `hookline dispatch` processes from
//!   `--hookline-bin PATH` (default: `target/release/hookline`, next to the `examples`
//!   directory this benchmark runs from; `cargo build --release --bin hookline` first).
//! - `--rate R`, `--latency-seconds S`: the fixed offered load of phase 3.
//! - `--bare-seconds S`: how long the bare HTTP round trips run (0: not at all).
//! - `--api-requests`, `--api-concurrency`, `--writers`, `--tx-batch`: load shape.
//! - `--concurrency`, `--per-callback`, `--batch`, `--max-attempts`, `--db-connections`,
//!   `--worker-threads`: dispatcher, pool and runtime knobs (defaults are hookline's
//!   production defaults where one exists).
//! - `--max-seconds T`: global deadline; when it passes the table is printed with what was
//!   measured and the exit code is 1.
//! - `--smoke`: tiny run for CI (caps events at 50, API requests at 20, rate at 50/s for 1 s,
//!   bare round trips at 0.2 s, the deadline at 60 s).
//!
//! Exit code: 0 when every phase completed, every attempt recorded in the database arrived
//! at a receiver (and the reverse) and every signature verified; 1 otherwise.
//!
//! Peak RSS and CPU of the in-process case are the whole benchmark process (API, dispatcher,
//! receivers and the load generator); with dispatcher processes they are also reported for
//! those processes alone. CPU is read from `/proc/<pid>/stat` (utime + stime).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use clap::Parser;
use hookline::dispatch::client::{Client, Request};
use hookline::dispatch::guard::Guard;
use hookline::dispatch::schedule::RetrySchedule;
use hookline::dispatch::{DispatchConfig, Dispatcher};
use hookline::store::outbox::{self, NewEvent};
use hookline::store::{Backend, Db, DbOptions, now_micros};
use serde_json::{Value, json};
use sqlx::Row;

mod support;

use support::{BoxError, count, drop_schema, fresh_schema, proc_cpu_seconds, proc_status_kb};

/// The allocator the `hookline` binary runs with, so the in-process dispatcher is measured
/// as it runs there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A card id in Balanced's format, for debits.
const CARD: &str = "/cards/CC1cEczBXQmQz8GhkV1I9gje";
const MERCHANT: &str = "/customers/CU1aISiQGTsURlHIHO0Ajnag";

#[derive(Parser, Debug, Clone)]
#[command(about = "End-to-end benchmark of hookline: outbox -> dispatcher -> receivers")]
struct Args {
    /// A postgres:// URL (a fresh schema per run, dropped at the end); omitted: a temporary
    /// SQLite file.
    #[arg(long)]
    database: Option<String>,
    /// Events enqueued through the library outbox call in the throughput phase.
    #[arg(long, short = 'n', default_value_t = 2000)]
    events: usize,
    /// Receivers, one callback each: every event is delivered K times.
    #[arg(long, short = 'k', default_value_t = 2)]
    callbacks: usize,
    /// Bytes of padding in each outbox entity.
    #[arg(long, default_value_t = 256)]
    payload_bytes: usize,
    /// Receivers answer after this many milliseconds.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Fraction of requests (0..1) receivers answer with 500.
    #[arg(long, default_value_t = 0.0)]
    fail_rate: f64,
    /// Dispatchers: 1 = in process; more = `hookline dispatch` processes (PostgreSQL only).
    #[arg(long, default_value_t = 1)]
    dispatchers: usize,
    /// Run the dispatcher(s) as `hookline dispatch` processes even when there is one.
    #[arg(long)]
    external: bool,
    /// The `hookline` binary for dispatcher processes (default: target/release/hookline).
    #[arg(long)]
    hookline_bin: Option<PathBuf>,
    /// Offered load of the latency phase, in events per second.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Length of the latency phase, in seconds.
    #[arg(long, default_value_t = 3.0)]
    latency_seconds: f64,
    /// Creates through the HTTP API in the API phase (orders and debits, alternately).
    #[arg(long, default_value_t = 500)]
    api_requests: usize,
    /// API requests in flight at once.
    #[arg(long, default_value_t = 8)]
    api_concurrency: usize,
    /// Tasks enqueueing in the throughput phase.
    #[arg(long, default_value_t = 4)]
    writers: usize,
    /// Events per transaction in the throughput phase.
    #[arg(long, default_value_t = 100)]
    tx_batch: usize,
    /// Dispatcher: deliveries held per process (in flight and waiting).
    #[arg(long, default_value_t = 1024)]
    concurrency: usize,
    /// Dispatcher: attempts in flight per callback.
    #[arg(long, default_value_t = DispatchConfig::default().per_callback)]
    per_callback: usize,
    /// Dispatcher: deliveries claimed per round trip.
    #[arg(long, default_value_t = 256)]
    batch: i64,
    /// Attempts per delivery (retries 10 ms, 20 ms, 40 ms, ... apart).
    #[arg(long, default_value_t = 5)]
    max_attempts: u32,
    /// PostgreSQL pool size per process.
    #[arg(long, default_value_t = DbOptions::default().max_connections)]
    db_connections: u32,
    /// tokio's worker threads in this process (default: hookline's for the backend, see
    /// `hookline --help`); given, also passed to dispatcher processes.
    #[arg(long)]
    worker_threads: Option<usize>,
    /// Length of the bare HTTP round trips run after phase 2, in seconds (0: none).
    #[arg(long, default_value_t = 1.0)]
    bare_seconds: f64,
    /// Global deadline, in seconds.
    #[arg(long, default_value_t = 120)]
    max_seconds: u64,
    /// A tiny run for CI.
    #[arg(long)]
    smoke: bool,
}

impl Args {
    fn effective(mut self) -> Self {
        if self.smoke {
            self.events = self.events.min(50);
            self.api_requests = self.api_requests.min(20);
            self.rate = self.rate.min(50);
            self.latency_seconds = self.latency_seconds.min(1.0);
            self.bare_seconds = self.bare_seconds.min(0.2);
            self.max_seconds = self.max_seconds.min(60);
        }
        self.callbacks = self.callbacks.max(1);
        self.dispatchers = self.dispatchers.max(1);
        self.writers = self.writers.max(1);
        self.tx_batch = self.tx_batch.max(1);
        self.api_concurrency = self.api_concurrency.max(1);
        self.fail_rate = self.fail_rate.clamp(0.0, 1.0);
        self
    }

    fn out_of_process(&self) -> bool {
        self.external || self.dispatchers > 1
    }

    fn backend(&self) -> Backend {
        self.database
            .as_deref()
            .map_or(Backend::Sqlite, Backend::of_url)
    }

    /// This process's worker threads: as `hookline` would run on the same backend, unless
    /// given.
    fn worker_threads(&self) -> usize {
        self.worker_threads
            .unwrap_or_else(|| self.backend().default_worker_threads())
            .max(1)
    }

    fn dispatch_config(&self) -> Result<DispatchConfig, BoxError> {
        Ok(DispatchConfig {
            batch_size: self.batch.max(1),
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_millis(50),
            concurrency: self.concurrency.max(1),
            per_callback: self.per_callback.max(1),
            connect_timeout: Duration::from_secs(1),
            request_timeout: self.request_timeout(),
            schedule: RetrySchedule {
                initial: Duration::from_millis(10),
                factor: 2.0,
                max_delay: Duration::from_secs(1),
                max_attempts: self.max_attempts.max(1),
                max_age: Duration::from_secs(3600),
                jitter: 0.0,
                retry_after_max: Duration::from_secs(1),
            },
            allow: vec!["127.0.0.0/8".parse()?],
            shutdown_grace: Duration::from_secs(1),
            ..DispatchConfig::default()
        })
    }

    fn request_timeout(&self) -> Duration {
        Duration::from_millis(5000 + 4 * self.delay_ms)
    }
}

/// What all receivers saw.
#[derive(Default)]
struct Stats {
    received: AtomicU64,
    /// Request body bytes received, for the bare round trips' bodies.
    body_bytes: AtomicU64,
    answered_ok: AtomicU64,
    answered_500: AtomicU64,
    bad_signature: AtomicU64,
    /// One per 2xx answer: (webhook-id, arrival in µs, `bench.written_us` from the body).
    successes: Mutex<Vec<(String, i64, Option<i64>)>>,
}

/// State the deadline handler needs too.
#[derive(Default)]
struct Shared {
    rows: Mutex<Vec<(String, String)>>,
    notes: Mutex<Vec<String>>,
    stats: Arc<Stats>,
    db: OnceLock<Db>,
    children: Mutex<Vec<Child>>,
    dispatcher: Mutex<
        Option<(
            tokio::sync::oneshot::Sender<()>,
            tokio::task::JoinHandle<()>,
        )>,
    >,
    /// (admin URL, schema) of a PostgreSQL run.
    schema: Mutex<Option<(String, String)>>,
    /// event id -> commit returned (µs), for the latency phase.
    committed: Mutex<HashMap<String, i64>>,
}

impl Shared {
    fn row(&self, name: &str, value: impl Into<String>) {
        lock(&self.rows).push((name.to_owned(), value.into()));
    }

    fn note(&self, note: impl Into<String>) {
        lock(&self.notes).push(note.into());
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn main() -> ExitCode {
    let args = Args::parse().effective();
    // Logs as `hookline serve` has them by default (info, to standard error), so that the
    // in-process dispatcher pays for its logging as it does there; `RUST_LOG` changes the
    // level (`RUST_LOG=sqlx=debug` shows every statement with its time).
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = match hookline::server::runtime(args.worker_threads()) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench: no runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(bench(args));
    runtime.shutdown_timeout(Duration::from_secs(2));
    code
}

async fn bench(args: Args) -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let shared = Arc::new(Shared::default());
    let tmp = match tempfile::tempdir() {
        Ok(dir) => dir,
        Err(e) => {
            eprintln!("bench: no temporary directory: {e}");
            return ExitCode::FAILURE;
        }
    };
    let started = Instant::now();
    let limit = Duration::from_secs(args.max_seconds);
    let outcome = tokio::time::timeout(limit, run(&args, &shared, tmp.path())).await;
    let mut complete = match outcome {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            shared.note(format!("INCOMPLETE: {e}"));
            false
        }
        Err(_) => {
            shared.note(format!(
                "INCOMPLETE: the {}s deadline passed; what was measured so far is shown",
                args.max_seconds
            ));
            false
        }
    };
    let consistent = finish(&args, &shared).await;
    complete &= consistent;
    shared.row(
        "wall time",
        format!("{:.1} s", started.elapsed().as_secs_f64()),
    );
    print_table(&args, &shared, complete);
    cleanup(&shared).await;
    drop(tmp);
    if complete {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn run(args: &Args, shared: &Arc<Shared>, tmp: &std::path::Path) -> Result<(), BoxError> {
    // The database.
    let url = match &args.database {
        Some(base) if base.starts_with("postgres") => {
            let (url, schema) = fresh_schema(base).await?;
            *lock(&shared.schema) = Some((base.clone(), schema));
            url
        }
        Some(other) => return Err(format!("--database must be a postgres:// URL: {other}").into()),
        None => tmp.join("bench.db").to_string_lossy().into_owned(),
    };
    let is_sqlite = args.database.is_none();
    if is_sqlite && args.dispatchers > 1 {
        return Err("SQLite takes one dispatcher; use --database postgres://... for more".into());
    }
    let options = DbOptions {
        max_connections: args.db_connections,
        ..DbOptions::default()
    };
    let db = Db::connect(&url, &options).await?;
    let _ = shared.db.set(db.clone());
    let (marketplace, api_secret) = db.create_marketplace("bench").await?;

    // The API, in process.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let api = format!("http://{}", listener.local_addr()?);
    let router = hookline::api::router(db.clone(), hookline::api::ApiConfig::default());
    tokio::spawn(async move { axum::serve(listener, router).await });
    let client = reqwest::Client::new();

    // K receivers, each registered as a callback through the API.
    for i in 0..args.callbacks {
        let secret = Arc::new(OnceLock::new());
        let url = receiver(i, secret.clone(), shared.stats.clone(), args).await?;
        let response = client
            .post(format!("{api}/callbacks"))
            .bearer_auth(&api_secret)
            .json(&json!({ "url": url }))
            .send()
            .await?;
        let status = response.status();
        let body: Value = response.json().await?;
        if status != StatusCode::CREATED {
            return Err(format!("creating a callback: {status} {body}").into());
        }
        let whsec = body["callbacks"][0]["secret"]
            .as_str()
            .ok_or("no secret in the callback")?;
        let _ = secret.set(whsec.to_owned());
    }

    // The dispatcher(s).
    let config = args.dispatch_config()?;
    if args.out_of_process() {
        let bin = match &args.hookline_bin {
            Some(path) => path.clone(),
            None => default_binary()?,
        };
        if !bin.exists() {
            return Err(format!(
                "{} is missing: run `cargo build --release --bin hookline` or pass --hookline-bin",
                bin.display()
            )
            .into());
        }
        for _ in 0..args.dispatchers {
            let child = spawn_dispatcher(&bin, db.url(), args)?;
            lock(&shared.children).push(child);
        }
    } else {
        let dispatcher = Dispatcher::new(db.clone(), config);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            if let Err(e) = dispatcher.run(shutdown).await {
                eprintln!("bench: the dispatcher stopped: {e}");
            }
        });
        *lock(&shared.dispatcher) = Some((stop, task));
    }

    // Phase 1: the API.
    let t = Instant::now();
    let created = api_phase(args, &api, &api_secret).await?;
    let api_secs = t.elapsed().as_secs_f64();
    shared.row(
        "API creates/s (phase 1)",
        format!(
            "{:.0}  ({created} creates in {api_secs:.2} s, {} at once)",
            created as f64 / api_secs,
            args.api_concurrency
        ),
    );
    let settled = wait_settled(&db).await?;
    let api_deliveries = settled.0 + settled.1;
    shared.row(
        "  deliveries from the API phase",
        format!(
            "{api_deliveries} settled {:.2} s after the first create",
            t.elapsed().as_secs_f64()
        ),
    );

    // Phase 2: throughput through the library outbox call.
    let cpu_before = cpu_seconds(shared);
    let log_before = AttemptLog::read();
    let received = || shared.stats.received.load(Ordering::Relaxed);
    let received_before = received();
    let body_bytes = || shared.stats.body_bytes.load(Ordering::Relaxed);
    let body_bytes_before = body_bytes();
    let t = Instant::now();
    let enqueue_secs = enqueue_throughput(args, &db, &marketplace.id).await?;
    let received_while_enqueuing = received() - received_before;
    let (ok, failed) = wait_settled(&db).await?;
    let secs = t.elapsed().as_secs_f64();
    let received_after = received() - received_before - received_while_enqueuing;
    let cpu = cpu_seconds(shared) - cpu_before;
    let log = AttemptLog::read().since(&log_before);
    let deliveries = (ok + failed - api_deliveries).max(0);
    let expected = (args.events * args.callbacks) as i64;
    if deliveries != expected {
        shared.note(format!(
            "phase 2 settled {deliveries} deliveries, expected {expected}"
        ));
    }
    shared.row(
        "deliveries/s end to end (phase 2)",
        format!(
            "{:.0}  ({deliveries} deliveries in {secs:.2} s; enqueue took {enqueue_secs:.2} s)",
            deliveries as f64 / secs
        ),
    );
    // Until the enqueue ends, the outbox's writes and the dispatcher share the database;
    // after it, the dispatcher has it to itself.
    shared.row(
        "  attempts received/s: enqueue running / after",
        format!(
            "{:.0} / {:.0}",
            received_while_enqueuing as f64 / enqueue_secs,
            received_after as f64 / (secs - enqueue_secs).max(f64::EPSILON)
        ),
    );
    // The dispatcher's own metrics, when it runs in this process: what its attempt log's
    // writer did in phase 2, and where its attempts spent their time.
    shared.row(
        "  attempt log: writer busy / attempts per write",
        if args.out_of_process() {
            "not read (the dispatcher runs out of process)".to_owned()
        } else {
            format!(
                "{:.0} % / {:.1}; an attempt took {:.1} ms to answer, then waited {:.1} ms for its record (means)",
                100.0 * log.write_seconds / secs,
                log.attempts / log.writes.max(1.0),
                1000.0 * log.answer_seconds / log.attempts.max(1.0),
                1000.0 * log.wait_seconds / log.attempts.max(1.0),
            )
        },
    );
    shared.row(
        "CPU s per 1,000 deliveries (phase 2)",
        format!(
            "{:.3}  ({cpu:.2} CPU s{})",
            cpu * 1000.0 / deliveries.max(1) as f64,
            if args.out_of_process() {
                ", bench + dispatcher processes"
            } else {
                ", whole process"
            }
        ),
    );

    // For scale: what this machine's loopback HTTP allows without the rest.
    if args.bare_seconds > 0.0 {
        let body = (body_bytes() - body_bytes_before) / (received() - received_before).max(1);
        let cpu_before = cpu_seconds(shared);
        let (trips, trip_secs) = bare_round_trips(args, body as usize).await?;
        let cpu = cpu_seconds(shared) - cpu_before;
        let bare = trips as f64 / trip_secs;
        shared.row(
            "  bare HTTP round trips/s, for scale",
            format!(
                "{bare:.0}  (CPU s per 1,000 {:.3}; phase 2 delivered {:.2} of that rate)",
                cpu * 1000.0 / trips.max(1) as f64,
                deliveries as f64 / secs / bare.max(1.0)
            ),
        );
        shared.row(
            "    how",
            format!(
                "hookline's HTTP client, {} at once to {} receivers that answer at once; {body} B bodies, phase 2's mean; {} s",
                args.callbacks * args.per_callback,
                args.callbacks,
                args.bare_seconds,
            ),
        );
    }

    // Phase 3: latency under a fixed offered load.
    let (offered, phase_secs) = latency_phase(args, shared, &db, &marketplace.id).await?;
    wait_settled(&db).await?;
    shared.row(
        "offered load (phase 3)",
        format!(
            "{:.0} events/s achieved of {} asked ({offered} events, one per transaction)",
            offered as f64 / phase_secs,
            args.rate
        ),
    );
    latency_rows(shared);
    Ok(())
}

/// After phase 2, for scale: POST round trips with the dispatcher's HTTP client, `--per-callback`
/// at a time to each of K receivers that answer 200 at once (no signing, no verifying, no
/// database), bodies of `body_bytes`, for `--bare-seconds`. Returns the round trips and the
/// seconds they took.
async fn bare_round_trips(args: &Args, body_bytes: usize) -> Result<(u64, f64), BoxError> {
    let guard = Arc::new(Guard::new(vec!["127.0.0.0/8".parse()?]));
    let timeout = args.request_timeout();
    let client = Arc::new(Client::new(guard, timeout, timeout, args.per_callback)?);
    let body: Arc<[u8]> = vec![b'x'; body_bytes].into();
    let done = Arc::new(AtomicU64::new(0));
    let mut servers = Vec::new();
    let mut senders = tokio::task::JoinSet::new();
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(args.bare_seconds);
    for _ in 0..args.callbacks {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url: Arc<str> = format!("http://{}/bare", listener.local_addr()?).into();
        let app = axum::Router::new().fallback(|_: Bytes| async { "ok" });
        servers.push(tokio::spawn(
            async move { axum::serve(listener, app).await },
        ));
        for _ in 0..args.per_callback {
            let (client, url, body, done) =
                (client.clone(), url.clone(), body.clone(), done.clone());
            senders.spawn(async move {
                let head = [("content-type".to_owned(), "application/json".to_owned())];
                while Instant::now() < until {
                    let request = Request {
                        method: "post",
                        url: &url,
                        head_fields: &head,
                        body: &body,
                    };
                    let answer = client.send(&request, 1024).await;
                    if !matches!(answer, Ok(ref a) if a.status == 200) {
                        return Err(format!("a bare round trip failed: {answer:?}"));
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            });
        }
    }
    let mut failed = None;
    while let Some(sent) = senders.join_next().await {
        if let Err(e) = sent? {
            failed = Some(e);
        }
    }
    let secs = started.elapsed().as_secs_f64();
    for server in servers {
        server.abort();
    }
    match failed {
        Some(e) => Err(e.into()),
        None => Ok((done.load(Ordering::Relaxed), secs)),
    }
}

/// target/release/hookline, beside target/release/examples/bench.
fn default_binary() -> Result<PathBuf, BoxError> {
    let exe = std::env::current_exe()?;
    let release = exe
        .parent()
        .and_then(|examples| examples.parent())
        .ok_or("cannot locate the target directory")?;
    Ok(release.join("hookline"))
}

fn spawn_dispatcher(bin: &std::path::Path, url: &str, args: &Args) -> Result<Child, BoxError> {
    let child = Command::new(bin)
        .arg("dispatch")
        .args(["--allow-network", "127.0.0.0/8"])
        .args(["--dispatch-batch", &args.batch.to_string()])
        .args(["--dispatch-lease-secs", "30", "--dispatch-poll-ms", "50"])
        .args(["--dispatch-concurrency", &args.concurrency.to_string()])
        .args(["--dispatch-per-callback", &args.per_callback.to_string()])
        .args(["--connect-timeout-ms", "1000"])
        .args([
            "--request-timeout-ms",
            &args.request_timeout().as_millis().to_string(),
        ])
        .args(["--retry-initial-ms", "10", "--retry-factor", "2"])
        .args(["--retry-max-delay-secs", "1", "--retry-jitter", "0"])
        .args(["--retry-max-attempts", &args.max_attempts.to_string()])
        .args([
            "--retry-max-age-secs",
            "3600",
            "--retry-after-max-secs",
            "1",
        ])
        .args(["--shutdown-grace-secs", "1"])
        .args(["--db-max-connections", &args.db_connections.to_string()])
        .args(
            args.worker_threads
                .map(|n| ["--worker-threads".to_owned(), n.max(1).to_string()])
                .into_iter()
                .flatten(),
        )
        .env("HOOKLINE_DATABASE_URL", url)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    Ok(child)
}

/// A receiver on 127.0.0.1: verifies the signature (401 if it does not), waits
/// `--delay-ms`, answers 500 to a `--fail-rate` fraction and 200 to the rest.
async fn receiver(
    index: usize,
    secret: Arc<OnceLock<String>>,
    stats: Arc<Stats>,
    args: &Args,
) -> Result<String, BoxError> {
    let delay = Duration::from_millis(args.delay_ms);
    let fail_rate = args.fail_rate;
    let app = axum::Router::new().fallback(move |headers: HeaderMap, body: Bytes| {
        let (secret, stats) = (secret.clone(), stats.clone());
        async move {
            let arrived = now_micros();
            stats.received.fetch_add(1, Ordering::Relaxed);
            stats
                .body_bytes
                .fetch_add(body.len() as u64, Ordering::Relaxed);
            let Some(secret) = secret.get() else {
                stats.bad_signature.fetch_add(1, Ordering::Relaxed);
                return (StatusCode::SERVICE_UNAVAILABLE, "no secret yet");
            };
            let id = match hookline::verify::delivery(secret, &headers, &body, arrived / 1_000_000)
            {
                Ok(id) => id,
                Err(_) => {
                    stats.bad_signature.fetch_add(1, Ordering::Relaxed);
                    return (StatusCode::UNAUTHORIZED, "bad signature");
                }
            };
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if fail_rate > 0.0 && rand::random::<f64>() < fail_rate {
                stats.answered_500.fetch_add(1, Ordering::Relaxed);
                return (StatusCode::INTERNAL_SERVER_ERROR, "chosen failure");
            }
            let written = written_us(&body);
            lock(&stats.successes).push((id, arrived, written));
            stats.answered_ok.fetch_add(1, Ordering::Relaxed);
            (StatusCode::OK, "ok")
        }
    });
    // A deep accept queue: with thousands of attempts in flight, tokio's default backlog
    // (1,024) drops connects, which then time out without reaching the receiver.
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind("127.0.0.1:0".parse()?)?;
    let listener = socket.listen(16 * 1024)?;
    let url = format!("http://{}/hooks/{index}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(url)
}

/// `bench.written_us` from a delivery body, found without parsing the whole (padded) JSON.
fn written_us(body: &[u8]) -> Option<i64> {
    const KEY: &[u8] = b"\"written_us\":";
    let at = body.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let digits: String = body[at..]
        .iter()
        .skip_while(|b| b.is_ascii_whitespace())
        .take_while(|b| b.is_ascii_digit())
        .map(|b| *b as char)
        .collect();
    digits.parse().ok()
}

/// Phase 1: orders and debits through the HTTP API. Returns the creates that got 201.
async fn api_phase(args: &Args, api: &str, secret: &str) -> Result<usize, BoxError> {
    let next = Arc::new(AtomicUsize::new(0));
    let created = Arc::new(AtomicUsize::new(0));
    let client = reqwest::Client::new();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..args.api_concurrency {
        let (next, created, client) = (next.clone(), created.clone(), client.clone());
        let (api, secret, total) = (api.to_owned(), secret.to_owned(), args.api_requests);
        workers.spawn(async move {
            loop {
                let i = next.fetch_add(2, Ordering::Relaxed);
                if i >= total {
                    return Ok::<(), BoxError>(());
                }
                let order: Value = post(
                    &client,
                    &format!("{api}/orders"),
                    &secret,
                    json!({ "merchant": MERCHANT, "description": format!("bench order {i}") }),
                )
                .await?;
                created.fetch_add(1, Ordering::Relaxed);
                let id = order["orders"][0]["id"].as_str().ok_or("no order id")?;
                if i + 1 < total {
                    post(
                        &client,
                        &format!("{api}/orders/{id}/debits"),
                        &secret,
                        json!({ "source": CARD, "amount": 1000 + i as i64 }),
                    )
                    .await?;
                    created.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    while let Some(done) = workers.join_next().await {
        done??;
    }
    Ok(created.load(Ordering::Relaxed))
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    secret: &str,
    body: Value,
) -> Result<Value, BoxError> {
    let response = client
        .post(url)
        .bearer_auth(secret)
        .json(&body)
        .send()
        .await?;
    let status = response.status();
    let body: Value = response.json().await?;
    if status != StatusCode::CREATED {
        return Err(format!("POST {url}: {status} {body}").into());
    }
    Ok(body)
}

fn entity(seq: usize, padding: &str, written: i64) -> (String, Value) {
    let id = format!("OR{seq:0>24}");
    let value = json!({ "orders": [{
        "id": id,
        "bench": { "seq": seq, "written_us": written },
        "padding": padding,
    }] });
    (id, value)
}

/// Phase 2: `--events` events by `--writers` tasks, `--tx-batch` per transaction. Returns
/// the seconds the enqueueing took.
async fn enqueue_throughput(args: &Args, db: &Db, marketplace: &str) -> Result<f64, BoxError> {
    let t = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let padding: Arc<str> = "x".repeat(args.payload_bytes).into();
    let mut writers = tokio::task::JoinSet::new();
    for _ in 0..args.writers {
        let (db, next, padding) = (db.clone(), next.clone(), padding.clone());
        let (marketplace, total, batch) = (marketplace.to_owned(), args.events, args.tx_batch);
        writers.spawn(async move {
            loop {
                let first = next.fetch_add(batch, Ordering::Relaxed);
                if first >= total {
                    return Ok::<(), BoxError>(());
                }
                let written = now_micros();
                let entities: Vec<(String, Value)> = (first..(first + batch).min(total))
                    .map(|seq| entity(seq, &padding, written))
                    .collect();
                let events: Vec<NewEvent> = entities
                    .iter()
                    .map(|(id, entity)| NewEvent {
                        marketplace_id: &marketplace,
                        event_type: "order.updated",
                        entity_id: id,
                        entity,
                        occurred_at: written,
                    })
                    .collect();
                let mut tx = db.begin().await?;
                outbox::enqueue_many::<sqlx::Any>(&mut *tx, &events).await?;
                tx.commit().await?;
                // In-process: what Dispatcher::wake does. PostgreSQL also NOTIFYs.
                db.wake_handle().notify_one();
            }
        });
    }
    while let Some(done) = writers.join_next().await {
        done??;
    }
    Ok(t.elapsed().as_secs_f64())
}

/// Phase 3: one event per transaction at `--rate` per second for `--latency-seconds`.
/// Returns the events enqueued and the seconds it took.
async fn latency_phase(
    args: &Args,
    shared: &Arc<Shared>,
    db: &Db,
    marketplace: &str,
) -> Result<(usize, f64), BoxError> {
    let total = ((args.rate as f64) * args.latency_seconds).round().max(1.0) as usize;
    let period = Duration::from_secs_f64(1.0 / args.rate.max(1) as f64);
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let in_flight = Arc::new(tokio::sync::Semaphore::new(512));
    let padding: Arc<str> = "x".repeat(args.payload_bytes).into();
    let mut tasks = tokio::task::JoinSet::new();
    let t = Instant::now();
    for i in 0..total {
        ticker.tick().await;
        let permit = in_flight.clone().acquire_owned().await?;
        let (db, shared, padding) = (db.clone(), shared.clone(), padding.clone());
        let marketplace = marketplace.to_owned();
        let seq = 1_000_000_000 + i;
        tasks.spawn(async move {
            let _permit = permit;
            let mut tx = db.begin().await?;
            let written = now_micros();
            let (id, entity) = entity(seq, &padding, written);
            let event = outbox::enqueue::<sqlx::Any>(
                &mut *tx,
                NewEvent {
                    marketplace_id: &marketplace,
                    event_type: "order.updated",
                    entity_id: &id,
                    entity: &entity,
                    occurred_at: written,
                },
            )
            .await?;
            tx.commit().await?;
            let committed = now_micros();
            db.wake_handle().notify_one();
            lock(&shared.committed).insert(event, committed);
            Ok::<(), BoxError>(())
        });
        while let Some(done) = tasks.try_join_next() {
            done??;
        }
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok((total, t.elapsed().as_secs_f64()))
}

fn latency_rows(shared: &Shared) {
    let committed = lock(&shared.committed).clone();
    let (mut from_commit, mut from_write) = (Vec::new(), Vec::new());
    for (id, arrived, written) in lock(&shared.stats.successes).iter() {
        let event = id.split_once('_').map_or(id.as_str(), |(e, _)| e);
        if let Some(at) = committed.get(event) {
            from_commit.push(arrived - at);
            if let Some(w) = written {
                from_write.push(arrived - w);
            }
        }
    }
    shared.row(
        "commit->receipt p50/p95/p99 (phase 3)",
        percentiles(&mut from_commit),
    );
    shared.row(
        "  write->receipt (stamp in payload)",
        percentiles(&mut from_write),
    );
}

fn percentiles(samples: &mut [i64]) -> String {
    if samples.is_empty() {
        return "no samples".to_owned();
    }
    samples.sort_unstable();
    let at = |q: f64| {
        let i = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1;
        samples[i] as f64 / 1000.0
    };
    format!(
        "{:.1} / {:.1} / {:.1} ms  ({} deliveries, max {:.1} ms)",
        at(0.50),
        at(0.95),
        at(0.99),
        samples.len(),
        at(1.0)
    )
}

/// Totals of the in-process dispatcher's attempt metrics (`hookline::observe`).
struct AttemptLog {
    writes: f64,
    write_seconds: f64,
    wait_seconds: f64,
    attempts: f64,
    answer_seconds: f64,
}

impl AttemptLog {
    fn read() -> AttemptLog {
        use hookline::observe::{ATTEMPT_DURATION, LOG_WAIT, LOG_WRITE_DURATION};
        let text = hookline::observe::install().render();
        // Every sample of one metric, summed over its labels.
        let total = |metric: &str| -> f64 {
            text.lines()
                .filter_map(|line| line.strip_prefix(metric))
                .filter(|rest| rest.starts_with([' ', '{']))
                .filter_map(|rest| rest.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        };
        AttemptLog {
            writes: total(&format!("{LOG_WRITE_DURATION}_count")),
            write_seconds: total(&format!("{LOG_WRITE_DURATION}_sum")),
            wait_seconds: total(&format!("{LOG_WAIT}_sum")),
            attempts: total(&format!("{ATTEMPT_DURATION}_count")),
            answer_seconds: total(&format!("{ATTEMPT_DURATION}_sum")),
        }
    }

    fn since(&self, before: &AttemptLog) -> AttemptLog {
        AttemptLog {
            writes: self.writes - before.writes,
            write_seconds: self.write_seconds - before.write_seconds,
            wait_seconds: self.wait_seconds - before.wait_seconds,
            attempts: self.attempts - before.attempts,
            answer_seconds: self.answer_seconds - before.answer_seconds,
        }
    }
}

/// Waits until no delivery is pending or retrying; returns (succeeded, failed).
///
/// The poll is one probe of the `deliveries_due_callback` index per callback (each
/// callback's earliest open delivery, which both backends read off the index's first
/// entry), cheap enough to run every 20 ms. Asked as `EXISTS`, PostgreSQL scanned the whole
/// index every time (2-3 ms, a tenth of its time in the run), which the figures then paid.
async fn wait_settled(db: &Db) -> Result<(i64, i64), BoxError> {
    const OPEN: &str = "SELECT MIN((SELECT MIN(d.next_attempt_at) FROM deliveries d \
         WHERE d.callback_id = c.id AND d.status IN ('pending', 'retrying'))) AS due FROM callbacks c";
    while sqlx::query(OPEN)
        .fetch_one(db.reader())
        .await?
        .try_get::<Option<i64>, _>("due")?
        .is_some()
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ok = count(
        db,
        "SELECT COUNT(*) FROM deliveries WHERE status = 'succeeded'",
    )
    .await?;
    let failed = count(
        db,
        "SELECT COUNT(*) FROM deliveries WHERE status = 'failed'",
    )
    .await?;
    Ok((ok, failed))
}

/// Stops the dispatchers (after reading their peak memory) and adds the rows every run
/// has. Returns whether the books balance.
async fn finish(args: &Args, shared: &Shared) -> bool {
    let mut ok = true;
    let children: Vec<Child> = std::mem::take(&mut *lock(&shared.children));
    if !children.is_empty() {
        let peaks: Vec<String> = children
            .iter()
            .map(|c| {
                proc_status_kb(&c.id().to_string(), "VmHWM:")
                    .map_or("?".to_owned(), |kb| format!("{:.1}", kb as f64 / 1024.0))
            })
            .collect();
        shared.row(
            "peak RSS per dispatcher process",
            format!("{} MiB", peaks.join(" / ")),
        );
        let cpu: f64 = children
            .iter()
            .filter_map(|c| proc_cpu_seconds(&c.id().to_string()))
            .sum();
        shared.row(
            "CPU s, dispatcher processes, whole run",
            format!("{cpu:.2}"),
        );
        for mut child in children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
    let running = lock(&shared.dispatcher).take();
    if let Some((stop, task)) = running {
        let _ = stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(3), task).await;
    }
    let peak = proc_status_kb("self", "VmHWM:").map_or("?".to_owned(), |kb| {
        format!("{:.1} MiB", kb as f64 / 1024.0)
    });
    shared.row(
        if args.out_of_process() {
            "peak RSS, bench process (API + receivers + load)"
        } else {
            "peak RSS, whole process (dispatcher in process)"
        },
        peak,
    );
    let stats = &shared.stats;
    let received = stats.received.load(Ordering::Relaxed) as i64;
    let bad = stats.bad_signature.load(Ordering::Relaxed);
    if let Some(db) = shared.db.get() {
        let counted = tokio::time::timeout(Duration::from_secs(10), async {
            Ok::<_, BoxError>((
                count(db, "SELECT COUNT(*) FROM attempts").await?,
                count(
                    db,
                    "SELECT COUNT(*) FROM attempts WHERE error_code = 'connect'",
                )
                .await?,
                count(
                    db,
                    "SELECT CAST(COALESCE(SUM(succeeded + failed), 0) AS BIGINT) FROM attempt_counts",
                )
                .await?,
                count(db, "SELECT COUNT(*) FROM deliveries").await?,
                count(
                    db,
                    "SELECT COUNT(*) FROM deliveries WHERE status = 'succeeded'",
                )
                .await?,
                count(
                    db,
                    "SELECT COUNT(*) FROM deliveries WHERE status = 'failed'",
                )
                .await?,
            ))
        })
        .await;
        match counted {
            Ok(Ok((attempts, unconnected, in_health, deliveries, succeeded, failed))) => {
                // An attempt that could not connect never reached a receiver.
                let verdict = if attempts == received + unconnected {
                    "equal"
                } else {
                    ok = false;
                    "MISMATCH"
                };
                shared.row(
                    "attempts recorded / received",
                    format!(
                        "{attempts} / {received}  {verdict} ({unconnected} recorded as connect failures)"
                    ),
                );
                // The callbacks' health counts every attempt logged, once.
                let verdict = if in_health == attempts {
                    "equal"
                } else {
                    ok = false;
                    "MISMATCH"
                };
                shared.row(
                    "attempts in the callbacks' health counts",
                    format!("{in_health}  {verdict} to those recorded"),
                );
                shared.row(
                    "deliveries: all / succeeded / failed",
                    format!("{deliveries} / {succeeded} / {failed}"),
                );
            }
            Ok(Err(e)) => {
                ok = false;
                shared.note(format!("counting attempts failed: {e}"));
            }
            Err(_) => {
                ok = false;
                shared.note("counting attempts timed out");
            }
        }
    }
    let successes = lock(&stats.successes);
    let distinct: HashSet<&str> = successes.iter().map(|(id, _, _)| id.as_str()).collect();
    shared.row(
        "receiver answers 2xx / 500 / signature refused",
        format!(
            "{} / {} / {bad}  ({} duplicate 2xx receipts)",
            stats.answered_ok.load(Ordering::Relaxed),
            stats.answered_500.load(Ordering::Relaxed),
            successes.len() - distinct.len()
        ),
    );
    if bad > 0 {
        ok = false;
        shared.note(format!("{bad} deliveries failed signature verification"));
    }
    ok
}

async fn cleanup(shared: &Shared) {
    if let Some(db) = shared.db.get() {
        let _ = tokio::time::timeout(Duration::from_secs(5), db.close()).await;
    }
    let schema = lock(&shared.schema).take();
    if let Some((base, schema)) = schema {
        drop_schema(&base, &schema).await;
    }
}

fn print_table(args: &Args, shared: &Shared, complete: bool) {
    let backend = match args.backend() {
        Backend::Postgres => "postgres",
        Backend::Sqlite => "sqlite",
    };
    let dispatch = if args.out_of_process() {
        format!("{} process(es)", args.dispatchers)
    } else {
        "in process".to_owned()
    };
    let mut rows = vec![
        (
            "setup".to_owned(),
            format!(
                "{backend}, N={} K={} payload={} B delay={} ms fail={} dispatcher {dispatch}; \
                 tokio workers: {}",
                args.events,
                args.callbacks,
                args.payload_bytes,
                args.delay_ms,
                args.fail_rate,
                args.worker_threads()
            ),
        ),
        (
            "load shape".to_owned(),
            format!(
                "{} writers x {} events/tx; rate {}/s for {} s; {} API creates; per-callback {}",
                args.writers,
                args.tx_batch,
                args.rate,
                args.latency_seconds,
                args.api_requests,
                args.per_callback
            ),
        ),
    ];
    rows.extend(lock(&shared.rows).iter().cloned());
    support::print_table(rows, complete);
    for note in lock(&shared.notes).iter() {
        println!("note: {note}");
    }
}

/// utime + stime of the bench process and its dispatcher processes, in seconds.
fn cpu_seconds(shared: &Shared) -> f64 {
    let children: f64 = lock(&shared.children)
        .iter()
        .filter_map(|c| proc_cpu_seconds(&c.id().to_string()))
        .sum();
    proc_cpu_seconds("self").unwrap_or(0.0) + children
}
