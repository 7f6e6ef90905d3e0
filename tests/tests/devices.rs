//! A second computer for one account, with the real binaries on loopback:
//! `kith device link` on the new profile, `kith device add <code>` on the
//! existing one (through its daemon), and the new profile then shows the
//! same friends and history. A mistyped code and a code whose computer is
//! gone fail clearly and change nothing.

use std::time::Duration;

use anyhow::{Context, ensure};
use kith_scenarios::{User, befriend, eventually, start_kithd};
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(120);

fn history(user: &User, friend: &str) -> anyhow::Result<Vec<Value>> {
    let value = user.json(&["history", friend, "--limit", "100"])?;
    value.as_array().cloned().context("history is not a list")
}

/// What two devices of one account must agree on: each message's ID,
/// text and author, in order.
fn conversation(history: &[Value]) -> Vec<Value> {
    history
        .iter()
        .map(|m| json!([m["id"], m["body"], m["from"]]))
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
    let linking = desktop.device_link()?;
    ensure!(linking.code.starts_with("kith-link:"), "{}", linking.code);
    let added = laptop.json(&["device", "add", &linking.code, "--name", "desktop"])?;
    ensure!(added["name"] == "desktop", "{added}");
    ensure!(added["this_device"] == false, "{added}");
    let (ok, lines, errors) = linking.finish(Duration::from_secs(30))?;
    ensure!(ok, "device link failed: {errors}");
    ensure!(lines.len() == 1, "device link printed {lines:?}");
    ensure!(lines[0]["linked"]["id"] == laptop_id.as_str(), "{lines:?}");
    ensure!(lines[0]["linked"]["name"] == "laptop", "{lines:?}");

    // The desktop runs the account with the laptop's friends and history.
    let _desktop_daemon = desktop.daemon()?;
    ensure!(desktop.json(&["id", "show"])?["id"] == laptop_id.as_str());
    eventually(LONG, "the desktop to list bob", || {
        let friends = desktop.json(&["friends"])?;
        Ok(friends
            .as_array()
            .filter(|list| list.len() == 1 && list[0]["name"] == "bob")
            .map(|_| ()))
    })?;
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
