//! `Idempotency-Key`: a create repeated with the same key returns the first response.
//!
//! The key is reserved first in the create's own transaction and its response saved in the
//! same transaction, so either both are there or neither is. Two requests racing with one
//! key: the second waits on the key until the first commits, then answers with its
//! response (and never runs the money checks against the first one's effects).

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
        .fetch_optional(&mut *self.write_conn().await?)
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

    /// Starts a create: opens its transaction and, with a key, reserves the key in it
    /// first. A request repeating a committed key gets the original response (`Err`); one
    /// racing an uncommitted request with the same key waits for it (on the key's unique
    /// index), then replays its response, or goes ahead if it rolled back.
    pub(super) async fn begin_create(
        &self,
        marketplace: &str,
        key: Option<&IdempotencyKey>,
    ) -> Result<Result<Tx, Value>, StoreError> {
        if let Some(body) = self.replay(marketplace, key).await? {
            return Ok(Err(body));
        }
        let mut tx = self.begin().await?;
        let Some(k) = key else { return Ok(Ok(tx)) };
        let reserved = sqlx::query(
            "INSERT INTO idempotency_keys (marketplace_id, key, request_hash, status, body, created_at) \
             VALUES ($1, $2, $3, 201, '', $4)",
        )
        .bind(marketplace)
        .bind(&k.key)
        .bind(&k.request_hash)
        .bind(now_micros())
        .execute(&mut *tx)
        .await;
        match reserved {
            Ok(_) => Ok(Ok(tx)),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                tx.rollback().await?;
                match self.replay(marketplace, key).await? {
                    Some(body) => Ok(Err(body)),
                    None => Err(StoreError::IdempotencyMismatch(k.key.clone())),
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Stores the response under the key reserved by [`Db::begin_create`] and commits.
    pub(super) async fn commit_created(
        &self,
        mut tx: Tx,
        marketplace: &str,
        key: Option<&IdempotencyKey>,
        body: Value,
    ) -> Result<Value, StoreError> {
        if let Some(k) = key {
            sqlx::query(
                "UPDATE idempotency_keys SET body = $1 WHERE marketplace_id = $2 AND key = $3",
            )
            .bind(body.to_string())
            .bind(marketplace)
            .bind(&k.key)
            .execute(&mut *tx)
            .await?;
        }
        self.commit(tx).await?;
        Ok(body)
    }
}
