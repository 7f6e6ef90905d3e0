//! The volunteer: keeps sealed items for offline accounts and answers the
//! requests of [`crate::protocol`].
//!
//! [`Volunteer::handle`] takes one encoded request, the peer it came from
//! and the time, and returns the encoded response; it never panics and
//! never answers before what it promised is on disk.
//!
//! - **Deposit** (and **hand-off**, its volunteer-to-volunteer twin): rate
//!   limit per peer (a token bucket of `peer_burst` tokens refilled at
//!   `peer_deposits_per_minute`, in a map of at most `max_rate_peers` peers
//!   that forgets the least recently seen), decode, the same item ID already
//!   held for the address (same bytes: the stored receipt again; other
//!   bytes: refused), [`MailboxItem::verify`], quotas, then a witness
//!   receipt — a new one signed at the current time, or for a hand-off the
//!   carried receipts that verify and name this item — stored with the item
//!   in one durable batch, and only then `Accepted`.
//! - **Challenge**: a fresh [`FetchChallenge`] naming this volunteer, kept
//!   in a bounded list (oldest forgotten first) until it expires.
//! - **Fetch**: a challenge we issued and still hold, a proof that
//!   verifies, then the mailbox's items in item ID order after `after`, as
//!   many as fit in `page_bytes` (always at least one). Expired items are
//!   never served. The challenge serves further pages until it expires.
//! - **Ack**: a signed [`FetchAck`] deletes the named items, durably.
//!
//! # Storage layout (schema version [`SCHEMA_VERSION`])
//!
//! One [`Store`] (its own backend: the store's schema record is shared by
//! all its trees), two trees:
//!
//! ```text
//! items   address (32) ‖ item_id (16)            → postcard(Record)
//! expiry  expires (8, big-endian) ‖ address ‖ item_id → empty
//!
//! Record = { item: bytes (the encoded item, as received),
//!            receipts: [bytes] (encoded witness receipts, ≤ 8),
//!            received_ms: u64 (when this volunteer took it),
//!            expires: u64 (the item's expiry, Unix seconds) }
//! ```
//!
//! An item and its expiry entry are written and deleted in one batch. The
//! `items` order serves fetch pages (one address's items are contiguous, in
//! ID order); the `expiry` order lets the sweep find what is due without
//! reading items. Usage counters (bytes and items per address, totals) are
//! kept in memory and rebuilt by scanning `items` on open; quotas count the
//! encoded item (`MailboxItem::encoded_len`, the record's `item` length).
//! A stored value that no longer decodes is logged and deleted.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Bound;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use kith_proto::DeviceKeypair;
use kith_proto::mailbox::{
    DepositRefusal, FetchAck, FetchChallenge, FetchError, FetchProof, ItemId, Limits,
    MailboxAddress, MailboxItem, NodeKey, WitnessReceipt, node_key,
};
use kith_store::{Backend, Direction, Op, Store, StoreError, prefix_successor};
use libp2p_identity::PeerId;
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use crate::protocol::{
    self, Denial, ITEMS_OVERHEAD, MAX_HANDOFF_RECEIPTS, MAX_PAGE_ITEMS, MAX_RESPONSE_BYTES,
    Request, Response, StoredItem,
};

/// Version of the volunteer's store layout (see the module documentation).
pub const SCHEMA_VERSION: u32 = 1;

const ITEMS: &str = "items";
const EXPIRY: &str = "expiry";
const ADDRESS_LEN: usize = 32;
const ID_LEN: usize = 16;
const ITEM_KEY_LEN: usize = ADDRESS_LEN + ID_LEN;
const EXPIRY_KEY_LEN: usize = 8 + ITEM_KEY_LEN;
/// Entries read per range scan: at most 16 records of about 67 KiB, so a
/// scan holds about 1 MiB whatever the store's size.
const SCAN_BATCH: usize = 16;
/// Expiry entries handled per sweep batch (they are 56-byte keys).
const SWEEP_BATCH: usize = 256;
/// One rate-limit token, in the units a bucket counts: a rate of `r` per
/// minute adds `r` units per millisecond.
const TOKEN: u64 = 60_000;

