//! The volunteer over real sled files: deposits and every refusal, fetch
//! and acknowledgement, duplicates, restarts, expiry, paging, a flood up to
//! the quota (with the folder's size on disk), and garbage requests.

use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use kith_mailbox::protocol::{
    Denial, MAX_HANDOFF_RECEIPTS, MAX_REQUEST_BYTES, PROTOCOL_VERSION, Request, Response,
    StoredItem,
};
use kith_mailbox::{Usage, Volunteer, VolunteerConfig};
use kith_proto::mailbox::{
    DepositRefusal, FetchAck, FetchChallenge, Limits, MAX_ENCODED_ITEM_BYTES, MailboxItem,
    WitnessReceipt, mailbox_address, node_key,
};
use kith_proto::{AccountKeypair, DeviceKeypair};
use kith_store::{Backend, BackendError, Direction, Entries, MemoryBackend, Op, SledBackend};
use libp2p_identity::PeerId;
use tempfile::TempDir;

const DIFFICULTY: u8 = 8;
const DAY: u64 = 24 * 3600;

/// Seconds since the epoch at the start of the test: `open` sweeps by the
/// system clock, so items must be live by it.
fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn ms(secs: u64) -> u64 {
    secs * 1000
}

/// Limits with a small proof of work and no practical rate limit.
fn limits() -> Limits {
    Limits {
        pow_difficulty: DIFFICULTY,
        peer_deposits_per_minute: 1_000_000,
        peer_burst: 1_000_000,
        ..Limits::default()
    }
}

fn config(limits: Limits) -> VolunteerConfig {
    VolunteerConfig {
        limits,
        ..VolunteerConfig::default()
    }
}

/// The mailbox store under `dir`. Just after a volunteer is dropped, sled's
/// background flusher may still hold the file lock for a moment: retried
/// for up to 5 s.
fn backend(dir: &Path) -> Arc<SledBackend> {
    let mut tries = 0;
    loop {
        match SledBackend::open(&dir.join("mailbox")) {
            Ok(backend) => return Arc::new(backend),
            Err(e) if tries < 50 => {
                tries += 1;
                eprintln!("store busy ({e}), retrying");
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            Err(e) => panic!("could not open the mailbox store: {e}"),
        }
    }
}

fn open(dir: &Path, key: &DeviceKeypair, config: VolunteerConfig) -> Volunteer {
    Volunteer::open(backend(dir), key.clone(), config).unwrap()
}

struct Node {
    dir: TempDir,
    key: DeviceKeypair,
    volunteer: Volunteer,
}

fn node(config: VolunteerConfig) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let key = DeviceKeypair::generate();
    let volunteer = open(dir.path(), &key, config);
    Node {
        dir,
        key,
        volunteer,
    }
}

fn peer() -> PeerId {
    DeviceKeypair::generate().peer_id()
}

fn account(seed: u8) -> AccountKeypair {
    AccountKeypair::from_secret_bytes(&[seed; 32])
}

fn alice() -> AccountKeypair {
    account(0x11)
}

fn bob() -> AccountKeypair {
    account(0x22)
}

fn carol() -> AccountKeypair {
    account(0x33)
}

fn item_to(recipient: &AccountKeypair, content: usize, expires: u64) -> MailboxItem {
    MailboxItem::seal(
        &alice(),
        &recipient.public(),
        &vec![0x5a; content],
        expires,
        DIFFICULTY,
    )
    .unwrap()
}

fn send(v: &mut Volunteer, from: PeerId, request: &Request, now_ms: u64) -> Response {
    let bytes = v.handle(from, &request.encode().unwrap(), now_ms);
    Response::decode(&bytes).unwrap()
}

fn deposit_bytes(v: &mut Volunteer, from: PeerId, item: Vec<u8>, now_ms: u64) -> Response {
    send(v, from, &Request::Deposit { item }, now_ms)
}

fn deposit(v: &mut Volunteer, from: PeerId, item: &MailboxItem, now_ms: u64) -> Response {
    deposit_bytes(v, from, item.encode().unwrap(), now_ms)
}

fn accepted(response: Response) -> WitnessReceipt {
    match response {
        Response::Accepted { receipt } => WitnessReceipt::decode(&receipt).unwrap(),
        other => panic!("expected Accepted, got {other:?}"),
    }
}

fn refused(response: Response) -> DepositRefusal {
    match response.refusal() {
        Some(refusal) => refusal,
        None => panic!("expected Refused, got {response:?}"),
    }
}

fn challenge(v: &mut Volunteer, from: PeerId, account: &AccountKeypair, now_ms: u64) -> Vec<u8> {
    let address = mailbox_address(&account.public());
    match send(v, from, &Request::Challenge { address }, now_ms) {
        Response::Challenge { challenge } => challenge,
        other => panic!("expected Challenge, got {other:?}"),
    }
}

fn fetch_page(
    v: &mut Volunteer,
    from: PeerId,
    challenge: &[u8],
    signer: &AccountKeypair,
    after: Option<[u8; 16]>,
    now_ms: u64,
) -> Response {
    let proof = FetchChallenge::decode(challenge)
        .unwrap()
        .answer(signer)
        .encode();
    send(
        v,
        from,
        &Request::Fetch {
            challenge: challenge.to_vec(),
            proof,
            after,
        },
        now_ms,
    )
}

