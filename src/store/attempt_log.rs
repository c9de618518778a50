//! The attempt log's writes: a batch of finished attempts recorded in one transaction (the
//! dispatcher's group commit). Each delivery moves to its next state only if its attempt
//! still holds the lease it was claimed with, every attempt is logged and counted in its
//! callback's minute, and each callback's health is folded in, in batch order.

use std::collections::HashSet;
use std::sync::LazyLock;

use sqlx::any::AnyArguments;
use sqlx::{AnyConnection, AssertSqlSafe, Row};

use super::deliveries::{Finished, Health, add};
use super::{Backend, Db, Script, StoreError, now_micros, sqlite_text, values, values_from};

impl Db {
    /// Records finished attempts and what comes next for each, in one transaction (the
    /// dispatcher's group commit). A delivery changes only if its attempt still holds the
    /// lease it was claimed with: one that lost its lease cannot overwrite a newer result.
    /// Every attempt is logged either way. Returns, in order, whether each was kept.
    pub async fn record_attempts(
        &self,
        finished: &[Finished],
        disable_after_us: i64,
    ) -> Result<Vec<bool>, StoreError> {
        match self.backend {
            Backend::Postgres => {
                // One statement: whatever its outcome, the connection is fit to go back.
                let mut conn = self.writer().acquire().await?;
                self.record_attempts_on_postgres(&mut conn, finished, disable_after_us)
                    .await
            }
            Backend::Sqlite => {
                let moves = self.moves(finished)?;
                let mut writer = self.take_writer().await?;
                let kept = self
                    .record_attempts_on_sqlite(writer.conn(), finished, moves, disable_after_us)
                    .await?;
                writer.settled();
                Ok(kept)
            }
        }
    }

    /// [`Db::record_attempts`] on PostgreSQL, on `writer` (a connection of the writer's
    /// pool): one statement, [`RECORD`].
    pub(crate) async fn record_attempts_on_postgres(
        &self,
        writer: &mut AnyConnection,
        finished: &[Finished],
        disable_after_us: i64,
    ) -> Result<Vec<bool>, StoreError> {
        let (sql, args) = record(finished, now_micros(), disable_after_us)?;
        let rows = sqlx::query_with(AssertSqlSafe(sql), args)
            .fetch_all(writer)
            .await?;
        let mut kept = vec![false; finished.len()];
        for row in rows {
            let ord: i64 = row.try_get("ord")?;
            kept[ord as usize] = true;
        }
        Ok(kept)
    }

    /// [`Db::record_attempts`] on SQLite's writer, already taken. The transaction is two
    /// round trips to the writer's thread: the deliveries' moves, the attempts and their
    /// counts with its `BEGIN`, then the callbacks' health with its `COMMIT`. `moves` is
    /// [`Db::moves`] of `finished`, built before the writer was taken, so that the writer
    /// does not wait for it. Should it fail, the caller closes the connection, which rolls
    /// the transaction back.
    pub(crate) async fn record_attempts_on_sqlite(
        &self,
        writer: &mut AnyConnection,
        finished: &[Finished],
        moves: Script,
        disable_after_us: i64,
    ) -> Result<Vec<bool>, StoreError> {
        let kept = kept(finished, moves.run(&mut *writer).await?)?;
        let mut health = self.health(finished, &kept, disable_after_us)?;
        health.push("COMMIT".to_owned(), |_| Ok(()))?;
        health.run(writer).await?;
        Ok(kept)
    }

    /// SQLite: each delivery's move to its next state, fenced by its lease, each attempt's
    /// row and its count: after the transaction's `BEGIN`, each chunk's moves, then its
    /// rows, then the counts.
    pub(crate) fn moves(&self, finished: &[Finished]) -> Result<Script, sqlx::Error> {
        let mut moves = Script::new();
        moves.push("BEGIN IMMEDIATE".to_owned(), |_| Ok(()))?;
        if finished.len() > KEPT_CHUNKS * INSERT_CHUNK {
            moves.uncached();
        }
        for chunk in finished.chunks(UPDATE_CHUNK) {
            fence_and_advance(&mut moves, chunk)?;
        }
        for chunk in finished.chunks(INSERT_CHUNK) {
            insert_attempts(&mut moves, chunk)?;
        }
        count_attempts(&mut moves, finished)?;
        Ok(moves)
    }

