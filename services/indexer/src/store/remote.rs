//! The remote store: a Qdrant server or cluster over gRPC (`qdrant-client`). A ragd collection
//! `c` is the Qdrant collection `<prefix>c` with one unnamed dense vector, `shard_number`,
//! `replication_factor`, `write_consistency_factor` and on-disk vectors taken from the
//! collection's spec; Qdrant routes points to shards and builds HNSW itself, so `optimize` has
//! nothing to do here. Writes use `wait=true`: a write is acknowledged once Qdrant has applied
//! it (after its WAL). Filters are built once as Qdrant's filter JSON (see [`crate::filter`])
//! and translated to the gRPC form here; [`convert`] also holds the payload conversions, which
//! the Qdrant-protocol test server reuses.

use std::collections::HashMap;
use std::path::Path;
use std::sync::RwLock;
use std::time::Duration;

use clap::Args;
use qdrant_client::qdrant::{
    self, CollectionClusterInfoRequest, CountPoints, CreateCollection, CreateFieldIndexCollection,
    DeleteCollection, DeletePoints, FieldType, GetCollectionInfoRequest, OptimizersConfigDiff, PointStruct,
    PointsSelector, SearchBatchPoints, SearchParams, SearchPoints, UpsertPoints, VectorParams, VectorsConfig,
    WithPayloadSelector,
};
use qdrant_client::{Qdrant, QdrantError};

use super::merge::merge_top_k;
use super::qdrant_rest::Rest;
use super::{
    ChunkPoint, Distance, Hit, KEYWORD_VECTOR, ScrollOut, ScrollPage, SearchOptions, ShardStats, SparseOf,
    SparseVector, StoreSpec, StoreStats, VectorStore,
};
use crate::error::IndexError;
use crate::filter::{self, Selection};

/// The qdrant-client version this store is built against (server major must match, minor
/// within one, as Qdrant's own compatibility rule says).
pub const CLIENT_VERSION: (u64, u64) = (1, 20);

/// How to reach a Qdrant server or cluster.
#[derive(Debug, Clone, Args)]
pub struct QdrantConfig {
    /// Qdrant gRPC URL (port 6334 on a Qdrant server), used with `--store qdrant`.
    #[arg(long = "qdrant-url", env = "RAGD_QDRANT_URL", default_value = "http://127.0.0.1:6334")]
    pub url: String,
    /// Qdrant API key, if the cluster requires one.
    #[arg(long = "qdrant-api-key", env = "RAGD_QDRANT_API_KEY")]
    pub api_key: Option<String>,
    /// Prefix of the Qdrant collection names ragd owns (`<prefix><collection>`).
    #[arg(long = "qdrant-collection-prefix", env = "RAGD_QDRANT_COLLECTION_PREFIX", default_value = "ragd_")]
    pub collection_prefix: String,
    /// Timeout of each Qdrant call, in seconds.
    #[arg(long = "qdrant-timeout-secs", env = "RAGD_QDRANT_TIMEOUT_SECS", default_value_t = 30)]
    pub timeout_secs: u64,
    /// Qdrant REST URL (port 6333), which snapshots move over (Qdrant downloads and uploads
    /// snapshot files over REST only); empty: the gRPC URL with port 6334 replaced by 6333.
    #[arg(long = "qdrant-rest-url", env = "RAGD_QDRANT_REST_URL", default_value = "")]
    pub rest_url: String,
}

impl QdrantConfig {
    /// The REST URL: `rest_url`, or the gRPC URL's with port 6334 → 6333 (None when neither
    /// says: snapshots are then refused naming the flag).
    pub fn rest_url(&self) -> Option<String> {
        if !self.rest_url.is_empty() {
            return Some(self.rest_url.trim_end_matches('/').to_string());
        }
        let url = self.url.trim_end_matches('/');
        url.strip_suffix(":6334").map(|base| format!("{base}:6333"))
    }
}

impl Default for QdrantConfig {
    fn default() -> Self {
        ragd_core::config::clap_defaults()
    }
}

/// ragd collections in a Qdrant server or cluster.
pub struct QdrantStore {
    client: Qdrant,
    prefix: String,
    server_version: String,
    specs: RwLock<HashMap<String, StoreSpec>>,
    /// Snapshots' file transfers (None: no REST URL known).
    rest: Option<Rest>,
}

/// The Qdrant snapshot file inside a ragd snapshot of a Qdrant-store collection.
pub const SNAPSHOT_FILE: &str = "qdrant.snapshot";

impl std::fmt::Debug for QdrantStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QdrantStore")
            .field("prefix", &self.prefix)
            .field("server_version", &self.server_version)
            .finish_non_exhaustive()
    }
}

/// A Qdrant failure as an indexer error: the server's status code is kept (UNAVAILABLE,
/// DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED with its retry hint, ...).
fn remote_err(e: QdrantError) -> IndexError {
    match e {
        QdrantError::ResponseError { status } => IndexError::Remote(status),
        QdrantError::ResourceExhaustedError { status, retry_after_seconds } => {
            IndexError::Remote(ragd_core::status::resource_exhausted(
                status.message().to_string(),
                Duration::from_secs(retry_after_seconds.max(1)),
            ))
        }
        // The client could not build a request: ragd's own bug, not the caller's.
        QdrantError::ConversionError(e) => IndexError::Store(format!("qdrant request conversion: {e}")),
        QdrantError::InvalidUri(e) => IndexError::StoreUnavailable(format!("qdrant url: {e}")),
        QdrantError::NoSnapshotFound(c) => {
            IndexError::Remote(tonic::Status::not_found(format!("no snapshot of collection {c:?}")))
        }
        QdrantError::Io(e) => IndexError::StoreUnavailable(format!("qdrant i/o: {e}")),
    }
}

