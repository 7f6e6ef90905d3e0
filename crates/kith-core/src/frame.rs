//! What one device sends another over the direct message protocol
//! (`/kith/msg/1.0.0`, see `docs/messaging.md`).
//!
//! A request carries a batch of items, each either an Olm message of the
//! session between the two devices or a sealed envelope to the receiving
//! account (used for the friend acceptance, before any session exists).
//! The response carries one [`Ack`] per item, in order, sent only after the
//! receiver has durably stored what the items said: an [`Ack::Stored`] is
//! the delivery receipt.
//!
//! Both are `version (1) | postcard`, decoded with a size limit first and
//! an item count limit, never panicking on any input.
//!
//! When a friend cannot be reached directly, the same payloads travel as
//! the content of a mailbox item ([`Mail`], same framing), sealed to the
//! friend's account rather than encrypted with a device session, so any
//! of the friend's devices can open it.

use serde::{Deserialize, Serialize};

/// Version byte of requests and responses.
pub const FRAME_VERSION: u8 = 1;
/// Largest request, in bytes (the network layer enforces the same bound).
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;
/// Largest response, in bytes.
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024;
/// Most items in one request.
pub const MAX_ITEMS: usize = 512;
/// A batch stops growing at this many bytes of items, leaving room under
/// [`MAX_REQUEST_BYTES`] for framing.
pub const BATCH_BYTES: usize = 768 * 1024;

/// Most bytes of payload frames one bundle (one Olm message) carries.
pub const MAX_BUNDLE_BYTES: usize = 80 * 1024;
/// A sender closes a bundle once it holds this many bytes.
pub const BUNDLE_TARGET_BYTES: usize = 60 * 1024;
/// Most payloads in one bundle.
pub const MAX_BUNDLE_PAYLOADS: usize = 1024;

/// One item of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Item {
    /// An Olm message of the session between the two devices; its
    /// plaintext is a bundle of payload frames ([`encode_bundle`]).
    Olm(Vec<u8>),
    /// A sealed envelope to the receiving account.
    Sealed(Vec<u8>),
}

impl Item {
    /// Bytes it carries.
    pub fn len(&self) -> usize {
        match self {
            Item::Olm(b) | Item::Sealed(b) => b.len(),
        }
    }

    /// Whether it carries nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why a receiver did not keep an item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    /// The item does not decode or decrypt to anything valid; sending it
    /// again will not help.
    Unreadable,
    /// The sending device is not a known device of a friend.
    UnknownDevice,
    /// The receiver holds no session this message belongs to (it lost its
    /// state, say): the sender should start a new session and resend.
    NoSession,
    /// The sender is not (or no longer) a friend.
    NotFriend,
    /// The receiver could not store it right now; try again later.
    Busy,
}

/// The receiver's answer for one item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ack {
    /// Stored durably (or already held).
    Stored,
    /// Not kept.
    Refused(Refusal),
}

/// Why a request or response did not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// Over its size limit; refused unread.
    #[error("frame of {found} bytes is over the {max}-byte limit")]
    TooLarge {
        /// Bytes given.
        found: usize,
        /// The limit.
        max: usize,
    },
    /// An unknown version byte.
    #[error("frame version {found} is not supported")]
    UnknownVersion {
        /// The byte found.
        found: u8,
    },
    /// More items than [`MAX_ITEMS`], or none.
    #[error("a frame must carry between 1 and {MAX_ITEMS} items, this carries {found}")]
    ItemCount {
        /// How many.
        found: usize,
    },
    /// Not a frame.
    #[error("malformed frame: {0}")]
    Malformed(String),
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8], max: usize) -> Result<T, FrameError> {
    if bytes.len() > max {
        return Err(FrameError::TooLarge {
            found: bytes.len(),
            max,
        });
    }
    let (&version, body) = bytes
        .split_first()
        .ok_or_else(|| FrameError::Malformed("empty".into()))?;
    if version != FRAME_VERSION {
        return Err(FrameError::UnknownVersion { found: version });
    }
    let (value, rest) =
        postcard::take_from_bytes(body).map_err(|e| FrameError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(FrameError::Malformed(format!(
            "{} trailing bytes",
            rest.len()
        )));
    }
    Ok(value)
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serialising plain vectors into a Vec cannot fail.
    postcard::to_extend(value, vec![FRAME_VERSION]).unwrap_or_default()
}

/// Encodes a request.
pub fn encode_request(items: &[Item]) -> Vec<u8> {
    encode(&items)
}

/// Decodes a request.
pub fn decode_request(bytes: &[u8]) -> Result<Vec<Item>, FrameError> {
    let items: Vec<Item> = decode(bytes, MAX_REQUEST_BYTES)?;
    if items.is_empty() || items.len() > MAX_ITEMS {
        return Err(FrameError::ItemCount { found: items.len() });
    }
    Ok(items)
}

/// Encodes a bundle: the plaintext of one Olm message, carrying one or
/// more wire payload frames, acknowledged together.
pub fn encode_bundle(payloads: &[Vec<u8>]) -> Vec<u8> {
    encode(&payloads)
}