/// Every item of `account`'s mailbox, page by page; also the page count.
fn fetch_all(v: &mut Volunteer, account: &AccountKeypair, now_ms: u64) -> (Vec<StoredItem>, usize) {
    let from = peer();
    let challenge = challenge(v, from, account, now_ms);
    let mut all = Vec::new();
    let mut after = None;
    let mut pages = 0;
    loop {
        pages += 1;
        match fetch_page(v, from, &challenge, account, after, now_ms) {
            Response::Items { items, more } => {
                if let Some(last) = items.last() {
                    after = Some(MailboxItem::decode(&last.item).unwrap().item_id);
                }
                all.extend(items);
                if !more {
                    return (all, pages);
                }
            }
            other => panic!("expected Items, got {other:?}"),
        }
    }
}

fn ack(v: &mut Volunteer, ack: &FetchAck, now_ms: u64) -> Response {
    send(
        v,
        peer(),
        &Request::Ack {
            ack: ack.encode().unwrap(),
        },
        now_ms,
    )
}

fn dir_size(path: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(path).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() {
            dir_size(&entry.path())
        } else {
            meta.len()
        };
    }
    total
}

// ---- the happy path ----

#[test]
fn a_volunteer_can_move_into_a_network_task() {
    fn send_and_sync<T: Send + Sync>() {}
    send_and_sync::<Volunteer>();
}

#[test]
fn a_deposit_is_fetched_with_its_receipt_and_an_ack_deletes_it() {
    let now = now();
    let mut n = node(config(limits()));
    let item = item_to(&bob(), 500, now + 7 * DAY);
    let bytes = item.encode().unwrap();

    let receipt = accepted(deposit(&mut n.volunteer, peer(), &item, ms(now) + 123));
    receipt.verify().unwrap();
    assert_eq!(receipt.item_id, item.item_id);
    assert_eq!(receipt.received_at, ms(now) + 123);
    assert_eq!(receipt.volunteer, node_key(&n.key).unwrap());
    assert_eq!(receipt.volunteer_peer_id().unwrap(), n.key.peer_id());
    assert_eq!(
        n.volunteer.usage(),
        Usage {
            items: 1,
            bytes: bytes.len() as u64,
            mailboxes: 1
        }
    );

    let (items, pages) = fetch_all(&mut n.volunteer, &bob(), ms(now + 1));
    assert_eq!(pages, 1);
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].item, bytes);
    assert_eq!(items[0].receipts, vec![receipt.encode()]);
    let opened = MailboxItem::decode(&items[0].item)
        .unwrap()
        .open(&bob())
        .unwrap();
    assert_eq!(opened.sender, alice().public());

    // Nothing for carol.
    assert!(
        fetch_all(&mut n.volunteer, &carol(), ms(now + 1))
            .0
            .is_empty()
    );

    let signed = FetchAck::sign(&bob(), vec![item.item_id]).unwrap();
    assert_eq!(
        ack(&mut n.volunteer, &signed, ms(now + 2)),
        Response::Acked { deleted: 1 }
    );
    assert_eq!(n.volunteer.usage(), Usage::default());
    assert!(
        fetch_all(&mut n.volunteer, &bob(), ms(now + 3))
            .0
            .is_empty()
    );
    // Replaying the acknowledgement deletes nothing more.
    assert_eq!(
        ack(&mut n.volunteer, &signed, ms(now + 4)),
        Response::Acked { deleted: 0 }
    );
}

// ---- refusals ----

#[test]
fn a_device_does_not_keep_mail_for_its_own_account() {
    let now = now();
    let mut n = node(VolunteerConfig {
        own_address: Some(mailbox_address(&bob().public())),
        ..config(limits())
    });
    assert_eq!(
        refused(deposit(
            &mut n.volunteer,
            peer(),
            &item_to(&bob(), 100, now + DAY),
            ms(now)
        )),
        DepositRefusal::VolunteerFull
    );
    assert_eq!(n.volunteer.usage(), Usage::default());
    // Mail for anyone else is kept as usual.
    accepted(deposit(
        &mut n.volunteer,
        peer(),
        &item_to(&carol(), 100, now + DAY),
        ms(now),
    ));
    assert_eq!(n.volunteer.usage().items, 1);
}

#[test]
fn a_changed_expiry_is_a_bad_signature() {
    let now = now();
    let mut n = node(config(limits()));
    let mut item = item_to(&bob(), 100, now + DAY);
    item.expires += 3600;
    assert_eq!(
        refused(deposit(&mut n.volunteer, peer(), &item, ms(now))),
        DepositRefusal::BadSignature
    );
    assert_eq!(n.volunteer.usage(), Usage::default());
}

#[test]
fn a_lifetime_over_the_maximum_is_refused() {
    let now = now();
    let mut n = node(config(Limits {
        max_ttl_secs: 3600,
        ..limits()
    }));
    let item = item_to(&bob(), 100, now + 7200);
    assert_eq!(
        refused(deposit(&mut n.volunteer, peer(), &item, ms(now))),
        DepositRefusal::TtlTooLong { max: 3600 }
    );
    let expired = item_to(&bob(), 100, now - 1);
    assert_eq!(
        refused(deposit(&mut n.volunteer, peer(), &expired, ms(now))),
        DepositRefusal::Expired
    );
}

