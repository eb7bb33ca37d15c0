//! Vector storage behind one trait: [`edge::EdgeStore`] runs the Qdrant engine in-process
//! (qdrant-edge, one on-disk shard directory per shard); [`remote::QdrantStore`] talks to a
//! Qdrant server or cluster over gRPC. ragd's collection metadata (model, chunking) lives in the collections registry; a
//! store only knows names, dimensions, distances and shard counts.

pub mod edge;
pub mod journal;
pub mod merge;
pub mod qdrant_rest;
pub mod remote;

use std::fmt::Debug;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::IndexError;
use crate::filter::Filter;

/// How vectors are compared. Scores: cosine and dot are similarities (higher is closer),
/// euclid is a distance (lower is closer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Distance {
    Cosine,
    Dot,
    Euclid,
}

impl Distance {
    /// True when a higher score is a closer match.
    pub fn higher_is_better(self) -> bool {
        !matches!(self, Distance::Euclid)
    }
}

/// What a store needs to know about a collection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoreSpec {
    pub name: String,
    pub dim: usize,
    pub distance: Distance,
    pub shards: u32,
    /// Vectors (in KiB of vector data) a segment holds before the optimizer builds its HNSW
    /// index; below it search is exact. None = Qdrant's default.
    #[serde(default)]
    pub indexing_threshold_kb: Option<usize>,
    /// Copies of each shard (Qdrant cluster only; the embedded store has one).
    #[serde(default)]
    pub replication_factor: Option<u32>,
    /// Replicas that must acknowledge a write (Qdrant cluster only).
    #[serde(default)]
    pub write_consistency_factor: Option<u32>,
    /// Keep vectors (and, on Qdrant, payloads) on disk, memory-mapped, instead of in RAM.
    #[serde(default)]
    pub on_disk: Option<bool>,
    /// The collection has the sparse vector [`KEYWORD_VECTOR`] (with Qdrant's IDF modifier)
    /// next to its dense vector. Every collection created since keyword search exists has it;
    /// older ones (false when read from an older registry) do not.
    #[serde(default)]
    pub sparse: bool,
}

/// Name of the sparse vector holding a chunk's BM25 term weights, in every store.
pub const KEYWORD_VECTOR: &str = "keyword";

/// A sparse vector: term ids (sorted, distinct) and their weights.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SparseVector {
    pub indices: Vec<u32>,
    pub values: Vec<f32>,
}

/// A chunk's payload, the same in every store: `{doc_id, chunk, text, metadata}`.
pub fn payload(p: &ChunkPoint) -> serde_json::Map<String, serde_json::Value> {
    let mut m = serde_json::Map::new();
    m.insert(crate::filter::DOC_ID.into(), p.doc_id.clone().into());
    m.insert(crate::filter::CHUNK.into(), p.chunk.into());
    m.insert("text".into(), p.text.clone().into());
    m.insert(crate::filter::METADATA.into(), serde_json::Value::Object(p.metadata.clone()));
    m
}

/// Rejects chunks whose vector is not of the collection's dimension (before anything is written).
pub fn check_vectors(points: &[ChunkPoint], dim: usize) -> Result<(), IndexError> {
    match points.iter().find(|p| p.vector.len() != dim) {
        Some(p) => Err(IndexError::invalid(
            "vector",
            format!("dimension {} does not match the collection's {dim}", p.vector.len()),
        )),
        None => Ok(()),
    }
}

/// Rejects query vectors not of the collection's dimension.
pub fn check_queries(queries: &[Vec<f32>], dim: usize) -> Result<(), IndexError> {
    match queries.iter().find(|q| q.len() != dim) {
        Some(q) => Err(IndexError::invalid(
            "queries",
            format!("vector dimension {} does not match the collection's {dim}", q.len()),
        )),
        None => Ok(()),
    }
}

/// Deterministic point id of a document chunk (UUID v5), so re-upserts overwrite, in every store.
pub fn point_uuid(doc_id: &str, chunk: u32) -> uuid::Uuid {
    let ns = uuid::Uuid::from_u128(0x6a1d_7c4e_2b9f_4e31_9d0a_5c8b_3f2e_1a70);
    uuid::Uuid::new_v5(&ns, format!("{doc_id}\u{0}{chunk}").as_bytes())
}

