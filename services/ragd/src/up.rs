//! `ragd up`: the embedder, the indexer and the generator in one process — the embedded Qdrant
//! engine and the embedded language model, data in one directory, no etcd — each service on its
//! own loopback port (the same gRPC API as the separate services, so every client and CLI verb
//! works unchanged). Ctrl-C / SIGTERM stops them in dependency order: generator, indexer,
//! embedder, each draining its in-flight requests.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use ragd_embedder::EmbedderConfig;
use ragd_generator::GeneratorConfig;
use ragd_indexer::IndexerConfig;
use ragd_indexer::store::journal::Durability;
use tokio::sync::{mpsc, oneshot};

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Address the three services listen on.
    #[arg(long, env = "RAGD_HOST", default_value = "127.0.0.1")]
    host: IpAddr,
    /// Embedder port (0 = any free port; the chosen ports are printed as RAGD_LISTENING lines).
    #[arg(long, default_value_t = 50051)]
    embedder_port: u16,
    #[arg(long, default_value_t = 50052)]
    indexer_port: u16,
    #[arg(long, default_value_t = 50053)]
    generator_port: u16,
    /// Where the indexer keeps collections and shards.
    #[arg(long, env = "RAGD_DATA_DIR", default_value = ".ragd/data/up")]
    data_dir: PathBuf,
    /// When the indexer acknowledges a write: fsync (survives a power loss), page-cache
    /// (survives a crash of the process) or none (see `ragd serve indexer --help`).
    #[arg(long, env = "RAGD_DURABILITY", value_enum, default_value_t = Durability::Fsync)]
    durability: Durability,
    /// Embedding models: manifest.json and the exported models (scripts/setup).
    #[arg(long, env = "RAGD_MODELS_DIR", default_value = ragd_embedder::config::DEFAULT_MODELS_DIR)]
    models_dir: PathBuf,
    /// Serve only these embedding models (comma-separated); default: all in the manifest.
    #[arg(long, env = "RAGD_MODELS", value_delimiter = ',')]
    models: Vec<String>,
    #[arg(long, env = "RAGD_ORT_LIBRARY", default_value = ragd_embedder::config::DEFAULT_ORT_LIBRARY)]
    ort_library: PathBuf,
    /// The language model (GGUF).
    #[arg(long, env = "RAGD_LLM_MODEL", default_value = ragd_generator::config::DEFAULT_LLM_MODEL)]
    llm_model: PathBuf,
    /// Sequences the language model generates at the same time.
    #[arg(long, env = "RAGD_LLM_PARALLEL", default_value_t = 2)]
    llm_parallel: usize,
}

struct Running<E> {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), E>>,
}

impl<E: std::error::Error + Send + Sync + 'static> Running<E> {
    async fn stop(mut self, name: &str) -> anyhow::Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.task.await.with_context(|| format!("{name} task"))?.with_context(|| format!("{name} failed"))
    }
}

/// Runs a service; `exited` hears its name when it returns (early, it means it failed).
fn spawn<E, F>(
    name: &'static str,
    exited: &mpsc::UnboundedSender<&'static str>,
    serve: impl FnOnce(oneshot::Receiver<()>) -> F,
) -> Running<E>
where
    F: std::future::Future<Output = Result<(), E>> + Send + 'static,
    E: Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    let fut = serve(rx);
    let exited = exited.clone();
    let task = tokio::spawn(async move {
        let r = fut.await;
        let _ = exited.send(name);
        r
    });
    Running { stop: Some(tx), task }
}

async fn stopped(rx: oneshot::Receiver<()>) {
    let _ = rx.await;
}

pub async fn up(args: UpArgs) -> anyhow::Result<()> {
    let bind = |port| super::bind_quiet(SocketAddr::new(args.host, port));
    let (el, il, gl) =
        (bind(args.embedder_port).await?, bind(args.indexer_port).await?, bind(args.generator_port).await?);
    let url = |l: &tokio::net::TcpListener| l.local_addr().map(|a| format!("http://{a}"));
    let (embedder_url, indexer_url) = (url(&el)?, url(&il)?);
    for (name, l) in [("embedder", &el), ("indexer", &il), ("generator", &gl)] {
        println!("RAGD_LISTENING {name} {}", l.local_addr()?);
    }

    let embedder = EmbedderConfig {
        models_dir: args.models_dir,
        models: args.models,
        ort_library: args.ort_library,
        ..EmbedderConfig::default()
    };
    let indexer = IndexerConfig {
        data_dir: args.data_dir,
        durability: args.durability,
        embedder_url: embedder_url.clone(),
        ..IndexerConfig::default()
    };
    let generator = GeneratorConfig {
        indexer_url: indexer_url.clone(),
        llm_model: args.llm_model,
        llm_parallel: args.llm_parallel,
        ..GeneratorConfig::default()
    };
    tracing::info!(embedder = %embedder_url, indexer = %indexer_url, "ragd up: starting three services in one process");
    let (exited, mut exits) = mpsc::unbounded_channel();
    let e = spawn("embedder", &exited, |rx| ragd_embedder::serve(embedder, el, stopped(rx)));
    let i = spawn("indexer", &exited, |rx| ragd_indexer::serve(indexer, il, stopped(rx)));
    let g = spawn("generator", &exited, |rx| ragd_generator::serve(generator, gl, stopped(rx)));

    tokio::select! {
        () = ragd_core::shutdown::signal() => {}
        Some(name) = exits.recv() => tracing::error!(service = name, "a service stopped on its own; stopping the others"),
    }
    // Dependents first, so in-flight answers can still retrieve while they drain.
    let generator = g.stop("generator").await;
    let indexer = i.stop("indexer").await;
    let embedder = e.stop("embedder").await;
    generator.and(indexer).and(embedder)
}
