//! Exact search (ragd-exact) against faiss-cpu `IndexFlatIP` on the same data in the same run,
//! written to docs/benchmarks.md with the machine's read bandwidth and FMA peak probed in the
//! same run:
//!
//! - n × 384 f32 vectors (n = 100 000 and 1 000 000; `RAGD_BENCH_EXACT_SIZES`), k = 10, query
//!   batches of 1, 16, 64, 256 → queries/s for both and the ratio;
//! - batch 1 as GB/s scanned against the probed read bandwidth (1 thread and all cores);
//! - batched as GFLOP/s against the probed FMA peak (register-only FMA loop, all cores);
//! - section `exact-compressed`: every storage precision (f32, f16, bf16, int8 per dimension,
//!   int8 per vector; each without and with 4× rescoring) on embedding-like vectors
//!   (`ragd_exact::synthetic`): queries/s at batch 1 and 64 as a ratio to f32 in the same run,
//!   batch 64 as operations/s against the peak of its instruction (FMA, `vdpbf16ps`, `vpdpbusd`,
//!   each probed by a register-only loop), recall@10 against f32 exact, bytes per vector; faiss IndexFlatIP, SQfp16, SQbf16 and SQ8 on
//!   the same files as baselines. `RAGD_BENCH_EXACT_PARTS=compressed` runs only this part
//!   (`flat` only the first); `RAGD_BENCH_COMPRESSED_N` vectors (default 1 000 000).
//!
//! faiss runs from `$RAGD_HOME/bench-venv` (`scripts/setup --with-bench`); without it the
//! table says so. `cargo bench -p ragd-bench --bench exact`; `RAGD_BENCH_SECS` per measurement.
//!
//! Built with `--features cuda` on a GPU machine (`scripts/gpu-carry`), it also writes section
//! `exact-gpu`: the CUDA engine's queries/s per batch (up to 1024) against the CPU engine on the
//! same machine, same data, same run.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use ragd_bench::{bench_secs, ragd_home, report};
use ragd_exact::kernel::{DotKind, PROBE_FLOPS_PER_ITER, dot_probe, dot_probe_ops_per_iter, fma_probe};
use ragd_exact::synthetic::embedding_like;
use ragd_exact::{ExactIndex, Isa, Metric, Neighbor, Options, Precision};

const DIM: usize = 384;
const K: usize = 10;
const BATCHES: [usize; 4] = [1, 16, 64, 256];
const QUERIES: usize = 1024;
/// Alternating rounds of a paired measurement (compressed section).
const ROUNDS: u32 = 8;

fn sizes() -> Vec<usize> {
    std::env::var("RAGD_BENCH_EXACT_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![100_000, 1_000_000])
}

fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Uniform [-1, 1) floats from a fixed seed.
fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// Read bandwidth in GB/s: every thread sums its share of a 1 GiB buffer; best of 3.
fn read_bandwidth(threads: usize) -> f64 {
    let buf = vec![1.0f32; 256 << 20];
    let per = buf.len() / threads;
    let mut best = 0.0f64;
    for _ in 0..3 {
        let t = Instant::now();
        let total: f32 = std::thread::scope(|s| {
            let hs: Vec<_> = buf
                .chunks(per)
                .map(|part| {
                    s.spawn(move || {
                        let mut acc = [0.0f32; 16];
                        for c in part.chunks_exact(16) {
                            for l in 0..16 {
                                acc[l] += c[l];
                            }
                        }
                        acc.iter().sum::<f32>()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap_or(0.0)).sum()
        });
        std::hint::black_box(total);
        best = best.max((buf.len() * 4) as f64 / t.elapsed().as_secs_f64() / 1e9);
    }
    best
}

/// G operations/s of a register-only probe loop (`probe(iters)`, `ops_per_iter` operations per
/// iteration) on `threads` threads at once, after a short warm-up run.
fn probe_rate(threads: usize, ops_per_iter: usize, probe: impl Fn(usize) + Sync) -> f64 {
    let iters = 20_000_000;
    probe(1000);
    let t = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| probe(iters));
        }
    });
    (iters * ops_per_iter * threads) as f64 / t.elapsed().as_secs_f64() / 1e9
}

