//! What happened to deliveries, for operators: an event's deliveries and their attempt
//! logs, a callback's recent attempts and health, and re-delivery by hand.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::attempt_log::COUNTED_MINUTE_US;
use super::{Backend, Db, Scope, StoreError, Tx, now_micros};

/// One delivery of an event to a callback.
#[derive(Debug, Clone)]
pub struct DeliveryRow {
    pub id: String,
    pub event_id: String,
    pub callback_id: String,
    pub url: String,
    pub status: String,
    pub attempts: i64,
    /// Attempts made in the current schedule (a re-delivery starts a new one).
    pub attempts_in_schedule: i64,
    pub next_attempt_at: Option<i64>,
    pub last_attempt_at: Option<i64>,
}

/// One attempt, as the log shows it.
#[derive(Debug, Clone)]
pub struct AttemptRow {
    pub delivery_id: String,
    pub attempt: i64,
    pub started_at: i64,
    pub duration_us: i64,
    pub request_headers: String,
    pub request_body: String,
    pub response_status: Option<i64>,
    pub response_headers: Option<String>,
    pub response_body: Option<String>,
    pub error_code: Option<String>,
    pub error_detail: Option<String>,
    pub succeeded: bool,
}

/// How a callback is doing.
#[derive(Debug, Clone, Default)]
pub struct CallbackHealth {
    pub attempts_last_hour: i64,
    pub succeeded_last_hour: i64,
    pub attempts_last_day: i64,
    pub succeeded_last_day: i64,
    pub last_success_at: Option<i64>,
    pub last_failure: Option<AttemptRow>,
}

macro_rules! delivery_select {
    () => {
        "SELECT d.id, d.event_id, d.callback_id, c.url, d.status, d.attempts, d.schedule_base, \
         d.next_attempt_at, d.last_attempt_at FROM deliveries d JOIN callbacks c ON c.id = d.callback_id"
    };
}

macro_rules! attempt_select {
    () => {
        "SELECT a.delivery_id, a.attempt, a.started_at, a.duration_us, a.request_headers, a.request_body, \
         a.response_status, a.response_headers, a.response_body, a.error_code, a.error_detail, \
         CAST(a.succeeded AS INTEGER) AS succeeded FROM attempts a"
    };
}

fn delivery(row: &AnyRow) -> Result<DeliveryRow, sqlx::Error> {
    let attempts: i64 = row.try_get("attempts")?;
    let base: i64 = row.try_get("schedule_base")?;
    Ok(DeliveryRow {
        id: row.try_get("id")?,
        event_id: row.try_get("event_id")?,
        callback_id: row.try_get("callback_id")?,
        url: row.try_get("url")?,
        status: row.try_get("status")?,
        attempts,
        attempts_in_schedule: attempts - base,
        next_attempt_at: row.try_get("next_attempt_at")?,
        last_attempt_at: row.try_get("last_attempt_at")?,
    })
}

fn attempt(row: &AnyRow) -> Result<AttemptRow, sqlx::Error> {
    Ok(AttemptRow {
        delivery_id: row.try_get("delivery_id")?,
        attempt: row.try_get("attempt")?,
        started_at: row.try_get("started_at")?,
        duration_us: row.try_get("duration_us")?,
        request_headers: row.try_get("request_headers")?,
        request_body: row.try_get("request_body")?,
        response_status: row.try_get("response_status")?,
        response_headers: row.try_get("response_headers")?,
        response_body: row.try_get("response_body")?,
        error_code: row.try_get("error_code")?,
        error_detail: row.try_get("error_detail")?,
        succeeded: row.try_get::<i64, _>("succeeded")? != 0,
    })
}

