//! Pictures of an embedding space (`ragd map`): cosine similarities of every pair of vectors (a
//! heatmap, drawn by [`crate::plot::heatmap`]) and a 2-D projection by principal component
//! analysis, written as one self-contained HTML page: an inline SVG with a circle per vector,
//! coloured by a metadata value, its label shown on hover (a tooltip, and the SVG `<title>`
//! where scripts are off). t-SNE ([`tsne2`], by the `bhtsne` crate that linfa-tsne wraps) is the
//! non-linear alternative, started from the PCA map rather than at random (its parallel sums
//! still make two runs differ in detail); no UMAP crate is maintained well enough to depend on.

use std::fmt::Write as _;

/// One vector on the map.
#[derive(Debug, Clone, PartialEq)]
pub struct MapPoint {
    /// Shown on hover.
    pub label: String,
    /// Points of one group share a colour (a metadata value; "" = no value).
    pub group: String,
    pub x: f64,
    pub y: f64,
}

/// The first two principal components of a set of vectors.
#[derive(Debug, Clone, PartialEq)]
pub struct Projection {
    /// Each vector's coordinates on PC1 and PC2, in input order.
    pub coords: Vec<[f64; 2]>,
    /// Share of the total variance along PC1 and PC2.
    pub explained: [f64; 2],
}

/// Cosine similarity of every pair, row-major (`n²` values; 0 where a vector is all zeros).
pub fn cosine_matrix(vectors: &[Vec<f32>]) -> Vec<f32> {
    let norms: Vec<f64> =
        vectors.iter().map(|v| v.iter().map(|x| f64::from(*x) * f64::from(*x)).sum::<f64>().sqrt()).collect();
    let n = vectors.len();
    let mut out = vec![0f32; n * n];
    for i in 0..n {
        for j in i..n {
            let dot: f64 =
                vectors[i].iter().zip(&vectors[j]).map(|(a, b)| f64::from(*a) * f64::from(*b)).sum();
            let denom = norms[i] * norms[j];
            let c = if denom > 0.0 { (dot / denom) as f32 } else { 0.0 };
            out[i * n + j] = c;
            out[j * n + i] = c;
        }
    }
    out
}

