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

use ragd_core::health::Readiness;
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
) -> Result<(), EmbedError> {
    let security = ragd_core::security::ServerSecurity::start(&config.security, "embedder")
        .map_err(|e| EmbedError::Runtime(e.to_string()))?;
    let metrics = Arc::new(EmbedderMetrics::default());
    let mut registry = ragd_core::metrics::Registry::default();
    metrics.register(&mut registry);
    security.register(&mut registry, "ragd_embedder");
    let (readiness, health) = Readiness::new(EMBEDDER).await;
    let slot = Arc::new(OnceLock::new());
    let max = config.grpc.max_message_bytes;
    let service = EmbedderServer::new(EmbedderGrpc::new(slot.clone(), metrics.clone(), config.stream_window))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let local = listener.local_addr().map_err(|e| EmbedError::Runtime(e.to_string()))?;
    let stop = ragd_core::grpc::Stop::default();
    let mut server = ragd_core::grpc::spawn_server(
        health,
        service,
        &[ragd_proto::FILE_DESCRIPTOR_SET],
        listener,
        &stop,
        // Its own EmbedderMetrics count and time every RPC.
        None,
        &security,
    )
    .map_err(|e| EmbedError::Runtime(format!("reflection: {e}")))?;
    if let Some(addr) = config.metrics_addr {
        ragd_core::metrics::spawn(addr, registry, &stop, &security)
            .await
            .map_err(|e| EmbedError::Runtime(format!("metrics listener {addr}: {e}")))?;
    }
    tracing::info!(addr = %local, "embedder listening; loading models");

    let load_config = config.clone();
    let load_metrics = metrics.clone();
    let load = tokio::task::spawn_blocking(move || Embedder::start(&load_config, load_metrics));
    tokio::pin!(shutdown);
    let embedder = tokio::select! {
        loaded = load => match loaded {
            Ok(Ok(e)) => Arc::new(e),
            Ok(Err(e)) => { stop.trigger(); return Err(e) }
            Err(e) => { stop.trigger(); return Err(EmbedError::Runtime(format!("model loading panicked: {e}"))) }
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
    .map_err(EmbedError::Runtime)?;

    let grace = Duration::from_secs(config.grpc.shutdown_grace_secs);
    let early = ragd_core::grpc::run_until_shutdown(server, shutdown, &readiness, &stop, grace, registration)
        .await
        .map(EmbedError::Runtime);
    let e = embedder.clone();
    let _ = tokio::task::spawn_blocking(move || e.shutdown()).await;
    tracing::info!("embedder stopped");
    early.map_or(Ok(()), Err)
}

fn server_ended(r: Result<Result<(), tonic::transport::Error>, tokio::task::JoinError>) -> EmbedError {
    match r {
        Ok(Ok(())) => EmbedError::Runtime("grpc server stopped unexpectedly".into()),
        Ok(Err(e)) => EmbedError::Runtime(format!("grpc server: {e}")),
        Err(e) => EmbedError::Runtime(format!("grpc server task: {e}")),
    }
}
