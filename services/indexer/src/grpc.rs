//! Thin tonic handlers over [`Indexer`]: convert, call, map the error.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use futures::StreamExt;
use ragd_core::auth::Role;
use ragd_proto::json::{from_struct, to_struct};
use ragd_proto::v1::{self, indexer_server};
use tonic::{Request, Response, Status, Streaming};
use tracing::instrument;

use crate::chunk::Chunking;
use crate::collections::{CollectionMeta, ExactStorage};
use crate::config::ExactPrecision;
use crate::error::IndexError;
use crate::exact::ExactFootprint;
use crate::filter::{AnyOf, Condition, Filter, Range, Scalar, Test};
use crate::fusion::Fusion;
use crate::keyword::{KeywordConfig, KeywordRequest};
use crate::service::{
    CreateCollection, DocumentIn, ExactRequest, Indexer, IngestState, Mmr, QueryIn, Rerank, Retrieval,
    SearchMode, UpsertOutcome,
};
use crate::snapshot::Manifest;
use crate::store::{ChunkPoint, Distance, Hit, ScrollPage, SearchOptions, StoreStats};

/// The `ragd.v1.Indexer` service; UNAVAILABLE until the store is open.
#[derive(Debug, Clone)]
pub struct IndexerGrpc {
    indexer: Arc<OnceLock<Arc<Indexer>>>,
}

impl IndexerGrpc {
    pub fn new(indexer: Arc<OnceLock<Arc<Indexer>>>) -> Self {
        Self { indexer }
    }

    fn ready(&self) -> Result<Arc<Indexer>, Status> {
        self.indexer
            .get()
            .cloned()
            .ok_or_else(|| Status::unavailable("indexer is not ready: opening collections"))
    }
}

/// Checks that the caller may act on `collection` with `role` (the security layer authenticated
/// it and left its grants in the request).
fn allow<T>(request: &Request<T>, collection: &str, role: Role) -> Result<(), Status> {
    ragd_core::auth::require_collection(&ragd_core::auth::access(request)?, collection, role)
}

/// The caller's deadline, answered slightly early (`ragd_core::status::deadline_margin`).
fn deadline<T>(request: &Request<T>) -> Option<Instant> {
    ragd_core::status::request_deadline(request.metadata())
}

fn distance_from(d: i32) -> Result<Distance, IndexError> {
    match v1::Distance::try_from(d) {
        Ok(v1::Distance::Unspecified | v1::Distance::Cosine) => Ok(Distance::Cosine),
        Ok(v1::Distance::Dot) => Ok(Distance::Dot),
        Ok(v1::Distance::Euclid) => Ok(Distance::Euclid),
        Err(_) => Err(IndexError::invalid("distance", format!("unknown value {d}"))),
    }
}

fn distance_to(d: Distance) -> v1::Distance {
    match d {
        Distance::Cosine => v1::Distance::Cosine,
        Distance::Dot => v1::Distance::Dot,
        Distance::Euclid => v1::Distance::Euclid,
    }
}

fn chunking_from(c: Option<v1::Chunking>) -> Chunking {
    match c.and_then(|c| c.policy) {
        None => Chunking::default(),
        Some(v1::chunking::Policy::Sentences(w)) => Chunking::Sentences { size: w.size, overlap: w.overlap },
        Some(v1::chunking::Policy::Tokens(w)) => Chunking::Tokens { size: w.size, overlap: w.overlap },
    }
}

fn chunking_to(c: Chunking) -> v1::Chunking {
    let policy = match c {
        Chunking::Sentences { size, overlap } => {
            v1::chunking::Policy::Sentences(v1::Window { size, overlap })
        }
        Chunking::Tokens { size, overlap } => v1::chunking::Policy::Tokens(v1::Window { size, overlap }),
    };
    v1::Chunking { policy: Some(policy) }
}

