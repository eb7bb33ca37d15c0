//! **Qdrant-protocol test server — a test double, not Qdrant.** No Qdrant server can be installed
//! on the build machines (no registry ships one), so the remote store's tests talk to this:
//! the gRPC services of Qdrant's own protocol (the server traits `qdrant-client` generates:
//! `Qdrant`, `Collections`, `Points`) over a real loopback socket, backed by the real Qdrant
//! engine (`qdrant-edge`, one engine shard per Qdrant shard in a temp directory). It implements
//! the calls `ragd_indexer::store::remote::QdrantStore` makes — health check, collection
//! create / exists / info / cluster info / delete, create field index, upsert, delete by ids or
//! filter, count, search and search batch (dense, or on the named sparse vector ragd keeps BM25
//! weights in, with Qdrant's IDF modifier), get points, collection snapshots (gRPC create / list /
//! delete; the file downloaded and uploaded over a REST listener, as Qdrant moves snapshot files)
//! — and answers every other call UNIMPLEMENTED.
//! Replication is recorded, not performed (one peer). Like Qdrant, a background optimizer
//! builds HNSW indexes.
//!
//! Tests that use it run against a real Qdrant instead when `QDRANT_URL` is set
//! ([`qdrant_url_or_test_server`]).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use qdrant_client::qdrant::{
    self, collections_server::Collections, points_server::Points, qdrant_server::Qdrant,
    snapshots_server::Snapshots,
};
use qdrant_edge::{
    CountRequest, DEFAULT_VECTOR_NAME, EdgeConfig, EdgeOptimizersConfig, EdgeShard, EdgeSparseVectorParams,
    EdgeVectorParams, Modifier, NamedQuery, Payload, PointId, PointInsertOperations, PointOperations,
    PointStructPersisted, QueryEnum, ScrollRequest, SearchParams, SearchRequest, UpdateOperation,
    VectorInternal, VectorPersisted, VectorStructInternal, VectorStructPersisted, WithPayloadInterface,
    WithVector,
};
use ragd_indexer::store::edge::shard_of;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::{Request, Response, Status};

/// The protocol version this double speaks (the qdrant-client it was written against).
pub const PROTOCOL_VERSION: &str = "1.20.0";

struct Shard {
    engine: EdgeShard,
    /// `EdgeShard::flush` (run on drop) panics if a write holds the WAL; serialise writes.
    writes: Mutex<()>,
}

impl Shard {
    fn update(&self, op: UpdateOperation) -> Result<(), Status> {
        let _g = self.writes.lock().map_err(|_| Status::internal("shard lock poisoned"))?;
        self.engine.update(op).map_err(|e| Status::invalid_argument(format!("Wrong input: {e}")))
    }

    /// Every point (vectors and payload), 512 at a time, to `each` (blocking).
    fn pages(
        &self,
        mut each: impl FnMut(Vec<PointStructPersisted>) -> Result<(), Status>,
    ) -> Result<(), Status> {
        let mut offset = None;
        loop {
            let request = ScrollRequest {
                offset,
                limit: Some(512),
                filter: None,
                with_payload: Some(WithPayloadInterface::Bool(true)),
                with_vector: WithVector::Bool(true),
                order_by: None,
            };
            let (records, next) = self.engine.scroll(request).map_err(|e| Status::internal(e.to_string()))?;
            let points: Vec<PointStructPersisted> = records
                .into_iter()
                .filter_map(|rec| {
                    Some(PointStructPersisted {
                        id: rec.id,
                        vector: VectorStructPersisted::from(rec.vector?),
                        payload: rec.payload,
                    })
                })
                .collect();
            if !points.is_empty() {
                each(points)?;
            }
            match next {
                Some(n) => offset = Some(n),
                None => return Ok(()),
            }
        }
    }
}

struct Collection {
    params: qdrant::CollectionParams,
    distance: qdrant::Distance,
    dim: usize,
    /// Names of the sparse vectors.
    sparse: Vec<String>,
    shards: Vec<Arc<Shard>>,
    /// The engine settings the shards were made with (UpdateCollection rebuilds from them).
    config: EdgeConfig,
    /// The CreateCollection it was made with (a snapshot carries it, to be made again).
    created: qdrant::CreateCollection,
}

/// Fields drop in order: the engine shards before their temp directory.
struct State {
    collections: RwLock<HashMap<String, Arc<Collection>>>,
    /// Collection snapshots: (collection, snapshot name) → file.
    snapshots: Mutex<HashMap<(String, String), SnapshotFile>>,
    dir: Option<tempfile::TempDir>,
}

impl State {
    fn get(&self, name: &str) -> Result<Arc<Collection>, Status> {
        self.collections
            .read()
            .map_err(|_| Status::internal("lock poisoned"))?
            .get(name)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("Not found: Collection `{name}` doesn't exist!")))
    }

    fn root(&self) -> PathBuf {
        self.dir.as_ref().map(|d| d.path().to_path_buf()).unwrap_or_default()
    }
}

/// The three Qdrant gRPC services over one state.
#[derive(Clone)]
struct Service(Arc<State>);

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Status::internal(format!("engine task: {e}")))?
}

/// Qdrant's gRPC filter as the engine's filter — the test server's own translation, written from
/// Qdrant's protocol and independent of ragd's conversions (so a filter ragd mistranslates does
/// not round-trip back into the one it meant). Covers field conditions (match value / any /
/// except of keywords, integers and booleans; numeric ranges), nested filters and min_should;
/// anything else is refused as Qdrant refuses what it cannot parse.
fn edge_filter(f: &qdrant::Filter) -> Result<qdrant_edge::Filter, Status> {
    use qdrant_edge::{AnyVariants, Condition, FieldCondition, Filter, Match, MatchExcept, MinShould};
    fn strings(v: &[String]) -> AnyVariants {
        AnyVariants::Strings(v.iter().cloned().collect())
    }
    fn integers(v: &[i64]) -> AnyVariants {
        AnyVariants::Integers(v.iter().copied().collect())
    }
    fn condition(c: &qdrant::Condition) -> Result<Condition, Status> {
        use qdrant::condition::ConditionOneOf;
        use qdrant::r#match::MatchValue as M;
        match &c.condition_one_of {
            Some(ConditionOneOf::Filter(nested)) => Ok(Condition::Filter(edge_filter(nested)?)),
            Some(ConditionOneOf::Field(field)) => {
                let key: qdrant_edge::JsonPath = field.key.parse().map_err(|()| {
                    Status::invalid_argument(format!("Wrong input: bad key {:?}", field.key))
                })?;
                match (&field.r#match, &field.range) {
                    (Some(m), None) => {
                        let m = match &m.match_value {
                            Some(M::Keyword(s)) => Match::from(s.clone()),
                            Some(M::Integer(i)) => Match::from(*i),
                            Some(M::Boolean(b)) => Match::from(*b),
                            Some(M::Keywords(k)) => Match::new_any(strings(&k.strings)),
                            Some(M::Integers(i)) => Match::new_any(integers(&i.integers)),
                            Some(M::ExceptKeywords(k)) => {
                                Match::Except(MatchExcept { except: strings(&k.strings) })
                            }
                            Some(M::ExceptIntegers(i)) => {
                                Match::Except(MatchExcept { except: integers(&i.integers) })
                            }
                            other => {
                                return Err(Status::invalid_argument(format!(
                                    "the test server does not support match {other:?}"
                                )));
                            }
                        };
                        Ok(Condition::Field(FieldCondition::new_match(key, m)))
                    }
                    (None, Some(r)) => {
                        let of = |b: Option<f64>| b.map(ordered_float::OrderedFloat);
                        let range =
                            qdrant_edge::Range { gt: of(r.gt), gte: of(r.gte), lt: of(r.lt), lte: of(r.lte) };
                        Ok(Condition::Field(FieldCondition::new_range(key, range)))
                    }
                    _ => Err(Status::invalid_argument(format!(
                        "the test server supports one match or one range per field condition, got {field:?}"
                    ))),
                }
            }
            other => {
                Err(Status::invalid_argument(format!("the test server does not support condition {other:?}")))
            }
        }
    }
    let list = |cs: &[qdrant::Condition]| -> Result<Option<Vec<Condition>>, Status> {
        if cs.is_empty() { Ok(None) } else { cs.iter().map(condition).collect::<Result<_, _>>().map(Some) }
    };
    Ok(Filter {
        must: list(&f.must)?,
        should: list(&f.should)?,
        must_not: list(&f.must_not)?,
        min_should: match &f.min_should {
            None => None,
            Some(m) => Some(MinShould {
                conditions: m.conditions.iter().map(condition).collect::<Result<_, _>>()?,
                min_count: m.min_count as usize,
            }),
        },
    })
}

