//! `loadgen`: gRPC load generator for ragd services. Prints a JSON report (throughput, HDR
//! latency percentiles, errors by status code, a second-by-second series) and with `--plot DIR`
//! draws it (PNG + SVG: latency and outcomes over time, the HDR distribution).
//!
//!   loadgen embed --endpoint http://127.0.0.1:50051 --clients 32 --duration-secs 20
//!   loadgen embed --mode open --rate 200 --clients 64 --texts-per-request 4
//!   loadgen embed --ramp 20:200:20 --step-secs 10 --clients 256 --plot out/   # stepped ramp
//!   loadgen search --endpoint http://127.0.0.1:50052 --collection docs --k 5 --clients 8
//!   loadgen search --collection docs --sweep-ef 16,32,64,128 --plot out/     # recall vs QPS
//!   loadgen mixed --collection docs --ingest-rate 2 --search-rate 20 --ask-rate 0.5 --plot out/

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use ragd_bench::charts::{SweepPoint, report_charts, sweep_chart};
use ragd_bench::{LoadConfig, LoadReport, Mode, run, sample_texts};
use ragd_core::config::DEFAULT_MAX_MESSAGE_BYTES;
use ragd_core::upstream::Upstream;
use ragd_proto::v1::{self, embedder_client::EmbedderClient};

#[derive(Debug, Parser)]
#[command(name = "loadgen", about = "gRPC load generator for ragd services")]
struct Cli {
    #[command(subcommand)]
    target: Target,
}

#[derive(Debug, Subcommand)]
enum Target {
    /// Load the embedder's Embed RPC.
    Embed(EmbedArgs),
    /// Load the indexer's Search RPC with text queries (embedded by the indexer's embedders).
    Search(SearchArgs),
    /// Ingest (UpsertBatch), Search and Ask at once, each an open loop at its own rate, over the
    /// same window; one report per workload.
    Mixed(MixedArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LoopKind {
    Closed,
    Open,
}

#[derive(Debug, Args)]
struct Common {
    #[arg(long, env = "RAGD_ENDPOINT", default_value = "http://127.0.0.1:50051")]
    endpoint: String,
    /// Concurrent clients (closed loop: each waits a refusal's retry hint before its next
    /// request) or most requests outstanding (open loop: requests keep their schedule).
    #[arg(long, default_value_t = 32)]
    clients: usize,
    #[arg(long, value_enum, default_value = "closed")]
    mode: LoopKind,
    /// Requests per second in total (open loop).
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// A stepped open-loop ramp `START:END:STEP` (requests per second): the rate starts at START
    /// and moves by STEP every `--step-secs` until END, held for one step; the measured window
    /// is the ramp's length (`--duration-secs` is ignored). The report's `series` shows each
    /// second: offered rate, answers, error codes, latency percentiles.
    #[arg(long, value_parser = parse_ramp)]
    ramp: Option<(f64, f64, f64)>,
    #[arg(long, default_value_t = 10.0)]
    step_secs: f64,
    #[arg(long, default_value_t = 20.0)]
    duration_secs: f64,
    #[arg(long, default_value_t = 3.0)]
    warmup_secs: f64,
    /// gRPC connections shared round-robin by the clients.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Per-request deadline in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    timeout_ms: u64,
    /// Tries of a request that fails with UNAVAILABLE or a transport error, as a well-behaved
    /// client of an idempotent RPC would (1 = no retry: every failure counts).
    #[arg(long, default_value_t = 1)]
    tries: u32,
    /// Draw the report into this directory (`<target>-latency`, `-throughput`, `-hdr`; `.svg`
    /// and `.png`).
    #[arg(long)]
    plot: Option<PathBuf>,
    #[command(flatten)]
    caller: ragd_core::security::CallerArgs,
}

#[derive(Debug, Args)]
struct EmbedArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long, default_value = "")]
    model: String,
    #[arg(long, default_value_t = 1)]
    texts_per_request: usize,
    /// Words per text (≈ 1.2 tokens per word).
    #[arg(long, default_value_t = 50)]
    words: usize,
}

