//! `kith-bench SCENARIO [options]`: parses the command line, runs the
//! scenario, prints JSON lines.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use kith_bench::{chat, connect, emit, offline, percentile, proc};

/// Kith benchmarks; one JSON object per metric on standard output.
#[derive(Debug, Parser)]
#[command(name = "kith-bench", version, about)]
struct Args {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Two fresh clients and one kithd on loopback: time until each has
    /// found and connected to the other.
    Connect {
        /// How many runs.
        #[arg(long, default_value_t = 10)]
        runs: usize,
        /// The kithd binary (default: the one beside kith-bench).
        #[arg(long, value_name = "PATH")]
        kithd: Option<PathBuf>,
    },
    /// Two engines made friends through one kithd on loopback: echo round
    /// trips of 100-byte messages, then one-way throughput.
    Chat {
        /// Echo round trips to time.
        #[arg(long, default_value_t = 1000)]
        rounds: usize,
        /// Messages for the one-way run (a multiple of 1,000).
        #[arg(long, default_value_t = 10_000)]
        messages: usize,
        /// The kithd binary (default: the one beside kith-bench).
        #[arg(long, value_name = "PATH")]
        kithd: Option<PathBuf>,
    },
    /// Three kithd volunteers and two engines never online together: time
    /// until the recipient is shown every message left for it, then the
    /// share it gets with two of the three volunteers gone.
    Offline {
        /// Timed runs with every volunteer up.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Messages waiting per run.
        #[arg(long, default_value_t = 100)]
        messages: usize,
        /// The kithd binary (default: the one beside kith-bench).
        #[arg(long, value_name = "PATH")]
        kithd: Option<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut out = std::io::stdout().lock();
    match args.scenario {
        Scenario::Connect { runs, kithd } => {
            anyhow::ensure!(runs > 0, "--runs must be at least 1");
            let binary = proc::kithd_binary(kithd)?;
            let result = runtime.block_on(connect::run(&binary, runs))?;
            let samples = &result.samples_ms;
            for (metric, p) in [("p50_ms", 50.0), ("p99_ms", 99.0)] {
                if let Some(value) = percentile(samples, p) {
                    emit(&mut out, "connect", metric, value)?;
                }
            }
            emit(
                &mut out,
                "connect",
                "kithd_idle_rss_kb",
                result.kithd_idle_rss_kb as f64,
            )?;
            emit(&mut out, "connect", "runs", samples.len() as f64)?;
        }
        Scenario::Chat {
            rounds,
            messages,
            kithd,
        } => {
            anyhow::ensure!(rounds > 0, "--rounds must be at least 1");
            anyhow::ensure!(messages >= 1000, "--messages must be at least 1000");
            let binary = proc::kithd_binary(kithd)?;
            let result = runtime.block_on(chat::run(&binary, rounds, messages))?;
            for (metric, p) in [("rtt_p50_ms", 50.0), ("rtt_p99_ms", 99.0)] {
                if let Some(value) = percentile(&result.rtt_ms, p) {
                    emit(&mut out, "chat", metric, value)?;
                }
            }
            emit(&mut out, "chat", "msgs_per_s", result.msgs_per_s)?;
            emit(&mut out, "chat", "runs", result.rtt_ms.len() as f64)?;
        }
        Scenario::Offline {
            runs,
            messages,
            kithd,
        } => {
            anyhow::ensure!(runs > 0, "--runs must be at least 1");
            anyhow::ensure!(messages > 0, "--messages must be at least 1");
            let binary = proc::kithd_binary(kithd)?;
            let result = runtime.block_on(offline::run(&binary, runs, messages))?;
            for (metric, p) in [("deliver_ms_p50", 50.0), ("deliver_ms_max", 100.0)] {
                if let Some(value) = percentile(&result.deliver_ms, p) {
                    emit(&mut out, "offline", metric, value)?;
                }
            }
            emit(
                &mut out,
                "offline",
                "delivered_ratio",
                result.delivered_ratio,
            )?;
            emit(&mut out, "offline", "runs", result.deliver_ms.len() as f64)?;
        }
    }
    Ok(())
}
