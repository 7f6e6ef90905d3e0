//! The node's mailbox volunteer: keeps sealed offline mail for the accounts
//! whose mailbox addresses are closest to this node.
//!
//! [`open`] opens the volunteer's own sled store in the `mailbox` folder of
//! the data folder, with the node key to sign witness receipts; [`crate::run`]
//! then starts it with [`kith_mailbox::service::start`] once the network is
//! up and forwards every [`kith_net::Event::MailboxRequest`] to its handle.
//! [`Metrics`] shows what it holds (`kithd_mailbox_items`,
//! `kithd_mailbox_bytes`, `kithd_mailbox_mailboxes`, read from the volunteer
//! on every scrape) and the requests dropped because its queue was full
//! (`kithd_mailbox_requests_dropped_total`).

use std::path::Path;
use std::sync::Arc;

use kith_mailbox::{Usage, Volunteer, VolunteerConfig, VolunteerError};
use kith_proto::DeviceKeypair;
use kith_store::{Backend, SledBackend};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::NodeError;
use crate::config::MailboxSettings;

/// The volunteer store's folder name in the data folder.
pub const MAILBOX_DIR: &str = "mailbox";

/// Opens the volunteer's store in `data_dir`/[`MAILBOX_DIR`] (created on
/// first start), sweeping what expired while the node was down. `key` is
/// the node key: it signs the receipts and names the node in challenges.
pub fn open(
    data_dir: &Path,
    key: DeviceKeypair,
    settings: &MailboxSettings,
) -> Result<Volunteer, NodeError> {
    let path = data_dir.join(MAILBOX_DIR);
    let failed = |reason: VolunteerError| NodeError::Mailbox {
        path: path.display().to_string(),
        reason,
    };
    let backend: Arc<dyn Backend> = Arc::new(
        SledBackend::open(&path)
            .map_err(|e| failed(VolunteerError::Open(kith_store::OpenError::Backend(e))))?,
    );
    let config = VolunteerConfig {
        limits: settings.limits.clone(),
        ..VolunteerConfig::default()
    };
    Volunteer::open(backend, key, config).map_err(failed)
}

/// The volunteer's metrics. Cheap to clone: clones share the values.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    items: Gauge,
    bytes: Gauge,
    mailboxes: Gauge,
    dropped: Counter,
}

impl Metrics {
    /// Registers the metrics in `registry` (under its prefix, `kithd`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "mailbox_items",
            "Offline mail items the volunteer holds",
            self.items.clone(),
        );
        registry.register(
            "mailbox_bytes",
            "Encoded bytes of the items the volunteer holds (what quotas count)",
            self.bytes.clone(),
        );
        registry.register(
            "mailbox_mailboxes",
            "Mailbox addresses the volunteer holds at least one item for",
            self.mailboxes.clone(),
        );
        registry.register(
            "mailbox_requests_dropped",
            "Mailbox requests dropped unanswered because the volunteer's queue was full",
            self.dropped.clone(),
        );
    }

    /// Shows `usage` as what the volunteer holds.
    pub fn record(&self, usage: Usage) {
        let gauge = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
        self.items.set(gauge(usage.items));
        self.bytes.set(gauge(usage.bytes));
        self.mailboxes.set(gauge(usage.mailboxes));
    }

    /// Counts a request dropped unanswered.
    pub fn request_dropped(&self) {
        let n = self.dropped.inc().saturating_add(1);
        if n.is_power_of_two() {
            tracing::warn!(
                dropped = n,
                "mailbox requests dropped: the volunteer is not keeping up"
            );
        }
    }
}
