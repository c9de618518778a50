//! Plain Rust: money, ids, the transaction life cycle, validated input and the JSON views.
//! Nothing here knows about axum or sqlx.

pub mod callbacks;
pub mod ids;
pub mod input;
pub mod ledger;
pub mod money;
pub mod views;
