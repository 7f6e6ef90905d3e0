//! `chat`: two engines (real sled stores in temporary folders, real TCP on
//! loopback) made friends through one real `kithd`, then:
//!
//! - **echo round trip**: Alice sends a 100-byte message, Bob's side sends
//!   it back as soon as it is shown to him, and the time until Alice is
//!   shown the echo is one sample. Each message is durably stored by the
//!   receiver before it acknowledges, and by the sender before `send`
//!   returns, so a sample includes four flushes to disk.
//! - **one-way throughput**: Alice queues `messages` 100-byte messages as
//!   fast as `send` accepts them (up to 1,024 waiting for their durable
//!   commit at once); the rate is messages over the time until Bob has been
//!   shown every one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::{Stream, StreamExt};
use kith_core::engine::{self, Engine, Event};
use kith_core::history::Author;
use kith_net::Multiaddr;
use kith_store::profile::Identity;
use kith_store::{SledBackend, Store};

use crate::proc::Kithd;

/// Longest two engines may take to become friends.
pub(crate) const FRIEND_LIMIT: Duration = Duration::from_secs(60);

/// Results of the scenario.
#[derive(Debug, Clone)]
pub struct ChatResult {
    /// Round trip samples, milliseconds.
    pub rtt_ms: Vec<f64>,
    /// One-way messages per second.
    pub msgs_per_s: f64,
}

pub(crate) type Events = std::pin::Pin<Box<dyn Stream<Item = Event> + Send>>;

/// Starts an engine for `identity` on a sled store in `dir/name` (kept
/// across restarts), bootstrapping from `bootstrap`.
pub(crate) fn start_engine(
    dir: &std::path::Path,
    name: &str,
    identity: Identity,
    bootstrap: &[Multiaddr],
) -> anyhow::Result<(Engine, Events)> {
    let backend = SledBackend::open(&dir.join(name))?;
    let store = Store::open(Arc::new(backend), None, kith_core::SCHEMA_VERSION, &[])?;
    let mut net = kith_net::Config::new(identity.device.clone(), kith_net::Role::Client);
    net.listen = vec!["/ip4/127.0.0.1/tcp/0".parse()?];
    net.bootstrap = bootstrap.to_vec();
    net.relay_reservation = kith_net::RelayReservation::Never;
    let mut config = engine::Config::new(identity, store, net);
    config.display_name = name.into();
    config.queue_capacity = 32 * 1024;
    config.retry_min = Duration::from_millis(100);
    let (engine, events) = engine::start(config)?;
    Ok((engine, Box::pin(events)))
}

pub(crate) async fn next_matching<T>(
    events: &mut Events,
    limit: Duration,
    mut pick: impl FnMut(Event) -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let event = tokio::time::timeout_at(deadline, events.next())
            .await
            .context("timed out waiting for an engine event")?
            .context("the engine stopped")?;
        if let Some(value) = pick(event) {
            return Ok(value);
        }
    }
}

/// Makes Alice and Bob friends through the request drop, within `limit`.
///
/// While Alice waits for the acceptance her engine is asked to check for
/// requests and mail every 5 s: an acceptance that could not be delivered
/// directly goes to the mailbox, which an idle engine reads only every few
/// minutes.
pub(crate) async fn befriend(
    alice: &Engine,
    alice_events: &mut Events,
    bob: &Engine,
    limit: Duration,
) -> anyhow::Result<()> {
    let bob_id = bob.status().await?.id;
    let deadline = Instant::now() + limit;
    loop {
        match alice.add(bob_id, "benchmark".into()).await {
            Ok(()) => break,
            Err(e) if Instant::now() > deadline => bail!("add: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    loop {
        if Instant::now() > deadline {
            bail!("bob never saw the request");
        }
        let _ = bob.check_requests().await;
        let (incoming, _) = bob.requests().await?;
        if let Some(request) = incoming.first() {
            bob.accept(request.account).await?;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    loop {
        let added = next_matching(alice_events, Duration::from_secs(5), |e| {
            matches!(e, Event::FriendAdded(_)).then_some(())
        })
        .await;
        if added.is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("alice never saw bob's acceptance");
        }
        let _ = alice.check_requests().await;
    }
}

/// Runs the scenario against a `kithd` binary.
pub async fn run(
    kithd: &std::path::Path,
    rounds: usize,
    messages: usize,
) -> anyhow::Result<ChatResult> {
    let node = Kithd::start(kithd)?;
    let bootstrap = node.addrs.first().context("kithd address")?.clone();
    let dir = tempfile::tempdir()?;
    let bootstrap = [bootstrap];
    let (alice, mut alice_events) =
        start_engine(dir.path(), "alice", Identity::generate(), &bootstrap)?;
    let (bob, mut bob_events) = start_engine(dir.path(), "bob", Identity::generate(), &bootstrap)?;
    befriend(&alice, &mut alice_events, &bob, FRIEND_LIMIT).await?;
    let alice_key = alice.account();
    let bob_key = bob.account();

    // Bob echoes every message he is shown.
    let echo_bob = bob.clone();
    let (count_tx, mut count_rx) = tokio::sync::mpsc::channel::<usize>(16);
    let echo = tokio::spawn(async move {
        let mut received = 0usize;
        let mut echoing = true;
        while let Some(event) = bob_events.next().await {
            if let Event::Message { message, .. } = event
                && message.author == Author::Friend
            {
                if message.body.starts_with("stop-echo") {
                    echoing = false;
                    received = 0;
                    continue;
                }
                if echoing {
                    let _ = echo_bob.send(alice_key, message.body).await;
                } else {
                    received += 1;
                    if received.is_multiple_of(1000) {
                        let _ = count_tx.send(received).await;
                    }
                }
            }
        }
    });

    let body = "x".repeat(100);
    let mut rtt_ms = Vec::with_capacity(rounds);
    // A few unmeasured rounds let the connection and sessions settle.
    for round in 0..rounds + 5 {
        let start = Instant::now();
        alice.send(bob_key, body.clone()).await?;
        next_matching(&mut alice_events, Duration::from_secs(30), |e| match e {
            Event::Message { message, .. } if message.author == Author::Friend => Some(()),
            _ => None,
        })
        .await?;
        if round >= 5 {
            rtt_ms.push(start.elapsed().as_secs_f64() * 1000.0);
        }
    }

    alice.send(bob_key, "stop-echo".into()).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Drain Alice's events in the background from now on.
    tokio::spawn(async move { while alice_events.next().await.is_some() {} });

    let start = Instant::now();
    let mut pending = futures::stream::FuturesUnordered::new();
    for _ in 0..messages {
        if pending.len() >= 1024
            && let Some(result) = pending.next().await
        {
            result?;
        }
        let alice = alice.clone();
        let body = body.clone();
        pending.push(async move { alice.send(bob_key, body).await });
    }
    while let Some(result) = pending.next().await {
        result?;
    }
    let accepted_s = start.elapsed().as_secs_f64();
    let want = messages - messages % 1000;
    loop {
        let got = tokio::time::timeout(Duration::from_secs(60), count_rx.recv())
            .await
            .context("bob stopped receiving")?
            .context("echo task ended")?;
        if got >= want {
            break;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    echo.abort();
    if std::env::var_os("KITH_BENCH_DEBUG").is_some() {
        eprintln!("accepted all in {accepted_s:.3} s, delivered all in {elapsed:.3} s");
    }
    let _ = alice.shutdown().await;
    let _ = bob.shutdown().await;
    Ok(ChatResult {
        rtt_ms,
        msgs_per_s: want as f64 / elapsed,
    })
}
