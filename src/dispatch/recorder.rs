//! The attempt log's writer: one task per dispatcher writes every finished attempt. The
//! attempts that finish while one write is under way go together in the next, one
//! transaction for all of them (group commit). The attempt's task waits until its record is
//! written, so its callback's attempt slot stays taken until then: after a crash, at most
//! `per_callback` attempts per callback can have been sent without being recorded.
//!
//! A batch the database refuses is tried again three times, then attempt by attempt, so one
//! bad record cannot keep the others out of the log.
//!
//! On PostgreSQL the writes go to one connection for as long as there is more to write
//! (until the first write after [`KEEP_WRITER`]), not to a connection taken from the pool
//! for each.
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

/// How long PostgreSQL's writer holds one connection while there is more to write (it
/// checks after each write), before handing it back to the pool (whose upkeep, a ping after a rest and plans made again as
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
    // PostgreSQL's writer held from the last turn, and since when.
    let mut held: Option<(CloseUnlessSettled, Instant)> = None;
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
        if !batch.is_empty() {
            let started = Instant::now();
            match db.backend() {
                Backend::Sqlite => {
                    record(
                        &db,
                        &mut writer,
                        &batch,
                        moves,
                        disable_after_us,
                        &on_written,
                    )
                    .await
                }
                Backend::Postgres => {
                    let more = || !pending.is_empty();
                    record_on_held(&db, &mut held, &batch, more, disable_after_us, &on_written)
                        .await
                }
            }
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
    debug_assert!(held.is_none(), "held only while more is waiting");
}

