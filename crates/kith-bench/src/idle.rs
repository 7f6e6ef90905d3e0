//! `idle`: what idle clients cost — traffic and CPU per node and minute
//! when nobody sends anything.
//!
//! One `kithd` on 127.0.0.1 and `--nodes` `kith-core` engines in this
//! process (sled stores in a temporary folder, TCP on 127.0.0.1, every
//! other setting a desktop client's default: relay reservation `Auto`,
//! request drop polled and mail fetched every 30 minutes), made friends in
//! pairs through the node's request drop. Making friends checks for
//! requests, after which an engine expects more and polls every minute
//! for `--expecting` seconds (60 here, 15 minutes in the engine), so the
//! window sees a device whose user last looked a while ago. Then nothing is sent: each
//! client has one friend online and nothing to say. After `--warmup`
//! seconds, for `--secs` seconds:
//!
//! - **traffic** is counted by the kernel for each TCP socket
//!   (`tcp_info`): `ss -tinpeO` lists this process's sockets and `kithd`'s
//!   once a second with their `bytes_sent`, `bytes_received` and `segs_out`
//!   counters, and a socket's share is its last reading minus its reading
//!   at the start of the window (zero for a socket opened during it). A
//!   socket that closes between two readings loses at most its last second.
//!   Bytes are TCP payload (Noise frames: everything libp2p sends), packets
//!   are segments sent, bare acknowledgements included. Both ends of a
//!   connection between two clients are in this process, so each side's
//!   sending is counted once, at its sender.
//! - **CPU** is this process's user and system time from `/proc/self/stat`
//!   (the engines and their network nodes, sled's flusher threads; `ss`
//!   runs in child processes, which are not counted), and `kithd`'s from its
//!   own.
//!
//! The per-node figures divide the clients' totals by `--nodes` and scale
//! to a minute; `kithd`'s are reported on their own. Timers slower than
//! the window (request poll and mail fetch every 30 min, presence
//! republished every hour, the Kademlia refresh every 2 h) land in it or
//! not depending on when it starts, and the engines started together, so
//! they fire together: a window of `--secs 1800` includes one request
//! poll and one mail fetch per client.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use kith_core::engine::{self, Engine};
use kith_net::{Multiaddr, Timers};
use kith_store::profile::Identity;
use kith_store::{SledBackend, Store};

use crate::chat::{Events, befriend};
use crate::proc::{Kithd, cpu_ms};

/// Results of the scenario.
#[derive(Debug, Clone, Copy, Default)]
pub struct IdleResult {
    /// Length of the measured window, seconds.
    pub window_s: f64,
    /// TCP payload bytes the clients sent, all together.
    pub bytes_sent: f64,
    /// TCP payload bytes the clients received, all together.
    pub bytes_received: f64,
    /// TCP segments the clients sent, all together.
    pub segs_out: f64,
    /// TCP payload bytes the clients sent to `kithd` (the rest went to
    /// other clients).
    pub bytes_to_kithd: f64,
    /// Peers each client was connected to at the end, on average.
    pub connections: f64,
    /// CPU time of this process (the clients), milliseconds.
    pub cpu_ms: f64,
    /// TCP payload bytes `kithd` sent.
    pub kithd_bytes_sent: f64,
    /// TCP segments `kithd` sent.
    pub kithd_segs_out: f64,
    /// CPU time of `kithd`, milliseconds.
    pub kithd_cpu_ms: f64,
}

/// Longest a pair may take to become friends: twenty pairs at once share
/// one node and two cores.
const PAIR_LIMIT: Duration = Duration::from_secs(180);

/// IPv4 and TCP headers of one segment on loopback: 20 + 20 bytes, plus
/// the 12 of the timestamp option Linux sets on every segment.
pub const SEGMENT_HEADER_BYTES: f64 = 52.0;

