//! The merge is deterministic: replicas that hold the same ops show the same
//! state, whatever order the ops came in, however often, and however they
//! were exchanged.

use kith_proto::Nospam;
use kith_proto::wire::{ChatMessage, Lamport, MessageId, Timestamp};
use kith_sync::{
    Applied, ApplyError, Decision, DeviceId, Direction, FIRST_UNKNOWN_KIND, Limits, Op, OpId,
    OpKind, Position, Replica, Stamp, VersionVector, decode_batch, encode_batch,
};
use proptest::prelude::*;

// ------------------------------------------------------------ helpers

fn device(n: u8) -> DeviceId {
    DeviceId([n; 32])
}

fn replica(n: u8) -> Replica {
    Replica::new(device(n), Limits::default())
}

/// A small deterministic generator for shuffles (splitmix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }
}

/// Applies `op`, which must be taken (new, waiting or a duplicate).
fn take(r: &mut Replica, op: Op) -> Applied {
    let id = op.id;
    r.apply(op).unwrap_or_else(|e| panic!("{id} refused: {e}"))
}

/// Sends `to` what it lacks from `from`, through the batch encoding, at
/// most `max_ops` ops and `max_bytes` bytes at a time, until nothing is
/// missing. Every op sent must be new to `to`: nothing waits, nothing
/// repeats.
fn sync(from: &Replica, to: &mut Replica, max_ops: usize, max_bytes: usize) {
    for _ in 0..10_000 {
        let batch = from.missing_for(&to.version_vector(), max_ops, max_bytes);
        if batch.is_empty() {
            return;
        }
        let bytes = encode_batch(&batch).unwrap();
        assert!(bytes.len() <= max_bytes.max(1));
        let batch = decode_batch(&bytes).unwrap();
        let sent = batch.len();
        let outcome = to.apply_all(batch);
        assert!(outcome.refused.is_empty(), "{:?}", outcome.refused);
        assert_eq!(outcome.buffered, 0);
        assert_eq!(outcome.new + outcome.duplicates, sent);
    }
    panic!("sync did not finish");
}

fn message(id: u8, lamport: u64, sent_at: u64, body: &str) -> ChatMessage {
    ChatMessage {
        id: MessageId([id; 16]),
        sent_at: Timestamp(sent_at),
        lamport: Lamport(lamport),
        body: body.into(),
    }
}

const BOB: [u8; 32] = [0xb0; 32];

/// Every permutation of `ops` applied to fresh replicas gives one state,
/// which is returned.
fn same_in_every_order(ops: &[Op]) -> Replica {
    fn permutations(ops: &[Op]) -> Vec<Vec<Op>> {
        if ops.len() <= 1 {
            return vec![ops.to_vec()];
        }
        let mut out = Vec::new();
        for i in 0..ops.len() {
            let mut rest = ops.to_vec();
            let first = rest.remove(i);
            for mut tail in permutations(&rest) {
                tail.insert(0, first.clone());
                out.push(tail);
            }
        }
        out
    }
    let mut first: Option<Replica> = None;
    for order in permutations(ops) {
        let mut r = replica(0xee);
        for op in order {
            take(&mut r, op);
        }
        assert_eq!(r.pending_len(), 0);
        match &first {
            None => first = Some(r),
            Some(f) => {
                assert_eq!(f.state(), r.state());
                assert_eq!(f.version_vector(), r.version_vector());
            }
        }
    }
    first.unwrap()
}

// ------------------------------------------------------------ properties

