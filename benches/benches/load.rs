//! Load runs with pictures: `loadgen` (release) against `ragd up` (release: embedder, indexer
//! with the embedded Qdrant engine, generator with SmolLM2 in llama.cpp, one process), the way
//! an operator would run it, with the baselines measured in the same run. Written to
//! docs/benchmarks.md, section "load", with the charts in docs/plots/load/.
//!
//! 1. **Embedder ramp**: unloaded (1 client, closed loop) p99 and saturated (32 clients, closed
//!    loop) calls/s of `Embed` with 8 twelve-word texts per call; then a stepped open-loop ramp
//!    from ½× to 3× the saturated rate (default admission), drawn: latency percentiles and
//!    throughput/error codes second by second, and the HDR distribution.
//! 2. **Search recall/QPS** (ann-benchmarks style): a collection of `loadgen`'s synthetic texts
//!    ingested through the indexer (HNSW built past a small `--indexing-threshold-kb`), then
//!    `loadgen search --sweep-ef`: recall@10 of HNSW at each `hnsw_ef` against exact search on
//!    the same queries, and the queries/s each sustains with 8 clients; exact search (ef 0) is
//!    the baseline of the queries/s ratio.
//! 3. **Mixed**: ingest + search + ask at once (three open loops) for 30 s, against search
//!    alone at the same rate measured just before: the ratio of the search p99s is what the
//!    other two workloads cost it.
//!
//! Needs the release `ragd` next to this bench (`cargo build --release -p ragd` first; `RAGD_BIN`
//! overrides) and `scripts/setup` (models). `RAGD_BENCH_SECS` scales the phases (default 10).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ragd_bench::report;
use ragd_proto::v1;
use ragd_tests::process::RagdProcess;
use ragd_tests::wait_serving;
use serde_json::Value;

const COLLECTION: &str = "load";
const TEXTS_PER_CALL: &str = "8";
const WORDS: &str = "12";

/// Runs `loadgen <args>` and parses its JSON report.
fn loadgen(args: &[&str]) -> Value {
    eprintln!("load bench: loadgen {}", args.join(" "));
    let run = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .expect("run loadgen");
    assert!(run.status.success(), "loadgen {args:?} failed");
    serde_json::from_slice(&run.stdout).expect("loadgen JSON")
}

/// `loadgen mixed` on the bench's collection: `[ingest rate, docs per upsert, search rate, ask
/// rate]` for `[warm-up, measured]` seconds, then `extra` flags (each flag given once: clap
/// refuses a repeated one).
fn mixed(indexer: &str, generator: &str, rates: [f64; 4], [warmup, secs]: [f64; 2], extra: &[&str]) -> Value {
    let [ingest, docs, search, ask] = rates.map(|r| r.to_string());
    let (warmup, secs) = (warmup.to_string(), secs.to_string());
    let mut args = vec!["mixed", "--indexer", indexer, "--generator", generator, "--collection", COLLECTION];
    args.extend(["--ingest-rate", &ingest, "--docs-per-upsert", &docs, "--search-rate", &search]);
    args.extend(["--ask-rate", &ask, "--duration-secs", &secs, "--warmup-secs", &warmup]);
    args.extend_from_slice(extra);
    loadgen(&args)
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0)
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

fn errors(r: &Value) -> String {
    let e = r["errors"].as_object().cloned().unwrap_or_default();
    if e.is_empty() {
        return "0".into();
    }
    e.iter().map(|(k, v)| format!("{v} {k}")).collect::<Vec<_>>().join(", ")
}

/// The ramp's steps from the report's second-by-second series: offered rate, answers/s,
/// refusals, p99 of the step's seconds (their largest p99: a conservative reading).
fn ramp_rows(r: &Value, unloaded_p99: f64) -> String {
    let mut rows = String::new();
    let series = r["series"].as_array().cloned().unwrap_or_default();
    let mut steps: Vec<(f64, Vec<&Value>)> = Vec::new();
    for s in &series {
        let rate = f(&s["offered_rate"]);
        match steps.last_mut() {
            Some((r, v)) if (*r - rate).abs() < 1e-9 => v.push(s),
            _ => steps.push((rate, vec![s])),
        }
    }
    for (rate, secs) in steps {
        let n = secs.len() as f64;
        let ok: u64 = secs.iter().map(|s| u(&s["ok"])).sum();
        let refused: u64 = secs.iter().map(|s| u(&s["errors"]["ResourceExhausted"])).sum();
        let other: u64 = secs
            .iter()
            .flat_map(|s| s["errors"].as_object().cloned().unwrap_or_default())
            .filter(|(k, _)| k != "ResourceExhausted")
            .map(|(_, v)| u(&v))
            .sum();
        let p99 = secs.iter().map(|s| f(&s["p99_ms"])).fold(0.0, f64::max);
        rows.push_str(&format!(
            "| {rate:.1} | {:.1} | {refused} | {other} | {p99:.0} | {:.1}× |\n",
            ok as f64 / n,
            p99 / unloaded_p99
        ));
    }
    rows
}