/// Is `server` (a Qdrant version string) compatible with this client?
pub fn compatible(server: &str) -> bool {
    let mut parts = server.trim_start_matches('v').split('.').map(|p| p.parse::<u64>());
    match (parts.next(), parts.next()) {
        (Some(Ok(major)), Some(Ok(minor))) => {
            major == CLIENT_VERSION.0 && minor.abs_diff(CLIENT_VERSION.1) <= 1
        }
        _ => false,
    }
}

impl QdrantStore {
    /// Connects and checks the server's health and version (an incompatible version is logged,
    /// as qdrant-client itself does, not refused).
    pub async fn connect(config: &QdrantConfig) -> Result<Self, IndexError> {
        let mut builder = Qdrant::from_url(&config.url)
            .timeout(Duration::from_secs(config.timeout_secs.max(1)))
            .connect_timeout(Duration::from_secs(config.timeout_secs.clamp(1, 10)))
            .skip_compatibility_check();
        if let Some(key) = &config.api_key {
            builder = builder.api_key(key.clone());
        }
        let client = builder.build().map_err(|e| IndexError::invalid("qdrant_url", e.to_string()))?;
        let health = client.health_check().await.map_err(|e| {
            IndexError::StoreUnavailable(format!("qdrant at {} is not reachable: {e}", config.url))
        })?;
        if compatible(&health.version) {
            tracing::info!(url = %config.url, version = %health.version, "connected to qdrant");
        } else {
            tracing::warn!(
                url = %config.url, server = %health.version, client = ?CLIENT_VERSION,
                "qdrant server version may be incompatible with this client"
            );
        }
        let rest = match config.rest_url() {
            Some(base) => Some(Rest {
                base,
                api_key: config.api_key.clone(),
                http: reqwest::Client::builder()
                    .connect_timeout(Duration::from_secs(config.timeout_secs.clamp(1, 10)))
                    .build()
                    .map_err(|e| IndexError::invalid("qdrant_rest_url", e.to_string()))?,
            }),
            None => None,
        };
        Ok(Self {
            client,
            prefix: config.collection_prefix.clone(),
            server_version: health.version,
            specs: RwLock::new(HashMap::new()),
            rest,
        })
    }

    pub fn server_version(&self) -> &str {
        &self.server_version
    }

    fn qname(&self, collection: &str) -> String {
        format!("{}{collection}", self.prefix)
    }

    fn rest(&self) -> Result<&Rest, IndexError> {
        self.rest.as_ref().ok_or_else(|| {
            IndexError::failed_precondition(
                "qdrant_rest_url",
                "snapshots of the Qdrant store move over Qdrant's REST API: set --qdrant-rest-url \
                 (RAGD_QDRANT_REST_URL), or a --qdrant-url on port 6334 to imply port 6333",
            )
        })
    }

    /// The given chunks' points (payload and dense vector as asked), in order; None for a
    /// chunk not stored.
    async fn get_points(
        &self,
        collection: &str,
        chunks: &[(String, u32)],
        payload: bool,
        dense: bool,
    ) -> Result<Vec<Option<qdrant::RetrievedPoint>>, IndexError> {
        self.spec(collection)?;
        if chunks.is_empty() {
            return Ok(Vec::new());
        }
        let request = qdrant::GetPoints {
            collection_name: self.qname(collection),
            ids: chunks.iter().map(|(doc, chunk)| point_id(doc, *chunk)).collect(),
            with_payload: payload_selector(payload),
            with_vectors: dense_selector(dense),
            ..Default::default()
        };
        let response = self.client.get_points(request).await.map_err(remote_err)?;
        let mut found: HashMap<String, qdrant::RetrievedPoint> = HashMap::new();
        for p in response.result {
            if let Some(qdrant::point_id::PointIdOptions::Uuid(id)) =
                p.id.clone().and_then(|id| id.point_id_options)
            {
                found.insert(id, p);
            }
        }
        Ok(chunks
            .iter()
            .map(|(doc, chunk)| found.remove(&super::point_uuid(doc, *chunk).to_string()))
            .collect())
    }

    fn spec(&self, collection: &str) -> Result<StoreSpec, IndexError> {
        self.specs
            .read()
            .map_err(|_| IndexError::Store("specs lock poisoned".into()))?
            .get(collection)
            .cloned()
            .ok_or_else(|| IndexError::CollectionNotFound(collection.to_string()))
    }

    fn remember(&self, spec: &StoreSpec) -> Result<(), IndexError> {
        self.specs
            .write()
            .map_err(|_| IndexError::Store("specs lock poisoned".into()))?
            .insert(spec.name.clone(), spec.clone());
        Ok(())
    }

    async fn exists(&self, collection: &str) -> Result<bool, IndexError> {
        self.client.collection_exists(self.qname(collection)).await.map_err(remote_err)
    }

    async fn delete_by_filter(&self, collection: &str, selection: Selection<'_>) -> Result<(), IndexError> {
        let request = DeletePoints {
            collection_name: self.qname(collection),
            wait: Some(true),
            points: Some(PointsSelector {
                points_selector_one_of: Some(qdrant::points_selector::PointsSelectorOneOf::Filter(
                    selection.into(),
                )),
            }),
            ..Default::default()
        };
        self.client.delete_points(request).await.map_err(remote_err).map(|_| ())
    }

