//! Fusion of a dense and a keyword result list into one ranking (hybrid search). Each fused hit
//! keeps its rank and score in every list it came from ([`SourceRank`]), so a client can see why
//! it ranks where it does.

use std::collections::HashMap;

use crate::store::{Hit, Source, SourceRank};

/// How two lists become one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fusion {
    /// Reciprocal rank fusion: Σ 1 / (k + rank), ranks from 1.
    Rrf { k: u32 },
    /// Distribution-based score fusion (Qdrant's DBSF): each list's scores mapped linearly from
    /// [mean − 3σ, mean + 3σ] (σ: population standard deviation) to [0, 1], clamped, then summed.
    Dbsf,
    /// Relative score fusion (Weaviate's hybrid `alpha`): each list min-max scaled to [0, 1],
    /// then alpha · dense + (1 − alpha) · keyword.
    Weighted { alpha: f32 },
}

impl Default for Fusion {
    fn default() -> Self {
        Fusion::Rrf { k: 60 }
    }
}

/// Scores with higher = better (a euclidean distance is negated).
fn oriented(hits: &[Hit], higher_is_better: bool) -> Vec<f32> {
    hits.iter().map(|h| if higher_is_better { h.score } else { -h.score }).collect()
}

/// Min-max scaling to [0, 1]; a list whose scores are all equal scales to 1.
pub fn min_max(scores: &[f32]) -> Vec<f32> {
    let lo = scores.iter().copied().fold(f32::INFINITY, f32::min);
    let hi = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    scores.iter().map(|s| if hi > lo { (s - lo) / (hi - lo) } else { 1.0 }).collect()
}

/// DBSF's scaling: [mean − 3σ, mean + 3σ] → [0, 1], clamped; all-equal scores scale to 0.5.
fn three_sigma(scores: &[f32]) -> Vec<f32> {
    let n = scores.len() as f64;
    let mean = scores.iter().map(|s| f64::from(*s)).sum::<f64>() / n;
    let var = scores.iter().map(|s| (f64::from(*s) - mean).powi(2)).sum::<f64>() / n;
    let sd = var.sqrt();
    scores
        .iter()
        .map(|s| {
            if sd > 0.0 {
                ((f64::from(*s) - (mean - 3.0 * sd)) / (6.0 * sd)).clamp(0.0, 1.0) as f32
            } else {
                0.5
            }
        })
        .collect()
}