/// One stored chunk. Its payload is `{doc_id, chunk, text, metadata}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ChunkPoint {
    pub doc_id: String,
    pub chunk: u32,
    pub text: String,
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub vector: Vec<f32>,
    /// BM25 term weights, for a collection with a keyword index.
    pub sparse: Option<SparseVector>,
}

/// Search options shared by every query of a request.
#[derive(Debug, Clone, Default)]
pub struct SearchOptions {
    pub k: usize,
    /// Drop hits scoring below it (above it for euclid, a distance).
    pub score_threshold: Option<f32>,
    pub filter: Option<Filter>,
    /// Exact (brute-force) search instead of HNSW.
    pub exact: bool,
    pub hnsw_ef: Option<usize>,
}

/// The writes of one request, applied (and, on the embedded store, journalled) as one unit:
/// first the upserts, then the deletes of each `(doc_id, n)`'s chunks `n..` (what remains of a
/// longer old version of a re-upserted document), then the deletes of whole documents.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WriteBatch {
    pub upserts: Vec<ChunkPoint>,
    pub delete_chunks_from: Vec<(String, u32)>,
    pub delete_documents: Vec<String>,
}

/// What a store found and replayed when it opened (the embedded store's journal).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Journal records applied to the shards.
    pub records: u64,
    /// Chunks those records upserted.
    pub points: u64,
    /// Records of collections that no longer exist (skipped).
    pub skipped: u64,
    /// Records that failed to apply (logged with the reason).
    pub failed: u64,
    /// Bytes of a write torn by a crash (never acknowledged), dropped.
    pub torn_bytes: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub doc_id: String,
    pub chunk: u32,
    pub text: String,
    pub score: f32,
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// Where a fused hit stood in each list it was found in (empty unless fused).
    pub sources: Vec<SourceRank>,
}

impl Hit {
    /// The stored chunk this hit is, with `vector` as its dense vector (no keyword weights).
    pub fn into_point(self, vector: Vec<f32>) -> ChunkPoint {
        ChunkPoint {
            doc_id: self.doc_id,
            chunk: self.chunk,
            text: self.text,
            metadata: self.metadata,
            vector,
            sparse: None,
        }
    }
}

/// A hit's place in one list of a fusion.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SourceRank {
    pub source: Source,
    /// 1-based.
    pub rank: u32,
    pub score: f32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Dense,
    Keyword,
    /// The list a reranker was given (dense, keyword or fused), before reranking.
    Retrieval,
    /// The reranker's order and score.
    Rerank,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::Dense => "dense",
            Source::Keyword => "keyword",
            Source::Retrieval => "retrieval",
            Source::Rerank => "rerank",
        }
    }
}

/// A chunk text's keyword weights (the collection's analyzer).
pub type SparseOf = std::sync::Arc<dyn Fn(&str) -> SparseVector + Send + Sync>;

/// Chunks per page when every chunk's keyword weights are written again.
const REWEIGHT_PAGE: usize = 256;

/// Each point's keyword weights from its text, computed on the blocking pool (analysis is CPU
/// work proportional to the text).
pub async fn with_keyword_weights(
    sparse_of: SparseOf,
    mut points: Vec<ChunkPoint>,
) -> Result<Vec<ChunkPoint>, IndexError> {
    tokio::task::spawn_blocking(move || {
        for p in &mut points {
            p.sparse = Some(sparse_of(&p.text));
        }
        points
    })
    .await
    .map_err(|e| IndexError::Store(format!("keyword analysis: {e}")))
}

