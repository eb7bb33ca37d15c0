//! The generator's error type and its one exhaustive mapping to gRPC statuses.

use std::time::Duration;

use tonic::Status;

#[derive(Debug, thiserror::Error)]
pub enum GenError {
    /// The request is malformed; `field` names the offending request field.
    #[error("invalid {field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    #[error("backend {0:?} not found")]
    BackendNotFound(String),
    /// Every generation slot is busy and the queue is full.
    #[error("{0}")]
    Overloaded(String, Duration),
    #[error("deadline exceeded {0}")]
    DeadlineExceeded(&'static str),
    /// The indexer refused or failed; its status (code, details, retry hints) is kept.
    #[error("indexer: {0}")]
    Indexer(Status),
    /// A remote language model refused or failed, already mapped to the closest code.
    #[error("language model: {0}")]
    Remote(Status),
    #[error("generator is shutting down")]
    ShuttingDown,
    /// The language model failed (llama.cpp error, malformed server response).
    #[error("language model: {0}")]
    Model(String),
}

impl GenError {
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidArgument { field, reason: reason.into() }
    }
}

impl From<GenError> for Status {
    fn from(e: GenError) -> Self {
        let message = ragd_core::status::bound(e.to_string());
        match e {
            GenError::InvalidArgument { field, reason } => ragd_core::status::invalid_argument(field, reason),
            GenError::BackendNotFound(_) => Status::not_found(message),
            GenError::Overloaded(m, retry) => ragd_core::status::resource_exhausted(m, retry),
            GenError::DeadlineExceeded(_) => Status::deadline_exceeded(message),
            GenError::Indexer(s) => ragd_core::status::with_context("indexer", &s),
            GenError::Remote(s) => ragd_core::status::with_context("language model", &s),
            GenError::ShuttingDown => Status::unavailable(message),
            GenError::Model(_) => Status::internal(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn every_variant_has_its_code() {
        let cases = [
            (GenError::invalid("question", "empty"), Code::InvalidArgument),
            (GenError::BackendNotFound("x".into()), Code::NotFound),
            (GenError::Overloaded("busy".into(), Duration::from_millis(5)), Code::ResourceExhausted),
            (GenError::DeadlineExceeded("while queued"), Code::DeadlineExceeded),
            (GenError::Indexer(Status::not_found("collection")), Code::NotFound),
            (GenError::Remote(Status::unauthenticated("key")), Code::Unauthenticated),
            (GenError::ShuttingDown, Code::Unavailable),
            (GenError::Model("decode".into()), Code::Internal),
        ];
        for (e, code) in cases {
            assert_eq!(Status::from(e).code(), code);
        }
    }

    #[test]
    fn overload_carries_a_retry_hint() {
        let s = Status::from(GenError::Overloaded("busy".into(), Duration::from_millis(250)));
        assert_eq!(ragd_core::status::retry_after(&s), Some(Duration::from_millis(250)));
    }
}
