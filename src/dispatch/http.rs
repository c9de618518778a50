//! One delivery attempt over HTTP: build and sign the request, send it outside any database
//! transaction, read the answer up to a cap, and name what went wrong if there was no
//! answer.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::client::{Client, Request};
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
    client: &Client,
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
    let request = Request {
        method: &target.method,
        url: &target.url,
        head_fields: &request_headers,
        body: &sent_body,
    };
    let result = client.send(&request, max_response_bytes).await;
    // Built once the answer is in: while thousands of attempts wait, none holds a copy
    // of what it sent.
    let mut record = AttemptRecord {
        started_at,
        duration_us: clock.elapsed().as_micros().min(i64::MAX as u128) as i64,
        request_body: String::from_utf8_lossy(&sent_body).into_owned(),
        request_headers,
        response_status: None,
        response_headers: None,
        response_body: None,
        error_code: None,
        error_detail: None,
        succeeded: false,
    };
    match result {
        Ok(response) => {
            let retry_after = response
                .headers
                .iter()
                .find(|(name, _)| name == "retry-after")
                .and_then(|(_, value)| parse_retry_after(value));
            record.response_status = Some(i64::from(response.status));
            record.response_headers = Some(response.headers);
            record.response_body = Some(loggable(&response.body));
            if response.truncated {
                record.error_code = Some("body-too-large");
                record.error_detail = Some(format!(
                    "the response body was cut at {max_response_bytes} bytes"
                ));
            }
            record.succeeded = (200..300).contains(&response.status);
            let answer = Answer {
                status: response.status,
                retry_after,
            };
            (record, Some(answer))
        }
        Err(failed) => {
            record.error_code = Some(failed.code);
            record.error_detail = Some(failed.detail);
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

/// A receiver's body as the attempt log keeps it: text, with U+FFFD for each byte sequence
/// that is not UTF-8 and for each NUL (which PostgreSQL's text cannot hold: an attempt with
/// one would be refused, and missing from the log).
fn loggable(body: &[u8]) -> String {
    String::from_utf8_lossy(body).replace('\0', "\u{fffd}")
}
