//! Hand-off on a real network (libp2p's memory transport, real volunteers
//! on in-memory stores): when a volunteer closer to an address joins, the
//! items go to it byte for byte with their original receipts, and the
//! volunteer that left the closest set deletes its copy.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use kith_mailbox::service::{ServiceSettings, VolunteerHandle};
use kith_mailbox::user;
use kith_mailbox::{Volunteer, VolunteerConfig};
use kith_net::{Client, Multiaddr, PeerId, Role, TransportKind, sort_by_distance};
use kith_proto::mailbox::{MailboxItem, mailbox_address};
use kith_proto::{AccountKeypair, DeviceKeypair};
use kith_store::MemoryBackend;

const POW_BITS: u8 = 8;

struct Node {
    client: Client,
    addr: Multiaddr,
    volunteer: VolunteerHandle,
}

fn memory_config(key: DeviceKeypair, role: Role, bootstrap: &[Multiaddr]) -> kith_net::Config {
    let mut config = kith_net::Config::new(key, role);
    config.transport = TransportKind::Memory;
    config.listen = vec!["/memory/0".parse().unwrap()];
    config.bootstrap = bootstrap.to_vec();
    config.timers.kad_query_timeout = Duration::from_secs(10);
    config
}

async fn start_node(key: DeviceKeypair, bootstrap: &[Multiaddr]) -> Node {
    let config = memory_config(key.clone(), Role::Node, bootstrap);
    let (client, mut events, event_loop) = kith_net::new(config, None).unwrap();
    tokio::spawn(event_loop.run());
    let mut volunteer_config = VolunteerConfig::default();
    volunteer_config.limits.pow_difficulty = POW_BITS;
    let volunteer = Volunteer::open(Arc::new(MemoryBackend::new()), key, volunteer_config).unwrap();
    let handle = kith_mailbox::service::start(
        client.clone(),
        volunteer,
        ServiceSettings {
            handoff_every: Duration::from_secs(1),
            ..ServiceSettings::default()
        },
    );
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
    Node {
        client,
        addr,
        volunteer: handle,
    }
}

async fn start_client(bootstrap: &[Multiaddr]) -> Client {
    let config = memory_config(DeviceKeypair::generate(), Role::Client, bootstrap);
    let (client, mut events, event_loop) = kith_net::new(config, None).unwrap();
    tokio::spawn(event_loop.run());
    tokio::spawn(async move { while events.next().await.is_some() {} });
    client
}

async fn eventually<F: Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_move_to_a_closer_volunteer_with_their_receipts() {
    let mut nodes: Vec<Node> = Vec::new();
    for _ in 0..3 {
        let bootstrap: Vec<Multiaddr> = nodes.iter().map(|n| n.addr.clone()).collect();
        nodes.push(start_node(DeviceKeypair::generate(), &bootstrap).await);
    }
    let bootstrap = vec![nodes[0].addr.clone()];
    let sender = start_client(&bootstrap).await;
    let alice = AccountKeypair::generate();
    let bob = AccountKeypair::generate();
    let address = mailbox_address(&bob.public());
    let item =
        MailboxItem::seal(&alice, &bob.public(), b"hello", now_secs() + 3600, POW_BITS).unwrap();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let outcome = loop {
        if let Ok(outcome) = user::deposit(&sender, &item, 3, &[]).await
            && outcome.accepted.len() == 3
        {
            break outcome;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no deposit with all three volunteers"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let receipts = outcome.accepted;
    let deposit_times: Vec<u64> = receipts.iter().map(|a| a.receipt.received_at).collect();

    // A volunteer closer to Bob's address than every current holder.
    let holders: Vec<PeerId> = nodes.iter().map(|n| n.client.peer_id()).collect();
    let closer = loop {
        let key = DeviceKeypair::generate();
        let mut order = holders.clone();
        order.push(key.peer_id());
        sort_by_distance(&address, &mut order);
        if order[0] == key.peer_id() {
            break key;
        }
    };
    let mut furthest = holders.clone();
    sort_by_distance(&address, &mut furthest);
    let furthest = furthest[2];
    let newcomer = start_node(closer, &bootstrap).await;

    eventually("the newcomer to take the item", || async {
        newcomer.volunteer.holds(address).await == vec![item.item_id]
    })
    .await;
    let left = nodes
        .iter()
        .find(|n| n.client.peer_id() == furthest)
        .unwrap();
    eventually(
        "the volunteer that left the set to delete its copy",
        || async { left.volunteer.holds(address).await.is_empty() },
    )
    .await;
    for node in nodes.iter().filter(|n| n.client.peer_id() != furthest) {
        assert_eq!(node.volunteer.holds(address).await, vec![item.item_id]);
    }

    // Bob fetches from the newcomer alone: the same item, with receipts
    // from the original deposit, none signed by the newcomer at hand-off.
    let fetcher = start_client(std::slice::from_ref(&newcomer.addr)).await;
    let newcomer_id = newcomer.client.peer_id();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let outcome = loop {
        if let Ok(outcome) = user::fetch(&fetcher, &bob, 6).await
            && outcome.volunteers.iter().any(|v| v.peer_id == newcomer_id)
            && !outcome.items.is_empty()
        {
            break outcome;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "Bob's fetch never reached the newcomer"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(outcome.items.len(), 1);
    let got = &outcome.items[0];
    assert_eq!(got.item, item, "byte for byte, expiry unchanged");
    assert!(!got.receipts.is_empty());
    for receipt in &got.receipts {
        assert!(
            deposit_times.contains(&receipt.received_at),
            "receipts carry the deposit times, not the hand-off's"
        );
        assert_ne!(receipt.volunteer_peer_id().unwrap(), newcomer_id);
    }
    assert_eq!(got.item.open(&bob).unwrap().content, b"hello");
}
