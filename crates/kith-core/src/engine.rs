//! The messenger engine: an actor that owns the store, the device's
//! session secrets and the network node, behind a cloneable [`Engine`]
//! handle and a bounded stream of [`Event`]s.
//!
//! Data flow:
//! - **Commands** (send, add a friend, accept, …) arrive on a bounded
//!   channel. Each writes what it changes to the store; the actor then makes
//!   everything written in one turn durable with a single flush (group
//!   commit) before it answers any of them. An answer therefore means the
//!   change survives a crash.
//! - **The outbox** holds what must reach a friend. For each friend device
//!   the actor keeps at most one request in flight, carrying a batch of
//!   items encrypted with the device pair's Olm session at send time; the
//!   receiver stores them durably and acknowledges each one, and only then
//!   does the item leave the outbox (state "delivered"). Failures retry with
//!   jittered exponential backoff until the item's TTL ends.
//! - **Inbound requests** from the network are decrypted, de-duplicated by
//!   message ID, written, flushed with the turn's other writes, and only then
//!   acknowledged.
//! - **Friend requests** travel through the recipient's request drop in the
//!   DHT (`docs/requests.md`): strangers never learn whether someone is
//!   online. The actor polls its own drop on a timer and on demand.
//!
//! Nothing here knows about a GUI or a terminal; both, tests and benchmarks
//! use the same handle.

mod actor;

use std::time::Duration;

use futures::Stream;
use kith_proto::safety::SafetyNumber;
use kith_proto::wire::{Lamport, MessageId, Timestamp};
use kith_proto::{AccountPublicKey, KithId};
use kith_store::profile::{Identity, Profile};
use kith_store::{Passphrase, Store};
use tokio::sync::{mpsc, oneshot};

use crate::history::{Author, Cursor};
pub use crate::records::{MessageState, RefusalKind, Witness};

/// Most friends an account keeps.
pub const MAX_FRIENDS: usize = 4096;
/// Most friend requests waiting for the user; later ones are turned away
/// (with an [`Event::Problem`] saying so) until the user answers some. Also
/// the most of the user's own requests left unanswered at once.
pub const MAX_PENDING_REQUESTS: usize = 256;
/// Most declines and blocks carried over when the op log is first written
/// from the stored state (a device linked to an account that declined
/// floods of requests).
pub const MAX_REFUSED: usize = 65_536;
/// A sender may update their waiting request at most this often.
pub const REQUEST_UPDATE_INTERVAL: Duration = Duration::from_secs(3600);
/// Most items waiting in the outbox; sends beyond it are refused.
pub const MAX_OUTBOX: usize = 100_000;

/// How the engine runs.
pub struct Config {
    /// Who this is.
    pub identity: Identity,
    /// The profile's store.
    pub store: Store,
    /// The profile folder, to rewrite the identity file when the nospam
    /// rotates; `None` keeps rotations in memory (tests, benchmarks).
    pub profile: Option<(Profile, Option<Passphrase>)>,
    /// The network node's settings; the engine fills in its presence keys
    /// and prekeys.
    pub net: kith_net::Config,
    /// The name shown to new friends, when none is stored yet.
    pub display_name: String,
    /// How often to look for new friend requests when none is expected
    /// (`docs/requests.md`, "Polling"). Each look is a DHT query that
    /// every node near the drop answers, so this dominates an idle
    /// device's traffic.
    pub request_poll: Duration,
    /// How often to look while a request is expected: for
    /// `expecting_requests_for` after [`Engine::expect_requests`] or
    /// [`Engine::check_requests`] (the user is showing their ID, or just
    /// looked).
    pub request_poll_expecting: Duration,
    /// How long a request stays expected.
    pub expecting_requests_for: Duration,
    /// How long an unsent message is retried before it fails.
    pub message_ttl: Duration,
    /// First retry delay after a failed delivery; doubles up to
    /// `retry_max`, with jitter.
    pub retry_min: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// Capacity of the command and event queues.
    pub queue_capacity: usize,
    /// Offline mail: how items are left for friends and fetched.
    pub mailbox: MailboxSettings,
    /// Keep offline mail for others (opt-in on desktop clients): the
    /// volunteer and its timers. Turns on
    /// [`kith_net::Config::mailbox_volunteer`].
    pub volunteer: Option<(
        kith_mailbox::Volunteer,
        kith_mailbox::service::ServiceSettings,
    )>,
}