fn info(meta: CollectionMeta, stats: StoreStats, exact: Option<ExactFootprint>) -> v1::CollectionInfo {
    let indexed = stats.points > 0 && stats.indexed_vectors >= stats.points;
    v1::CollectionInfo {
        name: meta.store.name,
        model: meta.model,
        dim: meta.store.dim as u32,
        distance: distance_to(meta.store.distance) as i32,
        chunking: Some(chunking_to(meta.chunking)),
        points: stats.points,
        documents: stats.documents,
        indexed_vectors: stats.indexed_vectors,
        disk_bytes: stats.disk_bytes,
        shards: stats
            .shards
            .into_iter()
            .map(|s| v1::ShardInfo {
                id: s.id,
                points: s.points,
                indexed_vectors: s.indexed_vectors,
                segments: s.segments,
            })
            .collect(),
        optimizer_state: stats
            .optimizer_state
            .unwrap_or_else(|| if indexed { "indexed" } else { "exact-until-indexed" }.into()),
        replication_factor: meta.store.replication_factor.unwrap_or(1),
        write_consistency_factor: meta.store.write_consistency_factor.unwrap_or(1),
        on_disk: meta.store.on_disk.unwrap_or(false),
        keyword: meta.keyword.map(keyword_to),
        max_chunks: meta.max_chunks.unwrap_or(0),
        exact: exact.map(|e| exact_storage_to(e.storage)),
        exact_bytes_per_vector: exact.map_or(0, |e| e.bytes_per_vector as u64),
        exact_resident_bytes: exact.map_or(0, |e| e.resident_bytes as u64),
    }
}

/// `exact` of a CreateCollectionRequest: absent or unspecified fields take the server's
/// defaults (resolved by the indexer).
fn exact_storage_from(e: v1::ExactStorage) -> Result<ExactRequest, IndexError> {
    let precision = match v1::ExactPrecision::try_from(e.precision) {
        Ok(v1::ExactPrecision::Unspecified) => None,
        Ok(v1::ExactPrecision::F32) => Some(ExactPrecision::F32),
        Ok(v1::ExactPrecision::F16) => Some(ExactPrecision::F16),
        Ok(v1::ExactPrecision::Bf16) => Some(ExactPrecision::Bf16),
        Ok(v1::ExactPrecision::Int8) => Some(ExactPrecision::Int8),
        Ok(v1::ExactPrecision::Int8PerVector) => Some(ExactPrecision::Int8PerVector),
        Err(_) => {
            return Err(IndexError::invalid("exact.precision", format!("unknown value {}", e.precision)));
        }
    };
    Ok(ExactRequest { precision, rescore: e.rescore })
}

fn exact_storage_to(e: ExactStorage) -> v1::ExactStorage {
    let precision = match e.precision {
        ExactPrecision::F32 => v1::ExactPrecision::F32,
        ExactPrecision::F16 => v1::ExactPrecision::F16,
        ExactPrecision::Bf16 => v1::ExactPrecision::Bf16,
        ExactPrecision::Int8 => v1::ExactPrecision::Int8,
        ExactPrecision::Int8PerVector => v1::ExactPrecision::Int8PerVector,
    };
    v1::ExactStorage { precision: precision as i32, rescore: e.rescore }
}

fn snapshot_info(m: Manifest) -> v1::SnapshotInfo {
    v1::SnapshotInfo {
        collection: m.collection().to_string(),
        name: m.name,
        created_unix: m.created_unix,
        points: m.points,
        size_bytes: m.size_bytes,
        model: m.meta.model,
        dim: m.meta.store.dim as u32,
        shards: m.meta.store.shards,
    }
}

fn keyword_from(k: v1::KeywordIndex) -> KeywordRequest {
    KeywordRequest {
        language: (!k.language.is_empty()).then_some(k.language),
        stop_words: k.stop_words,
        lowercase: k.lowercase,
        ascii_folding: k.ascii_folding,
        k1: k.k1,
        b: k.b,
        avg_len: k.avg_len,
        stemming: k.stemming,
    }
}

