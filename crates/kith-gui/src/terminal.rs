//! The messenger commands of the terminal client: each builds a
//! [`Request`], hands it to the profile's daemon or to an engine started
//! for the command, and prints the JSON answer as is (`--json`) or as text.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kith_core::engine::{Engine, Event};
use kith_proto::link::LinkCode;
use kith_store::profile::Profile;
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;

use crate::cli::{
    Cli, CliError, Command, DeviceCommand, node_options, passphrase_for, print_json,
    read_image_file,
};
use crate::control::{self, DaemonClient, Request};

type Events = Box<dyn futures::Stream<Item = Event> + Unpin + Send>;

/// Where requests go.
enum Backend {
    Daemon {
        client: DaemonClient,
        profile: Profile,
    },
    Local {
        engine: Engine,
        events: Events,
    },
}

impl Backend {
    async fn open(cli: &Cli) -> Result<Self, CliError> {
        let profile = Profile::locate(&cli.profile)?;
        if let Some(client) = DaemonClient::connect(&profile).await {
            return Ok(Backend::Daemon { client, profile });
        }
        let options = node_options(cli)?;
        let passphrase = passphrase_for(&profile)?;
        let (engine, events) = control::start_engine(&profile, passphrase, &options)?;
        Ok(Backend::Local {
            engine,
            events: Box::new(events),
        })
    }

    async fn call(&mut self, request: &Request) -> Result<Value, CliError> {
        Ok(match self {
            Backend::Daemon { client, .. } => client.call(request).await?,
            Backend::Local { engine, .. } => control::execute(engine, request).await?,
        })
    }

    fn is_local(&self) -> bool {
        matches!(self, Backend::Local { .. })
    }

    /// With a local engine: waits until nothing is left to send (or
    /// `limit` passes), so a one-shot command gets its work out.
    async fn settle(&mut self, limit: Duration) {
        let Backend::Local { engine, events } = self else {
            return;
        };
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            let outbox = engine.status().await.map(|s| s.outbox).unwrap_or(0);
            let placing = engine
                .requests()
                .await
                .map(|(_, out)| out.iter().any(|o| !o.dropped))
                .unwrap_or(false);
            if outbox == 0 && !placing {
                break;
            }
            // Drain events so the engine never waits on us.
            let _ = tokio::time::timeout(Duration::from_millis(100), events.next()).await;
        }
    }

    async fn close(self) {
        if let Backend::Local { engine, .. } = self {
            let _ = engine.shutdown().await;
        }
    }
}

/// The nospam rotation of `kith id rotate`.
pub fn rotate(cli: &Cli) -> Result<String, CliError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut backend = Backend::open(cli).await?;
        let answer = backend.call(&Request::RotateNospam).await;
        backend.close().await;
        let answer = answer?;
        Ok(answer["id"].as_str().unwrap_or_default().to_owned())
    })
}

/// Tells the profile's daemon, if one runs, that the user is showing their
/// ID (`kith id show`), so it looks for friend requests every minute for a
/// while. Without a daemon nothing is polling, and nothing is started.
pub fn expect_requests(profile: &Profile) {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    runtime.block_on(async {
        let call = async {
            let mut client = DaemonClient::connect(profile).await?;
            client.call(&Request::ExpectRequests).await.ok()
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), call).await;
    });
}

