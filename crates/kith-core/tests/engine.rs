//! The engine end to end, in process: real kith-net swarms on libp2p's
//! memory transport (three DHT nodes and the users' devices) and real
//! stores on the in-memory backend, kept across restarts.

use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use kith_core::engine::{self, Engine, Event, MessageState};
use kith_core::history::Author;
use kith_net::{Multiaddr, Role, TransportKind};
use kith_proto::DeviceKeypair;
use kith_store::profile::Identity;
use kith_store::{Backend, MemoryBackend, Store};

type Events = std::pin::Pin<Box<dyn Stream<Item = Event> + Send>>;

const WAIT: Duration = Duration::from_secs(60);

async fn start_nodes(n: usize) -> (Vec<kith_net::Client>, Vec<Multiaddr>) {
    let mut clients = Vec::new();
    let mut addrs: Vec<Multiaddr> = Vec::new();
    for _ in 0..n {
        let mut config = kith_net::Config::new(DeviceKeypair::generate(), Role::Node);
        config.transport = TransportKind::Memory;
        config.listen = vec!["/memory/0".parse().unwrap()];
        config.bootstrap = addrs.clone();
        let (client, mut events, event_loop) = kith_net::new(config, None).unwrap();
        tokio::spawn(event_loop.run());
        tokio::spawn(async move { while events.next().await.is_some() {} });
        let addr = client.listen_addrs().await.unwrap()[0]
            .clone()
            .with(kith_net::Protocol::P2p(client.peer_id()));
        addrs.push(addr);
        clients.push(client);
    }
    (clients, addrs)
}

/// One user's device: its identity and store outlive engine restarts.
struct Device {
    identity: Identity,
    backend: Arc<MemoryBackend>,
    name: &'static str,
}

impl Device {
    fn new(name: &'static str) -> Self {
        Self {
            identity: Identity::generate(),
            backend: Arc::new(MemoryBackend::new()),
            name,
        }
    }

    fn start(&self, bootstrap: &[Multiaddr]) -> (Engine, Events) {
        self.start_with(
            bootstrap,
            Duration::from_millis(100),
            Duration::from_secs(2),
        )
    }

    fn start_with(
        &self,
        bootstrap: &[Multiaddr],
        retry_min: Duration,
        retry_max: Duration,
    ) -> (Engine, Events) {
        let backend: Arc<dyn Backend> = self.backend.clone();
        let store = Store::open(backend, None, kith_core::SCHEMA_VERSION, &[]).unwrap();
        let mut net = kith_net::Config::new(self.identity.device.clone(), Role::Client);
        net.transport = TransportKind::Memory;
        net.listen = vec!["/memory/0".parse().unwrap()];
        net.bootstrap = bootstrap.to_vec();
        net.timers.kad_query_timeout = Duration::from_secs(10);
        let mut config = engine::Config::new(self.identity.clone(), store, net);
        config.display_name = self.name.into();
        config.retry_min = retry_min;
        config.retry_max = retry_max;
        let (engine, events) = engine::start(config).unwrap();
        (engine, Box::pin(events))
    }
}

