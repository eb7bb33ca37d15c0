//! Indexer configuration: one typed struct, every field a `--flag` and a `RAGD_*` variable.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use ragd_core::config::GrpcConfig;

use crate::store::journal::Durability;
use crate::store::remote::QdrantConfig;

/// Storage precision of the resident exact engine (docs/benchmarks.md: speed and recall of each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExactPrecision {
    F32,
    /// 2 bytes per dimension, 11 significant bits.
    F16,
    /// 2 bytes per dimension, f32's range with 8 significant bits.
    Bf16,
    /// 1 byte per dimension, asymmetric per dimension (faiss SQ8).
    Int8,
    /// 1 byte per dimension and a scale per vector, symmetric.
    Int8PerVector,
}

impl ExactPrecision {
    pub fn engine(self) -> ragd_exact::Precision {
        match self {
            ExactPrecision::F32 => ragd_exact::Precision::F32,
            ExactPrecision::F16 => ragd_exact::Precision::F16,
            ExactPrecision::Bf16 => ragd_exact::Precision::Bf16,
            ExactPrecision::Int8 => ragd_exact::Precision::Int8,
            ExactPrecision::Int8PerVector => ragd_exact::Precision::Int8PerVector,
        }
    }
}

/// Where vectors live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StoreKind {
    /// The Qdrant engine in-process (qdrant-edge), shard directories under the data directory.
    Embedded,
    /// A Qdrant server or cluster over gRPC (`--qdrant-url`).
    Qdrant,
}

#[derive(Debug, Clone, Args)]
pub struct IndexerConfig {
    /// Vector store: the embedded Qdrant engine or a Qdrant server/cluster.
    #[arg(long, env = "RAGD_STORE", value_enum, default_value_t = StoreKind::Embedded)]
    pub store: StoreKind,
    #[command(flatten)]
    pub qdrant: QdrantConfig,
    #[command(flatten)]
    pub reranker: crate::rerank::RerankerConfig,
    /// Data directory: collections registry and shard directories.
    #[arg(long, env = "RAGD_DATA_DIR", default_value = ".ragd/data/indexer")]
    pub data_dir: PathBuf,
    /// gRPC endpoint of the embedder, or `etcd` to discover every embedder of the cluster and
    /// balance over them (needs --etcd-endpoints).
    #[arg(long, env = "RAGD_EMBEDDER_URL", default_value = "http://127.0.0.1:50051")]
    pub embedder_url: String,
    /// Largest k a search may ask for.
    #[arg(long, env = "RAGD_MAX_K", default_value_t = 1000)]
    pub max_k: usize,
    /// Longest expected wait of a Search, in milliseconds: a search that would wait longer (the
    /// queries in flight ÷ the measured search throughput) is refused at once with
    /// RESOURCE_EXHAUSTED and a retry hint, as is one that could not finish before its deadline.
    /// 0: off (no search is refused for load).
    #[arg(long, env = "RAGD_MAX_QUEUE_WAIT_MS", default_value_t = 250)]
    pub max_queue_wait_ms: u64,
    /// Most queries in one search request.
    #[arg(long, env = "RAGD_MAX_QUERIES", default_value_t = 64)]
    pub max_queries: usize,
    /// Most documents in one upsert message.
    #[arg(long, env = "RAGD_MAX_DOCUMENTS_PER_REQUEST", default_value_t = 10_000)]
    pub max_documents_per_request: usize,
    /// Most shards per collection.
    #[arg(long, env = "RAGD_MAX_SHARDS", default_value_t = 64)]
    pub max_shards: u32,
    /// KiB of vectors a segment holds before the optimizer builds its HNSW index, and below which
    /// a search scans the segment in full (Qdrant's defaults when unset: 10,000 KiB for
    /// both); search is exact until then.
    #[arg(long, env = "RAGD_INDEXING_THRESHOLD_KB")]
    pub indexing_threshold_kb: Option<usize>,
    /// How often the background optimizer looks for segments to index, in seconds.
    #[arg(long, env = "RAGD_OPTIMIZE_INTERVAL_SECS", default_value_t = 5)]
    pub optimize_interval_secs: u64,
    /// Keep a resident copy of each collection's vectors for exact searches (ragd-exact:
    /// SIMD, batched, coalesced); embedded store only. Costs the vectors' size in RAM.
    #[arg(long, env = "RAGD_EXACT_ENGINE", default_value_t = true, action = clap::ArgAction::Set)]
    pub exact_engine: bool,
    /// Storage precision of the resident exact engine for collections created without one
    /// (CreateCollection's `exact.precision`).
    #[arg(long, env = "RAGD_EXACT_PRECISION", value_enum, default_value_t = ExactPrecision::F32)]
    pub exact_precision: ExactPrecision,
    /// When the embedded store acknowledges a write: `fsync` once its journal record is on the
    /// disk (survives a power loss), `page-cache` once it is in the OS page cache (survives a
    /// crash of the process, not of the machine), `none` without a journal (a crash loses what
    /// was written since the last clean stop). Concurrent writes share one journal append and
    /// one sync.
    #[arg(long, env = "RAGD_DURABILITY", value_enum, default_value_t = Durability::Fsync)]
    pub durability: Durability,
    /// MiB of journal after which the embedded store flushes its shards and deletes the journal
    /// (in the background); bounds the replay at start-up.
    #[arg(long, env = "RAGD_JOURNAL_CHECKPOINT_MB", default_value_t = 64)]
    pub journal_checkpoint_mb: u64,
    /// Document ingest statuses remembered for DocumentStatus.
    #[arg(long, env = "RAGD_STATUS_CAPACITY", default_value_t = 100_000)]
    pub status_capacity: usize,
    /// Serve Prometheus metrics on this address (`GET /metrics`): requests and latency per RPC
    /// and status, points/documents per collection.
    #[arg(long, env = "RAGD_METRICS_ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    #[command(flatten)]
    pub grpc: GrpcConfig,
    #[command(flatten)]
    pub discovery: ragd_core::discovery::DiscoveryConfig,
    #[command(flatten)]
    pub security: ragd_core::security::SecurityConfig,
}