/// Fuses `dense` (scored by the collection's distance) and `keyword` (BM25) lists, each best
/// first, into one list best first (ties by document id, then chunk), every hit carrying its
/// sources.
pub fn fuse(dense: Vec<Hit>, keyword: Vec<Hit>, fusion: Fusion, dense_higher_is_better: bool) -> Vec<Hit> {
    let lists = [
        (Source::Dense, oriented(&dense, dense_higher_is_better), dense),
        (Source::Keyword, oriented(&keyword, true), keyword),
    ];
    let mut fused: Vec<Hit> = Vec::new();
    let mut at: HashMap<(String, u32), usize> = HashMap::new();
    for (source, scores, hits) in lists {
        if hits.is_empty() {
            continue;
        }
        let contribution: Vec<f32> = match fusion {
            Fusion::Rrf { k } => (1..=hits.len()).map(|rank| 1.0 / (k as f32 + rank as f32)).collect(),
            Fusion::Dbsf => three_sigma(&scores),
            Fusion::Weighted { alpha } => {
                let weight = if source == Source::Dense { alpha } else { 1.0 - alpha };
                min_max(&scores).into_iter().map(|s| weight * s).collect()
            }
        };
        for (i, (hit, add)) in hits.into_iter().zip(contribution).enumerate() {
            let rank = SourceRank { source, rank: i as u32 + 1, score: hit.score };
            let key = (hit.doc_id.clone(), hit.chunk);
            match at.get(&key) {
                Some(&j) => {
                    fused[j].score += add;
                    fused[j].sources.push(rank);
                }
                None => {
                    at.insert(key, fused.len());
                    fused.push(Hit { score: add, sources: vec![rank], ..hit });
                }
            }
        }
    }
    fused.sort_by(|a, b| crate::store::merge::compare(a, b, true));
    fused
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(doc: &str, score: f32) -> Hit {
        Hit {
            doc_id: doc.into(),
            chunk: 0,
            text: String::new(),
            score,
            metadata: Default::default(),
            sources: Vec::new(),
        }
    }

    fn ranking(hits: &[Hit]) -> Vec<(&str, f32)> {
        hits.iter().map(|h| (h.doc_id.as_str(), h.score)).collect()
    }

    fn close(got: &[(&str, f32)], want: &[(&str, f32)]) {
        assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
        for (g, w) in got.iter().zip(want) {
            assert_eq!(g.0, w.0, "{got:?} vs {want:?}");
            assert!((g.1 - w.1).abs() < 1e-6, "{got:?} vs {want:?}");
        }
    }

    // Dense: a 0.9, b 0.8, c 0.5. Keyword: c 12, d 6, a 3.
    fn lists() -> (Vec<Hit>, Vec<Hit>) {
        (
            vec![hit("a", 0.9), hit("b", 0.8), hit("c", 0.5)],
            vec![hit("c", 12.0), hit("d", 6.0), hit("a", 3.0)],
        )
    }

    #[test]
    fn rrf_by_hand() {
        let (d, k) = lists();
        let fused = fuse(d, k, Fusion::Rrf { k: 1 }, true);
        // a: 1/2 + 1/4 = 0.75; c: 1/4 + 1/2 = 0.75; b: 1/3; d: 1/3. Ties by id.
        close(&ranking(&fused), &[("a", 0.75), ("c", 0.75), ("b", 1.0 / 3.0), ("d", 1.0 / 3.0)]);
        let c = &fused[1];
        assert_eq!(
            c.sources,
            vec![
                SourceRank { source: Source::Dense, rank: 3, score: 0.5 },
                SourceRank { source: Source::Keyword, rank: 1, score: 12.0 },
            ]
        );
    }

    #[test]
    fn weighted_by_hand() {
        let (d, k) = lists();
        // Dense min-max: a 1, b 0.75, c 0. Keyword: c 1, d 1/3, a 0.
        let fused = fuse(d, k, Fusion::Weighted { alpha: 0.25 }, true);
        // a 0.25; b 0.1875; c 0.75; d 0.25.
        close(&ranking(&fused), &[("c", 0.75), ("a", 0.25), ("d", 0.25), ("b", 0.1875)]);
        // alpha 1: the dense order, keyword-only hits at 0.
        let (d, k) = lists();
        close(
            &ranking(&fuse(d, k, Fusion::Weighted { alpha: 1.0 }, true)),
            &[("a", 1.0), ("b", 0.75), ("c", 0.0), ("d", 0.0)],
        );
    }

    #[test]
    fn dbsf_by_hand() {
        // Dense 3, 1 → mean 2, sd 1 → [−1, 5]: 3 → 4/6, 1 → 2/6. Keyword 10, 10 → 0.5 each.
        let fused = fuse(
            vec![hit("a", 3.0), hit("b", 1.0)],
            vec![hit("b", 10.0), hit("c", 10.0)],
            Fusion::Dbsf,
            true,
        );
        close(&ranking(&fused), &[("b", 2.0 / 6.0 + 0.5), ("a", 4.0 / 6.0), ("c", 0.5)]);
    }

    #[test]
    fn euclid_distances_count_smaller_as_better() {
        // Distances: a 0.1 (closest), b 0.4. Min-max on negated distances: a 1, b 0.
        let fused =
            fuse(vec![hit("a", 0.1), hit("b", 0.4)], Vec::new(), Fusion::Weighted { alpha: 1.0 }, false);
        close(&ranking(&fused), &[("a", 1.0), ("b", 0.0)]);
        assert_eq!(fused[0].sources[0].score, 0.1, "the source keeps the distance as the store gave it");
    }
}
