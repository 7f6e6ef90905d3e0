//! Versioned wire types: what one Kith account says to another.
//!
//! A frame is one version byte ([`WIRE_VERSION`]) followed by a
//! [`Payload`] in postcard encoding (varint integers, length-prefixed
//! strings, enum variants by index). New payload kinds are added as new
//! variants at the end, so older frames keep decoding.
//!
//! Decoding is strict and bounded: input longer than [`MAX_FRAME_BYTES`] is
//! refused before anything is read or allocated, trailing bytes are refused,
//! and every field is checked against its own limit (display names, request
//! messages and chat bodies by length and for control characters, receipts by
//! number of IDs). The same checks run before encoding, so Kith never sends a
//! frame it would refuse to receive.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::id::{KithId, Nospam};
use crate::presence::{MAX_PREKEY_BYTES, PresenceShare};
use crate::random::random_bytes;

/// The wire format version this build reads and writes.
pub const WIRE_VERSION: u8 = 1;
/// Largest frame accepted, in bytes.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;
/// Largest chat message body, in bytes of UTF-8.
pub const MAX_BODY_BYTES: usize = 16 * 1024;
/// Largest display name, in bytes of UTF-8.
pub const MAX_DISPLAY_NAME_BYTES: usize = 128;
/// Largest friend request message, in bytes of UTF-8.
pub const MAX_REQUEST_MESSAGE_BYTES: usize = 1024;
/// Most message IDs one receipt may acknowledge.
pub const MAX_RECEIPT_IDS: usize = 256;
/// Most devices one contact card lists.
pub const MAX_CARD_DEVICES: usize = 8;
/// Longest device identity (a libp2p PeerId in bytes) in a contact card.
pub const MAX_PEER_ID_BYTES: usize = 64;

/// A message's random 128-bit identity, the key receivers de-duplicate by.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MessageId(pub [u8; 16]);

impl MessageId {
    /// A fresh random ID.
    pub fn random() -> Self {
        Self(random_bytes())
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({self})")
    }
}

/// Milliseconds since the Unix epoch, as the sender's clock read them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// The current time of this machine's clock (zero if the clock is set
    /// before 1970).
    pub fn now() -> Self {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        Self(ms)
    }
}

/// A Lamport counter: one more than the highest counter the sender had seen
/// in the conversation, so replies sort after what they answer even when
/// clocks disagree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Lamport(pub u64);

/// One device of an account, as a contact card lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceCard {
    /// The device's network identity (libp2p PeerId bytes).
    pub peer_id: Vec<u8>,
    /// Its session prekeys (Olm identity and fallback key).
    pub prekeys: Vec<u8>,
}

/// What two accounts give each other when they become friends: how to
/// find and read each other's presence, and the devices to open end-to-end
/// sessions with. It travels only inside sealed, signed envelopes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactCard {
    /// The presence share (public presence key and content key).
    pub presence: PresenceShare,
    /// The account's devices (1 to [`MAX_CARD_DEVICES`]).
    pub devices: Vec<DeviceCard>,
}

/// A request to become friends, sent to someone whose Kith ID one has.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FriendRequest {
    /// The requester's own Kith ID, so the recipient can accept and reply.
    pub from: KithId,
    /// The nospam of the recipient's ID the requester used; it must match the
    /// recipient's current nospam.
    pub to_nospam: Nospam,
    /// How the requester would like to be called.
    pub display_name: String,
    /// A short note ("it's Sam from the climbing club").
    pub message: String,
    /// When the requester sent it.
    pub sent_at: Timestamp,
    /// How to reach the requester once accepted.
    pub card: ContactCard,
}

/// The answer to a friend request: the accepter's name and contact card.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FriendAccept {
    /// How the accepter would like to be called.
    pub display_name: String,
    /// When the accepter accepted.
    pub sent_at: Timestamp,
    /// How to reach the accepter.
    pub card: ContactCard,
}

/// The sender is typing (or stopped). Never stored or queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Typing {
    /// Typing now; `false` when the sender stopped or sent.
    pub active: bool,
}

/// Replaces the text of one of the sender's own earlier messages.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Edit {
    /// This edit's own random identity (receivers de-duplicate by it).
    pub id: MessageId,
    /// The message edited.
    pub target: MessageId,
    /// When, by the sender's clock; the latest edit wins.
    pub sent_at: Timestamp,
    /// The new text.
    pub body: String,
}

/// Withdraws one of the sender's own earlier messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delete {
    /// This deletion's own random identity.
    pub id: MessageId,
    /// The message deleted.
    pub target: MessageId,
    /// When, by the sender's clock.
    pub sent_at: Timestamp,
}

