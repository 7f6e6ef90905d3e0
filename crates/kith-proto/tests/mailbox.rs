//! Offline mailbox: golden fixtures, tampering, volunteer limits, fetch
//! proofs and acknowledgements, witnessed times, and every decoder under
//! arbitrary and over-size input.
//!
//! Regenerate the fixtures, after an intended format change, with
//! `KITH_BLESS_FIXTURES=1 cargo test -p kith-proto --test mailbox`.

mod common;

use std::path::PathBuf;

use kith_proto::mailbox::{
    DEFAULT_ITEM_TTL_SECS, DEFAULT_MAX_TTL_SECS, DEFAULT_POW_DIFFICULTY, DecodeError,
    DepositRefusal, EncodeError, FetchAck, FetchChallenge, FetchError, FetchProof, ItemError,
    Limits, MAILBOX_VERSION, MAX_ACK_ITEMS, MAX_CONTENT_BYTES, MAX_ENCODED_ITEM_BYTES,
    MAX_ITEM_BYTES, MAX_POW_DIFFICULTY, MailboxItem, OpenItemError, ReceiptError, SealItemError,
    SenderStamp, WitnessReceipt, WitnessedTime, mailbox_address, node_key, peer_id_of,
    witnessed_time,
};
use kith_proto::{AccountKeypair, DeviceKeypair};
use proptest::prelude::*;

#[global_allocator]
static GLOBAL: common::Counting = common::Counting;

/// Generous allowance for an error value; far below any input here.
const ALLOWANCE: usize = 256;

// ---- fixtures and sample keys ----

fn fixture(name: &str, fresh: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    if std::env::var_os("KITH_BLESS_FIXTURES").is_some() {
        std::fs::write(&path, format!("{fresh}\n")).unwrap();
    }
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim_end()
        .to_owned()
}

const NOW: u64 = 1_795_000_000;
const NOW_MS: u64 = NOW * 1000;
const ITEM_ID: [u8; 16] = [0x5a; 16];
const ONE_TIME_SECRET: [u8; 32] = [0x33; 32];

fn alice() -> AccountKeypair {
    AccountKeypair::from_secret_bytes(&[0x11; 32])
}

fn bob() -> AccountKeypair {
    AccountKeypair::from_secret_bytes(&[0x22; 32])
}

fn carol() -> AccountKeypair {
    AccountKeypair::from_secret_bytes(&[0x33; 32])
}

fn volunteer(seed: u8) -> DeviceKeypair {
    DeviceKeypair::from(libp2p_identity::Keypair::ed25519_from_bytes([seed; 32]).unwrap())
}

/// Fixed bytes standing in for a sealed envelope: the outer layer never
/// looks inside.
fn opaque_sealed() -> Vec<u8> {
    (0..=255u8).cycle().take(300).collect()
}

/// A deterministic item to bob, with no proof of work.
fn plain_item(expires: u64) -> MailboxItem {
    MailboxItem::sign_sealed(
        ITEM_ID,
        mailbox_address(&bob().public()),
        expires,
        opaque_sealed(),
        &ONE_TIME_SECRET,
        0,
    )
    .unwrap()
}

/// Limits that require no proof of work, for items made quickly.
fn easy() -> Limits {
    Limits {
        pow_difficulty: 0,
        ..Limits::default()
    }
}

fn sealed_item(content: &[u8], expires: u64) -> MailboxItem {
    MailboxItem::seal(&alice(), &bob().public(), content, expires, 4).unwrap()
}

// ---- golden fixtures ----

#[test]
fn address_v1() {
    let fresh = hex::encode(mailbox_address(&alice().public()));
    let committed = fixture("mailbox-address-v1.hex", &fresh);
    assert_eq!(fresh, committed);
}

#[test]
fn item_v1_is_byte_for_byte_stable() {
    // Ed25519 signatures and the proof-of-work search are deterministic, so
    // with fixed keys and fixed sealed bytes the whole item is.
    let item = MailboxItem::sign_sealed(
        ITEM_ID,
        mailbox_address(&bob().public()),
        NOW + DEFAULT_ITEM_TTL_SECS,
        opaque_sealed(),
        &ONE_TIME_SECRET,
        DEFAULT_POW_DIFFICULTY,
    )
    .unwrap();
    let fresh = hex::encode(item.encode().unwrap());
    let committed = fixture("mailbox-item-v1.hex", &fresh);
    assert_eq!(fresh, committed, "item encoding changed");
    let decoded = MailboxItem::decode(&hex::decode(&committed).unwrap()).unwrap();
    assert_eq!(decoded, item);
    assert_eq!(decoded.verify(NOW, &Limits::default()), Ok(()));
}

#[test]
fn sealed_item_v1_verifies_and_opens() {
    // The envelope inside is randomised, so this fixture must keep
    // verifying and opening rather than match byte for byte.
    let content = b"golden mailbox content";
    let fresh = MailboxItem::seal(
        &alice(),
        &bob().public(),
        content,
        NOW + DEFAULT_ITEM_TTL_SECS,
        DEFAULT_POW_DIFFICULTY,
    )
    .unwrap();
    let committed = fixture(
        "mailbox-item-sealed-v1.hex",
        &hex::encode(fresh.encode().unwrap()),
    );
    let item = MailboxItem::decode(&hex::decode(committed).unwrap()).unwrap();
    assert_eq!(item.verify(NOW, &Limits::default()), Ok(()));
    let opened = item.open(&bob()).unwrap();
    assert_eq!(opened.sender, alice().public());
    assert_eq!(opened.content, content);
    assert_eq!(opened.expires, NOW + DEFAULT_ITEM_TTL_SECS);
    assert_eq!(opened.item_id, item.item_id);
}

