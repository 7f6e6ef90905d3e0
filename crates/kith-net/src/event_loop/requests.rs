//! Requests over the two request-response protocols: direct messages
//! (`/kith/msg/1.0.0`) and offline mail (`/kith/mailbox/1.0.0`). Each has
//! its own [`Requests`] state; the logic is shared.
//!
//! Outbound: a [`Command::Request`](crate::client::Command) is sent at once
//! if fewer than [`MAX_REQUESTS_PER_PEER`] requests to that peer are in
//! flight, and queued otherwise; its `oneshot` reply waits in a map keyed by
//! request ID until the answer or a failure arrives, and then the peer's
//! next queued request goes out. libp2p's request-response behaviour uses an
//! existing connection or dials the given addresses.
//!
//! Inbound: each request becomes an [`Event::Request`] (or
//! [`Event::MailboxRequest`]) holding a one-shot
//! responder, while the loop keeps libp2p's response channel and a future
//! that resolves when the responder answers, is dropped, or the request
//! timeout passes. At most `max_inbound_requests` wait at once; more, like
//! requests the event queue has no room for, are dropped unanswered, which
//! the sender sees as an error.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use futures::FutureExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use libp2p::core::upgrade::NegotiationError;
use libp2p::request_response::{
    self, InboundFailure, InboundRequestId, OutboundFailure, OutboundRequestId, ResponseChannel,
};
use libp2p::{Multiaddr, PeerId};
use tokio::sync::oneshot;

use super::{Event, EventLoop};
use crate::client::{NetError, Reply};
use crate::config::Config;
use crate::message::{Channel, Codec, InboundRequest, frame_too_large};

/// Most requests to one peer in flight at once; more wait in a queue.
pub(crate) const MAX_REQUESTS_PER_PEER: usize = 64;

type ResponseWait = BoxFuture<'static, (InboundRequestId, Option<Vec<u8>>)>;

struct Queued {
    addresses: Vec<Multiaddr>,
    data: Vec<u8>,
    reply: Reply<Vec<u8>>,
}

/// The request state the event loop keeps.
pub(super) struct Requests {
    max_inbound: usize,
    max_outbound: usize,
    timeout: Duration,
    outbound: HashMap<OutboundRequestId, (PeerId, Reply<Vec<u8>>)>,
    in_flight: HashMap<PeerId, usize>,
    queued: HashMap<PeerId, VecDeque<Queued>>,
    queued_count: usize,
    /// The last dial error for a peer we have requests in flight to, so a
    /// failed request can say why.
    pub(super) dial_errors: HashMap<PeerId, String>,
    responders: HashMap<InboundRequestId, ResponseChannel<Vec<u8>>>,
    /// Inbound requests per peer not yet answered on the wire (answered,
    /// dropped or failed): a relayed connection is not closed under them.
    answering: HashMap<PeerId, usize>,
    /// When we last finished writing an answer to each peer (only while
    /// connected to it).
    answered: HashMap<PeerId, Instant>,
    /// Resolves with the answer to an inbound request, or `None` when its
    /// responder was dropped or timed out.
    pub(super) responses: FuturesUnordered<ResponseWait>,
}

impl Requests {
    pub(super) fn new(config: &Config) -> Self {
        Self {
            max_inbound: config.max_inbound_requests.max(1),
            max_outbound: config.max_outbound_requests.max(1),
            timeout: config.timers.request_timeout,
            outbound: HashMap::new(),
            in_flight: HashMap::new(),
            queued: HashMap::new(),
            queued_count: 0,
            dial_errors: HashMap::new(),
            responders: HashMap::new(),
            answering: HashMap::new(),
            answered: HashMap::new(),
            responses: FuturesUnordered::new(),
        }
    }

    /// Whether a request to or from `peer` is still under way.
    pub(super) fn busy_with(&self, peer: &PeerId) -> bool {
        self.in_flight.contains_key(peer) || self.answering.contains_key(peer)
    }

    /// Forgets the inbound requests of a peer we are no longer connected
    /// to (their failures may never be reported).
    pub(super) fn forget_inbound(&mut self, peer: &PeerId) {
        self.answering.remove(peer);
        self.answered.remove(peer);
    }

    /// When we last finished writing an answer to `peer`.
    pub(super) fn last_answer(&self, peer: &PeerId) -> Option<Instant> {
        self.answered.get(peer).copied()
    }

