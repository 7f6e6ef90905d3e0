//! Multi-device data layer: signed device lists, link codes (text, bytes
//! and QR), link proofs and sealed link bundles — golden fixtures, every
//! typed refusal, and every decoder under arbitrary and over-size input.
//!
//! Regenerate the fixtures, after an intended format change, with
//! `KITH_BLESS_FIXTURES=1 cargo test -p kith-proto --test devices`.

mod common;

use std::path::PathBuf;

use kith_proto::devices::{
    self, DEVICES_VERSION, DecodeError, ListError, MAX_LIST_BYTES, MAX_LISTED_DEVICES, VerifyError,
};
use kith_proto::link::{
    BundleError, LINK_PREFIX, LINK_TTL_SECS, LinkCodeError, LinkRole, MAX_CODE_BYTES,
    MAX_LINK_ADDRESS_BYTES, MAX_LINK_ADDRESSES, MAX_LINK_INPUT_LEN, MAX_SEALED_BUNDLE_BYTES,
    MAX_SYNC_BYTES, MIN_CODE_BYTES, ProofError, QrReadError, link_proof, verify_link_proof,
};
use kith_proto::wire::FieldError;
use kith_proto::{
    AccountKeypair, DeviceKeypair, DeviceList, KithId, LinkBundle, LinkCode, LinkSecret,
    ListedDevice, Nospam, SignedDeviceList, qr,
};
use libp2p_identity::PeerId;
use proptest::prelude::*;

#[global_allocator]
static GLOBAL: common::Counting = common::Counting;

/// Generous allowance for an error value; far below any input here.
const ALLOWANCE: usize = 256;

const NOW: u64 = 1_795_000_000;
const ALPHABET: &str = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

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

fn alice() -> AccountKeypair {
    AccountKeypair::from_secret_bytes(&[0x11; 32])
}

fn bob() -> AccountKeypair {
    AccountKeypair::from_secret_bytes(&[0x22; 32])
}

fn device(seed: u8) -> DeviceKeypair {
    DeviceKeypair::from(libp2p_identity::Keypair::ed25519_from_bytes([seed; 32]).unwrap())
}

fn peer(seed: u8) -> PeerId {
    device(seed).peer_id()
}

fn laptop() -> ListedDevice {
    ListedDevice::new(&peer(0xa1), "Laptop", NOW - 86_400)
}

fn phone() -> ListedDevice {
    ListedDevice::new(&peer(0xa2), "Sam’s phone", NOW)
}

/// Alice's list after linking her phone: sequence 2, two devices.
fn two_devices() -> SignedDeviceList {
    DeviceList::sign(&alice(), 2, NOW, vec![laptop(), phone()]).unwrap()
}

/// `/ip4/192.168.1.20/tcp/4001` and `/ip4/192.168.1.20/udp/4001/quic-v1`
/// as binary multiaddrs.
fn sample_addresses() -> Vec<Vec<u8>> {
    vec![
        vec![0x04, 192, 168, 1, 20, 0x06, 0x0f, 0xa1],
        vec![0x04, 192, 168, 1, 20, 0x91, 0x02, 0x0f, 0xa1, 0xcc, 0x03],
    ]
}

/// The new device (seed 0xa2, the phone) shows this code.
fn sample_code() -> LinkCode {
    LinkCode::generate_with(
        &device(0xa2),
        LinkSecret::from_bytes([0x5e; 32]),
        sample_addresses(),
        NOW,
    )
    .unwrap()
}

fn sample_bundle() -> LinkBundle {
    LinkBundle {
        account: alice(),
        nospam: Nospam([0xde, 0xad, 0xbe, 0xef]),
        display_name: "Sam".into(),
        device_list: two_devices(),
        sync: b"opaque op-log batch".to_vec(),
    }
}

const BUNDLE_NONCE: [u8; 24] = [0x7c; 24];

fn crc32c(bytes: &[u8]) -> [u8; 4] {
    crc::Crc::<u32>::new(&crc::CRC_32_ISCSI)
        .checksum(bytes)
        .to_be_bytes()
}

/// Re-seals a binary link code after editing its body, so the checksum
/// matches and the field checks behind it are reached.
fn with_checksum(mut body: Vec<u8>) -> Vec<u8> {
    let sum = crc32c(&body);
    body.extend_from_slice(&sum);
    body
}

// ---- golden fixtures ----

#[test]
fn device_list_v1_is_byte_for_byte_stable() {
    // Ed25519 signatures are deterministic, so the whole list is.
    let list = two_devices();
    let fresh = hex::encode(list.encode());
    let committed = fixture("devices-list-v1.hex", &fresh);
    assert_eq!(fresh, committed, "device list encoding changed");
    let decoded = SignedDeviceList::decode(&hex::decode(&committed).unwrap()).unwrap();
    assert_eq!(decoded, list);
    let verified = decoded.verify(&alice().public()).unwrap();
    assert_eq!(verified.seq, 2);
    assert_eq!(verified.devices, vec![laptop(), phone()]);
}

