//! Decoders on bad input: truncated, oversized, garbage, non-canonical and
//! out-of-range bytes each give a typed error, and nothing panics.

mod common;

use kith_proto::wire::{ChatMessage, Lamport, MAX_BODY_BYTES, MessageId, Timestamp};
use kith_sync::{
    DecodeError, EncodeError, InvalidOp, MAX_BATCH_BYTES, MAX_BATCH_OPS, MAX_OP_BYTES,
    MAX_VERSION_VECTOR_BYTES, Op, OpKind, SYNC_VERSION, VersionVector, decode_batch, encode_batch,
};
use proptest::prelude::*;

fn sample_ops() -> Vec<Op> {
    common::samples().into_iter().map(|(_, op)| op).collect()
}

#[test]
fn every_truncation_is_refused() {
    for op in sample_ops() {
        let bytes = op.encode().unwrap();
        for cut in 0..bytes.len() {
            assert!(
                Op::decode(&bytes[..cut]).is_err(),
                "{:?} cut at {cut}",
                op.kind.tag()
            );
        }
    }
    let batch = encode_batch(&sample_ops()).unwrap();
    for cut in 0..batch.len() {
        assert!(decode_batch(&batch[..cut]).is_err(), "batch cut at {cut}");
    }
    assert_eq!(Op::decode(&[]), Err(DecodeError::Empty));
    assert_eq!(decode_batch(&[]), Err(DecodeError::Empty));
    assert_eq!(VersionVector::decode(&[]), Err(DecodeError::Empty));
    assert!(matches!(
        VersionVector::decode(&[SYNC_VERSION, 1, 7, 7]),
        Err(DecodeError::Malformed(_))
    ));
}

#[test]
fn oversized_input_is_refused_unread() {
    let huge = vec![SYNC_VERSION; MAX_BATCH_BYTES + 1];
    assert_eq!(
        Op::decode(&huge[..MAX_OP_BYTES + 1]),
        Err(DecodeError::TooLarge {
            found: MAX_OP_BYTES + 1,
            max: MAX_OP_BYTES
        })
    );
    assert_eq!(
        decode_batch(&huge),
        Err(DecodeError::TooLarge {
            found: MAX_BATCH_BYTES + 1,
            max: MAX_BATCH_BYTES
        })
    );
    assert_eq!(
        VersionVector::decode(&huge[..MAX_VERSION_VECTOR_BYTES + 1]),
        Err(DecodeError::TooLarge {
            found: MAX_VERSION_VECTOR_BYTES + 1,
            max: MAX_VERSION_VECTOR_BYTES
        })
    );
}

#[test]
fn unknown_versions_and_trailing_bytes_are_refused() {
    let mut bytes = sample_ops()[0].encode().unwrap();
    bytes[0] = 2;
    assert_eq!(
        Op::decode(&bytes),
        Err(DecodeError::UnknownVersion { found: 2 })
    );
    assert_eq!(
        decode_batch(&[0, 0]),
        Err(DecodeError::UnknownVersion { found: 0 })
    );
    assert_eq!(
        VersionVector::decode(&[0xff]),
        Err(DecodeError::UnknownVersion { found: 0xff })
    );

    let mut bytes = sample_ops()[0].encode().unwrap();
    bytes.push(0);
    assert_eq!(
        Op::decode(&bytes),
        Err(DecodeError::TrailingBytes { count: 1 })
    );
    let mut batch = encode_batch(&sample_ops()).unwrap();
    batch.extend([1, 2]);
    assert_eq!(
        decode_batch(&batch),
        Err(DecodeError::TrailingBytes { count: 2 })
    );
    let mut vv = VersionVector::new().encode();
    vv.push(9);
    assert_eq!(
        VersionVector::decode(&vv),
        Err(DecodeError::TrailingBytes { count: 1 })
    );
}

/// Builds an op's bytes by hand: version, header fields, then the body.
fn raw(counter: &[u8], lamport: &[u8], kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![SYNC_VERSION];
    out.extend([0xa1; 32]);
    out.extend(counter);
    out.extend(lamport);
    out.push(0); // millis
    out.push(kind);
    out.extend(postcard::to_allocvec(&body.len()).unwrap());
    out.extend(body);
    out
}

#[test]
fn hand_made_ops_decode_as_expected() {
    // A profile name op written by hand decodes: the layout is as documented.
    let name = postcard::to_allocvec("Alice").unwrap();
    let op = Op::decode(&raw(&[1], &[1], 8, &name)).unwrap();
    assert_eq!(op.kind, OpKind::ProfileName("Alice".into()));
    // Kind 10 and above: held as unknown, body untouched.
    let op = Op::decode(&raw(&[1], &[1], 10, &[0xff, 0xfe])).unwrap();
    assert_eq!(
        op.kind,
        OpKind::Unknown {
            kind: 10,
            body: vec![0xff, 0xfe]
        }
    );
}

#[test]
fn non_canonical_encodings_are_refused() {
    let name = postcard::to_allocvec("Alice").unwrap();
    // Counter 1 as a two-byte varint.
    assert_eq!(
        Op::decode(&raw(&[0x81, 0x00], &[1], 8, &name)),
        Err(DecodeError::NonCanonical)
    );
    // Batch count 0 in two bytes.
    assert_eq!(
        decode_batch(&[SYNC_VERSION, 0x80, 0x00]),
        Err(DecodeError::NonCanonical)
    );
    // A string length inside the body as an over-long varint.
    let mut body = vec![0x85, 0x00];
    body.extend(b"Alice");
    assert_eq!(
        Op::decode(&raw(&[1], &[1], 8, &body)),
        Err(DecodeError::NonCanonical)
    );
}

