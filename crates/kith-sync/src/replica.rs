//! A replica: one device's copy of the account's op log and the state
//! merged from it.
//!
//! Ops are applied per device in counter order. An op that arrives before
//! an earlier op of its device waits in a bounded buffer and is applied as
//! soon as the gap closes. So the ops a replica holds are always `1..=n`
//! for each device, its [`VersionVector`] describes them exactly, and
//! [`Replica::missing_for`] can answer "what does the other lack?" from a
//! version vector alone.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use crate::codec::{EncodeError, MAX_BATCH_BYTES, MAX_BATCH_OPS, encode_raw, varint_len};
use crate::op::{DeviceId, InvalidOp, Op, OpId, OpKind, Stamp};
use crate::state::State;
use crate::version::{MAX_DEVICES, VersionVector};

/// How much one replica holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most ops held, waiting ones included.
    pub max_ops: usize,
    /// Most bytes of ops held (as encoded), waiting ones included.
    pub max_bytes: usize,
    /// Most ops waiting for an earlier op of their device.
    pub max_pending: usize,
}

impl Default for Limits {
    /// A million ops, 512 MiB, ten thousand waiting: years of chat for one
    /// person.
    fn default() -> Self {
        Self {
            max_ops: 1_000_000,
            max_bytes: 512 * 1024 * 1024,
            max_pending: 10_000,
        }
    }
}

/// What [`Replica::apply`] did with an op.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Applied {
    /// Held and merged, followed by `released` waiting ops of the same
    /// device that it unblocked.
    New {
        /// Waiting ops applied after it.
        released: usize,
    },
    /// Held back until the earlier ops of its device arrive; not yet in
    /// the state or the version vector.
    Buffered,
    /// Already held or waiting; nothing changed.
    Duplicate,
}

/// Why an op was not taken. Nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    /// A field breaks its limit.
    #[error("invalid op: {0}")]
    Invalid(#[from] InvalidOp),
    /// An op with this ID and different contents is already held: a device
    /// reused a counter (it lost its log and kept its key, say).
    #[error("op {id} conflicts with the op already held under that ID")]
    Conflict {
        /// The contested ID.
        id: OpId,
    },
    /// The replica holds [`Limits::max_ops`] ops.
    #[error("the replica holds its limit of {max} ops")]
    TooManyOps {
        /// The limit.
        max: usize,
    },
    /// The op would take the replica over [`Limits::max_bytes`].
    #[error("the replica would hold more than its limit of {max} bytes")]
    TooManyBytes {
        /// The limit.
        max: usize,
    },
    /// [`Limits::max_pending`] ops already wait for earlier ones; send
    /// this one again once the gap is closed.
    #[error("{max} ops already wait for earlier ones")]
    PendingFull {
        /// The limit.
        max: usize,
    },
    /// The op comes from a device beyond the first [`MAX_DEVICES`].
    #[error("the log already names {max} devices")]
    TooManyDevices {
        /// The limit.
        max: usize,
    },
    /// [`Replica::record`] was asked to make an op of a kind this build
    /// does not know.
    #[error("kind {kind} is unknown to this build and cannot be recorded")]
    UnknownKind {
        /// Its tag.
        kind: u32,
    },
    /// The op could not be encoded to be measured (cannot happen to a
    /// valid op).
    #[error("the op could not be encoded: {0}")]
    Encode(#[from] EncodeError),
}

/// What [`Replica::apply_all`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Ops newly held and merged (released waiting ops included).
    pub new: usize,
    /// Ops now waiting for earlier ones.
    pub buffered: usize,
    /// Ops already held or waiting.
    pub duplicates: usize,
    /// Ops refused, with why.
    pub refused: Vec<(OpId, ApplyError)>,
}

#[derive(Clone, Debug)]
struct Held {
    op: Op,
    /// Encoded length without the version byte: what it adds to a batch.
    len: usize,
}

/// One device's replica of the account's op log, and the merged [`State`].
#[derive(Clone, Debug)]
pub struct Replica {
    local: DeviceId,
    limits: Limits,
    /// Per device, its ops `1..=n` in counter order.
    logs: BTreeMap<DeviceId, Vec<Held>>,
    /// Ops waiting for an earlier op of their device.
    pending: BTreeMap<OpId, Held>,
    /// Every device in `logs` or `pending`.
    devices: BTreeSet<DeviceId>,
    /// Ops in `logs` and `pending`.
    count: usize,
    /// Their encoded bytes.
    bytes: usize,
    /// Highest Lamport value seen in any op held or waiting.
    clock: u64,
    state: State,
}

