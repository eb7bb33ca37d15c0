//! Client verbs of the generator: `ragd ask` (grounded answer streamed to the terminal, then
//! citations) and `ragd generate` (plain generation).

use std::io::Write;

use anyhow::bail;
use clap::Args;
use ragd_core::config::DEFAULT_MAX_MESSAGE_BYTES;
use ragd_core::upstream::Upstream;
use ragd_proto::v1::{self, generator_client::GeneratorClient};
use serde_json::json;

#[derive(Debug, Clone, Args)]
pub struct GeneratorEndpoint {
    /// gRPC endpoint of the generator, or `etcd` to find the cluster's generators there.
    #[arg(long, env = "RAGD_GENERATOR_ENDPOINT", default_value = "http://127.0.0.1:50053", global = true)]
    pub endpoint: String,
    #[command(flatten)]
    pub discovery: ragd_core::discovery::EtcdConfig,
    #[command(flatten)]
    pub caller: crate::client::CallerArgs,
}

#[derive(Debug, Clone, Args)]
pub struct SamplingArgs {
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long, default_value_t = 0.0)]
    top_p: f32,
    /// 0 = the generator's default.
    #[arg(long, default_value_t = 0)]
    max_tokens: u32,
    /// Stop sequences.
    #[arg(long)]
    stop: Vec<String>,
    #[arg(long)]
    seed: Option<u64>,
    /// Backend name (default: the generator's default backend).
    #[arg(long, default_value = "")]
    backend: String,
    /// Print one JSON object per streamed message instead of text.
    #[arg(long)]
    json: bool,
    /// Deadline of the call in seconds.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
}

impl SamplingArgs {
    fn proto(&self) -> v1::Sampling {
        v1::Sampling {
            temperature: self.temperature,
            top_p: self.top_p,
            max_tokens: self.max_tokens,
            stop: self.stop.clone(),
            seed: self.seed,
        }
    }
}

#[derive(Debug, Args)]
pub struct AskArgs {
    #[command(flatten)]
    endpoint: GeneratorEndpoint,
    #[arg(long)]
    collection: String,
    /// Chunks to retrieve (0 = the generator's default).
    #[arg(long, default_value_t = 0)]
    k: u32,
    /// Use only chunks scoring at least this.
    #[arg(long)]
    threshold: Option<f32>,
    #[command(flatten)]
    retrieval: crate::indexer_cli::RetrievalArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// The question.
    #[arg(required = true)]
    question: Vec<String>,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    endpoint: GeneratorEndpoint,
    /// Send the text as one user chat message (rendered with the model's chat template)
    /// instead of a raw prompt.
    #[arg(long)]
    chat: bool,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[arg(required = true)]
    prompt: Vec<String>,
}

pub(crate) async fn client(endpoint: &GeneratorEndpoint) -> anyhow::Result<GeneratorClient<Upstream>> {
    let channel =
        crate::client::channel(&endpoint.endpoint, &endpoint.discovery, "generator", &endpoint.caller)
            .await?;
    Ok(GeneratorClient::new(channel)
        .max_decoding_message_size(DEFAULT_MAX_MESSAGE_BYTES)
        .max_encoding_message_size(DEFAULT_MAX_MESSAGE_BYTES))
}

fn status(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", s.code(), s.message())
}

fn done_json(d: &v1::Done) -> serde_json::Value {
    let t = d.timings.unwrap_or_default();
    let u = d.usage.unwrap_or_default();
    json!({
        "finish_reason": v1::FinishReason::try_from(d.finish_reason).map(|f| f.as_str_name()).unwrap_or("?"),
        "citations": d.citations.iter().map(|c| json!({"number": c.number, "doc_id": c.doc_id, "chunk": c.chunk, "cited": c.cited})).collect::<Vec<_>>(),
        "prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
        "backend": d.backend, "model": d.model,
        "timings_ms": {
            "queue": t.queue_us as f64 / 1e3, "embed": t.embed_us as f64 / 1e3, "search": t.search_us as f64 / 1e3,
            "prompt": t.prompt_us as f64 / 1e3, "time_to_first_token": t.time_to_first_token_us as f64 / 1e3,
            "decode": t.decode_us as f64 / 1e3, "total": t.total_us as f64 / 1e3,
        },
        "decode_tokens_per_second": t.decode_tokens_per_second,
    })
}

