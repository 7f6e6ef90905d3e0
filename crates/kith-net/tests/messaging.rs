//! Direct requests between devices over `/kith/msg/1.0.0`, on the memory
//! transport: round trips, size limits on both sides (including against a
//! peer that ignores them), timeouts, unanswered requests, and a device
//! reachable only through a relay circuit.

mod common;

use std::io;
use std::time::Duration;

use common::{Peer, memory_config, memory_swarm, start, start_nodes, within};
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use kith_net::{
    Config, Event, MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES, MESSAGE_PROTOCOL, Multiaddr, NetError,
    Protocol, RelayReservation, Role,
};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{StreamProtocol, Swarm};

/// A client on the memory transport that publishes no presence and knows
/// no bootstrap node: two of them talk directly.
async fn lone_client(adjust: impl FnOnce(&mut Config)) -> Peer {
    let (mut config, account) = memory_config(Role::Client, Vec::new());
    config.presence = None;
    adjust(&mut config);
    start(config, account).await
}

fn echo(data: &[u8]) -> Option<Vec<u8>> {
    let mut out = b"echo:".to_vec();
    out.extend_from_slice(data);
    Some(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_is_answered_and_later_ones_reuse_the_connection() {
    let alice = lone_client(|_| {}).await;
    let mut bob = lone_client(|_| {}).await;
    bob.answer_requests(echo);

    let answer = within(
        Duration::from_secs(10),
        alice
            .client
            .request(bob.peer_id(), vec![bob.addr.clone()], b"hello".to_vec()),
    )
    .await
    .expect("answered");
    assert_eq!(answer, b"echo:hello");

    // No addresses this time: only the open connection can carry it.
    let answer = alice
        .client
        .request(bob.peer_id(), Vec::new(), b"again".to_vec())
        .await
        .expect("answered over the existing connection");
    assert_eq!(answer, b"echo:again");

    // Bob answers over the connection Alice opened.
    let mut alice = alice;
    alice.answer_requests(echo);
    let answer = bob
        .client
        .request(alice.peer_id(), Vec::new(), b"back".to_vec())
        .await
        .expect("answered the other way");
    assert_eq!(answer, b"echo:back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_requests_to_one_peer_are_all_answered_in_kind() {
    // More than the per-peer window of 64: the rest wait their turn.
    let alice = lone_client(|_| {}).await;
    let mut bob = lone_client(|_| {}).await;
    bob.answer_requests(echo);
    alice
        .client
        .connect(bob.peer_id(), vec![bob.addr.clone()])
        .await
        .expect("connected");
    let mut pending = futures::stream::FuturesUnordered::new();
    for i in 0..300u32 {
        let client = alice.client.clone();
        let peer = bob.peer_id();
        pending.push(async move {
            let data = i.to_be_bytes().to_vec();
            (i, client.request(peer, Vec::new(), data).await)
        });
    }
    within(Duration::from_secs(30), async {
        while let Some((i, answer)) = pending.next().await {
            let mut want = b"echo:".to_vec();
            want.extend_from_slice(&i.to_be_bytes());
            assert_eq!(answer.expect("answered"), want);
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_frames_pass_and_larger_ones_are_refused_with_typed_errors() {
    let alice = lone_client(|_| {}).await;
    let mut bob = lone_client(|_| {}).await;
    // Bob answers with the size he got, or with an oversized answer when
    // asked for one.
    bob.answer_requests(|data| match data {
        b"big answer" => Some(vec![0; MAX_RESPONSE_BYTES + 1]),
        b"largest answer" => Some(vec![0; MAX_RESPONSE_BYTES]),
        _ => Some(u32::try_from(data.len()).unwrap().to_be_bytes().to_vec()),
    });
    let bob_id = bob.peer_id();
    let addrs = vec![bob.addr.clone()];

    let answer = alice
        .client
        .request(bob_id, addrs.clone(), vec![7; MAX_REQUEST_BYTES])
        .await
        .expect("the largest request passes");
    assert_eq!(
        answer,
        u32::try_from(MAX_REQUEST_BYTES).unwrap().to_be_bytes()
    );

    assert_eq!(
        alice
            .client
            .request(bob_id, addrs.clone(), vec![7; MAX_REQUEST_BYTES + 1])
            .await,
        Err(NetError::TooLarge {
            size: MAX_REQUEST_BYTES + 1,
            max: MAX_REQUEST_BYTES
        }),
        "refused before sending"
    );

    let answer = alice
        .client
        .request(bob_id, addrs.clone(), b"largest answer".to_vec())
        .await
        .expect("the largest answer passes");
    assert_eq!(answer.len(), MAX_RESPONSE_BYTES);

    // Bob's network layer will not send an oversized answer: Alice hears
    // that there is none.
    let result = alice
        .client
        .request(bob_id, addrs, b"big answer".to_vec())
        .await;
    assert!(matches!(result, Err(NetError::Request(_))), "{result:?}");
}

// ---- a peer that ignores the limits ----

/// Frames like Kith's, with no limit on either side.
#[derive(Clone, Default)]
struct Unbounded;

async fn read_any<T: AsyncRead + Unpin + Send>(io: &mut T) -> io::Result<Vec<u8>> {
    let mut header = [0u8; 4];
    io.read_exact(&mut header).await?;
    let mut data = vec![0; u32::from_be_bytes(header) as usize];
    io.read_exact(&mut data).await?;
    Ok(data)
}

async fn write_any<T: AsyncWrite + Unpin + Send>(io: &mut T, data: Vec<u8>) -> io::Result<()> {
    io.write_all(&u32::try_from(data.len()).unwrap().to_be_bytes())
        .await?;
    io.write_all(&data).await?;
    io.flush().await
}

impl request_response::Codec for Unbounded {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_any(io).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_any(io).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        data: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_any(io, data).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        data: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_any(io, data).await
    }
}

type Rogue = Swarm<request_response::Behaviour<Unbounded>>;

fn rogue() -> Rogue {
    memory_swarm(|_| {
        request_response::Behaviour::with_codec(
            Unbounded,
            [(MESSAGE_PROTOCOL, ProtocolSupport::Full)],
            request_response::Config::default(),
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frames_from_a_peer_that_ignores_the_limits_are_refused_unread() {
    let mut bob = lone_client(|_| {}).await;
    let mut bob_requests = bob.take_requests();

    // A request over the limit: Bob reads its length and stops there.
    let mut rogue = rogue();
    let id = rogue.behaviour_mut().send_request_with_addresses(
        &bob.peer_id(),
        vec![1; MAX_REQUEST_BYTES + 1],
        vec![bob.addr.clone()],
    );
    let failed = within(Duration::from_secs(20), async {
        loop {
            match rogue.select_next_some().await {
                SwarmEvent::Behaviour(request_response::Event::OutboundFailure {
                    request_id,
                    ..
                }) if request_id == id => return true,
                SwarmEvent::Behaviour(request_response::Event::Message { .. }) => return false,
                _ => {}
            }
        }
    })
    .await;
    assert!(failed, "the oversized request got an answer");
    assert!(
        bob_requests.try_recv().is_err(),
        "the oversized request reached the application"
    );

    // An answer over the limit: Alice refuses it with a typed error.
    rogue
        .listen_on("/memory/0".parse().expect("addr"))
        .expect("listen");
    let rogue_addr = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = rogue.select_next_some().await {
            break address;
        }
    };
    let rogue_id = *rogue.local_peer_id();
    tokio::spawn(async move {
        loop {
            if let SwarmEvent::Behaviour(request_response::Event::Message {
                message: request_response::Message::Request { channel, .. },
                ..
            }) = rogue.select_next_some().await
            {
                let _ = rogue
                    .behaviour_mut()
                    .send_response(channel, vec![2; 100 * 1024]);
            }
        }
    });
    let alice = lone_client(|_| {}).await;
    let result = within(
        Duration::from_secs(20),
        alice
            .client
            .request(rogue_id, vec![rogue_addr], b"hi".to_vec()),
    )
    .await;
    assert_eq!(
        result,
        Err(NetError::TooLarge {
            size: 100 * 1024,
            max: MAX_RESPONSE_BYTES
        })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_nobody_answers_times_out() {
    let alice = lone_client(|c| c.timers.request_timeout = Duration::from_millis(500)).await;
    let mut bob = lone_client(|_| {}).await;
    let mut requests = bob.take_requests();
    // Bob's application holds every request and never answers.
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Some(request) = requests.recv().await {
            held.push(request);
        }
    });
    let started = tokio::time::Instant::now();
    let result = within(
        Duration::from_secs(10),
        alice
            .client
            .request(bob.peer_id(), vec![bob.addr.clone()], b"anyone?".to_vec()),
    )
    .await;
    assert_eq!(result, Err(NetError::Timeout));
    assert!(started.elapsed() >= Duration::from_millis(450));
    hold.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_request_fails_at_once_for_its_sender() {
    let alice = lone_client(|c| c.timers.request_timeout = Duration::from_secs(20)).await;
    let mut bob = lone_client(|_| {}).await;
    bob.answer_requests(|_| None);
    let result = within(
        Duration::from_secs(5),
        alice
            .client
            .request(bob.peer_id(), vec![bob.addr.clone()], b"hello?".to_vec()),
    )
    .await;
    assert!(matches!(result, Err(NetError::Request(_))), "{result:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_to_an_unreachable_peer_fails_to_dial() {
    let alice = lone_client(|_| {}).await;
    let bob = lone_client(|_| {}).await;
    let bob_id = bob.peer_id();
    let bob_addr = bob.addr.clone();
    bob.stop().await;
    let result = within(
        Duration::from_secs(10),
        alice.client.request(bob_id, vec![bob_addr], b"hi".to_vec()),
    )
    .await;
    assert!(
        matches!(result, Err(NetError::Dial { peer, .. }) if peer == bob_id),
        "{result:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_reachable_only_through_a_relay_answers_requests() {
    let nodes = start_nodes(1).await;
    let relay = &nodes[0];
    let (mut config, account) = memory_config(Role::Client, vec![relay.p2p_addr()]);
    config.relay_reservation = RelayReservation::Always;
    let mut bob = start(config, account).await;
    let relay_id = relay.peer_id();
    bob.wait_event(|e| {
        matches!(e, Event::RelayReserved { relay } if *relay == relay_id).then_some(())
    })
    .await;
    bob.answer_requests(echo);

    let circuit: Multiaddr = relay
        .p2p_addr()
        .with(Protocol::P2pCircuit)
        .with(Protocol::P2p(bob.peer_id()));
    let alice = lone_client(|_| {}).await;
    let answer = within(
        Duration::from_secs(20),
        alice
            .client
            .request(bob.peer_id(), vec![circuit], b"via relay".to_vec()),
    )
    .await
    .expect("answered through the relay");
    assert_eq!(answer, b"echo:via relay");
}
