//! The account's op log, the engine's side (`docs/sync.md`, "In the
//! engine").
//!
//! **Recording.** Whatever this device does that the account's other
//! devices must also show — a message sent or received, an edit or
//! deletion, a friend added, a request answered, a conversation read, the
//! name or nospam changed — is recorded as a [`kith_sync::Op`] in the
//! [`OPS`] tree, in the same store batch as the change itself, so the log
//! and the engine's trees never disagree after a crash.
//!
//! **Taking in.** Ops from another device of the account (handed over when
//! this device was linked, or exchanged later) go through
//! [`Actor::ingest_ops`]: the replica merges them, and every op it newly
//! holds is stored and *materialized* into the engine's trees — history,
//! edits, unread markers, friends, requests, name, nospam — by the same
//! deterministic rules as the merged state, so every device that holds the
//! same ops shows the same conversations, contacts and read state.
//!
//! **The device list.** Each device keeps its account's newest verified
//! [`SignedDeviceList`] under [`DEVICE_LIST`]; a profile made before
//! linking existed (or a brand-new one) starts with a list naming only
//! itself.

use std::collections::HashSet;
use std::ops::Bound;

use kith_net::PeerId;
use kith_proto::devices::{DeviceList, ListedDevice, SignedDeviceList};
use kith_proto::wire::{ChatMessage, ContactCard, MessageId, Timestamp};
use kith_proto::{AccountPublicKey, KithId};
use kith_store::{KdfParams, Op, Store};
use kith_sync::{Decision, DeviceId, Limits, OpKind, Position, Replica, VersionVector};

use super::{Actor, now_secs, store_error};
use crate::engine::{EngineError, Event, MessageView};
use crate::history::{Author, History, Inserted, StoredMessage};
use crate::records::{
    self, DEVICE_LIST, DISPLAY_NAME, EDITS, EditRecord, FRIENDS, FriendRecord, MessageState, OPS,
    OUTBOX, OutboxItem, REFUSED, REQUEST_ITEMS, REQUESTS_IN, REQUESTS_OUT, RefusalKind,
    RefusedRecord, SETTINGS, STATES, SYNC_INBOX, UNREAD,
};

/// Ops read from the store per range request while loading.
const LOAD_CHUNK: usize = 4096;
/// Most inbox batches taken in at start.
const MAX_INBOX: usize = 1024;

/// The replica's ID of a device: its Ed25519 public key.
pub(crate) fn device_id(peer: &PeerId) -> Option<DeviceId> {
    ListedDevice::new(peer, "-", 0).ed25519_key().map(DeviceId)
}

fn op_key(store: &Store, op: &kith_sync::Op) -> Vec<u8> {
    let mut key = store.opaque_id("sync-device", &op.id.device.0).to_vec();
    key.extend_from_slice(&op.id.counter.to_be_bytes());
    key
}

/// Rebuilds the replica of `local` from the [`OPS`] tree.
pub(crate) fn load_replica(store: &Store, local: DeviceId) -> Result<Replica, EngineError> {
    let mut replica = Replica::new(local, Limits::default());
    let mut from: Option<Vec<u8>> = None;
    loop {
        let lower = match &from {
            Some(key) => Bound::Excluded(key.as_slice()),
            None => Bound::Unbounded,
        };
        let chunk = store
            .range(
                OPS,
                lower,
                Bound::Unbounded,
                kith_store::Direction::Forward,
                LOAD_CHUNK,
            )
            .map_err(store_error)?;
        let done = chunk.len() < LOAD_CHUNK;
        for (key, value) in chunk {
            let op = kith_sync::Op::decode(&value)
                .map_err(|e| store_error(format!("damaged op in '{OPS}': {e}")))?;
            // Ops come per device in counter order; a refusal here means a
            // damaged log, which must not stop the profile from opening.
            let _ = replica.apply(op);
            from = Some(key);
        }
        if done {
            return Ok(replica);
        }
    }
}

