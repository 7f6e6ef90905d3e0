//! The engine actor: one task that owns the store, the session secrets and
//! the network client, and turns commands, network events and finished
//! network requests into store writes, outbound requests and events.
//!
//! Each turn handles whatever is ready (up to [`TURN_BUDGET`] items), then
//! commits: if any handled item waits for durability (a command reply, an
//! inbound request's acknowledgement), the store is flushed once and all of
//! them are answered together. Then every friend with outbox items and a
//! device ready is pumped.

mod fanout;
mod link;
mod mail;
mod siblings;
mod sync;

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::time::{Duration, Instant, SystemTime};

use futures::{FutureExt, Stream, StreamExt};
use kith_net::{InboundRequest, Multiaddr, NetError, PeerId};
use kith_proto::presence::PresenceKeys;
use kith_proto::request_drop::{DropEntry, drop_key};
use kith_proto::wire::{
    ChatMessage, ContactCard, Delete, DeviceCard, Edit, FriendAccept, FriendRequest, Lamport,
    MAX_RECEIPT_IDS, MessageId, Payload, Receipt, ReceiptKind, Timestamp, Typing,
};
use kith_proto::{AccountPublicKey, KithId, Nospam, envelope};
use kith_store::profile::{Identity, Profile, ProfileError};
use kith_store::{KdfParams, Op, Passphrase, Store};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use zeroize::Zeroizing;

use super::{
    Command, Config, EngineError, Event, FriendInfo, HistoryPage, MAX_FRIENDS, MAX_OUTBOX,
    MAX_PENDING_REQUESTS, MailboxSettings, MessageView, OutgoingInfo, REQUEST_UPDATE_INTERVAL,
    Reply, RequestInfo, StartError, Status,
};
use crate::frame::{self, Ack, BATCH_BYTES, BUNDLE_TARGET_BYTES, Item, MAX_ITEMS, Refusal};
use crate::history::{Author, History, Inserted, StoredMessage};
use crate::records::{
    self, DEVICE, DISPLAY_NAME, EDITS, EditRecord, FRIEND_LISTS, FRIENDS, FriendRecord,
    IncomingRecord, MessageState, OLM_ACCOUNT, OUTBOX, OUTBOX_ACKS, OutboxBody, OutboxItem,
    OutgoingRecord, REFUSED, REQUEST_ITEMS, REQUESTS_IN, REQUESTS_OUT, RefusalKind, RefusedRecord,
    SEEN_DROPS, SESSIONS, SETTINGS, STATES, SessionsRecord, UNREAD, WITNESS, Witness,
};
use crate::session::{DeviceSecrets, PairSession, Prekeys};

/// Most ready items one turn handles before it commits.
const TURN_BUDGET: usize = 256;
/// How often due retries are looked at.
const TICK: Duration = Duration::from_millis(200);
/// Sessions kept per friend device (newest first).
const MAX_SESSIONS: usize = 4;
/// Lifetime of a request-drop entry.
const DROP_TTL_SECS: u64 = 24 * 3600;
/// An unanswered request is placed again this long before its entry
/// expires…
const DROP_RENEW_SECS: u64 = 6 * 3600;
/// …for this long after it was first sent.
const REQUEST_LIFETIME_SECS: u64 = 30 * 24 * 3600;
/// A lookup of our request drop that someone waits for is retried this
/// often…
const POLL_RETRIES: u32 = 40;
/// …this far apart, while the DHT is not reachable yet.
const POLL_RETRY_DELAY: Duration = Duration::from_millis(250);
/// Delivery requests to a device that must fail in a row before its friend
/// counts as unreachable (and is sent mail). One failure is often nothing:
/// an address from before the device restarted, or a connection closed
/// under the request as a relayed one gave way to a direct one; the retry
/// looks the device up again.
const FAILURES_BEFORE_MAIL: u32 = 2;
/// Longest a shutdown waits for mail to the account's other devices.
const PARTING_LIMIT: Duration = Duration::from_secs(8);
/// Capacity of the channel finished network tasks report on.
const DONE_CAPACITY: usize = 256;

type NetEvents = Pin<Box<dyn Stream<Item = kith_net::Event> + Send>>;
type Waiter = Box<dyn FnOnce(&mut Actor, bool) + Send>;

/// What a finished network task reports.
enum Done {
    Sent {
        peer: PeerId,
        items: Vec<Vec<(Vec<u8>, OutboxItem)>>,
        result: Result<Vec<u8>, NetError>,
    },
    Located {
        friend: [u8; 32],
        result: Result<Vec<kith_net::Device>, NetError>,
    },
    Dropped {
        to: [u8; 32],
        result: Result<(), NetError>,
    },
    Fetched(Result<Vec<DropEntry>, NetError>),
    Deposited {
        friend: [u8; 32],
        groups: Vec<mail::DepositGroup>,
    },
    ToppedUp(Vec<mail::TopUp>),
    RequestDeposited {
        to: [u8; 32],
        digest: [u8; 32],
        ok: bool,
    },
    MailFetched(Result<kith_mailbox::user::FetchOutcome, NetError>),
    Linked(Box<link::LinkDone>),
    Synced(Box<siblings::SyncDone>),
    SiblingsLocated(Result<Vec<kith_net::Device>, NetError>),
    SyncMailed {
        peer: PeerId,
        after: Option<kith_sync::VersionVector>,
    },
}

/// Payloads being gathered into one Olm message.
#[derive(Default)]
struct Bundle {
    payloads: Vec<Vec<u8>>,
    items: Vec<(Vec<u8>, OutboxItem)>,
    bytes: usize,
}

struct Friend {
    account: AccountPublicKey,
    key: Vec<u8>,
    conversation: [u8; 16],
    record: FriendRecord,
    devices: Vec<PeerId>,
    /// A presence lookup for their devices is under way.
    locating: bool,
}

struct Device {
    friend: [u8; 32],
    /// Its session prekeys: from the friend's card, or from its presence
    /// entry for a device learnt from the friend's device list.
    prekeys: Option<Prekeys>,
    addresses: Vec<Multiaddr>,
    sessions: Option<Vec<PairSession>>,
    in_flight: bool,
    next_attempt: Instant,
    backoff: Duration,
    /// Delivery requests to it that failed in a row; see
    /// [`FAILURES_BEFORE_MAIL`].
    failures: u32,
}

pub(super) struct Actor {
    store: Store,
    identity: Identity,
    profile: Option<(Profile, Option<Passphrase>)>,
    secrets: DeviceSecrets,
    pickle_key: Zeroizing<[u8; 32]>,
    presence: PresenceKeys,
    net: kith_net::Client,
    net_events: NetEvents,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<Event>,
    done_tx: mpsc::Sender<Done>,
    done_rx: mpsc::Receiver<Done>,
    friends: HashMap<[u8; 32], Friend>,
    devices: HashMap<PeerId, Device>,
    connected: HashSet<PeerId>,
    with_items: HashSet<[u8; 32]>,
    outbox_seq: u64,
    outbox_len: usize,
    display_name: String,
    request_poll: Duration,
    request_poll_expecting: Duration,
    expecting_requests_for: Duration,
    /// Requests are expected (polled for often) until then.
    expecting_until: Option<Instant>,
    message_ttl: Duration,
    retry_min: Duration,
    retry_max: Duration,
    next_poll: Instant,
    /// When the last poll started by the wall clock, which, unlike
    /// `Instant`, runs on while the computer sleeps: a poll is due at once
    /// after a long suspend.
    last_poll_wall: SystemTime,
    staged: Vec<Op>,
    turn_failed: bool,
    greeted: bool,
    account_changed: bool,
    turn_seen: HashSet<MessageId>,
    lamports: HashMap<[u8; 16], u64>,
    polling: bool,
    poll_retries: u32,
    poll_deferred: bool,
    poll_waiters: Vec<Reply<usize>>,
    dropping: HashSet<[u8; 32]>,
    drop_due: HashMap<[u8; 32], (Instant, Duration)>,
    waiters: Vec<Waiter>,
    stopping: Option<Reply<()>>,
    lost_events: u64,
    mailbox: MailboxSettings,
    /// The account key, shared with mail tasks (sealing, fetch proofs).
    account_key: std::sync::Arc<kith_proto::AccountKeypair>,
    volunteer: Option<kith_mailbox::service::VolunteerHandle>,
    /// Friends found unreachable, and when.
    offline: HashMap<[u8; 32], Instant>,
    depositing: HashSet<[u8; 32]>,
    /// Offline friends with new outbox items, and when to leave them as
    /// mail (a moment later, so a burst of sends makes one item).
    deposit_due: HashMap<[u8; 32], Instant>,
    /// Outbox keys already left as mail that stay in the outbox until
    /// delivered directly too: sealed acceptances, and items of a friend
    /// who came back online while their deposit ran. Not mailed again.
    mailed: HashSet<Vec<u8>>,
    deposit_retry: HashMap<[u8; 32], (Instant, Duration)>,
    requests_depositing: HashSet<[u8; 32]>,
    topping_up: bool,
    /// Where the next top-up round starts in the `deposits` tree.
    top_up_cursor: Option<Vec<u8>>,
    next_top_up: Instant,
    mail_fetching: bool,
    mail_fetch_deferred: bool,
    mail_fetch_retries: u32,
    next_mail_fetch: Instant,
    last_mail_fetch_wall: SystemTime,
    /// When a friend's device connecting last brought the mail fetch
    /// forward (`mail.rs`, `fetch_on_connect`).
    connect_fetch_at: Option<Instant>,
    /// The peers whose connections the network keeps open (friends'
    /// devices and our other devices), as last handed to it.
    kept_peers: HashSet<PeerId>,
    /// The last typing notice's send, which the next one waits for.
    typing_sent: Option<tokio::task::JoinHandle<()>>,
    /// A friend's or sibling device was added or removed since.
    keep_dirty: bool,
    /// The last hand-over, while it is under way (updates stay in order).
    keep_task: Option<tokio::task::JoinHandle<()>>,
    /// The volunteers that served the last fetch that looked them up, and
    /// when it did.
    mail_volunteers: Option<(Instant, Vec<kith_net::Peer>)>,
    /// The fetch under way asked remembered volunteers only.
    mail_fetch_remembered: bool,
    /// The next fetch looks the volunteers up (the user asked).
    mail_fetch_thorough: bool,
    /// The account's op log and its merged state (`sync.rs`).
    replica: kith_sync::Replica,
    /// The account's newest verified device list.
    device_list: Option<kith_proto::devices::SignedDeviceList>,
    /// The account's other devices (`siblings.rs`).
    siblings: HashMap<PeerId, siblings::Sibling>,
    sibling_lookup: bool,
    /// A device is being linked: no other change to the list meanwhile.
    linking: bool,
    /// Friends' devices sent our list because they did not know us
    /// (device, list sequence), so it is sent once.
    introduced: HashSet<(PeerId, u64)>,
    /// Shutting down once the parting mail to other devices is left.
    parting: Option<(Reply<()>, Instant)>,
}

fn now_secs() -> u64 {
    Timestamp::now().0 / 1000
}

fn store_error(e: impl std::fmt::Display) -> EngineError {
    EngineError::Store(e.to_string())
}

fn jitter(base: Duration) -> Duration {
    // Between half and all of `base`.
    let [a, b] = kith_proto::random_bytes::<2>();
    let fraction = f64::from(u16::from_le_bytes([a, b])) / f64::from(u16::MAX);
    base.mul_f64(0.5 + fraction / 2.0)
}

fn pickle_key(identity: &Identity) -> Zeroizing<[u8; 32]> {
    let mut hasher = Sha256::new();
    hasher.update(b"kith/pickle-key/v1");
    hasher.update(identity.account.secret_bytes().as_slice());
    let mut key = Zeroizing::new([0u8; 32]);
    key.copy_from_slice(&hasher.finalize());
    key
}

