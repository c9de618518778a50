//! The operator console in a real browser: headless Chromium, driven over WebDriver by
//! Debian's chromedriver, clicks from sign-in through an event to its failed attempt.
//!
//! Needs `chromium` and `chromedriver` on the PATH (`.ci/run` installs them); without them
//! the test fails and says so. SQLite only: the console is the same on both backends.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use fantoccini::{Client, ClientBuilder, Locator};
use hookline::api::{self, ApiConfig};
use hookline::dispatch::{DispatchConfig, Dispatcher};
use hookline::store::{Db, DbOptions};
use serde_json::{Value, json};

const OPERATOR: &str = "operator-console-token";
/// What the receiver answers with its 500: markup, which the console must show as text.
const RECEIVER_BODY: &str = "<b id=\"injected\">receiver says no</b>";
/// Longest wait for any one thing to appear in the page.
const STEP: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(hookline_chromium),
    ignore = "browser test skipped: install Debian's chromium and chromium-driver, then set HOOKLINE_TEST_CHROMIUM=1"
)]
async fn a_person_clicks_from_an_event_to_its_failed_attempt() {
    // Everything (browser start included) within a minute; the guards below end
    // chromedriver and its browser if this gives up.
    tokio::time::timeout(Duration::from_secs(60), scenario())
        .await
        .expect("the console test did not finish within 60 s");
}

