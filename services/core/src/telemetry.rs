//! Tracing initialisation, done once per process by the binary (not by libraries or tests).

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::config::LogConfig;

/// Installs the global `tracing` subscriber: level from `RUST_LOG` (default `info`), text or JSON
/// lines on stderr. A second call is a no-op (useful when tests start several services).
pub fn init(config: &LogConfig) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let result = if config.log_json {
        registry.with(fmt::layer().json().with_writer(std::io::stderr)).try_init()
    } else {
        registry.with(fmt::layer().with_writer(std::io::stderr)).try_init()
    };
    if result.is_err() {
        tracing::debug!("tracing subscriber already installed");
    }
}
