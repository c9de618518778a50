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
//! On a fresh database (a temporary SQLite file, or a schema of its own on PostgreSQL,
//! dropped at the end) with one marketplace and one callback:
//!
//! 1. **Claims, nothing scheduled**: `--rounds` times, `--due` events are enqueued through
//!    the library outbox call, then claimed as the dispatcher's claim round does it, through
//!    the dispatcher's own connections: the callbacks with due work found
//!    (`Db::due_callbacks`), then their deliveries claimed with what their attempts send
//!    (`Db::claim_due_for_each_with_inputs`). Each claim's deliveries are then recorded as
//!    delivered (`Db::record_attempts`), so the next round finds only its own.
//! 2. **Idle**: a `Dispatcher` with hookline's defaults runs `--idle-seconds` with nothing
//!    due; its process's CPU time over that span (`/proc/self/stat`) is the row.
//! 3. **The backlog**: `--scheduled` deliveries scheduled for later, written through the
//!    outbox as events that occur a day from now, so their deliveries fall due then, as a
//!    delivery waiting for a retry does.
//! 4. Phases 1 and 2 again, with the backlog in place.
//!
//! The rounds' times are wall-clock, as the dispatcher waits for them (round trips
//! included), medians over the rounds after `--warmup` rounds not counted. The claims'
//! ratio of phase 4 to phase 1 is the target's "no slower than 1.5x the empty-table case".
//!
//! Exit code: 0 when every claim took exactly the deliveries that were due and nothing fell
//! due during the idle spans; 1 otherwise. There is no assertion on speed.

use std::time::{Duration, Instant};

use clap::Parser;
use hookline::dispatch::{DispatchConfig, Dispatcher};
use hookline::domain::callbacks::{CallbackUrl, Method, NewCallback};
use hookline::domain::ids::new_id;
use hookline::store::deliveries::{AttemptRecord, Claimed, Finished, Health, Next};
use hookline::store::outbox::{self, NewEvent};
use hookline::store::{Backend, Db, DbOptions, now_micros};
use serde_json::json;
use sqlx::Row;

mod support;

use support::{BoxError, drop_schema, fresh_schema, proc_cpu_seconds, proc_status_kb};

