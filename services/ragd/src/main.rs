//! `ragd`: one binary for every ragd service and the client verbs.
//!
//! - `ragd serve embedder|indexer|generator` runs a service;
//! - `ragd embed`, `ragd models`, `ragd health`, `ragd collections`, `ragd ingest`,
//!   `ragd search`, `ragd ask`, `ragd generate`, `ragd backends` talk to running services over gRPC;
//! - `ragd key`, `ragd token` make API keys, signing keys and signed tokens;
//! - `ragd install-models` copies models between models directories (a container's init step).

mod auth_cli;
mod client;
mod eval_cli;
mod generator_cli;
mod indexer_cli;
mod map_cli;
mod models_cli;
mod up;

/// mimalloc: small, short-lived allocations (protobuf messages, HTTP/2 frames, payload maps) are
/// on every request's path. Against glibc malloc, in A/B runs of the indexer bench, it raised the
/// 8-client HNSW search throughput through gRPC from 0.57–0.60× to 0.71–0.74× of in-process
/// qdrant-edge, which barely moved. Qdrant ships jemalloc for the same reason.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ragd_core::config::LogConfig;
use ragd_embedder::EmbedderConfig;
use ragd_generator::GeneratorConfig;
use ragd_indexer::IndexerConfig;

#[derive(Debug, Parser)]
#[command(name = "ragd", version, about = "Distributed gRPC RAG and vector search")]
struct Cli {
    #[command(flatten)]
    log: LogConfig,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Embedder, indexer and generator in one process (embedded Qdrant engine and language
    /// model, no etcd), one loopback port each.
    Up(up::UpArgs),
    /// Run a service.
    Serve {
        /// Parse and check every flag and environment variable, print the result and exit
        /// without starting (files named by flags are opened at start-up, not here): what the
        /// Helm chart's tests run against the arguments they render.
        #[arg(long, global = true)]
        check_config: bool,
        #[command(subcommand)]
        service: Service,
    },
    /// Embed texts with a running embedder and print the vectors (JSON) or their similarities.
    Embed(client::EmbedArgs),
    /// List the models of a running embedder.
    Models(client::EndpointArgs),
    /// Check (or wait for) a service's gRPC health.
    Health(client::HealthArgs),
    /// Manage the indexer's collections.
    Collections {
        #[command(flatten)]
        endpoint: indexer_cli::IndexerEndpoint,
        #[command(subcommand)]
        command: indexer_cli::CollectionsCommand,
    },
    /// Snapshots of collections: create, list, restore (into a new name), delete.
    Snapshot {
        #[command(flatten)]
        endpoint: indexer_cli::IndexerEndpoint,
        #[command(subcommand)]
        command: indexer_cli::SnapshotCommand,
    },
    /// Load CSV, JSONL, text, markdown, PDF, .npy or .fvecs files into a collection.
    Ingest(indexer_cli::IngestArgs),
    /// Print a stored document: its chunks in order (text, metadata, vectors with --vectors).
    Get(indexer_cli::GetArgs),
    /// Search a collection with text queries.
    Search(indexer_cli::SearchArgs),
    /// Measure retrieval quality (`ragd eval retrieval DIR`: a BEIR-format dataset, every
    /// search mode, nDCG@10, recall, MRR, MAP and latency).
    Eval {
        #[command(subcommand)]
        command: eval_cli::EvalCommand,
    },
    /// Pictures of an embedding space: a similarity heatmap (PNG, SVG) and a 2-D PCA map (an
    /// HTML page, labels on hover, colours by a metadata key) of a collection or of texts.
    Map(map_cli::MapArgs),
    /// Ask a question about a collection: the grounded answer streams, then its citations.
    Ask(generator_cli::AskArgs),
    /// Generate text from a prompt (no retrieval).
    Generate(generator_cli::GenerateArgs),
    /// List the generator's language-model backends.
    Backends(generator_cli::GeneratorEndpoint),
    /// Copy embedding models (and other model directories) from one models directory to
    /// another, reading its manifest.json: a container's init step (see deploy/README.md).
    InstallModels(models_cli::InstallModelsArgs),
    /// Make API keys for the servers' --auth-keys-file.
    Key {
        #[command(subcommand)]
        command: auth_cli::KeyCommand,
    },
    /// Make signing keys and mint signed tokens (Ed25519 JWTs).
    Token {
        #[command(subcommand)]
        command: auth_cli::TokenCommand,
    },
}

#[derive(Debug, Subcommand)]
enum Service {
    /// Text → vectors with ONNX Runtime and dynamic batching.
    Embedder {
        /// gRPC listen address (port 0 picks a free port).
        #[arg(long, env = "RAGD_LISTEN", default_value = "127.0.0.1:50051")]
        listen: SocketAddr,
        #[command(flatten)]
        config: Box<EmbedderConfig>,
    },
    /// Collections of document chunks in Qdrant shards: ingest and search.
    Indexer {
        /// gRPC listen address (port 0 picks a free port).
        #[arg(long, env = "RAGD_LISTEN", default_value = "127.0.0.1:50052")]
        listen: SocketAddr,
        #[command(flatten)]
        config: Box<IndexerConfig>,
    },
    /// Retrieval, grounded prompts and streamed answers (llama.cpp in-process or an
    /// OpenAI-compatible server).
    Generator {
        /// gRPC listen address (port 0 picks a free port).
        #[arg(long, env = "RAGD_LISTEN", default_value = "127.0.0.1:50053")]
        listen: SocketAddr,
        #[command(flatten)]
        config: Box<GeneratorConfig>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let service = service_name(&cli.command);
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| {
            rt.block_on(async {
                // Inside the runtime: the OTLP exporter's gRPC channel needs it, also to flush.
                let telemetry = ragd_core::telemetry::init(&cli.log, service);
                let result = run(cli.command).await;
                let _ = tokio::task::spawn_blocking(move || drop(telemetry)).await;
                result
            })
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ragd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `service.name` of this process's traces.
fn service_name(command: &Command) -> &'static str {
    match command {
        Command::Serve { service: Service::Embedder { .. }, .. } => "ragd-embedder",
        Command::Serve { service: Service::Indexer { .. }, .. } => "ragd-indexer",
        Command::Serve { service: Service::Generator { .. }, .. } => "ragd-generator",
        Command::Up(_) => "ragd",
        _ => ragd_core::telemetry::CLI_SERVICE,
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve { check_config: true, service } => {
            println!("{}", check_config(&service));
            Ok(())
        }
        Command::Serve { service: Service::Embedder { listen, config }, .. } => {
            ragd_embedder::serve(*config, bind(listen, "embedder").await?, ragd_core::shutdown::signal())
                .await?;
            Ok(())
        }
        Command::Serve { service: Service::Indexer { listen, config }, .. } => {
            ragd_indexer::serve(*config, bind(listen, "indexer").await?, ragd_core::shutdown::signal())
                .await?;
            Ok(())
        }
        Command::Serve { service: Service::Generator { listen, config }, .. } => {
            ragd_generator::serve(*config, bind(listen, "generator").await?, ragd_core::shutdown::signal())
                .await?;
            Ok(())
        }
        Command::Up(args) => up::up(args).await,
        Command::Ask(args) => generator_cli::ask(args).await,
        Command::Generate(args) => generator_cli::generate(args).await,
        Command::Backends(endpoint) => generator_cli::backends(endpoint).await,
        Command::Embed(args) => client::embed(args).await,
        Command::Models(args) => client::models(args).await,
        Command::Health(args) => client::health(args).await,
        Command::Collections { endpoint, command } => indexer_cli::collections(endpoint, command).await,
        Command::Snapshot { endpoint, command } => indexer_cli::snapshots(endpoint, command).await,
        Command::Ingest(args) => indexer_cli::ingest(args).await,
        Command::Get(args) => indexer_cli::get(args).await,
        Command::Search(args) => indexer_cli::search(args).await,
        Command::Eval { command } => eval_cli::eval(command).await,
        Command::Map(args) => map_cli::map(args).await,
        Command::InstallModels(args) => models_cli::install(args),
        Command::Key { command } => auth_cli::key(command),
        Command::Token { command } => auth_cli::token(command),
    }
}

/// `ragd serve <role> … --check-config`: the configuration clap accepted, one line.
fn check_config(service: &Service) -> String {
    let (role, listen) = match service {
        Service::Embedder { listen, .. } => ("embedder", listen),
        Service::Indexer { listen, .. } => ("indexer", listen),
        Service::Generator { listen, .. } => ("generator", listen),
    };
    format!("ragd serve {role}: configuration accepted (listen {listen}); files are checked at start-up")
}

/// Binds a listener (the caller reports its address).
async fn bind_quiet(listen: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))
}

/// Binds a service's listener and prints `RAGD_LISTENING <service> <addr>` (machine-readable for
/// scripts and tests that start ragd with port 0).
async fn bind(listen: SocketAddr, service: &str) -> anyhow::Result<tokio::net::TcpListener> {
    let listener =
        tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    println!("RAGD_LISTENING {service} {}", listener.local_addr()?);
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("ragd").chain(args.iter().copied()))
    }

    #[test]
    fn endpoint_flags_go_before_or_after_the_subcommand() {
        for args in [
            &["collections", "create", "docs", "--indexer", "http://10.0.0.1:1"][..],
            &["collections", "--indexer", "http://10.0.0.1:1", "create", "docs"][..],
        ] {
            let cli = parse(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            let Command::Collections { endpoint, command } = cli.command else { panic!("{args:?}") };
            assert_eq!(endpoint.indexer, "http://10.0.0.1:1", "{args:?}");
            assert!(
                matches!(command, indexer_cli::CollectionsCommand::Create { ref name, .. } if name == "docs")
            );
        }
        let cli = parse(&["collections", "list", "--etcd-endpoints", "127.0.0.1:2379", "--cluster", "c1"])
            .expect("etcd flags after the subcommand");
        let Command::Collections { endpoint, .. } = cli.command else { panic!() };
        assert_eq!((endpoint.discovery.etcd_endpoints.len(), endpoint.discovery.cluster.as_str()), (1, "c1"));
    }

    /// Client verbs show the flags they use, not a server's registration flags.
    #[test]
    fn client_verbs_do_not_list_server_only_flags() {
        let mut cmd = Cli::command();
        cmd.build();
        for verb in ["search", "ingest", "ask", "collections", "backends"] {
            let help = cmd.find_subcommand_mut(verb).expect(verb).render_long_help().to_string();
            for server_only in ["--lease-ttl-secs", "--advertise-addr"] {
                assert!(!help.contains(server_only), "`ragd {verb} --help` lists {server_only}");
            }
            assert!(help.contains("--etcd-endpoints"), "`ragd {verb} --help` lacks --etcd-endpoints");
        }
        let serve = cmd.find_subcommand_mut("serve").expect("serve");
        let help = serve.find_subcommand_mut("indexer").expect("indexer").render_long_help().to_string();
        assert!(help.contains("--lease-ttl-secs") && help.contains("--advertise-addr"));
    }
}