/// Practical FMA peak in GFLOP/s with `threads` threads.
fn fma_peak(isa: Isa, threads: usize) -> f64 {
    probe_rate(threads, PROBE_FLOPS_PER_ITER, |iters| {
        std::hint::black_box(fma_probe(isa, iters));
    })
}

/// Practical peak of a compressed dot-product instruction (`vdpbf16ps`, `vpdpbusd`) in G
/// operations/s (a product or an addition each) with `threads` threads, as [`fma_peak`]; None where
/// the CPU lacks it.
fn dot_peak(isa: Isa, kind: DotKind, threads: usize) -> Option<f64> {
    dot_probe(isa, kind, 1)?;
    Some(probe_rate(threads, dot_probe_ops_per_iter(kind), |iters| {
        std::hint::black_box(dot_probe(isa, kind, iters));
    }))
}

/// Queries/s of `search` (batch `batch` of the `nq` queries, the i-th call starting at
/// query `i * batch` mod what fits): one warm-up call, then calls for `bench_secs()` (at least 3).
fn per_second(nq: usize, batch: usize, search: impl Fn(std::ops::Range<usize>) -> usize) -> f64 {
    per_second_for(bench_secs(), nq, batch, search)
}

/// [`per_second`] over `secs`.
fn per_second_for(
    secs: std::time::Duration,
    nq: usize,
    batch: usize,
    search: impl Fn(std::ops::Range<usize>) -> usize,
) -> f64 {
    let run = |i: usize| {
        let start = (i * batch) % (nq - batch + 1);
        search(start * DIM..(start + batch) * DIM)
    };
    run(0);
    let (t, mut done, mut i) = (Instant::now(), 0usize, 0usize);
    while t.elapsed() < secs || i < 3 {
        done += run(i);
        i += 1;
    }
    done as f64 / t.elapsed().as_secs_f64()
}

fn qps(index: &ExactIndex, queries: &[f32], batch: usize) -> f64 {
    per_second(queries.len() / DIM, batch, |r| index.search(&queries[r], K).expect("search").len())
}

fn write_f32(path: &Path, v: &[f32]) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("create"));
    for x in v {
        f.write_all(&x.to_le_bytes()).expect("write");
    }
}

#[derive(serde::Deserialize)]
struct Faiss {
    version: String,
    threads: usize,
    qps: std::collections::HashMap<String, f64>,
    ids: Vec<Vec<i64>>,
}

fn faiss(data: &Path, queries: &Path) -> Option<Faiss> {
    faiss_index(data, queries, "Flat", &BATCHES)
}

