//! Mailbox values (`kith_proto::mailbox`, `docs/mailbox.md`): items, sender
//! stamps, witness receipts, fetch challenges, proofs and
//! acknowledgements, and deposit refusals. Every decoder gets the input.
//!
//! The docs promise one encoding per value ("decoding then re-encoding
//! gives back the input"), so each decoded value must encode to exactly
//! the input. Checks that read a decoded value (signatures, proof of work,
//! opening an item for its recipient) must not panic.

#![no_main]

use kith_fuzz::{NOW, recipient};
use kith_proto::mailbox::{
    DepositRefusal, FetchAck, FetchChallenge, FetchProof, Limits, MAX_CONTENT_BYTES, MailboxItem,
    SenderStamp, WitnessReceipt, mailbox_address,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(item) = MailboxItem::decode(data) {
        assert_eq!(item.encode().as_deref(), Ok(data));
        assert_eq!(item.encoded_len(), data.len());
        let limits = Limits {
            pow_difficulty: 0,
            ..Limits::default()
        };
        let _ = item.verify(NOW, &limits);
        let _ = item.work_bits();
        if let Ok(opened) = item.open(recipient()) {
            assert_eq!(opened.item_id, item.item_id);
            assert_eq!(opened.expires, item.expires);
        }
    }
    if let Ok((stamp, content)) = SenderStamp::unwrap(data) {
        // `unwrap` takes up to MAX_STAMP_BYTES + MAX_CONTENT_BYTES in all,
        // so after a short stamp the content may be a few bytes over what
        // `wrap` takes: only contents within the limit round-trip.
        if content.len() <= MAX_CONTENT_BYTES {
            assert_eq!(stamp.wrap(content).as_deref(), Ok(data));
        }
    }
    if let Ok(receipt) = WitnessReceipt::decode(data) {
        assert_eq!(receipt.encode(), data);
        let _ = receipt.verify();
        let _ = receipt.volunteer_peer_id();
    }
    if let Ok(challenge) = FetchChallenge::decode(data) {
        assert_eq!(challenge.encode(), data);
        let address = mailbox_address(&recipient().public());
        let _ = challenge.check(&address, &challenge.volunteer, NOW);
        let proof = challenge.answer(recipient());
        assert_eq!(FetchProof::decode(&proof.encode()), Ok(proof));
    }
    if let Ok(proof) = FetchProof::decode(data) {
        assert_eq!(proof.encode(), data);
    }
    if let Ok(ack) = FetchAck::decode(data) {
        assert_eq!(ack.encode().as_deref(), Ok(data));
        let _ = ack.verify();
    }
    if let Ok(refusal) = DepositRefusal::decode(data) {
        assert_eq!(refusal.encode(), data);
    }
});
