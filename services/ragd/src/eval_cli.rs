//! `ragd eval retrieval`: a BEIR-format dataset against a running indexer. The corpus goes into a
//! scratch collection with a keyword index (or an existing collection is searched), every query
//! is searched once per retrieval mode, each mode's chunks are collapsed to documents (a
//! document ranks by its best chunk) and scored with trec_eval's measures (`ragd_eval`): nDCG@10,
//! Recall@10/100, MRR@10 and MAP@100, plus the search latency the client saw.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use ragd_eval::beir::{Dataset, write_run};
use ragd_eval::metrics::{self, Measure, Run};
use ragd_proto::v1;
use serde_json::{Value, json};

use crate::indexer_cli::{IndexerEndpoint, client, status};

#[derive(Debug, Subcommand)]
pub enum EvalCommand {
    /// Retrieval quality of every mode on a BEIR-format dataset (corpus.jsonl, queries.jsonl,
    /// qrels/<split>.tsv): nDCG@10, Recall@10, Recall@100, MRR@10, MAP@100 and latency.
    Retrieval(RetrievalEvalArgs),
    /// How well each embedding model's cosine similarities follow human judgements of text
    /// pairs (Pearson's r, Spearman's ρ): the Lee corpus (--lee) or a TSV of pairs (--pairs).
    Sts(StsArgs),
    /// End to end through the generator: (question, expected answer) pairs → retrieval hit
    /// rate, answer accuracy, citation correctness and time to first token.
    Rag(RagArgs),
}

#[derive(Debug, Args)]
pub struct RagArgs {
    #[command(flatten)]
    endpoint: crate::generator_cli::GeneratorEndpoint,
    /// The collection holding the documents the answers come from.
    #[arg(long)]
    collection: String,
    /// JSONL of `{"question", "answer", "doc_id"?}`: the answer is matched case-insensitively as
    /// a substring; `doc_id`, when given, must be among the passages in the prompt for a hit.
    #[arg(long)]
    questions: PathBuf,
    /// Chunks to retrieve (0 = the generator's default).
    #[arg(long, default_value_t = 0)]
    k: u32,
    /// Tokens to generate per answer.
    #[arg(long, default_value_t = 48)]
    max_tokens: u32,
    #[command(flatten)]
    retrieval: crate::indexer_cli::RetrievalArgs,
    /// Deadline of each Ask in seconds.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
    /// Print JSON (with every question's record) instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct StsArgs {
    #[command(flatten)]
    endpoint: crate::client::EndpointArgs,
    /// The Lee corpus directory (lee.cor, similarities0-1.txt; `scripts/setup --with-test`
    /// puts it in .ragd/data/lee).
    #[arg(long, conflicts_with = "pairs", required_unless_present = "pairs")]
    lee: Option<PathBuf>,
    /// A TSV of `text1<TAB>text2<TAB>score` lines.
    #[arg(long)]
    pairs: Option<PathBuf>,
    /// Models to compare, comma-separated (default: every model the embedder serves).
    #[arg(long, value_delimiter = ',')]
    models: Vec<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Write the results (`sts.json`) and a chart of both correlations per model (`sts.svg`,
    /// `sts.png`) here.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// A retrieval setting compared by `ragd eval retrieval`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EvalMode {
    /// Dense, HNSW (exact until the collection's HNSW is built).
    Dense,
    /// Dense, exact (brute force).
    Exact,
    /// Keyword (BM25).
    Keyword,
    /// Dense + keyword, reciprocal rank fusion (k 60).
    HybridRrf,
    /// Dense + keyword, distribution-based score fusion.
    HybridDbsf,
    /// Dense + keyword, min-max scores weighted by --alpha.
    HybridWeighted,
    /// Dense, then MMR (--mmr).
    DenseMmr,
    /// Hybrid RRF, then MMR (--mmr).
    HybridMmr,
    /// Dense, then the indexer's reranker (needs its --reranker-url).
    DenseRerank,
    /// Hybrid RRF, then the indexer's reranker.
    HybridRerank,
}

impl EvalMode {
    fn name(self) -> &'static str {
        match self {
            EvalMode::Dense => "dense",
            EvalMode::Exact => "exact",
            EvalMode::Keyword => "keyword",
            EvalMode::HybridRrf => "hybrid-rrf",
            EvalMode::HybridDbsf => "hybrid-dbsf",
            EvalMode::HybridWeighted => "hybrid-weighted",
            EvalMode::DenseMmr => "dense-mmr",
            EvalMode::HybridMmr => "hybrid-mmr",
            EvalMode::DenseRerank => "dense-rerank",
            EvalMode::HybridRerank => "hybrid-rerank",
        }
    }

