//! The crash checker (after Qdrant's crasher): writers ingest, re-upsert (with a different
//! number of chunks) and delete documents through a real indexer process, which is killed with
//! SIGKILL at a random moment of every cycle and started again on the same data directory.
//! After every restart the checker compares what the indexer holds with what it acknowledged:
//!
//! - every acknowledged document is there with all its chunks, their text and its metadata;
//!   a write that was in flight at the kill is there whole or not at all (never half of it,
//!   never a mix of two versions);
//! - no phantom or duplicate chunks: the full scroll of the store (a filtered exact search,
//!   answered by the store) and of the resident exact engine (an unfiltered exact search) list
//!   exactly the expected chunks, and DescribeCollection's counts agree with them;
//! - deleted documents stay deleted; DocumentStatus agrees with the store;
//! - the indexer's replay figures (`ragd_indexer_journal_*`, scraped from its metrics listener
//!   at every start) report no failed or skipped record, nothing on a new directory, journal
//!   records replayed across the killed cycles, and nothing left to replay after a clean stop.
//!
//! The expected state is the checker's own record of what was acknowledged, never read back
//! from ragd. Cycles alternate the two durability levels. `RAGD_CRASH_CYCLES` (default 20) sets
//! the cycles of each test, `RAGD_CRASH_SEED` replays a run (the seed is printed).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ragd_proto::v1::{self, indexer_client::IndexerClient};
use ragd_tests::process::{RagdProcess, model_env};
use ragd_tests::wait_serving;
use tonic::transport::Channel;

const COLLECTION: &str = "crash";
const WRITERS: usize = 3;
const DOCS_PER_WRITER: u32 = 40;
const DIM: usize = 384;

/// A small deterministic generator (xorshift64*), so a failing run can be replayed by its seed.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One acknowledged version of a document: its version number and its sentences (one chunk each).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Version {
    version: u64,
    sentences: Vec<String>,
}

impl Version {
    fn new(doc: &str, version: u64, n: usize) -> Self {
        let sentences =
            (0..n).map(|i| format!("Document {doc} in version {version} says thing {i}.")).collect();
        Self { version, sentences }
    }
}

/// What the checker knows of a document.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expected {
    /// Acknowledged: exactly this (None: deleted or never written).
    Known(Option<Version>),
    /// A write was in flight when the indexer died: either state is right, nothing else.
    Either(Option<Version>, Option<Version>),
}

type Model = Arc<Mutex<HashMap<String, Expected>>>;

/// A unit vector for queries whose ranking does not matter (every chunk is asked for).
fn any_vector() -> v1::Query {
    let mut values = vec![0.0; DIM];
    values[0] = 1.0;
    v1::Query { query: Some(v1::query::Query::Vector(v1::Vector { values })) }
}

fn keyword(key: &str, value: &str) -> v1::Condition {
    v1::Condition {
        key: key.into(),
        test: Some(v1::condition::Test::Match(v1::Value {
            kind: Some(v1::value::Kind::Keyword(value.into())),
        })),
    }
}

/// One writer: upserts (new versions with 1–5 chunks, several documents per request) and
/// deletes its own documents until the indexer stops answering or `stop` is set.
async fn writer(
    mut client: IndexerClient<Channel>,
    w: usize,
    model: Model,
    mut rng: Rng,
    stop: Arc<AtomicBool>,
) {
    let mut version = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let docs: Vec<String> = (0..1 + rng.below(3))
            .map(|_| format!("w{w}-d{}", rng.below(u64::from(DOCS_PER_WRITER))))
            .collect();
        let mut docs = docs;
        docs.sort();
        docs.dedup();
        let delete = rng.below(5) == 0;
        let mut next = Vec::new();
        {
            let mut m = model.lock().expect("model");
            for d in &docs {
                let before = match m.get(d) {
                    Some(Expected::Known(v)) => v.clone(),
                    other => panic!("{d}: {other:?} before a write"),
                };
                version += 1;
                let after = (!delete).then(|| Version::new(d, version, 1 + rng.below(5) as usize));
                m.insert(d.clone(), Expected::Either(before, after.clone()));
                next.push((d.clone(), after));
            }
        }
        let ok = if delete {
            let r = v1::DeleteRequest { collection: COLLECTION.into(), ids: docs.clone() };
            client.delete(r).await.is_ok()
        } else {
            let documents = next
                .iter()
                .map(|(id, v)| {
                    let v = v.as_ref().expect("upsert has a version");
                    let meta = serde_json::json!({ "suite": "crash", "key": id, "version": v.version });
                    v1::Document {
                        id: id.clone(),
                        text: v.sentences.join(" "),
                        metadata: meta.as_object().cloned().map(ragd_proto::json::to_struct),
                        vector: Vec::new(),
                    }
                })
                .collect();
            let r = v1::UpsertRequest { collection: COLLECTION.into(), documents };
            match client.upsert_batch(r).await {
                Ok(r) => {
                    let r = r.into_inner();
                    assert!(r.failed.is_empty(), "{:?}", r.failed);
                    let chunks: usize =
                        next.iter().map(|(_, v)| v.as_ref().map_or(0, |v| v.sentences.len())).sum();
                    assert_eq!(r.chunks as usize, chunks, "chunks acknowledged");
                    true
                }
                Err(_) => false,
            }
        };
        if !ok {
            // The indexer died with this write in flight: it stays Either until the check.
            return;
        }
        let mut m = model.lock().expect("model");
        for (d, after) in next {
            m.insert(d, Expected::Known(after));
        }
    }
}

