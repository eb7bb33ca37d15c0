//! The embedded store: the real Qdrant engine in-process (`qdrant-edge`). A collection is N
//! shard directories `<root>/<collection>/shard-<i>`, each an `EdgeShard` with its segments.
//! Documents are routed to a shard by a stable hash of their id, so a document's chunks live
//! together and re-upserts replace them in one shard; searches fan out to every shard in
//! parallel and merge exactly. A lock file keeps a second process out of the same data directory.
//!
//! Durability: every write goes through one writer thread, which appends it to ragd's journal
//! ([`super::journal`], group commit: the writes that queued up meanwhile share one append and
//! one `fdatasync`), then applies it to the shards, then acknowledges it. At start-up the journal
//! is replayed into the shards ([`VectorStore::open_all`]); a checkpoint (every
//! `checkpoint_bytes` of journal, in the background, and at shutdown) flushes every shard and
//! deletes the journal files it covers. Engine calls block, so they run on tokio's blocking pool or
//! the writer thread; the one exception is a search whose work is bounded and small (see
//! [`search_inline`]).

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, mpsc};
use std::time::Instant;

use qdrant_edge::Record as EdgeRecord;
use qdrant_edge::{
    CountRequest, DEFAULT_VECTOR_NAME, EdgeConfig, EdgeOptimizersConfig, EdgeShard, EdgeSparseVectorParams,
    EdgeVectorParams, Modifier, NamedQuery, Payload, PointId, PointInsertOperations, PointOperations,
    PointStructPersisted, QueryEnum, ScoredPoint, ScrollRequest, SearchParams, SearchRequest,
    UpdateOperation, VectorInternal, VectorPersisted, VectorStructInternal, VectorStructPersisted,
    WithPayloadInterface, WithVector,
};
use serde_json::Value;

use super::journal::{self, Durability, Journal, Record};
use super::merge::merge_top_k;
use super::{
    ChunkPoint, Distance, Hit, KEYWORD_VECTOR, Recovery, ScrollOut, ScrollPage, SearchOptions, ShardStats,
    SparseOf, SparseVector, StoreSpec, StoreStats, VectorStore, WriteBatch,
};
use crate::error::IndexError;
use crate::filter::{self, Selection};

/// Stable 64-bit FNV-1a, for routing documents to shards (std's hasher is randomised per process).
pub fn shard_of(doc_id: &str, shards: u32) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in doc_id.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % u64::from(shards.max(1))) as usize
}

/// Deterministic point id of a document chunk (UUID v5), so re-upserts overwrite.
pub fn point_id(doc_id: &str, chunk: u32) -> PointId {
    PointId::Uuid(super::point_uuid(doc_id, chunk))
}

/// One engine shard. `EdgeShard::flush` panics if the write-ahead log or the segment holder is
/// locked by a concurrent write or optimizer run, so writes and flushes are serialised by
/// `writes`, and flushes and optimizer runs by `maintenance`.
#[derive(Debug)]
struct Shard {
    engine: EdgeShard,
    writes: Mutex<()>,
    maintenance: Mutex<()>,
}

impl Shard {
    fn new(engine: EdgeShard) -> Self {
        Self { engine, writes: Mutex::new(()), maintenance: Mutex::new(()) }
    }

    fn update(&self, op: UpdateOperation) -> Result<(), IndexError> {
        let _guard = self.writes.lock().map_err(|_| store_err("shard write lock poisoned"))?;
        self.engine.update(op).map_err(store_err)
    }

    fn flush(&self) {
        let _maintenance = self.maintenance.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let _guard = self.writes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        self.engine.flush();
    }

    /// Builds indexes; when it changed the segments, flushes the shard, so the engine's own
    /// operation log (which numbers the operations replayed from ragd's journal) is on the disk
    /// at least as far as the versions the optimizer just persisted.
    fn optimize(&self) -> Result<bool, IndexError> {
        let _maintenance =
            self.maintenance.lock().map_err(|_| store_err("shard maintenance lock poisoned"))?;
        let changed = self.engine.optimize().map_err(store_err)?;
        if changed {
            let _guard = self.writes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            self.engine.flush();
        }
        Ok(changed)
    }
}

#[derive(Debug)]
struct Collection {
    spec: StoreSpec,
    dir: PathBuf,
    /// This life of the collection (see [`Record::incarnation`]).
    incarnation: u64,
    shards: Vec<Arc<Shard>>,
}

type Collections = Arc<RwLock<HashMap<String, Arc<Collection>>>>;

/// Settings of the embedded store.
#[derive(Debug, Clone, Copy)]
pub struct EdgeOptions {
    pub durability: Durability,
    /// Journal bytes after which a checkpoint flushes the shards and deletes the journal.
    pub checkpoint_bytes: u64,
}

impl Default for EdgeOptions {
    fn default() -> Self {
        Self { durability: Durability::default(), checkpoint_bytes: 64 << 20 }
    }
}

/// A scroll offset of the embedded store: `<shard>:<point uuid>` (that point first) or
/// `<shard>:` (the start of that shard).
fn format_offset(shard: usize, id: Option<PointId>) -> String {
    match id {
        Some(PointId::Uuid(u)) => format!("{shard}:{u}"),
        Some(PointId::NumId(n)) => format!("{shard}:#{n}"),
        None => format!("{shard}:"),
    }
}

fn parse_offset(token: &str, shards: usize) -> Result<(usize, Option<PointId>), IndexError> {
    let bad = || {
        IndexError::invalid(
            "offset",
            format!("{} is not a next_offset this collection gave", ragd_core::status::quote(token)),
        )
    };
    let (shard, id) = token.split_once(':').ok_or_else(bad)?;
    let shard: usize = shard.parse().map_err(|_| bad())?;
    if shard >= shards {
        return Err(bad());
    }
    let id = match id {
        "" => None,
        n if n.starts_with('#') => Some(PointId::NumId(n[1..].parse().map_err(|_| bad())?)),
        u => Some(PointId::Uuid(u.parse().map_err(|_| bad())?)),
    };
    Ok((shard, id))
}

/// qdrant-edge shards on local disk.
#[derive(Debug)]
pub struct EdgeStore {
    root: PathBuf,
    collections: Collections,
    /// The writer thread's queue (None once the store is being dropped).
    jobs: Option<mpsc::Sender<Job>>,
    writer: Option<std::thread::JoinHandle<()>>,
    /// Journal records read at start-up, not yet replayed (taken by `open`).
    pending: Mutex<Vec<Record>>,
    recovery: Mutex<Recovery>,
    /// Collections being swapped to a rebuilt copy (`add_keyword_vector`): UNAVAILABLE meanwhile.
    swapping: Mutex<std::collections::HashSet<String>>,
    _lock: File,
}

/// Where `add_keyword_vector` builds a collection's new storage, and where the old one waits
/// to be removed (collection names cannot start with a dot).
fn rebuild_dir(root: &Path, name: &str) -> PathBuf {
    root.join(format!(".rebuild-{name}"))
}
fn retired_dir(root: &Path, name: &str) -> PathBuf {
    root.join(format!(".retired-{name}"))
}

/// Points of one shard read in pages by the engine's scroll.
const SHARD_PAGE: usize = 1024;

/// One page of a shard's points from `offset` as chunks (payload, and the dense vector when
/// asked), and the id the next page starts at (blocking).
fn shard_page(
    shard: &Shard,
    offset: Option<PointId>,
    limit: usize,
    filter: Option<qdrant_edge::Filter>,
    with_vectors: bool,
) -> Result<(Vec<ChunkPoint>, Option<PointId>), IndexError> {
    let request = ScrollRequest {
        offset,
        limit: Some(limit),
        filter,
        with_payload: Some(WithPayloadInterface::Bool(true)),
        with_vector: if with_vectors {
            WithVector::Selector(vec![DEFAULT_VECTOR_NAME.to_string()])
        } else {
            WithVector::Bool(false)
        },
        order_by: None,
    };
    let (records, next) = shard.engine.scroll(request).map_err(store_err)?;
    let chunks = records
        .into_iter()
        .map(|r| {
            let vector = if with_vectors { dense_of(r.id, r.vector)? } else { Vec::new() };
            Ok(payload_hit(r.id, r.payload, 0.0)?.into_point(vector))
        })
        .collect::<Result<Vec<_>, IndexError>>()?;
    Ok((chunks, next))
}

