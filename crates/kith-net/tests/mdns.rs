//! Two Kith clients on one LAN, with no bootstrap node, find each other by
//! mDNS and connect.
//!
//! # Why a network namespace
//!
//! mDNS is multicast: every query and answer goes to 224.0.0.251:5353 on
//! every non-loopback interface libp2p sees (libp2p's mDNS skips loopback
//! interfaces altogether). Run on the host, this test would chatter on the
//! machine's real network, and tests here may only reach loopback or networks
//! they build themselves. So the test builds its own LAN: a fresh network
//! namespace holding `lo` and a veth pair (`kith0` 10.77.0.1/24 and `kith1`
//! 10.77.0.2/24, both ends inside the namespace), and nothing else. Multicast
//! sent there cannot leave it.
//!
//! A process cannot safely move itself into a namespace (Tokio's and the test
//! harness's threads would stay behind), so the test runs in two halves:
//!
//! - [`two_lan_clients_find_each_other_with_mdns`] checks that it may build
//!   a namespace (Linux, root, `ip` from iproute2, `ip netns add` works),
//!   builds it, and runs this same test binary inside it with
//!   `ip netns exec`, selecting only [`mdns_inner`]. Without the
//!   prerequisites it prints why on stderr and passes without testing
//!   anything. The namespace is deleted afterwards, even on panic.
//! - [`mdns_inner`] (ignored, so a plain `cargo test` never runs it) does the
//!   work only when `KITH_MDNS_INNER` names the namespace it runs in, and
//!   first refuses to start if it can see any interface other than the
//!   namespace's own. It starts two clients with mDNS on, listening on
//!   `0.0.0.0` (mDNS only advertises listen addresses that match the
//!   interface the query came in on, so a listener on `127.0.0.1` would never
//!   be announced), and waits until each has discovered the other and is
//!   connected to it. It prints a marker line when it succeeds; the outer
//!   half requires both a zero exit status and that marker, so a filter that
//!   matched no test cannot pass for a success.

mod common;

use std::io::Read;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kith_net::{Config, Event, PeerId, RelayReservation, Role, TransportKind};
use kith_proto::DeviceKeypair;

/// Set (to the namespace's name) for the inner half only.
const INNER_ENV: &str = "KITH_MDNS_INNER";
/// The inner half's test name, as the harness filters it.
const INNER_TEST: &str = "mdns_inner";
/// Printed by the inner half when both clients are connected.
const INNER_OK: &str = "kith-mdns-inner: both clients discovered each other and connected";
/// The two ends of the namespace's veth pair and their addresses.
const VETH: [(&str, &str); 2] = [("kith0", "10.77.0.1/24"), ("kith1", "10.77.0.2/24")];
/// How long each client may take to discover the other, and then to be
/// connected to it.
const DISCOVERY_LIMIT: Duration = Duration::from_secs(30);
/// How long the whole inner process may run before the outer half kills it.
const INNER_PROCESS_LIMIT: Duration = Duration::from_secs(120);

#[test]
fn two_lan_clients_find_each_other_with_mdns() {
    let namespace = match Namespace::create() {
        Ok(namespace) => namespace,
        Err(missing) => {
            eprintln!(
                "skipping two_lan_clients_find_each_other_with_mdns: {missing}. This test \
                 needs Linux, root, the `ip` command (iproute2) and `ip netns add` to build \
                 a private network namespace, so that mDNS multicast never reaches the \
                 machine's real network."
            );
            return;
        }
    };

    let exe = std::env::current_exe().expect("path of the running test binary");
    let started = Instant::now();
    let child = Command::new("ip")
        .args(["netns", "exec", &namespace.name])
        .arg(&exe)
        .args([INNER_TEST, "--exact", "--include-ignored", "--nocapture"])
        .env(INNER_ENV, &namespace.name)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the inner half with `ip netns exec`");
    let run = wait_with_limit(child, INNER_PROCESS_LIMIT);
    let elapsed = started.elapsed();

    let report = format!(
        "inner half in namespace {} ended with {} after {elapsed:.1?}\n\
         --- stdout ---\n{}\n--- stderr ---\n{}",
        namespace.name,
        match run.status {
            Some(status) => status.to_string(),
            None => format!("no status: killed after {INNER_PROCESS_LIMIT:?}"),
        },
        run.stdout,
        run.stderr,
    );
    assert!(
        run.status.is_some_and(|s| s.success()) && run.stdout.contains(INNER_OK),
        "two clients on a LAN did not find each other by mDNS: {report}"
    );
    // The inner half's timings (shown with --nocapture).
    eprint!("{}", run.stderr);
    eprintln!(
        "inner half in namespace {} passed in {elapsed:.1?}",
        namespace.name
    );
}

/// The inner half: see the module documentation. Does nothing unless
/// `KITH_MDNS_INNER` is set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by two_lan_clients_find_each_other_with_mdns inside its own network namespace"]
async fn mdns_inner() {
    let Some(namespace) = std::env::var_os(INNER_ENV) else {
        return;
    };
    assert_only_namespace_interfaces(&namespace.to_string_lossy());

    let started = Instant::now();
    let mut alice = common::start(lan_config(), None).await;
    let mut bob = common::start(lan_config(), None).await;
    let (alice_id, bob_id) = (alice.peer_id(), bob.peer_id());

    // Each side discovers the other on its own: each sends mDNS queries and
    // answers the other's.
    let (alice_found, bob_found) = tokio::join!(
        wait_for_lan_peer(&mut alice, bob_id, "alice"),
        wait_for_lan_peer(&mut bob, alice_id, "bob"),
    );
    let discovered = started.elapsed();
    eprintln!(
        "mDNS: alice found bob after {alice_found:.1?}, bob found alice after {bob_found:.1?}"
    );

    // Discovery makes each side dial the other; with no bootstrap node and
    // no explicit dial, these connections can only come from mDNS.
    for (who, client, other) in [("alice", &alice, bob_id), ("bob", &bob, alice_id)] {
        let client = client.client.clone();
        common::eventually(
            DISCOVERY_LIMIT,
            &format!("{who} to be directly connected to the peer mDNS found"),
            || {
                let client = client.clone();
                async move {
                    client
                        .connected_peers()
                        .await
                        .is_ok_and(|peers| peers.iter().any(|c| c.peer_id == other && !c.relayed))
                }
            },
        )
        .await;
    }
    eprintln!(
        "connected {:.1?} after discovery ({:.1?} after start)",
        started.elapsed() - discovered,
        started.elapsed()
    );

    alice.stop().await;
    bob.stop().await;
    println!("{INNER_OK}");
}