#[test]
fn receipt_v1() {
    let receipt = WitnessReceipt::sign(&volunteer(0x44), ITEM_ID, NOW_MS + 1234).unwrap();
    let fresh = hex::encode(receipt.encode());
    let committed = fixture("mailbox-receipt-v1.hex", &fresh);
    assert_eq!(fresh, committed, "receipt encoding changed");
    let decoded = WitnessReceipt::decode(&hex::decode(&committed).unwrap()).unwrap();
    assert_eq!(decoded, receipt);
    assert_eq!(decoded.verify(), Ok(()));
}

fn sample_challenge() -> FetchChallenge {
    FetchChallenge {
        address: mailbox_address(&bob().public()),
        nonce: [0x66; 32],
        volunteer: node_key(&volunteer(0x44)).unwrap(),
        expires: NOW + 60,
    }
}

#[test]
fn challenge_and_proof_v1() {
    let challenge = sample_challenge();
    let proof = challenge.answer(&bob());
    let fresh_challenge = hex::encode(challenge.encode());
    let fresh_proof = hex::encode(proof.encode());
    let committed_challenge = fixture("mailbox-challenge-v1.hex", &fresh_challenge);
    let committed_proof = fixture("mailbox-proof-v1.hex", &fresh_proof);
    assert_eq!(fresh_challenge, committed_challenge, "challenge changed");
    assert_eq!(fresh_proof, committed_proof, "proof changed");
    let challenge = FetchChallenge::decode(&hex::decode(committed_challenge).unwrap()).unwrap();
    let proof = FetchProof::decode(&hex::decode(committed_proof).unwrap()).unwrap();
    assert_eq!(proof.verify(&challenge, NOW), Ok(()));
}

#[test]
fn ack_v1() {
    let ack = FetchAck::sign(&bob(), vec![ITEM_ID, [0x01; 16]]).unwrap();
    let fresh = hex::encode(ack.encode().unwrap());
    let committed = fixture("mailbox-ack-v1.hex", &fresh);
    assert_eq!(fresh, committed, "acknowledgement changed");
    let decoded = FetchAck::decode(&hex::decode(&committed).unwrap()).unwrap();
    assert_eq!(decoded, ack);
    assert_eq!(decoded.verify(), Ok(()));
}

fn all_refusals() -> Vec<DepositRefusal> {
    vec![
        DepositRefusal::TooLarge { max: 65_536 },
        DepositRefusal::TtlTooLong {
            max: DEFAULT_MAX_TTL_SECS,
        },
        DepositRefusal::Expired,
        DepositRefusal::BadSignature,
        DepositRefusal::WeakProofOfWork { required: 17 },
        DepositRefusal::MailboxFull { quota: 4_194_304 },
        DepositRefusal::VolunteerFull,
        DepositRefusal::RateLimited {
            retry_after_secs: 30,
        },
        DepositRefusal::Malformed,
    ]
}

#[test]
fn refusals_v1() {
    let refusals = all_refusals();
    let fresh: Vec<String> = refusals.iter().map(|r| hex::encode(r.encode())).collect();
    let committed = fixture("mailbox-refusals-v1.hex", &fresh.join("\n"));
    assert_eq!(fresh.join("\n"), committed, "refusal encoding changed");
    for (line, refusal) in committed.lines().zip(&refusals) {
        assert_eq!(
            DepositRefusal::decode(&hex::decode(line).unwrap()),
            Ok(*refusal)
        );
    }
}

/// Found by the `mailbox_values` fuzz target: refusals are read with
/// postcard, which takes over-long varints, so `TooLarge { max: 7740 }`
/// with its field in three bytes instead of two decoded, and re-encoded
/// to other bytes than it came in.
#[test]
fn refusals_with_over_long_varints_are_refused() {
    let non_canonical = DecodeError::Malformed("non-canonical varint");
    assert_eq!(
        DepositRefusal::decode(&[0x01, 0x00, 0xbc, 0xbc, 0x00]),
        Err(non_canonical.clone())
    );
    // The variant index too: `Expired` (2) as `82 00`.
    assert_eq!(
        DepositRefusal::decode(&[0x01, 0x82, 0x00]),
        Err(non_canonical)
    );
    assert_eq!(
        DepositRefusal::decode(&[0x01, 0x00, 0xbc, 0x3c]),
        Ok(DepositRefusal::TooLarge { max: 7740 })
    );
    assert_eq!(
        DepositRefusal::decode(&[0x01, 0x02]),
        Ok(DepositRefusal::Expired)
    );
}

// ---- items ----

#[test]
fn a_sealed_item_round_trips_verifies_and_opens() {
    let item = sealed_item(b"see you tomorrow", NOW + 3600);
    let bytes = item.encode().unwrap();
    assert_eq!(bytes.len(), item.encoded_len());
    let decoded = MailboxItem::decode(&bytes).unwrap();
    assert_eq!(decoded, item);
    assert_eq!(
        decoded.verify(
            NOW,
            &Limits {
                pow_difficulty: 4,
                ..Limits::default()
            }
        ),
        Ok(())
    );
    assert!(decoded.work_bits() >= 4);
    let opened = decoded.open(&bob()).unwrap();
    assert_eq!(opened.sender, alice().public());
    assert_eq!(opened.content, b"see you tomorrow");
    // The outer header names no one: the sender's key appears nowhere in
    // the clear.
    let alice_key = alice().public().to_bytes();
    assert!(!bytes.windows(32).any(|w| w == alice_key));
}

