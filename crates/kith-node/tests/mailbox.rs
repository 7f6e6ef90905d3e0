//! The real `kithd` binary as a mailbox volunteer under abuse, from
//! in-process clients on loopback: every bad deposit is refused with its
//! own [`DepositRefusal`] (a tampered expiry, a lifetime over the node's
//! maximum, an over-size item, weak proof of work, a full mailbox, a full
//! volunteer, too many deposits) and a fetch proved with another account's
//! key is denied; a flood stops at the quota, with the store's folder on
//! disk within a bound; a short-lived item is swept soon after it expires.
//!
//! Requests a well-behaved sender would never make (a tampered or
//! over-size item) are built by hand and sent with
//! [`Client::mailbox_request`]. Each node gets a generous deposit rate
//! unless the test is about rates: the volunteer takes a rate token before
//! it reads a deposit, so refused deposits count too.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Kithd, mail_client, mailbox_usage, start_kithd_with, unix_now};
use kith_mailbox::protocol::{Denial, Request, Response};
use kith_mailbox::user;
use kith_net::{Client, Multiaddr, PeerId};
use kith_proto::mailbox::{
    DepositRefusal, FetchChallenge, FetchProof, MAILBOX_VERSION, MAX_ITEM_BYTES, MailboxItem,
    WitnessReceipt, mailbox_address,
};
use kith_proto::{AccountKeypair, AccountPublicKey, random_bytes};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
/// Flags that keep the deposit rate out of the way of tests about
/// something else.
const GENEROUS_RATE: [&str; 4] = [
    "--mailbox-deposits-per-minute",
    "100000",
    "--mailbox-burst",
    "100000",
];

/// Starts kithd with `flags` from inside the test's runtime.
fn start(data_dir: &Path, flags: &[&str]) -> Kithd {
    tokio::task::block_in_place(|| start_kithd_with(data_dir, flags))
}

/// [`start`] with [`GENEROUS_RATE`] added.
fn start_generous(data_dir: &Path, flags: &[&str]) -> Kithd {
    let flags: Vec<&str> = flags.iter().chain(&GENEROUS_RATE).copied().collect();
    start(data_dir, &flags)
}

/// One client talking to one node, with raw protocol requests.
#[derive(Clone)]
struct Caller {
    client: Client,
    node: PeerId,
    addrs: Vec<Multiaddr>,
}

impl Caller {
    /// A new client of its own (so a peer ID of its own) for `kithd`.
    async fn new(kithd: &Kithd) -> Self {
        Self {
            client: mail_client(kithd.tcp(), kithd.peer_id()).await,
            node: kithd.peer_id(),
            addrs: vec![kithd.tcp()],
        }
    }

    /// Sends `request` and decodes the answer.
    async fn ask(&self, request: Request) -> Response {
        let bytes = request.encode().expect("the request encodes");
        let answer = self
            .client
            .mailbox_request(self.node, self.addrs.clone(), bytes)
            .await
            .expect("the node answers");
        Response::decode(&answer).expect("a valid response")
    }

    /// Deposits `item`, bytes as given: the node's receipt, or its
    /// refusal.
    async fn deposit_bytes(&self, item: Vec<u8>) -> Result<WitnessReceipt, DepositRefusal> {
        match self.ask(Request::Deposit { item }).await {
            Response::Accepted { receipt } => {
                let receipt = WitnessReceipt::decode(&receipt).expect("a receipt");
                receipt.verify().expect("the receipt verifies");
                assert_eq!(receipt.volunteer_peer_id(), Ok(self.node));
                Ok(receipt)
            }
            refused @ Response::Refused { .. } => Err(refused.refusal().expect("a refusal")),
            other => panic!("a deposit answered with {other:?}"),
        }
    }

    /// Deposits `item` as it is, without the re-signing `user::deposit`
    /// does.
    async fn deposit(&self, item: &MailboxItem) -> Result<WitnessReceipt, DepositRefusal> {
        self.deposit_bytes(item.encode().expect("the item encodes"))
            .await
    }
}

