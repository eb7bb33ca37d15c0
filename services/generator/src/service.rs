//! The generator's domain logic: validate → admit (a bounded number of generations per backend
//! and a bounded queue) → retrieve through the indexer → fit a numbered prompt to the context
//! window → stream the backend's tokens → finish with citations, counts and timings.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ragd_core::admission::{self, Estimate, RunningMean, UnitCost};
use ragd_proto::v1;
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
use crate::retriever::{RetrievalQuery, Retriever};

/// Request limits and defaults.
#[derive(Debug, Clone)]
pub struct GeneratorLimits {
    pub default_k: usize,
    pub max_k: usize,
    pub default_max_tokens: usize,
    pub max_tokens_limit: usize,
    pub queue: usize,
    /// The expected-wait bound of a request queued for a slot (None: latency-bounded admission is
    /// off); see `ragd_core::admission`.
    pub max_queue_wait: Option<Duration>,
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
    /// Retrieval mode, fusion, prefetch, MMR and rerank for the indexer's search, as they came.
    pub mode: i32,
    pub fusion: Option<v1::Fusion>,
    pub prefetch: u32,
    pub mmr: Option<v1::Mmr>,
    pub rerank: Option<v1::Rerank>,
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
    book: Arc<TokenBook>,
}

/// The completion tokens a backend's slots still owe, and what one costs: the generator's
/// latency-bounded admission weighs a queued request by the tokens ahead of it.
#[derive(Debug)]
struct TokenBook {
    /// Expected completion tokens of every admitted request, running or waiting.
    ahead: AtomicUsize,
    /// A slot's time per completion token (its prompt, retrieval and prefill included), measured
    /// on finished requests; the backend's slots work in parallel.
    cost: UnitCost,
    /// Completion tokens of an answer, on average: most stop before `max_tokens`.
    answer_tokens: RunningMean,
}

impl TokenBook {
    fn new(slots: usize, default_max_tokens: usize) -> Self {
        Self {
            ahead: AtomicUsize::new(0),
            // 20 tokens/s per slot until measured: a small model on a few CPU cores.
            cost: UnitCost::new(Duration::from_millis(50), slots),
            answer_tokens: RunningMean::new(default_max_tokens as f64),
        }
    }

    /// The tokens a request allowed `max_tokens` is expected to produce.
    fn expected(&self, max_tokens: usize) -> usize {
        (self.answer_tokens.get().ceil() as usize).clamp(1, max_tokens.max(1))
    }

    fn owe(self: &Arc<Self>, tokens: usize) -> Owed {
        self.ahead.fetch_add(tokens, Ordering::Relaxed);
        Owed { book: self.clone(), tokens }
    }
}

/// Tokens counted ahead in a [`TokenBook`] until the request ends, however it ends.
struct Owed {
    book: Arc<TokenBook>,
    tokens: usize,
}

impl Drop for Owed {
    fn drop(&mut self) {
        self.book.ahead.fetch_sub(self.tokens, Ordering::Relaxed);
    }
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
    owed: Owed,
    started: Instant,
}

impl Slot {
    /// Records a finished generation's cost for admission.
    fn finished(&self, completion_tokens: usize) {
        let book = &self.owed.book;
        book.cost.record(completion_tokens, self.started.elapsed());
        book.answer_tokens.record(completion_tokens as f64);
    }
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
    retriever: Arc<dyn Retriever>,
    template: PromptTemplate,
    limits: GeneratorLimits,
    metrics: Arc<GeneratorMetrics>,
}