/// PostgreSQL: [`record`] on the writer held since an earlier write, or on one taken now,
/// which is held in turn if the write went well and `more` is waiting to be written (so
/// never while the writer waits), unless it has been held for [`KEEP_WRITER`] (or its pool
/// has no other connection for the dispatcher's reads).
async fn record_on_held(
    db: &Db,
    held: &mut Option<(CloseUnlessSettled, Instant)>,
    batch: &[Finished],
    more: impl FnOnce() -> bool,
    disable_after_us: i64,
    on_written: &OnWritten,
) {
    let (mut writer, since) = match held.take() {
        Some((writer, since)) => (Some(writer), since),
        None => (db.take_writer().await.ok(), Instant::now()),
    };
    record(db, &mut writer, batch, None, disable_after_us, on_written).await;
    if let Some(taken) = writer {
        let shared = db.writer().options().get_max_connections() > 1;
        if shared && since.elapsed() < KEEP_WRITER && more() {
            *held = Some((taken, since));
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
    let on_writer = match (writer.as_mut(), moves) {
        (Some(taken), Some(moves)) => Some(
            db.record_attempts_on_sqlite(taken.conn(), batch, moves, disable_after_us)
                .await,
        ),
        (Some(taken), None) if db.backend() == Backend::Postgres => Some(
            db.record_attempts_on_postgres(taken.conn(), batch, disable_after_us)
                .await,
        ),
        // No writer taken, or SQLite's statements could not be built: the writer
        // (untouched) is handed back, as the retries take it themselves.
        _ => {
            if let Some(taken) = writer.take() {
                taken.settled();
            }
            None
        }
    };
    let written = match on_writer {
        Some(Ok(kept)) => Ok(kept),
        Some(Err(e)) => {
            tracing::warn!(error = %e, "recording attempts failed; retrying");
            *writer = None;
            write(db, batch, disable_after_us, 3).await
        }
        None => write(db, batch, disable_after_us, 3).await,
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    use serde_json::json;
    use sqlx::Row;

    use super::{KEEP_WRITER, OnWritten, record_on_held};
    use crate::domain::callbacks::{CallbackUrl, Method, NewCallback};
    use crate::store::deliveries::Finished;
    use crate::store::outbox::{self, NewEvent};
    use crate::store::{Db, DbOptions, now_micros};

    /// Claims `n` new deliveries of the marketplace's one callback and makes each a
    /// delivered attempt.
    async fn delivered(db: &Db, marketplace: &str, n: usize) -> Vec<Finished> {
        let entity = json!({ "orders": [{ "id": "OR1" }] });
        let events: Vec<NewEvent> = (0..n)
            .map(|_| NewEvent {
                marketplace_id: marketplace,
                event_type: "order.created",
                entity_id: "OR1",
                entity: &entity,
                occurred_at: now_micros(),
            })
            .collect();
        let mut tx = db.begin().await.expect("begin");
        outbox::enqueue_many::<sqlx::Any>(&mut *tx, &events)
            .await
            .expect("enqueue");
        tx.commit().await.expect("commit");
        let claimed = db.claim_due(n as i64, 60_000_000).await.expect("claim");
        assert_eq!(claimed.len(), n);
        claimed
            .into_iter()
            .map(|claimed| Finished::answered_200(claimed, now_micros()))
            .collect()
    }

    async fn backend_pid(conn: &mut sqlx::AnyConnection) -> i32 {
        sqlx::query("SELECT pg_backend_pid()")
            .fetch_one(conn)
            .await
            .expect("pid")
            .get(0)
    }

    /// PostgreSQL's writer holds its connection from one write to the next, hands it back
    /// to the pool once it has been held for `KEEP_WRITER`, and lets go of it (closed) when
    /// a write on it fails, the batch then written by the retries.
    #[tokio::test]
    #[cfg_attr(
        not(hookline_postgres),
        ignore = "PostgreSQL only: set HOOKLINE_TEST_DATABASE_URL=postgres://postgres@127.0.0.1:5432/test to run it"
    )]
    async fn postgres_holds_its_writer_hands_it_back_and_lets_go_of_it_on_failure() {
        let (admin, schema, url) = crate::store::test_schema().await;
        let db = Db::connect(&url, &DbOptions::default())
            .await
            .expect("connect")
            .for_dispatcher();
        let (marketplace, _) = db.create_marketplace("m").await.expect("marketplace");
        db.create_callback(
            &marketplace.id,
            NewCallback {
                url: CallbackUrl::parse("https://example.com/hook", false).expect("url"),
                method: Method::Post,
                revision: "1.1".to_owned(),
                event_types: Vec::new(),
                enabled: true,
            },
        )
        .await
        .expect("callback");
        let told = Arc::new(AtomicUsize::new(0));
        let counted = told.clone();
        let on_written: OnWritten = Box::new(move |_, written| {
            assert_eq!(written, Ok(true));
            counted.fetch_add(1, Ordering::SeqCst);
        });
        let mut held = None;

        let batch = delivered(&db, &marketplace.id, 2).await;
        record_on_held(&db, &mut held, &batch, || true, i64::MAX, &on_written).await;
        let (writer, _) = held.as_mut().expect("held after a write");
        let first = backend_pid(writer.conn()).await;
        let batch = delivered(&db, &marketplace.id, 2).await;
        record_on_held(&db, &mut held, &batch, || true, i64::MAX, &on_written).await;
        let (writer, since) = held.as_mut().expect("still held");
        assert_eq!(
            backend_pid(writer.conn()).await,
            first,
            "the same connection"
        );

        // Held for `KEEP_WRITER`: handed back after the next write, not closed.
        *since = Instant::now() - KEEP_WRITER;
        let open = db.writer().size();
        let batch = delivered(&db, &marketplace.id, 1).await;
        record_on_held(&db, &mut held, &batch, || true, i64::MAX, &on_written).await;
        assert!(held.is_none(), "handed back");
        assert_eq!(db.writer().size(), open, "to the pool, open");

        // A write refused on the held connection: it is closed, and the retries (the first
        // after 400 ms) write the batch once the trigger is gone.
        let batch = delivered(&db, &marketplace.id, 2).await;
        held = Some((db.take_writer().await.expect("writer"), Instant::now()));
        let (writer, _) = held.as_mut().expect("held");
        let refused = backend_pid(writer.conn()).await;
        let in_schema = |sql: &str| format!("SET search_path = {schema}; {sql}");
        sqlx::raw_sql(sqlx::AssertSqlSafe(in_schema(
            "CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'refused'; END $$ \
             LANGUAGE plpgsql; CREATE TRIGGER refuse BEFORE INSERT ON attempts FOR EACH ROW \
             EXECUTE FUNCTION refuse();",
        )))
        .execute(&admin)
        .await
        .expect("refuse");
        let allow = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            sqlx::raw_sql(sqlx::AssertSqlSafe(in_schema(
                "DROP TRIGGER refuse ON attempts;",
            )))
            .execute(&admin)
            .await
            .expect("allow");
        };
        let write = record_on_held(&db, &mut held, &batch, || true, i64::MAX, &on_written);
        tokio::join!(write, allow);
        assert!(held.is_none(), "let go of after the failure");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let open: i64 = sqlx::query("SELECT COUNT(*) FROM pg_stat_activity WHERE pid = $1")
                .bind(refused)
                .fetch_one(&admin)
                .await
                .expect("activity")
                .get(0);
            if open == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the refused connection still open"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(told.load(Ordering::SeqCst), 7, "every attempt written once");
        let attempts: i64 = sqlx::query("SELECT COUNT(*) FROM attempts")
            .fetch_one(db.reader())
            .await
            .expect("count")
            .get(0);
        assert_eq!(attempts, 7);
        db.close().await;
        crate::store::drop_test_schema(&admin, &schema).await;
    }
}
