//! The cloneable handle the rest of Kith uses to drive the network.
//!
//! Every method sends one bounded [`Command`] to the event loop, carrying a
//! `oneshot` for the reply. When the event loop is gone (every handle
//! dropped, or the loop stopped) methods return [`NetError::Stopped`].

use kith_proto::presence::{MAX_PREKEY_BYTES, PresenceShare};
use kith_proto::request_drop::{DropEntry, DropError};
use libp2p::{Multiaddr, PeerId};
use tokio::sync::{mpsc, oneshot};

use crate::message::{MAX_MAILBOX_REQUEST_BYTES, MAX_REQUEST_BYTES};

/// A device of a friend, as its presence entry describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// The device's network identity.
    pub peer_id: PeerId,
    /// Where it said it can be reached (direct and relay-circuit
    /// addresses).
    pub addresses: Vec<Multiaddr>,
    /// Sequence number of the entry.
    pub seq: u64,
    /// When the entry expires, Unix seconds.
    pub expires: u64,
    /// Session prekeys it published.
    pub prekeys: Vec<u8>,
}

/// A DHT server near a key, as a closest-peer query found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its network identity.
    pub peer_id: PeerId,
    /// Addresses the query learnt for it.
    pub addresses: Vec<Multiaddr>,
}

/// How we are connected to a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connection {
    /// The peer.
    pub peer_id: PeerId,
    /// Through a relay circuit (until DCUtR upgrades it).
    pub relayed: bool,
}

/// Why a network request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// The event loop has stopped.
    #[error("the network has stopped")]
    Stopped,
    /// Too many requests of this kind are already in flight.
    #[error("too many {0} in progress; try again shortly")]
    Busy(&'static str),
    /// No presence record was found for the friend.
    #[error("no reachable device found for this friend")]
    NotFound,
    /// No DHT node answered the lookup: this node is not on the network
    /// (yet), so the lookup says nothing about whether the record exists.
    #[error("no DHT node answered; not connected to the network yet")]
    NoPeers,
    /// The DHT lookup failed.
    #[error("lookup failed: {0}")]
    Lookup(String),
    /// This node has no presence keys to publish with.
    #[error("this node publishes no presence")]
    NoPresence,
    /// The presence record could not be made or stored anywhere.
    #[error("publishing presence failed: {0}")]
    Publish(String),
    /// A dial failed.
    #[error("could not connect to {peer}: {reason}")]
    Dial {
        /// The peer.
        peer: PeerId,
        /// Why.
        reason: String,
    },
    /// A multiaddr was not usable.
    #[error("invalid address {0}")]
    InvalidAddress(String),
    /// A direct request failed: the connection closed before the answer,
    /// the peer does not speak the protocol or gave no answer, or the
    /// stream broke.
    #[error("request failed: {0}")]
    Request(String),
    /// The peer does not speak the protocol asked for (for a mailbox
    /// request: it does not volunteer).
    #[error("the peer does not speak {0}")]
    Unsupported(String),
    /// The peer did not answer a direct request within the request timeout.
    #[error("the peer did not answer in time")]
    Timeout,
    /// A request, response or prekey bundle over its size limit. Refused
    /// before sending when it is ours; refused unread when it is theirs.
    #[error("{size} bytes is over the {max}-byte limit")]
    TooLarge {
        /// Bytes given or announced.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// A request-drop entry that DHT nodes would refuse.
    #[error("invalid request drop entry: {0}")]
    InvalidDrop(DropError),
    /// The request drop could not be stored on any DHT node.
    #[error("storing the request drop failed: {0}")]
    Drop(String),
}

/// The result of a publication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// The entry's sequence number.
    pub seq: u64,
    /// Addresses listed in it.
    pub addresses: usize,
}

pub(crate) type Reply<T> = oneshot::Sender<Result<T, NetError>>;

