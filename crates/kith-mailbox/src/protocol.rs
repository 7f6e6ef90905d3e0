//! The request and response messages of `/kith/mailbox/1.0.0`.
//!
//! One request-response protocol carries everything a mailbox needs:
//! a sender's [`Request::Deposit`], a volunteer's [`Request::Handoff`] to a
//! new member of an address's closest set, and the recipient's
//! [`Request::Challenge`] → [`Request::Fetch`] (paged) → [`Request::Ack`].
//! The values inside (items, receipts, challenges, proofs, acknowledgements,
//! refusals) travel as their own encodings from [`kith_proto::mailbox`],
//! kept as bytes here so that each is checked by its own strict decoder at
//! the place that uses it, and so that a refusal reason added later still
//! reaches an older client as bytes.
//!
//! Every message is the version byte [`PROTOCOL_VERSION`] followed by the
//! postcard encoding of [`Request`] or [`Response`]. The decoders refuse,
//! each with a typed [`DecodeError`]: input over [`MAX_REQUEST_BYTES`] or
//! [`MAX_RESPONSE_BYTES`] (before reading anything), empty input, an unknown
//! version, truncation, malformed input — an unknown message kind, or a list
//! over its limit ([`MAX_HANDOFF_RECEIPTS`] receipts, [`MAX_PAGE_ITEMS`]
//! items, refused from the count before any element is read) — and trailing
//! bytes. Byte strings are read as slices of the input, so no length prefix
//! can make a decoder allocate more than the input's size. The encoders
//! refuse what the decoders would.

use std::fmt;
use std::marker::PhantomData;

use kith_proto::mailbox::DepositRefusal;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};

/// The libp2p protocol name.
pub const PROTOCOL: &str = "/kith/mailbox/1.0.0";
/// The first byte of every request and response.
pub const PROTOCOL_VERSION: u8 = 1;
/// Largest encoded request: a deposit or hand-off of the largest item
/// (65,704 bytes) with [`MAX_HANDOFF_RECEIPTS`] receipts fits with room to
/// spare.
pub const MAX_REQUEST_BYTES: usize = 96 * 1024;
/// Largest encoded response: a fetch page (1 MiB by default) always fits.
pub const MAX_RESPONSE_BYTES: usize = 1536 * 1024;
/// Most receipts carried with one item, in a hand-off or a fetch page.
pub const MAX_HANDOFF_RECEIPTS: usize = 8;
/// Most items in one fetch page. The smallest items encode in about 150
/// bytes, so a 1 MiB page holds fewer than 7,000; this bounds what a page
/// of tiny items costs the client to decode.
pub const MAX_PAGE_ITEMS: usize = 4096;

/// What a peer asks of a volunteer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// A sender leaves an item.
    Deposit {
        /// An encoded [`kith_proto::mailbox::MailboxItem`].
        #[serde(with = "bytes")]
        item: Vec<u8>,
    },
    /// A volunteer passes an item on to a new member of its address's
    /// closest set, with the receipts it holds for it.
    Handoff {
        /// An encoded [`kith_proto::mailbox::MailboxItem`], byte for byte
        /// as deposited.
        #[serde(with = "bytes")]
        item: Vec<u8>,
        /// Encoded [`kith_proto::mailbox::WitnessReceipt`]s, at most
        /// [`MAX_HANDOFF_RECEIPTS`].
        #[serde(serialize_with = "byte_list", deserialize_with = "receipt_list")]
        receipts: Vec<Vec<u8>>,
    },
    /// The recipient asks for a [`kith_proto::mailbox::FetchChallenge`] for
    /// its mailbox.
    Challenge {
        /// The mailbox address.
        address: [u8; 32],
    },
    /// The recipient answers a challenge and asks for a page of items.
    Fetch {
        /// The encoded challenge, as the volunteer sent it.
        #[serde(with = "bytes")]
        challenge: Vec<u8>,
        /// The encoded [`kith_proto::mailbox::FetchProof`].
        #[serde(with = "bytes")]
        proof: Vec<u8>,
        /// Items are served in item ID order; this page starts after this
        /// ID (the last one of the previous page), or at the start.
        after: Option<[u8; 16]>,
    },
    /// The recipient has stored items: delete them.
    Ack {
        /// An encoded [`kith_proto::mailbox::FetchAck`].
        #[serde(with = "bytes")]
        ack: Vec<u8>,
    },
}

