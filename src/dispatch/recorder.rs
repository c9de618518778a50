//! The attempt log's writer: one task per dispatcher writes every finished attempt. The
//! attempts that finish while one write is under way go together in the next, one
//! transaction for all of them (group commit). The attempt's task waits until its record is
//! written, so its callback's attempt slot stays taken until then: after a crash, at most
//! `per_callback` attempts per callback can have been sent without being recorded.
//!
//! A batch the database refuses is tried again three times, then attempt by attempt, so one
//! bad record cannot keep the others out of the log.
//!
//! On PostgreSQL the writes go to one connection for as long as there is more to write (a
//! second at most, [`KEEP_WRITER`]), not to a connection taken from the pool for each.
//!
//! On SQLite the writer also runs the dispatcher's claims: each turn takes the one write
//! connection once, for the attempts that finished, then for the claims asked for meanwhile,
//! so no claim waits for the connection to be handed over between them (each hand-over is
//! a release with sqlx's ping and a wake-up of the next holder, about as long as a claim).
//!
//! Each write is timed, and so is each attempt's wait for its record, in the attempt log's
//! metrics (see [`crate::observe`]); the attempt's own task times its wait, so the writer
//! does no more than it must between writes.

use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::store::deliveries::{Claimed, Finished};
use crate::store::{Backend, CloseUnlessSettled, Db, Script, StoreError};

/// The most attempts written in one transaction.
const MAX_BATCH: usize = 1024;

/// How long PostgreSQL's writer keeps one connection while there is more to write, before
/// handing it back to the pool (whose upkeep, a ping after a rest and plans made again as
/// it ages, reaches a connection only as it is handed out). Taken from the pool for each
/// write, the writes went to each of the pool's idle connections in turn (README,
/// Benchmark).
const KEEP_WRITER: Duration = Duration::from_secs(1);

/// Told of each attempt once written: `Ok(true)` if its delivery moved on, `Ok(false)` if
/// its claim had lost the lease (a newer result stands), or why it could not be written
/// (the delivery is then taken again when its lease runs out).
pub(crate) type OnWritten = Box<dyn Fn(&Finished, Result<bool, String>) + Send + Sync>;

/// Where finished attempts go. Cheap to clone; the writer stops once every clone is dropped
/// and everything handed over is written.
#[derive(Clone)]
pub(crate) struct Recorder {
    queue: mpsc::UnboundedSender<(Finished, oneshot::Sender<()>)>,
    claims: mpsc::UnboundedSender<Claim>,
}

/// A claim for the writer's next turn (SQLite): each callback with how many of its due
/// deliveries to take, under one lease.
struct Claim {
    wants: Vec<(String, i64)>,
    lease_us: i64,
    answer: oneshot::Sender<Result<Vec<Vec<Claimed>>, StoreError>>,
}

impl Recorder {
    /// Starts the writer. `disable_after` turns off a callback with no success for that long.
    pub(crate) fn start(
        db: Db,
        disable_after: Duration,
        on_written: OnWritten,
    ) -> (Recorder, JoinHandle<()>) {
        let (queue, pending) = mpsc::unbounded_channel();
        let (claims, asked) = mpsc::unbounded_channel();
        let disable_after_us = disable_after.as_micros().min(i64::MAX as u128) as i64;
        let writer = tokio::spawn(write_loop(db, disable_after_us, pending, asked, on_written));
        (Recorder { queue, claims }, writer)
    }

    /// [`Db::claim_due_for_each`] in the writer's next turn, on SQLite's write connection.
    pub(crate) async fn claim(
        &self,
        wants: &[(&str, i64)],
        lease_us: i64,
    ) -> Result<Vec<Vec<Claimed>>, StoreError> {
        let (answer, answered) = oneshot::channel();
        let claim = Claim {
            wants: wants.iter().map(|(c, n)| (c.to_string(), *n)).collect(),
            lease_us,
            answer,
        };
        let stopped = || StoreError::Database(sqlx::Error::PoolClosed);
        self.claims.send(claim).map_err(|_| stopped())?;
        answered.await.map_err(|_| stopped())?
    }

