//! Callbacks: registration, filters, secrets and their rotation.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::reads::{Page, PageOf};
use super::{Db, Scope, StoreError, Tx, now_micros};
use crate::domain::callbacks::{CallbackChanges, NewCallback};
use crate::domain::ids;
use crate::domain::views::CallbackRow;
use crate::signing;

pub const CALLBACK: &str = "CB";

macro_rules! callback_columns {
    () => {
        "id, marketplace_id, url, method, revision, CAST(enabled AS INTEGER) AS enabled, disabled_reason, \
         created_at, updated_at"
    };
}

async fn decode(tx: &mut Tx, row: &AnyRow) -> Result<CallbackRow, StoreError> {
    let id: String = row.try_get("id")?;
    Ok(CallbackRow {
        event_types: event_types(tx, &id).await?,
        id,
        marketplace_id: row.try_get("marketplace_id")?,
        url: row.try_get("url")?,
        method: row.try_get("method")?,
        revision: row.try_get("revision")?,
        enabled: row.try_get::<i64, _>("enabled")? != 0,
        disabled_reason: row.try_get("disabled_reason")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

async fn event_types(tx: &mut Tx, id: &str) -> Result<Vec<String>, StoreError> {
    let rows = sqlx::query(
        "SELECT event_type FROM callback_event_types WHERE callback_id = $1 ORDER BY event_type",
    )
    .bind(id)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .iter()
        .map(|r| r.try_get("event_type"))
        .collect::<Result<_, _>>()?)
}

async fn set_event_types(tx: &mut Tx, id: &str, types: &[String]) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM callback_event_types WHERE callback_id = $1")
        .bind(id)
        .execute(&mut **tx)
        .await?;
    for t in types {
        sqlx::query("INSERT INTO callback_event_types (callback_id, event_type) VALUES ($1, $2)")
            .bind(id)
            .bind(t)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

async fn fetch(tx: &mut Tx, scope: &Scope, id: &str) -> Result<CallbackRow, StoreError> {
    let row = sqlx::query(concat!(
        "SELECT ",
        callback_columns!(),
        " FROM callbacks WHERE id = $1 AND deleted_at IS NULL AND marketplace_id = COALESCE($2, marketplace_id)"
    ))
    .bind(id)
    .bind(scope.marketplace())
    .fetch_optional(&mut **tx)
    .await?;
    match row {
        Some(row) => decode(tx, &row).await,
        None => Err(StoreError::NotFound {
            kind: "callback",
            id: id.to_owned(),
        }),
    }
}

impl Db {
    /// Registers a callback; returns it with its signing secret (shown only now).
    pub async fn create_callback(
        &self,
        marketplace: &str,
        new: NewCallback,
    ) -> Result<(CallbackRow, String), StoreError> {
        let mut tx = self.begin().await?;
        let id = ids::new_id(CALLBACK);
        let secret = signing::generate_secret();
        let now = now_micros();
        let inserted = sqlx::query(
            "INSERT INTO callbacks (id, marketplace_id, url, method, revision, enabled, secret, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)",
        )
        .bind(&id)
        .bind(marketplace)
        .bind(new.url.as_str())
        .bind(new.method.as_str())
        .bind(&new.revision)
        .bind(new.enabled)
        .bind(&secret)
        .bind(now)
        .execute(&mut *tx)
        .await;
        match inserted {
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                return Err(StoreError::DuplicateCallback {
                    url: new.url.as_str().to_owned(),
                    method: new.method.as_str(),
                });
            }
            other => {
                other?;
            }
        }
        set_event_types(&mut tx, &id, &new.event_types).await?;
        let row = fetch(&mut tx, &Scope::All, &id).await?;
        tx.commit().await?;
        Ok((row, secret))
    }

    pub async fn callback(&self, scope: &Scope, id: &str) -> Result<CallbackRow, StoreError> {
        let mut tx = self.read.begin().await?;
        fetch(&mut tx, scope, id).await
    }

    pub async fn callbacks(
        &self,
        scope: &Scope,
        page: &Page,
    ) -> Result<PageOf<CallbackRow>, StoreError> {
        let mut filters = vec![];
        if let Some(m) = scope.marketplace() {
            filters.push(("marketplace_id", super::reads::Arg::Text(m.to_owned())));
        }
        let page = self
            .list(
                concat!(
                    "SELECT ",
                    callback_columns!(),
                    " FROM callbacks WHERE deleted_at IS NULL"
                ),
                filters,
                page,
                |r| r.try_get::<String, _>("id"),
            )
            .await?;
        let mut tx = self.read.begin().await?;
        let mut items = Vec::with_capacity(page.items.len());
        for id in page.items {
            items.push(fetch(&mut tx, &Scope::All, &id).await?);
        }
        Ok(PageOf {
            items,
            more: page.more,
        })
    }

    /// Turns a callback on or off, or changes its filter. Turning it on clears why it was
    /// turned off and its run of failures.
    pub async fn update_callback(
        &self,
        scope: &Scope,
        id: &str,
        changes: CallbackChanges,
    ) -> Result<CallbackRow, StoreError> {
        let mut tx = self.begin().await?;
        let current = fetch(&mut tx, scope, id).await?;
        let now = now_micros();
        if let Some(enabled) = changes.enabled {
            sqlx::query(
                "UPDATE callbacks SET enabled = $1, \
                 disabled_reason = CASE WHEN $1 THEN NULL ELSE COALESCE(disabled_reason, $4) END, \
                 failing_since = CASE WHEN $1 THEN NULL ELSE failing_since END, updated_at = $2 WHERE id = $3",
            )
            .bind(enabled)
            .bind(now)
            .bind(&current.id)
            .bind(match scope {
                Scope::Marketplace(_) => "turned off by the marketplace",
                Scope::All => "turned off by the operator",
            })
            .execute(&mut *tx)
            .await?;
        }
        if let Some(types) = &changes.event_types {
            set_event_types(&mut tx, &current.id, types).await?;
            sqlx::query("UPDATE callbacks SET updated_at = $1 WHERE id = $2")
                .bind(now)
                .bind(&current.id)
                .execute(&mut *tx)
                .await?;
        }
        let row = fetch(&mut tx, &Scope::All, id).await?;
        tx.commit().await?;
        Ok(row)
    }

    /// Deletes a callback: it gets no new deliveries, its unfinished ones stop (as
    /// `failed`), and its delivery history stays for operators.
    pub async fn delete_callback(&self, scope: &Scope, id: &str) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        let current = fetch(&mut tx, scope, id).await?;
        let now = now_micros();
        sqlx::query(
            "UPDATE callbacks SET deleted_at = $1, enabled = FALSE, updated_at = $1 WHERE id = $2",
        )
        .bind(now)
        .bind(&current.id)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE deliveries SET status = 'failed', next_attempt_at = NULL, lease_token = NULL, \
             lease_expires_at = NULL, updated_at = $1 WHERE callback_id = $2 AND status IN ('pending', 'retrying')",
        )
        .bind(now)
        .bind(&current.id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// A new signing secret; the old one keeps signing beside it for `grace_us`.
    pub async fn rotate_callback_secret(
        &self,
        scope: &Scope,
        id: &str,
        grace_us: i64,
    ) -> Result<(CallbackRow, String), StoreError> {
        let mut tx = self.begin().await?;
        let current = fetch(&mut tx, scope, id).await?;
        let now = now_micros();
        let secret = signing::generate_secret();
        sqlx::query(
            "UPDATE callbacks SET previous_secret = secret, previous_secret_expires_at = $1, secret = $2, \
             updated_at = $3 WHERE id = $4",
        )
        .bind(now.saturating_add(grace_us))
        .bind(&secret)
        .bind(now)
        .bind(&current.id)
        .execute(&mut *tx)
        .await?;
        let row = fetch(&mut tx, &Scope::All, id).await?;
        tx.commit().await?;
        Ok((row, secret))
    }
}
