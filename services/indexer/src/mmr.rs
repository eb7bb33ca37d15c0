//! Maximal marginal relevance: pick k of n candidates one at a time, each maximising
//! `(1 − λ)·relevance − λ·(its largest similarity to a candidate already picked)`. λ = 0 keeps
//! the relevance order; λ = 1 picks the best candidate, then whatever is least like the picks.
//! The candidates' pairwise similarities come from ragd-exact's SIMD kernel in one batch (every
//! candidate against every other), by the collection's distance.

use std::sync::OnceLock;

use ragd_exact::Isa;
use ragd_exact::kernel;

use crate::error::IndexError;
use crate::store::Distance;

/// The n × n similarity matrix of `vectors` (row-major): cosine, dot, or minus the euclidean
/// distance. One call of ragd-exact's SIMD kernel scores every pair (`‖a − b‖² = ‖a‖² + ‖b‖² −
/// 2a·b` for euclid).
pub fn similarities(vectors: &[Vec<f32>], distance: Distance) -> Result<Vec<f32>, IndexError> {
    let n = vectors.len();
    let Some(dim) = vectors.first().map(Vec::len) else { return Ok(Vec::new()) };
    if vectors.iter().any(|v| v.len() != dim) {
        return Err(IndexError::Store("candidate vectors of different dimensions".into()));
    }
    let stride = kernel::stride(dim);
    let mut rows = vec![0.0f32; n * stride];
    for (row, v) in rows.chunks_exact_mut(stride).zip(vectors) {
        row[..dim].copy_from_slice(v);
        if distance == Distance::Cosine {
            let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
            if norm > 0.0 {
                row.iter_mut().for_each(|x| *x /= norm);
            }
        }
    }
    let mut gram = vec![0.0f32; n * n];
    kernel::scores(isa(), &rows, n, &rows, n, stride, &mut gram);
    if distance == Distance::Euclid {
        let norms: Vec<f32> = (0..n).map(|i| gram[i * n + i]).collect();
        for i in 0..n {
            for j in 0..n {
                let d2 = norms[i] + norms[j] - 2.0 * gram[i * n + j];
                gram[i * n + j] = -d2.max(0.0).sqrt();
            }
        }
    }
    Ok(gram)
}

/// This CPU's kernel, detected once.
fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(Isa::detect)
}

