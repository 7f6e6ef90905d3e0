//! Multi-device sync, the data layer: one account's devices share an op
//! log and merge it deterministically. No I/O, no networking, no clocks.
//!
//! Every change a device makes to what the account's devices share — a
//! message sent or received, an edit or deletion, a contact added or
//! removed, a friend request answered, a conversation read, the profile
//! name or nospam changed — becomes an [`Op`]: its [`OpId`] (the device and
//! that device's counter, 1, 2, 3, … with no gaps), a [`Stamp`] from the
//! device's hybrid clock (Lamport value, then wall-clock milliseconds) and
//! an [`OpKind`].
//!
//! Data flows like this:
//!
//! 1. A device records what it did with [`Replica::record`], which makes
//!    the op and merges it into its own [`Replica`].
//! 2. Two devices meet (directly, or through the account's own mailbox).
//!    Each sends its [`VersionVector`] — per device, how many ops it holds —
//!    and the other answers with [`Replica::missing_for`]: the ops the first
//!    lacks, bounded by count and bytes, in counter order per device. Ops
//!    travel as an encoded batch ([`encode_batch`], [`decode_batch`]).
//! 3. The receiver [`Replica::apply`]s them. An op already held is a
//!    duplicate; an op whose device's earlier ops are missing waits in a
//!    bounded buffer until they come; an op that reuses an [`OpId`] with
//!    different contents is refused as a conflict.
//! 4. The merged [`State`] — conversations, contacts, request decisions,
//!    read markers, profile name, nospam — is a pure function of the set of
//!    ops held: every rule is a join (see [`state`]), so any two replicas
//!    holding the same ops show the same state, whatever order the ops
//!    came in and however often.
//!
//! Every encoding is a version byte ([`SYNC_VERSION`]) and postcard, size
//! limited before anything is read, canonical, and checked field by field,
//! with typed [`DecodeError`]s; the replica bounds what it holds
//! ([`Limits`]). The device-link protocol — an existing device proving a
//! link code's secret to a new one and handing over the account — is here
//! too, as two I/O-free state machines ([`link::Linker`],
//! [`link::Joiner`]). The signed device list and moving batches between
//! devices are built on top of this crate elsewhere; see `docs/sync.md`
//! and `docs/devices.md`.

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod codec;
pub mod link;
pub mod op;
pub mod replica;
pub mod state;
pub mod version;

pub use codec::{
    DecodeError, EncodeError, MAX_BATCH_BYTES, MAX_BATCH_OPS, SYNC_VERSION, decode_batch,
    encode_batch,
};
pub use op::{
    Decision, DeviceId, FIRST_UNKNOWN_KIND, InvalidOp, MAX_CARD_BYTES, MAX_KITH_ID_BYTES,
    MAX_OP_BYTES, MAX_UNKNOWN_BODY_BYTES, Op, OpId, OpKind, Position, Stamp,
};
pub use replica::{Applied, ApplyError, Limits, Outcome, Replica};
pub use state::{Contact, Conversation, Direction, Lww, MessageView, State};
pub use version::{MAX_DEVICES, MAX_VERSION_VECTOR_BYTES, VersionVector};
