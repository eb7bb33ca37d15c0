//! Exactness against the naive reference (f64 scores, full sort) on random and adversarial
//! data, for every metric and instruction set this CPU has, as property tests.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use proptest::prelude::*;
use ragd_exact::coalesce::Coalescer;
use ragd_exact::{ExactError, ExactIndex, Isa, Metric, Neighbor, Options, Precision, naive_search};

/// Scores agree with the reference within `tol`, the same ranks hold the same scores, and every
/// returned id really has the score returned (ties may pick different ids at equal scores).
fn assert_equivalent(got: &[Neighbor], want: &[Neighbor], all: &[Neighbor], tol: f32) {
    assert_eq!(got.len(), want.len(), "got {got:?}\nwant {want:?}");
    for (g, w) in got.iter().zip(want) {
        assert!((g.score - w.score).abs() <= tol, "rank score {g:?} vs {w:?}");
        let truth = all.iter().find(|n| n.id == g.id).expect("returned id exists");
        assert!((g.score - truth.score).abs() <= tol, "{g:?} is really {truth:?}");
    }
    let mut ids: Vec<u64> = got.iter().map(|n| n.id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), got.len(), "ids are unique");
}

fn metric() -> impl Strategy<Value = Metric> {
    prop_oneof![Just(Metric::InnerProduct), Just(Metric::Cosine), Just(Metric::L2)]
}

fn isas() -> Vec<Isa> {
    let best = Isa::detect();
    [Isa::Baseline, Isa::Avx2Fma, Isa::Avx512]
        .into_iter()
        .filter(|i| *i == Isa::Baseline || best == Isa::Avx512 || *i == best)
        .collect()
}