/// Kinds over a small domain, so that ops collide: three friends, six
/// message IDs (the same ID recorded with different contents too), a few
/// times.
fn small_kind() -> impl Strategy<Value = OpKind> {
    let friend = || (0u8..3).prop_map(|f| [f; 32]);
    let id = || (0u8..6).prop_map(|i| MessageId([i; 16]));
    let body =
        || prop::sample::select(vec!["hi", "hello", "on my way", "ok"]).prop_map(String::from);
    let name = || prop::sample::select(vec!["Ann", "Bea", "Cy"]).prop_map(String::from);
    let chat = move || {
        (id(), 0u64..4, 0u64..4, body()).prop_map(|(id, lamport, sent_at, body)| ChatMessage {
            id,
            sent_at: Timestamp(sent_at),
            lamport: Lamport(lamport),
            body,
        })
    };
    prop_oneof![
        3 => (friend(), chat()).prop_map(|(friend, message)| OpKind::MessageSent { friend, message }),
        3 => (friend(), chat()).prop_map(|(friend, message)| OpKind::MessageReceived { friend, message }),
        2 => (friend(), id(), body(), 0u64..4).prop_map(|(friend, target, body, at)| OpKind::Edited {
            friend,
            target,
            body,
            at: Timestamp(at),
        }),
        1 => (friend(), id(), 0u64..4).prop_map(|(friend, target, at)| OpKind::Deleted {
            friend,
            target,
            at: Timestamp(at),
        }),
        2 => (friend(), name()).prop_map(|(friend, name)| OpKind::ContactAdded {
            friend,
            id_bytes: vec![1, friend[0]],
            card: name.as_bytes().to_vec(),
            name,
        }),
        1 => friend().prop_map(|friend| OpKind::ContactRemoved { friend }),
        1 => (friend(), prop_oneof![Just(Decision::Accepted), Just(Decision::Declined), Just(Decision::Blocked)])
            .prop_map(|(from, decision)| OpKind::RequestDecided { from, decision }),
        2 => (friend(), 0u64..4, 0u64..4, id()).prop_map(|(friend, l, s, id)| OpKind::ReadUpTo {
            friend,
            upto: Position { lamport: Lamport(l), sent_at: Timestamp(s), id },
        }),
        1 => name().prop_map(OpKind::ProfileName),
        1 => (0u8..3).prop_map(|n| OpKind::Nospam(Nospam([n; 4]))),
        1 => (FIRST_UNKNOWN_KIND..FIRST_UNKNOWN_KIND + 2, prop::collection::vec(any::<u8>(), 0..4))
            .prop_map(|(kind, body)| OpKind::Unknown { kind, body }),
    ]
}

#[derive(Clone, Debug)]
enum Step {
    /// Device `actor` records an op, its wall clock reading `millis`.
    Record { kind: OpKind, millis: u64 },
    /// Device `actor` takes what it lacks from device `from`, at most
    /// `max_ops` at a time, and so sees their ops (its Lamport clock moves
    /// past them).
    See { from: usize, max_ops: usize },
}

fn script() -> impl Strategy<Value = (usize, Vec<(usize, Step)>, u64)> {
    let step = prop_oneof![
        4 => (small_kind(), 0u64..3).prop_map(|(kind, millis)| Step::Record { kind, millis }),
        1 => (0usize..4, 1usize..5).prop_map(|(from, max_ops)| Step::See { from, max_ops }),
    ];
    (
        2usize..=4,
        prop::collection::vec((0usize..4, step), 1..64),
        any::<u64>(),
    )
}

/// Runs the script on simulated devices and returns every op they made.
fn simulate(devices: usize, steps: &[(usize, Step)]) -> Vec<Op> {
    let mut sims: Vec<Replica> = (0..devices).map(|d| replica(d as u8 + 1)).collect();
    for (actor, step) in steps {
        let actor = actor % devices;
        match step {
            Step::Record { kind, millis } => {
                let sim = &mut sims[actor];
                if let OpKind::Unknown { .. } = kind {
                    // A newer build's op: made by hand as record() would.
                    let local = sim.local();
                    let op = Op {
                        id: OpId {
                            device: local,
                            counter: sim.version_vector().get(&local) + 1,
                        },
                        stamp: Stamp {
                            lamport: sim.clock() + 1,
                            millis: *millis,
                        },
                        kind: kind.clone(),
                    };
                    assert_eq!(take(sim, op), Applied::New { released: 0 });
                } else {
                    sim.record(kind.clone(), *millis).unwrap();
                }
            }
            Step::See { from, max_ops } => {
                let from = from % devices;
                if from != actor {
                    let batch =
                        sims[from].missing_for(&sims[actor].version_vector(), *max_ops, usize::MAX);
                    let outcome = sims[actor].apply_all(batch);
                    assert!(outcome.refused.is_empty() && outcome.buffered == 0);
                }
            }
        }
    }
    sims.iter()
        .flat_map(|s| {
            s.ops()
                .filter(|op| op.id.device == s.local())
                .cloned()
                .collect::<Vec<_>>()
        })
        .collect()
}