/// An item of `content_len` bytes from a new sender to `recipient`.
fn seal(recipient: &AccountPublicKey, content_len: usize, expires: u64, bits: u8) -> MailboxItem {
    let content = vec![0x6b; content_len];
    MailboxItem::seal(
        &AccountKeypair::generate(),
        recipient,
        &content,
        expires,
        bits,
    )
    .expect("sealed")
}

/// Appends `value` as a postcard varint, as the item encoding does.
fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value & 0x7f) as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// `item` encoded field by field as [`MailboxItem::encode`] does, with
/// `sealed` as its sealed contents: `encode` itself refuses contents over
/// [`MAX_ITEM_BYTES`].
fn encode_with_sealed(item: &MailboxItem, sealed: &[u8]) -> Vec<u8> {
    let mut out = vec![MAILBOX_VERSION];
    out.extend_from_slice(&item.item_id);
    out.extend_from_slice(&item.address);
    put_varint(&mut out, item.expires);
    out.extend_from_slice(&item.one_time_key);
    put_varint(&mut out, item.pow_nonce);
    put_varint(&mut out, sealed.len() as u64);
    out.extend_from_slice(sealed);
    out.extend_from_slice(&item.signature);
    out
}

/// Bytes of the files under `path`.
fn dir_size(path: &Path) -> u64 {
    std::fs::read_dir(path)
        .expect("a folder")
        .map(|entry| {
            let entry = entry.expect("an entry");
            let meta = entry.metadata().expect("metadata");
            if meta.is_dir() {
                dir_size(&entry.path())
            } else {
                meta.len()
            }
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_deposits_and_a_fetch_with_the_wrong_key_are_refused_each_with_its_own_reason() {
    let data = tempfile::tempdir().expect("tempdir");
    let kithd = start_generous(
        data.path(),
        &["--mailbox-pow-bits", "12", "--mailbox-ttl-max-secs", "3600"],
    );
    let node = kithd.peer_id();
    let caller = Caller::new(&kithd).await;
    let recipient = AccountKeypair::generate();
    let address = mailbox_address(&recipient.public());
    let now = unix_now();
    let mut kept = Vec::new();

    // A changed expiry, not signed again: the one-time key's signature no
    // longer covers the item. (Sent before the original, which would
    // otherwise be held under the same item ID and make this a conflicting
    // copy.)
    let item = seal(&recipient.public(), 100, now + 1800, 12);
    let mut tampered = MailboxItem::decode(&item.encode().expect("encodes")).expect("decodes");
    tampered.expires -= 60;
    assert_eq!(
        caller.deposit(&tampered).await,
        Err(DepositRefusal::BadSignature)
    );
    let receipt = caller.deposit(&item).await.expect("the item as signed");
    assert_eq!(receipt.item_id, item.item_id);
    kept.push(item.item_id);

    // Already expired.
    let expired = seal(&recipient.public(), 100, now - 10, 12);
    assert_eq!(caller.deposit(&expired).await, Err(DepositRefusal::Expired));

    // Two hours to live, over the node's hour.
    let long = seal(&recipient.public(), 100, now + 2 * 3600, 12);
    assert_eq!(
        caller.deposit(&long).await,
        Err(DepositRefusal::TtlTooLong { max: 3600 })
    );

    // The node takes sealed contents up to the proto default, 64 KiB, and
    // not a byte more. The larger item is well formed but for its size,
    // which the node's decoder refuses before reading the contents.
    let largest = MailboxItem::sign_sealed(
        random_bytes(),
        address,
        now + 1800,
        vec![0x6b; MAX_ITEM_BYTES],
        &random_bytes(),
        12,
    )
    .expect("signed");
    assert_eq!(
        encode_with_sealed(&largest, &largest.sealed),
        largest.encode().expect("encodes"),
        "the hand encoding is the item encoding"
    );
    let over = MailboxItem {
        item_id: random_bytes(),
        ..largest.clone()
    };
    let over = encode_with_sealed(&over, &[0x6b; MAX_ITEM_BYTES + 1]);
    assert!(MailboxItem::decode(&over).is_err());
    assert_eq!(
        caller.deposit_bytes(over).await,
        Err(DepositRefusal::TooLarge {
            max: MAX_ITEM_BYTES as u64
        })
    );
    caller.deposit(&largest).await.expect("64 KiB is taken");
    kept.push(largest.item_id);

    // No or little proof of work against the node's 12 bits. (An item
    // sealed at fewer bits may have more by chance: those are skipped.)
    let weak = |bits| loop {
        let item = seal(&recipient.public(), 100, now + 1800, bits);
        if item.work_bits() < 12 {
            return item;
        }
    };
    for bits in [0, 4] {
        assert_eq!(
            caller.deposit(&weak(bits)).await,
            Err(DepositRefusal::WeakProofOfWork { required: 12 }),
            "sealed at {bits} bits"
        );
    }
    // A sender's deposit re-signs the same envelope at the difficulty the
    // node asks for.
    let weak = weak(4);
    let outcome = user::deposit(&caller.client, &weak, 1, &[])
        .await
        .expect("the node is found");
    assert!(outcome.refused.is_empty(), "{:?}", outcome.refused);
    assert_eq!(outcome.accepted.len(), 1, "{outcome:?}");
    assert_eq!(outcome.accepted[0].volunteer, node);
    assert_eq!(outcome.accepted[0].receipt.item_id, weak.item_id);
    kept.push(weak.item_id);

    // A fetch answered with another account's key.
    let challenge = match caller.ask(Request::Challenge { address }).await {
        Response::Challenge { challenge } => challenge,
        other => panic!("a challenge request answered with {other:?}"),
    };
    let decoded = FetchChallenge::decode(&challenge).expect("a challenge");
    let fetch = |proof: FetchProof| Request::Fetch {
        challenge: challenge.clone(),
        proof: proof.encode(),
        after: None,
    };
    let stranger = AccountKeypair::generate();
    assert_eq!(
        caller.ask(fetch(decoded.answer(&stranger))).await,
        Response::Denied(Denial::WrongAccount)
    );
    // The owner's key with the stranger's signature.
    let forged = FetchProof {
        account: recipient.public(),
        signature: decoded.answer(&stranger).signature,
    };
    assert_eq!(
        caller.ask(fetch(forged)).await,
        Response::Denied(Denial::BadSignature)
    );
    // The owner, answering the same challenge, gets exactly what was
    // taken; the weak item as re-signed.
    let (items, more) = match caller.ask(fetch(decoded.answer(&recipient))).await {
        Response::Items { items, more } => (items, more),
        other => panic!("the owner's fetch answered with {other:?}"),
    };
    assert!(!more);
    let items: Vec<MailboxItem> = items
        .iter()
        .map(|stored| MailboxItem::decode(&stored.item).expect("an item"))
        .collect();
    let mut ids: Vec<_> = items.iter().map(|i| i.item_id).collect();
    ids.sort();
    kept.sort();
    assert_eq!(ids, kept);
    let resigned = items
        .iter()
        .find(|i| i.item_id == weak.item_id)
        .expect("the weak item");
    assert_eq!(resigned.sealed, weak.sealed);
    assert!(resigned.work_bits() >= 12, "{}", resigned.work_bits());
    assert_eq!(resigned.open(&recipient).expect("opens").content.len(), 100);
}

/// Deposits from `sender` to a new recipient each time, 8-16 KiB apiece,
/// until the node refuses one: the items taken, their bytes, and the
/// refusal with the size of the item refused.
async fn flood(caller: Caller, sender: AccountKeypair) -> (u64, u64, DepositRefusal, u64) {
    const SIZES: [usize; 4] = [8_000, 16_000, 11_000, 13_500];
    let expires = unix_now() + 3600;
    let (mut items, mut bytes) = (0, 0);
    for size in SIZES.iter().cycle() {
        let recipient = AccountKeypair::generate().public();
        let content = vec![0x6b; *size];
        let item = MailboxItem::seal(&sender, &recipient, &content, expires, 8).expect("sealed");
        match caller.deposit(&item).await {
            Ok(_) => {
                items += 1;
                bytes += item.encoded_len() as u64;
            }
            Err(refusal) => return (items, bytes, refusal, item.encoded_len() as u64),
        }
    }
    unreachable!("the cycle never ends")
}

/// sled is log-structured and reclaims its 512 KiB segments lazily, so the
/// folder holds more than the quota counts. The volunteer's own flood test
/// (kith-mailbox `tests/volunteer.rs`) measured 2.4-3.0 MiB of files after
/// filling a 1 MiB quota with 4-16 KiB items, about 1 MiB of it fixed
/// (config, snapshot, partly filled segments). The node writes the same
/// records (each item and its expiry entry, flushed before the answer) and
/// nothing for a refusal, so the same bound applies: 3 × quota + 2 MiB,
/// 5 MiB here, which leaves 1.6 × headroom over that worst measurement and
/// still fails if refused items were written or the quota were overrun by
/// a fraction.
const DISK_BOUND: u64 = 3 * MIB + 2 * MIB;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_is_held_to_the_quotas_and_the_disk_stays_bounded() {
    let data = tempfile::tempdir().expect("tempdir");
    let kithd = start_generous(
        data.path(),
        &[
            "--mailbox-pow-bits",
            "8",
            "--mailbox-address-quota-kb",
            "64",
            "--mailbox-quota-mb",
            "1",
        ],
    );
    let first = Caller::new(&kithd).await;
    let expires = unix_now() + 3600;

    // One mailbox takes 64 KiB of encoded items.
    let crowded = AccountKeypair::generate().public();
    let (mut crowded_items, mut crowded_bytes) = (0, 0);
    let refused = loop {
        let item = seal(&crowded, 12_000, expires, 8);
        match first.deposit(&item).await {
            Ok(_) => {
                crowded_items += 1;
                crowded_bytes += item.encoded_len() as u64;
            }
            Err(refusal) => break (refusal, item.encoded_len() as u64),
        }
    };
    assert_eq!(refused.0, DepositRefusal::MailboxFull { quota: 64 * KIB });
    assert!(crowded_bytes <= 64 * KIB);
    assert!(crowded_bytes + refused.1 > 64 * KIB, "{crowded_bytes}");
    assert_eq!(crowded_items, 5, "{crowded_bytes} bytes");

    // Four senders, each from a client of its own, to new mailboxes until
    // the node is full.
    let mut callers = vec![first];
    for _ in 0..3 {
        callers.push(Caller::new(&kithd).await);
    }
    let floods: Vec<_> = callers
        .iter()
        .map(|caller| tokio::spawn(flood(caller.clone(), AccountKeypair::generate())))
        .collect();
    let (mut items, mut bytes) = (0u64, crowded_bytes);
    let mut largest_refused = 0;
    for flood in floods {
        let (taken, taken_bytes, refusal, refused_len) = flood.await.expect("the flood ran");
        assert_eq!(refusal, DepositRefusal::VolunteerFull);
        assert!(taken > 0, "each sender got some mail in before it was full");
        items += taken;
        bytes += taken_bytes;
        largest_refused = largest_refused.max(refused_len);
    }
    let (held_items, held_bytes, mailboxes) = mailbox_usage(&kithd.metrics);
    assert_eq!(held_items, (items + crowded_items) as f64);
    assert_eq!(held_bytes, bytes as f64);
    assert_eq!(mailboxes, items as f64 + 1.0);
    assert!(held_bytes <= MIB as f64, "{held_bytes} bytes held");
    // Every sender stopped on an item that did not fit, and nothing was
    // deleted: the node is full to within one item.
    assert!(
        held_bytes + largest_refused as f64 > MIB as f64,
        "{held_bytes} bytes held"
    );

    let folder = data.path().join(kith_node::mailbox::MAILBOX_DIR);
    let running = dir_size(&folder);
    eprintln!(
        "flood: {held_items} items, {held_bytes} bytes held, {running} bytes on disk while running"
    );
    assert!(running <= DISK_BOUND, "{running} bytes on disk");
    tokio::task::block_in_place(|| kithd.stop());
    let stopped = dir_size(&folder);
    eprintln!("flood: {stopped} bytes on disk after a clean stop");
    assert!(stopped <= DISK_BOUND, "{stopped} bytes on disk");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deposits_over_the_rate_are_refused_per_peer() {
    let data = tempfile::tempdir().expect("tempdir");
    let kithd = start(
        data.path(),
        &[
            "--mailbox-pow-bits",
            "8",
            "--mailbox-deposits-per-minute",
            "1",
            "--mailbox-burst",
            "2",
        ],
    );
    let eager = Caller::new(&kithd).await;
    let recipient = AccountKeypair::generate().public();
    let item = || seal(&recipient, 100, unix_now() + 3600, 8);

    // The burst, then nothing for about a minute (one token a minute).
    eager.deposit(&item()).await.expect("first");
    eager.deposit(&item()).await.expect("second");
    let Err(DepositRefusal::RateLimited { retry_after_secs }) = eager.deposit(&item()).await else {
        panic!("the third deposit is not refused for its rate");
    };
    assert!(
        (30..=60).contains(&retry_after_secs),
        "retry after {retry_after_secs} s"
    );
    // The rate is checked before the item is read, so junk cannot get
    // past it either.
    assert!(matches!(
        eager.deposit_bytes(b"junk".to_vec()).await,
        Err(DepositRefusal::RateLimited { .. })
    ));

    // Another peer has a burst of its own.
    let other = Caller::new(&kithd).await;
    other.deposit(&item()).await.expect("another peer");
    assert_eq!(mailbox_usage(&kithd.metrics).0, 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_lived_item_is_swept_soon_after_it_expires() {
    let data = tempfile::tempdir().expect("tempdir");
    let kithd = start_generous(
        data.path(),
        &["--mailbox-pow-bits", "8", "--mailbox-sweep-secs", "1"],
    );
    let client = mail_client(kithd.tcp(), kithd.peer_id()).await;
    let recipient = AccountKeypair::generate();

    let deposited = Instant::now();
    let expires = unix_now() + 2;
    let item = seal(&recipient.public(), 100, expires, 8);
    let outcome = user::deposit(&client, &item, 1, &[])
        .await
        .expect("the node is found");
    assert_eq!(outcome.accepted.len(), 1, "{outcome:?}");
    assert_eq!(
        mailbox_usage(&kithd.metrics),
        (1.0, item.encoded_len() as f64, 1.0)
    );

    // Sweeps run every second; the item is due within two.
    let deadline = deposited + Duration::from_secs(6);
    while mailbox_usage(&kithd.metrics).0 > 0.0 {
        assert!(Instant::now() < deadline, "the item was never swept");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(unix_now() >= expires, "swept before it expired");
    eprintln!("swept {:?} after the deposit", deposited.elapsed());
    assert_eq!(mailbox_usage(&kithd.metrics), (0.0, 0.0, 0.0));

    let fetched = user::fetch(&client, &recipient, 3)
        .await
        .expect("the node is found");
    assert!(fetched.failures.is_empty(), "{:?}", fetched.failures);
    assert_eq!(fetched.volunteers.len(), 1, "the node answered");
    assert!(fetched.items.is_empty(), "{:?}", fetched.items);
}
