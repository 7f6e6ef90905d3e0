//! A flood of friend requests against one account, through the real DHT:
//! 1,000 strangers (each its own account key) leave requests in the
//! victim's request drop, and the victim reads it after every batch. The
//! waiting list stops at [`MAX_PENDING_REQUESTS`], the store stays small,
//! the user is told that requests were turned away, a real friend's request
//! gets in once the user declines the flood, and one sender cannot renew
//! a request more than once an hour.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Device, eventually, memory_node, start_nodes};
use futures::StreamExt;
use kith_core::engine::{Event, MAX_PENDING_REQUESTS};
use kith_net::Role;
use kith_proto::presence::PresenceKeys;
use kith_proto::request_drop::{DropEntry, drop_key};
use kith_proto::wire::{ContactCard, DeviceCard, FriendRequest, Payload, Timestamp};
use kith_proto::{AccountKeypair, DeviceKeypair, KithId, Nospam, envelope};

/// Strangers in the flood.
const FLOOD: usize = 1_000;
/// Entries one drop holds (`request_drop::MAX_ENTRIES`): the flood comes in
/// batches of this many, each read before the next.
const BATCH: usize = 16;

/// A friend request from `from` to `to`, sealed as the engine seals one.
fn sealed_request(from: &AccountKeypair, to: &KithId, note: &str) -> Vec<u8> {
    let request = FriendRequest {
        from: KithId::new(from.public(), Nospam([9, 9, 9, 9])),
        to_nospam: to.nospam(),
        display_name: "stranger".into(),
        message: note.into(),
        sent_at: Timestamp::now(),
        card: ContactCard {
            presence: PresenceKeys::derive(from).share(),
            devices: vec![DeviceCard {
                peer_id: DeviceKeypair::generate().peer_id().to_bytes(),
                prekeys: vec![7; 64],
            }],
        },
    };
    let payload = Payload::FriendRequest(Box::new(request)).encode().unwrap();
    envelope::seal(from, to.account(), &payload).unwrap()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn disk_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                disk_bytes(&entry.path())
            } else {
                meta.len()
            }
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_friend_requests_is_held_to_a_bounded_list() {
    let (_nodes, bootstrap) = start_nodes(3).await;
    let dir = tempfile::tempdir().unwrap();
    // Bob, the victim, on a sled store, reads his drop only when asked (so
    // each batch is read exactly once).
    let (bob, mut bob_events) =
        Device::on_disk("bob", dir.path()).start_adjusted(&bootstrap, |config| {
            config.request_poll = Duration::from_secs(3600);
            config.request_poll_expecting = Duration::from_secs(3600);
            config.mailbox.fetch_every = Duration::from_secs(3600);
        });
    let bob_id = bob.status().await.unwrap().id;
    eventually(|| async { (bob.status().await.unwrap().connected > 0).then_some(()) }).await;
    let empty_disk = disk_bytes(dir.path());

    // The attacker: one network client writing into Bob's drop.
    let attacker = memory_node(Role::Client, &bootstrap);
    let key = drop_key(bob_id.account(), &bob_id.nospam());

    // Each batch expires a little later than the one before, so a drop
    // (which keeps the 16 latest entries) always holds the newest batch;
    // all before the 24 h an engine gives its own entries, so that Alice's
    // request, later, is kept in the drop.
    let base = unix_now() + 20 * 3600;
    let mut strangers = Vec::with_capacity(FLOOD);
    for batch in 0..FLOOD.div_ceil(BATCH) {
        let expires = base + batch as u64;
        for _ in 0..BATCH.min(FLOOD - strangers.len()) {
            let stranger = AccountKeypair::generate();
            let entry = DropEntry {
                expires,
                sealed: sealed_request(&stranger, &bob_id, "let me in"),
            };
            eventually(|| {
                let entry = entry.clone();
                let attacker = attacker.clone();
                async move { attacker.drop_request(key, entry).await.ok() }
            })
            .await;
            strangers.push(stranger);
        }
        bob.check_requests().await.unwrap();
    }
    assert_eq!(strangers.len(), FLOOD);

    // The list stopped at the limit, and Bob was told why.
    let waiting = bob.requests().await.unwrap().0;
    assert_eq!(waiting.len(), MAX_PENDING_REQUESTS);
    let mut told = false;
    while let Ok(Some(event)) =
        tokio::time::timeout(Duration::from_millis(200), bob_events.next()).await
    {
        if let Event::Problem(text) = event {
            told |= text.contains("could not be kept");
        }
    }
    assert!(told, "Bob was told that requests were turned away");

    // What the flood cost on disk: every kept request, plus a 16-byte
    // digest for each entry read.
    let flooded_disk = disk_bytes(dir.path());
    println!(
        "{{\"flood\":{FLOOD},\"kept\":{},\"disk_before\":{empty_disk},\"disk_after\":{flooded_disk}}}",
        waiting.len()
    );
    assert!(
        flooded_disk < empty_disk + 16 * 1024 * 1024,
        "the store grew from {empty_disk} to {flooded_disk} bytes"
    );

    // A real friend asks while the list is full: turned away for now.
    let alice_device = Device::new("alice");
    let (alice, _alice_events) = alice_device.start(&bootstrap);
    eventually(|| async { alice.add(bob_id, "it's Alice".into()).await.ok() }).await;
    eventually(|| async {
        let out = alice.requests().await.unwrap().1;
        (!out.is_empty() && out.iter().all(|o| o.dropped)).then_some(())
    })
    .await;
    assert_eq!(bob.check_requests().await.unwrap(), 0);
    assert!(
        !bob.requests()
            .await
            .unwrap()
            .0
            .iter()
            .any(|r| r.account == alice.account())
    );

    // Bob clears the flood in one go. The drop still holds Alice's entry
    // and the 15 newest strangers', all turned away before and so not
    // marked as read: the next read keeps all 16.
    assert_eq!(bob.decline_all().await.unwrap(), MAX_PENDING_REQUESTS);
    assert!(bob.requests().await.unwrap().0.is_empty());
    assert_eq!(bob.check_requests().await.unwrap(), BATCH);
    let waiting = bob.requests().await.unwrap().0;
    assert_eq!(waiting.len(), BATCH);
    assert!(waiting.iter().any(|r| r.account == alice.account()));

    // A declined stranger asking again is ignored; one still waiting
    // cannot replace their request within the hour.
    let ask_again = |stranger: &AccountKeypair, expires: u64, note: &str| {
        let entry = DropEntry {
            expires,
            sealed: sealed_request(stranger, &bob_id, note),
        };
        let attacker = attacker.clone();
        async move {
            eventually(|| {
                let entry = entry.clone();
                let attacker = attacker.clone();
                async move { attacker.drop_request(key, entry).await.ok() }
            })
            .await
        }
    };
    let declined = strangers
        .iter()
        .find(|s| !waiting.iter().any(|r| r.account == s.public()))
        .unwrap();
    let still_waiting = strangers
        .iter()
        .find(|s| waiting.iter().any(|r| r.account == s.public()))
        .unwrap();
    ask_again(declined, base + 1000, "please").await;
    ask_again(still_waiting, base + 1001, "changed my note").await;
    assert_eq!(bob.check_requests().await.unwrap(), 0);
    let waiting = bob.requests().await.unwrap().0;
    assert_eq!(waiting.len(), BATCH);
    assert!(!waiting.iter().any(|r| r.account == declined.public()));
    let kept = waiting
        .iter()
        .find(|r| r.account == still_waiting.public())
        .unwrap();
    assert_eq!(kept.message, "let me in");
}