/// Greedy MMR over `relevance` (one per candidate, candidates best first) and the row-major
/// similarity matrix `gram`; returns the picked candidates' indices in the order picked. Ties
/// go to the earlier candidate.
pub fn select(relevance: &[f32], gram: &[f32], k: usize, diversity: f32) -> Vec<usize> {
    let n = relevance.len();
    debug_assert_eq!(gram.len(), n * n);
    let mut picked = Vec::with_capacity(k.min(n));
    let mut taken = vec![false; n];
    // Each candidate's largest similarity to the picks so far.
    let mut closest = vec![f32::NEG_INFINITY; n];
    while picked.len() < k.min(n) {
        let mut best: Option<(usize, f32)> = None;
        for i in (0..n).filter(|&i| !taken[i]) {
            let penalty = if picked.is_empty() { 0.0 } else { closest[i] };
            let value = (1.0 - diversity) * relevance[i] - diversity * penalty;
            if best.is_none_or(|(_, b)| value > b) {
                best = Some((i, value));
            }
        }
        let Some((i, _)) = best else { break };
        taken[i] = true;
        picked.push(i);
        for j in 0..n {
            closest[j] = closest[j].max(gram[j * n + i]);
        }
    }
    picked
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The reference: MMR as written in the literature, every step recomputing each remaining
    /// candidate's maximum similarity to the picks from the vectors themselves (cosine by
    /// hand), no running state.
    fn reference(vectors: &[Vec<f32>], relevance: &[f32], k: usize, lambda: f32) -> Vec<usize> {
        let cos = |a: &[f32], b: &[f32]| {
            let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
            let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
            let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
            dot / (na * nb)
        };
        let mut picked: Vec<usize> = Vec::new();
        while picked.len() < k.min(vectors.len()) {
            let score = |i: usize| {
                let max_sim =
                    picked.iter().map(|&j| cos(&vectors[i], &vectors[j])).fold(f64::NEG_INFINITY, f64::max);
                let max_sim = if picked.is_empty() { 0.0 } else { max_sim };
                (1.0 - f64::from(lambda)) * f64::from(relevance[i]) - f64::from(lambda) * max_sim
            };
            let best = (0..vectors.len()).filter(|i| !picked.contains(i)).fold(
                None::<(usize, f64)>,
                |b, i| match b {
                    Some((_, s)) if score(i) <= s => b,
                    _ => Some((i, score(i))),
                },
            );
            picked.push(best.expect("a candidate is left").0);
        }
        picked
    }

    proptest! {
        /// On random unit-ish vectors whose MMR values are not near-ties, the picks equal the
        /// reference's.
        #[test]
        fn greedy_matches_the_reference(
            raw in proptest::collection::vec(proptest::collection::vec(-100i32..100, 6), 1..14),
            lambda_pct in 0u32..=100,
            k in 1usize..10,
        ) {
            let vectors: Vec<Vec<f32>> = raw.iter()
                .map(|v| v.iter().map(|x| *x as f32 / 10.0 + 0.05).collect())
                .collect();
            let relevance: Vec<f32> = (0..vectors.len()).map(|i| 1.0 - i as f32 * 0.05).collect();
            let lambda = lambda_pct as f32 / 100.0;
            let gram = similarities(&vectors, Distance::Cosine).expect("gram");
            let got = select(&relevance, &gram, k, lambda);
            let want = reference(&vectors, &relevance, k, lambda);
            // Float paths differ (f32 kernel vs f64 here): compare only where the reference's
            // choice at each step wins by a visible margin; stop at the first near-tie.
            prop_assert_eq!(got.len(), want.len());
            for (step, (g, w)) in got.iter().zip(&want).enumerate() {
                if g != w {
                    let picked = &want[..step];
                    let value = |i: usize| {
                        let cos = |a: usize, b: usize| gram[a * vectors.len() + b];
                        let m = picked.iter().map(|&j| cos(i, j)).fold(f32::NEG_INFINITY, f32::max);
                        let m = if picked.is_empty() { 0.0 } else { m };
                        (1.0 - lambda) * relevance[i] - lambda * m
                    };
                    prop_assert!((value(*g) - value(*w)).abs() < 1e-4, "step {}: got {} want {}", step, g, w);
                    break;
                }
            }
        }
    }

    #[test]
    fn diversity_zero_is_the_relevance_order_and_one_avoids_duplicates() {
        // 0 and 1 are the same vector; 2 is orthogonal to both.
        let vectors = vec![vec![1.0, 0.0], vec![1.0, 0.0], vec![0.0, 1.0]];
        let relevance = [0.9, 0.85, 0.5];
        let gram = similarities(&vectors, Distance::Cosine).expect("gram");
        assert_eq!(select(&relevance, &gram, 2, 0.0), vec![0, 1]);
        // λ = 0.5: after 0, candidate 1 scores 0.5·0.85 − 0.5·1 = −0.075, candidate 2 scores
        // 0.5·0.5 − 0.5·0 = 0.25.
        assert_eq!(select(&relevance, &gram, 2, 0.5), vec![0, 2]);
        assert_eq!(select(&relevance, &gram, 5, 0.5).len(), 3, "k above n picks all");
    }

    #[test]
    fn euclid_similarity_is_minus_the_distance() {
        let gram = similarities(&[vec![0.0, 0.0], vec![3.0, 4.0]], Distance::Euclid).expect("gram");
        assert_eq!(gram, vec![0.0, -5.0, -5.0, 0.0]);
    }
}