/// How a volunteer behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolunteerConfig {
    /// What items are accepted: size, lifetime, proof of work, quotas and
    /// the per-peer rate (also applied to challenges).
    pub limits: Limits,
    /// Target size of an encoded fetch page (default 1 MiB; capped at
    /// [`MAX_RESPONSE_BYTES`]). A page always holds at least one item.
    pub page_bytes: usize,
    /// Challenges kept at once (default 1024); the oldest is forgotten
    /// first.
    pub max_challenges: usize,
    /// Peers whose rate is tracked at once (default 4096); the least
    /// recently seen is forgotten first.
    pub max_rate_peers: usize,
    /// The mailbox of the account this volunteer's device belongs to, if
    /// any: mail for it is refused (as [`DepositRefusal::VolunteerFull`]),
    /// since the owner fetches from the other volunteers and never from
    /// itself. Senders and hand-offs then go to the next closest peer.
    pub own_address: Option<MailboxAddress>,
}

impl Default for VolunteerConfig {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            page_bytes: 1024 * 1024,
            max_challenges: 1024,
            max_rate_peers: 4096,
            own_address: None,
        }
    }
}

/// What a volunteer holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Items stored.
    pub items: u64,
    /// Their encoded bytes (what quotas count).
    pub bytes: u64,
    /// Mailbox addresses with at least one item.
    pub mailboxes: u64,
}

/// Why the volunteer's store could not be opened, read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VolunteerError {
    /// The store did not open.
    #[error("could not open the mailbox store: {0}")]
    Open(#[from] kith_store::OpenError),
    /// A read or write failed.
    #[error("the mailbox store failed: {0}")]
    Store(#[from] StoreError),
    /// The node key is not Ed25519, so it cannot sign receipts.
    #[error("volunteer node keys must be Ed25519")]
    NotEd25519,
}

/// What the `items` tree holds for one item.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    #[serde(with = "protocol::bytes")]
    item: Vec<u8>,
    #[serde(
        serialize_with = "protocol::byte_list",
        deserialize_with = "protocol::receipt_list"
    )]
    receipts: Vec<Vec<u8>>,
    received_ms: u64,
    expires: u64,
}

impl Record {
    fn decode(bytes: &[u8]) -> Option<Self> {
        match postcard::take_from_bytes::<Self>(bytes) {
            Ok((record, [])) => Some(record),
            _ => None,
        }
    }

    fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).unwrap_or_default()
    }

    fn len(&self) -> u64 {
        self.item.len() as u64
    }
}

fn item_key(address: &MailboxAddress, id: &ItemId) -> [u8; ITEM_KEY_LEN] {
    let mut key = [0u8; ITEM_KEY_LEN];
    key[..ADDRESS_LEN].copy_from_slice(address);
    key[ADDRESS_LEN..].copy_from_slice(id);
    key
}

fn expiry_key(expires: u64, address: &MailboxAddress, id: &ItemId) -> [u8; EXPIRY_KEY_LEN] {
    let mut key = [0u8; EXPIRY_KEY_LEN];
    key[..8].copy_from_slice(&expires.to_be_bytes());
    key[8..].copy_from_slice(&item_key(address, id));
    key
}

/// Splits an `items` key into address and item ID.
fn split_item_key(key: &[u8]) -> Option<(MailboxAddress, ItemId)> {
    let address = key.get(..ADDRESS_LEN)?.try_into().ok()?;
    let id = key.get(ADDRESS_LEN..)?.try_into().ok()?;
    Some((address, id))
}

fn delete(tree: &str, key: &[u8]) -> Op {
    Op::Delete {
        tree: tree.to_owned(),
        key: key.to_vec(),
    }
}

fn unix_now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Bytes and items held for one address, or in total.
#[derive(Debug, Clone, Copy, Default)]
struct Held {
    items: u64,
    bytes: u64,
}

/// A token bucket per peer, in a map of bounded size that forgets the
/// least recently seen peer first.
#[derive(Debug)]
struct RateLimiter {
    buckets: HashMap<PeerId, Bucket>,
    /// Peers by the sequence number of their last request, oldest first.
    order: BTreeMap<u64, PeerId>,
    next_seq: u64,
    max_peers: usize,
}

#[derive(Debug)]
struct Bucket {
    units: u64,
    last_ms: u64,
    seq: u64,
}

impl RateLimiter {
    fn new(max_peers: usize) -> Self {
        Self {
            buckets: HashMap::new(),
            order: BTreeMap::new(),
            next_seq: 0,
            max_peers: max_peers.max(1),
        }
    }

