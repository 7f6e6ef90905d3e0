//! Offline mail with real processes on loopback: three `kithd` volunteers
//! (each with a metrics endpoint) and Alice's and Bob's `kith daemon`s,
//! never online at the same time once they are friends. Messages left
//! while Bob is away reach him once each, in order, with witnessed times,
//! and his delivery receipts reach Alice the same way; the mail survives
//! two of the three volunteers being killed, and a volunteer restarted on
//! its data folder; a friend request to someone offline arrives by mail
//! after every volunteer restarted (which wipes the DHT's request drops).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use kith_scenarios::{Kithd, LOOPBACK, Proc, User, eventually};
use serde_json::Value;

/// Bound on every wait: long enough for a lookup's retry backoff (up to a
/// minute) and a deposit retry, short enough to fail rather than hang.
const LONG: Duration = Duration::from_secs(180);

/// Three volunteers that know each other: the first, then two joining it.
fn volunteers(dir: &Path) -> anyhow::Result<Vec<Kithd>> {
    let first = Kithd::start(&dir.join("kithd0"), LOOPBACK, &[])?;
    let join = [first.addr.clone()];
    let second = Kithd::start(&dir.join("kithd1"), LOOPBACK, &join)?;
    let third = Kithd::start(&dir.join("kithd2"), LOOPBACK, &join)?;
    Ok(vec![first, second, third])
}

/// `kithd`s started again on their data folders and ports, the first
/// alone, the others joining it.
fn restart(nodes: Vec<Kithd>) -> anyhow::Result<Vec<Kithd>> {
    let places: Vec<(std::path::PathBuf, String)> = nodes
        .iter()
        .map(|n| (n.data.clone(), n.listen_addr()))
        .collect();
    let before: Vec<String> = nodes.iter().map(|n| n.addr.clone()).collect();
    for node in nodes {
        node.terminate()?;
    }
    let mut started: Vec<Kithd> = Vec::new();
    for (data, listen) in places {
        let join: Vec<String> = started
            .first()
            .map(|n| n.addr.clone())
            .into_iter()
            .collect();
        started.push(Kithd::start(&data, &listen, &join)?);
    }
    let after: Vec<String> = started.iter().map(|n| n.addr.clone()).collect();
    ensure!(
        before == after,
        "same keys and ports: {before:?} became {after:?}"
    );
    Ok(started)
}

fn items(nodes: &[Kithd]) -> anyhow::Result<Vec<u64>> {
    nodes.iter().map(Kithd::mailbox_items).collect()
}

fn history(user: &User, friend: &str) -> anyhow::Result<Vec<Value>> {
    let value = user.json(&["history", friend, "--limit", "1000"])?;
    value.as_array().cloned().context("history is not a list")
}

fn body(i: usize) -> String {
    format!("while you were out {i:03}")
}

fn expected(count: usize) -> Vec<String> {
    (0..count).map(body).collect()
}

fn mine(history: &[Value]) -> Vec<&Value> {
    history.iter().filter(|m| m["from"] == "me").collect()
}

fn state_of(message: &Value) -> String {
    message["state"]["state"]
        .as_str()
        .unwrap_or("none")
        .to_owned()
}

/// Alice and Bob, each with a profile, bootstrapping from every volunteer;
/// Alice is called "Alice".
fn users(home: &Path, nodes: &[Kithd]) -> anyhow::Result<(User, User, String)> {
    let bootstrap: Vec<&str> = nodes.iter().map(|n| n.addr.as_str()).collect();
    let bootstrap = bootstrap.join(",");
    let alice = User::new(home, "alice", &bootstrap);
    let bob = User::new(home, "bob", &bootstrap);
    alice.json(&["id", "new"])?;
    let bob_id = bob.json(&["id", "new"])?["id"]
        .as_str()
        .context("bob's id")?
        .to_owned();
    Ok((alice, bob, bob_id))
}