/// What the indexer holds: per document, its chunks (index → text) and metadata version.
type Observed = BTreeMap<String, (BTreeMap<u32, String>, u64)>;

fn observe(hits: &[v1::Hit], source: &str) -> Observed {
    let mut out: Observed = BTreeMap::new();
    for h in hits {
        let meta = ragd_proto::json::from_struct(h.metadata.clone().unwrap_or_default());
        let version = meta["version"].as_u64().unwrap_or_else(|| panic!("{source}: no version in {meta:?}"));
        let entry = out.entry(h.doc_id.clone()).or_insert_with(|| (BTreeMap::new(), version));
        assert_eq!(entry.1, version, "{source}: {} mixes versions {} and {version}", h.doc_id, entry.1);
        let dup = entry.0.insert(h.chunk, h.text.trim().to_string());
        assert!(dup.is_none(), "{source}: chunk {} of {} listed twice", h.chunk, h.doc_id);
    }
    out
}

/// Every chunk in the collection, by a search for all of them.
async fn scroll(client: &mut IndexerClient<Channel>, through_store: bool) -> Vec<v1::Hit> {
    // A filter that every chunk passes sends an exact search to the store; without a filter it
    // goes to the resident exact engine.
    let filter =
        through_store.then(|| v1::Filter { must: vec![keyword("suite", "crash")], ..Default::default() });
    let r = client
        .search(v1::SearchRequest {
            collection: COLLECTION.into(),
            queries: vec![any_vector()],
            k: 1000,
            filter,
            exact: true,
            ..Default::default()
        })
        .await
        .expect("scroll search")
        .into_inner();
    let hits = r.results.into_iter().next().expect("one result").hits;
    assert!(hits.len() < 1000, "the scroll must see every chunk");
    hits
}

/// Compares what the store holds with the model; resolves each in-flight write to the state
/// found; returns (chunks, documents, writes resolved, a sample of documents with their chunk
/// counts for DocumentStatus).
fn resolve(model: &Model, store: &Observed, cycle: usize) -> (u64, u64, usize, Vec<(String, Option<usize>)>) {
    let mut m = model.lock().expect("model");
    for doc in store.keys() {
        assert!(m.contains_key(doc), "cycle {cycle}: phantom document {doc}");
    }
    let (mut points, mut documents) = (0u64, 0u64);
    let mut resolved = 0;
    for (doc, expected) in m.iter_mut() {
        let found = store.get(doc);
        let matches = |v: &Option<Version>| match (v, found) {
            (None, None) => true,
            (Some(v), Some((chunks, version))) => {
                *version == v.version
                    && chunks.len() == v.sentences.len()
                    && chunks
                        .iter()
                        .enumerate()
                        .all(|(i, (c, text))| *c as usize == i && *text == v.sentences[i])
            }
            _ => false,
        };
        let now = match expected {
            Expected::Known(v) => {
                assert!(matches(v), "cycle {cycle}: {doc} should be {v:?}, found {found:?}");
                v.clone()
            }
            Expected::Either(before, after) => {
                resolved += 1;
                if matches(after) {
                    after.clone()
                } else {
                    assert!(
                        matches(before),
                        "cycle {cycle}: {doc} is neither {before:?} nor {after:?}: {found:?}"
                    );
                    before.clone()
                }
            }
        };
        if let Some(v) = &now {
            points += v.sentences.len() as u64;
            documents += 1;
        }
        *expected = Expected::Known(now);
    }
    // DocumentStatus answers from the store after a restart.
    let sample: Vec<(String, Option<usize>)> = m
        .iter()
        .filter_map(|(d, e)| match e {
            Expected::Known(v) => Some((d.clone(), v.as_ref().map(|v| v.sentences.len()))),
            Expected::Either(..) => None,
        })
        .take(30)
        .collect();
    (points, documents, resolved, sample)
}

