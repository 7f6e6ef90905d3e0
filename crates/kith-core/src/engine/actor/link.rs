//! Linking a new device, the existing device's side (`docs/devices.md`,
//! "Link protocol"), and the account's device list as `kith device list`
//! shows it.
//!
//! The new list and the bundle are made when the user enters the code; a
//! task runs the two round trips of [`kith_sync::link::Linker`]; only a
//! [`kith_sync::link::Linked`] (the new device proved the secret) lets the
//! actor store the new list. Any failure leaves the stored list as it was.

use kith_net::{Multiaddr, NetError};
use kith_proto::devices::{ListedDevice, SignedDeviceList};
use kith_proto::link::{LinkBundle, LinkCode};
use kith_sync::VersionVector;
use kith_sync::link::{Linked, Linker, MAX_LINK_SYNC_BYTES};

use super::{Actor, Done, now_secs, store_error};
use crate::engine::{DeviceInfo, EngineError, Reply};
use crate::records::{DEVICE_LIST, SETTINGS};

/// What a finished link task reports.
pub(super) struct LinkDone {
    pub(super) list: SignedDeviceList,
    pub(super) result: Result<Linked, String>,
    pub(super) reply: Reply<DeviceInfo>,
}

impl Actor {
    /// Starts linking the device showing `code`; answers `reply` when done.
    pub(super) fn link_device(
        &mut self,
        code: LinkCode,
        name: Option<String>,
        reply: Reply<DeviceInfo>,
    ) {
        if self.linking {
            let _ = reply.send(Err(busy_linking()));
            return;
        }
        match self.prepare_link(&code, name) {
            Ok((list, bundle, linker, hello)) => {
                self.linking = true;
                let addresses: Vec<Multiaddr> = code
                    .addresses()
                    .iter()
                    .filter_map(|bytes| Multiaddr::try_from(bytes.clone()).ok())
                    .collect();
                let net = self.net.clone();
                let done = self.done_tx.clone();
                tokio::spawn(async move {
                    let result = run_link(&net, linker, hello, addresses, &bundle).await;
                    drop(bundle);
                    let _ = done
                        .send(Done::Linked(Box::new(LinkDone {
                            list,
                            result,
                            reply,
                        })))
                        .await;
                });
            }
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }

    #[allow(clippy::type_complexity)]
    fn prepare_link(
        &mut self,
        code: &LinkCode,
        name: Option<String>,
    ) -> Result<(SignedDeviceList, LinkBundle, Linker, Vec<u8>), EngineError> {
        let now = now_secs();
        let link_error = |e: &dyn std::fmt::Display| EngineError::Link(e.to_string());
        let current = self
            .devices_listed()
            .cloned()
            .ok_or_else(|| EngineError::Link("this device has no valid device list".into()))?;
        let new_peer = code.peer_id();
        if current.contains(&new_peer) {
            return Err(EngineError::Link(
                "that device is already on this account's device list".into(),
            ));
        }
        let name = name.unwrap_or_else(|| format!("device {}", current.devices.len() + 1));
        let next = current
            .with(
                ListedDevice::new(&new_peer, name, now),
                current.seq + 1,
                now,
            )
            .and_then(|list| list.signed(&self.identity.account))
            .map_err(|e| link_error(&e))?;
        let (linker, hello) =
            Linker::new(code, self.net.peer_id(), now).map_err(|e| link_error(&e))?;
        let bundle = LinkBundle {
            account: kith_proto::AccountKeypair::from_secret_bytes(
                &self.identity.account.secret_bytes(),
            ),
            nospam: self.identity.nospam,
            display_name: self.display_name.clone(),
            device_list: next.clone(),
            sync: self.batch_for(&VersionVector::new(), MAX_LINK_SYNC_BYTES),
        };
        Ok((next, bundle, linker, hello))
    }

    /// A link task finished: stores the new list if the new device proved
    /// the secret.
    pub(super) fn on_linked(&mut self, done: LinkDone) {
        let LinkDone {
            list,
            result,
            reply,
        } = done;
        self.linking = false;
        let linked = match result {
            Ok(linked) => linked,
            Err(e) => {
                let _ = reply.send(Err(EngineError::Link(e)));
                return;
            }
        };
        let account = self.identity.account.public();
        let (Ok(new), Some(current)) = (list.verify(&account), self.devices_listed()) else {
            let _ = reply.send(Err(EngineError::Link(
                "the new device list is invalid".into(),
            )));
            return;
        };
        if !new.supersedes(current) {
            let _ = reply.send(Err(EngineError::Link(
                "the device list changed while linking; link again".into(),
            )));
            return;
        }
        let info = new.get(&linked.new_device()).map(|d| DeviceInfo {
            peer_id: linked.new_device(),
            name: d.name.clone(),
            added_at: d.added_at,
            this_device: false,
            online: self.connected.contains(&linked.new_device()),
        });
        let stored = self
            .apply(vec![kith_store::Op::put(
                SETTINGS,
                DEVICE_LIST,
                list.encode(),
            )])
            .map_err(|e| store_error(e.to_string()));
        match (stored, info) {
            (Ok(()), Some(info)) => {
                self.device_list = Some(list);
                self.refresh_siblings();
                self.device_list_changed();
                self.reply_after_commit(reply, info);
            }
            (Err(e), _) => {
                let _ = reply.send(Err(e));
            }
            (Ok(()), None) => {
                let _ = reply.send(Err(EngineError::Link(
                    "the new device is missing from its own list".into(),
                )));
            }
        }
    }

    /// The devices of the newest list.
    pub(super) fn device_infos(&self) -> Result<Vec<DeviceInfo>, EngineError> {
        let me = self.net.peer_id();
        let list = self
            .devices_listed()
            .ok_or_else(|| EngineError::Store("no valid device list".into()))?;
        Ok(list
            .devices
            .iter()
            .filter_map(|d| {
                let peer = d.peer()?;
                Some(DeviceInfo {
                    peer_id: peer,
                    name: d.name.clone(),
                    added_at: d.added_at,
                    this_device: peer == me,
                    online: peer == me || self.connected.contains(&peer),
                })
            })
            .collect())
    }
}

impl Actor {
    /// Leaves the device `query` names off a new list, stores it and tells
    /// friends and the other devices.
    pub(super) fn remove_device(&mut self, query: &str) -> Result<DeviceInfo, EngineError> {
        if self.linking {
            return Err(busy_linking());
        }
        let infos = self.device_infos()?;
        let wanted = query.trim();
        let matches: Vec<&DeviceInfo> = infos
            .iter()
            .filter(|d| {
                d.name.eq_ignore_ascii_case(wanted)
                    || (wanted.len() >= 6 && d.peer_id.to_string().starts_with(wanted))
            })
            .collect();
        let device = match matches.as_slice() {
            [one] => (*one).clone(),
            [] => {
                return Err(EngineError::Invalid(format!(
                    "no device of this account matches '{wanted}'; `kith device list` shows them"
                )));
            }
            more => {
                return Err(EngineError::Ambiguous {
                    query: wanted.into(),
                    matches: more
                        .iter()
                        .map(|d| d.name.clone())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
        };
        if device.this_device {
            return Err(EngineError::Invalid(
                "a device cannot remove itself; remove it from another of your devices".into(),
            ));
        }
        let current = self
            .devices_listed()
            .cloned()
            .ok_or_else(|| EngineError::Store("no valid device list".into()))?;
        let now = now_secs();
        let next = current
            .without(&device.peer_id, current.seq + 1, now)
            .and_then(|list| list.signed(&self.identity.account))
            .map_err(|e| EngineError::Invalid(e.to_string()))?;
        self.apply(vec![kith_store::Op::put(
            SETTINGS,
            DEVICE_LIST,
            next.encode(),
        )])?;
        self.device_list = Some(next);
        let (device_peer, addresses) = (device.peer_id, self.sibling_addresses(&device.peer_id));
        self.refresh_siblings();
        self.after_commit(move |actor, ok| {
            if ok {
                actor.tell_removed(device_peer, addresses);
            }
        });
        // The other devices learn of the list with the next exchange.
        for sibling in self.siblings.keys().copied().collect::<Vec<_>>() {
            self.sibling_connected(&sibling);
        }
        self.device_list_changed();
        Ok(device)
    }
}

/// The two round trips; an error is the reason to show.
async fn run_link(
    net: &kith_net::Client,
    mut linker: Linker,
    hello: Vec<u8>,
    addresses: Vec<Multiaddr>,
    bundle: &LinkBundle,
) -> Result<Linked, String> {
    let peer = linker.new_device();
    let reach = |e: NetError| match e {
        NetError::Dial { .. } | NetError::Timeout => format!(
            "could not reach the new device ({e}); check that it still shows the code and that both are online"
        ),
        other => format!("the connection to the new device failed: {other}"),
    };
    let challenge = net.request(peer, addresses, hello).await.map_err(reach)?;
    let offer = linker
        .offer(&challenge, bundle)
        .map_err(|e| e.to_string())?;
    let answer = net.request(peer, Vec::new(), offer).await.map_err(reach)?;
    linker.finish(&answer).map_err(|e| e.to_string())
}

fn busy_linking() -> EngineError {
    EngineError::Link("another device is being linked; try again when that is done".into())
}
