//! The embedded backend: a GGUF model run by llama.cpp in-process (`llama-cpp-2`).
//!
//! One engine thread owns one llama.cpp context holding `parallel` sequences (each with its own
//! slice of the KV cache) and runs continuous batching: every step decodes one token for each
//! sequence that is generating plus a chunk of the prompt of each sequence that is still
//! prefilling, all in one `llama_decode` call, so concurrent answers share each pass over the
//! weights. A sequence ends on an end-of-generation token, a stop sequence, `max_tokens`, its
//! context window, its deadline, or when its receiver is dropped (the client went away); its KV
//! cells are freed at once and the next queued request takes the slot.
//!
//! Dropping the backend stops the engine and joins its thread: the running sequences end with
//! UNAVAILABLE (shutting down) after at most the decode step in progress. The join is what makes
//! a stop safe: a process that exits while the engine thread is inside `llama_decode` has its C++
//! static destructors (ggml's, ONNX Runtime's) run under that thread, which crashed `ragd up`'s
//! exit now and then with SIGSEGV.

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, mpsc as std_mpsc};
use std::time::Instant;

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend as LlamaRuntime;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use tokio::sync::mpsc;

use super::text::{StopScanner, Utf8Buffer};
use super::{
    BackendInfo, BackendStats, Event, Events, Finish, FinishReason, GenerationRequest, Input, LanguageModel,
};
use crate::error::GenError;

/// Settings of the embedded engine.
#[derive(Debug, Clone)]
pub struct LlamaSettings {
    /// Name the backend is listed under.
    pub name: String,
    pub model_path: PathBuf,
    /// Context window of one sequence (prompt + answer), tokens.
    pub context: usize,
    /// Sequences decoded together (continuous batching).
    pub parallel: usize,
    /// CPU threads for llama.cpp.
    pub threads: usize,
    /// Most tokens one decode step takes (prompt chunks + one per generating sequence).
    pub batch: usize,
}

/// The llama.cpp runtime can be initialised once per process.
fn runtime() -> Result<&'static LlamaRuntime, GenError> {
    static RUNTIME: OnceLock<Result<LlamaRuntime, String>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            // llama.cpp's own logging goes through `tracing` (target `llama-cpp-2`).
            llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
            LlamaRuntime::init().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| GenError::Model(format!("llama.cpp initialisation: {e}")))
}

struct Job {
    tokens: Vec<LlamaToken>,
    request: GenerationRequest,
    events: mpsc::UnboundedSender<Result<Event, GenError>>,
}

#[derive(Debug)]
pub struct LlamaBackend {
    info: BackendInfo,
    model: Arc<LlamaModel>,
    template: Option<String>,
    /// `None` only while dropping.
    jobs: Option<std_mpsc::Sender<Job>>,
    stats: Arc<BackendStats>,
    /// Set when the backend is dropped: the engine ends its sequences and returns.
    stop: Arc<AtomicBool>,
    /// The engine thread, joined on drop (`None` once joined).
    engine: Option<std::thread::JoinHandle<()>>,
}

impl LlamaBackend {
    /// Loads the model and starts the engine thread.
    pub fn load(settings: &LlamaSettings) -> Result<Self, GenError> {
        if settings.parallel == 0 || settings.context < 16 || settings.batch == 0 {
            return Err(GenError::invalid("llm", "parallel, batch must be ≥ 1 and context ≥ 16"));
        }
        let path = &settings.model_path;
        if !path.is_file() {
            return Err(GenError::Model(format!("model file {} not found", path.display())));
        }
        let rt = runtime()?;
        let model = LlamaModel::load_from_file(rt, path, &LlamaModelParams::default())
            .map_err(|e| GenError::Model(format!("loading {}: {e}", path.display())))?;
        let model = Arc::new(model);
        let template = model.chat_template(None).ok().and_then(|t| t.to_string().ok());
        let train = model.n_ctx_train() as usize;
        let context = settings.context.min(train.max(16));
        let info = BackendInfo {
            name: settings.name.clone(),
            kind: "embedded",
            model: model_name(&model, path),
            context_window: context,
            max_concurrent: settings.parallel,
        };
        let (jobs, rx) = std_mpsc::channel();
        let stats = Arc::new(BackendStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let engine = Engine::new(model.clone(), settings, context, stats.clone(), stop.clone());
        let engine = std::thread::Builder::new()
            .name("llama-engine".into())
            .spawn(move || engine.run(rx))
            .map_err(|e| GenError::Model(format!("engine thread: {e}")))?;
        tracing::info!(
            model = %info.model, context, parallel = settings.parallel, threads = settings.threads,
            chat_template = template.is_some(), "embedded language model loaded"
        );
        Ok(Self { info, model, template, jobs: Some(jobs), stats, stop, engine: Some(engine) })
    }

    fn render(&self, input: &Input) -> Result<String, GenError> {
        match input {
            Input::Text(t) => Ok(t.clone()),
            Input::Chat(messages) => {
                let template = self.template.as_deref().unwrap_or("chatml");
                let template = LlamaChatTemplate::new(template)
                    .map_err(|e| GenError::Model(format!("chat template: {e}")))?;
                let chat = messages
                    .iter()
                    .map(|m| LlamaChatMessage::new(m.role.clone(), m.content.clone()))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| GenError::invalid("messages", format!("{e}")))?;
                self.model
                    .apply_chat_template(&template, &chat, true)
                    .map_err(|e| GenError::Model(format!("applying the chat template: {e}")))
            }
        }
    }

