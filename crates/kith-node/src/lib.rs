//! `kithd`, the headless Kith node for a VPS or a home server.
//!
//! A node serves the private Kademlia DHT (validating every presence record
//! before it stores it), relays for clients behind NAT with limits that let a
//! relayed chat live (relay v2, so DCUtR can upgrade the connection), answers
//! AutoNAT probes, and exports Prometheus metrics on loopback. Offline-mail
//! volunteering joins with issue 5.
//!
//! Flow: [`run`] loads or creates the node key in the data folder, starts a
//! [`kith_net`] node in [`kith_net::Role::Node`], prints the shareable
//! multiaddrs (`…/p2p/<peer id>`) once every listener is up, serves metrics,
//! and stops cleanly when the shutdown future completes (SIGINT or SIGTERM
//! in the binary).

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod config;
pub mod metrics_http;

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use kith_net::{Config, Event, Multiaddr, PeerId, Protocol, Role};
use kith_proto::DeviceKeypair;
use kith_store::private::{self, PrivateFileError};
use prometheus_client::registry::Registry;

pub use config::{FileConfig, NodeConfig, Overrides};

/// The node key's file name in the data folder.
pub const NODE_KEY_FILE: &str = "node.key";
const MAX_NODE_KEY_BYTES: u64 = 1024;

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
    let mut net = Config::new(keypair, Role::Node);
    net.listen = config.listen.clone();
    net.external = config.external.clone();
    net.bootstrap = config.bootstrap.clone();
    net.relay_limits = config.relay.clone();
    net.limits.max_established = config.max_connections;
    net.limits.max_established_per_peer = config.max_connections_per_peer;

    let mut registry = Registry::with_prefix("kithd");
    let registry_ref = config.metrics.is_some().then_some(&mut registry);
    let (client, mut events, event_loop) = kith_net::new(net, registry_ref)?;
    let peer_id = client.peer_id();
    let event_task = tokio::spawn(event_loop.run());
    let log_task = tokio::spawn(async move {
        while let Some(event) = events.next().await {
            match event {
                Event::RecordRefused { from, reason } => {
                    tracing::info!(%from, reason, "refused a presence record");
                }
                Event::Connected { peer, relayed } => {
                    tracing::debug!(%peer, relayed, "connected");
                }
                other => tracing::trace!(?other, "network event"),
            }
        }
    });

    let mut metrics_task = None;
    if let Some(addr) = config.metrics {
        let registry = Arc::new(Mutex::new(registry));
        let (bound, serve) = metrics_http::bind(addr, registry)
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
    drop(client);
    let _ = event_task.await;
    log_task.abort();
    if let Some(task) = metrics_task {
        task.abort();
    }
    tracing::info!("stopped");
    Ok(())
}
