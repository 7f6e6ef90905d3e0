//! The user side of offline mail, over a [`kith_net::Client`]: leave an
//! item with the volunteers closest to the recipient's mailbox address
//! ([`deposit`]), collect one's own mail from them ([`fetch`]) and tell
//! them to delete what was stored ([`acknowledge`]).
//!
//! Volunteers are the DHT servers closest to the address that speak
//! `/kith/mailbox/1.0.0`; a peer that does not volunteer turns the protocol
//! down at negotiation and the next closest is asked instead. Everything a
//! volunteer returns is checked here: receipts must verify, name the item
//! and come from the volunteer that answered (or, for carried receipts, at
//! least verify and name the item); fetched items must decode and be
//! addressed to our mailbox; challenges must name the volunteer we are
//! talking to. Whatever fails a check is dropped and counted, never
//! trusted.

use std::collections::{BTreeMap, HashSet};
use std::time::{SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use kith_net::{Client, NetError, Peer, PeerId};
use kith_proto::AccountKeypair;
use kith_proto::mailbox::{
    DepositRefusal, FetchAck, FetchChallenge, ItemId, MAX_ACK_ITEMS, MAX_POW_DIFFICULTY,
    MailboxAddress, MailboxItem, WitnessReceipt, mailbox_address, peer_id_of,
};

use crate::protocol::{Request, Response};

/// Most candidates a deposit or fetch asks, closest first (Kademlia
/// returns at most 20).
pub const MAX_CANDIDATES: usize = 20;
/// Most pages taken from one volunteer in one fetch.
pub const MAX_PAGES: usize = 64;
/// Most distinct items one fetch returns; the rest wait for the next.
pub const MAX_FETCH_ITEMS: usize = 8192;

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Why one volunteer did not take an item.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DepositError {
    /// The volunteer refused it, with its reason.
    #[error(transparent)]
    Refused(DepositRefusal),
    /// The volunteer could not be reached or did not answer.
    #[error(transparent)]
    Net(NetError),
    /// The answer was not a valid acceptance (a bad receipt, say).
    #[error("the volunteer's answer was not valid: {0}")]
    BadAnswer(String),
}

/// A volunteer that took an item, and its signed receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The volunteer.
    pub volunteer: PeerId,
    /// Its receipt: the item ID and when it took it.
    pub receipt: WitnessReceipt,
}

/// What a deposit achieved.
#[derive(Debug, Clone, Default)]
pub struct DepositOutcome {
    /// Volunteers that keep the item.
    pub accepted: Vec<Accepted>,
    /// Volunteers asked that did not, and why. Peers that do not volunteer
    /// at all are left out.
    pub refused: Vec<(PeerId, DepositError)>,
}

impl DepositOutcome {
    /// The refusal to show when no volunteer took the item: the first
    /// typed refusal, if any volunteer gave one.
    pub fn refusal(&self) -> Option<DepositRefusal> {
        self.refused.iter().find_map(|(_, e)| match e {
            DepositError::Refused(r) => Some(*r),
            _ => None,
        })
    }
}

/// Leaves `item` with up to `want` volunteers closest to its address,
/// skipping `exclude` (volunteers that already hold it). Asks `want` at a
/// time and moves down the closest list as some refuse or cannot be
/// reached. A volunteer asking for more proof of work than the item has
/// (up to [`MAX_POW_DIFFICULTY`]) gets the same envelope re-signed at its
/// difficulty. Fails only when no candidate could be found at all.
pub async fn deposit(
    net: &Client,
    item: &MailboxItem,
    want: usize,
    exclude: &[PeerId],
) -> Result<DepositOutcome, NetError> {
    let candidates: Vec<Peer> = net
        .closest_peers(item.address.to_vec())
        .await?
        .into_iter()
        .filter(|p| !exclude.contains(&p.peer_id))
        .take(MAX_CANDIDATES)
        .collect();
    let mut outcome = DepositOutcome::default();
    let mut next = candidates.into_iter();
    let mut running = FuturesUnordered::new();
    loop {
        while outcome.accepted.len() + running.len() < want {
            let Some(peer) = next.next() else { break };
            running.push(deposit_one(net, peer, item));
        }
        let Some((peer, result)) = running.next().await else {
            break;
        };
        match result {
            Ok(receipt) => outcome.accepted.push(Accepted {
                volunteer: peer,
                receipt,
            }),
            Err(DepositError::Net(NetError::Unsupported(_))) => {}
            Err(e) => outcome.refused.push((peer, e)),
        }
        if outcome.accepted.len() >= want {
            break;
        }
    }
    Ok(outcome)
}

