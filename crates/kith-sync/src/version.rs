//! Version vectors: the summary one device sends another so that the other
//! can answer with exactly what the first lacks.

use std::collections::BTreeMap;

use crate::codec::{DecodeError, SYNC_VERSION, open_frame, take_varint, varint_len};
use crate::op::{DeviceId, OpId};

/// Most devices one account's log may name: a replica refuses ops from
/// more, so its version vector always encodes. Devices are never forgotten
/// (a removed device's ops stay in the log), so this counts every device
/// the account has ever linked.
pub const MAX_DEVICES: usize = 256;
/// Largest encoded version vector: version byte, count varint (2 bytes for
/// 256), and per device its ID and the longest counter varint.
pub const MAX_VERSION_VECTOR_BYTES: usize = 1 + 2 + MAX_DEVICES * (32 + 10);

/// For each device, the highest counter of its ops held — all of `1..=n`,
/// since a replica applies each device's ops in counter order. Devices with
/// nothing held are left out.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct VersionVector(BTreeMap<DeviceId, u64>);

impl VersionVector {
    /// The empty vector: a device that holds nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Ops of `device` held: counters `1..=get(device)`.
    pub fn get(&self, device: &DeviceId) -> u64 {
        self.0.get(device).copied().unwrap_or(0)
    }

    /// Whether the op named `id` is covered.
    pub fn contains(&self, id: &OpId) -> bool {
        id.counter != 0 && id.counter <= self.get(&id.device)
    }

    /// Devices with at least one op held, in [`DeviceId`] order, each with
    /// its highest counter.
    pub fn iter(&self) -> impl Iterator<Item = (&DeviceId, u64)> {
        self.0.iter().map(|(d, c)| (d, *c))
    }

    /// Number of devices with at least one op held.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Total number of ops covered.
    pub fn total(&self) -> u64 {
        self.0.values().fold(0u64, |sum, c| sum.saturating_add(*c))
    }

    /// Whether every op `other` covers, this covers too.
    pub fn covers(&self, other: &VersionVector) -> bool {
        other.0.iter().all(|(d, c)| self.get(d) >= *c)
    }

    /// What this vector becomes once its holder also takes `ops` in: each
    /// op that is the next of its device moves that device on (ops in
    /// counter order per device, as [`crate::Replica::missing_for`]
    /// answers); others change nothing. For a sender to remember what it
    /// has already sent.
    pub fn after(&self, ops: &[crate::Op]) -> VersionVector {
        let mut next = self.clone();
        for op in ops {
            if op.id.counter == next.get(&op.id.device).saturating_add(1)
                && (next.0.contains_key(&op.id.device) || next.0.len() < MAX_DEVICES)
            {
                next.0.insert(op.id.device, op.id.counter);
            }
        }
        next
    }

    /// Records that `device` has `1..=counter` held; the replica keeps
    /// this within [`MAX_DEVICES`].
    pub(crate) fn set(&mut self, device: DeviceId, counter: u64) {
        if counter == 0 {
            self.0.remove(&device);
        } else {
            self.0.insert(device, counter);
        }
    }

    /// Encodes the vector: version byte, count, then `device | counter`
    /// per device in ascending device order.
    ///
    /// Only replicas make version vectors with entries, and they name at
    /// most [`MAX_DEVICES`] devices, so this cannot fail.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            1 + varint_len(self.0.len() as u64) + self.0.len() * (32 + varint_len(u64::MAX)),
        );
        out.push(SYNC_VERSION);
        push_varint(&mut out, self.0.len() as u64);
        for (device, counter) in &self.0 {
            out.extend_from_slice(&device.0);
            push_varint(&mut out, *counter);
        }
        out
    }

    /// Decodes a vector, refusing more than [`MAX_DEVICES`] entries, zero
    /// counters, and devices out of order or repeated.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let body = open_frame(bytes, MAX_VERSION_VECTOR_BYTES)?;
        let (count, mut rest) = take_varint(body)?;
        if count > MAX_DEVICES as u64 {
            return Err(DecodeError::OutOfRange {
                field: "version vector device count",
                found: count,
                min: 0,
                max: MAX_DEVICES as u64,
            });
        }
        let mut map = BTreeMap::new();
        let mut last: Option<DeviceId> = None;
        for _ in 0..count {
            let (device, after) = rest
                .split_first_chunk::<32>()
                .ok_or_else(|| DecodeError::Malformed("truncated device ID".into()))?;
            let device = DeviceId(*device);
            let (counter, after) = take_varint(after)?;
            if counter == 0 {
                return Err(DecodeError::OutOfRange {
                    field: "version vector counter",
                    found: 0,
                    min: 1,
                    max: u64::MAX,
                });
            }
            if last.is_some_and(|l| l >= device) {
                return Err(DecodeError::NonCanonical);
            }
            last = Some(device);
            map.insert(device, counter);
            rest = after;
        }
        if !rest.is_empty() {
            return Err(DecodeError::TrailingBytes { count: rest.len() });
        }
        Ok(Self(map))
    }
}

