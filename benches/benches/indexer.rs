//! Indexer figures in one run on one machine, written to docs/benchmarks.md:
//!
//! 1. **HNSW search**: the same collection (clustered unit vectors, 384-d, one shard, HNSW
//!    built by the optimizer) searched by raw vector with k = 10, hnsw_ef = 64, payloads
//!    returned, (a) through the indexer's gRPC on loopback, (b) with qdrant-edge's `EdgeShard`
//!    called in-process (the baseline). Queries/s closed-loop and recall@10 against exact search.
//! 2. **Ingest**: documents/s end to end (UpsertBatch over gRPC → chunk → Embed over gRPC →
//!    store) against the embedder's raw in-process ONNX Runtime throughput on the same texts.
//!
//! `cargo bench -p ragd-bench --bench indexer` (or `make bench`); `RAGD_BENCH_SECS` sets each
//! measurement's length (default 10 s), `RAGD_BENCH_VECTORS` the collection size (default 50 000);
//! for development, `RAGD_BENCH_ONLY=search` or `=ingest` runs one part and prints its medians
//! without touching the docs, and `RAGD_BENCH_ROUNDS` sets the search rounds (default 5).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use qdrant_edge::{EdgeShard, NamedQuery, QueryEnum, SearchParams, SearchRequest, WithPayloadInterface};
use ragd_bench::{
    LoadConfig, LoadReport, Mode, bench_secs, cpu_time, embedder_batch, mean_tokens, median, ragd_home,
    raw_ort_for, report, run, sample_texts, token_lens,
};
use ragd_core::config::DEFAULT_MAX_MESSAGE_BYTES;
use ragd_embedder::config::Device;
use ragd_embedder::manifest::Manifest;
use ragd_embedder::model::TextModel;
use ragd_embedder::ort_backend::{OrtBackend, environment};
use ragd_embedder::{EmbedderConfig, serve as serve_embedder};
use ragd_indexer::chunk::Chunking;
use ragd_indexer::collections::{CollectionMeta, Registry};
use ragd_indexer::store::edge::EdgeStore;
use ragd_indexer::store::{ChunkPoint, Distance, SearchOptions, StoreSpec, VectorStore};
use ragd_indexer::{IndexerConfig, serve as serve_indexer};
use ragd_proto::v1::{self, embedder_client::EmbedderClient, indexer_client::IndexerClient};
use tonic::transport::Channel;

const MODEL: &str = "all-MiniLM-L6-v2";
const DIM: usize = 384;
const K: usize = 10;
const EF: usize = 64;
const QUERIES: usize = 200;
const COLLECTION: &str = "bench";

fn n_vectors() -> usize {
    std::env::var("RAGD_BENCH_VECTORS").ok().and_then(|s| s.parse().ok()).unwrap_or(50_000)
}

fn vectors(n: usize, seed: u64) -> Vec<Vec<f32>> {
    ragd_bench::embedding_like_vectors(n, DIM, seed)
}

/// Builds the collection in `data` exactly as the indexer lays it out (registry + one
/// qdrant-edge shard), runs the optimizer until HNSW covers it, and returns the exact top-k
/// of each query (ground truth) and the build time.
async fn build(data: &Path, points: &[Vec<f32>], queries: &[Vec<f32>]) -> (Vec<Vec<String>>, f64) {
    let started = Instant::now();
    let store = EdgeStore::new(&data.join("shards")).expect("store");
    let spec = StoreSpec {
        name: COLLECTION.into(),
        dim: DIM,
        distance: Distance::Cosine,
        shards: 1,
        indexing_threshold_kb: Some(1024),
        replication_factor: None,
        write_consistency_factor: None,
        on_disk: None,
        sparse: true,
    };
    store.create(&spec).await.expect("create");
    for (b, batch) in points.chunks(2000).enumerate() {
        let pts: Vec<ChunkPoint> = batch
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let id = b * 2000 + i;
                ChunkPoint {
                    doc_id: format!("d{id}"),
                    chunk: 0,
                    text: format!("chunk text {id}"),
                    metadata: Default::default(),
                    vector: v.clone(),
                    sparse: None,
                }
            })
            .collect();
        store.upsert(COLLECTION, &pts).await.expect("upsert");
    }
    while store.optimize(COLLECTION).await.expect("optimize") {}
    let stats = store.stats(COLLECTION).await.expect("stats");
    assert!(stats.indexed_vectors as usize >= points.len(), "HNSW covers the collection: {stats:?}");
    let build_secs = started.elapsed().as_secs_f64();
    let exact = SearchOptions { k: K, exact: true, ..Default::default() };
    let truth = store
        .search(COLLECTION, queries, &exact)
        .await
        .expect("exact")
        .into_iter()
        .map(|hits| hits.into_iter().map(|h| h.doc_id).collect())
        .collect();
    store.flush().await.expect("flush");
    Registry::load(data)
        .expect("registry")
        .insert(CollectionMeta {
            store: spec,
            model: MODEL.into(),
            chunking: Chunking::default(),
            keyword: None,
            max_chunks: None,
            exact: None,
        })
        .expect("register");
    (truth, build_secs)
}

