//! trec_eval's measures, as pytrec_eval (and so BEIR and MTEB) compute them:
//!
//! - a run's documents are ranked by score, higher first; **ties go to the larger document id**
//!   (trec_eval sorts by score, then docno, both descending);
//! - a document is relevant when its judgement is ≥ 1 (trec_eval's default relevance level);
//!   unjudged documents count as not relevant;
//! - `ndcg_cut_k`: Σ gain / log2(rank + 1) over the top k, gain = the judgement (linear, not
//!   2^rel − 1), over the same sum for the ideal order of the query's positive judgements;
//! - `recall_k`: relevant documents in the top k over all relevant documents of the query;
//! - `recip_rank` cut at k (BEIR's MRR@k): 1 / the rank of the first relevant document in the
//!   top k, 0 if none;
//! - `map_cut_k`: Σ over relevant documents in the top k of the precision at their rank, over
//!   all relevant documents of the query.
//!
//! A query without any relevant document is left out of the means (trec_eval gives it 0 but
//! BEIR's qrels never hold one); a judged query the run has no list for scores 0 everywhere.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};

/// Judgements: query id → document id → relevance.
pub type Qrels = HashMap<String, HashMap<String, i32>>;

/// A run: query id → (document id, score) in any order.
pub type Run = HashMap<String, Vec<(String, f64)>>;

/// One measure at one cut-off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Measure {
    Ndcg(usize),
    Recall(usize),
    Mrr(usize),
    Map(usize),
}

impl Measure {
    /// BEIR's names: `nDCG@10`, `Recall@100`, `MRR@10`, `MAP@100`.
    pub fn name(self) -> String {
        match self {
            Measure::Ndcg(k) => format!("nDCG@{k}"),
            Measure::Recall(k) => format!("Recall@{k}"),
            Measure::Mrr(k) => format!("MRR@{k}"),
            Measure::Map(k) => format!("MAP@{k}"),
        }
    }

    /// The measure of one ranked list (best first) against one query's judgements.
    pub fn of(self, ranked: &[&str], judged: &HashMap<String, i32>) -> f64 {
        let relevant = judged.values().filter(|r| **r >= 1).count();
        if relevant == 0 {
            return 0.0;
        }
        let rel = |doc: &str| judged.get(doc).copied().unwrap_or(0);
        match self {
            Measure::Ndcg(k) => {
                let dcg: f64 =
                    ranked.iter().take(k).enumerate().map(|(i, d)| gain(rel(d)) / discount(i)).sum();
                let mut ideal: Vec<i32> = judged.values().copied().filter(|r| *r > 0).collect();
                ideal.sort_unstable_by(|a, b| b.cmp(a));
                let idcg: f64 = ideal.iter().take(k).enumerate().map(|(i, r)| gain(*r) / discount(i)).sum();
                dcg / idcg
            }
            Measure::Recall(k) => {
                ranked.iter().take(k).filter(|d| rel(d) >= 1).count() as f64 / relevant as f64
            }
            Measure::Mrr(k) => {
                ranked.iter().take(k).position(|d| rel(d) >= 1).map_or(0.0, |i| 1.0 / (i + 1) as f64)
            }
            Measure::Map(k) => {
                let mut found = 0usize;
                let mut sum = 0.0;
                for (i, d) in ranked.iter().take(k).enumerate() {
                    if rel(d) >= 1 {
                        found += 1;
                        sum += found as f64 / (i + 1) as f64;
                    }
                }
                sum / relevant as f64
            }
        }
    }
}

fn gain(rel: i32) -> f64 {
    f64::from(rel.max(0))
}

/// 1 / log2(rank + 1) for the 0-based position `i` (rank i + 1).
fn discount(i: usize) -> f64 {
    ((i + 2) as f64).log2()
}

/// trec_eval's order: score descending, then document id descending.
pub fn rank(list: &[(String, f64)]) -> Vec<&str> {
    let mut sorted: Vec<&(String, f64)> = list.iter().collect();
    sorted.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap_or(Ordering::Equal).then_with(|| b.0.cmp(&a.0)));
    sorted.into_iter().map(|(d, _)| d.as_str()).collect()
}

/// Per query and mean figures of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// Measure → mean over the judged queries with at least one relevant document.
    pub mean: BTreeMap<Measure, f64>,
    /// Query id → measure → value.
    pub per_query: BTreeMap<String, BTreeMap<Measure, f64>>,
}

