//! Claiming under a backlog, and an idle dispatcher: two of the performance targets the
//! end-to-end benchmark (`examples/bench.rs`) does not measure. Bounded in time, stops by
//! itself; it sends nothing over the network.
//!
//! ```sh
//! cargo run --release --example backlog -- --scheduled 1000000
//! cargo run --release --example backlog -- --scheduled 1000000 \
//!     --database postgres://postgres@127.0.0.1:5432/test
//! ```
//!
//! Two fresh databases (temporary SQLite files, or two schemas of their own on PostgreSQL,
//! dropped at the end), each with one marketplace and one callback:
//!
//! 1. **The backlog**: in one of them, `--scheduled` deliveries scheduled for later,
//!    written through the outbox as events that occur a day from now, so their deliveries
//!    fall due then, as a delivery waiting for a retry does. The other stays empty.
//! 2. **Claims**: rounds on each database in turn (so that whatever the machine does
//!    meanwhile falls on both alike). A round enqueues `--due` events through the library
//!    outbox call, then claims as the dispatcher's claim round does, on the dispatcher's
//!    connections: the callbacks with due work found (`Db::due_callbacks`), then that
//!    callback's deliveries claimed with what their attempts send
//!    (`Db::claim_due_for_each_with_inputs`; on SQLite the dispatcher runs the same claim
//!    in its attempt log writer's turn on the write connection, then reads the inputs).
//!    The claim asks for one more than is due, and must take exactly the round's own. Its
//!    deliveries are then recorded as delivered (`Db::record_attempts`), so the next round
//!    finds only its own.
//! 3. **Idle**: on each database, a `Dispatcher` with hookline's defaults runs
//!    `--idle-seconds` with nothing due; its process's CPU time over that span
//!    (`/proc/self/stat`) is the row.
//!
//! The rounds' times are wall-clock, as the dispatcher waits for them (round trips
//! included), medians over the rounds after `--warmup` rounds not counted. Their ratio,
//! backlog to empty, is the target's "no slower than 1.5x the empty-table case".
//!
//! Exit code: 0 when the backlog was all scheduled for later, every claim took exactly its
//! round's deliveries, and no attempt was made while idle; 1 otherwise. There is no
//! assertion on speed.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use clap::Parser;
use hookline::dispatch::{DispatchConfig, Dispatcher};
use hookline::domain::callbacks::{CallbackUrl, Method, NewCallback};
use hookline::domain::ids::new_id;
use hookline::store::deliveries::{AttemptRecord, Claimed, Finished, Health, Next};
use hookline::store::outbox::{self, NewEvent};
use hookline::store::{Backend, Db, DbOptions, now_micros};
use serde_json::json;

mod support;

use support::{BoxError, count, drop_schema, fresh_schema, proc_cpu_seconds, proc_status_kb};

/// The allocator the `hookline` binary runs with.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
struct Args {
    /// A postgres:// URL (two fresh schemas, dropped at the end); omitted: temporary SQLite files
    #[arg(long)]
    database: Option<String>,
    /// Deliveries scheduled for later in the backlog's database
    #[arg(long, default_value_t = 1_000_000)]
    scheduled: usize,
    /// Deliveries due at each claim
    #[arg(long, default_value_t = 64)]
    due: usize,
    /// Claim rounds measured on each database
    #[arg(long, default_value_t = 25, value_parser = clap::value_parser!(u16).range(1..))]
    rounds: u16,
    /// Claim rounds run first on each database, not measured
    #[arg(long, default_value_t = 5)]
    warmup: u16,
    /// Length of each idle span, in seconds
    #[arg(long, default_value_t = 10.0)]
    idle_seconds: f64,
    /// Global deadline, in seconds
    #[arg(long, default_value_t = 600)]
    max_seconds: u64,
}

/// Events per transaction while the backlog is written.
const BACKLOG_TX: usize = 1000;

