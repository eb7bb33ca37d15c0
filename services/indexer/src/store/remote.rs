//! The remote store: a Qdrant server or cluster over gRPC (`qdrant-client`). A ragd collection
//! `c` is the Qdrant collection `<prefix>c` with one unnamed dense vector, `shard_number`,
//! `replication_factor`, `write_consistency_factor` and on-disk vectors taken from the
//! collection's spec; Qdrant routes points to shards and builds HNSW itself, so `optimize` has
//! nothing to do here. Writes use `wait=true`: a write is acknowledged once Qdrant has applied
//! it (after its WAL). Filters are built once as Qdrant's filter JSON (see [`crate::filter`])
//! and translated to the gRPC form here; [`convert`] also holds the payload conversions, which
//! the Qdrant-protocol test server reuses.

use std::collections::HashMap;
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
use super::{ChunkPoint, Distance, Hit, SearchOptions, ShardStats, StoreSpec, StoreStats, VectorStore};
use crate::error::IndexError;
use crate::filter;

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
}

impl Default for QdrantConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:6334".into(),
            api_key: None,
            collection_prefix: "ragd_".into(),
            timeout_secs: 30,
        }
    }
}

/// ragd collections in a Qdrant server or cluster.
pub struct QdrantStore {
    client: Qdrant,
    prefix: String,
    server_version: String,
    specs: RwLock<HashMap<String, StoreSpec>>,
}

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
        other => IndexError::Store(format!("qdrant: {other}")),
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
        Ok(Self {
            client,
            prefix: config.collection_prefix.clone(),
            server_version: health.version,
            specs: RwLock::new(HashMap::new()),
        })
    }

    pub fn server_version(&self) -> &str {
        &self.server_version
    }

    fn qname(&self, collection: &str) -> String {
        format!("{}{collection}", self.prefix)
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

    async fn delete_by_filter(&self, collection: &str, filter: serde_json::Value) -> Result<(), IndexError> {
        let request = DeletePoints {
            collection_name: self.qname(collection),
            wait: Some(true),
            points: Some(PointsSelector {
                points_selector_one_of: Some(qdrant::points_selector::PointsSelectorOneOf::Filter(
                    convert::filter(&filter)?,
                )),
            }),
            ..Default::default()
        };
        self.client.delete_points(request).await.map_err(remote_err).map(|_| ())
    }

    async fn count(&self, collection: &str, filter: Option<serde_json::Value>) -> Result<u64, IndexError> {
        let request = CountPoints {
            collection_name: self.qname(collection),
            filter: filter.as_ref().map(convert::filter).transpose()?,
            exact: Some(true),
            ..Default::default()
        };
        let response = self.client.count(request).await.map_err(remote_err)?;
        Ok(response.result.map_or(0, |r| r.count))
    }
}

fn distance(d: Distance) -> qdrant::Distance {
    match d {
        Distance::Cosine => qdrant::Distance::Cosine,
        Distance::Dot => qdrant::Distance::Dot,
        Distance::Euclid => qdrant::Distance::Euclid,
    }
}