    fn inbound_done(&mut self, peer: &PeerId) {
        if let Some(count) = self.answering.get_mut(peer) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.answering.remove(peer);
            }
        }
    }

    pub(super) fn note_dial_error(&mut self, peer: PeerId, reason: &str) {
        if self.in_flight.contains_key(&peer) {
            self.dial_errors.insert(peer, reason.to_owned());
        }
    }
}

impl EventLoop {
    fn requests_of(&mut self, channel: Channel) -> &mut Requests {
        match channel {
            Channel::Message => &mut self.requests,
            Channel::Mailbox => &mut self.mailbox_requests,
        }
    }

    fn behaviour_of(
        &mut self,
        channel: Channel,
    ) -> Option<&mut request_response::Behaviour<Codec>> {
        let behaviour = self.swarm.behaviour_mut();
        match channel {
            Channel::Message => behaviour.messages.as_mut(),
            Channel::Mailbox => Some(&mut behaviour.mailbox),
        }
    }

    pub(super) fn request(
        &mut self,
        channel: Channel,
        peer: PeerId,
        addresses: Vec<Multiaddr>,
        data: Vec<u8>,
        reply: Reply<Vec<u8>>,
    ) {
        let requests = self.requests_of(channel);
        if requests.outbound.len() + requests.queued_count >= requests.max_outbound {
            let _ = reply.send(Err(NetError::Busy("requests")));
            return;
        }
        if channel == Channel::Message && !self.swarm.behaviour().messages.is_enabled() {
            let _ = reply.send(Err(NetError::Request(
                "DHT nodes do not send direct requests".into(),
            )));
            return;
        }
        if peer == *self.swarm.local_peer_id() {
            let _ = reply.send(Err(NetError::Request(
                "cannot send a request to this device itself".into(),
            )));
            return;
        }
        let queued = Queued {
            addresses,
            data,
            reply,
        };
        let requests = self.requests_of(channel);
        if requests.in_flight.get(&peer).copied().unwrap_or(0) < MAX_REQUESTS_PER_PEER {
            self.send_request(channel, peer, queued);
        } else {
            requests.queued.entry(peer).or_default().push_back(queued);
            requests.queued_count += 1;
        }
    }

    fn send_request(&mut self, channel: Channel, peer: PeerId, request: Queued) {
        let Some(behaviour) = self.behaviour_of(channel) else {
            let _ = request.reply.send(Err(NetError::Stopped));
            return;
        };
        let id = behaviour.send_request_with_addresses(&peer, request.data, request.addresses);
        let requests = self.requests_of(channel);
        requests.outbound.insert(id, (peer, request.reply));
        *requests.in_flight.entry(peer).or_default() += 1;
    }

