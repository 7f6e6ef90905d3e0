//! Offline mail, the engine's side (`docs/messaging.md`, "Offline mail").
//!
//! **Leaving mail.** When a friend cannot be reached directly (no presence
//! found, or a delivery attempt failed while we are on the network), what
//! waits in the outbox for them is sealed to their account as mailbox items
//! ([`Mail`] content: payload bundles, or a friend acceptance) and left with
//! the [`MailboxSettings::replicas`] volunteers closest to their mailbox
//! address. Once one volunteer has an item, its outbox entries go and its
//! messages read "stored with N of R"; an item held by fewer than R is kept
//! in the `deposits` tree and offered to more volunteers on a timer. The
//! direct path stays idle for that friend while a deposit is under way, and
//! for a minute after the friend was last found unreachable.
//!
//! **Fetching mail.** On joining the network, on a timer and whenever
//! friend requests are checked, the engine fetches from the volunteers
//! closest to its own address, opens each item, takes in what it carries
//! exactly as if it had come directly (duplicates by message ID are shown
//! once), records how far each message's send time is witnessed, queues a
//! "delivered" receipt for the sender, commits, and only then acknowledges
//! so the volunteers delete.
//!
//! Friend requests also travel as mail, beside the request drop, so that a
//! request reaches someone who is offline for longer than drop records
//! live.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use kith_mailbox::user::{self, DepositOutcome, FetchOutcome, FetchedItem};
use kith_net::{NetError, PeerId};
use kith_proto::AccountPublicKey;
use kith_proto::envelope;
use kith_proto::mailbox::{
    DEFAULT_WITNESS_TOLERANCE_MS, ItemId, MailboxItem, WitnessedTime, witnessed_time,
};
use kith_proto::request_drop::DropEntry;
use kith_proto::wire::{MAX_RECEIPT_IDS, MessageId, Payload, Receipt, ReceiptKind, Timestamp};
use kith_store::Op;
use sha2::{Digest, Sha256};

use super::{Actor, Done, Event, MailboxSettings, jitter, now_secs};
use crate::frame::{self, MAIL_BUNDLE_TARGET_BYTES, MAX_ITEMS, Mail};
use crate::records::{
    self, DEPOSITS, DepositRecord, MessageState, OUTBOX, OutboxBody, OutboxItem, REQUEST_ITEMS,
    REQUESTS_OUT, STATES, WITNESS, Witness,
};

/// A friend found unreachable is sent mail, not direct requests, for this
/// long; then a lookup is tried again.
pub(super) const OFFLINE_FOR: Duration = Duration::from_secs(60);
/// First wait after no volunteer took anything; doubles up to
/// [`DEPOSIT_RETRY_MAX`].
const DEPOSIT_RETRY_MIN: Duration = Duration::from_secs(15);
const DEPOSIT_RETRY_MAX: Duration = Duration::from_secs(600);
/// New items for an offline friend wait this long to be sealed, so that
/// a burst of sends becomes one mailbox item rather than many.
const DEPOSIT_GATHER: Duration = Duration::from_millis(300);
/// Deposit records topped up per round.
const TOP_UP_BATCH: usize = 64;
/// A friend's device that connects may have left mail for us while it
/// could not reach us: the next fetch is brought forward to this soon…
const CONNECT_FETCH_DELAY: Duration = Duration::from_secs(1);
/// …but not more often than this.
const FETCH_ON_CONNECT_EVERY: Duration = Duration::from_secs(10);
/// A fetch that found no volunteer (routing table still empty) is retried
/// this many times…
const FETCH_RETRIES: u32 = 60;
/// …this far apart.
const FETCH_RETRY_DELAY: Duration = Duration::from_millis(50);

/// One item a deposit task made: the outbox entries it carries and how the
/// volunteers answered.
pub(super) struct DepositGroup {
    keys: Vec<Vec<u8>>,
    /// A sealed acceptance: it stays in the outbox to go directly too, as
    /// the friend's device refuses our messages until it has the
    /// acceptance, and may come online before it fetches its mail.
    keep: bool,
    messages: Vec<MessageId>,
    item: Option<MailboxItem>,
    outcome: Result<DepositOutcome, String>,
}

/// A deposit record's top-up: the record, and the new volunteers' answer.
pub(super) struct TopUp {
    key: Vec<u8>,
    record: DepositRecord,
    outcome: Option<DepositOutcome>,
}

