//! Creating orders and transactions, and the pieces every ledger unit of work shares:
//! escrow moves and announcing changes through the outbox, in the same transaction.
//! Processor outcomes are in `outcomes.rs`, `PUT` updates in `updates.rs`.
//!
//! Escrow rules (amounts in an order's `amount_escrowed`): money out (refunds, credits) is
//! taken when the transaction is created, and refused if escrow does not hold it; money in
//! (debits, reversals) arrives when it succeeds. A failure gives back what its transaction
//! moved. A failure after success that escrow can no longer cover (the money was paid out
//! meanwhile) takes escrow to zero and records the rest as the order's `escrow_shortfall`.

use serde_json::Value;
use sqlx::Row;

use super::outbox::{self, NewEvent};
use super::reads::{order_by_id, txn_by_id};
use super::{Db, IdempotencyKey, Refusal, Scope, StoreError, Tx, now_micros};
use crate::domain::ids;
use crate::domain::input::{NewOrder, NewReturn, NewTransfer};
use crate::domain::ledger::{Instrument, Kind, Status};
use crate::domain::views::{self, OrderRow, TxnRow};

/// How many times a compare-and-set is retried when a concurrent writer got there first.
/// Each retry means another request changed the same row, so this bounds contention, not
/// correctness: the loser of too many rounds gets an error rather than a wrong answer.
pub(super) const CAS_ROUNDS: usize = 64;

impl Db {
    pub async fn create_order(
        &self,
        marketplace: &str,
        new: NewOrder,
        key: Option<&IdempotencyKey>,
    ) -> Result<Value, StoreError> {
        let mut tx = match self.begin_create(marketplace, key).await? {
            Ok(tx) => tx,
            Err(original) => return Ok(original),
        };
        let now = now_micros();
        let id = ids::new_id(ids::ORDER);
        sqlx::query(
            "INSERT INTO orders (id, marketplace_id, merchant, description, meta, delivery_address, \
             created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
        )
        .bind(&id)
        .bind(marketplace)
        .bind(&new.merchant)
        .bind(&new.annotations.description)
        .bind(super::meta_json(&new.annotations.meta))
        .bind(new.delivery_address.to_string())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let body = announce_order(&mut tx, &id, "order.created", now).await?;
        self.commit_created(tx, marketplace, key, body).await
    }

    /// Creates a debit (from a source) or a credit (to a destination, out of an order's
    /// escrow). Card transfers settle at once; bank account transfers stay pending.
    pub async fn create_transfer(
        &self,
        marketplace: &str,
        kind: Kind,
        new: NewTransfer,
        key: Option<&IdempotencyKey>,
    ) -> Result<Value, StoreError> {
        debug_assert!(matches!(kind, Kind::Debit | Kind::Credit));
        let mut tx = match self.begin_create(marketplace, key).await? {
            Ok(tx) => tx,
            Err(original) => return Ok(original),
        };
        let now = now_micros();
        let scope = Scope::Marketplace(marketplace.to_owned());
        let order = match &new.order {
            Some(id) => Some(referenced_order(&mut tx, &scope, id).await?),
            None => None,
        };
        let amount = new.amount.cents();
        if kind == Kind::Credit {
            let order = order
                .as_ref()
                .expect("credits are validated to have an order");
            if !take_from_order(&mut tx, &order.id, 0, amount, now).await? {
                let escrowed = order_by_id(&mut *tx, &Scope::All, &order.id)
                    .await?
                    .amount_escrowed;
                return Err(Refusal::InsufficientFunds {
                    escrowed,
                    amount,
                    kind: "credit",
                }
                .into());
            }
        }
        let settled = new.instrument.settles_at_once();
        let statement = match new.appears_on_statement_as {
            Some(s) => s,
            None => default_statement(
                &self.marketplace_name(&mut tx, marketplace).await?,
                kind,
                &new.instrument,
            ),
        };
        let row = NewRow {
            kind,
            marketplace,
            order_id: new.order.as_deref(),
            parent_id: None,
            instrument: Some(new.instrument.id()),
            amount,
            status: if settled {
                Status::Succeeded
            } else {
                Status::Pending
            },
            statement: Some(&statement),
            description: new
                .annotations
                .description
                .as_deref()
                .or(order.as_ref().and_then(|o| o.description.as_deref())),
            meta: &new.annotations.meta,
            now,
        };
        let id = insert_transaction(&mut tx, &row).await?;
        if kind == Kind::Debit
            && settled
            && let Some(order) = &order
        {
            add_to_order(&mut tx, &order.id, amount, amount, now).await?;
        }
        let body = announce_created(&mut tx, &id, kind, settled, now).await?;
        if let Some(order) = &order
            && (settled || kind == Kind::Credit)
        {
            announce_order(&mut tx, &order.id, "order.updated", now).await?;
        }
        self.commit_created(tx, marketplace, key, body).await
    }