/// A day, in microseconds: how far ahead the backlog falls due.
const DAY_US: i64 = 24 * 3600 * 1_000_000;

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let backend = args
        .database
        .as_deref()
        .map_or(Backend::Sqlite, Backend::of_url);
    let runtime = match hookline::server::runtime(backend.default_worker_threads()) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("backlog: no runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    if runtime.block_on(measure(args, backend)) {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

/// Runs every phase within the deadline and prints the table; whether all completed.
async fn measure(args: Args, backend: Backend) -> bool {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tmp = match tempfile::tempdir() {
        Ok(dir) => dir,
        Err(e) => {
            eprintln!("backlog: no temporary directory: {e}");
            return false;
        }
    };
    let mut rows = vec![(
        "setup".to_owned(),
        format!(
            "{}, {} due a claim, {} rounds on each database after {} not counted, {} scheduled for later, idle spans of {} s",
            match backend {
                Backend::Sqlite => "sqlite",
                Backend::Postgres => "postgres",
            },
            args.due,
            args.rounds,
            args.warmup,
            args.scheduled,
            args.idle_seconds
        ),
    )];
    let mut schemas = Vec::new();
    let limit = Duration::from_secs(args.max_seconds);
    let run = phases(&args, tmp.path(), &mut schemas, &mut rows);
    let complete = match tokio::time::timeout(limit, run).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            rows.push(("INCOMPLETE".to_owned(), e.to_string()));
            false
        }
        Err(_) => {
            rows.push((
                "INCOMPLETE".to_owned(),
                format!("the {} s deadline passed", args.max_seconds),
            ));
            false
        }
    };
    support::print_table(rows, complete);
    for (base, schema) in schemas {
        drop_schema(&base, &schema).await;
    }
    complete
}

/// One of the two databases: its marketplace and its callback.
struct Setup {
    db: Db,
    /// The same database through the dispatcher's connections.
    dispatch: Db,
    marketplace: String,
    callback: String,
}

impl Setup {
    /// A fresh database named `name`: a file in `dir`, or a schema on `--database` (pushed
    /// onto `schemas`, for dropping at the end).
    async fn new(
        args: &Args,
        name: &str,
        dir: &std::path::Path,
        schemas: &mut Vec<(String, String)>,
    ) -> Result<Setup, BoxError> {
        let url = match &args.database {
            Some(base) => {
                let (url, schema) = fresh_schema(base).await?;
                schemas.push((base.clone(), schema));
                url
            }
            None => dir.join(format!("{name}.db")).display().to_string(),
        };
        let db = Db::connect(&url, &DbOptions::default()).await?;
        let (marketplace, _) = db.create_marketplace(name).await?;
        // Never sent to: nothing is due while a dispatcher runs.
        let (callback, _) = db
            .create_callback(
                &marketplace.id,
                NewCallback {
                    url: CallbackUrl::parse("http://127.0.0.1:9/backlog", false)?,
                    method: Method::Post,
                    revision: "1.1".to_owned(),
                    event_types: Vec::new(),
                    enabled: true,
                },
            )
            .await?;
        Ok(Setup {
            dispatch: db.for_dispatcher(),
            db,
            marketplace: marketplace.id,
            callback: callback.id,
        })
    }
}

async fn phases(
    args: &Args,
    dir: &std::path::Path,
    schemas: &mut Vec<(String, String)>,
    rows: &mut Vec<(String, String)>,
) -> Result<(), BoxError> {
    let empty = Setup::new(args, "empty", dir, schemas).await?;
    let full = Setup::new(args, "backlog", dir, schemas).await?;

    let started = Instant::now();
    write_backlog(&full, args.scheduled).await?;
    let written = started.elapsed().as_secs_f64();
    let waiting = "SELECT COUNT(*) FROM deliveries WHERE status IN ('pending', 'retrying')";
    let scheduled = count(&full.db, waiting).await?;
    let due = full.db.queue_depth().await?.0;
    if scheduled != args.scheduled as i64 || due != 0 {
        return Err(format!(
            "{scheduled} deliveries waiting and {due} due, {} written for later",
            args.scheduled
        )
        .into());
    }
    rows.push((
        "backlog written".to_owned(),
        format!("{scheduled} deliveries scheduled for later in {written:.1} s"),
    ));

    let (mut on_empty, mut on_full) = (Rounds::default(), Rounds::default());
    for round in 0..args.warmup + args.rounds {
        let counted = round >= args.warmup;
        claim_round(args, &empty, counted.then_some(&mut on_empty)).await?;
        claim_round(args, &full, counted.then_some(&mut on_full)).await?;
    }
    let (empty_ms, full_ms) = (on_empty.medians(), on_full.medians());
    rows.push(("claim round, nothing scheduled".to_owned(), show(empty_ms)));
    rows.push((format!("claim round, {scheduled} scheduled"), show(full_ms)));
    rows.push((
        "ratio, backlog to none (target at most 1.5)".to_owned(),
        format!(
            "{:.2} (finding {:.2}, claiming {:.2})",
            full_ms[0] / empty_ms[0],
            full_ms[1] / empty_ms[1],
            full_ms[2] / empty_ms[2]
        ),
    ));

    rows.push((
        "idle, nothing scheduled".to_owned(),
        idle(args, &empty.db).await?,
    ));
    rows.push((
        format!("idle, {scheduled} scheduled"),
        idle(args, &full.db).await?,
    ));
    let peak = proc_status_kb("self", "VmHWM:").map_or("?".to_owned(), |kb| {
        format!("{:.1} MiB", kb as f64 / 1024.0)
    });
    rows.push(("peak RSS of this process".to_owned(), peak));
    empty.db.close().await;
    full.db.close().await;
    Ok(())
}

