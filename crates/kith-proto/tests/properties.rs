//! Property tests over Kith IDs, envelopes and every decoder.

use kith_proto::envelope::{self, OpenError};
use kith_proto::id::KithIdError;
use kith_proto::presence::{PresenceRecord, PresenceShare};
use kith_proto::wire::{
    ChatMessage, ContactCard, DecodeError, DeviceCard, FriendRequest, Lamport, MAX_BODY_BYTES,
    MessageId, Payload, Receipt, ReceiptKind, Timestamp,
};
use kith_proto::{AccountKeypair, DeviceKeypair, KithId, Nospam, qr};
use proptest::prelude::*;

const ALPHABET: &str = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

fn account() -> impl Strategy<Value = AccountKeypair> {
    any::<[u8; 32]>().prop_map(|s| AccountKeypair::from_secret_bytes(&s))
}

fn kith_id() -> impl Strategy<Value = KithId> {
    (account(), any::<[u8; 4]>()).prop_map(|(a, n)| KithId::new(a.public(), Nospam(n)))
}

proptest! {
    #[test]
    fn id_round_trips_through_text_and_uri(id in kith_id()) {
        prop_assert_eq!(KithId::parse(&id.to_text()), Ok(id));
        prop_assert_eq!(KithId::parse(&id.to_text().to_lowercase()), Ok(id));
        prop_assert_eq!(KithId::parse(&id.to_uri()), Ok(id));
        prop_assert_eq!(KithId::from_bytes(&id.to_bytes()), Ok(id));
    }

    #[test]
    fn every_single_character_substitution_is_caught(id in kith_id()) {
        let text: Vec<char> = id.to_text().chars().collect();
        for position in 0..text.len() {
            for replacement in ALPHABET.chars().filter(|&c| c != text[position]) {
                let mut typo = text.clone();
                typo[position] = replacement;
                let typo: String = typo.into_iter().collect();
                prop_assert_eq!(
                    KithId::parse(&typo),
                    Err(KithIdError::ChecksumMismatch),
                    "substituting {} at {} went unnoticed", replacement, position
                );
            }
        }
    }

    #[test]
    fn every_swap_of_neighbouring_characters_is_caught(id in kith_id()) {
        let text: Vec<char> = id.to_text().chars().collect();
        for position in 0..text.len() - 1 {
            if text[position] == text[position + 1] {
                continue;
            }
            let mut swapped = text.clone();
            swapped.swap(position, position + 1);
            let swapped: String = swapped.into_iter().collect();
            prop_assert_eq!(KithId::parse(&swapped), Err(KithIdError::ChecksumMismatch));
        }
    }

    #[test]
    fn envelopes_open_only_for_their_recipient(
        alice in account(),
        bob in account(),
        carol in account(),
        payload in proptest::collection::vec(any::<u8>(), 0..2048),
    ) {
        prop_assume!(bob.public() != carol.public());
        let sealed = envelope::seal(&alice, &bob.public(), &payload).unwrap();
        let opened = envelope::open(&bob, &sealed).unwrap();
        prop_assert_eq!(opened.sender, alice.public());
        prop_assert_eq!(opened.payload, payload);
        prop_assert_eq!(envelope::open(&carol, &sealed), Err(OpenError::Decrypt));
    }

    #[test]
    fn a_flipped_bit_anywhere_in_an_envelope_is_refused(
        payload in proptest::collection::vec(any::<u8>(), 0..256),
        bit in any::<proptest::sample::Index>(),
    ) {
        let alice = AccountKeypair::from_secret_bytes(&[1; 32]);
        let bob = AccountKeypair::from_secret_bytes(&[2; 32]);
        let mut sealed = envelope::seal(&alice, &bob.public(), &payload).unwrap();
        let bit = bit.index(sealed.len() * 8);
        sealed[bit / 8] ^= 1 << (bit % 8);
        let result = envelope::open(&bob, &sealed);
        match bit / 8 {
            0 => prop_assert!(
                matches!(result, Err(OpenError::UnknownVersion { .. })),
                "{:?}", result
            ),
            1..=32 => prop_assert!(
                matches!(result, Err(OpenError::Decrypt | OpenError::WeakEphemeralKey)),
                "{:?}", result
            ),
            _ => prop_assert_eq!(result, Err(OpenError::Decrypt)),
        }
    }

    #[test]
    fn valid_payloads_round_trip(
        id in kith_id(),
        name in "[A-Za-z][A-Za-z ]{0,40}",
        text in "\\PC{1,200}",
        lamport in any::<u64>(),
        at in any::<u64>(),
        ids in proptest::collection::vec(any::<[u8; 16]>(), 1..50),
    ) {
        let payloads = [
            Payload::FriendRequest(Box::new(FriendRequest {
                from: id,
                to_nospam: Nospam([9; 4]),
                display_name: name,
                message: text.clone(),
                sent_at: Timestamp(at),
                card: ContactCard {
                    presence: PresenceShare { public: [3; 32], content_key: [4; 32] },
                    devices: vec![DeviceCard { peer_id: vec![5; 38], prekeys: vec![6; 65] }],
                },
            })),
            Payload::Chat(ChatMessage {
                id: MessageId::random(),
                sent_at: Timestamp(at),
                lamport: Lamport(lamport),
                body: text,
            }),
            Payload::Receipt(Receipt {
                kind: ReceiptKind::Delivered,
                ids: ids.into_iter().map(MessageId).collect(),
                at: Timestamp(at),
            }),
        ];
        for payload in payloads {
            let bytes = payload.encode().unwrap();
            prop_assert_eq!(Payload::decode(&bytes).unwrap(), payload);
        }
    }

    #[test]
    fn decoders_refuse_arbitrary_bytes_without_panicking(
        bytes in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let bob = AccountKeypair::from_secret_bytes(&[2; 32]);
        // Random bytes are overwhelmingly invalid; any that happen to decode
        // must at least re-encode to a valid frame.
        if let Ok(payload) = Payload::decode(&bytes) {
            prop_assert!(payload.encode().is_ok());
        }
        let _ = KithId::from_bytes(&bytes);
        prop_assert!(envelope::open(&bob, &bytes).is_err());
        let _ = DeviceKeypair::from_protobuf(&bytes);
        prop_assert!(PresenceRecord::verify(&[0u8; 32], &bytes, 1_800_000_000).is_err());
        if let Ok(record) = PresenceRecord::decode(&bytes) {
            prop_assert_eq!(PresenceRecord::decode(&record.encode()), Ok(record));
        }
        prop_assert!(qr::read_image(&bytes).is_err());
        let text = String::from_utf8_lossy(&bytes);
        let _ = KithId::parse(&text);
    }

    #[test]
    fn truncated_frames_are_refused(cut in 0usize..100) {
        let payload = Payload::Chat(ChatMessage {
            id: MessageId([7; 16]),
            sent_at: Timestamp(1),
            lamport: Lamport(2),
            body: "truncate me, please".into(),
        });
        let bytes = payload.encode().unwrap();
        let cut = cut % bytes.len();
        let result = Payload::decode(&bytes[..cut]);
        prop_assert!(matches!(result, Err(DecodeError::Empty | DecodeError::Malformed(_))), "{:?}", result);
    }

    #[test]
    fn arbitrary_text_never_panics_the_id_parser(text in "\\PC{0,300}") {
        let _ = KithId::parse(&text);
        let _ = KithId::parse(&format!("kith:{text}"));
    }
}

proptest! {
    // Rendering and scanning a QR image takes milliseconds; fewer cases.
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn id_round_trips_through_a_qr_image(id in kith_id(), side in 120u32..400) {
        let png = qr::to_png(&id, side).unwrap();
        prop_assert_eq!(qr::read_image(&png), Ok(id));
    }
}

#[test]
fn body_limit_is_exact() {
    let at_limit = Payload::Chat(ChatMessage {
        id: MessageId([1; 16]),
        sent_at: Timestamp(0),
        lamport: Lamport(0),
        body: "a".repeat(MAX_BODY_BYTES),
    });
    assert!(Payload::decode(&at_limit.encode().unwrap()).is_ok());
}