/// Vectors with small integer coordinates: many exact ties and duplicates.
fn data() -> impl Strategy<Value = (usize, Vec<f32>, Vec<f32>)> {
    (1usize..40, 0usize..80, 1usize..6).prop_flat_map(|(dim, n, nq)| {
        (
            Just(dim),
            prop::collection::vec((-3i8..=3).prop_map(f32::from), n * dim),
            prop::collection::vec((-3i8..=3).prop_map(f32::from), nq * dim),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn matches_the_naive_reference((dim, vectors, queries) in data(), metric in metric(), k in 1usize..100, threads in 1usize..4, block in 1usize..64) {
        let n = vectors.len() / dim;
        let ids: Vec<u64> = (0..n as u64).map(|i| i * 7 + 3).collect();
        for isa in isas() {
            let options = Options { threads, block_rows: block, query_group: 3, ..Options::default() };
            let mut index = ExactIndex::new(dim, metric, options).expect("index").with_isa(isa);
            index.add(&ids, &vectors).expect("add");
            let got = index.search(&queries, k).expect("search");
            prop_assert_eq!(got.len(), queries.len() / dim);
            for (q, hits) in queries.chunks_exact(dim).zip(&got) {
                let want = naive_search(metric, &ids, &vectors, dim, q, k);
                let all = naive_search(metric, &ids, &vectors, dim, q, n);
                assert_equivalent(hits, &want, &all, 1e-3);
            }
        }
    }

    #[test]
    fn removes_and_replacements_keep_it_exact((dim, vectors, queries) in data(), remove in prop::collection::vec(0u64..80, 0..40)) {
        let n = vectors.len() / dim;
        let ids: Vec<u64> = (0..n as u64).collect();
        let mut index = ExactIndex::new(dim, Metric::InnerProduct, Options::default()).expect("index");
        // Insert with garbage first, then overwrite every id with its real vector.
        index.add(&ids, &vec![9.0; vectors.len()]).expect("add");
        index.add(&ids, &vectors).expect("replace");
        let removed = index.remove(&remove);
        let kept: Vec<usize> = (0..n).filter(|i| !remove.contains(&(*i as u64))).collect();
        prop_assert_eq!(removed, n - kept.len());
        prop_assert_eq!(index.len(), kept.len());
        let kept_ids: Vec<u64> = kept.iter().map(|i| *i as u64).collect();
        let kept_vecs: Vec<f32> = kept.iter().flat_map(|i| vectors[i * dim..(i + 1) * dim].iter().copied()).collect();
        let got = index.search(&queries, 5).expect("search");
        for (q, hits) in queries.chunks_exact(dim).zip(&got) {
            let want = naive_search(Metric::InnerProduct, &kept_ids, &kept_vecs, dim, q, 5);
            let all = naive_search(Metric::InnerProduct, &kept_ids, &kept_vecs, dim, q, kept.len());
            assert_equivalent(hits, &want, &all, 1e-3);
        }
    }
}

#[test]
fn empty_index_k_above_n_and_exact_ties() {
    let mut index = ExactIndex::new(3, Metric::InnerProduct, Options::default()).expect("index");
    assert_eq!(index.search(&[1.0, 0.0, 0.0], 5).expect("search"), vec![Vec::<Neighbor>::new()]);
    // Duplicates tie exactly; the lower id ranks first; k > n returns all.
    index.add(&[5, 2, 9], &[1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.5, 0.0, 0.0]).expect("add");
    let hits = index.search(&[1.0, 0.0, 0.0], 10).expect("search").remove(0);
    let ids: Vec<u64> = hits.iter().map(|h| h.id).collect();
    assert_eq!(ids, vec![2, 5, 9]);
    assert_eq!(hits[0].score, hits[1].score);
}

#[test]
fn cosine_normalises_unnormalised_input() {
    let mut index = ExactIndex::new(2, Metric::Cosine, Options::default()).expect("index");
    index.add(&[1, 2], &[10.0, 0.0, 3.0, 3.0]).expect("add");
    let hits = index.search(&[0.0, 7.0], 2).expect("search").remove(0);
    assert_eq!(hits[0].id, 2);
    assert!((hits[0].score - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-6, "{hits:?}");
    assert!(hits[1].score.abs() < 1e-6);
}

#[test]
fn l2_reports_squared_distances_nearest_first() {
    let mut index = ExactIndex::new(2, Metric::L2, Options::default()).expect("index");
    index.add(&[1, 2, 3], &[0.0, 0.0, 3.0, 4.0, 1.0, 1.0]).expect("add");
    let hits = index.search(&[0.0, 0.0], 3).expect("search").remove(0);
    assert_eq!(hits.iter().map(|h| (h.id, h.score)).collect::<Vec<_>>(), vec![(1, 0.0), (3, 2.0), (2, 25.0)]);
}

#[test]
fn non_finite_and_malformed_input_is_rejected_and_changes_nothing() {
    let mut index = ExactIndex::new(2, Metric::InnerProduct, Options::default()).expect("index");
    index.add(&[1], &[1.0, 2.0]).expect("add");
    for bad in [[f32::NAN, 0.0], [f32::INFINITY, 0.0], [0.0, f32::NEG_INFINITY]] {
        let e = index.add(&[2], &bad).expect_err("non-finite vector");
        assert!(matches!(e, ExactError::InvalidArgument { field: "vectors", .. }));
        let e = index.search(&bad, 1).expect_err("non-finite query");
        assert!(matches!(e, ExactError::InvalidArgument { field: "queries", .. }));
    }
    assert!(index.add(&[2, 3], &[1.0, 2.0, 3.0]).is_err(), "wrong length");
    assert!(index.search(&[1.0, 2.0, 3.0], 1).is_err(), "not a multiple of dim");
    assert!(index.search(&[1.0, 2.0], 0).is_err(), "k = 0");
    assert!(ExactIndex::new(0, Metric::L2, Options::default()).is_err());
    assert_eq!(index.len(), 1);
}

#[test]
fn f16_storage_keeps_recall_against_f32() {
    let dim = 96;
    let mut state = 42u64;
    let mut next = || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((state >> 33) as f32 / (1u64 << 31) as f32) - 0.5
    };
    let n = 3000;
    let vectors: Vec<f32> = (0..n * dim).map(|_| next()).collect();
    let queries: Vec<f32> = (0..20 * dim).map(|_| next()).collect();
    let ids: Vec<u64> = (0..n as u64).collect();
    let mut f32i = ExactIndex::new(dim, Metric::Cosine, Options::default()).expect("index");
    let mut f16i =
        ExactIndex::new(dim, Metric::Cosine, Options { precision: Precision::F16, ..Options::default() })
            .expect("index");
    f32i.add(&ids, &vectors).expect("add");
    f16i.add(&ids, &vectors).expect("add");
    assert_eq!(f16i.bytes() * 2, f32i.bytes());
    let (a, b) = (f32i.search(&queries, 10).expect("f32"), f16i.search(&queries, 10).expect("f16"));
    let found: usize =
        a.iter().zip(&b).map(|(x, y)| x.iter().filter(|n| y.iter().any(|m| m.id == n.id)).count()).sum();
    let recall = found as f64 / 200.0;
    assert!(recall >= 0.95, "recall@10 of f16 storage vs f32: {recall}");
    // Batches of 1–3 take the direct f16 kernel where the CPU has AVX-512, larger ones the
    // widened blocks: both give the same scores (f32 accumulation of the same f16 values).
    for (i, q) in queries.chunks_exact(dim).enumerate().take(3) {
        let one = f16i.search(q, 10).expect("one query");
        for (x, y) in one[0].iter().zip(&b[i]) {
            assert_eq!(x.id, y.id, "query {i}");
            assert!((x.score - y.score).abs() < 1e-5, "query {i}: {x:?} vs {y:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_queries_are_coalesced_and_answered_exactly() {
    let dim = 16;
    let n = 20_000;
    let vectors: Vec<f32> = (0..n * dim).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
    let ids: Vec<u64> = (0..n as u64).collect();
    let mut index = ExactIndex::new(dim, Metric::InnerProduct, Options::default()).expect("index");
    index.add(&ids, &vectors).expect("add");
    let index = Arc::new(RwLock::new(index));
    // A wait window long enough that 32 concurrent submissions must share batches.
    let c = Coalescer::new(index.clone(), 64, Duration::from_secs(1)).expect("coalescer thread");
    let queries: Vec<Vec<f32>> =
        (0..32).map(|q| vectors[q * 11 * dim..(q * 11 + 1) * dim].to_vec()).collect();
    let answers = futures_join(&c, &queries).await;
    let direct = index.read().expect("lock").search(&queries.concat(), 3).expect("direct");
    assert_eq!(answers, direct);
    let s = c.stats();
    let (batches, queries_done) = (
        s.batches.load(std::sync::atomic::Ordering::Relaxed),
        s.queries.load(std::sync::atomic::Ordering::Relaxed),
    );
    assert_eq!(queries_done, 32);
    assert!(batches < 32, "{batches} batches for 32 concurrent queries");
    // A malformed query fails alone.
    let bad = c.search(vec![f32::NAN; dim], 3).await.expect_err("nan");
    assert!(matches!(bad, ExactError::InvalidArgument { field: "queries", .. }));
}

async fn futures_join(c: &Coalescer, queries: &[Vec<f32>]) -> Vec<Vec<Neighbor>> {
    let tasks: Vec<_> = queries
        .iter()
        .map(|q| {
            let (c, q) = (c.clone(), q.clone());
            tokio::spawn(async move { c.search(q, 3).await })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("task").expect("search"));
    }
    out
}
