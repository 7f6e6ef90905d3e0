//! `dht`: presence lookups in a network of `--nodes` `kith-net` nodes in
//! one process, on libp2p's memory transport, while a share of the nodes
//! leaves.
//!
//! The network is built the way Kith is deployed. `--servers` of the nodes
//! run [`Role::Node`], what `kithd` runs: Kademlia servers, the DHT itself.
//! The others are [`Role::Client`] devices with an account each: Kademlia
//! clients (a desktop serves the DHT only once AutoNAT confirms a direct
//! public address, which the memory transport never does, as most devices
//! behind NAT never would), which reserve relay circuits on their bootstrap
//! nodes and publish their presence entry, as every device does. Every
//! node bootstraps from three random servers started before it: a shipped
//! list of well-known nodes, varied so that no server takes more
//! connections than its limit. All timers and limits are `kith-net`'s
//! defaults.
//!
//! Phases: the servers start one after another and fill their routing
//! tables; then every client starts and publishes; the network counts as
//! settled once every client's presence is stored, every routing table
//! holds enough peers, and the routing tables together stop growing. Then
//! `--lookups` lookups run one after another, each a random online client
//! looking up a random other online client with
//! [`Client::find_devices`] and the presence share a friend holds; a
//! lookup succeeds when the answer lists that client's device. After each
//! lookup, departures catch up with an even spread of `churn × nodes`
//! random nodes (servers and clients alike) over the run: a departing
//! node's handle is dropped, so its event loop closes every connection and
//! ends, and its stored records go with it.
//!
//! Peers asked per lookup are counted from outside `kith-net`: each server
//! has a Prometheus registry, and the sum over all servers of
//! `libp2p_kad_inbound_requests_total{request="GetRecord"}` grows by one
//! for every server a lookup's request reached (nothing else sends
//! `GetRecord`; a pause after each answer lets requests still in flight
//! land first). Requests to departed servers fail before they are counted.
//! The query's own statistics (`kad::QueryStats`) stay inside `kith-net`,
//! and libp2p's iterative query keeps no count of rounds (hops) at all.
//! The same registries give the joining cost: the `FindNode` and
//! `PutRecord` requests servers had answered when the network settled.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use kith_net::{Client, Config, Event, Multiaddr, PeerId, Protocol, Role, TransportKind};
use kith_proto::presence::{PresenceKeys, PresenceShare};
use kith_proto::{AccountKeypair, DeviceKeypair};
use prometheus_client::registry::Registry;
use tokio::task::JoinHandle;

use crate::Rng;
use crate::proc::self_rss_kb;

/// Bootstrap nodes each node is given.
const BOOTSTRAP_PER_NODE: usize = 3;
/// A server's routing table counts as filled at this many peers (or every
/// other server, in a smaller network): Kademlia's bucket size.
const SERVER_TABLE: usize = 20;
/// A client's routing table counts as filled at this many peers (or every
/// server): below it `kith-net` keeps re-running the Kademlia bootstrap.
const CLIENT_TABLE: usize = 10;
/// Longest wait for each settling phase.
const SETTLE_LIMIT: Duration = Duration::from_secs(300);
/// Pause after each lookup so that requests still in flight when it
/// answered reach their servers before the count is read.
const COUNT_PAUSE: Duration = Duration::from_millis(20);
/// Longest a lookup may take (the Kademlia query timeout is 20 s).
const LOOKUP_LIMIT: Duration = Duration::from_secs(60);

/// How the scenario runs.
#[derive(Debug, Clone)]
pub struct DhtParams {
    /// Nodes in all, servers and clients.
    pub nodes: usize,
    /// How many of them are DHT servers (`Role::Node`).
    pub servers: usize,
    /// Lookups to run.
    pub lookups: usize,
    /// Share of the nodes that leaves during the lookups.
    pub churn: f64,
    /// Seed of every random choice.
    pub seed: u64,
    /// The run stops with an error once the process holds more than this
    /// much memory (KiB): the machine may be shared.
    pub max_rss_kb: u64,
}

/// Results of the scenario.
#[derive(Debug, Clone)]
pub struct DhtResult {
    /// Milliseconds per lookup, failed ones included.
    pub lookup_ms: Vec<f64>,
    /// Lookups that returned the target's device.
    pub successes: usize,
    /// Servers that received each lookup's `GetRecord` request.
    pub peers_asked: Vec<f64>,
    /// Process RSS after settling, KiB.
    pub rss_kb: u64,
    /// Process RSS before the first node started, KiB.
    pub rss_kb_before: u64,
    /// Seconds from the first node's start until the network settled.
    pub settle_s: f64,
    /// Kademlia `FindNode` and `PutRecord` requests the servers had
    /// answered by then: the cost of everyone joining and publishing.
    pub join_requests: f64,
    /// Nodes that left during the lookups.
    pub departed: usize,
    /// Open connections per node when the network settled, on average
    /// (each connection counted at both ends).
    pub connections: f64,
    /// Routing-table entries per node when the network settled, on
    /// average.
    pub table: f64,
}

