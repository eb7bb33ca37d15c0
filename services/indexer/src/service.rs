//! The indexer domain: collections (registry + store), the ingest pipeline (validate → chunk →
//! embed through the embedder → store) with per-document status, and search (embed the query
//! text or take a vector → store search). gRPC handlers are thin wrappers around [`Indexer`].

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ragd_core::admission::{self, Throughput};
use serde_json::{Map, Value};
use tracing::Instrument;

use crate::chunk::{self, Chunking};
use crate::collections::{CollectionMeta, ExactStorage, Registry, validate_name};
use crate::config::ExactPrecision;
use crate::error::IndexError;
use crate::exact::{ExactFootprint, ExactMirrors, ExactSettings};
use crate::filter::Filter;
use crate::fusion::{self, Fusion};
use crate::keyword::{Analyzer, KeywordConfig, KeywordRequest};
use crate::peers::{EmbedderApi, InputKind};
use crate::rerank::Reranker;
use crate::snapshot::{self, Manifest, Snapshots};
use crate::store::{
    ChunkPoint, Distance, Hit, Recovery, ScrollOut, ScrollPage, SearchOptions, Source, SourceRank,
    SparseVector, StoreSpec, StoreStats, VectorStore, WriteBatch, rewrite_keyword_weights,
    with_keyword_weights,
};

/// Chunks read per store call by GetDocument.
const GET_DOCUMENT_PAGE: usize = 1024;
/// Texts per Embed call while ingesting (the embedder splits and batches them further).
const EMBED_CHUNK_TEXTS: usize = 256;
/// How long passages refused by an overloaded embedder are retried when the caller set no
/// deadline.
const BULK_RETRY_FOR: Duration = Duration::from_secs(60);

/// A document to ingest.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DocumentIn {
    pub id: String,
    pub text: String,
    pub metadata: Map<String, Value>,
    /// The document's own vector: stored as its one chunk, neither chunked nor embedded.
    pub vector: Option<Vec<f32>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngestState {
    Accepted,
    Embedded,
    Stored,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocStatus {
    pub state: IngestState,
    pub reason: String,
    pub chunks: u32,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct UpsertOutcome {
    pub documents: u32,
    pub chunks: u32,
    pub failed: Vec<(String, String)>,
}

/// A query: text (embedded with the collection's model) or a raw vector.
#[derive(Debug, Clone, PartialEq)]
pub enum QueryIn {
    Text(String),
    Vector(Vec<f32>),
}

#[derive(Debug, Clone)]
pub struct CreateCollection {
    pub name: String,
    pub model: String,
    pub distance: Distance,
    pub shards: u32,
    pub chunking: Chunking,
    pub replication_factor: Option<u32>,
    pub write_consistency_factor: Option<u32>,
    pub on_disk: Option<bool>,
    /// A keyword (BM25) index, with the settings asked for.
    pub keyword: Option<KeywordRequest>,
    /// Index only each document's first this many chunks (None: all).
    pub max_chunks: Option<u32>,
    /// The resident exact engine's storage (None: the server's defaults).
    pub exact: Option<ExactRequest>,
    /// Vectors brought by the user: no embedding model, this dimension (`model` must be empty).
    pub dim: Option<usize>,
}

/// Largest dimension of a collection of vectors brought by the user (Qdrant's limit).
pub const MAX_DIM: usize = 65_536;

/// CreateCollection's `exact`: what was given of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExactRequest {
    /// None: the server's `--exact-precision`.
    pub precision: Option<ExactPrecision>,
    /// Oversampling of f32 rescoring (0: none).
    pub rescore: u32,
}

/// Largest rescoring oversample: k × this candidates are re-ranked per query.
pub const MAX_RESCORE: u32 = 64;

/// Which lists a search ranks by.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SearchMode {
    /// The nearest vectors.
    #[default]
    Dense,
    /// BM25 over the keyword index.
    Keyword,
    /// Both, fused.
    Hybrid,
}

/// Maximal marginal relevance settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Mmr {
    /// λ in [0, 1]; 0 = plain top k.
    pub diversity: f32,
    /// Candidates to pick from (at least k); None = max(4k, 20), capped at the largest k.
    pub candidates: Option<usize>,
}

/// Second-stage reranking settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rerank {
    /// Candidates the reranker scores (at least k); None = max(4k, 20), capped at the largest k.
    pub candidates: Option<usize>,
}

/// How a search retrieves, beyond the store's options.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Retrieval {
    pub mode: SearchMode,
    pub fusion: Fusion,
    /// Hits taken from each list before a hybrid fusion; None = max(4k, 50) (at least the
    /// candidates MMR needs), capped at the largest k.
    pub prefetch: Option<usize>,
    pub mmr: Option<Mmr>,
    /// Rerank the candidates with the indexer's reranker before MMR and the cut to k.
    pub rerank: Option<Rerank>,
}

/// Where a search's time went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SearchTimings {
    /// Embedding the text queries (zero for vector queries).
    pub embed: Duration,
    /// The store's (or exact engine's) search.
    pub search: Duration,
}

/// Chunks in a Scroll page that asks for 0, and the most one may ask for.
pub const SCROLL_DEFAULT: usize = 100;
pub const SCROLL_MAX: usize = 10_000;

#[derive(Debug, Clone)]
pub struct IndexerLimits {
    pub max_k: usize,
    pub max_queries: usize,
    pub max_documents_per_request: usize,
    pub max_shards: u32,
    pub indexing_threshold_kb: Option<usize>,
    /// Document statuses remembered for DocumentStatus (oldest forgotten first).
    pub status_capacity: usize,
    /// The expected-wait bound of searches (None: off); see
    /// `ragd_core::admission`.
    pub max_queue_wait: Option<Duration>,
}

/// Recent ingest states, bounded; older documents are answered from the store.
#[derive(Debug, Default)]
struct Statuses {
    map: HashMap<(String, String), DocStatus>,
    order: VecDeque<(String, String)>,
}

impl Statuses {
    fn set(&mut self, capacity: usize, key: (String, String), status: DocStatus) {
        if self.map.insert(key.clone(), status).is_none() {
            self.order.push_back(key);
            while self.order.len() > capacity {
                if let Some(old) = self.order.pop_front() {
                    self.map.remove(&old);
                }
            }
        }
    }
}

/// Collections, ingest and search over a [`VectorStore`] and a remote embedder.
#[derive(Debug)]
pub struct Indexer {
    store: Arc<dyn VectorStore>,
    registry: Registry,
    embedder: Arc<dyn EmbedderApi>,
    limits: IndexerLimits,
    statuses: Mutex<Statuses>,
    /// The resident exact engine (None: exact searches go to the store).
    exact: Option<Arc<ExactMirrors>>,
    recovery: Recovery,
    /// The second stage of `rerank` searches (None: they fail with FAILED_PRECONDITION).
    reranker: Option<Arc<dyn Reranker>>,
    /// Each collection's write gate: upserts and deletes hold it shared, a keyword re-index
    /// alone (so no write lands between its read of a chunk and its rewrite).
    gates: Mutex<HashMap<String, Arc<tokio::sync::RwLock<()>>>>,
    /// Queries being searched and the rate they complete at: searches share the cores, so their
    /// admission divides the queries in flight by the measured throughput.
    searches: Throughput,
    /// Snapshots of collections, under `<data>/snapshots`.
    snapshots: Snapshots,
    /// Names of collections being created or restored (a second call for one is ALREADY_EXISTS
    /// at once instead of racing it for the storage directory).
    creating: Mutex<HashSet<String>>,
}

/// Holds a name in [`Indexer::creating`] until dropped.
struct Creating<'a> {
    names: &'a Mutex<HashSet<String>>,
    name: String,
}

impl Drop for Creating<'_> {
    fn drop(&mut self) {
        self.names.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&self.name);
    }
}

/// A collection of vectors brought by the user: no model named, a dimension in range, no token
/// windows (they need a model's tokenizer).
fn check_vectors_only(req: &CreateCollection, dim: usize) -> Result<(), IndexError> {
    if !req.model.is_empty() {
        return Err(IndexError::invalid(
            "dim",
            format!(
                "a collection of vectors brought by the user has no model, but model {} was named",
                ragd_core::status::quote(&req.model)
            ),
        ));
    }
    if !(1..=MAX_DIM).contains(&dim) {
        return Err(IndexError::invalid("dim", format!("{dim} is not in 1..={MAX_DIM}")));
    }
    if matches!(req.chunking, Chunking::Tokens { .. }) {
        return Err(IndexError::invalid(
            "chunking",
            "token windows need an embedding model's tokenizer; a collection of vectors has none",
        ));
    }
    Ok(())
}

/// Why a document's vector cannot be stored in `meta`'s collection (None: it can). `f16_max`:
/// the largest magnitude the collection's exact engine stores (f16 rows of a dot or euclid
/// collection; cosine rows are normalised first).
fn vector_problem(meta: &CollectionMeta, d: &DocumentIn, f16_max: Option<f32>) -> Option<String> {
    let dim = meta.store.dim;
    match &d.vector {
        None if meta.model.is_empty() => Some(format!(
            "carries no vector, and collection {:?} has no embedding model (its documents bring vectors)",
            meta.store.name
        )),
        None => None,
        Some(v) if v.len() != dim => {
            Some(format!("vector has dimension {}, the collection's is {dim}", v.len()))
        }
        Some(v) => {
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                return Some(format!("vector value {i} is {}; values must be finite", v[i]));
            }
            if let Some(i) = f16_max.and_then(|max| v.iter().position(|x| x.abs() > max)) {
                return Some(format!(
                    "vector value {i} is {}, beyond the f16 range of the collection's exact storage",
                    v[i]
                ));
            }
            // Its squared norm must be finite too, or scores and norms become inf/NaN.
            (!v.iter().map(|x| x * x).sum::<f32>().is_finite())
                .then(|| "vector's squared norm overflows f32".to_string())
        }
    }
}

/// Runs blocking work on the blocking pool: file-system work (snapshots), and updates of the
/// exact mirror (they take the mirror's write lock, which waits for a running batch search).
/// `what` names it if the task dies.
async fn on_blocking_pool<T: Send + 'static>(
    what: &'static str,
    f: impl FnOnce() -> Result<T, IndexError> + Send + 'static,
) -> Result<T, IndexError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| IndexError::Store(format!("{what}: {e}")))?
}

/// Snapshot file-system work on the blocking pool.
async fn on_disk<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, IndexError> + Send + 'static,
) -> Result<T, IndexError> {
    on_blocking_pool("snapshot task", f).await
}

fn embedder_err(s: tonic::Status) -> IndexError {
    IndexError::Embedder(s)
}

impl Indexer {
    /// Opens every registered collection in `store`.
    pub async fn open(
        store: Arc<dyn VectorStore>,
        registry: Registry,
        embedder: Arc<dyn EmbedderApi>,
        limits: IndexerLimits,
        exact: Option<ExactSettings>,
    ) -> Result<Self, IndexError> {
        let exact = exact.map(|settings| Arc::new(ExactMirrors::new(settings)));
        let metas = registry.all()?;
        let specs: Vec<StoreSpec> = metas.iter().map(|m| m.store.clone()).collect();
        // Replays what a crash left in the store's journal before the exact engine copies the
        // vectors, so both start from the same state.
        let recovery = store.open_all(&specs).await?;
        for (s, meta) in specs.iter().zip(&metas) {
            tracing::info!(collection = %s.name, shards = s.shards, "collection opened");
            if let Some(exact) = &exact {
                let n = exact.load(store.as_ref(), &s.name, s.dim, s.distance, meta.exact).await?;
                tracing::info!(collection = %s.name, points = n, "exact engine loaded");
            }
        }
        let snapshots = Snapshots::new(&registry.dir().join("snapshots"));
        let cleaning = snapshots.clone();
        on_disk(move || cleaning.clean()).await?;
        Ok(Self {
            store,
            registry,
            embedder,
            limits,
            statuses: Mutex::default(),
            exact,
            recovery,
            reranker: None,
            gates: Mutex::default(),
            searches: Throughput::new(1000.0),
            snapshots,
            creating: Mutex::default(),
        })
    }

    /// Uses `reranker` for searches that ask to rerank.
    pub fn with_reranker(mut self, reranker: Option<Arc<dyn Reranker>>) -> Self {
        self.reranker = reranker;
        self
    }

    /// What the store recovered at start-up.
    pub fn recovery(&self) -> Recovery {
        self.recovery
    }

    pub fn store(&self) -> &Arc<dyn VectorStore> {
        &self.store
    }

    pub fn collections(&self) -> Result<Vec<CollectionMeta>, IndexError> {
        self.registry.all()
    }

    pub fn collection(&self, name: &str) -> Result<CollectionMeta, IndexError> {
        self.registry.get(name)
    }

    pub async fn stats(&self, name: &str) -> Result<StoreStats, IndexError> {
        self.store.stats(name).await
    }