/// Decodes a bundle.
pub fn decode_bundle(bytes: &[u8]) -> Result<Vec<Vec<u8>>, FrameError> {
    let payloads: Vec<Vec<u8>> = decode(bytes, MAX_BUNDLE_BYTES)?;
    if payloads.is_empty() || payloads.len() > MAX_BUNDLE_PAYLOADS {
        return Err(FrameError::ItemCount {
            found: payloads.len(),
        });
    }
    Ok(payloads)
}

/// A mail bundle closes once it holds this many bytes of payload frames,
/// well inside a mailbox item's content limit.
pub const MAIL_BUNDLE_TARGET_BYTES: usize = 48 * 1024;

/// The content of a mailbox item (`docs/messaging.md`, "Offline mail").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mail {
    /// Payload frames for a friend, as a bundle carries them.
    Bundle(Vec<Vec<u8>>),
    /// A sealed envelope holding a friend request.
    Request(Vec<u8>),
    /// A sealed envelope holding a friend acceptance.
    Accept(Vec<u8>),
    /// Ops for another device of the sender's own account, which could not
    /// be reached directly (`docs/sync.md`). Appended last: variant indexes
    /// are the stored form.
    Sync(SyncMail),
}

/// A [`SyncRequest`] left in the account's own mailbox for one device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncMail {
    /// The device that left it (PeerId bytes).
    pub from: Vec<u8>,
    /// The device it is for (PeerId bytes); other devices leave it be.
    pub to: Vec<u8>,
    /// What a direct push would have carried.
    pub request: SyncRequest,
}

/// Encodes mail content.
pub fn encode_mail(mail: &Mail) -> Vec<u8> {
    encode(mail)
}

/// Decodes mail content.
pub fn decode_mail(bytes: &[u8]) -> Result<Mail, FrameError> {
    let mail: Mail = decode(bytes, kith_proto::mailbox::MAX_CONTENT_BYTES)?;
    match &mail {
        Mail::Bundle(payloads) if payloads.is_empty() || payloads.len() > MAX_BUNDLE_PAYLOADS => {
            Err(FrameError::ItemCount {
                found: payloads.len(),
            })
        }
        _ => Ok(mail),
    }
}

/// Encodes a response.
pub fn encode_response(acks: &[Ack]) -> Vec<u8> {
    encode(&acks)
}

/// Decodes a response to a request of `items` items.
pub fn decode_response(bytes: &[u8], items: usize) -> Result<Vec<Ack>, FrameError> {
    let acks: Vec<Ack> = decode(bytes, MAX_RESPONSE_BYTES)?;
    if acks.len() != items {
        return Err(FrameError::ItemCount { found: acks.len() });
    }
    Ok(acks)
}

/// First byte of a sync frame between two devices of one account
/// (`docs/sync.md`, "Exchange between devices"): `'S'`, which no message
/// frame (version byte 1) or link frame (`'L'`) starts with. The second
/// byte is [`FRAME_VERSION`].
pub const SYNC_TAG: u8 = 0x53;
/// Most bytes of ops one sync request carries, leaving room under
/// [`MAX_REQUEST_BYTES`] for the device list and version vector.
pub const SYNC_BATCH_BYTES: usize = 960 * 1024;

/// One device of an account pushing to another: its device list, what it
/// holds, and ops the other lacks (possibly none).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncRequest {
    /// The sender's newest signed device list (encoded).
    pub list: Vec<u8>,
    /// The sender's version vector (encoded), after the ops below.
    pub held: Vec<u8>,
    /// An encoded op batch, or empty.
    pub batch: Vec<u8>,
}

/// The answer to a [`SyncRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncResponse {
    /// Taken in and stored; what the receiver now holds (encoded version
    /// vector).
    Held(Vec<u8>),
    /// Not taken.
    Refused(SyncRefusal),
    /// Not taken: the sender is not on the receiver's newest device list,
    /// which is this (encoded), so the sender learns it was removed.
    NotListed(Vec<u8>),
}

/// Why a device did not take a sync request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncRefusal {
    /// The sender is not on the receiver's newest device list (it was
    /// removed, or the lists differ in account).
    NotListed,
    /// The request did not decode.
    Unreadable,
    /// The receiver could not store it now; try later.
    Busy,
}

/// Whether `bytes` is a sync frame.
pub fn is_sync_frame(bytes: &[u8]) -> bool {
    bytes.first() == Some(&SYNC_TAG)
}

fn encode_tagged<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_extend(value, vec![SYNC_TAG, FRAME_VERSION]).unwrap_or_default()
}

fn decode_tagged<T: for<'de> Deserialize<'de>>(bytes: &[u8], max: usize) -> Result<T, FrameError> {
    if bytes.len() > max {
        return Err(FrameError::TooLarge {
            found: bytes.len(),
            max,
        });
    }
    match bytes.split_first() {
        Some((&SYNC_TAG, rest)) => decode(rest, max),
        Some((&other, _)) => Err(FrameError::Malformed(format!(
            "not a sync frame (first byte {other:#04x})"
        ))),
        None => Err(FrameError::Malformed("empty".into())),
    }
}

