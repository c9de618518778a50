//! Reads: one resource in a scope, and keyset-paginated lists.

use sqlx::any::AnyRow;
use sqlx::{Any, AssertSqlSafe, Executor};

use super::rows::{self, event_columns, order_columns, txn_columns};
use super::{Backend, Db, Scope, StoreError};
use crate::domain::ledger::Kind;
use crate::domain::views::{CallbackStatuses, EventRow, OrderRow, TxnRow};

/// A page request. Ids sort by creation time, so a page is "the `limit` items after (older
/// than) `after`" or "before (newer than) `before`"; new items never shift a page.
#[derive(Debug, Clone, Default)]
pub struct Page {
    pub limit: i64,
    pub after: Option<String>,
    pub before: Option<String>,
}

/// One page, newest first.
#[derive(Debug, Clone)]
pub struct PageOf<T> {
    pub items: Vec<T>,
    /// Whether there are more items beyond this page in the direction travelled.
    pub more: bool,
}

/// Which transactions of a kind to list.
#[derive(Debug, Clone)]
pub enum TxnFilter {
    All,
    /// Those on this order.
    Order(String),
    /// Those returning this debit or credit.
    Parent(String),
}

pub(super) async fn order_by_id<'c, E: Executor<'c, Database = Any>>(
    exec: E,
    scope: &Scope,
    id: &str,
) -> Result<OrderRow, StoreError> {
    let row = sqlx::query(concat!(
        "SELECT ",
        order_columns!(),
        " FROM orders WHERE id = $1 AND marketplace_id = COALESCE($2, marketplace_id)"
    ))
    .bind(id)
    .bind(scope.marketplace())
    .fetch_optional(exec)
    .await?;
    match row {
        Some(row) => Ok(rows::order(&row)?),
        None => Err(StoreError::NotFound {
            kind: "order",
            id: id.to_owned(),
        }),
    }
}

pub(super) async fn txn_by_id<'c, E: Executor<'c, Database = Any>>(
    exec: E,
    scope: &Scope,
    kind: Kind,
    id: &str,
) -> Result<TxnRow, StoreError> {
    let row = sqlx::query(concat!(
        "SELECT ",
        txn_columns!(),
        " FROM transactions WHERE id = $1 AND kind = $2 AND marketplace_id = COALESCE($3, marketplace_id)"
    ))
    .bind(id)
    .bind(kind.as_str())
    .bind(scope.marketplace())
    .fetch_optional(exec)
    .await?;
    match row {
        Some(row) => Ok(rows::transaction(&row)?),
        None => Err(StoreError::NotFound {
            kind: kind.as_str(),
            id: id.to_owned(),
        }),
    }
}

impl Db {
    pub async fn order(&self, scope: &Scope, id: &str) -> Result<OrderRow, StoreError> {
        order_by_id(self.reader(), scope, id).await
    }

    pub async fn transaction(
        &self,
        scope: &Scope,
        kind: Kind,
        id: &str,
    ) -> Result<TxnRow, StoreError> {
        txn_by_id(self.reader(), scope, kind, id).await
    }