/// One item of a fetch page, with the receipts the volunteer holds for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredItem {
    /// The encoded item, byte for byte as deposited.
    #[serde(with = "bytes")]
    pub item: Vec<u8>,
    /// Encoded witness receipts, at most [`MAX_HANDOFF_RECEIPTS`].
    #[serde(serialize_with = "byte_list", deserialize_with = "receipt_list")]
    pub receipts: Vec<Vec<u8>>,
}

/// A volunteer's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// The item is stored. For a deposit, the volunteer's encoded
    /// [`kith_proto::mailbox::WitnessReceipt`]; for a hand-off, the first
    /// receipt kept (a carried one, or the volunteer's own when none
    /// verified), or empty.
    Accepted {
        /// The encoded receipt.
        #[serde(with = "bytes")]
        receipt: Vec<u8>,
    },
    /// The item was refused: an encoded [`DepositRefusal`], kept as bytes
    /// so that a reason added later still decodes ([`Response::refusal`]).
    Refused {
        /// The encoded refusal.
        #[serde(with = "bytes")]
        refusal: Vec<u8>,
    },
    /// The challenge to answer, an encoded
    /// [`kith_proto::mailbox::FetchChallenge`].
    Challenge {
        /// The encoded challenge.
        #[serde(with = "bytes")]
        challenge: Vec<u8>,
    },
    /// A page of the mailbox, in item ID order.
    Items {
        /// At most [`MAX_PAGE_ITEMS`] items.
        #[serde(deserialize_with = "page_items")]
        items: Vec<StoredItem>,
        /// Whether more items follow: ask again with `after` set to the
        /// last item's ID.
        more: bool,
    },
    /// The acknowledgement was checked; this many items were deleted.
    Acked {
        /// Items deleted (those already gone are not counted).
        deleted: u32,
    },
    /// A challenge, fetch or acknowledgement was not served.
    Denied(Denial),
}

/// Why a volunteer did not serve a request other than a deposit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum Denial {
    /// The challenge was not issued by this volunteer, or it has been
    /// forgotten (volunteers keep a bounded number).
    #[error("the volunteer did not issue that challenge or has forgotten it: ask for a new one")]
    UnknownChallenge,
    /// The account does not own the mailbox.
    #[error("that account does not own this mailbox")]
    WrongAccount,
    /// The account's signature does not match.
    #[error("the account signature does not match")]
    BadSignature,
    /// The challenge has expired.
    #[error("the challenge has expired: ask for a new one")]
    ChallengeExpired,
    /// The challenge was made by another volunteer.
    #[error("the challenge was made by another volunteer")]
    WrongVolunteer,
    /// The request could not be read.
    #[error("the volunteer could not read the request")]
    Malformed,
    /// The peer asks too often.
    #[error("too many requests: try again in {retry_after_secs} s")]
    RateLimited {
        /// Seconds to wait.
        retry_after_secs: u64,
    },
    /// The volunteer cannot serve requests now (its storage failed).
    #[error("the volunteer cannot serve requests right now: try again later")]
    Busy,
}

/// Why bytes are not a mailbox protocol message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Longer than the largest valid message; refused unread.
    #[error("{found} bytes is over the {max}-byte limit")]
    TooLarge {
        /// Bytes given.
        found: usize,
        /// The limit.
        max: usize,
    },
    /// No bytes at all.
    #[error("empty message")]
    Empty,
    /// A protocol version this build does not speak.
    #[error(
        "mailbox protocol version {found} is not supported (this build speaks {PROTOCOL_VERSION})"
    )]
    UnknownVersion {
        /// The version byte found.
        found: u8,
    },
    /// The input ends before the message does.
    #[error("truncated message")]
    Truncated,
    /// The bytes do not form a message.
    #[error("malformed message: {0}")]
    Malformed(&'static str),
    /// A whole message followed by extra bytes.
    #[error("{count} unexpected bytes after the message")]
    TrailingBytes {
        /// How many.
        count: usize,
    },
}