    pub async fn create_collection(
        &self,
        req: CreateCollection,
        deadline: Option<Instant>,
    ) -> Result<CollectionMeta, IndexError> {
        validate_name(&req.name)?;
        if req.shards == 0 || req.shards > self.limits.max_shards {
            return Err(IndexError::invalid("shards", format!("must be 1..={}", self.limits.max_shards)));
        }
        if let (Some(w), Some(r)) = (req.write_consistency_factor, req.replication_factor)
            && w > r
        {
            return Err(IndexError::invalid(
                "write_consistency_factor",
                format!("{w} is more than the replication factor {r}"),
            ));
        }
        let _creating = self.reserve(&req.name)?;
        let (model, dim) = match req.dim {
            Some(dim) => {
                check_vectors_only(&req, dim)?;
                req.chunking.validate(usize::MAX)?;
                (String::new(), dim)
            }
            None => {
                let info = self.embedder.model_info(&req.model, deadline).await.map_err(embedder_err)?;
                let tok = self
                    .embedder
                    .tokenize(&info.name, vec![String::new()], deadline)
                    .await
                    .map_err(embedder_err)?;
                req.chunking.validate(info.max_seq_len.saturating_sub(tok.special_tokens))?;
                (info.name, info.dim)
            }
        };
        let keyword = req.keyword.map(|k| KeywordConfig::resolve(k, &req.chunking)).transpose()?;
        let exact = self.resolve_exact(req.exact)?;
        let meta = CollectionMeta {
            store: StoreSpec {
                name: req.name,
                dim,
                distance: req.distance,
                shards: req.shards,
                indexing_threshold_kb: self.limits.indexing_threshold_kb,
                replication_factor: req.replication_factor,
                write_consistency_factor: req.write_consistency_factor,
                on_disk: req.on_disk,
                sparse: true,
            },
            model,
            chunking: req.chunking,
            keyword,
            max_chunks: req.max_chunks,
            exact,
        };
        self.store.create(&meta.store).await?;
        if let Err(e) = self.registry.insert(meta.clone()) {
            let _ = self.store.drop_collection(&meta.store.name).await;
            return Err(e);
        }
        if let Some(exact) = &self.exact {
            exact.create(&meta.store.name, meta.store.dim, meta.store.distance, meta.exact)?;
        }
        tracing::info!(collection = %meta.store.name, model = %meta.model, dim = meta.store.dim, "collection created");
        Ok(meta)
    }

    /// A new collection's exact storage: checked, defaults filled in from the server's settings
    /// (None when this indexer has no exact engine and none was asked for).
    fn resolve_exact(&self, req: Option<ExactRequest>) -> Result<Option<ExactStorage>, IndexError> {
        let default = self.exact.as_ref().map(|e| e.resolve(None));
        let storage = match (req, default) {
            (None, d) => d,
            (Some(r), d) => Some(ExactStorage {
                precision: r.precision.or(d.map(|d| d.precision)).unwrap_or(ExactPrecision::F32),
                rescore: r.rescore,
            }),
        };
        if let Some(s) = storage {
            if s.rescore > MAX_RESCORE {
                return Err(IndexError::invalid(
                    "exact.rescore",
                    format!("{} is above {MAX_RESCORE}", s.rescore),
                ));
            }
            if s.rescore > 0 && s.precision == ExactPrecision::F32 {
                return Err(IndexError::invalid(
                    "exact.rescore",
                    "rescoring re-ranks compressed scores by f32 ones; this collection stores f32 \
                     (set exact.precision to f16, bf16, int8 or int8-per-vector)",
                ));
            }
        }
        Ok(storage)
    }

    /// The resident exact engine's storage and size for a collection; None without one.
    pub fn exact_footprint(&self, name: &str) -> Option<ExactFootprint> {
        self.exact.as_ref()?.footprint(name)
    }