impl IdleResult {
    /// What the clients put on the wire: payload plus a header per
    /// segment ([`SEGMENT_HEADER_BYTES`]), for comparison with counts that
    /// include headers.
    pub fn wire_bytes_sent(&self) -> f64 {
        self.bytes_sent + self.segs_out * SEGMENT_HEADER_BYTES
    }
}

/// Kernel counters of one TCP socket.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Counters {
    bytes_sent: f64,
    bytes_received: f64,
    segs_out: f64,
}

impl Counters {
    fn add(&mut self, other: Counters) {
        self.bytes_sent += other.bytes_sent;
        self.bytes_received += other.bytes_received;
        self.segs_out += other.segs_out;
    }

    fn minus(self, base: Counters) -> Counters {
        Counters {
            bytes_sent: (self.bytes_sent - base.bytes_sent).max(0.0),
            bytes_received: (self.bytes_received - base.bytes_received).max(0.0),
            segs_out: (self.segs_out - base.segs_out).max(0.0),
        }
    }
}

/// Kernel counters of the TCP sockets in one `ss` reading, by socket
/// inode, and the owning process of those `ss` could attribute.
#[derive(Debug, Default)]
struct Reading {
    counters: HashMap<u64, Counters>,
    owners: HashMap<u64, u32>,
    /// Local and peer address of each socket.
    ends: HashMap<u64, (String, String)>,
}

/// Parses `ss -tinpeOH` output. Every socket with an inode is kept, owned
/// or not: `ss` matches sockets to processes by scanning `/proc` after the
/// kernel's dump, so a socket opened in between shows no owner in that
/// reading, and its counters must still be the baseline it is measured
/// from.
fn parse_ss(text: &str) -> Reading {
    let mut reading = Reading::default();
    for line in text.lines() {
        let tokens: Vec<&str> = line.split_whitespace().collect();
        let Some(inode) = tokens
            .iter()
            .find_map(|t| t.strip_prefix("ino:")?.parse::<u64>().ok())
            .filter(|&inode| inode != 0)
        else {
            continue;
        };
        let value = |name: &str| -> f64 {
            tokens
                .iter()
                .find_map(|t| t.strip_prefix(name)?.strip_prefix(':')?.parse().ok())
                .unwrap_or(0.0)
        };
        reading.counters.insert(
            inode,
            Counters {
                bytes_sent: value("bytes_sent"),
                bytes_received: value("bytes_received"),
                segs_out: value("segs_out"),
            },
        );
        let owner = tokens.iter().find_map(|t| {
            let rest = t.strip_prefix("users:")?;
            let pid = rest.split("pid=").nth(1)?;
            pid.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        });
        if let Some(pid) = owner {
            reading.owners.insert(inode, pid);
        }
        if let (Some(local), Some(peer)) = (tokens.get(3), tokens.get(4)) {
            reading
                .ends
                .insert(inode, ((*local).to_owned(), (*peer).to_owned()));
        }
    }
    reading
}

/// One reading of every TCP socket.
async fn read_sockets() -> anyhow::Result<Reading> {
    tokio::task::spawn_blocking(|| {
        let output = Command::new("ss")
            .args(["-tinpeOH"])
            .output()
            .context("running ss (iproute2) to read the kernel's TCP counters")?;
        if !output.status.success() {
            bail!("ss failed: {}", String::from_utf8_lossy(&output.stderr));
        }
        Ok(parse_ss(&String::from_utf8_lossy(&output.stdout)))
    })
    .await?
}

/// Follows sockets over a window: what each sent since the window began.
#[derive(Default)]
struct Traffic {
    start: HashMap<u64, Counters>,
    last: HashMap<u64, Counters>,
    owners: HashMap<u64, u32>,
    ends: HashMap<u64, (String, String)>,
}

impl Traffic {
    fn begin(reading: Reading) -> Self {
        Self {
            start: reading.counters.clone(),
            last: reading.counters,
            owners: reading.owners,
            ends: reading.ends,
        }
    }

