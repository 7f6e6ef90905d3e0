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

use super::mail::seal_mail;
use super::{Actor, Done, jitter, store_error};
use crate::engine::Event;
use crate::frame::{
    self, Mail, SYNC_BATCH_BYTES, SyncMail, SyncRefusal, SyncRequest, SyncResponse,
    decode_sync_request,
};
use crate::records::{self, DEVICE_LIST, SETTINGS, SIBLINGS};

/// What this device knows of one sibling.
#[derive(Debug)]
pub(super) struct Sibling {
    addresses: Vec<Multiaddr>,
    in_flight: bool,
    next_attempt: Instant,
    backoff: Duration,
    /// What the sibling holds, as last heard; `None` until an exchange.
    known: Option<VersionVector>,
    /// Not found, or not answering: what it lacks goes by mail.
    unreachable: bool,
    /// What was left for it in the account's mailbox, on top of `known`.
    mailed: Option<VersionVector>,
    mailing: bool,
    next_mail: Instant,
    /// When the ops it lacks go by mail: a moment after they were first
    /// found lacking, so a burst of changes makes one item.
    mail_due: Option<Instant>,
}

/// A moment for more changes to gather before ops go by mail.
const MAIL_GATHER: Duration = Duration::from_secs(1);
/// Bytes of ops in one mail item (the content limit is about 63 KiB).
const SYNC_MAIL_BYTES: usize = 40 * 1024;

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
        let gone: Vec<PeerId> = self
            .siblings
            .keys()
            .filter(|peer| !listed.contains(peer))
            .copied()
            .collect();
        for peer in gone {
            self.siblings.remove(&peer);
            self.keep_dirty = true;
            self.stage(vec![records::delete(SIBLINGS, peer.to_bytes())]);
        }
        for peer in listed {
            if self.siblings.contains_key(&peer) {
                continue;
            }
            // What was mailed is not kept across a restart: an item may
            // have expired or gone with its volunteers, and mailing again
            // from what the sibling is known to hold costs only duplicates.
            let known = records::get::<Vec<u8>>(&self.store, SIBLINGS, &peer.to_bytes())
                .ok()
                .flatten()
                .and_then(|bytes| VersionVector::decode(&bytes).ok());
            self.keep_dirty = true;
            self.siblings.insert(
                peer,
                Sibling {
                    addresses: Vec::new(),
                    in_flight: false,
                    next_attempt: Instant::now(),
                    backoff: self.retry_min,
                    known,
                    unreachable: false,
                    mailed: None,
                    mailing: false,
                    next_mail: Instant::now(),
                    mail_due: None,
                },
            );
        }
    }

    /// Remembers what `peer` holds, so a restart does not mail it
    /// everything again.
    fn keep_sibling(&mut self, peer: &PeerId) {
        let Some(known) = self.siblings.get(peer).and_then(|s| s.known.as_ref()) else {
            return;
        };
        let record = known.encode();
        self.stage(vec![records::put(SIBLINGS, peer.to_bytes(), &record)]);
    }

    /// Takes in what the sibling `from` sent, directly or by mail: its ops,
    /// and what it holds. Nothing changes when either does not decode.
    /// Returns how many of the ops wait for earlier ones (held in memory
    /// only).
    fn take_from_sibling(
        &mut self,
        from: &PeerId,
        request: &SyncRequest,
        ops: &mut Vec<kith_store::Op>,
        events: &mut Vec<Event>,
    ) -> Result<usize, SyncRefusal> {
        let held = VersionVector::decode(&request.held).map_err(|_| SyncRefusal::Unreadable)?;
        let batch = if request.batch.is_empty() {
            Vec::new()
        } else {
            kith_sync::decode_batch(&request.batch).map_err(|_| SyncRefusal::Unreadable)?
        };
        let waiting = self.ingest_ops(batch, ops, events);
        if let Some(sibling) = self.siblings.get_mut(from) {
            sibling.known = Some(held);
        }
        self.keep_sibling(from);
        Ok(waiting)
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
        if self.siblings.is_empty() || self.removed() {
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
        let mut mail = Vec::new();
        for (peer, sibling) in &mut self.siblings {
            let lacking = sibling
                .mailed
                .as_ref()
                .or(sibling.known.as_ref())
                .is_none_or(|b| !b.covers(&held));
            if !(sibling.unreachable && lacking && !sibling.mailing && now >= sibling.next_mail) {
                continue;
            }
            match sibling.mail_due {
                None => sibling.mail_due = Some(now + MAIL_GATHER),
                Some(due) if now >= due => {
                    sibling.mail_due = None;
                    mail.push(*peer);
                }
                Some(_) => {}
            }
        }
        for peer in mail {
            self.mail_to_sibling(peer);
        }
    }

    /// Leaves the next ops `peer` lacks in the account's own mailbox.
    fn mail_to_sibling(&mut self, peer: PeerId) {
        let Some(list) = self.device_list.as_ref().map(SignedDeviceList::encode) else {
            return;
        };
        let Some(sibling) = self.siblings.get(&peer) else {
            return;
        };
        let base = sibling
            .mailed
            .clone()
            .or_else(|| sibling.known.clone())
            .unwrap_or_default();
        let ops = self
            .replica
            .missing_for(&base, kith_sync::MAX_BATCH_OPS, SYNC_MAIL_BYTES);
        if ops.is_empty() {
            return;
        }
        let Ok(batch) = kith_sync::encode_batch(&ops) else {
            return;
        };
        let after = base.after(&ops);
        let mail = Mail::Sync(SyncMail {
            from: self.net.peer_id().to_bytes(),
            to: peer.to_bytes(),
            request: SyncRequest {
                list,
                held: self.replica.version_vector().encode(),
                batch,
            },
        });
        if let Some(sibling) = self.siblings.get_mut(&peer) {
            sibling.mailing = true;
        }
        self.after_commit(move |actor, ok| {
            if ok {
                actor.spawn_sync_mail(peer, mail, after);
            } else if let Some(sibling) = actor.siblings.get_mut(&peer) {
                sibling.mailing = false;
            }
        });
    }

    fn spawn_sync_mail(&self, peer: PeerId, mail: Mail, after: VersionVector) {
        let account = std::sync::Arc::clone(&self.account_key);
        let to = self.identity.account.public();
        let settings = self.mailbox.clone();
        let net = self.net.clone();
        let done = self.done_tx.clone();
        tokio::spawn(async move {
            let ok = match seal_mail(&account, to, &mail, &settings).await {
                Ok(item) => kith_mailbox::user::deposit(&net, &item, settings.replicas, &[])
                    .await
                    .is_ok_and(|o| !o.accepted.is_empty()),
                Err(_) => false,
            };
            let _ = done
                .send(Done::SyncMailed {
                    peer,
                    after: ok.then_some(after),
                })
                .await;
        });
    }

    pub(super) fn on_sync_mailed(&mut self, peer: PeerId, after: Option<VersionVector>) {
        let retry_max = self.retry_max;
        let Some(sibling) = self.siblings.get_mut(&peer) else {
            return;
        };
        sibling.mailing = false;
        match after {
            Some(after) => {
                sibling.mailed = Some(after);
                sibling.next_mail = Instant::now();
            }
            None => {
                sibling.next_mail = Instant::now() + jitter(retry_max);
            }
        }
    }

    /// Ops a sibling left in our mailbox: taken in like a push if they are
    /// for this device. Returns whether the item is done with (to be
    /// acknowledged): items for another listed device stay for it.
    pub(super) fn take_sync_mail(
        &mut self,
        mail: SyncMail,
        ops: &mut Vec<kith_store::Op>,
        events: &mut Vec<Event>,
    ) -> bool {
        let me = self.net.peer_id();
        let (Ok(from), Ok(to)) = (PeerId::from_bytes(&mail.from), PeerId::from_bytes(&mail.to))
        else {
            return true;
        };
        if let Ok(list) = SignedDeviceList::decode(&mail.request.list) {
            self.adopt_list(list, events);
        }
        if to != me {
            // For a sibling: leave it, unless that device is gone.
            return !self.siblings.contains_key(&to);
        }
        if !self.siblings.contains_key(&from) {
            return true;
        }
        // Ops that wait for earlier ones live only in memory: keep the item
        // with the volunteers until the gap is filled. One that does not
        // decode is done with.
        !matches!(
            self.take_from_sibling(&from, &mail.request, ops, events),
            Ok(waiting) if waiting > 0
        )
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
        // The ops must be on disk before they leave: a crash must not let
        // this device reuse their counters for other ops.
        self.after_commit(move |actor, ok| {
            if !ok {
                if let Some(sibling) = actor.siblings.get_mut(&peer) {
                    sibling.in_flight = false;
                }
                return;
            }
            actor.spawn_push(peer, addresses, request);
        });
    }

    fn spawn_push(&self, peer: PeerId, addresses: Vec<Multiaddr>, request: Vec<u8>) {
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
                    sibling.unreachable = true;
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
                    sibling.unreachable = false;
                    sibling.mailed = None;
                    sibling.backoff = retry_min;
                    sibling.next_attempt = Instant::now();
                    self.keep_sibling(&peer);
                }
                Err(_) => {
                    sibling.next_attempt = Instant::now() + jitter(sibling.backoff);
                    sibling.backoff = (sibling.backoff * 2).min(retry_max);
                }
            },
            Ok(SyncResponse::NotListed(list)) => {
                sibling.backoff = retry_max;
                sibling.next_attempt = Instant::now() + jitter(retry_max);
                let mut events = Vec::new();
                if let Ok(list) = SignedDeviceList::decode(&list) {
                    self.adopt_list(list, &mut events);
                }
                for event in events {
                    self.emit(event);
                }
            }
            Ok(SyncResponse::Refused(_)) => {
                sibling.backoff = retry_max;
                sibling.next_attempt = Instant::now() + jitter(retry_max);
            }
            Err(_) => {
                sibling.addresses.clear();
                sibling.unreachable = true;
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
        if !listed || self.removed() {
            // Tell a removed device so: it then stops reading the
            // account's mail.
            match self.device_list.as_ref() {
                Some(list) if !listed => request.respond(frame::encode_sync_response(
                    &SyncResponse::NotListed(list.encode()),
                )),
                _ => refuse(request, SyncRefusal::NotListed),
            }
            return;
        }
        let mut ops = Vec::new();
        // Ops that wait for earlier ones are not stored; the sender learns
        // from the answer that they are not held and sends them again.
        if let Err(why) = self.take_from_sibling(&peer, &sync, &mut ops, &mut events) {
            refuse(request, why);
            return;
        }
        if let Some(sibling) = self.siblings.get_mut(&peer) {
            sibling.unreachable = false;
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

    /// Whether this device is off the account's newest list: it was
    /// removed on another device. It then neither syncs nor reads the
    /// account's mail (which would take friends' offline messages away from
    /// the devices still on the account).
    pub(super) fn removed(&self) -> bool {
        let me = self.net.peer_id();
        self.devices_listed()
            .is_some_and(|list| !list.contains(&me))
    }

    /// On shutdown: leaves what each device of the account that is not
    /// connected lacks in the account's mailbox at once (no gathering, no
    /// waiting to find it unreachable). Whether anything is on its way.
    pub(super) fn start_parting_mail(&mut self) -> bool {
        if self.removed() || self.connected.is_empty() {
            return false;
        }
        let held = self.replica.version_vector();
        let lacking: Vec<PeerId> = self
            .siblings
            .iter()
            .filter(|(peer, s)| !self.connected.contains(*peer) && !s.mailing)
            .filter(|(_, s)| {
                s.mailed
                    .as_ref()
                    .or(s.known.as_ref())
                    .is_none_or(|b| !b.covers(&held))
            })
            .map(|(peer, _)| *peer)
            .collect();
        for peer in lacking {
            self.mail_to_sibling(peer);
        }
        !self.parting_done()
    }

    /// Whether no mail to another device is on its way.
    pub(super) fn parting_done(&self) -> bool {
        !self.siblings.values().any(|s| s.mailing)
    }

    /// Tells a device just removed, if it can be reached, that it is off
    /// the list (a sync request with the new list and no ops); it adopts
    /// the list and stops. One that cannot be reached learns it from the
    /// answer to its next push.
    pub(super) fn tell_removed(&self, peer: PeerId, addresses: Vec<Multiaddr>) {
        let Some(list) = self.device_list.as_ref().map(SignedDeviceList::encode) else {
            return;
        };
        let request = frame::encode_sync_request(&SyncRequest {
            list,
            held: VersionVector::new().encode(),
            batch: Vec::new(),
        });
        let net = self.net.clone();
        tokio::spawn(async move {
            let _ = net.request(peer, addresses, request).await;
        });
    }

    /// Where a sibling was last reached.
    pub(super) fn sibling_addresses(&self, peer: &PeerId) -> Vec<Multiaddr> {
        self.siblings
            .get(peer)
            .map(|s| s.addresses.clone())
            .unwrap_or_default()
    }
}
