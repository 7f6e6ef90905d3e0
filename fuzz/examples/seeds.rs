//! Writes the seed corpora under `fuzz/corpus/<target>/`: a few small,
//! valid encodings per target, made by the real encoders.
//!
//! ```text
//! cargo run --manifest-path fuzz/Cargo.toml --target-dir fuzz/target --example seeds
//! ```
//!
//! Each run replaces the `seed-*` files of every target (other files, such
//! as regression inputs added by hand, are left alone). Values that embed
//! fresh randomness (envelopes' ephemeral keys, item IDs, presence nonces)
//! differ from run to run; everything else is the same every time.

use std::fs;
use std::path::{Path, PathBuf};

use kith_core::frame::{
    self, Ack, Item, Mail, Refusal, SyncMail, SyncRefusal, SyncRequest, SyncResponse,
};
use kith_fuzz::{
    BUNDLE_NONCE, NOW, device, envelope_inner, link_secret, new_device, open_bundle, recipient,
    seal_bundle, seal_envelope_inner, sender,
};
use kith_mailbox::protocol::{Denial, Request, Response, StoredItem};
use kith_proto::devices::{DeviceList, ListedDevice};
use kith_proto::envelope;
use kith_proto::mailbox::{
    DepositRefusal, FetchAck, FetchChallenge, MailboxItem, SenderStamp, WitnessReceipt,
    mailbox_address, node_key,
};
use kith_proto::presence::{PresenceContents, PresenceKeys};
use kith_proto::request_drop::{DropEntry, RequestDrop};
use kith_proto::wire::{
    ChatMessage, ContactCard, Delete, DeviceCard, Edit, FriendAccept, FriendRequest, Lamport,
    MessageId, Payload, Receipt, ReceiptKind, Timestamp, Typing,
};
use kith_proto::{AccountKeypair, KithId, LinkBundle, LinkCode, Nospam, SignedDeviceList};
use kith_store::profile::{Identity, Profile};
use kith_store::store::META_TREE;
use kith_store::{Backend, KdfParams, MemoryBackend, Passphrase, Store};
use kith_sync::link::{LinkRefusal, LinkRequest, LinkResponse};
use kith_sync::{
    Decision, DeviceId, Limits, Op, OpId, OpKind, Position, Replica, Stamp, encode_batch,
};

/// Named seeds for one target.
type Seeds = Vec<(&'static str, Vec<u8>)>;
/// What makes one target's seeds.
type Generator = fn() -> Seeds;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let targets: [(&str, Generator); 14] = [
        ("kith_id", kith_id),
        ("link_code", link_code),
        ("wire", wire),
        ("envelope", envelope_seeds),
        ("presence", presence),
        ("request_drop", request_drop),
        ("devices", devices),
        ("link_bundle", link_bundle),
        ("mailbox_values", mailbox_values),
        ("mailbox_protocol", mailbox_protocol),
        ("sync_ops", sync_ops),
        ("sync_link", sync_link),
        ("core_frames", core_frames),
        ("store_records", store_records),
    ];
    for (target, make) in targets {
        let dir = root.join(target);
        fs::create_dir_all(&dir)?;
        for entry in fs::read_dir(&dir)? {
            let path = entry?.path();
            if name_of(&path).starts_with("seed-") {
                fs::remove_file(&path)?;
            }
        }
        let seeds = make();
        let total: usize = seeds.iter().map(|(_, b)| b.len()).sum();
        for (name, bytes) in &seeds {
            fs::write(dir.join(format!("seed-{name}")), bytes)?;
        }
        println!("{target}: {} seeds, {total} bytes", seeds.len());
    }
    Ok(())
}