#[test]
fn items_over_the_size_limit_are_refused() {
    let now = now();
    let mut n = node(config(Limits {
        max_item_bytes: 1024,
        ..limits()
    }));
    let item = item_to(&bob(), 2000, now + DAY);
    assert_eq!(
        refused(deposit(&mut n.volunteer, peer(), &item, ms(now))),
        DepositRefusal::TooLarge { max: 1024 }
    );
    // Bytes over the largest possible item, inside a request that fits.
    let mut bytes = item.encode().unwrap();
    bytes.resize(MAX_ENCODED_ITEM_BYTES + 1, 0);
    assert!(matches!(
        refused(deposit_bytes(&mut n.volunteer, peer(), bytes, ms(now))),
        DepositRefusal::TooLarge { .. }
    ));
    // A request over the protocol's limit that starts like a deposit.
    let mut request = Request::Deposit { item: vec![1; 10] }.encode().unwrap();
    request.resize(MAX_REQUEST_BYTES + 1, 0);
    let response = Response::decode(&n.volunteer.handle(peer(), &request, ms(now))).unwrap();
    assert!(matches!(refused(response), DepositRefusal::TooLarge { .. }));
}

#[test]
fn a_weak_proof_of_work_is_refused_with_the_difficulty_required() {
    let now = now();
    let mut n = node(config(limits()));
    let item = loop {
        let item = MailboxItem::seal(&alice(), &bob().public(), b"hello", now + DAY, 0).unwrap();
        if item.work_bits() < u32::from(DIFFICULTY) {
            break item;
        }
    };
    assert_eq!(
        refused(deposit(&mut n.volunteer, peer(), &item, ms(now))),
        DepositRefusal::WeakProofOfWork {
            required: DIFFICULTY
        }
    );
}

#[test]
fn quotas_refuse_a_full_mailbox_then_a_full_volunteer() {
    let now = now();
    let mut n = node(config(Limits {
        mailbox_quota_bytes: 4000,
        total_quota_bytes: 6000,
        ..limits()
    }));
    let mut accepted_bytes = 0u64;
    let refusal = loop {
        let item = item_to(&bob(), 900, now + DAY);
        match deposit(&mut n.volunteer, peer(), &item, ms(now)) {
            Response::Accepted { .. } => accepted_bytes += item.encoded_len() as u64,
            other => break refused(other),
        }
    };
    assert_eq!(refusal, DepositRefusal::MailboxFull { quota: 4000 });
    assert!(accepted_bytes <= 4000);
    assert_eq!(n.volunteer.usage().bytes, accepted_bytes);
    let refusal = loop {
        let item = item_to(&carol(), 900, now + DAY);
        match deposit(&mut n.volunteer, peer(), &item, ms(now)) {
            Response::Accepted { .. } => accepted_bytes += item.encoded_len() as u64,
            other => break refused(other),
        }
    };
    assert_eq!(refusal, DepositRefusal::VolunteerFull);
    assert!(accepted_bytes <= 6000);
    assert_eq!(n.volunteer.usage().bytes, accepted_bytes);
    assert_eq!(n.volunteer.usage().mailboxes, 2);
}

#[test]
fn a_peer_over_its_rate_is_refused_until_a_token_comes_back() {
    let now = now();
    let mut n = node(config(Limits {
        peer_deposits_per_minute: 2,
        peer_burst: 3,
        ..limits()
    }));
    let fast = peer();
    for _ in 0..3 {
        accepted(deposit(
            &mut n.volunteer,
            fast,
            &item_to(&bob(), 50, now + DAY),
            ms(now),
        ));
    }
    let item = item_to(&bob(), 50, now + DAY);
    assert_eq!(
        refused(deposit(&mut n.volunteer, fast, &item, ms(now))),
        DepositRefusal::RateLimited {
            retry_after_secs: 30
        }
    );
    // Others are not held back, and the peer gets a token back in time.
    accepted(deposit(
        &mut n.volunteer,
        peer(),
        &item_to(&bob(), 50, now + DAY),
        ms(now),
    ));
    assert!(matches!(
        refused(deposit(&mut n.volunteer, fast, &item, ms(now + 29))),
        DepositRefusal::RateLimited { .. }
    ));
    accepted(deposit(&mut n.volunteer, fast, &item, ms(now + 60)));
}

#[test]
fn the_rate_map_stays_bounded_and_forgets_the_least_recent_peer() {
    let now = now();
    let mut n = node(VolunteerConfig {
        max_rate_peers: 2,
        ..config(Limits {
            peer_deposits_per_minute: 1,
            peer_burst: 1,
            ..limits()
        })
    });
    let (a, b, c) = (peer(), peer(), peer());
    let item = || item_to(&bob(), 50, now + DAY);
    accepted(deposit(&mut n.volunteer, a, &item(), ms(now)));
    accepted(deposit(&mut n.volunteer, b, &item(), ms(now)));
    assert!(matches!(
        refused(deposit(&mut n.volunteer, b, &item(), ms(now))),
        DepositRefusal::RateLimited { .. }
    ));
    // c evicts a (least recently seen); b is still limited.
    accepted(deposit(&mut n.volunteer, c, &item(), ms(now)));
    assert!(matches!(
        refused(deposit(&mut n.volunteer, b, &item(), ms(now))),
        DepositRefusal::RateLimited { .. }
    ));
    accepted(deposit(&mut n.volunteer, a, &item(), ms(now)));
}