/// The allocator the `hookline` binary runs with.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
struct Args {
    /// A postgres:// URL (a fresh schema, dropped at the end); omitted: a temporary SQLite file
    #[arg(long)]
    database: Option<String>,
    /// Deliveries scheduled for later in phase 3
    #[arg(long, default_value_t = 1_000_000)]
    scheduled: usize,
    /// Deliveries due at each claim
    #[arg(long, default_value_t = 64)]
    due: usize,
    /// Claim rounds measured in each state
    #[arg(long, default_value_t = 25)]
    rounds: usize,
    /// Claim rounds run first in each state, not measured
    #[arg(long, default_value_t = 5)]
    warmup: usize,
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
    let ok = runtime.block_on(measure(args, backend));
    if ok {
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
    let (url, schema) = match &args.database {
        Some(base) => match fresh_schema(base).await {
            Ok((url, schema)) => (url, Some((base.clone(), schema))),
            Err(e) => {
                eprintln!("backlog: no schema on {base}: {e}");
                return false;
            }
        },
        None => (tmp.path().join("backlog.db").display().to_string(), None),
    };
    let mut rows = vec![(
        "setup".to_owned(),
        format!(
            "{}, {} due a claim, {} rounds after {} not counted, {} scheduled for later, idle spans of {} s",
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
    let limit = Duration::from_secs(args.max_seconds);
    let outcome = tokio::time::timeout(limit, phases(&args, &url, &mut rows)).await;
    let complete = match outcome {
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
    rows.push((
        "result".to_owned(),
        if complete { "complete" } else { "INCOMPLETE" }.to_owned(),
    ));
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let line = format!("+{}+", "-".repeat(width + 2));
    println!("\n{line}");
    for (name, value) in &rows {
        println!("| {name:<width$} | {value}");
    }
    println!("{line}");
    if let Some((base, schema)) = schema {
        drop_schema(&base, &schema).await;
    }
    complete
}

async fn phases(args: &Args, url: &str, rows: &mut Vec<(String, String)>) -> Result<(), BoxError> {
    let db = Db::connect(url, &DbOptions::default()).await?;
    let (marketplace, _) = db.create_marketplace("backlog").await?;
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
    let dispatch = db.for_dispatcher();

    let empty = claim_rounds(args, &db, &dispatch, &marketplace.id, &callback.id).await?;
    rows.push(("claim round, nothing scheduled".to_owned(), empty.show()));
    rows.push(("idle, nothing scheduled".to_owned(), idle(args, &db).await?));

    let started = Instant::now();
    write_backlog(&db, &marketplace.id, args.scheduled).await?;
    // Every delivery waiting is the backlog's: the rounds' were delivered.
    let scheduled = count(
        &db,
        "SELECT COUNT(*) AS n FROM deliveries WHERE status IN ('pending', 'retrying')",
    )
    .await?;
    if scheduled != args.scheduled as i64 {
        return Err(format!(
            "{scheduled} deliveries scheduled, {} written",
            args.scheduled
        )
        .into());
    }
    rows.push((
        "backlog written".to_owned(),
        format!(
            "{scheduled} deliveries scheduled for later in {:.1} s",
            started.elapsed().as_secs_f64()
        ),
    ));

    let full = claim_rounds(args, &db, &dispatch, &marketplace.id, &callback.id).await?;
    rows.push((format!("claim round, {scheduled} scheduled"), full.show()));
    rows.push((
        "ratio, backlog to none (target at most 1.5)".to_owned(),
        format!(
            "{:.2} (finding {:.2}, claiming {:.2})",
            full.round / empty.round,
            full.find / empty.find,
            full.claim / empty.claim
        ),
    ));
    rows.push((
        format!("idle, {scheduled} scheduled"),
        idle(args, &db).await?,
    ));
    let peak = proc_status_kb("self", "VmHWM:").map_or("?".to_owned(), |kb| {
        format!("{:.1} MiB", kb as f64 / 1024.0)
    });
    rows.push(("peak RSS of this process".to_owned(), peak));
    db.close().await;
    Ok(())
}

/// Median milliseconds of a claim round and of its two statements.
struct Medians {
    round: f64,
    find: f64,
    claim: f64,
}

impl Medians {
    fn show(&self) -> String {
        format!(
            "{:.3} ms (finding the callbacks with due work {:.3}, claiming {:.3}; medians)",
            self.round, self.find, self.claim
        )
    }
}

/// Phase 1 or 4: claim rounds, each of `--due` deliveries just enqueued.
async fn claim_rounds(
    args: &Args,
    db: &Db,
    dispatch: &Db,
    marketplace: &str,
    callback: &str,
) -> Result<Medians, BoxError> {
    let lease = DispatchConfig::default().lease.as_micros() as i64;
    let (mut finds, mut claims) = (Vec::new(), Vec::new());
    for round in 0..args.warmup + args.rounds {
        enqueue(db, marketplace, args.due, now_micros()).await?;
        let started = Instant::now();
        let found = dispatch.due_callbacks(&[]).await?;
        let found_in = started.elapsed();
        if found != [callback] {
            return Err(format!("round {round}: due work found for {found:?}").into());
        }
        let (claimed, inputs) = dispatch
            .claim_due_for_each_with_inputs(&[(callback, args.due as i64)], lease)
            .await?;
        let claimed_in = started.elapsed() - found_in;
        let claimed = claimed.into_iter().flatten().collect::<Vec<_>>();
        if claimed.len() != args.due || claimed.iter().any(|c| inputs.request(c).is_none()) {
            return Err(format!(
                "round {round}: claimed {} of {} due, or without what they send",
                claimed.len(),
                args.due
            )
            .into());
        }
        if round >= args.warmup {
            finds.push(found_in.as_secs_f64() * 1000.0);
            claims.push(claimed_in.as_secs_f64() * 1000.0);
        }
        let delivered: Vec<Finished> = claimed.into_iter().map(delivered).collect();
        let kept = dispatch.record_attempts(&delivered, i64::MAX).await?;
        if kept.iter().any(|k| !k) {
            return Err(format!("round {round}: an attempt lost its lease").into());
        }
    }
    let rounds: Vec<f64> = finds.iter().zip(&claims).map(|(f, c)| f + c).collect();
    Ok(Medians {
        round: median(rounds),
        find: median(finds),
        claim: median(claims),
    })
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

/// Phase 2: a dispatcher with hookline's defaults and nothing due, for `--idle-seconds`;
/// its process's share of one core meanwhile.
async fn idle(args: &Args, db: &Db) -> Result<String, BoxError> {
    let dispatcher = Dispatcher::new(db.clone(), DispatchConfig::default());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(async move {
        dispatcher
            .run(async {
                let _ = stopped.await;
            })
            .await
    });
    // Its start (connections opened, first look for due work) is not idling.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let attempts = count(db, "SELECT COUNT(*) AS n FROM attempts").await?;
    let cpu = proc_cpu_seconds("self").ok_or("no /proc/self/stat")?;
    let server = postgres_cpu_seconds();
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(args.idle_seconds)).await;
    let used = proc_cpu_seconds("self").ok_or("no /proc/self/stat")? - cpu;
    let server = postgres_cpu_seconds() - server;
    let span = started.elapsed().as_secs_f64();
    let _ = stop.send(());
    running.await??;
    let made = count(db, "SELECT COUNT(*) AS n FROM attempts").await? - attempts;
    if made != 0 {
        return Err(format!("{made} attempts were made while idle").into());
    }
    let mut shown = format!(
        "{:.2} % of one core ({used:.2} s of CPU in {span:.1} s; clock ticks of 10 ms)",
        100.0 * used / span
    );
    if db.backend() == Backend::Postgres {
        shown += &format!(
            "; every PostgreSQL process on this machine {:.2} % ({server:.2} s)",
            100.0 * server / span
        );
    }
    Ok(shown)
}

/// The CPU seconds of every process named `postgres` on this machine: the server's share of
/// an idle span, and an upper bound of it (its own upkeep, and anyone else's queries, count).
fn postgres_cpu_seconds() -> f64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().into_string().ok()?;
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            (comm.trim_end() == "postgres").then(|| proc_cpu_seconds(&pid))?
        })
        .sum()
}

/// Phase 3: `count` deliveries that fall due a day from now, through the outbox (one per
/// event, the marketplace having one callback), `BACKLOG_TX` events a transaction.
async fn write_backlog(db: &Db, marketplace: &str, count: usize) -> Result<(), BoxError> {
    let later = now_micros() + DAY_US;
    let mut left = count;
    while left > 0 {
        let n = left.min(BACKLOG_TX);
        enqueue(db, marketplace, n, later).await?;
        left -= n;
    }
    Ok(())
}

/// `count` events in one transaction, occurring at `at`.
async fn enqueue(db: &Db, marketplace: &str, count: usize, at: i64) -> Result<(), BoxError> {
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
    outbox::enqueue_many::<sqlx::Any>(&mut *tx, &events).await?;
    tx.commit().await?;
    Ok(())
}

/// The `n` of a `SELECT COUNT(*) AS n` with no parameters.
async fn count(db: &Db, sql: &'static str) -> Result<i64, BoxError> {
    let row = sqlx::query(sql).fetch_one(db.reader()).await?;
    Ok(row.try_get("n")?)
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples.get(samples.len() / 2).copied().unwrap_or(f64::NAN)
}
