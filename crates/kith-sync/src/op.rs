//! Ops: the entries of the log one account's devices share.
//!
//! Every op is named by its [`OpId`] — the device that made it and that
//! device's counter, which starts at 1 and never skips — and carries a
//! [`Stamp`] from the device's hybrid clock. The total order
//! `(stamp.lamport, stamp.millis, id)` decides every last-writer-wins
//! register; the Lamport part makes a change that was made after seeing
//! another change sort after it, whatever the wall clocks say.
//!
//! An op's [`OpKind`] says what happened. Each kind has a fixed tag and a
//! fixed body layout; the limits of a kind never change (new rules mean a
//! new kind), and a kind this build does not know is kept as
//! [`OpKind::Unknown`] so that a device running an older build still holds
//! and forwards what a newer one wrote instead of stalling on it.
//!
//! Byte layouts and limits are in `docs/sync.md`; the encoding itself lives
//! in [`crate::codec`].

use std::fmt;

use kith_proto::Nospam;
use kith_proto::wire::{
    ChatMessage, Lamport, MAX_BODY_BYTES, MAX_DISPLAY_NAME_BYTES, MessageId, Timestamp,
};
use serde::{Deserialize, Serialize};

/// Largest encoded op (version byte included), in bytes. Every op of a known
/// kind that passes [`Op::validate`] fits, and so does a whole op in one
/// mailbox item.
pub const MAX_OP_BYTES: usize = 24 * 1024;
/// Longest encoded Kith ID a [`OpKind::ContactAdded`] may carry, in bytes
/// (version 1 IDs are [`kith_proto::id::KITH_ID_BYTES`] long).
pub const MAX_KITH_ID_BYTES: usize = 64;
/// Largest encoded contact card a [`OpKind::ContactAdded`] may carry, in
/// bytes (a version 1 card with the most devices is under 5 KiB).
pub const MAX_CARD_BYTES: usize = 8 * 1024;
/// Largest body of an op of a kind this build does not know, in bytes: what
/// is left of [`MAX_OP_BYTES`] after the longest header.
pub const MAX_UNKNOWN_BODY_BYTES: usize = MAX_OP_BYTES - MAX_HEADER_BYTES;
/// The first kind tag this build does not know; tags below it are the
/// variants of [`OpKind`] other than [`OpKind::Unknown`].
pub const FIRST_UNKNOWN_KIND: u32 = 10;

/// Longest op header: version byte, device (32), counter, Lamport and
/// millisecond varints (10 each), kind varint (5) and body length varint
/// (3 bytes covers bodies up to 2 MiB).
pub(crate) const MAX_HEADER_BYTES: usize = 1 + 32 + 10 + 10 + 10 + 5 + 3;

pub(crate) const KIND_MESSAGE_SENT: u32 = 0;
pub(crate) const KIND_MESSAGE_RECEIVED: u32 = 1;
pub(crate) const KIND_EDITED: u32 = 2;
pub(crate) const KIND_DELETED: u32 = 3;
pub(crate) const KIND_CONTACT_ADDED: u32 = 4;
pub(crate) const KIND_CONTACT_REMOVED: u32 = 5;
pub(crate) const KIND_REQUEST_DECIDED: u32 = 6;
pub(crate) const KIND_READ_UP_TO: u32 = 7;
pub(crate) const KIND_PROFILE_NAME: u32 = 8;
pub(crate) const KIND_NOSPAM: u32 = 9;

/// One of the account's devices: its Ed25519 public key (the key behind its
/// libp2p PeerId), as the signed device list names it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DeviceId(pub [u8; 32]);

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Eight bytes tell devices apart in logs and test failures.
        write!(f, "DeviceId(")?;
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        write!(f, "…)")
    }
}

/// An op's identity: the device that made it and its place in that
/// device's log (1, 2, 3, … with no gaps).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OpId {
    /// The device that made the op.
    pub device: DeviceId,
    /// Its counter on that device, from 1.
    pub counter: u64,
}

impl fmt::Display for OpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}#{}", self.device, self.counter)
    }
}

