//! Signing and verifying deliveries, per Standard Webhooks v1. Pure functions, no I/O.
//!
//! `signature = base64(HMAC-SHA256(key, "{webhook-id}.{webhook-timestamp}.{body}"))`, where
//! the key is the secret without its `whsec_` prefix, base64-decoded. The
//! `webhook-signature` header lists `v1,<signature>` once per active secret.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit, Mac};
use rand::RngCore;
use sha2::Sha256;

/// Timestamps further than this from now (either way) are refused by [`verify`].
pub const TOLERANCE_SECS: i64 = 5 * 60;

const PREFIX: &str = "whsec_";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the {0} header is missing")]
    MissingHeader(&'static str),
    #[error("the secret is not a whsec_ secret with a base64 key")]
    InvalidSecret,
    #[error("webhook-timestamp is not a whole number of seconds")]
    InvalidTimestamp,
    #[error("webhook-timestamp is more than 5 minutes in the past")]
    TimestampTooOld,
    #[error("webhook-timestamp is more than 5 minutes in the future")]
    TimestampTooNew,
    #[error("no v1 signature in webhook-signature matches")]
    NoMatchingSignature,
}

/// A new secret: `whsec_` and 32 random bytes in base64.
pub fn generate_secret() -> String {
    let mut key = [0u8; 32];
    rand::rng().fill_bytes(&mut key);
    format!("{PREFIX}{}", BASE64.encode(key))
}

fn key(secret: &str) -> Result<Vec<u8>, VerifyError> {
    let encoded = secret.strip_prefix(PREFIX).unwrap_or(secret);
    BASE64
        .decode(encoded)
        .map_err(|_| VerifyError::InvalidSecret)
}

fn mac(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// One `v1,<base64>` signature.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Result<String, VerifyError> {
    let tag = mac(&key(secret)?, id, timestamp, body)
        .finalize()
        .into_bytes();
    Ok(format!("v1,{}", BASE64.encode(tag)))
}

/// The `webhook-signature` header value: one signature per secret, space-separated.
pub fn signature_header(
    secrets: &[&str],
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> Result<String, VerifyError> {
    let signatures = secrets
        .iter()
        .map(|s| sign(s, id, timestamp, body))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(signatures.join(" "))
}

/// Checks a delivery as a receiver must: the timestamp within [`TOLERANCE_SECS`] of `now`
/// (seconds since the epoch), and one `v1` signature over the raw body matching, compared
/// in constant time. Other versions in the header are skipped.
pub fn verify(
    secret: &str,
    id: &str,
    timestamp: &str,
    signature_header: &str,
    body: &[u8],
    now: i64,
) -> Result<(), VerifyError> {
    let key = key(secret)?;
    let ts: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| VerifyError::InvalidTimestamp)?;
    if ts < now - TOLERANCE_SECS {
        return Err(VerifyError::TimestampTooOld);
    }
    if ts > now + TOLERANCE_SECS {
        return Err(VerifyError::TimestampTooNew);
    }
    let expected = mac(&key, id, ts, body);
    let matched = signature_header
        .split_whitespace()
        .filter_map(|entry| entry.strip_prefix("v1,"))
        .filter_map(|sig| BASE64.decode(sig).ok())
        .any(|sig| expected.clone().verify_slice(&sig).is_ok());
    if matched {
        Ok(())
    } else {
        Err(VerifyError::NoMatchingSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The two vectors of the Standard Webhooks libraries' own tests.
    const VECTORS: [(&str, &str, i64, &str, &str); 2] = [
        (
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            r#"{"test": 2432232314}"#,
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
        ),
        (
            "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
            "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
            1649367553,
            r#"{"email":"test@example.com","username":"test_user"}"#,
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=",
        ),
    ];

    #[test]
    fn signing_reproduces_the_known_vectors() {
        for (secret, id, ts, body, signature) in VECTORS {
            assert_eq!(
                sign(secret, id, ts, body.as_bytes()).as_deref(),
                Ok(signature)
            );
        }
    }

    #[test]
    fn the_known_vectors_verify_and_tampering_does_not() {
        for (secret, id, ts, body, signature) in VECTORS {
            let ts_text = ts.to_string();
            assert_eq!(
                verify(secret, id, &ts_text, signature, body.as_bytes(), ts),
                Ok(())
            );
            let tampered = format!("{body} ");
            assert_eq!(
                verify(secret, id, &ts_text, signature, tampered.as_bytes(), ts),
                Err(VerifyError::NoMatchingSignature)
            );
            assert_eq!(
                verify(
                    secret,
                    "msg_other",
                    &ts_text,
                    signature,
                    body.as_bytes(),
                    ts
                ),
                Err(VerifyError::NoMatchingSignature)
            );
        }
    }

    #[test]
    fn timestamps_beyond_five_minutes_are_refused_either_way() {
        let (secret, id, ts, body, signature) = VECTORS[0];
        let ts_text = ts.to_string();
        assert_eq!(
            verify(secret, id, &ts_text, signature, body.as_bytes(), ts + 301),
            Err(VerifyError::TimestampTooOld)
        );
        assert_eq!(
            verify(secret, id, &ts_text, signature, body.as_bytes(), ts - 301),
            Err(VerifyError::TimestampTooNew)
        );
        assert_eq!(
            verify(secret, id, &ts_text, signature, body.as_bytes(), ts + 300),
            Ok(())
        );
        assert_eq!(
            verify(secret, id, "soon", signature, body.as_bytes(), ts),
            Err(VerifyError::InvalidTimestamp)
        );
    }

    #[test]
    fn any_one_of_several_signatures_suffices_and_unknown_versions_are_skipped() {
        let (secret, id, ts, body, _) = VECTORS[0];
        let old = generate_secret();
        let header = signature_header(&[&old, secret], id, ts, body.as_bytes()).expect("sign");
        let header = format!("v2,abc {header}");
        assert_eq!(header.split(' ').count(), 3);
        assert_eq!(
            verify(secret, id, &ts.to_string(), &header, body.as_bytes(), ts),
            Ok(())
        );
        assert_eq!(
            verify(&old, id, &ts.to_string(), &header, body.as_bytes(), ts),
            Ok(())
        );
        assert_eq!(
            verify(
                &generate_secret(),
                id,
                &ts.to_string(),
                &header,
                body.as_bytes(),
                ts
            ),
            Err(VerifyError::NoMatchingSignature)
        );
    }
}