    /// Tokenizes the rendered input as llama.cpp's server does: the model's BOS if it wants one,
    /// special tokens (the chat template's markers) parsed.
    fn tokenize(&self, input: &Input) -> Result<Vec<LlamaToken>, GenError> {
        let text = self.render(input)?;
        Ok(self.model.vocab().tokenize(text.as_bytes(), true, true))
    }
}

fn model_name(model: &LlamaModel, path: &Path) -> String {
    model.meta_val_str("general.name").ok().filter(|n| !n.is_empty()).unwrap_or_else(|| {
        path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "gguf".into())
    })
}

impl LanguageModel for LlamaBackend {
    fn info(&self) -> &BackendInfo {
        &self.info
    }

    fn stats(&self) -> &BackendStats {
        &self.stats
    }

    fn count_tokens(&self, input: &Input) -> Result<usize, GenError> {
        Ok(self.tokenize(input)?.len())
    }

    fn count_text_tokens(&self, text: &str) -> Result<usize, GenError> {
        Ok(self.model.vocab().tokenize(text.as_bytes(), false, false).len())
    }

    fn generate(&self, request: GenerationRequest) -> Result<Events, GenError> {
        let tokens = self.tokenize(&request.input)?;
        if tokens.is_empty() {
            return Err(GenError::invalid("prompt", "is empty"));
        }
        super::check_fits(tokens.len(), request.sampling.max_tokens, self.info.context_window)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let jobs = self.jobs.as_ref().ok_or(GenError::ShuttingDown)?;
        jobs.send(Job { tokens, request, events: tx })
            .map_err(|_| GenError::Model("the engine thread stopped".into()))?;
        Ok(rx)
    }
}

impl Drop for LlamaBackend {
    /// Stops the engine and waits for its thread: at most the decode step in progress (tens of
    /// milliseconds for the models this runs). Blocking here is deliberate: a process must not
    /// exit while llama.cpp is still computing on another thread.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Closing the channel wakes an engine that waits for work with nothing running.
        drop(self.jobs.take());
        if let Some(engine) = self.engine.take()
            && engine.join().is_err()
        {
            tracing::error!("the llama.cpp engine thread panicked");
        }
        tracing::debug!(backend = %self.info.name, "embedded language model stopped");
    }
}

/// A sequence being generated.
struct Slot {
    seq: i32,
    job: Job,
    sampler: LlamaSampler,
    /// Prompt tokens already in the KV cache.
    prefilled: usize,
    /// Tokens in the KV cache (prompt + generated).
    n_past: usize,
    /// The last sampled token, not yet in the KV cache.
    last: Option<LlamaToken>,
    /// Index in the current batch whose logits this slot samples from.
    logits_at: Option<i32>,
    completion_tokens: usize,
    first_token_at: Option<Instant>,
    last_token_at: Option<Instant>,
    utf8: Utf8Buffer,
    stops: StopScanner,
}

impl Slot {
    fn new(seq: i32, job: Job) -> Self {
        let sampler = sampler(&job.request.sampling);
        let stops = StopScanner::new(&job.request.sampling.stop);
        Self {
            seq,
            job,
            sampler,
            prefilled: 0,
            n_past: 0,
            last: None,
            logits_at: None,
            completion_tokens: 0,
            first_token_at: None,
            last_token_at: None,
            utf8: Utf8Buffer::default(),
            stops,
        }
    }

    fn send(&self, event: Result<Event, GenError>) {
        // A closed receiver is noticed at the top of the next step.
        let _ = self.job.events.send(event);
    }

