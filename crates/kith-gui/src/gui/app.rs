//! The window's state and how it changes: [`App::update`] turns what the
//! user does into engine calls (as [`Task`]s, so the window never waits
//! on the network) and engine answers and events into state. Drawing is
//! in [`super::view`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use iced::widget::{operation, qr_code, scrollable, text_editor};
use iced::{Subscription, Task, Theme, keyboard, window};
use kith_core::engine::{
    DeviceInfo, Engine, EngineError, Event, FriendInfo, HistoryPage, MessageView, OutgoingInfo,
    RequestInfo, Status,
};
use kith_core::history::{Author, Cursor};
use kith_proto::link::LinkCode;
use kith_proto::wire::MessageId;
use kith_proto::{AccountPublicKey, KithId, qr};
use kith_store::Passphrase;
use kith_store::profile::Profile;

use super::bridge::{
    self, Answer, Boot, JoinUpdate, Opened, Session, Settings, Slot, ThemeChoice, Update,
};
use crate::control::NodeOptions;

/// Messages loaded when a conversation opens, and per step back.
pub const PAGE: usize = 50;
/// Send "typing" again this often while the user types.
const TYPING_REFRESH: Duration = Duration::from_secs(5);
/// Stop "typing" after this long without a keystroke.
const TYPING_IDLE: Duration = Duration::from_secs(6);
/// A friend shown as typing with no word since for this long stops being
/// shown (their "stopped" may have been lost).
const TYPING_SHOWN: Duration = Duration::from_secs(10);
/// How long news stays at the foot of the window.
const NEWS_SHOWN: Duration = Duration::from_secs(8);
/// At most one desktop notification this often.
const NOTIFY_EVERY: Duration = Duration::from_secs(3);
/// Longest message text in a notification, in characters.
const PREVIEW_CHARS: usize = 140;
/// How often the connection line is brought up to date.
const STATUS_EVERY: Duration = Duration::from_secs(10);
/// Longest text pasted into a one-line field.
const MAX_FIELD: usize = 4096;
/// The conversation's scrollable.
pub const MESSAGES: &str = "messages";
/// The composer.
pub const COMPOSER: &str = "composer";
/// The first-run name field.
pub const SETUP_NAME: &str = "setup-name";
/// The first-run passphrase fields.
pub const SETUP_PASSPHRASE: [&str; 2] = ["setup-passphrase", "setup-repeat"];
/// The unlock field.
pub const UNLOCK: &str = "unlock";
/// The add-a-friend ID field.
pub const ADD_ID: &str = "add-id";
/// The add-a-friend note field.
pub const ADD_NOTE: &str = "add-note";
/// The add-a-friend picture path field.
pub const ADD_IMAGE: &str = "add-image";
/// The settings' passphrase fields: current, new, again.
pub const PASS_FIELDS: [&str; 3] = ["pass-current", "pass-new", "pass-repeat"];
/// The link-a-device code field.
pub const LINK_CODE: &str = "link-code";
/// The link-a-device name field.
pub const LINK_NAME: &str = "link-name";

/// How the window starts.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The profile.
    pub profile: String,
    /// Where profiles live, instead of `KITH_HOME` or the platform folder.
    pub home: Option<PathBuf>,
    /// Network settings from the command line.
    pub node: NodeOptions,
    /// Measurement mode for `kith-bench gui` (`KITH_GUI_REPORT=1`): print
    /// JSON lines on standard output when the first frame is drawn, and
    /// after opening the first friend's conversation and scrolling back
    /// through up to [`REPORT_MESSAGES`] messages. The window stays open.
    pub report: Option<Instant>,
}

/// How many messages the measurement mode scrolls back through.
pub const REPORT_MESSAGES: usize = 1000;

/// Where the measurement mode is.
#[derive(Debug, Default)]
struct Report {
    first_frame: bool,
    loaded: bool,
    done: bool,
}

/// The screens of a running profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Screen {
    /// Friends and conversations.
    Chats,
    /// This account's ID and QR code.
    MyId,
    /// Send a friend request.
    AddFriend,
    /// Requests waiting for an answer.
    Requests,
    /// This account's computers.
    Devices,
    /// Settings.
    Settings,
}

impl Screen {
    /// Every screen, in the order of the side bar.
    pub const ALL: [Screen; 6] = [
        Screen::Chats,
        Screen::MyId,
        Screen::AddFriend,
        Screen::Requests,
        Screen::Devices,
        Screen::Settings,
    ];

    /// Its name in the side bar.
    pub fn label(self) -> &'static str {
        match self {
            Screen::Chats => "Chats",
            Screen::MyId => "My ID",
            Screen::AddFriend => "Add a friend",
            Screen::Requests => "Requests",
            Screen::Devices => "Devices",
            Screen::Settings => "Settings",
        }
    }
}

/// Something to do once the user confirms it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Confirm {
    /// Pick a new nospam.
    Rotate,
    /// Withdraw one of our messages.
    Delete(MessageId),
    /// Remove a device from the account.
    RemoveDevice {
        /// Its name.
        name: String,
        /// Its peer ID.
        peer: String,
    },
    /// Block whoever sent this request.
    Block(AccountPublicKey),
    /// Decline every waiting request.
    DeclineAll,
}

/// Everything the window reacts to.
#[derive(Debug, Clone)]
#[allow(missing_docs)]
pub enum Message {
    // First run and unlock.
    SetupName(String),
    SetupPassphrase(String),
    SetupRepeat(String),
    Create,
    /// The profile was read at start.
    Booted(Result<Slot<Boot>, String>),
    Opened(Result<Slot<Opened>, String>),
    UnlockPassphrase(String),
    Unlock,
    StartJoin,
    CancelJoin,
    Join(JoinUpdate),
    AnswerOffer(bool),

    // The engine.
    Engine(Update),
    Status(Result<Status, String>),
    Friends(Result<Vec<FriendInfo>, String>),
    Requests(Result<(Vec<RequestInfo>, Vec<OutgoingInfo>), String>),
    Devices(Result<Vec<DeviceInfo>, String>),
    History {
        friend: AccountPublicKey,
        older: bool,
        page: Result<HistoryPage, String>,
    },
    /// An engine call finished: what to tell the user, or why it failed.
    Done(Result<Option<String>, String>),
    /// An engine call finished that changes nothing shown.
    Quiet(Result<(), String>),
    Sent(Result<MessageId, String>),
    /// An edit was saved, or not.
    Edited(Result<(), String>),
    /// A friend request went out, or not.
    Requested(Result<(), String>),
    /// A device was linked (its name), or not.
    LinkedDevice(Result<String, String>),
    /// A conversation was marked read.
    Read(Result<(), String>),
    /// The text read from a picture of a QR code.
    ImageRead(Picture, Result<String, String>),
    Rotated(Result<KithId, String>),
    Dismiss,
    /// The news shown as the `n`th notice has been up long enough.
    Expire(u64),

    // Moving around.
    Show(Screen),
    Open(AccountPublicKey),
    Scrolled(scrollable::Viewport),
    ToggleSafety,

    // The conversation.
    Compose(text_editor::Action),
    /// Show Edit and Delete on this message of ours.
    Select(MessageId),
    Send,
    Edit(MessageId),
    CancelEdit,

    // Confirmations.
    Ask(Confirm),
    Confirmed,
    NotConfirmed,

    /// Put this text on the clipboard.
    Copy(String),

    /// Open a file chooser for a picture of a QR code.
    ChooseImage(Picture),
    /// The file chosen, if any.
    ImageChosen(Picture, Option<PathBuf>),

    // Add a friend.
    AddId(String),
    AddNote(String),
    AddImage(String),
    ReadImage,
    SendRequest,

    // Requests.
    Accept(AccountPublicKey),
    Decline(AccountPublicKey),
    CheckRequests,

    // Devices.
    LinkCode(String),
    LinkName(String),
    LinkImage(String),
    ReadLinkImage,
    LinkDevice,

