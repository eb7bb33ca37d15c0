//! Per-query top-k: a small array kept sorted (best first), with the current worst score as a
//! threshold so almost every candidate costs one comparison. Ordering is total and
//! deterministic: higher score first, then lower id.

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Neighbor {
    pub id: u64,
    pub score: f32,
}

/// Is `a` ranked before `b`?
#[inline(always)]
pub fn better(a: Neighbor, b: Neighbor) -> bool {
    a.score > b.score || (a.score == b.score && a.id < b.id)
}

#[derive(Debug, Clone)]
pub struct TopK {
    k: usize,
    items: Vec<Neighbor>,
}

impl TopK {
    pub fn new(k: usize) -> Self {
        Self { k, items: Vec::with_capacity(k + 1) }
    }

    /// The score a candidate must reach to enter (−∞ until full).
    #[inline(always)]
    pub fn threshold(&self) -> f32 {
        match self.k {
            0 => f32::INFINITY,
            k if self.items.len() < k => f32::NEG_INFINITY,
            k => self.items[k - 1].score,
        }
    }

    #[inline]
    pub fn push(&mut self, n: Neighbor) {
        if self.k == 0 {
            return;
        }
        if self.items.len() == self.k {
            if !better(n, self.items[self.k - 1]) {
                return;
            }
            self.items.pop();
        }
        let at = self.items.partition_point(|x| better(*x, n));
        self.items.insert(at, n);
    }

    /// Offers `scores[j]` for ids `ids[j]`.
    #[inline]
    pub fn offer(&mut self, scores: &[f32], ids: &[u64]) {
        let mut t = self.threshold();
        for (s, id) in scores.iter().zip(ids) {
            if *s >= t && self.k > 0 {
                self.push(Neighbor { id: *id, score: *s });
                t = self.threshold();
            }
        }
    }

    pub fn merge(&mut self, other: TopK) {
        for n in other.items {
            self.push(n);
        }
    }

    pub fn into_sorted(self) -> Vec<Neighbor> {
        self.items
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn keeps_the_k_best_in_order(scores in prop::collection::vec(-3i32..3, 0..200), k in 0usize..20) {
            let ids: Vec<u64> = (0..scores.len() as u64).collect();
            let fs: Vec<f32> = scores.iter().map(|s| *s as f32).collect();
            let mut t = TopK::new(k);
            t.offer(&fs, &ids);
            let mut all: Vec<Neighbor> = fs.iter().zip(&ids).map(|(s, id)| Neighbor { id: *id, score: *s }).collect();
            all.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.id.cmp(&b.id)));
            all.truncate(k);
            prop_assert_eq!(t.into_sorted(), all);
        }
    }
}
