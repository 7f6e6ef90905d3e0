//! `kithd` settings: a TOML file (`--config FILE`), overridden by flags.
//!
//! Every key is optional; see `packaging/kithd.toml` for a commented example.
//! [`NodeConfig::resolve`] merges the file and the flags over the defaults
//! and checks every value, naming the key of any that is impossible.
//!
//! The `[mailbox]` table sets the offline-mail volunteer, on by default:
//! what it accepts ([`Limits`]: quotas, longest lifetime, proof of work, the
//! deposit rate per peer) and its timers ([`ServiceSettings`]: expiry sweep
//! and hand-offs). `enabled = false` or `--no-mailbox` turn it off, and
//! [`NodeConfig::mailbox`] is then `None`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kith_mailbox::service::ServiceSettings;
use kith_net::{Multiaddr, RelayLimits};
use kith_proto::mailbox::{Limits, MAX_POW_DIFFICULTY};
use serde::Deserialize;

/// Largest config file read.
const MAX_CONFIG_BYTES: u64 = 256 * 1024;

/// Why the settings could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: kith_store::private::PrivateFileError,
    },
    /// The file is not valid TOML for kithd.
    #[error("{}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with line and column.
        message: String,
    },
    /// A setting has an impossible value.
    #[error("invalid setting {key}: {message}")]
    Invalid {
        /// Which setting.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// Relay limits as they appear in the file (`[relay]`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayFile {
    /// Reservations held at once.
    pub max_reservations: Option<usize>,
    /// Reservations per peer.
    pub max_reservations_per_peer: Option<usize>,
    /// Reservation lifetime in seconds.
    pub reservation_duration_secs: Option<u64>,
    /// Circuits relayed at once.
    pub max_circuits: Option<usize>,
    /// Circuits per peer.
    pub max_circuits_per_peer: Option<usize>,
    /// Longest circuit, in seconds.
    pub max_circuit_duration_secs: Option<u64>,
    /// Most bytes per circuit, both directions together.
    pub max_circuit_bytes: Option<u64>,
}

/// Mailbox volunteering as it appears in the file (`[mailbox]`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailboxFile {
    /// Whether the node keeps offline mail (default true).
    pub enabled: Option<bool>,
    /// Total quota in MiB of encoded items (default 256).
    pub quota_mb: Option<u64>,
    /// Quota per mailbox address in KiB (default 4096).
    pub mailbox_quota_kb: Option<u64>,
    /// Longest item lifetime accepted, in seconds (default 14 days).
    pub max_ttl_secs: Option<u64>,
    /// Proof-of-work bits required (default 17, at most
    /// [`MAX_POW_DIFFICULTY`]).
    pub pow_bits: Option<u32>,
    /// Deposits one peer may make per minute, sustained (default 30).
    pub deposits_per_minute: Option<u32>,
    /// Deposits one peer may make in a burst above that rate (default 10).
    pub burst: Option<u32>,
    /// Seconds between sweeps of expired items (default 60).
    pub sweep_secs: Option<u64>,
    /// Seconds between hand-off rounds (default 600).
    pub handoff_secs: Option<u64>,
}

/// The file's contents.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Where the node key lives.
    pub data_dir: Option<PathBuf>,
    /// Listen addresses.
    pub listen: Option<Vec<String>>,
    /// Publicly reachable addresses to announce.
    pub external: Option<Vec<String>>,
    /// Other nodes to join.
    pub bootstrap: Option<Vec<String>>,
    /// Metrics HTTP address; an empty string turns metrics off.
    pub metrics: Option<String>,
    /// Most connections in total.
    pub max_connections: Option<u32>,
    /// Most connections per peer.
    pub max_connections_per_peer: Option<u32>,
    /// Most connection handshakes under way from one IP address.
    pub max_pending_per_ip: Option<u32>,
    /// Relay limits.
    pub relay: Option<RelayFile>,
    /// Mailbox volunteering.
    pub mailbox: Option<MailboxFile>,
}

