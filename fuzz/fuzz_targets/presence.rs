//! Presence records (`PresenceRecord::decode` and `verify`,
//! `PresenceRecord::merge`, `PresenceShare::open`; `docs/presence.md`).
//!
//! Records are postcard, which reads over-long varints, so the check is on
//! values: a decoded record encodes and decodes to itself. A record that
//! verifies under its own key merges into nothing as itself, refuses to
//! merge again as nothing newer, and its entries open for the account's
//! share when the presence key is that account's (the seeds' are).

#![no_main]

use std::sync::OnceLock;

use kith_fuzz::{NOW, recipient};
use kith_proto::presence::{
    PresenceError, PresenceKeys, PresenceRecord, PresenceShare, record_key_for,
};
use libfuzzer_sys::fuzz_target;

/// The recipient account's share, derived once.
fn share() -> &'static PresenceShare {
    static SHARE: OnceLock<PresenceShare> = OnceLock::new();
    SHARE.get_or_init(|| PresenceKeys::derive(recipient()).share())
}

fuzz_target!(|data: &[u8]| {
    let Ok(record) = PresenceRecord::decode(data) else {
        return;
    };
    assert_eq!(
        PresenceRecord::decode(&record.encode()).as_ref(),
        Ok(&record)
    );

    let _ = share().open(&record, NOW);

    let key = record_key_for(&record.presence_key);
    if let Ok(verified) = PresenceRecord::verify(&key, data, NOW) {
        assert!(!verified.entries.is_empty());
        let merged = PresenceRecord::merge(None, verified.clone(), NOW).expect("merges into none");
        assert_eq!(merged, verified);
        assert!(matches!(
            PresenceRecord::merge(Some(&merged), verified.clone(), NOW),
            Err(PresenceError::Duplicate | PresenceError::Stale { .. })
        ));
        let _ = merged.latest_expiry();
    }
});