    /// Creates a refund (of a debit) or a reversal (of a credit). The amount defaults to
    /// what is left; the returns of one transaction never sum past it.
    pub async fn create_return(
        &self,
        marketplace: &str,
        kind: Kind,
        new: NewReturn,
        key: Option<&IdempotencyKey>,
    ) -> Result<Value, StoreError> {
        let mut tx = match self.begin_create(marketplace, key).await? {
            Ok(tx) => tx,
            Err(original) => return Ok(original),
        };
        let now = now_micros();
        let scope = Scope::Marketplace(marketplace.to_owned());
        let (parent, amount) = reserve_return(&mut tx, &scope, kind, &new).await?;
        if kind == Kind::Refund
            && let Some(order_id) = &parent.order_id
            && !take_from_order(&mut tx, order_id, amount, amount, now).await?
        {
            let escrowed = order_by_id(&mut *tx, &Scope::All, order_id)
                .await?
                .amount_escrowed;
            return Err(Refusal::InsufficientFunds {
                escrowed,
                amount,
                kind: "refund",
            }
            .into());
        }
        let instrument = Instrument::from_stored(parent.instrument.clone().unwrap_or_default());
        let settled = instrument.settles_at_once();
        let row = NewRow {
            kind,
            marketplace,
            order_id: parent.order_id.as_deref(),
            parent_id: Some(&parent.id),
            instrument: None,
            amount,
            status: if settled {
                Status::Succeeded
            } else {
                Status::Pending
            },
            statement: None,
            description: new.annotations.description.as_deref(),
            meta: &new.annotations.meta,
            now,
        };
        let id = insert_transaction(&mut tx, &row).await?;
        if kind == Kind::Reversal
            && settled
            && let Some(order_id) = &parent.order_id
        {
            add_to_order(&mut tx, order_id, 0, amount, now).await?;
        }
        let body = announce_created(&mut tx, &id, kind, settled, now).await?;
        if let Some(order_id) = &parent.order_id
            && (kind == Kind::Refund || settled)
        {
            announce_order(&mut tx, order_id, "order.updated", now).await?;
        }
        self.commit_created(tx, marketplace, key, body).await
    }
}

/// An order named in a request body; an unknown one is the request's fault (400), not a
/// missing page (404).
async fn referenced_order(tx: &mut Tx, scope: &Scope, id: &str) -> Result<OrderRow, StoreError> {
    match order_by_id(&mut **tx, scope, id).await {
        Err(StoreError::NotFound { .. }) => Err(StoreError::UnknownReference {
            field: "order",
            id: id.to_owned(),
        }),
        other => other,
    }
}