/// How the mailbox volunteer runs: what it accepts and its timers.
#[derive(Debug, Clone)]
pub struct MailboxSettings {
    /// What deposits are accepted: quotas, lifetime, proof of work, rate.
    pub limits: Limits,
    /// Expiry sweeps and hand-offs.
    pub service: ServiceSettings,
}

/// The settings `kithd` runs with, after file and flags are merged.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Folder for the node key and the mailbox store.
    pub data_dir: PathBuf,
    /// Listen addresses.
    pub listen: Vec<Multiaddr>,
    /// Announced external addresses.
    pub external: Vec<Multiaddr>,
    /// Other nodes to join.
    pub bootstrap: Vec<Multiaddr>,
    /// Where to serve Prometheus metrics, if anywhere.
    pub metrics: Option<SocketAddr>,
    /// Most connections in total.
    pub max_connections: u32,
    /// Most connections per peer.
    pub max_connections_per_peer: u32,
    /// Most connection handshakes under way from one IP address (an IPv6
    /// /64 counts as one): many users behind one carrier-grade NAT
    /// connecting at the same moment may need more.
    pub max_pending_per_ip: u32,
    /// Relay server limits.
    pub relay: RelayLimits,
    /// The mailbox volunteer's settings; `None` when it is off.
    pub mailbox: Option<MailboxSettings>,
}

/// Default listen addresses: TCP and QUIC on port 4747, all interfaces.
pub const DEFAULT_LISTEN: [&str; 2] = ["/ip4/0.0.0.0/tcp/4747", "/ip4/0.0.0.0/udp/4747/quic-v1"];
/// Default metrics address: loopback only.
pub const DEFAULT_METRICS: &str = "127.0.0.1:9747";

impl FileConfig {
    /// Reads and parses a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let bytes =
            kith_store::private::read_limited(path, MAX_CONFIG_BYTES).map_err(|source| {
                ConfigError::Read {
                    path: path.to_owned(),
                    source,
                }
            })?;
        let text = String::from_utf8(bytes).map_err(|_| ConfigError::Parse {
            path: path.to_owned(),
            message: "not UTF-8 text".into(),
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }
}

fn parse_addrs(key: &'static str, values: &[String]) -> Result<Vec<Multiaddr>, ConfigError> {
    values
        .iter()
        .map(|v| {
            v.parse::<Multiaddr>().map_err(|e| ConfigError::Invalid {
                key,
                message: format!("'{v}' is not a multiaddr: {e}"),
            })
        })
        .collect()
}

/// Flags given on the command line; each replaces the file's value.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--listen` (repeatable).
    pub listen: Vec<String>,
    /// `--external` (repeatable).
    pub external: Vec<String>,
    /// `--bootstrap` (repeatable).
    pub bootstrap: Vec<String>,
    /// `--metrics`.
    pub metrics: Option<String>,
    /// `--no-metrics`.
    pub no_metrics: bool,
    /// `--relay-max-reservations`.
    pub relay_max_reservations: Option<usize>,
    /// `--relay-max-circuits`.
    pub relay_max_circuits: Option<usize>,
    /// `--relay-max-circuits-per-peer`.
    pub relay_max_circuits_per_peer: Option<usize>,
    /// `--relay-circuit-secs`.
    pub relay_circuit_secs: Option<u64>,
    /// `--relay-circuit-bytes`.
    pub relay_circuit_bytes: Option<u64>,
    /// `--no-mailbox`.
    pub no_mailbox: bool,
    /// `--mailbox-quota-mb`.
    pub mailbox_quota_mb: Option<u64>,
    /// `--mailbox-address-quota-kb`.
    pub mailbox_address_quota_kb: Option<u64>,
    /// `--mailbox-ttl-max-secs`.
    pub mailbox_ttl_max_secs: Option<u64>,
    /// `--mailbox-pow-bits`.
    pub mailbox_pow_bits: Option<u32>,
    /// `--mailbox-deposits-per-minute`.
    pub mailbox_deposits_per_minute: Option<u32>,
    /// `--mailbox-burst`.
    pub mailbox_burst: Option<u32>,
    /// `--mailbox-sweep-secs`.
    pub mailbox_sweep_secs: Option<u64>,
    /// `--mailbox-handoff-secs`.
    pub mailbox_handoff_secs: Option<u64>,
}

