//! A [`Volunteer`] at work on a network node: it answers the mailbox
//! requests the node receives, deletes expired items on a timer, and hands
//! items on as the closest set of an address changes. `kithd` runs one by
//! default; a desktop client runs one when the user opts in.
//!
//! The volunteer's store does blocking disk writes (every accepted item is
//! flushed before the answer), so it lives on its own thread and takes
//! [`Job`]s from a bounded queue; the network side only forwards requests
//! ([`VolunteerHandle::offer`]). A request that finds the queue full is
//! dropped unanswered, which the sender sees as a failed request and
//! retries elsewhere.
//!
//! **Hand-off.** Every [`ServiceSettings::handoff_every`], for each address
//! it holds items for, the service finds the `replicas` closest volunteers
//! (peers that turn the protocol down are skipped and remembered for a
//! while) and compares distances with its own ID. Items go, byte for byte
//! with their receipts, to members of that set that have not taken them
//! from us yet; a member is a volunteer that holds every item after the
//! round (one that refuses some, rate-limits us or cannot be reached is
//! passed over). When this node is no longer in the set, it deletes an
//! item only once `replicas` members hold it. The signed expiry never
//! changes.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kith_net::{Client, InboundRequest, NetError, Peer, PeerId, sort_by_distance};
use kith_proto::mailbox::{DepositRefusal, ItemId, MailboxAddress};
use tokio::sync::{mpsc, oneshot};

use crate::protocol::Response;
use crate::volunteer::{Usage, Volunteer};

/// Capacity of the volunteer's job queue.
pub const QUEUE_CAPACITY: usize = 1024;
/// Most (item, peer) hand-offs remembered, so items are not pushed again
/// every round.
const MAX_HANDED: usize = 65_536;
/// How long a peer that does not volunteer is skipped.
const NOT_VOLUNTEER_FOR: Duration = Duration::from_secs(3600);

/// Timers and replication of a running volunteer.
#[derive(Debug, Clone)]
pub struct ServiceSettings {
    /// How often expired items are deleted (also once at start).
    pub sweep_every: Duration,
    /// How often the closest sets are checked for hand-offs.
    pub handoff_every: Duration,
    /// Volunteers per address ([`kith_proto::mailbox::DEFAULT_REPLICAS`]).
    pub replicas: usize,
}

impl Default for ServiceSettings {
    fn default() -> Self {
        Self {
            sweep_every: Duration::from_secs(60),
            handoff_every: Duration::from_secs(600),
            replicas: kith_proto::mailbox::DEFAULT_REPLICAS,
        }
    }
}

/// What the volunteer's thread is asked to do.
enum Job {
    Request(InboundRequest),
    Sweep,
    Usage(oneshot::Sender<Usage>),
    Addresses(oneshot::Sender<Vec<MailboxAddress>>),
    Handoffs(MailboxAddress, oneshot::Sender<Vec<(ItemId, Vec<u8>)>>),
    Remove(MailboxAddress, Vec<ItemId>),
    Holds(MailboxAddress, oneshot::Sender<Vec<ItemId>>),
}

/// A handle on a running volunteer. Cheap to clone; the volunteer stops
/// when the last handle is dropped.
#[derive(Clone)]
pub struct VolunteerHandle {
    jobs: mpsc::Sender<Job>,
}

impl std::fmt::Debug for VolunteerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VolunteerHandle").finish_non_exhaustive()
    }
}

impl VolunteerHandle {
    /// Queues a mailbox request for an answer. `false` when the queue is
    /// full or the volunteer has stopped: the request is dropped and the
    /// sender's request fails.
    pub fn offer(&self, request: InboundRequest) -> bool {
        self.jobs.try_send(Job::Request(request)).is_ok()
    }

    /// What the volunteer holds now; `None` once it has stopped.
    pub async fn usage(&self) -> Option<Usage> {
        let (tx, rx) = oneshot::channel();
        self.jobs.send(Job::Usage(tx)).await.ok()?;
        rx.await.ok()
    }

