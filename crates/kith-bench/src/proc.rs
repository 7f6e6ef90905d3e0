//! Running `kithd` and `kith daemon` as child processes, and reading
//! memory and CPU use of processes from `/proc` (Linux).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use kith_net::Multiaddr;

/// A running `kithd`, killed when dropped.
pub struct Kithd {
    child: Child,
    /// Its shareable addresses, as printed on start.
    pub addrs: Vec<Multiaddr>,
    _data: tempfile::TempDir,
}

impl Kithd {
    /// Starts `binary` with a fresh data folder, listening on a free TCP
    /// port on 127.0.0.1, without metrics.
    pub fn start(binary: &Path) -> anyhow::Result<Self> {
        Self::start_with(binary, &[])
    }

    /// Like [`Self::start`], bootstrapping from `bootstrap`.
    pub fn start_with(binary: &Path, bootstrap: &[Multiaddr]) -> anyhow::Result<Self> {
        let data = tempfile::tempdir()?;
        let mut command = Command::new(binary);
        for addr in bootstrap {
            command.arg("--bootstrap").arg(addr.to_string());
        }
        let child = command
            .arg("--data-dir")
            .arg(data.path())
            .args(["--listen", "/ip4/127.0.0.1/tcp/0", "--no-metrics"])
            .env("KITHD_LOG", "warn,libp2p_kad::behaviour=error")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        // Killed on every early return from here on.
        let mut node = Self {
            child,
            addrs: Vec::new(),
            _data: data,
        };
        let stdout = node.child.stdout.take().context("kithd stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let addr: Multiaddr = line
            .trim()
            .parse()
            .with_context(|| format!("kithd printed {line:?}, not an address"))?;
        node.addrs.push(addr);
        Ok(node)
    }

    /// Resident memory of the process, in KiB.
    pub fn rss_kb(&self) -> anyhow::Result<u64> {
        rss_kb(self.child.id())
    }

    /// The process ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Kithd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `kith daemon` (a client with its engine) on a profile in a
/// `KITH_HOME`, killed when dropped (or stopped with [`Self::stop`]).
pub struct KithDaemon {
    child: Child,
    _home: Option<tempfile::TempDir>,
}

impl KithDaemon {
    /// Creates an identity with `binary id new` in a fresh temporary
    /// `KITH_HOME`, then starts the daemon as [`Self::start_in`] does.
    pub fn start(binary: &Path, bootstrap: &[Multiaddr]) -> anyhow::Result<Self> {
        let home = tempfile::tempdir()?;
        let status = Command::new(binary)
            .env("KITH_HOME", home.path())
            .args(["--profile", "bench", "--json", "id", "new"])
            .stdout(Stdio::null())
            .status()
            .with_context(|| format!("starting {}", binary.display()))?;
        if !status.success() {
            bail!("`kith id new` failed: {status}");
        }
        let mut daemon = Self::start_in(binary, home.path(), "bench", bootstrap)?;
        daemon._home = Some(home);
        Ok(daemon)
    }

    /// Starts `binary daemon` for `profile` (which must hold an identity)
    /// in `home`, bootstrapping from `bootstrap` and listening on TCP and
    /// QUIC on 127.0.0.1 (a desktop client's default transports, loopback
    /// only). Returns once the daemon says it is running.
    pub fn start_in(
        binary: &Path,
        home: &Path,
        profile: &str,
        bootstrap: &[Multiaddr],
    ) -> anyhow::Result<Self> {
        let mut command = Command::new(binary);
        for addr in bootstrap {
            command.arg("--bootstrap").arg(addr.to_string());
        }
        let child = command
            .env("KITH_HOME", home)
            .args(["--profile", profile, "--json"])
            .args(["--listen", "/ip4/127.0.0.1/tcp/0"])
            .args(["--listen", "/ip4/127.0.0.1/udp/0/quic-v1"])
            .arg("daemon")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        // Killed on every early return from here on.
        let mut daemon = Self { child, _home: None };
        let stdout = daemon.child.stdout.take().context("kith daemon stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = lines
            .next()
            .context("kith daemon ended before saying it runs")??;
        let started: serde_json::Value = serde_json::from_str(line.trim())
            .with_context(|| format!("kith daemon printed {line:?}"))?;
        if started.get("daemon").is_none() {
            bail!("kith daemon printed {line:?}, not its start line");
        }
        // Keep reading what it prints (events), so that it never writes
        // into a closed pipe.
        std::thread::spawn(move || for _ in lines {});
        Ok(daemon)
    }

    /// The process ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the daemon as Ctrl-C would (SIGTERM), so that it closes its
    /// store and frees the profile; killed if it is still running after
    /// `grace`.
    pub fn stop(&mut self, grace: Duration) -> anyhow::Result<ExitStatus> {
        terminate(&mut self.child, grace)
    }
}

impl Drop for KithDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends SIGTERM to `child` (with the `kill` command: no unsafe code for
/// a signal) and waits up to `grace` for it to end, then kills it.
/// Returns how it ended.
pub fn terminate(child: &mut Child, grace: Duration) -> anyhow::Result<ExitStatus> {
    if let Some(status) = child.try_wait()? {
        return Ok(status);
    }
    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .context("running kill")?;
    if sent.success() {
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    child.kill()?;
    Ok(child.wait()?)
}

/// `VmRSS` of this process, in KiB.
pub fn self_rss_kb() -> anyhow::Result<u64> {
    rss_kb(std::process::id())
}

/// `VmRSS` of process `pid`, in KiB (Linux).
pub fn rss_kb(pid: u32) -> anyhow::Result<u64> {
    status_kb(pid, "VmRSS")
}

/// `VmHWM` of process `pid`: the most resident memory it has had, in KiB.
pub fn peak_rss_kb(pid: u32) -> anyhow::Result<u64> {
    status_kb(pid, "VmHWM")
}

/// A `kB` field of `/proc/PID/status`, such as `VmRSS`, `RssAnon` (heap
/// and stacks) or `RssFile` (mapped files: mostly the binary's code).
pub fn status_kb(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .context("reading /proc (memory is measured on Linux)")?;
    for line in status.lines() {
        if let Some(rest) = line
            .strip_prefix(field)
            .and_then(|rest| rest.strip_prefix(':'))
        {
            let kb = rest.trim().trim_end_matches("kB").trim();
            return kb.parse().with_context(|| format!("parsing {field}"));
        }
    }
    bail!("no {field} line for process {pid}")
}

/// CPU time process `pid` has used, user and system together, in
/// milliseconds (from `/proc/PID/stat`; the clock tick is 10 ms on Linux
/// with the usual `CLK_TCK` of 100).
pub fn cpu_ms(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .context("reading /proc (CPU time is measured on Linux)")?;
    // The command name may hold spaces and parentheses: fields are counted
    // from the last ')', where field 3 (the state) starts.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("malformed /proc stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |index: usize| -> anyhow::Result<u64> {
        fields
            .get(index)
            .context("short /proc stat")?
            .parse::<u64>()
            .context("parsing /proc stat")
    };
    // utime is field 14 and stime field 15: indices 11 and 12 from the state.
    let total = ticks(11)? + ticks(12)?;
    Ok(total as f64 * 1000.0 / clock_ticks_per_sec() as f64)
}

/// `CLK_TCK`, from `getconf` (100 when that is not available).
fn clock_ticks_per_sec() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|text| text.trim().parse().ok())
            .filter(|&ticks| ticks > 0)
            .unwrap_or(100)
    })
}