    fn needs_keyword(self) -> bool {
        !matches!(self, EvalMode::Dense | EvalMode::Exact | EvalMode::DenseMmr | EvalMode::DenseRerank)
    }
}

#[derive(Debug, Args)]
pub struct RetrievalEvalArgs {
    #[command(flatten)]
    endpoint: IndexerEndpoint,
    /// The dataset directory (BEIR layout).
    data: PathBuf,
    /// Which qrels/<split>.tsv to use.
    #[arg(long, default_value = "test")]
    split: String,
    /// Search this existing collection (its document ids must be the corpus ids) instead of
    /// ingesting the corpus into a scratch collection.
    #[arg(long)]
    collection: Option<String>,
    /// Keep the scratch collection (named in the output) instead of dropping it at the end.
    #[arg(long)]
    keep: bool,
    /// Embedding model of the scratch collection (default: the embedder's default).
    #[arg(long, default_value = "")]
    model: String,
    /// Chunk the scratch collection's documents by windows of this many model tokens (default:
    /// 3 sentences, 1 shared).
    #[arg(long)]
    tokens: Option<u32>,
    /// Tokens shared by consecutive windows with --tokens.
    #[arg(long, default_value_t = 0)]
    overlap: u32,
    /// Index only each document's first N chunks (`--tokens 254 --max-chunks 1` embeds
    /// documents truncated to MiniLM's window, as MTEB does).
    #[arg(long)]
    max_chunks: Option<u32>,
    /// Modes to compare, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "dense,exact,keyword,hybrid-rrf,hybrid-dbsf,dense-mmr"
    )]
    modes: Vec<EvalMode>,
    /// Chunks asked per query; collapsed to documents by their best chunk, ranked to depth 100.
    #[arg(long, default_value_t = 300)]
    chunks: u32,
    /// MMR diversity of the *-mmr modes.
    #[arg(long, default_value_t = 0.5)]
    mmr: f32,
    /// Dense weight of hybrid-weighted.
    #[arg(long, default_value_t = 0.5)]
    alpha: f32,
    /// Write each mode's run (TREC format, `<mode>.trec`), the results (`results.json`) and
    /// charts (PNG and SVG: `modes.*`, every metric per mode as bars; `recall-latency.*`,
    /// Recall@10 against median latency per mode) here.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Documents ranked for the measures: the deepest cut-off any measure uses.
const DEPTH: usize = 100;

fn request(collection: &str, query: &str, mode: EvalMode, args: &RetrievalEvalArgs) -> v1::SearchRequest {
    use v1::fusion::Method;
    let rrf = Some(Method::Rrf(v1::Rrf { k: 60 }));
    let (search_mode, fusion, exact, mmr) = match mode {
        EvalMode::Dense | EvalMode::DenseRerank => (v1::SearchMode::Dense, None, false, None),
        EvalMode::Exact => (v1::SearchMode::Dense, None, true, None),
        EvalMode::Keyword => (v1::SearchMode::Keyword, None, false, None),
        EvalMode::HybridRrf | EvalMode::HybridRerank => (v1::SearchMode::Hybrid, rrf, false, None),
        EvalMode::HybridDbsf => (v1::SearchMode::Hybrid, Some(Method::Dbsf(v1::Dbsf {})), false, None),
        EvalMode::HybridWeighted => {
            (v1::SearchMode::Hybrid, Some(Method::Weighted(v1::Weighted { alpha: args.alpha })), false, None)
        }
        EvalMode::DenseMmr => (v1::SearchMode::Dense, None, false, Some(args.mmr)),
        EvalMode::HybridMmr => (v1::SearchMode::Hybrid, rrf, false, Some(args.mmr)),
    };
    let rerank = matches!(mode, EvalMode::DenseRerank | EvalMode::HybridRerank);
    v1::SearchRequest {
        collection: collection.to_string(),
        queries: vec![v1::Query { query: Some(v1::query::Query::Text(query.to_string())) }],
        k: args.chunks,
        exact,
        mode: search_mode as i32,
        fusion: fusion.map(|method| v1::Fusion { method: Some(method) }),
        mmr: mmr.map(|diversity| v1::Mmr { diversity, candidates: 0 }),
        rerank: rerank.then_some(v1::Rerank { candidates: 0 }),
        ..Default::default()
    }
}

