//! Starts the real `kithd` binary on loopback and uses it as two clients
//! would: bootstrap through it, publish presence, find and connect to each
//! other directly and through its relay; then reads its metrics and stops it
//! with SIGTERM. As a mailbox volunteer it keeps a deposit across a restart
//! until the recipient fetches and acknowledges it; with `--no-mailbox` it
//! takes none.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{
    mail_client, mailbox_usage, metric_sum, peer_of, scrape, start_kithd, start_kithd_with,
    unix_now,
};
use futures::StreamExt;
use kith_net::{Client, Config, Event, Multiaddr, NetError, Protocol, RelayReservation, Role};
use kith_proto::mailbox::MailboxItem;
use kith_proto::presence::{PresenceKeys, PresenceShare};
use kith_proto::{AccountKeypair, DeviceKeypair};
use tokio::sync::mpsc as tokio_mpsc;

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
    let kithd = start_kithd(data.path());
    let first = peer_of(&kithd.addrs[0]);
    kithd.stop();

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

    let output = Command::new(env!("CARGO_BIN_EXE_kithd"))
        .args(["--data-dir"])
        .arg(data.path())
        .args(["--mailbox-pow-bits", "25"])
        .output()
        .expect("runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("mailbox.pow_bits"), "{stderr}");
}

