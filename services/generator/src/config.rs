//! Generator configuration: one typed struct, every field a `--flag` and a `RAGD_*` variable.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, ValueEnum};
use ragd_core::config::GrpcConfig;

use crate::prompt;

/// Default GGUF, as written by `scripts/setup`.
pub const DEFAULT_LLM_MODEL: &str = ".ragd/models/SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf";

/// What Ask does when no chunk passes the score threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NoContextPolicy {
    /// A fixed answer saying nothing relevant was found; the model is not called.
    Refuse,
    /// The model answers, told that no context was found.
    Answer,
}

#[derive(Debug, Clone, Args)]
pub struct GeneratorConfig {
    /// gRPC endpoint of the indexer (retrieval), or `etcd` to discover the cluster's indexers
    /// and balance over them (needs --etcd-endpoints).
    #[arg(long, env = "RAGD_INDEXER_URL", default_value = "http://127.0.0.1:50052")]
    pub indexer_url: String,

    /// The embedded model (GGUF, run by llama.cpp in-process); empty (`--llm-model ""`) = no
    /// embedded backend, only OpenAI-compatible servers.
    #[arg(long, env = "RAGD_LLM_MODEL", default_value = DEFAULT_LLM_MODEL, value_parser = path_or_empty)]
    pub llm_model: PathBuf,
    /// Name of the embedded backend.
    #[arg(long, env = "RAGD_LLM_NAME", default_value = "embedded")]
    pub llm_name: String,
    /// Context window of one sequence (prompt + answer), tokens; capped at the model's.
    #[arg(long, env = "RAGD_LLM_CONTEXT", default_value_t = 2048)]
    pub llm_context: usize,
    /// Sequences the embedded model generates at the same time (continuous batching).
    #[arg(long, env = "RAGD_LLM_PARALLEL", default_value_t = 2)]
    pub llm_parallel: usize,
    /// CPU threads for the embedded model; 0 = every core.
    #[arg(long, env = "RAGD_LLM_THREADS", default_value_t = 0)]
    pub llm_threads: usize,
    /// Most tokens one decode step of the embedded model takes.
    #[arg(long, env = "RAGD_LLM_BATCH", default_value_t = 512)]
    pub llm_batch: usize,

    /// Base URL of an OpenAI-compatible server (e.g. http://vllm:8000/v1); adds the `openai` backend.
    #[arg(long, env = "RAGD_OPENAI_URL")]
    pub openai_url: Option<String>,
    /// API key sent as a bearer token.
    #[arg(long, env = "RAGD_OPENAI_API_KEY", hide_env_values = true)]
    pub openai_api_key: Option<String>,
    /// Model name sent to the server.
    #[arg(long, env = "RAGD_OPENAI_MODEL", default_value = "default")]
    pub openai_model: String,
    /// Name of the remote backend.
    #[arg(long, env = "RAGD_OPENAI_NAME", default_value = "openai")]
    pub openai_name: String,
    /// The server model's context window, tokens.
    #[arg(long, env = "RAGD_OPENAI_CONTEXT", default_value_t = 4096)]
    pub openai_context: usize,
    /// Generations sent to the server at the same time.
    #[arg(long, env = "RAGD_OPENAI_CONCURRENCY", default_value_t = 16)]
    pub openai_concurrency: usize,
    /// The server model's tokenizer.json, for exact prompt budgets (else an estimate).
    #[arg(long, env = "RAGD_OPENAI_TOKENIZER")]
    pub openai_tokenizer: Option<PathBuf>,
    /// Default backend; empty = the embedded one if configured, else openai.
    #[arg(long, env = "RAGD_DEFAULT_BACKEND", default_value = "")]
    pub default_backend: String,

    /// Requests waiting for a generation slot, per backend, before RESOURCE_EXHAUSTED.
    #[arg(long, env = "RAGD_GENERATION_QUEUE", default_value_t = 16)]
    pub generation_queue: usize,
    /// Longest expected wait for a generation slot, in milliseconds: a request that would wait
    /// longer (the completion tokens ahead of it ÷ the measured token rate of the backend's
    /// slots) is refused at once with RESOURCE_EXHAUSTED and a retry hint, as is one that could
    /// not finish before its deadline. 0: off (only the queue's size bounds it).
    #[arg(long, env = "RAGD_MAX_QUEUE_WAIT_MS", default_value_t = 30_000)]
    pub max_queue_wait_ms: u64,
    /// Chunks retrieved when a request does not say.
    #[arg(long, env = "RAGD_DEFAULT_K", default_value_t = 4)]
    pub default_k: usize,
    /// Largest k an Ask may request.
    #[arg(long, env = "RAGD_MAX_ASK_K", default_value_t = 50)]
    pub max_k: usize,
    /// max_tokens when a request does not say.
    #[arg(long, env = "RAGD_DEFAULT_MAX_TOKENS", default_value_t = 256)]
    pub default_max_tokens: usize,
    /// Largest max_tokens a request may ask for.
    #[arg(long, env = "RAGD_MAX_TOKENS_LIMIT", default_value_t = 1024)]
    pub max_tokens_limit: usize,
    /// What Ask does when no chunk passes the threshold.
    #[arg(long, env = "RAGD_NO_CONTEXT", value_enum, default_value_t = NoContextPolicy::Refuse)]
    pub no_context: NoContextPolicy,
    /// The answer of the refuse policy.
    #[arg(long, env = "RAGD_NO_CONTEXT_ANSWER", default_value = DEFAULT_REFUSAL)]
    pub no_context_answer: String,

