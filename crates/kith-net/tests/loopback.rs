//! Direct requests over real TCP on 127.0.0.1 (Noise, Yamux, lazy protocol
//! negotiation): a round trip, and round-trip times that show no extra
//! network round trip or Nagle delay per request.

use std::time::{Duration, Instant};

use futures::StreamExt;
use kith_net::{Client, Config, Event, RelayReservation, Role, TransportKind};
use kith_proto::DeviceKeypair;

struct Device {
    client: Client,
    addr: kith_net::Multiaddr,
}

async fn device(answer: bool) -> Device {
    let mut config = Config::new(DeviceKeypair::generate(), Role::Client);
    config.transport = TransportKind::Network;
    config.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().expect("addr")];
    config.relay_reservation = RelayReservation::Never;
    let (client, mut events, event_loop) = kith_net::new(config, None).expect("starts");
    tokio::spawn(event_loop.run());
    tokio::spawn(async move {
        while let Some(event) = events.next().await {
            if let Event::Request(request) = event
                && answer
            {
                let data = request.data.clone();
                request.respond(data);
            }
        }
    });
    let addr = client
        .listen_addrs()
        .await
        .expect("listening")
        .into_iter()
        .next()
        .expect("one address");
    assert!(
        addr.to_string().starts_with("/ip4/127.0.0.1/tcp/"),
        "{addr}"
    );
    Device { client, addr }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_round_trip_over_loopback_tcp() {
    let alice = device(false).await;
    let bob = device(true).await;
    let bob_id = bob.client.peer_id();

    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        alice
            .client
            .request(bob_id, vec![bob.addr.clone()], b"over tcp".to_vec()),
    )
    .await
    .expect("in time")
    .expect("answered");
    assert_eq!(answer, b"over tcp");

    let body = vec![0x42; 100];
    let mut samples = Vec::with_capacity(200);
    for _ in 0..200 {
        let start = Instant::now();
        let answer = alice
            .client
            .request(bob_id, Vec::new(), body.clone())
            .await
            .expect("answered");
        samples.push(start.elapsed());
        assert_eq!(answer, body);
    }
    samples.sort();
    let p50 = samples[samples.len() / 2];
    eprintln!(
        "loopback request round trip: p50 {p50:?}, max {:?}",
        samples[samples.len() - 1]
    );
    // Generous for debug builds on a loaded machine; a Nagle or
    // delayed-ACK stall would show up as ~40 ms here.
    assert!(p50 < Duration::from_millis(20), "p50 {p50:?}");
}
