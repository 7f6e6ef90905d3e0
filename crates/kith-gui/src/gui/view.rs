//! Drawing the window from [`App`]'s state. Nothing here changes state or
//! talks to the engine; every control produces a [`Message`].

use iced::widget::{
    Column, Row, button, center, checkbox, column, container, qr_code, row, rule, scrollable,
    space, text, text_editor, text_input,
};
use iced::{Alignment, Element, Fill, Length, keyboard};
use kith_core::engine::{FriendInfo, MessageState, MessageView, Witness};
use kith_core::history::Author;
use kith_proto::wire::Timestamp;

use super::app::{
    ADD_ID, ADD_IMAGE, ADD_NOTE, App, COMPOSER, Chat, Confirm, LINK_CODE, LINK_NAME, MESSAGES,
    Main, Message, Notice, PASS_FIELDS, Phase, Picture, SETUP_NAME, SETUP_PASSPHRASE, Screen,
    SettingsForm, Setup, Toggle, UNLOCK, Unlock,
};
use super::bridge::{Settings, ThemeChoice};
use super::fonts;

const GAP: f32 = 12.0;
const PAD: f32 = 16.0;
const NAV_WIDTH: f32 = 170.0;
const FRIENDS_WIDTH: f32 = 250.0;
const FORM_WIDTH: f32 = 560.0;

impl App {
    /// The window's contents.
    pub fn view(&self) -> Element<'_, Message> {
        let body: Element<'_, Message> = match &self.phase {
            Phase::Fatal(why) => fatal(why),
            Phase::Setup(setup) => setup_view(setup),
            Phase::Unlock(unlock) => unlock_view(unlock),
            Phase::Starting => center(text("Starting Kith…").size(20)).into(),
            Phase::Running(main) => main_view(main, &self.settings),
        };
        match &self.notice {
            // Over the top of the window, so nothing moves when it comes
            // and goes, and the composer at the foot stays usable.
            Some(notice) => iced::widget::stack![body, notice_bar(notice)].into(),
            None => body,
        }
    }
}

fn notice_bar(notice: &Notice) -> Element<'_, Message> {
    let (line, style): (&str, fn(&iced::Theme) -> container::Style) = match notice {
        Notice::Error(line) => (line, container::danger),
        Notice::Info(line) => (line, container::secondary),
    };
    container(
        row![
            text(line).width(Fill),
            button(text("Dismiss"))
                .on_press(Message::Dismiss)
                .style(button::text),
        ]
        .spacing(GAP)
        .align_y(Alignment::Center),
    )
    .padding([8.0, PAD])
    .width(Fill)
    .style(style)
    .into()
}

fn fatal(why: &str) -> Element<'_, Message> {
    center(
        column![
            text("Kith cannot open this profile").size(22),
            text(why),
            text("Nothing was changed. Fix the problem and start Kith again.")
                .style(text::secondary),
        ]
        .spacing(GAP)
        .max_width(FORM_WIDTH),
    )
    .into()
}

fn heading(label: &str) -> Element<'_, Message> {
    text(label).size(24).font(fonts::BOLD).into()
}

