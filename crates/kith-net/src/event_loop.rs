//! The event loop: owns the swarm, serves commands, runs the timers.
//!
//! Data flow: [`crate::Client`] methods send [`Command`]s over a bounded
//! channel; the loop starts swarm operations and files their `oneshot`
//! replies in `pending` maps keyed by Kademlia query ID, connection ID or
//! peer; swarm events complete them. Noteworthy happenings go out as
//! [`Event`]s on a bounded channel: when the consumer lags, events are
//! dropped and counted rather than stalling the network.
//!
//! Timers: presence republication (and a short debounce after address
//! changes), jittered redials of lost bootstrap nodes, and retries of failed
//! publications. Kademlia's own refresh and replication run inside the
//! behaviour with the intervals from [`crate::Timers`].
//!
//! DHT-side validation: Kademlia is configured with
//! `StoreInserts::FilterBoth`, so every inbound PutRecord arrives here. A
//! presence record is stored only if
//! [`kith_proto::presence::PresenceRecord::verify`] accepts it and the merge
//! with what is stored brings something newer; a request drop (told apart by
//! its first byte) is handled in [`drops`].
//!
//! Direct requests (`/kith/msg/1.0.0`) and mailbox requests
//! (`/kith/mailbox/1.0.0`) are handled in [`requests`]: outbound ones wait
//! for their answer in a map keyed by request ID, inbound ones are handed
//! out as [`Event::Request`] or [`Event::MailboxRequest`] and their answers
//! come back through one-shot channels the loop polls. Closest-peer
//! queries for mailbox addresses are in [`closest`].

mod closest;
pub use closest::sort_by_distance;
mod drops;
mod requests;

use std::collections::{HashMap, HashSet, hash_map::Entry};
use std::time::Duration;

use futures::StreamExt;
use kith_proto::presence::{
    MAX_ADDRESS_BYTES, MAX_ADDRESSES, PresenceContents, PresenceError, PresenceKeys,
    PresenceRecord, PresenceShare,
};
use kith_proto::request_drop;
use kith_proto::wire::Timestamp;
use libp2p::core::ConnectedPoint;
use libp2p::core::transport::ListenerId;
use libp2p::kad::store::RecordStore;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, identify, kad, mdns, ping, relay};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::behaviour::{Behaviour, BehaviourEvent, KAD_PROTOCOL};
use crate::client::{Command, Connection, Device, NetError, Published, Reply};
use crate::config::{Config, RelayReservation, Role, Timers};
use crate::message::{Channel, InboundRequest};
use crate::metrics::NetMetrics;

/// Most lookups in flight at once.
const MAX_LOOKUPS: usize = 64;
/// Most dials waited on at once.
const MAX_DIALS: usize = 128;
/// Most callers waiting for the listeners to come up.
const MAX_LISTEN_WAITERS: usize = 16;
/// A lookup answers once this many DHT nodes have returned a valid record.
const LOOKUP_RECORDS: usize = 3;
/// Below this many routing-table peers, Kademlia bootstrap is repeated with
/// growing delays instead of waiting for the periodic refresh.
const SMALL_ROUTING_TABLE: usize = 10;
/// How long after answering a peer its relayed connections stay, though a
/// direct connection is up and nothing is under way: the answer may still
/// be on its way through the relay.
const RELAY_CLOSE_GRACE: Duration = Duration::from_secs(1);
/// The relay hop protocol a node offers circuits with.
const RELAY_HOP: &str = "/libp2p/circuit/relay/0.2.0/hop";

/// What the network reports as it runs.
#[derive(Debug)]
#[non_exhaustive]
pub enum Event {
    /// Another device sent us a direct request; answer it with
    /// [`InboundRequest::respond`].
    Request(InboundRequest),
    /// A peer sent us an offline-mail request (only when
    /// [`crate::Config::mailbox_volunteer`] is on); answer it with
    /// [`InboundRequest::respond`].
    MailboxRequest(InboundRequest),
    /// A listener is up on this address.
    Listening {
        /// The address.
        address: Multiaddr,
    },
    /// A connection to a peer was established.
    Connected {
        /// The peer.
        peer: PeerId,
        /// Through a relay circuit.
        relayed: bool,
    },
    /// The last connection to a peer closed.
    Disconnected {
        /// The peer.
        peer: PeerId,
    },
    /// A peer was found on the LAN by mDNS.
    LanPeer {
        /// The peer.
        peer: PeerId,
    },
    /// A bootstrap node was lost; it is redialled after `retry_in`.
    BootstrapLost {
        /// The node.
        peer: PeerId,
        /// Delay before the next attempt.
        retry_in: Duration,
    },
    /// A relay accepted our reservation: we are reachable through it.
    RelayReserved {
        /// The relay.
        relay: PeerId,
    },
    /// A relayed connection was upgraded to a direct one (DCUtR).
    HolePunched {
        /// The peer.
        peer: PeerId,
    },
    /// A hole punch failed; the relayed connection stays.
    HolePunchFailed {
        /// The peer.
        peer: PeerId,
        /// Why.
        error: String,
    },
    /// AutoNAT confirmed an external address of ours.
    ExternalAddress {
        /// The address.
        address: Multiaddr,
    },
    /// Our presence entry was stored in the DHT.
    PresencePublished {
        /// Its sequence number.
        seq: u64,
    },
    /// Publishing our presence failed; it is retried.
    PresenceFailed {
        /// Why.
        error: String,
    },
    /// This node stored a presence record or request drop for someone.
    RecordStored {
        /// Who sent it.
        from: PeerId,
    },
    /// This node refused a record; `reason` is a short label.
    RecordRefused {
        /// Who sent it.
        from: PeerId,
        /// Why (e.g. `bad_signature`, `expired`, `stale`, `key_in_use`).
        reason: &'static str,
    },
}

struct Lookup {
    share: PresenceShare,
    merged: Option<PresenceRecord>,
    records: usize,
    reply: Reply<Vec<Device>>,
}

struct BootstrapNode {
    addr: Multiaddr,
    backoff: Backoff,
    next_dial: Option<Instant>,
}

struct Publisher {
    keys: PresenceKeys,
    last_seq: u64,
    next: Option<Instant>,
    retry: Backoff,
    in_flight: Option<(kad::QueryId, u64, usize)>,
    waiters: Vec<Reply<Published>>,
    published_once: bool,
}