/// Runs a messenger command.
pub async fn run(cli: &Cli, command: &Command, out: &mut impl Write) -> Result<(), CliError> {
    if let Command::Daemon { .. } = command {
        return daemon(cli, out).await;
    }
    if let Command::Chat { friend } = command {
        return chat(cli, friend, out).await;
    }
    let request = match command {
        Command::Add { id, message } => Request::Add {
            id: id.clone(),
            message: message.join(" "),
        },
        Command::Requests => Request::Requests,
        Command::Accept { who } => Request::Accept { who: who.clone() },
        Command::Decline { who: Some(who), .. } => Request::Decline { who: who.clone() },
        Command::Decline { who: None, .. } => Request::DeclineAll,
        Command::Block { who } => Request::Block { who: who.clone() },
        Command::Friends => Request::Friends,
        Command::Send { friend, text, .. } => Request::Send {
            to: friend.clone(),
            text: text.join(" "),
        },
        Command::Edit {
            friend,
            message,
            text,
        } => Request::Edit {
            to: friend.clone(),
            message: message.clone(),
            text: text.join(" "),
        },
        Command::Delete { friend, message } => Request::Delete {
            to: friend.clone(),
            message: message.clone(),
        },
        Command::History { friend, limit } => Request::History {
            with: friend.clone(),
            limit: *limit,
            mark_read: true,
        },
        Command::Safety { friend } => Request::Safety {
            with: friend.clone(),
        },
        Command::Status => Request::Status,
        Command::Name { name } => Request::SetName {
            name: name.join(" "),
        },
        Command::Device(DeviceCommand::Add { code, image, name }) => Request::LinkDevice {
            code: link_code_text(code.as_deref(), image.as_deref())?,
            name: name.clone(),
        },
        Command::Device(DeviceCommand::List) => Request::Devices,
        Command::Device(DeviceCommand::Remove { device }) => Request::RemoveDevice {
            device: device.clone(),
        },
        Command::Id(_)
        | Command::Daemon { .. }
        | Command::Chat { .. }
        | Command::Device(DeviceCommand::Link { .. }) => return Ok(()),
    };
    precheck(&request)?;
    let mut backend = Backend::open(cli).await?;
    let answer = backend.call(&request).await;
    let answer = match answer {
        Ok(answer) => answer,
        Err(e) => {
            backend.close().await;
            return Err(e);
        }
    };
    let mut answer = answer;
    if backend.is_local() {
        let wait = match command {
            Command::Send { wait, .. } => Duration::from_secs(*wait),
            Command::Add { .. } | Command::Accept { .. } => Duration::from_secs(15),
            // The new device list goes out to friends and own devices.
            Command::Device(DeviceCommand::Add { .. } | DeviceCommand::Remove { .. }) => {
                Duration::from_secs(5)
            }
            _ => Duration::ZERO,
        };
        if !wait.is_zero() {
            backend.settle(wait).await;
            if let (Command::Send { friend, .. }, Some(id)) = (command, answer["id"].as_str()) {
                // Report how far the message got.
                let id = id.to_owned();
                if let Ok(Value::Array(history)) = backend
                    .call(&Request::History {
                        with: friend.clone(),
                        limit: 20,
                        mark_read: false,
                    })
                    .await
                    && let Some(m) = history.iter().find(|m| m["id"] == id.as_str())
                {
                    answer["state"] = m["state"].clone();
                }
            }
        }
    }
    backend.close().await;
    if cli.json {
        print_json(out, &answer)?;
    } else {
        print_text(command, &answer, out)?;
    }
    Ok(())
}

/// Refuses what can be refused without the engine, before the profile is
/// opened at all.
fn precheck(request: &Request) -> Result<(), CliError> {
    let check_body = |text: &str| {
        let probe = kith_proto::wire::ChatMessage {
            id: kith_proto::wire::MessageId([0; 16]),
            sent_at: kith_proto::wire::Timestamp(0),
            lamport: kith_proto::wire::Lamport(0),
            body: text.to_owned(),
        };
        probe
            .validate()
            .map_err(|e| control::ControlError::Invalid(format!("not sent: {e}")))
    };
    match request {
        Request::Add { id, .. } => {
            kith_proto::KithId::parse(id)?;
        }
        Request::Send { text, .. } | Request::Edit { text, .. } => check_body(text)?,
        Request::LinkDevice { code, .. } => {
            control::parse_link_code(code)?;
        }
        _ => {}
    }
    Ok(())
}