    /// System message of grounded prompts.
    #[arg(long, env = "RAGD_SYSTEM_PROMPT", default_value = prompt::DEFAULT_SYSTEM)]
    pub system_prompt: String,
    /// User message of grounded prompts: `{context}` and `{question}` are replaced.
    #[arg(long, env = "RAGD_PROMPT_TEMPLATE", default_value = prompt::DEFAULT_USER)]
    pub prompt_template: String,
    /// One numbered chunk: `{n}`, `{text}` and `{doc_id}` are replaced.
    #[arg(long, env = "RAGD_PASSAGE_TEMPLATE", default_value = prompt::DEFAULT_PASSAGE)]
    pub passage_template: String,
    /// User message when no context was found (answer policy): `{question}` is replaced.
    #[arg(long, env = "RAGD_NO_CONTEXT_TEMPLATE", default_value = prompt::DEFAULT_NO_CONTEXT_USER)]
    pub no_context_template: String,

    /// Serve Prometheus metrics on this address (`GET /metrics`).
    #[arg(long, env = "RAGD_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    #[command(flatten)]
    pub grpc: GrpcConfig,
    #[command(flatten)]
    pub discovery: ragd_core::discovery::DiscoveryConfig,
    #[command(flatten)]
    pub security: ragd_core::security::SecurityConfig,
}

pub const DEFAULT_REFUSAL: &str = "I could not find anything relevant to this question in the collection, so I cannot answer it from the documents.";

/// A path, or the empty string (clap's own path parser refuses an empty value).
fn path_or_empty(s: &str) -> Result<PathBuf, std::convert::Infallible> {
    Ok(PathBuf::from(s))
}

impl Default for GeneratorConfig {
    /// The clap attributes' defaults (one place for each): see `ragd_core::config::clap_defaults`.
    fn default() -> Self {
        ragd_core::config::clap_defaults()
    }
}

impl GeneratorConfig {
    pub fn template(&self) -> prompt::PromptTemplate {
        prompt::PromptTemplate {
            system: self.system_prompt.clone(),
            user: self.prompt_template.clone(),
            passage: self.passage_template.clone(),
            no_context_user: self.no_context_template.clone(),
        }
    }

    pub fn llm_threads(&self) -> usize {
        if self.llm_threads > 0 {
            self.llm_threads
        } else {
            std::thread::available_parallelism().map_or(2, usize::from)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        config: GeneratorConfig,
    }

    /// Every field, not a subset: `ragd serve` with no flags (and no RAGD_* variable set) gets
    /// exactly `Default`, and the defaults validate.
    #[test]
    fn default_is_what_the_cli_gives_field_for_field() {
        let parsed = Cli::try_parse_from(["serve"]).expect("defaults parse").config;
        assert_eq!(format!("{:#?}", GeneratorConfig::default()), format!("{parsed:#?}"));
    }

    #[test]
    fn defaults_parse_and_match_default_impl() {
        let c = Cli::try_parse_from(["generator"]).expect("defaults parse").config;
        let d = GeneratorConfig::default();
        assert_eq!(c.indexer_url, d.indexer_url);
        assert_eq!(c.llm_model, d.llm_model);
        assert_eq!(
            (c.llm_context, c.llm_parallel, c.llm_batch),
            (d.llm_context, d.llm_parallel, d.llm_batch)
        );
        assert_eq!((c.generation_queue, c.default_k, c.max_k), (d.generation_queue, d.default_k, d.max_k));
        assert_eq!((c.default_max_tokens, c.max_tokens_limit), (d.default_max_tokens, d.max_tokens_limit));
        assert_eq!(c.no_context, d.no_context);
        assert_eq!(c.template(), d.template());
        assert!(c.template().validate().is_ok());
    }

    #[test]
    fn an_empty_llm_model_means_no_embedded_backend() {
        let c = Cli::try_parse_from(["generator", "--llm-model", ""]).expect("empty value parses").config;
        assert!(c.llm_model.as_os_str().is_empty());
        let c = Cli::try_parse_from(["generator", "--llm-model=/m/x.gguf"]).expect("parse").config;
        assert_eq!(c.llm_model, PathBuf::from("/m/x.gguf"));
    }
}