fn setup_view(setup: &Setup) -> Element<'_, Message> {
    if let Some(join) = &setup.join {
        let mut page = column![
            heading("Link this computer to your account"),
            text("On a computer that already has your account, open Kith, go to Devices, and scan or paste this code. It works once, for five minutes."),
        ]
        .spacing(GAP)
        .max_width(FORM_WIDTH);
        match &join.code {
            Some((code, qr)) => {
                page = page
                    .push(
                        center(qr_code(qr).cell_size(4).style(print_style)).height(Length::Shrink),
                    )
                    .push(
                        text(code)
                            .font(fonts::MONO)
                            .size(13)
                            .wrapping(text::Wrapping::Glyph),
                    )
                    .push(
                        button(text("Copy the code"))
                            .on_press(Message::Copy(code.clone()))
                            .style(button::secondary),
                    );
            }
            None => page = page.push(text("Making a code…")),
        }
        if let Some((name, _, _)) = &join.offer
            && join.accepted
        {
            page = page.push(text(format!("Joining {name}'s account…")).font(fonts::BOLD));
            return center(page).padding(PAD).into();
        }
        if let Some((name, id, _)) = &join.offer {
            page = page.push(
                container(
                    column![
                        text(format!("{name} offers their account:")).font(fonts::BOLD),
                        text(id.to_string()).font(fonts::MONO).size(13),
                        text("Join this account? This computer will read and send their messages."),
                        row![
                            button(text("Join")).on_press(Message::AnswerOffer(true)),
                            button(text("Not this one"))
                                .on_press(Message::AnswerOffer(false))
                                .style(button::secondary),
                        ]
                        .spacing(GAP),
                    ]
                    .spacing(8),
                )
                .padding(PAD)
                .style(container::bordered_box),
            );
        }
        page = page.push(
            button(text("Cancel"))
                .on_press(Message::CancelJoin)
                .style(button::secondary),
        );
        return center(page).padding(PAD).into();
    }
    let create = (!setup.busy).then_some(Message::Create);
    let page = column![
        heading("Welcome to Kith"),
        text("Chat with friends directly, with no company in the middle. Choose the name your friends will see."),
        text_input("Your name", &setup.name)
            .id(SETUP_NAME)
            .on_input(Message::SetupName)
            .on_submit_maybe(create.clone()),
        text("A passphrase locks your messages on this computer. You can leave it empty.")
            .style(text::secondary),
        text_input("Passphrase (optional)", &setup.passphrase)
            .id(SETUP_PASSPHRASE[0])
            .secure(true)
            .on_input(Message::SetupPassphrase),
        text_input("Passphrase again", &setup.repeat)
            .id(SETUP_PASSPHRASE[1])
            .secure(true)
            .on_input(Message::SetupRepeat)
            .on_submit_maybe(create.clone()),
        row![
            button(text(if setup.busy { "Creating…" } else { "Create my account" }))
                .on_press_maybe(create),
            button(text("I already use Kith on another computer"))
                .on_press_maybe((!setup.busy).then_some(Message::StartJoin))
                .style(button::secondary),
        ]
        .spacing(GAP),
    ]
    .spacing(GAP)
    .max_width(FORM_WIDTH);
    center(page).padding(PAD).into()
}

fn unlock_view(unlock: &Unlock) -> Element<'_, Message> {
    let submit = (!unlock.busy).then_some(Message::Unlock);
    center(
        column![
            heading("Unlock Kith"),
            text("This profile is locked with a passphrase."),
            text_input("Passphrase", &unlock.passphrase)
                .id(UNLOCK)
                .secure(true)
                .on_input(Message::UnlockPassphrase)
                .on_submit_maybe(submit.clone()),
            button(text(if unlock.busy {
                "Unlocking…"
            } else {
                "Unlock"
            }))
            .on_press_maybe(submit),
        ]
        .spacing(GAP)
        .max_width(FORM_WIDTH),
    )
    .padding(PAD)
    .into()
}

fn main_view<'a>(main: &'a Main, settings: &'a Settings) -> Element<'a, Message> {
    let content: Element<'a, Message> = match main.screen {
        Screen::Chats => chats(main),
        Screen::MyId => my_id(main),
        Screen::AddFriend => add_friend(main),
        Screen::Requests => requests(main),
        Screen::Devices => devices(main),
        Screen::Settings => settings_view(main, settings),
    };
    row![nav(main), rule::vertical(1), content].into()
}

fn nav(main: &Main) -> Element<'_, Message> {
    let mut items = Column::new().spacing(4).padding(8).width(NAV_WIDTH);
    items = items.push(container(text("Kith").size(22).font(fonts::BOLD)).padding([8.0, 8.0]));
    for screen in Screen::ALL {
        let label = match screen {
            Screen::Requests if !main.requests.is_empty() => {
                format!("{} ({})", screen.label(), main.requests.len())
            }
            Screen::Chats => {
                let unread: usize = main.friends.iter().map(|f| f.unread).sum();
                if unread > 0 {
                    format!("{} ({unread})", screen.label())
                } else {
                    screen.label().to_owned()
                }
            }
            _ => screen.label().to_owned(),
        };
        let style = if main.screen == screen {
            button::primary
        } else {
            button::text
        };
        items = items.push(
            button(text(label))
                .width(Fill)
                .style(style)
                .on_press(Message::Show(screen)),
        );
    }
    let connected = main.status.as_ref().map(|s| s.connected).unwrap_or(0);
    items = items.push(space::vertical()).push(
        text(if connected > 0 {
            format!(
                "● online ({connected} {})",
                if connected == 1 { "peer" } else { "peers" }
            )
        } else {
            "○ looking for the network…".to_owned()
        })
        .size(12)
        .style(if connected > 0 { good } else { text::secondary }),
    );
    items.height(Fill).into()
}

