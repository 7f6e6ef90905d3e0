//! Request drops (`RequestDrop::decode` and `verify`, `RequestDrop::merge`;
//! `docs/requests.md`).
//!
//! Drops are postcard, which reads over-long varints, so a decoded drop
//! must encode and decode to itself (not to the input). Merging is what
//! every DHT node does with what it receives, and is documented as
//! commutative and idempotent with a canonical order: checked on the
//! decoded entries split in two.

#![no_main]

use kith_fuzz::NOW;
use kith_proto::request_drop::RequestDrop;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(record) = RequestDrop::decode(data) else {
        return;
    };
    assert_eq!(RequestDrop::decode(&record.encode()).as_ref(), Ok(&record));
    if let Ok(live) = RequestDrop::verify(data, NOW) {
        assert!(!live.entries.is_empty());
    }

    let half = record.entries.len() / 2;
    let a = RequestDrop {
        entries: record.entries[..half].to_vec(),
    };
    let b = RequestDrop {
        entries: record.entries[half..].to_vec(),
    };
    let ab = RequestDrop::merge(&a, &b, NOW);
    assert_eq!(ab, RequestDrop::merge(&b, &a, NOW));
    assert_eq!(RequestDrop::merge(&ab, &ab, NOW), ab);
    assert_eq!(
        RequestDrop::merge(&RequestDrop::default(), &record, NOW),
        ab
    );
    if !ab.entries.is_empty() {
        assert_eq!(RequestDrop::decode(&ab.encode()), Ok(ab));
    }
});