/// The milliseconds of each counted claim round: finding the callbacks with due work, and
/// claiming.
#[derive(Default)]
struct Rounds {
    find: Vec<f64>,
    claim: Vec<f64>,
}

impl Rounds {
    /// Medians of the whole round, of finding and of claiming.
    fn medians(&self) -> [f64; 3] {
        let whole = self.find.iter().zip(&self.claim).map(|(f, c)| f + c);
        [
            median(whole.collect()),
            median(self.find.clone()),
            median(self.claim.clone()),
        ]
    }
}

fn show([whole, find, claim]: [f64; 3]) -> String {
    format!(
        "{whole:.3} ms (finding the callbacks with due work {find:.3}, claiming {claim:.3}; medians)"
    )
}

/// One claim round on `setup`, timed into `times` if given: `--due` events enqueued, then
/// found and claimed as the dispatcher does; the claim must take exactly their deliveries.
async fn claim_round(
    args: &Args,
    setup: &Setup,
    times: Option<&mut Rounds>,
) -> Result<(), BoxError> {
    let lease = DispatchConfig::default().lease.as_micros() as i64;
    let events = enqueue(&setup.db, &setup.marketplace, args.due, now_micros()).await?;
    let started = Instant::now();
    let found = setup.dispatch.due_callbacks(&[]).await?;
    let found_in = started.elapsed();
    let ask = [(setup.callback.as_str(), args.due as i64 + 1)];
    let (claimed, inputs) = setup
        .dispatch
        .claim_due_for_each_with_inputs(&ask, lease)
        .await?;
    let claimed_in = started.elapsed() - found_in;
    let claimed: Vec<Claimed> = claimed.into_iter().flatten().collect();
    let taken: HashSet<&str> = claimed.iter().map(|c| c.event_id.as_str()).collect();
    let enqueued: HashSet<&str> = events.iter().map(String::as_str).collect();
    if found != [setup.callback.as_str()] || taken != enqueued || claimed.len() != events.len() {
        return Err(format!(
            "due work found for {found:?}; {} claimed, {} of them of the {} just enqueued",
            claimed.len(),
            taken.intersection(&enqueued).count(),
            events.len()
        )
        .into());
    }
    if claimed.iter().any(|c| inputs.request(c).is_none()) {
        return Err("a claimed delivery without what its attempt sends".into());
    }
    if let Some(times) = times {
        times.find.push(found_in.as_secs_f64() * 1000.0);
        times.claim.push(claimed_in.as_secs_f64() * 1000.0);
    }
    let delivered: Vec<Finished> = claimed.into_iter().map(delivered).collect();
    let kept = setup.dispatch.record_attempts(&delivered, i64::MAX).await?;
    if kept.iter().any(|k| !k) {
        return Err("an attempt lost its lease".into());
    }
    Ok(())
}

/// A claimed delivery's attempt, answered 200 at once.
fn delivered(claimed: Claimed) -> Finished {
    Finished {
        claimed,
        record: AttemptRecord {
            started_at: now_micros(),
            duration_us: 0,
            request_headers: Vec::new(),
            request_body: String::new(),
            response_status: Some(200),
            response_headers: Some(Vec::new()),
            response_body: Some(String::new()),
            error_code: None,
            error_detail: None,
            succeeded: true,
        },
        next: Next::Succeeded,
        health: Health::Ok,
    }
}