/// How the engine uses offline mail (`docs/messaging.md`, "Offline mail").
#[derive(Debug, Clone)]
pub struct MailboxSettings {
    /// Volunteers each item should be left with
    /// ([`kith_proto::mailbox::DEFAULT_REPLICAS`]).
    pub replicas: usize,
    /// Proof-of-work bits new items carry; a volunteer asking for more gets
    /// the item re-signed at its difficulty.
    pub pow_difficulty: u8,
    /// How long volunteers keep an item.
    pub item_ttl: Duration,
    /// How often to fetch our own mail while online (also once on joining
    /// the network and whenever the user checks for friend requests).
    /// Friends who see us online deliver directly, so this only catches
    /// mail left while they could not reach us.
    pub fetch_every: Duration,
    /// How long the volunteers that served a fetch are asked again directly,
    /// without a DHT query for the closest peers to our mailbox address
    /// (most of a fetch's traffic). A fetch where one of them fails, the
    /// first on joining the network, and any the user asks for look them up
    /// afresh.
    pub find_volunteers_every: Duration,
    /// How often items held by fewer than `replicas` volunteers are offered
    /// to more.
    pub top_up_every: Duration,
}

impl Default for MailboxSettings {
    fn default() -> Self {
        Self {
            replicas: kith_proto::mailbox::DEFAULT_REPLICAS,
            pow_difficulty: kith_proto::mailbox::DEFAULT_POW_DIFFICULTY,
            item_ttl: Duration::from_secs(kith_proto::mailbox::DEFAULT_ITEM_TTL_SECS),
            fetch_every: Duration::from_secs(30 * 60),
            find_volunteers_every: Duration::from_secs(2 * 3600),
            top_up_every: Duration::from_secs(120),
        }
    }
}

impl Config {
    /// Defaults around an identity, store and network configuration.
    pub fn new(identity: Identity, store: Store, net: kith_net::Config) -> Self {
        Self {
            identity,
            store,
            profile: None,
            net,
            display_name: "Kith user".into(),
            request_poll: Duration::from_secs(30 * 60),
            request_poll_expecting: Duration::from_secs(60),
            expecting_requests_for: Duration::from_secs(15 * 60),
            message_ttl: Duration::from_secs(30 * 24 * 3600),
            retry_min: Duration::from_millis(500),
            retry_max: Duration::from_secs(60),
            queue_capacity: 1024,
            mailbox: MailboxSettings::default(),
            volunteer: None,
        }
    }
}

/// A friend as the user sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FriendInfo {
    /// Their account key.
    pub account: AccountPublicKey,
    /// Their Kith ID as we know it.
    pub id: KithId,
    /// Their display name.
    pub name: String,
    /// At least one of their devices is connected.
    pub online: bool,
    /// Their messages not yet marked read.
    pub unread: usize,
    /// Messages to them still in the outbox.
    pub queued: usize,
}

/// A friend request waiting for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestInfo {
    /// The requester's account key.
    pub account: AccountPublicKey,
    /// The requester's Kith ID.
    pub id: KithId,
    /// The name they gave.
    pub name: String,
    /// Their note.
    pub message: String,
    /// When they sent it, by their clock.
    pub sent_at: Timestamp,
}