struct Node {
    client: Option<Client>,
    task: Option<JoinHandle<()>>,
    /// Reachable at, ending in `/p2p/<peer id>`.
    addr: Multiaddr,
    peer: PeerId,
    /// What friends hold to find this client; `None` on servers.
    share: Option<PresenceShare>,
    published: Arc<AtomicBool>,
    registry: Option<Registry>,
}

impl Node {
    fn alive(&self) -> bool {
        self.client.is_some()
    }

    /// Leaves as a user quitting would: the handle is dropped, and the
    /// event loop closes its listeners and connections and ends.
    async fn leave(&mut self) {
        self.client = None;
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }

    async fn table_len(&self) -> usize {
        match &self.client {
            Some(client) => client.routing_table().await.map_or(0, |t| t.len()),
            None => 0,
        }
    }
}

async fn start_node(server: bool, bootstrap: Vec<Multiaddr>) -> anyhow::Result<Node> {
    let role = if server { Role::Node } else { Role::Client };
    let mut config = Config::new(DeviceKeypair::generate(), role);
    config.transport = TransportKind::Memory;
    config.listen = vec!["/memory/0".parse()?];
    config.bootstrap = bootstrap;
    let share = if server {
        None
    } else {
        let keys = PresenceKeys::derive(&AccountKeypair::generate());
        let share = keys.share();
        config.presence = Some(keys);
        Some(share)
    };
    let mut registry = server.then(Registry::default);
    let (client, mut events, event_loop) = kith_net::new(config, registry.as_mut())?;
    let task = tokio::spawn(event_loop.run());
    let published = Arc::new(AtomicBool::new(false));
    let flag = published.clone();
    tokio::spawn(async move {
        while let Some(event) = events.next().await {
            if let Event::PresencePublished { .. } = event {
                flag.store(true, Ordering::Relaxed);
            }
        }
    });
    let peer = client.peer_id();
    let addr = client
        .listen_addrs()
        .await?
        .into_iter()
        .next()
        .context("a node with no listen address")?
        .with(Protocol::P2p(peer));
    Ok(Node {
        client: Some(client),
        task: Some(task),
        addr,
        peer,
        share,
        published,
        registry,
    })
}

/// Up to [`BOOTSTRAP_PER_NODE`] distinct random servers among `servers`.
fn pick_bootstrap(rng: &mut Rng, servers: &[Node]) -> Vec<Multiaddr> {
    let mut picked: Vec<usize> = (0..servers.len()).collect();
    rng.shuffle(&mut picked);
    picked
        .into_iter()
        .take(BOOTSTRAP_PER_NODE)
        .map(|i| servers[i].addr.clone())
        .collect()
}

