//! Wire frames between accounts (`Payload::decode`, `docs/protocol.md`).
//!
//! Postcard reads over-long varints, and the docs promise no canonical
//! form for frames, so the check is on values: a decoded payload passes
//! the encoder's checks (Kith never refuses to send what it accepts) and
//! decodes again to the same payload. A `Devices` payload's list goes
//! through its own decoder too.

#![no_main]

use kith_proto::SignedDeviceList;
use kith_proto::wire::Payload;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(payload) = Payload::decode(data) else {
        return;
    };
    let bytes = payload.encode().expect("a decoded payload encodes");
    assert_eq!(Payload::decode(&bytes).as_ref(), Ok(&payload));
    if let Payload::Devices(list) = &payload {
        let _ = SignedDeviceList::decode(list);
    }
});