    /// Runs prepared searches (vector, name, params filled in) as one batch, with the options'
    /// k, threshold and filter; Qdrant merges its shards.
    async fn search_batch(
        &self,
        collection: &str,
        searches: Vec<SearchPoints>,
        options: &SearchOptions,
        higher_is_better: bool,
    ) -> Result<Vec<Vec<Hit>>, IndexError> {
        let filter = match &options.filter {
            Some(f) if !f.is_empty() => Some(qdrant::Filter::from(Selection::Metadata(f))),
            _ => None,
        };
        let name = self.qname(collection);
        let n = searches.len();
        let search_points = searches
            .into_iter()
            .map(|s| SearchPoints {
                collection_name: name.clone(),
                filter: filter.clone(),
                limit: options.k as u64,
                with_payload: payload_selector(true),
                score_threshold: options.score_threshold,
                ..s
            })
            .collect();
        let request = SearchBatchPoints { collection_name: name, search_points, ..Default::default() };
        let response = self.client.search_batch_points(request).await.map_err(remote_err)?;
        if response.result.len() != n {
            return Err(IndexError::Store(format!(
                "qdrant answered {} result lists for {n} queries",
                response.result.len()
            )));
        }
        // Qdrant already merged its shards; the merge only re-checks order and k.
        response
            .result
            .into_iter()
            .map(|r| {
                let hits = r.result.into_iter().map(hit).collect::<Result<Vec<_>, _>>()?;
                Ok(merge_top_k(vec![hits], options.k, higher_is_better))
            })
            .collect()
    }

    async fn count(&self, collection: &str, selection: Option<Selection<'_>>) -> Result<u64, IndexError> {
        let request = CountPoints {
            collection_name: self.qname(collection),
            filter: selection.map(qdrant::Filter::from),
            exact: Some(true),
            ..Default::default()
        };
        let response = self.client.count(request).await.map_err(remote_err)?;
        Ok(response.result.map_or(0, |r| r.count))
    }
}

/// The keyword vector's settings: IDF modifier, on disk with the collection (the deprecated
/// `on_disk` flag, which every server of the supported range reads, as `create` sends it).
#[allow(deprecated)]
fn keyword_vector_config(spec: &StoreSpec) -> qdrant::SparseVectorConfig {
    let on_disk = spec.on_disk == Some(true);
    qdrant::SparseVectorConfig {
        map: HashMap::from([(
            KEYWORD_VECTOR.to_string(),
            qdrant::SparseVectorParams {
                index: on_disk
                    .then(|| qdrant::SparseIndexConfig { on_disk: Some(true), ..Default::default() }),
                modifier: Some(qdrant::Modifier::Idf as i32),
            },
        )]),
    }
}

/// Whether a server version is at least `major.minor`.
fn at_least(server: &str, major: u64, minor: u64) -> bool {
    let mut parts = server.trim_start_matches('v').split('.').map(|p| p.parse::<u64>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(a), Some(b)) => (a, b) >= (major, minor),
        _ => false,
    }
}

fn distance(d: Distance) -> qdrant::Distance {
    match d {
        Distance::Cosine => qdrant::Distance::Cosine,
        Distance::Dot => qdrant::Distance::Dot,
        Distance::Euclid => qdrant::Distance::Euclid,
    }
}

/// A scored point's payload as a hit; a point without ragd's payload (string `doc_id` and `text`,
/// integer `chunk`) is a store error naming the point, never a hit for document "" chunk 0.
fn hit(p: qdrant::ScoredPoint) -> Result<Hit, IndexError> {
    use qdrant::value::Kind;
    let id = match p.id.and_then(|id| id.point_id_options) {
        Some(qdrant::point_id::PointIdOptions::Uuid(u)) => u,
        Some(qdrant::point_id::PointIdOptions::Num(n)) => n.to_string(),
        None => "(no id)".to_string(),
    };
    let malformed = |what: &str| IndexError::Store(format!("qdrant point {id}: malformed payload ({what})"));
    let mut payload = p.payload;
    let text = |v: Option<qdrant::Value>, what: &str| match v.and_then(|v| v.kind) {
        Some(Kind::StringValue(s)) => Ok(s),
        _ => Err(malformed(what)),
    };
    let doc_id = text(payload.remove(filter::DOC_ID), "doc_id is not a string")?;
    let chunk = match payload.remove(filter::CHUNK).and_then(|v| v.kind) {
        Some(Kind::IntegerValue(i)) => u32::try_from(i).ok(),
        _ => None,
    }
    .ok_or_else(|| malformed("chunk is not a 32-bit unsigned integer"))?;
    let text = text(payload.remove("text"), "text is not a string")?;
    let metadata = match payload.remove(filter::METADATA).map(convert::to_json) {
        Some(serde_json::Value::Object(m)) => m,
        None | Some(serde_json::Value::Null) => Default::default(),
        Some(_) => return Err(malformed("metadata is not an object")),
    };
    Ok(Hit { doc_id, chunk, text, score: p.score, metadata, sources: Vec::new() })
}

/// The dense vector only, or no vector.
fn dense_selector(dense: bool) -> Option<qdrant::WithVectorsSelector> {
    Some(qdrant::WithVectorsSelector {
        selector_options: Some(if dense {
            qdrant::with_vectors_selector::SelectorOptions::Include(qdrant::VectorsSelector {
                names: vec![String::new()],
            })
        } else {
            qdrant::with_vectors_selector::SelectorOptions::Enable(false)
        }),
    })
}

fn payload_selector(enable: bool) -> Option<WithPayloadSelector> {
    Some(WithPayloadSelector {
        selector_options: Some(qdrant::with_payload_selector::SelectorOptions::Enable(enable)),
    })
}

fn point_id(doc_id: &str, chunk: u32) -> qdrant::PointId {
    qdrant::PointId {
        point_id_options: Some(qdrant::point_id::PointIdOptions::Uuid(
            super::point_uuid(doc_id, chunk).to_string(),
        )),
    }
}

