//! The generator's domain logic: validate → admit (a bounded number of generations per backend
//! and a bounded queue) → retrieve through the indexer → fit a numbered prompt to the context
//! window → stream the backend's tokens → finish with citations, counts and timings.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ragd_proto::v1::{self, indexer_client::IndexerClient};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tracing::Instrument;

use crate::backend::text::cited_numbers;
use crate::backend::{
    BackendInfo, BackendStats, Event, Events, Finish, FinishReason, GenerationRequest, Input, LanguageModel,
    Sampling,
};
use crate::config::NoContextPolicy;
use crate::error::GenError;
use crate::metrics::{GeneratorMetrics, StageLabels};
use crate::prompt::{self, Chunk, PromptTemplate};

/// Request limits and defaults.
#[derive(Debug, Clone)]
pub struct GeneratorLimits {
    pub default_k: usize,
    pub max_k: usize,
    pub default_max_tokens: usize,
    pub max_tokens_limit: usize,
    pub queue: usize,
    pub no_context: NoContextPolicy,
    pub no_context_answer: String,
}

/// Sampling as requested (0 = default for max_tokens, 0 = off for top_p).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SamplingIn {
    pub temperature: f32,
    pub top_p: f32,
    pub max_tokens: usize,
    pub stop: Vec<String>,
    pub seed: Option<u64>,
}

#[derive(Debug, Clone, Default)]
pub struct AskIn {
    pub question: String,
    pub collection: String,
    pub k: usize,
    pub score_threshold: Option<f32>,
    pub filter: Option<v1::Filter>,
    pub sampling: SamplingIn,
    pub backend: String,
    pub no_context: Option<NoContextPolicy>,
}

/// A retrieved chunk; `number` is its `[n]` in the prompt, 0 if it did not fit.
#[derive(Debug, Clone)]
pub struct Retrieved {
    pub number: u32,
    pub chunk: Chunk,
    pub metadata: Option<prost_types::Struct>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Citation {
    pub number: u32,
    pub doc_id: String,
    pub chunk: u32,
    pub cited: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timings {
    pub embed: Duration,
    pub search: Duration,
    pub prompt: Duration,
    pub queue: Duration,
    pub time_to_first_token: Duration,
    pub decode: Duration,
    pub decode_tokens_per_second: f64,
    pub total: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DoneOut {
    /// None: the no-context path answered without the model.
    pub finish: Option<FinishReason>,
    pub citations: Vec<Citation>,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub timings: Timings,
    pub backend: String,
    pub model: String,
}

#[derive(Debug, Clone)]
pub enum AskEvent {
    Retrieval { passages: Vec<Retrieved>, no_context: bool },
    Delta(String),
    Done(DoneOut),
}

/// Events of one Ask or Generate; an `Err` ends the stream with that status.
pub type AskStream = mpsc::Receiver<Result<AskEvent, GenError>>;

/// Generation slots of one backend and the queue in front of them.
#[derive(Debug)]
struct Admission {
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
    max_waiting: usize,
}

/// Drops the waiting count however the wait ends (admitted, deadline, client gone).
struct Waiting<'a>(&'a AtomicUsize, &'a GeneratorMetrics, &'a str);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
        self.1.queued.get_or_create(&GeneratorMetrics::backend(self.2)).dec();
    }
}

#[derive(Debug)]
struct Backend {
    model: Arc<dyn LanguageModel>,
    admission: Admission,
}

/// A held generation slot; counted in `active_sequences` while alive.
struct Slot {
    _permit: OwnedSemaphorePermit,
    metrics: Arc<GeneratorMetrics>,
    backend: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.metrics.active.get_or_create(&GeneratorMetrics::backend(&self.backend)).dec();
    }
}

#[derive(Debug)]
pub struct Generator {
    backends: Vec<Backend>,
    default: usize,
    indexer: IndexerClient<ragd_core::upstream::Upstream>,
    template: PromptTemplate,
    limits: GeneratorLimits,
    metrics: Arc<GeneratorMetrics>,
}

impl Generator {
    /// `backends` in listing order; `default` names the default one (empty = the first).
    pub fn new(
        backends: Vec<Arc<dyn LanguageModel>>,
        default: &str,
        indexer: IndexerClient<ragd_core::upstream::Upstream>,
        template: PromptTemplate,
        limits: GeneratorLimits,
        metrics: Arc<GeneratorMetrics>,
    ) -> Result<Self, GenError> {
        template.validate()?;
        if backends.is_empty() {
            return Err(GenError::invalid(
                "backends",
                "configure the embedded model or an OpenAI-compatible server",
            ));
        }
        let default = if default.is_empty() {
            0
        } else {
            backends
                .iter()
                .position(|b| b.info().name == default)
                .ok_or_else(|| GenError::BackendNotFound(default.to_string()))?
        };
        let backends = backends
            .into_iter()
            .map(|model| {
                let n = model.info().max_concurrent.max(1);
                Backend {
                    model,
                    admission: Admission {
                        slots: Arc::new(Semaphore::new(n)),
                        waiting: AtomicUsize::new(0),
                        max_waiting: limits.queue,
                    },
                }
            })
            .collect();
        Ok(Self { backends, default, indexer, template, limits, metrics })
    }

