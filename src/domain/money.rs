//! Amounts in cents.

use std::fmt;

/// The largest amount one transaction may move: $10,000,000.00. Far below `i64::MAX`,
/// so sums of amounts cannot overflow.
pub const MAX_AMOUNT: i64 = 1_000_000_000;

/// A positive amount in cents, at most [`MAX_AMOUNT`]. One that exists is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Amount(i64);

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error("must be at least 1 (cents)")]
    TooSmall,
    #[error("must be at most {MAX_AMOUNT} (cents)")]
    TooLarge,
}

impl Amount {
    pub fn new(cents: i64) -> Result<Self, AmountError> {
        if cents < 1 {
            Err(AmountError::TooSmall)
        } else if cents > MAX_AMOUNT {
            Err(AmountError::TooLarge)
        } else {
            Ok(Self(cents))
        }
    }

    pub fn cents(self) -> i64 {
        self.0
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_outside_one_cent_to_the_limit_are_refused() {
        assert_eq!(Amount::new(0), Err(AmountError::TooSmall));
        assert_eq!(Amount::new(-5), Err(AmountError::TooSmall));
        assert_eq!(Amount::new(MAX_AMOUNT + 1), Err(AmountError::TooLarge));
        assert_eq!(Amount::new(1).map(Amount::cents), Ok(1));
        assert_eq!(Amount::new(MAX_AMOUNT).map(Amount::cents), Ok(MAX_AMOUNT));
    }
}
