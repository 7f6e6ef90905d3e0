//! A second computer for one account, with the real binaries on loopback:
//! `kith device link` on the new profile, `kith device add <code>` on the
//! existing one (through its daemon), and the new profile then shows the
//! same friends and history. A mistyped code and a code whose computer is
//! gone fail clearly and change nothing. A desktop that was off while the
//! laptop chatted comes back with the identical conversation and read
//! state; a removed desktop gets nothing new; with both devices off, each
//! gets the friend's messages from the mailbox volunteers.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, ensure};
use kith_scenarios::{Kithd, LOOPBACK, Proc, User, befriend, eventually, start_kithd};
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(120);

fn history(user: &User, friend: &str) -> anyhow::Result<Vec<Value>> {
    let value = user.json(&["history", friend, "--limit", "100"])?;
    value.as_array().cloned().context("history is not a list")
}

/// What two devices of one account must agree on: each message's ID,
/// text, author and send time, in order.
fn conversation(history: &[Value]) -> Vec<Value> {
    history
        .iter()
        .map(|m| json!([m["id"], m["body"], m["from"], m["sent_at"]]))
        .collect()
}

/// Waits until `user`'s conversation with `friend` holds `body`.
fn seen(user: &User, friend: &str, body: &str) -> anyhow::Result<()> {
    eventually(LONG, &format!("{} to see {body:?}", user.name), || {
        Ok(history(user, friend)?
            .iter()
            .any(|m| m["body"] == body)
            .then_some(()))
    })
}

fn devices(user: &User) -> anyhow::Result<Vec<Value>> {
    let value = user.json(&["device", "list"])?;
    value
        .as_array()
        .cloned()
        .context("device list is not a list")
}

/// `user`'s conversation with `friend` through its daemon's control
/// socket, leaving it unread (`kith history` would mark it read).
fn history_unread_kept(user: &User, friend: &str) -> anyhow::Result<Vec<Value>> {
    let answer = user.control()?.call(&json!({"history": {
        "with": friend, "limit": 100, "mark_read": false
    }}))?;
    answer["ok"]
        .as_array()
        .cloned()
        .with_context(|| format!("history answered {answer}"))
}

/// `user`'s unread count for `friend` (`kith friends`).
fn unread(user: &User, friend: &str) -> anyhow::Result<u64> {
    let friends = user.json(&["friends"])?;
    friends
        .as_array()
        .and_then(|list| list.iter().find(|f| f["name"] == friend))
        .and_then(|f| f["unread"].as_u64())
        .with_context(|| format!("no unread count for {friend} in {friends}"))
}

/// What each volunteer keeps, as "items/mailboxes", for failure messages.
fn held(nodes: &[Kithd]) -> String {
    let each: Vec<String> = nodes
        .iter()
        .map(
            |n| match (n.mailbox_items(), n.metric("kithd_mailbox_mailboxes")) {
                (Ok(items), Ok(mailboxes)) => format!("{items}/{mailboxes}"),
                (Err(e), _) | (_, Err(e)) => e.to_string(),
            },
        )
        .collect();
    each.join(", ")
}

/// Links the new profile `desktop` to `laptop`'s account under the name
/// "desktop" (`kith device link --yes` there, `kith device add` on the
/// laptop); returns what `device add` printed.
fn link(laptop: &User, desktop: &User) -> anyhow::Result<Value> {
    let laptop_id = laptop.json(&["id", "show"])?["id"].clone();
    let linking = desktop.device_link()?;
    ensure!(linking.code.starts_with("kith-link:"), "{}", linking.code);
    let added = laptop.json(&["device", "add", &linking.code, "--name", "desktop"])?;
    ensure!(added["name"] == "desktop", "{added}");
    ensure!(added["this_device"] == false, "{added}");
    let (ok, lines, errors) = linking.finish(Duration::from_secs(30))?;
    ensure!(ok, "device link failed: {errors}");
    ensure!(lines.len() == 1, "device link printed {lines:?}");
    ensure!(lines[0]["linked"]["id"] == laptop_id, "{lines:?}");
    ensure!(
        lines[0]["linked"]["name"] == laptop.name.as_str(),
        "{lines:?}"
    );
    Ok(added)
}

