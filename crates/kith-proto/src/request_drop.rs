//! Request drops: DHT records where strangers leave friend requests.
//!
//! A stranger who holds only a Kith ID must not learn whether its owner is
//! online, so a friend request is never sent to the owner's devices. The
//! requester seals it to the owner's account key (an
//! [`envelope`](crate::envelope)), wraps it in a [`DropEntry`] with an expiry,
//! and puts it into the DHT under [`drop_key`]: a hash of the account key and
//! nospam, which only holders of the Kith ID can compute. The owner polls
//! that key. DHT nodes cannot check who may write there (the key reveals
//! neither input), so they check only limits and times and merge what they
//! receive ([`RequestDrop::merge`]): the union of the entries, de-duplicated
//! by their sealed bytes, expired ones dropped, at most [`MAX_DROP_ENTRIES`]
//! kept (those that expire last).
//!
//! A record's value starts with [`DROP_TAG`] where a presence record starts
//! with its version byte (`0x01`), so neither decoder accepts the other's
//! records. Every decoder here has a size limit checked before anything is
//! allocated and returns a typed [`DropError`]; the layout is in
//! `docs/requests.md`.

use std::collections::BTreeMap;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::id::Nospam;
use crate::identity::AccountPublicKey;

/// First byte of every request-drop record: "drop, version 1". Presence
/// records start with their version (`0x01`, later `0x02`, …), far from
/// this.
pub const DROP_TAG: u8 = 0xD1;
/// Most entries one record holds.
pub const MAX_DROP_ENTRIES: usize = 16;
/// Largest sealed entry, in bytes.
pub const MAX_DROP_ENTRY_BYTES: usize = 2048;
/// Longest lifetime an entry may claim, in seconds (the DHT's record TTL).
pub const MAX_DROP_TTL_SECS: u64 = 48 * 3600;
/// Largest encoded record: the tag, the entry count (one varint byte), and
/// per entry the expiry (a varint of at most 10 bytes), the sealed length
/// (2 varint bytes) and the sealed bytes. Longer input is refused unread.
pub const MAX_DROP_RECORD_BYTES: usize = 1 + 1 + MAX_DROP_ENTRIES * (10 + 2 + MAX_DROP_ENTRY_BYTES);

const KEY_DOMAIN: &[u8] = b"kith/request-drop/v1";

/// Why a request-drop record or entry was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DropError {
    /// Over [`MAX_DROP_RECORD_BYTES`]; refused unread.
    #[error("request drop of {found} bytes is over the {max}-byte limit")]
    TooLarge {
        /// Bytes given.
        found: usize,
        /// The limit.
        max: usize,
    },
    /// Does not start with [`DROP_TAG`] (a presence record, or a newer
    /// format).
    #[error("not a request drop this build reads (first byte {found:#04x})")]
    UnknownVersion {
        /// The first byte (0 when empty).
        found: u8,
    },
    /// The bytes do not form a record.
    #[error("malformed request drop: {0}")]
    Malformed(String),
    /// No entries, or more than [`MAX_DROP_ENTRIES`].
    #[error("request drop must hold 1 to {MAX_DROP_ENTRIES} entries, this holds {found}")]
    Entries {
        /// Entries found.
        found: usize,
    },
    /// A sealed entry is empty or over [`MAX_DROP_ENTRY_BYTES`].
    #[error("request drop entry of {found} bytes; entries hold 1 to {max} bytes")]
    EntrySize {
        /// Bytes found.
        found: usize,
        /// The limit.
        max: usize,
    },
    /// The entry, or every entry of the record, has expired.
    #[error("request drop entry expired at {expires} (now {now})")]
    Expired {
        /// Its expiry (the latest one for a record), Unix seconds.
        expires: u64,
        /// The time of the check.
        now: u64,
    },
    /// An entry claims to live longer than [`MAX_DROP_TTL_SECS`].
    #[error(
        "request drop entry expiry {expires} is more than {MAX_DROP_TTL_SECS} s after now ({now})"
    )]
    ExpiryTooFar {
        /// Its expiry, Unix seconds.
        expires: u64,
        /// The time of the check.
        now: u64,
    },
}

