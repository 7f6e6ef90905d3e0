//! What the engine keeps in the store besides history (`docs/storage.md`,
//! "Engine trees"): friends, friend requests both ways, refusals, the
//! outbox, message states, edits, unread markers, session pickles and the
//! device's own session secrets.
//!
//! Every value is postcard; every tree keyed by a friend uses the store's
//! opaque ID of the account key (so a locked store does not show account
//! keys in its keys), and each value repeats the account key itself.

use kith_proto::AccountPublicKey;
use kith_proto::KithId;
use kith_proto::wire::{ContactCard, MessageId, Payload, Timestamp};
use kith_store::{Direction, Op, Store, StoreError};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub(crate) const FRIENDS: &str = "friends";
pub(crate) const REQUESTS_IN: &str = "requests-in";
pub(crate) const REQUESTS_OUT: &str = "requests-out";
pub(crate) const REFUSED: &str = "refused";
pub(crate) const SEEN_DROPS: &str = "seen-drops";
pub(crate) const OUTBOX: &str = "outbox";
pub(crate) const STATES: &str = "states";
pub(crate) const EDITS: &str = "edits";
pub(crate) const UNREAD: &str = "unread";
pub(crate) const SESSIONS: &str = "sessions";
pub(crate) const DEVICE: &str = "device";
pub(crate) const SETTINGS: &str = "settings";
pub(crate) const DEPOSITS: &str = "deposits";
pub(crate) const WITNESS: &str = "witness";
pub(crate) const REQUEST_ITEMS: &str = "request-items";
/// The op log: key = the store's opaque ID of the device (16) ‖ counter
/// (8, big-endian); value = the op as `kith_sync` encodes it.
/// Each friend's newest verified signed device list: key = friend (16),
/// value = the list's own encoding.
pub(crate) const FRIEND_LISTS: &str = "friend-lists";
/// Which of a friend's devices stored an outbox item already, while
/// others have not: key = outbox key (24) ‖ device PeerId bytes, value
/// `()`.
pub(crate) const OUTBOX_ACKS: &str = "outbox-acks";
/// Key in [`SETTINGS`] of the sequence number of the device list last
/// queued for friends.
pub(crate) const LIST_PUSHED: &[u8] = b"list-pushed";
/// What this device knows of each other device of the account: key =
/// PeerId bytes, value = postcard `(Option<held vv>, Option<mailed vv>)`
/// (encoded version vectors).
pub(crate) const SIBLINGS: &str = "siblings";
pub(crate) const OPS: &str = "sync-ops";
/// Batches of ops waiting to be taken in (from linking): key = 8-byte
/// sequence, value = an encoded batch.
pub(crate) const SYNC_INBOX: &str = "sync-inbox";
/// Key in [`SETTINGS`] of the account's newest verified device list
/// (the signed list's own encoding).
pub(crate) const DEVICE_LIST: &[u8] = b"device-list";

/// Key in [`DEVICE`] of this device's Olm account pickle.
pub(crate) const OLM_ACCOUNT: &[u8] = b"olm-account";
/// Key in [`SETTINGS`] of the display name.
pub(crate) const DISPLAY_NAME: &[u8] = b"display-name";

/// A value that does not decode: the store is damaged or was written by
/// something else.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A value does not decode.
    #[error("damaged record in '{tree}': {reason}")]
    Damaged {
        /// The tree.
        tree: &'static str,
        /// Why.
        reason: String,
    },
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serialising owned plain data into a Vec cannot fail.
    postcard::to_allocvec(value).unwrap_or_default()
}

pub(crate) fn decode<T: DeserializeOwned>(
    tree: &'static str,
    bytes: &[u8],
) -> Result<T, RecordError> {
    postcard::from_bytes(bytes).map_err(|e| RecordError::Damaged {
        tree,
        reason: e.to_string(),
    })
}

pub(crate) fn get<T: DeserializeOwned>(
    store: &Store,
    tree: &'static str,
    key: &[u8],
) -> Result<Option<T>, RecordError> {
    store
        .get(tree, key)?
        .map(|bytes| decode(tree, &bytes))
        .transpose()
}

/// Every value of `tree` (up to `limit`), in key order.
pub(crate) fn all<T: DeserializeOwned>(
    store: &Store,
    tree: &'static str,
    limit: usize,
) -> Result<Vec<(Vec<u8>, T)>, RecordError> {
    prefixed(store, tree, &[], limit)
}

/// Every value of `tree` whose key starts with `prefix`, in key order.
pub(crate) fn prefixed<T: DeserializeOwned>(
    store: &Store,
    tree: &'static str,
    prefix: &[u8],
    limit: usize,
) -> Result<Vec<(Vec<u8>, T)>, RecordError> {
    use std::ops::Bound;
    let end = kith_store::prefix_successor(prefix);
    let upper = match &end {
        Some(end) => Bound::Excluded(end.as_slice()),
        None => Bound::Unbounded,
    };
    store
        .range(
            tree,
            Bound::Included(prefix),
            upper,
            Direction::Forward,
            limit,
        )?
        .into_iter()
        .map(|(k, v)| Ok((k, decode(tree, &v)?)))
        .collect()
}

/// The store key of everything kept per friend.
pub(crate) fn friend_key(store: &Store, account: &AccountPublicKey) -> Vec<u8> {
    store.opaque_id("friend", &account.to_bytes()).to_vec()
}