/// Waits until `user` lists exactly one friend, `friend`.
fn lists_friend(user: &User, friend: &str) -> anyhow::Result<()> {
    eventually(LONG, &format!("{} to list {friend}", user.name), || {
        let friends = user.json(&["friends"])?;
        Ok(friends
            .as_array()
            .filter(|list| list.len() == 1 && list[0]["name"] == friend)
            .map(|_| ()))
    })
}

/// Laptop and Bob, friends, with their daemons running, and a desktop
/// linked to the laptop's account whose daemon runs and lists Bob too.
struct Account {
    laptop: User,
    bob: User,
    desktop: User,
    laptop_daemon: Proc,
    bob_daemon: Proc,
    desktop_daemon: Proc,
}

fn linked_account(home: &Path, bootstrap: &str) -> anyhow::Result<Account> {
    let laptop = User::new(home, "laptop", bootstrap);
    let bob = User::new(home, "bob", bootstrap);
    let desktop = User::new(home, "desktop", bootstrap);
    laptop.json(&["id", "new"])?;
    let bob_id = bob.json(&["id", "new"])?["id"]
        .as_str()
        .context("bob's id")?
        .to_owned();
    let laptop_daemon = laptop.daemon()?;
    let bob_daemon = bob.daemon()?;
    befriend(&laptop, &bob, &bob_id, "laptop", LONG)?;
    link(&laptop, &desktop)?;
    let desktop_daemon = desktop.daemon()?;
    lists_friend(&desktop, "bob")?;
    Ok(Account {
        laptop,
        bob,
        desktop,
        laptop_daemon,
        bob_daemon,
        desktop_daemon,
    })
}

/// `text` with one character of the code (not the prefix) changed to
/// another letter of the alphabet: what a typo makes.
fn one_character_changed(text: &str) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    let at = chars.len() / 2;
    chars[at] = if chars[at] == 'A' { 'B' } else { 'A' };
    chars.into_iter().collect()
}

#[test]
fn a_linked_desktop_shows_the_laptops_friends_and_history() -> anyhow::Result<()> {
    let home = tempfile::tempdir()?;
    let (_kithd, bootstrap) = start_kithd(&home.path().join("kithd"))?;
    let laptop = User::new(home.path(), "laptop", &bootstrap);
    let bob = User::new(home.path(), "bob", &bootstrap);
    let desktop = User::new(home.path(), "desktop", &bootstrap);
    let laptop_id = laptop.json(&["id", "new"])?["id"]
        .as_str()
        .context("laptop's id")?
        .to_owned();
    let bob_id = bob.json(&["id", "new"])?["id"]
        .as_str()
        .context("bob's id")?
        .to_owned();
    let _laptop_daemon = laptop.daemon()?;
    let _bob_daemon = bob.daemon()?;

    // Laptop and Bob become friends and exchange a few messages.
    befriend(&laptop, &bob, &bob_id, "laptop", LONG)?;
    laptop.json(&["send", "bob", "hello bob"])?;
    seen(&bob, "laptop", "hello bob")?;
    bob.json(&["send", "laptop", "hi, how are you?"])?;
    seen(&laptop, "bob", "hi, how are you?")?;
    laptop.json(&["send", "bob", "fine, on my laptop"])?;
    let on_laptop = eventually(LONG, "all three delivered", || {
        let history = history(&laptop, "bob")?;
        let done = history.len() == 3
            && history
                .iter()
                .filter(|m| m["from"] == "me")
                .all(|m| matches!(m["state"]["state"].as_str(), Some("delivered" | "read")));
        Ok(done.then_some(history))
    })?;
    ensure!(devices(&laptop)?.len() == 1);

    // The desktop shows a code; the laptop, through its daemon, links it.
    let added = link(&laptop, &desktop)?;

    // The desktop runs the account with the laptop's friends and history.
    let _desktop_daemon = desktop.daemon()?;
    ensure!(desktop.json(&["id", "show"])?["id"] == laptop_id.as_str());
    lists_friend(&desktop, "bob")?;
    let expected = conversation(&on_laptop);
    eventually(LONG, "the desktop to show the laptop's history", || {
        let got = conversation(&history(&desktop, "bob")?);
        Ok((got == expected).then_some(()))
    })
    .with_context(|| format!("the laptop's history: {expected:?}"))?;
    ensure!(conversation(&history(&laptop, "bob")?) == expected);

    let listed = devices(&laptop)?;
    ensure!(listed.len() == 2, "{listed:?}");
    ensure!(
        listed.iter().any(|d| d["name"] == "desktop"
            && d["this_device"] == false
            && d["peer_id"] == added["peer_id"]),
        "{listed:?}"
    );
    let on_desktop = devices(&desktop)?;
    ensure!(on_desktop.len() == 2, "{on_desktop:?}");
    ensure!(
        on_desktop
            .iter()
            .any(|d| d["name"] == "desktop" && d["this_device"] == true),
        "{on_desktop:?}"
    );
    Ok(())
}

