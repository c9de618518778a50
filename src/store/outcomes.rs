//! The payment processor's word on a transaction: its status moves, escrow follows, and
//! the change is announced, all in one transaction.

use serde_json::Value;
use sqlx::Row;

use super::ledger::{CAS_ROUNDS, add_to_order, announce, announce_order, claw_back};
use super::reads::txn_by_id;
use super::{Db, Refusal, Scope, StoreError, Tx, now_micros};
use crate::domain::input::Outcome;
use crate::domain::ledger::{Kind, Status};
use crate::domain::views::{self, TxnRow};

impl Db {
    /// Records the processor's outcome for a transaction of any marketplace. Reporting the
    /// status a transaction already has changes nothing and answers with it as it is.
    pub async fn record_outcome(&self, id: &str, outcome: Outcome) -> Result<Value, StoreError> {
        let not_found = || StoreError::NotFound {
            kind: "transaction",
            id: id.to_owned(),
        };
        let kind = Kind::of_id(id).ok_or_else(not_found)?;
        let mut tx = self.begin().await?;
        let now = now_micros();
        let mut rounds = 0;
        let current = loop {
            let current = txn_by_id(&mut *tx, &Scope::All, kind, id).await?;
            if current.status == outcome.status {
                return Ok(views::envelope(
                    kind.collection(),
                    vec![views::transaction(&current)],
                    None,
                ));
            }
            if !current.status.can_become(outcome.status) {
                return Err(Refusal::IllegalTransition {
                    kind: kind.as_str(),
                    from: current.status,
                    to: outcome.status,
                }
                .into());
            }
            // The row as it is once this update holds its lock: a refund committed meanwhile
            // has changed `amount_returned`, and escrow must follow the newest value.
            let changed = sqlx::query(
                "UPDATE transactions SET status = $1, failure_reason = $2, failure_reason_code = $3, \
                 version = version + 1, updated_at = $4 WHERE id = $5 AND status = $6 RETURNING amount_returned",
            )
            .bind(outcome.status.as_str())
            .bind(&outcome.failure_reason)
            .bind(&outcome.failure_reason_code)
            .bind(now)
            .bind(id)
            .bind(current.status.as_str())
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(row) = changed {
                break TxnRow {
                    amount_returned: row.try_get("amount_returned")?,
                    ..current
                };
            }
            rounds += 1;
            if rounds >= CAS_ROUNDS {
                return Err(StoreError::Contention("transaction"));
            }
        };
        let order_changed = apply_outcome(&mut tx, &current, outcome.status, now).await?;
        let updated = txn_by_id(&mut *tx, &Scope::All, kind, id).await?;
        let body = announce(
            &mut tx,
            &updated,
            &["updated", outcome.status.as_str()],
            now,
        )
        .await?;
        if let (true, Some(order_id)) = (order_changed, &current.order_id) {
            announce_order(&mut tx, order_id, "order.updated", now).await?;
        }
        self.commit(tx).await?;
        Ok(body)
    }
}

/// Moves escrow for a status change; returns whether the order changed.
async fn apply_outcome(
    tx: &mut Tx,
    before: &TxnRow,
    to: Status,
    now: i64,
) -> Result<bool, StoreError> {
    let amount = before.amount;
    // The parent is locked (a no-op update) before it is read, so its status cannot change
    // under this outcome: its own outcome and its other returns wait. Lock order is always
    // child, then parent, then order.
    if let Some(p) = &before.parent_id {
        sqlx::query("UPDATE transactions SET amount_returned = amount_returned WHERE id = $1")
            .bind(p)
            .execute(&mut **tx)
            .await?;
    }
    let parent = match &before.parent_id {
        Some(p) => Some(
            txn_by_id(
                &mut **tx,
                &Scope::All,
                before.kind.parent().expect("has parent"),
                p,
            )
            .await?,
        ),
        None => None,
    };
    // Once a debit or credit has failed, its whole remaining amount went back, so the
    // later fate of its refunds or reversals no longer moves escrow.
    let parent_live = parent.as_ref().is_none_or(|p| p.status != Status::Failed);
    if to == Status::Failed
        && let Some(p) = &parent
    {
        sqlx::query("UPDATE transactions SET amount_returned = amount_returned - $1 WHERE id = $2")
            .bind(amount)
            .bind(&p.id)
            .execute(&mut **tx)
            .await?;
    }
    let Some(order_id) = before.order_id.as_deref() else {
        return Ok(false);
    };
    match (before.kind, before.status, to) {
        (Kind::Debit, Status::Pending, Status::Succeeded) => {
            add_to_order(tx, order_id, amount, amount, now).await?
        }
        (Kind::Debit, Status::Succeeded, Status::Failed) => {
            let net = amount - before.amount_returned;
            claw_back(tx, order_id, net, net, now).await?
        }
        (Kind::Refund, _, Status::Failed) if parent_live => {
            add_to_order(tx, order_id, amount, amount, now).await?
        }
        (Kind::Credit, _, Status::Failed) => {
            let row = sqlx::query(
                "SELECT CAST(COALESCE(SUM(amount), 0) AS BIGINT) AS back FROM transactions WHERE parent_id = $1 AND status = 'succeeded'",
            )
            .bind(&before.id)
            .fetch_one(&mut **tx)
            .await?;
            let reversed: i64 = row.try_get("back")?;
            add_to_order(tx, order_id, 0, amount - reversed, now).await?
        }
        (Kind::Reversal, Status::Pending, Status::Succeeded) if parent_live => {
            add_to_order(tx, order_id, 0, amount, now).await?
        }
        (Kind::Reversal, Status::Succeeded, Status::Failed) if parent_live => {
            claw_back(tx, order_id, 0, amount, now).await?
        }
        _ => return Ok(false),
    }
    Ok(true)
}