/// Why a message could not be encoded: its decoder would refuse it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The encoding is over the message's size limit.
    #[error("the message encodes in {found} bytes, over the {max}-byte limit")]
    TooLarge {
        /// Bytes it would take.
        found: usize,
        /// The limit.
        max: usize,
    },
    /// A list is over its limit.
    #[error("{found} {field} is over the limit of {max}")]
    TooMany {
        /// Which list.
        field: &'static str,
        /// Its length.
        found: usize,
        /// The limit.
        max: usize,
    },
}

impl Request {
    /// Encodes the request; refuses more than [`MAX_HANDOFF_RECEIPTS`]
    /// receipts or an encoding over [`MAX_REQUEST_BYTES`].
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        if let Self::Handoff { receipts, .. } = self {
            check_count("receipts", receipts.len(), MAX_HANDOFF_RECEIPTS)?;
        }
        encode(self, MAX_REQUEST_BYTES)
    }

    /// Decodes a request.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        decode(bytes, MAX_REQUEST_BYTES)
    }
}

impl Response {
    /// The response refusing a deposit or hand-off for `refusal`.
    pub fn refused(refusal: DepositRefusal) -> Self {
        Self::Refused {
            refusal: refusal.encode(),
        }
    }

    /// The refusal a [`Response::Refused`] carries, or `None` for any other
    /// response. A reason this build does not know (or unreadable bytes)
    /// reads as [`DepositRefusal::Malformed`], to be shown as a generic
    /// refusal.
    pub fn refusal(&self) -> Option<DepositRefusal> {
        match self {
            Self::Refused { refusal } => {
                Some(DepositRefusal::decode(refusal).unwrap_or(DepositRefusal::Malformed))
            }
            _ => None,
        }
    }

    /// Encodes the response; refuses more than [`MAX_PAGE_ITEMS`] items,
    /// more than [`MAX_HANDOFF_RECEIPTS`] receipts for one item, or an
    /// encoding over [`MAX_RESPONSE_BYTES`].
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        if let Self::Items { items, .. } = self {
            check_count("items", items.len(), MAX_PAGE_ITEMS)?;
            for item in items {
                check_count("receipts", item.receipts.len(), MAX_HANDOFF_RECEIPTS)?;
            }
        }
        encode(self, MAX_RESPONSE_BYTES)
    }

    /// Decodes a response.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        decode(bytes, MAX_RESPONSE_BYTES)
    }
}

impl StoredItem {
    /// Bytes this item adds to an encoded [`Response::Items`].
    pub fn encoded_len(&self) -> usize {
        bytes_len(self.item.len())
            + varint_len(self.receipts.len())
            + self
                .receipts
                .iter()
                .map(|r| bytes_len(r.len()))
                .sum::<usize>()
    }
}

/// Bytes an encoded [`Response::Items`] takes besides its items: the
/// version, the variant, the item count and `more`.
pub(crate) const ITEMS_OVERHEAD: usize = 1 + 1 + 2 + 1;

/// Length of a postcard varint for `n`.
fn varint_len(n: usize) -> usize {
    let bits = usize::BITS - n.leading_zeros();
    (bits as usize).div_ceil(7).max(1)
}

/// Length of a postcard byte string of `n` bytes.
fn bytes_len(n: usize) -> usize {
    varint_len(n) + n
}

fn check_count(field: &'static str, found: usize, max: usize) -> Result<(), EncodeError> {
    if found > max {
        return Err(EncodeError::TooMany { field, found, max });
    }
    Ok(())
}

fn encode<T: Serialize>(value: &T, max: usize) -> Result<Vec<u8>, EncodeError> {
    // Serializing into a Vec fails only for sequences of unknown length,
    // and every sequence here is a slice.
    #[allow(clippy::expect_used)]
    let out = postcard::to_extend(value, vec![PROTOCOL_VERSION]).expect("protocol messages encode");
    if out.len() > max {
        return Err(EncodeError::TooLarge {
            found: out.len(),
            max,
        });
    }
    Ok(out)
}

