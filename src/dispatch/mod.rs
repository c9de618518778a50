//! The dispatcher: claims due deliveries under a lease, sends each outside any database
//! transaction, and records the attempt and the next schedule fenced by the lease.
//!
//! - `schedule`: the retry schedule, a pure function of the attempt number.
//! - `guard`: which addresses deliveries may go to.
//! - `http`: one signed attempt over HTTP.
//!
//! Any number of dispatchers may run on one PostgreSQL (claims skip what others hold);
//! on SQLite, one. New work wakes a dispatcher at once (a PostgreSQL NOTIFY from the
//! deliveries table, or [`Dispatcher::wake`] in-process) and a bounded poll is the
//! fallback. A dispatcher that dies leaves leases that expire, and its work is taken again.

pub mod guard;
pub mod http;
pub mod schedule;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipnet::IpNet;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::store::deliveries::{Claimed, Health, Next};
use crate::store::{Backend, Db, StoreError, now_micros};
use guard::Guard;
use schedule::RetrySchedule;

/// Every knob of the dispatcher. `Default` is the production default.
#[derive(Debug, Clone)]
pub struct DispatchConfig {
    /// Deliveries claimed per round trip to the database.
    pub batch_size: i64,
    /// How long a claim holds; longer than `request_timeout`, so a live dispatcher never
    /// loses a lease mid-attempt.
    pub lease: Duration,
    /// The longest a dispatcher sleeps before looking for due work when nothing woke it.
    pub poll_interval: Duration,
    /// Attempts in flight at once in this process.
    pub concurrency: usize,
    /// Attempts in flight at once to one callback, so one slow receiver cannot hold up
    /// the others.
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
            batch_size: 64,
            lease: Duration::from_secs(60),
            poll_interval: Duration::from_secs(1),
            concurrency: 256,
            per_callback: 8,
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
    client: reqwest::Client,
    guard: Arc<Guard>,
    wake: Arc<Notify>,
    /// Attempts in flight per callback, in this process.
    in_flight: Arc<Mutex<HashMap<String, usize>>>,
    slots: Arc<Semaphore>,
}

impl Dispatcher {
    pub fn new(db: Db, config: DispatchConfig) -> Dispatcher {
        let guard = Arc::new(Guard::new(config.allow.clone()));
        let client = http::client(
            guard.clone(),
            config.connect_timeout,
            config.request_timeout,
        );
        let slots = Arc::new(Semaphore::new(config.concurrency.max(1)));
        Dispatcher {
            wake: db.wake_handle(),
            db,
            config: Arc::new(config),
            client,
            guard,
            in_flight: Arc::default(),
            slots,
        }
    }

