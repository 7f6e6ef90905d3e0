//! Signed device lists (`SignedDeviceList::decode`, `docs/devices.md`).
//!
//! The format is fixed-width and the decoder enforces every list rule, so
//! "decoding then encoding gives back the input" (the module's docs): a
//! decoded list encodes to exactly the input. Verifying it under the
//! account it claims must not panic, and a verified list names only
//! devices it can turn back into `PeerId`s.

#![no_main]

use kith_proto::SignedDeviceList;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(signed) = SignedDeviceList::decode(data) else {
        return;
    };
    assert_eq!(signed.encode(), data);
    if let Ok(list) = signed.verify(signed.claimed_account()) {
        assert_eq!(list.peers().count(), list.devices.len());
        for peer in list.peers() {
            assert!(list.contains(&peer));
        }
    }
});
