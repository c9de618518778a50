//! Deliveries from the dispatcher's side: claiming due work under a lease, and reading
//! what a batch of attempts needs. Their attempts are recorded by `attempt_log`.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use sqlx::any::{AnyArguments, AnyRow};
use sqlx::{Any, AnyConnection, Arguments, AssertSqlSafe, Encode, Row, Type};

use super::rows::{self, event_columns};
use super::{Backend, Db, StoreError, now_micros, params, positional, values};
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

/// What a batch of claimed deliveries sends: each callback's target and each event's body.
#[derive(Debug, Default)]
pub struct Inputs {
    pub targets: HashMap<String, Arc<Target>>,
    pub bodies: HashMap<String, Bytes>,
}

impl Inputs {
    /// What `claimed`'s attempt sends, if its callback and its event were read.
    pub fn request(&self, claimed: &Claimed) -> Option<(Arc<Target>, Bytes)> {
        let target = self.targets.get(&claimed.callback_id)?;
        let body = self.bodies.get(&claimed.event_id)?;
        Some((target.clone(), body.clone()))
    }
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

impl Next {
    /// The delivery's status after the attempt, and when it is tried next.
    pub(super) fn state(&self) -> (&'static str, Option<i64>) {
        match self {
            Next::Succeeded => ("succeeded", None),
            Next::RetryAt(at) => ("retrying", Some(*at)),
            Next::GiveUp => ("failed", None),
        }
    }
}

/// What an attempt says about the callback's health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Ok,
    Failing,
    /// Turn the callback off, for this reason (410 Gone).
    Disable(String),
}

/// One finished attempt, ready for the log.
#[derive(Debug, Clone)]
pub struct Finished {
    pub claimed: Claimed,
    pub record: AttemptRecord,
    pub next: Next,
    pub health: Health,
}

