//! The indexer's error type and its one exhaustive mapping to gRPC statuses.

use tonic::Status;

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// The request is malformed; `field` names the offending request field.
    #[error("invalid {field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    /// The request is well-formed but the collection cannot serve it (a keyword search on a
    /// collection without a keyword index); `field` names the request field that asked.
    #[error("{field}: {reason}")]
    FailedPrecondition { field: &'static str, reason: String },
    #[error("collection {0:?} not found")]
    CollectionNotFound(String),
    #[error("collection {0:?} already exists")]
    CollectionExists(String),
    #[error("snapshot {name:?} of collection {collection:?} not found")]
    SnapshotNotFound { collection: String, name: String },
    #[error("snapshot {name:?} of collection {collection:?} already exists")]
    SnapshotExists { collection: String, name: String },
    #[error("document {doc_id:?} not found in collection {collection:?}")]
    DocumentNotFound { collection: String, doc_id: String },
    /// The embedder refused or failed; its status code is kept.
    #[error("embedder: {0}")]
    Embedder(Status),
    #[error("indexer is shutting down")]
    ShuttingDown,
    /// The caller's deadline passed while the call waited (for a collection's write gate).
    #[error("deadline exceeded: {0}")]
    DeadlineExceeded(String),
    /// The vector store failed (I/O, corrupted shard, remote Qdrant error).
    #[error("store: {0}")]
    Store(String),
    #[error("store unavailable: {0}")]
    StoreUnavailable(String),
    /// A Qdrant server refused or failed; its status code is kept.
    #[error("qdrant: {0}")]
    Remote(Status),
    /// Refused at admission: the search would wait longer than the bound or its deadline allows.
    #[error("indexer {0}")]
    Overloaded(ragd_core::admission::Refusal),
    /// The reranker of a `rerank` search failed.
    #[error("{0}")]
    Reranker(#[from] crate::rerank::RerankError),
}

impl IndexError {
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidArgument { field, reason: reason.into() }
    }

    pub fn failed_precondition(field: &'static str, reason: impl Into<String>) -> Self {
        Self::FailedPrecondition { field, reason: reason.into() }
    }
}

impl From<IndexError> for Status {
    fn from(e: IndexError) -> Self {
        let message = ragd_core::status::bound(e.to_string());
        match e {
            IndexError::InvalidArgument { field, reason } => {
                ragd_core::status::invalid_argument(field, reason)
            }
            IndexError::FailedPrecondition { .. } => Status::failed_precondition(message),
            IndexError::CollectionNotFound(_)
            | IndexError::DocumentNotFound { .. }
            | IndexError::SnapshotNotFound { .. } => Status::not_found(message),
            IndexError::CollectionExists(_) | IndexError::SnapshotExists { .. } => {
                Status::already_exists(message)
            }
            // Keep the embedder's code (RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED, UNAVAILABLE, ...),
            // its details and metadata (retry hints), and say where it came from.
            IndexError::Embedder(s) => ragd_core::status::with_context("embedder", &s),
            IndexError::Remote(s) => ragd_core::status::with_context("qdrant", &s),
            IndexError::ShuttingDown | IndexError::StoreUnavailable(_) => Status::unavailable(message),
            IndexError::DeadlineExceeded(_) => Status::deadline_exceeded(message),
            IndexError::Overloaded(r) => ragd_core::status::resource_exhausted(message, r.retry_after()),
            IndexError::Store(_) => Status::internal(message),
            IndexError::Reranker(r) => {
                use crate::rerank::RerankError;
                match r {
                    RerankError::Unavailable(_) | RerankError::BadResponse { .. } => {
                        Status::unavailable(message)
                    }
                    RerankError::Overloaded(_) => Status::resource_exhausted(message),
                    RerankError::Timeout(_) => Status::deadline_exceeded(message),
                    RerankError::Refused { .. } => Status::failed_precondition(message),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tonic::Code;

    use super::*;
    use crate::rerank::RerankError;

    /// What a client sees of an admission refusal: RESOURCE_EXHAUSTED with the hint in both
    /// forms (RetryInfo details and `retry-after-ms`): 900 ms expected, bound 250 ms → retry
    /// in 900 − 125 = 775 ms.
    #[test]
    fn an_admission_refusal_is_resource_exhausted_with_its_retry_hint() {
        let refusal = ragd_core::admission::Refusal::QueueWait {
            expected: Duration::from_millis(900),
            bound: Duration::from_millis(250),
        };
        let status = Status::from(IndexError::Overloaded(refusal));
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(ragd_core::status::retry_after(&status), Some(Duration::from_millis(775)));
        assert_eq!(status.metadata().get("retry-after-ms").and_then(|v| v.to_str().ok()), Some("775"));
    }

    #[test]
    fn snapshot_errors_are_not_found_and_already_exists() {
        let (c, n) = (String::from("c"), String::from("s"));
        let missing = Status::from(IndexError::SnapshotNotFound { collection: c.clone(), name: n.clone() });
        assert_eq!(missing.code(), Code::NotFound);
        assert!(missing.message().contains("\"s\"") && missing.message().contains("\"c\""));
        let taken = Status::from(IndexError::SnapshotExists { collection: c, name: n });
        assert_eq!(taken.code(), Code::AlreadyExists);
    }

    #[test]
    fn reranker_failures_keep_their_meaning() {
        let status = |e: RerankError| Status::from(IndexError::Reranker(e));
        assert_eq!(status(RerankError::Unavailable("refused".into())).code(), Code::Unavailable);
        assert_eq!(status(RerankError::Overloaded("full".into())).code(), Code::ResourceExhausted);
        assert_eq!(status(RerankError::Timeout(Duration::from_secs(1))).code(), Code::DeadlineExceeded);
        let refused = status(RerankError::Refused { status: 413, body: "too many texts".into() });
        assert_eq!(refused.code(), Code::FailedPrecondition);
        assert!(refused.message().contains("HTTP 413") && refused.message().contains("too many texts"));
        let bad = status(RerankError::BadResponse { api: "tei", reason: "not JSON".into() });
        assert_eq!(bad.code(), Code::Unavailable);
        assert!(bad.message().contains("tei"), "{}", bad.message());
    }
}