fn chats(main: &Main) -> Element<'_, Message> {
    let mut list = Column::new().spacing(4).padding(8);
    if main.friends.is_empty() {
        list = list.push(
            column![
                text("No friends yet.").font(fonts::BOLD),
                text("Show them your ID under My ID, or add theirs under Add a friend.")
                    .style(text::secondary),
            ]
            .spacing(6)
            .padding(8),
        );
    }
    for friend in &main.friends {
        list = list.push(friend_row(main, friend));
    }
    let conversation = match &main.chat {
        Some(chat) => conversation(main, chat),
        None => center(text("Pick a friend to talk to.").style(text::secondary)).into(),
    };
    row![
        scrollable(list).width(FRIENDS_WIDTH).height(Fill),
        rule::vertical(1),
        conversation,
    ]
    .into()
}

fn friend_row<'a>(main: &'a Main, friend: &'a FriendInfo) -> Element<'a, Message> {
    let open = main
        .chat
        .as_ref()
        .is_some_and(|c| c.friend == friend.account);
    let mut status = row![
        text(if friend.online {
            "● online"
        } else {
            "○ offline"
        })
        .size(12)
        .style(if friend.online { good } else { text::secondary })
    ]
    .spacing(8);
    if main.typing.contains_key(&friend.account) {
        status = status.push(text("typing…").size(12).style(text::primary));
    }
    if friend.queued > 0 {
        status = status.push(
            text(format!("{} waiting", friend.queued))
                .size(12)
                .style(text::secondary),
        );
    }
    let mut line =
        row![text(&friend.name).font(fonts::BOLD).width(Fill)].align_y(Alignment::Center);
    if friend.unread > 0 {
        line = line.push(
            container(text(friend.unread.to_string()).size(12))
                .padding([2.0, 8.0])
                .style(container::primary),
        );
    }
    button(column![line, status].spacing(2))
        .width(Fill)
        .style(if open { selected } else { button::text })
        .on_press(Message::Open(friend.account))
        .into()
}

fn conversation<'a>(main: &'a Main, chat: &'a Chat) -> Element<'a, Message> {
    let friend = main.friend(&chat.friend);
    let name = friend.map(|f| f.name.as_str()).unwrap_or("Friend");
    let mut header = column![
        row![
            text(name).size(20).font(fonts::BOLD).width(Fill),
            button(text(if chat.show_safety {
                "Hide safety number"
            } else {
                "Safety number"
            }))
            .style(button::text)
            .on_press(Message::ToggleSafety),
        ]
        .align_y(Alignment::Center),
        text(match friend {
            Some(f) if f.online => "online",
            _ => "offline: messages wait with volunteers until they are back",
        })
        .size(12)
        .style(text::secondary),
    ]
    .spacing(2);
    if chat.show_safety {
        header = header.push(
            container(
                column![
                    text("Compare this number with your friend's, in person or on a call. If it matches, nobody is in between.").size(13),
                    text(&chat.safety).font(fonts::MONO),
                ]
                .spacing(6),
            )
            .padding(8)
            .style(container::bordered_box),
        );
    }

    let mut messages = Column::new().spacing(8).padding([8.0, PAD]);
    if chat.loading || (chat.refreshing && chat.messages.is_empty()) {
        messages = messages.push(text("Loading…").style(text::secondary));
    } else if chat.older.is_none() && !chat.messages.is_empty() {
        messages = messages.push(
            text("This is the start of your conversation.")
                .size(12)
                .style(text::secondary),
        );
    }
    for message in &chat.messages {
        messages = messages.push(bubble(main, name, message));
    }
    let list = scrollable(messages)
        .id(MESSAGES)
        .anchor_bottom()
        .on_scroll(Message::Scrolled)
        .height(Fill)
        .width(Fill);

    let mut bottom = Column::new().spacing(4);
    if main.typing.contains_key(&chat.friend) {
        bottom = bottom.push(
            text(format!("{name} is typing…"))
                .size(12)
                .style(text::secondary),
        );
    }
    if chat.editing.is_some() {
        bottom = bottom.push(
            row![
                text("Editing a message. Enter saves, Esc cancels.")
                    .size(12)
                    .width(Fill),
                button(text("Cancel").size(12))
                    .style(button::text)
                    .on_press(Message::CancelEdit),
            ]
            .align_y(Alignment::Center),
        );
    }
    let editor = text_editor(&chat.composer)
        .id(COMPOSER)
        .placeholder("Write a message. Enter sends, Shift+Enter starts a new line.")
        .on_action(Message::Compose)
        .key_binding(composer_keys)
        .min_height(40)
        .max_height(160)
        .padding(10);
    bottom = bottom.push(
        row![
            editor,
            button(text(if chat.editing.is_some() {
                "Save"
            } else {
                "Send"
            }))
            .on_press(Message::Send)
            .padding([10.0, 18.0]),
        ]
        .spacing(8)
        .align_y(Alignment::End),
    );
    column![
        container(header).padding([10.0, PAD]),
        rule::horizontal(1),
        list,
        rule::horizontal(1),
        container(bottom).padding([10.0, PAD]),
    ]
    .width(Fill)
    .into()
}

