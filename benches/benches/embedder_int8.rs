//! int8 embedding models against their fp32 originals, in one run on one machine, written to
//! docs/benchmarks.md (section `embedder-int8`):
//!
//! - speed: sentences/s through the embedder's gRPC (1 and 32 closed-loop clients, one text per
//!   request) and raw in-process ONNX Runtime at batch 32, fp32 and int8 alternating in rounds
//!   (median of the per-round ratios);
//! - closeness: max abs difference and least cosine between the two models' vectors of the
//!   same texts;
//! - quality: Spearman against the human judgements of the Lee corpus (`ragd eval sts`' data)
//!   for both models, and recall@10 agreement — the share of fp32's exact top 10 that int8's
//!   exact top 10 keeps — on the State of the Union retrieval set (scripts/make-ict-set).
//!
//! `cargo bench -p ragd-bench --bench embedder_int8`; needs `scripts/setup --with-bench` (the
//! Lee corpus and the retrieval set). `RAGD_BENCH_INT8_MODELS` (comma-separated fp32 names,
//! default all-MiniLM-L6-v2) picks the models; `RAGD_BENCH_SECS` each measurement's length
//! (default 10 s); `RAGD_BENCH_ROUNDS` the rounds (default 3).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ragd_bench::{
    LoadConfig, LoadReport, Mode, bench_secs as secs, median, ragd_home, raw_ort, report, run, sample_texts,
};
use ragd_core::config::DEFAULT_MAX_MESSAGE_BYTES;
use ragd_embedder::config::Device;
use ragd_embedder::manifest::Manifest;
use ragd_embedder::model::TextModel;
use ragd_embedder::ort_backend::{OrtBackend, environment};
use ragd_embedder::{EmbedderConfig, serve};
use ragd_proto::v1::{self, embedder_client::EmbedderClient};

const WORDS: usize = 50;
/// Corpus documents and queries of the recall@10 agreement (the first of each file).
const CORPUS: usize = 2000;
const QUERIES: usize = 300;
const K: usize = 10;

type Client = EmbedderClient<tonic::transport::Channel>;

async fn grpc_load(url: &str, model: &str, clients: usize, texts: Arc<Vec<String>>) -> LoadReport {
    let mut conns = Vec::new();
    for _ in 0..4 {
        let ch = ragd_core::client::connect(url).await.expect("connect");
        conns.push(EmbedderClient::new(ch).max_decoding_message_size(DEFAULT_MAX_MESSAGE_BYTES));
    }
    let config = LoadConfig { clients, mode: Mode::Closed, duration: secs(), warmup: Duration::from_secs(2) };
    let model = model.to_string();
    run(&config, move |i| {
        let mut c = conns[i as usize % conns.len()].clone();
        let text = texts[i as usize % texts.len()].clone();
        let model = model.clone();
        async move {
            // A refused client waits its retry hint before its next call: the harness's closed
            // loop does that for every bench (a loop retrying at once spends the server's cores
            // on refusals).
            let r = c.embed(v1::EmbedRequest { texts: vec![text], model, ..Default::default() }).await?;
            Ok(r.into_inner().embeddings.len() as u64)
        }
    })
    .await
}

/// Every text's vector from `model`, 32 texts per request.
async fn embed_all(c: &mut Client, model: &str, texts: &[String]) -> Vec<Vec<f32>> {
    let mut out = Vec::with_capacity(texts.len());
    for batch in texts.chunks(32) {
        let r = c
            .embed(v1::EmbedRequest { texts: batch.to_vec(), model: model.into(), ..Default::default() })
            .await
            .expect("embed")
            .into_inner();
        out.extend(r.embeddings.into_iter().map(|e| e.values));
    }
    out
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Exact top-k corpus indices per query by inner product (the vectors are normalised).
fn top_k(queries: &[Vec<f32>], corpus: &[Vec<f32>]) -> Vec<Vec<usize>> {
    queries
        .iter()
        .map(|q| {
            let mut scored: Vec<(f32, usize)> =
                corpus.iter().enumerate().map(|(i, d)| (dot(q, d), i)).collect();
            scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            scored.into_iter().take(K).map(|(_, i)| i).collect()
        })
        .collect()
}

/// The `text` field of the first `n` lines of a JSONL file.
fn jsonl_texts(path: &Path, n: usize) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .take(n)
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("jsonl");
            v["text"].as_str().expect("text field").to_string()
        })
        .collect()
}

struct Quality {
    max_abs_diff: f32,
    min_cosine: f32,
    sts: (f64, f64),
    recall_agreement: f64,
    corpus: usize,
    queries: usize,
}

