//! The engine end to end, in process: real kith-net swarms on libp2p's
//! memory transport (three DHT nodes and the users' devices) and real
//! stores on the in-memory backend, kept across restarts.

mod common;

use std::time::Duration;

use common::{Device, befriend, eventually, start_nodes, wait_for};
use kith_core::engine::{Engine, Event, MessageState};
use kith_core::history::Author;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn friends_chat_with_receipts_edits_deletions_and_typing() {
    let (_nodes, bootstrap) = start_nodes(3).await;
    let (alice, mut alice_events) = Device::new("alice").start(&bootstrap);
    let (bob, mut bob_events) = Device::new("bob").start(&bootstrap);
    befriend(&alice, &mut alice_events, &bob).await;

    let mut sent = Vec::new();
    for i in 0..5 {
        sent.push(
            alice
                .send(bob.account(), format!("hello {i}"))
                .await
                .unwrap(),
        );
    }
    let mut received = Vec::new();
    while received.len() < 5 {
        let body = wait_for(&mut bob_events, |e| match e {
            Event::Message { message, .. } if message.author == Author::Friend => {
                Some(message.body.clone())
            }
            _ => None,
        })
        .await;
        received.push(body);
    }
    assert_eq!(
        received,
        (0..5).map(|i| format!("hello {i}")).collect::<Vec<_>>()
    );

    // Every message reaches "delivered" at Alice.
    eventually(|| async {
        let page = alice.history(bob.account(), None, 50).await.unwrap();
        page.messages
            .iter()
            .all(|m| matches!(m.state, Some(MessageState::Delivered { .. })))
            .then_some(())
    })
    .await;

    // Bob reads; Alice sees "read".
    assert_eq!(bob.mark_read(alice.account()).await.unwrap(), 5);
    eventually(|| async {
        let page = alice.history(bob.account(), None, 50).await.unwrap();
        page.messages
            .iter()
            .all(|m| matches!(m.state, Some(MessageState::Read { .. })))
            .then_some(())
    })
    .await;

    // Edit and delete of Alice's own messages reach Bob.
    alice
        .edit(bob.account(), sent[0], "hello, edited".into())
        .await
        .unwrap();
    alice.delete(bob.account(), sent[1]).await.unwrap();
    eventually(|| async {
        let page = bob.history(alice.account(), None, 50).await.unwrap();
        let first = &page.messages[0];
        let second = &page.messages[1];
        (first.body == "hello, edited" && first.edited && second.deleted).then_some(())
    })
    .await;
    // Nobody edits someone else's message.
    assert!(
        bob.edit(alice.account(), sent[2], "mine now".into())
            .await
            .is_err()
    );

    // Typing is shown.
    alice.typing(bob.account(), true).await.unwrap();
    wait_for(&mut bob_events, |e| {
        matches!(e, Event::Typing { active: true, .. }).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_survives_a_restart_and_delivers_once() {
    let (_nodes, bootstrap) = start_nodes(3).await;
    let alice_device = Device::new("alice");
    let bob_device = Device::new("bob");
    let (alice, mut alice_events) = alice_device.start(&bootstrap);
    let (bob, _bob_events) = bob_device.start(&bootstrap);
    befriend(&alice, &mut alice_events, &bob).await;
    let bob_account = bob.account();
    // Let the acceptance's acknowledgement reach Bob, then Bob goes away.
    eventually(|| async { (bob.status().await.unwrap().outbox == 0).then_some(()) }).await;
    bob.shutdown().await.unwrap();
    drop(bob);

    for i in 0..20 {
        alice
            .send(bob_account, format!("while you were out {i}"))
            .await
            .unwrap();
    }
    assert_eq!(alice.friends().await.unwrap()[0].queued, 20);
    alice.shutdown().await.unwrap();
    drop(alice);
    drop(alice_events);

    // Both come back; everything arrives once, in order.
    let (alice, _alice_events) = alice_device.start(&bootstrap);
    let (bob, _bob_events) = bob_device.start(&bootstrap);
    let page = eventually(|| async {
        let page = bob.history(alice.account(), None, 100).await.unwrap();
        (page.messages.len() >= 20).then_some(page)
    })
    .await;
    let bodies: Vec<_> = page.messages.iter().map(|m| m.body.clone()).collect();
    assert_eq!(
        bodies,
        (0..20)
            .map(|i| format!("while you were out {i}"))
            .collect::<Vec<_>>()
    );
    eventually(|| async { (alice.status().await.unwrap().outbox == 0).then_some(()) }).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        bob.history(alice.account(), None, 100)
            .await
            .unwrap()
            .messages
            .len(),
        20
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declined_requests_stay_refused_and_old_ids_stop_working() {
    let (_nodes, bootstrap) = start_nodes(3).await;
    let (alice, _alice_events) = Device::new("alice").start(&bootstrap);
    let (bob, _bob_events) = Device::new("bob").start(&bootstrap);
    let (carol, _carol_events) = Device::new("carol").start(&bootstrap);

    let old_id = bob.status().await.unwrap().id;
    eventually(|| async { alice.add(old_id, "first".into()).await.ok() }).await;
    let request = eventually(|| async {
        bob.check_requests().await.ok();
        bob.requests().await.unwrap().0.first().cloned()
    })
    .await;
    bob.decline(request.account).await.unwrap();
    assert!(bob.requests().await.unwrap().0.is_empty());

    // Bob rotates his nospam; Carol uses the old ID and is not shown,
    // Alice uses the new one but stays declined.
    let new_id = bob.rotate_nospam().await.unwrap();
    assert_ne!(new_id, old_id);
    assert_eq!(new_id.account(), old_id.account());
    eventually(|| async { carol.add(old_id, "old id".into()).await.ok() }).await;
    // Wait until both requests have been placed.
    eventually(|| async {
        let placed = carol.requests().await.unwrap().1.iter().all(|o| o.dropped);
        placed.then_some(())
    })
    .await;
    // A second request from Alice under the new ID.
    let _ = alice.add(new_id, "again".into()).await;
    eventually(|| async {
        let placed = alice.requests().await.unwrap().1.iter().all(|o| o.dropped);
        placed.then_some(())
    })
    .await;
    for _ in 0..3 {
        bob.check_requests().await.unwrap();
    }
    assert!(bob.requests().await.unwrap().0.is_empty());
    assert!(bob.friends().await.unwrap().is_empty());

    // The same drop path works with the current ID: Carol gets through.
    carol.add(new_id, "new id".into()).await.unwrap();
    let request = eventually(|| async {
        bob.check_requests().await.ok();
        bob.requests().await.unwrap().0.first().cloned()
    })
    .await;
    assert_eq!(request.account, carol.account());
    assert_eq!(request.message, "new id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_friend_coming_online_gets_waiting_messages_without_waiting_for_a_retry() {
    let (_nodes, bootstrap) = start_nodes(3).await;
    let alice_device = Device::new("alice");
    let bob_device = Device::new("bob");
    let (alice, mut alice_events) = alice_device.start(&bootstrap);
    let (bob, _bob_events) = bob_device.start(&bootstrap);
    befriend(&alice, &mut alice_events, &bob).await;
    eventually(|| async { (bob.status().await.unwrap().outbox == 0).then_some(()) }).await;
    let bob_account = bob.account();
    bob.shutdown().await.unwrap();
    drop(bob);
    alice.shutdown().await.unwrap();
    drop(alice);
    drop(alice_events);

    // Alice now retries no sooner than 30 s after a failure: only Bob's
    // greeting on start can bring her message across within the wait below.
    let (alice, _alice_events) =
        alice_device.start_with(&bootstrap, Duration::from_secs(30), Duration::from_secs(60));
    alice
        .send(bob_account, "are you there?".into())
        .await
        .unwrap();
    // Her attempt fails while Bob is away, which puts her into backoff.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(alice.friends().await.unwrap()[0].queued, 1);

    let (bob, _bob_events) = bob_device.start(&bootstrap);
    let arrived = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            let page = bob.history(alice.account(), None, 10).await.unwrap();
            if page.messages.iter().any(|m| m.body == "are you there?") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(
        arrived.is_ok(),
        "the waiting message did not arrive on Bob's return"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_and_deletions_queued_with_their_messages_apply_on_arrival() {
    let (_nodes, bootstrap) = start_nodes(3).await;
    let bob_device = Device::new("bob");
    let (alice, mut alice_events) = Device::new("alice").start(&bootstrap);
    let (bob, _bob_events) = bob_device.start(&bootstrap);
    befriend(&alice, &mut alice_events, &bob).await;
    eventually(|| async { (bob.status().await.unwrap().outbox == 0).then_some(()) }).await;
    let bob_account = bob.account();
    bob.shutdown().await.unwrap();
    drop(bob);

    // While Bob is away: a message and its edit, another and its deletion.
    // They travel together, in one bundle.
    let first = alice
        .send(bob_account, "see you at 7".into())
        .await
        .unwrap();
    let second = alice.send(bob_account, "wrong chat".into()).await.unwrap();
    alice
        .edit(bob_account, first, "see you at 8".into())
        .await
        .unwrap();
    alice.delete(bob_account, second).await.unwrap();

    let (bob, _bob_events) = bob_device.start(&bootstrap);
    let page = eventually(|| async {
        let page = bob.history(alice.account(), None, 10).await.unwrap();
        (page.messages.len() == 2 && page.messages.iter().any(|m| m.deleted)).then_some(page)
    })
    .await;
    assert_eq!(page.messages[0].body, "see you at 8");
    assert!(page.messages[0].edited);
    assert!(page.messages[1].deleted);
    assert_eq!(page.messages[1].body, "");
}

/// Requests are looked for rarely unless one is expected: after
/// `expect_requests` (the user showing their ID) the drop is read often,
/// and when that time is over, rarely again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_arrive_unasked_only_while_one_is_expected() {
    let (_nodes, bootstrap) = start_nodes(3).await;
    let (alice, _alice_events) = Device::new("alice").start(&bootstrap);
    let (carol, _carol_events) = Device::new("carol").start(&bootstrap);
    let (bob, mut bob_events) = Device::new("bob").start_adjusted(&bootstrap, |config| {
        config.request_poll = Duration::from_secs(3600);
        config.request_poll_expecting = Duration::from_millis(300);
        config.expecting_requests_for = Duration::from_secs(4);
        config.mailbox.fetch_every = Duration::from_secs(3600);
    });
    let bob_id = bob.status().await.unwrap().id;
    // Bob's first read, on joining, is over well before anyone asks.
    eventually(|| async { (bob.status().await.unwrap().connected > 0).then_some(()) }).await;
    tokio::time::sleep(Duration::from_secs(3)).await;

    let placed = |engine: &Engine| {
        let engine = engine.clone();
        async move {
            let out = engine.requests().await.unwrap().1;
            (!out.is_empty() && out.iter().all(|o| o.dropped)).then_some(())
        }
    };
    eventually(|| async { alice.add(bob_id, "from alice".into()).await.ok() }).await;
    eventually(|| placed(&alice)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        bob.requests().await.unwrap().0.is_empty(),
        "with nothing expected the drop is not read every few seconds"
    );

    bob.expect_requests().await.unwrap();
    let from = wait_for(&mut bob_events, |e| match e {
        Event::Request(request) => Some(request.account),
        _ => None,
    })
    .await;
    assert_eq!(from, alice.account());

    // The expecting time (4 s) ends; Carol's request then waits.
    tokio::time::sleep(Duration::from_secs(5)).await;
    eventually(|| async { carol.add(bob_id, "from carol".into()).await.ok() }).await;
    eventually(|| placed(&carol)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let waiting = bob.requests().await.unwrap().0;
    assert_eq!(
        waiting.len(),
        1,
        "only Alice's request was read: {waiting:?}"
    );

    // A check by hand reads it at once.
    assert_eq!(bob.check_requests().await.unwrap(), 1);
    assert_eq!(bob.requests().await.unwrap().0.len(), 2);
}

/// Friends who have nothing to say stay connected, and shown online, past
/// the network's idle timeout; when one stops, the other sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_friends_stay_online() {
    let (_nodes, bootstrap) = start_nodes(3).await;
    let short_idle = |config: &mut kith_core::engine::Config| {
        config.net.timers.idle_connection_timeout = Duration::from_secs(1);
    };
    let (alice, mut alice_events) = Device::new("alice").start_adjusted(&bootstrap, short_idle);
    let (bob, _bob_events) = Device::new("bob").start_adjusted(&bootstrap, short_idle);
    befriend(&alice, &mut alice_events, &bob).await;
    let online = |engine: &Engine, friend| {
        let engine = engine.clone();
        async move {
            engine
                .friends()
                .await
                .unwrap()
                .iter()
                .any(|f| f.account == friend && f.online)
        }
    };
    eventually(|| async { online(&alice, bob.account()).await.then_some(()) }).await;
    eventually(|| async { online(&bob, alice.account()).await.then_some(()) }).await;

    // Five idle timeouts later, still connected.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(online(&alice, bob.account()).await, "Alice sees Bob online");
    assert!(online(&bob, alice.account()).await, "Bob sees Alice online");

    bob.shutdown().await.unwrap();
    eventually(|| async { (!online(&alice, bob.account()).await).then_some(()) }).await;
}