#[cfg(test)]
impl Finished {
    /// A test's attempt of `claimed`, started at `started_at` and answered 200 at once.
    pub(crate) fn answered_200(claimed: Claimed, started_at: i64) -> Finished {
        Finished {
            claimed,
            record: AttemptRecord {
                started_at,
                duration_us: 1,
                request_headers: Vec::new(),
                request_body: "{}".into(),
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
}

/// The due deliveries of enabled callbacks that one branch of a claim takes, oldest due
/// first, by their rows' addresses (`{address}`: PostgreSQL's `ctid`, SQLite's `rowid`), so
/// that the claim's update reaches each row directly rather than through the primary key.
/// `{now}` is the parameter of the time, `{callback}` the callback whose state is checked
/// (the branch's own, once, or each delivery's), `{filter}` narrows them to one callback,
/// `{limit}` is the branch's limit, and `{lock}` is PostgreSQL's `FOR UPDATE OF d SKIP
/// LOCKED`, so rows another dispatcher is claiming are skipped, not waited on (SQLite has
/// one writer). The callback is read by a subquery on its id alone, so it is one probe of
/// its primary key in any plan: as a join, a plan PostgreSQL made while there were few
/// callbacks read every callback not deleted for each delivery claimed.
const CLAIM_BRANCH: &str = "SELECT address FROM (SELECT d.{address} AS address FROM deliveries d \
     WHERE d.status IN ('pending', 'retrying') AND d.next_attempt_at <= {now} \
     AND (SELECT c.enabled AND c.deleted_at IS NULL FROM callbacks c WHERE c.id = {callback}) \
     {filter} ORDER BY d.next_attempt_at LIMIT {limit} {lock}) AS b";

/// A claim: one statement, whose branches are [`CLAIM_BRANCH`]es joined by `UNION ALL`
/// (`{rows}`: on PostgreSQL `ctid = ANY(ARRAY(...))` of them, a TID scan whatever the size
/// PostgreSQL took the table for when it planned the statement; on SQLite `rowid IN
/// (...)`). The rows are locked by the branches (PostgreSQL), or written by nobody else
/// (SQLite's one writer), so their addresses hold until the update. On PostgreSQL a row
/// that another transaction changed between the claim's start and its lock may be locked
/// at an address the claim's snapshot does not see, and is then left for the next claim.
///
/// A claim also moves `next_attempt_at` to the lease's expiry: a delivery in flight is not
/// due until its lease runs out (then it is, if its attempt was lost). So the due range of
/// the `deliveries_due_callback` index holds only work nobody holds, and a claim reads no
/// leased rows.
const CLAIM: &str = "UPDATE deliveries SET lease_token = $1, lease_expires_at = $2, next_attempt_at = $3 \
     WHERE {rows} \
     RETURNING id, event_id, callback_id, attempts, schedule_base, schedule_start";

/// How many of an event's deliveries are in each state, for its body's `callback_statuses`:
/// the columns `pending`, `retrying`, `succeeded` and `failed`, over deliveries `d`.
const COUNTED: &str = "COUNT(CASE WHEN d.status = 'pending' THEN 1 END) AS pending, \
     COUNT(CASE WHEN d.status = 'retrying' THEN 1 END) AS retrying, \
     COUNT(CASE WHEN d.status = 'succeeded' THEN 1 END) AS succeeded, \
     COUNT(CASE WHEN d.status = 'failed' THEN 1 END) AS failed";

/// The deliveries [`COUNTED`] counts, read from `events e`: an event's deliveries are
/// found by id, one probe per callback of its marketplace.
const EVENT_DELIVERIES: &str = "FROM events e JOIN callbacks c ON c.marketplace_id = e.marketplace_id \
     JOIN deliveries d ON d.id = e.id || '_' || c.id AND d.event_id = e.id";

/// PostgreSQL: each event `k.event_id` read by its id, as `e` with the columns `{columns}`,
/// or NULLs if it does not exist.
const EVENT_BY_ID: &str =
    "LEFT JOIN LATERAL (SELECT {columns} FROM events WHERE id = k.event_id OFFSET 0) e ON TRUE";

/// PostgreSQL: [`COUNTED`] for each event `e` read by [`EVENT_BY_ID`] before it (the
/// columns of `n`), over the deliveries [`EVENT_DELIVERIES`] finds, found the same way by
/// lateral subqueries (which SQLite lacks) that cannot be merged into joins (`OFFSET 0`):
/// its marketplace's callbacks, a delivery by its id for each. So each row is an index
/// probe whatever the sizes PostgreSQL took the tables for when it planned the statement:
/// as joins, a plan made at 1,000 events scanned all three tables once they had grown (207
/// ms for 20 events at 300,000, against 0.76 ms).
/// An event with no deliveries, or one that does not exist (NULLs in `e`), counts zeros.
const EVENT_COUNTS: &str = "CROSS JOIN LATERAL (SELECT {counted} \
     FROM (SELECT id FROM callbacks WHERE marketplace_id = e.marketplace_id OFFSET 0) c \
     CROSS JOIN LATERAL (SELECT status FROM deliveries \
         WHERE id = e.id || '_' || c.id AND event_id = e.id OFFSET 0) d) n";

/// A [`CLAIM`] (`{claim}`) on PostgreSQL with what its attempts send, in the same statement
/// and snapshot: each delivery claimed with its event and the event's deliveries counted
/// by state (before the claim's update, which changes no state; `{event}` and `{counts}`,
/// [`EVENT_BY_ID`] and [`EVENT_COUNTS`]), and its callback's target. Each event and each
/// callback is read once, however many of its deliveries the claim took. A delivery
/// claimed whose event or callback cannot be read still comes back, with NULLs, and its
/// attempt is recorded as not sent. Built by [`claim_with_inputs`].
///
/// Every row is read by a lateral subquery that cannot be merged into a join (`OFFSET 0`),
/// so each is an index probe whatever the sizes PostgreSQL took the tables for when it
/// planned the statement: a join in a plan made while they were small could read all of
/// `events`, `callbacks` or `deliveries` for each claim.
const CLAIM_WITH_INPUTS: &str = "WITH claimed AS ({claim}), \
     read_events AS MATERIALIZED (SELECT k.event_id, e.marketplace_id, e.type, e.entity_id, \
         e.occurred_at, e.entity, n.* FROM (SELECT DISTINCT event_id FROM claimed) k {event} {counts}), \
     targets AS MATERIALIZED (SELECT k.callback_id, cb.* FROM (SELECT DISTINCT callback_id FROM claimed) k \
         LEFT JOIN LATERAL (SELECT url, method, secret, previous_secret, previous_secret_expires_at \
         FROM callbacks WHERE id = k.callback_id OFFSET 0) cb ON TRUE) \
     SELECT cl.*, e.marketplace_id, e.type, e.entity_id, e.occurred_at, e.entity, \
     e.pending, e.retrying, e.succeeded, e.failed, \
     t.url, t.method, t.secret, t.previous_secret, t.previous_secret_expires_at \
     FROM claimed cl JOIN read_events e ON e.event_id = cl.event_id \
     JOIN targets t ON t.callback_id = cl.callback_id";

/// [`CLAIM_WITH_INPUTS`] around `claim`, a [`CLAIM`].
fn claim_with_inputs(claim: &str) -> String {
    CLAIM_WITH_INPUTS
        .replace("{claim}", claim)
        .replace(
            "{event}",
            &event_by_id("id, marketplace_id, type, entity_id, occurred_at, entity"),
        )
        .replace("{counts}", &event_counts())
}

/// [`EVENT_BY_ID`] with these columns.
fn event_by_id(columns: &str) -> String {
    EVENT_BY_ID.replace("{columns}", columns)
}

/// [`EVENT_COUNTS`] with its counts.
fn event_counts() -> String {
    EVENT_COUNTS.replace("{counted}", COUNTED)
}

/// The most callbacks one claim statement asks for (four parameters each, after three
/// shared).
pub const MAX_CLAIM_CALLBACKS: usize = 100;

impl Db {
    /// Claims up to `limit` due deliveries of any callback for `lease_us`, oldest due first.
    pub async fn claim_due(&self, limit: i64, lease_us: i64) -> Result<Vec<Claimed>, StoreError> {
        let (sql, args, token) = self.claim_statement(&[(None, limit)], lease_us)?;
        let rows = self.fetch_unflushed(&sql, args).await?;
        rows.iter().map(|r| Ok(claimed(r, &token)?)).collect()
    }

    /// For each `(callback, limit)`, claims up to `limit` of that callback's due deliveries,
    /// oldest due first, through the `deliveries_due_callback` index (as cheap however much
    /// else is due). One statement for all (at most [`MAX_CLAIM_CALLBACKS`]), under one
    /// lease: all are claimed, or none. Returns each callback's claims, in the order asked.
    pub async fn claim_due_for_each(
        &self,
        wants: &[(&str, i64)],
        lease_us: i64,
    ) -> Result<Vec<Vec<Claimed>>, StoreError> {
        self.claim_due_for_each_on(None, wants, lease_us).await
    }

    /// [`Db::claim_due_for_each`] on `writer`, SQLite's writer already taken (by the attempt
    /// log's writer, between its writes), or else on a connection of its own. Should it
    /// fail on `writer`, the caller closes that (see [`super::sqlite_unflushed`]).
    pub(crate) async fn claim_due_for_each_on(
        &self,
        writer: Option<&mut AnyConnection>,
        wants: &[(&str, i64)],
        lease_us: i64,
    ) -> Result<Vec<Vec<Claimed>>, StoreError> {
        let (sql, args, token) = self.claim_statement(&asks(wants), lease_us)?;
        let rows = match writer {
            Some(writer) => super::sqlite_unflushed(writer, &sql, args).await?,
            None => self.fetch_unflushed(&sql, args).await?,
        };
        let claimed = rows
            .iter()
            .map(|r| claimed(r, &token))
            .collect::<Result<_, _>>()?;
        Ok(per_callback(wants, claimed))
    }

    /// [`Db::claim_due_for_each`], and what the attempts send ([`Db::inputs`]). On
    /// PostgreSQL one statement claims and reads (one round trip fewer between new work
    /// and its first attempt); on SQLite the reads follow the claim.
    pub async fn claim_due_for_each_with_inputs(
        &self,
        wants: &[(&str, i64)],
        lease_us: i64,
    ) -> Result<(Vec<Vec<Claimed>>, Inputs), StoreError> {
        if self.backend == Backend::Sqlite {
            let claimed = self.claim_due_for_each(wants, lease_us).await?;
            let inputs = self.inputs(claimed.iter().flatten()).await?;
            return Ok((claimed, inputs));
        }
        let (claim, args, token) = self.claim_statement(&asks(wants), lease_us)?;
        let sql = claim_with_inputs(&claim);
        let now = now_micros();
        let mut claims = Vec::new();
        let mut inputs = Inputs::default();
        for row in self.fetch_unflushed(&sql, args).await? {
            let claimed = claimed(&row, &token)?;
            if !inputs.targets.contains_key(&claimed.callback_id)
                && let Some(target) = target(&row, now)?
            {
                let id = claimed.callback_id.clone();
                inputs.targets.insert(id, Arc::new(target));
            }
            if !inputs.bodies.contains_key(&claimed.event_id)
                && row.try_get::<Option<String>, _>("entity")?.is_some()
            {
                let event = rows::event_with_id(&row, "event_id")?;
                let body = views::event_body(&event, statuses(&row)?);
                inputs.bodies.insert(event.id, Bytes::from(body));
            }
            claims.push(claimed);
        }
        Ok((per_callback(wants, claims), inputs))
    }

    /// A claim: [`CLAIM`] with one branch per ask, a callback (or any) and how many of its
    /// due deliveries to take. Returns the statement, its parameters and the lease token.
    fn claim_statement(
        &self,
        asks: &[(Option<&str>, i64)],
        lease_us: i64,
    ) -> Result<(String, AnyArguments, String), sqlx::Error> {
        assert!(
            !asks.is_empty() && asks.len() <= MAX_CLAIM_CALLBACKS,
            "a claim asks for 1 to {MAX_CLAIM_CALLBACKS} callbacks"
        );
        let (address, lock) = match self.backend {
            Backend::Sqlite => ("rowid", ""),
            Backend::Postgres => ("ctid", "FOR UPDATE OF d SKIP LOCKED"),
        };
        let now = now_micros();
        let token = crate::domain::ids::new_id("LS");
        let expires = now.saturating_add(lease_us);
        // Parameters in the order they appear, each once (see `positional`).
        let mut args = AnyArguments::default();
        let mut branches = Vec::with_capacity(asks.len());
        bind(&mut args, &token)?;
        bind(&mut args, expires)?;
        bind(&mut args, expires)?;
        for (callback, limit) in asks {
            let now = bind(&mut args, now)?;
            let (checked, filter) = match callback {
                Some(callback) => (
                    bind(&mut args, *callback)?,
                    format!("AND d.callback_id = {}", bind(&mut args, *callback)?),
                ),
                None => ("d.callback_id".to_owned(), String::new()),
            };
            // SQLite 3.51 re-prepares a statement whose `LIMIT` is a bound parameter each
            // time it is bound (its planner reads the value), but not one whose limit is an
            // expression of it; so a claim's text, prepared once, does for every limit.
            let limit = bind(&mut args, *limit)?;
            let limit = match self.backend {
                Backend::Sqlite => format!("{limit} + 0"),
                Backend::Postgres => limit,
            };
            branches.push(
                CLAIM_BRANCH
                    .replace("{address}", address)
                    .replace("{now}", &now)
                    .replace("{callback}", &checked)
                    .replace("{filter}", &filter)
                    .replace("{limit}", &limit)
                    .replace("{lock}", lock),
            );
        }
        let branches = branches.join(" UNION ALL ");
        let rows = match self.backend {
            Backend::Sqlite => format!("rowid IN ({branches})"),
            Backend::Postgres => format!("ctid = ANY(ARRAY({branches}))"),
        };
        let sql = CLAIM.replace("{rows}", &rows);
        Ok((positional(sql, self.backend), args, token))
    }

    /// The enabled callbacks with due work, but those in `skip`: one probe of the
    /// `deliveries_due_callback` index per callback, however large the backlog.
    pub async fn due_callbacks(&self, skip: &[&str]) -> Result<Vec<String>, StoreError> {
        let skip_sql = if skip.is_empty() {
            String::new()
        } else {
            format!("AND c.id NOT IN ({})", params(2, skip.len()))
        };
        let sql = format!(
            "SELECT c.id FROM callbacks c WHERE c.enabled AND c.deleted_at IS NULL {skip_sql} \
             AND EXISTS (SELECT 1 FROM deliveries d WHERE d.callback_id = c.id \
             AND d.status IN ('pending', 'retrying') AND d.next_attempt_at <= $1)"
        );
        let mut query =
            sqlx::query(AssertSqlSafe(positional(sql, self.backend))).bind(now_micros());
        for id in skip {
            query = query.bind(*id);
        }
        let rows = query.fetch_all(self.reader()).await?;
        Ok(rows
            .iter()
            .map(|r| r.try_get("id"))
            .collect::<Result<_, _>>()?)
    }

    /// Gives claimed deliveries back before their lease runs out, due at once, for others
    /// to take. One statement per batch: each delivery is released only under the lease it
    /// was claimed with (id and token both bound).
    pub async fn release(&self, claimed: &[Claimed]) -> Result<(), StoreError> {
        if claimed.is_empty() {
            return Ok(());
        }
        let pairs: Vec<String> = (0..claimed.len())
            .map(|i| format!("(id = ${} AND lease_token = ${})", 2 * i + 2, 2 * i + 3))
            .collect();
        let sql = format!(
            "UPDATE deliveries SET lease_token = NULL, lease_expires_at = NULL, next_attempt_at = $1 \
             WHERE status IN ('pending', 'retrying') AND ({})",
            pairs.join(" OR ")
        );
        let mut query =
            sqlx::query(AssertSqlSafe(positional(sql, self.backend))).bind(now_micros());
        for c in claimed {
            query = query.bind(&c.id).bind(&c.lease_token);
        }
        query.execute(self.writer()).await?;
        Ok(())
    }

    /// When the next delivery falls due, if any is waiting (one in flight falls due when
    /// its lease runs out): one probe of the `deliveries_due_callback` index per callback.
    pub async fn next_due(&self) -> Result<Option<i64>, StoreError> {
        let row = sqlx::query(
            "SELECT MIN((SELECT MIN(d.next_attempt_at) FROM deliveries d WHERE d.callback_id = c.id \
             AND d.status IN ('pending', 'retrying'))) AS next_attempt_at \
             FROM callbacks c WHERE c.enabled AND c.deleted_at IS NULL",
        )
        .fetch_optional(self.reader())
        .await?;
        Ok(match row {
            Some(row) => row.try_get("next_attempt_at")?,
            None => None,
        })
    }

    /// What `claimed`'s attempts send, read now: their callbacks' targets and their events'
    /// bodies, side by side.
    pub async fn inputs<'c>(
        &self,
        claimed: impl Iterator<Item = &'c Claimed>,
    ) -> Result<Inputs, StoreError> {
        let (mut callbacks, mut events): (Vec<&str>, Vec<&str>) = claimed
            .map(|c| (c.callback_id.as_str(), c.event_id.as_str()))
            .unzip();
        callbacks.sort_unstable();
        callbacks.dedup();
        events.sort_unstable();
        events.dedup();
        let (targets, bodies) =
            tokio::try_join!(self.targets(&callbacks), self.event_bodies(&events))?;
        let targets = targets.into_iter().map(|(k, v)| (k, Arc::new(v)));
        Ok(Inputs {
            targets: targets.collect(),
            bodies,
        })
    }

    /// The URL, method and signing secrets of each callback, as they are now.
    pub async fn targets(
        &self,
        callback_ids: &[&str],
    ) -> Result<HashMap<String, Target>, StoreError> {
        let mut targets = HashMap::new();
        if callback_ids.is_empty() {
            return Ok(targets);
        }
        let sql = format!(
            "SELECT id, url, method, secret, previous_secret, previous_secret_expires_at FROM callbacks \
             WHERE id IN ({})",
            params(1, callback_ids.len())
        );
        let mut query = sqlx::query(AssertSqlSafe(positional(sql, self.backend)));
        for id in callback_ids {
            query = query.bind(*id);
        }
        let now = now_micros();
        for row in query.fetch_all(self.reader()).await? {
            if let Some(target) = target(&row, now)? {
                targets.insert(row.try_get("id")?, target);
            }
        }
        Ok(targets)
    }

    /// The body of each event's deliveries: the event exactly as `GET /events/{id}`
    /// returns it now.
    pub async fn event_bodies(
        &self,
        event_ids: &[&str],
    ) -> Result<HashMap<String, Bytes>, StoreError> {
        let mut bodies = HashMap::new();
        if event_ids.is_empty() {
            return Ok(bodies);
        }
        let sql = format!(
            "SELECT {} FROM events WHERE id IN ({})",
            event_columns!(),
            params(1, event_ids.len())
        );
        let mut query = sqlx::query(AssertSqlSafe(positional(sql, self.backend)));
        for id in event_ids {
            query = query.bind(*id);
        }
        let (rows, mut statuses) = tokio::try_join!(
            async { Ok(query.fetch_all(self.reader()).await?) },
            self.callback_statuses(event_ids)
        )?;
        for row in rows {
            let event = rows::event(&row)?;
            let counts = statuses.remove(&event.id).unwrap_or_default();
            let body = views::event_body(&event, counts);
            bodies.insert(event.id, Bytes::from(body));
        }
        Ok(bodies)
    }

    /// Each event's deliveries counted by state.
    pub async fn callback_statuses(
        &self,
        event_ids: &[&str],
    ) -> Result<HashMap<String, CallbackStatuses>, StoreError> {
        self.callback_statuses_on(self.reader(), event_ids).await
    }

    /// [`Db::callback_statuses`] read `on` a pool or a connection: on SQLite by a join
    /// ([`EVENT_DELIVERIES`]), on PostgreSQL by index probes ([`EVENT_COUNTS`]).
    async fn callback_statuses_on<'c>(
        &self,
        on: impl sqlx::Executor<'c, Database = Any>,
        event_ids: &[&str],
    ) -> Result<HashMap<String, CallbackStatuses>, StoreError> {
        let mut counts = HashMap::new();
        if event_ids.is_empty() {
            return Ok(counts);
        }
        let sql = match self.backend {
            Backend::Sqlite => format!(
                "SELECT e.id AS event_id, {COUNTED} {EVENT_DELIVERIES} WHERE e.id IN ({}) GROUP BY e.id",
                params(1, event_ids.len())
            ),
            Backend::Postgres => format!(
                "SELECT k.event_id, n.* FROM (VALUES {}) k (event_id) {} {}",
                values(event_ids.len(), 1),
                event_by_id("id, marketplace_id"),
                event_counts()
            ),
        };
        let mut query = sqlx::query(AssertSqlSafe(positional(sql, self.backend)));
        for id in event_ids {
            query = query.bind(*id);
        }
        for row in query.fetch_all(on).await? {
            counts.insert(row.try_get("event_id")?, statuses(&row)?);
        }
        Ok(counts)
    }
}

/// The claim's asks for these callbacks.
fn asks<'a>(wants: &[(&'a str, i64)]) -> Vec<(Option<&'a str>, i64)> {
    wants.iter().map(|(c, n)| (Some(*c), *n)).collect()
}