fn print_done(d: &v1::Done) {
    let t = d.timings.unwrap_or_default();
    let u = d.usage.unwrap_or_default();
    println!();
    for c in &d.citations {
        println!(
            "  [{}] {} (chunk {}){}",
            c.number,
            c.doc_id,
            c.chunk,
            if c.cited { "  <- cited" } else { "" }
        );
    }
    eprintln!(
        "-- {} via {} ({}): {} prompt + {} answer tokens; first token {:.0} ms (embed {:.1}, search {:.1}, prompt {:.1}), {:.1} tokens/s",
        v1::FinishReason::try_from(d.finish_reason).map(|f| f.as_str_name()).unwrap_or("?"),
        d.backend,
        d.model,
        u.prompt_tokens,
        u.completion_tokens,
        t.time_to_first_token_us as f64 / 1e3,
        t.embed_us as f64 / 1e3,
        t.search_us as f64 / 1e3,
        t.prompt_us as f64 / 1e3,
        t.decode_tokens_per_second,
    );
}

pub async fn ask(args: AskArgs) -> anyhow::Result<()> {
    let mut c = client(&args.endpoint).await?;
    let (mode, fusion, prefetch, mmr, rerank) = args.retrieval.proto();
    let mut req = tonic::Request::new(v1::AskRequest {
        question: args.question.join(" "),
        collection: args.collection,
        k: args.k,
        score_threshold: args.threshold,
        filter: None,
        sampling: Some(args.sampling.proto()),
        backend: args.sampling.backend.clone(),
        no_context: 0,
        mode,
        fusion,
        prefetch,
        mmr,
        rerank,
    });
    req.set_timeout(std::time::Duration::from_secs(args.sampling.timeout_secs));
    let mut stream = c.ask(req).await.map_err(status)?.into_inner();
    let json = args.sampling.json;
    let mut out = std::io::stdout();
    let mut finished = false;
    while let Some(msg) = stream.message().await.map_err(status)? {
        use v1::ask_response::Event;
        match msg.event {
            Some(Event::Retrieval(r)) if json => println!(
                "{}",
                json!({"retrieval": r.passages.iter().map(|p| json!({"number": p.number, "doc_id": p.doc_id, "chunk": p.chunk, "score": p.score, "text": p.text})).collect::<Vec<_>>(), "no_context": r.no_context})
            ),
            Some(Event::Retrieval(r)) => {
                let used = r.passages.iter().filter(|p| p.number > 0).count();
                eprintln!(
                    "-- retrieved {} chunks, {used} in the prompt{}",
                    r.passages.len(),
                    if r.no_context { " (no context)" } else { "" }
                );
            }
            Some(Event::Delta(t)) if json => println!("{}", json!({"delta": t})),
            Some(Event::Delta(t)) => {
                print!("{t}");
                out.flush()?;
            }
            Some(Event::Done(d)) if json => {
                println!("{}", json!({"done": done_json(&d)}));
                finished = true;
            }
            Some(Event::Done(d)) => {
                print_done(&d);
                finished = true;
            }
            None => {}
        }
    }
    if !finished {
        bail!("the stream ended without a final message");
    }
    Ok(())
}

pub async fn generate(args: GenerateArgs) -> anyhow::Result<()> {
    let mut c = client(&args.endpoint).await?;
    let text = args.prompt.join(" ");
    let input = if args.chat {
        v1::generate_request::Input::Chat(v1::ChatMessages {
            messages: vec![v1::ChatMessage { role: "user".into(), content: text }],
        })
    } else {
        v1::generate_request::Input::Prompt(text)
    };
    let mut req = tonic::Request::new(v1::GenerateRequest {
        input: Some(input),
        sampling: Some(args.sampling.proto()),
        backend: args.sampling.backend.clone(),
    });
    req.set_timeout(std::time::Duration::from_secs(args.sampling.timeout_secs));
    let mut stream = c.generate(req).await.map_err(status)?.into_inner();
    let json = args.sampling.json;
    let mut out = std::io::stdout();
    while let Some(msg) = stream.message().await.map_err(status)? {
        use v1::generate_response::Event;
        match msg.event {
            Some(Event::Delta(t)) if json => println!("{}", json!({"delta": t})),
            Some(Event::Delta(t)) => {
                print!("{t}");
                out.flush()?;
            }
            Some(Event::Done(d)) if json => println!("{}", json!({"done": done_json(&d)})),
            Some(Event::Done(d)) => print_done(&d),
            None => {}
        }
    }
    Ok(())
}

pub async fn backends(endpoint: GeneratorEndpoint) -> anyhow::Result<()> {
    let mut c = client(&endpoint).await?;
    let r = c.list_backends(v1::ListBackendsRequest {}).await.map_err(status)?.into_inner();
    for b in r.backends {
        println!(
            "{}",
            json!({"name": b.name, "kind": b.kind, "model": b.model, "context_window": b.context_window,
                   "max_concurrent": b.max_concurrent, "default": b.default})
        );
    }
    Ok(())
}
