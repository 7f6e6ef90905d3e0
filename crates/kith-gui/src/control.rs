//! Running the engine for the terminal client: in the background as
//! `kith daemon`, or for the length of one command.
//!
//! A profile's store can be open in one process at a time, so while
//! `kith daemon` runs it owns the profile and listens on a Unix socket,
//! `<profile>/kith.sock` (in the profile's 0700 folder: only the user can
//! connect); on Windows on a named pipe that only local clients can reach
//! ([`transport`]). Every other `kith` command first tries that socket;
//! with no daemon running it starts the engine itself, does its work, waits a
//! little for the network where that helps (a message to be delivered, a
//! request to be placed), and stops. Anything queued stays in the durable
//! outbox and goes out the next time the profile runs.
//!
//! The socket speaks JSON lines: one [`Request`] per line, answered by one
//! line `{"ok": …}` or `{"error": "…"}`; after `{"subscribe": …}` the
//! daemon keeps writing `{"event": …}` lines until the client hangs up.
//! A link code travels as its text (`{"link_device": {"code": "kith-link:…",
//! "name": "desktop"}}`) and is parsed on the engine's side; a device to
//! remove by its name or peer-ID prefix (`{"remove_device": {"device":
//! "desktop"}}`).
//! Both paths produce the same JSON, which the command line prints as is
//! (`--json`) or as text.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use kith_core::engine::{
    self, DeviceInfo, Engine, EngineError, Event, FriendInfo, MessageState, MessageView,
    RequestInfo, Witness,
};
use kith_core::history::Author;
use kith_mailbox::service::ServiceSettings;
use kith_mailbox::{Volunteer, VolunteerConfig};
use kith_proto::KithId;
use kith_proto::link::LinkCode;
use kith_proto::mailbox::Limits;
use kith_proto::wire::MessageId;
use kith_store::profile::Profile;
use kith_store::{Passphrase, SledBackend, Store};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader, ReadHalf, WriteHalf};
use tokio::sync::broadcast;

pub mod transport;

pub use transport::Listener;

/// Longest request line the daemon reads.
const MAX_LINE: usize = 64 * 1024;
/// Events a slow subscriber may fall behind by before it misses some.
const EVENT_BACKLOG: usize = 1024;
/// Most clients served at once.
const MAX_CLIENTS: usize = 64;

/// What a command asks the engine.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    /// The engine's state.
    Status,
    /// The user is showing their ID: look for friend requests often for a
    /// while (`Engine::expect_requests`).
    ExpectRequests,
    /// Send a friend request.
    Add {
        /// Their ID.
        id: String,
        /// A note.
        message: String,
    },
    /// List requests (after checking the drop).
    Requests,
    /// Accept a request.
    Accept {
        /// Who.
        who: String,
    },
    /// Decline a request.
    Decline {
        /// Who.
        who: String,
    },
    /// Decline every waiting request.
    DeclineAll,
    /// Block someone.
    Block {
        /// Who.
        who: String,
    },
    /// List friends.
    Friends,
    /// Send a message.
    Send {
        /// To whom.
        to: String,
        /// The text.
        text: String,
    },
    /// Edit one of our messages.
    Edit {
        /// The friend.
        to: String,
        /// The message ID (hex).
        message: String,
        /// The new text.
        text: String,
    },
    /// Delete one of our messages.
    Delete {
        /// The friend.
        to: String,
        /// The message ID (hex).
        message: String,
    },
    /// Read a conversation.
    History {
        /// The friend.
        with: String,
        /// How many messages.
        limit: usize,
        /// Also mark everything from the friend read (and tell them).
        #[serde(default)]
        mark_read: bool,
    },
    /// Typing indicator.
    Typing {
        /// To whom.
        to: String,
        /// On or off.
        active: bool,
    },
    /// The safety number with a friend.
    Safety {
        /// The friend.
        with: String,
    },
    /// Rotate the nospam.
    RotateNospam,
    /// Set the display name.
    SetName {
        /// The name.
        name: String,
    },
    /// Link the new device showing a link code to this account.
    LinkDevice {
        /// The code's text (`kith-link:…`), as the new device shows it;
        /// parsed by the engine's side.
        code: String,
        /// The name to list the new device under (default: "device N").
        #[serde(default)]
        name: Option<String>,
    },
    /// List the account's devices.
    Devices,
    /// Remove a device from the account.
    RemoveDevice {
        /// Its name, or at least 6 leading characters of its peer ID.
        device: String,
    },
    /// Stream events.
    Subscribe,
}

