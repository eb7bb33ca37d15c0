//! `loadgen`: gRPC load generator for ragd services. Prints a JSON report (throughput, HDR
//! latency percentiles, errors by status code).
//!
//!   loadgen embed --endpoint http://127.0.0.1:50051 --clients 32 --duration-secs 20
//!   loadgen embed --mode open --rate 200 --clients 64 --texts-per-request 4
//!   loadgen embed --ramp 20:200:20 --step-secs 10 --clients 256   # stepped open-loop ramp
//!   loadgen search --endpoint http://127.0.0.1:50052 --collection docs --k 5 --clients 8

use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use ragd_bench::{LoadConfig, Mode, run, sample_texts};
use ragd_core::config::DEFAULT_MAX_MESSAGE_BYTES;
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
    /// Concurrent clients (closed loop) or most requests outstanding (open loop).
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

    /// `--connections` connections, with the caller's TLS (https:// endpoints) and credential.
    async fn channels(&self) -> anyhow::Result<Vec<ragd_core::upstream::Upstream>> {
        let security = self.caller.security()?;
        let mut channels = Vec::new();
        for _ in 0..self.connections.max(1) {
            let ch = ragd_core::client::connect_with(&self.endpoint, security.tls.clone()).await?;
            channels.push(ragd_core::upstream::Upstream::fixed_with(ch, security.clone()));
        }
        Ok(channels)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let report = match Cli::parse().target {
        Target::Embed(args) => embed(args).await?,
        Target::Search(args) => search(args).await?,
    };
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

async fn search(args: SearchArgs) -> anyhow::Result<ragd_bench::LoadReport> {
    let c = &args.common;
    let clients: Vec<_> = c
        .channels()
        .await?
        .into_iter()
        .map(|ch| {
            v1::indexer_client::IndexerClient::new(ch).max_decoding_message_size(DEFAULT_MAX_MESSAGE_BYTES)
        })
        .collect();
    let queries = std::sync::Arc::new(sample_texts(1024, args.words));
    let (collection, k, exact, timeout, tries) =
        (args.collection.clone(), args.k, args.exact, Duration::from_millis(c.timeout_ms), c.tries);
    Ok(run(&c.load_config(), move |i| {
        let client = clients[i as usize % clients.len()].clone();
        let query = queries[i as usize % queries.len()].clone();
        let collection = collection.clone();
        async move {
            let search = v1::SearchRequest {
                collection,
                queries: vec![v1::Query { query: Some(v1::query::Query::Text(query)) }],
                k,
                exact,
                ..Default::default()
            };
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

async fn embed(args: EmbedArgs) -> anyhow::Result<ragd_bench::LoadReport> {
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
    let texts = std::sync::Arc::new(sample_texts(1024, args.words));
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