impl Actor {
    pub(super) fn new(
        config: Config,
        commands: mpsc::Receiver<Command>,
        events: mpsc::Sender<Event>,
    ) -> Result<Self, StartError> {
        let Config {
            identity,
            store,
            profile,
            mut net,
            display_name,
            request_poll,
            request_poll_expecting,
            expecting_requests_for,
            message_ttl,
            retry_min,
            retry_max,
            queue_capacity: _,
            mailbox,
            volunteer,
        } = config;
        let pickle_key = pickle_key(&identity);
        let identity_secret = identity.account.secret_bytes();
        let start_error = |e: &dyn std::fmt::Display| StartError::Store(e.to_string());
        let secrets = match store
            .get(DEVICE, OLM_ACCOUNT)
            .map_err(|e| start_error(&e))?
        {
            Some(bytes) => {
                let pickle = String::from_utf8(bytes).map_err(|e| start_error(&e))?;
                DeviceSecrets::from_pickle(&pickle, &pickle_key).map_err(|e| start_error(&e))?
            }
            None => {
                let secrets = DeviceSecrets::new();
                store
                    .apply_durable(vec![Op::put(
                        DEVICE,
                        OLM_ACCOUNT,
                        secrets.to_pickle(&pickle_key),
                    )])
                    .map_err(|e| start_error(&e))?;
                secrets
            }
        };
        let display_name = match records::get::<String>(&store, SETTINGS, DISPLAY_NAME)
            .map_err(|e| start_error(&e))?
        {
            Some(name) => name,
            None => display_name,
        };
        let presence = PresenceKeys::derive(&identity.account);
        net.presence = Some(PresenceKeys::derive(&identity.account));
        net.prekeys = secrets.prekeys().encode();
        net.mailbox_volunteer = volunteer.is_some();
        let local_device = sync::device_id(&identity.device.peer_id())
            .ok_or_else(|| StartError::Store("the device key is not an Ed25519 key".into()))?;
        let replica = sync::load_replica(&store, local_device).map_err(|e| start_error(&e))?;
        let (client, net_events, event_loop) = kith_net::new(net, None)?;
        tokio::spawn(event_loop.run());
        let volunteer = volunteer.map(|(volunteer, settings)| {
            kith_mailbox::service::start(client.clone(), volunteer, settings)
        });
        let (done_tx, done_rx) = mpsc::channel(DONE_CAPACITY);
        let mut actor = Self {
            store,
            identity,
            profile,
            secrets,
            pickle_key,
            presence,
            net: client,
            net_events: Box::pin(net_events),
            commands,
            events,
            done_tx,
            done_rx,
            friends: HashMap::new(),
            devices: HashMap::new(),
            connected: HashSet::new(),
            with_items: HashSet::new(),
            outbox_seq: 0,
            outbox_len: 0,
            display_name,
            request_poll,
            request_poll_expecting,
            expecting_requests_for,
            expecting_until: None,
            message_ttl,
            retry_min,
            retry_max,
            next_poll: Instant::now(),
            last_poll_wall: SystemTime::UNIX_EPOCH,
            staged: Vec::new(),
            turn_failed: false,
            greeted: false,
            account_changed: false,
            turn_seen: HashSet::new(),
            lamports: HashMap::new(),
            polling: false,
            poll_retries: 0,
            poll_deferred: false,
            poll_waiters: Vec::new(),
            dropping: HashSet::new(),
            drop_due: HashMap::new(),
            waiters: Vec::new(),
            stopping: None,
            lost_events: 0,
            next_top_up: Instant::now() + mailbox.top_up_every,
            account_key: std::sync::Arc::new(kith_proto::AccountKeypair::from_secret_bytes(
                &identity_secret,
            )),
            mailbox,
            volunteer,
            offline: HashMap::new(),
            depositing: HashSet::new(),
            deposit_due: HashMap::new(),
            mailed: HashSet::new(),
            deposit_retry: HashMap::new(),
            requests_depositing: HashSet::new(),
            topping_up: false,
            top_up_cursor: None,
            mail_fetching: false,
            mail_fetch_deferred: false,
            mail_fetch_retries: 0,
            next_mail_fetch: Instant::now(),
            last_mail_fetch_wall: SystemTime::UNIX_EPOCH,
            connect_fetch_at: None,
            kept_peers: HashSet::new(),
            typing_sent: None,
            keep_dirty: false,
            keep_task: None,
            mail_volunteers: None,
            mail_fetch_remembered: false,
            mail_fetch_thorough: false,
            replica,
            device_list: None,
            siblings: HashMap::new(),
            sibling_lookup: false,
            linking: false,
            introduced: HashSet::new(),
            parting: None,
        };
        actor.load().map_err(|e| start_error(&e))?;
        actor.ensure_device_list().map_err(|e| start_error(&e))?;
        actor.backfill_log().map_err(|e| start_error(&e))?;
        actor.take_inbox().map_err(|e| start_error(&e))?;
        actor.refresh_siblings();
        actor.device_list_changed();
        Ok(actor)
    }