/// Why a command could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// The engine refused or failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The engine could not start.
    #[error("could not start: {0}")]
    Start(String),
    /// The daemon's answer could not be read.
    #[error("the daemon: {0}")]
    Daemon(String),
    /// Bad input.
    #[error("{0}")]
    Invalid(String),
    /// A link code that cannot be used (mistyped, expired…).
    #[error(transparent)]
    LinkCode(#[from] kith_proto::link::LinkCodeError),
}

/// How to start an engine for a profile.
#[derive(Debug, Clone, Default)]
pub struct NodeOptions {
    /// Bootstrap nodes.
    pub bootstrap: Vec<kith_net::Multiaddr>,
    /// Listen addresses (default: every interface, TCP and QUIC, any port).
    pub listen: Vec<kith_net::Multiaddr>,
    /// Find peers on the LAN.
    pub mdns: bool,
    /// How often to look for friend requests.
    pub request_poll: Option<Duration>,
    /// Keep offline mail for others, up to this many megabytes.
    pub volunteer_mb: Option<u64>,
}

/// The control socket of a profile: `<profile>/kith.sock` on Unix, the
/// profile's named pipe (`\\.\pipe\kith-…`) on Windows.
pub fn socket_path(profile: &Profile) -> PathBuf {
    transport::address(profile)
}

/// The passphrase from `KITH_PASSPHRASE`, if set.
pub fn passphrase_from_env() -> Option<Passphrase> {
    std::env::var("KITH_PASSPHRASE")
        .ok()
        .filter(|p| !p.is_empty())
        .map(Passphrase::new)
}

/// Opens the profile's store and starts its engine.
pub fn start_engine(
    profile: &Profile,
    passphrase: Option<Passphrase>,
    options: &NodeOptions,
) -> Result<(Engine, impl futures::Stream<Item = Event> + Unpin + use<>), ControlError> {
    let (identity, store) = open_profile(profile, passphrase.as_ref())
        .map_err(|e| ControlError::Start(e.to_string()))?;
    start_opened(profile, passphrase, identity, store, options, None)
}

/// Why a profile could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenProfileError {
    /// The identity file.
    #[error(transparent)]
    Profile(#[from] kith_store::profile::ProfileError),
    /// The database.
    #[error(transparent)]
    Store(ControlError),
    /// A change of passphrase stopped half-way and this is the old one.
    #[error("the passphrase of profile '{0}' was being changed: give the new one")]
    GiveTheNewPassphrase(String),
}

/// Whether the identity staged by a change of passphrase is sealed.
fn staged_is_locked(profile: &Profile) -> bool {
    matches!(
        profile.load_staged(None),
        Err(kith_store::profile::ProfileError::Locked { .. })
    )
}