/// Every measure of `measures` for every judged query (with a relevant document) of `qrels`.
pub fn evaluate(qrels: &Qrels, run: &Run, measures: &[Measure]) -> Evaluation {
    let mut per_query = BTreeMap::new();
    for (query, judged) in qrels {
        if !judged.values().any(|r| *r >= 1) {
            continue;
        }
        let ranked = run.get(query).map(|l| rank(l)).unwrap_or_default();
        let values: BTreeMap<Measure, f64> = measures.iter().map(|m| (*m, m.of(&ranked, judged))).collect();
        per_query.insert(query.clone(), values);
    }
    let n = per_query.len().max(1) as f64;
    let mean = measures
        .iter()
        .map(|m| (*m, per_query.values().map(|v: &BTreeMap<Measure, f64>| v[m]).sum::<f64>() / n))
        .collect();
    Evaluation { mean, per_query }
}

/// BEIR's reported set: nDCG@10, Recall@10, Recall@100, MRR@10, MAP@100.
pub const BEIR: [Measure; 5] =
    [Measure::Ndcg(10), Measure::Recall(10), Measure::Recall(100), Measure::Mrr(10), Measure::Map(100)];

#[cfg(test)]
mod tests {
    use super::*;

    fn judged(pairs: &[(&str, i32)]) -> HashMap<String, i32> {
        pairs.iter().map(|(d, r)| ((*d).to_string(), *r)).collect()
    }

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-12, "{a} != {b}");
    }

    #[test]
    fn graded_ndcg_recall_map_mrr_by_hand() {
        // Judgements a 1, b 2, c 3; run a, x, b. DCG = 1/log2(2) + 2/log2(4) = 2;
        // IDCG = 3 + 2/log2(3) + 1/log2(4).
        let j = judged(&[("a", 1), ("b", 2), ("c", 3), ("n", 0)]);
        let ranked = ["a", "x", "b"];
        close(Measure::Ndcg(10).of(&ranked, &j), 2.0 / (3.0 + 2.0 / 3f64.log2() + 0.5));
        close(Measure::Recall(1).of(&ranked, &j), 1.0 / 3.0);
        close(Measure::Recall(10).of(&ranked, &j), 2.0 / 3.0);
        close(Measure::Mrr(10).of(&ranked, &j), 1.0);
        // Precision at a (rank 1) = 1, at b (rank 3) = 2/3, over 3 relevant.
        close(Measure::Map(100).of(&ranked, &j), (1.0 + 2.0 / 3.0) / 3.0);
        close(Measure::Map(2).of(&ranked, &j), 1.0 / 3.0);
    }

    #[test]
    fn mrr_is_cut_and_a_judged_zero_is_not_relevant() {
        let j = judged(&[("hit", 1), ("zero", 0)]);
        let ranked = ["zero", "o1", "o2", "hit"];
        close(Measure::Mrr(10).of(&ranked, &j), 0.25);
        close(Measure::Mrr(3).of(&ranked, &j), 0.0);
        close(Measure::Ndcg(10).of(&ranked, &j), 1.0 / 5f64.log2());
    }

    #[test]
    fn ties_rank_the_larger_document_id_first() {
        let list = vec![("a".to_string(), 1.0), ("c".to_string(), 2.0), ("b".to_string(), 1.0)];
        assert_eq!(rank(&list), vec!["c", "b", "a"]);
    }

    #[test]
    fn means_skip_queries_without_relevant_documents_and_count_missing_runs_as_zero() {
        let mut qrels = Qrels::new();
        qrels.insert("q1".into(), judged(&[("a", 1)]));
        qrels.insert("q2".into(), judged(&[("b", 1)]));
        qrels.insert("q3".into(), judged(&[("c", 0)]));
        let mut run = Run::new();
        run.insert("q1".into(), vec![("a".into(), 0.5)]);
        run.insert("q3".into(), vec![("c".into(), 0.5)]);
        let e = evaluate(&qrels, &run, &[Measure::Recall(10)]);
        assert_eq!(e.per_query.len(), 2, "q3 has no relevant document");
        close(e.per_query["q2"][&Measure::Recall(10)], 0.0);
        close(e.mean[&Measure::Recall(10)], 0.5);
    }
}