    fn finish(&mut self, mut reason: FinishReason) {
        // Flush what the UTF-8 buffer and the stop scanner held back (unless a stop was found).
        let mut rest = String::new();
        if reason != FinishReason::StopSequence {
            let scan = self.stops.push(&self.utf8.finish());
            rest = scan.emit;
            if scan.stopped {
                reason = FinishReason::StopSequence;
            } else {
                rest.push_str(&self.stops.finish());
            }
        }
        if !rest.is_empty() {
            self.send(Ok(Event::Delta(rest)));
        }
        self.send(Ok(Event::Done(Finish {
            reason,
            prompt_tokens: self.job.tokens.len(),
            completion_tokens: self.completion_tokens,
            first_token_at: self.first_token_at,
            last_token_at: self.last_token_at,
        })));
    }
}

struct Engine {
    model: Arc<LlamaModel>,
    parallel: usize,
    threads: usize,
    batch: usize,
    context: usize,
    stats: Arc<BackendStats>,
    stop: Arc<AtomicBool>,
}

impl Engine {
    fn new(
        model: Arc<LlamaModel>,
        s: &LlamaSettings,
        context: usize,
        stats: Arc<BackendStats>,
        stop: Arc<AtomicBool>,
    ) -> Self {
        Self {
            model,
            parallel: s.parallel,
            threads: s.threads.max(1),
            batch: s.batch.max(s.parallel),
            context,
            stats,
            stop,
        }
    }

