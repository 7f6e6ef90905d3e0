//! Request drops: the golden fixture, the boundary with presence records,
//! the decoder's allocation bound, and properties of the merge.
//!
//! Regenerate the fixtures, after an intended format change, with
//! `KITH_BLESS_FIXTURES=1 cargo test -p kith-proto --test request_drop`.

mod common;

use std::path::PathBuf;

use kith_proto::presence::{PresenceError, PresenceRecord};
use kith_proto::request_drop::{
    DROP_TAG, DropEntry, DropError, MAX_DROP_ENTRIES, MAX_DROP_ENTRY_BYTES, MAX_DROP_RECORD_BYTES,
    MAX_DROP_TTL_SECS, RequestDrop, drop_key,
};
use kith_proto::{AccountKeypair, Nospam};
use proptest::prelude::*;

#[global_allocator]
static GLOBAL: common::Counting = common::Counting;

// ---- fixtures ----

fn fixture(name: &str, fresh: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    if std::env::var_os("KITH_BLESS_FIXTURES").is_some() {
        std::fs::write(&path, format!("{fresh}\n")).unwrap();
    }
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim_end()
        .to_owned()
}

const NOW: u64 = 1_795_000_000;

fn sample() -> RequestDrop {
    RequestDrop {
        entries: vec![
            DropEntry {
                expires: NOW + 7200,
                sealed: vec![0x5a; 150],
            },
            DropEntry {
                expires: NOW + 3600,
                sealed: (0..=255).collect(),
            },
        ],
    }
}

#[test]
fn request_drop_v1_record() {
    let fresh = hex::encode(sample().encode());
    let committed = fixture("request-drop-v1.hex", &fresh);
    let bytes = hex::decode(&committed).unwrap();
    assert_eq!(RequestDrop::decode(&bytes), Ok(sample()));
    assert_eq!(RequestDrop::verify(&bytes, NOW), Ok(sample()));
    assert_eq!(fresh, committed, "encoding changed");
}

#[test]
fn request_drop_v1_key() {
    let alice = AccountKeypair::from_secret_bytes(&[0x11; 32]);
    let key = drop_key(&alice.public(), &Nospam([0xde, 0xad, 0xbe, 0xef]));
    let committed = fixture("request-drop-key-v1.hex", &hex::encode(key));
    assert_eq!(hex::encode(key), committed, "drop key derivation changed");
}

#[test]
fn presence_and_drop_decoders_refuse_each_others_records() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/presence-v1.hex");
    let presence = hex::decode(std::fs::read_to_string(path).unwrap().trim_end()).unwrap();
    assert_eq!(
        RequestDrop::decode(&presence),
        Err(DropError::UnknownVersion { found: 0x01 })
    );
    assert_eq!(
        PresenceRecord::decode(&sample().encode()),
        Err(PresenceError::UnknownVersion { found: DROP_TAG })
    );
}

#[test]
fn oversize_input_is_refused_before_allocation() {
    let huge = vec![DROP_TAG; 64 * 1024 * 1024];
    let (bytes, result) = common::allocated_during(|| RequestDrop::verify(&huge, NOW));
    assert!(matches!(result, Err(DropError::TooLarge { .. })));
    assert!(bytes <= 256, "drop decoder allocated {bytes} bytes");

    // Within the size limit, but claiming a billion entries, or an entry of
    // a gigabyte: refused from the claim, not by running out of input.
    let mut many = vec![DROP_TAG];
    many.extend_from_slice(&[0x80, 0x94, 0xeb, 0xdc, 0x03]);
    let (bytes, result) = common::allocated_during(|| RequestDrop::decode(&many));
    assert_eq!(
        result,
        Err(DropError::Entries {
            found: 1_000_000_000
        })
    );
    assert!(bytes <= 256, "drop decoder allocated {bytes} bytes");

    let mut long = vec![DROP_TAG, 1, 0x01];
    long.extend_from_slice(&[0x80, 0x94, 0xeb, 0xdc, 0x03]);
    long.resize(MAX_DROP_RECORD_BYTES, 0);
    let (bytes, result) = common::allocated_during(|| RequestDrop::decode(&long));
    assert!(matches!(result, Err(DropError::Malformed(_))));
    assert!(bytes <= 256, "drop decoder allocated {bytes} bytes");
}

