//! The device-link frames (`kith_sync::link`, `docs/devices.md`, "Link
//! protocol (as built)"): `LinkRequest::decode`, `LinkResponse::decode`,
//! and the new device's `Joiner`, which reads whatever request frames a
//! peer sends.
//!
//! Frames have fixed-width fields, so a decoded frame encodes to exactly
//! the input. The Joiner is documented to never panic on any input: it is
//! given a Hello from one peer and then the input as that peer's next
//! request, and the input again from a peer it has never heard from.

#![no_main]

use std::sync::OnceLock;

use kith_fuzz::{NOW, device, link_secret};
use kith_proto::LinkCode;
use kith_sync::link::{Joiner, LinkRequest, LinkResponse};
use libfuzzer_sys::fuzz_target;
use libp2p_identity::PeerId;

/// The new device's link code and `PeerId`, the existing device's and a
/// stranger's, made once.
fn keys() -> &'static (LinkCode, PeerId, PeerId, PeerId) {
    static KEYS: OnceLock<(LinkCode, PeerId, PeerId, PeerId)> = OnceLock::new();
    KEYS.get_or_init(|| {
        let new = device(0x33);
        let code = LinkCode::generate_with(&new, link_secret(), Vec::new(), NOW).expect("a code");
        (
            code,
            new.peer_id(),
            device(0x44).peer_id(),
            device(0x55).peer_id(),
        )
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = LinkRequest::decode(data) {
        assert_eq!(request.encode().as_deref(), Ok(data));
    }
    if let Ok(response) = LinkResponse::decode(data) {
        assert_eq!(response.encode(), data);
    }

    let (code, me, existing, stranger) = keys();
    let mut joiner = Joiner::new(code.clone(), *me);
    let existing = *existing;
    let hello = LinkRequest::Hello { nonce_e: [7; 32] }
        .encode()
        .expect("a hello encodes");
    let _ = joiner.on_request(existing, &hello, NOW + 1);
    let _ = joiner.on_request(existing, data, NOW + 1);
    let _ = joiner.on_request(*stranger, data, NOW + 1);
    let _ = joiner.status(NOW + 1);
});
