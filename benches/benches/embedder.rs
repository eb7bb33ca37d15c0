//! Embedder throughput in one run on one machine, written to docs/benchmarks.md:
//!
//! - raw in-process ONNX Runtime (tokenise + pad + run + pool, no gRPC, no batcher) at batch 1
//!   and 32: the ceiling;
//! - the embedder served over gRPC on loopback, 1 and 32 closed-loop clients sending one text
//!   per request (so batches must be formed by dynamic batching); the clients run in the same
//!   process and share the cores with the server;
//! - sentence-transformers (PyTorch) when `RAGD_ST_PYTHON` (a Python with sentence-transformers)
//!   and `RAGD_ST_MODEL` (the model directory) are set.
//!
//! `cargo bench -p ragd-bench --bench embedder` (or `make bench`); `RAGD_BENCH_SECS` sets each
//! measurement's length (default 10 s).

use std::sync::Arc;
use std::time::Duration;

use ragd_bench::{
    LoadConfig, LoadReport, Mode, bench_secs as secs, embedder_batch, mean_tokens, median, planned_batch,
    ragd_home, raw_ort, raw_ort_for, report, run, sample_texts, token_lens,
};
use ragd_core::config::DEFAULT_MAX_MESSAGE_BYTES;
use ragd_embedder::config::Device;
use ragd_embedder::manifest::Manifest;
use ragd_embedder::model::TextModel;
use ragd_embedder::ort_backend::{OrtBackend, environment};
use ragd_embedder::{EmbedderConfig, serve};
use ragd_proto::v1::{self, embedder_client::EmbedderClient};

const MODEL: &str = "all-MiniLM-L6-v2";
const WORDS: usize = 50;

async fn grpc_load(url: &str, clients: usize, texts: Arc<Vec<String>>) -> LoadReport {
    let mut conns = Vec::new();
    for _ in 0..4 {
        let ch = ragd_core::client::connect(url).await.expect("connect");
        conns.push(EmbedderClient::new(ch).max_decoding_message_size(DEFAULT_MAX_MESSAGE_BYTES));
    }
    let config = LoadConfig { clients, mode: Mode::Closed, duration: secs(), warmup: Duration::from_secs(2) };
    run(&config, move |i| {
        let mut c = conns[i as usize % conns.len()].clone();
        let text = texts[i as usize % texts.len()].clone();
        async move {
            let r = c.embed(v1::EmbedRequest { texts: vec![text], ..Default::default() }).await?;
            Ok(r.into_inner().embeddings.len() as u64)
        }
    })
    .await
}