/// Alice adds Bob, Bob accepts, both outboxes drain; returns both daemons.
fn befriend(alice: &User, bob: &User, bob_id: &str) -> anyhow::Result<(Proc, Proc)> {
    let alice_daemon = alice.daemon()?;
    let bob_daemon = bob.daemon()?;
    alice.json(&["name", "Alice"])?;
    alice.json(&["add", bob_id, "hi", "Bob"])?;
    eventually(LONG, "bob to see alice's request", || {
        let requests = bob.json(&["requests"])?;
        Ok(requests["incoming"]
            .as_array()
            .filter(|list| !list.is_empty())
            .map(|_| ()))
    })?;
    bob.json(&["accept", "Alice"])?;
    eventually(LONG, "alice to learn bob accepted", || {
        let friends = alice.json(&["friends"])?;
        Ok(friends
            .as_array()
            .filter(|list| list.iter().any(|f| f["name"] == "bob"))
            .map(|_| ()))
    })?;
    for user in [alice, bob] {
        eventually(LONG, &format!("{}'s outbox to drain", user.name), || {
            Ok((user.json(&["status"])?["outbox"] == 0).then_some(()))
        })?;
    }
    Ok((alice_daemon, bob_daemon))
}

/// With Bob's daemon stopped, Alice sends `count` messages with `kith send`
/// and waits until each is stored with 3 of 3 volunteers.
fn send_while_bob_is_away(alice: &User, count: usize) -> anyhow::Result<()> {
    let started = Instant::now();
    for i in 0..count {
        let answer = alice.json(&["send", "bob", &body(i)])?;
        ensure!(answer["id"].is_string(), "send answered {answer}");
    }
    let sent = started.elapsed();
    let mut last = String::new();
    eventually(LONG, "all of alice's messages stored with 3 of 3", || {
        let history = history(alice, "bob")?;
        let mine = mine(&history);
        let states: Vec<String> = mine
            .iter()
            .map(|m| match state_of(m).as_str() {
                "stored" => format!("stored {}/{}", m["state"]["volunteers"], m["state"]["of"]),
                other => other.to_owned(),
            })
            .collect();
        last = format!("{states:?}");
        ensure!(mine.len() == count, "alice holds {} messages", mine.len());
        Ok(mine
            .iter()
            .all(|m| m["state"]["state"] == "stored" && m["state"]["volunteers"] == 3)
            .then_some(()))
    })
    .with_context(|| format!("states: {last}"))?;
    let status = alice.json(&["status"])?;
    ensure!(
        status["outbox"] == 0,
        "nothing left to send directly: {status}"
    );
    eprintln!(
        "{count} sends took {sent:?}; all stored 3 of 3 after {:?}",
        started.elapsed()
    );
    Ok(())
}

/// Bob's history holds exactly Alice's `count` messages, in order, each
/// with a witnessed time; waits until all are there.
fn bob_gets_the_mail(bob: &User, count: usize) -> anyhow::Result<()> {
    let started = Instant::now();
    let page = eventually(LONG, "all of alice's messages at bob", || {
        let history = history(bob, "Alice")?;
        Ok((history.len() >= count).then_some(history))
    })?;
    eprintln!("bob had all {count} after {:?}", started.elapsed());
    let check = |page: &[Value]| -> anyhow::Result<()> {
        ensure!(
            page.iter().all(|m| m["from"] == "friend"),
            "only alice's messages"
        );
        let bodies: Vec<&str> = page.iter().filter_map(|m| m["body"].as_str()).collect();
        ensure!(
            bodies == expected(count),
            "all {count}, once each, in order: {bodies:?}"
        );
        let witness: Vec<&Value> = page.iter().map(|m| &m["witness"]).collect();
        ensure!(
            page.iter().all(|m| m["witness"]["time"] == "witnessed"),
            "the volunteers' receipts bear out alice's send times: {witness:?}"
        );
        Ok(())
    };
    check(&page)?;
    // Nothing arrives twice a little later.
    std::thread::sleep(Duration::from_secs(2));
    check(&history(bob, "Alice")?)
}