fn positive<T: PartialOrd + Default + std::fmt::Display>(
    key: &'static str,
    value: T,
) -> Result<T, ConfigError> {
    if value > T::default() {
        Ok(value)
    } else {
        Err(ConfigError::Invalid {
            key,
            message: format!("{value} must be greater than zero"),
        })
    }
}

/// `value` units of `unit` bytes, positive and without overflow.
fn bytes(key: &'static str, value: u64, unit: u64, unit_name: &str) -> Result<u64, ConfigError> {
    positive(key, value)?
        .checked_mul(unit)
        .ok_or_else(|| ConfigError::Invalid {
            key,
            message: format!("{value} {unit_name} is more bytes than this node can count"),
        })
}

/// Resolves `[mailbox]` and the `--mailbox-*` flags. Every value is checked
/// even when the volunteer is off, so a bad setting is found before it is
/// turned on.
fn mailbox(file: MailboxFile, flags: &Overrides) -> Result<Option<MailboxSettings>, ConfigError> {
    let defaults = Limits::default();
    let service = ServiceSettings::default();
    let pow_bits = flags
        .mailbox_pow_bits
        .or(file.pow_bits)
        .unwrap_or(u32::from(defaults.pow_difficulty));
    let pow_difficulty = u8::try_from(pow_bits)
        .ok()
        .filter(|bits| *bits <= MAX_POW_DIFFICULTY)
        .ok_or_else(|| ConfigError::Invalid {
            key: "mailbox.pow_bits",
            message: format!(
                "{pow_bits} bits is more proof of work than senders solve (at most {MAX_POW_DIFFICULTY})"
            ),
        })?;
    let limits = Limits {
        total_quota_bytes: bytes(
            "mailbox.quota_mb",
            flags
                .mailbox_quota_mb
                .or(file.quota_mb)
                .unwrap_or(defaults.total_quota_bytes >> 20),
            1 << 20,
            "MiB",
        )?,
        mailbox_quota_bytes: bytes(
            "mailbox.mailbox_quota_kb",
            flags
                .mailbox_address_quota_kb
                .or(file.mailbox_quota_kb)
                .unwrap_or(defaults.mailbox_quota_bytes >> 10),
            1 << 10,
            "KiB",
        )?,
        max_ttl_secs: positive(
            "mailbox.max_ttl_secs",
            flags
                .mailbox_ttl_max_secs
                .or(file.max_ttl_secs)
                .unwrap_or(defaults.max_ttl_secs),
        )?,
        pow_difficulty,
        peer_deposits_per_minute: positive(
            "mailbox.deposits_per_minute",
            flags
                .mailbox_deposits_per_minute
                .or(file.deposits_per_minute)
                .unwrap_or(defaults.peer_deposits_per_minute),
        )?,
        peer_burst: positive(
            "mailbox.burst",
            flags
                .mailbox_burst
                .or(file.burst)
                .unwrap_or(defaults.peer_burst),
        )?,
        ..defaults
    };
    let service = ServiceSettings {
        sweep_every: Duration::from_secs(positive(
            "mailbox.sweep_secs",
            flags
                .mailbox_sweep_secs
                .or(file.sweep_secs)
                .unwrap_or(service.sweep_every.as_secs()),
        )?),
        handoff_every: Duration::from_secs(positive(
            "mailbox.handoff_secs",
            flags
                .mailbox_handoff_secs
                .or(file.handoff_secs)
                .unwrap_or(service.handoff_every.as_secs()),
        )?),
        ..service
    };
    let enabled = !flags.no_mailbox && file.enabled.unwrap_or(true);
    Ok(enabled.then_some(MailboxSettings { limits, service }))
}