/// The unnamed dense vector of a retrieved point (Qdrant < 1.12 answers the deprecated `data`).
fn dense_of(v: qdrant::VectorsOutput) -> Option<Vec<f32>> {
    let one = match v.vectors_options? {
        qdrant::vectors_output::VectorsOptions::Vector(one) => one,
        qdrant::vectors_output::VectorsOptions::Vectors(mut named) => named.vectors.remove("")?,
    };
    match one.vector {
        Some(qdrant::vector_output::Vector::Dense(d)) => Some(d.data),
        Some(_) => None,
        #[allow(deprecated)]
        None => Some(one.data),
    }
}

fn dense(data: Vec<f32>) -> qdrant::Vector {
    qdrant::Vector {
        vector: Some(qdrant::vector::Vector::Dense(qdrant::DenseVector { data })),
        ..Default::default()
    }
}

#[tonic::async_trait]
impl VectorStore for QdrantStore {
    async fn create(&self, spec: &StoreSpec) -> Result<(), IndexError> {
        let name = self.qname(&spec.name);
        if self.exists(&spec.name).await? {
            return Err(IndexError::CollectionExists(spec.name.clone()));
        }
        // On disk = `Memory::Cold` (Qdrant >= 1.17); the deprecated flags say the same to older
        // servers, and newer ones let `memory` win.
        let cold = (spec.on_disk == Some(true)).then_some(qdrant::Memory::Cold as i32);
        #[allow(deprecated)]
        let request = CreateCollection {
            collection_name: name.clone(),
            vectors_config: Some(VectorsConfig {
                config: Some(qdrant::vectors_config::Config::Params(VectorParams {
                    size: spec.dim as u64,
                    distance: distance(spec.distance) as i32,
                    memory: cold,
                    on_disk: cold.map(|_| true),
                    // A set indexing threshold is also the full-scan threshold (see the embedded
                    // store's `hnsw_config`): indexed segments are searched through their index.
                    hnsw_config: spec.indexing_threshold_kb.map(|kb| qdrant::HnswConfigDiff {
                        full_scan_threshold: Some(kb as u64),
                        ..Default::default()
                    }),
                    ..Default::default()
                })),
            }),
            // BM25 term weights; Qdrant multiplies query terms by their IDF.
            sparse_vectors_config: spec.sparse.then(|| keyword_vector_config(spec)),
            shard_number: Some(spec.shards),
            replication_factor: spec.replication_factor,
            write_consistency_factor: spec.write_consistency_factor,
            payload: cold.map(|memory| qdrant::PayloadStorageParams { memory: Some(memory) }),
            on_disk_payload: cold.map(|_| true),
            optimizers_config: spec
                .indexing_threshold_kb
                .map(|kb| OptimizersConfigDiff { indexing_threshold: Some(kb as u64), ..Default::default() }),
            ..Default::default()
        };
        self.client.create_collection(request).await.map_err(|e| match remote_err(e) {
            IndexError::Remote(s) if s.code() == tonic::Code::AlreadyExists => {
                IndexError::CollectionExists(spec.name.clone())
            }
            other => other,
        })?;
        // Payload indexes for the fields every delete, count and status filter uses.
        for (field, kind) in [(filter::DOC_ID, FieldType::Keyword), (filter::CHUNK, FieldType::Integer)] {
            let index = CreateFieldIndexCollection {
                collection_name: name.clone(),
                wait: Some(true),
                field_name: field.into(),
                field_type: Some(kind as i32),
                ..Default::default()
            };
            if let Err(e) = self.client.create_field_index(index).await {
                let drop = DeleteCollection { collection_name: name.clone(), ..Default::default() };
                let _ = self.client.delete_collection(drop).await;
                return Err(remote_err(e));
            }
        }
        self.remember(spec)
    }

    async fn open(&self, spec: &StoreSpec) -> Result<(), IndexError> {
        if !self.exists(&spec.name).await? {
            return Err(IndexError::StoreUnavailable(format!(
                "qdrant collection {:?} of ragd collection {:?} is missing",
                self.qname(&spec.name),
                spec.name
            )));
        }
        self.remember(spec)
    }

    async fn drop_collection(&self, name: &str) -> Result<(), IndexError> {
        self.spec(name)?;
        self.client
            .delete_collection(DeleteCollection { collection_name: self.qname(name), ..Default::default() })
            .await
            .map_err(remote_err)?;
        self.specs.write().map_err(|_| IndexError::Store("specs lock poisoned".into()))?.remove(name);
        Ok(())
    }

    async fn upsert(&self, collection: &str, points: &[ChunkPoint]) -> Result<(), IndexError> {
        let spec = self.spec(collection)?;
        super::check_vectors(points, spec.dim)?;
        let mut out = Vec::with_capacity(points.len());
        for p in points {
            let vectors = match &p.sparse {
                // A chunk without keyword terms is stored with its dense vector alone (as the
                // embedded store does): an empty sparse vector would only cost space.
                None => qdrant::vectors::VectorsOptions::Vector(dense(p.vector.clone())),
                Some(sparse) if sparse.indices.is_empty() => {
                    qdrant::vectors::VectorsOptions::Vector(dense(p.vector.clone()))
                }
                Some(sparse) => {
                    let sparse = qdrant::Vector {
                        vector: Some(qdrant::vector::Vector::Sparse(qdrant::SparseVector {
                            values: sparse.values.clone(),
                            indices: sparse.indices.clone(),
                        })),
                        ..Default::default()
                    };
                    qdrant::vectors::VectorsOptions::Vectors(qdrant::NamedVectors {
                        vectors: HashMap::from([
                            (String::new(), dense(p.vector.clone())),
                            (KEYWORD_VECTOR.to_string(), sparse),
                        ]),
                    })
                }
            };
            out.push(PointStruct {
                id: Some(point_id(&p.doc_id, p.chunk)),
                payload: convert::payload(super::payload(p)),
                vectors: Some(qdrant::Vectors { vectors_options: Some(vectors) }),
            });
        }
        if out.is_empty() {
            return Ok(());
        }
        let request = UpsertPoints {
            collection_name: self.qname(collection),
            wait: Some(true),
            points: out,
            ..Default::default()
        };
        self.client.upsert_points(request).await.map_err(remote_err).map(|_| ())
    }