#[test]
fn link_code_v1_text_and_bytes_are_stable() {
    let code = sample_code();
    let fresh_text = code.to_text();
    let fresh_hex = hex::encode(code.to_bytes());
    let committed_text = fixture("link-code-v1.txt", &fresh_text);
    let committed_hex = fixture("link-code-v1.hex", &fresh_hex);
    assert_eq!(fresh_text, committed_text, "link code text changed");
    assert_eq!(fresh_hex, committed_hex, "link code bytes changed");
    for read in [
        LinkCode::parse(&committed_text).unwrap(),
        LinkCode::from_bytes(&hex::decode(&committed_hex).unwrap()).unwrap(),
    ] {
        assert_eq!(read.peer_id(), peer(0xa2));
        assert_eq!(read.secret().as_bytes(), &[0x5e; 32]);
        assert_eq!(read.expires(), NOW + LINK_TTL_SECS);
        assert_eq!(read.addresses(), sample_addresses().as_slice());
    }
}

#[test]
fn link_proof_v1_is_stable() {
    let code = sample_code();
    let (existing, new) = (peer(0xa1), peer(0xa2));
    let (ne, nn) = ([0x01; 32], [0x02; 32]);
    let mut both =
        link_proof(code.secret(), LinkRole::Existing, &existing, &new, &ne, &nn).to_vec();
    both.extend_from_slice(&link_proof(
        code.secret(),
        LinkRole::New,
        &existing,
        &new,
        &ne,
        &nn,
    ));
    let fresh = hex::encode(&both);
    let committed = fixture("link-proof-v1.hex", &fresh);
    assert_eq!(fresh, committed, "link proof changed");
}

#[test]
fn link_bundle_v1_is_byte_for_byte_stable_and_opens() {
    let code = sample_code();
    let sealed = sample_bundle()
        .seal_with(code.secret(), &code.peer_id(), BUNDLE_NONCE)
        .unwrap();
    let fresh = hex::encode(&sealed);
    let committed = fixture("link-bundle-v1.hex", &fresh);
    assert_eq!(fresh, committed, "sealed bundle changed");
    let opened = LinkBundle::open(
        &hex::decode(&committed).unwrap(),
        &LinkSecret::from_bytes([0x5e; 32]),
        &peer(0xa2),
    )
    .unwrap();
    assert_eq!(opened.account.public(), alice().public());
    assert_eq!(opened.nospam, Nospam([0xde, 0xad, 0xbe, 0xef]));
    assert_eq!(opened.display_name, "Sam");
    assert_eq!(opened.device_list, two_devices());
    assert_eq!(opened.sync, b"opaque op-log batch");
}

// ---- device lists ----

#[test]
fn first_list_then_linking_then_removal() {
    let first = DeviceList::sign(&alice(), 1, NOW - 86_400, vec![laptop()]).unwrap();
    let first = first.verify(&alice().public()).unwrap().clone();
    assert!(first.contains(&peer(0xa1)));
    assert!(!first.contains(&peer(0xa2)));

    let second = first.with(phone(), 2, NOW).unwrap();
    assert_eq!(second.issued_at, NOW);
    assert_eq!(
        second.peers().collect::<Vec<_>>(),
        vec![peer(0xa1), peer(0xa2)]
    );
    assert!(second.supersedes(&first));
    assert!(!first.supersedes(&second));
    let signed = second.clone().signed(&alice()).unwrap();
    assert_eq!(signed, two_devices());

    let third = second.without(&peer(0xa1), 3, NOW + 10).unwrap();
    assert_eq!(third.devices, vec![phone()]);
    assert!(!third.contains(&peer(0xa1)));
    assert!(third.supersedes(&second));
    assert_eq!(third.get(&peer(0xa2)).unwrap().name, "Sam’s phone");
    let signed = third.signed(&alice()).unwrap();
    let back = SignedDeviceList::decode(&signed.encode()).unwrap();
    assert_eq!(back.verify(&alice().public()).unwrap().seq, 3);
}

#[test]
fn editing_a_list_refuses_what_would_be_wrong() {
    let list = two_devices().verify(&alice().public()).unwrap().clone();
    assert_eq!(
        list.with(ListedDevice::new(&peer(1), "x", NOW), 2, NOW),
        Err(ListError::SeqNotNewer { seq: 2, current: 2 })
    );
    assert_eq!(
        list.without(&peer(0xa1), 1, NOW),
        Err(ListError::SeqNotNewer { seq: 1, current: 2 })
    );
    assert_eq!(
        list.with(laptop(), 3, NOW),
        Err(ListError::DuplicateDevice { index: 2 })
    );
    assert_eq!(list.without(&peer(0x01), 3, NOW), Err(ListError::NotListed));
    let single = list.without(&peer(0xa1), 3, NOW).unwrap();
    assert_eq!(
        single.without(&peer(0xa2), 4, NOW),
        Err(ListError::DeviceCount { found: 0 })
    );
    let mut full = single;
    for seed in 0..(MAX_LISTED_DEVICES - 1) as u8 {
        full = full
            .with(
                ListedDevice::new(&peer(seed), "spare", NOW),
                full.seq + 1,
                NOW,
            )
            .unwrap();
    }
    assert_eq!(full.devices.len(), MAX_LISTED_DEVICES);
    assert_eq!(
        full.with(
            ListedDevice::new(&peer(0x77), "one too many", NOW),
            full.seq + 1,
            NOW
        ),
        Err(ListError::DeviceCount {
            found: MAX_LISTED_DEVICES + 1
        })
    );
    assert_eq!(list.clone().signed(&bob()), Err(ListError::WrongAccount));
}