#[test]
fn a_mistyped_code_or_a_vanished_new_computer_changes_nothing() -> anyhow::Result<()> {
    let home = tempfile::tempdir()?;
    let (_kithd, bootstrap) = start_kithd(&home.path().join("kithd"))?;
    let laptop = User::new(home.path(), "laptop", &bootstrap);
    let desktop = User::new(home.path(), "desktop", &bootstrap);
    laptop.json(&["id", "new"])?;

    let linking = desktop.device_link()?;
    let code = linking.code.clone();
    let typo = one_character_changed(&code);

    // A typo, without a daemon: refused before anything starts.
    let output = laptop.run(&["device", "add", &typo, "--name", "desktop"])?;
    let errors = String::from_utf8_lossy(&output.stderr);
    ensure!(!output.status.success(), "a typo was accepted");
    ensure!(errors.contains("typo"), "{errors}");
    ensure!(devices(&laptop)?.len() == 1);

    // The new computer goes away before the code is entered.
    linking.proc.kill9()?;
    ensure!(
        !desktop.dir().join("identity.key").exists(),
        "the killed new computer wrote an identity"
    );
    let output = laptop.run(&["device", "add", &code, "--name", "desktop"])?;
    let errors = String::from_utf8_lossy(&output.stderr);
    ensure!(
        !output.status.success(),
        "linking a vanished device succeeded"
    );
    ensure!(errors.contains("could not reach"), "{errors}");
    ensure!(devices(&laptop)?.len() == 1);

    // The same through the daemon: the code's text is parsed there.
    let _daemon = laptop.daemon()?;
    let mut control = laptop.control()?;
    let answer = control.call(&json!({"link_device": {"code": typo, "name": "desktop"}}))?;
    ensure!(
        answer["error"].as_str().is_some_and(|e| e.contains("typo")),
        "{answer}"
    );
    let output = laptop.run(&["device", "add", &code])?;
    let errors = String::from_utf8_lossy(&output.stderr);
    ensure!(
        !output.status.success(),
        "linking a vanished device succeeded"
    );
    ensure!(errors.contains("could not reach"), "{errors}");
    let answer = control.call(&json!("devices"))?;
    let listed = answer["ok"].as_array().context("devices answer")?;
    ensure!(listed.len() == 1, "{answer}");
    ensure!(listed[0]["this_device"] == true, "{answer}");
    Ok(())
}