#[test]
fn tampering_with_any_signed_field_is_a_bad_signature() {
    let item = plain_item(NOW + 3600);
    assert_eq!(item.verify(NOW, &easy()), Ok(()));
    let mut tampered: Vec<(&str, MailboxItem)> = Vec::new();
    let mut t = item.clone();
    t.expires += 24 * 3600;
    tampered.push(("expiry", t));
    let mut t = item.clone();
    t.item_id[3] ^= 1;
    tampered.push(("item id", t));
    let mut t = item.clone();
    t.address = mailbox_address(&carol().public());
    tampered.push(("address", t));
    let mut t = item.clone();
    t.sealed[100] ^= 0x40;
    tampered.push(("envelope byte", t));
    let mut t = item.clone();
    t.sealed.truncate(299);
    tampered.push(("envelope length", t));
    let mut t = item.clone();
    t.pow_nonce += 1;
    tampered.push(("nonce", t));
    let mut t = item.clone();
    t.one_time_key = node_key(&volunteer(9)).unwrap();
    tampered.push(("one-time key", t));
    let mut t = item.clone();
    t.signature[0] ^= 1;
    tampered.push(("signature", t));
    for (what, t) in tampered {
        let error = t.verify(NOW, &easy()).unwrap_err();
        assert_eq!(error, ItemError::BadSignature, "{what}");
        assert_eq!(error.refusal(), DepositRefusal::BadSignature, "{what}");
    }
    let message = ItemError::BadSignature.to_string();
    assert!(
        message.contains("altered") && message.contains("expiry"),
        "{message}"
    );
}

#[test]
fn a_tampered_expiry_reads_as_a_bad_signature_even_when_it_breaks_other_limits() {
    // Pushed beyond the volunteer's TTL, or into the past: the signature is
    // checked first, so the refusal names the tampering.
    for expires in [NOW + DEFAULT_MAX_TTL_SECS * 10, NOW - 10] {
        let mut t = plain_item(NOW + 3600);
        t.expires = expires;
        assert_eq!(t.verify(NOW, &easy()), Err(ItemError::BadSignature));
    }
}

#[test]
fn a_volunteer_cannot_extend_an_items_life_by_re_wrapping_it() {
    // A volunteer holds everything needed to build a new outer layer around
    // the same envelope with a later expiry and its own one-time key. The
    // outer layer then verifies, but the sender's stamp inside does not
    // match it.
    let item = sealed_item(b"hello", NOW + 3600);
    let rewrapped = MailboxItem::sign_sealed(
        item.item_id,
        item.address,
        item.expires + 30 * 24 * 3600,
        item.sealed.clone(),
        &[0x77; 32],
        0,
    )
    .unwrap();
    assert_eq!(
        rewrapped.verify(
            NOW,
            &Limits {
                max_ttl_secs: u64::MAX,
                ..easy()
            }
        ),
        Ok(())
    );
    assert_eq!(
        rewrapped.open(&bob()),
        Err(OpenItemError::StampMismatch { field: "expiry" })
    );

    let new_id = MailboxItem::sign_sealed(
        [0x01; 16],
        item.address,
        item.expires,
        item.sealed.clone(),
        &[0x77; 32],
        0,
    )
    .unwrap();
    assert_eq!(
        new_id.open(&bob()),
        Err(OpenItemError::StampMismatch { field: "item ID" })
    );
    assert!(
        OpenItemError::StampMismatch { field: "expiry" }
            .to_string()
            .contains("extend its life")
    );
}

#[test]
fn the_stamp_is_checked_against_the_header() {
    let item = plain_item(NOW + 60);
    let stamp = SenderStamp::of(&item);
    assert_eq!(stamp.check(&item), Ok(()));
    let payload = stamp.wrap(b"content").unwrap();
    let (read, content) = SenderStamp::unwrap(&payload).unwrap();
    assert_eq!(read, stamp);
    assert_eq!(content, b"content");
    let mut other = item.clone();
    other.address = [9; 32];
    assert_eq!(
        stamp.check(&other),
        Err(OpenItemError::StampMismatch {
            field: "mailbox address"
        })
    );
    assert_eq!(
        SenderStamp::unwrap(&payload[..20]),
        Err(DecodeError::Truncated)
    );
    assert!(matches!(
        stamp.wrap(&vec![0; MAX_CONTENT_BYTES + 1]),
        Err(EncodeError::OutOfRange { .. })
    ));
}

#[test]
fn only_the_recipient_opens_an_item() {
    let item = sealed_item(b"for bob", NOW + 60);
    assert_eq!(item.open(&carol()), Err(OpenItemError::WrongMailbox));
    // Addressed to carol's mailbox but sealed to bob: the envelope refuses.
    let mut misaddressed = item.clone();
    misaddressed.address = mailbox_address(&carol().public());
    assert!(matches!(
        misaddressed.open(&carol()),
        Err(OpenItemError::Envelope(_))
    ));
}

#[test]
fn weak_proof_of_work_is_refused() {
    let item = plain_item(NOW + 60);
    let found = item.work_bits();
    let required = u8::try_from(found + 1).unwrap();
    let limits = Limits {
        pow_difficulty: required,
        ..Limits::default()
    };
    let error = item.verify(NOW, &limits).unwrap_err();
    assert_eq!(error, ItemError::WeakProofOfWork { found, required });
    assert_eq!(
        error.refusal(),
        DepositRefusal::WeakProofOfWork { required }
    );

    let solved = MailboxItem::sign_sealed(
        ITEM_ID,
        [2; 32],
        NOW + 60,
        opaque_sealed(),
        &ONE_TIME_SECRET,
        10,
    )
    .unwrap();
    assert!(solved.work_bits() >= 10);
    let ten = Limits {
        pow_difficulty: 10,
        ..Limits::default()
    };
    assert_eq!(solved.verify(NOW, &ten), Ok(()));
}

