//! Joining an account: the new device's side of linking (`docs/devices.md`,
//! "Link protocol").
//!
//! Before it belongs to any account, the new device runs a bare network
//! node with its own device key, shows a [`LinkCode`] naming that key, a
//! one-time secret and where it listens, and answers link requests with a
//! [`Joiner`]. When an existing device of the account proves the secret
//! and hands over the account, [`Joining::next_offer`] returns the offer
//! for the user to confirm (the account's name and Kith ID); only
//! [`Joining::accept`] commits anything — through the caller's `commit`,
//! which writes the identity and seeds the store ([`seed_store`]) —
//! and only then answers with this device's proof.

use std::time::Duration;

use futures::StreamExt;
use kith_net::{InboundRequest, Multiaddr, Protocol};
use kith_proto::DeviceKeypair;
use kith_proto::link::{LinkBundle, LinkCode, LinkCodeError};
use kith_store::{Op, Store};
use kith_sync::link::{JoinStatus, JoinStep, Joiner, PendingOffer, is_link_frame};

use crate::records::{self, DEVICE_LIST, DISPLAY_NAME, SETTINGS, SYNC_INBOX};

/// Most addresses a link code carries.
const MAX_CODE_ADDRESSES: usize = 4;
/// Longest address a link code carries, in bytes.
const MAX_ADDRESS_BYTES: usize = 64;
/// How long the node stays up after accepting, so the answer reaches the
/// existing device.
const LINGER: Duration = Duration::from_secs(2);

/// Why joining failed. Nothing was committed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JoinFailure {
    /// The network node could not start.
    #[error(transparent)]
    Net(#[from] kith_net::StartError),
    /// The node has no address to put in a code.
    #[error("the network node is not listening anywhere: {0}")]
    NoAddress(String),
    /// The code could not be made.
    #[error(transparent)]
    Code(#[from] LinkCodeError),
    /// The code expired before an existing device linked.
    #[error("the link code expired; start again for a new one")]
    Expired,
    /// Too many failed attempts: the code may have leaked.
    #[error("too many failed link attempts; start again for a new code")]
    GaveUp,
    /// The network node stopped.
    #[error("the network node stopped")]
    Stopped,
    /// Committing the account failed (the caller's error).
    #[error("could not store the account: {0}")]
    Commit(String),
}

/// A new device waiting to be linked.
pub struct Joining {
    client: kith_net::Client,
    events: std::pin::Pin<Box<dyn futures::Stream<Item = kith_net::Event> + Send>>,
    joiner: Joiner,
    code: LinkCode,
    device: DeviceKeypair,
    waiting: Option<InboundRequest>,
}

impl std::fmt::Debug for Joining {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Joining")
            .field("device", &self.client.peer_id())
            .finish_non_exhaustive()
    }
}

/// Starts a node for `net.keypair` (no presence: the device has no
/// account yet) and makes its link code.
pub async fn start(mut net: kith_net::Config) -> Result<Joining, JoinFailure> {
    net.presence = None;
    let device = net.keypair.clone();
    let (client, events, event_loop) = kith_net::new(net, None)?;
    tokio::spawn(event_loop.run());
    let listening = client
        .listen_addrs()
        .await
        .map_err(|e| JoinFailure::NoAddress(e.to_string()))?;
    let addresses = code_addresses(listening);
    if addresses.is_empty() {
        return Err(JoinFailure::NoAddress("no usable address".into()));
    }
    let (code, _secret) = LinkCode::generate(&device, addresses, now_secs())?;
    let joiner = Joiner::new(code.clone(), client.peer_id());
    Ok(Joining {
        client,
        events: Box::pin(events),
        joiner,
        code,
        device,
        waiting: None,
    })
}

/// Up to four addresses of at most 64 bytes: LAN and public ones first,
/// loopback last, no `/p2p` suffix (the code names the device).
fn code_addresses(mut listening: Vec<Multiaddr>) -> Vec<Vec<u8>> {
    let is_loopback = |a: &Multiaddr| {
        a.iter().any(|p| match p {
            Protocol::Ip4(ip) => ip.is_loopback() || ip.is_unspecified(),
            Protocol::Ip6(ip) => ip.is_loopback() || ip.is_unspecified(),
            _ => false,
        })
    };
    listening.sort_by_key(is_loopback);
    listening
        .into_iter()
        .map(|a| {
            let mut a = a;
            while matches!(a.iter().last(), Some(Protocol::P2p(_))) {
                a.pop();
            }
            a.to_vec()
        })
        .filter(|bytes| bytes.len() <= MAX_ADDRESS_BYTES)
        .take(MAX_CODE_ADDRESSES)
        .collect()
}