#[test]
fn signing_refuses_invalid_lists() {
    let sign = |devices| DeviceList::sign(&alice(), 1, NOW, devices);
    assert_eq!(sign(vec![]), Err(ListError::DeviceCount { found: 0 }));
    let nine: Vec<ListedDevice> = (0..=MAX_LISTED_DEVICES as u8)
        .map(|s| ListedDevice::new(&peer(s), "d", NOW))
        .collect();
    assert_eq!(sign(nine), Err(ListError::DeviceCount { found: 9 }));
    assert_eq!(
        sign(vec![laptop(), phone(), laptop()]),
        Err(ListError::DuplicateDevice { index: 2 })
    );
    assert_eq!(
        sign(vec![
            laptop(),
            ListedDevice::new(&PeerId::random(), "random", NOW)
        ]),
        Err(ListError::InvalidPeerId { index: 1 })
    );
    let mut bad = laptop();
    bad.name = "two\nlines".into();
    assert_eq!(sign(vec![bad]), Err(ListError::NameNotOneLine { index: 0 }));
    let mut bad = laptop();
    bad.name = "n".repeat(65);
    assert_eq!(
        sign(vec![bad]),
        Err(ListError::NameLength {
            index: 0,
            found: 65
        })
    );
}

/// Offsets in the encoded `two_devices()` list.
const SEQ_AT: usize = 1 + 32;
const COUNT_AT: usize = 1 + 32 + 8 + 8;
const FIRST_DEVICE_AT: usize = COUNT_AT + 1;
/// Peer ID length byte, 38-byte peer ID, name length byte, "Laptop", time.
const SECOND_DEVICE_AT: usize = FIRST_DEVICE_AT + 1 + 38 + 1 + 6 + 8;

#[test]
fn tampered_lists_are_refused() {
    let bytes = two_devices().encode();
    let alice = alice().public();
    // Each signed region, and the signature itself.
    for at in [
        SEQ_AT,
        SEQ_AT + 8,
        FIRST_DEVICE_AT + 1 + 38 + 1,
        SECOND_DEVICE_AT - 1,
        bytes.len() - 1,
    ] {
        let mut tampered = bytes.clone();
        tampered[at] ^= 0x01;
        let list = SignedDeviceList::decode(&tampered).unwrap();
        assert_eq!(
            list.verify(&alice),
            Err(VerifyError::BadSignature),
            "byte {at}"
        );
    }
    // A changed key byte in a peer ID makes another (or no) device.
    let mut tampered = bytes.clone();
    tampered[FIRST_DEVICE_AT + 1 + 37] ^= 0x01;
    match SignedDeviceList::decode(&tampered) {
        Ok(list) => assert_eq!(list.verify(&alice), Err(VerifyError::BadSignature)),
        Err(e) => assert_eq!(
            e,
            DecodeError::Invalid(ListError::InvalidPeerId { index: 0 })
        ),
    }
}

#[test]
fn a_list_is_only_accepted_for_its_own_account() {
    let list = two_devices();
    assert_eq!(list.verify(&bob().public()), Err(VerifyError::WrongAccount));
    // Re-labelled as bob's: it names bob but bob never signed it.
    let mut bytes = list.encode();
    bytes[1..33].copy_from_slice(&bob().public().to_bytes());
    let relabelled = SignedDeviceList::decode(&bytes).unwrap();
    assert_eq!(relabelled.claimed_account(), &bob().public());
    assert_eq!(
        relabelled.verify(&bob().public()),
        Err(VerifyError::BadSignature)
    );
    assert_eq!(
        relabelled.verify(&alice().public()),
        Err(VerifyError::WrongAccount)
    );
}

#[test]
fn decoding_enforces_every_list_rule() {
    let bytes = two_devices().encode();

    let mut duplicate = bytes.clone();
    duplicate.copy_within(
        FIRST_DEVICE_AT + 1..FIRST_DEVICE_AT + 39,
        SECOND_DEVICE_AT + 1,
    );
    assert_eq!(
        SignedDeviceList::decode(&duplicate),
        Err(DecodeError::Invalid(ListError::DuplicateDevice {
            index: 1
        }))
    );

    for count in [0u8, 9, 255] {
        let mut wrong = bytes.clone();
        wrong[COUNT_AT] = count;
        assert_eq!(
            SignedDeviceList::decode(&wrong),
            Err(DecodeError::Invalid(ListError::DeviceCount {
                found: usize::from(count)
            })),
            "{count}"
        );
    }
    let mut three = bytes.clone();
    three[COUNT_AT] = 3;
    assert!(matches!(
        SignedDeviceList::decode(&three),
        Err(DecodeError::FieldLength { .. } | DecodeError::Truncated)
    ));

    let mut long_id = bytes.clone();
    long_id[FIRST_DEVICE_AT] = 65;
    assert_eq!(
        SignedDeviceList::decode(&long_id),
        Err(DecodeError::FieldLength {
            field: "peer ID",
            found: 65,
            max: 64
        })
    );
    let mut empty_name = bytes.clone();
    empty_name[FIRST_DEVICE_AT + 39] = 0;
    assert!(matches!(
        SignedDeviceList::decode(&empty_name),
        Err(DecodeError::FieldLength {
            field: "device name",
            found: 0,
            ..
        })
    ));
    let mut not_utf8 = bytes.clone();
    not_utf8[FIRST_DEVICE_AT + 40] = 0xff;
    assert_eq!(
        SignedDeviceList::decode(&not_utf8),
        Err(DecodeError::NameNotUtf8 { index: 0 })
    );
    let mut newline = bytes.clone();
    newline[FIRST_DEVICE_AT + 40] = b'\n';
    assert_eq!(
        SignedDeviceList::decode(&newline),
        Err(DecodeError::Invalid(ListError::NameNotOneLine { index: 0 }))
    );
    let mut bad_key = bytes.clone();
    bad_key[1..33].copy_from_slice(&{
        // y = 2 is not the y-coordinate of any point on the curve.
        let mut k = [0u8; 32];
        k[0] = 2;
        k
    });
    assert_eq!(
        SignedDeviceList::decode(&bad_key),
        Err(DecodeError::InvalidAccountKey)
    );
}

