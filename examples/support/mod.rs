//! What the benchmarks share: a PostgreSQL schema of their own, counts, and readings of a
//! process from `/proc`.

use std::time::Duration;

use hookline::store::Db;
use sqlx::Row;
use sqlx::postgres::{PgPool, PgPoolOptions};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One connection to the PostgreSQL server at `base`, for making and dropping schemas.
async fn admin(base: &str) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new().max_connections(1).connect(base).await
}

/// A fresh schema on the PostgreSQL server at `base`, as a URL whose search path is that
/// schema, and the schema's name.
pub async fn fresh_schema(base: &str) -> Result<(String, String), BoxError> {
    let schema = format!("bench_{}", ulid::Ulid::new().to_string().to_lowercase());
    let admin = admin(base).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&admin)
        .await?;
    admin.close().await;
    let sep = if base.contains('?') { '&' } else { '?' };
    Ok((
        format!("{base}{sep}options=-c%20search_path%3D{schema}"),
        schema,
    ))
}

/// Drops a schema [`fresh_schema`] made, within 15 seconds; says so on standard error if it
/// could not.
pub async fn drop_schema(base: &str, schema: &str) {
    let dropped = async {
        let admin = admin(base).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
            .execute(&admin)
            .await?;
        admin.close().await;
        Ok::<(), sqlx::Error>(())
    };
    match tokio::time::timeout(Duration::from_secs(15), dropped).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => eprintln!("could not drop schema {schema}: {e}"),
        Err(_) => eprintln!("dropping schema {schema} timed out"),
    }
}

/// Prints `rows` as the benchmarks' table, ending with whether the run was `complete`.
pub fn print_table(mut rows: Vec<(String, String)>, complete: bool) {
    rows.push((
        "result".to_owned(),
        if complete { "complete" } else { "INCOMPLETE" }.to_owned(),
    ));
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let line = format!("+{}+", "-".repeat(width + 2));
    println!("\n{line}");
    for (name, value) in rows {
        println!("| {name:<width$} | {value}");
    }
    println!("{line}");
}

/// The one number a statement such as `SELECT COUNT(*) FROM ...` answers.
pub async fn count(db: &Db, sql: &'static str) -> Result<i64, BoxError> {
    Ok(sqlx::query(sql).fetch_one(db.reader()).await?.try_get(0)?)
}

/// utime + stime from `/proc/<pid>/stat`, in seconds (USER_HZ is 100 on Linux).
pub fn proc_cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name in parentheses; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// A `kB` line of `/proc/<pid>/status`.
pub fn proc_status_kb(pid: &str, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
