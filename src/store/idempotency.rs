//! `Idempotency-Key`: a create repeated with the same key returns the first response.
//!
//! The key is saved in the same transaction as what the create wrote, so either both are
//! there or neither is. Two requests racing with one key: the loser's insert of the key
//! conflicts, its transaction rolls back, and it answers with the winner's response.

use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::Row;

use super::{Db, StoreError, Tx, now_micros};

#[derive(Debug, Clone)]
pub struct IdempotencyKey {
    pub key: String,
    /// A hash of what the request asked for (method, path, body).
    pub request_hash: String,
}

impl IdempotencyKey {
    pub fn new(key: &str, method: &str, path: &str, body: &[u8]) -> Self {
        let mut h = Sha256::new();
        h.update(method.as_bytes());
        h.update(b" ");
        h.update(path.as_bytes());
        h.update(b"\n");
        h.update(body);
        Self {
            key: key.to_owned(),
            request_hash: hex::encode(h.finalize()),
        }
    }
}

impl Db {
    /// The stored response for this key, if the key was used before with the same request.
    pub(super) async fn replay(
        &self,
        marketplace: &str,
        key: Option<&IdempotencyKey>,
    ) -> Result<Option<Value>, StoreError> {
        let Some(key) = key else { return Ok(None) };
        let row = sqlx::query(
            "SELECT request_hash, body FROM idempotency_keys WHERE marketplace_id = $1 AND key = $2",
        )
        .bind(marketplace)
        .bind(&key.key)
        .fetch_optional(self.writer())
        .await?;
        let Some(row) = row else { return Ok(None) };
        let hash: String = row.try_get("request_hash")?;
        if hash != key.request_hash {
            return Err(StoreError::IdempotencyMismatch(key.key.clone()));
        }
        let body: String = row.try_get("body")?;
        Ok(Some(
            serde_json::from_str(&body).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
        ))
    }

    /// Saves the key with the response and commits. If another request committed the same
    /// key first, this one's work is rolled back and the other's response returned.
    pub(super) async fn commit_created(
        &self,
        mut tx: Tx,
        marketplace: &str,
        key: Option<&IdempotencyKey>,
        body: Value,
    ) -> Result<Value, StoreError> {
        if let Some(k) = key {
            let saved = sqlx::query(
                "INSERT INTO idempotency_keys (marketplace_id, key, request_hash, status, body, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(marketplace)
            .bind(&k.key)
            .bind(&k.request_hash)
            .bind(201_i64)
            .bind(body.to_string())
            .bind(now_micros())
            .execute(&mut *tx)
            .await;
            match saved {
                Ok(_) => {}
                Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                    tx.rollback().await?;
                    return self
                        .replay(marketplace, key)
                        .await?
                        .ok_or_else(|| StoreError::IdempotencyMismatch(k.key.clone()));
                }
                Err(e) => return Err(e.into()),
            }
        }
        self.commit(tx).await?;
        Ok(body)
    }
}