async fn deposit_one(
    net: &Client,
    peer: Peer,
    item: &MailboxItem,
) -> (PeerId, Result<WitnessReceipt, DepositError>) {
    let id = peer.peer_id;
    let mut current = item.clone();
    // One re-sign at most: a volunteer that asks for more twice is not
    // asked again.
    for _ in 0..2 {
        match deposit_once(net, &peer, &current).await {
            Err(DepositError::Refused(DepositRefusal::WeakProofOfWork { required }))
                if required <= MAX_POW_DIFFICULTY
                    && u32::from(required) > current.work_bits().min(u32::from(u8::MAX)) =>
            {
                match resign(&current, required).await {
                    Some(stronger) => current = stronger,
                    None => break,
                }
            }
            other => return (id, other),
        }
    }
    (
        id,
        Err(DepositError::Refused(DepositRefusal::WeakProofOfWork {
            required: MAX_POW_DIFFICULTY,
        })),
    )
}

/// The same envelope under a fresh one-time key at `difficulty` bits; the
/// work runs off the async threads.
async fn resign(item: &MailboxItem, difficulty: u8) -> Option<MailboxItem> {
    let item = item.clone();
    tokio::task::spawn_blocking(move || {
        let secret = kith_proto::random_bytes::<32>();
        MailboxItem::sign_sealed(
            item.item_id,
            item.address,
            item.expires,
            item.sealed,
            &secret,
            difficulty,
        )
        .ok()
    })
    .await
    .ok()
    .flatten()
}

async fn deposit_once(
    net: &Client,
    peer: &Peer,
    item: &MailboxItem,
) -> Result<WitnessReceipt, DepositError> {
    let encoded = item
        .encode()
        .map_err(|e| DepositError::BadAnswer(format!("the item does not encode: {e}")))?;
    let request = Request::Deposit { item: encoded }
        .encode()
        .map_err(|e| DepositError::BadAnswer(e.to_string()))?;
    let answer = net
        .mailbox_request(peer.peer_id, peer.addresses.clone(), request)
        .await
        .map_err(DepositError::Net)?;
    match Response::decode(&answer).map_err(|e| DepositError::BadAnswer(e.to_string()))? {
        Response::Accepted { receipt } => {
            let receipt = WitnessReceipt::decode(&receipt)
                .map_err(|e| DepositError::BadAnswer(format!("receipt: {e}")))?;
            receipt
                .verify()
                .map_err(|e| DepositError::BadAnswer(format!("receipt: {e}")))?;
            if receipt.item_id != item.item_id {
                return Err(DepositError::BadAnswer(
                    "the receipt names another item".into(),
                ));
            }
            if receipt.volunteer_peer_id().ok() != Some(peer.peer_id) {
                return Err(DepositError::BadAnswer(
                    "the receipt is signed by another node".into(),
                ));
            }
            Ok(receipt)
        }
        response @ Response::Refused { .. } => Err(DepositError::Refused(
            response.refusal().unwrap_or(DepositRefusal::Malformed),
        )),
        other => Err(DepositError::BadAnswer(format!(
            "answered a deposit with {}",
            response_kind(&other)
        ))),
    }
}

fn response_kind(response: &Response) -> &'static str {
    match response {
        Response::Accepted { .. } => "an acceptance",
        Response::Refused { .. } => "a refusal",
        Response::Challenge { .. } => "a challenge",
        Response::Items { .. } => "items",
        Response::Acked { .. } => "an acknowledgement",
        Response::Denied(_) => "a denial",
    }
}

/// One item of our mailbox as fetched: the copy to open, the receipts
/// that came with byte-identical envelopes, and the volunteers that
/// served it.
#[derive(Debug, Clone)]
pub struct FetchedItem {
    /// The item.
    pub item: MailboxItem,
    /// Verified receipts naming it, at most one per volunteer (the
    /// earliest).
    pub receipts: Vec<WitnessReceipt>,
    /// Volunteers that served a copy.
    pub from: Vec<PeerId>,
}

/// What a fetch brought.
#[derive(Debug, Clone, Default)]
pub struct FetchOutcome {
    /// Distinct items, in item ID order.
    pub items: Vec<FetchedItem>,
    /// Volunteers that served us (to acknowledge to).
    pub volunteers: Vec<Peer>,
    /// Volunteers asked that failed, and why.
    pub failures: Vec<(PeerId, String)>,
    /// Items or receipts dropped because they did not check out.
    pub rejected: usize,
}