    /// Reserves a collection name for a create or restore: ALREADY_EXISTS when a collection of
    /// that name exists or another call is making one.
    fn reserve(&self, name: &str) -> Result<Creating<'_>, IndexError> {
        let mut names = self.creating.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.registry.get(name).is_ok() || !names.insert(name.to_string()) {
            return Err(IndexError::CollectionExists(name.to_string()));
        }
        Ok(Creating { names: &self.creating, name: name.to_string() })
    }

    /// Takes a snapshot of a collection (see [`crate::snapshot`]): its writes wait (until the
    /// caller's deadline) for the ones in flight to finish, then while the store copies its
    /// shards; searches go on. `name` None: `<collection>-<UTC time>`.
    pub async fn create_snapshot(
        &self,
        collection: &str,
        name: Option<String>,
        deadline: Option<Instant>,
    ) -> Result<Manifest, IndexError> {
        validate_name(collection)?;
        self.registry.get(collection)?;
        let name = match name {
            Some(n) => {
                snapshot::validate_name(&n)?;
                n
            }
            None => snapshot::default_name(collection),
        };
        let (snapshots, c, n) = (self.snapshots.clone(), collection.to_string(), name.clone());
        let dir = on_disk(move || snapshots.begin(&c, &n)).await?;
        let started = Instant::now();
        let taken = async {
            let gate = self.gate(collection);
            let _writes =
                Self::before_deadline(gate.write(), deadline, "the collection's writes to finish").await?;
            // Read under the gate: a keyword re-index holds it too, so these are the settings of
            // the chunks copied.
            let meta = self.registry.get(collection)?;
            self.store.snapshot(collection, &dir).await?;
            let points = self.store.stats(collection).await?.points;
            Ok::<_, IndexError>((meta, points))
        }
        .await;
        let snapshots = self.snapshots.clone();
        let manifest = match taken {
            Ok((meta, points)) => {
                let manifest = Manifest {
                    format: snapshot::FORMAT,
                    name,
                    created_unix: ragd_core::clock::unix_now(),
                    points,
                    size_bytes: 0,
                    meta,
                };
                on_disk(move || snapshots.commit(manifest)).await?
            }
            Err(e) => {
                let c = collection.to_string();
                on_disk(move || {
                    snapshots.abort(&c, &name);
                    Ok(())
                })
                .await?;
                return Err(e);
            }
        };
        tracing::info!(
            collection, snapshot = %manifest.name, points = manifest.points, bytes = manifest.size_bytes,
            ms = started.elapsed().as_millis() as u64, "snapshot taken"
        );
        Ok(manifest)
    }

    /// The snapshots of `collection` (None: of every collection), by collection, oldest first.
    pub async fn list_snapshots(&self, collection: Option<&str>) -> Result<Vec<Manifest>, IndexError> {
        if let Some(c) = collection {
            validate_name(c)?;
        }
        let (snapshots, c) = (self.snapshots.clone(), collection.map(str::to_string));
        on_disk(move || snapshots.list(c.as_deref())).await
    }

    /// A snapshot's manifest: NOT_FOUND when there is none.
    pub async fn snapshot(&self, collection: &str, name: &str) -> Result<Manifest, IndexError> {
        validate_name(collection)?;
        let (snapshots, c, n) = (self.snapshots.clone(), collection.to_string(), name.to_string());
        Ok(on_disk(move || snapshots.get(&c, &n)).await?.0)
    }

    pub async fn delete_snapshot(&self, collection: &str, name: &str) -> Result<(), IndexError> {
        validate_name(collection)?;
        let (snapshots, c, n) = (self.snapshots.clone(), collection.to_string(), name.to_string());
        on_disk(move || snapshots.delete(&c, &n)).await?;
        tracing::info!(collection, snapshot = name, "snapshot deleted");
        Ok(())
    }

    /// Creates collection `target` (None: the snapshot's own collection) from a snapshot: its
    /// shards, its settings (model, chunking, keyword index) and so its search results.
    pub async fn restore_snapshot(
        &self,
        collection: &str,
        name: &str,
        target: Option<&str>,
    ) -> Result<CollectionMeta, IndexError> {
        validate_name(collection)?;
        let (snapshots, c, n) = (self.snapshots.clone(), collection.to_string(), name.to_string());
        let (manifest, dir) = on_disk(move || snapshots.get(&c, &n)).await?;
        let target = target.unwrap_or(collection);
        validate_name(target)?;
        let _creating = self.reserve(target)?;
        let mut meta = manifest.meta;
        meta.store.name = target.to_string();
        self.store.restore(&meta.store, &dir).await?;
        if let Err(e) = self.registry.insert(meta.clone()) {
            let _ = self.store.drop_collection(target).await;
            return Err(e);
        }
        if let Some(exact) = &self.exact {
            let loaded = exact
                .load(self.store.as_ref(), target, meta.store.dim, meta.store.distance, meta.exact)
                .await;
            if let Err(e) = loaded {
                // Without its exact engine the collection would answer exact searches wrongly.
                let _ = self.drop_collection(target).await;
                return Err(e);
            }
        }
        tracing::info!(
            collection = target,
            snapshot = name,
            from = collection,
            points = manifest.points,
            "snapshot restored"
        );
        Ok(meta)
    }

    pub async fn drop_collection(&self, name: &str) -> Result<(), IndexError> {
        // The registry first: a crash after it leaves a directory the next start removes; the
        // other order would leave a registered collection without its shards.
        self.registry.remove(name)?;
        self.gates.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(name);
        self.store.drop_collection(name).await?;
        if let Some(exact) = &self.exact {
            exact.drop_collection(name);
        }
        if let Ok(mut s) = self.statuses.lock() {
            s.map.retain(|(c, _), _| c != name);
            s.order.retain(|(c, _)| c != name);
        }
        tracing::info!(collection = %name, "collection dropped");
        Ok(())
    }

    fn set_status(&self, collection: &str, doc: &str, state: IngestState, reason: String, chunks: u32) {
        if let Ok(mut s) = self.statuses.lock() {
            let key = (collection.to_string(), doc.to_string());
            s.set(self.limits.status_capacity, key, DocStatus { state, reason, chunks });
        }
    }

    /// Where a document's ingest stands: remembered state, else the store's chunk count.
    fn gate(&self, collection: &str) -> Arc<tokio::sync::RwLock<()>> {
        let mut gates = self.gates.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        gates.entry(collection.to_string()).or_default().clone()
    }

    /// Waits for `wait` until the caller's deadline (none: as long as it takes).
    async fn before_deadline<T>(
        wait: impl std::future::Future<Output = T>,
        deadline: Option<Instant>,
        what: &str,
    ) -> Result<T, IndexError> {
        match deadline {
            None => Ok(wait.await),
            Some(d) => tokio::time::timeout_at(d.into(), wait)
                .await
                .map_err(|_| IndexError::DeadlineExceeded(format!("waiting for {what}"))),
        }
    }

    /// Builds a collection's keyword index with new settings: every stored chunk's text is
    /// analysed again and its BM25 vector rewritten, page by page, while the collection's writes
    /// wait; the registry takes the new settings once every chunk has them (a failure or a
    /// passed deadline leaves the old settings in force and some chunks re-weighted: run it
    /// again). Adds an index to a collection created without one; storage from before keyword search
    /// (no keyword vector) is rebuilt by the store with it (`add_keyword_vector`; a store that
    /// cannot answers FAILED_PRECONDITION). Returns the collection and the chunks rewritten.
    pub async fn reindex_keywords(
        &self,
        collection: &str,
        request: KeywordRequest,
        deadline: Option<Instant>,
    ) -> Result<(CollectionMeta, u64), IndexError> {
        let meta = self.registry.get(collection)?;
        let config = KeywordConfig::resolve(request, &meta.chunking)?;
        let gate = self.gate(collection);
        let _writes =
            Self::before_deadline(gate.write(), deadline, "the collection's writes to finish").await?;
        let sparse_of = Arc::new(Analyzer::new(&config)?).sparse_of();
        let (store_spec, rewritten) = if meta.store.sparse {
            let n = rewrite_keyword_weights(self.store.as_ref(), collection, sparse_of, deadline).await?;
            (meta.store.clone(), n)
        } else {
            // Storage from before keyword search: the store rebuilds it with the vector.
            self.store.add_keyword_vector(&meta.store, sparse_of).await?
        };
        let meta = self.registry.set_keyword(collection, Some(config), store_spec)?;
        tracing::info!(collection, chunks = rewritten, "keyword index rebuilt");
        Ok((meta, rewritten))
    }

    /// One page of a collection's chunks (Scroll). `limit` 0 = [`SCROLL_DEFAULT`]; above
    /// [`SCROLL_MAX`] is INVALID_ARGUMENT.
    pub async fn scroll(&self, collection: &str, mut page: ScrollPage) -> Result<ScrollOut, IndexError> {
        self.registry.get(collection)?;
        match page.limit {
            0 => page.limit = SCROLL_DEFAULT,
            n if n > SCROLL_MAX => {
                return Err(IndexError::invalid(
                    "limit",
                    format!("{n} is above the most a page holds, {SCROLL_MAX}"),
                ));
            }
            _ => {}
        }
        if page.filter.as_ref().is_some_and(Filter::is_empty) {
            page.filter = None;
        }
        self.store.scroll(collection, &page).await
    }

    pub async fn document_status(&self, collection: &str, doc: &str) -> Result<DocStatus, IndexError> {
        self.registry.get(collection)?;
        let remembered = self
            .statuses
            .lock()
            .ok()
            .and_then(|s| s.map.get(&(collection.to_string(), doc.to_string())).cloned());
        if let Some(status) = remembered {
            return Ok(status);
        }
        match self.store.count_chunks(collection, doc).await? {
            0 => Err(IndexError::DocumentNotFound { collection: collection.into(), doc_id: doc.into() }),
            n => Ok(DocStatus { state: IngestState::Stored, reason: String::new(), chunks: n as u32 }),
        }
    }

    /// A stored document's chunks in order, with their dense vectors when asked. NOT_FOUND for
    /// a document with no stored chunk. Chunks are read by id (a document's are numbered 0..n),
    /// a page at a time; a chunk removed meanwhile by a shorter re-upsert is left out.
    pub async fn get_document(
        &self,
        collection: &str,
        doc: &str,
        with_vectors: bool,
    ) -> Result<Vec<ChunkPoint>, IndexError> {
        self.registry.get(collection)?;
        if doc.is_empty() {
            return Err(IndexError::invalid("id", "is empty"));
        }
        let not_found = || IndexError::DocumentNotFound { collection: collection.into(), doc_id: doc.into() };
        let n = self.store.count_chunks(collection, doc).await? as u32;
        let mut out = Vec::with_capacity(n as usize);
        for start in (0..n).step_by(GET_DOCUMENT_PAGE) {
            let ids: Vec<(String, u32)> =
                (start..n.min(start + GET_DOCUMENT_PAGE as u32)).map(|i| (doc.to_string(), i)).collect();
            let hits = self.store.retrieve(collection, &ids).await?;
            let mut vectors = match with_vectors {
                true => self.store.vectors(collection, &ids).await?,
                false => vec![Some(Vec::new()); ids.len()],
            }
            .into_iter();
            for hit in hits {
                // Both None when the chunk went between the count and the read.
                if let (Some(hit), Some(Some(vector))) = (hit, vectors.next()) {
                    out.push(hit.into_point(vector));
                }
            }
        }
        match out.is_empty() {
            true => Err(not_found()),
            false => Ok(out),
        }
    }

    /// Chunks, embeds and stores documents. Invalid documents fail alone (listed in the
    /// outcome); an embedder or store failure fails the call with its status.
    pub async fn upsert(
        &self,
        collection: &str,
        docs: Vec<DocumentIn>,
        deadline: Option<Instant>,
    ) -> Result<UpsertOutcome, IndexError> {
        self.registry.get(collection)?;
        let gate = self.gate(collection);
        let _writing =
            Self::before_deadline(gate.read(), deadline, "a keyword re-index of the collection").await?;
        // Read under the gate: a re-index that just finished has changed the keyword settings.
        let meta = self.registry.get(collection)?;
        if docs.len() > self.limits.max_documents_per_request {
            return Err(IndexError::invalid(
                "documents",
                format!(
                    "{} documents exceed the limit of {} per request",
                    docs.len(),
                    self.limits.max_documents_per_request
                ),
            ));
        }
        // A bad vector is a systematic mistake (a wrong model, a wrong file): the whole request
        // is refused before anything is stored, naming the first document that has one.
        let f16_max = self
            .exact_footprint(collection)
            .filter(|f| f.storage.precision == ExactPrecision::F16 && meta.store.distance != Distance::Cosine)
            .map(|_| 65504.0f32);
        if let Some((i, d, why)) = docs
            .iter()
            .enumerate()
            .find_map(|(i, d)| vector_problem(&meta, d, f16_max).map(|why| (i, d, why)))
        {
            return Err(IndexError::invalid(
                "documents",
                format!("document {i} ({}): {why}", ragd_core::status::quote(&d.id)),
            ));
        }
        let mut outcome = UpsertOutcome::default();
        let mut valid = Vec::with_capacity(docs.len());
        for d in docs {
            let reason = if d.id.is_empty() {
                Some("id is empty")
            } else if d.id.len() > 512 {
                Some("id is longer than 512 bytes")
            } else if d.vector.is_none() && d.text.trim().is_empty() {
                Some("text is empty and there is no vector")
            } else {
                None
            };
            match reason {
                Some(r) => {
                    self.set_status(collection, &d.id, IngestState::Failed, r.into(), 0);
                    outcome.failed.push((d.id, r.into()));
                }
                None => {
                    self.set_status(collection, &d.id, IngestState::Accepted, String::new(), 0);
                    valid.push(d);
                }
            }
        }
        if valid.is_empty() {
            return Ok(outcome);
        }
        let result = self.ingest(&meta, &valid, deadline).await;
        match result {
            Ok(chunks) => {
                for (d, n) in valid.iter().zip(&chunks) {
                    self.set_status(collection, &d.id, IngestState::Stored, String::new(), *n);
                }
                outcome.documents = valid.len() as u32;
                outcome.chunks = chunks.iter().sum();
                Ok(outcome)
            }
            Err(e) => {
                for d in &valid {
                    self.set_status(collection, &d.id, IngestState::Failed, e.to_string(), 0);
                }
                Err(e)
            }
        }
    }

    /// Returns the number of chunks stored per document.
    async fn ingest(
        &self,
        meta: &CollectionMeta,
        docs: &[DocumentIn],
        deadline: Option<Instant>,
    ) -> Result<Vec<u32>, IndexError> {
        let chunks = self.chunk(meta, docs, deadline).await?;
        // Documents that brought their vector are not embedded.
        let texts: Vec<String> = (docs.iter().zip(&chunks))
            .filter(|(d, _)| d.vector.is_none())
            .flat_map(|(_, cs)| cs.iter().map(|c| c.text.clone()))
            .collect();
        let vectors = match texts.is_empty() {
            true => Vec::new(),
            false => self.embed(&meta.model, texts, InputKind::Passage, deadline).await?,
        };
        let collection = &meta.store.name;
        for d in docs {
            self.set_status(collection, &d.id, IngestState::Embedded, String::new(), 0);
        }
        let mut vectors = vectors.into_iter();
        let mut points = Vec::new();
        for (d, cs) in docs.iter().zip(&chunks) {
            for (i, c) in cs.iter().enumerate() {
                let vector = match &d.vector {
                    Some(v) => Some(v.clone()),
                    None => vectors.next(),
                };
                let vector = vector.ok_or_else(|| {
                    IndexError::Embedder(tonic::Status::internal("answered too few vectors"))
                })?;
                points.push(ChunkPoint {
                    doc_id: d.id.clone(),
                    chunk: i as u32,
                    text: c.text.clone(),
                    metadata: d.metadata.clone(),
                    vector,
                    sparse: None,
                });
            }
        }
        if let Some(config) = &meta.keyword {
            points = with_keyword_weights(Arc::new(Analyzer::new(config)?).sparse_of(), points).await?;
        }
        let counts: Vec<u32> = chunks.iter().map(|c| c.len() as u32).collect();
        let stale: Vec<(String, u32)> = docs.iter().zip(&counts).map(|(d, n)| (d.id.clone(), *n)).collect();
        // One batch: each document's new chunks and the removal of its old version's extra
        // chunks are applied (and journalled) together, so a crash never leaves half of it.
        let batch = WriteBatch { upserts: points, delete_chunks_from: stale, delete_documents: Vec::new() };
        if let Some(exact) = &self.exact {
            self.store.write(collection, batch.clone()).await?;
            // The mirror's write lock waits out a running search batch: off the async workers.
            let (exact, name) = (exact.clone(), collection.to_string());
            on_blocking_pool("exact mirror update", move || {
                exact.add(&name, &batch.upserts)?;
                exact.remove_from(&name, &batch.delete_chunks_from)
            })
            .await?;
        } else {
            self.store.write(collection, batch).await?;
        }
        Ok(counts)
    }

    /// Each document's chunks, cut to the collection's `max_chunks`; a document that brought
    /// its vector is one chunk of its whole text.
    async fn chunk(
        &self,
        meta: &CollectionMeta,
        docs: &[DocumentIn],
        deadline: Option<Instant>,
    ) -> Result<Vec<Vec<chunk::Chunk>>, IndexError> {
        let whole = |d: &DocumentIn| vec![chunk::Chunk { text: d.text.clone(), start: 0, end: d.text.len() }];
        let mut chunks = match meta.chunking {
            Chunking::Sentences { size, overlap } => docs
                .iter()
                .map(|d| match d.vector {
                    Some(_) => whole(d),
                    None => chunk::by_sentences(&d.text, size, overlap),
                })
                .collect(),
            Chunking::Tokens { size, overlap } => {
                let texts: Vec<String> =
                    docs.iter().filter(|d| d.vector.is_none()).map(|d| d.text.clone()).collect();
                let mut offsets = match texts.is_empty() {
                    true => Vec::new(),
                    false => {
                        self.embedder
                            .tokenize(&meta.model, texts, deadline)
                            .await
                            .map_err(embedder_err)?
                            .offsets
                    }
                }
                .into_iter();
                let mut out = Vec::with_capacity(docs.len());
                for d in docs {
                    out.push(match d.vector {
                        Some(_) => whole(d),
                        None => {
                            let o = offsets.next().ok_or_else(|| {
                                embedder_err(tonic::Status::internal("answered too few tokenizations"))
                            })?;
                            chunk::by_tokens(&d.text, &o, size, overlap)?
                        }
                    });
                }
                out
            }
        };
        if let Some(max) = meta.max_chunks {
            chunks.iter_mut().for_each(|cs: &mut Vec<chunk::Chunk>| cs.truncate(max as usize));
        }
        Ok(chunks)
    }

    /// Vectors of `texts`, [`EMBED_CHUNK_TEXTS`] per call.
    async fn embed(
        &self,
        model: &str,
        texts: Vec<String>,
        kind: InputKind,
        deadline: Option<Instant>,
    ) -> Result<Vec<Vec<f32>>, IndexError> {
        let mut out = Vec::with_capacity(texts.len());
        for part in texts.chunks(EMBED_CHUNK_TEXTS) {
            let vectors = self.embed_part(model, part, kind, deadline).await.map_err(embedder_err)?;
            // The trait promises one vector per text; a peer that breaks it fails the call.
            if vectors.len() != part.len() {
                return Err(embedder_err(tonic::Status::internal(format!(
                    "answered {} vectors for {} texts",
                    vectors.len(),
                    part.len()
                ))));
            }
            out.extend(vectors);
        }
        Ok(out)
    }

    /// One Embed call. Passages being ingested are bulk work: when the embedder refuses them for
    /// load (RESOURCE_EXHAUSTED) they are retried after its retry hint, for as long as the
    /// caller's deadline allows (without one, up to [`BULK_RETRY_FOR`]). A query is not retried:
    /// its caller is waiting and learns of the overload at once.
    async fn embed_part(
        &self,
        model: &str,
        part: &[String],
        kind: InputKind,
        deadline: Option<Instant>,
    ) -> Result<Vec<Vec<f32>>, tonic::Status> {
        let give_up = deadline.unwrap_or_else(|| Instant::now() + BULK_RETRY_FOR);
        loop {
            let status = match self.embedder.embed(model, part.to_vec(), kind, deadline).await {
                Ok(v) => return Ok(v),
                Err(s) => s,
            };
            let hint = ragd_core::status::retry_after(&status);
            let retry = kind == InputKind::Passage && status.code() == tonic::Code::ResourceExhausted;
            match hint {
                Some(after) if retry && Instant::now() + after < give_up => {
                    tracing::debug!(texts = part.len(), ?after, "embedder overloaded; retrying the passages");
                    tokio::time::sleep(after).await;
                }
                _ => return Err(status),
            }
        }
    }

    pub async fn delete(&self, collection: &str, ids: &[String]) -> Result<u32, IndexError> {
        self.registry.get(collection)?;
        if ids.is_empty() || ids.iter().any(String::is_empty) {
            return Err(IndexError::invalid("ids", "need one or more non-empty document ids"));
        }
        let gate = self.gate(collection);
        let _writing = gate.read().await;
        // One count per shard for all the ids (it was one count per id).
        let existing = u32::try_from(self.store.count_documents(collection, ids).await?).unwrap_or(u32::MAX);
        let batch = WriteBatch { delete_documents: ids.to_vec(), ..Default::default() };
        self.store.write(collection, batch).await?;
        if let Some(exact) = &self.exact {
            let (exact, name, ids) = (exact.clone(), collection.to_string(), ids.to_vec());
            on_blocking_pool("exact mirror update", move || exact.remove_documents(&name, &ids)).await?;
        }
        if let Ok(mut s) = self.statuses.lock() {
            for id in ids {
                s.map.remove(&(collection.to_string(), id.clone()));
            }
        }
        Ok(existing)
    }

    /// Checks a search's limits and queries; the text queries (to embed), in order. The filter
    /// was validated when it was built (`filter::Condition::new`).
    fn check_search(
        &self,
        meta: &CollectionMeta,
        queries: &[QueryIn],
        options: &SearchOptions,
        retrieval: &Retrieval,
    ) -> Result<Vec<String>, IndexError> {
        let dim = meta.store.dim;
        if queries.is_empty() || queries.len() > self.limits.max_queries {
            return Err(IndexError::invalid(
                "queries",
                format!("need 1..={} queries", self.limits.max_queries),
            ));
        }
        if options.k == 0 || options.k > self.limits.max_k {
            return Err(IndexError::invalid("k", format!("must be 1..={}", self.limits.max_k)));
        }
        if options.score_threshold.is_some_and(|t| !t.is_finite()) {
            return Err(IndexError::invalid("score_threshold", "must be a finite number"));
        }
        self.check_retrieval(meta, options.k, retrieval)?;
        let mut texts = Vec::new();
        for (i, q) in queries.iter().enumerate() {
            match q {
                QueryIn::Text(t) if t.trim().is_empty() => {
                    return Err(IndexError::invalid("queries", format!("query {i} is empty")));
                }
                QueryIn::Text(t) => texts.push(t.clone()),
                QueryIn::Vector(_) if retrieval.rerank.is_some() => {
                    return Err(IndexError::invalid(
                        "queries",
                        format!("query {i} is a vector; a reranker needs the query's text"),
                    ));
                }
                QueryIn::Vector(_) if retrieval.mode != SearchMode::Dense => {
                    return Err(IndexError::invalid(
                        "queries",
                        format!("query {i} is a vector; keyword and hybrid search need text"),
                    ));
                }
                QueryIn::Vector(v) if v.len() != dim => {
                    return Err(IndexError::invalid(
                        "queries",
                        format!("query {i} has dimension {}, the collection's is {dim}", v.len()),
                    ));
                }
                QueryIn::Vector(v) if v.iter().any(|x| !x.is_finite()) => {
                    return Err(IndexError::invalid(
                        "queries",
                        format!("query {i} contains NaN or infinity"),
                    ));
                }
                QueryIn::Vector(_) => {}
            }
        }
        if meta.model.is_empty() && !texts.is_empty() && retrieval.mode != SearchMode::Keyword {
            return Err(IndexError::failed_precondition(
                "queries",
                format!(
                    "collection {:?} holds vectors brought by the user and has no embedding model to embed a text query; query with vectors, or keyword search",
                    meta.store.name
                ),
            ));
        }
        Ok(texts)
    }

    /// Checks the mode, fusion, prefetch and MMR settings against the collection and k.
    fn check_retrieval(&self, meta: &CollectionMeta, k: usize, r: &Retrieval) -> Result<(), IndexError> {
        let max_k = self.limits.max_k;
        if r.mode != SearchMode::Dense && meta.keyword.is_none() {
            return Err(IndexError::failed_precondition(
                "mode",
                format!(
                    "collection {:?} has no keyword index; create it with one (CreateCollection.keyword) for keyword or hybrid search",
                    meta.store.name
                ),
            ));
        }
        match r.fusion {
            Fusion::Weighted { alpha } if !(0.0..=1.0).contains(&alpha) => {
                return Err(IndexError::invalid("fusion.weighted.alpha", "must be in [0, 1]"));
            }
            Fusion::Rrf { k: 0 } => return Err(IndexError::invalid("fusion.rrf.k", "must be at least 1")),
            _ => {}
        }
        if let Some(p) = r.prefetch
            && (p < k || p > max_k)
        {
            return Err(IndexError::invalid("prefetch", format!("must be in k..={max_k} (k is {k})")));
        }
        if let Some(rerank) = r.rerank {
            if self.reranker.is_none() {
                return Err(IndexError::failed_precondition(
                    "rerank",
                    "this indexer has no reranker; start it with --reranker-url",
                ));
            }
            if let Some(c) = rerank.candidates
                && (c < k || c > max_k)
            {
                return Err(IndexError::invalid(
                    "rerank.candidates",
                    format!("must be in k..={max_k} (k is {k})"),
                ));
            }
            if let (Some(a), Some(b)) = (rerank.candidates, r.mmr.and_then(|m| m.candidates))
                && a != b
            {
                return Err(IndexError::invalid(
                    "mmr.candidates",
                    format!(
                        "MMR picks from the reranked candidates; leave it unset or equal to rerank.candidates ({a})"
                    ),
                ));
            }
        }
        if let Some(m) = r.mmr {
            if !(0.0..=1.0).contains(&m.diversity) {
                return Err(IndexError::invalid("mmr.diversity", "must be in [0, 1]"));
            }
            if let Some(c) = m.candidates
                && (c < k || c > max_k)
            {
                return Err(IndexError::invalid(
                    "mmr.candidates",
                    format!("must be in k..={max_k} (k is {k})"),
                ));
            }
        }
        Ok(())
    }

    /// Top-k hits per query: dense, keyword or hybrid (fused), then diversified by MMR if asked.
    pub async fn search(
        &self,
        collection: &str,
        queries: Vec<QueryIn>,
        options: SearchOptions,
        retrieval: Retrieval,
        deadline: Option<Instant>,
    ) -> Result<(Vec<Vec<Hit>>, SearchTimings), IndexError> {
        let meta = self.registry.get(collection)?;
        let texts = self.check_search(&meta, &queries, &options, &retrieval)?;
        if let Some(bound) = self.limits.max_queue_wait {
            let estimate = self.searches.estimate(queries.len());
            admission::decide(estimate, bound, deadline, Instant::now()).map_err(IndexError::Overloaded)?;
        }
        let in_flight = self.searches.enter(queries.len());
        let result = self.search_admitted(meta, queries, texts, options, retrieval, deadline).await;
        if result.is_ok() {
            in_flight.complete();
        }
        result
    }

    /// A search past admission.
    async fn search_admitted(
        &self,
        meta: CollectionMeta,
        queries: Vec<QueryIn>,
        texts: Vec<String>,
        mut options: SearchOptions,
        retrieval: Retrieval,
        deadline: Option<Instant>,
    ) -> Result<(Vec<Vec<Hit>>, SearchTimings), IndexError> {
        let collection = meta.store.name.as_str();
        if options.filter.as_ref().is_some_and(Filter::is_empty) {
            options.filter = None;
        }
        let (k, max_k) = (options.k, self.limits.max_k);
        // How many hits each query's list needs before reranking and MMR bring it to k.
        let pool = retrieval.rerank.and_then(|r| r.candidates).or(retrieval.mmr.and_then(|m| m.candidates));
        let want = if retrieval.rerank.is_some() || retrieval.mmr.is_some() {
            pool.unwrap_or_else(|| (4 * k).max(20).min(max_k))
        } else {
            k
        };
        let prefetch = retrieval.prefetch.unwrap_or_else(|| (4 * k).max(50).min(max_k).max(want));
        let started = Instant::now();
        let mut timings = SearchTimings::default();
        // Hybrid runs its two searches concurrently; the keyword one is polled first, so a store
        // that hands it to the blocking pool has done so before the dense one (which may run on
        // this worker) starts.
        let keyword = async {
            let (Some(config), SearchMode::Keyword | SearchMode::Hybrid) = (&meta.keyword, retrieval.mode)
            else {
                return Ok(None);
            };
            let analyzer = Analyzer::new(config)?;
            let sparse: Vec<SparseVector> = texts.iter().map(|t| analyzer.query(t)).collect();
            let (k, threshold) = match retrieval.mode {
                SearchMode::Hybrid => (prefetch, None),
                _ => (want, options.score_threshold),
            };
            let keyword_options = SearchOptions { k, score_threshold: threshold, ..options.clone() };
            let span = tracing::info_span!("keyword_search", queries = sparse.len());
            self.store.search_keyword(collection, &sparse, &keyword_options).instrument(span).await.map(Some)
        };
        let dense = async {
            if retrieval.mode == SearchMode::Keyword {
                return Ok((None, Duration::ZERO));
            }
            let vectors = self.query_vectors(&meta, queries, texts.clone(), deadline).await?;
            let embedded = started.elapsed();
            let k = if retrieval.mode == SearchMode::Hybrid { prefetch } else { want };
            let threshold = if retrieval.mode == SearchMode::Dense { options.score_threshold } else { None };
            let dense_options = SearchOptions { k, score_threshold: threshold, ..options.clone() };
            Ok::<_, IndexError>((Some(self.dense_search(&meta, &vectors, &dense_options).await?), embedded))
        };
        let (keyword, (dense, embedded)) = tokio::try_join!(keyword, dense)?;
        timings.embed = embedded;
        let higher = meta.store.distance.higher_is_better();
        let lists: Vec<Vec<Hit>> = match (dense, keyword) {
            (Some(dense), Some(keyword)) => dense
                .into_iter()
                .zip(keyword)
                .map(|(d, kw)| {
                    let mut fused = fusion::fuse(d, kw, retrieval.fusion, higher);
                    if let Some(t) = options.score_threshold {
                        fused.retain(|h| h.score >= t);
                    }
                    fused.truncate(want);
                    fused
                })
                .collect(),
            (Some(lists), None) | (None, Some(lists)) => lists,
            (None, None) => Vec::new(),
        };
        let lists = match (retrieval.rerank, &self.reranker) {
            (Some(_), Some(reranker)) => {
                let span = tracing::info_span!("rerank", queries = lists.len());
                rerank_lists(reranker.as_ref(), &texts, lists, deadline).instrument(span).await?
            }
            _ => lists,
        };
        let hits = match retrieval.mmr {
            Some(mmr) => {
                let dense_relevance = retrieval.mode == SearchMode::Dense && retrieval.rerank.is_none();
                self.diversify(&meta, lists, k, mmr.diversity, dense_relevance).await?
            }
            None => lists
                .into_iter()
                .map(|mut l| {
                    l.truncate(k);
                    l
                })
                .collect(),
        };
        timings.search = started.elapsed().saturating_sub(timings.embed);
        Ok((hits, timings))
    }

    /// Every query's vector: text queries embedded with the collection's model, in order.
    async fn query_vectors(
        &self,
        meta: &CollectionMeta,
        queries: Vec<QueryIn>,
        texts: Vec<String>,
        deadline: Option<Instant>,
    ) -> Result<Vec<Vec<f32>>, IndexError> {
        let mut embedded = if texts.is_empty() {
            Vec::new().into_iter()
        } else {
            let span = tracing::info_span!("embed_queries", texts = texts.len());
            self.embed(&meta.model, texts, InputKind::Query, deadline).instrument(span).await?.into_iter()
        };
        // `embed` answers one vector per text (or fails), so every text query has its vector.
        queries
            .into_iter()
            .map(|q| match q {
                QueryIn::Text(_) => embedded.next().ok_or_else(|| {
                    IndexError::Embedder(tonic::Status::internal("answered too few vectors for the queries"))
                }),
                QueryIn::Vector(v) => Ok(v),
            })
            .collect()
    }

    /// The dense top k: unfiltered exact searches go to the resident exact engine (batched with
    /// concurrent ones); filtered ones, and HNSW, to the store.
    async fn dense_search(
        &self,
        meta: &CollectionMeta,
        vectors: &[Vec<f32>],
        options: &SearchOptions,
    ) -> Result<Vec<Vec<Hit>>, IndexError> {
        let collection = &meta.store.name;
        if let Some(exact) = &self.exact
            && options.exact
            && options.filter.is_none()
        {
            crate::store::check_queries(vectors, meta.store.dim)?;
            let found = exact
                .search(self.store.as_ref(), collection, vectors, options.k, options.score_threshold)
                .instrument(tracing::info_span!("exact_search", queries = vectors.len()))
                .await?;
            if let Some(hits) = found {
                return Ok(hits);
            }
        }
        let span = tracing::info_span!("shard_search", queries = vectors.len(), exact = options.exact);
        self.store.search(collection, vectors, options).instrument(span).await
    }

    /// MMR over each query's candidates: their dense vectors from the store (one call for all
    /// queries), the similarity matrix and the greedy pick on the blocking pool. Relevance is the
    /// similarity to the query (`dense_relevance`: the dense score, a distance negated) or the
    /// list's score min-max scaled to [0, 1] (keyword and fused scores).
    async fn diversify(
        &self,
        meta: &CollectionMeta,
        lists: Vec<Vec<Hit>>,
        k: usize,
        diversity: f32,
        dense_relevance: bool,
    ) -> Result<Vec<Vec<Hit>>, IndexError> {
        let keys: Vec<(String, u32)> =
            lists.iter().flat_map(|l| l.iter().map(|h| (h.doc_id.clone(), h.chunk))).collect();
        let span = tracing::info_span!("mmr_vectors", chunks = keys.len());
        let mut vectors = self.store.vectors(&meta.store.name, &keys).instrument(span).await?.into_iter();
        let (distance, higher) = (meta.store.distance, meta.store.distance.higher_is_better());
        let work: Vec<(Vec<Hit>, Vec<Vec<f32>>)> = lists
            .into_iter()
            .map(|list| {
                // A chunk deleted since the search has no vector: it is no longer a candidate.
                let (hits, vs): (Vec<Hit>, Vec<Vec<f32>>) =
                    list.into_iter().zip(vectors.by_ref()).filter_map(|(h, v)| v.map(|v| (h, v))).unzip();
                (hits, vs)
            })
            .collect();
        tokio::task::spawn_blocking(move || {
            work.into_iter()
                .map(|(hits, vs)| {
                    // A dense list's similarity as it is (a distance negated); other scores (BM25,
                    // fused, reranked: all larger-is-better) scaled to [0, 1].
                    let relevance: Vec<f32> = if dense_relevance {
                        hits.iter().map(|h| if higher { h.score } else { -h.score }).collect()
                    } else {
                        fusion::min_max(&hits.iter().map(|h| h.score).collect::<Vec<f32>>())
                    };
                    let gram = crate::mmr::similarities(&vs, distance)?;
                    let picked = crate::mmr::select(&relevance, &gram, k, diversity);
                    let mut hits: Vec<Option<Hit>> = hits.into_iter().map(Some).collect();
                    Ok(picked.into_iter().filter_map(|i| hits[i].take()).collect())
                })
                .collect::<Result<Vec<Vec<Hit>>, IndexError>>()
        })
        .await
        .map_err(|e| IndexError::Store(format!("mmr: {e}")))?
    }
}

