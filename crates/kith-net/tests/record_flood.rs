//! A record-store flood: a bare libp2p Kademlia swarm speaking Kith's DHT
//! protocol puts far more valid records at a DHT node than its store
//! holds. Request drops (any key, opaque bytes) stop at a quarter of the
//! store; presence records (each signed with a fresh account key) still
//! fill the rest; the total stops at `Config::max_records`; and the node
//! keeps answering lookups for what it holds.
//!
//! The numbers these show are in `docs/network.md`, "What the limits hold
//! against, and what they cost".

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{
    Attacker, Metrics, Peer, attacker, eventually, memory_config, push, start, start_with_metrics,
    within,
};
use kith_net::Role;
use kith_proto::AccountKeypair;
use kith_proto::presence::{PresenceContents, PresenceKeys, PresenceRecord, PresenceShare};
use kith_proto::request_drop::{
    DropEntry, MAX_DROP_ENTRIES, MAX_DROP_ENTRY_BYTES, RequestDrop, is_drop_record,
};
use libp2p::PeerId;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// A valid request drop of `entries` entries, `size` sealed bytes each,
/// living about `lifetime` seconds.
fn drop_record(seed: u32, entries: usize, size: usize, lifetime: u64) -> Vec<u8> {
    RequestDrop {
        entries: (0..entries)
            .map(|i| DropEntry {
                expires: now() + lifetime + i as u64,
                sealed: vec![(seed as usize + i) as u8; size],
            })
            .collect(),
    }
    .encode()
}

fn drop_key(seed: u32) -> [u8; 32] {
    let mut key = [0xd0; 32];
    key[..4].copy_from_slice(&seed.to_be_bytes());
    key
}

/// A validly signed presence record of a fresh account, with `devices`
/// entries carrying `prekeys` bytes of prekeys and `addresses` addresses
/// of 200 bytes each, living `lifetime` seconds; and the share a friend
/// would find it with.
fn presence_record(
    devices: usize,
    prekeys: usize,
    addresses: usize,
    lifetime: u64,
) -> (PresenceShare, Vec<u8>) {
    let keys = PresenceKeys::derive(&AccountKeypair::generate());
    let entries = (0..devices)
        .map(|_| {
            let contents = PresenceContents {
                peer_id: PeerId::random().to_bytes(),
                addresses: vec![vec![7; 200]; addresses],
                prekeys: vec![9; prekeys],
            };
            keys.entry(&contents, 1, now() + lifetime).expect("entry")
        })
        .collect();
    let record = PresenceRecord {
        presence_key: keys.share().public,
        entries,
    };
    (keys.share(), record.encode())
}

/// Puts a small drop under the key of each of `seeds`, living about
/// `lifetime` seconds.
async fn push_drops(
    attacker: &mut Attacker,
    node: &Peer,
    seeds: std::ops::Range<u32>,
    lifetime: u64,
) {
    for seed in seeds {
        let value = drop_record(seed, 1, 100, lifetime);
        push(attacker, node, &drop_key(seed), value).await;
    }
}

/// Puts `count` small presence records of fresh accounts, living
/// `lifetime` seconds; returns their shares.
async fn push_presence(
    attacker: &mut Attacker,
    node: &Peer,
    count: usize,
    lifetime: u64,
) -> Vec<PresenceShare> {
    let mut shares = Vec::with_capacity(count);
    for _ in 0..count {
        let (share, value) = presence_record(1, 0, 1, lifetime);
        push(attacker, node, &share.record_key(), value).await;
        shares.push(share);
    }
    shares
}

/// (request drops, presence records) the node holds.
async fn held(node: &Peer) -> (usize, usize) {
    let records = node.client.stored_records().await.expect("records");
    let drops = records.iter().filter(|(_, v)| is_drop_record(v)).count();
    (drops, records.len() - drops)
}

const DROPS_REFUSED: &str = "kith_request_drops_refused_total";
const DROPS_STORED: &str = "kith_request_drops_stored_total";
const PRESENCE_REFUSED: &str = "kith_presence_records_refused_total";
const PRESENCE_STORED: &str = "kith_presence_records_stored_total";
const STORE_FULL: &str = "reason=\"store_full\"";

