//! Prometheus metrics: libp2p's own (connections, Kademlia, Identify,
//! Ping, relay, DCUtR, bandwidth) plus Kith's counters of records stored
//! and refused (presence and request drops) and of direct requests
//! dropped.

use libp2p::metrics::{Metrics, Recorder};
use libp2p::swarm::SwarmEvent;
use libp2p::{dcutr, identify, kad, ping, relay};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// Recorders the event loop feeds.
pub(crate) struct NetMetrics {
    libp2p: Metrics,
    stored: Counter,
    refused: Family<ReasonLabel, Counter>,
    drops_stored: Counter,
    drops_refused: Family<ReasonLabel, Counter>,
    requests_dropped: Family<ReasonLabel, Counter>,
}

impl NetMetrics {
    pub(crate) fn new(registry: &mut Registry) -> Self {
        let libp2p = Metrics::new(registry);
        let kith = registry.sub_registry_with_prefix("kith");
        let stored = Counter::default();
        kith.register(
            "presence_records_stored",
            "Presence records accepted and stored for other nodes",
            stored.clone(),
        );
        let refused = Family::<ReasonLabel, Counter>::default();
        kith.register(
            "presence_records_refused",
            "Presence records refused, by reason",
            refused.clone(),
        );
        let drops_stored = Counter::default();
        kith.register(
            "request_drops_stored",
            "Request drops accepted and stored for other nodes",
            drops_stored.clone(),
        );
        let drops_refused = Family::<ReasonLabel, Counter>::default();
        kith.register(
            "request_drops_refused",
            "Request drops refused, by reason",
            drops_refused.clone(),
        );
        let requests_dropped = Family::<ReasonLabel, Counter>::default();
        kith.register(
            "requests_dropped",
            "Inbound direct requests dropped unanswered, by reason",
            requests_dropped.clone(),
        );
        Self {
            libp2p,
            stored,
            refused,
            drops_stored,
            drops_refused,
            requests_dropped,
        }
    }

    pub(crate) fn record_swarm<E>(&self, event: &SwarmEvent<E>) {
        self.libp2p.record(event);
    }

    pub(crate) fn record_kad(&self, event: &kad::Event) {
        self.libp2p.record(event);
    }

    pub(crate) fn record_identify(&self, event: &identify::Event) {
        self.libp2p.record(event);
    }

    pub(crate) fn record_ping(&self, event: &ping::Event) {
        self.libp2p.record(event);
    }

    pub(crate) fn record_relay(&self, event: &relay::Event) {
        self.libp2p.record(event);
    }

    pub(crate) fn record_dcutr(&self, event: &dcutr::Event) {
        self.libp2p.record(event);
    }

    pub(crate) fn record_stored(&self) {
        self.stored.inc();
    }

    pub(crate) fn record_refused(&self, reason: &'static str) {
        self.refused.get_or_create(&ReasonLabel { reason }).inc();
    }

    pub(crate) fn record_drop_stored(&self) {
        self.drops_stored.inc();
    }

    pub(crate) fn record_drop_refused(&self, reason: &'static str) {
        self.drops_refused
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    pub(crate) fn record_request_dropped(&self, reason: &'static str) {
        self.requests_dropped
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }
}