async fn quality(c: &mut Client, fp32: &str, int8: &str, home: &Path) -> Quality {
    // Closeness on the throughput texts.
    let texts = sample_texts(512, WORDS);
    let (a, b) = (embed_all(c, fp32, &texts).await, embed_all(c, int8, &texts).await);
    let max_abs_diff =
        a.iter().zip(&b).flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q).abs())).fold(0f32, f32::max);
    let min_cosine = a.iter().zip(&b).map(|(x, y)| dot(x, y)).fold(1f32, f32::min);

    // STS: the Lee corpus' human judgements.
    let lee = ragd_eval::sts::lee(&home.join("data/lee")).expect("Lee corpus (scripts/setup --with-bench)");
    let human: Vec<f64> = lee.pairs.iter().map(|p| p.2).collect();
    let mut sts = [0f64; 2];
    for (slot, model) in sts.iter_mut().zip([fp32, int8]) {
        let v = embed_all(c, model, &lee.texts).await;
        let sims: Vec<f64> = lee.pairs.iter().map(|&(i, j, _)| f64::from(dot(&v[i], &v[j]))).collect();
        *slot = ragd_eval::stats::spearman(&sims, &human).expect("spearman");
    }

    // Retrieval: does int8's exact top 10 keep fp32's?
    let ict = home.join("data/sotu-ict");
    let docs = jsonl_texts(&ict.join("corpus.jsonl"), CORPUS);
    let queries = jsonl_texts(&ict.join("queries.jsonl"), QUERIES);
    let mut tops = Vec::new();
    for model in [fp32, int8] {
        let d = embed_all(c, model, &docs).await;
        let q = embed_all(c, model, &queries).await;
        tops.push(top_k(&q, &d));
    }
    let kept: usize =
        tops[0].iter().zip(&tops[1]).map(|(x, y)| x.iter().filter(|i| y.contains(i)).count()).sum();
    Quality {
        max_abs_diff,
        min_cosine,
        sts: (sts[0], sts[1]),
        recall_agreement: kept as f64 / (K * queries.len()) as f64,
        corpus: docs.len(),
        queries: queries.len(),
    }
}

struct Speed {
    raw: [Vec<f64>; 2],
    one: [Vec<f64>; 2],
    many: [Vec<f64>; 2],
    p99_one: [Vec<f64>; 2],
    failed: u64,
    errors: std::collections::BTreeMap<String, u64>,
}

