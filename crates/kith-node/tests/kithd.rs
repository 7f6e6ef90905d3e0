//! Starts the real `kithd` binary on loopback and uses it as two clients
//! would: bootstrap through it, publish presence, find and connect to each
//! other directly and through its relay; then reads its metrics and stops it
//! with SIGTERM.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kith_net::{Client, Config, Event, Multiaddr, Protocol, RelayReservation, Role};
use kith_proto::presence::{PresenceKeys, PresenceShare};
use kith_proto::{AccountKeypair, DeviceKeypair};
use tokio::sync::mpsc as tokio_mpsc;

struct Kithd {
    child: Child,
    addrs: Vec<Multiaddr>,
    metrics: String,
}

impl Drop for Kithd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts kithd and waits for its addresses (stdout) and metrics address
/// (its log on stderr).
fn start_kithd(data_dir: &Path) -> Kithd {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kithd"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--listen", "/ip4/127.0.0.1/tcp/0"])
        .args(["--listen", "/ip4/127.0.0.1/udp/0/quic-v1"])
        .args(["--metrics", "127.0.0.1:0"])
        .env("KITHD_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kithd starts");
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::sync_channel::<String>(4);
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(at) = line.find("http://") {
                let _ = tx.send(
                    line[at + 7..]
                        .trim()
                        .trim_end_matches("/metrics")
                        .to_owned(),
                );
            }
        }
    });
    let mut lines = BufReader::new(stdout).lines();
    let addrs: Vec<Multiaddr> = (0..2)
        .map(|_| {
            lines
                .next()
                .expect("an address line")
                .expect("utf-8")
                .parse()
                .expect("a multiaddr")
        })
        .collect();
    let metrics = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("metrics address logged");
    Kithd {
        child,
        addrs,
        metrics,
    }
}

fn peer_of(addr: &Multiaddr) -> String {
    match addr.iter().last() {
        Some(Protocol::P2p(peer)) => peer.to_string(),
        other => panic!("address ends in {other:?}, not /p2p/"),
    }
}

struct TestClient {
    client: Client,
    events: tokio_mpsc::Receiver<Event>,
    share: PresenceShare,
}

async fn client(bootstrap: Multiaddr, reservation: RelayReservation) -> TestClient {
    let account = AccountKeypair::generate();
    let keys = PresenceKeys::derive(&account);
    let share = keys.share();
    let mut config = Config::new(DeviceKeypair::generate(), Role::Client);
    config.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().expect("addr")];
    config.bootstrap = vec![bootstrap];
    config.presence = Some(keys);
    config.relay_reservation = reservation;
    let (client, mut stream, event_loop) = kith_net::new(config, None).expect("client starts");
    tokio::spawn(event_loop.run());
    let (tx, events) = tokio_mpsc::channel(1024);
    tokio::spawn(async move {
        while let Some(event) = stream.next().await {
            let _ = tx.try_send(event);
        }
    });
    TestClient {
        client,
        events,
        share,
    }
}