    /// Takes a token from `peer`'s bucket, or says in how many seconds one
    /// will be there (`u64::MAX` when the rate is zero).
    fn take(&mut self, peer: PeerId, now_ms: u64, limits: &Limits) -> Result<(), u64> {
        let capacity = u64::from(limits.peer_burst.max(1)).saturating_mul(TOKEN);
        let rate = u64::from(limits.peer_deposits_per_minute);
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        if let Some(bucket) = self.buckets.get(&peer) {
            self.order.remove(&bucket.seq);
        } else {
            while self.buckets.len() >= self.max_peers {
                let Some((_, oldest)) = self.order.pop_first() else {
                    break;
                };
                self.buckets.remove(&oldest);
            }
        }
        let bucket = self.buckets.entry(peer).or_insert(Bucket {
            units: capacity,
            last_ms: now_ms,
            seq,
        });
        let elapsed = now_ms.saturating_sub(bucket.last_ms);
        bucket.units = bucket
            .units
            .saturating_add(elapsed.saturating_mul(rate))
            .min(capacity);
        bucket.last_ms = bucket.last_ms.max(now_ms);
        bucket.seq = seq;
        self.order.insert(seq, peer);
        if bucket.units >= TOKEN {
            bucket.units -= TOKEN;
            return Ok(());
        }
        if rate == 0 {
            return Err(u64::MAX);
        }
        let wait_ms = (TOKEN - bucket.units).div_ceil(rate);
        Err(wait_ms.div_ceil(1000).max(1))
    }
}

/// The challenges issued and not yet expired, oldest first.
#[derive(Debug)]
struct Challenges {
    issued: Vec<FetchChallenge>,
    max: usize,
}

impl Challenges {
    fn issue(&mut self, challenge: FetchChallenge, now_secs: u64) {
        self.issued.retain(|c| c.expires > now_secs);
        if self.issued.len() >= self.max {
            let excess = self.issued.len() + 1 - self.max;
            self.issued.drain(..excess);
        }
        self.issued.push(challenge);
    }

    /// The challenge with this nonce, if we issued exactly it.
    fn position(&self, challenge: &FetchChallenge) -> Option<usize> {
        self.issued.iter().position(|c| c == challenge)
    }
}

/// A mailbox volunteer: its store, its node key, and the state of the
/// requests in flight (challenges, rate limits).
pub struct Volunteer {
    store: Store,
    key: DeviceKeypair,
    node_key: NodeKey,
    config: VolunteerConfig,
    held: BTreeMap<MailboxAddress, Held>,
    total: Held,
    challenges: Challenges,
    deposit_rate: RateLimiter,
    challenge_rate: RateLimiter,
}

impl std::fmt::Debug for Volunteer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Volunteer")
            .field("peer_id", &self.key.peer_id())
            .field("usage", &self.usage())
            .finish_non_exhaustive()
    }
}

impl Volunteer {
    /// Opens the volunteer's store on `backend` (which it must have to
    /// itself), rebuilds the usage counters and sweeps what expired while
    /// it was closed, by the system clock. `key` is the node's libp2p
    /// keypair, which must be Ed25519: receipts are signed with it and
    /// challenges name it.
    pub fn open(
        backend: Arc<dyn Backend>,
        key: DeviceKeypair,
        config: VolunteerConfig,
    ) -> Result<Self, VolunteerError> {
        Self::open_at(backend, key, config, unix_now_secs())
    }

    /// [`Self::open`] with the sweep at `now_secs` (Unix seconds) instead
    /// of the system clock.
    pub fn open_at(
        backend: Arc<dyn Backend>,
        key: DeviceKeypair,
        config: VolunteerConfig,
        now_secs: u64,
    ) -> Result<Self, VolunteerError> {
        let node_key = node_key(&key).map_err(|_| VolunteerError::NotEd25519)?;
        let store = Store::open(backend, None, SCHEMA_VERSION, &[])?;
        let mut volunteer = Self {
            store,
            key,
            node_key,
            challenges: Challenges {
                issued: Vec::new(),
                max: config.max_challenges.max(1),
            },
            deposit_rate: RateLimiter::new(config.max_rate_peers),
            challenge_rate: RateLimiter::new(config.max_rate_peers),
            config,
            held: BTreeMap::new(),
            total: Held::default(),
        };
        volunteer.rebuild_usage()?;
        volunteer.sweep(now_secs)?;
        Ok(volunteer)
    }

