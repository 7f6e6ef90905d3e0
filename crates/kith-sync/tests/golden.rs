//! Golden fixtures: encoded samples committed under `tests/fixtures/` that
//! this build must still read exactly as written — one op of each kind, a
//! version vector and a batch.
//!
//! A failure here means the sync format changed. If that was intended, bump
//! `SYNC_VERSION`, keep reading the old one, and regenerate with
//! `KITH_BLESS_FIXTURES=1 cargo test -p kith-sync --test golden`.

mod common;

use std::path::PathBuf;

use kith_sync::{
    Limits, MAX_OP_BYTES, Op, OpKind, Replica, VersionVector, decode_batch, encode_batch,
};

fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn blessing() -> bool {
    std::env::var_os("KITH_BLESS_FIXTURES").is_some()
}

/// Returns the committed fixture, or writes `fresh` as the fixture when
/// blessing.
fn fixture(name: &str, fresh: &str) -> String {
    let path = fixture_path(name);
    if blessing() {
        std::fs::write(&path, format!("{fresh}\n")).unwrap();
    }
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim_end()
        .to_owned()
}

#[test]
fn op_v1_each_kind() {
    for (name, op) in common::samples() {
        let fresh = hex::encode(op.encode().unwrap());
        let committed = fixture(name, &fresh);
        let bytes = hex::decode(&committed).unwrap();
        assert_eq!(Op::decode(&bytes).unwrap(), op, "{name}");
        assert_eq!(fresh, committed, "{name}: encoding changed");
    }
}

#[test]
fn every_known_kind_has_a_fixture() {
    let mut tags: Vec<u32> = common::samples()
        .iter()
        .map(|(_, op)| op.kind.tag())
        .filter(|&t| t < kith_sync::FIRST_UNKNOWN_KIND)
        .collect();
    tags.sort_unstable();
    assert_eq!(tags, (0..kith_sync::FIRST_UNKNOWN_KIND).collect::<Vec<_>>());
}

#[test]
fn batch_and_version_vector_v1() {
    let ops: Vec<Op> = common::samples().into_iter().map(|(_, op)| op).collect();
    let fresh = hex::encode(encode_batch(&ops).unwrap());
    let committed = fixture("batch-v1.hex", &fresh);
    assert_eq!(
        decode_batch(&hex::decode(&committed).unwrap()).unwrap(),
        ops
    );
    assert_eq!(fresh, committed, "batch encoding changed");

    let mut replica = Replica::new(common::ALICE_LAPTOP, Limits::default());
    replica.apply_all(ops);
    let mut other = kith_sync::DeviceId([0x02; 32]);
    other.0[31] = 0x80;
    replica
        .apply(Op {
            id: kith_sync::OpId {
                device: other,
                counter: 1,
            },
            stamp: kith_sync::Stamp {
                lamport: 300,
                millis: 0,
            },
            kind: OpKind::ProfileName("Alice".into()),
        })
        .unwrap();
    let vv = replica.version_vector();
    let fresh = hex::encode(vv.encode());
    let committed = fixture("version-vector-v1.hex", &fresh);
    assert_eq!(
        VersionVector::decode(&hex::decode(&committed).unwrap()).unwrap(),
        vv
    );
    assert_eq!(fresh, committed, "version vector encoding changed");
}

#[test]
fn the_largest_op_of_each_kind_fits() {
    for op in common::largest() {
        let len = op.encode().unwrap().len();
        assert!(len <= MAX_OP_BYTES, "{} is {len} bytes", op.kind.tag());
        assert_eq!(Op::decode(&op.encode().unwrap()).unwrap(), op);
    }
    // And a whole op fits in one mailbox item, so any op can travel alone
    // through the account's mailbox.
    const { assert!(MAX_OP_BYTES + 16 < kith_proto::mailbox::MAX_CONTENT_BYTES) };
}