/// A device's hybrid clock reading when it made an op.
///
/// Ordered by `lamport`, then `millis`; [`Op::order`] adds the [`OpId`] to
/// make the order total.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Stamp {
    /// One more than the highest Lamport value the device had seen in any
    /// op, its own included (so at least 1).
    pub lamport: u64,
    /// The device's wall clock, milliseconds since the Unix epoch. Only
    /// breaks ties between ops with the same `lamport`.
    pub millis: u64,
}

/// Where a message sits in a conversation: the order of DESIGN.md and of
/// `kith-core`'s history — Lamport counter, then sender time, then ID.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Position {
    /// The message's Lamport counter.
    pub lamport: Lamport,
    /// The sender's time.
    pub sent_at: Timestamp,
    /// The message's ID.
    pub id: MessageId,
}

impl Position {
    /// The position of `message`.
    pub fn of(message: &ChatMessage) -> Self {
        Self {
            lamport: message.lamport,
            sent_at: message.sent_at,
            id: message.id,
        }
    }
}

/// What the account decided about a friend request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Decision {
    /// Accepted: the requester became a friend.
    Accepted,
    /// Declined: the request is dismissed; the requester may ask again.
    Declined,
    /// Blocked: requests from this account are dropped unseen.
    Blocked,
}

/// What an op records. Friends are named by their 32-byte account keys.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum OpKind {
    /// This account sent `message` to `friend`.
    MessageSent {
        /// The friend's account key.
        friend: [u8; 32],
        /// The message as sent.
        message: ChatMessage,
    },
    /// `friend` sent `message` to this account.
    MessageReceived {
        /// The friend's account key.
        friend: [u8; 32],
        /// The message as received.
        message: ChatMessage,
    },
    /// A message was edited (by this account, or by the friend who wrote
    /// it); the latest `at` wins.
    Edited {
        /// The friend's account key.
        friend: [u8; 32],
        /// The message edited.
        target: MessageId,
        /// The new text.
        body: String,
        /// When, by the editor's clock.
        at: Timestamp,
    },
    /// A message was withdrawn by its author; final.
    Deleted {
        /// The friend's account key.
        friend: [u8; 32],
        /// The message deleted.
        target: MessageId,
        /// When, by the author's clock.
        at: Timestamp,
    },
    /// A friend was added (or their details changed).
    ContactAdded {
        /// The friend's account key.
        friend: [u8; 32],
        /// Their encoded Kith ID (opaque here, 1 to [`MAX_KITH_ID_BYTES`]).
        id_bytes: Vec<u8>,
        /// Their name (a display name: 1 to
        /// [`MAX_DISPLAY_NAME_BYTES`], one line).
        name: String,
        /// Their encoded contact card (opaque here, up to
        /// [`MAX_CARD_BYTES`]).
        card: Vec<u8>,
    },
    /// A friend was removed.
    ContactRemoved {
        /// The friend's account key.
        friend: [u8; 32],
    },
    /// A friend request was answered.
    RequestDecided {
        /// The requester's account key.
        from: [u8; 32],
        /// The answer.
        decision: Decision,
    },
    /// The conversation with `friend` was read up to `upto` (inclusive).
    ReadUpTo {
        /// The friend's account key.
        friend: [u8; 32],
        /// The last message read.
        upto: Position,
    },
    /// The account's display name changed.
    ProfileName(String),
    /// The account's nospam changed.
    Nospam(Nospam),
    /// An op of a kind this build does not know (written by a newer
    /// build): held, counted, forwarded byte for byte, and ignored by the
    /// merge. Never made by [`crate::Replica::record`].
    Unknown {
        /// Its kind tag, at least [`FIRST_UNKNOWN_KIND`].
        kind: u32,
        /// Its body, undecoded (up to [`MAX_UNKNOWN_BODY_BYTES`]).
        body: Vec<u8>,
    },
}