/// Collects `account`'s mail from the `ask` closest volunteers to its
/// mailbox address (peers that do not volunteer are passed over), `ask` at
/// a time: proves the account to each with its
/// challenge, takes every page, and merges the copies by item ID.
/// Items are not deleted: [`acknowledge`] them once stored.
pub async fn fetch(
    net: &Client,
    account: &AccountKeypair,
    ask: usize,
) -> Result<FetchOutcome, NetError> {
    let address = mailbox_address(&account.public());
    let candidates = net.closest_peers(address.to_vec()).await?;
    Ok(fetch_from(net, account, candidates, ask).await)
}

/// [`fetch`] from `candidates` (taken in order, at most
/// [`MAX_CANDIDATES`]) without looking up the closest peers first: for a
/// device that remembers the volunteers that served its last fetch, which
/// saves the DHT query (most of a fetch's traffic) while they stay the
/// closest.
pub async fn fetch_from(
    net: &Client,
    account: &AccountKeypair,
    candidates: Vec<Peer>,
    ask: usize,
) -> FetchOutcome {
    let address = mailbox_address(&account.public());
    let mut next = candidates.into_iter().take(MAX_CANDIDATES);
    let mut running = FuturesUnordered::new();
    let mut outcome = FetchOutcome::default();
    let mut by_id: BTreeMap<ItemId, FetchedItem> = BTreeMap::new();
    // Walk down the closest list, `ask` volunteers at a time, past peers
    // that do not volunteer, as deposits do: mail left beyond a few
    // non-volunteers is still found.
    loop {
        while outcome.volunteers.len() + outcome.failures.len() + running.len() < ask {
            let Some(peer) = next.next() else { break };
            running.push(fetch_one(net, account, &address, peer));
        }
        let Some((peer, result)) = running.next().await else {
            break;
        };
        match result {
            Ok((items, rejected)) => {
                outcome.rejected += rejected;
                for (item, receipts) in items {
                    merge(&mut by_id, item, receipts, peer.peer_id, &mut outcome);
                }
                outcome.volunteers.push(peer);
            }
            Err(FetchFailure::Unsupported) => {}
            Err(FetchFailure::Other(reason)) => outcome.failures.push((peer.peer_id, reason)),
        }
    }
    outcome.items = by_id.into_values().collect();
    outcome
}

fn merge(
    by_id: &mut BTreeMap<ItemId, FetchedItem>,
    item: MailboxItem,
    receipts: Vec<WitnessReceipt>,
    from: PeerId,
    outcome: &mut FetchOutcome,
) {
    if !by_id.contains_key(&item.item_id) && by_id.len() >= MAX_FETCH_ITEMS {
        return;
    }
    let entry = by_id.entry(item.item_id).or_insert_with(|| FetchedItem {
        item: item.clone(),
        receipts: Vec::new(),
        from: Vec::new(),
    });
    // A copy re-signed for a stricter volunteer differs outside the
    // envelope only; receipts for another envelope under the same ID are
    // not evidence for this one.
    if entry.item.sealed != item.sealed {
        outcome.rejected += 1;
        return;
    }
    if !entry.from.contains(&from) {
        entry.from.push(from);
    }
    for receipt in receipts {
        match entry
            .receipts
            .iter_mut()
            .find(|r| r.volunteer == receipt.volunteer)
        {
            Some(held) if held.received_at > receipt.received_at => *held = receipt,
            Some(_) => {}
            None => entry.receipts.push(receipt),
        }
    }
}

enum FetchFailure {
    Unsupported,
    Other(String),
}

impl From<NetError> for FetchFailure {
    fn from(e: NetError) -> Self {
        match e {
            NetError::Unsupported(_) => FetchFailure::Unsupported,
            other => FetchFailure::Other(other.to_string()),
        }
    }
}

type Page = (Vec<(MailboxItem, Vec<WitnessReceipt>)>, usize);

async fn ask(net: &Client, peer: &Peer, request: &Request) -> Result<Response, FetchFailure> {
    let bytes = request
        .encode()
        .map_err(|e| FetchFailure::Other(e.to_string()))?;
    let answer = net
        .mailbox_request(peer.peer_id, peer.addresses.clone(), bytes)
        .await?;
    Response::decode(&answer).map_err(|e| FetchFailure::Other(format!("bad answer: {e}")))
}