/// Owns the swarm; run it with [`EventLoop::run`]. It ends when every
/// [`crate::Client`] has been dropped.
pub struct EventLoop {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<Event>,
    dropped_events: u64,
    role: Role,
    has_configured_external: bool,
    /// Whether loopback and link-local addresses are announced (nodes) and
    /// published in presence (clients): only when asked to listen on one.
    announce_local: bool,
    timers: Timers,
    relay_reservation: RelayReservation,
    metrics: Option<NetMetrics>,
    publisher: Option<Publisher>,
    prekeys: Vec<u8>,
    max_drop_records: usize,
    requests: requests::Requests,
    mailbox_requests: requests::Requests,
    /// Peers mDNS found on the LAN and is still announcing, with their
    /// addresses and when to dial again if not connected (a failed dial is
    /// retried with backoff rather than waiting for the next announcement).
    lan_peers: HashMap<PeerId, LanPeer>,
    closest: HashMap<kad::QueryId, closest::Query>,
    drops: drops::Drops,
    lookups: HashMap<kad::QueryId, Lookup>,
    dials: HashMap<ConnectionId, (PeerId, Reply<Connection>)>,
    addr_dials: HashMap<ConnectionId, Reply<()>>,
    connections: HashMap<PeerId, HashMap<ConnectionId, bool>>,
    bootstrap: HashMap<PeerId, BootstrapNode>,
    bootstrapped: bool,
    next_kad_bootstrap: Option<Instant>,
    kad_bootstrap_backoff: Backoff,
    relays: HashMap<PeerId, ListenerId>,
    relay_capable: HashSet<PeerId>,
    relay_retry: Option<Instant>,
    /// Peers whose relayed connections close at the given time if a
    /// direct connection is still up and nothing is under way then
    /// ([`EventLoop::relays_superseded`]).
    relay_close: HashMap<PeerId, Instant>,
    relay_backoff: Backoff,
    pending_listeners: HashSet<ListenerId>,
    listeners: HashSet<ListenerId>,
    listen_waiters: Vec<Reply<Vec<Multiaddr>>>,
}

/// Most LAN peers kept for redialling.
const MAX_LAN_PEERS: usize = 256;

/// A peer found by mDNS.
struct LanPeer {
    addrs: Vec<Multiaddr>,
    next_dial: Option<Instant>,
    backoff: Backoff,
}

/// Unix seconds, from the same clock reading as wire timestamps.
pub(crate) fn unix_secs() -> u64 {
    Timestamp::now().0 / 1000
}

fn refusal_label(error: &PresenceError) -> &'static str {
    match error {
        PresenceError::TooLarge { .. } => "too_large",
        PresenceError::UnknownVersion { .. } => "unknown_version",
        PresenceError::Malformed(_) => "malformed",
        PresenceError::WrongKey | PresenceError::InvalidKey => "wrong_key",
        PresenceError::Entries { .. } => "entries",
        PresenceError::ContentsTooLarge { .. } => "too_large",
        PresenceError::BadSignature => "bad_signature",
        PresenceError::Expired { .. } => "expired",
        PresenceError::ExpiryTooFar { .. } => "expiry_too_far",
        PresenceError::Stale { .. } => "stale",
        _ => "invalid",
    }
}

/// The PeerId at the end of an address, if any.
pub(crate) fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    match addr.iter().last() {
        Some(Protocol::P2p(peer)) => Some(peer),
        _ => None,
    }
}

fn is_circuit(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| matches!(p, Protocol::P2pCircuit))
}

/// A loopback or link-local address: reachable from this machine or
/// link only, so useless to announce to the network. A listener on
/// `0.0.0.0` or `::` reports one such address per interface.
fn is_local(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_loopback() || ip.is_link_local(),
        Protocol::Ip6(ip) => ip.is_loopback() || ip.is_unicast_link_local(),
        _ => false,
    })
}

/// Whether a node with no configured external address announces the
/// listen address `addr`: every address of its listeners except loopback
/// and link-local ones, unless it was asked to listen on such an address
/// (a node on `127.0.0.1` for tests announces that).
fn announces(announce_local: bool, addr: &Multiaddr) -> bool {
    !is_circuit(addr) && (announce_local || !is_local(addr))
}

fn is_unspecified(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_unspecified(),
        Protocol::Ip6(ip) => ip.is_unspecified(),
        _ => false,
    })
}

impl EventLoop {
    pub(crate) fn new(
        swarm: Swarm<Behaviour>,
        config: Config,
        commands: mpsc::Receiver<Command>,
        events: mpsc::Sender<Event>,
        metrics: Option<NetMetrics>,
        pending_listeners: HashSet<ListenerId>,
    ) -> Self {
        let timers = config.timers.clone();
        let requests = requests::Requests::new(&config);
        let mailbox_requests = requests::Requests::new(&config);
        let timers_kad_bootstrap = timers.kad_bootstrap;
        let (reconnect_min, reconnect_max) = (timers.reconnect_min, timers.reconnect_max);
        let mut bootstrap = HashMap::new();
        for addr in &config.bootstrap {
            if let Some(peer) = peer_of(addr) {
                bootstrap.insert(
                    peer,
                    BootstrapNode {
                        addr: addr.clone(),
                        backoff: Backoff::new(timers.reconnect_min, timers.reconnect_max),
                        next_dial: Some(Instant::now()),
                    },
                );
            }
        }
        let publisher = config.presence.map(|keys| Publisher {
            keys,
            last_seq: 0,
            next: None,
            retry: Backoff::new(timers.reconnect_min, timers.reconnect_max),
            in_flight: None,
            waiters: Vec::new(),
            published_once: false,
        });
        Self {
            swarm,
            commands,
            events,
            dropped_events: 0,
            role: config.role,
            has_configured_external: !config.external.is_empty(),
            announce_local: config.listen.iter().any(is_local),
            relay_reservation: config.relay_reservation,
            timers,
            metrics,
            publisher,
            prekeys: config.prekeys,
            // Request drops may be twice the size of presence records: they
            // get a quarter of the store.
            max_drop_records: (config.max_records / 4).max(1),
            requests,
            mailbox_requests,
            lan_peers: HashMap::new(),
            closest: HashMap::new(),
            drops: drops::Drops::default(),
            lookups: HashMap::new(),
            dials: HashMap::new(),
            addr_dials: HashMap::new(),
            connections: HashMap::new(),
            bootstrap,
            bootstrapped: false,
            next_kad_bootstrap: None,
            kad_bootstrap_backoff: Backoff::new(Duration::from_secs(1), timers_kad_bootstrap),
            relays: HashMap::new(),
            relay_capable: HashSet::new(),
            relay_retry: None,
            relay_close: HashMap::new(),
            relay_backoff: Backoff::new(reconnect_min, reconnect_max),
            listeners: pending_listeners.clone(),
            pending_listeners,
            listen_waiters: Vec::new(),
        }
    }

