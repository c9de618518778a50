//! Deliveries from the dispatcher's side: claiming due work under a lease, and recording
//! each attempt with the next schedule in one transaction fenced by that lease.

use std::collections::HashMap;

use sqlx::{AssertSqlSafe, Row};

use super::{Backend, Db, Scope, StoreError, now_micros};
use crate::domain::views::{self, CallbackStatuses};

/// A delivery claimed by one dispatcher until `lease_expires_at`.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// Also the `webhook-id`: the same on every attempt.
    pub id: String,
    pub event_id: String,
    pub callback_id: String,
    /// Attempts made before this one.
    pub attempts: i64,
    /// Where the current retry schedule starts: attempts before it, and its start time
    /// (the event's time, or the latest re-delivery by hand).
    pub schedule_base: i64,
    pub schedule_start: i64,
    pub lease_token: String,
}

/// Where and how to deliver, as the callback stands now.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: String,
    pub method: String,
    /// Every secret that signs now: the current one, and the previous one during its grace
    /// period after a rotation.
    pub secrets: Vec<String>,
}

/// What one attempt sent and got, for the attempt log.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub started_at: i64,
    pub duration_us: i64,
    pub request_headers: Vec<(String, String)>,
    pub request_body: String,
    pub response_status: Option<i64>,
    pub response_headers: Option<Vec<(String, String)>>,
    pub response_body: Option<String>,
    pub error_code: Option<&'static str>,
    pub error_detail: Option<String>,
    pub succeeded: bool,
}

/// What becomes of the delivery after an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    Succeeded,
    /// Try again at this time (microseconds since the epoch).
    RetryAt(i64),
    /// No retries left: the delivery is `failed` (and can still be re-delivered by hand).
    GiveUp,
}

/// What an attempt says about the callback's health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Ok,
    Failing,
    /// Turn the callback off, for this reason (410 Gone).
    Disable(String),
}

/// Claims due deliveries of enabled callbacks whose lease is free. `{exclude}` skips
/// callbacks at their cap; `{lock}` is PostgreSQL's `FOR UPDATE OF d SKIP LOCKED`, so rows
/// another dispatcher is claiming are skipped, not waited on (SQLite has one writer).
const CLAIM: &str = "UPDATE deliveries SET lease_token = $1, lease_expires_at = $2 WHERE id IN (\
     SELECT d.id FROM deliveries d JOIN callbacks c ON c.id = d.callback_id \
     WHERE d.status IN ('pending', 'retrying') AND d.next_attempt_at <= $3 \
     AND (d.lease_expires_at IS NULL OR d.lease_expires_at <= $3) AND c.enabled AND c.deleted_at IS NULL \
     {exclude} ORDER BY d.next_attempt_at LIMIT $4 {lock}) \
     RETURNING id, event_id, callback_id, attempts, schedule_base, schedule_start";

impl Db {
    /// Claims up to `limit` due deliveries for `lease_us`, skipping those of the callbacks
    /// in `exclude` (already at their concurrency cap in this dispatcher).
    pub async fn claim_due(
        &self,
        limit: i64,
        lease_us: i64,
        exclude: &[String],
    ) -> Result<Vec<Claimed>, StoreError> {
        let now = now_micros();
        let token = crate::domain::ids::new_id("LS");
        let lock = match self.backend {
            Backend::Sqlite => "",
            Backend::Postgres => "FOR UPDATE OF d SKIP LOCKED",
        };
        let exclude_sql = if exclude.is_empty() {
            String::new()
        } else {
            let params: Vec<String> = (0..exclude.len()).map(|i| format!("${}", i + 5)).collect();
            format!("AND d.callback_id NOT IN ({})", params.join(", "))
        };
        let sql = CLAIM
            .replace("{exclude}", &exclude_sql)
            .replace("{lock}", lock);
        let mut query = sqlx::query(AssertSqlSafe(sql))
            .bind(&token)
            .bind(now.saturating_add(lease_us))
            .bind(now)
            .bind(limit);
        for id in exclude {
            query = query.bind(id);
        }
        let rows = query.fetch_all(self.writer()).await?;
        rows.iter()
            .map(|r| {
                Ok(Claimed {
                    id: r.try_get("id")?,
                    event_id: r.try_get("event_id")?,
                    callback_id: r.try_get("callback_id")?,
                    attempts: r.try_get("attempts")?,
                    schedule_base: r.try_get("schedule_base")?,
                    schedule_start: r.try_get("schedule_start")?,
                    lease_token: token.clone(),
                })
            })
            .collect()
    }

