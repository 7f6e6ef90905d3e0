//! Link codes: the binary form (`LinkCode::from_bytes`) and the
//! `kith-link:` text form (`LinkCode::parse`, base32 of any code length).
//!
//! The binary form has fixed-width fields and one encoding, so a decoded
//! code encodes back to the input; the text form is lenient, so the code
//! must survive `to_text` → `parse`.

#![no_main]

use kith_fuzz::NOW;
use kith_proto::LinkCode;
use libfuzzer_sys::fuzz_target;

fn round_trips(code: &LinkCode) {
    let again = LinkCode::parse(&code.to_text()).expect("a code's own text parses");
    assert_eq!(again.to_bytes(), code.to_bytes());
    assert_eq!(again.peer_id(), code.peer_id());
    let _ = code.check(NOW);
}

fuzz_target!(|data: &[u8]| {
    if let Ok(code) = LinkCode::from_bytes(data) {
        assert_eq!(code.to_bytes().as_slice(), data);
        round_trips(&code);
    }
    let text = String::from_utf8_lossy(data);
    if let Ok(code) = LinkCode::parse(&text) {
        round_trips(&code);
        let bytes = code.to_bytes();
        let again = LinkCode::from_bytes(&bytes).expect("a code's own bytes decode");
        assert_eq!(again.to_bytes(), bytes);
    }
});
