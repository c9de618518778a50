//! Two processes on one SQLite file (`hookline api` beside `hookline dispatch`): each has
//! its own writer connection, and neither's transactions fail because of the other's.

use std::time::Duration;

use hookline::store::{Db, DbOptions};
use sqlx::Row;

#[tokio::test]
async fn a_write_transaction_is_not_failed_by_another_process_committing_meanwhile() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("two.db");
    let url = path.to_str().expect("utf-8 path");
    let api = Db::connect(url, &DbOptions::default()).await.expect("api");
    let dispatcher = Db::connect(url, &DbOptions::default())
        .await
        .expect("dispatcher");

    // The API's transaction reads first, as a create does.
    let mut tx = api.begin().await.expect("begin");
    let before: i64 = sqlx::query("SELECT COUNT(*) FROM marketplaces")
        .fetch_one(&mut *tx)
        .await
        .expect("read")
        .get(0);
    // The other process writes meanwhile: it waits for the API's transaction.
    let other = tokio::spawn(async move { dispatcher.create_marketplace("other").await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!other.is_finished(), "the other writer waits for the lock");
    sqlx::query("UPDATE marketplaces SET name = name")
        .execute(&mut *tx)
        .await
        .expect("the write after the read is not failed by the other process");
    tx.commit().await.expect("commit");
    other
        .await
        .expect("task")
        .expect("the other process's write");
    let after: i64 = sqlx::query("SELECT COUNT(*) FROM marketplaces")
        .fetch_one(api.reader())
        .await
        .expect("count")
        .get(0);
    assert_eq!(after, before + 1);
}
