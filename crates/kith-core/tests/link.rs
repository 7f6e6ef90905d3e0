//! Linking a second device to an account (in process, memory transport,
//! real engines and stores): the new device gets the account, the device
//! list, contacts, history, edits and read state; a wrong or expired code
//! changes nothing on either side.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use kith_core::engine::{Engine, Event};
use kith_core::join::{self, Joining};
use kith_net::{Multiaddr, Role, TransportKind};
use kith_proto::DeviceKeypair;
use kith_proto::link::{LinkCode, LinkSecret};
use kith_store::profile::Identity;
use kith_store::{Backend, MemoryBackend, Store};

fn join_config(device: &DeviceKeypair, bootstrap: &[Multiaddr]) -> kith_net::Config {
    let mut net = kith_net::Config::new(device.clone(), Role::Client);
    net.transport = TransportKind::Memory;
    net.listen = vec!["/memory/0".parse().unwrap()];
    net.bootstrap = bootstrap.to_vec();
    net
}

/// What a history page shows, comparable across devices.
async fn conversation(engine: &Engine, friend: &kith_proto::AccountPublicKey) -> Vec<String> {
    engine
        .history(*friend, None, 100)
        .await
        .unwrap()
        .messages
        .iter()
        .map(|m| format!("{:?}|{}|{}|{}", m.author, m.body, m.edited, m.deleted))
        .collect()
}

/// The new device's side, run to the end: accepts the first offer,
/// checking that it names `expect_name`, and writes the identity into a
/// fresh store. Returns the identity and the store's backend.
async fn accept_first_offer(
    mut joining: Joining,
    expect_name: &str,
) -> (Identity, Arc<MemoryBackend>) {
    let offer = tokio::time::timeout(WAIT, joining.next_offer())
        .await
        .expect("an offer in time")
        .expect("an offer");
    assert_eq!(offer.display_name(), expect_name);
    let device = joining.device().clone();
    let backend = Arc::new(MemoryBackend::new());
    let seeded = backend.clone();
    let bundle = joining
        .accept(offer, move |bundle| {
            let store = Store::open(seeded, None, kith_core::SCHEMA_VERSION, &[])
                .map_err(|e| e.to_string())?;
            join::seed_store(&store, bundle).map_err(|e| e.to_string())
        })
        .await
        .expect("accepted");
    let identity = Identity {
        account: kith_proto::AccountKeypair::from_secret_bytes(&bundle.account.secret_bytes()),
        nospam: bundle.nospam,
        device,
    };
    (identity, backend)
}

/// Links a new device ("desktop") to `alice`'s account and starts its
/// engine on what it was handed.
async fn link_desktop(alice: &Engine, addrs: &[Multiaddr]) -> (Engine, Events) {
    let (identity, backend) = link_desktop_parts(alice, addrs).await;
    start_linked(identity, backend, addrs)
}

/// Links a new device ("desktop") to `alice`'s account; returns what it
/// starts from.
async fn link_desktop_parts(alice: &Engine, addrs: &[Multiaddr]) -> (Identity, Arc<MemoryBackend>) {
    link_parts(alice, addrs, "alice", "desktop").await
}

/// Links a new device named `device` to the account of `existing`, whose
/// display name is `account`.
async fn link_parts(
    existing: &Engine,
    addrs: &[Multiaddr],
    account: &'static str,
    device: &str,
) -> (Identity, Arc<MemoryBackend>) {
    let new_key = DeviceKeypair::generate();
    let joining = join::start(join_config(&new_key, addrs)).await.unwrap();
    let code = joining.code().clone();
    let new_side = tokio::spawn(accept_first_offer(joining, account));
    let linked = existing
        .link_device(code, Some(device.into()))
        .await
        .expect("linked");
    assert_eq!(linked.name, device);
    assert_eq!(linked.peer_id, new_key.peer_id());
    let (identity, backend) = new_side.await.unwrap();
    assert_eq!(identity.account.public(), existing.account());
    let devices = existing.devices().await.unwrap();
    assert_eq!(devices.len(), 2);
    assert!(devices.iter().any(|d| d.this_device));
    assert!(devices.iter().any(|d| d.name == device && !d.this_device));
    (identity, backend)
}

