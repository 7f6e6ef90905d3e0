//! Running `kithd` as a child process and reading its memory use.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

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
        let mut child = command
            .arg("--data-dir")
            .arg(data.path())
            .args(["--listen", "/ip4/127.0.0.1/tcp/0", "--no-metrics"])
            .env("KITHD_LOG", "warn,libp2p_kad::behaviour=error")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let stdout = child.stdout.take().context("kithd stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let addr: Multiaddr = line
            .trim()
            .parse()
            .with_context(|| format!("kithd printed {line:?}, not an address"))?;
        Ok(Self {
            child,
            addrs: vec![addr],
            _data: data,
        })
    }

    /// Resident memory of the process, in KiB.
    pub fn rss_kb(&self) -> anyhow::Result<u64> {
        rss_kb(self.child.id())
    }
}

impl Drop for Kithd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `VmRSS` of process `pid`, in KiB (Linux).
pub fn rss_kb(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .context("reading /proc (RSS is measured on Linux)")?;
    for line in status.lines() {
        if let Some(rest) = line.strip_prefix("VmRSS:") {
            let kb = rest.trim().trim_end_matches("kB").trim();
            return kb.parse().context("parsing VmRSS");
        }
    }
    bail!("no VmRSS line for process {pid}")
}

/// The `kithd` next to this executable (both come from the same `cargo
/// build`), unless `explicit` names one.
pub fn kithd_binary(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(path) = explicit {
        return Ok(path);
    }
    let here = std::env::current_exe()?;
    let sibling = here.with_file_name(format!("kithd{}", std::env::consts::EXE_SUFFIX));
    if sibling.exists() {
        Ok(sibling)
    } else {
        bail!(
            "no kithd beside {}; build it with `cargo build --release -p kith-node` or pass --kithd PATH",
            here.display()
        )
    }
}