/// Enter sends; Shift+Enter is a new line; everything else as usual.
fn composer_keys(press: text_editor::KeyPress) -> Option<text_editor::Binding<Message>> {
    let enter = matches!(
        press.key.as_ref(),
        keyboard::Key::Named(keyboard::key::Named::Enter)
    );
    if enter
        && !press.modifiers.shift()
        && matches!(press.status, text_editor::Status::Focused { .. })
    {
        return Some(text_editor::Binding::Custom(Message::Send));
    }
    text_editor::Binding::from_key_press(press)
}

/// One message. Few widgets each, since a long conversation holds many:
/// author, time and "edited" share a line of text; the state (ours) or
/// the witness mark (theirs) is one more; Edit and Delete show on the
/// message the user clicked.
fn bubble<'a>(
    main: &'a Main,
    friend_name: &'a str,
    message: &'a MessageView,
) -> Element<'a, Message> {
    let ours = matches!(message.author, Author::Me);
    let who = if ours { "You" } else { friend_name };
    let edited = if message.edited && !message.deleted {
        " · edited"
    } else {
        ""
    };
    let meta = text(format!("{who} · {}{edited}", clock(message.sent_at)))
        .size(12)
        .style(text::secondary);
    let body: Element<'a, Message> = if message.deleted {
        text("message deleted").style(text::secondary).into()
    } else {
        text(&message.body).into()
    };
    let mut col = column![meta, body].spacing(4);
    if let Some(witness) = &message.witness {
        let (mark, style): (String, fn(&iced::Theme) -> text::Style) = match witness {
            Witness::Witnessed => ("✓ time witnessed".into(), good),
            Witness::Corrected { at } => (
                format!("⚠ their clock was off; witnessed at {}", clock(*at)),
                text::warning,
            ),
            Witness::Unwitnessed => ("time not witnessed".into(), text::secondary),
        };
        col = col.push(text(mark).size(12).style(style));
    }
    if ours {
        let mut actions = row![].spacing(8).align_y(Alignment::Center);
        if let Some(state) = &message.state {
            let (line, style) = state_line(state);
            actions = actions.push(text(line).size(12).style(style));
        }
        if !message.deleted && main.selected == Some(message.id) {
            actions = actions.push(space::horizontal());
            let confirming = main.confirm == Some(Confirm::Delete(message.id));
            if confirming {
                actions = actions
                    .push(text("Delete for everyone?").size(12))
                    .push(small(button::danger, "Delete", Message::Confirmed))
                    .push(small(button::text, "Keep", Message::NotConfirmed));
            } else {
                actions = actions
                    .push(small(button::text, "Edit", Message::Edit(message.id)))
                    .push(small(
                        button::text,
                        "Delete",
                        Message::Ask(Confirm::Delete(message.id)),
                    ));
            }
        }
        col = col.push(actions);
    }
    let bubble = container(col)
        .padding([8.0, 12.0])
        .max_width(620)
        .style(if ours {
            container::bordered_box
        } else {
            container::rounded_box
        });
    let bubble: Element<'a, Message> = if ours && !message.deleted {
        iced::widget::mouse_area(bubble)
            .on_press(Message::Select(message.id))
            .into()
    } else {
        bubble.into()
    };
    let line = if ours {
        row![space::horizontal(), bubble]
    } else {
        row![bubble, space::horizontal()]
    };
    line.into()
}

