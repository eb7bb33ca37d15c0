//! Compressed storage (f16, bf16, int8 per dimension, int8 per vector): scores within the
//! quantisation error of each form, recall against f32 exact on embedding-like vectors, and
//! rescoring that restores exact f32 answers — every expectation computed here from the data
//! (f64 reference or error bounds derived from the encoding's definition), never by the engine.

use proptest::prelude::*;
use ragd_exact::synthetic::embedding_like;
use ragd_exact::{ExactIndex, Isa, Metric, Neighbor, Options, Precision, naive_search};

const COMPRESSED: [Precision; 4] =
    [Precision::F16, Precision::Bf16, Precision::Int8, Precision::Int8PerVector];

fn isas() -> Vec<Isa> {
    match Isa::detect() {
        Isa::Avx512 => vec![Isa::Baseline, Isa::Avx2Fma, Isa::Avx512],
        best => vec![Isa::Baseline, best],
    }
}

fn recall(got: &[Vec<Neighbor>], want: &[Vec<Neighbor>]) -> f64 {
    let found: usize =
        got.iter().zip(want).map(|(g, w)| w.iter().filter(|n| g.iter().any(|m| m.id == n.id)).count()).sum();
    found as f64 / want.iter().map(Vec::len).sum::<usize>() as f64
}

