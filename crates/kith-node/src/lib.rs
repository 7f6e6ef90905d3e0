//! `kithd`, the headless Kith node for a VPS or a home server.
//!
//! A node serves the private Kademlia DHT (validating every presence record
//! before it stores it), relays for clients behind NAT with limits that let a
//! relayed chat live (relay v2, so DCUtR can upgrade the connection), answers
//! AutoNAT probes, keeps offline mail as a mailbox volunteer (on by default,
//! see [`mailbox`]), and exports Prometheus metrics on loopback.
//!
//! Flow: [`run`] loads or creates the node key in the data folder, opens the
//! volunteer's store beside it (`mailbox/`), starts a [`kith_net`] node in
//! [`kith_net::Role::Node`] that speaks `/kith/mailbox/1.0.0`, starts the
//! volunteer's service ([`kith_mailbox::service`]) and forwards it every
//! mailbox request the network hands up, prints the shareable multiaddrs
//! (`…/p2p/<peer id>`) once every listener is up, serves metrics, and stops
//! cleanly when the shutdown future completes (SIGINT or SIGTERM in the
//! binary): requests the volunteer took are answered and on disk before
//! the network goes down.

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod config;
pub mod mailbox;
pub mod metrics_http;

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use kith_net::{Config, Event, Multiaddr, PeerId, Protocol, Role};
use kith_proto::DeviceKeypair;
use kith_store::private::{self, PrivateFileError};
use prometheus_client::registry::Registry;

pub use config::{FileConfig, MailboxSettings, NodeConfig, Overrides};

/// The node key's file name in the data folder.
pub const NODE_KEY_FILE: &str = "node.key";
const MAX_NODE_KEY_BYTES: u64 = 1024;
/// How long shutdown waits for the volunteer to finish the requests it
/// took.
const VOLUNTEER_DRAIN: Duration = Duration::from_secs(5);
/// How long shutdown waits for the network to stop by itself (the
/// volunteer's timer task lets go of its network handle once the
/// volunteer's thread has ended); after that the network task is stopped
/// instead, which drops the swarm, closing listeners and connections all
/// the same.
const NETWORK_STOP: Duration = Duration::from_secs(1);