fn main() {
    let secs = ragd_bench::bench_secs().as_secs_f64();
    let plots = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/plots/load");
    std::fs::create_dir_all(&plots).expect("plots dir");
    let plot = plots.display().to_string();
    // The release `ragd` next to this bench (`RAGD_BIN` overrides), like the tests start it.
    let data = tempfile::tempdir().expect("tempdir");
    // ≈ 330 MiniLM vectors per segment before its HNSW index is built.
    let (mut up, urls) = RagdProcess::up_quiet(data.path(), &["--indexing-threshold-kb", "500"]);
    let (embedder, indexer, generator) =
        (urls["embedder"].clone(), urls["indexer"].clone(), urls["generator"].clone());
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        // Each service turns SERVING once its models are loaded.
        for (url, name) in [
            (&embedder, "ragd.v1.Embedder"),
            (&indexer, "ragd.v1.Indexer"),
            (&generator, "ragd.v1.Generator"),
        ] {
            wait_serving(url, name, Duration::from_secs(180)).await;
        }
    });
    let s = |x: f64| format!("{x}");

    // 1. Embedder: unloaded, saturated, then the ramp.
    let embed = |extra: &[&str]| {
        let mut a =
            vec!["embed", "--endpoint", &embedder, "--texts-per-request", TEXTS_PER_CALL, "--words", WORDS];
        a.extend_from_slice(extra);
        loadgen(&a)
    };
    let unloaded = embed(&["--clients", "1", "--duration-secs", &s(secs), "--warmup-secs", "2"]);
    let saturated =
        embed(&["--clients", "32", "--connections", "4", "--duration-secs", &s(secs), "--warmup-secs", "3"]);
    let sat = f(&saturated["requests_per_sec"]);
    // ½× to 4× the closed-loop saturated rate (open loops batch deeper, so the true capacity
    // sits above it; the ramp finds it).
    let step = (sat / 2.0 * 10.0).round() / 10.0;
    let ramp_arg = format!("{step:.1}:{:.1}:{step:.1}", step * 8.0);
    let ramp = embed(&[
        "--mode",
        "open",
        "--ramp",
        &ramp_arg,
        "--step-secs",
        &s((secs / 2.0).max(3.0)),
        "--clients",
        "256",
        "--connections",
        "16",
        "--warmup-secs",
        "0",
        "--plot",
        &plot,
    ]);

    // 2. Ingest a collection, wait for its HNSW index, sweep ef.
    let ingest_secs = (secs * 2.5).max(10.0);
    let ingest = mixed(&indexer, &generator, [6.0, 16.0, 0.0, 0.0], [0.0, ingest_secs], &[]);
    let info = rt.block_on(wait_indexed(&indexer));
    let sweep = loadgen(&[
        "search",
        "--endpoint",
        &indexer,
        "--collection",
        COLLECTION,
        "--query-embedder",
        &embedder,
        "--sweep-ef",
        "10,16,24,32,64,128,0",
        "--recall-queries",
        "200",
        "--k",
        "10",
        "--clients",
        "8",
        "--duration-secs",
        &s((secs / 2.0).max(3.0)),
        "--warmup-secs",
        "1",
        "--plot",
        &plot,
    ]);

    // 3. Search alone at the mixed run's search rate, then the mixed run.
    let search_rate = "20";
    let alone = loadgen(&[
        "search",
        "--endpoint",
        &indexer,
        "--collection",
        COLLECTION,
        "--mode",
        "open",
        "--rate",
        search_rate,
        "--clients",
        "64",
        "--duration-secs",
        &s(secs),
        "--warmup-secs",
        "1",
    ]);
    let mixed_secs = (secs * 3.0).max(10.0);
    let mixed = mixed(
        &indexer,
        &generator,
        [2.0, 8.0, search_rate.parse().expect("rate"), 0.2],
        [1.0, mixed_secs],
        &["--ask-max-tokens", "32", "--plot", &plot],
    );

    // Stop ragd up the way an operator does and record how it ended.
    up.signal("TERM");
    let exit = match up.wait(Duration::from_secs(60)) {
        Some(s) if s.success() => "exited 0".to_string(),
        Some(s) => format!("ended with {s}"),
        None => "still running after 60 s (killed)".to_string(),
    };

    let body = section(Figures {
        secs,
        unloaded: &unloaded,
        saturated: &saturated,
        ramp: &ramp,
        ingest: &ingest,
        info: &info,
        sweep: &sweep,
        alone: &alone,
        mixed: &mixed,
        exit,
    });
    report::update_section(&report::benchmarks_md(), "load", &body).expect("write docs/benchmarks.md");
    println!("{body}");
}