/// One chat message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Random 128-bit identity.
    pub id: MessageId,
    /// When the sender sent it, by the sender's clock.
    pub sent_at: Timestamp,
    /// The sender's Lamport counter for it.
    pub lamport: Lamport,
    /// The text.
    pub body: String,
}

/// What a receipt acknowledges.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ReceiptKind {
    /// The messages reached one of the recipient's devices.
    Delivered,
    /// The recipient has seen the messages.
    Read,
}

/// Acknowledges one or more messages.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// Delivered or read.
    pub kind: ReceiptKind,
    /// The messages acknowledged (1 to [`MAX_RECEIPT_IDS`]).
    pub ids: Vec<MessageId>,
    /// When, by the acknowledging device's clock.
    pub at: Timestamp,
}

/// Everything that travels between accounts, tagged by kind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Payload {
    /// A friend request.
    FriendRequest(Box<FriendRequest>),
    /// A chat message.
    Chat(ChatMessage),
    /// A delivery or read receipt.
    Receipt(Receipt),
    /// The answer to a friend request.
    FriendAccept(Box<FriendAccept>),
    /// A typing indicator.
    Typing(Typing),
    /// An edit of an earlier message.
    Edit(Edit),
    /// A deletion of an earlier message.
    Delete(Delete),
    /// The sender's account's newest signed device list, encoded
    /// ([`crate::devices::SignedDeviceList`], at most
    /// [`crate::devices::MAX_LIST_BYTES`]): sent to friends when a device
    /// is linked or removed, so they deliver to (and accept from) exactly
    /// the listed devices. Appended last: variant indexes are the wire
    /// form.
    Devices(Vec<u8>),
}

/// A field that breaks its limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FieldError {
    /// A text field longer than its limit.
    #[error("{field} is {found} bytes long; the limit is {max}")]
    TooLong {
        /// Which field.
        field: &'static str,
        /// Its length.
        found: usize,
        /// The limit.
        max: usize,
    },
    /// A text field that must not be empty is.
    #[error("{field} is empty")]
    Empty {
        /// Which field.
        field: &'static str,
    },
    /// A single-line field holds a control character (a newline, say).
    #[error("{field} contains a control character")]
    ControlCharacter {
        /// Which field.
        field: &'static str,
    },
    /// A contact card lists no devices, or too many.
    #[error(
        "a contact card must list between 1 and {MAX_CARD_DEVICES} devices, this lists {found}"
    )]
    CardDevices {
        /// How many it lists.
        found: usize,
    },
    /// A byte field longer than its limit.
    #[error("{field} is {found} bytes long; the limit is {max}")]
    FieldTooLarge {
        /// Which field.
        field: &'static str,
        /// Its length.
        found: usize,
        /// The limit.
        max: usize,
    },
    /// A receipt names no messages, or too many.
    #[error("a receipt must name between 1 and {MAX_RECEIPT_IDS} messages, this names {found}")]
    ReceiptIds {
        /// How many it names.
        found: usize,
    },
}

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Longer than [`MAX_FRAME_BYTES`]; refused unread.
    #[error("frame of {found} bytes is over the {max}-byte limit")]
    TooLarge {
        /// Bytes given.
        found: usize,
        /// The limit.
        max: usize,
    },
    /// No bytes at all.
    #[error("empty frame")]
    Empty,
    /// A frame of a wire version this build does not know.
    #[error("wire version {found} is not supported (this build speaks version {WIRE_VERSION})")]
    UnknownVersion {
        /// The version byte found.
        found: u8,
    },
    /// The bytes do not form a payload (truncated, wrong tag, bad UTF-8).
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// A whole payload followed by extra bytes.
    #[error("{count} unexpected bytes after the payload")]
    TrailingBytes {
        /// How many.
        count: usize,
    },
    /// Well-formed, but a field breaks its limit.
    #[error("invalid payload: {0}")]
    Invalid(#[from] FieldError),
}

/// Why a payload could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// A field breaks its limit.
    #[error("invalid payload: {0}")]
    Invalid(#[from] FieldError),
    /// The encoded frame would be over [`MAX_FRAME_BYTES`].
    #[error("the encoded frame would be {found} bytes, over the {max}-byte limit")]
    TooLarge {
        /// Encoded size.
        found: usize,
        /// The limit.
        max: usize,
    },
    /// The serializer failed.
    #[error("encoding failed: {0}")]
    Serialize(String),
}