#[test]
fn compressed_precisions_keep_recall_and_rescoring_restores_it() {
    let (dim, n, nq, k) = (96, 4000, 40, 10);
    let data = embedding_like(n + nq, dim, 5);
    let (vectors, queries) = data.split_at(n * dim);
    let ids: Vec<u64> = (0..n as u64).collect();
    for metric in [Metric::InnerProduct, Metric::Cosine, Metric::L2] {
        let want: Vec<Vec<Neighbor>> =
            queries.chunks_exact(dim).map(|q| naive_search(metric, &ids, vectors, dim, q, k)).collect();
        for precision in COMPRESSED {
            for rescore in [0, 4] {
                let options = Options { precision, rescore, ..Options::default() };
                let mut index = ExactIndex::new(dim, metric, options).expect("index");
                index.add(&ids, vectors).expect("add");
                let got = index.search(queries, k).expect("search");
                let r = recall(&got, &want);
                // Without rescoring: what each encoding keeps (f16 is near-lossless here; bf16
                // and int8 lose some near-ties). With 4× oversampling + f32 rescoring: ≥ 0.99.
                let floor = match (rescore, precision) {
                    (4, _) | (_, Precision::F16) => 0.99,
                    _ => 0.8,
                };
                assert!(r >= floor, "{metric:?} {precision:?} rescore {rescore}: recall@10 {r}");
                if rescore > 0 {
                    // Rescored hits carry f32 scores: equal to the f64 reference within f32 error.
                    for (q, hits) in queries.chunks_exact(dim).zip(&got) {
                        let all = naive_search(metric, &ids, vectors, dim, q, n);
                        for h in hits {
                            let truth = all.iter().find(|t| t.id == h.id).expect("id exists");
                            assert!((h.score - truth.score).abs() < 1e-4, "{precision:?} {h:?} vs {truth:?}");
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn bytes_per_vector_follow_the_precision() {
    let dim = 384;
    for (precision, bytes) in [
        (Precision::F32, 1536),
        (Precision::F16, 768),
        (Precision::Bf16, 768),
        (Precision::Int8, 384),
        (Precision::Int8PerVector, 388),
    ] {
        let mut index =
            ExactIndex::new(dim, Metric::Cosine, Options { precision, ..Options::default() }).expect("index");
        index.add(&[1, 2, 3], &embedding_like(3, dim, 1)).expect("add");
        assert_eq!(index.bytes_per_vector(), bytes, "{precision:?}");
        assert_eq!(index.bytes(), 3 * bytes, "{precision:?}");
        // Rescoring keeps the f32 rows too: resident memory grows by them, the scan does not.
        let mut rescoring =
            ExactIndex::new(dim, Metric::Cosine, Options { precision, rescore: 2, ..Options::default() })
                .expect("index");
        rescoring.add(&[1, 2, 3], &embedding_like(3, dim, 1)).expect("add");
        assert_eq!(rescoring.bytes(), index.bytes());
        let extra = if precision == Precision::F32 { 0 } else { 3 * 1536 };
        assert_eq!(rescoring.resident_bytes(), index.resident_bytes() + extra, "{precision:?}");
    }
}

/// Inner-product scores of the scanned codes stay within the encoding's error bound: per
/// dimension half a quantisation step times |q_d| (int8 per dimension: step = range / 255 of
/// what was added in one batch; per vector: max|x| / 127 / 2), relative 2^-11 / 2^-8 per value
/// for f16 / bf16 — and the bound holds after later batches widened the int8 ranges.
#[test]
fn scanned_scores_stay_within_the_quantisation_error() {
    let (dim, n) = (40, 300);
    let a = embedding_like(n, dim, 9);
    // A second batch 3× larger in every coordinate: the per-dimension ranges must widen.
    let b: Vec<f32> = embedding_like(n, dim, 10).iter().map(|x| 3.0 * x).collect();
    let all: Vec<f32> = a.iter().chain(&b).copied().collect();
    let q = &embedding_like(1, dim, 11);
    let range = |d: usize| {
        let col = all.iter().skip(d).step_by(dim);
        col.clone().fold(f32::MIN, |m, x| m.max(*x)) - col.fold(f32::MAX, |m, x| m.min(*x))
    };
    for precision in COMPRESSED {
        for isa in isas() {
            let options = Options { precision, ..Options::default() };
            let mut index = ExactIndex::new(dim, Metric::InnerProduct, options).expect("index").with_isa(isa);
            index.add(&(0..n as u64).collect::<Vec<_>>(), &a).expect("add a");
            index.add(&(n as u64..2 * n as u64).collect::<Vec<_>>(), &b).expect("add b");
            // One query and the same query four times (a 4 × 4 tile): int8 on a VNNI CPU
            // quantises the queries too, bf16 on a BF16 CPU rounds them (within its bound); f16
            // widens every block at 4 queries, keeping them f32.
            let four: Vec<f32> = q.repeat(4);
            for (queries, one) in [(q.as_slice(), true), (four.as_slice(), false)] {
                let hits = index.search(queries, 2 * n).expect("search").remove(0);
                assert_eq!(hits.len(), 2 * n);
                let quantised_query = ragd_exact::kernel::vnni(isa);
                let qmax = q.iter().fold(0.0f32, |m, x| m.max(x.abs()));
                for h in hits {
                    let v = &all[h.id as usize * dim..(h.id as usize + 1) * dim];
                    let exact: f64 = v.iter().zip(q).map(|(x, y)| *x as f64 * *y as f64).sum();
                    let bound: f64 = match precision {
                        Precision::F16 => {
                            v.iter().zip(q).map(|(x, y)| (x * y).abs() as f64).sum::<f64>() / 2048.0
                        }
                        Precision::Bf16 => {
                            v.iter().zip(q).map(|(x, y)| (x * y).abs() as f64).sum::<f64>() / 256.0
                        }
                        // One widening, by at most 1/8 of the range on each side (step ≤ 1.25 ×
                        // range / 255); the first batch's rows were re-encoded from their codes, so
                        // they carry the old step's rounding too (≤ range / 255 / 2). A quantised
                        // query `q ∘ step` is off by at most half its scale (max |q_d step_d| / 127)
                        // per dimension, times codes of at most 255.
                        Precision::Int8 => {
                            let rows: f64 =
                                (0..dim).map(|d| (q[d].abs() * range(d) * 2.25 / 255.0 / 2.0) as f64).sum();
                            let sq =
                                (0..dim).map(|d| q[d].abs() * range(d) * 1.25 / 255.0).fold(0.0f32, f32::max)
                                    / 127.0;
                            rows + if quantised_query { (sq / 2.0 * 255.0) as f64 * dim as f64 } else { 0.0 }
                        }
                        // Rows: half a step of max|x| / 127 per dimension; a quantised query: half a
                        // step of max|q| / 127 per dimension times |x̂_d|.
                        Precision::Int8PerVector => {
                            let s = v.iter().fold(0.0f32, |m, x| m.max(x.abs())) / 127.0;
                            let rows: f64 = q.iter().map(|y| (y.abs() * s / 2.0) as f64).sum();
                            let query: f64 =
                                v.iter().map(|x| ((x.abs() + s / 2.0) * qmax / 127.0 / 2.0) as f64).sum();
                            rows + if quantised_query { query } else { 0.0 }
                        }
                        Precision::F32 => unreachable!(),
                    };
                    let err = (h.score as f64 - exact).abs();
                    assert!(
                        err <= bound + 1e-5,
                        "{precision:?} {isa:?} one query {one}: id {}: error {err} > bound {bound}",
                        h.id
                    );
                }
            }
        }
    }
}

fn metric() -> impl Strategy<Value = Metric> {
    prop_oneof![Just(Metric::InnerProduct), Just(Metric::Cosine), Just(Metric::L2)]
}

fn precision() -> impl Strategy<Value = Precision> {
    prop_oneof![
        Just(Precision::F16),
        Just(Precision::Bf16),
        Just(Precision::Int8),
        Just(Precision::Int8PerVector)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// With rescoring over every row (oversampling ≥ n) a compressed index answers exactly as
    /// f32 does, through adds, replacements and removes (the kept f32 rows move with the codes).
    #[test]
    fn full_rescoring_is_exact(
        dim in 1usize..40,
        n in 0usize..60,
        metric in metric(),
        precision in precision(),
        remove in prop::collection::vec(0u64..60, 0..30),
        k in 1usize..12,
        seed in 0u64..1000,
    ) {
        let vectors = embedding_like(n, dim, seed);
        let queries = embedding_like(3, dim, seed + 1);
        let ids: Vec<u64> = (0..n as u64).collect();
        for isa in isas() {
            let options = Options { precision, rescore: 64, threads: 2, block_rows: 16, ..Options::default() };
            let mut index = ExactIndex::new(dim, metric, options).expect("index").with_isa(isa);
            let garbage: Vec<f32> = vectors.iter().map(|x| -5.0 * x).collect();
            index.add(&ids, &garbage).expect("add");
            index.add(&ids, &vectors).expect("replace");
            index.remove(&remove);
            let kept: Vec<usize> = (0..n).filter(|i| !remove.contains(&(*i as u64))).collect();
            let kept_ids: Vec<u64> = kept.iter().map(|i| *i as u64).collect();
            let kept_vecs: Vec<f32> = kept.iter().flat_map(|i| vectors[i * dim..(i + 1) * dim].to_vec()).collect();
            let got = index.search(&queries, k).expect("search");
            for (q, hits) in queries.chunks_exact(dim).zip(&got) {
                let want = naive_search(metric, &kept_ids, &kept_vecs, dim, q, k);
                prop_assert_eq!(hits.len(), want.len());
                for (g, w) in hits.iter().zip(&want) {
                    prop_assert!((g.score - w.score).abs() < 1e-4, "{:?} {:?}: {:?} vs {:?}", precision, isa, g, w);
                }
            }
        }
    }
}