    /// Handles one encoded request from `from` at `now_ms` (milliseconds
    /// since the Unix epoch) and returns the encoded response. Never panics
    /// on any input; store failures answer [`Denial::Busy`] and are logged.
    pub fn handle(&mut self, from: PeerId, request: &[u8], now_ms: u64) -> Vec<u8> {
        let response = match Request::decode(request) {
            Ok(request) => self.answer(from, request, now_ms),
            Err(e) => {
                debug!(peer = %from, error = %e, "unreadable mailbox request");
                self.unreadable(request, &e)
            }
        };
        encode_response(&response)
    }

    /// Deletes the items that expired at or before `now_secs` (Unix
    /// seconds); returns how many. Run at open, and to be run periodically.
    pub fn sweep(&mut self, now_secs: u64) -> Result<usize, VolunteerError> {
        let upper = now_secs.checked_add(1).map(u64::to_be_bytes);
        let upper = match &upper {
            Some(bytes) => Bound::Excluded(&bytes[..]),
            None => Bound::Unbounded,
        };
        let mut removed = 0;
        loop {
            let due = self.store.range(
                EXPIRY,
                Bound::Unbounded,
                upper,
                Direction::Forward,
                SWEEP_BATCH,
            )?;
            let mut ops = Vec::with_capacity(due.len() * 2);
            let mut freed = Vec::new();
            for (key, _) in &due {
                ops.push(delete(EXPIRY, key));
                let Some((address, id)) = key.get(8..).and_then(split_item_key) else {
                    warn!("a damaged key in the mailbox expiry index; deleted");
                    continue;
                };
                let item = item_key(&address, &id);
                if let Some(value) = self.store.get(ITEMS, &item)? {
                    ops.push(delete(ITEMS, &item));
                    removed += 1;
                    match Record::decode(&value) {
                        Some(record) => freed.push((address, record.len())),
                        None => warn!("a damaged mailbox record; deleted"),
                    }
                }
            }
            self.store.apply(ops)?;
            for (address, len) in freed {
                self.release(&address, len);
            }
            if due.len() < SWEEP_BATCH {
                break;
            }
        }
        if removed > 0 {
            self.store.flush()?;
        }
        Ok(removed)
    }

    /// What the volunteer holds.
    pub fn usage(&self) -> Usage {
        Usage {
            items: self.total.items,
            bytes: self.total.bytes,
            mailboxes: self.held.len() as u64,
        }
    }

    /// The mailbox addresses with items stored, in order.
    pub fn addresses(&self) -> Result<Vec<MailboxAddress>, VolunteerError> {
        let mut out = Vec::new();
        let mut from: Option<Vec<u8>> = None;
        loop {
            let lower = match &from {
                Some(key) => Bound::Included(key.as_slice()),
                None => Bound::Unbounded,
            };
            let first = self
                .store
                .range(ITEMS, lower, Bound::Unbounded, Direction::Forward, 1)?;
            let Some((key, _)) = first.into_iter().next() else {
                break;
            };
            let Some(address) = key
                .get(..ADDRESS_LEN)
                .and_then(|a| MailboxAddress::try_from(a).ok())
            else {
                // A short, damaged key: step past it.
                let mut next = key;
                next.push(0);
                from = Some(next);
                continue;
            };
            out.push(address);
            match prefix_successor(&address) {
                Some(next) => from = Some(next),
                None => break,
            }
        }
        Ok(out)
    }

    /// For each item held for `address`, in item ID order: its ID and an
    /// encoded [`Request::Handoff`] carrying the item and its receipts
    /// byte for byte as stored.
    pub fn handoff_requests(
        &self,
        address: &MailboxAddress,
    ) -> Result<Vec<(ItemId, Vec<u8>)>, VolunteerError> {
        let mut out = Vec::new();
        self.scan_address(address, |id, record| {
            let request = Request::Handoff {
                item: record.item,
                receipts: record.receipts,
            };
            match request.encode() {
                Ok(bytes) => out.push((id, bytes)),
                Err(e) => warn!(error = %e, "a stored mailbox item does not fit a hand-off"),
            }
        })?;
        Ok(out)
    }

    /// Deletes our copies of `ids` for `address` (after handing them off);
    /// returns how many were held.
    pub fn remove(
        &mut self,
        address: &MailboxAddress,
        ids: &[ItemId],
    ) -> Result<usize, VolunteerError> {
        Ok(self.delete_items(address, ids)?)
    }

    /// The IDs of the items held for `address`, in order.
    pub fn holds(&self, address: &MailboxAddress) -> Result<Vec<ItemId>, VolunteerError> {
        let mut out = Vec::new();
        self.scan_address(address, |id, _| out.push(id))?;
        Ok(out)
    }

