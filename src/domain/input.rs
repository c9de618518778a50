//! Request bodies, and the checks that turn them into values the ledger can trust.
//!
//! Bodies are decoded with unknown fields refused; each `validate` then checks what
//! types alone cannot (ranges, lengths, id formats) and names the field it refuses.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer};

use super::ids;
use super::ledger::{Instrument, Status};
use super::money::{Amount, AmountError};

pub const MAX_DESCRIPTION: usize = 1024;
pub const MAX_META_KEYS: usize = 50;
pub const MAX_META_KEY: usize = 64;
pub const MAX_META_VALUE: usize = 1024;
pub const MAX_STATEMENT: usize = 18;
pub const MAX_NAME: usize = 255;
pub const MAX_FAILURE_TEXT: usize = 1024;

/// Why a field was refused: Balanced's category code and words for a person.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Invalid field [{field}] - {message}")]
pub struct InputError {
    pub field: String,
    pub message: String,
    pub category_code: &'static str,
}

impl InputError {
    pub fn new(field: &str, message: impl Into<String>) -> Self {
        Self {
            field: field.to_owned(),
            message: message.into(),
            category_code: "request",
        }
    }

    fn amount(field: &str, error: AmountError, code_too_large: &'static str) -> Self {
        let category_code = match error {
            AmountError::TooSmall => "invalid-amount",
            AmountError::TooLarge => code_too_large,
        };
        Self {
            field: field.to_owned(),
            message: error.to_string(),
            category_code,
        }
    }
}

/// `meta`: a single-level map of string to string.
pub type Meta = BTreeMap<String, String>;

