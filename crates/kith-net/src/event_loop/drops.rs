//! Request drops in the DHT (`docs/requests.md`).
//!
//! As a DHT node: an inbound PutRecord whose value starts with
//! [`request_drop::DROP_TAG`] is checked with [`RequestDrop::verify`]
//! (limits and times: nodes cannot know whose drop a key is), merged with
//! what is stored under the key, and stored if the merge adds anything. A
//! key holding a presence record is never overwritten by a drop, and drops
//! take at most a quarter of the record store.
//!
//! As a client: [`Client::drop_request`](crate::Client::drop_request) reads
//! the drop (a Kademlia GetRecord, every answer merged), merges the new entry
//! in and puts the result to the closest nodes with a quorum of one;
//! [`Client::fetch_requests`](crate::Client::fetch_requests) is the read
//! alone. Both keep their replies in maps keyed by query ID.

use std::collections::HashMap;
use std::time::Duration;

use kith_proto::request_drop::{self, DropEntry, DropError, RequestDrop};
use libp2p::kad::store::RecordStore;
use libp2p::{PeerId, kad};

use super::{Event, EventLoop, unix_secs};
use crate::client::{NetError, Reply};

/// Most drop reads, writes and fetches in flight at once.
const MAX_DROP_QUERIES: usize = 32;

enum Read {
    /// Reading before a write: the entry being dropped, merged with every
    /// answer.
    BeforeDrop {
        key: [u8; 32],
        merged: RequestDrop,
        reply: Reply<()>,
    },
    /// Fetching for the owner.
    Fetch {
        merged: RequestDrop,
        reply: Reply<Vec<DropEntry>>,
    },
}

/// The drop queries in flight.
#[derive(Default)]
pub(super) struct Drops {
    reads: HashMap<kad::QueryId, Read>,
    writes: HashMap<kad::QueryId, Reply<()>>,
}

impl Drops {
    pub(super) fn is_ours(&self, id: &kad::QueryId) -> bool {
        self.reads.contains_key(id) || self.writes.contains_key(id)
    }

    fn busy(&self) -> bool {
        self.reads.len() + self.writes.len() >= MAX_DROP_QUERIES
    }
}

fn refusal_label(error: &DropError) -> &'static str {
    match error {
        DropError::TooLarge { .. } | DropError::EntrySize { .. } => "too_large",
        DropError::UnknownVersion { .. } => "unknown_version",
        DropError::Malformed(_) => "malformed",
        DropError::Entries { .. } => "entries",
        DropError::Expired { .. } => "expired",
        DropError::ExpiryTooFar { .. } => "expiry_too_far",
        _ => "invalid",
    }
}

impl EventLoop {
    pub(super) fn drop_request(&mut self, key: [u8; 32], entry: DropEntry, reply: Reply<()>) {
        if self.drops.busy() {
            let _ = reply.send(Err(NetError::Busy("request drops")));
            return;
        }
        let id = self
            .swarm
            .behaviour_mut()
            .kad
            .get_record(kad::RecordKey::new(&key));
        let merged = RequestDrop {
            entries: vec![entry],
        };
        self.drops
            .reads
            .insert(id, Read::BeforeDrop { key, merged, reply });
    }

    pub(super) fn fetch_requests(&mut self, key: [u8; 32], reply: Reply<Vec<DropEntry>>) {
        if self.drops.busy() {
            let _ = reply.send(Err(NetError::Busy("request drops")));
            return;
        }
        let id = self
            .swarm
            .behaviour_mut()
            .kad
            .get_record(kad::RecordKey::new(&key));
        let merged = RequestDrop::default();
        self.drops.reads.insert(id, Read::Fetch { merged, reply });
    }

    pub(super) fn on_drop_get_record(
        &mut self,
        id: kad::QueryId,
        result: Result<kad::GetRecordOk, kad::GetRecordError>,
        last: bool,
    ) {
        let now = unix_secs();
        if let Ok(kad::GetRecordOk::FoundRecord(found)) = &result
            && let Some(read) = self.drops.reads.get_mut(&id)
        {
            match RequestDrop::verify(&found.record.value, now) {
                Ok(record) => {
                    let merged = match read {
                        Read::BeforeDrop { merged, .. } | Read::Fetch { merged, .. } => merged,
                    };
                    *merged = RequestDrop::merge(merged, &record, now);
                }
                Err(e) => {
                    tracing::debug!(peer = ?found.peer, "ignoring an invalid request drop: {e}")
                }
            }
        }
        if !last {
            return;
        }
        match self.drops.reads.remove(&id) {
            Some(Read::Fetch { merged, reply }) => {
                let answer = match result {
                    Err(kad::GetRecordError::NotFound { .. }) | Ok(_) => Ok(merged.entries),
                    Err(_) if !merged.entries.is_empty() => Ok(merged.entries),
                    Err(e) => Err(NetError::Lookup(e.to_string())),
                };
                let _ = reply.send(answer);
            }
            Some(Read::BeforeDrop { key, merged, reply }) => {
                self.write_drop(key, merged, now, reply)
            }
            None => {}
        }
    }

