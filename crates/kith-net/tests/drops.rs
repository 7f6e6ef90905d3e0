//! Request drops in an in-process DHT: one client leaves friend requests
//! under the recipient's drop key, the recipient collects them, and what
//! DHT nodes store stays within the limits.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{eventually, start_client, start_nodes, within};
use kith_net::NetError;
use kith_proto::Nospam;
use kith_proto::request_drop::{
    DropEntry, DropError, MAX_DROP_ENTRIES, MAX_DROP_ENTRY_BYTES, MAX_DROP_TTL_SECS, RequestDrop,
    drop_key,
};

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn entry(byte: u8, lifetime: u64) -> DropEntry {
    DropEntry {
        expires: now() + lifetime,
        sealed: vec![byte; 600],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_dropped_by_one_client_are_fetched_by_the_recipient() {
    let nodes = start_nodes(4).await;
    let bootstrap = vec![nodes[0].p2p_addr()];
    let alice = start_client(bootstrap.clone()).await;
    let bob = start_client(bootstrap).await;
    let bob_key = drop_key(
        &bob.account.as_ref().expect("client").public(),
        &Nospam([9, 8, 7, 6]),
    );

    // Nothing there yet: an empty answer, not an error.
    let none = within(Duration::from_secs(30), bob.client.fetch_requests(bob_key))
        .await
        .expect("fetched");
    assert!(none.is_empty());

    let first = entry(1, 3600);
    let second = entry(2, 7200);
    for e in [&first, &second] {
        within(
            Duration::from_secs(30),
            alice.client.drop_request(bob_key, e.clone()),
        )
        .await
        .expect("dropped");
    }
    let client = bob.client.clone();
    eventually(Duration::from_secs(20), "both requests fetched", || {
        let client = client.clone();
        let want = vec![second.clone(), first.clone()];
        async move {
            client
                .fetch_requests(bob_key)
                .await
                .is_ok_and(|got| got == want)
        }
    })
    .await;

    // Dropping the same request again changes nothing.
    alice
        .client
        .drop_request(bob_key, first.clone())
        .await
        .expect("dropped again");
    assert_eq!(
        bob.client.fetch_requests(bob_key).await.expect("fetched"),
        vec![second.clone(), first.clone()]
    );

    // DHT nodes hold it as one bounded record, and only under that key.
    let mut holders = 0;
    for node in &nodes {
        for (key, value) in node.client.stored_records().await.expect("records") {
            if key == bob_key {
                holders += 1;
                let held = RequestDrop::decode(&value).expect("a drop record");
                assert_eq!(held.entries, vec![second.clone(), first.clone()]);
            }
        }
    }
    assert!(holders >= 1, "no node stores the drop");

    // Another nospam, another drop: nothing there.
    let other = drop_key(
        &bob.account.as_ref().expect("client").public(),
        &Nospam([9, 8, 7, 5]),
    );
    assert!(
        bob.client
            .fetch_requests(other)
            .await
            .expect("fetched")
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_drop_keeps_the_requests_that_expire_last() {
    let nodes = start_nodes(2).await;
    let alice = start_client(vec![nodes[0].p2p_addr()]).await;
    let key = [0x5a; 32];
    for i in 0..(MAX_DROP_ENTRIES as u8 + 2) {
        alice
            .client
            .drop_request(key, entry(i, 600 + u64::from(i)))
            .await
            .expect("dropped");
    }
    let got = alice.client.fetch_requests(key).await.expect("fetched");
    assert_eq!(got.len(), MAX_DROP_ENTRIES);
    assert!(
        got.iter().all(|e| e.sealed[0] >= 2),
        "the two earliest-expiring are gone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_entries_are_refused_before_anything_is_sent() {
    let nodes = start_nodes(1).await;
    let alice = start_client(vec![nodes[0].p2p_addr()]).await;
    let key = [1; 32];
    let cases = [
        (
            DropEntry {
                expires: now() - 1,
                sealed: vec![1; 10],
            },
            "expired",
        ),
        (
            DropEntry {
                expires: now() + MAX_DROP_TTL_SECS + 600,
                sealed: vec![1; 10],
            },
            "too far",
        ),
        (
            DropEntry {
                expires: now() + 60,
                sealed: vec![1; MAX_DROP_ENTRY_BYTES + 1],
            },
            "too large",
        ),
        (
            DropEntry {
                expires: now() + 60,
                sealed: Vec::new(),
            },
            "empty",
        ),
    ];
    for (entry, what) in cases {
        let result = alice.client.drop_request(key, entry).await;
        assert!(
            matches!(
                result,
                Err(NetError::InvalidDrop(
                    DropError::Expired { .. }
                        | DropError::ExpiryTooFar { .. }
                        | DropError::EntrySize { .. }
                ))
            ),
            "{what}: {result:?}"
        );
    }
    let stored = nodes[0].client.stored_records().await.expect("records");
    assert!(stored.iter().all(|(k, _)| k.as_slice() != key));
}