fn keyword_to(k: KeywordConfig) -> v1::KeywordIndex {
    v1::KeywordIndex {
        language: k.language,
        stop_words: Some(k.stop_words),
        lowercase: Some(k.lowercase),
        ascii_folding: Some(k.ascii_folding),
        k1: Some(k.k1),
        b: Some(k.b),
        avg_len: Some(k.avg_len),
        stemming: Some(k.stemming),
    }
}

fn mode_from(m: i32) -> Result<SearchMode, IndexError> {
    match v1::SearchMode::try_from(m) {
        Ok(v1::SearchMode::Unspecified | v1::SearchMode::Dense) => Ok(SearchMode::Dense),
        Ok(v1::SearchMode::Keyword) => Ok(SearchMode::Keyword),
        Ok(v1::SearchMode::Hybrid) => Ok(SearchMode::Hybrid),
        Err(_) => Err(IndexError::invalid("mode", format!("unknown value {m}"))),
    }
}

fn fusion_from(f: Option<v1::Fusion>) -> Fusion {
    match f.and_then(|f| f.method) {
        None => Fusion::default(),
        Some(v1::fusion::Method::Rrf(r)) => Fusion::Rrf { k: if r.k == 0 { 60 } else { r.k } },
        Some(v1::fusion::Method::Dbsf(_)) => Fusion::Dbsf,
        Some(v1::fusion::Method::Weighted(w)) => Fusion::Weighted { alpha: w.alpha },
    }
}

/// The retrieval settings of a search request (checked by the domain).
pub fn retrieval_from(
    mode: i32,
    fusion: Option<v1::Fusion>,
    prefetch: u32,
    mmr: Option<v1::Mmr>,
    rerank: Option<v1::Rerank>,
) -> Result<Retrieval, IndexError> {
    Ok(Retrieval {
        mode: mode_from(mode)?,
        fusion: fusion_from(fusion),
        prefetch: (prefetch > 0).then_some(prefetch as usize),
        mmr: mmr.map(|m| Mmr {
            diversity: m.diversity,
            candidates: (m.candidates > 0).then_some(m.candidates as usize),
        }),
        rerank: rerank.map(|r| Rerank { candidates: (r.candidates > 0).then_some(r.candidates as usize) }),
    })
}

/// How many collections' stats ListCollections gathers at once.
const LIST_CONCURRENCY: usize = 8;

fn scalar(v: v1::Value) -> Result<Scalar, IndexError> {
    match v.kind {
        Some(v1::value::Kind::Keyword(s)) => Ok(Scalar::Keyword(s)),
        Some(v1::value::Kind::Integer(i)) => Ok(Scalar::Integer(i)),
        Some(v1::value::Kind::Boolean(b)) => Ok(Scalar::Bool(b)),
        None => Err(IndexError::invalid("filter", "a match value is empty")),
    }
}

/// Qdrant matches any of strings or of integers, not a mix (nor booleans).
fn any_of(key: &str, values: Vec<v1::Value>) -> Result<AnyOf, IndexError> {
    let mixed = || {
        IndexError::invalid(
            "filter",
            format!("match-any on {} needs all strings or all integers", ragd_core::status::quote(key)),
        )
    };
    use v1::value::Kind;
    // Every value of one kind, or None.
    fn all<T>(values: Vec<v1::Value>, pick: impl Fn(Kind) -> Option<T>) -> Option<Vec<T>> {
        values.into_iter().map(|v| v.kind.and_then(&pick)).collect()
    }
    let any = match values.first().and_then(|v| v.kind.as_ref()) {
        // Empty: Condition::new names it.
        None if values.is_empty() => Some(AnyOf::Keywords(Vec::new())),
        Some(Kind::Integer(_)) => {
            all(values, |k| if let Kind::Integer(i) = k { Some(i) } else { None }).map(AnyOf::Integers)
        }
        Some(Kind::Keyword(_)) => {
            all(values, |k| if let Kind::Keyword(s) = k { Some(s) } else { None }).map(AnyOf::Keywords)
        }
        _ => None,
    };
    any.ok_or_else(mixed)
}