    /// (info, live counters, requests queued, is default) of every backend.
    pub fn backends(&self) -> impl Iterator<Item = (&BackendInfo, &BackendStats, usize, bool)> {
        self.backends.iter().enumerate().map(|(i, b)| {
            (b.model.info(), b.model.stats(), b.admission.waiting.load(Ordering::SeqCst), i == self.default)
        })
    }

    fn backend(&self, name: &str) -> Result<&Backend, GenError> {
        if name.is_empty() {
            return Ok(&self.backends[self.default]);
        }
        self.backends
            .iter()
            .find(|b| b.model.info().name == name)
            .ok_or_else(|| GenError::BackendNotFound(name.to_string()))
    }

    fn sampling(&self, s: SamplingIn) -> Result<Sampling, GenError> {
        if !s.temperature.is_finite() || !(0.0..=10.0).contains(&s.temperature) {
            return Err(GenError::invalid("sampling.temperature", "must be in [0, 10]"));
        }
        if !s.top_p.is_finite() || !(0.0..=1.0).contains(&s.top_p) {
            return Err(GenError::invalid("sampling.top_p", "must be in [0, 1] (0 = off)"));
        }
        if s.max_tokens > self.limits.max_tokens_limit {
            return Err(GenError::invalid(
                "sampling.max_tokens",
                format!("must be at most {}", self.limits.max_tokens_limit),
            ));
        }
        if s.stop.len() > 16 || s.stop.iter().any(|x| x.is_empty() || x.len() > 256) {
            return Err(GenError::invalid(
                "sampling.stop",
                "at most 16 non-empty sequences of at most 256 bytes",
            ));
        }
        Ok(Sampling {
            temperature: s.temperature,
            top_p: if s.top_p == 0.0 { 1.0 } else { s.top_p },
            max_tokens: if s.max_tokens == 0 { self.limits.default_max_tokens } else { s.max_tokens },
            stop: s.stop,
            seed: s.seed,
        })
    }

