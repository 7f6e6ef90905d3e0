//! Alice and Bob, each a real `kith daemon` with its own profile, and one
//! real `kithd` on loopback: a friend request by ID, 100 messages each
//! way with delivery receipts, a restart of both, and a sender killed with
//! SIGKILL in the middle of a burst.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, ensure};
use kith_scenarios::{User, eventually, start_kithd};
use serde_json::{Value, json};

const MESSAGES: usize = 100;
const LONG: Duration = Duration::from_secs(120);

fn history(user: &User, friend: &str) -> anyhow::Result<Vec<Value>> {
    let value = user.json(&["history", friend, "--limit", "1000"])?;
    value.as_array().cloned().context("history is not a list")
}

/// Bodies of messages with `prefix`, in history order.
fn bodies(history: &[Value], prefix: &str) -> Vec<String> {
    history
        .iter()
        .filter_map(|m| m["body"].as_str())
        .filter(|b| b.starts_with(prefix))
        .map(str::to_owned)
        .collect()
}

fn delivered(history: &[Value], prefix: &str) -> usize {
    history
        .iter()
        .filter(|m| m["from"] == "me" && m["body"].as_str().is_some_and(|b| b.starts_with(prefix)))
        .filter(|m| matches!(m["state"]["state"].as_str(), Some("delivered" | "read")))
        .count()
}

fn expected(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i:03}")).collect()
}

#[test]
fn alice_and_bob_become_friends_and_chat_through_restarts_and_a_crash() -> anyhow::Result<()> {
    let home = tempfile::tempdir()?;
    let (_kithd, bootstrap) = start_kithd(&home.path().join("kithd"))?;
    let alice = User::new(home.path(), "alice", &bootstrap);
    let bob = User::new(home.path(), "bob", &bootstrap);
    alice.json(&["id", "new"])?;
    let bob_id = bob.json(&["id", "new"])?["id"]
        .as_str()
        .context("bob's id")?
        .to_owned();

    let alice_daemon = alice.daemon()?;
    let bob_daemon = bob.daemon()?;

    // Alice names herself, adds Bob by ID; Bob sees the request and
    // accepts it by her name.
    alice.json(&["name", "Alice", "Liddell"])?;
    alice.json(&["add", &bob_id, "hi", "Bob,", "it's", "Alice"])?;
    let request = eventually(LONG, "bob to see alice's request", || {
        let requests = bob.json(&["requests"])?;
        Ok(requests["incoming"]
            .as_array()
            .and_then(|list| list.first().cloned()))
    })?;
    ensure!(request["name"] == "Alice Liddell", "request: {request}");
    ensure!(
        request["message"] == "hi Bob, it's Alice",
        "request: {request}"
    );
    bob.json(&["accept", "alice liddell"])?;
    eventually(LONG, "alice to learn bob accepted", || {
        let friends = alice.json(&["friends"])?;
        Ok(friends
            .as_array()
            .filter(|list| list.iter().any(|f| f["name"] == "bob"))
            .map(|_| ()))
    })?;

    // 100 messages each way, interleaved.
    for i in 0..MESSAGES {
        alice.json(&["send", "bob", &format!("a{i:03}")])?;
        bob.json(&["send", "Alice", &format!("b{i:03}")])?;
    }
    let check =
        |user: &User, friend: &str, mine: &str, theirs: &str| -> anyhow::Result<Option<()>> {
            let history = history(user, friend)?;
            let got_theirs = bodies(&history, theirs);
            if got_theirs.len() < MESSAGES || delivered(&history, mine) < MESSAGES {
                return Ok(None);
            }
            // Exactly once, in order.
            ensure!(
                got_theirs == expected(theirs, MESSAGES),
                "{friend}'s messages: {got_theirs:?}"
            );
            ensure!(
                bodies(&history, mine) == expected(mine, MESSAGES),
                "own messages out of order"
            );
            Ok(Some(()))
        };
    eventually(LONG, "all messages at alice, all hers delivered", || {
        check(&alice, "bob", "a", "b")
    })?;
    eventually(LONG, "all messages at bob, all his delivered", || {
        check(&bob, "Alice", "b", "a")
    })?;
    let before_alice = history(&alice, "bob")?;
    let before_bob = history(&bob, "Alice")?;
    ensure!(
        before_alice.len() == 2 * MESSAGES,
        "alice holds {}",
        before_alice.len()
    );

    // Both restart: history is intact.
    alice_daemon.terminate()?;
    bob_daemon.terminate()?;
    let strip = |h: &[Value]| -> Vec<Value> {
        h.iter()
            .map(|m| json!([m["id"], m["body"], m["from"]]))
            .collect()
    };
    ensure!(
        strip(&history(&alice, "bob")?) == strip(&before_alice),
        "alice's history changed"
    );
    ensure!(
        strip(&history(&bob, "Alice")?) == strip(&before_bob),
        "bob's history changed"
    );
    let alice_daemon = alice.daemon()?;
    let _bob_daemon = bob.daemon()?;

    // A burst from Alice through her daemon's socket; SIGKILL mid-way.
    let mut control = alice.control()?;
    let mut accepted = Vec::new();
    for i in 0..200 {
        let body = format!("k{i:03}");
        let answer = control.call(&json!({"send": {"to": "bob", "text": body}}))?;
        ensure!(answer.get("ok").is_some(), "send refused: {answer}");
        accepted.push(body);
        if i == 60 {
            break;
        }
    }
    alice_daemon.kill9()?;
    let _alice_daemon = alice.daemon()?;
    let missing = std::cell::RefCell::new(Vec::new());
    eventually(LONG, "every accepted message at bob", || {
        let history = history(&bob, "Alice")?;
        let got = bodies(&history, "k");
        missing.replace(
            accepted
                .iter()
                .filter(|b| !got.contains(b))
                .cloned()
                .collect(),
        );
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for body in &got {
            *counts.entry(body.as_str()).or_default() += 1;
        }
        ensure!(
            counts.values().all(|&n| n == 1),
            "a message arrived twice: {got:?}"
        );
        Ok(accepted
            .iter()
            .all(|b| counts.contains_key(b.as_str()))
            .then_some(()))
    })
    .with_context(|| {
        // What Alice's side says of the missing ones.
        let states: Vec<String> = history(&alice, "bob")
            .unwrap_or_default()
            .iter()
            .filter(|m| {
                m["body"]
                    .as_str()
                    .is_some_and(|b| missing.borrow().iter().any(|x| x == b))
            })
            .map(|m| format!("{} {}", m["body"], m["state"]))
            .collect();
        format!(
            "bob is missing {:?}; alice has {states:?}",
            missing.borrow()
        )
    })?;
    Ok(())
}