fn expected_vv(ops: &[Op]) -> Vec<(DeviceId, u64)> {
    let mut counts = std::collections::BTreeMap::new();
    for op in ops {
        *counts.entry(op.id.device).or_insert(0u64) += 1;
    }
    counts.into_iter().collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 192, ..ProptestConfig::default() })]

    /// The property: ops from 2–4 devices, delivered to two
    /// replicas in different orders, with duplicates, interleaved with
    /// bounded exchanges between them, leave both with the same state and
    /// version vector — the same as applying every op in log order.
    #[test]
    fn replicas_converge_whatever_the_delivery((devices, steps, seed) in script()) {
        let all = simulate(devices, &steps);
        let mut rng = Rng(seed);

        let mut reference = replica(0xf0);
        for op in &all {
            prop_assert_eq!(take(&mut reference, op.clone()), Applied::New { released: 0 });
        }

        let mut order_x = all.clone();
        rng.shuffle(&mut order_x);
        let mut order_y = all.clone();
        for _ in 0..all.len().div_ceil(4) {
            let dup = all[rng.below(all.len())].clone();
            order_y.push(dup);
        }
        rng.shuffle(&mut order_y);

        let mut x = replica(0xf1);
        let mut y = replica(0xf2);
        let rounds = order_x.len().max(order_y.len());
        for i in 0..rounds {
            if let Some(op) = order_x.get(i) {
                take(&mut x, op.clone());
            }
            if let Some(op) = order_y.get(i) {
                take(&mut y, op.clone());
            }
            if rng.chance(5) {
                // A bounded exchange: what x lacks from y, whatever fits.
                let batch = y.missing_for(&x.version_vector(), 1 + rng.below(4), 200 + rng.below(800));
                let batch = decode_batch(&encode_batch(&batch).unwrap()).unwrap();
                let outcome = x.apply_all(batch);
                prop_assert!(outcome.refused.is_empty());
            }
            if rng.chance(7) {
                // And the other way, with a duplicate thrown in.
                let mut batch = x.missing_for(&y.version_vector(), 1 + rng.below(4), usize::MAX);
                if let Some(first) = batch.first().cloned() {
                    batch.push(first);
                }
                let outcome = y.apply_all(batch);
                prop_assert!(outcome.refused.is_empty());
            }
        }

        for r in [&x, &y] {
            prop_assert_eq!(r.pending_len(), 0);
            prop_assert_eq!(r.len(), all.len());
            prop_assert_eq!(r.state(), reference.state());
            prop_assert_eq!(r.version_vector(), reference.version_vector());
        }
        let vv: Vec<(DeviceId, u64)> = reference.version_vector().iter().map(|(d, c)| (*d, c)).collect();
        prop_assert_eq!(vv, expected_vv(&all));
        prop_assert!(x.missing_for(&y.version_vector(), usize::MAX, usize::MAX).is_empty());
        prop_assert!(y.missing_for(&x.version_vector(), usize::MAX, usize::MAX).is_empty());
    }

    /// Applying any subset, then the rest (in another order), equals
    /// applying all.
    #[test]
    fn subset_then_rest_equals_all((devices, steps, seed) in script()) {
        let all = simulate(devices, &steps);
        let mut rng = Rng(seed);
        let mut reference = replica(0xf0);
        reference.apply_all(all.clone());

        let mut subset: Vec<Op> = all.iter().filter(|_| rng.chance(2)).cloned().collect();
        rng.shuffle(&mut subset);
        let mut r = replica(0xf3);
        for op in subset {
            take(&mut r, op);
        }
        let mut rest = all.clone();
        rng.shuffle(&mut rest);
        for op in rest {
            take(&mut r, op);
        }
        prop_assert_eq!(r.pending_len(), 0);
        prop_assert_eq!(r.state(), reference.state());
        prop_assert_eq!(r.version_vector(), reference.version_vector());
    }

    /// Two replicas holding different parts of the log — with gaps, so
    /// some ops wait — reach the whole log by `missing_for` exchanges
    /// alone, in small batches.
    #[test]
    fn exchanges_alone_converge((devices, steps, seed) in script()) {
        let all = simulate(devices, &steps);
        let mut rng = Rng(seed);
        let mut reference = replica(0xf0);
        reference.apply_all(all.clone());

        let mut x = replica(0xf1);
        let mut y = replica(0xf2);
        for op in &all {
            match rng.below(3) {
                0 => { take(&mut x, op.clone()); }
                1 => { take(&mut y, op.clone()); }
                _ => { take(&mut x, op.clone()); take(&mut y, op.clone()); }
            }
        }
        let mut rounds = 0;
        while x.version_vector() != y.version_vector() || x.pending_len() + y.pending_len() > 0 {
            rounds += 1;
            prop_assert!(rounds < 1000, "no convergence");
            let to_x = y.missing_for(&x.version_vector(), 1 + rng.below(3), usize::MAX);
            x.apply_all(to_x);
            let to_y = x.missing_for(&y.version_vector(), 1 + rng.below(3), usize::MAX);
            y.apply_all(to_y);
        }
        prop_assert_eq!(x.state(), reference.state());
        prop_assert_eq!(y.state(), reference.state());
        prop_assert_eq!(x.version_vector(), reference.version_vector());
    }
}