/// A point payload from the wire as the engine's JSON, and back: the test server's own
/// conversions (Qdrant's `Value` is a protobuf Struct-like value).
fn wire_to_json(v: &qdrant::Value) -> Value {
    use qdrant::value::Kind;
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::IntegerValue(i)) => Value::from(*i),
        Some(Kind::DoubleValue(d)) => serde_json::Number::from_f64(*d).map_or(Value::Null, Value::Number),
        Some(Kind::StringValue(s)) => Value::String(s.clone()),
        Some(Kind::ListValue(l)) => Value::Array(l.values.iter().map(wire_to_json).collect()),
        Some(Kind::StructValue(s)) => {
            Value::Object(s.fields.iter().map(|(k, v)| (k.clone(), wire_to_json(v))).collect())
        }
    }
}

fn json_to_wire(v: &Value) -> qdrant::Value {
    use qdrant::value::Kind;
    let kind = match v {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Kind::IntegerValue(i),
            None => Kind::DoubleValue(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(a) => {
            Kind::ListValue(qdrant::ListValue { values: a.iter().map(json_to_wire).collect() })
        }
        Value::Object(o) => Kind::StructValue(qdrant::Struct {
            fields: o.iter().map(|(k, v)| (k.clone(), json_to_wire(v))).collect(),
        }),
    };
    qdrant::Value { kind: Some(kind) }
}

fn edge_point_id(id: Option<&qdrant::PointId>) -> Result<PointId, Status> {
    match id.and_then(|i| i.point_id_options.as_ref()) {
        Some(qdrant::point_id::PointIdOptions::Num(n)) => Ok(PointId::NumId(*n)),
        Some(qdrant::point_id::PointIdOptions::Uuid(u)) => u
            .parse()
            .map(PointId::Uuid)
            .map_err(|e| Status::invalid_argument(format!("Unable to parse UUID {u}: {e}"))),
        None => Err(Status::invalid_argument("point without id")),
    }
}

fn grpc_point_id(id: PointId) -> qdrant::PointId {
    let options = match id {
        PointId::NumId(n) => qdrant::point_id::PointIdOptions::Num(n),
        PointId::Uuid(u) => qdrant::point_id::PointIdOptions::Uuid(u.to_string()),
    };
    qdrant::PointId { point_id_options: Some(options) }
}

fn route(id: &PointId, shards: usize) -> usize {
    shard_of(&id.to_string(), shards as u32)
}

fn unimplemented(call: &str) -> Status {
    Status::unimplemented(format!("{call} is not implemented by the ragd Qdrant-protocol test server"))
}

impl Collection {
    fn count(&self, filter: Option<qdrant_edge::Filter>) -> Result<u64, Status> {
        self.shards.iter().try_fold(0u64, |n, s| {
            let c = s
                .engine
                .count(CountRequest { filter: filter.clone(), exact: true })
                .map_err(|e| Status::internal(e.to_string()))?;
            Ok(n + c as u64)
        })
    }

    fn search(&self, s: &qdrant::SearchPoints) -> Result<Vec<qdrant::ScoredPoint>, Status> {
        #[allow(deprecated)]
        let query = match (&s.vector_name, &s.sparse_indices) {
            (Some(name), Some(indices)) if self.sparse.contains(name) => {
                let v = qdrant_edge::SparseVector::new(indices.data.clone(), s.vector.clone())
                    .map_err(|e| Status::invalid_argument(format!("Wrong input: {e}")))?;
                QueryEnum::Nearest(NamedQuery::new(VectorInternal::Sparse(v), name.clone()))
            }
            (Some(name), _) if !name.is_empty() => {
                return Err(Status::invalid_argument(format!(
                    "Wrong input: Not existing vector name error: {name}"
                )));
            }
            _ => QueryEnum::Nearest(NamedQuery::default_dense(s.vector.clone())),
        };
        let sparse = matches!(&query, QueryEnum::Nearest(q) if q.using.is_some());
        if !sparse && s.vector.len() != self.dim {
            return Err(Status::invalid_argument(format!(
                "Wrong input: Vector dimension error: expected dim: {}, got {}",
                self.dim,
                s.vector.len()
            )));
        }
        let filter = s.filter.as_ref().map(edge_filter).transpose()?;
        let params = s.params.as_ref().map(|p| SearchParams {
            hnsw_ef: p.hnsw_ef.map(|e| e as usize),
            exact: p.exact.unwrap_or(false),
            ..Default::default()
        });
        let with_payload = !matches!(
            s.with_payload.as_ref().and_then(|w| w.selector_options.as_ref()),
            None | Some(qdrant::with_payload_selector::SelectorOptions::Enable(false))
        );
        let limit = s.limit as usize;
        let mut all = Vec::new();
        for shard in &self.shards {
            let request = SearchRequest {
                query: query.clone(),
                filter: filter.clone(),
                params,
                limit,
                offset: 0,
                with_payload: Some(WithPayloadInterface::Bool(with_payload)),
                with_vector: None,
                score_threshold: s.score_threshold,
            };
            all.extend(shard.engine.search(request).map_err(|e| Status::internal(e.to_string()))?);
        }
        if self.distance == qdrant::Distance::Euclid && !sparse {
            all.sort_by(|a, b| a.score.total_cmp(&b.score));
        } else {
            all.sort_by(|a, b| b.score.total_cmp(&a.score));
        }
        all.truncate(limit);
        Ok(all
            .into_iter()
            .map(|p| qdrant::ScoredPoint {
                id: Some(grpc_point_id(p.id)),
                payload: p
                    .payload
                    .map(|p| p.0.iter().map(|(k, v)| (k.clone(), json_to_wire(v))).collect())
                    .unwrap_or_default(),
                score: p.score,
                version: p.version,
                ..Default::default()
            })
            .collect())
    }
}

fn done() -> qdrant::PointsOperationResponse {
    qdrant::PointsOperationResponse {
        result: Some(qdrant::UpdateResult {
            operation_id: Some(0),
            status: qdrant::UpdateStatus::Completed as i32,
        }),
        time: 0.0,
        usage: None,
    }
}

#[tonic::async_trait]
impl Qdrant for Service {
    async fn health_check(
        &self,
        _: Request<qdrant::HealthCheckRequest>,
    ) -> Result<Response<qdrant::HealthCheckReply>, Status> {
        Ok(Response::new(qdrant::HealthCheckReply {
            title: "ragd Qdrant-protocol test server (qdrant-edge engine; not a Qdrant server)".into(),
            version: PROTOCOL_VERSION.into(),
            commit: None,
        }))
    }
}

/// Answers UNIMPLEMENTED for the listed calls of a server trait. Written out the way
/// `#[async_trait]` desugars (it does not see into macro invocations).
macro_rules! unimplemented_calls {
    ($($name:ident($req:ident) -> $resp:ident;)*) => {
        $(
            fn $name<'life0, 'async_trait>(
                &'life0 self,
                _: Request<qdrant::$req>,
            ) -> std::pin::Pin<
                Box<dyn std::future::Future<Output = Result<Response<qdrant::$resp>, Status>> + Send + 'async_trait>,
            >
            where
                'life0: 'async_trait,
                Self: 'async_trait,
            {
                Box::pin(async { Err(unimplemented(stringify!($name))) })
            }
        )*
    };
}

#[tonic::async_trait]
impl Collections for Service {
    async fn create(
        &self,
        request: Request<qdrant::CreateCollection>,
    ) -> Result<Response<qdrant::CollectionOperationResponse>, Status> {
        let r = request.into_inner();
        let created = r.clone();
        let name = r.collection_name.clone();
        if self.0.get(&name).is_ok() {
            return Err(Status::already_exists(format!("Wrong input: Collection `{name}` already exists!")));
        }
        let Some(qdrant::vectors_config::Config::Params(vp)) = r.vectors_config.and_then(|v| v.config) else {
            return Err(Status::invalid_argument("the test server supports one unnamed dense vector"));
        };
        let distance = qdrant::Distance::try_from(vp.distance).unwrap_or(qdrant::Distance::UnknownDistance);
        let edge_distance = match distance {
            qdrant::Distance::Cosine => qdrant_edge::Distance::Cosine,
            qdrant::Distance::Dot => qdrant_edge::Distance::Dot,
            qdrant::Distance::Euclid => qdrant_edge::Distance::Euclid,
            other => return Err(Status::invalid_argument(format!("unsupported distance {other:?}"))),
        };
        #[allow(deprecated)]
        let on_disk = vp.memory == Some(qdrant::Memory::Cold as i32) || vp.on_disk == Some(true);
        let shard_number = r.shard_number.unwrap_or(1).max(1);
        let params = qdrant::CollectionParams {
            shard_number,
            payload: r.payload,
            vectors_config: Some(qdrant::VectorsConfig {
                config: Some(qdrant::vectors_config::Config::Params(vp)),
            }),
            sparse_vectors_config: r.sparse_vectors_config.clone(),
            replication_factor: Some(r.replication_factor.unwrap_or(1)),
            write_consistency_factor: Some(r.write_consistency_factor.unwrap_or(1)),
            ..Default::default()
        };
        // Sparse vectors: index and modifier as asked (ragd asks for IDF).
        let sparse: Vec<(String, EdgeSparseVectorParams)> = r
            .sparse_vectors_config
            .as_ref()
            .map(|c| {
                c.map
                    .iter()
                    .map(|(name, p)| {
                        let idf = p.modifier == Some(qdrant::Modifier::Idf as i32);
                        let params = EdgeSparseVectorParams {
                            modifier: idf.then_some(Modifier::Idf),
                            ..Default::default()
                        };
                        (name.clone(), params)
                    })
                    .collect()
            })
            .unwrap_or_default();
        let sparse_names: Vec<String> = sparse.iter().map(|(n, _)| n.clone()).collect();
        let mut config = EdgeConfig::builder()
            .vector(
                DEFAULT_VECTOR_NAME,
                EdgeVectorParams {
                    size: vp.size as usize,
                    distance: edge_distance,
                    on_disk: Some(on_disk),
                    multivector_config: None,
                    datatype: None,
                    quantization_config: None,
                    hnsw_config: hnsw(&[r.hnsw_config.as_ref(), vp.hnsw_config.as_ref()]),
                },
            )
            .optimizers(EdgeOptimizersConfig {
                indexing_threshold: r
                    .optimizers_config
                    .and_then(|o| o.indexing_threshold)
                    .map(|t| t as usize),
                ..Default::default()
            });
        for (name, params) in sparse {
            config = config.sparse_vector(name, params);
        }
        let config = config.build();
        let kept = config.clone();
        let dir = self.0.root().join(&name);
        let shards = blocking(move || {
            (0..shard_number)
                .map(|i| {
                    let path = dir.join(format!("shard-{i}"));
                    std::fs::create_dir_all(&path).map_err(|e| Status::internal(e.to_string()))?;
                    let engine =
                        EdgeShard::new(&path, config.clone()).map_err(|e| Status::internal(e.to_string()))?;
                    Ok(Arc::new(Shard { engine, writes: Mutex::new(()) }))
                })
                .collect::<Result<Vec<_>, Status>>()
        })
        .await?;
        let collection = Collection {
            params,
            distance,
            dim: vp.size as usize,
            sparse: sparse_names,
            shards,
            config: kept,
            created,
        };
        self.0.collections.write().map_err(|_| Status::internal("lock"))?.insert(name, Arc::new(collection));
        Ok(Response::new(qdrant::CollectionOperationResponse { result: true, time: 0.0 }))
    }

    async fn delete(
        &self,
        request: Request<qdrant::DeleteCollection>,
    ) -> Result<Response<qdrant::CollectionOperationResponse>, Status> {
        let name = request.into_inner().collection_name;
        let removed = self.0.collections.write().map_err(|_| Status::internal("lock"))?.remove(&name);
        let existed = removed.is_some();
        if existed {
            drop(removed);
            let dir = self.0.root().join(&name);
            blocking(move || std::fs::remove_dir_all(dir).map_err(|e| Status::internal(e.to_string())))
                .await?;
        }
        // Like Qdrant: deleting a missing collection is not an error, it answers result=false.
        Ok(Response::new(qdrant::CollectionOperationResponse { result: existed, time: 0.0 }))
    }

    async fn collection_exists(
        &self,
        request: Request<qdrant::CollectionExistsRequest>,
    ) -> Result<Response<qdrant::CollectionExistsResponse>, Status> {
        let exists = self.0.get(&request.into_inner().collection_name).is_ok();
        Ok(Response::new(qdrant::CollectionExistsResponse {
            result: Some(qdrant::CollectionExists { exists }),
            time: 0.0,
        }))
    }

    async fn get(
        &self,
        request: Request<qdrant::GetCollectionInfoRequest>,
    ) -> Result<Response<qdrant::GetCollectionInfoResponse>, Status> {
        let c = self.0.get(&request.into_inner().collection_name)?;
        let (points, indexed, segments) = c.shards.iter().fold((0, 0, 0), |(p, i, s), shard| {
            let info = shard.engine.info();
            (
                p + info.points_count as u64,
                i + info.indexed_vectors_count as u64,
                s + info.segments_count as u64,
            )
        });
        Ok(Response::new(qdrant::GetCollectionInfoResponse {
            result: Some(qdrant::CollectionInfo {
                status: qdrant::CollectionStatus::Green as i32,
                optimizer_status: Some(qdrant::OptimizerStatus { ok: true, error: String::new() }),
                segments_count: segments,
                config: Some(qdrant::CollectionConfig {
                    params: Some(c.params.clone()),
                    ..Default::default()
                }),
                points_count: Some(points),
                indexed_vectors_count: Some(indexed),
                ..Default::default()
            }),
            time: 0.0,
        }))
    }

    async fn list(
        &self,
        _: Request<qdrant::ListCollectionsRequest>,
    ) -> Result<Response<qdrant::ListCollectionsResponse>, Status> {
        let names: Vec<String> =
            self.0.collections.read().map_err(|_| Status::internal("lock"))?.keys().cloned().collect();
        Ok(Response::new(qdrant::ListCollectionsResponse {
            collections: names.into_iter().map(|name| qdrant::CollectionDescription { name }).collect(),
            time: 0.0,
        }))
    }

    async fn collection_cluster_info(
        &self,
        request: Request<qdrant::CollectionClusterInfoRequest>,
    ) -> Result<Response<qdrant::CollectionClusterInfoResponse>, Status> {
        let c = self.0.get(&request.into_inner().collection_name)?;
        let local_shards = c
            .shards
            .iter()
            .enumerate()
            .map(|(i, s)| {
                Ok(qdrant::LocalShardInfo {
                    shard_id: i as u32,
                    points_count: s
                        .engine
                        .count(CountRequest { filter: None, exact: true })
                        .map_err(|e| Status::internal(e.to_string()))?
                        as u64,
                    state: qdrant::ReplicaState::Active as i32,
                    shard_key: None,
                })
            })
            .collect::<Result<Vec<_>, Status>>()?;
        Ok(Response::new(qdrant::CollectionClusterInfoResponse {
            peer_id: 1,
            shard_count: c.shards.len() as u64,
            local_shards,
            ..Default::default()
        }))
    }

    /// Qdrant 1.18's addition of named sparse vectors to a live collection, and nothing else of
    /// UpdateCollection. The engine cannot add a vector to a shard, so the double copies each
    /// shard into a new one made with the vector (Qdrant keeps its points in place; the answer is
    /// the same).
    async fn update(
        &self,
        request: Request<qdrant::UpdateCollection>,
    ) -> Result<Response<qdrant::CollectionOperationResponse>, Status> {
        static GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let r = request.into_inner();
        let old = self.0.get(&r.collection_name)?;
        let others = r.optimizers_config.is_some()
            || r.params.is_some()
            || r.hnsw_config.is_some()
            || r.vectors_config.is_some()
            || r.quantization_config.is_some();
        let Some(added) = r.sparse_vectors_config.filter(|_| !others) else {
            return Err(Status::invalid_argument(
                "the test server's UpdateCollection only adds sparse vectors",
            ));
        };
        let (mut config, mut names, mut params) =
            (old.config.clone(), old.sparse.clone(), old.params.clone());
        let mut all = params.sparse_vectors_config.take().unwrap_or_default();
        for (name, p) in added.map {
            if names.contains(&name) {
                continue;
            }
            let idf = p.modifier == Some(qdrant::Modifier::Idf as i32);
            config.sparse_vectors.insert(
                name.clone(),
                EdgeSparseVectorParams { modifier: idf.then_some(Modifier::Idf), ..Default::default() },
            );
            all.map.insert(name.clone(), p);
            names.push(name);
        }
        params.sparse_vectors_config = Some(all);
        let generation = GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = self.0.root().join(&r.collection_name).join(format!("generation-{generation}"));
        let (source, kept) = (old.clone(), config.clone());
        let shards = blocking(move || {
            let internal = |e: String| Status::internal(e);
            source
                .shards
                .iter()
                .enumerate()
                .map(|(i, from)| {
                    let path = dir.join(format!("shard-{i}"));
                    std::fs::create_dir_all(&path).map_err(|e| internal(e.to_string()))?;
                    let engine =
                        EdgeShard::new(&path, config.clone()).map_err(|e| internal(e.to_string()))?;
                    let to = Shard { engine, writes: Mutex::new(()) };
                    from.pages(|points| {
                        let op = PointOperations::UpsertPoints(PointInsertOperations::PointsList(points));
                        to.update(UpdateOperation::PointOperation(op))
                    })?;
                    Ok(Arc::new(to))
                })
                .collect::<Result<Vec<_>, Status>>()
        })
        .await?;
        let rebuilt = Collection {
            params,
            distance: old.distance,
            dim: old.dim,
            sparse: names,
            shards,
            config: kept,
            created: old.created.clone(),
        };
        self.0
            .collections
            .write()
            .map_err(|_| Status::internal("lock"))?
            .insert(r.collection_name, Arc::new(rebuilt));
        Ok(Response::new(qdrant::CollectionOperationResponse { result: true, time: 0.0 }))
    }

    unimplemented_calls! {
        update_aliases(ChangeAliases) -> CollectionOperationResponse;
        list_collection_aliases(ListCollectionAliasesRequest) -> ListAliasesResponse;
        list_aliases(ListAliasesRequest) -> ListAliasesResponse;
        update_collection_cluster_setup(UpdateCollectionClusterSetupRequest) -> UpdateCollectionClusterSetupResponse;
        create_shard_key(CreateShardKeyRequest) -> CreateShardKeyResponse;
        delete_shard_key(DeleteShardKeyRequest) -> DeleteShardKeyResponse;
        list_shard_keys(ListShardKeysRequest) -> ListShardKeysResponse;
    }
}

#[tonic::async_trait]
impl Points for Service {
    async fn upsert(
        &self,
        request: Request<qdrant::UpsertPoints>,
    ) -> Result<Response<qdrant::PointsOperationResponse>, Status> {
        let r = request.into_inner();
        let c = self.0.get(&r.collection_name)?;
        let mut per_shard: Vec<Vec<PointStructPersisted>> = vec![Vec::new(); c.shards.len()];
        for p in r.points {
            let id = edge_point_id(p.id.as_ref())?;
            #[allow(deprecated)]
            let dense_of = |v: qdrant::Vector| match v {
                qdrant::Vector { vector: Some(qdrant::vector::Vector::Dense(d)), .. } => Some(d.data),
                // The pre-1.16 form of a dense vector.
                v if v.vector.is_none() => Some(v.data),
                _ => None,
            };
            let unsupported = || {
                Status::invalid_argument(
                    "the test server supports one unnamed dense vector and named sparse ones",
                )
            };
            let mut named_sparse = Vec::new();
            let vector = match p.vectors.and_then(|v| v.vectors_options) {
                Some(qdrant::vectors::VectorsOptions::Vector(v)) => dense_of(v).ok_or_else(unsupported)?,
                Some(qdrant::vectors::VectorsOptions::Vectors(named)) => {
                    let mut dense = None;
                    for (name, v) in named.vectors {
                        match v.vector {
                            Some(qdrant::vector::Vector::Sparse(sv)) if c.sparse.contains(&name) => {
                                let sv = qdrant_edge::SparseVector::new(sv.indices, sv.values)
                                    .map_err(|e| Status::invalid_argument(format!("Wrong input: {e}")))?;
                                named_sparse.push((name, sv));
                            }
                            _ if name.is_empty() => dense = Some(dense_of(v).ok_or_else(unsupported)?),
                            _ => {
                                return Err(Status::invalid_argument(format!(
                                    "Wrong input: Not existing vector name error: {name}"
                                )));
                            }
                        }
                    }
                    dense.ok_or_else(unsupported)?
                }
                _ => return Err(unsupported()),
            };
            if vector.len() != c.dim {
                return Err(Status::invalid_argument(format!(
                    "Wrong input: Vector dimension error: expected dim: {}, got {}",
                    c.dim,
                    vector.len()
                )));
            }
            let shard = route(&id, c.shards.len());
            let vector = if named_sparse.is_empty() {
                VectorStructPersisted::Single(vector)
            } else {
                let mut named =
                    HashMap::from([(DEFAULT_VECTOR_NAME.to_string(), VectorPersisted::Dense(vector))]);
                named.extend(named_sparse.into_iter().map(|(n, v)| (n, VectorPersisted::Sparse(v))));
                VectorStructPersisted::Named(named)
            };
            per_shard[shard].push(PointStructPersisted {
                id,
                vector,
                payload: Some(Payload(p.payload.iter().map(|(k, v)| (k.clone(), wire_to_json(v))).collect())),
            });
        }
        // The whole request is validated before anything is written.
        blocking(move || {
            for (shard, points) in c.shards.iter().zip(per_shard) {
                if !points.is_empty() {
                    let op = PointOperations::UpsertPoints(PointInsertOperations::PointsList(points));
                    shard.update(UpdateOperation::PointOperation(op))?;
                }
            }
            Ok(())
        })
        .await?;
        Ok(Response::new(done()))
    }

    async fn delete(
        &self,
        request: Request<qdrant::DeletePoints>,
    ) -> Result<Response<qdrant::PointsOperationResponse>, Status> {
        let r = request.into_inner();
        let c = self.0.get(&r.collection_name)?;
        let op = match r.points.and_then(|p| p.points_selector_one_of) {
            Some(qdrant::points_selector::PointsSelectorOneOf::Filter(f)) => {
                PointOperations::DeletePointsByFilter(edge_filter(&f)?)
            }
            Some(qdrant::points_selector::PointsSelectorOneOf::Points(ids)) => {
                PointOperations::DeletePoints {
                    ids: ids.ids.iter().map(|i| edge_point_id(Some(i))).collect::<Result<_, _>>()?,
                }
            }
            None => return Err(Status::invalid_argument("points selector is required")),
        };
        blocking(move || {
            for shard in &c.shards {
                shard.update(UpdateOperation::PointOperation(op.clone()))?;
            }
            Ok(())
        })
        .await?;
        Ok(Response::new(done()))
    }

    async fn create_field_index(
        &self,
        request: Request<qdrant::CreateFieldIndexCollection>,
    ) -> Result<Response<qdrant::PointsOperationResponse>, Status> {
        let r = request.into_inner();
        let c = self.0.get(&r.collection_name)?;
        let schema = match r.field_type.and_then(|t| qdrant::FieldType::try_from(t).ok()) {
            Some(qdrant::FieldType::Keyword) => "keyword",
            Some(qdrant::FieldType::Integer) => "integer",
            Some(qdrant::FieldType::Float) => "float",
            Some(qdrant::FieldType::Bool) => "bool",
            other => return Err(Status::invalid_argument(format!("unsupported field type {other:?}"))),
        };
        let index = qdrant_edge::CreateIndex {
            field_name: serde_json::from_value(Value::String(r.field_name.clone()))
                .map_err(|e| Status::invalid_argument(format!("field name: {e}")))?,
            field_schema: Some(
                serde_json::from_value(Value::String(schema.into()))
                    .map_err(|e| Status::internal(e.to_string()))?,
            ),
        };
        blocking(move || {
            for shard in &c.shards {
                let op = qdrant_edge::FieldIndexOperations::CreateIndex(index.clone());
                shard.update(UpdateOperation::FieldIndexOperation(op))?;
            }
            Ok(())
        })
        .await?;
        Ok(Response::new(done()))
    }

    async fn count(
        &self,
        request: Request<qdrant::CountPoints>,
    ) -> Result<Response<qdrant::CountResponse>, Status> {
        let r = request.into_inner();
        let c = self.0.get(&r.collection_name)?;
        let filter = r.filter.as_ref().map(edge_filter).transpose()?;
        let count = blocking(move || c.count(filter)).await?;
        Ok(Response::new(qdrant::CountResponse {
            result: Some(qdrant::CountResult { count }),
            time: 0.0,
            usage: None,
        }))
    }

    async fn search(
        &self,
        request: Request<qdrant::SearchPoints>,
    ) -> Result<Response<qdrant::SearchResponse>, Status> {
        let started = Instant::now();
        let r = request.into_inner();
        let c = self.0.get(&r.collection_name)?;
        let result = blocking(move || c.search(&r)).await?;
        Ok(Response::new(qdrant::SearchResponse {
            result,
            time: started.elapsed().as_secs_f64(),
            usage: None,
        }))
    }

    async fn search_batch(
        &self,
        request: Request<qdrant::SearchBatchPoints>,
    ) -> Result<Response<qdrant::SearchBatchResponse>, Status> {
        let started = Instant::now();
        let r = request.into_inner();
        let c = self.0.get(&r.collection_name)?;
        let result = blocking(move || {
            r.search_points.iter().map(|s| Ok(qdrant::BatchResult { result: c.search(s)? })).collect()
        })
        .await?;
        Ok(Response::new(qdrant::SearchBatchResponse {
            result,
            time: started.elapsed().as_secs_f64(),
            usage: None,
        }))
    }

    async fn get(
        &self,
        request: Request<qdrant::GetPoints>,
    ) -> Result<Response<qdrant::GetResponse>, Status> {
        let r = request.into_inner();
        let c = self.0.get(&r.collection_name)?;
        let ids = r.ids.iter().map(|id| edge_point_id(Some(id))).collect::<Result<Vec<_>, _>>()?;
        let with_payload = !matches!(
            r.with_payload.as_ref().and_then(|w| w.selector_options.as_ref()),
            None | Some(qdrant::with_payload_selector::SelectorOptions::Enable(false))
        );
        let with_vectors = vectors_selector(r.with_vectors);
        let records = blocking(move || {
            let mut out = Vec::new();
            for id in ids {
                let shard = &c.shards[route(&id, c.shards.len())];
                let found = shard
                    .engine
                    .retrieve(&[id], Some(WithPayloadInterface::Bool(with_payload)), with_vectors.clone())
                    .map_err(|e| Status::internal(e.to_string()))?;
                out.extend(found);
            }
            Ok(out)
        })
        .await?;
        let result = records.into_iter().map(retrieved).collect();
        Ok(Response::new(qdrant::GetResponse { result, time: 0.0, usage: None }))
    }

    /// Qdrant's scroll: points ordered by id across every shard, `offset` the first id of the
    /// page, `next_page_offset` the first id of the next.
    async fn scroll(
        &self,
        request: Request<qdrant::ScrollPoints>,
    ) -> Result<Response<qdrant::ScrollResponse>, Status> {
        let r = request.into_inner();
        let c = self.0.get(&r.collection_name)?;
        let filter = r.filter.as_ref().map(edge_filter).transpose()?;
        let offset = r.offset.as_ref().map(|id| edge_point_id(Some(id))).transpose()?;
        let limit = r.limit.unwrap_or(10) as usize;
        let with_payload = !matches!(
            r.with_payload.as_ref().and_then(|w| w.selector_options.as_ref()),
            None | Some(qdrant::with_payload_selector::SelectorOptions::Enable(false))
        );
        let with_vectors = vectors_selector(r.with_vectors).unwrap_or(WithVector::Bool(false));
        let mut records = blocking(move || {
            let mut out = Vec::new();
            // Each shard's first limit + 1 points from the offset; the smallest ids overall win.
            for shard in &c.shards {
                let request = ScrollRequest {
                    offset,
                    limit: Some(limit + 1),
                    filter: filter.clone(),
                    with_payload: Some(WithPayloadInterface::Bool(with_payload)),
                    with_vector: with_vectors.clone(),
                    order_by: None,
                };
                let (found, _) = shard.engine.scroll(request).map_err(|e| Status::internal(e.to_string()))?;
                out.extend(found);
            }
            Ok(out)
        })
        .await?;
        records.sort_by_key(|rec| rec.id);
        let next_page_offset = (records.len() > limit).then(|| grpc_point_id(records[limit].id));
        records.truncate(limit);
        Ok(Response::new(qdrant::ScrollResponse {
            next_page_offset,
            result: records.into_iter().map(retrieved).collect(),
            time: 0.0,
            usage: None,
        }))
    }

    unimplemented_calls! {
        update_vectors(UpdatePointVectors) -> PointsOperationResponse;
        delete_vectors(DeletePointVectors) -> PointsOperationResponse;
        set_payload(SetPayloadPoints) -> PointsOperationResponse;
        overwrite_payload(SetPayloadPoints) -> PointsOperationResponse;
        delete_payload(DeletePayloadPoints) -> PointsOperationResponse;
        clear_payload(ClearPayloadPoints) -> PointsOperationResponse;
        delete_field_index(DeleteFieldIndexCollection) -> PointsOperationResponse;
        create_vector_name(CreateVectorNameRequest) -> PointsOperationResponse;
        delete_vector_name(DeleteVectorNameRequest) -> PointsOperationResponse;
        search_groups(SearchPointGroups) -> SearchGroupsResponse;
        recommend(RecommendPoints) -> RecommendResponse;
        recommend_batch(RecommendBatchPoints) -> RecommendBatchResponse;
        recommend_groups(RecommendPointGroups) -> RecommendGroupsResponse;
        discover(DiscoverPoints) -> DiscoverResponse;
        discover_batch(DiscoverBatchPoints) -> DiscoverBatchResponse;
        update_batch(UpdateBatchPoints) -> UpdateBatchResponse;
        query(QueryPoints) -> QueryResponse;
        query_batch(QueryBatchPoints) -> QueryBatchResponse;
        query_groups(QueryPointGroups) -> QueryGroupsResponse;
        facet(FacetCounts) -> FacetResponse;
        search_matrix_pairs(SearchMatrixPoints) -> SearchMatrixPairsResponse;
        search_matrix_offsets(SearchMatrixPoints) -> SearchMatrixOffsetsResponse;
    }
}

/// Qdrant's vectors selector as the engine's (None: no vectors).
fn vectors_selector(w: Option<qdrant::WithVectorsSelector>) -> Option<WithVector> {
    match w.and_then(|w| w.selector_options) {
        None | Some(qdrant::with_vectors_selector::SelectorOptions::Enable(false)) => None,
        Some(qdrant::with_vectors_selector::SelectorOptions::Enable(true)) => Some(WithVector::Bool(true)),
        Some(qdrant::with_vectors_selector::SelectorOptions::Include(s)) => {
            Some(WithVector::Selector(s.names))
        }
    }
}

/// An engine record as Qdrant's wire point (dense vectors only).
fn retrieved(rec: qdrant_edge::Record) -> qdrant::RetrievedPoint {
    let dense = |v: Vec<f32>| qdrant::VectorOutput {
        vector: Some(qdrant::vector_output::Vector::Dense(qdrant::DenseVector { data: v })),
        ..Default::default()
    };
    let vectors = rec.vector.map(|v| qdrant::VectorsOutput {
        vectors_options: Some(match v {
            VectorStructInternal::Single(v) => qdrant::vectors_output::VectorsOptions::Vector(dense(v)),
            VectorStructInternal::Named(named) => {
                qdrant::vectors_output::VectorsOptions::Vectors(qdrant::NamedVectorsOutput {
                    vectors: named
                        .into_iter()
                        .filter_map(|(name, v)| match v {
                            VectorInternal::Dense(d) => Some((name, dense(d))),
                            _ => None,
                        })
                        .collect(),
                })
            }
            VectorStructInternal::MultiDense(_) => {
                qdrant::vectors_output::VectorsOptions::Vector(dense(Vec::new()))
            }
        }),
    });
    qdrant::RetrievedPoint {
        id: Some(grpc_point_id(rec.id)),
        payload: rec
            .payload
            .map(|p| p.0.iter().map(|(k, v)| (k.clone(), json_to_wire(v))).collect())
            .unwrap_or_default(),
        vectors,
        ..Default::default()
    }
}

// --- Snapshots ---------------------------------------------------------------------------------
// Qdrant's collection snapshots: gRPC Create / List / Delete, and the file over REST (GET
// /collections/{c}/snapshots/{name}; POST /collections/{c}/snapshots/upload, multipart field
// `snapshot`, recovers collection {c} from the file). The file is this double's own format, not
// Qdrant's (a tar of segments): SNAPSHOT_MAGIC, a little-endian u64 length and the
// CreateCollection the collection was made with (protobuf, its current sparse vectors), then one
// JSON line per point (id, vectors, payload) — opaque to ragd, which only moves it.

const SNAPSHOT_MAGIC: &[u8] = b"ragd-qdrant-test-double-snapshot 1\n";

#[derive(Clone)]
struct SnapshotFile {
    path: PathBuf,
    size: u64,
}

/// Writes `c`'s snapshot to `path` (blocking); returns its size.
fn write_snapshot(c: &Collection, path: &std::path::Path) -> Result<u64, Status> {
    use prost::Message;
    use std::io::Write;
    let io = |e: std::io::Error| Status::internal(format!("snapshot {}: {e}", path.display()));
    let mut created = c.created.clone();
    created.sparse_vectors_config = c.params.sparse_vectors_config.clone();
    let head = created.encode_to_vec();
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
    out.write_all(SNAPSHOT_MAGIC).map_err(io)?;
    out.write_all(&(head.len() as u64).to_le_bytes()).map_err(io)?;
    out.write_all(&head).map_err(io)?;
    for shard in &c.shards {
        shard.pages(|points| {
            for p in points {
                let line = serde_json::to_vec(&p).map_err(|e| Status::internal(e.to_string()))?;
                out.write_all(&line).and_then(|()| out.write_all(b"\n")).map_err(io)?;
            }
            Ok(())
        })?;
    }
    out.into_inner().map_err(|e| io(e.into_error()))?.sync_all().map_err(io)?;
    Ok(std::fs::metadata(path).map_err(io)?.len())
}

/// A snapshot file's CreateCollection and points (refused as Qdrant refuses a file it cannot read).
fn read_snapshot(bytes: &[u8]) -> Result<(qdrant::CreateCollection, Vec<PointStructPersisted>), Status> {
    use prost::Message;
    let bad =
        |why: &str| Status::invalid_argument(format!("Wrong input: not a snapshot of this server: {why}"));
    let rest = bytes.strip_prefix(SNAPSHOT_MAGIC).ok_or_else(|| bad("magic"))?;
    let (len, rest) = rest.split_first_chunk::<8>().ok_or_else(|| bad("length"))?;
    let len = usize::try_from(u64::from_le_bytes(*len)).map_err(|_| bad("length"))?;
    if rest.len() < len {
        return Err(bad("truncated"));
    }
    let created = qdrant::CreateCollection::decode(&rest[..len]).map_err(|e| bad(&e.to_string()))?;
    let points = rest[len..]
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).map_err(|e| bad(&e.to_string())))
        .collect::<Result<Vec<PointStructPersisted>, Status>>()?;
    Ok((created, points))
}