    /// The engine thread: admit jobs into free sequences, drop the abandoned ones, decode one
    /// step for all of them, sample, retire the finished ones; until the backend is dropped
    /// (then the running sequences end with UNAVAILABLE, shutting down).
    fn run(self, jobs: std_mpsc::Receiver<Job>) {
        let Ok(rt) = runtime() else { return };
        let total = (self.context * self.parallel) as u32;
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(total))
            .with_n_batch(self.batch as u32)
            .with_n_ubatch(self.batch as u32)
            .with_n_seq_max(self.parallel as u32)
            .with_n_threads(self.threads as i32)
            .with_n_threads_batch(self.threads as i32);
        let mut ctx = match self.model.new_context(rt, params) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot create the llama.cpp context");
                // Fail every job that arrives.
                for job in jobs {
                    let _ = job.events.send(Err(GenError::Model(format!("llama.cpp context: {e}"))));
                }
                return;
            }
        };
        let mut batch = LlamaBatch::new(self.batch, self.parallel as i32);
        let mut slots: Vec<Slot> = Vec::new();
        while self.admit(&jobs, &mut slots) {
            if self.stop.load(Ordering::SeqCst) {
                for s in slots.drain(..) {
                    s.send(Err(GenError::ShuttingDown));
                    free(&mut ctx, s.seq);
                }
                self.stats.active.store(0, Ordering::SeqCst);
                break;
            }
            self.drop_abandoned(&mut ctx, &mut slots);
            if slots.is_empty() {
                continue;
            }
            if let Err(e) = self
                .fill_batch(&mut batch, &mut slots)
                .and_then(|()| ctx.decode(&mut batch).map_err(|e| e.to_string()))
            {
                tracing::error!(error = %e, "llama.cpp decode failed; failing the batch's sequences");
                for s in slots.drain(..) {
                    s.send(Err(GenError::Model(format!("decode: {e}"))));
                    free(&mut ctx, s.seq);
                }
                self.stats.active.store(0, Ordering::SeqCst);
                continue;
            }
            let finished = self.sample(&ctx, &mut slots);
            // Descending, so each swap_remove moves an element that stays.
            for (i, reason) in finished.into_iter().rev() {
                let mut s = slots.swap_remove(i);
                s.finish(reason);
                free(&mut ctx, s.seq);
            }
            self.stats.active.store(slots.len(), Ordering::SeqCst);
        }
    }

    /// Moves queued jobs into free sequences, blocking while nothing runs. False once the
    /// backend is dropped (the job channel closed) and nothing runs: shut down.
    fn admit(&self, jobs: &std_mpsc::Receiver<Job>, slots: &mut Vec<Slot>) -> bool {
        while slots.len() < self.parallel {
            let job = if slots.is_empty() {
                match jobs.recv() {
                    Ok(j) => j,
                    Err(_) => return false,
                }
            } else {
                match jobs.try_recv() {
                    Ok(j) => j,
                    Err(_) => break,
                }
            };
            let seq = (0..self.parallel as i32).find(|s| slots.iter().all(|x| x.seq != *s)).unwrap_or(0);
            slots.push(Slot::new(seq, job));
        }
        true
    }

    /// Drops the sequences whose client went away or whose deadline passed, freeing their cells.
    fn drop_abandoned(&self, ctx: &mut LlamaContext<'_>, slots: &mut Vec<Slot>) {
        let now = Instant::now();
        slots.retain(|s| {
            let keep = if s.job.events.is_closed() {
                tracing::debug!(seq = s.seq, "generation cancelled by the client");
                self.stats.cancelled.fetch_add(1, Ordering::SeqCst);
                false
            } else if s.job.request.deadline.is_some_and(|d| now >= d) {
                s.send(Err(GenError::DeadlineExceeded("while generating")));
                false
            } else {
                true
            };
            if !keep {
                free(ctx, s.seq);
            }
            keep
        });
        self.stats.active.store(slots.len(), Ordering::SeqCst);
    }

    /// One decode step's batch: the last sampled token of each generating sequence, then prompt
    /// chunks of the sequences still prefilling, as far as the batch has room.
    fn fill_batch(&self, batch: &mut LlamaBatch, slots: &mut [Slot]) -> Result<(), String> {
        batch.clear();
        let mut room = self.batch;
        for s in slots.iter_mut() {
            s.logits_at = None;
            if let Some(t) = s.last {
                batch.add(t, s.n_past as i32, &[s.seq], true).map_err(|e| e.to_string())?;
                s.logits_at = Some(batch.n_tokens() - 1);
                room -= 1;
            }
        }
        for s in slots.iter_mut().filter(|s| s.last.is_none()) {
            if room == 0 {
                break;
            }
            let end = (s.prefilled + room).min(s.job.tokens.len());
            for i in s.prefilled..end {
                let last = i + 1 == s.job.tokens.len();
                batch.add(s.job.tokens[i], i as i32, &[s.seq], last).map_err(|e| e.to_string())?;
                if last {
                    s.logits_at = Some(batch.n_tokens() - 1);
                }
            }
            room -= end - s.prefilled;
            s.prefilled = end;
            s.n_past = end;
        }
        Ok(())
    }

    /// Samples the next token of every sequence that has logits this step and streams its text;
    /// returns the sequences that finished (index, reason), in ascending index order.
    fn sample(&self, ctx: &LlamaContext<'_>, slots: &mut [Slot]) -> Vec<(usize, FinishReason)> {
        let vocab = self.model.vocab();
        let mut finished = Vec::new();
        for (i, s) in slots.iter_mut().enumerate() {
            let Some(at) = s.logits_at else { continue };
            if s.last.is_some() {
                s.n_past += 1; // the previous token is in the cache now
            }
            let token = s.sampler.sample(ctx, at);
            let now = Instant::now();
            s.first_token_at.get_or_insert(now);
            s.last_token_at = Some(now);
            if vocab.is_eog(token) {
                s.last = None;
                finished.push((i, FinishReason::Stop));
                continue;
            }
            s.completion_tokens += 1;
            s.last = Some(token);
            let piece = vocab.token_to_piece(token, false, None);
            let scan = s.stops.push(&s.utf8.push(&piece));
            if !scan.emit.is_empty() {
                s.send(Ok(Event::Delta(scan.emit)));
            }
            if scan.stopped {
                finished.push((i, FinishReason::StopSequence));
            } else if s.completion_tokens >= s.job.request.sampling.max_tokens {
                finished.push((i, FinishReason::Length));
            } else if s.n_past + 1 >= self.context {
                finished.push((i, FinishReason::ContextWindow));
            }
        }
        finished
    }
}

fn free(ctx: &mut LlamaContext<'_>, seq: i32) {
    if let Err(e) = ctx.clear_kv_cache_seq(Some(seq as u32), None, None) {
        tracing::warn!(seq, error = %e, "could not free a sequence's KV cells");
    }
}

fn sampler(s: &super::Sampling) -> LlamaSampler {
    if s.temperature <= 0.0 {
        return LlamaSampler::greedy();
    }
    // llama.cpp's LLAMA_DEFAULT_SEED (u32::MAX) asks for a random seed.
    let seed = s.seed.map_or(u32::MAX, |x| (x ^ (x >> 32)) as u32);
    let seed = if seed == u32::MAX && s.seed.is_some() { 0 } else { seed };
    LlamaSampler::chain_simple([
        LlamaSampler::top_p(s.top_p.clamp(f32::MIN_POSITIVE, 1.0), 1),
        LlamaSampler::temp(s.temperature),
        LlamaSampler::dist(seed),
    ])
}