/// `kith decline --all` clears every waiting request in one go (after a
/// flood of them); the senders' later requests are ignored.
#[test]
fn every_waiting_request_is_declined_with_one_command() -> anyhow::Result<()> {
    let home = tempfile::tempdir()?;
    let (_kithd, bootstrap) = start_kithd(&home.path().join("kithd"))?;
    let alice = User::new(home.path(), "alice", &bootstrap);
    let alice_id = alice.json(&["id", "new"])?["id"]
        .as_str()
        .context("alice's id")?
        .to_owned();
    let _alice_daemon = alice.daemon()?;
    let mut senders = Vec::new();
    for name in ["bob", "carol"] {
        let user = User::new(home.path(), name, &bootstrap);
        user.json(&["id", "new"])?;
        let daemon = user.daemon()?;
        user.json(&["add", &alice_id, "hi"])?;
        senders.push((user, daemon));
    }
    eventually(LONG, "both requests to arrive", || {
        let requests = alice.json(&["requests"])?;
        Ok(requests["incoming"]
            .as_array()
            .filter(|list| list.len() == 2)
            .map(|_| ()))
    })?;

    let declined = alice.run(&["decline", "--all"])?;
    ensure!(declined.status.success(), "{declined:?}");
    let said = String::from_utf8_lossy(&declined.stdout);
    ensure!(
        said.contains("Declined 2 waiting request(s)"),
        "kith decline --all said {said:?}"
    );
    let requests = alice.json(&["requests"])?;
    ensure!(
        requests["incoming"].as_array().is_some_and(Vec::is_empty),
        "still waiting: {requests}"
    );
    // Nothing left: a second run declines none, and a name is still
    // required without --all.
    ensure!(alice.json(&["decline", "--all"])?["declined"] == 0);
    ensure!(!alice.run(&["decline"])?.status.success());
    Ok(())
}
