//! Many devices per account (`docs/devices.md`, "Fan-out"): friends'
//! device lists, delivery to each of a friend's devices, and telling
//! friends when this account's list changes.
//!
//! **Friends' lists.** A friend's newest verified [`SignedDeviceList`]
//! (sent as [`Payload::Devices`] when they link or remove a device) is kept
//! in [`FRIEND_LISTS`] and decides which devices are theirs: a listed
//! device not known yet is added (its prekeys come from the friend's
//! presence record), a device no longer listed is dropped with its
//! sessions, so nothing more goes to it and nothing from it is accepted.
//!
//! **Delivery.** An outbox item goes to every device of the friend that
//! can be reached. A device that stored it is marked in [`OUTBOX_ACKS`];
//! the item is done once no other device of the friend that is connected
//! still lacks it — a device that is offline gets it from its own
//! siblings through the op log, or from the mailbox — so one device gone
//! for a week does not hold back what the others receive.
//!
//! **Our list.** When this account's list changes (a device linked,
//! removed, or a newer list adopted from a sibling) it is queued for every
//! friend; [`LIST_PUSHED`] remembers the sequence last queued, so a device
//! that starts with a newer list (a new device, or one that adopted it
//! while stopped) sends it once.

use kith_net::PeerId;
use kith_proto::devices::SignedDeviceList;
use kith_proto::wire::Payload;
use kith_proto::{AccountPublicKey, envelope};
use kith_store::Op;

use super::{Actor, Device, OutboxBody};
use crate::engine::{Event, MAX_OUTBOX};
use crate::records::{self, FRIEND_LISTS, LIST_PUSHED, OUTBOX, OUTBOX_ACKS, SESSIONS, SETTINGS};

/// Length of an outbox key: friend (16) ‖ sequence (8).
const OUTBOX_KEY_LEN: usize = 24;
/// Most marks one settling reads (8 devices × the pump's item limit).
const MAX_MARKS_READ: usize = 8 * crate::frame::MAX_ITEMS;

/// The [`OUTBOX_ACKS`] key of `peer` having stored the item at `item_key`.
pub(super) fn ack_key(item_key: &[u8], peer: &PeerId) -> Vec<u8> {
    let mut key = item_key.to_vec();
    key.extend_from_slice(&peer.to_bytes());
    key
}

impl Actor {
    /// Whether `peer` stored the item at `item_key` already.
    pub(super) fn acked_by(&self, item_key: &[u8], peer: &PeerId) -> bool {
        self.store
            .get(OUTBOX_ACKS, &ack_key(item_key, peer))
            .ok()
            .flatten()
            .is_some()
    }

    /// Whether another connected device of `friend` still lacks the item.
    pub(super) fn others_waiting(&self, friend: &[u8; 32], item_key: &[u8], peer: &PeerId) -> bool {
        self.friends.get(friend).is_some_and(|f| {
            f.devices.iter().any(|other| {
                other != peer && self.connected.contains(other) && !self.acked_by(item_key, other)
            })
        })
    }

    /// Ends the items some device of `friend` stored that no connected
    /// device of theirs still lacks (one that lacked it went away, or left
    /// their list): the friend's other devices get them from their own
    /// siblings.
    pub(super) fn settle_fanout(&mut self, friend: &[u8; 32], key: &[u8]) {
        let marks = records::prefixed::<()>(&self.store, OUTBOX_ACKS, key, MAX_MARKS_READ)
            .unwrap_or_default();
        if marks.is_empty() {
            return;
        }
        let mut items: Vec<Vec<u8>> = marks
            .into_iter()
            .filter_map(|(mark, ())| mark.get(..OUTBOX_KEY_LEN).map(<[u8]>::to_vec))
            .collect();
        items.dedup();
        let mut ops = Vec::new();
        for item_key in items {
            let Some(peer) = self.friends.get(friend).and_then(|f| {
                f.devices
                    .iter()
                    .find(|p| self.acked_by(&item_key, p))
                    .copied()
            }) else {
                // Only devices no longer listed stored it: it still waits.
                continue;
            };
            if !self.others_waiting(friend, &item_key, &peer)
                && matches!(self.store.get(OUTBOX, &item_key), Ok(Some(_)))
            {
                self.remove_outbox_item(item_key, &mut ops);
            }
        }
        self.stage(ops);
    }

    /// Takes the item at `item_key` out of the outbox: the item, its
    /// marks, and its `mailed` note.
    pub(super) fn remove_outbox_item(&mut self, item_key: Vec<u8>, ops: &mut Vec<Op>) {
        ops.extend(self.clear_acks(&item_key));
        self.mailed.remove(&item_key);
        ops.push(records::delete(OUTBOX, item_key));
        self.outbox_len = self.outbox_len.saturating_sub(1);
    }

    /// Deletes the marks of the item at `item_key`.
    pub(super) fn clear_acks(&self, item_key: &[u8]) -> Vec<Op> {
        records::prefixed::<()>(&self.store, OUTBOX_ACKS, item_key, 16)
            .unwrap_or_default()
            .into_iter()
            .map(|(key, ())| records::delete(OUTBOX_ACKS, key))
            .collect()
    }

