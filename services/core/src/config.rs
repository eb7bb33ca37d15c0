//! Config fragments shared by the services. Each service flattens them into its own clap config;
//! every field has a `RAGD_*` environment variable.

use clap::Args;

/// Default gRPC max message size (both directions): 64 MiB, enough for a batch of several thousand
/// 768-d vectors. Set explicitly on servers and clients; tonic's 4 MiB default is too small.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// gRPC server settings common to every service.
#[derive(Debug, Clone, Args)]
pub struct GrpcConfig {
    /// Max encoded gRPC message size accepted and sent, in bytes.
    #[arg(long, env = "RAGD_MAX_MESSAGE_BYTES", default_value_t = DEFAULT_MAX_MESSAGE_BYTES)]
    pub max_message_bytes: usize,
    /// How long a graceful shutdown waits for in-flight requests before closing connections.
    #[arg(long, env = "RAGD_SHUTDOWN_GRACE_SECS", default_value_t = 10)]
    pub shutdown_grace_secs: u64,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        Self { max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES, shutdown_grace_secs: 10 }
    }
}

/// Logging settings.
#[derive(Debug, Clone, Default, Args)]
pub struct LogConfig {
    /// Log as JSON lines instead of human-readable text. Filter with RUST_LOG.
    #[arg(long, env = "RAGD_LOG_JSON")]
    pub log_json: bool,
}