/// Requests to the event loop.
pub(crate) enum Command {
    ListenAddrs(Reply<Vec<Multiaddr>>),
    Dial {
        addr: Multiaddr,
        reply: Reply<()>,
    },
    Publish(Reply<Published>),
    Find {
        share: PresenceShare,
        reply: Reply<Vec<Device>>,
    },
    Connect {
        peer: PeerId,
        addresses: Vec<Multiaddr>,
        reply: Reply<Connection>,
    },
    Connected(Reply<Vec<Connection>>),
    RecordCount(Reply<usize>),
    RoutingTable(Reply<Vec<PeerId>>),
    StoredValues(Reply<Vec<(Vec<u8>, Vec<u8>)>>),
    Request {
        peer: PeerId,
        addresses: Vec<Multiaddr>,
        data: Vec<u8>,
        reply: Reply<Vec<u8>>,
    },
    SetPrekeys {
        prekeys: Vec<u8>,
        reply: Reply<()>,
    },
    DropRequest {
        key: [u8; 32],
        entry: DropEntry,
        reply: Reply<()>,
    },
    FetchRequests {
        key: [u8; 32],
        reply: Reply<Vec<DropEntry>>,
    },
    MailboxRequest {
        peer: PeerId,
        addresses: Vec<Multiaddr>,
        data: Vec<u8>,
        reply: Reply<Vec<u8>>,
    },
    Closest {
        key: Vec<u8>,
        reply: Reply<Vec<Peer>>,
    },
    KeepConnected(Vec<PeerId>),
}

/// A handle on a running node. Cheap to clone; the node stops when the last
/// handle is dropped.
#[derive(Clone)]
pub struct Client {
    pub(crate) commands: mpsc::Sender<Command>,
    pub(crate) peer_id: PeerId,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("peer_id", &self.peer_id)
            .finish_non_exhaustive()
    }
}

