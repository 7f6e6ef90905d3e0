//! Malformed and truncated requests from a stranger, straight to a device
//! over the real network: each gets no answer or a refusal, nothing
//! reaches the user, and the device goes on chatting with its friends.

mod common;

use std::time::Duration;

use common::{Device, Events, befriend, memory_node, start_nodes, wait_for};
use futures::StreamExt;
use kith_core::engine::Event;
use kith_core::frame::{
    self, Ack, Item, MAX_ITEMS, SYNC_TAG, SyncRefusal, SyncRequest, SyncResponse,
};
use kith_net::Role;

/// A small deterministic generator, so a failure can be replayed.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// What Bob may answer to a request: nothing, or a refusal of each item.
#[derive(Debug)]
enum Answer {
    None,
    Refused,
}

fn check_answer(sent: &[u8], answer: Result<Vec<u8>, kith_net::NetError>) -> Answer {
    let Ok(bytes) = answer else {
        return Answer::None;
    };
    if frame::is_sync_frame(sent) {
        let response = frame::decode_sync_response(&bytes).expect("a sync answer decodes");
        assert!(
            matches!(
                response,
                SyncResponse::Refused(SyncRefusal::Unreadable | SyncRefusal::NotListed)
                    | SyncResponse::NotListed(_)
            ),
            "a stranger's sync request was taken: {response:?}"
        );
        return Answer::Refused;
    }
    let items = frame::decode_request(sent).expect("only a frame gets an answer");
    let acks = frame::decode_response(&bytes, items.len()).expect("an answer decodes");
    assert!(
        acks.iter().all(|a| matches!(a, Ack::Refused(_))),
        "a stranger's junk was kept: {acks:?}"
    );
    Answer::Refused
}

fn junk() -> Vec<Vec<u8>> {
    let mut noise = Noise(0x5eed_1234_abcd_ef01);
    let mut junk = vec![
        Vec::new(),
        vec![frame::FRAME_VERSION],
        vec![frame::FRAME_VERSION + 1, 1, 0, 0],
        vec![SYNC_TAG],
        vec![SYNC_TAG, frame::FRAME_VERSION, 0xff, 0xff, 0xff, 0xff, 0x0f],
    ];
    // Noise of every size up to 4 KiB, and large.
    for len in [1, 2, 3, 7, 64, 511, 4096, 300_000] {
        junk.push(noise.bytes(len));
    }
    // Frames whose items are noise: an Olm message from an unknown
    // device, sealed envelopes that do not open, the most items allowed,
    // and one more than that.
    junk.push(frame::encode_request(&[Item::Olm(noise.bytes(200))]));
    junk.push(frame::encode_request(&[Item::Sealed(noise.bytes(200))]));
    let many: Vec<Item> = (0..MAX_ITEMS)
        .map(|_| Item::Sealed(noise.bytes(40)))
        .collect();
    junk.push(frame::encode_request(&many));
    let too_many: Vec<Item> = (0..=MAX_ITEMS).map(|_| Item::Sealed(vec![1])).collect();
    junk.push(frame::encode_request(&too_many));
    // Good frames cut short, and with a byte of trailing junk.
    let good = frame::encode_request(&[Item::Sealed(noise.bytes(300))]);
    for cut in [1, 2, good.len() / 2, good.len() - 1] {
        junk.push(good[..cut].to_vec());
    }
    let mut trailing = good.clone();
    trailing.push(0);
    junk.push(trailing);
    let sync = frame::encode_sync_request(&SyncRequest {
        list: noise.bytes(100),
        held: noise.bytes(20),
        batch: noise.bytes(500),
    });
    junk.push(sync[..sync.len() / 2].to_vec());
    junk.push(sync);
    junk
}

async fn no_problem_shown(events: &mut Events) {
    while let Ok(Some(event)) =
        tokio::time::timeout(Duration::from_millis(300), events.next()).await
    {
        assert!(
            !matches!(event, Event::Problem(_) | Event::Request(_)),
            "junk reached the user: {event:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_sending_junk_is_refused_and_the_chat_goes_on() {
    let (_nodes, bootstrap) = start_nodes(3).await;
    let (alice, mut alice_events) = Device::new("alice").start(&bootstrap);
    let (bob, mut bob_events) = Device::new("bob").start(&bootstrap);
    befriend(&alice, &mut alice_events, &bob).await;
    // What making friends told Bob is not of interest here.
    while let Ok(Some(_)) =
        tokio::time::timeout(Duration::from_millis(300), bob_events.next()).await
    {}

    let stranger = memory_node(Role::Client, &bootstrap);

    let status = bob.status().await.unwrap();
    let (mut unanswered, mut refused) = (0, 0);
    for sent in junk() {
        let answer = stranger
            .request(status.peer_id, status.listen.clone(), sent.clone())
            .await;
        match check_answer(&sent, answer) {
            Answer::None => unanswered += 1,
            Answer::Refused => refused += 1,
        }
    }
    println!("{{\"unanswered\":{unanswered},\"refused\":{refused}}}");
    assert!(refused >= 4, "well-formed junk frames get refusals");
    assert!(unanswered >= 10, "malformed frames get no answer");
    no_problem_shown(&mut bob_events).await;

    // Bob is none the worse: Alice's message arrives and is answered.
    let bob_account = bob.account();
    let alice_account = alice.account();
    alice
        .send(bob_account, "still there?".into())
        .await
        .unwrap();
    let got = wait_for(&mut bob_events, |e| match e {
        Event::Message { friend, message } if *friend == alice_account => {
            Some(message.body.clone())
        }
        _ => None,
    })
    .await;
    assert_eq!(got, "still there?");
    bob.send(alice_account, "yes".into()).await.unwrap();
    wait_for(&mut alice_events, |e| match e {
        Event::Message { friend, message } if *friend == bob_account && message.body == "yes" => {
            Some(())
        }
        _ => None,
    })
    .await;
}