/// The stored device list, if any.
pub(crate) fn stored_list(
    store: &Store,
    account: &AccountPublicKey,
) -> Result<Option<SignedDeviceList>, EngineError> {
    let Some(bytes) = store.get(SETTINGS, DEVICE_LIST).map_err(store_error)? else {
        return Ok(None);
    };
    let list = SignedDeviceList::decode(&bytes)
        .map_err(|e| store_error(format!("damaged device list: {e}")))?;
    list.verify(account)
        .map_err(|e| store_error(format!("stored device list does not verify: {e}")))?;
    Ok(Some(list))
}

/// The name this device gives itself in a new list: the host's name if
/// it has a usable one.
pub(crate) fn default_device_name() -> String {
    // Linux keeps the host name in /etc/hostname; Windows puts the
    // computer's name in COMPUTERNAME.
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty() && h.len() <= 64 && !h.chars().any(char::is_control));
    host.unwrap_or_else(|| "this device".into())
}

impl Actor {
    /// Records `kind` as this device's next op; the returned store op puts
    /// it in the log and belongs in the same batch as the change itself.
    pub(super) fn record(&mut self, kind: OpKind) -> Vec<Op> {
        let millis = Timestamp::now().0;
        match self.replica.record(kind, millis) {
            Ok(op) => match op.encode() {
                Ok(bytes) => vec![Op::put(OPS, op_key(&self.store, &op), bytes)],
                Err(e) => {
                    self.emit(Event::Problem(format!("could not record a change: {e}")));
                    Vec::new()
                }
            },
            Err(e) => {
                self.emit(Event::Problem(format!("could not record a change: {e}")));
                Vec::new()
            }
        }
    }

    /// Records a friend as known (added, or their details changed).
    pub(super) fn record_contact(&mut self, record: &FriendRecord) -> Vec<Op> {
        self.record(OpKind::ContactAdded {
            friend: record.id.account().to_bytes(),
            id_bytes: record.id.to_bytes().to_vec(),
            name: record.name.clone(),
            card: records::encode(&record.card),
        })
    }

    /// The account's device list, made (naming only this device) and
    /// stored if there is none yet.
    pub(super) fn ensure_device_list(&mut self) -> Result<(), EngineError> {
        let account = self.identity.account.public();
        if let Some(list) = stored_list(&self.store, &account)? {
            self.device_list = Some(list);
            return Ok(());
        }
        let me = ListedDevice::new(&self.net.peer_id(), default_device_name(), now_secs());
        let list = DeviceList::sign(&self.identity.account, 1, now_secs(), vec![me])
            .map_err(|e| EngineError::Invalid(e.to_string()))?;
        self.store
            .apply_durable(vec![Op::put(SETTINGS, DEVICE_LIST, list.encode())])
            .map_err(store_error)?;
        self.device_list = Some(list);
        Ok(())
    }

    /// The verified contents of the account's device list.
    pub(super) fn devices_listed(&self) -> Option<&DeviceList> {
        let account = self.identity.account.public();
        self.device_list.as_ref()?.verify(&account).ok()
    }

