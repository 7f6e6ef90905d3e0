//! `offline`: three real `kithd` volunteers on loopback and two engines on
//! sled stores that are never online together.
//!
//! Each run: Alice and Bob become friends, Bob stops, Alice sends
//! `messages` 100-byte messages, waits until every one reads "stored with
//! 3 of 3", and stops. Then Bob starts again, and the time from his engine
//! starting until he has been shown every message is one `deliver_ms`
//! sample: joining the DHT, finding his volunteers, proving his key,
//! fetching, opening, storing durably (the acknowledgement follows).
//!
//! The last run kills two of the three volunteers after the deposit; the
//! share of messages Bob is shown within a minute is `delivered_ratio`.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use kith_core::engine::{Event, MessageState};
use kith_core::history::Author;
use kith_store::profile::Identity;

use crate::chat::{FRIEND_LIMIT, befriend, start_engine};
use crate::proc::Kithd;

/// Results of the scenario.
#[derive(Debug, Clone)]
pub struct OfflineResult {
    /// Time until Bob was shown every message, one sample per run with all
    /// volunteers up, milliseconds.
    pub deliver_ms: Vec<f64>,
    /// Share of the messages Bob was shown with two of three volunteers
    /// gone.
    pub delivered_ratio: f64,
}

/// Starts three volunteers, each bootstrapping from those before it.
fn start_volunteers(kithd: &std::path::Path) -> anyhow::Result<Vec<Kithd>> {
    let mut nodes: Vec<Kithd> = Vec::new();
    for _ in 0..3 {
        let bootstrap: Vec<_> = nodes.iter().flat_map(|n| n.addrs.clone()).collect();
        nodes.push(Kithd::start_with(kithd, &bootstrap)?);
    }
    Ok(nodes)
}

/// One run; with `kill_two`, two volunteers die after the deposit.
/// Returns the time until Bob was shown everything, and how many he was
/// shown.
async fn run_once(
    kithd: &std::path::Path,
    messages: usize,
    kill_two: bool,
) -> anyhow::Result<(f64, usize)> {
    let mut nodes = start_volunteers(kithd)?;
    let bootstrap: Vec<_> = nodes.iter().flat_map(|n| n.addrs.clone()).collect();
    let dir = tempfile::tempdir()?;
    let alice_identity = Identity::generate();
    let bob_identity = Identity::generate();
    let (alice, mut alice_events) =
        start_engine(dir.path(), "alice", alice_identity.clone(), &bootstrap)?;
    let (bob, _bob_events) = start_engine(dir.path(), "bob", bob_identity.clone(), &bootstrap)?;
    befriend(&alice, &mut alice_events, &bob, FRIEND_LIMIT).await?;
    let alice_key = alice.account();
    let bob_key = bob.account();
    // Bob's acceptance must have reached Alice before he goes.
    let deadline = Instant::now() + Duration::from_secs(30);
    while bob.status().await?.outbox > 0 {
        if Instant::now() > deadline {
            bail!("bob's acceptance never left");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bob.shutdown().await?;
    drop(bob);
    drop(_bob_events);
    tokio::spawn(async move { while alice_events.next().await.is_some() {} });

    let body = "x".repeat(100);
    for _ in 0..messages {
        alice.send(bob_key, body.clone()).await?;
    }
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let page = alice.history(bob_key, None, messages + 10).await?;
        let stored = page
            .messages
            .iter()
            .filter(|m| matches!(m.state, Some(MessageState::Stored { volunteers: 3, .. })))
            .count();
        if stored == messages {
            break;
        }
        if Instant::now() > deadline {
            bail!("only {stored} of {messages} messages were stored with 3 volunteers");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    alice.shutdown().await?;
    drop(alice);

    let bootstrap = if kill_two {
        nodes.truncate(1);
        nodes[0].addrs.clone()
    } else {
        bootstrap
    };
    let start = Instant::now();
    let (bob, mut bob_events) = start_engine(dir.path(), "bob", bob_identity, &bootstrap)?;
    let limit = Duration::from_secs(60);
    let mut shown = 0;
    while shown < messages {
        let Some(remaining) = limit.checked_sub(start.elapsed()) else {
            break;
        };
        match tokio::time::timeout(remaining, bob_events.next()).await {
            Ok(Some(Event::Message { friend, message }))
                if friend == alice_key && message.author == Author::Friend =>
            {
                shown += 1;
            }
            Ok(Some(_)) => {}
            Ok(None) => bail!("bob's engine stopped"),
            Err(_) => break,
        }
    }
    let elapsed = start.elapsed().as_secs_f64() * 1000.0;
    let _ = bob.shutdown().await;
    Ok((elapsed, shown))
}

/// Runs the scenario: `runs` timed runs with every volunteer up, then one
/// with two of three gone.
pub async fn run(
    kithd: &std::path::Path,
    runs: usize,
    messages: usize,
) -> anyhow::Result<OfflineResult> {
    let mut deliver_ms = Vec::with_capacity(runs);
    for _ in 0..runs {
        let (ms, shown) = run_once(kithd, messages, false).await?;
        if shown < messages {
            bail!("bob was shown {shown} of {messages} messages with every volunteer up");
        }
        deliver_ms.push(ms);
    }
    let (_, shown) = run_once(kithd, messages, true)
        .await
        .context("the run with two volunteers gone")?;
    Ok(OfflineResult {
        deliver_ms,
        delivered_ratio: shown as f64 / messages as f64,
    })
}