    pub async fn event(
        &self,
        scope: &Scope,
        id: &str,
    ) -> Result<(EventRow, CallbackStatuses), StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            event_columns!(),
            " FROM events WHERE id = $1 AND marketplace_id = COALESCE($2, marketplace_id)"
        ))
        .bind(id)
        .bind(scope.marketplace())
        .fetch_optional(self.reader())
        .await?;
        let Some(row) = row else {
            return Err(StoreError::NotFound {
                kind: "event",
                id: id.to_owned(),
            });
        };
        let statuses = self
            .callback_statuses(&[id])
            .await?
            .remove(id)
            .unwrap_or_default();
        Ok((rows::event(&row)?, statuses))
    }

    pub async fn orders(&self, scope: &Scope, page: &Page) -> Result<PageOf<OrderRow>, StoreError> {
        let mut filters = Vec::new();
        scope_filter(scope, &mut filters);
        self.list(
            concat!("SELECT ", order_columns!(), " FROM orders WHERE 1 = 1"),
            filters,
            page,
            rows::order,
        )
        .await
    }

    pub async fn transactions(
        &self,
        scope: &Scope,
        kind: Kind,
        filter: &TxnFilter,
        page: &Page,
    ) -> Result<PageOf<TxnRow>, StoreError> {
        let mut filters = vec![("kind", Arg::Text(kind.as_str().to_owned()))];
        scope_filter(scope, &mut filters);
        match filter {
            TxnFilter::All => {}
            TxnFilter::Order(id) => filters.push(("order_id", Arg::Text(id.clone()))),
            TxnFilter::Parent(id) => filters.push(("parent_id", Arg::Text(id.clone()))),
        }
        self.list(
            concat!("SELECT ", txn_columns!(), " FROM transactions WHERE 1 = 1"),
            filters,
            page,
            rows::transaction,
        )
        .await
    }

    /// Events, newest first, narrowed by `filter`.
    pub async fn events(
        &self,
        scope: &Scope,
        filter: &EventFilter,
        page: &Page,
    ) -> Result<PageOf<(EventRow, CallbackStatuses)>, StoreError> {
        let mut filters = Vec::new();
        scope_filter(scope, &mut filters);
        if let Some(id) = &filter.entity {
            filters.push(("entity_id", Arg::Text(id.clone())));
        }
        if let Some(t) = &filter.event_type {
            filters.push(("type", Arg::Text(t.clone())));
        }
        if let Some(t) = filter.occurred_from {
            filters.push(("occurred_at >=", Arg::Int(t)));
        }
        if let Some(t) = filter.occurred_until {
            filters.push(("occurred_at <", Arg::Int(t)));
        }
        if let Some(status) = &filter.delivery_status {
            // Failed deliveries are few, and those waiting (pending, retrying) are the
            // backlog: each are found from their own index, `deliveries_failed` or
            // `deliveries_due_callback` (the query names the index's condition, which SQLite
            // needs to use it), in time bounded by their number. Succeeded deliveries are
            // most events': those are walked newest first, each one's deliveries probed by
            // id, one per callback of its marketplace; a walk reads every event when none
            // matches, as it did for the rarer states.
            let condition = match status.as_str() {
                "failed" => {
                    "id IN (SELECT x.event_id FROM deliveries x WHERE x.status = 'failed' AND x.status ="
                }
                "pending" | "retrying" => {
                    "id IN (SELECT x.event_id FROM deliveries x \
                     WHERE x.status IN ('pending', 'retrying') AND x.status ="
                }
                _ => {
                    "EXISTS (SELECT 1 FROM callbacks c JOIN deliveries x ON x.id = events.id || '_' || c.id \
                     WHERE c.marketplace_id = events.marketplace_id AND x.event_id = events.id AND x.status ="
                }
            };
            filters.push((condition, Arg::Text(status.clone())));
        }
        let page = self
            .list(
                concat!("SELECT ", event_columns!(), " FROM events WHERE 1 = 1"),
                filters,
                page,
                rows::event,
            )
            .await?;
        let ids: Vec<&str> = page.items.iter().map(|e| e.id.as_str()).collect();
        let mut statuses = self.callback_statuses(&ids).await?;
        Ok(PageOf {
            items: page
                .items
                .into_iter()
                .map(|e| {
                    let s = statuses.remove(&e.id).unwrap_or_default();
                    (e, s)
                })
                .collect(),
            more: page.more,
        })
    }

    /// `select` (a SELECT ending in a WHERE condition) narrowed by filters and paged by id.
    /// A filter is a column (`kind`, meaning `kind = $n`) or a condition ending in its
    /// operator (`occurred_at >=`); a condition that opens a parenthesis is closed after
    /// its parameter. Only these fixed strings become SQL; every value is bound.
    pub(super) async fn list<T>(
        &self,
        select: &'static str,
        filters: Vec<(&'static str, Arg)>,
        page: &Page,
        decode: fn(&AnyRow) -> Result<T, sqlx::Error>,
    ) -> Result<PageOf<T>, StoreError> {
        let mut sql = select.to_owned();
        let mut args: Vec<Arg> = Vec::new();
        for (condition, value) in filters {
            args.push(value);
            let n = args.len();
            let op = if condition.ends_with(['=', '<', '>']) {
                ""
            } else {
                " ="
            };
            let close = if condition.contains('(') { ")" } else { "" };
            sql.push_str(&format!(" AND {condition}{op} ${n}{close}"));
        }
        let newer_first = page.before.is_none();
        if let Some(after) = &page.after {
            args.push(Arg::Text(after.clone()));
            sql.push_str(&format!(" AND id < ${}", args.len()));
        } else if let Some(before) = &page.before {
            args.push(Arg::Text(before.clone()));
            sql.push_str(&format!(" AND id > ${}", args.len()));
        }
        let order = if newer_first { "DESC" } else { "ASC" };
        sql.push_str(&format!(" ORDER BY id {order} LIMIT {}", page.limit + 1));
        // Planned for its values each time on PostgreSQL (an unnamed statement): a plan kept
        // for any values walks the table in id order, whole for a small tenant beside a
        // large one, or for a kind with no rows (see the test below). SQLite's plans do not
        // depend on the values.
        let planned_once = self.backend == Backend::Sqlite;
        let mut query = sqlx::query(AssertSqlSafe(sql)).persistent(planned_once);
        for arg in args {
            query = match arg {
                Arg::Text(t) => query.bind(t),
                Arg::Int(i) => query.bind(i),
            };
        }
        let rows = query.fetch_all(self.reader()).await?;
        let more = rows.len() as i64 > page.limit;
        let mut items = rows
            .iter()
            .take(page.limit as usize)
            .map(decode)
            .collect::<Result<Vec<T>, _>>()?;
        if !newer_first {
            items.reverse();
        }
        Ok(PageOf { items, more })
    }
}

