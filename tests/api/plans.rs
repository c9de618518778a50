//! PostgreSQL only: plans cached while a table was small are made again as the connection
//! ages, so a table that grows fast is not read with plans for a few rows. (The
//! dispatcher's statements do not depend on it: see the test at the end of
//! `src/store/deliveries.rs`.)

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
