//! Sample ops shared by the test binaries: one of each kind with fixed
//! contents (the golden fixtures), and strategies for valid ops.

#![allow(dead_code)]

use kith_proto::Nospam;
use kith_proto::wire::{ChatMessage, Lamport, MAX_BODY_BYTES, MessageId, Timestamp};
use kith_sync::{Decision, DeviceId, FIRST_UNKNOWN_KIND, Op, OpId, OpKind, Position, Stamp};
use proptest::prelude::*;

pub const ALICE_LAPTOP: DeviceId = DeviceId([0xa1; 32]);
pub const BOB: [u8; 32] = [0xb0; 32];

pub fn op(counter: u64, lamport: u64, kind: OpKind) -> Op {
    Op {
        id: OpId {
            device: ALICE_LAPTOP,
            counter,
        },
        stamp: Stamp {
            lamport,
            millis: 1_795_000_000_000 + counter,
        },
        kind,
    }
}

pub fn chat() -> ChatMessage {
    ChatMessage {
        id: MessageId([0x5a; 16]),
        sent_at: Timestamp(1_795_000_012_345),
        lamport: Lamport(42),
        body: "See you at 7 — bring the sheet music.\nÀ bientôt!".into(),
    }
}

/// One op of each kind, named after its fixture file.
pub fn samples() -> Vec<(&'static str, Op)> {
    vec![
        (
            "op-v1-message-sent.hex",
            op(
                1,
                1,
                OpKind::MessageSent {
                    friend: BOB,
                    message: chat(),
                },
            ),
        ),
        (
            "op-v1-message-received.hex",
            op(
                2,
                2,
                OpKind::MessageReceived {
                    friend: BOB,
                    message: ChatMessage {
                        id: MessageId([0x6b; 16]),
                        sent_at: Timestamp(1_795_000_013_000),
                        lamport: Lamport(43),
                        body: "Will do.".into(),
                    },
                },
            ),
        ),
        (
            "op-v1-edited.hex",
            op(
                3,
                3,
                OpKind::Edited {
                    friend: BOB,
                    target: MessageId([0x5a; 16]),
                    body: "See you at 8.".into(),
                    at: Timestamp(1_795_000_014_000),
                },
            ),
        ),
        (
            "op-v1-deleted.hex",
            op(
                4,
                4,
                OpKind::Deleted {
                    friend: BOB,
                    target: MessageId([0x5a; 16]),
                    at: Timestamp(1_795_000_015_000),
                },
            ),
        ),
        (
            "op-v1-contact-added.hex",
            op(
                5,
                5,
                OpKind::ContactAdded {
                    friend: BOB,
                    id_bytes: [&[1][..], &BOB, &[1, 2, 3, 4, 0xab, 0xcd]].concat(),
                    name: "Bob".into(),
                    card: vec![0x21; 70],
                },
            ),
        ),
        (
            "op-v1-contact-removed.hex",
            op(6, 6, OpKind::ContactRemoved { friend: BOB }),
        ),
        (
            "op-v1-request-decided.hex",
            op(
                7,
                7,
                OpKind::RequestDecided {
                    from: [0xc0; 32],
                    decision: Decision::Blocked,
                },
            ),
        ),
        (
            "op-v1-read-up-to.hex",
            op(
                8,
                8,
                OpKind::ReadUpTo {
                    friend: BOB,
                    upto: Position {
                        lamport: Lamport(43),
                        sent_at: Timestamp(1_795_000_013_000),
                        id: MessageId([0x6b; 16]),
                    },
                },
            ),
        ),
        (
            "op-v1-profile-name.hex",
            op(9, 9, OpKind::ProfileName("Alice Liddell".into())),
        ),
        (
            "op-v1-nospam.hex",
            op(10, 10, OpKind::Nospam(Nospam([0xde, 0xad, 0xbe, 0xef]))),
        ),
        (
            "op-v1-unknown.hex",
            op(
                11,
                11,
                OpKind::Unknown {
                    kind: FIRST_UNKNOWN_KIND + 7,
                    body: b"from a newer build".to_vec(),
                },
            ),
        ),
    ]
}

pub fn text(max: usize, multiline: bool) -> impl Strategy<Value = String> {
    let pattern = if multiline {
        format!("[a-zA-Z0-9 é—\n\t]{{0,{max}}}[a-z]")
    } else {
        format!("[a-zA-Z0-9 é—]{{0,{max}}}[a-z]")
    };
    proptest::string::string_regex(&pattern).expect("valid regex")
}