fn check_text(
    field: &'static str,
    value: &str,
    max: usize,
    allow_empty: bool,
    allow_newlines: bool,
) -> Result<(), FieldError> {
    if value.len() > max {
        return Err(FieldError::TooLong {
            field,
            found: value.len(),
            max,
        });
    }
    if !allow_empty && value.trim().is_empty() {
        return Err(FieldError::Empty { field });
    }
    let bad = |c: char| c.is_control() && !(allow_newlines && (c == '\n' || c == '\t'));
    if value.chars().any(bad) {
        return Err(FieldError::ControlCharacter { field });
    }
    Ok(())
}

impl FriendRequest {
    /// Checks every field against its limit.
    pub fn validate(&self) -> Result<(), FieldError> {
        check_text(
            "display name",
            &self.display_name,
            MAX_DISPLAY_NAME_BYTES,
            false,
            false,
        )?;
        check_text(
            "request message",
            &self.message,
            MAX_REQUEST_MESSAGE_BYTES,
            true,
            true,
        )?;
        self.card.validate()
    }
}

fn check_bytes(field: &'static str, value: &[u8], max: usize) -> Result<(), FieldError> {
    if value.len() > max {
        return Err(FieldError::FieldTooLarge {
            field,
            found: value.len(),
            max,
        });
    }
    Ok(())
}

impl ContactCard {
    /// Checks every field against its limit.
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.devices.is_empty() || self.devices.len() > MAX_CARD_DEVICES {
            return Err(FieldError::CardDevices {
                found: self.devices.len(),
            });
        }
        for device in &self.devices {
            check_bytes("device identity", &device.peer_id, MAX_PEER_ID_BYTES)?;
            check_bytes("device prekeys", &device.prekeys, MAX_PREKEY_BYTES)?;
        }
        Ok(())
    }
}

impl FriendAccept {
    /// Checks every field against its limit.
    pub fn validate(&self) -> Result<(), FieldError> {
        check_text(
            "display name",
            &self.display_name,
            MAX_DISPLAY_NAME_BYTES,
            false,
            false,
        )?;
        self.card.validate()
    }
}

impl Edit {
    /// Checks every field against its limit.
    pub fn validate(&self) -> Result<(), FieldError> {
        check_text("message body", &self.body, MAX_BODY_BYTES, false, true)
    }
}

impl ChatMessage {
    /// Checks every field against its limit.
    pub fn validate(&self) -> Result<(), FieldError> {
        check_text("message body", &self.body, MAX_BODY_BYTES, false, true)
    }
}

impl Receipt {
    /// Checks every field against its limit.
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.ids.is_empty() || self.ids.len() > MAX_RECEIPT_IDS {
            return Err(FieldError::ReceiptIds {
                found: self.ids.len(),
            });
        }
        Ok(())
    }
}

impl Payload {
    /// Checks every field of the payload against its limit.
    pub fn validate(&self) -> Result<(), FieldError> {
        match self {
            Payload::FriendRequest(r) => r.validate(),
            Payload::Chat(m) => m.validate(),
            Payload::Receipt(r) => r.validate(),
            Payload::FriendAccept(a) => a.validate(),
            Payload::Edit(e) => e.validate(),
            Payload::Typing(_) | Payload::Delete(_) => Ok(()),
            Payload::Devices(list) if list.len() > crate::devices::MAX_LIST_BYTES => {
                Err(FieldError::TooLong {
                    field: "device list",
                    found: list.len(),
                    max: crate::devices::MAX_LIST_BYTES,
                })
            }
            Payload::Devices(_) => Ok(()),
        }
    }