#[test]
fn a_desktop_that_was_off_shows_the_identical_conversation_and_read_state() -> anyhow::Result<()> {
    let home = tempfile::tempdir()?;
    let (_kithd, bootstrap) = start_kithd(&home.path().join("kithd"))?;
    let account = linked_account(home.path(), &bootstrap)?;
    let (laptop, bob, desktop) = (&account.laptop, &account.bob, &account.desktop);

    // The desktop goes off; Bob writes, the laptop reads and answers.
    account.desktop_daemon.terminate()?;
    let from_bob = ["are you there?", "I have news", "call me"];
    for text in from_bob {
        bob.json(&["send", "laptop", text])?;
    }
    eventually(LONG, "the laptop to have bob's three messages", || {
        let got = history_unread_kept(laptop, "bob")?;
        Ok(from_bob
            .iter()
            .all(|text| got.iter().any(|m| m["body"] == *text))
            .then_some(()))
    })?;
    ensure!(unread(laptop, "bob")? == 3, "unread before reading");
    history(laptop, "bob")?;
    ensure!(unread(laptop, "bob")? == 0, "reading marks them read");
    laptop.json(&["send", "bob", "yes, here"])?;
    laptop.json(&["send", "bob", "tell me"])?;
    seen(bob, "laptop", "tell me")?;
    let on_laptop = conversation(&history(laptop, "bob")?);
    ensure!(on_laptop.len() == 5, "{on_laptop:?}");

    // The desktop comes back: same messages, same order, nothing unread.
    // Its history is read without marking anything read, so the read
    // state can only have come from the laptop.
    let _desktop_daemon = desktop.daemon()?;
    let mut last = (Vec::new(), None);
    let agreed = eventually(LONG, "the desktop to match the laptop", || {
        let got = conversation(&history_unread_kept(desktop, "bob")?);
        let unread = unread(desktop, "bob").ok();
        last = (got.clone(), unread);
        Ok((got == on_laptop && unread == Some(0)).then_some(()))
    });
    agreed.with_context(|| {
        format!(
            "laptop: {on_laptop:?}; desktop (history, unread): {:?}",
            last
        )
    })?;
    ensure!(conversation(&history(laptop, "bob")?) == on_laptop);
    ensure!(unread(laptop, "bob")? == 0);
    Ok(())
}