impl Replica {
    /// An empty replica for the device `local`, holding at most `limits`.
    pub fn new(local: DeviceId, limits: Limits) -> Self {
        Self {
            local,
            limits,
            logs: BTreeMap::new(),
            pending: BTreeMap::new(),
            devices: BTreeSet::new(),
            count: 0,
            bytes: 0,
            clock: 0,
            state: State::default(),
        }
    }

    /// The device this replica records ops for.
    pub fn local(&self) -> DeviceId {
        self.local
    }

    /// Its limits.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The state merged from the ops held.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// Which ops are held (not counting waiting ones).
    pub fn version_vector(&self) -> VersionVector {
        let mut vv = VersionVector::new();
        for (device, log) in &self.logs {
            vv.set(*device, log.len() as u64);
        }
        vv
    }

    /// Number of ops held and merged.
    pub fn len(&self) -> usize {
        self.count - self.pending.len()
    }

    /// Whether no op is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of ops waiting for an earlier op of their device.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Bytes of ops held and waiting, as encoded.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The Lamport clock: the highest Lamport value seen in any op held or
    /// waiting. The next recorded op gets one more.
    pub fn clock(&self) -> u64 {
        self.clock
    }

    /// The op held under `id`, if any (waiting ops are not returned).
    pub fn get(&self, id: &OpId) -> Option<&Op> {
        let index = usize::try_from(id.counter.checked_sub(1)?).ok()?;
        self.logs.get(&id.device)?.get(index).map(|h| &h.op)
    }

    /// Every op held, by device and then counter.
    pub fn ops(&self) -> impl Iterator<Item = &Op> {
        self.logs.values().flatten().map(|h| &h.op)
    }

    /// Records something this device did: makes the op (next counter of
    /// the local device, Lamport value one past [`Replica::clock`], `millis`
    /// from the caller's wall clock), applies it, and returns it to be sent
    /// to the other devices.
    pub fn record(&mut self, kind: OpKind, millis: u64) -> Result<Op, ApplyError> {
        if let OpKind::Unknown { kind, .. } = kind {
            return Err(ApplyError::UnknownKind { kind });
        }
        let held = self.logs.get(&self.local).map_or(0, Vec::len) as u64;
        let op = Op {
            id: OpId {
                device: self.local,
                counter: held.saturating_add(1),
            },
            stamp: Stamp {
                lamport: self.clock.saturating_add(1),
                millis,
            },
            kind,
        };
        match self.apply(op.clone())? {
            Applied::New { .. } => Ok(op),
            // The next counter of the local device is waiting already with
            // these very contents: impossible short of a clock going
            // backwards into an identical op; treat as the reuse it is.
            Applied::Buffered | Applied::Duplicate => Err(ApplyError::Conflict { id: op.id }),
        }
    }

    /// Applies one op: merges it if it is the next of its device (and any
    /// waiting ops it unblocks), holds it back if an earlier op of its
    /// device is missing, and ignores it if it is already held. On error
    /// nothing changes.
    pub fn apply(&mut self, op: Op) -> Result<Applied, ApplyError> {
        op.validate()?;
        let device = op.id.device;
        let next = self.logs.get(&device).map_or(0, Vec::len) as u64 + 1;
        if op.id.counter < next {
            let held = self.get(&op.id);
            return match held {
                Some(held) if *held == op => Ok(Applied::Duplicate),
                _ => Err(ApplyError::Conflict { id: op.id }),
            };
        }
        if let Some(waiting) = self.pending.get(&op.id) {
            return if waiting.op == op {
                Ok(Applied::Duplicate)
            } else {
                Err(ApplyError::Conflict { id: op.id })
            };
        }
        if !self.devices.contains(&device) && self.devices.len() >= MAX_DEVICES {
            return Err(ApplyError::TooManyDevices { max: MAX_DEVICES });
        }
        if self.count >= self.limits.max_ops {
            return Err(ApplyError::TooManyOps {
                max: self.limits.max_ops,
            });
        }
        let len = encode_raw(&op, Vec::new())?.len();
        if self.bytes.saturating_add(len) > self.limits.max_bytes {
            return Err(ApplyError::TooManyBytes {
                max: self.limits.max_bytes,
            });
        }
        let buffered = op.id.counter > next;
        if buffered && self.pending.len() >= self.limits.max_pending {
            return Err(ApplyError::PendingFull {
                max: self.limits.max_pending,
            });
        }

        self.devices.insert(device);
        self.count += 1;
        self.bytes += len;
        self.clock = self.clock.max(op.stamp.lamport);
        let held = Held { op, len };
        if buffered {
            self.pending.insert(held.op.id, held);
            return Ok(Applied::Buffered);
        }
        self.commit(held);
        let mut released = 0;
        let mut id = OpId {
            device,
            counter: next,
        };
        loop {
            id.counter = id.counter.saturating_add(1);
            let Some(held) = self.pending.remove(&id) else {
                break;
            };
            self.commit(held);
            released += 1;
        }
        Ok(Applied::New { released })
    }

