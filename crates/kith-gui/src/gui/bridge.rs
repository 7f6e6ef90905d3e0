//! Where the window meets the engine: opening a profile, the engine's
//! keyed subscription, and the link flow of a new computer.
//!
//! Nothing here draws. The window gets an [`Update`] stream whose first
//! item hands it the [`Engine`] handle (STYLE.md item 4); everything the
//! engine reports follows. While the window runs, the profile's control
//! socket is served as well, so `kith send …` and the other commands work
//! alongside it as they do alongside `kith daemon`.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::channel::mpsc::Sender;
use futures::{SinkExt, Stream, StreamExt};
use kith_core::engine::{Engine, Event};
use kith_core::join;
use kith_proto::{DeviceKeypair, KithId};
use kith_store::profile::{Identity, Profile, ProfileError};
use kith_store::{KdfParams, Passphrase, Store};
use serde::{Deserialize, Serialize};

use crate::control::{self, NodeOptions};

/// Engine events queued for the window; past this the window is told it
/// missed some and reloads what it shows.
const EVENT_QUEUE: usize = 256;
/// How long the new computer's user has to answer "Join this account?"
/// (the offering device's request times out at 30 s).
pub const ANSWER_WITHIN: Duration = Duration::from_secs(25);
/// Largest settings file read.
const MAX_SETTINGS_BYTES: u64 = 64 * 1024;

/// A value that is not `Clone` carried in a message that must be: the
/// first to [`take`](Slot::take) it gets it.
pub struct Slot<T>(Arc<Mutex<Option<T>>>);

impl<T> Slot<T> {
    /// Wraps `value`.
    pub fn new(value: T) -> Self {
        Self(Arc::new(Mutex::new(Some(value))))
    }

    /// The value, once.
    pub fn take(&self) -> Option<T> {
        self.0.lock().ok().and_then(|mut value| value.take())
    }
}

impl<T> Clone for Slot<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T> std::fmt::Debug for Slot<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Slot")
    }
}

/// Where profiles live: `KITH_HOME` or the platform folder, unless a
/// base folder is given (tests).
pub fn locate(home: Option<&Path>, name: &str) -> Result<Profile, ProfileError> {
    match home {
        Some(base) => Profile::in_base(base, name),
        None => Profile::locate(name),
    }
}

/// A profile whose identity and store are open, ready for its engine.
pub struct Opened {
    /// The profile.
    pub profile: Profile,
    /// Its passphrase, if locked (the engine rewrites the identity file
    /// when the nospam rotates).
    pub passphrase: Option<Passphrase>,
    /// Who this is.
    pub identity: Identity,
    /// The profile's database.
    pub store: Store,
    /// Network settings.
    pub options: NodeOptions,
    /// The name friends see, for a profile made just now.
    pub display_name: Option<String>,
}

/// What the first screen should be for a profile.
pub enum Boot {
    /// An identity in the clear: open it.
    Ready(Box<Opened>),
    /// Sealed with a passphrase.
    Locked,
    /// No identity yet: create one or link to an existing account.
    New,
}

/// Reads the profile without a passphrase, which is quick (no key
/// derivation); opens its store when the identity is in the clear.
pub fn boot(profile: &Profile, options: &NodeOptions) -> Result<Boot, String> {
    use control::OpenProfileError;
    match control::open_profile(profile, None) {
        Ok((identity, store)) => Ok(Boot::Ready(Box::new(Opened {
            profile: profile.clone(),
            passphrase: None,
            identity,
            store,
            options: options.clone(),
            display_name: None,
        }))),
        Err(OpenProfileError::Profile(ProfileError::Locked { .. })) => Ok(Boot::Locked),
        // A passphrase being removed stopped half-way: the old one finishes it.
        Err(OpenProfileError::Profile(ProfileError::WrongPassphrase { .. })) => Ok(Boot::Locked),
        Err(OpenProfileError::GiveTheNewPassphrase(_)) => Ok(Boot::Locked),
        Err(OpenProfileError::Profile(ProfileError::NoIdentity { .. })) => Ok(Boot::New),
        Err(e) => Err(e.to_string()),
    }
}

/// [`boot`] off the window's thread (opening sled takes a moment).
pub async fn boot_later(profile: Profile, options: NodeOptions) -> Result<Slot<Boot>, String> {
    blocking(move || boot(&profile, &options).map(Slot::new)).await
}

/// Opens a locked profile (key derivation takes a moment: run it off the
/// window's thread).
pub async fn unlock(
    profile: Profile,
    passphrase: Passphrase,
    options: NodeOptions,
) -> Result<Slot<Opened>, String> {
    blocking(move || {
        let (identity, store) =
            control::open_profile(&profile, Some(&passphrase)).map_err(|e| e.to_string())?;
        Ok(Slot::new(Opened {
            profile,
            passphrase: Some(passphrase),
            identity,
            store,
            options,
            display_name: None,
        }))
    })
    .await
}