/// The white margin of four cells that scanners need around a QR code.
fn quiet_zone<'a>(
    code: impl Into<Element<'a, Message>>,
    margin: f32,
) -> iced::widget::Container<'a, Message> {
    container(code)
        .padding(margin)
        .style(|_| container::background(iced::Color::WHITE))
}

/// The open conversation's row: a shade of the background, with the
/// theme's own text colour, in light and dark alike.
fn selected(theme: &iced::Theme, _: button::Status) -> button::Style {
    let shade = theme.extended_palette().background.weak;
    button::Style {
        background: Some(shade.color.into()),
        text_color: shade.text,
        border: iced::border::rounded(4),
        ..button::Style::default()
    }
}

/// QR codes stay dark on white in every theme: scanners (and
/// `kith id check --image`) expect that.
fn print_style(_: &iced::Theme) -> qr_code::Style {
    qr_code::Style {
        cell: iced::Color::BLACK,
        background: iced::Color::WHITE,
    }
}

/// Good news (online, read, witnessed), readable on light and dark
/// backgrounds alike.
fn good(theme: &iced::Theme) -> text::Style {
    let color = if theme.extended_palette().is_dark {
        iced::Color::from_rgb8(0x5f, 0xd3, 0x9b)
    } else {
        theme.palette().success
    };
    text::Style { color: Some(color) }
}

fn small<'a>(
    style: fn(&iced::Theme, button::Status) -> button::Style,
    label: &'a str,
    message: Message,
) -> Element<'a, Message> {
    button(text(label).size(12))
        .padding([2.0, 6.0])
        .style(style)
        .on_press(message)
        .into()
}

fn state_line(state: &MessageState) -> (String, fn(&iced::Theme) -> text::Style) {
    match state {
        MessageState::Queued => ("queued".into(), text::secondary),
        MessageState::Stored { volunteers, of } => (
            format!("stored with {volunteers} of {of} volunteers"),
            text::secondary,
        ),
        MessageState::Delivered { .. } => ("delivered".into(), text::secondary),
        MessageState::Read { at } => (format!("read {}", clock(*at)), good),
        MessageState::Failed { reason } => (format!("not sent: {reason}"), text::danger),
        MessageState::SentElsewhere => {
            ("sent from another of your devices".into(), text::secondary)
        }
    }
}

/// A time as the user's clock shows it: the time alone today, with the
/// date otherwise.
pub fn clock(at: Timestamp) -> String {
    let Ok(ms) = i64::try_from(at.0) else {
        return "?".into();
    };
    let Ok(stamp) = jiff::Timestamp::from_millisecond(ms) else {
        return "?".into();
    };
    let zone = jiff::tz::TimeZone::system();
    let then = stamp.to_zoned(zone.clone());
    let today = jiff::Timestamp::now().to_zoned(zone).date();
    if then.date() == today {
        then.strftime("%H:%M").to_string()
    } else {
        then.strftime("%Y-%m-%d %H:%M").to_string()
    }
}

fn page<'a>(title: &'a str, body: impl Into<Element<'a, Message>>) -> Element<'a, Message> {
    scrollable(
        column![heading(title), body.into()]
            .spacing(GAP)
            .padding(PAD * 1.5)
            .max_width(FORM_WIDTH + PAD * 3.0),
    )
    .width(Fill)
    .height(Fill)
    .into()
}

