//! The dispatcher: claims due deliveries in batches under a lease, sends each outside any
//! database transaction, and records the attempt and the next schedule fenced by the lease.
//!
//! - `schedule`: the retry schedule, a pure function of the attempt number.
//! - `guard`: which addresses deliveries may go to.
//! - `client`: the HTTP/1.1 client attempts go out with; `answer`: how it reads an answer.
//! - `http`: one signed attempt over HTTP.
//! - `recorder`: writes finished attempts, many per transaction.
//!
//! Each callback has a lane in this process: at most `per_callback` attempts in flight and
//! claimed ones waiting (more for a callback with a backlog). A claim in due order finds
//! work for every callback; a callback that stays busy is then refilled by claims of its
//! own due work (an index range), so a large backlog is never rescanned to skip the
//! callbacks that hold enough.
//!
//! Any number of dispatchers may run on one PostgreSQL (claims skip what others hold);
//! on SQLite, one. New work wakes a dispatcher at once (a PostgreSQL NOTIFY from the
//! deliveries table, or [`Dispatcher::wake`] in-process) and a bounded poll is the
//! fallback. A dispatcher that dies leaves leases that expire, and its work is taken again.

mod answer;
pub mod client;
pub mod guard;
pub mod http;
mod recorder;
pub mod schedule;

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ipnet::IpNet;
use tokio::sync::Notify;
use tokio::task::JoinSet;

use crate::store::deliveries::{
    Claimed, Finished, Health, Inputs, MAX_CLAIM_CALLBACKS, Next, Target,
};
use crate::store::{Backend, Db, StoreError, now_micros};
use guard::Guard;
use recorder::Recorder;
use schedule::RetrySchedule;

