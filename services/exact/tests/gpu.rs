//! The CUDA engine (feature `cuda`). NVRTC compiles the kernels on any machine that has
//! libnvrtc (scripts/setup puts the PyPI `nvidia-cuda-nvrtc` library in `.ragd/lib/cuda`, and
//! `make test` puts it on the library path); the search tests need a GPU and the CUDA driver and
//! otherwise check the clean error. Set `RAGD_REQUIRE_GPU=1` on a GPU machine to make a missing
//! GPU a failure instead.
#![cfg(feature = "cuda")]

use ragd_exact::gpu::{GpuError, GpuIndex, compile_kernels, libraries_present};
use ragd_exact::{ExactIndex, Metric, Options, Precision, naive_search};

fn require_gpu() -> bool {
    std::env::var("RAGD_REQUIRE_GPU").is_ok_and(|v| v == "1")
}

#[test]
fn nvrtc_compiles_the_kernels_when_it_is_installed() {
    match compile_kernels() {
        Ok(ptx) => {
            let src = ptx.to_src();
            for entry in ["scores_f32", "scores_f16", "topk_partial"] {
                assert!(src.contains(&format!(".entry {entry}")), "PTX lacks {entry}");
            }
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

/// GPU results equal the CPU reference for every metric and both precisions (runs where a GPU is).
#[test]
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
    for metric in [Metric::InnerProduct, Metric::Cosine, Metric::L2] {
        for precision in [Precision::F32, Precision::F16] {
            let mut index =
                ExactIndex::new(dim, metric, Options { precision, ..Options::default() }).expect("index");
            index.add(&ids, &vectors).expect("add");
            let gpu = match GpuIndex::upload(&index, 0) {
                Ok(g) => g,
                Err(e) => {
                    assert!(!require_gpu(), "RAGD_REQUIRE_GPU=1 but {e}");
                    eprintln!("no GPU: {e}");
                    return;
                }
            };
            let got = gpu.search(&queries, 10).expect("gpu search");
            let cpu = index.search(&queries, 10).expect("cpu search");
            let tol = if precision == Precision::F16 { 2e-2 } else { 1e-3 };
            for ((q, g), c) in queries.chunks_exact(dim).zip(&got).zip(&cpu) {
                assert_eq!(g.len(), 10);
                for (a, b) in g.iter().zip(c) {
                    assert!(
                        (a.score - b.score).abs() <= tol,
                        "{metric:?} {precision:?}: gpu {a:?} cpu {b:?}"
                    );
                }
                if precision == Precision::F32 {
                    let want = naive_search(metric, &ids, &vectors, dim, q, 10);
                    let overlap = g.iter().filter(|h| want.iter().any(|w| w.id == h.id)).count();
                    assert!(overlap >= 9, "{metric:?}: {g:?} vs {want:?}");
                }
            }
            eprintln!("GPU {} {metric:?} {precision:?}: matches the CPU engine", gpu.device_name());
        }
    }
}