/// A field that may be absent (keep), `null` (clear) or a value (set).
fn present<'de, T: Deserialize<'de>, D: Deserializer<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Address {
    pub line1: Option<String>,
    pub line2: Option<String>,
    pub city: Option<String>,
    pub state: Option<String>,
    pub postal_code: Option<String>,
    pub country_code: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOrder {
    pub merchant: Option<String>,
    pub description: Option<String>,
    pub meta: Option<Meta>,
    pub delivery_address: Option<Address>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateDebit {
    pub amount: Option<i64>,
    pub source: Option<String>,
    pub order: Option<String>,
    pub description: Option<String>,
    pub meta: Option<Meta>,
    pub appears_on_statement_as: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCredit {
    pub amount: Option<i64>,
    pub destination: Option<String>,
    pub order: Option<String>,
    pub description: Option<String>,
    pub meta: Option<Meta>,
    pub appears_on_statement_as: Option<String>,
}

/// A refund (of `debit`) or a reversal (of `credit`): the amount defaults to what is left.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateReturn {
    pub amount: Option<i64>,
    pub debit: Option<String>,
    pub credit: Option<String>,
    pub description: Option<String>,
    pub meta: Option<Meta>,
}

/// `PUT` on any resource: only `description` and `meta` change.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Update {
    #[serde(default, deserialize_with = "present")]
    #[schemars(with = "Option<String>")]
    pub description: Option<Option<String>>,
    pub meta: Option<Meta>,
    pub version: Option<i64>,
    #[serde(default, deserialize_with = "present")]
    #[schemars(with = "Option<Address>")]
    pub delivery_address: Option<Option<Address>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProcessorOutcome {
    pub status: String,
    pub failure_reason: Option<String>,
    pub failure_reason_code: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateMarketplace {
    pub name: String,
}

/// Fields every transaction and order carries.
#[derive(Debug, Clone, Default)]
pub struct Annotations {
    pub description: Option<String>,
    pub meta: Meta,
}

#[derive(Debug)]
pub struct NewOrder {
    pub merchant: String,
    pub annotations: Annotations,
    pub delivery_address: serde_json::Value,
}

#[derive(Debug)]
pub struct NewTransfer {
    pub amount: Amount,
    pub instrument: Instrument,
    pub order: Option<String>,
    pub annotations: Annotations,
    pub appears_on_statement_as: Option<String>,
}

#[derive(Debug)]
pub struct NewReturn {
    pub amount: Option<Amount>,
    pub parent: String,
    pub annotations: Annotations,
}

#[derive(Debug)]
pub struct Changes {
    /// `Some(None)` clears the description.
    pub description: Option<Option<String>>,
    pub meta: Option<Meta>,
    pub version: Option<i64>,
    pub delivery_address: Option<serde_json::Value>,
}

#[derive(Debug)]
pub struct Outcome {
    pub status: Status,
    pub failure_reason: Option<String>,
    pub failure_reason_code: Option<String>,
}

fn required<T>(value: Option<T>, field: &str) -> Result<T, InputError> {
    value.ok_or_else(|| InputError::new(field, "is required"))
}

fn text(value: &str, field: &str, max: usize) -> Result<(), InputError> {
    if value.chars().count() > max {
        return Err(InputError::new(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    if value
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(InputError::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

fn description(value: Option<String>) -> Result<Option<String>, InputError> {
    if let Some(d) = &value {
        text(d, "description", MAX_DESCRIPTION)?;
    }
    Ok(value)
}

pub fn meta(value: Option<Meta>) -> Result<Meta, InputError> {
    let meta = value.unwrap_or_default();
    if meta.len() > MAX_META_KEYS {
        return Err(InputError::new(
            "meta",
            format!("must have at most {MAX_META_KEYS} keys"),
        ));
    }
    for (key, value) in &meta {
        if key.is_empty() {
            return Err(InputError::new("meta", "keys must not be empty"));
        }
        text(key, "meta", MAX_META_KEY)?;
        text(value, &format!("meta.{key}"), MAX_META_VALUE)?;
    }
    Ok(meta)
}

fn annotations(
    description_: Option<String>,
    meta_: Option<Meta>,
) -> Result<Annotations, InputError> {
    Ok(Annotations {
        description: description(description_)?,
        meta: meta(meta_)?,
    })
}

fn amount(value: i64, field: &str, code_too_large: &'static str) -> Result<Amount, InputError> {
    Amount::new(value).map_err(|e| InputError::amount(field, e, code_too_large))
}

/// A reference to one of our resources: its id, or an href whose last segment is its id
/// (`/orders/OR...`). The id must have `prefix`.
pub fn reference(
    value: &str,
    field: &str,
    prefix: &str,
    collection: &str,
) -> Result<String, InputError> {
    let id = match value.rsplit_once('/') {
        None => value,
        Some((path, id)) if path == format!("/{collection}") => id,
        Some(_) => {
            return Err(InputError::new(
                field,
                format!("must be an id or an href like /{collection}/{prefix}..."),
            ));
        }
    };
    if ids::is_id(id, prefix) {
        Ok(id.to_owned())
    } else {
        Err(InputError::new(
            field,
            format!("\"{value}\" is not a {prefix}... id of /{collection}"),
        ))
    }
}

fn statement(value: Option<String>) -> Result<Option<String>, InputError> {
    if let Some(s) = &value {
        let ok = !s.is_empty()
            && s.chars().count() <= MAX_STATEMENT
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || " .-".contains(c));
        if !ok {
            return Err(InputError::new(
                "appears_on_statement_as",
                format!("must be 1 to {MAX_STATEMENT} letters, digits, spaces, dots or dashes"),
            ));
        }
    }
    Ok(value)
}

fn address(value: Address) -> Result<serde_json::Value, InputError> {
    let fields = [
        ("line1", &value.line1),
        ("line2", &value.line2),
        ("city", &value.city),
        ("state", &value.state),
        ("postal_code", &value.postal_code),
        ("country_code", &value.country_code),
    ];
    for (name, v) in fields {
        if let Some(v) = v {
            text(v, &format!("delivery_address.{name}"), MAX_NAME)?;
        }
    }
    if let Some(code) = &value.country_code
        && (code.len() != 2 || !code.bytes().all(|b| b.is_ascii_uppercase()))
    {
        return Err(InputError::new(
            "delivery_address.country_code",
            "must be two capital letters",
        ));
    }
    Ok(serde_json::json!({
        "line1": value.line1, "line2": value.line2, "city": value.city,
        "state": value.state, "postal_code": value.postal_code, "country_code": value.country_code,
    }))
}

impl CreateOrder {
    /// `merchant` comes from the body or, for `/customers/{id}/orders`, from the path.
    pub fn validate(self, merchant_from_path: Option<&str>) -> Result<NewOrder, InputError> {
        let merchant = match (merchant_from_path, self.merchant.as_deref()) {
            (Some(m), _) | (None, Some(m)) => m.to_owned(),
            (None, None) => return Err(InputError::new("merchant", "is required")),
        };
        let id = match merchant.strip_prefix("/customers/") {
            Some(id) => id,
            None => merchant.as_str(),
        };
        if !(ids::is_id(id, "CU") || ids::is_id(id, "AC")) {
            return Err(InputError::new(
                "merchant",
                format!("\"{merchant}\" is not a CU... or AC... customer id or /customers/ href"),
            ));
        }
        Ok(NewOrder {
            merchant: id.to_owned(),
            annotations: annotations(self.description, self.meta)?,
            delivery_address: address(self.delivery_address.unwrap_or_default())?,
        })
    }
}

impl CreateDebit {
    /// `order` comes from the body or, for `/orders/{id}/debits`, from the path.
    pub fn validate(self, order_from_path: Option<&str>) -> Result<NewTransfer, InputError> {
        let source = required(self.source, "source")?;
        let instrument = Instrument::parse(&source).ok_or_else(|| {
            InputError::new(
                "source",
                format!("\"{source}\" is not a card (CC...) or bank account (BA...) id or href"),
            )
        })?;
        Ok(NewTransfer {
            amount: amount(
                required(self.amount, "amount")?,
                "amount",
                "amount-exceeds-limit",
            )?,
            instrument,
            order: order_ref(order_from_path, self.order)?,
            annotations: annotations(self.description, self.meta)?,
            appears_on_statement_as: statement(self.appears_on_statement_as)?,
        })
    }
}

impl CreateCredit {
    /// A credit pays out of an order's escrow, so it needs an order.
    pub fn validate(self, order_from_path: Option<&str>) -> Result<NewTransfer, InputError> {
        let destination = required(self.destination, "destination")?;
        let instrument = Instrument::parse(&destination).ok_or_else(|| {
            InputError::new(
                "destination",
                format!(
                    "\"{destination}\" is not a card (CC...) or bank account (BA...) id or href"
                ),
            )
        })?;
        let order = order_ref(order_from_path, self.order)?;
        Ok(NewTransfer {
            amount: amount(
                required(self.amount, "amount")?,
                "amount",
                "amount-exceeds-limit",
            )?,
            instrument,
            order: Some(required(order, "order")?),
            annotations: annotations(self.description, self.meta)?,
            appears_on_statement_as: statement(self.appears_on_statement_as)?,
        })
    }
}

fn order_ref(
    from_path: Option<&str>,
    from_body: Option<String>,
) -> Result<Option<String>, InputError> {
    match (from_path, from_body) {
        (Some(path), _) => Ok(Some(path.to_owned())),
        (None, Some(body)) => reference(&body, "order", ids::ORDER, "orders").map(Some),
        (None, None) => Ok(None),
    }
}

impl CreateReturn {
    /// `parent_field` is `debit` for refunds and `credit` for reversals; the parent comes
    /// from the path (`/debits/{id}/refunds`) or from that field.
    pub fn validate(
        self,
        parent_field: &str,
        parent_from_path: Option<&str>,
    ) -> Result<NewReturn, InputError> {
        let (prefix, collection, code, from_body, other) = if parent_field == "debit" {
            (
                "WD",
                "debits",
                "invalid-amount",
                self.debit,
                self.credit.map(|_| "credit"),
            )
        } else {
            (
                "CR",
                "credits",
                "invalid-reversal-amount",
                self.credit,
                self.debit.map(|_| "debit"),
            )
        };
        if let Some(other) = other {
            return Err(InputError::new(other, "is not a field of this resource"));
        }
        let parent = match (parent_from_path, from_body) {
            (Some(path), _) => path.to_owned(),
            (None, Some(body)) => reference(&body, parent_field, prefix, collection)?,
            (None, None) => return Err(InputError::new(parent_field, "is required")),
        };
        let amount = self
            .amount
            .map(|a| {
                Amount::new(a).map_err(|e| InputError {
                    field: "amount".into(),
                    message: e.to_string(),
                    category_code: code,
                })
            })
            .transpose()?;
        Ok(NewReturn {
            amount,
            parent,
            annotations: annotations(self.description, self.meta)?,
        })
    }
}

impl Update {
    pub fn validate(self) -> Result<Changes, InputError> {
        let description = match self.description {
            Some(d) => Some(description(d)?),
            None => None,
        };
        let meta = match self.meta {
            Some(m) => Some(meta(Some(m))?),
            None => None,
        };
        let delivery_address = match self.delivery_address {
            Some(a) => Some(address(a.unwrap_or_default())?),
            None => None,
        };
        if let Some(v) = self.version
            && v < 1
        {
            return Err(InputError::new("version", "must be at least 1"));
        }
        Ok(Changes {
            description,
            meta,
            version: self.version,
            delivery_address,
        })
    }
}

impl ProcessorOutcome {
    pub fn validate(self) -> Result<Outcome, InputError> {
        let status = match self.status.parse::<Status>() {
            Ok(s @ (Status::Succeeded | Status::Failed)) => s,
            _ => {
                return Err(InputError::new(
                    "status",
                    format!("\"{}\" must be \"succeeded\" or \"failed\"", self.status),
                ));
            }
        };
        for (field, value) in [
            ("failure_reason", &self.failure_reason),
            ("failure_reason_code", &self.failure_reason_code),
        ] {
            if let Some(v) = value {
                text(v, field, MAX_FAILURE_TEXT)?;
            }
            if status == Status::Succeeded && value.is_some() {
                return Err(InputError::new(field, "is only for \"failed\""));
            }
        }
        Ok(Outcome {
            status,
            failure_reason: self.failure_reason,
            failure_reason_code: self.failure_reason_code,
        })
    }
}

impl CreateMarketplace {
    pub fn validate(self) -> Result<String, InputError> {
        let name = self.name.trim().to_owned();
        if name.is_empty() {
            return Err(InputError::new("name", "must not be empty"));
        }
        text(&name, "name", MAX_NAME)?;
        Ok(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_accept_ids_and_matching_hrefs_only() {
        let id = "OR0123456789abcdefAB";
        assert_eq!(reference(id, "order", "OR", "orders").as_deref(), Ok(id));
        assert_eq!(
            reference(&format!("/orders/{id}"), "order", "OR", "orders").as_deref(),
            Ok(id)
        );
        assert!(reference(&format!("/debits/{id}"), "order", "OR", "orders").is_err());
        assert!(reference("WD0123456789abcdefAB", "order", "OR", "orders").is_err());
    }

    #[test]
    fn meta_limits_name_the_offending_key() {
        let long = "x".repeat(MAX_META_VALUE + 1);
        let err = meta(Some(Meta::from([("k".into(), long)]))).unwrap_err();
        assert_eq!(err.field, "meta.k");
    }

    #[test]
    fn a_zero_refund_is_an_invalid_amount() {
        let body = CreateReturn {
            amount: Some(0),
            debit: None,
            credit: None,
            description: None,
            meta: None,
        };
        let err = body
            .validate("debit", Some("WD0123456789abcdefAB"))
            .unwrap_err();
        assert_eq!(
            (err.field.as_str(), err.category_code),
            ("amount", "invalid-amount")
        );
    }
}
