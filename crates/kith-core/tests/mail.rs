//! Offline mail end to end, in process: three DHT nodes that volunteer
//! (real `Volunteer`s), two users whose devices are never online at the
//! same time.

mod common;

use std::time::Duration;

use common::{Device, VolunteerNode, befriend, eventually, start_volunteers};
use kith_core::engine::{Engine, MessageState, MessageView, Witness};
use kith_proto::AccountPublicKey;

/// Items the volunteers hold for `account`, all copies counted.
async fn held_for(nodes: &[VolunteerNode], account: &AccountPublicKey) -> usize {
    let mut total = 0;
    for node in nodes {
        total += node.items_for(account).await;
    }
    total
}

async fn history(engine: &Engine, friend: AccountPublicKey) -> Vec<MessageView> {
    engine.history(friend, None, 500).await.unwrap().messages
}

/// Alice and Bob become friends, then Bob goes offline.
async fn friends_then_bob_leaves(
    bootstrap: &[kith_net::Multiaddr],
) -> (Device, Engine, common::Events, Device, AccountPublicKey) {
    let alice_device = Device::new("alice");
    let bob_device = Device::new("bob");
    let (alice, mut alice_events) = alice_device.start_mail(bootstrap);
    let (bob, _bob_events) = bob_device.start_mail(bootstrap);
    befriend(&alice, &mut alice_events, &bob).await;
    eventually(|| async { (bob.status().await.unwrap().outbox == 0).then_some(()) }).await;
    let bob_account = bob.account();
    bob.shutdown().await.unwrap();
    drop(bob);
    (alice_device, alice, alice_events, bob_device, bob_account)
}

async fn send_while_bob_is_away(alice: &Engine, bob: AccountPublicKey, count: usize) {
    for i in 0..count {
        alice
            .send(bob, format!("while you were out {i}"))
            .await
            .unwrap();
    }
    // Every message ends up with all three volunteers.
    eventually(|| async {
        let page = history(alice, bob).await;
        (page.len() == count
            && page.iter().all(|m| {
                m.state
                    == Some(MessageState::Stored {
                        volunteers: 3,
                        of: 3,
                    })
            }))
        .then_some(())
    })
    .await;
    assert_eq!(
        alice.status().await.unwrap().outbox,
        0,
        "nothing left to send directly"
    );
}