/// Chunks (in the indexer's order) → the first `DEPTH` distinct documents, scored so that
/// trec_eval's order (score descending) is the indexer's: DEPTH − position.
fn collapse(hits: &[v1::Hit]) -> Vec<(String, f64)> {
    let mut seen = HashSet::new();
    hits.iter()
        .filter(|h| seen.insert(h.doc_id.clone()))
        .take(DEPTH)
        .enumerate()
        .map(|(i, h)| (h.doc_id.clone(), (DEPTH - i) as f64))
        .collect()
}

fn median_ms(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    match xs.len() {
        0 => 0.0,
        n if n % 2 == 1 => xs[n / 2],
        n => (xs[n / 2 - 1] + xs[n / 2]) / 2.0,
    }
}

pub async fn eval(command: EvalCommand) -> anyhow::Result<()> {
    match command {
        EvalCommand::Retrieval(args) => retrieval(args).await,
        EvalCommand::Sts(args) => sts(args).await,
        EvalCommand::Rag(args) => rag(args).await,
    }
}

async fn retrieval(args: RetrievalEvalArgs) -> anyhow::Result<()> {
    let data = Dataset::load(&args.data, &args.split)?;
    anyhow::ensure!(
        !data.queries.is_empty(),
        "{}: no query of queries.jsonl is judged in qrels/{}.tsv",
        args.data.display(),
        args.split
    );
    anyhow::ensure!(!args.modes.is_empty(), "--modes: name at least one mode");
    if args.out.is_some() {
        // TREC run files are whitespace-separated: say so before searching, not after.
        let ids = data.corpus.iter().map(|d| &d.id).chain(data.queries.iter().map(|(id, _)| id));
        if let Some(bad) = ids.into_iter().find(|id| id.is_empty() || id.contains(char::is_whitespace)) {
            anyhow::bail!("--out: id {bad:?} is empty or has white space, which a TREC run file cannot hold");
        }
    }
    let mut c = client(&args.endpoint).await?;
    let quiet = args.endpoint.json;
    let (collection, scratch) = match &args.collection {
        Some(name) => (name.clone(), false),
        None => {
            let name = format!("eval-{}-{}", std::process::id(), chrono::Utc::now().timestamp());
            let policy = match args.tokens {
                Some(size) => v1::chunking::Policy::Tokens(v1::Window { size, overlap: args.overlap }),
                None => v1::chunking::Policy::Sentences(v1::Window { size: 3, overlap: 1 }),
            };
            c.create_collection(v1::CreateCollectionRequest {
                name: name.clone(),
                model: args.model.clone(),
                distance: v1::Distance::Cosine as i32,
                shards: 1,
                chunking: Some(v1::Chunking { policy: Some(policy) }),
                keyword: Some(v1::KeywordIndex::default()),
                max_chunks: args.max_chunks.unwrap_or(0),
                ..Default::default()
            })
            .await
            .map_err(status)
            .context("creating the scratch collection")?;
            (name, true)
        }
    };
    let result = run_modes(&mut c, &collection, scratch, &data, &args, quiet).await;
    if scratch && !args.keep {
        let dropped = c.drop_collection(v1::DropCollectionRequest { name: collection.clone() }).await;
        if let Err(s) = dropped {
            eprintln!("warning: could not drop the scratch collection {collection}: {}", s.message());
        }
    }
    let report = result?;
    if let Some(out) = &args.out {
        std::fs::write(out.join("results.json"), serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", out.join("results.json").display()))?;
        retrieval_charts(out, &report)?;
    }
    if quiet {
        println!("{report}");
    } else {
        print_table(&report);
    }
    Ok(())
}

async fn run_modes(
    c: &mut ragd_proto::v1::indexer_client::IndexerClient<ragd_core::upstream::Upstream>,
    collection: &str,
    scratch: bool,
    data: &Dataset,
    args: &RetrievalEvalArgs,
    quiet: bool,
) -> anyhow::Result<Value> {
    let bar = |len: usize, what: &str| {
        let bar = if quiet { ProgressBar::hidden() } else { ProgressBar::new(len as u64) };
        bar.set_style(
            ProgressStyle::with_template(&format!(
                "{{bar:40}} {{pos}}/{{len}} {what} {{per_sec}} eta {{eta}}"
            ))
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    };
    if scratch {
        let b = bar(data.corpus.len(), "documents");
        for batch in data.corpus.chunks(64) {
            let documents = batch
                .iter()
                .map(|d| v1::Document {
                    id: d.id.clone(),
                    text: d.passage(),
                    metadata: None,
                    vector: Vec::new(),
                })
                .collect();
            let r = c
                .upsert_batch(v1::UpsertRequest { collection: collection.to_string(), documents })
                .await
                .map_err(status)
                .context("ingesting the corpus")?
                .into_inner();
            if let Some(f) = r.failed.first() {
                anyhow::bail!("corpus document {:?} was refused: {}", f.id, f.reason);
            }
            b.inc(batch.len() as u64);
        }
        b.finish_and_clear();
    }
    let info = c
        .describe_collection(v1::DescribeCollectionRequest { name: collection.to_string() })
        .await
        .map_err(status)?
        .into_inner();
    if let Some(out) = &args.out {
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    }
    let mut modes = Vec::new();
    for mode in &args.modes {
        if mode.needs_keyword() && info.keyword.is_none() {
            anyhow::bail!("--modes {}: collection {collection} has no keyword index", mode.name());
        }
        let b = bar(data.queries.len(), mode.name());
        let mut run = Run::new();
        let mut latencies = Vec::with_capacity(data.queries.len());
        for (id, text) in &data.queries {
            let started = Instant::now();
            let r = c
                .search(request(collection, text, *mode, args))
                .await
                .map_err(status)
                .with_context(|| format!("mode {}, query {id}", mode.name()))?
                .into_inner();
            latencies.push(started.elapsed().as_secs_f64() * 1e3);
            let hits = r.results.first().map(|r| r.hits.as_slice()).unwrap_or_default();
            run.insert(id.clone(), collapse(hits));
            b.inc(1);
        }
        b.finish_and_clear();
        let evaluation = metrics::evaluate(&data.qrels, &run, &metrics::BEIR);
        if let Some(out) = &args.out {
            write_run(&out.join(format!("{}.trec", mode.name())), &run, mode.name())?;
        }
        let means: BTreeMap<String, f64> = evaluation.mean.iter().map(|(m, v)| (m.name(), *v)).collect();
        modes.push(json!({
            "mode": mode.name(),
            "metrics": means,
            "queries": evaluation.per_query.len(),
            "latency_ms_p50": median_ms(latencies),
        }));
    }
    Ok(json!({
        "dataset": args.data.display().to_string(),
        "split": args.split,
        "collection": collection,
        "scratch": scratch,
        "kept": scratch && args.keep,
        "documents": data.corpus.len(),
        "queries": data.queries.len(),
        "points": info.points,
        "indexed_vectors": info.indexed_vectors,
        "chunks_per_query": args.chunks,
        "modes": modes,
    }))
}

/// `modes.{svg,png}` and `recall-latency.{svg,png}` of a retrieval report.
fn retrieval_charts(out: &std::path::Path, report: &Value) -> anyhow::Result<()> {
    use ragd_eval::plot;
    let modes = report["modes"].as_array().cloned().unwrap_or_default();
    let names: Vec<String> = modes.iter().map(|m| m["mode"].as_str().unwrap_or("").to_string()).collect();
    let value = |m: &Value, key: &str| m["metrics"][key].as_f64().unwrap_or(f64::NAN);
    let series: Vec<(String, Vec<f64>)> = metrics::BEIR
        .iter()
        .map(|measure| {
            let name = measure.name();
            let values = modes.iter().map(|m| value(m, &name)).collect();
            (name, values)
        })
        .collect();
    let title = format!("{}: retrieval quality per mode", dataset_name(report));
    plot::bars(
        &out.join("modes"),
        &plot::Bars { title: &title, y_label: "score", categories: &names, series: &series },
    )?;
    let recall = Measure::Recall(10).name();
    let points: Vec<(String, f64, f64)> = modes
        .iter()
        .zip(&names)
        .map(|(m, name)| (name.clone(), m["latency_ms_p50"].as_f64().unwrap_or(f64::NAN), value(m, &recall)))
        .collect();
    let title = format!("{}: {recall} against latency", dataset_name(report));
    plot::scatter(
        &out.join("recall-latency"),
        &plot::Scatter {
            title: &title,
            x_label: "median search latency (ms, client side)",
            y_label: &recall,
            points: &points,
        },
    )?;
    Ok(())
}

/// The last path component of the report's dataset.
fn dataset_name(report: &Value) -> String {
    let path = report["dataset"].as_str().unwrap_or("");
    std::path::Path::new(path)
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.to_string())
}

fn print_table(report: &Value) {
    println!(
        "{}: {} documents ({} chunks, {} in HNSW), {} queries, collection {}",
        report["dataset"].as_str().unwrap_or(""),
        report["documents"],
        report["points"],
        report["indexed_vectors"],
        report["queries"],
        report["collection"].as_str().unwrap_or(""),
    );
    let names: Vec<String> = metrics::BEIR.iter().map(|m: &Measure| m.name()).collect();
    println!("{:<16}{}  p50 ms", "mode", names.iter().map(|n| format!("{n:>11}")).collect::<String>());
    for m in report["modes"].as_array().into_iter().flatten() {
        let values: String =
            names.iter().map(|n| format!("{:>11.4}", m["metrics"][n].as_f64().unwrap_or(f64::NAN))).collect();
        println!(
            "{:<16}{values}  {:>6.1}",
            m["mode"].as_str().unwrap_or(""),
            m["latency_ms_p50"].as_f64().unwrap_or(f64::NAN)
        );
    }
}

/// Texts per Embed call of `ragd eval sts`.
const STS_BATCH: usize = 32;

async fn sts(args: StsArgs) -> anyhow::Result<()> {
    let (source, data) = match (&args.lee, &args.pairs) {
        (Some(dir), _) => (dir.display().to_string(), ragd_eval::sts::lee(dir)?),
        (None, Some(file)) => (file.display().to_string(), ragd_eval::sts::tsv(file)?),
        (None, None) => anyhow::bail!("--lee DIR or --pairs FILE"),
    };
    anyhow::ensure!(data.pairs.len() >= 2, "{source}: fewer than two judged pairs");
    let mut c = crate::client::embedder(&args.endpoint).await?;
    let models = if args.models.is_empty() {
        let listed = c.list_models(v1::ListModelsRequest {}).await.map_err(status)?.into_inner();
        listed.models.into_iter().map(|m| m.name).collect()
    } else {
        args.models.clone()
    };
    let human: Vec<f64> = data.pairs.iter().map(|p| p.2).collect();
    let mut rows = Vec::new();
    for model in &models {
        let started = Instant::now();
        let (mut vectors, mut truncated) = (Vec::with_capacity(data.texts.len()), 0usize);
        for batch in data.texts.chunks(STS_BATCH) {
            let r = c
                .embed(v1::EmbedRequest { texts: batch.to_vec(), model: model.clone(), ..Default::default() })
                .await
                .map_err(status)
                .with_context(|| format!("model {model}"))?
                .into_inner();
            truncated += r.embeddings.iter().filter(|e| e.truncated).count();
            vectors.extend(r.embeddings.into_iter().map(|e| e.values));
        }
        anyhow::ensure!(
            vectors.len() == data.texts.len(),
            "model {model}: the embedder answered too few vectors"
        );
        let cosines: Vec<f64> = data
            .pairs
            .iter()
            .map(|(a, b, _)| f64::from(crate::client::cosine(&vectors[*a], &vectors[*b])))
            .collect();
        let nan = f64::NAN;
        rows.push(json!({
            "model": model,
            "pearson": ragd_eval::stats::pearson(&cosines, &human).unwrap_or(nan),
            "spearman": ragd_eval::stats::spearman(&cosines, &human).unwrap_or(nan),
            "texts": data.texts.len(),
            "truncated": truncated,
            "seconds": started.elapsed().as_secs_f64(),
        }));
    }
    let report = json!({"data": source, "pairs": data.pairs.len(), "models": rows});
    if let Some(out) = &args.out {
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        std::fs::write(out.join("sts.json"), serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", out.join("sts.json").display()))?;
        let names: Vec<String> = models.clone();
        let column = |key: &str| -> Vec<f64> {
            report["models"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| r[key].as_f64().unwrap_or(f64::NAN))
                .collect()
        };
        let series = vec![
            ("Pearson r".to_string(), column("pearson")),
            ("Spearman ρ".to_string(), column("spearman")),
        ];
        let title = format!(
            "{}: cosine similarity against human judgement",
            dataset_name(&json!({"dataset": source}))
        );
        ragd_eval::plot::bars(
            &out.join("sts"),
            &ragd_eval::plot::Bars {
                title: &title,
                y_label: "correlation",
                categories: &names,
                series: &series,
            },
        )?;
    }
    if args.json {
        println!("{report}");
    } else {
        println!("{source}: {} pairs of {} texts", data.pairs.len(), data.texts.len());
        println!("{:<24}{:>10}{:>10}{:>11}", "model", "pearson", "spearman", "truncated");
        for r in report["models"].as_array().into_iter().flatten() {
            println!(
                "{:<24}{:>10.4}{:>10.4}{:>11}",
                r["model"].as_str().unwrap_or(""),
                r["pearson"].as_f64().unwrap_or(f64::NAN),
                r["spearman"].as_f64().unwrap_or(f64::NAN),
                r["truncated"]
            );
        }
    }
    Ok(())
}

/// One question of `ragd eval rag`.
#[derive(Debug, Clone, PartialEq)]
struct RagCase {
    question: String,
    answer: String,
    doc_id: Option<String>,
}

fn rag_cases(path: &std::path::Path) -> anyhow::Result<Vec<RagCase>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut cases = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let at = || format!("{}:{}", path.display(), i + 1);
        let v: Value = serde_json::from_str(line).with_context(at)?;
        let field = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        let (Some(question), Some(answer)) = (field("question"), field("answer")) else {
            anyhow::bail!("{}: needs string fields \"question\" and \"answer\"", at());
        };
        anyhow::ensure!(!answer.trim().is_empty(), "{}: empty answer", at());
        cases.push(RagCase { question, answer, doc_id: field("doc_id") });
    }
    anyhow::ensure!(!cases.is_empty(), "{}: no questions", path.display());
    Ok(cases)
}