#[derive(Debug, Args)]
struct SearchArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long)]
    collection: String,
    #[arg(long, default_value_t = 5)]
    k: u32,
    /// Words per query.
    #[arg(long, default_value_t = 8)]
    words: usize,
    /// Exact search instead of HNSW.
    #[arg(long)]
    exact: bool,
    /// HNSW `ef` of the searches (0: the collection's).
    #[arg(long, default_value_t = 0)]
    hnsw_ef: u32,
    /// Sweep these `hnsw_ef` values (comma-separated; 0 = exact search): for each, recall@k
    /// against exact search over `--recall-queries` queries, then a load run; reports and draws
    /// queries/s against recall (`<plot>/search-recall-qps`).
    #[arg(long, value_delimiter = ',')]
    sweep_ef: Vec<u32>,
    /// Queries of the recall measurement (the first of the load's 1024).
    #[arg(long, default_value_t = 100)]
    recall_queries: usize,
    /// Embed the query texts once with this embedder (its default model: the collection's when
    /// it was created with the default) and search with the vectors, so that the load measures
    /// the index rather than the indexer's query embedding.
    #[arg(long)]
    query_embedder: Option<String>,
}

#[derive(Debug, Args)]
struct MixedArgs {
    #[arg(long, default_value = "http://127.0.0.1:50052")]
    indexer: String,
    #[arg(long, default_value = "http://127.0.0.1:50053")]
    generator: String,
    /// The collection ingested into, searched and asked about (created when missing).
    #[arg(long)]
    collection: String,
    /// UpsertBatch calls per second (0: no ingest).
    #[arg(long, default_value_t = 2.0)]
    ingest_rate: f64,
    #[arg(long, default_value_t = 8)]
    docs_per_upsert: usize,
    /// Search calls per second (0: none).
    #[arg(long, default_value_t = 20.0)]
    search_rate: f64,
    /// Ask calls per second (0: none); each answer is read to its end.
    #[arg(long, default_value_t = 0.5)]
    ask_rate: f64,
    #[arg(long, default_value_t = 32)]
    ask_max_tokens: u32,
    /// Most requests outstanding, per workload.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    #[arg(long, default_value_t = 30.0)]
    duration_secs: f64,
    #[arg(long, default_value_t = 3.0)]
    warmup_secs: f64,
    /// Per-request deadline in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    timeout_ms: u64,
    /// Draw each workload's report into this directory (`mixed-<workload>-…`).
    #[arg(long)]
    plot: Option<PathBuf>,
    #[command(flatten)]
    caller: ragd_core::security::CallerArgs,
}

/// `START:END:STEP`, each a positive number of requests per second (STEP non-zero).
fn parse_ramp(s: &str) -> Result<(f64, f64, f64), String> {
    let parts: Vec<f64> = s
        .split(':')
        .map(|p| p.trim().parse::<f64>().map_err(|e| format!("{p:?}: {e}")))
        .collect::<Result<_, _>>()?;
    match parts[..] {
        [start, end, step] if start > 0.0 && end > 0.0 && step != 0.0 && (end - start) * step >= 0.0 => {
            Ok((start, end, step))
        }
        _ => Err(format!("{s:?}: want START:END:STEP, rates > 0, STEP non-zero and towards END")),
    }
}

impl Common {
    fn load_config(&self) -> LoadConfig {
        let mode = match (self.ramp, self.mode) {
            (Some((start, end, step)), _) => Mode::Ramp { start, end, step, step_secs: self.step_secs },
            (None, LoopKind::Closed) => Mode::Closed,
            (None, LoopKind::Open) => Mode::Open { rate: self.rate },
        };
        LoadConfig {
            clients: self.clients,
            mode,
            duration: mode.ramp_duration().unwrap_or(Duration::from_secs_f64(self.duration_secs)),
            warmup: Duration::from_secs_f64(self.warmup_secs),
        }
    }

    async fn channels(&self) -> anyhow::Result<Vec<Upstream>> {
        channels(&self.endpoint, &self.caller, self.connections).await
    }
}