/// Checks the indexer against the model and resolves every in-flight write by what it finds.
async fn verify(client: &mut IndexerClient<Channel>, model: &Model, cycle: usize) {
    let store = observe(&scroll(client, true).await, "store");
    let mirror = observe(&scroll(client, false).await, "exact engine");
    assert_eq!(store, mirror, "cycle {cycle}: the exact engine disagrees with the store");
    let (points, documents, resolved, sample) = resolve(model, &store, cycle);
    let info = client
        .describe_collection(v1::DescribeCollectionRequest { name: COLLECTION.into() })
        .await
        .expect("describe")
        .into_inner();
    assert_eq!((info.points, info.documents), (points, documents), "cycle {cycle}: counts");
    for (doc, chunks) in sample {
        let r = client
            .document_status(v1::DocumentStatusRequest { collection: COLLECTION.into(), id: doc.clone() })
            .await;
        match (chunks, r) {
            (None, Err(s)) => assert_eq!(s.code(), tonic::Code::NotFound, "{doc}"),
            (Some(n), Ok(r)) => {
                let r = r.into_inner();
                assert_eq!((r.state, r.chunks as usize), (v1::IngestState::Stored as i32, n), "{doc}")
            }
            (want, got) => {
                panic!("cycle {cycle}: DocumentStatus of {doc}: expected {want:?} chunks, got {got:?}")
            }
        }
    }
    println!(
        "cycle {cycle}: {documents} documents, {points} chunks as acknowledged; {resolved} in-flight writes resolved"
    );
}

/// A started indexer under test: the process (killed by the checker), the indexer's URL, the URL
/// of an embedder that restarts with it (to wait for) and its metrics listener, where it has one.
struct Started {
    process: RagdProcess,
    url: String,
    embedder: Option<String>,
    metrics: Option<std::net::SocketAddr>,
}

/// How the checker starts the indexer under test: a `ragd serve indexer` beside one embedder
/// process, or all of `ragd up`.
trait Target {
    fn start(&mut self, data: &std::path::Path, durability: &str) -> Started;
}

struct Indexer {
    embedder: RagdProcess,
}

impl Target for Indexer {
    fn start(&mut self, data: &std::path::Path, durability: &str) -> Started {
        let dir = data.display().to_string();
        let url = self.embedder.url();
        let metrics = std::net::SocketAddr::from(([127, 0, 0, 1], ragd_tests::free_port()));
        let metrics_arg = metrics.to_string();
        let p = RagdProcess::serve(
            "indexer",
            &[
                "--embedder-url",
                &url,
                "--data-dir",
                &dir,
                "--durability",
                durability,
                "--journal-checkpoint-mb",
                "1",
                "--metrics-addr",
                &metrics_arg,
            ],
            &[("RUST_LOG", "warn".into())],
        );
        let url = p.url();
        Started { process: p, url, embedder: None, metrics: Some(metrics) }
    }
}

struct Up;

impl Target for Up {
    fn start(&mut self, data: &std::path::Path, durability: &str) -> Started {
        let (dir, llm) = (data.display().to_string(), ragd_tests::llm_model().display().to_string());
        // The models, ONNX Runtime and model subset come from the same variables as every
        // process test's embedder.
        let mut env = model_env();
        env.push(("RUST_LOG", "warn".into()));
        let (p, urls) = RagdProcess::up(
            &[
                "--embedder-port",
                "0",
                "--indexer-port",
                "0",
                "--generator-port",
                "0",
                "--data-dir",
                &dir,
                "--llm-model",
                &llm,
                "--durability",
                durability,
            ],
            &env,
        );
        let url = urls["indexer"].clone();
        Started { process: p, url, embedder: Some(urls["embedder"].clone()), metrics: None }
    }
}

async fn connect(url: &str) -> IndexerClient<Channel> {
    wait_serving(url, "ragd.v1.Indexer", Duration::from_secs(120)).await;
    IndexerClient::connect(url.to_string()).await.expect("connect")
}

