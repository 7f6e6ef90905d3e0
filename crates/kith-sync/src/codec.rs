//! Strict, bounded, versioned encodings of ops and batches of ops.
//!
//! Every encoded value is one version byte ([`SYNC_VERSION`]) followed by
//! postcard: varint integers, fixed-size arrays as raw bytes, strings and
//! byte strings with a varint length. An op is
//!
//! ```text
//! device (32) | counter | lamport | millis | kind | body length | body
//! ```
//!
//! where the body is the postcard encoding of the kind's fields (see
//! `docs/sync.md`). The body's length prefix is what lets a build keep an op
//! of a kind it does not know ([`OpKind::Unknown`]).
//! A batch is `count | op*` with each op as above minus its version byte.
//!
//! Decoders check the input length before reading anything, refuse
//! trailing bytes, check every field against its limit, and refuse any
//! encoding but the canonical one (an over-long varint, say): a value has
//! exactly one encoding, so "the same op" and "the same bytes" agree.
//! Encoders refuse whatever the decoders would refuse.

use serde::{Deserialize, Serialize};

use crate::op::{
    DeviceId, InvalidOp, KIND_CONTACT_ADDED, KIND_CONTACT_REMOVED, KIND_DELETED, KIND_EDITED,
    KIND_MESSAGE_RECEIVED, KIND_MESSAGE_SENT, KIND_NOSPAM, KIND_PROFILE_NAME, KIND_READ_UP_TO,
    KIND_REQUEST_DECIDED, MAX_OP_BYTES, Op, OpId, OpKind, Stamp,
};

/// The sync format version this build reads and writes: the first byte of
/// every encoded op, batch and version vector.
pub const SYNC_VERSION: u8 = 1;
/// Most ops one batch may hold.
pub const MAX_BATCH_OPS: usize = 4096;
/// Largest encoded batch, in bytes. Batches that travel through the
/// account's mailbox must be smaller: ask
/// [`Replica::missing_for`](crate::Replica::missing_for) for what fits.
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;

/// Why bytes are not a sync value of the expected kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Longer than the largest valid value; refused unread.
    #[error("{found} bytes is over the {max}-byte limit")]
    TooLarge {
        /// Bytes given.
        found: usize,
        /// The limit.
        max: usize,
    },
    /// No bytes at all.
    #[error("empty input")]
    Empty,
    /// A sync format version this build does not know.
    #[error("sync format version {found} is not supported (this build reads {SYNC_VERSION})")]
    UnknownVersion {
        /// The version byte found.
        found: u8,
    },
    /// The bytes do not form a value (truncated, bad UTF-8, bad tag).
    #[error("malformed input: {0}")]
    Malformed(String),
    /// A whole value (or op body) followed by extra bytes.
    #[error("{count} unexpected bytes after the value")]
    TrailingBytes {
        /// How many.
        count: usize,
    },
    /// A value in other than its one canonical encoding (an over-long
    /// varint, version vector entries out of order or repeated).
    #[error("the value is not in its canonical encoding")]
    NonCanonical,
    /// A count or counter outside its limits.
    #[error("{field} is {found}; it must be {min} to {max}")]
    OutOfRange {
        /// Which field.
        field: &'static str,
        /// What was found.
        found: u64,
        /// The least allowed.
        min: u64,
        /// The most allowed.
        max: u64,
    },
    /// Well-formed, but an op breaks a limit.
    #[error("invalid op: {0}")]
    Invalid(#[from] InvalidOp),
}

/// Why a value could not be encoded: it breaks a limit its decoder
/// enforces.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// An op breaks a limit.
    #[error("invalid op: {0}")]
    Invalid(#[from] InvalidOp),
    /// The encoding would be over its size limit.
    #[error("the encoding would be {found} bytes, over the {max}-byte limit")]
    TooLarge {
        /// Encoded size (so far).
        found: usize,
        /// The limit.
        max: usize,
    },
    /// A batch of more than [`MAX_BATCH_OPS`] ops.
    #[error("a batch holds at most {max} ops, this has {found}")]
    TooManyOps {
        /// Ops given.
        found: usize,
        /// The limit.
        max: usize,
    },
    /// The serializer failed.
    #[error("encoding failed: {0}")]
    Serialize(String),
}

/// An op as it travels, its body still encoded.
#[derive(Serialize, Deserialize)]
struct RawOp<'a> {
    device: DeviceId,
    counter: u64,
    lamport: u64,
    millis: u64,
    kind: u32,
    #[serde(borrow)]
    body: &'a [u8],
}