// ------------------------------------------------------------ examples

fn op(d: u8, counter: u64, lamport: u64, millis: u64, kind: OpKind) -> Op {
    Op {
        id: OpId {
            device: device(d),
            counter,
        },
        stamp: Stamp { lamport, millis },
        kind,
    }
}

#[test]
fn concurrent_edits_resolve_the_same_everywhere() {
    let sent = op(
        1,
        1,
        1,
        0,
        OpKind::MessageSent {
            friend: BOB,
            message: message(7, 1, 100, "dinner at 7"),
        },
    );
    let edit = |d, counter, at, body: &str| {
        op(
            d,
            counter,
            2,
            0,
            OpKind::Edited {
                friend: BOB,
                target: MessageId([7; 16]),
                body: body.into(),
                at: Timestamp(at),
            },
        )
    };
    // Two devices edit concurrently (same Lamport value): the later edit
    // by the author's clock wins, even though device 1's OpId is lower...
    let r = same_in_every_order(&[
        sent.clone(),
        edit(1, 2, 300, "dinner at 8"),
        edit(2, 1, 200, "dinner at 9"),
    ]);
    let view = r
        .state()
        .conversation(&BOB)
        .unwrap()
        .message(&MessageId([7; 16]))
        .unwrap();
    assert_eq!(view.body, "dinner at 8");
    assert_eq!(view.edited_at, Some(Timestamp(300)));
    assert_eq!(view.message.body, "dinner at 7", "the original stays");
    // ...and with equal times the higher OpId breaks the tie.
    let r = same_in_every_order(&[
        sent,
        edit(1, 2, 300, "dinner at 8"),
        edit(2, 1, 300, "dinner at 9"),
    ]);
    let view = r
        .state()
        .conversation(&BOB)
        .unwrap()
        .message(&MessageId([7; 16]))
        .unwrap();
    assert_eq!(view.body, "dinner at 9");
}

#[test]
fn delete_beats_edit() {
    let target = MessageId([7; 16]);
    let ops = [
        op(
            1,
            1,
            1,
            0,
            OpKind::MessageReceived {
                friend: BOB,
                message: message(7, 1, 100, "oops"),
            },
        ),
        op(
            1,
            2,
            2,
            0,
            OpKind::Deleted {
                friend: BOB,
                target,
                at: Timestamp(200),
            },
        ),
        // An edit made later, on another device, does not bring it back.
        op(
            2,
            1,
            9,
            0,
            OpKind::Edited {
                friend: BOB,
                target,
                body: "back again".into(),
                at: Timestamp(900),
            },
        ),
    ];
    let r = same_in_every_order(&ops);
    let conversation = r.state().conversation(&BOB).unwrap();
    let view = conversation.message(&target).unwrap();
    assert_eq!(view.body, "");
    assert_eq!(view.deleted_at, Some(Timestamp(200)));
    assert_eq!(view.direction, Direction::Received);
    assert_eq!(conversation.len(), 1, "deleted messages keep their place");
}