fn hit(p: qdrant::ScoredPoint) -> Hit {
    let mut payload = p.payload;
    let text = |v: Option<qdrant::Value>| match v.and_then(|v| v.kind) {
        Some(qdrant::value::Kind::StringValue(s)) => s,
        _ => String::new(),
    };
    Hit {
        doc_id: text(payload.remove("doc_id")),
        chunk: match payload.remove("chunk").and_then(|v| v.kind) {
            Some(qdrant::value::Kind::IntegerValue(i)) => i as u32,
            Some(qdrant::value::Kind::DoubleValue(f)) => f as u32,
            _ => 0,
        },
        text: text(payload.remove("text")),
        score: p.score,
        metadata: match payload.remove(filter::METADATA).map(convert::to_json) {
            Some(serde_json::Value::Object(m)) => m,
            _ => Default::default(),
        },
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
                    ..Default::default()
                })),
            }),
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
        for (field, kind) in [("doc_id", FieldType::Keyword), ("chunk", FieldType::Integer)] {
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
            out.push(PointStruct {
                id: Some(qdrant::PointId {
                    point_id_options: Some(qdrant::point_id::PointIdOptions::Uuid(
                        super::point_uuid(&p.doc_id, p.chunk).to_string(),
                    )),
                }),
                payload: convert::payload(serde_json::Value::Object(super::payload(p))),
                vectors: Some(qdrant::Vectors {
                    vectors_options: Some(qdrant::vectors::VectorsOptions::Vector(qdrant::Vector {
                        vector: Some(qdrant::vector::Vector::Dense(qdrant::DenseVector {
                            data: p.vector.clone(),
                        })),
                        ..Default::default()
                    })),
                }),
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
        self.delete_by_filter(collection, filter::chunks_from_many(docs)).await
    }

    async fn delete_documents(&self, collection: &str, doc_ids: &[String]) -> Result<(), IndexError> {
        self.spec(collection)?;
        if doc_ids.is_empty() {
            return Ok(());
        }
        self.delete_by_filter(collection, filter::documents(doc_ids)).await
    }

    async fn search(
        &self,
        collection: &str,
        queries: &[Vec<f32>],
        options: &SearchOptions,
    ) -> Result<Vec<Vec<Hit>>, IndexError> {
        let spec = self.spec(collection)?;
        super::check_queries(queries, spec.dim)?;
        let filter = match &options.filter {
            Some(f) if !f.is_empty() => Some(convert::filter(&f.to_qdrant_json())?),
            _ => None,
        };
        let name = self.qname(collection);
        let search_points = queries
            .iter()
            .map(|q| SearchPoints {
                collection_name: name.clone(),
                vector: q.clone(),
                filter: filter.clone(),
                limit: options.k as u64,
                with_payload: Some(WithPayloadSelector {
                    selector_options: Some(qdrant::with_payload_selector::SelectorOptions::Enable(true)),
                }),
                params: Some(SearchParams {
                    hnsw_ef: options.hnsw_ef.map(|e| e as u64),
                    exact: Some(options.exact),
                    ..Default::default()
                }),
                score_threshold: options.score_threshold,
                ..Default::default()
            })
            .collect();
        let request = SearchBatchPoints { collection_name: name, search_points, ..Default::default() };
        let response = self.client.search_batch_points(request).await.map_err(remote_err)?;
        if response.result.len() != queries.len() {
            return Err(IndexError::Store(format!(
                "qdrant answered {} result lists for {} queries",
                response.result.len(),
                queries.len()
            )));
        }
        let higher = spec.distance.higher_is_better();
        // Qdrant already merged its shards; the merge only re-checks order and k.
        Ok(response
            .result
            .into_iter()
            .map(|r| merge_top_k(vec![r.result.into_iter().map(hit).collect()], options.k, higher))
            .collect())
    }

    async fn count_chunks(&self, collection: &str, doc_id: &str) -> Result<u64, IndexError> {
        self.spec(collection)?;
        self.count(collection, Some(filter::documents(&[doc_id.to_string()]))).await
    }

    async fn stats(&self, collection: &str) -> Result<StoreStats, IndexError> {
        self.spec(collection)?;
        let name = self.qname(collection);
        let info = self
            .client
            .collection_info(GetCollectionInfoRequest { collection_name: name.clone() })
            .await
            .map_err(remote_err)?
            .result
            .ok_or_else(|| IndexError::Store("qdrant returned no collection info".into()))?;
        let cluster = self
            .client
            .collection_cluster_info(CollectionClusterInfoRequest { collection_name: name })
            .await
            .map_err(remote_err)?;
        let documents = self.count(collection, Some(filter::chunk(0))).await?;
        let points = self.count(collection, None).await?;
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

/// Conversions between serde JSON (ragd's payloads and filters) and Qdrant's gRPC types.
pub mod convert {
    use std::collections::HashMap;

    use qdrant_client::qdrant::{self, condition::ConditionOneOf, r#match::MatchValue, value::Kind};
    use serde_json::{Map, Number, Value};

    use crate::error::IndexError;

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

    /// A JSON object as a point payload (anything else gives an empty payload).
    pub fn payload(v: Value) -> HashMap<String, qdrant::Value> {
        match v {
            Value::Object(o) => payload_map(o),
            _ => HashMap::new(),
        }
    }

    pub fn payload_to_json(p: HashMap<String, qdrant::Value>) -> Map<String, Value> {
        p.into_iter().map(|(k, v)| (k, to_json(v))).collect()
    }

    fn bad(reason: String) -> IndexError {
        IndexError::Store(format!("filter translation: {reason}"))
    }

    /// Qdrant's filter JSON (the subset [`crate::filter`] produces: must / should / must_not of
    /// `{key, match: {value | any}}` and `{key, range: {gt, gte, lt, lte}}`) as a gRPC filter.
    pub fn filter(v: &Value) -> Result<qdrant::Filter, IndexError> {
        let list = |name: &str| -> Result<Vec<qdrant::Condition>, IndexError> {
            match v.get(name) {
                None | Some(Value::Null) => Ok(Vec::new()),
                Some(Value::Array(cs)) => cs.iter().map(condition).collect(),
                Some(other) => Err(bad(format!("{name} must be a list, got {other}"))),
            }
        };
        Ok(qdrant::Filter {
            must: list("must")?,
            should: list("should")?,
            must_not: list("must_not")?,
            min_should: None,
        })
    }

    fn condition(c: &Value) -> Result<qdrant::Condition, IndexError> {
        // A nested filter (`{must|should|must_not: [...]}`) as a condition.
        if c.get("key").is_none() && ["must", "should", "must_not"].iter().any(|k| c.get(k).is_some()) {
            return Ok(qdrant::Condition { condition_one_of: Some(ConditionOneOf::Filter(filter(c)?)) });
        }
        let key =
            c.get("key").and_then(Value::as_str).ok_or_else(|| bad(format!("condition without key: {c}")))?;
        let mut field = qdrant::FieldCondition { key: key.to_string(), ..Default::default() };
        if let Some(m) = c.get("match") {
            let value = if let Some(v) = m.get("value") {
                match v {
                    Value::String(s) => MatchValue::Keyword(s.clone()),
                    Value::Bool(b) => MatchValue::Boolean(*b),
                    v => MatchValue::Integer(v.as_i64().ok_or_else(|| bad(format!("match value {v}")))?),
                }
            } else if let Some(Value::Array(any)) = m.get("any") {
                if let Some(strings) =
                    any.iter().map(|v| v.as_str().map(str::to_string)).collect::<Option<Vec<_>>>()
                {
                    MatchValue::Keywords(qdrant::RepeatedStrings { strings })
                } else if let Some(integers) = any.iter().map(Value::as_i64).collect::<Option<Vec<_>>>() {
                    MatchValue::Integers(qdrant::RepeatedIntegers { integers })
                } else {
                    return Err(bad(format!("match any needs all strings or all integers: {m}")));
                }
            } else {
                return Err(bad(format!("unsupported match {m}")));
            };
            field.r#match = Some(qdrant::Match { match_value: Some(value) });
        } else if let Some(r) = c.get("range") {
            let bound = |name: &str| r.get(name).and_then(Value::as_f64);
            field.range = Some(qdrant::Range {
                gt: bound("gt"),
                gte: bound("gte"),
                lt: bound("lt"),
                lte: bound("lte"),
            });
        } else {
            return Err(bad(format!("unsupported condition {c}")));
        }
        Ok(qdrant::Condition { condition_one_of: Some(ConditionOneOf::Field(field)) })
    }

    /// A gRPC filter back as Qdrant's filter JSON (the same subset), for servers built on the
    /// engine's JSON types.
    pub fn filter_to_json(f: &qdrant::Filter) -> Result<Value, String> {
        let list = |cs: &[qdrant::Condition]| cs.iter().map(condition_to_json).collect::<Result<Vec<_>, _>>();
        Ok(
            serde_json::json!({ "must": list(&f.must)?, "should": list(&f.should)?, "must_not": list(&f.must_not)? }),
        )
    }

    fn condition_to_json(c: &qdrant::Condition) -> Result<Value, String> {
        let f = match &c.condition_one_of {
            Some(ConditionOneOf::Field(f)) => f,
            Some(ConditionOneOf::Filter(nested)) => return filter_to_json(nested),
            _ => return Err(format!("unsupported condition {c:?}")),
        };
        if let Some(m) = f.r#match.as_ref().and_then(|m| m.match_value.as_ref()) {
            let m = match m {
                MatchValue::Keyword(s) => serde_json::json!({ "value": s }),
                MatchValue::Integer(i) => serde_json::json!({ "value": i }),
                MatchValue::Boolean(b) => serde_json::json!({ "value": b }),
                MatchValue::Keywords(k) => serde_json::json!({ "any": k.strings }),
                MatchValue::Integers(i) => serde_json::json!({ "any": i.integers }),
                other => return Err(format!("unsupported match {other:?}")),
            };
            Ok(serde_json::json!({ "key": f.key, "match": m }))
        } else if let Some(r) = &f.range {
            Ok(
                serde_json::json!({ "key": f.key, "range": { "gt": r.gt, "gte": r.gte, "lt": r.lt, "lte": r.lte } }),
            )
        } else {
            Err(format!("unsupported field condition on {:?}", f.key))
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use serde_json::json;

        #[test]
        fn payload_round_trips() {
            let v = json!({"a": 1, "b": 2.5, "c": "x", "d": [true, null], "e": {"f": -3}});
            let back = Value::Object(payload_to_json(payload(v.clone())));
            assert_eq!(back, v);
        }

        #[test]
        fn filters_round_trip_through_grpc() {
            let f = crate::filter::Filter {
                must: vec![crate::filter::Condition {
                    key: "country".into(),
                    test: crate::filter::Test::Match(json!("Germany")),
                }],
                should: vec![crate::filter::Condition {
                    key: "year".into(),
                    test: crate::filter::Test::Range {
                        gt: None,
                        gte: Some(2000.0),
                        lt: Some(2010.0),
                        lte: None,
                    },
                }],
                must_not: vec![crate::filter::Condition {
                    key: "n".into(),
                    test: crate::filter::Test::MatchAny(vec![json!(1), json!(2)]),
                }],
            };
            let j = f.to_qdrant_json();
            let grpc = filter(&j).expect("translates");
            assert_eq!(grpc.must.len() + grpc.should.len() + grpc.must_not.len(), 3);
            let back = filter_to_json(&grpc).expect("back");
            // Ranges come back with explicit nulls for absent bounds, as they went in.
            assert_eq!(back, j);
            for doc in
                [crate::filter::documents(&["a".into(), "b".into()]), crate::filter::chunks_from("d", 3)]
            {
                let back = filter_to_json(&filter(&doc).expect("translates")).expect("back");
                for part in ["must", "should"] {
                    let len = |v: &Value| v[part].as_array().map_or(0, Vec::len);
                    assert_eq!(len(&back), len(&doc), "{part} of {doc}");
                }
            }
        }

        #[test]
        fn mixed_match_any_is_refused() {
            let j = json!({"must": [{"key": "k", "match": {"any": ["a", 1]}}]});
            assert!(filter(&j).is_err());
        }
    }
}
