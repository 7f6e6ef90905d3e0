//! Settings for one network node, with every timer and limit explicit.

use std::time::Duration;

use kith_proto::DeviceKeypair;
use kith_proto::presence::PresenceKeys;
use libp2p::Multiaddr;

/// What part a node plays in the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A desktop client: Kademlia client mode until AutoNAT confirms a
    /// public address, relay client with DCUtR, AutoNAT client.
    Client,
    /// `kithd`: Kademlia server, relay server, AutoNAT server; stores and
    /// validates other nodes' presence records.
    Node,
}

/// Which transports to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    /// TCP (Noise + Yamux) and QUIC, plus relay circuits for clients.
    Network,
    /// libp2p's in-process memory transport (Noise + Yamux), for running
    /// many nodes in one test or benchmark process. Addresses are
    /// `/memory/N`.
    Memory,
}

/// When a client reserves a relay circuit on a bootstrap node that offers
/// one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayReservation {
    /// While no public address of our own has been confirmed by AutoNAT.
    Auto,
    /// Always (useful behind NAT, and for tests of relayed paths).
    Always,
    /// Never.
    Never,
}

/// Limits for the relay server on `kithd`.
///
/// libp2p's defaults (2 minutes or 128 KiB per circuit, 16 circuits) suit a
/// DCUtR handshake but cut off two friends behind symmetric NAT who must chat
/// through the relay; these defaults let such a chat live while
/// `max_circuits_per_peer` keeps one peer from taking every slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayLimits {
    /// Reservations held at once.
    pub max_reservations: usize,
    /// Reservations per peer, each on a connection of its own (so also
    /// bounded by [`ConnectionLimits::max_established_per_peer`]); at
    /// least one, 0 is taken as 1.
    pub max_reservations_per_peer: usize,
    /// How long a reservation lasts: 1 h. Clients renew after three
    /// quarters of it (libp2p's relay client), one request and answer
    /// every 45 min; the reservation keeps the client's connection to the
    /// node open, which is what [`Timers::ping_interval`] then pings.
    pub reservation_duration: Duration,
    /// Circuits relayed at once.
    pub max_circuits: usize,
    /// Circuits per peer, as source or destination; at least one, 0 is
    /// taken as 1. libp2p checks it only for the peer opening a circuit,
    /// so many peers together can open up to [`Self::max_circuits`] to
    /// one destination.
    pub max_circuits_per_peer: usize,
    /// How long one circuit may live; clients re-open it transparently.
    pub max_circuit_duration: Duration,
    /// Bytes one circuit may carry, both directions counted together
    /// (libp2p's relay adds them up); the circuit is cut once past it.
    pub max_circuit_bytes: u64,
}