/// Hands every point of a shard, with its dense vector, to `each` a page at a time (blocking).
fn for_each_page(
    shard: &Shard,
    mut each: impl FnMut(Vec<ChunkPoint>) -> Result<(), IndexError>,
) -> Result<(), IndexError> {
    let mut offset = None;
    loop {
        let (chunks, next) = shard_page(shard, offset, SHARD_PAGE, None, true)?;
        each(chunks)?;
        match next {
            Some(n) => offset = Some(n),
            None => return Ok(()),
        }
    }
}

/// Makes `n` new shards under `dir` with `config` (blocking).
fn make_shards(dir: &Path, config: &EdgeConfig, n: u32) -> Result<Vec<EdgeShard>, IndexError> {
    (0..n)
        .map(|i| {
            let path = dir.join(format!("shard-{i}"));
            std::fs::create_dir_all(&path).map_err(store_err)?;
            let shard = EdgeShard::new(&path, config.clone()).map_err(store_err)?;
            ensure_payload_indexes(&shard)?;
            shard.flush();
            Ok(shard)
        })
        .collect()
}

/// Loads the `n` shards under `dir` (blocking).
fn load_shards(dir: &Path, n: u32) -> Result<Vec<EdgeShard>, IndexError> {
    (0..n)
        .map(|i| {
            let path = dir.join(format!("shard-{i}"));
            let shard =
                EdgeShard::load(&path, None).map_err(|e| store_err(format!("{}: {e}", path.display())))?;
            ensure_payload_indexes(&shard)?;
            Ok(shard)
        })
        .collect()
}

/// The incarnation file of a collection directory.
const INCARNATION: &str = "incarnation";
/// The journal's directory under the root (collection names cannot start with a dot).
const JOURNAL_DIR: &str = ".journal";

fn store_err(e: impl std::fmt::Display) -> IndexError {
    IndexError::Store(e.to_string())
}

/// qdrant-edge's filter for `selection`, built from the engine's own types (the way Qdrant's
/// `lib/api/src/grpc/conversions.rs` converts its gRPC filter). Metadata keys go under
/// `metadata.`; an empty list is left out (`None`), never sent as an empty clause. Public for the
/// fuzz target `filter` (tests/src/fuzz.rs).
pub fn edge_filter(selection: Selection<'_>) -> Result<qdrant_edge::Filter, IndexError> {
    use ordered_float::OrderedFloat;
    use qdrant_edge::{Condition as C, FieldCondition, Filter as F, JsonPath, Match};
    // Keys were validated as dot-separated raw names (filter::Condition::new), which is exactly
    // what the engine's JSON path parser takes; the error arm is for ragd's own bugs.
    let path = |key: &str| {
        key.parse::<JsonPath>().map_err(|()| store_err(format!("filter key {key:?} is not a JSON path")))
    };
    let matches =
        |key: &str, m: Match| Ok::<_, IndexError>(C::Field(FieldCondition::new_match(path(key)?, m)));
    let range = |key: &str, r: filter::Range| {
        let r = qdrant_edge::Range {
            gt: r.gt.map(OrderedFloat),
            gte: r.gte.map(OrderedFloat),
            lt: r.lt.map(OrderedFloat),
            lte: r.lte.map(OrderedFloat),
        };
        Ok::<_, IndexError>(C::Field(FieldCondition::new_range(path(key)?, r)))
    };
    let clause = |cs: Vec<C>| (!cs.is_empty()).then_some(cs);
    let must = |cs: Vec<C>| F { must: clause(cs), ..F::default() };
    Ok(match selection {
        Selection::Documents(ids) => must(vec![matches(filter::DOC_ID, Match::from(ids.to_vec()))?]),
        Selection::Chunk(index) => must(vec![matches(filter::CHUNK, Match::from(i64::from(index)))?]),
        Selection::FirstChunks(ids) => must(vec![
            matches(filter::DOC_ID, Match::from(ids.to_vec()))?,
            matches(filter::CHUNK, Match::from(0i64))?,
        ]),
        Selection::ChunksFrom(docs) => {
            let each = docs
                .iter()
                .map(|(doc, from)| {
                    Ok(C::Filter(must(vec![
                        matches(filter::DOC_ID, Match::from(doc.clone()))?,
                        range(
                            filter::CHUNK,
                            filter::Range { gte: Some(f64::from(*from)), ..Default::default() },
                        )?,
                    ])))
                })
                .collect::<Result<Vec<_>, IndexError>>()?;
            F { should: clause(each), ..F::default() }
        }
        Selection::Metadata(f) => {
            let conditions = |cs: &[filter::Condition]| {
                cs.iter()
                    .map(|c| {
                        let key = c.payload_key();
                        match c.test() {
                            filter::Test::Match(filter::Scalar::Keyword(s)) => {
                                matches(&key, Match::from(s.clone()))
                            }
                            filter::Test::Match(filter::Scalar::Integer(i)) => matches(&key, Match::from(*i)),
                            filter::Test::Match(filter::Scalar::Bool(b)) => matches(&key, Match::from(*b)),
                            filter::Test::MatchAny(filter::AnyOf::Keywords(v)) => {
                                matches(&key, Match::from(v.clone()))
                            }
                            filter::Test::MatchAny(filter::AnyOf::Integers(v)) => {
                                matches(&key, Match::from(v.clone()))
                            }
                            filter::Test::Range(r) => range(&key, *r),
                        }
                    })
                    .collect::<Result<Vec<_>, IndexError>>()
            };
            F {
                must: clause(conditions(&f.must)?),
                should: clause(conditions(&f.should)?),
                must_not: clause(conditions(&f.must_not)?),
                min_should: None,
            }
        }
    })
}

/// Whether a search runs right on the async worker: one query, HNSW (not exact), one shard — a
/// single graph walk (≈ 0.3 ms of CPU at ef 64 on 50 000 vectors here) bounded by `hnsw_ef` (or,
/// in a segment not yet indexed, a scan bounded by the indexing threshold). Exact searches, several queries and
/// several shards scale with the data or the request and go to the blocking pool. Measured with
/// the indexer bench, A/B in alternating runs of one build (docs/benchmarks.md, "Where a search
/// runs"): moving the single-query search to the blocking pool cost 1 client 0.39–0.40× →
/// 0.19–0.29× of in-process and 8 clients 0.51–0.57× → 0.45–0.49×.
fn search_inline(shards: usize, queries: usize, exact: bool) -> bool {
    shards == 1 && queries == 1 && !exact
}

fn no_keyword_vector(collection: &str) -> IndexError {
    IndexError::failed_precondition(
        "mode",
        format!(
            "collection {collection:?} was created before keyword search existed: it has no keyword vector; re-create it with a keyword index"
        ),
    )
}

