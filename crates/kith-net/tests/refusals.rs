//! A hostile peer — a bare libp2p Kademlia swarm speaking Kith's DHT
//! protocol — pushes bad presence records and request drops straight at a
//! DHT node, which must refuse each with the right reason and keep what it
//! had.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{Attacker, Peer, attacker, eventually, push, start_client, start_nodes};
use kith_net::Event;
use kith_proto::AccountKeypair;
use kith_proto::presence::{PresenceContents, PresenceKeys, PresenceRecord};
use kith_proto::request_drop::{
    DROP_TAG, DropEntry, MAX_DROP_ENTRY_BYTES, MAX_DROP_RECORD_BYTES, RequestDrop,
};

async fn refusal(node: &mut Peer) -> &'static str {
    node.wait_event(|e| match e {
        Event::RecordRefused { reason, .. } => Some(*reason),
        _ => None,
    })
    .await
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn entry_contents(attacker: &Attacker) -> PresenceContents {
    PresenceContents {
        peer_id: attacker.local_peer_id().to_bytes(),
        addresses: Vec::new(),
        prekeys: Vec::new(),
    }
}

async fn stored_value(node: &Peer, key: &[u8]) -> Option<Vec<u8>> {
    node.client
        .stored_records()
        .await
        .expect("records")
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_records_are_refused_each_for_its_reason() {
    let mut nodes = start_nodes(1).await;
    let alice = start_client(vec![nodes[0].p2p_addr()]).await;
    let share = alice.share();
    let key = share.record_key();
    let node = &mut nodes[0];
    let before = stored_value(node, &key)
        .await
        .expect("alice's record stored");
    let mut attacker = attacker();

    // Forged: alice's record with its sequence raised, signature untouched.
    let mut forged = PresenceRecord::decode(&before).expect("decodes");
    forged.entries[0].seq += 1;
    push(&mut attacker, node, &key, forged.encode()).await;
    assert_eq!(refusal(node).await, "bad_signature");

    // Oversized.
    push(&mut attacker, node, &key, vec![1u8; 20 * 1024]).await;
    assert_eq!(refusal(node).await, "too_large");

    // Filed under someone else's key.
    let mallory = PresenceKeys::derive(&AccountKeypair::generate());
    let theirs = mallory.record(
        mallory
            .entry(&entry_contents(&attacker), 1, now() + 600)
            .expect("entry"),
    );
    push(&mut attacker, node, &key, theirs.encode()).await;
    assert_eq!(refusal(node).await, "wrong_key");

    // Validly signed but already expired.
    let expired = mallory.record(
        mallory
            .entry(&entry_contents(&attacker), 1, now() - 5)
            .expect("entry"),
    );
    let mallory_key = mallory.share().record_key();
    push(&mut attacker, node, &mallory_key, expired.encode()).await;
    assert_eq!(refusal(node).await, "expired");

    // Claiming to live far longer than allowed.
    let far = mallory.record(
        mallory
            .entry(&entry_contents(&attacker), 1, now() + 30 * 24 * 3600)
            .expect("entry"),
    );
    push(&mut attacker, node, &mallory_key, far.encode()).await;
    assert_eq!(refusal(node).await, "expiry_too_far");
    assert_eq!(stored_value(node, &mallory_key).await, None);

    // Alice's record is untouched by all of that.
    assert_eq!(stored_value(node, &key).await.as_deref(), Some(&before[..]));

    // Older sequence: alice republishes, then the attacker replays the
    // record captured before.
    let newer = alice.client.publish_presence().await.expect("republished");
    let client = node.client.clone();
    eventually(Duration::from_secs(10), "newer record stored", || {
        let client = client.clone();
        let key = key.to_vec();
        let before = before.clone();
        async move {
            client
                .stored_records()
                .await
                .is_ok_and(|r| r.iter().any(|(k, v)| *k == key && *v != before))
        }
    })
    .await;
    push(&mut attacker, node, &key, before.clone()).await;
    assert_eq!(refusal(node).await, "stale");
    let stored =
        PresenceRecord::decode(&stored_value(node, &key).await.expect("stored")).expect("decodes");
    assert_eq!(stored.entries[0].seq, newer.seq);

    // A friend's lookup still finds the newest entry.
    let bob = start_client(vec![node.p2p_addr()]).await;
    let devices = bob.client.find_devices(&share).await.expect("found");
    assert_eq!(devices[0].seq, newer.seq);
    assert_eq!(devices[0].peer_id, alice.peer_id());
}

fn drop_of(entries: &[(u64, usize)]) -> Vec<u8> {
    RequestDrop {
        entries: entries
            .iter()
            .enumerate()
            .map(|(i, &(expires, size))| DropEntry {
                expires,
                sealed: vec![i as u8 + 1; size],
            })
            .collect(),
    }
    .encode()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_request_drops_are_refused_each_for_its_reason() {
    let mut nodes = start_nodes(1).await;
    let alice = start_client(vec![nodes[0].p2p_addr()]).await;
    let presence_key = alice.share().record_key();
    let node = &mut nodes[0];
    let presence = stored_value(node, &presence_key)
        .await
        .expect("alice's record stored");
    let mut attacker = attacker();
    let key = [0x42; 32];

    push(&mut attacker, node, &key, drop_of(&[(now() - 5, 100)])).await;
    assert_eq!(refusal(node).await, "expired");

    push(
        &mut attacker,
        node,
        &key,
        drop_of(&[(now() + 30 * 24 * 3600, 100)]),
    )
    .await;
    assert_eq!(refusal(node).await, "expiry_too_far");

    let mut oversized = vec![DROP_TAG];
    oversized.resize(MAX_DROP_RECORD_BYTES + 1, 0);
    push(&mut attacker, node, &key, oversized).await;
    assert_eq!(refusal(node).await, "too_large");

    push(
        &mut attacker,
        node,
        &key,
        drop_of(&[(now() + 60, MAX_DROP_ENTRY_BYTES + 1)]),
    )
    .await;
    assert_eq!(refusal(node).await, "too_large");

    push(&mut attacker, node, &key, vec![DROP_TAG, 1, 0xff]).await;
    assert_eq!(refusal(node).await, "malformed");
    assert_eq!(stored_value(node, &key).await, None);

    // A drop cannot displace a presence record.
    push(
        &mut attacker,
        node,
        &presence_key,
        drop_of(&[(now() + 60, 100)]),
    )
    .await;
    assert_eq!(refusal(node).await, "key_in_use");
    assert_eq!(
        stored_value(node, &presence_key).await.as_deref(),
        Some(&presence[..])
    );

    // Valid drops are stored and merged.
    let (one, two) = (now() + 600, now() + 1200);
    push(&mut attacker, node, &key, drop_of(&[(one, 100)])).await;
    push(
        &mut attacker,
        node,
        &key,
        drop_of(&[(one, 100), (two, 200)]),
    )
    .await;
    let client = node.client.clone();
    eventually(Duration::from_secs(10), "merged drop stored", || {
        let client = client.clone();
        async move {
            client.stored_records().await.is_ok_and(|records| {
                records.iter().any(|(k, v)| {
                    *k == key
                        && RequestDrop::decode(v).is_ok_and(|d| {
                            d.entries
                                == vec![
                                    DropEntry {
                                        expires: two,
                                        sealed: vec![2; 200],
                                    },
                                    DropEntry {
                                        expires: one,
                                        sealed: vec![1; 100],
                                    },
                                ]
                        })
                })
            })
        }
    })
    .await;
}