impl Client {
    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, NetError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| NetError::Stopped)?;
        rx.await.map_err(|_| NetError::Stopped)?
    }

    /// This node's PeerId.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The addresses this node listens on, once every configured listener
    /// is up, followed by its confirmed external addresses.
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, NetError> {
        self.ask(Command::ListenAddrs).await
    }

    /// Dials an address (ending in `/p2p/<peer id>` or not) and waits for
    /// the connection.
    pub async fn dial(&self, addr: Multiaddr) -> Result<(), NetError> {
        self.ask(|reply| Command::Dial { addr, reply }).await
    }

    /// Publishes this device's presence entry now (it is also republished
    /// on a timer and when addresses change).
    pub async fn publish_presence(&self) -> Result<Published, NetError> {
        self.ask(Command::Publish).await
    }

    /// Looks up a friend's devices in the DHT with the presence share they
    /// gave us.
    pub async fn find_devices(&self, share: &PresenceShare) -> Result<Vec<Device>, NetError> {
        let share = share.clone();
        self.ask(|reply| Command::Find { share, reply }).await
    }

    /// Connects to a peer at the given addresses (direct or relay circuit),
    /// or returns the existing connection.
    pub async fn connect(
        &self,
        peer: PeerId,
        addresses: Vec<Multiaddr>,
    ) -> Result<Connection, NetError> {
        self.ask(|reply| Command::Connect {
            peer,
            addresses,
            reply,
        })
        .await
    }

    /// Looks up a friend and connects to each of their devices; returns the
    /// connections made (an error only if no device could be reached).
    pub async fn connect_friend(&self, share: &PresenceShare) -> Result<Vec<Connection>, NetError> {
        let devices = self.find_devices(share).await?;
        let mut connected = Vec::with_capacity(devices.len());
        let mut last_error = NetError::NotFound;
        for device in devices {
            match self.connect(device.peer_id, device.addresses).await {
                Ok(connection) => connected.push(connection),
                Err(e) => last_error = e,
            }
        }
        if connected.is_empty() {
            Err(last_error)
        } else {
            Ok(connected)
        }
    }

    /// Peers we have at least one connection to.
    pub async fn connected_peers(&self) -> Result<Vec<Connection>, NetError> {
        self.ask(Command::Connected).await
    }

    /// Number of DHT records this node stores for others.
    pub async fn stored_record_count(&self) -> Result<usize, NetError> {
        self.ask(Command::RecordCount).await
    }

    /// The peers in this node's Kademlia routing table.
    pub async fn routing_table(&self) -> Result<Vec<PeerId>, NetError> {
        self.ask(Command::RoutingTable).await
    }

    /// Sends `data` to `peer` over `/kith/msg/1.0.0` and returns its answer.
    ///
    /// Uses an existing connection, or dials `addresses` (direct or relay
    /// circuit, all at once) first. At most 64 requests to one peer are in
    /// flight; later ones wait their turn. Fails with
    /// [`NetError::TooLarge`] at once for more than
    /// [`crate::MAX_REQUEST_BYTES`], [`NetError::Timeout`] after the
    /// request timeout, [`NetError::Dial`] when no address connects, and
    /// [`NetError::Request`] when the peer closes the stream without an
    /// answer (it dropped the request, is overloaded, or does not speak the
    /// protocol).
    pub async fn request(
        &self,
        peer: PeerId,
        addresses: Vec<Multiaddr>,
        data: Vec<u8>,
    ) -> Result<Vec<u8>, NetError> {
        if data.len() > MAX_REQUEST_BYTES {
            return Err(NetError::TooLarge {
                size: data.len(),
                max: MAX_REQUEST_BYTES,
            });
        }
        self.ask(|reply| Command::Request {
            peer,
            addresses,
            data,
            reply,
        })
        .await
    }

    /// Replaces the session prekeys published in our presence entry, and
    /// republishes it shortly (changes in quick succession cost one put).
    pub async fn set_prekeys(&self, prekeys: Vec<u8>) -> Result<(), NetError> {
        if prekeys.len() > MAX_PREKEY_BYTES {
            return Err(NetError::TooLarge {
                size: prekeys.len(),
                max: MAX_PREKEY_BYTES,
            });
        }
        self.ask(|reply| Command::SetPrekeys { prekeys, reply })
            .await
    }

    /// Leaves a friend request in the request drop under `key` (see
    /// [`kith_proto::request_drop::drop_key`]): reads the drop, merges the
    /// entry in and stores the result on the DHT nodes closest to the key.
    /// Succeeds once at least one node has taken it.
    pub async fn drop_request(&self, key: [u8; 32], entry: DropEntry) -> Result<(), NetError> {
        entry
            .check(crate::event_loop::unix_secs())
            .map_err(NetError::InvalidDrop)?;
        self.ask(|reply| Command::DropRequest { key, entry, reply })
            .await
    }

    /// Reads the request drop under `key`: every valid, live entry that
    /// the DHT nodes asked returned, merged. Empty when there is none.
    pub async fn fetch_requests(&self, key: [u8; 32]) -> Result<Vec<DropEntry>, NetError> {
        self.ask(|reply| Command::FetchRequests { key, reply })
            .await
    }

    /// Sends `data` to `peer` over `/kith/mailbox/1.0.0` and returns its
    /// answer; like [`Self::request`], with the mailbox protocol's limits
    /// ([`crate::MAX_MAILBOX_REQUEST_BYTES`] out,
    /// [`crate::MAX_MAILBOX_RESPONSE_BYTES`] back). A peer that does not
    /// volunteer answers [`NetError::Unsupported`].
    pub async fn mailbox_request(
        &self,
        peer: PeerId,
        addresses: Vec<Multiaddr>,
        data: Vec<u8>,
    ) -> Result<Vec<u8>, NetError> {
        if data.len() > MAX_MAILBOX_REQUEST_BYTES {
            return Err(NetError::TooLarge {
                size: data.len(),
                max: MAX_MAILBOX_REQUEST_BYTES,
            });
        }
        self.ask(|reply| Command::MailboxRequest {
            peer,
            addresses,
            data,
            reply,
        })
        .await
    }

    /// The DHT servers closest to `key` (up to 20, closest first, never
    /// this node), found by an iterative Kademlia query.
    /// [`NetError::NotFound`] when the query found nobody (not on the
    /// network yet).
    pub async fn closest_peers(&self, key: Vec<u8>) -> Result<Vec<Peer>, NetError> {
        self.ask(|reply| Command::Closest { key, reply }).await
    }

    /// Keeps connections to `peers` open while idle (replacing the last
    /// set; at most [`crate::MAX_KEPT_PEERS`]): the engine's friends'
    /// devices and its account's other devices, so that a connected
    /// friend stays connected, and shown online, between messages. Opens
    /// nothing by itself; a connection stays open only while the other
    /// side keeps it too (`docs/network.md`, "Kept connections").
    pub async fn keep_connected(&self, peers: Vec<PeerId>) -> Result<(), NetError> {
        self.commands
            .send(Command::KeepConnected(peers))
            .await
            .map_err(|_| NetError::Stopped)
    }

    /// Every (key, value) this node stores in its DHT record store. For
    /// tests and diagnostics.
    pub async fn stored_records(&self) -> Result<Vec<(Vec<u8>, Vec<u8>)>, NetError> {
        self.ask(Command::StoredValues).await
    }
}
