//! `connect`: two fresh clients and one `kithd` on loopback. Measures the
//! time from starting both clients until each has found the other's device
//! by its presence share (what a friend holds for an account key) and holds a
//! connection to it. Tox needs about 10 s for the same on this machine.
//!
//! Per run: one `kithd` process is started fresh and left idle for a moment
//! (its RSS is sampled then), two clients start at once, each publishes its
//! presence through the node and looks the other up until found, then
//! connects. The run's time is when the slower of the two is connected.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use kith_net::{Client, Config, Multiaddr, RelayReservation, Role};
use kith_proto::presence::{PresenceKeys, PresenceShare};
use kith_proto::{AccountKeypair, DeviceKeypair};

use crate::proc::Kithd;

/// Results of the scenario.
#[derive(Debug, Clone)]
pub struct ConnectResult {
    /// Milliseconds per run until both clients were connected.
    pub samples_ms: Vec<f64>,
    /// `kithd`'s resident memory when idle, KiB (largest seen).
    pub kithd_idle_rss_kb: u64,
}

struct BenchClient {
    client: Client,
    share: PresenceShare,
}

fn start_client(bootstrap: &Multiaddr) -> anyhow::Result<BenchClient> {
    let account = AccountKeypair::generate();
    let keys = PresenceKeys::derive(&account);
    let share = keys.share();
    let mut config = Config::new(DeviceKeypair::generate(), Role::Client);
    config.listen = vec!["/ip4/127.0.0.1/tcp/0".parse()?];
    config.bootstrap = vec![bootstrap.clone()];
    config.presence = Some(keys);
    config.relay_reservation = RelayReservation::Never;
    let (client, mut events, event_loop) = kith_net::new(config, None)?;
    tokio::spawn(event_loop.run());
    // Nobody reads events here; drain them so none pile up.
    tokio::spawn(async move { while events.next().await.is_some() {} });
    Ok(BenchClient { client, share })
}

/// Publishes `me`, then finds and connects to the friend with `friend`.
async fn meet(me: &BenchClient, friend: &PresenceShare, deadline: Instant) -> anyhow::Result<()> {
    while me.client.publish_presence().await.is_err() {
        if Instant::now() > deadline {
            bail!("presence never published");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    loop {
        match me.client.connect_friend(friend).await {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => bail!("friend never reached: {e}"),
            // Not published yet: look again shortly.
            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

/// Runs the scenario `runs` times with the `kithd` binary at `kithd`.
pub async fn run(kithd: &std::path::Path, runs: usize) -> anyhow::Result<ConnectResult> {
    let mut samples_ms = Vec::with_capacity(runs);
    let mut kithd_idle_rss_kb = 0;
    for run in 0..runs {
        let node = Kithd::start(kithd)?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        kithd_idle_rss_kb = kithd_idle_rss_kb.max(node.rss_kb()?);
        let bootstrap = node.addrs.first().context("kithd address")?.clone();

        let start = Instant::now();
        let deadline = start + Duration::from_secs(30);
        let alice = start_client(&bootstrap)?;
        let bob = start_client(&bootstrap)?;
        let (a, b) = tokio::join!(
            meet(&alice, &bob.share, deadline),
            meet(&bob, &alice.share, deadline)
        );
        a.with_context(|| format!("run {run}: alice"))?;
        b.with_context(|| format!("run {run}: bob"))?;
        samples_ms.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(ConnectResult {
        samples_ms,
        kithd_idle_rss_kb,
    })
}
