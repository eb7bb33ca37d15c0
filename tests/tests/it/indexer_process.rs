//! The real binaries as separate processes: `ragd serve embedder`, `ragd serve indexer`, and the
//! CLI verbs `collections`, `ingest` (CSV, JSONL, markdown and a corrupt file that fails alone),
//! `search` and `snapshot`, talking gRPC over loopback.

use std::time::Duration;

use ragd_tests::process::{RagdProcess, model_env, ragd_cli};
use ragd_tests::wait_serving;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_ingests_searches_and_snapshots_through_real_processes() {
    let env = model_env();
    let embedder = RagdProcess::serve("embedder", &[], &env);
    let data = tempfile::tempdir().expect("tempdir");
    let data_dir = data.path().join("indexer").display().to_string();
    let indexer =
        RagdProcess::serve("indexer", &["--embedder-url", &embedder.url(), "--data-dir", &data_dir], &[]);
    wait_serving(&embedder.url(), "ragd.v1.Embedder", Duration::from_secs(120)).await;
    wait_serving(&indexer.url(), "ragd.v1.Indexer", Duration::from_secs(120)).await;
    let url = indexer.url();

    let (ok, out, err) = tokio::task::spawn_blocking({
        let url = url.clone();
        move || ragd_cli(&["collections", "--indexer", &url, "--json", "create", "docs", "--shards", "2"])
    })
    .await
    .expect("create");
    assert!(ok, "{err}");
    let info: Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(info["dim"], 384);

    let files = tempfile::tempdir().expect("files");
    let csv = files.path().join("capitals.csv");
    std::fs::write(&csv, "id,text,continent\nde,The capital of Germany is Berlin.,Europe\njp,The capital of Japan is Tokyo.,Asia\n").expect("csv");
    let jsonl = files.path().join("more.jsonl");
    std::fs::write(&jsonl, "{\"id\":\"fr\",\"text\":\"The capital of France is Paris.\"}\n").expect("jsonl");
    let md = files.path().join("notes.md");
    std::fs::write(&md, "# Rivers\nThe Rhine flows through Germany.").expect("md");
    let corrupt = files.path().join("broken.jsonl");
    std::fs::write(&corrupt, "{\"id\":\"x\",\"text\":\"fine\"}\n{oops\n").expect("corrupt");
    let paths: Vec<String> = [&csv, &corrupt, &jsonl, &md].iter().map(|p| p.display().to_string()).collect();

    let (ok, out, err) = tokio::task::spawn_blocking({
        let url = url.clone();
        move || {
            let mut args = vec!["ingest", "--indexer", &url, "--json", "--collection", "docs"];
            args.extend(paths.iter().map(String::as_str));
            ragd_cli(&args)
        }
    })
    .await
    .expect("ingest");
    assert!(ok, "{err}");
    let summary: Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(summary["documents_stored"], 4, "{summary}");
    let failed = summary["files_failed"].as_array().expect("array");
    assert_eq!(failed.len(), 1, "{summary}");
    assert!(failed[0]["file"].as_str().unwrap_or("").ends_with("broken.jsonl"));
    assert!(failed[0]["reason"].as_str().unwrap_or("").starts_with("line 2"), "{summary}");

    let cli = |args: Vec<String>| async move {
        let argv = args.clone();
        let (ok, out, err) = tokio::task::spawn_blocking(move || {
            ragd_cli(&argv.iter().map(String::as_str).collect::<Vec<_>>())
        })
        .await
        .expect("cli task");
        assert!(ok, "ragd {args:?}: {err}");
        serde_json::from_str::<Value>(out.trim()).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
    };
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let search = |collection: &str| {
        args(&[
            "search",
            "--indexer",
            &url,
            "--json",
            "--collection",
            collection,
            "--k",
            "4",
            "Which city is Japan's capital?",
        ])
    };
    let r = cli(search("docs")).await;
    assert_eq!(r["hits"][0]["doc_id"], "jp", "{r}");
    assert_eq!(r["hits"][0]["metadata"]["continent"], "Asia");

    // A snapshot, restored under a new name, answers the same search with the same hits.
    let snap =
        cli(args(&["snapshot", "--indexer", &url, "--json", "create", "docs", "--name", "first"])).await;
    assert_eq!((snap["name"].as_str(), snap["points"].as_u64()), (Some("first"), Some(4)), "{snap}");
    let listed = cli(args(&["snapshot", "--indexer", &url, "--json", "list"])).await;
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    let restored =
        cli(args(&["snapshot", "--indexer", &url, "--json", "restore", "docs", "first", "--to", "copy"]))
            .await;
    assert_eq!(
        (restored["name"].as_str(), restored["points"].as_u64()),
        (Some("copy"), Some(4)),
        "{restored}"
    );
    let again = cli(search("copy")).await;
    assert_eq!(again["hits"], r["hits"], "the restored collection answers as the original");
    cli(args(&["snapshot", "--indexer", &url, "--json", "delete", "docs", "first"])).await;
    let listed = cli(args(&["snapshot", "--indexer", &url, "--json", "list", "docs"])).await;
    assert_eq!(listed, Value::Array(vec![]));
    drop(indexer);
    drop(embedder);
}