fn to_witness(time: WitnessedTime) -> Witness {
    match time {
        WitnessedTime::Witnessed(_) => Witness::Witnessed,
        WitnessedTime::Corrected(at) => Witness::Corrected { at: Timestamp(at) },
        WitnessedTime::Unwitnessed(_) => Witness::Unwitnessed,
    }
}

fn stored_state(volunteers: usize, of: usize) -> MessageState {
    MessageState::Stored {
        volunteers: u8::try_from(volunteers).unwrap_or(u8::MAX),
        of: u8::try_from(of).unwrap_or(u8::MAX),
    }
}

impl Actor {
    /// Whether `friend` was found unreachable recently enough that mail
    /// goes to volunteers rather than to a lookup first.
    pub(super) fn is_offline(&mut self, friend: &[u8; 32]) -> bool {
        match self.offline.get(friend) {
            Some(since) if since.elapsed() < OFFLINE_FOR => true,
            Some(_) => {
                self.offline.remove(friend);
                false
            }
            None => false,
        }
    }

    /// `friend` could not be reached directly: leave their mail with
    /// volunteers. Nothing happens while we are not on the network (a
    /// failed lookup then says nothing about the friend).
    pub(super) fn friend_unreachable(&mut self, friend: [u8; 32]) {
        if self.connected.is_empty() {
            return;
        }
        tracing::debug!(
            "friend {:02x?} unreachable: their messages go to mailbox volunteers",
            &friend[..4]
        );
        self.offline.insert(friend, Instant::now());
        self.start_deposit(friend);
    }

    /// `friend` was found or connected: deliver directly again.
    pub(super) fn friend_reachable(&mut self, friend: &[u8; 32]) {
        self.offline.remove(friend);
        self.deposit_due.remove(friend);
        self.deposit_retry.remove(friend);
    }

    /// Leaves `friend`'s new items as mail shortly (see
    /// [`DEPOSIT_GATHER`]).
    pub(super) fn deposit_soon(&mut self, friend: [u8; 32]) {
        self.deposit_due
            .entry(friend)
            .or_insert_with(|| Instant::now() + DEPOSIT_GATHER);
    }