/// A request this account sent, not yet answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingInfo {
    /// Whom.
    pub id: KithId,
    /// When.
    pub sent_at: Timestamp,
    /// At least one DHT node holds it.
    pub dropped: bool,
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageView {
    /// Its identity.
    pub id: MessageId,
    /// Who wrote it.
    pub author: Author,
    /// The author's time.
    pub sent_at: Timestamp,
    /// Its Lamport counter.
    pub lamport: Lamport,
    /// The text (the latest edit's; empty when deleted).
    pub body: String,
    /// Edited after sending.
    pub edited: bool,
    /// Withdrawn by its author.
    pub deleted: bool,
    /// For messages this account wrote: how far it got.
    pub state: Option<MessageState>,
    /// For friends' messages that came through the mailbox: whether the
    /// volunteers' receipts bear out the send time.
    pub witness: Option<Witness>,
}

/// A page of a conversation, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPage {
    /// The messages.
    pub messages: Vec<MessageView>,
    /// Pass back for older messages; `None` at the start.
    pub older: Option<Cursor>,
}

/// The engine's own state, for status displays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// This account's current Kith ID.
    pub id: KithId,
    /// This device's network identity.
    pub peer_id: kith_net::PeerId,
    /// Where it listens.
    pub listen: Vec<kith_net::Multiaddr>,
    /// Connected peers (friends, DHT nodes, relays).
    pub connected: usize,
    /// Items in the outbox.
    pub outbox: usize,
    /// Mail this device keeps for others, when it volunteers.
    pub volunteering: Option<kith_mailbox::Usage>,
}

/// One device of this account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Its network identity.
    pub peer_id: kith_net::PeerId,
    /// The name the device list gives it.
    pub name: String,
    /// When it was added, Unix seconds.
    pub added_at: u64,
    /// Whether it is the device this engine runs on.
    pub this_device: bool,
    /// Whether this device is connected to it now.
    pub online: bool,
}

/// What the engine reports as it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// Someone asked to become a friend.
    Request(RequestInfo),
    /// Someone became a friend (we accepted, or they accepted ours).
    FriendAdded(FriendInfo),
    /// A new message in a conversation (from the friend, or from one of
    /// this account's other devices).
    Message {
        /// The friend.
        friend: AccountPublicKey,
        /// The message.
        message: MessageView,
    },
    /// A message this account wrote moved on.
    State {
        /// The friend.
        friend: AccountPublicKey,
        /// The message.
        id: MessageId,
        /// Its new state.
        state: MessageState,
    },
    /// A message was edited or deleted.
    Changed {
        /// The friend.
        friend: AccountPublicKey,
        /// The message as it is now.
        message: MessageView,
    },
    /// A friend started or stopped typing.
    Typing {
        /// The friend.
        friend: AccountPublicKey,
        /// Typing now.
        active: bool,
    },
    /// A friend came online or went offline.
    Presence {
        /// The friend.
        friend: AccountPublicKey,
        /// Online now.
        online: bool,
    },
    /// Something the user should know that is not an answer to a command
    /// (a friend's device sent something unreadable, say).
    Problem(String),
}

/// Why the engine could not do something.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The engine has stopped.
    #[error("the engine has stopped")]
    Stopped,
    /// No friend (or request) matches.
    #[error("no friend matches '{0}'; `kith friends` lists them")]
    UnknownFriend(String),
    /// More than one friend matches.
    #[error("'{query}' matches more than one friend: {matches}")]
    Ambiguous {
        /// What was asked for.
        query: String,
        /// Who matched.
        matches: String,
    },
    /// No waiting request from this account.
    #[error("no friend request from '{0}' is waiting; `kith requests` lists them")]
    NoRequest(String),
    /// This is our own ID.
    #[error("that is your own Kith ID")]
    OwnId,
    /// Already a friend.
    #[error("{0} is already your friend")]
    AlreadyFriend(String),
    /// A message or request that breaks a limit.
    #[error("{0}")]
    Invalid(String),
    /// Only one's own messages can be edited or deleted.
    #[error("message {0} is not one of yours in this conversation")]
    NotYours(MessageId),
    /// A bound was reached.
    #[error("{0}")]
    Full(String),
    /// The store failed; nothing was changed.
    #[error("storage failed: {0}")]
    Store(String),
    /// The network failed.
    #[error("network: {0}")]
    Net(String),
    /// Linking a device failed; nothing was changed on this device.
    #[error("linking failed: {0}")]
    Link(String),
}

