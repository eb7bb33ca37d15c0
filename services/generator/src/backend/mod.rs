//! Language-model backends behind one trait: [`llama::LlamaBackend`] (llama.cpp in-process, the
//! default) and [`openai::OpenAiBackend`] (any OpenAI-compatible server: vLLM, TGI, Ollama,
//! llama.cpp's server).
//!
//! A backend renders and counts prompts with the model's own tokenizer and chat template, and
//! streams [`Event`]s on a channel; dropping the receiver cancels the generation and frees its slot.

pub mod llama;
pub mod openai;
pub mod text;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use tokio::sync::mpsc;

use crate::error::GenError;

/// What a backend serves, as ListBackends reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendInfo {
    pub name: String,
    /// "embedded" or "openai".
    pub kind: &'static str,
    pub model: String,
    /// Tokens of prompt plus answer one sequence may hold.
    pub context_window: usize,
    /// Sequences generated at the same time.
    pub max_concurrent: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: &str, content: impl Into<String>) -> Self {
        Self { role: role.to_string(), content: content.into() }
    }
}

/// A prompt completed as is, or chat messages rendered with the model's chat template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Text(String),
    Chat(Vec<ChatMessage>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Sampling {
    /// 0 = greedy.
    pub temperature: f32,
    /// Nucleus mass in (0, 1]; 1 = off.
    pub top_p: f32,
    pub max_tokens: usize,
    pub stop: Vec<String>,
    pub seed: Option<u64>,
}

impl Default for Sampling {
    fn default() -> Self {
        Self { temperature: 0.0, top_p: 1.0, max_tokens: 256, stop: Vec::new(), seed: None }
    }
}

#[derive(Debug, Clone)]
pub struct GenerationRequest {
    pub input: Input,
    pub sampling: Sampling,
    /// The caller's deadline; generation ends with DEADLINE_EXCEEDED when it passes.
    pub deadline: Option<Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// End-of-generation token.
    Stop,
    /// `max_tokens` reached.
    Length,
    /// A stop sequence was generated.
    StopSequence,
    /// The sequence's context window is full.
    ContextWindow,
}

/// How a generation ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Finish {
    pub reason: FinishReason,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// When the model produced its first token (None if it produced none).
    pub first_token_at: Option<Instant>,
    pub last_token_at: Option<Instant>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The next piece of text (never empty).
    Delta(String),
    /// Always the last event of a successful generation.
    Done(Finish),
}

/// Events of one generation; an `Err` ends it.
pub type Events = mpsc::UnboundedReceiver<Result<Event, GenError>>;

/// Live counters of a backend, as the engine itself sees them.
#[derive(Debug, Default)]
pub struct BackendStats {
    /// Sequences being generated now.
    pub active: AtomicUsize,
    /// Generations stopped because their receiver was dropped (the client went away).
    pub cancelled: AtomicU64,
}

impl BackendStats {
    pub fn active(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }

    pub fn cancelled(&self) -> u64 {
        self.cancelled.load(Ordering::SeqCst)
    }
}

pub trait LanguageModel: Send + Sync + std::fmt::Debug {
    fn info(&self) -> &BackendInfo;

    fn stats(&self) -> &BackendStats;

    /// Tokens `input` takes once rendered (chat template and special tokens included).
    fn count_tokens(&self, input: &Input) -> Result<usize, GenError>;

    /// Tokens of one piece of text on its own (no special tokens): prompt budgeting.
    fn count_text_tokens(&self, text: &str) -> Result<usize, GenError>;

    /// Starts a generation. Must be called within a tokio runtime. Fails fast on a prompt that
    /// cannot fit the context window; everything later arrives on the channel.
    fn generate(&self, request: GenerationRequest) -> Result<Events, GenError>;
}

/// Checks that a prompt of `prompt_tokens` plus `max_tokens` fits `context_window`.
pub fn check_fits(prompt_tokens: usize, max_tokens: usize, context_window: usize) -> Result<(), GenError> {
    if prompt_tokens + max_tokens > context_window {
        return Err(GenError::invalid(
            "max_tokens",
            format!(
                "prompt of {prompt_tokens} tokens plus max_tokens {max_tokens} exceeds the context window \
                 of {context_window} tokens"
            ),
        ));
    }
    Ok(())
}