impl Service {
    /// Makes collection `name` from a snapshot file's bytes, replacing any collection of that
    /// name (Qdrant's recover).
    async fn recover(&self, name: String, bytes: Vec<u8>) -> Result<(), Status> {
        let (mut created, points) = blocking(move || read_snapshot(&bytes)).await?;
        if self.0.get(&name).is_ok() {
            let drop = qdrant::DeleteCollection { collection_name: name.clone(), ..Default::default() };
            Collections::delete(self, Request::new(drop)).await?;
        }
        created.collection_name = name.clone();
        Collections::create(self, Request::new(created)).await?;
        let c = self.0.get(&name)?;
        blocking(move || {
            let mut per_shard: Vec<Vec<PointStructPersisted>> = vec![Vec::new(); c.shards.len()];
            for p in points {
                per_shard[route(&p.id, c.shards.len())].push(p);
            }
            for (shard, points) in c.shards.iter().zip(per_shard) {
                for page in points.chunks(512) {
                    let op = PointOperations::UpsertPoints(PointInsertOperations::PointsList(page.to_vec()));
                    shard.update(UpdateOperation::PointOperation(op))?;
                }
            }
            Ok(())
        })
        .await
    }

    fn snapshot_file(&self, collection: &str, name: &str) -> Result<SnapshotFile, Status> {
        self.0
            .snapshots
            .lock()
            .map_err(|_| Status::internal("lock"))?
            .get(&(collection.to_string(), name.to_string()))
            .cloned()
            .ok_or_else(|| {
                Status::not_found(format!("Not found: Snapshot {name} of {collection} doesn't exist"))
            })
    }
}