    // ------------------------------------------------------------ requests

    fn answer(&mut self, from: PeerId, request: Request, now_ms: u64) -> Response {
        let result = match request {
            Request::Deposit { item } => self.deposit(from, item, None, now_ms),
            Request::Handoff { item, receipts } => self.deposit(from, item, Some(receipts), now_ms),
            Request::Challenge { address } => Ok(self.challenge(from, address, now_ms)),
            Request::Fetch {
                challenge,
                proof,
                after,
            } => self.fetch(&challenge, &proof, after, now_ms),
            Request::Ack { ack } => self.ack(&ack),
        };
        result.unwrap_or_else(|e| {
            warn!(error = %e, "the mailbox store failed; answering busy");
            Response::Denied(Denial::Busy)
        })
    }

    /// The answer to bytes that are not a request: a refusal when they
    /// look like a deposit or hand-off (so a sender sees a deposit
    /// refusal), a denial otherwise.
    fn unreadable(&self, request: &[u8], error: &protocol::DecodeError) -> Response {
        let deposit_like = matches!(request, [protocol::PROTOCOL_VERSION, 0 | 1, ..]);
        match error {
            protocol::DecodeError::TooLarge { .. } if deposit_like => {
                Response::refused(DepositRefusal::TooLarge {
                    max: self.config.limits.max_item_bytes as u64,
                })
            }
            _ if deposit_like => Response::refused(DepositRefusal::Malformed),
            _ => Response::Denied(Denial::Malformed),
        }
    }

    /// A deposit, or with `carried` receipts a hand-off.
    fn deposit(
        &mut self,
        from: PeerId,
        bytes: Vec<u8>,
        carried: Option<Vec<Vec<u8>>>,
        now_ms: u64,
    ) -> Result<Response, StoreError> {
        let now = now_ms / 1000;
        if let Err(retry_after_secs) = self.deposit_rate.take(from, now_ms, &self.config.limits) {
            return Ok(Response::refused(DepositRefusal::RateLimited {
                retry_after_secs,
            }));
        }
        let item = match MailboxItem::decode(&bytes) {
            Ok(item) => item,
            Err(e) => return Ok(Response::refused(DepositRefusal::from(&e))),
        };
        if self.config.own_address == Some(item.address) {
            return Ok(Response::refused(DepositRefusal::VolunteerFull));
        }
        let key = item_key(&item.address, &item.item_id);
        if let Some(value) = self.store.get(ITEMS, &key)? {
            match Record::decode(&value) {
                Some(record) => return self.duplicate(&key, record, &bytes, carried, now),
                None => {
                    // Overwritten below; the counters keep its old size
                    // until the next open, erring on the full side.
                    warn!("a damaged mailbox record; replacing it");
                }
            }
        }
        if let Err(e) = item.verify(now, &self.config.limits) {
            return Ok(Response::refused(e.refusal()));
        }
        let len = bytes.len() as u64;
        let mailbox_used = self.held.get(&item.address).map_or(0, |h| h.bytes);
        if let Err(refusal) = self
            .config
            .limits
            .check_quota(mailbox_used, self.total.bytes, len)
        {
            return Ok(Response::refused(refusal));
        }
        let mut receipts = carried
            .map(|c| valid_receipts(&item.item_id, c))
            .unwrap_or_default();
        if receipts.is_empty() {
            match WitnessReceipt::sign(&self.key, item.item_id, now_ms) {
                Ok(receipt) => receipts.push(receipt.encode()),
                Err(e) => {
                    warn!(error = %e, "could not sign a witness receipt");
                    return Ok(Response::Denied(Denial::Busy));
                }
            }
        }
        let receipt = receipts.first().cloned().unwrap_or_default();
        let record = Record {
            item: bytes,
            receipts,
            received_ms: now_ms,
            expires: item.expires,
        };
        self.store.apply(vec![
            Op::put(ITEMS, key, record.encode()),
            Op::put(
                EXPIRY,
                expiry_key(item.expires, &item.address, &item.item_id),
                Vec::new(),
            ),
        ])?;
        // Stored from here on, durable or not: count it, so a failed flush
        // cannot let the quota be overrun.
        let held = self.held.entry(item.address).or_default();
        held.items += 1;
        held.bytes = held.bytes.saturating_add(len);
        self.total.items += 1;
        self.total.bytes = self.total.bytes.saturating_add(len);
        // Answer only once the item and its receipt are on disk.
        self.store.flush()?;
        Ok(Response::Accepted { receipt })
    }

