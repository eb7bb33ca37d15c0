//! Vectors brought by the user, in one run on one machine, written to docs/benchmarks.md
//! (section `upsert-vectors`): points/s of loading embedding-like 384-d vectors through the
//! indexer's `UpsertBatch` (documents that carry their vector: no chunking, no embedder) against
//! qdrant-edge's raw upsert of the same points (`EdgeShard::update`, in-process, one thread) into
//! a shard of the same configuration. The two alternate in rounds, each round adding the next
//! slice of the vectors to both, so the machine's drift hits both alike; the ratio is the
//! median of the rounds'.
//!
//! `cargo bench -p ragd-bench --bench upsert`; `RAGD_BENCH_UPSERT_N` sets the vectors (default
//! 1 000 000), `RAGD_BENCH_ROUNDS` the rounds (default 4).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use qdrant_edge::{
    EdgeShard, Payload, PointInsertOperations, PointOperations, PointStructPersisted, UpdateOperation,
    VectorStructPersisted,
};
use ragd_bench::{cpu_time, median, report};
use ragd_core::config::DEFAULT_MAX_MESSAGE_BYTES;
use ragd_indexer::store::edge::{EdgeStore, point_id};
use ragd_indexer::store::journal::Durability;
use ragd_indexer::store::{ChunkPoint, Distance, StoreSpec, VectorStore, payload};
use ragd_indexer::{IndexerConfig, serve as serve_indexer};
use ragd_proto::v1::{self, indexer_client::IndexerClient};
use tonic::transport::Channel;

const DIM: usize = 384;
/// Documents per UpsertBatch and points per raw update.
const BATCH: usize = 1000;
const CLIENTS: usize = 2;
const COLLECTION: &str = "vectors";

fn env_usize(key: &str, default: usize) -> usize {
    std::env::var(key).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

async fn client(url: &str) -> IndexerClient<Channel> {
    let ch = ragd_core::client::connect(url).await.expect("connect");
    IndexerClient::new(ch)
        .max_decoding_message_size(DEFAULT_MAX_MESSAGE_BYTES)
        .max_encoding_message_size(DEFAULT_MAX_MESSAGE_BYTES)
}

fn doc_id(i: usize) -> String {
    format!("v{i}")
}

/// The raw baseline's points: what the indexer stores for a document with a vector (the same
/// point id, dense vector and payload), without ragd in between.
fn raw_points(vectors: &[Vec<f32>], first: usize) -> Vec<PointStructPersisted> {
    vectors
        .iter()
        .enumerate()
        .map(|(j, v)| {
            let point = ChunkPoint {
                doc_id: doc_id(first + j),
                chunk: 0,
                text: String::new(),
                metadata: Default::default(),
                vector: v.clone(),
                sparse: None,
            };
            PointStructPersisted {
                id: point_id(&point.doc_id, 0),
                vector: VectorStructPersisted::Single(point.vector.clone()),
                payload: Some(Payload(payload(&point))),
            }
        })
        .collect()
}

/// An empty shard laid out as the indexer makes a collection's (same config, payload indexes).
async fn raw_shard(dir: &Path) -> EdgeShard {
    let spec = StoreSpec {
        name: COLLECTION.into(),
        dim: DIM,
        distance: Distance::Cosine,
        shards: 1,
        indexing_threshold_kb: None,
        replication_factor: None,
        write_consistency_factor: None,
        on_disk: None,
        sparse: true,
    };
    let store = EdgeStore::new(dir).expect("store");
    store.create(&spec).await.expect("create");
    store.flush().await.expect("flush");
    drop(store);
    EdgeShard::load(&dir.join(COLLECTION).join("shard-0"), None).expect("load shard")
}

struct Round {
    raw: f64,
    /// Points/s of each indexer configuration, in [`Indexer`] order.
    grpc: Vec<f64>,
    /// CPU time per point: raw, then each indexer (the bench process: servers and clients).
    cpu: Vec<Duration>,
}

/// An indexer served in-process with one collection of vectors, `COLLECTION`.
struct Indexer {
    url: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), ragd_indexer::StartupError>>,
}