    /// Hands one attempt over to be written, and returns once `on_written` was told.
    pub(crate) async fn record(&self, finished: Finished) {
        let (written, wait) = oneshot::channel();
        let handed = Instant::now();
        if let Err(unsent) = self.queue.send((finished, written)) {
            // Only after the writer was told to stop, which waits for every sender first.
            tracing::error!(delivery_id = %unsent.0.0.claimed.id, "the attempt log's writer has stopped");
            return;
        }
        let _ = wait.await;
        crate::observe::attempt_log_waited(handed.elapsed());
    }
}

async fn write_loop(
    db: Db,
    disable_after_us: i64,
    mut pending: mpsc::UnboundedReceiver<(Finished, oneshot::Sender<()>)>,
    mut asked: mpsc::UnboundedReceiver<Claim>,
    on_written: OnWritten,
) {
    let mut received = Vec::with_capacity(MAX_BATCH);
    let mut claims = Vec::new();
    // PostgreSQL's writer kept from the last turn, and since when.
    let mut kept: Option<(CloseUnlessSettled, Instant)> = None;
    loop {
        tokio::select! {
            biased;
            n = pending.recv_many(&mut received, MAX_BATCH) => if n == 0 { break },
            Some(claim) = asked.recv() => claims.push(claim),
        }
        while received.len() < MAX_BATCH {
            match pending.try_recv() {
                Ok(one) => received.push(one),
                Err(_) => break,
            }
        }
        while let Ok(claim) = asked.try_recv() {
            claims.push(claim);
        }
        let (batch, waiting): (Vec<Finished>, Vec<_>) = received.drain(..).unzip();
        // On SQLite the batch's statements are built before the writer is taken, which
        // would otherwise wait for them (about 0.2 ms a batch in the benchmark, a twelfth
        // of its write). Should they not build, the retries build them again and say why.
        let moves = match db.backend() {
            Backend::Sqlite if !batch.is_empty() => db.moves(&batch).ok(),
            _ => None,
        };
        // SQLite's writer, taken once for the turn; if it cannot be, or anything fails on
        // it, it is closed and the rest takes a connection of its own.
        let mut writer = match db.backend() {
            Backend::Sqlite => db.take_writer().await.ok(),
            Backend::Postgres => None,
        };
        if !batch.is_empty() && db.backend() == Backend::Postgres {
            let started = Instant::now();
            record_on_kept(&db, &mut kept, &batch, disable_after_us, &on_written).await;
            crate::observe::attempt_log_written(started.elapsed());
            if pending.is_empty()
                && let Some((taken, _)) = kept.take()
            {
                taken.settled();
            }
            for written in waiting {
                let _ = written.send(());
            }
        } else if !batch.is_empty() {
            let started = Instant::now();
            record(
                &db,
                &mut writer,
                &batch,
                moves,
                disable_after_us,
                &on_written,
            )
            .await;
            crate::observe::attempt_log_written(started.elapsed());
            for written in waiting {
                let _ = written.send(());
            }
        }
        // A claim whose asker has gone (its round was cancelled) is not run: it would lease
        // deliveries to nobody until the lease ran out.
        for claim in claims.drain(..).filter(|c| !c.answer.is_closed()) {
            let wants: Vec<(&str, i64)> =
                claim.wants.iter().map(|(c, n)| (c.as_str(), *n)).collect();
            let taken = writer.as_mut().map(CloseUnlessSettled::conn);
            let claimed = db
                .claim_due_for_each_on(taken, &wants, claim.lease_us)
                .await;
            if claimed.is_err() {
                writer = None;
            }
            let _ = claim.answer.send(claimed);
        }
        if let Some(taken) = writer {
            taken.settled();
        }
    }
    if let Some((taken, _)) = kept {
        taken.settled();
    }
}