// ---- fetch and acknowledgement denials ----

#[test]
fn fetch_is_denied_to_the_wrong_account_and_for_bad_challenges() {
    let now = now();
    let mut n = node(config(limits()));
    accepted(deposit(
        &mut n.volunteer,
        peer(),
        &item_to(&bob(), 100, now + DAY),
        ms(now),
    ));
    let from = peer();
    let issued = challenge(&mut n.volunteer, from, &bob(), ms(now));

    // Carol answers bob's challenge with her key.
    assert_eq!(
        fetch_page(&mut n.volunteer, from, &issued, &carol(), None, ms(now)),
        Response::Denied(Denial::WrongAccount)
    );
    // Bob's key, but a signature over another challenge.
    let decoded = FetchChallenge::decode(&issued).unwrap();
    let mut other = decoded;
    other.nonce[0] ^= 1;
    let proof = other.answer(&bob()).encode();
    assert_eq!(
        send(
            &mut n.volunteer,
            from,
            &Request::Fetch {
                challenge: issued.clone(),
                proof,
                after: None
            },
            ms(now)
        ),
        Response::Denied(Denial::BadSignature)
    );
    // A challenge this volunteer never issued.
    let forged = FetchChallenge::new(decoded.address, decoded.volunteer, now).encode();
    assert_eq!(
        fetch_page(&mut n.volunteer, from, &forged, &bob(), None, ms(now)),
        Response::Denied(Denial::UnknownChallenge)
    );
    // An issued challenge with its expiry pushed back.
    let mut later = decoded;
    later.expires += 600;
    assert_eq!(
        fetch_page(
            &mut n.volunteer,
            from,
            &later.encode(),
            &bob(),
            None,
            ms(now)
        ),
        Response::Denied(Denial::UnknownChallenge)
    );
    // A challenge naming another volunteer.
    let elsewhere = FetchChallenge::new(
        decoded.address,
        node_key(&DeviceKeypair::generate()).unwrap(),
        now,
    );
    assert_eq!(
        fetch_page(
            &mut n.volunteer,
            from,
            &elsewhere.encode(),
            &bob(),
            None,
            ms(now)
        ),
        Response::Denied(Denial::WrongVolunteer)
    );
    // The real challenge still serves pages, until it expires.
    assert!(matches!(
        fetch_page(&mut n.volunteer, from, &issued, &bob(), None, ms(now + 59)),
        Response::Items { ref items, more: false } if items.len() == 1
    ));
    assert_eq!(
        fetch_page(&mut n.volunteer, from, &issued, &bob(), None, ms(now + 60)),
        Response::Denied(Denial::ChallengeExpired)
    );
    // Once reported expired, it is forgotten.
    assert_eq!(
        fetch_page(&mut n.volunteer, from, &issued, &bob(), None, ms(now + 61)),
        Response::Denied(Denial::UnknownChallenge)
    );
}

#[test]
fn challenges_are_bounded_and_the_oldest_is_forgotten() {
    let now = now();
    let mut n = node(VolunteerConfig {
        max_challenges: 2,
        ..config(limits())
    });
    let from = peer();
    let first = challenge(&mut n.volunteer, from, &bob(), ms(now));
    let second = challenge(&mut n.volunteer, from, &bob(), ms(now));
    let third = challenge(&mut n.volunteer, from, &bob(), ms(now));
    assert_eq!(
        fetch_page(&mut n.volunteer, from, &first, &bob(), None, ms(now)),
        Response::Denied(Denial::UnknownChallenge)
    );
    for live in [second, third] {
        assert!(matches!(
            fetch_page(&mut n.volunteer, from, &live, &bob(), None, ms(now)),
            Response::Items { .. }
        ));
    }
}

#[test]
fn challenges_are_rate_limited_per_peer() {
    let now = now();
    let mut n = node(config(Limits {
        peer_deposits_per_minute: 60,
        peer_burst: 2,
        ..limits()
    }));
    let from = peer();
    challenge(&mut n.volunteer, from, &bob(), ms(now));
    challenge(&mut n.volunteer, from, &bob(), ms(now));
    let address = mailbox_address(&bob().public());
    assert_eq!(
        send(
            &mut n.volunteer,
            from,
            &Request::Challenge { address },
            ms(now)
        ),
        Response::Denied(Denial::RateLimited {
            retry_after_secs: 1
        })
    );
    challenge(&mut n.volunteer, from, &bob(), ms(now + 1));
}

#[test]
fn an_ack_signed_by_the_wrong_key_deletes_nothing() {
    let now = now();
    let mut n = node(config(limits()));
    let item = item_to(&bob(), 100, now + DAY);
    accepted(deposit(&mut n.volunteer, peer(), &item, ms(now)));

    // Carol's key claiming bob's mailbox.
    let mut claim = FetchAck::sign(&carol(), vec![item.item_id]).unwrap();
    claim.address = mailbox_address(&bob().public());
    assert_eq!(
        ack(&mut n.volunteer, &claim, ms(now)),
        Response::Denied(Denial::WrongAccount)
    );
    // Bob's key and address, carol's signature.
    let mut forged = FetchAck::sign(&bob(), vec![item.item_id]).unwrap();
    forged.signature = FetchAck::sign(&carol(), vec![item.item_id])
        .unwrap()
        .signature;
    assert_eq!(
        ack(&mut n.volunteer, &forged, ms(now)),
        Response::Denied(Denial::BadSignature)
    );
    // Carol's own acknowledgement names her mailbox, not bob's.
    let own = FetchAck::sign(&carol(), vec![item.item_id]).unwrap();
    assert_eq!(
        ack(&mut n.volunteer, &own, ms(now)),
        Response::Acked { deleted: 0 }
    );
    assert_eq!(n.volunteer.usage().items, 1);
}

