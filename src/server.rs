//! Running hookline: its runtime, the first start's bootstrap, and serving the API until a
//! signal.

use std::net::SocketAddr;

use crate::api::{self, ApiConfig};
use crate::store::{Db, Marketplace, StoreError};

/// The tokio runtime hookline runs on, with `worker_threads` workers (see
/// [`crate::config::Config::worker_threads`]).
///
/// A worker takes from the runtime's shared queue every 8 tasks, not every 61 (tokio's
/// default). Tasks woken from threads outside the runtime wait in that queue: on SQLite every
/// answer of its connections' threads, so each attempt record and each claim, which waited
/// behind up to 61 HTTP tasks on the one worker. In the benchmark SQLite delivered 5 % more
/// (README, Benchmark); PostgreSQL, whose sockets wake tasks inside the runtime, the same.
pub fn runtime(worker_threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(worker_threads)
        .global_queue_interval(8)
        .enable_all()
        .build()
}

/// On a database with no marketplace, creates one so that a first start can be used at
/// once. Returns it with its secret, which the caller shows once.
pub async fn bootstrap(db: &Db) -> Result<Option<(Marketplace, String)>, StoreError> {
    if !db.marketplaces().await?.is_empty() {
        return Ok(None);
    }
    Ok(Some(db.create_marketplace("default").await?))
}

/// Serves the API on `listen` until SIGTERM or Ctrl-C, then finishes in-flight requests.
pub async fn serve_api(db: Db, config: ApiConfig, listen: SocketAddr) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tracing::info!(address = %listener.local_addr()?, "API listening");
    axum::serve(listener, api::router(db, config))
        .with_graceful_shutdown(shutdown_signal())
        .await
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}