impl Default for IndexerConfig {
    /// The clap attributes' defaults (one place for each): see `ragd_core::config::clap_defaults`.
    fn default() -> Self {
        ragd_core::config::clap_defaults()
    }
}

impl IndexerConfig {
    pub fn optimize_interval(&self) -> Duration {
        Duration::from_secs(self.optimize_interval_secs.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        config: IndexerConfig,
    }

    /// Every field, not a subset: `ragd serve` with no flags (and no RAGD_* variable set) gets
    /// exactly `Default`, and the defaults validate.
    #[test]
    fn default_is_what_the_cli_gives_field_for_field() {
        let parsed = Cli::try_parse_from(["serve"]).expect("defaults parse").config;
        assert_eq!(format!("{:#?}", IndexerConfig::default()), format!("{parsed:#?}"));
    }

    #[test]
    fn defaults_parse_and_match_default_impl() {
        let c = Cli::try_parse_from(["indexer"]).expect("defaults parse").config;
        let d = IndexerConfig::default();
        assert_eq!(
            (c.max_k, c.max_queries, c.max_shards, c.status_capacity),
            (d.max_k, d.max_queries, d.max_shards, d.status_capacity)
        );
        assert_eq!(c.data_dir, d.data_dir);
        assert_eq!(c.embedder_url, d.embedder_url);
        assert_eq!(c.store, d.store);
        assert_eq!((c.durability, c.journal_checkpoint_mb), (d.durability, d.journal_checkpoint_mb));
        assert_eq!((c.exact_engine, c.exact_precision), (d.exact_engine, d.exact_precision));
        assert_eq!(c.qdrant.url, d.qdrant.url);
        assert_eq!(c.qdrant.collection_prefix, d.qdrant.collection_prefix);
    }
}