// ---- duplicates and hand-offs ----

#[test]
fn a_repeated_deposit_gets_the_same_receipt_and_is_stored_once() {
    let now = now();
    let mut n = node(config(limits()));
    let item = item_to(&bob(), 300, now + DAY);
    let first = accepted(deposit(&mut n.volunteer, peer(), &item, ms(now)));
    let again = accepted(deposit(&mut n.volunteer, peer(), &item, ms(now + 30)));
    assert_eq!(first, again);
    assert_eq!(n.volunteer.usage().items, 1);
    assert_eq!(n.volunteer.usage().bytes, item.encoded_len() as u64);

    // The same ID with other bytes: the first copy stays.
    let other = MailboxItem::sign_sealed(
        item.item_id,
        item.address,
        item.expires,
        vec![7; 300],
        &[9; 32],
        DIFFICULTY,
    )
    .unwrap();
    assert_eq!(
        refused(deposit(&mut n.volunteer, peer(), &other, ms(now))),
        DepositRefusal::Malformed
    );
    let (items, _) = fetch_all(&mut n.volunteer, &bob(), ms(now));
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].item, item.encode().unwrap());
}

#[test]
fn a_handoff_keeps_the_carried_receipts_that_verify() {
    let now = now();
    let mut old = node(config(limits()));
    let mut new = node(config(limits()));
    let item = item_to(&bob(), 300, now + DAY);
    let original = accepted(deposit(&mut old.volunteer, peer(), &item, ms(now)));
    let address = mailbox_address(&bob().public());
    assert_eq!(old.volunteer.addresses().unwrap(), vec![address]);
    assert_eq!(old.volunteer.holds(&address).unwrap(), vec![item.item_id]);

    let requests = old.volunteer.handoff_requests(&address).unwrap();
    assert_eq!(requests.len(), 1);
    let (id, request) = &requests[0];
    assert_eq!(*id, item.item_id);
    // Add a forged receipt and one for another item: both are dropped.
    let Ok(Request::Handoff {
        item: bytes,
        mut receipts,
    }) = Request::decode(request)
    else {
        panic!("not a hand-off");
    };
    let mut forged = original;
    forged.received_at += 1;
    receipts.push(forged.encode());
    let stranger = WitnessReceipt::sign(&DeviceKeypair::generate(), [0; 16], ms(now)).unwrap();
    receipts.push(stranger.encode());
    let response = send(
        &mut new.volunteer,
        old.key.peer_id(),
        &Request::Handoff {
            item: bytes,
            receipts,
        },
        ms(now + 600),
    );
    assert_eq!(accepted(response), original);
    let (items, _) = fetch_all(&mut new.volunteer, &bob(), ms(now + 600));
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].receipts, vec![original.encode()]);

    // A retried deposit at the new holder gets a receipt of its own, for
    // the time it took the item.
    let own = accepted(deposit(&mut new.volunteer, peer(), &item, ms(now + 700)));
    own.verify().unwrap();
    assert_eq!(own.volunteer, node_key(&new.key).unwrap());
    assert_eq!(own.received_at, ms(now + 600));

    // The old holder drops its copy.
    assert_eq!(old.volunteer.remove(&address, &[item.item_id]).unwrap(), 1);
    assert_eq!(old.volunteer.usage(), Usage::default());
    assert!(old.volunteer.addresses().unwrap().is_empty());

    // A hand-off with no valid receipt is signed by the receiver.
    let mut third = node(config(limits()));
    let response = send(
        &mut third.volunteer,
        new.key.peer_id(),
        &Request::Handoff {
            item: item.encode().unwrap(),
            receipts: vec![vec![1, 2, 3]],
        },
        ms(now + 800),
    );
    let receipt = accepted(response);
    assert_eq!(receipt.volunteer, node_key(&third.key).unwrap());
    assert_eq!(receipt.received_at, ms(now + 800));
}

#[test]
fn a_second_handoff_of_the_same_item_adds_the_new_volunteers_receipts() {
    let now = now();
    let mut target = node(config(limits()));
    let item = item_to(&bob(), 300, now + DAY);
    let holders: Vec<Node> = (0..2).map(|_| node(config(limits()))).collect();
    let mut receipts = Vec::new();
    for mut holder in holders {
        receipts.push(accepted(deposit(
            &mut holder.volunteer,
            peer(),
            &item,
            ms(now),
        )));
        let address = mailbox_address(&bob().public());
        let (_, request) = holder
            .volunteer
            .handoff_requests(&address)
            .unwrap()
            .remove(0);
        let response =
            Response::decode(&target.volunteer.handle(peer(), &request, ms(now + 5))).unwrap();
        assert_eq!(accepted(response), receipts[0]);
    }
    let (items, _) = fetch_all(&mut target.volunteer, &bob(), ms(now + 5));
    let held: Vec<Vec<u8>> = receipts.iter().map(WitnessReceipt::encode).collect();
    assert_eq!(items[0].receipts, held);
    assert_eq!(target.volunteer.usage().items, 1);
    assert!(items[0].receipts.len() <= MAX_HANDOFF_RECEIPTS);
}