/// Symmetric matrix × vector.
fn mul(m: &[f64], size: usize, v: &[f64]) -> Vec<f64> {
    m.chunks_exact(size).map(|row| row.iter().zip(v).map(|(a, b)| a * b).sum()).collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn normalise(v: &mut [f64]) -> f64 {
    let n = dot(v, v).sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
    n
}

/// The two leading eigenpairs of a symmetric positive semi-definite matrix, by subspace
/// iteration with a Rayleigh–Ritz step (exact on the 2-D subspace), to convergence.
fn top_two(m: &[f64], size: usize) -> [(f64, Vec<f64>); 2] {
    // A fixed, irregular start (no Rng: the same input draws the same map).
    let start = |k: usize| -> Vec<f64> {
        (0..size).map(|i| (((i * 7919 + k * 104_729 + 13) % 1009) as f64 / 1009.0) - 0.5).collect()
    };
    let (mut q1, mut q2) = (start(0), start(1));
    let mut eig = [0.0f64; 2];
    for _ in 0..5000 {
        // Orthonormalise (Gram–Schmidt), multiply, Rayleigh–Ritz on span{q1, q2}.
        normalise(&mut q1);
        let p = dot(&q2, &q1);
        q2.iter_mut().zip(&q1).for_each(|(b, a)| *b -= p * a);
        if normalise(&mut q2) == 0.0 {
            q2 = start(2);
            let p = dot(&q2, &q1);
            q2.iter_mut().zip(&q1).for_each(|(b, a)| *b -= p * a);
            normalise(&mut q2);
        }
        let (m1, m2) = (mul(m, size, &q1), mul(m, size, &q2));
        let (a, b, c) = (dot(&q1, &m1), dot(&q1, &m2), dot(&q2, &m2));
        // Eigen-decomposition of [[a, b], [b, c]].
        let mean = (a + c) / 2.0;
        let r = (((a - c) / 2.0).powi(2) + b * b).sqrt();
        let (l1, l2) = (mean + r, mean - r);
        // Rotation taking (q1, q2) to the Ritz vectors.
        let theta = 0.5 * (2.0 * b).atan2(a - c);
        let (cs, sn) = (theta.cos(), theta.sin());
        let r1: Vec<f64> = q1.iter().zip(&q2).map(|(x, y)| cs * x + sn * y).collect();
        let r2: Vec<f64> = q1.iter().zip(&q2).map(|(x, y)| -sn * x + cs * y).collect();
        let converged = (l1 - eig[0]).abs() <= 1e-13 * l1.abs().max(1e-300)
            && (l2 - eig[1]).abs() <= 1e-13 * l1.abs().max(1e-300);
        eig = [l1, l2];
        if converged {
            return [(l1, r1), (l2, r2)];
        }
        // Next iterate: M applied to the Ritz vectors.
        q1 = m1.iter().zip(&m2).map(|(x, y)| cs * x + sn * y).collect();
        q2 = m1.iter().zip(&m2).map(|(x, y)| -sn * x + cs * y).collect();
    }
    let (mut r1, mut r2) = (q1, q2);
    normalise(&mut r1);
    normalise(&mut r2);
    [(eig[0], r1), (eig[1], r2)]
}

/// PCA to two dimensions. Works on whichever is smaller, the covariance (d×d) or the Gram
/// matrix of the centred vectors (n×n); the two have the same non-zero eigenvalues. Each
/// component's sign makes the point farthest along it positive. Fewer than two vectors, or
/// vectors of different lengths, give `None`.
pub fn pca2(vectors: &[Vec<f32>]) -> Option<Projection> {
    let n = vectors.len();
    let d = vectors.first()?.len();
    if n < 2 || d == 0 || vectors.iter().any(|v| v.len() != d) {
        return None;
    }
    let mut mean = vec![0f64; d];
    for v in vectors {
        mean.iter_mut().zip(v).for_each(|(m, x)| *m += f64::from(*x) / n as f64);
    }
    let centred: Vec<Vec<f64>> =
        vectors.iter().map(|v| v.iter().zip(&mean).map(|(x, m)| f64::from(*x) - m).collect()).collect();
    let total: f64 = centred.iter().map(|v| dot(v, v)).sum();
    let mut coords = vec![[0f64; 2]; n];
    let mut explained = [0f64; 2];
    if total > 0.0 {
        let (pairs, by_gram) = if n <= d {
            let mut g = vec![0f64; n * n];
            for i in 0..n {
                for j in i..n {
                    let x = dot(&centred[i], &centred[j]);
                    g[i * n + j] = x;
                    g[j * n + i] = x;
                }
            }
            (top_two(&g, n), true)
        } else {
            let mut c = vec![0f64; d * d];
            for v in &centred {
                for i in 0..d {
                    let vi = v[i];
                    if vi != 0.0 {
                        c[i * d..(i + 1) * d].iter_mut().zip(v).for_each(|(x, vj)| *x += vi * vj);
                    }
                }
            }
            (top_two(&c, d), false)
        };
        for (k, (lambda, vec)) in pairs.iter().enumerate() {
            let lambda = lambda.max(0.0);
            explained[k] = lambda / total;
            // Scores: Gram eigenvector u gives X·v = √λ·u; a covariance eigenvector v gives X·v.
            let scores: Vec<f64> = if by_gram {
                vec.iter().map(|u| u * lambda.sqrt()).collect()
            } else {
                centred.iter().map(|x| dot(x, vec)).collect()
            };
            let far = scores.iter().copied().fold(0.0f64, |a, s| if s.abs() > a.abs() { s } else { a });
            let sign = if far < 0.0 { -1.0 } else { 1.0 };
            for (c, s) in coords.iter_mut().zip(&scores) {
                c[k] = sign * s;
            }
        }
    }
    Some(Projection { coords, explained })
}

/// t-SNE settings that suit `n` points: perplexity 30, or less where there are too few points
/// for it (bhtsne needs n − 1 ≥ 3·perplexity); exact below 1000 points, Barnes-Hut (θ 0.5) above.
pub fn tsne_perplexity(n: usize) -> Option<f64> {
    (n >= 4).then(|| (((n - 1) / 3).min(30)) as f64)
}

/// Points at or below this many get exact t-SNE; more get Barnes-Hut.
pub const TSNE_EXACT_MAX: usize = 1000;

/// A 2-D t-SNE of the vectors (compared after scaling each to unit length, so Euclidean distance
/// ranks pairs as cosine does), started from `start` (the PCA map, scaled to a spread of 1e-4 as
/// scikit-learn's `init="pca"` does) rather than at random; bhtsne's parallel sums still make
/// two runs differ in detail, never in which points sit together. `None` below 4 vectors or for
/// vectors of different lengths.
pub fn tsne2(vectors: &[Vec<f32>], start: &[[f64; 2]]) -> Option<Vec<[f64; 2]>> {
    let n = vectors.len();
    let perplexity = tsne_perplexity(n)?;
    let d = vectors.first()?.len();
    if start.len() != n || d == 0 || vectors.iter().any(|v| v.len() != d) {
        return None;
    }
    let unit: Vec<Vec<f64>> = vectors
        .iter()
        .map(|v| {
            let mut v: Vec<f64> = v.iter().map(|x| f64::from(*x)).collect();
            normalise(&mut v);
            v
        })
        .collect();
    let rows: Vec<&[f64]> = unit.iter().map(Vec::as_slice).collect();
    let spread = (start.iter().map(|c| c[0] * c[0]).sum::<f64>() / n as f64).sqrt();
    let scale = if spread > 0.0 { 1e-4 / spread } else { 0.0 };
    let init: Vec<f64> = start.iter().flat_map(|c| [c[0] * scale, c[1] * scale]).collect();
    let euclid =
        |a: &&[f64], b: &&[f64]| a.iter().zip(b.iter()).map(|(x, y)| (x - y) * (x - y)).sum::<f64>().sqrt();
    let mut t = bhtsne::tSNE::<f64, &[f64]>::new(&rows);
    t.embedding_dim(2).perplexity(perplexity).epochs(1000).initial_embedding(init);
    if n <= TSNE_EXACT_MAX {
        t.exact(euclid);
    } else {
        t.barnes_hut(0.5, euclid);
    }
    Some(t.embedding().chunks_exact(2).map(|c| [c[0], c[1]]).collect())
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// What the page says about itself.
#[derive(Debug)]
pub struct PageInfo<'a> {
    pub title: &'a str,
    /// A line under the title (where the vectors came from, the model).
    pub subtitle: &'a str,
    /// The metadata key the colours stand for ("" = one colour).
    pub colour_key: &'a str,
    /// What the axes are (the projection and what it kept).
    pub method: &'a str,
    /// Axis names.
    pub axes: [&'a str; 2],
}

/// Width and height of the drawing in the page, in CSS pixels.
pub const PAGE_PLOT: (f64, f64) = (900.0, 620.0);

/// A self-contained HTML page (no network, no external script) with the points drawn as SVG
/// circles, coloured by group (ten colours, cycled, with a legend), labelled on hover.
pub fn html_page(info: &PageInfo<'_>, points: &[MapPoint]) -> String {
    let (w, h) = PAGE_PLOT;
    let pad = 40.0;
    let (x_lo, x_hi) = points.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.x), b.max(p.x)));
    let (y_lo, y_hi) = points.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.y), b.max(p.y)));
    let span = |lo: f64, hi: f64| if hi > lo { hi - lo } else { 1.0 };
    let sx = |x: f64| pad + (x - x_lo) / span(x_lo, x_hi) * (w - 2.0 * pad);
    // SVG's y grows downwards; PC2 grows upwards.
    let sy = |y: f64| h - pad - (y - y_lo) / span(y_lo, y_hi) * (h - 2.0 * pad);
    let mut groups: Vec<&str> = Vec::new();
    for p in points {
        if !groups.contains(&p.group.as_str()) {
            groups.push(&p.group);
        }
    }
    let colour = |g: &str| {
        let i = groups.iter().position(|x| *x == g).unwrap_or(0);
        let (r, gr, b) = crate::plot::PALETTE[i % crate::plot::PALETTE.len()];
        format!("#{r:02x}{gr:02x}{b:02x}")
    };
    let mut circles = String::new();
    for p in points {
        let _ = writeln!(
            circles,
            r#"<circle cx="{:.2}" cy="{:.2}" r="5" fill="{}" data-label="{}" data-group="{}"><title>{}</title></circle>"#,
            sx(p.x),
            sy(p.y),
            colour(&p.group),
            escape(&p.label),
            escape(&p.group),
            escape(&p.label),
        );
    }
    let mut legend = String::new();
    if !info.colour_key.is_empty() {
        let _ = write!(legend, "<b>{}</b>", escape(info.colour_key));
        for g in &groups {
            let name = if g.is_empty() { "(none)" } else { g };
            let count = points.iter().filter(|p| p.group == *g).count();
            let _ = write!(
                legend,
                r#"<span class="key"><i style="background:{}"></i>{} ({count})</span>"#,
                colour(g),
                escape(name)
            );
        }
    }
    format!(
        r##"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 16px; color: #222; }}
h1 {{ font-size: 20px; margin: 0 0 4px; }}
p {{ margin: 0 0 8px; color: #555; }}
svg {{ border: 1px solid #ccc; background: #fff; }}
circle {{ stroke: #fff; stroke-width: 0.8; }}
circle:hover {{ stroke: #000; stroke-width: 2; }}
.key {{ margin-left: 14px; white-space: nowrap; }}
.key i {{ display: inline-block; width: 10px; height: 10px; margin-right: 4px; border-radius: 5px; }}
#tip {{ position: fixed; pointer-events: none; display: none; max-width: 420px; background: #222;
  color: #fff; padding: 4px 8px; border-radius: 4px; font-size: 13px; }}
</style>
</head>
<body>
<h1>{title}</h1>
<p>{subtitle}</p>
<p>{method} {n} points.</p>
<div id="legend">{legend}</div>
<svg id="map" xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}">
<line x1="{pad}" y1="{axis_y}" x2="{x_end}" y2="{axis_y}" stroke="#999"/>
<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{axis_y}" stroke="#999"/>
<text x="{x_end}" y="{label_y}" text-anchor="end" font-size="12" fill="#555">{x_axis}</text>
<text x="4" y="{pad}" font-size="12" fill="#555">{y_axis}</text>
<g id="points">
{circles}</g>
</svg>
<div id="tip"></div>
<script>
const tip = document.getElementById("tip");
for (const c of document.querySelectorAll("#points circle")) {{
  c.addEventListener("mousemove", (e) => {{
    const g = c.dataset.group;
    tip.textContent = c.dataset.label + (g ? "  [" + g + "]" : "");
    tip.style.display = "block";
    tip.style.left = (e.clientX + 12) + "px";
    tip.style.top = (e.clientY + 12) + "px";
  }});
  c.addEventListener("mouseleave", () => {{ tip.style.display = "none"; }});
}}
</script>
</body>
</html>
"##,
        title = escape(info.title),
        subtitle = escape(info.subtitle),
        method = escape(info.method),
        x_axis = escape(info.axes[0]),
        y_axis = escape(info.axes[1]),
        n = points.len(),
        axis_y = h - pad,
        x_end = w - pad,
        label_y = h - pad + 16.0,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Four points spread 3 along one unit direction and 1 along an orthogonal one (both
    /// oblique to the axes of R⁶), plus an offset: PCA must find the two directions, scores ±3
    /// and ±1, variance shares 36/40 and 4/40 — computed by hand.
    #[test]
    fn pca_finds_the_directions_and_variances_computed_by_hand() {
        let s = 0.5f64; // 1/√4: e1 = (½,½,½,½,0,0), e2 = (½,−½,½,−½,0,0)
        let e1 = [s, s, s, s, 0.0, 0.0];
        let e2 = [s, -s, s, -s, 0.0, 0.0];
        let a = [1.0, -1.0, 1.0, -1.0];
        let b = [1.0, 1.0, -1.0, -1.0];
        let offset = [5.0, -2.0, 0.5, 1.0, 7.0, 3.0];
        let vectors: Vec<Vec<f32>> = (0..4)
            .map(|i| (0..6).map(|k| (offset[k] + 3.0 * a[i] * e1[k] + b[i] * e2[k]) as f32).collect())
            .collect();
        let p = pca2(&vectors).expect("projection");
        assert!((p.explained[0] - 0.9).abs() < 1e-6, "{:?}", p.explained);
        assert!((p.explained[1] - 0.1).abs() < 1e-6, "{:?}", p.explained);
        for i in 0..4 {
            // Signs: the farthest point along each component is positive; all are equally far,
            // so the first of them found sets the sign: compare magnitudes and relative signs.
            assert!((p.coords[i][0].abs() - 3.0).abs() < 1e-4, "{:?}", p.coords);
            assert!((p.coords[i][1].abs() - 1.0).abs() < 1e-4, "{:?}", p.coords);
            assert!((p.coords[i][0] * p.coords[0][0] * a[i] * a[0]) > 0.0);
            assert!((p.coords[i][1] * p.coords[0][1] * b[i] * b[0]) > 0.0);
        }
    }

    /// More points than dimensions takes the covariance route; the answer is the same kind.
    #[test]
    fn pca_by_covariance_when_points_outnumber_dimensions() {
        // Points (t, 2t) for t in {−2, −1, 0, 1, 2, 6}, in R²: all variance on PC1. Centred
        // (mean t = 1), the score is (t − 1)·√5, and t = 6 is the farthest, so it is positive.
        let ts = [-2.0f32, -1.0, 0.0, 1.0, 2.0, 6.0];
        let vectors: Vec<Vec<f32>> = ts.iter().map(|t| vec![*t, 2.0 * t]).collect();
        let p = pca2(&vectors).expect("projection");
        assert!((p.explained[0] - 1.0).abs() < 1e-9, "{:?}", p.explained);
        assert!(p.explained[1].abs() < 1e-9, "{:?}", p.explained);
        for (c, t) in p.coords.iter().zip(ts) {
            let want = (f64::from(t) - 1.0) * 5f64.sqrt();
            assert!((c[0] - want).abs() < 1e-6, "{c:?} vs {want}");
        }
    }

    /// Two tight clusters far apart in R⁸: every point lands nearer its own cluster's centre than
    /// the other's, run after run.
    #[test]
    fn tsne_keeps_clusters_apart_and_repeats_itself() {
        let noise = |i: usize, k: usize| ((i * 31 + k * 17) % 13) as f32 / 13.0 * 0.05;
        let vectors: Vec<Vec<f32>> = (0..20)
            .map(|i| {
                let axis = if i < 10 { 0 } else { 1 };
                (0..8).map(|k| if k == axis { 1.0 } else { 0.0 } + noise(i, k)).collect()
            })
            .collect();
        let start = pca2(&vectors).expect("pca").coords;
        for _ in 0..3 {
            let y = tsne2(&vectors, &start).expect("t-SNE");
            assert_eq!(y.len(), 20);
            let centre = |r: std::ops::Range<usize>| {
                let n = r.len() as f64;
                let (sx, sy) = y[r].iter().fold((0.0, 0.0), |(a, b), c| (a + c[0], b + c[1]));
                [sx / n, sy / n]
            };
            let (a, b) = (centre(0..10), centre(10..20));
            let dist = |p: [f64; 2], q: [f64; 2]| ((p[0] - q[0]).powi(2) + (p[1] - q[1]).powi(2)).sqrt();
            for (i, p) in y.iter().enumerate() {
                let (own, other) = if i < 10 { (a, b) } else { (b, a) };
                assert!(dist(*p, own) < dist(*p, other), "point {i} sits with the other cluster: {y:?}");
            }
        }
        assert_eq!(tsne2(&vectors[..3], &start[..3]), None, "too few points");
        assert_eq!(tsne_perplexity(10), Some(3.0));
        assert_eq!(tsne_perplexity(1000), Some(30.0));
    }

    #[test]
    fn degenerate_input() {
        assert_eq!(pca2(&[]), None);
        assert_eq!(pca2(&[vec![1.0, 2.0]]), None);
        assert_eq!(pca2(&[vec![1.0, 2.0], vec![1.0]]), None);
        let same = pca2(&[vec![1.0, 2.0], vec![1.0, 2.0]]).expect("two equal points");
        assert_eq!(same.coords, vec![[0.0, 0.0]; 2]);
    }

    #[test]
    fn cosine_matrix_by_hand() {
        let m = cosine_matrix(&[vec![1.0, 0.0], vec![1.0, 1.0], vec![0.0, 0.0]]);
        let r = std::f32::consts::FRAC_1_SQRT_2;
        let want = [1.0, r, 0.0, r, 1.0, 0.0, 0.0, 0.0, 0.0];
        assert!(m.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-6), "{m:?}");
    }

    #[test]
    fn page_escapes_labels_and_colours_groups() {
        let pts = vec![
            MapPoint { label: "<b>\"x\" & y</b>".into(), group: "a".into(), x: 0.0, y: 0.0 },
            MapPoint { label: "two".into(), group: "b".into(), x: 1.0, y: 1.0 },
            MapPoint { label: "three".into(), group: "a".into(), x: 0.5, y: 2.0 },
        ];
        let info = PageInfo {
            title: "t<",
            subtitle: "s",
            colour_key: "kind",
            method: "PCA: PC1 holds 50.0% of the variance.",
            axes: ["PC1", "PC2"],
        };
        let html = html_page(&info, &pts);
        assert!(html.contains("&lt;b&gt;&quot;x&quot; &amp; y&lt;/b&gt;"));
        assert!(!html.contains("<b>\"x\""));
        assert_eq!(html.matches("<circle ").count(), 3);
        assert_eq!(html.matches(r##"fill="#1f77b4""##).count(), 2, "group a: the first colour");
        assert_eq!(html.matches(r##"fill="#ff7f0e""##).count(), 1, "group b: the second");
        assert!(html.contains("PC1 holds 50.0%"));
        assert!(html.contains("a (2)") && html.contains("b (1)"));
        assert!(!html.contains("http://") || html.matches("http://").count() == 1, "only the SVG namespace");
    }
}