/// Encodes a sync request.
pub fn encode_sync_request(request: &SyncRequest) -> Vec<u8> {
    encode_tagged(request)
}

/// Decodes a sync request.
pub fn decode_sync_request(bytes: &[u8]) -> Result<SyncRequest, FrameError> {
    decode_tagged(bytes, MAX_REQUEST_BYTES)
}

/// Encodes a sync response.
pub fn encode_sync_response(response: &SyncResponse) -> Vec<u8> {
    encode_tagged(response)
}

/// Decodes a sync response.
pub fn decode_sync_response(bytes: &[u8]) -> Result<SyncResponse, FrameError> {
    decode_tagged(bytes, MAX_RESPONSE_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_responses_round_trip() {
        let items = vec![Item::Olm(vec![1, 2, 3]), Item::Sealed(vec![4; 100])];
        assert_eq!(decode_request(&encode_request(&items)).unwrap(), items);
        let acks = vec![Ack::Stored, Ack::Refused(Refusal::NoSession)];
        assert_eq!(decode_response(&encode_response(&acks), 2).unwrap(), acks);
    }

    #[test]
    fn bundles_round_trip_and_are_bounded() {
        let payloads = vec![vec![1; 10], vec![2; 300]];
        assert_eq!(decode_bundle(&encode_bundle(&payloads)).unwrap(), payloads);
        assert_eq!(
            decode_bundle(&encode_bundle(&[])),
            Err(FrameError::ItemCount { found: 0 })
        );
        assert!(matches!(
            decode_bundle(&vec![FRAME_VERSION; MAX_BUNDLE_BYTES + 1]),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn mail_round_trips_and_is_bounded() {
        for mail in [
            Mail::Bundle(vec![vec![1; 10], vec![2; 300]]),
            Mail::Request(vec![3; 50]),
            Mail::Accept(vec![4; 60]),
        ] {
            assert_eq!(decode_mail(&encode_mail(&mail)).unwrap(), mail);
        }
        assert_eq!(
            decode_mail(&encode_mail(&Mail::Bundle(Vec::new()))),
            Err(FrameError::ItemCount { found: 0 })
        );
        assert!(matches!(
            decode_mail(&vec![
                FRAME_VERSION;
                kith_proto::mailbox::MAX_CONTENT_BYTES + 1
            ]),
            Err(FrameError::TooLarge { .. })
        ));
        assert!(matches!(
            decode_mail(&[FRAME_VERSION, 9]),
            Err(FrameError::Malformed(_))
        ));
    }

    #[test]
    fn bad_frames_get_typed_errors() {
        assert!(matches!(decode_request(&[]), Err(FrameError::Malformed(_))));
        assert_eq!(
            decode_request(&[7, 0]),
            Err(FrameError::UnknownVersion { found: 7 })
        );
        assert_eq!(
            decode_request(&encode_request(&[])),
            Err(FrameError::ItemCount { found: 0 })
        );
        assert!(matches!(
            decode_request(&vec![FRAME_VERSION; MAX_REQUEST_BYTES + 1]),
            Err(FrameError::TooLarge { .. })
        ));
        // A length prefix promising more than is there.
        assert!(matches!(
            decode_request(&[FRAME_VERSION, 1, 0, 0xff, 0xff, 0x03]),
            Err(FrameError::Malformed(_))
        ));
        let acks = encode_response(&[Ack::Stored]);
        assert_eq!(
            decode_response(&acks, 2),
            Err(FrameError::ItemCount { found: 1 })
        );
    }

    #[test]
    fn sync_frames_round_trip_and_stay_apart_from_messages() {
        let request = SyncRequest {
            list: vec![1; 40],
            held: vec![2; 10],
            batch: vec![3; 1000],
        };
        let bytes = encode_sync_request(&request);
        assert!(is_sync_frame(&bytes));
        assert_eq!(decode_sync_request(&bytes).unwrap(), request);
        // Neither kind of frame reads as the other.
        assert!(decode_request(&bytes).is_err());
        assert!(decode_sync_request(&encode_request(&[Item::Sealed(vec![1])])).is_err());
        for response in [
            SyncResponse::Held(vec![9; 20]),
            SyncResponse::Refused(SyncRefusal::NotListed),
        ] {
            let bytes = encode_sync_response(&response);
            assert_eq!(decode_sync_response(&bytes).unwrap(), response);
            assert!(decode_sync_response(&bytes[..bytes.len() - 1]).is_err());
        }
        let mut big = vec![SYNC_TAG, FRAME_VERSION];
        big.resize(MAX_REQUEST_BYTES + 1, 0);
        assert!(matches!(
            decode_sync_request(&big),
            Err(FrameError::TooLarge { .. })
        ));
        assert!(decode_sync_request(&[]).is_err());
        assert!(decode_sync_request(&[SYNC_TAG]).is_err());
    }
}
