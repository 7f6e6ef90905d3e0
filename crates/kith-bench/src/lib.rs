//! Kith's benchmark scenarios. Each prints one JSON object per line,
//! `{"scenario":…,"metric":…,"value":…}`, ending with a `runs` line, so
//! results can be collected by any tool and pasted into `BENCHMARKS.md`.
//!
//! Scenarios run the real code: real `kithd` processes on loopback and real
//! `kith-net` clients, never stand-ins. Build with `--release`.

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod chat;
pub mod connect;
pub mod offline;
pub mod proc;

use std::io::Write;

/// One output line; fields serialize in this order.
#[derive(serde::Serialize)]
struct Line<'a> {
    scenario: &'a str,
    metric: &'a str,
    value: f64,
}

/// Writes one metric line.
pub fn emit(out: &mut impl Write, scenario: &str, metric: &str, value: f64) -> std::io::Result<()> {
    let line = serde_json::to_string(&Line {
        scenario,
        metric,
        value,
    })
    .map_err(std::io::Error::other)?;
    writeln!(out, "{line}")
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
    fn lines_are_json_objects() {
        let mut out = Vec::new();
        emit(&mut out, "connect", "p50_ms", 12.5).unwrap();
        assert!(String::from_utf8_lossy(&out).starts_with("{\"scenario\":\"connect\",\"metric\""));
        let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(value["scenario"], "connect");
        assert_eq!(value["metric"], "p50_ms");
        assert_eq!(value["value"], 12.5);
    }
}