    /// The items held for `address`; empty once the volunteer has
    /// stopped.
    pub async fn holds(&self, address: MailboxAddress) -> Vec<ItemId> {
        let (tx, rx) = oneshot::channel();
        if self.jobs.send(Job::Holds(address, tx)).await.is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    async fn addresses(&self) -> Vec<MailboxAddress> {
        let (tx, rx) = oneshot::channel();
        if self.jobs.send(Job::Addresses(tx)).await.is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    async fn handoffs(&self, address: MailboxAddress) -> Vec<(ItemId, Vec<u8>)> {
        let (tx, rx) = oneshot::channel();
        if self.jobs.send(Job::Handoffs(address, tx)).await.is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Starts `volunteer` for the node behind `net`: a thread for the store, a
/// task for the timers and hand-offs. Feed it the node's
/// [`kith_net::Event::MailboxRequest`]s through the returned handle. Must
/// be called inside a Tokio runtime.
pub fn start(net: Client, volunteer: Volunteer, settings: ServiceSettings) -> VolunteerHandle {
    let (jobs, queue) = mpsc::channel(QUEUE_CAPACITY);
    let handle = VolunteerHandle { jobs };
    // Dropped when the thread ends (every handle gone): the timer task
    // then ends too, releasing its network client.
    let (ended_tx, mut ended) = oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("kith-volunteer".into())
        .spawn(move || {
            serve(volunteer, queue);
            drop(ended_tx);
        })
        .map_err(|e| tracing::error!("could not start the volunteer thread: {e}"))
        .ok();
    let weak = handle.jobs.downgrade();
    let sweep_jobs = weak.clone();
    let sweep_every = settings.sweep_every.max(Duration::from_secs(1));
    // The two timers run in tasks of their own, so a long hand-off round
    // never holds up the sweep. Both end with the volunteer's thread.
    let (ended_tx, _) = tokio::sync::watch::channel(());
    let mut sweep_ended = ended_tx.subscribe();
    let mut handoff_ended = ended_tx.subscribe();
    tokio::spawn(async move {
        let _ = (&mut ended).await;
        drop(ended_tx);
    });
    tokio::spawn(async move {
        let mut sweep = tokio::time::interval(sweep_every);
        loop {
            tokio::select! {
                _ = sweep_ended.changed() => break,
                _ = sweep.tick() => {
                    let Some(jobs) = sweep_jobs.upgrade() else { break };
                    if jobs.send(Job::Sweep).await.is_err() {
                        break;
                    }
                }
            }
        }
    });
    tokio::spawn(async move {
        let mut handoff = tokio::time::interval(settings.handoff_every.max(Duration::from_secs(1)));
        // The first hand-off waits one period: the routing table fills
        // first.
        handoff.tick().await;
        let mut state = Handoff::default();
        loop {
            tokio::select! {
                _ = handoff_ended.changed() => break,
                _ = handoff.tick() => {
                    let Some(jobs) = weak.upgrade() else { break };
                    state
                        .round(&net, &VolunteerHandle { jobs }, settings.replicas)
                        .await;
                }
            }
        }
    });
    handle
}

fn serve(mut volunteer: Volunteer, mut queue: mpsc::Receiver<Job>) {
    while let Some(job) = queue.blocking_recv() {
        match job {
            Job::Request(request) => {
                let answer = volunteer.handle(request.peer, &request.data, now_ms());
                request.respond(answer);
            }
            Job::Sweep => match volunteer.sweep(now_ms() / 1000) {
                Ok(0) => {}
                Ok(n) => tracing::debug!(items = n, "expired mailbox items deleted"),
                Err(e) => tracing::warn!("mailbox sweep failed: {e}"),
            },
            Job::Usage(reply) => {
                let _ = reply.send(volunteer.usage());
            }
            Job::Addresses(reply) => {
                let _ = reply.send(volunteer.addresses().unwrap_or_else(|e| {
                    tracing::warn!("mailbox addresses unreadable: {e}");
                    Vec::new()
                }));
            }
            Job::Handoffs(address, reply) => {
                let _ = reply.send(volunteer.handoff_requests(&address).unwrap_or_else(|e| {
                    tracing::warn!("mailbox items unreadable: {e}");
                    Vec::new()
                }));
            }
            Job::Holds(address, reply) => {
                let _ = reply.send(volunteer.holds(&address).unwrap_or_default());
            }
            Job::Remove(address, ids) => {
                if let Err(e) = volunteer.remove(&address, &ids) {
                    tracing::warn!("could not delete handed-off items: {e}");
                }
            }
        }
    }
    tracing::debug!("volunteer stopped");
}

/// Hand-off state kept between rounds.
#[derive(Default)]
struct Handoff {
    handed: HashSet<(ItemId, PeerId)>,
    not_volunteers: HashMap<PeerId, Instant>,
}

impl Handoff {
    async fn round(&mut self, net: &Client, handle: &VolunteerHandle, replicas: usize) {
        let now = Instant::now();
        self.not_volunteers.retain(|_, until| *until > now);
        if self.handed.len() > MAX_HANDED {
            self.handed.clear();
        }
        for address in handle.addresses().await {
            self.address(net, handle, address, replicas).await;
        }
    }

    async fn address(
        &mut self,
        net: &Client,
        handle: &VolunteerHandle,
        address: MailboxAddress,
        replicas: usize,
    ) {
        let Ok(candidates) = net.closest_peers(address.to_vec()).await else {
            return;
        };
        let items = handle.handoffs(address).await;
        if items.is_empty() {
            return;
        }
        // Walk the closest list, keeping the first `replicas` that take
        // items (or already did); stop early once we are further than all
        // of them.
        let me = net.peer_id();
        let mut members: Vec<Peer> = Vec::new();
        // Members of the set known to hold each item.
        let mut holders: HashMap<ItemId, usize> = HashMap::new();
        let mut me_inside = false;
        for peer in candidates {
            if !me_inside && closer(&address, me, peer.peer_id) {
                me_inside = true;
            }
            if members.len() + usize::from(me_inside) >= replicas {
                break;
            }
            if self.not_volunteers.contains_key(&peer.peer_id) {
                continue;
            }
            // A member is a volunteer that now holds every item; one that
            // refuses some, is rate limiting us or cannot be reached is
            // passed over this round.
            let mut holds_all = true;
            let mut taken = Vec::new();
            for (id, request) in &items {
                if self.handed.contains(&(*id, peer.peer_id)) {
                    taken.push(*id);
                    continue;
                }
                match net
                    .mailbox_request(peer.peer_id, peer.addresses.clone(), request.clone())
                    .await
                {
                    Ok(answer) => match Response::decode(&answer) {
                        Ok(Response::Accepted { .. }) => {
                            self.handed.insert((*id, peer.peer_id));
                            taken.push(*id);
                        }
                        Ok(response) => {
                            holds_all = false;
                            let refusal = response.refusal();
                            tracing::debug!(peer = %peer.peer_id, ?refusal, "hand-off refused");
                            if matches!(refusal, Some(DepositRefusal::RateLimited { .. })) {
                                break;
                            }
                        }
                        Err(_) => {
                            holds_all = false;
                            break;
                        }
                    },
                    Err(NetError::Unsupported(_)) => {
                        holds_all = false;
                        self.not_volunteers
                            .insert(peer.peer_id, now_plus(NOT_VOLUNTEER_FOR));
                        break;
                    }
                    Err(e) => {
                        holds_all = false;
                        tracing::debug!(peer = %peer.peer_id, "hand-off failed: {e}");
                        break;
                    }
                }
            }
            if holds_all {
                for id in taken {
                    *holders.entry(id).or_default() += 1;
                }
                members.push(peer);
            }
        }
        let still_member = me_inside || members.len() < replicas;
        if !still_member {
            let gone: Vec<ItemId> = items
                .iter()
                .map(|(id, _)| *id)
                .filter(|id| holders.get(id).copied().unwrap_or(0) >= replicas)
                .collect();
            if !gone.is_empty() {
                tracing::debug!(
                    items = gone.len(),
                    "left an address's closest set: items handed on"
                );
                let _ = handle.jobs.send(Job::Remove(address, gone)).await;
            }
        }
    }
}

/// Whether `a` is closer to `key` than `b`.
fn closer(key: &[u8], a: PeerId, b: PeerId) -> bool {
    let mut pair = [b, a];
    sort_by_distance(key, &mut pair);
    pair[0] == a
}

fn now_plus(d: Duration) -> Instant {
    Instant::now() + d
}
