//! The delivery queue as a whole, for monitoring: aggregate numbers only, across every
//! marketplace and every dispatcher process sharing the database.

use sqlx::Row;

use super::attempt_log::COUNTED_MINUTE_US;
use super::{Db, Scope, StoreError, now_micros};

/// One statement, so PostgreSQL answers all three from one snapshot. Due work is counted
/// per callback through the `deliveries_due_callback` partial index, so a scrape costs the
/// work that is due, not the work scheduled for later nor the delivery history. Work in
/// flight is counted among the backlog (`status IN ('pending', 'retrying')`; a delivery
/// holds a lease only then).
const QUEUE_DEPTH: &str = "SELECT \
     (SELECT CAST(COALESCE(SUM((SELECT COUNT(*) FROM deliveries d WHERE d.callback_id = c.id \
       AND d.status IN ('pending', 'retrying') AND d.next_attempt_at <= $1)), 0) AS BIGINT) \
      FROM callbacks c WHERE c.enabled AND c.deleted_at IS NULL \
      AND c.marketplace_id = COALESCE($2, c.marketplace_id)) AS due, \
     (SELECT MIN((SELECT MIN(d.next_attempt_at) FROM deliveries d WHERE d.callback_id = c.id \
       AND d.status IN ('pending', 'retrying') AND d.next_attempt_at <= $1)) \
      FROM callbacks c WHERE c.enabled AND c.deleted_at IS NULL \
      AND c.marketplace_id = COALESCE($2, c.marketplace_id)) AS oldest_due, \
     (SELECT COUNT(*) FROM deliveries d \
      WHERE d.status IN ('pending', 'retrying') AND d.lease_expires_at > $1 \
      AND d.marketplace_id = COALESCE($2, d.marketplace_id)) AS in_flight";

/// Attempts by outcome in two minutes of `attempt_counts`, `$1` and the one before it
/// (`$2`), of one marketplace's callbacks (`$3`) or of all, deleted ones too: a probe of
/// the counts' primary key for each callback, minute and outcome, however many attempts
/// there were. Read from the log instead, 900,000 attempts in the last minute (15,000 a
/// second, 20 callbacks) took 207-235 ms for one marketplace's and 72-92 ms for all on
/// PostgreSQL, and each `/metrics` scrape, which needs none of it, read them too; this
/// takes 0.12 and 0.18 ms (`EXPLAIN ANALYZE`, 5 runs each).
const TWO_MINUTES: &str = "SELECT \
     CAST(COALESCE(SUM((SELECT n.succeeded FROM attempt_counts n \
       WHERE n.callback_id = c.id AND n.minute = $1)), 0) AS BIGINT) AS succeeded, \
     CAST(COALESCE(SUM((SELECT n.failed FROM attempt_counts n \
       WHERE n.callback_id = c.id AND n.minute = $1)), 0) AS BIGINT) AS failed, \
     CAST(COALESCE(SUM((SELECT n.succeeded FROM attempt_counts n \
       WHERE n.callback_id = c.id AND n.minute = $2)), 0) AS BIGINT) AS succeeded_before, \
     CAST(COALESCE(SUM((SELECT n.failed FROM attempt_counts n \
       WHERE n.callback_id = c.id AND n.minute = $2)), 0) AS BIGINT) AS failed_before \
     FROM callbacks c WHERE c.marketplace_id = COALESCE($3, c.marketplace_id)";

/// The queue of one marketplace, or of all.
#[derive(Debug, Clone, Default)]
pub struct QueueHealth {
    pub due: i64,
    /// `next_attempt_at` of the oldest due delivery, microseconds.
    pub oldest_due: Option<i64>,
    pub in_flight: i64,
    /// Attempts of the last 60 seconds by outcome, estimated from the counts kept by the
    /// minute (see [`Db::queue`]).
    pub succeeded_last_minute: i64,
    pub failed_last_minute: i64,
}

impl Db {
    /// The queue as it stands now: deliveries due (of enabled, live callbacks; those being
    /// attempted are not due until their lease runs out), the `next_attempt_at` of the oldest of them (microseconds since
    /// the epoch; `None` when none is due), and deliveries in flight (under a live lease).
    pub async fn queue_depth(&self) -> Result<(i64, Option<i64>, i64), StoreError> {
        let q = self.depth(&Scope::All, now_micros()).await?;
        Ok((q.due, q.oldest_due, q.in_flight))
    }

    /// The queue of the marketplace in `scope` (all, for the operator), with the attempts
    /// of the last minute by outcome: estimated from the counts kept by the minute, as all
    /// of the current minute's and the part of the previous minute's that the last 60
    /// seconds cover, in proportion.
    pub async fn queue(&self, scope: &Scope) -> Result<QueueHealth, StoreError> {
        self.queue_at(scope, now_micros()).await
    }

    /// [`Db::queue`] as of `now`.
    async fn queue_at(&self, scope: &Scope, now: i64) -> Result<QueueHealth, StoreError> {
        let mut queue = self.depth(scope, now).await?;
        let minute = now / COUNTED_MINUTE_US;
        let row = sqlx::query(TWO_MINUTES)
            .bind(minute)
            .bind(minute - 1)
            .bind(scope.marketplace())
            .fetch_one(self.reader())
            .await?;
        queue.succeeded_last_minute = last_sixty_seconds(
            now,
            row.try_get("succeeded")?,
            row.try_get("succeeded_before")?,
        );
        queue.failed_last_minute =
            last_sixty_seconds(now, row.try_get("failed")?, row.try_get("failed_before")?);
        Ok(queue)
    }

