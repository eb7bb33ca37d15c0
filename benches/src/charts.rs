//! Charts of load reports (PNG + SVG, through `ragd_eval::plot`): what happened second by second
//! (latency percentiles; answers, offered rate and error codes), the HDR latency distribution,
//! and for searches a recall-against-throughput curve over `hnsw_ef` (ann-benchmarks style).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use ragd_eval::plot::{Line, Lines, PlotError, lines};
use serde::Serialize;

use crate::LoadReport;

fn line(name: &str, points: Vec<(f64, f64)>) -> Line {
    Line { name: name.to_string(), points, labels: Vec::new() }
}

/// The x of a percentile on an HDR plot: the number of nines (p90 → 1, p99 → 2, p99.9 → 3).
pub fn nines(percentile: f64) -> f64 {
    -(1.0 - percentile / 100.0).max(1e-9).log10()
}

/// Writes `<dir>/<name>-latency`, `<name>-throughput` and `<name>-hdr` (each `.svg` and `.png`)
/// for `report`; returns the files written.
pub fn report_charts(dir: &Path, name: &str, report: &LoadReport) -> Result<Vec<PathBuf>, PlotError> {
    let mut written = Vec::new();
    let mut draw = |suffix: &str, title: String, x_label: &str, y_label: &str, ls: &[Line]| {
        let l = Lines { title: &title, x_label, y_label, lines: ls };
        written.extend(lines(&dir.join(format!("{name}-{suffix}")), &l)?);
        Ok::<(), PlotError>(())
    };
    let over_time = "seconds into the measured window (by scheduled start)";
    let t = |s: &crate::Second| s.t as f64 + 0.5;
    // Seconds without an answer have no latency: left out rather than drawn as 0 ms.
    let answered: Vec<&crate::Second> = report.series.iter().filter(|s| s.ok > 0).collect();
    let pick = |f: fn(&crate::Second) -> f64| answered.iter().map(|s| (t(s), f(s))).collect::<Vec<_>>();
    let latency = [
        line("p50", pick(|s| s.p50_ms)),
        line("p90", pick(|s| s.p90_ms)),
        line("p99", pick(|s| s.p99_ms)),
        line("max", pick(|s| s.max_ms)),
    ];
    if !answered.is_empty() {
        let title = format!("{name}: latency of the answered requests ({})", report.mode);
        draw("latency", title, over_time, "latency (ms)", &latency)?;
    }

    let mut flows = vec![line("answered", report.series.iter().map(|s| (t(s), s.ok as f64)).collect())];
    if report.series.iter().any(|s| s.offered_rate.is_some()) {
        flows.push(line(
            "offered",
            report.series.iter().filter_map(|s| s.offered_rate.map(|r| (t(s), r))).collect(),
        ));
    }
    let codes: BTreeSet<&String> = report.series.iter().flat_map(|s| s.errors.keys()).collect();
    for code in codes {
        flows.push(line(
            code,
            report.series.iter().map(|s| (t(s), s.errors.get(code).copied().unwrap_or(0) as f64)).collect(),
        ));
    }
    draw(
        "throughput",
        format!("{name}: requests/s by outcome ({})", report.mode),
        over_time,
        "requests / s",
        &flows,
    )?;

    if !report.percentiles.is_empty() {
        let dist =
            [line("latency", report.percentiles.iter().map(|p| (nines(p.percentile), p.ms)).collect())];
        let title = format!("{name}: latency percentile distribution ({} answered)", report.requests_ok);
        let nines = "percentile, in nines (0 = p0, 1 = p90, 2 = p99, 3 = p99.9, 4 = p99.99)";
        draw("hdr", title, nines, "latency (ms)", &dist)?;
    }
    Ok(written)
}

/// One `hnsw_ef` setting of a search sweep.
#[derive(Debug, Clone, Serialize)]
pub struct SweepPoint {
    /// 0: exact search.
    pub hnsw_ef: u32,
    /// Mean recall@k against exact search over the recall queries.
    pub recall: f64,
    pub queries_per_sec: f64,
    pub p99_ms: f64,
}

/// Writes `<dir>/<name>-recall-qps` (`.svg`, `.png`): throughput against recall, one labelled
/// point per `hnsw_ef`, joined in recall order (ann-benchmarks' Pareto plot).
pub fn sweep_chart(dir: &Path, name: &str, k: u32, points: &[SweepPoint]) -> Result<Vec<PathBuf>, PlotError> {
    let mut sorted = points.to_vec();
    sorted.sort_by(|a, b| a.recall.total_cmp(&b.recall));
    let curve = [Line {
        name: "HNSW".into(),
        points: sorted.iter().map(|p| (p.recall, p.queries_per_sec)).collect(),
        labels: sorted
            .iter()
            .map(|p| if p.hnsw_ef == 0 { "exact".into() } else { format!("ef={}", p.hnsw_ef) })
            .collect(),
    }];
    lines(
        &dir.join(format!("{name}-recall-qps")),
        &Lines {
            title: &format!("{name}: queries/s against recall@{k}, over hnsw_ef"),
            x_label: &format!("recall@{k} (against exact search)"),
            y_label: "queries / s",
            lines: &curve,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nines_place_the_percentiles() {
        assert!((nines(90.0) - 1.0).abs() < 1e-9);
        assert!((nines(99.9) - 3.0).abs() < 1e-9);
        assert_eq!(nines(0.0), 0.0);
        assert!(nines(100.0).is_finite(), "p100 stays on the chart");
    }

    /// A ramp whose second second refuses some requests: every chart is written, and the SVGs
    /// carry the series each should draw (the percentiles, the offered rate, the error code).
    #[tokio::test]
    async fn a_reports_charts_show_its_series() {
        let mode = crate::Mode::Ramp { start: 20.0, end: 40.0, step: 20.0, step_secs: 1.0 };
        let cfg = crate::LoadConfig {
            clients: 100,
            mode,
            duration: std::time::Duration::from_secs(2),
            warmup: std::time::Duration::ZERO,
        };
        let report = crate::run(&cfg, |i| async move {
            if i >= 20 && i % 2 == 0 { Err(tonic::Status::resource_exhausted("x")) } else { Ok(1) }
        })
        .await;
        let dir = tempfile::tempdir().expect("tempdir");
        let written = report_charts(dir.path(), "t", &report).expect("charts");
        assert_eq!(written.len(), 6, "{written:?}");
        let svg = |n: &str| std::fs::read_to_string(dir.path().join(n)).expect(n);
        for label in ["p50", "p99", "max"] {
            assert!(svg("t-latency.svg").contains(label), "{label}");
        }
        for label in ["answered", "offered", "ResourceExhausted"] {
            assert!(svg("t-throughput.svg").contains(label), "{label}");
        }
        assert!(svg("t-hdr.svg").contains("percentile distribution"));
        let points = [
            SweepPoint { hnsw_ef: 16, recall: 0.9, queries_per_sec: 300.0, p99_ms: 5.0 },
            SweepPoint { hnsw_ef: 0, recall: 1.0, queries_per_sec: 100.0, p99_ms: 9.0 },
        ];
        sweep_chart(dir.path(), "s", 10, &points).expect("sweep");
        let sweep = svg("s-recall-qps.svg");
        assert!(sweep.contains("ef=16") && sweep.contains("exact"), "{sweep}");
    }
}
