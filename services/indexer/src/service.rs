//! The indexer domain: collections (registry + store), the ingest pipeline (validate → chunk →
//! embed through the embedder → store) with per-document status, and search (embed the query
//! text or take a vector → store search). gRPC handlers are thin wrappers around [`Indexer`].

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ragd_proto::v1::{self, embedder_client::EmbedderClient};
use serde_json::{Map, Value};
use tracing::Instrument;

use crate::chunk::{self, Chunking};
use crate::collections::{CollectionMeta, Registry, validate_name};
use crate::error::IndexError;
use crate::exact::{ExactMirrors, ExactSettings};
use crate::filter::Filter;
use crate::store::{
    ChunkPoint, Distance, Hit, Recovery, SearchOptions, StoreSpec, StoreStats, VectorStore, WriteBatch,
};

/// Texts per Embed call while ingesting (the embedder splits and batches them further).
const EMBED_CHUNK_TEXTS: usize = 256;

/// A document to ingest.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DocumentIn {
    pub id: String,
    pub text: String,
    pub metadata: Map<String, Value>,
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
}

/// Limits and tuning of the indexer.
/// Tries of one Embed call while the embedder answers UNAVAILABLE.
const EMBED_ATTEMPTS: u32 = 5;

/// Where a search's time went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SearchTimings {
    /// Embedding the text queries (zero for vector queries).
    pub embed: Duration,
    /// The store's (or exact engine's) search.
    pub search: Duration,
}

#[derive(Debug, Clone)]
pub struct IndexerLimits {
    pub max_k: usize,
    pub max_queries: usize,
    pub max_documents_per_request: usize,
    pub max_shards: u32,
    pub indexing_threshold_kb: Option<usize>,
    /// Document statuses remembered for DocumentStatus (oldest forgotten first).
    pub status_capacity: usize,
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
    embedder: EmbedderClient<ragd_core::upstream::Upstream>,
    limits: IndexerLimits,
    statuses: Mutex<Statuses>,
    /// The resident exact engine (None: exact searches go to the store).
    exact: Option<ExactMirrors>,
    recovery: Recovery,
}

fn embedder_err(s: tonic::Status) -> IndexError {
    IndexError::Embedder(s)
}

/// Request with the caller's remaining time as its deadline.
/// A request with the caller's deadline and the current trace context.
fn with_deadline<T>(msg: T, deadline: Option<Instant>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    ragd_core::telemetry::inject(&mut r);
    if let Some(d) = deadline {
        r.set_timeout(d.saturating_duration_since(Instant::now()).max(Duration::from_millis(1)));
    }
    r
}

impl Indexer {
    /// Opens every registered collection in `store`.
    pub async fn open(
        store: Arc<dyn VectorStore>,
        registry: Registry,
        embedder: EmbedderClient<ragd_core::upstream::Upstream>,
        limits: IndexerLimits,
        exact: Option<ExactSettings>,
    ) -> Result<Self, IndexError> {
        let exact = exact.map(ExactMirrors::new);
        let metas = registry.all()?;
        let specs: Vec<StoreSpec> = metas.iter().map(|m| m.store.clone()).collect();
        // Replays what a crash left in the store's journal before the exact engine copies the
        // vectors, so both start from the same state.
        let recovery = store.open_all(&specs).await?;
        for s in &specs {
            tracing::info!(collection = %s.name, shards = s.shards, "collection opened");
            if let Some(exact) = &exact {
                let n = exact.load(store.as_ref(), &s.name, s.dim, s.distance).await?;
                tracing::info!(collection = %s.name, points = n, "exact engine loaded");
            }
        }
        Ok(Self { store, registry, embedder, limits, statuses: Mutex::default(), exact, recovery })
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
        if self.registry.get(&req.name).is_ok() {
            return Err(IndexError::CollectionExists(req.name));
        }
        let mut embedder = self.embedder.clone();
        let info = embedder
            .model_info(with_deadline(v1::ModelInfoRequest { name: req.model.clone() }, deadline))
            .await
            .map_err(embedder_err)?
            .into_inner()
            .model
            .ok_or_else(|| IndexError::Store("embedder returned no model".into()))?;
        let tok = embedder
            .tokenize(with_deadline(
                v1::TokenizeRequest { texts: vec![String::new()], model: info.name.clone() },
                deadline,
            ))
            .await
            .map_err(embedder_err)?
            .into_inner();
        req.chunking.validate((info.max_seq_len as usize).saturating_sub(tok.special_tokens as usize))?;
        let meta = CollectionMeta {
            store: StoreSpec {
                name: req.name,
                dim: info.dim as usize,
                distance: req.distance,
                shards: req.shards,
                indexing_threshold_kb: self.limits.indexing_threshold_kb,
                replication_factor: req.replication_factor,
                write_consistency_factor: req.write_consistency_factor,
                on_disk: req.on_disk,
            },
            model: info.name,
            chunking: req.chunking,
        };
        self.store.create(&meta.store).await?;
        if let Err(e) = self.registry.insert(meta.clone()) {
            let _ = self.store.drop_collection(&meta.store.name).await;
            return Err(e);
        }
        if let Some(exact) = &self.exact {
            exact.create(&meta.store.name, meta.store.dim, meta.store.distance)?;
        }
        tracing::info!(collection = %meta.store.name, model = %meta.model, dim = meta.store.dim, "collection created");
        Ok(meta)
    }

