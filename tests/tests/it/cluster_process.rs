//! A cluster of real processes that find each other through a real etcd: two embedders, one
//! indexer (`--embedder-url etcd`), one generator (`--indexer-url etcd`), each registered under a
//! lease ([`Cluster`], the fixture each scenario starts its own of). Ingest and Ask work end to
//! end and one Ask is one trace across the three services (spans exported over OTLP to a test
//! receiver); searches are balanced over both embedders; a SIGKILLed embedder leaves discovery
//! when its lease expires and the survivor serves everything; an etcd outage fails no search; a
//! new embedder joins and a SIGTERMed one revokes its lease on the way out; a SIGTERMed indexer
//! drains. Every wait is on a condition with a deadline, none on a fixed sleep.

use std::time::Duration;

use ragd_proto::v1;
use ragd_tests::etcd::Etcd;
use ragd_tests::otlp_receiver::OtlpReceiver;
use ragd_tests::process::{RagdProcess, loadgen_bin, model_env, ragd_cli};
use ragd_tests::{
    capitals, capitals_search, collect_ask, free_port, llm_model, metric, metric_value, scrape, wait_serving,
};
use tonic::transport::Channel;

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
    wait_metric(addr, series, &format!("{want}"), |v| v == want).await;
}

/// Waits until the metric line `series value` at `addr` has a value for which `ok` holds.
async fn wait_metric(addr: std::net::SocketAddr, series: &str, want: &str, ok: impl Fn(f64) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let body = scrape(addr).await;
        let now = metric_value(&body, series);
        if now.is_some_and(&ok) {
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

/// Waits until the indexer has answered `n` more searches than `since`: a load is running.
async fn wait_searches(addr: std::net::SocketAddr, since: f64, n: f64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let now = searches_ok(addr).await;
        if now >= since + n {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "no load: {now} searches, want {}", since + n);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The indexer's `Search` calls answered OK, from its RPC metrics (0 before the first).
async fn searches_ok(addr: std::net::SocketAddr) -> f64 {
    let series = "ragd_indexer_rpc_requests_total{method=\"/ragd.v1.Indexer/Search\",code=\"Ok\"}";
    metric_value(&scrape(addr).await, series).unwrap_or(0.0)
}

/// Waits for `loadgen` and returns its JSON report.
async fn report(load: std::process::Child) -> serde_json::Value {
    let out =
        tokio::task::spawn_blocking(move || load.wait_with_output()).await.expect("join").expect("loadgen");
    assert!(out.status.success(), "loadgen failed");
    let report = serde_json::from_slice(&out.stdout).expect("loadgen report");
    eprintln!("loadgen: {report}");
    report
}

fn loopback() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// The fixture: a real etcd, an OTLP receiver, two embedders (each with a metrics listener), one
/// indexer (`--embedder-url etcd`, with a metrics listener) holding the ingested capitals
/// collection, and with `generator` a generator (`--indexer-url etcd`); every process registered
/// under a 2 s lease and exporting its spans to the receiver.
struct Cluster {
    etcd: Etcd,
    otlp: OtlpReceiver,
    name: String,
    env: Vec<(&'static str, String)>,
    /// Two at the start; `None` once a test killed or stopped one.
    embedders: Vec<Option<RagdProcess>>,
    embedder_metrics: Vec<std::net::SocketAddr>,
    indexer: Option<RagdProcess>,
    indexer_metrics: std::net::SocketAddr,
    generator: Option<RagdProcess>,
    idx: v1::indexer_client::IndexerClient<Channel>,
    _data: tempfile::TempDir,
}

impl Cluster {
    async fn start(with_generator: bool) -> Self {
        let etcd = Etcd::start().await;
        let otlp = OtlpReceiver::start().await;
        let name = format!("t{}", std::process::id());
        let otel = vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.endpoint.clone()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".to_string()),
        ];
        let mut env = model_env();
        env.extend(otel.iter().cloned());
        let common = Self::common_args(&etcd, &name);
        let common: Vec<&str> = common.iter().map(String::as_str).collect();
        let embedder_metrics = vec![loopback(), loopback()];
        let embedders: Vec<Option<RagdProcess>> =
            embedder_metrics.iter().map(|m| Some(Self::spawn_embedder(&common, &env, *m))).collect();
        let data = tempfile::tempdir().expect("tempdir");
        let (data_dir, indexer_metrics) = (data.path().display().to_string(), loopback());
        let im = indexer_metrics.to_string();
        let mut args = common.clone();
        args.extend(["--embedder-url", "etcd", "--data-dir", &data_dir, "--metrics-addr", &im]);
        let indexer = RagdProcess::serve("indexer", &args, &otel);
        let generator = with_generator.then(|| {
            let llm = llm_model().display().to_string();
            let mut args = common.clone();
            args.extend(["--indexer-url", "etcd", "--llm-model", &llm, "--llm-parallel", "1"]);
            RagdProcess::serve("generator", &args, &otel)
        });
        for e in embedders.iter().flatten() {
            wait_serving(&e.url(), "ragd.v1.Embedder", Duration::from_secs(120)).await;
        }
        wait_serving(&indexer.url(), "ragd.v1.Indexer", Duration::from_secs(120)).await;
        if let Some(g) = &generator {
            wait_serving(&g.url(), "ragd.v1.Generator", Duration::from_secs(120)).await;
        }
        let idx = v1::indexer_client::IndexerClient::new(
            ragd_core::client::connect(&indexer.url()).await.expect("connect"),
        );
        let mut cluster = Self {
            etcd,
            otlp,
            name,
            env,
            embedders,
            embedder_metrics,
            indexer: Some(indexer),
            indexer_metrics,
            generator,
            idx,
            _data: data,
        };
        // The indexer's discovered channel balances over both embedders (its discovery gauge)
        // before anything is ingested.
        cluster.wait_embedders(2).await;
        cluster.ingest_capitals().await;
        cluster
    }

    fn common_args(etcd: &Etcd, name: &str) -> Vec<String> {
        ["--etcd-endpoints", etcd.endpoint.as_str(), "--cluster", name, "--lease-ttl-secs", TTL]
            .map(str::to_string)
            .to_vec()
    }

    fn spawn_embedder(common: &[&str], env: &[(&str, String)], metrics: std::net::SocketAddr) -> RagdProcess {
        let m = metrics.to_string();
        let mut args = common.to_vec();
        args.extend(["--metrics-addr", m.as_str()]);
        RagdProcess::serve("embedder", &args, env)
    }

    /// Starts another embedder on `metrics` and waits until it serves and is registered.
    async fn add_embedder(&self, metrics: std::net::SocketAddr) -> RagdProcess {
        let common = Self::common_args(&self.etcd, &self.name);
        let common: Vec<&str> = common.iter().map(String::as_str).collect();
        let e = Self::spawn_embedder(&common, &self.env, metrics);
        wait_serving(&e.url(), "ragd.v1.Embedder", Duration::from_secs(120)).await;
        e
    }

    /// `/ragd/<cluster>/<service>/`, where instances of `service` register.
    fn prefix(&self, service: &str) -> String {
        format!("/ragd/{}/{service}/", self.name)
    }

    fn indexer_url(&self) -> String {
        self.indexer.as_ref().expect("the indexer runs").url()
    }

    fn embedder(&self, i: usize) -> &RagdProcess {
        self.embedders[i].as_ref().expect("the embedder runs")
    }

    /// Waits until `n` embedders are registered and the indexer balances over `n`.
    async fn wait_embedders(&self, n: usize) -> Vec<(String, String)> {
        let keys = wait_keys(&self.etcd, &self.prefix("embedder"), n).await;
        wait_gauge(self.indexer_metrics, "ragd_discovery_endpoints{service=\"embedder\"}", n as f64).await;
        keys
    }

    async fn ingest_capitals(&mut self) {
        self.idx
            .create_collection(v1::CreateCollectionRequest { name: "capitals".into(), ..Default::default() })
            .await
            .expect("create");
        let documents = capitals()
            .into_iter()
            .map(|(country, city)| v1::Document {
                id: country.clone(),
                text: format!("The capital of {country} is {city}."),
                metadata: None,
                vector: Vec::new(),
            })
            .collect::<Vec<_>>();
        let r = self
            .idx
            .upsert_batch(v1::UpsertRequest { collection: "capitals".into(), documents })
            .await
            .expect("upsert");
        assert_eq!(r.into_inner().documents, 238);
    }

    /// Texts embedder `i` has embedded (its metrics; the listener outlives no process).
    async fn texts(&self, i: usize) -> f64 {
        metric(&scrape(self.embedder_metrics[i]).await, "ragd_embedder_texts_total")
    }

    /// Starts `loadgen search` and returns once the indexer has answered 20 of its searches.
    async fn start_load(&self, clients: usize, secs: u64, tries: u32) -> std::process::Child {
        let since = searches_ok(self.indexer_metrics).await;
        let load = loadgen_search(&self.indexer_url(), clients, secs, tries);
        wait_searches(self.indexer_metrics, since, 20.0).await;
        load
    }

    async fn search_top(&mut self, question: &str) -> Result<String, tonic::Status> {
        let r = self.idx.search(capitals_search(question)).await?;
        Ok(r.into_inner().results[0].hits[0].doc_id.clone())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_find_each_other_and_an_ask_is_one_trace() {
    let mut c = Cluster::start(true).await;
    // Registrations: /ragd/<cluster>/<service>/<instance> → {addr, service, version, meta}.
    for (_, v) in c.wait_embedders(2).await {
        let i: ragd_core::discovery::Instance = serde_json::from_str(&v).expect("instance json");
        assert!([c.embedder(0).url(), c.embedder(1).url()].contains(&i.addr), "{i:?}");
        assert_eq!(i.meta["models"], serde_json::json!(["all-MiniLM-L6-v2"]));
    }
    wait_keys(&c.etcd, &c.prefix("indexer"), 1).await;
    wait_keys(&c.etcd, &c.prefix("generator"), 1).await;

    // Ask the generator (its indexer found through etcd; the indexer's embedder too).
    let generator = c.generator.as_ref().expect("generator").url();
    let mut gen_client = v1::generator_client::GeneratorClient::new(
        ragd_core::client::connect(&generator).await.expect("connect"),
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
        let spans = c.otlp.spans();
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
        .map(str::to_string)
        .into_iter()
        .chain(Cluster::common_args(&c.etcd, &c.name).into_iter().take(4))
        .chain(["What is the capital of Japan?".to_string()])
        .collect();
    let (ok, out, err) =
        tokio::task::spawn_blocking(move || ragd_cli(&args.iter().map(String::as_str).collect::<Vec<_>>()))
            .await
            .expect("cli");
    assert!(ok, "{err}");
    let found: serde_json::Value = serde_json::from_str(out.trim()).expect("search json");
    assert_eq!(found["hits"][0]["doc_id"], "Japan", "{out}");

    // Searches embed their query on either embedder: both take traffic; the indexer's metrics
    // count every RPC by method and status.
    let before = (c.texts(0).await, c.texts(1).await, searches_ok(c.indexer_metrics).await);
    for i in 0..30 {
        let hits =
            c.idx.search(capitals_search(&format!("capital of country number {i}"))).await.expect("search");
        assert_eq!(hits.into_inner().results[0].hits.len(), 3);
    }
    let after = (c.texts(0).await, c.texts(1).await, searches_ok(c.indexer_metrics).await);
    assert!(after.0 > before.0 && after.1 > before.1, "not balanced: {before:?} → {after:?}");
    assert_eq!(after.2 - before.2, 30.0, "searches counted: {before:?} → {after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_embedder_leaves_with_its_lease_and_the_survivor_serves() {
    let mut c = Cluster::start(false).await;
    // SIGKILL one embedder under steady load from loadgen (4 clients searching in a closed loop):
    // fewer than 1 % of the searches fail (the indexer retries an Embed that hit the dead
    // instance), and its key goes when the lease expires (TTL 2 s).
    let load = c.start_load(4, 8, 1).await;
    let mut killed = c.embedders[0].take().expect("embedder 0");
    killed.signal("KILL");
    killed.wait(Duration::from_secs(10)).expect("killed");
    let left = wait_keys(&c.etcd, &c.prefix("embedder"), 1).await;
    assert!(left[0].1.contains(&c.embedder(1).url()), "{left:?}");
    let report = report(load).await;
    let (ok, failed) =
        (report["requests_ok"].as_u64().unwrap_or(0), report["requests_failed"].as_u64().unwrap_or(0));
    assert!(ok > 0, "{report}");
    assert!(failed * 100 < ok + failed, "{failed} of {} searches failed: {report}", ok + failed);
    // The balancer hears the deletion through its watch (its gauge says 1), then no search fails.
    wait_gauge(c.indexer_metrics, "ragd_discovery_endpoints{service=\"embedder\"}", 1.0).await;
    for i in 0..20 {
        let top = c.search_top("What is the capital of France?").await;
        let top = top.unwrap_or_else(|e| panic!("search {i} after the dead embedder left discovery: {e:?}"));
        assert_eq!(top, "France");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_outage_fails_no_search_and_registrations_come_back() {
    let mut c = Cluster::start(false).await;
    // etcd stopped and restarted under steady load: clients keep their last known endpoints, so
    // no search fails; the embedders register again under fresh leases and stay registered past
    // the old leases' TTL; the indexer's watch comes back (its endpoint gauge says 2).
    let failures = "ragd_discovery_watch_failures_total{service=\"embedder\"}";
    let load = c.start_load(4, 6, 1).await;
    c.etcd.kill();
    // The outage lasts until the indexer has noticed it (its watch failed).
    wait_metric(c.indexer_metrics, failures, "≥ 1", |v| v >= 1.0).await;
    c.etcd.restart().await;
    let report = report(load).await;
    assert!(report["requests_ok"].as_u64().unwrap_or(0) > 0, "{report}");
    assert_eq!(report["requests_failed"], 0, "searches failed during the etcd outage: {report}");
    let back = c.wait_embedders(2).await;
    for e in [c.embedder(0), c.embedder(1)] {
        assert!(back.iter().any(|(_, v)| v.contains(&e.url())), "{back:?}");
    }
    assert_eq!(
        c.search_top("What is the capital of Spain?").await.expect("search after the outage"),
        "Spain"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_embedder_joins_and_a_sigtermed_one_revokes_its_lease() {
    let mut c = Cluster::start(false).await;
    // One embedder leaves at once on SIGTERM (drains, revokes its lease, exits 0)...
    let mut stopped = c.embedders[0].take().expect("embedder 0");
    stopped.signal("TERM");
    let status = stopped.wait(Duration::from_secs(30)).expect("exited");
    assert!(status.success(), "{status:?}");
    let left = c.etcd.list(&c.prefix("embedder")).await;
    assert!(
        left.len() == 1 && left[0].1.contains(&c.embedder(1).url()),
        "the lease was not revoked: {left:?}"
    );
    assert_eq!(c.search_top("What is the capital of Chile?").await.expect("search after the drain"), "Chile");

    // ...and a new one (on the stopped one's metrics port) joins and takes load.
    let e3 = c.add_embedder(c.embedder_metrics[0]).await;
    c.embedders[0] = Some(e3);
    c.wait_embedders(2).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while c.texts(0).await == 0.0 {
        assert!(tokio::time::Instant::now() < deadline, "the new embedder never got a request");
        c.search_top("What is the capital of Peru?").await.expect("search with the new embedder");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigtermed_indexer_drains_revokes_its_lease_and_exits_cleanly() {
    let mut c = Cluster::start(false).await;
    // SIGTERM the indexer under load from clients that retry (as ragd's own clients do): the
    // lease is revoked, exit 0, and the only error clients see is UNAVAILABLE once no indexer is
    // left (requests in flight at the signal are answered, see indexer_process.rs; a request the
    // client had queued on the closing connection comes back CANCELLED from hyper, transport-level,
    // and is retried).
    wait_keys(&c.etcd, &c.prefix("indexer"), 1).await;
    let load = c.start_load(2, 4, 3).await;
    let mut indexer = c.indexer.take().expect("indexer");
    indexer.signal("TERM");
    let status = tokio::task::spawn_blocking(move || {
        let s = indexer.wait(Duration::from_secs(30));
        (s, indexer)
    })
    .await
    .expect("join");
    assert!(status.0.expect("indexer exited").success(), "{status:?}");
    assert!(c.etcd.list(&c.prefix("indexer")).await.is_empty(), "the indexer's lease was not revoked");
    let report = report(load).await;
    assert!(report["requests_ok"].as_u64().unwrap_or(0) > 0, "{report}");
    let errors = report["errors"].as_object().cloned().unwrap_or_default();
    assert!(errors.keys().all(|code| code == "Unavailable"), "errors other than UNAVAILABLE: {report}");
}

/// Of process `pid` now: anonymous resident memory (heap, stacks: MiB), file-backed resident
/// memory (mapped files: segments, WAL, libraries; MiB), open files, threads. `None` once gone.
fn resources(pid: u32) -> Option<[f64; 4]> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as f64;
    Some([field("RssAnon:")? / 1024.0, field("RssFile:")? / 1024.0, fds, field("Threads:")?])
}

/// The median of the samples `(t, value)` with `t` in `[from, to)`.
fn median_between(samples: &[(f64, f64)], from: f64, to: f64) -> Option<f64> {
    let mut v: Vec<f64> = samples.iter().filter(|(t, _)| *t >= from && *t < to).map(|(_, x)| *x).collect();
    v.sort_by(f64::total_cmp);
    (!v.is_empty()).then(|| v[v.len() / 2])
}

/// The soak of issue 19, not part of `make test` (it runs `RAGD_SOAK_SECS`, default 600 s):
/// ingest (8 documents 2×/s), search (10/s), ask (one per 10 s) and deletes (the documents
/// ingested 10 s earlier, 2×/s, so the collection stays the same size) on the two-embedder
/// cluster; a third of the way in one embedder is SIGKILLed and a new one started. RSS, open
/// files and threads of every ragd process are sampled four times a second and drawn (with loadgen's own
/// charts of the three workloads) into `RAGD_SOAK_PLOTS` (default `target/soak`). It fails on a
/// request failed for any reason but RESOURCE_EXHAUSTED, beyond 5 UNAVAILABLE (the killed
/// embedder's in-flight calls), and on growth between the middle and the end of the run (median
/// of each 10 % window): anonymous RSS (heap) by more than 10 % + 20 MiB, open files by more
/// than 8, threads by more than 4 (file-backed RSS, mapped segments and WAL, is drawn and
/// reported). Release binaries:
/// `cargo build --release -p ragd -p ragd-bench --bins && RAGD_BIN=$CARGO_TARGET_DIR/release/ragd
/// cargo test -p ragd-tests --test it -- --ignored soak --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a 10-minute soak; run it with --ignored (see its doc comment)"]
async fn soak_mixed_load_with_an_embedder_killed_and_restarted() {
    let secs: f64 = std::env::var("RAGD_SOAK_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(600.0);
    let plots = std::env::var_os("RAGD_SOAK_PLOTS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| ragd_tests::repo_root().join("target/soak"));
    std::fs::create_dir_all(&plots).expect("plots dir");
    let mut c = Cluster::start(true).await;
    let generator = c.generator.as_ref().expect("generator").url();
    let plot = plots.display().to_string();
    let load = std::process::Command::new(loadgen_bin())
        .args(["mixed", "--indexer", &c.indexer_url(), "--generator", &generator, "--collection", "soak"])
        .args(["--ingest-rate", "2", "--docs-per-upsert", "8", "--search-rate", "10"])
        .args(["--ask-rate", "0.1", "--ask-max-tokens", "16", "--warmup-secs", "0"])
        .args(["--duration-secs", &secs.to_string(), "--plot", &plot])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn loadgen");
    let started = std::time::Instant::now();
    let t = move || started.elapsed().as_secs_f64();
    let mut pids: Vec<(String, u32)> = vec![
        ("embedder 1".into(), c.embedder(0).pid()),
        ("embedder 2".into(), c.embedder(1).pid()),
        ("indexer".into(), c.indexer.as_ref().expect("indexer").pid()),
        ("generator".into(), c.generator.as_ref().expect("generator").pid()),
    ];
    let mut samples: std::collections::BTreeMap<String, [Vec<(f64, f64)>; 4]> = Default::default();
    let (mut killed, mut replacement) = (false, None);
    let (mut deletes, mut deleted, mut delete_errors) = (0u64, 0u64, Vec::new());
    let mut idx = c.idx.clone();
    let mut next_delete = 10.0;
    while t() < secs {
        for (name, pid) in &pids {
            if let Some(values) = resources(*pid) {
                let (s, now) = (samples.entry(name.clone()).or_default(), t());
                for (series, v) in s.iter_mut().zip(values) {
                    series.push((now, v));
                }
            }
        }
        // Deletes trail the ingest by 10 s: upsert i (at i / 2 s) wrote loadgen-i-0..7.
        while next_delete <= t() {
            let i = ((next_delete - 10.0) * 2.0) as u64;
            let ids = (0..8).map(|k| format!("loadgen-{i}-{k}")).collect();
            match idx.delete(v1::DeleteRequest { collection: "soak".into(), ids }).await {
                Ok(r) => deleted += u64::from(r.into_inner().deleted),
                Err(e) => delete_errors.push(format!("{:?}", e.code())),
            }
            deletes += 1;
            next_delete += 0.5;
        }
        if !killed && t() >= secs / 3.0 {
            killed = true;
            let mut dead = c.embedders[0].take().expect("embedder 0");
            dead.signal("KILL");
            dead.wait(Duration::from_secs(10)).expect("killed");
            wait_keys(&c.etcd, &c.prefix("embedder"), 1).await;
            let new = c.add_embedder(loopback()).await;
            pids.push(("embedder 3 (replacement)".into(), new.pid()));
            replacement = Some(new);
            c.wait_embedders(2).await;
            eprintln!("soak: embedder 1 SIGKILLed and replaced at {:.0} s", t());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let report = report(load).await;
    drop(replacement);

    // Charts: one line per process for each resource.
    for (i, (what, unit)) in [
        ("rss-anon", "anonymous RSS (MiB)"),
        ("rss-file", "file-backed RSS (MiB)"),
        ("fds", "open files"),
        ("threads", "threads"),
    ]
    .iter()
    .enumerate()
    {
        let lines: Vec<ragd_eval::plot::Line> = samples
            .iter()
            .map(|(name, s)| ragd_eval::plot::Line {
                name: name.clone(),
                points: s[i].clone(),
                labels: Vec::new(),
            })
            .collect();
        ragd_eval::plot::lines(
            &plots.join(format!("soak-{what}")),
            &ragd_eval::plot::Lines {
                title: &format!("soak: {unit} of each process (embedder 1 killed at {:.0} s)", secs / 3.0),
                x_label: "seconds",
                y_label: unit,
                lines: &lines,
            },
        )
        .expect("chart");
    }
    // Verdicts.
    let mut failures = Vec::new();
    for workload in ["ingest", "search", "ask"] {
        let errors = report[workload]["errors"].as_object().cloned().unwrap_or_default();
        for (code, n) in &errors {
            let n = n.as_u64().unwrap_or(0);
            match code.as_str() {
                "ResourceExhausted" => {}
                "Unavailable" if n <= 5 => {}
                _ => failures.push(format!("{workload}: {n} {code}")),
            }
        }
    }
    if !delete_errors.is_empty() {
        failures.push(format!("deletes failed: {delete_errors:?}"));
    }
    let mut growth = Vec::new();
    for (name, s) in &samples {
        // File-backed memory is mapped data (segments, WAL) that follows the collection: drawn and
        // reported, not judged.
        let limits = [
            ("anonymous RSS MiB", 0.10, 20.0),
            ("file-backed RSS MiB", f64::INFINITY, 0.0),
            ("open files", 0.0, 8.0),
            ("threads", 0.0, 4.0),
        ];
        for (i, (what, rel, abs)) in limits.into_iter().enumerate() {
            let (Some(mid), Some(end)) =
                (median_between(&s[i], 0.45 * secs, 0.55 * secs), median_between(&s[i], 0.9 * secs, secs))
            else {
                continue;
            };
            growth.push(format!("{name} {what}: {mid:.0} → {end:.0}"));
            if end > mid * (1.0 + rel) + abs {
                failures.push(format!("{name}: {what} grew from {mid:.1} to {end:.1}"));
            }
        }
    }
    let summary = serde_json::json!({
        "seconds": secs,
        "load": report,
        "deletes": deletes,
        "deleted": deleted,
        "growth": growth,
        "failures": failures,
    });
    std::fs::write(plots.join("soak.json"), serde_json::to_vec_pretty(&summary).expect("json"))
        .expect("write");
    eprintln!("soak: {deletes} deletes ({deleted} documents); {}", growth.join("; "));
    assert!(failures.is_empty(), "soak failures: {failures:?}");
}