#[test]
fn offline_mail_reaches_bob_once_in_order_with_witnessed_times() -> anyhow::Result<()> {
    const COUNT: usize = 50;
    let started = Instant::now();
    let home = tempfile::tempdir()?;
    let nodes = volunteers(home.path())?;
    let (alice, bob, bob_id) = users(home.path(), &nodes)?;
    let (alice_daemon, bob_daemon) = befriend(&alice, &bob, &bob_id)?;
    eprintln!("friends after {:?}", started.elapsed());

    bob_daemon.terminate()?;
    send_while_bob_is_away(&alice, COUNT)?;
    alice_daemon.terminate()?;
    let held = items(&nodes)?;
    ensure!(
        held.iter().all(|&n| n > 0),
        "every volunteer holds mail for bob: {held:?}"
    );
    eprintln!("volunteers hold {held:?} items");

    // Bob comes online while Alice is away: the mail is his only source.
    let bob_daemon = bob.daemon()?;
    bob_gets_the_mail(&bob, COUNT)?;
    // His delivery receipts cannot reach Alice directly: they are left
    // as mail too. Then he goes, so they can only come by mail.
    eventually(LONG, "bob's receipts to leave his outbox", || {
        Ok((bob.json(&["status"])?["outbox"] == 0).then_some(()))
    })?;
    bob_daemon.terminate()?;
    let held = items(&nodes)?;
    ensure!(
        held.iter().any(|&n| n > 0),
        "the volunteers hold bob's receipts: {held:?}"
    );

    let back = Instant::now();
    let _alice_daemon = alice.daemon()?;
    let mut last = String::new();
    eventually(LONG, "all of alice's messages delivered", || {
        let history = history(&alice, "bob")?;
        let mine = mine(&history);
        let states: Vec<String> = mine.iter().map(|m| state_of(m)).collect();
        last = format!("{states:?}");
        ensure!(mine.len() == COUNT, "alice holds {} messages", mine.len());
        Ok(states
            .iter()
            .all(|s| matches!(s.as_str(), "delivered" | "read"))
            .then_some(()))
    })
    .with_context(|| format!("states: {last}"))?;
    eprintln!("alice saw them delivered after {:?}", back.elapsed());
    let mut last = Vec::new();
    eventually(LONG, "every volunteer to hold nothing", || {
        last = items(&nodes)?;
        Ok(last.iter().all(|&n| n == 0).then_some(()))
    })
    .with_context(|| format!("items held: {last:?}"))?;
    eprintln!("whole scenario took {:?}", started.elapsed());
    Ok(())
}

/// Three volunteers; Alice and Bob become friends; Bob stops; Alice sends
/// `count` messages, waits until all are stored with 3 of 3, and stops.
fn mail_left_for_bob(home: &Path, count: usize) -> anyhow::Result<(Vec<Kithd>, User, User)> {
    let nodes = volunteers(home)?;
    let (alice, bob, bob_id) = users(home, &nodes)?;
    let (alice_daemon, bob_daemon) = befriend(&alice, &bob, &bob_id)?;
    bob_daemon.terminate()?;
    send_while_bob_is_away(&alice, count)?;
    alice_daemon.terminate()?;
    Ok((nodes, alice, bob))
}

#[test]
fn offline_mail_survives_two_of_three_volunteers_dying() -> anyhow::Result<()> {
    const COUNT: usize = 20;
    let started = Instant::now();
    let home = tempfile::tempdir()?;
    let (nodes, _alice, mut bob) = mail_left_for_bob(home.path(), COUNT)?;
    let held = items(&nodes)?;
    ensure!(
        held.iter().all(|&n| n > 0),
        "every volunteer holds mail for bob: {held:?}"
    );

    let mut nodes = nodes.into_iter();
    let (first, second, survivor) = (
        nodes.next().context("node")?,
        nodes.next().context("node")?,
        nodes.next().context("node")?,
    );
    first.kill9()?;
    second.kill9()?;
    bob.bootstrap = survivor.addr.clone();
    let _bob_daemon = bob.daemon()?;
    bob_gets_the_mail(&bob, COUNT)?;
    eprintln!("whole scenario took {:?}", started.elapsed());
    Ok(())
}