/// Creates a new identity in `profile`, locked with `lock` if given, and
/// opens it.
pub async fn create(
    profile: Profile,
    name: String,
    lock: Option<Passphrase>,
    options: NodeOptions,
) -> Result<Slot<Opened>, String> {
    blocking(move || {
        let identity = Identity::generate();
        let had_folder = profile.dir().exists();
        // The database first, then the identity; if either fails, the
        // database goes again, so the profile can be created (or linked)
        // afresh instead of holding a database no identity opens.
        let written = crate::cli::create_store(&profile, lock.as_ref())
            .map_err(|e| e.to_string())
            .and_then(|store| {
                profile
                    .create_identity(
                        &identity,
                        lock.as_ref().map(|p| (p, KdfParams::INTERACTIVE)),
                    )
                    .map_err(|e| e.to_string())?;
                Ok(store)
            });
        let store = match written {
            Ok(store) => store,
            Err(e) => {
                crate::device::undo_new_profile(&profile, had_folder);
                return Err(e);
            }
        };
        Ok(Slot::new(Opened {
            profile,
            passphrase: lock,
            identity,
            store,
            options,
            display_name: Some(name),
        }))
    })
    .await
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| format!("internal error: {e}"))?
}

/// One run of the engine for an opened profile: the key of the engine
/// subscription. A new session (another ID) starts a new engine.
#[derive(Clone, Debug)]
pub struct Session {
    id: u64,
    opened: Slot<Opened>,
}

impl Session {
    /// A session for `opened`, distinct from earlier ones by `id`.
    pub fn new(id: u64, opened: Slot<Opened>) -> Self {
        Self { id, opened }
    }

    /// Which session this is.
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl Hash for Session {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.id.hash(state);
    }
}

/// What the engine subscription yields.
#[derive(Debug, Clone)]
pub enum Update {
    /// The engine runs; here is its handle.
    Ready(Engine),
    /// The control socket could not be served (commands in a terminal
    /// will not reach this window's engine).
    NoControl(String),
    /// Something happened.
    Event(Box<Event>),
    /// Events were dropped because the window fell behind: reload.
    Lagged,
    /// The engine could not start.
    Failed(String),
    /// The engine stopped.
    Stopped,
}

/// Starts the session's engine and yields its handle, then its events.
pub fn engine_updates(session: &Session) -> impl Stream<Item = Update> + use<> {
    let opened = session.opened.take();
    iced::stream::channel(16, async move |mut out: Sender<Update>| {
        let Some(opened) = opened else {
            // iced restarted the subscription of a session already used.
            let _ = out
                .send(Update::Failed(
                    "the messenger was already started once; restart Kith".into(),
                ))
                .await;
            return;
        };
        let Opened {
            profile,
            passphrase,
            identity,
            store,
            options,
            display_name,
        } = opened;
        let started = control::start_opened(
            &profile,
            passphrase,
            identity,
            store,
            &options,
            display_name,
        );
        let (engine, mut events) = match started {
            Ok(started) => started,
            Err(e) => {
                let _ = out.send(Update::Failed(e.to_string())).await;
                return;
            }
        };
        if out.send(Update::Ready(engine.clone())).await.is_err() {
            return;
        }
        let socket = control::socket_path(&profile);
        match control::bind(&socket).await {
            Ok(listener) => serve_and_forward(engine, events, listener, &mut out).await,
            Err(e) => {
                let _ = out.send(Update::NoControl(e.to_string())).await;
                while let Some(event) = events.next().await {
                    if out.send(Update::Event(Box::new(event))).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = out.send(Update::Stopped).await;
    })
}

async fn serve_and_forward(
    engine: Engine,
    events: impl Stream<Item = Event> + Unpin,
    listener: control::Listener,
    out: &mut Sender<Update>,
) {
    let (tx, mut rx) = tokio::sync::mpsc::channel(EVENT_QUEUE);
    let lagged = Arc::new(AtomicBool::new(false));
    let dropped = lagged.clone();
    let serve = control::serve(
        engine,
        events,
        listener,
        move |event| {
            if tx.try_send(event.clone()).is_err() {
                dropped.store(true, Ordering::Relaxed);
            }
        },
        std::future::pending(),
    );
    let forward = async {
        while let Some(event) = rx.recv().await {
            if lagged.swap(false, Ordering::Relaxed) && out.send(Update::Lagged).await.is_err() {
                return;
            }
            if out.send(Update::Event(Box::new(event))).await.is_err() {
                return;
            }
        }
    };
    let _ = futures::join!(serve, forward);
}

/// Why a GUI settings file could not be used.
pub type SettingsError = String;

/// The window's own settings, kept in `<profile>/gui.json`. Network
/// settings take effect when the app next starts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// `None` follows the system.
    pub theme: Option<ThemeChoice>,
    /// Bootstrap nodes, besides those given on the command line.
    pub bootstrap: Vec<String>,
    /// Keep offline mail for others, up to this many megabytes.
    pub volunteer_mb: Option<u64>,
    /// Find friends on the local network.
    pub mdns: bool,
    /// No desktop notifications for new messages.
    pub notifications_off: bool,
    /// Notifications say who wrote, not what.
    pub notification_text_hidden: bool,
}

/// A theme the user picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ThemeChoice {
    /// Light.
    Light,
    /// Dark.
    Dark,
}

fn settings_path(profile: &Profile) -> PathBuf {
    profile.dir().join("gui.json")
}

impl Settings {
    /// The profile's settings; defaults when it has none. A file that
    /// cannot be read is reported and left alone.
    pub fn load(profile: &Profile) -> Result<Self, SettingsError> {
        let path = settings_path(profile);
        match kith_store::private::read_limited(&path, MAX_SETTINGS_BYTES) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                format!(
                    "{}: not valid settings ({e}); defaults used",
                    path.display()
                )
            }),
            Err(e) if e.is_not_found() => Ok(Self::default()),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    /// Writes the settings (atomically).
    pub fn save(&self, profile: &Profile) -> Result<(), SettingsError> {
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| e.to_string())?;
        let path = settings_path(profile);
        kith_store::private::create_dir(profile.dir()).map_err(|e| e.to_string())?;
        kith_store::private::replace(&path, &bytes).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The node options for the next start: the command line's, plus
    /// these settings. Entries that cannot be used (a mistyped bootstrap
    /// address, 0 MB) are left out and named in the warnings.
    pub fn apply(&self, options: &NodeOptions) -> (NodeOptions, Vec<String>) {
        let mut options = options.clone();
        let mut warnings = Vec::new();
        for address in &self.bootstrap {
            match address.parse() {
                Ok(parsed) => {
                    if !options.bootstrap.contains(&parsed) {
                        options.bootstrap.push(parsed);
                    }
                }
                Err(e) => warnings.push(format!("bootstrap node '{address}' left out: {e}")),
            }
        }
        if options.volunteer_mb.is_none() {
            options.volunteer_mb = self.volunteer_mb.filter(|mb| *mb > 0);
        }
        options.mdns |= self.mdns;
        (options, warnings)
    }
}