fn serialize_error(e: postcard::Error) -> EncodeError {
    EncodeError::Serialize(e.to_string())
}

fn malformed(e: postcard::Error) -> DecodeError {
    DecodeError::Malformed(e.to_string())
}

fn encode_body(kind: &OpKind) -> Result<Vec<u8>, EncodeError> {
    let body = match kind {
        OpKind::MessageSent { friend, message } | OpKind::MessageReceived { friend, message } => {
            postcard::to_allocvec(&(friend, message))
        }
        OpKind::Edited {
            friend,
            target,
            body,
            at,
        } => postcard::to_allocvec(&(friend, target, at, body)),
        OpKind::Deleted { friend, target, at } => postcard::to_allocvec(&(friend, target, at)),
        OpKind::ContactAdded {
            friend,
            id_bytes,
            name,
            card,
        } => postcard::to_allocvec(&(friend, id_bytes, name, card)),
        OpKind::ContactRemoved { friend } => postcard::to_allocvec(friend),
        OpKind::RequestDecided { from, decision } => postcard::to_allocvec(&(from, decision)),
        OpKind::ReadUpTo { friend, upto } => postcard::to_allocvec(&(friend, upto)),
        OpKind::ProfileName(name) => postcard::to_allocvec(name),
        OpKind::Nospam(nospam) => postcard::to_allocvec(nospam),
        OpKind::Unknown { body, .. } => return Ok(body.clone()),
    };
    body.map_err(serialize_error)
}

/// Decodes a whole body: trailing bytes are refused.
fn whole<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, DecodeError> {
    let (value, rest) = postcard::take_from_bytes(body).map_err(malformed)?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes { count: rest.len() });
    }
    Ok(value)
}

fn decode_body(tag: u32, body: &[u8]) -> Result<OpKind, DecodeError> {
    Ok(match tag {
        KIND_MESSAGE_SENT => {
            let (friend, message) = whole(body)?;
            OpKind::MessageSent { friend, message }
        }
        KIND_MESSAGE_RECEIVED => {
            let (friend, message) = whole(body)?;
            OpKind::MessageReceived { friend, message }
        }
        KIND_EDITED => {
            let (friend, target, at, body) = whole(body)?;
            OpKind::Edited {
                friend,
                target,
                body,
                at,
            }
        }
        KIND_DELETED => {
            let (friend, target, at) = whole(body)?;
            OpKind::Deleted { friend, target, at }
        }
        KIND_CONTACT_ADDED => {
            // Byte strings are read borrowed (the same layout as a sequence
            // of bytes) and copied once; like every length, theirs is
            // checked against the input before anything is allocated.
            let (friend, id_bytes, name, card): ([u8; 32], &[u8], String, &[u8]) = whole(body)?;
            OpKind::ContactAdded {
                friend,
                id_bytes: id_bytes.to_vec(),
                name,
                card: card.to_vec(),
            }
        }
        KIND_CONTACT_REMOVED => OpKind::ContactRemoved {
            friend: whole(body)?,
        },
        KIND_REQUEST_DECIDED => {
            let (from, decision) = whole(body)?;
            OpKind::RequestDecided { from, decision }
        }
        KIND_READ_UP_TO => {
            let (friend, upto) = whole(body)?;
            OpKind::ReadUpTo { friend, upto }
        }
        KIND_PROFILE_NAME => OpKind::ProfileName(whole(body)?),
        KIND_NOSPAM => OpKind::Nospam(whole(body)?),
        // Every tag below FIRST_UNKNOWN_KIND is matched above.
        kind => OpKind::Unknown {
            kind,
            body: body.to_vec(),
        },
    })
}

/// Appends `op` without a version byte to `out`.
pub(crate) fn encode_raw(op: &Op, out: Vec<u8>) -> Result<Vec<u8>, EncodeError> {
    op.validate()?;
    let body = encode_body(&op.kind)?;
    let raw = RawOp {
        device: op.id.device,
        counter: op.id.counter,
        lamport: op.stamp.lamport,
        millis: op.stamp.millis,
        kind: op.kind.tag(),
        body: &body,
    };
    postcard::to_extend(&raw, out).map_err(serialize_error)
}