#[test]
fn difficulty_over_the_cap_is_refused_rather_than_solved() {
    let result = MailboxItem::sign_sealed(
        ITEM_ID,
        [2; 32],
        NOW + 60,
        opaque_sealed(),
        &ONE_TIME_SECRET,
        MAX_POW_DIFFICULTY + 1,
    );
    assert_eq!(
        result,
        Err(SealItemError::DifficultyTooHigh {
            requested: MAX_POW_DIFFICULTY + 1,
            max: MAX_POW_DIFFICULTY
        })
    );
}

#[test]
fn expired_and_overlong_items_are_refused() {
    let limits = easy();
    assert_eq!(
        plain_item(NOW).verify(NOW, &limits),
        Err(ItemError::Expired {
            expires: NOW,
            now: NOW
        })
    );
    let error = plain_item(NOW - 1).verify(NOW, &limits).unwrap_err();
    assert_eq!(error.refusal(), DepositRefusal::Expired);
    assert_eq!(plain_item(NOW + 1).verify(NOW, &limits), Ok(()));
    assert_eq!(
        plain_item(NOW + DEFAULT_MAX_TTL_SECS).verify(NOW, &limits),
        Ok(())
    );
    let error = plain_item(NOW + DEFAULT_MAX_TTL_SECS + 1)
        .verify(NOW, &limits)
        .unwrap_err();
    assert_eq!(
        error,
        ItemError::TtlTooLong {
            expires: NOW + DEFAULT_MAX_TTL_SECS + 1,
            now: NOW,
            max: DEFAULT_MAX_TTL_SECS
        }
    );
    assert_eq!(
        error.refusal(),
        DepositRefusal::TtlTooLong {
            max: DEFAULT_MAX_TTL_SECS
        }
    );
}

#[test]
fn size_limits_hold_when_sealing_verifying_encoding_and_decoding() {
    // A volunteer with a smaller limit.
    let small = Limits {
        max_item_bytes: 100,
        ..easy()
    };
    let error = plain_item(NOW + 60).verify(NOW, &small).unwrap_err();
    assert_eq!(
        error,
        ItemError::TooLarge {
            found: 300,
            max: 100
        }
    );
    assert_eq!(error.refusal(), DepositRefusal::TooLarge { max: 100 });

    // The largest content fits in the largest item.
    let full = MailboxItem::seal(
        &alice(),
        &bob().public(),
        &vec![7; MAX_CONTENT_BYTES],
        u64::MAX,
        0,
    )
    .unwrap();
    assert!(full.sealed.len() <= MAX_ITEM_BYTES);
    assert_eq!(full.open(&bob()).unwrap().content.len(), MAX_CONTENT_BYTES);
    assert!(full.encode().unwrap().len() <= MAX_ENCODED_ITEM_BYTES);
    assert_eq!(
        MailboxItem::seal(
            &alice(),
            &bob().public(),
            &vec![7; MAX_CONTENT_BYTES + 1],
            NOW,
            0
        ),
        Err(SealItemError::ContentTooLarge {
            found: MAX_CONTENT_BYTES + 1,
            max: MAX_CONTENT_BYTES
        })
    );

    for sealed in [Vec::new(), vec![1; MAX_ITEM_BYTES + 1]] {
        let len = sealed.len();
        assert_eq!(
            MailboxItem::sign_sealed(ITEM_ID, [2; 32], NOW, sealed, &ONE_TIME_SECRET, 0),
            Err(SealItemError::SealedSize {
                found: len,
                max: MAX_ITEM_BYTES
            })
        );
    }

    // Encoders refuse what decoders refuse.
    let mut oversize = plain_item(NOW + 60);
    oversize.sealed = vec![1; MAX_ITEM_BYTES + 1];
    assert!(matches!(
        oversize.encode(),
        Err(EncodeError::OutOfRange { .. })
    ));
    assert_eq!(
        oversize.verify(NOW, &easy()),
        Err(ItemError::TooLarge {
            found: MAX_ITEM_BYTES + 1,
            max: MAX_ITEM_BYTES
        })
    );
    let mut empty = plain_item(NOW + 60);
    empty.sealed.clear();
    assert!(empty.encode().is_err());
    assert_eq!(empty.verify(NOW, &easy()), Err(ItemError::Empty));

    // A length prefix over the limit is refused before the bytes are
    // looked for, and maps to a size refusal.
    let bytes = item_with_sealed_len_prefix(MAX_ITEM_BYTES as u64 + 1);
    let error = MailboxItem::decode(&bytes).unwrap_err();
    assert_eq!(
        error,
        DecodeError::OutOfRange {
            field: "sealed contents",
            found: MAX_ITEM_BYTES + 1,
            min: 1,
            max: MAX_ITEM_BYTES
        }
    );
    assert_eq!(
        DepositRefusal::from(&error),
        DepositRefusal::TooLarge {
            max: MAX_ITEM_BYTES as u64
        }
    );
}

/// The start of an encoded item up to and including a sealed-length
/// prefix of `len`, with nothing after it.
fn item_with_sealed_len_prefix(len: u64) -> Vec<u8> {
    let mut bytes = vec![MAILBOX_VERSION];
    bytes.extend_from_slice(&[0; 16]);
    bytes.extend_from_slice(&[0; 32]);
    bytes.push(5); // expires
    bytes.extend_from_slice(&[0; 32]);
    bytes.push(0); // nonce
    let mut len = len;
    while len >= 0x80 {
        bytes.push((len as u8 & 0x7f) | 0x80);
        len >>= 7;
    }
    bytes.push(len as u8);
    bytes
}

