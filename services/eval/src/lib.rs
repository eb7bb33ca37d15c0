//! Evaluation for `ragd eval`: BEIR-format retrieval datasets and TREC run files ([`beir`]),
//! trec_eval's measures with pytrec_eval's semantics ([`metrics`]), sentence/document pairs
//! with human similarity scores ([`sts`]) and the correlations they are judged by ([`stats`]);
//! charts of the results as PNG and SVG ([`plot`]) and 2-D maps of embeddings ([`map`]).
//! The measures are checked against pytrec_eval and scipy in `tests/tests/it/eval.rs`.

use std::path::PathBuf;

pub mod beir;
pub mod map;
pub mod metrics;
pub mod plot;
pub mod stats;
pub mod sts;

/// A dataset file that cannot be read or parsed, named with the line.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}:{line}: {reason}")]
    Format { path: PathBuf, line: usize, reason: String },
}
