//! Resource ids with Balanced's prefixes.
//!
//! The part after the prefix is a ULID: 26 characters of `[0-9A-Z]`, which fits the
//! schemas' `[a-zA-Z0-9]{16,32}` and sorts by creation time, so lists can page by id.
//! Within one process ids are strictly increasing (the events of one change list in the
//! order they were written); across processes they are ordered to the millisecond.

use std::sync::Mutex;

use rand::Rng;
use ulid::{Generator, Ulid};

static GENERATOR: Mutex<Generator> = Mutex::new(Generator::new());

fn next_ulid() -> Ulid {
    let mut guard = GENERATOR
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    guard
        .generate()
        // Only after 2^80 ids in one millisecond; a random one is still unique.
        .unwrap_or_else(|_| Ulid::new())
}

pub const MARKETPLACE: &str = "MP";
pub const ORDER: &str = "OR";
pub const EVENT: &str = "EV";

/// A new id such as `WD01JD3...`.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}{}", next_ulid())
}

/// Balanced's request ids (`OHM...`), quoted in every error.
pub fn request_id() -> String {
    new_id("OHM")
}

/// A transaction number like `W4K2-9QX-0ZLP`: the kind's letters, then 3-3-4 of `[0-9A-Z]`.
pub fn transaction_number(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut rng = rand::rng();
    let mut group = |n: usize| -> String {
        (0..n)
            .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
            .collect()
    };
    let (a, b, c) = (group(3), group(3), group(4));
    format!("{prefix}{a}-{b}-{c}")
}

/// True when `id` is `prefix` followed by 16 to 32 ASCII letters or digits.
pub fn is_id(id: &str, prefix: &str) -> bool {
    id.strip_prefix(prefix).is_some_and(|rest| {
        (16..=32).contains(&rest.len()) && rest.bytes().all(|b| b.is_ascii_alphanumeric())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_ids_match_the_balanced_pattern() {
        let id = new_id("WD");
        assert!(is_id(&id, "WD"), "{id}");
        assert!(!is_id(&id, "RF"));
        assert!(!is_id("WDshort", "WD"));
        assert!(!is_id("WD0123456789abcdef!", "WD"));
    }

    #[test]
    fn ids_increase_within_a_process() {
        let ids: Vec<String> = (0..1000).map(|_| new_id("EV")).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn transaction_numbers_have_three_groups() {
        let n = transaction_number("W");
        // `strip_prefix`: the first group may itself begin with a W.
        let parts: Vec<&str> = n
            .strip_prefix('W')
            .expect("the prefix")
            .split('-')
            .collect();
        assert_eq!(parts.iter().map(|p| p.len()).collect::<Vec<_>>(), [3, 3, 4]);
    }
}