/// The points of `chunks`, one retrieve per shard that holds any of them, each converted by
/// `convert`, in the order asked; None for a chunk that does not exist. Blocking.
fn retrieve_chunks<T>(
    c: &Collection,
    chunks: &[(String, u32)],
    with_payload: bool,
    with_vector: Option<WithVector>,
    convert: impl Fn(EdgeRecord) -> Result<T, IndexError>,
) -> Result<Vec<Option<T>>, IndexError> {
    let mut per_shard: Vec<Vec<PointId>> = vec![Vec::new(); c.shards.len()];
    for (doc, chunk) in chunks {
        per_shard[shard_of(doc, c.spec.shards)].push(point_id(doc, *chunk));
    }
    let mut found: HashMap<PointId, T> = HashMap::new();
    for (shard, ids) in c.shards.iter().zip(per_shard) {
        if ids.is_empty() {
            continue;
        }
        let records = shard
            .engine
            .retrieve(&ids, Some(WithPayloadInterface::Bool(with_payload)), with_vector.clone())
            .map_err(store_err)?;
        for r in records {
            found.insert(r.id, convert(r)?);
        }
    }
    Ok(chunks.iter().map(|(doc, chunk)| found.remove(&point_id(doc, *chunk))).collect())
}

/// Runs `queries` on every shard of `c` (on this worker when `inline`, else on the blocking
/// pool) and merges each query's shard lists into its global top k.
async fn search_shards(
    c: Arc<Collection>,
    queries: Vec<QueryEnum>,
    options: &SearchOptions,
    params: SearchParams,
    inline: bool,
    higher_is_better: bool,
) -> Result<Vec<Vec<Hit>>, IndexError> {
    let filter = match &options.filter {
        Some(f) if !f.is_empty() => Some(edge_filter(Selection::Metadata(f))?),
        _ => None,
    };
    let n = queries.len();
    let per_shard = c.shards.iter().map(|shard| {
        let (shard, queries, filter) = (shard.clone(), queries.clone(), filter.clone());
        let (k, threshold) = (options.k, options.score_threshold);
        let search = move || {
            queries
                .into_iter()
                .map(|query| {
                    let request = SearchRequest {
                        query,
                        filter: filter.clone(),
                        params: Some(params),
                        limit: k,
                        offset: 0,
                        with_payload: Some(WithPayloadInterface::Bool(true)),
                        with_vector: None,
                        score_threshold: threshold,
                    };
                    shard
                        .engine
                        .search(request)
                        .map_err(store_err)
                        .and_then(|ps| ps.into_iter().map(hit).collect())
                })
                .collect::<Result<Vec<Vec<Hit>>, _>>()
        };
        async move { if inline { search() } else { blocking(search).await } }
    });
    let shard_results = futures::future::try_join_all(per_shard).await?;
    Ok((0..n)
        .map(|qi| {
            merge_top_k(shard_results.iter().map(|r| r[qi].clone()).collect(), options.k, higher_is_better)
        })
        .collect())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, IndexError> + Send + 'static,
) -> Result<T, IndexError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| IndexError::Store(format!("engine task failed: {e}")))?
}

impl EdgeStore {
    /// Opens (creating if needed) the data directory with the default options ([`Durability::Fsync`]).
    pub fn new(root: &Path) -> Result<Self, IndexError> {
        Self::with_options(root, EdgeOptions::default())
    }

    /// Opens (creating if needed) the data directory, takes its lock, reads the journal and
    /// starts the writer thread. Collections are opened by [`VectorStore::open_all`].
    pub fn with_options(root: &Path, options: EdgeOptions) -> Result<Self, IndexError> {
        std::fs::create_dir_all(root).map_err(|e| store_err(format!("{}: {e}", root.display())))?;
        let lock = File::create(root.join(".lock")).map_err(store_err)?;
        lock.try_lock().map_err(|_| {
            IndexError::StoreUnavailable(format!("{} is in use by another ragd process", root.display()))
        })?;
        let dir = root.join(JOURNAL_DIR);
        let (journal, recovered) =
            Journal::open(&dir).map_err(|e| store_err(format!("journal {}: {e}", dir.display())))?;
        if recovered.torn_bytes > 0 {
            tracing::warn!(
                bytes = recovered.torn_bytes,
                "journal: dropped a write torn by a crash (never acknowledged)"
            );
        }
        let collections = Collections::default();
        let (jobs, queue) = mpsc::channel();
        let writer = Writer {
            seq: recovered.records.iter().map(|r| r.seq).max().unwrap_or(0),
            journal,
            options,
            collections: collections.clone(),
            failed: None,
            background: None,
        };
        let writer = std::thread::Builder::new()
            .name("ragd-store-writer".into())
            .spawn(move || writer.run(&queue))
            .map_err(|e| store_err(format!("writer thread: {e}")))?;
        Ok(Self {
            root: root.to_path_buf(),
            collections,
            jobs: Some(jobs),
            writer: Some(writer),
            recovery: Mutex::new(Recovery { torn_bytes: recovered.torn_bytes, ..Default::default() }),
            pending: Mutex::new(recovered.records),
            swapping: Mutex::default(),
            _lock: lock,
        })
    }

    /// Hands a job to the writer thread and waits for its answer.
    async fn submit(&self, job: impl FnOnce(Reply) -> Job) -> Result<(), IndexError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let stopped = || IndexError::StoreUnavailable("the store's writer has stopped".into());
        self.jobs.as_ref().ok_or_else(stopped)?.send(job(reply)).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    fn get(&self, name: &str) -> Result<Arc<Collection>, IndexError> {
        if self.swapping.lock().map_err(|_| store_err("swap lock poisoned"))?.contains(name) {
            return Err(IndexError::StoreUnavailable(format!(
                "collection {name:?} is being switched to its rebuilt storage; retry"
            )));
        }
        self.collections
            .read()
            .map_err(|_| store_err("collections lock poisoned"))?
            .get(name)
            .cloned()
            .ok_or_else(|| IndexError::CollectionNotFound(name.to_string()))
    }

    fn edge_config(spec: &StoreSpec) -> EdgeConfig {
        let distance = match spec.distance {
            Distance::Cosine => qdrant_edge::Distance::Cosine,
            Distance::Dot => qdrant_edge::Distance::Dot,
            Distance::Euclid => qdrant_edge::Distance::Euclid,
        };
        let params = EdgeVectorParams {
            size: spec.dim,
            distance,
            on_disk: spec.on_disk,
            multivector_config: None,
            datatype: None,
            quantization_config: None,
            hnsw_config: hnsw_config(spec),
        };
        let mut config =
            EdgeConfig::builder().vector(DEFAULT_VECTOR_NAME, params).optimizers(EdgeOptimizersConfig {
                indexing_threshold: spec.indexing_threshold_kb,
                ..Default::default()
            });
        if spec.sparse {
            // BM25 term weights; the engine multiplies query terms by their IDF in the shard.
            let sparse = EdgeSparseVectorParams {
                on_disk: spec.on_disk,
                modifier: Some(Modifier::Idf),
                ..Default::default()
            };
            config = config.sparse_vector(KEYWORD_VECTOR, sparse);
        }
        config.build()
    }

    fn register(&self, spec: &StoreSpec, incarnation: u64, shards: Vec<EdgeShard>) -> Result<(), IndexError> {
        let collection = Collection {
            spec: spec.clone(),
            dir: self.root.join(&spec.name),
            incarnation,
            shards: shards.into_iter().map(|engine| Arc::new(Shard::new(engine))).collect(),
        };
        self.collections
            .write()
            .map_err(|_| store_err("collections lock poisoned"))?
            .insert(spec.name.clone(), Arc::new(collection));
        Ok(())
    }

