//! `PUT` on orders and transactions: description, meta (and an order's delivery address),
//! with optimistic locking on `version`.

use serde_json::Value;

use super::ledger::{CAS_ROUNDS, announce, announce_order};
use super::reads::{order_by_id, txn_by_id};
use super::{Db, Scope, StoreError, now_micros};
use crate::domain::input::Changes;
use crate::domain::ledger::Kind;

impl Db {
    /// `PUT` on an order: description, meta and delivery address. Returns the order and its
    /// new version.
    pub async fn update_order(
        &self,
        scope: &Scope,
        id: &str,
        changes: Changes,
    ) -> Result<(Value, i64), StoreError> {
        let mut tx = self.begin().await?;
        let now = now_micros();
        let mut rounds = 0;
        loop {
            let current = order_by_id(&mut *tx, scope, id).await?;
            check_version(&changes, current.version)?;
            let changed = sqlx::query(
                "UPDATE orders SET description = $1, meta = $2, delivery_address = $3, \
                 version = version + 1, updated_at = $4 WHERE id = $5 AND version = $6",
            )
            .bind(changes.description.clone().unwrap_or(current.description))
            .bind(super::meta_json(
                changes.meta.as_ref().unwrap_or(&current.meta),
            ))
            .bind(
                changes
                    .delivery_address
                    .as_ref()
                    .unwrap_or(&current.delivery_address)
                    .to_string(),
            )
            .bind(now)
            .bind(id)
            .bind(current.version)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if changed == 1 {
                break;
            }
            rounds += 1;
            if rounds >= CAS_ROUNDS {
                return Err(StoreError::Contention("order"));
            }
        }
        let body = announce_order(&mut tx, id, "order.updated", now).await?;
        let version = order_by_id(&mut *tx, &Scope::All, id).await?.version;
        self.commit(tx).await?;
        Ok((body, version))
    }

    /// `PUT` on a transaction: description and meta. Returns it and its new version.
    pub async fn update_transaction(
        &self,
        scope: &Scope,
        kind: Kind,
        id: &str,
        changes: Changes,
    ) -> Result<(Value, i64), StoreError> {
        let mut tx = self.begin().await?;
        let now = now_micros();
        let mut rounds = 0;
        loop {
            let current = txn_by_id(&mut *tx, scope, kind, id).await?;
            check_version(&changes, current.version)?;
            let changed = sqlx::query(
                "UPDATE transactions SET description = $1, meta = $2, version = version + 1, \
                 updated_at = $3 WHERE id = $4 AND version = $5",
            )
            .bind(changes.description.clone().unwrap_or(current.description))
            .bind(super::meta_json(
                changes.meta.as_ref().unwrap_or(&current.meta),
            ))
            .bind(now)
            .bind(id)
            .bind(current.version)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if changed == 1 {
                break;
            }
            rounds += 1;
            if rounds >= CAS_ROUNDS {
                return Err(StoreError::Contention("transaction"));
            }
        }
        let updated = txn_by_id(&mut *tx, &Scope::All, kind, id).await?;
        let body = announce(&mut tx, &updated, &["updated"], now).await?;
        self.commit(tx).await?;
        Ok((body, updated.version))
    }
}

fn check_version(changes: &Changes, current: i64) -> Result<(), StoreError> {
    match changes.version {
        Some(given) if given != current => Err(StoreError::StaleVersion { given, current }),
        _ => Ok(()),
    }
}