    async fn delete_chunks_from(&self, collection: &str, docs: &[(String, u32)]) -> Result<(), IndexError> {
        self.spec(collection)?;
        if docs.is_empty() {
            return Ok(());
        }
        self.delete_by_filter(collection, Selection::ChunksFrom(docs)).await
    }

    async fn delete_documents(&self, collection: &str, doc_ids: &[String]) -> Result<(), IndexError> {
        self.spec(collection)?;
        if doc_ids.is_empty() {
            return Ok(());
        }
        self.delete_by_filter(collection, Selection::Documents(doc_ids)).await
    }

    async fn search(
        &self,
        collection: &str,
        queries: &[Vec<f32>],
        options: &SearchOptions,
    ) -> Result<Vec<Vec<Hit>>, IndexError> {
        let spec = self.spec(collection)?;
        super::check_queries(queries, spec.dim)?;
        let params = SearchParams {
            hnsw_ef: options.hnsw_ef.map(|e| e as u64),
            exact: Some(options.exact),
            ..Default::default()
        };
        let searches = queries
            .iter()
            .map(|q| SearchPoints { vector: q.clone(), params: Some(params.clone()), ..Default::default() })
            .collect();
        self.search_batch(collection, searches, options, spec.distance.higher_is_better()).await
    }

    async fn search_keyword(
        &self,
        collection: &str,
        queries: &[SparseVector],
        options: &SearchOptions,
    ) -> Result<Vec<Vec<Hit>>, IndexError> {
        let spec = self.spec(collection)?;
        if !spec.sparse {
            return Err(IndexError::failed_precondition(
                "mode",
                format!(
                    "collection {collection:?} has no keyword vector (created before keyword search existed)"
                ),
            ));
        }
        #[allow(deprecated)]
        let searches = queries
            .iter()
            .map(|q| SearchPoints {
                vector: q.values.clone(),
                sparse_indices: Some(qdrant::SparseIndices { data: q.indices.clone() }),
                vector_name: Some(KEYWORD_VECTOR.to_string()),
                ..Default::default()
            })
            .collect();
        self.search_batch(collection, searches, options, true).await
    }

    async fn vectors(
        &self,
        collection: &str,
        chunks: &[(String, u32)],
    ) -> Result<Vec<Option<Vec<f32>>>, IndexError> {
        let points = self.get_points(collection, chunks, false, true).await?;
        Ok(points.into_iter().map(|p| p.and_then(|p| p.vectors).and_then(dense_of)).collect())
    }

    async fn retrieve(
        &self,
        collection: &str,
        chunks: &[(String, u32)],
    ) -> Result<Vec<Option<Hit>>, IndexError> {
        let points = self.get_points(collection, chunks, true, false).await?;
        points
            .into_iter()
            .map(|p| {
                p.map(|p| hit(qdrant::ScoredPoint { id: p.id, payload: p.payload, ..Default::default() }))
                    .transpose()
            })
            .collect()
    }

    /// Qdrant's own snapshot of the collection (gRPC CreateSnapshot), downloaded over REST into
    /// `dir`, then deleted on the server: the copy lives with ragd's other snapshots. Qdrant's
    /// snapshots are node-local, so a collection with a shard that lives only on other peers is
    /// refused (FAILED_PRECONDITION) rather than half copied.
    async fn snapshot(&self, collection: &str, dir: &Path) -> Result<(), IndexError> {
        self.spec(collection)?;
        let rest = self.rest()?;
        let name = self.qname(collection);
        let cluster = self
            .client
            .collection_cluster_info(CollectionClusterInfoRequest { collection_name: name.clone() })
            .await
            .map_err(remote_err)?;
        let elsewhere: Vec<u32> = cluster
            .remote_shards
            .iter()
            .map(|r| r.shard_id)
            .filter(|id| !cluster.local_shards.iter().any(|l| l.shard_id == *id))
            .collect();
        if !elsewhere.is_empty() {
            return Err(IndexError::failed_precondition(
                "collection",
                format!(
                    "collection {collection:?}: shards {elsewhere:?} live only on other Qdrant peers, and a Qdrant \
                     collection snapshot holds one peer's shards; snapshot each peer with Qdrant's API"
                ),
            ));
        }
        let created = self
            .client
            .create_snapshot(qdrant::CreateSnapshotRequest { collection_name: name.clone() })
            .await
            .map_err(remote_err)?;
        let description = created.snapshot_description.ok_or_else(|| {
            IndexError::Store(format!("qdrant created a snapshot of {name} without describing it"))
        })?;
        let expected = u64::try_from(description.size).ok().filter(|&s| s > 0);
        let fetched = rest.download(&name, &description.name, expected, &dir.join(SNAPSHOT_FILE)).await;
        let delete = qdrant::DeleteSnapshotRequest {
            collection_name: name.clone(),
            snapshot_name: description.name.clone(),
        };
        if let Err(e) = self.client.delete_snapshot(delete).await {
            tracing::warn!(collection = %name, snapshot = %description.name, error = %e, "qdrant snapshot left on the server");
        }
        let bytes = fetched?;
        tracing::info!(collection = %name, snapshot = %description.name, bytes, "qdrant snapshot downloaded");
        Ok(())
    }