    /// What the attempts that were `kept` say about their callbacks' health.
    fn health(
        &self,
        finished: &[Finished],
        kept: &[bool],
        disable_after_us: i64,
    ) -> Result<Script, sqlx::Error> {
        let now = now_micros();
        let mut health = Script::new();
        let fenced = finished.iter().zip(kept).filter(|(_, k)| **k);
        for (callback, batch) in fold_health(fenced.map(|(f, _)| f)) {
            apply_health(&mut health, &callback, &batch, now, disable_after_us)?;
        }
        Ok(health)
    }
}

/// Whether each attempt's delivery moved, from the ids its fenced updates returned.
fn kept(finished: &[Finished], rows: Vec<sqlx::any::AnyRow>) -> Result<Vec<bool>, StoreError> {
    let moved: HashSet<String> = rows
        .iter()
        .map(|r| r.try_get("id"))
        .collect::<Result<_, _>>()?;
    Ok(finished
        .iter()
        .map(|f| moved.contains(&f.claimed.id))
        .collect())
}

/// Headers as stored: a JSON object, names in order, the last value of a repeated name.
fn headers_json(headers: &[(String, String)]) -> String {
    let map: std::collections::BTreeMap<&str, &str> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    serde_json::to_string(&map).expect("a map of strings serializes")
}

/// SQLite: rows per multi-row statement of an attempt batch, a few hundred parameters,
/// which keeps each statement's text and bound values small. A shorter last chunk is padded
/// to the full rows with rows of NULLs, which no update matches and no insert keeps, so
/// that each statement has one text: a text per batch size was prepared anew for most
/// batches, about a tenth of SQLite's time in the benchmark.
const UPDATE_CHUNK: usize = 64;
const INSERT_CHUNK: usize = 32;

