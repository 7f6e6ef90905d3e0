//! Sealed envelopes (`envelope::open`, `docs/protocol.md`).
//!
//! The input is used three ways: as an envelope (the framing checks before
//! the AEAD); as the inner layer (sender key, signature, payload) sealed
//! to the recipient by the documented layout (`kith_fuzz::seal_envelope_inner`),
//! so the checks behind the AEAD are reached; and as a payload sealed by
//! the real `envelope::seal`, which must open to the same payload and
//! sender, and for nobody else.

#![no_main]

use kith_fuzz::{recipient, seal_envelope_inner, sender};
use kith_proto::envelope::{self, MAX_PAYLOAD_BYTES, OpenError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let recipient = recipient();
    let _ = envelope::open(recipient, data);

    let sealed = seal_envelope_inner(&recipient.public(), data);
    if let Ok(opened) = envelope::open(recipient, &sealed) {
        // Only a correctly signed inner layer opens: key, signature, payload.
        assert_eq!(opened.sender.to_bytes().as_slice(), &data[..32]);
        assert_eq!(opened.payload.as_slice(), &data[96..]);
    }

    if data.len() <= MAX_PAYLOAD_BYTES {
        let sender = sender();
        let sealed = envelope::seal(sender, &recipient.public(), data).expect("seals");
        let opened = envelope::open(recipient, &sealed).expect("opens for its recipient");
        assert_eq!(opened.sender, sender.public());
        assert_eq!(opened.payload, data);
        assert_eq!(envelope::open(sender, &sealed), Err(OpenError::Decrypt));
    }
});