    /// Creates the Qdrant collection of `spec` from the Qdrant snapshot in `dir` (uploaded over
    /// REST; Qdrant recovers it, payload indexes included).
    async fn restore(&self, spec: &StoreSpec, dir: &Path) -> Result<(), IndexError> {
        let rest = self.rest()?;
        let file = dir.join(SNAPSHOT_FILE);
        if !file.is_file() {
            return Err(IndexError::failed_precondition(
                "snapshot",
                format!(
                    "the snapshot holds no Qdrant snapshot file ({SNAPSHOT_FILE}): another store took it"
                ),
            ));
        }
        if self.exists(&spec.name).await? {
            return Err(IndexError::CollectionExists(spec.name.clone()));
        }
        rest.upload(&self.qname(&spec.name), &file).await?;
        self.remember(spec)
    }

    /// Qdrant ≥ 1.18 adds a named vector to a live collection (UpdateCollection); every point is
    /// then written again with its keyword weights (the dense vector and payload as they were).
    async fn add_keyword_vector(
        &self,
        spec: &StoreSpec,
        sparse_of: SparseOf,
    ) -> Result<(StoreSpec, u64), IndexError> {
        let old = self.spec(&spec.name)?;
        if !at_least(&self.server_version, 1, 18) {
            return Err(IndexError::failed_precondition(
                "collection",
                format!(
                    "collection {:?} was created before keyword search existed and Qdrant {} cannot add a vector to it (1.18 can); re-create it with a keyword index and ingest again",
                    spec.name, self.server_version
                ),
            ));
        }
        let new_spec = StoreSpec { sparse: true, ..old };
        let request = qdrant::UpdateCollection {
            collection_name: self.qname(&spec.name),
            sparse_vectors_config: Some(keyword_vector_config(&new_spec)),
            ..Default::default()
        };
        self.client.update_collection(request).await.map_err(remote_err)?;
        self.remember(&new_spec)?;
        let weighted = super::rewrite_keyword_weights(self, &spec.name, sparse_of, None).await?;
        Ok((new_spec, weighted))
    }

    async fn scroll(&self, collection: &str, page: &ScrollPage) -> Result<ScrollOut, IndexError> {
        self.spec(collection)?;
        // Qdrant's own offset: the first point's id, ordered across the cluster.
        let offset = page
            .offset
            .as_ref()
            .map(|token| {
                uuid::Uuid::parse_str(token)
                    .map(|u| qdrant::PointId {
                        point_id_options: Some(qdrant::point_id::PointIdOptions::Uuid(u.to_string())),
                    })
                    .map_err(|_| {
                        IndexError::invalid(
                            "offset",
                            format!(
                                "{} is not a next_offset this collection gave",
                                ragd_core::status::quote(token)
                            ),
                        )
                    })
            })
            .transpose()?;
        let request = qdrant::ScrollPoints {
            collection_name: self.qname(collection),
            filter: page
                .filter
                .as_ref()
                .filter(|f| !f.is_empty())
                .map(|f| qdrant::Filter::from(Selection::Metadata(f))),
            offset,
            limit: Some(u32::try_from(page.limit).unwrap_or(u32::MAX)),
            with_payload: payload_selector(true),
            with_vectors: dense_selector(page.with_vectors),
            ..Default::default()
        };
        let response = self.client.scroll(request).await.map_err(remote_err)?;
        let chunks = response
            .result
            .into_iter()
            .map(|p| {
                let vector = match (page.with_vectors, p.vectors) {
                    (false, _) => Vec::new(),
                    (true, Some(v)) => dense_of(v).ok_or_else(|| {
                        IndexError::Store(format!("qdrant point {:?}: no dense vector", p.id))
                    })?,
                    (true, None) => {
                        return Err(IndexError::Store(format!(
                            "qdrant point {:?}: no vectors returned",
                            p.id
                        )));
                    }
                };
                let point = qdrant::ScoredPoint { id: p.id, payload: p.payload, ..Default::default() };
                Ok(hit(point)?.into_point(vector))
            })
            .collect::<Result<Vec<_>, IndexError>>()?;
        let next = match response.next_page_offset.and_then(|id| id.point_id_options) {
            Some(qdrant::point_id::PointIdOptions::Uuid(u)) => Some(u),
            Some(qdrant::point_id::PointIdOptions::Num(n)) => {
                return Err(IndexError::Store(format!("qdrant point {n}: a numeric id ragd never writes")));
            }
            None => None,
        };
        Ok(ScrollOut { chunks, next })
    }

    async fn count_chunks(&self, collection: &str, doc_id: &str) -> Result<u64, IndexError> {
        self.spec(collection)?;
        self.count(collection, Some(Selection::Documents(&[doc_id.to_string()]))).await
    }

    async fn count_documents(&self, collection: &str, doc_ids: &[String]) -> Result<u64, IndexError> {
        self.spec(collection)?;
        let mut ids = doc_ids.to_vec();
        ids.sort_unstable();
        ids.dedup();
        self.count(collection, Some(Selection::FirstChunks(&ids))).await
    }