#[test]
fn out_of_range_fields_are_refused() {
    let name = postcard::to_allocvec("Alice").unwrap();
    assert_eq!(
        Op::decode(&raw(&[0], &[1], 8, &name)),
        Err(DecodeError::Invalid(InvalidOp::Zero { field: "counter" }))
    );
    assert_eq!(
        Op::decode(&raw(&[1], &[0], 8, &name)),
        Err(DecodeError::Invalid(InvalidOp::Zero { field: "lamport" }))
    );
    let blank = postcard::to_allocvec(" ").unwrap();
    assert_eq!(
        Op::decode(&raw(&[1], &[1], 8, &blank)),
        Err(DecodeError::Invalid(InvalidOp::Empty {
            field: "profile name"
        }))
    );
    // A message body over the wire's limit, as no encoder would write it.
    let message = ChatMessage {
        id: MessageId([1; 16]),
        sent_at: Timestamp(1),
        lamport: Lamport(1),
        body: "y".repeat(MAX_BODY_BYTES + 1),
    };
    let body = postcard::to_allocvec(&([0u8; 32], message)).unwrap();
    assert!(matches!(
        Op::decode(&raw(&[1], &[1], 0, &body)),
        Err(DecodeError::Invalid(InvalidOp::TooLong {
            field: "message body",
            ..
        }))
    ));
    // A body with bytes left over.
    let mut long = name.clone();
    long.push(0);
    assert_eq!(
        Op::decode(&raw(&[1], &[1], 8, &long)),
        Err(DecodeError::TrailingBytes { count: 1 })
    );
    // A decision other than the three.
    let mut decided = vec![5; 32];
    decided.push(3);
    assert!(matches!(
        Op::decode(&raw(&[1], &[1], 6, &decided)),
        Err(DecodeError::Malformed(_))
    ));
    // More ops than a batch may hold.
    let count = postcard::to_allocvec(&(MAX_BATCH_OPS + 1)).unwrap();
    let mut batch = vec![SYNC_VERSION];
    batch.extend(count);
    assert!(matches!(
        decode_batch(&batch),
        Err(DecodeError::OutOfRange {
            field: "batch op count",
            ..
        })
    ));
    // More devices than a version vector may name.
    let count = postcard::to_allocvec(&300usize).unwrap();
    let mut vv = vec![SYNC_VERSION];
    vv.extend(count);
    assert!(matches!(
        VersionVector::decode(&vv),
        Err(DecodeError::OutOfRange { .. })
    ));
}

#[test]
fn encoders_refuse_what_decoders_would() {
    let mut op = sample_ops().remove(0);
    op.kind = OpKind::ProfileName("two\nlines".into());
    assert!(matches!(op.encode(), Err(EncodeError::Invalid(_))));
    assert!(matches!(
        encode_batch(std::slice::from_ref(&op)),
        Err(EncodeError::Invalid(_))
    ));
    let ok = sample_ops().remove(0);
    assert!(matches!(
        encode_batch(&vec![ok.clone(); MAX_BATCH_OPS + 1]),
        Err(EncodeError::TooManyOps { .. })
    ));
    // 4096 ops of 16 KiB are over the byte limit.
    let big = common::largest().remove(0);
    assert!(matches!(
        encode_batch(&vec![big; 100]),
        Err(EncodeError::TooLarge { .. })
    ));
    assert_eq!(decode_batch(&encode_batch(&[]).unwrap()), Ok(vec![]));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn decoders_never_panic_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = Op::decode(&bytes);
        let _ = decode_batch(&bytes);
        let _ = VersionVector::decode(&bytes);
        let mut versioned = vec![SYNC_VERSION];
        versioned.extend(&bytes);
        let _ = Op::decode(&versioned);
        let _ = decode_batch(&versioned);
        let _ = VersionVector::decode(&versioned);
    }

    /// Valid encodings with bytes changed: never a panic, and whatever
    /// still decodes is canonical (re-encodes to the same bytes).
    #[test]
    fn mutated_encodings_decode_canonically_or_not_at_all(
        which in 0usize..11,
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let ops = sample_ops();
        let mut bytes = ops[which % ops.len()].encode().unwrap();
        for (at, value) in &edits {
            let i = at.index(bytes.len());
            bytes[i] = *value;
        }
        if let Ok(op) = Op::decode(&bytes) {
            prop_assert_eq!(op.encode().unwrap(), bytes.clone());
        }
        let mut batch = encode_batch(&ops).unwrap();
        for (at, value) in &edits {
            let i = at.index(batch.len());
            batch[i] = *value;
        }
        if let Ok(decoded) = decode_batch(&batch) {
            prop_assert_eq!(encode_batch(&decoded).unwrap(), batch);
        }
    }

    #[test]
    fn every_valid_op_round_trips(op in common::any_op()) {
        let bytes = op.encode().unwrap();
        prop_assert!(bytes.len() <= MAX_OP_BYTES);
        prop_assert_eq!(op.encoded_len().unwrap(), bytes.len());
        prop_assert_eq!(Op::decode(&bytes).unwrap(), op.clone());
        let batch = encode_batch(std::slice::from_ref(&op)).unwrap();
        prop_assert_eq!(decode_batch(&batch).unwrap(), vec![op]);
    }
}
