//! The sync encodings (`kith_sync::codec` and `version`, `docs/sync.md`):
//! `Op::decode`, `decode_batch` and `VersionVector::decode`, and a replica
//! that applies a decoded batch.
//!
//! The docs promise one encoding per value ("decoding and re-encoding
//! gives back the input"), so each decoded value encodes to exactly the
//! input. A replica that applied a batch answers an empty version vector
//! with ops that encode within the batch limits, and a fresh replica that
//! applies that answer holds the same ops and shows the same state (the
//! state is a pure function of the ops held).

#![no_main]

use kith_sync::{
    DeviceId, Limits, MAX_BATCH_BYTES, MAX_BATCH_OPS, Op, Replica, VersionVector, decode_batch,
    encode_batch,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(op) = Op::decode(data) {
        assert_eq!(op.encode().as_deref(), Ok(data));
    }
    if let Ok(vector) = VersionVector::decode(data) {
        assert_eq!(vector.encode(), data);
    }
    let Ok(ops) = decode_batch(data) else {
        return;
    };
    assert_eq!(encode_batch(&ops).as_deref(), Ok(data));
    for op in &ops {
        assert_eq!(
            Op::decode(&op.encode().expect("a decoded op encodes")).as_ref(),
            Ok(op)
        );
    }

    let local = DeviceId([0xee; 32]);
    let mut replica = Replica::new(local, Limits::default());
    let _ = replica.apply_all(ops);
    let answer = replica.missing_for(&VersionVector::new(), MAX_BATCH_OPS, MAX_BATCH_BYTES);
    let bytes = encode_batch(&answer).expect("an answer encodes");
    assert_eq!(decode_batch(&bytes).as_ref(), Ok(&answer));
    let mut other = Replica::new(local, Limits::default());
    let outcome = other.apply_all(answer);
    assert!(outcome.refused.is_empty(), "{:?}", outcome.refused);
    assert_eq!(other.version_vector(), replica.version_vector());
    assert_eq!(other.state(), replica.state());
});
