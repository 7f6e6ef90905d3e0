//! The `/kith/mailbox/1.0.0` messages (`kith_mailbox::protocol`):
//! `Request::decode` and `Response::decode`, and a response's refusal.
//!
//! Postcard reads over-long varints and the module promises no canonical
//! form, only that "the encoders refuse what the decoders would": so a
//! decoded message must encode, and decode again to itself.

#![no_main]

use kith_mailbox::protocol::{Request, Response};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = Request::decode(data) {
        let bytes = request.encode().expect("a decoded request encodes");
        assert_eq!(Request::decode(&bytes).as_ref(), Ok(&request));
    }
    if let Ok(response) = Response::decode(data) {
        let bytes = response.encode().expect("a decoded response encodes");
        assert_eq!(Response::decode(&bytes).as_ref(), Ok(&response));
        let _ = response.refusal();
    }
});