/// Why the engine could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The store could not be read.
    #[error("storage: {0}")]
    Store(String),
    /// The network node could not start.
    #[error(transparent)]
    Net(#[from] kith_net::StartError),
}

type Reply<T> = oneshot::Sender<Result<T, EngineError>>;

enum Command {
    Status(Reply<Status>),
    Add {
        id: KithId,
        message: String,
        reply: Reply<()>,
    },
    Requests(Reply<(Vec<RequestInfo>, Vec<OutgoingInfo>)>),
    CheckRequests(Reply<usize>),
    ExpectRequests(Reply<()>),
    Accept {
        account: AccountPublicKey,
        reply: Reply<FriendInfo>,
    },
    Refuse {
        account: AccountPublicKey,
        kind: RefusalKind,
        reply: Reply<()>,
    },
    DeclineAll(Reply<usize>),
    Friends(Reply<Vec<FriendInfo>>),
    Resolve {
        query: String,
        reply: Reply<AccountPublicKey>,
    },
    Send {
        friend: AccountPublicKey,
        body: String,
        reply: Reply<MessageId>,
    },
    Edit {
        friend: AccountPublicKey,
        target: MessageId,
        body: String,
        reply: Reply<()>,
    },
    Delete {
        friend: AccountPublicKey,
        target: MessageId,
        reply: Reply<()>,
    },
    MarkRead {
        friend: AccountPublicKey,
        reply: Reply<usize>,
    },
    Typing {
        friend: AccountPublicKey,
        active: bool,
    },
    History {
        friend: AccountPublicKey,
        older: Option<Cursor>,
        limit: usize,
        reply: Reply<HistoryPage>,
    },
    RotateNospam(Reply<KithId>),
    ChangePassphrase {
        current: Option<Passphrase>,
        new: Option<Passphrase>,
        reply: Reply<()>,
    },
    SetName {
        name: String,
        reply: Reply<()>,
    },
    LinkDevice {
        code: Box<kith_proto::link::LinkCode>,
        name: Option<String>,
        reply: Reply<DeviceInfo>,
    },
    Devices(Reply<Vec<DeviceInfo>>),
    RemoveDevice {
        query: String,
        reply: Reply<DeviceInfo>,
    },
    Shutdown(Reply<()>),
}