/// PostgreSQL: a batch of attempts recorded in one statement, which is its own transaction
/// (one round trip; an explicit transaction took three more, and one per callback for its
/// health). `{values}` is the batch's rows ([`record`]), padded to a power of two with
/// rows of NULLs (which no update matches and no insert keeps), so that the statement has
/// a few texts, each prepared once per connection; `$1` is the time, `$2` the time before
/// which a run of failures turns its callback off, `$3` the reason given then. Returns the
/// `ord` (index in the batch) of each attempt whose delivery moved.
///
/// A delivery is found by its id only: its status is checked as `NOT IN ('succeeded',
/// 'failed')`, which PostgreSQL cannot read as the `deliveries_due_callback` index's
/// predicate. Written as `IN ('pending', 'retrying')`, a table without statistics yet (a
/// new one, growing) was read through that index whole, for each batch, and hashed.
///
/// It does what SQLite's transaction does ([`Db::moves`], then [`fold_health`] and
/// [`apply_health`] on the attempts kept): each delivery moves to its next state if the
/// attempt still holds its lease; every attempt is logged and counted in its callback's
/// minute ([`count_attempts`]); each callback with attempts kept gets their health, folded
/// in batch order (a success clears the failures before it, the failures after the last
/// success start the callback's run of failures, the last failure is kept, the last
/// `disable` reason turns it off). Two dispatchers' batches cannot deadlock: each locks
/// the deliveries it moves (its own leases), then, in the one order of the statement's
/// plan, the callbacks in id order and the counts' rows in (callback, minute) order
/// (PostgreSQL runs the parts no other part reads, `logged`, `health` and `counted`, once
/// the rest is done, in an order of its own, the same for every batch).
///
/// The deliveries and callbacks are also matched as `= ANY(ARRAY(...))` of the batch's ids,
/// so each is an index probe in any plan: a plan made while the tables were small could
/// otherwise join them by reading all of either.
const RECORD: &str = "WITH v (ord, lease, status, next_at, callback_id, health, reason, id, attempt, started_at, \
         duration_us, request_headers, request_body, response_status, response_headers, response_body, \
         error_code, error_detail, succeeded) AS MATERIALIZED (VALUES {values}), \
     moved AS (UPDATE deliveries d SET status = v.status, attempts = d.attempts + 1, \
         next_attempt_at = v.next_at, lease_token = NULL, lease_expires_at = NULL, \
         last_attempt_at = v.started_at, updated_at = v.started_at \
         FROM v WHERE d.id = ANY(ARRAY(SELECT id FROM v)) AND d.id = v.id AND d.lease_token = v.lease \
         AND d.status NOT IN ('succeeded', 'failed') \
         RETURNING v.ord), \
     logged AS (INSERT INTO attempts (delivery_id, attempt, started_at, duration_us, request_headers, \
         request_body, response_status, response_headers, response_body, error_code, error_detail, succeeded) \
         SELECT id, attempt, started_at, duration_us, request_headers, request_body, response_status, \
         response_headers, response_body, error_code, error_detail, succeeded FROM v WHERE id IS NOT NULL ORDER BY ord), \
     kept AS (SELECT v.*, MAX(v.ord) FILTER (WHERE v.health = 'ok') OVER (PARTITION BY v.callback_id) AS last_ok \
         FROM v JOIN moved ON moved.ord = v.ord), \
     batch AS (SELECT callback_id, BOOL_OR(health = 'ok') AS succeeded, \
         (ARRAY_AGG(started_at ORDER BY ord) FILTER (WHERE health <> 'ok' AND ord > COALESCE(last_ok, -1)))[1] \
             AS failing_since, \
         (ARRAY_AGG(reason ORDER BY ord DESC) FILTER (WHERE health = 'disable'))[1] AS reason, \
         (ARRAY_AGG(started_at ORDER BY ord DESC) FILTER (WHERE health <> 'ok'))[1] AS failed_at, \
         (ARRAY_AGG(id ORDER BY ord DESC) FILTER (WHERE health <> 'ok'))[1] AS failed_delivery \
         FROM kept GROUP BY callback_id), \
     locked AS (SELECT c.id, b.succeeded, b.reason, b.failed_at, b.failed_delivery, f.since, \
         b.reason IS NULL AND c.enabled AND COALESCE(f.since <= $2, FALSE) AS overdue \
         FROM callbacks c JOIN batch b ON b.callback_id = c.id \
             AND c.id = ANY(ARRAY(SELECT callback_id FROM batch)), \
         LATERAL (SELECT CASE WHEN b.succeeded THEN b.failing_since \
             ELSE COALESCE(c.failing_since, b.failing_since) END AS since) f \
         ORDER BY c.id FOR NO KEY UPDATE OF c), \
     health AS (UPDATE callbacks c SET \
         last_success_at = CASE WHEN l.succeeded THEN $1 ELSE c.last_success_at END, \
         failing_since = l.since, \
         last_failure_at = COALESCE(l.failed_at, c.last_failure_at), \
         last_failure_delivery_id = COALESCE(l.failed_delivery, c.last_failure_delivery_id), \
         enabled = c.enabled AND l.reason IS NULL AND NOT l.overdue, \
         disabled_reason = CASE WHEN l.reason IS NOT NULL THEN l.reason WHEN l.overdue THEN $3 \
             ELSE c.disabled_reason END, \
         updated_at = CASE WHEN l.reason IS NOT NULL OR l.overdue THEN $1 ELSE c.updated_at END \
         FROM locked l WHERE c.id = ANY(ARRAY(SELECT id FROM locked)) AND c.id = l.id), \
     counted AS (INSERT INTO attempt_counts AS n (callback_id, minute, succeeded, failed) \
         SELECT callback_id, started_at / 60000000, COUNT(*) FILTER (WHERE succeeded), \
         COUNT(*) FILTER (WHERE NOT succeeded) FROM v WHERE id IS NOT NULL \
         GROUP BY callback_id, started_at / 60000000 ORDER BY 1, 2 \
         ON CONFLICT (callback_id, minute) DO UPDATE SET succeeded = n.succeeded + EXCLUDED.succeeded, \
         failed = n.failed + EXCLUDED.failed) \
     SELECT ord FROM moved";

/// The type of each column of a [`RECORD`] row, in order: `i` bigint, `t` text, `b` boolean.
/// The last [`LOG_WIDTH`] are the attempt's row, as [`bind_log`] binds it.
const RECORD_TYPES: &str = "ittittttiiittittttb";
const RECORD_WIDTH: usize = RECORD_TYPES.len();
const _: () = assert!(RECORD_WIDTH == 7 + LOG_WIDTH);