#[test]
fn truncation_trailing_bytes_and_versions_are_typed() {
    let bytes = two_devices().encode();
    assert_eq!(SignedDeviceList::decode(&[]), Err(DecodeError::Empty));
    for len in 1..bytes.len() {
        assert_eq!(
            SignedDeviceList::decode(&bytes[..len]),
            Err(DecodeError::Truncated),
            "{len} bytes"
        );
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert_eq!(
        SignedDeviceList::decode(&longer),
        Err(DecodeError::TrailingBytes { count: 1 })
    );
    let mut v2 = bytes.clone();
    v2[0] = DEVICES_VERSION + 1;
    assert_eq!(
        SignedDeviceList::decode(&v2),
        Err(DecodeError::UnknownVersion { found: 2 })
    );
}

#[test]
fn newest_list_wins() {
    let base = two_devices().verify(&alice().public()).unwrap().clone();
    let newer = base.without(&peer(0xa1), 3, NOW).unwrap();
    assert!(newer.supersedes(&base));
    assert!(!base.supersedes(&newer));
    assert!(!base.supersedes(&base));
    // A replayed old list never replaces a newer one, whatever its time.
    let mut replay = base.clone();
    replay.issued_at = u64::MAX;
    assert!(!replay.supersedes(&newer));
    // Another account's list never replaces this one.
    let bobs = DeviceList::sign(&bob(), 99, NOW, vec![laptop()]).unwrap();
    assert!(!bobs.verify(&bob().public()).unwrap().supersedes(&base));
    // Two different lists under one sequence: exactly one wins.
    let rival = base.without(&peer(0xa2), 3, NOW).unwrap();
    assert_ne!(rival.supersedes(&newer), newer.supersedes(&rival));
}

// ---- link codes ----

#[test]
fn link_codes_round_trip_in_every_written_form() {
    let code = sample_code();
    let text = code.to_text();
    assert!(text.starts_with(LINK_PREFIX));
    let body = &text[LINK_PREFIX.len()..];
    let spaced: String = body
        .chars()
        .enumerate()
        .flat_map(|(i, c)| {
            let sep = (i > 0 && i % 5 == 0).then_some('-');
            sep.into_iter().chain(std::iter::once(c))
        })
        .collect();
    for written in [
        text.clone(),
        text.to_lowercase(),
        text.to_uppercase(),
        body.to_owned(),
        format!("KITH-LINK://{body}"),
        format!("  {LINK_PREFIX}{spaced}\n"),
        body.replace('0', "O").replace('1', "l"),
    ] {
        let read = LinkCode::parse(&written).unwrap();
        assert_eq!(read.to_bytes(), code.to_bytes(), "{written}");
    }
    let no_addresses =
        LinkCode::generate_with(&device(3), LinkSecret::from_bytes([1; 32]), vec![], NOW).unwrap();
    assert_eq!(no_addresses.to_bytes().len(), MIN_CODE_BYTES);
    let full = LinkCode::generate_with(
        &device(3),
        LinkSecret::from_bytes([1; 32]),
        vec![vec![0xff; MAX_LINK_ADDRESS_BYTES]; MAX_LINK_ADDRESSES],
        NOW,
    )
    .unwrap();
    assert_eq!(full.to_bytes().len(), MAX_CODE_BYTES);
    for code in [no_addresses, full] {
        let read = LinkCode::parse(&code.to_text()).unwrap();
        assert_eq!(read.to_bytes(), code.to_bytes());
    }
}

#[test]
fn generated_codes_carry_fresh_secrets() {
    let (a, secret_a) = LinkCode::generate(&device(3), vec![], NOW).unwrap();
    let (b, _) = LinkCode::generate(&device(3), vec![], NOW).unwrap();
    assert_eq!(a.secret().as_bytes(), secret_a.as_bytes());
    assert_ne!(a.secret().as_bytes(), b.secret().as_bytes());
    assert_eq!(a.peer_id(), peer(3));
    assert_eq!(a.expires(), NOW + LINK_TTL_SECS);
}

#[test]
fn every_one_character_typo_is_named_as_a_typo() {
    let text = sample_code().to_text();
    let body: Vec<char> = text[LINK_PREFIX.len()..].chars().collect();
    for position in 0..body.len() {
        for replacement in ALPHABET.chars().filter(|&c| c != body[position]) {
            let mut typo = body.clone();
            typo[position] = replacement;
            let typo: String = typo.into_iter().collect();
            assert_eq!(
                LinkCode::parse(&typo).unwrap_err(),
                LinkCodeError::ChecksumMismatch,
                "{replacement} at {position}"
            );
        }
    }
    for position in 0..body.len() - 1 {
        if body[position] == body[position + 1] {
            continue;
        }
        let mut swapped = body.clone();
        swapped.swap(position, position + 1);
        let swapped: String = swapped.into_iter().collect();
        assert_eq!(
            LinkCode::parse(&swapped).unwrap_err(),
            LinkCodeError::ChecksumMismatch,
            "swap at {position}"
        );
    }
    let message = LinkCodeError::ChecksumMismatch.to_string();
    assert!(message.contains("typo"), "{message}");
}

#[test]
fn missing_or_extra_characters_are_caught() {
    let text = sample_code().to_text();
    let body = &text[LINK_PREFIX.len()..];
    for position in 0..body.len() {
        let mut shorter = body.to_owned();
        shorter.remove(position);
        let mut longer = body.to_owned();
        longer.insert(position, '7');
        for changed in [shorter, longer] {
            let error = LinkCode::parse(&changed).unwrap_err();
            assert!(
                matches!(
                    error,
                    LinkCodeError::WrongLength { .. } | LinkCodeError::ChecksumMismatch
                ),
                "{error:?}"
            );
        }
    }
    assert!(matches!(
        LinkCode::parse(&body[..100]),
        Err(LinkCodeError::WrongLength { found: 100, .. })
    ));
}

#[test]
fn text_errors_say_what_went_wrong() {
    let err = |text: &str| LinkCode::parse(text).unwrap_err();
    assert_eq!(err("  "), LinkCodeError::Empty);
    assert_eq!(err("kith-link:"), LinkCodeError::Empty);
    let text = sample_code().to_text();
    let mut bad = text.clone();
    bad.replace_range(LINK_PREFIX.len() + 10..LINK_PREFIX.len() + 11, "U");
    assert_eq!(
        err(&bad),
        LinkCodeError::InvalidCharacter {
            character: 'U',
            position: 11
        }
    );
    assert_eq!(
        err(&"A".repeat(MAX_LINK_INPUT_LEN + 1)),
        LinkCodeError::TooLong {
            max: MAX_LINK_INPUT_LEN
        }
    );
    // Someone pastes a Kith ID (or its link) where the code goes.
    let id = KithId::new(alice().public(), Nospam([1, 2, 3, 4]));
    assert_eq!(err(&id.to_text()), LinkCodeError::KithId);
    assert_eq!(err(&id.to_uri()), LinkCodeError::KithId);
    assert!(err(&id.to_text()).to_string().contains("Kith ID"));
}

#[test]
fn expired_and_overlong_codes_are_refused() {
    let code = sample_code();
    assert_eq!(code.check(NOW), Ok(()));
    assert_eq!(code.check(NOW + LINK_TTL_SECS - 1), Ok(()));
    assert_eq!(
        code.check(NOW + LINK_TTL_SECS),
        Err(LinkCodeError::Expired {
            expires: NOW + LINK_TTL_SECS,
            now: NOW + LINK_TTL_SECS
        })
    );
    // The reader's clock a little behind the maker's is fine; a code that
    // claims to live for an hour is not one Kith made.
    assert_eq!(code.check(NOW - 200), Ok(()));
    assert!(matches!(
        code.check(NOW - 3600),
        Err(LinkCodeError::ExpiryTooFar { .. })
    ));
    assert!(
        LinkCodeError::Expired { expires: 0, now: 1 }
            .to_string()
            .contains("expired")
    );
}

#[test]
fn code_fields_are_checked_when_made_and_read() {
    let make = |addresses| {
        LinkCode::generate_with(&device(3), LinkSecret::from_bytes([1; 32]), addresses, NOW)
            .unwrap_err()
    };
    assert_eq!(
        make(vec![vec![1]; MAX_LINK_ADDRESSES + 1]),
        LinkCodeError::TooManyAddresses {
            found: MAX_LINK_ADDRESSES + 1,
            max: MAX_LINK_ADDRESSES
        }
    );
    assert_eq!(
        make(vec![vec![1], vec![]]),
        LinkCodeError::AddressLength {
            index: 1,
            found: 0,
            max: MAX_LINK_ADDRESS_BYTES
        }
    );
    assert_eq!(
        make(vec![vec![1; MAX_LINK_ADDRESS_BYTES + 1]]),
        LinkCodeError::AddressLength {
            index: 0,
            found: MAX_LINK_ADDRESS_BYTES + 1,
            max: MAX_LINK_ADDRESS_BYTES
        }
    );

    // Binary forms whose checksum matches but whose fields are wrong.
    let bytes = sample_code().to_bytes().to_vec();
    let body = bytes[..bytes.len() - 4].to_vec();
    let read = |body: Vec<u8>| LinkCode::from_bytes(&with_checksum(body)).unwrap_err();
    let mut v2 = body.clone();
    v2[0] = 2;
    assert_eq!(read(v2), LinkCodeError::UnknownVersion { found: 2 });
    let mut bad_key = body.clone();
    bad_key[1..33].copy_from_slice(&{
        let mut k = [0u8; 32];
        k[0] = 2;
        k
    });
    assert_eq!(read(bad_key), LinkCodeError::InvalidDeviceKey);
    let count_at = 1 + 32 + 32 + 8;
    let mut many = body.clone();
    many[count_at] = 5;
    assert_eq!(
        read(many),
        LinkCodeError::TooManyAddresses { found: 5, max: 4 }
    );
    let mut zero_len = body.clone();
    zero_len[count_at + 1] = 0;
    assert!(matches!(
        read(zero_len),
        LinkCodeError::AddressLength {
            index: 0,
            found: 0,
            ..
        }
    ));
    let mut fewer = body.clone();
    fewer[count_at] = 1;
    assert!(matches!(read(fewer), LinkCodeError::Malformed(_)));
    let mut more = body.clone();
    more[count_at] = 3;
    assert!(matches!(read(more), LinkCodeError::Malformed(_)));

    // A damaged checksum or body reads as a typo, the version byte too.
    let mut damaged = bytes.clone();
    damaged[0] ^= 1;
    assert_eq!(
        LinkCode::from_bytes(&damaged).unwrap_err(),
        LinkCodeError::ChecksumMismatch
    );
    assert!(matches!(
        LinkCode::from_bytes(&bytes[..MIN_CODE_BYTES - 1]),
        Err(LinkCodeError::WrongSize { .. })
    ));
}

#[test]
fn qr_codes_round_trip_through_a_png() {
    let code = sample_code();
    let png = code.to_qr_png(320).unwrap();
    let read = LinkCode::read_qr_image(&png).unwrap();
    assert_eq!(read.to_bytes(), code.to_bytes());
    let svg = code.to_qr_svg(200).unwrap();
    assert!(svg.contains("<svg"));
    let terminal = code.to_qr_terminal().unwrap();
    assert!(terminal.lines().count() > 20);
    // A Kith ID's QR code is named as such.
    let id = KithId::new(alice().public(), Nospam([1, 2, 3, 4]));
    let id_png = qr::to_png(&id, 256).unwrap();
    assert_eq!(
        LinkCode::read_qr_image(&id_png).unwrap_err(),
        QrReadError::NotLinkCode(LinkCodeError::KithId)
    );
    assert!(matches!(
        LinkCode::read_qr_image(b"not an image"),
        Err(QrReadError::NotAnImage(_))
    ));
    let blank = image::GrayImage::from_pixel(64, 64, image::Luma([255]));
    assert_eq!(
        LinkCode::read_qr_gray(blank).unwrap_err(),
        QrReadError::NoQrCode
    );
}

#[test]
fn the_largest_code_still_makes_a_readable_qr_code() {
    let code = LinkCode::generate_with(
        &device(3),
        LinkSecret::from_bytes([0xee; 32]),
        vec![vec![0xa5; MAX_LINK_ADDRESS_BYTES]; MAX_LINK_ADDRESSES],
        NOW,
    )
    .unwrap();
    // 551 characters: a version 15 code (77 modules a side).
    let terminal = code.to_qr_terminal().unwrap();
    assert_eq!(terminal.lines().count(), (77 + 8usize).div_ceil(2));
    let png = code.to_qr_png(600).unwrap();
    let read = LinkCode::read_qr_image(&png).unwrap();
    assert_eq!(read.to_bytes(), code.to_bytes());
}

// ---- proofs ----

#[test]
fn both_sides_prove_the_secret_to_each_other() {
    let code = sample_code();
    let new_secret = LinkSecret::from_bytes([0x5e; 32]);
    let (existing, new) = (peer(0xa1), peer(0xa2));
    let (ne, nn) = ([0x31; 32], [0x32; 32]);

    let from_new = link_proof(&new_secret, LinkRole::New, &existing, &new, &ne, &nn);
    assert_eq!(
        verify_link_proof(
            code.secret(),
            LinkRole::New,
            &existing,
            &new,
            &ne,
            &nn,
            &from_new
        ),
        Ok(())
    );
    let from_existing = link_proof(code.secret(), LinkRole::Existing, &existing, &new, &ne, &nn);
    assert_eq!(
        verify_link_proof(
            &new_secret,
            LinkRole::Existing,
            &existing,
            &new,
            &ne,
            &nn,
            &from_existing
        ),
        Ok(())
    );

    // A wrong secret, a reflected proof, another connection, another
    // exchange: each refused.
    let wrong = LinkSecret::from_bytes([0x5f; 32]);
    let forged = link_proof(&wrong, LinkRole::New, &existing, &new, &ne, &nn);
    let refused = |proof: &[u8], role, a: &PeerId, n: &[u8; 32]| {
        verify_link_proof(code.secret(), role, a, &new, &ne, n, proof)
    };
    assert_eq!(
        refused(&forged, LinkRole::New, &existing, &nn),
        Err(ProofError::Mismatch)
    );
    assert_eq!(
        refused(&from_new, LinkRole::Existing, &existing, &nn),
        Err(ProofError::Mismatch)
    );
    assert_eq!(
        refused(&from_new, LinkRole::New, &peer(0x99), &nn),
        Err(ProofError::Mismatch)
    );
    assert_eq!(
        refused(&from_new, LinkRole::New, &existing, &[0x33; 32]),
        Err(ProofError::Mismatch)
    );
    assert_eq!(
        refused(&from_new[..16], LinkRole::New, &existing, &nn),
        Err(ProofError::Mismatch)
    );
}

// ---- bundles ----

#[test]
fn bundles_open_only_with_the_secret_for_the_new_device() {
    let code = sample_code();
    let sealed = sample_bundle()
        .seal(code.secret(), &code.peer_id())
        .unwrap();
    let secret = LinkSecret::from_bytes([0x5e; 32]);
    assert!(LinkBundle::open(&sealed, &secret, &peer(0xa2)).is_ok());
    assert_eq!(
        LinkBundle::open(&sealed, &LinkSecret::from_bytes([0x5f; 32]), &peer(0xa2)).unwrap_err(),
        BundleError::Decrypt
    );
    assert_eq!(
        LinkBundle::open(&sealed, &secret, &peer(0xa1)).unwrap_err(),
        BundleError::Decrypt
    );
    // Two seals of one bundle differ (fresh nonces) and both open.
    let again = sample_bundle()
        .seal(code.secret(), &code.peer_id())
        .unwrap();
    assert_ne!(again, sealed);
    assert!(LinkBundle::open(&again, &secret, &peer(0xa2)).is_ok());
}

#[test]
fn tampered_bundles_are_refused() {
    let code = sample_code();
    let sealed = sample_bundle()
        .seal_with(code.secret(), &code.peer_id(), BUNDLE_NONCE)
        .unwrap();
    let open = |bytes: &[u8]| LinkBundle::open(bytes, code.secret(), &code.peer_id()).unwrap_err();
    for at in [
        1,
        24,
        25,
        100,
        sealed.len() / 2,
        sealed.len() - 17,
        sealed.len() - 1,
    ] {
        let mut tampered = sealed.clone();
        tampered[at] ^= 0x01;
        assert_eq!(open(&tampered), BundleError::Decrypt, "byte {at}");
    }
    let mut v2 = sealed.clone();
    v2[0] = 2;
    assert_eq!(open(&v2), BundleError::UnknownVersion { found: 2 });
    assert_eq!(open(&sealed[..sealed.len() - 1]), BundleError::Decrypt);
    let mut longer = sealed.clone();
    longer.push(0);
    assert_eq!(open(&longer), BundleError::Decrypt);
    assert!(matches!(open(&sealed[..40]), BundleError::TooShort { .. }));
    assert!(matches!(open(&[]), BundleError::TooShort { .. }));
}

#[test]
fn bundles_that_would_be_wrong_are_not_sealed() {
    let code = sample_code();
    let seal = |bundle: LinkBundle| bundle.seal(code.secret(), &code.peer_id()).unwrap_err();

    let mut not_listed = sample_bundle();
    not_listed.device_list = DeviceList::sign(&alice(), 2, NOW, vec![laptop()]).unwrap();
    assert_eq!(seal(not_listed), BundleError::NewDeviceNotListed);

    let mut bobs_list = sample_bundle();
    bobs_list.device_list = DeviceList::sign(&bob(), 2, NOW, vec![laptop(), phone()]).unwrap();
    assert_eq!(
        seal(bobs_list),
        BundleError::DeviceList(VerifyError::WrongAccount)
    );

    let mut too_much = sample_bundle();
    too_much.sync = vec![0; MAX_SYNC_BYTES + 1];
    assert_eq!(
        seal(too_much),
        BundleError::SyncTooLarge {
            found: MAX_SYNC_BYTES + 1,
            max: MAX_SYNC_BYTES
        }
    );

    let mut blank = sample_bundle();
    blank.display_name = " ".into();
    assert_eq!(
        seal(blank),
        BundleError::DisplayName(FieldError::Empty {
            field: "display name"
        })
    );
    let mut two_lines = sample_bundle();
    two_lines.display_name = "Sam\nSmith".into();
    assert!(matches!(
        seal(two_lines),
        BundleError::DisplayName(FieldError::ControlCharacter { .. })
    ));
    let mut long = sample_bundle();
    long.display_name = "s".repeat(129);
    assert!(matches!(
        seal(long),
        BundleError::DisplayName(FieldError::TooLong { found: 129, .. })
    ));
}

#[test]
fn the_largest_bundle_seals_and_opens() {
    let code = sample_code();
    let mut bundle = sample_bundle();
    bundle.sync = (0..MAX_SYNC_BYTES).map(|i| i as u8).collect();
    bundle.display_name = "é".repeat(64);
    let sealed = bundle.seal(code.secret(), &code.peer_id()).unwrap();
    assert!(sealed.len() <= MAX_SEALED_BUNDLE_BYTES);
    let opened = LinkBundle::open(&sealed, code.secret(), &code.peer_id()).unwrap();
    assert_eq!(opened.sync, bundle.sync);
    assert_eq!(opened.display_name, bundle.display_name);
}

#[test]
fn debug_never_prints_the_account_secret() {
    let bundle = sample_bundle();
    let secret_hex = hex::encode(*alice().secret_bytes());
    let shown = format!("{bundle:?}");
    assert!(!shown.contains(&secret_hex), "{shown}");
    assert!(shown.contains(&alice().public().to_hex()), "{shown}");
    let code = format!("{:?}", sample_code());
    assert!(!code.contains(&hex::encode([0x5e; 32])), "{code}");
    assert!(!code.contains("94, 94, 94"), "{code}");
}

// ---- bounds ----

#[test]
fn oversize_input_is_refused_before_allocation() {
    let huge = vec![DEVICES_VERSION; 8 * 1024 * 1024];

    let (bytes, result) = common::allocated_during(|| SignedDeviceList::decode(&huge));
    assert!(matches!(
        result,
        Err(DecodeError::TooLarge {
            max: MAX_LIST_BYTES,
            ..
        })
    ));
    assert!(bytes <= ALLOWANCE, "list decoder allocated {bytes} bytes");

    let (bytes, result) = common::allocated_during(|| LinkCode::from_bytes(&huge).map(drop));
    assert!(matches!(result, Err(LinkCodeError::WrongSize { .. })));
    assert!(bytes <= ALLOWANCE, "code decoder allocated {bytes} bytes");

    let text = "0".repeat(8 * 1024 * 1024);
    let (bytes, result) = common::allocated_during(|| LinkCode::parse(&text).map(drop));
    assert!(matches!(result, Err(LinkCodeError::TooLong { .. })));
    assert!(bytes <= ALLOWANCE, "code parser allocated {bytes} bytes");

    let secret = LinkSecret::from_bytes([1; 32]);
    let new = peer(1);
    let (bytes, result) =
        common::allocated_during(|| LinkBundle::open(&huge, &secret, &new).map(drop));
    assert!(matches!(result, Err(BundleError::TooLarge { .. })));
    assert!(bytes <= ALLOWANCE, "bundle opener allocated {bytes} bytes");

    let images = vec![0u8; qr::MAX_IMAGE_BYTES + 1];
    let (bytes, result) = common::allocated_during(|| LinkCode::read_qr_image(&images).map(drop));
    assert!(matches!(result, Err(QrReadError::FileTooLarge { .. })));
    assert!(bytes <= ALLOWANCE, "QR reader allocated {bytes} bytes");
}

#[test]
fn limits_are_as_documented() {
    assert_eq!(MAX_LISTED_DEVICES, 8);
    assert_eq!(
        MAX_LIST_BYTES,
        1 + 32 + 8 + 8 + 1 + 8 * (1 + 64 + 1 + 64 + 8) + 64
    );
    assert_eq!(MIN_CODE_BYTES, 78);
    assert_eq!(MAX_CODE_BYTES, 338);
    assert_eq!(MAX_SYNC_BYTES, 4 * 1024 * 1024);
    assert_eq!(LINK_TTL_SECS, 300);
    assert_eq!(devices::MAX_DEVICE_NAME_BYTES, 64);
    assert_eq!(MAX_LINK_ADDRESSES, 4);
}

// ---- properties ----

fn any_code() -> impl Strategy<Value = LinkCode> {
    (
        any::<[u8; 32]>(),
        any::<[u8; 32]>(),
        any::<u64>(),
        proptest::collection::vec(
            proptest::collection::vec(any::<u8>(), 1..=MAX_LINK_ADDRESS_BYTES),
            0..=MAX_LINK_ADDRESSES,
        ),
    )
        .prop_map(|(seed, secret, now, addresses)| {
            let device =
                DeviceKeypair::from(libp2p_identity::Keypair::ed25519_from_bytes(seed).unwrap());
            LinkCode::generate_with(&device, LinkSecret::from_bytes(secret), addresses, now)
                .unwrap()
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn codes_round_trip(code in any_code()) {
        let read = LinkCode::parse(&code.to_text()).unwrap();
        prop_assert_eq!(read.to_bytes(), code.to_bytes());
        prop_assert_eq!(read.peer_id(), code.peer_id());
        let read = LinkCode::from_bytes(&code.to_bytes()).unwrap();
        prop_assert_eq!(read.addresses(), code.addresses());
    }

    #[test]
    fn list_decoder_never_panics_and_what_it_accepts_is_canonical(
        bytes in proptest::collection::vec(any::<u8>(), 0..1400)
    ) {
        if let Ok(list) = SignedDeviceList::decode(&bytes) {
            prop_assert_eq!(list.encode(), bytes);
        }
    }

    #[test]
    fn damaged_lists_never_panic_and_never_verify(at in 0usize..1000, xor in 1u8..=255) {
        let mut bytes = two_devices().encode();
        let at = at % bytes.len();
        bytes[at] ^= xor;
        if let Ok(list) = SignedDeviceList::decode(&bytes) {
            prop_assert_eq!(&list.encode(), &bytes);
            prop_assert!(list.verify(&alice().public()).is_err());
        }
    }

    #[test]
    fn code_decoders_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..400),
        text in "\\PC{0,700}",
        symbols in proptest::collection::vec(0usize..32, 100..560),
    ) {
        let _ = LinkCode::from_bytes(&bytes);
        let _ = LinkCode::from_bytes(&with_checksum(bytes));
        let _ = LinkCode::parse(&text);
        let symbols: String = symbols.into_iter().map(|i| ALPHABET.as_bytes()[i] as char).collect();
        let _ = LinkCode::parse(&symbols);
    }

    #[test]
    fn bundle_opener_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = LinkBundle::open(&bytes, &LinkSecret::from_bytes([1; 32]), &peer(1));
    }
}