/// The link code's text, typed or read from a picture of its QR code.
fn link_code_text(code: Option<&str>, image: Option<&Path>) -> Result<String, CliError> {
    match (code, image) {
        (_, Some(path)) => {
            let bytes = read_image_file(path)?;
            let code = LinkCode::read_qr_image(&bytes).map_err(|source| CliError::LinkImage {
                path: path.to_path_buf(),
                source,
            })?;
            Ok(code.to_text())
        }
        (Some(text), None) => Ok(text.to_owned()),
        (None, None) => Err(kith_proto::link::LinkCodeError::Empty.into()),
    }
}

fn short_id(id: &Value) -> String {
    id.as_str().unwrap_or_default().chars().take(12).collect()
}

fn state_text(state: &Value) -> String {
    match state["state"].as_str() {
        Some("failed") => format!("failed: {}", state["reason"].as_str().unwrap_or("")),
        Some("stored") => format!(
            "stored with {} of {}",
            state["volunteers"].as_u64().unwrap_or(0),
            state["of"].as_u64().unwrap_or(0)
        ),
        Some("sent-elsewhere") => "sent from another of your devices".to_owned(),
        Some(s) => s.to_owned(),
        None => String::new(),
    }
}

fn time_text(ms: &Value) -> String {
    let ms = ms.as_u64().unwrap_or(0);
    let secs = ms / 1000;
    let (h, m) = ((secs / 3600) % 24, (secs / 60) % 60);
    format!("{h:02}:{m:02} UTC")
}