/// `n` connections to `endpoint`, with the caller's TLS (https:// endpoints) and credential.
async fn channels(
    endpoint: &str,
    caller: &ragd_core::security::CallerArgs,
    n: usize,
) -> anyhow::Result<Vec<Upstream>> {
    let security = caller.security()?;
    let mut channels = Vec::new();
    for _ in 0..n.max(1) {
        let ch = ragd_core::client::connect_with(endpoint, security.tls.clone()).await?;
        channels.push(Upstream::fixed_with(ch, security.clone()));
    }
    Ok(channels)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let report = match Cli::parse().target {
        Target::Embed(args) => {
            let report = embed(&args).await?;
            plot(args.common.plot.as_deref(), "embed", &report)?;
            serde_json::to_value(report)?
        }
        Target::Search(args) if !args.sweep_ef.is_empty() => sweep(&args).await?,
        Target::Search(args) => {
            let queries = Arc::new(queries(&args, 1024).await?);
            let report = search(&args, args.hnsw_ef, args.exact, args.common.load_config(), queries).await?;
            plot(args.common.plot.as_deref(), "search", &report)?;
            serde_json::to_value(report)?
        }
        Target::Mixed(args) => mixed(&args).await?,
    };
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

/// Draws `report` into `dir` (when given) and says on stderr what it wrote.
fn plot(dir: Option<&Path>, name: &str, report: &LoadReport) -> anyhow::Result<()> {
    let Some(dir) = dir else { return Ok(()) };
    std::fs::create_dir_all(dir)?;
    for f in report_charts(dir, name, report)? {
        eprintln!("loadgen: wrote {}", f.display());
    }
    Ok(())
}

fn indexer_clients(channels: Vec<Upstream>) -> Vec<v1::indexer_client::IndexerClient<Upstream>> {
    channels
        .into_iter()
        .map(|ch| {
            v1::indexer_client::IndexerClient::new(ch)
                .max_decoding_message_size(DEFAULT_MAX_MESSAGE_BYTES)
                .max_encoding_message_size(DEFAULT_MAX_MESSAGE_BYTES)
        })
        .collect()
}

fn search_request(
    collection: &str,
    query: v1::Query,
    k: u32,
    hnsw_ef: u32,
    exact: bool,
) -> v1::SearchRequest {
    v1::SearchRequest {
        collection: collection.to_string(),
        queries: vec![query],
        k,
        exact,
        hnsw_ef,
        ..Default::default()
    }
}

/// `n` of loadgen's query texts: as text, or as vectors embedded once by `--query-embedder`.
async fn queries(args: &SearchArgs, n: usize) -> anyhow::Result<Vec<v1::Query>> {
    let texts = sample_texts(n, args.words);
    let Some(url) = &args.query_embedder else {
        return Ok(texts.into_iter().map(|t| v1::Query { query: Some(v1::query::Query::Text(t)) }).collect());
    };
    let channel = channels(url, &args.common.caller, 1).await?.remove(0);
    let mut embedder = EmbedderClient::new(channel).max_decoding_message_size(DEFAULT_MAX_MESSAGE_BYTES);
    let mut out = Vec::with_capacity(n);
    for batch in texts.chunks(64) {
        let r = embedder.embed(v1::EmbedRequest { texts: batch.to_vec(), ..Default::default() }).await?;
        out.extend(
            r.into_inner().embeddings.into_iter().map(|e| v1::Query {
                query: Some(v1::query::Query::Vector(v1::Vector { values: e.values })),
            }),
        );
    }
    Ok(out)
}

async fn search(
    args: &SearchArgs,
    hnsw_ef: u32,
    exact: bool,
    config: LoadConfig,
    queries: Arc<Vec<v1::Query>>,
) -> anyhow::Result<LoadReport> {
    let c = &args.common;
    let clients = indexer_clients(c.channels().await?);
    let (collection, k, timeout, tries) =
        (args.collection.clone(), args.k, Duration::from_millis(c.timeout_ms), c.tries);
    Ok(run(&config, move |i| {
        let client = clients[i as usize % clients.len()].clone();
        let search =
            search_request(&collection, queries[i as usize % queries.len()].clone(), k, hnsw_ef, exact);
        async move {
            let r = call(tries, timeout, search, |request| {
                let mut client = client.clone();
                async move { client.search(request).await }
            })
            .await?;
            Ok(r.into_inner().results.iter().map(|q| q.hits.len() as u64).sum())
        }
    })
    .await)
}

/// The (doc, chunk) ids of one query's hits.
async fn hit_ids(
    client: &mut v1::indexer_client::IndexerClient<Upstream>,
    request: v1::SearchRequest,
) -> anyhow::Result<Vec<(String, u32)>> {
    let r = client.search(request).await?.into_inner();
    Ok(r.results.into_iter().flat_map(|q| q.hits).map(|h| (h.doc_id, h.chunk)).collect())
}

/// `search --sweep-ef`: for each `hnsw_ef`, recall@k against exact search on the first
/// `--recall-queries` queries (the load's own queries), then a load run at that `ef`.
async fn sweep(args: &SearchArgs) -> anyhow::Result<serde_json::Value> {
    let c = &args.common;
    let mut client = indexer_clients(c.channels().await?).remove(0);
    let load_queries = Arc::new(queries(args, 1024).await?);
    let queries = load_queries[..args.recall_queries.clamp(1, 1024)].to_vec();
    let mut truth = Vec::new();
    for q in &queries {
        truth.push(hit_ids(&mut client, search_request(&args.collection, q.clone(), args.k, 0, true)).await?);
    }
    let (mut points, mut reports) = (Vec::new(), BTreeMap::new());
    for &ef in &args.sweep_ef {
        let exact = ef == 0;
        let mut found = 0usize;
        let mut wanted = 0usize;
        for (q, t) in queries.iter().zip(&truth) {
            let hits =
                hit_ids(&mut client, search_request(&args.collection, q.clone(), args.k, ef, exact)).await?;
            found += hits.iter().filter(|h| t.contains(h)).count();
            wanted += t.len();
        }
        let recall = if wanted == 0 { 1.0 } else { found as f64 / wanted as f64 };
        let report = search(args, ef, exact, c.load_config(), load_queries.clone()).await?;
        eprintln!(
            "loadgen: hnsw_ef {ef}: recall@{} {recall:.4}, {:.1} queries/s",
            args.k, report.requests_per_sec
        );
        points.push(SweepPoint {
            hnsw_ef: ef,
            recall,
            queries_per_sec: report.requests_per_sec,
            p99_ms: report.latency.p99_ms,
        });
        reports.insert(if exact { "exact".to_string() } else { format!("ef={ef}") }, report);
    }
    if let Some(dir) = c.plot.as_deref() {
        std::fs::create_dir_all(dir)?;
        for f in sweep_chart(dir, "search", args.k, &points)? {
            eprintln!("loadgen: wrote {}", f.display());
        }
    }
    Ok(serde_json::json!({ "k": args.k, "points": points, "reports": reports }))
}

async fn embed(args: &EmbedArgs) -> anyhow::Result<LoadReport> {
    let c = &args.common;
    let clients: Vec<_> = c
        .channels()
        .await?
        .into_iter()
        .map(|ch| {
            EmbedderClient::new(ch)
                .max_decoding_message_size(DEFAULT_MAX_MESSAGE_BYTES)
                .max_encoding_message_size(DEFAULT_MAX_MESSAGE_BYTES)
        })
        .collect();
    let texts = Arc::new(sample_texts(1024, args.words));
    let (model, per_request, timeout, tries) =
        (args.model.clone(), args.texts_per_request, Duration::from_millis(c.timeout_ms), c.tries);
    Ok(run(&c.load_config(), move |i| {
        let client = clients[i as usize % clients.len()].clone();
        let batch: Vec<String> =
            (0..per_request).map(|k| texts[(i as usize * per_request + k) % texts.len()].clone()).collect();
        let model = model.clone();
        async move {
            let embed = v1::EmbedRequest { texts: batch, model, ..Default::default() };
            let r = call(tries, timeout, embed, |request| {
                let mut client = client.clone();
                async move { client.embed(request).await }
            })
            .await?;
            Ok(r.into_inner().embeddings.len() as u64)
        }
    })
    .await)
}

/// `mixed`: ingest, search and ask as three open loops over the same window.
async fn mixed(args: &MixedArgs) -> anyhow::Result<serde_json::Value> {
    let config = |rate: f64| LoadConfig {
        clients: args.clients,
        mode: Mode::Open { rate },
        duration: Duration::from_secs_f64(args.duration_secs),
        warmup: Duration::from_secs_f64(args.warmup_secs),
    };
    let timeout = Duration::from_millis(args.timeout_ms);
    let indexers = indexer_clients(channels(&args.indexer, &args.caller, 4).await?);
    let mut admin = indexers[0].clone();
    let create = v1::CreateCollectionRequest { name: args.collection.clone(), ..Default::default() };
    match admin.create_collection(create).await {
        Ok(_) => {}
        Err(s) if s.code() == tonic::Code::AlreadyExists => {}
        Err(s) => return Err(s.into()),
    }
    let texts = Arc::new(sample_texts(4096, 40));
    let questions = Arc::new(sample_texts(512, 8));

    let ingest = {
        let (clients, texts, collection, per) =
            (indexers.clone(), texts.clone(), args.collection.clone(), args.docs_per_upsert.max(1));
        move |i: u64| {
            let mut client = clients[i as usize % clients.len()].clone();
            let documents = (0..per)
                .map(|k| v1::Document {
                    id: format!("loadgen-{i}-{k}"),
                    text: texts[(i as usize * per + k) % texts.len()].clone(),
                    metadata: None,
                    vector: Vec::new(),
                })
                .collect();
            let mut request =
                tonic::Request::new(v1::UpsertRequest { collection: collection.clone(), documents });
            request.set_timeout(timeout);
            async move {
                let r = client.upsert_batch(request).await?.into_inner();
                Ok(r.chunks as u64)
            }
        }
    };
    let search = {
        let (clients, questions, collection) = (indexers.clone(), questions.clone(), args.collection.clone());
        move |i: u64| {
            let mut client = clients[i as usize % clients.len()].clone();
            let mut request = tonic::Request::new(search_request(
                &collection,
                v1::Query {
                    query: Some(v1::query::Query::Text(questions[i as usize % questions.len()].clone())),
                },
                5,
                0,
                false,
            ));
            request.set_timeout(timeout);
            async move {
                Ok(client
                    .search(request)
                    .await?
                    .into_inner()
                    .results
                    .iter()
                    .map(|q| q.hits.len() as u64)
                    .sum())
            }
        }
    };
    let generators: Vec<_> = channels(&args.generator, &args.caller, 2)
        .await?
        .into_iter()
        .map(|ch| {
            v1::generator_client::GeneratorClient::new(ch)
                .max_decoding_message_size(DEFAULT_MAX_MESSAGE_BYTES)
        })
        .collect();
    let ask = {
        let (questions, collection, max_tokens) =
            (questions.clone(), args.collection.clone(), args.ask_max_tokens);
        move |i: u64| {
            let mut client = generators[i as usize % generators.len()].clone();
            let mut request = tonic::Request::new(v1::AskRequest {
                question: questions[i as usize % questions.len()].clone(),
                collection: collection.clone(),
                k: 3,
                sampling: Some(v1::Sampling { max_tokens, ..Default::default() }),
                ..Default::default()
            });
            request.set_timeout(timeout);
            async move {
                // Read the answer to its end: an Ask is done when its stream is.
                let mut stream = client.ask(request).await?.into_inner();
                let mut pieces = 0;
                while let Some(m) = stream.message().await? {
                    if matches!(m.event, Some(v1::ask_response::Event::Delta(_))) {
                        pieces += 1;
                    }
                }
                Ok(pieces)
            }
        }
    };
    let when = |rate: f64| rate > 0.0;
    let (ingest, search, ask) = tokio::join!(
        async {
            if when(args.ingest_rate) { Some(run(&config(args.ingest_rate), ingest).await) } else { None }
        },
        async {
            if when(args.search_rate) { Some(run(&config(args.search_rate), search).await) } else { None }
        },
        async { if when(args.ask_rate) { Some(run(&config(args.ask_rate), ask).await) } else { None } },
    );
    let mut reports = BTreeMap::new();
    for (name, report) in [("ingest", ingest), ("search", search), ("ask", ask)] {
        if let Some(report) = report {
            plot(args.plot.as_deref(), &format!("mixed-{name}"), &report)?;
            reports.insert(name, report);
        }
    }
    Ok(serde_json::to_value(reports)?)
}

/// One request of an idempotent RPC under the per-request deadline (`--timeout-ms`, sent as
/// `grpc-timeout`), tried up to `--tries` times while it fails with UNAVAILABLE or a transport
/// error; each try carries what is left of the deadline.
async fn call<M, T, F, Fut>(tries: u32, timeout: Duration, message: M, mut rpc: F) -> Result<T, tonic::Status>
where
    M: Clone,
    F: FnMut(tonic::Request<M>) -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let deadline = std::time::Instant::now() + timeout;
    ragd_core::client::retry_unavailable(tries, Some(deadline), || {
        let mut request = tonic::Request::new(message.clone());
        request.set_timeout(deadline.saturating_duration_since(std::time::Instant::now()));
        rpc(request)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::parse_ramp;

    #[test]
    fn ramps_parse_and_bad_ones_say_why() {
        assert_eq!(parse_ramp("20:200:20"), Ok((20.0, 200.0, 20.0)));
        assert_eq!(parse_ramp("200:50:-50"), Ok((200.0, 50.0, -50.0)));
        for bad in ["20:200", "20:200:0", "0:10:1", "20:200:-5", "a:1:1"] {
            assert!(parse_ramp(bad).is_err(), "{bad}");
        }
    }
}