/// Opens the profile's identity and database with `passphrase`,
/// finishing a change of passphrase that stopped half-way
/// ([`Profile::stage_identity`]): whichever passphrase opens the database
/// decides whether the staged identity file or the old one is right.
pub fn open_profile(
    profile: &Profile,
    passphrase: Option<&Passphrase>,
) -> Result<(kith_store::profile::Identity, Store), OpenProfileError> {
    use kith_store::profile::ProfileError;
    match profile.load_identity(passphrase) {
        Ok(identity) => match open_store(profile, passphrase) {
            Ok(store) if profile.has_staged() => {
                // The right identity file is the one locked as the
                // database is (a passphrase set or removed), and opened by
                // the passphrase that opened it.
                let locked = store.is_locked();
                if staged_is_locked(profile) == locked
                    && profile.is_locked()? != locked
                    && let Ok(Some(staged)) = profile.load_staged(passphrase)
                {
                    profile.commit_staged()?;
                    return Ok((staged, store));
                }
                // A change that never reached the database.
                profile.discard_staged()?;
                Ok((identity, store))
            }
            Ok(store) => Ok((identity, store)),
            Err(e) if profile.has_staged() => {
                let _ = e;
                Err(OpenProfileError::GiveTheNewPassphrase(
                    profile.name().to_owned(),
                ))
            }
            Err(e) => Err(OpenProfileError::Store(e)),
        },
        Err(e @ (ProfileError::WrongPassphrase { .. } | ProfileError::Locked { .. }))
            if profile.has_staged() =>
        {
            // The database may already be under the new passphrase.
            let Ok(Some(identity)) = profile.load_staged(passphrase) else {
                return Err(e.into());
            };
            let store = open_store(profile, passphrase).map_err(|_| e)?;
            if staged_is_locked(profile) != store.is_locked() {
                return Err(OpenProfileError::Store(ControlError::Start(
                    "the identity file and the database disagree about the passphrase".into(),
                )));
            }
            profile.commit_staged()?;
            Ok((identity, store))
        }
        Err(e) => Err(e.into()),
    }
}

/// Starts the engine of a profile whose identity and store are already
/// open (the window opens them first, to report a wrong passphrase on its
/// unlock screen).
pub fn start_opened(
    profile: &Profile,
    passphrase: Option<Passphrase>,
    identity: kith_store::profile::Identity,
    store: Store,
    options: &NodeOptions,
    display_name: Option<String>,
) -> Result<(Engine, impl futures::Stream<Item = Event> + Unpin + use<>), ControlError> {
    let device = identity.device.clone();
    let account = identity.account.public();
    let net = net_config(identity.device.clone(), options)?;
    let mut config = engine::Config::new(identity, store, net);
    config.display_name = display_name.unwrap_or_else(|| profile.name().to_owned());
    config.profile = Some((profile.clone(), passphrase));
    if let Some(poll) = options.request_poll {
        config.request_poll = poll;
    }
    if let Some(mb) = options.volunteer_mb {
        config.volunteer = Some(open_volunteer(profile, &device, &account, mb)?);
    }
    engine::start(config).map_err(|e| ControlError::Start(e.to_string()))
}

/// Opens the profile's store (`<profile>/db`), unlocking it with
/// `passphrase`.
pub fn open_store(
    profile: &Profile,
    passphrase: Option<&Passphrase>,
) -> Result<Store, ControlError> {
    let backend = SledBackend::open(&profile.dir().join("db")).map_err(|e| {
        if e.to_string().contains("could not acquire lock") {
            ControlError::Start(format!(
                "profile '{}' is in use by another kith process",
                profile.name()
            ))
        } else {
            ControlError::Start(format!("the profile's database: {e}"))
        }
    })?;
    Store::open(
        std::sync::Arc::new(backend),
        passphrase,
        kith_core::SCHEMA_VERSION,
        &[],
    )
    .map_err(|e| ControlError::Start(e.to_string()))
}

/// The network node settings for `device` under `options`: a client
/// listening where asked (every interface, TCP and QUIC, when nothing is).
pub fn net_config(
    device: kith_proto::DeviceKeypair,
    options: &NodeOptions,
) -> Result<kith_net::Config, ControlError> {
    let mut net = kith_net::Config::new(device, kith_net::Role::Client);
    net.bootstrap = options.bootstrap.clone();
    net.listen = if options.listen.is_empty() {
        vec![
            "/ip4/0.0.0.0/tcp/0"
                .parse()
                .map_err(|_| ControlError::Invalid("listen".into()))?,
            "/ip4/0.0.0.0/udp/0/quic-v1"
                .parse()
                .map_err(|_| ControlError::Invalid("listen".into()))?,
        ]
    } else {
        options.listen.clone()
    };
    net.mdns = options.mdns;
    Ok(net)
}