    fn update(&mut self, reading: Reading) {
        self.last.extend(reading.counters);
        self.owners.extend(reading.owners);
        self.ends.extend(reading.ends);
    }

    /// Bytes sent by `owner`'s sockets, split by the process at the other
    /// end (`None`: unknown).
    fn by_peer(&self, owner: u32) -> HashMap<Option<u32>, Counters> {
        let by_local: HashMap<&str, u64> = self
            .ends
            .iter()
            .map(|(inode, (local, _))| (local.as_str(), *inode))
            .collect();
        let mut out: HashMap<Option<u32>, Counters> = HashMap::new();
        for (inode, last) in &self.last {
            if self.owners.get(inode) != Some(&owner) {
                continue;
            }
            let other = self
                .ends
                .get(inode)
                .and_then(|(_, peer)| by_local.get(peer.as_str()))
                .and_then(|other| self.owners.get(other))
                .copied();
            let base = self.start.get(inode).copied().unwrap_or_default();
            out.entry(other).or_default().add(last.minus(base));
        }
        out
    }

    /// Totals of the sockets of process `owner` since the window began.
    fn totals(&self, owner: u32) -> Counters {
        let mut total = Counters::default();
        for (inode, last) in &self.last {
            if self.owners.get(inode) == Some(&owner) {
                let base = self.start.get(inode).copied().unwrap_or_default();
                total.add(last.minus(base));
            }
        }
        total
    }
}

/// How the scenario runs.
#[derive(Debug, Clone)]
pub struct IdleParams {
    /// Client engines, an even number.
    pub nodes: usize,
    /// Wait between making friends and measuring.
    pub warmup: Duration,
    /// Seconds measured.
    pub secs: u64,
    /// Interval of each engine's request-drop poll (`None`: the engine's
    /// default).
    pub request_poll: Option<Duration>,
    /// Interval of each engine's mail fetch (`None`: the engine's
    /// default).
    pub mail_fetch: Option<Duration>,
    /// How long requests stay expected after a look
    /// (`engine::Config::expecting_requests_for`): making friends looks,
    /// so this must end within the warm-up for the window to see a device
    /// whose user is not expecting a request.
    pub expecting: Duration,
    /// The clients' `kith-net` timers (default: `kith-net`'s defaults).
    pub timers: Timers,
}

/// Sets the [`Timers`] field called `name` (as in the source, such as
/// `ping_interval`) to `value`, so one timer's cost can be measured by
/// bringing it into the window.
pub fn set_timer(timers: &mut Timers, name: &str, value: Duration) -> anyhow::Result<()> {
    let field = match name {
        "presence_ttl" => &mut timers.presence_ttl,
        "presence_republish" => &mut timers.presence_republish,
        "presence_debounce" => &mut timers.presence_debounce,
        "kad_bootstrap" => &mut timers.kad_bootstrap,
        "kad_replication" => &mut timers.kad_replication,
        "kad_query_timeout" => &mut timers.kad_query_timeout,
        "ping_interval" => &mut timers.ping_interval,
        "idle_connection_timeout" => &mut timers.idle_connection_timeout,
        "reconnect_min" => &mut timers.reconnect_min,
        "reconnect_max" => &mut timers.reconnect_max,
        "autonat_probe" => &mut timers.autonat_probe,
        "request_timeout" => &mut timers.request_timeout,
        _ => bail!("no kith-net timer called {name:?}"),
    };
    *field = value;
    Ok(())
}

