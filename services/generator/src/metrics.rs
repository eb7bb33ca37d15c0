//! Prometheus metrics of the generator: generation slots in use and queued per backend, tokens
//! generated, time to first token, decode speed, stage latencies. Requests per RPC and final
//! status are counted by the RPC layer every ragd server shares (`ragd_generator_rpc_requests`,
//! `ragd_core::metrics::RpcMetrics`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabels {
    pub backend: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    pub stage: &'static str,
}

fn seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 18))
}

fn tokens_per_second() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 14))
}

#[derive(Debug)]
pub struct GeneratorMetrics {
    pub active: Family<BackendLabels, Gauge>,
    pub queued: Family<BackendLabels, Gauge>,
    pub overloaded: Family<BackendLabels, Counter>,
    pub cancelled: Family<BackendLabels, Counter>,
    pub completion_tokens: Family<BackendLabels, Counter>,
    pub prompt_tokens: Family<BackendLabels, Counter>,
    pub time_to_first_token: Family<BackendLabels, Histogram, fn() -> Histogram>,
    pub decode_tokens_per_second: Family<BackendLabels, Histogram, fn() -> Histogram>,
    pub stage_seconds: Family<StageLabels, Histogram, fn() -> Histogram>,
}

impl Default for GeneratorMetrics {
    fn default() -> Self {
        Self {
            active: Family::default(),
            queued: Family::default(),
            overloaded: Family::default(),
            cancelled: Family::default(),
            completion_tokens: Family::default(),
            prompt_tokens: Family::default(),
            time_to_first_token: Family::new_with_constructor(seconds),
            decode_tokens_per_second: Family::new_with_constructor(tokens_per_second),
            stage_seconds: Family::new_with_constructor(seconds),
        }
    }
}

impl GeneratorMetrics {
    pub fn register(&self, r: &mut Registry) {
        let r = r.sub_registry_with_prefix("ragd_generator");
        r.register("active_sequences", "Generations running per backend", self.active.clone());
        r.register("queued_requests", "Requests waiting for a generation slot", self.queued.clone());
        r.register("overloaded", "Requests refused with RESOURCE_EXHAUSTED", self.overloaded.clone());
        r.register("cancelled", "Generations stopped because the client went away", self.cancelled.clone());
        r.register("completion_tokens", "Tokens generated", self.completion_tokens.clone());
        r.register("prompt_tokens", "Prompt tokens processed", self.prompt_tokens.clone());
        r.register(
            "time_to_first_token_seconds",
            "From request arrival to the first answer token",
            self.time_to_first_token.clone(),
        );
        r.register(
            "decode_tokens_per_second",
            "Decode speed of one generation",
            self.decode_tokens_per_second.clone(),
        );
        r.register("stage_seconds", "Time per Ask stage (embed, search, prompt)", self.stage_seconds.clone());
    }

    pub fn backend(name: &str) -> BackendLabels {
        BackendLabels { backend: name.to_string() }
    }
}
