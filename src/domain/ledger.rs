//! The four kinds of money movement and their one life cycle.

use std::fmt;
use std::str::FromStr;

/// Debits take money in, refunds give a debit's money back; credits pay out of an order's
/// escrow, reversals bring a credit's money back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Debit,
    Refund,
    Credit,
    Reversal,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Debit, Kind::Refund, Kind::Credit, Kind::Reversal];

    /// The singular name: the `kind` column and the event type prefix (`debit.created`).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Debit => "debit",
            Kind::Refund => "refund",
            Kind::Credit => "credit",
            Kind::Reversal => "reversal",
        }
    }

    /// The collection name: the envelope key and the path segment (`/debits`).
    pub fn collection(self) -> &'static str {
        match self {
            Kind::Debit => "debits",
            Kind::Refund => "refunds",
            Kind::Credit => "credits",
            Kind::Reversal => "reversals",
        }
    }

    /// The id prefix (`WD...`).
    pub fn id_prefix(self) -> &'static str {
        match self {
            Kind::Debit => "WD",
            Kind::Refund => "RF",
            Kind::Credit => "CR",
            Kind::Reversal => "RV",
        }
    }

    /// The transaction number prefix, as the schemas' patterns have it.
    pub fn number_prefix(self) -> &'static str {
        match self {
            Kind::Debit => "W",
            Kind::Refund => "RF",
            Kind::Credit => "CR",
            Kind::Reversal => "RV",
        }
    }

    /// The kind an id belongs to, from its prefix.
    pub fn of_id(id: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| crate::domain::ids::is_id(id, k.id_prefix()))
    }

    /// The kind whose money this kind returns (refund -> debit, reversal -> credit).
    pub fn parent(self) -> Option<Kind> {
        match self {
            Kind::Refund => Some(Kind::Debit),
            Kind::Reversal => Some(Kind::Credit),
            Kind::Debit | Kind::Credit => None,
        }
    }
}

impl FromStr for Kind {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s).ok_or(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    Pending,
    Succeeded,
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
        }
    }

    /// The moves the processor may report: `pending -> succeeded`, `pending -> failed`, and
    /// `succeeded -> failed` (an ACH debit can fail weeks after it succeeded). Nothing else.
    pub fn can_become(self, next: Status) -> bool {
        matches!(
            (self, next),
            (Status::Pending, Status::Succeeded)
                | (Status::Pending, Status::Failed)
                | (Status::Succeeded, Status::Failed)
        )
    }
}

impl FromStr for Status {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "pending" => Ok(Status::Pending),
            "succeeded" => Ok(Status::Succeeded),
            "failed" => Ok(Status::Failed),
            _ => Err(()),
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A card or bank account held elsewhere; hookline keeps only its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instrument(String);

impl Instrument {
    /// Accepts an id (`CC...`, `BA...`) or an href ending in one (`/cards/CC...`,
    /// `/bank_accounts/BA...`, `/resources/CC...`).
    pub fn parse(href: &str) -> Option<Instrument> {
        let id = href.rsplit('/').next().unwrap_or(href);
        let allowed_path = match href.rsplit_once('/') {
            None => true,
            Some((path, _)) => {
                matches!(path, "/cards" | "/bank_accounts" | "/resources")
            }
        };
        let valid = crate::domain::ids::is_id(id, "CC") || crate::domain::ids::is_id(id, "BA");
        (allowed_path && valid).then(|| Instrument(id.to_owned()))
    }

    pub fn from_stored(id: String) -> Instrument {
        Instrument(id)
    }

    pub fn id(&self) -> &str {
        &self.0
    }

    /// Cards settle at once; bank accounts (ACH) wait for the processor.
    pub fn settles_at_once(&self) -> bool {
        self.0.starts_with("CC")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_three_documented_transitions_are_legal() {
        use Status::*;
        let legal: Vec<(Status, Status)> = [Pending, Succeeded, Failed]
            .into_iter()
            .flat_map(|a| [Pending, Succeeded, Failed].map(|b| (a, b)))
            .filter(|(a, b)| a.can_become(*b))
            .collect();
        assert_eq!(
            legal,
            [(Pending, Succeeded), (Pending, Failed), (Succeeded, Failed)]
        );
    }

    #[test]
    fn instruments_parse_from_ids_and_hrefs() {
        let card = Instrument::parse("/cards/CC0123456789abcdefAB").expect("card href");
        assert!(card.settles_at_once());
        let bank = Instrument::parse("BA0123456789abcdefAB").expect("bank id");
        assert!(!bank.settles_at_once());
        assert!(Instrument::parse("/debits/CC0123456789abcdefAB").is_none());
        assert!(Instrument::parse("/cards/XX0123456789abcdefAB").is_none());
        assert!(Instrument::parse("").is_none());
    }

    #[test]
    fn kinds_are_recognised_by_id_prefix() {
        assert_eq!(Kind::of_id("RF0123456789abcdefAB"), Some(Kind::Refund));
        assert_eq!(Kind::of_id("OR0123456789abcdefAB"), None);
    }
}