fn name_of(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn kith_id() -> Seeds {
    let id = KithId::new(recipient().public(), Nospam([1, 2, 3, 4]));
    let text = id.to_text();
    let spaced: String = text
        .chars()
        .enumerate()
        .flat_map(|(i, c)| (i > 0 && i % 7 == 0).then_some('-').into_iter().chain([c]))
        .collect();
    vec![
        ("bytes", id.to_bytes().to_vec()),
        ("text", text.clone().into_bytes()),
        ("uri", id.to_uri().into_bytes()),
        (
            "lower-slashes",
            format!("kith://{}", text.to_lowercase()).into_bytes(),
        ),
        ("spaced", format!("  {spaced}\n").into_bytes()),
    ]
}

fn code(addresses: Vec<Vec<u8>>) -> LinkCode {
    LinkCode::generate_with(&device(0x33), link_secret(), addresses, NOW).expect("a link code")
}

fn link_code() -> Seeds {
    let bare = code(Vec::new());
    let addressed = code(vec![vec![4, 127, 0, 0, 1, 6, 0x10, 0x92], vec![0x2f; 20]]);
    vec![
        ("bytes", bare.to_bytes().to_vec()),
        ("bytes-addresses", addressed.to_bytes().to_vec()),
        ("text", bare.to_text().into_bytes()),
        (
            "text-lower",
            addressed.to_text().to_lowercase().into_bytes(),
        ),
    ]
}

fn card() -> ContactCard {
    ContactCard {
        presence: PresenceKeys::derive(sender()).share(),
        devices: vec![DeviceCard {
            peer_id: device(1).peer_id().to_bytes(),
            prekeys: vec![2; 40],
        }],
    }
}

fn device_list(account: &AccountKeypair, peers: &[u8]) -> SignedDeviceList {
    let devices = peers
        .iter()
        .map(|&seed| ListedDevice::new(&device(seed).peer_id(), format!("Device {seed}"), NOW))
        .collect();
    DeviceList::sign(account, 1, NOW, devices).expect("a device list")
}

fn wire() -> Seeds {
    let payloads: Vec<(&'static str, Payload)> = vec![
        (
            "friend-request",
            Payload::FriendRequest(Box::new(FriendRequest {
                from: KithId::new(sender().public(), Nospam([9; 4])),
                to_nospam: Nospam([1, 2, 3, 4]),
                display_name: "Sam".into(),
                message: "from the climbing club".into(),
                sent_at: Timestamp(NOW * 1000),
                card: card(),
            })),
        ),
        (
            "chat",
            Payload::Chat(ChatMessage {
                id: MessageId([3; 16]),
                sent_at: Timestamp(NOW * 1000),
                lamport: Lamport(7),
                body: "hello\nworld".into(),
            }),
        ),
        (
            "receipt",
            Payload::Receipt(Receipt {
                kind: ReceiptKind::Read,
                ids: vec![MessageId([3; 16]), MessageId([4; 16])],
                at: Timestamp(NOW * 1000),
            }),
        ),
        (
            "friend-accept",
            Payload::FriendAccept(Box::new(FriendAccept {
                display_name: "Bob".into(),
                sent_at: Timestamp(2),
                card: card(),
            })),
        ),
        ("typing", Payload::Typing(Typing { active: true })),
        (
            "edit",
            Payload::Edit(Edit {
                id: MessageId([5; 16]),
                target: MessageId([3; 16]),
                sent_at: Timestamp(3),
                body: "fixed".into(),
            }),
        ),
        (
            "delete",
            Payload::Delete(Delete {
                id: MessageId([6; 16]),
                target: MessageId([3; 16]),
                sent_at: Timestamp(4),
            }),
        ),
        (
            "devices",
            Payload::Devices(device_list(sender(), &[1, 2]).encode()),
        ),
    ];
    payloads
        .into_iter()
        .map(|(name, p)| (name, p.encode().expect("a payload encodes")))
        .collect()
}

fn envelope_seeds() -> Seeds {
    let to = recipient().public();
    // The target's sealer, written from docs/protocol.md, must agree with
    // the real opener.
    let opened = envelope::open(
        recipient(),
        &seal_envelope_inner(&to, &envelope_inner(sender(), &to, b"hello")),
    )
    .expect("an inner layer sealed by the documented layout opens");
    assert_eq!(opened.payload, b"hello");
    vec![
        ("inner", envelope_inner(sender(), &to, b"hello")),
        ("inner-empty", envelope_inner(sender(), &to, b"")),
        (
            "sealed",
            envelope::seal(sender(), &to, b"hi bob").expect("seals"),
        ),
    ]
}

fn presence_contents(seed: u8) -> PresenceContents {
    PresenceContents {
        peer_id: device(seed).peer_id().to_bytes(),
        addresses: vec![vec![4, 127, 0, 0, 1, 6, 0x10, 0x92]],
        prekeys: vec![seed; 16],
    }
}

fn presence() -> Seeds {
    let keys = PresenceKeys::derive(recipient());
    let entry = |seed: u8, seq: u64| {
        keys.entry(&presence_contents(seed), seq, NOW + 3600)
            .expect("an entry")
    };
    let one = keys.record(entry(1, 1));
    let mut two = keys.record(entry(1, 2));
    two.entries.push(entry(2, 5));
    vec![("one-device", one.encode()), ("two-devices", two.encode())]
}

fn request_drop() -> Seeds {
    let entry = |byte: u8, expires: u64| DropEntry {
        expires,
        sealed: vec![byte; 24],
    };
    let one = RequestDrop {
        entries: vec![entry(1, NOW + 3600)],
    };
    let three = RequestDrop::merge(
        &one,
        &RequestDrop {
            entries: vec![entry(2, NOW + 60), entry(3, NOW + 7200)],
        },
        NOW,
    );
    let expired = RequestDrop {
        entries: vec![entry(4, NOW - 1), entry(5, NOW + 10)],
    };
    vec![
        ("one", one.encode()),
        ("three", three.encode()),
        ("one-expired", expired.encode()),
    ]
}

fn devices() -> Seeds {
    vec![
        ("one", device_list(recipient(), &[0x33]).encode()),
        ("three", device_list(recipient(), &[1, 2, 0x33]).encode()),
    ]
}

fn bundle(sync: Vec<u8>) -> LinkBundle {
    let account = AccountKeypair::from_secret_bytes(&recipient().secret_bytes());
    let device_list = device_list(&account, &[1, 0x33]);
    LinkBundle {
        account,
        nospam: Nospam([1, 2, 3, 4]),
        display_name: "Sam".into(),
        device_list,
        sync,
    }
}

fn link_bundle() -> Seeds {
    let (secret, peer) = (link_secret(), new_device());
    let seal = |b: LinkBundle| b.seal_with(&secret, &peer, BUNDLE_NONCE).expect("seals");
    let opened = |sealed: &[u8]| open_bundle(&secret, &peer, sealed).expect("opens by the spec");
    let empty = seal(bundle(Vec::new()));
    let history = seal(bundle(sync_batch()));
    // The target's sealer, written from docs/devices.md, must agree with
    // the real one byte for byte, and with the real opener.
    assert_eq!(seal_bundle(&secret, &peer, &opened(&history)), history);
    LinkBundle::open(
        &seal_bundle(&secret, &peer, &opened(&empty)),
        &secret,
        &peer,
    )
    .expect("an opened form sealed by the documented layout opens");
    vec![
        ("opened-empty", opened(&empty)),
        ("opened-history", opened(&history)),
        ("sealed", empty),
    ]
}

fn mailbox_item(content: &[u8]) -> MailboxItem {
    MailboxItem::seal(sender(), &recipient().public(), content, NOW + 3600, 0).expect("an item")
}

fn mailbox_values() -> Seeds {
    let item = mailbox_item(b"hi");
    let stamp = SenderStamp::of(&item);
    let volunteer = device(0x44);
    let receipt = WitnessReceipt::sign(&volunteer, item.item_id, NOW * 1000).expect("a receipt");
    let challenge = FetchChallenge::new(
        mailbox_address(&recipient().public()),
        node_key(&volunteer).expect("a node key"),
        NOW,
    );
    let proof = challenge.answer(recipient());
    let ack = FetchAck::sign(recipient(), vec![item.item_id, [7; 16]]).expect("an ack");
    vec![
        ("item", item.encode().expect("encodes")),
        ("stamp", stamp.wrap(b"content").expect("wraps")),
        ("receipt", receipt.encode()),
        ("challenge", challenge.encode()),
        ("proof", proof.encode()),
        ("ack", ack.encode().expect("encodes")),
        (
            "refusal-rate",
            DepositRefusal::RateLimited {
                retry_after_secs: 300,
            }
            .encode(),
        ),
        (
            "refusal-pow",
            DepositRefusal::WeakProofOfWork { required: 17 }.encode(),
        ),
    ]
}

fn mailbox_protocol() -> Seeds {
    let item = mailbox_item(b"x").encode().expect("encodes");
    let receipt = WitnessReceipt::sign(&device(0x44), [1; 16], NOW * 1000)
        .expect("a receipt")
        .encode();
    let requests = vec![
        ("deposit", Request::Deposit { item: item.clone() }),
        (
            "handoff",
            Request::Handoff {
                item: item.clone(),
                receipts: vec![receipt.clone()],
            },
        ),
        ("challenge", Request::Challenge { address: [4; 32] }),
        (
            "fetch",
            Request::Fetch {
                challenge: vec![5; 20],
                proof: vec![6; 20],
                after: Some([7; 16]),
            },
        ),
        ("ack", Request::Ack { ack: vec![8; 30] }),
    ];
    let responses = vec![
        ("accepted", Response::Accepted { receipt }),
        ("refused", Response::refused(DepositRefusal::VolunteerFull)),
        (
            "items",
            Response::Items {
                items: vec![StoredItem {
                    item,
                    receipts: vec![vec![9; 10]],
                }],
                more: true,
            },
        ),
        ("acked", Response::Acked { deleted: 3 }),
        (
            "denied",
            Response::Denied(Denial::RateLimited {
                retry_after_secs: 60,
            }),
        ),
    ];
    let mut seeds: Seeds = requests
        .into_iter()
        .map(|(n, r)| (n, r.encode().expect("encodes")))
        .collect();
    seeds.extend(
        responses
            .into_iter()
            .map(|(n, r)| (n, r.encode().expect("encodes"))),
    );
    seeds
}

fn replica() -> Replica {
    let mut replica = Replica::new(DeviceId([0x0d; 32]), Limits::default());
    let friend = [0xf1; 32];
    let message = ChatMessage {
        id: MessageId([3; 16]),
        sent_at: Timestamp(NOW * 1000),
        lamport: Lamport(1),
        body: "hello".into(),
    };
    let kinds = vec![
        OpKind::ContactAdded {
            friend,
            id_bytes: KithId::new(sender().public(), Nospam([9; 4]))
                .to_bytes()
                .to_vec(),
            name: "Sam".into(),
            card: vec![1; 20],
        },
        OpKind::MessageSent {
            friend,
            message: message.clone(),
        },
        OpKind::Edited {
            friend,
            target: message.id,
            body: "hello!".into(),
            at: Timestamp(NOW * 1000 + 5),
        },
        OpKind::ReadUpTo {
            friend,
            upto: Position::of(&message),
        },
        OpKind::RequestDecided {
            from: [0xf2; 32],
            decision: Decision::Blocked,
        },
        OpKind::ProfileName("Alex".into()),
        OpKind::Nospam(Nospam([1, 2, 3, 4])),
        OpKind::Deleted {
            friend,
            target: message.id,
            at: Timestamp(NOW * 1000 + 9),
        },
    ];
    for (i, kind) in kinds.into_iter().enumerate() {
        replica
            .record(kind, NOW * 1000 + i as u64)
            .expect("records");
    }
    // A kind from a newer build, as another device would have sent it.
    let unknown = Op {
        id: OpId {
            device: DeviceId([0x0e; 32]),
            counter: 1,
        },
        stamp: Stamp {
            lamport: 1,
            millis: NOW * 1000,
        },
        kind: OpKind::Unknown {
            kind: 40,
            body: vec![1, 2, 3],
        },
    };
    replica.apply(unknown).expect("applies");
    replica
}

fn sync_batch() -> Vec<u8> {
    let ops: Vec<_> = replica().ops().cloned().collect();
    encode_batch(&ops).expect("a batch")
}

fn sync_ops() -> Seeds {
    let replica = replica();
    let ops: Vec<_> = replica.ops().cloned().collect();
    vec![
        ("op-message", ops[1].encode().expect("encodes")),
        ("op-contact", ops[0].encode().expect("encodes")),
        ("batch", encode_batch(&ops).expect("a batch")),
        ("batch-empty", encode_batch(&[]).expect("a batch")),
        ("vector", replica.version_vector().encode()),
    ]
}

fn sync_link() -> Seeds {
    let sealed = bundle(Vec::new())
        .seal_with(&link_secret(), &new_device(), BUNDLE_NONCE)
        .expect("seals");
    let requests = [
        ("hello", LinkRequest::Hello { nonce_e: [7; 32] }),
        (
            "offer",
            LinkRequest::Offer {
                proof_e: [8; 32],
                sealed_bundle: sealed,
            },
        ),
    ];
    let responses = [
        ("challenge", LinkResponse::Challenge { nonce_n: [9; 32] }),
        ("accepted", LinkResponse::Accepted { proof_n: [10; 32] }),
        ("refused", LinkResponse::Refused(LinkRefusal::Busy)),
    ];
    let mut seeds: Seeds = requests
        .into_iter()
        .map(|(n, r)| (n, r.encode().expect("encodes")))
        .collect();
    seeds.extend(responses.into_iter().map(|(n, r)| (n, r.encode())));
    seeds
}

fn core_frames() -> Seeds {
    let chat = Payload::Typing(Typing { active: false })
        .encode()
        .expect("encodes");
    let request = SyncRequest {
        list: device_list(recipient(), &[1]).encode(),
        held: vec![1, 0],
        batch: vec![1, 0],
    };
    vec![
        (
            "request",
            frame::encode_request(&[Item::Olm(vec![1; 20]), Item::Sealed(vec![2; 30])]),
        ),
        (
            "response",
            frame::encode_response(&[Ack::Stored, Ack::Refused(Refusal::NoSession)]),
        ),
        (
            "bundle",
            frame::encode_bundle(&[chat.clone(), chat.clone()]),
        ),
        ("mail-bundle", frame::encode_mail(&Mail::Bundle(vec![chat]))),
        (
            "mail-request",
            frame::encode_mail(&Mail::Request(vec![3; 40])),
        ),
        (
            "mail-sync",
            frame::encode_mail(&Mail::Sync(SyncMail {
                from: device(1).peer_id().to_bytes(),
                to: device(2).peer_id().to_bytes(),
                request: request.clone(),
            })),
        ),
        ("sync-request", frame::encode_sync_request(&request)),
        (
            "sync-held",
            frame::encode_sync_response(&SyncResponse::Held(vec![1, 0])),
        ),
        (
            "sync-refused",
            frame::encode_sync_response(&SyncResponse::Refused(SyncRefusal::Busy)),
        ),
    ]
}

fn store_records() -> Seeds {
    let base = tempfile::tempdir().expect("a temporary folder");
    let identity = Identity {
        account: AccountKeypair::from_secret_bytes(&recipient().secret_bytes()),
        nospam: Nospam([1, 2, 3, 4]),
        device: device(0x33),
    };
    let read = |name: &str, lock: Option<(&Passphrase, KdfParams)>| -> Vec<u8> {
        let profile = Profile::in_base(base.path(), name).expect("a profile");
        profile.create_identity(&identity, lock).expect("created");
        fs::read(identity_path(&profile)).expect("read back")
    };
    let plain = read("plain", None);
    let passphrase = Passphrase::new("correct horse");
    let sealed = read("sealed", Some((&passphrase, KdfParams::TESTING)));

    let backend = std::sync::Arc::new(MemoryBackend::new());
    let mut store = Store::open(backend.clone(), None, 1, &[]).expect("a store");
    store
        .set_passphrase(Some(&passphrase), KdfParams::TESTING)
        .expect("locked");
    let meta = |key: &[u8]| {
        backend
            .get(META_TREE, key)
            .expect("memory backend")
            .expect("present")
    };
    vec![
        ("identity-plain", plain),
        ("identity-sealed", sealed),
        ("lock", meta(b"lock")),
        ("schema", meta(b"schema")),
        ("id-secret", meta(b"id-secret")),
    ]
}

fn identity_path(profile: &Profile) -> PathBuf {
    profile.dir().join("identity.key")
}