/// Checks the money rules for a refund or reversal and reserves its amount on the parent
/// with a compare-and-set, so concurrent returns can never sum past the parent.
async fn reserve_return(
    tx: &mut Tx,
    scope: &Scope,
    kind: Kind,
    new: &NewReturn,
) -> Result<(TxnRow, i64), StoreError> {
    let parent_kind = kind.parent().expect("returns have parents");
    for _ in 0..CAS_ROUNDS {
        let parent = txn_by_id(&mut **tx, scope, parent_kind, &new.parent).await?;
        if parent.status != Status::Succeeded {
            return Err(match kind {
                Kind::Refund => Refusal::RefundInvalidDebitState(parent.status),
                _ => Refusal::CannotReverseCredit(parent.status),
            }
            .into());
        }
        let remaining = parent.amount - parent.amount_returned;
        if remaining == 0 {
            return Err(match kind {
                Kind::Refund => Refusal::DebitAlreadyRefunded,
                _ => Refusal::CreditAlreadyReversed,
            }
            .into());
        }
        let amount = new.amount.map_or(remaining, |a| a.cents());
        if amount > remaining {
            return Err(match kind {
                Kind::Refund => Refusal::RefundTooLarge { remaining },
                _ => Refusal::ReversalTooLarge { remaining },
            }
            .into());
        }
        let reserved = sqlx::query(
            "UPDATE transactions SET amount_returned = amount_returned + $1 \
             WHERE id = $2 AND status = 'succeeded' AND amount_returned = $3",
        )
        .bind(amount)
        .bind(&parent.id)
        .bind(parent.amount_returned)
        .execute(&mut **tx)
        .await?
        .rows_affected();
        if reserved == 1 {
            return Ok((parent, amount));
        }
    }
    Err(StoreError::Contention("transaction"))
}

/// Raises an order's amount and escrow.
pub(super) async fn add_to_order(
    tx: &mut Tx,
    order_id: &str,
    amount: i64,
    escrow: i64,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE orders SET amount = amount + $1, amount_escrowed = amount_escrowed + $2, \
         version = version + 1, updated_at = $3 WHERE id = $4",
    )
    .bind(amount)
    .bind(escrow)
    .bind(now)
    .bind(order_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Lowers an order's amount and escrow if escrow holds enough; false (and nothing
/// changed) if it does not.
pub(super) async fn take_from_order(
    tx: &mut Tx,
    order_id: &str,
    amount: i64,
    escrow: i64,
    now: i64,
) -> Result<bool, StoreError> {
    let taken = sqlx::query(
        "UPDATE orders SET amount = amount - $1, amount_escrowed = amount_escrowed - $2, \
         version = version + 1, updated_at = $3 WHERE id = $4 AND amount_escrowed >= $2",
    )
    .bind(amount)
    .bind(escrow)
    .bind(now)
    .bind(order_id)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(taken == 1)
}

/// A late failure takes money back out of an order: escrow floors at zero, and what it
/// could not cover is added to `escrow_shortfall` so it is never silently lost.
pub(super) async fn claw_back(
    tx: &mut Tx,
    order_id: &str,
    amount: i64,
    escrow: i64,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE orders SET amount = amount - $1, \
         amount_escrowed = CASE WHEN amount_escrowed >= $2 THEN amount_escrowed - $2 ELSE 0 END, \
         escrow_shortfall = escrow_shortfall + CASE WHEN amount_escrowed >= $2 THEN 0 ELSE $2 - amount_escrowed END, \
         version = version + 1, updated_at = $3 WHERE id = $4",
    )
    .bind(amount)
    .bind(escrow)
    .bind(now)
    .bind(order_id)
    .execute(&mut **tx)
    .await?;
    let row = sqlx::query("SELECT escrow_shortfall FROM orders WHERE id = $1")
        .bind(order_id)
        .fetch_one(&mut **tx)
        .await?;
    let shortfall: i64 = row.try_get("escrow_shortfall")?;
    if shortfall > 0 {
        tracing::warn!(
            order = order_id,
            shortfall,
            "a late failure left the order's escrow short"
        );
    }
    Ok(())
}