async fn scenario() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let chromium = on_path(&["chromium", "chromium-browser"]).expect(
        "Chromium is not installed: this test drives the console in headless Chromium. \
         Install it with `apt-get install chromium chromium-driver` (.ci/run does).",
    );
    let chromedriver = on_path(&["chromedriver"]).expect(
        "chromedriver is not installed: this test drives Chromium through it. \
         Install it with `apt-get install chromium chromium-driver` (.ci/run does).",
    );

    let app = App::start().await;
    let receiver = failing_receiver().await;
    let http = reqwest::Client::new();

    // The page itself needs no credential, and comes with its protections.
    let page = http
        .get(format!("{}/console", app.base))
        .send()
        .await
        .expect("GET /console");
    assert_eq!(page.status(), StatusCode::OK);
    let header = |name: &str| {
        page.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    assert!(header("content-type").starts_with("text/html"));
    assert_eq!(header("x-frame-options"), "DENY");
    let csp = header("content-security-policy");
    for directive in [
        "default-src 'none'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "CSP {csp:?} lacks {directive}");
    }
    assert!(!csp.contains("unsafe-inline"), "{csp}");

    // A callback that always answers 500, an order, and one dispatcher step.
    let (status, body) = app
        .post(&http, "/callbacks", json!({ "url": receiver }))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = app
        .post(
            &http,
            "/orders",
            json!({ "merchant": "/customers/CU1aISiQGTsURlHIHO0Ajnag" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let dispatcher = Dispatcher::new(
        app.db.clone(),
        DispatchConfig {
            allow: vec!["127.0.0.0/8".parse().expect("a range")],
            ..DispatchConfig::default()
        },
    );
    let attempted = dispatcher.run_once().await.expect("a dispatch step");
    assert_eq!(attempted, 1, "one delivery attempted");

    // The browser.
    let dir = tempfile::Builder::new()
        .prefix("hookline-console-")
        .tempdir()
        .expect("a temporary directory");
    let driver = Driver::start(&chromedriver, dir.path()).await;
    let client = driver.session(&chromium, &dir.path().join("profile")).await;

    let outcome = walk(&client, &app).await;
    if let Err(failure) = &outcome {
        let kept = dir.keep();
        let saved = evidence(&client, &kept).await;
        let _ = client.clone().close().await;
        panic!(
            "{failure}\n{saved}\nchromedriver's log: {}",
            kept.join("chromedriver.log").display()
        );
    }
    client.close().await.expect("end the browser session");
}

type Step<T> = Result<T, String>;

/// What a person does and sees, from sign-in to the failed attempt.
async fn walk(client: &Client, app: &App) -> Step<()> {
    client
        .goto(&format!("{}/console", app.base))
        .await
        .map_err(|e| format!("open /console: {e}"))?;
    let secret = wait_for(client, "#secret").await?;
    secret
        .send_keys(&app.secret)
        .await
        .map_err(|e| format!("type the secret: {e}"))?;
    click(client, "#signin-button").await?;

    let stored = client
        .execute(
            "return [sessionStorage.getItem('hookline.console.secret'), localStorage.length];",
            vec![],
        )
        .await
        .map_err(|e| format!("read storage: {e}"))?;
    check(
        stored == json!([app.secret, 0]),
        format!("the secret is kept in sessionStorage only: {stored}"),
    )?;

    click(
        client,
        "tr[data-event-type='order.created'] a[data-testid='event-link']",
    )
    .await?;
    click(client, "a[data-testid='delivery-link']").await?;
    let attempt = wait_for(client, "#attempt-timeline li[data-testid='attempt']").await?;

    let field = |name: &'static str| {
        let attempt = attempt.clone();
        async move {
            attempt
                .find(Locator::Css(&format!("[data-testid='{name}']")))
                .await
                .map_err(|e| format!("{name} in the attempt: {e}"))?
                .text()
                .await
                .map_err(|e| format!("{name}'s text: {e}"))
        }
    };
    let number = field("attempt-number").await?;
    let outcome = field("attempt-outcome").await?;
    let response_status = field("attempt-response-status").await?;
    let response_body = field("attempt-response-body").await?;
    let seen = attempt
        .text()
        .await
        .map_err(|e| format!("the attempt: {e}"))?;
    check(
        number == "1",
        format!("attempt number {number:?}; saw {seen:?}"),
    )?;
    check(
        outcome == "failed",
        format!("outcome {outcome:?}; saw {seen:?}"),
    )?;
    check(
        response_status == "500",
        format!("response status {response_status:?}; saw {seen:?}"),
    )?;
    check(
        response_body.contains(RECEIVER_BODY),
        format!("the response body, as text: {response_body:?}"),
    )?;
    let attempts = client
        .find_all(Locator::Css("#attempt-timeline li[data-testid='attempt']"))
        .await
        .map_err(|e| format!("the timeline: {e}"))?;
    check(
        attempts.len() == 1,
        format!("{} attempts shown", attempts.len()),
    )?;
    let injected = client
        .execute(
            "return document.getElementById('injected') === null;",
            vec![],
        )
        .await
        .map_err(|e| format!("look for injected markup: {e}"))?;
    check(
        injected == json!(true),
        "the receiver's markup became part of the page".into(),
    )?;
    let error = client
        .execute(
            "const e = document.getElementById('error'); return e.hidden ? null : e.textContent;",
            vec![],
        )
        .await
        .map_err(|e| format!("the error banner: {e}"))?;
    check(
        error.is_null(),
        format!("the console shows an error: {error}"),
    )?;
    Ok(())
}

fn check(ok: bool, failure: String) -> Step<()> {
    if ok { Ok(()) } else { Err(failure) }
}

async fn wait_for(client: &Client, css: &str) -> Step<fantoccini::elements::Element> {
    client
        .wait()
        .at_most(STEP)
        .for_element(Locator::Css(css))
        .await
        .map_err(|e| format!("waiting for {css}: {e}"))
}

async fn click(client: &Client, css: &str) -> Step<()> {
    wait_for(client, css)
        .await?
        .click()
        .await
        .map_err(|e| format!("click {css}: {e}"))
}

/// A screenshot and the page's markup, kept in `dir` for whoever reads the failure.
async fn evidence(client: &Client, dir: &Path) -> String {
    let mut saved = Vec::new();
    if let Ok(png) = client.screenshot().await {
        let path = dir.join("console.png");
        if std::fs::write(&path, png).is_ok() {
            saved.push(format!("screenshot: {}", path.display()));
        }
    }
    if let Ok(html) = client.source().await {
        let path = dir.join("console.html");
        if std::fs::write(&path, html).is_ok() {
            saved.push(format!("page: {}", path.display()));
        }
    }
    saved.join("\n")
}

/// The first of `names` found on the PATH.
fn on_path(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    names.iter().find_map(|name| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    })
}

/// The app on 127.0.0.1, on a fresh SQLite file.
struct App {
    base: String,
    secret: String,
    db: Db,
    _dir: tempfile::TempDir,
}

impl App {
    async fn start() -> App {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("hookline.db");
        let db = Db::connect(
            path.to_str().expect("a UTF-8 path"),
            &DbOptions {
                max_connections: 4,
                ..DbOptions::default()
            },
        )
        .await
        .expect("connect and migrate");
        let (_, secret) = db
            .create_marketplace("console market")
            .await
            .expect("a marketplace");
        let config = ApiConfig {
            operator_token: Some(OPERATOR.into()),
            ..ApiConfig::default()
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("an address"));
        let router = api::router(db.clone(), config);
        tokio::spawn(async move { axum::serve(listener, router).await });
        App {
            base,
            secret,
            db,
            _dir: dir,
        }
    }

    async fn post(&self, http: &reqwest::Client, path: &str, body: Value) -> (StatusCode, Value) {
        let response = http
            .post(format!("{}{path}", self.base))
            .basic_auth(&self.secret, Some(""))
            .json(&body)
            .send()
            .await
            .expect("a request to the app");
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}

/// A receiver that answers every request with a 500 and [`RECEIVER_BODY`]; its URL.
async fn failing_receiver() -> String {
    let app = axum::Router::new()
        .fallback(|| async { (StatusCode::INTERNAL_SERVER_ERROR, RECEIVER_BODY) });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a receiver");
    let url = format!(
        "http://{}/hooks",
        listener.local_addr().expect("an address")
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// chromedriver, in a process group of its own so that it and the browser it starts end
/// with the test, however the test ends.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    async fn start(program: &Path, dir: &Path) -> Driver {
        use std::os::unix::process::CommandExt;
        // A free port: bound, read and released (chromedriver cannot report one it chose).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new(program)
            .arg(format!("--port={port}"))
            .arg(format!(
                "--log-path={}",
                dir.join("chromedriver.log").display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start chromedriver");
        let driver = Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let http = reqwest::Client::new();
        let deadline = Instant::now() + STEP;
        loop {
            let ready = http
                .get(format!("{}/status", driver.url))
                .timeout(Duration::from_secs(1))
                .send()
                .await;
            if let Ok(response) = ready
                && let Ok(status) = response.json::<Value>().await
                && status["value"]["ready"] == true
            {
                return driver;
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not answer on {} within {STEP:?}",
                driver.url
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A session in a fresh headless Chromium with its own profile directory.
    async fn session(&self, chromium: &Path, profile: &Path) -> Client {
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--no-first-run",
                    "--disable-sync",
                    "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!("an object")
        };
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("a Chromium session from chromedriver at {}: {e}", self.url))
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The whole group: chromedriver and any browser process still running. Only
        // processes this test started are in it.
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
