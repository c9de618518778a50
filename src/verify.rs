//! For receivers: check a delivery as it arrived. Pure, no server needed.
//!
//! ```
//! # use axum::http::HeaderMap;
//! # fn handle(headers: &HeaderMap, body: &[u8]) {
//! let now = std::time::SystemTime::now()
//!     .duration_since(std::time::UNIX_EPOCH)
//!     .map(|d| d.as_secs() as i64)
//!     .unwrap_or_default();
//! match hookline::verify::delivery("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", headers, body, now) {
//!     Ok(webhook_id) => { /* dedupe on webhook_id, then act */ }
//!     Err(refused) => { /* answer 401: {refused} */ }
//! }
//! # }
//! ```

use axum::http::HeaderMap;

pub use crate::signing::{TOLERANCE_SECS, VerifyError, verify};

/// Verifies a delivery from its `webhook-id`, `webhook-timestamp` and `webhook-signature`
/// headers and its raw body, at `now` (seconds since the epoch). Returns the `webhook-id`
/// to dedupe on.
pub fn delivery(
    secret: &str,
    headers: &HeaderMap,
    body: &[u8],
    now: i64,
) -> Result<String, VerifyError> {
    let header = |name: &'static str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .ok_or(VerifyError::MissingHeader(name))
    };
    let id = header("webhook-id")?;
    verify(
        secret,
        id,
        header("webhook-timestamp")?,
        header("webhook-signature")?,
        body,
        now,
    )?;
    Ok(id.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delivery_verifies_from_its_headers_and_a_missing_header_is_named() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = br#"{"test": 2432232314}"#;
        let mut headers = HeaderMap::new();
        headers.insert(
            "webhook-id",
            "msg_p5jXN8AQM9LWM0D4loKWxJek".parse().expect("value"),
        );
        headers.insert("webhook-timestamp", "1614265330".parse().expect("value"));
        assert_eq!(
            delivery(secret, &headers, body, 1614265330),
            Err(VerifyError::MissingHeader("webhook-signature"))
        );
        headers.insert(
            "webhook-signature",
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
                .parse()
                .expect("value"),
        );
        assert_eq!(
            delivery(secret, &headers, body, 1614265330).as_deref(),
            Ok("msg_p5jXN8AQM9LWM0D4loKWxJek")
        );
    }
}