async fn fetch_one(
    net: &Client,
    account: &AccountKeypair,
    address: &MailboxAddress,
    peer: Peer,
) -> (Peer, Result<Page, FetchFailure>) {
    let result = fetch_pages(net, account, address, &peer).await;
    (peer, result)
}

async fn fetch_pages(
    net: &Client,
    account: &AccountKeypair,
    address: &MailboxAddress,
    peer: &Peer,
) -> Result<Page, FetchFailure> {
    let challenge = match ask(net, peer, &Request::Challenge { address: *address }).await? {
        Response::Challenge { challenge } => challenge,
        Response::Denied(denial) => return Err(FetchFailure::Other(denial.to_string())),
        other => {
            return Err(FetchFailure::Other(format!(
                "answered a challenge request with {}",
                response_kind(&other)
            )));
        }
    };
    let decoded = FetchChallenge::decode(&challenge)
        .map_err(|e| FetchFailure::Other(format!("challenge: {e}")))?;
    // The challenge must name the node we are talking to, or the proof
    // could be replayed at the node it does name.
    if peer_id_of(&decoded.volunteer) != Some(peer.peer_id) {
        return Err(FetchFailure::Other(
            "the challenge names another volunteer".into(),
        ));
    }
    decoded
        .check(address, &decoded.volunteer, unix_secs())
        .map_err(|e| FetchFailure::Other(format!("challenge: {e}")))?;
    let proof = decoded.answer(account).encode();
    let mut items = Vec::new();
    let mut rejected = 0;
    let mut after = None;
    for _ in 0..MAX_PAGES {
        let request = Request::Fetch {
            challenge: challenge.clone(),
            proof: proof.clone(),
            after,
        };
        let (page, more) = match ask(net, peer, &request).await? {
            Response::Items { items, more } => (items, more),
            Response::Denied(denial) => return Err(FetchFailure::Other(denial.to_string())),
            other => {
                return Err(FetchFailure::Other(format!(
                    "answered a fetch with {}",
                    response_kind(&other)
                )));
            }
        };
        let mut last = None;
        for stored in page {
            let Ok(item) = MailboxItem::decode(&stored.item) else {
                rejected += 1;
                continue;
            };
            last = Some(item.item_id);
            if item.address != *address {
                rejected += 1;
                continue;
            }
            let mut receipts = Vec::new();
            for bytes in &stored.receipts {
                match WitnessReceipt::decode(bytes) {
                    Ok(r) if r.item_id == item.item_id && r.verify().is_ok() => receipts.push(r),
                    _ => rejected += 1,
                }
            }
            items.push((item, receipts));
        }
        match (more, last) {
            (true, Some(last)) if Some(last) != after => after = Some(last),
            _ => break,
        }
    }
    Ok((items, rejected))
}

/// Tells `volunteers` that `account` has stored the items `ids`, so they
/// delete them: one signed acknowledgement per [`MAX_ACK_ITEMS`] IDs, sent
/// to every volunteer at once. Returns how many items the volunteers
/// reported deleted in all.
pub async fn acknowledge(
    net: &Client,
    account: &AccountKeypair,
    ids: &[ItemId],
    volunteers: &[Peer],
) -> u64 {
    let mut unique: Vec<ItemId> = Vec::with_capacity(ids.len());
    let mut seen = HashSet::new();
    for id in ids {
        if seen.insert(*id) {
            unique.push(*id);
        }
    }
    let mut requests = Vec::new();
    for chunk in unique.chunks(MAX_ACK_ITEMS) {
        let Ok(ack) = FetchAck::sign(account, chunk.to_vec()) else {
            continue;
        };
        let Ok(ack) = ack.encode() else { continue };
        if let Ok(request) = (Request::Ack { ack }).encode() {
            requests.push(request);
        }
    }
    let mut running = FuturesUnordered::new();
    for peer in volunteers {
        for request in &requests {
            running.push(net.mailbox_request(
                peer.peer_id,
                peer.addresses.clone(),
                request.clone(),
            ));
        }
    }
    let mut deleted = 0u64;
    while let Some(result) = running.next().await {
        if let Ok(answer) = result
            && let Ok(Response::Acked { deleted: n }) = Response::decode(&answer)
        {
            deleted += u64::from(n);
        }
    }
    deleted
}