/// `claimed` split by callback, in the order of `wants`.
fn per_callback(wants: &[(&str, i64)], mut claimed: Vec<Claimed>) -> Vec<Vec<Claimed>> {
    wants
        .iter()
        .map(|(callback, _)| {
            let (mine, rest) = std::mem::take(&mut claimed)
                .into_iter()
                .partition(|c| c.callback_id == *callback);
            claimed = rest;
            mine
        })
        .collect()
}

/// A delivery a claim returned, under its lease `token`.
fn claimed(row: &AnyRow, token: &str) -> Result<Claimed, sqlx::Error> {
    Ok(Claimed {
        id: row.try_get("id")?,
        event_id: row.try_get("event_id")?,
        callback_id: row.try_get("callback_id")?,
        attempts: row.try_get("attempts")?,
        schedule_base: row.try_get("schedule_base")?,
        schedule_start: row.try_get("schedule_start")?,
        lease_token: token.to_owned(),
    })
}

/// A callback's target from its columns at `now` (the previous secret signs too until its
/// grace period ends), or `None` where they are null (a left join found no callback).
fn target(row: &AnyRow, now: i64) -> Result<Option<Target>, sqlx::Error> {
    let Some(url) = row.try_get::<Option<String>, _>("url")? else {
        return Ok(None);
    };
    let mut secrets = vec![row.try_get::<String, _>("secret")?];
    let previous: Option<String> = row.try_get("previous_secret")?;
    let until: Option<i64> = row.try_get("previous_secret_expires_at")?;
    if let (Some(previous), Some(until)) = (previous, until)
        && until > now
    {
        secrets.push(previous);
    }
    Ok(Some(Target {
        url,
        method: row.try_get("method")?,
        secrets,
    }))
}

