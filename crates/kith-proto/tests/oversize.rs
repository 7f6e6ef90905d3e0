//! Over-size input is refused before the decoder allocates for it.
//!
//! A counting allocator records how many bytes this thread allocates while a
//! decoder runs on input far over its limit; the decoder must refuse it
//! having allocated (almost) nothing, proving the length check comes first.

#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use kith_proto::presence::{PresenceError, PresenceRecord};
use kith_proto::wire::{DecodeError, MAX_FRAME_BYTES, Payload};
use kith_proto::{AccountKeypair, KithId, envelope, qr};

struct Counting;

thread_local! {
    static ALLOCATED: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: defers every operation to the system allocator unchanged; the
// thread-local counter is a const-initialised `Cell`, which never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATED.with(|a| a.set(a.get() + layout.size()));
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATED.with(|a| a.set(a.get() + new_size));
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Bytes allocated on this thread while `f` runs.
fn allocated_during<T>(f: impl FnOnce() -> T) -> (usize, T) {
    let before = ALLOCATED.with(Cell::get);
    let out = f();
    (ALLOCATED.with(Cell::get) - before, out)
}

/// Generous allowance for an error value; far below any input here.
const ALLOWANCE: usize = 256;

#[test]
fn oversize_input_is_refused_before_allocation() {
    let huge = vec![1u8; 64 * 1024 * 1024];
    let bob = AccountKeypair::from_secret_bytes(&[2; 32]);
    let text = "0".repeat(huge.len());

    let (bytes, result) = allocated_during(|| Payload::decode(&huge));
    assert!(matches!(
        result,
        Err(DecodeError::TooLarge {
            max: MAX_FRAME_BYTES,
            ..
        })
    ));
    assert!(bytes <= ALLOWANCE, "wire decoder allocated {bytes} bytes");

    let (bytes, result) = allocated_during(|| envelope::open(&bob, &huge));
    assert!(matches!(result, Err(envelope::OpenError::TooLarge { .. })));
    assert!(
        bytes <= ALLOWANCE,
        "envelope opener allocated {bytes} bytes"
    );

    let (bytes, result) = allocated_during(|| KithId::parse(&text));
    assert!(result.is_err());
    assert!(bytes <= ALLOWANCE, "ID parser allocated {bytes} bytes");

    let (bytes, result) = allocated_during(|| KithId::from_bytes(&huge));
    assert!(result.is_err());
    assert!(bytes <= ALLOWANCE, "ID reader allocated {bytes} bytes");

    let (bytes, result) = allocated_during(|| PresenceRecord::verify(&[0u8; 32], &huge, 0));
    assert!(matches!(result, Err(PresenceError::TooLarge { .. })));
    assert!(
        bytes <= ALLOWANCE,
        "presence decoder allocated {bytes} bytes"
    );

    let (bytes, result) = allocated_during(|| qr::read_image(&huge));
    assert!(matches!(result, Err(qr::ReadError::FileTooLarge { .. })));
    assert!(bytes <= ALLOWANCE, "QR reader allocated {bytes} bytes");
}