    /// Due, oldest due and in flight, without the attempts of the last minute.
    async fn depth(&self, scope: &Scope, now: i64) -> Result<QueueHealth, StoreError> {
        let row = sqlx::query(QUEUE_DEPTH)
            .bind(now)
            .bind(scope.marketplace())
            .fetch_one(self.reader())
            .await?;
        Ok(QueueHealth {
            due: row.try_get("due")?,
            oldest_due: row.try_get("oldest_due")?,
            in_flight: row.try_get("in_flight")?,
            ..QueueHealth::default()
        })
    }
}

/// Of the attempts counted in the current minute (`this_minute`) and the one before
/// (`minute_before`), those of the 60 seconds up to `now`: all of this minute's, and of the
/// one before, the share of it those 60 seconds cover, rounded. Exact when attempts come
/// at a steady rate; otherwise the minute before's are taken as spread evenly over it
/// (more of them in the part the 60 seconds cover, its end, and they are undercounted;
/// more before it, overcounted). Minutes are `now / COUNTED_MINUTE_US`, as the counts
/// are kept.
fn last_sixty_seconds(now: i64, this_minute: i64, minute_before: i64) -> i64 {
    let covered = COUNTED_MINUTE_US - now % COUNTED_MINUTE_US;
    let share = covered as f64 / COUNTED_MINUTE_US as f64;
    this_minute + (minute_before as f64 * share).round() as i64
}

#[cfg(test)]
mod tests {
    use sqlx::AssertSqlSafe;

    use super::last_sixty_seconds;
    use crate::store::attempt_log::COUNTED_MINUTE_US;
    use crate::store::{Db, DbOptions, Scope};

    #[test]
    fn the_minute_before_counts_for_the_part_the_last_sixty_seconds_cover() {
        let minute = 29_000_000 * COUNTED_MINUTE_US;
        assert_eq!(
            last_sixty_seconds(minute, 3, 8),
            11,
            "at its start, all of it"
        );
        assert_eq!(last_sixty_seconds(minute + 15_000_000, 3, 8), 9, "6 of 8");
        assert_eq!(last_sixty_seconds(minute + 45_000_000, 3, 8), 5, "2 of 8");
        assert_eq!(last_sixty_seconds(minute + 59_999_999, 3, 8), 3, "none");
        assert_eq!(
            last_sixty_seconds(minute + 10_000_000, 0, 1),
            1,
            "5/6, rounded"
        );
        assert_eq!(
            last_sixty_seconds(minute + 40_000_000, 0, 1),
            0,
            "1/3, rounded"
        );
        assert_eq!(last_sixty_seconds(minute + 30_000_000, 0, 0), 0);
    }

    /// `GET /queue`'s attempts of the last minute come from `attempt_counts`: this
    /// minute's and, in proportion, the minute before's, not earlier minutes'; a
    /// marketplace's callbacks' only, deleted ones too, or everyone's.
    async fn the_last_minute_is_read_from_the_counts(url: &str) {
        let db = Db::connect(url, &DbOptions::default())
            .await
            .expect("connect");
        let minute = 29_000_000_i64;
        let now = minute * COUNTED_MINUTE_US + 45_000_000;
        let counts = |callback: &str, at: i64, ok: i64, failed: i64| {
            format!("('{callback}', {at}, {ok}, {failed})")
        };
        let setup = format!(
            "INSERT INTO marketplaces (id, name, secret_hash, created_at) \
                 VALUES ('MP1', 'm', 'h', 0), ('MP2', 'n', 'i', 0); \
             INSERT INTO callbacks (id, marketplace_id, url, method, revision, enabled, secret, \
                 created_at, updated_at, deleted_at) \
                 VALUES ('CBa', 'MP1', 'https://a', 'post', 'r', TRUE, 's', 0, 0, NULL), \
                 ('CBb', 'MP1', 'https://b', 'post', 'r', FALSE, 's', 0, 0, 1), \
                 ('CBc', 'MP2', 'https://c', 'post', 'r', TRUE, 's', 0, 0, NULL); \
             INSERT INTO attempt_counts (callback_id, minute, succeeded, failed) VALUES {};",
            [
                counts("CBa", minute, 3, 1),
                counts("CBa", minute - 1, 8, 4),
                counts("CBa", minute - 2, 100, 100),
                counts("CBb", minute, 1, 0),
                counts("CBc", minute, 50, 50),
                counts("CBc", minute + 1, 7, 7),
            ]
            .join(", ")
        );
        sqlx::raw_sql(AssertSqlSafe(setup))
            .execute(db.writer())
            .await
            .expect("setup");
        let theirs = db
            .queue_at(&Scope::Marketplace("MP1".to_owned()), now)
            .await
            .expect("queue");
        // 45 s into the minute: all of its attempts, a quarter of the minute before's.
        assert_eq!(
            (theirs.succeeded_last_minute, theirs.failed_last_minute),
            (3 + 1 + 2, 1 + 1)
        );
        let all = db.queue_at(&Scope::All, now).await.expect("queue");
        assert_eq!(
            (all.succeeded_last_minute, all.failed_last_minute),
            (6 + 50, 2 + 50)
        );
        db.close().await;
    }

    #[tokio::test]
    async fn sqlite_reads_the_last_minute_from_the_counts() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("h.db");
        the_last_minute_is_read_from_the_counts(path.to_str().expect("utf-8")).await;
    }

    #[tokio::test]
    #[cfg_attr(
        not(hookline_postgres),
        ignore = "PostgreSQL only: set HOOKLINE_TEST_DATABASE_URL=postgres://postgres@127.0.0.1:5432/test to run it"
    )]
    async fn postgres_reads_the_last_minute_from_the_counts() {
        let (admin, schema, url) = crate::store::test_schema().await;
        the_last_minute_is_read_from_the_counts(&url).await;
        crate::store::drop_test_schema(&admin, &schema).await;
    }
}
