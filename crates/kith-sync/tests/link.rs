//! The device-link protocol end to end with real kith-proto crypto: the
//! existing device's [`Linker`] and the new device's [`Joiner`] exchanging
//! byte vectors, every refusal, forged and replayed frames, the limits, and
//! decoders on garbage.

use kith_proto::link::{BundleError, LinkCodeError, LinkRole, link_proof};
use kith_proto::{
    AccountKeypair, DeviceKeypair, DeviceList, KithId, LinkBundle, LinkCode, LinkSecret,
    ListedDevice, Nospam,
};
use kith_sync::link::{
    CHALLENGE_TTL_SECS, JoinError, JoinStatus, JoinStep, Joiner, LINK_FRAME, LinkError,
    LinkRefusal, LinkRequest, LinkResponse, LinkWireError, Linker, MAX_CHALLENGES,
    MAX_FAILED_ATTEMPTS, MAX_LINK_REQUEST_BYTES, MAX_LINK_RESPONSE_BYTES, MAX_LINK_SYNC_BYTES,
    MAX_OFFER_BUNDLE_BYTES, PendingOffer, is_link_frame,
};
use libp2p_identity::PeerId;
use proptest::prelude::*;

const NOW: u64 = 1_750_000_000;
const SECRET: [u8; 32] = [0x5e; 32];

fn device(seed: u8) -> DeviceKeypair {
    DeviceKeypair::from(libp2p_identity::Keypair::ed25519_from_bytes([seed; 32]).unwrap())
}

/// The existing device, E.
fn existing() -> PeerId {
    device(0xa1).peer_id()
}

/// The new device, N.
fn new_device() -> PeerId {
    device(0xa2).peer_id()
}

/// Another peer that reaches N.
fn stranger(seed: u8) -> PeerId {
    device(seed).peer_id()
}

fn account() -> AccountKeypair {
    AccountKeypair::from_secret_bytes(&[0x11; 32])
}

/// N's code, made at [`NOW`].
fn code() -> LinkCode {
    code_with(SECRET)
}

fn code_with(secret: [u8; 32]) -> LinkCode {
    LinkCode::generate_with(
        &device(0xa2),
        LinkSecret::from_bytes(secret),
        Vec::new(),
        NOW,
    )
    .unwrap()
}

/// The account's next list, naming E and `new`.
fn bundle_for(new: PeerId, sync: Vec<u8>) -> LinkBundle {
    let list = DeviceList::sign(
        &account(),
        2,
        NOW,
        vec![
            ListedDevice::new(&existing(), "Laptop", NOW - 86_400),
            ListedDevice::new(&new, "Phone", NOW),
        ],
    )
    .unwrap();
    LinkBundle {
        account: account(),
        nospam: Nospam([0xde, 0xad, 0xbe, 0xef]),
        display_name: "Sam".into(),
        device_list: list,
        sync,
    }
}

fn bundle() -> LinkBundle {
    bundle_for(new_device(), b"history".to_vec())
}

fn joiner() -> Joiner {
    Joiner::new(code(), new_device())
}

#[track_caller]
fn respond(step: JoinStep) -> Vec<u8> {
    match step {
        JoinStep::Respond(bytes) => bytes,
        JoinStep::Offered(offer) => panic!("unexpected offer {offer:?}"),
    }
}

#[track_caller]
fn offered(step: JoinStep) -> PendingOffer {
    match step {
        JoinStep::Offered(offer) => offer,
        JoinStep::Respond(bytes) => {
            panic!("expected an offer, got {:?}", LinkResponse::decode(&bytes))
        }
    }
}