/// A friend.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct FriendRecord {
    /// Their Kith ID as we learnt it (their nospam may have moved on since).
    pub id: KithId,
    /// Their display name.
    pub name: String,
    /// How to reach them.
    pub card: ContactCard,
    /// When they became a friend.
    pub added_at: Timestamp,
}

/// A request someone sent us, waiting for the user.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct IncomingRecord {
    /// The request as received.
    pub request: kith_proto::wire::FriendRequest,
    /// When it (or its latest update) arrived.
    pub received_at: Timestamp,
}

/// A request we sent, waiting for the answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct OutgoingRecord {
    /// Whom we asked.
    pub to: KithId,
    /// What we wrote.
    pub message: String,
    /// When.
    pub sent_at: Timestamp,
    /// The sealed request placed in their request drop.
    pub sealed: Vec<u8>,
    /// Expiry of the drop entry, Unix seconds.
    pub expires: u64,
    /// Whether at least one DHT node holds it.
    pub dropped: bool,
}

/// Why someone stays refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RefusalKind {
    /// The user declined their request.
    Declined,
    /// The user blocked them.
    Blocked,
}

/// Someone whose requests and messages are refused.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RefusedRecord {
    pub account: [u8; 32],
    pub kind: RefusalKind,
    pub at: Timestamp,
}

/// What an outbox item carries.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum OutboxBody {
    /// A payload to encrypt with the device session at send time.
    Payload(Payload),
    /// An envelope already sealed to the friend's account.
    Sealed(Vec<u8>),
}

/// One thing waiting to reach a friend.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct OutboxItem {
    /// The friend.
    pub friend: [u8; 32],
    /// The message this is (for states); `None` for receipts and
    /// acceptances.
    pub message: Option<MessageId>,
    /// What to send.
    pub body: OutboxBody,
    /// When the engine accepted it.
    pub created: Timestamp,
    /// When to give up, Unix milliseconds.
    pub expires: Timestamp,
}

/// Outbox key: friend key (16) | sequence (8, big-endian).
pub(crate) fn outbox_key(friend: &[u8], seq: u64) -> Vec<u8> {
    let mut key = friend.to_vec();
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// The state of a message this account wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MessageState {
    /// Accepted by the engine, not yet at any of the friend's devices.
    Queued,
    /// Stored by one of the friend's devices.
    Delivered {
        /// When we learnt it.
        at: Timestamp,
    },
    /// The friend has seen it.
    Read {
        /// When they read it, by their clock.
        at: Timestamp,
    },
    /// Given up on.
    Failed {
        /// Why, for the user.
        reason: String,
    },
    /// Left, sealed, with mailbox volunteers near the friend's mailbox
    /// address for the friend to fetch ("stored with N of R"). Appended
    /// last: the variant index is the stored form.
    Stored {
        /// Volunteers holding it.
        volunteers: u8,
        /// Volunteers wanted.
        of: u8,
    },
    /// Sent from another of the account's devices; this device learnt of
    /// it through the op log and follows receipts from there. Appended
    /// last: the variant index is the stored form.
    SentElsewhere,
}

impl MessageState {
    /// Ranks states so that a late "delivered" never overrides "read";
    /// stored with more volunteers ranks above stored with fewer.
    pub(crate) fn rank(&self) -> u16 {
        match self {
            MessageState::Queued => 0,
            MessageState::Failed { .. } => 1,
            MessageState::SentElsewhere => 2,
            MessageState::Stored { volunteers, .. } => 0x100 + u16::from(*volunteers),
            MessageState::Delivered { .. } => 0x200,
            MessageState::Read { .. } => 0x300,
        }
    }

    /// Whether the message has left this device for good (kept by
    /// volunteers, or delivered): such a message never turns failed.
    pub(crate) fn has_left(&self) -> bool {
        self.rank() >= 0x100
    }
}

/// How a message that came through the mailbox is timed: the sender's
/// clock judged against the volunteers' signed receipts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Witness {
    /// The volunteers' receipts agree with the sender's time.
    Witnessed,
    /// They do not; the volunteers' (median) time, to be shown instead.
    Corrected {
        /// The witnessed time.
        at: Timestamp,
    },
    /// No volunteer receipt came with it: the sender's time, unconfirmed.
    Unwitnessed,
}

/// An item left with fewer volunteers than wanted: kept to top up later
/// (the same bytes, so the same item ID).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct DepositRecord {
    pub friend: [u8; 32],
    pub item: Vec<u8>,
    pub holders: Vec<Vec<u8>>,
    pub messages: Vec<MessageId>,
    pub expires: u64,
}

/// Key of a per-message record: conversation (16) | message ID (16).
pub(crate) fn message_key(conversation: &[u8; 16], id: &MessageId) -> Vec<u8> {
    let mut key = conversation.to_vec();
    key.extend_from_slice(&id.0);
    key
}

/// The latest edit or the deletion of a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct EditRecord {
    /// The text now, if edited.
    pub body: Option<String>,
    /// Time of the latest edit or deletion, by the author's clock.
    pub at: Timestamp,
    /// Withdrawn by its author.
    pub deleted: bool,
}

/// Session pickles with one device, newest first.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct SessionsRecord {
    pub pickles: Vec<String>,
}

pub(crate) fn put<T: Serialize>(tree: &str, key: impl Into<Vec<u8>>, value: &T) -> Op {
    Op::put(tree, key, encode(value))
}

pub(crate) fn delete(tree: &str, key: impl Into<Vec<u8>>) -> Op {
    Op::Delete {
        tree: tree.to_owned(),
        key: key.into(),
    }
}
