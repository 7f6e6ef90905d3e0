//! Connection limits: libp2p's counts of established and pending
//! connections ([`crate::ConnectionLimits`]), and a cap on the inbound
//! handshakes pending from one IP address.
//!
//! An inbound connection is pending from the moment it is accepted until
//! Noise and Yamux are negotiated, or for at most 10 s (the transport
//! timeout libp2p's `SwarmBuilder` puts around every upgrade). With only a
//! total limit on pending connections, one host that opens that many
//! sockets, says nothing, and opens new ones as the old time out keeps
//! every other peer from connecting. So pending inbound connections are
//! also counted per remote address: per IPv4 address, and per /64 for
//! IPv6 (what one subscriber is usually given). An attacker then needs
//! `max_pending / max_pending_per_ip` addresses to fill the total.
//!
//! Established connections have no per-IP limit: carrier-grade NAT puts
//! many users behind one address, each with their own peer ID, and those
//! are limited per peer. Pending handshakes are short (milliseconds), so
//! a few per address leave room for everyone behind it. Relayed
//! connections (the relay server limits its circuits) and the in-process
//! memory transport are not counted per address.
//!
//! Nothing here opens connections or streams; the handler is libp2p's
//! dummy.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::task::{Context, Poll};

use libp2p::core::transport::PortUse;
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm, dummy,
};
use libp2p::{PeerId, connection_limits};

use crate::config::ConnectionLimits;

/// The remote address a pending handshake is counted under: an IPv4
/// address, or the first 64 bits of an IPv6 one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Origin {
    V4(u32),
    V6(u64),
}

impl Origin {
    /// Where a connection from `remote` comes from, if it is a direct one
    /// from an IP address.
    fn of(remote: &Multiaddr) -> Option<Self> {
        if remote.iter().any(|p| matches!(p, Protocol::P2pCircuit)) {
            return None;
        }
        let ip = match remote.iter().next()? {
            Protocol::Ip4(ip) => IpAddr::V4(ip),
            Protocol::Ip6(ip) => IpAddr::V6(ip),
            _ => return None,
        };
        Some(match ip.to_canonical() {
            IpAddr::V4(ip) => Origin::V4(ip.to_bits()),
            IpAddr::V6(ip) => {
                let prefix = ip.to_bits() >> 64;
                Origin::V6(u64::try_from(prefix).unwrap_or(u64::MAX))
            }
        })
    }
}

/// More inbound handshakes pending from one address than allowed.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("{limit} inbound connections from this address are being set up already")]
pub(crate) struct PendingPerIpExceeded {
    limit: u32,
}

/// libp2p's connection limits and the per-address cap on pending inbound
/// handshakes.
pub(crate) struct Behaviour {
    counts: connection_limits::Behaviour,
    max_pending_per_ip: u32,
    /// The pending inbound connections counted here, and where from: at
    /// most the total pending limit, as `counts` is asked first.
    pending: HashMap<ConnectionId, Origin>,
    per_origin: HashMap<Origin, u32>,
}

impl Behaviour {
    pub(crate) fn new(limits: &ConnectionLimits) -> Self {
        let counts = connection_limits::ConnectionLimits::default()
            .with_max_established(Some(limits.max_established))
            .with_max_established_per_peer(Some(limits.max_established_per_peer))
            .with_max_pending_incoming(Some(limits.max_pending))
            .with_max_pending_outgoing(Some(limits.max_pending));
        Self {
            counts: connection_limits::Behaviour::new(counts),
            max_pending_per_ip: limits.max_pending_per_ip,
            pending: HashMap::new(),
            per_origin: HashMap::new(),
        }
    }

