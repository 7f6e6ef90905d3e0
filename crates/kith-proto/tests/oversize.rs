//! Over-size input is refused before the decoder allocates for it.
//!
//! A counting allocator records how many bytes this thread allocates while a
//! decoder runs on input far over its limit; the decoder must refuse it
//! having allocated (almost) nothing, proving the length check comes first.

mod common;

use kith_proto::presence::{PresenceError, PresenceRecord};
use kith_proto::wire::{DecodeError, MAX_FRAME_BYTES, Payload};
use kith_proto::{AccountKeypair, KithId, envelope, qr};

#[global_allocator]
static GLOBAL: common::Counting = common::Counting;

/// Generous allowance for an error value; far below any input here.
const ALLOWANCE: usize = 256;

#[test]
fn oversize_input_is_refused_before_allocation() {
    let huge = vec![1u8; 64 * 1024 * 1024];
    let bob = AccountKeypair::from_secret_bytes(&[2; 32]);
    let text = "0".repeat(huge.len());

    let (bytes, result) = common::allocated_during(|| Payload::decode(&huge));
    assert!(matches!(
        result,
        Err(DecodeError::TooLarge {
            max: MAX_FRAME_BYTES,
            ..
        })
    ));
    assert!(bytes <= ALLOWANCE, "wire decoder allocated {bytes} bytes");

    let (bytes, result) = common::allocated_during(|| envelope::open(&bob, &huge));
    assert!(matches!(result, Err(envelope::OpenError::TooLarge { .. })));
    assert!(
        bytes <= ALLOWANCE,
        "envelope opener allocated {bytes} bytes"
    );

    let (bytes, result) = common::allocated_during(|| KithId::parse(&text));
    assert!(result.is_err());
    assert!(bytes <= ALLOWANCE, "ID parser allocated {bytes} bytes");

    let (bytes, result) = common::allocated_during(|| KithId::from_bytes(&huge));
    assert!(result.is_err());
    assert!(bytes <= ALLOWANCE, "ID reader allocated {bytes} bytes");

    let (bytes, result) = common::allocated_during(|| PresenceRecord::verify(&[0u8; 32], &huge, 0));
    assert!(matches!(result, Err(PresenceError::TooLarge { .. })));
    assert!(
        bytes <= ALLOWANCE,
        "presence decoder allocated {bytes} bytes"
    );

    let (bytes, result) = common::allocated_during(|| qr::read_image(&huge));
    assert!(matches!(result, Err(qr::ReadError::FileTooLarge { .. })));
    assert!(bytes <= ALLOWANCE, "QR reader allocated {bytes} bytes");
}