    async fn stats(&self, collection: &str) -> Result<StoreStats, IndexError> {
        self.spec(collection)?;
        let name = self.qname(collection);
        // Four independent calls, in flight together (one round trip, not four).
        let (info, cluster, documents, points) = futures::try_join!(
            async {
                self.client
                    .collection_info(GetCollectionInfoRequest { collection_name: name.clone() })
                    .await
                    .map_err(remote_err)?
                    .result
                    .ok_or_else(|| IndexError::Store("qdrant returned no collection info".into()))
            },
            async {
                self.client
                    .collection_cluster_info(CollectionClusterInfoRequest { collection_name: name.clone() })
                    .await
                    .map_err(remote_err)
            },
            self.count(collection, Some(Selection::Chunk(0))),
            self.count(collection, None),
        )?;
        // Shards this peer holds carry counts; shards held only by other peers are listed
        // without them (Qdrant reports counts for local shards only).
        let mut shards: Vec<ShardStats> = cluster
            .local_shards
            .iter()
            .map(|s| ShardStats { id: s.shard_id, points: s.points_count, ..Default::default() })
            .collect();
        for r in &cluster.remote_shards {
            if !shards.iter().any(|s| s.id == r.shard_id) {
                shards.push(ShardStats { id: r.shard_id, ..Default::default() });
            }
        }
        shards.sort_by_key(|s| s.id);
        let status = qdrant::CollectionStatus::try_from(info.status)
            .map(|s| s.as_str_name().to_lowercase())
            .unwrap_or_else(|_| "unknown".into());
        let optimizer = match &info.optimizer_status {
            Some(o) if !o.ok => format!("{status}: optimizer error: {}", o.error),
            _ => status,
        };
        Ok(StoreStats {
            points,
            documents,
            indexed_vectors: info.indexed_vectors_count.unwrap_or(0),
            segments: info.segments_count,
            // Qdrant does not report disk usage over its API.
            disk_bytes: 0,
            shards,
            optimizer_state: Some(format!("qdrant {optimizer}")),
        })
    }

    async fn optimize(&self, _collection: &str) -> Result<bool, IndexError> {
        // Qdrant's own optimizer builds indexes server-side.
        Ok(false)
    }

    async fn flush(&self) -> Result<(), IndexError> {
        // Every write waited for Qdrant to apply it; the server owns durability.
        Ok(())
    }
}

/// Conversions to Qdrant's gRPC types: payloads (document metadata is JSON) both ways, and a
/// [`Selection`] straight to a gRPC filter.
pub mod convert {
    use std::collections::HashMap;

