//! `kithd` settings: a TOML file (`--config FILE`), overridden by flags.
//!
//! Every key is optional; see `packaging/kithd.toml` for a commented example.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kith_net::{Multiaddr, RelayLimits};
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
    /// Most bytes per circuit and direction.
    pub max_circuit_bytes: Option<u64>,
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
    /// Relay limits.
    pub relay: Option<RelayFile>,
}

/// The settings `kithd` runs with, after file and flags are merged.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Folder for the node key.
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
    /// Relay server limits.
    pub relay: RelayLimits,
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

impl NodeConfig {
    /// Merges the file (if any) and the flags over the defaults.
    pub fn resolve(file: FileConfig, flags: Overrides) -> Result<Self, ConfigError> {
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
            relay,
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
        assert_eq!(config.listen.len(), 2);
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
        let err = NodeConfig::resolve(FileConfig::default(), Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("--data-dir"), "{err}");
    }
}