fn contains(haystack: &str, needle: &str) -> bool {
    haystack.to_lowercase().contains(&needle.to_lowercase())
}

/// What one Ask gave: the passages in the prompt, the answer, the cited passages' texts.
struct AskOutcome {
    prompt: Vec<v1::Passage>,
    answer: String,
    cited: Vec<String>,
    first_token_ms: Option<f64>,
    total_ms: f64,
}

/// The record and the three judgements of one question.
fn judge(case: &RagCase, o: &AskOutcome) -> Value {
    let hit = match &case.doc_id {
        Some(d) => o.prompt.iter().any(|p| &p.doc_id == d && contains(&p.text, &case.answer)),
        None => o.prompt.iter().any(|p| contains(&p.text, &case.answer)),
    };
    let correct_citations = o.cited.iter().filter(|t| contains(t, &case.answer)).count();
    json!({
        "question": case.question,
        "expected": case.answer,
        "answer": o.answer,
        "prompt_doc_ids": o.prompt.iter().map(|p| p.doc_id.clone()).collect::<Vec<_>>(),
        "cited_texts": o.cited,
        "retrieval_hit": hit,
        "answer_correct": contains(&o.answer, &case.answer),
        // Cited passages that hold the answer, over all cited passages (None: nothing cited).
        "citation_precision": (!o.cited.is_empty()).then(|| correct_citations as f64 / o.cited.len() as f64),
        "first_token_ms": o.first_token_ms,
        "total_ms": o.total_ms,
    })
}