/// The profile's mailbox volunteer, keeping up to `mb` megabytes in its
/// own database (`<profile>/mailbox`).
fn open_volunteer(
    profile: &Profile,
    device: &kith_proto::DeviceKeypair,
    account: &kith_proto::AccountPublicKey,
    mb: u64,
) -> Result<(Volunteer, ServiceSettings), ControlError> {
    if mb == 0 {
        return Err(ControlError::Invalid(
            "--volunteer needs at least 1 megabyte".into(),
        ));
    }
    let dir = profile.dir().join("mailbox");
    let backend = SledBackend::open(&dir)
        .map_err(|e| ControlError::Start(format!("the volunteer's database: {e}")))?;
    let config = VolunteerConfig {
        limits: Limits {
            total_quota_bytes: mb.saturating_mul(1024 * 1024),
            ..Limits::default()
        },
        own_address: Some(kith_proto::mailbox::mailbox_address(account)),
        ..VolunteerConfig::default()
    };
    let volunteer = Volunteer::open(std::sync::Arc::new(backend), device.clone(), config)
        .map_err(|e| ControlError::Start(format!("the volunteer's database: {e}")))?;
    Ok((volunteer, ServiceSettings::default()))
}

/// Parses a message ID given as 32 hex digits.
fn message_id(text: &str) -> Result<MessageId, ControlError> {
    let bytes = hex::decode(text.trim())
        .ok()
        .and_then(|b| <[u8; 16]>::try_from(b).ok())
        .ok_or_else(|| {
            ControlError::Invalid(format!("'{text}' is not a message ID (32 hex digits)"))
        })?;
    Ok(MessageId(bytes))
}

fn state_json(state: &MessageState) -> Value {
    match state {
        MessageState::Queued => json!({"state": "queued"}),
        MessageState::Delivered { at } => json!({"state": "delivered", "at": at.0}),
        MessageState::Read { at } => json!({"state": "read", "at": at.0}),
        MessageState::Failed { reason } => json!({"state": "failed", "reason": reason}),
        MessageState::Stored { volunteers, of } => {
            json!({"state": "stored", "volunteers": volunteers, "of": of})
        }
        MessageState::SentElsewhere => json!({"state": "sent-elsewhere"}),
    }
}

fn witness_json(witness: &Witness) -> Value {
    match witness {
        Witness::Witnessed => json!({"time": "witnessed"}),
        Witness::Corrected { at } => json!({"time": "corrected", "at": at.0}),
        Witness::Unwitnessed => json!({"time": "unwitnessed"}),
    }
}

fn message_json(message: &MessageView) -> Value {
    json!({
        "id": message.id.to_string(),
        "from": match message.author { Author::Me => "me", Author::Friend => "friend" },
        "sent_at": message.sent_at.0,
        "lamport": message.lamport.0,
        "body": message.body,
        "edited": message.edited,
        "deleted": message.deleted,
        "state": message.state.as_ref().map(state_json),
        "witness": message.witness.as_ref().map(witness_json),
    })
}

fn friend_json(friend: &FriendInfo) -> Value {
    json!({
        "name": friend.name,
        "id": friend.id.to_string(),
        "account_key": friend.account.to_hex(),
        "online": friend.online,
        "unread": friend.unread,
        "queued": friend.queued,
    })
}

fn request_json(request: &RequestInfo) -> Value {
    json!({
        "name": request.name,
        "id": request.id.to_string(),
        "account_key": request.account.to_hex(),
        "message": request.message,
        "sent_at": request.sent_at.0,
    })
}

fn device_json(device: &DeviceInfo) -> Value {
    json!({
        "name": device.name,
        "peer_id": device.peer_id.to_string(),
        "added_at": device.added_at,
        "this_device": device.this_device,
        "online": device.online,
    })
}

/// Parses a link code's text and refuses one that has expired by this
/// device's clock (the new device is the judge; this only fails early).
pub fn parse_link_code(text: &str) -> Result<LinkCode, ControlError> {
    let code = LinkCode::parse(text)?;
    code.check(kith_proto::wire::Timestamp::now().0 / 1000)?;
    Ok(code)
}