async fn start_indexer(config: IndexerConfig) -> Indexer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve_indexer(config, listener, async {
        let _ = stopped.await;
    }));
    let mut c = client(&url).await;
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let create =
            v1::CreateCollectionRequest { name: COLLECTION.into(), dim: DIM as u32, ..Default::default() };
        match c.create_collection(create).await {
            Ok(_) => break,
            Err(e) => {
                assert!(Instant::now() < until, "indexer not ready: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    Indexer { url, stop, task }
}

/// Loads `requests` through `CLIENTS` concurrent clients; wall time and the process's CPU time.
async fn load(url: &str, requests: Vec<v1::UpsertRequest>) -> (Duration, Duration) {
    let (cpu, started) = (cpu_time(), Instant::now());
    let requests = Arc::new(std::sync::Mutex::new(requests.into_iter()));
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let (mut c, requests) = (client(url).await, requests.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let next = requests.lock().expect("requests").next();
                let Some(request) = next else { return };
                let want = request.documents.len() as u32;
                let r = c.upsert_batch(request).await.expect("upsert").into_inner();
                assert_eq!((r.documents, r.failed.len()), (want, 0));
            }
        }));
    }
    for t in tasks {
        t.await.expect("client");
    }
    (started.elapsed(), cpu_time() - cpu)
}