/// A node with a store of `max_records`, whose metrics the test reads.
async fn node(max_records: usize) -> (Peer, Metrics) {
    let (mut config, account) = memory_config(Role::Node, Vec::new());
    config.max_records = max_records;
    start_with_metrics(config, account).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_flood_stops_at_the_store_limit_and_drops_at_a_quarter_of_it() {
    const MAX_RECORDS: usize = 64;
    const DROP_SHARE: usize = MAX_RECORDS / 4;
    let (node, metrics) = node(MAX_RECORDS).await;
    let mut attacker = attacker();

    // Request drops under 40 fresh keys: 16 are kept, 24 refused.
    push_drops(&mut attacker, &node, 0..40, 3600).await;
    metrics
        .wait("40 drops handled", |m| {
            m.sum(DROPS_STORED, "") + m.sum(DROPS_REFUSED, "") >= 40.0
        })
        .await;
    assert_eq!(metrics.sum(DROPS_STORED, ""), DROP_SHARE as f64);
    assert_eq!(
        metrics.sum(DROPS_REFUSED, STORE_FULL),
        40.0 - DROP_SHARE as f64
    );
    assert_eq!(metrics.sum(DROPS_REFUSED, ""), 40.0 - DROP_SHARE as f64);
    assert_eq!(held(&node).await, (DROP_SHARE, 0));

    // A drop under a key already held still takes new entries: the share
    // bounds keys, not a friend adding to a drop that is there.
    push(
        &mut attacker,
        &node,
        &drop_key(3),
        drop_record(100, 2, 100, 3600),
    )
    .await;
    metrics
        .wait("the held drop merged", |m| {
            m.sum(DROPS_STORED, "") > DROP_SHARE as f64
        })
        .await;

    // Presence records of 60 fresh accounts: the remaining 48 slots fill,
    // the other 12 are refused for a full store.
    let shares = push_presence(&mut attacker, &node, 60, 3600).await;
    metrics
        .wait("60 presence records handled", |m| {
            m.sum(PRESENCE_STORED, "") + m.sum(PRESENCE_REFUSED, "") >= 60.0
        })
        .await;
    let room = MAX_RECORDS - DROP_SHARE;
    assert_eq!(metrics.sum(PRESENCE_STORED, ""), room as f64);
    assert_eq!(
        metrics.sum(PRESENCE_REFUSED, STORE_FULL),
        60.0 - room as f64
    );
    assert_eq!(held(&node).await, (DROP_SHARE, room));
    assert_eq!(
        node.client.stored_record_count().await.expect("count"),
        MAX_RECORDS
    );

    // Full: one more drop under a new key, and one more presence record,
    // are refused too.
    push(
        &mut attacker,
        &node,
        &drop_key(1000),
        drop_record(7, 1, 100, 3600),
    )
    .await;
    let (share, record) = presence_record(1, 0, 1, 3600);
    push(&mut attacker, &node, &share.record_key(), record).await;
    metrics
        .wait("both refused", |m| {
            m.sum(DROPS_REFUSED, STORE_FULL) >= 40.0 - DROP_SHARE as f64 + 1.0
                && m.sum(PRESENCE_REFUSED, STORE_FULL) >= 60.0 - room as f64 + 1.0
        })
        .await;
    assert_eq!(
        node.client.stored_record_count().await.expect("count"),
        MAX_RECORDS
    );

    // The node still answers lookups for what it holds: a presence record
    // stored before the store filled, and the drops.
    let (mut config, account) = memory_config(Role::Client, vec![node.p2p_addr()]);
    config.presence = None;
    let reader = start(config, account).await;
    let client = reader.client.clone();
    eventually(Duration::from_secs(20), "the reader knows the node", || {
        let client = client.clone();
        async move { client.routing_table().await.is_ok_and(|t| !t.is_empty()) }
    })
    .await;
    let devices = within(
        Duration::from_secs(30),
        reader.client.find_devices(&shares[0]),
    )
    .await
    .expect("found a stored presence record");
    assert_eq!(devices.len(), 1);
    let entries = within(
        Duration::from_secs(30),
        reader.client.fetch_requests(drop_key(3)),
    )
    .await
    .expect("fetched a stored drop");
    assert_eq!(entries.len(), 3, "the first entry and the two merged");
    let entries = within(
        Duration::from_secs(30),
        reader.client.fetch_requests(drop_key(30)),
    )
    .await
    .expect("an empty answer for a refused drop");
    assert!(entries.is_empty());
}

/// Resident memory of this process, in bytes (Linux).
fn rss() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Fills a store of 512 with records of about the largest size each kind
/// may have, and reports what that costs. Counts are asserted; memory is
/// printed (`--nocapture`, alone: other tests in the process move RSS).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_full_of_the_largest_records_costs_about_their_size() {
    const MAX_RECORDS: usize = 512;
    let (node, metrics) = node(MAX_RECORDS).await;
    let mut attacker = attacker();
    // Each value is built just before it is sent and freed once sent, so
    // what the process grows by is what the node holds (and some libp2p
    // buffers), not the test's own copies.
    let before = rss();
    let (mut drop_bytes, mut presence_bytes) = (0, 0);
    for seed in 0..MAX_RECORDS as u32 / 4 {
        let value = drop_record(seed, MAX_DROP_ENTRIES, MAX_DROP_ENTRY_BYTES, 3600);
        drop_bytes += value.len();
        push(&mut attacker, &node, &drop_key(seed), value).await;
    }
    for _ in 0..MAX_RECORDS - MAX_RECORDS / 4 {
        let (share, value) = presence_record(8, 512, 4, 3600);
        presence_bytes += value.len();
        push(&mut attacker, &node, &share.record_key(), value).await;
    }
    metrics
        .wait("every record stored", |m| {
            m.sum(DROPS_STORED, "") + m.sum(PRESENCE_STORED, "") >= MAX_RECORDS as f64
        })
        .await;
    assert_eq!(metrics.sum(DROPS_REFUSED, ""), 0.0);
    assert_eq!(metrics.sum(PRESENCE_REFUSED, ""), 0.0);
    assert_eq!(held(&node).await, (MAX_RECORDS / 4, MAX_RECORDS * 3 / 4));
    let after = rss();

    let values = drop_bytes + presence_bytes;
    println!(
        "store of {MAX_RECORDS}: drops {} bytes each, presence {} bytes each, {values} bytes of values",
        drop_bytes / (MAX_RECORDS / 4),
        presence_bytes / (MAX_RECORDS * 3 / 4),
    );
    if let (Some(before), Some(after)) = (before, after) {
        let grown = after.saturating_sub(before);
        println!(
            "RSS +{grown} bytes: {:.2} × the values, {} bytes per record",
            grown as f64 / values as f64,
            grown / MAX_RECORDS as u64
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_records_give_their_place_back() {
    const MAX_RECORDS: usize = 16;
    let (node, metrics) = node(MAX_RECORDS).await;
    let mut attacker = attacker();
    // The drop share (4) and the rest of the store (12), with records
    // that expire within 5 s.
    const LIFETIME: u64 = 5;
    let stored_at = now();
    push_drops(&mut attacker, &node, 0..4, LIFETIME).await;
    push_presence(&mut attacker, &node, 12, LIFETIME).await;
    metrics
        .wait("the store filled", |m| {
            m.sum(DROPS_STORED, "") + m.sum(PRESENCE_STORED, "") >= MAX_RECORDS as f64
        })
        .await;
    while now() <= stored_at + LIFETIME + 1 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Once they expired, new records take their places (Kademlia itself
    // would remove them only at its next replication pass, hours later).
    push_drops(&mut attacker, &node, 10..14, 3600).await;
    push_presence(&mut attacker, &node, 12, 3600).await;
    metrics
        .wait("new records handled", |m| {
            m.sum(DROPS_STORED, "")
                + m.sum(PRESENCE_STORED, "")
                + m.sum(DROPS_REFUSED, "")
                + m.sum(PRESENCE_REFUSED, "")
                >= 2.0 * MAX_RECORDS as f64
        })
        .await;
    assert_eq!(metrics.sum(DROPS_REFUSED, ""), 0.0);
    assert_eq!(metrics.sum(PRESENCE_REFUSED, ""), 0.0);
    assert_eq!(held(&node).await, (4, 12));
}