/// Each query's candidates reordered by the reranker's scores (all queries at once): a hit's
/// score becomes the reranker's, and its sources gain where it stood before (`retrieval`) and
/// after (`rerank`). Ties keep the retrieval order.
async fn rerank_lists(
    reranker: &dyn Reranker,
    queries: &[String],
    lists: Vec<Vec<Hit>>,
    deadline: Option<Instant>,
) -> Result<Vec<Vec<Hit>>, IndexError> {
    let calls = queries.iter().zip(&lists).map(|(q, hits)| {
        let texts: Vec<String> = hits.iter().map(|h| h.text.clone()).collect();
        async move { reranker.rerank(q, &texts, deadline).await }
    });
    let scores = futures::future::try_join_all(calls).await.map_err(IndexError::Reranker)?;
    Ok(lists
        .into_iter()
        .zip(scores)
        .map(|(hits, scores)| {
            let mut scored: Vec<(usize, f32, Hit)> =
                hits.into_iter().zip(scores).enumerate().map(|(i, (h, s))| (i, s, h)).collect();
            scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            scored
                .into_iter()
                .enumerate()
                .map(|(new, (old, score, mut hit))| {
                    hit.sources.push(SourceRank {
                        source: Source::Retrieval,
                        rank: old as u32 + 1,
                        score: hit.score,
                    });
                    hit.sources.push(SourceRank { source: Source::Rerank, rank: new as u32 + 1, score });
                    hit.score = score;
                    hit
                })
                .collect()
        })
        .collect())
}

