//! Shared setup for the engine's in-process tests: DHT nodes (optionally
//! mailbox volunteers) and user devices on libp2p's memory transport, with
//! stores (in memory, or a sled folder) that outlive engine restarts, and
//! bare network nodes for tests that speak the network directly.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use kith_core::engine::{self, Engine, Event};
use kith_mailbox::service::{ServiceSettings, VolunteerHandle};
use kith_mailbox::{Volunteer, VolunteerConfig};
use kith_net::{Multiaddr, Role, TransportKind};
use kith_proto::DeviceKeypair;
use kith_store::profile::Identity;
use kith_store::{Backend, MemoryBackend, Store};

pub type Events = std::pin::Pin<Box<dyn Stream<Item = Event> + Send>>;

pub const WAIT: Duration = Duration::from_secs(60);

/// A bare network node of `role` on the memory transport, with a fresh
/// key, joined through `bootstrap`; its events are drained. Also how tests
/// play a stranger or an attacker that speaks the network directly.
pub fn memory_node(role: Role, bootstrap: &[Multiaddr]) -> kith_net::Client {
    let mut config = kith_net::Config::new(DeviceKeypair::generate(), role);
    config.transport = TransportKind::Memory;
    config.listen = vec!["/memory/0".parse().unwrap()];
    config.bootstrap = bootstrap.to_vec();
    let (client, mut events, event_loop) = kith_net::new(config, None).unwrap();
    tokio::spawn(event_loop.run());
    tokio::spawn(async move { while events.next().await.is_some() {} });
    client
}

pub async fn start_nodes(n: usize) -> (Vec<kith_net::Client>, Vec<Multiaddr>) {
    let mut clients = Vec::new();
    let mut addrs: Vec<Multiaddr> = Vec::new();
    for _ in 0..n {
        let client = memory_node(Role::Node, &addrs);
        let addr = client.listen_addrs().await.unwrap()[0]
            .clone()
            .with(kith_net::Protocol::P2p(client.peer_id()));
        addrs.push(addr);
        clients.push(client);
    }
    (clients, addrs)
}

/// One user's device: its identity and store outlive engine restarts.
pub struct Device {
    pub identity: Identity,
    pub backend: Arc<dyn Backend>,
    pub name: &'static str,
}

impl Device {
    pub fn new(name: &'static str) -> Self {
        Self {
            identity: Identity::generate(),
            backend: Arc::new(MemoryBackend::new()),
            name,
        }
    }

    /// A device whose store is a real sled database in `dir`.
    pub fn on_disk(name: &'static str, dir: &std::path::Path) -> Self {
        Self {
            identity: Identity::generate(),
            backend: Arc::new(kith_store::SledBackend::open(dir).unwrap()),
            name,
        }
    }

    pub fn start(&self, bootstrap: &[Multiaddr]) -> (Engine, Events) {
        self.start_with(
            bootstrap,
            Duration::from_millis(100),
            Duration::from_secs(2),
        )
    }

    pub fn start_with(
        &self,
        bootstrap: &[Multiaddr],
        retry_min: Duration,
        retry_max: Duration,
    ) -> (Engine, Events) {
        self.start_adjusted(bootstrap, |config| {
            config.retry_min = retry_min;
            config.retry_max = retry_max;
        })
    }

    /// Starts the engine with quick retries and a light proof of work for
    /// mail (volunteers from [`start_volunteers`] ask for
    /// [`TEST_POW_BITS`]).
    pub fn start_mail(&self, bootstrap: &[Multiaddr]) -> (Engine, Events) {
        self.start_adjusted(bootstrap, |config| {
            config.retry_min = Duration::from_millis(100);
            config.retry_max = Duration::from_secs(2);
            config.mailbox.pow_difficulty = TEST_POW_BITS;
        })
    }

    pub fn start_adjusted(
        &self,
        bootstrap: &[Multiaddr],
        adjust: impl FnOnce(&mut engine::Config),
    ) -> (Engine, Events) {
        let store =
            Store::open(self.backend.clone(), None, kith_core::SCHEMA_VERSION, &[]).unwrap();
        let mut net = kith_net::Config::new(self.identity.device.clone(), Role::Client);
        net.transport = TransportKind::Memory;
        net.listen = vec!["/memory/0".parse().unwrap()];
        net.bootstrap = bootstrap.to_vec();
        net.timers.kad_query_timeout = Duration::from_secs(10);
        let mut config = engine::Config::new(self.identity.clone(), store, net);
        config.display_name = self.name.into();
        adjust(&mut config);
        let (engine, events) = engine::start(config).unwrap();
        (engine, Box::pin(events))
    }
}