impl Default for RelayLimits {
    fn default() -> Self {
        Self {
            max_reservations: 1024,
            max_reservations_per_peer: 4,
            reservation_duration: Duration::from_secs(3600),
            max_circuits: 512,
            max_circuits_per_peer: 8,
            max_circuit_duration: Duration::from_secs(3600),
            max_circuit_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Every periodic timer the node runs, and the waits that bound its
/// requests.
///
/// An idle node's traffic is the sum of what these send. The defaults
/// were chosen against `kith-bench idle` (issue 9; figures and the reading
/// in `BENCHMARKS.md`, one row per timer in `docs/network.md`): together
/// they cost a publicly reachable client about 5 KB a minute, a client
/// behind NAT far less; most of an idle client's traffic is the engine's
/// own polling of its request drop and mailbox. The relay
/// reservation's lifetime is set on the serving node, in
/// [`RelayLimits::reservation_duration`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timers {
    /// Lifetime of a published presence entry: 2 h, twice the republish
    /// interval, so one missed republication does not make a device
    /// unreachable, while a device that vanished stops being listed within
    /// two hours. Costs no traffic of its own.
    pub presence_ttl: Duration,
    /// Republish interval of our own presence entry: 1 h. Each
    /// republication is one closest-peers query and a put to the (up to
    /// 20) closest DHT nodes, about 63 KB in `kith-bench idle`, 1 KB a
    /// minute. Address changes republish at once (after
    /// [`Self::presence_debounce`]), so this only refreshes the TTL, and it
    /// must stay well under [`Self::presence_ttl`].
    pub presence_republish: Duration,
    /// Wait after an address change before republishing: 250 ms, so a
    /// burst of changes (a relay reservation and an AutoNAT confirmation
    /// together, say) costs one publication.
    pub presence_debounce: Duration,
    /// Kademlia routing-table refresh (and Identify's re-send interval):
    /// 2 h. A refresh walks the routing table's buckets and re-sends
    /// Identify on every open connection; `kith-bench idle` measured one
    /// round at about 300 KB per publicly reachable client (the 30 min
    /// used before: 10 KB a minute, more than the whole idle budget). The
    /// table also learns from every query the node makes (presence, request
    /// drops, mailboxes), so a slow refresh loses little. While the table
    /// holds fewer than 10 peers the bootstrap is retried sooner, 1 s
    /// doubling up to this interval.
    pub kad_bootstrap: Duration,
    /// How often a DHT server re-sends every record it stores to the
    /// closest peers: 6 h. Records are kept fresh by their owners —
    /// presence every [`Self::presence_republish`], request drops by their
    /// sender before they expire — so replication only carries the records
    /// of owners who are away; one round cost about 480 KB per publicly
    /// reachable client in `kith-bench idle` (8 KB a minute at the 1 h used
    /// before). `kith-bench dht` found every entry with a fifth of the
    /// nodes gone and no replication at all. Clients in Kademlia client
    /// mode store nothing and send nothing for it.
    pub kad_replication: Duration,
    /// Longest a Kademlia query (lookup, put, closest peers) runs: 20 s.
    /// Costs no idle traffic; bounds how long a lookup through unreachable
    /// peers waits.
    pub kad_query_timeout: Duration,
    /// Keep-alive ping on each open connection: 3 min. Both ends ping, so
    /// a connection carries two 32-byte round trips every 3 min, about 250
    /// bytes of payload. A client behind NAT keeps one connection open, to
    /// the node holding its relay reservation, and the pings keep that
    /// connection's NAT mapping alive: 3 min is under the shortest idle
    /// timeouts for TCP in common use (4 min on Azure's NAT and load
    /// balancers, 350 s on AWS NAT gateways). A publicly reachable client also keeps open the connections
    /// its periodic DHT queries reuse, and pays for every one of them
    /// (the 60 s used before cost about 4.3 KB a minute for 18 such
    /// connections). Pings do not keep a connection open, and a failed
    /// ping does not close one.
    pub ping_interval: Duration,
    /// Connections with no open streams close after this: 120 s. Long
    /// enough that friends chatting keep one connection between messages,
    /// short enough that peers met in a lookup cost nothing for long.
    pub idle_connection_timeout: Duration,
    /// First redial delay after losing every bootstrap node, and the first
    /// retry of a failed publication: 1 s, doubling (jittered).
    pub reconnect_min: Duration,
    /// Longest redial or retry delay: 5 min. Only a node that lost its
    /// contacts waits this long; nothing is sent while connected.
    pub reconnect_max: Duration,
    /// AutoNAT check: 60 s. Each check asks a server to dial back only the
    /// address candidates not tested yet, so with stable addresses it
    /// sends nothing; a new address is tested within a minute.
    pub autonat_probe: Duration,
    /// Longest wait for the answer to a direct request, and longest we
    /// keep an inbound request open for the application: 30 s. No idle
    /// traffic.
    pub request_timeout: Duration,
}

impl Default for Timers {
    fn default() -> Self {
        Self {
            presence_ttl: Duration::from_secs(2 * 3600),
            presence_republish: Duration::from_secs(3600),
            presence_debounce: Duration::from_millis(250),
            kad_bootstrap: Duration::from_secs(2 * 3600),
            kad_replication: Duration::from_secs(6 * 3600),
            kad_query_timeout: Duration::from_secs(20),
            ping_interval: Duration::from_secs(180),
            idle_connection_timeout: Duration::from_secs(120),
            reconnect_min: Duration::from_secs(1),
            reconnect_max: Duration::from_secs(300),
            autonat_probe: Duration::from_secs(60),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// Connection limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Established connections in total.
    pub max_established: u32,
    /// Established connections with one peer.
    pub max_established_per_peer: u32,
    /// Connections being set up, in each direction.
    pub max_pending: u32,
    /// Inbound connections being set up from one IP address (IPv6: one
    /// /64), so that one host cannot hold every pending slot; relayed
    /// connections are not counted. There is no per-address limit on
    /// established connections: carrier-grade NAT puts many users behind
    /// one address.
    pub max_pending_per_ip: u32,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_established: 512,
            max_established_per_peer: 4,
            max_pending: 64,
            max_pending_per_ip: 8,
        }
    }
}

/// Everything [`crate::new`] needs.
pub struct Config {
    /// This device's key (its PeerId).
    pub keypair: DeviceKeypair,
    /// Client or node.
    pub role: Role,
    /// Real network or in-process memory.
    pub transport: TransportKind,
    /// Addresses to listen on (port 0 picks a free port).
    pub listen: Vec<Multiaddr>,
    /// Addresses others can reach us at, announced as confirmed (for
    /// nodes with a known public address).
    pub external: Vec<Multiaddr>,
    /// Bootstrap nodes, each ending in `/p2p/<peer id>`.
    pub bootstrap: Vec<Multiaddr>,
    /// Discover peers on the LAN with mDNS.
    pub mdns: bool,
    /// The account's presence keys, for a client that publishes where it
    /// can be reached; `None` publishes nothing.
    pub presence: Option<PresenceKeys>,
    /// Session prekeys published in our presence entry (at most
    /// [`kith_proto::presence::MAX_PREKEY_BYTES`]); replace them later with
    /// [`crate::Client::set_prekeys`].
    pub prekeys: Vec<u8>,
    /// When to reserve a relay circuit (clients).
    pub relay_reservation: RelayReservation,
    /// Relay server limits (nodes).
    pub relay_limits: RelayLimits,
    /// Timers.
    pub timers: Timers,
    /// Connection limits.
    pub limits: ConnectionLimits,
    /// Most DHT records this node stores for others: 16,384 on nodes,
    /// 1,024 on clients, which serve the DHT only when publicly reachable.
    /// Presence records are at most 16 KiB; request drops at most 32 KiB
    /// and a quarter of this number.
    pub max_records: usize,
    /// Capacity of the command and event queues.
    pub queue_capacity: usize,
    /// Inbound direct requests waiting for the application's answer; more
    /// are refused (the sender gets an error and retries).
    pub max_inbound_requests: usize,
    /// Outbound direct requests in flight or queued; more are refused with
    /// [`crate::NetError::Busy`].
    pub max_outbound_requests: usize,
    /// Whether this node serves offline mail (`/kith/mailbox/1.0.0`): its
    /// inbound mailbox requests arrive as [`crate::Event::MailboxRequest`].
    /// Off, the protocol is used only outbound (deposits and fetches) and
    /// peers asking us to keep mail learn at once that we do not. On by
    /// default for nodes, off for clients.
    pub mailbox_volunteer: bool,
}

impl Config {
    /// A configuration with defaults for `role`, listening nowhere yet.
    pub fn new(keypair: DeviceKeypair, role: Role) -> Self {
        Self {
            keypair,
            role,
            transport: TransportKind::Network,
            listen: Vec::new(),
            external: Vec::new(),
            bootstrap: Vec::new(),
            mdns: false,
            presence: None,
            prekeys: Vec::new(),
            relay_reservation: RelayReservation::Auto,
            relay_limits: RelayLimits::default(),
            timers: Timers::default(),
            limits: ConnectionLimits::default(),
            max_records: match role {
                Role::Node => 16_384,
                Role::Client => 1_024,
            },
            queue_capacity: 256,
            max_inbound_requests: 1024,
            max_outbound_requests: 1024,
            mailbox_volunteer: role == Role::Node,
        }
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("peer_id", &self.keypair.peer_id())
            .field("role", &self.role)
            .field("transport", &self.transport)
            .field("listen", &self.listen)
            .field("external", &self.external)
            .field("bootstrap", &self.bootstrap)
            .field("mdns", &self.mdns)
            .field("presence", &self.presence.is_some())
            .field("prekeys", &self.prekeys.len())
            .field("relay_reservation", &self.relay_reservation)
            .field("relay_limits", &self.relay_limits)
            .field("timers", &self.timers)
            .field("limits", &self.limits)
            .field("max_records", &self.max_records)
            .field("queue_capacity", &self.queue_capacity)
            .field("max_inbound_requests", &self.max_inbound_requests)
            .field("max_outbound_requests", &self.max_outbound_requests)
            .finish_non_exhaustive()
    }
}