    fn settled(&mut self, connection: ConnectionId) {
        let Some(origin) = self.pending.remove(&connection) else {
            return;
        };
        if let Some(count) = self.per_origin.get_mut(&origin) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.per_origin.remove(&origin);
            }
        }
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_pending_inbound_connection(
        &mut self,
        connection: ConnectionId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        // The total first; when this address is over its share, the swarm
        // reports the denial to `counts` too, which forgets the connection.
        self.counts
            .handle_pending_inbound_connection(connection, local, remote)?;
        let Some(origin) = Origin::of(remote) else {
            return Ok(());
        };
        let count = self.per_origin.entry(origin).or_default();
        if *count >= self.max_pending_per_ip {
            tracing::debug!(%remote, "inbound connection refused: too many pending from its address");
            return Err(ConnectionDenied::new(PendingPerIpExceeded {
                limit: self.max_pending_per_ip,
            }));
        }
        *count += 1;
        self.pending.insert(connection, origin);
        Ok(())
    }

    fn handle_established_inbound_connection(
        &mut self,
        connection: ConnectionId,
        peer: PeerId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.settled(connection);
        self.counts
            .handle_established_inbound_connection(connection, peer, local, remote)
    }

    fn handle_pending_outbound_connection(
        &mut self,
        connection: ConnectionId,
        peer: Option<PeerId>,
        addresses: &[Multiaddr],
        role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        self.counts
            .handle_pending_outbound_connection(connection, peer, addresses, role)
    }

    fn handle_established_outbound_connection(
        &mut self,
        connection: ConnectionId,
        peer: PeerId,
        address: &Multiaddr,
        role: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.counts
            .handle_established_outbound_connection(connection, peer, address, role, port_use)
    }

    fn on_swarm_event(&mut self, event: FromSwarm<'_>) {
        // A handshake that failed or was refused, here or by another
        // behaviour (which may refuse before this one hears of it as
        // established).
        if let FromSwarm::ListenFailure(failure) = &event {
            self.settled(failure.connection_id);
        }
        self.counts.on_swarm_event(event);
    }

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        self.counts
            .on_connection_handler_event(peer, connection, event);
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ToSwarm<Infallible, THandlerInEvent<Self>>> {
        self.counts.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> Multiaddr {
        text.parse().unwrap()
    }

    #[test]
    fn handshakes_are_counted_per_ipv4_address_and_per_ipv6_slash_64() {
        let a = Origin::of(&addr("/ip4/203.0.113.7/tcp/4001"));
        assert_eq!(a, Origin::of(&addr("/ip4/203.0.113.7/udp/9/quic-v1")));
        assert_ne!(a, Origin::of(&addr("/ip4/203.0.113.8/tcp/4001")));
        let b = Origin::of(&addr("/ip6/2001:db8:1:2::1/tcp/4001"));
        assert!(b.is_some());
        assert_eq!(b, Origin::of(&addr("/ip6/2001:db8:1:2:ffff::9/tcp/5")));
        assert_ne!(b, Origin::of(&addr("/ip6/2001:db8:1:3::1/tcp/4001")));
        // An IPv4 peer on a dual-stack socket is its IPv4 address.
        assert_eq!(a, Origin::of(&addr("/ip6/::ffff:203.0.113.7/tcp/1")));
        // Relayed and in-process connections are not counted.
        assert_eq!(
            Origin::of(&addr(
                "/ip4/203.0.113.7/tcp/4001/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN/p2p-circuit"
            )),
            None
        );
        assert_eq!(Origin::of(&addr("/memory/5")), None);
    }

    fn pending(
        limits: &mut Behaviour,
        id: usize,
        remote: &str,
    ) -> Result<ConnectionId, ConnectionDenied> {
        let id = ConnectionId::new_unchecked(id);
        limits
            .handle_pending_inbound_connection(id, &addr("/ip4/0.0.0.0/tcp/1"), &addr(remote))
            .map(|()| id)
    }

    #[test]
    fn an_address_gets_its_share_of_pending_handshakes_and_the_rest_stay_for_others() {
        let mut limits = Behaviour::new(&ConnectionLimits {
            max_pending: 5,
            max_pending_per_ip: 2,
            ..ConnectionLimits::default()
        });
        let first = pending(&mut limits, 1, "/ip4/10.0.0.1/tcp/1").unwrap();
        pending(&mut limits, 2, "/ip4/10.0.0.1/tcp/2").unwrap();
        let refused = pending(&mut limits, 3, "/ip4/10.0.0.1/tcp/3").unwrap_err();
        assert!(refused.downcast::<PendingPerIpExceeded>().is_ok());
        pending(&mut limits, 4, "/ip4/10.0.0.2/tcp/1").unwrap();
        pending(&mut limits, 5, "/memory/1").unwrap();
        // The total still applies.
        let refused = pending(&mut limits, 6, "/ip4/10.0.0.3/tcp/1").unwrap_err();
        assert!(refused.downcast::<connection_limits::Exceeded>().is_ok());
        // One of the first address's handshakes ends: it may start another.
        limits.settled(first);
        assert_eq!(limits.per_origin.get(&Origin::V4(0x0a00_0001)), Some(&1));
        assert_eq!(limits.pending.len(), 2);
    }
}