    use qdrant_client::qdrant::{self, condition::ConditionOneOf, r#match::MatchValue, value::Kind};
    use serde_json::{Map, Number, Value};

    use crate::filter::{self, AnyOf, Scalar, Selection, Test};

    pub fn from_json(v: Value) -> qdrant::Value {
        let kind = match v {
            Value::Null => Kind::NullValue(0),
            Value::Bool(b) => Kind::BoolValue(b),
            Value::Number(n) => match n.as_i64() {
                Some(i) => Kind::IntegerValue(i),
                None => Kind::DoubleValue(n.as_f64().unwrap_or(0.0)),
            },
            Value::String(s) => Kind::StringValue(s),
            Value::Array(a) => {
                Kind::ListValue(qdrant::ListValue { values: a.into_iter().map(from_json).collect() })
            }
            Value::Object(o) => Kind::StructValue(qdrant::Struct { fields: payload_map(o) }),
        };
        qdrant::Value { kind: Some(kind) }
    }

    pub fn to_json(v: qdrant::Value) -> Value {
        match v.kind {
            None | Some(Kind::NullValue(_)) => Value::Null,
            Some(Kind::BoolValue(b)) => Value::Bool(b),
            Some(Kind::IntegerValue(i)) => Value::from(i),
            Some(Kind::DoubleValue(f)) => Number::from_f64(f).map_or(Value::Null, Value::Number),
            Some(Kind::StringValue(s)) => Value::String(s),
            Some(Kind::ListValue(l)) => Value::Array(l.values.into_iter().map(to_json).collect()),
            Some(Kind::StructValue(s)) => Value::Object(payload_to_json(s.fields)),
        }
    }

    fn payload_map(o: Map<String, Value>) -> HashMap<String, qdrant::Value> {
        o.into_iter().map(|(k, v)| (k, from_json(v))).collect()
    }

    /// A JSON object as a point payload.
    pub fn payload(o: Map<String, Value>) -> HashMap<String, qdrant::Value> {
        payload_map(o)
    }

    pub fn payload_to_json(p: HashMap<String, qdrant::Value>) -> Map<String, Value> {
        p.into_iter().map(|(k, v)| (k, to_json(v))).collect()
    }

    fn field(key: String, m: MatchValue) -> qdrant::Condition {
        let f = qdrant::FieldCondition {
            key,
            r#match: Some(qdrant::Match { match_value: Some(m) }),
            ..Default::default()
        };
        qdrant::Condition { condition_one_of: Some(ConditionOneOf::Field(f)) }
    }

    fn range(key: String, r: filter::Range) -> qdrant::Condition {
        let f = qdrant::FieldCondition {
            key,
            range: Some(qdrant::Range { gt: r.gt, gte: r.gte, lt: r.lt, lte: r.lte }),
            ..Default::default()
        };
        qdrant::Condition { condition_one_of: Some(ConditionOneOf::Field(f)) }
    }

    fn must(conditions: Vec<qdrant::Condition>) -> qdrant::Filter {
        qdrant::Filter { must: conditions, ..Default::default() }
    }

    fn conditions(cs: &[filter::Condition]) -> Vec<qdrant::Condition> {
        cs.iter()
            .map(|c| {
                let key = c.payload_key();
                match c.test() {
                    Test::Match(Scalar::Keyword(s)) => field(key, MatchValue::Keyword(s.clone())),
                    Test::Match(Scalar::Integer(i)) => field(key, MatchValue::Integer(*i)),
                    Test::Match(Scalar::Bool(b)) => field(key, MatchValue::Boolean(*b)),
                    Test::MatchAny(AnyOf::Keywords(v)) => {
                        field(key, MatchValue::Keywords(qdrant::RepeatedStrings { strings: v.clone() }))
                    }
                    Test::MatchAny(AnyOf::Integers(v)) => {
                        field(key, MatchValue::Integers(qdrant::RepeatedIntegers { integers: v.clone() }))
                    }
                    Test::Range(r) => range(key, *r),
                }
            })
            .collect()
    }

    impl From<Selection<'_>> for qdrant::Filter {
        /// Qdrant's gRPC filter for a selection, built from qdrant-client's types (no JSON).
        fn from(selection: Selection<'_>) -> Self {
            match selection {
                Selection::Documents(ids) => must(vec![field(
                    filter::DOC_ID.into(),
                    MatchValue::Keywords(qdrant::RepeatedStrings { strings: ids.to_vec() }),
                )]),
                Selection::Chunk(index) => {
                    must(vec![field(filter::CHUNK.into(), MatchValue::Integer(i64::from(index)))])
                }
                Selection::FirstChunks(ids) => must(vec![
                    field(
                        filter::DOC_ID.into(),
                        MatchValue::Keywords(qdrant::RepeatedStrings { strings: ids.to_vec() }),
                    ),
                    field(filter::CHUNK.into(), MatchValue::Integer(0)),
                ]),
                Selection::ChunksFrom(docs) => qdrant::Filter {
                    should: docs
                        .iter()
                        .map(|(doc, from)| qdrant::Condition {
                            condition_one_of: Some(ConditionOneOf::Filter(must(vec![
                                field(filter::DOC_ID.into(), MatchValue::Keyword(doc.clone())),
                                range(
                                    filter::CHUNK.into(),
                                    filter::Range { gte: Some(f64::from(*from)), ..Default::default() },
                                ),
                            ]))),
                        })
                        .collect(),
                    ..Default::default()
                },
                Selection::Metadata(f) => qdrant::Filter {
                    must: conditions(&f.must),
                    should: conditions(&f.should),
                    must_not: conditions(&f.must_not),
                    min_should: None,
                },
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use serde_json::json;

        #[test]
        fn payload_round_trips() {
            let v = json!({"a": 1, "b": 2.5, "c": "x", "d": [true, null], "e": {"f": -3}});
            let Value::Object(o) = v.clone() else { unreachable!() };
            let back = Value::Object(payload_to_json(payload(o)));
            assert_eq!(back, v);
        }

        /// The expected gRPC filters are written out by hand from Qdrant's protocol, not built by
        /// the code under test.
        #[test]
        fn selections_become_qdrants_grpc_filters() {
            let cond = |key: &str, test| filter::Condition::new(key, test).expect("valid");
            let f = filter::Filter {
                must: vec![cond("country", Test::Match(Scalar::Keyword("Germany".into())))],
                should: vec![cond(
                    "year",
                    Test::Range(filter::Range { gte: Some(2000.0), lt: Some(2010.0), ..Default::default() }),
                )],
                must_not: vec![cond("n", Test::MatchAny(AnyOf::Integers(vec![1, 2])))],
            };
            let got = qdrant::Filter::from(Selection::Metadata(&f));
            let want = qdrant::Filter {
                must: vec![qdrant::Condition {
                    condition_one_of: Some(ConditionOneOf::Field(qdrant::FieldCondition {
                        key: "metadata.country".into(),
                        r#match: Some(qdrant::Match {
                            match_value: Some(MatchValue::Keyword("Germany".into())),
                        }),
                        ..Default::default()
                    })),
                }],
                should: vec![qdrant::Condition {
                    condition_one_of: Some(ConditionOneOf::Field(qdrant::FieldCondition {
                        key: "metadata.year".into(),
                        range: Some(qdrant::Range {
                            gt: None,
                            gte: Some(2000.0),
                            lt: Some(2010.0),
                            lte: None,
                        }),
                        ..Default::default()
                    })),
                }],
                must_not: vec![qdrant::Condition {
                    condition_one_of: Some(ConditionOneOf::Field(qdrant::FieldCondition {
                        key: "metadata.n".into(),
                        r#match: Some(qdrant::Match {
                            match_value: Some(MatchValue::Integers(qdrant::RepeatedIntegers {
                                integers: vec![1, 2],
                            })),
                        }),
                        ..Default::default()
                    })),
                }],
                min_should: None,
            };
            assert_eq!(got, want);

            let docs = [("d".to_string(), 3u32)];
            let got = qdrant::Filter::from(Selection::ChunksFrom(&docs));
            assert!(got.must.is_empty() && got.must_not.is_empty());
            let Some(ConditionOneOf::Filter(nested)) = &got.should[0].condition_one_of else {
                panic!("a nested filter per document: {got:?}")
            };
            let keys: Vec<&str> = nested
                .must
                .iter()
                .map(|c| match &c.condition_one_of {
                    Some(ConditionOneOf::Field(f)) => f.key.as_str(),
                    other => panic!("{other:?}"),
                })
                .collect();
            assert_eq!(keys, ["doc_id", "chunk"]);
            let Some(ConditionOneOf::Field(chunk)) = &nested.must[1].condition_one_of else { unreachable!() };
            assert_eq!(chunk.range, Some(qdrant::Range { gt: None, gte: Some(3.0), lt: None, lte: None }));
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn version_floor() {
        assert!(super::at_least("1.18.0", 1, 18));
        assert!(super::at_least("v1.20.3", 1, 18));
        assert!(super::at_least("2.0.0", 1, 18));
        assert!(!super::at_least("1.17.9", 1, 18));
        assert!(!super::at_least("dev", 1, 18));
    }
}