    /// Waits for a generation slot of `backend`: RESOURCE_EXHAUSTED when the queue is full,
    /// DEADLINE_EXCEEDED when the deadline passes first.
    async fn admit(&self, backend: &Backend, deadline: Option<Instant>) -> Result<Slot, GenError> {
        let name = &backend.model.info().name;
        let labels = GeneratorMetrics::backend(name);
        let a = &backend.admission;
        let permit = match a.slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                if a.waiting.fetch_add(1, Ordering::SeqCst) >= a.max_waiting {
                    a.waiting.fetch_sub(1, Ordering::SeqCst);
                    self.metrics.overloaded.get_or_create(&labels).inc();
                    return Err(GenError::Overloaded(
                        format!(
                            "backend {name}: all {} generation slots busy and {} requests queued",
                            backend.model.info().max_concurrent,
                            a.max_waiting
                        ),
                        Duration::from_millis(500),
                    ));
                }
                self.metrics.queued.get_or_create(&labels).inc();
                let _waiting = Waiting(&a.waiting, &self.metrics, name);
                let acquire = a.slots.clone().acquire_owned();
                let permit = match deadline {
                    Some(d) => tokio::time::timeout_at(d.into(), acquire)
                        .await
                        .map_err(|_| GenError::DeadlineExceeded("while waiting for a generation slot"))?,
                    None => acquire.await,
                };
                permit.map_err(|_| GenError::ShuttingDown)?
            }
        };
        self.metrics.active.get_or_create(&labels).inc();
        Ok(Slot { _permit: permit, metrics: self.metrics.clone(), backend: name.clone() })
    }

    /// Retrieval-augmented answer; see `ragd.v1.Generator.Ask`. Errors before the first event
    /// (bad input, unknown collection/backend, overload) are returned here; later ones end the
    /// stream.
    pub async fn ask(&self, req: AskIn, deadline: Option<Instant>) -> Result<AskStream, GenError> {
        let arrived = Instant::now();
        let question = req.question.trim().to_string();
        if question.is_empty() {
            return Err(GenError::invalid("question", "must not be empty"));
        }
        if req.collection.is_empty() {
            return Err(GenError::invalid("collection", "must not be empty"));
        }
        let k = if req.k == 0 { self.limits.default_k } else { req.k };
        if k > self.limits.max_k {
            return Err(GenError::invalid("k", format!("must be at most {}", self.limits.max_k)));
        }
        let sampling = self.sampling(req.sampling)?;
        let backend = self.backend(&req.backend)?;
        let info = backend.model.info().clone();
        let slot = self.admit(backend, deadline).instrument(tracing::info_span!("queue_wait")).await?;
        let queue = arrived.elapsed();

        // Retrieval through the indexer (it embeds the question with the collection's model).
        let search = v1::SearchRequest {
            collection: req.collection.clone(),
            queries: vec![v1::Query { query: Some(v1::query::Query::Text(question.clone())) }],
            k: k as u32,
            score_threshold: req.score_threshold,
            filter: req.filter,
            exact: false,
            hnsw_ef: 0,
        };
        // Search is idempotent: retried while the indexer answers UNAVAILABLE.
        let retrieve = tracing::info_span!("retrieve", collection = %req.collection, k);
        let found = ragd_core::client::retry_unavailable(5, deadline, || {
            let mut r = tonic::Request::new(search.clone());
            ragd_core::telemetry::inject(&mut r);
            if let Some(d) = deadline {
                r.set_timeout(d.saturating_duration_since(Instant::now()));
            }
            let mut indexer = self.indexer.clone();
            async move { indexer.search(r).await }
        })
        .instrument(retrieve)
        .await
        .map_err(GenError::Indexer)?
        .into_inner();
        let stats = found.stats.unwrap_or_default();
        let hits = found.results.into_iter().next().map(|r| r.hits).unwrap_or_default();
        let mut timings = Timings {
            embed: Duration::from_micros(stats.embed_us),
            search: Duration::from_micros(stats.search_us),
            queue,
            ..Timings::default()
        };
        self.stage("embed", timings.embed);
        self.stage("search", timings.search);
        let chunks: Vec<Chunk> = hits
            .iter()
            .map(|h| Chunk { doc_id: h.doc_id.clone(), chunk: h.chunk, score: h.score, text: h.text.clone() })
            .collect();
        let no_context = chunks.is_empty();
        let policy = req.no_context.unwrap_or(self.limits.no_context);

        let (tx, rx) = mpsc::channel(64);
        if no_context && policy == NoContextPolicy::Refuse {
            drop(slot);
            timings.total = arrived.elapsed();
            let events = [
                AskEvent::Retrieval { passages: Vec::new(), no_context: true },
                AskEvent::Delta(self.limits.no_context_answer.clone()),
                AskEvent::Done(DoneOut {
                    finish: None,
                    citations: Vec::new(),
                    prompt_tokens: 0,
                    completion_tokens: 0,
                    timings,
                    backend: info.name.clone(),
                    model: info.model.clone(),
                }),
            ];
            for e in events {
                let _ = tx.try_send(Ok(e));
            }
            return Ok(rx);
        }

        let started = Instant::now();
        let model = backend.model.clone();
        let max_tokens = sampling.max_tokens;
        let (input, used) = if no_context {
            (self.template.render_no_context(&question), Vec::new())
        } else {
            let template = self.template.clone();
            let q = question.clone();
            let c = chunks.clone();
            let m = model.clone();
            let span = tracing::info_span!("prompt", chunks = c.len(), max_tokens);
            let fitted = tokio::task::spawn_blocking(move || {
                span.in_scope(|| prompt::fit(&template, &q, &c, m.as_ref(), max_tokens))
            })
            .await
            .map_err(|e| GenError::Model(format!("prompt task: {e}")))??;
            (fitted.input, fitted.used)
        };
        timings.prompt = started.elapsed();
        self.stage("prompt", timings.prompt);

        let mut numbers = vec![0u32; chunks.len()];
        for (n, &i) in used.iter().enumerate() {
            numbers[i] = n as u32 + 1;
        }
        let passages: Vec<Retrieved> = hits
            .into_iter()
            .zip(chunks)
            .zip(&numbers)
            .map(|((h, chunk), &number)| Retrieved { number, chunk, metadata: h.metadata })
            .collect();
        let citations: Vec<Citation> = used
            .iter()
            .enumerate()
            .map(|(n, &i)| Citation {
                number: n as u32 + 1,
                doc_id: passages[i].chunk.doc_id.clone(),
                chunk: passages[i].chunk.chunk,
                cited: false,
            })
            .collect();
        let events = backend.model.generate(GenerationRequest { input, sampling, deadline })?;
        let _ = tx.try_send(Ok(AskEvent::Retrieval { passages, no_context }));
        let forward = Forward { slot, info, arrived, timings, citations, metrics: self.metrics.clone() };
        tokio::spawn(forward.run(events, tx).instrument(tracing::info_span!("generate")));
        Ok(rx)
    }

    /// Plain generation (no retrieval); see `ragd.v1.Generator.Generate`.
    pub async fn generate(
        &self,
        input: Input,
        sampling: SamplingIn,
        backend: &str,
        deadline: Option<Instant>,
    ) -> Result<AskStream, GenError> {
        let arrived = Instant::now();
        match &input {
            Input::Text(t) if t.is_empty() => return Err(GenError::invalid("prompt", "must not be empty")),
            Input::Chat(m) if m.is_empty() => {
                return Err(GenError::invalid("chat", "needs at least one message"));
            }
            Input::Chat(m) => {
                if let Some(bad) =
                    m.iter().find(|m| !matches!(m.role.as_str(), "system" | "user" | "assistant"))
                {
                    return Err(GenError::invalid(
                        "chat.messages.role",
                        format!("{:?}: expected system, user or assistant", bad.role),
                    ));
                }
            }
            Input::Text(_) => {}
        }
        let sampling = self.sampling(sampling)?;
        let backend = self.backend(backend)?;
        let info = backend.model.info().clone();
        let slot = self.admit(backend, deadline).instrument(tracing::info_span!("queue_wait")).await?;
        let timings = Timings { queue: arrived.elapsed(), ..Timings::default() };
        let events = backend.model.generate(GenerationRequest { input, sampling, deadline })?;
        let (tx, rx) = mpsc::channel(64);
        let forward =
            Forward { slot, info, arrived, timings, citations: Vec::new(), metrics: self.metrics.clone() };
        tokio::spawn(forward.run(events, tx));
        Ok(rx)
    }

    fn stage(&self, stage: &'static str, d: Duration) {
        self.metrics.stage_seconds.get_or_create(&StageLabels { stage }).observe(d.as_secs_f64());
    }
}

