//! ragd-embedder: text → vectors with sentence-transformers models run by ONNX Runtime.
//!
//! Request path: gRPC handler ([`grpc`]) → [`service::Embedder`] (validation, admission,
//! tokenisation) → [`batcher`] queue → inference worker threads (dynamic batching by token
//! budget) → [`ort_backend`] session → pooling/normalisation ([`model`]) → response.
//! [`serve`] wires it to a listener with health, reflection and metrics.

pub mod batcher;
pub mod config;
pub mod error;
pub mod grpc;
pub mod manifest;
pub mod metrics;
pub mod model;
pub mod ort_backend;
pub mod service;

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

pub use ragd_core::startup::StartupError;
use ragd_proto::service_names::EMBEDDER;
use ragd_proto::v1::embedder_server::EmbedderServer;
use tokio::net::TcpListener;

pub use config::EmbedderConfig;
pub use error::EmbedError;
pub use service::Embedder;

use crate::grpc::EmbedderGrpc;
use crate::metrics::EmbedderMetrics;

/// Runs the embedder on `listener` until `shutdown` resolves.
///
/// Health is NOT_SERVING while models load (RPCs answer UNAVAILABLE), SERVING once every worker
/// has its sessions, and NOT_SERVING again as soon as shutdown starts; then the server drains
/// in-flight requests (at most `shutdown_grace_secs`), the queue closes and workers are joined.
/// Returns an error if the models cannot be loaded or the server fails.
pub async fn serve(
    config: EmbedderConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), StartupError> {
    let security = ragd_core::security::ServerSecurity::start(&config.security, "embedder")
        .map_err(StartupError::of("security"))?;
    let metrics = Arc::new(EmbedderMetrics::default());
    let mut registry = ragd_core::metrics::Registry::default();
    metrics.register(&mut registry);
    security.register(&mut registry, "ragd_embedder");
    let slot = Arc::new(OnceLock::new());
    let max = config.grpc.max_message_bytes;
    let service = EmbedderServer::new(EmbedderGrpc::new(slot.clone(), config.stream_window))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let ragd_core::grpc::Host { mut server, readiness, stop, local } = ragd_core::grpc::host(
        EMBEDDER,
        service,
        &[ragd_proto::FILE_DESCRIPTOR_SET],
        listener,
        &security,
        "ragd_embedder",
        registry,
        config.metrics_addr,
    )
    .await?;
    tracing::info!(addr = %local, "embedder listening; loading models");

    let load_config = config.clone();
    let load_metrics = metrics.clone();
    let load = tokio::task::spawn_blocking(move || Embedder::start(&load_config, load_metrics));
    tokio::pin!(shutdown);
    let embedder = tokio::select! {
        loaded = load => match loaded {
            Ok(Ok(e)) => Arc::new(e),
            Ok(Err(e)) => { stop.trigger(); return Err(StartupError::new("loading models", e)) }
            Err(e) => { stop.trigger(); return Err(StartupError::new("loading models", format!("panicked: {e}"))) }
        },
        () = &mut shutdown => { stop.trigger(); return Ok(()) }
        r = &mut server => return Err(server_ended(r)),
    };
    let _ = slot.set(embedder.clone());
    let models: Vec<String> = embedder.models().map(|(m, _)| m.name.clone()).collect();
    let meta = serde_json::json!({ "models": models });
    let registration = ragd_core::grpc::go_live(
        &readiness,
        &stop,
        &config.discovery,
        "embedder",
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
    let e = embedder.clone();
    let _ = tokio::task::spawn_blocking(move || e.shutdown()).await;
    tracing::info!("embedder stopped");
    early.map_or(Ok(()), Err)
}

fn server_ended(r: Result<Result<(), tonic::transport::Error>, tokio::task::JoinError>) -> StartupError {
    match r {
        Ok(Ok(())) => StartupError::new("grpc server", "stopped unexpectedly"),
        Ok(Err(e)) => StartupError::new("grpc server", e),
        Err(e) => StartupError::new("grpc server task", e),
    }
}