    /// Runs until every client handle is dropped.
    pub async fn run(mut self) {
        loop {
            let deadline = self.next_deadline();
            tokio::select! {
                biased;
                command = self.commands.recv() => match command {
                    Some(command) => self.on_command(command),
                    None => break,
                },
                Some((id, response)) = self.requests.responses.next(),
                    if !self.requests.responses.is_empty() => {
                        self.on_response(Channel::Message, id, response)
                    }
                Some((id, response)) = self.mailbox_requests.responses.next(),
                    if !self.mailbox_requests.responses.is_empty() => {
                        self.on_response(Channel::Mailbox, id, response)
                    }
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                () = sleep_until(deadline) => self.on_timers(),
            }
        }
        // Close listeners explicitly: this frees ports at once (the memory
        // transport only ever releases a port this way).
        for listener in self.listeners.drain() {
            self.swarm.remove_listener(listener);
        }
        tracing::debug!(peer = %self.swarm.local_peer_id(), "network event loop stopped");
    }

    fn emit(&mut self, event: Event) {
        self.try_emit(event);
    }

    /// Sends an event; returns false when it was dropped because the
    /// consumer lags.
    fn try_emit(&mut self, event: Event) -> bool {
        if self.events.try_send(event).is_ok() {
            return true;
        }
        self.dropped_events += 1;
        if self.dropped_events.is_power_of_two() {
            tracing::warn!(
                dropped = self.dropped_events,
                "network events dropped: consumer lagging"
            );
        }
        false
    }

    fn next_deadline(&self) -> Option<Instant> {
        let bootstrap = self.bootstrap.values().filter_map(|b| b.next_dial);
        let publish = self.publisher.as_ref().and_then(|p| p.next);
        let lan = self.lan_peers.values().filter_map(|p| p.next_dial);
        bootstrap
            .chain(publish)
            .chain(lan)
            .chain(self.next_kad_bootstrap)
            .chain(self.relay_retry)
            .chain(self.relay_close.values().copied())
            .min()
    }

