//! `kith-bench SCENARIO [options]`: parses the command line, runs the
//! scenario, prints JSON lines.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use kith_bench::{
    chat, connect, dht, emit, emit_percentiles, emit_run, gui, idle, memory, offline, proc,
};

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
    /// An in-process network of kith-net nodes on the memory transport
    /// (DHT servers and clients that publish their presence): presence
    /// lookups of random clients by random clients while a share of the
    /// nodes leaves.
    Dht {
        /// Nodes in all, DHT servers and clients.
        #[arg(long, default_value_t = 1000)]
        nodes: usize,
        /// How many of the nodes are DHT servers (what kithd runs); the
        /// rest are clients (default: a tenth of the nodes, at least 3).
        #[arg(long)]
        servers: Option<usize>,
        /// Lookups, one after another.
        #[arg(long, default_value_t = 500)]
        lookups: usize,
        /// Share of the nodes that leaves during the lookups, spread
        /// evenly over them.
        #[arg(long, default_value_t = 0.2)]
        churn: f64,
        /// Seed of the random choices (which nodes bootstrap from which,
        /// who looks up whom, who leaves).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Stop with an error once the process holds more memory than this
        /// (MiB), rather than crowd out others on the machine.
        #[arg(long, default_value_t = 12_288)]
        max_rss_mb: u64,
    },
    /// Resident memory of one idle client (`kith daemon`) and of one idle
    /// kithd, each in its own process, after a warm-up.
    Memory {
        /// Seconds to let both settle before measuring: past the minute
        /// after which they give back their start-up pages, and the
        /// half-minute in which idle running touches again what it uses.
        #[arg(long, default_value_t = 90)]
        warmup: u64,
        /// Seconds to sample (once a second; the largest reading counts).
        #[arg(long, default_value_t = 60)]
        secs: u64,
        /// The kithd binary (default: the one beside kith-bench).
        #[arg(long, value_name = "PATH")]
        kithd: Option<PathBuf>,
        /// The kith binary (default: the one beside kith-bench).
        #[arg(long, value_name = "PATH")]
        kith: Option<PathBuf>,
    },
    /// Client engines in pairs of friends and one kithd on loopback,
    /// nothing sent: traffic and CPU per client and minute.
    Idle {
        /// Client engines (an even number: they are friends in pairs).
        #[arg(long, default_value_t = 20)]
        nodes: usize,
        /// Seconds measured.
        #[arg(long, default_value_t = 60)]
        secs: u64,
        /// Seconds between making friends and measuring; past the 120 s
        /// idle-connection timeout, connections opened while making friends
        /// have closed.
        #[arg(long, default_value_t = 150)]
        warmup: u64,
        /// Seconds between polls of each client's request drop when no
        /// request is expected (default: the engine's, 30 min), to see what
        /// the polls cost.
        #[arg(long, value_name = "SECS")]
        request_poll: Option<u64>,
        /// Seconds between fetches of each client's mail (default: the
        /// engine's, 30 min).
        #[arg(long, value_name = "SECS")]
        mail_fetch: Option<u64>,
        /// Seconds a request stays expected after the user looks (the
        /// engine's default is 15 min; making friends is such a look, so
        /// the default here ends it within the warm-up and the window sees
        /// the state a device reaches 15 minutes after its user last
        /// looked).
        #[arg(long, value_name = "SECS", default_value_t = 60)]
        expecting: u64,
        /// Sets one of the clients' kith-net timers (a field of
        /// `kith_net::Timers`, such as `kad_replication=60`), to bring a
        /// slow timer into the window; repeatable.
        #[arg(long, value_name = "NAME=SECS")]
        net_timer: Vec<String>,
        /// The kithd binary (default: the one beside kith-bench).
        #[arg(long, value_name = "PATH")]
        kithd: Option<PathBuf>,
    },
    /// The desktop window (`kith` with no command) on a private Xvfb
    /// display, with a friend and a conversation prepared through two
    /// `kith daemon`s and one kithd on loopback: time to its first frame,
    /// time until it has opened the conversation and scrolled back through
    /// 1,000 messages, and its resident memory then.
    Gui {
        /// Window launches (the conversation is prepared once).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Messages in the conversation, half from each side (the window
        /// loads at most 1,000).
        #[arg(long, default_value_t = 1000)]
        messages: usize,
        /// The renderer iced is told to use (`ICED_BACKEND`; default:
        /// iced's choice, wgpu when it finds an adapter, else tiny-skia).
        #[arg(long, value_enum)]
        renderer: Option<gui::Renderer>,
        /// The kithd binary (default: the one beside kith-bench).
        #[arg(long, value_name = "PATH")]
        kithd: Option<PathBuf>,
        /// The kith binary (default: the one beside kith-bench).
        #[arg(long, value_name = "PATH")]
        kith: Option<PathBuf>,
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
            emit_percentiles(
                &mut out,
                "connect",
                samples,
                &[("p50_ms", 50.0), ("p99_ms", 99.0)],
            )?;
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
            emit_percentiles(
                &mut out,
                "chat",
                &result.rtt_ms,
                &[("rtt_p50_ms", 50.0), ("rtt_p99_ms", 99.0)],
            )?;
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
            emit_percentiles(
                &mut out,
                "offline",
                &result.deliver_ms,
                &[("deliver_ms_p50", 50.0), ("deliver_ms_max", 100.0)],
            )?;
            emit(
                &mut out,
                "offline",
                "delivered_ratio",
                result.delivered_ratio,
            )?;
            emit(&mut out, "offline", "runs", result.deliver_ms.len() as f64)?;
        }
        Scenario::Dht {
            nodes,
            servers,
            lookups,
            churn,
            seed,
            max_rss_mb,
        } => {
            anyhow::ensure!(lookups > 0, "--lookups must be at least 1");
            anyhow::ensure!((0.0..1.0).contains(&churn), "--churn must be in [0, 1)");
            let params = dht::DhtParams {
                nodes,
                servers: servers.unwrap_or((nodes / 10).max(3)),
                lookups,
                churn,
                seed,
                max_rss_kb: max_rss_mb.saturating_mul(1024),
            };
            let result = runtime.block_on(dht::run(&params))?;
            let runs = result.lookup_ms.len() as f64;
            emit(&mut out, "dht", "nodes", nodes as f64)?;
            emit(&mut out, "dht", "servers", params.servers as f64)?;
            emit(&mut out, "dht", "departed", result.departed as f64)?;
            emit(
                &mut out,
                "dht",
                "success_ratio",
                result.successes as f64 / runs,
            )?;
            emit_percentiles(
                &mut out,
                "dht",
                &result.lookup_ms,
                &[("lookup_p50_ms", 50.0), ("lookup_p99_ms", 99.0)],
            )?;
            emit_percentiles(
                &mut out,
                "dht",
                &result.peers_asked,
                &[("peers_asked_p50", 50.0), ("peers_asked_p99", 99.0)],
            )?;
            // The process's memory before the first node started (runtime,
            // binary) is no node's.
            emit(
                &mut out,
                "dht",
                "rss_kb_per_node",
                result.rss_kb.saturating_sub(result.rss_kb_before) as f64 / nodes as f64,
            )?;
            emit(&mut out, "dht", "rss_kb", result.rss_kb as f64)?;
            emit(
                &mut out,
                "dht",
                "rss_kb_before_nodes",
                result.rss_kb_before as f64,
            )?;
            emit(&mut out, "dht", "settle_s", result.settle_s)?;
            emit(&mut out, "dht", "connections_per_node", result.connections)?;
            emit(&mut out, "dht", "routing_entries_per_node", result.table)?;
            emit(
                &mut out,
                "dht",
                "join_requests_per_node",
                result.join_requests / nodes as f64,
            )?;
            emit(&mut out, "dht", "runs", runs)?;
        }
        Scenario::Memory {
            warmup,
            secs,
            kithd,
            kith,
        } => {
            let kithd = proc::kithd_binary(kithd)?;
            let kith = proc::kith_binary(kith)?;
            let result = runtime.block_on(memory::run(
                &kithd,
                &kith,
                Duration::from_secs(warmup),
                secs,
            ))?;
            for (who, memory) in [("client", result.client), ("kithd", result.kithd)] {
                for (what, kb) in [
                    ("rss_kb", memory.max_kb()),
                    ("rss_median_kb", memory.median_kb()),
                    ("rss_anon_kb", memory.anon_kb as f64),
                    ("rss_file_kb", memory.file_kb as f64),
                    ("peak_rss_kb", memory.peak_kb as f64),
                    ("rss_readings", memory.readings.len() as f64),
                    (
                        "rss_readings_over_10mb",
                        memory.readings_over_target() as f64,
                    ),
                ] {
                    emit(&mut out, "memory", &format!("{who}_{what}"), kb)?;
                }
            }
            emit(&mut out, "memory", "runs", 1.0)?;
        }
        Scenario::Idle {
            nodes,
            secs,
            warmup,
            request_poll,
            mail_fetch,
            expecting,
            net_timer,
            kithd,
        } => {
            anyhow::ensure!(secs > 0, "--secs must be at least 1");
            let mut timers = kith_net::Timers::default();
            for setting in &net_timer {
                let (name, value) = setting
                    .split_once('=')
                    .with_context(|| format!("--net-timer {setting:?}: expected NAME=SECS"))?;
                let secs: u64 = value
                    .parse()
                    .with_context(|| format!("--net-timer {setting:?}: seconds expected"))?;
                idle::set_timer(&mut timers, name, Duration::from_secs(secs))?;
            }
            let binary = proc::kithd_binary(kithd)?;
            let params = idle::IdleParams {
                nodes,
                warmup: Duration::from_secs(warmup),
                secs,
                request_poll: request_poll.map(Duration::from_secs),
                mail_fetch: mail_fetch.map(Duration::from_secs),
                expecting: Duration::from_secs(expecting),
                timers,
            };
            let result = runtime.block_on(idle::run(&binary, &params))?;
            let per_node_min = |total: f64| total / nodes as f64 * 60.0 / result.window_s;
            let per_min = |total: f64| total * 60.0 / result.window_s;
            for (metric, value) in [
                ("bytes_per_node_per_min", per_node_min(result.bytes_sent)),
                (
                    "bytes_received_per_node_per_min",
                    per_node_min(result.bytes_received),
                ),
                ("packets_per_node_per_min", per_node_min(result.segs_out)),
                (
                    "wire_bytes_per_node_per_min",
                    per_node_min(result.wire_bytes_sent()),
                ),
                (
                    "bytes_to_kithd_per_node_per_min",
                    per_node_min(result.bytes_to_kithd),
                ),
                ("cpu_ms_per_node_per_min", per_node_min(result.cpu_ms)),
                ("kithd_bytes_per_min", per_min(result.kithd_bytes_sent)),
                ("kithd_packets_per_min", per_min(result.kithd_segs_out)),
                ("kithd_cpu_ms_per_min", per_min(result.kithd_cpu_ms)),
                ("connections_per_node", result.connections),
                ("window_s", result.window_s),
            ] {
                emit(&mut out, "idle", metric, value)?;
            }
            emit(&mut out, "idle", "runs", 1.0)?;
        }
        Scenario::Gui {
            runs,
            messages,
            renderer,
            kithd,
            kith,
        } => {
            anyhow::ensure!(runs > 0, "--runs must be at least 1");
            anyhow::ensure!(messages > 0, "--messages must be at least 1");
            let params = gui::GuiParams {
                kithd: proc::kithd_binary(kithd)?,
                kith: proc::kith_binary(kith)?,
                messages,
                runs,
                renderer,
            };
            let results = gui::run(&params)?;
            for (index, run) in results.iter().enumerate() {
                for (metric, value) in [
                    ("first_frame_ms", run.first_frame_ms),
                    ("launch_to_first_frame_ms", run.launch_ms),
                    ("conversation_ms", run.conversation_ms),
                    ("messages", run.messages as f64),
                    ("rss_kb", run.rss_kb as f64),
                    ("rss_anon_kb", run.anon_kb as f64),
                    ("rss_file_kb", run.file_kb as f64),
                    ("peak_rss_kb", run.peak_kb as f64),
                ] {
                    emit_run(&mut out, "gui", index + 1, metric, value)?;
                }
            }
            let of = |pick: fn(&gui::GuiRun) -> f64| results.iter().map(pick).collect::<Vec<_>>();
            emit_percentiles(
                &mut out,
                "gui",
                &of(|r| r.first_frame_ms),
                &[("first_frame_ms_p50", 50.0), ("first_frame_ms_max", 100.0)],
            )?;
            emit_percentiles(
                &mut out,
                "gui",
                &of(|r| r.conversation_ms),
                &[("conversation_ms_p50", 50.0)],
            )?;
            // Memory: the largest over runs, with its parts.
            if let Some(run) = results.iter().max_by_key(|r| r.rss_kb) {
                emit(&mut out, "gui", "rss_kb", run.rss_kb as f64)?;
                emit(&mut out, "gui", "rss_anon_kb", run.anon_kb as f64)?;
                emit(&mut out, "gui", "rss_file_kb", run.file_kb as f64)?;
            }
            emit_percentiles(
                &mut out,
                "gui",
                &of(|r| r.messages as f64),
                &[("messages", 0.0)],
            )?;
            emit(&mut out, "gui", "runs", results.len() as f64)?;
        }
    }
    Ok(())
}