async fn ask_once(
    c: &mut ragd_proto::v1::generator_client::GeneratorClient<ragd_core::upstream::Upstream>,
    args: &RagArgs,
    case: &RagCase,
) -> anyhow::Result<AskOutcome> {
    let (mode, fusion, prefetch, mmr, rerank) = args.retrieval.proto();
    let mut request = tonic::Request::new(v1::AskRequest {
        question: case.question.clone(),
        collection: args.collection.clone(),
        k: args.k,
        sampling: Some(v1::Sampling { max_tokens: args.max_tokens, ..Default::default() }),
        mode,
        fusion,
        prefetch,
        mmr,
        rerank,
        ..Default::default()
    });
    request.set_timeout(std::time::Duration::from_secs(args.timeout_secs));
    let started = Instant::now();
    let mut stream = c.ask(request).await.map_err(status)?.into_inner();
    let (mut passages, mut answer, mut first, mut done) = (Vec::new(), String::new(), None, None);
    while let Some(msg) = stream.message().await.map_err(status)? {
        match msg.event {
            Some(v1::ask_response::Event::Retrieval(r)) => passages = r.passages,
            Some(v1::ask_response::Event::Delta(t)) => {
                first.get_or_insert_with(|| started.elapsed().as_secs_f64() * 1e3);
                answer.push_str(&t);
            }
            Some(v1::ask_response::Event::Done(d)) => done = Some(d),
            None => {}
        }
    }
    let done = done.context("the answer stream ended without its final message")?;
    let prompt: Vec<v1::Passage> = passages.into_iter().filter(|p| p.number > 0).collect();
    let cited = done
        .citations
        .iter()
        .filter(|c| c.cited)
        .filter_map(|c| prompt.iter().find(|p| p.number == c.number).map(|p| p.text.clone()))
        .collect();
    Ok(AskOutcome {
        prompt,
        answer,
        cited,
        first_token_ms: first,
        total_ms: started.elapsed().as_secs_f64() * 1e3,
    })
}