/// Writes every chunk of a collection again with keyword weights from `sparse_of`, page by page
/// through the store's own scroll and write; the chunks written. A passed deadline stops it
/// between pages with DEADLINE_EXCEEDED. The caller keeps other writes away meanwhile.
pub async fn rewrite_keyword_weights(
    store: &(impl VectorStore + ?Sized),
    collection: &str,
    sparse_of: SparseOf,
    deadline: Option<std::time::Instant>,
) -> Result<u64, IndexError> {
    let (mut offset, mut rewritten) = (None, 0u64);
    loop {
        if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
            return Err(IndexError::DeadlineExceeded(format!(
                "re-indexing {collection}: {rewritten} chunks rewritten, the old settings stay in force"
            )));
        }
        let page = ScrollPage { filter: None, limit: REWEIGHT_PAGE, offset, with_vectors: true };
        let out = store.scroll(collection, &page).await?;
        let points = with_keyword_weights(sparse_of.clone(), out.chunks).await?;
        rewritten += points.len() as u64;
        if !points.is_empty() {
            store.write(collection, WriteBatch { upserts: points, ..Default::default() }).await?;
        }
        match out.next {
            Some(next) => offset = Some(next),
            None => return Ok(rewritten),
        }
    }
}

/// What a [`VectorStore::scroll`] asks for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScrollPage {
    pub filter: Option<Filter>,
    /// Chunks in the page (> 0).
    pub limit: usize,
    pub offset: Option<String>,
    pub with_vectors: bool,
}

/// A page of chunks (vector empty unless asked) and where the next one starts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScrollOut {
    pub chunks: Vec<ChunkPoint>,
    pub next: Option<String>,
}

/// Size and state of a collection's storage.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoreStats {
    pub points: u64,
    pub documents: u64,
    pub indexed_vectors: u64,
    pub segments: u64,
    pub disk_bytes: u64,
    pub shards: Vec<ShardStats>,
    /// The store's own word on its optimizer, where it has one (Qdrant's collection status).
    pub optimizer_state: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ShardStats {
    pub id: u32,
    pub points: u64,
    pub indexed_vectors: u64,
    pub segments: u64,
}

fn no_snapshots(collection: &str) -> IndexError {
    IndexError::failed_precondition(
        "collection",
        format!("collection {collection:?}: this store cannot take or restore snapshots"),
    )
}