#[test]
fn edits_and_deletions_that_arrive_before_their_message_take_effect() {
    let mut r = replica(9);
    take(
        &mut r,
        op(
            2,
            1,
            5,
            0,
            OpKind::Edited {
                friend: BOB,
                target: MessageId([7; 16]),
                body: "fixed".into(),
                at: Timestamp(200),
            },
        ),
    );
    assert!(r.state().conversation(&BOB).unwrap().is_empty());
    take(
        &mut r,
        op(
            1,
            1,
            1,
            0,
            OpKind::MessageSent {
                friend: BOB,
                message: message(7, 1, 100, "fxied"),
            },
        ),
    );
    let conversation = r.state().conversation(&BOB).unwrap();
    assert_eq!(
        conversation.message(&MessageId([7; 16])).unwrap().body,
        "fixed"
    );
}

#[test]
fn contact_added_on_one_device_and_removed_later_on_another() {
    let mut laptop = replica(1);
    let mut phone = replica(2);
    let added = laptop
        .record(
            OpKind::ContactAdded {
                friend: BOB,
                id_bytes: vec![1; 39],
                name: "Bob".into(),
                card: vec![2; 100],
            },
            1_795_000_000_000,
        )
        .unwrap();
    sync(&laptop, &mut phone, 10, 64 * 1024);
    assert_eq!(phone.state().contact(&BOB).unwrap().name, "Bob");
    // The phone's clock is an hour behind; it removes Bob after seeing the
    // add, so its Lamport value is higher and the removal wins anyway.
    let removed = phone
        .record(
            OpKind::ContactRemoved { friend: BOB },
            1_795_000_000_000 - 3_600_000,
        )
        .unwrap();
    assert!(removed.stamp.lamport > added.stamp.lamport);
    sync(&phone, &mut laptop, 10, 64 * 1024);
    for r in [&laptop, &phone] {
        assert_eq!(r.state().contact(&BOB), None);
        assert_eq!(r.state().contacts().count(), 0);
        assert_eq!(r.state().contact_entry(&BOB).unwrap().op, removed.id);
    }
    assert_eq!(laptop.state(), phone.state());

    // Added again later on the laptop: present again everywhere.
    laptop
        .record(
            OpKind::ContactAdded {
                friend: BOB,
                id_bytes: vec![1; 39],
                name: "Bob (new)".into(),
                card: vec![3; 100],
            },
            1_795_000_100_000,
        )
        .unwrap();
    sync(&laptop, &mut phone, 10, 64 * 1024);
    assert_eq!(phone.state().contact(&BOB).unwrap().name, "Bob (new)");
    assert_eq!(laptop.state(), phone.state());
}

#[test]
fn concurrent_add_and_remove_resolve_by_stamp() {
    let add = op(
        1,
        1,
        3,
        1_000,
        OpKind::ContactAdded {
            friend: BOB,
            id_bytes: vec![1],
            name: "Bob".into(),
            card: vec![],
        },
    );
    let remove = op(2, 1, 3, 2_000, OpKind::ContactRemoved { friend: BOB });
    let r = same_in_every_order(&[add.clone(), remove]);
    assert_eq!(
        r.state().contact(&BOB),
        None,
        "same Lamport: later millis wins"
    );
    let remove = op(2, 1, 2, 9_000, OpKind::ContactRemoved { friend: BOB });
    let r = same_in_every_order(&[add, remove]);
    assert!(
        r.state().contact(&BOB).is_some(),
        "higher Lamport wins over the wall clock"
    );
}