fn expected(count: usize) -> Vec<String> {
    (0..count)
        .map(|i| format!("while you were out {i}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_reaches_an_offline_friend_once_in_order_with_witnessed_times() {
    let (nodes, bootstrap) = start_volunteers(3).await;
    let (_alice_device, alice, alice_events, bob_device, bob_account) =
        friends_then_bob_leaves(&bootstrap).await;
    let alice_account = alice.account();
    send_while_bob_is_away(&alice, bob_account, 50).await;
    // Alice goes offline too: Bob can only get the messages from the
    // volunteers.
    alice.shutdown().await.unwrap();
    drop(alice);
    drop(alice_events);
    // The first send finds Bob unreachable and leaves what is queued; the
    // rest is gathered into as few items as the sends allow.
    let held = held_for(&nodes, &bob_account).await;
    assert!(
        held >= 3 && held % 3 == 0 && held <= 3 * 5,
        "each of the three volunteers holds every item, a few items in all: {held}"
    );

    let (bob, _bob_events) = bob_device.start_mail(&bootstrap);
    let page = eventually(|| async {
        let page = history(&bob, alice_account).await;
        (page.len() >= 50).then_some(page)
    })
    .await;
    let bodies: Vec<String> = page.iter().map(|m| m.body.clone()).collect();
    assert_eq!(bodies, expected(50), "all 50, once each, in order");
    assert!(
        page.iter().all(|m| m.witness == Some(Witness::Witnessed)),
        "the volunteers' receipts bear out Alice's send times: {:?}",
        page.iter().map(|m| m.witness).collect::<Vec<_>>()
    );
    // Bob acknowledged: the volunteers hold nothing for him any more.
    eventually(|| async { (held_for(&nodes, &bob_account).await == 0).then_some(()) }).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        history(&bob, alice_account).await.len(),
        50,
        "no duplicates"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_survives_two_of_three_volunteers_dying() {
    let (nodes, bootstrap) = start_volunteers(4).await;
    let (_alice_device, alice, alice_events, bob_device, bob_account) =
        friends_then_bob_leaves(&bootstrap).await;
    let alice_account = alice.account();
    send_while_bob_is_away(&alice, bob_account, 20).await;
    alice.shutdown().await.unwrap();
    drop(alice);
    drop(alice_events);
    // Kill two of the volunteers holding the mail, keeping one and the
    // node that holds none.
    let mut holders = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        if node.items_for(&bob_account).await > 0 {
            holders.push(i);
        }
    }
    assert_eq!(
        holders.len(),
        3,
        "three of the four volunteers took the mail"
    );
    nodes[holders[0]].kill();
    nodes[holders[1]].kill();
    let survivor = &nodes[holders[2]];
    let bootstrap: Vec<_> = nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != holders[0] && *i != holders[1])
        .map(|(_, n)| n.addr.clone())
        .collect();

    let (bob, _bob_events) = bob_device.start_mail(&bootstrap);
    let page = eventually(|| async {
        let page = history(&bob, alice_account).await;
        (page.len() >= 20).then_some(page)
    })
    .await;
    let bodies: Vec<String> = page.iter().map(|m| m.body.clone()).collect();
    assert_eq!(bodies, expected(20));
    eventually(|| async { (survivor.items_for(&bob_account).await == 0).then_some(()) }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acceptance_and_messages_left_as_mail_arrive_together() {
    let (_nodes, bootstrap) = start_volunteers(3).await;
    let alice_device = Device::new("alice");
    let bob_device = Device::new("bob");
    let (alice, _alice_events) = alice_device.start_mail(&bootstrap);
    let (bob, _bob_events) = bob_device.start_mail(&bootstrap);
    let bob_id = bob.status().await.unwrap().id;
    let alice_account = alice.account();
    eventually(|| async { alice.add(bob_id, "it's Alice".into()).await.ok() }).await;
    eventually(|| async {
        bob.check_requests().await.ok();
        bob.requests().await.unwrap().0.first().cloned()
    })
    .await;
    // Alice leaves before Bob answers: his acceptance and the messages
    // after it can only reach her as mail. The mail items' IDs are random,
    // so the fetch returns them in any order; the acceptance must still
    // come first.
    alice.shutdown().await.unwrap();
    drop(alice);
    bob.accept(alice_account).await.unwrap();
    for i in 0..5 {
        bob.send(alice_account, format!("welcome {i}"))
            .await
            .unwrap();
    }
    eventually(|| async {
        let page = history(&bob, alice_account).await;
        page.iter()
            .all(|m| matches!(m.state, Some(MessageState::Stored { volunteers: 3, .. })))
            .then_some(())
    })
    .await;
    bob.shutdown().await.unwrap();
    drop(bob);

    let (alice, _alice_events) = alice_device.start_mail(&bootstrap);
    let bob_account =
        eventually(|| async { alice.friends().await.unwrap().first().map(|f| f.account) }).await;
    let page = eventually(|| async {
        let page = history(&alice, bob_account).await;
        (page.len() >= 5).then_some(page)
    })
    .await;
    let bodies: Vec<String> = page.iter().map(|m| m.body.clone()).collect();
    assert_eq!(
        bodies,
        (0..5).map(|i| format!("welcome {i}")).collect::<Vec<_>>()
    );

    // Bob comes back: the acceptance he kept goes directly as well (Alice
    // already has it), and his new messages are delivered directly.
    let (bob, _bob_events) = bob_device.start_mail(&bootstrap);
    let id = bob
        .send(alice_account, "and directly".into())
        .await
        .unwrap();
    eventually(|| async {
        history(&bob, alice_account)
            .await
            .iter()
            .any(|m| {
                m.id == id
                    && matches!(
                        m.state,
                        Some(MessageState::Delivered { .. } | MessageState::Read { .. })
                    )
            })
            .then_some(())
    })
    .await;
    eventually(|| async { (bob.status().await.unwrap().outbox == 0).then_some(()) }).await;
    assert_eq!(history(&alice, bob_account).await.len(), 6);
}