/// A callback's latest attempts (`$1`, `$2` of them), read through the `attempts_callback`
/// index: each attempt by the callback of its delivery, whose id is `{event}_{callback}`,
/// so the callback is what follows the id's `_`. The condition names the index's
/// expression as the migration wrote it for each backend (SQLite's `instr` is
/// PostgreSQL's `strpos`).
fn callback_attempts_sql(backend: Backend) -> &'static str {
    match backend {
        Backend::Sqlite => concat!(
            attempt_select!(),
            " WHERE substr(a.delivery_id, instr(a.delivery_id, '_') + 1) = $1 \
             ORDER BY a.id DESC LIMIT $2"
        ),
        Backend::Postgres => concat!(
            attempt_select!(),
            " WHERE substr(a.delivery_id, strpos(a.delivery_id, '_') + 1) = $1 \
             ORDER BY a.id DESC LIMIT $2"
        ),
    }
}

impl Db {
    /// An event's deliveries, one per callback. The event must be visible in `scope`.
    pub async fn event_deliveries(
        &self,
        scope: &Scope,
        event_id: &str,
    ) -> Result<Vec<DeliveryRow>, StoreError> {
        let (event, _) = self.event(scope, event_id).await?;
        let rows = sqlx::query(concat!(
            delivery_select!(),
            " WHERE d.id IN (SELECT $1 || '_' || id FROM callbacks WHERE marketplace_id = $2) \
             AND d.event_id = $3 ORDER BY d.callback_id"
        ))
        .bind(event_id)
        .bind(&event.marketplace_id)
        .bind(event_id)
        .fetch_all(self.reader())
        .await?;
        Ok(rows.iter().map(delivery).collect::<Result<_, _>>()?)
    }

    /// One delivery: of `event_id` to `callback_id`, visible in `scope`.
    pub async fn delivery(
        &self,
        scope: &Scope,
        event_id: &str,
        callback_id: &str,
    ) -> Result<DeliveryRow, StoreError> {
        let row = sqlx::query(concat!(
            delivery_select!(),
            " WHERE d.id = $1 AND d.event_id = $2 AND d.callback_id = $3 \
             AND d.marketplace_id = COALESCE($4, d.marketplace_id)"
        ))
        .bind(format!("{event_id}_{callback_id}"))
        .bind(event_id)
        .bind(callback_id)
        .bind(scope.marketplace())
        .fetch_optional(self.reader())
        .await?;
        match row {
            Some(row) => Ok(delivery(&row)?),
            None => Err(StoreError::NotFound {
                kind: "delivery",
                id: format!("{event_id}/{callback_id}"),
            }),
        }
    }

    /// A delivery's attempts, first to last.
    pub async fn delivery_attempts(
        &self,
        scope: &Scope,
        event_id: &str,
        callback_id: &str,
    ) -> Result<Vec<AttemptRow>, StoreError> {
        let found = self.delivery(scope, event_id, callback_id).await?;
        let rows = sqlx::query(concat!(
            attempt_select!(),
            " WHERE a.delivery_id = $1 ORDER BY a.attempt, a.id"
        ))
        .bind(&found.id)
        .fetch_all(self.reader())
        .await?;
        Ok(rows.iter().map(attempt).collect::<Result<_, _>>()?)
    }

    /// A callback's latest attempts, newest first (see `callback_attempts_sql`).
    pub async fn callback_attempts(
        &self,
        scope: &Scope,
        callback_id: &str,
        limit: i64,
    ) -> Result<Vec<AttemptRow>, StoreError> {
        self.callback(scope, callback_id).await?;
        let sql = callback_attempts_sql(self.backend);
        let rows = sqlx::query(sql)
            .bind(callback_id)
            .bind(limit)
            .fetch_all(self.reader())
            .await?;
        Ok(rows.iter().map(attempt).collect::<Result<_, _>>()?)
    }