fn my_id(main: &Main) -> Element<'_, Message> {
    let Some((id, qr)) = &main.id else {
        return page("My ID", text("Loading…"));
    };
    let rotate: Element<'_, Message> = if main.confirm == Some(Confirm::Rotate) {
        column![
            text("A new ID stops the current one from reaching you with new requests (spam, or a list you no longer want to be on). Friends you have are not affected."),
            row![
                button(text("Get a new ID")).style(button::danger).on_press(Message::Confirmed),
                button(text("Keep this one")).style(button::secondary).on_press(Message::NotConfirmed),
            ]
            .spacing(GAP),
        ]
        .spacing(8)
        .into()
    } else {
        button(text("Get a new ID…"))
            .style(button::secondary)
            .on_press(Message::Ask(Confirm::Rotate))
            .into()
    };
    page(
        "My ID",
        column![
            text("Friends add you with this ID: show them the QR code, or send them the text."),
            quiet_zone(qr_code(qr).cell_size(5).style(print_style), 20.0),
            text(id.to_string()).font(fonts::MONO).size(14),
            row![
                button(text("Copy my ID")).on_press(Message::Copy(id.to_string())),
                button(text("Copy as a link"))
                    .style(button::secondary)
                    .on_press(Message::Copy(id.to_uri())),
            ]
            .spacing(GAP),
            rule::horizontal(1),
            rotate,
        ]
        .spacing(GAP),
    )
}

fn add_friend(main: &Main) -> Element<'_, Message> {
    let add = &main.add;
    let send = (!add.busy).then_some(Message::SendRequest);
    page(
        "Add a friend",
        column![
            text("Paste their Kith ID or kith: link."),
            text_input("Their Kith ID, or a kith: link", &add.id)
                .id(ADD_ID)
                .font(fonts::MONO)
                .on_input(Message::AddId)
                .on_submit_maybe(send.clone()),
            text("Or read it from a picture of their QR code (choose it, or type its path):").style(text::secondary),
            row![
                text_input("/path/to/qr.png", &add.image)
                    .id(ADD_IMAGE)
                    .on_input(Message::AddImage)
                    .on_submit(Message::ReadImage),
                button(text("Read")).style(button::secondary).on_press(Message::ReadImage),
                button(text("Choose…"))
                    .style(button::secondary)
                    .on_press(Message::ChooseImage(Picture::FriendId)),
            ]
            .spacing(8),
            text("A note, so they know who you are:"),
            text_input("Hi, it's me from …", &add.note)
                .id(ADD_NOTE)
                .on_input(Message::AddNote)
                .on_submit_maybe(send.clone()),
            button(text(if add.busy { "Sending…" } else { "Send request" })).on_press_maybe(send),
            text("They see your name and note. Until they accept, they learn nothing else about you, and you nothing about them.")
                .size(12)
                .style(text::secondary),
        ]
        .spacing(GAP),
    )
}

/// A question with a button that does it (in danger colours) and one
/// that cancels.
fn ask_first(question: String, action: &str) -> Row<'_, Message> {
    row![
        text(question).width(Fill),
        button(text(action))
            .style(button::danger)
            .on_press(Message::Confirmed),
        button(text("Cancel"))
            .style(button::secondary)
            .on_press(Message::NotConfirmed),
    ]
}

fn requests(main: &Main) -> Element<'_, Message> {
    let mut list = Column::new().spacing(GAP);
    if main.requests.is_empty() {
        list = list.push(text("No requests waiting.").style(text::secondary));
    }
    if main.requests.len() > 1 {
        // After a flood of requests (someone spamming a leaked ID), one by
        // one is no way to clear them.
        let waiting = format!("{} waiting", main.requests.len());
        let bulk = if main.confirm == Some(Confirm::DeclineAll) {
            ask_first(
                format!(
                    "Decline all {}? Their senders' requests will be ignored.",
                    main.requests.len()
                ),
                "Decline all",
            )
        } else {
            row![
                text(waiting).style(text::secondary).width(Fill),
                button(text("Decline all"))
                    .style(button::secondary)
                    .on_press(Message::Ask(Confirm::DeclineAll)),
            ]
        };
        list = list.push(bulk.spacing(8).align_y(Alignment::Center));
    }
    for request in &main.requests {
        let blocking = main.confirm == Some(Confirm::Block(request.account));
        let actions = if blocking {
            ask_first(
                "Block them? Their requests and messages will be refused.".into(),
                "Block",
            )
        } else {
            row![
                button(text("Accept")).on_press(Message::Accept(request.account)),
                button(text("Decline"))
                    .style(button::secondary)
                    .on_press(Message::Decline(request.account)),
                button(text("Block"))
                    .style(button::text)
                    .on_press(Message::Ask(Confirm::Block(request.account))),
            ]
        }
        .spacing(8)
        .align_y(Alignment::Center);
        let mut card = column![
            row![
                text(&request.name).font(fonts::BOLD).width(Fill),
                text(clock(request.sent_at)).size(12).style(text::secondary),
            ],
            text(request.id.to_string()).font(fonts::MONO).size(12),
        ]
        .spacing(4);
        if !request.message.is_empty() {
            card = card.push(text(format!("“{}”", request.message)));
        }
        list = list.push(
            container(card.push(actions))
                .padding(PAD)
                .width(Fill)
                .style(container::bordered_box),
        );
    }
    if !main.outgoing.is_empty() {
        list = list.push(text("Sent by you, not yet answered").font(fonts::BOLD));
        for sent in &main.outgoing {
            list = list.push(
                column![
                    text(sent.id.to_string()).font(fonts::MONO).size(12),
                    text(format!(
                        "sent {}, {}",
                        clock(sent.sent_at),
                        if sent.dropped {
                            "waiting in the network for them"
                        } else {
                            "not yet in the network"
                        }
                    ))
                    .size(12)
                    .style(text::secondary),
                ]
                .spacing(2),
            );
        }
    }
    list = list.push(
        button(text("Check for new requests"))
            .style(button::secondary)
            .on_press(Message::CheckRequests),
    );
    page("Requests", list)
}

