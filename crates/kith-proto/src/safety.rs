//! Safety numbers: a 60-digit fingerprint of two account keys that two
//! friends read to each other (or compare side by side) to rule out a
//! substituted key.
//!
//! Each key gets a 30-digit half: SHA-512 is iterated [`ITERATIONS`] times
//! over a domain tag, the key and the running hash, which makes grinding for a
//! look-alike key expensive; the first 30 bytes of the result become six
//! 5-digit groups (each 40-bit chunk reduced modulo 100000). The two halves
//! are ordered by key bytes, so both friends see the same number.

use std::fmt;

use sha2::{Digest, Sha512};

use crate::identity::AccountPublicKey;

/// Hash iterations per key.
pub const ITERATIONS: usize = 5200;
const DOMAIN: &[u8] = b"kith/safety-number/v1";

/// The safety number of a pair of accounts.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SafetyNumber([u32; 12]);

impl SafetyNumber {
    /// The safety number for `a` and `b`; the order of the arguments does not
    /// matter.
    pub fn new(a: &AccountPublicKey, b: &AccountPublicKey) -> Self {
        let (first, second) = if a.to_bytes() <= b.to_bytes() {
            (a, b)
        } else {
            (b, a)
        };
        let mut groups = [0u32; 12];
        groups[..6].copy_from_slice(&half(first));
        groups[6..].copy_from_slice(&half(second));
        Self(groups)
    }

    /// The twelve 5-digit groups.
    pub fn groups(&self) -> [u32; 12] {
        self.0
    }
}

fn half(key: &AccountPublicKey) -> [u32; 6] {
    let key = key.to_bytes();
    let mut hash = Sha512::new()
        .chain_update(DOMAIN)
        .chain_update(key)
        .finalize();
    for _ in 1..ITERATIONS {
        hash = Sha512::new()
            .chain_update(hash)
            .chain_update(key)
            .finalize();
    }
    let mut out = [0u32; 6];
    for (group, chunk) in out.iter_mut().zip(hash.chunks_exact(5)) {
        let value = chunk
            .iter()
            .fold(0u64, |acc, &byte| (acc << 8) | u64::from(byte));
        // value % 100_000 always fits in u32.
        *group = (value % 100_000) as u32;
    }
    out
}

impl fmt::Display for SafetyNumber {
    /// Three lines of four groups, as people read them aloud.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, group) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(if i % 4 == 0 { "\n" } else { " " })?;
            }
            write!(f, "{group:05}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for SafetyNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SafetyNumber({})", self.to_string().replace('\n', " "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::AccountKeypair;

    #[test]
    fn both_sides_see_the_same_number() {
        let alice = AccountKeypair::generate().public();
        let bob = AccountKeypair::generate().public();
        assert_eq!(
            SafetyNumber::new(&alice, &bob),
            SafetyNumber::new(&bob, &alice)
        );
    }

    #[test]
    fn a_different_key_gives_a_different_number() {
        let alice = AccountKeypair::generate().public();
        let bob = AccountKeypair::generate().public();
        let mallory = AccountKeypair::generate().public();
        assert_ne!(
            SafetyNumber::new(&alice, &bob),
            SafetyNumber::new(&alice, &mallory)
        );
    }

    #[test]
    fn shown_as_twelve_groups_of_five_digits() {
        let alice = AccountKeypair::generate().public();
        let bob = AccountKeypair::generate().public();
        let shown = SafetyNumber::new(&alice, &bob).to_string();
        let lines: Vec<&str> = shown.lines().collect();
        assert_eq!(lines.len(), 3);
        for line in lines {
            let groups: Vec<&str> = line.split(' ').collect();
            assert_eq!(groups.len(), 4);
            assert!(
                groups
                    .iter()
                    .all(|g| g.len() == 5 && g.bytes().all(|b| b.is_ascii_digit()))
            );
        }
    }
}