/// SIGTERM to the indexer while an upsert is being embedded: the upsert is answered (documents
/// stored), the process exits 0, and a restarted indexer finds every document (flushed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indexer_sigterm_finishes_the_in_flight_upsert_and_keeps_it() {
    let metrics_addr = format!("127.0.0.1:{}", ragd_tests::free_port());
    let env = model_env();
    let embedder = RagdProcess::serve("embedder", &["--metrics-addr", &metrics_addr], &env);
    let data = tempfile::tempdir().expect("tempdir");
    let data_dir = data.path().join("indexer").display().to_string();
    let args = ["--embedder-url", &embedder.url(), "--data-dir", &data_dir];
    let mut indexer = RagdProcess::serve("indexer", &args, &[]);
    wait_serving(&embedder.url(), "ragd.v1.Embedder", Duration::from_secs(120)).await;
    wait_serving(&indexer.url(), "ragd.v1.Indexer", Duration::from_secs(120)).await;
    let connect = |url: String| async move {
        let ch = ragd_core::client::connect(&url).await.expect("connect");
        ragd_proto::v1::indexer_client::IndexerClient::new(ch)
    };
    let mut client = connect(indexer.url()).await;
    let create = ragd_proto::v1::CreateCollectionRequest { name: "docs".into(), ..Default::default() };
    client.create_collection(create).await.expect("create");

    // 512 documents: two Embed calls of 256 texts, seconds of work on this machine.
    let documents: Vec<ragd_proto::v1::Document> = (0..512)
        .map(|i| ragd_proto::v1::Document {
            id: format!("doc-{i}"),
            text: format!(
                "Document number {i} talks about rivers, mountains, cities and the history of place {i}."
            ),
            metadata: None,
            vector: Vec::new(),
        })
        .collect();
    let mut c = client.clone();
    let upsert = tokio::spawn(async move {
        c.upsert_batch(ragd_proto::v1::UpsertRequest { collection: "docs".into(), documents }).await
    });
    // Signal once the indexer's first Embed call is queued in the embedder.
    ragd_tests::wait_queued(metrics_addr.parse().expect("addr"), 1.0).await;
    indexer.signal("TERM");
    let answer = upsert.await.expect("task").expect("the in-flight upsert was answered, not cut off");
    let answer = answer.into_inner();
    assert_eq!((answer.documents, answer.failed.len()), (512, 0));
    let status = tokio::task::spawn_blocking(move || indexer.wait(Duration::from_secs(60)))
        .await
        .expect("wait task")
        .expect("the indexer exited after SIGTERM");
    assert!(status.success(), "exit status {status:?}");

    let indexer = RagdProcess::serve("indexer", &args, &[]);
    wait_serving(&indexer.url(), "ragd.v1.Indexer", Duration::from_secs(120)).await;
    let mut client = connect(indexer.url()).await;
    let info = client
        .describe_collection(ragd_proto::v1::DescribeCollectionRequest { name: "docs".into() })
        .await
        .expect("describe")
        .into_inner();
    assert_eq!((info.documents, info.points), (512, 512), "every acknowledged document survived");
}