    /// Replays the pending journal records of `name` (this incarnation) into its shards.
    async fn replay(&self, name: &str) -> Result<(), IndexError> {
        let c = self.get(name)?;
        let mine: Vec<Record> = {
            let mut pending = self.pending.lock().map_err(|_| store_err("journal lock poisoned"))?;
            let (mine, rest) = std::mem::take(&mut *pending)
                .into_iter()
                .partition(|r| r.collection == name && r.incarnation == c.incarnation);
            *pending = rest;
            mine
        };
        if mine.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let points: usize = mine.iter().map(|r| r.batch.upserts.len()).sum();
        let records = mine.len();
        // A record that cannot be applied now never will be: it is reported and passed over,
        // rather than keeping the indexer from starting.
        let failed = blocking(move || {
            Ok(mine
                .iter()
                .filter_map(|r| apply(&c, &r.batch, Replay::Yes).err().map(|e| (r.seq, e)))
                .inspect(|(seq, e)| tracing::error!(seq, error = %e, "journal record failed to replay"))
                .count())
        })
        .await?;
        tracing::info!(
            collection = %name, records, points, failed, ms = started.elapsed().as_millis() as u64,
            "journal replayed"
        );
        let mut recovery = self.recovery.lock().map_err(|_| store_err("journal lock poisoned"))?;
        recovery.records += records as u64;
        recovery.points += points as u64;
        recovery.failed += failed as u64;
        Ok(())
    }
}