    fn write_drop(&mut self, key: [u8; 32], merged: RequestDrop, now: u64, reply: Reply<()>) {
        // The entry was checked when the call was made; it can only have
        // expired while the read ran.
        let Some(latest) = merged.latest_expiry() else {
            let _ = reply.send(Err(NetError::InvalidDrop(DropError::Expired {
                expires: now,
                now,
            })));
            return;
        };
        let mut record = kad::Record::new(kad::RecordKey::new(&key), merged.encode());
        record.expires =
            Some(std::time::Instant::now() + Duration::from_secs(latest.saturating_sub(now)));
        match self
            .swarm
            .behaviour_mut()
            .kad
            .put_record(record, kad::Quorum::One)
        {
            Ok(id) => {
                self.drops.writes.insert(id, reply);
            }
            Err(e) => {
                let _ = reply.send(Err(NetError::Drop(e.to_string())));
            }
        }
    }

    pub(super) fn on_drop_put_record(&mut self, id: kad::QueryId, result: kad::PutRecordResult) {
        if let Some(reply) = self.drops.writes.remove(&id) {
            let _ = reply.send(
                result
                    .map(|_| ())
                    .map_err(|e| NetError::Drop(e.to_string())),
            );
        }
    }

    /// A request drop put to us as a DHT node.
    pub(super) fn on_inbound_drop(&mut self, source: PeerId, record: kad::Record) {
        let now = unix_secs();
        let incoming = match RequestDrop::verify(&record.value, now) {
            Ok(incoming) => incoming,
            Err(e) => {
                tracing::debug!(%source, "refused request drop: {e}");
                self.refused_drop(source, refusal_label(&e));
                return;
            }
        };
        let max_drops = self.max_drop_records;
        let store = self.swarm.behaviour_mut().kad.store_mut();
        let stored = store.get(&record.key).map(|r| r.value.clone());
        let base = match stored {
            // Someone's presence lives here; a valid presence record is
            // proof of the key's owner, a drop is proof of nothing.
            Some(value) if !request_drop::is_drop_record(&value) => {
                self.refused_drop(source, "key_in_use");
                return;
            }
            Some(value) => RequestDrop::decode(&value)
                .map(|held| RequestDrop::merge(&held, &RequestDrop::default(), now))
                .unwrap_or_default(),
            None => {
                // Expired drops give their place back here, not only at
                // Kademlia's next replication pass.
                if self.drop_records() >= max_drops
                    && (self.remove_expired_records() == 0 || self.drop_records() >= max_drops)
                {
                    self.refused_drop(source, "store_full");
                    return;
                }
                RequestDrop::default()
            }
        };
        let merged = RequestDrop::merge(&base, &incoming, now);
        if merged == base {
            // Nothing new (Kademlia's replication re-sends what we hold).
            return;
        }
        let lifetime = merged.latest_expiry().map_or(0, |e| e.saturating_sub(now));
        let mut stored = kad::Record::new(record.key, merged.encode());
        stored.publisher = record.publisher;
        stored.expires = Some(std::time::Instant::now() + Duration::from_secs(lifetime));
        match self.store_record(stored) {
            Ok(()) => {
                if let Some(m) = &self.metrics {
                    m.record_drop_stored();
                }
                self.emit(Event::RecordStored { from: source });
            }
            Err(e) => {
                tracing::debug!(%source, "record store full: {e}");
                self.refused_drop(source, "store_full");
            }
        }
    }

    /// Request drops in the record store, expired ones included.
    fn drop_records(&mut self) -> usize {
        self.swarm
            .behaviour_mut()
            .kad
            .store_mut()
            .records()
            .filter(|r| request_drop::is_drop_record(&r.value))
            .count()
    }

    fn refused_drop(&mut self, from: PeerId, reason: &'static str) {
        if let Some(m) = &self.metrics {
            m.record_drop_refused(reason);
        }
        self.emit(Event::RecordRefused { from, reason });
    }
}
