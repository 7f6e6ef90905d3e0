//! The engine's frames (`kith_core::frame`, `docs/messaging.md`): message
//! requests and responses, bundles, mail content, and sync requests and
//! responses. Every decoder gets the input.
//!
//! Frames are postcard, which reads over-long varints, and no canonical
//! form is promised, so each decoded value must encode and decode again to
//! itself. The payload frames a bundle or mail carries are read as wire
//! payloads too, as the engine does.

#![no_main]

use kith_core::frame::{self, FrameError, Mail};
use kith_proto::wire::Payload;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(items) = frame::decode_request(data) {
        let bytes = frame::encode_request(&items);
        assert_eq!(frame::decode_request(&bytes).as_ref(), Ok(&items));
    }
    if let Ok(payloads) = frame::decode_bundle(data) {
        let bytes = frame::encode_bundle(&payloads);
        assert_eq!(frame::decode_bundle(&bytes).as_ref(), Ok(&payloads));
        for payload in &payloads {
            let _ = Payload::decode(payload);
        }
    }
    if let Ok(mail) = frame::decode_mail(data) {
        let bytes = frame::encode_mail(&mail);
        assert_eq!(frame::decode_mail(&bytes).as_ref(), Ok(&mail));
        if let Mail::Bundle(payloads) = &mail {
            for payload in payloads {
                let _ = Payload::decode(payload);
            }
        }
    }
    // A response decodes only for the number of items it answers; the
    // count it holds is in the error for any other.
    if let Err(FrameError::ItemCount { found }) = frame::decode_response(data, usize::MAX) {
        let acks = frame::decode_response(data, found).expect("decodes for its own count");
        let count = found;
        let bytes = frame::encode_response(&acks);
        assert_eq!(frame::decode_response(&bytes, count), Ok(acks));
    }
    if let Ok(request) = frame::decode_sync_request(data) {
        let bytes = frame::encode_sync_request(&request);
        assert_eq!(frame::decode_sync_request(&bytes).as_ref(), Ok(&request));
    }
    if let Ok(response) = frame::decode_sync_response(data) {
        let bytes = frame::encode_sync_response(&response);
        assert_eq!(frame::decode_sync_response(&bytes).as_ref(), Ok(&response));
    }
});
