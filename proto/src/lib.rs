//! The `ragd.v1` gRPC protocol shared by every ragd service and client.
//!
//! The `.proto` files under `proto/ragd/v1` are compiled once here (tonic-prost-build); services
//! and clients depend on this crate instead of compiling protos themselves. [`FILE_DESCRIPTOR_SET`]
//! is handed to gRPC reflection so tools such as grpcurl can discover the API.

pub mod json;

pub use prost;
pub use prost_types;
pub use tonic;

/// Generated types, clients (`*_client`) and servers (`*_server`) of package `ragd.v1`.
pub mod v1 {
    #![allow(missing_docs, missing_debug_implementations, clippy::all)]
    tonic::include_proto!("ragd.v1");
}

/// Encoded `FileDescriptorSet` of every `ragd.v1` proto, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("ragd_v1_descriptor");

/// Fully qualified gRPC service names, as used by health checking and reflection.
pub mod service_names {
    /// `ragd.v1.Embedder`.
    pub const EMBEDDER: &str = "ragd.v1.Embedder";
    /// `ragd.v1.Indexer`.
    pub const INDEXER: &str = "ragd.v1.Indexer";
    /// `ragd.v1.Generator`.
    pub const GENERATOR: &str = "ragd.v1.Generator";
}