impl Drop for EdgeStore {
    fn drop(&mut self) {
        // Closing the queue stops the writer after the jobs already queued.
        self.jobs.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// The answer to a writer job.
type Reply = tokio::sync::oneshot::Sender<Result<(), IndexError>>;

/// Work for the writer thread.
enum Job {
    /// Journal, apply, acknowledge.
    Write { collection: Arc<Collection>, batch: WriteBatch, reply: Reply },
    /// Flush every shard and delete the journal written so far (shutdown, after recovery).
    Checkpoint { reply: Reply },
}

/// Most writes journalled together.
const MAX_GROUP: usize = 256;

/// The writer thread's state: the journal, and what a checkpoint flushes.
struct Writer {
    journal: Journal,
    options: EdgeOptions,
    collections: Collections,
    seq: u64,
    /// Set when the journal could not be repaired after a failed append, or a journalled batch
    /// could not be applied to the shards (the shards may hold part of it): writes are refused
    /// and no checkpoint deletes the journal, so a restart replays the batch whole.
    failed: Option<String>,
    /// A checkpoint flushing in the background.
    background: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn run(mut self, queue: &mpsc::Receiver<Job>) {
        let mut frames = Vec::new();
        while let Ok(first) = queue.recv() {
            let mut writes = Vec::new();
            let mut checkpoints = Vec::new();
            let mut next = Some(first);
            while let Some(job) = next {
                match job {
                    Job::Write { collection, batch, reply } => writes.push((collection, batch, reply)),
                    Job::Checkpoint { reply } => checkpoints.push(reply),
                }
                next = if writes.len() < MAX_GROUP { queue.try_recv().ok() } else { None };
            }
            if !writes.is_empty() {
                match self.log(&writes, &mut frames) {
                    Ok(()) => {
                        for (collection, batch, reply) in writes {
                            let applied = apply(&collection, &batch, Replay::No);
                            // Released before the answer, so a drop of the collection that
                            // follows it does not wait for this thread.
                            drop((collection, batch));
                            if let (Err(e), Durability::Fsync | Durability::PageCache) =
                                (&applied, self.options.durability)
                            {
                                tracing::error!(error = %e, "a journalled write failed to apply; refusing writes until a restart replays it");
                                self.failed =
                                    Some(format!("a write failed to apply ({e}): restart the indexer"));
                            }
                            let _ = reply.send(applied);
                        }
                    }
                    Err(why) => {
                        for (collection, batch, reply) in writes {
                            drop((collection, batch));
                            let _ = reply.send(Err(IndexError::StoreUnavailable(why.clone())));
                        }
                    }
                }
                if self.journal.current_bytes() >= self.options.checkpoint_bytes
                    && self.background.as_ref().is_none_or(std::thread::JoinHandle::is_finished)
                    && let Err(e) = self.checkpoint(false)
                {
                    tracing::warn!(error = %e, "journal checkpoint failed; the journal keeps growing");
                }
            }
            for reply in checkpoints {
                let _ = reply.send(self.checkpoint(true));
            }
        }
        if let Some(b) = self.background.take() {
            let _ = b.join();
        }
    }

    /// Journals a group of writes as one append (and one sync at [`Durability::Fsync`]).
    fn log(
        &mut self,
        writes: &[(Arc<Collection>, WriteBatch, Reply)],
        frames: &mut Vec<u8>,
    ) -> Result<(), String> {
        if let Some(why) = &self.failed {
            return Err(why.clone());
        }
        if self.options.durability == Durability::None {
            return Ok(());
        }
        frames.clear();
        for (c, batch, _) in writes {
            self.seq += 1;
            journal::encode_batch(self.seq, c.incarnation, &c.spec.name, batch, frames);
        }
        let before = self.journal.current_bytes();
        self.journal.append(frames, self.options.durability == Durability::Fsync).map_err(|e| {
            // Cut the partial append, so no later record sits behind a torn one; if even that
            // fails, refuse writes rather than acknowledge records a restart would not find.
            if let Err(cut) = self.journal.truncate_to(before) {
                self.failed = Some(format!("journal failed ({e}, then {cut}): restart the indexer"));
            }
            format!("journal append failed: {e}")
        })
    }

    /// Starts a new journal file, flushes every shard and deletes the files before it: in the
    /// background (`wait` false: appends go on into the new file meanwhile) or before returning.
    fn checkpoint(&mut self, wait: bool) -> Result<(), IndexError> {
        if let Some(b) = self.background.take() {
            let _ = b.join();
        }
        if let Some(why) = &self.failed {
            return Err(IndexError::StoreUnavailable(format!("no checkpoint: {why}")));
        }
        let done = self.journal.rotate().map_err(|e| store_err(format!("journal rotate: {e}")))?;
        let collections: Vec<Arc<Collection>> = self
            .collections
            .read()
            .map_err(|_| store_err("collections lock poisoned"))?
            .values()
            .cloned()
            .collect();
        let dir = self.journal.dir().to_path_buf();
        let work = move || -> Result<(), IndexError> {
            let started = Instant::now();
            for c in &collections {
                for s in &c.shards {
                    s.flush();
                }
            }
            Journal::delete_upto(&dir, done)
                .map_err(|e| store_err(format!("journal {}: {e}", dir.display())))?;
            tracing::debug!(ms = started.elapsed().as_millis() as u64, "journal checkpoint");
            Ok(())
        };
        if wait {
            return work();
        }
        let spawned = std::thread::Builder::new().name("ragd-store-checkpoint".into()).spawn(move || {
            if let Err(e) = work() {
                tracing::warn!(error = %e, "journal checkpoint failed");
            }
        });
        self.background = Some(spawned.map_err(|e| store_err(format!("checkpoint thread: {e}")))?);
        Ok(())
    }
}

/// Whether a batch is applied by the journal's replay at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Replay {
    Yes,
    No,
}

/// One shard's part of a [`WriteBatch`].
#[derive(Default)]
struct ShardWrites {
    upserts: Vec<PointStructPersisted>,
    delete_chunks_from: Vec<(String, u32)>,
    delete_documents: Vec<String>,
}

impl ShardWrites {
    fn apply(self, shard: &Shard, replay: Replay) -> Result<(), IndexError> {
        if !self.upserts.is_empty() {
            let op = PointOperations::UpsertPoints(PointInsertOperations::PointsList(self.upserts));
            shard.update(UpdateOperation::PointOperation(op))?;
        }
        // A document's chunks are always 0..n, so it has chunks from `n` on exactly when chunk
        // `n` exists: one lookup by point id per document, and the filtered delete (a payload
        // index walk) only for the documents that did get shorter. A journal replay deletes by
        // filter always: what a crash left in the shards need not be contiguous.
        let shorter: Vec<(String, u32)> = match (self.delete_chunks_from.is_empty(), replay) {
            (true, _) => Vec::new(),
            (false, Replay::Yes) => self.delete_chunks_from,
            (false, Replay::No) => {
                let ids: Vec<PointId> =
                    self.delete_chunks_from.iter().map(|(doc, n)| point_id(doc, *n)).collect();
                let found = shard
                    .engine
                    .retrieve(&ids, Some(WithPayloadInterface::Bool(false)), Some(WithVector::Bool(false)))
                    .map_err(store_err)?;
                let found: std::collections::HashSet<PointId> = found.into_iter().map(|r| r.id).collect();
                self.delete_chunks_from
                    .into_iter()
                    .zip(ids)
                    .filter(|(_, id)| found.contains(id))
                    .map(|(d, _)| d)
                    .collect()
            }
        };
        if !shorter.is_empty() {
            let f = edge_filter(Selection::ChunksFrom(&shorter))?;
            shard.update(UpdateOperation::PointOperation(PointOperations::DeletePointsByFilter(f)))?;
        }
        if !self.delete_documents.is_empty() {
            let f = edge_filter(Selection::Documents(&self.delete_documents))?;
            shard.update(UpdateOperation::PointOperation(PointOperations::DeletePointsByFilter(f)))?;
        }
        Ok(())
    }
}

/// Applies a batch to a collection's shards (blocking): each shard's part in order (upserts,
/// then deletes), the shards in parallel when more than one has work.
fn apply(c: &Collection, batch: &WriteBatch, replay: Replay) -> Result<(), IndexError> {
    let mut per_shard: Vec<ShardWrites> = (0..c.shards.len()).map(|_| ShardWrites::default()).collect();
    for p in &batch.upserts {
        let vector = match &p.sparse {
            // No keyword weights (no text, or none analysed): the dense vector alone. An upsert
            // replaces a point's vectors, so an old version's weights go too.
            Some(sparse) if !sparse.indices.is_empty() => {
                let sparse = qdrant_edge::SparseVector::new(sparse.indices.clone(), sparse.values.clone())
                    .map_err(|e| {
                        store_err(format!("chunk {} of {:?}: sparse vector: {e}", p.chunk, p.doc_id))
                    })?;
                VectorStructPersisted::Named(HashMap::from([
                    (DEFAULT_VECTOR_NAME.to_string(), VectorPersisted::Dense(p.vector.clone())),
                    (KEYWORD_VECTOR.to_string(), VectorPersisted::Sparse(sparse)),
                ]))
            }
            _ => VectorStructPersisted::Single(p.vector.clone()),
        };
        per_shard[shard_of(&p.doc_id, c.spec.shards)].upserts.push(PointStructPersisted {
            id: point_id(&p.doc_id, p.chunk),
            vector,
            payload: Some(Payload(super::payload(p))),
        });
    }
    for (doc, from) in &batch.delete_chunks_from {
        per_shard[shard_of(doc, c.spec.shards)].delete_chunks_from.push((doc.clone(), *from));
    }
    for doc in &batch.delete_documents {
        per_shard[shard_of(doc, c.spec.shards)].delete_documents.push(doc.clone());
    }
    let busy: Vec<(usize, ShardWrites)> = per_shard
        .into_iter()
        .enumerate()
        .filter(|(_, w)| {
            !(w.upserts.is_empty() && w.delete_chunks_from.is_empty() && w.delete_documents.is_empty())
        })
        .collect();
    if busy.len() <= 1 {
        return busy.into_iter().try_for_each(|(i, w)| w.apply(&c.shards[i], replay));
    }
    std::thread::scope(|scope| {
        let running: Vec<_> =
            busy.into_iter().map(|(i, w)| (i, scope.spawn(move || w.apply(&c.shards[i], replay)))).collect();
        running.into_iter().try_for_each(|(i, h)| {
            h.join().unwrap_or_else(|_| Err(store_err(format!("shard {i}: write panicked"))))
        })
    })
}

/// Writes `dir/incarnation`: a number new to this life of the collection.
fn write_incarnation(dir: &Path) -> Result<u64, IndexError> {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let incarnation = ((nanos as u64) ^ (u64::from(std::process::id()) << 48)) | 1;
    let path = dir.join(INCARNATION);
    let tmp = dir.join("incarnation.tmp");
    let written = std::fs::write(&tmp, incarnation.to_string())
        .and_then(|()| File::open(&tmp)?.sync_all())
        .and_then(|()| std::fs::rename(&tmp, &path))
        .and_then(|()| journal::sync_dir(dir));
    written.map_err(|e| store_err(format!("{}: {e}", path.display())))?;
    Ok(incarnation)
}

/// Reads `dir/incarnation` (0 for a collection created before incarnations existed).
fn read_incarnation(dir: &Path) -> Result<u64, IndexError> {
    let path = dir.join(INCARNATION);
    match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().parse().map_err(|e| store_err(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(store_err(format!("{}: {e}", path.display()))),
    }
}

fn hit(p: ScoredPoint) -> Result<Hit, IndexError> {
    payload_hit(p.id, p.payload, p.score)
}

/// The dense vector of a stored point (alone, or the unnamed one next to its sparse vector).
fn dense_of(id: PointId, v: Option<VectorStructInternal>) -> Result<Vec<f32>, IndexError> {
    match v {
        Some(VectorStructInternal::Single(v)) => Ok(v),
        Some(VectorStructInternal::Named(mut named)) => match named.remove(DEFAULT_VECTOR_NAME) {
            Some(VectorInternal::Dense(v)) => Ok(v),
            _ => Err(store_err(format!("point {id} has no dense vector"))),
        },
        _ => Err(store_err(format!("point {id} has no dense vector"))),
    }
}

/// A stored point's payload as a hit. Every point ragd writes has a string `doc_id`, an integer
/// `chunk` and a string `text`; a point without them (written by something else, or corrupted) is
/// a store error naming the point, never a hit for document "" chunk 0.
fn payload_hit(id: PointId, payload: Option<Payload>, score: f32) -> Result<Hit, IndexError> {
    let mut payload = payload.map(|p| p.0).unwrap_or_default();
    let malformed = |what: &str| store_err(format!("point {id}: malformed payload ({what})"));
    let text = |v: Option<Value>, what: &str| match v {
        Some(Value::String(s)) => Ok(s),
        _ => Err(malformed(what)),
    };
    let doc_id = text(payload.remove(filter::DOC_ID), "doc_id is not a string")?;
    let chunk = payload
        .remove(filter::CHUNK)
        .and_then(|v| v.as_u64())
        .and_then(|c| u32::try_from(c).ok())
        .ok_or_else(|| malformed("chunk is not a 32-bit unsigned integer"))?;
    let text = text(payload.remove("text"), "text is not a string")?;
    let metadata = match payload.remove(filter::METADATA) {
        Some(Value::Object(m)) => m,
        None | Some(Value::Null) => Default::default(),
        Some(_) => return Err(malformed("metadata is not an object")),
    };
    Ok(Hit { doc_id, chunk, text, score, metadata, sources: Vec::new() })
}

/// Payload indexes on `doc_id` (keyword) and `chunk` (integer), which every delete, count and
/// status filter uses; without them each filtered delete scans the shard.
fn ensure_payload_indexes(shard: &EdgeShard) -> Result<(), IndexError> {
    let have: Vec<String> = shard.info().payload_schema.keys().map(|k| k.to_string()).collect();
    use qdrant_edge::{PayloadFieldSchema, PayloadSchemaType};
    for (field, kind) in
        [(filter::DOC_ID, PayloadSchemaType::Keyword), (filter::CHUNK, PayloadSchemaType::Integer)]
    {
        if have.iter().any(|h| h == field) {
            continue;
        }
        let index = qdrant_edge::CreateIndex {
            field_name: field
                .parse()
                .map_err(|()| store_err(format!("payload key {field} is not a JSON path")))?,
            field_schema: Some(PayloadFieldSchema::FieldType(kind)),
        };
        let op = qdrant_edge::FieldIndexOperations::CreateIndex(index);
        shard.update(UpdateOperation::FieldIndexOperation(op)).map_err(store_err)?;
    }
    Ok(())
}

/// Real disk usage (allocated blocks: the WAL preallocates sparse 32 MiB segments).
fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    crate::snapshot::sum_files(dir, &|m| m.blocks() * 512)
}

#[tonic::async_trait]
impl VectorStore for EdgeStore {
    async fn create(&self, spec: &StoreSpec) -> Result<(), IndexError> {
        if self.get(&spec.name).is_ok() {
            return Err(IndexError::CollectionExists(spec.name.clone()));
        }
        for (field, value) in [
            ("replication_factor", spec.replication_factor),
            ("write_consistency_factor", spec.write_consistency_factor),
        ] {
            if value.is_some_and(|v| v > 1) {
                return Err(IndexError::invalid(
                    field,
                    "the embedded store keeps one copy of each shard; replicas need a Qdrant cluster (--store qdrant)",
                ));
            }
        }
        let dir = self.root.join(&spec.name);
        let root = self.root.clone();
        let config = Self::edge_config(spec);
        let n = spec.shards;
        let (incarnation, shards) = blocking(move || {
            // A directory the registry does not know is left by a crash during a create or a
            // drop (the registry is written after the one and before the other).
            if dir.exists() {
                std::fs::remove_dir_all(&dir).map_err(|e| store_err(format!("{}: {e}", dir.display())))?;
            }
            let shards = make_shards(&dir, &config, n)?;
            let incarnation = write_incarnation(&dir)?;
            journal::sync_dir(&root).map_err(|e| store_err(format!("{}: {e}", root.display())))?;
            Ok((incarnation, shards))
        })
        .await?;
        self.register(spec, incarnation, shards)
    }