fn recall(truth: &[Vec<String>], got: &[Vec<String>]) -> f64 {
    let found: usize = truth.iter().zip(got).map(|(t, g)| t.iter().filter(|id| g.contains(id)).count()).sum();
    found as f64 / (truth.len() * K) as f64
}

fn edge_request(q: &[f32]) -> SearchRequest {
    SearchRequest {
        query: QueryEnum::Nearest(NamedQuery::default_dense(q.to_vec())),
        filter: None,
        params: Some(SearchParams { hnsw_ef: Some(EF), ..Default::default() }),
        limit: K,
        offset: 0,
        with_payload: Some(WithPayloadInterface::Bool(true)),
        with_vector: None,
        score_threshold: None,
    }
}

/// Loads the baseline's shard and measures its recall (against `truth`) after a 1 s warm-up.
fn edge_open(shard_dir: &Path, queries: &[Vec<f32>], truth: &[Vec<String>]) -> (Arc<EdgeShard>, f64) {
    let shard = Arc::new(EdgeShard::load(shard_dir, None).expect("load shard"));
    let doc = |p: &qdrant_edge::ScoredPoint| {
        p.payload.as_ref().and_then(|p| p.0.get("doc_id")).and_then(|v| v.as_str()).unwrap_or("").to_string()
    };
    let got: Vec<Vec<String>> = queries
        .iter()
        .map(|q| shard.search(edge_request(q)).expect("search").iter().map(doc).collect())
        .collect();
    let r = recall(truth, &got);
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline {
        for q in queries {
            shard.search(edge_request(q)).expect("warm-up");
        }
    }
    (shard, r)
}

/// qdrant-edge in-process: queries/s with `threads` threads for `secs`, and CPU time per query.
fn edge_qps(shard: &Arc<EdgeShard>, queries: &[Vec<f32>], threads: usize, secs: Duration) -> (f64, Duration) {
    let cpu = cpu_time();
    let started = Instant::now();
    let done: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let shard = shard.clone();
                s.spawn(move || {
                    let mut n = 0usize;
                    while started.elapsed() < secs {
                        let hits = shard.search(edge_request(&queries[(n * threads + t) % queries.len()]));
                        assert_eq!(hits.expect("search").len(), K);
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("thread")).sum()
    });
    let qps = done as f64 / started.elapsed().as_secs_f64();
    (qps, (cpu_time() - cpu) / done.max(1) as u32)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("copy");
        }
    }
}

fn vector_search(q: &[f32]) -> v1::SearchRequest {
    vectors_search(std::slice::from_ref(&q.to_vec()))
}

fn vectors_search(qs: &[Vec<f32>]) -> v1::SearchRequest {
    v1::SearchRequest {
        collection: COLLECTION.into(),
        queries: qs
            .iter()
            .map(|q| v1::Query { query: Some(v1::query::Query::Vector(v1::Vector { values: q.clone() })) })
            .collect(),
        k: K as u32,
        hnsw_ef: EF as u32,
        ..Default::default()
    }
}