#[test]
fn a_removed_desktop_gets_no_new_message() -> anyhow::Result<()> {
    let home = tempfile::tempdir()?;
    let (_kithd, bootstrap) = start_kithd(&home.path().join("kithd"))?;
    let account = linked_account(home.path(), &bootstrap)?;
    let (laptop, bob, desktop) = (&account.laptop, &account.bob, &account.desktop);

    // While linked, what Bob writes reaches the desktop.
    bob.json(&["send", "laptop", "before removal"])?;
    seen(desktop, "bob", "before removal")?;
    let desktop_peer = devices(desktop)?
        .iter()
        .find(|d| d["this_device"] == true)
        .and_then(|d| d["peer_id"].as_str().map(str::to_owned))
        .context("the desktop's peer id")?;

    // The laptop removes it, through its daemon.
    let output = laptop.run(&["device", "remove", "desktop"])?;
    ensure!(
        output.status.success(),
        "device remove failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed = String::from_utf8_lossy(&output.stdout);
    ensure!(
        printed.trim() == format!("removed desktop ({desktop_peer})"),
        "{printed}"
    );
    let listed = devices(laptop)?;
    ensure!(listed.len() == 1, "{listed:?}");
    ensure!(listed[0]["this_device"] == true, "{listed:?}");

    // The new list goes to Bob before anything sent after it.
    laptop.json(&["send", "bob", "new list sent"])?;
    seen(bob, "laptop", "new list sent")?;
    bob.json(&["send", "laptop", "after removal"])?;
    seen(laptop, "bob", "after removal")?;
    std::thread::sleep(Duration::from_secs(5));
    let on_desktop = history_unread_kept(desktop, "bob")?;
    ensure!(
        on_desktop.iter().any(|m| m["body"] == "before removal"),
        "{on_desktop:?}"
    );
    ensure!(
        !on_desktop.iter().any(|m| m["body"] == "after removal"),
        "the removed desktop got a new message: {on_desktop:?}"
    );

    // The laptop cannot remove itself, nor a device that does not exist.
    let me = listed[0]["name"].as_str().context("the laptop's name")?;
    let my_peer = listed[0]["peer_id"].as_str().context("the laptop's peer")?;
    for (device, expect) in [
        (me, "a device cannot remove itself"),
        (&my_peer[..10], "a device cannot remove itself"),
        ("kitchen-tablet", "no device of this account matches"),
    ] {
        let output = laptop.run(&["device", "remove", device])?;
        let errors = String::from_utf8_lossy(&output.stderr);
        ensure!(!output.status.success(), "removing {device} succeeded");
        ensure!(errors.contains(expect), "{device}: {errors}");
    }
    ensure!(devices(laptop)?.len() == 1);
    Ok(())
}

#[test]
fn with_both_devices_off_each_gets_the_messages_from_the_mailbox() -> anyhow::Result<()> {
    let home = tempfile::tempdir()?;
    // Three volunteers that know each other, as in tests/mailbox.rs.
    let first = Kithd::start(&home.path().join("kithd0"), LOOPBACK, &[])?;
    let join = [first.addr.clone()];
    let nodes = [
        Kithd::start(&home.path().join("kithd1"), LOOPBACK, &join)?,
        Kithd::start(&home.path().join("kithd2"), LOOPBACK, &join)?,
        first,
    ];
    let bootstrap: Vec<&str> = nodes.iter().map(|n| n.addr.as_str()).collect();
    let account = linked_account(home.path(), &bootstrap.join(","))?;
    let (laptop, bob, desktop) = (&account.laptop, &account.bob, &account.desktop);

    // Bob knows both devices: the desktop's own message reaches him.
    desktop.json(&["send", "bob", "hello from the desktop"])?;
    seen(bob, "laptop", "hello from the desktop")?;
    for user in [laptop, desktop, bob] {
        eventually(LONG, &format!("{}'s outbox to drain", user.name), || {
            Ok((user.json(&["status"])?["outbox"] == 0).then_some(()))
        })?;
    }
    account.laptop_daemon.terminate()?;
    account.desktop_daemon.terminate()?;

    // Bob writes while both are off, and goes too: the mail is the only
    // way in.
    let from_bob = ["first while away", "second while away", "third while away"];
    for text in from_bob {
        bob.json(&["send", "laptop", text])?;
    }
    let mut last = String::new();
    eventually(LONG, "bob's three messages stored with 3 of 3", || {
        let page = history(bob, "laptop")?;
        let states: Vec<&Value> = page
            .iter()
            .filter(|m| from_bob.iter().any(|t| m["body"] == *t))
            .map(|m| &m["state"])
            .collect();
        last = format!("{states:?}");
        Ok((states.len() == 3
            && states
                .iter()
                .all(|s| s["state"] == "stored" && s["volunteers"] == 3))
        .then_some(()))
    })
    .with_context(|| format!("states: {last}"))?;
    account.bob_daemon.terminate()?;
    let before_laptop = held(&nodes);

    let has_all = |user: &User| -> anyhow::Result<()> {
        eventually(
            LONG,
            &format!("{} to show bob's three messages", user.name),
            || {
                let got = history_unread_kept(user, "bob")?;
                Ok(from_bob
                    .iter()
                    .all(|text| got.iter().any(|m| m["body"] == *text))
                    .then_some(()))
            },
        )
    };
    let laptop_daemon = laptop.daemon()?;
    has_all(laptop)?;
    laptop_daemon.terminate()?;
    let after_laptop = held(&nodes);
    let _desktop_daemon = desktop.daemon()?;
    has_all(desktop).with_context(|| {
        format!(
            "volunteers (items/mailboxes) when bob had stored his messages: \
             {before_laptop}; once the laptop had them: {after_laptop}; now: {}",
            held(&nodes)
        )
    })?;
    Ok(())
}