    pub(super) fn start_due_deposits(&mut self, now: Instant) {
        let due: Vec<[u8; 32]> = self
            .deposit_due
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(friend, _)| *friend)
            .collect();
        for friend in due {
            self.start_deposit(friend);
        }
    }

    /// Seals what waits in the outbox for `friend_bytes` as mailbox items
    /// and leaves them with volunteers, unless a deposit is under way or
    /// backing off.
    pub(super) fn start_deposit(&mut self, friend_bytes: [u8; 32]) {
        if self.depositing.contains(&friend_bytes) || self.stopping.is_some() {
            return;
        }
        if let Some((at, _)) = self.deposit_retry.get(&friend_bytes)
            && *at > Instant::now()
        {
            return;
        }
        let Some(friend) = self.friends.get(&friend_bytes) else {
            self.deposit_due.remove(&friend_bytes);
            return;
        };
        // Items in a direct request now are not mailed as well; the
        // deposit stays due and is tried on a later tick.
        if friend
            .devices
            .iter()
            .any(|p| self.devices.get(p).is_some_and(|d| d.in_flight))
        {
            return;
        }
        self.deposit_due.remove(&friend_bytes);
        let account = friend.account;
        let items =
            match records::prefixed::<OutboxItem>(&self.store, OUTBOX, &friend.key, MAX_ITEMS) {
                Ok(items) => items,
                Err(e) => {
                    self.emit(Event::Problem(format!("outbox unreadable: {e}")));
                    return;
                }
            };
        let now = Timestamp::now();
        let mut ops = Vec::new();
        let mut events = Vec::new();
        let mut live = Vec::with_capacity(items.len());
        for (key, item) in items {
            if item.expires <= now {
                self.fail(
                    &key,
                    &item,
                    "not delivered before its time ran out",
                    &mut ops,
                    &mut events,
                );
            } else if !self.mailed.contains(&key) {
                live.push((key, item));
            }
        }
        self.stage(ops);
        for event in events {
            self.emit(event);
        }
        let groups = group_mail(live);
        if groups.is_empty() {
            return;
        }
        self.depositing.insert(friend_bytes);
        let sender = std::sync::Arc::clone(&self.account_key);
        let settings = self.mailbox.clone();
        let net = self.net.clone();
        let done = self.done_tx.clone();
        tokio::spawn(async move {
            let mut results = Vec::with_capacity(groups.len());
            for (keys, messages, mail) in groups {
                let keep = matches!(mail, Mail::Accept(_));
                let item = match seal_mail(&sender, account, &mail, &settings).await {
                    Ok(item) => item,
                    Err(e) => {
                        results.push(DepositGroup {
                            keys,
                            keep,
                            messages,
                            item: None,
                            outcome: Err(e),
                        });
                        break;
                    }
                };
                let outcome = user::deposit(&net, &item, settings.replicas, &[])
                    .await
                    .map_err(|e| e.to_string());
                // Keep the order: once an item finds no volunteer, later
                // ones wait with it.
                let stop = outcome.as_ref().map_or(true, |o| o.accepted.is_empty());
                results.push(DepositGroup {
                    keys,
                    keep,
                    messages,
                    item: Some(item),
                    outcome,
                });
                if stop {
                    break;
                }
            }
            let _ = done
                .send(Done::Deposited {
                    friend: friend_bytes,
                    groups: results,
                })
                .await;
        });
    }

    pub(super) fn on_deposited(&mut self, friend: [u8; 32], groups: Vec<DepositGroup>) {
        self.depositing.remove(&friend);
        // State reads below must see what this turn wrote.
        if let Err(e) = self.apply_staged() {
            self.emit(Event::Problem(e.to_string()));
        }
        let replicas = self.mailbox.replicas;
        let Some((account, conversation, name)) = self
            .friends
            .get(&friend)
            .map(|f| (f.account, f.conversation, f.record.name.clone()))
        else {
            return;
        };
        let mut ops = Vec::new();
        let mut events = Vec::new();
        let mut failed = None;
        let back_online = self.friends.get(&friend).is_some_and(|f| self.online(f));
        tracing::debug!(items = groups.len(), back_online, "deposit finished");
        for group in groups {
            let outcome = match group.outcome {
                Ok(outcome) if !outcome.accepted.is_empty() => outcome,
                Ok(outcome) => {
                    failed = Some(match outcome.refusal() {
                        Some(refusal) => refusal.to_string(),
                        None if outcome.refused.is_empty() => "no volunteer was found".into(),
                        None => outcome.refused[0].1.to_string(),
                    });
                    continue;
                }
                Err(e) => {
                    failed = Some(e);
                    continue;
                }
            };
            let holders = outcome.accepted.len();
            for key in group.keys {
                if group.keep || back_online {
                    // An acceptance, or any item when the friend came back
                    // while the deposit ran: it goes directly as well, so
                    // it need not wait for their next mail fetch (the copy
                    // in the mailbox is taken in once, by its ID). It is
                    // not mailed again.
                    self.mailed.insert(key);
                } else if matches!(self.store.get(OUTBOX, &key), Ok(Some(_))) {
                    // (Gone already if a direct delivery got there first.)
                    self.remove_outbox_item(key, &mut ops);
                }
            }
            let state = stored_state(holders, replicas);
            for id in &group.messages {
                self.raise_state(&account, &conversation, *id, &state, &mut ops, &mut events);
            }
            // Every deposit with messages is followed until they are
            // delivered (or the item expires unfetched, and they fail); its
            // bytes are kept only while more volunteers are wanted.
            if (holders < replicas || !group.messages.is_empty())
                && let Some(item) = group.item
                && let Ok(encoded) = item.encode()
            {
                let record = DepositRecord {
                    friend,
                    item: if holders < replicas {
                        encoded
                    } else {
                        Vec::new()
                    },
                    holders: outcome
                        .accepted
                        .iter()
                        .map(|a| a.volunteer.to_bytes())
                        .collect(),
                    messages: group.messages,
                    expires: item.expires,
                };
                ops.push(records::put(DEPOSITS, item.item_id.to_vec(), &record));
            }
        }
        self.stage(ops);
        self.emit_after_commit(events);
        match failed {
            Some(reason) => {
                let entry = self
                    .deposit_retry
                    .entry(friend)
                    .or_insert((Instant::now(), DEPOSIT_RETRY_MIN / 2));
                entry.1 = (entry.1 * 2).min(DEPOSIT_RETRY_MAX);
                entry.0 = Instant::now() + jitter(entry.1);
                self.emit(Event::Problem(format!(
                    "could not leave messages for {name} with mailbox volunteers: {reason}"
                )));
            }
            None => {
                self.deposit_retry.remove(&friend);
            }
        }
    }

    /// Moves a message of ours to `state` if that is further along.
    fn raise_state(
        &self,
        account: &AccountPublicKey,
        conversation: &[u8; 16],
        id: MessageId,
        state: &MessageState,
        ops: &mut Vec<Op>,
        events: &mut Vec<Event>,
    ) {
        let key = records::message_key(conversation, &id);
        let current: Option<MessageState> = records::get(&self.store, STATES, &key).ok().flatten();
        if current.is_none_or(|c| c.rank() < state.rank()) {
            ops.push(records::put(STATES, key, state));
            events.push(Event::State {
                friend: *account,
                id,
                state: state.clone(),
            });
        }
    }

    /// Follows up deposits, a batch per round (a cursor walks the tree):
    /// records whose messages were all delivered go; an item that expired
    /// before its friend fetched it fails its undelivered messages; items
    /// held by fewer volunteers than wanted are offered to more.
    pub(super) fn start_top_up(&mut self) {
        if self.topping_up || self.connected.is_empty() {
            return;
        }
        let lower = match &self.top_up_cursor {
            Some(after) => std::ops::Bound::Excluded(after.as_slice()),
            None => std::ops::Bound::Unbounded,
        };
        let rows = match self.store.range(
            DEPOSITS,
            lower,
            std::ops::Bound::Unbounded,
            kith_store::Direction::Forward,
            TOP_UP_BATCH,
        ) {
            Ok(rows) => rows,
            Err(e) => {
                self.emit(Event::Problem(format!("deposits unreadable: {e}")));
                return;
            }
        };
        self.top_up_cursor = if rows.len() < TOP_UP_BATCH {
            None
        } else {
            rows.last().map(|(key, _)| key.clone())
        };
        let now = now_secs();
        let replicas = self.mailbox.replicas;
        let mut ops = Vec::new();
        let mut events = Vec::new();
        let mut wanted = Vec::new();
        for (key, bytes) in rows {
            let Ok(record) = records::decode::<DepositRecord>(DEPOSITS, &bytes) else {
                ops.push(records::delete(DEPOSITS, key));
                continue;
            };
            let friend = self
                .friends
                .get(&record.friend)
                .map(|f| (f.account, f.conversation));
            let undelivered: Vec<MessageId> = match friend {
                Some((_, conversation)) => record
                    .messages
                    .iter()
                    .copied()
                    .filter(|id| {
                        let key = records::message_key(&conversation, id);
                        records::get::<MessageState>(&self.store, STATES, &key)
                            .ok()
                            .flatten()
                            .is_none_or(|s| {
                                s.rank() < MessageState::Delivered { at: Timestamp(0) }.rank()
                            })
                    })
                    .collect(),
                None => Vec::new(),
            };
            let settled = if record.messages.is_empty() {
                record.holders.len() >= replicas
            } else {
                undelivered.is_empty()
            };
            if settled || friend.is_none() {
                ops.push(records::delete(DEPOSITS, key));
            } else if record.expires <= now {
                if let Some((account, conversation)) = friend {
                    let state = MessageState::Failed {
                        reason: "left with mailbox volunteers, but not fetched before it expired"
                            .into(),
                    };
                    for id in undelivered {
                        ops.push(records::put(
                            STATES,
                            records::message_key(&conversation, &id),
                            &state,
                        ));
                        events.push(Event::State {
                            friend: account,
                            id,
                            state: state.clone(),
                        });
                    }
                }
                ops.push(records::delete(DEPOSITS, key));
            } else if record.holders.len() < replicas && !record.item.is_empty() {
                wanted.push((key, record));
            }
        }
        self.stage(ops);
        self.emit_after_commit(events);
        if wanted.is_empty() {
            return;
        }
        self.topping_up = true;
        let net = self.net.clone();
        let done = self.done_tx.clone();
        tokio::spawn(async move {
            let mut results = Vec::with_capacity(wanted.len());
            for (key, record) in wanted {
                let outcome = match MailboxItem::decode(&record.item) {
                    Ok(item) => {
                        let exclude: Vec<PeerId> = record
                            .holders
                            .iter()
                            .filter_map(|b| PeerId::from_bytes(b).ok())
                            .collect();
                        let want = replicas.saturating_sub(exclude.len());
                        user::deposit(&net, &item, want, &exclude).await.ok()
                    }
                    Err(_) => None,
                };
                results.push(TopUp {
                    key,
                    record,
                    outcome,
                });
            }
            let _ = done.send(Done::ToppedUp(results)).await;
        });
    }

    pub(super) fn on_topped_up(&mut self, results: Vec<TopUp>) {
        self.topping_up = false;
        if let Err(e) = self.apply_staged() {
            self.emit(Event::Problem(e.to_string()));
        }
        let replicas = self.mailbox.replicas;
        let mut ops = Vec::new();
        let mut events = Vec::new();
        for TopUp {
            key,
            mut record,
            outcome,
        } in results
        {
            let Some(outcome) = outcome else { continue };
            if outcome.accepted.is_empty() {
                continue;
            }
            for accepted in outcome.accepted {
                let bytes = accepted.volunteer.to_bytes();
                if !record.holders.contains(&bytes) {
                    record.holders.push(bytes);
                }
            }
            if let Some((account, conversation)) = self
                .friends
                .get(&record.friend)
                .map(|f| (f.account, f.conversation))
            {
                let state = stored_state(record.holders.len(), replicas);
                for id in &record.messages {
                    self.raise_state(&account, &conversation, *id, &state, &mut ops, &mut events);
                }
            }
            if record.holders.len() >= replicas {
                // Enough hold it: only its messages are still followed.
                record.item.clear();
            }
            ops.push(records::put(DEPOSITS, key, &record));
        }
        self.stage(ops);
        self.emit_after_commit(events);
    }

    /// Leaves a sealed friend request as mail for `to` too, once per
    /// sealing.
    pub(super) fn deposit_request(&mut self, to: AccountPublicKey, sealed: Vec<u8>) {
        let to_bytes = to.to_bytes();
        if self.requests_depositing.contains(&to_bytes) || self.connected.is_empty() {
            return;
        }
        let digest: [u8; 32] = Sha256::digest(&sealed).into();
        let key = records::friend_key(&self.store, &to);
        if matches!(
            records::get::<[u8; 32]>(&self.store, REQUEST_ITEMS, &key),
            Ok(Some(done)) if done == digest
        ) {
            return;
        }
        self.requests_depositing.insert(to_bytes);
        let sender = std::sync::Arc::clone(&self.account_key);
        let settings = self.mailbox.clone();
        let net = self.net.clone();
        let done = self.done_tx.clone();
        tokio::spawn(async move {
            let ok = match seal_mail(&sender, to, &Mail::Request(sealed), &settings).await {
                Ok(item) => user::deposit(&net, &item, settings.replicas, &[])
                    .await
                    .is_ok_and(|o| !o.accepted.is_empty()),
                Err(_) => false,
            };
            let _ = done
                .send(Done::RequestDeposited {
                    to: to_bytes,
                    digest,
                    ok,
                })
                .await;
        });
    }

    pub(super) fn on_request_deposited(&mut self, to: [u8; 32], digest: [u8; 32], ok: bool) {
        self.requests_depositing.remove(&to);
        if !ok {
            return;
        }
        if let Ok(account) = AccountPublicKey::from_bytes(&to) {
            let key = records::friend_key(&self.store, &account);
            self.stage(vec![records::put(REQUEST_ITEMS, key, &digest)]);
        }
    }

    /// A friend's device has just connected. If they found us unreachable
    /// a moment ago, what they sent waits with volunteers, and our timer
    /// would fetch it only within 30 minutes: fetch shortly instead (once
    /// per [`FETCH_ON_CONNECT_EVERY`]; a fetch under way is followed by
    /// another).
    pub(super) fn fetch_on_connect(&mut self) {
        let now = Instant::now();
        if self
            .connect_fetch_at
            .is_some_and(|at| now < at + FETCH_ON_CONNECT_EVERY)
        {
            return;
        }
        self.connect_fetch_at = Some(now);
        self.next_mail_fetch = self.next_mail_fetch.min(now + CONNECT_FETCH_DELAY);
    }

    /// Fetches our own mail, unless a fetch is under way; waits for the
    /// first connection when not on the network yet.
    pub(super) fn start_mail_fetch(&mut self, delay: Duration) {
        if self.mail_fetching || self.stopping.is_some() || self.removed() {
            return;
        }
        if self.connected.is_empty() {
            self.mail_fetch_deferred = true;
            return;
        }
        self.mail_fetching = true;
        let now = Instant::now();
        self.next_mail_fetch = now + self.mailbox.fetch_every;
        self.last_mail_fetch_wall = std::time::SystemTime::now();
        let account = std::sync::Arc::clone(&self.account_key);
        let ask = self.mailbox.replicas.saturating_mul(2).max(1);
        let net = self.net.clone();
        let done = self.done_tx.clone();
        let thorough = std::mem::take(&mut self.mail_fetch_thorough);
        let remembered = self
            .mail_volunteers
            .as_ref()
            .filter(|(found, volunteers)| {
                !thorough
                    && now < *found + self.mailbox.find_volunteers_every
                    && !volunteers.is_empty()
            })
            .map(|(_, volunteers)| volunteers.clone());
        self.mail_fetch_remembered = remembered.is_some();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let result = match remembered {
                Some(volunteers) => {
                    let ask = volunteers.len();
                    Ok(user::fetch_from(&net, &account, volunteers, ask).await)
                }
                None => user::fetch(&net, &account, ask).await,
            };
            let _ = done.send(Done::MailFetched(result)).await;
        });
    }

    /// Remembers the volunteers that served a fetch which looked them up;
    /// forgets them when one of them failed a fetch that asked them
    /// directly, so the next fetch looks again.
    fn remember_volunteers(&mut self, outcome: &FetchOutcome) {
        if !std::mem::take(&mut self.mail_fetch_remembered) {
            self.mail_volunteers = Some((Instant::now(), outcome.volunteers.clone()));
        } else if !outcome.failures.is_empty()
            || self
                .mail_volunteers
                .as_ref()
                .is_some_and(|(_, asked)| outcome.volunteers.len() < asked.len())
        {
            self.mail_volunteers = None;
        }
    }

    pub(super) fn on_mail_fetched(&mut self, result: Result<FetchOutcome, NetError>) {
        self.mail_fetching = false;
        let outcome = match result {
            Ok(outcome) => {
                self.mail_fetch_retries = 0;
                self.remember_volunteers(&outcome);
                outcome
            }
            Err(_) if self.mail_fetch_retries < FETCH_RETRIES => {
                // Just joined: the routing table may still be empty.
                self.mail_fetch_retries += 1;
                self.start_mail_fetch(FETCH_RETRY_DELAY);
                return;
            }
            Err(_) => {
                self.mail_fetch_retries = 0;
                return;
            }
        };
        if outcome.items.is_empty() {
            return;
        }
        if let Err(e) = self.apply_staged() {
            self.emit(Event::Problem(e.to_string()));
            return;
        }
        let mut ops = Vec::new();
        let mut events = Vec::new();
        let mut handled: Vec<ItemId> = Vec::with_capacity(outcome.items.len());
        let mut requests = Vec::new();
        let mut accepts = Vec::new();
        let mut bundles = Vec::new();
        for fetched in outcome.items {
            // An item that does not open is not for us or is damaged:
            // acknowledged all the same, so volunteers do not keep it.
            let Ok(opened) = fetched.item.open(&self.identity.account) else {
                handled.push(fetched.item.item_id);
                continue;
            };
            match frame::decode_mail(&opened.content) {
                Ok(Mail::Request(sealed)) => {
                    handled.push(fetched.item.item_id);
                    requests.push(DropEntry {
                        expires: opened.expires,
                        sealed,
                    });
                }
                Ok(Mail::Accept(sealed)) => {
                    handled.push(fetched.item.item_id);
                    accepts.push((opened.sender, sealed));
                }
                Ok(Mail::Bundle(payloads)) => bundles.push((opened.sender, payloads, fetched)),
                Ok(Mail::Sync(mail)) => {
                    // Only the account itself leaves sync mail.
                    if opened.sender != self.identity.account.public()
                        || self.take_sync_mail(mail, &mut ops, &mut events)
                    {
                        handled.push(fetched.item.item_id);
                    }
                }
                Err(_) => handled.push(fetched.item.item_id),
            }
        }
        // Item IDs are random, so a fetch returns items in no particular
        // order: acceptances first (a friend's messages need the
        // friendship), then every chat message, then what refers to
        // messages (edits, deletions, receipts), which is order-free among
        // itself (latest edit wins, states only rise).
        for (sender, sealed) in accepts {
            if let Ok(inner) = envelope::open(&self.identity.account, &sealed)
                && inner.sender == sender
            {
                self.take_sealed(&sender, &inner.payload, None, &mut ops, &mut events);
            }
        }
        let mut delivered: HashMap<[u8; 32], Vec<MessageId>> = HashMap::new();
        let mut seen = std::mem::take(&mut self.turn_seen);
        let mut later = Vec::new();
        for (sender, payloads, fetched) in bundles {
            if !self.friends.contains_key(&sender.to_bytes()) {
                // Not a friend (yet): while our request to them is open,
                // their acceptance may still be on its way; keep the item
                // with the volunteers until then. Otherwise it is dropped.
                let key = records::friend_key(&self.store, &sender);
                if !matches!(self.store.get(REQUESTS_OUT, &key), Ok(Some(_))) {
                    handled.push(fetched.item.item_id);
                }
                continue;
            }
            // When the store fails the item is not acknowledged: it comes
            // again with a later fetch.
            if let Ok(ids) = self.receive_mail_chats(
                &sender,
                &payloads,
                &fetched,
                &mut seen,
                &mut ops,
                &mut events,
            ) {
                if !ids.is_empty() {
                    delivered.entry(sender.to_bytes()).or_default().extend(ids);
                }
                later.push((sender, payloads, fetched.item.item_id));
            }
        }
        for (sender, payloads, id) in later {
            if self
                .receive_mail_changes(&sender, payloads, &mut seen, &mut ops, &mut events)
                .is_ok()
            {
                handled.push(id);
            }
        }
        self.turn_seen = seen;
        // The sender learns the messages arrived (their outbox said
        // "stored with volunteers" until now).
        let at = Timestamp::now();
        for (friend, ids) in delivered {
            let Ok(account) = AccountPublicKey::from_bytes(&friend) else {
                continue;
            };
            for chunk in ids.chunks(MAX_RECEIPT_IDS) {
                let receipt = Payload::Receipt(Receipt {
                    kind: ReceiptKind::Delivered,
                    ids: chunk.to_vec(),
                    at,
                });
                ops.push(self.queue_op(&account, None, OutboxBody::Payload(receipt)));
            }
        }
        self.stage(ops);
        if !requests.is_empty() {
            self.on_fetched(requests);
        }
        let account = std::sync::Arc::clone(&self.account_key);
        let volunteers = outcome.volunteers;
        self.after_commit(move |actor, ok| {
            if !ok {
                // Nothing acknowledged: the items stay with the volunteers
                // and come again with the next fetch.
                return;
            }
            for event in events {
                actor.emit(event);
            }
            let net = actor.net.clone();
            tokio::spawn(async move {
                user::acknowledge(&net, &account, &handled, &volunteers).await;
            });
        });
    }

    /// Takes in the chat messages of a friend's mail bundle; returns the
    /// IDs of those that were new, or `Err` when the store failed.
    fn receive_mail_chats(
        &mut self,
        sender: &AccountPublicKey,
        payloads: &[Vec<u8>],
        fetched: &FetchedItem,
        seen: &mut std::collections::HashSet<MessageId>,
        ops: &mut Vec<Op>,
        events: &mut Vec<Event>,
    ) -> Result<Vec<MessageId>, ()> {
        let Some((account, conversation)) = self
            .friends
            .get(&sender.to_bytes())
            .map(|f| (f.account, f.conversation))
        else {
            return Ok(Vec::new());
        };
        // Only receipts of volunteers we fetched this copy from count:
        // anyone can mint a valid receipt with a key of their own and
        // hand it to a volunteer along with the item.
        let receipts: Vec<_> = fetched
            .receipts
            .iter()
            .filter(|r| {
                r.volunteer_peer_id()
                    .is_ok_and(|peer| fetched.from.contains(&peer))
            })
            .cloned()
            .collect();
        let mut new = Vec::new();
        for bytes in payloads {
            let Ok(payload @ Payload::Chat(_)) = Payload::decode(bytes) else {
                continue;
            };
            let Payload::Chat(chat) = &payload else {
                continue;
            };
            let (id, sent_at) = (chat.id, chat.sent_at);
            let before = events.len();
            self.receive_payload(&account, &conversation, payload, seen, ops, events)
                .map_err(|_| ())?;
            if events.len() > before {
                let witness = to_witness(witnessed_time(
                    sent_at.0,
                    &receipts,
                    DEFAULT_WITNESS_TOLERANCE_MS,
                ));
                ops.push(records::put(
                    WITNESS,
                    records::message_key(&conversation, &id),
                    &witness,
                ));
                if let Some(Event::Message { message, .. }) = events.last_mut()
                    && message.id == id
                {
                    message.witness = Some(witness);
                }
                new.push(id);
            }
        }
        Ok(new)
    }

    /// Takes in the edits, deletions and receipts of a friend's mail
    /// bundle (after every chat message of the fetch); typing indicators
    /// are stale by now and skipped. `Err` when the store failed.
    fn receive_mail_changes(
        &mut self,
        sender: &AccountPublicKey,
        payloads: Vec<Vec<u8>>,
        seen: &mut std::collections::HashSet<MessageId>,
        ops: &mut Vec<Op>,
        events: &mut Vec<Event>,
    ) -> Result<(), ()> {
        let Some((account, conversation)) = self
            .friends
            .get(&sender.to_bytes())
            .map(|f| (f.account, f.conversation))
        else {
            return Ok(());
        };
        for bytes in payloads {
            let Ok(payload) = Payload::decode(&bytes) else {
                continue;
            };
            if matches!(payload, Payload::Chat(_) | Payload::Typing(_)) {
                continue;
            }
            // An edit, deletion or receipt sees the writes before it.
            if !ops.is_empty() {
                self.staged.append(ops);
                self.apply_staged().map_err(|_| ())?;
            }
            self.receive_payload(&account, &conversation, payload, seen, ops, events)
                .map_err(|_| ())?;
        }
        Ok(())
    }
}

