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