pub async fn wait_for<T>(events: &mut Events, mut pick: impl FnMut(&Event) -> Option<T>) -> T {
    tokio::time::timeout(WAIT, async {
        loop {
            let event = events.next().await.expect("engine running");
            if let Some(found) = pick(&event) {
                return found;
            }
        }
    })
    .await
    .expect("event in time")
}

pub async fn eventually<T, F: Future<Output = Option<T>>>(mut check: impl FnMut() -> F) -> T {
    tokio::time::timeout(WAIT, async {
        loop {
            if let Some(value) = check().await {
                return value;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("condition in time")
}

/// Alice asks, Bob accepts; returns when Alice knows.
pub async fn befriend(alice: &Engine, alice_events: &mut Events, bob: &Engine) {
    let bob_id = bob.status().await.unwrap().id;
    eventually(|| async { alice.add(bob_id, "it's Alice".into()).await.ok() }).await;
    let request = eventually(|| async {
        bob.check_requests().await.ok();
        bob.requests().await.unwrap().0.first().cloned()
    })
    .await;
    assert_eq!(request.name, "alice");
    assert_eq!(request.message, "it's Alice");
    assert_eq!(request.account, alice.account());
    bob.accept(request.account).await.unwrap();
    wait_for(alice_events, |e| match e {
        Event::FriendAdded(f) if f.account == bob.account() => Some(()),
        _ => None,
    })
    .await;
}

/// Proof-of-work bits test volunteers require (light, to keep tests quick).
pub const TEST_POW_BITS: u8 = 8;

/// A DHT node that volunteers for offline mail.
pub struct VolunteerNode {
    pub client: kith_net::Client,
    pub addr: Multiaddr,
    pub volunteer: VolunteerHandle,
    task: tokio::task::JoinHandle<()>,
}

impl VolunteerNode {
    /// Kills the node: its network stops at once.
    pub fn kill(&self) {
        self.task.abort();
    }

    /// Items it holds for `account`.
    pub async fn items_for(&self, account: &kith_proto::AccountPublicKey) -> usize {
        self.volunteer
            .holds(kith_proto::mailbox::mailbox_address(account))
            .await
            .len()
    }
}

/// Starts `n` DHT nodes that are also mailbox volunteers (real
/// [`Volunteer`]s on in-memory stores, requiring [`TEST_POW_BITS`]), each
/// answering the mailbox requests its node receives.
pub async fn start_volunteers(n: usize) -> (Vec<VolunteerNode>, Vec<Multiaddr>) {
    let mut nodes: Vec<VolunteerNode> = Vec::new();
    let mut addrs: Vec<Multiaddr> = Vec::new();
    for _ in 0..n {
        let key = DeviceKeypair::generate();
        let mut config = kith_net::Config::new(key.clone(), Role::Node);
        config.transport = TransportKind::Memory;
        config.listen = vec!["/memory/0".parse().unwrap()];
        config.bootstrap = addrs.clone();
        let (client, mut events, event_loop) = kith_net::new(config, None).unwrap();
        let task = tokio::spawn(event_loop.run());
        let mut volunteer_config = VolunteerConfig::default();
        volunteer_config.limits.pow_difficulty = TEST_POW_BITS;
        let volunteer =
            Volunteer::open(Arc::new(MemoryBackend::new()), key, volunteer_config).unwrap();
        let handle =
            kith_mailbox::service::start(client.clone(), volunteer, ServiceSettings::default());
        let forward = handle.clone();
        tokio::spawn(async move {
            while let Some(event) = events.next().await {
                if let kith_net::Event::MailboxRequest(request) = event {
                    forward.offer(request);
                }
            }
        });
        let addr = client.listen_addrs().await.unwrap()[0]
            .clone()
            .with(kith_net::Protocol::P2p(client.peer_id()));
        addrs.push(addr.clone());
        nodes.push(VolunteerNode {
            client,
            addr,
            volunteer: handle,
            task,
        });
    }
    (nodes, addrs)
}