    /// A deposit or hand-off of an item ID already held for its address.
    fn duplicate(
        &mut self,
        key: &[u8],
        mut record: Record,
        bytes: &[u8],
        carried: Option<Vec<Vec<u8>>>,
        now: u64,
    ) -> Result<Response, StoreError> {
        if record.item != bytes {
            // Keep the first; until a dedicated reason is appended, a
            // conflicting copy is malformed.
            return Ok(Response::refused(DepositRefusal::Malformed));
        }
        if record.expires <= now {
            return Ok(Response::refused(DepositRefusal::Expired));
        }
        let Some(item_id) = key
            .get(ADDRESS_LEN..)
            .and_then(|id| ItemId::try_from(id).ok())
        else {
            return Ok(Response::refused(DepositRefusal::Malformed));
        };
        match carried {
            None => {
                // The sender retries: our receipt again. An item that came
                // by hand-off holds no receipt of ours; sign one for the
                // time we took it (deterministic, so every retry gets the
                // same bytes).
                let ours = record.receipts.iter().find(|r| {
                    WitnessReceipt::decode(r).is_ok_and(|r| r.volunteer == self.node_key)
                });
                let receipt = match ours {
                    Some(receipt) => receipt.clone(),
                    None => match WitnessReceipt::sign(&self.key, item_id, record.received_ms) {
                        Ok(receipt) => receipt.encode(),
                        Err(e) => {
                            warn!(error = %e, "could not sign a witness receipt");
                            return Ok(Response::Denied(Denial::Busy));
                        }
                    },
                };
                // The first attempt may have been written but not flushed
                // (its answer was Busy): the retry's acceptance must not
                // promise more than is on disk.
                self.store.flush()?;
                Ok(Response::Accepted { receipt })
            }
            Some(carried) => {
                // Another holder hands the same item over: keep the
                // receipts of volunteers we have none from.
                let mut known: HashSet<NodeKey> = record
                    .receipts
                    .iter()
                    .filter_map(|r| WitnessReceipt::decode(r).ok())
                    .map(|r| r.volunteer)
                    .collect();
                let mut added = false;
                for receipt in valid_receipts(&item_id, carried) {
                    if record.receipts.len() >= MAX_HANDOFF_RECEIPTS {
                        break;
                    }
                    let Ok(decoded) = WitnessReceipt::decode(&receipt) else {
                        continue;
                    };
                    if known.insert(decoded.volunteer) {
                        record.receipts.push(receipt);
                        added = true;
                    }
                }
                if added {
                    self.store
                        .apply_durable(vec![Op::put(ITEMS, key, record.encode())])?;
                }
                Ok(Response::Accepted {
                    receipt: record.receipts.first().cloned().unwrap_or_default(),
                })
            }
        }
    }

    fn challenge(&mut self, from: PeerId, address: MailboxAddress, now_ms: u64) -> Response {
        if let Err(retry_after_secs) = self.challenge_rate.take(from, now_ms, &self.config.limits) {
            return Response::Denied(Denial::RateLimited { retry_after_secs });
        }
        let now = now_ms / 1000;
        let challenge = FetchChallenge::new(address, self.node_key, now);
        self.challenges.issue(challenge, now);
        Response::Challenge {
            challenge: challenge.encode(),
        }
    }

    fn fetch(
        &mut self,
        challenge: &[u8],
        proof: &[u8],
        after: Option<ItemId>,
        now_ms: u64,
    ) -> Result<Response, StoreError> {
        let now = now_ms / 1000;
        let (Ok(challenge), Ok(proof)) =
            (FetchChallenge::decode(challenge), FetchProof::decode(proof))
        else {
            return Ok(Response::Denied(Denial::Malformed));
        };
        if challenge.volunteer != self.node_key {
            return Ok(Response::Denied(Denial::WrongVolunteer));
        }
        let Some(at) = self.challenges.position(&challenge) else {
            return Ok(Response::Denied(Denial::UnknownChallenge));
        };
        if challenge.expires <= now {
            self.challenges.issued.remove(at);
            return Ok(Response::Denied(Denial::ChallengeExpired));
        }
        if let Err(e) = proof.verify(&challenge, now) {
            return Ok(Response::Denied(match e {
                FetchError::WrongAccount => Denial::WrongAccount,
                FetchError::BadSignature => Denial::BadSignature,
                FetchError::ChallengeExpired { .. } => Denial::ChallengeExpired,
                _ => Denial::Malformed,
            }));
        }
        self.page(&challenge.address, after, now)
    }