/// An engine event as JSON.
pub fn event_json(event: &Event) -> Value {
    match event {
        Event::Request(r) => json!({"type": "request", "request": request_json(r)}),
        Event::FriendAdded(f) => json!({"type": "friend_added", "friend": friend_json(f)}),
        Event::Message { friend, message } => json!({
            "type": "message", "friend": friend.to_hex(), "message": message_json(message)
        }),
        Event::State { friend, id, state } => json!({
            "type": "state", "friend": friend.to_hex(), "id": id.to_string(), "state": state_json(state)
        }),
        Event::Changed { friend, message } => json!({
            "type": "changed", "friend": friend.to_hex(), "message": message_json(message)
        }),
        Event::Typing { friend, active } => json!({
            "type": "typing", "friend": friend.to_hex(), "active": active
        }),
        Event::Presence { friend, online } => json!({
            "type": "presence", "friend": friend.to_hex(), "online": online
        }),
        Event::Problem(text) => json!({"type": "problem", "text": text}),
        _ => json!({"type": "other"}),
    }
}

/// Runs one request against an engine.
pub async fn execute(engine: &Engine, request: &Request) -> Result<Value, ControlError> {
    Ok(match request {
        Request::Status => {
            let status = engine.status().await?;
            json!({
                "id": status.id.to_string(),
                "device": status.peer_id.to_string(),
                "listen": status.listen.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                "connected": status.connected,
                "outbox": status.outbox,
                "volunteering": status.volunteering.map(|u| json!({
                    "items": u.items, "bytes": u.bytes, "mailboxes": u.mailboxes,
                })),
            })
        }
        Request::ExpectRequests => {
            engine.expect_requests().await?;
            json!({"expecting": true})
        }
        Request::Add { id, message } => {
            let id = KithId::parse(id)
                .map_err(|e| ControlError::Invalid(format!("invalid Kith ID: {e}")))?;
            engine.add(id, message.clone()).await?;
            json!({"requested": id.to_string()})
        }
        Request::Requests => {
            // A fresh look first; a failure to reach the DHT still lists
            // what is known.
            let _ = tokio::time::timeout(Duration::from_secs(10), engine.check_requests()).await;
            let (incoming, outgoing) = engine.requests().await?;
            json!({
                "incoming": incoming.iter().map(request_json).collect::<Vec<_>>(),
                "outgoing": outgoing.iter().map(|o| json!({
                    "id": o.id.to_string(), "sent_at": o.sent_at.0, "placed": o.dropped
                })).collect::<Vec<_>>(),
            })
        }
        Request::Accept { who } => {
            let account = engine.resolve(who).await?;
            let friend = engine.accept(account).await?;
            friend_json(&friend)
        }
        Request::Decline { who } => {
            let account = engine.resolve(who).await?;
            engine.decline(account).await?;
            json!({"declined": account.to_hex()})
        }
        Request::DeclineAll => {
            let count = engine.decline_all().await?;
            json!({"declined": count})
        }
        Request::Block { who } => {
            let account = engine.resolve(who).await?;
            engine.block(account).await?;
            json!({"blocked": account.to_hex()})
        }
        Request::Friends => {
            let friends = engine.friends().await?;
            Value::Array(friends.iter().map(friend_json).collect())
        }
        Request::Send { to, text } => {
            let friend = engine.resolve(to).await?;
            let id = engine.send(friend, text.clone()).await?;
            json!({"id": id.to_string(), "friend": friend.to_hex(), "state": state_json(&MessageState::Queued)})
        }
        Request::Edit { to, message, text } => {
            let friend = engine.resolve(to).await?;
            engine
                .edit(friend, message_id(message)?, text.clone())
                .await?;
            json!({"edited": message})
        }
        Request::Delete { to, message } => {
            let friend = engine.resolve(to).await?;
            engine.delete(friend, message_id(message)?).await?;
            json!({"deleted": message})
        }
        Request::History {
            with,
            limit,
            mark_read,
        } => {
            let friend = engine.resolve(with).await?;
            let mut messages = Vec::new();
            let mut older = None;
            let mut remaining = *limit;
            while remaining > 0 {
                let page = engine.history(friend, older, remaining.min(500)).await?;
                remaining = remaining.saturating_sub(page.messages.len());
                let mut batch: Vec<Value> = page.messages.iter().map(message_json).collect();
                batch.append(&mut messages);
                messages = batch;
                older = page.older;
                if older.is_none() {
                    break;
                }
            }
            if *mark_read {
                engine.mark_read(friend).await?;
            }
            Value::Array(messages)
        }
        Request::Typing { to, active } => {
            let friend = engine.resolve(to).await?;
            engine.typing(friend, *active).await?;
            json!({})
        }
        Request::Safety { with } => {
            let friend = engine.resolve(with).await?;
            let number = engine.safety_number(&friend);
            json!({"friend": friend.to_hex(), "safety_number": number.to_string()})
        }
        Request::RotateNospam => {
            let id = engine.rotate_nospam().await?;
            json!({"id": id.to_string()})
        }
        Request::SetName { name } => {
            engine.set_name(name.clone()).await?;
            json!({"name": name})
        }
        Request::LinkDevice { code, name } => {
            let code = parse_link_code(code)?;
            let device = engine.link_device(code, name.clone()).await?;
            device_json(&device)
        }
        Request::Devices => {
            let devices = engine.devices().await?;
            Value::Array(devices.iter().map(device_json).collect())
        }
        Request::RemoveDevice { device } => {
            let removed = engine.remove_device(device.clone()).await?;
            device_json(&removed)
        }
        Request::Subscribe => json!({}),
    })
}