fn conditions(cs: Vec<v1::Condition>) -> Result<Vec<Condition>, IndexError> {
    cs.into_iter()
        .map(|c| {
            let test = match c.test {
                Some(v1::condition::Test::Match(v)) => Test::Match(scalar(v)?),
                Some(v1::condition::Test::MatchAny(l)) => Test::MatchAny(any_of(&c.key, l.values)?),
                Some(v1::condition::Test::Range(r)) => {
                    Test::Range(Range { gt: r.gt, gte: r.gte, lt: r.lt, lte: r.lte })
                }
                None => {
                    return Err(IndexError::invalid(
                        "filter",
                        format!("condition on {} has no test", ragd_core::status::quote(&c.key)),
                    ));
                }
            };
            Condition::new(c.key, test)
        })
        .collect()
}

/// The request's filter, converted and validated once (None when absent or empty). Public for
/// the fuzz target `filter` (tests/src/fuzz.rs).
pub fn filter_from(f: Option<v1::Filter>) -> Result<Option<Filter>, IndexError> {
    let Some(f) = f else { return Ok(None) };
    let filter = Filter {
        must: conditions(f.must)?,
        should: conditions(f.should)?,
        must_not: conditions(f.must_not)?,
    };
    Ok((!filter.is_empty()).then_some(filter))
}

fn documents(ds: Vec<v1::Document>) -> Vec<DocumentIn> {
    ds.into_iter()
        .map(|d| DocumentIn {
            id: d.id,
            text: d.text,
            metadata: d.metadata.map(from_struct).unwrap_or_default(),
            vector: (!d.vector.is_empty()).then_some(d.vector),
        })
        .collect()
}

fn stored_chunk(c: ChunkPoint) -> v1::StoredChunk {
    v1::StoredChunk {
        doc_id: c.doc_id,
        chunk: c.chunk,
        text: c.text,
        metadata: Some(to_struct(c.metadata)),
        vector: c.vector,
    }
}

fn upsert_response(o: UpsertOutcome) -> v1::UpsertResponse {
    v1::UpsertResponse {
        documents: o.documents,
        chunks: o.chunks,
        failed: o.failed.into_iter().map(|(id, reason)| v1::DocumentFailure { id, reason }).collect(),
    }
}

fn hit(h: Hit) -> v1::Hit {
    v1::Hit {
        doc_id: h.doc_id,
        chunk: h.chunk,
        text: h.text,
        score: h.score,
        metadata: Some(to_struct(h.metadata)),
        sources: h
            .sources
            .into_iter()
            .map(|s| v1::SourceRank { source: s.source.name().into(), rank: s.rank, score: s.score })
            .collect(),
    }
}

#[tonic::async_trait]
impl indexer_server::Indexer for IndexerGrpc {
    #[instrument(skip_all, fields(name = %request.get_ref().name))]
    async fn create_collection(
        &self,
        request: Request<v1::CreateCollectionRequest>,
    ) -> Result<Response<v1::CollectionInfo>, Status> {
        allow(&request, &request.get_ref().name, Role::Manage)?;
        let indexer = self.ready()?;
        let deadline = deadline(&request);
        let r = request.into_inner();
        let create = CreateCollection {
            name: r.name,
            model: r.model,
            distance: distance_from(r.distance)?,
            shards: r.shards.max(1),
            chunking: chunking_from(r.chunking),
            replication_factor: (r.replication_factor > 0).then_some(r.replication_factor),
            write_consistency_factor: (r.write_consistency_factor > 0).then_some(r.write_consistency_factor),
            on_disk: r.on_disk.then_some(true),
            keyword: r.keyword.map(keyword_from),
            max_chunks: (r.max_chunks > 0).then_some(r.max_chunks),
            exact: r.exact.map(exact_storage_from).transpose()?,
            dim: (r.dim > 0).then_some(r.dim as usize),
        };
        let meta = indexer.create_collection(create, deadline).await?;
        let (stats, exact) =
            (indexer.stats(&meta.store.name).await?, indexer.exact_footprint(&meta.store.name));
        Ok(Response::new(info(meta, stats, exact)))
    }

