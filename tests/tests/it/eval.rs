//! `ragd eval retrieval` and its metrics, checked against a peer implementation: pytrec_eval
//! (trec_eval's C code, PyPI `pytrec_eval-terrier`, installed by `scripts/setup --with-test`),
//! never against ragd's own code.
//!
//! 1. The measures of `ragd_eval::metrics` on seeded random judgements and runs (graded
//!    relevance, tied scores, unjudged documents, queries without a run) equal pytrec_eval's
//!    per query.
//! 2. `ragd eval retrieval` (the CLI, a real process) over real gRPC against an embedder (MiniLM
//!    through ONNX Runtime) and an indexer (embedded Qdrant engine) on a small BEIR-format set
//!    built from the capitals: every mode reports, the run files it writes score the same in
//!    pytrec_eval as in its JSON, the scratch collection is dropped, and bad inputs fail clearly.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use ragd_eval::metrics::{self, BEIR, Measure, Qrels, Run};
use ragd_indexer::IndexerConfig;
use ragd_proto::v1;
use ragd_tests::process::ragd_cli;
use ragd_tests::{TestEmbedder, TestIndexer, embedder_config, ragd_home};
use serde_json::{Value, json};

/// The venv's Python with pytrec_eval, or a failure that says how to get it.
fn peer_python() -> PathBuf {
    let python = ragd_home().join("venv/bin/python");
    let ok = std::process::Command::new(&python)
        .args(["-c", "import pytrec_eval"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "{} cannot import pytrec_eval: run scripts/setup --with-test", python.display());
    python
}

/// pytrec_eval's per-query values of BEIR's measures for `run` (dict of dicts of scores) and
/// `qrels`. MRR@10 is pytrec_eval's `recip_rank` on each list cut to its first 10 in trec_eval's
/// order (score, then document id, descending), as BEIR computes it.
const PEER: &str = r#"
import json, sys, pytrec_eval
data = json.load(open(sys.argv[1]))
qrels, run = data["qrels"], data["run"]
ev = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.10,100", "map_cut.100"})
out = ev.evaluate(run)
top10 = {q: dict(sorted(d.items(), key=lambda x: (x[1], x[0]), reverse=True)[:10]) for q, d in run.items()}
rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top10)
for q in out:
    out[q]["recip_rank_10"] = rr.get(q, {}).get("recip_rank", 0.0)
json.dump(out, sys.stdout)
"#;

fn peer(qrels: &Value, run: &Value) -> HashMap<String, HashMap<String, f64>> {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.json");
    std::fs::write(&input, json!({"qrels": qrels, "run": run}).to_string()).expect("write");
    let out =
        std::process::Command::new(peer_python()).args(["-c", PEER]).arg(&input).output().expect("python");
    assert!(out.status.success(), "pytrec_eval: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("peer json")
}

fn peer_name(m: Measure) -> &'static str {
    match m {
        Measure::Ndcg(10) => "ndcg_cut_10",
        Measure::Recall(10) => "recall_10",
        Measure::Recall(100) => "recall_100",
        Measure::Map(100) => "map_cut_100",
        Measure::Mrr(10) => "recip_rank_10",
        other => panic!("no peer measure for {other:?}"),
    }
}

/// xorshift64*, deterministic.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) % n
    }
}