/// The user's answer to an offer, sent back to the link flow.
pub type Answer = Slot<tokio::sync::oneshot::Sender<bool>>;

/// How linking this computer to an existing account goes.
#[derive(Debug, Clone)]
pub enum JoinUpdate {
    /// Show this code (text; the QR code holds it in capitals).
    Code {
        /// The code.
        text: String,
        /// When it stops working, Unix seconds.
        expires: u64,
    },
    /// An existing device offers its account: ask the user.
    Offer {
        /// The account's display name.
        name: String,
        /// Its Kith ID.
        id: KithId,
        /// Send `true` to join.
        answer: Answer,
    },
    /// The offer was not answered in time and was declined; the code
    /// still works for another try.
    Withdrawn,
    /// Joined: the profile now holds the account.
    Linked {
        /// The account's display name.
        name: String,
    },
    /// Linking stopped.
    Failed(String),
}

/// Links `profile` (which must be unused) to an existing account: makes a
/// code, waits for an offer, asks the user, and on yes writes the account
/// into the profile (locked with `lock` if given). A "no" keeps the code
/// usable for another try.
pub fn join_account(
    profile: Profile,
    options: NodeOptions,
    lock: Option<Passphrase>,
) -> impl Stream<Item = JoinUpdate> {
    iced::stream::channel(4, async move |mut out: Sender<JoinUpdate>| {
        let result = run_join(&profile, &options, lock.as_ref(), &mut out).await;
        let last = match result {
            Ok(name) => JoinUpdate::Linked { name },
            Err(e) => JoinUpdate::Failed(e),
        };
        let _ = out.send(last).await;
    })
}

async fn run_join(
    profile: &Profile,
    options: &NodeOptions,
    lock: Option<&Passphrase>,
    out: &mut Sender<JoinUpdate>,
) -> Result<String, String> {
    crate::device::check_unused(profile).map_err(|e| e.to_string())?;
    let net = control::net_config(DeviceKeypair::generate(), options).map_err(|e| e.to_string())?;
    let mut joining = join::start(net).await.map_err(|e| e.to_string())?;
    let code = joining.code();
    let shown = JoinUpdate::Code {
        text: code.to_text(),
        expires: code.expires(),
    };
    out.send(shown).await.map_err(|_| "closed".to_owned())?;
    loop {
        let offer = joining.next_offer().await.map_err(|e| e.to_string())?;
        let name = offer.display_name().to_owned();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let ask = JoinUpdate::Offer {
            name: name.clone(),
            id: offer.kith_id(),
            answer: Slot::new(tx),
        };
        out.send(ask).await.map_err(|_| "closed".to_owned())?;
        let answer = tokio::time::timeout(ANSWER_WITHIN, rx).await;
        if !matches!(answer, Ok(Ok(true))) {
            if answer.is_err() {
                out.send(JoinUpdate::Withdrawn)
                    .await
                    .map_err(|_| "closed".to_owned())?;
            }
            joining.decline(offer);
            continue;
        }
        let device = joining.device().clone();
        joining
            .accept(offer, |bundle| {
                crate::device::commit(profile, device, bundle, lock)
            })
            .await
            .map_err(|e| e.to_string())?;
        return Ok(name);
    }
}