    async fn list_collections(
        &self,
        request: Request<v1::ListCollectionsRequest>,
    ) -> Result<Response<v1::ListCollectionsResponse>, Status> {
        // Only the collections the caller may read.
        let access = ragd_core::auth::access(&request)?;
        let indexer = self.ready()?;
        let visible = indexer.collections()?.into_iter().filter(|m| access.may(&m.store.name, Role::Read));
        // The collections' stats concurrently (at most 8 at a time), in registry order.
        let collections: Vec<v1::CollectionInfo> = futures::stream::iter(visible)
            .map(|meta| async {
                let (stats, exact) =
                    (indexer.stats(&meta.store.name).await?, indexer.exact_footprint(&meta.store.name));
                Ok::<_, IndexError>(info(meta, stats, exact))
            })
            .buffered(LIST_CONCURRENCY)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
        Ok(Response::new(v1::ListCollectionsResponse { collections }))
    }

    async fn describe_collection(
        &self,
        request: Request<v1::DescribeCollectionRequest>,
    ) -> Result<Response<v1::CollectionInfo>, Status> {
        allow(&request, &request.get_ref().name, Role::Read)?;
        let indexer = self.ready()?;
        let meta = indexer.collection(&request.get_ref().name)?;
        let (stats, exact) =
            (indexer.stats(&meta.store.name).await?, indexer.exact_footprint(&meta.store.name));
        Ok(Response::new(info(meta, stats, exact)))
    }

    #[instrument(skip_all, fields(collection = %request.get_ref().collection))]
    async fn reindex_keywords(
        &self,
        request: Request<v1::ReindexKeywordsRequest>,
    ) -> Result<Response<v1::ReindexKeywordsResponse>, Status> {
        allow(&request, &request.get_ref().collection, Role::Manage)?;
        let indexer = self.ready()?;
        let deadline = deadline(&request);
        let r = request.into_inner();
        let settings = keyword_from(r.keyword.unwrap_or_default());
        let (meta, chunks) = indexer.reindex_keywords(&r.collection, settings, deadline).await?;
        let (stats, exact) =
            (indexer.stats(&meta.store.name).await?, indexer.exact_footprint(&meta.store.name));
        Ok(Response::new(v1::ReindexKeywordsResponse { collection: Some(info(meta, stats, exact)), chunks }))
    }

    #[instrument(skip_all, fields(collection = %request.get_ref().collection))]
    async fn create_snapshot(
        &self,
        request: Request<v1::CreateSnapshotRequest>,
    ) -> Result<Response<v1::SnapshotInfo>, Status> {
        allow(&request, &request.get_ref().collection, Role::Manage)?;
        let indexer = self.ready()?;
        let deadline = deadline(&request);
        let r = request.into_inner();
        let name = (!r.name.is_empty()).then_some(r.name);
        let manifest = indexer.create_snapshot(&r.collection, name, deadline).await?;
        Ok(Response::new(snapshot_info(manifest)))
    }

    async fn list_snapshots(
        &self,
        request: Request<v1::ListSnapshotsRequest>,
    ) -> Result<Response<v1::ListSnapshotsResponse>, Status> {
        // One collection: read on it; all: only the snapshots of collections the caller may read.
        let access = ragd_core::auth::access(&request)?;
        let collection = &request.get_ref().collection;
        if !collection.is_empty() {
            ragd_core::auth::require_collection(&access, collection, Role::Read)?;
        }
        let snapshots = self.ready()?.list_snapshots((!collection.is_empty()).then_some(collection)).await?;
        let snapshots = snapshots
            .into_iter()
            .filter(|m| access.may(m.collection(), Role::Read))
            .map(snapshot_info)
            .collect();
        Ok(Response::new(v1::ListSnapshotsResponse { snapshots }))
    }

