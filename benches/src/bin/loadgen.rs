//! `loadgen`: gRPC load generator for ragd services. Prints a JSON report (throughput, HDR
//! latency percentiles, errors by status code).
//!
//!   loadgen embed --endpoint http://127.0.0.1:50051 --clients 32 --duration-secs 20
//!   loadgen embed --mode open --rate 200 --clients 64 --texts-per-request 4

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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Target::Embed(args) = Cli::parse().target;
    let c = &args.common;
    let mut clients = Vec::new();
    for _ in 0..c.connections.max(1) {
        let channel = ragd_core::client::connect(&c.endpoint).await?;
        clients.push(
            EmbedderClient::new(channel)
                .max_decoding_message_size(DEFAULT_MAX_MESSAGE_BYTES)
                .max_encoding_message_size(DEFAULT_MAX_MESSAGE_BYTES),
        );
    }
    let texts = std::sync::Arc::new(sample_texts(1024, args.words));
    let (model, per_request, timeout) =
        (args.model.clone(), args.texts_per_request, Duration::from_millis(c.timeout_ms));
    let config = LoadConfig {
        clients: c.clients,
        mode: match c.mode {
            LoopKind::Closed => Mode::Closed,
            LoopKind::Open => Mode::Open { rate: c.rate },
        },
        duration: Duration::from_secs_f64(c.duration_secs),
        warmup: Duration::from_secs_f64(c.warmup_secs),
    };
    let report = run(&config, move |i| {
        let mut client = clients[i as usize % clients.len()].clone();
        let batch: Vec<String> =
            (0..per_request).map(|k| texts[(i as usize * per_request + k) % texts.len()].clone()).collect();
        let model = model.clone();
        async move {
            let mut request =
                tonic::Request::new(v1::EmbedRequest { texts: batch, model, ..Default::default() });
            request.set_timeout(timeout);
            let r = client.embed(request).await?;
            Ok(r.into_inner().embeddings.len() as u64)
        }
    })
    .await;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
