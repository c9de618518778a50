//! Debits, refunds, credits and reversals: the same handlers for each kind.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::get;

use super::error::ApiError;
use super::extract::{Caller, Id, Json, ListQuery, RawBody, idempotency_key, if_match, parse};
use super::openapi::{Op, Returns, Routes};
use super::{AppState, created, listed, versioned};
use crate::domain::input::{CreateCredit, CreateDebit, CreateReturn, Update};
use crate::domain::ledger::Kind;
use crate::domain::views;
use crate::store::{Scope, StoreError, TxnFilter};

pub fn routes() -> Routes {
    let mut routes = Routes::default();
    for kind in Kind::ALL {
        let (c, one) = (kind.collection(), kind.as_str());
        let listed = Returns::Collection(c, 200);
        routes = routes
            .route(
                &format!("/{c}"),
                get(move |s, caller, q| list(s, caller, q, kind, None))
                    .post(move |s, caller, h, body| create(s, caller, h, body, kind, None)),
                vec![
                    Op::get(format!("List {c}"), listed).paged(),
                    create_op(kind, format!("Create a {one}")),
                ],
            )
            .route(
                &format!("/{c}/{{id}}"),
                get(move |s, caller, id| show(s, caller, id, kind))
                    .put(move |s, caller, id, h, body| update(s, caller, id, h, body, kind)),
                vec![
                    Op::get(format!("Show a {one}"), listed),
                    Op::put(format!("Update a {one}'s description or meta"), listed)
                        .body::<Update>()
                        .header(
                            "If-Match",
                            "The version (ETag) the update expects; a stale one gets 409",
                        ),
                ],
            );
    }
    // Collections under a parent: a debit's refunds, a credit's reversals, an order's
    // transactions. POST where Balanced allowed creating there.
    for (parent, kind) in [(Kind::Debit, Kind::Refund), (Kind::Credit, Kind::Reversal)] {
        let (p, c) = (parent.as_str(), kind.collection());
        routes = routes.route(
            &format!("/{}/{{id}}/{c}", parent.collection()),
            get(move |s, caller, Id(id): Id, q| {
                list(
                    s,
                    caller,
                    q,
                    kind,
                    Some((ParentOf::Transaction(parent), id)),
                )
            })
            .post(move |s, caller, Id(id): Id, h, body| create(s, caller, h, body, kind, Some(id))),
            vec![
                Op::get(format!("List a {p}'s {c}"), Returns::Collection(c, 200)).paged(),
                create_op(
                    kind,
                    format!(
                        "Create a {} of this {p} (no amount: all that is left)",
                        kind.as_str()
                    ),
                ),
            ],
        );
    }
    for kind in Kind::ALL {
        let c = kind.collection();
        let path = format!("/orders/{{id}}/{c}");
        let list_route = get(move |s, caller, Id(id): Id, q| {
            list(s, caller, q, kind, Some((ParentOf::Order, id)))
        });
        let list_op = Op::get(format!("List an order's {c}"), Returns::Collection(c, 200)).paged();
        routes = match kind {
            Kind::Debit | Kind::Credit => routes.route(
                &path,
                list_route.post(move |s, caller, Id(id): Id, h, body| {
                    create(s, caller, h, body, kind, Some(id))
                }),
                vec![
                    list_op,
                    create_op(kind, format!("Create a {} on this order", kind.as_str())),
                ],
            ),
            Kind::Refund | Kind::Reversal => routes.route(&path, list_route, vec![list_op]),
        };
    }
    routes
}

/// The description of a create of `kind`, with its request type.
fn create_op(kind: Kind, summary: String) -> Op {
    let op = Op::post(summary, Returns::Collection(kind.collection(), 201)).header(
        "Idempotency-Key",
        "A repeat with the same key returns the first response and creates nothing",
    );
    match kind {
        Kind::Debit => op.body::<CreateDebit>(),
        Kind::Credit => op.body::<CreateCredit>(),
        Kind::Refund | Kind::Reversal => op.body::<CreateReturn>(),
    }
}

#[derive(Debug, Clone, Copy)]
enum ParentOf {
    Order,
    Transaction(Kind),
}