/// The `kithd` next to this executable (both come from the same `cargo
/// build`), unless `explicit` names one.
pub fn kithd_binary(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    sibling_binary("kithd", "kith-node", explicit)
}

/// The `kith` command-line client next to this executable, unless
/// `explicit` names one.
pub fn kith_binary(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    sibling_binary("kith", "kith-gui", explicit)
}

fn sibling_binary(name: &str, package: &str, explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(path) = explicit {
        return Ok(path);
    }
    let here = std::env::current_exe()?;
    let sibling = here.with_file_name(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if sibling.exists() {
        Ok(sibling)
    } else {
        bail!(
            "no {name} beside {}; build it with `cargo build --release -p {package}` or pass --{name} PATH",
            here.display()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_parts_add_up_to_the_total() {
        let me = std::process::id();
        // The kernel reads the three parts from one set of counters, but a
        // page may come or go between two reads: allow a little slack.
        let parts = status_kb(me, "RssAnon").unwrap()
            + status_kb(me, "RssFile").unwrap()
            + status_kb(me, "RssShmem").unwrap();
        let total = rss_kb(me).unwrap();
        assert!(total > 0);
        assert!(
            parts.abs_diff(total) <= 256,
            "{parts} KiB of parts, {total} KiB in all"
        );
        assert!(peak_rss_kb(me).unwrap() + 256 >= total);
        // A field name must match whole, up to its colon.
        assert!(status_kb(me, "VmRS").is_err());
    }

    #[test]
    fn cpu_time_grows_with_work() {
        let me = std::process::id();
        let before = cpu_ms(me).unwrap();
        let started = Instant::now();
        let mut x = 0u64;
        while started.elapsed() < Duration::from_millis(300) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(1));
        }
        let used = cpu_ms(me).unwrap() - before;
        // At least a third of the 300 ms on the CPU, even on a busy machine.
        assert!(used >= 100.0, "{used} ms");
    }

    #[test]
    fn terminate_ends_a_process_with_sigterm() {
        use std::os::unix::process::ExitStatusExt;
        let mut child = Command::new("sleep").arg("600").spawn().unwrap();
        let status = terminate(&mut child, Duration::from_secs(30)).unwrap();
        assert_eq!(status.signal(), Some(15), "{status}");
        // Once ended, it is ended: the status again, no signal sent.
        let again = terminate(&mut child, Duration::from_secs(30)).unwrap();
        assert_eq!(again.signal(), Some(15));
    }
}