/// Seals `mail` for `to` as a mailbox item expiring after the item TTL,
/// solving its proof of work off the async threads.
pub(super) async fn seal_mail(
    sender: &std::sync::Arc<kith_proto::AccountKeypair>,
    to: AccountPublicKey,
    mail: &Mail,
    settings: &MailboxSettings,
) -> Result<MailboxItem, String> {
    let expires = now_secs().saturating_add(settings.item_ttl.as_secs());
    let content = frame::encode_mail(mail);
    let difficulty = settings.pow_difficulty;
    let sender = std::sync::Arc::clone(sender);
    tokio::task::spawn_blocking(move || {
        MailboxItem::seal(&sender, &to, &content, expires, difficulty)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())
}

/// Groups outbox items into mail: payloads into bundles of about
/// [`MAIL_BUNDLE_TARGET_BYTES`], each sealed acceptance on its own. Items
/// past their TTL are left for the pump to fail.
fn group_mail(items: Vec<(Vec<u8>, OutboxItem)>) -> Vec<(Vec<Vec<u8>>, Vec<MessageId>, Mail)> {
    let mut groups = Vec::new();
    let mut keys = Vec::new();
    let mut messages = Vec::new();
    let mut payloads: Vec<Vec<u8>> = Vec::new();
    let mut bytes = 0;
    let now = Timestamp::now();
    let mut close = |keys: &mut Vec<Vec<u8>>,
                     messages: &mut Vec<MessageId>,
                     payloads: &mut Vec<Vec<u8>>,
                     bytes: &mut usize| {
        if !payloads.is_empty() {
            groups.push((
                std::mem::take(keys),
                std::mem::take(messages),
                Mail::Bundle(std::mem::take(payloads)),
            ));
        }
        *bytes = 0;
    };
    let mut accepts = Vec::new();
    for (key, item) in items {
        if item.expires <= now {
            continue;
        }
        match item.body {
            OutboxBody::Sealed(sealed) => {
                close(&mut keys, &mut messages, &mut payloads, &mut bytes);
                accepts.push((vec![key], Vec::new(), Mail::Accept(sealed)));
            }
            OutboxBody::Payload(payload) => {
                let Ok(plain) = payload.encode() else {
                    continue;
                };
                if bytes + plain.len() > MAIL_BUNDLE_TARGET_BYTES
                    || payloads.len() >= frame::MAX_BUNDLE_PAYLOADS
                {
                    close(&mut keys, &mut messages, &mut payloads, &mut bytes);
                }
                bytes += plain.len();
                payloads.push(plain);
                keys.push(key);
                if let Some(id) = item.message {
                    messages.push(id);
                }
            }
        }
    }
    close(&mut keys, &mut messages, &mut payloads, &mut bytes);
    // An acceptance goes first: the friend must know us before our
    // messages make sense to them.
    accepts.extend(groups);
    accepts
}