impl OpKind {
    /// The kind's tag on the wire.
    pub fn tag(&self) -> u32 {
        match self {
            OpKind::MessageSent { .. } => KIND_MESSAGE_SENT,
            OpKind::MessageReceived { .. } => KIND_MESSAGE_RECEIVED,
            OpKind::Edited { .. } => KIND_EDITED,
            OpKind::Deleted { .. } => KIND_DELETED,
            OpKind::ContactAdded { .. } => KIND_CONTACT_ADDED,
            OpKind::ContactRemoved { .. } => KIND_CONTACT_REMOVED,
            OpKind::RequestDecided { .. } => KIND_REQUEST_DECIDED,
            OpKind::ReadUpTo { .. } => KIND_READ_UP_TO,
            OpKind::ProfileName(_) => KIND_PROFILE_NAME,
            OpKind::Nospam(_) => KIND_NOSPAM,
            OpKind::Unknown { kind, .. } => *kind,
        }
    }

    /// Checks every field against its limit.
    pub fn validate(&self) -> Result<(), InvalidOp> {
        match self {
            OpKind::MessageSent { message, .. } | OpKind::MessageReceived { message, .. } => {
                check_text("message body", &message.body, MAX_BODY_BYTES, true)
            }
            OpKind::Edited { body, .. } => check_text("message body", body, MAX_BODY_BYTES, true),
            OpKind::ContactAdded {
                id_bytes,
                name,
                card,
                ..
            } => {
                check_bytes("Kith ID", id_bytes, 1, MAX_KITH_ID_BYTES)?;
                check_text("contact name", name, MAX_DISPLAY_NAME_BYTES, false)?;
                check_bytes("contact card", card, 0, MAX_CARD_BYTES)
            }
            OpKind::ProfileName(name) => {
                check_text("profile name", name, MAX_DISPLAY_NAME_BYTES, false)
            }
            OpKind::Unknown { kind, body } => {
                if *kind < FIRST_UNKNOWN_KIND {
                    return Err(InvalidOp::KnownKindAsUnknown { kind: *kind });
                }
                check_bytes("unknown op body", body, 0, MAX_UNKNOWN_BODY_BYTES)
            }
            OpKind::Deleted { .. }
            | OpKind::ContactRemoved { .. }
            | OpKind::RequestDecided { .. }
            | OpKind::ReadUpTo { .. }
            | OpKind::Nospam(_) => Ok(()),
        }
    }
}

/// One entry of the account's op log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    /// Who made it and where it sits in their log.
    pub id: OpId,
    /// The maker's clock when it was made.
    pub stamp: Stamp,
    /// What happened.
    pub kind: OpKind,
}

impl Op {
    /// The key of the total order every last-writer-wins register uses:
    /// Lamport value, then milliseconds, then [`OpId`].
    pub fn order(&self) -> (Stamp, OpId) {
        (self.stamp, self.id)
    }

    /// Checks the header (counter and Lamport value start at 1) and every
    /// field of the kind against its limit. An op that passes encodes in
    /// at most [`MAX_OP_BYTES`].
    pub fn validate(&self) -> Result<(), InvalidOp> {
        if self.id.counter == 0 {
            return Err(InvalidOp::Zero { field: "counter" });
        }
        if self.stamp.lamport == 0 {
            return Err(InvalidOp::Zero { field: "lamport" });
        }
        self.kind.validate()
    }
}

/// Why an op is not valid: a field breaks its limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidOp {
    /// A counter or Lamport value of zero; both start at 1.
    #[error("the op's {field} is zero; it starts at 1")]
    Zero {
        /// Which field.
        field: &'static str,
    },
    /// A text or byte field longer than its limit.
    #[error("{field} is {found} bytes long; the limit is {max}")]
    TooLong {
        /// Which field.
        field: &'static str,
        /// Its length.
        found: usize,
        /// The limit.
        max: usize,
    },
    /// A field that must not be empty (or blank) is.
    #[error("{field} is empty")]
    Empty {
        /// Which field.
        field: &'static str,
    },
    /// A text field holds a control character it may not (any in a name;
    /// any but newline and tab in a message body).
    #[error("{field} contains a control character")]
    ControlCharacter {
        /// Which field.
        field: &'static str,
    },
    /// An [`OpKind::Unknown`] with the tag of a kind this build knows.
    #[error("kind {kind} is known to this build but was given as unknown")]
    KnownKindAsUnknown {
        /// The tag.
        kind: u32,
    },
}