/// [`RECORD`] for `finished`, padded: one statement and its arguments. (`pub(super)` for
/// the plan test in `deliveries.rs`.)
pub(super) fn record(
    finished: &[Finished],
    now: i64,
    disable_after_us: i64,
) -> Result<(String, AnyArguments), sqlx::Error> {
    let rows = finished.len().next_power_of_two();
    let mut args = AnyArguments::default();
    add(&mut args, now)?;
    add(&mut args, now - disable_after_us)?;
    add(&mut args, window_reason(disable_after_us))?;
    for (ord, f) in finished.iter().enumerate() {
        let (status, next_at) = f.next.state();
        let (health, reason) = match &f.health {
            Health::Ok => ("ok", None),
            Health::Failing => ("failing", None),
            Health::Disable(reason) => ("disable", Some(reason.as_str())),
        };
        add(&mut args, ord as i64)?;
        add(&mut args, &f.claimed.lease_token)?;
        add(&mut args, status)?;
        add(&mut args, next_at)?;
        add(&mut args, &f.claimed.callback_id)?;
        add(&mut args, health)?;
        add(&mut args, reason)?;
        bind_log(&mut args, std::slice::from_ref(f))?;
    }
    // Padding: NULLs of each column's type, as PostgreSQL types a VALUES column by all its rows.
    for _ in finished.len()..rows {
        for kind in RECORD_TYPES.bytes() {
            match kind {
                b'i' => add(&mut args, None::<i64>)?,
                b't' => add(&mut args, None::<String>)?,
                _ => add(&mut args, None::<bool>)?,
            }
        }
    }
    let values = values_from(4, rows, RECORD_WIDTH);
    Ok((RECORD.replace("{values}", &values), args))
}

/// Why a callback with no success for `disable_after_us` was turned off.
fn window_reason(disable_after_us: i64) -> String {
    format!(
        "no successful delivery for {} s (the disable window)",
        disable_after_us / 1_000_000
    )
}

/// Batches of up to this many insert chunks (128 attempts: two callbacks' whole share at
/// the default 64 in flight each) keep their prepared text; larger ones are prepared for
/// their run alone. A text per number of insert and count chunks: at most 40, as k insert
/// chunks have at most 4k count chunks. SQLite keeps a compiled program per text (up to
/// 100 per connection, the least recently used dropped), and those of rare large batches
/// took 20 MiB. With two, batches of 65-128 attempts were each prepared anew: 9 % of the
/// writer thread's time in the benchmark (README, Benchmark).
const KEPT_CHUNKS: usize = 4;

/// SQLite: moves each delivery of `chunk` still under its claim's lease to its next state,
/// in one statement that returns the ids it moved. Padded to a full chunk. A VALUES list
/// names its columns column1, column2, ...
fn fence_and_advance(script: &mut Script, chunk: &[Finished]) -> Result<(), sqlx::Error> {
    const WIDTH: usize = 5;
    static SQL: LazyLock<String> = LazyLock::new(|| {
        sqlite_text(format!(
            "UPDATE deliveries SET status = v.column3, attempts = attempts + 1, next_attempt_at = v.column4, \
             lease_token = NULL, lease_expires_at = NULL, last_attempt_at = v.column5, updated_at = v.column5 \
             FROM (VALUES {}) AS v WHERE deliveries.id = v.column1 AND deliveries.lease_token = v.column2 \
             AND deliveries.status IN ('pending', 'retrying') RETURNING id",
            values(UPDATE_CHUNK, WIDTH)
        ))
    });
    script.push_positional(&SQL, |args| {
        for f in chunk {
            let (status, next_at) = f.next.state();
            add(args, &f.claimed.id)?;
            add(args, &f.claimed.lease_token)?;
            add(args, status)?;
            add(args, next_at)?;
            add(args, f.record.started_at)?;
        }
        pad(args, chunk.len(), UPDATE_CHUNK, WIDTH)
    })
}

