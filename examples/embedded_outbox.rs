//! hookline inside your own service: write your own row and its event in one transaction
//! of your own, then let an in-process dispatcher deliver it.
//!
//! ```sh
//! cargo run --example embedded_outbox
//! ```
//! It uses a temporary SQLite file, a receiver on 127.0.0.1, and stops by itself.

use std::time::Duration;

use hookline::dispatch::{DispatchConfig, Dispatcher};
use hookline::domain::callbacks::CreateCallback;
use hookline::store::outbox::{self, NewEvent};
use hookline::store::{Db, DbOptions};
use sqlx::sqlite::SqlitePoolOptions;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("hookline-example-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("service.db");

    // hookline's tables (migrated at connect) and a marketplace with a callback.
    let hookline = Db::connect(path.to_str().ok_or("path")?, &DbOptions::default()).await?;
    let (marketplace, _) = hookline.create_marketplace("my service").await?;
    let receiver = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hooks", receiver.local_addr()?);
    let (got_tx, mut got) = tokio::sync::mpsc::unbounded_channel::<String>();
    let app = axum::Router::new().fallback(move |body: String| {
        let got_tx = got_tx.clone();
        async move {
            let _ = got_tx.send(body);
            "ok"
        }
    });
    tokio::spawn(async move { axum::serve(receiver, app).await });
    let callback = CreateCallback {
        url: Some(url),
        method: None,
        revision: None,
        event_types: None,
        enabled: None,
    };
    hookline
        .create_callback(&marketplace.id, callback.validate(false)?)
        .await?;

    // Your service, with its own pool and its own table.
    let pool = SqlitePoolOptions::new()
        .connect(&format!("sqlite://{}", path.display()))
        .await?;
    sqlx::query("CREATE TABLE IF NOT EXISTS shipments (id TEXT PRIMARY KEY, status TEXT NOT NULL)")
        .execute(&pool)
        .await?;

    // One transaction: the row and its event commit together, or neither does.
    let mut tx = pool.begin().await?;
    sqlx::query("INSERT INTO shipments (id, status) VALUES ('SH1', 'shipped')")
        .execute(&mut *tx)
        .await?;
    let entity = serde_json::json!({ "shipments": [{ "id": "SH1", "status": "shipped" }] });
    let event_id = outbox::enqueue::<sqlx::Sqlite>(
        &mut tx,
        NewEvent {
            marketplace_id: &marketplace.id,
            event_type: "shipment.shipped",
            entity_id: "SH1",
            entity: &entity,
            occurred_at: hookline::store::now_micros(),
        },
    )
    .await?;
    tx.commit().await?;
    println!("wrote shipment SH1 and event {event_id} in one transaction");

    // The dispatcher, in-process (local addresses allowed for this example only).
    let config = DispatchConfig {
        allow: vec!["127.0.0.0/8".parse()?],
        ..DispatchConfig::default()
    };
    let dispatcher = Dispatcher::new(hookline, config);
    dispatcher.run_once().await?;
    let body = tokio::time::timeout(Duration::from_secs(5), got.recv())
        .await?
        .ok_or("no delivery")?;
    println!("the receiver got: {body}");
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
