//! The real `ragd` binary as a separate process: discovery of its port, gRPC from outside,
//! SIGTERM drains in-flight work and exits 0, startup failures exit non-zero without a panic.

use std::process::Command;
use std::time::Duration;

use ragd_proto::v1;
use ragd_tests::process::{RagdProcess, model_env, ragd_bin};
use ragd_tests::{embedder_client, free_port, repo_root, wait_queued, wait_serving};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_and_exits_cleanly() {
    let metrics_port = free_port().to_string();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let mut proc = RagdProcess::serve("embedder", &["--metrics-addr", &metrics_addr], &model_env());
    wait_serving(&proc.url(), "ragd.v1.Embedder", Duration::from_secs(120)).await;
    let mut client = embedder_client(&proc.url()).await;
    let r = client
        .embed(v1::EmbedRequest { texts: vec!["hello from another process".into()], ..Default::default() })
        .await
        .expect("embed")
        .into_inner();
    assert_eq!(r.dim, 384);

    let texts: Vec<String> = (0..48).map(|i| format!("document {i} ").repeat(40)).collect();
    let mut c = client.clone();
    let in_flight =
        tokio::spawn(async move { c.embed(v1::EmbedRequest { texts, ..Default::default() }).await });
    // Signal only once the request is admitted (the queue gauge shows its 48 texts).
    wait_queued(metrics_addr.parse().expect("addr"), 48.0).await;
    proc.signal("TERM");
    let answer = in_flight.await.expect("task");
    let status = tokio::task::spawn_blocking(move || proc.wait(Duration::from_secs(60)))
        .await
        .expect("wait task")
        .expect("ragd exited after SIGTERM");
    assert!(status.success(), "exit status {status:?}");
    let answer = answer.expect("the in-flight request was answered, not cut off");
    assert_eq!(answer.into_inner().embeddings.len(), 48);
}

#[test]
fn startup_failures_exit_non_zero_with_a_clear_message() {
    for (args, expect) in [
        (vec!["--device", "cuda"], "cuda"),
        (vec!["--models-dir", "/nonexistent"], "scripts/setup"),
        (vec!["--device", "tpu"], "unknown device"),
    ] {
        let out = Command::new(ragd_bin())
            .args(["serve", "embedder", "--listen", "127.0.0.1:0"])
            .args(&args)
            .envs(model_env())
            .current_dir(repo_root())
            .output()
            .expect("run ragd");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(!stderr.contains("panicked"), "{args:?} panicked:\n{stderr}");
        assert!(stderr.to_lowercase().contains(expect), "{args:?}: expected {expect:?} in\n{stderr}");
    }
}

/// `ragd serve <role> … --check-config` (what the Helm chart's tests run on the arguments they
/// render): accepted arguments print one line and exit 0 without starting anything (no
/// listener, no model load); a flag the binary does not have, or a bad value, exits non-zero
/// naming it.
#[test]
fn check_config_accepts_real_flags_and_names_the_bad_ones() {
    let run = |args: &[&str]| {
        let out = Command::new(ragd_bin()).args(args).current_dir(repo_root()).output().expect("run ragd");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // A port something else holds: --check-config must not try to bind it.
    let held = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let listen = held.local_addr().expect("addr").to_string();
    for (role, extra) in [
        ("embedder", vec!["--models", "no-such-model", "--models-dir", "/nonexistent"]),
        (
            "indexer",
            vec![
                "--embedder-url",
                "etcd",
                "--etcd-endpoints",
                "http://10.0.0.1:2379",
                "--data-dir",
                "/nonexistent",
            ],
        ),
        (
            "generator",
            vec![
                "--indexer-url",
                "https://indexer:50052",
                "--tls-cert",
                "/tls/c.pem",
                "--tls-key",
                "/tls/k.pem",
            ],
        ),
    ] {
        let mut args = vec!["serve", role, "--listen", listen.as_str()];
        args.extend(extra);
        args.push("--check-config");
        let (ok, out, err) = run(&args);
        assert!(ok, "{role}: {err}");
        assert!(
            out.contains(&format!("ragd serve {role}: configuration accepted (listen {listen})")),
            "{out}"
        );
    }
    let (ok, _, err) = run(&["serve", "embedder", "--no-such-flag", "1", "--check-config"]);
    assert!(!ok && err.contains("--no-such-flag"), "{err}");
    let (ok, _, err) = run(&["serve", "indexer", "--listen", "not-an-address", "--check-config"]);
    assert!(!ok && err.contains("not-an-address"), "{err}");
    drop(held);
}
