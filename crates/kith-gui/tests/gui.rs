//! The window's main flows, headless with iced_test: clicks and keys go
//! through the real widgets (`Simulator`), the messages they produce go
//! through [`App::update`], and the tasks that returns run on a Tokio
//! runtime against real engines, real sled profiles and a real DHT node,
//! all on 127.0.0.1. Engine events reach the window through the same
//! subscription stream the app uses.

use std::path::Path;
use std::time::{Duration, Instant};

use futures::StreamExt;
use iced::keyboard::key::Named;
use iced_test::runtime::Action;
use iced_test::runtime::task::into_stream;
use iced_test::selector;
use kith_core::engine::MessageState;
use kith_core::history::Author;
use kith_gui::control::NodeOptions;
use kith_gui::gui::app::{
    ADD_ID, ADD_IMAGE, ADD_NOTE, COMPOSER, LINK_CODE, LINK_NAME, MESSAGES, Notice, PASS_FIELDS,
    Phase, SETUP_NAME, SETUP_PASSPHRASE, UNLOCK,
};
use kith_gui::gui::bridge::engine_updates;
use kith_gui::gui::{App, Message, Options};
use kith_net::Multiaddr;
use kith_proto::DeviceKeypair;
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(60);
const LOOPBACK: &str = "/ip4/127.0.0.1/tcp/0";

/// One window, driven like a user would.
struct Window {
    app: App,
    name: &'static str,
    tx: mpsc::Sender<Message>,
    rx: mpsc::Receiver<Message>,
    subscribed: Option<u64>,
    runtime: tokio::runtime::Handle,
}

impl Window {
    fn open(
        runtime: &tokio::runtime::Runtime,
        home: &Path,
        name: &'static str,
        bootstrap: &[Multiaddr],
    ) -> Self {
        let options = Options {
            profile: name.to_owned(),
            home: Some(home.to_owned()),
            node: NodeOptions {
                bootstrap: bootstrap.to_vec(),
                listen: vec![LOOPBACK.parse().unwrap()],
                mdns: false,
                request_poll: Some(Duration::from_secs(1)),
                volunteer_mb: None,
            },
            report: None,
        };
        let _guard = runtime.enter();
        let (app, task) = App::new(options);
        let (tx, rx) = mpsc::channel(1024);
        let mut window = Window {
            app,
            name,
            tx,
            rx,
            subscribed: None,
            runtime: runtime.handle().clone(),
        };
        window.run(task);
        window.subscribe();
        // The profile is read off the window's thread first.
        window.until("the profile read", |app| {
            !matches!(app.phase, Phase::Starting) || app.session().is_some()
        });
        window
    }

    /// Runs a task as the iced runtime would: its messages come back.
    fn run(&mut self, task: iced::Task<Message>) {
        let Some(stream) = into_stream(task) else {
            return;
        };
        let tx = self.tx.clone();
        self.runtime.spawn(async move {
            let mut stream = stream;
            while let Some(action) = stream.next().await {
                // Clipboard, focus and window actions have no window here.
                if let Action::Output(message) = action {
                    let _ = tx.send(message).await;
                }
            }
        });
    }

    /// Starts the engine subscription when the app asks for one.
    fn subscribe(&mut self) {
        let Some(session) = self.app.session() else {
            return;
        };
        if self.subscribed == Some(session.id()) {
            return;
        }
        self.subscribed = Some(session.id());
        let updates = engine_updates(session);
        let tx = self.tx.clone();
        self.runtime.spawn(async move {
            let mut updates = std::pin::pin!(updates);
            while let Some(update) = updates.next().await {
                if tx.send(Message::Engine(update)).await.is_err() {
                    return;
                }
            }
        });
    }

    fn dispatch(&mut self, message: Message) {
        let task = {
            let _guard = self.runtime.enter();
            self.app.update(message)
        };
        self.run(task);
        self.subscribe();
    }