#[test]
fn metrics_equal_pytrec_eval_on_random_runs() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let (mut qrels, mut run) = (Qrels::new(), Run::new());
    for q in 0..60 {
        let query = format!("q{q}");
        // 1–12 judged documents of 200, graded 0–3.
        let judged: HashMap<String, i32> =
            (0..1 + rng.below(12)).map(|_| (format!("d{}", rng.below(200)), rng.below(4) as i32)).collect();
        qrels.insert(query.clone(), judged);
        if q % 10 == 9 {
            continue; // judged, never retrieved
        }
        // 5–150 retrieved documents; scores from 20 values, so ties are common.
        let list: HashMap<String, f64> = (0..5 + rng.below(146))
            .map(|_| (format!("d{}", rng.below(200)), rng.below(20) as f64 / 4.0))
            .collect();
        run.insert(query, list.into_iter().collect());
    }
    let ours = metrics::evaluate(&qrels, &run, &BEIR);
    let run_json: BTreeMap<&String, BTreeMap<&String, f64>> =
        run.iter().map(|(q, l)| (q, l.iter().map(|(d, s)| (d, *s)).collect())).collect();
    let theirs = peer(&json!(qrels), &json!(run_json));
    let mut compared = 0;
    for (query, values) in &ours.per_query {
        for (measure, value) in values {
            // pytrec_eval leaves out queries the run lacks; ragd scores them 0.
            let expected = theirs.get(query).map_or(0.0, |v| v[peer_name(*measure)]);
            assert!(
                (value - expected).abs() < 1e-9,
                "{query} {measure:?}: ragd {value}, pytrec_eval {expected}"
            );
            compared += 1;
        }
    }
    assert!(
        ours.per_query.len() >= 50 && compared == ours.per_query.len() * BEIR.len(),
        "{compared} compared"
    );
    assert!(ours.per_query.len() < qrels.len(), "some queries have no relevant document and are left out");
}

/// A BEIR-format set from the capitals: the corpus "The capital of {country} is {city}." (id:
/// the country), every eighth country asked "Which city is the capital of {country}?" (judged
/// relevant: that country's document), and one question whose answer is a rare name.
fn capitals_beir(dir: &Path) -> usize {
    std::fs::create_dir_all(dir.join("qrels")).expect("mkdir");
    let capitals = ragd_tests::capitals();
    let mut corpus: Vec<String> = capitals
        .iter()
        .map(|(country, city)| {
            json!({"_id": country.replace(' ', "_"), "title": "", "text": format!("The capital of {country} is {city}.")})
                .to_string()
        })
        .collect();
    corpus.push(
        json!({"_id": "order", "title": "Warehouse", "text": "Drivers load the vans from the north gate. The crates were counted by Wojciechowski."})
            .to_string(),
    );
    let mut queries =
        vec![json!({"_id": "who", "text": "Who counted the crates, Wojciechowski?"}).to_string()];
    let mut qrels = vec!["query-id\tcorpus-id\tscore".to_string(), "who\torder\t1".to_string()];
    for (i, (country, _)) in capitals.iter().enumerate().step_by(8) {
        queries.push(
            json!({"_id": format!("q{i}"), "text": format!("Which city is the capital of {country}?")})
                .to_string(),
        );
        qrels.push(format!("q{i}\t{}\t1", country.replace(' ', "_")));
    }
    queries.push(json!({"_id": "unjudged", "text": "not in the qrels"}).to_string());
    std::fs::write(dir.join("corpus.jsonl"), corpus.join("\n")).expect("corpus");
    std::fs::write(dir.join("queries.jsonl"), queries.join("\n")).expect("queries");
    std::fs::write(dir.join("qrels/test.tsv"), qrels.join("\n")).expect("qrels");
    qrels.len() - 1
}