#[track_caller]
fn refusal(step: JoinStep) -> LinkRefusal {
    match LinkResponse::decode(&respond(step)).unwrap() {
        LinkResponse::Refused(reason) => reason,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn offer_frame(proof_e: [u8; 32], sealed_bundle: Vec<u8>) -> Vec<u8> {
    LinkRequest::Offer {
        proof_e,
        sealed_bundle,
    }
    .encode()
    .unwrap()
}

/// N's refusal of `frame` from E.
#[track_caller]
fn refused(n: &mut Joiner, frame: &[u8], now: u64) -> LinkRefusal {
    refusal(n.on_request(existing(), frame, now))
}

/// E (holding `code`) says Hello to `joiner` and makes its Offer from the
/// challenge; returns E's Linker and the Offer frame.
fn hello_and_offer(joiner: &mut Joiner, code: &LinkCode, now: u64) -> (Linker, Vec<u8>) {
    let (mut linker, hello) = Linker::new(code, existing(), now).unwrap();
    let challenge = respond(joiner.on_request(existing(), &hello, now));
    let offer = linker.offer(&challenge, &bundle()).unwrap();
    (linker, offer)
}

// ---- the whole exchange ----

#[test]
fn both_sides_link_and_the_new_device_sees_the_account_first() {
    let code = code();
    let mut n = joiner();
    let (mut e, hello) = Linker::new(&code, existing(), NOW).unwrap();
    assert_eq!(e.new_device(), new_device());
    assert!(is_link_frame(&hello));

    let challenge = respond(n.on_request(existing(), &hello, NOW));
    assert!(matches!(
        LinkResponse::decode(&challenge),
        Ok(LinkResponse::Challenge { .. })
    ));
    let offer = e.offer(&challenge, &bundle()).unwrap();
    let pending = offered(n.on_request(existing(), &offer, NOW + 1));
    assert_eq!(n.status(NOW + 1), JoinStatus::Confirming);

    // What the user is shown before agreeing.
    assert_eq!(pending.display_name(), "Sam");
    assert_eq!(pending.from(), existing());
    assert_eq!(
        pending.kith_id(),
        KithId::new(account().public(), Nospam([0xde, 0xad, 0xbe, 0xef]))
    );
    assert_eq!(pending.bundle().account.public(), account().public());
    assert_eq!(pending.bundle().device_list.claimed_seq(), 2);

    let (accepted, handed_over) = n.accept(pending).unwrap();
    assert_eq!(handed_over.sync, b"history");
    assert_eq!(handed_over.nospam, Nospam([0xde, 0xad, 0xbe, 0xef]));
    let linked = e.finish(&accepted).unwrap();
    assert_eq!(linked.new_device(), new_device());

    // N is finished: everything, even a fresh and correct attempt, is refused.
    assert_eq!(n.status(NOW + 2), JoinStatus::Linked);
    let (_, hello) = Linker::new(&code, existing(), NOW + 2).unwrap();
    assert_eq!(refused(&mut n, &hello, NOW + 2), LinkRefusal::Finished);
    assert_eq!(refused(&mut n, b"garbage", NOW + 2), LinkRefusal::Finished);
}

// ---- refusals on the new device ----

#[test]
fn a_wrong_secret_is_refused_as_bad_proof_without_an_offer() {
    let mut n = joiner();
    let (e, offer) = hello_and_offer(&mut n, &code_with([0x77; 32]), NOW);
    let answer = respond(n.on_request(existing(), &offer, NOW));
    assert_eq!(
        LinkResponse::decode(&answer),
        Ok(LinkResponse::Refused(LinkRefusal::BadProof))
    );
    assert_eq!(
        e.finish(&answer),
        Err(LinkError::Refused(LinkRefusal::BadProof))
    );
    assert_eq!(n.failed_attempts(), 1);
    assert_eq!(n.status(NOW), JoinStatus::Listening);
}

#[test]
fn an_expired_code_is_refused_by_the_new_device() {
    let code = code();
    let mut n = joiner();
    let (_, hello) = Linker::new(&code, existing(), NOW).unwrap();
    let expires = code.expires();
    assert_eq!(refused(&mut n, &hello, expires), LinkRefusal::Expired);
    assert_eq!(n.status(expires), JoinStatus::Expired);

    // Expiring between the Hello and the Offer.
    let mut n = joiner();
    let (e, offer) = hello_and_offer(&mut n, &code, expires - 1);
    let answer = respond(n.on_request(existing(), &offer, expires));
    assert_eq!(
        e.finish(&answer),
        Err(LinkError::Refused(LinkRefusal::Expired))
    );
}

#[test]
fn the_existing_device_refuses_an_expired_code_before_sending_anything() {
    let code = code();
    assert!(matches!(
        Linker::new(&code, existing(), code.expires()),
        Err(LinkError::Code(LinkCodeError::Expired { .. }))
    ));
    // A code claiming too long a life (a badly set clock) is refused too.
    assert!(matches!(
        Linker::new(&code, existing(), NOW - 3_600),
        Err(LinkError::Code(LinkCodeError::ExpiryTooFar { .. }))
    ));
}

#[test]
fn an_offer_without_a_hello_is_refused() {
    let mut n = joiner();
    let sealed = bundle().seal(code().secret(), &new_device()).unwrap();
    let forged = offer_frame([0; 32], sealed);
    assert_eq!(refused(&mut n, &forged, NOW), LinkRefusal::NoChallenge);
    assert_eq!(n.failed_attempts(), 0);
}

#[test]
fn a_challenge_is_used_once() {
    let mut n = joiner();
    let (_, offer) = hello_and_offer(&mut n, &code(), NOW);
    let pending = offered(n.on_request(existing(), &offer, NOW));
    n.decline(pending);
    // The same Offer again, word for word.
    assert_eq!(refused(&mut n, &offer, NOW), LinkRefusal::NoChallenge);

    // A wrong proof uses the challenge up too.
    let mut n = joiner();
    let (_, wrong) = hello_and_offer(&mut n, &code_with([0x77; 32]), NOW);
    assert_eq!(refused(&mut n, &wrong, NOW), LinkRefusal::BadProof);
    assert_eq!(refused(&mut n, &wrong, NOW), LinkRefusal::NoChallenge);
}

#[test]
fn a_stale_challenge_is_refused() {
    let mut n = joiner();
    let (_, offer) = hello_and_offer(&mut n, &code(), NOW);
    assert_eq!(
        refused(&mut n, &offer, NOW + CHALLENGE_TTL_SECS),
        LinkRefusal::NoChallenge
    );
}

#[test]
fn a_newer_hello_replaces_the_peers_challenge() {
    let code = code();
    let mut n = joiner();
    let (_, first) = hello_and_offer(&mut n, &code, NOW);
    let (_, second) = hello_and_offer(&mut n, &code, NOW);
    assert_eq!(refused(&mut n, &first, NOW), LinkRefusal::BadProof);
    // That failure used up the (second) challenge.
    assert_eq!(refused(&mut n, &second, NOW), LinkRefusal::NoChallenge);
}

#[test]
fn a_proof_relayed_from_another_connection_is_refused() {
    // A stranger who holds no secret relays E's frames to N as itself.
    let mut n = joiner();
    let relay = stranger(0x30);
    let (mut e, hello) = Linker::new(&code(), existing(), NOW).unwrap();
    let challenge = respond(n.on_request(relay, &hello, NOW));
    let offer = e.offer(&challenge, &bundle()).unwrap();
    assert_eq!(
        refusal(n.on_request(relay, &offer, NOW)),
        LinkRefusal::BadProof
    );
    // And E's own offer cannot be used by a peer that has a challenge of
    // its own.
    let mut n = joiner();
    let (_, offer) = hello_and_offer(&mut n, &code(), NOW);
    let (_, hello) = Linker::new(&code(), relay, NOW).unwrap();
    respond(n.on_request(relay, &hello, NOW));
    assert_eq!(
        refusal(n.on_request(relay, &offer, NOW)),
        LinkRefusal::BadProof
    );
}

#[test]
fn a_bundle_for_another_device_is_refused() {
    let code = code();
    let other = stranger(0x40);

    // E will not seal a bundle whose list does not name the new device.
    let mut n = joiner();
    let (mut e, hello) = Linker::new(&code, existing(), NOW).unwrap();
    let challenge = respond(n.on_request(existing(), &hello, NOW));
    assert_eq!(
        e.offer(&challenge, &bundle_for(other, Vec::new())),
        Err(LinkError::Bundle(BundleError::NewDeviceNotListed))
    );

    // N refuses one sealed for another device, even with a good proof.
    let (_, hello) = Linker::new(&code, existing(), NOW).unwrap();
    let nonce_e: [u8; 32] = hello[3..].try_into().unwrap();
    let Ok(LinkResponse::Challenge { nonce_n }) =
        LinkResponse::decode(&respond(n.on_request(existing(), &hello, NOW)))
    else {
        panic!("no challenge");
    };
    let proof_e = link_proof(
        code.secret(),
        LinkRole::Existing,
        &existing(),
        &new_device(),
        &nonce_e,
        &nonce_n,
    );
    let sealed_bundle = bundle_for(other, Vec::new())
        .seal(code.secret(), &other)
        .unwrap();
    let forged = offer_frame(proof_e, sealed_bundle);
    assert_eq!(refused(&mut n, &forged, NOW), LinkRefusal::Unreadable);
    assert_eq!(n.failed_attempts(), 1);
}

#[test]
fn the_new_device_gives_up_after_the_attempts_limit() {
    let wrong = code_with([0x77; 32]);
    let mut n = joiner();
    for i in 0..MAX_FAILED_ATTEMPTS {
        // Many peers do not get more tries than one.
        let peer = stranger(0x50 + i as u8);
        let (mut e, hello) = Linker::new(&wrong, peer, NOW).unwrap();
        let challenge = respond(n.on_request(peer, &hello, NOW));
        let offer = e.offer(&challenge, &bundle()).unwrap();
        assert_eq!(
            refusal(n.on_request(peer, &offer, NOW)),
            LinkRefusal::BadProof
        );
    }
    assert_eq!(n.status(NOW), JoinStatus::GaveUp);
    assert_eq!(n.failed_attempts(), MAX_FAILED_ATTEMPTS);
    // Now even the right code is refused.
    let (_, hello) = Linker::new(&code(), existing(), NOW).unwrap();
    assert_eq!(refused(&mut n, &hello, NOW), LinkRefusal::Finished);
}

#[test]
fn challenges_are_bounded_and_stale_ones_make_room() {
    let mut n = joiner();
    let code = code();
    for i in 0..MAX_CHALLENGES {
        let peer = stranger(0x60 + i as u8);
        let (_, hello) = Linker::new(&code, peer, NOW).unwrap();
        respond(n.on_request(peer, &hello, NOW));
    }
    let (_, hello) = Linker::new(&code, existing(), NOW).unwrap();
    assert_eq!(refused(&mut n, &hello, NOW), LinkRefusal::Busy);
    // A peer already holding one can renew it.
    let peer = stranger(0x60);
    let (_, again) = Linker::new(&code, peer, NOW).unwrap();
    assert!(matches!(
        LinkResponse::decode(&respond(n.on_request(peer, &again, NOW))),
        Ok(LinkResponse::Challenge { .. })
    ));
    // Once the others are stale, E gets one and links.
    let later = NOW + CHALLENGE_TTL_SECS;
    let (mut e, hello) = Linker::new(&code, existing(), later).unwrap();
    let challenge = respond(n.on_request(existing(), &hello, later));
    let offer = e.offer(&challenge, &bundle()).unwrap();
    let pending = offered(n.on_request(existing(), &offer, later));
    let (accepted, _) = n.accept(pending).unwrap();
    assert_eq!(e.finish(&accepted).unwrap().new_device(), new_device());
}

#[test]
fn a_waiting_offer_makes_the_new_device_busy() {
    let mut n = joiner();
    let (_, offer) = hello_and_offer(&mut n, &code(), NOW);
    let _pending = offered(n.on_request(existing(), &offer, NOW));
    let peer = stranger(0x31);
    let (_, hello) = Linker::new(&code(), peer, NOW).unwrap();
    assert_eq!(refusal(n.on_request(peer, &hello, NOW)), LinkRefusal::Busy);
}

#[test]
fn declining_refuses_e_and_counts_as_a_failed_attempt() {
    let code = code();
    let mut n = joiner();
    let (e, offer) = hello_and_offer(&mut n, &code, NOW);
    let pending = offered(n.on_request(existing(), &offer, NOW));
    let answer = n.decline(pending);
    assert_eq!(
        e.finish(&answer),
        Err(LinkError::Refused(LinkRefusal::Declined))
    );
    assert_eq!(n.failed_attempts(), 1);
    assert_eq!(n.status(NOW), JoinStatus::Listening);

    // The right account can still link afterwards.
    let (e, offer) = hello_and_offer(&mut n, &code, NOW + 1);
    let pending = offered(n.on_request(existing(), &offer, NOW + 1));
    let (accepted, _) = n.accept(pending).unwrap();
    assert_eq!(e.finish(&accepted).unwrap().new_device(), new_device());
}

#[test]
fn only_the_waiting_offer_can_be_accepted() {
    let mut a = joiner();
    let mut b = joiner();
    let (_, offer) = hello_and_offer(&mut a, &code(), NOW);
    let pending = offered(a.on_request(existing(), &offer, NOW));
    assert_eq!(b.accept(pending).err(), Some(JoinError::NotPending));
    assert_eq!(b.status(NOW), JoinStatus::Listening);
}

// ---- the existing device checks the answer ----

#[test]
fn a_forged_acceptance_is_refused_as_bad_proof() {
    let code = code();
    for forge in 0..4 {
        let mut n = joiner();
        let (e, offer) = hello_and_offer(&mut n, &code, NOW);
        let pending = offered(n.on_request(existing(), &offer, NOW));
        let (accepted, _) = n.accept(pending).unwrap();
        let LinkResponse::Accepted { mut proof_n } = LinkResponse::decode(&accepted).unwrap()
        else {
            panic!("not an acceptance");
        };
        match forge {
            0 => proof_n[0] ^= 1,
            1 => proof_n[31] ^= 0x80,
            2 => proof_n = [0; 32],
            // E's own proof reflected back as N's.
            _ => {
                let LinkRequest::Offer { proof_e, .. } = LinkRequest::decode(&offer).unwrap()
                else {
                    panic!("not an offer");
                };
                proof_n = proof_e;
            }
        }
        let forged = LinkResponse::Accepted { proof_n }.encode();
        assert_eq!(e.finish(&forged), Err(LinkError::BadProof), "forge {forge}");
    }
}

#[test]
fn an_acceptance_from_another_exchange_is_refused() {
    let code = code();
    let mut n = joiner();
    let (e1, offer) = hello_and_offer(&mut n, &code, NOW);
    let pending = offered(n.on_request(existing(), &offer, NOW));
    let (accepted, _) = n.accept(pending).unwrap();
    assert_eq!(e1.finish(&accepted).unwrap().new_device(), new_device());

    let mut n = joiner();
    let (e2, _) = hello_and_offer(&mut n, &code, NOW);
    assert_eq!(e2.finish(&accepted), Err(LinkError::BadProof));
}

#[test]
fn the_linker_keeps_its_order() {
    let code = code();
    let mut n = joiner();
    let (mut e, hello) = Linker::new(&code, existing(), NOW).unwrap();
    let challenge = respond(n.on_request(existing(), &hello, NOW));
    e.offer(&challenge, &bundle()).unwrap();
    assert_eq!(e.offer(&challenge, &bundle()), Err(LinkError::OutOfOrder));

    // finish before offer.
    let (e, _) = Linker::new(&code, existing(), NOW).unwrap();
    let accepted = LinkResponse::Accepted { proof_n: [0; 32] }.encode();
    assert_eq!(e.finish(&accepted), Err(LinkError::OutOfOrder));

    // An acceptance in answer to a Hello, a challenge in answer to an Offer.
    let (mut e, _) = Linker::new(&code, existing(), NOW).unwrap();
    assert_eq!(
        e.offer(&accepted, &bundle()),
        Err(LinkError::UnexpectedResponse)
    );
    assert_eq!(e.offer(&challenge, &bundle()), Err(LinkError::OutOfOrder));
    let mut n = joiner();
    let (e, _) = hello_and_offer(&mut n, &code, NOW);
    assert_eq!(e.finish(&challenge), Err(LinkError::UnexpectedResponse));

    // A refusal of the Hello.
    let (mut e, _) = Linker::new(&code, existing(), NOW).unwrap();
    let busy = LinkResponse::Refused(LinkRefusal::Busy).encode();
    assert_eq!(
        e.offer(&busy, &bundle()),
        Err(LinkError::Refused(LinkRefusal::Busy))
    );
}

#[test]
fn history_is_capped_so_the_offer_fits_one_request() {
    let code = code();
    let mut n = joiner();
    let (mut e, hello) = Linker::new(&code, existing(), NOW).unwrap();
    let challenge = respond(n.on_request(existing(), &hello, NOW));
    let big = bundle_for(new_device(), vec![7; MAX_LINK_SYNC_BYTES]);
    let offer = e.offer(&challenge, &big).unwrap();
    assert!(offer.len() <= MAX_LINK_REQUEST_BYTES);
    let pending = offered(n.on_request(existing(), &offer, NOW));
    assert_eq!(pending.bundle().sync.len(), MAX_LINK_SYNC_BYTES);

    let (mut e, hello) = Linker::new(&code, existing(), NOW).unwrap();
    let mut n = joiner();
    let challenge = respond(n.on_request(existing(), &hello, NOW));
    let too_big = bundle_for(new_device(), vec![7; MAX_OFFER_BUNDLE_BYTES]);
    assert!(matches!(
        e.offer(&challenge, &too_big),
        Err(LinkError::BundleTooLarge {
            max: MAX_OFFER_BUNDLE_BYTES,
            ..
        })
    ));
}

#[test]
fn debug_output_never_shows_the_secret() {
    let code = code();
    let (e, _) = Linker::new(&code, existing(), NOW).unwrap();
    let n = joiner();
    let hex: String = SECRET.iter().map(|b| format!("{b:02x}")).collect();
    for shown in [format!("{e:?}"), format!("{n:?}")] {
        assert!(!shown.contains(&hex), "{shown}");
        assert!(!shown.contains(&format!("{SECRET:?}")), "{shown}");
    }
}

// ---- frames ----

/// One sample of every frame, with its bytes written out by hand: a change
/// to any of these is a change of the link protocol.
#[test]
fn frames_have_their_documented_layout() {
    let hello = LinkRequest::Hello { nonce_e: [7; 32] };
    let mut want = vec![0x4c, 0x01, 0x01];
    want.extend_from_slice(&[7; 32]);
    assert_eq!(hello.encode().unwrap(), want);

    let offer = LinkRequest::Offer {
        proof_e: [9; 32],
        sealed_bundle: vec![1, 2, 3],
    };
    let mut want = vec![0x4c, 0x01, 0x02];
    want.extend_from_slice(&[9; 32]);
    want.extend_from_slice(&[0, 0, 0, 3, 1, 2, 3]);
    assert_eq!(offer.encode().unwrap(), want);

    let challenge = LinkResponse::Challenge { nonce_n: [5; 32] };
    let mut want = vec![0x4c, 0x01, 0x81];
    want.extend_from_slice(&[5; 32]);
    assert_eq!(challenge.encode(), want);

    let accepted = LinkResponse::Accepted { proof_n: [6; 32] };
    let mut want = vec![0x4c, 0x01, 0x82];
    want.extend_from_slice(&[6; 32]);
    assert_eq!(accepted.encode(), want);

    let reasons = [
        (LinkRefusal::Expired, 1),
        (LinkRefusal::BadProof, 2),
        (LinkRefusal::Unreadable, 3),
        (LinkRefusal::NoChallenge, 4),
        (LinkRefusal::Busy, 5),
        (LinkRefusal::Declined, 6),
        (LinkRefusal::Finished, 7),
    ];
    for (reason, byte) in reasons {
        let bytes = LinkResponse::Refused(reason).encode();
        assert_eq!(bytes, [0x4c, 0x01, 0x83, byte]);
        assert_eq!(
            LinkResponse::decode(&bytes),
            Ok(LinkResponse::Refused(reason))
        );
    }
    for byte in [0, 8, 0xff] {
        assert_eq!(
            LinkResponse::decode(&[0x4c, 0x01, 0x83, byte]),
            Ok(LinkResponse::Refused(LinkRefusal::Unknown(byte)))
        );
    }

    for request in [hello, offer] {
        assert_eq!(LinkRequest::decode(&request.encode().unwrap()), Ok(request));
    }
    for response in [challenge, accepted] {
        assert_eq!(LinkResponse::decode(&response.encode()), Ok(response));
    }
}

fn sample_requests() -> Vec<Vec<u8>> {
    vec![
        LinkRequest::Hello { nonce_e: [7; 32] }.encode().unwrap(),
        offer_frame([9; 32], vec![1, 2, 3]),
    ]
}

fn sample_responses() -> Vec<Vec<u8>> {
    vec![
        LinkResponse::Challenge { nonce_n: [5; 32] }.encode(),
        LinkResponse::Accepted { proof_n: [6; 32] }.encode(),
        LinkResponse::Refused(LinkRefusal::Busy).encode(),
    ]
}

/// Every cut of `frame` is `Empty` or `Truncated`, and a byte more is
/// `TrailingBytes`.
#[track_caller]
fn check_cuts<T: std::fmt::Debug + PartialEq>(
    frame: &[u8],
    decode: fn(&[u8]) -> Result<T, LinkWireError>,
) {
    for cut in 0..frame.len() {
        let want = match cut {
            0 => LinkWireError::Empty,
            _ => LinkWireError::Truncated,
        };
        assert_eq!(decode(&frame[..cut]), Err(want), "cut {cut}");
    }
    let mut padded = frame.to_vec();
    padded.push(0);
    assert_eq!(
        decode(&padded),
        Err(LinkWireError::TrailingBytes { count: 1 })
    );
}

#[test]
fn truncated_and_padded_frames_are_refused() {
    for frame in sample_requests() {
        check_cuts(&frame, LinkRequest::decode);
    }
    for frame in sample_responses() {
        check_cuts(&frame, LinkResponse::decode);
    }
    // An Offer whose length prefix claims more than it carries.
    let mut long = sample_requests()[1].clone();
    long[35..39].copy_from_slice(&u32::MAX.to_be_bytes());
    assert_eq!(LinkRequest::decode(&long), Err(LinkWireError::Truncated));
}

#[test]
fn foreign_frames_are_refused_with_their_reason() {
    // kith-core's frames start with their version byte 0x01.
    assert!(!is_link_frame(&[0x01, 0x4c]));
    assert!(!is_link_frame(&[]));
    assert_eq!(
        LinkRequest::decode(&[0x01, 0x01, 0x01]),
        Err(LinkWireError::NotLinkFrame { found: 0x01 })
    );
    assert_eq!(
        LinkResponse::decode(&[LINK_FRAME, 0x02, 0x81]),
        Err(LinkWireError::UnknownVersion { found: 2 })
    );
    assert_eq!(
        LinkRequest::decode(&[LINK_FRAME, 0x01, 0x03]),
        Err(LinkWireError::UnknownKind { found: 3 })
    );
    // No response reads as a request, and no request as a response.
    for frame in sample_responses() {
        assert!(is_link_frame(&frame));
        assert!(matches!(
            LinkRequest::decode(&frame),
            Err(LinkWireError::UnknownKind { .. })
        ));
    }
    for frame in sample_requests() {
        assert!(is_link_frame(&frame));
        assert!(matches!(
            LinkResponse::decode(&frame),
            Err(LinkWireError::UnknownKind { .. })
        ));
    }
}

#[test]
fn oversized_frames_are_refused_unread() {
    let huge = vec![LINK_FRAME; MAX_LINK_REQUEST_BYTES + 1];
    assert_eq!(
        LinkRequest::decode(&huge),
        Err(LinkWireError::TooLarge {
            found: MAX_LINK_REQUEST_BYTES + 1,
            max: MAX_LINK_REQUEST_BYTES
        })
    );
    assert_eq!(
        LinkResponse::decode(&huge[..MAX_LINK_RESPONSE_BYTES + 1]),
        Err(LinkWireError::TooLarge {
            found: MAX_LINK_RESPONSE_BYTES + 1,
            max: MAX_LINK_RESPONSE_BYTES
        })
    );
    let offer = LinkRequest::Offer {
        proof_e: [0; 32],
        sealed_bundle: vec![0; MAX_OFFER_BUNDLE_BYTES + 1],
    };
    assert!(matches!(
        offer.encode(),
        Err(LinkWireError::TooLarge {
            max: MAX_LINK_REQUEST_BYTES,
            ..
        })
    ));
    let fits = LinkRequest::Offer {
        proof_e: [0; 32],
        sealed_bundle: vec![0; MAX_OFFER_BUNDLE_BYTES],
    }
    .encode()
    .unwrap();
    assert_eq!(fits.len(), MAX_LINK_REQUEST_BYTES);
    assert!(LinkRequest::decode(&fits).is_ok());
}

#[test]
fn garbage_gets_typed_errors_on_both_sides() {
    let mut n = joiner();
    for garbage in [&b""[..], b"\x01hello", b"L", b"\x4c\x01\x02\x00"] {
        assert_eq!(refused(&mut n, garbage, NOW), LinkRefusal::Unreadable);
    }
    assert_eq!(n.failed_attempts(), 0);
    let (mut e, _) = Linker::new(&code(), existing(), NOW).unwrap();
    assert_eq!(
        e.offer(b"", &bundle()),
        Err(LinkError::Wire(LinkWireError::Empty))
    );
}

/// A strategy for frames that start like link frames, so the decoders get
/// past the header.
fn framed() -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![
            Just(0x01u8),
            Just(0x02),
            Just(0x81),
            Just(0x82),
            Just(0x83),
            any::<u8>()
        ],
        proptest::collection::vec(any::<u8>(), 0..80),
    )
        .prop_map(|(kind, rest)| {
            let mut out = vec![LINK_FRAME, 0x01, kind];
            out.extend_from_slice(&rest);
            out
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = LinkRequest::decode(&bytes);
        let _ = LinkResponse::decode(&bytes);
    }

    #[test]
    fn decoders_never_panic_past_the_header(bytes in framed()) {
        if let Ok(request) = LinkRequest::decode(&bytes) {
            prop_assert_eq!(request.encode().unwrap(), bytes.clone());
        }
        if let Ok(response) = LinkResponse::decode(&bytes) {
            // Unknown refusal bytes read back as themselves.
            prop_assert_eq!(response.encode(), bytes);
        }
    }

    #[test]
    fn random_requests_never_yield_an_offer(
        hello in any::<bool>(),
        bytes in prop_oneof![framed(), proptest::collection::vec(any::<u8>(), 0..200)],
    ) {
        let mut n = joiner();
        if hello {
            let (_, hello) = Linker::new(&code(), existing(), NOW).unwrap();
            respond(n.on_request(existing(), &hello, NOW));
        }
        let step = n.on_request(existing(), &bytes, NOW);
        prop_assert!(matches!(step, JoinStep::Respond(_)));
    }

    #[test]
    fn random_responses_never_link(bytes in prop_oneof![framed(), proptest::collection::vec(any::<u8>(), 0..200)]) {
        let code = code();
        let (mut e, _) = Linker::new(&code, existing(), NOW).unwrap();
        let _ = e.offer(&bytes, &bundle());
        let mut n = joiner();
        let (e, _) = hello_and_offer(&mut n, &code, NOW);
        prop_assert!(e.finish(&bytes).is_err());
    }
}
