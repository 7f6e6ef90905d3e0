//! What the test targets that run the real `kithd` binary share: starting
//! it on loopback (its addresses come on stdout, its metrics address in its
//! log), stopping it with SIGTERM, scraping its metrics, and an in-process
//! client that bootstraps from it.

// Each test target uses part of this module.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use kith_net::{Client, Config, Multiaddr, PeerId, Protocol, Role};
use kith_proto::DeviceKeypair;

/// A running `kithd`, killed when dropped.
pub struct Kithd {
    child: Child,
    /// Its shareable addresses, as printed.
    pub addrs: Vec<Multiaddr>,
    /// Its metrics endpoint, `host:port`.
    pub metrics: String,
}

impl Drop for Kithd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts kithd and waits for its addresses (stdout) and metrics address
/// (its log on stderr).
pub fn start_kithd(data_dir: &Path) -> Kithd {
    start_kithd_with(data_dir, &[])
}

/// [`start_kithd`] with more flags.
pub fn start_kithd_with(data_dir: &Path, flags: &[&str]) -> Kithd {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kithd"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--listen", "/ip4/127.0.0.1/tcp/0"])
        .args(["--listen", "/ip4/127.0.0.1/udp/0/quic-v1"])
        .args(["--metrics", "127.0.0.1:0"])
        .args(flags)
        .env("KITHD_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kithd starts");
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::sync_channel::<String>(4);
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(at) = line.find("http://") {
                let _ = tx.send(
                    line[at + 7..]
                        .trim()
                        .trim_end_matches("/metrics")
                        .to_owned(),
                );
            }
        }
    });
    let mut lines = BufReader::new(stdout).lines();
    let addrs: Vec<Multiaddr> = (0..2)
        .map(|_| {
            lines
                .next()
                .expect("an address line")
                .expect("utf-8")
                .parse()
                .expect("a multiaddr")
        })
        .collect();
    let metrics = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("metrics address logged");
    Kithd {
        child,
        addrs,
        metrics,
    }
}

impl Kithd {
    /// The TCP address.
    pub fn tcp(&self) -> Multiaddr {
        self.addrs
            .iter()
            .find(|a| a.iter().any(|p| matches!(p, Protocol::Tcp(_))))
            .expect("a TCP address")
            .clone()
    }

    /// The node's peer ID.
    pub fn peer_id(&self) -> PeerId {
        peer_of(&self.addrs[0]).parse().expect("a peer ID")
    }

    /// Sends SIGTERM and waits for a successful exit.
    pub fn stop(mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(10);
        let exit = loop {
            if let Some(exit) = self.child.try_wait().expect("wait") {
                break exit;
            }
            assert!(Instant::now() < deadline, "kithd did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(exit.success(), "{exit:?}");
    }
}

/// The peer ID an address ends in.
pub fn peer_of(addr: &Multiaddr) -> String {
    match addr.iter().last() {
        Some(Protocol::P2p(peer)) => peer.to_string(),
        other => panic!("address ends in {other:?}, not /p2p/"),
    }
}

/// The metrics page at `addr`.
pub fn scrape(addr: &str) -> String {
    let mut stream = TcpStream::connect(addr).expect("metrics endpoint answers");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: kithd\r\n\r\n")
        .expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
}

/// Sum of every sample of metric `name` (any labels).
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.starts_with(name)
                && (l[name.len()..].starts_with('{') || l[name.len()..].starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A client that bootstraps from `node` (at `bootstrap`) and has it in its
/// routing table, so closest-peer queries find it.
pub async fn mail_client(bootstrap: Multiaddr, node: PeerId) -> Client {
    let mut config = Config::new(DeviceKeypair::generate(), Role::Client);
    config.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().expect("addr")];
    config.bootstrap = vec![bootstrap];
    let (client, mut events, event_loop) = kith_net::new(config, None).expect("client starts");
    tokio::spawn(event_loop.run());
    tokio::spawn(async move { while events.next().await.is_some() {} });
    let deadline = Instant::now() + Duration::from_secs(30);
    while !client
        .routing_table()
        .await
        .is_ok_and(|table| table.contains(&node))
    {
        assert!(
            Instant::now() < deadline,
            "the node never joined the routing table"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    client
}

/// The system clock in Unix seconds.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// What the volunteer holds by its metrics: items, bytes, mailboxes.
pub fn mailbox_usage(metrics: &str) -> (f64, f64, f64) {
    let text = scrape(metrics);
    (
        metric_sum(&text, "kithd_mailbox_items"),
        metric_sum(&text, "kithd_mailbox_bytes"),
        metric_sum(&text, "kithd_mailbox_mailboxes"),
    )
}
