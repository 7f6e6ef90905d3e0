//! The relay server's limits (`RelayLimits`) against clients that ask for
//! more than they may, over the memory transport, with the node's relay
//! metrics counting what it accepted, denied and closed: reservations per
//! peer (one key run by several clients at once) and in total, circuits
//! per peer, and circuits cut at their byte limit and their lifetime.
//!
//! The numbers these show are in `docs/network.md`, "What the limits hold
//! against, and what they cost".

mod common;

use std::time::Duration;

use common::{Metrics, Peer, memory_config, start, start_with_metrics, within};
use kith_net::{Event, Multiaddr, Protocol, RelayLimits, RelayReservation, Role};
use kith_proto::DeviceKeypair;

/// A relay node with `limits`, whose metrics the test reads.
async fn relay(limits: RelayLimits) -> (Peer, Metrics) {
    let (mut config, account) = memory_config(Role::Node, Vec::new());
    config.relay_limits = limits;
    start_with_metrics(config, account).await
}

/// A client of `relay` that reserves a circuit on it, with `key` as its
/// device key.
async fn reserving(relay: &Peer, key: DeviceKeypair) -> Peer {
    let (mut config, account) = memory_config(Role::Client, vec![relay.p2p_addr()]);
    config.keypair = key;
    config.presence = None;
    config.relay_reservation = RelayReservation::Always;
    // A denied reservation is retried at 1 s, then at most every 2 s.
    config.timers.reconnect_max = Duration::from_secs(2);
    start(config, account).await
}

/// Waits until the relay has accepted or denied `count` requests of
/// `kind` (`Reservation` or `Circuit`): its events are counted a moment
/// after the client hears the answer.
async fn answered(metrics: &Metrics, kind: &str, count: f64) {
    let (accepted, denied) = (format!("{kind}ReqAccepted"), format!("{kind}ReqDenied"));
    metrics
        .wait("relay requests answered", |m| {
            m.relay_events(&accepted) + m.relay_events(&denied) >= count
        })
        .await;
}

/// A client that knows nobody and publishes nothing.
async fn loner() -> Peer {
    let (mut config, account) = memory_config(Role::Client, Vec::new());
    config.presence = None;
    config.relay_reservation = RelayReservation::Never;
    start(config, account).await
}

/// Waits until `peer` reports a reservation on `relay`.
async fn reserved(peer: &mut Peer, relay: &Peer) {
    let relay = relay.peer_id();
    peer.wait_event(|e| {
        matches!(e, Event::RelayReserved { relay: r } if *r == relay).then_some(())
    })
    .await;
}

/// How many of `peers` report a reservation on `relay` within 5 s.
async fn count_reserved(peers: &mut [Peer], relay: &Peer) -> usize {
    let waits = peers.iter_mut().map(|peer| async {
        tokio::time::timeout(Duration::from_secs(5), reserved(peer, relay))
            .await
            .is_ok()
    });
    futures::future::join_all(waits)
        .await
        .into_iter()
        .filter(|reserved| *reserved)
        .count()
}

