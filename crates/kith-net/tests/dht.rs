//! In-process networks over the memory transport: finding friends'
//! devices through the DHT, with churn, and what DHT nodes store.

mod common;

use std::time::Duration;

use common::{Peer, eventually, memory_config, start, start_client, start_nodes, within};
use kith_net::{Event, Role};
use rand::seq::SliceRandom;

/// Looks `target` up from `from` and connects to it.
async fn find_and_connect(from: &Peer, target: &Peer) {
    let devices = within(
        Duration::from_secs(30),
        from.client.find_devices(&target.share()),
    )
    .await
    .expect("lookup succeeds");
    assert_eq!(devices.len(), 1, "one device per account");
    assert_eq!(devices[0].peer_id, target.peer_id());
    assert!(!devices[0].addresses.is_empty());
    let connections = within(
        Duration::from_secs(30),
        from.client.connect_friend(&target.share()),
    )
    .await
    .expect("connects");
    assert_eq!(connections[0].peer_id, target.peer_id());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_nodes_find_friends_before_and_after_a_fifth_leave() {
    // 10 DHT nodes and 20 clients: 30 in all.
    let mut nodes = start_nodes(10).await;
    let bootstrap = vec![nodes[0].p2p_addr(), nodes[1].p2p_addr()];
    let mut clients = Vec::with_capacity(20);
    for _ in 0..20 {
        clients.push(start_client(bootstrap.clone()).await);
    }

    // Ten random clients each find another client's device and connect.
    let mut rng = rand::rng();
    let mut order: Vec<usize> = (0..clients.len()).collect();
    order.shuffle(&mut rng);
    for pair in order.chunks(2) {
        find_and_connect(&clients[pair[0]], &clients[pair[1]]).await;
    }

    // A fifth of the network leaves: 2 DHT nodes (not the bootstraps) and 4
    // clients.
    for _ in 0..2 {
        nodes.pop().expect("node").stop().await;
    }
    clients.shuffle(&mut rng);
    for _ in 0..4 {
        clients.pop().expect("client").stop().await;
    }

    // Lookups among the remaining clients still succeed.
    let mut order: Vec<usize> = (0..clients.len()).collect();
    order.shuffle(&mut rng);
    for pair in order.chunks(2).take(5) {
        find_and_connect(&clients[pair[0]], &clients[pair[1]]).await;
        find_and_connect(&clients[pair[1]], &clients[pair[0]]).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_presence_reveals_neither_account_key_nor_kith_id() {
    let nodes = start_nodes(3).await;
    let bootstrap = vec![nodes[0].p2p_addr()];
    let alice = start_client(bootstrap.clone()).await;
    let bob = start_client(bootstrap).await;

    let mut stored = 0;
    for node in &nodes {
        for (key, value) in node.client.stored_records().await.expect("records") {
            stored += 1;
            for client in [&alice, &bob] {
                let account = client.account.as_ref().expect("client").public().to_bytes();
                let id = client.kith_id();
                let share = client.share();
                for (what, secret) in [
                    ("account key", account.to_vec()),
                    (
                        "account X25519 key",
                        client
                            .account
                            .as_ref()
                            .expect("client")
                            .public()
                            .to_x25519()
                            .to_bytes()
                            .to_vec(),
                    ),
                    ("Kith ID", id.to_bytes().to_vec()),
                    ("Kith ID account bytes", id.to_bytes()[1..33].to_vec()),
                    ("Kith ID text", id.to_text().into_bytes()),
                    ("content key", share.content_key.to_vec()),
                ] {
                    assert!(
                        !contains(&key, &secret) && !contains(&value, &secret),
                        "a DHT node stored the {what}"
                    );
                }
                // The contents are sealed: the device's own addresses do not
                // appear in the clear either.
                assert!(!contains(&value, &client.addr.to_vec()));
            }
        }
    }
    assert!(stored >= 2, "both records are stored ({stored})");
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn republishing_keeps_one_entry_per_device_with_the_newest_sequence() {
    let nodes = start_nodes(2).await;
    let alice = start_client(vec![nodes[0].p2p_addr()]).await;
    let bob = start_client(vec![nodes[0].p2p_addr()]).await;
    let first = bob
        .client
        .find_devices(&alice.share())
        .await
        .expect("found");
    let published = alice.client.publish_presence().await.expect("republished");
    assert!(published.seq > first[0].seq);
    let client = bob.client.clone();
    let share = alice.share();
    eventually(Duration::from_secs(10), "newer entry visible", || {
        let client = client.clone();
        let share = share.clone();
        async move {
            client
                .find_devices(&share)
                .await
                .is_ok_and(|d| d.len() == 1 && d[0].seq == published.seq)
        }
    })
    .await;
}

/// What `peer` finds when it looks up an account nobody has published.
async fn look_up_a_stranger(peer: &Peer) -> Result<Vec<kith_net::Device>, kith_net::NetError> {
    let stranger =
        kith_proto::presence::PresenceKeys::derive(&kith_proto::AccountKeypair::generate());
    within(
        Duration::from_secs(30),
        peer.client.find_devices(&stranger.share()),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_for_someone_absent_says_not_found() {
    let nodes = start_nodes(3).await;
    let alice = start_client(vec![nodes[0].p2p_addr()]).await;
    assert_eq!(
        look_up_a_stranger(&alice).await,
        Err(kith_net::NetError::NotFound)
    );
}

/// A device that knows no DHT node (just started, or offline) cannot tell
/// an absent friend from an unreachable network, and says which it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_nobody_answers_says_so_rather_than_not_found() {
    let (config, account) = memory_config(Role::Client, Vec::new());
    let alone = start(config, account).await;
    assert_eq!(
        look_up_a_stranger(&alone).await,
        Err(kith_net::NetError::NoPeers)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_report_records_they_store() {
    let mut nodes = start_nodes(2).await;
    let _alice = start_client(vec![nodes[0].p2p_addr()]).await;
    let from = nodes[0]
        .wait_event(|e| match e {
            Event::RecordStored { from } => Some(*from),
            _ => None,
        })
        .await;
    assert_eq!(from, _alice.peer_id());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_republished_on_its_timer_with_rising_sequence() {
    let nodes = start_nodes(2).await;
    let (mut config, account) = memory_config(Role::Client, vec![nodes[0].p2p_addr()]);
    config.timers.presence_republish = Duration::from_millis(300);
    let mut alice = start(config, account).await;
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let seq = alice
            .wait_event(|e| match e {
                Event::PresencePublished { seq } => Some(*seq),
                _ => None,
            })
            .await;
        seen.push(seq);
    }
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
    // A friend sees the latest.
    let bob = start_client(vec![nodes[0].p2p_addr()]).await;
    let devices = bob
        .client
        .find_devices(&alice.share())
        .await
        .expect("found");
    assert!(devices[0].seq >= seen[2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_redials_its_bootstrap_node_after_losing_it() {
    // The node listens on a fixed memory port with a fixed key, so it can
    // come back at the same address as the same peer.
    let port = 1_000_000_000 + u64::from(rand::random::<u32>());
    let addr: kith_net::Multiaddr = format!("/memory/{port}").parse().expect("addr");
    let key = kith_proto::DeviceKeypair::generate();
    let node_config = || {
        let mut config = kith_net::Config::new(key.clone(), Role::Node);
        config.transport = kith_net::TransportKind::Memory;
        config.listen = vec![addr.clone()];
        config
    };
    let node = start(node_config(), None).await;
    let node_id = node.peer_id();
    let (mut config, account) = memory_config(Role::Client, vec![node.p2p_addr()]);
    config.timers.reconnect_min = Duration::from_millis(100);
    config.timers.reconnect_max = Duration::from_millis(400);
    let mut client = start(config, account).await;
    client
        .wait_event(|e| {
            matches!(e, Event::Connected { peer, .. } if *peer == node_id).then_some(())
        })
        .await;

    node.stop().await;
    let retry_in = client
        .wait_event(|e| match e {
            Event::BootstrapLost { peer, retry_in } if *peer == node_id => Some(*retry_in),
            _ => None,
        })
        .await;
    assert!(
        retry_in <= Duration::from_millis(100),
        "first retry is quick: {retry_in:?}"
    );

    // Let a few redials fail while it is down, then bring it back.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let restarted = start(node_config(), None).await;
    assert_eq!(restarted.peer_id(), node_id);
    client
        .wait_event(|e| {
            matches!(e, Event::Connected { peer, .. } if *peer == node_id).then_some(())
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn friends_addresses_never_enter_the_shared_routing_table() {
    // Kademlia hands its routing table to anyone who asks; a friend's
    // device, learnt from sealed presence, must not end up in it.
    let nodes = start_nodes(2).await;
    let alice = start_client(vec![nodes[0].p2p_addr()]).await;
    let bob = start_client(vec![nodes[0].p2p_addr()]).await;
    alice
        .client
        .connect_friend(&bob.share())
        .await
        .expect("connected");
    for peer in [&alice, &nodes[0], &nodes[1]] {
        let table = peer.client.routing_table().await.expect("table");
        assert!(
            !table.contains(&bob.peer_id()),
            "bob's device is in a routing table"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_friend_finds_the_prekeys_published_and_then_replaced() {
    let nodes = start_nodes(2).await;
    let (mut config, account) = memory_config(Role::Client, vec![nodes[0].p2p_addr()]);
    config.prekeys = vec![0x11; 96];
    let alice = start(config, account).await;
    let bob = start_client(vec![nodes[0].p2p_addr()]).await;
    let share = alice.share();
    let client = bob.client.clone();
    let finds = |want: Vec<u8>| {
        let client = client.clone();
        let share = share.clone();
        async move {
            client
                .find_devices(&share)
                .await
                .is_ok_and(|d| d.len() == 1 && d[0].prekeys == want)
        }
    };
    eventually(Duration::from_secs(20), "first prekeys visible", || {
        finds(vec![0x11; 96])
    })
    .await;

    let largest = vec![0x22; kith_proto::presence::MAX_PREKEY_BYTES];
    alice
        .client
        .set_prekeys(largest.clone())
        .await
        .expect("replaced");
    eventually(Duration::from_secs(20), "new prekeys visible", || {
        finds(largest.clone())
    })
    .await;

    assert_eq!(
        alice
            .client
            .set_prekeys(vec![0; kith_proto::presence::MAX_PREKEY_BYTES + 1])
            .await,
        Err(kith_net::NetError::TooLarge {
            size: kith_proto::presence::MAX_PREKEY_BYTES + 1,
            max: kith_proto::presence::MAX_PREKEY_BYTES
        })
    );
    let (mut config, _) = memory_config(Role::Client, Vec::new());
    config.prekeys = vec![0; kith_proto::presence::MAX_PREKEY_BYTES + 1];
    assert!(matches!(
        kith_net::new(config, None),
        Err(kith_net::StartError::PrekeysTooLarge { .. })
    ));
}