    async fn open(&self, spec: &StoreSpec) -> Result<(), IndexError> {
        let dir = self.root.join(&spec.name);
        let retired = retired_dir(&self.root, &spec.name);
        let n = spec.shards;
        let (incarnation, shards) = blocking(move || {
            // A crash between a rebuild's two renames: the old storage goes back.
            if !dir.exists() && retired.exists() {
                tracing::warn!(dir = %dir.display(), "restoring a collection's storage from an interrupted rebuild");
                std::fs::rename(&retired, &dir).map_err(|e| store_err(format!("{}: {e}", retired.display())))?;
            }
            let incarnation = read_incarnation(&dir)?;
            Ok((incarnation, load_shards(&dir, n)?))
        })
        .await?;
        self.register(spec, incarnation, shards)?;
        self.replay(&spec.name).await
    }

    /// Opens every collection and replays the journal into it; drops the records of collections
    /// that no longer exist and the directories the registry does not know (left by a crash
    /// during a create or a drop); then a checkpoint makes the replayed writes part of the
    /// shards and empties the journal.
    async fn open_all(&self, specs: &[StoreSpec]) -> Result<Recovery, IndexError> {
        for spec in specs {
            self.open(spec).await?;
        }
        let skipped =
            std::mem::take(&mut *self.pending.lock().map_err(|_| store_err("journal lock poisoned"))?);
        let known: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
        let root = self.root.clone();
        blocking(move || {
            for entry in std::fs::read_dir(&root).map_err(store_err)?.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if entry.path().is_dir() && !name.starts_with('.') && !known.contains(&name) {
                    tracing::warn!(dir = %entry.path().display(), "removing a collection directory the registry does not know");
                    std::fs::remove_dir_all(entry.path()).map_err(store_err)?;
                }
                // What an interrupted rebuild left: its half-built copy, or the old storage
                // once the new one is in place.
                if entry.path().is_dir() && (name.starts_with(".rebuild-") || name.starts_with(".retired-")) {
                    tracing::warn!(dir = %entry.path().display(), "removing what an interrupted rebuild left");
                    std::fs::remove_dir_all(entry.path()).map_err(store_err)?;
                }
            }
            Ok(())
        })
        .await?;
        self.submit(|reply| Job::Checkpoint { reply }).await?;
        let mut recovery = *self.recovery.lock().map_err(|_| store_err("journal lock poisoned"))?;
        recovery.skipped = skipped.len() as u64;
        if recovery != Recovery::default() {
            tracing::info!(
                records = recovery.records,
                points = recovery.points,
                skipped = recovery.skipped,
                failed = recovery.failed,
                torn_bytes = recovery.torn_bytes,
                "recovered from the journal"
            );
        }
        Ok(recovery)
    }

    /// Each shard is flushed and its directory copied while its write and maintenance locks are
    /// held (no write, flush or optimizer run changes its files meanwhile); the caller's write
    /// gate keeps the collection's writes out between shards, so all shards are of one moment.
    async fn snapshot(&self, collection: &str, dir: &Path) -> Result<(), IndexError> {
        let c = self.get(collection)?;
        let dir = dir.to_path_buf();
        blocking(move || {
            for (i, shard) in c.shards.iter().enumerate() {
                let _maintenance =
                    shard.maintenance.lock().map_err(|_| store_err("shard maintenance lock poisoned"))?;
                let _writes = shard.writes.lock().map_err(|_| store_err("shard write lock poisoned"))?;
                shard.engine.flush();
                let (from, to) = (c.dir.join(format!("shard-{i}")), dir.join(format!("shard-{i}")));
                crate::snapshot::copy_tree(&from, &to)
                    .map_err(|e| store_err(format!("copying {} to {}: {e}", from.display(), to.display())))?;
            }
            Ok(())
        })
        .await
    }

    /// The snapshot's shards are copied into the new collection's directory, which gets a new
    /// incarnation (the journal holds nothing of it); like a create, a crash before the registry
    /// knows the name leaves a directory the next start removes.
    async fn restore(&self, spec: &StoreSpec, from: &Path) -> Result<(), IndexError> {
        if self.get(&spec.name).is_ok() {
            return Err(IndexError::CollectionExists(spec.name.clone()));
        }
        let (dir, root, from, n) =
            (self.root.join(&spec.name), self.root.clone(), from.to_path_buf(), spec.shards);
        let (incarnation, shards) = blocking(move || {
            if let Some(i) = (0..n).find(|i| !from.join(format!("shard-{i}")).is_dir()) {
                return Err(IndexError::failed_precondition(
                    "snapshot",
                    format!("the snapshot has no shard-{i} of its {n} shards"),
                ));
            }
            if dir.exists() {
                std::fs::remove_dir_all(&dir).map_err(|e| store_err(format!("{}: {e}", dir.display())))?;
            }
            std::fs::create_dir(&dir).map_err(|e| store_err(format!("{}: {e}", dir.display())))?;
            for i in 0..n {
                let (src, dst) = (from.join(format!("shard-{i}")), dir.join(format!("shard-{i}")));
                crate::snapshot::copy_tree(&src, &dst)
                    .map_err(|e| store_err(format!("copying {} to {}: {e}", src.display(), dst.display())))?;
            }
            crate::snapshot::sync_tree(&dir).map_err(|e| store_err(format!("{}: {e}", dir.display())))?;
            let shards = load_shards(&dir, n)?;
            let incarnation = write_incarnation(&dir)?;
            journal::sync_dir(&root).map_err(|e| store_err(format!("{}: {e}", root.display())))?;
            Ok((incarnation, shards))
        })
        .await?;
        self.register(spec, incarnation, shards)
    }