/// The DHT key of the request drop of the account `account` with nospam
/// `nospam`: `SHA-256("kith/request-drop/v1" ‖ account key ‖ nospam)`.
/// A new nospam moves the drop, so old IDs stop reaching it.
pub fn drop_key(account: &AccountPublicKey, nospam: &Nospam) -> [u8; 32] {
    Sha256::new()
        .chain_update(KEY_DOMAIN)
        .chain_update(account.to_bytes())
        .chain_update(nospam.0)
        .finalize()
        .into()
}

/// Whether `bytes` claim to be a request-drop record (by their first byte).
/// Says nothing about validity.
pub fn is_drop_record(bytes: &[u8]) -> bool {
    bytes.first() == Some(&DROP_TAG)
}

/// One friend request waiting in a drop.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct DropEntry {
    /// Unix seconds after which DHT nodes drop the entry.
    pub expires: u64,
    /// A sealed envelope made by the requester; opaque here.
    #[serde(serialize_with = "serialize_bytes")]
    pub sealed: Vec<u8>,
}

impl DropEntry {
    /// Checks the entry's size and times at Unix time `now`: what a DHT node
    /// requires before storing it.
    pub fn check(&self, now: u64) -> Result<(), DropError> {
        check_size(self.sealed.len())?;
        if self.expires <= now {
            return Err(DropError::Expired {
                expires: self.expires,
                now,
            });
        }
        if self.expires > now.saturating_add(MAX_DROP_TTL_SECS) {
            return Err(DropError::ExpiryTooFar {
                expires: self.expires,
                now,
            });
        }
        Ok(())
    }

    fn is_valid(&self, now: u64) -> bool {
        self.check(now).is_ok()
    }
}

fn check_size(found: usize) -> Result<(), DropError> {
    if found == 0 || found > MAX_DROP_ENTRY_BYTES {
        return Err(DropError::EntrySize {
            found,
            max: MAX_DROP_ENTRY_BYTES,
        });
    }
    Ok(())
}

/// Bytes as postcard writes a `Vec<u8>`: a varint length, then the bytes.
fn serialize_bytes<S: serde::Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bytes(bytes)
}

/// What the DHT stores under a [`drop_key`].
///
/// Encoded with postcard, but decoded step by step ([`RequestDrop::decode`])
/// so that every count and length is checked before it is used; there is
/// deliberately no `Deserialize`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RequestDrop {
    /// Waiting requests, in the order [`RequestDrop::merge`] leaves them:
    /// latest expiry first, then by sealed bytes.
    pub entries: Vec<DropEntry>,
}

impl RequestDrop {
    /// Encodes the record: [`DROP_TAG`], then postcard.
    pub fn encode(&self) -> Vec<u8> {
        // Serializing plain structs into a Vec cannot fail.
        #[allow(clippy::expect_used)]
        postcard::to_extend(self, vec![DROP_TAG]).expect("record encodes")
    }

    /// Decodes a record and checks its limits (size, tag, 1 to
    /// [`MAX_DROP_ENTRIES`] entries of 1 to [`MAX_DROP_ENTRY_BYTES`] bytes),
    /// but not its times.
    pub fn decode(bytes: &[u8]) -> Result<Self, DropError> {
        if bytes.len() > MAX_DROP_RECORD_BYTES {
            return Err(DropError::TooLarge {
                found: bytes.len(),
                max: MAX_DROP_RECORD_BYTES,
            });
        }
        let Some((&tag, body)) = bytes.split_first() else {
            return Err(DropError::UnknownVersion { found: 0 });
        };
        if tag != DROP_TAG {
            return Err(DropError::UnknownVersion { found: tag });
        }
        let malformed = |e: postcard::Error| DropError::Malformed(e.to_string());
        let (count, mut rest) = postcard::take_from_bytes::<usize>(body).map_err(malformed)?;
        if count == 0 || count > MAX_DROP_ENTRIES {
            return Err(DropError::Entries { found: count });
        }
        let mut entries = Vec::with_capacity(count);
        for _ in 0..count {
            let (expires, after) = postcard::take_from_bytes::<u64>(rest).map_err(malformed)?;
            // Borrowed: the length is checked against the input before
            // anything is copied.
            let (sealed, after) = postcard::take_from_bytes::<&[u8]>(after).map_err(malformed)?;
            check_size(sealed.len())?;
            entries.push(DropEntry {
                expires,
                sealed: sealed.to_vec(),
            });
            rest = after;
        }
        if !rest.is_empty() {
            return Err(DropError::Malformed(format!(
                "{} trailing bytes",
                rest.len()
            )));
        }
        let record = Self { entries };
        Ok(record)
    }