#[test]
fn framing_errors_are_typed() {
    let bytes = plain_item(NOW + 60).encode().unwrap();
    assert_eq!(MailboxItem::decode(&[]), Err(DecodeError::Empty));
    let mut wrong = bytes.clone();
    wrong[0] = 2;
    assert_eq!(
        MailboxItem::decode(&wrong),
        Err(DecodeError::UnknownVersion { found: 2 })
    );
    let mut trailing = bytes.clone();
    trailing.push(0);
    assert_eq!(
        MailboxItem::decode(&trailing),
        Err(DecodeError::TrailingBytes { count: 1 })
    );
    for cut in 1..bytes.len() {
        assert!(MailboxItem::decode(&bytes[..cut]).is_err(), "cut at {cut}");
    }
    // A non-canonical expiry (a redundant zero group) is refused, so every
    // item has exactly one encoding.
    let mut padded = bytes[..49].to_vec();
    let expiry_len = bytes[49..].iter().position(|b| b & 0x80 == 0).unwrap() + 1;
    let mut expiry = bytes[49..49 + expiry_len].to_vec();
    *expiry.last_mut().unwrap() |= 0x80;
    expiry.push(0);
    padded.extend_from_slice(&expiry);
    padded.extend_from_slice(&bytes[49 + expiry_len..]);
    assert_eq!(
        MailboxItem::decode(&padded),
        Err(DecodeError::Malformed("non-canonical varint"))
    );
    assert_eq!(
        DepositRefusal::from(&DecodeError::Empty),
        DepositRefusal::Malformed
    );
}

// ---- receipts and witnessed time ----

#[test]
fn receipts_verify_and_name_their_volunteer() {
    let node = volunteer(0x44);
    let receipt = WitnessReceipt::sign(&node, ITEM_ID, NOW_MS).unwrap();
    assert_eq!(receipt.verify(), Ok(()));
    assert_eq!(receipt.volunteer_peer_id(), Ok(node.peer_id()));
    assert_eq!(peer_id_of(&receipt.volunteer), Some(node.peer_id()));
    assert_eq!(WitnessReceipt::decode(&receipt.encode()), Ok(receipt));

    let mut later = receipt;
    later.received_at += 1;
    assert_eq!(later.verify(), Err(ReceiptError::BadSignature));
    let mut other_item = receipt;
    other_item.item_id[0] ^= 1;
    assert_eq!(other_item.verify(), Err(ReceiptError::BadSignature));
    let mut other_volunteer = receipt;
    other_volunteer.volunteer = node_key(&volunteer(0x45)).unwrap();
    assert_eq!(other_volunteer.verify(), Err(ReceiptError::BadSignature));
    let mut invalid = receipt;
    // y = 2 is not the y-coordinate of any curve point.
    invalid.volunteer = [0; 32];
    invalid.volunteer[0] = 2;
    assert_eq!(invalid.verify(), Err(ReceiptError::InvalidKey));
    assert_eq!(invalid.volunteer_peer_id(), Err(ReceiptError::InvalidKey));
}

fn receipt_at(seed: u8, at: u64) -> WitnessReceipt {
    WitnessReceipt::sign(&volunteer(seed), ITEM_ID, at).unwrap()
}

#[test]
fn witnessed_time_without_receipts_is_the_senders_unwitnessed() {
    assert_eq!(
        witnessed_time(NOW_MS, &[], 1000),
        WitnessedTime::Unwitnessed(NOW_MS)
    );
}

#[test]
fn witnesses_that_agree_make_the_senders_time_witnessed() {
    let receipts = [
        receipt_at(1, NOW_MS + 800),
        receipt_at(2, NOW_MS + 1200),
        receipt_at(3, NOW_MS - 300),
    ];
    assert_eq!(
        witnessed_time(NOW_MS, &receipts, 5_000),
        WitnessedTime::Witnessed(NOW_MS)
    );
    assert_eq!(witnessed_time(NOW_MS, &receipts, 5_000).millis(), NOW_MS);
}

#[test]
fn one_lying_witness_of_three_changes_nothing() {
    let receipts = [
        receipt_at(1, NOW_MS + 800),
        receipt_at(2, NOW_MS + 86_400_000),
        receipt_at(3, NOW_MS + 1000),
    ];
    assert_eq!(
        witnessed_time(NOW_MS, &receipts, 5_000),
        WitnessedTime::Witnessed(NOW_MS)
    );
}

#[test]
fn a_backdated_sender_time_is_corrected_to_the_median_witness() {
    let hour = 3_600_000;
    let receipts = [
        receipt_at(1, NOW_MS + 2000),
        receipt_at(2, NOW_MS),
        receipt_at(3, NOW_MS + 1000),
    ];
    assert_eq!(
        witnessed_time(NOW_MS - 24 * hour, &receipts, 5_000),
        WitnessedTime::Corrected(NOW_MS + 1000)
    );
    // A sender clock running ahead is caught the same way.
    assert_eq!(
        witnessed_time(NOW_MS + hour, &receipts, 5_000),
        WitnessedTime::Corrected(NOW_MS + 1000)
    );
}

#[test]
fn the_tolerance_is_inclusive() {
    let receipts = [receipt_at(1, NOW_MS + 5_000)];
    assert_eq!(
        witnessed_time(NOW_MS, &receipts, 5_000),
        WitnessedTime::Witnessed(NOW_MS)
    );
    assert_eq!(
        witnessed_time(NOW_MS, &receipts, 4_999),
        WitnessedTime::Corrected(NOW_MS + 5_000)
    );
}