async fn wait_for<T>(events: &mut Events, mut pick: impl FnMut(&Event) -> Option<T>) -> T {
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

async fn eventually<T, F: Future<Output = Option<T>>>(mut check: impl FnMut() -> F) -> T {
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
async fn befriend(alice: &Engine, alice_events: &mut Events, bob: &Engine) {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn friends_chat_with_receipts_edits_deletions_and_typing() {
    let (_nodes, bootstrap) = start_nodes(3).await;
    let (alice, mut alice_events) = Device::new("alice").start(&bootstrap);
    let (bob, mut bob_events) = Device::new("bob").start(&bootstrap);
    befriend(&alice, &mut alice_events, &bob).await;

    let mut sent = Vec::new();
    for i in 0..5 {
        sent.push(
            alice
                .send(bob.account(), format!("hello {i}"))
                .await
                .unwrap(),
        );
    }
    let mut received = Vec::new();
    while received.len() < 5 {
        let body = wait_for(&mut bob_events, |e| match e {
            Event::Message { message, .. } if message.author == Author::Friend => {
                Some(message.body.clone())
            }
            _ => None,
        })
        .await;
        received.push(body);
    }
    assert_eq!(
        received,
        (0..5).map(|i| format!("hello {i}")).collect::<Vec<_>>()
    );

    // Every message reaches "delivered" at Alice.
    eventually(|| async {
        let page = alice.history(bob.account(), None, 50).await.unwrap();
        page.messages
            .iter()
            .all(|m| matches!(m.state, Some(MessageState::Delivered { .. })))
            .then_some(())
    })
    .await;

    // Bob reads; Alice sees "read".
    assert_eq!(bob.mark_read(alice.account()).await.unwrap(), 5);
    eventually(|| async {
        let page = alice.history(bob.account(), None, 50).await.unwrap();
        page.messages
            .iter()
            .all(|m| matches!(m.state, Some(MessageState::Read { .. })))
            .then_some(())
    })
    .await;

    // Edit and delete of Alice's own messages reach Bob.
    alice
        .edit(bob.account(), sent[0], "hello, edited".into())
        .await
        .unwrap();
    alice.delete(bob.account(), sent[1]).await.unwrap();
    eventually(|| async {
        let page = bob.history(alice.account(), None, 50).await.unwrap();
        let first = &page.messages[0];
        let second = &page.messages[1];
        (first.body == "hello, edited" && first.edited && second.deleted).then_some(())
    })
    .await;
    // Nobody edits someone else's message.
    assert!(
        bob.edit(alice.account(), sent[2], "mine now".into())
            .await
            .is_err()
    );

    // Typing is shown.
    alice.typing(bob.account(), true).await.unwrap();
    wait_for(&mut bob_events, |e| {
        matches!(e, Event::Typing { active: true, .. }).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_survives_a_restart_and_delivers_once() {
    let (_nodes, bootstrap) = start_nodes(3).await;
    let alice_device = Device::new("alice");
    let bob_device = Device::new("bob");
    let (alice, mut alice_events) = alice_device.start(&bootstrap);
    let (bob, _bob_events) = bob_device.start(&bootstrap);
    befriend(&alice, &mut alice_events, &bob).await;
    let bob_account = bob.account();
    // Let the acceptance's acknowledgement reach Bob, then Bob goes away.
    eventually(|| async { (bob.status().await.unwrap().outbox == 0).then_some(()) }).await;
    bob.shutdown().await.unwrap();
    drop(bob);

    for i in 0..20 {
        alice
            .send(bob_account, format!("while you were out {i}"))
            .await
            .unwrap();
    }
    assert_eq!(alice.friends().await.unwrap()[0].queued, 20);
    alice.shutdown().await.unwrap();
    drop(alice);
    drop(alice_events);

    // Both come back; everything arrives once, in order.
    let (alice, _alice_events) = alice_device.start(&bootstrap);
    let (bob, _bob_events) = bob_device.start(&bootstrap);
    let page = eventually(|| async {
        let page = bob.history(alice.account(), None, 100).await.unwrap();
        (page.messages.len() >= 20).then_some(page)
    })
    .await;
    let bodies: Vec<_> = page.messages.iter().map(|m| m.body.clone()).collect();
    assert_eq!(
        bodies,
        (0..20)
            .map(|i| format!("while you were out {i}"))
            .collect::<Vec<_>>()
    );
    eventually(|| async { (alice.status().await.unwrap().outbox == 0).then_some(()) }).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        bob.history(alice.account(), None, 100)
            .await
            .unwrap()
            .messages
            .len(),
        20
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declined_requests_stay_refused_and_old_ids_stop_working() {
    let (_nodes, bootstrap) = start_nodes(3).await;
    let (alice, _alice_events) = Device::new("alice").start(&bootstrap);
    let (bob, _bob_events) = Device::new("bob").start(&bootstrap);
    let (carol, _carol_events) = Device::new("carol").start(&bootstrap);

    let old_id = bob.status().await.unwrap().id;
    eventually(|| async { alice.add(old_id, "first".into()).await.ok() }).await;
    let request = eventually(|| async {
        bob.check_requests().await.ok();
        bob.requests().await.unwrap().0.first().cloned()
    })
    .await;
    bob.decline(request.account).await.unwrap();
    assert!(bob.requests().await.unwrap().0.is_empty());

    // Bob rotates his nospam; Carol uses the old ID and is not shown,
    // Alice uses the new one but stays declined.
    let new_id = bob.rotate_nospam().await.unwrap();
    assert_ne!(new_id, old_id);
    assert_eq!(new_id.account(), old_id.account());
    eventually(|| async { carol.add(old_id, "old id".into()).await.ok() }).await;
    // Wait until both requests have been placed.
    eventually(|| async {
        let placed = carol.requests().await.unwrap().1.iter().all(|o| o.dropped);
        placed.then_some(())
    })
    .await;
    // A second request from Alice under the new ID.
    let _ = alice.add(new_id, "again".into()).await;
    eventually(|| async {
        let placed = alice.requests().await.unwrap().1.iter().all(|o| o.dropped);
        placed.then_some(())
    })
    .await;
    for _ in 0..3 {
        bob.check_requests().await.unwrap();
    }
    assert!(bob.requests().await.unwrap().0.is_empty());
    assert!(bob.friends().await.unwrap().is_empty());

    // The same drop path works with the current ID: Carol gets through.
    carol.add(new_id, "new id".into()).await.unwrap();
    let request = eventually(|| async {
        bob.check_requests().await.ok();
        bob.requests().await.unwrap().0.first().cloned()
    })
    .await;
    assert_eq!(request.account, carol.account());
    assert_eq!(request.message, "new id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_friend_coming_online_gets_waiting_messages_without_waiting_for_a_retry() {
    let (_nodes, bootstrap) = start_nodes(3).await;
    let alice_device = Device::new("alice");
    let bob_device = Device::new("bob");
    let (alice, mut alice_events) = alice_device.start(&bootstrap);
    let (bob, _bob_events) = bob_device.start(&bootstrap);
    befriend(&alice, &mut alice_events, &bob).await;
    eventually(|| async { (bob.status().await.unwrap().outbox == 0).then_some(()) }).await;
    let bob_account = bob.account();
    bob.shutdown().await.unwrap();
    drop(bob);
    alice.shutdown().await.unwrap();
    drop(alice);
    drop(alice_events);

    // Alice now retries no sooner than 30 s after a failure: only Bob's
    // greeting on start can bring her message across within the wait below.
    let (alice, _alice_events) =
        alice_device.start_with(&bootstrap, Duration::from_secs(30), Duration::from_secs(60));
    alice
        .send(bob_account, "are you there?".into())
        .await
        .unwrap();
    // Her attempt fails while Bob is away, which puts her into backoff.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(alice.friends().await.unwrap()[0].queued, 1);

    let (bob, _bob_events) = bob_device.start(&bootstrap);
    let arrived = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            let page = bob.history(alice.account(), None, 10).await.unwrap();
            if page.messages.iter().any(|m| m.body == "are you there?") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(
        arrived.is_ok(),
        "the waiting message did not arrive on Bob's return"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_and_deletions_queued_with_their_messages_apply_on_arrival() {
    let (_nodes, bootstrap) = start_nodes(3).await;
    let bob_device = Device::new("bob");
    let (alice, mut alice_events) = Device::new("alice").start(&bootstrap);
    let (bob, _bob_events) = bob_device.start(&bootstrap);
    befriend(&alice, &mut alice_events, &bob).await;
    eventually(|| async { (bob.status().await.unwrap().outbox == 0).then_some(()) }).await;
    let bob_account = bob.account();
    bob.shutdown().await.unwrap();
    drop(bob);

    // While Bob is away: a message and its edit, another and its deletion.
    // They travel together, in one bundle.
    let first = alice
        .send(bob_account, "see you at 7".into())
        .await
        .unwrap();
    let second = alice.send(bob_account, "wrong chat".into()).await.unwrap();
    alice
        .edit(bob_account, first, "see you at 8".into())
        .await
        .unwrap();
    alice.delete(bob_account, second).await.unwrap();

    let (bob, _bob_events) = bob_device.start(&bootstrap);
    let page = eventually(|| async {
        let page = bob.history(alice.account(), None, 10).await.unwrap();
        (page.messages.len() == 2 && page.messages.iter().any(|m| m.deleted)).then_some(page)
    })
    .await;
    assert_eq!(page.messages[0].body, "see you at 8");
    assert!(page.messages[0].edited);
    assert!(page.messages[1].deleted);
    assert_eq!(page.messages[1].body, "");
}
