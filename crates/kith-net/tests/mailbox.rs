//! The offline-mail plumbing on the memory transport: closest-peer
//! queries find the DHT nodes nearest a key in distance order, volunteers
//! receive mailbox requests as events and answer them, and a peer that
//! does not volunteer refuses the protocol at negotiation.

mod common;

use std::time::Duration;

use common::{Peer, start_client, start_nodes, within};
use kith_net::{Event, MAX_MAILBOX_REQUEST_BYTES, NetError, PeerId, sort_by_distance};

/// Answers every mailbox request a node receives with its own peer ID
/// followed by the request.
fn volunteer_echo(node: &mut Peer) {
    let peer = node.peer_id();
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    let mut events = std::mem::replace(&mut node.events, rx);
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            match event {
                Event::MailboxRequest(request) => {
                    let mut answer = peer.to_bytes();
                    answer.extend_from_slice(&request.data);
                    request.respond(answer);
                }
                other => {
                    let _ = tx.try_send(other);
                }
            }
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volunteers_nearest_a_key_are_found_and_answer_mailbox_requests() {
    let mut nodes = start_nodes(5).await;
    for node in &mut nodes {
        volunteer_echo(node);
    }
    let alice = start_client(vec![nodes[0].p2p_addr()]).await;
    let bob = start_client(vec![nodes[0].p2p_addr()]).await;

    let key = b"a mailbox address, or any key".to_vec();
    let found = within(
        Duration::from_secs(30),
        alice.client.closest_peers(key.clone()),
    )
    .await
    .expect("closest peers");
    let found_ids: Vec<PeerId> = found.iter().map(|p| p.peer_id).collect();
    let mut expected: Vec<PeerId> = nodes.iter().map(Peer::peer_id).collect();
    sort_by_distance(&key, &mut expected);
    assert_eq!(
        found_ids, expected,
        "every node, closest first (clients are not DHT servers)"
    );

    // The closest answers a mailbox request, over the addresses the query
    // found.
    let nearest = &found[0];
    let answer = within(
        Duration::from_secs(10),
        alice.client.mailbox_request(
            nearest.peer_id,
            nearest.addresses.clone(),
            b"deposit".to_vec(),
        ),
    )
    .await
    .expect("answered");
    assert_eq!(
        &answer[..nearest.peer_id.to_bytes().len()],
        nearest.peer_id.to_bytes()
    );
    assert!(answer.ends_with(b"deposit"));

    // Bob does not volunteer: asking him fails at once with a clear error.
    let error = within(
        Duration::from_secs(10),
        alice
            .client
            .mailbox_request(bob.peer_id(), vec![bob.addr.clone()], b"deposit".to_vec()),
    )
    .await
    .expect_err("clients do not volunteer by default");
    assert_eq!(error, NetError::Unsupported("/kith/mailbox/1.0.0".into()));

    // Over the mailbox size limit: refused before anything is sent.
    let error = alice
        .client
        .mailbox_request(
            nearest.peer_id,
            Vec::new(),
            vec![0; MAX_MAILBOX_REQUEST_BYTES + 1],
        )
        .await
        .expect_err("too large");
    assert!(matches!(error, NetError::TooLarge { .. }));
}