async fn rag(args: RagArgs) -> anyhow::Result<()> {
    let cases = rag_cases(&args.questions)?;
    let mut c = crate::generator_cli::client(&args.endpoint).await?;
    let mut records = Vec::with_capacity(cases.len());
    for case in &cases {
        let outcome =
            ask_once(&mut c, &args, case).await.with_context(|| format!("question {:?}", case.question))?;
        records.push(judge(case, &outcome));
    }
    let rate = |key: &str| records.iter().filter(|r| r[key] == true).count() as f64 / records.len() as f64;
    let precisions: Vec<f64> = records.iter().filter_map(|r| r["citation_precision"].as_f64()).collect();
    let ms = |key: &str| median_ms(records.iter().filter_map(|r| r[key].as_f64()).collect());
    let report = json!({
        "questions": records.len(),
        "retrieval_hit_rate": rate("retrieval_hit"),
        "answer_accuracy": rate("answer_correct"),
        "answers_citing": precisions.len(),
        "citation_precision": (!precisions.is_empty()).then(|| precisions.iter().sum::<f64>() / precisions.len() as f64),
        "first_token_ms_p50": ms("first_token_ms"),
        "total_ms_p50": ms("total_ms"),
        "records": records,
    });
    if args.json {
        println!("{report}");
    } else {
        println!(
            "{} questions: retrieval hit rate {:.3}, answer accuracy {:.3}, citation precision {} ({} answers cite), time to first token p50 {:.0} ms, answer p50 {:.0} ms",
            report["questions"],
            report["retrieval_hit_rate"].as_f64().unwrap_or(0.0),
            report["answer_accuracy"].as_f64().unwrap_or(0.0),
            report["citation_precision"].as_f64().map_or("-".to_string(), |p| format!("{p:.3}")),
            report["answers_citing"],
            report["first_token_ms_p50"].as_f64().unwrap_or(0.0),
            report["total_ms_p50"].as_f64().unwrap_or(0.0),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(doc: &str, chunk: u32) -> v1::Hit {
        v1::Hit { doc_id: doc.into(), chunk, ..Default::default() }
    }

    fn passage(number: u32, doc: &str, text: &str) -> v1::Passage {
        v1::Passage { number, doc_id: doc.into(), text: text.into(), ..Default::default() }
    }

    #[test]
    fn rag_judgements_by_hand() {
        let case = RagCase {
            question: "Capital of Germany?".into(),
            answer: "Berlin".into(),
            doc_id: Some("de".into()),
        };
        let outcome = AskOutcome {
            prompt: vec![passage(1, "fr", "Paris is in France."), passage(2, "de", "The capital is BERLIN.")],
            answer: "It is Berlin [2].".into(),
            cited: vec!["The capital is BERLIN.".into(), "Paris is in France.".into()],
            first_token_ms: Some(5.0),
            total_ms: 9.0,
        };
        let r = judge(&case, &outcome);
        assert_eq!((r["retrieval_hit"].clone(), r["answer_correct"].clone()), (json!(true), json!(true)));
        assert_eq!(r["citation_precision"], json!(0.5));
        // The answer in a passage of another document is no hit when doc_id is given.
        let elsewhere = AskOutcome { prompt: vec![passage(1, "xx", "Berlin")], cited: Vec::new(), ..outcome };
        let r = judge(&case, &elsewhere);
        assert_eq!(
            (r["retrieval_hit"].clone(), r["citation_precision"].clone()),
            (json!(false), Value::Null)
        );
    }

    #[test]
    fn rag_questions_need_question_and_answer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("q.jsonl");
        std::fs::write(&path, "{\"question\": \"q\", \"answer\": \"a\"}\n{\"question\": \"q\"}\n")
            .expect("write");
        let e = rag_cases(&path).expect_err("no answer");
        assert!(e.to_string().ends_with("q.jsonl:2: needs string fields \"question\" and \"answer\""), "{e}");
    }

    #[test]
    fn chunks_collapse_to_documents_by_their_best_chunk_in_order() {
        let hits = [hit("a", 1), hit("b", 0), hit("a", 0), hit("c", 2)];
        assert_eq!(
            collapse(&hits),
            vec![("a".to_string(), 100.0), ("b".to_string(), 99.0), ("c".to_string(), 98.0)]
        );
        let many: Vec<v1::Hit> = (0..150).map(|i| hit(&format!("d{i}"), 0)).collect();
        assert_eq!(collapse(&many).len(), DEPTH);
    }

    #[test]
    fn modes_ask_what_they_say() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            args: RetrievalEvalArgs,
        }
        let cli = Cli::parse_from(["x", "data", "--modes", "hybrid-dbsf,dense-mmr", "--mmr", "0.3"]);
        let args = cli.args;
        assert_eq!(args.modes, vec![EvalMode::HybridDbsf, EvalMode::DenseMmr]);
        let r = request("c", "q", EvalMode::HybridDbsf, &args);
        assert_eq!(r.mode, v1::SearchMode::Hybrid as i32);
        assert!(matches!(r.fusion.and_then(|f| f.method), Some(v1::fusion::Method::Dbsf(_))));
        let r = request("c", "q", EvalMode::DenseMmr, &args);
        assert_eq!((r.mode, r.mmr.map(|m| m.diversity)), (v1::SearchMode::Dense as i32, Some(0.3)));
        let r = request("c", "q", EvalMode::Exact, &args);
        assert!(r.exact && r.mmr.is_none() && r.k == 300);
    }
}