    /// A profile that kept friends and history before the op log existed
    /// records them once, so a device linked to it gets them too: friends,
    /// every message, edits and deletions, the read marker, answered
    /// requests, name and nospam.
    pub(super) fn backfill_log(&mut self) -> Result<(), EngineError> {
        if !self.replica.is_empty() || self.friends.is_empty() {
            return Ok(());
        }
        let mut ops = Vec::new();
        let friends: Vec<(AccountPublicKey, [u8; 16], FriendRecord)> = self
            .friends
            .values()
            .map(|f| (f.account, f.conversation, f.record.clone()))
            .collect();
        for (account, conversation, record) in friends {
            ops.extend(self.record_contact(&record));
            let friend = account.to_bytes();
            // Oldest first: collect the pages, newest page first.
            let history = History::new(&self.store);
            let mut pages = Vec::new();
            let mut older = None;
            loop {
                let page = history
                    .page(&conversation, older.as_ref(), crate::history::MAX_PAGE)
                    .map_err(store_error)?;
                older = page.older.clone();
                pages.push(page.messages);
                if older.is_none() {
                    break;
                }
            }
            let mut read = None;
            let mut unread_seen = false;
            for stored in pages.into_iter().rev().flatten() {
                let key = records::message_key(&conversation, &stored.message.id);
                let is_unread = self.store.get(UNREAD, &key).map_err(store_error)?.is_some();
                unread_seen |= is_unread;
                if !unread_seen {
                    read = Some(Position::of(&stored.message));
                }
                let message = stored.message.clone();
                ops.extend(self.record(match stored.author {
                    Author::Me => OpKind::MessageSent { friend, message },
                    Author::Friend => OpKind::MessageReceived { friend, message },
                }));
                if let Some(edit) =
                    records::get::<EditRecord>(&self.store, EDITS, &key).map_err(store_error)?
                {
                    let target = stored.message.id;
                    ops.extend(self.record(match edit.body {
                        Some(body) if !edit.deleted => OpKind::Edited {
                            friend,
                            target,
                            body,
                            at: edit.at,
                        },
                        _ => OpKind::Deleted {
                            friend,
                            target,
                            at: edit.at,
                        },
                    }));
                }
            }
            if let Some(upto) = read {
                ops.extend(self.record(OpKind::ReadUpTo { friend, upto }));
            }
        }
        for (_, refused) in
            records::all::<RefusedRecord>(&self.store, REFUSED, crate::engine::MAX_REFUSED)
                .map_err(store_error)?
        {
            ops.extend(self.record(OpKind::RequestDecided {
                from: refused.account,
                decision: match refused.kind {
                    RefusalKind::Declined => Decision::Declined,
                    RefusalKind::Blocked => Decision::Blocked,
                },
            }));
        }
        ops.extend(self.record(OpKind::ProfileName(self.display_name.clone())));
        ops.extend(self.record(OpKind::Nospam(self.identity.nospam)));
        self.store.apply_durable(ops).map_err(store_error)
    }

    /// Takes in the op batches waiting in [`SYNC_INBOX`] (from linking).
    pub(super) fn take_inbox(&mut self) -> Result<(), EngineError> {
        let batches =
            records::all::<Vec<u8>>(&self.store, SYNC_INBOX, MAX_INBOX).map_err(store_error)?;
        if batches.is_empty() {
            return Ok(());
        }
        let mut ops = Vec::new();
        let mut events = Vec::new();
        for (key, batch) in batches {
            match kith_sync::decode_batch(&batch) {
                Ok(batch) => {
                    self.ingest_ops(batch, &mut ops, &mut events);
                }
                Err(e) => events.push(Event::Problem(format!(
                    "history handed over by another device is unreadable: {e}"
                ))),
            }
            ops.push(records::delete(SYNC_INBOX, key));
        }
        self.store.apply_durable(ops).map_err(store_error)?;
        for event in events {
            self.emit(event);
        }
        Ok(())
    }

    /// Merges ops from another device of the account; stores and
    /// materializes every op newly held. Store ops go to `ops` (one batch
    /// with the caller's), events to `events` (after the commit). The ops
    /// themselves are put in the log last, after everything they do: a
    /// crash in between leaves them unheld, so they are taken in again
    /// (materializing is idempotent) rather than held without effect.
    /// Returns how many ops wait for earlier ones of their device (held in
    /// memory only: whoever sent them must keep them until they are in).
    pub(super) fn ingest_ops(
        &mut self,
        batch: Vec<kith_sync::Op>,
        ops: &mut Vec<Op>,
        events: &mut Vec<Event>,
    ) -> usize {
        let before = self.replica.version_vector();
        let outcome = self.replica.apply_all(batch);
        for (id, e) in &outcome.refused {
            events.push(Event::Problem(format!(
                "an op from another of your devices was refused ({}:{}): {e}",
                hex_short(&id.device.0),
                id.counter
            )));
        }
        if outcome.new == 0 {
            return outcome.buffered;
        }
        let after = self.replica.version_vector();
        let mut seen = HashSet::new();
        let mut log = Vec::new();
        for op in new_ops(&self.replica, &before, &after) {
            match op.encode() {
                Ok(bytes) => log.push(Op::put(OPS, op_key(&self.store, &op), bytes)),
                Err(e) => {
                    events.push(Event::Problem(format!("could not store an op: {e}")));
                    continue;
                }
            }
            // Ops of this very device come back from a sibling only after
            // this device lost its log; what they say is already here.
            if op.id.device == self.replica.local() {
                continue;
            }
            // What is not a message reads the store (edits held, unread
            // marks, history), so it must see the writes before it; a run
            // of messages stays one batch (`seen` catches repeats).
            if !matches!(
                op.kind,
                OpKind::MessageSent { .. } | OpKind::MessageReceived { .. }
            ) && let Err(e) = self.apply(std::mem::take(ops))
            {
                events.push(Event::Problem(e.to_string()));
            }
            self.materialize(&op.kind, &mut seen, ops, events);
        }
        ops.extend(log);
        outcome.buffered
    }