// ---- persistence and expiry ----

#[test]
fn items_and_receipts_survive_a_restart() {
    let now = now();
    let dir = tempfile::tempdir().unwrap();
    let key = DeviceKeypair::generate();
    let item = item_to(&bob(), 1000, now + DAY);
    let receipt = {
        let mut v = open(dir.path(), &key, config(limits()));
        accepted(deposit(&mut v, peer(), &item, ms(now)))
    };
    let mut v = open(dir.path(), &key, config(limits()));
    assert_eq!(
        v.usage(),
        Usage {
            items: 1,
            bytes: item.encoded_len() as u64,
            mailboxes: 1
        }
    );
    let (items, _) = fetch_all(&mut v, &bob(), ms(now + 1));
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].item, item.encode().unwrap());
    assert_eq!(items[0].receipts, vec![receipt.encode()]);
}

#[test]
fn expired_items_are_not_served_and_the_sweep_deletes_them() {
    let now = now();
    let mut n = node(config(limits()));
    let short = item_to(&bob(), 200, now + 100);
    let long = item_to(&bob(), 200, now + DAY);
    accepted(deposit(&mut n.volunteer, peer(), &short, ms(now)));
    accepted(deposit(&mut n.volunteer, peer(), &long, ms(now)));
    assert_eq!(n.volunteer.usage().items, 2);

    // Due but not yet swept: not served.
    let (items, _) = fetch_all(&mut n.volunteer, &bob(), ms(now + 100));
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].item, long.encode().unwrap());

    assert_eq!(n.volunteer.sweep(now + 99).unwrap(), 0);
    assert_eq!(n.volunteer.sweep(now + 100).unwrap(), 1);
    assert_eq!(
        n.volunteer.usage(),
        Usage {
            items: 1,
            bytes: long.encoded_len() as u64,
            mailboxes: 1
        }
    );
    assert_eq!(n.volunteer.sweep(now + 100).unwrap(), 0);
    // A deposit of the swept item now is refused as expired.
    assert_eq!(
        refused(deposit(&mut n.volunteer, peer(), &short, ms(now + 100))),
        DepositRefusal::Expired
    );

    // Opening later sweeps the rest.
    drop(n.volunteer);
    let v = Volunteer::open_at(
        backend(n.dir.path()),
        n.key.clone(),
        config(limits()),
        now + DAY,
    )
    .unwrap();
    assert_eq!(v.usage(), Usage::default());
}

// ---- damage and failures ----

/// A memory backend whose writes can be made to fail.
#[derive(Default)]
struct Flaky {
    inner: MemoryBackend,
    broken: AtomicBool,
}