    fn on_timers(&mut self) {
        let now = Instant::now();
        let due: Vec<PeerId> = self
            .bootstrap
            .iter()
            .filter(|(_, b)| b.next_dial.is_some_and(|t| t <= now))
            .map(|(p, _)| *p)
            .collect();
        for peer in due {
            if let Some(node) = self.bootstrap.get_mut(&peer) {
                node.next_dial = None;
                let addr = node.addr.clone();
                if self.swarm.is_connected(&peer) {
                    continue;
                }
                tracing::debug!(%peer, %addr, "dialling bootstrap node");
                if let Err(e) = self.swarm.dial(addr) {
                    tracing::debug!(%peer, "bootstrap dial refused: {e}");
                    self.schedule_bootstrap_redial(peer);
                }
            }
        }
        if self
            .publisher
            .as_ref()
            .and_then(|p| p.next)
            .is_some_and(|t| t <= now)
        {
            self.publish();
        }
        if self.relay_retry.is_some_and(|t| t <= now) {
            self.relay_retry = None;
            self.retry_relays();
        }
        let closing: Vec<PeerId> = self
            .relay_close
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(peer, _)| *peer)
            .collect();
        for peer in closing {
            self.relays_superseded(peer);
        }
        self.redial_lan_peers(now);
        if self.next_kad_bootstrap.is_some_and(|t| t <= now) {
            self.next_kad_bootstrap = None;
            if self.swarm.behaviour_mut().kad.bootstrap().is_err() {
                self.schedule_kad_bootstrap();
            }
        }
    }

    fn routing_table_size(&mut self) -> usize {
        self.swarm
            .behaviour_mut()
            .kad
            .kbuckets()
            .map(|bucket| bucket.num_entries())
            .sum()
    }

    /// While the routing table is small (a new network, or a node that
    /// joined before its contacts knew anyone), bootstrap again after a
    /// growing delay rather than waiting for the periodic refresh.
    fn schedule_kad_bootstrap(&mut self) {
        if self.routing_table_size() < SMALL_ROUTING_TABLE && self.next_kad_bootstrap.is_none() {
            self.next_kad_bootstrap =
                Some(Instant::now() + self.kad_bootstrap_backoff.next_delay());
        }
    }

    fn schedule_bootstrap_redial(&mut self, peer: PeerId) {
        if let Some(node) = self.bootstrap.get_mut(&peer) {
            if node.next_dial.is_some() {
                return;
            }
            let delay = node.backoff.next_delay();
            node.next_dial = Some(Instant::now() + delay);
            self.emit(Event::BootstrapLost {
                peer,
                retry_in: delay,
            });
        }
    }

    fn schedule_publish_soon(&mut self) {
        let debounce = self.timers.presence_debounce;
        if let Some(p) = self.publisher.as_mut() {
            let soon = Instant::now() + debounce;
            p.next = Some(p.next.map_or(soon, |t| t.min(soon)));
        }
    }

    // ---- commands ----

    fn on_command(&mut self, command: Command) {
        match command {
            Command::ListenAddrs(reply) => {
                if self.pending_listeners.is_empty() {
                    let _ = reply.send(Ok(self.listen_addrs()));
                } else if self.listen_waiters.len() < MAX_LISTEN_WAITERS {
                    self.listen_waiters.push(reply);
                } else {
                    let _ = reply.send(Err(NetError::Busy("address requests")));
                }
            }
            Command::Dial { addr, reply } => self.dial_addr(addr, reply),
            Command::Publish(reply) => match self.publisher.as_mut() {
                None => {
                    let _ = reply.send(Err(NetError::NoPresence));
                }
                Some(p) if p.waiters.len() >= MAX_LISTEN_WAITERS => {
                    let _ = reply.send(Err(NetError::Busy("publications")));
                }
                Some(p) => {
                    p.waiters.push(reply);
                    if p.in_flight.is_none() {
                        self.publish();
                    }
                }
            },
            Command::Find { share, reply } => self.find(share, reply),
            Command::Connect {
                peer,
                addresses,
                reply,
            } => self.connect(peer, addresses, reply),
            Command::Connected(reply) => {
                let list = self
                    .connections
                    .iter()
                    .map(|(peer, conns)| Connection {
                        peer_id: *peer,
                        relayed: conns.values().all(|relayed| *relayed),
                    })
                    .collect();
                let _ = reply.send(Ok(list));
            }
            Command::RecordCount(reply) => {
                let count = self.swarm.behaviour_mut().kad.store_mut().records().count();
                let _ = reply.send(Ok(count));
            }
            Command::RoutingTable(reply) => {
                let peers = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .kbuckets()
                    .flat_map(|bucket| {
                        bucket
                            .iter()
                            .map(|entry| *entry.node.key.preimage())
                            .collect::<Vec<_>>()
                    })
                    .collect();
                let _ = reply.send(Ok(peers));
            }
            Command::Request {
                peer,
                addresses,
                data,
                reply,
            } => self.request(Channel::Message, peer, addresses, data, reply),
            Command::MailboxRequest {
                peer,
                addresses,
                data,
                reply,
            } => self.request(Channel::Mailbox, peer, addresses, data, reply),
            Command::Closest { key, reply } => self.closest_peers(key, reply),
            Command::SetPrekeys { prekeys, reply } => {
                if self.publisher.is_none() {
                    let _ = reply.send(Err(NetError::NoPresence));
                    return;
                }
                if prekeys != self.prekeys {
                    self.prekeys = prekeys;
                    self.schedule_publish_soon();
                }
                let _ = reply.send(Ok(()));
            }
            Command::DropRequest { key, entry, reply } => self.drop_request(key, entry, reply),
            Command::FetchRequests { key, reply } => self.fetch_requests(key, reply),
            Command::KeepConnected(peers) => {
                self.swarm.behaviour_mut().keep_alive.set_kept(peers);
            }
            Command::StoredValues(reply) => {
                let values = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .store_mut()
                    .records()
                    .map(|r| (r.key.to_vec(), r.value.clone()))
                    .collect();
                let _ = reply.send(Ok(values));
            }
        }
    }

    /// Answers callers of `listen_addrs` once no listener is still coming up.
    fn answer_listen_waiters(&mut self) {
        if self.pending_listeners.is_empty() && !self.listen_waiters.is_empty() {
            let addrs = self.listen_addrs();
            for waiter in self.listen_waiters.drain(..) {
                let _ = waiter.send(Ok(addrs.clone()));
            }
        }
    }

    fn listen_addrs(&self) -> Vec<Multiaddr> {
        let mut addrs: Vec<Multiaddr> = self.swarm.listeners().cloned().collect();
        for addr in self.swarm.external_addresses() {
            if !addrs.contains(addr) {
                addrs.push(addr.clone());
            }
        }
        addrs
    }

    fn dial_addr(&mut self, addr: Multiaddr, reply: Reply<()>) {
        if self.addr_dials.len() >= MAX_DIALS {
            let _ = reply.send(Err(NetError::Busy("dials")));
            return;
        }
        let opts = match peer_of(&addr) {
            Some(peer) => DialOpts::peer_id(peer)
                .addresses(vec![addr.clone()])
                .condition(PeerCondition::Always)
                .build(),
            None => DialOpts::unknown_peer_id().address(addr.clone()).build(),
        };
        let id = opts.connection_id();
        match self.swarm.dial(opts) {
            Ok(()) => {
                self.addr_dials.insert(id, reply);
            }
            Err(e) => {
                let _ = reply.send(Err(NetError::Dial {
                    peer: peer_of(&addr).unwrap_or(*self.swarm.local_peer_id()),
                    reason: e.to_string(),
                }));
            }
        }
    }

    fn connect(&mut self, peer: PeerId, addresses: Vec<Multiaddr>, reply: Reply<Connection>) {
        if let Some(conns) = self.connections.get(&peer) {
            let _ = reply.send(Ok(Connection {
                peer_id: peer,
                relayed: conns.values().all(|r| *r),
            }));
            return;
        }
        if self.dials.len() >= MAX_DIALS {
            let _ = reply.send(Err(NetError::Busy("dials")));
            return;
        }
        // Friends' addresses are not added to Kademlia: the routing table is
        // shared with anyone who asks, and these addresses are for friends
        // only. Identify adds peers that do serve the DHT.
        let opts = DialOpts::peer_id(peer)
            .addresses(addresses)
            .condition(PeerCondition::Always)
            .build();
        let id = opts.connection_id();
        match self.swarm.dial(opts) {
            Ok(()) => {
                self.dials.insert(id, (peer, reply));
            }
            Err(e) => {
                let _ = reply.send(Err(NetError::Dial {
                    peer,
                    reason: e.to_string(),
                }));
            }
        }
    }

    fn find(&mut self, share: PresenceShare, reply: Reply<Vec<Device>>) {
        if self.lookups.len() >= MAX_LOOKUPS {
            let _ = reply.send(Err(NetError::Busy("lookups")));
            return;
        }
        let key = kad::RecordKey::new(&share.record_key());
        let id = self.swarm.behaviour_mut().kad.get_record(key);
        self.lookups.insert(
            id,
            Lookup {
                share,
                merged: None,
                records: 0,
                reply,
            },
        );
    }

    // ---- presence publication ----

    fn presence_addresses(&self) -> Vec<Vec<u8>> {
        let external = self.swarm.external_addresses().filter(|a| !is_circuit(a));
        let circuits = self.swarm.listeners().filter(|a| is_circuit(a));
        let direct = self
            .swarm
            .listeners()
            .filter(|a| !is_unspecified(a) && announces(self.announce_local, a));
        let mut out: Vec<Vec<u8>> = Vec::new();
        for addr in external.chain(circuits).chain(direct) {
            let bytes = addr.to_vec();
            if bytes.len() <= MAX_ADDRESS_BYTES && !out.contains(&bytes) {
                out.push(bytes);
            }
            if out.len() == MAX_ADDRESSES {
                break;
            }
        }
        out
    }

    fn publish(&mut self) {
        let addresses = self.presence_addresses();
        let peer_id = self.swarm.local_peer_id().to_bytes();
        let prekeys = self.prekeys.clone();
        let ttl = self.timers.presence_ttl;
        let Some(p) = self.publisher.as_mut() else {
            return;
        };
        p.next = None;
        if let Some((old, _, _)) = p.in_flight.take()
            && let Some(mut query) = self.swarm.behaviour_mut().kad.query_mut(&old)
        {
            query.finish();
        }
        let Some(p) = self.publisher.as_mut() else {
            return;
        };
        let seq = Timestamp::now().0.max(p.last_seq + 1);
        let expires = unix_secs() + ttl.as_secs();
        let contents = PresenceContents {
            peer_id,
            addresses,
            prekeys,
        };
        let mut contents = contents;
        // Long relay-circuit addresses can overflow the sealed size limit:
        // drop the least preferred addresses until the entry fits.
        let entry = loop {
            match p.keys.entry(&contents, seq, expires) {
                Ok(entry) => break entry,
                Err(PresenceError::ContentsTooLarge { .. }) if !contents.addresses.is_empty() => {
                    contents.addresses.pop();
                }
                Err(e) => {
                    self.publish_failed(e.to_string());
                    return;
                }
            }
        };
        let count = contents.addresses.len();
        p.last_seq = seq;
        let record = p.keys.record(entry);
        let key = kad::RecordKey::new(&p.keys.share().record_key());
        let mut kad_record = kad::Record::new(key, record.encode());
        kad_record.expires = Some(std::time::Instant::now() + ttl);
        match self
            .swarm
            .behaviour_mut()
            .kad
            .put_record(kad_record, kad::Quorum::One)
        {
            Ok(id) => {
                if let Some(p) = self.publisher.as_mut() {
                    p.in_flight = Some((id, seq, count));
                }
            }
            Err(e) => self.publish_failed(e.to_string()),
        }
    }

    fn publish_failed(&mut self, error: String) {
        let Some(p) = self.publisher.as_mut() else {
            return;
        };
        p.in_flight = None;
        let delay = p.retry.next_delay();
        p.next = Some(Instant::now() + delay);
        let failure = NetError::Publish(error.clone());
        for waiter in p.waiters.drain(..) {
            let _ = waiter.send(Err(failure.clone()));
        }
        tracing::debug!("presence publication failed, retrying in {delay:?}: {error}");
        self.emit(Event::PresenceFailed { error });
    }

    fn publish_done(&mut self, seq: u64, addresses: usize) {
        let republish = self.timers.presence_republish;
        let Some(p) = self.publisher.as_mut() else {
            return;
        };
        p.in_flight = None;
        p.published_once = true;
        p.retry.reset();
        p.next = Some(p.next.map_or(Instant::now() + republish, |t| {
            t.min(Instant::now() + republish)
        }));
        for waiter in p.waiters.drain(..) {
            let _ = waiter.send(Ok(Published { seq, addresses }));
        }
        self.emit(Event::PresencePublished { seq });
    }

    // ---- swarm events ----

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        if let Some(m) = &self.metrics {
            m.record_swarm(&event);
        }
        match event {
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event),
            SwarmEvent::NewListenAddr {
                listener_id,
                address,
            } => {
                tracing::info!(%address, "listening");
                self.pending_listeners.remove(&listener_id);
                // A node with no configured external address announces what
                // it listens on; the relay server only serves once the node
                // has a confirmed external address.
                if self.role == Role::Node
                    && !self.has_configured_external
                    && announces(self.announce_local, &address)
                {
                    self.swarm.add_external_address(address.clone());
                }
                self.answer_listen_waiters();
                self.schedule_publish_soon();
                self.emit(Event::Listening { address });
            }
            SwarmEvent::ExpiredListenAddr { .. } => self.schedule_publish_soon(),
            SwarmEvent::ListenerClosed {
                listener_id,
                reason,
                ..
            } => {
                self.pending_listeners.remove(&listener_id);
                self.listeners.remove(&listener_id);
                self.answer_listen_waiters();
                if let Some(relay) = self
                    .relays
                    .iter()
                    .find(|(_, l)| **l == listener_id)
                    .map(|(p, _)| *p)
                {
                    tracing::debug!(%relay, ?reason, "relay listener closed");
                    self.relays.remove(&relay);
                    self.schedule_relay_retry();
                }
                self.schedule_publish_soon();
            }
            SwarmEvent::ExternalAddrConfirmed { address } => {
                if !is_circuit(&address) {
                    self.swarm
                        .behaviour_mut()
                        .kad
                        .set_mode(Some(kad::Mode::Server));
                    if self.relay_reservation == RelayReservation::Auto {
                        for (_, listener) in self.relays.drain() {
                            self.swarm.remove_listener(listener);
                        }
                    }
                }
                self.schedule_publish_soon();
                self.emit(Event::ExternalAddress { address });
            }
            SwarmEvent::ExternalAddrExpired { .. } => self.on_direct_address_lost(),
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                self.requests.dial_errors.remove(&peer_id);
                self.mailbox_requests.dial_errors.remove(&peer_id);
                self.on_connected(peer_id, connection_id, &endpoint);
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                cause,
                ..
            } => {
                if let Entry::Occupied(mut conns) = self.connections.entry(peer_id) {
                    conns.get_mut().remove(&connection_id);
                    if conns.get().is_empty() {
                        conns.remove();
                    }
                }
                if num_established == 0 {
                    self.relay_close.remove(&peer_id);
                    self.requests.forget_inbound(&peer_id);
                    self.mailbox_requests.forget_inbound(&peer_id);
                    self.relay_capable.remove(&peer_id);
                    if self.relays.contains_key(&peer_id) {
                        self.relays.remove(&peer_id);
                        self.schedule_publish_soon();
                    }
                    // Redial a bootstrap node we lost to an error; one that
                    // closed for being idle is dialled again when needed.
                    if self.bootstrap.contains_key(&peer_id)
                        && matches!(cause, Some(libp2p::swarm::ConnectionError::IO(_)))
                    {
                        self.schedule_bootstrap_redial(peer_id);
                    }
                    self.emit(Event::Disconnected { peer: peer_id });
                }
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                peer_id,
                error,
            } => {
                let reason = error.to_string();
                if let Some(peer) = peer_id {
                    self.requests.note_dial_error(peer, &reason);
                    self.mailbox_requests.note_dial_error(peer, &reason);
                }
                if let Some((peer, reply)) = self.dials.remove(&connection_id) {
                    let _ = reply.send(Err(NetError::Dial {
                        peer,
                        reason: reason.clone(),
                    }));
                }
                if let Some(reply) = self.addr_dials.remove(&connection_id) {
                    let _ = reply.send(Err(NetError::Dial {
                        peer: peer_id.unwrap_or(*self.swarm.local_peer_id()),
                        reason,
                    }));
                }
                if let Some(peer) = peer_id
                    && self.bootstrap.contains_key(&peer)
                    && !self.swarm.is_connected(&peer)
                {
                    self.schedule_bootstrap_redial(peer);
                }
            }
            _ => {}
        }
    }

    fn on_connected(&mut self, peer: PeerId, id: ConnectionId, endpoint: &ConnectedPoint) {
        let relayed = endpoint.is_relayed();
        self.connections
            .entry(peer)
            .or_default()
            .insert(id, relayed);
        if let Some((_, reply)) = self.dials.remove(&id) {
            let _ = reply.send(Ok(Connection {
                peer_id: peer,
                relayed,
            }));
        }
        if let Some(reply) = self.addr_dials.remove(&id) {
            let _ = reply.send(Ok(()));
        }
        if let Some(node) = self.bootstrap.get_mut(&peer) {
            node.backoff.reset();
            node.next_dial = None;
            let addr = node.addr.clone();
            let base: Multiaddr = addr
                .iter()
                .filter(|p| !matches!(p, Protocol::P2p(_)))
                .collect();
            self.swarm.behaviour_mut().kad.add_address(&peer, base);
            if !self.bootstrapped {
                self.bootstrapped = self.swarm.behaviour_mut().kad.bootstrap().is_ok();
            }
            // The first way into the DHT: publish now rather than wait for
            // the timer. Later connections (idle redials, AutoNAT dial-backs)
            // change nothing worth republishing.
            if self.publisher.as_ref().is_some_and(|p| !p.published_once) {
                self.schedule_publish_soon();
            }
        }
        if relayed {
            tracing::debug!(%peer, "connected through a relay circuit");
        } else if self
            .connections
            .get(&peer)
            .is_some_and(|conns| conns.values().any(|r| *r))
        {
            tracing::info!(%peer, "direct connection alongside a relayed one");
        }
        self.relays_superseded(peer);
        self.emit(Event::Connected { peer, relayed });
    }

    /// Whether our relayed connections to `peer` can go: a direct one is
    /// up beside them and no request to or from the peer is under way.
    fn relays_closable(&self, peer: &PeerId) -> bool {
        self.connections.get(peer).is_some_and(|conns| {
            conns.values().any(|relayed| !relayed) && conns.values().any(|relayed| *relayed)
        }) && !self.requests.busy_with(peer)
            && !self.mailbox_requests.busy_with(peer)
    }

    /// Closes our relayed connections to `peer` when a direct one is up
    /// beside them and no request to or from the peer is under way; called
    /// when a connection comes up, when a request ends, and on the timer.
    ///
    /// libp2p's request-response spreads requests over every connection to
    /// a peer, so a relayed connection left open after a hole punch (or
    /// beside any other direct connection) carries half of the chat
    /// through the relay, and when the relay stops forwarding without
    /// closing the circuit, half of the messages wait out the request
    /// timeout before they are retried. Waiting until nothing is in flight
    /// keeps the close from failing a request on its way. An answer we
    /// sent counts as sent once written, not once it arrived, so after
    /// answering the peer the close waits [`RELAY_CLOSE_GRACE`].
    pub(super) fn relays_superseded(&mut self, peer: PeerId) {
        self.relay_close.remove(&peer);
        if !self.relays_closable(&peer) {
            return;
        }
        let answered = [&self.requests, &self.mailbox_requests]
            .iter()
            .filter_map(|r| r.last_answer(&peer))
            .max();
        if let Some(at) = answered.map(|t| t + RELAY_CLOSE_GRACE)
            && at > Instant::now()
        {
            self.relay_close.insert(peer, at);
            return;
        }
        let Some(conns) = self.connections.get(&peer) else {
            return;
        };
        let relayed: Vec<ConnectionId> = conns
            .iter()
            .filter(|(_, relayed)| **relayed)
            .map(|(id, _)| *id)
            .collect();
        for id in relayed {
            if self.swarm.close_connection(id) {
                tracing::debug!(%peer, "closing the relayed connection: a direct one is up");
            }
        }
    }

    /// After a direct public address went away: back to Kademlia client
    /// mode if none is left, reserve relays again, republish.
    fn on_direct_address_lost(&mut self) {
        if self.role == Role::Client && !self.swarm.external_addresses().any(|a| !is_circuit(a)) {
            self.swarm
                .behaviour_mut()
                .kad
                .set_mode(Some(kad::Mode::Client));
            self.schedule_relay_retry();
        }
        self.schedule_publish_soon();
    }

    fn schedule_relay_retry(&mut self) {
        if self.relay_retry.is_none() && self.role == Role::Client {
            self.relay_retry = Some(Instant::now() + self.relay_backoff.next_delay());
        }
    }

    /// Tries a reservation on every connected relay-capable bootstrap node
    /// that has none.
    fn retry_relays(&mut self) {
        let relays: Vec<PeerId> = self
            .relay_capable
            .iter()
            .filter(|p| !self.relays.contains_key(p) && self.swarm.is_connected(p))
            .copied()
            .collect();
        for relay in relays {
            self.maybe_reserve_relay(relay);
        }
    }

    fn maybe_reserve_relay(&mut self, relay: PeerId) {
        let wanted = match self.relay_reservation {
            RelayReservation::Never => false,
            RelayReservation::Always => true,
            RelayReservation::Auto => !self.swarm.external_addresses().any(|a| !is_circuit(a)),
        };
        if self.role != Role::Client
            || !wanted
            || self.relays.contains_key(&relay)
            || !self.bootstrap.contains_key(&relay)
        {
            return;
        }
        let Some(node) = self.bootstrap.get(&relay) else {
            return;
        };
        let circuit = node.addr.clone().with(Protocol::P2pCircuit);
        match self.swarm.listen_on(circuit) {
            Ok(listener) => {
                self.relays.insert(relay, listener);
                self.listeners.insert(listener);
            }
            Err(e) => tracing::debug!(%relay, "could not listen through relay: {e}"),
        }
    }

    fn on_behaviour_event(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::Kad(event) => {
                if let Some(m) = &self.metrics {
                    m.record_kad(&event);
                }
                self.on_kad_event(event);
            }
            BehaviourEvent::Identify(event) => {
                if let Some(m) = &self.metrics {
                    m.record_identify(&event);
                }
                if let identify::Event::Received { peer_id, info, .. } = event {
                    if info.protocols.contains(&KAD_PROTOCOL) {
                        for addr in info.listen_addrs {
                            if !is_circuit(&addr) {
                                self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                            }
                        }
                    }
                    let hop = libp2p::StreamProtocol::new(RELAY_HOP);
                    if info.protocols.contains(&hop) {
                        self.relay_capable.insert(peer_id);
                        self.maybe_reserve_relay(peer_id);
                    }
                }
            }
            BehaviourEvent::Ping(event) => {
                if let Some(m) = &self.metrics {
                    m.record_ping(&event);
                }
                // libp2p leaves a connection whose peer stopped answering
                // open; a kept one would then never close, and a friend
                // who vanished (lid shut, network gone) would stay online.
                if let Err(ping::Failure::Timeout | ping::Failure::Other { .. }) = &event.result {
                    self.swarm.close_connection(event.connection);
                }
            }
            BehaviourEvent::Mdns(event) => match event {
                mdns::Event::Discovered(found) => {
                    let mut peers: HashMap<PeerId, Vec<Multiaddr>> = HashMap::new();
                    for (peer, addr) in found {
                        peers.entry(peer).or_default().push(addr);
                    }
                    for (peer, addrs) in peers {
                        self.remember_lan_peer(peer, addrs);
                        self.emit(Event::LanPeer { peer });
                    }
                }
                mdns::Event::Expired(gone) => {
                    for (peer, _) in gone {
                        self.lan_peers.remove(&peer);
                    }
                }
            },
            BehaviourEvent::RelayClient(event) => {
                if let relay::client::Event::ReservationReqAccepted { relay_peer_id, .. } = event {
                    tracing::info!(relay = %relay_peer_id, "relay reservation accepted");
                    self.relay_backoff.reset();
                    self.schedule_publish_soon();
                    self.emit(Event::RelayReserved {
                        relay: relay_peer_id,
                    });
                }
            }
            BehaviourEvent::RelayServer(event) => {
                if let Some(m) = &self.metrics {
                    m.record_relay(&event);
                }
                log_relay_server(&event);
            }
            BehaviourEvent::Dcutr(event) => {
                if let Some(m) = &self.metrics {
                    m.record_dcutr(&event);
                }
                match event.result {
                    Ok(_) => {
                        tracing::info!(peer = %event.remote_peer_id, "hole punch succeeded");
                        self.emit(Event::HolePunched {
                            peer: event.remote_peer_id,
                        })
                    }
                    Err(e) => {
                        tracing::info!(peer = %event.remote_peer_id, "hole punch failed: {e}");
                        self.emit(Event::HolePunchFailed {
                            peer: event.remote_peer_id,
                            error: e.to_string(),
                        })
                    }
                }
            }
            BehaviourEvent::AutonatClient(event) => {
                // AutoNAT v2 only ever confirms; when a probe of a confirmed
                // address fails (the laptop moved behind NAT), take it back.
                if event.result.is_err()
                    && self
                        .swarm
                        .external_addresses()
                        .any(|a| *a == event.tested_addr)
                {
                    tracing::info!(address = %event.tested_addr, "public address no longer reachable");
                    self.swarm.remove_external_address(&event.tested_addr);
                    self.on_direct_address_lost();
                }
            }
            BehaviourEvent::Messages(event) => self.on_request_event(Channel::Message, event),
            BehaviourEvent::Mailbox(event) => self.on_request_event(Channel::Mailbox, event),
            BehaviourEvent::KeepAlive(never) => match never {},
            BehaviourEvent::AutonatServer(_) | BehaviourEvent::Limits(_) => {}
        }
    }

    /// Dials a peer mDNS found unless connected, and keeps it to retry.
    fn remember_lan_peer(&mut self, peer: PeerId, addrs: Vec<Multiaddr>) {
        if !self.lan_peers.contains_key(&peer) && self.lan_peers.len() >= MAX_LAN_PEERS {
            return;
        }
        let timers = &self.timers;
        let entry = self.lan_peers.entry(peer).or_insert_with(|| LanPeer {
            addrs: Vec::new(),
            next_dial: None,
            backoff: Backoff::new(timers.reconnect_min, timers.reconnect_max),
        });
        entry.addrs = addrs;
        entry.backoff.reset();
        entry.next_dial = Some(Instant::now());
        self.redial_lan_peers(Instant::now());
    }

    fn redial_lan_peers(&mut self, now: Instant) {
        let due: Vec<PeerId> = self
            .lan_peers
            .iter()
            .filter(|(_, p)| p.next_dial.is_some_and(|t| t <= now))
            .map(|(peer, _)| *peer)
            .collect();
        for peer in due {
            let connected = self.swarm.is_connected(&peer);
            let Some(entry) = self.lan_peers.get_mut(&peer) else {
                continue;
            };
            if connected {
                entry.next_dial = None;
                continue;
            }
            entry.next_dial = Some(now + entry.backoff.next_delay());
            let opts = DialOpts::peer_id(peer)
                .addresses(entry.addrs.clone())
                .condition(PeerCondition::DisconnectedAndNotDialing)
                .build();
            let _ = self.swarm.dial(opts);
        }
    }

    fn on_kad_event(&mut self, event: kad::Event) {
        match event {
            kad::Event::InboundRequest {
                request:
                    kad::InboundRequest::PutRecord {
                        source,
                        record: Some(record),
                        ..
                    },
            } => self.on_inbound_put(source, record),
            kad::Event::OutboundQueryProgressed {
                id, result, step, ..
            } => match result {
                kad::QueryResult::GetRecord(result) if self.drops.is_ours(&id) => {
                    self.on_drop_get_record(id, result, step.last)
                }
                kad::QueryResult::GetRecord(result) => self.on_get_record(id, result, step.last),
                kad::QueryResult::PutRecord(result) if self.drops.is_ours(&id) => {
                    self.on_drop_put_record(id, result)
                }
                kad::QueryResult::PutRecord(result) => {
                    let ours = self
                        .publisher
                        .as_ref()
                        .and_then(|p| p.in_flight)
                        .filter(|(q, _, _)| *q == id);
                    if let Some((_, seq, count)) = ours {
                        match result {
                            Ok(_) => self.publish_done(seq, count),
                            Err(e) => self.publish_failed(e.to_string()),
                        }
                    }
                }
                kad::QueryResult::GetClosestPeers(result) => self.on_closest(id, result),
                kad::QueryResult::Bootstrap(result) => {
                    if let Err(e) = result {
                        tracing::debug!("kademlia bootstrap: {e}");
                    }
                    if step.last {
                        self.schedule_kad_bootstrap();
                    }
                }
                _ => {}
            },
            _ => {}
        }
    }

    fn on_inbound_put(&mut self, source: PeerId, record: kad::Record) {
        if request_drop::is_drop_record(&record.value) {
            self.on_inbound_drop(source, record);
            return;
        }
        let now = unix_secs();
        let verified = PresenceRecord::verify(record.key.as_ref(), &record.value, now);
        let result = verified.and_then(|incoming| {
            let store = self.swarm.behaviour_mut().kad.store_mut();
            let stored = store
                .get(&record.key)
                .and_then(|r| PresenceRecord::decode(&r.value).ok());
            PresenceRecord::merge(stored.as_ref(), incoming, now)
        });
        match result {
            Ok(merged) => {
                let lifetime = merged.latest_expiry().map_or(0, |e| e.saturating_sub(now));
                let mut stored = kad::Record::new(record.key, merged.encode());
                stored.expires = Some(std::time::Instant::now() + Duration::from_secs(lifetime));
                match self.store_record(stored) {
                    Ok(()) => {
                        if let Some(m) = &self.metrics {
                            m.record_stored();
                        }
                        self.emit(Event::RecordStored { from: source });
                    }
                    Err(e) => {
                        tracing::debug!(%source, "record store full: {e}");
                        self.refused(source, "store_full");
                    }
                }
            }
            // Kademlia's replication re-sends what we hold: not a refusal.
            Err(PresenceError::Duplicate) => {}
            Err(e) => {
                tracing::debug!(%source, "refused presence record: {e}");
                self.refused(source, refusal_label(&e));
            }
        }
    }

    /// Stores a record for others. When the store is full it first
    /// removes the expired records: Kademlia removes them only at its next
    /// replication pass ([`Timers::kad_replication`], 6 h) or when their
    /// key is looked up, and until then they held their places.
    fn store_record(&mut self, record: kad::Record) -> Result<(), kad::store::Error> {
        let store = self.swarm.behaviour_mut().kad.store_mut();
        match store.put(record.clone()) {
            Err(kad::store::Error::MaxRecords) if self.remove_expired_records() > 0 => {
                self.swarm.behaviour_mut().kad.store_mut().put(record)
            }
            result => result,
        }
    }

    /// Removes every expired record from the store; returns how many.
    fn remove_expired_records(&mut self) -> usize {
        let now = std::time::Instant::now();
        let store = self.swarm.behaviour_mut().kad.store_mut();
        let expired: Vec<kad::RecordKey> = store
            .records()
            .filter(|r| r.is_expired(now))
            .map(|r| r.key.clone())
            .collect();
        for key in &expired {
            store.remove(key);
        }
        expired.len()
    }

    fn refused(&mut self, from: PeerId, reason: &'static str) {
        if let Some(m) = &self.metrics {
            m.record_refused(reason);
        }
        self.emit(Event::RecordRefused { from, reason });
    }

    fn on_get_record(
        &mut self,
        id: kad::QueryId,
        result: Result<kad::GetRecordOk, kad::GetRecordError>,
        last: bool,
    ) {
        let Some(lookup) = self.lookups.get_mut(&id) else {
            return;
        };
        let now = unix_secs();
        if let Ok(kad::GetRecordOk::FoundRecord(found)) = &result {
            match PresenceRecord::verify(found.record.key.as_ref(), &found.record.value, now) {
                Ok(record) if record.presence_key == lookup.share.public => {
                    lookup.records += 1;
                    let merged = match lookup.merged.take() {
                        None => record,
                        // A record with nothing newer leaves what we hold.
                        Some(held) => {
                            PresenceRecord::merge(Some(&held), record, now).unwrap_or(held)
                        }
                    };
                    lookup.merged = Some(merged);
                }
                Ok(_) => tracing::debug!("lookup returned a record for another key"),
                Err(e) => {
                    tracing::debug!(peer = ?found.peer, "lookup returned an invalid record: {e}")
                }
            }
        }
        let enough = lookup.records >= LOOKUP_RECORDS;
        if !(enough || last) {
            return;
        }
        let Some(lookup) = self.lookups.remove(&id) else {
            return;
        };
        if enough && let Some(mut query) = self.swarm.behaviour_mut().kad.query_mut(&id) {
            query.finish();
        }
        let answer = match lookup.merged {
            Some(record) => match lookup.share.open(&record, now) {
                Ok(entries) if !entries.is_empty() => Ok(entries
                    .into_iter()
                    .filter_map(|entry| {
                        let peer_id = PeerId::from_bytes(&entry.contents.peer_id).ok()?;
                        let addresses = entry
                            .contents
                            .addresses
                            .iter()
                            .filter_map(|a| Multiaddr::try_from(a.clone()).ok())
                            .collect();
                        Some(Device {
                            peer_id,
                            addresses,
                            seq: entry.seq,
                            expires: entry.expires,
                            prekeys: entry.contents.prekeys,
                        })
                    })
                    .collect()),
                Ok(_) => Err(NetError::NotFound),
                Err(e) => Err(NetError::Lookup(e.to_string())),
            },
            None => match result {
                // The peers listed are those that answered.
                Err(kad::GetRecordError::NotFound { closest_peers, .. })
                    if closest_peers.is_empty() =>
                {
                    Err(NetError::NoPeers)
                }
                Err(kad::GetRecordError::NotFound { .. }) | Ok(_) => Err(NetError::NotFound),
                Err(e) => Err(NetError::Lookup(e.to_string())),
            },
        };
        let _ = lookup.reply.send(answer);
    }
}