/// A Unix time in seconds as a UTC date, `YYYY-MM-DD`.
fn date_text(secs: u64) -> String {
    let mut days = secs / 86_400;
    let mut year = 1970u64;
    loop {
        let leap =
            (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400);
        let length = if leap { 366 } else { 365 };
        if days < length {
            let february = if leap { 29 } else { 28 };
            let months = [31, february, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
            let mut month = 1;
            for length in months {
                if days < length {
                    break;
                }
                days -= length;
                month += 1;
            }
            return format!("{year:04}-{month:02}-{:02}", days + 1);
        }
        days -= length;
        year += 1;
    }
}

fn print_text(command: &Command, answer: &Value, out: &mut impl Write) -> Result<(), CliError> {
    match command {
        Command::Add { id, .. } => {
            writeln!(out, "Friend request to {id} stored.")?;
            writeln!(
                out,
                "It waits in their request drop; they see it next time they check (kith requests)."
            )?;
        }
        Command::Requests => {
            let incoming = answer["incoming"].as_array().cloned().unwrap_or_default();
            if incoming.is_empty() {
                writeln!(out, "No friend requests waiting.")?;
            }
            for r in incoming {
                writeln!(
                    out,
                    "{} ({}…): {}",
                    r["name"].as_str().unwrap_or(""),
                    short_id(&r["id"]),
                    r["message"].as_str().unwrap_or("")
                )?;
                writeln!(out, "  accept with: kith accept {}", short_id(&r["id"]))?;
            }
            for o in answer["outgoing"].as_array().cloned().unwrap_or_default() {
                writeln!(
                    out,
                    "You asked {}… ({})",
                    short_id(&o["id"]),
                    if o["placed"].as_bool() == Some(true) {
                        "waiting for an answer"
                    } else {
                        "not yet placed in the DHT"
                    }
                )?;
            }
        }
        Command::Accept { .. } => writeln!(
            out,
            "{} is now your friend.",
            answer["name"].as_str().unwrap_or("")
        )?,
        Command::Decline { who: Some(who), .. } => {
            writeln!(out, "Declined {who}; their requests will be ignored.")?
        }
        Command::Decline { who: None, .. } => {
            let count = answer["declined"].as_u64().unwrap_or(0);
            writeln!(
                out,
                "Declined {count} waiting request(s); their senders' requests will be ignored."
            )?
        }
        Command::Block { who } => writeln!(out, "Blocked {who}.")?,
        Command::Friends => {
            let friends = answer.as_array().cloned().unwrap_or_default();
            if friends.is_empty() {
                writeln!(
                    out,
                    "No friends yet. Share your ID (kith id show) or add someone's (kith add <ID>)."
                )?;
            }
            for f in friends {
                let mut line = format!(
                    "{} ({}…) {}",
                    f["name"].as_str().unwrap_or(""),
                    short_id(&f["id"]),
                    if f["online"].as_bool() == Some(true) {
                        "online"
                    } else {
                        "offline"
                    }
                );
                if let Some(n) = f["unread"].as_u64().filter(|n| *n > 0) {
                    line.push_str(&format!(", {n} unread"));
                }
                if let Some(n) = f["queued"].as_u64().filter(|n| *n > 0) {
                    line.push_str(&format!(", {n} queued"));
                }
                writeln!(out, "{line}")?;
            }
        }
        Command::Send { .. } => writeln!(
            out,
            "Message {} {}.",
            short_id(&answer["id"]),
            state_text(&answer["state"])
        )?,
        Command::Edit { .. } => writeln!(out, "Edited.")?,
        Command::Delete { .. } => writeln!(out, "Deleted.")?,
        Command::History { friend, .. } => {
            for m in answer.as_array().cloned().unwrap_or_default() {
                print_message(out, &m, friend)?;
            }
        }
        Command::Safety { friend } => {
            writeln!(out, "Safety number with {friend}:")?;
            writeln!(out, "{}", answer["safety_number"].as_str().unwrap_or(""))?;
            writeln!(
                out,
                "Compare it with theirs in person or on a call; if it matches, nobody is in between."
            )?;
        }
        Command::Status => {
            writeln!(out, "Kith ID: {}", answer["id"].as_str().unwrap_or(""))?;
            writeln!(out, "Device: {}", answer["device"].as_str().unwrap_or(""))?;
            for a in answer["listen"].as_array().cloned().unwrap_or_default() {
                writeln!(out, "Listening on {}", a.as_str().unwrap_or(""))?;
            }
            writeln!(
                out,
                "Connected peers: {}, outbox: {}",
                answer["connected"], answer["outbox"]
            )?;
            let mail = &answer["volunteering"];
            if !mail.is_null() {
                writeln!(
                    out,
                    "Keeping mail for others: {} items, {} KiB, for {} accounts",
                    mail["items"],
                    mail["bytes"].as_u64().unwrap_or(0) / 1024,
                    mail["mailboxes"]
                )?;
            }
        }
        Command::Name { .. } => writeln!(
            out,
            "New friends will see you as {}.",
            answer["name"].as_str().unwrap_or("")
        )?,
        Command::Device(DeviceCommand::Add { .. }) => writeln!(
            out,
            "linked {} ({})",
            answer["name"].as_str().unwrap_or(""),
            answer["peer_id"].as_str().unwrap_or("")
        )?,
        Command::Device(DeviceCommand::Remove { .. }) => writeln!(
            out,
            "removed {} ({})",
            answer["name"].as_str().unwrap_or(""),
            answer["peer_id"].as_str().unwrap_or("")
        )?,
        Command::Device(DeviceCommand::List) => {
            for d in answer.as_array().cloned().unwrap_or_default() {
                let mut line = format!(
                    "{}  {}  added {}",
                    d["name"].as_str().unwrap_or(""),
                    d["peer_id"].as_str().unwrap_or(""),
                    date_text(d["added_at"].as_u64().unwrap_or(0))
                );
                if d["this_device"] == true {
                    line.push_str("  this device");
                } else if d["online"] == true {
                    line.push_str("  online");
                } else {
                    line.push_str("  offline");
                }
                writeln!(out, "{line}")?;
            }
        }
        Command::Id(_)
        | Command::Daemon { .. }
        | Command::Chat { .. }
        | Command::Device(DeviceCommand::Link { .. }) => {}
    }
    Ok(())
}

fn print_message(out: &mut impl Write, m: &Value, friend_name: &str) -> Result<(), CliError> {
    let who = if m["from"] == "me" { "me" } else { friend_name };
    let mut line = format!("[{}] {who}: ", time_text(&m["sent_at"]));
    if m["deleted"].as_bool() == Some(true) {
        line.push_str("(deleted)");
    } else {
        line.push_str(m["body"].as_str().unwrap_or(""));
        if m["edited"].as_bool() == Some(true) {
            line.push_str(" (edited)");
        }
    }
    if m["from"] == "me" && !m["state"].is_null() {
        line.push_str(&format!("  [{}]", state_text(&m["state"])));
    }
    match m["witness"]["time"].as_str() {
        Some("witnessed") => line.push_str("  [time witnessed]"),
        Some("corrected") => line.push_str(&format!(
            "  [sender's clock said {}; witnessed {}]",
            time_text(&m["sent_at"]),
            time_text(&m["witness"]["at"])
        )),
        Some("unwitnessed") => line.push_str("  [time not witnessed]"),
        _ => {}
    }
    writeln!(out, "{line}")?;
    Ok(())
}

async fn daemon(cli: &Cli, out: &mut impl Write) -> Result<(), CliError> {
    let profile = Profile::locate(&cli.profile)?;
    if DaemonClient::connect(&profile).await.is_some() {
        return Err(control::ControlError::Start(
            "a kith daemon is already running for this profile".into(),
        )
        .into());
    }
    let options = node_options(cli)?;
    let passphrase = passphrase_for(&profile)?;
    let (engine, events) = control::start_engine(&profile, passphrase, &options)?;
    let status = engine.status().await.map_err(control::ControlError::from)?;
    let socket = control::socket_path(&profile);
    let listener = control::bind(&socket).await?;
    if cli.json {
        print_json(
            out,
            &json!({
                "daemon": profile.name(),
                "id": status.id.to_string(),
                "device": status.peer_id.to_string(),
                "listen": status.listen.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                "socket": control::socket_path(&profile),
            }),
        )?;
    } else {
        writeln!(out, "kith daemon running for profile '{}'", profile.name())?;
        writeln!(out, "Kith ID: {}", status.id)?;
        for a in &status.listen {
            writeln!(out, "Listening on {a}")?;
        }
        writeln!(
            out,
            "Other kith commands for this profile now go through it. Stop with Ctrl-C."
        )?;
    }
    out.flush()?;
    let json = cli.json;
    let mut stdout = std::io::stdout();
    let shutdown = async {
        // SIGTERM too on Unix; Ctrl-C everywhere.
        #[cfg(unix)]
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        #[cfg(unix)]
        let terminated = async {
            match term.as_mut() {
                Some(t) => {
                    t.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let terminated = std::future::pending::<()>();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminated => {}
        }
    };
    control::serve(
        engine,
        events,
        listener,
        move |event| {
            let value = control::event_json(event);
            let line = if json {
                value.to_string()
            } else {
                event_text(&value)
            };
            if !line.is_empty() {
                let _ = writeln!(stdout, "{line}");
                let _ = stdout.flush();
            }
        },
        shutdown,
    )
    .await?;
    Ok(())
}

fn event_text(event: &Value) -> String {
    match event["type"].as_str() {
        Some("request") => format!(
            "Friend request from {}: {} (kith accept {})",
            event["request"]["name"].as_str().unwrap_or(""),
            event["request"]["message"].as_str().unwrap_or(""),
            short_id(&event["request"]["id"])
        ),
        Some("friend_added") => format!(
            "{} is now your friend",
            event["friend"]["name"].as_str().unwrap_or("")
        ),
        Some("message") if event["message"]["from"] == "friend" => format!(
            "Message from {}…: {}",
            event["friend"]
                .as_str()
                .unwrap_or("")
                .chars()
                .take(8)
                .collect::<String>(),
            event["message"]["body"].as_str().unwrap_or("")
        ),
        Some("problem") => format!("Problem: {}", event["text"].as_str().unwrap_or("")),
        _ => String::new(),
    }
}

async fn chat(cli: &Cli, friend: &str, out: &mut impl Write) -> Result<(), CliError> {
    let mut backend = Backend::open(cli).await?;
    let result = chat_loop(cli, &mut backend, friend, out).await;
    backend.close().await;
    result
}

async fn chat_loop(
    cli: &Cli,
    backend: &mut Backend,
    friend: &str,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let friends = backend.call(&Request::Friends).await?;
    let history = backend
        .call(&Request::History {
            with: friend.to_owned(),
            limit: 20,
            mark_read: true,
        })
        .await?;
    // The friend's account key, to pick their events out of the stream.
    let safety = backend
        .call(&Request::Safety {
            with: friend.to_owned(),
        })
        .await?;
    let account = safety["friend"].as_str().unwrap_or_default().to_owned();
    let name = friends
        .as_array()
        .and_then(|list| list.iter().find(|f| f["account_key"] == account.as_str()))
        .and_then(|f| f["name"].as_str())
        .unwrap_or(friend)
        .to_owned();
    if !cli.json {
        writeln!(
            out,
            "Chat with {name}. Type a message and press Enter; Ctrl-D ends."
        )?;
        for m in history.as_array().cloned().unwrap_or_default() {
            print_message(out, &m, &name)?;
        }
        out.flush()?;
    }
    // Events: a second daemon connection subscribed, or the local stream.
    let mut subscription = match backend {
        Backend::Daemon { profile, .. } => {
            let mut sub = DaemonClient::connect(profile)
                .await
                .ok_or_else(|| control::ControlError::Daemon("the daemon went away".into()))?;
            sub.call(&Request::Subscribe).await?;
            Some(sub)
        }
        Backend::Local { .. } => None,
    };
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    loop {
        let event = async {
            match (&mut subscription, &mut *backend) {
                (Some(sub), _) => sub.next().await.ok().map(|v| v["event"].clone()),
                (None, Backend::Local { events, .. }) => {
                    events.next().await.map(|e| control::event_json(&e))
                }
                _ => None,
            }
        };
        tokio::select! {
            line = stdin.next_line() => {
                let Ok(Some(line)) = line else { break };
                if line.trim().is_empty() {
                    continue;
                }
                match backend.call(&Request::Send { to: account.clone(), text: line }).await {
                    Ok(answer) if cli.json => print_json(out, &json!({"sent": answer}))?,
                    Ok(_) => {}
                    Err(e) => writeln!(out, "not sent: {e}")?,
                }
            }
            event = event => {
                let Some(event) = event else { break };
                if event["friend"] != account.as_str() && event["friend"]["account_key"] != account.as_str() {
                    continue;
                }
                if cli.json {
                    print_json(out, &event)?;
                } else {
                    match event["type"].as_str() {
                        Some("message") => print_message(out, &event["message"], &name)?,
                        Some("typing") if event["active"] == true => writeln!(out, "{name} is typing…")?,
                        Some("presence") => writeln!(out, "{name} is {}", if event["online"] == true { "online" } else { "offline" })?,
                        Some("changed") => print_message(out, &event["message"], &name)?,
                        _ => {}
                    }
                }
                out.flush()?;
            }
        }
    }
    // Everything shown is read.
    let _ = backend
        .call(&Request::History {
            with: account,
            limit: 1,
            mark_read: true,
        })
        .await;
    backend.settle(Duration::from_secs(5)).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_utc_calendar_days() {
        assert_eq!(date_text(0), "1970-01-01");
        assert_eq!(date_text(86_399), "1970-01-01");
        assert_eq!(date_text(951_782_400), "2000-02-29");
        assert_eq!(date_text(951_868_800), "2000-03-01");
        assert_eq!(date_text(1_704_067_199), "2023-12-31");
        assert_eq!(date_text(1_709_164_800), "2024-02-29");
        assert_eq!(date_text(4_107_542_400), "2100-03-01");
    }
}
