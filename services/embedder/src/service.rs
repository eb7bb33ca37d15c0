//! The embedder domain: validates requests, admits them against the queue capacity, tokenises,
//! queues them for the batching workers and assembles the answers. gRPC handlers are thin
//! wrappers around [`Embedder`]; benches and in-process clients call it directly.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

use crate::batcher::{Backlog, BatchPolicy, Job, Lane, Queue, Workers};
use crate::config::{Device, EmbedderConfig};
use crate::error::EmbedError;
use crate::manifest::{Manifest, ModelSpec};
use crate::metrics::EmbedderMetrics;
use crate::model::{Backend, InputKind, TextModel, normalize};
use crate::ort_backend::{OrtBackend, environment};

/// A request to embed texts.
#[derive(Debug, Clone, Default)]
pub struct EmbedInput {
    pub texts: Vec<String>,
    /// Empty selects the default model.
    pub model: String,
    pub normalize: Option<bool>,
    pub kind: InputKind,
}

/// One text's vector.
#[derive(Debug, Clone)]
pub struct EmbeddingOut {
    pub values: Vec<f32>,
    pub tokens: usize,
    pub truncated: bool,
}

/// How a request was served (observable batching).
#[derive(Debug, Clone, Copy, Default)]
pub struct EmbedStats {
    pub queue: Duration,
    pub inference: Duration,
    pub batches: u32,
    pub max_batch_texts: u32,
    pub tokens: u64,
}

#[derive(Debug, Clone)]
pub struct EmbedOutput {
    pub model: String,
    pub dim: usize,
    pub embeddings: Vec<EmbeddingOut>,
    pub stats: EmbedStats,
}

/// Token counts of texts, before truncation.
#[derive(Debug, Clone)]
pub struct TokenCounts {
    pub tokens: Vec<usize>,
    pub max_seq_len: usize,
}

/// Token offsets of texts (special tokens excluded).
#[derive(Debug, Clone)]
pub struct TokenOffsets {
    pub offsets: Vec<Vec<(usize, usize)>>,
    pub max_seq_len: usize,
    pub special_tokens: usize,
}

/// Whether to reject or wait when the queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Unary calls: RESOURCE_EXHAUSTED with a retry hint.
    Reject,
    /// Streams: wait for capacity (backpressure), bounded by the deadline.
    Wait,
}

/// Limits checked before any work is done.
#[derive(Debug, Clone, Copy)]
struct Limits {
    max_texts_per_request: usize,
    max_text_bytes: usize,
    max_queue_texts: usize,
    /// The queue-wait bound of unary calls (None: latency-bounded admission is off).
    max_queue_wait: Option<Duration>,
}

/// The tokens of `texts` as admission guesses them before tokenising: ≈ 4 bytes per WordPiece
/// token of English, plus the special tokens, at most the model's `max_seq_len` each.
fn guess_tokens(texts: &[String], max_seq_len: usize) -> usize {
    texts.iter().map(|t| (t.len() / 4 + 3).min(max_seq_len.max(1))).sum()
}

/// Serves several named models through one queue and a pool of inference workers.
pub struct Embedder {
    models: Vec<Arc<TextModel>>,
    by_name: HashMap<String, usize>,
    default: usize,
    device: Device,
    queue: Arc<Queue>,
    admission: Arc<Semaphore>,
    /// Tokens (guessed from the texts' bytes) admitted and not yet answered, per lane and model.
    backlog: Arc<Backlog>,
    limits: Limits,
    metrics: Arc<EmbedderMetrics>,
    workers: Mutex<Workers>,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder")
            .field("models", &self.by_name.keys())
            .field("device", &self.device)
            .finish()
    }
}