impl Generator {
    /// `backends` in listing order; `default` names the default one (empty = the first).
    pub fn new(
        backends: Vec<Arc<dyn LanguageModel>>,
        default: &str,
        retriever: Arc<dyn Retriever>,
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
                        book: Arc::new(TokenBook::new(n, limits.default_max_tokens)),
                    },
                }
            })
            .collect();
        Ok(Self { backends, default, retriever, template, limits, metrics })
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

    /// Waits for a generation slot of `backend` for a request allowed `max_tokens`:
    /// RESOURCE_EXHAUSTED when the queue is full or the tokens ahead would keep it waiting longer
    /// than the bound or its deadline allows, DEADLINE_EXCEEDED when the deadline passes first.
    async fn admit(
        &self,
        backend: &Backend,
        max_tokens: usize,
        deadline: Option<Instant>,
    ) -> Result<Slot, GenError> {
        let name = &backend.model.info().name;
        let labels = GeneratorMetrics::backend(name);
        let a = &backend.admission;
        let expected = a.book.expected(max_tokens);
        let ahead = a.book.ahead.load(Ordering::Relaxed);
        // Counted ahead of later requests from now on, waiting or running.
        let owed = a.book.owe(expected);
        let permit = match a.slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                let estimate = Estimate {
                    wait: a.book.cost.drain_time(ahead),
                    service: a.book.cost.service_time(expected),
                };
                let decided = match self.limits.max_queue_wait {
                    Some(bound) => admission::decide(estimate, bound, deadline, Instant::now()),
                    None => Ok(()),
                };
                if let Err(refusal) = decided {
                    self.metrics.overloaded.get_or_create(&labels).inc();
                    return Err(GenError::Overloaded(
                        format!("backend {name}: {refusal}"),
                        refusal.retry_after(),
                    ));
                }
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
        Ok(Slot {
            _permit: permit,
            metrics: self.metrics.clone(),
            backend: name.clone(),
            owed,
            started: Instant::now(),
        })
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
        let slot = self
            .admit(backend, sampling.max_tokens, deadline)
            .instrument(tracing::info_span!("queue_wait"))
            .await?;
        let queue = arrived.elapsed();

        // Retrieval through the indexer (it embeds the question with the collection's model).
        let query = RetrievalQuery {
            collection: req.collection.clone(),
            question: question.clone(),
            k,
            score_threshold: req.score_threshold,
            filter: req.filter,
            mode: req.mode,
            fusion: req.fusion,
            prefetch: req.prefetch,
            mmr: req.mmr,
            rerank: req.rerank,
        };
        let retrieve = tracing::info_span!("retrieve", collection = %req.collection, k);
        let found =
            self.retriever.retrieve(query, deadline).instrument(retrieve).await.map_err(GenError::Indexer)?;
        let hits = found.hits;
        let mut timings = Timings { embed: found.embed, search: found.search, queue, ..Timings::default() };
        self.stage("embed", timings.embed);
        self.stage("search", timings.search);
        let chunks: Vec<Chunk> = hits
            .iter()
            .map(|h| Chunk { doc_id: h.doc_id.clone(), chunk: h.chunk, score: h.score, text: h.text.clone() })
            .collect();
        let no_context = chunks.is_empty();
        let policy = req.no_context.unwrap_or(self.limits.no_context);

        if no_context && policy == NoContextPolicy::Refuse {
            drop(slot);
            timings.total = arrived.elapsed();
            return Ok(self.refusal(&info, timings));
        }

        let started = Instant::now();
        let (input, used) = if no_context {
            (self.template.render_no_context(&question), Vec::new())
        } else {
            self.fit_prompt(&question, &chunks, &backend.model, sampling.max_tokens).await?
        };
        timings.prompt = started.elapsed();
        self.stage("prompt", timings.prompt);

        let (passages, citations) = numbered(hits, chunks, &used);
        let events = backend.model.generate(GenerationRequest { input, sampling, deadline })?;
        let (tx, rx) = mpsc::channel(64);
        let _ = tx.try_send(Ok(AskEvent::Retrieval { passages, no_context }));
        let forward = Forward { slot, info, arrived, timings, citations, metrics: self.metrics.clone() };
        tokio::spawn(forward.run(events, tx).instrument(tracing::info_span!("generate")));
        Ok(rx)
    }

    /// The no-context refusal: the fixed answer as a complete stream, without the model.
    fn refusal(&self, info: &BackendInfo, timings: Timings) -> AskStream {
        let (tx, rx) = mpsc::channel(4);
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
        rx
    }

    /// The prompt with as many of `chunks` as fit the model's window next to `max_tokens` of
    /// answer (tokenising is CPU work: on the blocking pool), and the indexes of those used.
    async fn fit_prompt(
        &self,
        question: &str,
        chunks: &[Chunk],
        model: &Arc<dyn LanguageModel>,
        max_tokens: usize,
    ) -> Result<(Input, Vec<usize>), GenError> {
        let (template, q, c, m) =
            (self.template.clone(), question.to_string(), chunks.to_vec(), model.clone());
        let span = tracing::info_span!("prompt", chunks = c.len(), max_tokens);
        let fitted = tokio::task::spawn_blocking(move || {
            span.in_scope(|| prompt::fit(&template, &q, &c, m.as_ref(), max_tokens))
        })
        .await
        .map_err(|e| GenError::Model(format!("prompt task: {e}")))??;
        Ok((fitted.input, fitted.used))
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
        let slot = self
            .admit(backend, sampling.max_tokens, deadline)
            .instrument(tracing::info_span!("queue_wait"))
            .await?;
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
        self.slot.finished(f.completion_tokens);
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

/// Each retrieved chunk with its `[n]` in the prompt (0: it did not fit), and the citations of
/// those used, numbered in prompt order.
fn numbered(
    hits: Vec<crate::retriever::RetrievedHit>,
    chunks: Vec<Chunk>,
    used: &[usize],
) -> (Vec<Retrieved>, Vec<Citation>) {
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
    let citations = used
        .iter()
        .enumerate()
        .map(|(n, &i)| Citation {
            number: n as u32 + 1,
            doc_id: passages[i].chunk.doc_id.clone(),
            chunk: passages[i].chunk.chunk,
            cited: false,
        })
        .collect();
    (passages, citations)
}

/// `Generator::ask` without an indexer or a model: a fake [`Retriever`] and a fake
/// [`LanguageModel`] (test doubles, named as such). Expected answers follow the fakes' rules.
#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::AtomicUsize;

    use tonic::Code;

    use super::*;
    use crate::backend::{BackendInfo, BackendStats, Input};
    use crate::retriever::{Retrieval, RetrievedHit};

    /// **Test double of the indexer**: answers the hits it was given, or the status it was told.
    #[derive(Debug, Default)]
    struct FakeRetriever {
        hits: Vec<RetrievedHit>,
        fail_with: Option<Code>,
        asked: Mutex<Vec<RetrievalQuery>>,
    }

    #[tonic::async_trait]
    impl Retriever for FakeRetriever {
        async fn retrieve(&self, q: RetrievalQuery, _: Option<Instant>) -> Result<Retrieval, tonic::Status> {
            self.asked.lock().expect("lock").push(q);
            match self.fail_with {
                Some(code) => Err(tonic::Status::new(code, "the fake indexer was told to fail")),
                None => Ok(Retrieval {
                    hits: self.hits.clone(),
                    embed: Duration::from_millis(1),
                    search: Duration::from_millis(2),
                }),
            }
        }
    }

    /// **Test double of a language model**: one token per whitespace-separated word (chat
    /// messages cost 2 more each); it answers `answer` in one delta, or — `stream_forever` —
    /// streams "x " until the receiver is dropped.
    #[derive(Debug)]
    struct FakeModel {
        info: BackendInfo,
        stats: BackendStats,
        answer: String,
        stream_forever: bool,
        generations: AtomicUsize,
    }

    fn model(window: usize, answer: &str, stream_forever: bool) -> FakeModel {
        FakeModel {
            info: BackendInfo {
                name: "fake".into(),
                kind: "test",
                model: "fake-model".into(),
                context_window: window,
                max_concurrent: 1,
            },
            stats: BackendStats::default(),
            answer: answer.into(),
            stream_forever,
            generations: AtomicUsize::new(0),
        }
    }

    impl LanguageModel for FakeModel {
        fn info(&self) -> &BackendInfo {
            &self.info
        }
        fn stats(&self) -> &BackendStats {
            &self.stats
        }
        fn count_tokens(&self, input: &Input) -> Result<usize, GenError> {
            Ok(match input {
                Input::Text(t) => t.split_whitespace().count(),
                Input::Chat(m) => m.iter().map(|m| m.content.split_whitespace().count() + 2).sum(),
            })
        }
        fn count_text_tokens(&self, text: &str) -> Result<usize, GenError> {
            Ok(text.split_whitespace().count())
        }
        fn generate(&self, request: GenerationRequest) -> Result<Events, GenError> {
            self.generations.fetch_add(1, Ordering::SeqCst);
            let (tx, rx) = mpsc::unbounded_channel();
            let prompt_tokens = self.count_tokens(&request.input)?;
            if self.stream_forever {
                tokio::spawn(async move {
                    while tx.send(Ok(Event::Delta("x ".into()))).is_ok() {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                });
            } else {
                let now = Instant::now();
                let _ = tx.send(Ok(Event::Delta(self.answer.clone())));
                let _ = tx.send(Ok(Event::Done(Finish {
                    reason: FinishReason::Stop,
                    prompt_tokens,
                    completion_tokens: self.answer.split_whitespace().count(),
                    first_token_at: Some(now),
                    last_token_at: Some(now),
                })));
            }
            Ok(rx)
        }
    }

    fn hit(doc: &str, score: f32, words: usize) -> RetrievedHit {
        RetrievedHit { doc_id: doc.into(), chunk: 0, score, text: vec!["w"; words].join(" "), metadata: None }
    }

    fn generator(retriever: impl Into<Arc<FakeRetriever>>, model: Arc<FakeModel>, queue: usize) -> Generator {
        let limits = GeneratorLimits {
            default_k: 4,
            max_k: 10,
            default_max_tokens: 16,
            max_tokens_limit: 64,
            queue,
            max_queue_wait: None,
            no_context: NoContextPolicy::Refuse,
            no_context_answer: "Nothing relevant was found.".into(),
        };
        let backends: Vec<Arc<dyn LanguageModel>> = vec![model];
        Generator::new(
            backends,
            "",
            retriever.into(),
            PromptTemplate::default(),
            limits,
            Arc::new(GeneratorMetrics::default()),
        )
        .expect("generator")
    }

    fn ask(question: &str) -> AskIn {
        AskIn { question: question.into(), collection: "c".into(), ..AskIn::default() }
    }

    async fn events(mut rx: AskStream) -> Vec<AskEvent> {
        let mut out = Vec::new();
        while let Some(e) = rx.recv().await {
            out.push(e.expect("event"));
        }
        out
    }

    #[tokio::test]
    async fn passages_that_fit_are_numbered_and_the_cited_ones_marked() {
        // The third hit (lowest score) alone is larger than the 4096-token window: it is dropped.
        let retriever = FakeRetriever {
            hits: vec![hit("a", 0.9, 5), hit("b", 0.8, 5), hit("c", 0.7, 5000)],
            ..Default::default()
        };
        let g = generator(retriever, Arc::new(model(4096, "It is Paris [2].", false)), 4);
        let got = events(g.ask(ask("Where?"), None).await.expect("ask")).await;
        let AskEvent::Retrieval { passages, no_context } = &got[0] else { panic!("{got:?}") };
        assert!(!no_context);
        let numbers: Vec<(String, u32)> =
            passages.iter().map(|p| (p.chunk.doc_id.clone(), p.number)).collect();
        assert_eq!(numbers, [("a".to_string(), 1), ("b".to_string(), 2), ("c".to_string(), 0)]);
        assert!(matches!(&got[1], AskEvent::Delta(t) if t == "It is Paris [2]."));
        let AskEvent::Done(done) = &got[2] else { panic!("{got:?}") };
        let cited: Vec<(u32, &str, bool)> =
            done.citations.iter().map(|c| (c.number, c.doc_id.as_str(), c.cited)).collect();
        assert_eq!(cited, [(1, "a", false), (2, "b", true)]);
        assert_eq!((done.finish, done.completion_tokens), (Some(FinishReason::Stop), 4));
        assert_eq!(
            (done.timings.embed, done.timings.search),
            (Duration::from_millis(1), Duration::from_millis(2))
        );
    }

    #[tokio::test]
    async fn no_hits_with_the_refuse_policy_answer_without_the_model() {
        let m = Arc::new(model(4096, "unused", false));
        let g = generator(FakeRetriever::default(), m.clone(), 4);
        let got = events(g.ask(ask("Anything?"), None).await.expect("ask")).await;
        assert!(matches!(&got[0], AskEvent::Retrieval { passages, no_context: true } if passages.is_empty()));
        assert!(matches!(&got[1], AskEvent::Delta(t) if t == "Nothing relevant was found."));
        assert!(matches!(&got[2], AskEvent::Done(d) if d.finish.is_none() && d.citations.is_empty()));
        assert_eq!(m.generations.load(Ordering::SeqCst), 0, "the model was not called");
        // The Answer policy calls the model.
        let answer = AskIn { no_context: Some(NoContextPolicy::Answer), ..ask("Anything?") };
        let got = events(g.ask(answer, None).await.expect("ask")).await;
        assert!(matches!(&got[1], AskEvent::Delta(t) if t == "unused"));
        assert_eq!(m.generations.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn the_indexers_status_is_kept_and_the_query_is_what_was_asked() {
        let retriever = Arc::new(FakeRetriever { fail_with: Some(Code::NotFound), ..Default::default() });
        let g = generator(retriever.clone(), Arc::new(model(4096, "x", false)), 4);
        let mmr = v1::Mmr { diversity: 0.25, candidates: 9 };
        let req = AskIn {
            k: 7,
            score_threshold: Some(0.5),
            mode: v1::SearchMode::Hybrid as i32,
            prefetch: 30,
            mmr: Some(mmr),
            rerank: Some(v1::Rerank { candidates: 21 }),
            ..ask("  Why?  ")
        };
        let err = g.ask(req, None).await.expect_err("indexer failed");
        assert_eq!(tonic::Status::from(err).code(), Code::NotFound);
        let q = retriever.asked.lock().expect("lock")[0].clone();
        assert_eq!(
            (q.collection.as_str(), q.question.as_str(), q.k, q.score_threshold),
            ("c", "Why?", 7, Some(0.5))
        );
        assert_eq!((q.mode, q.prefetch, q.mmr), (v1::SearchMode::Hybrid as i32, 30, Some(mmr)));
        assert_eq!(q.rerank, Some(v1::Rerank { candidates: 21 }));
        // k = 0 asks for the default k.
        let _ = g.ask(ask("q"), None).await;
        assert_eq!(retriever.asked.lock().expect("lock")[1].k, 4);
    }

    #[tokio::test]
    async fn bad_asks_are_invalid_argument_before_retrieval() {
        let g = generator(FakeRetriever::default(), Arc::new(model(4096, "x", false)), 4);
        let field = |e: GenError| match e {
            GenError::InvalidArgument { field, .. } => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(field(g.ask(ask("   "), None).await.expect_err("empty")), "question");
        let no_collection = AskIn { collection: String::new(), ..ask("q") };
        assert_eq!(field(g.ask(no_collection, None).await.expect_err("no collection")), "collection");
        assert_eq!(field(g.ask(AskIn { k: 11, ..ask("q") }, None).await.expect_err("k")), "k");
        let unknown = AskIn { backend: "nope".into(), ..ask("q") };
        let err = g.ask(unknown, None).await.expect_err("unknown backend");
        assert_eq!(tonic::Status::from(err).code(), Code::NotFound);
    }

    #[tokio::test]
    async fn a_request_that_could_not_get_a_slot_in_time_is_refused_at_once() {
        let retriever = FakeRetriever { hits: vec![hit("a", 0.9, 3)], ..Default::default() };
        // One slot, a queue of 4. Until measured a token costs a slot 50 ms, and an answer is
        // expected to be max_tokens (16) long: 800 ms per request.
        let mut g = generator(retriever, Arc::new(model(4096, "", true)), 4);
        g.limits.max_queue_wait = Some(Duration::from_secs(60));
        let mut first = g.ask(ask("q"), None).await.expect("first");
        assert!(matches!(first.recv().await, Some(Ok(AskEvent::Retrieval { .. }))));
        let code = |r: Result<AskStream, GenError>| r.map(|_| ()).map_err(|e| tonic::Status::from(e).code());
        // 800 ms ahead + 800 ms of its own > 1 s left: refused now, not at its deadline.
        let started = Instant::now();
        let soon = Some(Instant::now() + Duration::from_secs(1));
        let refused = g.ask(ask("q"), soon).await.expect_err("refused");
        assert!(started.elapsed() < Duration::from_millis(500), "refused at once");
        let status = tonic::Status::from(refused);
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(status.message().contains("deadline"), "{status:?}");
        assert!(ragd_core::status::retry_after(&status).is_some(), "with a retry hint");
        // A deadline shorter than its own 800 ms could never be met, load or not: it waits and
        // ends DEADLINE_EXCEEDED, the truth about it.
        let hopeless = Some(Instant::now() + Duration::from_millis(100));
        assert_eq!(code(g.ask(ask("q"), hopeless).await), Err(Code::DeadlineExceeded));
        // The server's bound: 800 ms expected wait > 100 ms.
        g.limits.max_queue_wait = Some(Duration::from_millis(100));
        let status = tonic::Status::from(g.ask(ask("q"), None).await.expect_err("bound"));
        assert!(status.message().contains("above the bound"), "{status:?}");
        // Within both: it queues (and is admitted once the first leaves).
        g.limits.max_queue_wait = Some(Duration::from_secs(1));
        let waiting = {
            let g = &g;
            async move { g.ask(ask("q"), Some(Instant::now() + Duration::from_secs(10))).await }
        };
        let (admitted, ()) = tokio::join!(waiting, async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(first);
        });
        admitted.expect("admitted after the first left");
    }

    #[tokio::test]
    async fn a_client_that_goes_away_frees_the_slot_for_the_next() {
        let retriever = FakeRetriever { hits: vec![hit("a", 0.9, 3)], ..Default::default() };
        // One slot, no queue: a second ask while the first streams is RESOURCE_EXHAUSTED.
        let g = generator(retriever, Arc::new(model(4096, "", true)), 0);
        let mut first = g.ask(ask("q"), None).await.expect("first");
        assert!(matches!(first.recv().await, Some(Ok(AskEvent::Retrieval { .. }))));
        assert!(matches!(first.recv().await, Some(Ok(AskEvent::Delta(_)))));
        let busy = g.ask(ask("q"), None).await.expect_err("the only slot is busy");
        assert_eq!(tonic::Status::from(busy).code(), Code::ResourceExhausted);
        drop(first);
        // The forwarding task notices the closed stream and drops the slot.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match g.ask(ask("q"), None).await {
                Ok(_) => break,
                Err(e) if Instant::now() < deadline => {
                    assert_eq!(tonic::Status::from(e).code(), Code::ResourceExhausted);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(e) => panic!("the slot was never freed: {e}"),
            }
        }
    }
}