fn description(name: &str, file: &SnapshotFile) -> qdrant::SnapshotDescription {
    qdrant::SnapshotDescription { name: name.to_string(), size: file.size as i64, ..Default::default() }
}

#[tonic::async_trait]
impl Snapshots for Service {
    async fn create(
        &self,
        request: Request<qdrant::CreateSnapshotRequest>,
    ) -> Result<Response<qdrant::CreateSnapshotResponse>, Status> {
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let collection = request.into_inner().collection_name;
        let c = self.0.get(&collection)?;
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("{collection}-{seq}.snapshot");
        let dir = self.0.root().join("snapshots").join(&collection);
        let path = dir.join(&name);
        let written = path.clone();
        let size = blocking(move || {
            std::fs::create_dir_all(&dir).map_err(|e| Status::internal(e.to_string()))?;
            write_snapshot(&c, &written)
        })
        .await?;
        let file = SnapshotFile { path, size };
        let described = description(&name, &file);
        self.0.snapshots.lock().map_err(|_| Status::internal("lock"))?.insert((collection, name), file);
        Ok(Response::new(qdrant::CreateSnapshotResponse { snapshot_description: Some(described), time: 0.0 }))
    }

    async fn list(
        &self,
        request: Request<qdrant::ListSnapshotsRequest>,
    ) -> Result<Response<qdrant::ListSnapshotsResponse>, Status> {
        let collection = request.into_inner().collection_name;
        self.0.get(&collection)?;
        let snapshots = self.0.snapshots.lock().map_err(|_| Status::internal("lock"))?;
        let mut listed: Vec<qdrant::SnapshotDescription> = snapshots
            .iter()
            .filter(|((c, _), _)| *c == collection)
            .map(|((_, name), file)| description(name, file))
            .collect();
        listed.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Response::new(qdrant::ListSnapshotsResponse { snapshot_descriptions: listed, time: 0.0 }))
    }

    async fn delete(
        &self,
        request: Request<qdrant::DeleteSnapshotRequest>,
    ) -> Result<Response<qdrant::DeleteSnapshotResponse>, Status> {
        let r = request.into_inner();
        let file = self.snapshot_file(&r.collection_name, &r.snapshot_name)?;
        self.0
            .snapshots
            .lock()
            .map_err(|_| Status::internal("lock"))?
            .remove(&(r.collection_name, r.snapshot_name));
        let _ = std::fs::remove_file(&file.path);
        Ok(Response::new(qdrant::DeleteSnapshotResponse { time: 0.0 }))
    }

    async fn create_full(
        &self,
        _: Request<qdrant::CreateFullSnapshotRequest>,
    ) -> Result<Response<qdrant::CreateSnapshotResponse>, Status> {
        Err(unimplemented("create_full"))
    }

    async fn list_full(
        &self,
        _: Request<qdrant::ListFullSnapshotsRequest>,
    ) -> Result<Response<qdrant::ListSnapshotsResponse>, Status> {
        Err(unimplemented("list_full"))
    }

    async fn delete_full(
        &self,
        _: Request<qdrant::DeleteFullSnapshotRequest>,
    ) -> Result<Response<qdrant::DeleteSnapshotResponse>, Status> {
        Err(unimplemented("delete_full"))
    }
}