    // Settings.
    PassCurrent(String),
    PassNew(String),
    PassRepeat(String),
    ChangePassphrase,
    /// The passphrase changed (whether the profile is locked now), or not.
    PassphraseChanged(Result<bool, String>),
    SetTheme(Option<ThemeChoice>),
    BootstrapText(String),
    VolunteerText(String),
    SetMdns(bool),
    SaveSettings,
    Set(Toggle),

    // The window.
    /// A frame was drawn (measurement mode only).
    Frame(Instant),
    Tick,
    /// Time to ask the engine how connected it is.
    RefreshStatus,
    Key(keyboard::Event),
    Window(window::Event),
    CloseRequested(window::Id),
    /// SIGTERM or SIGINT: stop as the close button would.
    Terminate,
    /// The engine has stopped.
    Closed,
    /// Exit even though the bridge has not finished (see `Closed`).
    Exit,
}

/// The whole window.
pub struct App {
    options: Options,
    profile: Option<Profile>,
    /// The window's settings for this profile.
    pub settings: Settings,
    /// What is shown.
    pub phase: Phase,
    /// An error or a piece of news for the user, shown until dismissed.
    pub notice: Option<Notice>,
    sessions: u64,
    session: Option<Session>,
    /// The window has the keyboard focus.
    pub focused: bool,
    closing: bool,
    closed: bool,
    /// The bridge has finished: the control socket is gone.
    bridge_stopped: bool,
    report: Option<Report>,
    notified: Option<(Instant, (String, String))>,
    notices: u64,
}

/// A line at the top of the window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// Something went wrong; nothing was lost.
    Error(String),
    /// Something the user should know.
    Info(String),
}

/// The stages of the window.
pub enum Phase {
    /// The profile cannot be used; why.
    Fatal(String),
    /// No identity yet.
    Setup(Box<Setup>),
    /// The identity is locked.
    Unlock(Unlock),
    /// The engine is starting.
    Starting,
    /// The messenger.
    Running(Box<Main>),
}

/// The first-run screen.
#[derive(Default)]
pub struct Setup {
    /// The display name typed.
    pub name: String,
    /// An optional passphrase.
    pub passphrase: String,
    /// The passphrase again.
    pub repeat: String,
    /// Creating.
    pub busy: bool,
    /// Linking to an existing account instead.
    pub join: Option<Joining>,
}

/// This computer waiting to be linked to an account.
#[derive(Default)]
pub struct Joining {
    /// The code to show, and its QR code.
    pub code: Option<(String, qr_code::Data)>,
    /// When the code expires, Unix seconds.
    pub expires: u64,
    /// An account offered, waiting for the user's answer.
    pub offer: Option<(String, KithId, Answer)>,
    /// The user said yes; the account is being written.
    pub accepted: bool,
    /// Handle to stop the flow.
    handle: Option<iced::task::Handle>,
}

/// The unlock screen.
#[derive(Default)]
pub struct Unlock {
    /// The passphrase typed.
    pub passphrase: String,
    /// Unlocking.
    pub busy: bool,
}

/// A running profile.
pub struct Main {
    /// The engine.
    pub engine: Engine,
    /// The current screen.
    pub screen: Screen,
    /// This account's ID and its QR code.
    pub id: Option<(KithId, qr_code::Data)>,
    /// The engine's status.
    pub status: Option<Status>,
    /// Friends, in the engine's order.
    pub friends: Vec<FriendInfo>,
    /// Requests waiting for us, and ours not yet answered.
    pub requests: Vec<RequestInfo>,
    /// Our requests not yet answered.
    pub outgoing: Vec<OutgoingInfo>,
    /// This account's devices.
    pub devices: Vec<DeviceInfo>,
    /// The open conversation.
    pub chat: Option<Chat>,
    /// Friends typing, and when they last said so.
    pub typing: HashMap<AccountPublicKey, Instant>,
    /// Something waiting for the user's yes.
    pub confirm: Option<Confirm>,
    /// Our message whose Edit and Delete are shown.
    pub selected: Option<MessageId>,
    /// The add-a-friend form.
    pub add: AddForm,
    /// The link-a-device form.
    pub link: LinkForm,
    /// The settings form.
    pub settings: SettingsForm,
    /// The display name to set once running (a new profile).
    rename: Option<String>,
    /// News for the user from the last update.
    news: Option<Notice>,
    /// A friends list is awaited.
    friends_asked: bool,
    /// Something changed since it was asked for.
    friends_stale: bool,
}

/// The open conversation.
pub struct Chat {
    /// With whom.
    pub friend: AccountPublicKey,
    /// Loaded messages, oldest first.
    pub messages: Vec<MessageView>,
    /// Where older messages start, if there are any.
    pub older: Option<Cursor>,
    /// Older messages are being loaded.
    pub loading: bool,
    /// The newest messages are being loaded again.
    pub refreshing: bool,
    /// Something changed since they were asked for.
    stale: bool,
    /// What was in the composer before an edit began.
    draft: Option<String>,
    /// Sent or saved, not yet confirmed: put back if it fails.
    unsent: Option<(String, Option<MessageId>)>,
    /// What the user is writing.
    pub composer: text_editor::Content,
    /// The message being edited, if any.
    pub editing: Option<MessageId>,
    /// The last keystroke.
    last_key: Option<Instant>,
    /// When "typing" was last sent.
    typing_sent: Option<Instant>,
    /// The safety number is shown.
    pub show_safety: bool,
    /// The safety number.
    pub safety: String,
}

/// The add-a-friend form.
#[derive(Default)]
pub struct AddForm {
    /// The ID or link typed or pasted.
    pub id: String,
    /// The note.
    pub note: String,
    /// A path to an image of a QR code.
    pub image: String,
    /// Sending.
    pub busy: bool,
}

/// The link-a-device form.
#[derive(Default)]
pub struct LinkForm {
    /// The code the new computer shows.
    pub code: String,
    /// A name for it.
    pub name: String,
    /// A path to an image of its QR code.
    pub image: String,
    /// Linking.
    pub busy: bool,
}

/// The settings form.
#[derive(Default)]
pub struct SettingsForm {
    /// The profile is locked with a passphrase.
    pub locked: bool,
    /// The current passphrase typed.
    pub current: String,
    /// The new one.
    pub new: String,
    /// The new one again.
    pub repeat: String,
    /// Changing it.
    pub changing: bool,
    /// Bootstrap nodes, separated by spaces or commas.
    pub bootstrap: String,
    /// Megabytes to volunteer, empty for none.
    pub volunteer: String,
    /// mDNS on the LAN.
    pub mdns: bool,
}

/// What a picture of a QR code is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Picture {
    /// A friend's Kith ID.
    FriendId,
    /// A new computer's link code.
    LinkCode,
}

/// Settings that apply at once.
#[derive(Debug, Clone, Copy)]
pub enum Toggle {
    /// Desktop notifications on.
    Notifications(bool),
    /// Message text in notifications.
    NotificationText(bool),
}

impl SettingsForm {
    fn from(settings: &Settings) -> Self {
        Self {
            locked: false,
            current: String::new(),
            new: String::new(),
            repeat: String::new(),
            changing: false,
            bootstrap: settings.bootstrap.join(" "),
            volunteer: settings
                .volunteer_mb
                .map(|mb| mb.to_string())
                .unwrap_or_default(),
            mdns: settings.mdns,
        }
    }
}

fn err(e: EngineError) -> String {
    e.to_string()
}