/// Why the node stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The data folder or key file could not be used.
    #[error(transparent)]
    File(#[from] PrivateFileError),
    /// The key file exists but holds no valid key.
    #[error("{path}: not a valid node key ({reason}); move it away to create a new one")]
    BadKey {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The network could not start.
    #[error(transparent)]
    Start(#[from] kith_net::StartError),
    /// The network stopped answering.
    #[error(transparent)]
    Net(#[from] kith_net::NetError),
    /// The metrics endpoint could not bind.
    #[error("metrics endpoint {addr}: {source}")]
    Metrics {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Standard output could not be written.
    #[error("could not print the node's addresses: {0}")]
    Output(std::io::Error),
    /// The mailbox volunteer's store could not be opened (another `kithd`
    /// on the same data folder holds its lock, say).
    #[error("{path}: {reason}")]
    Mailbox {
        /// The store's folder.
        path: String,
        /// Why. Shown in the message, not as a source: its own message
        /// already carries its causes.
        reason: kith_mailbox::VolunteerError,
    },
}

/// Loads the node key from `dir`, creating the folder and a new key on first
/// start.
pub fn load_or_create_key(dir: &Path) -> Result<DeviceKeypair, NodeError> {
    private::create_dir(dir)?;
    let path = dir.join(NODE_KEY_FILE);
    match private::read_limited(&path, MAX_NODE_KEY_BYTES) {
        Ok(bytes) => DeviceKeypair::from_protobuf(&bytes).map_err(|e| NodeError::BadKey {
            path: path.display().to_string(),
            reason: e.to_string(),
        }),
        Err(e) if e.is_not_found() => {
            let key = DeviceKeypair::generate();
            let bytes = key.to_protobuf().map_err(|e| NodeError::BadKey {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
            match private::create_new(&path, &bytes) {
                Ok(()) => Ok(key),
                // Another kithd on the same folder won the race: use its key.
                Err(PrivateFileError::AlreadyExists { .. }) => load_or_create_key(dir),
                Err(e) => Err(e.into()),
            }
        }
        Err(PrivateFileError::TooLarge { found, .. }) => Err(NodeError::BadKey {
            path: path.display().to_string(),
            reason: format!("{found} bytes is far too large"),
        }),
        Err(e) => Err(e.into()),
    }
}

/// `addr` ending in `/p2p/<peer>`, added if missing.
fn with_peer(addr: &Multiaddr, peer: PeerId) -> Multiaddr {
    if addr.iter().any(|p| matches!(p, Protocol::P2p(_))) {
        addr.clone()
    } else {
        addr.clone().with(Protocol::P2p(peer))
    }
}

/// Runs a node until `shutdown` completes. The shareable addresses are
/// written to `out`, one per line, once every listener is up.
pub async fn run(
    config: NodeConfig,
    out: &mut (impl Write + Send),
    shutdown: impl Future<Output = ()>,
) -> Result<(), NodeError> {
    let keypair = load_or_create_key(&config.data_dir)?;
    let volunteer = match &config.mailbox {
        Some(settings) => Some(mailbox::open(&config.data_dir, keypair.clone(), settings)?),
        None => None,
    };
    let mut net = Config::new(keypair, Role::Node);
    net.listen = config.listen.clone();
    net.external = config.external.clone();
    net.bootstrap = config.bootstrap.clone();
    net.relay_limits = config.relay.clone();
    net.limits.max_established = config.max_connections;
    net.limits.max_established_per_peer = config.max_connections_per_peer;
    net.limits.max_pending_per_ip = config.max_pending_per_ip;
    net.mailbox_volunteer = volunteer.is_some();

    let mut registry = Registry::with_prefix("kithd");
    let registry_ref = config.metrics.is_some().then_some(&mut registry);
    let (client, mut events, event_loop) = kith_net::new(net, registry_ref)?;
    let peer_id = client.peer_id();

    let mailbox_metrics = mailbox::Metrics::default();
    let volunteer = volunteer
        .zip(config.mailbox.as_ref())
        .map(|(volunteer, settings)| {
            let limits = &settings.limits;
            tracing::info!(
                quota_bytes = limits.total_quota_bytes,
                mailbox_quota_bytes = limits.mailbox_quota_bytes,
                pow_bits = limits.pow_difficulty,
                max_ttl_secs = limits.max_ttl_secs,
                usage = ?volunteer.usage(),
                "keeping offline mail"
            );
            mailbox_metrics.register(&mut registry);
            kith_mailbox::service::start(client.clone(), volunteer, settings.service.clone())
        });

    let mut event_task = tokio::spawn(event_loop.run());
    let forward_task = tokio::spawn({
        let volunteer = volunteer.clone();
        let metrics = mailbox_metrics.clone();
        async move {
            while let Some(event) = events.next().await {
                match event {
                    Event::MailboxRequest(request) => match &volunteer {
                        Some(volunteer) => {
                            if !volunteer.offer(request) {
                                metrics.request_dropped();
                            }
                        }
                        // Not asked for: the network only hands these up
                        // to volunteers. Dropped, the request fails.
                        None => drop(request),
                    },
                    Event::RecordRefused { from, reason } => {
                        tracing::info!(%from, reason, "refused a presence record");
                    }
                    Event::Connected { peer, relayed } => {
                        tracing::debug!(%peer, relayed, "connected");
                    }
                    other => tracing::trace!(?other, "network event"),
                }
            }
        }
    });

    let mut metrics_task = None;
    if let Some(addr) = config.metrics {
        let registry = Arc::new(Mutex::new(registry));
        let refresh = volunteer.clone().map(|volunteer| {
            let metrics = mailbox_metrics.clone();
            let refresh: metrics_http::Refresh = Arc::new(move || {
                let volunteer = volunteer.clone();
                let metrics = metrics.clone();
                async move {
                    if let Some(usage) = volunteer.usage().await {
                        metrics.record(usage);
                    }
                }
                .boxed()
            });
            refresh
        });
        let (bound, serve) = metrics_http::bind(addr, registry, refresh)
            .await
            .map_err(|source| NodeError::Metrics { addr, source })?;
        tracing::info!("metrics at http://{bound}/metrics");
        metrics_task = Some(tokio::spawn(serve));
    }

    let addrs: Vec<Multiaddr> = client.listen_addrs().await?;
    for addr in &addrs {
        writeln!(out, "{}", with_peer(addr, peer_id)).map_err(NodeError::Output)?;
    }
    out.flush().map_err(NodeError::Output)?;
    tracing::info!(%peer_id, "kithd is running");

    shutdown.await;
    tracing::info!("shutting down");
    // Stop taking requests, let the volunteer answer the ones it took (its
    // queue is first in, first out, so a usage query answered means every
    // earlier request was), then let its thread close the store.
    forward_task.abort();
    let _ = forward_task.await;
    if let Some(task) = metrics_task {
        task.abort();
        let _ = task.await;
    }
    if let Some(volunteer) = volunteer
        && tokio::time::timeout(VOLUNTEER_DRAIN, volunteer.usage())
            .await
            .is_err()
    {
        tracing::warn!("the mailbox volunteer did not finish in time");
    }
    drop(client);
    if tokio::time::timeout(NETWORK_STOP, &mut event_task)
        .await
        .is_err()
    {
        event_task.abort();
        let _ = event_task.await;
    }
    tracing::info!("stopped");
    Ok(())
}
