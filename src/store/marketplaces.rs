//! Marketplaces (tenants) and their API secrets.

use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::Row;

use super::{Db, StoreError, now_micros};
use crate::domain::ids;

#[derive(Debug, Clone, serde::Serialize)]
pub struct Marketplace {
    pub id: String,
    pub name: String,
}

/// SHA-256 of a secret, hex. Secrets are 256 random bits, so a plain hash is enough to
/// make a leaked table useless (no dictionary to try).
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("hlsk_{}", hex::encode(bytes))
}

impl Db {
    /// Creates a marketplace and returns it with its API secret, which is not stored and
    /// cannot be shown again.
    pub async fn create_marketplace(
        &self,
        name: &str,
    ) -> Result<(Marketplace, String), StoreError> {
        let id = ids::new_id(ids::MARKETPLACE);
        let secret = new_secret();
        sqlx::query(
            "INSERT INTO marketplaces (id, name, secret_hash, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(&id)
        .bind(name)
        .bind(hash_secret(&secret))
        .bind(now_micros())
        .execute(&mut *self.write_conn().await?)
        .await?;
        Ok((
            Marketplace {
                id,
                name: name.to_owned(),
            },
            secret,
        ))
    }

    /// The marketplace whose secret this is, if any.
    pub async fn marketplace_by_secret(
        &self,
        secret: &str,
    ) -> Result<Option<Marketplace>, StoreError> {
        let row = sqlx::query("SELECT id, name FROM marketplaces WHERE secret_hash = $1")
            .bind(hash_secret(secret))
            .fetch_optional(self.reader())
            .await?;
        Ok(row
            .map(|r| -> Result<Marketplace, sqlx::Error> {
                Ok(Marketplace {
                    id: r.try_get("id")?,
                    name: r.try_get("name")?,
                })
            })
            .transpose()?)
    }

    pub async fn marketplaces(&self) -> Result<Vec<Marketplace>, StoreError> {
        let rows = sqlx::query("SELECT id, name FROM marketplaces ORDER BY id")
            .fetch_all(self.reader())
            .await?;
        Ok(rows
            .iter()
            .map(|r| {
                Ok(Marketplace {
                    id: r.try_get("id")?,
                    name: r.try_get("name")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()?)
    }

    pub(super) async fn marketplace_name(
        &self,
        tx: &mut super::Tx,
        id: &str,
    ) -> Result<String, StoreError> {
        let row = sqlx::query("SELECT name FROM marketplaces WHERE id = $1")
            .bind(id)
            .fetch_one(&mut **tx)
            .await?;
        Ok(row.try_get("name")?)
    }
}
