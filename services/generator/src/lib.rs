//! ragd-generator: grounded answers streamed over gRPC.
//!
//! Request path: gRPC ([`grpc`]) → [`service::Generator`] (validate, admit into a backend's
//! generation slots, retrieve through the indexer, fit a numbered [`prompt`] to the context
//! window, stream) → [`backend`] (one `LanguageModel` trait: llama.cpp in-process, or any
//! OpenAI-compatible server). [`error`] maps every failure to one gRPC status.

pub mod backend;
pub mod config;
pub mod error;
pub mod grpc;
pub mod metrics;
pub mod prompt;
pub mod retriever;
pub mod service;

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

pub use ragd_core::startup::StartupError;
use ragd_proto::service_names::GENERATOR;
use ragd_proto::v1::generator_server::GeneratorServer;
use ragd_proto::v1::indexer_client::IndexerClient;
use tokio::net::TcpListener;

pub use config::{GeneratorConfig, NoContextPolicy};
pub use error::GenError;
pub use service::Generator;

use crate::backend::LanguageModel;
use crate::backend::llama::{LlamaBackend, LlamaSettings};
use crate::backend::openai::{OpenAiBackend, OpenAiSettings};
use crate::grpc::GeneratorGrpc;
use crate::metrics::GeneratorMetrics;
use crate::service::GeneratorLimits;

/// Loads the configured backends: the embedded model (unless `llm_model` is empty) and the
/// OpenAI-compatible server (if `openai_url` is set).
pub fn load_backends(config: &GeneratorConfig) -> Result<Vec<Arc<dyn LanguageModel>>, GenError> {
    let mut backends: Vec<Arc<dyn LanguageModel>> = Vec::new();
    if !config.llm_model.as_os_str().is_empty() {
        backends.push(Arc::new(LlamaBackend::load(&LlamaSettings {
            name: config.llm_name.clone(),
            model_path: config.llm_model.clone(),
            context: config.llm_context,
            parallel: config.llm_parallel,
            threads: config.llm_threads(),
            batch: config.llm_batch,
        })?));
    }
    if let Some(url) = &config.openai_url {
        backends.push(Arc::new(OpenAiBackend::new(OpenAiSettings {
            name: config.openai_name.clone(),
            base_url: url.clone(),
            api_key: config.openai_api_key.clone(),
            model: config.openai_model.clone(),
            context_window: config.openai_context,
            max_concurrent: config.openai_concurrency,
            tokenizer: config.openai_tokenizer.clone(),
            connect_timeout: Duration::from_secs(5),
        })?));
    }
    Ok(backends)
}

/// Loads the backends (off the async workers) and builds the generator over them and the
/// indexer channel.
async fn open(
    config: &GeneratorConfig,
    discovery_metrics: ragd_core::discovery::DiscoveryMetrics,
    upstream_security: &ragd_core::security::ClientSecurity,
    metrics: Arc<GeneratorMetrics>,
) -> Result<Generator, StartupError> {
    let load_config = config.clone();
    let backends = tokio::task::spawn_blocking(move || load_backends(&load_config))
        .await
        .map_err(|e| StartupError::new("loading models", format!("panicked: {e}")))?
        .map_err(StartupError::of("loading models"))?;
    let channel = ragd_core::discovery::upstream(
        &config.indexer_url,
        &config.discovery.etcd,
        "indexer",
        Some(discovery_metrics),
        upstream_security,
    )
    .map_err(StartupError::of("--indexer-url"))?;
    let max = config.grpc.max_message_bytes;
    let retriever: Arc<dyn retriever::Retriever> = Arc::new(retriever::GrpcRetriever::new(
        IndexerClient::new(channel).max_decoding_message_size(max).max_encoding_message_size(max),
    ));
    let limits = GeneratorLimits {
        default_k: config.default_k,
        max_k: config.max_k,
        default_max_tokens: config.default_max_tokens,
        max_tokens_limit: config.max_tokens_limit,
        queue: config.generation_queue,
        max_queue_wait: ragd_core::admission::bound_from_ms(config.max_queue_wait_ms),
        no_context: config.no_context,
        no_context_answer: config.no_context_answer.clone(),
    };
    Generator::new(backends, &config.default_backend, retriever, config.template(), limits, metrics)
        .map_err(StartupError::of("backends"))
}

/// Runs the generator on `listener` until `shutdown` resolves.
///
/// NOT_SERVING while the models load, SERVING after. On shutdown: NOT_SERVING, then tonic
/// drains in-flight streams for up to the grace period.
pub async fn serve(
    config: GeneratorConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), StartupError> {
    let metrics = Arc::new(GeneratorMetrics::default());
    let slot = Arc::new(OnceLock::new());
    let max = config.grpc.max_message_bytes;
    let service = GeneratorServer::new(GeneratorGrpc::new(slot.clone()))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let security = ragd_core::security::ServerSecurity::start(&config.security, "generator")
        .map_err(StartupError::of("security"))?;
    let upstream_security = ragd_core::security::ClientSecurity::start(&config.security.upstream)
        .map_err(StartupError::of("upstream security"))?;
    let mut registry = ragd_core::metrics::Registry::default();
    security.register(&mut registry, "ragd_generator");
    metrics.register(&mut registry);
    let discovery_metrics = ragd_core::discovery::DiscoveryMetrics::register(&mut registry);
    let ragd_core::grpc::Host { server, readiness, stop, local } = ragd_core::grpc::host(
        GENERATOR,
        service,
        &[ragd_proto::FILE_DESCRIPTOR_SET],
        listener,
        &security,
        "ragd_generator",
        registry,
        config.metrics_addr,
    )
    .await?;
    tracing::info!(addr = %local, indexer = %config.indexer_url, "generator listening; loading models");

    let loaded = open(&config, discovery_metrics, &upstream_security, metrics).await;
    let generator = match loaded {
        Ok(g) => Arc::new(g),
        Err(e) => {
            stop.trigger();
            return Err(e);
        }
    };
    let backends: Vec<String> =
        generator.backends().map(|(b, ..)| format!("{}:{}", b.name, b.model)).collect();
    let _ = slot.set(generator);
    let meta = serde_json::json!({ "backends": backends });
    let registration = ragd_core::grpc::go_live(
        &readiness,
        &stop,
        &config.discovery,
        "generator",
        security.scheme(),
        local,
        meta,
    )
    .await
    .map_err(StartupError::of("discovery"))?;

    let grace = Duration::from_secs(config.grpc.shutdown_grace_secs);
    let early = ragd_core::grpc::run_until_shutdown(server, shutdown, &readiness, &stop, grace, registration)
        .await
        .map(StartupError::of("grpc server"));
    tracing::info!("generator stopped");
    early.map_or(Ok(()), Err)
}
