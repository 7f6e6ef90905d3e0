//! Exchanging the op log with the account's other devices ("siblings")
//! directly (`docs/sync.md`, "Exchange between devices").
//!
//! Each device pushes: whenever it holds ops a sibling is not known to
//! hold (after a change here, after taking in ops from a third device, or
//! when a sibling connects and what it holds is unknown), it sends a
//! [`SyncRequest`] — its device list, its version vector and the ops the
//! sibling lacks (up to [`SYNC_BATCH_BYTES`]) — and learns from the
//! answer what the sibling now holds; it repeats until the sibling holds
//! everything. The receiver learns from the request what the sender
//! holds, so it pushes back what the sender lacks. Siblings are found like
//! friends' devices: through the account's own presence record (every
//! device publishes under the account's presence key), or already
//! connected. Requests from a device that is not on this device's newest
//! list are refused, and a newer list a sibling carries is adopted.

use std::time::{Duration, Instant};

use kith_net::{InboundRequest, Multiaddr, NetError, PeerId};
use kith_proto::devices::SignedDeviceList;
use kith_sync::VersionVector;

use super::{Actor, Done, jitter, store_error};
use crate::engine::Event;
use crate::frame::{
    self, SYNC_BATCH_BYTES, SyncRefusal, SyncRequest, SyncResponse, decode_sync_request,
};
use crate::records::{DEVICE_LIST, SETTINGS};

/// What this device knows of one sibling.
#[derive(Debug)]
pub(super) struct Sibling {
    addresses: Vec<Multiaddr>,
    in_flight: bool,
    next_attempt: Instant,
    backoff: Duration,
    /// What the sibling holds, as last heard; `None` until an exchange.
    known: Option<VersionVector>,
}

/// What a finished sync push reports.
pub(super) struct SyncDone {
    pub(super) peer: PeerId,
    pub(super) result: Result<SyncResponse, String>,
}

impl Actor {
    /// Brings the sibling table in line with the device list.
    pub(super) fn refresh_siblings(&mut self) {
        let me = self.net.peer_id();
        let listed: Vec<PeerId> = self
            .devices_listed()
            .map(|l| l.peers().filter(|p| *p != me).collect())
            .unwrap_or_default();
        self.siblings.retain(|peer, _| listed.contains(peer));
        for peer in listed {
            self.siblings.entry(peer).or_insert_with(|| Sibling {
                addresses: Vec::new(),
                in_flight: false,
                next_attempt: Instant::now(),
                backoff: self.retry_min,
                known: None,
            });
        }
    }

    /// A sibling connected: exchange what each holds.
    pub(super) fn sibling_connected(&mut self, peer: &PeerId) {
        let retry_min = self.retry_min;
        if let Some(sibling) = self.siblings.get_mut(peer) {
            sibling.known = None;
            sibling.next_attempt = Instant::now();
            sibling.backoff = retry_min;
        }
    }

    /// Pushes to every sibling that lacks ops and is due.
    pub(super) fn pump_siblings(&mut self) {
        if self.siblings.is_empty() {
            return;
        }
        let now = Instant::now();
        let held = self.replica.version_vector();
        let due: Vec<PeerId> = self
            .siblings
            .iter()
            .filter(|(_, s)| !s.in_flight && now >= s.next_attempt)
            .filter(|(_, s)| s.known.as_ref().is_none_or(|k| !k.covers(&held)))
            .map(|(peer, _)| *peer)
            .collect();
        let mut lookup = false;
        for peer in due {
            let connected = self.connected.contains(&peer);
            let Some(sibling) = self.siblings.get_mut(&peer) else {
                continue;
            };
            if sibling.addresses.is_empty() && !connected {
                lookup = true;
                continue;
            }
            self.push_to_sibling(peer);
        }
        if lookup && !self.sibling_lookup {
            self.look_up_siblings();
        }
    }

    fn push_to_sibling(&mut self, peer: PeerId) {
        let Some(list) = self.device_list.as_ref().map(SignedDeviceList::encode) else {
            return;
        };
        let Some(sibling) = self.siblings.get_mut(&peer) else {
            return;
        };
        let theirs = sibling.known.clone().unwrap_or_default();
        let addresses = sibling.addresses.clone();
        sibling.in_flight = true;
        let batch = if sibling.known.is_some() {
            self.batch_for(&theirs, SYNC_BATCH_BYTES)
        } else {
            // What they hold is unknown: say what we hold first.
            Vec::new()
        };
        let request = frame::encode_sync_request(&SyncRequest {
            list,
            held: self.replica.version_vector().encode(),
            batch,
        });
        let net = self.net.clone();
        let done = self.done_tx.clone();
        tokio::spawn(async move {
            let result = net
                .request(peer, addresses, request)
                .await
                .map_err(|e: NetError| e.to_string())
                .and_then(|bytes| frame::decode_sync_response(&bytes).map_err(|e| e.to_string()));
            let _ = done
                .send(Done::Synced(Box::new(SyncDone { peer, result })))
                .await;
        });
    }

