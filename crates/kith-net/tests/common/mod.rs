//! Helpers for in-process networks over libp2p's memory transport.

#![allow(dead_code)]

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use kith_net::{
    Client, Config, Event, InboundRequest, KAD_PROTOCOL, Multiaddr, PeerId, Role, TransportKind,
};
use kith_proto::presence::{PresenceKeys, PresenceShare};
use kith_proto::{AccountKeypair, DeviceKeypair, KithId, Nospam};
use libp2p::core::transport::MemoryTransport;
use libp2p::core::upgrade::Version;
use libp2p::identity::Keypair;
use libp2p::kad::{self, store::MemoryStore};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Swarm, SwarmBuilder, Transport, noise, yamux};
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// One running node or client.
pub struct Peer {
    pub client: Client,
    pub events: mpsc::Receiver<Event>,
    pub task: JoinHandle<()>,
    pub addr: Multiaddr,
    pub account: Option<AccountKeypair>,
}

impl Peer {
    pub fn peer_id(&self) -> PeerId {
        self.client.peer_id()
    }

    /// The address to reach it at, ending in `/p2p/<peer id>`.
    pub fn p2p_addr(&self) -> Multiaddr {
        self.addr
            .clone()
            .with(libp2p::multiaddr::Protocol::P2p(self.peer_id()))
    }

    pub fn share(&self) -> PresenceShare {
        PresenceKeys::derive(self.account.as_ref().expect("a client")).share()
    }

    pub fn kith_id(&self) -> KithId {
        KithId::new(
            self.account.as_ref().expect("a client").public(),
            Nospam([1, 2, 3, 4]),
        )
    }

    /// Stops the node as a user quitting would: drops its handle, so the
    /// event loop closes its listeners and connections and ends.
    pub async fn stop(self) {
        drop(self.client);
        within(Duration::from_secs(10), self.task)
            .await
            .expect("event loop ends cleanly");
    }

    /// Diverts this peer's inbound requests to the returned queue; every
    /// other event still reaches [`Peer::wait_event`].
    pub fn take_requests(&mut self) -> mpsc::Receiver<InboundRequest> {
        let (others_tx, others) = mpsc::channel(1024);
        let (requests_tx, requests) = mpsc::channel(1024);
        let mut events = std::mem::replace(&mut self.events, others);
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                match event {
                    Event::Request(request) => {
                        let _ = requests_tx.try_send(request);
                    }
                    other => {
                        let _ = others_tx.try_send(other);
                    }
                }
            }
        });
        requests
    }

    /// Answers every inbound request with what `answer` returns for its
    /// payload, or drops it unanswered when that is `None`.
    pub fn answer_requests(&mut self, answer: impl Fn(&[u8]) -> Option<Vec<u8>> + Send + 'static) {
        let mut requests = self.take_requests();
        tokio::spawn(async move {
            while let Some(request) = requests.recv().await {
                if let Some(response) = answer(&request.data) {
                    request.respond(response);
                }
            }
        });
    }

    /// Waits for the first event `pick` accepts.
    pub async fn wait_event<T>(&mut self, mut pick: impl FnMut(&Event) -> Option<T>) -> T {
        within(Duration::from_secs(30), async {
            loop {
                let event = self.events.recv().await.expect("event stream open");
                if let Some(found) = pick(&event) {
                    return found;
                }
            }
        })
        .await
    }
}

pub fn memory_config(role: Role, bootstrap: Vec<Multiaddr>) -> (Config, Option<AccountKeypair>) {
    let mut config = Config::new(DeviceKeypair::generate(), role);
    config.transport = TransportKind::Memory;
    config.listen = vec!["/memory/0".parse().expect("valid")];
    config.bootstrap = bootstrap;
    config.timers.kad_query_timeout = Duration::from_secs(10);
    let account = (role == Role::Client).then(AccountKeypair::generate);
    config.presence = account.as_ref().map(PresenceKeys::derive);
    (config, account)
}

pub async fn start(config: Config, account: Option<AccountKeypair>) -> Peer {
    start_inner(config, account, None).await
}

/// A node's Prometheus registry, read while the node runs.
#[derive(Clone)]
pub struct Metrics(Arc<Mutex<Registry>>);