fn push_varint(out: &mut Vec<u8>, mut value: u64) {
    loop {
        let low = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(low);
            return;
        }
        out.push(low | 0x80);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vv(entries: &[(u8, u64)]) -> VersionVector {
        let mut v = VersionVector::new();
        for (d, c) in entries {
            v.set(DeviceId([*d; 32]), *c);
        }
        v
    }

    #[test]
    fn varints_are_postcards() {
        for value in [0, 1, 127, 128, 300, u64::MAX] {
            let mut out = Vec::new();
            push_varint(&mut out, value);
            assert_eq!(out, postcard::to_allocvec(&value).unwrap());
        }
    }

    #[test]
    fn round_trips_and_refuses_non_canonical_forms() {
        let v = vv(&[(1, 3), (2, 1), (9, u64::MAX)]);
        assert_eq!(VersionVector::decode(&v.encode()), Ok(v.clone()));
        assert_eq!(
            VersionVector::decode(&VersionVector::new().encode()),
            Ok(VersionVector::new())
        );

        // Entries swapped: out of order.
        let mut swapped = vec![SYNC_VERSION, 2];
        swapped.extend([2; 32]);
        swapped.push(1);
        swapped.extend([1; 32]);
        swapped.push(3);
        assert_eq!(
            VersionVector::decode(&swapped),
            Err(DecodeError::NonCanonical)
        );
        // A device twice.
        let mut twice = vec![SYNC_VERSION, 2];
        for _ in 0..2 {
            twice.extend([1; 32]);
            twice.push(1);
        }
        assert_eq!(
            VersionVector::decode(&twice),
            Err(DecodeError::NonCanonical)
        );
        // A zero counter.
        let mut zero = vec![SYNC_VERSION, 1];
        zero.extend([1; 32]);
        zero.push(0);
        assert!(matches!(
            VersionVector::decode(&zero),
            Err(DecodeError::OutOfRange { found: 0, .. })
        ));
    }

    #[test]
    fn covers_and_contains() {
        let a = vv(&[(1, 3), (2, 1)]);
        let b = vv(&[(1, 2)]);
        assert!(a.covers(&b));
        assert!(!b.covers(&a));
        assert!(a.contains(&OpId {
            device: DeviceId([1; 32]),
            counter: 3
        }));
        assert!(!a.contains(&OpId {
            device: DeviceId([1; 32]),
            counter: 0
        }));
        assert_eq!(a.total(), 4);
    }

    #[test]
    fn after_moves_on_only_with_the_next_op_of_each_device() {
        use crate::{Op, OpId, OpKind, Stamp};
        let op = |d: u8, counter: u64| Op {
            id: OpId {
                device: DeviceId([d; 32]),
                counter,
            },
            stamp: Stamp {
                lamport: counter,
                millis: 0,
            },
            kind: OpKind::ProfileName("n".into()),
        };
        let base = vv(&[(1, 2)]);
        let next = base.after(&[op(1, 3), op(1, 4), op(2, 1), op(3, 2)]);
        assert_eq!(next, vv(&[(1, 4), (2, 1)]));
        // Already held or out of order: no change.
        assert_eq!(base.after(&[op(1, 2), op(1, 5)]), base);
    }
}
