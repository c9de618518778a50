//! A schema of its own for each PostgreSQL test, so tests run in parallel on one database.
//! A test does not drop its schema (its app still holds connections when it ends), so each
//! new one first drops those that earlier runs left.

use std::time::{Duration, SystemTime};

use sqlx::postgres::{PgPool, PgPoolOptions};

/// Test schemas are named `t_<ulid>`: the ULID says when each was made.
const PREFIX: &str = "t_";

/// A test schema older than this is left over: no test runs that long.
const LEFT_OVER_AFTER: Duration = Duration::from_secs(3600);

/// Creates a fresh schema in the database `base` names, and returns `base` with that schema
/// as its search path.
pub async fn fresh_schema(base: &str) -> String {
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(base)
        .await
        .expect("PostgreSQL named by HOOKLINE_TEST_DATABASE_URL must be reachable");
    drop_left_over(&admin).await;
    let schema = format!("{PREFIX}{}", ulid::Ulid::new().to_string().to_lowercase());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&admin)
        .await
        .expect("create a test schema");
    admin.close().await;
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}options=-c%20search_path%3D{schema}")
}

/// Drops the test schemas older than [`LEFT_OVER_AFTER`]. One test at a time does it (the
/// others, starting meanwhile, skip it); a failure only leaves them for the next.
async fn drop_left_over(admin: &PgPool) {
    const SWEEP_LOCK: i64 = 0x686f_6f6b_6c69;
    let mut conn = admin.acquire().await.expect("a connection");
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(SWEEP_LOCK)
        .fetch_one(&mut *conn)
        .await
        .unwrap_or(false);
    if !locked {
        return;
    }
    let names: Vec<String> =
        sqlx::query_scalar("SELECT nspname::text FROM pg_namespace WHERE starts_with(nspname, $1)")
            .bind(PREFIX)
            .fetch_all(&mut *conn)
            .await
            .unwrap_or_default();
    let cutoff = SystemTime::now() - LEFT_OVER_AFTER;
    for name in names {
        let made =
            ulid::Ulid::from_string(&name[PREFIX.len()..].to_uppercase()).map(|u| u.datetime());
        if matches!(made, Ok(made) if made < cutoff) {
            let drop = format!("DROP SCHEMA IF EXISTS {name} CASCADE");
            let _ = sqlx::query(sqlx::AssertSqlSafe(drop))
                .execute(&mut *conn)
                .await;
        }
    }
    let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(SWEEP_LOCK)
        .execute(&mut *conn)
        .await;
}