#[test]
fn a_volunteer_counts_once_however_many_receipts_it_signs() {
    let late = NOW_MS + 3_600_000;
    let receipts = [
        receipt_at(1, NOW_MS),
        receipt_at(2, late),
        receipt_at(2, late + 1),
        receipt_at(2, late + 2),
    ];
    // One honest witness and one (repeated) disagreeing one: half agree.
    assert_eq!(
        witnessed_time(NOW_MS, &receipts, 5_000),
        WitnessedTime::Witnessed(NOW_MS)
    );
    // Two distinct witnesses disagreeing with the sender: their median.
    let receipts = [
        receipt_at(1, late),
        receipt_at(2, late + 2_000),
        receipt_at(2, late + 9_000),
    ];
    assert_eq!(
        witnessed_time(NOW_MS, &receipts, 5_000),
        WitnessedTime::Corrected(late + 1_000)
    );
}

// ---- fetch ----

#[test]
fn the_owner_answers_a_challenge() {
    let node = volunteer(0x44);
    let address = mailbox_address(&bob().public());
    let challenge = FetchChallenge::new(address, node_key(&node).unwrap(), NOW);
    assert_eq!(challenge.expires, NOW + 60);
    assert_ne!(
        challenge.nonce,
        FetchChallenge::new(address, [0; 32], NOW).nonce
    );
    assert_eq!(
        challenge.check(&address, &node_key(&node).unwrap(), NOW),
        Ok(())
    );
    let proof = challenge.answer(&bob());
    let proof = FetchProof::decode(&proof.encode()).unwrap();
    let challenge = FetchChallenge::decode(&challenge.encode()).unwrap();
    assert_eq!(proof.verify(&challenge, NOW), Ok(()));
    assert_eq!(proof.verify(&challenge, NOW + 59), Ok(()));
}

#[test]
fn a_fetch_proof_by_the_wrong_account_is_refused() {
    let challenge = sample_challenge();
    // Carol signs properly, but her key does not hash to bob's mailbox.
    assert_eq!(
        challenge.answer(&carol()).verify(&challenge, NOW),
        Err(FetchError::WrongAccount)
    );
    // Carol claims bob's key but can only sign with her own.
    let mut forged = challenge.answer(&carol());
    forged.account = bob().public();
    assert_eq!(
        forged.verify(&challenge, NOW),
        Err(FetchError::BadSignature)
    );
}

#[test]
fn a_fetch_proof_only_answers_its_own_live_challenge() {
    let challenge = sample_challenge();
    let proof = challenge.answer(&bob());
    assert_eq!(
        proof.verify(&challenge, NOW + 60),
        Err(FetchError::ChallengeExpired {
            expires: NOW + 60,
            now: NOW + 60
        })
    );
    let mut other_nonce = challenge;
    other_nonce.nonce[0] ^= 1;
    assert_eq!(
        proof.verify(&other_nonce, NOW),
        Err(FetchError::BadSignature)
    );
    // A proof made for one volunteer is worthless at another.
    let mut other_volunteer = challenge;
    other_volunteer.volunteer = node_key(&volunteer(0x45)).unwrap();
    assert_eq!(
        proof.verify(&other_volunteer, NOW),
        Err(FetchError::BadSignature)
    );
    let mut later = challenge;
    later.expires += 1;
    assert_eq!(proof.verify(&later, NOW), Err(FetchError::BadSignature));
}

#[test]
fn clients_check_challenges_before_answering() {
    let challenge = sample_challenge();
    let address = mailbox_address(&bob().public());
    let key = node_key(&volunteer(0x44)).unwrap();
    assert_eq!(
        challenge.check(&address, &node_key(&volunteer(0x45)).unwrap(), NOW),
        Err(FetchError::WrongVolunteer)
    );
    assert_eq!(
        challenge.check(&mailbox_address(&carol().public()), &key, NOW),
        Err(FetchError::WrongMailbox)
    );
    assert!(matches!(
        challenge.check(&address, &key, NOW + 61),
        Err(FetchError::ChallengeExpired { .. })
    ));
}

#[test]
fn fetch_proofs_with_invalid_account_keys_do_not_decode() {
    let mut bytes = sample_challenge().answer(&bob()).encode();
    bytes[1..33].copy_from_slice(&[0; 32]);
    bytes[1] = 2;
    assert_eq!(
        FetchProof::decode(&bytes),
        Err(DecodeError::InvalidAccountKey)
    );
}

#[test]
fn acknowledgements_verify_and_refuse_tampering() {
    let ack = FetchAck::sign(&bob(), vec![ITEM_ID]).unwrap();
    assert_eq!(ack.address, mailbox_address(&bob().public()));
    assert_eq!(ack.verify(), Ok(()));

    let mut more = ack.clone();
    more.item_ids.push([0x01; 16]);
    assert_eq!(more.verify(), Err(FetchError::BadSignature));

    let mut wrong_account = ack.clone();
    wrong_account.account = carol().public();
    assert_eq!(wrong_account.verify(), Err(FetchError::WrongAccount));

    let carols = FetchAck::sign(&carol(), vec![ITEM_ID]).unwrap();
    let mut moved = carols.clone();
    moved.address = ack.address;
    assert_eq!(moved.verify(), Err(FetchError::WrongAccount));
    let mut claimed = carols;
    claimed.address = ack.address;
    claimed.account = bob().public();
    assert_eq!(claimed.verify(), Err(FetchError::BadSignature));
}