    /// Full check of a record received at Unix time `now`: the limits of
    /// [`Self::decode`], and no entry expiring more than
    /// [`MAX_DROP_TTL_SECS`] from now. Entries already expired are dropped
    /// from the result; a record with none left is refused as expired.
    pub fn verify(bytes: &[u8], now: u64) -> Result<Self, DropError> {
        let mut record = Self::decode(bytes)?;
        if let Some(far) = record
            .entries
            .iter()
            .find(|e| e.expires > now.saturating_add(MAX_DROP_TTL_SECS))
        {
            return Err(DropError::ExpiryTooFar {
                expires: far.expires,
                now,
            });
        }
        let latest = record.latest_expiry().unwrap_or(0);
        record.entries.retain(|e| e.expires > now);
        if record.entries.is_empty() {
            return Err(DropError::Expired {
                expires: latest,
                now,
            });
        }
        Ok(record)
    }

    /// Merges two records at Unix time `now`: the union of their valid,
    /// live entries, one per sealed value (with the later expiry when both
    /// hold it); over [`MAX_DROP_ENTRIES`], those that expire last are
    /// kept. The result is in a canonical order (latest expiry first, then
    /// by sealed bytes), so merging is commutative and idempotent and
    /// every DHT node stores the same bytes for the same entries.
    pub fn merge(existing: &Self, incoming: &Self, now: u64) -> Self {
        let mut by_sealed: BTreeMap<&[u8], u64> = BTreeMap::new();
        for entry in existing.entries.iter().chain(&incoming.entries) {
            if !entry.is_valid(now) {
                continue;
            }
            let expires = by_sealed.entry(&entry.sealed).or_insert(entry.expires);
            *expires = (*expires).max(entry.expires);
        }
        let mut entries: Vec<DropEntry> = by_sealed
            .into_iter()
            .map(|(sealed, expires)| DropEntry {
                expires,
                sealed: sealed.to_vec(),
            })
            .collect();
        entries.sort_by(|a, b| {
            b.expires
                .cmp(&a.expires)
                .then_with(|| a.sealed.cmp(&b.sealed))
        });
        entries.truncate(MAX_DROP_ENTRIES);
        Self { entries }
    }

