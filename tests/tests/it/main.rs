//! ragd's integration tests, one binary: real models, real gRPC over sockets, real processes
//! and containers. One binary instead of one per file, because each would link qdrant-edge,
//! llama.cpp and ONNX Runtime again. Run one group with a filter:
//! `cargo test --workspace --test it -- indexer_grpc::` (`--workspace`, so the
//! dependencies keep the features of the workspace build and are not compiled again).

mod cluster_process;
mod containers;
mod crash_checker;
mod embedder_fixture;
mod embedder_grpc;
mod embedder_process;
mod eval;
mod fuzz_replay;
mod generator_grpc;
mod generator_openai;
mod indexer_exact;
mod indexer_grpc;
mod indexer_process;
mod indexer_rerank;
mod indexer_retrieval;
mod indexer_vectors;
mod load_tools;
mod map;
mod security;
mod store_edge;
mod store_qdrant;
mod up_process;