/// Polls until every node in `nodes` has a routing table of at least
/// `want` peers, or the limit passes (then says so on standard error and
/// carries on: the figures will show it).
async fn wait_tables(nodes: &[Node], want: usize, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + SETTLE_LIMIT;
    loop {
        let mut short = 0;
        for node in nodes {
            if node.table_len().await < want {
                short += 1;
            }
        }
        if short == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            eprintln!("dht: {short} {what} still hold fewer than {want} peers; going on");
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Fails once this process holds more than `max_rss_kb`.
fn check_memory(max_rss_kb: u64, doing: &str) -> anyhow::Result<()> {
    let rss = self_rss_kb()?;
    if rss > max_rss_kb {
        bail!(
            "stopped while {doing}: the process holds {} MiB, over --max-rss-mb {}",
            rss / 1024,
            max_rss_kb / 1024
        );
    }
    Ok(())
}

/// Sum over every server of its inbound Kademlia requests of the kinds
/// given (`GetRecord`, `FindNode`, `PutRecord`), read from the text
/// encoding of its registry.
fn inbound_requests(nodes: &[Node], kinds: &[&str]) -> anyhow::Result<f64> {
    let labels: Vec<String> = kinds.iter().map(|k| format!("request=\"{k}\"")).collect();
    let mut total = 0.0;
    let mut text = String::new();
    for registry in nodes.iter().filter_map(|n| n.registry.as_ref()) {
        text.clear();
        prometheus_client::encoding::text::encode(&mut text, registry)?;
        total += text
            .lines()
            .filter(|l| {
                l.starts_with("libp2p_kad_inbound_requests_total{")
                    && labels.iter().any(|label| l.contains(label.as_str()))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
    }
    Ok(total)
}

fn debug() -> bool {
    std::env::var_os("KITH_BENCH_DEBUG").is_some()
}

/// Runs the scenario.
pub async fn run(params: &DhtParams) -> anyhow::Result<DhtResult> {
    let DhtParams {
        nodes: total,
        servers,
        lookups,
        churn,
        seed,
        max_rss_kb,
    } = *params;
    if servers == 0 || servers + 2 > total {
        bail!("need at least one server and two clients ({servers} servers of {total} nodes)");
    }
    let mut rng = Rng::new(seed);
    let rss_kb_before = self_rss_kb()?;
    let start = Instant::now();

    let mut nodes: Vec<Node> = Vec::with_capacity(total);
    for _ in 0..servers {
        let bootstrap = pick_bootstrap(&mut rng, &nodes);
        nodes.push(start_node(true, bootstrap).await?);
    }
    wait_tables(&nodes, (servers - 1).min(SERVER_TABLE), "servers").await?;
    if debug() {
        eprintln!("dht: {servers} servers up after {:?}", start.elapsed());
    }
    for i in servers..total {
        if i % 50 == 0 {
            check_memory(max_rss_kb, "starting clients")?;
        }
        let bootstrap = pick_bootstrap(&mut rng, &nodes[..servers]);
        nodes.push(start_node(false, bootstrap).await?);
    }
    if debug() {
        eprintln!("dht: clients started after {:?}", start.elapsed());
    }
    let deadline = Instant::now() + SETTLE_LIMIT;
    loop {
        let waiting = nodes[servers..]
            .iter()
            .filter(|n| !n.published.load(Ordering::Relaxed))
            .count();
        if waiting == 0 {
            break;
        }
        if Instant::now() > deadline {
            bail!("{waiting} clients never published their presence");
        }
        check_memory(max_rss_kb, "waiting for presence")?;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if debug() {
        eprintln!("dht: clients published after {:?}", start.elapsed());
    }
    wait_tables(&nodes[servers..], servers.min(CLIENT_TABLE), "clients").await?;
    if debug() {
        eprintln!("dht: client tables filled after {:?}", start.elapsed());
    }
    // Settled when the routing tables together grew by under 1 % in the
    // last two seconds.
    let mut last = 0usize;
    let deadline = Instant::now() + SETTLE_LIMIT;
    loop {
        let mut sum = 0;
        for node in &nodes {
            sum += node.table_len().await;
        }
        if debug() {
            eprintln!("dht: routing entries {sum} at {:?}", start.elapsed());
        }
        if sum.abs_diff(last) * 100 < sum || Instant::now() > deadline {
            break;
        }
        check_memory(max_rss_kb, "settling")?;
        last = sum;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let settle_s = start.elapsed().as_secs_f64();
    let rss_kb = self_rss_kb()?;
    let (mut connections, mut table) = (0, 0);
    for node in &nodes {
        if let Some(client) = &node.client {
            connections += client.connected_peers().await.map_or(0, |c| c.len());
        }
        table += node.table_len().await;
    }
    let join_requests = inbound_requests(&nodes, &["FindNode", "PutRecord"])?;

    let departures = (churn * total as f64).round() as usize;
    let mut leaving: Vec<usize> = (0..total).collect();
    rng.shuffle(&mut leaving);
    leaving.truncate(departures);
    let clients_left = (total - servers) - leaving.iter().filter(|&&i| i >= servers).count();
    if clients_left < 2 {
        bail!("--churn {churn} would leave fewer than two clients to look each other up");
    }

    let mut lookup_ms = Vec::with_capacity(lookups);
    let mut peers_asked = Vec::with_capacity(lookups);
    let mut successes = 0;
    let mut departed = 0;
    let mut asked_before = inbound_requests(&nodes, &["GetRecord"])?;
    for round in 0..lookups {
        let online: Vec<usize> = (servers..total).filter(|&i| nodes[i].alive()).collect();
        let from = online[rng.below(online.len())];
        let mut target = online[rng.below(online.len() - 1)];
        if target == from {
            target = online[online.len() - 1];
        }
        let (client, share, want) = match (&nodes[from].client, &nodes[target].share) {
            (Some(client), Some(share)) => (client.clone(), share.clone(), nodes[target].peer),
            _ => bail!("picked a node that cannot look up or be looked up"),
        };
        let began = Instant::now();
        let answer = tokio::time::timeout(LOOKUP_LIMIT, client.find_devices(&share)).await;
        let ms = began.elapsed().as_secs_f64() * 1000.0;
        let found = matches!(&answer, Ok(Ok(devices)) if devices.iter().any(|d| d.peer_id == want));
        if found {
            successes += 1;
        } else if debug() {
            eprintln!("dht: lookup {round} failed after {ms:.1} ms ({departed} gone): {answer:?}");
        }
        lookup_ms.push(ms);
        drop(client);
        tokio::time::sleep(COUNT_PAUSE).await;
        let asked_after = inbound_requests(&nodes, &["GetRecord"])?;
        peers_asked.push(asked_after - asked_before);
        asked_before = asked_after;

        let due = (round + 1) * departures / lookups.max(1);
        while departed < due {
            nodes[leaving[departed]].leave().await;
            departed += 1;
        }
    }
    if debug() {
        eprintln!("dht: done after {:?}", start.elapsed());
    }
    for node in &mut nodes {
        node.client = None;
    }
    Ok(DhtResult {
        lookup_ms,
        successes,
        peers_asked,
        rss_kb,
        rss_kb_before,
        settle_s,
        join_requests,
        departed,
        connections: connections as f64 / total as f64,
        table: table as f64 / total as f64,
    })
}
