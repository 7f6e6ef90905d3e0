//! Abuse limits, driven by real libp2p swarms that misbehave on purpose
//! (the memory transport, or TCP on 127.0.0.0/8): request streams that
//! stall or trickle (slow loris), more streams per connection than
//! allowed, truncated and malformed frames, junk instead of a handshake,
//! a flood of requests nobody answers, too many connections from one peer
//! and in total, and sockets that connect and say nothing. Each test checks
//! what the attacker sees, that the application never sees the bad
//! requests, and that an honest peer is still served.
//!
//! The numbers these show are in `docs/network.md`, "Limits".

mod common;

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Peer, memory_config, memory_swarm, start, within};
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use kith_net::{
    Client, Config, Event, MAILBOX_PROTOCOL, MAX_MAILBOX_REQUEST_BYTES, MAX_REQUEST_BYTES,
    MESSAGE_PROTOCOL, Multiaddr, NetError, PeerId, Protocol, RelayReservation, Role, TransportKind,
};
use kith_proto::DeviceKeypair;
use libp2p::StreamProtocol;
use libp2p::request_response::{self, OutboundFailure, ProtocolSupport};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{SwarmEvent, dummy};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

// ---- victims ----

/// A client on the memory transport that knows nobody, with `adjust`
/// applied to its configuration.
async fn memory_client(adjust: impl FnOnce(&mut Config)) -> Peer {
    let (mut config, account) = memory_config(Role::Client, Vec::new());
    config.presence = None;
    adjust(&mut config);
    start(config, account).await
}

/// A client listening on TCP at 127.0.0.1, with `adjust` applied.
async fn tcp_client(adjust: impl FnOnce(&mut Config)) -> Peer {
    let mut config = Config::new(DeviceKeypair::generate(), Role::Client);
    config.transport = TransportKind::Network;
    config.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().expect("addr")];
    config.relay_reservation = RelayReservation::Never;
    adjust(&mut config);
    start(config, None).await
}

fn socket_addr(addr: &Multiaddr) -> SocketAddr {
    let mut ip = None;
    for protocol in addr.iter() {
        match protocol {
            Protocol::Ip4(found) => ip = Some(found),
            Protocol::Tcp(port) => return SocketAddr::from((ip.expect("ip first"), port)),
            _ => {}
        }
    }
    panic!("no TCP address in {addr}");
}

/// What reached a victim's application: (protocol, sender, payload).
type Seen = Arc<Mutex<Vec<(StreamProtocol, PeerId, Vec<u8>)>>>;

/// Answers every direct and mailbox request with `echo:` and the payload,
/// or holds it unanswered while `hold` is set; returns what arrived.
fn serve(peer: &mut Peer, hold: Arc<AtomicBool>) -> Seen {
    let seen = Seen::default();
    let (others_tx, others) = mpsc::channel(1024);
    let mut events = std::mem::replace(&mut peer.events, others);
    let log = Arc::clone(&seen);
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Some(event) = events.recv().await {
            let (protocol, request) = match event {
                Event::Request(request) => (MESSAGE_PROTOCOL, request),
                Event::MailboxRequest(request) => (MAILBOX_PROTOCOL, request),
                other => {
                    let _ = others_tx.try_send(other);
                    continue;
                }
            };
            log.lock()
                .expect("log")
                .push((protocol, request.peer, request.data.clone()));
            if hold.load(Ordering::SeqCst) {
                held.push(request);
            } else {
                let answer = [b"echo:".as_slice(), &request.data].concat();
                request.respond(answer);
            }
        }
    });
    seen
}

fn seen_from(seen: &Seen, peer: PeerId) -> Vec<Vec<u8>> {
    seen.lock()
        .expect("log")
        .iter()
        .filter(|(_, from, _)| *from == peer)
        .map(|(_, _, data)| data.clone())
        .collect()
}

/// A client that only dials out over TCP. With no listener its
/// connections come from ephemeral ports: libp2p binds outgoing TCP
/// connections to the listening port when there is one, and with the
/// loopback as busy as these tests make it, another socket sometimes
/// holds that port already.
fn tcp_dialer() -> Client {
    let mut config = Config::new(DeviceKeypair::generate(), Role::Client);
    config.relay_reservation = RelayReservation::Never;
    let (client, _events, event_loop) = kith_net::new(config, None).expect("starts");
    tokio::spawn(event_loop.run());
    client
}

