//! Embedder configuration: one typed struct, every field a `--flag` and a `RAGD_*` variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::Args;
use ragd_core::config::GrpcConfig;

use crate::error::EmbedError;

/// Default ONNX Runtime library and models, as written by `scripts/setup` into `.ragd/`.
pub const DEFAULT_ORT_LIBRARY: &str = ".ragd/lib/libonnxruntime.so.1.31.1";
pub const DEFAULT_MODELS_DIR: &str = ".ragd/models";

/// Where inference runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Cpu,
    /// ONNX Runtime's CUDA execution provider on this GPU ordinal (cargo feature `cuda`).
    Cuda(i32),
}

impl FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse::<i32>().ok())
                .filter(|n| *n >= 0)
                .map(Device::Cuda)
                .ok_or_else(|| format!("unknown device {s:?}: expected cpu, cuda or cuda:N")),
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// Configuration of `ragd serve embedder`.
#[derive(Debug, Clone, Args)]
pub struct EmbedderConfig {
    /// Directory holding manifest.json and the exported models (written by scripts/setup).
    #[arg(long, env = "RAGD_MODELS_DIR", default_value = DEFAULT_MODELS_DIR)]
    pub models_dir: PathBuf,
    /// Serve only these models (comma-separated names); default: every model in the manifest.
    #[arg(long, env = "RAGD_MODELS", value_delimiter = ',')]
    pub models: Vec<String>,
    /// ONNX Runtime shared library (libonnxruntime.so.1.31.1), loaded explicitly at start.
    #[arg(long, env = "RAGD_ORT_LIBRARY", default_value = DEFAULT_ORT_LIBRARY)]
    pub ort_library: PathBuf,
    /// Execution device: cpu, cuda or cuda:N (cuda needs a build with `--features cuda`).
    #[arg(long, env = "RAGD_DEVICE", default_value = "cpu")]
    pub device: Device,
    /// Inference worker threads, each with its own ONNX Runtime session per model.
    #[arg(long, env = "RAGD_WORKERS", default_value_t = 1)]
    pub workers: usize,
    /// ONNX Runtime intra-op threads per worker (0 = one per core).
    #[arg(long, env = "RAGD_INTRA_THREADS", default_value_t = 0)]
    pub intra_threads: usize,
    /// Token budget of one batch, counted with padding (texts x longest text). Default: 1024 on
    /// cpu, 16384 on cuda. On a CPU a batch runs fastest while its activations stay in cache: in
    /// the sweep in docs/benchmarks.md 1024-token batches beat 16384-token ones by 4-21 % (the
    /// more, the longer the texts); a GPU wants large batches.
    #[arg(long, env = "RAGD_MAX_BATCH_TOKENS")]
    pub max_batch_tokens: Option<usize>,
    /// Most texts in one batch.
    #[arg(long, env = "RAGD_MAX_BATCH_TEXTS", default_value_t = 64)]
    pub max_batch_texts: usize,
    /// How long a batch that is not full may wait for more texts after its oldest text arrived,
    /// in microseconds. 0 (default) is continuous batching: an idle worker runs what is queued at
    /// once, a busy one coalesces everything that queued meanwhile.
    #[arg(long, env = "RAGD_MAX_BATCH_WAIT_US", default_value_t = 0)]
    pub max_batch_wait_us: u64,
    /// Queue capacity in texts; beyond it requests get RESOURCE_EXHAUSTED with a retry hint.
    #[arg(long, env = "RAGD_MAX_QUEUE_TEXTS", default_value_t = 8192)]
    pub max_queue_texts: usize,
    /// Longest expected queue wait of an Embed call, in milliseconds: a call that would wait
    /// longer (the texts admitted ahead of it ÷ the measured inference rate) is refused at once
    /// with RESOURCE_EXHAUSTED and a retry hint, as is one that could not finish before its
    /// deadline. 0: off (only the queue's size bounds it). Streams wait for capacity instead.
    /// Per model it is at least one full batch's measured inference time (a slower model's
    /// batch is work ahead of every request; a smaller bound would admit only into an idle
    /// queue).
    #[arg(long, env = "RAGD_MAX_QUEUE_WAIT_MS", default_value_t = 250)]
    pub max_queue_wait_ms: u64,
    /// Most texts in one request (INVALID_ARGUMENT beyond it).
    #[arg(long, env = "RAGD_MAX_TEXTS_PER_REQUEST", default_value_t = 2048)]
    pub max_texts_per_request: usize,
    /// Longest text in bytes (INVALID_ARGUMENT beyond it).
    #[arg(long, env = "RAGD_MAX_TEXT_BYTES", default_value_t = 1 << 20)]
    pub max_text_bytes: usize,
    /// Requests of one EmbedStream call processed concurrently (the flow-control window).
    #[arg(long, env = "RAGD_STREAM_WINDOW", default_value_t = 8)]
    pub stream_window: usize,
    /// Serve Prometheus metrics on this address (GET /metrics).
    #[arg(long, env = "RAGD_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    #[command(flatten)]
    pub grpc: GrpcConfig,
    #[command(flatten)]
    pub discovery: ragd_core::discovery::DiscoveryConfig,
    #[command(flatten)]
    pub security: ragd_core::security::SecurityConfig,
}