    /// The latest expiry among the entries (Unix seconds): the DHT store
    /// keeps the record until then.
    pub fn latest_expiry(&self) -> Option<u64> {
        self.entries.iter().map(|e| e.expires).max()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AccountKeypair;

    const NOW: u64 = 1_800_000_000;

    fn entry(byte: u8, expires: u64) -> DropEntry {
        DropEntry {
            expires,
            sealed: vec![byte; 100],
        }
    }

    #[test]
    fn the_key_depends_on_account_and_nospam() {
        let account = AccountKeypair::generate().public();
        let other = AccountKeypair::generate().public();
        let key = drop_key(&account, &Nospam([1, 2, 3, 4]));
        assert_eq!(key, drop_key(&account, &Nospam([1, 2, 3, 4])));
        assert_ne!(key, drop_key(&account, &Nospam([1, 2, 3, 5])));
        assert_ne!(key, drop_key(&other, &Nospam([1, 2, 3, 4])));
    }

    #[test]
    fn a_record_round_trips_and_a_full_one_fits_the_limit() {
        let full = RequestDrop {
            entries: (0..MAX_DROP_ENTRIES as u8)
                .map(|i| DropEntry {
                    expires: u64::MAX,
                    sealed: vec![i; MAX_DROP_ENTRY_BYTES],
                })
                .collect(),
        };
        let bytes = full.encode();
        assert!(bytes.len() <= MAX_DROP_RECORD_BYTES, "{}", bytes.len());
        assert_eq!(RequestDrop::decode(&bytes), Ok(full));
    }

    #[test]
    fn limits_are_enforced_when_decoding() {
        let empty = RequestDrop::default().encode();
        assert_eq!(
            RequestDrop::decode(&empty),
            Err(DropError::Entries { found: 0 })
        );

        let mut many = RequestDrop::default();
        for i in 0..=MAX_DROP_ENTRIES as u8 {
            many.entries.push(entry(i, NOW + 60));
        }
        assert_eq!(
            RequestDrop::decode(&many.encode()),
            Err(DropError::Entries {
                found: MAX_DROP_ENTRIES + 1
            })
        );

        let big = RequestDrop {
            entries: vec![DropEntry {
                expires: NOW + 60,
                sealed: vec![7; MAX_DROP_ENTRY_BYTES + 1],
            }],
        };
        assert_eq!(
            RequestDrop::decode(&big.encode()),
            Err(DropError::EntrySize {
                found: MAX_DROP_ENTRY_BYTES + 1,
                max: MAX_DROP_ENTRY_BYTES
            })
        );

        let blank = RequestDrop {
            entries: vec![DropEntry {
                expires: NOW + 60,
                sealed: Vec::new(),
            }],
        };
        assert_eq!(
            RequestDrop::decode(&blank.encode()),
            Err(DropError::EntrySize {
                found: 0,
                max: MAX_DROP_ENTRY_BYTES
            })
        );

        let mut trailing = RequestDrop {
            entries: vec![entry(1, NOW + 60)],
        }
        .encode();
        trailing.push(0);
        assert!(matches!(
            RequestDrop::decode(&trailing),
            Err(DropError::Malformed(_))
        ));
        assert_eq!(
            RequestDrop::decode(&[]),
            Err(DropError::UnknownVersion { found: 0 })
        );
        assert!(matches!(
            RequestDrop::decode(&vec![DROP_TAG; MAX_DROP_RECORD_BYTES + 1]),
            Err(DropError::TooLarge { .. })
        ));
    }

    #[test]
    fn verify_drops_expired_entries_and_refuses_far_ones() {
        let record = RequestDrop {
            entries: vec![entry(1, NOW - 1), entry(2, NOW + 60)],
        };
        let verified = RequestDrop::verify(&record.encode(), NOW).unwrap();
        assert_eq!(verified.entries, vec![entry(2, NOW + 60)]);

        let gone = RequestDrop {
            entries: vec![entry(1, NOW), entry(2, NOW - 5)],
        };
        assert_eq!(
            RequestDrop::verify(&gone.encode(), NOW),
            Err(DropError::Expired {
                expires: NOW,
                now: NOW
            })
        );

        let far = RequestDrop {
            entries: vec![entry(1, NOW + 60), entry(2, NOW + MAX_DROP_TTL_SECS + 1)],
        };
        assert!(matches!(
            RequestDrop::verify(&far.encode(), NOW),
            Err(DropError::ExpiryTooFar { .. })
        ));
        assert_eq!(entry(1, NOW + MAX_DROP_TTL_SECS).check(NOW), Ok(()));
    }

    #[test]
    fn merge_unions_deduplicates_and_keeps_the_latest_expiring() {
        let a = RequestDrop {
            entries: vec![entry(1, NOW + 10), entry(2, NOW + 20)],
        };
        let b = RequestDrop {
            entries: vec![entry(2, NOW + 30), entry(3, NOW - 1)],
        };
        let merged = RequestDrop::merge(&a, &b, NOW);
        assert_eq!(merged.entries, vec![entry(2, NOW + 30), entry(1, NOW + 10)]);

        let mut full = RequestDrop::default();
        for i in 0..MAX_DROP_ENTRIES as u8 {
            full.entries.push(entry(i, NOW + 100 + u64::from(i)));
        }
        let late = RequestDrop {
            entries: vec![entry(200, NOW + 1000)],
        };
        let early = RequestDrop {
            entries: vec![entry(201, NOW + 1)],
        };
        let merged = RequestDrop::merge(&full, &late, NOW);
        assert_eq!(merged.entries.len(), MAX_DROP_ENTRIES);
        assert_eq!(merged.entries[0], entry(200, NOW + 1000));
        assert!(!merged.entries.contains(&entry(0, NOW + 100)));
        assert_eq!(
            RequestDrop::merge(&merged, &early, NOW),
            merged,
            "an entry expiring sooner than all kept ones changes nothing"
        );
    }
}