/// A request from `from` to `to` over `protocol`, within 10 s.
async fn ask(from: &Client, to: &Peer, protocol: StreamProtocol) -> Result<Vec<u8>, NetError> {
    let (peer, addrs, data) = (to.peer_id(), vec![to.addr.clone()], b"honest".to_vec());
    within(Duration::from_secs(10), async {
        if protocol == MAILBOX_PROTOCOL {
            from.mailbox_request(peer, addrs, data).await
        } else {
            from.request(peer, addrs, data).await
        }
    })
    .await
}

/// A direct request from `from` to `to`, retried until it is answered.
async fn answered_eventually(from: &Client, to: &Peer) -> Vec<u8> {
    within(Duration::from_secs(15), async {
        loop {
            match ask(from, to, MESSAGE_PROTOCOL).await {
                Ok(answer) => return answer,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    })
    .await
}

/// The next `count` items from `queue`, within `limit`.
async fn next<T>(queue: &mut mpsc::Receiver<T>, count: usize, limit: Duration) -> Vec<T> {
    within(limit, async {
        let mut out = Vec::with_capacity(count);
        while out.len() < count {
            out.push(queue.recv().await.expect("sender alive"));
        }
        out
    })
    .await
}

// ---- a peer that writes what it likes on request streams ----

/// What one rogue request writes on its stream.
#[derive(Debug, Clone)]
enum Plan {
    /// A well-formed frame.
    Honest(Vec<u8>),
    /// These bytes, then the stream closed for writing.
    Raw(Vec<u8>),
    /// A header announcing `announce` bytes, `send` of them, then nothing:
    /// every 100 ms an empty write (no payload reaches the reader) to
    /// notice the stream being cut.
    Stall { announce: usize, send: usize },
    /// A header announcing `announce` bytes, then one byte every `every`.
    Trickle { announce: usize, every: Duration },
}

/// A rogue request's stream was cut under it: `after` its first write,
/// with `sent` bytes of body sent.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("cut after {after:?} and {sent} bytes")]
struct Cut {
    after: Duration,
    sent: usize,
}

/// How long a rogue request stalls or trickles before giving up: past
/// every `within` bound below, so a stream that is never cut fails the
/// test.
const ROGUE_PATIENCE: Duration = Duration::from_secs(60);

#[derive(Clone)]
struct RogueCodec {
    /// Requests whose first bytes are written.
    opened: Arc<AtomicUsize>,
}

fn header(announce: usize) -> [u8; 4] {
    u32::try_from(announce).expect("small").to_be_bytes()
}

impl RogueCodec {
    async fn carry_out<T>(&self, io: &mut T, plan: Plan) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        let started = Instant::now();
        let cut = |sent: usize| {
            move |_: io::Error| {
                io::Error::other(Cut {
                    after: started.elapsed(),
                    sent,
                })
            }
        };
        let opened = || self.opened.fetch_add(1, Ordering::SeqCst);
        match plan {
            Plan::Honest(data) => {
                io.write_all(&[header(data.len()).as_slice(), &data].concat())
                    .await?;
            }
            Plan::Raw(bytes) => io.write_all(&bytes).await?,
            Plan::Stall { announce, send } => {
                let frame = [header(announce).as_slice(), &vec![7; send]].concat();
                io.write_all(&frame).await.map_err(cut(0))?;
                io.flush().await.map_err(cut(0))?;
                opened();
                while started.elapsed() < ROGUE_PATIENCE {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    assert_eq!(io.write(&[]).await.map_err(cut(send))?, 0);
                    io.flush().await.map_err(cut(send))?;
                }
                return Err(io::Error::other("never cut"));
            }
            Plan::Trickle { announce, every } => {
                io.write_all(&header(announce)).await.map_err(cut(0))?;
                io.flush().await.map_err(cut(0))?;
                opened();
                let mut sent = 0;
                while started.elapsed() < ROGUE_PATIENCE && sent < announce {
                    tokio::time::sleep(every).await;
                    io.write_all(&[7]).await.map_err(cut(sent))?;
                    io.flush().await.map_err(cut(sent))?;
                    sent += 1;
                }
                return Err(io::Error::other("never cut"));
            }
        }
        io.flush().await
    }
}

impl request_response::Codec for RogueCodec {
    type Protocol = StreamProtocol;
    type Request = Plan;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, _: &mut T) -> io::Result<Plan>
    where
        T: AsyncRead + Unpin + Send,
    {
        Err(io::Error::other("the rogue takes no requests"))
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        let mut answer = Vec::new();
        io.read_to_end(&mut answer).await?;
        match answer.get(4..) {
            Some(body) => Ok(body.to_vec()),
            None => Err(io::ErrorKind::UnexpectedEof.into()),
        }
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        plan: Plan,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        self.carry_out(io, plan).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        _: &mut T,
        _: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        Err(io::Error::other("the rogue answers nothing"))
    }
}