fn clip(mut text: String) -> String {
    if text.len() > MAX_FIELD {
        let mut end = MAX_FIELD;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// The QR code of a Kith ID, as `kith id show --qr` draws it.
pub fn id_qr(id: &KithId) -> Option<qr_code::Data> {
    qr_code::Data::with_error_correction(
        id.to_uri().to_ascii_uppercase(),
        qr_code::ErrorCorrection::Medium,
    )
    .ok()
}

impl App {
    /// The window for `options`: the first screen, and what to run.
    pub fn new(options: Options) -> (Self, Task<Message>) {
        let mut app = App {
            options,
            profile: None,
            settings: Settings::default(),
            phase: Phase::Starting,
            notice: None,
            sessions: 0,
            session: None,
            focused: true,
            closing: false,
            closed: false,
            bridge_stopped: false,
            report: None,
            notified: None,
            notices: 0,
        };
        if app.options.report.is_some() {
            app.report = Some(Report::default());
        }
        let profile = match bridge::locate(app.options.home.as_deref(), &app.options.profile) {
            Ok(profile) => profile,
            Err(e) => {
                app.phase = Phase::Fatal(e.to_string());
                return (app, Task::none());
            }
        };
        match Settings::load(&profile) {
            Ok(settings) => app.settings = settings,
            Err(e) => app.notice = Some(Notice::Error(e)),
        }
        app.profile = Some(profile.clone());
        let options = app.node_options();
        let task = Task::perform(bridge::boot_later(profile, options), Message::Booted);
        (app, task)
    }

    /// The node options for the next start; settings that cannot be used
    /// are left out and named at the top of the window.
    fn node_options(&mut self) -> NodeOptions {
        let (options, warnings) = self.settings.apply(&self.options.node);
        if !warnings.is_empty() {
            self.notice = Some(Notice::Error(format!(
                "Settings: {}. Fix them under Settings.",
                warnings.join("; ")
            )));
        }
        options
    }

    fn booted(&mut self, boot: Result<Slot<Boot>, String>) -> Task<Message> {
        match boot.map(|slot| slot.take()) {
            Ok(Some(Boot::Ready(opened))) => self.start(Slot::new(*opened)),
            Ok(Some(Boot::Locked)) => self.phase = Phase::Unlock(Unlock::default()),
            Ok(Some(Boot::New)) => self.phase = Phase::Setup(Box::default()),
            Ok(None) => {}
            Err(e) => self.phase = Phase::Fatal(e),
        }
        Task::none()
    }

    fn start(&mut self, opened: Slot<Opened>) {
        self.sessions += 1;
        self.session = Some(Session::new(self.sessions, opened));
        self.phase = Phase::Starting;
    }

    /// The engine session to subscribe to, if one runs.
    pub fn session(&self) -> Option<&Session> {
        self.session.as_ref()
    }

    /// The engine has stopped after the user closed the window.
    pub fn closed(&self) -> bool {
        self.closed
    }

    /// The window title.
    pub fn title(&self) -> String {
        match &self.phase {
            Phase::Running(main) => match main.chat.as_ref().and_then(|c| main.friend(&c.friend)) {
                Some(friend) => format!("{} — Kith", friend.name),
                None => "Kith".into(),
            },
            _ => "Kith".into(),
        }
    }

    /// The theme: the user's pick, or `None` to follow the system.
    pub fn theme(&self) -> Option<Theme> {
        self.settings.theme.map(|choice| match choice {
            ThemeChoice::Light => Theme::Light,
            ThemeChoice::Dark => Theme::Dark,
        })
    }

    /// What the window listens to besides the user.
    pub fn subscription(&self) -> Subscription<Message> {
        let mut subscriptions = vec![
            Subscription::run(signals),
            window::close_requests().map(Message::CloseRequested),
            window::events().map(|(_, event)| Message::Window(event)),
            keyboard::listen().map(Message::Key),
        ];
        if self.report.as_ref().is_some_and(|r| !r.done) {
            subscriptions.push(window::frames().map(Message::Frame));
        }
        if let Some(session) = &self.session {
            subscriptions.push(
                Subscription::run_with(session.clone(), bridge::engine_updates)
                    .map(Message::Engine),
            );
        }
        if matches!(self.phase, Phase::Running(_)) {
            subscriptions.push(iced::time::every(STATUS_EVERY).map(|_| Message::RefreshStatus));
        }
        if let Phase::Running(main) = &self.phase
            && (main.chat.as_ref().is_some_and(|c| c.typing_sent.is_some())
                || !main.typing.is_empty())
        {
            subscriptions.push(iced::time::every(Duration::from_secs(1)).map(|_| Message::Tick));
        }
        Subscription::batch(subscriptions)
    }

    fn fail(&mut self, why: String) -> Task<Message> {
        self.notice = Some(Notice::Error(why));
        Task::none()
    }

    /// Handles one message.
    pub fn update(&mut self, message: Message) -> Task<Message> {
        if let Message::Key(keyboard::Event::KeyPressed {
            key: keyboard::Key::Named(keyboard::key::Named::Escape),
            ..
        }) = &message
        {
            self.notice = None;
        }
        if let Message::Expire(shown) = message {
            if shown == self.notices {
                self.notice = None;
            }
            return Task::none();
        }
        let before = self.notice.clone();
        let mut task = self.handle(message);
        if self.notice != before {
            self.notices += 1;
            // News goes away by itself; errors stay until dismissed.
            if let Some(Notice::Info(_)) = &self.notice {
                let shown = self.notices;
                task = Task::batch([
                    task,
                    Task::perform(tokio::time::sleep(NEWS_SHOWN), move |()| {
                        Message::Expire(shown)
                    }),
                ]);
            }
        }
        if self.report.is_some() {
            return Task::batch([task, self.measure()]);
        }
        task
    }

    /// The measurement mode's next step: open the first conversation and
    /// scroll back through it.
    fn measure(&mut self) -> Task<Message> {
        let (Some(report), Phase::Running(main)) = (&mut self.report, &mut self.phase) else {
            return Task::none();
        };
        let Some(chat) = &mut main.chat else {
            return match main.friends.first() {
                Some(friend) => {
                    let friend = friend.account;
                    main.open(friend)
                }
                None => Task::none(),
            };
        };
        if report.loaded || chat.loading || chat.refreshing {
            return Task::none();
        }
        if chat.older.is_some() && chat.messages.len() < REPORT_MESSAGES {
            chat.loading = true;
            let (friend, older) = (chat.friend, chat.older.clone());
            return main.history(friend, older, PAGE);
        }
        report.loaded = true;
        Task::none()
    }

    fn on_frame(&mut self) -> Task<Message> {
        let (Some(report), Some(started)) = (&mut self.report, self.options.report) else {
            return Task::none();
        };
        let ms = started.elapsed().as_millis();
        if !report.first_frame {
            report.first_frame = true;
            println!("{{\"event\":\"first_frame\",\"ms\":{ms}}}");
        } else if report.loaded && !report.done {
            report.done = true;
            let messages = match &self.phase {
                Phase::Running(main) => main.chat.as_ref().map_or(0, |c| c.messages.len()),
                _ => 0,
            };
            println!("{{\"event\":\"conversation\",\"messages\":{messages},\"ms\":{ms}}}");
        }
        Task::none()
    }

    fn handle(&mut self, message: Message) -> Task<Message> {
        match message {
            Message::Frame(_) => self.on_frame(),
            Message::Booted(boot) => self.booted(boot),
            Message::Copy(text) => {
                self.notice = Some(Notice::Info("Copied to the clipboard.".into()));
                iced::clipboard::write(text)
            }
            Message::Dismiss => {
                self.notice = None;
                Task::none()
            }
            Message::Engine(update) => self.on_engine(update),
            Message::CloseRequested(id) => self.close(id),
            Message::Terminate => self.terminate(),
            Message::Closed => {
                self.closed = true;
                if self.bridge_stopped {
                    return iced::exit();
                }
                // The bridge removes the control socket once the engine's
                // events end, a moment after the engine stops: exit when it
                // reports that (`Update::Stopped`), or after 2 s at most.
                Task::perform(tokio::time::sleep(Duration::from_secs(2)), |()| {
                    Message::Exit
                })
            }
            Message::Exit => iced::exit(),
            Message::Window(event) => {
                match event {
                    window::Event::Focused => {
                        self.focused = true;
                        if let Phase::Running(main) = &mut self.phase {
                            return main.read_open_chat();
                        }
                    }
                    window::Event::Unfocused => self.focused = false,
                    _ => {}
                }
                Task::none()
            }
            Message::SetTheme(theme) => {
                self.settings.theme = theme;
                self.save_settings(None)
            }
            Message::SaveSettings => self.save_form(),
            Message::Set(toggle) => {
                match toggle {
                    Toggle::Notifications(on) => self.settings.notifications_off = !on,
                    Toggle::NotificationText(on) => self.settings.notification_text_hidden = !on,
                }
                self.save_settings(None)
            }
            message => match &mut self.phase {
                Phase::Setup(_) | Phase::Unlock(_) | Phase::Starting | Phase::Fatal(_) => {
                    self.update_first_run(message)
                }
                Phase::Running(main) => {
                    let task = match main.update(message) {
                        Ok(task) => task,
                        Err(notice) => {
                            self.notice = Some(notice);
                            Task::none()
                        }
                    };
                    if let Some(news) = main.news.take() {
                        self.notice = Some(news);
                    }
                    task
                }
            },
        }
    }

    fn close(&mut self, id: window::Id) -> Task<Message> {
        // A second close request closes at once.
        if self.closing {
            return window::close(id);
        }
        self.terminate()
    }

    /// Stops as the close button does (also on SIGTERM and SIGINT).
    fn terminate(&mut self) -> Task<Message> {
        self.closing = true;
        if let Phase::Setup(setup) = &mut self.phase
            && let Some(join) = &mut setup.join
            && let Some(handle) = join.handle.take()
        {
            handle.abort();
        }
        match &self.phase {
            // Stop the engine first: it flushes, and tells this account's
            // other devices what they lack.
            Phase::Running(main) => Self::shut_down(main.engine.clone()),
            // An engine is starting: it is stopped as soon as it is ready
            // (or exits at once if it fails).
            _ if self.session.is_some() => Task::none(),
            _ => iced::exit(),
        }
    }

    fn shut_down(engine: Engine) -> Task<Message> {
        Task::perform(async move { engine.shutdown().await }, |_| Message::Closed)
    }

    fn on_engine(&mut self, update: Update) -> Task<Message> {
        match update {
            Update::Ready(engine) if self.closing => Self::shut_down(engine),
            Update::Ready(engine) => {
                let rename = match &mut self.phase {
                    Phase::Setup(setup) => Some(setup.name.trim().to_owned()),
                    _ => None,
                };
                let mut main = Main::new(engine, &self.settings);
                main.settings.locked = self
                    .profile
                    .as_ref()
                    .and_then(|p| p.is_locked().ok())
                    .unwrap_or(false);
                main.rename = rename.filter(|name| !name.is_empty());
                let task = main.refresh_all();
                let rename = main.set_name();
                self.phase = Phase::Running(Box::new(main));
                Task::batch([task, rename])
            }
            Update::NoControl(why) => {
                self.notice = Some(Notice::Info(format!(
                    "Commands in a terminal cannot reach this window: {why}"
                )));
                Task::none()
            }
            Update::Failed(_) if self.closing => iced::exit(),
            Update::Failed(why) => {
                self.session = None;
                self.phase = Phase::Fatal(why);
                Task::none()
            }
            Update::Stopped => {
                self.bridge_stopped = true;
                if self.closed {
                    return iced::exit();
                }
                if !self.closing {
                    self.session = None;
                    self.phase = Phase::Fatal("the messenger stopped".into());
                }
                Task::none()
            }
            Update::Lagged => match &mut self.phase {
                Phase::Running(main) => Task::batch([main.refresh_all(), main.reload_chat()]),
                _ => Task::none(),
            },
            Update::Event(event) => {
                let notify = self.notify(&event);
                match &mut self.phase {
                    Phase::Running(main) => {
                        Task::batch([main.on_event(*event, self.focused), notify])
                    }
                    _ => Task::none(),
                }
            }
        }
    }

    /// A desktop notification for a friend's new message while the window
    /// is not focused, unless turned off; at most one per
    /// [`NOTIFY_EVERY`] (the unread counts tell the rest).
    fn notify(&mut self, event: &Event) -> Task<Message> {
        let Event::Message { friend, message } = event else {
            return Task::none();
        };
        let Phase::Running(main) = &self.phase else {
            return Task::none();
        };
        if self.focused || self.settings.notifications_off || message.author != Author::Friend {
            return Task::none();
        }
        let now = Instant::now();
        if self
            .notified
            .as_ref()
            .is_some_and(|(at, _)| now.duration_since(*at) < NOTIFY_EVERY)
        {
            return Task::none();
        }
        let name = main
            .friend(friend)
            .map_or_else(|| "A friend".to_owned(), |f| f.name.clone());
        let body = if self.settings.notification_text_hidden {
            "New message".to_owned()
        } else {
            preview(&message.body)
        };
        self.notified = Some((now, (name.clone(), body.clone())));
        Task::future(async move {
            // The desktop may have no notification service (a server, a
            // bare X session): nothing to tell the user then.
            let _ = tokio::task::spawn_blocking(move || {
                let mut notification = notify_rust::Notification::new();
                notification.appname("Kith").summary(&name).body(&body);
                // The desktop file's name lets the notification service show
                // Kith's icon and group its notifications with the window.
                #[cfg(all(unix, not(target_os = "macos")))]
                notification
                    .icon(super::APP_ID)
                    .hint(notify_rust::Hint::DesktopEntry(super::APP_ID.into()));
                notification.show()
            })
            .await;
        })
        .discard()
    }

    /// The last notification shown: who and what.
    pub fn last_notification(&self) -> Option<&(String, String)> {
        self.notified.as_ref().map(|(_, shown)| shown)
    }

    fn update_first_run(&mut self, message: Message) -> Task<Message> {
        let Some(profile) = self.profile.clone() else {
            return Task::none();
        };
        let options = if matches!(
            message,
            Message::Create
                | Message::StartJoin
                | Message::Unlock
                | Message::Join(JoinUpdate::Linked { .. })
        ) {
            self.node_options()
        } else {
            NodeOptions::default()
        };
        match (&mut self.phase, message) {
            (Phase::Setup(setup), Message::SetupName(name)) => setup.name = clip(name),
            (Phase::Setup(setup), Message::SetupPassphrase(p)) => setup.passphrase = clip(p),
            (Phase::Setup(setup), Message::SetupRepeat(p)) => setup.repeat = clip(p),
            (Phase::Setup(setup), Message::Create) => {
                if setup.busy || setup.join.is_some() {
                    return Task::none();
                }
                let name = setup.name.trim();
                if name.is_empty() {
                    return self.fail("Type the name your friends will see.".into());
                }
                if name.len() > kith_proto::wire::MAX_DISPLAY_NAME_BYTES {
                    return self.fail(format!(
                        "Names have at most {} bytes.",
                        kith_proto::wire::MAX_DISPLAY_NAME_BYTES
                    ));
                }
                let lock = match lock_from(&setup.passphrase, &setup.repeat) {
                    Ok(lock) => lock,
                    Err(e) => return self.fail(e),
                };
                setup.busy = true;
                self.notice = None;
                let name = name.to_owned();
                return Task::perform(
                    bridge::create(profile, name, lock, options),
                    Message::Opened,
                );
            }
            (Phase::Setup(setup), Message::StartJoin) => {
                if setup.busy || setup.join.is_some() {
                    return Task::none();
                }
                let lock = match lock_from(&setup.passphrase, &setup.repeat) {
                    Ok(lock) => lock,
                    Err(e) => return self.fail(e),
                };
                let (task, handle) =
                    Task::run(bridge::join_account(profile, options, lock), Message::Join)
                        .abortable();
                setup.join = Some(Joining {
                    handle: Some(handle),
                    ..Joining::default()
                });
                self.notice = None;
                return task;
            }
            (Phase::Setup(setup), Message::CancelJoin) => {
                if setup.join.as_ref().is_some_and(|j| j.accepted) {
                    return Task::none();
                }
                if let Some(mut join) = setup.join.take()
                    && let Some(handle) = join.handle.take()
                {
                    handle.abort();
                }
            }
            (Phase::Setup(setup), Message::AnswerOffer(yes)) => {
                if let Some(join) = &mut setup.join
                    && let Some((_, _, answer)) = &join.offer
                    && let Some(answer) = answer.take()
                {
                    if answer.send(yes).is_ok() && yes {
                        // Writing the account takes a moment; it cannot
                        // be cancelled half-way.
                        join.accepted = true;
                    } else {
                        join.offer = None;
                    }
                }
            }
            (Phase::Setup(setup), Message::Join(update)) => {
                let Some(join) = &mut setup.join else {
                    return Task::none();
                };
                match update {
                    JoinUpdate::Code { text, expires } => {
                        let qr = qr_code::Data::with_error_correction(
                            text.to_ascii_uppercase(),
                            qr_code::ErrorCorrection::Medium,
                        );
                        match qr {
                            Ok(qr) => join.code = Some((text, qr)),
                            Err(e) => return self.fail(format!("the QR code: {e}")),
                        }
                        join.expires = expires;
                    }
                    JoinUpdate::Offer { name, id, answer } => {
                        join.offer = Some((name, id, answer));
                        join.accepted = false;
                    }
                    JoinUpdate::Withdrawn => {
                        join.offer = None;
                        self.notice = Some(Notice::Info(format!(
                            "No answer within {} s, so that offer was declined. The code still works: link it again from the other computer.",
                            bridge::ANSWER_WITHIN.as_secs()
                        )));
                    }
                    JoinUpdate::Linked { name } => {
                        setup.join = None;
                        self.notice = Some(Notice::Info(format!(
                            "This computer is now part of {name}'s account; friends and history are arriving."
                        )));
                        return self.open_after_join(profile, options);
                    }
                    JoinUpdate::Failed(why) => {
                        setup.join = None;
                        return self.fail(format!("Linking stopped: {why}"));
                    }
                }
            }
            (Phase::Setup(setup), Message::Opened(Err(e))) => {
                setup.busy = false;
                return self.fail(e);
            }
            (Phase::Unlock(unlock), Message::Opened(Err(e))) => {
                unlock.busy = false;
                return self.fail(e);
            }
            (Phase::Setup(_) | Phase::Unlock(_), Message::Opened(Ok(opened))) => {
                self.notice = None;
                // Keep the typed name until the engine is ready.
                if let Phase::Setup(setup) = &mut self.phase {
                    let name = std::mem::take(&mut setup.name);
                    self.start(opened);
                    self.phase = Phase::Setup(Box::new(Setup {
                        name,
                        busy: true,
                        ..Setup::default()
                    }));
                } else {
                    self.start(opened);
                }
            }
            (Phase::Unlock(unlock), Message::UnlockPassphrase(p)) => unlock.passphrase = clip(p),
            (Phase::Unlock(unlock), Message::Unlock) => {
                if unlock.busy || unlock.passphrase.is_empty() {
                    return Task::none();
                }
                unlock.busy = true;
                let passphrase = Passphrase::new(std::mem::take(&mut unlock.passphrase));
                return Task::perform(
                    bridge::unlock(profile, passphrase, options),
                    Message::Opened,
                );
            }
            _ => {}
        }
        Task::none()
    }

    fn open_after_join(&mut self, profile: Profile, options: NodeOptions) -> Task<Message> {
        match bridge::boot(&profile, &options) {
            Ok(Boot::Ready(opened)) => {
                self.start(Slot::new(*opened));
                Task::none()
            }
            Ok(Boot::Locked) => {
                self.phase = Phase::Unlock(Unlock::default());
                Task::none()
            }
            Ok(Boot::New) => self.fail("the account was not written".into()),
            Err(e) => self.fail(e),
        }
    }

    fn save_form(&mut self) -> Task<Message> {
        let Phase::Running(main) = &self.phase else {
            return Task::none();
        };
        let form = &main.settings;
        let bootstrap: Vec<String> = form
            .bootstrap
            .split([' ', ',', '\n'])
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect();
        let volunteer_mb = match form.volunteer.trim() {
            "" | "0" => None,
            mb => match mb.parse::<u64>() {
                Ok(mb) => Some(mb),
                Err(_) => {
                    return self.fail(format!(
                        "'{mb}' is not a number of megabytes; leave it empty to keep no mail for others."
                    ));
                }
            },
        };
        let next = Settings {
            bootstrap,
            volunteer_mb,
            mdns: form.mdns,
            ..self.settings.clone()
        };
        let (_, warnings) = next.apply(&NodeOptions::default());
        if !warnings.is_empty() {
            return self.fail(format!("Not saved: {}.", warnings.join("; ")));
        }
        self.settings = next;
        self.save_settings(Some(
            "Saved. Network settings take effect the next time Kith starts.".into(),
        ))
    }

    fn save_settings(&mut self, news: Option<String>) -> Task<Message> {
        let Some(profile) = &self.profile else {
            return Task::none();
        };
        // The profile folder may not exist before a first-run choice.
        if !profile.dir().exists() {
            return Task::none();
        }
        match self.settings.save(profile) {
            Ok(()) => {
                if let Some(news) = news {
                    self.notice = Some(Notice::Info(news));
                }
            }
            Err(e) => self.notice = Some(Notice::Error(e)),
        }
        Task::none()
    }
}

fn lock_from(passphrase: &str, repeat: &str) -> Result<Option<Passphrase>, String> {
    if passphrase.is_empty() && repeat.is_empty() {
        return Ok(None);
    }
    if passphrase != repeat {
        return Err("The two passphrases differ.".into());
    }
    Ok(Some(Passphrase::new(passphrase.to_owned())))
}

impl Main {
    fn new(engine: Engine, settings: &Settings) -> Self {
        Self {
            engine,
            screen: Screen::Chats,
            id: None,
            status: None,
            friends: Vec::new(),
            requests: Vec::new(),
            outgoing: Vec::new(),
            devices: Vec::new(),
            chat: None,
            typing: HashMap::new(),
            confirm: None,
            selected: None,
            add: AddForm::default(),
            link: LinkForm::default(),
            settings: SettingsForm::from(settings),
            rename: None,
            news: None,
            friends_asked: false,
            friends_stale: false,
        }
    }

    /// The friend with this key.
    pub fn friend(&self, account: &AccountPublicKey) -> Option<&FriendInfo> {
        self.friends.iter().find(|f| f.account == *account)
    }

    fn set_name(&mut self) -> Task<Message> {
        let Some(name) = self.rename.take() else {
            return Task::none();
        };
        let engine = self.engine.clone();
        Task::perform(
            async move { engine.set_name(name).await.map(|()| None).map_err(err) },
            Message::Done,
        )
    }

    fn refresh_all(&mut self) -> Task<Message> {
        Task::batch([
            self.refresh_status(),
            self.refresh_friends(),
            self.refresh_requests(),
            self.refresh_devices(),
        ])
    }

    fn refresh_status(&self) -> Task<Message> {
        let engine = self.engine.clone();
        Task::perform(
            async move { engine.status().await.map_err(err) },
            Message::Status,
        )
    }

    /// Asks for the friends list; while one answer is awaited, further
    /// asks are folded into one more when it comes (a burst of messages
    /// costs two calls, not one per message).
    fn refresh_friends(&mut self) -> Task<Message> {
        if self.friends_asked {
            self.friends_stale = true;
            return Task::none();
        }
        self.friends_asked = true;
        let engine = self.engine.clone();
        Task::perform(
            async move { engine.friends().await.map_err(err) },
            Message::Friends,
        )
    }

    fn refresh_requests(&self) -> Task<Message> {
        let engine = self.engine.clone();
        Task::perform(
            async move { engine.requests().await.map_err(err) },
            Message::Requests,
        )
    }

    /// The user is showing their ID or adding a friend: a request may be
    /// on its way, so the engine looks for one every minute for a while.
    fn expect_requests(&self) -> Task<Message> {
        let engine = self.engine.clone();
        Task::future(async move {
            let _ = engine.expect_requests().await;
        })
        .discard()
    }

    fn refresh_devices(&self) -> Task<Message> {
        let engine = self.engine.clone();
        Task::perform(
            async move { engine.devices().await.map_err(err) },
            Message::Devices,
        )
    }

    fn history(
        &self,
        friend: AccountPublicKey,
        older: Option<Cursor>,
        limit: usize,
    ) -> Task<Message> {
        let engine = self.engine.clone();
        let is_older = older.is_some();
        Task::perform(
            async move { engine.history(friend, older, limit).await.map_err(err) },
            move |page| Message::History {
                friend,
                older: is_older,
                page,
            },
        )
    }

    /// Reloads the newest messages of the open conversation, as many as
    /// are shown (so state changes and new messages appear in the
    /// engine's order).
    fn reload_chat(&mut self) -> Task<Message> {
        let Some(chat) = &mut self.chat else {
            return Task::none();
        };
        if chat.refreshing {
            chat.stale = true;
            return Task::none();
        }
        chat.refreshing = true;
        let (friend, limit) = (
            chat.friend,
            (chat.messages.len() + 1).clamp(PAGE, kith_core::history::MAX_PAGE),
        );
        self.history(friend, None, limit)
    }

    /// Marks the open conversation read when the user can see it.
    fn read_open_chat(&self) -> Task<Message> {
        let Some(chat) = &self.chat else {
            return Task::none();
        };
        if self.screen != Screen::Chats || self.friend(&chat.friend).is_none_or(|f| f.unread == 0) {
            return Task::none();
        }
        self.mark_read(chat.friend)
    }

    fn mark_read(&self, friend: AccountPublicKey) -> Task<Message> {
        let engine = self.engine.clone();
        Task::perform(
            async move { engine.mark_read(friend).await.map(|_| ()).map_err(err) },
            Message::Read,
        )
    }

    fn call(
        &self,
        work: impl Future<Output = Result<Option<String>, EngineError>> + Send + 'static,
    ) -> Task<Message> {
        Task::perform(async move { work.await.map_err(err) }, Message::Done)
    }

    fn on_event(&mut self, event: Event, focused: bool) -> Task<Message> {
        match event {
            Event::Message { friend, message } => {
                self.typing.remove(&friend);
                let mut tasks = vec![self.refresh_friends()];
                let mut reload = false;
                let mut read = false;
                if let Some(chat) = self.chat.as_mut().filter(|c| c.friend == friend) {
                    let in_order = chat
                        .messages
                        .last()
                        .is_none_or(|last| last.lamport <= message.lamport);
                    if in_order && !chat.messages.iter().any(|m| m.id == message.id) {
                        // The list is anchored at the bottom: a reader at
                        // the end sees it arrive, one scrolled up stays put.
                        chat.messages.push(message);
                    } else {
                        reload = true;
                    }
                    read = focused && self.screen == Screen::Chats;
                }
                if reload {
                    tasks.push(self.reload_chat());
                }
                if read {
                    tasks.push(self.mark_read(friend));
                }
                Task::batch(tasks)
            }
            Event::State { friend, id, state } => {
                let mut reload = false;
                if let Some(chat) = self.chat.as_mut().filter(|c| c.friend == friend) {
                    match chat.messages.iter_mut().find(|m| m.id == id) {
                        Some(message) => message.state = Some(state),
                        // Not shown yet (its send is still being answered):
                        // the reload brings it with its state.
                        None => reload = true,
                    }
                }
                let reload = if reload {
                    self.reload_chat()
                } else {
                    Task::none()
                };
                Task::batch([reload, self.refresh_friends()])
            }
            Event::Changed { friend, message } => {
                if let Some(chat) = self.chat.as_mut().filter(|c| c.friend == friend)
                    && let Some(shown) = chat.messages.iter_mut().find(|m| m.id == message.id)
                {
                    *shown = message;
                }
                Task::none()
            }
            Event::Typing { friend, active } => {
                if active {
                    self.typing.insert(friend, Instant::now());
                } else {
                    self.typing.remove(&friend);
                }
                Task::none()
            }
            Event::Presence { friend, online } => {
                if let Some(f) = self.friends.iter_mut().find(|f| f.account == friend) {
                    f.online = online;
                }
                if !online {
                    self.typing.remove(&friend);
                }
                Task::batch([self.refresh_friends(), self.refresh_devices()])
            }
            Event::Request(_) => self.refresh_requests(),
            Event::FriendAdded(_) => Task::batch([self.refresh_friends(), self.refresh_requests()]),
            Event::Problem(_) => Task::none(),
            _ => self.refresh_all(),
        }
    }

    /// Handles a message of the running messenger; a user error comes back
    /// as the notice to show.
    fn update(&mut self, message: Message) -> Result<Task<Message>, Notice> {
        let task = match message {
            Message::Status(status) => {
                let status = status.map_err(Notice::Error)?;
                if self.id.as_ref().is_none_or(|(id, _)| *id != status.id) {
                    self.id = id_qr(&status.id).map(|qr| (status.id, qr));
                }
                self.status = Some(status);
                Task::none()
            }
            Message::Friends(friends) => {
                self.friends_asked = false;
                let again = std::mem::take(&mut self.friends_stale);
                self.friends = friends.map_err(Notice::Error)?;
                if again {
                    self.refresh_friends()
                } else {
                    Task::none()
                }
            }
            Message::Requests(requests) => {
                (self.requests, self.outgoing) = requests.map_err(Notice::Error)?;
                Task::none()
            }
            Message::Devices(devices) => {
                self.devices = devices.map_err(Notice::Error)?;
                Task::none()
            }
            Message::History {
                friend,
                older,
                page,
            } => {
                let Some(chat) = self.chat.as_mut().filter(|c| c.friend == friend) else {
                    return Ok(Task::none());
                };
                if older {
                    chat.loading = false;
                    let page = page.map_err(Notice::Error)?;
                    let mut messages = page.messages;
                    messages.retain(|m| !chat.messages.iter().any(|s| s.id == m.id));
                    messages.append(&mut chat.messages);
                    chat.messages = messages;
                    chat.older = page.older;
                    Task::none()
                } else {
                    chat.refreshing = false;
                    let again = std::mem::take(&mut chat.stale);
                    merge_newest(chat, page.map_err(Notice::Error)?);
                    if again {
                        self.reload_chat()
                    } else {
                        Task::none()
                    }
                }
            }
            Message::Done(result) => {
                self.news = result.map_err(Notice::Error)?.map(Notice::Info);
                Task::batch([self.refresh_all(), self.reload_chat()])
            }
            Message::Requested(result) => {
                self.add.busy = false;
                result.map_err(Notice::Error)?;
                self.add = AddForm::default();
                self.news = Some(Notice::Info(
                    "Request sent. They appear under Chats once they accept.".into(),
                ));
                self.refresh_requests()
            }
            Message::LinkedDevice(result) => {
                self.link.busy = false;
                let name = result.map_err(Notice::Error)?;
                self.link = LinkForm::default();
                self.news = Some(Notice::Info(format!(
                    "Linked {name}: friends and history are on their way to it."
                )));
                self.refresh_devices()
            }
            Message::Read(result) => {
                result.map_err(Notice::Error)?;
                self.refresh_friends()
            }
            Message::ImageRead(picture, result) => {
                let text = result.map_err(Notice::Error)?;
                match picture {
                    Picture::FriendId => self.add.id = text,
                    Picture::LinkCode => self.link.code = text,
                }
                Task::none()
            }
            Message::Quiet(result) => {
                result.map_err(Notice::Error)?;
                Task::none()
            }
            Message::Sent(result) => {
                self.put_back_on_failure(result.is_err());
                result.map_err(Notice::Error)?;
                Task::batch([self.reload_chat(), self.refresh_friends()])
            }
            Message::Edited(result) => {
                self.put_back_on_failure(result.is_err());
                result.map_err(Notice::Error)?;
                self.reload_chat()
            }
            Message::Rotated(result) => {
                let id = result.map_err(Notice::Error)?;
                self.id = id_qr(&id).map(|qr| (id, qr));
                self.news = Some(Notice::Info(format!(
                    "Your new Kith ID is {id}. The old one no longer accepts new requests; friends are not affected."
                )));
                Task::none()
            }
            Message::Show(screen) => {
                self.screen = screen;
                self.confirm = None;
                match screen {
                    Screen::Requests => self.refresh_requests(),
                    Screen::Devices => self.refresh_devices(),
                    Screen::MyId => Task::batch([self.refresh_status(), self.expect_requests()]),
                    Screen::AddFriend => self.expect_requests(),
                    Screen::Chats => self.read_open_chat(),
                    Screen::Settings => Task::none(),
                }
            }
            Message::Open(friend) => self.open(friend),
            Message::Scrolled(viewport) => {
                let Some(chat) = &mut self.chat else {
                    return Ok(Task::none());
                };
                // Anchored at the bottom: the reversed offset is from the top.
                let near_top = viewport.absolute_offset_reversed().y < 48.0;
                if near_top && !chat.loading && !chat.refreshing && chat.older.is_some() {
                    chat.loading = true;
                    let older = chat.older.clone();
                    let friend = chat.friend;
                    self.history(friend, older, PAGE)
                } else {
                    Task::none()
                }
            }
            Message::ToggleSafety => {
                if let Some(chat) = &mut self.chat {
                    chat.show_safety = !chat.show_safety;
                }
                Task::none()
            }
            Message::Compose(action) => self.compose(action),
            Message::Select(id) => {
                if self.selected != Some(id) {
                    self.confirm = None;
                }
                self.selected = Some(id);
                Task::none()
            }
            Message::Send => self.send()?,
            Message::Edit(id) => {
                let Some(chat) = &mut self.chat else {
                    return Ok(Task::none());
                };
                if let Some(message) = chat.messages.iter().find(|m| m.id == id) {
                    // A draft waits while the edit is made.
                    if chat.editing.is_none() {
                        chat.draft = Some(chat.composer.text());
                    }
                    chat.composer = text_editor::Content::with_text(&message.body);
                    chat.editing = Some(id);
                }
                operation::focus(COMPOSER)
            }
            Message::CancelEdit => {
                self.cancel_edit();
                Task::none()
            }
            Message::Ask(confirm) => {
                self.confirm = Some(confirm);
                Task::none()
            }
            Message::NotConfirmed => {
                self.confirm = None;
                Task::none()
            }
            Message::Confirmed => self.confirmed(),
            Message::ChooseImage(picture) => Task::perform(
                async {
                    rfd::AsyncFileDialog::new()
                        .set_title("A picture of the QR code")
                        .add_filter("Pictures", &["png", "jpg", "jpeg"])
                        .pick_file()
                        .await
                        .map(|file| file.path().to_owned())
                },
                move |path| Message::ImageChosen(picture, path),
            ),
            Message::ImageChosen(picture, Some(path)) => {
                let shown = path.display().to_string();
                let next = match picture {
                    Picture::FriendId => {
                        self.add.image = shown;
                        Message::ReadImage
                    }
                    Picture::LinkCode => {
                        self.link.image = shown;
                        Message::ReadLinkImage
                    }
                };
                return self.update(next);
            }
            Message::AddId(text) => {
                self.add.id = clip(text);
                Task::none()
            }
            Message::AddNote(text) => {
                self.add.note = clip(text);
                Task::none()
            }
            Message::AddImage(text) => {
                self.add.image = clip(text);
                Task::none()
            }
            Message::ReadImage => read_picture(Picture::FriendId, self.add.image.trim()),
            Message::SendRequest => {
                if self.add.busy {
                    return Ok(Task::none());
                }
                let id = KithId::parse(self.add.id.trim())
                    .map_err(|e| Notice::Error(format!("That is not a Kith ID: {e}")))?;
                let note = self.add.note.trim().to_owned();
                self.add.busy = true;
                let engine = self.engine.clone();
                Task::perform(
                    async move { engine.add(id, note).await.map_err(err) },
                    Message::Requested,
                )
            }
            Message::Accept(account) => {
                let engine = self.engine.clone();
                self.call(async move {
                    let friend = engine.accept(account).await?;
                    Ok(Some(format!("{} is now your friend.", friend.name)))
                })
            }
            Message::Decline(account) => {
                let engine = self.engine.clone();
                self.call(async move { engine.decline(account).await.map(|()| None) })
            }
            Message::CheckRequests => {
                let engine = self.engine.clone();
                self.call(async move {
                    let found = engine.check_requests().await?;
                    Ok(Some(match found {
                        0 => "No new requests.".to_owned(),
                        1 => "1 new request.".to_owned(),
                        n => format!("{n} new requests."),
                    }))
                })
            }
            Message::LinkCode(text) => {
                self.link.code = clip(text);
                Task::none()
            }
            Message::LinkName(text) => {
                self.link.name = clip(text);
                Task::none()
            }
            Message::LinkImage(text) => {
                self.link.image = clip(text);
                Task::none()
            }
            Message::ReadLinkImage => read_picture(Picture::LinkCode, self.link.image.trim()),
            Message::LinkDevice => {
                if self.link.busy {
                    return Ok(Task::none());
                }
                let code = crate::control::parse_link_code(&self.link.code)
                    .map_err(|e| Notice::Error(e.to_string()))?;
                let name = Some(self.link.name.trim().to_owned()).filter(|n| !n.is_empty());
                self.link.busy = true;
                let engine = self.engine.clone();
                Task::perform(
                    async move {
                        let device = engine.link_device(code, name).await.map_err(err)?;
                        Ok(device.name)
                    },
                    Message::LinkedDevice,
                )
            }
            Message::Tick => self.tick(),
            Message::RefreshStatus => self.refresh_status(),
            Message::Key(keyboard::Event::KeyPressed { key, modifiers, .. }) => {
                self.on_key(&key, modifiers)
            }
            Message::PassCurrent(text) => {
                self.settings.current = clip(text);
                Task::none()
            }
            Message::PassNew(text) => {
                self.settings.new = clip(text);
                Task::none()
            }
            Message::PassRepeat(text) => {
                self.settings.repeat = clip(text);
                Task::none()
            }
            Message::ChangePassphrase => {
                let form = &mut self.settings;
                if form.changing {
                    return Ok(Task::none());
                }
                if form.new != form.repeat {
                    return Err(Notice::Error("The two new passphrases differ.".into()));
                }
                if !form.locked && form.new.is_empty() {
                    return Err(Notice::Error(
                        "Type the passphrase to lock Kith with, twice.".into(),
                    ));
                }
                let current = form
                    .locked
                    .then(|| Passphrase::new(std::mem::take(&mut form.current)));
                let new = (!form.new.is_empty()).then(|| Passphrase::new(form.new.clone()));
                form.new.clear();
                form.repeat.clear();
                form.changing = true;
                let locks = new.is_some();
                let engine = self.engine.clone();
                Task::perform(
                    async move {
                        engine.change_passphrase(current, new).await.map_err(err)?;
                        Ok(locks)
                    },
                    Message::PassphraseChanged,
                )
            }
            Message::PassphraseChanged(result) => {
                self.settings.changing = false;
                let locked = result.map_err(Notice::Error)?;
                self.settings.locked = locked;
                self.news = Some(Notice::Info(if locked {
                    "Passphrase set. Kith asks for it whenever it starts.".into()
                } else {
                    "Passphrase removed: Kith opens without one.".into()
                }));
                Task::none()
            }
            Message::SetMdns(on) => {
                self.settings.mdns = on;
                Task::none()
            }
            Message::BootstrapText(text) => {
                self.settings.bootstrap = clip(text);
                Task::none()
            }
            Message::VolunteerText(text) => {
                self.settings.volunteer = clip(text);
                Task::none()
            }
            _ => Task::none(),
        };
        Ok(task)
    }

    fn on_key(&mut self, key: &keyboard::Key, modifiers: keyboard::Modifiers) -> Task<Message> {
        use keyboard::key::Named;
        match key.as_ref() {
            keyboard::Key::Named(Named::Escape) => {
                self.confirm = None;
                self.cancel_edit();
                Task::none()
            }
            keyboard::Key::Character(c) if modifiers.command() => {
                let screen = c
                    .parse::<usize>()
                    .ok()
                    .and_then(|n| n.checked_sub(1))
                    .and_then(|n| Screen::ALL.get(n));
                match screen {
                    Some(screen) => Task::done(Message::Show(*screen)),
                    None => Task::none(),
                }
            }
            _ => Task::none(),
        }
    }

    fn open(&mut self, friend: AccountPublicKey) -> Task<Message> {
        self.screen = Screen::Chats;
        if self.chat.as_ref().is_some_and(|c| c.friend == friend) {
            return self.read_open_chat();
        }
        let stop = self.stop_typing();
        self.selected = None;
        self.confirm = None;
        self.chat = Some(Chat {
            friend,
            messages: Vec::new(),
            older: None,
            loading: false,
            refreshing: true,
            stale: false,
            draft: None,
            unsent: None,
            composer: text_editor::Content::new(),
            editing: None,
            last_key: None,
            typing_sent: None,
            show_safety: false,
            safety: self.engine.safety_number(&friend).to_string(),
        });
        Task::batch([
            stop,
            self.history(friend, None, PAGE),
            self.read_open_chat(),
            operation::focus(COMPOSER),
        ])
    }

    fn compose(&mut self, action: text_editor::Action) -> Task<Message> {
        let Some(chat) = &mut self.chat else {
            return Task::none();
        };
        let edits = action.is_edit();
        chat.composer.perform(action);
        if !edits || chat.editing.is_some() {
            return Task::none();
        }
        let now = Instant::now();
        chat.last_key = Some(now);
        let empty = chat.composer.text().trim().is_empty();
        if empty {
            return self.stop_typing();
        }
        if chat
            .typing_sent
            .is_none_or(|sent| now.duration_since(sent) >= TYPING_REFRESH)
        {
            chat.typing_sent = Some(now);
            let engine = self.engine.clone();
            let friend = chat.friend;
            return Task::perform(
                async move {
                    engine
                        .typing(friend, true)
                        .await
                        .map(|()| None)
                        .map_err(err)
                },
                Message::Done,
            );
        }
        Task::none()
    }

    fn stop_typing(&mut self) -> Task<Message> {
        let Some(chat) = &mut self.chat else {
            return Task::none();
        };
        if chat.typing_sent.take().is_none() {
            return Task::none();
        }
        let engine = self.engine.clone();
        let friend = chat.friend;
        Task::future(async move {
            let _ = engine.typing(friend, false).await;
        })
        .discard()
    }

    fn tick(&mut self) -> Task<Message> {
        let now = Instant::now();
        self.typing
            .retain(|_, since| now.duration_since(*since) < TYPING_SHOWN);
        let idle = self.chat.as_ref().is_some_and(|chat| {
            chat.typing_sent.is_some()
                && chat
                    .last_key
                    .is_none_or(|last| now.duration_since(last) >= TYPING_IDLE)
        });
        if idle {
            return self.stop_typing();
        }
        Task::none()
    }

    /// Leaves an edit: the draft written before it comes back.
    fn cancel_edit(&mut self) {
        if let Some(chat) = &mut self.chat
            && chat.editing.take().is_some()
        {
            chat.composer = text_editor::Content::with_text(&chat.draft.take().unwrap_or_default());
        }
    }

    /// A send or edit failed: its text goes back into the composer, if
    /// the user has not started something else there.
    fn put_back_on_failure(&mut self, failed: bool) {
        let Some(chat) = &mut self.chat else {
            return;
        };
        let Some((text, editing)) = chat.unsent.take() else {
            return;
        };
        if failed && chat.composer.text().trim().is_empty() {
            chat.composer = text_editor::Content::with_text(&text);
            chat.editing = editing;
        }
    }

    fn send(&mut self) -> Result<Task<Message>, Notice> {
        let Some(chat) = &mut self.chat else {
            return Ok(Task::none());
        };
        let text = chat.composer.text();
        let body = text
            .trim_end_matches(['\n', '\r'])
            .trim_start_matches(['\n', '\r']);
        if body.trim().is_empty() {
            return Ok(Task::none());
        }
        if body.len() > kith_proto::wire::MAX_BODY_BYTES {
            return Err(Notice::Error(format!(
                "Messages have at most {} KiB; this one has {} KiB.",
                kith_proto::wire::MAX_BODY_BYTES / 1024,
                body.len().div_ceil(1024)
            )));
        }
        let body = body.to_owned();
        let friend = chat.friend;
        let editing = chat.editing.take();
        chat.unsent = Some((body.clone(), editing));
        chat.composer =
            text_editor::Content::with_text(&editing.and(chat.draft.take()).unwrap_or_default());
        let engine = self.engine.clone();
        let send = match editing {
            Some(target) => Task::perform(
                async move { engine.edit(friend, target, body).await.map_err(err) },
                Message::Edited,
            ),
            None => Task::perform(
                async move { engine.send(friend, body).await.map_err(err) },
                Message::Sent,
            ),
        };
        let stop = self.stop_typing();
        Ok(Task::batch([send, stop]))
    }

    fn confirmed(&mut self) -> Task<Message> {
        let Some(confirm) = self.confirm.take() else {
            return Task::none();
        };
        let engine = self.engine.clone();
        match confirm {
            Confirm::Rotate => Task::perform(
                async move { engine.rotate_nospam().await.map_err(err) },
                Message::Rotated,
            ),
            Confirm::Delete(id) => {
                let Some(friend) = self.chat.as_ref().map(|c| c.friend) else {
                    return Task::none();
                };
                self.call(async move { engine.delete(friend, id).await.map(|()| None) })
            }
            Confirm::RemoveDevice { peer, .. } => self.call(async move {
                let removed = engine.remove_device(peer).await?;
                Ok(Some(format!(
                    "Removed {}: it no longer receives this account's messages.",
                    removed.name
                )))
            }),
            Confirm::Block(account) => {
                self.call(async move { engine.block(account).await.map(|()| None) })
            }
            Confirm::DeclineAll => self.call(async move {
                let count = engine.decline_all().await?;
                Ok(Some(format!(
                    "Declined {count} requests; their senders' requests will be ignored."
                )))
            }),
        }
    }
}

/// Reads and decodes a picture of a QR code off the window's thread.
fn read_picture(picture: Picture, path: &str) -> Task<Message> {
    let path = PathBuf::from(path);
    Task::perform(
        async move {
            tokio::task::spawn_blocking(move || {
                let bytes = crate::cli::read_image_file(&path).map_err(|e| e.to_string())?;
                let shown = path.display();
                match picture {
                    Picture::FriendId => qr::read_image(&bytes)
                        .map(|id| id.to_string())
                        .map_err(|e| format!("{shown}: {e}")),
                    Picture::LinkCode => LinkCode::read_qr_image(&bytes)
                        .map(|code| code.to_text())
                        .map_err(|e| format!("{shown}: {e}")),
                }
            })
            .await
            .map_err(|e| format!("internal error: {e}"))?
        },
        move |result| Message::ImageRead(picture, result),
    )
}

/// SIGTERM and SIGINT, once, as a message: the engine then stops as it
/// does when the window is closed (a logout or `kill` loses nothing).
fn signals() -> impl futures::Stream<Item = Message> {
    iced::stream::channel(
        1,
        async |mut out: futures::channel::mpsc::Sender<Message>| {
            #[cfg(unix)]
            {
                use futures::SinkExt;
                use tokio::signal::unix::{SignalKind, signal};
                let (Ok(mut term), Ok(mut int)) = (
                    signal(SignalKind::terminate()),
                    signal(SignalKind::interrupt()),
                ) else {
                    return;
                };
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
                let _ = out.send(Message::Terminate).await;
            }
            #[cfg(not(unix))]
            let _ = &mut out;
            std::future::pending::<()>().await;
        },
    )
}

/// The start of a message, for a notification.
fn preview(body: &str) -> String {
    let mut chars = body.chars();
    let mut shown: String = chars.by_ref().take(PREVIEW_CHARS).collect();
    if chars.next().is_some() {
        shown.push('…');
    }
    shown
}

/// Puts the newest page in place of the loaded messages it covers.
fn merge_newest(chat: &mut Chat, page: HistoryPage) {
    let first = page.messages.first().map(|m| m.id);
    let overlap = first.and_then(|id| chat.messages.iter().position(|m| m.id == id));
    match overlap {
        Some(at) => {
            // Messages that came in by event after the page was read are
            // newer than it: they stay, after it.
            let mut tail = chat.messages.split_off(at);
            tail.retain(|m| !page.messages.iter().any(|p| p.id == m.id));
            chat.messages.extend(page.messages);
            chat.messages.extend(tail);
        }
        None => {
            chat.messages = page.messages;
            chat.older = page.older;
        }
    }
}