/// A vector store. Implementations are cheap to share (`Arc`) and safe to call concurrently.
#[tonic::async_trait]
pub trait VectorStore: Send + Sync + Debug {
    /// Creates the storage of a new collection.
    async fn create(&self, spec: &StoreSpec) -> Result<(), IndexError>;
    /// Opens the existing storage of a collection.
    async fn open(&self, spec: &StoreSpec) -> Result<(), IndexError>;
    /// Opens every collection of the registry at start-up and recovers what a crash left.
    async fn open_all(&self, specs: &[StoreSpec]) -> Result<Recovery, IndexError> {
        for spec in specs {
            self.open(spec).await?;
        }
        Ok(Recovery::default())
    }
    /// Deletes a collection's storage.
    async fn drop_collection(&self, name: &str) -> Result<(), IndexError>;
    /// Applies a request's writes; returns once they are durable. The embedded store makes the
    /// batch all-or-nothing across a crash; a Qdrant cluster applies its parts in order, each
    /// acknowledged by Qdrant (`wait=true`).
    async fn write(&self, collection: &str, batch: WriteBatch) -> Result<(), IndexError> {
        if !batch.upserts.is_empty() {
            self.upsert(collection, &batch.upserts).await?;
        }
        if !batch.delete_chunks_from.is_empty() {
            self.delete_chunks_from(collection, &batch.delete_chunks_from).await?;
        }
        if !batch.delete_documents.is_empty() {
            self.delete_documents(collection, &batch.delete_documents).await?;
        }
        Ok(())
    }
    /// Writes chunks; returns once they are durable.
    async fn upsert(&self, collection: &str, points: &[ChunkPoint]) -> Result<(), IndexError>;
    /// Deletes the chunks numbered `n` and above of each `(doc_id, n)`: after re-upserting a
    /// document as `n` chunks (same point ids for 0..n), what remains of a longer old version.
    async fn delete_chunks_from(&self, collection: &str, docs: &[(String, u32)]) -> Result<(), IndexError>;
    /// Deletes every chunk of the given documents.
    async fn delete_documents(&self, collection: &str, doc_ids: &[String]) -> Result<(), IndexError>;
    /// Top-k hits per query vector, best first.
    async fn search(
        &self,
        collection: &str,
        queries: &[Vec<f32>],
        options: &SearchOptions,
    ) -> Result<Vec<Vec<Hit>>, IndexError>;
    /// Top-k hits per sparse query on [`KEYWORD_VECTOR`] (BM25: the engine multiplies each
    /// query term by its IDF in the shard), best first. `k`, `score_threshold` and `filter` of
    /// the options apply; the search is exact (an inverted index). FAILED_PRECONDITION where the
    /// collection has no sparse vector.
    async fn search_keyword(
        &self,
        collection: &str,
        _queries: &[SparseVector],
        _options: &SearchOptions,
    ) -> Result<Vec<Vec<Hit>>, IndexError> {
        Err(IndexError::failed_precondition(
            "mode",
            format!("collection {collection:?}: this store has no keyword search"),
        ))
    }
    /// The dense vectors of the given chunks, in order; None for chunks not found.
    async fn vectors(
        &self,
        collection: &str,
        _chunks: &[(String, u32)],
    ) -> Result<Vec<Option<Vec<f32>>>, IndexError> {
        Err(IndexError::Store(format!("{collection}: this store cannot return vectors")))
    }
    /// Chunks stored for one document (0 if unknown).
    async fn count_chunks(&self, collection: &str, doc_id: &str) -> Result<u64, IndexError>;
    /// How many of `doc_ids` (distinct) are stored: one count per shard, not one per id.
    async fn count_documents(&self, collection: &str, doc_ids: &[String]) -> Result<u64, IndexError>;
    async fn stats(&self, collection: &str) -> Result<StoreStats, IndexError>;
    /// Builds indexes (HNSW) where thresholds are reached; returns whether anything changed.
    /// Runs off the request path (the background optimizer calls it).
    async fn optimize(&self, collection: &str) -> Result<bool, IndexError>;
    /// Persists everything (shutdown).
    async fn flush(&self) -> Result<(), IndexError>;
    /// Every chunk's (doc_id, chunk, vector), to load a resident exact engine; text and metadata
    /// are left empty.
    async fn scan(&self, collection: &str) -> Result<Vec<ChunkPoint>, IndexError> {
        Err(IndexError::Store(format!("{collection}: this store cannot be scanned")))
    }
    /// Rebuilds the storage of a collection made before keyword search (no [`KEYWORD_VECTOR`])
    /// with that vector, every chunk given `sparse_of(text)` as its keyword weights, and returns
    /// the new spec (`sparse: true`) and the chunks weighted. The caller keeps writes away
    /// meanwhile. Stores that cannot: FAILED_PRECONDITION.
    async fn add_keyword_vector(
        &self,
        spec: &StoreSpec,
        _sparse_of: SparseOf,
    ) -> Result<(StoreSpec, u64), IndexError> {
        Err(IndexError::failed_precondition(
            "collection",
            format!(
                "collection {:?} was created before keyword search existed and this store cannot add the keyword vector to it; re-create it with a keyword index and ingest again",
                spec.name
            ),
        ))
    }
    /// One page of the collection's chunks (payload, and the dense vector when asked), and the
    /// offset of the next page (None at the end). Offsets are the store's own opaque strings; a
    /// malformed one is INVALID_ARGUMENT `offset`.
    async fn scroll(&self, collection: &str, _page: &ScrollPage) -> Result<ScrollOut, IndexError> {
        Err(IndexError::Store(format!("{collection}: this store cannot be scrolled")))
    }
    /// Copies the collection's data into `dir` (new and empty) as of the call: a snapshot. The
    /// caller keeps the collection's writes away meanwhile. Stores without: FAILED_PRECONDITION.
    async fn snapshot(&self, collection: &str, _dir: &Path) -> Result<(), IndexError> {
        Err(no_snapshots(collection))
    }
    /// Creates collection `spec.name` from the data [`Self::snapshot`] wrote into `dir` (left
    /// as it is). Stores without snapshots: FAILED_PRECONDITION.
    async fn restore(&self, spec: &StoreSpec, _dir: &Path) -> Result<(), IndexError> {
        Err(no_snapshots(&spec.name))
    }
    /// Payloads of the given chunks (score 0), None for chunks not found.
    async fn retrieve(
        &self,
        collection: &str,
        _chunks: &[(String, u32)],
    ) -> Result<Vec<Option<Hit>>, IndexError> {
        Err(IndexError::Store(format!("{collection}: this store cannot retrieve by id")))
    }
}
