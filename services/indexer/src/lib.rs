//! ragd-indexer: collections of document chunks stored as vector shards in Qdrant.
//!
//! Request path: gRPC ([`grpc`]) → [`service::Indexer`] (collections registry, ingest pipeline:
//! validate → [`chunk`] → embed through the embedder over gRPC → store; search: embed the query
//! → store) → [`store`] (one `VectorStore` trait; [`store::edge::EdgeStore`] runs the real Qdrant
//! engine in-process, N shards per collection, exact top-k merge). [`filter`] translates
//! metadata filters to Qdrant's; [`error`] maps every failure to one gRPC status.

pub mod chunk;
pub mod collections;
pub mod config;
pub mod error;
pub mod exact;
pub mod filter;
pub mod fusion;
pub mod grpc;
pub mod keyword;
pub mod mmr;
pub mod peers;
pub mod rerank;
pub mod service;
pub mod snapshot;
pub mod store;

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

pub use ragd_core::startup::StartupError;
use ragd_proto::service_names::INDEXER;
use ragd_proto::v1::embedder_client::EmbedderClient;
use ragd_proto::v1::indexer_server::IndexerServer;
use tokio::net::TcpListener;

pub use config::{ExactPrecision, IndexerConfig, StoreKind};
pub use error::IndexError;
pub use service::Indexer;

use crate::collections::Registry;
use crate::exact::ExactSettings;
use crate::grpc::IndexerGrpc;
use crate::service::IndexerLimits;
use crate::store::VectorStore;
use crate::store::edge::{EdgeOptions, EdgeStore};
use crate::store::remote::QdrantStore;

/// Runs the indexer on `listener` until `shutdown` resolves.
///
/// NOT_SERVING while the store opens every collection, SERVING after; a background task
/// builds HNSW indexes off the request path. On shutdown: NOT_SERVING, drain in-flight
/// requests, stop the optimizer, flush every shard.
pub async fn serve(
    config: IndexerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), StartupError> {
    let slot = Arc::new(OnceLock::new());
    let max = config.grpc.max_message_bytes;
    let service = IndexerServer::new(IndexerGrpc::new(slot.clone()))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let security = ragd_core::security::ServerSecurity::start(&config.security, "indexer")
        .map_err(StartupError::of("security"))?;
    let upstream_security = ragd_core::security::ClientSecurity::start(&config.security.upstream)
        .map_err(StartupError::of("upstream security"))?;
    let mut registry = ragd_core::metrics::Registry::default();
    security.register(&mut registry, "ragd_indexer");
    let gauges = CollectionGauges::default();
    gauges.register(&mut registry);
    let discovery_metrics = ragd_core::discovery::DiscoveryMetrics::register(&mut registry);
    let recovery = RecoveryGauges::default();
    recovery.register(&mut registry);
    let ragd_core::grpc::Host { server, readiness, stop, local } = ragd_core::grpc::host(
        INDEXER,
        service,
        &[ragd_proto::FILE_DESCRIPTOR_SET],
        listener,
        &security,
        "ragd_indexer",
        registry,
        config.metrics_addr,
    )
    .await?;
    tracing::info!(
        addr = %local, data_dir = %config.data_dir.display(), store = ?config.store,
        "indexer listening; opening collections"
    );

    let opened = open(&config, discovery_metrics, &upstream_security);
    let indexer = match opened.await {
        Ok(i) => Arc::new(i),
        Err(e) => {
            stop.trigger();
            return Err(e);
        }
    };
    recovery.set(indexer.recovery());
    let _ = slot.set(indexer.clone());
    let meta = registration_meta(&indexer, config.store);
    let registration = ragd_core::grpc::go_live(
        &readiness,
        &stop,
        &config.discovery,
        "indexer",
        security.scheme(),
        local,
        meta,
    )
    .await
    .map_err(StartupError::of("discovery"))?;
    let optimizer =
        // The gauges cost a stats call (shard counts, a walk of the shard directories) per collection
        // and round: only refreshed when something can scrape them.
        tokio::spawn(optimize_forever(
            indexer.clone(),
            config.optimize_interval(),
            stop.clone(),
            config.metrics_addr.is_some().then_some(gauges),
        ));

    let grace = Duration::from_secs(config.grpc.shutdown_grace_secs);
    let early = ragd_core::grpc::run_until_shutdown(server, shutdown, &readiness, &stop, grace, registration)
        .await
        .map(StartupError::of("grpc server"));
    let _ = optimizer.await;
    indexer.store().flush().await.map_err(StartupError::of("flushing the store"))?;
    tracing::info!("indexer stopped");
    early.map_or(Ok(()), Err)
}

