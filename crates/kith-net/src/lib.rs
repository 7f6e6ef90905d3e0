//! Kith's network layer: one libp2p swarm per device or node.
//!
//! - **Transports**: TCP (Noise + Yamux) and QUIC, relay v2 circuits for
//!   clients; or libp2p's memory transport so that many nodes run in one
//!   process for tests and benchmarks ([`TransportKind::Memory`]).
//! - **Finding peers**: a private Kademlia DHT under [`KAD_PROTOCOL`]
//!   (never the public IPFS DHT), fed by Identify; mDNS on the LAN; AutoNAT
//!   v2 to learn whether we are publicly reachable.
//! - **Presence**: a client with presence keys publishes its signed, sealed
//!   presence entry (see `docs/presence.md`), republishes it before expiry
//!   and when its addresses change; friends look it up with the
//!   [`kith_proto::presence::PresenceShare`] they were given and dial each
//!   device directly or through a relay circuit, which DCUtR then tries to
//!   upgrade to a direct connection. DHT nodes validate every inbound record
//!   before storing it. The entry also carries the device's session prekeys
//!   ([`Config::prekeys`], [`Client::set_prekeys`]).
//! - **Direct messages**: [`Client::request`] sends opaque bytes to a
//!   device over [`MESSAGE_PROTOCOL`] (request and response, each a
//!   length-prefixed frame with a hard size limit) on an existing
//!   connection or one dialled for it, and returns the answer; requests from
//!   others arrive as [`Event::Request`] and are answered with
//!   [`InboundRequest::respond`].
//! - **Request drops**: friend requests are left in the DHT under a key
//!   only holders of the recipient's Kith ID can compute
//!   ([`Client::drop_request`]) and collected by the recipient
//!   ([`Client::fetch_requests`]), so strangers never contact a device
//!   directly (see `docs/requests.md`). DHT nodes check and merge them like
//!   presence records.
//! - **Offline mail**: [`Client::closest_peers`] finds the DHT servers
//!   nearest a mailbox address and [`Client::mailbox_request`] talks
//!   [`MAILBOX_PROTOCOL`] to them; a node with
//!   [`Config::mailbox_volunteer`] receives such requests as
//!   [`Event::MailboxRequest`]. The messages are `kith-mailbox`'s.
//! - **Nodes** (`kithd`): Kademlia server, relay v2 server with
//!   [`RelayLimits`], AutoNAT server.
//!
//! The shape follows the house style: [`new`] returns a cloneable
//! [`Client`] that sends bounded commands with `oneshot` replies, a stream
//! of [`Event`]s, and the [`EventLoop`] that owns the swarm and must be
//! spawned; it ends when every `Client` is dropped. Nothing is global, so any
//! number of nodes can run in one process.

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod backoff;
mod behaviour;
mod client;
mod config;
mod event_loop;
mod keep_alive;
mod limits;
mod message;
mod metrics;

use std::collections::HashSet;

use futures::Stream;
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;

pub use behaviour::{BuildError, IDENTIFY_PROTOCOL, KAD_PROTOCOL};
pub use client::{Client, Connection, Device, NetError, Peer, Published};
pub use config::{
    Config, ConnectionLimits, RelayLimits, RelayReservation, Role, Timers, TransportKind,
};
pub use event_loop::{Event, EventLoop, sort_by_distance};
pub use keep_alive::MAX_KEPT_PEERS;
pub use libp2p::multiaddr::Protocol;
pub use libp2p::{Multiaddr, PeerId};
pub use message::{
    InboundRequest, MAILBOX_PROTOCOL, MAX_MAILBOX_REQUEST_BYTES, MAX_MAILBOX_RESPONSE_BYTES,
    MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES, MESSAGE_PROTOCOL,
};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The swarm could not be built.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// The configured prekeys are over
    /// [`kith_proto::presence::MAX_PREKEY_BYTES`].
    #[error("prekeys of {size} bytes are over the {max}-byte limit")]
    PrekeysTooLarge {
        /// Bytes given.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// A listen address could not be used.
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address.
        addr: Multiaddr,
        /// Why.
        reason: String,
    },
}

/// `error` and its causes as one line, each cause once: some errors print
/// nothing themselves and leave everything to their causes, others repeat
/// their cause in their own message.
pub fn describe(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !more.is_empty() && !text.contains(&more) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

/// Builds a node from `config`. Spawn the returned [`EventLoop`]'s
/// [`EventLoop::run`] on a Tokio runtime; use the [`Client`] to drive it and
/// read the event stream to follow it. Pass a registry to export metrics.
pub fn new(
    config: Config,
    registry: Option<&mut Registry>,
) -> Result<
    (
        Client,
        impl Stream<Item = Event> + Send + Unpin + 'static,
        EventLoop,
    ),
    StartError,
> {
    if config.prekeys.len() > kith_proto::presence::MAX_PREKEY_BYTES {
        return Err(StartError::PrekeysTooLarge {
            size: config.prekeys.len(),
            max: kith_proto::presence::MAX_PREKEY_BYTES,
        });
    }
    let (metrics, registry) = match registry {
        Some(registry) => (Some(metrics::NetMetrics::new(registry)), Some(registry)),
        None => (None, None),
    };
    let mut swarm = behaviour::build_swarm(&config, registry)?;
    let mut pending = HashSet::new();
    for addr in &config.listen {
        let id = swarm
            .listen_on(addr.clone())
            .map_err(|e| StartError::Listen {
                addr: addr.clone(),
                // libp2p's transport error prints nothing of its own for
                // most failures; the reason is in its causes.
                reason: describe(&e),
            })?;
        pending.insert(id);
    }
    for addr in &config.external {
        swarm.add_external_address(addr.clone());
    }
    let capacity = config.queue_capacity.max(1);
    let (command_tx, command_rx) = mpsc::channel(capacity);
    let (event_tx, event_rx) = mpsc::channel(capacity);
    let client = Client {
        commands: command_tx,
        peer_id: *swarm.local_peer_id(),
    };
    let event_loop = EventLoop::new(swarm, config, command_rx, event_tx, metrics, pending);
    Ok((client, tokio_stream_from(event_rx), event_loop))
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: mpsc::Receiver<T>,
) -> impl Stream<Item = T> + Send + Unpin + 'static {
    Box::pin(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)))
}