pub fn message() -> impl Strategy<Value = ChatMessage> {
    (
        any::<[u8; 16]>(),
        any::<u64>(),
        any::<u64>(),
        text(40, true),
    )
        .prop_map(|(id, sent_at, lamport, body)| ChatMessage {
            id: MessageId(id),
            sent_at: Timestamp(sent_at),
            lamport: Lamport(lamport),
            body,
        })
}

/// Any valid kind, fields drawn from their whole ranges.
pub fn any_kind() -> impl Strategy<Value = OpKind> {
    let friend = any::<[u8; 32]>;
    let decision = prop_oneof![
        Just(Decision::Accepted),
        Just(Decision::Declined),
        Just(Decision::Blocked)
    ];
    prop_oneof![
        (friend(), message()).prop_map(|(friend, message)| OpKind::MessageSent { friend, message }),
        (friend(), message())
            .prop_map(|(friend, message)| OpKind::MessageReceived { friend, message }),
        (friend(), any::<[u8; 16]>(), text(40, true), any::<u64>()).prop_map(
            |(friend, t, body, at)| OpKind::Edited {
                friend,
                target: MessageId(t),
                body,
                at: Timestamp(at),
            }
        ),
        (friend(), any::<[u8; 16]>(), any::<u64>()).prop_map(|(friend, t, at)| OpKind::Deleted {
            friend,
            target: MessageId(t),
            at: Timestamp(at),
        }),
        (
            friend(),
            prop::collection::vec(any::<u8>(), 1..=64),
            text(30, false),
            prop::collection::vec(any::<u8>(), 0..200)
        )
            .prop_map(|(friend, id_bytes, name, card)| OpKind::ContactAdded {
                friend,
                id_bytes,
                name,
                card,
            }),
        friend().prop_map(|friend| OpKind::ContactRemoved { friend }),
        (friend(), decision).prop_map(|(from, decision)| OpKind::RequestDecided { from, decision }),
        (friend(), any::<u64>(), any::<u64>(), any::<[u8; 16]>()).prop_map(|(friend, l, s, id)| {
            OpKind::ReadUpTo {
                friend,
                upto: Position {
                    lamport: Lamport(l),
                    sent_at: Timestamp(s),
                    id: MessageId(id),
                },
            }
        }),
        text(30, false).prop_map(OpKind::ProfileName),
        any::<[u8; 4]>().prop_map(|n| OpKind::Nospam(Nospam(n))),
        (
            FIRST_UNKNOWN_KIND..=u32::MAX,
            prop::collection::vec(any::<u8>(), 0..64)
        )
            .prop_map(|(kind, body)| OpKind::Unknown { kind, body }),
    ]
}

/// Any valid op.
pub fn any_op() -> impl Strategy<Value = Op> {
    (
        any::<[u8; 32]>(),
        1..=u64::MAX,
        1..=u64::MAX,
        any::<u64>(),
        any_kind(),
    )
        .prop_map(|(device, counter, lamport, millis, kind)| Op {
            id: OpId {
                device: DeviceId(device),
                counter,
            },
            stamp: Stamp { lamport, millis },
            kind,
        })
}

/// The largest op of each known kind.
pub fn largest() -> Vec<Op> {
    let big = |counter| Op {
        id: OpId {
            device: DeviceId([0xff; 32]),
            counter,
        },
        stamp: Stamp {
            lamport: u64::MAX,
            millis: u64::MAX,
        },
        kind: OpKind::ProfileName("x".into()),
    };
    let body = "é".repeat(MAX_BODY_BYTES / 2);
    let message = ChatMessage {
        id: MessageId([0xff; 16]),
        sent_at: Timestamp(u64::MAX),
        lamport: Lamport(u64::MAX),
        body: body.clone(),
    };
    let kinds = vec![
        OpKind::MessageSent {
            friend: [0xff; 32],
            message: message.clone(),
        },
        OpKind::MessageReceived {
            friend: [0xff; 32],
            message,
        },
        OpKind::Edited {
            friend: [0xff; 32],
            target: MessageId([0xff; 16]),
            body,
            at: Timestamp(u64::MAX),
        },
        OpKind::ContactAdded {
            friend: [0xff; 32],
            id_bytes: vec![0xff; kith_sync::MAX_KITH_ID_BYTES],
            name: "n".repeat(kith_proto::wire::MAX_DISPLAY_NAME_BYTES),
            card: vec![0xff; kith_sync::MAX_CARD_BYTES],
        },
        OpKind::ProfileName("n".repeat(kith_proto::wire::MAX_DISPLAY_NAME_BYTES)),
        OpKind::Unknown {
            kind: u32::MAX,
            body: vec![0xff; kith_sync::MAX_UNKNOWN_BODY_BYTES],
        },
    ];
    kinds
        .into_iter()
        .map(|kind| Op {
            kind,
            ..big(u64::MAX)
        })
        .collect()
}