    /// Encodes a frame: version byte, then the payload.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        self.validate()?;
        let out = postcard::to_extend(self, vec![WIRE_VERSION])
            .map_err(|e| EncodeError::Serialize(e.to_string()))?;
        if out.len() > MAX_FRAME_BYTES {
            return Err(EncodeError::TooLarge {
                found: out.len(),
                max: MAX_FRAME_BYTES,
            });
        }
        Ok(out)
    }

    /// Decodes and validates a frame.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() > MAX_FRAME_BYTES {
            return Err(DecodeError::TooLarge {
                found: bytes.len(),
                max: MAX_FRAME_BYTES,
            });
        }
        let (&version, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
        if version != WIRE_VERSION {
            return Err(DecodeError::UnknownVersion { found: version });
        }
        let (payload, rest): (Payload, &[u8]) =
            postcard::take_from_bytes(body).map_err(|e| DecodeError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(DecodeError::TrailingBytes { count: rest.len() });
        }
        payload.validate()?;
        Ok(payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::AccountKeypair;

    fn request() -> FriendRequest {
        FriendRequest {
            from: KithId::new(AccountKeypair::generate().public(), Nospam::random()),
            to_nospam: Nospam([1, 2, 3, 4]),
            display_name: "Sam".into(),
            message: "from the climbing club".into(),
            sent_at: Timestamp::now(),
            card: card(),
        }
    }

    fn card() -> ContactCard {
        ContactCard {
            presence: PresenceShare {
                public: [7; 32],
                content_key: [8; 32],
            },
            devices: vec![DeviceCard {
                peer_id: vec![1; 38],
                prekeys: vec![2; 65],
            }],
        }
    }

    #[test]
    fn each_payload_round_trips() {
        let payloads = [
            Payload::FriendRequest(Box::new(request())),
            Payload::Chat(ChatMessage {
                id: MessageId::random(),
                sent_at: Timestamp(1_700_000_000_000),
                lamport: Lamport(7),
                body: "hello\nworld".into(),
            }),
            Payload::Receipt(Receipt {
                kind: ReceiptKind::Read,
                ids: vec![MessageId::random(), MessageId::random()],
                at: Timestamp(1),
            }),
            Payload::FriendAccept(Box::new(FriendAccept {
                display_name: "Bob".into(),
                sent_at: Timestamp(2),
                card: card(),
            })),
            Payload::Typing(Typing { active: true }),
            Payload::Edit(Edit {
                id: MessageId::random(),
                target: MessageId::random(),
                sent_at: Timestamp(3),
                body: "fixed".into(),
            }),
            Payload::Delete(Delete {
                id: MessageId::random(),
                target: MessageId::random(),
                sent_at: Timestamp(4),
            }),
        ];
        for payload in payloads {
            let bytes = payload.encode().unwrap();
            assert_eq!(bytes[0], WIRE_VERSION);
            assert_eq!(Payload::decode(&bytes).unwrap(), payload);
        }
    }

    #[test]
    fn limits_hold_on_both_sides() {
        let mut r = request();
        r.display_name = "x".repeat(MAX_DISPLAY_NAME_BYTES + 1);
        assert!(matches!(
            Payload::FriendRequest(Box::new(r.clone())).encode(),
            Err(EncodeError::Invalid(FieldError::TooLong {
                field: "display name",
                ..
            }))
        ));
        r.display_name = "two\nlines".into();
        assert_eq!(
            r.validate(),
            Err(FieldError::ControlCharacter {
                field: "display name"
            })
        );
        r.display_name = "  ".into();
        assert_eq!(
            r.validate(),
            Err(FieldError::Empty {
                field: "display name"
            })
        );
        let receipt = Receipt {
            kind: ReceiptKind::Delivered,
            ids: vec![],
            at: Timestamp(0),
        };
        assert_eq!(receipt.validate(), Err(FieldError::ReceiptIds { found: 0 }));

        // A frame that breaks a limit is refused on decode too, even though
        // no Kith encoder would produce it.
        let long = ChatMessage {
            id: MessageId([0; 16]),
            sent_at: Timestamp(0),
            lamport: Lamport(0),
            body: "y".repeat(MAX_BODY_BYTES + 1),
        };
        let mut raw = vec![WIRE_VERSION];
        raw.extend(postcard::to_allocvec(&Payload::Chat(long)).unwrap());
        assert!(matches!(
            Payload::decode(&raw),
            Err(DecodeError::Invalid(FieldError::TooLong {
                field: "message body",
                ..
            }))
        ));
    }

    #[test]
    fn framing_errors_are_typed() {
        assert_eq!(Payload::decode(&[]), Err(DecodeError::Empty));
        assert_eq!(
            Payload::decode(&[9, 0]),
            Err(DecodeError::UnknownVersion { found: 9 })
        );
        let mut bytes = Payload::Chat(ChatMessage {
            id: MessageId([3; 16]),
            sent_at: Timestamp(5),
            lamport: Lamport(1),
            body: "hi".into(),
        })
        .encode()
        .unwrap();
        assert!(matches!(
            Payload::decode(&bytes[..bytes.len() - 1]),
            Err(DecodeError::Malformed(_))
        ));
        bytes.push(0);
        assert_eq!(
            Payload::decode(&bytes),
            Err(DecodeError::TrailingBytes { count: 1 })
        );
        assert!(matches!(
            Payload::decode(&vec![WIRE_VERSION; MAX_FRAME_BYTES + 1]),
            Err(DecodeError::TooLarge { .. })
        ));
    }
}
