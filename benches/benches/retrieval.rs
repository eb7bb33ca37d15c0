//! Retrieval modes in one run on one machine, written to docs/benchmarks.md (section
//! "retrieval"): what keyword (BM25), hybrid (dense + keyword, RRF) and MMR searches cost
//! against a plain dense (HNSW) search of the same collection, through the indexer's domain
//! (`Indexer::search`: checks, the store's searches, fusion, MMR) on the embedded store.
//!
//! The embedder is left out on purpose: every mode embeds the question once, the same way, and
//! the embedder bench measures that. So the indexer gets a **bench double of the embedder**
//! that answers each text's precomputed vector (embedding-like unit vectors, 384-d) from a table.
//! The texts are synthetic: words drawn from a Zipf distribution over 20 000 pseudo-words, so
//! posting lists have realistic lengths (a few very common terms, a long tail of rare ones).
//!
//! `cargo bench -p ragd-bench --bench retrieval`; `RAGD_BENCH_SECS` sets each measurement
//! (default 10 s, split over the rounds), `RAGD_BENCH_CHUNKS` the collection size (default
//! 20 000), `RAGD_BENCH_ROUNDS` the rounds (default 3); `RAGD_BENCH_ONLY=print` prints the
//! table without touching the docs.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ragd_bench::{bench_secs, embedding_like_vectors, median, report};
use ragd_indexer::Indexer;
use ragd_indexer::chunk::Chunking;
use ragd_indexer::collections::Registry;
use ragd_indexer::fusion::Fusion;
use ragd_indexer::keyword::KeywordRequest;
use ragd_indexer::peers::{EmbedderApi, InputKind, ModelFacts, Tokenized};
use ragd_indexer::service::{
    CreateCollection, DocumentIn, IndexerLimits, Mmr, QueryIn, Retrieval, SearchMode,
};
use ragd_indexer::store::edge::EdgeStore;
use ragd_indexer::store::{Distance, SearchOptions, VectorStore};

const DIM: usize = 384;
const K: usize = 10;
const EF: usize = 64;
const QUERIES: usize = 200;
const VOCAB: usize = 20_000;
const WORDS: usize = 40;

/// **Bench double of the embedder**: each known text's vector from a table (unknown texts fail).
#[derive(Debug)]
struct TableEmbedder(HashMap<String, Vec<f32>>);

#[tonic::async_trait]
impl EmbedderApi for TableEmbedder {
    async fn model_info(&self, _: &str, _: Option<Instant>) -> Result<ModelFacts, tonic::Status> {
        Ok(ModelFacts { name: "table".into(), dim: DIM, max_seq_len: 256 })
    }
    async fn tokenize(
        &self,
        _: &str,
        texts: Vec<String>,
        _: Option<Instant>,
    ) -> Result<Tokenized, tonic::Status> {
        Ok(Tokenized { offsets: vec![Vec::new(); texts.len()], special_tokens: 2 })
    }
    async fn embed(
        &self,
        _: &str,
        texts: Vec<String>,
        _: InputKind,
        _: Option<Instant>,
    ) -> Result<Vec<Vec<f32>>, tonic::Status> {
        texts
            .iter()
            .map(|t| {
                self.0.get(t).cloned().ok_or_else(|| tonic::Status::not_found(format!("no vector for {t:?}")))
            })
            .collect()
    }
}

/// xorshift64*, deterministic.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Pseudo-words "qa", "qb", ... (letters only, so the stemmer leaves most of them alone).
fn word(i: usize) -> String {
    let mut w = String::from("q");
    let mut n = i;
    loop {
        w.push((b'a' + (n % 26) as u8) as char);
        n /= 26;
        if n == 0 {
            return w;
        }
    }
}