/// PostgreSQL: [`record`] on the writer kept from the last turn, or on one taken now, which
/// is kept in turn if the write went well, unless it has been kept for [`KEEP_WRITER`].
async fn record_on_kept(
    db: &Db,
    kept: &mut Option<(CloseUnlessSettled, Instant)>,
    batch: &[Finished],
    disable_after_us: i64,
    on_written: &OnWritten,
) {
    let (mut writer, since) = match kept.take() {
        Some((writer, since)) => (Some(writer), since),
        None => (db.take_writer().await.ok(), Instant::now()),
    };
    record(db, &mut writer, batch, None, disable_after_us, on_written).await;
    if let Some(taken) = writer {
        if since.elapsed() < KEEP_WRITER {
            *kept = Some((taken, since));
        } else {
            taken.settled();
        }
    }
}

/// Writes a batch of attempts and tells `on_written` of each: on `writer` first, if taken
/// (on SQLite with the batch's `moves` built beforehand; closed should the write fail);
/// then with retries; then, should the batch still be refused, attempt by attempt.
async fn record(
    db: &Db,
    writer: &mut Option<CloseUnlessSettled>,
    batch: &[Finished],
    moves: Option<Script>,
    disable_after_us: i64,
    on_written: &OnWritten,
) {
    let written = match (writer.as_mut(), moves) {
        (Some(taken), Some(moves)) => {
            match db
                .record_attempts_on(taken.conn(), batch, moves, disable_after_us)
                .await
            {
                Ok(kept) => Ok(kept),
                Err(e) => {
                    tracing::warn!(error = %e, "recording attempts failed; retrying");
                    *writer = None;
                    write(db, batch, disable_after_us, 3).await
                }
            }
        }
        (Some(taken), None) if db.backend() == Backend::Postgres => {
            match db
                .record_attempts_on_postgres(taken.conn(), batch, disable_after_us)
                .await
            {
                Ok(kept) => Ok(kept),
                Err(e) => {
                    tracing::warn!(error = %e, "recording attempts failed; retrying");
                    *writer = None;
                    write(db, batch, disable_after_us, 3).await
                }
            }
        }
        // No writer taken, or the statements could not be built: the writer (untouched) is
        // handed back, as the retries take it themselves.
        _ => {
            if let Some(taken) = writer.take() {
                taken.settled();
            }
            write(db, batch, disable_after_us, 3).await
        }
    };
    match written {
        Ok(kept) => {
            for (finished, kept) in batch.iter().zip(kept) {
                on_written(finished, Ok(kept));
            }
        }
        Err(e) if batch.len() > 1 => {
            tracing::error!(error = %e, count = batch.len(), "recording a batch of attempts failed; recording them one by one");
            for one in batch {
                let outcome = write(db, std::slice::from_ref(one), disable_after_us, 0)
                    .await
                    .map(|kept| kept[0])
                    .map_err(|e| e.to_string());
                on_written(one, outcome);
            }
        }
        Err(e) => {
            for finished in batch {
                on_written(finished, Err(e.to_string()));
            }
        }
    }
}

/// Writes a batch, trying again up to `retries` times after a pause: a passing database
/// fault must not lose attempts.
async fn write(
    db: &Db,
    finished: &[Finished],
    disable_after_us: i64,
    retries: u32,
) -> Result<Vec<bool>, StoreError> {
    let mut tries = 0;
    loop {
        match db.record_attempts(finished, disable_after_us).await {
            Ok(kept) => return Ok(kept),
            Err(e) if tries < retries => {
                tries += 1;
                tracing::warn!(error = %e, tries, "recording attempts failed; retrying");
                tokio::time::sleep(Duration::from_millis(100 * 4u64.pow(tries))).await;
            }
            Err(e) => return Err(e),
        }
    }
}