    /// Success rates over the last hour and day, the last success and the last failure.
    /// The rates are read from `attempt_counts`, kept by the minute: "the last hour" is
    /// from the start of the minute an hour ago (60 to 61 minutes), the day likewise. The
    /// last failure is the last among the attempts that kept their lease (those the health
    /// is made of), or, if none failed since the migration that brought it, the log's last
    /// failed attempt then.
    pub async fn callback_health(
        &self,
        scope: &Scope,
        callback_id: &str,
    ) -> Result<CallbackHealth, StoreError> {
        self.callback(scope, callback_id).await?;
        let now = now_micros();
        let mut health = CallbackHealth::default();
        for (window, attempts, succeeded) in [
            (
                3_600_000_000,
                &mut health.attempts_last_hour,
                &mut health.succeeded_last_hour,
            ),
            (
                86_400_000_000,
                &mut health.attempts_last_day,
                &mut health.succeeded_last_day,
            ),
        ] {
            let row = sqlx::query(
                "SELECT CAST(COALESCE(SUM(succeeded + failed), 0) AS BIGINT) AS n, \
                 CAST(COALESCE(SUM(succeeded), 0) AS BIGINT) AS ok \
                 FROM attempt_counts WHERE callback_id = $1 AND minute >= $2",
            )
            .bind(callback_id)
            .bind((now - window) / COUNTED_MINUTE_US)
            .fetch_one(self.reader())
            .await?;
            *attempts = row.try_get("n")?;
            *succeeded = row.try_get("ok")?;
        }
        let row = sqlx::query(
            "SELECT last_success_at, last_failure_at, last_failure_delivery_id FROM callbacks WHERE id = $1",
        )
        .bind(callback_id)
        .fetch_one(self.reader())
        .await?;
        health.last_success_at = row.try_get("last_success_at")?;
        let failed_at: Option<i64> = row.try_get("last_failure_at")?;
        let failed_delivery: Option<String> = row.try_get("last_failure_delivery_id")?;
        if let (Some(at), Some(delivery)) = (failed_at, failed_delivery) {
            let failure = sqlx::query(concat!(
                attempt_select!(),
                " WHERE a.delivery_id = $1 AND a.started_at = $2 AND NOT a.succeeded \
                 ORDER BY a.id DESC LIMIT 1"
            ))
            .bind(delivery)
            .bind(at)
            .fetch_optional(self.reader())
            .await?;
            health.last_failure = failure.as_ref().map(attempt).transpose()?;
        }
        Ok(health)
    }