struct NewRow<'a> {
    kind: Kind,
    marketplace: &'a str,
    order_id: Option<&'a str>,
    parent_id: Option<&'a str>,
    instrument: Option<&'a str>,
    amount: i64,
    status: Status,
    statement: Option<&'a str>,
    description: Option<&'a str>,
    meta: &'a crate::domain::input::Meta,
    now: i64,
}

async fn insert_transaction(tx: &mut Tx, row: &NewRow<'_>) -> Result<String, StoreError> {
    let id = ids::new_id(row.kind.id_prefix());
    sqlx::query(
        "INSERT INTO transactions (id, kind, marketplace_id, order_id, parent_id, instrument, amount, \
         status, appears_on_statement_as, transaction_number, description, meta, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $13)",
    )
    .bind(&id)
    .bind(row.kind.as_str())
    .bind(row.marketplace)
    .bind(row.order_id)
    .bind(row.parent_id)
    .bind(row.instrument)
    .bind(row.amount)
    .bind(row.status.as_str())
    .bind(row.statement)
    .bind(ids::transaction_number(row.kind.number_prefix()))
    .bind(row.description)
    .bind(super::meta_json(row.meta))
    .bind(row.now)
    .execute(&mut **tx)
    .await?;
    Ok(id)
}

/// `<kind>.created`, and for one that settled at once `<kind>.updated` and
/// `<kind>.succeeded` too (as Balanced sent for card debits). Returns the resource.
async fn announce_created(
    tx: &mut Tx,
    id: &str,
    kind: Kind,
    settled: bool,
    now: i64,
) -> Result<Value, StoreError> {
    let row = txn_by_id(&mut **tx, &Scope::All, kind, id).await?;
    let types: &[&str] = if settled {
        &["created", "updated", "succeeded"]
    } else {
        &["created"]
    };
    announce(tx, &row, types, now).await
}

/// Writes `<kind>.<suffix>` events for a transaction, all with one `occurred_at`, and
/// returns the resource in envelope form.
pub(super) async fn announce(
    tx: &mut Tx,
    row: &TxnRow,
    suffixes: &[&str],
    now: i64,
) -> Result<Value, StoreError> {
    let body = views::envelope(row.kind.collection(), vec![views::transaction(row)], None);
    for suffix in suffixes {
        let event_type = format!("{}.{suffix}", row.kind.as_str());
        outbox::append(
            tx,
            NewEvent {
                marketplace_id: &row.marketplace_id,
                event_type: &event_type,
                entity_id: &row.id,
                entity: &body,
                occurred_at: now,
            },
        )
        .await?;
    }
    Ok(body)
}

/// Writes an `order.*` event with the order as it now stands, and returns it.
pub(super) async fn announce_order(
    tx: &mut Tx,
    id: &str,
    event_type: &str,
    now: i64,
) -> Result<Value, StoreError> {
    let order = order_by_id(&mut **tx, &Scope::All, id).await?;
    let body = views::envelope("orders", vec![views::order(&order)], None);
    outbox::append(
        tx,
        NewEvent {
            marketplace_id: &order.marketplace_id,
            event_type,
            entity_id: id,
            entity: &body,
            occurred_at: now,
        },
    )
    .await?;
    Ok(body)
}

/// What a statement shows when the request does not say: the marketplace's name in the
/// characters statements allow, with Balanced's `BAL*` prefix on card debits.
fn default_statement(marketplace_name: &str, kind: Kind, instrument: &Instrument) -> String {
    let clean: String = marketplace_name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || " .-".contains(*c))
        .take(crate::domain::input::MAX_STATEMENT)
        .collect();
    let clean = if clean.trim().is_empty() {
        "hookline".to_owned()
    } else {
        clean
    };
    if kind == Kind::Debit && instrument.settles_at_once() {
        format!("BAL*{clean}")
    } else {
        clean
    }
}