/// Opens the store, the collections registry and the embedder channel, and the indexer over
/// them (every collection, the exact mirrors).
async fn open(
    config: &IndexerConfig,
    discovery_metrics: ragd_core::discovery::DiscoveryMetrics,
    upstream_security: &ragd_core::security::ClientSecurity,
) -> Result<Indexer, StartupError> {
    let store = open_store(config).await?;
    let registry = Registry::load(&config.data_dir).map_err(StartupError::of("collections registry"))?;
    let channel = ragd_core::discovery::upstream(
        &config.embedder_url,
        &config.discovery.etcd,
        "embedder",
        Some(discovery_metrics),
        upstream_security,
    )
    .map_err(StartupError::of("--embedder-url"))?;
    let max = config.grpc.max_message_bytes;
    let embedder: Arc<dyn peers::EmbedderApi> = Arc::new(peers::GrpcEmbedder::new(
        EmbedderClient::new(channel).max_decoding_message_size(max).max_encoding_message_size(max),
    ));
    let limits = IndexerLimits {
        max_k: config.max_k,
        max_queries: config.max_queries,
        max_documents_per_request: config.max_documents_per_request,
        max_shards: config.max_shards,
        indexing_threshold_kb: config.indexing_threshold_kb,
        status_capacity: config.status_capacity,
        max_queue_wait: ragd_core::admission::bound_from_ms(config.max_queue_wait_ms),
    };
    // The resident exact engine mirrors the embedded store (a Qdrant cluster has its own).
    let exact = (config.exact_engine && config.store == StoreKind::Embedded).then_some(ExactSettings {
        precision: config.exact_precision,
        max_batch: 256,
        max_wait: Duration::ZERO,
    });
    let reranker = rerank::HttpReranker::from_config(&config.reranker)
        .map_err(StartupError::of("--reranker-url"))?
        .map(|r| Arc::new(r) as Arc<dyn rerank::Reranker>);
    Ok(Indexer::open(store, registry, embedder, limits, exact)
        .await
        .map_err(StartupError::of("opening collections"))?
        .with_reranker(reranker))
}

/// The store `--store` names: the embedded Qdrant engine under `<data-dir>/shards` (its journal
/// replayed off the async workers) or a Qdrant cluster.
async fn open_store(config: &IndexerConfig) -> Result<Arc<dyn VectorStore>, StartupError> {
    Ok(match config.store {
        StoreKind::Embedded => {
            let options = EdgeOptions {
                durability: config.durability,
                checkpoint_bytes: config.journal_checkpoint_mb.max(1) << 20,
            };
            let root = config.data_dir.join("shards");
            let store = blocking_open(move || EdgeStore::with_options(&root, options)).await;
            Arc::new(store.map_err(StartupError::of("embedded store"))?)
        }
        StoreKind::Qdrant => {
            Arc::new(QdrantStore::connect(&config.qdrant).await.map_err(StartupError::of("qdrant store"))?)
        }
    })
}

/// What this instance serves, for its discovery entry: the store and each collection with its
/// shard ids.
fn registration_meta(indexer: &Indexer, store: StoreKind) -> serde_json::Value {
    let collections: Vec<serde_json::Value> = indexer
        .collections()
        .map(|c| {
            c.into_iter()
                .map(|m| serde_json::json!({ "name": m.store.name, "shards": (0..m.store.shards).collect::<Vec<_>>() }))
                .collect()
        })
        .unwrap_or_default();
    serde_json::json!({ "store": format!("{store:?}"), "collections": collections })
}

/// Reads the journal (a blocking read of every record) off the async workers.
async fn blocking_open<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, IndexError> + Send + 'static,
) -> Result<T, IndexError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| IndexError::Store(format!("store open failed: {e}")))?
}