fn decode<T: de::DeserializeOwned>(bytes: &[u8], max: usize) -> Result<T, DecodeError> {
    if bytes.len() > max {
        return Err(DecodeError::TooLarge {
            found: bytes.len(),
            max,
        });
    }
    let (&version, rest) = bytes.split_first().ok_or(DecodeError::Empty)?;
    if version != PROTOCOL_VERSION {
        return Err(DecodeError::UnknownVersion { found: version });
    }
    let (value, tail) = postcard::take_from_bytes::<T>(rest).map_err(postcard_error)?;
    if !tail.is_empty() {
        return Err(DecodeError::TrailingBytes { count: tail.len() });
    }
    Ok(value)
}

fn postcard_error(e: postcard::Error) -> DecodeError {
    match e {
        postcard::Error::DeserializeUnexpectedEnd => DecodeError::Truncated,
        postcard::Error::DeserializeBadVarint => DecodeError::Malformed("bad varint"),
        postcard::Error::DeserializeBadBool => DecodeError::Malformed("bad boolean"),
        postcard::Error::DeserializeBadOption => DecodeError::Malformed("bad option tag"),
        // The only custom errors our types raise: an unknown variant
        // index, or a list over its limit (`Bounded`).
        postcard::Error::SerdeDeCustom => {
            DecodeError::Malformed("unknown message kind, or a list over its limit")
        }
        _ => DecodeError::Malformed("not a mailbox protocol message"),
    }
}

// ------------------------------------------------- serde helpers (crate)

/// A `Vec<u8>` field as a postcard byte string (varint length, bytes: the
/// same bytes serde's default sequence of `u8` gives), read as one slice of
/// the input.
pub(crate) mod bytes {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(value: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(value)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_byte_buf(BytesVisitor)
    }
}

struct BytesVisitor;

impl<'de> Visitor<'de> for BytesVisitor {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a byte string")
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
        Ok(v.to_vec())
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
        Ok(v)
    }
}

/// One byte string of a list.
struct ByteBuf(Vec<u8>);

impl<'de> Deserialize<'de> for ByteBuf {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_byte_buf(BytesVisitor).map(ByteBuf)
    }
}

struct ByteRef<'a>(&'a [u8]);

impl Serialize for ByteRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

/// Writes a list of byte strings.
pub(crate) fn byte_list<S: Serializer>(list: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(list.iter().map(|b| ByteRef(b)))
}

/// Reads at most [`MAX_HANDOFF_RECEIPTS`] byte strings.
pub(crate) fn receipt_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
    let list: Vec<ByteBuf> = d.deserialize_seq(Bounded::new(MAX_HANDOFF_RECEIPTS, "receipts"))?;
    Ok(list.into_iter().map(|b| b.0).collect())
}

fn page_items<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<StoredItem>, D::Error> {
    d.deserialize_seq(Bounded::new(MAX_PAGE_ITEMS, "items"))
}

/// A sequence of at most `max` elements, refused from its count before any
/// element is read.
struct Bounded<T> {
    max: usize,
    what: &'static str,
    element: PhantomData<T>,
}

