//! The embedder's error type and its one exhaustive mapping to gRPC statuses.

use std::time::Duration;

use tonic::Status;

/// Everything that can go wrong in the embedder, from a bad request to a broken model file.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// The request is malformed; `field` names the offending request field.
    #[error("invalid {field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    #[error("model {name:?} is not served here; available models: {available}")]
    ModelNotFound { name: String, available: String },
    /// The queue is full; retry after `retry_after`.
    #[error("embedder overloaded: {queued} texts queued, limit {limit}; retry in {retry_after:?}")]
    Overloaded { queued: usize, limit: usize, retry_after: Duration },
    /// Admitted, the request would wait longer than the queue-wait bound or its deadline allows.
    #[error("embedder {refusal}; {queued} texts queued; retry in {retry_after:?}", retry_after = refusal.retry_after())]
    Refused { refusal: ragd_core::admission::Refusal, queued: usize },
    #[error("deadline exceeded while {0}")]
    DeadlineExceeded(&'static str),
    /// Models are still loading.
    #[error("embedder is not ready: models are loading")]
    NotReady,
    #[error("embedder is shutting down")]
    ShuttingDown,
    #[error("request cancelled by the client")]
    Cancelled,
    #[error("models manifest: {0}")]
    Manifest(String),
    #[error("onnx runtime: {0}")]
    Runtime(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The requested execution device cannot be used (no CUDA build, no driver, bad device id).
    #[error("device: {0}")]
    Device(String),
}

impl EmbedError {
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidArgument { field, reason: reason.into() }
    }
}

impl From<EmbedError> for Status {
    fn from(e: EmbedError) -> Self {
        let message = ragd_core::status::bound(e.to_string());
        match e {
            EmbedError::InvalidArgument { field, reason } => {
                ragd_core::status::invalid_argument(field, reason)
            }
            EmbedError::ModelNotFound { .. } => Status::not_found(message),
            EmbedError::Overloaded { retry_after, .. } => {
                ragd_core::status::resource_exhausted(message, retry_after)
            }
            EmbedError::Refused { refusal, .. } => {
                ragd_core::status::resource_exhausted(message, refusal.retry_after())
            }
            EmbedError::DeadlineExceeded(_) => Status::deadline_exceeded(message),
            EmbedError::NotReady | EmbedError::ShuttingDown => Status::unavailable(message),
            EmbedError::Cancelled => Status::cancelled(message),
            EmbedError::Manifest(_) | EmbedError::Device(_) => Status::failed_precondition(message),
            EmbedError::Runtime(_) | EmbedError::Tokenizer(_) => Status::internal(message),
        }
    }
}