    /// Applies ops one by one (see [`Replica::apply`]), going on past
    /// refusals, and counts what happened.
    pub fn apply_all(&mut self, ops: impl IntoIterator<Item = Op>) -> Outcome {
        let mut outcome = Outcome::default();
        for op in ops {
            let id = op.id;
            match self.apply(op) {
                Ok(Applied::New { released }) => outcome.new += 1 + released,
                Ok(Applied::Buffered) => outcome.buffered += 1,
                Ok(Applied::Duplicate) => outcome.duplicates += 1,
                Err(e) => outcome.refused.push((id, e)),
            }
        }
        outcome
    }

    fn commit(&mut self, held: Held) {
        self.state.apply(&held.op);
        self.logs.entry(held.op.id.device).or_default().push(held);
    }

    /// The ops held that a replica with version vector `theirs` lacks, in
    /// counter order per device (so the other applies each at once,
    /// nothing waits), the devices interleaved by [`Op::order`] (so a
    /// partial answer brings the other's state forward evenly in time).
    ///
    /// At most `max_ops` ops (and [`MAX_BATCH_OPS`]); their
    /// [`encode_batch`](crate::encode_batch) is at most `max_bytes` long
    /// (and [`MAX_BATCH_BYTES`]). The answer stops at the first op that
    /// does not fit, so `max_bytes` below [`MAX_OP_BYTES`](crate::MAX_OP_BYTES)
    /// plus a few bytes may stall on a large op. Ask again with the other's
    /// new version vector for the rest; an empty answer means the other
    /// lacks nothing this replica holds.
    pub fn missing_for(&self, theirs: &VersionVector, max_ops: usize, max_bytes: usize) -> Vec<Op> {
        let max_ops = max_ops.min(MAX_BATCH_OPS);
        let max_bytes = max_bytes.min(MAX_BATCH_BYTES);
        let mut heads = BinaryHeap::new();
        for (device, log) in &self.logs {
            let start = usize::try_from(theirs.get(device)).unwrap_or(usize::MAX);
            if let Some(held) = log.get(start) {
                heads.push(Reverse((held.op.order(), start)));
            }
        }
        let mut out = Vec::new();
        let mut ops_bytes = 0usize;
        while out.len() < max_ops {
            let Some(Reverse(((_, id), index))) = heads.pop() else {
                break;
            };
            let Some(log) = self.logs.get(&id.device) else {
                break;
            };
            let Some(held) = log.get(index) else {
                break;
            };
            let total = 1 + varint_len(out.len() as u64 + 1) + ops_bytes + held.len;
            if total > max_bytes {
                break;
            }
            ops_bytes += held.len;
            out.push(held.op.clone());
            if let Some(next) = log.get(index + 1) {
                heads.push(Reverse((next.op.order(), index + 1)));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use kith_proto::wire::{ChatMessage, Lamport, MessageId, Timestamp};

    use super::*;
    use crate::codec::encode_batch;

    fn device(n: u8) -> DeviceId {
        DeviceId([n; 32])
    }

    fn name(n: &str) -> OpKind {
        OpKind::ProfileName(n.into())
    }

    fn op(d: u8, counter: u64, lamport: u64, kind: OpKind) -> Op {
        Op {
            id: OpId {
                device: device(d),
                counter,
            },
            stamp: Stamp { lamport, millis: 0 },
            kind,
        }
    }

    #[test]
    fn record_advances_counter_and_clock() {
        let mut a = Replica::new(device(1), Limits::default());
        let first = a.record(name("a"), 10).unwrap();
        assert_eq!(first.id.counter, 1);
        assert_eq!(first.stamp.lamport, 1);
        a.apply(op(2, 1, 41, name("b"))).unwrap();
        let second = a.record(name("c"), 5).unwrap();
        assert_eq!(second.id.counter, 2);
        assert_eq!(second.stamp.lamport, 42);
        assert_eq!(a.state().profile_name().unwrap().value, "c");
        assert!(matches!(
            a.record(
                OpKind::Unknown {
                    kind: 99,
                    body: vec![]
                },
                0
            ),
            Err(ApplyError::UnknownKind { kind: 99 })
        ));
    }

    #[test]
    fn gaps_wait_and_release_in_order() {
        let mut r = Replica::new(device(9), Limits::default());
        assert_eq!(r.apply(op(1, 3, 3, name("c"))), Ok(Applied::Buffered));
        assert_eq!(r.apply(op(1, 2, 2, name("b"))), Ok(Applied::Buffered));
        assert_eq!(r.apply(op(1, 2, 2, name("b"))), Ok(Applied::Duplicate));
        assert_eq!(
            r.apply(op(1, 2, 2, name("B"))),
            Err(ApplyError::Conflict {
                id: OpId {
                    device: device(1),
                    counter: 2
                }
            })
        );
        assert!(r.state().profile_name().is_none());
        assert_eq!(r.version_vector().get(&device(1)), 0);
        assert_eq!(r.clock(), 3);
        assert_eq!(
            r.apply(op(1, 1, 1, name("a"))),
            Ok(Applied::New { released: 2 })
        );
        assert_eq!(r.version_vector().get(&device(1)), 3);
        assert_eq!(r.pending_len(), 0);
        assert_eq!(r.len(), 3);
        assert_eq!(r.state().profile_name().unwrap().value, "c");
    }

    #[test]
    fn limits_refuse_and_change_nothing() {
        let limits = Limits {
            max_ops: 2,
            max_bytes: 1 << 20,
            max_pending: 1,
        };
        let mut r = Replica::new(device(9), limits);
        r.apply(op(1, 2, 2, name("b"))).unwrap();
        assert_eq!(
            r.apply(op(1, 3, 3, name("c"))),
            Err(ApplyError::PendingFull { max: 1 })
        );
        r.apply(op(2, 1, 1, name("x"))).unwrap();
        let before = r.clone();
        assert_eq!(
            r.apply(op(1, 1, 1, name("a"))),
            Err(ApplyError::TooManyOps { max: 2 })
        );
        assert_eq!(r.state(), before.state());
        assert_eq!(r.version_vector(), before.version_vector());

        let mut small = Replica::new(
            device(9),
            Limits {
                max_bytes: 60,
                ..Limits::default()
            },
        );
        small.apply(op(1, 1, 1, name("short"))).unwrap();
        assert_eq!(
            small.apply(op(1, 2, 2, name(&"long".repeat(20)))),
            Err(ApplyError::TooManyBytes { max: 60 })
        );
        assert_eq!(small.len(), 1);
    }

    #[test]
    fn devices_are_capped() {
        let mut r = Replica::new(device(0), Limits::default());
        for d in 0..MAX_DEVICES {
            let mut id = [0; 32];
            id[..8].copy_from_slice(&(d as u64).to_be_bytes());
            let mut o = op(0, 1, 1, name("n"));
            o.id.device = DeviceId(id);
            r.apply(o).unwrap();
        }
        assert_eq!(
            r.apply(op(0xff, 1, 1, name("n"))),
            Err(ApplyError::TooManyDevices { max: MAX_DEVICES })
        );
        assert_eq!(r.version_vector().len(), MAX_DEVICES);
    }

    #[test]
    fn missing_for_fits_its_budget_and_keeps_counter_order() {
        let mut a = Replica::new(device(1), Limits::default());
        let mut b = Replica::new(device(2), Limits::default());
        for i in 0..50u64 {
            a.record(
                OpKind::MessageSent {
                    friend: [7; 32],
                    message: ChatMessage {
                        id: MessageId([i as u8; 16]),
                        sent_at: Timestamp(i),
                        lamport: Lamport(i),
                        body: "x".repeat(100),
                    },
                },
                i,
            )
            .unwrap();
            b.record(name(&format!("n{i}")), i).unwrap();
        }
        b.apply_all(a.missing_for(&b.version_vector(), usize::MAX, usize::MAX));
        let mut rounds = 0;
        loop {
            let batch = b.missing_for(&a.version_vector(), 7, 400);
            if batch.is_empty() {
                break;
            }
            assert!(batch.len() <= 7);
            assert!(encode_batch(&batch).unwrap().len() <= 400);
            let outcome = a.apply_all(batch.clone());
            assert_eq!(outcome.new, batch.len(), "nothing waits, nothing repeats");
            rounds += 1;
        }
        assert!(rounds > 1);
        assert_eq!(a.version_vector(), b.version_vector());
        assert_eq!(a.state(), b.state());
        assert!(a.missing_for(&b.version_vector(), 10, 10_000).is_empty());
        // Too small a byte budget for any op: nothing, not a broken batch.
        assert!(a.missing_for(&VersionVector::new(), 10, 20).is_empty());
    }
}