async fn wait_for<T>(
    what: &str,
    events: &mut tokio_mpsc::Receiver<Event>,
    mut pick: impl FnMut(&Event) -> Option<T>,
) -> T {
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let event = events.recv().await.expect("events");
            eprintln!("{what}: {event:?}");
            if let Some(found) = pick(&event) {
                return found;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {what} in time"))
}

async fn published(client: &TestClient) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.client.publish_presence().await.is_err() {
        assert!(Instant::now() < deadline, "presence never published");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn scrape(addr: &str) -> String {
    let mut stream = TcpStream::connect(addr).expect("metrics endpoint answers");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: kithd\r\n\r\n")
        .expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
}

/// Sum of every sample of metric `name` (any labels).
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.starts_with(name)
                && (l[name.len()..].starts_with('{') || l[name.len()..].starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_meet_through_a_real_kithd() {
    let data = tempfile::tempdir().expect("tempdir");
    let kithd = start_kithd(data.path());
    let tcp = kithd
        .addrs
        .iter()
        .find(|a| a.iter().any(|p| matches!(p, Protocol::Tcp(_))))
        .expect("a TCP address")
        .clone();

    let alice = client(tcp.clone(), RelayReservation::Auto).await;
    let mut bob = client(tcp, RelayReservation::Always).await;
    published(&alice).await;
    // Bob's entry should carry a relay circuit address: wait for the
    // reservation, then publish.
    wait_for("relay reservation", &mut bob.events, |e| {
        matches!(e, Event::RelayReserved { .. }).then_some(())
    })
    .await;
    published(&bob).await;

    // Alice finds bob's device by the share he gave her and connects.
    let devices = alice
        .client
        .find_devices(&bob.share)
        .await
        .expect("bob found");
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0].peer_id, bob.client.peer_id());
    let circuit: Vec<Multiaddr> = devices[0]
        .addresses
        .iter()
        .filter(|a| a.iter().any(|p| matches!(p, Protocol::P2pCircuit)))
        .cloned()
        .collect();
    assert!(
        !circuit.is_empty(),
        "bob lists a relay address: {:?}",
        devices[0].addresses
    );

    // Through the relay first; DCUtR then upgrades to a direct connection.
    let relayed = alice
        .client
        .connect(bob.client.peer_id(), circuit)
        .await
        .expect("relayed connection");
    assert!(relayed.relayed);
    // DCUtR reports success on whichever side dialled the direct
    // connection.
    let mut alice_events = alice.events;
    let punched = |e: &Event| match e {
        Event::HolePunched { peer } => Some(*peer),
        _ => None,
    };
    let peer = tokio::select! {
        peer = wait_for("hole punch (bob)", &mut bob.events, punched) => peer,
        peer = wait_for("hole punch (alice)", &mut alice_events, punched) => peer,
    };
    assert!(peer == alice.client.peer_id() || peer == bob.client.peer_id());
    let connected = alice.client.connected_peers().await.expect("connections");
    assert!(
        connected
            .iter()
            .any(|c| c.peer_id == bob.client.peer_id() && !c.relayed),
        "alice holds a direct connection to bob: {connected:?}"
    );

    // Bob finds alice the same way and connects directly.
    let connections = bob
        .client
        .connect_friend(&alice.share)
        .await
        .expect("alice found");
    assert_eq!(connections[0].peer_id, alice.client.peer_id());

    // The metrics endpoint answers and counts the connections and records.
    let text = scrape(&kithd.metrics);
    let established = metric_sum(&text, "kithd_libp2p_swarm_connections_established_total");
    assert!(
        established >= 2.0,
        "connections counted: {established}\n{text}"
    );
    let stored = metric_sum(&text, "kithd_kith_presence_records_stored_total");
    assert!(stored >= 2.0, "records counted: {stored}");
}

#[test]
fn sigterm_stops_it_cleanly_and_the_key_persists() {
    let data = tempfile::tempdir().expect("tempdir");
    let mut kithd = start_kithd(data.path());
    let first = peer_of(&kithd.addrs[0]);
    let status = Command::new("kill")
        .args(["-TERM", &kithd.child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(exit) = kithd.child.try_wait().expect("wait") {
            break exit;
        }
        assert!(Instant::now() < deadline, "kithd did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "{exit:?}");

    let again = start_kithd(data.path());
    assert_eq!(
        peer_of(&again.addrs[0]),
        first,
        "same node key after restart"
    );
}

#[test]
fn bad_settings_are_refused_with_a_message() {
    let data = tempfile::tempdir().expect("tempdir");
    let config = data.path().join("kithd.toml");
    std::fs::write(&config, "listn = [\"/ip4/127.0.0.1/tcp/0\"]\n").expect("write");
    let output = Command::new(env!("CARGO_BIN_EXE_kithd"))
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(data.path())
        .output()
        .expect("runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("listn"), "{stderr}");

    let output = Command::new(env!("CARGO_BIN_EXE_kithd"))
        .args(["--data-dir"])
        .arg(data.path())
        .args(["--listen", "tcp://nope"])
        .output()
        .expect("runs");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("not a multiaddr"));
}