/// Binds the control socket (replacing one left by a daemon that died),
/// so that it exists before the daemon says it is running.
pub async fn bind(socket: &Path) -> Result<Listener, ControlError> {
    transport::bind(socket).await
}

/// Serves the control socket bound by [`bind`] until `shutdown` resolves.
pub async fn serve(
    engine: Engine,
    mut events: impl futures::Stream<Item = Event> + Unpin,
    mut listener: Listener,
    mut out: impl FnMut(&Event),
    shutdown: impl Future<Output = ()>,
) -> Result<(), ControlError> {
    let (event_tx, _) = broadcast::channel(EVENT_BACKLOG);
    let clients = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CLIENTS));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            event = events.next() => match event {
                Some(event) => {
                    out(&event);
                    let _ = event_tx.send(event_json(&event));
                }
                None => break,
            },
            accepted = listener.accept() => {
                let Ok(stream) = accepted else { continue };
                let Ok(permit) = clients.clone().try_acquire_owned() else { continue };
                let engine = engine.clone();
                let events = event_tx.subscribe();
                tokio::spawn(async move {
                    let _ = serve_client(&engine, stream, events).await;
                    drop(permit);
                });
            }
        }
    }
    listener.close();
    let _ = engine.shutdown().await;
    Ok(())
}