    /// The items of `address` after `after`, as many as fit the page.
    fn page(
        &mut self,
        address: &MailboxAddress,
        after: Option<ItemId>,
        now: u64,
    ) -> Result<Response, StoreError> {
        let budget = self
            .config
            .page_bytes
            .min(MAX_RESPONSE_BYTES)
            .saturating_sub(ITEMS_OVERHEAD);
        let end = prefix_successor(address);
        let mut cursor = match after {
            Some(id) => Bound::Excluded(item_key(address, &id).to_vec()),
            None => Bound::Included(address.to_vec()),
        };
        let mut items = Vec::new();
        let mut used = 0usize;
        let mut more = false;
        let mut damaged = Vec::new();
        'scan: loop {
            let to = match &end {
                Some(end) => Bound::Excluded(end.as_slice()),
                None => Bound::Unbounded,
            };
            let batch = self.store.range(
                ITEMS,
                cursor.as_ref().map(Vec::as_slice),
                to,
                Direction::Forward,
                SCAN_BATCH,
            )?;
            let full_batch = batch.len() == SCAN_BATCH;
            for (key, value) in batch {
                let Some(record) = Record::decode(&value) else {
                    damaged.push(key.clone());
                    cursor = Bound::Excluded(key);
                    continue;
                };
                cursor = Bound::Excluded(key);
                if record.expires <= now {
                    continue;
                }
                let stored = StoredItem {
                    item: record.item,
                    receipts: record.receipts,
                };
                let size = stored.encoded_len();
                if items.len() >= MAX_PAGE_ITEMS
                    || (!items.is_empty() && used.saturating_add(size) > budget)
                {
                    more = true;
                    break 'scan;
                }
                used = used.saturating_add(size);
                items.push(stored);
            }
            if !full_batch {
                break;
            }
        }
        if !damaged.is_empty() {
            warn!(
                count = damaged.len(),
                "damaged mailbox records skipped and deleted"
            );
            let ops = damaged.iter().map(|key| delete(ITEMS, key)).collect();
            if let Err(e) = self.store.apply(ops) {
                warn!(error = %e, "could not delete damaged mailbox records");
            }
        }
        Ok(Response::Items { items, more })
    }

    fn ack(&mut self, ack: &[u8]) -> Result<Response, StoreError> {
        let Ok(ack) = FetchAck::decode(ack) else {
            return Ok(Response::Denied(Denial::Malformed));
        };
        if let Err(e) = ack.verify() {
            return Ok(Response::Denied(match e {
                FetchError::WrongAccount => Denial::WrongAccount,
                FetchError::BadSignature => Denial::BadSignature,
                _ => Denial::Malformed,
            }));
        }
        let deleted = self.delete_items(&ack.address, &ack.item_ids)?;
        Ok(Response::Acked {
            deleted: u32::try_from(deleted).unwrap_or(u32::MAX),
        })
    }

    // ------------------------------------------------------------- storage

    /// Deletes the named items of `address`, durably; returns how many
    /// were there.
    fn delete_items(
        &mut self,
        address: &MailboxAddress,
        ids: &[ItemId],
    ) -> Result<usize, StoreError> {
        let ids: std::collections::BTreeSet<&ItemId> = ids.iter().collect();
        let mut ops = Vec::new();
        let mut freed = Vec::new();
        let mut deleted = 0;
        for id in ids {
            let key = item_key(address, id);
            let Some(value) = self.store.get(ITEMS, &key)? else {
                continue;
            };
            deleted += 1;
            ops.push(delete(ITEMS, &key));
            match Record::decode(&value) {
                Some(record) => {
                    ops.push(delete(EXPIRY, &expiry_key(record.expires, address, id)));
                    freed.push(record.len());
                }
                // Its expiry entry is left for the sweep, which finds no
                // item behind it and drops it.
                None => warn!("a damaged mailbox record; deleted"),
            }
        }
        if ops.is_empty() {
            return Ok(0);
        }
        self.store.apply(ops)?;
        for len in freed {
            self.release(address, len);
        }
        self.store.flush()?;
        Ok(deleted)
    }

    /// Takes one item of `len` bytes off the counters.
    fn release(&mut self, address: &MailboxAddress, len: u64) {
        if let Some(held) = self.held.get_mut(address) {
            held.items = held.items.saturating_sub(1);
            held.bytes = held.bytes.saturating_sub(len);
            if held.items == 0 {
                self.held.remove(address);
            }
        }
        self.total.items = self.total.items.saturating_sub(1);
        self.total.bytes = self.total.bytes.saturating_sub(len);
    }

    /// Counts what `items` holds, deleting records that do not decode.
    fn rebuild_usage(&mut self) -> Result<(), StoreError> {
        self.held.clear();
        self.total = Held::default();
        let mut cursor: Option<Vec<u8>> = None;
        let mut damaged = Vec::new();
        loop {
            let from = match &cursor {
                Some(key) => Bound::Excluded(key.as_slice()),
                None => Bound::Unbounded,
            };
            let batch = self.store.range(
                ITEMS,
                from,
                Bound::Unbounded,
                Direction::Forward,
                SCAN_BATCH,
            )?;
            let full_batch = batch.len() == SCAN_BATCH;
            for (key, value) in batch {
                match (split_item_key(&key), Record::decode(&value)) {
                    (Some((address, _)), Some(record)) => {
                        let held = self.held.entry(address).or_default();
                        held.items += 1;
                        held.bytes = held.bytes.saturating_add(record.len());
                        self.total.items += 1;
                        self.total.bytes = self.total.bytes.saturating_add(record.len());
                    }
                    _ => damaged.push(key.clone()),
                }
                cursor = Some(key);
            }
            if !full_batch {
                break;
            }
        }
        if !damaged.is_empty() {
            warn!(
                count = damaged.len(),
                "damaged mailbox records found at open; deleted"
            );
            let ops = damaged.iter().map(|key| delete(ITEMS, key)).collect();
            self.store.apply_durable(ops)?;
        }
        Ok(())
    }

    /// Calls `each` with every decodable record of `address`, in ID order.
    fn scan_address(
        &self,
        address: &MailboxAddress,
        mut each: impl FnMut(ItemId, Record),
    ) -> Result<(), StoreError> {
        let end = prefix_successor(address);
        let mut cursor = address.to_vec();
        let mut first = true;
        loop {
            let from = if first {
                Bound::Included(cursor.as_slice())
            } else {
                Bound::Excluded(cursor.as_slice())
            };
            let to = match &end {
                Some(end) => Bound::Excluded(end.as_slice()),
                None => Bound::Unbounded,
            };
            let batch = self
                .store
                .range(ITEMS, from, to, Direction::Forward, SCAN_BATCH)?;
            let full_batch = batch.len() == SCAN_BATCH;
            for (key, value) in batch {
                match (split_item_key(&key), Record::decode(&value)) {
                    (Some((_, id)), Some(record)) => each(id, record),
                    _ => warn!("a damaged mailbox record; skipped"),
                }
                cursor = key;
            }
            first = false;
            if !full_batch {
                break;
            }
        }
        Ok(())
    }
}