    fn materialize(
        &mut self,
        kind: &OpKind,
        seen: &mut HashSet<MessageId>,
        ops: &mut Vec<Op>,
        events: &mut Vec<Event>,
    ) {
        match kind {
            OpKind::MessageSent { friend, message } => {
                self.insert_synced(friend, message, Author::Me, seen, ops, events);
            }
            OpKind::MessageReceived { friend, message } => {
                self.insert_synced(friend, message, Author::Friend, seen, ops, events);
            }
            OpKind::Edited {
                friend,
                target,
                body,
                at,
            } => self.synced_change(friend, *target, Some(body.clone()), *at, ops, events),
            OpKind::Deleted { friend, target, at } => {
                self.synced_change(friend, *target, None, *at, ops, events);
            }
            OpKind::ContactAdded { friend, .. } | OpKind::ContactRemoved { friend } => {
                self.settle_contact(friend, seen, ops, events);
            }
            OpKind::RequestDecided { from, .. } => self.settle_decision(from, ops),
            OpKind::ReadUpTo { friend, .. } => self.settle_read(friend, ops),
            OpKind::ProfileName(_) => {
                if let Some(name) = self.replica.state().profile_name().map(|l| l.value.clone()) {
                    ops.push(records::put(SETTINGS, DISPLAY_NAME.to_vec(), &name));
                    self.display_name = name;
                }
            }
            OpKind::Nospam(_) => {
                if let Some(nospam) = self.replica.state().nospam().map(|l| l.value) {
                    self.adopt_nospam(nospam, events);
                }
            }
            _ => {}
        }
    }

    /// Puts a message another device recorded into the history.
    fn insert_synced(
        &mut self,
        friend: &[u8; 32],
        message: &ChatMessage,
        author: Author,
        seen: &mut HashSet<MessageId>,
        ops: &mut Vec<Op>,
        events: &mut Vec<Event>,
    ) {
        let Some(f) = self.friends.get(friend) else {
            // Shown once the friend is added (`settle_contact` fills the
            // conversation from the merged state).
            return;
        };
        let (account, conversation) = (f.account, f.conversation);
        if !seen.insert(message.id) {
            return;
        }
        let stored = StoredMessage {
            message: message.clone(),
            author,
            stored_at: Timestamp::now(),
        };
        let Ok((Inserted::New, new_ops)) =
            History::new(&self.store).insert_ops(&conversation, stored)
        else {
            return;
        };
        ops.extend(new_ops);
        if let Some(last) = self.lamports.get_mut(&conversation) {
            *last = (*last).max(message.lamport.0);
        }
        let key = records::message_key(&conversation, &message.id);
        let state = match author {
            Author::Me => {
                let state = MessageState::SentElsewhere;
                ops.push(records::put(STATES, key, &state));
                Some(state)
            }
            Author::Friend => {
                let read = self
                    .replica
                    .state()
                    .conversation(friend)
                    .and_then(|c| c.read_up_to());
                if read.is_none_or(|upto| Position::of(message) > upto) {
                    ops.push(Op::put(UNREAD, key, records::encode(&())));
                }
                None
            }
        };
        events.push(Event::Message {
            friend: account,
            message: MessageView {
                id: message.id,
                author,
                sent_at: message.sent_at,
                lamport: message.lamport,
                body: message.body.clone(),
                edited: false,
                deleted: false,
                state,
                witness: None,
            },
        });
    }

