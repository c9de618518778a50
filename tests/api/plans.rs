//! PostgreSQL only: plans cached while a table was small are made again as the connection
//! ages, and the dispatcher's are made through indexes, so a table that grows fast is not
//! read with plans for a few rows.

use std::time::{Duration, Instant};

use hookline::store::{Db, DbOptions};
use sqlx::Row;

use crate::common::POSTGRES_ENV;

/// PostgreSQL makes 5 custom plans of a prepared statement, then keeps a generic plan while
/// it costs less than they did on average. Made again for a grown table, the generic plan
/// costs more than the custom plans of the empty one, so a custom plan is made: the sixth.
/// Had the old generic plan been kept, there would still be five.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(hookline_postgres),
    ignore = "PostgreSQL only: set HOOKLINE_TEST_DATABASE_URL=postgres://postgres@127.0.0.1:5432/test to run it"
)]
async fn a_statement_prepared_on_an_empty_table_is_planned_again_once_it_has_grown() {
    let url = std::env::var(POSTGRES_ENV).expect("HOOKLINE_TEST_DATABASE_URL");
    let url = crate::schema::fresh_schema(&url).await;
    let connected = Instant::now();
    // One connection for everything, so the statement's plans are that connection's.
    let options = DbOptions {
        max_connections: 1,
        ..DbOptions::default()
    };
    let db = Db::connect(&url, &options).await.expect("connect");
    let pool = db.reader();
    sqlx::query("CREATE TABLE probe (v TEXT NOT NULL)")
        .execute(pool)
        .await
        .expect("create");
    let statement = "SELECT COUNT(*) AS n FROM probe WHERE v = $1";
    let custom_plans = || async {
        sqlx::query("SELECT custom_plans FROM pg_prepared_statements WHERE statement = $1")
            .bind(statement)
            .fetch_one(pool)
            .await
            .expect("the statement is prepared")
            .get::<i64, _>("custom_plans")
    };
    let run = || async {
        sqlx::query(statement)
            .bind("x")
            .execute(pool)
            .await
            .expect("count");
    };
    for _ in 0..8 {
        run().await;
    }
    assert_eq!(custom_plans().await, 5, "then the generic plan");
    sqlx::query("INSERT INTO probe SELECT md5(g::text) FROM generate_series(1, 200000) g")
        .execute(pool)
        .await
        .expect("grow the table");
    run().await;
    let before = custom_plans().await;
    // The connection is younger than `connected.elapsed()`: its next step comes within
    // 0.42 times its age, or at 0.7 s.
    let wait = connected.elapsed().mul_f64(0.5).max(Duration::from_secs(1));
    tokio::time::sleep(wait).await;
    run().await;
    let after = custom_plans().await;
    assert!(
        after > before,
        "custom plans before the step {before}, after {after}: the generic plan was not made again"
    );
}

/// The dispatcher's sessions plan their statements through indexes however small the
/// tables are when they are prepared: on a new database PostgreSQL's generic plan of a
/// claim (the shape of `CLAIM` in `src/store/deliveries.rs`) would otherwise scan every
/// delivery to find the few it takes, and a connection that stays busy keeps that plan as
/// the table grows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(hookline_postgres),
    ignore = "PostgreSQL only: set HOOKLINE_TEST_DATABASE_URL=postgres://postgres@127.0.0.1:5432/test to run it"
)]
async fn the_dispatchers_claims_find_deliveries_through_an_index_on_a_new_database() {
    let url = std::env::var(POSTGRES_ENV).expect("HOOKLINE_TEST_DATABASE_URL");
    let url = crate::schema::fresh_schema(&url).await;
    let db = Db::connect(&url, &DbOptions::default())
        .await
        .expect("connect");
    // A new database after its first few events: 200 deliveries.
    sqlx::raw_sql(
        "INSERT INTO marketplaces (id, name, secret_hash, created_at) VALUES ('MP', 'm', 'h', 0); \
         INSERT INTO callbacks (id, marketplace_id, url, method, revision, enabled, secret, \
             created_at, updated_at) \
         SELECT 'CB' || c, 'MP', 'http://a/' || c, 'post', '1', TRUE, 's', 0, 0 \
         FROM generate_series(1, 2) c; \
         INSERT INTO events (id, marketplace_id, type, entity_id, occurred_at, entity) \
         SELECT 'EV' || e, 'MP', 'order.created', 'OR', 0, '{}' FROM generate_series(1, 100) e; \
         INSERT INTO deliveries (id, event_id, callback_id, marketplace_id, status, \
             schedule_start, next_attempt_at, created_at, updated_at) \
         SELECT 'EV' || e || '_CB' || c, 'EV' || e, 'CB' || c, 'MP', 'pending', 0, 0, 0, 0 \
         FROM generate_series(1, 100) e, generate_series(1, 2) c",
    )
    .execute(db.writer())
    .await
    .expect("a few deliveries");
    let branch = |n: u32| {
        format!(
            "SELECT id FROM (SELECT d.id FROM deliveries d JOIN callbacks c ON c.id = d.callback_id \
             WHERE d.status IN ('pending', 'retrying') AND d.next_attempt_at <= ${} \
             AND c.enabled AND c.deleted_at IS NULL AND d.callback_id = ${} \
             ORDER BY d.next_attempt_at LIMIT ${} FOR UPDATE OF d SKIP LOCKED) AS b",
            n,
            n + 1,
            n + 2
        )
    };
    let claim = format!(
        "PREPARE claim (BIGINT, TEXT, BIGINT, BIGINT, TEXT, BIGINT) AS \
         UPDATE deliveries SET lease_token = 'x' WHERE id IN ({} UNION ALL {})",
        branch(1),
        branch(4)
    );
    // The plan PostgreSQL keeps after a statement's fifth run, as it would make it now.
    let generic_plan = |pool: sqlx::AnyPool| {
        let claim = claim.clone();
        async move {
            let mut conn = pool.acquire().await.expect("a connection");
            let mut tx = sqlx::Connection::begin(&mut *conn).await.expect("begin");
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "SET LOCAL plan_cache_mode = force_generic_plan; {claim}"
            )))
            .execute(&mut *tx)
            .await
            .expect("prepare");
            let plan = sqlx::raw_sql("EXPLAIN EXECUTE claim (1, 'a', 64, 1, 'b', 64)")
                .fetch_all(&mut *tx)
                .await
                .expect("explain")
                .iter()
                .map(|row| row.get::<String, _>(0))
                .collect::<Vec<_>>()
                .join("\n");
            sqlx::raw_sql("DEALLOCATE claim")
                .execute(&mut *tx)
                .await
                .expect("deallocate");
            plan
        }
    };
    let api = generic_plan(db.writer().clone()).await;
    assert!(
        api.contains("Seq Scan on deliveries"),
        "the API's sessions plan as PostgreSQL does by default:\n{api}"
    );
    for pool in [
        db.for_dispatcher().writer().clone(),
        db.for_dispatcher().reader().clone(),
    ] {
        let plan = generic_plan(pool).await;
        assert!(
            plan.contains("deliveries_pkey") && !plan.contains("Seq Scan on deliveries"),
            "{plan}"
        );
    }
}