/// Starts an engine with a desktop client's defaults, listening on TCP
/// on 127.0.0.1 only.
fn start_engine(
    dir: &Path,
    name: &str,
    bootstrap: &[Multiaddr],
    params: &IdleParams,
) -> anyhow::Result<(Engine, Events)> {
    let backend = SledBackend::open(&dir.join(name))?;
    let store = Store::open(Arc::new(backend), None, kith_core::SCHEMA_VERSION, &[])?;
    let identity = Identity::generate();
    let mut net = kith_net::Config::new(identity.device.clone(), kith_net::Role::Client);
    net.listen = vec!["/ip4/127.0.0.1/tcp/0".parse()?];
    net.bootstrap = bootstrap.to_vec();
    net.timers = params.timers.clone();
    let mut config = engine::Config::new(identity, store, net);
    config.display_name = name.into();
    if let Some(poll) = params.request_poll {
        config.request_poll = poll;
    }
    if let Some(every) = params.mail_fetch {
        config.mailbox.fetch_every = every;
    }
    config.expecting_requests_for = params.expecting;
    let (engine, events) = engine::start(config)?;
    Ok((engine, Box::pin(events)))
}

/// Runs the scenario with the `kithd` binary at `kithd`.
pub async fn run(kithd: &Path, params: &IdleParams) -> anyhow::Result<IdleResult> {
    let IdleParams {
        nodes,
        warmup,
        secs,
        ..
    } = *params;
    if nodes < 2 || !nodes.is_multiple_of(2) {
        bail!("--nodes must be an even number of at least 2 (clients come in pairs)");
    }
    let node = Kithd::start(kithd)?;
    let bootstrap = [node.addrs.first().context("kithd address")?.clone()];
    let dir = tempfile::tempdir()?;
    let mut engines = Vec::with_capacity(nodes);
    for i in 0..nodes {
        engines.push(start_engine(
            dir.path(),
            &format!("client{i}"),
            &bootstrap,
            params,
        )?);
    }
    let mut pairs = Vec::with_capacity(nodes / 2);
    let mut rest = engines.as_mut_slice();
    while let [(alice, alice_events), (bob, _), tail @ ..] = rest {
        pairs.push(befriend(alice, alice_events, bob, PAIR_LIMIT));
        rest = tail;
    }
    futures::future::try_join_all(pairs)
        .await
        .context("making friends")?;
    let mut handles = Vec::with_capacity(nodes);
    for (engine, mut events) in engines {
        tokio::spawn(async move { while events.next().await.is_some() {} });
        handles.push(engine);
    }

    tokio::time::sleep(warmup).await;
    let me = std::process::id();
    let began = Instant::now();
    let cpu_before = cpu_ms(me)?;
    let kithd_cpu_before = cpu_ms(node.pid())?;
    let mut traffic = Traffic::begin(read_sockets().await?);
    let end = began + Duration::from_secs(secs.max(1));
    while Instant::now() < end {
        let next = (Instant::now() + Duration::from_secs(1)).min(end);
        tokio::time::sleep_until(next.into()).await;
        let before = traffic.last.clone();
        traffic.update(read_sockets().await?);
        if std::env::var_os("KITH_BENCH_DEBUG").is_some() {
            let active = traffic
                .last
                .iter()
                .filter(|(inode, now)| {
                    traffic.owners.get(*inode) == Some(&me)
                        && before.get(*inode).copied().unwrap_or_default().bytes_sent
                            < now.bytes_sent
                })
                .count();
            let totals = traffic.totals(me);
            eprintln!(
                "idle: {:5.1} s: clients sent {:.0} B in {:.0} segments; {active} sockets sent in the last second",
                began.elapsed().as_secs_f64(),
                totals.bytes_sent,
                totals.segs_out,
            );
        }
    }
    let cpu = cpu_ms(me)? - cpu_before;
    let kithd_cpu = cpu_ms(node.pid())? - kithd_cpu_before;
    let window_s = began.elapsed().as_secs_f64();
    let clients = traffic.totals(me);
    let server = traffic.totals(node.pid());
    let to_kithd = traffic
        .by_peer(me)
        .get(&Some(node.pid()))
        .copied()
        .unwrap_or_default();
    let mut connections = 0;
    for engine in &handles {
        connections += engine.status().await?.connected;
    }
    for engine in &handles {
        let _ = engine.shutdown().await;
    }
    Ok(IdleResult {
        window_s,
        bytes_sent: clients.bytes_sent,
        bytes_received: clients.bytes_received,
        segs_out: clients.segs_out,
        bytes_to_kithd: to_kithd.bytes_sent,
        connections: connections as f64 / nodes as f64,
        cpu_ms: cpu,
        kithd_bytes_sent: server.bytes_sent,
        kithd_segs_out: server.segs_out,
        kithd_cpu_ms: kithd_cpu,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "ESTAB 0      0      127.0.0.1:45567 127.0.0.1:37230 users:((\"kithd\",pid=22617,fd=12)) ino:223493 sk:1 cgroup:/ <-> ts sack bbr wscale:10,10 rto:200 mss:32768 cwnd:10 bytes_received:6 segs_out:1 segs_in:3 data_segs_in:1 lastsnd:316
ESTAB 0      0      127.0.0.1:37230 127.0.0.1:45567 users:((\"python3\",pid=22655,fd=3)) ino:223492 sk:2 cgroup:/ <-> ts sack bbr wscale:10,10 rto:204 cwnd:11 bytes_sent:6 bytes_acked:7 segs_out:3 segs_in:2 data_segs_out:1 lastsnd:312
ESTAB 0      0      127.0.0.1:5000 127.0.0.1:6000 ino:77 sk:3 bytes_sent:99 segs_out:9
TIME-WAIT 0      0      127.0.0.1:5001 127.0.0.1:6001 ino:0 sk:4";

    #[test]
    fn timers_are_set_by_name() {
        let mut timers = Timers::default();
        set_timer(&mut timers, "kad_replication", Duration::from_secs(60)).unwrap();
        set_timer(&mut timers, "ping_interval", Duration::from_secs(7)).unwrap();
        assert_eq!(timers.kad_replication, Duration::from_secs(60));
        assert_eq!(timers.ping_interval, Duration::from_secs(7));
        assert_eq!(timers.kad_bootstrap, Timers::default().kad_bootstrap);
        assert!(set_timer(&mut timers, "ping", Duration::from_secs(1)).is_err());
    }

    #[test]
    fn ss_lines_are_read_with_their_owners() {
        let reading = parse_ss(SAMPLE);
        assert_eq!(reading.counters.len(), 3);
        assert_eq!(
            reading.counters[&223492],
            Counters {
                bytes_sent: 6.0,
                bytes_received: 0.0,
                segs_out: 3.0
            }
        );
        assert_eq!(reading.counters[&223493].bytes_received, 6.0);
        assert_eq!(reading.counters[&223493].bytes_sent, 0.0);
        assert_eq!(reading.counters[&77].bytes_sent, 99.0);
        assert_eq!(reading.owners[&223493], 22617);
        assert_eq!(reading.owners[&223492], 22655);
        assert!(!reading.owners.contains_key(&77));
    }

    #[test]
    fn a_window_counts_growth_and_new_sockets_from_zero() {
        let at = |bytes: f64| Counters {
            bytes_sent: bytes,
            bytes_received: 0.0,
            segs_out: 1.0,
        };
        let reading = |sockets: &[(u64, f64)], owned: bool| Reading {
            counters: sockets.iter().map(|&(i, b)| (i, at(b))).collect(),
            owners: if owned {
                sockets.iter().map(|&(i, _)| (i, 1)).collect()
            } else {
                HashMap::new()
            },
            ends: HashMap::new(),
        };
        // Socket 1 shows no owner at first: its baseline still counts.
        let mut traffic = Traffic::begin(reading(&[(1, 100.0)], false));
        traffic.update(reading(&[(1, 150.0), (2, 30.0)], true));
        // Socket 1 closed: its last reading stays.
        traffic.update(reading(&[(2, 40.0)], true));
        let total = traffic.totals(1);
        assert_eq!(total.bytes_sent, 50.0 + 40.0);
        assert_eq!(total.segs_out, 1.0);
        assert_eq!(traffic.totals(2), Counters::default());
    }
}