#[test]
fn read_marker_never_moves_back() {
    let at = |lamport, id| Position {
        lamport: Lamport(lamport),
        sent_at: Timestamp(0),
        id: MessageId([id; 16]),
    };
    let read = |d, counter, lamport, upto| {
        op(
            d,
            counter,
            lamport,
            0,
            OpKind::ReadUpTo { friend: BOB, upto },
        )
    };
    let received = |d, counter, id, lamport| {
        op(
            d,
            counter,
            counter,
            0,
            OpKind::MessageReceived {
                friend: BOB,
                message: ChatMessage {
                    id: MessageId([id; 16]),
                    sent_at: Timestamp(0),
                    lamport: Lamport(lamport),
                    body: "m".into(),
                },
            },
        )
    };
    // The phone read up to message 5; the laptop, later (higher stamp) but
    // having seen less, says it read up to message 3. The marker stays at 5.
    let ops = [
        received(1, 1, 3, 3),
        received(1, 2, 5, 5),
        received(1, 3, 6, 6),
        read(2, 1, 10, at(5, 5)),
        read(3, 1, 20, at(3, 3)),
    ];
    let r = same_in_every_order(&ops);
    let conversation = r.state().conversation(&BOB).unwrap();
    assert_eq!(conversation.read_up_to(), Some(at(5, 5)));
    assert_eq!(conversation.unread(), 1);

    let mut r = replica(9);
    take(&mut r, read(2, 1, 10, at(5, 5)));
    take(&mut r, read(2, 2, 11, at(4, 9)));
    assert_eq!(
        r.state().conversation(&BOB).unwrap().read_up_to(),
        Some(at(5, 5))
    );
}

#[test]
fn a_message_recorded_by_two_devices_is_kept_once() {
    // Bob's client fans his message out to both of the account's devices;
    // each records it.
    let m = message(4, 10, 1_000, "hello both");
    let ops = [
        op(
            1,
            1,
            4,
            0,
            OpKind::MessageReceived {
                friend: BOB,
                message: m.clone(),
            },
        ),
        op(
            2,
            1,
            2,
            0,
            OpKind::MessageReceived {
                friend: BOB,
                message: m.clone(),
            },
        ),
    ];
    let r = same_in_every_order(&ops);
    let conversation = r.state().conversation(&BOB).unwrap();
    assert_eq!(conversation.len(), 1);
    assert_eq!(
        conversation.message(&m.id).unwrap().recorded_by,
        ops[1].id,
        "first by stamp"
    );

    // A friend who sends different contents under one ID to two devices
    // gets one of them shown, the same one everywhere.
    let mut other = m.clone();
    other.body = "something else".into();
    other.lamport = Lamport(2);
    let ops = [
        op(
            1,
            1,
            4,
            0,
            OpKind::MessageReceived {
                friend: BOB,
                message: m.clone(),
            },
        ),
        op(
            2,
            1,
            5,
            0,
            OpKind::MessageReceived {
                friend: BOB,
                message: other,
            },
        ),
    ];
    let r = same_in_every_order(&ops);
    let conversation = r.state().conversation(&BOB).unwrap();
    assert_eq!(conversation.len(), 1);
    assert_eq!(conversation.message(&m.id).unwrap().body, "hello both");
}

#[test]
fn messages_are_ordered_like_history() {
    let ops: Vec<Op> = [
        (1, 9, 0x30),
        (2, 5, 0x10),
        (2, 5, 0x20),
        (2, 1, 0x40),
        (1, 9, 0x05),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, (lamport, sent_at, id))| {
        op(
            1,
            i as u64 + 1,
            i as u64 + 1,
            0,
            OpKind::MessageSent {
                friend: BOB,
                message: message(id, lamport, sent_at, "m"),
            },
        )
    })
    .collect();
    let mut r = replica(9);
    r.apply_all(ops.into_iter().rev());
    let order: Vec<u8> = r
        .state()
        .conversation(&BOB)
        .unwrap()
        .messages()
        .map(|v| v.message.id.0[0])
        .collect();
    assert_eq!(order, [0x05, 0x30, 0x40, 0x10, 0x20]);
}

