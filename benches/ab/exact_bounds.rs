//! A/B of two revisions of ragd-exact in one process: the same data, the same queries, the
//! two builds measured alternately (A B A B …) so drift in clock speed or a noisy neighbour hits
//! both alike. Built and run by `benches/ab/exact-bounds`; prints a markdown table.
//!
//! Written for issue 17: the AVX-512 micro-kernels' bounds went from `debug_assert!` to
//! `assert!` (checked in release builds, once per tile) in 0051ba3; A = its parent, B = 0051ba3.

use std::time::{Duration, Instant};

const DIM: usize = 384;
const K: usize = 10;
const QUERIES: usize = 1024;

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// Queries per second of `search` over `secs`, walking the query set in batches of `batch`.
fn qps(secs: Duration, queries: &[f32], batch: usize, mut search: impl FnMut(&[f32]) -> usize) -> f64 {
    let nq = queries.len() / DIM;
    let mut run = |i: usize| {
        let start = (i * batch) % (nq - batch + 1);
        search(&queries[start * DIM..(start + batch) * DIM])
    };
    run(0);
    let (t, mut done, mut i) = (Instant::now(), 0usize, 0usize);
    while t.elapsed() < secs || i < 3 {
        done += run(i);
        i += 1;
    }
    done as f64 / t.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let secs = Duration::from_secs_f64(
        std::env::var("RAGD_AB_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(2.0),
    );
    let rounds: usize = std::env::var("RAGD_AB_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    let sizes: Vec<usize> = std::env::var("RAGD_AB_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![100_000, 1_000_000]);
    let queries = random(QUERIES * DIM, 2);
    println!(
        "| n | batch | A q/s | B q/s | B ÷ A | B ÷ A per round |\n|---|---|---|---|---|---|"
    );
    for n in sizes {
        let data = random(n * DIM, 1);
        let ids: Vec<u64> = (0..n as u64).collect();
        let mut a = old::ExactIndex::new(DIM, old::Metric::InnerProduct, old::Options::default()).unwrap();
        a.add(&ids, &data).unwrap();
        let mut b = new::ExactIndex::new(DIM, new::Metric::InnerProduct, new::Options::default()).unwrap();
        b.add(&ids, &data).unwrap();
        drop(data);
        eprintln!("n={n}: A isa {}, B isa {}", a.isa().name(), b.isa().name());
        // Same answers from both builds (the check changes nothing but what a bad call does).
        let (ra, rb) = (a.search(&queries[..16 * DIM], K).unwrap(), b.search(&queries[..16 * DIM], K).unwrap());
        let same = ra.iter().zip(&rb).all(|(x, y)| x.iter().map(|h| h.id).eq(y.iter().map(|h| h.id)));
        assert!(same, "A and B disagree on the top-{K} of the first 16 queries");
        for batch in [1usize, 16, 64, 256] {
            let (mut qa, mut qb) = (Vec::new(), Vec::new());
            for r in 0..rounds {
                // Alternate which goes first so neither always runs on a warmer cache.
                let mut one = |first_a: bool| {
                    if first_a {
                        qa.push(qps(secs, &queries, batch, |q| a.search(q, K).unwrap().len()));
                    } else {
                        qb.push(qps(secs, &queries, batch, |q| b.search(q, K).unwrap().len()));
                    }
                };
                one(r % 2 == 0);
                one(r % 2 != 0);
            }
            let per: Vec<String> = qa.iter().zip(&qb).map(|(x, y)| format!("{:.3}", y / x)).collect();
            let (ma, mb) = (median(qa), median(qb));
            println!("| {n} | {batch} | {ma:.0} | {mb:.0} | **{:.3}×** | {} |", mb / ma, per.join(" "));
        }
    }
}