/// Every knob of the dispatcher. `Default` is the production default.
#[derive(Debug, Clone)]
pub struct DispatchConfig {
    /// Deliveries claimed per round trip to the database.
    pub batch_size: i64,
    /// How long a claim holds; longer than twice `request_timeout` (a claimed delivery may
    /// wait for one attempt of its callback's to finish, then take one), so a live
    /// dispatcher never loses a lease mid-attempt.
    pub lease: Duration,
    /// The longest a dispatcher sleeps before looking for due work when nothing woke it.
    pub poll_interval: Duration,
    /// Deliveries this process holds at once: attempts in flight, and claimed ones waiting
    /// for their callback's turn.
    pub concurrency: usize,
    /// Attempts in flight at once to one callback, so one slow receiver cannot hold up
    /// the others. As many again may be claimed and wait, so the next ones are at hand
    /// (on SQLite, three times as many for a callback with a backlog). An attempt holds its
    /// place until its record is written, which under load takes several times as long as
    /// the answer (in the benchmark, 3-5 ms after a 1 ms answer), so one callback gets at
    /// most about `per_callback` / 5 ms attempts a second: 64 by default (README, Benchmark).
    pub per_callback: usize,
    pub connect_timeout: Duration,
    /// The whole attempt, answer included.
    pub request_timeout: Duration,
    /// Response bodies are read and kept up to this many bytes.
    pub max_response_bytes: usize,
    pub schedule: RetrySchedule,
    /// A callback with no success for this long is turned off.
    pub disable_after: Duration,
    /// Ranges deliveries may go to although they are not public (e.g. 127.0.0.0/8).
    pub allow: Vec<IpNet>,
    /// On shutdown, how long in-flight attempts may take to finish before they are
    /// abandoned and their deliveries released; above `request_timeout`, so none is cut off.
    pub shutdown_grace: Duration,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        Self {
            batch_size: 256,
            lease: Duration::from_secs(60),
            poll_interval: Duration::from_secs(1),
            concurrency: 1024,
            per_callback: 64,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(15),
            max_response_bytes: 64 * 1024,
            schedule: RetrySchedule::default(),
            disable_after: Duration::from_secs(5 * 24 * 3600),
            allow: Vec::new(),
            shutdown_grace: Duration::from_secs(20),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One dispatcher. Cheap to clone: clones share the same state.
#[derive(Clone)]
pub struct Dispatcher {
    db: Db,
    config: Arc<DispatchConfig>,
    client: Arc<client::Client>,
    /// New work may be due (the outbox, a re-delivery, a NOTIFY).
    wake: Arc<Notify>,
    /// A busy callback ran out of claimed work and wants more.
    refill: Arc<Notify>,
    lanes: Arc<Mutex<Lanes>>,
}

/// The deliveries this process holds (claimed and not yet recorded), per callback.
#[derive(Default)]
struct Lanes {
    by_callback: HashMap<String, Lane>,
    /// Deliveries claimed and not yet in the attempt log (waiting, in flight, or being
    /// written): at most `concurrency`.
    held: usize,
}

/// One callback's deliveries in this process: at most `per_callback` attempts in flight,
/// and claimed ones waiting for their turn, so its next attempts are at hand when the
/// current ones finish. A callback found with due work gets up to `per_callback` waiting; a
/// busy one up to `(depth - 1) * per_callback` ([`busy_depth`]), refilled once the lane
/// holds half its depth, so a backlog is claimed at least `depth / 2 * per_callback` at a
/// time.
#[derive(Default)]
struct Lane {
    in_flight: usize,
    waiting: VecDeque<Job>,
    /// The last claim for this callback got all it asked for: more may be due, and it is
    /// claimed for this lane alone when the lane runs low.
    busy: bool,
}

/// How many times `per_callback` deliveries a busy lane holds at most (see [`Lane`]). On
/// SQLite every claim takes the one write connection, so fewer, larger claims pay (about
/// +10 % deliveries per second in the benchmark, 8 of 9 pairs); on PostgreSQL a depth of 4
/// measured slower (7 of 8 pairs), so it stays at 2.
fn busy_depth(backend: Backend) -> usize {
    match backend {
        Backend::Sqlite => 4,
        Backend::Postgres => 2,
    }
}

impl Lane {
    fn held(&self) -> usize {
        self.in_flight + self.waiting.len()
    }

    /// A busy lane that has room for a claim of its own.
    fn wants_refill(&self, per_callback: usize, depth: usize) -> bool {
        self.busy && self.held() <= depth / 2 * per_callback
    }
}

/// A claimed delivery with what its attempt sends (`None`: its callback or its event could
/// not be read).
struct Job {
    claimed: Claimed,
    request: Option<(Arc<Target>, Bytes)>,
}

/// What a round of claims brought back.
struct Claims {
    claimed: usize,
    /// The round ran out of room with callbacks still waiting for a claim.
    full: bool,
}

impl Dispatcher {
    pub fn new(db: Db, config: DispatchConfig) -> Dispatcher {
        let guard = Arc::new(Guard::new(config.allow.clone()));
        let client = client::Client::new(
            guard,
            config.connect_timeout,
            config.request_timeout,
            config.concurrency,
        )
        .expect("TLS is configured with the built-in provider and the platform's roots");
        Dispatcher {
            wake: db.wake_handle(),
            refill: Arc::default(),
            db: db.for_dispatcher(),
            config: Arc::new(config),
            client: Arc::new(client),
            lanes: Arc::default(),
        }
    }

    /// Wakes the dispatcher to look for due work now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Delivers until `shutdown` resolves; then claims nothing more, lets attempts in
    /// flight finish for up to `shutdown_grace`, and releases the deliveries of any that
    /// did not, and of those still waiting.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) -> Result<(), DispatchError> {
        tokio::pin!(shutdown);
        let listener = self.listen();
        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let (recorder, writer) = self.recorder(done_tx);
        let mut runners: JoinSet<()> = JoinSet::new();
        let mut held: HashMap<String, Claimed> = HashMap::new();
        let mut discover = true;
        let mut next_look = tokio::time::Instant::now();
        self.db.open_dispatch_connections().await;
        tracing::info!("dispatcher running");
        loop {
            while let Ok(id) = done_rx.try_recv() {
                held.remove(&id);
            }
            while runners.try_join_next().is_some() {}
            let round = self
                .claim_round(discover, &recorder, &mut runners, &mut held)
                .await;
            match round {
                // Out of room with work still due, or new work found: look again shortly
                // (busy callbacks are refilled as their attempts finish meanwhile). Only a
                // look that found nothing asks when the next delivery falls due.
                Ok(claims) if claims.full || (discover && claims.claimed > 0) => {
                    next_look = tokio::time::Instant::now() + IDLE_FLOOR;
                }
                Ok(_) if discover => {
                    let wait = self.sleep_for().await.max(IDLE_FLOOR);
                    next_look = tokio::time::Instant::now() + wait;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(error = %e, "claiming due deliveries failed");
                    next_look = tokio::time::Instant::now() + IDLE_FLOOR;
                }
            }
            discover = false;
            tokio::select! {
                _ = &mut shutdown => break,
                _ = self.wake.notified() => discover = true,
                _ = tokio::time::sleep_until(next_look) => discover = true,
                _ = self.refill.notified() => {}
            }
        }
        tracing::info!(held = held.len(), "dispatcher stopping");
        let _ = tokio::time::timeout(self.config.shutdown_grace, async {
            while runners.join_next().await.is_some() {}
        })
        .await;
        runners.abort_all();
        while runners.join_next().await.is_some() {}
        // Attempts already handed to the writer are written before anything is released.
        drop(recorder);
        let _ = writer.await;
        while let Ok(id) = done_rx.try_recv() {
            held.remove(&id);
        }
        *self.lanes.lock().unwrap_or_else(|p| p.into_inner()) = Lanes::default();
        let unfinished: Vec<Claimed> = held.into_values().collect();
        if !unfinished.is_empty() {
            tracing::warn!(
                count = unfinished.len(),
                "releasing deliveries not attempted or still in flight"
            );
            self.db.release(&unfinished).await?;
        }
        if let Some(listener) = listener {
            listener.abort();
        }
        Ok(())
    }

    /// Claims one batch and delivers it, waiting for every attempt to be recorded: one
    /// deterministic step for tests. Returns how many deliveries were attempted.
    pub async fn run_once(&self) -> Result<usize, DispatchError> {
        let (done_tx, _done_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let (recorder, writer) = self.recorder(done_tx);
        let mut runners = JoinSet::new();
        let mut held = HashMap::new();
        let claims = self
            .claim_round(true, &recorder, &mut runners, &mut held)
            .await?;
        while runners.join_next().await.is_some() {}
        drop(recorder);
        let _ = writer.await;
        Ok(claims.claimed)
    }

    /// How long to sleep: until the next delivery falls due, at most `poll_interval`.
    async fn sleep_for(&self) -> Duration {
        let poll = self.config.poll_interval;
        match self.db.next_due().await {
            Ok(Some(due)) => {
                let wait = (due - now_micros()).max(0) as u64;
                Duration::from_micros(wait).min(poll)
            }
            _ => poll,
        }
    }

    /// One round of claims within this process's room (`concurrency` held at most), each
    /// for one callback's own due work, at most what its lane may still hold: for each busy
    /// callback that ran low, and, if `discover`, for every other callback with due work.
    /// The round's claims are one statement: all commit, or none. Claimed deliveries start at
    /// once where their callback has an attempt to spare and wait their turn otherwise.
    async fn claim_round(
        &self,
        discover: bool,
        recorder: &Recorder,
        runners: &mut JoinSet<()>,
        held: &mut HashMap<String, Claimed>,
    ) -> Result<Claims, DispatchError> {
        let cap = self.config.per_callback;
        let depth = busy_depth(self.db.backend());
        let lease = self.config.lease.as_micros() as i64;
        let (mut room, mut wanted, skip) = {
            let lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
            let room = self.config.concurrency.saturating_sub(lanes.held);
            // Busy lanes that ran low; the others with room are found by discovery.
            let wanted: Vec<(String, usize)> = lanes
                .by_callback
                .iter()
                .filter(|(_, lane)| lane.wants_refill(cap, depth))
                .map(|(id, lane)| (id.clone(), depth * cap - lane.held()))
                .collect();
            let skip: Vec<String> = lanes
                .by_callback
                .iter()
                .filter(|(_, lane)| lane.busy || lane.held() >= 2 * cap)
                .map(|(id, _)| id.clone())
                .collect();
            (room, wanted, skip)
        };
        let mut claims = Claims {
            claimed: 0,
            full: false,
        };
        if discover && room > 0 {
            let skip: Vec<&str> = skip.iter().map(String::as_str).collect();
            let found = self.db.due_callbacks(&skip).await?;
            let lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
            for callback in found {
                let held = lanes.by_callback.get(&callback).map_or(0, Lane::held);
                wanted.push((callback, 2 * cap - held));
            }
        }
        // Each callback asks for what its lane may still hold, within the room left.
        let mut asks: Vec<(&str, i64)> = Vec::new();
        for (callback, want) in &wanted {
            let want = (*want).min(room);
            if want == 0 || asks.len() == MAX_CLAIM_CALLBACKS {
                // No room left this round: the callback's work stays due for the next.
                claims.full = true;
                break;
            }
            room -= want;
            asks.push((callback, want as i64));
        }
        let (got, inputs) = match self.db.backend() {
            _ if asks.is_empty() => (Vec::new(), Inputs::default()),
            // SQLite's one write connection: the claim takes the attempt log's next turn,
            // and what the attempts send is read after it, on the readers.
            Backend::Sqlite => {
                let got = recorder.claim(&asks, lease).await?;
                let inputs = self.db.inputs(got.iter().flatten()).await;
                let inputs = inputs.unwrap_or_else(|e| {
                    tracing::error!(error = %e, "reading what a batch of attempts needs failed");
                    Inputs::default()
                });
                (got, inputs)
            }
            Backend::Postgres => self.db.claim_due_for_each_with_inputs(&asks, lease).await?,
        };
        let mut claimed = Vec::new();
        let (mut busy, mut drained) = (Vec::new(), Vec::new());
        for ((callback, want), got) in asks.iter().zip(got) {
            if (got.len() as i64) < *want {
                drained.push(callback.to_string());
            } else {
                busy.push(callback.to_string());
            }
            claims.claimed += got.len();
            claimed.extend(got);
        }
        let mut start = Vec::new();
        {
            let mut lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
            let Lanes {
                by_callback,
                held: total,
            } = &mut *lanes;
            for claimed in claimed {
                held.insert(claimed.id.clone(), claimed.clone());
                *total += 1;
                let lane = by_callback.entry(claimed.callback_id.clone()).or_default();
                let job = Job {
                    request: inputs.request(&claimed),
                    claimed,
                };
                if lane.in_flight < cap {
                    lane.in_flight += 1;
                    start.push(job);
                } else {
                    lane.waiting.push_back(job);
                }
            }
            for callback in busy {
                by_callback.entry(callback).or_default().busy = true;
            }
            for callback in drained {
                if let Some(lane) = by_callback.get_mut(&callback) {
                    lane.busy = false;
                    if lane.held() == 0 {
                        by_callback.remove(&callback);
                    }
                }
            }
        }
        for job in start {
            let (this, recorder) = (self.clone(), recorder.clone());
            runners.spawn(async move { this.run_lane(job, &recorder).await });
        }
        Ok(claims)
    }

    /// Attempts `job`, then the callback's waiting jobs one after another, holding one of
    /// its `per_callback` attempts in flight until none waits.
    async fn run_lane(&self, mut job: Job, recorder: &Recorder) {
        let callback = job.claimed.callback_id.clone();
        loop {
            self.deliver(job, recorder).await;
            let mut lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
            let Some(lane) = lanes.by_callback.get_mut(&callback) else {
                return;
            };
            let next = lane.waiting.pop_front();
            if next.is_none() {
                lane.in_flight = lane.in_flight.saturating_sub(1);
            }
            if lane.wants_refill(self.config.per_callback, busy_depth(self.db.backend())) {
                self.refill.notify_one();
            }
            match next {
                Some(next) => job = next,
                None => {
                    if lane.held() == 0 && !lane.busy {
                        lanes.by_callback.remove(&callback);
                    }
                    return;
                }
            }
        }
    }

    /// The attempt log's writer, and what happens once an attempt is written: it is counted
    /// and logged, its delivery is no longer held, and `done` gets its id.
    fn recorder(
        &self,
        done: tokio::sync::mpsc::UnboundedSender<String>,
    ) -> (Recorder, tokio::task::JoinHandle<()>) {
        let lanes = self.lanes.clone();
        let on_written = move |finished: &Finished, written: Result<bool, String>| {
            let outcome = outcome(&finished.next);
            if written.is_ok() {
                // Counted once it is in the attempt log, as the log is what the counters
                // sum up.
                let duration = Duration::from_micros(finished.record.duration_us.max(0) as u64);
                crate::observe::attempt_recorded(outcome, duration);
            }
            // A success that kept its lease is logged at debug only: its span is made only
            // when that is on (at info, two spans per attempt took about a tenth of the
            // benchmark's CPU).
            let success = matches!(written, Ok(true)) && outcome == "succeeded";
            if !success || tracing::enabled!(tracing::Level::DEBUG) {
                log_written(finished, outcome, written);
            }
            let mut lanes = lanes.lock().unwrap_or_else(|p| p.into_inner());
            lanes.held = lanes.held.saturating_sub(1);
            let _ = done.send(finished.claimed.id.clone());
        };
        Recorder::start(
            self.db.clone(),
            self.config.disable_after,
            Box::new(on_written),
        )
    }

    /// One attempt of one delivery, recorded by the attempt log's writer.
    async fn deliver(&self, job: Job, recorder: &Recorder) {
        let Job { claimed, request } = job;
        let (record, answer) = match request {
            Some((target, body)) => {
                let max = self.config.max_response_bytes;
                http::attempt(&self.client, &target, &claimed.id, body, max).await
            }
            // Nothing was sent, but the attempt counts and is recorded, so a lasting fault
            // runs out of retries instead of spinning.
            None => {
                attempt_span(&claimed).in_scope(|| {
                    tracing::error!(
                        "preparing a delivery attempt failed: its callback or event could not be read"
                    )
                });
                let detail = "hookline could not prepare the request; see its logs".to_owned();
                (http::not_sent("internal", detail), None)
            }
        };
        // The attempt's number in its schedule (a re-delivery by hand starts a new one).
        let attempt = (claimed.attempts - claimed.schedule_base + 1).max(1) as u32;
        let (next, health) = decide(
            &self.config.schedule,
            &claimed,
            attempt,
            record.succeeded,
            answer.as_ref(),
            now_micros(),
            rand::random(),
        );
        recorder
            .record(Finished {
                claimed,
                record,
                next,
                health,
            })
            .await;
    }

    /// On PostgreSQL, a task that turns NOTIFYs on the deliveries table into wake-ups.
    ///
    /// A NOTIFY sent while the listener is not listening is lost: before its first `LISTEN`
    /// and while its connection is made again after a loss (sqlx's `try_recv` then answers
    /// `None`). Each time it listens again it wakes the dispatcher once too, so the work
    /// committed meanwhile is claimed at once rather than at the next poll.
    fn listen(&self) -> Option<tokio::task::JoinHandle<()>> {
        if self.db.backend() != Backend::Postgres {
            return None;
        }
        let url = self.db.url().to_owned();
        let wake = self.wake.clone();
        Some(tokio::spawn(async move {
            loop {
                match sqlx::postgres::PgListener::connect(&url).await {
                    Ok(mut listener) => {
                        if listener.listen("hookline_deliveries").await.is_ok() {
                            wake.notify_one();
                            // A notification, or `None`: listening again after a loss.
                            while listener.try_recv().await.is_ok() {
                                wake.notify_one();
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "LISTEN failed; polling until it works"),
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }))
    }
}

/// Logs a finished attempt once it is written (or could not be).
fn log_written(finished: &Finished, outcome: &'static str, written: Result<bool, String>) {
    let span = attempt_span(&finished.claimed);
    span.record("outcome", outcome);
    let _entered = span.entered();
    let (status, error) = (finished.record.response_status, finished.record.error_code);
    match written {
        Ok(false) => {
            tracing::warn!("lease lost before the attempt was recorded; the newer result stands")
        }
        Ok(true) if outcome == "succeeded" => tracing::debug!(status, "delivery attempt recorded"),
        Ok(true) => tracing::info!(status, error, "delivery attempt recorded"),
        Err(e) => tracing::error!(error = %e, "recording a delivery attempt failed"),
    }
}

/// The span of one attempt's logs; `outcome` is filled in once it is known.
fn attempt_span(claimed: &Claimed) -> tracing::Span {
    tracing::info_span!(
        "delivery_attempt",
        event_id = %claimed.event_id,
        delivery_id = %claimed.id,
        callback_id = %claimed.callback_id,
        attempt = claimed.attempts + 1,
        outcome = tracing::field::Empty,
    )
}

/// The name of an attempt's outcome in logs and metrics.
fn outcome(next: &Next) -> &'static str {
    match next {
        Next::Succeeded => "succeeded",
        Next::RetryAt(_) => "retrying",
        Next::GiveUp => "failed",
    }
}

/// The shortest wait of the claim loop before it looks for due work again unasked.
const IDLE_FLOOR: Duration = Duration::from_millis(25);

/// What follows attempt `attempt` of the delivery's current schedule: success; a retry (at `Retry-After` for 429 and 503, within
/// bounds, else per the schedule); or giving up, after the last attempt or on 410 Gone,
/// which also turns the callback off. `unit` is a random number in `[0, 1)` for jitter.
pub fn decide(
    schedule: &RetrySchedule,
    claimed: &Claimed,
    attempt: u32,
    succeeded: bool,
    answer: Option<&http::Answer>,
    now: i64,
    unit: f64,
) -> (Next, Health) {
    if succeeded {
        return (Next::Succeeded, Health::Ok);
    }
    let status = answer.map(|a| a.status);
    if status == Some(410) {
        return (
            Next::GiveUp,
            Health::Disable("the receiver answered 410 Gone".to_owned()),
        );
    }
    let retry_after = answer
        .filter(|a| matches!(a.status, 429 | 503))
        .and_then(|a| a.retry_after);
    let next = match schedule.next_attempt(attempt, claimed.schedule_start, now, retry_after, unit)
    {
        Some(at) => Next::RetryAt(at),
        None => Next::GiveUp,
    };
    (next, Health::Failing)
}

/// Waits for either SIGTERM/Ctrl-C or a future; a convenience for `hookline dispatch`.
pub async fn run_until_signal(dispatcher: Dispatcher) -> Result<(), DispatchError> {
    dispatcher.run(crate::server::shutdown_signal()).await
}