    /// Re-delivers an event to a callback by hand (Balanced's replay). A finished delivery
    /// is queued again with a new retry schedule; one waiting for a retry is made due now;
    /// one still pending is left as it is, so repeating the call changes nothing.
    pub async fn redeliver(
        &self,
        scope: &Scope,
        event_id: &str,
        callback_id: &str,
    ) -> Result<DeliveryRow, StoreError> {
        // A deleted callback's deliveries stay finished (404 here, as for any deleted one).
        self.callback(scope, callback_id).await?;
        let found = self.delivery(scope, event_id, callback_id).await?;
        let mut tx = self.begin().await?;
        let now = now_micros();
        let leased =
            sqlx::query("SELECT 1 FROM deliveries WHERE id = $1 AND lease_expires_at > $2")
                .bind(&found.id)
                .bind(now)
                .fetch_optional(&mut *tx)
                .await?;
        if leased.is_some() {
            return Err(StoreError::InFlight);
        }
        sqlx::query(
            "UPDATE deliveries SET status = 'pending', schedule_base = attempts, schedule_start = $1, \
             next_attempt_at = $1, updated_at = $1 WHERE id = $2 AND status IN ('succeeded', 'failed')",
        )
        .bind(now)
        .bind(&found.id)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE deliveries SET next_attempt_at = $1, updated_at = $1 WHERE id = $2 AND status = 'retrying' \
             AND next_attempt_at > $1 AND (lease_expires_at IS NULL OR lease_expires_at <= $1)",
        )
        .bind(now)
        .bind(&found.id)
        .execute(&mut *tx)
        .await?;
        self.notify_dispatchers(&mut tx).await?;
        self.commit(tx).await?;
        self.delivery(scope, event_id, callback_id).await
    }

    /// Re-delivers a callback's failed deliveries of events that occurred in
    /// `[from, to)`; returns how many were queued. Those already queued again are not
    /// counted twice.
    pub async fn redeliver_failed(
        &self,
        scope: &Scope,
        callback_id: &str,
        from: i64,
        to: i64,
    ) -> Result<u64, StoreError> {
        self.callback(scope, callback_id).await?;
        let mut tx = self.begin().await?;
        let now = now_micros();
        let queued = sqlx::query(
            "UPDATE deliveries SET status = 'pending', schedule_base = attempts, schedule_start = $1, \
             next_attempt_at = $1, updated_at = $1 WHERE callback_id = $2 AND status = 'failed' \
             AND EXISTS (SELECT 1 FROM events e WHERE e.id = deliveries.event_id \
                         AND e.occurred_at >= $3 AND e.occurred_at < $4)",
        )
        .bind(now)
        .bind(callback_id)
        .bind(from)
        .bind(to)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        self.notify_dispatchers(&mut tx).await?;
        self.commit(tx).await?;
        Ok(queued)
    }

    /// Wakes dispatchers in other processes when `tx` commits (PostgreSQL); in this
    /// process the commit itself signals.
    async fn notify_dispatchers(&self, tx: &mut Tx) -> Result<(), StoreError> {
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_notify('hookline_deliveries', '')")
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use sqlx::any::{AnyPoolOptions, install_default_drivers};
    use sqlx::{AssertSqlSafe, Row};

    use crate::store::attempt_log::COUNTED_MINUTE_US;
    use crate::store::{Backend, migrator, now_micros};

    /// The migration that brought `attempt_counts` (`version`) fills it, and each
    /// callback's last failure, from the log as it stood: the attempts of the last day by
    /// the minute, the newest failure.
    async fn the_log_as_it_stood_is_counted(url: &str, backend: Backend, version: i64) {
        install_default_drivers();
        let pool = AnyPoolOptions::new()
            .max_connections(1)
            .connect(url)
            .await
            .expect("connect");
        migrator(backend)
            .run_to(version - 1, &pool)
            .await
            .expect("migrate to the version before");
        let now = now_micros();
        let (two_days_ago, half_hour_ago) = (now - 2 * 86_400_000_000, now - 1_800_000_000);
        let delivery = |id: &str, callback: &str| {
            format!(
                "INSERT INTO events (id, marketplace_id, type, entity_id, occurred_at, entity) \
                 VALUES ('EV{id}', 'MP1', 'order.created', 'OR1', 0, '{{}}'); \
                 INSERT INTO deliveries (id, event_id, callback_id, marketplace_id, status, attempts, \
                     schedule_start, created_at, updated_at) \
                 VALUES ('{id}', 'EV{id}', '{callback}', 'MP1', 'succeeded', 2, 0, 0, 0);"
            )
        };
        let attempt = |delivery: &str, n: i64, at: i64, ok: bool| {
            format!(
                "INSERT INTO attempts (delivery_id, attempt, started_at, duration_us, request_headers, \
                     request_body, succeeded) VALUES ('{delivery}', {n}, {at}, 1, '{{}}', '{{}}', {ok});"
            )
        };
        let log = [
            "INSERT INTO marketplaces (id, name, secret_hash, created_at) VALUES ('MP1', 'm', 'h', 0);"
                .to_owned(),
            "INSERT INTO callbacks (id, marketplace_id, url, method, revision, enabled, secret, \
                 created_at, updated_at) VALUES ('CBa', 'MP1', 'https://a', 'post', 'r', TRUE, 's', 0, 0), \
                 ('CBb', 'MP1', 'https://b', 'post', 'r', TRUE, 's', 0, 0);"
                .to_owned(),
            delivery("DL1", "CBa"),
            delivery("DL2", "CBa"),
            delivery("DL3", "CBb"),
            attempt("DL1", 1, two_days_ago, false),
            attempt("DL2", 1, half_hour_ago, false),
            attempt("DL2", 2, half_hour_ago + 60_000_000, true),
            attempt("DL1", 2, now, true),
            attempt("DL3", 1, now, true),
        ];
        sqlx::raw_sql(AssertSqlSafe(log.concat()))
            .execute(&pool)
            .await
            .expect("the log");
        migrator(backend).run(&pool).await.expect("migrate");

        let counts = |callback: &'static str| {
            let pool = pool.clone();
            async move {
                sqlx::query(
                    "SELECT minute, succeeded, failed FROM attempt_counts WHERE callback_id = $1 ORDER BY minute",
                )
                .bind(callback)
                .fetch_all(&pool)
                .await
                .expect("counts")
                .iter()
                .map(|r| (r.get::<i64, _>(0), r.get::<i64, _>(1), r.get::<i64, _>(2)))
                .collect::<Vec<_>>()
            }
        };
        let minute = |at: i64| at / COUNTED_MINUTE_US;
        assert_eq!(
            counts("CBa").await,
            [
                (minute(half_hour_ago), 0, 1),
                (minute(half_hour_ago) + 1, 1, 0),
                (minute(now), 1, 0)
            ],
            "the day's attempts by the minute; not those of two days ago"
        );
        assert_eq!(counts("CBb").await, [(minute(now), 1, 0)]);
        let failures = sqlx::query(
            "SELECT id, last_failure_at, last_failure_delivery_id FROM callbacks ORDER BY id",
        )
        .fetch_all(&pool)
        .await
        .expect("callbacks")
        .iter()
        .map(|r| (r.get::<Option<i64>, _>(1), r.get::<Option<String>, _>(2)))
        .collect::<Vec<_>>();
        assert_eq!(
            failures,
            [(Some(half_hour_ago), Some("DL2".to_owned())), (None, None)]
        );
        pool.close().await;
    }

    /// The statement of a callback's attempts names `attempts_callback`'s expression as its
    /// migration wrote it, so it reads that index, not the whole log (on PostgreSQL with
    /// sequential scans off: an empty table may be read whole, and what is checked is that
    /// the index can serve the statement).
    async fn a_callbacks_attempts_are_read_through_their_index(url: &str, backend: Backend) {
        install_default_drivers();
        let pool = AnyPoolOptions::new()
            .max_connections(1)
            .connect(url)
            .await
            .expect("connect");
        migrator(backend).run(&pool).await.expect("migrate");
        let explain = match backend {
            Backend::Sqlite => "EXPLAIN QUERY PLAN",
            Backend::Postgres => {
                sqlx::raw_sql("SET enable_seqscan = off")
                    .execute(&pool)
                    .await
                    .expect("set");
                "EXPLAIN"
            }
        };
        let sql = format!("{explain} {}", super::callback_attempts_sql(backend));
        let plan = sqlx::query(AssertSqlSafe(sql))
            .bind("CB1")
            .bind(20_i64)
            .fetch_all(&pool)
            .await
            .expect("explain")
            .iter()
            .map(|row| row.get::<String, _>(row.len() - 1))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(plan.contains("attempts_callback"), "{plan}");
        pool.close().await;
    }

    #[tokio::test]
    async fn sqlite_reads_a_callbacks_attempts_through_their_index() {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("h.db").display());
        a_callbacks_attempts_are_read_through_their_index(&url, Backend::Sqlite).await;
    }

    #[tokio::test]
    #[cfg_attr(
        not(hookline_postgres),
        ignore = "PostgreSQL only: set HOOKLINE_TEST_DATABASE_URL=postgres://postgres@127.0.0.1:5432/test to run it"
    )]
    async fn postgres_reads_a_callbacks_attempts_through_their_index() {
        let (admin, schema, url) = crate::store::test_schema().await;
        a_callbacks_attempts_are_read_through_their_index(&url, Backend::Postgres).await;
        crate::store::drop_test_schema(&admin, &schema).await;
    }

    #[tokio::test]
    async fn sqlite_counts_the_log_as_it_stood() {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("h.db").display());
        the_log_as_it_stood_is_counted(&url, Backend::Sqlite, 6).await;
    }

    #[tokio::test]
    #[cfg_attr(
        not(hookline_postgres),
        ignore = "PostgreSQL only: set HOOKLINE_TEST_DATABASE_URL=postgres://postgres@127.0.0.1:5432/test to run it"
    )]
    async fn postgres_counts_the_log_as_it_stood() {
        let (admin, schema, url) = crate::store::test_schema().await;
        the_log_as_it_stood_is_counted(&url, Backend::Postgres, 8).await;
        crate::store::drop_test_schema(&admin, &schema).await;
    }
}