async fn run(target: &mut dyn Target) {
    let cycles: usize = std::env::var("RAGD_CRASH_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let seed: u64 = std::env::var("RAGD_CRASH_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
            | 1
    });
    println!("crash checker: {cycles} cycles, RAGD_CRASH_SEED={seed}");
    let mut rng = Rng(seed);
    let data = tempfile::tempdir().expect("tempdir");
    let model: Model = Arc::default();
    for w in 0..WRITERS {
        let mut m = model.lock().expect("model");
        for d in 0..DOCS_PER_WRITER {
            m.insert(format!("w{w}-d{d}"), Expected::Known(None));
        }
    }
    let mut replayed = 0.0;
    for cycle in 0..=cycles {
        let durability = if cycle % 2 == 0 { "fsync" } else { "page-cache" };
        let Started { mut process, url, embedder, metrics } = target.start(data.path(), durability);
        if let Some(e) = embedder {
            wait_serving(&e, "ragd.v1.Embedder", Duration::from_secs(120)).await;
        }
        let mut client = connect(&url).await;
        if let Some(addr) = metrics {
            let r = recovery(addr).await;
            println!("cycle {cycle}: start-up replay {r:?}");
            assert_eq!(
                (r.skipped, r.failed),
                (0.0, 0.0),
                "cycle {cycle}: nothing was dropped, nothing may fail"
            );
            if cycle == 0 {
                assert_eq!(r, Recovery::default(), "a new data directory has nothing to replay");
            }
            replayed += r.records;
        }
        if cycle == 0 {
            let chunking = v1::Chunking {
                policy: Some(v1::chunking::Policy::Sentences(v1::Window { size: 1, overlap: 0 })),
            };
            client
                .create_collection(v1::CreateCollectionRequest {
                    name: COLLECTION.into(),
                    shards: 2,
                    chunking: Some(chunking),
                    ..Default::default()
                })
                .await
                .expect("create");
        }
        verify(&mut client, &model, cycle).await;
        if cycle == cycles {
            process.signal("TERM");
            ragd_tests::process::assert_clean_stop(process.wait(Duration::from_secs(60)));
            break;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                tokio::spawn(writer(client.clone(), w, model.clone(), Rng(rng.next() | 1), stop.clone()))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(300 + rng.below(1200))).await;
        process.signal("KILL");
        process.wait(Duration::from_secs(30)).expect("killed");
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.await.expect("writer");
        }
    }
    let stored = {
        let m = model.lock().expect("model");
        m.values().filter(|e| matches!(e, Expected::Known(Some(_)))).count()
    };
    assert!(stored > 0, "the writers stored nothing: the check checked nothing");
    // After a clean stop (which checkpoints) a restart has nothing to replay and still holds
    // everything; across the killed cycles, the journal must have replayed something.
    let Started { mut process, url, embedder, metrics } = target.start(data.path(), "fsync");
    if let Some(e) = embedder {
        wait_serving(&e, "ragd.v1.Embedder", Duration::from_secs(120)).await;
    }
    let mut client = connect(&url).await;
    if let Some(addr) = metrics {
        let r = recovery(addr).await;
        assert_eq!(r, Recovery::default(), "a clean stop left journal records to replay");
        assert!(replayed > 0.0, "{cycles} SIGKILLs mid-ingest and no start-up reported a replayed record");
        println!("journal records replayed over {cycles} restarts after SIGKILL: {replayed}");
    }
    verify(&mut client, &model, cycles + 1).await;
    process.signal("TERM");
    ragd_tests::process::assert_clean_stop(process.wait(Duration::from_secs(60)));
}

/// The indexer's start-up replay figures, read from its Prometheus listener.
#[derive(Debug, Default, PartialEq)]
struct Recovery {
    records: f64,
    points: f64,
    skipped: f64,
    failed: f64,
    torn_bytes: f64,
}

async fn recovery(addr: std::net::SocketAddr) -> Recovery {
    let body = ragd_tests::scrape(addr).await;
    let g = |name: &str| ragd_tests::metric(&body, &format!("ragd_indexer_journal_{name}"));
    Recovery {
        records: g("replayed_records"),
        points: g("replayed_points"),
        skipped: g("skipped_records"),
        failed: g("failed_records"),
        torn_bytes: g("torn_bytes"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill_of_the_indexer() {
    let embedder = RagdProcess::serve("embedder", &[], &model_env());
    wait_serving(&embedder.url(), "ragd.v1.Embedder", Duration::from_secs(120)).await;
    run(&mut Indexer { embedder }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill_of_ragd_up() {
    run(&mut Up).await;
}
