//! Prometheus metrics of the embedder: batch sizes (observable dynamic batching), queue depth,
//! inference time, dropped work. Requests per RPC and status are counted by the RPC layer every
//! ragd server shares (`ragd_embedder_rpc_requests`, `ragd_core::metrics::RpcMetrics`).

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// All embedder metrics; cheap to update from any thread.
#[derive(Debug)]
pub struct EmbedderMetrics {
    pub batches: Counter,
    pub batch_texts: Histogram,
    pub batch_padded_tokens: Histogram,
    pub inference_seconds: Histogram,
    pub texts: Counter,
    pub queue_texts: Gauge,
    pub overloaded: Counter,
    pub deadline_dropped: Counter,
    pub cancelled_dropped: Counter,
}

impl Default for EmbedderMetrics {
    fn default() -> Self {
        Self {
            batches: Counter::default(),
            batch_texts: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            batch_padded_tokens: Histogram::new(exponential_buckets(16.0, 2.0, 14)),
            inference_seconds: latency_histogram(),
            texts: Counter::default(),
            queue_texts: Gauge::default(),
            overloaded: Counter::default(),
            deadline_dropped: Counter::default(),
            cancelled_dropped: Counter::default(),
        }
    }
}

impl EmbedderMetrics {
    /// Registers every metric under the `ragd_embedder_` prefix.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("ragd_embedder");
        r.register("batches", "inference batches run", self.batches.clone());
        r.register("batch_texts", "texts per inference batch", self.batch_texts.clone());
        r.register(
            "batch_padded_tokens",
            "tokens per batch, padding included",
            self.batch_padded_tokens.clone(),
        );
        r.register("inference_seconds", "model run time per batch", self.inference_seconds.clone());
        r.register("texts", "texts embedded", self.texts.clone());
        r.register("queue_texts", "texts admitted and not yet answered", self.queue_texts.clone());
        r.register("overloaded", "requests rejected with RESOURCE_EXHAUSTED", self.overloaded.clone());
        r.register(
            "deadline_dropped",
            "jobs dropped in the queue after their deadline",
            self.deadline_dropped.clone(),
        );
        r.register(
            "cancelled_dropped",
            "jobs dropped in the queue after the caller left",
            self.cancelled_dropped.clone(),
        );
    }

    pub fn observe_batch(&self, texts: usize, padded_tokens: usize, took: Duration) {
        self.batches.inc();
        self.batch_texts.observe(texts as f64);
        self.batch_padded_tokens.observe(padded_tokens as f64);
        self.inference_seconds.observe(took.as_secs_f64());
        self.texts.inc_by(texts as u64);
    }

    /// Number of batches run so far.
    pub fn batches_total(&self) -> u64 {
        self.batches.get()
    }
}