/// A dispatcher with hookline's defaults on `db`, with nothing due, for `--idle-seconds`
/// after its first second (its start: connections opened, a first look for due work): its
/// process's share of one core meanwhile. Fails should anything be due, or any attempt be
/// made from the dispatcher's start to its stop.
async fn idle(args: &Args, db: &Db) -> Result<String, BoxError> {
    let due = db.queue_depth().await?.0;
    if due != 0 {
        return Err(format!("{due} deliveries due before an idle span").into());
    }
    let attempts = count(db, "SELECT COUNT(*) FROM attempts").await?;
    let dispatcher = Dispatcher::new(db.clone(), DispatchConfig::default());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(async move {
        dispatcher
            .run(async {
                let _ = stopped.await;
            })
            .await
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cpu = proc_cpu_seconds("self").ok_or("no /proc/self/stat")?;
    let server = postgres_cpu_seconds();
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(args.idle_seconds)).await;
    let used = proc_cpu_seconds("self").ok_or("no /proc/self/stat")? - cpu;
    let server = server.and_then(|before| Some(postgres_cpu_seconds()? - before));
    let span = started.elapsed().as_secs_f64();
    let _ = stop.send(());
    running.await??;
    let made = count(db, "SELECT COUNT(*) FROM attempts").await? - attempts;
    if made != 0 {
        return Err(format!("{made} attempts were made while idle").into());
    }
    let mut shown = format!(
        "{:.2} % of one core ({used:.2} s of CPU in {span:.1} s; clock ticks of 10 ms)",
        100.0 * used / span
    );
    if db.backend() == Backend::Postgres {
        shown += &match server {
            Some(server) => format!(
                "; every PostgreSQL process on this machine {:.2} % ({server:.2} s)",
                100.0 * server / span
            ),
            None => "; PostgreSQL's processes not visible here".to_owned(),
        };
    }
    Ok(shown)
}

/// The CPU seconds of every process named `postgres` on this machine, if there is one: the
/// server's share of an idle span, and an upper bound of it (its own upkeep, and anyone
/// else's queries, count; a backend that starts within the span counts its whole life,
/// one that ends within it is missed).
fn postgres_cpu_seconds() -> Option<f64> {
    let entries = std::fs::read_dir("/proc").ok()?;
    let seconds: Vec<f64> = entries
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().into_string().ok()?;
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            (comm.trim_end() == "postgres").then(|| proc_cpu_seconds(&pid))?
        })
        .collect();
    (!seconds.is_empty()).then(|| seconds.iter().sum())
}

/// `count` deliveries that fall due a day from now, through the outbox (one per event, the
/// marketplace having one callback), `BACKLOG_TX` events a transaction.
async fn write_backlog(setup: &Setup, count: usize) -> Result<(), BoxError> {
    let later = now_micros() + DAY_US;
    let mut left = count;
    while left > 0 {
        let n = left.min(BACKLOG_TX);
        enqueue(&setup.db, &setup.marketplace, n, later).await?;
        left -= n;
    }
    Ok(())
}

/// `count` events in one transaction, occurring at `at`; their ids.
async fn enqueue(
    db: &Db,
    marketplace: &str,
    count: usize,
    at: i64,
) -> Result<Vec<String>, BoxError> {
    let ids: Vec<String> = (0..count).map(|_| new_id("WD")).collect();
    let entities: Vec<_> = ids
        .iter()
        .map(|id| json!({ "debits": [{ "id": id }] }))
        .collect();
    let events: Vec<NewEvent> = ids
        .iter()
        .zip(&entities)
        .map(|(id, entity)| NewEvent {
            marketplace_id: marketplace,
            event_type: "debit.created",
            entity_id: id,
            entity,
            occurred_at: at,
        })
        .collect();
    let mut tx = db.begin().await?;
    let appended = outbox::enqueue_many::<sqlx::Any>(&mut *tx, &events).await?;
    tx.commit().await?;
    Ok(appended)
}

/// The median: the middle sample, or the mean of the two middle ones.
fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    let n = samples.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => samples[n / 2],
        _ => (samples[n / 2 - 1] + samples[n / 2]) / 2.0,
    }
}