/// How a rogue request ended.
#[derive(Debug)]
enum Outcome {
    Answered(Vec<u8>),
    Cut(Cut),
    /// Failed otherwise: refused, closed, or reset before it was written.
    Failed(String),
}

/// A rogue peer with its own event loop: it sends the requests it is given
/// to the victim and reports how each ended.
struct Rogue {
    peer_id: PeerId,
    requests: mpsc::Sender<Plan>,
    outcomes: mpsc::Receiver<(Instant, Outcome)>,
    opened: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Rogue {
    /// Connects to `victim` (one connection) over the memory transport and
    /// speaks `protocol` to it.
    async fn connect(victim: &Peer, protocol: StreamProtocol) -> Self {
        let opened = Arc::new(AtomicUsize::new(0));
        let codec = RogueCodec {
            opened: Arc::clone(&opened),
        };
        let mut swarm = memory_swarm(|_| {
            request_response::Behaviour::with_codec(
                codec,
                [(protocol, ProtocolSupport::Outbound)],
                request_response::Config::default()
                    .with_request_timeout(ROGUE_PATIENCE)
                    .with_max_concurrent_streams(1024),
            )
        });
        let target = victim.peer_id();
        swarm
            .dial(victim.p2p_addr())
            .expect("the rogue dials the victim");
        within(Duration::from_secs(10), async {
            loop {
                match swarm.select_next_some().await {
                    SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == target => {
                        break;
                    }
                    SwarmEvent::OutgoingConnectionError { error, .. } => {
                        panic!("the rogue could not connect: {error}")
                    }
                    _ => {}
                }
            }
        })
        .await;
        let peer_id = *swarm.local_peer_id();
        let (requests, mut plans) = mpsc::channel::<Plan>(1024);
        let (outcome_tx, outcomes) = mpsc::channel(1024);
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    Some(plan) = plans.recv() => {
                        swarm.behaviour_mut().send_request(&target, plan);
                    }
                    event = swarm.select_next_some() => {
                        let outcome = match event {
                            SwarmEvent::Behaviour(request_response::Event::Message {
                                message: request_response::Message::Response { response, .. },
                                ..
                            }) => Outcome::Answered(response),
                            SwarmEvent::Behaviour(request_response::Event::OutboundFailure {
                                error, ..
                            }) => classify(error),
                            _ => continue,
                        };
                        let _ = outcome_tx.try_send((Instant::now(), outcome));
                    }
                }
            }
        });
        Self {
            peer_id,
            requests,
            outcomes,
            opened,
            task,
        }
    }

    async fn send(&self, plan: Plan) {
        self.requests.send(plan).await.expect("rogue running");
    }

    /// Sends a well-formed request and checks that it is answered.
    async fn is_answered(&mut self, data: &[u8]) {
        self.send(Plan::Honest(data.to_vec())).await;
        let (_, outcome) = self.outcomes(1, Duration::from_secs(10)).await.remove(0);
        let want = [b"echo:".as_slice(), data].concat();
        assert!(
            matches!(&outcome, Outcome::Answered(a) if *a == want),
            "{outcome:?}"
        );
    }

    /// Waits until `count` requests have written their first bytes.
    async fn wait_opened(&self, count: usize) {
        within(Duration::from_secs(15), async {
            while self.opened.load(Ordering::SeqCst) < count {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
    }

    /// The next `count` outcomes, within `limit`.
    async fn outcomes(&mut self, count: usize, limit: Duration) -> Vec<(Instant, Outcome)> {
        next(&mut self.outcomes, count, limit).await
    }
}

impl Drop for Rogue {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn classify(error: OutboundFailure) -> Outcome {
    if let OutboundFailure::Io(e) = &error
        && let Some(cut) = e.get_ref().and_then(|inner| inner.downcast_ref::<Cut>())
    {
        return Outcome::Cut(*cut);
    }
    Outcome::Failed(error.to_string())
}

// ---- slow loris ----

/// Body bytes a stalling request sends before it stops.
const STALL_SENT: usize = 1000;

/// Shortened request timeout of the victims below.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(4);

async fn stalled_streams_are_cut(target: &mut Peer, protocol: StreamProtocol, announce: usize) {
    let seen = serve(target, Arc::default());
    let mut rogue = Rogue::connect(target, protocol.clone()).await;
    for _ in 0..8 {
        rogue
            .send(Plan::Stall {
                announce,
                send: 1000,
            })
            .await;
        rogue
            .send(Plan::Trickle {
                announce,
                every: Duration::from_millis(250),
            })
            .await;
    }
    rogue.wait_opened(16).await;

    // An honest peer is answered while the rogue holds its streams.
    let honest = memory_client(|_| {}).await;
    assert_eq!(
        ask(&honest.client, target, protocol.clone()).await,
        Ok(b"echo:honest".to_vec())
    );
    let answered_at = Instant::now();

    let outcomes = rogue.outcomes(16, Duration::from_secs(20)).await;
    let mut cuts: Vec<Cut> = Vec::new();
    for (at, outcome) in &outcomes {
        let Outcome::Cut(cut) = outcome else {
            panic!("a stalled request ended otherwise: {outcome:?}");
        };
        assert!(
            *at > answered_at,
            "a stalled stream was cut before the honest request was answered"
        );
        // Never before the timeout; the upper bound is generous for a
        // loaded machine, and far below the rogue's patience.
        assert!(cut.after >= REQUEST_TIMEOUT * 3 / 4, "{cut:?}");
        assert!(
            cut.after < REQUEST_TIMEOUT + Duration::from_secs(10),
            "{cut:?}"
        );
        cuts.push(*cut);
    }
    // Trickling bytes does not extend the deadline.
    let trickled: Vec<usize> = cuts
        .iter()
        .map(|cut| cut.sent)
        .filter(|sent| *sent != STALL_SENT)
        .collect();
    assert_eq!(trickled.len(), 8, "{cuts:?}");
    assert!(trickled.iter().all(|sent| *sent >= 2), "{trickled:?}");
    let afters = cuts.iter().map(|cut| cut.after);
    eprintln!(
        "{protocol}: 16 stalled streams cut {:?} to {:?} after they opened \
         (request timeout {REQUEST_TIMEOUT:?}); bytes trickled by then: {trickled:?}",
        afters.clone().min().expect("some"),
        afters.max().expect("some"),
    );

    assert!(
        seen_from(&seen, rogue.peer_id).is_empty(),
        "a stalled request reached the application"
    );
    // The rogue is not shut out: a well-formed request is answered.
    rogue.is_answered(b"sorry").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_and_trickling_message_streams_are_cut_at_the_request_timeout() {
    let mut victim = memory_client(|c| c.timers.request_timeout = REQUEST_TIMEOUT).await;
    stalled_streams_are_cut(&mut victim, MESSAGE_PROTOCOL, MAX_REQUEST_BYTES).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_and_trickling_mailbox_streams_are_cut_at_the_request_timeout() {
    // A volunteer node, as kithd runs.
    let (mut config, account) = memory_config(Role::Node, Vec::new());
    config.timers.request_timeout = REQUEST_TIMEOUT;
    assert!(config.mailbox_volunteer);
    let mut node = start(config, account).await;
    stalled_streams_are_cut(&mut node, MAILBOX_PROTOCOL, MAX_MAILBOX_REQUEST_BYTES).await;
}

// ---- streams per connection ----

/// `MESSAGE_STREAMS_PER_CONNECTION` in `src/behaviour.rs`.
const STREAMS_PER_CONNECTION: usize = 256;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_over_the_per_connection_limit_are_dropped_at_once() {
    let timeout = Duration::from_secs(8);
    let mut victim = memory_client(|c| c.timers.request_timeout = timeout).await;
    let seen = serve(&mut victim, Arc::default());
    let mut rogue = Rogue::connect(&victim, MESSAGE_PROTOCOL).await;
    let extra = 44;
    for _ in 0..STREAMS_PER_CONNECTION + extra {
        rogue
            .send(Plan::Trickle {
                announce: MAX_REQUEST_BYTES,
                every: Duration::from_millis(250),
            })
            .await;
    }

    // The streams past the limit are reset as soon as they are opened.
    let early = rogue.outcomes(extra, Duration::from_secs(15)).await;
    for (_, outcome) in &early {
        assert!(
            matches!(outcome, Outcome::Cut(cut) if cut.after < timeout / 2),
            "{outcome:?}"
        );
    }
    // The others are held: an honest peer is answered meanwhile.
    let honest = memory_client(|_| {}).await;
    assert_eq!(
        ask(&honest.client, &victim, MESSAGE_PROTOCOL).await,
        Ok(b"echo:honest".to_vec())
    );
    let answered_at = Instant::now();

    let held = rogue
        .outcomes(STREAMS_PER_CONNECTION, Duration::from_secs(20))
        .await;
    for (at, outcome) in &held {
        assert!(
            matches!(outcome, Outcome::Cut(cut) if cut.after >= timeout * 3 / 4),
            "{outcome:?}"
        );
        assert!(*at > answered_at);
    }
    assert!(seen_from(&seen, rogue.peer_id).is_empty());
}

// ---- truncated and malformed frames ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_and_malformed_frames_are_refused_at_once_and_reach_nobody() {
    let timeout = Duration::from_secs(20);
    let mut victim = memory_client(|c| c.timers.request_timeout = timeout).await;
    let seen = serve(&mut victim, Arc::default());
    let mut rogue = Rogue::connect(&victim, MESSAGE_PROTOCOL).await;

    let mut garbage = vec![0u8; 4096];
    let mut x = 0x9e37_79b9_u32;
    for byte in &mut garbage {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *byte = x.to_le_bytes()[0];
    }
    garbage[0] = 0xc3; // a length far over the limit
    let truncated = [header(1000).as_slice(), &[1; 10]].concat();
    let plans = [
        ("a header promising 1,000 bytes and 10 sent", truncated),
        ("a header cut short", vec![0, 0]),
        ("nothing at all", Vec::new()),
        ("4 KiB of random bytes", garbage),
        (
            "a length of 4 GiB",
            [[0xff; 4].as_slice(), b"and then some"].concat(),
        ),
        (
            "an HTTP request",
            b"GET / HTTP/1.1\r\nHost: kith\r\n\r\n".to_vec(),
        ),
    ];
    for (_, bytes) in &plans {
        rogue.send(Plan::Raw(bytes.clone())).await;
    }
    // Every one fails well before the request timeout: the victim closes
    // the stream as soon as the frame is broken or ends.
    let outcomes = rogue.outcomes(plans.len(), Duration::from_secs(10)).await;
    for (_, outcome) in &outcomes {
        let Outcome::Failed(reason) = outcome else {
            panic!("a broken frame ended otherwise: {outcome:?}");
        };
        eprintln!("broken frame: the rogue saw {reason}");
    }
    assert!(
        seen_from(&seen, rogue.peer_id).is_empty(),
        "a broken frame reached the application"
    );

    // The victim keeps serving, the rogue's own connection included.
    rogue.is_answered(b"well formed").await;
    let honest = memory_client(|_| {}).await;
    assert_eq!(
        ask(&honest.client, &victim, MESSAGE_PROTOCOL).await,
        Ok(b"echo:honest".to_vec())
    );
    assert_eq!(
        seen_from(&seen, rogue.peer_id),
        vec![b"well formed".to_vec()]
    );
}

/// Reads from `socket` until the other side closes it; how long that took.
async fn closed_after(mut socket: TcpStream) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match socket.read(&mut buf).await {
            Ok(0) | Err(_) => return started.elapsed(),
            Ok(_) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_instead_of_a_handshake_is_dropped_and_the_victim_keeps_serving() {
    let mut victim = tcp_client(|_| {}).await;
    let seen = serve(&mut victim, Arc::default());
    let target = socket_addr(&victim.addr);

    let mut http = b"GET / HTTP/1.1\r\nHost: kith\r\n\r\n".to_vec();
    http.resize(1024, b'x');
    // multistream-select as a dialer speaks it, Noise agreed, and then a
    // first Noise message of 5 bytes (it must carry a 32-byte key).
    let broken_noise = [
        b"\x13/multistream/1.0.0\n\x07/noise\n".as_slice(),
        b"\x00\x05hello",
    ]
    .concat();
    let junk = [
        ("an HTTP request", http),
        ("0xff bytes", vec![0xff; 1024]),
        ("a broken Noise handshake", broken_noise),
    ];
    let mut closing = Vec::new();
    for (what, bytes) in junk {
        for _ in 0..4 {
            let mut socket = TcpStream::connect(target).await.expect("connects");
            socket.write_all(&bytes).await.expect("writes");
            closing.push((what, tokio::spawn(closed_after(socket))));
        }
    }
    for (what, closed) in closing {
        // libp2p gives up on a silent handshake after 10 s: closing well
        // before that means the junk itself was refused.
        let after = within(Duration::from_secs(9), closed)
            .await
            .expect("reader");
        assert!(after < Duration::from_secs(8), "{what}: {after:?}");
    }

    let honest = tcp_dialer();
    assert_eq!(
        ask(&honest, &victim, MESSAGE_PROTOCOL).await,
        Ok(b"echo:honest".to_vec())
    );
    assert_eq!(seen.lock().expect("log").len(), 1);
}

// ---- a flood of requests ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_flood_is_held_to_the_waiting_limit_and_the_victim_recovers() {
    let max_waiting = 32;
    let flood = 200;
    let timeout = Duration::from_secs(8);
    let mut victim = memory_client(|c| {
        c.timers.request_timeout = timeout;
        c.max_inbound_requests = max_waiting;
    })
    .await;
    // The application holds every request: none is answered.
    let hold = Arc::new(AtomicBool::new(true));
    let seen = serve(&mut victim, Arc::clone(&hold));
    let mut rogue = Rogue::connect(&victim, MESSAGE_PROTOCOL).await;
    let started = Instant::now();
    for i in 0..flood {
        rogue
            .send(Plan::Honest(format!("flood {i}").into_bytes()))
            .await;
    }

    // Past the limit, requests are refused at once...
    let refused = rogue
        .outcomes(flood - max_waiting, Duration::from_secs(15))
        .await;
    for (_, outcome) in &refused {
        assert!(matches!(outcome, Outcome::Failed(_)), "{outcome:?}");
    }
    // ...while the waiting ones are held by the application (they cannot
    // time out before `timeout` has passed since the first was sent).
    within(Duration::from_secs(5), async {
        while seen_from(&seen, rogue.peer_id).len() < max_waiting {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        started.elapsed() < timeout,
        "the machine is too slow for this test"
    );
    assert_eq!(seen_from(&seen, rogue.peer_id).len(), max_waiting);
    assert!(
        rogue.outcomes.try_recv().is_err(),
        "a held request ended early"
    );

    // The limit is for the whole node: an honest request is refused too.
    let honest = memory_client(|_| {}).await;
    let refused = ask(&honest.client, &victim, MESSAGE_PROTOCOL).await;
    assert!(matches!(refused, Err(NetError::Request(_))), "{refused:?}");

    // The held requests time out and the victim recovers.
    let expired = rogue.outcomes(max_waiting, Duration::from_secs(15)).await;
    for (at, outcome) in &expired {
        assert!(matches!(outcome, Outcome::Failed(_)), "{outcome:?}");
        assert!(*at - started >= timeout * 3 / 4);
    }
    hold.store(false, Ordering::SeqCst);
    // (The event loop lets go of each a moment after libp2p has closed
    // its stream.)
    assert_eq!(
        answered_eventually(&honest.client, &victim).await,
        b"echo:honest"
    );
    rogue.is_answered(b"once more").await;
}

// ---- connection limits ----

/// Connections a crowd of swarms opened, and how they ended.
#[derive(Default)]
struct Tally {
    established: AtomicUsize,
    closed: AtomicUsize,
    failed: AtomicUsize,
}

impl Tally {
    fn open(&self) -> usize {
        self.established.load(Ordering::SeqCst) - self.closed.load(Ordering::SeqCst)
    }

    fn resolved(&self) -> usize {
        self.established.load(Ordering::SeqCst) + self.failed.load(Ordering::SeqCst)
    }
}

/// A peer that dialled the victim: its open connections, and its task,
/// which ends its swarm when the member is dropped.
struct Member {
    open: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for Member {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A new peer dialling `victim` `dials` times regardless of the
/// connections it already has.
fn member(victim: &Peer, dials: usize, tally: &Arc<Tally>) -> Member {
    let mut swarm = memory_swarm(|_| dummy::Behaviour);
    for _ in 0..dials {
        let opts = DialOpts::peer_id(victim.peer_id())
            .addresses(vec![victim.addr.clone()])
            .condition(PeerCondition::Always)
            .build();
        swarm.dial(opts).expect("dials");
    }
    let tally = Arc::clone(tally);
    let open = Arc::new(AtomicUsize::new(0));
    let mine = Arc::clone(&open);
    let task = tokio::spawn(async move {
        loop {
            match swarm.select_next_some().await {
                SwarmEvent::ConnectionEstablished { .. } => {
                    mine.fetch_add(1, Ordering::SeqCst);
                    tally.established.fetch_add(1, Ordering::SeqCst);
                }
                SwarmEvent::ConnectionClosed { .. } => {
                    mine.fetch_sub(1, Ordering::SeqCst);
                    tally.closed.fetch_add(1, Ordering::SeqCst);
                }
                SwarmEvent::OutgoingConnectionError { .. } => {
                    tally.failed.fetch_add(1, Ordering::SeqCst);
                }
                _ => {}
            }
        }
    });
    Member { open, task }
}

/// `peers` peers dialling `victim` `dials` times each, a few peers at a
/// time: all at once, they would also meet the limit on pending
/// connections.
async fn crowd(victim: &Peer, peers: usize, dials: usize, tally: &Arc<Tally>) -> Vec<Member> {
    let mut crowd = Vec::with_capacity(peers);
    while crowd.len() < peers {
        let batch = (peers - crowd.len()).min(8);
        crowd.extend((0..batch).map(|_| member(victim, dials, tally)));
        let want = crowd.len() * dials;
        within(Duration::from_secs(20), async {
            while tally.resolved() < want {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
    }
    crowd
}

/// Waits until at most `limit` connections stay open, and checks that
/// `limit` do, and still do a second later.
async fn settles_at(tally: &Tally, limit: usize) {
    within(Duration::from_secs(20), async {
        while tally.open() > limit {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(tally.open(), limit);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(tally.open(), limit);
}

fn default_limits() -> kith_net::ConnectionLimits {
    kith_net::ConnectionLimits::default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_peer_keeps_at_most_four_connections() {
    let mut victim = memory_client(|_| {}).await;
    let per_peer = default_limits().max_established_per_peer as usize;
    serve(&mut victim, Arc::default());
    let tally = Arc::default();
    let dials = 12;
    let rogue = member(&victim, dials, &tally);
    within(Duration::from_secs(20), async {
        while tally.resolved() < dials {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    settles_at(&tally, per_peer).await;
    assert_eq!(rogue.open.load(Ordering::SeqCst), per_peer);

    let honest = memory_client(|_| {}).await;
    assert_eq!(
        ask(&honest.client, &victim, MESSAGE_PROTOCOL).await,
        Ok(b"echo:honest".to_vec())
    );
}

/// Fills `victim`'s `total` connections with `peers` peers dialling
/// `dials` times each; an honest peer is refused; once one of the peers
/// holding connections leaves, it gets in.
async fn total_is_held(victim: &mut Peer, total: usize, peers: usize, dials: usize) {
    serve(victim, Arc::default());
    let tally = Arc::default();
    let started = Instant::now();
    let mut crowd = crowd(victim, peers, dials, &tally).await;
    settles_at(&tally, total).await;
    eprintln!(
        "{} connections from {peers} peers, refused down to {total}, in {:?}",
        peers * dials,
        started.elapsed()
    );

    let honest = memory_client(|_| {}).await;
    let refused = ask(&honest.client, victim, MESSAGE_PROTOCOL).await;
    assert!(refused.is_err(), "{refused:?}");

    // A peer holding connections leaves; the honest peer gets in.
    let leaving = crowd
        .iter()
        .position(|m| m.open.load(Ordering::SeqCst) > 0)
        .expect("a peer holding connections");
    drop(crowd.swap_remove(leaving));
    assert_eq!(
        answered_eventually(&honest.client, victim).await,
        b"echo:honest"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn established_connections_are_capped_in_total_and_freed_slots_are_reused() {
    let total = 16;
    let mut victim = memory_client(|c| c.limits.max_established = total).await;
    total_is_held(&mut victim, total as usize, 24, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_total_of_512_connections_holds_against_132_peers() {
    let total = default_limits().max_established as usize;
    let per_peer = default_limits().max_established_per_peer as usize;
    let mut victim = memory_client(|_| {}).await;
    // 528 connections, four from each peer.
    total_is_held(&mut victim, total, total / per_peer + 4, per_peer).await;
}

// ---- silent sockets (half-open handshakes) ----

/// TCP connections that never send a byte; closed when dropped.
struct Silent {
    /// How long each lasted until the victim closed it, in that order.
    closed: mpsc::Receiver<Duration>,
    tasks: Vec<JoinHandle<()>>,
}

impl Silent {
    /// Opens `count` connections from `from` to `to`.
    async fn open(from: Ipv4Addr, to: SocketAddr, count: usize) -> Self {
        let (closed_tx, closed) = mpsc::channel(count.max(1));
        let mut tasks = Vec::with_capacity(count);
        for _ in 0..count {
            let socket = TcpSocket::new_v4().expect("socket");
            socket
                .bind(SocketAddr::from((from, 0)))
                .expect("binds a loopback address");
            let stream = socket.connect(to).await.expect("connects");
            let closed_tx = closed_tx.clone();
            tasks.push(tokio::spawn(async move {
                let after = closed_after(stream).await;
                let _ = closed_tx.send(after).await;
            }));
        }
        Self { closed, tasks }
    }

    /// The next `count` closings, within `limit`.
    async fn closings(&mut self, count: usize, limit: Duration) -> Vec<Duration> {
        next(&mut self.closed, count, limit).await
    }
}

impl Drop for Silent {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

const ATTACKER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_sockets_from_one_address_hold_eight_handshakes_and_others_still_connect() {
    let per_ip = default_limits().max_pending_per_ip as usize;
    let mut victim = tcp_client(|_| {}).await;
    serve(&mut victim, Arc::default());
    let count = 100;
    let mut silent = Silent::open(ATTACKER, socket_addr(&victim.addr), count).await;
    // All but eight are closed at once.
    silent
        .closings(count - per_ip, Duration::from_secs(8))
        .await;

    // An honest peer (from 127.0.0.1) connects while the eight are held.
    let honest = tcp_dialer();
    assert_eq!(
        ask(&honest, &victim, MESSAGE_PROTOCOL).await,
        Ok(b"echo:honest".to_vec())
    );
    assert!(
        silent.closed.try_recv().is_err(),
        "a held socket was closed before the honest peer got in"
    );
    // The eight are dropped when the handshake timeout (10 s) passes.
    let held = silent.closings(per_ip, Duration::from_secs(15)).await;
    assert!(
        held.iter().all(|after| *after >= Duration::from_secs(7)),
        "{held:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_per_address_cap_silent_sockets_lock_everyone_out() {
    let total = default_limits().max_pending;
    let mut victim = tcp_client(|c| c.limits.max_pending_per_ip = total).await;
    serve(&mut victim, Arc::default());
    let silent = Silent::open(ATTACKER, socket_addr(&victim.addr), 100).await;

    let honest = tcp_dialer();
    let refused = ask(&honest, &victim, MESSAGE_PROTOCOL).await;
    assert!(matches!(refused, Err(NetError::Dial { .. })), "{refused:?}");

    // Once the attacker lets go, the honest peer gets in.
    drop(silent);
    assert_eq!(answered_eventually(&honest, &victim).await, b"echo:honest");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_addresses_can_still_fill_the_pending_total() {
    // What the per-address cap leaves: an attacker with total / per-address
    // addresses fills every pending slot again.
    let limits = default_limits();
    let addresses = limits.max_pending / limits.max_pending_per_ip;
    let mut victim = tcp_client(|_| {}).await;
    serve(&mut victim, Arc::default());
    let mut silent = Vec::new();
    for i in 0..addresses {
        let from = Ipv4Addr::new(127, 0, 1, u8::try_from(i + 1).expect("few"));
        let count = limits.max_pending_per_ip as usize;
        silent.push(Silent::open(from, socket_addr(&victim.addr), count).await);
    }
    let honest = tcp_dialer();
    let refused = ask(&honest, &victim, MESSAGE_PROTOCOL).await;
    assert!(matches!(refused, Err(NetError::Dial { .. })), "{refused:?}");
    // None of them was refused: all 64 are pending.
    for one in &mut silent {
        assert!(one.closed.try_recv().is_err());
    }
}