impl Metrics {
    /// The sum of every sample of the metric `name` (as encoded, e.g.
    /// `kith_request_drops_refused_total`) whose labels contain `label`
    /// (e.g. `reason="store_full"`; empty for any).
    pub fn sum(&self, name: &str, label: &str) -> f64 {
        let mut text = String::new();
        let registry = self.0.lock().expect("registry");
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| l.split(['{', ' ']).next() == Some(name) && l.contains(label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Waits up to 15 s until `check` holds for these metrics.
    pub async fn wait(&self, what: &str, check: impl Fn(&Metrics) -> bool) {
        eventually(Duration::from_secs(15), what, || {
            std::future::ready(check(self))
        })
        .await;
    }

    /// How many relay events of `kind` (`ReservationReqAccepted`,
    /// `CircuitReqDenied`, `CircuitClosed`, …) the node counted.
    pub fn relay_events(&self, kind: &str) -> f64 {
        self.sum("libp2p_relay_events_total", &format!("event=\"{kind}\""))
    }
}

/// Like [`start`], with libp2p's and Kith's metrics registered in a
/// registry the test can read.
pub async fn start_with_metrics(
    config: Config,
    account: Option<AccountKeypair>,
) -> (Peer, Metrics) {
    let mut registry = Registry::default();
    let peer = start_inner(config, account, Some(&mut registry)).await;
    (peer, Metrics(Arc::new(Mutex::new(registry))))
}

async fn start_inner(
    config: Config,
    account: Option<AccountKeypair>,
    registry: Option<&mut Registry>,
) -> Peer {
    let (client, mut stream, event_loop) = kith_net::new(config, registry).expect("node starts");
    let task = tokio::spawn(event_loop.run());
    // Forward the stream into a queue the test can read with a timeout.
    let (tx, events) = mpsc::channel(1024);
    tokio::spawn(async move {
        while let Some(event) = stream.next().await {
            let _ = tx.try_send(event);
        }
    });
    let addr = client
        .listen_addrs()
        .await
        .expect("listening")
        .into_iter()
        .next()
        .expect("one address");
    Peer {
        client,
        events,
        task,
        addr,
        account,
    }
}

/// Runs `future`, failing the test if it takes longer than `limit`.
pub async fn within<T>(limit: Duration, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, future)
        .await
        .expect("timed out")
}

/// Polls `check` every 50 ms until it returns true, for at most `limit`.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts `nodes` DHT nodes, the first being everyone's bootstrap, and
/// waits until each knows at least `min(nodes - 1, 4)` others.
pub async fn start_nodes(nodes: usize) -> Vec<Peer> {
    let mut out: Vec<Peer> = Vec::with_capacity(nodes);
    for i in 0..nodes {
        let bootstrap = if i == 0 {
            Vec::new()
        } else {
            vec![out[0].p2p_addr()]
        };
        let (config, account) = memory_config(Role::Node, bootstrap);
        out.push(start(config, account).await);
    }
    let want = nodes.saturating_sub(1).min(4);
    for node in &out[1..] {
        let client = node.client.clone();
        eventually(Duration::from_secs(30), "node routing tables", || {
            let client = client.clone();
            async move { client.routing_table().await.map_or(0, |t| t.len()) >= want }
        })
        .await;
    }
    out
}

/// Starts a client bootstrapping from `bootstrap` and waits until its
/// presence is stored in the DHT.
pub async fn start_client(bootstrap: Vec<Multiaddr>) -> Peer {
    let (config, account) = memory_config(Role::Client, bootstrap);
    let peer = start(config, account).await;
    let client = peer.client.clone();
    eventually(Duration::from_secs(30), "presence publication", || {
        let client = client.clone();
        async move { client.publish_presence().await.is_ok() }
    })
    .await;
    peer
}

/// A bare libp2p swarm with a new identity over the memory transport
/// (Noise, Yamux), running `behaviour`: a peer that speaks Kith's
/// protocols as it likes.
pub fn memory_swarm<B: NetworkBehaviour>(behaviour: impl FnOnce(&Keypair) -> B) -> Swarm<B> {
    SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_other_transport(|key| {
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                MemoryTransport::default()
                    .upgrade(Version::V1)
                    .authenticate(noise::Config::new(key)?)
                    .multiplex(yamux::Config::default()),
            )
        })
        .expect("transport")
        .with_behaviour(behaviour)
        .expect("behaviour")
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build()
}

/// A bare Kademlia swarm speaking Kith's DHT protocol, in client mode.
pub type Attacker = Swarm<kad::Behaviour<MemoryStore>>;

pub fn attacker() -> Attacker {
    memory_swarm(|key| {
        let peer = key.public().to_peer_id();
        let mut config = kad::Config::new(KAD_PROTOCOL);
        config.set_max_packet_size(64 * 1024);
        let mut kad = kad::Behaviour::with_config(peer, MemoryStore::new(peer), config);
        kad.set_mode(Some(kad::Mode::Client));
        kad
    })
}

/// Sends `value` under `key` to `node` and waits for the put to finish
/// (a node answers a put it drops as it answers one it stores).
pub async fn push(attacker: &mut Attacker, node: &Peer, key: &[u8], value: Vec<u8>) {
    attacker
        .behaviour_mut()
        .add_address(&node.peer_id(), node.addr.clone());
    let record = kad::Record::new(kad::RecordKey::new(&key), value);
    let id = attacker.behaviour_mut().put_record_to(
        record,
        std::iter::once(node.peer_id()),
        kad::Quorum::One,
    );
    within(Duration::from_secs(20), async {
        loop {
            if let SwarmEvent::Behaviour(kad::Event::OutboundQueryProgressed {
                id: done, step, ..
            }) = attacker.select_next_some().await
                && done == id
                && step.last
            {
                return;
            }
        }
    })
    .await;
}