/// A handle on a running engine. Cheap to clone; the engine stops when the
/// last handle is dropped (or on [`Engine::shutdown`]).
#[derive(Clone)]
pub struct Engine {
    commands: mpsc::Sender<Command>,
    account: AccountPublicKey,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

/// Starts an engine: opens its state, starts the network node and the
/// actor on the current Tokio runtime.
pub fn start(
    config: Config,
) -> Result<(Engine, impl Stream<Item = Event> + Send + Unpin + 'static), StartError> {
    let account = config.identity.account.public();
    let capacity = config.queue_capacity.max(1);
    let (command_tx, command_rx) = mpsc::channel(capacity);
    let (event_tx, mut event_rx) = mpsc::channel(capacity);
    let actor = actor::Actor::new(config, command_rx, event_tx)?;
    tokio::spawn(actor.run());
    let events = Box::pin(futures::stream::poll_fn(move |cx| event_rx.poll_recv(cx)));
    Ok((
        Engine {
            commands: command_tx,
            account,
        },
        events,
    ))
}

impl Engine {
    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, EngineError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| EngineError::Stopped)?;
        rx.await.map_err(|_| EngineError::Stopped)?
    }

    /// This account's key.
    pub fn account(&self) -> AccountPublicKey {
        self.account
    }

    /// The engine's current state.
    pub async fn status(&self) -> Result<Status, EngineError> {
        self.ask(Command::Status).await
    }

    /// Sends a friend request to the owner of `id`, with a short note.
    /// Returns once the request is stored; it reaches their request drop
    /// as soon as the DHT is reachable.
    pub async fn add(&self, id: KithId, message: String) -> Result<(), EngineError> {
        self.ask(|reply| Command::Add { id, message, reply }).await
    }

    /// Requests waiting for the user, and requests we sent.
    pub async fn requests(&self) -> Result<(Vec<RequestInfo>, Vec<OutgoingInfo>), EngineError> {
        self.ask(Command::Requests).await
    }

    /// Looks for new friend requests and mail now; returns how many
    /// requests arrived. Requests then count as expected for a while
    /// (see [`Engine::expect_requests`]).
    pub async fn check_requests(&self) -> Result<usize, EngineError> {
        self.ask(Command::CheckRequests).await
    }

    /// The user is showing their ID (the QR code, the add-friend screen,
    /// `kith id show`): for [`Config::expecting_requests_for`], look for
    /// new requests every [`Config::request_poll_expecting`] instead of
    /// every [`Config::request_poll`], so a friend who scans the code sees
    /// their request reach us within about a minute.
    pub async fn expect_requests(&self) -> Result<(), EngineError> {
        self.ask(Command::ExpectRequests).await
    }

    /// Accepts the waiting request from `account`.
    pub async fn accept(&self, account: AccountPublicKey) -> Result<FriendInfo, EngineError> {
        self.ask(|reply| Command::Accept { account, reply }).await
    }

    /// Declines the waiting request from `account`; its sender's later
    /// requests are ignored.
    pub async fn decline(&self, account: AccountPublicKey) -> Result<(), EngineError> {
        self.ask(|reply| Command::Refuse {
            account,
            kind: RefusalKind::Declined,
            reply,
        })
        .await
    }

    /// Declines every waiting request at once, as [`Engine::decline`]
    /// would one by one; returns how many. For clearing a flood of
    /// requests (`docs/requests.md`, "A full list").
    pub async fn decline_all(&self) -> Result<usize, EngineError> {
        self.ask(Command::DeclineAll).await
    }

    /// Blocks `account`: any request is dropped, a friendship ends, and
    /// nothing from them is accepted any more.
    pub async fn block(&self, account: AccountPublicKey) -> Result<(), EngineError> {
        self.ask(|reply| Command::Refuse {
            account,
            kind: RefusalKind::Blocked,
            reply,
        })
        .await
    }

    /// The friends, by name.
    pub async fn friends(&self) -> Result<Vec<FriendInfo>, EngineError> {
        self.ask(Command::Friends).await
    }

    /// Finds a friend or requester by display name, Kith ID, or a prefix
    /// of either (case-insensitive).
    pub async fn resolve(&self, query: &str) -> Result<AccountPublicKey, EngineError> {
        let query = query.to_owned();
        self.ask(|reply| Command::Resolve { query, reply }).await
    }

    /// Queues a message to `friend`; returns once it is durably in the
    /// outbox.
    pub async fn send(
        &self,
        friend: AccountPublicKey,
        body: String,
    ) -> Result<MessageId, EngineError> {
        self.ask(|reply| Command::Send {
            friend,
            body,
            reply,
        })
        .await
    }

    /// Replaces the text of one of our messages to `friend`.
    pub async fn edit(
        &self,
        friend: AccountPublicKey,
        target: MessageId,
        body: String,
    ) -> Result<(), EngineError> {
        self.ask(|reply| Command::Edit {
            friend,
            target,
            body,
            reply,
        })
        .await
    }

    /// Withdraws one of our messages to `friend`.
    pub async fn delete(
        &self,
        friend: AccountPublicKey,
        target: MessageId,
    ) -> Result<(), EngineError> {
        self.ask(|reply| Command::Delete {
            friend,
            target,
            reply,
        })
        .await
    }

    /// Marks everything from `friend` read and tells them; returns how many
    /// messages that was.
    pub async fn mark_read(&self, friend: AccountPublicKey) -> Result<usize, EngineError> {
        self.ask(|reply| Command::MarkRead { friend, reply }).await
    }

    /// Tells `friend` we are typing (or stopped). Best effort: not stored,
    /// not retried.
    pub async fn typing(&self, friend: AccountPublicKey, active: bool) -> Result<(), EngineError> {
        self.commands
            .send(Command::Typing { friend, active })
            .await
            .map_err(|_| EngineError::Stopped)
    }

    /// Up to `limit` messages with `friend` before `older` (the newest when
    /// `None`), oldest first.
    pub async fn history(
        &self,
        friend: AccountPublicKey,
        older: Option<Cursor>,
        limit: usize,
    ) -> Result<HistoryPage, EngineError> {
        self.ask(|reply| Command::History {
            friend,
            older,
            limit,
            reply,
        })
        .await
    }

    /// Sets, changes (or with `new` = `None` removes) the passphrase
    /// that locks the profile's identity file and database; `current` must
    /// open the identity file. Both are re-written: the identity under the
    /// new passphrase is staged beside the old file, the database is
    /// re-keyed in one batch, then the staged file takes the old one's
    /// place (`Profile::stage_identity`). Takes a few seconds (key
    /// derivation, every value re-sealed), during which the engine answers
    /// nothing else.
    pub async fn change_passphrase(
        &self,
        current: Option<Passphrase>,
        new: Option<Passphrase>,
    ) -> Result<(), EngineError> {
        self.ask(|reply| Command::ChangePassphrase {
            current,
            new,
            reply,
        })
        .await
    }

    /// Picks a new nospam: the old Kith ID stops working for new requests;
    /// friends are unaffected. Returns the new ID.
    pub async fn rotate_nospam(&self) -> Result<KithId, EngineError> {
        self.ask(Command::RotateNospam).await
    }

    /// Sets the name new friends see.
    pub async fn set_name(&self, name: String) -> Result<(), EngineError> {
        self.ask(|reply| Command::SetName { name, reply }).await
    }

    /// Links the device that shows `code` to this account, naming it
    /// `name` in the device list (default: "device N"). Dials it (the
    /// code's addresses, else the LAN), proves the code's secret, hands it
    /// the account key, a new device list naming it, and the history
    /// (`kith_sync::link::MAX_LINK_SYNC_BYTES` of it; the rest follows by
    /// sync), and waits for its user to accept. The new list is stored
    /// only once the new device has proved the secret too; any failure
    /// leaves this device as it was.
    pub async fn link_device(
        &self,
        code: kith_proto::link::LinkCode,
        name: Option<String>,
    ) -> Result<DeviceInfo, EngineError> {
        self.ask(|reply| Command::LinkDevice {
            code: Box::new(code),
            name,
            reply,
        })
        .await
    }

    /// Removes a device (by name, or the start of its peer ID) from the
    /// account: the next signed list leaves it off and goes to friends and
    /// the other devices, which then send it nothing new and take nothing
    /// from it. This device cannot remove itself.
    pub async fn remove_device(&self, query: String) -> Result<DeviceInfo, EngineError> {
        self.ask(|reply| Command::RemoveDevice { query, reply })
            .await
    }

    /// The account's devices, as its newest device list names them.
    pub async fn devices(&self) -> Result<Vec<DeviceInfo>, EngineError> {
        self.ask(Command::Devices).await
    }

    /// The safety number of this account and `friend`, to compare out of
    /// band.
    pub fn safety_number(&self, friend: &AccountPublicKey) -> SafetyNumber {
        SafetyNumber::new(&self.account, friend)
    }

    /// Flushes everything and stops the engine and its network node.
    pub async fn shutdown(&self) -> Result<(), EngineError> {
        self.ask(Command::Shutdown).await
    }
}