#[test]
fn a_restarted_volunteer_still_serves_its_mail() -> anyhow::Result<()> {
    const COUNT: usize = 20;
    let started = Instant::now();
    let home = tempfile::tempdir()?;
    let (nodes, _alice, mut bob) = mail_left_for_bob(home.path(), COUNT)?;

    // Every volunteer stops; one comes back on its folder and port.
    let places: Vec<(std::path::PathBuf, String, String)> = nodes
        .iter()
        .map(|n| (n.data.clone(), n.listen_addr(), n.addr.clone()))
        .collect();
    for node in nodes {
        node.terminate()?;
    }
    let (data, listen, addr) = places.into_iter().next().context("a volunteer")?;
    let node = Kithd::start(&data, &listen, &[])?;
    ensure!(
        node.addr == addr,
        "same key and port: {addr} became {}",
        node.addr
    );
    let held = node.mailbox_items()?;
    ensure!(held > 0, "the mail is still on disk: {held} items");

    bob.bootstrap = node.addr.clone();
    let _bob_daemon = bob.daemon()?;
    bob_gets_the_mail(&bob, COUNT)?;
    eprintln!("whole scenario took {:?}", started.elapsed());
    Ok(())
}

#[test]
fn a_friend_request_to_someone_offline_arrives_when_they_come_online() -> anyhow::Result<()> {
    let started = Instant::now();
    let home = tempfile::tempdir()?;
    let nodes = volunteers(home.path())?;
    let (alice, bob, bob_id) = users(home.path(), &nodes)?;

    // Bob exists but is not online; Alice's request is left as mail (and
    // as a DHT request drop).
    let alice_daemon = alice.daemon()?;
    alice.json(&["name", "Alice"])?;
    alice.json(&["add", &bob_id, "hello"])?;
    let mut last = Vec::new();
    eventually(LONG, "every volunteer to hold the request", || {
        last = items(&nodes)?;
        Ok(last.iter().all(|&n| n > 0).then_some(()))
    })
    .with_context(|| format!("items held: {last:?}"))?;
    eprintln!("request left after {:?}", started.elapsed());
    // Alice goes, so the drop is not placed again.
    alice_daemon.terminate()?;

    // Restarted volunteers have lost the drop (kept in memory) but not the
    // mail (on disk).
    let nodes = restart(nodes)?;
    let held = items(&nodes)?;
    ensure!(
        held.iter().all(|&n| n > 0),
        "the request is still on disk: {held:?}"
    );

    let came = Instant::now();
    let _bob_daemon = bob.daemon()?;
    let request = eventually(LONG, "bob to see alice's request", || {
        let requests = bob.json(&["requests"])?;
        Ok(requests["incoming"]
            .as_array()
            .and_then(|list| list.first().cloned()))
    })?;
    eprintln!("bob saw the request after {:?}", came.elapsed());
    ensure!(request["name"] == "Alice", "request: {request}");
    ensure!(request["message"] == "hello", "request: {request}");
    let requests = bob.json(&["requests"])?;
    ensure!(
        requests["incoming"].as_array().map(Vec::len) == Some(1),
        "one request: {requests}"
    );
    // Taken in, it is acknowledged and deleted.
    let mut last = Vec::new();
    eventually(LONG, "every volunteer to hold nothing", || {
        last = items(&nodes)?;
        Ok(last.iter().all(|&n| n == 0).then_some(()))
    })
    .with_context(|| format!("items held: {last:?}"))?;
    eprintln!("whole scenario took {:?}", started.elapsed());
    Ok(())
}