/// Qdrant's REST error body for `status`.
fn rest_error(status: &Status) -> axum::response::Response {
    use axum::response::IntoResponse;
    let code = match status.code() {
        tonic::Code::NotFound => http::StatusCode::NOT_FOUND,
        tonic::Code::InvalidArgument => http::StatusCode::BAD_REQUEST,
        _ => http::StatusCode::INTERNAL_SERVER_ERROR,
    };
    let body = serde_json::json!({"status": {"error": status.message()}, "time": 0.0});
    (code, [(http::header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

async fn rest_download(
    axum::extract::State(service): axum::extract::State<Service>,
    axum::extract::Path((collection, name)): axum::extract::Path<(String, String)>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let read = async {
        let file = service.snapshot_file(&collection, &name)?;
        blocking(move || std::fs::read(&file.path).map_err(|e| Status::internal(e.to_string()))).await
    };
    match read.await {
        Ok(bytes) => (http::StatusCode::OK, bytes).into_response(),
        Err(status) => rest_error(&status),
    }
}

/// The one part of a multipart/form-data body named `field`.
fn multipart_part(content_type: &str, body: &[u8], field: &str) -> Result<Vec<u8>, Status> {
    let bad = |why: &str| Status::invalid_argument(format!("Wrong input: multipart: {why}"));
    let boundary = content_type
        .split(';')
        .find_map(|p| p.trim().strip_prefix("boundary="))
        .map(|b| b.trim_matches('"'))
        .ok_or_else(|| bad("no boundary"))?;
    let delimiter = format!("--{boundary}");
    let find = |hay: &[u8], needle: &[u8], from: usize| {
        hay.get(from..)?.windows(needle.len()).position(|w| w == needle).map(|i| i + from)
    };
    let mut at = find(body, delimiter.as_bytes(), 0).ok_or_else(|| bad("no first boundary"))?;
    loop {
        let start = at + delimiter.len();
        if body.get(start..start + 2) == Some(b"--") {
            return Err(bad(&format!("no part named {field}")));
        }
        let headers_end = find(body, b"\r\n\r\n", start).ok_or_else(|| bad("part headers"))?;
        let headers = String::from_utf8_lossy(&body[start..headers_end]);
        let next = find(body, format!("\r\n{delimiter}").as_bytes(), headers_end + 4)
            .ok_or_else(|| bad("unterminated part"))?;
        if headers.contains(&format!("name=\"{field}\"")) {
            return Ok(body[headers_end + 4..next].to_vec());
        }
        at = next + 2;
    }
}

async fn rest_upload(
    axum::extract::State(service): axum::extract::State<Service>,
    axum::extract::Path(collection): axum::extract::Path<String>,
    headers: http::HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let content_type = headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let recovered = async {
        let file = multipart_part(content_type, &body, "snapshot")?;
        service.recover(collection, file).await
    };
    match recovered.await {
        Ok(()) => (
            http::StatusCode::OK,
            [(http::header::CONTENT_TYPE, "application/json")],
            r#"{"result":true,"status":"ok","time":0.0}"#,
        )
            .into_response(),
        Err(status) => rest_error(&status),
    }
}

/// The test double served on a loopback port, with Qdrant's background optimizer; stopped and
/// its data removed on drop.
pub struct QdrantProtocolTestServer {
    /// gRPC (Qdrant's port 6334).
    pub url: String,
    /// REST, for snapshot files only (Qdrant's port 6333).
    pub rest_url: String,
    shutdown: Option<oneshot::Sender<()>>,
    rest_shutdown: Option<oneshot::Sender<()>>,
    state: Arc<State>,
}

impl std::fmt::Debug for QdrantProtocolTestServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QdrantProtocolTestServer").field("url", &self.url).finish_non_exhaustive()
    }
}

impl QdrantProtocolTestServer {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("test server tempdir");
        let state =
            Arc::new(State { collections: RwLock::default(), snapshots: Mutex::default(), dir: Some(dir) });
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let service = Service(state.clone());
        let (tx, rx) = oneshot::channel::<()>();
        let max = 64 << 20;
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(qdrant::qdrant_server::QdrantServer::new(service.clone()))
                .add_service(
                    qdrant::collections_server::CollectionsServer::new(service.clone())
                        .max_decoding_message_size(max),
                )
                .add_service(qdrant::snapshots_server::SnapshotsServer::new(service.clone()))
                .add_service(
                    qdrant::points_server::PointsServer::new(service.clone()).max_decoding_message_size(max),
                )
                .serve_with_incoming_shutdown(ragd_core::grpc::incoming(listener), async {
                    let _ = rx.await;
                }),
        );
        let rest_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind rest");
        let rest_url = format!("http://{}", rest_listener.local_addr().expect("addr"));
        let rest = axum::Router::new()
            .route("/collections/{collection}/snapshots/{name}", axum::routing::get(rest_download))
            .route("/collections/{collection}/snapshots/upload", axum::routing::post(rest_upload))
            .layer(axum::extract::DefaultBodyLimit::disable())
            .with_state(service);
        let (rest_tx, rest_rx) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(rest_listener, rest)
                .with_graceful_shutdown(async {
                    let _ = rest_rx.await;
                })
                .await;
        });
        // Like Qdrant, indexes are built in the background.
        let weak = Arc::downgrade(&state);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let Some(state) = weak.upgrade() else { return };
                let collections: Vec<Arc<Collection>> =
                    state.collections.read().map(|c| c.values().cloned().collect()).unwrap_or_default();
                // The pass keeps `state` (which owns the data directory) until its shard handles
                // are dropped: a shard flushes on drop, and must not outlive its directory.
                let _ = tokio::task::spawn_blocking(move || {
                    for c in collections {
                        for s in &c.shards {
                            let _ = s.engine.optimize();
                        }
                    }
                    drop(state);
                })
                .await;
            }
        });
        Self { url, rest_url, shutdown: Some(tx), rest_shutdown: Some(rest_tx), state }
    }

    /// Collection snapshots currently held.
    pub fn snapshot_count(&self) -> usize {
        self.state.snapshots.lock().map(|s| s.len()).unwrap_or_default()
    }

    /// Collections currently held (for tests checking clean-up).
    pub fn collection_names(&self) -> Vec<String> {
        self.state.collections.read().map(|c| c.keys().cloned().collect()).unwrap_or_default()
    }
}