    /// A friend sent their device list: kept and used if it verifies and
    /// is newer than what we hold.
    pub(super) fn take_friend_list(
        &mut self,
        account: &AccountPublicKey,
        bytes: &[u8],
        ops: &mut Vec<Op>,
    ) {
        let Ok(list) = SignedDeviceList::decode(bytes) else {
            return;
        };
        let Ok(new) = list.verify(account) else {
            return;
        };
        let key = records::friend_key(&self.store, account);
        if let Ok(Some(held)) = self.store.get(FRIEND_LISTS, &key)
            && let Ok(held) = SignedDeviceList::decode(&held)
            && let Ok(held) = held.verify(account)
            && !new.supersedes(held)
        {
            return;
        }
        ops.push(Op::put(FRIEND_LISTS, key, list.encode()));
        ops.extend(self.use_friend_list(account, &list));
    }

    /// Makes `friend`'s devices those of `list` (verified by the caller or
    /// read back from the store); returns the store ops that drop the
    /// sessions of devices no longer listed.
    pub(super) fn use_friend_list(
        &mut self,
        account: &AccountPublicKey,
        list: &SignedDeviceList,
    ) -> Vec<Op> {
        let Ok(list) = list.verify(account) else {
            return Vec::new();
        };
        let friend = account.to_bytes();
        // Our own devices can never be a friend's.
        let ours: Vec<PeerId> = self
            .devices_listed()
            .map(|l| l.peers().collect())
            .unwrap_or_default();
        let me = self.net.peer_id();
        let listed: Vec<PeerId> = list
            .peers()
            .filter(|p| *p != me && !ours.contains(p))
            .collect();
        let Some(f) = self.friends.get_mut(&friend) else {
            return Vec::new();
        };
        let dropped: Vec<PeerId> = f
            .devices
            .iter()
            .filter(|p| !listed.contains(p))
            .copied()
            .collect();
        f.devices = listed.clone();
        let mut ops = Vec::new();
        for peer in dropped {
            self.devices.remove(&peer);
            self.keep_dirty = true;
            ops.push(records::delete(SESSIONS, peer.to_bytes()));
        }
        for peer in listed {
            // A device of another friend (or ours) cannot be claimed.
            if let Some(device) = self.devices.get(&peer) {
                if device.friend != friend
                    && let Some(f) = self.friends.get_mut(&friend)
                {
                    f.devices.retain(|p| *p != peer);
                }
                continue;
            }
            self.keep_dirty = true;
            self.devices.insert(
                peer,
                Device {
                    friend,
                    prekeys: None,
                    addresses: Vec::new(),
                    sessions: None,
                    in_flight: false,
                    next_attempt: std::time::Instant::now(),
                    backoff: self.retry_min,
                    failures: 0,
                },
            );
        }
        if self.with_items.contains(&friend) {
            self.pump(&friend);
        }
        ops
    }

    /// Queues this account's device list for every friend unless the list
    /// of this sequence was queued already.
    pub(super) fn device_list_changed(&mut self) {
        let Some(list) = self.device_list.clone() else {
            return;
        };
        let seq = list.claimed_seq();
        let pushed: u64 = records::get(&self.store, SETTINGS, LIST_PUSHED)
            .ok()
            .flatten()
            .unwrap_or(0);
        // A profile that never linked has nothing to tell.
        if seq <= pushed || (seq == 1 && pushed == 0) {
            return;
        }
        let mut ops = vec![records::put(SETTINGS, LIST_PUSHED, &seq)];
        let friends: Vec<AccountPublicKey> = self.friends.values().map(|f| f.account).collect();
        for friend in friends {
            if self.outbox_len >= MAX_OUTBOX {
                self.emit(Event::Problem(
                    "the outbox is full; friends will learn of your devices later".into(),
                ));
                return;
            }
            ops.push(self.queue_op(
                &friend,
                None,
                OutboxBody::Payload(Payload::Devices(list.encode())),
            ));
        }
        if let Err(e) = self.apply(ops) {
            self.emit(Event::Problem(e.to_string()));
        }
    }

    /// For a new friend: our device list, if we have more than one device
    /// (their card names only the device that answered).
    pub(super) fn list_for_new_friend(&mut self, friend: &AccountPublicKey) -> Option<Op> {
        let list = self.device_list.clone()?;
        let many = self.devices_listed().is_some_and(|l| l.devices.len() > 1);
        many.then(|| {
            self.queue_op(
                friend,
                None,
                OutboxBody::Payload(Payload::Devices(list.encode())),
            )
        })
    }

    /// A friend's device refused us as unknown: it has not got our newest
    /// list (it was linked after we sent it, or we after it). Sends it the
    /// list sealed by our account, which it takes from any device, once
    /// per device and list in this run.
    pub(super) fn introduce_to(&mut self, peer: &PeerId) -> Option<Op> {
        let list = self.device_list.clone()?;
        let friend = self.devices.get(peer)?.friend;
        if !self.introduced.insert((*peer, list.claimed_seq())) {
            return None;
        }
        let account = AccountPublicKey::from_bytes(&friend).ok()?;
        let payload = Payload::Devices(list.encode()).encode().ok()?;
        let sealed = envelope::seal(&self.identity.account, &account, &payload).ok()?;
        if self.outbox_len >= MAX_OUTBOX {
            return None;
        }
        Some(self.queue_op(&account, None, OutboxBody::Sealed(sealed)))
    }
}