async fn indexer_client(url: &str) -> IndexerClient<Channel> {
    let ch = ragd_core::client::connect(url).await.expect("connect");
    IndexerClient::new(ch).max_decoding_message_size(DEFAULT_MAX_MESSAGE_BYTES)
}

/// `clients` closed-loop clients, each request carrying `per_request` queries; items = queries.
/// Also returns the process's CPU time per query over the whole run (warm-up included; server
/// and clients together).
async fn grpc_search(
    url: &str,
    clients: usize,
    per_request: usize,
    queries: Arc<Vec<Vec<f32>>>,
    duration: Duration,
) -> (LoadReport, Duration) {
    let mut conns = Vec::new();
    for _ in 0..clients.min(4) {
        conns.push(indexer_client(url).await);
    }
    let config = LoadConfig { clients, mode: Mode::Closed, duration, warmup: Duration::from_secs(1) };
    let answered = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = answered.clone();
    let cpu = cpu_time();
    let report = run(&config, move |i| {
        let mut c = conns[i as usize % conns.len()].clone();
        let start = (i as usize * per_request) % (queries.len() - per_request + 1);
        let req = vectors_search(&queries[start..start + per_request]);
        let counter = counter.clone();
        async move {
            let r = c.search(req).await?.into_inner();
            counter.fetch_add(r.results.len() as u64, std::sync::atomic::Ordering::Relaxed);
            Ok(r.results.len() as u64)
        }
    })
    .await;
    let cpu = cpu_time() - cpu;
    (report, cpu / answered.load(std::sync::atomic::Ordering::Relaxed).max(1) as u32)
}

/// The cost of an RPC that does nothing (grpc.health.v1 Check on the indexer), 8 clients: the
/// ceiling any single-query RPC can reach on this machine.
async fn rpc_floor(url: &str) -> LoadReport {
    let ch = ragd_core::client::connect(url).await.expect("connect");
    let client = tonic_health::pb::health_client::HealthClient::new(ch);
    let config = LoadConfig {
        clients: 8,
        mode: Mode::Closed,
        duration: bench_secs() / 2,
        warmup: Duration::from_secs(1),
    };
    run(&config, move |_| {
        let mut c = client.clone();
        async move {
            c.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await?;
            Ok(1)
        }
    })
    .await
}

