//! Kept connections (`Client::keep_connected`): a connection both ends keep
//! outlives the idle timeout; one only one end keeps, or that nobody keeps,
//! closes; dropping a peer from the set lets its connection idle out.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{Peer, eventually, memory_config, start, within};
use kith_net::{PeerId, Role};

/// The idle timeout of these clients: short, so the test need not wait.
const IDLE: Duration = Duration::from_millis(800);

async fn client() -> Peer {
    let (mut config, account) = memory_config(Role::Client, Vec::new());
    config.presence = None;
    config.timers.idle_connection_timeout = IDLE;
    start(config, account).await
}

async fn connected(peer: &Peer) -> HashSet<PeerId> {
    peer.client
        .connected_peers()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.peer_id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_connections_both_ends_keep_outlive_the_idle_timeout() {
    let alice = client().await;
    let bob = client().await;
    let carol = client().await;
    let dave = client().await;
    alice
        .client
        .keep_connected(vec![bob.peer_id()])
        .await
        .unwrap();
    bob.client
        .keep_connected(vec![alice.peer_id()])
        .await
        .unwrap();
    // Carol keeps Alice, who does not keep her: one end is not enough.
    carol
        .client
        .keep_connected(vec![alice.peer_id()])
        .await
        .unwrap();
    for other in [&bob, &carol, &dave] {
        within(
            Duration::from_secs(10),
            alice
                .client
                .connect(other.peer_id(), vec![other.addr.clone()]),
        )
        .await
        .unwrap();
    }
    assert_eq!(connected(&alice).await.len(), 3);

    // Well past the idle timeout (Identify's exchange on connecting ends
    // within it), only Bob is still connected.
    tokio::time::sleep(IDLE * 5).await;
    let left = connected(&alice).await;
    assert!(left.contains(&bob.peer_id()), "kept by both: {left:?}");
    assert!(
        !left.contains(&carol.peer_id()),
        "kept by one end: {left:?}"
    );
    assert!(!left.contains(&dave.peer_id()), "kept by neither: {left:?}");
    assert!(connected(&bob).await.contains(&alice.peer_id()));

    // Alice stops keeping Bob (he is no longer a friend): it idles out.
    alice.client.keep_connected(Vec::new()).await.unwrap();
    eventually(
        Duration::from_secs(10),
        "Bob's connection to close",
        || async { !connected(&alice).await.contains(&bob.peer_id()) },
    )
    .await;
}