impl<T> Bounded<T> {
    fn new(max: usize, what: &'static str) -> Self {
        Self {
            max,
            what,
            element: PhantomData,
        }
    }
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for Bounded<T> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at most {} {}", self.max, self.what)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        if let Some(len) = seq.size_hint().filter(|&len| len > self.max) {
            return Err(de::Error::invalid_length(len, &self));
        }
        // A small start: the count is the sender's claim, the elements are
        // what it pays for.
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(16));
        while let Some(element) = seq.next_element()? {
            if out.len() == self.max {
                return Err(de::Error::invalid_length(self.max + 1, &self));
            }
            out.push(element);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use kith_proto::mailbox::{MAX_ENCODED_ITEM_BYTES, MAX_RECEIPT_BYTES};

    use super::*;

    fn samples() -> (Vec<Request>, Vec<Response>) {
        let requests = vec![
            Request::Deposit { item: vec![1; 300] },
            Request::Handoff {
                item: vec![2; 300],
                receipts: vec![vec![3; 123]; MAX_HANDOFF_RECEIPTS],
            },
            Request::Handoff {
                item: vec![2; 10],
                receipts: Vec::new(),
            },
            Request::Challenge { address: [4; 32] },
            Request::Fetch {
                challenge: vec![5; 107],
                proof: vec![6; 97],
                after: Some([7; 16]),
            },
            Request::Fetch {
                challenge: vec![5; 107],
                proof: vec![6; 97],
                after: None,
            },
            Request::Ack { ack: vec![8; 200] },
        ];
        let responses = vec![
            Response::Accepted {
                receipt: vec![9; 123],
            },
            Response::Accepted {
                receipt: Vec::new(),
            },
            Response::refused(DepositRefusal::RateLimited {
                retry_after_secs: 42,
            }),
            Response::Challenge {
                challenge: vec![10; 107],
            },
            Response::Items {
                items: vec![
                    StoredItem {
                        item: vec![11; 5000],
                        receipts: vec![vec![12; 123]; 3],
                    },
                    StoredItem {
                        item: vec![13; 150],
                        receipts: Vec::new(),
                    },
                ],
                more: true,
            },
            Response::Items {
                items: Vec::new(),
                more: false,
            },
            Response::Acked { deleted: 256 },
            Response::Denied(Denial::RateLimited {
                retry_after_secs: 60,
            }),
            Response::Denied(Denial::Busy),
        ];
        (requests, responses)
    }

    #[test]
    fn messages_round_trip() {
        let (requests, responses) = samples();
        for request in requests {
            let bytes = request.encode().unwrap();
            assert_eq!(bytes[0], PROTOCOL_VERSION);
            assert_eq!(Request::decode(&bytes), Ok(request));
        }
        for response in responses {
            let bytes = response.encode().unwrap();
            assert_eq!(Response::decode(&bytes), Ok(response));
        }
    }

    #[test]
    fn byte_strings_encode_like_serde_sequences() {
        // The `bytes` helpers are an optimisation, not a format change.
        #[derive(Serialize)]
        struct Plain {
            item: Vec<u8>,
            receipts: Vec<Vec<u8>>,
        }
        let plain = postcard::to_allocvec(&Plain {
            item: vec![1, 2, 300u16 as u8],
            receipts: vec![vec![4; 130], vec![]],
        })
        .unwrap();
        let ours = postcard::to_allocvec(&StoredItem {
            item: vec![1, 2, 300u16 as u8],
            receipts: vec![vec![4; 130], vec![]],
        })
        .unwrap();
        assert_eq!(plain, ours);
    }

    #[test]
    fn encoded_len_of_a_stored_item_is_exact() {
        for (item, receipts) in [(150, 0), (127, 1), (128, 8), (65_704, 8), (16_384, 3)] {
            let stored = StoredItem {
                item: vec![1; item],
                receipts: vec![vec![2; MAX_RECEIPT_BYTES]; receipts],
            };
            let one = Response::Items {
                items: vec![stored.clone()],
                more: true,
            };
            let empty = Response::Items {
                items: Vec::new(),
                more: true,
            };
            assert_eq!(
                one.encode().unwrap().len() - empty.encode().unwrap().len(),
                stored.encoded_len()
            );
        }
        let empty = Response::Items {
            items: Vec::new(),
            more: false,
        };
        assert!(empty.encode().unwrap().len() <= ITEMS_OVERHEAD);
    }

    #[test]
    fn the_largest_handoff_fits_a_request() {
        let request = Request::Handoff {
            item: vec![0xff; MAX_ENCODED_ITEM_BYTES],
            receipts: vec![vec![0xff; MAX_RECEIPT_BYTES]; MAX_HANDOFF_RECEIPTS],
        };
        assert!(request.encode().unwrap().len() < MAX_REQUEST_BYTES);
    }

    #[test]
    fn every_truncation_and_a_trailing_byte_are_refused() {
        let (requests, responses) = samples();
        for request in requests {
            let bytes = request.encode().unwrap();
            assert_eq!(Request::decode(&[]), Err(DecodeError::Empty));
            for cut in 1..bytes.len() {
                assert!(
                    Request::decode(&bytes[..cut]).is_err(),
                    "{request:?} cut at {cut}"
                );
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert_eq!(
                Request::decode(&longer),
                Err(DecodeError::TrailingBytes { count: 1 })
            );
        }
        for response in responses {
            let bytes = response.encode().unwrap();
            for cut in 1..bytes.len() {
                assert!(Response::decode(&bytes[..cut]).is_err());
            }
            assert_eq!(Response::decode(&bytes[..1]), Err(DecodeError::Truncated));
            let mut longer = bytes.clone();
            longer.push(0);
            assert_eq!(
                Response::decode(&longer),
                Err(DecodeError::TrailingBytes { count: 1 })
            );
        }
    }

    #[test]
    fn oversize_input_and_unknown_versions_are_refused_unread() {
        assert_eq!(
            Request::decode(&vec![PROTOCOL_VERSION; MAX_REQUEST_BYTES + 1]),
            Err(DecodeError::TooLarge {
                found: MAX_REQUEST_BYTES + 1,
                max: MAX_REQUEST_BYTES
            })
        );
        assert_eq!(
            Response::decode(&vec![PROTOCOL_VERSION; MAX_RESPONSE_BYTES + 1]),
            Err(DecodeError::TooLarge {
                found: MAX_RESPONSE_BYTES + 1,
                max: MAX_RESPONSE_BYTES
            })
        );
        let mut bytes = Request::Challenge { address: [1; 32] }.encode().unwrap();
        bytes[0] = 2;
        assert_eq!(
            Request::decode(&bytes),
            Err(DecodeError::UnknownVersion { found: 2 })
        );
        // An unknown message kind.
        assert!(matches!(
            Request::decode(&[PROTOCOL_VERSION, 9]),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn lists_over_their_limit_are_refused_both_ways() {
        let request = Request::Handoff {
            item: vec![1; 10],
            receipts: vec![vec![2; 10]; MAX_HANDOFF_RECEIPTS + 1],
        };
        assert_eq!(
            request.encode(),
            Err(EncodeError::TooMany {
                field: "receipts",
                found: MAX_HANDOFF_RECEIPTS + 1,
                max: MAX_HANDOFF_RECEIPTS
            })
        );
        // Built by hand: version, Handoff, item, then 9 receipts.
        let mut bytes = vec![PROTOCOL_VERSION, 1, 1, 0xaa, 9];
        for _ in 0..9 {
            bytes.extend_from_slice(&[1, 0xbb]);
        }
        assert!(matches!(
            Request::decode(&bytes),
            Err(DecodeError::Malformed(_))
        ));
        // A count far over the limit, with nothing behind it.
        let bytes = [PROTOCOL_VERSION, 3, 0xff, 0xff, 0x03];
        assert!(Response::decode(&bytes).is_err());

        let page = Response::Items {
            items: vec![
                StoredItem {
                    item: vec![1],
                    receipts: Vec::new()
                };
                MAX_PAGE_ITEMS + 1
            ],
            more: false,
        };
        assert!(matches!(
            page.encode(),
            Err(EncodeError::TooMany { field: "items", .. })
        ));
        // The same page by hand: the decoder refuses it from the count.
        let mut bytes = vec![PROTOCOL_VERSION, 3];
        let mut count = MAX_PAGE_ITEMS + 1;
        while count >= 0x80 {
            bytes.push((count & 0x7f) as u8 | 0x80);
            count >>= 7;
        }
        bytes.push(count as u8);
        for _ in 0..=MAX_PAGE_ITEMS {
            bytes.extend_from_slice(&[1, 0xcc, 0]);
        }
        bytes.push(0);
        assert!(matches!(
            Response::decode(&bytes),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn a_refusal_from_a_newer_build_reads_as_malformed() {
        let response = Response::refused(DepositRefusal::VolunteerFull);
        assert_eq!(response.refusal(), Some(DepositRefusal::VolunteerFull));
        let newer = Response::Refused {
            refusal: vec![1, 40],
        };
        let newer = Response::decode(&newer.encode().unwrap()).unwrap();
        assert_eq!(newer.refusal(), Some(DepositRefusal::Malformed));
        assert_eq!(Response::Acked { deleted: 1 }.refusal(), None);
    }

    #[test]
    fn denials_read_as_sentences() {
        for denial in [
            Denial::UnknownChallenge,
            Denial::WrongAccount,
            Denial::BadSignature,
            Denial::ChallengeExpired,
            Denial::WrongVolunteer,
            Denial::Malformed,
            Denial::RateLimited {
                retry_after_secs: 3,
            },
            Denial::Busy,
        ] {
            let text = denial.to_string();
            assert!(text.starts_with(|c: char| c.is_ascii_lowercase()), "{text}");
            assert!(!text.ends_with('.'), "{text}");
        }
    }
}
