//! A cluster of real processes that find each other through a real etcd: two embedders, one
//! indexer (`--embedder-url etcd`), one generator (`--indexer-url etcd`), each registered under a
//! lease. Ingest and Ask work end to end; searches are balanced over both embedders; a SIGKILLed
//! embedder leaves discovery when its lease expires and the survivor serves everything; a
//! SIGTERMed one revokes its lease on the way out. Every process exports its spans over OTLP to
//! a test receiver: one Ask is one trace across the generator, the indexer and the embedder.

use std::time::Duration;

use ragd_proto::v1;
use ragd_tests::etcd::Etcd;
use ragd_tests::otlp_receiver::OtlpReceiver;
use ragd_tests::process::{RagdProcess, loadgen_bin, model_env, ragd_cli};
use ragd_tests::{
    capitals, capitals_search, collect_ask, free_port, llm_model, metric, scrape, wait_serving,
};

const TTL: &str = "2";

/// `loadgen search` against the capitals collection: `clients` closed-loop clients for `secs`,
/// each request tried `tries` times on UNAVAILABLE / transport errors.
fn loadgen_search(indexer: &str, clients: usize, secs: u64, tries: u32) -> std::process::Child {
    std::process::Command::new(loadgen_bin())
        .args(["search", "--endpoint", indexer, "--collection", "capitals", "--k", "3", "--warmup-secs", "0"])
        .args(["--clients", &clients.to_string(), "--connections", "2", "--duration-secs", &secs.to_string()])
        .args(["--tries", &tries.to_string()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn loadgen")
}

/// Waits until the metric line `series value` at `addr` reads `want`.
async fn wait_gauge(addr: std::net::SocketAddr, series: &str, want: f64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let body = scrape(addr).await;
        let now =
            body.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse::<f64>().ok()));
        if now == Some(want) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{series} is {now:?}, want {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_keys(etcd: &Etcd, prefix: &str, n: usize) -> Vec<(String, String)> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let keys = etcd.list(prefix).await;
        if keys.len() == n {
            return keys;
        }
        assert!(tokio::time::Instant::now() < deadline, "{prefix}: {} keys, want {n}: {keys:?}", keys.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_discover_each_other_and_survive_losing_an_embedder() {
    let mut etcd = Etcd::start().await;
    let otlp = OtlpReceiver::start().await;
    let cluster = format!("t{}", std::process::id());
    let etcd_endpoint = etcd.endpoint.clone();
    let common =
        ["--etcd-endpoints", etcd_endpoint.as_str(), "--cluster", cluster.as_str(), "--lease-ttl-secs", TTL];
    let otel = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.endpoint.clone()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_string()),
    ];
    let mut env = model_env();
    env.extend(otel.iter().cloned());
    let metrics: Vec<std::net::SocketAddr> =
        (0..2).map(|_| format!("127.0.0.1:{}", free_port()).parse().expect("addr")).collect();
    let embedder = |m: &std::net::SocketAddr| {
        let m = m.to_string();
        let mut args = common.to_vec();
        args.extend(["--metrics-addr", m.as_str()]);
        RagdProcess::serve("embedder", &args, &env)
    };
    let mut e1 = embedder(&metrics[0]);
    let mut e2 = embedder(&metrics[1]);
    let data = tempfile::tempdir().expect("tempdir");
    let data_dir = data.path().display().to_string();
    let indexer_metrics: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let im = indexer_metrics.to_string();
    let mut args = common.to_vec();
    args.extend(["--embedder-url", "etcd", "--data-dir", &data_dir, "--metrics-addr", &im]);
    let indexer = RagdProcess::serve("indexer", &args, &otel);
    let llm = llm_model().display().to_string();
    let mut args = common.to_vec();
    args.extend(["--indexer-url", "etcd", "--llm-model", &llm, "--llm-parallel", "1"]);
    let generator = RagdProcess::serve("generator", &args, &otel);
    for (p, s) in [
        (&e1, "ragd.v1.Embedder"),
        (&e2, "ragd.v1.Embedder"),
        (&indexer, "ragd.v1.Indexer"),
        (&generator, "ragd.v1.Generator"),
    ] {
        wait_serving(&p.url(), s, Duration::from_secs(120)).await;
    }

    // Registrations: /ragd/<cluster>/<service>/<instance> → {addr, service, version, meta}.
    let prefix = |s: &str| format!("/ragd/{cluster}/{s}/");
    let embedders = wait_keys(&etcd, &prefix("embedder"), 2).await;
    for (_, v) in &embedders {
        let i: ragd_core::discovery::Instance = serde_json::from_str(v).expect("instance json");
        assert!([e1.url(), e2.url()].contains(&i.addr), "{i:?}");
        assert_eq!(i.meta["models"], serde_json::json!(["all-MiniLM-L6-v2"]));
    }
    wait_keys(&etcd, &prefix("indexer"), 1).await;
    wait_keys(&etcd, &prefix("generator"), 1).await;
    // The indexer's discovered channel balances over both (its discovery gauge).
    wait_gauge(indexer_metrics, "ragd_discovery_endpoints{service=\"embedder\"}", 2.0).await;

    // Ingest through the indexer (its embedder found through etcd) and ask the generator (its
    // indexer found through etcd).
    let mut idx = v1::indexer_client::IndexerClient::new(
        ragd_core::client::connect(&indexer.url()).await.expect("connect"),
    );
    idx.create_collection(v1::CreateCollectionRequest { name: "capitals".into(), ..Default::default() })
        .await
        .expect("create");
    let documents = capitals()
        .into_iter()
        .map(|(country, city)| v1::Document {
            id: country.clone(),
            text: format!("The capital of {country} is {city}."),
            metadata: None,
        })
        .collect::<Vec<_>>();
    let r = idx
        .upsert_batch(v1::UpsertRequest { collection: "capitals".into(), documents })
        .await
        .expect("upsert");
    assert_eq!(r.into_inner().documents, 238);
    let mut gen_client = v1::generator_client::GeneratorClient::new(
        ragd_core::client::connect(&generator.url()).await.expect("connect"),
    );
    let s = gen_client
        .ask(v1::AskRequest {
            question: "What is the capital of Germany?".into(),
            collection: "capitals".into(),
            k: 4,
            sampling: Some(v1::Sampling { max_tokens: 32, ..Default::default() }),
            ..Default::default()
        })
        .await
        .expect("ask")
        .into_inner();
    let (_, text, _) = collect_ask(s).await;
    assert!(text.contains("Berlin"), "{text:?}");

    // The Ask is one trace: spans of the generator, the indexer and the embedder share its id.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let spans = otlp.spans();
        let ask = spans.iter().find(|s| s.service == "ragd-generator" && s.name.contains("Generator/Ask"));
        if let Some(ask) = ask {
            let services: std::collections::BTreeSet<&str> =
                spans.iter().filter(|s| s.trace_id == ask.trace_id).map(|s| s.service.as_str()).collect();
            let stages: std::collections::BTreeSet<&str> =
                spans.iter().filter(|s| s.trace_id == ask.trace_id).map(|s| s.name.as_str()).collect();
            let want = ["queue_wait", "retrieve", "prompt", "generate", "embed_queries", "shard_search"];
            if services.len() == 3 && want.iter().all(|w| stages.contains(w)) {
                assert_eq!(
                    services.into_iter().collect::<Vec<_>>(),
                    ["ragd-embedder", "ragd-generator", "ragd-indexer"]
                );
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no trace spans the three services: {:?}",
            spans.iter().map(|s| (&s.service, &s.name)).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The CLI finds the indexer through etcd too.
    let args: Vec<String> = ["search", "--indexer", "etcd", "--json", "--collection", "capitals", "--k", "1"]
        .into_iter()
        .chain(common.iter().take(4).copied())
        .chain(["What is the capital of Japan?"])
        .map(str::to_string)
        .collect();
    let (ok, out, err) =
        tokio::task::spawn_blocking(move || ragd_cli(&args.iter().map(String::as_str).collect::<Vec<_>>()))
            .await
            .expect("cli");
    assert!(ok, "{err}");
    let found: serde_json::Value = serde_json::from_str(out.trim()).expect("search json");
    assert_eq!(found["hits"][0]["doc_id"], "Japan", "{out}");

    // Searches embed their query on either embedder: both take traffic.
    let texts = |i: usize| {
        let addr = metrics[i];
        async move { metric(&scrape(addr).await, "ragd_embedder_texts_total") }
    };
    let before = (texts(0).await, texts(1).await);
    for i in 0..30 {
        let hits =
            idx.search(capitals_search(&format!("capital of country number {i}"))).await.expect("search");
        assert_eq!(hits.into_inner().results[0].hits.len(), 3);
    }
    let after = (texts(0).await, texts(1).await);
    assert!(after.0 > before.0 && after.1 > before.1, "not balanced: {before:?} → {after:?}");
    // The indexer's metrics count every RPC by method and status.
    let body = scrape(indexer_metrics).await;
    let searches = body
        .lines()
        .find(|l| {
            l.starts_with("ragd_indexer_rpc_requests_total")
                && l.contains("Indexer/Search")
                && l.contains("code=\"Ok\"")
        })
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no search counter in\n{body}"));
    assert!(searches >= 30.0, "{searches}");

    // SIGKILL one embedder under steady load from loadgen (4 clients searching in a closed loop):
    // fewer than 1 % of the searches fail (the indexer retries an Embed that hit the dead
    // instance), and its key goes when the lease expires (TTL 2 s).
    let load = loadgen_search(&indexer.url(), 4, 8, 1);
    tokio::time::sleep(Duration::from_secs(2)).await;
    e1.signal("KILL");
    e1.wait(Duration::from_secs(10)).expect("killed");
    let left = wait_keys(&etcd, &prefix("embedder"), 1).await;
    assert!(left[0].1.contains(&e2.url()), "{left:?}");
    let out =
        tokio::task::spawn_blocking(move || load.wait_with_output()).await.expect("join").expect("loadgen");
    assert!(out.status.success(), "loadgen failed");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("loadgen report");
    let (ok, failed) =
        (report["requests_ok"].as_u64().unwrap_or(0), report["requests_failed"].as_u64().unwrap_or(0));
    eprintln!("loadgen through the SIGKILL: {report}");
    assert!(ok > 0, "{report}");
    assert!(failed * 100 < ok + failed, "{failed} of {} searches failed: {report}", ok + failed);
    // The balancer hears the deletion through its watch; give it the same bounded wait.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut failures = 0;
    let mut ok_in_a_row = 0;
    while ok_in_a_row < 20 {
        match idx.search(capitals_search("What is the capital of France?")).await {
            Ok(r) => {
                assert_eq!(r.into_inner().results[0].hits[0].doc_id, "France");
                ok_in_a_row += 1;
            }
            Err(e) => {
                assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
                failures += 1;
                ok_in_a_row = 0;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "searches kept failing after the lease expired ({failures} failures)"
        );
    }
    assert_eq!(failures, 0, "searches failed after the dead embedder left discovery");

    // etcd stopped and restarted under steady load: clients keep their last known endpoints, so
    // no search fails; the survivor registers again under a fresh lease and stays registered
    // past the old lease's TTL; the indexer's watch comes back (its endpoint gauge says 1).
    let load = loadgen_search(&indexer.url(), 4, 6, 1);
    tokio::time::sleep(Duration::from_secs(1)).await;
    etcd.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    etcd.restart().await;
    let report =
        tokio::task::spawn_blocking(move || load.wait_with_output()).await.expect("join").expect("loadgen");
    let report: serde_json::Value = serde_json::from_slice(&report.stdout).expect("loadgen report");
    eprintln!("loadgen through the etcd outage: {report}");
    assert!(report["requests_ok"].as_u64().unwrap_or(0) > 0, "{report}");
    assert_eq!(report["requests_failed"], 0, "searches failed during the etcd outage: {report}");
    let back = wait_keys(&etcd, &prefix("embedder"), 1).await;
    assert!(back[0].1.contains(&e2.url()), "{back:?}");
    wait_gauge(indexer_metrics, "ragd_discovery_endpoints{service=\"embedder\"}", 1.0).await;
    let r = idx
        .search(capitals_search("What is the capital of Spain?"))
        .await
        .expect("search after the etcd restart");
    assert_eq!(r.into_inner().results[0].hits[0].doc_id, "Spain");

    // A new embedder (on the dead one's metrics port) joins and takes load.
    let e3 = embedder(&metrics[0]);
    wait_serving(&e3.url(), "ragd.v1.Embedder", Duration::from_secs(120)).await;
    wait_keys(&etcd, &prefix("embedder"), 2).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while texts(0).await == 0.0 {
        assert!(tokio::time::Instant::now() < deadline, "the new embedder never got a request");
        idx.search(capitals_search("What is the capital of Peru?"))
            .await
            .expect("search with the new embedder");
    }

    // SIGTERM the survivor: it drains, revokes its lease (the key goes at once, not after the TTL)
    // and exits 0; the new one serves on.
    e2.signal("TERM");
    let status = e2.wait(Duration::from_secs(30)).expect("exited");
    assert!(status.success(), "{status:?}");
    let left = etcd.list(&prefix("embedder")).await;
    assert!(left.len() == 1 && left[0].1.contains(&e3.url()), "the lease was not revoked: {left:?}");
    let r =
        idx.search(capitals_search("What is the capital of Chile?")).await.expect("search after the drain");
    assert_eq!(r.into_inner().results[0].hits[0].doc_id, "Chile");

    // SIGTERM the indexer under load from clients that retry (as ragd's own clients do): the
    // lease is revoked, exit 0, and the only error clients see is UNAVAILABLE once no indexer is
    // left (requests in flight at the signal are answered, see indexer_process.rs; a request the
    // client had queued on the closing connection comes back CANCELLED from hyper, transport-level,
    // and is retried).
    let load = loadgen_search(&indexer.url(), 2, 4, 3);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut indexer = indexer;
    indexer.signal("TERM");
    let status = tokio::task::spawn_blocking(move || {
        let s = indexer.wait(Duration::from_secs(30));
        (s, indexer)
    })
    .await
    .expect("join");
    assert!(status.0.expect("indexer exited").success(), "{status:?}");
    assert!(etcd.list(&prefix("indexer")).await.is_empty(), "the indexer's lease was not revoked");
    let out =
        tokio::task::spawn_blocking(move || load.wait_with_output()).await.expect("join").expect("loadgen");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("loadgen report");
    assert!(report["requests_ok"].as_u64().unwrap_or(0) > 0, "{report}");
    let errors = report["errors"].as_object().cloned().unwrap_or_default();
    assert!(errors.keys().all(|code| code == "Unavailable"), "errors other than UNAVAILABLE: {report}");
}