    #[instrument(skip_all, fields(collection = %request.get_ref().collection, snapshot = %request.get_ref().snapshot))]
    async fn restore_snapshot(
        &self,
        request: Request<v1::RestoreSnapshotRequest>,
    ) -> Result<Response<v1::CollectionInfo>, Status> {
        let r = request.get_ref();
        let target = if r.target.is_empty() { &r.collection } else { &r.target };
        // Manage on the collection it creates, read on the one whose data it copies.
        allow(&request, target, Role::Manage)?;
        allow(&request, &r.collection, Role::Read)?;
        let indexer = self.ready()?;
        let meta = indexer.restore_snapshot(&r.collection, &r.snapshot, Some(target)).await?;
        let (stats, exact) =
            (indexer.stats(&meta.store.name).await?, indexer.exact_footprint(&meta.store.name));
        Ok(Response::new(info(meta, stats, exact)))
    }

    async fn delete_snapshot(
        &self,
        request: Request<v1::DeleteSnapshotRequest>,
    ) -> Result<Response<v1::DeleteSnapshotResponse>, Status> {
        allow(&request, &request.get_ref().collection, Role::Manage)?;
        let r = request.get_ref();
        self.ready()?.delete_snapshot(&r.collection, &r.snapshot).await?;
        Ok(Response::new(v1::DeleteSnapshotResponse {}))
    }

    async fn drop_collection(
        &self,
        request: Request<v1::DropCollectionRequest>,
    ) -> Result<Response<v1::DropCollectionResponse>, Status> {
        allow(&request, &request.get_ref().name, Role::Manage)?;
        self.ready()?.drop_collection(&request.get_ref().name).await?;
        Ok(Response::new(v1::DropCollectionResponse {}))
    }

    #[instrument(skip_all)]
    async fn upsert(
        &self,
        request: Request<Streaming<v1::UpsertRequest>>,
    ) -> Result<Response<v1::UpsertResponse>, Status> {
        let access = ragd_core::auth::access(&request)?;
        let indexer = self.ready()?;
        let deadline = deadline(&request);
        let mut stream = request.into_inner();
        let mut total = UpsertOutcome::default();
        while let Some(message) = stream.next().await {
            let m = message.map_err(ragd_core::status::inbound)?;
            // Each message names its collection; what earlier messages stored stays stored.
            ragd_core::auth::require_collection(&access, &m.collection, Role::Write)?;
            let o = indexer.upsert(&m.collection, documents(m.documents), deadline).await?;
            total.documents += o.documents;
            total.chunks += o.chunks;
            total.failed.extend(o.failed);
        }
        Ok(Response::new(upsert_response(total)))
    }

    #[instrument(skip_all, fields(collection = %request.get_ref().collection, documents = request.get_ref().documents.len()))]
    async fn upsert_batch(
        &self,
        request: Request<v1::UpsertRequest>,
    ) -> Result<Response<v1::UpsertResponse>, Status> {
        allow(&request, &request.get_ref().collection, Role::Write)?;
        let indexer = self.ready()?;
        let deadline = deadline(&request);
        let r = request.into_inner();
        let o = indexer.upsert(&r.collection, documents(r.documents), deadline).await?;
        Ok(Response::new(upsert_response(o)))
    }

    async fn delete(
        &self,
        request: Request<v1::DeleteRequest>,
    ) -> Result<Response<v1::DeleteResponse>, Status> {
        allow(&request, &request.get_ref().collection, Role::Write)?;
        let r = request.into_inner();
        let deleted = self.ready()?.delete(&r.collection, &r.ids).await?;
        Ok(Response::new(v1::DeleteResponse { deleted }))
    }