fn start_linked(
    identity: Identity,
    backend: Arc<MemoryBackend>,
    addrs: &[Multiaddr],
) -> (Engine, Events) {
    let store_backend: Arc<dyn Backend> = backend;
    let store = Store::open(store_backend, None, kith_core::SCHEMA_VERSION, &[]).unwrap();
    let mut net = join_config(&identity.device, addrs);
    net.timers.kad_query_timeout = Duration::from_secs(10);
    let mut config = kith_core::engine::Config::new(identity, store, net);
    config.retry_min = Duration::from_millis(100);
    config.retry_max = Duration::from_secs(2);
    config.mailbox.pow_difficulty = TEST_POW_BITS;
    let (engine, events) = kith_core::engine::start(config).unwrap();
    (engine, Box::pin(events))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_linked_device_shows_the_same_friends_history_and_read_state() {
    let Friends {
        _network,
        addrs,
        laptop: _,
        alice,
        mut alice_events,
        bob_engine,
        _bob_events,
    } = friends(false).await;

    for text in ["one", "two", "three"] {
        bob_engine.send(alice.account(), text.into()).await.unwrap();
    }
    let first = alice
        .send(bob_engine.account(), "hi bob".into())
        .await
        .unwrap();
    alice
        .send(bob_engine.account(), "and again".into())
        .await
        .unwrap();
    alice
        .edit(bob_engine.account(), first, "hello bob".into())
        .await
        .unwrap();
    let mut got = 0;
    wait_for(&mut alice_events, |e| match e {
        Event::Message { message, .. } if message.author == kith_core::history::Author::Friend => {
            got += 1;
            (got == 3).then_some(())
        }
        _ => None,
    })
    .await;
    assert_eq!(alice.mark_read(bob_engine.account()).await.unwrap(), 3);
    // One more from Bob, left unread.
    bob_engine
        .send(alice.account(), "four".into())
        .await
        .unwrap();
    wait_for(&mut alice_events, |e| match e {
        Event::Message { message, .. } if message.body == "four" => Some(()),
        _ => None,
    })
    .await;

    let (desktop, _desktop_events) = link_desktop(&alice, &addrs).await;

    assert_eq!(desktop.account(), alice.account());
    assert_eq!(
        desktop.status().await.unwrap().id,
        alice.status().await.unwrap().id
    );
    let friends = desktop.friends().await.unwrap();
    assert_eq!(friends.len(), 1);
    assert_eq!(friends[0].account, bob_engine.account());
    assert_eq!(friends[0].name, "bob");
    assert_eq!(
        conversation(&desktop, &bob_engine.account()).await,
        conversation(&alice, &bob_engine.account()).await
    );
    let on_laptop = alice.friends().await.unwrap();
    assert_eq!(friends[0].unread, 1, "only 'four' is unread");
    assert_eq!(on_laptop[0].unread, friends[0].unread);
    assert_eq!(desktop.devices().await.unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_or_expired_code_changes_nothing() {
    let (_nodes, addrs) = start_nodes(1).await;
    let laptop = Device::new("alice");
    let (alice, _alice_events) = laptop.start(&addrs);

    let desktop_key = DeviceKeypair::generate();
    let mut joining = join::start(join_config(&desktop_key, &addrs))
        .await
        .unwrap();
    let real = joining.code().clone();
    // The new device answers link requests until told to stop; it must
    // never see an offer.
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let new_side = tokio::spawn(async move {
        tokio::select! {
            offer = joining.next_offer() => offer.is_ok(),
            _ = stopped => false,
        }
    });
    let now = kith_proto::wire::Timestamp::now().0 / 1000;
    let addresses = real.addresses().to_vec();

    // Same device and addresses, another secret: what a mistyped or
    // guessed code would hold if its checksum matched.
    let wrong = LinkCode::generate_with(&desktop_key, LinkSecret::random(), addresses.clone(), now)
        .unwrap();
    let err = alice.link_device(wrong, None).await.unwrap_err();
    assert!(err.to_string().contains("not the code"), "{err}");

    // A code that ran out: refused before anything is sent.
    let expired =
        LinkCode::generate_with(&desktop_key, real.secret().clone(), addresses, now - 400).unwrap();
    let err = alice.link_device(expired, None).await.unwrap_err();
    assert!(err.to_string().contains("expired"), "{err}");

    // Nothing changed on the existing device…
    let devices = alice.devices().await.unwrap();
    assert_eq!(devices.len(), 1);
    assert!(devices[0].this_device);
    // …and the new device was offered nothing.
    stop.send(()).unwrap();
    assert!(
        !new_side.await.unwrap(),
        "no offer may come from a wrong secret"
    );
}

/// What a friend's conversation shows, by body, in order.
async fn bodies(engine: &Engine, friend: &kith_proto::AccountPublicKey) -> Vec<String> {
    engine
        .history(*friend, None, 100)
        .await
        .unwrap()
        .messages
        .into_iter()
        .map(|m| m.body)
        .collect()
}

async fn shows(engine: &Engine, friend: &kith_proto::AccountPublicKey, body: &str) {
    eventually(|| async {
        bodies(engine, friend)
            .await
            .iter()
            .any(|b| b == body)
            .then_some(())
    })
    .await;
}

/// Alice (laptop) and Bob, friends, on two plain DHT nodes or (with
/// `mail`) three mailbox volunteers.
struct Friends {
    _network: Box<dyn std::any::Any + Send>,
    addrs: Vec<Multiaddr>,
    laptop: Device,
    alice: Engine,
    alice_events: Events,
    bob_engine: Engine,
    _bob_events: Events,
}

async fn friends(mail: bool) -> Friends {
    let (network, addrs): (Box<dyn std::any::Any + Send>, _) = if mail {
        let (volunteers, addrs) = start_volunteers(3).await;
        (Box::new(volunteers), addrs)
    } else {
        let (nodes, addrs) = start_nodes(2).await;
        (Box::new(nodes), addrs)
    };
    let laptop = Device::new("alice");
    let bob = Device::new("bob");
    let (alice, mut alice_events, bob_engine, bob_events) = if mail {
        let (alice, alice_events) = laptop.start_mail(&addrs);
        let (bob_engine, bob_events) = bob.start_mail(&addrs);
        (alice, alice_events, bob_engine, bob_events)
    } else {
        let (alice, alice_events) = laptop.start(&addrs);
        let (bob_engine, bob_events) = bob.start(&addrs);
        (alice, alice_events, bob_engine, bob_events)
    };
    befriend(&alice, &mut alice_events, &bob_engine).await;
    Friends {
        _network: network,
        addrs,
        laptop,
        alice,
        alice_events,
        bob_engine,
        _bob_events: bob_events,
    }
}

/// Alice on her laptop and Bob, friends, and Alice's desktop linked.
struct Linked {
    friends: Friends,
    desktop: Engine,
    _desktop_events: Events,
}

async fn linked() -> Linked {
    let friends = friends(false).await;
    let (desktop, desktop_events) = link_desktop(&friends.alice, &friends.addrs).await;
    Linked {
        friends,
        desktop,
        _desktop_events: desktop_events,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linked_devices_keep_in_step_and_friends_reach_each() {
    // Every field is bound: one left to `..` would be dropped here.
    let Linked {
        friends:
            Friends {
                _network,
                addrs,
                laptop,
                alice,
                alice_events,
                bob_engine,
                _bob_events,
            },
        desktop,
        _desktop_events,
    } = linked().await;
    let bob_account = bob_engine.account();

    // Bob writes: both of Alice's devices show it.
    bob_engine
        .send(alice.account(), "to both".into())
        .await
        .unwrap();
    shows(&alice, &bob_account, "to both").await;
    shows(&desktop, &bob_account, "to both").await;

    // The desktop answers: Bob accepts it from a device he learnt of from
    // Alice's list, and the laptop shows it as sent elsewhere.
    desktop
        .send(bob_account, "from the desktop".into())
        .await
        .unwrap();
    shows(&bob_engine, &alice.account(), "from the desktop").await;
    shows(&alice, &bob_account, "from the desktop").await;
    let on_laptop = alice.history(bob_account, None, 100).await.unwrap();
    let synced = on_laptop
        .messages
        .iter()
        .find(|m| m.body == "from the desktop")
        .unwrap();
    assert_eq!(synced.author, kith_core::history::Author::Me);
    assert!(synced.state.is_some());

    // Read on one device, read on both.
    assert!(desktop.mark_read(bob_account).await.unwrap() >= 1);
    eventually(|| async {
        let friends = alice.friends().await.unwrap();
        (friends[0].unread == 0).then_some(())
    })
    .await;

    // The laptop is off; Bob writes; the desktop gets it directly; the
    // laptop, back, gets it from the desktop.
    alice.shutdown().await.unwrap();
    drop(alice);
    drop(alice_events);
    bob_engine
        .send(desktop.account(), "while the laptop sleeps".into())
        .await
        .unwrap();
    shows(&desktop, &bob_account, "while the laptop sleeps").await;
    let (alice, _alice_events) = laptop.start(&addrs);
    shows(&alice, &bob_account, "while the laptop sleeps").await;
    assert_eq!(
        bodies(&alice, &bob_account).await,
        bodies(&desktop, &bob_account).await,
        "both devices show the same conversation in the same order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_device_gets_nothing_new() {
    // Every field is bound: one left to `..` would be dropped here.
    let Linked {
        friends:
            Friends {
                _network,
                addrs: _,
                laptop: _laptop,
                alice,
                alice_events: _alice_events,
                bob_engine,
                _bob_events,
            },
        desktop,
        _desktop_events,
    } = linked().await;
    let bob_account = bob_engine.account();
    bob_engine
        .send(alice.account(), "before".into())
        .await
        .unwrap();
    shows(&desktop, &bob_account, "before").await;

    let err = alice
        .remove_device("alice-laptop-does-not-exist".into())
        .await;
    assert!(err.is_err());
    let this = alice
        .devices()
        .await
        .unwrap()
        .into_iter()
        .find(|d| d.this_device)
        .unwrap();
    let err = alice.remove_device(this.name.clone()).await.unwrap_err();
    assert!(err.to_string().contains("cannot remove itself"), "{err}");
    let removed = alice.remove_device("desktop".into()).await.unwrap();
    assert_eq!(removed.name, "desktop");
    assert_eq!(alice.devices().await.unwrap().len(), 1);

    // The new list goes to Bob ahead of this message.
    alice.send(bob_account, "removed it".into()).await.unwrap();
    shows(&bob_engine, &alice.account(), "removed it").await;
    bob_engine
        .send(alice.account(), "after".into())
        .await
        .unwrap();
    desktop
        .send(bob_account, "from the removed device".into())
        .await
        .unwrap();
    shows(&alice, &bob_account, "after").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !bodies(&desktop, &bob_account)
            .await
            .contains(&"after".to_string()),
        "the removed device got a message sent after its removal"
    );
    assert!(
        !bodies(&bob_engine, &alice.account())
            .await
            .contains(&"from the removed device".to_string()),
        "a friend took a message from a removed device"
    );
    assert!(
        !bodies(&alice, &bob_account)
            .await
            .contains(&"from the removed device".to_string()),
        "the account's devices took ops from a removed device"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_devices_never_online_together_each_get_mail() {
    let (volunteers, addrs) = start_volunteers(3).await;
    let laptop = Device::new("alice");
    let bob = Device::new("bob");
    let (alice, mut alice_events) = laptop.start_mail(&addrs);
    let (bob_engine, _bob_events) = bob.start_mail(&addrs);
    befriend(&alice, &mut alice_events, &bob_engine).await;
    let alice_account = alice.account();
    let bob_account = bob_engine.account();
    let (identity, backend) = link_desktop_parts(&alice, &addrs).await;
    let address = kith_proto::mailbox::mailbox_address(&alice_account);
    // Bob must know the desktop before both go: a message to both proves it.
    let (desktop, desktop_events) = start_linked(identity.clone(), backend.clone(), &addrs);
    bob_engine
        .send(alice_account, "hello both".into())
        .await
        .unwrap();
    shows(&desktop, &bob_account, "hello both").await;
    shows(&alice, &bob_account, "hello both").await;
    for engine in [&alice, &desktop] {
        engine.shutdown().await.unwrap();
    }
    drop((alice, alice_events, desktop, desktop_events));

    // Both of Alice's devices are off: Bob's messages go to the mailbox.
    for text in ["m1", "m2", "m3"] {
        bob_engine.send(alice_account, text.into()).await.unwrap();
    }
    eventually(|| async {
        let page = bob_engine.history(alice_account, None, 10).await.unwrap();
        let stored = page
            .messages
            .iter()
            .filter(|m| {
                matches!(
                    m.state,
                    Some(kith_core::engine::MessageState::Stored { .. })
                )
            })
            .count();
        (stored == 3).then_some(())
    })
    .await;
    let mut before = std::collections::HashSet::new();
    for v in &volunteers {
        before.extend(v.volunteer.holds(address).await);
    }

    // The laptop alone: it fetches Bob's mail and leaves the new ops for
    // the desktop in the account's own mailbox.
    let (alice, _alice_events) = laptop.start_mail(&addrs);
    for text in ["m1", "m2", "m3"] {
        shows(&alice, &bob_account, text).await;
    }
    eventually(|| async {
        for v in &volunteers {
            if v.volunteer
                .holds(address)
                .await
                .iter()
                .any(|id| !before.contains(id))
            {
                return Some(());
            }
        }
        None
    })
    .await;
    alice.shutdown().await.unwrap();
    drop(alice);

    // The desktop alone: it gets them from the mailbox too.
    let (desktop, _desktop_events) = start_linked(identity, backend, &addrs);
    for text in ["m1", "m2", "m3"] {
        shows(&desktop, &bob_account, text).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_from_before_the_op_log_hands_over_its_friends_and_history() {
    let Friends {
        _network,
        addrs,
        laptop,
        alice,
        alice_events,
        bob_engine,
        _bob_events,
    } = friends(false).await;
    let bob_account = bob_engine.account();
    bob_engine
        .send(alice.account(), "old one".into())
        .await
        .unwrap();
    shows(&alice, &bob_account, "old one").await;
    alice.send(bob_account, "old two".into()).await.unwrap();
    alice.shutdown().await.unwrap();
    drop((alice, alice_events));

    // What a profile made by an earlier build looks like: no op log.
    let store_backend: Arc<dyn Backend> = laptop.backend.clone();
    let store = Store::open(store_backend, None, kith_core::SCHEMA_VERSION, &[]).unwrap();
    let log = store
        .range(
            "sync-ops",
            std::ops::Bound::Unbounded,
            std::ops::Bound::Unbounded,
            kith_store::Direction::Forward,
            10_000,
        )
        .unwrap();
    assert!(!log.is_empty());
    store
        .apply_durable(
            log.into_iter()
                .map(|(key, _)| kith_store::Op::Delete {
                    tree: "sync-ops".into(),
                    key,
                })
                .collect(),
        )
        .unwrap();
    drop(store);

    let (alice, _alice_events) = laptop.start(&addrs);
    let (desktop, _desktop_events) = link_desktop(&alice, &addrs).await;
    assert_eq!(desktop.friends().await.unwrap().len(), 1);
    assert_eq!(
        conversation(&desktop, &bob_account).await,
        conversation(&alice, &bob_account).await
    );
    assert_eq!(
        bodies(&desktop, &bob_account).await,
        vec!["old one".to_string(), "old two".to_string()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_friends_device_linked_earlier_introduces_itself_to_a_new_device() {
    let Friends {
        _network,
        addrs,
        laptop: _,
        alice,
        alice_events,
        bob_engine,
        _bob_events,
    } = friends(false).await;
    let bob_account = bob_engine.account();

    // Bob links a phone; Alice's laptop learns of it.
    let (identity, backend) = link_parts(&bob_engine, &addrs, "bob", "phone").await;
    let (phone, _phone_events) = start_linked(identity, backend, &addrs);
    phone
        .send(alice.account(), "from bob's phone".into())
        .await
        .unwrap();
    shows(&alice, &bob_account, "from bob's phone").await;

    // Alice links a desktop afterwards: it was handed Bob's card only.
    let (desktop, _desktop_events) = link_desktop(&alice, &addrs).await;
    alice.shutdown().await.unwrap();
    drop((alice, alice_events));
    // With the laptop gone, only the phone itself can reach the desktop.
    phone
        .send(desktop.account(), "to the new desktop".into())
        .await
        .unwrap();
    shows(&desktop, &bob_account, "to the new desktop").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_device_leaves_the_accounts_mail_alone() {
    let Friends {
        _network,
        addrs,
        laptop,
        alice,
        alice_events,
        bob_engine,
        _bob_events,
    } = friends(true).await;
    let alice_account = alice.account();
    let bob_account = bob_engine.account();
    let (identity, backend) = link_desktop_parts(&alice, &addrs).await;
    let (desktop, _desktop_events) = start_linked(identity, backend, &addrs);

    // The laptop removes the desktop; the desktop hears of it.
    alice.remove_device("desktop".into()).await.unwrap();
    alice.send(bob_account, "removed it".into()).await.unwrap();
    shows(&bob_engine, &alice_account, "removed it").await;
    // The laptop tells it directly; it adopts the new list.
    eventually(|| async { (desktop.devices().await.unwrap().len() == 1).then_some(()) }).await;

    // The laptop is off; Bob's messages go to the account's mailbox; the
    // removed desktop, still running, must not take them.
    alice.shutdown().await.unwrap();
    drop((alice, alice_events));
    bob_engine
        .send(alice_account, "while away".into())
        .await
        .unwrap();
    eventually(|| async {
        let page = bob_engine.history(alice_account, None, 10).await.unwrap();
        page.messages
            .iter()
            .any(|m| {
                m.body == "while away"
                    && matches!(
                        m.state,
                        Some(kith_core::engine::MessageState::Stored { .. })
                    )
            })
            .then_some(())
    })
    .await;
    // The desktop's own fetches find nothing to take.
    desktop.check_requests().await.ok();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !bodies(&desktop, &bob_account)
            .await
            .contains(&"while away".to_string())
    );

    let (alice, _alice_events) = laptop.start_mail(&addrs);
    shows(&alice, &bob_account, "while away").await;
}