/// What the embedded store replayed from its journal at start-up.
#[derive(Debug, Clone, Default)]
struct RecoveryGauges {
    records: prometheus_client::metrics::gauge::Gauge,
    points: prometheus_client::metrics::gauge::Gauge,
    skipped: prometheus_client::metrics::gauge::Gauge,
    failed: prometheus_client::metrics::gauge::Gauge,
    torn_bytes: prometheus_client::metrics::gauge::Gauge,
}

impl RecoveryGauges {
    fn register(&self, registry: &mut ragd_core::metrics::Registry) {
        let r = registry.sub_registry_with_prefix("ragd_indexer_journal");
        r.register(
            "replayed_records",
            "Journal records replayed into the shards at start-up",
            self.records.clone(),
        );
        r.register(
            "replayed_points",
            "Chunks upserted by the records replayed at start-up",
            self.points.clone(),
        );
        r.register(
            "skipped_records",
            "Journal records of dropped collections skipped at start-up",
            self.skipped.clone(),
        );
        r.register(
            "failed_records",
            "Journal records that failed to replay at start-up",
            self.failed.clone(),
        );
        r.register(
            "torn_bytes",
            "Bytes of a write torn by a crash, dropped at start-up",
            self.torn_bytes.clone(),
        );
    }

    fn set(&self, r: store::Recovery) {
        self.records.set(r.records as i64);
        self.points.set(r.points as i64);
        self.skipped.set(r.skipped as i64);
        self.failed.set(r.failed as i64);
        self.torn_bytes.set(r.torn_bytes as i64);
    }
}

/// Points and documents per collection, refreshed by the optimizer's rounds.
#[derive(Debug, Clone, Default)]
struct CollectionGauges {
    points:
        prometheus_client::metrics::family::Family<CollectionLabel, prometheus_client::metrics::gauge::Gauge>,
    documents:
        prometheus_client::metrics::family::Family<CollectionLabel, prometheus_client::metrics::gauge::Gauge>,
    shard_points:
        prometheus_client::metrics::family::Family<ShardLabel, prometheus_client::metrics::gauge::Gauge>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct ShardLabel {
    collection: String,
    shard: u32,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct CollectionLabel {
    collection: String,
}

impl CollectionGauges {
    fn register(&self, registry: &mut ragd_core::metrics::Registry) {
        let r = registry.sub_registry_with_prefix("ragd_indexer");
        r.register("collection_points", "Points (chunks) stored per collection", self.points.clone());
        r.register("collection_documents", "Documents stored per collection", self.documents.clone());
        r.register("shard_points", "Points (chunks) stored per shard", self.shard_points.clone());
    }

    fn clear(&self) {
        self.points.clear();
        self.documents.clear();
        self.shard_points.clear();
    }

    fn set(&self, collection: &str, stats: &store::StoreStats) {
        let label = CollectionLabel { collection: collection.to_string() };
        self.points.get_or_create(&label).set(stats.points as i64);
        self.documents.get_or_create(&label).set(stats.documents as i64);
        for shard in &stats.shards {
            let l = ShardLabel { collection: collection.to_string(), shard: shard.id };
            self.shard_points.get_or_create(&l).set(shard.points as i64);
        }
    }
}

/// Builds HNSW indexes where thresholds are reached, every `interval`, until `stop`; refreshes
/// the collection gauges (if any) on the way.
async fn optimize_forever(
    indexer: Arc<Indexer>,
    interval: Duration,
    stop: ragd_core::grpc::Stop,
    gauges: Option<CollectionGauges>,
) {
    let stopped = stop.wait();
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            () = &mut stopped => return,
            () = tokio::time::sleep(interval) => {}
        }
        let Ok(collections) = indexer.collections() else { continue };
        if let Some(g) = &gauges {
            g.clear();
        }
        for meta in collections {
            if let Some(g) = &gauges
                && let Ok(stats) = indexer.stats(&meta.store.name).await
            {
                g.set(&meta.store.name, &stats);
            }
            match indexer.store().optimize(&meta.store.name).await {
                Ok(true) => tracing::info!(collection = %meta.store.name, "optimizer built indexes"),
                Ok(false) => {}
                // A collection dropped meanwhile is not an error worth more than a debug line.
                Err(IndexError::CollectionNotFound(_)) => {
                    tracing::debug!(collection = %meta.store.name, "gone")
                }
                Err(e) => tracing::warn!(collection = %meta.store.name, error = %e, "optimizer failed"),
            }
        }
    }
}
