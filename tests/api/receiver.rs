//! A real HTTP receiver on 127.0.0.1 for delivery tests: it answers as told and hands
//! every request it gets back over a channel.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::sync::mpsc;

/// One request as the receiver got it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: Method,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

/// How the receiver answers.
#[derive(Debug, Clone)]
pub enum Answer {
    Status(u16),
    /// A status with extra headers (e.g. `Retry-After`, `Location`).
    WithHeaders(u16, Vec<(&'static str, String)>),
    /// 200 with a body of this many bytes.
    Big(usize),
    /// 200 with this body.
    Body(&'static [u8]),
    /// Never answer.
    Hang,
}

pub struct Receiver {
    pub url: String,
    pub requests: mpsc::UnboundedReceiver<Received>,
}

impl Receiver {
    /// A receiver that answers `then` to everything.
    pub async fn start(then: Answer) -> Receiver {
        Self::scripted(vec![], then).await
    }

    /// A receiver that answers `first`, one per request, then `then` forever.
    pub async fn scripted(first: Vec<Answer>, then: Answer) -> Receiver {
        let (tx, requests) = mpsc::unbounded_channel();
        // Answers to give, in order; when they run out, `then` forever.
        let shared = Arc::new(Mutex::new((VecDeque::from(first), then)));
        let app =
            axum::Router::new().fallback(move |method: Method, headers: HeaderMap, body: Bytes| {
                let tx = tx.clone();
                let script = shared.clone();
                async move {
                    let _ = tx.send(Received {
                        method,
                        headers,
                        body,
                    });
                    let answer = {
                        let mut s = script.lock().expect("script lock");
                        let fallback = s.1.clone();
                        s.0.pop_front().unwrap_or(fallback)
                    };
                    respond(answer).await
                }
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a receiver");
        let url = format!("http://{}/hooks", listener.local_addr().expect("address"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver { url, requests }
    }

    /// The next request, waiting up to `within`.
    pub async fn next(&mut self, within: Duration) -> Option<Received> {
        tokio::time::timeout(within, self.requests.recv())
            .await
            .ok()
            .flatten()
    }

    /// Everything received so far, without waiting.
    pub fn drain(&mut self) -> Vec<Received> {
        let mut all = Vec::new();
        while let Ok(r) = self.requests.try_recv() {
            all.push(r);
        }
        all
    }
}

async fn respond(answer: Answer) -> Response {
    let status = |s: u16| StatusCode::from_u16(s).expect("a status");
    match answer {
        Answer::Status(s) => status(s).into_response(),
        Answer::WithHeaders(s, headers) => {
            let mut response = status(s).into_response();
            for (name, value) in headers {
                response
                    .headers_mut()
                    .insert(name, value.parse().expect("a header value"));
            }
            response
        }
        Answer::Big(n) => (StatusCode::OK, "x".repeat(n)).into_response(),
        Answer::Body(body) => (StatusCode::OK, body).into_response(),
        Answer::Hang => {
            std::future::pending::<()>().await;
            StatusCode::OK.into_response()
        }
    }
}