    /// Reads friends and the outbox position from the store.
    fn load(&mut self) -> Result<(), EngineError> {
        for (_, record) in
            records::all::<FriendRecord>(&self.store, FRIENDS, MAX_FRIENDS).map_err(store_error)?
        {
            self.register_friend(record);
        }
        let items =
            records::all::<OutboxItem>(&self.store, OUTBOX, MAX_OUTBOX).map_err(store_error)?;
        self.outbox_len = items.len();
        for (_, item) in items {
            self.with_items.insert(item.friend);
        }
        // The next sequence number is above every friend's last item, even
        // if the outbox ever held more than the scan above reads.
        let friend_keys: Vec<Vec<u8>> = self.friends.values().map(|f| f.key.clone()).collect();
        for prefix in friend_keys {
            let mut end = prefix.clone();
            end.extend_from_slice(&[0xff; 8]);
            let last = self
                .store
                .range(
                    OUTBOX,
                    std::ops::Bound::Included(prefix.as_slice()),
                    std::ops::Bound::Included(end.as_slice()),
                    kith_store::Direction::Reverse,
                    1,
                )
                .map_err(store_error)?;
            for (key, _) in last {
                if let Some(seq) = key.get(16..24).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
                    self.outbox_seq = self
                        .outbox_seq
                        .max(u64::from_be_bytes(seq).saturating_add(1));
                }
            }
        }
        for (_, out) in
            records::all::<OutgoingRecord>(&self.store, REQUESTS_OUT, MAX_PENDING_REQUESTS)
                .map_err(store_error)?
        {
            if !out.dropped {
                self.drop_due.insert(
                    out.to.account().to_bytes(),
                    (Instant::now(), self.retry_min),
                );
            }
        }
        Ok(())
    }

    fn register_friend(&mut self, record: FriendRecord) {
        let account = *record.id.account();
        let key = records::friend_key(&self.store, &account);
        let conversation = History::new(&self.store).conversation(&account.to_bytes());
        let mut devices = Vec::new();
        for card in &record.card.devices {
            let (Ok(peer), Ok(prekeys)) = (
                PeerId::from_bytes(&card.peer_id),
                Prekeys::decode(&card.prekeys),
            ) else {
                continue;
            };
            // A card may not claim this device, or another friend's.
            if peer == self.net.peer_id()
                || self
                    .devices
                    .get(&peer)
                    .is_some_and(|d| d.friend != account.to_bytes())
            {
                continue;
            }
            devices.push(peer);
            self.keep_dirty = true;
            self.devices.insert(
                peer,
                Device {
                    friend: account.to_bytes(),
                    prekeys: Some(prekeys),
                    addresses: Vec::new(),
                    sessions: None,
                    in_flight: false,
                    next_attempt: Instant::now(),
                    backoff: self.retry_min,
                    failures: 0,
                },
            );
        }
        self.friends.insert(
            account.to_bytes(),
            Friend {
                account,
                key,
                conversation,
                record,
                devices,
                locating: false,
            },
        );
        // Their newest device list, if they sent one, decides which
        // devices are theirs.
        if let Ok(Some(bytes)) = self
            .store
            .get(FRIEND_LISTS, &records::friend_key(&self.store, &account))
            && let Ok(list) = kith_proto::devices::SignedDeviceList::decode(&bytes)
        {
            self.use_friend_list(&account, &list);
        }
    }

    fn emit(&mut self, event: Event) {
        if self.events.try_send(event).is_err() {
            self.lost_events += 1;
        }
    }

    fn my_id(&self) -> KithId {
        KithId::new(self.identity.account.public(), self.identity.nospam)
    }

    fn my_card(&self) -> ContactCard {
        ContactCard {
            presence: self.presence.share(),
            devices: vec![DeviceCard {
                peer_id: self.net.peer_id().to_bytes(),
                prekeys: self.secrets.prekeys().encode(),
            }],
        }
    }

    /// Applies `ops` now and runs `then` once they are durable (or with
    /// `false` if the flush failed).
    fn after_commit(&mut self, then: impl FnOnce(&mut Actor, bool) + Send + 'static) {
        self.waiters.push(Box::new(then));
    }

    /// Applies `ops` now (after anything staged, to keep the order).
    fn apply(&mut self, ops: Vec<Op>) -> Result<(), EngineError> {
        self.staged.extend(ops);
        self.apply_staged()
    }

    /// Queues `ops` to be applied, in one batch with the rest of the turn,
    /// before the turn's commit (or before anything else is applied).
    fn stage(&mut self, ops: Vec<Op>) {
        self.staged.extend(ops);
    }

    fn apply_staged(&mut self) -> Result<(), EngineError> {
        if self.staged.is_empty() {
            return Ok(());
        }
        let ops = std::mem::take(&mut self.staged);
        let applied = self.store.apply(ops).map_err(store_error);
        if applied.is_err() {
            // Whatever this turn wrote is not all there: nothing of it may
            // be acknowledged as durable.
            self.turn_failed = true;
        }
        applied
    }

    pub(super) async fn run(mut self) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                command = self.commands.recv() => match command {
                    Some(command) => self.on_command(command).await,
                    None => break,
                },
                Some(done) = self.done_rx.recv() => self.on_done(done),
                event = self.net_events.next() => match event {
                    Some(event) => self.on_net(event),
                    None => break,
                },
                _ = tick.tick() => self.on_tick(),
            }
            for _ in 0..TURN_BUDGET {
                if let Ok(command) = self.commands.try_recv() {
                    self.on_command(command).await;
                } else if let Some(Some(event)) = self.net_events.next().now_or_never() {
                    self.on_net(event);
                } else if let Ok(done) = self.done_rx.try_recv() {
                    self.on_done(done);
                } else {
                    break;
                }
            }
            // Outbox reads must see this turn's writes; the batches the
            // pump encrypts then join the turn's single flush, so a
            // ratchet step is on disk before its ciphertext leaves.
            if let Err(e) = self.apply_staged() {
                self.emit(Event::Problem(e.to_string()));
            }
            if self.stopping.is_none() {
                self.pump_all();
                self.pump_siblings();
            }
            self.commit();
            if self
                .parting
                .as_ref()
                .is_some_and(|(_, until)| self.parting_done() || Instant::now() >= *until)
                && let Some((reply, _)) = self.parting.take()
            {
                self.stopping = Some(reply);
                self.commit();
            }
            if let Some(reply) = self.stopping.take() {
                let _ = reply.send(Ok(()));
                break;
            }
        }
        let _ = self.store.flush();
    }

    fn commit(&mut self) {
        let applied = self.apply_staged();
        self.turn_seen.clear();
        if self.waiters.is_empty() {
            self.turn_failed = false;
            return;
        }
        let failed = std::mem::take(&mut self.turn_failed);
        let ok = applied.is_ok() && !failed && self.store.flush().is_ok();
        for waiter in std::mem::take(&mut self.waiters) {
            waiter(self, ok);
        }
    }

    fn reply_after_commit<T: Send + 'static>(&mut self, reply: Reply<T>, value: T) {
        self.after_commit(move |_, ok| {
            let _ = reply.send(if ok {
                Ok(value)
            } else {
                Err(EngineError::Store(
                    "the change could not be made durable".into(),
                ))
            });
        });
    }

    fn emit_after_commit(&mut self, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        self.after_commit(move |actor, ok| {
            if ok {
                for event in events {
                    actor.emit(event);
                }
            }
        });
    }

    // ----- commands -----

    async fn on_command(&mut self, command: Command) {
        match command {
            Command::Status(reply) => {
                let volunteering = match &self.volunteer {
                    Some(volunteer) => volunteer.usage().await,
                    None => None,
                };
                let listen = self.net.listen_addrs().await.unwrap_or_default();
                let connected = self
                    .net
                    .connected_peers()
                    .await
                    .map(|c| c.len())
                    .unwrap_or(0);
                let _ = reply.send(Ok(Status {
                    id: self.my_id(),
                    peer_id: self.net.peer_id(),
                    listen,
                    connected,
                    outbox: self.outbox_len,
                    volunteering,
                }));
            }
            Command::Add { id, message, reply } => match self.add(id, message) {
                Ok(()) => self.reply_after_commit(reply, ()),
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Command::Requests(reply) => {
                let _ = reply.send(self.requests());
            }
            Command::CheckRequests(reply) => {
                self.poll_waiters.push(reply);
                self.expect_requests();
                self.start_poll();
                self.mail_fetch_thorough = true;
                self.start_mail_fetch(Duration::ZERO);
            }
            Command::ExpectRequests(reply) => {
                self.expect_requests();
                let _ = reply.send(Ok(()));
            }
            Command::Accept { account, reply } => match self.accept(&account) {
                Ok(info) => self.reply_after_commit(reply, info),
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Command::Refuse {
                account,
                kind,
                reply,
            } => match self.refuse(&account, kind) {
                Ok(()) => self.reply_after_commit(reply, ()),
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Command::DeclineAll(reply) => match self.decline_all() {
                Ok(count) => self.reply_after_commit(reply, count),
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Command::Friends(reply) => {
                let _ = reply.send(self.friend_list());
            }
            Command::Resolve { query, reply } => {
                let _ = reply.send(self.resolve(&query));
            }
            Command::Send {
                friend,
                body,
                reply,
            } => match self.send(&friend, body) {
                Ok(id) => self.reply_after_commit(reply, id),
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Command::Edit {
                friend,
                target,
                body,
                reply,
            } => match self.change(&friend, target, Some(body)) {
                Ok(()) => self.reply_after_commit(reply, ()),
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Command::Delete {
                friend,
                target,
                reply,
            } => match self.change(&friend, target, None) {
                Ok(()) => self.reply_after_commit(reply, ()),
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Command::MarkRead { friend, reply } => match self.mark_read(&friend) {
                Ok(count) => self.reply_after_commit(reply, count),
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Command::Typing { friend, active } => self.send_typing(&friend, active),
            Command::History {
                friend,
                older,
                limit,
                reply,
            } => {
                let _ = reply.send(self.history(&friend, older, limit));
            }
            Command::LinkDevice { code, name, reply } => self.link_device(*code, name, reply),
            Command::RemoveDevice { query, reply } => match self.remove_device(&query) {
                Ok(info) => self.reply_after_commit(reply, info),
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Command::Devices(reply) => {
                let _ = reply.send(self.device_infos());
            }
            Command::RotateNospam(reply) => {
                let _ = reply.send(self.rotate_nospam());
            }
            Command::ChangePassphrase {
                current,
                new,
                reply,
            } => {
                let _ = reply.send(self.change_passphrase(current, new));
            }
            Command::SetName { name, reply } => match self.set_name(name) {
                Ok(()) => self.reply_after_commit(reply, ()),
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Command::Shutdown(reply) => {
                // Devices of the account that are not here get what they
                // lack as mail first (for a few seconds at most).
                if self.start_parting_mail() {
                    self.parting = Some((reply, Instant::now() + PARTING_LIMIT));
                } else {
                    self.stopping = Some(reply);
                }
            }
        }
    }

    fn friend(&self, account: &AccountPublicKey) -> Result<&Friend, EngineError> {
        self.friends
            .get(&account.to_bytes())
            .ok_or_else(|| EngineError::UnknownFriend(account.to_hex()))
    }

    fn add(&mut self, id: KithId, message: String) -> Result<(), EngineError> {
        let to = *id.account();
        if to == self.identity.account.public() {
            return Err(EngineError::OwnId);
        }
        if let Some(friend) = self.friends.get(&to.to_bytes()) {
            return Err(EngineError::AlreadyFriend(friend.record.name.clone()));
        }
        let key = records::friend_key(&self.store, &to);
        // They asked first: adding them is accepting.
        if self
            .store
            .get(REQUESTS_IN, &key)
            .map_err(store_error)?
            .is_some()
        {
            return self.accept(&to).map(|_| ());
        }
        let waiting =
            records::all::<OutgoingRecord>(&self.store, REQUESTS_OUT, MAX_PENDING_REQUESTS)
                .map_err(store_error)?;
        if waiting.len() >= MAX_PENDING_REQUESTS
            && self
                .store
                .get(REQUESTS_OUT, &key)
                .map_err(store_error)?
                .is_none()
        {
            return Err(EngineError::Full(format!(
                "{MAX_PENDING_REQUESTS} of your friend requests are still unanswered; wait for answers first"
            )));
        }
        let request = FriendRequest {
            from: self.my_id(),
            to_nospam: id.nospam(),
            display_name: self.display_name.clone(),
            message: message.clone(),
            sent_at: Timestamp::now(),
            card: self.my_card(),
        };
        let sent_at = request.sent_at;
        let sealed = self.seal_request(&to, request)?;
        let out = OutgoingRecord {
            to: id,
            message,
            sent_at,
            sealed,
            expires: now_secs() + DROP_TTL_SECS,
            dropped: false,
        };
        self.apply(vec![
            records::put(REQUESTS_OUT, key.clone(), &out),
            records::delete(REFUSED, key),
        ])?;
        self.drop_due
            .insert(to.to_bytes(), (Instant::now(), self.retry_min));
        Ok(())
    }

    fn seal_request(
        &self,
        to: &AccountPublicKey,
        request: FriendRequest,
    ) -> Result<Vec<u8>, EngineError> {
        let payload = Payload::FriendRequest(Box::new(request))
            .encode()
            .map_err(|e| EngineError::Invalid(e.to_string()))?;
        let sealed = envelope::seal(&self.identity.account, to, &payload)
            .map_err(|e| EngineError::Invalid(e.to_string()))?;
        if sealed.len() > kith_proto::request_drop::MAX_DROP_ENTRY_BYTES {
            return Err(EngineError::Invalid(format!(
                "the request is {} bytes; shorten the message (the limit is {} bytes)",
                sealed.len(),
                kith_proto::request_drop::MAX_DROP_ENTRY_BYTES
            )));
        }
        Ok(sealed)
    }

    fn requests(&self) -> Result<(Vec<RequestInfo>, Vec<OutgoingInfo>), EngineError> {
        let incoming =
            records::all::<IncomingRecord>(&self.store, REQUESTS_IN, MAX_PENDING_REQUESTS)
                .map_err(store_error)?
                .into_iter()
                .map(|(_, r)| request_info(&r))
                .collect();
        let outgoing =
            records::all::<OutgoingRecord>(&self.store, REQUESTS_OUT, MAX_PENDING_REQUESTS)
                .map_err(store_error)?
                .into_iter()
                .map(|(_, r)| OutgoingInfo {
                    id: r.to,
                    sent_at: r.sent_at,
                    dropped: r.dropped,
                })
                .collect();
        Ok((incoming, outgoing))
    }

    fn accept(&mut self, account: &AccountPublicKey) -> Result<FriendInfo, EngineError> {
        let key = records::friend_key(&self.store, account);
        let incoming: IncomingRecord = records::get(&self.store, REQUESTS_IN, &key)
            .map_err(store_error)?
            .ok_or_else(|| EngineError::NoRequest(account.to_hex()))?;
        if self.friends.len() >= MAX_FRIENDS {
            return Err(EngineError::Full(format!(
                "you have {MAX_FRIENDS} friends, the most Kith keeps"
            )));
        }
        let request = incoming.request;
        let record = FriendRecord {
            id: request.from,
            name: request.display_name.clone(),
            card: request.card.clone(),
            added_at: Timestamp::now(),
        };
        let answer = Payload::FriendAccept(Box::new(FriendAccept {
            display_name: self.display_name.clone(),
            sent_at: Timestamp::now(),
            card: self.my_card(),
        }))
        .encode()
        .map_err(|e| EngineError::Invalid(e.to_string()))?;
        let sealed = envelope::seal(&self.identity.account, account, &answer)
            .map_err(|e| EngineError::Invalid(e.to_string()))?;
        let mut ops = vec![
            records::put(FRIENDS, key.clone(), &record),
            records::delete(REQUESTS_IN, key.clone()),
            records::delete(REQUESTS_OUT, key.clone()),
            records::delete(REQUEST_ITEMS, key.clone()),
            records::delete(REFUSED, key.clone()),
        ];
        ops.extend(self.record_contact(&record));
        ops.extend(self.record(kith_sync::OpKind::RequestDecided {
            from: account.to_bytes(),
            decision: kith_sync::Decision::Accepted,
        }));
        self.register_friend(record);
        ops.push(self.queue_op(account, None, OutboxBody::Sealed(sealed)));
        ops.extend(self.list_for_new_friend(account));
        self.apply(ops)?;
        self.drop_due.remove(&account.to_bytes());
        let info = self.friend_info(account)?;
        self.emit_after_commit(vec![Event::FriendAdded(info.clone())]);
        Ok(info)
    }

    fn refuse(&mut self, account: &AccountPublicKey, kind: RefusalKind) -> Result<(), EngineError> {
        let key = records::friend_key(&self.store, account);
        let had_request = self
            .store
            .get(REQUESTS_IN, &key)
            .map_err(store_error)?
            .is_some();
        if kind == RefusalKind::Declined && !had_request {
            return Err(EngineError::NoRequest(account.to_hex()));
        }
        let mut ops = Vec::new();
        self.refusal_ops(account, key, kind, &mut ops)?;
        self.apply(ops)
    }

    /// Declines every waiting request at once (after a flood of requests,
    /// say); returns how many.
    fn decline_all(&mut self) -> Result<usize, EngineError> {
        let waiting =
            records::all::<IncomingRecord>(&self.store, REQUESTS_IN, MAX_PENDING_REQUESTS)
                .map_err(store_error)?;
        let mut ops = Vec::new();
        for (key, record) in &waiting {
            let account = *record.request.from.account();
            self.refusal_ops(&account, key.clone(), RefusalKind::Declined, &mut ops)?;
        }
        self.apply(ops)?;
        Ok(waiting.len())
    }

    fn refusal_ops(
        &mut self,
        account: &AccountPublicKey,
        key: Vec<u8>,
        kind: RefusalKind,
        ops: &mut Vec<Op>,
    ) -> Result<(), EngineError> {
        ops.extend([
            records::delete(REQUESTS_IN, key.clone()),
            records::put(
                REFUSED,
                key.clone(),
                &RefusedRecord {
                    account: account.to_bytes(),
                    kind,
                    at: Timestamp::now(),
                },
            ),
        ]);
        ops.extend(self.record(kith_sync::OpKind::RequestDecided {
            from: account.to_bytes(),
            decision: match kind {
                RefusalKind::Declined => kith_sync::Decision::Declined,
                RefusalKind::Blocked => kith_sync::Decision::Blocked,
            },
        }));
        if kind == RefusalKind::Blocked && self.friends.contains_key(&account.to_bytes()) {
            ops.extend(self.record(kith_sync::OpKind::ContactRemoved {
                friend: account.to_bytes(),
            }));
        }
        if kind == RefusalKind::Blocked {
            self.forget_friend(account, ops)?;
        }
        Ok(())
    }

    /// Whether a device of `friend`'s is connected (how the user sees them
    /// online).
    fn online(&self, friend: &Friend) -> bool {
        friend.devices.iter().any(|p| self.connected.contains(p))
    }

    fn friend_info(&self, account: &AccountPublicKey) -> Result<FriendInfo, EngineError> {
        let friend = self.friend(account)?;
        let unread = records::prefixed::<()>(&self.store, UNREAD, &friend.conversation, MAX_OUTBOX)
            .map_err(store_error)?
            .len();
        let queued = records::prefixed::<OutboxItem>(&self.store, OUTBOX, &friend.key, MAX_OUTBOX)
            .map_err(store_error)?
            .iter()
            .filter(|(_, item)| item.message.is_some())
            .count();
        Ok(FriendInfo {
            account: friend.account,
            id: friend.record.id,
            name: friend.record.name.clone(),
            online: self.online(friend),
            unread,
            queued,
        })
    }

    fn friend_list(&self) -> Result<Vec<FriendInfo>, EngineError> {
        let mut list = self
            .friends
            .values()
            .map(|f| self.friend_info(&f.account))
            .collect::<Result<Vec<_>, _>>()?;
        list.sort_by_key(|a| a.name.to_lowercase());
        Ok(list)
    }

    fn resolve(&self, query: &str) -> Result<AccountPublicKey, EngineError> {
        let wanted = query.trim().to_lowercase();
        if wanted.is_empty() {
            return Err(EngineError::UnknownFriend(query.into()));
        }
        if let Ok(id) = KithId::parse(query.trim()) {
            return Ok(*id.account());
        }
        let friends: Vec<(AccountPublicKey, String, KithId)> = self
            .friends
            .values()
            .map(|f| (f.account, f.record.name.clone(), f.record.id))
            .collect();
        let requests: Vec<(AccountPublicKey, String, KithId)> =
            records::all::<IncomingRecord>(&self.store, REQUESTS_IN, MAX_PENDING_REQUESTS)
                .unwrap_or_default()
                .into_iter()
                .map(|(_, r)| {
                    (
                        *r.request.from.account(),
                        r.request.display_name.clone(),
                        r.request.from,
                    )
                })
                .collect();
        // Friends first: a stranger's request cannot take a friend's name.
        match resolve_among(&friends, &wanted, query) {
            Err(EngineError::UnknownFriend(_)) => resolve_among(&requests, &wanted, query),
            found => found,
        }
    }

    /// The op that queues `body` for `friend`.
    fn queue_op(
        &mut self,
        friend: &AccountPublicKey,
        message: Option<MessageId>,
        body: OutboxBody,
    ) -> Op {
        let key = records::friend_key(&self.store, friend);
        let seq = self.outbox_seq;
        self.outbox_seq += 1;
        self.outbox_len += 1;
        self.with_items.insert(friend.to_bytes());
        let now = Timestamp::now();
        let ttl = u64::try_from(self.message_ttl.as_millis()).unwrap_or(u64::MAX);
        records::put(
            OUTBOX,
            records::outbox_key(&key, seq),
            &OutboxItem {
                friend: friend.to_bytes(),
                message,
                body,
                created: now,
                expires: Timestamp(now.0.saturating_add(ttl)),
            },
        )
    }

    /// The highest Lamport counter of a conversation, cached.
    fn last_lamport(&mut self, conversation: &[u8; 16]) -> Result<u64, EngineError> {
        if let Some(last) = self.lamports.get(conversation) {
            return Ok(*last);
        }
        self.apply_staged()?;
        let last = History::new(&self.store)
            .last_lamport(conversation)
            .map_err(store_error)?
            .0;
        self.lamports.insert(*conversation, last);
        Ok(last)
    }

    fn check_outbox_room(&self) -> Result<(), EngineError> {
        if self.outbox_len >= MAX_OUTBOX {
            return Err(EngineError::Full(format!(
                "{MAX_OUTBOX} items are waiting to be delivered; wait for some to go out"
            )));
        }
        Ok(())
    }

    fn send(&mut self, friend: &AccountPublicKey, body: String) -> Result<MessageId, EngineError> {
        self.check_outbox_room()?;
        let conversation = self.friend(friend)?.conversation;
        let lamport = Lamport(self.last_lamport(&conversation)?.saturating_add(1));
        self.lamports.insert(conversation, lamport.0);
        let history = History::new(&self.store);
        let message = ChatMessage {
            id: MessageId::random(),
            sent_at: Timestamp::now(),
            lamport,
            body,
        };
        let payload = Payload::Chat(message.clone());
        payload
            .encode()
            .map_err(|e| EngineError::Invalid(e.to_string()))?;
        let stored = StoredMessage {
            message: message.clone(),
            author: Author::Me,
            stored_at: Timestamp::now(),
        };
        // No state record yet means "queued" (one write less per message).
        let (_, mut ops) = history
            .insert_ops(&conversation, stored)
            .map_err(store_error)?;
        ops.extend(self.record(kith_sync::OpKind::MessageSent {
            friend: friend.to_bytes(),
            message: message.clone(),
        }));
        ops.push(self.queue_op(friend, Some(message.id), OutboxBody::Payload(payload)));
        self.stage(ops);
        let view = MessageView {
            id: message.id,
            author: Author::Me,
            sent_at: message.sent_at,
            lamport: message.lamport,
            body: message.body,
            edited: false,
            deleted: false,
            state: Some(MessageState::Queued),
            witness: None,
        };
        self.emit_after_commit(vec![Event::Message {
            friend: *friend,
            message: view,
        }]);
        Ok(message.id)
    }

    fn change(
        &mut self,
        friend: &AccountPublicKey,
        target: MessageId,
        body: Option<String>,
    ) -> Result<(), EngineError> {
        self.check_outbox_room()?;
        let conversation = self.friend(friend)?.conversation;
        self.apply_staged()?;
        let original = History::new(&self.store)
            .get(&conversation, target)
            .map_err(store_error)?
            .filter(|m| m.author == Author::Me)
            .ok_or(EngineError::NotYours(target))?;
        let at = Timestamp::now();
        let payload = match &body {
            Some(body) => Payload::Edit(Edit {
                id: MessageId::random(),
                target,
                sent_at: at,
                body: body.clone(),
            }),
            None => Payload::Delete(Delete {
                id: MessageId::random(),
                target,
                sent_at: at,
            }),
        };
        payload
            .encode()
            .map_err(|e| EngineError::Invalid(e.to_string()))?;
        let kind = match &body {
            Some(body) => kith_sync::OpKind::Edited {
                friend: friend.to_bytes(),
                target,
                body: body.clone(),
                at,
            },
            None => kith_sync::OpKind::Deleted {
                friend: friend.to_bytes(),
                target,
                at,
            },
        };
        let record = EditRecord {
            deleted: body.is_none(),
            body,
            at,
        };
        let mut ops = vec![
            records::put(EDITS, records::message_key(&conversation, &target), &record),
            self.queue_op(friend, None, OutboxBody::Payload(payload)),
        ];
        ops.extend(self.record(kind));
        self.apply(ops)?;
        let view = self.view(&conversation, original)?;
        self.emit_after_commit(vec![Event::Changed {
            friend: *friend,
            message: view,
        }]);
        Ok(())
    }

    fn mark_read(&mut self, friend: &AccountPublicKey) -> Result<usize, EngineError> {
        let conversation = self.friend(friend)?.conversation;
        let unread = records::prefixed::<()>(&self.store, UNREAD, &conversation, MAX_OUTBOX)
            .map_err(store_error)?;
        let count = unread.len();
        let mut ops = Vec::new();
        let mut ids = Vec::new();
        for (key, ()) in unread {
            if let Some(id) = key.get(16..32).and_then(|b| <[u8; 16]>::try_from(b).ok()) {
                ids.push(MessageId(id));
            }
            ops.push(records::delete(UNREAD, key));
        }
        // The marker is the newest message the user has just read, not
        // the newest in the conversation: a friend's message sent before
        // it reached them may sort before this account's latest one, and
        // must stay unread on the other devices as it does here.
        let history = History::new(&self.store);
        let newest_read = ids
            .iter()
            .filter_map(|id| history.get(&conversation, *id).ok().flatten())
            .map(|stored| kith_sync::Position::of(&stored.message))
            .max();
        if let Some(upto) = newest_read {
            ops.extend(self.record(kith_sync::OpKind::ReadUpTo {
                friend: friend.to_bytes(),
                upto,
            }));
        }
        let at = Timestamp::now();
        for chunk in ids.chunks(MAX_RECEIPT_IDS) {
            let receipt = Payload::Receipt(Receipt {
                kind: ReceiptKind::Read,
                ids: chunk.to_vec(),
                at,
            });
            ops.push(self.queue_op(friend, None, OutboxBody::Payload(receipt)));
        }
        self.apply(ops)?;
        Ok(count)
    }

    fn send_typing(&mut self, friend: &AccountPublicKey, active: bool) {
        let Ok(friend) = self.friend(friend) else {
            return;
        };
        let Some(peer) = friend
            .devices
            .iter()
            .copied()
            .find(|p| self.connected.contains(p))
        else {
            return;
        };
        let Ok(plain) = Payload::Typing(Typing { active }).encode() else {
            return;
        };
        let Ok(olm) = self.encrypt_for(&peer, &frame::encode_bundle(&[plain])) else {
            return;
        };
        // Like any ciphertext, it leaves only once the ratchet step is on
        // disk (after the turn's flush).
        let op = self.sessions_op(&peer);
        self.stage(op.into_iter().collect());
        let request = frame::encode_request(&[Item::Olm(olm)]);
        self.after_commit(move |actor, ok| {
            if ok {
                // One after the other: "stopped typing" must not overtake
                // the "typing" sent a moment before it.
                let net = actor.net.clone();
                let before = actor.typing_sent.take();
                actor.typing_sent = Some(tokio::spawn(async move {
                    if let Some(before) = before {
                        let _ = before.await;
                    }
                    let _ = net.request(peer, Vec::new(), request).await;
                }));
            }
        });
    }

    fn view(
        &self,
        conversation: &[u8; 16],
        stored: StoredMessage,
    ) -> Result<MessageView, EngineError> {
        let key = records::message_key(conversation, &stored.message.id);
        let edit: Option<EditRecord> =
            records::get(&self.store, EDITS, &key).map_err(store_error)?;
        let (state, witness) = match stored.author {
            Author::Me => (
                Some(
                    records::get(&self.store, STATES, &key)
                        .map_err(store_error)?
                        .unwrap_or(MessageState::Queued),
                ),
                None,
            ),
            Author::Friend => (
                None,
                records::get::<Witness>(&self.store, WITNESS, &key).map_err(store_error)?,
            ),
        };
        let (body, edited, deleted) = match edit {
            Some(EditRecord { deleted: true, .. }) => (String::new(), false, true),
            Some(EditRecord {
                body: Some(body), ..
            }) => (body, true, false),
            _ => (stored.message.body, false, false),
        };
        Ok(MessageView {
            id: stored.message.id,
            author: stored.author,
            sent_at: stored.message.sent_at,
            lamport: stored.message.lamport,
            body,
            edited,
            deleted,
            state,
            witness,
        })
    }

    fn history(
        &self,
        friend: &AccountPublicKey,
        older: Option<crate::history::Cursor>,
        limit: usize,
    ) -> Result<HistoryPage, EngineError> {
        let conversation = self.friend(friend)?.conversation;
        let page = History::new(&self.store)
            .page(&conversation, older.as_ref(), limit)
            .map_err(store_error)?;
        let messages = page
            .messages
            .into_iter()
            .map(|m| self.view(&conversation, m))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(HistoryPage {
            messages,
            older: page.older,
        })
    }

    fn change_passphrase(
        &mut self,
        current: Option<Passphrase>,
        new: Option<Passphrase>,
    ) -> Result<(), EngineError> {
        let Some((profile, _)) = &self.profile else {
            return Err(EngineError::Invalid(
                "this engine keeps no profile files to lock".into(),
            ));
        };
        let profile = profile.clone();
        match profile.load_identity(current.as_ref()) {
            Ok(_) => {}
            Err(ProfileError::WrongPassphrase { .. } | ProfileError::Locked { .. }) => {
                return Err(EngineError::Invalid(
                    "the current passphrase is not right; nothing was changed".into(),
                ));
            }
            Err(e) => return Err(store_error(e)),
        }
        let lock = new.as_ref().map(|p| (p, KdfParams::INTERACTIVE));
        profile
            .stage_identity(&self.identity, lock)
            .map_err(store_error)?;
        if let Err(e) = self
            .store
            .set_passphrase(new.as_ref(), KdfParams::INTERACTIVE)
        {
            let _ = profile.discard_staged();
            return Err(EngineError::Store(format!("{e}; nothing was changed")));
        }
        if let Err(e) = profile.commit_staged() {
            return Err(EngineError::Store(format!(
                "the database has the new passphrase but the identity file not yet ({e}); unlocking with the new passphrase finishes the change"
            )));
        }
        self.profile = Some((profile, new));
        Ok(())
    }

    fn rotate_nospam(&mut self) -> Result<KithId, EngineError> {
        let previous = self.identity.nospam;
        self.identity.nospam = Nospam::random();
        if let Some((profile, passphrase)) = &self.profile {
            let lock = passphrase.as_ref().map(|p| (p, KdfParams::INTERACTIVE));
            if let Err(e) = profile.replace_identity(&self.identity, lock) {
                self.identity.nospam = previous;
                return Err(store_error(e));
            }
        }
        let ops = self.record(kith_sync::OpKind::Nospam(self.identity.nospam));
        self.apply(ops)?;
        Ok(self.my_id())
    }

    fn set_name(&mut self, name: String) -> Result<(), EngineError> {
        let probe = FriendAccept {
            display_name: name.clone(),
            sent_at: Timestamp(0),
            card: self.my_card(),
        };
        probe
            .validate()
            .map_err(|e| EngineError::Invalid(e.to_string()))?;
        let mut ops = vec![records::put(SETTINGS, DISPLAY_NAME, &name)];
        ops.extend(self.record(kith_sync::OpKind::ProfileName(name.clone())));
        self.apply(ops)?;
        self.display_name = name;
        Ok(())
    }

    // ----- sessions -----

    fn load_sessions(&mut self, peer: &PeerId) -> Result<&mut Vec<PairSession>, EngineError> {
        let key = self.pickle_key.clone();
        let stored: Option<SessionsRecord> = match self.devices.get(peer) {
            Some(Device { sessions: None, .. }) => {
                records::get(&self.store, SESSIONS, &peer.to_bytes()).map_err(store_error)?
            }
            _ => None,
        };
        let device = self
            .devices
            .get_mut(peer)
            .ok_or_else(|| EngineError::UnknownFriend(peer.to_string()))?;
        if device.sessions.is_none() {
            let sessions = stored
                .map(|r| {
                    r.pickles
                        .iter()
                        .filter_map(|p| PairSession::from_pickle(p, &key).ok())
                        .collect()
                })
                .unwrap_or_default();
            device.sessions = Some(sessions);
        }
        Ok(device.sessions.get_or_insert_with(Vec::new))
    }

    fn sessions_op(&self, peer: &PeerId) -> Option<Op> {
        let sessions = self.devices.get(peer)?.sessions.as_ref()?;
        let record = SessionsRecord {
            pickles: sessions
                .iter()
                .map(|s| s.to_pickle(&self.pickle_key))
                .collect(),
        };
        Some(records::put(SESSIONS, peer.to_bytes(), &record))
    }

    fn encrypt_for(&mut self, peer: &PeerId, plain: &[u8]) -> Result<Vec<u8>, EngineError> {
        let prekeys = self
            .devices
            .get(peer)
            .ok_or_else(|| EngineError::UnknownFriend(peer.to_string()))?
            .prekeys
            .ok_or_else(|| EngineError::Net("the device's keys are not known yet".into()))?;
        if self.load_sessions(peer)?.is_empty() {
            let session = self
                .secrets
                .start_session(&prekeys)
                .map_err(|e| EngineError::Net(e.to_string()))?;
            self.load_sessions(peer)?.push(session);
        }
        let sessions = self.load_sessions(peer)?;
        let session = sessions
            .first_mut()
            .ok_or_else(|| EngineError::Net("no session".into()))?;
        session
            .encrypt(plain)
            .map_err(|e| EngineError::Net(e.to_string()))
    }

    /// Decrypts an Olm message from `peer` with the session it belongs to,
    /// starting an inbound session for a new first message.
    fn decrypt_from(
        &mut self,
        peer: &PeerId,
        message: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, Refusal> {
        let identity = match self.devices.get(peer) {
            None => return Err(Refusal::UnknownDevice),
            // A device from the friend's list whose keys are not known
            // yet: look them up; the sender retries.
            Some(Device {
                prekeys: None,
                friend,
                ..
            }) => {
                let friend = *friend;
                self.locate_friend(friend);
                return Err(Refusal::Busy);
            }
            Some(Device {
                prekeys: Some(prekeys),
                ..
            }) => prekeys.identity,
        };
        let sessions = self.load_sessions(peer).map_err(|_| Refusal::Busy)?;
        let owner = sessions.iter().position(|s| s.owns(message));
        let order: Vec<usize> = match owner {
            Some(i) => vec![i],
            None => (0..sessions.len()).collect(),
        };
        for i in order {
            if let Ok(plain) = sessions[i].decrypt(message) {
                let session = sessions.remove(i);
                sessions.insert(0, session);
                return Ok(plain);
            }
        }
        if owner.is_some() {
            return Err(Refusal::Unreadable);
        }
        match self.secrets.accept_session(&identity, message) {
            Ok((session, plain)) => {
                self.account_changed = true;
                let sessions = self.load_sessions(peer).map_err(|_| Refusal::Busy)?;
                sessions.insert(0, session);
                sessions.truncate(MAX_SESSIONS);
                Ok(plain)
            }
            Err(_) => Err(Refusal::NoSession),
        }
    }

    // ----- inbound -----

    fn on_net(&mut self, event: kith_net::Event) {
        match event {
            kith_net::Event::Request(request) => self.on_request(request),
            kith_net::Event::MailboxRequest(request) => {
                // Without a volunteer the protocol is not even offered;
                // with one, a full queue drops the request (the sender
                // retries elsewhere).
                if let Some(volunteer) = &self.volunteer {
                    volunteer.offer(request);
                }
            }
            kith_net::Event::Connected { peer, .. } => {
                let newly = self.connected.insert(peer);
                if std::mem::take(&mut self.poll_deferred) {
                    // Give Identify a moment to fill the routing table.
                    self.spawn_fetch(POLL_RETRY_DELAY);
                }
                if std::mem::take(&mut self.mail_fetch_deferred) {
                    // Tried at once; while the routing table is still
                    // empty the fetch finds nobody and is retried shortly.
                    self.start_mail_fetch(Duration::ZERO);
                }
                if !std::mem::replace(&mut self.greeted, true) {
                    self.greet_friends();
                }
                if newly {
                    self.sibling_connected(&peer);
                }
                if let Some(device) = self.devices.get_mut(&peer) {
                    tracing::debug!(%peer, newly, "a friend's device is connected");
                    device.next_attempt = Instant::now();
                    device.backoff = self.retry_min;
                    let friend = device.friend;
                    self.friend_reachable(&friend);
                    if newly {
                        self.presence_changed(&friend, &peer, true);
                        self.fetch_on_connect();
                    }
                }
            }
            kith_net::Event::Disconnected { peer } => {
                self.connected.remove(&peer);
                if let Some(friend) = self.devices.get(&peer).map(|d| d.friend) {
                    tracing::debug!(%peer, "a friend's device is disconnected");
                    self.presence_changed(&friend, &peer, false);
                }
            }
            _ => {}
        }
    }

    /// Once on the network, connects to every friend's devices that can be
    /// found: a friend holding messages for us sees the connection and
    /// delivers at once instead of waiting out its retry delay.
    fn greet_friends(&self) {
        let shares: Vec<_> = self
            .friends
            .values()
            .map(|f| f.record.card.presence.clone())
            .collect();
        if shares.is_empty() {
            return;
        }
        let net = self.net.clone();
        tokio::spawn(async move {
            // Give Identify a moment to fill the routing table.
            tokio::time::sleep(POLL_RETRY_DELAY).await;
            for share in shares {
                let _ = net.connect_friend(&share).await;
            }
        });
    }

    fn presence_changed(&mut self, friend: &[u8; 32], peer: &PeerId, online: bool) {
        let Some(f) = self.friends.get(friend) else {
            return;
        };
        let others = f
            .devices
            .iter()
            .any(|p| p != peer && self.connected.contains(p));
        if !others {
            let account = f.account;
            self.emit(Event::Presence {
                friend: account,
                online,
            });
        }
    }

    fn on_request(&mut self, request: InboundRequest) {
        if frame::is_sync_frame(&request.data) {
            self.on_sync_request(request);
            return;
        }
        let Ok(items) = frame::decode_request(&request.data) else {
            // Not a Kith frame: no answer, the sender's request fails.
            return;
        };
        let peer = request.peer;
        let mut ops = Vec::new();
        let mut events = Vec::new();
        let mut acks = Vec::with_capacity(items.len());
        let mut seen = std::mem::take(&mut self.turn_seen);
        let mut olm_used = false;
        for item in items {
            let ack = match item {
                Item::Olm(bytes) => {
                    olm_used = true;
                    self.receive_olm(&peer, &bytes, &mut seen, &mut ops, &mut events)
                }
                Item::Sealed(bytes) => self.receive_sealed(&peer, &bytes, &mut ops, &mut events),
            };
            acks.push(ack);
        }
        self.turn_seen = seen;
        tracing::debug!(%peer, ?acks, "answering a delivery");
        // Only a friend's device has sessions to keep; the account changes
        // only when a new inbound session was accepted.
        if olm_used {
            ops.extend(self.sessions_op(&peer));
        }
        if std::mem::take(&mut self.account_changed) {
            ops.push(Op::put(
                DEVICE,
                OLM_ACCOUNT,
                self.secrets.to_pickle(&self.pickle_key),
            ));
        }
        self.stage(ops);
        let response = frame::encode_response(&acks);
        self.after_commit(move |actor, ok| {
            if ok {
                request.respond(response);
                for event in events {
                    actor.emit(event);
                }
            }
        });
    }

    fn receive_sealed(
        &mut self,
        peer: &PeerId,
        bytes: &[u8],
        ops: &mut Vec<Op>,
        events: &mut Vec<Event>,
    ) -> Ack {
        let Ok(opened) = envelope::open(&self.identity.account, bytes) else {
            return Ack::Refused(Refusal::Unreadable);
        };
        self.take_sealed(&opened.sender, &opened.payload, Some(peer), ops, events)
    }

    /// What a sealed envelope from `sender` carried, directly from the
    /// device `via` or as mail (`None`): a friend acceptance, or a friend's
    /// device list (a device of theirs we did not know introducing itself,
    /// `fanout.rs`).
    fn take_sealed(
        &mut self,
        sender: &AccountPublicKey,
        payload: &[u8],
        via: Option<&PeerId>,
        ops: &mut Vec<Op>,
        events: &mut Vec<Event>,
    ) -> Ack {
        match Payload::decode(payload) {
            Ok(Payload::FriendAccept(accept)) => {
                self.take_accept(sender, &accept, via, ops, events)
            }
            Ok(Payload::Devices(list)) if self.friends.contains_key(&sender.to_bytes()) => {
                self.take_friend_list(sender, &list, ops);
                Ack::Stored
            }
            _ => Ack::Refused(Refusal::Unreadable),
        }
    }

    /// Takes a friend acceptance from `sender`, which came from the device
    /// `via` (directly) or as mail (`None`: the envelope's signature
    /// vouches for the account, and no device is involved).
    fn take_accept(
        &mut self,
        sender: &AccountPublicKey,
        accept: &FriendAccept,
        via: Option<&PeerId>,
        ops: &mut Vec<Op>,
        events: &mut Vec<Event>,
    ) -> Ack {
        let sender = *sender;
        if self.friends.contains_key(&sender.to_bytes()) {
            return Ack::Stored;
        }
        let key = records::friend_key(&self.store, &sender);
        let Ok(Some(out)) = records::get::<OutgoingRecord>(&self.store, REQUESTS_OUT, &key) else {
            return Ack::Refused(Refusal::NotFriend);
        };
        if let Some(peer) = via
            && !accept
                .card
                .devices
                .iter()
                .any(|d| d.peer_id == peer.to_bytes())
        {
            return Ack::Refused(Refusal::UnknownDevice);
        }
        let record = FriendRecord {
            id: out.to,
            name: accept.display_name.clone(),
            card: accept.card.clone(),
            added_at: Timestamp::now(),
        };
        ops.push(records::put(FRIENDS, key.clone(), &record));
        ops.push(records::delete(REQUEST_ITEMS, key.clone()));
        ops.push(records::delete(REQUESTS_OUT, key));
        ops.extend(self.record_contact(&record));
        self.register_friend(record);
        ops.extend(self.list_for_new_friend(&sender));
        self.drop_due.remove(&sender.to_bytes());
        if let Some(peer) = via {
            self.connected_device(peer);
        }
        if let Ok(info) = self.friend_info(&sender) {
            events.push(Event::FriendAdded(info));
        }
        Ack::Stored
    }

    fn connected_device(&mut self, peer: &PeerId) {
        if let Some(device) = self.devices.get_mut(peer) {
            device.next_attempt = Instant::now();
        }
    }

    fn receive_olm(
        &mut self,
        peer: &PeerId,
        bytes: &[u8],
        seen: &mut HashSet<MessageId>,
        ops: &mut Vec<Op>,
        events: &mut Vec<Event>,
    ) -> Ack {
        let Some(friend_bytes) = self.devices.get(peer).map(|d| d.friend) else {
            return Ack::Refused(Refusal::UnknownDevice);
        };
        let Some((account, conversation)) = self
            .friends
            .get(&friend_bytes)
            .map(|f| (f.account, f.conversation))
        else {
            return Ack::Refused(Refusal::NotFriend);
        };
        let plain = match self.decrypt_from(peer, bytes) {
            Ok(plain) => plain,
            Err(refusal) => return Ack::Refused(refusal),
        };
        let Ok(payloads) = frame::decode_bundle(&plain) else {
            return Ack::Refused(Refusal::Unreadable);
        };
        for bytes in payloads {
            match Payload::decode(&bytes) {
                Ok(payload) => {
                    // An edit, deletion or receipt must see the writes of
                    // the payloads before it (a message it refers to may be
                    // in this very bundle); chat messages need not, so a
                    // flood of them stays one batch. The flush still waits
                    // for the turn.
                    if !matches!(payload, Payload::Chat(_) | Payload::Typing(_)) && !ops.is_empty()
                    {
                        self.staged.append(ops);
                        if self.apply_staged().is_err() {
                            return Ack::Refused(Refusal::Busy);
                        }
                    }
                    if let Err(refusal) =
                        self.receive_payload(&account, &conversation, payload, seen, ops, events)
                    {
                        return Ack::Refused(refusal);
                    }
                }
                // One bad payload in a friend's authenticated bundle is
                // dropped alone; the rest still counts.
                Err(e) => events.push(Event::Problem(format!(
                    "a friend's device sent something unreadable: {e}"
                ))),
            }
        }
        Ack::Stored
    }

    fn receive_payload(
        &mut self,
        account: &AccountPublicKey,
        conversation: &[u8; 16],
        payload: Payload,
        seen: &mut HashSet<MessageId>,
        ops: &mut Vec<Op>,
        events: &mut Vec<Event>,
    ) -> Result<(), Refusal> {
        let (account, conversation) = (*account, *conversation);
        let history = History::new(&self.store);
        match payload {
            Payload::Chat(message) => {
                if !seen.insert(message.id) {
                    return Ok(());
                }
                let stored = StoredMessage {
                    message: message.clone(),
                    author: Author::Friend,
                    stored_at: Timestamp::now(),
                };
                match history.insert_ops(&conversation, stored) {
                    Ok((Inserted::New, new_ops)) => {
                        if let Some(last) = self.lamports.get_mut(&conversation) {
                            *last = (*last).max(message.lamport.0);
                        }
                        ops.extend(new_ops);
                        ops.extend(self.record(kith_sync::OpKind::MessageReceived {
                            friend: account.to_bytes(),
                            message: message.clone(),
                        }));
                        ops.push(Op::put(
                            UNREAD,
                            records::message_key(&conversation, &message.id),
                            records::encode(&()),
                        ));
                        events.push(Event::Message {
                            friend: account,
                            message: MessageView {
                                id: message.id,
                                author: Author::Friend,
                                sent_at: message.sent_at,
                                lamport: message.lamport,
                                body: message.body,
                                edited: false,
                                deleted: false,
                                state: None,
                                witness: None,
                            },
                        });
                        Ok(())
                    }
                    Ok((Inserted::Duplicate, _)) => Ok(()),
                    Err(_) => Err(Refusal::Busy),
                }
            }
            Payload::Receipt(receipt) => {
                let state = match receipt.kind {
                    ReceiptKind::Delivered => MessageState::Delivered { at: receipt.at },
                    ReceiptKind::Read => MessageState::Read { at: receipt.at },
                };
                for id in receipt.ids {
                    let key = records::message_key(&conversation, &id);
                    let current = match records::get::<MessageState>(&self.store, STATES, &key) {
                        Ok(Some(current)) => current,
                        // No record: queued, if it is one of ours at all.
                        Ok(None) => match history.get(&conversation, id) {
                            Ok(Some(m)) if m.author == Author::Me => MessageState::Queued,
                            _ => continue,
                        },
                        Err(_) => continue,
                    };
                    if current.rank() < state.rank() {
                        ops.push(records::put(STATES, key, &state));
                        events.push(Event::State {
                            friend: account,
                            id,
                            state: state.clone(),
                        });
                    }
                }
                Ok(())
            }
            Payload::Edit(edit) => {
                self.receive_change(
                    &account,
                    &conversation,
                    edit.target,
                    edit.sent_at,
                    Some(edit.body),
                    ops,
                    events,
                );
                Ok(())
            }
            Payload::Delete(delete) => {
                self.receive_change(
                    &account,
                    &conversation,
                    delete.target,
                    delete.sent_at,
                    None,
                    ops,
                    events,
                );
                Ok(())
            }
            Payload::Typing(typing) => {
                events.push(Event::Typing {
                    friend: account,
                    active: typing.active,
                });
                Ok(())
            }
            Payload::Devices(bytes) => {
                self.take_friend_list(&account, &bytes, ops);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn receive_change(
        &mut self,
        account: &AccountPublicKey,
        conversation: &[u8; 16],
        target: MessageId,
        at: Timestamp,
        body: Option<String>,
        ops: &mut Vec<Op>,
        events: &mut Vec<Event>,
    ) {
        let Ok(Some(original)) = History::new(&self.store).get(conversation, target) else {
            return;
        };
        if original.author != Author::Friend {
            return;
        }
        let key = records::message_key(conversation, &target);
        if let Ok(Some(existing)) = records::get::<EditRecord>(&self.store, EDITS, &key)
            && (existing.deleted || existing.at >= at)
        {
            return;
        }
        ops.extend(self.record(match &body {
            Some(body) => kith_sync::OpKind::Edited {
                friend: account.to_bytes(),
                target,
                body: body.clone(),
                at,
            },
            None => kith_sync::OpKind::Deleted {
                friend: account.to_bytes(),
                target,
                at,
            },
        }));
        let record = EditRecord {
            deleted: body.is_none(),
            body,
            at,
        };
        ops.push(records::put(EDITS, key, &record));
        let mut view = MessageView {
            id: target,
            author: Author::Friend,
            sent_at: original.message.sent_at,
            lamport: original.message.lamport,
            body: String::new(),
            edited: !record.deleted,
            deleted: record.deleted,
            state: None,
            witness: None,
        };
        if let Some(body) = record.body {
            view.body = body;
        }
        events.push(Event::Changed {
            friend: *account,
            message: view,
        });
    }

    // ----- outbound -----

    /// How long until the next poll of the request drop.
    fn poll_interval(&self, now: Instant) -> Duration {
        match self.expecting_until {
            Some(until) if now < until => self.request_poll_expecting.min(self.request_poll),
            _ => self.request_poll,
        }
    }

    /// Starts (or extends) the time when requests are expected, and brings
    /// the next poll forward to fit it.
    fn expect_requests(&mut self) {
        let now = Instant::now();
        self.expecting_until = Some(now + self.expecting_requests_for);
        self.next_poll = self.next_poll.min(now + self.poll_interval(now));
    }

    fn on_tick(&mut self) {
        let now = Instant::now();
        let interval = self.poll_interval(now);
        if now >= self.next_poll || overdue(self.last_poll_wall, interval) {
            self.next_poll = now + interval;
            self.last_poll_wall = SystemTime::now();
            self.start_poll();
            self.renew_drops();
        }
        if now >= self.next_mail_fetch
            || overdue(self.last_mail_fetch_wall, self.mailbox.fetch_every)
        {
            self.start_mail_fetch(Duration::ZERO);
        }
        self.start_due_deposits(now);
        if self.keep_dirty {
            self.keep_connected();
        }
        if now >= self.next_top_up {
            self.next_top_up = now + self.mailbox.top_up_every;
            self.start_top_up();
        }
        let due: Vec<[u8; 32]> = self
            .drop_due
            .iter()
            .filter(|(to, (at, _))| *at <= now && !self.dropping.contains(*to))
            .map(|(to, _)| *to)
            .collect();
        for to in due {
            self.start_drop(to);
        }
    }

    fn pump_all(&mut self) {
        let friends: Vec<[u8; 32]> = self.with_items.iter().copied().collect();
        for friend in friends {
            self.pump(&friend);
        }
    }

    fn pump(&mut self, friend_bytes: &[u8; 32]) {
        let now = Instant::now();
        if !self.friends.contains_key(friend_bytes) {
            self.with_items.remove(friend_bytes);
            return;
        }
        // While a deposit is under way its items must not also go out
        // directly; a friend found unreachable a moment ago gets mail.
        if self.is_offline(friend_bytes) {
            self.deposit_soon(*friend_bytes);
            // Keep looking (with backoff): a friend found again is
            // delivered to directly at once, not after the offline spell.
            let due = self.friends.get(friend_bytes).is_some_and(|f| {
                f.devices.iter().any(|p| {
                    !self.connected.contains(p)
                        && self
                            .devices
                            .get(p)
                            .is_some_and(|d| !d.in_flight && now >= d.next_attempt)
                })
            });
            if due {
                self.locate_friend(*friend_bytes);
            }
            return;
        }
        if self.depositing.contains(friend_bytes) {
            return;
        }
        let Some(friend) = self.friends.get(friend_bytes) else {
            return;
        };
        // Every listed device of the friend gets what waits for them.
        let peers = friend.devices.clone();
        let share = friend.record.card.presence.clone();
        let key = friend.key.clone();
        self.settle_fanout(friend_bytes, &key);
        for peer in peers {
            self.pump_device(friend_bytes, peer, &share, &key, now);
        }
    }

    fn pump_device(
        &mut self,
        friend_bytes: &[u8; 32],
        peer: PeerId,
        share: &kith_proto::presence::PresenceShare,
        key: &[u8],
        now: Instant,
    ) {
        let Some(device) = self.devices.get(&peer) else {
            return;
        };
        if device.in_flight || now < device.next_attempt {
            return;
        }
        let addresses = device.addresses.clone();
        if (addresses.is_empty() && !self.connected.contains(&peer)) || device.prekeys.is_none() {
            self.locate(*friend_bytes, share.clone());
            return;
        }
        let items = match records::prefixed::<OutboxItem>(&self.store, OUTBOX, key, MAX_ITEMS) {
            Ok(items) => items,
            Err(e) => {
                self.emit(Event::Problem(format!("outbox unreadable: {e}")));
                return;
            }
        };
        if items.is_empty() {
            self.with_items.remove(friend_bytes);
            return;
        }
        // What this device stored already waits only for the others.
        // (Expired ones stay, so the loop below fails them.)
        let now_ts = Timestamp::now();
        let items: Vec<(Vec<u8>, OutboxItem)> = items
            .into_iter()
            .filter(|(item_key, item)| item.expires <= now_ts || !self.acked_by(item_key, &peer))
            .collect();
        let mut ops = Vec::new();
        let mut events = Vec::new();
        let mut batch = Vec::new();
        let mut sent = Vec::new();
        let mut bundle = Bundle::default();
        let mut bytes = 0;
        let now_ts = Timestamp::now();
        for (item_key, item) in items {
            if item.expires <= now_ts {
                self.fail(
                    &item_key,
                    &item,
                    "not delivered before its time ran out",
                    &mut ops,
                    &mut events,
                );
                continue;
            }
            match &item.body {
                OutboxBody::Sealed(sealed) => {
                    // Keep outbox order: what is bundled so far goes first.
                    if !self.close_bundle(&peer, &mut bundle, &mut batch, &mut sent) {
                        break;
                    }
                    bytes += sealed.len();
                    batch.push(Item::Sealed(sealed.clone()));
                    sent.push(vec![(item_key, item)]);
                }
                OutboxBody::Payload(payload) => {
                    let plain = match payload.encode() {
                        Ok(plain) => plain,
                        Err(e) => {
                            self.fail(&item_key, &item, &e.to_string(), &mut ops, &mut events);
                            continue;
                        }
                    };
                    if bundle.bytes + plain.len() > BUNDLE_TARGET_BYTES
                        && !self.close_bundle(&peer, &mut bundle, &mut batch, &mut sent)
                    {
                        break;
                    }
                    bytes += plain.len();
                    bundle.bytes += plain.len();
                    bundle.payloads.push(plain);
                    bundle.items.push((item_key, item));
                }
            }
            if bytes >= BATCH_BYTES || batch.len() >= MAX_ITEMS - 1 {
                break;
            }
        }
        self.close_bundle(&peer, &mut bundle, &mut batch, &mut sent);
        ops.extend(self.sessions_op(&peer));
        // The ratchet must be on disk before anything it encrypted
        // leaves: the request goes out after the turn's flush.
        self.stage(ops);
        for event in events {
            self.emit(event);
        }
        if batch.is_empty() {
            return;
        }
        if let Some(device) = self.devices.get_mut(&peer) {
            device.in_flight = true;
        }
        tracing::debug!(%peer, items = batch.len(), bytes, "delivering");
        let request = frame::encode_request(&batch);
        self.after_commit(move |actor, ok| {
            if !ok {
                if let Some(device) = actor.devices.get_mut(&peer) {
                    device.in_flight = false;
                    device.next_attempt = Instant::now() + jitter(device.backoff);
                }
                return;
            }
            let net = actor.net.clone();
            let done = actor.done_tx.clone();
            tokio::spawn(async move {
                let result = net.request(peer, addresses, request).await;
                let _ = done
                    .send(Done::Sent {
                        peer,
                        items: sent,
                        result,
                    })
                    .await;
            });
        });
    }

    /// Encrypts the open bundle as one Olm message onto the batch; `false`
    /// if encryption failed (the batch then stops there).
    fn close_bundle(
        &mut self,
        peer: &PeerId,
        bundle: &mut Bundle,
        batch: &mut Vec<Item>,
        sent: &mut Vec<Vec<(Vec<u8>, OutboxItem)>>,
    ) -> bool {
        if bundle.payloads.is_empty() {
            return true;
        }
        let open = std::mem::take(bundle);
        match self.encrypt_for(peer, &frame::encode_bundle(&open.payloads)) {
            Ok(olm) => {
                batch.push(Item::Olm(olm));
                sent.push(open.items);
                true
            }
            Err(e) => {
                self.emit(Event::Problem(format!("could not encrypt: {e}")));
                false
            }
        }
    }

    fn fail(
        &mut self,
        item_key: &[u8],
        item: &OutboxItem,
        reason: &str,
        ops: &mut Vec<Op>,
        events: &mut Vec<Event>,
    ) {
        self.remove_outbox_item(item_key.to_vec(), ops);
        if let (Some(id), Some(friend)) = (item.message, self.friends.get(&item.friend)) {
            let key = records::message_key(&friend.conversation, &id);
            // A message already delivered (its acknowledgement was lost)
            // stays delivered.
            let current: Option<MessageState> =
                records::get(&self.store, STATES, &key).ok().flatten();
            if current.is_some_and(|c| c.has_left()) {
                return;
            }
            let state = MessageState::Failed {
                reason: reason.to_owned(),
            };
            ops.push(records::put(STATES, key, &state));
            events.push(Event::State {
                friend: friend.account,
                id,
                state,
            });
        }
    }

    /// Looks the friend's presence record up for their devices' addresses
    /// and prekeys (once at a time per friend).
    fn locate(&mut self, friend: [u8; 32], share: kith_proto::presence::PresenceShare) {
        let retry_max = self.retry_max;
        let Some(f) = self.friends.get_mut(&friend) else {
            return;
        };
        if std::mem::replace(&mut f.locating, true) {
            return;
        }
        for peer in f.devices.clone() {
            if !self.connected.contains(&peer)
                && let Some(device) = self.devices.get_mut(&peer)
            {
                device.backoff = (device.backoff * 2).min(retry_max);
            }
        }
        let net = self.net.clone();
        let done = self.done_tx.clone();
        tokio::spawn(async move {
            let result = net.find_devices(&share).await;
            let _ = done.send(Done::Located { friend, result }).await;
        });
    }

    /// Looks `friend`'s devices up (`locate`, with their presence share).
    fn locate_friend(&mut self, friend: [u8; 32]) {
        if let Some(share) = self
            .friends
            .get(&friend)
            .map(|f| f.record.card.presence.clone())
        {
            self.locate(friend, share);
        }
    }

    fn on_done(&mut self, done: Done) {
        match done {
            Done::Sent {
                peer,
                items,
                result,
            } => self.on_sent(peer, items, result),
            Done::Located { friend, result } => {
                let now = Instant::now();
                let peers: Vec<PeerId> = match self.friends.get_mut(&friend) {
                    Some(f) => {
                        f.locating = false;
                        f.devices.clone()
                    }
                    None => Vec::new(),
                };
                // Nobody answered: we are not on the network (yet, just
                // after start), which says nothing about the friend.
                let cut_off = matches!(result, Err(NetError::NoPeers));
                let found = result.unwrap_or_default();
                let mut reached = false;
                for peer in peers {
                    let Some(device) = self.devices.get_mut(&peer) else {
                        continue;
                    };
                    match found.iter().find(|d| d.peer_id == peer) {
                        Some(entry) if !entry.addresses.is_empty() => {
                            device.addresses = entry.addresses.clone();
                            if let Ok(prekeys) = Prekeys::decode(&entry.prekeys)
                                && device
                                    .prekeys
                                    .is_none_or(|known| known.identity == prekeys.identity)
                            {
                                device.prekeys = Some(prekeys);
                            }
                            device.next_attempt = now;
                            reached = true;
                        }
                        _ if !self.connected.contains(&peer) => {
                            device.next_attempt = now + jitter(device.backoff);
                        }
                        _ => {}
                    }
                    // Keys still unknown (not published yet, or unreadable):
                    // no new lookup before the backoff, connected or not.
                    if device.prekeys.is_none() {
                        device.next_attempt = now + jitter(device.backoff);
                        device.backoff = (device.backoff * 2).min(self.retry_max);
                    }
                }
                if reached {
                    self.friend_reachable(&friend);
                } else if cut_off {
                    tracing::debug!("friend lookup found no DHT node to ask; trying again");
                } else {
                    self.friend_unreachable(friend);
                }
            }
            Done::Dropped { to, result } => {
                self.dropping.remove(&to);
                self.on_dropped(to, result);
            }
            Done::Fetched(result) => {
                self.polling = false;
                let count = match result {
                    Ok(entries) => self.on_fetched(entries),
                    // Someone is waiting (`kith requests` just after
                    // start, before the DHT is reachable): try again
                    // shortly rather than answer "nothing".
                    Err(_) if !self.poll_waiters.is_empty() && self.poll_retries < POLL_RETRIES => {
                        self.poll_retries += 1;
                        self.polling = true;
                        self.spawn_fetch(POLL_RETRY_DELAY);
                        return;
                    }
                    Err(_) => 0,
                };
                self.poll_retries = 0;
                for reply in std::mem::take(&mut self.poll_waiters) {
                    self.reply_after_commit(reply, count);
                }
            }
            Done::Deposited { friend, groups } => self.on_deposited(friend, groups),
            Done::ToppedUp(results) => self.on_topped_up(results),
            Done::RequestDeposited { to, digest, ok } => self.on_request_deposited(to, digest, ok),
            Done::MailFetched(result) => self.on_mail_fetched(result),
            Done::Linked(done) => self.on_linked(*done),
            Done::Synced(done) => self.on_synced(*done),
            Done::SiblingsLocated(result) => self.on_siblings_located(result),
            Done::SyncMailed { peer, after } => self.on_sync_mailed(peer, after),
        }
    }

    fn on_sent(
        &mut self,
        peer: PeerId,
        items: Vec<Vec<(Vec<u8>, OutboxItem)>>,
        result: Result<Vec<u8>, NetError>,
    ) {
        let (retry_min, retry_max) = (self.retry_min, self.retry_max);
        // State reads below must see receipts staged earlier this turn.
        if let Err(e) = self.apply_staged() {
            self.emit(Event::Problem(e.to_string()));
        }
        let acks = result.map_err(|e| e.to_string()).and_then(|bytes| {
            frame::decode_response(&bytes, items.len()).map_err(|e| e.to_string())
        });
        let Some(device) = self.devices.get_mut(&peer) else {
            return;
        };
        device.in_flight = false;
        let acks = match acks {
            Ok(acks) => acks,
            Err(e) => {
                device.failures = device.failures.saturating_add(1);
                tracing::debug!(
                    %peer,
                    backoff = ?device.backoff,
                    failures = device.failures,
                    "delivery failed: {e}"
                );
                device.next_attempt = Instant::now() + jitter(device.backoff);
                device.backoff = (device.backoff * 2).min(retry_max);
                // Look the device up again: it may have moved.
                device.addresses.clear();
                if device.failures < FAILURES_BEFORE_MAIL {
                    return;
                }
                let friend = device.friend;
                // Unreachable only if no other device of theirs is here.
                let others = self.friends.get(&friend).is_some_and(|f| {
                    f.devices
                        .iter()
                        .any(|p| *p != peer && self.connected.contains(p))
                });
                if !others {
                    self.friend_unreachable(friend);
                }
                return;
            }
        };
        tracing::debug!(%peer, ?acks, "delivery answered");
        device.backoff = retry_min;
        device.failures = 0;
        let mut ops = Vec::new();
        let mut events = Vec::new();
        let mut reset = false;
        let mut busy = false;
        let mut introduce = false;
        let each = items
            .into_iter()
            .zip(acks)
            .flat_map(|(group, ack)| group.into_iter().map(move |entry| (entry, ack)));
        for ((item_key, item), ack) in each {
            match ack {
                Ack::Stored => {
                    if self.others_waiting(&item.friend, &item_key, &peer) {
                        ops.push(Op::put(
                            OUTBOX_ACKS,
                            fanout::ack_key(&item_key, &peer),
                            records::encode(&()),
                        ));
                    } else {
                        self.remove_outbox_item(item_key, &mut ops);
                    }
                    if let (Some(id), Some(friend)) = (item.message, self.friends.get(&item.friend))
                    {
                        let key = records::message_key(&friend.conversation, &id);
                        let state = MessageState::Delivered {
                            at: Timestamp::now(),
                        };
                        let current: Option<MessageState> =
                            records::get(&self.store, STATES, &key).ok().flatten();
                        if current.is_none_or(|c| c.rank() < state.rank()) {
                            ops.push(records::put(STATES, key, &state));
                            events.push(Event::State {
                                friend: friend.account,
                                id,
                                state,
                            });
                        }
                    }
                }
                Ack::Refused(Refusal::NoSession) => reset = true,
                // The friend's device may not have our device list yet (a
                // device just linked): try again later.
                Ack::Refused(Refusal::Busy) => busy = true,
                Ack::Refused(Refusal::UnknownDevice) => {
                    busy = true;
                    introduce = true;
                }
                Ack::Refused(refusal) => {
                    let reason = match refusal {
                        Refusal::NotFriend => "the friend no longer accepts messages from you",
                        Refusal::UnknownDevice => "the friend's device does not know this device",
                        _ => "the friend's device could not read it",
                    };
                    self.fail(&item_key, &item, reason, &mut ops, &mut events);
                }
            }
        }
        if busy
            && !reset
            && let Some(device) = self.devices.get_mut(&peer)
        {
            // The friend's device could not store: back off, do not spin.
            device.next_attempt = Instant::now() + jitter(device.backoff);
            device.backoff = (device.backoff * 2).min(retry_max);
        }
        if reset && let Some(device) = self.devices.get_mut(&peer) {
            // Their side lost the session: start a fresh one.
            device.sessions = Some(Vec::new());
            device.next_attempt = Instant::now() + jitter(retry_min);
        }
        if reset {
            ops.extend(self.sessions_op(&peer));
        }
        if introduce {
            ops.extend(self.introduce_to(&peer));
        }
        self.stage(ops);
        for event in events {
            self.emit(event);
        }
    }

    /// Hands the network the peers to keep connected when they changed:
    /// every known device of every friend and the account's other devices.
    /// A friend who stays connected is shown online and reached without a
    /// lookup; `docs/network.md`, "Kept connections".
    fn keep_connected(&mut self) {
        // An update under way finishes first; this one follows at a later
        // tick (`keep_dirty` stays set).
        if self.keep_task.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        self.keep_dirty = false;
        let wanted: HashSet<PeerId> = self
            .devices
            .keys()
            .chain(self.siblings.keys())
            .copied()
            .collect();
        if wanted == self.kept_peers {
            return;
        }
        self.kept_peers = wanted;
        let peers: Vec<PeerId> = self.kept_peers.iter().copied().collect();
        let net = self.net.clone();
        self.keep_task = Some(tokio::spawn(async move {
            let _ = net.keep_connected(peers).await;
        }));
    }

    /// Reads the request drop (mail is fetched on its own timer).
    fn start_poll(&mut self) {
        if self.polling {
            return;
        }
        self.polling = true;
        if self.connected.is_empty() {
            // Not on the network yet: an empty DHT answers "nothing" at
            // once. Look when the first connection is up.
            self.poll_deferred = true;
            return;
        }
        self.spawn_fetch(Duration::ZERO);
    }

    fn spawn_fetch(&self, delay: Duration) {
        let key = drop_key(&self.identity.account.public(), &self.identity.nospam);
        let net = self.net.clone();
        let done = self.done_tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let result = net.fetch_requests(key).await;
            let _ = done.send(Done::Fetched(result)).await;
        });
    }

    fn on_fetched(&mut self, mut entries: Vec<DropEntry>) -> usize {
        let now = now_secs();
        // A sender may have an old and a re-sealed entry in the drop: the
        // newest is handled, once per fetch.
        entries.sort_by_key(|e| std::cmp::Reverse(e.expires));
        let mut fetched_from = HashSet::new();
        let mut ops = Vec::new();
        let mut events = Vec::new();
        let mut count = 0;
        let mut turned_away = 0;
        let mut pending =
            records::all::<IncomingRecord>(&self.store, REQUESTS_IN, MAX_PENDING_REQUESTS)
                .map(|r| r.len())
                .unwrap_or(MAX_PENDING_REQUESTS);
        for entry in entries {
            let digest: [u8; 32] = Sha256::digest(&entry.sealed).into();
            if matches!(self.store.get(SEEN_DROPS, &digest[..16]), Ok(Some(_))) {
                continue;
            }
            let seen_at = ops.len();
            ops.push(records::put(
                SEEN_DROPS,
                digest[..16].to_vec(),
                &entry.expires,
            ));
            let Ok(opened) = envelope::open(&self.identity.account, &entry.sealed) else {
                continue;
            };
            let Ok(Payload::FriendRequest(request)) = Payload::decode(&opened.payload) else {
                continue;
            };
            let sender = opened.sender;
            if !fetched_from.insert(sender.to_bytes()) {
                continue;
            }
            // Only the holder of the requester's account key can speak for
            // it, and only the current ID opens the door.
            if *request.from.account() != sender || request.to_nospam != self.identity.nospam {
                continue;
            }
            if self.friends.contains_key(&sender.to_bytes()) {
                continue;
            }
            let key = records::friend_key(&self.store, &sender);
            if matches!(self.store.get(REFUSED, &key), Ok(Some(_))) {
                continue;
            }
            let existing: Option<IncomingRecord> =
                records::get(&self.store, REQUESTS_IN, &key).ok().flatten();
            let record = IncomingRecord {
                request: *request,
                received_at: Timestamp::now(),
            };
            match &existing {
                Some(previous) => {
                    let interval =
                        u64::try_from(REQUEST_UPDATE_INTERVAL.as_millis()).unwrap_or(u64::MAX);
                    if previous.received_at.0.saturating_add(interval) > record.received_at.0
                        || previous.request.sent_at >= record.request.sent_at
                    {
                        continue;
                    }
                }
                None if pending >= MAX_PENDING_REQUESTS => {
                    // Turned away, and not marked as seen: while the entry
                    // stays in the drop it is read again once the user has
                    // made room.
                    ops.remove(seen_at);
                    turned_away += 1;
                    continue;
                }
                None => pending += 1,
            }
            let mutual = matches!(self.store.get(REQUESTS_OUT, &key), Ok(Some(_)));
            ops.push(records::put(REQUESTS_IN, key, &record));
            count += 1;
            if mutual {
                // Both asked: accept at once.
                if self.apply(std::mem::take(&mut ops)).is_ok() && self.accept(&sender).is_ok() {
                    continue;
                }
            } else if existing.is_none() {
                events.push(Event::Request(request_info(&record)));
            }
        }
        // Forget digests of entries that expired.
        if let Ok(seen) = records::all::<u64>(&self.store, SEEN_DROPS, 4096) {
            for (key, expires) in seen {
                if expires < now {
                    ops.push(records::delete(SEEN_DROPS, key));
                }
            }
        }
        if let Err(e) = self.apply(ops) {
            self.emit(Event::Problem(e.to_string()));
            return 0;
        }
        if turned_away > 0 {
            events.push(Event::Problem(format!(
                "{turned_away} more friend request(s) could not be kept: {MAX_PENDING_REQUESTS} are \
                 already waiting, the most Kith keeps. Accept or decline some (or decline them \
                 all); if strangers are flooding you, change your nospam so that your old ID \
                 stops working."
            )));
        }
        self.emit_after_commit(events);
        count
    }

    fn start_drop(&mut self, to: [u8; 32]) {
        let Ok(account) = AccountPublicKey::from_bytes(&to) else {
            self.drop_due.remove(&to);
            return;
        };
        let key = records::friend_key(&self.store, &account);
        let Ok(Some(out)) = records::get::<OutgoingRecord>(&self.store, REQUESTS_OUT, &key) else {
            self.drop_due.remove(&to);
            return;
        };
        self.dropping.insert(to);
        let net = self.net.clone();
        let done = self.done_tx.clone();
        let drop_at = drop_key(out.to.account(), &out.to.nospam());
        self.deposit_request(*out.to.account(), out.sealed.clone());
        let entry = DropEntry {
            expires: out.expires,
            sealed: out.sealed,
        };
        tokio::spawn(async move {
            let result = net.drop_request(drop_at, entry).await;
            let _ = done.send(Done::Dropped { to, result }).await;
        });
    }

    fn on_dropped(&mut self, to: [u8; 32], result: Result<(), NetError>) {
        match result {
            Ok(()) => {
                self.drop_due.remove(&to);
                let Ok(account) = AccountPublicKey::from_bytes(&to) else {
                    return;
                };
                let key = records::friend_key(&self.store, &account);
                if let Ok(Some(mut out)) =
                    records::get::<OutgoingRecord>(&self.store, REQUESTS_OUT, &key)
                {
                    out.dropped = true;
                    let _ = self.apply(vec![records::put(REQUESTS_OUT, key, &out)]);
                }
            }
            Err(_) => {
                let retry_max = self.retry_max;
                let entry = self
                    .drop_due
                    .entry(to)
                    .or_insert((Instant::now(), self.retry_min));
                entry.1 = (entry.1 * 2).min(retry_max);
                entry.0 = Instant::now() + jitter(entry.1);
            }
        }
    }

    /// Places unanswered requests again before their drop entries expire.
    fn renew_drops(&mut self) {
        let now = now_secs();
        let Ok(outgoing) =
            records::all::<OutgoingRecord>(&self.store, REQUESTS_OUT, MAX_PENDING_REQUESTS)
        else {
            return;
        };
        let mut ops = Vec::new();
        for (key, mut out) in outgoing {
            // A request whose mail found no volunteer last time is left
            // again (a no-op when it already was).
            self.deposit_request(*out.to.account(), out.sealed.clone());
            let first_sent = out.sent_at.0 / 1000;
            if out.expires > now + DROP_RENEW_SECS || now > first_sent + REQUEST_LIFETIME_SECS {
                continue;
            }
            let request = FriendRequest {
                from: self.my_id(),
                to_nospam: out.to.nospam(),
                display_name: self.display_name.clone(),
                message: out.message.clone(),
                sent_at: out.sent_at,
                card: self.my_card(),
            };
            let Ok(sealed) = self.seal_request(out.to.account(), request) else {
                continue;
            };
            out.sealed = sealed;
            out.expires = now + DROP_TTL_SECS;
            out.dropped = false;
            self.drop_due.insert(
                out.to.account().to_bytes(),
                (Instant::now(), self.retry_min),
            );
            ops.push(records::put(REQUESTS_OUT, key, &out));
        }
        let _ = self.apply(ops);
    }
}

/// Whether more than `interval` has passed on the wall clock since `last`
/// (false if the clock went back).
fn overdue(last: SystemTime, interval: Duration) -> bool {
    SystemTime::now()
        .duration_since(last)
        .is_ok_and(|since| since >= interval)
}

/// Finds `wanted` among `candidates` by exact name, then by a prefix of a
/// name, Kith ID or account key (4 characters at least for the last two).
fn resolve_among(
    candidates: &[(AccountPublicKey, String, KithId)],
    wanted: &str,
    query: &str,
) -> Result<AccountPublicKey, EngineError> {
    let exact: Vec<_> = candidates
        .iter()
        .filter(|(_, name, _)| name.to_lowercase() == wanted)
        .collect();
    if let [one] = exact.as_slice() {
        return Ok(one.0);
    }
    let mut matches: Vec<_> = candidates
        .iter()
        .filter(|(account, name, id)| {
            name.to_lowercase().starts_with(wanted)
                || (wanted.len() >= 4
                    && (id.to_text().to_lowercase().starts_with(wanted)
                        || account.to_hex().starts_with(wanted)))
        })
        .collect();
    matches.dedup_by_key(|(account, _, _)| *account);
    match matches.as_slice() {
        [] => Err(EngineError::UnknownFriend(query.into())),
        [one] => Ok(one.0),
        many => Err(EngineError::Ambiguous {
            query: query.into(),
            matches: many
                .iter()
                .map(|(_, name, id)| format!("{name} ({})", id.to_text().get(..8).unwrap_or("")))
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

fn request_info(record: &IncomingRecord) -> RequestInfo {
    RequestInfo {
        account: *record.request.from.account(),
        id: record.request.from,
        name: record.request.display_name.clone(),
        message: record.request.message.clone(),
        sent_at: record.request.sent_at,
    }
}