    /// Wakes the dispatcher to look for due work now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Delivers until `shutdown` resolves; then claims nothing more, lets attempts in
    /// flight finish for up to `shutdown_grace`, and releases the deliveries of any that
    /// did not.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) -> Result<(), DispatchError> {
        tokio::pin!(shutdown);
        let listener = self.listen();
        let mut tasks: JoinSet<()> = JoinSet::new();
        let mut claimed_in_flight: HashMap<String, Claimed> = HashMap::new();
        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        tracing::info!("dispatcher running");
        loop {
            while let Ok(id) = done_rx.try_recv() {
                claimed_in_flight.remove(&id);
            }
            while tasks.try_join_next().is_some() {}
            let mut full_batch = false;
            match self.claim().await {
                Ok(batch) => {
                    full_batch = batch.len() as i64 >= self.config.batch_size;
                    for (claimed, slot) in batch {
                        claimed_in_flight.insert(claimed.id.clone(), claimed.clone());
                        let this = self.clone();
                        let done = done_tx.clone();
                        tasks.spawn(async move {
                            let id = claimed.id.clone();
                            this.deliver(claimed, slot).await;
                            let _ = done.send(id);
                        });
                    }
                }
                Err(e) => tracing::error!(error = %e, "claiming due deliveries failed"),
            }
            if full_batch && self.slots.available_permits() > 0 {
                continue;
            }
            // What is still due now could not be claimed (its callback is at its cap): a
            // finishing attempt wakes the loop, so a short floor keeps it from spinning.
            let sleep = self.sleep_for().await.max(IDLE_FLOOR);
            tokio::select! {
                _ = &mut shutdown => break,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(sleep) => {}
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        }
        tracing::info!(in_flight = tasks.len(), "dispatcher stopping");
        let _ = tokio::time::timeout(self.config.shutdown_grace, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        tasks.abort_all();
        while let Ok(id) = done_rx.try_recv() {
            claimed_in_flight.remove(&id);
        }
        let unfinished: Vec<Claimed> = claimed_in_flight.into_values().collect();
        if !unfinished.is_empty() {
            tracing::warn!(
                count = unfinished.len(),
                "releasing deliveries still in flight"
            );
            self.db.release(&unfinished).await?;
        }
        if let Some(listener) = listener {
            listener.abort();
        }
        Ok(())
    }

    /// Claims one batch and delivers it, waiting for every attempt: one deterministic step
    /// for tests. Returns how many deliveries were attempted.
    pub async fn run_once(&self) -> Result<usize, DispatchError> {
        let batch = self.claim().await?;
        let count = batch.len();
        let mut tasks = JoinSet::new();
        for (claimed, slot) in batch {
            let this = self.clone();
            tasks.spawn(async move { this.deliver(claimed, slot).await });
        }
        while tasks.join_next().await.is_some() {}
        Ok(count)
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

    /// Claims as many due deliveries as there are free slots, each with its slot, never
    /// more per callback than `per_callback`; the excess of a batch is released at once.
    async fn claim(&self) -> Result<Vec<(Claimed, OwnedSemaphorePermit)>, DispatchError> {
        let free = self.slots.available_permits() as i64;
        if free == 0 {
            return Ok(Vec::new());
        }
        let saturated: Vec<String> = {
            let in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
            in_flight
                .iter()
                .filter(|(_, n)| **n >= self.config.per_callback)
                .map(|(id, _)| id.clone())
                .collect()
        };
        let lease = self.config.lease.as_micros() as i64;
        let batch = self
            .db
            .claim_due(self.config.batch_size.min(free), lease, &saturated)
            .await?;
        let (mut keep, mut excess) = (Vec::new(), Vec::new());
        {
            let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
            for claimed in batch {
                let n = in_flight.entry(claimed.callback_id.clone()).or_insert(0);
                match self.slots.clone().try_acquire_owned() {
                    Ok(slot) if *n < self.config.per_callback => {
                        *n += 1;
                        keep.push((claimed, slot));
                    }
                    _ => excess.push(claimed),
                }
            }
        }
        if !excess.is_empty() {
            // Their leases expire anyway; a failed early release only delays them.
            if let Err(e) = self.db.release(&excess).await {
                tracing::warn!(error = %e, "releasing deliveries over the cap failed");
            }
        }
        Ok(keep)
    }

    /// One attempt of one delivery, recorded. Errors are logged: the lease then expires and
    /// the delivery is taken again.
    async fn deliver(&self, claimed: Claimed, _slot: OwnedSemaphorePermit) {
        let span = tracing::info_span!(
            "delivery_attempt",
            event_id = %claimed.event_id,
            delivery_id = %claimed.id,
            callback_id = %claimed.callback_id,
            attempt = claimed.attempts + 1,
            outcome = tracing::field::Empty,
        );
        let callback = claimed.callback_id.clone();
        if let Err(e) = self.attempt(&claimed).instrument(span.clone()).await {
            span.in_scope(|| tracing::error!(error = %e, "recording a delivery attempt failed"));
        }
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = in_flight.get_mut(&callback) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                in_flight.remove(&callback);
            }
        }
    }

    async fn attempt(&self, claimed: &Claimed) -> Result<(), StoreError> {
        let prepared = async {
            let target = self.db.target(&claimed.callback_id).await?;
            let body = self.db.event_body(&claimed.event_id).await?;
            Ok::<_, StoreError>((target, body))
        };
        let (record, answer) = match prepared.await {
            Ok((target, body)) => {
                let max = self.config.max_response_bytes;
                http::attempt(&self.client, &self.guard, &target, &claimed.id, &body, max).await
            }
            // Nothing was sent, but the attempt counts and is recorded, so a lasting fault
            // runs out of retries instead of spinning.
            Err(e) => {
                tracing::error!(error = %e, "preparing a delivery attempt failed");
                let detail = "hookline could not prepare the request; see its logs".to_owned();
                (http::not_sent("internal", detail), None)
            }
        };
        // The attempt's number in its schedule (a re-delivery by hand starts a new one).
        let attempt = (claimed.attempts - claimed.schedule_base + 1).max(1) as u32;
        let (next, health) = decide(
            &self.config.schedule,
            claimed,
            attempt,
            record.succeeded,
            answer.as_ref(),
            now_micros(),
            rand::random(),
        );
        let outcome = match &next {
            Next::Succeeded => "succeeded",
            Next::RetryAt(_) => "retrying",
            Next::GiveUp => "failed",
        };
        tracing::Span::current().record("outcome", outcome);
        let disable_after = self.config.disable_after.as_micros() as i64;
        let mut tries = 0;
        let kept = loop {
            match self
                .db
                .record_attempt(claimed, &record, &next, &health, disable_after)
                .await
            {
                Ok(kept) => break kept,
                // A passing database fault must not lose the attempt: try a few times
                // before leaving the delivery to its lease.
                Err(e) if tries < 3 => {
                    tries += 1;
                    tracing::warn!(error = %e, tries, "recording the attempt failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100 * 4u64.pow(tries))).await;
                }
                Err(e) => return Err(e),
            }
        };
        // Counted once it is in the attempt log, as the log is what the counters sum up.
        crate::observe::attempt_recorded(
            outcome,
            Duration::from_micros(record.duration_us.max(0) as u64),
        );
        if kept {
            tracing::info!(status = ?record.response_status, error = record.error_code, "delivery attempt recorded");
        } else {
            tracing::warn!("lease lost before the attempt was recorded; the newer result stands");
        }
        Ok(())
    }

    /// On PostgreSQL, a task that turns NOTIFYs on the deliveries table into wake-ups.
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
                            while listener.recv().await.is_ok() {
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

/// The shortest idle wait of the claim loop.
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