#[test]
fn acknowledgement_counts_are_bounded_both_ways() {
    assert!(matches!(
        FetchAck::sign(&bob(), Vec::new()),
        Err(EncodeError::OutOfRange { found: 0, .. })
    ));
    assert!(matches!(
        FetchAck::sign(&bob(), vec![ITEM_ID; MAX_ACK_ITEMS + 1]),
        Err(EncodeError::OutOfRange { .. })
    ));
    let full = FetchAck::sign(&bob(), vec![ITEM_ID; MAX_ACK_ITEMS]).unwrap();
    let bytes = full.encode().unwrap();
    assert_eq!(FetchAck::decode(&bytes), Ok(full.clone()));
    let mut over = full;
    over.item_ids.push(ITEM_ID);
    assert!(over.encode().is_err());

    // A count over the limit is refused before any ID is read.
    let mut bytes = bytes[..65].to_vec();
    bytes.extend_from_slice(&[0x81, 0x02]); // 257
    assert_eq!(
        FetchAck::decode(&bytes),
        Err(DecodeError::OutOfRange {
            field: "acknowledged items",
            found: MAX_ACK_ITEMS + 1,
            min: 1,
            max: MAX_ACK_ITEMS
        })
    );
}

// ---- refusals and quotas ----

#[test]
fn refusals_round_trip_and_say_what_happened() {
    for refusal in all_refusals() {
        assert_eq!(DepositRefusal::decode(&refusal.encode()), Ok(refusal));
        let message = refusal.to_string();
        assert!(!message.is_empty());
        assert_eq!(message, message.to_lowercase(), "{message}");
    }
    assert!(
        DepositRefusal::WeakProofOfWork { required: 17 }
            .to_string()
            .contains("17")
    );
    assert_eq!(
        DepositRefusal::decode(&[MAILBOX_VERSION, 200]),
        Err(DecodeError::Malformed("not a known refusal"))
    );
    assert_eq!(
        DepositRefusal::decode(&[MAILBOX_VERSION, 2, 0]),
        Err(DecodeError::TrailingBytes { count: 1 })
    );
    assert_eq!(
        DepositRefusal::decode(&[3, 2]),
        Err(DecodeError::UnknownVersion { found: 3 })
    );
}

#[test]
fn quotas_refuse_per_mailbox_then_in_total() {
    let limits = Limits::default();
    let quota = limits.mailbox_quota_bytes;
    assert_eq!(limits.check_quota(0, 0, 1000), Ok(()));
    assert_eq!(limits.check_quota(quota - 1000, 0, 1000), Ok(()));
    assert_eq!(
        limits.check_quota(quota - 999, 0, 1000),
        Err(DepositRefusal::MailboxFull { quota })
    );
    assert_eq!(
        limits.check_quota(0, limits.total_quota_bytes, 1),
        Err(DepositRefusal::VolunteerFull)
    );
    assert_eq!(
        limits.check_quota(u64::MAX, u64::MAX, u64::MAX),
        Err(DepositRefusal::MailboxFull { quota })
    );
}

// ---- decoders under hostile input ----

#[test]
fn oversize_input_is_refused_before_allocation() {
    let huge = vec![MAILBOX_VERSION; 64 * 1024 * 1024];

    let (bytes, result) = common::allocated_during(|| MailboxItem::decode(&huge));
    assert!(matches!(
        result,
        Err(DecodeError::TooLarge {
            max: MAX_ENCODED_ITEM_BYTES,
            ..
        })
    ));
    assert!(bytes <= ALLOWANCE, "item decoder allocated {bytes} bytes");

    let (bytes, result) = common::allocated_during(|| WitnessReceipt::decode(&huge));
    assert!(matches!(result, Err(DecodeError::TooLarge { .. })));
    assert!(
        bytes <= ALLOWANCE,
        "receipt decoder allocated {bytes} bytes"
    );

    let (bytes, result) = common::allocated_during(|| FetchChallenge::decode(&huge));
    assert!(matches!(result, Err(DecodeError::TooLarge { .. })));
    assert!(
        bytes <= ALLOWANCE,
        "challenge decoder allocated {bytes} bytes"
    );

    let (bytes, result) = common::allocated_during(|| FetchProof::decode(&huge));
    assert!(matches!(result, Err(DecodeError::TooLarge { .. })));
    assert!(bytes <= ALLOWANCE, "proof decoder allocated {bytes} bytes");

    let (bytes, result) = common::allocated_during(|| FetchAck::decode(&huge));
    assert!(matches!(result, Err(DecodeError::TooLarge { .. })));
    assert!(bytes <= ALLOWANCE, "ack decoder allocated {bytes} bytes");

    let (bytes, result) = common::allocated_during(|| DepositRefusal::decode(&huge));
    assert!(matches!(result, Err(DecodeError::TooLarge { .. })));
    assert!(
        bytes <= ALLOWANCE,
        "refusal decoder allocated {bytes} bytes"
    );

    let (bytes, result) = common::allocated_during(|| SenderStamp::unwrap(&huge));
    assert!(matches!(result, Err(DecodeError::TooLarge { .. })));
    assert!(bytes <= ALLOWANCE, "stamp reader allocated {bytes} bytes");
}

#[test]
fn a_claimed_length_with_nothing_behind_it_allocates_nothing() {
    let bytes = item_with_sealed_len_prefix(MAX_ITEM_BYTES as u64);
    let (allocated, result) = common::allocated_during(|| MailboxItem::decode(&bytes));
    assert_eq!(result, Err(DecodeError::Truncated));
    assert!(allocated <= ALLOWANCE, "allocated {allocated} bytes");
}