#[test]
fn an_unusable_mailbox_store_is_named() {
    let data = tempfile::tempdir().expect("tempdir");
    std::fs::write(data.path().join("mailbox"), "not a folder").expect("write");
    let output = Command::new(env!("CARGO_BIN_EXE_kithd"))
        .arg("--data-dir")
        .arg(data.path())
        .args(["--listen", "/ip4/127.0.0.1/tcp/0", "--no-metrics"])
        .output()
        .expect("runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&data.path().join("mailbox").display().to_string()),
        "{stderr}"
    );
    assert!(stderr.contains("mailbox store"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposit_survives_a_restart_until_fetched_and_acknowledged() {
    let data = tempfile::tempdir().expect("tempdir");
    let flags = ["--mailbox-pow-bits", "8", "--mailbox-sweep-secs", "1"];
    let kithd = tokio::task::block_in_place(|| start_kithd_with(data.path(), &flags));
    let node = kithd.peer_id();
    assert_eq!(mailbox_usage(&kithd.metrics), (0.0, 0.0, 0.0));

    let sender = AccountKeypair::generate();
    let recipient = AccountKeypair::generate();
    let item = MailboxItem::seal(&sender, &recipient.public(), b"hi", unix_now() + 3600, 8)
        .expect("sealed");
    let client = mail_client(kithd.tcp(), node).await;
    let outcome = kith_mailbox::user::deposit(&client, &item, 1, &[])
        .await
        .expect("a volunteer found");
    assert!(outcome.refused.is_empty(), "{:?}", outcome.refused);
    assert_eq!(outcome.accepted.len(), 1, "{outcome:?}");
    let accepted = &outcome.accepted[0];
    assert_eq!(accepted.volunteer, node);
    assert_eq!(accepted.receipt.item_id, item.item_id);
    assert_eq!(accepted.receipt.volunteer_peer_id(), Ok(node));
    // Stored before it was accepted, and counted on the next scrape.
    assert_eq!(
        mailbox_usage(&kithd.metrics),
        (1.0, item.encoded_len() as f64, 1.0)
    );
    drop(client);

    // A restart on the same folder: same node, same mail.
    tokio::task::block_in_place(|| kithd.stop());
    let kithd = tokio::task::block_in_place(|| start_kithd_with(data.path(), &flags));
    assert_eq!(kithd.peer_id(), node);
    assert_eq!(
        mailbox_usage(&kithd.metrics),
        (1.0, item.encoded_len() as f64, 1.0)
    );

    // The recipient, on a device of its own, fetches it with the receipt.
    let client = mail_client(kithd.tcp(), node).await;
    let fetched = kith_mailbox::user::fetch(&client, &recipient, 3)
        .await
        .expect("a volunteer found");
    assert!(fetched.failures.is_empty(), "{:?}", fetched.failures);
    assert_eq!(fetched.rejected, 0);
    assert_eq!(fetched.items.len(), 1);
    let got = &fetched.items[0];
    assert_eq!(got.item, item);
    assert_eq!(got.from, vec![node]);
    assert_eq!(got.receipts, vec![accepted.receipt]);
    let opened = got.item.open(&recipient).expect("opens");
    assert_eq!(opened.content, b"hi");
    assert_eq!(opened.sender, sender.public());

    // Acknowledged, it is deleted.
    let deleted =
        kith_mailbox::user::acknowledge(&client, &recipient, &[item.item_id], &fetched.volunteers)
            .await;
    assert_eq!(deleted, 1);
    assert_eq!(mailbox_usage(&kithd.metrics), (0.0, 0.0, 0.0));
    let again = kith_mailbox::user::fetch(&client, &recipient, 3)
        .await
        .expect("a volunteer found");
    assert!(again.items.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_no_mailbox_takes_no_mail() {
    let data = tempfile::tempdir().expect("tempdir");
    let kithd = tokio::task::block_in_place(|| start_kithd_with(data.path(), &["--no-mailbox"]));
    let node = kithd.peer_id();
    let client = mail_client(kithd.tcp(), node).await;

    let sender = AccountKeypair::generate();
    let recipient = AccountKeypair::generate();
    let item = MailboxItem::seal(&sender, &recipient.public(), b"hi", unix_now() + 3600, 8)
        .expect("sealed");
    // The node is found but turns the protocol down, which a deposit
    // leaves out of its refusals.
    let outcome = kith_mailbox::user::deposit(&client, &item, 1, &[])
        .await
        .expect("the node is found");
    assert!(outcome.accepted.is_empty(), "{outcome:?}");
    assert!(outcome.refused.is_empty(), "{outcome:?}");
    let asked = client
        .mailbox_request(node, vec![kithd.tcp()], b"deposit".to_vec())
        .await;
    assert_eq!(
        asked,
        Err(NetError::Unsupported("/kith/mailbox/1.0.0".into()))
    );
    let text = tokio::task::block_in_place(|| scrape(&kithd.metrics));
    assert!(!text.contains("kithd_mailbox_items"), "{text}");
}

/// Runs kithd with `args` on a fresh data folder; it must fail. Its error
/// message.
fn refused(args: &[&str]) -> String {
    let data = tempfile::tempdir().expect("tempdir");
    let output = Command::new(env!("CARGO_BIN_EXE_kithd"))
        .arg("--data-dir")
        .arg(data.path())
        .args(args)
        .output()
        .expect("runs");
    assert!(!output.status.success());
    String::from_utf8_lossy(&output.stderr)
        .lines()
        .filter(|line| line.starts_with("kithd: "))
        .collect()
}

#[test]
fn a_taken_port_is_named_with_its_reason_once() {
    // A QUIC port in use: libp2p's error says nothing itself, its cause does.
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    let quic = format!(
        "/ip4/127.0.0.1/udp/{}/quic-v1",
        udp.local_addr().expect("addr").port()
    );
    let message = refused(&["--listen", &quic, "--no-metrics"]);
    assert!(
        message.contains(&format!("cannot listen on {quic}: ")),
        "{message}"
    );
    assert_eq!(message.matches("in use").count(), 1, "{message}");

    // The metrics port in use: the cause appears once, not twice.
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("tcp");
    let metrics = tcp.local_addr().expect("addr").to_string();
    let message = refused(&["--listen", "/ip4/127.0.0.1/tcp/0", "--metrics", &metrics]);
    assert!(
        message.contains(&format!("metrics endpoint {metrics}: ")),
        "{message}"
    );
    assert_eq!(message.matches("in use").count(), 1, "{message}");
}
