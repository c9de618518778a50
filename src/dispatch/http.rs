//! One delivery attempt over HTTP: build and sign the request, send it outside any database
//! transaction, read the answer up to a cap, and name what went wrong if there was no
//! answer.

use std::error::Error as _;
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderValue};

use super::guard::{Blocked, Guard, literal_ip};
use crate::signing;
use crate::store::deliveries::{AttemptRecord, Target};
use crate::store::now_micros;

/// What came back, if anything did.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub retry_after: Option<Duration>,
}

pub const USER_AGENT: &str = concat!("hookline/", env!("CARGO_PKG_VERSION"));

/// Sends one attempt of delivery `webhook_id` and returns its record and the answer.
pub async fn attempt(
    client: &reqwest::Client,
    guard: &Guard,
    target: &Target,
    webhook_id: &str,
    body: Bytes,
    max_response_bytes: usize,
) -> (AttemptRecord, Option<Answer>) {
    let started_at = now_micros();
    let clock = Instant::now();
    let timestamp = started_at / 1_000_000;
    // A GET carries no body; its signature covers the empty body.
    let sent_body = if target.method == "get" {
        Bytes::new()
    } else {
        body
    };
    let secrets: Vec<&str> = target.secrets.iter().map(String::as_str).collect();
    let signature =
        signing::signature_header(&secrets, webhook_id, timestamp, &sent_body).unwrap_or_default();
    let mut request_headers = vec![
        ("content-type".to_owned(), "application/json".to_owned()),
        ("user-agent".to_owned(), USER_AGENT.to_owned()),
        ("webhook-id".to_owned(), webhook_id.to_owned()),
        ("webhook-timestamp".to_owned(), timestamp.to_string()),
        ("webhook-signature".to_owned(), signature),
    ];
    if target.method == "get" {
        request_headers.remove(0);
    }
    let mut record = AttemptRecord {
        started_at,
        duration_us: 0,
        request_headers: request_headers.clone(),
        request_body: String::from_utf8_lossy(&sent_body).into_owned(),
        response_status: None,
        response_headers: None,
        response_body: None,
        error_code: None,
        error_detail: None,
        succeeded: false,
    };
    let result = send(
        client,
        guard,
        target,
        &request_headers,
        sent_body,
        max_response_bytes,
    )
    .await;
    record.duration_us = clock.elapsed().as_micros().min(i64::MAX as u128) as i64;
    match result {
        Ok(response) => {
            record.response_status = Some(i64::from(response.status));
            record.response_headers = Some(response.headers);
            record.response_body = Some(String::from_utf8_lossy(&response.body).into_owned());
            if response.truncated {
                record.error_code = Some("body-too-large");
                record.error_detail = Some(format!(
                    "the response body was cut at {max_response_bytes} bytes"
                ));
            }
            record.succeeded = (200..300).contains(&response.status);
            let answer = Answer {
                status: response.status,
                retry_after: response.retry_after,
            };
            (record, Some(answer))
        }
        Err((code, detail)) => {
            record.error_code = Some(code);
            record.error_detail = Some(detail);
            (record, None)
        }
    }
}

/// The record of an attempt that sent nothing (`code` says why).
pub fn not_sent(code: &'static str, detail: String) -> AttemptRecord {
    AttemptRecord {
        started_at: now_micros(),
        duration_us: 0,
        request_headers: Vec::new(),
        request_body: String::new(),
        response_status: None,
        response_headers: None,
        response_body: None,
        error_code: Some(code),
        error_detail: Some(detail),
        succeeded: false,
    }
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    truncated: bool,
    retry_after: Option<Duration>,
}

async fn send(
    client: &reqwest::Client,
    guard: &Guard,
    target: &Target,
    headers: &[(String, String)],
    body: Bytes,
    max_response_bytes: usize,
) -> Result<Response, (&'static str, String)> {
    let url = reqwest::Url::parse(&target.url).map_err(|e| ("connect", format!("bad URL: {e}")))?;
    if let Some(ip) = literal_ip(&url) {
        guard.check(ip).map_err(|b| ("blocked", b.to_string()))?;
    }
    let method = match target.method.as_str() {
        "put" => reqwest::Method::PUT,
        "get" => reqwest::Method::GET,
        _ => reqwest::Method::POST,
    };
    let mut header_map = HeaderMap::new();
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (
            reqwest::header::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            header_map.insert(name, value);
        }
    }
    let mut request = client.request(method, url).headers(header_map);
    if !body.is_empty() {
        request = request.body(body);
    }
    let mut response = request.send().await.map_err(classify)?;
    let status = response.status().as_u16();
    let response_headers: Vec<(String, String)> = response
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    let mut collected = Vec::new();
    let mut truncated = false;
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = max_response_bytes.saturating_sub(collected.len());
                if chunk.len() > room {
                    collected.extend_from_slice(&chunk[..room]);
                    truncated = true;
                    break;
                }
                collected.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            // The status arrived; a body cut short does not change what it said.
            Err(_) => break,
        }
    }
    Ok(Response {
        status,
        headers: response_headers,
        body: collected,
        truncated,
        retry_after,
    })
}

/// `Retry-After`: seconds, or an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let secs = (when.timestamp() - chrono::Utc::now().timestamp()).max(0);
    Some(Duration::from_secs(secs as u64))
}

/// Names why a request got no answer: blocked, tls, dns, timeout or connect (in that order
/// of precedence, whatever the order of the causes in the chain).
fn classify(error: reqwest::Error) -> (&'static str, String) {
    let mut detail = error.to_string();
    let (mut blocked, mut tls, mut dns) = (false, false, false);
    let mut source = error.source();
    while let Some(e) = source {
        detail.push_str(": ");
        detail.push_str(&e.to_string());
        blocked |= e.downcast_ref::<Blocked>().is_some();
        tls |= is_tls(e);
        dns |= e.to_string().starts_with("dns error");
        source = e.source();
    }
    let code = if blocked {
        "blocked"
    } else if tls {
        "tls"
    } else if dns {
        "dns"
    } else if error.is_timeout() {
        "timeout"
    } else {
        "connect"
    };
    (code, detail)
}

/// Whether a cause is a TLS failure. `io::Error` hides what it wraps from `source()`, so
/// nested I/O errors are opened by hand.
fn is_tls(e: &(dyn std::error::Error + 'static)) -> bool {
    if e.downcast_ref::<rustls::Error>().is_some() {
        return true;
    }
    match e
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
    {
        Some(inner) => is_tls(inner),
        None => false,
    }
}

/// The HTTP client deliveries use: no redirects, no proxies, the guarded resolver, the
/// configured timeouts, and rustls with the ring provider.
pub fn client(
    guard: std::sync::Arc<Guard>,
    connect_timeout: Duration,
    timeout: Duration,
) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .dns_resolver(std::sync::Arc::new(super::guard::GuardedResolver(guard)))
        .connect_timeout(connect_timeout)
        .timeout(timeout)
        .pool_idle_timeout(Duration::from_secs(90))
        .user_agent(USER_AGENT)
        .build()
        .expect("the HTTP client builds with a default TLS provider installed")
}