impl Backend for Flaky {
    fn get(&self, tree: &str, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError> {
        self.inner.get(tree, key)
    }

    fn apply(&self, ops: &[Op]) -> Result<(), BackendError> {
        if self.broken.load(Ordering::Relaxed) {
            return Err(BackendError("disk full".into()));
        }
        self.inner.apply(ops)
    }

    fn range(
        &self,
        tree: &str,
        from: Bound<&[u8]>,
        to: Bound<&[u8]>,
        direction: Direction,
        limit: usize,
    ) -> Result<Entries, BackendError> {
        self.inner.range(tree, from, to, direction, limit)
    }

    fn trees(&self) -> Result<Vec<String>, BackendError> {
        self.inner.trees()
    }

    fn flush(&self) -> Result<(), BackendError> {
        self.inner.flush()
    }
}

#[test]
fn a_failing_store_answers_busy_and_changes_nothing() {
    let now = now();
    let backend = Arc::new(Flaky::default());
    let mut v =
        Volunteer::open(backend.clone(), DeviceKeypair::generate(), config(limits())).unwrap();
    backend.broken.store(true, Ordering::Relaxed);
    let item = item_to(&bob(), 100, now + DAY);
    assert_eq!(
        deposit(&mut v, peer(), &item, ms(now)),
        Response::Denied(Denial::Busy)
    );
    assert_eq!(v.usage(), Usage::default());
    backend.broken.store(false, Ordering::Relaxed);
    accepted(deposit(&mut v, peer(), &item, ms(now)));
    backend.broken.store(true, Ordering::Relaxed);
    let signed = FetchAck::sign(&bob(), vec![item.item_id]).unwrap();
    assert_eq!(
        ack(&mut v, &signed, ms(now)),
        Response::Denied(Denial::Busy)
    );
    assert_eq!(v.usage().items, 1);
    assert_eq!(fetch_all(&mut v, &bob(), ms(now)).0.len(), 1);
}

#[test]
fn damaged_records_are_skipped_and_deleted() {
    let now = now();
    let backend = Arc::new(MemoryBackend::new());
    let key = DeviceKeypair::generate();
    let mut v = Volunteer::open(backend.clone(), key.clone(), config(limits())).unwrap();
    let good = item_to(&bob(), 100, now + DAY);
    accepted(deposit(&mut v, peer(), &good, ms(now)));
    let address = mailbox_address(&bob().public());
    let damaged_key = |id: u8| [address.as_slice(), &[id; 16]].concat();
    // A plain-value tag, then bytes that are no record.
    let garbage = vec![0, 0xff, 0xff, 0xff];
    backend
        .apply(&[Op::put("items", damaged_key(0), garbage.clone())])
        .unwrap();
    let (items, _) = fetch_all(&mut v, &bob(), ms(now));
    assert_eq!(items.len(), 1);
    assert_eq!(backend.get("items", &damaged_key(0)).unwrap(), None);

    backend
        .apply(&[
            Op::put("items", damaged_key(1), garbage.clone()),
            Op::put("items", vec![1, 2, 3], garbage),
        ])
        .unwrap();
    drop(v);
    let v = Volunteer::open(backend.clone(), key, config(limits())).unwrap();
    assert_eq!(
        v.usage(),
        Usage {
            items: 1,
            bytes: good.encoded_len() as u64,
            mailboxes: 1
        }
    );
    assert_eq!(backend.get("items", &damaged_key(1)).unwrap(), None);
    assert_eq!(v.holds(&address).unwrap(), vec![good.item_id]);
}

// ---- paging ----

#[test]
fn pages_return_every_item_exactly_once() {
    let now = now();
    let page_bytes = 4 * 1024;
    let mut n = node(VolunteerConfig {
        page_bytes,
        ..config(limits())
    });
    let mut ids = Vec::new();
    for i in 0..60 {
        let item = item_to(&bob(), 100 + 37 * i, now + DAY);
        ids.push(item.item_id);
        accepted(deposit(&mut n.volunteer, peer(), &item, ms(now)));
        // Noise in a neighbouring mailbox.
        accepted(deposit(
            &mut n.volunteer,
            peer(),
            &item_to(&carol(), 100, now + DAY),
            ms(now),
        ));
    }
    // One item bigger than a page still comes, alone.
    let big = item_to(&bob(), 10_000, now + DAY);
    ids.push(big.item_id);
    accepted(deposit(&mut n.volunteer, peer(), &big, ms(now)));

    let from = peer();
    let issued = challenge(&mut n.volunteer, from, &bob(), ms(now));
    let mut seen = Vec::new();
    let mut after = None;
    let mut pages = 0;
    loop {
        let proof = FetchChallenge::decode(&issued)
            .unwrap()
            .answer(&bob())
            .encode();
        let request = Request::Fetch {
            challenge: issued.clone(),
            proof,
            after,
        };
        let bytes = n
            .volunteer
            .handle(from, &request.encode().unwrap(), ms(now + 1));
        let Response::Items { items, more } = Response::decode(&bytes).unwrap() else {
            panic!("expected Items");
        };
        pages += 1;
        assert!(!items.is_empty() || !more);
        if items.len() > 1 {
            assert!(bytes.len() <= page_bytes, "page of {} bytes", bytes.len());
        }
        for stored in &items {
            let item = MailboxItem::decode(&stored.item).unwrap();
            assert_eq!(item.address, mailbox_address(&bob().public()));
            seen.push(item.item_id);
        }
        after = seen.last().copied();
        if !more {
            break;
        }
    }
    ids.sort();
    assert_eq!(seen, ids, "every item once, in ID order");
    assert!(pages > 5, "only {pages} pages");
}

// ---- flood ----

/// Fills a volunteer with deposits until it refuses them; returns what
/// was accepted, by recipient.
fn fill(v: &mut Volunteer, now: u64) -> Vec<(AccountKeypair, [u8; 16])> {
    let sizes = [4000, 16_000, 9000, 12_000];
    let mut held = Vec::new();
    for i in 0.. {
        let recipient = if i % 2 == 0 { bob() } else { carol() };
        let item = item_to(&recipient, sizes[i % sizes.len()], now + DAY);
        match deposit(v, peer(), &item, ms(now)) {
            Response::Accepted { .. } => held.push((recipient, item.item_id)),
            other => {
                assert!(matches!(
                    refused(other),
                    DepositRefusal::VolunteerFull | DepositRefusal::MailboxFull { .. }
                ));
                break;
            }
        }
    }
    // Smaller items still fit until the quota is truly reached.
    loop {
        let item = item_to(&bob(), 100, now + DAY);
        match deposit(v, peer(), &item, ms(now)) {
            Response::Accepted { .. } => held.push((bob(), item.item_id)),
            other => {
                refused(other);
                break;
            }
        }
    }
    held
}

/// Deposits until the volunteer is full, then empties and refills it
/// several times, checking the quota and the folder's size on disk.
///
/// sled is log-structured: each item is written once to its log with its
/// expiry entry, in 512 KiB segments that are reclaimed lazily, and every
/// `apply_durable` also appends page rewrites. Measured on ext4 with a
/// 1 MiB quota of 4-16 KiB items, over twelve runs: 2.4-3.0 MiB of files
/// after one fill (about 1 MiB of it fixed: config, snapshot, partly
/// filled segments), and a peak of 3.9-6.0 MiB over ten cycles of
/// acknowledging everything and refilling, with no upward trend over
/// sixteen cycles (at a 4 MiB quota the same churn levels out between 14
/// and 20 MiB). The bounds, 3 × quota + 2 MiB after the fill and
/// 8 × quota + 2 MiB at the churn's peak, leave more than 1.6 × headroom
/// over the worst measurement, while a leak of one quota per cycle would
/// pass the second within ten cycles.
#[test]
fn a_flood_stops_at_the_quota_and_the_disk_stays_bounded() {
    const QUOTA: u64 = 1024 * 1024;
    const MIB: u64 = 1024 * 1024;
    let now = now();
    let mut n = node(config(Limits {
        mailbox_quota_bytes: QUOTA,
        total_quota_bytes: QUOTA,
        ..limits()
    }));
    let mut held = fill(&mut n.volunteer, now);
    let usage = n.volunteer.usage();
    assert!(usage.bytes <= QUOTA, "{usage:?}");
    assert!(usage.bytes > QUOTA - 1000, "{usage:?}");
    assert_eq!(usage.items, held.len() as u64);
    let filled = dir_size(n.dir.path());
    eprintln!(
        "flood: {} items, {} bytes held, {filled} bytes on disk",
        usage.items, usage.bytes
    );
    assert!(
        filled <= 3 * QUOTA + 2 * MIB,
        "{filled} bytes on disk for a {QUOTA}-byte quota"
    );

    let mut most = filled;
    for _ in 0..10 {
        for account in [bob(), carol()] {
            let ids: Vec<[u8; 16]> = held
                .iter()
                .filter(|(a, _)| a.public() == account.public())
                .map(|(_, id)| *id)
                .collect();
            for chunk in ids.chunks(256) {
                let signed = FetchAck::sign(&account, chunk.to_vec()).unwrap();
                assert_eq!(
                    ack(&mut n.volunteer, &signed, ms(now)),
                    Response::Acked {
                        deleted: chunk.len() as u32
                    }
                );
            }
        }
        assert_eq!(n.volunteer.usage(), Usage::default());
        held = fill(&mut n.volunteer, now);
        assert!(n.volunteer.usage().bytes <= QUOTA);
        most = most.max(dir_size(n.dir.path()));
    }
    eprintln!("flood: at most {most} bytes on disk over ten refills");
    assert!(
        most <= 8 * QUOTA + 2 * MIB,
        "{most} bytes on disk for a {QUOTA}-byte quota after churn"
    );

    // Reopened, the counters are the same.
    let usage = n.volunteer.usage();
    drop(n.volunteer);
    let v = open(n.dir.path(), &n.key, config(limits()));
    assert_eq!(v.usage(), usage);
}

// ---- garbage ----

fn is_malformed_answer(bytes: &[u8]) -> bool {
    match Response::decode(bytes) {
        Ok(Response::Denied(Denial::Malformed)) => true,
        Ok(response @ Response::Refused { .. }) => matches!(
            response.refusal(),
            Some(DepositRefusal::Malformed | DepositRefusal::TooLarge { .. })
        ),
        _ => false,
    }
}

#[test]
fn garbage_requests_get_a_malformed_answer() {
    let now = now();
    let mut n = node(config(limits()));
    let valid = Request::Deposit {
        item: item_to(&bob(), 100, now + DAY).encode().unwrap(),
    }
    .encode()
    .unwrap();
    let mut cases: Vec<Vec<u8>> = vec![
        Vec::new(),
        vec![PROTOCOL_VERSION],
        vec![2, 0, 0],
        vec![PROTOCOL_VERSION, 0xff],
        vec![PROTOCOL_VERSION; MAX_REQUEST_BYTES + 1],
        vec![0; MAX_REQUEST_BYTES * 2],
        valid[..valid.len() - 1].to_vec(),
        [valid.as_slice(), &[0]].concat(),
    ];
    for kind in 0..5u8 {
        cases.push(vec![PROTOCOL_VERSION, kind]);
        cases.push(vec![PROTOCOL_VERSION, kind, 0xff, 0xff, 0xff, 0xff, 0x0f]);
        cases.push(vec![PROTOCOL_VERSION, kind, 5, 1, 2]);
    }
    for case in cases {
        let answer = n.volunteer.handle(peer(), &case, ms(now));
        assert!(
            is_malformed_answer(&answer),
            "{:?} answered {:?}",
            &case[..case.len().min(16)],
            Response::decode(&answer)
        );
    }
    // Every field of a well-formed request filled with junk.
    for request in [
        Request::Deposit { item: vec![1; 40] },
        Request::Handoff {
            item: vec![1; 40],
            receipts: vec![vec![2; 5]],
        },
        Request::Fetch {
            challenge: vec![3; 107],
            proof: vec![4; 97],
            after: None,
        },
        Request::Ack { ack: vec![5; 300] },
    ] {
        let answer = n
            .volunteer
            .handle(peer(), &request.encode().unwrap(), ms(now));
        assert!(is_malformed_answer(&answer), "{request:?}");
    }
    assert_eq!(n.volunteer.usage(), Usage::default());
}

#[test]
fn random_bytes_get_a_decodable_answer() {
    let now = now();
    let mut n = node(config(limits()));
    // xorshift64*: reproducible junk without another dependency.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    for case in 0..2000 {
        let len = (next() % 600) as usize;
        let mut request: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        // Most cases start like a request of some kind, to get past the
        // version byte and reach the fields.
        if case % 4 != 0 {
            request.splice(0..0, [PROTOCOL_VERSION, (case % 6) as u8]);
        }
        let answer = n.volunteer.handle(peer(), &request, ms(now));
        assert!(
            Response::decode(&answer).is_ok(),
            "case {case}: undecodable answer"
        );
    }
    assert_eq!(n.volunteer.usage(), Usage::default());
}