    /// Handles what arrives until `done` holds.
    fn until(&mut self, what: &str, done: impl Fn(&App) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !done(&self.app) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "{}: {what} did not happen within {WAIT:?}; notice: {:?}",
                self.name,
                self.app.notice
            );
            let message = self.runtime.block_on(async {
                tokio::time::timeout(left.min(Duration::from_millis(200)), self.rx.recv()).await
            });
            if let Ok(Some(message)) = message {
                self.dispatch(message);
            }
        }
    }

    /// Handles what has arrived, without waiting.
    fn settle(&mut self) {
        while let Ok(message) = self.rx.try_recv() {
            self.dispatch(message);
        }
    }

    /// Interacts with the window as drawn now; the messages produced are
    /// handled after.
    fn with_ui(&mut self, act: impl FnOnce(&mut iced_test::Simulator<'_, Message>)) {
        self.settle();
        let messages: Vec<Message> = {
            let mut ui = iced_test::simulator(self.app.view());
            act(&mut ui);
            ui.into_messages().collect()
        };
        for message in messages {
            self.dispatch(message);
        }
    }

    fn click(&mut self, label: &str) {
        let name = self.name;
        self.with_ui(|ui| {
            if let Err(e) = ui.click(label) {
                panic!("{name}: cannot click {label:?}: {e:?}");
            }
        });
    }

    fn sees(&mut self, text: &str) -> bool {
        self.settle();
        let mut ui = iced_test::simulator(self.app.view());
        ui.find(text).is_ok()
    }

    /// Clicks the text field and types `text`, one key at a time, as a
    /// user would (the field shows what was typed before each key).
    fn type_into(&mut self, field: &'static str, text: &str) {
        for c in text.chars() {
            let name = self.name;
            self.with_ui(|ui| {
                if let Err(e) = ui.click(selector::id(field)) {
                    panic!("{name}: cannot click field {field}: {e:?}");
                }
                // The click put the cursor where it landed.
                ui.tap_key(Named::End);
                ui.typewrite(&c.to_string());
            });
        }
    }

    /// Types into the composer and presses `key` at the end.
    fn compose(&mut self, text: &str, then: Named) {
        self.with_ui(|ui| {
            ui.click(selector::id(COMPOSER)).expect("the composer");
            ui.typewrite(text);
            ui.tap_key(then);
        });
    }

    /// Closes the window as the user would, and waits until the engine
    /// has let go of the profile.
    fn close(mut self, home: &Path) {
        self.dispatch(Message::CloseRequested(iced::window::Id::unique()));
        self.until("the engine stopping", App::closed);
        let socket = home.join("profiles").join(self.name).join("kith.sock");
        let deadline = Instant::now() + WAIT;
        while socket.exists() {
            assert!(
                Instant::now() < deadline,
                "{}: the control socket stayed",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn main(&self) -> &kith_gui::gui::app::Main {
        match &self.app.phase {
            Phase::Running(main) => main,
            _ => panic!("{} is not running", self.name),
        }
    }
}

fn running(app: &App) -> bool {
    matches!(&app.phase, Phase::Running(main) if main.status.is_some() && main.id.is_some())
}

/// A DHT node on loopback for the windows to bootstrap from.
fn dht_node(runtime: &tokio::runtime::Runtime) -> (kith_net::Client, Multiaddr) {
    runtime.block_on(async {
        let mut config = kith_net::Config::new(DeviceKeypair::generate(), kith_net::Role::Node);
        config.listen = vec![LOOPBACK.parse().unwrap()];
        let (client, mut events, event_loop) = kith_net::new(config, None).unwrap();
        tokio::spawn(event_loop.run());
        tokio::spawn(async move { while events.next().await.is_some() {} });
        let addr = client.listen_addrs().await.unwrap()[0]
            .clone()
            .with(kith_net::Protocol::P2p(client.peer_id()));
        (client, addr)
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// First run: type a name, press the button, land in the messenger.
fn create(window: &mut Window, name: &str) {
    assert!(
        window.sees("Welcome to Kith"),
        "{}: no first-run screen",
        window.name
    );
    window.type_into(SETUP_NAME, name);
    window.click("Create my account");
    window.until("the messenger opening", running);
}

#[test]
fn a_new_profile_is_created_from_the_first_run_screen() {
    let runtime = runtime();
    let home = tempfile::tempdir().unwrap();
    let (_node, addr) = dht_node(&runtime);
    let mut alice = Window::open(&runtime, home.path(), "alice", std::slice::from_ref(&addr));
    create(&mut alice, "Alice");
    assert!(alice.sees("No friends yet."));

    // The ID is shown with its QR code under My ID (the name typed is
    // the one friends see: `friends_by_pasted_id_accept_and_chat`).
    let id = alice.main().id.as_ref().unwrap().0;
    alice.click("My ID");
    assert!(alice.sees(&id.to_string()));
    assert!(alice.sees("Copy my ID"));

    // The profile is on disk: a second start goes straight to the
    // messenger with the same ID.
    alice.close(home.path());
    let mut again = Window::open(&runtime, home.path(), "alice", &[addr]);
    again.until("the messenger opening again", running);
    assert_eq!(again.main().id.as_ref().unwrap().0, id);
}

#[test]
fn a_locked_profile_refuses_a_wrong_passphrase_and_opens_with_the_right_one() {
    let runtime = runtime();
    let home = tempfile::tempdir().unwrap();
    let mut first = Window::open(&runtime, home.path(), "locked", &[]);
    first.type_into(SETUP_NAME, "Sam");
    first.type_into(SETUP_PASSPHRASE[0], "hunter22");
    first.type_into(SETUP_PASSPHRASE[1], "hunter2");
    first.click("Create my account");
    // The two passphrases differ: nothing is created.
    assert!(matches!(&first.app.notice, Some(Notice::Error(e)) if e.contains("differ")));
    assert!(!home.path().join("profiles/locked/identity").exists());
    first.type_into(SETUP_PASSPHRASE[1], "2");
    first.click("Create my account");
    first.until("the messenger opening", running);
    let id = first.main().id.as_ref().unwrap().0;
    first.close(home.path());

    let mut window = Window::open(&runtime, home.path(), "locked", &[]);
    assert!(window.sees("Unlock Kith"));
    window.type_into(UNLOCK, "wrong");
    window.click("Unlock");
    window.until(
        "the wrong passphrase refused",
        |app| matches!(&app.notice, Some(Notice::Error(e)) if e.contains("wrong passphrase")),
    );
    assert!(window.sees("Unlock Kith"));
    window.type_into(UNLOCK, "hunter22");
    window.click("Unlock");
    window.until("the messenger opening", running);
    assert_eq!(window.main().id.as_ref().unwrap().0, id);
}

#[test]
fn friends_by_pasted_id_accept_and_chat() {
    let runtime = runtime();
    let home = tempfile::tempdir().unwrap();
    let (_node, addr) = dht_node(&runtime);
    let mut alice = Window::open(&runtime, home.path(), "alice", std::slice::from_ref(&addr));
    let mut bob = Window::open(&runtime, home.path(), "bob", &[addr]);
    create(&mut alice, "Alice");
    create(&mut bob, "Bob");
    let alice_id = alice.main().id.as_ref().unwrap().0.to_string();

    // Bob pastes Alice's ID with a note and sends the request.
    bob.click("Add a friend");
    bob.type_into(ADD_ID, &alice_id);
    bob.type_into(ADD_NOTE, "from the club");
    bob.click("Send request");
    bob.until(
        "the request sent",
        |app| matches!(&app.notice, Some(Notice::Info(n)) if n.starts_with("Request sent")),
    );

    // Alice sees it under Requests, with Bob's name and note, and accepts.
    alice.until(
        "Bob's request arriving",
        |app| matches!(&app.phase, Phase::Running(main) if !main.requests.is_empty()),
    );
    alice.click("Requests (1)");
    assert!(alice.sees("Bob"));
    assert!(alice.sees("“from the club”"));
    alice.click("Accept");
    alice.until("Bob becoming a friend", |app| {
        matches!(&app.phase, Phase::Running(main) if main.friends.iter().any(|f| f.name == "Bob"))
    });
    bob.until("Alice becoming a friend", |app| {
        matches!(&app.phase, Phase::Running(main) if main.friends.iter().any(|f| f.name == "Alice"))
    });

    // Bob opens the conversation, writes two lines (Shift+Enter between
    // them would be a new line; Enter sends) and sees his message.
    bob.click("Chats");
    bob.click("Alice");
    bob.compose("Hello Alice", Named::Enter);
    bob.until("the message shown", |app| {
        matches!(&app.phase, Phase::Running(main)
            if main.chat.as_ref().is_some_and(|c| c.messages.iter().any(|m| m.body == "Hello Alice")))
    });
    assert!(bob.sees("Hello Alice"));
    // The composer is empty again.
    assert_eq!(bob.main().chat.as_ref().unwrap().composer.text().trim(), "");

    // Alice sees it arrive, unread until she opens the conversation.
    alice.until("the message counted unread", |app| {
        matches!(&app.phase, Phase::Running(main) if main.friends.iter().any(|f| f.name == "Bob" && f.unread == 1))
    });
    // The side bar counts it.
    alice.click("Chats (1)");
    alice.click("Bob");
    alice.until("the conversation loaded", |app| {
        matches!(&app.phase, Phase::Running(main)
            if main.chat.as_ref().is_some_and(|c| !c.loading && c.messages.iter().any(|m| m.body == "Hello Alice")))
    });
    assert!(alice.sees("Hello Alice"));
    let message = alice
        .main()
        .chat
        .as_ref()
        .unwrap()
        .messages
        .last()
        .unwrap()
        .clone();
    assert_eq!(message.author, Author::Friend);

    // Bob's copy moves on to read, and says so.
    bob.until("the message read", |app| {
        matches!(&app.phase, Phase::Running(main)
            if main.chat.as_ref().is_some_and(|c| c.messages.iter().any(|m| matches!(m.state, Some(MessageState::Read { .. })))))
    });
    let read = bob
        .main()
        .chat
        .as_ref()
        .unwrap()
        .messages
        .iter()
        .find_map(|m| match m.state {
            Some(MessageState::Read { at }) => Some(at),
            _ => None,
        })
        .unwrap();
    assert!(bob.sees(&format!("read {}", kith_gui::gui::view::clock(read))));

    // Bob starts typing without sending: Alice sees it in the list and
    // under the conversation; when he empties the composer, it goes.
    bob.with_ui(|ui| {
        ui.click(selector::id(COMPOSER)).expect("the composer");
        ui.typewrite("Are");
    });
    alice.until(
        "Bob shown typing",
        |app| matches!(&app.phase, Phase::Running(main) if !main.typing.is_empty()),
    );
    assert!(alice.sees("Bob is typing…"));
    assert!(alice.sees("typing…"));
    bob.with_ui(|ui| {
        ui.click(selector::id(COMPOSER)).expect("the composer");
        ui.tap_key(Named::End);
        for _ in 0..3 {
            ui.tap_key(Named::Backspace);
        }
    });
    assert_eq!(bob.main().chat.as_ref().unwrap().composer.text().trim(), "");
    alice.until(
        "Bob no longer shown typing",
        |app| matches!(&app.phase, Phase::Running(main) if main.typing.is_empty()),
    );
    assert!(!alice.sees("Bob is typing…"));

    // Alice's window had the focus: no desktop notification for her.
    assert_eq!(alice.app.last_notification(), None);

    // Bob switches to another window; Alice answers with Enter too. Bob
    // sees it, and gets a desktop notification with her name and text.
    bob.dispatch(Message::Window(iced::window::Event::Unfocused));
    alice.compose("Hi Bob", Named::Enter);
    bob.until("Alice's answer", |app| {
        matches!(&app.phase, Phase::Running(main)
            if main.chat.as_ref().is_some_and(|c| c.messages.iter().any(|m| m.body == "Hi Bob")))
    });
    assert!(bob.sees("Hi Bob"));
    assert_eq!(
        bob.app.last_notification(),
        Some(&("Alice".to_owned(), "Hi Bob".to_owned()))
    );
    bob.dispatch(Message::Window(iced::window::Event::Focused));

    // Bob edits his message: a click on it shows Edit and Delete; the
    // composer takes its text, Enter saves.
    assert!(!bob.sees("Edit"));
    bob.click("Hello Alice");
    bob.click("Edit");
    assert!(bob.sees("Editing a message. Enter saves, Esc cancels."));
    assert_eq!(
        bob.main().chat.as_ref().unwrap().composer.text().trim(),
        "Hello Alice"
    );
    bob.with_ui(|ui| {
        ui.click(selector::id(COMPOSER)).expect("the composer");
        ui.tap_key(Named::End);
        ui.typewrite("!!");
        ui.tap_key(Named::Enter);
    });
    alice.until("the edit arriving", |app| {
        matches!(&app.phase, Phase::Running(main)
            if main.chat.as_ref().is_some_and(|c| c.messages.iter().any(|m| m.body == "Hello Alice!!" && m.edited)))
    });
    assert!(alice.sees("Hello Alice!!"));
    let edited = alice
        .main()
        .chat
        .as_ref()
        .unwrap()
        .messages
        .iter()
        .find(|m| m.body == "Hello Alice!!")
        .unwrap()
        .sent_at;
    assert!(alice.sees(&format!(
        "Bob · {} · edited",
        kith_gui::gui::view::clock(edited)
    )));

    // And deletes it, after saying yes.
    bob.click("Delete");
    assert!(bob.sees("Delete for everyone?"));
    bob.click("Delete");
    alice.until("the deletion arriving", |app| {
        matches!(&app.phase, Phase::Running(main)
            if main.chat.as_ref().is_some_and(|c| c.messages.iter().any(|m| m.deleted)))
    });
    assert!(alice.sees("message deleted"));
    assert!(!alice.sees("Hello Alice!!"));
}

/// Two windows made friends through the engine handles (the flow through
/// the window is shown above).
/// After a flood of requests, one by one is no way to clear them: the
/// list offers Decline all, after a yes.
#[test]
fn every_waiting_request_is_declined_at_once() {
    let runtime = runtime();
    let home = tempfile::tempdir().unwrap();
    let (_node, addr) = dht_node(&runtime);
    let mut alice = Window::open(&runtime, home.path(), "alice", std::slice::from_ref(&addr));
    let mut bob = Window::open(&runtime, home.path(), "bob", std::slice::from_ref(&addr));
    let mut carol = Window::open(&runtime, home.path(), "carol", &[addr]);
    create(&mut alice, "Alice");
    create(&mut bob, "Bob");
    create(&mut carol, "Carol");
    let alice_id = alice.main().id.as_ref().unwrap().0;
    for sender in [&bob, &carol] {
        runtime
            .block_on(sender.main().engine.add(alice_id, "hi".into()))
            .unwrap();
    }
    alice.until(
        "both requests",
        |app| matches!(&app.phase, Phase::Running(main) if main.requests.len() == 2),
    );
    alice.click("Requests (2)");
    assert!(alice.sees("2 waiting"));
    // The first click only asks.
    alice.click("Decline all");
    assert_eq!(alice.main().requests.len(), 2);
    assert!(alice.sees("Decline all 2? Their senders' requests will be ignored."));
    alice.click("Decline all");
    alice.until(
        "the list emptied",
        |app| matches!(&app.phase, Phase::Running(main) if main.requests.is_empty()),
    );
    assert!(alice.sees("No requests waiting."));
    assert!(
        matches!(&alice.app.notice, Some(Notice::Info(n)) if n.starts_with("Declined 2 requests"))
    );
}

fn befriend(runtime: &tokio::runtime::Runtime, alice: &mut Window, bob: &mut Window) {
    let alice_id = alice.main().id.as_ref().unwrap().0;
    let (a, b) = (alice.main().engine.clone(), bob.main().engine.clone());
    runtime.block_on(b.add(alice_id, String::new())).unwrap();
    alice.until(
        "the request",
        |app| matches!(&app.phase, Phase::Running(main) if !main.requests.is_empty()),
    );
    runtime.block_on(a.accept(b.account())).unwrap();
    bob.until(
        "the friendship",
        |app| matches!(&app.phase, Phase::Running(main) if !main.friends.is_empty()),
    );
}

#[test]
fn scrolling_up_loads_older_messages_until_the_start() {
    let runtime = runtime();
    let home = tempfile::tempdir().unwrap();
    let (_node, addr) = dht_node(&runtime);
    let mut alice = Window::open(&runtime, home.path(), "alice", std::slice::from_ref(&addr));
    let mut bob = Window::open(&runtime, home.path(), "bob", &[addr]);
    create(&mut alice, "Alice");
    create(&mut bob, "Bob");
    befriend(&runtime, &mut alice, &mut bob);
    let engine = bob.main().engine.clone();
    let alice_key = alice.main().engine.account();
    const SENT: usize = 120;
    runtime.block_on(async {
        for n in 0..SENT {
            engine.send(alice_key, format!("line {n}")).await.unwrap();
        }
    });
    alice.until("every message arriving", |app| {
        matches!(&app.phase, Phase::Running(main) if main.friends.first().is_some_and(|f| f.unread == SENT))
    });
    alice.click(&format!("Chats ({SENT})"));
    alice.click("Bob");
    alice.until("the newest page", |app| {
        matches!(&app.phase, Phase::Running(main) if main.chat.as_ref().is_some_and(|c| !c.loading && !c.refreshing))
    });
    let shown = |app: &App| match &app.phase {
        Phase::Running(main) => main.chat.as_ref().map_or(0, |c| c.messages.len()),
        _ => 0,
    };
    assert_eq!(shown(&alice.app), kith_gui::gui::app::PAGE);
    assert!(alice.sees(&format!("line {}", SENT - 1)));
    assert!(!alice.sees("line 0"));

    // Scroll up with the mouse wheel over the conversation, as far as it
    // goes, until the start shows.
    for _ in 0..20 {
        alice.with_ui(|ui| {
            let target = ui.find(selector::id(MESSAGES)).expect("the conversation");
            let bounds = selector::Bounded::visible_bounds(&target).expect("visible");
            ui.point_at(bounds.center());
            ui.simulate([iced::Event::Mouse(iced::mouse::Event::WheelScrolled {
                delta: iced::mouse::ScrollDelta::Lines {
                    x: 0.0,
                    y: 10_000.0,
                },
            })]);
        });
        alice.until("older messages", |app| {
            matches!(&app.phase, Phase::Running(main) if main.chat.as_ref().is_some_and(|c| !c.loading && !c.refreshing))
        });
        let now = shown(&alice.app);
        if now == SENT {
            break;
        }
        // A scroll while the newest page was being read again loads
        // nothing; the next one does.
    }
    assert_eq!(shown(&alice.app), SENT);
    assert!(alice.sees("line 0"));
    assert!(alice.sees("This is the start of your conversation."));
    let order: Vec<String> = alice
        .main()
        .chat
        .as_ref()
        .unwrap()
        .messages
        .iter()
        .map(|m| m.body.clone())
        .collect();
    let expected: Vec<String> = (0..SENT).map(|n| format!("line {n}")).collect();
    assert_eq!(order, expected);
}

#[test]
fn a_new_computer_links_to_the_account_from_its_first_run_screen() {
    let runtime = runtime();
    let home = tempfile::tempdir().unwrap();
    let (_node, addr) = dht_node(&runtime);
    let mut laptop = Window::open(&runtime, home.path(), "laptop", std::slice::from_ref(&addr));
    create(&mut laptop, "Alice");
    let account = laptop.main().id.as_ref().unwrap().0;

    // The new computer shows a code instead of creating an account.
    let mut desk = Window::open(&runtime, home.path(), "desk", &[addr]);
    desk.click("I already use Kith on another computer");
    desk.until("a link code", |app| {
        matches!(&app.phase, Phase::Setup(setup) if setup.join.as_ref().is_some_and(|j| j.code.is_some()))
    });
    let code = match &desk.app.phase {
        Phase::Setup(setup) => setup
            .join
            .as_ref()
            .unwrap()
            .code
            .as_ref()
            .unwrap()
            .0
            .clone(),
        _ => unreachable!(),
    };
    assert!(desk.sees(&code));
    desk.click("Copy the code");
    assert_eq!(
        desk.app.notice,
        Some(Notice::Info("Copied to the clipboard.".into()))
    );

    // The laptop's user types it under Devices.
    laptop.click("Devices");
    laptop.type_into(LINK_CODE, &code);
    laptop.type_into(LINK_NAME, "desk");
    laptop.click("Link it");

    // The new computer asks, and joins on yes.
    desk.until("the offer", |app| {
        matches!(&app.phase, Phase::Setup(setup) if setup.join.as_ref().is_some_and(|j| j.offer.is_some()))
    });
    assert!(desk.sees("Alice offers their account:"));
    assert!(desk.sees(&account.to_string()));
    desk.click("Join");
    desk.until("the messenger opening with the account", running);
    assert_eq!(desk.main().id.as_ref().unwrap().0, account);
    laptop.until(
        "the link confirmed",
        |app| matches!(&app.notice, Some(Notice::Info(n)) if n.starts_with("Linked desk")),
    );
    laptop.until(
        "two devices listed",
        |app| matches!(&app.phase, Phase::Running(main) if main.devices.len() == 2),
    );
    assert!(laptop.sees("desk"));

    // Removing it takes a yes, then the list is down to this computer.
    laptop.click("Remove…");
    assert!(laptop.sees("Remove it from your account?"));
    laptop.click("Remove");
    laptop.until(
        "one device left",
        |app| matches!(&app.phase, Phase::Running(main) if main.devices.len() == 1),
    );
    assert!(
        laptop.sees("laptop (this computer)")
            || laptop.sees(&format!(
                "{} (this computer)",
                laptop.main().devices[0].name
            ))
    );
}

#[test]
fn a_friend_id_is_read_from_a_picture_of_its_qr_code() {
    let runtime = runtime();
    let home = tempfile::tempdir().unwrap();
    let mut window = Window::open(&runtime, home.path(), "reader", &[]);
    create(&mut window, "Reader");
    let theirs = kith_store::profile::Identity::generate().kith_id();
    let picture = home.path().join("their-qr.png");
    std::fs::write(&picture, kith_proto::qr::to_png(&theirs, 400).unwrap()).unwrap();
    let not_a_picture = home.path().join("notes.txt");
    std::fs::write(&not_a_picture, "hello").unwrap();

    window.click("Add a friend");
    // Something that is not a picture: a readable error, the form as it was.
    window.type_into(ADD_IMAGE, not_a_picture.to_str().unwrap());
    window.click("Read");
    window.until(
        "the picture refused",
        |app| matches!(&app.notice, Some(Notice::Error(e)) if e.contains("notes.txt")),
    );
    assert_eq!(window.main().add.id, "");

    // Clear the field with Backspace, one key at a time.
    while !window.main().add.image.is_empty() {
        window.with_ui(|ui| {
            ui.click(selector::id(ADD_IMAGE)).unwrap();
            ui.tap_key(Named::End);
            ui.tap_key(Named::Backspace);
        });
    }
    assert_eq!(window.main().add.image, "");
    window.type_into(ADD_IMAGE, picture.to_str().unwrap());
    window.click("Read");
    let expected = theirs.to_string();
    window.until(
        "the ID read",
        |app| matches!(&app.phase, Phase::Running(main) if main.add.id == expected),
    );
    assert!(window.sees(&theirs.to_string()));
}

#[test]
fn a_passphrase_set_in_settings_locks_the_profile_and_can_be_removed() {
    let runtime = runtime();
    let home = tempfile::tempdir().unwrap();
    let mut window = Window::open(&runtime, home.path(), "sam", &[]);
    create(&mut window, "Sam");
    let id = window.main().id.as_ref().unwrap().0;
    window.click("Settings");
    assert!(window.sees(
        "Kith opens without a passphrase. One locks your identity and messages on this computer."
    ));
    window.type_into(PASS_FIELDS[1], "tree frog");
    window.type_into(PASS_FIELDS[2], "tree frog");
    window.click("Lock with this passphrase");
    window.until(
        "the passphrase set",
        |app| matches!(&app.notice, Some(Notice::Info(n)) if n.starts_with("Passphrase set")),
    );
    window.close(home.path());

    // Next start asks for it; the old state (none) no longer opens it.
    let mut window = Window::open(&runtime, home.path(), "sam", &[]);
    assert!(window.sees("Unlock Kith"));
    window.type_into(UNLOCK, "tree frog");
    window.click("Unlock");
    window.until("the messenger opening", running);
    assert_eq!(window.main().id.as_ref().unwrap().0, id);

    // Removing it needs the current one.
    window.click("Settings");
    window.type_into(PASS_FIELDS[0], "wrong");
    window.click("Remove the passphrase");
    window.until("the wrong current passphrase refused", |app| {
        matches!(&app.notice, Some(Notice::Error(e)) if e.contains("current passphrase is not right"))
    });
    window.type_into(PASS_FIELDS[0], "tree frog");
    window.click("Remove the passphrase");
    window.until(
        "the passphrase removed",
        |app| matches!(&app.notice, Some(Notice::Info(n)) if n.starts_with("Passphrase removed")),
    );
    window.close(home.path());
    let mut window = Window::open(&runtime, home.path(), "sam", &[]);
    window.until("the messenger opening without a passphrase", running);
}

/// A change of passphrase stopped by a crash after the database took the
/// new one: the new passphrase opens the profile and finishes the change.
#[test]
fn a_change_of_passphrase_cut_short_is_finished_by_the_passphrase_that_opens_the_database() {
    use kith_gui::control::{OpenProfileError, open_profile, open_store};
    use kith_store::{KdfParams, Passphrase};
    let home = tempfile::tempdir().unwrap();
    let profile = kith_store::profile::Profile::in_base(home.path(), "cut").unwrap();
    let identity = kith_store::profile::Identity::generate();
    let old = Passphrase::new("old one");
    let new = Passphrase::new("new one");
    let store = kith_gui::cli::create_store(&profile, Some(&old)).unwrap();
    drop(store);
    profile
        .create_identity(&identity, Some((&old, KdfParams::INTERACTIVE)))
        .unwrap();

    // Crash after staging only: the old passphrase still opens it, and the
    // staged file goes.
    profile
        .stage_identity(&identity, Some((&new, KdfParams::INTERACTIVE)))
        .unwrap();
    let (opened, store) = open_profile(&profile, Some(&old)).unwrap();
    assert_eq!(opened.kith_id(), identity.kith_id());
    drop(store);
    assert!(!profile.has_staged());

    // Crash after the database was re-keyed: the old passphrase is told
    // to give the new one; the new one opens both and finishes.
    profile
        .stage_identity(&identity, Some((&new, KdfParams::INTERACTIVE)))
        .unwrap();
    let mut store = open_store(&profile, Some(&old)).unwrap();
    store
        .set_passphrase(Some(&new), KdfParams::INTERACTIVE)
        .unwrap();
    drop(store);
    assert!(matches!(
        open_profile(&profile, Some(&old)),
        Err(OpenProfileError::GiveTheNewPassphrase(_))
    ));
    let (opened, store) = open_profile(&profile, Some(&new)).unwrap();
    assert_eq!(opened.kith_id(), identity.kith_id());
    drop(store);
    assert!(!profile.has_staged());
    assert!(profile.load_identity(Some(&new)).is_ok());
    assert!(profile.load_identity(Some(&old)).is_err());
}