/// A client on the real network stack with mDNS on, no bootstrap node and
/// no relay, listening on TCP on every interface of the namespace.
fn lan_config() -> Config {
    let mut config = Config::new(DeviceKeypair::generate(), Role::Client);
    config.transport = TransportKind::Network;
    config.mdns = true;
    config.listen = vec!["/ip4/0.0.0.0/tcp/0".parse().expect("valid multiaddr")];
    config.bootstrap = Vec::new();
    config.relay_reservation = RelayReservation::Never;
    config
}

/// Waits until `peer` reports `other` found on the LAN; returns how long
/// that took.
async fn wait_for_lan_peer(peer: &mut common::Peer, other: PeerId, who: &str) -> Duration {
    let started = Instant::now();
    let mut seen = Vec::new();
    let found = tokio::time::timeout(DISCOVERY_LIMIT, async {
        while let Some(event) = peer.events.recv().await {
            if matches!(&event, Event::LanPeer { peer } if *peer == other) {
                return true;
            }
            seen.push(event);
        }
        false
    })
    .await;
    assert!(
        found == Ok(true),
        "{who} did not find {other} by mDNS within {DISCOVERY_LIMIT:?} \
         (event stream {}); events seen meanwhile: {seen:?}",
        if found.is_ok() { "ended" } else { "still open" },
    );
    started.elapsed()
}

/// Panics unless every network interface this process can see is one the
/// outer half created in namespace `namespace`: the inner half must never
/// multicast on a real network, even if started by hand with
/// `KITH_MDNS_INNER` set.
fn assert_only_namespace_interfaces(namespace: &str) {
    // `ip netns exec` remounts /sys, so this lists the namespace's own
    // interfaces.
    let mut names: Vec<String> = std::fs::read_dir("/sys/class/net")
        .expect("list /sys/class/net")
        .map(|entry| {
            entry
                .expect("read /sys/class/net")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    let mut expected: Vec<String> = VETH.iter().map(|(name, _)| (*name).to_owned()).collect();
    expected.push("lo".to_owned());
    expected.sort();
    assert_eq!(
        names, expected,
        "refusing to send mDNS multicast: {INNER_ENV} says we run in namespace {namespace}, \
         but the interfaces visible are not exactly that namespace's own"
    );
}

/// A network namespace this test created; deleted on drop.
struct Namespace {
    name: String,
}

impl Namespace {
    /// Checks the prerequisites and builds the namespace with `lo` and the
    /// veth pair up. The error says what is missing.
    fn create() -> Result<Self, String> {
        if !cfg!(target_os = "linux") {
            return Err("network namespaces exist only on Linux".to_owned());
        }
        match effective_uid() {
            Some(0) => {}
            Some(uid) => return Err(format!("not running as root (effective uid {uid})")),
            None => return Err("could not read the effective uid from /proc/self/status".into()),
        }
        match Command::new("ip").arg("-V").output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => return Err(format!("`ip -V` failed ({})", out.status)),
            Err(e) => return Err(format!("the `ip` command (iproute2) cannot be run: {e}")),
        }

        // Unique per run, so concurrent or leftover runs never collide.
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!("kith-mdns-{}-{nanos}", std::process::id());
        ip(&["netns", "add", &name])?;
        // From here on the guard deletes the namespace, whatever happens.
        let namespace = Self { name };
        let ns = namespace.name.as_str();
        let [(a, _), (b, _)] = VETH;
        // Both ends are created inside the namespace (`ip -n`), so nothing
        // is ever added to the host's own network.
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        ip(&[
            "-n", ns, "link", "add", a, "type", "veth", "peer", "name", b,
        ])?;
        for (dev, addr) in VETH {
            ip(&["-n", ns, "addr", "add", addr, "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "multicast", "on", "up"])?;
        }
        Ok(namespace)
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("warning: could not delete network namespace: {e}");
        }
    }
}

/// Runs `ip` with `args`; the error names the command and quotes its stderr.
fn ip(args: &[&str]) -> Result<(), String> {
    let command = format!("`ip {}`", args.join(" "));
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{command} could not be run: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{command} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// This process's effective uid, from /proc/self/status.
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    // "Uid:  real  effective  saved  filesystem"
    line.split_whitespace().nth(2)?.parse().ok()
}

/// What a child process printed and how it ended (`None`: killed after the
/// time limit).
struct Run {
    status: Option<ExitStatus>,
    stdout: String,
    stderr: String,
}

/// Waits for `child` for at most `limit`, killing it if it overruns, while
/// draining its output so that a full pipe cannot stall it.
fn wait_with_limit(mut child: std::process::Child, limit: Duration) -> Run {
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut text);
            }
            String::from_utf8_lossy(&text).into_owned()
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait().expect("poll the inner half") {
            Some(status) => break Some(status),
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    Run {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}
