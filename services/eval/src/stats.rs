//! Correlations of model similarities with human judgements, as scipy.stats computes them:
//! Pearson's r, and Spearman's ρ as Pearson's r of the ranks, tied values sharing their average
//! rank (scipy's `rankdata(method="average")`).

/// Pearson's correlation coefficient; `None` when the lengths differ, fewer than two pairs are
/// given, or either side is constant.
pub fn pearson(x: &[f64], y: &[f64]) -> Option<f64> {
    if x.len() != y.len() || x.len() < 2 {
        return None;
    }
    let n = x.len() as f64;
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        let (dx, dy) = (a - mx, b - my);
        sxy += dx * dy;
        sxx += dx * dx;
        syy += dy * dy;
    }
    (sxx > 0.0 && syy > 0.0).then(|| (sxy / (sxx.sqrt() * syy.sqrt())).clamp(-1.0, 1.0))
}

/// 1-based ranks, ties sharing the average of the ranks they span.
pub fn ranks(x: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..x.len()).collect();
    order.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut out = vec![0.0; x.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && x[order[j + 1]] == x[order[i]] {
            j += 1;
        }
        // Positions i..=j (0-based) hold ranks i+1..=j+1; their mean is (i + j) / 2 + 1.
        let rank = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            out[k] = rank;
        }
        i = j + 1;
    }
    out
}

/// Spearman's rank correlation.
pub fn spearman(x: &[f64], y: &[f64]) -> Option<f64> {
    if x.len() != y.len() {
        return None;
    }
    pearson(&ranks(x), &ranks(y))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pearson_by_hand() {
        // x = 1, 2, 3; y = 2, 4, 7: means 2 and 13/3; Σdxdy = 5, Σdx² = 2, Σdy² = 38/3.
        let r = pearson(&[1.0, 2.0, 3.0], &[2.0, 4.0, 7.0]).expect("r");
        assert!((r - 5.0 / (2f64.sqrt() * (38.0f64 / 3.0).sqrt())).abs() < 1e-12, "{r}");
        assert!((pearson(&[1.0, 2.0], &[3.0, -1.0]).expect("r") + 1.0).abs() < 1e-12);
        assert_eq!(pearson(&[1.0, 1.0, 1.0], &[1.0, 2.0, 3.0]), None, "constant side");
        assert_eq!(pearson(&[1.0], &[1.0]), None);
        assert_eq!(pearson(&[1.0, 2.0], &[1.0]), None);
    }

    #[test]
    fn ties_share_the_average_rank() {
        assert_eq!(ranks(&[10.0, 30.0, 20.0, 20.0]), vec![1.0, 4.0, 2.5, 2.5]);
        assert_eq!(ranks(&[5.0, 5.0, 5.0]), vec![2.0, 2.0, 2.0]);
        // Monotone but not linear: ρ = 1, r < 1.
        let (x, y) = ([1.0, 2.0, 3.0, 4.0], [1.0, 4.0, 9.0, 100.0]);
        assert!((spearman(&x, &y).expect("rho") - 1.0).abs() < 1e-12);
        assert!(pearson(&x, &y).expect("r") < 0.99);
    }
}