/// The carried receipts that verify and name `item_id`, one per volunteer
/// (its earliest), byte for byte as they came; at most
/// [`MAX_HANDOFF_RECEIPTS`].
fn valid_receipts(item_id: &ItemId, carried: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    let mut best: BTreeMap<NodeKey, (u64, Vec<u8>)> = BTreeMap::new();
    let mut order = Vec::new();
    for bytes in carried.into_iter().take(MAX_HANDOFF_RECEIPTS) {
        let Ok(receipt) = WitnessReceipt::decode(&bytes) else {
            continue;
        };
        if &receipt.item_id != item_id || receipt.verify().is_err() {
            continue;
        }
        match best.get(&receipt.volunteer) {
            Some((at, _)) if *at <= receipt.received_at => {}
            Some(_) => {
                best.insert(receipt.volunteer, (receipt.received_at, bytes));
            }
            None => {
                order.push(receipt.volunteer);
                best.insert(receipt.volunteer, (receipt.received_at, bytes));
            }
        }
    }
    order
        .into_iter()
        .filter_map(|volunteer| best.remove(&volunteer).map(|(_, bytes)| bytes))
        .collect()
}

fn encode_response(response: &Response) -> Vec<u8> {
    match response.encode() {
        Ok(bytes) => bytes,
        Err(e) => {
            warn!(error = %e, "a mailbox response did not encode; answering busy");
            // A fieldless denial always encodes.
            Response::Denied(Denial::Busy)
                .encode()
                .unwrap_or_else(|_| vec![protocol::PROTOCOL_VERSION, 5, 7])
        }
    }
}