impl NodeConfig {
    /// Merges the file (if any) and the flags over the defaults.
    pub fn resolve(file: FileConfig, flags: Overrides) -> Result<Self, ConfigError> {
        let mailbox = mailbox(file.mailbox.unwrap_or_default(), &flags)?;
        let data_dir = flags
            .data_dir
            .or(file.data_dir)
            .ok_or(ConfigError::Invalid {
                key: "data_dir",
                message: "set --data-dir or data_dir in the config file".into(),
            })?;
        let pick = |flag: Vec<String>, file: Option<Vec<String>>| {
            if flag.is_empty() {
                file.unwrap_or_default()
            } else {
                flag
            }
        };
        let mut listen = pick(flags.listen, file.listen);
        if listen.is_empty() {
            listen = DEFAULT_LISTEN.iter().map(|s| (*s).to_owned()).collect();
        }
        let metrics = if flags.no_metrics {
            None
        } else {
            match flags
                .metrics
                .or(file.metrics)
                .unwrap_or_else(|| DEFAULT_METRICS.to_owned())
            {
                off if off.is_empty() => None,
                addr => Some(addr.parse().map_err(|e| ConfigError::Invalid {
                    key: "metrics",
                    message: format!("'{addr}' is not an address like 127.0.0.1:9747: {e}"),
                })?),
            }
        };
        let relay_file = file.relay.unwrap_or_default();
        let defaults = RelayLimits::default();
        let relay = RelayLimits {
            max_reservations: positive(
                "relay.max_reservations",
                flags
                    .relay_max_reservations
                    .or(relay_file.max_reservations)
                    .unwrap_or(defaults.max_reservations),
            )?,
            max_reservations_per_peer: positive(
                "relay.max_reservations_per_peer",
                relay_file
                    .max_reservations_per_peer
                    .unwrap_or(defaults.max_reservations_per_peer),
            )?,
            reservation_duration: Duration::from_secs(positive(
                "relay.reservation_duration_secs",
                relay_file
                    .reservation_duration_secs
                    .unwrap_or(defaults.reservation_duration.as_secs()),
            )?),
            max_circuits: positive(
                "relay.max_circuits",
                flags
                    .relay_max_circuits
                    .or(relay_file.max_circuits)
                    .unwrap_or(defaults.max_circuits),
            )?,
            max_circuits_per_peer: positive(
                "relay.max_circuits_per_peer",
                flags
                    .relay_max_circuits_per_peer
                    .or(relay_file.max_circuits_per_peer)
                    .unwrap_or(defaults.max_circuits_per_peer),
            )?,
            max_circuit_duration: Duration::from_secs(positive(
                "relay.max_circuit_duration_secs",
                flags
                    .relay_circuit_secs
                    .or(relay_file.max_circuit_duration_secs)
                    .unwrap_or(defaults.max_circuit_duration.as_secs()),
            )?),
            max_circuit_bytes: positive(
                "relay.max_circuit_bytes",
                flags
                    .relay_circuit_bytes
                    .or(relay_file.max_circuit_bytes)
                    .unwrap_or(defaults.max_circuit_bytes),
            )?,
        };
        let limits = kith_net::ConnectionLimits::default();
        Ok(Self {
            data_dir,
            listen: parse_addrs("listen", &listen)?,
            external: parse_addrs("external", &pick(flags.external, file.external))?,
            bootstrap: parse_addrs("bootstrap", &pick(flags.bootstrap, file.bootstrap))?,
            metrics,
            max_connections: positive(
                "max_connections",
                file.max_connections.unwrap_or(limits.max_established),
            )?,
            max_connections_per_peer: positive(
                "max_connections_per_peer",
                file.max_connections_per_peer
                    .unwrap_or(limits.max_established_per_peer),
            )?,
            max_pending_per_ip: positive(
                "max_pending_per_ip",
                file.max_pending_per_ip.unwrap_or(limits.max_pending_per_ip),
            )?,
            relay,
            mailbox,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags_with_dir() -> Overrides {
        Overrides {
            data_dir: Some("/tmp/x".into()),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_fill_what_is_not_said() {
        let config = NodeConfig::resolve(FileConfig::default(), flags_with_dir()).unwrap();
        assert_eq!(config.listen.len(), 2);
        assert_eq!(config.metrics, Some(DEFAULT_METRICS.parse().unwrap()));
        assert_eq!(config.relay, RelayLimits::default());
        let mailbox = config.mailbox.expect("a volunteer by default");
        assert_eq!(mailbox.limits, Limits::default());
        assert_eq!(mailbox.service.sweep_every, Duration::from_secs(60));
        assert_eq!(mailbox.service.handoff_every, Duration::from_secs(600));
        assert_eq!(
            mailbox.service.replicas,
            kith_proto::mailbox::DEFAULT_REPLICAS
        );
    }

    #[test]
    fn mailbox_flags_override_the_file() {
        let file: FileConfig = toml::from_str(
            r#"
            [mailbox]
            quota_mb = 16
            mailbox_quota_kb = 64
            max_ttl_secs = 3600
            pow_bits = 12
            deposits_per_minute = 5
            burst = 2
            sweep_secs = 30
            handoff_secs = 120
            "#,
        )
        .unwrap();
        let config = NodeConfig::resolve(file.clone(), flags_with_dir()).unwrap();
        let mailbox = config.mailbox.unwrap();
        assert_eq!(
            mailbox.limits,
            Limits {
                total_quota_bytes: 16 << 20,
                mailbox_quota_bytes: 64 << 10,
                max_ttl_secs: 3600,
                pow_difficulty: 12,
                peer_deposits_per_minute: 5,
                peer_burst: 2,
                ..Limits::default()
            }
        );
        assert_eq!(mailbox.service.sweep_every, Duration::from_secs(30));
        assert_eq!(mailbox.service.handoff_every, Duration::from_secs(120));

        let flags = Overrides {
            mailbox_quota_mb: Some(1),
            mailbox_address_quota_kb: Some(8),
            mailbox_ttl_max_secs: Some(60),
            mailbox_pow_bits: Some(0),
            mailbox_deposits_per_minute: Some(600),
            mailbox_burst: Some(100),
            mailbox_sweep_secs: Some(1),
            mailbox_handoff_secs: Some(2),
            ..flags_with_dir()
        };
        let mailbox = NodeConfig::resolve(file, flags).unwrap().mailbox.unwrap();
        assert_eq!(
            mailbox.limits,
            Limits {
                total_quota_bytes: 1 << 20,
                mailbox_quota_bytes: 8 << 10,
                max_ttl_secs: 60,
                pow_difficulty: 0,
                peer_deposits_per_minute: 600,
                peer_burst: 100,
                ..Limits::default()
            }
        );
        assert_eq!(mailbox.service.sweep_every, Duration::from_secs(1));
        assert_eq!(mailbox.service.handoff_every, Duration::from_secs(2));
    }

    #[test]
    fn the_mailbox_turns_off_in_the_file_or_by_flag() {
        let file: FileConfig = toml::from_str("[mailbox]\nenabled = false\n").unwrap();
        let config = NodeConfig::resolve(file, flags_with_dir()).unwrap();
        assert!(config.mailbox.is_none());
        let flags = Overrides {
            no_mailbox: true,
            ..flags_with_dir()
        };
        let config = NodeConfig::resolve(FileConfig::default(), flags).unwrap();
        assert!(config.mailbox.is_none());
    }

    #[test]
    fn bad_mailbox_settings_are_named() {
        let unknown = toml::from_str::<FileConfig>("[mailbox]\nquota_gb = 1\n");
        assert!(unknown.unwrap_err().to_string().contains("quota_gb"));
        let resolve = |flags: Overrides| {
            NodeConfig::resolve(
                FileConfig::default(),
                Overrides {
                    data_dir: Some("/tmp/x".into()),
                    ..flags
                },
            )
            .unwrap_err()
            .to_string()
        };
        let err = resolve(Overrides {
            mailbox_pow_bits: Some(u32::from(MAX_POW_DIFFICULTY) + 1),
            ..Default::default()
        });
        assert!(err.contains("mailbox.pow_bits"), "{err}");
        assert!(err.contains("at most 24"), "{err}");
        let err = resolve(Overrides {
            mailbox_pow_bits: Some(300),
            ..Default::default()
        });
        assert!(err.contains("mailbox.pow_bits"), "{err}");
        let err = resolve(Overrides {
            mailbox_quota_mb: Some(0),
            ..Default::default()
        });
        assert!(err.contains("mailbox.quota_mb"), "{err}");
        assert!(err.contains("greater than zero"), "{err}");
        let err = resolve(Overrides {
            mailbox_address_quota_kb: Some(u64::MAX),
            ..Default::default()
        });
        assert!(err.contains("mailbox.mailbox_quota_kb"), "{err}");
        let err = resolve(Overrides {
            mailbox_ttl_max_secs: Some(0),
            ..Default::default()
        });
        assert!(err.contains("mailbox.max_ttl_secs"), "{err}");
        let err = resolve(Overrides {
            mailbox_burst: Some(0),
            ..Default::default()
        });
        assert!(err.contains("mailbox.burst"), "{err}");
        let err = resolve(Overrides {
            mailbox_sweep_secs: Some(0),
            ..Default::default()
        });
        assert!(err.contains("mailbox.sweep_secs"), "{err}");
        // Checked even when the volunteer is off.
        let err = resolve(Overrides {
            no_mailbox: true,
            mailbox_handoff_secs: Some(0),
            ..Default::default()
        });
        assert!(err.contains("mailbox.handoff_secs"), "{err}");
    }

    #[test]
    fn flags_override_the_file() {
        let file: FileConfig = toml::from_str(
            r#"
            data_dir = "/var/lib/kithd"
            listen = ["/ip4/0.0.0.0/tcp/1"]
            metrics = ""
            [relay]
            max_circuits = 7
            max_circuit_bytes = 1000
            "#,
        )
        .unwrap();
        let flags = Overrides {
            listen: vec!["/ip4/127.0.0.1/tcp/0".into()],
            relay_max_circuits: Some(9),
            ..Default::default()
        };
        let config = NodeConfig::resolve(file, flags).unwrap();
        assert_eq!(config.data_dir, PathBuf::from("/var/lib/kithd"));
        assert_eq!(
            config.listen,
            vec!["/ip4/127.0.0.1/tcp/0".parse::<Multiaddr>().unwrap()]
        );
        assert_eq!(config.metrics, None);
        assert_eq!(config.relay.max_circuits, 9);
        assert_eq!(config.relay.max_circuit_bytes, 1000);
    }

    #[test]
    fn the_shipped_example_parses() {
        let example = include_str!("../../../packaging/kithd.toml");
        let file: FileConfig = toml::from_str(example).unwrap();
        let config = NodeConfig::resolve(file, Overrides::default()).unwrap();
        assert_eq!(config.data_dir, PathBuf::from("/var/lib/kithd"));
        assert_eq!(config.relay, RelayLimits::default());
        assert_eq!(
            config.max_pending_per_ip,
            kith_net::ConnectionLimits::default().max_pending_per_ip
        );
        assert_eq!(config.listen.len(), 2);
        let mailbox = config.mailbox.expect("the example volunteers");
        assert_eq!(mailbox.limits, Limits::default());
        assert_eq!(
            mailbox.service.sweep_every,
            ServiceSettings::default().sweep_every
        );
        assert_eq!(
            mailbox.service.handoff_every,
            ServiceSettings::default().handoff_every
        );
    }

    #[test]
    fn bad_settings_are_named() {
        let unknown = toml::from_str::<FileConfig>("listn = []");
        assert!(unknown.unwrap_err().to_string().contains("listn"));
        let err = NodeConfig::resolve(
            FileConfig::default(),
            Overrides {
                listen: vec!["not an address".into()],
                ..flags_with_dir()
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("listen"), "{err}");
        let err = NodeConfig::resolve(
            FileConfig::default(),
            Overrides {
                relay_max_circuits: Some(0),
                ..flags_with_dir()
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("relay.max_circuits"), "{err}");
        let zero: FileConfig = toml::from_str("max_pending_per_ip = 0").unwrap();
        let err = NodeConfig::resolve(zero, flags_with_dir()).unwrap_err();
        assert!(err.to_string().contains("max_pending_per_ip"), "{err}");
        let err = NodeConfig::resolve(FileConfig::default(), Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("--data-dir"), "{err}");
    }
}