fn devices(main: &Main) -> Element<'_, Message> {
    let mut list = Column::new().spacing(8);
    for device in &main.devices {
        let peer = device.peer_id.to_string();
        let mut line = row![
            column![
                text(if device.this_device {
                    format!("{} (this computer)", device.name)
                } else {
                    device.name.clone()
                })
                .font(fonts::BOLD),
                text(format!(
                    "{} · added {}{}",
                    short(&peer),
                    clock(Timestamp(device.added_at.saturating_mul(1000))),
                    if device.this_device {
                        ""
                    } else if device.online {
                        " · connected"
                    } else {
                        " · not connected"
                    }
                ))
                .size(12)
                .style(text::secondary),
            ]
            .width(Fill)
            .spacing(2),
        ]
        .align_y(Alignment::Center)
        .spacing(8);
        if !device.this_device {
            let removing =
                matches!(&main.confirm, Some(Confirm::RemoveDevice { peer: p, .. }) if *p == peer);
            if removing {
                line = line
                    .push(text("Remove it from your account?").size(13))
                    .push(
                        button(text("Remove"))
                            .style(button::danger)
                            .on_press(Message::Confirmed),
                    )
                    .push(
                        button(text("Keep"))
                            .style(button::secondary)
                            .on_press(Message::NotConfirmed),
                    );
            } else {
                line = line.push(button(text("Remove…")).style(button::secondary).on_press(
                    Message::Ask(Confirm::RemoveDevice {
                        name: device.name.clone(),
                        peer,
                    }),
                ));
            }
        }
        list = list.push(
            container(line)
                .padding(10)
                .width(Fill)
                .style(container::bordered_box),
        );
    }
    let link = &main.link;
    let go = (!link.busy).then_some(Message::LinkDevice);
    page(
        "Devices",
        column![
            text("Your account on each of your computers; messages, friends and read state stay the same on all of them."),
            list,
            rule::horizontal(1),
            text("Add a computer").font(fonts::BOLD),
            text("On the new computer, open Kith and choose \"I already use Kith on another computer\". Paste the code it shows here, or read its QR code from a picture."),
            text_input("kith-link:…", &link.code)
                .id(LINK_CODE)
                .font(fonts::MONO)
                .on_input(Message::LinkCode)
                .on_submit_maybe(go.clone()),
            row![
                text_input("/path/to/code.png", &link.image)
                    .on_input(Message::LinkImage)
                    .on_submit(Message::ReadLinkImage),
                button(text("Read")).style(button::secondary).on_press(Message::ReadLinkImage),
                button(text("Choose…"))
                    .style(button::secondary)
                    .on_press(Message::ChooseImage(Picture::LinkCode)),
            ]
            .spacing(8),
            text_input("A name for it, like \"laptop\"", &link.name)
                .id(LINK_NAME)
                .on_input(Message::LinkName)
                .on_submit_maybe(go.clone()),
            button(text(if link.busy { "Linking… (confirm on the new computer)" } else { "Link it" }))
                .on_press_maybe(go),
        ]
        .spacing(GAP),
    )
}

