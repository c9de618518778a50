//! The test harness: `TestApp` starts the real API on port 0 with a fresh database.

use hookline::api::{self, ApiConfig};
use hookline::store::{Backend, Db, DbOptions};
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// The environment variable naming the PostgreSQL database the PostgreSQL half runs in.
pub const POSTGRES_ENV: &str = "HOOKLINE_TEST_DATABASE_URL";
pub const OPERATOR: &str = "operator-test-token";

/// Runs each named `async fn(TestApp)` on SQLite and on PostgreSQL.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(crate::common::TestApp::sqlite().await).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[cfg_attr(
                    not(hookline_postgres),
                    ignore = "PostgreSQL half skipped: set HOOKLINE_TEST_DATABASE_URL=postgres://postgres@127.0.0.1:5432/test to run it"
                )]
                async fn $name() {
                    super::$name(crate::common::TestApp::postgres().await).await
                }
            )*
        }
    };
}

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    /// The API secret of the app's first marketplace.
    pub secret: String,
    pub marketplace: String,
    pub db: Db,
    /// Keeps the SQLite file's directory alive as long as the app.
    _dir: Option<tempfile::TempDir>,
}

impl TestApp {
    pub async fn sqlite() -> TestApp {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("hookline.db");
        Self::start(path.to_str().expect("utf-8 path"), Some(dir)).await
    }

    /// A fresh schema in the database `HOOKLINE_TEST_DATABASE_URL` names.
    pub async fn postgres() -> TestApp {
        let url = std::env::var(POSTGRES_ENV)
            .expect("HOOKLINE_TEST_DATABASE_URL was set when the tests were built; set it again to run them");
        let url = crate::schema::fresh_schema(&url).await;
        Self::start(&url, None).await
    }

    async fn start(url: &str, dir: Option<tempfile::TempDir>) -> TestApp {
        // reqwest is built without a default TLS provider (hookline installs ring's).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let options = DbOptions {
            max_connections: 8,
            ..DbOptions::default()
        };
        let db = Db::connect(url, &options)
            .await
            .expect("connect and migrate");
        let (marketplace, secret) = db
            .create_marketplace("test market")
            .await
            .expect("a marketplace");
        let config = ApiConfig {
            operator_token: Some(OPERATOR.into()),
            max_body_bytes: 64 * 1024,
            ..ApiConfig::default()
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("local address"));
        let router = api::router(db.clone(), config);
        tokio::spawn(async move { axum::serve(listener, router).await });
        TestApp {
            base,
            client: reqwest::Client::new(),
            secret,
            marketplace: marketplace.id,
            db,
            _dir: dir,
        }
    }

    pub fn backend(&self) -> Backend {
        self.db.backend()
    }

    /// A request as the app's marketplace.
    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.base))
            .basic_auth(&self.secret, Some(""))
    }

    /// A request as the operator.
    pub fn operator(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(OPERATOR)
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        send(self.request(Method::GET, path)).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        send(self.request(Method::POST, path).json(&body)).await
    }

    pub async fn put(&self, path: &str, body: Value) -> (StatusCode, Value) {
        send(self.request(Method::PUT, path).json(&body)).await
    }

    /// Reports a processor outcome as the operator.
    pub async fn settle(&self, id: &str, body: Value) -> (StatusCode, Value) {
        send(
            self.operator(Method::PUT, &format!("/processor/transactions/{id}"))
                .json(&body),
        )
        .await
    }

    /// Creates a second marketplace; returns its id and secret.
    pub async fn other_marketplace(&self) -> (String, String) {
        let (m, secret) = self
            .db
            .create_marketplace("other market")
            .await
            .expect("a marketplace");
        (m.id, secret)
    }

    pub async fn order(&self) -> String {
        let (status, body) = self
            .post(
                "/orders",
                serde_json::json!({ "merchant": MERCHANT, "description": "order" }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["orders"][0]["id"]
            .as_str()
            .expect("order id")
            .to_owned()
    }

    /// A debit of `amount` on `order` from `source`; returns its id.
    pub async fn debit(&self, order: &str, source: &str, amount: i64) -> String {
        let (status, body) = self
            .post(
                &format!("/orders/{order}/debits"),
                serde_json::json!({ "source": source, "amount": amount }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["debits"][0]["id"]
            .as_str()
            .expect("debit id")
            .to_owned()
    }

    /// A credit of `amount` out of `order` to `destination`; returns its id.
    pub async fn credit(&self, order: &str, destination: &str, amount: i64) -> String {
        let (status, body) = self
            .post(
                &format!("/orders/{order}/credits"),
                serde_json::json!({ "destination": destination, "amount": amount }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["credits"][0]["id"]
            .as_str()
            .expect("credit id")
            .to_owned()
    }

    /// The order's `(amount, amount_escrowed)`.
    pub async fn escrow(&self, order: &str) -> (i64, i64) {
        let (_, body) = self.get(&format!("/orders/{order}")).await;
        let o = &body["orders"][0];
        (
            o["amount"].as_i64().expect("amount"),
            o["amount_escrowed"].as_i64().expect("escrow"),
        )
    }

    /// The types of the events of one resource, oldest first.
    pub async fn event_types(&self, resource_path: &str) -> Vec<String> {
        let (status, body) = self.get(&format!("{resource_path}/events?limit=100")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let mut types: Vec<String> = body["events"]
            .as_array()
            .expect("events")
            .iter()
            .map(|e| e["type"].as_str().expect("type").to_owned())
            .collect();
        types.reverse();
        types
    }
}

pub const MERCHANT: &str = "/customers/CU1aISiQGTsURlHIHO0Ajnag";
pub const CARD: &str = "/cards/CC1cEczBXQmQz8GhkV1I9gje";
pub const BANK: &str = "/bank_accounts/BA3NAMVxvcWacA3IcfMprtiU";

pub async fn send(request: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let response = request.send().await.expect("the request reaches the app");
    let status = response.status();
    let text = response.text().await.expect("a body");
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).expect("a JSON body")
    };
    (status, body)
}

/// The single error in a Balanced error envelope.
pub fn error(body: &Value) -> &Value {
    &body["errors"][0]
}
