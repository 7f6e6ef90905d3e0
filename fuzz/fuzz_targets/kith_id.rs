//! Kith IDs: the 39-byte binary form (`KithId::from_bytes`) and the text
//! and `kith:` link forms (`KithId::parse`, which runs the base32 decoder).
//!
//! The binary form has one encoding, so a decoded ID encodes back to the
//! input. The text form is read leniently (case, look-alikes, separators,
//! `kith:` or `kith://`), so only the ID itself must survive a round trip
//! through `to_text` and `to_uri`.

#![no_main]

use kith_proto::KithId;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(id) = KithId::from_bytes(data) {
        assert_eq!(id.to_bytes().as_slice(), data);
        assert_eq!(KithId::parse(&id.to_text()), Ok(id));
    }
    let text = String::from_utf8_lossy(data);
    if let Ok(id) = KithId::parse(&text) {
        assert_eq!(KithId::parse(&id.to_text()), Ok(id));
        assert_eq!(KithId::parse(&id.to_uri()), Ok(id));
        assert_eq!(KithId::from_bytes(&id.to_bytes()), Ok(id));
    }
});