fn passphrase_form(form: &SettingsForm) -> Element<'_, Message> {
    let go = (!form.changing).then_some(Message::ChangePassphrase);
    let mut col = column![
        text("Passphrase").font(fonts::BOLD),
        text(if form.locked {
            "Kith is locked with a passphrase: your identity and messages on this computer open only with it."
        } else {
            "Kith opens without a passphrase. One locks your identity and messages on this computer."
        })
        .size(13),
    ]
    .spacing(8);
    if form.locked {
        col = col.push(
            text_input("Current passphrase", &form.current)
                .id(PASS_FIELDS[0])
                .secure(true)
                .on_input(Message::PassCurrent),
        );
    }
    let label = match (form.changing, form.locked, form.new.is_empty()) {
        (true, _, _) => "Changing… (a few seconds)",
        (false, true, true) => "Remove the passphrase",
        (false, true, false) => "Change the passphrase",
        (false, false, _) => "Lock with this passphrase",
    };
    col.push(
        text_input(
            if form.locked {
                "New passphrase (empty to remove it)"
            } else {
                "New passphrase"
            },
            &form.new,
        )
        .id(PASS_FIELDS[1])
        .secure(true)
        .on_input(Message::PassNew),
    )
    .push(
        text_input("New passphrase again", &form.repeat)
            .id(PASS_FIELDS[2])
            .secure(true)
            .on_input(Message::PassRepeat)
            .on_submit_maybe(go.clone()),
    )
    .push(
        button(text(label))
            .style(button::secondary)
            .on_press_maybe(go),
    )
    .into()
}

fn short(peer: &str) -> String {
    let tail: String = peer
        .chars()
        .rev()
        .take(8)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("…{tail}")
}

fn settings_view<'a>(main: &'a Main, settings: &'a Settings) -> Element<'a, Message> {
    let form = &main.settings;
    let theme = &settings.theme;
    let choice = |label: &'a str, value: Option<ThemeChoice>| {
        button(text(label))
            .style(if *theme == value {
                button::primary
            } else {
                button::secondary
            })
            .on_press(Message::SetTheme(value))
    };
    let mut about = column![].spacing(4);
    if let Some(status) = &main.status {
        about = about
            .push(
                text(format!("This computer: {}", status.peer_id))
                    .size(12)
                    .font(fonts::MONO),
            )
            .push(text(format!("Connected peers: {}", status.connected)).size(12))
            .push(text(format!("Waiting to be sent: {}", status.outbox)).size(12));
        if let Some(usage) = &status.volunteering {
            about = about.push(
                text(format!(
                    "Keeping mail for others: {} items, {} KiB",
                    usage.items,
                    usage.bytes / 1024
                ))
                .size(12),
            );
        }
    }
    page(
        "Settings",
        column![
            text("Appearance").font(fonts::BOLD),
            row![
                choice("Like the system", None),
                choice("Light", Some(ThemeChoice::Light)),
                choice("Dark", Some(ThemeChoice::Dark)),
            ]
            .spacing(8),
            rule::horizontal(1),
            text("Notifications").font(fonts::BOLD),
            checkbox(!settings.notifications_off)
                .label("Tell me about new messages when Kith is in the background")
                .on_toggle(|on| Message::Set(Toggle::Notifications(on))),
            checkbox(!settings.notification_text_hidden)
                .label("Show the message text in notifications")
                .on_toggle_maybe(
                    (!settings.notifications_off)
                        .then_some(|on| Message::Set(Toggle::NotificationText(on)))
                ),
            rule::horizontal(1),
            passphrase_form(form),
            rule::horizontal(1),
            text("Network").font(fonts::BOLD),
            text("Bootstrap nodes, separated by spaces (addresses as kithd prints them):").size(13),
            text_input("/ip4/…/tcp/…/p2p/…", &form.bootstrap)
                .font(fonts::MONO)
                .on_input(Message::BootstrapText),
            checkbox(form.mdns)
                .label("Find friends on the local network (mDNS)")
                .on_toggle(Message::SetMdns),
            text("Keep offline mail for others, in megabytes (empty for none):").size(13),
            text_input("none", &form.volunteer).on_input(Message::VolunteerText),
            button(text("Save")).on_press(Message::SaveSettings),
            rule::horizontal(1),
            text("About").font(fonts::BOLD),
            about,
        ]
        .spacing(GAP),
    )
}
