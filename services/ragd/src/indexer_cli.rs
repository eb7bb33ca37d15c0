//! Indexer client verbs: `ragd collections create|list|describe|drop`, `ragd snapshot
//! create|list|restore|delete`, `ragd ingest`, `ragd search`. Human-readable output by default, `--json` for scripts.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use ragd_core::config::DEFAULT_MAX_MESSAGE_BYTES;
use ragd_core::upstream::Upstream;
use ragd_proto::json::{from_struct, to_struct};
use ragd_proto::v1::{self, indexer_client::IndexerClient};
use serde_json::{Value, json};

use ragd_loaders::{self as loaders, Columns};

#[derive(Debug, Clone, Args)]
pub struct IndexerEndpoint {
    /// gRPC endpoint of the indexer, or `etcd` to find the cluster's indexers there.
    #[arg(long, env = "RAGD_INDEXER_URL", default_value = "http://127.0.0.1:50052", global = true)]
    pub indexer: String,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(flatten)]
    pub discovery: ragd_core::discovery::EtcdConfig,
    #[command(flatten)]
    pub caller: crate::client::CallerArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DistanceArg {
    Cosine,
    Dot,
    Euclid,
}

#[derive(Debug, Subcommand)]
pub enum CollectionsCommand {
    /// Create a collection.
    Create {
        name: String,
        /// Embedding model (default: the embedder's default model).
        #[arg(long, default_value = "", conflicts_with = "dim")]
        model: String,
        /// A collection of vectors brought by the user, of this dimension, without an
        /// embedding model: documents carry their vectors (`ragd ingest` of .npy, .fvecs or a
        /// JSONL vector field), queries are vectors.
        #[arg(long, conflicts_with = "tokens", value_parser = clap::value_parser!(u32).range(1..))]
        dim: Option<u32>,
        #[arg(long, value_enum, default_value = "cosine")]
        distance: DistanceArg,
        #[arg(long, default_value_t = 1)]
        shards: u32,
        /// Copies of each shard (Qdrant cluster store only); 0 = the store's default.
        #[arg(long, default_value_t = 0)]
        replication_factor: u32,
        /// Replicas that must acknowledge a write (Qdrant cluster store only); 0 = default.
        #[arg(long, default_value_t = 0)]
        write_consistency_factor: u32,
        /// Keep vectors on disk (memory-mapped) instead of in RAM.
        #[arg(long)]
        on_disk: bool,
        /// Chunk by windows of this many sentences (default 3).
        #[arg(long, conflicts_with = "tokens")]
        sentences: Option<u32>,
        /// Chunk by windows of this many model tokens instead.
        #[arg(long)]
        tokens: Option<u32>,
        /// Sentences or tokens shared by consecutive chunks (default 1 sentence / 0 tokens).
        #[arg(long)]
        overlap: Option<u32>,
        /// Index only each document's first N chunks (1 with --tokens of the model's window:
        /// documents truncated, as MTEB embeds them).
        #[arg(long)]
        max_chunks: Option<u32>,
        /// How the indexer's resident exact engine stores the vectors (default: the server's
        /// --exact-precision).
        #[arg(long, value_enum)]
        exact_precision: Option<ragd_indexer::ExactPrecision>,
        /// Rescore the best k × N compressed hits of an exact search with f32 vectors kept
        /// resident (compressed precisions; 0 = off).
        #[arg(long, default_value_t = 0)]
        exact_rescore: u32,
        #[command(flatten)]
        keyword: KeywordArgs,
    },
    List,
    Describe {
        name: String,
    },
    Drop {
        name: String,
    },
    /// Build a collection's keyword (BM25) index again with these settings (or add one to a
    /// collection created without): every stored chunk is analysed again; its writes wait.
    Reindex {
        name: String,
        #[command(flatten)]
        keyword: KeywordArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Take a consistent snapshot of a collection (its writes wait meanwhile; searches go on).
    Create {
        collection: String,
        /// Snapshot name (default: `<collection>-<UTC time>`).
        #[arg(long, default_value = "")]
        name: String,
    },
    /// List the snapshots of a collection, or of every collection.
    List {
        collection: Option<String>,
    },
    /// Create a collection from a snapshot.
    Restore {
        collection: String,
        snapshot: String,
        /// Name of the new collection (default: the snapshot's own, once dropped).
        #[arg(long, default_value = "")]
        to: String,
    },
    Delete {
        collection: String,
        snapshot: String,
    },
}

fn snapshot_json(s: &v1::SnapshotInfo) -> Value {
    json!({
        "name": s.name, "collection": s.collection, "created_unix": s.created_unix,
        "points": s.points, "size_bytes": s.size_bytes, "model": s.model, "dim": s.dim,
        "shards": s.shards,
    })
}

fn print_snapshot(s: &v1::SnapshotInfo, json: bool) {
    if json {
        println!("{}", snapshot_json(s));
    } else {
        println!(
            "{}/{}: {} points, {} KiB, {} ({}-d), {} shard(s), taken at {} (unix)",
            s.collection,
            s.name,
            s.points,
            s.size_bytes / 1024,
            s.model,
            s.dim,
            s.shards,
            s.created_unix
        );
    }
}

pub async fn snapshots(endpoint: IndexerEndpoint, command: SnapshotCommand) -> anyhow::Result<()> {
    let mut c = client(&endpoint).await?;
    match command {
        SnapshotCommand::Create { collection, name } => {
            let r =
                c.create_snapshot(v1::CreateSnapshotRequest { collection, name }).await.map_err(status)?;
            print_snapshot(&r.into_inner(), endpoint.json);
        }
        SnapshotCommand::List { collection } => {
            let request = v1::ListSnapshotsRequest { collection: collection.unwrap_or_default() };
            let r = c.list_snapshots(request).await.map_err(status)?.into_inner();
            if endpoint.json {
                println!("{}", Value::Array(r.snapshots.iter().map(snapshot_json).collect()));
            } else {
                r.snapshots.iter().for_each(|s| print_snapshot(s, false));
            }
        }
        SnapshotCommand::Restore { collection, snapshot, to } => {
            let request = v1::RestoreSnapshotRequest { collection, snapshot, target: to };
            print_info(&c.restore_snapshot(request).await.map_err(status)?.into_inner(), endpoint.json);
        }
        SnapshotCommand::Delete { collection, snapshot } => {
            let request =
                v1::DeleteSnapshotRequest { collection: collection.clone(), snapshot: snapshot.clone() };
            c.delete_snapshot(request).await.map_err(status)?;
            if endpoint.json {
                println!("{}", json!({ "deleted": { "collection": collection, "snapshot": snapshot } }));
            } else {
                println!("deleted {collection}/{snapshot}");
            }
        }
    }
    Ok(())
}

/// The keyword (BM25) index of a new collection.
#[derive(Debug, Args)]
pub struct KeywordArgs {
    /// Add a keyword (BM25) index, for `ragd search --mode keyword|hybrid`. Any other
    /// `--keyword-*` or `--bm25-*` flag implies it.
    #[arg(long)]
    keyword: bool,
    /// Stop words and stemmer of this language (Qdrant's names: english, german, ...).
    #[arg(long)]
    keyword_language: Option<String>,
    /// Keep stop words as terms.
    #[arg(long)]
    keyword_keep_stop_words: bool,
    /// Do not fold accented letters to ASCII.
    #[arg(long)]
    keyword_no_folding: bool,
    /// Do not stem words: "running" no longer matches "run".
    #[arg(long)]
    keyword_no_stemming: bool,
    /// BM25 term-frequency saturation (default 1.2).
    #[arg(long)]
    bm25_k1: Option<f32>,
    /// BM25 length normalisation in [0, 1] (default 0.75).
    #[arg(long)]
    bm25_b: Option<f32>,
    /// Expected chunk length in terms (default: estimated from the chunking).
    #[arg(long)]
    bm25_avg_len: Option<f32>,
}

impl KeywordArgs {
    fn proto(self) -> Option<v1::KeywordIndex> {
        let asked = self.keyword
            || self.keyword_language.is_some()
            || self.keyword_keep_stop_words
            || self.keyword_no_folding
            || self.keyword_no_stemming
            || self.bm25_k1.is_some()
            || self.bm25_b.is_some()
            || self.bm25_avg_len.is_some();
        asked.then(|| v1::KeywordIndex {
            language: self.keyword_language.unwrap_or_default(),
            stop_words: self.keyword_keep_stop_words.then_some(false),
            lowercase: None,
            ascii_folding: self.keyword_no_folding.then_some(false),
            k1: self.bm25_k1,
            b: self.bm25_b,
            avg_len: self.bm25_avg_len,
            stemming: self.keyword_no_stemming.then_some(false),
        })
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ModeArg {
    Dense,
    Keyword,
    Hybrid,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum FusionArg {
    Rrf,
    Dbsf,
    Weighted,
}

/// How chunks are retrieved (`ragd search`, `ragd ask`).
#[derive(Debug, Clone, Args)]
pub struct RetrievalArgs {
    /// Dense (vectors), keyword (BM25) or hybrid (both, fused).
    #[arg(long, value_enum, default_value = "dense")]
    pub mode: ModeArg,
    /// How hybrid search fuses its lists.
    #[arg(long, value_enum, default_value = "rrf")]
    pub fusion: FusionArg,
    /// RRF's k (score = sum of 1 / (k + rank)).
    #[arg(long, default_value_t = 60)]
    pub rrf_k: u32,
    /// Weight of the dense list in [0, 1] for `--fusion weighted` (1 = dense only).
    #[arg(long, default_value_t = 0.5)]
    pub alpha: f32,
    /// Hits taken from each list before fusing (default: max(4k, 50)).
    #[arg(long)]
    pub prefetch: Option<u32>,
    /// Diversify by MMR with this diversity in [0, 1] (0 = plain top k).
    #[arg(long)]
    pub mmr: Option<f32>,
    /// Candidates MMR picks from (default: max(4k, 20)).
    #[arg(long)]
    pub mmr_candidates: Option<u32>,
    /// Rerank the candidates with the indexer's reranker (its --reranker-url).
    #[arg(long)]
    pub rerank: bool,
    /// Candidates the reranker scores (default: max(4k, 20)); implies --rerank.
    #[arg(long)]
    pub rerank_candidates: Option<u32>,
}

impl RetrievalArgs {
    /// (mode, fusion, prefetch, mmr, rerank) of a SearchRequest or AskRequest.
    pub fn proto(&self) -> (i32, Option<v1::Fusion>, u32, Option<v1::Mmr>, Option<v1::Rerank>) {
        let mode = match self.mode {
            ModeArg::Dense => v1::SearchMode::Dense,
            ModeArg::Keyword => v1::SearchMode::Keyword,
            ModeArg::Hybrid => v1::SearchMode::Hybrid,
        };
        let method = match self.fusion {
            FusionArg::Rrf => v1::fusion::Method::Rrf(v1::Rrf { k: self.rrf_k }),
            FusionArg::Dbsf => v1::fusion::Method::Dbsf(v1::Dbsf {}),
            FusionArg::Weighted => v1::fusion::Method::Weighted(v1::Weighted { alpha: self.alpha }),
        };
        let mmr =
            self.mmr.map(|diversity| v1::Mmr { diversity, candidates: self.mmr_candidates.unwrap_or(0) });
        let rerank = (self.rerank || self.rerank_candidates.is_some())
            .then(|| v1::Rerank { candidates: self.rerank_candidates.unwrap_or(0) });
        (mode as i32, Some(v1::Fusion { method: Some(method) }), self.prefetch.unwrap_or(0), mmr, rerank)
    }
}

#[derive(Debug, Args)]
pub struct IngestArgs {
    #[command(flatten)]
    endpoint: IndexerEndpoint,
    #[arg(long)]
    collection: String,
    /// Documents per UpsertBatch call.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// CSV column / JSON field holding the text.
    #[arg(long, default_value = "text")]
    text_column: String,
    /// CSV column / JSON field holding the document id.
    #[arg(long, default_value = "id")]
    id_column: String,
    /// CSV column / JSON field holding a document's own vector (an array of numbers): such a
    /// document is stored as it is, neither chunked nor embedded.
    #[arg(long, default_value = "vector")]
    vector_field: String,
    /// Ids of the rows of the vector files (.npy, .fvecs), one per line, in the order of the
    /// files and their rows (default: the rows' numbers from 0, counted across the files).
    #[arg(long)]
    ids: Option<PathBuf>,
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    #[command(flatten)]
    endpoint: IndexerEndpoint,
    #[arg(long)]
    collection: String,
    /// Print each chunk's vector too.
    #[arg(long)]
    vectors: bool,
    /// Document id.
    id: String,
}

#[derive(Debug, Args)]
pub struct SearchArgs {
    #[command(flatten)]
    endpoint: IndexerEndpoint,
    #[arg(long)]
    collection: String,
    #[arg(long, default_value_t = 5)]
    k: u32,
    /// Drop hits scoring below this.
    #[arg(long)]
    threshold: Option<f32>,
    /// Exact search instead of HNSW.
    #[arg(long)]
    exact: bool,
    #[command(flatten)]
    retrieval: RetrievalArgs,
    /// Queries (one result list each).
    #[arg(required = true)]
    queries: Vec<String>,
}

pub(crate) async fn client(endpoint: &IndexerEndpoint) -> anyhow::Result<IndexerClient<Upstream>> {
    let channel =
        crate::client::channel(&endpoint.indexer, &endpoint.discovery, "indexer", &endpoint.caller).await?;
    Ok(IndexerClient::new(channel)
        .max_decoding_message_size(DEFAULT_MAX_MESSAGE_BYTES)
        .max_encoding_message_size(DEFAULT_MAX_MESSAGE_BYTES))
}

pub(crate) fn status(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", s.code(), s.message())
}

fn info_json(c: &v1::CollectionInfo) -> Value {
    json!({
        "name": c.name, "model": c.model, "dim": c.dim,
        "distance": v1::Distance::try_from(c.distance).map(|d| d.as_str_name()).unwrap_or("?"),
        "points": c.points, "documents": c.documents, "indexed_vectors": c.indexed_vectors,
        "disk_bytes": c.disk_bytes, "shards": c.shards.len(), "optimizer_state": c.optimizer_state,
        "replication_factor": c.replication_factor, "write_consistency_factor": c.write_consistency_factor,
        "on_disk": c.on_disk, "max_chunks": c.max_chunks, "exact": exact_summary(c),
        "keyword": c.keyword.as_ref().map(|k| json!({
            "language": k.language, "stop_words": k.stop_words, "stemming": k.stemming,
            "lowercase": k.lowercase, "ascii_folding": k.ascii_folding, "k1": k.k1, "b": k.b,
            "avg_len": k.avg_len,
        })),
    })
}

fn precision_to(p: ragd_indexer::ExactPrecision) -> v1::ExactPrecision {
    use ragd_indexer::ExactPrecision as P;
    match p {
        P::F32 => v1::ExactPrecision::F32,
        P::F16 => v1::ExactPrecision::F16,
        P::Bf16 => v1::ExactPrecision::Bf16,
        P::Int8 => v1::ExactPrecision::Int8,
        P::Int8PerVector => v1::ExactPrecision::Int8PerVector,
    }
}

/// The exact engine's storage and size, as JSON (None without an exact engine).
fn exact_summary(c: &v1::CollectionInfo) -> Option<Value> {
    let e = c.exact.as_ref()?;
    let precision = v1::ExactPrecision::try_from(e.precision).map_or("?", |p| p.as_str_name());
    Some(json!({
        "precision": precision.trim_start_matches("EXACT_PRECISION_").to_lowercase().replace('_', "-"),
        "rescore": e.rescore,
        "bytes_per_vector": c.exact_bytes_per_vector,
        "resident_bytes": c.exact_resident_bytes,
    }))
}

fn print_info(c: &v1::CollectionInfo, as_json: bool) {
    if as_json {
        println!("{}", info_json(c));
    } else {
        println!(
            "{}  model={} dim={} documents={} points={} shards={} indexed={} disk={}KiB ({})",
            c.name,
            c.model,
            c.dim,
            c.documents,
            c.points,
            c.shards.len(),
            c.indexed_vectors,
            c.disk_bytes / 1024,
            c.optimizer_state
        );
        if let Some(e) = exact_summary(c) {
            println!(
                "  exact engine: {} rescore={} {} B/vector, {} KiB resident",
                e["precision"].as_str().unwrap_or("?"),
                e["rescore"],
                e["bytes_per_vector"],
                e["resident_bytes"].as_u64().unwrap_or(0) / 1024
            );
        }
    }
}

pub async fn collections(endpoint: IndexerEndpoint, command: CollectionsCommand) -> anyhow::Result<()> {
    let mut c = client(&endpoint).await?;
    match command {
        CollectionsCommand::Create {
            name,
            model,
            dim,
            distance,
            shards,
            replication_factor,
            write_consistency_factor,
            on_disk,
            sentences,
            tokens,
            overlap,
            max_chunks,
            exact_precision,
            exact_rescore,
            keyword,
        } => {
            let policy = match (sentences, tokens) {
                (_, Some(size)) => {
                    v1::chunking::Policy::Tokens(v1::Window { size, overlap: overlap.unwrap_or(0) })
                }
                (size, None) => v1::chunking::Policy::Sentences(v1::Window {
                    size: size.unwrap_or(3),
                    overlap: overlap.unwrap_or(1),
                }),
            };
            let distance = match distance {
                DistanceArg::Cosine => v1::Distance::Cosine,
                DistanceArg::Dot => v1::Distance::Dot,
                DistanceArg::Euclid => v1::Distance::Euclid,
            };
            let request = v1::CreateCollectionRequest {
                name,
                model,
                distance: distance as i32,
                shards,
                chunking: Some(v1::Chunking { policy: Some(policy) }),
                replication_factor,
                write_consistency_factor,
                on_disk,
                keyword: keyword.proto(),
                max_chunks: max_chunks.unwrap_or(0),
                dim: dim.unwrap_or(0),
                exact: (exact_precision.is_some() || exact_rescore > 0).then(|| v1::ExactStorage {
                    precision: exact_precision.map_or(v1::ExactPrecision::Unspecified, precision_to) as i32,
                    rescore: exact_rescore,
                }),
            };
            print_info(&c.create_collection(request).await.map_err(status)?.into_inner(), endpoint.json);
        }
        CollectionsCommand::List => {
            let r = c.list_collections(v1::ListCollectionsRequest {}).await.map_err(status)?.into_inner();
            if endpoint.json {
                println!("{}", Value::Array(r.collections.iter().map(info_json).collect()));
            } else {
                r.collections.iter().for_each(|i| print_info(i, false));
            }
        }
        CollectionsCommand::Describe { name } => {
            let r = c.describe_collection(v1::DescribeCollectionRequest { name }).await.map_err(status)?;
            print_info(&r.into_inner(), endpoint.json);
        }
        CollectionsCommand::Reindex { name, keyword } => {
            let request = v1::ReindexKeywordsRequest {
                collection: name,
                keyword: Some(keyword.proto().unwrap_or_default()),
            };
            let r = c.reindex_keywords(request).await.map_err(status)?.into_inner();
            if !endpoint.json {
                println!("re-indexed {} chunks", r.chunks);
            }
            if let Some(info) = &r.collection {
                print_info(info, endpoint.json);
            }
        }
        CollectionsCommand::Drop { name } => {
            c.drop_collection(v1::DropCollectionRequest { name: name.clone() }).await.map_err(status)?;
            if !endpoint.json {
                println!("dropped {name}");
            }
        }
    }
    Ok(())
}

/// Loads every file, sends documents in batches with a progress bar, prints a summary. A file
/// that fails to load is reported and skipped; a failed call stops the ingest with its status.
pub async fn ingest(args: IngestArgs) -> anyhow::Result<()> {
    let mut c = client(&args.endpoint).await?;
    let columns = Columns {
        text: args.text_column.clone(),
        id: args.id_column.clone(),
        vector: args.vector_field.clone(),
    };
    let mut file_errors = Vec::new();
    let mut docs = Vec::new();
    let mut ids = match &args.ids {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("--ids {}: {e}", path.display()))?
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
                .into_iter(),
        ),
        None => None,
    };
    let mut row = 0usize;
    for path in &args.files {
        let vectors = loaders::Format::of(path).is_ok_and(loaders::Format::is_vectors);
        match loaders::load(path, &columns) {
            // Rows of vector files are numbered across the files, or named by --ids.
            Ok(mut d) if vectors => {
                for doc in &mut d {
                    doc.id = match ids.as_mut() {
                        Some(ids) => ids.next().ok_or_else(|| {
                            anyhow::anyhow!("--ids has fewer lines than the vector files have rows")
                        })?,
                        None => row.to_string(),
                    };
                    row += 1;
                }
                docs.extend(d)
            }
            Ok(d) => docs.extend(d),
            // Its rows' numbers would shift every later vector file's ids.
            Err(e) if vectors => {
                anyhow::bail!("{}: {e} (vector files number their rows; nothing sent)", path.display())
            }
            Err(e) => file_errors.push((path.display().to_string(), e)),
        }
    }
    if ids.is_some_and(|mut rest| rest.next().is_some()) {
        anyhow::bail!("--ids has more lines than the vector files have rows ({row})");
    }
    let bar = if args.endpoint.json { ProgressBar::hidden() } else { ProgressBar::new(docs.len() as u64) };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} documents {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let (mut stored, mut chunks, mut failed) = (0u64, 0u64, Vec::new());
    for batch in docs.chunks(args.batch.max(1)) {
        let documents = batch
            .iter()
            .map(|d| v1::Document {
                id: d.id.clone(),
                text: d.text.clone(),
                metadata: Some(to_struct(d.metadata.clone())),
                vector: d.vector.clone().unwrap_or_default(),
            })
            .collect();
        let r = c
            .upsert_batch(v1::UpsertRequest { collection: args.collection.clone(), documents })
            .await
            .map_err(status)?
            .into_inner();
        stored += u64::from(r.documents);
        chunks += u64::from(r.chunks);
        failed.extend(r.failed.into_iter().map(|f| (f.id, f.reason)));
        bar.inc(batch.len() as u64);
    }
    bar.finish_and_clear();
    let summary = json!({
        "files": args.files.len(), "files_failed": file_errors.iter().map(|(f, e)| json!({"file": f, "reason": e})).collect::<Vec<_>>(),
        "documents_stored": stored, "chunks": chunks,
        "documents_failed": failed.iter().map(|(id, r)| json!({"id": id, "reason": r})).collect::<Vec<_>>(),
    });
    if args.endpoint.json {
        println!("{summary}");
    } else {
        println!(
            "ingested {stored} documents ({chunks} chunks) into {} from {} files",
            args.collection,
            args.files.len()
        );
        for (f, e) in &file_errors {
            println!("  file failed: {f}: {e}");
        }
        for (id, r) in &failed {
            println!("  document failed: {id:?}: {r}");
        }
    }
    Ok(())
}

/// Prints a stored document's chunks (JSON: one object with the chunks in order).
pub async fn get(args: GetArgs) -> anyhow::Result<()> {
    let mut c = client(&args.endpoint).await?;
    let request =
        v1::GetDocumentRequest { collection: args.collection, id: args.id, with_vectors: args.vectors };
    let r = c.get_document(request).await.map_err(status)?.into_inner();
    if args.endpoint.json {
        let chunks: Vec<Value> = r
            .chunks
            .into_iter()
            .map(|c| {
                let metadata = c.metadata.map(from_struct).unwrap_or_default();
                let mut o = json!({"chunk": c.chunk, "text": c.text, "metadata": metadata});
                if args.vectors {
                    o["vector"] = json!(c.vector);
                }
                o
            })
            .collect();
        println!("{}", json!({"id": r.id, "chunks": chunks}));
    } else {
        println!("{} ({} chunks)", r.id, r.chunks.len());
        for c in r.chunks {
            println!("  #{}  {}", c.chunk, c.text);
            if args.vectors {
                println!("      {:?}", c.vector);
            }
        }
    }
    Ok(())
}

pub async fn search(args: SearchArgs) -> anyhow::Result<()> {
    let mut c = client(&args.endpoint).await?;
    let (mode, fusion, prefetch, mmr, rerank) = args.retrieval.proto();
    let request = v1::SearchRequest {
        collection: args.collection,
        queries: args
            .queries
            .iter()
            .map(|q| v1::Query { query: Some(v1::query::Query::Text(q.clone())) })
            .collect(),
        k: args.k,
        score_threshold: args.threshold,
        exact: args.exact,
        mode,
        fusion,
        prefetch,
        mmr,
        rerank,
        ..Default::default()
    };
    let r = c.search(request).await.map_err(status)?.into_inner();
    for (q, result) in args.queries.iter().zip(r.results) {
        if args.endpoint.json {
            let hits: Vec<Value> = result
                .hits
                .into_iter()
                .map(|h| {
                    let metadata = h.metadata.map(from_struct).unwrap_or_default();
                    let sources: Vec<Value> = h
                        .sources
                        .iter()
                        .map(|s| json!({"source": s.source, "rank": s.rank, "score": s.score}))
                        .collect();
                    json!({"doc_id": h.doc_id, "chunk": h.chunk, "score": h.score, "text": h.text, "metadata": metadata, "sources": sources})
                })
                .collect();
            println!("{}", json!({"query": q, "hits": hits}));
        } else {
            println!("{q}");
            for h in result.hits {
                // A fused hit says where it stood in each list: "dense #3, keyword #1".
                let sources: Vec<String> =
                    h.sources.iter().map(|s| format!("{} #{}", s.source, s.rank)).collect();
                let sources =
                    if sources.is_empty() { String::new() } else { format!("  ({})", sources.join(", ")) };
                println!("  {:.3}  {} #{}{sources}  {:.80}", h.score, h.doc_id, h.chunk, h.text);
            }
        }
    }
    Ok(())
}