impl Drop for QdrantProtocolTestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(tx) = self.rest_shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Where the remote-store tests run: a real Qdrant at `$QDRANT_URL` (gRPC port, e.g.
/// `http://localhost:6334`) when set, else the [`QdrantProtocolTestServer`] (returned so it
/// lives as long as the test).
pub async fn qdrant_url_or_test_server() -> (String, Option<QdrantProtocolTestServer>) {
    match std::env::var("QDRANT_URL") {
        Ok(url) if !url.is_empty() => (url, None),
        _ => {
            let server = QdrantProtocolTestServer::start().await;
            (server.url.clone(), Some(server))
        }
    }
}

/// The REST URL for the remote-store tests: the test server's, else `$QDRANT_REST_URL`, else
/// empty (QdrantConfig then implies it from a gRPC URL on port 6334).
pub fn qdrant_rest_url(server: Option<&QdrantProtocolTestServer>) -> String {
    match server {
        Some(s) => s.rest_url.clone(),
        None => std::env::var("QDRANT_REST_URL").unwrap_or_default(),
    }
}

/// Qdrant's HNSW defaults with a CreateCollection's diffs applied the way Qdrant applies them: the
/// collection's, then the vector's on top; `None` (the engine's defaults) when neither is given.
fn hnsw(diffs: &[Option<&qdrant::HnswConfigDiff>]) -> Option<qdrant_edge::HnswIndexConfig> {
    if diffs.iter().all(Option::is_none) {
        return None;
    }
    let mut c = qdrant_edge::HnswIndexConfig::default();
    for d in diffs.iter().flatten() {
        if let Some(m) = d.m {
            c.m = m as usize;
        }
        if let Some(e) = d.ef_construct {
            c.ef_construct = e as usize;
        }
        if let Some(f) = d.full_scan_threshold {
            c.full_scan_threshold = f as usize;
        }
        if let Some(t) = d.max_indexing_threads {
            c.max_indexing_threads = t as usize;
        }
        if let Some(p) = d.payload_m {
            c.payload_m = Some(p as usize);
        }
    }
    Some(c)
}