async fn wait_indexed(indexer: &str) -> v1::CollectionInfo {
    let ch = ragd_core::client::connect(indexer).await.expect("connect indexer");
    let mut c = v1::indexer_client::IndexerClient::new(ch);
    let deadline = Instant::now() + Duration::from_secs(300);
    // Every shard indexed, or indexing settled: a last segment under the threshold stays exact
    // (short runs), so the count of indexed vectors unchanged for two optimizer rounds (10 s).
    let (mut last, mut since) = (0, Instant::now());
    loop {
        let info = c
            .describe_collection(v1::DescribeCollectionRequest { name: COLLECTION.into() })
            .await
            .expect("describe")
            .into_inner();
        if info.indexed_vectors != last {
            (last, since) = (info.indexed_vectors, Instant::now());
        }
        let settled = last > 0 && since.elapsed() >= Duration::from_secs(10);
        if info.optimizer_state == "indexed" || settled {
            return info;
        }
        assert!(Instant::now() < deadline, "no HNSW index settled after 300 s: {info:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

struct Figures<'a> {
    secs: f64,
    unloaded: &'a Value,
    saturated: &'a Value,
    ramp: &'a Value,
    ingest: &'a Value,
    info: &'a v1::CollectionInfo,
    sweep: &'a Value,
    alone: &'a Value,
    mixed: &'a Value,
    exit: String,
}

fn img(name: &str, alt: &str) -> String {
    // Relative to docs/benchmarks.md.
    let p = Path::new("plots/load").join(format!("{name}.svg"));
    format!("![{alt}]({})", p.display())
}

fn section(x: Figures) -> String {
    let unloaded_p99 = f(&x.unloaded["latency"]["p99_ms"]);
    let sat = f(&x.saturated["requests_per_sec"]);
    let mut s = String::new();
    s.push_str("## Load runs with pictures: loadgen against `ragd up`\n\n");
    s.push_str(&format!(
        "Measured by `cargo build --release -p ragd && cargo bench -p ragd-bench --bench load` in one run on: {}. \
         Release `ragd up` (embedder with all-MiniLM-L6-v2 on ONNX Runtime, indexer with the embedded \
         Qdrant engine, generator with SmolLM2-135M-Instruct Q4_1 in llama.cpp; one process, \
         default admission) loaded over loopback by the release `loadgen`; latency of open loops \
         from each call's scheduled time (coordinated omission corrected). Phase length {:.0} s \
         (`RAGD_BENCH_SECS`). `ragd up` after SIGTERM: {}.\n\n",
        report::machine(),
        x.secs,
        x.exit
    ));

    s.push_str("### Embedder: a stepped ramp past saturation\n\n");
    s.push_str(&format!(
        "`Embed` of {TEXTS_PER_CALL} {WORDS}-word texts per call. Baselines from the same run: unloaded (1 client, \
         closed loop) p99 **{unloaded_p99:.0} ms**; saturated (32 clients, closed loop) **{sat:.1} calls/s**. \
         The ramp offers ½× to 4× that in steps (open loop, ≤ 256 outstanding; an open loop lets \
         the embedder batch deeper than 32 closed-loop clients do, so its real capacity is above \
         the closed-loop figure and shows where the answered rate stops following the offered \
         one). Past capacity the excess is refused at once with RESOURCE_EXHAUSTED \
         (latency-bounded admission, `--max-queue-wait-ms` 250) while the answered calls keep a \
         bounded latency. Overall: {} answered, errors: {}.\n\n",
        u(&x.ramp["requests_ok"]),
        errors(x.ramp)
    ));
    s.push_str("| offered calls/s | answered calls/s | RESOURCE_EXHAUSTED | other errors | p99 ms (worst second) | ÷ unloaded p99 |\n|---:|---:|---:|---:|---:|---:|\n");
    s.push_str(&ramp_rows(x.ramp, unloaded_p99));
    s.push('\n');
    s.push_str(&format!(
        "{}\n\n{}\n\n{}\n\n",
        img("embed-latency", "Embed latency percentiles second by second through the ramp"),
        img("embed-throughput", "Embed answers and error codes per second through the ramp"),
        img("embed-hdr", "Embed latency HDR percentile distribution")
    ));

    s.push_str("### Search: recall against queries/s over `hnsw_ef`\n\n");
    s.push_str(&format!(
        "Collection `{COLLECTION}`: {} chunks of loadgen's synthetic 40-word texts ingested through \
         the indexer ({:.1} chunks/s; errors: {}), {} of them in HNSW indexes over {} segment(s) \
         (`--indexing-threshold-kb 500`). The query texts are embedded once up front and sent as \
         vectors (`--query-embedder`), so the figures are the index's, not query embedding's (a \
         text query costs an embedding, several times the search itself). For each `hnsw_ef` \
         (Qdrant searches with at least k): recall@{} of HNSW against exact search on {} of the \
         load's own queries, then 8 clients in a closed loop. Baseline: exact search (ef 0; \
         ragd-exact) in the same run.\n\n",
        x.info.points,
        f(&x.ingest["ingest"]["items_per_sec"]),
        errors(&x.ingest["ingest"]),
        x.info.indexed_vectors,
        x.info.shards.iter().map(|s| s.segments).sum::<u64>(),
        x.sweep["k"],
        200
    ));
    s.push_str(
        "| `hnsw_ef` | recall@10 | queries/s | ÷ exact queries/s | p99 ms |\n|---:|---:|---:|---:|---:|\n",
    );
    let points = x.sweep["points"].as_array().cloned().unwrap_or_default();
    let exact_qps =
        points.iter().find(|p| u(&p["hnsw_ef"]) == 0).map(|p| f(&p["queries_per_sec"])).unwrap_or(0.0);
    for p in &points {
        let ef = u(&p["hnsw_ef"]);
        let name = if ef == 0 { "exact".to_string() } else { ef.to_string() };
        s.push_str(&format!(
            "| {name} | {:.3} | {:.0} | {:.2}× | {:.1} |\n",
            f(&p["recall"]),
            f(&p["queries_per_sec"]),
            f(&p["queries_per_sec"]) / exact_qps,
            f(&p["p99_ms"])
        ));
    }
    s.push('\n');
    s.push_str(&img("search-recall-qps", "Search recall@10 against queries per second over hnsw_ef"));
    s.push_str("\n\n");

    s.push_str("### Mixed: ingest, search and ask at once\n\n");
    let (mi, ms, ma) = (&x.mixed["ingest"], &x.mixed["search"], &x.mixed["ask"]);
    let alone_p99 = f(&x.alone["latency"]["p99_ms"]);
    s.push_str(&format!(
        "Three open loops over the same window: `UpsertBatch` of 8 documents 2×/s, `Search` 20×/s, \
         `Ask` (k 3, ≤ 32 answer tokens, read to the end) 0.2×/s. Baseline: `Search` alone at \
         20×/s just before, p99 **{alone_p99:.1} ms**; with the other two running the search p99 \
         is **{:.1} ms ({:.1}×)** — ingest embeds on the same two cores and the language model \
         decodes there too.\n\n",
        f(&ms["latency"]["p99_ms"]),
        f(&ms["latency"]["p99_ms"]) / alone_p99
    ));
    s.push_str(
        "| workload | answered | calls/s | errors | p50 ms | p99 ms |\n|---|---:|---:|---|---:|---:|\n",
    );
    for (name, r) in [("search alone (baseline)", x.alone), ("ingest", mi), ("search", ms), ("ask", ma)] {
        s.push_str(&format!(
            "| {name} | {} | {:.2} | {} | {:.1} | {:.1} |\n",
            u(&r["requests_ok"]),
            f(&r["requests_per_sec"]),
            errors(r),
            f(&r["latency"]["p50_ms"]),
            f(&r["latency"]["p99_ms"])
        ));
    }
    s.push('\n');
    for w in ["ingest", "search", "ask"] {
        s.push_str(&format!(
            "{} {}\n\n",
            img(&format!("mixed-{w}-latency"), &format!("mixed {w}: latency second by second")),
            img(&format!("mixed-{w}-throughput"), &format!("mixed {w}: answers and errors per second"))
        ));
    }
    s
}