fn arbitrary_item() -> impl Strategy<Value = MailboxItem> {
    (
        any::<[u8; 16]>(),
        any::<[u8; 32]>(),
        any::<u64>(),
        any::<[u8; 32]>(),
        any::<u64>(),
        proptest::collection::vec(any::<u8>(), 1..512),
        any::<[u8; 32]>(),
        any::<[u8; 32]>(),
    )
        .prop_map(
            |(item_id, address, expires, one_time_key, pow_nonce, sealed, s1, s2)| {
                let mut signature = [0u8; 64];
                signature[..32].copy_from_slice(&s1);
                signature[32..].copy_from_slice(&s2);
                MailboxItem {
                    item_id,
                    address,
                    expires,
                    one_time_key,
                    pow_nonce,
                    sealed,
                    signature,
                }
            },
        )
}

/// Every decoder on `bytes`: none may panic, and whatever decodes must
/// re-encode to exactly `bytes` (one encoding per value).
fn decode_everything(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(item) = MailboxItem::decode(bytes) {
        prop_assert_eq!(item.encode().unwrap(), bytes);
        prop_assert!(item.verify(NOW, &easy()).is_err());
    }
    if let Ok(receipt) = WitnessReceipt::decode(bytes) {
        prop_assert_eq!(receipt.encode(), bytes);
        let _ = receipt.verify();
    }
    if let Ok(challenge) = FetchChallenge::decode(bytes) {
        prop_assert_eq!(challenge.encode(), bytes);
    }
    if let Ok(proof) = FetchProof::decode(bytes) {
        prop_assert_eq!(proof.encode(), bytes);
        prop_assert!(proof.verify(&sample_challenge(), NOW).is_err());
    }
    if let Ok(ack) = FetchAck::decode(bytes) {
        prop_assert_eq!(ack.encode().unwrap(), bytes);
        prop_assert!(ack.verify().is_err());
    }
    if let Ok(refusal) = DepositRefusal::decode(bytes) {
        prop_assert_eq!(DepositRefusal::decode(&refusal.encode()), Ok(refusal));
    }
    if let Ok((stamp, content)) = SenderStamp::unwrap(bytes) {
        prop_assert_eq!(stamp.wrap(content).unwrap(), bytes);
    }
    Ok(())
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic_a_decoder(
        bytes in proptest::collection::vec(any::<u8>(), 0..700),
    ) {
        decode_everything(&bytes)?;
    }

    #[test]
    fn arbitrary_bytes_after_a_valid_version_never_panic_a_decoder(
        bytes in proptest::collection::vec(any::<u8>(), 0..700),
    ) {
        let mut versioned = vec![MAILBOX_VERSION];
        versioned.extend_from_slice(&bytes);
        decode_everything(&versioned)?;
    }

    #[test]
    fn mutated_encodings_never_panic_a_decoder(
        item in arbitrary_item(),
        position in any::<proptest::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let mut bytes = item.encode().unwrap();
        let at = position.index(bytes.len());
        bytes[at] = byte;
        decode_everything(&bytes)?;
        let receipt = receipt_at(1, NOW_MS).encode();
        let mut receipt = receipt;
        let at = position.index(receipt.len());
        receipt[at] = byte;
        decode_everything(&receipt)?;
    }

    #[test]
    fn items_round_trip(item in arbitrary_item()) {
        let bytes = item.encode().unwrap();
        prop_assert_eq!(bytes.len(), item.encoded_len());
        prop_assert_eq!(MailboxItem::decode(&bytes), Ok(item));
    }

    #[test]
    fn small_values_round_trip(
        item_id in any::<[u8; 16]>(),
        key in any::<[u8; 32]>(),
        nonce in any::<[u8; 32]>(),
        time in any::<u64>(),
        ids in proptest::collection::vec(any::<[u8; 16]>(), 1..40),
    ) {
        let receipt = WitnessReceipt { item_id, volunteer: key, received_at: time, signature: [7; 64] };
        prop_assert_eq!(WitnessReceipt::decode(&receipt.encode()), Ok(receipt));
        let challenge = FetchChallenge { address: key, nonce, volunteer: key, expires: time };
        prop_assert_eq!(FetchChallenge::decode(&challenge.encode()), Ok(challenge));
        let ack = FetchAck::sign(&bob(), ids).unwrap();
        prop_assert_eq!(FetchAck::decode(&ack.encode().unwrap()), Ok(ack.clone()));
        prop_assert_eq!(ack.verify(), Ok(()));
        let stamp = SenderStamp { item_id, address: key, expires: time };
        let wrapped = stamp.wrap(&nonce).unwrap();
        prop_assert_eq!(SenderStamp::unwrap(&wrapped), Ok((stamp, &nonce[..])));
        let refusal = DepositRefusal::RateLimited { retry_after_secs: time };
        prop_assert_eq!(DepositRefusal::decode(&refusal.encode()), Ok(refusal));
    }

    #[test]
    fn witnessed_time_is_always_the_sender_time_or_within_the_witnesses(
        sender in any::<u64>(),
        times in proptest::collection::vec(any::<u64>(), 0..6),
        tolerance in 0u64..1_000_000,
    ) {
        let receipts: Vec<WitnessReceipt> = times
            .iter()
            .enumerate()
            .map(|(i, &t)| WitnessReceipt {
                item_id: ITEM_ID,
                volunteer: [i as u8; 32],
                received_at: t,
                signature: [0; 64],
            })
            .collect();
        match witnessed_time(sender, &receipts, tolerance) {
            WitnessedTime::Unwitnessed(t) => {
                prop_assert!(times.is_empty());
                prop_assert_eq!(t, sender);
            }
            WitnessedTime::Witnessed(t) => prop_assert_eq!(t, sender),
            WitnessedTime::Corrected(t) => {
                prop_assert!(t >= *times.iter().min().unwrap());
                prop_assert!(t <= *times.iter().max().unwrap());
            }
        }
    }
}