/// Creates a transaction of `kind`. `parent` is the id from the path: the order for
/// debits and credits, the debit or credit for refunds and reversals.
async fn create(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    RawBody(raw): RawBody,
    kind: Kind,
    parent: Option<String>,
) -> Result<Response, ApiError> {
    let marketplace = caller.marketplace()?;
    let path = match (&parent, kind) {
        (None, _) => format!("/{}", kind.collection()),
        (Some(id), Kind::Debit | Kind::Credit) => format!("/orders/{id}/{}", kind.collection()),
        (Some(id), _) => format!(
            "/{}/{id}/{}",
            kind.parent().map_or("", Kind::collection),
            kind.collection()
        ),
    };
    let key = idempotency_key(&headers, "POST", &path, &raw)?;
    let db = &state.db;
    let scope = Scope::Marketplace(marketplace.to_owned());
    let body = match kind {
        Kind::Debit | Kind::Credit => {
            if let Some(order) = &parent {
                db.order(&scope, order).await?;
            }
            let new = if kind == Kind::Debit {
                parse::<CreateDebit>(&raw)?.validate(parent.as_deref())?
            } else {
                parse::<CreateCredit>(&raw)?.validate(parent.as_deref())?
            };
            db.create_transfer(marketplace, kind, new, key.as_ref())
                .await?
        }
        Kind::Refund | Kind::Reversal => {
            let parent_kind = kind.parent().expect("returns have parents");
            let new =
                parse::<CreateReturn>(&raw)?.validate(parent_kind.as_str(), parent.as_deref())?;
            let from_body = parent.is_none();
            match db.create_return(marketplace, kind, new, key.as_ref()).await {
                // A parent named in the body that does not exist is a bad field, not a
                // missing page.
                Err(StoreError::NotFound { id, .. }) if from_body => {
                    return Err(ApiError::field(
                        parent_kind.as_str(),
                        format!("{id} not found"),
                    ));
                }
                other => other?,
            }
        }
    };
    Ok(created(body))
}

async fn list(
    State(state): State<AppState>,
    caller: Caller,
    query: ListQuery,
    kind: Kind,
    parent: Option<(ParentOf, String)>,
) -> Result<Response, ApiError> {
    query.without_filters()?;
    let scope = caller.scope(query.marketplace.as_deref());
    let (filter, path) = match &parent {
        None => (TxnFilter::All, format!("/{}", kind.collection())),
        Some((ParentOf::Order, id)) => {
            state.db.order(&scope, id).await?;
            (
                TxnFilter::Order(id.clone()),
                format!("/orders/{id}/{}", kind.collection()),
            )
        }
        Some((ParentOf::Transaction(p), id)) => {
            state.db.transaction(&scope, *p, id).await?;
            (
                TxnFilter::Parent(id.clone()),
                format!("/{}/{id}/{}", p.collection(), kind.collection()),
            )
        }
    };
    let page = state
        .db
        .transactions(&scope, kind, &filter, &query.page)
        .await?;
    Ok(listed(
        kind.collection(),
        &path,
        &query,
        page,
        |t| &t.id,
        views::transaction,
    ))
}

async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Id(id): Id,
    kind: Kind,
) -> Result<Response, ApiError> {
    let row = state.db.transaction(&caller.scope(None), kind, &id).await?;
    Ok(versioned(
        views::envelope(kind.collection(), vec![views::transaction(&row)], None),
        row.version,
    ))
}

async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Id(id): Id,
    headers: HeaderMap,
    Json { value, .. }: Json<Update>,
    kind: Kind,
) -> Result<Response, ApiError> {
    let marketplace = caller.marketplace()?.to_owned();
    if value.delivery_address.is_some() {
        return Err(ApiError::field(
            "delivery_address",
            format!("is not a field of {}", kind.collection()),
        ));
    }
    let mut changes = value.validate()?;
    changes.version = changes.version.or(if_match(&headers)?);
    let (body, version) = state
        .db
        .update_transaction(&Scope::Marketplace(marketplace), kind, &id, changes)
        .await?;
    Ok(versioned(body, version))
}
