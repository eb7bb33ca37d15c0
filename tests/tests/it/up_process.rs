//! `ragd up`: the three services in one process, driven by the CLI verbs as separate processes —
//! create a collection, ingest a JSONL file, ask a question (`--json`), then SIGTERM.

use std::time::Duration;

use ragd_tests::process::{RagdProcess, model_env, ragd_cli};
use ragd_tests::{capitals, llm_model, wait_serving};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_serves_all_three_and_the_cli_asks_through_it() {
    let data = tempfile::tempdir().expect("tempdir");
    let data_dir = data.path().join("up").display().to_string();
    let llm = llm_model().display().to_string();
    let mut env = model_env();
    env.retain(|(k, _)| *k != "RAGD_MODELS");
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
            "--models",
            "all-MiniLM-L6-v2",
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
    let jsonl = data.path().join("capitals.jsonl");
    let lines: Vec<String> = capitals()
        .into_iter()
        .map(|(country, city)| {
            serde_json::json!({"id": country, "text": format!("The capital of {country} is {city}.")})
                .to_string()
        })
        .collect();
    std::fs::write(&jsonl, lines.join("\n")).expect("write jsonl");
    let (indexer, generator) = (urls["indexer"].clone(), urls["generator"].clone());
    let jsonl = jsonl.display().to_string();
    let (ok, out, err) = tokio::task::spawn_blocking(move || {
        let (ok, _, err) = ragd_cli(&["collections", "--indexer", &indexer, "create", "capitals"]);
        assert!(ok, "{err}");
        let (ok, _, err) = ragd_cli(&["ingest", "--indexer", &indexer, "--collection", "capitals", &jsonl]);
        assert!(ok, "{err}");
        ragd_cli(&[
            "ask",
            "--endpoint",
            &generator,
            "--collection",
            "capitals",
            "--k",
            "4",
            "--max-tokens",
            "32",
            "--json",
            "What is the capital of Germany?",
        ])
    })
    .await
    .expect("cli");
    assert!(ok, "{err}");
    let messages: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).expect("json line")).collect();
    assert_eq!(messages[0]["retrieval"][0]["doc_id"], "Germany", "{out}");
    let answer: String = messages.iter().filter_map(|m| m["delta"].as_str()).collect();
    assert!(answer.contains("Berlin"), "{answer:?}");
    let done = &messages.last().expect("done")["done"];
    assert_eq!(done["citations"][0]["doc_id"], "Germany", "{done}");

    up.signal("TERM");
    let status = up.wait(Duration::from_secs(60)).expect("ragd up exits on SIGTERM");
    assert!(status.success(), "{status:?}");
}