/// SQLite: the attempt rows of `chunk`, padded to a full chunk (the padding's rows are not
/// kept).
fn insert_attempts(script: &mut Script, chunk: &[Finished]) -> Result<(), sqlx::Error> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        sqlite_text(format!(
            "INSERT INTO attempts (delivery_id, attempt, started_at, duration_us, request_headers, request_body, \
             response_status, response_headers, response_body, error_code, error_detail, succeeded) \
             SELECT * FROM (VALUES {}) AS v WHERE v.column1 IS NOT NULL",
            values(INSERT_CHUNK, LOG_WIDTH)
        ))
    });
    script.push_positional(&SQL, |args| {
        bind_log(args, chunk)?;
        pad(args, chunk.len(), INSERT_CHUNK, LOG_WIDTH)
    })
}

/// SQLite: the NULLs of the padding rows that fill a chunk of `filled` rows up to `rows`,
/// each `width` parameters wide.
fn pad(
    args: &mut AnyArguments,
    filled: usize,
    rows: usize,
    width: usize,
) -> Result<(), sqlx::Error> {
    (filled * width..rows * width).try_for_each(|_| add(args, None::<String>))
}

/// A minute of `attempt_counts`: microseconds since the epoch / this. [`RECORD`] and the
/// migration that made the table write it out (60000000).
pub(crate) const COUNTED_MINUTE_US: i64 = 60_000_000;

/// SQLite: (callback, minute) rows per statement of [`count_attempts`], padded like the
/// other chunks: a batch of up to [`KEPT_CHUNKS`] insert chunks has at most 16 such
/// statements.
const COUNT_CHUNK: usize = 8;

/// SQLite: adds `finished` to `attempt_counts`, a row per callback and minute (PostgreSQL's
/// [`RECORD`] does the same). Every attempt is counted, kept or not: each is in the log.
fn count_attempts(script: &mut Script, finished: &[Finished]) -> Result<(), sqlx::Error> {
    const WIDTH: usize = 4;
    static SQL: LazyLock<String> = LazyLock::new(|| {
        sqlite_text(format!(
            "INSERT INTO attempt_counts (callback_id, minute, succeeded, failed) \
             SELECT * FROM (VALUES {}) AS v WHERE v.column1 IS NOT NULL \
             ON CONFLICT (callback_id, minute) DO UPDATE SET succeeded = succeeded + excluded.succeeded, \
             failed = failed + excluded.failed",
            values(COUNT_CHUNK, WIDTH)
        ))
    });
    let mut counts: Vec<(&str, i64, i64, i64)> = Vec::new();
    for f in finished {
        let (callback, minute) = (
            f.claimed.callback_id.as_str(),
            f.record.started_at / COUNTED_MINUTE_US,
        );
        let at = match counts.iter().position(|c| (c.0, c.1) == (callback, minute)) {
            Some(at) => at,
            None => {
                counts.push((callback, minute, 0, 0));
                counts.len() - 1
            }
        };
        if f.record.succeeded {
            counts[at].2 += 1;
        } else {
            counts[at].3 += 1;
        }
    }
    for chunk in counts.chunks(COUNT_CHUNK) {
        script.push_positional(&SQL, |args| {
            for (callback, minute, succeeded, failed) in chunk {
                add(args, *callback)?;
                add(args, *minute)?;
                add(args, *succeeded)?;
                add(args, *failed)?;
            }
            pad(args, chunk.len(), COUNT_CHUNK, WIDTH)
        })?;
    }
    Ok(())
}

/// Parameters of an attempt's row in the log, as [`bind_log`] binds them.
const LOG_WIDTH: usize = 12;

fn bind_log(args: &mut AnyArguments, chunk: &[Finished]) -> Result<(), sqlx::Error> {
    for f in chunk {
        let a = &f.record;
        add(args, &f.claimed.id)?;
        add(args, f.claimed.attempts + 1)?;
        add(args, a.started_at)?;
        add(args, a.duration_us)?;
        add(args, headers_json(&a.request_headers))?;
        add(args, &a.request_body)?;
        add(args, a.response_status)?;
        add(args, a.response_headers.as_deref().map(headers_json))?;
        add(args, &a.response_body)?;
        add(args, a.error_code)?;
        add(args, &a.error_detail)?;
        add(args, a.succeeded)?;
    }
    Ok(())
}

