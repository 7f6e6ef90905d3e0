//! Closest-peer queries: the DHT servers nearest a key, such as the
//! volunteers for a mailbox address.
//!
//! A [`Command::Closest`](crate::client::Command) starts a Kademlia
//! `GET_CLOSEST_PEERS` query; its reply waits here until the query ends.
//! A query that times out still answers with the peers it found. At most
//! [`MAX_CLOSEST_QUERIES`] run at once; more are refused as busy.

use libp2p::kad::{self, KBucketKey};
use libp2p::{Multiaddr, PeerId};

use super::EventLoop;
use crate::client::{NetError, Peer, Reply};

/// Closest-peer queries in flight at once.
pub(crate) const MAX_CLOSEST_QUERIES: usize = 64;

/// A query in flight.
pub(super) struct Query {
    key: Vec<u8>,
    reply: Reply<Vec<Peer>>,
}

/// Sorts `peers` by XOR distance from `key` in Kademlia's key space
/// (SHA-256 of the key and of each peer ID), closest first.
pub fn sort_by_distance(key: &[u8], peers: &mut [PeerId]) {
    let target = KBucketKey::new(key.to_vec());
    peers.sort_by_cached_key(|peer| target.distance(&KBucketKey::from(*peer)));
}

impl EventLoop {
    pub(super) fn closest_peers(&mut self, key: Vec<u8>, reply: Reply<Vec<Peer>>) {
        if self.closest.len() >= MAX_CLOSEST_QUERIES {
            let _ = reply.send(Err(NetError::Busy("closest-peer queries")));
            return;
        }
        let id = self
            .swarm
            .behaviour_mut()
            .kad
            .get_closest_peers(key.clone());
        self.closest.insert(id, Query { key, reply });
    }

    pub(super) fn on_closest(
        &mut self,
        id: kad::QueryId,
        result: Result<kad::GetClosestPeersOk, kad::GetClosestPeersError>,
    ) {
        let Some(query) = self.closest.remove(&id) else {
            return;
        };
        let found = match result {
            Ok(ok) => ok.peers,
            Err(kad::GetClosestPeersError::Timeout { peers, .. }) => peers,
        };
        let local = *self.swarm.local_peer_id();
        let mut peers: Vec<(PeerId, Vec<Multiaddr>)> = found
            .into_iter()
            .filter(|info| info.peer_id != local)
            .map(|info| (info.peer_id, info.addrs))
            .collect();
        let mut order: Vec<PeerId> = peers.iter().map(|(peer, _)| *peer).collect();
        sort_by_distance(&query.key, &mut order);
        peers.sort_by_key(|(peer, _)| order.iter().position(|p| p == peer));
        peers.dedup_by_key(|(peer, _)| *peer);
        let answer = if peers.is_empty() {
            Err(NetError::NotFound)
        } else {
            Ok(peers
                .into_iter()
                .map(|(peer_id, addresses)| Peer { peer_id, addresses })
                .collect())
        };
        let _ = query.reply.send(answer);
    }
}