fn now_secs() -> u64 {
    kith_proto::wire::Timestamp::now().0 / 1000
}

impl Joining {
    /// The code to show (text and QR).
    pub fn code(&self) -> &LinkCode {
        &self.code
    }

    /// This device's key, to keep as the device key of the new profile.
    pub fn device(&self) -> &DeviceKeypair {
        &self.device
    }

    /// Answers link requests until one carries a proven offer, which the
    /// user must now accept or decline. Fails when the code expires or too
    /// many attempts fail.
    pub async fn next_offer(&mut self) -> Result<PendingOffer, JoinFailure> {
        loop {
            match self.joiner.status(now_secs()) {
                JoinStatus::Expired => return Err(JoinFailure::Expired),
                JoinStatus::GaveUp | JoinStatus::Linked => return Err(JoinFailure::GaveUp),
                _ => {}
            }
            let left = self.code.expires().saturating_sub(now_secs());
            let event =
                match tokio::time::timeout(Duration::from_secs(left.max(1)), self.events.next())
                    .await
                {
                    Ok(Some(event)) => event,
                    Ok(None) => return Err(JoinFailure::Stopped),
                    // The loop top reports the expiry.
                    Err(_) => continue,
                };
            let kith_net::Event::Request(request) = event else {
                continue;
            };
            if !is_link_frame(&request.data) {
                // Not for a device without an account: no answer.
                continue;
            }
            match self
                .joiner
                .on_request(request.peer, &request.data, now_secs())
            {
                JoinStep::Respond(bytes) => request.respond(bytes),
                JoinStep::Offered(offer) => {
                    self.waiting = Some(request);
                    return Ok(offer);
                }
            }
        }
    }

    /// The user said no: the offering device is told, and the code stays
    /// usable (a decline counts as a failed attempt).
    pub fn decline(&mut self, offer: PendingOffer) {
        let answer = self.joiner.decline(offer);
        if let Some(request) = self.waiting.take() {
            request.respond(answer);
        }
    }

    /// The user accepted: runs `commit` with the account handed over
    /// (write the identity with [`Joining::device`] as the device key, and
    /// [`seed_store`]), then answers the existing device with this
    /// device's proof and stops the node. If `commit` fails, the existing
    /// device is refused and nothing is linked.
    pub async fn accept<E: std::fmt::Display>(
        mut self,
        offer: PendingOffer,
        commit: impl FnOnce(&LinkBundle) -> Result<(), E>,
    ) -> Result<LinkBundle, JoinFailure> {
        let Some(request) = self.waiting.take() else {
            return Err(JoinFailure::Stopped);
        };
        if let Err(e) = commit(offer.bundle()) {
            request.respond(self.joiner.decline(offer));
            return Err(JoinFailure::Commit(e.to_string()));
        }
        let (answer, bundle) = self
            .joiner
            .accept(offer)
            .map_err(|e| JoinFailure::Commit(e.to_string()))?;
        request.respond(answer);
        tokio::time::sleep(LINGER).await;
        Ok(bundle)
    }
}

/// Seeds a new profile's store with what the existing device handed over:
/// the device list, the display name, and the history batch, which the
/// engine takes in when it first starts.
pub fn seed_store(store: &Store, bundle: &LinkBundle) -> Result<(), kith_store::StoreError> {
    let mut ops = vec![
        Op::put(SETTINGS, DEVICE_LIST, bundle.device_list.encode()),
        records::put(SETTINGS, DISPLAY_NAME.to_vec(), &bundle.display_name),
    ];
    if !bundle.sync.is_empty() {
        ops.push(records::put(
            SYNC_INBOX,
            0u64.to_be_bytes().to_vec(),
            &bundle.sync,
        ));
    }
    store.apply_durable(ops)
}