/// Texts of `words` words drawn from Zipf(1) over the vocabulary, ranks from `from`.
fn zipf_texts(n: usize, words: usize, from: usize, seed: u64) -> Vec<String> {
    let weights: Vec<f64> = (1..=VOCAB).map(|r| 1.0 / r as f64).collect();
    let total: f64 = weights[from..].iter().sum();
    let mut cdf = Vec::with_capacity(VOCAB - from);
    let mut acc = 0.0;
    for w in &weights[from..] {
        acc += w / total;
        cdf.push(acc);
    }
    let mut rng = Rng(seed | 1);
    (0..n)
        .map(|_| {
            (0..words)
                .map(|_| word(from + cdf.partition_point(|c| *c < rng.next()).min(cdf.len() - 1)))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

fn n_chunks() -> usize {
    std::env::var("RAGD_BENCH_CHUNKS").ok().and_then(|s| s.parse().ok()).unwrap_or(20_000)
}

fn rounds() -> usize {
    std::env::var("RAGD_BENCH_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(3).max(1)
}

/// The modes compared, the first the baseline.
fn modes() -> Vec<(&'static str, Retrieval)> {
    let hybrid = Retrieval { mode: SearchMode::Hybrid, ..Retrieval::default() };
    vec![
        ("dense (HNSW)", Retrieval::default()),
        ("keyword (BM25)", Retrieval { mode: SearchMode::Keyword, ..Retrieval::default() }),
        ("hybrid, RRF (prefetch 50 per list)", hybrid),
        ("hybrid, DBSF", Retrieval { fusion: Fusion::Dbsf, ..hybrid }),
        (
            "dense + MMR (λ 0.5, 40 candidates)",
            Retrieval { mmr: Some(Mmr { diversity: 0.5, candidates: Some(40) }), ..Retrieval::default() },
        ),
    ]
}

async fn build(dir: &std::path::Path) -> (Arc<Indexer>, Vec<String>, f64) {
    let n = n_chunks();
    let docs = zipf_texts(n, WORDS, 0, 7);
    // Queries: three words from past the 50 commonest.
    let queries = zipf_texts(QUERIES, 3, 50, 11);
    let mut table: HashMap<String, Vec<f32>> = HashMap::new();
    table.extend(docs.iter().cloned().zip(embedding_like_vectors(n, DIM, 1)));
    table.extend(queries.iter().cloned().zip(embedding_like_vectors(QUERIES, DIM, 2)));
    let store: Arc<dyn VectorStore> = Arc::new(EdgeStore::new(&dir.join("shards")).expect("store"));
    let registry = Registry::load(dir).expect("registry");
    let limits = IndexerLimits {
        max_k: 1000,
        max_queries: 64,
        max_documents_per_request: 1000,
        max_shards: 8,
        indexing_threshold_kb: None,
        status_capacity: 1000,
        max_queue_wait: None,
    };
    let indexer = Indexer::open(store.clone(), registry, Arc::new(TableEmbedder(table)), limits, None)
        .await
        .expect("open");
    let create = CreateCollection {
        name: "bench".into(),
        model: String::new(),
        distance: Distance::Cosine,
        shards: 1,
        chunking: Chunking::default(),
        replication_factor: None,
        write_consistency_factor: None,
        on_disk: None,
        keyword: Some(KeywordRequest { avg_len: Some(WORDS as f32), ..KeywordRequest::default() }),
        max_chunks: None,
        exact: None,
        dim: None,
    };
    let started = Instant::now();
    indexer.create_collection(create, None).await.expect("create");
    for (i, part) in docs.chunks(1000).enumerate() {
        let batch = part
            .iter()
            .enumerate()
            .map(|(j, t)| DocumentIn {
                id: format!("d{}", i * 1000 + j),
                text: t.clone(),
                metadata: Default::default(),
                vector: None,
            })
            .collect();
        let out = indexer.upsert("bench", batch, None).await.expect("upsert");
        assert_eq!(out.failed.len(), 0);
    }
    while store.optimize("bench").await.expect("optimize") {}
    let stats = store.stats("bench").await.expect("stats");
    assert!(stats.indexed_vectors >= stats.points, "HNSW covers the collection: {stats:?}");
    (Arc::new(indexer), queries, started.elapsed().as_secs_f64())
}

/// Closed loop, one client: searches per second and the median latency.
async fn measure(indexer: &Indexer, queries: &[String], retrieval: Retrieval, secs: Duration) -> (f64, f64) {
    let options = SearchOptions { k: K, hnsw_ef: Some(EF), ..SearchOptions::default() };
    let mut latencies = Vec::new();
    let started = Instant::now();
    let mut i = 0;
    while started.elapsed() < secs {
        let q = vec![QueryIn::Text(queries[i % queries.len()].clone())];
        let t = Instant::now();
        let (hits, _) = indexer.search("bench", q, options.clone(), retrieval, None).await.expect("search");
        latencies.push(t.elapsed().as_secs_f64() * 1e3);
        assert!(hits[0].len() <= K);
        i += 1;
    }
    (i as f64 / started.elapsed().as_secs_f64(), median(latencies))
}

/// MMR's similarity matrix of 40 candidates (384-d, cosine): the median time of
/// `mmr::similarities` (ragd-exact's kernel) and of a plain scalar loop computing the same
/// matrix (the baseline), in microseconds, measured alternately.
fn gram_micros() -> (f64, f64) {
    let vs = embedding_like_vectors(40, DIM, 3);
    let scalar = |vs: &[Vec<f32>]| -> Vec<f32> {
        let norms: Vec<f32> = vs.iter().map(|v| v.iter().map(|x| x * x).sum::<f32>().sqrt()).collect();
        let mut g = vec![0.0f32; vs.len() * vs.len()];
        for (i, a) in vs.iter().enumerate() {
            for (j, b) in vs.iter().enumerate() {
                g[i * vs.len() + j] =
                    a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>() / (norms[i] * norms[j]);
            }
        }
        g
    };
    let (mut kernel, mut plain) = (Vec::new(), Vec::new());
    for _ in 0..2000 {
        let t = Instant::now();
        std::hint::black_box(
            ragd_indexer::mmr::similarities(std::hint::black_box(&vs), Distance::Cosine).expect("gram"),
        );
        kernel.push(t.elapsed().as_secs_f64() * 1e6);
        let t = Instant::now();
        std::hint::black_box(scalar(std::hint::black_box(&vs)));
        plain.push(t.elapsed().as_secs_f64() * 1e6);
    }
    (median(kernel), median(plain))
}

fn main() {
    let (gram_kernel, gram_scalar) = gram_micros();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let (indexer, queries, build_secs) = rt.block_on(build(dir.path()));
    let modes = modes();
    let rounds = rounds();
    let per = bench_secs() / (rounds * modes.len()) as u32;
    // Each round runs every mode once; a mode's ratio is the median over rounds of its
    // searches/s over the dense searches/s of the same round.
    let mut figures: Vec<Vec<(f64, f64)>> = vec![Vec::new(); modes.len()];
    for _ in 0..rounds {
        for (m, (_, retrieval)) in modes.iter().enumerate() {
            figures[m].push(rt.block_on(measure(&indexer, &queries, *retrieval, per)));
        }
    }
    let rows: String = modes
        .iter()
        .enumerate()
        .map(|(m, (name, _))| {
            let qps = median(figures[m].iter().map(|f| f.0).collect());
            let p50 = median(figures[m].iter().map(|f| f.1).collect());
            let ratio = median(figures[m].iter().zip(&figures[0]).map(|(f, d)| f.0 / d.0).collect());
            format!("| {name} | {qps:.0} | {p50:.2} | {ratio:.2}× |\n")
        })
        .collect();
    let body = format!(
        "## Retrieval modes: keyword, hybrid and MMR against dense\n\n\
         Measured by `cargo bench -p ragd-bench --bench retrieval` in one run on: {machine}.\n\n\
         One collection of {n} chunks (one shard, HNSW built; a keyword index, BM25 k1 1.2, b 0.75, \
         avg_len {WORDS}), each {WORDS} words drawn from Zipf(1) over {VOCAB} pseudo-words, with an \
         embedding-like 384-d unit vector; {QUERIES} questions of 3 words (ranks past the 50 \
         commonest). `Indexer::search` with k = {K}, hnsw_ef = {EF}, one client, closed loop, the \
         embedder replaced by a table of the precomputed vectors (a bench double: every mode embeds \
         the question the same way; the embedder bench measures that). Built in {build_secs:.0} s. \
         {rounds} rounds, every mode once per round; the ratio is the median of each round's \
         searches/s over dense's.\n\n\
         | mode | searches/s | p50 (ms) | ratio to dense |\n|---|---:|---:|---|\n{rows}\n\
         MMR's similarity matrix of 40 candidates × 384 (every pair, cosine; `mmr::similarities` \
         through ragd-exact's kernel): median {gram_kernel:.1} µs, against {gram_scalar:.1} µs for a \
         plain scalar loop computing the same matrix in the same run ({speedup:.1}× faster).\n",
        speedup = gram_scalar / gram_kernel,
        machine = report::machine(),
        n = n_chunks(),
    );
    println!("{body}");
    if std::env::var("RAGD_BENCH_ONLY").as_deref() != Ok("print") {
        report::update_section(&report::benchmarks_md(), "retrieval", &body)
            .expect("write docs/benchmarks.md");
    }
}