/// sentence-transformers' own throughput at batch 32, if a Python with it is configured.
fn sentence_transformers(texts: &[String]) -> Option<f64> {
    let python = std::env::var("RAGD_ST_PYTHON").ok()?;
    let model = std::env::var("RAGD_ST_MODEL").ok()?;
    let input = std::env::temp_dir().join(format!("ragd-bench-texts-{}.json", std::process::id()));
    std::fs::write(&input, serde_json::to_string(texts).ok()?).ok()?;
    let script = r#"
import json, sys, time
from sentence_transformers import SentenceTransformer
texts = json.load(open(sys.argv[1])); secs = float(sys.argv[3])
m = SentenceTransformer(sys.argv[2], device="cpu")
m.encode(texts[:64], batch_size=32)
n, t0, i = 0, time.perf_counter(), 0
while time.perf_counter() - t0 < secs:
    chunk = [texts[(i * 32 + k) % len(texts)] for k in range(32)]
    n += len(m.encode(chunk, batch_size=32)); i += 1
print(n / (time.perf_counter() - t0))
"#;
    let out = std::process::Command::new(python)
        .args(["-c", script, &input.display().to_string(), &model, &secs().as_secs_f64().to_string()])
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .ok()?;
    let _ = std::fs::remove_file(&input);
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// Budgets (padded tokens per batch) and text lengths (words) of the batch-budget sweep.
const SWEEP_BUDGETS: [usize; 4] = [256, 1024, 4096, 16384];
const SWEEP_WORDS: [usize; 3] = [10, 50, 200];
const SWEEP_ROUNDS: usize = 3;
const SWEEP_CELL: Duration = Duration::from_secs(2);

/// Raw ORT throughput per (text length, batch budget), as a markdown table.
fn budget_sweep(model: &TextModel, backend: &mut OrtBackend) -> String {
    let sets: Vec<(Vec<String>, f64, Vec<usize>)> = SWEEP_WORDS
        .iter()
        .map(|&w| {
            let texts = sample_texts(512, w);
            let lens = token_lens(model, &texts);
            let batches = SWEEP_BUDGETS.iter().map(|&b| planned_batch(&lens, b, 64)).collect();
            (texts, mean_tokens(&lens[..64]), batches)
        })
        .collect();
    let mut cells = vec![vec![Vec::new(); SWEEP_BUDGETS.len()]; sets.len()];
    for round in 0..SWEEP_ROUNDS {
        for (si, (texts, _, batches)) in sets.iter().enumerate() {
            for (bi, &batch) in batches.iter().enumerate() {
                let r = raw_ort_for(model, backend, texts, batch, SWEEP_CELL);
                eprintln!("sweep round {round}: {} words, batch {batch}: {r:.1}/s", SWEEP_WORDS[si]);
                cells[si][bi].push(r);
            }
        }
    }
    let mut table = String::from("| texts |");
    for b in SWEEP_BUDGETS {
        table += &format!(" budget {b} |");
    }
    table += "\n|---|";
    table += &"---:|".repeat(SWEEP_BUDGETS.len());
    table += "\n";
    for (si, (_, avg, batches)) in sets.iter().enumerate() {
        table += &format!("| {} words (≈ {avg:.0} tokens) |", SWEEP_WORDS[si]);
        for (bi, batch) in batches.iter().enumerate() {
            table += &format!(" {:.1} (batch {batch}) |", median(cells[si][bi].clone()));
        }
        table += "\n";
    }
    table
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let home = ragd_home();
    let ort_lib = home.join("lib/libonnxruntime.so.1.31.1");
    let manifest = Manifest::load(&home.join("models")).expect("models (run scripts/setup)");
    let spec = manifest.models.iter().find(|m| m.name == MODEL).expect("MiniLM in manifest").clone();
    let texts = sample_texts(1024, WORDS);

    // Raw ONNX Runtime in-process.
    let env = environment(&ort_lib).expect("onnx runtime");
    let model = TextModel::load(spec.clone()).expect("tokenizer");
    let lens = token_lens(&model, &texts);
    let avg_tokens = mean_tokens(&lens[..256]);
    let mut backend = OrtBackend::new(&env, &spec, Device::Cpu, 0).expect("session");
    let raw_1 = raw_ort(&model, &mut backend, &texts, 1);
    let raw_32 = raw_ort(&model, &mut backend, &texts, 32);
    let batch = embedder_batch(&lens);
    let raw_own = raw_ort(&model, &mut backend, &texts, batch);
    eprintln!("raw ORT: batch 1 {raw_1:.1}/s, batch 32 {raw_32:.1}/s, batch {batch} {raw_own:.1}/s");
    let sweep = budget_sweep(&model, &mut backend);
    drop(backend);

    // The embedder through gRPC.
    let config = EmbedderConfig {
        models_dir: home.join("models"),
        ort_library: ort_lib,
        models: vec![MODEL.into()],
        ..EmbedderConfig::default()
    };
    let (one, many) = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(config.clone(), listener, async {
            let _ = stop_rx.await;
        }));
        loop {
            if let Ok(ch) = ragd_core::client::connect(&url).await
                && EmbedderClient::new(ch).list_models(v1::ListModelsRequest {}).await.is_ok()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let texts = Arc::new(texts.clone());
        let one = grpc_load(&url, 1, texts.clone()).await;
        let many = grpc_load(&url, 32, texts).await;
        let _ = stop_tx.send(());
        let _ = server.await;
        (one, many)
    });
    eprintln!("gRPC: 1 client {:.1}/s, 32 clients {:.1}/s", one.items_per_sec, many.items_per_sec);
    let st = sentence_transformers(&texts);

    let failed = one.requests_failed + many.requests_failed;
    let st_line = match st {
        Some(v) => format!(
            "| sentence-transformers (PyTorch, CPU), batch 32 | {v:.1} | {:.2}× of it through gRPC at 32 clients |",
            many.items_per_sec / v
        ),
        None => {
            "| sentence-transformers | not measured in this run (set RAGD_ST_PYTHON and RAGD_ST_MODEL) | |"
                .into()
        }
    };
    let body = format!(
        "## Embedder throughput ({MODEL}, fp32, CPU)\n\n\
         Measured by `cargo bench -p ragd-bench --bench embedder` in one run on: {machine}.\n\
         Inputs: {WORDS}-word texts (≈ {avg_tokens:.0} tokens), one text per gRPC request; {secs:.0} s per \
         measurement after warm-up. Defaults: 1 worker, ONNX Runtime intra-op threads = cores, \
         max batch 64 texts / {budget} padded tokens (the CPU default; {batch} of these texts), max wait 0 \
         (continuous batching). gRPC clients run in the bench process and share the cores with the server.\n\n\
         | path | sentences/s | ratio |\n|---|---:|---|\n\
         | raw in-process ORT, batch 1 (baseline for 1 client) | {raw_1:.1} | |\n\
         | raw in-process ORT, batch 32 | {raw_32:.1} | |\n\
         | raw in-process ORT, batch {batch} (the embedder's batch on these texts) | {raw_own:.1} | |\n\
         | gRPC, 1 client (p50 {p50_1:.2} ms, p99 {p99_1:.2} ms) | {g1:.1} | **{r1:.2}×** raw batch 1 |\n\
         | gRPC, 32 clients (p50 {p50_32:.2} ms, p99 {p99_32:.2} ms) | {g32:.1} | **{r32:.2}×** the faster raw batch ({best}) (target ≥ 0.95×) |\n\
         {st_line}\n\n\
         Failed requests during the gRPC runs: {failed}.\n\n\
         **Batch budget on a CPU.** Raw in-process ORT sentences/s by padded-token budget per batch \
         (the batch `plan` forms under it, at most 64 texts), on texts of three lengths; median of \
         {SWEEP_ROUNDS} alternating rounds of {sweep_secs:.0} s per cell. This is why the CPU default \
         budget is {budget} tokens (the GPU default is 16384): a batch whose activations outgrow the \
         cache runs slower per sentence, the more so the longer the texts (attention grows with the \
         square of the length).\n\n\
         {sweep_table}",
        machine = report::machine(),
        secs = secs().as_secs_f64(),
        p50_1 = one.latency.p50_ms,
        p99_1 = one.latency.p99_ms,
        g1 = one.items_per_sec,
        r1 = one.items_per_sec / raw_1,
        p50_32 = many.latency.p50_ms,
        p99_32 = many.latency.p99_ms,
        g32 = many.items_per_sec,
        r32 = many.items_per_sec / raw_32.max(raw_own),
        best = if raw_own > raw_32 { format!("batch {batch}") } else { "batch 32".into() },
        budget = EmbedderConfig::default().batch_tokens(),
        sweep_secs = SWEEP_CELL.as_secs_f64(),
        sweep_table = sweep,
    );
    println!("{body}");
    report::update_section(&report::benchmarks_md(), "embedder-throughput", &body)
        .expect("write docs/benchmarks.md");
}