/// Circuits a relay server opens, refuses and closes, at debug under the
/// target `kith_net::relay` (`KITHD_LOG=info,kith_net::relay=debug`): one
/// line each, with both peers, so the time a relayed connection started
/// and ended can be read off the node's log (`scripts/nat-test` does).
fn log_relay_server(event: &relay::Event) {
    match event {
        relay::Event::CircuitReqAccepted {
            src_peer_id,
            dst_peer_id,
        } => tracing::debug!(
            target: "kith_net::relay",
            src = %src_peer_id,
            dst = %dst_peer_id,
            "relay circuit opened"
        ),
        relay::Event::CircuitReqDenied {
            src_peer_id,
            dst_peer_id,
            status,
        } => tracing::debug!(
            target: "kith_net::relay",
            src = %src_peer_id,
            dst = %dst_peer_id,
            ?status,
            "relay circuit refused"
        ),
        relay::Event::CircuitClosed {
            src_peer_id,
            dst_peer_id,
            error,
        } => tracing::debug!(
            target: "kith_net::relay",
            src = %src_peer_id,
            dst = %dst_peer_id,
            error = ?error.as_ref().map(ToString::to_string),
            "relay circuit closed"
        ),
        _ => {}
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> Multiaddr {
        text.parse().expect("valid multiaddr")
    }

    #[test]
    fn a_node_listening_everywhere_announces_neither_loopback_nor_link_local() {
        let listen = [
            addr("/ip4/0.0.0.0/tcp/4747"),
            addr("/ip6/::/udp/4747/quic-v1"),
        ];
        let local = listen.iter().any(is_local);
        assert!(!local);
        for a in [
            "/ip4/127.0.0.1/tcp/4747",
            "/ip4/169.254.3.4/tcp/4747",
            "/ip6/::1/udp/4747/quic-v1",
            "/ip6/fe80::1/udp/4747/quic-v1",
        ] {
            assert!(!announces(local, &addr(a)), "{a} announced");
        }
        for a in [
            "/ip4/203.0.113.7/tcp/4747",
            "/ip4/10.77.0.1/tcp/4747",
            "/ip6/2001:db8::7/udp/4747/quic-v1",
        ] {
            assert!(announces(local, &addr(a)), "{a} not announced");
        }
    }

    #[test]
    fn a_node_asked_to_listen_on_loopback_announces_it() {
        let local = [addr("/ip4/127.0.0.1/tcp/0")].iter().any(is_local);
        assert!(announces(local, &addr("/ip4/127.0.0.1/tcp/41234")));
        let circuit = addr(
            "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWDqjomZbXtZ8SWutouVmEpR6csVzK9Tf36EW6rE5ecxo6/p2p-circuit",
        );
        assert!(!announces(local, &circuit));
    }
}