/// A TREC run file as pytrec_eval's run dict.
fn read_trec(path: &Path) -> Value {
    let mut run: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
    for line in std::fs::read_to_string(path).expect("run file").lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cols.len(), 6, "{line}");
        run.entry(cols[0].into()).or_default().insert(cols[2].into(), cols[4].parse().expect("score"));
    }
    json!(run)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ragd_eval_retrieval_scores_every_mode_as_pytrec_eval_does() {
    let embedder = TestEmbedder::start(embedder_config(&["all-MiniLM-L6-v2"])).await;
    let data = tempfile::tempdir().expect("tempdir");
    let indexer = TestIndexer::start(IndexerConfig {
        data_dir: data.path().join("indexer"),
        embedder_url: embedder.url.clone(),
        ..IndexerConfig::default()
    })
    .await;
    let beir = data.path().join("capitals-beir");
    let judged = capitals_beir(&beir);
    let out = data.path().join("out");
    let (url, dir, out_dir) = (indexer.url.clone(), beir.display().to_string(), out.display().to_string());
    let modes = "dense,exact,keyword,hybrid-rrf,hybrid-dbsf,dense-mmr";
    let (ok, stdout, stderr) = tokio::task::spawn_blocking(move || {
        ragd_cli(&[
            "eval",
            "retrieval",
            "--indexer",
            &url,
            &dir,
            "--modes",
            modes,
            "--out",
            &out_dir,
            "--json",
        ])
    })
    .await
    .expect("cli");
    assert!(ok, "{stderr}");
    let report: Value = serde_json::from_str(&stdout).expect("json report");
    assert_eq!(report["queries"], judged, "{report}");
    assert_eq!(report["documents"], ragd_tests::capitals().len() + 1);
    assert_eq!(report["scratch"], true);
    let qrels: Value = {
        let mut q: BTreeMap<String, BTreeMap<String, i32>> = BTreeMap::new();
        for line in std::fs::read_to_string(beir.join("qrels/test.tsv")).expect("qrels").lines().skip(1) {
            let c: Vec<&str> = line.split('\t').collect();
            q.entry(c[0].into()).or_default().insert(c[1].into(), c[2].parse().expect("rel"));
        }
        json!(q)
    };
    let mut ndcg = HashMap::new();
    for m in report["modes"].as_array().expect("modes") {
        let mode = m["mode"].as_str().expect("mode");
        assert_eq!(m["queries"], judged, "{mode}");
        let theirs = peer(&qrels, &read_trec(&out.join(format!("{mode}.trec"))));
        for measure in BEIR {
            let expected: f64 = theirs.values().map(|v| v[peer_name(measure)]).sum::<f64>() / judged as f64;
            let got = m["metrics"][measure.name()].as_f64().expect("metric");
            assert!(
                (got - expected).abs() < 1e-9,
                "{mode} {}: ragd {got}, pytrec_eval {expected}",
                measure.name()
            );
        }
        assert!(m["latency_ms_p50"].as_f64().expect("latency") > 0.0);
        ndcg.insert(mode.to_string(), m["metrics"]["nDCG@10"].as_f64().expect("ndcg"));
    }
    assert_eq!(ndcg.len(), 6, "{ndcg:?}");
    // MiniLM answers "which city is the capital of X" from "The capital of X is Y." well; the
    // rare name is found by the keyword modes. Loose floors: this checks the pipeline, not MiniLM.
    for mode in ["dense", "exact", "hybrid-rrf"] {
        assert!(ndcg[mode] > 0.7, "{mode}: {ndcg:?}");
    }
    assert!(ndcg["keyword"] > 0.5, "{ndcg:?}");
    let results: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).expect("results.json"))
            .expect("json");
    assert_eq!(results, report);
    // The charts: every mode's bars and the recall/latency points, as SVG (with the mode names)
    // and PNG (with the metrics' colours drawn).
    for chart in ["modes", "recall-latency"] {
        let svg = std::fs::read_to_string(out.join(format!("{chart}.svg"))).expect("svg");
        for mode in ["dense", "keyword", "hybrid-rrf", "dense-mmr"] {
            assert!(svg.contains(mode), "{chart}.svg names {mode}");
        }
        let png = image::open(out.join(format!("{chart}.png"))).expect("png").to_rgb8();
        // Pixels in the series' or points' colours (points of modes with the same recall and
        // latency cover each other; a bar is hundreds of pixels, a point of radius 5 dozens).
        let colours: Vec<[u8; 3]> = ragd_eval::plot::PALETTE.iter().map(|(r, g, b)| [*r, *g, *b]).collect();
        let drawn = png.pixels().filter(|p| colours.contains(&p.0)).count();
        assert!(drawn > 60, "{chart}.png has drawn marks: {drawn} pixels");
    }

    // The scratch collection is gone.
    let mut client = indexer.client().await;
    let left = client.list_collections(v1::ListCollectionsRequest {}).await.expect("list").into_inner();
    assert!(
        left.collections.is_empty(),
        "{:?}",
        left.collections.iter().map(|c| &c.name).collect::<Vec<_>>()
    );

    // MTEB's setting: documents truncated to their first window (--max-chunks 1), kept to look at.
    let (url, dir) = (indexer.url.clone(), beir.display().to_string());
    let (ok, stdout, stderr) = tokio::task::spawn_blocking(move || {
        ragd_cli(&[
            "eval",
            "retrieval",
            "--indexer",
            &url,
            &dir,
            "--tokens",
            "16",
            "--max-chunks",
            "1",
            "--modes",
            "exact",
            "--keep",
            "--json",
        ])
    })
    .await
    .expect("cli");
    assert!(ok, "{stderr}");
    let truncated: Value = serde_json::from_str(&stdout).expect("json");
    let kept = truncated["collection"].as_str().expect("collection").to_string();
    let info = client
        .describe_collection(v1::DescribeCollectionRequest { name: kept.clone() })
        .await
        .expect("describe the kept collection")
        .into_inner();
    assert_eq!(info.max_chunks, 1);
    assert_eq!(info.points, info.documents, "one chunk per document: {info:?}");
    client.drop_collection(v1::DropCollectionRequest { name: kept }).await.expect("drop");

    // Bad inputs: a directory without the files; keyword modes on a collection without a
    // keyword index.
    client
        .create_collection(v1::CreateCollectionRequest { name: "plain".into(), ..Default::default() })
        .await
        .expect("create plain");
    let (url, dir, missing) =
        (indexer.url.clone(), beir.display().to_string(), data.path().join("nothing").display().to_string());
    let (missing_run, plain_run) = tokio::task::spawn_blocking(move || {
        (
            ragd_cli(&["eval", "retrieval", "--indexer", &url, &missing]),
            ragd_cli(&[
                "eval",
                "retrieval",
                "--indexer",
                &url,
                &dir,
                "--collection",
                "plain",
                "--modes",
                "keyword",
            ]),
        )
    })
    .await
    .expect("cli");
    assert!(!missing_run.0 && missing_run.2.contains("corpus.jsonl"), "{}", missing_run.2);
    assert!(!plain_run.0 && plain_run.2.contains("plain has no keyword index"), "{}", plain_run.2);
    // Stopped before the temp dir goes: the shards flush on the way down.
    indexer.stop().await.expect("stop indexer");
    embedder.stop().await.expect("stop");
}

