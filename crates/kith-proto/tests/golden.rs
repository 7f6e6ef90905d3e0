//! Golden fixtures: encoded samples committed under `tests/fixtures/` that
//! this build must still read exactly as written.
//!
//! A failure here means an on-wire or user-visible format changed. If that
//! was intended, bump the format's version, keep reading the old one, and
//! regenerate with `KITH_BLESS_FIXTURES=1 cargo test -p kith-proto --test golden`.

use std::path::PathBuf;

use kith_proto::envelope;
use kith_proto::presence::{PresenceContents, PresenceKeys, PresenceRecord, PresenceShare};
use kith_proto::safety::SafetyNumber;
use kith_proto::wire::{
    ChatMessage, ContactCard, Delete, DeviceCard, Edit, FriendAccept, FriendRequest, Lamport,
    MessageId, Payload, Receipt, ReceiptKind, Timestamp, Typing,
};
use kith_proto::{AccountKeypair, KithId, Nospam};

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

fn alice() -> AccountKeypair {
    AccountKeypair::from_secret_bytes(&[0x11; 32])
}

fn bob() -> AccountKeypair {
    AccountKeypair::from_secret_bytes(&[0x22; 32])
}

fn alice_id() -> KithId {
    KithId::new(alice().public(), Nospam([0xde, 0xad, 0xbe, 0xef]))
}

#[test]
fn kith_id_text_v1() {
    let committed = fixture("kith-id-v1.txt", &alice_id().to_text());
    assert_eq!(KithId::parse(&committed).unwrap(), alice_id());
    assert_eq!(alice_id().to_text(), committed);
}

#[test]
fn safety_number_v1() {
    let number = SafetyNumber::new(&alice().public(), &bob().public()).to_string();
    let committed = fixture("safety-number-v1.txt", &number);
    assert_eq!(number, committed);
}

fn sample_card() -> ContactCard {
    ContactCard {
        presence: PresenceShare {
            public: [0x21; 32],
            content_key: [0x22; 32],
        },
        devices: vec![DeviceCard {
            peer_id: vec![0x23; 38],
            prekeys: vec![0x24; 65],
        }],
    }
}

fn samples() -> Vec<(&'static str, Payload)> {
    vec![
        (
            "wire-v1-friend-request.hex",
            Payload::FriendRequest(Box::new(FriendRequest {
                from: alice_id(),
                to_nospam: Nospam([1, 2, 3, 4]),
                display_name: "Alice".into(),
                message: "Hi Bob, it's Alice from the choir.".into(),
                sent_at: Timestamp(1_795_000_000_000),
                card: sample_card(),
            })),
        ),
        (
            "wire-v1-friend-accept.hex",
            Payload::FriendAccept(Box::new(FriendAccept {
                display_name: "Bob".into(),
                sent_at: Timestamp(1_795_000_050_000),
                card: sample_card(),
            })),
        ),
        (
            "wire-v1-edit.hex",
            Payload::Edit(Edit {
                id: MessageId([0x11; 16]),
                target: MessageId([0x5a; 16]),
                sent_at: Timestamp(1_795_000_013_000),
                body: "See you at 8.".into(),
            }),
        ),
        (
            "wire-v1-delete.hex",
            Payload::Delete(Delete {
                id: MessageId([0x12; 16]),
                target: MessageId([0x5a; 16]),
                sent_at: Timestamp(1_795_000_014_000),
            }),
        ),
        (
            "wire-v1-typing.hex",
            Payload::Typing(Typing { active: true }),
        ),
        (
            "wire-v1-chat.hex",
            Payload::Chat(ChatMessage {
                id: MessageId([0x5a; 16]),
                sent_at: Timestamp(1_795_000_012_345),
                lamport: Lamport(42),
                body: "See you at 7 — bring the sheet music.\nÀ bientôt!".into(),
            }),
        ),
        (
            "wire-v1-receipt-read.hex",
            Payload::Receipt(Receipt {
                kind: ReceiptKind::Read,
                ids: vec![MessageId([0x5a; 16]), MessageId([0x01; 16])],
                at: Timestamp(1_795_000_099_000),
            }),
        ),
    ]
}

#[test]
fn wire_v1_frames() {
    for (name, payload) in samples() {
        let fresh = hex::encode(payload.encode().unwrap());
        let committed = fixture(name, &fresh);
        let bytes = hex::decode(&committed).unwrap();
        assert_eq!(Payload::decode(&bytes).unwrap(), payload, "{name}");
        assert_eq!(fresh, committed, "{name}: encoding changed");
    }
}

#[test]
fn envelope_v1_opens() {
    // Envelopes are randomised, so the fixture is one sealed envelope that
    // must keep opening, not a byte-for-byte comparison.
    let payload = b"golden envelope payload";
    let fresh = hex::encode(envelope::seal(&alice(), &bob().public(), payload).unwrap());
    let committed = fixture("envelope-v1.hex", &fresh);
    let opened = envelope::open(&bob(), &hex::decode(committed).unwrap()).unwrap();
    assert_eq!(opened.sender, alice().public());
    assert_eq!(opened.payload, payload);
}

#[test]
fn presence_v1_record_verifies_and_opens() {
    // Like envelopes, records carry a random nonce: the fixture must keep
    // verifying (at a fixed time) and opening with alice's share.
    const NOW: u64 = 1_795_000_000;
    let keys = PresenceKeys::derive(&alice());
    let contents = PresenceContents {
        peer_id: vec![0x00, 0x24, 0x08, 0x01, 0x12, 0x20, 0x33],
        addresses: vec![vec![0x04, 127, 0, 0, 1, 0x06, 0x0f, 0xa1]],
        prekeys: Vec::new(),
    };
    let entry = keys.entry(&contents, 7, NOW + 3600).unwrap();
    let fresh = hex::encode(keys.record(entry).encode());
    let committed = fixture("presence-v1.hex", &fresh);
    let share = keys.share();
    let record =
        PresenceRecord::verify(&share.record_key(), &hex::decode(committed).unwrap(), NOW).unwrap();
    let opened = share.open(&record, NOW).unwrap();
    assert_eq!(opened.len(), 1);
    assert_eq!(opened[0].contents, contents);
    assert_eq!(opened[0].seq, 7);
}
