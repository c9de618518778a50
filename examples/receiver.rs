//! A receiver for hookline's deliveries: verifies each signature, refuses timestamps more
//! than 5 minutes off, and processes each `webhook-id` once (deliveries are at least once).
//!
//! ```sh
//! WEBHOOK_SECRET=whsec_... cargo run --example receiver    # listens on 127.0.0.1:4000
//! ```
//! Register it with `POST /callbacks {"url": "http://127.0.0.1:4000/hooks"}` and run the
//! dispatcher with `--allow-network 127.0.0.0/8` (local addresses are refused otherwise).

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;

/// The ids seen lately, oldest first; enough to cover the retry window of a busy receiver.
/// A real service keeps these in its database, in the transaction that acts on the event.
#[derive(Default)]
struct Seen {
    ids: HashSet<String>,
    order: VecDeque<String>,
}

const REMEMBER: usize = 100_000;

impl Seen {
    /// True the first time an id is offered.
    fn first_time(&mut self, id: &str) -> bool {
        if !self.ids.insert(id.to_owned()) {
            return false;
        }
        self.order.push_back(id.to_owned());
        if self.order.len() > REMEMBER
            && let Some(old) = self.order.pop_front()
        {
            self.ids.remove(&old);
        }
        true
    }
}

#[derive(Clone)]
struct Receiver {
    secret: Arc<String>,
    seen: Arc<Mutex<Seen>>,
}

async fn hook(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> (StatusCode, String) {
    let now = chrono::Utc::now().timestamp();
    let id = match hookline::verify::delivery(&r.secret, &headers, &body, now) {
        Ok(id) => id,
        Err(refused) => return (StatusCode::UNAUTHORIZED, refused.to_string()),
    };
    let first = r.seen.lock().map(|mut s| s.first_time(&id)).unwrap_or(true);
    if !first {
        return (StatusCode::OK, format!("{id} already processed"));
    }
    let event: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    println!("{id}: {}", event["events"][0]["type"]);
    (StatusCode::NO_CONTENT, String::new())
}

#[tokio::main]
async fn main() {
    let secret = std::env::var("WEBHOOK_SECRET")
        .expect("set WEBHOOK_SECRET to the callback's whsec_ secret");
    let listen = std::env::var("LISTEN").unwrap_or_else(|_| "127.0.0.1:4000".to_owned());
    let state = Receiver {
        secret: Arc::new(secret),
        seen: Arc::default(),
    };
    let app = axum::Router::new()
        .route("/hooks", post(hook).put(hook))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(&listen).await.expect("bind");
    println!("receiving on http://{listen}/hooks");
    axum::serve(listener, app).await.expect("serve");
}