/// A value bound into a list query.
pub(super) enum Arg {
    Text(String),
    Int(i64),
}

/// What `GET /events` narrows by.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// One resource's events.
    pub entity: Option<String>,
    pub event_type: Option<String>,
    /// `occurred_at` from (inclusive) and until (exclusive), microseconds.
    pub occurred_from: Option<i64>,
    pub occurred_until: Option<i64>,
    /// Events with at least one delivery in this state.
    pub delivery_status: Option<String>,
}

fn scope_filter(scope: &Scope, filters: &mut Vec<(&'static str, Arg)>) {
    if let Some(id) = scope.marketplace() {
        filters.push(("marketplace_id", Arg::Text(id.to_owned())));
    }
}

#[cfg(test)]
mod tests {
    use sqlx::{AssertSqlSafe, Row};

    use super::*;
    use crate::store::DbOptions;

    /// A store on `url` whose pools hold one connection each.
    async fn one_connection(url: &str) -> Db {
        let options = DbOptions {
            max_connections: 1,
            ..DbOptions::default()
        };
        Db::connect(url, &options).await.expect("connect")
    }

    /// PostgreSQL: rows of `tables` (names joined by `|`) read so far in `schema`, by
    /// scans and index probes, with the latest statements of `db`'s reader counted (a
    /// pool of one connection: another reports its own later).
    async fn rows_read(db: &Db, admin: &sqlx::PgPool, schema: &str, tables: &str) -> i64 {
        // Reported by the backend before it answers.
        sqlx::query("SELECT pg_stat_force_next_flush()")
            .execute(db.reader())
            .await
            .expect("flush the statistics");
        sqlx::query(
            "SELECT CAST(SUM(COALESCE(seq_tup_read, 0) + COALESCE(idx_tup_fetch, 0)) AS BIGINT) AS read \
             FROM pg_stat_user_tables WHERE schemaname = $1 AND relname = ANY(string_to_array($2, '|'))",
        )
        .bind(schema)
        .bind(tables)
        .fetch_one(admin)
        .await
        .expect("rows read")
        .get("read")
    }

    /// PostgreSQL only. PostgreSQL keeps a prepared statement's plan for any values once five
    /// runs have shown it costs no more than those planned for their own; for a list that is
    /// a walk of the table in id order, which a small tenant beside a large one, or a kind
    /// with no rows, turns into a read of the whole table (on 300,000 transactions, a list
    /// of reversals where there were none took 69 ms, planned for its values 0.01 ms). Each
    /// list is planned for its values: seven lists of a marketplace with 11 debits among
    /// 5,000 of another's, and seven of a kind the other has none of, read a few rows each.
    #[tokio::test]
    #[cfg_attr(
        not(hookline_postgres),
        ignore = "PostgreSQL only: set HOOKLINE_TEST_DATABASE_URL=postgres://postgres@127.0.0.1:5432/test to run it"
    )]
    async fn a_list_is_planned_for_its_own_values() {
        let (admin, schema, url) = crate::store::test_schema().await;
        // One connection: every list runs on the backend that keeps their plans.
        let db = one_connection(&url).await;
        let debits = |marketplace: &str, prefix: &str, count: i64| {
            format!(
                "INSERT INTO marketplaces (id, name, secret_hash, created_at) \
                 VALUES ('{marketplace}', 'm', '{marketplace}', 0); \
                 INSERT INTO transactions (id, kind, marketplace_id, amount, status, \
                     transaction_number, meta, created_at, updated_at) \
                 SELECT '{prefix}' || lpad(t::text, 8, '0'), 'debit', '{marketplace}', 1, \
                     'succeeded', 'W' || t, '{{}}', t, t \
                 FROM generate_series(1, {count}) t;"
            )
        };
        // The small marketplace's debits are the oldest, so a walk from the newest passes
        // all of the large one's first.
        let setup = debits("MPsmall", "WDa", 11) + &debits("MPlarge", "WDb", 5_000) + "ANALYZE";
        sqlx::raw_sql(AssertSqlSafe(setup))
            .execute(db.writer())
            .await
            .expect("two marketplaces' debits");
        let read = async || rows_read(&db, &admin, &schema, "transactions").await;
        let page = Page {
            limit: 10,
            ..Page::default()
        };
        let list = async |marketplace: &str, kind: Kind| {
            let scope = Scope::Marketplace(marketplace.to_owned());
            db.transactions(&scope, kind, &TxnFilter::All, &page)
                .await
                .expect("a list")
                .items
                .len()
        };
        let before = read().await;
        for _ in 0..7 {
            assert_eq!(list("MPsmall", Kind::Debit).await, 10);
        }
        for _ in 0..7 {
            assert_eq!(list("MPlarge", Kind::Reversal).await, 0);
        }
        let rows = read().await - before;
        assert!(
            rows < 500,
            "{rows} rows of transactions read for 14 lists of at most 11"
        );
        db.close().await;
        crate::store::drop_test_schema(&admin, &schema).await;
    }

    /// PostgreSQL only. Events with a delivery in a state other than succeeded were found by
    /// walking the events newest first and probing each one's deliveries (1.35 s for 11
    /// failed among 300,000 events, 438 ms when none was retrying): they are found from
    /// those deliveries, through their indexes. Among 50,000 events, two failed deliveries,
    /// one retrying and none pending, each state listed three times, read a few rows.
    #[tokio::test]
    #[cfg_attr(
        not(hookline_postgres),
        ignore = "PostgreSQL only: set HOOKLINE_TEST_DATABASE_URL=postgres://postgres@127.0.0.1:5432/test to run it"
    )]
    async fn events_with_a_delivery_failed_or_waiting_are_found_from_those_deliveries() {
        let (admin, schema, url) = crate::store::test_schema().await;
        // One connection: the one whose statistics `rows_read` reports is the lists'.
        let db = one_connection(&url).await;
        let setup = "INSERT INTO marketplaces (id, name, secret_hash, created_at) VALUES ('MP1', 'm', 'h', 0); \
             INSERT INTO callbacks (id, marketplace_id, url, method, revision, enabled, secret, created_at, \
                 updated_at) VALUES ('CB1', 'MP1', 'https://a', 'post', 'r', TRUE, 's', 0, 0); \
             INSERT INTO events (id, marketplace_id, type, entity_id, occurred_at, entity) \
             SELECT 'EV' || lpad(g::text, 8, '0'), 'MP1', 'debit.succeeded', 'WD1', g, '{}' \
             FROM generate_series(1, 50000) g; \
             INSERT INTO deliveries (id, event_id, callback_id, marketplace_id, status, attempts, \
                 schedule_start, next_attempt_at, created_at, updated_at) \
             SELECT id || '_CB1', id, 'CB1', 'MP1', \
                 CASE WHEN id IN ('EV00000010', 'EV00000020') THEN 'failed' \
                     WHEN id = 'EV00000030' THEN 'retrying' ELSE 'succeeded' END, \
                 1, 0, CASE WHEN id = 'EV00000030' THEN 1 END, 0, 0 \
             FROM events; \
             ANALYZE";
        let mut setup_conn = db.writer().acquire().await.expect("a connection");
        sqlx::raw_sql(setup)
            .execute(&mut *setup_conn)
            .await
            .expect("50,000 events");
        // The setup read every event (the deliveries' insert): reported now, so that those
        // reads are counted before the lists.
        sqlx::query("SELECT pg_stat_force_next_flush()")
            .execute(&mut *setup_conn)
            .await
            .expect("flush the statistics");
        drop(setup_conn);
        let page = Page {
            limit: 10,
            ..Page::default()
        };
        let scope = Scope::Marketplace("MP1".to_owned());
        for (status, expected) in [
            ("failed", &["EV00000020", "EV00000010"][..]),
            ("retrying", &["EV00000030"][..]),
            ("pending", &[][..]),
        ] {
            let filter = EventFilter {
                delivery_status: Some(status.to_owned()),
                ..EventFilter::default()
            };
            let before = rows_read(&db, &admin, &schema, "events|deliveries").await;
            for _ in 0..3 {
                let found = db.events(&scope, &filter, &page).await.expect("a list");
                let ids: Vec<&str> = found.items.iter().map(|(e, _)| e.id.as_str()).collect();
                assert_eq!(ids, expected, "{status}");
            }
            let rows = rows_read(&db, &admin, &schema, "events|deliveries").await - before;
            assert!(rows < 100, "{rows} rows read for 3 lists of {status}");
        }
        db.close().await;
        crate::store::drop_test_schema(&admin, &schema).await;
    }
}