struct Served {
    url: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

async fn start<F, Fut>(serve: F) -> Served
where
    F: FnOnce(tokio::net::TcpListener, tokio::sync::oneshot::Receiver<()>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let (stop, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(serve(listener, rx));
    Served { url, stop, task }
}

impl Served {
    async fn shutdown(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

async fn start_indexer(data: &Path, embedder_url: &str) -> Served {
    let config = IndexerConfig {
        data_dir: data.to_path_buf(),
        embedder_url: embedder_url.into(),
        ..IndexerConfig::default()
    };
    let served = start(|listener, rx| async move {
        serve_indexer(config, listener, async {
            let _ = rx.await;
        })
        .await
        .expect("indexer");
    })
    .await;
    let mut client = indexer_client(&served.url).await;
    let until = Instant::now() + Duration::from_secs(120);
    while client.list_collections(v1::ListCollectionsRequest {}).await.is_err() {
        assert!(Instant::now() < until, "indexer not ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    served
}

/// One round of the search bench: the in-process baseline with 2 threads, then the indexer's
/// gRPC with 8 clients (one query per request) and with 4 clients (16 queries per request).
struct SearchRound {
    edge_2: f64,
    grpc_8: LoadReport,
    grpc_batched: LoadReport,
    /// CPU time per query: in-process 2 threads, gRPC 8 clients, gRPC 16 per request.
    cpu: [Duration; 3],
}

impl SearchRound {
    /// The in-process CPU time per query over the gRPC path's (server and clients together).
    fn cpu_ratio(&self, path: usize) -> f64 {
        self.cpu[0].as_secs_f64() / self.cpu[path].as_secs_f64()
    }
}

struct SearchFigures {
    n: usize,
    build_secs: f64,
    edge_recall: f64,
    grpc_recall: f64,
    edge_1: f64,
    grpc_1: LoadReport,
    rounds: Vec<SearchRound>,
    floor: LoadReport,
}

impl SearchFigures {
    fn median_ratio_8(&self) -> f64 {
        median(self.rounds.iter().map(|r| r.grpc_8.items_per_sec / r.edge_2).collect())
    }

    fn median_cpu_ratio(&self, path: usize) -> f64 {
        median(self.rounds.iter().map(|r| r.cpu_ratio(path)).collect())
    }

    fn median_ratio_batched(&self) -> f64 {
        median(self.rounds.iter().map(|r| r.grpc_batched.items_per_sec / r.edge_2).collect())
    }

    fn failed(&self) -> u64 {
        self.grpc_1.requests_failed
            + self
                .rounds
                .iter()
                .map(|r| r.grpc_8.requests_failed + r.grpc_batched.requests_failed)
                .sum::<u64>()
    }
}

async fn search_bench() -> SearchFigures {
    let n = n_vectors();
    let points = vectors(n, 1);
    let queries = vectors(QUERIES, 2);
    let data = tempfile::tempdir().expect("tempdir");
    eprintln!("building {n} × {DIM} collection with HNSW ...");
    let (truth, build_secs) = build(data.path(), &points, &queries).await;
    drop(points);
    eprintln!("built in {build_secs:.1} s");

    // The baseline opens a byte-for-byte copy of the indexer's shard (one process may not open
    // the same shard directory twice), so the two can alternate round by round.
    let shard_dir = data.path().join("shards").join(COLLECTION).join("shard-0");
    let baseline_dir = data.path().join("baseline-shard");
    copy_dir(&shard_dir, &baseline_dir);
    let (edge, edge_recall) = {
        let (q, t) = (queries.clone(), truth.clone());
        tokio::task::spawn_blocking(move || edge_open(&baseline_dir, &q, &t)).await.expect("baseline")
    };

    // The indexer opens the data directory; its embedder is not needed for vector queries.
    let indexer = start_indexer(data.path(), "http://127.0.0.1:9").await;
    let mut client = indexer_client(&indexer.url).await;
    let mut got = Vec::new();
    for q in &queries {
        let r = client.search(vector_search(q)).await.expect("search").into_inner();
        got.push(r.results[0].hits.iter().map(|h| h.doc_id.clone()).collect::<Vec<_>>());
    }
    let grpc_recall = recall(&truth, &got);
    let queries = Arc::new(queries);
    let secs = bench_secs() / 2;
    let edge_on = |threads: usize| {
        let (e, q) = (edge.clone(), queries.clone());
        tokio::task::spawn_blocking(move || edge_qps(&e, &q, threads, secs))
    };
    let (edge_1, _) = edge_on(1).await.expect("baseline");
    let (grpc_1, _) = grpc_search(&indexer.url, 1, 1, queries.clone(), secs).await;
    let mut rounds = Vec::new();
    for round in 1..=search_rounds() {
        let (edge_2, cpu_edge) = edge_on(2).await.expect("baseline");
        let (grpc_8, cpu_8) = grpc_search(&indexer.url, 8, 1, queries.clone(), secs).await;
        let (grpc_batched, cpu_b) = grpc_search(&indexer.url, 4, 16, queries.clone(), secs).await;
        let r = SearchRound { edge_2, grpc_8, grpc_batched, cpu: [cpu_edge, cpu_8, cpu_b] };
        eprintln!(
            "round {round}: in-process {edge_2:.0} q/s, gRPC 8 clients {:.0} q/s ({:.2}×, CPU {:.2}×), 16 per request {:.0} q/s ({:.2}×, CPU {:.2}×); CPU µs/query {:.0} / {:.0} / {:.0}",
            r.grpc_8.items_per_sec,
            r.grpc_8.items_per_sec / edge_2,
            r.cpu_ratio(1),
            r.grpc_batched.items_per_sec,
            r.grpc_batched.items_per_sec / edge_2,
            r.cpu_ratio(2),
            cpu_edge.as_secs_f64() * 1e6,
            cpu_8.as_secs_f64() * 1e6,
            cpu_b.as_secs_f64() * 1e6,
        );
        rounds.push(r);
    }
    let floor = rpc_floor(&indexer.url).await;
    indexer.shutdown().await;
    SearchFigures { n, build_secs, edge_recall, grpc_recall, edge_1, grpc_1, rounds, floor }
}

/// Alternating baseline/gRPC rounds of the search bench.
fn search_rounds() -> usize {
    std::env::var("RAGD_BENCH_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(5)
}

/// Alternating raw/ingest rounds of the ingest bench.
const ROUNDS: usize = 5;

struct IngestFigures {
    docs: usize,
    /// (raw ORT sentences/s, ingest documents/s) per round.
    rounds: Vec<(f64, f64)>,
    chunks: u64,
    avg_tokens: f64,
    /// The embedder's batch size on these texts, which the raw baseline uses too.
    raw_batch: usize,
}

impl IngestFigures {
    fn median_ratio(&self) -> f64 {
        median(self.rounds.iter().map(|(raw, ing)| ing / raw).collect())
    }
}

async fn ingest_bench() -> IngestFigures {
    let home = ragd_home();
    let ort_lib = home.join("lib/libonnxruntime.so.1.31.1");
    let manifest = Manifest::load(&home.join("models")).expect("models (run scripts/setup)");
    let spec = manifest.models.iter().find(|m| m.name == MODEL).expect("MiniLM in manifest").clone();
    // 50-word texts without sentence ends: one chunk per document.
    let texts = sample_texts(2048, 50);
    // The raw baseline's session stays loaded next to the servers; rounds alternate raw and
    // ingest so both see the same machine (this VM's speed drifts between minutes).
    let (raw, (avg_tokens, raw_batch)) = {
        let (texts, spec, ort_lib) = (texts.clone(), spec.clone(), ort_lib.clone());
        tokio::task::spawn_blocking(move || {
            let env = environment(&ort_lib).expect("onnx runtime");
            let model = TextModel::load(spec.clone()).expect("tokenizer");
            let lens = token_lens(&model, &texts);
            let (avg, batch) = (mean_tokens(&lens[..256]), embedder_batch(&lens));
            let backend = OrtBackend::new(&env, &spec, Device::Cpu, 0).expect("session");
            (Arc::new(std::sync::Mutex::new((model, backend))), (avg, batch))
        })
        .await
        .expect("raw")
    };

    let config = EmbedderConfig {
        models_dir: home.join("models"),
        ort_library: ort_lib,
        models: vec![MODEL.into()],
        ..EmbedderConfig::default()
    };
    let embedder = start(|listener, rx| async move {
        serve_embedder(config, listener, async {
            let _ = rx.await;
        })
        .await
        .expect("embedder");
    })
    .await;
    loop {
        if let Ok(ch) = ragd_core::client::connect(&embedder.url).await
            && EmbedderClient::new(ch).list_models(v1::ListModelsRequest {}).await.is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let data = tempfile::tempdir().expect("tempdir");
    let indexer = start_indexer(data.path(), &embedder.url).await;
    let mut client = indexer_client(&indexer.url).await;
    client
        .create_collection(v1::CreateCollectionRequest { name: "ingest".into(), ..Default::default() })
        .await
        .expect("create");
    let batch = |round: usize, docs: &[String]| v1::UpsertRequest {
        collection: "ingest".into(),
        documents: docs
            .iter()
            .enumerate()
            .map(|(i, t)| v1::Document {
                id: format!("r{round}-{i}"),
                text: t.clone(),
                metadata: None,
                vector: Vec::new(),
            })
            .collect(),
    };
    // Warm-up, then ROUNDS rounds of (raw ORT for a third of the window, then as many documents
    // as raw embedded in it, as batches of 256 from 2 concurrent clients — what `ragd ingest` does).
    client.upsert_batch(batch(0, &texts[..256])).await.expect("warm-up");
    let window = bench_secs() / 2;
    let mut rounds = Vec::new();
    let mut next_round = 1;
    let (mut docs_total, mut chunks) = (0usize, 0u64);
    for _ in 0..ROUNDS {
        let raw_rate = {
            let (raw, texts) = (raw.clone(), texts.clone());
            tokio::task::spawn_blocking(move || {
                let mut guard = raw.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let (model, backend) = &mut *guard;
                raw_ort_for(model, backend, &texts, raw_batch, window)
            })
            .await
            .expect("raw")
        };
        let docs = ((raw_rate * window.as_secs_f64()) as usize / 256).max(2) * 256;
        let first = next_round;
        next_round += docs / 256;
        let started = Instant::now();
        let senders = (0..2).map(|c| {
            let mut client = client.clone();
            let texts = texts.clone();
            async move {
                let mut chunks = 0u64;
                for part in (0..docs / 256).filter(|r| r % 2 == c) {
                    let start = (part * 256) % texts.len();
                    let req = batch(first + part, &texts[start..start + 256]);
                    let r = client.upsert_batch(req).await.expect("upsert").into_inner();
                    assert!(r.failed.is_empty(), "{:?}", r.failed);
                    chunks += u64::from(r.chunks);
                }
                chunks
            }
        });
        chunks += futures::future::join_all(senders).await.into_iter().sum::<u64>();
        let docs_per_sec = docs as f64 / started.elapsed().as_secs_f64();
        eprintln!("round: raw ORT {raw_rate:.1}/s, ingest {docs} documents at {docs_per_sec:.1}/s");
        docs_total += docs;
        rounds.push((raw_rate, docs_per_sec));
    }
    indexer.shutdown().await;
    embedder.shutdown().await;
    IngestFigures { docs: docs_total, rounds, chunks, avg_tokens, raw_batch }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    if std::env::var("RAGD_BENCH_ONLY").as_deref() == Ok("ingest") {
        // A development shortcut: ingest figures on stderr, docs/benchmarks.md left alone.
        let g = rt.block_on(ingest_bench());
        eprintln!("median ratio: ingest {:.2}× raw", g.median_ratio());
        return;
    }
    let s = rt.block_on(search_bench());
    if std::env::var("RAGD_BENCH_ONLY").as_deref() == Ok("search") {
        // A development shortcut: search figures on stderr, docs/benchmarks.md left alone.
        eprintln!(
            "median ratios: 1 client {:.2}×, 8 clients {:.2}× (CPU {:.2}×), batched {:.2}× (CPU {:.2}×); floor {:.0} rps",
            s.grpc_1.items_per_sec / s.edge_1,
            s.median_ratio_8(),
            s.median_cpu_ratio(1),
            s.median_ratio_batched(),
            s.median_cpu_ratio(2),
            s.floor.requests_per_sec
        );
        return;
    }
    let g = rt.block_on(ingest_bench());
    let q1 = s.grpc_1.items_per_sec;
    let body = format!(
        "## Indexer: HNSW search and ingest\n\n\
         Measured by `cargo bench -p ragd-bench --bench indexer` in one run on: {machine}.\n\n\
         **HNSW search.** One collection of {n} embedding-like unit vectors (384-d: 64 topics in a \
         32-d latent space, projected, plus noise; cosine, one shard; HNSW built by the optimizer in {build:.0} s \
         including inserts), {QUERIES} query vectors, k = {K}, \
         hnsw_ef = {EF}, payloads returned. Baseline: qdrant-edge's `EdgeShard::search` called \
         in-process on a byte-for-byte copy of the shard directory. gRPC clients run in the bench \
         process and share the cores with the indexer. Recall@10 is against exact search of the same \
         collection. The machine's speed drifts, so the 2-thread baseline and the gRPC paths alternate \
         in {rounds} rounds of {secs:.0} s each and the ratio is the median of the rounds' ratios.\n\n\
         | path | queries/s | recall@10 | ratio |\n|---|---:|---:|---|\n\
         | qdrant-edge in-process, 1 thread | {e1:.0} | {er:.3} | |\n\
         | indexer gRPC, 1 client (p50 {p50_1:.2} ms, p99 {p99_1:.2} ms) | {q1:.0} | {gr:.3} | {r1:.2}× in-process 1 thread |\n\
         | RPC floor: empty health check, 8 clients (p50 {p50_f:.2} ms) | {qf:.0} | | |\n\n\
         | round | in-process, 2 threads (q/s) | gRPC, 8 clients, 1 query per request (q/s) | p50 / p99 (ms) | ratio | CPU µs per query, in-process / gRPC | gRPC, 4 clients, 16 queries per request (q/s) | ratio |\n\
         |---:|---:|---:|---:|---|---:|---:|---|\n\
         {search_rows}\
         | **median** | | | | **{r8:.2}×** (target ≥ 0.8×) | {c8:.2}× | | **{rb:.2}×** |\n\n\
         CPU µs per query is the bench process's CPU time (server and clients together) over the \
         queries answered in that phase; its ratio says how much of the gap is work rather than \
         the machine's drift between phases.\n\n\
         Failed search requests: {failed}.\n\n\
         **Ingest.** {docs} documents of 50 words (≈ {tok:.0} tokens, one chunk each; {chunks} chunks \
         stored), `UpsertBatch` of 256 documents from 2 concurrent clients → sentence chunking → \
         `Embed` over gRPC to the embedder (same process, loopback) → qdrant-edge. Baseline: the \
         embedder's raw in-process ONNX Runtime throughput on the same texts in the batches the embedder \
         forms of them ({raw_batch} texts: its default CPU budget of {budget} padded tokens), measured in \
         {ROUNDS} rounds alternating with the ingest (each round: raw for half the window, then as \
         many documents as raw embedded in it).\n\n\
         | round | raw ORT batch {raw_batch} (sentences/s) | ingest (documents/s) | ratio |\n|---:|---:|---:|---|\n\
         {round_rows}\
         | **median** | | | **{ri:.2}×** raw (target ≥ 0.9×) |\n",
        machine = report::machine(),
        n = s.n,
        build = s.build_secs,
        rounds = s.rounds.len(),
        secs = (bench_secs() / 2).as_secs_f64(),
        e1 = s.edge_1,
        er = s.edge_recall,
        p50_1 = s.grpc_1.latency.p50_ms,
        p99_1 = s.grpc_1.latency.p99_ms,
        gr = s.grpc_recall,
        r1 = q1 / s.edge_1,
        search_rows = s
            .rounds
            .iter()
            .enumerate()
            .map(|(i, r)| format!(
                "| {} | {:.0} | {:.0} | {:.2} / {:.2} | {:.2}× | {:.0} / {:.0} | {:.0} | {:.2}× |\n",
                i + 1,
                r.edge_2,
                r.grpc_8.items_per_sec,
                r.grpc_8.latency.p50_ms,
                r.grpc_8.latency.p99_ms,
                r.grpc_8.items_per_sec / r.edge_2,
                r.cpu[0].as_secs_f64() * 1e6,
                r.cpu[1].as_secs_f64() * 1e6,
                r.grpc_batched.items_per_sec,
                r.grpc_batched.items_per_sec / r.edge_2
            ))
            .collect::<String>(),
        r8 = s.median_ratio_8(),
        c8 = s.median_cpu_ratio(1),
        rb = s.median_ratio_batched(),
        p50_f = s.floor.latency.p50_ms,
        qf = s.floor.requests_per_sec,
        failed = s.failed(),
        docs = g.docs,
        tok = g.avg_tokens,
        raw_batch = g.raw_batch,
        budget = ragd_embedder::EmbedderConfig::default().batch_tokens(),
        chunks = g.chunks,
        round_rows = g
            .rounds
            .iter()
            .enumerate()
            .map(|(i, (raw, ing))| format!("| {} | {raw:.1} | {ing:.1} | {:.2}× |\n", i + 1, ing / raw))
            .collect::<String>(),
        ri = g.median_ratio(),
    );
    println!("{body}");
    report::update_section(&report::benchmarks_md(), "indexer", &body).expect("write docs/benchmarks.md");
}