/// An event's deliveries counted by state, from the columns of [`COUNTED`].
fn statuses(row: &AnyRow) -> Result<CallbackStatuses, sqlx::Error> {
    Ok(CallbackStatuses {
        pending: row.try_get("pending")?,
        retrying: row.try_get("retrying")?,
        succeeded: row.try_get("succeeded")?,
        failed: row.try_get("failed")?,
    })
}

/// Adds `value` to `args` and returns its parameter (`$N`).
fn bind<'q>(
    args: &mut AnyArguments,
    value: impl Encode<'q, Any> + Type<Any>,
) -> Result<String, sqlx::Error> {
    add(args, value)?;
    Ok(format!("${}", args.len()))
}

/// Adds `value` to `args`, for a statement whose parameters are numbered in order.
pub(super) fn add<'q>(
    args: &mut AnyArguments,
    value: impl Encode<'q, Any> + Type<Any>,
) -> Result<(), sqlx::Error> {
    args.add(value).map_err(sqlx::Error::Encode)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SQLite binds a claim's parameters by position (see `positional`), which needs them in
    /// its text in the order they are bound, each once: a claim with a branch for one
    /// callback (its check and its filter bind it twice) and one for any keeps no `$N`.
    #[tokio::test]
    async fn a_sqlite_claim_binds_its_parameters_by_position() {
        let dir = tempfile::tempdir().expect("a directory");
        let path = dir.path().join("hookline.db");
        let db = Db::connect(
            path.to_str().expect("utf-8"),
            &crate::store::DbOptions::default(),
        )
        .await
        .expect("connect");
        let (sql, args, _) = db
            .claim_statement(&[(Some("CB1"), 5), (None, 3)], 1)
            .expect("a claim");
        assert!(!sql.contains('$'), "{sql}");
        assert_eq!(sql.matches('?').count(), 9, "{sql}");
        assert_eq!(args.len(), 9);
    }

    /// PostgreSQL only. The plan PostgreSQL keeps for a prepared statement is made once,
    /// for the tables as they were; hookline prepares its statements on a new database in
    /// its first seconds. Prepared (generic plans forced) on 2 callbacks, 1,000 events and
    /// 2,000 deliveries, an outbox append of 64 events with their deliveries, the count of
    /// those deliveries by state (as the API reads it), a claim with its inputs and the
    /// record of its attempts read no more rows (give or take 500) once the tables have
    /// grown by 10,000 callbacks, 10,000 events and 20,000 deliveries: each row through an
    /// index probe or its address, no table or index read whole.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[cfg_attr(
        not(hookline_postgres),
        ignore = "PostgreSQL only: set HOOKLINE_TEST_DATABASE_URL=postgres://postgres@127.0.0.1:5432/test to run it"
    )]
    async fn the_delivery_paths_statements_read_by_index_however_small_the_tables_were() {
        let (admin, schema, url) = crate::store::test_schema().await;
        let db = Db::connect(&url, &super::super::DbOptions::default())
            .await
            .expect("connect");
        let add_events = |from: i64, to: i64| {
            format!(
                "INSERT INTO events (id, marketplace_id, type, entity_id, occurred_at, entity) \
                 SELECT 'EV' || lpad(e::text, 8, '0'), 'MP', 'order.created', 'OR', e, '{{}}' \
                 FROM generate_series({from}, {to}) e; \
                 INSERT INTO deliveries (id, event_id, callback_id, marketplace_id, status, \
                     schedule_start, next_attempt_at, created_at, updated_at) \
                 SELECT 'EV' || lpad(e::text, 8, '0') || '_CB' || c, 'EV' || lpad(e::text, 8, '0'), \
                     'CB' || c, 'MP', 'pending', e, e, e, e \
                 FROM generate_series({from}, {to}) e, generate_series(1, 2) c"
            )
        };
        let add_callbacks = |marketplace: &str, prefix: &str, count: i64| {
            format!(
                "INSERT INTO marketplaces (id, name, secret_hash, created_at) \
                 VALUES ('{marketplace}', 'm', '{marketplace}', 0); \
                 INSERT INTO callbacks (id, marketplace_id, url, method, revision, enabled, \
                     secret, created_at, updated_at) \
                 SELECT '{prefix}' || c, '{marketplace}', 'http://a/' || c, 'post', '1', TRUE, \
                     's', 0, 0 \
                 FROM generate_series(1, {count}) c;"
            )
        };
        // No ANALYZE meanwhile, which would have the plans made again.
        let first = "ALTER TABLE callbacks SET (autovacuum_enabled = false); \
             ALTER TABLE events SET (autovacuum_enabled = false); \
             ALTER TABLE deliveries SET (autovacuum_enabled = false); "
            .to_owned()
            + &add_callbacks("MP", "CB", 2)
            + &add_events(1, 1_000);
        sqlx::raw_sql(AssertSqlSafe(first))
            .execute(db.writer())
            .await
            .expect("a new database's first deliveries");

        // A session whose plans are made once and kept, with sequential scans on as on the
        // API's sessions (the dispatcher's turn them off, see `DISPATCH_SESSION`).
        let mut conn = db
            .dispatch
            .acquire()
            .await
            .expect("a dispatcher connection");
        sqlx::raw_sql("SET plan_cache_mode = force_generic_plan; SET enable_seqscan = on")
            .execute(&mut *conn)
            .await
            .expect("generic plans");
        // What this backend read of each table and has not yet reported to the statistics
        // (reported when it is idle, at most once a second).
        async fn rows_read(conn: &mut AnyConnection) -> Vec<(String, i64)> {
            sqlx::query(
                "SELECT CAST(relname AS TEXT) AS relname, \
                 COALESCE(seq_tup_read, 0) + COALESCE(idx_tup_fetch, 0) AS read \
                 FROM pg_stat_xact_user_tables \
                 WHERE schemaname = current_schema() \
                 AND relname IN ('deliveries', 'events', 'callbacks') ORDER BY relname",
            )
            .fetch_all(conn)
            .await
            .expect("what the backend read")
            .iter()
            .map(|row| (row.get("relname"), row.get("read")))
            .collect()
        }
        // 64 events appended and their deliveries counted, a claim of 2 callbacks' due work
        // with its inputs, then the record of 2 of its attempts; rolled back. Returns what
        // the transaction read of each table.
        let entity = serde_json::json!({});
        let events = vec![
            crate::store::outbox::NewEvent {
                marketplace_id: "MP",
                event_type: "order.created",
                entity_id: "OR",
                entity: &entity,
                occurred_at: 1_000_000,
            };
            64
        ];
        let deliver = async |conn: &mut AnyConnection| {
            let mut tx = sqlx::Connection::begin(&mut *conn).await.expect("begin");
            let before = rows_read(&mut tx).await;
            let appended = crate::store::outbox::enqueue_many::<sqlx::Any>(&mut *tx, &events)
                .await
                .expect("append");
            let ids: Vec<&str> = appended.iter().map(String::as_str).collect();
            let counts = db
                .callback_statuses_on(&mut *tx, &ids)
                .await
                .expect("counts");
            assert!(
                ids.iter().all(|id| counts[*id].pending == 2),
                "each event appended has a delivery pending for each callback: {counts:?}"
            );
            let (claim, args, token) = db
                .claim_statement(&[(Some("CB1"), 64), (Some("CB2"), 64)], 60_000_000)
                .expect("a claim");
            let sql = claim_with_inputs(&claim);
            let rows = sqlx::query_with(AssertSqlSafe(sql), args)
                .fetch_all(&mut *tx)
                .await
                .expect("claim");
            assert_eq!(rows.len(), 128);
            let finished: Vec<Finished> = rows[..2]
                .iter()
                .map(|row| Finished::answered_200(super::claimed(row, &token).expect("claimed"), 1))
                .collect();
            let (sql, args) =
                crate::store::attempt_log::record(&finished, 2, 1_000_000).expect("a record");
            let kept = sqlx::query_with(AssertSqlSafe(sql), args)
                .fetch_all(&mut *tx)
                .await
                .expect("record");
            assert_eq!(kept.len(), 2, "both attempts kept their leases");
            let after = rows_read(&mut tx).await;
            tx.rollback().await.expect("rollback");
            before
                .into_iter()
                .zip(after)
                .map(|((table, before), (_, after))| (table, after - before))
                .collect::<Vec<_>>()
        };
        let small = deliver(&mut conn).await;
        let grow = add_callbacks("MQ", "CQ", 10_000) + &add_events(1_001, 11_000);
        sqlx::raw_sql(AssertSqlSafe(grow))
            .execute(db.writer())
            .await
            .expect("the tables grow");
        let grown = deliver(&mut conn).await;
        assert_eq!(small.len(), 3, "{small:?}");
        for ((table, before), (_, after)) in small.iter().zip(&grown) {
            assert!(
                *after < before + 500,
                "{table}: {before} rows read on the small tables, {after} on the grown ones"
            );
        }
        drop(conn);
        db.close().await;
        crate::store::drop_test_schema(&admin, &schema).await;
    }
}
