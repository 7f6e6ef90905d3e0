//! `memory`: resident memory of one idle client and of one idle `kithd`,
//! each in a process of its own so that nothing else shares the figure.
//!
//! A fresh `kithd` starts on 127.0.0.1 (TCP); then a `kith daemon`, the
//! `kith` binary beside `kith-bench`, with a new identity in a temporary
//! `KITH_HOME`, bootstrapping from it and listening on TCP and QUIC on
//! 127.0.0.1 as a desktop client does on every interface. After
//! `--warmup` seconds (90), by when the client has joined the DHT, published
//! its presence, polled its request drop and fetched its mail, and both have
//! given back the pages of code only start-up used (a minute after they
//! started, `kith_process::STARTUP`; again after any later burst of work,
//! `kith_process::ReleasePolicy`) and run long enough to touch again what
//! idle running uses, both processes' `VmRSS`
//! is read once a second for `--secs` seconds (60). The largest reading,
//! the median and how many readings were over 10 MB (10,240 KiB, the
//! client's target) are reported for each, the largest reading split into
//! anonymous memory (heap, stacks) and mapped files (mostly the binary's
//! code, shared with any other process running it), and each process's
//! peak since it started (`VmHWM`).

use std::path::Path;
use std::time::Duration;

use anyhow::Context;

use crate::percentile;
use crate::proc::{KithDaemon, Kithd, peak_rss_kb, rss_kb, status_kb};

/// The client's target, KiB (issue 9: an idle client under 10 MB).
pub const TARGET_KB: f64 = 10.0 * 1024.0;

/// Memory of one process, KiB.
#[derive(Debug, Clone, Default)]
pub struct ProcessMemory {
    /// Every reading of the RSS over the sampling window, in order.
    pub readings: Vec<f64>,
    /// Anonymous part of the RSS at the largest reading (the first of
    /// equal ones).
    pub anon_kb: u64,
    /// File-backed part of the RSS at the largest reading.
    pub file_kb: u64,
    /// Peak RSS since the process started.
    pub peak_kb: u64,
    /// The largest reading so far, to split the next one without going
    /// through all of them.
    largest_kb: Option<f64>,
}

impl ProcessMemory {
    fn sample(&mut self, pid: u32) -> anyhow::Result<()> {
        let rss = rss_kb(pid)? as f64;
        self.record(rss, status_kb(pid, "RssAnon")?, status_kb(pid, "RssFile")?);
        Ok(())
    }

    fn record(&mut self, rss_kb: f64, anon_kb: u64, file_kb: u64) {
        if self.largest_kb.is_none_or(|largest| rss_kb > largest) {
            self.largest_kb = Some(rss_kb);
            self.anon_kb = anon_kb;
            self.file_kb = file_kb;
        }
        self.readings.push(rss_kb);
    }

    /// How many readings were over [`TARGET_KB`].
    pub fn readings_over_target(&self) -> usize {
        self.readings.iter().filter(|&&kb| kb > TARGET_KB).count()
    }

    /// The largest reading (0 without readings).
    pub fn max_kb(&self) -> f64 {
        percentile(&self.readings, 100.0).unwrap_or(0.0)
    }

    /// The median reading (0 without readings).
    pub fn median_kb(&self) -> f64 {
        percentile(&self.readings, 50.0).unwrap_or(0.0)
    }
}

/// Results of the scenario.
#[derive(Debug, Clone)]
pub struct MemoryResult {
    /// The `kith daemon`.
    pub client: ProcessMemory,
    /// The `kithd`.
    pub kithd: ProcessMemory,
}

/// Runs the scenario with the `kithd` and `kith` binaries given.
pub async fn run(
    kithd: &Path,
    kith: &Path,
    warmup: Duration,
    secs: u64,
) -> anyhow::Result<MemoryResult> {
    let node = Kithd::start(kithd)?;
    let bootstrap = node.addrs.first().context("kithd address")?.clone();
    let client = KithDaemon::start(kith, &[bootstrap])?;
    tokio::time::sleep(warmup).await;
    let mut result = MemoryResult {
        client: ProcessMemory::default(),
        kithd: ProcessMemory::default(),
    };
    for second in 0..secs.max(1) {
        if second > 0 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        result.client.sample(client.pid())?;
        result.kithd.sample(node.pid())?;
    }
    result.client.peak_kb = peak_rss_kb(client.pid())?;
    result.kithd.peak_kb = peak_rss_kb(node.pid())?;
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_split_is_the_largest_readings_and_readings_over_10_mb_are_counted() {
        let mut memory = ProcessMemory::default();
        for (rss, anon, file) in [
            (8_000.0, 3_000, 5_000),
            (10_300.0, 3_100, 7_200),
            (10_300.0, 3_300, 7_000),
            (9_000.0, 3_200, 5_800),
            (10_241.0, 3_000, 7_241),
        ] {
            memory.record(rss, anon, file);
        }
        assert_eq!((memory.anon_kb, memory.file_kb), (3_100, 7_200));
        assert_eq!(memory.max_kb(), 10_300.0);
        assert_eq!(memory.median_kb(), 10_241.0);
        assert_eq!(memory.readings_over_target(), 3);
    }
}
