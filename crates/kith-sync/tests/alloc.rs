//! Bad input is refused before the decoders allocate for it: over-size
//! input is not read at all, and a length field that claims more than the
//! input holds is caught before anything that long is allocated.

#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use kith_sync::{DecodeError, MAX_BATCH_OPS, Op, SYNC_VERSION, VersionVector, decode_batch};

/// The system allocator, counting bytes per thread.
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

/// Bytes allocated on this thread while `f` runs, and its result.
fn allocated_during<T>(f: impl FnOnce() -> T) -> (usize, T) {
    let before = ALLOCATED.with(Cell::get);
    let out = f();
    (ALLOCATED.with(Cell::get) - before, out)
}

/// Generous allowance for an error value and a few small fields.
const ALLOWANCE: usize = 1024;

#[test]
fn oversize_input_is_refused_before_allocation() {
    let huge = vec![SYNC_VERSION; 16 * 1024 * 1024];
    let (bytes, result) = allocated_during(|| Op::decode(&huge));
    assert!(matches!(result, Err(DecodeError::TooLarge { .. })));
    assert!(bytes <= ALLOWANCE, "op decoder allocated {bytes} bytes");
    let (bytes, result) = allocated_during(|| decode_batch(&huge));
    assert!(matches!(result, Err(DecodeError::TooLarge { .. })));
    assert!(bytes <= ALLOWANCE, "batch decoder allocated {bytes} bytes");
    let (bytes, result) = allocated_during(|| VersionVector::decode(&huge));
    assert!(matches!(result, Err(DecodeError::TooLarge { .. })));
    assert!(bytes <= ALLOWANCE, "vector decoder allocated {bytes} bytes");
}

#[test]
fn lengths_that_claim_more_than_the_input_allocate_nothing_for_it() {
    // A contact-added op whose card claims a megabyte it does not carry.
    let mut body = vec![0xb0; 32];
    body.extend([1, 1]); // Kith ID: one byte
    body.extend([3, b'B', b'o', b'b']);
    body.extend(postcard::to_allocvec(&1_000_000usize).unwrap());
    let mut op = vec![SYNC_VERSION];
    op.extend([0xa1; 32]);
    op.extend([1, 1, 0, 4]);
    op.extend(postcard::to_allocvec(&body.len()).unwrap());
    op.extend(&body);
    let (bytes, result) = allocated_during(|| Op::decode(&op));
    assert!(matches!(result, Err(DecodeError::Malformed(_))));
    assert!(bytes <= ALLOWANCE, "allocated {bytes} bytes");

    // The same with the op body's own length, and a message body's.
    let mut op = vec![SYNC_VERSION];
    op.extend([0xa1; 32]);
    op.extend([1, 1, 0, 0]);
    op.extend(postcard::to_allocvec(&1_000_000usize).unwrap());
    let (bytes, result) = allocated_during(|| Op::decode(&op));
    assert!(matches!(result, Err(DecodeError::Malformed(_))));
    assert!(bytes <= ALLOWANCE, "allocated {bytes} bytes");

    // A batch that claims the most ops and holds none.
    let mut batch = vec![SYNC_VERSION];
    batch.extend(postcard::to_allocvec(&MAX_BATCH_OPS).unwrap());
    let (bytes, result) = allocated_during(|| decode_batch(&batch));
    assert!(matches!(result, Err(DecodeError::Malformed(_))));
    assert!(bytes <= ALLOWANCE, "allocated {bytes} bytes");
}