fn circuit(relay: &Peer, to: &Peer) -> Multiaddr {
    relay
        .p2p_addr()
        .with(Protocol::P2pCircuit)
        .with(Protocol::P2p(to.peer_id()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reservations_over_the_per_peer_limit_are_denied() {
    let (node, metrics) = relay(RelayLimits {
        max_reservations_per_peer: 2,
        ..RelayLimits::default()
    })
    .await;
    // Four clients run one device key: four connections (the most one peer
    // may have), each asking for a reservation.
    let key = DeviceKeypair::generate();
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(reserving(&node, key.clone()).await);
    }
    answered(&metrics, "Reservation", 4.0).await;
    let granted = count_reserved(&mut clients, &node).await;
    assert_eq!(metrics.relay_events("ReservationReqAccepted"), 2.0);
    assert!(metrics.relay_events("ReservationReqDenied") >= 2.0);
    assert_eq!(granted, 2, "clients told they are reachable");

    // Another peer still gets one.
    let mut other = reserving(&node, DeviceKeypair::generate()).await;
    within(Duration::from_secs(15), reserved(&mut other, &node)).await;
    metrics
        .wait("the third reservation counted", |m| {
            m.relay_events("ReservationReqAccepted") >= 3.0
        })
        .await;
    assert_eq!(metrics.relay_events("ReservationReqAccepted"), 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reservations_over_the_total_are_denied() {
    let (node, metrics) = relay(RelayLimits {
        max_reservations: 3,
        ..RelayLimits::default()
    })
    .await;
    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(reserving(&node, DeviceKeypair::generate()).await);
    }
    answered(&metrics, "Reservation", 5.0).await;
    let granted = count_reserved(&mut clients, &node).await;
    assert_eq!(metrics.relay_events("ReservationReqAccepted"), 3.0);
    assert!(metrics.relay_events("ReservationReqDenied") >= 2.0);
    assert_eq!(granted, 3);

    // One leaves; a denied client, retrying, gets its place.
    let gone = clients.remove(0);
    gone.stop().await;
    metrics
        .wait("a freed place taken", |m| {
            m.relay_events("ReservationReqAccepted") >= 4.0
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuits_over_the_per_peer_limit_are_denied() {
    let (node, metrics) = relay(RelayLimits {
        max_circuits_per_peer: 2,
        ..RelayLimits::default()
    })
    .await;
    let mut bob = reserving(&node, DeviceKeypair::generate()).await;
    within(Duration::from_secs(15), reserved(&mut bob, &node)).await;
    // Alice dials Bob through the relay four times (four connections, the
    // most Bob takes from one peer), each a circuit of its own.
    let alice = loner().await;
    let mut opened = 0;
    for _ in 0..4 {
        let dial = within(
            Duration::from_secs(15),
            alice.client.dial(circuit(&node, &bob)),
        )
        .await;
        if dial.is_ok() {
            opened += 1;
        }
    }
    answered(&metrics, "Circuit", 4.0).await;
    assert_eq!(metrics.relay_events("CircuitReqAccepted"), 2.0);
    assert_eq!(metrics.relay_events("CircuitReqDenied"), 2.0);
    assert_eq!(opened, 2);
    assert!(relayed_to(&alice, &bob).await);

    // Carol, another peer, still gets a circuit to Bob.
    let carol = loner().await;
    within(
        Duration::from_secs(15),
        carol.client.dial(circuit(&node, &bob)),
    )
    .await
    .expect("carol's circuit");
    answered(&metrics, "Circuit", 5.0).await;
    assert_eq!(metrics.relay_events("CircuitReqAccepted"), 3.0);
}

/// A request from `from` to `to` through `relay`, echoed back.
async fn echoed_through(relay: &Peer, from: &Peer, to: &Peer, data: &[u8]) {
    let addrs = vec![circuit(relay, to)];
    let answer = within(
        Duration::from_secs(15),
        from.client.request(to.peer_id(), addrs, data.to_vec()),
    )
    .await
    .expect("answered through a circuit");
    assert_eq!(answer, data);
}

/// Bob reserves on a relay with `limits` and echoes every request; Alice
/// reaches him through a circuit, which one small request proves open.
async fn echo_circuit(limits: RelayLimits) -> (Peer, Metrics, Peer, Peer) {
    let (node, metrics) = relay(limits).await;
    let mut bob = reserving(&node, DeviceKeypair::generate()).await;
    within(Duration::from_secs(15), reserved(&mut bob, &node)).await;
    bob.answer_requests(|data| Some(data.to_vec()));
    let alice = loner().await;
    echoed_through(&node, &alice, &bob, b"hello").await;
    answered(&metrics, "Circuit", 1.0).await;
    assert_eq!(metrics.relay_events("CircuitReqAccepted"), 1.0);
    (node, metrics, alice, bob)
}

async fn relayed_to(from: &Peer, to: &Peer) -> bool {
    from.client
        .connected_peers()
        .await
        .expect("connections")
        .iter()
        .any(|c| c.peer_id == to.peer_id() && c.relayed)
}

/// Waits up to 10 s for `from`'s relayed connection to `to` to close.
async fn relay_gone(from: &Peer, to: &Peer) {
    for _ in 0..100 {
        if !relayed_to(from, to).await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("still relayed after 10 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_circuit_is_cut_at_its_byte_limit_counting_both_directions() {
    const LIMIT: u64 = 32 * 1024;
    const CHUNK: usize = 4 * 1024;
    let (node, metrics, alice, bob) = echo_circuit(RelayLimits {
        max_circuit_bytes: LIMIT,
        ..RelayLimits::default()
    })
    .await;
    // 4 KiB each way per request, on the one circuit, until it breaks.
    let mut answered = 0;
    for i in 0..16u8 {
        let sent = within(
            Duration::from_secs(15),
            alice
                .client
                .request(bob.peer_id(), Vec::new(), vec![i; CHUNK]),
        )
        .await;
        match sent {
            Ok(answer) => {
                assert_eq!(answer, vec![i; CHUNK]);
                answered += 1;
            }
            Err(_) => break,
        }
    }
    metrics
        .wait("the circuit closed", |m| {
            m.relay_events("CircuitClosed") >= 1.0
        })
        .await;
    relay_gone(&alice, &bob).await;
    println!("{answered} exchanges of {CHUNK} bytes each way answered under a {LIMIT}-byte limit");
    // Each direction alone carried less than the limit when the circuit
    // was cut: the limit counts both directions together.
    assert!(answered >= 2, "{answered}");
    assert!(
        ((answered + 1) * CHUNK) < LIMIT as usize,
        "cut only after {answered} exchanges"
    );
    assert_eq!(metrics.relay_events("CircuitReqAccepted"), 1.0);
    drop(node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_circuit_is_cut_at_its_lifetime() {
    let (node, metrics, alice, bob) = echo_circuit(RelayLimits {
        max_circuit_duration: Duration::from_secs(3),
        ..RelayLimits::default()
    })
    .await;
    let opened = tokio::time::Instant::now();
    assert!(relayed_to(&alice, &bob).await);
    metrics
        .wait("the circuit closed", |m| {
            m.relay_events("CircuitClosed") >= 1.0
        })
        .await;
    println!(
        "circuit closed {:?} after it first answered",
        opened.elapsed()
    );
    relay_gone(&alice, &bob).await;
    assert_eq!(metrics.relay_events("CircuitReqAccepted"), 1.0);

    // Asked again, Alice opens a new circuit.
    echoed_through(&node, &alice, &bob, b"again").await;
    answered(&metrics, "Circuit", 2.0).await;
    assert_eq!(metrics.relay_events("CircuitReqAccepted"), 2.0);
}
