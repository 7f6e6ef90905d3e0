//! Kith's benchmark scenarios. Each prints one JSON object per line,
//! `{"scenario":…,"metric":…,"value":…}`, ending with a `runs` line, so
//! results can be collected by any tool and pasted into `BENCHMARKS.md`.
//!
//! Scenarios run the real code: real `kithd` and `kith` processes on
//! loopback, real `kith-net` nodes and `kith-core` engines, never
//! stand-ins. The `dht` scenario runs its network in one process on
//! libp2p's memory transport. Build with `--release`.
//!
//! A scenario that repeats a measurement may also print each run's
//! figures, as lines with a `run` field (1, 2, …) after `value`.

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod chat;
pub mod connect;
pub mod dht;
pub mod gui;
pub mod idle;
pub mod memory;
pub mod offline;
pub mod proc;

use std::io::Write;

/// One output line; fields serialize in this order.
#[derive(serde::Serialize)]
struct Line<'a> {
    scenario: &'a str,
    metric: &'a str,
    value: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    run: Option<usize>,
}

impl Line<'_> {
    fn write(&self, out: &mut impl Write) -> std::io::Result<()> {
        let line = serde_json::to_string(self).map_err(std::io::Error::other)?;
        writeln!(out, "{line}")
    }
}

/// Writes one metric line.
pub fn emit(out: &mut impl Write, scenario: &str, metric: &str, value: f64) -> std::io::Result<()> {
    Line {
        scenario,
        metric,
        value,
        run: None,
    }
    .write(out)
}

/// Writes one metric line of run `run` (counted from 1).
pub fn emit_run(
    out: &mut impl Write,
    scenario: &str,
    run: usize,
    metric: &str,
    value: f64,
) -> std::io::Result<()> {
    Line {
        scenario,
        metric,
        value,
        run: Some(run),
    }
    .write(out)
}

/// Writes one line per `(metric, p)`: the `p`-th percentile of `samples`;
/// nothing when there are no samples.
pub fn emit_percentiles(
    out: &mut impl Write,
    scenario: &str,
    samples: &[f64],
    metrics: &[(&str, f64)],
) -> std::io::Result<()> {
    for &(metric, p) in metrics {
        if let Some(value) = percentile(samples, p) {
            emit(out, scenario, metric, value)?;
        }
    }
    Ok(())
}

/// The `p`-th percentile (0–100) of `samples` by nearest rank; `None` when
/// there are no samples.
pub fn percentile(samples: &[f64], p: f64) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

/// A small seeded generator (SplitMix64) so a scenario's random choices
/// can be repeated with the same `--seed`.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator starting from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Shuffles `items` in place (Fisher–Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&samples, 50.0), Some(5.0));
        assert_eq!(percentile(&samples, 99.0), Some(10.0));
        assert_eq!(percentile(&samples, 0.0), Some(1.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn seeded_choices_repeat_and_stay_in_range() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        for _ in 0..100 {
            let x = a.below(10);
            assert_eq!(x, b.below(10));
            assert!(x < 10);
        }
        let mut items: Vec<usize> = (0..50).collect();
        a.shuffle(&mut items);
        let mut sorted = items.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
        assert_ne!(items, sorted);
    }

    #[test]
    fn percentile_lines_only_for_samples() {
        let metrics = [("p50_ms", 50.0), ("max_ms", 100.0)];
        let mut out = Vec::new();
        emit_percentiles(&mut out, "dht", &[], &metrics).unwrap();
        assert!(out.is_empty());
        emit_percentiles(&mut out, "dht", &[3.0, 1.0, 2.0], &metrics).unwrap();
        let values: Vec<serde_json::Value> = String::from_utf8_lossy(&out)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(values.len(), 2);
        assert_eq!(values[0]["metric"], "p50_ms");
        assert_eq!(values[0]["value"], 2.0);
        assert_eq!(values[1]["value"], 3.0);
    }

    #[test]
    fn lines_are_json_objects() {
        let mut out = Vec::new();
        emit(&mut out, "connect", "p50_ms", 12.5).unwrap();
        assert!(String::from_utf8_lossy(&out).starts_with("{\"scenario\":\"connect\",\"metric\""));
        let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(value["scenario"], "connect");
        assert_eq!(value["metric"], "p50_ms");
        assert_eq!(value["value"], 12.5);
        assert!(value.get("run").is_none());
    }

    #[test]
    fn run_lines_carry_their_run_last() {
        let mut out = Vec::new();
        emit_run(&mut out, "gui", 2, "first_frame_ms", 412.0).unwrap();
        let text = String::from_utf8_lossy(&out);
        assert!(text.ends_with(",\"run\":2}\n"), "{text}");
        let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(value["scenario"], "gui");
        assert_eq!(value["metric"], "first_frame_ms");
        assert_eq!(value["value"], 412.0);
        assert_eq!(value["run"], 2);
    }
}
