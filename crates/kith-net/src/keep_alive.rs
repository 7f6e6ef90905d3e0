//! Keeps connections to chosen peers open while they are idle.
//!
//! libp2p closes a connection once no protocol has used it for
//! `idle_connection_timeout` (`docs/network.md`, Timers). That is right for
//! peers met in a DHT lookup, but a friend's device that stays connected is
//! how the engine knows the friend is online, and reopening the connection
//! for every message costs a lookup. The engine names the peers to keep
//! ([`crate::Client::keep_connected`]: its friends' devices and its
//! account's other devices); their connections stay open, pinged every
//! `ping_interval`, until either side closes them or the peer leaves the
//! set. Both ends of a connection decide for themselves: it stays open
//! only while neither side lets it idle out, so two friends keep each
//! other, and a stranger cannot pin a connection to us.
//!
//! Nothing here opens connections or sends bytes of its own: its handler
//! denies every stream and only answers libp2p's keep-alive question.

use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::task::{Context, Poll, Waker};

use libp2p::PeerId;
use libp2p::core::transport::PortUse;
use libp2p::core::upgrade::DeniedUpgrade;
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::swarm::handler::{ConnectionEvent, FullyNegotiatedInbound, FullyNegotiatedOutbound};
use libp2p::swarm::{
    ConnectionDenied, ConnectionHandlerEvent, ConnectionId, FromSwarm, NetworkBehaviour,
    NotifyHandler, SubstreamProtocol, THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
};

/// Most peers kept at once; the engine names friends' devices, which its
/// own limits bound well below this. Peers past it are not kept.
pub const MAX_KEPT_PEERS: usize = 4096;

/// The behaviour: which peers to keep, and their open connections.
#[derive(Default)]
pub(crate) struct Behaviour {
    kept: HashSet<PeerId>,
    connections: HashMap<PeerId, Vec<ConnectionId>>,
    /// Handlers to tell about a change, and what.
    notify: VecDeque<(PeerId, ConnectionId, bool)>,
    waker: Option<Waker>,
}

impl Behaviour {
    /// Replaces the set of kept peers (at most [`MAX_KEPT_PEERS`] of them)
    /// and tells the open connections whose answer changed.
    pub(crate) fn set_kept(&mut self, peers: impl IntoIterator<Item = PeerId>) {
        let kept: HashSet<PeerId> = peers.into_iter().take(MAX_KEPT_PEERS).collect();
        for (peer, connections) in &self.connections {
            let now = kept.contains(peer);
            if now != self.kept.contains(peer) {
                for connection in connections {
                    self.notify.push_back((*peer, *connection, now));
                }
            }
        }
        self.kept = kept;
        if !self.notify.is_empty()
            && let Some(waker) = self.waker.take()
        {
            waker.wake();
        }
    }

    fn handler(&mut self, peer: PeerId, connection: ConnectionId) -> Handler {
        self.connections.entry(peer).or_default().push(connection);
        Handler {
            keep: self.kept.contains(&peer),
        }
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = Handler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        connection: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler(peer, connection))
    }

    fn handle_established_outbound_connection(
        &mut self,
        connection: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler(peer, connection))
    }

    fn on_swarm_event(&mut self, event: FromSwarm<'_>) {
        if let FromSwarm::ConnectionClosed(closed) = event
            && let Some(connections) = self.connections.get_mut(&closed.peer_id)
        {
            connections.retain(|c| *c != closed.connection_id);
            if connections.is_empty() {
                self.connections.remove(&closed.peer_id);
            }
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        while let Some((peer_id, connection, keep)) = self.notify.pop_front() {
            // A connection that closed since the change needs no word.
            if self
                .connections
                .get(&peer_id)
                .is_some_and(|c| c.contains(&connection))
            {
                return Poll::Ready(ToSwarm::NotifyHandler {
                    peer_id,
                    handler: NotifyHandler::One(connection),
                    event: keep,
                });
            }
        }
        self.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// One connection's part: keep it open or not.
pub(crate) struct Handler {
    keep: bool,
}

impl libp2p::swarm::ConnectionHandler for Handler {
    type FromBehaviour = bool;
    type ToBehaviour = Infallible;
    type InboundProtocol = DeniedUpgrade;
    type OutboundProtocol = DeniedUpgrade;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = ();

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol> {
        SubstreamProtocol::new(DeniedUpgrade, ())
    }

    fn on_behaviour_event(&mut self, keep: bool) {
        self.keep = keep;
    }

    fn connection_keep_alive(&self) -> bool {
        self.keep
    }

    fn poll(
        &mut self,
        _: &mut Context<'_>,
    ) -> Poll<ConnectionHandlerEvent<Self::OutboundProtocol, (), Self::ToBehaviour>> {
        Poll::Pending
    }

    fn on_connection_event(
        &mut self,
        event: ConnectionEvent<'_, Self::InboundProtocol, Self::OutboundProtocol, (), ()>,
    ) {
        // Every stream is denied, so none is ever negotiated.
        match event {
            ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound {
                protocol, ..
            }) => match protocol {},
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound {
                protocol, ..
            }) => match protocol {},
            _ => {}
        }
    }
}