    /// Gives claimed deliveries back before their lease runs out, for others to take.
    /// One statement per batch: each delivery is released only under the lease it was
    /// claimed with (id and token both bound).
    pub async fn release(&self, claimed: &[Claimed]) -> Result<(), StoreError> {
        if claimed.is_empty() {
            return Ok(());
        }
        let pairs: Vec<String> = (0..claimed.len())
            .map(|i| format!("(id = ${} AND lease_token = ${})", 2 * i + 1, 2 * i + 2))
            .collect();
        let sql = format!(
            "UPDATE deliveries SET lease_token = NULL, lease_expires_at = NULL WHERE {}",
            pairs.join(" OR ")
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for c in claimed {
            query = query.bind(&c.id).bind(&c.lease_token);
        }
        query.execute(self.writer()).await?;
        Ok(())
    }

    /// When the next delivery falls due, if any is waiting.
    pub async fn next_due(&self) -> Result<Option<i64>, StoreError> {
        let row = sqlx::query(
            "SELECT MIN(CASE WHEN d.lease_expires_at > d.next_attempt_at THEN d.lease_expires_at \
             ELSE d.next_attempt_at END) AS due FROM deliveries d JOIN callbacks c ON c.id = d.callback_id \
             WHERE d.status IN ('pending', 'retrying') AND c.enabled AND c.deleted_at IS NULL",
        )
            .fetch_one(self.reader())
            .await?;
        Ok(row.try_get("due")?)
    }

    /// The callback's URL, method and signing secrets as they are now.
    pub async fn target(&self, callback_id: &str) -> Result<Target, StoreError> {
        let row = sqlx::query(
            "SELECT url, method, secret, previous_secret, previous_secret_expires_at FROM callbacks WHERE id = $1",
        )
        .bind(callback_id)
        .fetch_one(self.reader())
        .await?;
        let mut secrets = vec![row.try_get::<String, _>("secret")?];
        let previous: Option<String> = row.try_get("previous_secret")?;
        let until: Option<i64> = row.try_get("previous_secret_expires_at")?;
        if let (Some(previous), Some(until)) = (previous, until)
            && until > now_micros()
        {
            secrets.push(previous);
        }
        Ok(Target {
            url: row.try_get("url")?,
            method: row.try_get("method")?,
            secrets,
        })
    }

    /// The body of a delivery: the event exactly as `GET /events/{id}` returns it now.
    pub async fn event_body(&self, event_id: &str) -> Result<Vec<u8>, StoreError> {
        let (row, statuses) = self.event(&Scope::All, event_id).await?;
        let body = views::envelope("events", vec![views::event(&row, statuses)], None);
        Ok(serde_json::to_vec(&body).expect("JSON values serialize"))
    }

    /// Records an attempt and what comes next, in one transaction. The delivery changes only
    /// if this dispatcher still holds its lease (returns false otherwise): one that lost its
    /// lease cannot overwrite a newer result. The attempt itself is recorded either way.
    pub async fn record_attempt(
        &self,
        claimed: &Claimed,
        attempt: &AttemptRecord,
        next: &Next,
        health: &Health,
        disable_after_us: i64,
    ) -> Result<bool, StoreError> {
        let now = now_micros();
        let (status, next_at) = match next {
            Next::Succeeded => ("succeeded", None),
            Next::RetryAt(at) => ("retrying", Some(*at)),
            Next::GiveUp => ("failed", None),
        };
        let mut tx = self.begin().await?;
        let fenced = sqlx::query(
            "UPDATE deliveries SET status = $1, attempts = attempts + 1, next_attempt_at = $2, lease_token = NULL, \
             lease_expires_at = NULL, last_attempt_at = $3, updated_at = $3 WHERE id = $4 AND lease_token = $5 \
             AND status IN ('pending', 'retrying')",
        )
        .bind(status)
        .bind(next_at)
        .bind(attempt.started_at)
        .bind(&claimed.id)
        .bind(&claimed.lease_token)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        sqlx::query(
            "INSERT INTO attempts (delivery_id, attempt, started_at, duration_us, request_headers, request_body, \
             response_status, response_headers, response_body, error_code, error_detail, succeeded) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(&claimed.id)
        .bind(claimed.attempts + 1)
        .bind(attempt.started_at)
        .bind(attempt.duration_us)
        .bind(headers_json(&attempt.request_headers))
        .bind(&attempt.request_body)
        .bind(attempt.response_status)
        .bind(attempt.response_headers.as_deref().map(headers_json))
        .bind(&attempt.response_body)
        .bind(attempt.error_code)
        .bind(&attempt.error_detail)
        .bind(attempt.succeeded)
        .execute(&mut *tx)
        .await?;
        if fenced {
            match health {
                Health::Ok => {
                    sqlx::query("UPDATE callbacks SET last_success_at = $1, failing_since = NULL WHERE id = $2")
                        .bind(now)
                        .bind(&claimed.callback_id)
                        .execute(&mut *tx)
                        .await?;
                }
                Health::Failing => {
                    sqlx::query("UPDATE callbacks SET failing_since = COALESCE(failing_since, $1) WHERE id = $2")
                        .bind(attempt.started_at)
                        .bind(&claimed.callback_id)
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query(
                        "UPDATE callbacks SET enabled = FALSE, disabled_reason = $1, updated_at = $2 \
                         WHERE id = $3 AND enabled AND failing_since <= $4",
                    )
                    .bind(format!(
                        "no successful delivery for {} s (the disable window)",
                        disable_after_us / 1_000_000
                    ))
                    .bind(now)
                    .bind(&claimed.callback_id)
                    .bind(now - disable_after_us)
                    .execute(&mut *tx)
                    .await?;
                }
                Health::Disable(reason) => {
                    sqlx::query("UPDATE callbacks SET enabled = FALSE, disabled_reason = $1, updated_at = $2 WHERE id = $3")
                        .bind(reason)
                        .bind(now)
                        .bind(&claimed.callback_id)
                        .execute(&mut *tx)
                        .await?;
                }
            }
        }
        tx.commit().await?;
        Ok(fenced)
    }

    /// Each event's deliveries counted by state.
    pub async fn callback_statuses(
        &self,
        event_ids: &[&str],
    ) -> Result<HashMap<String, CallbackStatuses>, StoreError> {
        let mut counts: HashMap<String, CallbackStatuses> = HashMap::new();
        if event_ids.is_empty() {
            return Ok(counts);
        }
        let params: Vec<String> = (1..=event_ids.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT event_id, status, COUNT(*) AS n FROM deliveries WHERE event_id IN ({}) GROUP BY event_id, status",
            params.join(", ")
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for id in event_ids {
            query = query.bind(*id);
        }
        for row in query.fetch_all(self.reader()).await? {
            let entry = counts.entry(row.try_get("event_id")?).or_default();
            let n: i64 = row.try_get("n")?;
            match row.try_get::<String, _>("status")?.as_str() {
                "pending" => entry.pending = n,
                "retrying" => entry.retrying = n,
                "succeeded" => entry.succeeded = n,
                _ => entry.failed = n,
            }
        }
        Ok(counts)
    }
}

fn headers_json(headers: &[(String, String)]) -> String {
    let map: serde_json::Map<String, serde_json::Value> = headers
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    serde_json::Value::Object(map).to_string()
}