    async fn document_status(
        &self,
        request: Request<v1::DocumentStatusRequest>,
    ) -> Result<Response<v1::DocumentStatusResponse>, Status> {
        allow(&request, &request.get_ref().collection, Role::Read)?;
        let r = request.into_inner();
        let s = self.ready()?.document_status(&r.collection, &r.id).await?;
        let state = match s.state {
            IngestState::Accepted => v1::IngestState::Accepted,
            IngestState::Embedded => v1::IngestState::Embedded,
            IngestState::Stored => v1::IngestState::Stored,
            IngestState::Failed => v1::IngestState::Failed,
        };
        Ok(Response::new(v1::DocumentStatusResponse {
            id: r.id,
            state: state as i32,
            reason: s.reason,
            chunks: s.chunks,
        }))
    }

    #[instrument(skip_all, fields(collection = %request.get_ref().collection))]
    async fn get_document(
        &self,
        request: Request<v1::GetDocumentRequest>,
    ) -> Result<Response<v1::GetDocumentResponse>, Status> {
        allow(&request, &request.get_ref().collection, Role::Read)?;
        let r = request.into_inner();
        let chunks = self.ready()?.get_document(&r.collection, &r.id, r.with_vectors).await?;
        Ok(Response::new(v1::GetDocumentResponse {
            id: r.id,
            chunks: chunks.into_iter().map(stored_chunk).collect(),
        }))
    }

    #[instrument(skip_all, fields(collection = %request.get_ref().collection, limit = request.get_ref().limit))]
    async fn scroll(
        &self,
        request: Request<v1::ScrollRequest>,
    ) -> Result<Response<v1::ScrollResponse>, Status> {
        allow(&request, &request.get_ref().collection, Role::Read)?;
        let indexer = self.ready()?;
        let r = request.into_inner();
        let page = ScrollPage {
            filter: filter_from(r.filter)?,
            limit: r.limit as usize,
            offset: (!r.offset.is_empty()).then_some(r.offset),
            with_vectors: r.with_vectors,
        };
        let out = indexer.scroll(&r.collection, page).await?;
        Ok(Response::new(v1::ScrollResponse {
            chunks: out.chunks.into_iter().map(stored_chunk).collect(),
            next_offset: out.next.unwrap_or_default(),
        }))
    }

    #[instrument(skip_all, fields(collection = %request.get_ref().collection, queries = request.get_ref().queries.len()))]
    async fn search(
        &self,
        request: Request<v1::SearchRequest>,
    ) -> Result<Response<v1::SearchResponse>, Status> {
        allow(&request, &request.get_ref().collection, Role::Read)?;
        let indexer = self.ready()?;
        let deadline = deadline(&request);
        let r = request.into_inner();
        let queries = r
            .queries
            .into_iter()
            .enumerate()
            .map(|(i, q)| match q.query {
                Some(v1::query::Query::Text(t)) => Ok(QueryIn::Text(t)),
                Some(v1::query::Query::Vector(v)) => Ok(QueryIn::Vector(v.values)),
                None => Err(IndexError::invalid("queries", format!("query {i} has neither text nor vector"))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let options = SearchOptions {
            k: r.k as usize,
            score_threshold: r.score_threshold,
            filter: filter_from(r.filter)?,
            exact: r.exact,
            hnsw_ef: (r.hnsw_ef > 0).then_some(r.hnsw_ef as usize),
        };
        let retrieval = retrieval_from(r.mode, r.fusion, r.prefetch, r.mmr, r.rerank)?;
        let (results, timings) = indexer.search(&r.collection, queries, options, retrieval, deadline).await?;
        Ok(Response::new(v1::SearchResponse {
            results: results
                .into_iter()
                .map(|hits| v1::QueryResult { hits: hits.into_iter().map(hit).collect() })
                .collect(),
            stats: Some(v1::SearchStats {
                embed_us: timings.embed.as_micros() as u64,
                search_us: timings.search.as_micros() as u64,
            }),
        }))
    }
}