fn ratio_median(s: &[Vec<f64>; 2]) -> f64 {
    median(s[1].iter().zip(&s[0]).map(|(i, f)| i / f).collect())
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let home = ragd_home();
    let ort_lib = home.join("lib/libonnxruntime.so.1.31.1");
    let manifest = Manifest::load(&home.join("models")).expect("models (run scripts/setup)");
    let rounds: usize = std::env::var("RAGD_BENCH_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    let models: Vec<String> = std::env::var("RAGD_BENCH_INT8_MODELS")
        .unwrap_or_else(|_| "all-MiniLM-L6-v2".into())
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    let texts = sample_texts(1024, WORDS);
    let env = environment(&ort_lib).expect("onnx runtime");
    let mut sections = Vec::new();

    for fp32 in &models {
        let int8 = format!("{fp32}-int8");
        let specs: Vec<_> = [fp32.as_str(), int8.as_str()]
            .iter()
            .map(|n| {
                manifest.models.iter().find(|m| &m.name == n).cloned().unwrap_or_else(|| {
                    panic!("{n} is not in the manifest (scripts/setup makes NAME-int8 for every model)")
                })
            })
            .collect();
        let sizes: Vec<f64> = specs
            .iter()
            .map(|s| std::fs::metadata(&s.model).map(|m| m.len() as f64 / 1e6).unwrap_or(f64::NAN))
            .collect();
        let config = EmbedderConfig {
            models_dir: home.join("models"),
            ort_library: ort_lib.clone(),
            models: vec![fp32.clone(), int8.clone()],
            ..EmbedderConfig::default()
        };
        let mut speed = Speed {
            raw: Default::default(),
            one: Default::default(),
            many: Default::default(),
            p99_one: Default::default(),
            failed: 0,
            errors: Default::default(),
        };
        let quality = rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let url = format!("http://{}", listener.local_addr().expect("addr"));
            let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
            let server = tokio::spawn(serve(config.clone(), listener, async {
                let _ = stop_rx.await;
            }));
            let mut client = loop {
                if let Ok(ch) = ragd_core::client::connect(&url).await {
                    let mut c = EmbedderClient::new(ch).max_decoding_message_size(DEFAULT_MAX_MESSAGE_BYTES);
                    if c.list_models(v1::ListModelsRequest {}).await.is_ok() {
                        break c;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            let quality = quality(&mut client, fp32, &int8, &home).await;
            let shared = Arc::new(texts.clone());
            for round in 0..rounds {
                // Alternate which model goes first, so drift does not favour one.
                let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
                for m in order {
                    let name = [fp32.as_str(), int8.as_str()][m];
                    let one = grpc_load(&url, name, 1, shared.clone()).await;
                    let many = grpc_load(&url, name, 32, shared.clone()).await;
                    eprintln!(
                        "round {round}: {name}: gRPC 1 client {:.1}/s, 32 clients {:.1}/s, errors {:?} {:?}",
                        one.items_per_sec, many.items_per_sec, one.errors, many.errors
                    );
                    speed.one[m].push(one.items_per_sec);
                    speed.many[m].push(many.items_per_sec);
                    speed.p99_one[m].push(one.latency.p99_ms);
                    speed.failed += one.requests_failed + many.requests_failed;
                    for (code, n) in one.errors.iter().chain(&many.errors) {
                        *speed.errors.entry(code.clone()).or_default() += n;
                    }
                }
            }
            let _ = stop_tx.send(());
            let _ = server.await;
            quality
        });
        // Raw in-process ONNX Runtime, batch 32, with the server gone.
        let loaded: Vec<_> = specs
            .iter()
            .map(|s| {
                let model = TextModel::load(s.clone()).expect("tokenizer");
                let backend = OrtBackend::new(&env, s, Device::Cpu, 0).expect("session");
                (model, backend)
            })
            .collect();
        let mut loaded = loaded;
        for round in 0..rounds {
            let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
            for m in order {
                let (model, backend) = &mut loaded[m];
                let r = raw_ort(model, backend, &texts, 32);
                eprintln!("round {round}: {}: raw ORT batch 32 {r:.1}/s", specs[m].name);
                speed.raw[m].push(r);
            }
        }
        drop(loaded);

        let med = |v: &Vec<f64>| median(v.clone());
        let (rho32, rho8) = quality.sts;
        sections.push(format!(
            "### {fp32} → {int8}\n\n\
             Model file: {s32:.1} MB fp32, {s8:.1} MB int8 (the 30,522-token embedding table stays fp32).\n\n\
             | path | fp32 sentences/s | int8 sentences/s | int8 / fp32 (median of rounds) |\n|---|---:|---:|---:|\n\
             | raw in-process ORT, batch 32 | {r32:.1} | {r8:.1} | **{rr:.2}×** |\n\
             | gRPC, 1 client (p99 {p32:.1} → {p8:.1} ms) | {o32:.1} | {o8:.1} | **{or:.2}×** |\n\
             | gRPC, 32 clients | {m32:.1} | {m8:.1} | **{mr:.2}×** (target ≥ 1.8×) |\n\n\
             | quality | fp32 | int8 | |\n|---|---:|---:|---|\n\
             | Spearman vs human judgements, Lee corpus ({pairs} pairs) | {rho32:.4} | {rho8:.4} | relative loss {loss:+.2} % (target ≤ 1 %) |\n\
             | recall@{K} agreement: fp32's exact top {K} kept by int8's ({queries} queries, {corpus} passages, State of the Union set) | 1 | {agree:.3} | |\n\
             | max abs difference / least cosine between the two models' vectors (512 texts) | | {diff:.4} / {cos:.4} | |\n",
            s32 = sizes[0],
            s8 = sizes[1],
            r32 = med(&speed.raw[0]),
            r8 = med(&speed.raw[1]),
            rr = ratio_median(&speed.raw),
            p32 = med(&speed.p99_one[0]),
            p8 = med(&speed.p99_one[1]),
            o32 = med(&speed.one[0]),
            o8 = med(&speed.one[1]),
            or = ratio_median(&speed.one),
            m32 = med(&speed.many[0]),
            m8 = med(&speed.many[1]),
            mr = ratio_median(&speed.many),
            pairs = ragd_eval::sts::lee(&home.join("data/lee")).map(|l| l.pairs.len()).unwrap_or(0),
            loss = 100.0 * (rho32 - rho8) / rho32,
            queries = quality.queries,
            corpus = quality.corpus,
            agree = quality.recall_agreement,
            diff = quality.max_abs_diff,
            cos = quality.min_cosine,
        ));
        if speed.failed > 0 {
            sections.push(format!(
                "Refused or failed calls during the gRPC runs: {} ({:?}); each refused client waited its retry hint.\n",
                speed.failed, speed.errors
            ));
        }
    }

    let body = format!(
        "## int8 embedding models\n\n\
         Measured by `cargo bench -p ragd-bench --bench embedder_int8` in one run on: {machine}.\n\
         NAME-int8 is ONNX Runtime's dynamic quantization of the exported NAME (scripts/quantize_onnx.py, \
         run by scripts/setup for every model): int8 weights per output channel in every projection and \
         feed-forward MatMul, activations quantized to uint8 per tensor at run time; embeddings, \
         LayerNorm, softmax and the attention products stay fp32. Inputs for speed: {WORDS}-word texts, \
         one text per gRPC request (a client refused with RESOURCE_EXHAUSTED waits its retry hint), {secs:.0} s per measurement, {rounds} rounds alternating the models; \
         embedder defaults (CPU: 1 worker, max batch 64 texts / {budget} padded tokens).\n\n{sections}",
        machine = report::machine(),
        budget = EmbedderConfig::default().batch_tokens(),
        secs = secs().as_secs_f64(),
        sections = sections.join("\n"),
    );
    println!("{body}");
    report::update_section(&report::benchmarks_md(), "embedder-int8", &body)
        .expect("write docs/benchmarks.md");
}