/// The domain without a model or a socket: [`Indexer`] over a temp-dir embedded store and an
/// in-memory fake embedder (a test double of [`EmbedderApi`], named as such). The expected
/// answers are written from the fake's own rule, not computed by the code under test.
#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tonic::Code;

    use super::*;
    use crate::peers::{ModelFacts, Tokenized};
    use crate::store::edge::EdgeStore;

    const DIM: usize = 8;

    /// **Test double of the embedder.** A text's vector is one-hot on `hash(first word) % 8`
    /// (so texts starting with the same word have cosine 1, others 0); tokens are the
    /// whitespace-separated words. It can be told to fail, to answer short, or to refuse the next
    /// calls for load (RESOURCE_EXHAUSTED with a 5 ms retry hint).
    #[derive(Debug, Default)]
    struct FakeEmbedder {
        fail_with: Mutex<Option<Code>>,
        overloaded_for: AtomicUsize,
        answer_short: std::sync::atomic::AtomicBool,
        embed_calls: AtomicUsize,
    }

    fn slot(text: &str) -> usize {
        text.split_whitespace().next().map_or(0, |w| w.bytes().map(usize::from).sum::<usize>() % DIM)
    }

    #[tonic::async_trait]
    impl EmbedderApi for FakeEmbedder {
        async fn model_info(&self, name: &str, _: Option<Instant>) -> Result<ModelFacts, tonic::Status> {
            match name {
                "" | "fake" => Ok(ModelFacts { name: "fake".into(), dim: DIM, max_seq_len: 64 }),
                other => Err(tonic::Status::not_found(format!("model {other:?} is not served"))),
            }
        }

        async fn tokenize(
            &self,
            _: &str,
            texts: Vec<String>,
            _: Option<Instant>,
        ) -> Result<Tokenized, tonic::Status> {
            let offsets = texts
                .iter()
                .map(|t| {
                    let mut at = 0;
                    t.split_whitespace()
                        .map(|w| {
                            let start = at + t[at..].find(w).unwrap_or(0);
                            at = start + w.len();
                            (start, at)
                        })
                        .collect()
                })
                .collect();
            Ok(Tokenized { offsets, special_tokens: 2 })
        }

        async fn embed(
            &self,
            _: &str,
            texts: Vec<String>,
            _: InputKind,
            _: Option<Instant>,
        ) -> Result<Vec<Vec<f32>>, tonic::Status> {
            self.embed_calls.fetch_add(1, Ordering::Relaxed);
            let refuse =
                self.overloaded_for.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
            if refuse.is_ok() {
                return Err(ragd_core::status::resource_exhausted(
                    "the fake embedder is overloaded",
                    Duration::from_millis(5),
                ));
            }
            if let Some(code) = *self.fail_with.lock().expect("lock") {
                return Err(tonic::Status::new(code, "the fake embedder was told to fail"));
            }
            let mut out: Vec<Vec<f32>> = texts
                .iter()
                .map(|t| {
                    let mut v = vec![0.0; DIM];
                    v[slot(t)] = 1.0;
                    v
                })
                .collect();
            if self.answer_short.load(Ordering::Relaxed) {
                out.pop();
            }
            Ok(out)
        }
    }

    struct Fixture {
        indexer: Indexer,
        fake: Arc<FakeEmbedder>,
        _dir: tempfile::TempDir,
    }

    /// The fixtures' limits: small enough for the bad-input tests to reach.
    fn limits() -> IndexerLimits {
        IndexerLimits {
            max_k: 10,
            max_queries: 4,
            max_documents_per_request: 100,
            max_shards: 4,
            indexing_threshold_kb: None,
            status_capacity: 1000,
            max_queue_wait: None,
        }
    }

    async fn fixture(exact: bool) -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn VectorStore> =
            Arc::new(EdgeStore::new(&dir.path().join("shards")).expect("store"));
        let registry = Registry::load(dir.path()).expect("registry");
        let fake = Arc::new(FakeEmbedder::default());
        let limits = limits();
        let exact = exact.then_some(ExactSettings {
            precision: ExactPrecision::F32,
            max_batch: 16,
            max_wait: Duration::ZERO,
        });
        let indexer = Indexer::open(store, registry, fake.clone(), limits, exact).await.expect("open");
        Fixture { indexer, fake, _dir: dir }
    }

    fn create(name: &str, chunking: Chunking) -> CreateCollection {
        CreateCollection {
            name: name.into(),
            model: String::new(),
            distance: Distance::Cosine,
            shards: 2,
            chunking,
            replication_factor: None,
            write_consistency_factor: None,
            on_disk: None,
            keyword: None,
            max_chunks: None,
            exact: None,
            dim: None,
        }
    }

    fn doc(id: &str, text: &str) -> DocumentIn {
        DocumentIn { id: id.into(), text: text.into(), metadata: Map::new(), vector: None }
    }

    fn text(q: &str) -> QueryIn {
        QueryIn::Text(q.into())
    }

    fn options(k: usize, exact: bool) -> SearchOptions {
        SearchOptions { k, exact, ..SearchOptions::default() }
    }

    /// Two documents whose first words land in different slots of the fake's vectors.
    fn two_words() -> (&'static str, &'static str) {
        let (a, b) = ("alpha", "omega");
        assert_ne!(slot(a), slot(b), "the test's words must differ in the fake's rule");
        (a, b)
    }

    #[tokio::test]
    async fn upsert_then_search_finds_by_the_fakes_rule_in_both_engines() {
        for exact in [false, true] {
            let f = fixture(exact).await;
            let meta =
                f.indexer.create_collection(create("c", Chunking::default()), None).await.expect("create");
            assert_eq!((meta.model.as_str(), meta.store.dim), ("fake", DIM));
            let (a, b) = two_words();
            let docs = vec![doc("d-a", &format!("{a} one.")), doc("d-b", &format!("{b} two."))];
            let out = f.indexer.upsert("c", docs, None).await.expect("upsert");
            assert_eq!((out.documents, out.chunks, out.failed.len()), (2, 2, 0));
            let (hits, _) = f
                .indexer
                .search("c", vec![text(&format!("{b} query"))], options(2, exact), Retrieval::default(), None)
                .await
                .expect("search");
            assert_eq!(hits[0][0].doc_id, "d-b", "exact={exact}: {:?}", hits[0]);
            assert!((hits[0][0].score - 1.0).abs() < 1e-5, "cosine of identical one-hot vectors");
            assert!(hits[0].get(1).is_none_or(|h| h.score.abs() < 1e-5), "orthogonal: {:?}", hits[0]);
            let status = f.indexer.document_status("c", "d-a").await.expect("status");
            assert_eq!((status.state, status.chunks), (IngestState::Stored, 1));
        }
    }

    #[tokio::test]
    async fn a_shorter_reupsert_removes_the_old_extra_chunks() {
        let f = fixture(true).await;
        let one_sentence_chunks = Chunking::Sentences { size: 1, overlap: 0 };
        f.indexer.create_collection(create("c", one_sentence_chunks), None).await.expect("create");
        let out = f.indexer.upsert("c", vec![doc("d", "First one. Second one. Third one.")], None).await;
        assert_eq!(out.expect("upsert").chunks, 3);
        assert_eq!(f.indexer.store().count_chunks("c", "d").await.expect("count"), 3);
        let out = f.indexer.upsert("c", vec![doc("d", "Only one.")], None).await.expect("re-upsert");
        assert_eq!(out.chunks, 1);
        assert_eq!(f.indexer.store().count_chunks("c", "d").await.expect("count"), 1);
        // The exact mirror forgot the removed chunks too: only one hit is left for the document.
        let (hits, _) = f
            .indexer
            .search("c", vec![text("Second")], options(10, true), Retrieval::default(), None)
            .await
            .expect("search");
        assert_eq!(hits[0].len(), 1, "{:?}", hits[0]);
    }

    #[tokio::test]
    async fn token_windows_use_the_embedders_offsets() {
        let f = fixture(false).await;
        let windows = Chunking::Tokens { size: 4, overlap: 0 };
        f.indexer.create_collection(create("t", windows), None).await.expect("create");
        // 10 words in windows of 4: 3 chunks (4 + 4 + 2).
        let out = f.indexer.upsert("t", vec![doc("d", "a b c d e f g h i j")], None).await.expect("upsert");
        assert_eq!(out.chunks, 3);
        let too_big = Chunking::Tokens { size: 63, overlap: 0 };
        let err = f.indexer.create_collection(create("u", too_big), None).await.expect_err("above 64 - 2");
        assert_eq!(tonic::Status::from(err).code(), Code::InvalidArgument);
    }

    #[tokio::test]
    async fn delete_counts_each_existing_document_once() {
        let f = fixture(true).await;
        f.indexer.create_collection(create("c", Chunking::default()), None).await.expect("create");
        let docs = (0..6).map(|i| doc(&format!("d{i}"), &format!("word{i} text."))).collect();
        f.indexer.upsert("c", docs, None).await.expect("upsert");
        let ids: Vec<String> = ["d1", "d1", "d2", "missing"].iter().map(|s| s.to_string()).collect();
        assert_eq!(f.indexer.delete("c", &ids).await.expect("delete"), 2);
        assert_eq!(f.indexer.delete("c", &ids).await.expect("again"), 0, "already gone");
        assert_eq!(f.indexer.stats("c").await.expect("stats").documents, 4);
        let err = f.indexer.document_status("c", "d1").await.expect_err("deleted");
        assert_eq!(tonic::Status::from(err).code(), Code::NotFound);
        let (hits, _) = f
            .indexer
            .search("c", vec![text("word1")], options(10, true), Retrieval::default(), None)
            .await
            .expect("search");
        assert!(hits[0].iter().all(|h| h.doc_id != "d1" && h.doc_id != "d2"), "{:?}", hits[0]);
    }

    #[tokio::test]
    async fn an_embedder_failure_keeps_its_code_fails_the_documents_and_stores_nothing() {
        let f = fixture(false).await;
        f.indexer.create_collection(create("c", Chunking::default()), None).await.expect("create");
        *f.fake.fail_with.lock().expect("lock") = Some(Code::Unavailable);
        let err = f.indexer.upsert("c", vec![doc("d", "text.")], None).await.expect_err("embedder down");
        assert_eq!(tonic::Status::from(err).code(), Code::Unavailable);
        let status = f.indexer.document_status("c", "d").await.expect("status");
        assert_eq!(status.state, IngestState::Failed);
        assert_eq!(f.indexer.store().count_chunks("c", "d").await.expect("count"), 0);
        *f.fake.fail_with.lock().expect("lock") = None;
        f.fake.answer_short.store(true, Ordering::Relaxed);
        let err = f.indexer.upsert("c", vec![doc("d", "text.")], None).await.expect_err("short answer");
        assert_eq!(tonic::Status::from(err).code(), Code::Internal);
        let err = f
            .indexer
            .search("c", vec![text("q")], options(1, false), Retrieval::default(), None)
            .await
            .expect_err("short");
        assert_eq!(tonic::Status::from(err).code(), Code::Internal, "never an empty query vector");
    }

    #[tokio::test]
    async fn passages_refused_for_load_are_retried_after_the_hint_and_queries_are_not() {
        let f = fixture(false).await;
        f.indexer.create_collection(create("c", Chunking::default()), None).await.expect("create");
        let calls = f.fake.embed_calls.load(Ordering::Relaxed);
        f.fake.overloaded_for.store(2, Ordering::Relaxed);
        let out = f.indexer.upsert("c", vec![doc("d", "alpha text.")], None).await.expect("retried");
        assert_eq!(out.chunks, 1);
        assert_eq!(f.fake.embed_calls.load(Ordering::Relaxed) - calls, 3, "two refusals, one answer");
        f.fake.overloaded_for.store(1, Ordering::Relaxed);
        let err = f
            .indexer
            .search("c", vec![text("alpha")], options(1, false), Retrieval::default(), None)
            .await
            .expect_err("a query is not retried");
        assert_eq!(tonic::Status::from(err).code(), Code::ResourceExhausted);
        // A deadline too close for the hint: the refusal is the answer.
        f.fake.overloaded_for.store(1, Ordering::Relaxed);
        let soon = Some(Instant::now() + Duration::from_millis(2));
        let err = f.indexer.upsert("c", vec![doc("e", "beta text.")], soon).await.expect_err("no time");
        assert_eq!(tonic::Status::from(err).code(), Code::ResourceExhausted);
        let (hits, _) = f
            .indexer
            .search("c", vec![text("alpha")], options(1, false), Retrieval::default(), None)
            .await
            .expect("search");
        assert_eq!(hits[0][0].doc_id, "d");
    }

    #[tokio::test]
    async fn a_search_behind_more_work_than_the_bound_is_refused_at_once() {
        let mut f = fixture(false).await;
        f.indexer.create_collection(create("c", Chunking::default()), None).await.expect("create");
        f.indexer.upsert("c", vec![doc("d", "alpha text.")], None).await.expect("upsert");
        async fn search(
            i: &Indexer,
            deadline: Option<Instant>,
        ) -> Result<(Vec<Vec<Hit>>, SearchTimings), IndexError> {
            i.search("c", vec![text("alpha")], options(1, false), Retrieval::default(), deadline).await
        }
        f.indexer.limits.max_queue_wait = Some(Duration::from_millis(250));
        {
            // 1000 queries in flight at the starting estimate of 1000 queries/s: 1 s ahead.
            let _busy = f.indexer.searches.enter(1000);
            let status = tonic::Status::from(search(&f.indexer, None).await.expect_err("refused"));
            assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
            assert!(status.message().contains("above the bound of 250 ms"), "{status:?}");
            assert!(ragd_core::status::retry_after(&status).is_some(), "with a retry hint");
            // Within a 5 s bound, but not within a 500 ms deadline.
            f.indexer.limits.max_queue_wait = Some(Duration::from_secs(5));
            let soon = Some(Instant::now() + Duration::from_millis(500));
            let status = tonic::Status::from(search(&f.indexer, soon).await.expect_err("refused"));
            assert!(status.message().contains("deadline"), "{status:?}");
            // Off: the same search waits its turn.
            f.indexer.limits.max_queue_wait = None;
            search(&f.indexer, soon).await.expect("admitted with admission off");
        }
        // Nothing ahead: admitted.
        let (hits, _) = search(&f.indexer, None).await.expect("admitted");
        assert_eq!(hits[0][0].doc_id, "d");
        assert_eq!(f.indexer.searches.in_flight(), 0);
    }

    #[tokio::test]
    async fn bad_searches_are_invalid_argument_before_any_embedding() {
        let f = fixture(false).await;
        f.indexer.create_collection(create("c", Chunking::default()), None).await.expect("create");
        let calls = f.fake.embed_calls.load(Ordering::Relaxed);
        let field = |e: IndexError| match e {
            IndexError::InvalidArgument { field, .. } => field,
            other => panic!("{other:?}"),
        };
        let k0 = f
            .indexer
            .search("c", vec![text("q")], options(0, false), Retrieval::default(), None)
            .await
            .expect_err("k = 0");
        assert_eq!(field(k0), "k");
        let k_big = f
            .indexer
            .search("c", vec![text("q")], options(11, false), Retrieval::default(), None)
            .await
            .expect_err("k > max");
        assert_eq!(field(k_big), "k");
        let many = vec![text("q"); 5];
        assert_eq!(
            field(
                f.indexer
                    .search("c", many, options(1, false), Retrieval::default(), None)
                    .await
                    .expect_err("5 > 4")
            ),
            "queries"
        );
        let dim = vec![QueryIn::Vector(vec![1.0; DIM - 1])];
        assert_eq!(
            field(
                f.indexer
                    .search("c", dim, options(1, false), Retrieval::default(), None)
                    .await
                    .expect_err("dim")
            ),
            "queries"
        );
        let nan = vec![QueryIn::Vector(vec![f32::NAN; DIM])];
        assert_eq!(
            field(
                f.indexer
                    .search("c", nan, options(1, false), Retrieval::default(), None)
                    .await
                    .expect_err("NaN")
            ),
            "queries"
        );
        assert_eq!(f.fake.embed_calls.load(Ordering::Relaxed), calls, "nothing was embedded");
        let missing = f
            .indexer
            .search("nope", vec![text("q")], options(1, false), Retrieval::default(), None)
            .await
            .expect_err("none");
        assert_eq!(tonic::Status::from(missing).code(), Code::NotFound);
    }

    /// A collection created without a keyword index gets one: every chunk is rewritten, keyword
    /// search then works, a write racing the re-index is kept and indexed; bad settings, unknown
    /// collections and a passed deadline are refused, the last leaving the old settings.
    #[tokio::test]
    async fn keyword_reindex_adds_an_index_and_keeps_racing_writes() {
        let (a, b) = two_words();
        let f = fixture(false).await;
        f.indexer.create_collection(create("late", Chunking::default()), None).await.expect("create");
        let docs = vec![
            doc("a1", &format!("{a} pumps need care.")),
            doc("a2", &format!("{a} valves need care.")),
            doc("b1", &format!("{b} order zx4471 shipped.")),
        ];
        f.indexer.upsert("late", docs, None).await.expect("upsert");
        let keyword = Retrieval { mode: SearchMode::Keyword, ..Retrieval::default() };
        let search =
            |q: &'static str| f.indexer.search("late", vec![text(q)], options(4, false), keyword, None);
        let err = search("zx4471").await.expect_err("no index yet");
        assert_eq!(tonic::Status::from(err).code(), Code::FailedPrecondition);

        // A passed deadline: refused before any page, the collection still without an index.
        let err = f
            .indexer
            .reindex_keywords("late", KeywordRequest::default(), Some(Instant::now()))
            .await
            .expect_err("deadline");
        assert_eq!(tonic::Status::from(err).code(), Code::DeadlineExceeded);
        assert!(f.indexer.collection("late").expect("meta").keyword.is_none());

        // The re-index and an upsert of a new document at once: both finish, nothing is lost.
        let racing = f.indexer.upsert("late", vec![doc("b2", &format!("{b} invoice zx4471 paid."))], None);
        let reindex = f.indexer.reindex_keywords("late", KeywordRequest::default(), None);
        let (racing, reindex) = tokio::join!(racing, reindex);
        assert_eq!(racing.expect("upsert").documents, 1);
        let (meta, rewritten) = reindex.expect("reindex");
        assert!(meta.keyword.is_some());
        // Three or four chunks, by whether the upsert went first.
        assert!((3..=4).contains(&rewritten), "{rewritten}");
        let mut found: Vec<String> =
            search("zx4471").await.expect("keyword search").0[0].iter().map(|h| h.doc_id.clone()).collect();
        found.sort();
        assert_eq!(found, vec!["b1", "b2"]);
        assert_eq!(f.indexer.stats("late").await.expect("stats").points, 4);

        // Bad settings name their field; unknown collections are NOT_FOUND.
        let bad = KeywordRequest { b: Some(3.0), ..KeywordRequest::default() };
        let err = f.indexer.reindex_keywords("late", bad, None).await.expect_err("b = 3");
        assert!(matches!(err, IndexError::InvalidArgument { field: "keyword.b", .. }), "{err:?}");
        let err =
            f.indexer.reindex_keywords("nope", KeywordRequest::default(), None).await.expect_err("unknown");
        assert_eq!(tonic::Status::from(err).code(), Code::NotFound);
    }

    /// Sorted `(doc_id, chunk, score)` of every query's hits: the answers of a collection,
    /// compared across collections without depending on how ties are ordered.
    async fn answers(indexer: &Indexer, collection: &str, exact: bool) -> Vec<Vec<(String, u32, i64)>> {
        let mut out = Vec::new();
        for q in ["alpha x", "omega x", "delta x", "kappa x"] {
            for mode in [SearchMode::Dense, SearchMode::Keyword] {
                let retrieval = Retrieval { mode, ..Retrieval::default() };
                let (hits, _) = indexer
                    .search(collection, vec![text(q)], options(10, exact), retrieval, None)
                    .await
                    .expect("search");
                let mut v: Vec<_> = hits[0]
                    .iter()
                    .map(|h| (h.doc_id.clone(), h.chunk, (h.score * 1e4).round() as i64))
                    .collect();
                v.sort();
                out.push(v);
            }
        }
        out
    }

    /// A snapshot restored under a new name has the original's settings and answers every
    /// search (dense, keyword; HNSW and the exact engine) as the original does, also after a
    /// restart; the snapshot outlives the collection it was taken of.
    #[tokio::test]
    async fn a_restored_snapshot_answers_as_the_original() {
        for exact in [false, true] {
            let f = fixture(exact).await;
            let mut req = create("c", Chunking::Sentences { size: 1, overlap: 0 });
            req.keyword = Some(KeywordRequest::default());
            let original = f.indexer.create_collection(req, None).await.expect("create");
            let docs = vec![
                doc("d1", "alpha pumps need care. omega valves leak."),
                doc("d2", "omega order shipped."),
                doc("d3", "delta invoices are paid. alpha again."),
                doc("d4", "kappa kappa kappa."),
            ];
            f.indexer.upsert("c", docs, None).await.expect("upsert");
            let before = answers(&f.indexer, "c", exact).await;
            // The fake's rule: the two chunks starting with "alpha" have cosine 1 with the query.
            let ones: Vec<_> =
                before[0].iter().filter(|h| h.2 == 10_000).map(|h| (h.0.as_str(), h.1)).collect();
            assert_eq!(ones, [("d1", 0), ("d3", 1)], "{:?}", before[0]);

            let taken = f.indexer.create_snapshot("c", Some("s1".into()), None).await.expect("snapshot");
            assert_eq!((taken.name.as_str(), taken.collection(), taken.points), ("s1", "c", 6));
            assert!(taken.size_bytes > 0);
            let restored = f.indexer.restore_snapshot("c", "s1", Some("r")).await.expect("restore");
            let mut expected = original.clone();
            expected.store.name = "r".into();
            assert_eq!(restored, expected, "the same settings under the new name");
            assert_eq!(answers(&f.indexer, "r", exact).await, before, "exact={exact}");
            assert_eq!(f.indexer.stats("r").await.expect("stats").points, 6);

            // The two are independent: writes to the copy do not reach the original.
            f.indexer.upsert("r", vec![doc("d5", "alpha more.")], None).await.expect("upsert copy");
            assert_eq!(answers(&f.indexer, "c", exact).await, before);

            // Dropped, the original comes back from its snapshot under its own name.
            f.indexer.drop_collection("c").await.expect("drop");
            assert_eq!(f.indexer.list_snapshots(Some("c")).await.expect("list").len(), 1);
            f.indexer.restore_snapshot("c", "s1", None).await.expect("restore under its own name");
            assert_eq!(answers(&f.indexer, "c", exact).await, before);

            // After a restart (the journal and registry of both restores read back).
            let Fixture { indexer, _dir: dir, .. } = f;
            drop(indexer);
            let store: Arc<dyn VectorStore> =
                Arc::new(EdgeStore::new(&dir.path().join("shards")).expect("store"));
            let registry = Registry::load(dir.path()).expect("registry");
            let settings = exact.then_some(ExactSettings {
                precision: ExactPrecision::F32,
                max_batch: 16,
                max_wait: Duration::ZERO,
            });
            let fake = Arc::new(FakeEmbedder::default());
            let indexer = Indexer::open(store, registry, fake, limits(), settings).await.expect("reopen");
            assert_eq!(answers(&indexer, "c", exact).await, before, "after a restart");
            assert_eq!(indexer.stats("r").await.expect("stats").points, 7, "the copy kept its own write");
        }
    }

    /// Documents keep arriving (one at a time, each three chunks) while a snapshot is taken:
    /// the snapshot holds whole documents of one moment — exactly the first m, where m is at
    /// least what was acknowledged before the snapshot began and at most what was sent before it
    /// ended — and no write failed.
    #[tokio::test]
    async fn a_snapshot_taken_during_ingest_holds_whole_documents_of_one_moment() {
        let f = fixture(false).await;
        f.indexer
            .create_collection(create("c", Chunking::Sentences { size: 1, overlap: 0 }), None)
            .await
            .expect("create");
        let acked = AtomicUsize::new(0);
        let stop = std::sync::atomic::AtomicBool::new(false);
        let writer = async {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let d = doc(&format!("w{i}"), "alpha one. omega two. delta three.");
                let out = f.indexer.upsert("c", vec![d], None).await.expect("every write succeeds");
                assert_eq!(out.chunks, 3);
                i += 1;
                acked.store(i, Ordering::Relaxed);
                tokio::task::yield_now().await;
            }
            i
        };
        let snapshots = async {
            // Let some documents in first.
            while acked.load(Ordering::Relaxed) < 5 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let mut taken = Vec::new();
            for s in 0..3 {
                let low = acked.load(Ordering::Relaxed);
                let m = f.indexer.create_snapshot("c", Some(format!("s{s}")), None).await.expect("snapshot");
                // One document may have been sent (not yet acknowledged) when the snapshot ended.
                let high = acked.load(Ordering::Relaxed) + 1;
                taken.push((m, low, high));
            }
            stop.store(true, Ordering::Relaxed);
            taken
        };
        let (sent, taken) = tokio::join!(writer, snapshots);
        assert!(sent >= 5);
        for (m, low, high) in taken {
            let target = format!("r-{}", m.name);
            f.indexer.restore_snapshot("c", &m.name, Some(&target)).await.expect("restore");
            let mut present = Vec::new();
            for i in 0..sent {
                let chunks = f.indexer.store().count_chunks(&target, &format!("w{i}")).await.expect("count");
                assert!(chunks == 0 || chunks == 3, "w{i} has {chunks} of its 3 chunks in {}", m.name);
                present.push(chunks == 3);
            }
            let count = present.iter().take_while(|p| **p).count();
            assert!(present[count..].iter().all(|p| !p), "{}: not a prefix: {present:?}", m.name);
            assert!((low..=high).contains(&count), "{}: {count} documents, outside {low}..={high}", m.name);
            assert_eq!(m.points, 3 * count as u64, "the manifest counts the same moment");
        }
    }

    #[tokio::test]
    async fn snapshot_mistakes_get_their_codes() {
        let f = fixture(false).await;
        f.indexer.create_collection(create("c", Chunking::default()), None).await.expect("create");
        let code = |e: IndexError| tonic::Status::from(e).code();
        let err = f.indexer.create_snapshot("nope", None, None).await.expect_err("unknown collection");
        assert_eq!(code(err), Code::NotFound);
        let err = f.indexer.create_snapshot("c", Some("../x".into()), None).await.expect_err("bad name");
        assert!(matches!(err, IndexError::InvalidArgument { field: "name", .. }), "{err:?}");
        let err = f.indexer.create_snapshot("../c", None, None).await.expect_err("bad collection");
        assert!(matches!(err, IndexError::InvalidArgument { field: "name", .. }), "{err:?}");
        let first = f.indexer.create_snapshot("c", None, None).await.expect("default name");
        assert!(first.name.starts_with("c-20"), "{}", first.name);
        let err = f.indexer.create_snapshot("c", Some(first.name.clone()), None).await.expect_err("taken");
        assert_eq!(code(err), Code::AlreadyExists);
        let err = f.indexer.restore_snapshot("c", &first.name, None).await.expect_err("c exists");
        assert_eq!(code(err), Code::AlreadyExists);
        let err = f.indexer.restore_snapshot("c", "none", Some("new")).await.expect_err("no snapshot");
        assert_eq!(code(err), Code::NotFound);
        let err = f.indexer.restore_snapshot("c", &first.name, Some("bad name")).await.expect_err("bad");
        assert!(matches!(err, IndexError::InvalidArgument { field: "name", .. }), "{err:?}");
        assert!(f.indexer.collection("new").is_err(), "nothing was created");
        // A write in flight past the caller's deadline: DEADLINE_EXCEEDED, nothing left behind.
        let gate = f.indexer.gate("c");
        let write_in_flight = gate.read().await;
        let soon = Some(Instant::now() + Duration::from_millis(20));
        let err = f.indexer.create_snapshot("c", Some("late".into()), soon).await.expect_err("deadline");
        assert_eq!(code(err), Code::DeadlineExceeded);
        drop(write_in_flight);
        let err = f.indexer.snapshot("c", "late").await.expect_err("no half snapshot");
        assert_eq!(code(err), Code::NotFound);
        f.indexer.create_snapshot("c", Some("late".into()), None).await.expect("the name is free");
        f.indexer.delete_snapshot("c", &first.name).await.expect("delete");
        let err = f.indexer.delete_snapshot("c", &first.name).await.expect_err("gone");
        assert_eq!(code(err), Code::NotFound);
        let names: Vec<String> =
            f.indexer.list_snapshots(None).await.expect("list").into_iter().map(|m| m.name).collect();
        assert_eq!(names, ["late"]);
    }

    /// A collection whose storage predates keyword search (registry `sparse: false`, storage
    /// without the keyword vector) is rebuilt with it: every chunk kept (text, metadata, dense
    /// vector), keyword search works, and all of it survives a restart.
    #[tokio::test]
    async fn keyword_reindex_rebuilds_storage_made_before_keyword_search() {
        let (a, b) = two_words();
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = StoreSpec {
            name: "old".into(),
            dim: DIM,
            distance: Distance::Cosine,
            shards: 2,
            indexing_threshold_kb: None,
            replication_factor: None,
            write_consistency_factor: None,
            on_disk: None,
            sparse: false,
        };
        let open = || async {
            let store: Arc<dyn VectorStore> =
                Arc::new(EdgeStore::new(&dir.path().join("shards")).expect("store"));
            let registry = Registry::load(dir.path()).expect("registry");
            Indexer::open(store, registry, Arc::new(FakeEmbedder::default()), limits(), None)
                .await
                .expect("open")
        };
        // Storage made by an older ragd: created, flushed and closed before this one opens it.
        {
            let old = EdgeStore::new(&dir.path().join("shards")).expect("store");
            old.create(&spec).await.expect("create old storage");
            old.flush().await.expect("flush");
            Registry::load(dir.path())
                .expect("registry")
                .insert(CollectionMeta {
                    store: spec,
                    model: "fake".into(),
                    chunking: Chunking::default(),
                    keyword: None,
                    max_chunks: None,
                    exact: None,
                })
                .expect("register");
        }
        let indexer = open().await;
        let docs = vec![
            doc("a1", &format!("{a} pumps need care.")),
            doc("a2", &format!("{a} valves need care.")),
            doc("b1", &format!("{b} order zx4471 shipped.")),
        ];
        indexer.upsert("old", docs, None).await.expect("upsert");
        let keyword = Retrieval { mode: SearchMode::Keyword, ..Retrieval::default() };
        let status = tonic::Status::from(
            indexer
                .search("old", vec![text("zx4471")], options(4, false), keyword, None)
                .await
                .expect_err("none yet"),
        );
        assert_eq!(status.code(), Code::FailedPrecondition);

        let (meta, chunks) =
            indexer.reindex_keywords("old", KeywordRequest::default(), None).await.expect("rebuild");
        assert!(meta.store.sparse && meta.keyword.is_some());
        assert_eq!(chunks, 3);
        let check = |indexer: Indexer, points: u64| async move {
            let (hits, _) = indexer
                .search("old", vec![text("zx4471")], options(4, false), keyword, None)
                .await
                .expect("keyword");
            assert_eq!(hits[0].iter().map(|h| h.doc_id.as_str()).collect::<Vec<_>>(), vec!["b1"]);
            assert_eq!(hits[0][0].text, format!("{b} order zx4471 shipped."));
            // Dense search by the fake's rule still finds the `a` documents first.
            let (hits, _) = indexer
                .search("old", vec![text(&format!("{a} x"))], options(3, false), Retrieval::default(), None)
                .await
                .expect("dense");
            assert!(hits[0][0].doc_id.starts_with('a') && hits[0].len() == 3, "{:?}", hits[0]);
            assert_eq!(indexer.stats("old").await.expect("stats").points, points);
            indexer
        };
        let indexer = check(indexer, 3).await;
        // Writes after the rebuild carry keyword weights too.
        indexer
            .upsert("old", vec![doc("b2", &format!("{b} invoice zx9 paid."))], None)
            .await
            .expect("upsert");
        drop(indexer);
        // A restart opens the rebuilt storage with the new registry entry; nothing is left over.
        let indexer = check(open().await, 4).await;
        let (hits, _) = indexer
            .search("old", vec![text("zx9")], options(4, false), keyword, None)
            .await
            .expect("keyword");
        assert_eq!(hits[0].iter().map(|h| h.doc_id.as_str()).collect::<Vec<_>>(), vec!["b2"]);
        let leftovers: Vec<String> = std::fs::read_dir(dir.path().join("shards"))
            .expect("dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".rebuild") || n.starts_with(".retired"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    /// `max_chunks` keeps each document's first chunks only; a re-upsert removes the rest.
    #[tokio::test]
    async fn max_chunks_keeps_the_first_chunks() {
        let f = fixture(false).await;
        let one_sentence = Chunking::Sentences { size: 1, overlap: 0 };
        let create = CreateCollection { max_chunks: Some(2), ..create("short", one_sentence) };
        let meta = f.indexer.create_collection(create, None).await.expect("create");
        assert_eq!(meta.max_chunks, Some(2));
        let out =
            f.indexer.upsert("short", vec![doc("d", "One. Two. Three. Four.")], None).await.expect("upsert");
        assert_eq!(out.chunks, 2);
        assert_eq!(f.indexer.stats("short").await.expect("stats").points, 2);
        let (hits, _) = f
            .indexer
            .search("short", vec![text("One")], options(5, true), Retrieval::default(), None)
            .await
            .expect("search");
        let mut texts: Vec<&str> = hits[0].iter().map(|h| h.text.as_str()).collect();
        texts.sort();
        assert_eq!(texts, vec!["One.", "Two."]);
    }

    #[tokio::test]
    async fn keyword_hybrid_and_mmr_by_the_fakes_rule() {
        let (a, b) = two_words();
        let f = fixture(false).await;
        let with_keywords =
            CreateCollection { keyword: Some(KeywordRequest::default()), ..create("k", Chunking::default()) };
        f.indexer.create_collection(with_keywords, None).await.expect("create");
        let docs = vec![
            doc("a1", &format!("{a} pumps need care.")),
            doc("a2", &format!("{a} valves need care.")),
            doc("a3", &format!("{a} gaskets need care.")),
            doc("b1", &format!("{b} order zx4471 shipped.")),
        ];
        f.indexer.upsert("k", docs, None).await.expect("upsert");
        let run = |q: String, k: usize, retrieval: Retrieval| {
            let indexer = &f.indexer;
            async move {
                let (mut hits, _) = indexer
                    .search("k", vec![text(&q)], options(k, false), retrieval, None)
                    .await
                    .expect("search");
                hits.remove(0)
            }
        };
        let ids = |hits: &[Hit]| hits.iter().map(|h| h.doc_id.clone()).collect::<Vec<_>>();
        // Keyword: only b1 has the part number.
        let keyword = Retrieval { mode: SearchMode::Keyword, ..Retrieval::default() };
        assert_eq!(ids(&run("zx4471 shipped".into(), 4, keyword).await), vec!["b1"]);
        // Dense by the fake's rule: the query's first word is `a`, so b1 (cosine 0) comes last.
        let dense = run(format!("{a} zx4471"), 3, Retrieval::default()).await;
        assert!(!ids(&dense).contains(&"b1".to_string()), "{:?}", ids(&dense));
        // Hybrid: b1 is in the keyword list (the `a` documents are too, by their first word) and
        // makes the top 3.
        let hybrid = Retrieval { mode: SearchMode::Hybrid, ..Retrieval::default() };
        let fused = run(format!("{a} zx4471"), 3, hybrid).await;
        let b1 = fused.iter().find(|h| h.doc_id == "b1").expect("hybrid finds b1");
        assert!(b1.sources.iter().any(|s| s.source == crate::store::Source::Keyword), "{b1:?}");
        // MMR: the `a` documents have the same vector; with λ = 0.6 the second pick is b1
        // (0.4·0 − 0.6·0 = 0 beats 0.4·1 − 0.6·1 = −0.2).
        let mmr =
            Retrieval { mmr: Some(Mmr { diversity: 0.6, candidates: Some(4) }), ..Retrieval::default() };
        let diverse = run(a.to_string(), 2, mmr).await;
        assert_eq!(diverse.len(), 2);
        assert!(diverse[0].doc_id.starts_with('a') && diverse[1].doc_id == "b1", "{:?}", ids(&diverse));
        // A collection without a keyword index: FAILED_PRECONDITION naming the mode.
        f.indexer.create_collection(create("plain", Chunking::default()), None).await.expect("create");
        let err = f
            .indexer
            .search("plain", vec![text("q")], options(1, false), keyword, None)
            .await
            .expect_err("no index");
        let status = tonic::Status::from(err);
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert!(status.message().starts_with("mode:"), "{}", status.message());
    }

    /// **Test double of a reranker**: scores a text by its number of `!` (its own rule), or
    /// fails as told.
    #[derive(Debug)]
    struct FakeReranker(Option<fn() -> crate::rerank::RerankError>);

    #[tonic::async_trait]
    impl Reranker for FakeReranker {
        async fn rerank(
            &self,
            _: &str,
            texts: &[String],
            _: Option<Instant>,
        ) -> Result<Vec<f32>, crate::rerank::RerankError> {
            match self.0 {
                Some(fail) => Err(fail()),
                None => Ok(texts.iter().map(|t| t.matches('!').count() as f32).collect()),
            }
        }
    }

    #[tokio::test]
    async fn rerank_orders_by_the_fake_rerankers_rule_and_keeps_its_failure_codes() {
        let (a, _) = two_words();
        let mut f = fixture(false).await;
        f.indexer.reranker = Some(Arc::new(FakeReranker(None)));
        f.indexer.create_collection(create("r", Chunking::default()), None).await.expect("create");
        let docs = vec![
            doc("one", &format!("{a} one!")),
            doc("three", &format!("{a} three!!!")),
            doc("none", &format!("{a} none.")),
        ];
        f.indexer.upsert("r", docs, None).await.expect("upsert");
        let rerank = Retrieval { rerank: Some(Rerank { candidates: Some(3) }), ..Retrieval::default() };
        let (hits, _) =
            f.indexer.search("r", vec![text(a)], options(2, false), rerank, None).await.expect("search");
        let got: Vec<(&str, f32)> = hits[0].iter().map(|h| (h.doc_id.as_str(), h.score)).collect();
        assert_eq!(got, vec![("three", 3.0), ("one", 1.0)]);
        assert_eq!(
            hits[0][0].sources.iter().map(|s| s.source).collect::<Vec<_>>(),
            vec![Source::Retrieval, Source::Rerank]
        );
        f.indexer.reranker =
            Some(Arc::new(FakeReranker(Some(|| crate::rerank::RerankError::Overloaded("full".into())))));
        let err =
            f.indexer.search("r", vec![text(a)], options(2, false), rerank, None).await.expect_err("fails");
        assert_eq!(tonic::Status::from(err).code(), Code::ResourceExhausted);
        f.indexer.reranker = None;
        let err =
            f.indexer.search("r", vec![text(a)], options(2, false), rerank, None).await.expect_err("none");
        let status = tonic::Status::from(err);
        assert!(
            status.code() == Code::FailedPrecondition && status.message().starts_with("rerank:"),
            "{status:?}"
        );
    }

    /// A collection's exact storage: the server's default or what CreateCollection asks for,
    /// checked (field named), shown with its size, kept across a restart; an int8 collection
    /// with rescoring answers exact searches as the f32 one does.
    #[tokio::test]
    async fn exact_storage_is_per_collection_checked_sized_and_kept() {
        let f = fixture(true).await;
        let asked = |precision, rescore| CreateCollection {
            exact: Some(ExactRequest { precision, rescore }),
            ..create("small", Chunking::default())
        };
        for (bad, why) in [
            (asked(Some(ExactPrecision::Int8), MAX_RESCORE + 1), "above the most"),
            (asked(Some(ExactPrecision::F32), 2), "rescoring f32"),
            (asked(None, 2), "rescoring the server's default, f32"),
        ] {
            let err = f.indexer.create_collection(bad, None).await.expect_err(why);
            assert!(
                matches!(err, IndexError::InvalidArgument { field: "exact.rescore", .. }),
                "{why}: {err:?}"
            );
        }
        let plain =
            f.indexer.create_collection(create("plain", Chunking::default()), None).await.expect("plain");
        assert_eq!(plain.exact, Some(ExactStorage { precision: ExactPrecision::F32, rescore: 0 }));
        let small =
            f.indexer.create_collection(asked(Some(ExactPrecision::Int8), 4), None).await.expect("int8");
        assert_eq!(small.exact, Some(ExactStorage { precision: ExactPrecision::Int8, rescore: 4 }));
        let words = ["alpha", "omega", "delta", "kappa", "sigma", "gamma"];
        let docs: Vec<DocumentIn> =
            words.iter().enumerate().map(|(i, w)| doc(&format!("d{i}"), &format!("{w} {i}."))).collect();
        for c in ["plain", "small"] {
            f.indexer.upsert(c, docs.clone(), None).await.expect("upsert");
        }
        async fn answers(indexer: &Indexer, c: &str, words: &[&str]) -> Vec<Vec<(String, i64)>> {
            let mut out = Vec::new();
            for w in words {
                let (hits, _) = indexer
                    .search(c, vec![text(&format!("{w} x"))], options(3, true), Retrieval::default(), None)
                    .await
                    .expect("search");
                // The fake's one-hot vectors: the matches score 1, the rest tie at 0 (in any order).
                let matched = hits[0].iter().filter(|h| h.score > 1e-3);
                out.push(matched.map(|h| (h.doc_id.clone(), (h.score * 1e4).round() as i64)).collect());
            }
            out
        }
        let want = answers(&f.indexer, "plain", &words).await;
        assert!(want.iter().all(|hits| !hits.is_empty()), "every word finds its document: {want:?}");
        assert_eq!(answers(&f.indexer, "small", &words).await, want);
        let stride = ragd_exact::kernel::stride(DIM);
        let (p, s) = (
            f.indexer.exact_footprint("plain").expect("mirrored"),
            f.indexer.exact_footprint("small").expect("mirrored"),
        );
        assert_eq!((p.bytes_per_vector, s.bytes_per_vector), (stride * 4, stride));
        // int8 with rescoring keeps the f32 rows too: more resident than f32 alone.
        assert!(s.resident_bytes > p.resident_bytes, "{s:?} vs {p:?}");

        let Fixture { indexer, _dir: dir, .. } = f;
        drop(indexer);
        let store: Arc<dyn VectorStore> =
            Arc::new(EdgeStore::new(&dir.path().join("shards")).expect("store"));
        let registry = Registry::load(dir.path()).expect("registry");
        // A different server default now: the collections keep what they were made with.
        let settings =
            ExactSettings { precision: ExactPrecision::Bf16, max_batch: 16, max_wait: Duration::ZERO };
        let fake = Arc::new(FakeEmbedder::default());
        let indexer = Indexer::open(store, registry, fake, limits(), Some(settings)).await.expect("reopen");
        assert_eq!(indexer.exact_footprint("small").expect("mirrored").storage, s.storage);
        assert_eq!(indexer.exact_footprint("plain").expect("mirrored").storage, p.storage);
        assert_eq!(answers(&indexer, "small", &words).await, want, "after a restart");
    }

    fn with_vector(id: &str, text: &str, vector: Vec<f32>) -> DocumentIn {
        DocumentIn { vector: Some(vector), ..doc(id, text) }
    }

    fn axis(i: usize, dim: usize) -> Vec<f32> {
        let mut v = vec![0.0; dim];
        v[i] = 1.0;
        v
    }

    /// A collection of vectors brought by the user: no model (the embedder is never asked), the
    /// dimension checked at creation and on every document, bad vectors refuse the whole request
    /// before anything is stored, text queries are refused, vector queries find by the vectors.
    #[tokio::test]
    async fn vectors_brought_by_the_user_are_checked_stored_as_given_and_searched() {
        for exact in [false, true] {
            let f = fixture(exact).await;
            let vectors = |dim| CreateCollection { dim: Some(dim), ..create("v", Chunking::default()) };
            for (bad, field) in [
                (CreateCollection { model: "fake".into(), ..vectors(3) }, "dim"),
                (vectors(0), "dim"),
                (vectors(MAX_DIM + 1), "dim"),
                (
                    CreateCollection { chunking: Chunking::Tokens { size: 4, overlap: 0 }, ..vectors(3) },
                    "chunking",
                ),
            ] {
                let err = f.indexer.create_collection(bad, None).await.expect_err(field);
                assert!(
                    matches!(&err, IndexError::InvalidArgument { field: f, .. } if *f == field),
                    "{err:?}"
                );
            }
            let meta = f.indexer.create_collection(vectors(3), None).await.expect("create");
            assert_eq!((meta.model.as_str(), meta.store.dim), ("", 3));
            let calls = f.fake.embed_calls.load(Ordering::Relaxed);
            let good = vec![
                with_vector("x", "", vec![2.0, 0.0, 0.0]),
                with_vector("y", "the y axis", vec![0.0, 0.5, 0.0]),
                with_vector("z", "", vec![0.0, 0.0, -3.0]),
            ];
            for (bad, why) in [
                (with_vector("short", "", vec![1.0, 0.0]), "dimension 2, the collection's is 3"),
                (with_vector("nan", "", vec![1.0, f32::NAN, 0.0]), "value 1 is NaN"),
                (with_vector("inf", "", vec![f32::INFINITY, 0.0, 0.0]), "value 0 is inf"),
                (with_vector("huge", "", vec![1e20, 0.0, 0.0]), "squared norm overflows"),
                (doc("text-only", "no vector here"), "carries no vector"),
            ] {
                let mut docs = good.clone();
                docs.push(bad.clone());
                let err = f.indexer.upsert("v", docs, None).await.expect_err(why);
                let IndexError::InvalidArgument { field: "documents", reason } = &err else {
                    panic!("{err:?}")
                };
                assert!(
                    reason.contains(&format!("document 3 (\"{}\")", bad.id)) && reason.contains(why),
                    "{reason}"
                );
            }
            let stored =
                f.indexer.store().count_documents("v", &["x".into(), "y".into()]).await.expect("count");
            assert_eq!(stored, 0, "a refused request stores nothing");
            let out = f.indexer.upsert("v", good, None).await.expect("upsert");
            assert_eq!((out.documents, out.chunks, out.failed.len()), (3, 3, 0));
            assert_eq!(f.fake.embed_calls.load(Ordering::Relaxed), calls, "nothing was embedded");
            // Cosine: the query (0.1, 1, 0) is nearest y, then x (z is orthogonal to both but
            // negative along nothing it shares: score 0).
            let query = QueryIn::Vector(vec![0.1, 1.0, 0.0]);
            let (hits, _) = f
                .indexer
                .search("v", vec![query], options(3, exact), Retrieval::default(), None)
                .await
                .expect("search");
            let got: Vec<(&str, i64)> =
                hits[0].iter().map(|h| (h.doc_id.as_str(), (h.score * 1e4).round() as i64)).collect();
            // cos((0.1,1,0),(0,1,0)) = 1/sqrt(1.01) = 0.99504; with (1,0,0): 0.1/sqrt(1.01) = 0.09950.
            assert_eq!(got, [("y", 9950), ("x", 995), ("z", 0)]);
            assert_eq!(hits[0][0].text, "the y axis");
            let err = f
                .indexer
                .search("v", vec![text("y axis")], options(3, exact), Retrieval::default(), None)
                .await
                .expect_err("text query");
            assert!(matches!(err, IndexError::FailedPrecondition { field: "queries", .. }), "{err:?}");

            if exact {
                // Exact storage in f16 keeps raw values for dot products (cosine normalises them
                // first): beyond ±65504 a value cannot be stored, so the request is refused
                // before the store sees it; cosine f16 collections take the same vector.
                let f16 = |name: &str, distance| CreateCollection {
                    distance,
                    exact: Some(ExactRequest { precision: Some(ExactPrecision::F16), rescore: 0 }),
                    ..CreateCollection { dim: Some(3), ..create(name, Chunking::default()) }
                };
                f.indexer.create_collection(f16("h", Distance::Dot), None).await.expect("f16 dot");
                f.indexer.create_collection(f16("hc", Distance::Cosine), None).await.expect("f16 cos");
                let big = vec![
                    with_vector("ok", "", vec![1.0, 2.0, 3.0]),
                    with_vector("big", "", vec![0.0, 7e4, 0.0]),
                ];
                let err = f.indexer.upsert("h", big.clone(), None).await.expect_err("beyond f16");
                let IndexError::InvalidArgument { field: "documents", reason } = &err else {
                    panic!("{err:?}")
                };
                assert!(reason.contains("document 1 (\"big\")") && reason.contains("f16 range"), "{reason}");
                let stored = f.indexer.store().count_documents("h", &["ok".into()]).await.expect("count");
                assert_eq!(stored, 0, "a refused request stores nothing");
                let out = f.indexer.upsert("hc", big, None).await.expect("cosine f16 takes it");
                assert_eq!((out.documents, out.failed.len()), (2, 0));
            }
        }
    }

    /// A model's collection takes documents with vectors next to documents with text in one
    /// request: the text is chunked and embedded, the vector is stored as the document's one
    /// chunk (its text kept, not embedded); GetDocument returns each document's chunks in order.
    #[tokio::test]
    async fn documents_with_and_without_vectors_mix_and_get_document_returns_their_chunks() {
        let f = fixture(true).await;
        let one_sentence = Chunking::Sentences { size: 1, overlap: 0 };
        f.indexer.create_collection(create("m", one_sentence), None).await.expect("create");
        let (a, b) = two_words();
        // The vector doc's text starts with `a`, but its vector is b's axis: it is found by b.
        let docs = vec![
            doc("text", &format!("{a} one. {b} two. {a} three.")),
            with_vector("vec", &format!("{a} words, not embedded. A second sentence."), axis(slot(b), DIM)),
        ];
        let calls = f.fake.embed_calls.load(Ordering::Relaxed);
        let out = f.indexer.upsert("m", docs, None).await.expect("upsert");
        assert_eq!((out.documents, out.chunks), (2, 4));
        assert_eq!(f.fake.embed_calls.load(Ordering::Relaxed), calls + 1, "one call for the text's chunks");
        for exact in [false, true] {
            let (hits, _) = f
                .indexer
                .search("m", vec![text(&format!("{b} q"))], options(4, exact), Retrieval::default(), None)
                .await
                .expect("search");
            let mut matched: Vec<(&str, u32)> =
                hits[0].iter().filter(|h| h.score > 0.5).map(|h| (h.doc_id.as_str(), h.chunk)).collect();
            matched.sort();
            assert_eq!(matched, [("text", 1), ("vec", 0)], "exact {exact}");
        }
        let chunks = f.indexer.get_document("m", "text", true).await.expect("get");
        let got: Vec<(u32, &str, usize)> =
            chunks.iter().map(|c| (c.chunk, c.text.as_str(), slot_of(&c.vector))).collect();
        let three = [(0, format!("{a} one.")), (1, format!("{b} two.")), (2, format!("{a} three."))];
        let want: Vec<(u32, &str, usize)> = three.iter().map(|(i, t)| (*i, t.as_str(), slot(t))).collect();
        assert_eq!(got, want);
        let v = f.indexer.get_document("m", "vec", false).await.expect("get");
        assert_eq!(v.len(), 1);
        assert_eq!(
            (v[0].chunk, v[0].text.as_str()),
            (0, format!("{a} words, not embedded. A second sentence.").as_str())
        );
        assert!(v[0].vector.is_empty(), "no vectors unless asked");
        let err = f.indexer.get_document("m", "nope", false).await.expect_err("unknown");
        assert!(matches!(err, IndexError::DocumentNotFound { .. }), "{err:?}");
        let err = f.indexer.get_document("m", "", false).await.expect_err("empty id");
        assert!(matches!(err, IndexError::InvalidArgument { field: "id", .. }), "{err:?}");
        let err = f.indexer.get_document("missing", "text", false).await.expect_err("collection");
        assert!(matches!(err, IndexError::CollectionNotFound { .. }), "{err:?}");
        // Re-upserted shorter, with a vector: one chunk left.
        let again = with_vector("text", "", axis(slot(a), DIM));
        f.indexer.upsert("m", vec![again], None).await.expect("re-upsert");
        let c = f.indexer.get_document("m", "text", true).await.expect("get");
        assert_eq!(c.iter().map(|c| (c.chunk, slot_of(&c.vector))).collect::<Vec<_>>(), [(0, slot(a))]);
    }

    /// The one-hot slot of a stored vector (the fake's vectors, stored normalised: still one-hot).
    fn slot_of(v: &[f32]) -> usize {
        assert!(v.iter().filter(|x| **x != 0.0).count() == 1, "one-hot: {v:?}");
        v.iter().position(|x| *x != 0.0).expect("one-hot")
    }
}