    /// An edit or deletion another device recorded: kept if it is newer
    /// than what is held (deletions are final), even before the message
    /// itself arrives.
    fn synced_change(
        &mut self,
        friend: &[u8; 32],
        target: MessageId,
        body: Option<String>,
        at: Timestamp,
        ops: &mut Vec<Op>,
        events: &mut Vec<Event>,
    ) {
        let Some(f) = self.friends.get(friend) else {
            return;
        };
        let (account, conversation) = (f.account, f.conversation);
        let key = records::message_key(&conversation, &target);
        if let Ok(Some(existing)) = records::get::<EditRecord>(&self.store, EDITS, &key)
            && (existing.deleted || (body.is_some() && existing.at >= at))
        {
            return;
        }
        let record = EditRecord {
            deleted: body.is_none(),
            body,
            at,
        };
        ops.push(records::put(EDITS, key, &record));
        if let Err(e) = self.apply(std::mem::take(ops)) {
            events.push(Event::Problem(e.to_string()));
            return;
        }
        if let Ok(Some(original)) = History::new(&self.store).get(&conversation, target)
            && let Ok(view) = self.view(&conversation, original)
        {
            events.push(Event::Changed {
                friend: account,
                message: view,
            });
        }
    }

    /// Makes the engine's friend list agree with the merged state for
    /// `friend`: added (with their conversation so far) or removed.
    fn settle_contact(
        &mut self,
        friend: &[u8; 32],
        seen: &mut HashSet<MessageId>,
        ops: &mut Vec<Op>,
        events: &mut Vec<Event>,
    ) {
        let Ok(account) = AccountPublicKey::from_bytes(friend) else {
            return;
        };
        let wanted = self.replica.state().contact(friend).cloned();
        let key = records::friend_key(&self.store, &account);
        match wanted {
            Some(contact) => {
                let (Ok(id), Ok(card)) = (
                    KithId::from_bytes(&contact.id_bytes),
                    records::decode::<ContactCard>(FRIENDS, &contact.card),
                ) else {
                    events.push(Event::Problem(
                        "another of your devices added a friend this device cannot read".into(),
                    ));
                    return;
                };
                if id.account() != &account || account == self.identity.account.public() {
                    return;
                }
                if let Some(existing) = self.friends.get_mut(friend) {
                    if existing.record.name != contact.name {
                        existing.record.name = contact.name.clone();
                        ops.push(records::put(FRIENDS, key, &existing.record));
                    }
                    return;
                }
                let record = FriendRecord {
                    id,
                    name: contact.name,
                    card,
                    added_at: Timestamp::now(),
                };
                ops.push(records::put(FRIENDS, key.clone(), &record));
                ops.push(records::delete(REQUESTS_IN, key.clone()));
                ops.push(records::delete(REQUESTS_OUT, key.clone()));
                ops.push(records::delete(REQUEST_ITEMS, key.clone()));
                ops.push(records::delete(REFUSED, key));
                self.drop_due.remove(friend);
                self.register_friend(record);
                // Messages recorded before the friend was known here.
                let messages: Vec<(ChatMessage, Author)> = self
                    .replica
                    .state()
                    .conversation(friend)
                    .map(|c| {
                        c.messages()
                            .map(|m| {
                                let author = match m.direction {
                                    kith_sync::Direction::Sent => Author::Me,
                                    kith_sync::Direction::Received => Author::Friend,
                                };
                                (m.message.clone(), author)
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                for (message, author) in messages {
                    self.insert_synced(friend, &message, author, seen, ops, events);
                }
                if let Ok(info) = self.friend_info(&account) {
                    events.push(Event::FriendAdded(info));
                }
            }
            None => {
                if self.friends.contains_key(friend)
                    && let Err(e) = self.forget_friend(&account, ops)
                {
                    events.push(Event::Problem(e.to_string()));
                }
            }
        }
    }

    /// Drops a friend and everything queued for them (not their history).
    pub(super) fn forget_friend(
        &mut self,
        account: &AccountPublicKey,
        ops: &mut Vec<Op>,
    ) -> Result<(), EngineError> {
        let key = records::friend_key(&self.store, account);
        ops.push(records::delete(FRIENDS, key.clone()));
        ops.push(records::delete(REQUESTS_OUT, key.clone()));
        ops.push(records::delete(REQUEST_ITEMS, key.clone()));
        let items =
            records::prefixed::<OutboxItem>(&self.store, OUTBOX, &key, crate::engine::MAX_OUTBOX)
                .map_err(store_error)?;
        for (item_key, _) in items {
            self.remove_outbox_item(item_key, ops);
        }
        if let Some(friend) = self.friends.remove(&account.to_bytes()) {
            for peer in friend.devices {
                self.devices.remove(&peer);
                self.keep_dirty = true;
            }
        }
        self.with_items.remove(&account.to_bytes());
        self.drop_due.remove(&account.to_bytes());
        Ok(())
    }

    /// A request answered on another device: no longer waiting here.
    fn settle_decision(&mut self, from: &[u8; 32], ops: &mut Vec<Op>) {
        let Ok(account) = AccountPublicKey::from_bytes(from) else {
            return;
        };
        let key = records::friend_key(&self.store, &account);
        ops.push(records::delete(REQUESTS_IN, key.clone()));
        let kind = match self.replica.state().decision(from) {
            Some(Decision::Declined) => RefusalKind::Declined,
            Some(Decision::Blocked) => RefusalKind::Blocked,
            _ => return,
        };
        ops.push(records::put(
            REFUSED,
            key,
            &RefusedRecord {
                account: *from,
                kind,
                at: Timestamp::now(),
            },
        ));
    }

    /// Clears the unread marks the merged read marker covers.
    fn settle_read(&mut self, friend: &[u8; 32], ops: &mut Vec<Op>) {
        let Some(conversation) = self.friends.get(friend).map(|f| f.conversation) else {
            return;
        };
        let Some(upto) = self
            .replica
            .state()
            .conversation(friend)
            .and_then(|c| c.read_up_to())
        else {
            return;
        };
        let Ok(unread) = records::prefixed::<()>(
            &self.store,
            UNREAD,
            &conversation,
            crate::engine::MAX_OUTBOX,
        ) else {
            return;
        };
        let history = History::new(&self.store);
        for (key, ()) in unread {
            let Some(id) = key.get(16..32).and_then(|b| <[u8; 16]>::try_from(b).ok()) else {
                continue;
            };
            if let Ok(Some(stored)) = history.get(&conversation, MessageId(id))
                && Position::of(&stored.message) <= upto
            {
                ops.push(records::delete(UNREAD, key));
            }
        }
    }

    fn adopt_nospam(&mut self, nospam: kith_proto::Nospam, events: &mut Vec<Event>) {
        if self.identity.nospam == nospam {
            return;
        }
        let previous = self.identity.nospam;
        self.identity.nospam = nospam;
        if let Some((profile, passphrase)) = &self.profile {
            let lock = passphrase.as_ref().map(|p| (p, KdfParams::INTERACTIVE));
            if let Err(e) = profile.replace_identity(&self.identity, lock) {
                self.identity.nospam = previous;
                events.push(Event::Problem(format!(
                    "could not take the Kith ID another device set: {e}"
                )));
            }
        }
    }

    /// The ops of the log another device lacks, as one encoded batch of
    /// at most `max_bytes`.
    pub(super) fn batch_for(&self, theirs: &VersionVector, max_bytes: usize) -> Vec<u8> {
        let ops = self
            .replica
            .missing_for(theirs, kith_sync::MAX_BATCH_OPS, max_bytes);
        kith_sync::encode_batch(&ops).unwrap_or_default()
    }
}

/// The ops `replica` holds under `after` and did not under `before`.
fn new_ops(replica: &Replica, before: &VersionVector, after: &VersionVector) -> Vec<kith_sync::Op> {
    let mut out: Vec<kith_sync::Op> = Vec::new();
    for (device, held) in after.iter() {
        for counter in before.get(device).saturating_add(1)..=held {
            if let Some(op) = replica.get(&kith_sync::OpId {
                device: *device,
                counter,
            }) {
                out.push(op.clone());
            }
        }
    }
    // In merge order, so a friend is added before their messages.
    out.sort_by_key(kith_sync::Op::order);
    out
}

fn hex_short(bytes: &[u8]) -> String {
    bytes.iter().take(4).map(|b| format!("{b:02x}")).collect()
}