/// Forwards a backend's events to the client, holding the generation slot until the end.
struct Forward {
    slot: Slot,
    info: BackendInfo,
    arrived: Instant,
    timings: Timings,
    citations: Vec<Citation>,
    metrics: Arc<GeneratorMetrics>,
}

impl Forward {
    async fn run(mut self, mut events: Events, tx: mpsc::Sender<Result<AskEvent, GenError>>) {
        let labels = GeneratorMetrics::backend(&self.info.name);
        let mut answer = String::new();
        loop {
            let event = tokio::select! {
                e = events.recv() => e,
                // The client went away: dropping `events` stops the generation, dropping the
                // slot lets the next request in.
                () = tx.closed() => {
                    self.metrics.cancelled.get_or_create(&labels).inc();
                    return;
                }
            };
            let out = match event {
                Some(Ok(Event::Delta(text))) => {
                    answer.push_str(&text);
                    Ok(AskEvent::Delta(text))
                }
                Some(Ok(Event::Done(finish))) => Ok(AskEvent::Done(self.done(finish, &answer))),
                Some(Err(e)) => Err(e),
                None => Err(GenError::Model("the generation ended without finishing".into())),
            };
            let last = !matches!(out, Ok(AskEvent::Delta(_)));
            if tx.send(out).await.is_err() {
                self.metrics.cancelled.get_or_create(&labels).inc();
                return;
            }
            if last {
                drop(self.slot);
                return;
            }
        }
    }

    fn done(&mut self, f: Finish, answer: &str) -> DoneOut {
        let labels = GeneratorMetrics::backend(&self.info.name);
        let mut t = self.timings;
        if let (Some(first), Some(last)) = (f.first_token_at, f.last_token_at) {
            t.time_to_first_token = first.saturating_duration_since(self.arrived);
            t.decode = last.saturating_duration_since(first);
            if f.completion_tokens > 1 && !t.decode.is_zero() {
                t.decode_tokens_per_second = (f.completion_tokens - 1) as f64 / t.decode.as_secs_f64();
            }
            self.metrics
                .time_to_first_token
                .get_or_create(&labels)
                .observe(t.time_to_first_token.as_secs_f64());
            if t.decode_tokens_per_second > 0.0 {
                self.metrics
                    .decode_tokens_per_second
                    .get_or_create(&labels)
                    .observe(t.decode_tokens_per_second);
            }
        }
        t.total = self.arrived.elapsed();
        self.metrics.completion_tokens.get_or_create(&labels).inc_by(f.completion_tokens as u64);
        self.metrics.prompt_tokens.get_or_create(&labels).inc_by(f.prompt_tokens as u64);
        let cited = cited_numbers(answer);
        let citations = std::mem::take(&mut self.citations)
            .into_iter()
            .map(|c| Citation { cited: cited.contains(&c.number), ..c })
            .collect();
        DoneOut {
            finish: Some(f.reason),
            citations,
            prompt_tokens: f.prompt_tokens,
            completion_tokens: f.completion_tokens,
            timings: t,
            backend: self.info.name.clone(),
            model: self.info.model.clone(),
        }
    }
}
