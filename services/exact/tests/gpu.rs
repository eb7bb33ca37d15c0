//! The CUDA engine (feature `cuda`). NVRTC compiles the kernels on any machine that has
//! libnvrtc (scripts/setup puts the PyPI `nvidia-cuda-nvrtc` library in `.ragd/lib/cuda`, and
//! `make test` puts it on the library path). Without a GPU the clean-error test runs; the search
//! test needs a GPU and the CUDA driver, so it is `#[ignore]`d — counted as ignored (skipped) by
//! the test harness, never as passed — and runs with `-- --include-ignored`, which `make test`
//! adds where `nvidia-smi` finds a GPU (with `RAGD_REQUIRE_GPU=1`, as `scripts/gpu-carry` does).
//! Once asked for, a missing GPU fails the search test.
#![cfg(feature = "cuda")]

use ragd_exact::gpu::{GpuError, GpuIndex, ScorePlan, compile_kernels, libraries_present};
use ragd_exact::{ExactIndex, Isa, Metric, Options, Precision, naive_search};

fn require_gpu() -> bool {
    std::env::var("RAGD_REQUIRE_GPU").is_ok_and(|v| v == "1")
}

#[test]
fn nvrtc_compiles_the_kernels_when_it_is_installed() {
    match compile_kernels() {
        Ok(ptx) => {
            let src = ptx.to_src();
            for form in ["f32", "f16", "bf16", "u8", "i8"] {
                for entry in [format!("scores_{form}"), format!("scores_rows_{form}")] {
                    assert!(src.contains(&format!(".entry {entry}(")), "PTX lacks {entry}");
                }
            }
            assert!(src.contains(".entry topk_partial("), "PTX lacks topk_partial");
        }
        Err(GpuError::Unavailable(why)) => {
            assert!(std::env::var("RAGD_REQUIRE_NVRTC").is_err(), "NVRTC required but missing: {why}");
            eprintln!("NVRTC not installed here: {why}");
        }
        Err(e) => panic!("the kernels do not compile: {e}"),
    }
}

#[test]
fn a_machine_without_a_gpu_gets_a_clean_error() {
    let mut index = ExactIndex::new(4, Metric::InnerProduct, Options::default()).expect("index");
    index.add(&[1], &[1.0, 0.0, 0.0, 0.0]).expect("add");
    match GpuIndex::upload(&index, 0) {
        Ok(gpu) => eprintln!("GPU present: {}", gpu.device_name()),
        Err(e @ GpuError::Unavailable(_)) => {
            assert!(!require_gpu(), "RAGD_REQUIRE_GPU=1 but {e}");
            assert!(libraries_present().is_err() || e.to_string().contains("GPU"), "{e}");
        }
        Err(e) => panic!("unexpected GPU error: {e}"),
    }
}

/// GPU results equal the CPU reference for every metric, every stored form (with and without
/// rescoring for the compressed ones), both score kernels, on batches of 1, 8, 9 and 37 queries
/// (whole and partial groups of the row-group kernel, a partial tile of the tiled one) — runs where
/// a GPU is. The reference is the CPU engine on its portable kernel (`Isa::Baseline`), which like
/// the GPU scores f32 queries against the stored values widened to f32 (the CPU's bf16 and VNNI
/// kernels round or quantise the queries too); f32 — and every form that rescores — is also
/// checked against the naive f64 search of the original vectors.
#[test]
#[ignore = "needs a GPU and the CUDA driver: run with -- --include-ignored (make test does where nvidia-smi finds one)"]
fn gpu_search_matches_the_reference() {
    let dim = 77;
    let n = 20_000;
    let mut state = 5u64;
    let mut next = || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((state >> 33) as f32 / (1u64 << 31) as f32) - 0.5
    };
    let vectors: Vec<f32> = (0..n * dim).map(|_| next()).collect();
    let queries: Vec<f32> = (0..37 * dim).map(|_| next()).collect();
    let ids: Vec<u64> = (0..n as u64).map(|i| i * 3 + 1).collect();
    let forms = [Precision::F32, Precision::F16, Precision::Bf16, Precision::Int8, Precision::Int8PerVector];
    for metric in [Metric::InnerProduct, Metric::Cosine, Metric::L2] {
        for precision in forms {
            // Rescoring 3×: 30 candidates for k 10, within the GPU's MAX_K, as the CPU takes.
            for rescore in if precision == Precision::F32 { vec![0] } else { vec![0, 3] } {
                let options = Options { precision, rescore, ..Options::default() };
                let mut index = ExactIndex::new(dim, metric, options).expect("index");
                index.add(&ids, &vectors).expect("add");
                // Asked for explicitly (the test is ignored otherwise): no GPU is a failure.
                let gpu = GpuIndex::upload(&index, 0)
                    .unwrap_or_else(|e| panic!("the GPU search test needs a GPU: {e}"));
                let cpu = index.clone().with_isa(Isa::Baseline).search(&queries, 10).expect("cpu search");
                let exact = precision == Precision::F32 || rescore > 0;
                for plan in [ScorePlan::Tiled, ScorePlan::RowGroups] {
                    for nq in [1, 8, 9, 37] {
                        let got = gpu.search_with(&queries[..nq * dim], 10, plan).expect("gpu search");
                        assert_eq!(got.len(), nq);
                        for ((q, g), c) in queries.chunks_exact(dim).zip(&got).zip(&cpu) {
                            assert_eq!(g.len(), 10);
                            for (a, b) in g.iter().zip(c) {
                                assert!(
                                    (a.score - b.score).abs() <= 1e-3,
                                    "{metric:?} {precision:?} rescore {rescore} {plan:?} batch {nq}: gpu {a:?} cpu {b:?}"
                                );
                            }
                            if exact {
                                let want = naive_search(metric, &ids, &vectors, dim, q, 10);
                                let overlap = g.iter().filter(|h| want.iter().any(|w| w.id == h.id)).count();
                                assert!(overlap >= 9, "{metric:?} {precision:?} {plan:?}: {g:?} vs {want:?}");
                            }
                        }
                    }
                }
                assert_eq!(gpu.plan(1), ScorePlan::RowGroups, "a batch of one reads each row once");
                assert_eq!(gpu.search(&queries, 10).expect("auto").len(), 37);
                eprintln!(
                    "GPU {} {metric:?} {precision:?} rescore {rescore}: matches the CPU engine",
                    gpu.device_name()
                );
            }
        }
    }
    // Too wide for 8 queries in 48 KB of shared memory: row groups fall back to tiles.
    let dim = 1601;
    let mut index = ExactIndex::new(dim, Metric::InnerProduct, Options::default()).expect("index");
    let wide: Vec<f32> = (0..50 * dim).map(|_| next()).collect();
    index.add(&(0..50).collect::<Vec<u64>>(), &wide).expect("add");
    let gpu = GpuIndex::upload(&index, 0).expect("upload");
    assert_eq!(gpu.plan(1), ScorePlan::Tiled);
    let got = gpu.search_with(&wide[..dim], 3, ScorePlan::RowGroups).expect("fallback");
    assert_eq!(got[0][0].id, index.search(&wide[..dim], 3).expect("cpu")[0][0].id);
}