/// Reads one request line of at most [`MAX_LINE`] bytes; `None` at the
/// end of the stream. A partial line stays in `buf`, so a cancelled call
/// loses nothing. An over-long line is an error (the connection closes).
async fn read_request_line(
    reader: &mut BufReader<impl AsyncRead + Unpin>,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<String>> {
    loop {
        let room = u64::try_from((MAX_LINE + 1).saturating_sub(buf.len())).unwrap_or(0);
        let read = (&mut *reader).take(room).read_until(b'\n', buf).await?;
        if buf.last() == Some(&b'\n') {
            let line = std::mem::take(buf);
            return Ok(Some(String::from_utf8_lossy(&line).trim_end().to_owned()));
        }
        if buf.len() > MAX_LINE {
            return Err(std::io::Error::other("request line too long"));
        }
        if read == 0 {
            return Ok(None);
        }
    }
}

async fn serve_client(
    engine: &Engine,
    stream: transport::Accepted,
    mut events: broadcast::Receiver<Value>,
) -> std::io::Result<()> {
    let (read, mut write) = tokio::io::split(stream);
    let mut reader = BufReader::new(read);
    let mut buf = Vec::new();
    loop {
        let line = match read_request_line(&mut reader, &mut buf).await {
            Ok(Some(line)) => line,
            Ok(None) => return Ok(()),
            Err(e) => {
                write_line(&mut write, &json!({"error": e.to_string()})).await?;
                return Ok(());
            }
        };
        let request: Request = match serde_json::from_str(&line) {
            Ok(request) => request,
            Err(e) => {
                write_line(&mut write, &json!({"error": format!("bad request: {e}")})).await?;
                continue;
            }
        };
        if matches!(request, Request::Subscribe) {
            write_line(&mut write, &json!({"ok": {}})).await?;
            // Forward events until the client hangs up; answer requests
            // that arrive meanwhile.
            loop {
                tokio::select! {
                    event = events.recv() => match event {
                        Ok(event) => write_line(&mut write, &json!({"event": event})).await?,
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            write_line(&mut write, &json!({"event": {"type": "lagged", "missed": n}})).await?;
                        }
                        Err(broadcast::error::RecvError::Closed) => return Ok(()),
                    },
                    line = read_request_line(&mut reader, &mut buf) => match line? {
                        None => return Ok(()),
                        Some(line) => {
                            let reply = match serde_json::from_str::<Request>(&line) {
                                Ok(request) => answer(engine, &request).await,
                                Err(e) => json!({"error": format!("bad request: {e}")}),
                            };
                            write_line(&mut write, &reply).await?;
                        }
                    },
                }
            }
        }
        let reply = answer(engine, &request).await;
        write_line(&mut write, &reply).await?;
    }
}

async fn answer(engine: &Engine, request: &Request) -> Value {
    match execute(engine, request).await {
        Ok(value) => json!({"ok": value}),
        Err(e) => json!({"error": e.to_string()}),
    }
}

async fn write_line(
    write: &mut (impl AsyncWriteExt + Unpin),
    value: &Value,
) -> std::io::Result<()> {
    let mut line = value.to_string();
    line.push('\n');
    write.write_all(line.as_bytes()).await
}

use tokio::io::AsyncReadExt as _;

/// A connection to a running daemon.
pub struct DaemonClient {
    lines: tokio::io::Lines<BufReader<ReadHalf<transport::Connected>>>,
    write: WriteHalf<transport::Connected>,
}

impl DaemonClient {
    /// Connects to the profile's daemon, if one runs.
    pub async fn connect(profile: &Profile) -> Option<Self> {
        let stream = transport::connect(&socket_path(profile)).await?;
        let (read, write) = tokio::io::split(stream);
        Some(Self {
            lines: BufReader::new(read).lines(),
            write,
        })
    }

    /// Sends one request and reads its answer.
    pub async fn call(&mut self, request: &Request) -> Result<Value, ControlError> {
        let line =
            serde_json::to_string(request).map_err(|e| ControlError::Daemon(e.to_string()))?;
        write_line(
            &mut self.write,
            &serde_json::from_str(&line).unwrap_or(Value::Null),
        )
        .await
        .map_err(|e| ControlError::Daemon(e.to_string()))?;
        let answer = self.next().await?;
        match answer {
            Value::Object(mut map) => {
                if let Some(ok) = map.remove("ok") {
                    Ok(ok)
                } else if let Some(Value::String(error)) = map.remove("error") {
                    Err(ControlError::Daemon(error))
                } else {
                    Err(ControlError::Daemon("unexpected answer".into()))
                }
            }
            _ => Err(ControlError::Daemon("unexpected answer".into())),
        }
    }

    /// The next line from the daemon.
    pub async fn next(&mut self) -> Result<Value, ControlError> {
        let line = self
            .lines
            .next_line()
            .await
            .map_err(|e| ControlError::Daemon(e.to_string()))?
            .ok_or_else(|| ControlError::Daemon("the daemon closed the connection".into()))?;
        serde_json::from_str(&line).map_err(|e| ControlError::Daemon(e.to_string()))
    }
}