/// What a batch of attempts says about one callback, folded in the order they finished.
#[derive(Debug, Default, PartialEq, Eq)]
struct BatchHealth {
    /// Some attempt succeeded.
    succeeded: bool,
    /// When the failures after the last success began.
    failing_since: Option<i64>,
    /// Turn the callback off, for this reason.
    disable: Option<String>,
    /// The last failure: when it started, and its delivery.
    last_failure: Option<(i64, String)>,
}

fn fold_health<'a>(finished: impl Iterator<Item = &'a Finished>) -> Vec<(String, BatchHealth)> {
    let mut by_callback: Vec<(String, BatchHealth)> = Vec::new();
    for f in finished {
        let at = match by_callback
            .iter()
            .position(|(id, _)| *id == f.claimed.callback_id)
        {
            Some(at) => at,
            None => {
                by_callback.push((f.claimed.callback_id.clone(), BatchHealth::default()));
                by_callback.len() - 1
            }
        };
        let health = &mut by_callback[at].1;
        match &f.health {
            Health::Ok => {
                health.succeeded = true;
                health.failing_since = None;
            }
            Health::Failing | Health::Disable(_) => {
                health.failing_since = health.failing_since.or(Some(f.record.started_at));
                health.last_failure = Some((f.record.started_at, f.claimed.id.clone()));
                if let Health::Disable(reason) = &f.health {
                    health.disable = Some(reason.clone());
                }
            }
        }
    }
    // Callbacks are updated in id order, so two dispatchers' batches cannot deadlock on
    // each other's callback rows.
    by_callback.sort_by(|a, b| a.0.cmp(&b.0));
    by_callback
}

fn apply_health(
    script: &mut Script,
    callback: &str,
    health: &BatchHealth,
    now: i64,
    disable_after_us: i64,
) -> Result<(), sqlx::Error> {
    let (failed_at, failed_delivery) = health.last_failure.clone().unzip();
    if health.succeeded {
        script.push(
            "UPDATE callbacks SET last_success_at = $1, failing_since = $2, \
             last_failure_at = COALESCE($3, last_failure_at), \
             last_failure_delivery_id = COALESCE($4, last_failure_delivery_id) WHERE id = $5"
                .to_owned(),
            |args| {
                add(args, now)?;
                add(args, health.failing_since)?;
                add(args, failed_at)?;
                add(args, failed_delivery)?;
                add(args, callback)?;
                Ok(())
            },
        )?;
    } else if let Some(since) = health.failing_since {
        script.push(
            "UPDATE callbacks SET failing_since = COALESCE(failing_since, $1), last_failure_at = $2, \
             last_failure_delivery_id = $3 WHERE id = $4"
                .to_owned(),
            |args| {
                add(args, since)?;
                add(args, failed_at)?;
                add(args, failed_delivery)?;
                add(args, callback)?;
                Ok(())
            },
        )?;
    }
    if let Some(reason) = &health.disable {
        script.push(
            "UPDATE callbacks SET enabled = FALSE, disabled_reason = $1, updated_at = $2 WHERE id = $3"
                .to_owned(),
            |args| {
                add(args, reason)?;
                add(args, now)?;
                add(args, callback)?;
                Ok(())
            },
        )?;
    } else if health.failing_since.is_some() {
        script.push(
            "UPDATE callbacks SET enabled = FALSE, disabled_reason = $1, updated_at = $2 \
             WHERE id = $3 AND enabled AND failing_since <= $4"
                .to_owned(),
            |args| {
                add(args, window_reason(disable_after_us))?;
                add(args, now)?;
                add(args, callback)?;
                add(args, now - disable_after_us)?;
                Ok(())
            },
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_stored_as_an_object_in_name_order_with_the_last_repeat() {
        let headers = [
            ("webhook-id", "msg_1"),
            ("content-type", "application/json"),
            ("set-cookie", "a=1"),
            ("set-cookie", "b=\"2\""),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        assert_eq!(
            headers_json(&headers),
            r#"{"content-type":"application/json","set-cookie":"b=\"2\"","webhook-id":"msg_1"}"#
        );
        assert_eq!(headers_json(&[]), "{}");
    }
}