impl Default for EmbedderConfig {
    /// The clap attributes' defaults (one place for each): see `ragd_core::config::clap_defaults`.
    fn default() -> Self {
        ragd_core::config::clap_defaults()
    }
}

/// The padded-token budget of one batch where `--max-batch-tokens` is not given.
pub fn default_batch_tokens(device: Device) -> usize {
    match device {
        Device::Cpu => 1024,
        Device::Cuda(_) => 16384,
    }
}

impl EmbedderConfig {
    /// The padded-token budget of one batch: the configured one, or the device's default.
    pub fn batch_tokens(&self) -> usize {
        self.max_batch_tokens.unwrap_or_else(|| default_batch_tokens(self.device))
    }

    pub fn max_batch_wait(&self) -> Duration {
        Duration::from_micros(self.max_batch_wait_us)
    }

    /// Checks the limits against each other; `max_seq_len` is the longest model input.
    pub fn validate(&self, max_seq_len: usize) -> Result<(), EmbedError> {
        let bad = |field, reason: String| Err(EmbedError::invalid(field, reason));
        if self.workers == 0 {
            return bad("workers", "must be at least 1".into());
        }
        if self.max_batch_texts == 0 || self.stream_window == 0 {
            return bad("max_batch_texts/stream_window", "must be at least 1".into());
        }
        if self.batch_tokens() < max_seq_len {
            return bad(
                "max_batch_tokens",
                format!("{} cannot hold one text of max_seq_len {max_seq_len}", self.batch_tokens()),
            );
        }
        if self.max_texts_per_request == 0 || self.max_texts_per_request > self.max_queue_texts {
            return bad(
                "max_texts_per_request",
                format!("must be between 1 and max_queue_texts ({})", self.max_queue_texts),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        config: EmbedderConfig,
    }

    /// Every field, not a subset: `ragd serve` with no flags (and no RAGD_* variable set) gets
    /// exactly `Default`, and the defaults validate.
    #[test]
    fn default_is_what_the_cli_gives_field_for_field() {
        let parsed = Cli::try_parse_from(["serve"]).expect("defaults parse").config;
        assert_eq!(format!("{:#?}", EmbedderConfig::default()), format!("{parsed:#?}"));
    }

    #[test]
    fn defaults_parse_and_match_default_impl() {
        let cli = Cli::try_parse_from(["embedder"]).expect("defaults parse");
        let d = EmbedderConfig::default();
        assert_eq!(cli.config.max_batch_tokens, d.max_batch_tokens);
        assert_eq!(cli.config.max_queue_texts, d.max_queue_texts);
        assert_eq!(cli.config.device, Device::Cpu);
        assert_eq!(cli.config.grpc.max_message_bytes, d.grpc.max_message_bytes);
        cli.config.validate(512).expect("defaults are consistent");
    }

    #[test]
    fn batch_budget_defaults_by_device_unless_given() {
        let cpu = EmbedderConfig::default();
        assert_eq!(cpu.batch_tokens(), 1024);
        let gpu = EmbedderConfig { device: Device::Cuda(0), ..Default::default() };
        assert_eq!(gpu.batch_tokens(), 16384);
        let cli = Cli::try_parse_from(["embedder", "--max-batch-tokens", "4096", "--device", "cuda:1"])
            .expect("flags parse");
        assert_eq!(cli.config.batch_tokens(), 4096);
    }

    #[test]
    fn devices_parse() {
        assert_eq!("cpu".parse(), Ok(Device::Cpu));
        assert_eq!("cuda".parse(), Ok(Device::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(Device::Cuda(3)));
        assert!("cuda:-1".parse::<Device>().is_err());
        assert!("tpu".parse::<Device>().is_err());
    }

    #[test]
    fn inconsistent_limits_are_rejected() {
        let c = EmbedderConfig { max_batch_tokens: Some(100), ..Default::default() };
        assert!(c.validate(256).is_err());
        let c = EmbedderConfig { max_texts_per_request: 10, max_queue_texts: 5, ..Default::default() };
        assert!(c.validate(256).is_err());
    }
}