/// The text rules of `kith_proto::wire` (length, not blank, control
/// characters), kept here so that a sync op is refused exactly when the wire
/// would refuse the same text.
fn check_text(
    field: &'static str,
    value: &str,
    max: usize,
    multiline: bool,
) -> Result<(), InvalidOp> {
    if value.len() > max {
        return Err(InvalidOp::TooLong {
            field,
            found: value.len(),
            max,
        });
    }
    if value.trim().is_empty() {
        return Err(InvalidOp::Empty { field });
    }
    let bad = |c: char| c.is_control() && !(multiline && (c == '\n' || c == '\t'));
    if value.chars().any(bad) {
        return Err(InvalidOp::ControlCharacter { field });
    }
    Ok(())
}

fn check_bytes(field: &'static str, value: &[u8], min: usize, max: usize) -> Result<(), InvalidOp> {
    if value.len() > max {
        return Err(InvalidOp::TooLong {
            field,
            found: value.len(),
            max,
        });
    }
    if value.len() < min {
        return Err(InvalidOp::Empty { field });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: &str) -> ChatMessage {
        ChatMessage {
            id: MessageId([1; 16]),
            sent_at: Timestamp(1),
            lamport: Lamport(1),
            body: body.into(),
        }
    }

    #[test]
    fn message_bodies_are_checked_like_the_wire_checks_them() {
        let long = "x".repeat(MAX_BODY_BYTES + 1);
        let exact = "é".repeat(MAX_BODY_BYTES / 2);
        for body in [
            "hi",
            "",
            "  \n",
            "two\nlines\tand a tab",
            "bell\u{7}",
            "\r\n",
            "nul\0",
            long.as_str(),
            exact.as_str(),
        ] {
            let wire = chat(body).validate().is_ok();
            let sync = OpKind::MessageSent {
                friend: [0; 32],
                message: chat(body),
            }
            .validate()
            .is_ok();
            assert_eq!(wire, sync, "{body:?}");
            let edit = OpKind::Edited {
                friend: [0; 32],
                target: MessageId([0; 16]),
                body: body.into(),
                at: Timestamp(0),
            }
            .validate()
            .is_ok();
            assert_eq!(wire, edit, "{body:?}");
        }
    }

    #[test]
    fn names_are_one_line_and_not_blank() {
        let name = |s: &str| OpKind::ProfileName(s.into()).validate();
        assert_eq!(name("Alice"), Ok(()));
        assert_eq!(
            name(" "),
            Err(InvalidOp::Empty {
                field: "profile name"
            })
        );
        assert_eq!(
            name("two\nlines"),
            Err(InvalidOp::ControlCharacter {
                field: "profile name"
            })
        );
        assert!(matches!(
            name(&"n".repeat(MAX_DISPLAY_NAME_BYTES + 1)),
            Err(InvalidOp::TooLong { .. })
        ));
    }

    #[test]
    fn unknown_kinds_may_not_reuse_known_tags() {
        for kind in 0..FIRST_UNKNOWN_KIND {
            assert_eq!(
                OpKind::Unknown { kind, body: vec![] }.validate(),
                Err(InvalidOp::KnownKindAsUnknown { kind })
            );
        }
        assert_eq!(
            OpKind::Unknown {
                kind: FIRST_UNKNOWN_KIND,
                body: vec![1, 2, 3]
            }
            .validate(),
            Ok(())
        );
    }

    #[test]
    fn the_order_is_lamport_then_millis_then_id() {
        let a = OpId {
            device: DeviceId([1; 32]),
            counter: 9,
        };
        let b = OpId {
            device: DeviceId([2; 32]),
            counter: 1,
        };
        let s = |lamport, millis| Stamp { lamport, millis };
        assert!((s(1, 99), b) < (s(2, 0), a));
        assert!((s(2, 1), a) < (s(2, 2), a));
        assert!((s(2, 2), a) < (s(2, 2), b));
    }
}