/// scipy's Pearson r and Spearman ρ of each (x, y) pair of lists.
const SCIPY: &str = r#"
import json, sys
from scipy import stats
out = []
for x, y in json.load(open(sys.argv[1])):
    out.append([float(stats.pearsonr(x, y)[0]), float(stats.spearmanr(x, y)[0])])
json.dump(out, sys.stdout)
"#;

fn scipy(series: &[(Vec<f64>, Vec<f64>)]) -> Vec<[f64; 2]> {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.json");
    std::fs::write(&input, json!(series).to_string()).expect("write");
    let out =
        std::process::Command::new(peer_python()).args(["-c", SCIPY]).arg(&input).output().expect("python");
    assert!(out.status.success(), "scipy: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("scipy json")
}

#[test]
fn correlations_equal_scipy_with_ties() {
    let mut rng = Rng(42);
    let series: Vec<(Vec<f64>, Vec<f64>)> = (0..20)
        .map(|i| {
            let n = 3 + rng.below(200) as usize;
            // Every other series draws from few values: many ties on both sides.
            let levels = if i % 2 == 0 { 1_000_000 } else { 5 };
            let x: Vec<f64> = (0..n).map(|_| rng.below(levels) as f64).collect();
            let y: Vec<f64> = x.iter().map(|v| v * 0.5 + rng.below(levels) as f64).collect();
            (x, y)
        })
        .filter(|(x, y)| x.iter().any(|v| *v != x[0]) && y.iter().any(|v| *v != y[0]))
        .collect();
    assert!(series.len() >= 15);
    let theirs = scipy(&series);
    for ((x, y), [r, rho]) in series.iter().zip(theirs) {
        let ours =
            (ragd_eval::stats::pearson(x, y).expect("r"), ragd_eval::stats::spearman(x, y).expect("rho"));
        assert!(
            (ours.0 - r).abs() < 1e-9 && (ours.1 - rho).abs() < 1e-9,
            "ragd {ours:?}, scipy ({r}, {rho})"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ragd_eval_sts_on_the_lee_corpus_matches_scipy_on_the_embedders_vectors() {
    let lee = ragd_home().join("data/lee");
    assert!(lee.join("lee.cor").is_file(), "{} missing: run scripts/setup --with-test", lee.display());
    let models = ["all-MiniLM-L6-v2", "all-mpnet-base-v2"];
    let embedder = TestEmbedder::start(embedder_config(&models)).await;
    let charts = tempfile::tempdir().expect("tempdir");
    let (url, dir, out) =
        (embedder.url.clone(), lee.display().to_string(), charts.path().display().to_string());
    let (ok, stdout, stderr) = tokio::task::spawn_blocking(move || {
        ragd_cli(&["eval", "sts", "--endpoint", &url, "--lee", &dir, "--json", "--out", &out])
    })
    .await
    .expect("cli");
    assert!(ok, "{stderr}");
    let report: Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(report["pairs"], 1225, "{report}");
    let written: Value =
        serde_json::from_str(&std::fs::read_to_string(charts.path().join("sts.json")).expect("sts.json"))
            .expect("json");
    assert_eq!(written, report);
    let svg = std::fs::read_to_string(charts.path().join("sts.svg")).expect("sts.svg");
    assert!(
        svg.contains("all-MiniLM-L6-v2") && svg.contains("Spearman"),
        "the chart names models and measures"
    );
    assert!(charts.path().join("sts.png").is_file());
    // The same figures from the embedder's vectors, computed here and by scipy: the human
    // scores are the matrix's upper triangle, read here with its own parser.
    let text: String =
        std::fs::read(lee.join("lee.cor")).expect("lee.cor").into_iter().map(char::from).collect();
    let docs: Vec<String> = text.lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect();
    assert_eq!(docs.len(), 50);
    let matrix: Vec<Vec<f64>> = std::fs::read_to_string(lee.join("similarities0-1.txt"))
        .expect("sims")
        .lines()
        .map(|l| l.split('\t').map(|v| v.trim().parse().expect("number")).collect())
        .collect();
    let human: Vec<f64> =
        (0..50).flat_map(|i| (i + 1..50).map(move |j| (i, j))).map(|(i, j)| matrix[i][j]).collect();
    let mut client = embedder.client().await;
    let mut series = Vec::new();
    for model in models {
        let r = client
            .embed(v1::EmbedRequest { texts: docs.clone(), model: model.into(), ..Default::default() })
            .await
            .expect("embed")
            .into_inner();
        let v: Vec<Vec<f64>> =
            r.embeddings.iter().map(|e| e.values.iter().map(|x| f64::from(*x)).collect()).collect();
        let cos = |a: &[f64], b: &[f64]| {
            let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
            dot / (a.iter().map(|x| x * x).sum::<f64>().sqrt() * b.iter().map(|x| x * x).sum::<f64>().sqrt())
        };
        let cosines: Vec<f64> =
            (0..50).flat_map(|i| (i + 1..50).map(move |j| (i, j))).map(|(i, j)| cos(&v[i], &v[j])).collect();
        series.push((cosines, human.clone()));
    }
    let theirs = scipy(&series);
    let rows = report["models"].as_array().expect("models");
    assert_eq!(rows.len(), 2);
    for (row, (model, [r, rho])) in rows.iter().zip(models.iter().zip(theirs)) {
        assert_eq!(row["model"], *model);
        let (pearson, spearman) =
            (row["pearson"].as_f64().expect("r"), row["spearman"].as_f64().expect("rho"));
        // f32 cosines in the CLI, f64 here.
        assert!(
            (pearson - r).abs() < 1e-4 && (spearman - rho).abs() < 1e-4,
            "{model}: ragd ({pearson}, {spearman}), scipy ({r}, {rho})"
        );
        // Sentence embeddings follow the human judgements clearly (LSI reached 0.6 in Lee et al.).
        assert!(r > 0.4, "{model}: r {r}");
        println!("{model}: Lee corpus Pearson {r:.4}, Spearman {rho:.4}");
    }
    // A bad input: neither --lee nor --pairs.
    let url = embedder.url.clone();
    let (ok, _, stderr) = tokio::task::spawn_blocking(move || ragd_cli(&["eval", "sts", "--endpoint", &url]))
        .await
        .expect("cli");
    assert!(!ok && stderr.contains("--lee"), "{stderr}");
    embedder.stop().await.expect("stop");
}

/// `ragd eval rag` through a real generator (SmolLM2 by llama.cpp in-process) over the capitals:
/// the rates it reports are recomputed here from its per-question records with this test's own
/// substring check, and every record's retrieval judgement agrees with the passages it lists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ragd_eval_rag_reports_what_its_records_show() {
    let data = tempfile::tempdir().expect("tempdir");
    let (embedder, indexer) = ragd_tests::capitals_cluster(&data.path().join("indexer")).await;
    let generator = ragd_tests::TestGenerator::start(ragd_tests::generator_config(&indexer.url)).await;
    let capitals = ragd_tests::capitals();
    let picked: Vec<&(String, String)> = ["Germany", "France", "Japan", "Kenya", "Peru", "Norway"]
        .iter()
        .map(|c| capitals.iter().find(|(country, _)| country == c).expect("country"))
        .collect();
    let lines: Vec<String> = picked
        .iter()
        .map(|(country, city)| {
            json!({"question": format!("What is the capital of {country}?"), "answer": city, "doc_id": country}).to_string()
        })
        .collect();
    let questions = data.path().join("questions.jsonl");
    std::fs::write(&questions, lines.join("\n")).expect("questions");
    let (url, file) = (generator.url.clone(), questions.display().to_string());
    let (ok, stdout, stderr) = tokio::task::spawn_blocking(move || {
        ragd_cli(&[
            "eval",
            "rag",
            "--endpoint",
            &url,
            "--collection",
            "capitals",
            "--questions",
            &file,
            "--k",
            "4",
            "--max-tokens",
            "24",
            "--json",
        ])
    })
    .await
    .expect("cli");
    assert!(ok, "{stderr}");
    let report: Value = serde_json::from_str(&stdout).expect("json");
    let records = report["records"].as_array().expect("records");
    assert_eq!(records.len(), picked.len());
    let lower = |v: &Value| v.as_str().expect("string").to_lowercase();
    let (mut hits, mut correct) = (0, 0);
    for (r, (country, city)) in records.iter().zip(&picked) {
        let in_answer = lower(&r["answer"]).contains(&city.to_lowercase());
        assert_eq!(r["answer_correct"], in_answer, "{r}");
        let listed = r["prompt_doc_ids"].as_array().expect("ids").iter().any(|d| d == country);
        assert_eq!(r["retrieval_hit"], listed, "{r}");
        hits += usize::from(listed);
        correct += usize::from(in_answer);
        assert!(r["total_ms"].as_f64().expect("total") >= r["first_token_ms"].as_f64().unwrap_or(0.0));
    }
    let n = picked.len() as f64;
    assert_eq!(report["retrieval_hit_rate"].as_f64(), Some(hits as f64 / n));
    assert_eq!(report["answer_accuracy"].as_f64(), Some(correct as f64 / n));
    // MiniLM puts "The capital of X is Y." in the top 4 for "What is the capital of X?".
    assert!(hits >= 5, "{report}");
    println!(
        "eval rag on {} capitals: hit rate {}, accuracy {}",
        picked.len(),
        report["retrieval_hit_rate"],
        report["answer_accuracy"]
    );
    // A bad input: a questions file without answers.
    std::fs::write(&questions, "{\"question\": \"q\"}\n").expect("write");
    let (url, file) = (generator.url.clone(), questions.display().to_string());
    let (ok, _, stderr) = tokio::task::spawn_blocking(move || {
        ragd_cli(&["eval", "rag", "--endpoint", &url, "--collection", "capitals", "--questions", &file])
    })
    .await
    .expect("cli");
    assert!(!ok && stderr.contains("\"answer\""), "{stderr}");
    generator.stop().await.expect("stop generator");
    indexer.stop().await.expect("stop indexer");
    embedder.stop().await.expect("stop");
}
