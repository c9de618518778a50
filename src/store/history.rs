//! What happened to deliveries, for operators: an event's deliveries and their attempt
//! logs, a callback's recent attempts and health, and re-delivery by hand.

use sqlx::Row;
use sqlx::any::AnyRow;

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
         CAST(a.succeeded AS INTEGER) AS succeeded FROM attempts a JOIN deliveries d ON d.id = a.delivery_id"
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

    /// A callback's latest attempts, newest first.
    pub async fn callback_attempts(
        &self,
        scope: &Scope,
        callback_id: &str,
        limit: i64,
    ) -> Result<Vec<AttemptRow>, StoreError> {
        self.callback(scope, callback_id).await?;
        let rows = sqlx::query(concat!(
            attempt_select!(),
            " WHERE d.callback_id = $1 ORDER BY a.id DESC LIMIT $2"
        ))
        .bind(callback_id)
        .bind(limit)
        .fetch_all(self.reader())
        .await?;
        Ok(rows.iter().map(attempt).collect::<Result<_, _>>()?)
    }

    /// Success rates over the last hour and day, the last success and the last failure.
    pub async fn callback_health(
        &self,
        scope: &Scope,
        callback_id: &str,
    ) -> Result<CallbackHealth, StoreError> {
        self.callback(scope, callback_id).await?;
        let now = now_micros();
        let mut health = CallbackHealth::default();
        for (since, attempts, succeeded) in [
            (
                now - 3_600_000_000,
                &mut health.attempts_last_hour,
                &mut health.succeeded_last_hour,
            ),
            (
                now - 86_400_000_000,
                &mut health.attempts_last_day,
                &mut health.succeeded_last_day,
            ),
        ] {
            let row = sqlx::query(
                "SELECT COUNT(*) AS n, CAST(COALESCE(SUM(CASE WHEN a.succeeded THEN 1 ELSE 0 END), 0) AS BIGINT) AS ok \
                 FROM attempts a JOIN deliveries d ON d.id = a.delivery_id WHERE d.callback_id = $1 AND a.started_at >= $2",
            )
            .bind(callback_id)
            .bind(since)
            .fetch_one(self.reader())
            .await?;
            *attempts = row.try_get("n")?;
            *succeeded = row.try_get("ok")?;
        }
        let row = sqlx::query("SELECT last_success_at FROM callbacks WHERE id = $1")
            .bind(callback_id)
            .fetch_one(self.reader())
            .await?;
        health.last_success_at = row.try_get("last_success_at")?;
        let failure = sqlx::query(concat!(
            attempt_select!(),
            " WHERE d.callback_id = $1 AND NOT a.succeeded ORDER BY a.id DESC LIMIT 1"
        ))
        .bind(callback_id)
        .fetch_optional(self.reader())
        .await?;
        health.last_failure = failure.as_ref().map(attempt).transpose()?;
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