    /// Answers an outbound request and sends the peer's next queued one.
    fn request_done(
        &mut self,
        channel: Channel,
        id: OutboundRequestId,
        result: Result<Vec<u8>, NetError>,
    ) {
        let requests = self.requests_of(channel);
        let Some((peer, reply)) = requests.outbound.remove(&id) else {
            return;
        };
        let _ = reply.send(result);
        if let Some(count) = requests.in_flight.get_mut(&peer) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                requests.in_flight.remove(&peer);
                requests.dial_errors.remove(&peer);
            }
        }
        let next = requests.queued.get_mut(&peer).and_then(VecDeque::pop_front);
        if requests.queued.get(&peer).is_some_and(VecDeque::is_empty) {
            requests.queued.remove(&peer);
        }
        if let Some(next) = next {
            requests.queued_count = requests.queued_count.saturating_sub(1);
            self.send_request(channel, peer, next);
        }
        self.relays_superseded(peer);
    }

    fn outbound_error(
        &mut self,
        channel: Channel,
        peer: PeerId,
        error: OutboundFailure,
    ) -> NetError {
        match error {
            OutboundFailure::DialFailure => NetError::Dial {
                peer,
                reason: self
                    .requests_of(channel)
                    .dial_errors
                    .remove(&peer)
                    .unwrap_or_else(|| "no known address could be reached".into()),
            },
            OutboundFailure::Timeout => NetError::Timeout,
            OutboundFailure::ConnectionClosed => {
                NetError::Request("the connection closed before the answer came".into())
            }
            OutboundFailure::UnsupportedProtocols => {
                NetError::Unsupported(channel.protocol().to_string())
            }
            OutboundFailure::Io(e) => match frame_too_large(&e) {
                Some(frame) => NetError::TooLarge {
                    size: frame.size,
                    max: frame.max,
                },
                // With lazy negotiation the request is already on its way
                // when the peer turns the protocol down.
                None if e
                    .get_ref()
                    .and_then(|inner| inner.downcast_ref::<NegotiationError>())
                    .is_some_and(|n| matches!(n, NegotiationError::Failed)) =>
                {
                    NetError::Unsupported(channel.protocol().to_string())
                }
                None if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    NetError::Request("the peer closed the stream without answering".into())
                }
                None => NetError::Request(e.to_string()),
            },
        }
    }

    pub(super) fn on_request_event(
        &mut self,
        channel: Channel,
        event: request_response::Event<Vec<u8>, Vec<u8>>,
    ) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request_id,
                    request,
                    channel: response_channel,
                } => self.on_inbound_request(channel, peer, request_id, request, response_channel),
                request_response::Message::Response {
                    request_id,
                    response,
                } => self.request_done(channel, request_id, Ok(response)),
            },
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                let error = self.outbound_error(channel, peer, error);
                tracing::debug!(%peer, "request failed: {error}");
                self.request_done(channel, request_id, Err(error));
            }
            request_response::Event::InboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                let requests = self.requests_of(channel);
                requests.responders.remove(&request_id);
                requests.inbound_done(&peer);
                let reason = match &error {
                    InboundFailure::Io(e) if frame_too_large(e).is_some() => Some("too_large"),
                    InboundFailure::Timeout => Some("timeout"),
                    _ => None,
                };
                tracing::debug!(%peer, "inbound request failed: {error}");
                if let (Some(reason), Some(m)) = (reason, &self.metrics) {
                    m.record_request_dropped(reason);
                }
                self.relays_superseded(peer);
            }
            request_response::Event::ResponseSent { peer, .. } => {
                let requests = self.requests_of(channel);
                requests.inbound_done(&peer);
                requests.answered.insert(peer, Instant::now());
                self.relays_superseded(peer);
            }
        }
    }

    fn on_inbound_request(
        &mut self,
        channel: Channel,
        peer: PeerId,
        id: InboundRequestId,
        data: Vec<u8>,
        response_channel: ResponseChannel<Vec<u8>>,
    ) {
        // Counted by waiting futures, not channels: a future outlives its
        // channel when the connection closes first, until it times out.
        let requests = self.requests_of(channel);
        // Every inbound request ends in `ResponseSent` or `InboundFailure`
        // (dropped ones with `ResponseOmission`).
        *requests.answering.entry(peer).or_default() += 1;
        if requests.responses.len() >= requests.max_inbound {
            tracing::debug!(%peer, "inbound request dropped: too many waiting for an answer");
            if let Some(m) = &self.metrics {
                m.record_request_dropped("too_many_waiting");
            }
            return;
        }
        let (responder, answer) = oneshot::channel();
        let timeout = requests.timeout;
        requests.responders.insert(id, response_channel);
        requests.responses.push(
            async move {
                let answer = tokio::time::timeout(timeout, answer).await;
                (id, answer.ok().and_then(Result::ok))
            }
            .boxed(),
        );
        // When the event queue is full the request is dropped, and with it
        // the responder: the future above resolves at once and the sender
        // gets an error, and retries.
        let request = InboundRequest::new(peer, data, responder);
        let event = match channel {
            Channel::Message => Event::Request(request),
            Channel::Mailbox => Event::MailboxRequest(request),
        };
        if !self.try_emit(event)
            && let Some(m) = &self.metrics
        {
            m.record_request_dropped("queue_full");
        }
    }

    /// The application answered an inbound request (`Some`), or dropped it
    /// or let it time out (`None`).
    pub(super) fn on_response(
        &mut self,
        channel: Channel,
        id: InboundRequestId,
        response: Option<Vec<u8>>,
    ) {
        let Some(response_channel) = self.requests_of(channel).responders.remove(&id) else {
            return;
        };
        let Some(data) = response else {
            // Dropping the channel tells the sender there is no answer.
            return;
        };
        let max = channel.max_response();
        if data.len() > max {
            tracing::warn!(
                bytes = data.len(),
                max,
                "response over the size limit not sent"
            );
            if let Some(m) = &self.metrics {
                m.record_request_dropped("response_too_large");
            }
            return;
        }
        if let Some(behaviour) = self.behaviour_of(channel) {
            // Fails only when the stream is already gone.
            let _ = behaviour.send_response(response_channel, data);
        }
    }
}
