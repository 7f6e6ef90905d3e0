//! A relayed connection gives way to a direct one. Two clients that met
//! through a relay circuit and then connect directly (as DCUtR's hole
//! punch does) close the relayed connection, so their requests stop
//! crossing the relay; but not while a request is still under way.
//! On the memory transport, with the relay's own metrics telling when the
//! circuit closes. `scripts/nat-test` shows the same through real NATs.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Peer, eventually, memory_config, start, within};
use futures::StreamExt;
use kith_net::{Event, Multiaddr, Protocol, RelayReservation, Role};
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;

/// A relay node whose metrics the test can read.
struct Relay {
    peer: Peer,
    registry: Arc<Mutex<Registry>>,
}

impl Relay {
    async fn start() -> Self {
        let (config, _) = memory_config(Role::Node, Vec::new());
        let mut registry = Registry::default();
        let (client, mut stream, event_loop) =
            kith_net::new(config, Some(&mut registry)).expect("relay starts");
        let task = tokio::spawn(event_loop.run());
        let (tx, events) = mpsc::channel(1024);
        tokio::spawn(async move {
            while let Some(event) = stream.next().await {
                let _ = tx.try_send(event);
            }
        });
        let addr = client.listen_addrs().await.expect("listening")[0].clone();
        Self {
            peer: Peer {
                client,
                events,
                task,
                addr,
                account: None,
            },
            registry: Arc::new(Mutex::new(registry)),
        }
    }

    /// Relay events of one kind counted so far.
    fn events(&self, kind: &str) -> f64 {
        let mut text = String::new();
        let registry = self.registry.lock().expect("registry");
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        text.lines()
            .filter(|l| l.contains("relay_events") && l.contains(&format!("event=\"{kind}\"")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relayed_connection_is_closed_once_a_direct_one_is_up_and_nothing_is_in_flight() {
    let relay = Relay::start().await;
    let (mut config, account) = memory_config(Role::Client, vec![relay.peer.p2p_addr()]);
    config.relay_reservation = RelayReservation::Always;
    let mut bob = start(config, account).await;
    let relay_id = relay.peer.peer_id();
    bob.wait_event(|e| {
        matches!(e, Event::RelayReserved { relay } if *relay == relay_id).then_some(())
    })
    .await;
    let mut bob_requests = bob.take_requests();

    let (mut config, account) = memory_config(Role::Client, Vec::new());
    config.presence = None;
    let alice = start(config, account).await;

    // A request through the circuit, which Bob holds unanswered.
    let circuit: Multiaddr = relay
        .peer
        .p2p_addr()
        .with(Protocol::P2pCircuit)
        .with(Protocol::P2p(bob.peer_id()));
    let first = tokio::spawn({
        let client = alice.client.clone();
        let bob_id = bob.peer_id();
        async move { client.request(bob_id, vec![circuit], b"one".to_vec()).await }
    });
    let held = within(Duration::from_secs(20), bob_requests.recv())
        .await
        .expect("bob gets the request");
    assert_eq!(relay.events("CircuitReqAccepted"), 1.0);

    // A direct connection comes up beside the relayed one: the relayed
    // one stays while the request on it waits for its answer.
    within(Duration::from_secs(10), alice.client.dial(bob.p2p_addr()))
        .await
        .expect("direct dial");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        relay.events("CircuitClosed"),
        0.0,
        "the circuit closed under a request"
    );
    held.respond(b"answer one".to_vec());
    let answer = within(Duration::from_secs(10), first)
        .await
        .expect("task")
        .expect("the request on the relayed connection is answered");
    assert_eq!(answer, b"answer one");

    // Then the relayed connection goes, and requests use the direct one.
    eventually(Duration::from_secs(10), "the circuit to close", || async {
        relay.events("CircuitClosed") >= 1.0
    })
    .await;
    let second = tokio::spawn({
        let client = alice.client.clone();
        let bob_id = bob.peer_id();
        async move { client.request(bob_id, Vec::new(), b"two".to_vec()).await }
    });
    let request = within(Duration::from_secs(10), bob_requests.recv())
        .await
        .expect("bob gets the second request");
    request.respond(b"answer two".to_vec());
    let answer = within(Duration::from_secs(10), second)
        .await
        .expect("task")
        .expect("answered over the direct connection");
    assert_eq!(answer, b"answer two");
    let connections = alice.client.connected_peers().await.expect("connections");
    assert!(
        connections
            .iter()
            .any(|c| c.peer_id == bob.peer_id() && !c.relayed),
        "{connections:?}"
    );
    assert_eq!(relay.events("CircuitReqAccepted"), 1.0, "no new circuit");
}