/// faiss's index built by `faiss.index_factory(DIM, factory, inner product)` on the files, its
/// queries/s at `batches` and top-10 of the first 100 queries; None without faiss or on failure.
fn faiss_index(data: &Path, queries: &Path, factory: &str, batches: &[usize]) -> Option<Faiss> {
    let python = ragd_home().join("bench-venv/bin/python");
    if !python.exists() {
        return None;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("faiss_flat.py");
    let batches = batches.iter().map(|b| b.to_string()).collect::<Vec<_>>().join(",");
    let out = std::process::Command::new(python)
        .arg(script)
        .args([data.as_os_str(), queries.as_os_str()])
        .args([DIM.to_string(), batches, bench_secs().as_secs_f64().to_string(), factory.to_string()])
        .output()
        .expect("run faiss");
    if !out.status.success() {
        eprintln!("faiss {factory} failed: {}", String::from_utf8_lossy(&out.stderr));
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

fn part(name: &str) -> bool {
    std::env::var("RAGD_BENCH_EXACT_PARTS").map_or(true, |p| p.split(',').any(|x| x.trim() == name))
}

fn main() {
    if part("flat") {
        flat();
    }
    if part("compressed") {
        compressed();
    }
}

fn flat() {
    let isa = Isa::detect();
    let threads = cores();
    let bw1 = read_bandwidth(1);
    let bwn = read_bandwidth(threads);
    let peak = fma_peak(isa, threads);
    eprintln!(
        "probes: read {bw1:.1} GB/s (1 thread), {bwn:.1} GB/s ({threads}); FMA peak {peak:.0} GFLOP/s ({})",
        isa.name()
    );
    let queries = random(QUERIES * DIM, 2);
    let dir = tempfile::tempdir().expect("tempdir");
    let qpath = dir.path().join("queries.f32");
    write_f32(&qpath, &queries);

    let mut rows = String::new();
    #[allow(unused_mut)]
    let mut gpu_lines = String::new();
    // CPU engine queries/s per (n, batch) of this run: the GPU rows' baseline.
    let mut cpu_qps = std::collections::HashMap::new();
    let mut faiss_version = None;
    for n in sizes() {
        let data = random(n * DIM, 1);
        let dpath = dir.path().join("data.f32");
        write_f32(&dpath, &data);
        let base = faiss(&dpath, &qpath);
        let _ = std::fs::remove_file(&dpath);
        let ids: Vec<u64> = (0..n as u64).collect();
        let mut index = ExactIndex::new(DIM, Metric::InnerProduct, Options::default()).expect("index");
        index.add(&ids, &data).expect("add");
        if let Some(f) = &base {
            faiss_version = Some((f.version.clone(), f.threads));
            // Same data, same answers: faiss's top-10 of the first 16 queries equals ours.
            let ours = index.search(&queries[..16 * DIM], K).expect("search");
            let same = ours
                .iter()
                .zip(&f.ids[..16])
                .filter(|(a, b)| a.iter().map(|h| h.id as i64).eq(b.iter().copied()))
                .count();
            eprintln!("n={n}: {same}/16 queries have identical top-10 ids in ragd-exact and faiss");
        }
        for b in BATCHES {
            let ours = qps(&index, &queries, b);
            cpu_qps.insert((n, b), ours);
            let theirs = base.as_ref().and_then(|f| f.qps.get(&b.to_string()).copied());
            let gbs = ours * index.bytes() as f64 / 1e9;
            let gflops = ours * 2.0 * (n * DIM) as f64 / 1e9;
            let hw = if b == 1 {
                format!("{gbs:.1} GB/s = {:.0} % of {bwn:.1} GB/s read bandwidth", 100.0 * gbs / bwn)
            } else {
                format!("{gflops:.0} GFLOP/s = {:.0} % of {peak:.0} GFLOP/s FMA peak", 100.0 * gflops / peak)
            };
            let (f, ratio) = match theirs {
                Some(t) => (format!("{t:.0}"), format!("**{:.2}×**", ours / t)),
                None => ("not run".into(), String::new()),
            };
            eprintln!("n={n} batch={b}: ragd {ours:.0} q/s, faiss {f}");
            rows.push_str(&format!("| {n} | {b} | {ours:.0} | {f} | {ratio} | {hw} |\n"));
        }
        #[cfg(feature = "cuda")]
        gpu_rows(&index, &queries, n, &mut cpu_qps, &mut gpu_lines);
    }
    let faiss_note = match faiss_version {
        Some((v, t)) => format!("faiss-cpu {v} `IndexFlatIP` ({t} OpenMP threads)"),
        None => "faiss-cpu: not run (scripts/setup --with-bench)".into(),
    };
    let body = format!(
        "## Exact search (ragd-exact) vs faiss\n\n\
         Measured by `cargo bench -p ragd-bench --bench exact` in one run on: {machine}.\n\
         Uniform random f32 vectors, d = {DIM}, inner product, k = {K}; queries/s over {secs:.0} s per cell; \
         baseline {faiss_note} on the same files in the same run. ragd-exact: kernel `{isa}`, {threads} threads, \
         rows in blocks of 256 scored against groups of 64 queries. Probes in the same run: read bandwidth \
         {bw1:.1} GB/s (1 thread) / {bwn:.1} GB/s ({threads} threads); FMA peak {peak:.0} GFLOP/s \
         ({threads} threads, register-only `{isa}` loop).\n\n\
         | vectors | batch | ragd-exact q/s | faiss q/s | ratio | hardware use |\n|---:|---:|---:|---:|---|---|\n\
         {rows}\nCompressed storage (f16, bf16, int8): the section after the GPU one.\n\n{gpu}Targets: ≥ 1.0× faiss at batch 1, ≥ 2× at batch ≥ 64.\n",
        machine = report::machine(),
        secs = bench_secs().as_secs_f64(),
        isa = isa.name(),
        gpu = if gpu_lines.is_empty() {
            "GPU: not measured in this run (build with `--features cuda` on a GPU machine).\n\n"
        } else {
            "GPU: this run's CUDA figures are in the next section.\n\n"
        },
    );
    println!("{body}");
    report::update_section(&report::benchmarks_md(), "exact", &body).expect("write docs/benchmarks.md");
    if !gpu_lines.is_empty() {
        let body = format!(
            "## Exact search on a GPU (ragd-exact CUDA engine)\n\n\
             Measured by `cargo bench -p ragd-bench --features cuda --bench exact` (built by `scripts/gpu-carry`) \
             in one run on: {machine}. The same uniform random vectors as above (d = {DIM}, inner product, \
             k = {K}, f32 rows resident in device memory); queries/s over {secs:.0} s per cell, a search \
             counted from queries on the host to merged top-k on the host (upload, score kernel, top-k \
             kernel, download, host merge). Baseline: the CPU engine (`{isa}`, {threads} threads) on the \
             same machine, same data, same run.\n\n\
             Two score kernels, each measured: 64 × 64 tiles, and row groups (each row read once per \
             8 queries); the default picks one by batch size (`gpu::ScorePlan::Auto`).\n\n\
             | vectors | batch | tiled q/s | row groups q/s | CPU engine q/s | default: GPU ÷ CPU | achieved by the default |\n\
             |---:|---:|---:|---:|---:|---|---|\n\
             {gpu_lines}",
            machine = report::machine(),
            secs = bench_secs().as_secs_f64(),
            isa = isa.name(),
        );
        println!("{body}");
        report::update_section(&report::benchmarks_md(), "exact-gpu", &body)
            .expect("write docs/benchmarks.md");
    }
}

fn recall(got: &[Vec<u64>], truth: &[Vec<Neighbor>]) -> f64 {
    let found: usize =
        got.iter().zip(truth).map(|(g, t)| t.iter().filter(|n| g.contains(&n.id)).count()).sum();
    found as f64 / truth.iter().map(Vec::len).sum::<usize>() as f64
}

/// Section `exact-compressed`: every precision against f32 on embedding-like vectors, faiss's
/// flat and scalar-quantised indexes on the same files.
fn compressed() {
    let n: usize =
        std::env::var("RAGD_BENCH_COMPRESSED_N").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let isa = Isa::detect();
    let threads = cores();
    let bwn = read_bandwidth(threads);
    // The batched kernels' yardsticks: f32 and f16 (widened) run FMAs, bf16 `vdpbf16ps` and int8
    // `vpdpbusd` where the CPU has them.
    let fma = fma_peak(isa, threads);
    let bf16_peak = dot_peak(isa, DotKind::Bf16, threads);
    let int8_peak = dot_peak(isa, DotKind::Int8, threads);
    eprintln!("peaks: FMA {fma:.0} GFLOP/s, bf16 dot {bf16_peak:?} GOP/s, int8 dot {int8_peak:?} GOP/s");
    let peak_of = |precision: Precision| match precision {
        Precision::Bf16 => bf16_peak.map_or((fma, "FMA"), |p| (p, "`vdpbf16ps`")),
        Precision::Int8 | Precision::Int8PerVector => int8_peak.map_or((fma, "FMA"), |p| (p, "`vpdpbusd`")),
        _ => (fma, "FMA"),
    };
    // Batch 64 as operations/s (a multiply and an add per stored value per query) against the
    // peak of the instruction that computes them.
    let use_of = |q64: f64, precision: Precision| {
        let (peak, name) = peak_of(precision);
        let gops = q64 * 2.0 * (n * DIM) as f64 / 1e9;
        format!("{gops:.0} GOP/s, {:.0} % of {name}", 100.0 * gops / peak)
    };
    let data = embedding_like(n + QUERIES, DIM, 3);
    let (vectors, queries) = data.split_at(n * DIM);
    let dir = tempfile::tempdir().expect("tempdir");
    let (dpath, qpath) = (dir.path().join("data.f32"), dir.path().join("queries.f32"));
    write_f32(&dpath, vectors);
    write_f32(&qpath, queries);
    let ids: Vec<u64> = (0..n as u64).collect();
    let build = |precision, rescore| {
        let mut index =
            ExactIndex::new(DIM, Metric::InnerProduct, Options { precision, rescore, ..Options::default() })
                .expect("index");
        index.add(&ids, vectors).expect("add");
        index
    };
    // One query per search: batch 1 is where each precision's direct kernel runs (int8 on a VNNI
    // CPU quantises the query too), so its recall is the one that goes with the batch-1 figure.
    let top_ids = |index: &ExactIndex| -> Vec<Vec<u64>> {
        let one = |q: &[f32]| index.search(q, K).expect("search").remove(0);
        queries[..100 * DIM].chunks_exact(DIM).map(|q| one(q).iter().map(|n| n.id).collect()).collect()
    };
    let reference = build(Precision::F32, 0);
    let truth = reference.search(&queries[..100 * DIM], K).expect("search");
    let (base1, base64) = (qps(&reference, queries, 1), qps(&reference, queries, 64));
    let gbs = |q: f64, index: &ExactIndex| q * index.bytes() as f64 / 1e9;
    // Queries/s of `index` and of the f32 reference at `batch`, in 8 alternating rounds of an
    // eighth of the time each, so that the ratio sees the same machine (this VM's bandwidth
    // drifts by ±20 % over minutes).
    let paired = |index: &ExactIndex, batch: usize| {
        let secs = bench_secs() / ROUNDS;
        let one = |ix: &ExactIndex| {
            per_second_for(secs, QUERIES, batch, |r| ix.search(&queries[r], K).expect("search").len())
        };
        let (mut a, mut b) = (0.0, 0.0);
        for _ in 0..ROUNDS {
            a += one(index) / f64::from(ROUNDS);
            b += one(&reference) / f64::from(ROUNDS);
        }
        (a, a / b)
    };
    #[cfg(feature = "cuda")]
    let mut gpu = GpuCompressed::default();
    #[cfg(feature = "cuda")]
    gpu.measure(&reference, 0, queries, &truth);
    let mut rows = format!(
        "| ragd-exact f32 | – | {} | {base1:.0} | 1.00× | {:.1} GB/s | {base64:.0} | 1.00× | {} | 1.000 (reference) |\n",
        reference.bytes_per_vector(),
        gbs(base1, &reference),
        use_of(base64, Precision::F32),
    );
    for precision in [Precision::F16, Precision::Bf16, Precision::Int8, Precision::Int8PerVector] {
        for rescore in [0, 4] {
            let index = build(precision, rescore);
            #[cfg(feature = "cuda")]
            gpu.measure(&index, rescore, queries, &truth);
            let r = recall(&top_ids(&index), &truth);
            let ((q1, x1), (q64, x64)) = (paired(&index, 1), paired(&index, 64));
            eprintln!(
                "{} rescore {rescore}: batch 1 {q1:.0} q/s ({x1:.2}× f32), batch 64 {q64:.0} q/s ({x64:.2}×), recall {r:.3}",
                precision.name(),
            );
            rows.push_str(&format!(
                "| ragd-exact {} | {} | {} | {q1:.0} | **{x1:.2}×** | {:.1} GB/s | {q64:.0} | **{x64:.2}×** | {} | {r:.3} |\n",
                precision.name(),
                if rescore > 0 { format!("{rescore}× (f32 resident)") } else { "none".into() },
                index.bytes_per_vector(),
                gbs(q1, &index),
                use_of(q64, precision),
            ));
        }
    }
    let mut faiss_version = None;
    for (factory, bytes) in [("Flat", DIM * 4), ("SQfp16", DIM * 2), ("SQbf16", DIM * 2), ("SQ8", DIM)] {
        match faiss_index(&dpath, &qpath, factory, &[1, 64]) {
            Some(f) => {
                faiss_version = Some((f.version.clone(), f.threads));
                let got: Vec<Vec<u64>> =
                    f.ids.iter().map(|h| h.iter().map(|id| *id as u64).collect()).collect();
                let (q1, q64) = (f.qps["1"], f.qps["64"]);
                rows.push_str(&format!(
                    "| faiss {factory} | – | {bytes} | {q1:.0} | {:.2}× | {:.1} GB/s | {q64:.0} | {:.2}× | – | {:.3} |\n",
                    q1 / base1,
                    q1 * (n * bytes) as f64 / 1e9,
                    q64 / base64,
                    recall(&got, &truth)
                ));
            }
            None => rows.push_str(&format!("| faiss {factory} | – | {bytes} | not run | | | | | | |\n")),
        }
    }
    let faiss_note = match faiss_version {
        Some((v, t)) => format!("faiss-cpu {v} ({t} OpenMP threads)"),
        None => "faiss-cpu: not run (scripts/setup --with-bench)".into(),
    };
    let body = format!(
        "## Exact search on compressed vectors (ragd-exact f16, bf16, int8)\n\n\
         Measured by `cargo bench -p ragd-bench --bench exact` in one run on: {machine}.\n\
         {n} embedding-like unit vectors (`ragd_exact::synthetic`: 20 clusters, a shared mean, per-dimension \
         scales differing by 10×), d = {DIM}, inner product, k = {K}; queries/s over {secs:.0} s per cell, \
         ratios (÷ f32) against ragd-exact f32 measured in {ROUNDS} alternating rounds with each row (this VM's bandwidth drifts by ±20 % over minutes), faiss's against the f32 row; recall@10 of the first 100 queries, searched one at a time, against f32 exact. \
         Kernel `{isa}`, {threads} threads; probed in the same run: read bandwidth {bwn:.1} GB/s, FMA peak {fma:.0} GFLOP/s, \
         `vdpbf16ps` peak {bf16p}, `vpdpbusd` peak {int8p} (register-only loops, all cores; an operation is a multiply or an add). \
         Every precision is scored on its stored form: int8 codes by AVX-512 VNNI `vpdpbusd` with the queries quantised to int8 too, \
         bf16 by `vdpbf16ps` with the queries rounded to bf16, both in 4 queries × 4 rows tiles at batch ≥ 4; f16 widened in registers \
         at batch < 4, each block widened once at larger batches. Rescoring takes the best k × 4 by compressed score and re-ranks them \
         with the f32 rows kept resident. Batch-64 use: operations/s (2 per stored value per query) against the peak of the instruction \
         that computes them. Baselines: {faiss_note} on the same files.\n\n\
         | engine, storage | rescoring | bytes / vector | batch 1 q/s | ÷ f32 | scanned | batch 64 q/s | ÷ f32 | batch 64 use | recall@10 |\n\
         |---|---|---:|---:|---|---:|---:|---|---|---:|\n\
         {rows}\n\
         Targets (issue 20): batch 1 ≥ 1.8× f32 for f16/bf16 and ≥ 3× for int8, at recall@10 ≥ 0.99 \
         (with rescoring where needed).\n",
        machine = report::machine(),
        secs = bench_secs().as_secs_f64(),
        isa = isa.name(),
        bf16p = bf16_peak.map_or("not on this CPU".into(), |p| format!("{p:.0} GOP/s")),
        int8p = int8_peak.map_or("not on this CPU".into(), |p| format!("{p:.0} GOP/s")),
    );
    println!("{body}");
    report::update_section(&report::benchmarks_md(), "exact-compressed", &body)
        .expect("write docs/benchmarks.md");
    #[cfg(feature = "cuda")]
    gpu.write(n);
}

/// The compressed section's GPU rows: each index of the CPU table uploaded to GPU 0, queries/s
/// at batch 1 and 64 against the GPU's own f32 rows measured in the same run, recall@10 of the
/// GPU's answers.
#[cfg(feature = "cuda")]
#[derive(Default)]
struct GpuCompressed {
    /// Batch 1 and batch 64 queries/s of the f32 index (the first measured).
    base: Option<(f64, f64)>,
    device: String,
    lines: String,
}

#[cfg(feature = "cuda")]
impl GpuCompressed {
    fn measure(&mut self, index: &ExactIndex, rescore: usize, queries: &[f32], truth: &[Vec<Neighbor>]) {
        let gpu = match ragd_exact::gpu::GpuIndex::upload(index, 0) {
            Ok(g) => g,
            Err(e) => {
                eprintln!("GPU rows skipped: {e}");
                return;
            }
        };
        let at = |b: usize| per_second(QUERIES, b, |r| gpu.search(&queries[r], K).expect("gpu search").len());
        let (q1, q64) = (at(1), at(64));
        let (b1, b64) = *self.base.get_or_insert((q1, q64));
        let got: Vec<Vec<u64>> = gpu
            .search(&queries[..100 * DIM], K)
            .expect("gpu search")
            .iter()
            .map(|hits| hits.iter().map(|h| h.id).collect())
            .collect();
        let r = recall(&got, truth);
        eprintln!(
            "GPU {} rescore {rescore}: batch 1 {q1:.0} q/s, batch 64 {q64:.0} q/s, recall {r:.3}",
            index.precision().name()
        );
        self.device = gpu.device_name().to_string();
        self.lines.push_str(&format!(
            "| {} | {} | {} | {q1:.0} | {:.2}× | {:.0} GB/s | {q64:.0} | {:.2}× | {r:.3} |\n",
            index.precision().name(),
            if rescore > 0 { format!("{rescore}×") } else { "none".into() },
            index.bytes_per_vector(),
            q1 / b1,
            q1 * index.bytes() as f64 / 1e9,
            q64 / b64,
        ));
    }

    fn write(&self, n: usize) {
        if self.lines.is_empty() {
            return;
        }
        let body = format!(
            "## Exact search on compressed vectors on a GPU (ragd-exact CUDA engine)\n\n\
             Measured by `cargo bench -p ragd-bench --features cuda --bench exact` (built by `scripts/gpu-carry`) \
             in one run on: {machine}, GPU {device}. The indexes of the section above ({n} embedding-like vectors, \
             d = {DIM}, inner product, k = {K}) uploaded as stored; the kernels widen each stored value in \
             registers and score f32 queries (rescoring: the best k × 4, at most 32, re-ranked with the f32 \
             rows on the host). Queries/s over {secs:.0} s per cell, from queries on the host to the \
             merged top-k on the host; ratios against the GPU's f32 rows in the same run; recall@10 of \
             the first 100 queries against f32 exact.\n\n\
             | storage | rescoring | bytes / vector | batch 1 q/s | ÷ f32 | scanned | batch 64 q/s | ÷ f32 | recall@10 |\n\
             |---|---|---:|---:|---|---:|---:|---|---:|\n\
             {lines}",
            machine = report::machine(),
            device = self.device,
            secs = bench_secs().as_secs_f64(),
            lines = self.lines,
        );
        println!("{body}");
        report::update_section(&report::benchmarks_md(), "exact-gpu-compressed", &body)
            .expect("write docs/benchmarks.md");
    }
}

/// GPU rows: the same index uploaded to GPU 0, queries/s per batch (GB/s at batch 1, TFLOP/s of
/// the score kernel at larger batches, top-k included), against the CPU engine's queries/s of
/// the same run (measured here for the batches the CPU table does not have).
#[cfg(feature = "cuda")]
use ragd_exact::gpu::ScorePlan;

#[cfg(feature = "cuda")]
fn gpu_rows(
    index: &ExactIndex,
    queries: &[f32],
    n: usize,
    cpu_qps: &mut std::collections::HashMap<(usize, usize), f64>,
    out: &mut String,
) {
    let gpu = match ragd_exact::gpu::GpuIndex::upload(index, 0) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("GPU rows skipped: {e}");
            return;
        }
    };
    for b in [1, 16, 64, 256, QUERIES] {
        let measure = |plan: ScorePlan| {
            per_second(QUERIES, b, |r| gpu.search_with(&queries[r], K, plan).expect("gpu search").len())
        };
        let (tiled, groups) = (measure(ScorePlan::Tiled), measure(ScorePlan::RowGroups));
        let cpu = *cpu_qps.entry((n, b)).or_insert_with(|| qps(index, queries, b));
        let (plan, picked) = match gpu.plan(b) {
            ScorePlan::RowGroups => ("row groups", groups),
            _ => ("tiled", tiled),
        };
        let achieved = if b == 1 {
            format!("{:.0} GB/s scanned", picked * index.bytes() as f64 / 1e9)
        } else {
            format!("{:.1} TFLOP/s", picked * 2.0 * (n * DIM) as f64 / 1e12)
        };
        eprintln!(
            "GPU {} n={n} batch={b}: tiled {tiled:.0} q/s, row groups {groups:.0} q/s, CPU {cpu:.0} q/s",
            gpu.device_name()
        );
        out.push_str(&format!(
            "| {n} | {b} | {tiled:.0} | {groups:.0} | {cpu:.0} | {plan}: **{:.1}×** | {achieved} on {} |\n",
            picked / cpu,
            gpu.device_name()
        ));
    }
}