impl Embedder {
    /// Loads the manifest, tokenizers and ONNX Runtime sessions and starts the workers.
    /// Blocking (seconds): call it from `spawn_blocking` on an async runtime.
    pub fn start(config: &EmbedderConfig, metrics: Arc<EmbedderMetrics>) -> Result<Self, EmbedError> {
        let manifest = Manifest::load(&config.models_dir)?.select(&config.models)?;
        let env = environment(&config.ort_library)?;
        let specs = manifest.models.clone();
        let (device, threads) = (config.device, config.intra_threads);
        Self::with_backends(config, manifest, metrics, move |_| {
            specs
                .iter()
                .map(|s| OrtBackend::new(&env, s, device, threads).map(|b| Box::new(b) as Box<dyn Backend>))
                .collect()
        })
    }

    /// Starts an embedder whose workers run the backends made by `factory` (one per model, in
    /// manifest order). [`Embedder::start`] passes ONNX Runtime sessions.
    pub fn with_backends<F>(
        config: &EmbedderConfig,
        manifest: Manifest,
        metrics: Arc<EmbedderMetrics>,
        factory: F,
    ) -> Result<Self, EmbedError>
    where
        F: Fn(usize) -> Result<Vec<Box<dyn Backend>>, EmbedError> + Send + Sync + 'static,
    {
        let max_seq = manifest.models.iter().map(|m| m.max_seq_len).max().unwrap_or(0);
        config.validate(max_seq)?;
        let models = manifest
            .models
            .iter()
            .cloned()
            .map(|spec| TextModel::load(spec).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        let by_name: HashMap<String, usize> =
            models.iter().enumerate().map(|(i, m)| (m.spec.name.clone(), i)).collect();
        let default = by_name.get(&manifest.default).copied().unwrap_or(0);
        let policy = BatchPolicy {
            max_tokens: config.batch_tokens(),
            max_texts: config.max_batch_texts,
            max_wait: config.max_batch_wait(),
        };
        let queue = Queue::new(models.len(), config.workers, policy, metrics.clone());
        let pad_ids = models.iter().map(|m| m.spec.pad_id).collect();
        let workers = Workers::start(&queue, config.workers, pad_ids, factory)?;
        tracing::info!(
            models = ?manifest.names(),
            device = %config.device,
            workers = config.workers,
            max_batch_tokens = config.batch_tokens(),
            max_batch_texts = config.max_batch_texts,
            "embedder models loaded"
        );
        Ok(Self {
            backlog: Arc::new(Backlog::new(models.len())),
            models,
            by_name,
            default,
            device: config.device,
            queue,
            admission: Arc::new(Semaphore::new(config.max_queue_texts)),
            limits: Limits {
                max_texts_per_request: config.max_texts_per_request,
                max_text_bytes: config.max_text_bytes,
                max_queue_texts: config.max_queue_texts,
                max_queue_wait: ragd_core::admission::bound_from_ms(config.max_queue_wait_ms),
            },
            metrics,
            workers: Mutex::new(workers),
        })
    }

    /// Stops accepting work, lets the workers finish what is queued and joins them. Blocking.
    pub fn shutdown(&self) {
        self.queue.close();
        if let Ok(mut w) = self.workers.lock() {
            w.join();
        }
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// Models in manifest order, with whether each is the default.
    pub fn models(&self) -> impl Iterator<Item = (&ModelSpec, bool)> {
        self.models.iter().enumerate().map(|(i, m)| (&m.spec, i == self.default))
    }

    /// The model selected by `name` (empty = default).
    pub fn model(&self, name: &str) -> Result<(&ModelSpec, bool), EmbedError> {
        let i = self.model_index(name)?;
        Ok((&self.models[i].spec, i == self.default))
    }

    fn model_index(&self, name: &str) -> Result<usize, EmbedError> {
        if name.is_empty() {
            return Ok(self.default);
        }
        self.by_name.get(name).copied().ok_or_else(|| EmbedError::ModelNotFound {
            name: name.to_string(),
            available: self.models.iter().map(|m| m.spec.name.as_str()).collect::<Vec<_>>().join(", "),
        })
    }

    fn check_texts(&self, texts: &[String]) -> Result<(), EmbedError> {
        if texts.is_empty() {
            return Err(EmbedError::invalid("texts", "must contain at least one text"));
        }
        if texts.len() > self.limits.max_texts_per_request {
            return Err(EmbedError::invalid(
                "texts",
                format!(
                    "{} texts exceed the limit of {} per request",
                    texts.len(),
                    self.limits.max_texts_per_request
                ),
            ));
        }
        if let Some((i, t)) = texts.iter().enumerate().find(|(_, t)| t.len() > self.limits.max_text_bytes) {
            return Err(EmbedError::invalid(
                "texts",
                format!(
                    "text {i} is {} bytes, above the limit of {} bytes",
                    t.len(),
                    self.limits.max_text_bytes
                ),
            ));
        }
        Ok(())
    }

    /// Admits `n` texts of about `tokens` tokens for `model` into `lane`.
    async fn admit(
        &self,
        n: usize,
        tokens: usize,
        (lane, model): (Lane, usize),
        admission: Admission,
        deadline: Option<Instant>,
    ) -> Result<QueueSlot, EmbedError> {
        let permit = match admission {
            Admission::Reject => {
                if let Some(bound) = self.limits.max_queue_wait {
                    // The batch running is work ahead of every request: a bound below one full
                    // batch of the model (mpnet's takes ≈ 0.9 s on 2 cores) would admit only into
                    // an idle queue — batches of one text, and callers spinning on refusals.
                    let bound = bound.max(self.queue.full_batch_time(model));
                    let estimate = self.queue.estimate(&self.backlog, lane, model, tokens);
                    if let Err(refusal) =
                        ragd_core::admission::decide(estimate, bound, deadline, Instant::now())
                    {
                        self.metrics.overloaded.inc();
                        let queued = self.limits.max_queue_texts - self.admission.available_permits();
                        return Err(EmbedError::Refused { refusal, queued });
                    }
                }
                self.admission.clone().try_acquire_many_owned(n as u32).map_err(|e| match e {
                    TryAcquireError::NoPermits => {
                        self.metrics.overloaded.inc();
                        let queued = self.limits.max_queue_texts - self.admission.available_permits();
                        EmbedError::Overloaded {
                            queued,
                            limit: self.limits.max_queue_texts,
                            retry_after: self.queue.retry_after(&self.backlog, model, tokens),
                        }
                    }
                    TryAcquireError::Closed => EmbedError::ShuttingDown,
                })?
            }
            Admission::Wait => {
                let acquire = self.admission.clone().acquire_many_owned(n as u32);
                until(deadline, acquire, "waiting for queue capacity")
                    .await?
                    .map_err(|_| EmbedError::ShuttingDown)?
            }
        };
        self.metrics.queue_texts.inc_by(n as i64);
        self.backlog.add(lane, model, tokens);
        Ok(QueueSlot {
            _permit: permit,
            n,
            tokens,
            lane,
            model,
            backlog: self.backlog.clone(),
            metrics: self.metrics.clone(),
        })
    }

    /// Embeds `input`. `deadline` is when the caller stops waiting; queued work past it is
    /// dropped and the answer is DEADLINE_EXCEEDED.
    pub async fn embed(
        &self,
        input: EmbedInput,
        deadline: Option<Instant>,
        admission: Admission,
    ) -> Result<EmbedOutput, EmbedError> {
        self.check_texts(&input.texts)?;
        let index = self.model_index(&input.model)?;
        if deadline.is_some_and(|d| d <= Instant::now()) {
            return Err(EmbedError::DeadlineExceeded("waiting to start"));
        }
        let lane = Lane::of(input.kind);
        let tokens = guess_tokens(&input.texts, self.models[index].spec.max_seq_len);
        let _slot = self.admit(input.texts.len(), tokens, (lane, index), admission, deadline).await?;
        let model = self.models[index].clone();
        let normalize_out = input.normalize.unwrap_or(model.spec.normalize);
        let (kind, texts) = (input.kind, input.texts);
        let tokenizer = model.clone();
        let tokenized = tokio::task::spawn_blocking(move || tokenizer.tokenize(&texts, kind))
            .await
            .map_err(|e| EmbedError::Tokenizer(format!("tokenizer task failed: {e}")))??;
        let meta: Vec<(usize, bool)> = tokenized.iter().map(|t| (t.ids.len(), t.truncated)).collect();
        let (job, rx) = Job::new(index, lane, tokenized, deadline);
        self.queue.submit(job)?;
        let out = until(deadline, rx, "waiting for inference")
            .await?
            .map_err(|_| EmbedError::Runtime("inference worker stopped".into()))??;
        let embeddings = out
            .vectors
            .into_iter()
            .zip(&meta)
            .map(|(mut values, &(tokens, truncated))| {
                if normalize_out {
                    normalize(&mut values);
                }
                EmbeddingOut { values, tokens, truncated }
            })
            .collect();
        Ok(EmbedOutput {
            model: model.spec.name.clone(),
            dim: model.spec.dim,
            embeddings,
            stats: EmbedStats {
                queue: out.queue,
                inference: out.inference,
                batches: out.batches,
                max_batch_texts: out.max_batch_texts,
                tokens: meta.iter().map(|m| m.0 as u64).sum(),
            },
        })
    }

    /// Counts tokens as Embed would see them, before truncation.
    pub async fn count_tokens(
        &self,
        texts: Vec<String>,
        model: &str,
        kind: InputKind,
    ) -> Result<TokenCounts, EmbedError> {
        self.check_texts(&texts)?;
        let model = self.models[self.model_index(model)?].clone();
        let max_seq_len = model.spec.max_seq_len;
        let tokens = tokio::task::spawn_blocking(move || model.count(&texts, kind))
            .await
            .map_err(|e| EmbedError::Tokenizer(format!("tokenizer task failed: {e}")))??;
        Ok(TokenCounts { tokens, max_seq_len })
    }

    /// Token byte offsets of each text, for token-window chunking.
    pub async fn tokenize(&self, texts: Vec<String>, model: &str) -> Result<TokenOffsets, EmbedError> {
        self.check_texts(&texts)?;
        let model = self.models[self.model_index(model)?].clone();
        let max_seq_len = model.spec.max_seq_len;
        let (offsets, special_tokens) = tokio::task::spawn_blocking(move || {
            Ok::<_, EmbedError>((model.offsets(&texts)?, model.special_tokens()?))
        })
        .await
        .map_err(|e| EmbedError::Tokenizer(format!("tokenizer task failed: {e}")))??;
        Ok(TokenOffsets { offsets, max_seq_len, special_tokens })
    }
}

/// Admission capacity held until the answer is built; keeps the queue gauge true.
struct QueueSlot {
    _permit: OwnedSemaphorePermit,
    n: usize,
    tokens: usize,
    lane: Lane,
    model: usize,
    backlog: Arc<Backlog>,
    metrics: Arc<EmbedderMetrics>,
}

impl Drop for QueueSlot {
    fn drop(&mut self) {
        self.backlog.sub(self.lane, self.model, self.tokens);
        self.metrics.queue_texts.dec_by(self.n as i64);
    }
}

/// Awaits `fut` until `deadline` (if any); DEADLINE_EXCEEDED naming `stage` after it.
async fn until<F: std::future::Future>(
    deadline: Option<Instant>,
    fut: F,
    stage: &'static str,
) -> Result<F::Output, EmbedError> {
    match deadline {
        Some(d) => {
            tokio::time::timeout_at(d.into(), fut).await.map_err(|_| EmbedError::DeadlineExceeded(stage))
        }
        None => Ok(fut.await),
    }
}