/// Decodes one op without a version byte from the start of `input`; returns
/// it and how many bytes it took.
pub(crate) fn decode_raw(input: &[u8]) -> Result<(Op, usize), DecodeError> {
    let (raw, rest): (RawOp<'_>, &[u8]) = postcard::take_from_bytes(input).map_err(malformed)?;
    let used = input.len() - rest.len();
    let op = Op {
        id: OpId {
            device: raw.device,
            counter: raw.counter,
        },
        stamp: Stamp {
            lamport: raw.lamport,
            millis: raw.millis,
        },
        kind: decode_body(raw.kind, raw.body)?,
    };
    op.validate()?;
    let again = encode_raw(&op, Vec::with_capacity(used))
        .map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if again.as_slice() != &input[..used] {
        return Err(DecodeError::NonCanonical);
    }
    Ok((op, used))
}

/// Refuses input over `max` bytes, empty input and unknown versions;
/// returns what follows the version byte.
pub(crate) fn open_frame(bytes: &[u8], max: usize) -> Result<&[u8], DecodeError> {
    if bytes.len() > max {
        return Err(DecodeError::TooLarge {
            found: bytes.len(),
            max,
        });
    }
    let (&version, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
    if version != SYNC_VERSION {
        return Err(DecodeError::UnknownVersion { found: version });
    }
    Ok(body)
}

/// Bytes the varint encoding of `value` takes.
pub(crate) fn varint_len(value: u64) -> usize {
    let bits = 64 - value.leading_zeros() as usize;
    bits.div_ceil(7).max(1)
}

/// Reads one canonical varint from the start of `input`.
pub(crate) fn take_varint(input: &[u8]) -> Result<(u64, &[u8]), DecodeError> {
    let (value, rest): (u64, &[u8]) = postcard::take_from_bytes(input).map_err(malformed)?;
    if input.len() - rest.len() != varint_len(value) {
        return Err(DecodeError::NonCanonical);
    }
    Ok((value, rest))
}

impl Op {
    /// Encodes the op: version byte, then the op.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let out = encode_raw(self, vec![SYNC_VERSION])?;
        if out.len() > MAX_OP_BYTES {
            return Err(EncodeError::TooLarge {
                found: out.len(),
                max: MAX_OP_BYTES,
            });
        }
        Ok(out)
    }

    /// Decodes and validates one op.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let body = open_frame(bytes, MAX_OP_BYTES)?;
        let (op, used) = decode_raw(body)?;
        if used != body.len() {
            return Err(DecodeError::TrailingBytes {
                count: body.len() - used,
            });
        }
        Ok(op)
    }

    /// Length of [`Op::encode`]'s output.
    pub fn encoded_len(&self) -> Result<usize, EncodeError> {
        self.encode().map(|bytes| bytes.len())
    }
}

/// Encodes a batch of ops (at most [`MAX_BATCH_OPS`], at most
/// [`MAX_BATCH_BYTES`] encoded): version byte, count, then each op without
/// its version byte.
pub fn encode_batch(ops: &[Op]) -> Result<Vec<u8>, EncodeError> {
    if ops.len() > MAX_BATCH_OPS {
        return Err(EncodeError::TooManyOps {
            found: ops.len(),
            max: MAX_BATCH_OPS,
        });
    }
    let mut out = postcard::to_extend(&ops.len(), vec![SYNC_VERSION]).map_err(serialize_error)?;
    for op in ops {
        out = encode_raw(op, out)?;
        if out.len() > MAX_BATCH_BYTES {
            return Err(EncodeError::TooLarge {
                found: out.len(),
                max: MAX_BATCH_BYTES,
            });
        }
    }
    Ok(out)
}

/// Decodes and validates a batch of ops. The ops come back in the order
/// they were encoded; a batch may be empty ("nothing you lack").
pub fn decode_batch(bytes: &[u8]) -> Result<Vec<Op>, DecodeError> {
    let body = open_frame(bytes, MAX_BATCH_BYTES)?;
    let (count, mut rest) = take_varint(body)?;
    if count > MAX_BATCH_OPS as u64 {
        return Err(DecodeError::OutOfRange {
            field: "batch op count",
            found: count,
            min: 0,
            max: MAX_BATCH_OPS as u64,
        });
    }
    let mut ops = Vec::new();
    for _ in 0..count {
        let (op, used) = decode_raw(rest)?;
        ops.push(op);
        rest = &rest[used..];
    }
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes { count: rest.len() });
    }
    Ok(ops)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_lengths_match_postcard() {
        for value in [
            0,
            1,
            127,
            128,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            assert_eq!(
                varint_len(value),
                postcard::to_allocvec(&value).unwrap().len(),
                "{value}"
            );
            let bytes = postcard::to_allocvec(&value).unwrap();
            assert_eq!(take_varint(&bytes).unwrap().0, value);
        }
        // 0 written in two bytes instead of one.
        assert_eq!(take_varint(&[0x80, 0x00]), Err(DecodeError::NonCanonical));
    }
}