#[test]
fn profile_nospam_and_decisions_are_last_writer_wins() {
    let ops = [
        op(1, 1, 1, 50, OpKind::ProfileName("Alice".into())),
        op(2, 1, 2, 10, OpKind::ProfileName("Alice L.".into())),
        op(1, 2, 3, 60, OpKind::Nospam(Nospam([1; 4]))),
        op(2, 2, 3, 70, OpKind::Nospam(Nospam([2; 4]))),
        op(
            1,
            3,
            4,
            0,
            OpKind::RequestDecided {
                from: [5; 32],
                decision: Decision::Declined,
            },
        ),
        op(
            2,
            3,
            5,
            0,
            OpKind::RequestDecided {
                from: [5; 32],
                decision: Decision::Blocked,
            },
        ),
    ];
    let r = same_in_every_order(&ops);
    assert_eq!(r.state().profile_name().unwrap().value, "Alice L.");
    assert_eq!(r.state().nospam().unwrap().value, Nospam([2; 4]));
    assert_eq!(r.state().decision(&[5; 32]), Some(Decision::Blocked));
    assert_eq!(r.state().decision(&[6; 32]), None);
}

#[test]
fn duplicates_change_nothing_and_conflicts_are_refused() {
    let mut r = replica(9);
    let first = op(1, 1, 1, 0, OpKind::ProfileName("Alice".into()));
    assert_eq!(r.apply(first.clone()), Ok(Applied::New { released: 0 }));
    let before = r.clone();
    assert_eq!(r.apply(first.clone()), Ok(Applied::Duplicate));
    assert_eq!(r.state(), before.state());
    assert_eq!(r.len(), 1);

    // Same OpId, different contents: a device reused a counter.
    for changed in [
        op(1, 1, 1, 0, OpKind::ProfileName("Mallory".into())),
        op(1, 1, 2, 0, OpKind::ProfileName("Alice".into())),
        op(1, 1, 1, 1, OpKind::ProfileName("Alice".into())),
    ] {
        assert_eq!(r.apply(changed), Err(ApplyError::Conflict { id: first.id }));
        assert_eq!(r.state(), before.state());
        assert_eq!(r.version_vector(), before.version_vector());
        assert_eq!(r.get(&first.id), Some(&first));
    }

    // Invalid ops are refused before anything else.
    assert!(matches!(
        r.apply(op(1, 0, 1, 0, OpKind::ProfileName("x".into()))),
        Err(ApplyError::Invalid(_))
    ));
    assert!(matches!(
        r.apply(op(1, 2, 0, 0, OpKind::ProfileName("x".into()))),
        Err(ApplyError::Invalid(_))
    ));
    assert!(matches!(
        r.apply(op(1, 2, 2, 0, OpKind::ProfileName("\n".into()))),
        Err(ApplyError::Invalid(_))
    ));
    assert_eq!(r.len(), 1);
}

#[test]
fn unknown_kinds_are_held_and_forwarded_but_not_merged() {
    let newer = op(
        1,
        1,
        1,
        0,
        OpKind::Unknown {
            kind: FIRST_UNKNOWN_KIND + 3,
            body: vec![1, 2, 3],
        },
    );
    let after = op(1, 2, 2, 0, OpKind::ProfileName("Alice".into()));
    let mut old = replica(9);
    assert_eq!(old.apply(after.clone()), Ok(Applied::Buffered));
    assert_eq!(old.apply(newer.clone()), Ok(Applied::New { released: 1 }));
    assert_eq!(old.state().profile_name().unwrap().value, "Alice");
    let mut other = replica(8);
    sync(&old, &mut other, 1, 1024);
    assert_eq!(other.get(&newer.id), Some(&newer));
    assert_eq!(other.state(), old.state());
    assert_eq!(other.state().conversations().count(), 0);
}

#[test]
fn the_lamport_clock_follows_what_was_seen() {
    let mut a = replica(1);
    let mut b = replica(2);
    for i in 0..5 {
        a.record(OpKind::ProfileName(format!("a{i}")), 1_000)
            .unwrap();
    }
    sync(&a, &mut b, 100, 1 << 20);
    // b's wall clock is far behind, but it saw a's five ops: its change
    // sorts after them.
    let op = b.record(OpKind::ProfileName("b".into()), 1).unwrap();
    assert_eq!(op.stamp.lamport, 6);
    sync(&b, &mut a, 100, 1 << 20);
    assert_eq!(a.state().profile_name().unwrap().value, "b");
    assert_eq!(a.state(), b.state());
    let vv: VersionVector = a.version_vector();
    assert_eq!(vv.get(&device(1)), 5);
    assert_eq!(vv.get(&device(2)), 1);
}