    async fn drop_collection(&self, name: &str) -> Result<(), IndexError> {
        let removed = self
            .collections
            .write()
            .map_err(|_| store_err("collections lock poisoned"))?
            .remove(name)
            .ok_or_else(|| IndexError::CollectionNotFound(name.to_string()))?;
        let (dir, root) = (removed.dir.clone(), self.root.clone());
        blocking(move || {
            // Work in flight (a search, a queued write, an optimizer run, a checkpoint) holds
            // the collection, and the last holder's drop flushes its shards (qdrant-edge does,
            // and panics if the directory is gone): wait to be the last, then remove the files.
            let mut removed = removed;
            while let Err(shared) = Arc::try_unwrap(removed) {
                removed = shared;
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            std::fs::remove_dir_all(&dir).map_err(store_err)?;
            journal::sync_dir(&root).map_err(store_err)
        })
        .await
    }

    async fn write(&self, collection: &str, batch: WriteBatch) -> Result<(), IndexError> {
        let c = self.get(collection)?;
        super::check_vectors(&batch.upserts, c.spec.dim)?;
        if batch == WriteBatch::default() {
            return Ok(());
        }
        self.submit(|reply| Job::Write { collection: c, batch, reply }).await
    }

    async fn upsert(&self, collection: &str, points: &[ChunkPoint]) -> Result<(), IndexError> {
        self.write(collection, WriteBatch { upserts: points.to_vec(), ..Default::default() }).await
    }

    async fn delete_chunks_from(&self, collection: &str, docs: &[(String, u32)]) -> Result<(), IndexError> {
        self.write(collection, WriteBatch { delete_chunks_from: docs.to_vec(), ..Default::default() }).await
    }

    async fn delete_documents(&self, collection: &str, doc_ids: &[String]) -> Result<(), IndexError> {
        self.write(collection, WriteBatch { delete_documents: doc_ids.to_vec(), ..Default::default() }).await
    }

    async fn search(
        &self,
        collection: &str,
        queries: &[Vec<f32>],
        options: &SearchOptions,
    ) -> Result<Vec<Vec<Hit>>, IndexError> {
        let c = self.get(collection)?;
        super::check_queries(queries, c.spec.dim)?;
        let params = SearchParams { hnsw_ef: options.hnsw_ef, exact: options.exact, ..Default::default() };
        let inline = search_inline(c.shards.len(), queries.len(), options.exact);
        let queries =
            queries.iter().map(|q| QueryEnum::Nearest(NamedQuery::default_dense(q.clone()))).collect();
        let higher = c.spec.distance.higher_is_better();
        search_shards(c, queries, options, params, inline, higher).await
    }

    async fn search_keyword(
        &self,
        collection: &str,
        queries: &[SparseVector],
        options: &SearchOptions,
    ) -> Result<Vec<Vec<Hit>>, IndexError> {
        let c = self.get(collection)?;
        if !c.spec.sparse {
            return Err(no_keyword_vector(collection));
        }
        let queries = queries
            .iter()
            .map(|q| {
                let v = qdrant_edge::SparseVector::new(q.indices.clone(), q.values.clone())
                    .map_err(|e| IndexError::invalid("queries", format!("sparse query: {e}")))?;
                Ok(QueryEnum::Nearest(NamedQuery::new(VectorInternal::Sparse(v), KEYWORD_VECTOR)))
            })
            .collect::<Result<Vec<_>, IndexError>>()?;
        // An inverted-index walk scales with the posting lists: off the async workers.
        search_shards(c, queries, options, SearchParams::default(), false, true).await
    }

    async fn vectors(
        &self,
        collection: &str,
        chunks: &[(String, u32)],
    ) -> Result<Vec<Option<Vec<f32>>>, IndexError> {
        let c = self.get(collection)?;
        let chunks = chunks.to_vec();
        blocking(move || {
            let dense = WithVector::Selector(vec![DEFAULT_VECTOR_NAME.to_string()]);
            retrieve_chunks(&c, &chunks, false, Some(dense), |r| dense_of(r.id, r.vector))
        })
        .await
    }

    async fn count_chunks(&self, collection: &str, doc_id: &str) -> Result<u64, IndexError> {
        let c = self.get(collection)?;
        let shard = c.shards[shard_of(doc_id, c.spec.shards)].clone();
        let filter = edge_filter(Selection::Documents(&[doc_id.to_string()]))?;
        blocking(move || {
            shard
                .engine
                .count(CountRequest { filter: Some(filter), exact: true })
                .map(|n| n as u64)
                .map_err(store_err)
        })
        .await
    }

    async fn count_documents(&self, collection: &str, doc_ids: &[String]) -> Result<u64, IndexError> {
        let c = self.get(collection)?;
        let mut ids = doc_ids.to_vec();
        ids.sort_unstable();
        ids.dedup();
        // Each document lives in one shard: one count per shard over that shard's ids.
        let mut per_shard: Vec<Vec<String>> = vec![Vec::new(); c.shards.len()];
        for id in ids {
            per_shard[shard_of(&id, c.spec.shards)].push(id);
        }
        blocking(move || {
            c.shards
                .iter()
                .zip(per_shard)
                .filter(|(_, ids)| !ids.is_empty())
                .map(|(shard, ids)| {
                    let filter = edge_filter(Selection::FirstChunks(&ids))?;
                    let request = CountRequest { filter: Some(filter), exact: true };
                    shard.engine.count(request).map(|n| n as u64).map_err(store_err)
                })
                .sum()
        })
        .await
    }

    async fn stats(&self, collection: &str) -> Result<StoreStats, IndexError> {
        let c = self.get(collection)?;
        let first_chunks = edge_filter(Selection::Chunk(0))?;
        blocking(move || {
            let mut stats = StoreStats { disk_bytes: disk_usage(&c.dir), ..Default::default() };
            for (i, shard) in c.shards.iter().enumerate() {
                let info = shard.engine.info();
                let documents = shard
                    .engine
                    .count(CountRequest { filter: Some(first_chunks.clone()), exact: true })
                    .map_err(store_err)? as u64;
                let points =
                    shard.engine.count(CountRequest { filter: None, exact: true }).map_err(store_err)? as u64;
                stats.points += points;
                stats.documents += documents;
                stats.indexed_vectors += info.indexed_vectors_count as u64;
                stats.segments += info.segments_count as u64;
                stats.shards.push(ShardStats {
                    id: i as u32,
                    points,
                    indexed_vectors: info.indexed_vectors_count as u64,
                    segments: info.segments_count as u64,
                });
            }
            Ok(stats)
        })
        .await
    }

    async fn optimize(&self, collection: &str) -> Result<bool, IndexError> {
        let c = self.get(collection)?;
        blocking(move || {
            let mut changed = false;
            for shard in &c.shards {
                changed |= shard.optimize()?;
            }
            Ok(changed)
        })
        .await
    }

    async fn scan(&self, collection: &str) -> Result<Vec<ChunkPoint>, IndexError> {
        let c = self.get(collection)?;
        blocking(move || {
            let mut out = Vec::new();
            for shard in &c.shards {
                for_each_page(shard, |chunks| {
                    // Text and metadata are not kept: the exact engine needs ids and vectors.
                    out.extend(chunks.into_iter().map(|p| ChunkPoint {
                        text: String::new(),
                        metadata: Default::default(),
                        ..p
                    }));
                    Ok(())
                })?;
            }
            Ok(out)
        })
        .await
    }

    async fn add_keyword_vector(
        &self,
        spec: &StoreSpec,
        sparse_of: SparseOf,
    ) -> Result<(StoreSpec, u64), IndexError> {
        let old = self.get(&spec.name)?;
        let new_spec = StoreSpec { sparse: true, ..old.spec.clone() };
        let (root, name) = (self.root.clone(), spec.name.clone());
        let building = rebuild_dir(&root, &name);
        let config = Self::edge_config(&new_spec);
        // 1. A copy with the keyword vector, built next to the collection while it serves.
        let copy_spec = new_spec.clone();
        let copied = blocking(move || {
            if building.exists() {
                std::fs::remove_dir_all(&building).map_err(store_err)?;
            }
            let shards = make_shards(&building, &config, copy_spec.shards)?;
            let copy = Collection {
                spec: copy_spec,
                dir: building.clone(),
                incarnation: write_incarnation(&building)?,
                shards: shards.into_iter().map(|engine| Arc::new(Shard::new(engine))).collect(),
            };
            let mut copied = 0u64;
            for shard in &old.shards {
                for_each_page(shard, |mut upserts| {
                    for p in &mut upserts {
                        p.sparse = Some(sparse_of(&p.text));
                    }
                    copied += upserts.len() as u64;
                    apply(&copy, &WriteBatch { upserts, ..Default::default() }, Replay::No)
                })?;
            }
            copy.shards.iter().for_each(|s| s.flush());
            drop(copy);
            journal::sync_dir(&root).map_err(store_err)?;
            Ok(copied)
        })
        .await?;
        // 2. The swap: the old collection leaves the map (requests meanwhile: UNAVAILABLE), is
        // closed once its last user is done, and the copy takes its directory.
        self.swapping.lock().map_err(|_| store_err("swap lock poisoned"))?.insert(name.clone());
        let swapped = async {
            let removed = self
                .collections
                .write()
                .map_err(|_| store_err("collections lock poisoned"))?
                .remove(&name)
                .ok_or_else(|| IndexError::CollectionNotFound(name.clone()))?;
            let (root, swapped_name) = (self.root.clone(), name.clone());
            blocking(move || {
                // Wait to be the last user; dropping it flushes and closes its shards (which
                // must still be where they were opened).
                let mut removed = removed;
                let last = loop {
                    match Arc::try_unwrap(removed) {
                        Ok(last) => break last,
                        Err(shared) => {
                            removed = shared;
                            std::thread::sleep(std::time::Duration::from_millis(2));
                        }
                    }
                };
                drop(last);
                let name = swapped_name;
                let (dir, retired) = (root.join(&name), retired_dir(&root, &name));
                std::fs::rename(&dir, &retired).map_err(|e| store_err(format!("{}: {e}", dir.display())))?;
                std::fs::rename(rebuild_dir(&root, &name), &dir)
                    .map_err(|e| store_err(format!("{}: {e}", dir.display())))?;
                journal::sync_dir(&root).map_err(store_err)
            })
            .await?;
            let dir = self.root.join(&name);
            let n = new_spec.shards;
            let (incarnation, shards) = blocking(move || {
                let shards = (0..n)
                    .map(|i| {
                        let path = dir.join(format!("shard-{i}"));
                        EdgeShard::load(&path, None)
                            .map_err(|e| store_err(format!("{}: {e}", path.display())))
                    })
                    .collect::<Result<Vec<_>, IndexError>>()?;
                Ok((read_incarnation(&dir)?, shards))
            })
            .await?;
            self.register(&new_spec, incarnation, shards)
        }
        .await;
        self.swapping.lock().map_err(|_| store_err("swap lock poisoned"))?.remove(&name);
        swapped?;
        let retired = retired_dir(&self.root, &name);
        blocking(move || std::fs::remove_dir_all(&retired).map_err(store_err)).await?;
        tracing::info!(collection = %name, chunks = copied, "storage rebuilt with the keyword vector");
        Ok((new_spec, copied))
    }

    async fn scroll(&self, collection: &str, page: &ScrollPage) -> Result<ScrollOut, IndexError> {
        let c = self.get(collection)?;
        let filter = match &page.filter {
            Some(f) if !f.is_empty() => Some(edge_filter(Selection::Metadata(f))?),
            _ => None,
        };
        let (mut shard, mut from) = match &page.offset {
            None => (0, None),
            Some(token) => parse_offset(token, c.shards.len())?,
        };
        let (limit, with_vectors) = (page.limit, page.with_vectors);
        blocking(move || {
            let mut chunks = Vec::new();
            while shard < c.shards.len() {
                let want = limit - chunks.len();
                let (page, next) =
                    shard_page(&c.shards[shard], from.take(), want, filter.clone(), with_vectors)?;
                chunks.extend(page);
                if let Some(id) = next {
                    // The page is full and this shard has more.
                    return Ok(ScrollOut { chunks, next: Some(format_offset(shard, Some(id))) });
                }
                shard += 1;
                if chunks.len() == limit {
                    let next = (shard < c.shards.len()).then(|| format_offset(shard, None));
                    return Ok(ScrollOut { chunks, next });
                }
            }
            Ok(ScrollOut { chunks, next: None })
        })
        .await
    }

    async fn retrieve(
        &self,
        collection: &str,
        chunks: &[(String, u32)],
    ) -> Result<Vec<Option<Hit>>, IndexError> {
        let c = self.get(collection)?;
        let chunks = chunks.to_vec();
        blocking(move || retrieve_chunks(&c, &chunks, true, None, |r| payload_hit(r.id, r.payload, 0.0)))
            .await
    }

    /// A checkpoint: every shard flushed, the journal emptied.
    async fn flush(&self) -> Result<(), IndexError> {
        self.submit(|reply| Job::Checkpoint { reply }).await
    }
}

/// Qdrant's HNSW defaults, except that a set indexing threshold is also the full-scan threshold:
/// Qdrant full-scans any segment under `full_scan_threshold` (10 MB of vectors by default, ≈ 6,700
/// MiniLM vectors) even when its index is built, so a smaller `--indexing-threshold-kb` alone
/// would build indexes that searches never use.
fn hnsw_config(spec: &StoreSpec) -> Option<qdrant_edge::HnswIndexConfig> {
    spec.indexing_threshold_kb
        .map(|kb| qdrant_edge::HnswIndexConfig { full_scan_threshold: kb, ..Default::default() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(doc: &str, chunk: u32) -> ChunkPoint {
        ChunkPoint {
            doc_id: doc.into(),
            chunk,
            text: format!("{doc} {chunk}"),
            metadata: Default::default(),
            vector: vec![1.0, chunk as f32],
            sparse: None,
        }
    }

    /// The by-id shortcut of the stale-chunk delete assumes a document's chunks are 0..n. A crash
    /// can leave a gap (a delete by filter half applied); the journal's replay must then still
    /// remove every chunk from n on, which it does by filter. The same batch applied live (the
    /// shortcut) leaves the chunks after the gap: the test tells the two paths apart.
    #[tokio::test]
    async fn journal_replay_removes_stale_chunks_behind_a_gap() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EdgeStore::new(dir.path()).expect("store");
        for name in ["replayed", "live"] {
            let spec = StoreSpec {
                name: name.into(),
                dim: 2,
                distance: Distance::Dot,
                shards: 1,
                indexing_threshold_kb: None,
                replication_factor: None,
                write_consistency_factor: None,
                on_disk: None,
                sparse: false,
            };
            store.create(&spec).await.expect("create");
            let five: Vec<ChunkPoint> = (0..5).map(|n| point("d", n)).collect();
            store.upsert(name, &five).await.expect("upsert");
            let c = store.get(name).expect("collection");
            // The gap: chunk 1 gone, chunks 2..5 left.
            let gap = PointOperations::DeletePoints { ids: vec![point_id("d", 1)] };
            c.shards[0].update(UpdateOperation::PointOperation(gap)).expect("delete chunk 1");
            assert_eq!(store.count_chunks(name, "d").await.expect("count"), 4);

            // The document re-upserted with one chunk: chunks from 1 on are stale.
            let batch = WriteBatch {
                upserts: vec![point("d", 0)],
                delete_chunks_from: vec![("d".into(), 1)],
                delete_documents: Vec::new(),
            };
            let replay = if name == "replayed" { Replay::Yes } else { Replay::No };
            apply(&c, &batch, replay).expect("apply");
            let left = store.count_chunks(name, "d").await.expect("count");
            assert_eq!(left, if replay == Replay::Yes { 1 } else { 4 }, "{name}");
        }
    }
}