    /// Looks the account's own presence record up for siblings' addresses.
    fn look_up_siblings(&mut self) {
        self.sibling_lookup = true;
        let share = self.presence.share();
        let net = self.net.clone();
        let done = self.done_tx.clone();
        tokio::spawn(async move {
            let result = net.find_devices(&share).await;
            let _ = done.send(Done::SiblingsLocated(result)).await;
        });
    }

    pub(super) fn on_siblings_located(&mut self, result: Result<Vec<kith_net::Device>, NetError>) {
        self.sibling_lookup = false;
        let found = result.unwrap_or_default();
        let (retry_max, now) = (self.retry_max, Instant::now());
        for (peer, sibling) in &mut self.siblings {
            match found.iter().find(|d| d.peer_id == *peer) {
                Some(device) if !device.addresses.is_empty() => {
                    sibling.addresses = device.addresses.clone();
                    sibling.next_attempt = now;
                }
                _ if sibling.addresses.is_empty() => {
                    sibling.next_attempt = now + jitter(sibling.backoff);
                    sibling.backoff = (sibling.backoff * 2).min(retry_max);
                }
                _ => {}
            }
        }
    }

    pub(super) fn on_synced(&mut self, done: SyncDone) {
        let SyncDone { peer, result } = done;
        let (retry_min, retry_max) = (self.retry_min, self.retry_max);
        let Some(sibling) = self.siblings.get_mut(&peer) else {
            return;
        };
        sibling.in_flight = false;
        match result {
            Ok(SyncResponse::Held(bytes)) => match VersionVector::decode(&bytes) {
                Ok(held) => {
                    sibling.known = Some(held);
                    sibling.backoff = retry_min;
                    sibling.next_attempt = Instant::now();
                }
                Err(_) => {
                    sibling.next_attempt = Instant::now() + jitter(sibling.backoff);
                    sibling.backoff = (sibling.backoff * 2).min(retry_max);
                }
            },
            Ok(SyncResponse::Refused(_)) => {
                sibling.backoff = retry_max;
                sibling.next_attempt = Instant::now() + jitter(retry_max);
            }
            Err(_) => {
                sibling.addresses.clear();
                sibling.next_attempt = Instant::now() + jitter(sibling.backoff);
                sibling.backoff = (sibling.backoff * 2).min(retry_max);
            }
        }
    }

    /// A sibling pushed to us: adopt a newer list it carries, refuse it if
    /// it is not listed, take its ops in, answer (after the commit) with
    /// what we hold.
    pub(super) fn on_sync_request(&mut self, request: InboundRequest) {
        let peer = request.peer;
        let refuse = |request: InboundRequest, why| {
            request.respond(frame::encode_sync_response(&SyncResponse::Refused(why)));
        };
        let Ok(sync) = decode_sync_request(&request.data) else {
            refuse(request, SyncRefusal::Unreadable);
            return;
        };
        let mut events = Vec::new();
        if let Ok(list) = SignedDeviceList::decode(&sync.list) {
            self.adopt_list(list, &mut events);
        }
        let listed = self.siblings.contains_key(&peer);
        if !listed {
            refuse(request, SyncRefusal::NotListed);
            return;
        }
        let (Ok(held), Ok(batch)) = (
            VersionVector::decode(&sync.held),
            if sync.batch.is_empty() {
                Ok(Vec::new())
            } else {
                kith_sync::decode_batch(&sync.batch)
            },
        ) else {
            refuse(request, SyncRefusal::Unreadable);
            return;
        };
        let mut ops = Vec::new();
        self.ingest_ops(batch, &mut ops, &mut events);
        if let Some(sibling) = self.siblings.get_mut(&peer) {
            sibling.known = Some(held);
        }
        self.stage(ops);
        let answer = frame::encode_sync_response(&SyncResponse::Held(
            self.replica.version_vector().encode(),
        ));
        self.after_commit(move |actor, ok| {
            if ok {
                request.respond(answer);
                for event in events {
                    actor.emit(event);
                }
            } else {
                request.respond(frame::encode_sync_response(&SyncResponse::Refused(
                    SyncRefusal::Busy,
                )));
            }
        });
    }

    /// Takes `list` as the account's device list if it verifies and is
    /// newer than ours.
    pub(super) fn adopt_list(&mut self, list: SignedDeviceList, events: &mut Vec<Event>) {
        let account = self.identity.account.public();
        let Ok(new) = list.verify(&account) else {
            return;
        };
        if self
            .devices_listed()
            .is_some_and(|current| !new.supersedes(current))
        {
            return;
        }
        let me = self.net.peer_id();
        if !new.contains(&me) {
            events.push(Event::Problem(
                "this device was removed from the account on another device; it gets nothing new"
                    .into(),
            ));
        }
        if let Err(e) = self
            .apply(vec![kith_store::Op::put(
                SETTINGS,
                DEVICE_LIST,
                list.encode(),
            )])
            .map_err(store_error)
        {
            events.push(Event::Problem(e.to_string()));
            return;
        }
        self.device_list = Some(list);
        self.refresh_siblings();
        self.device_list_changed();
    }
}
