//! `kithd`: parses the command line and config, then runs the node.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use kith_node::{FileConfig, NodeConfig, Overrides};

/// A headless Kith node: bootstraps the DHT, relays for peers behind NAT,
/// keeps offline mail for peers, and exports Prometheus metrics on
/// loopback.
#[derive(Debug, Parser)]
#[command(name = "kithd", version, about)]
struct Args {
    /// TOML config file (see packaging/kithd.toml); flags override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Folder for the node key and the mailbox store (created 0700 if
    /// missing).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Address to listen on; repeatable. Port 0 picks a free port.
    /// Default: TCP and QUIC on port 4747 on all interfaces.
    #[arg(long, value_name = "MULTIADDR")]
    listen: Vec<String>,
    /// A public address to announce (for nodes behind port forwarding);
    /// repeatable.
    #[arg(long, value_name = "MULTIADDR")]
    external: Vec<String>,
    /// Another node to join, ending in /p2p/<peer id>; repeatable.
    #[arg(long, value_name = "MULTIADDR")]
    bootstrap: Vec<String>,
    /// Where to serve Prometheus metrics (default 127.0.0.1:9747).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,
    /// Serve no metrics.
    #[arg(long, conflicts_with = "metrics")]
    no_metrics: bool,
    /// Relay reservations held at once.
    #[arg(long, value_name = "N")]
    relay_max_reservations: Option<usize>,
    /// Relay circuits at once.
    #[arg(long, value_name = "N")]
    relay_max_circuits: Option<usize>,
    /// Relay circuits per peer.
    #[arg(long, value_name = "N")]
    relay_max_circuits_per_peer: Option<usize>,
    /// Longest relay circuit, in seconds.
    #[arg(long, value_name = "SECS")]
    relay_circuit_secs: Option<u64>,
    /// Most bytes per relay circuit and direction.
    #[arg(long, value_name = "BYTES")]
    relay_circuit_bytes: Option<u64>,
    /// Keep no offline mail for others.
    #[arg(long, conflicts_with_all = [
        "mailbox_quota_mb", "mailbox_address_quota_kb", "mailbox_ttl_max_secs",
        "mailbox_pow_bits", "mailbox_deposits_per_minute", "mailbox_burst",
        "mailbox_sweep_secs", "mailbox_handoff_secs",
    ])]
    no_mailbox: bool,
    /// Offline mail kept in all, in MiB of encoded items (default 256).
    #[arg(long, value_name = "MIB")]
    mailbox_quota_mb: Option<u64>,
    /// Offline mail kept per mailbox address, in KiB (default 4096).
    #[arg(long, value_name = "KIB")]
    mailbox_address_quota_kb: Option<u64>,
    /// Longest offline-mail lifetime accepted, in seconds (default 14 days).
    #[arg(long, value_name = "SECS")]
    mailbox_ttl_max_secs: Option<u64>,
    /// Proof-of-work bits each deposit must carry (default 17, at most 24).
    #[arg(long, value_name = "BITS")]
    mailbox_pow_bits: Option<u32>,
    /// Deposits one peer may make per minute (default 30).
    #[arg(long, value_name = "N")]
    mailbox_deposits_per_minute: Option<u32>,
    /// Deposits one peer may make in a burst above that rate (default 10).
    #[arg(long, value_name = "N")]
    mailbox_burst: Option<u32>,
    /// Seconds between deletions of expired mail (default 60).
    #[arg(long, value_name = "SECS")]
    mailbox_sweep_secs: Option<u64>,
    /// Seconds between hand-offs of mail to closer volunteers (default 600).
    #[arg(long, value_name = "SECS")]
    mailbox_handoff_secs: Option<u64>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KITHD_LOG")
                // The first node of a network has nobody to bootstrap from;
                // libp2p warns about that on every refresh.
                .unwrap_or_else(|_| {
                    tracing_subscriber::EnvFilter::new("info,libp2p_kad::behaviour=error")
                }),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    kith_process::keep_releasing_pages();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let error: &dyn std::error::Error = error.as_ref();
            eprintln!("kithd: {}", kith_net::describe(error));
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let file = match &args.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let config = NodeConfig::resolve(
        file,
        Overrides {
            data_dir: args.data_dir,
            listen: args.listen,
            external: args.external,
            bootstrap: args.bootstrap,
            metrics: args.metrics,
            no_metrics: args.no_metrics,
            relay_max_reservations: args.relay_max_reservations,
            relay_max_circuits: args.relay_max_circuits,
            relay_max_circuits_per_peer: args.relay_max_circuits_per_peer,
            relay_circuit_secs: args.relay_circuit_secs,
            relay_circuit_bytes: args.relay_circuit_bytes,
            no_mailbox: args.no_mailbox,
            mailbox_quota_mb: args.mailbox_quota_mb,
            mailbox_address_quota_kb: args.mailbox_address_quota_kb,
            mailbox_ttl_max_secs: args.mailbox_ttl_max_secs,
            mailbox_pow_bits: args.mailbox_pow_bits,
            mailbox_deposits_per_minute: args.mailbox_deposits_per_minute,
            mailbox_burst: args.mailbox_burst,
            mailbox_sweep_secs: args.mailbox_sweep_secs,
            mailbox_handoff_secs: args.mailbox_handoff_secs,
        },
    )?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut stdout = std::io::stdout();
        kith_node::run(config, &mut stdout, shutdown_signal()).await
    })?;
    Ok(())
}

/// Completes on SIGINT or SIGTERM. The handlers are installed at once, not
/// when the future is first polled, so a signal that arrives while the node
/// starts (say, just after it printed its addresses) stops it cleanly
/// instead of killing it. Must be called inside the runtime.
fn shutdown_signal() -> impl Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        async move {
            match (term, int) {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = int.recv() => {}
                        _ = term.recv() => {}
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