fn main() {
    let n = env_usize("RAGD_BENCH_UPSERT_N", 1_000_000);
    let rounds = env_usize("RAGD_BENCH_ROUNDS", 4).max(1);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let vectors = Arc::new(ragd_bench::embedding_like_vectors(n, DIM, 11));
    let dir = tempfile::tempdir().expect("dir");
    let config = |name: &str| IndexerConfig {
        data_dir: dir.path().join(name),
        // No embedder runs: documents with vectors never need one.
        embedder_url: "http://127.0.0.1:9".into(),
        // Neither side builds HNSW while loading (the raw shard has no optimizer running).
        optimize_interval_secs: 24 * 3600,
        ..IndexerConfig::default()
    };
    // The server as it starts by default, and as a bulk load of data that can be loaded again
    // would run it: no journal, no resident exact engine.
    let default = config("default");
    let (durability, exact_engine) = (default.durability, default.exact_engine);
    let bulk = IndexerConfig { durability: Durability::None, exact_engine: false, ..config("bulk") };
    let indexers = rt.block_on(async { vec![start_indexer(default).await, start_indexer(bulk).await] });
    let shard = rt.block_on(raw_shard(&dir.path().join("raw")));

    let per_round = n.div_ceil(rounds);
    let mut results = Vec::new();
    for r in 0..rounds {
        let (from, to) = (r * per_round, ((r + 1) * per_round).min(n));
        if from >= to {
            break;
        }
        // The requests are made before the clock starts (a client has its vectors at hand).
        let requests = || -> Vec<v1::UpsertRequest> {
            (from..to)
                .step_by(BATCH)
                .map(|start| v1::UpsertRequest {
                    collection: COLLECTION.into(),
                    documents: (start..(start + BATCH).min(to))
                        .map(|i| v1::Document {
                            id: doc_id(i),
                            vector: vectors[i].clone(),
                            ..Default::default()
                        })
                        .collect(),
                })
                .collect()
        };
        // The paths take turns going first: raw, default, bulk; then default, bulk, raw; ...
        let mut times = [(Duration::ZERO, Duration::ZERO); 3];
        for k in 0..3 {
            let path = (r + k) % 3;
            times[path] = match path {
                0 => {
                    let (cpu, started) = (cpu_time(), Instant::now());
                    for start in (from..to).step_by(BATCH) {
                        let points = raw_points(&vectors[start..(start + BATCH).min(to)], start);
                        let op = PointOperations::UpsertPoints(PointInsertOperations::PointsList(points));
                        shard.update(UpdateOperation::PointOperation(op)).expect("raw upsert");
                    }
                    shard.flush();
                    (started.elapsed(), cpu_time() - cpu)
                }
                i => {
                    let requests = requests();
                    rt.block_on(load(&indexers[i - 1].url, requests))
                }
            };
        }
        let points = (to - from) as f64;
        let round = Round {
            raw: points / times[0].0.as_secs_f64(),
            grpc: times[1..].iter().map(|t| points / t.0.as_secs_f64()).collect(),
            cpu: times.iter().map(|t| t.1 / (to - from) as u32).collect(),
        };
        eprintln!(
            "round {}: raw {:.0} points/s, indexer {:.0} ({:.2}×), bulk {:.0} ({:.2}×)",
            r + 1,
            round.raw,
            round.grpc[0],
            round.grpc[0] / round.raw,
            round.grpc[1],
            round.grpc[1] / round.raw
        );
        results.push(round);
    }

    // Every store holds every vector: the indexers' counts and one vector read back through
    // GetDocument, the raw shard's count.
    for indexer in &indexers {
        let (points, back) = rt.block_on(async {
            let mut c = client(&indexer.url).await;
            let info = c
                .describe_collection(v1::DescribeCollectionRequest { name: COLLECTION.into() })
                .await
                .expect("describe")
                .into_inner();
            let probe = v1::GetDocumentRequest {
                collection: COLLECTION.into(),
                id: doc_id(n / 2),
                with_vectors: true,
            };
            let doc = c.get_document(probe).await.expect("get").into_inner();
            (info.points, doc.chunks[0].vector.clone())
        });
        assert_eq!(points as usize, n, "the indexer stored every vector");
        let diff = back.iter().zip(&vectors[n / 2]).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(back.len() == DIM && diff < 1e-5, "a vector read back as loaded: {diff}");
    }
    assert_eq!(shard.info().points_count, n, "the raw shard stored every vector");
    rt.block_on(async {
        for indexer in indexers {
            let _ = indexer.stop.send(());
            let _ = indexer.task.await;
        }
    });

    let ratio = |i: usize| median(results.iter().map(|r| r.grpc[i] / r.raw).collect());
    let rows: String = results
        .iter()
        .enumerate()
        .map(|(i, r)| {
            format!(
                "| {} | {:.0} | {:.0} | {:.2}× | {:.0} | {:.2}× | {:.1} / {:.1} / {:.1} |\n",
                i + 1,
                r.raw,
                r.grpc[0],
                r.grpc[0] / r.raw,
                r.grpc[1],
                r.grpc[1] / r.raw,
                r.cpu[0].as_secs_f64() * 1e6,
                r.cpu[1].as_secs_f64() * 1e6,
                r.cpu[2].as_secs_f64() * 1e6
            )
        })
        .collect();
    let body = format!(
        "## Loading vectors brought by the user: UpsertBatch against qdrant-edge's raw upsert\n\n\
         Measured by `cargo bench -p ragd-bench --bench upsert` in one run on: {machine}.\n\n\
         {n} embedding-like unit vectors (384-d, cosine), loaded in {rounds} rounds of {per_round}; each \
         round adds its slice to every store, the paths taking turns at going first. \
         **Indexer**: documents carrying their vectors (no text: nothing chunked or embedded), \
         `UpsertBatch` of {BATCH} documents from {CLIENTS} concurrent clients over loopback, into the \
         embedded store of an indexer with its default settings (journal `--durability {durability:?}`: \
         each request acknowledged once its journal record is on disk; resident exact engine \
         {exact}), and of one set for a bulk load that can be redone (`--durability none \
         --exact-engine false`). **Baseline**: qdrant-edge's `EdgeShard::update` of the same points \
         (same ids, dense vectors and payload `{{doc_id, chunk, text, metadata}}`) in batches of \
         {BATCH}, one thread, in-process, into a shard of the same configuration, flushed at the end \
         of each round. None builds HNSW meanwhile. Checked afterwards: {n} points in every store, a \
         vector read back through `GetDocument` as it was loaded.\n\n\
         | round | qdrant-edge raw upsert (points/s) | indexer, default (points/s) | ratio | indexer, bulk load (points/s) | ratio | CPU µs per point: raw / default / bulk |\n\
         |---:|---:|---:|---|---:|---|---:|\n\
         {rows}\
         | **median** | | | **{r0:.2}×** (target ≥ 0.8×) | | **{r1:.2}×** | |\n\n\
         CPU µs per point is the bench process's CPU time (servers and clients together) over the \
         points of the path's turn. The default server pays for durability (its journal record of \
         every request, synced) and for mirroring every vector into the resident exact engine; \
         the bulk-load column is what remains without them (gRPC, checks, statuses, the journal-free \
         write path).\n",
        machine = report::machine(),
        durability = format!("{durability:?}").to_lowercase(),
        exact = if exact_engine { "on, mirroring every vector" } else { "off" },
        r0 = ratio(0),
        r1 = ratio(1),
    );
    println!("{body}");
    report::update_section(&report::benchmarks_md(), "upsert-vectors", &body)
        .expect("write docs/benchmarks.md");
}
