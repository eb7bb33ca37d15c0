//! Exact top-k merge of per-shard results: every shard returns its own top k, and the global
//! top k is the best k of their union (ties broken by document id and chunk, so results do not
//! depend on shard timing).

use std::cmp::Ordering;

use super::Hit;

/// Merges shard result lists into the global top `k`, best first.
pub fn merge_top_k(lists: Vec<Vec<Hit>>, k: usize, higher_is_better: bool) -> Vec<Hit> {
    let mut all: Vec<Hit> = lists.into_iter().flatten().collect();
    all.sort_by(|a, b| compare(a, b, higher_is_better));
    all.truncate(k);
    all
}

/// Best first: by score (direction per distance), then doc id, then chunk.
pub fn compare(a: &Hit, b: &Hit, higher_is_better: bool) -> Ordering {
    let by_score = if higher_is_better { b.score.total_cmp(&a.score) } else { a.score.total_cmp(&b.score) };
    by_score.then_with(|| a.doc_id.cmp(&b.doc_id)).then_with(|| a.chunk.cmp(&b.chunk))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hit(doc: usize, score: f32) -> Hit {
        Hit {
            doc_id: format!("d{doc:03}"),
            chunk: 0,
            text: String::new(),
            score,
            metadata: Default::default(),
            sources: Vec::new(),
        }
    }

    proptest! {
        /// Per-shard top-k followed by the merge equals the top-k of all points at once.
        #[test]
        fn sharded_top_k_equals_global_top_k(
            scores in proptest::collection::vec(-1000i32..1000, 0..200),
            shards in 1usize..6,
            k in 1usize..30,
            higher in any::<bool>(),
        ) {
            let points: Vec<Hit> = scores.iter().enumerate().map(|(i, &s)| hit(i, s as f32 / 7.0)).collect();
            let mut per_shard: Vec<Vec<Hit>> = vec![Vec::new(); shards];
            for (i, p) in points.iter().enumerate() {
                per_shard[i % shards].push(p.clone());
            }
            let lists = per_shard.into_iter().map(|mut l| {
                l.sort_by(|a, b| compare(a, b, higher));
                l.truncate(k);
                l
            }).collect();
            let merged = merge_top_k(lists, k, higher);
            let mut global = points;
            global.sort_by(|a, b| compare(a, b, higher));
            global.truncate(k);
            prop_assert_eq!(merged, global);
        }
    }

    #[test]
    fn euclid_keeps_smallest_distances() {
        let merged = merge_top_k(vec![vec![hit(1, 0.5), hit(2, 2.0)], vec![hit(3, 0.1)]], 2, false);
        assert_eq!(merged.iter().map(|h| h.doc_id.as_str()).collect::<Vec<_>>(), vec!["d003", "d001"]);
    }
}
