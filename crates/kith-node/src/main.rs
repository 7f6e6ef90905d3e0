//! `kithd`: parses the command line and config, then runs the node.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use kith_node::{FileConfig, NodeConfig, Overrides};

/// A headless Kith node: bootstraps the DHT, relays for peers behind NAT,
/// and exports Prometheus metrics on loopback.
#[derive(Debug, Parser)]
#[command(name = "kithd", version, about)]
struct Args {
    /// TOML config file (see packaging/kithd.toml); flags override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Folder for the node key (created 0700 if missing).
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
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("kithd: {error:#}");
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

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