    pub async fn drop_collection(&self, name: &str) -> Result<(), IndexError> {
        // The registry first: a crash after it leaves a directory the next start removes; the
        // other order would leave a registered collection without its shards.
        self.registry.remove(name)?;
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

    /// Chunks, embeds and stores documents. Invalid documents fail alone (listed in the
    /// outcome); an embedder or store failure fails the call with its status.
    pub async fn upsert(
        &self,
        collection: &str,
        docs: Vec<DocumentIn>,
        deadline: Option<Instant>,
    ) -> Result<UpsertOutcome, IndexError> {
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
        let mut outcome = UpsertOutcome::default();
        let mut valid = Vec::with_capacity(docs.len());
        for d in docs {
            let reason = if d.id.is_empty() {
                Some("id is empty")
            } else if d.id.len() > 512 {
                Some("id is longer than 512 bytes")
            } else if d.text.trim().is_empty() {
                Some("text is empty")
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
        let texts: Vec<String> = chunks.iter().flat_map(|cs| cs.iter().map(|c| c.text.clone())).collect();
        let vectors = self.embed(&meta.model, texts, v1::InputKind::Passage, deadline).await?;
        let collection = &meta.store.name;
        for d in docs {
            self.set_status(collection, &d.id, IngestState::Embedded, String::new(), 0);
        }
        let mut vectors = vectors.into_iter();
        let mut points = Vec::new();
        for (d, cs) in docs.iter().zip(&chunks) {
            for (i, c) in cs.iter().enumerate() {
                let vector = vectors
                    .next()
                    .ok_or_else(|| IndexError::Store("embedder returned too few vectors".into()))?;
                points.push(ChunkPoint {
                    doc_id: d.id.clone(),
                    chunk: i as u32,
                    text: c.text.clone(),
                    metadata: d.metadata.clone(),
                    vector,
                });
            }
        }
        let counts: Vec<u32> = chunks.iter().map(|c| c.len() as u32).collect();
        let stale: Vec<(String, u32)> = docs.iter().zip(&counts).map(|(d, n)| (d.id.clone(), *n)).collect();
        // One batch: each document's new chunks and the removal of its old version's extra
        // chunks are applied (and journalled) together, so a crash never leaves half of it.
        let batch = WriteBatch { upserts: points, delete_chunks_from: stale, delete_documents: Vec::new() };
        if let Some(exact) = &self.exact {
            self.store.write(collection, batch.clone()).await?;
            exact.add(collection, &batch.upserts)?;
            exact.remove_from(collection, &batch.delete_chunks_from)?;
        } else {
            self.store.write(collection, batch).await?;
        }
        Ok(counts)
    }

    async fn chunk(
        &self,
        meta: &CollectionMeta,
        docs: &[DocumentIn],
        deadline: Option<Instant>,
    ) -> Result<Vec<Vec<chunk::Chunk>>, IndexError> {
        match meta.chunking {
            Chunking::Sentences { size, overlap } => {
                Ok(docs.iter().map(|d| chunk::by_sentences(&d.text, size, overlap)).collect())
            }
            Chunking::Tokens { size, overlap } => {
                let texts = docs.iter().map(|d| d.text.clone()).collect();
                let r = self
                    .embedder
                    .clone()
                    .tokenize(with_deadline(
                        v1::TokenizeRequest { texts, model: meta.model.clone() },
                        deadline,
                    ))
                    .await
                    .map_err(embedder_err)?
                    .into_inner();
                docs.iter()
                    .zip(r.texts)
                    .map(|(d, o)| {
                        let offsets: Vec<(usize, usize)> =
                            o.starts.iter().zip(&o.ends).map(|(&s, &e)| (s as usize, e as usize)).collect();
                        chunk::by_tokens(&d.text, &offsets, size, overlap)
                    })
                    .collect()
            }
        }
    }

    async fn embed(
        &self,
        model: &str,
        texts: Vec<String>,
        kind: v1::InputKind,
        deadline: Option<Instant>,
    ) -> Result<Vec<Vec<f32>>, IndexError> {
        let mut out = Vec::with_capacity(texts.len());
        for part in texts.chunks(EMBED_CHUNK_TEXTS) {
            let request = v1::EmbedRequest {
                texts: part.to_vec(),
                model: model.to_string(),
                normalize: None,
                kind: kind as i32,
            };
            // Embedding is idempotent: an embedder that just died or is draining is retried
            // (through a discovered, balanced channel the retry goes to another instance).
            let r = ragd_core::client::retry_unavailable(EMBED_ATTEMPTS, deadline, || {
                let mut embedder = self.embedder.clone();
                let request = with_deadline(request.clone(), deadline);
                async move { embedder.embed(request).await }
            })
            .await
            .map_err(embedder_err)?;
            out.extend(r.into_inner().embeddings.into_iter().map(|e| e.values));
        }
        Ok(out)
    }

    pub async fn delete(&self, collection: &str, ids: &[String]) -> Result<u32, IndexError> {
        self.registry.get(collection)?;
        if ids.is_empty() || ids.iter().any(String::is_empty) {
            return Err(IndexError::invalid("ids", "need one or more non-empty document ids"));
        }
        let mut existing = 0;
        for id in ids {
            if self.store.count_chunks(collection, id).await? > 0 {
                existing += 1;
            }
        }
        let batch = WriteBatch { delete_documents: ids.to_vec(), ..Default::default() };
        self.store.write(collection, batch).await?;
        if let Some(exact) = &self.exact {
            exact.remove_documents(collection, ids)?;
        }
        if let Ok(mut s) = self.statuses.lock() {
            for id in ids {
                s.map.remove(&(collection.to_string(), id.clone()));
            }
        }
        Ok(existing)
    }

    /// Top-k hits per query.
    pub async fn search(
        &self,
        collection: &str,
        queries: Vec<QueryIn>,
        mut options: SearchOptions,
        deadline: Option<Instant>,
    ) -> Result<(Vec<Vec<Hit>>, SearchTimings), IndexError> {
        let meta = self.registry.get(collection)?;
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
        if let Some(f) = &options.filter {
            f.validate()?;
        }
        let mut texts = Vec::new();
        for (i, q) in queries.iter().enumerate() {
            match q {
                QueryIn::Text(t) if t.trim().is_empty() => {
                    return Err(IndexError::invalid("queries", format!("query {i} is empty")));
                }
                QueryIn::Text(t) => texts.push(t.clone()),
                QueryIn::Vector(v) if v.len() != meta.store.dim => {
                    return Err(IndexError::invalid(
                        "queries",
                        format!(
                            "query {i} has dimension {}, the collection's is {}",
                            v.len(),
                            meta.store.dim
                        ),
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
        let started = Instant::now();
        let mut embedded = if texts.is_empty() {
            Vec::new().into_iter()
        } else {
            let span = tracing::info_span!("embed_queries", texts = texts.len());
            self.embed(&meta.model, texts, v1::InputKind::Query, deadline).instrument(span).await?.into_iter()
        };
        let mut timings = SearchTimings { embed: started.elapsed(), search: Duration::ZERO };
        let started = Instant::now();
        let vectors: Vec<Vec<f32>> = queries
            .into_iter()
            .map(|q| match q {
                QueryIn::Text(_) => embedded.next().unwrap_or_default(),
                QueryIn::Vector(v) => v,
            })
            .collect();
        if options.filter.as_ref().is_some_and(Filter::is_empty) {
            options.filter = None;
        }
        // Unfiltered exact searches go to the resident exact engine (batched with concurrent
        // ones); filtered ones, and HNSW, to the store.
        if let Some(exact) = &self.exact
            && options.exact
            && options.filter.is_none()
        {
            crate::store::check_queries(&vectors, meta.store.dim)?;
            let found = exact
                .search(self.store.as_ref(), collection, &vectors, options.k, options.score_threshold)
                .instrument(tracing::info_span!("exact_search", queries = vectors.len()))
                .await?;
            if let Some(hits) = found {
                timings.search = started.elapsed();
                return Ok((hits, timings));
            }
        }
        let span = tracing::info_span!("shard_search", queries = vectors.len(), exact = options.exact);
        let hits = self.store.search(collection, &vectors, &options).instrument(span).await?;
        timings.search = started.elapsed();
        Ok((hits, timings))
    }
}