// ---- properties ----

/// Entries drawn from a small pool of sealed values and times around NOW,
/// so that merges meet duplicates, expired entries and full records.
fn entry() -> impl Strategy<Value = DropEntry> {
    (0u8..40, 0u64..200).prop_map(|(tag, offset)| DropEntry {
        expires: NOW - 50 + offset,
        sealed: vec![tag; 1 + usize::from(tag) * 7],
    })
}

fn record() -> impl Strategy<Value = RequestDrop> {
    proptest::collection::vec(entry(), 0..=MAX_DROP_ENTRIES)
        .prop_map(|entries| RequestDrop { entries })
}

proptest! {
    #[test]
    fn merge_is_commutative(a in record(), b in record()) {
        prop_assert_eq!(RequestDrop::merge(&a, &b, NOW), RequestDrop::merge(&b, &a, NOW));
    }

    #[test]
    fn merge_is_idempotent(a in record(), b in record()) {
        let once = RequestDrop::merge(&a, &b, NOW);
        prop_assert_eq!(RequestDrop::merge(&once, &once, NOW), once.clone());
        prop_assert_eq!(RequestDrop::merge(&once, &b, NOW), once.clone());
        prop_assert_eq!(RequestDrop::merge(&once, &RequestDrop::default(), NOW), once);
    }

    #[test]
    fn merge_is_associative(a in record(), b in record(), c in record()) {
        let left = RequestDrop::merge(&RequestDrop::merge(&a, &b, NOW), &c, NOW);
        let right = RequestDrop::merge(&a, &RequestDrop::merge(&b, &c, NOW), NOW);
        prop_assert_eq!(left, right);
    }

    #[test]
    fn merge_is_bounded_live_and_distinct(a in record(), b in record()) {
        let merged = RequestDrop::merge(&a, &b, NOW);
        prop_assert!(merged.entries.len() <= MAX_DROP_ENTRIES);
        let mut sealed: Vec<&[u8]> = merged.entries.iter().map(|e| e.sealed.as_slice()).collect();
        sealed.sort();
        sealed.dedup();
        prop_assert_eq!(sealed.len(), merged.entries.len());
        for entry in &merged.entries {
            prop_assert!(entry.check(NOW).is_ok());
        }
        // Nothing live is lost unless the record is full, and then only
        // entries expiring no later than every kept one.
        let kept_min = merged.entries.iter().map(|e| e.expires).min().unwrap_or(0);
        for entry in a.entries.iter().chain(&b.entries).filter(|e| e.expires > NOW) {
            let kept = merged.entries.iter().any(|k| k.sealed == entry.sealed && k.expires >= entry.expires);
            prop_assert!(kept || (merged.entries.len() == MAX_DROP_ENTRIES && entry.expires <= kept_min));
        }
        // A merged record that holds anything verifies as it is.
        if !merged.entries.is_empty() {
            prop_assert_eq!(RequestDrop::verify(&merged.encode(), NOW), Ok(merged.clone()));
        }
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut tagged = vec![DROP_TAG];
        tagged.extend_from_slice(&bytes);
        let _ = RequestDrop::decode(&bytes);
        if let Ok(record) = RequestDrop::verify(&tagged, NOW) {
            prop_assert!(record.entries.len() <= MAX_DROP_ENTRIES);
            prop_assert!(record.entries.iter().all(|e| e.sealed.len() <= MAX_DROP_ENTRY_BYTES
                && e.expires > NOW && e.expires <= NOW + MAX_DROP_TTL_SECS));
        }
    }
}
