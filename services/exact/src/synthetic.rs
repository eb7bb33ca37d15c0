//! Embedding-like synthetic vectors for tests and benchmarks: unlike uniform noise, they have
//! what sentence embeddings have and what compressed storage has to cope with — clusters, a
//! shared mean direction, per-dimension scales that differ by 10×, unit length — so recall of a
//! compressed form measured on them means something. Deterministic for a seed.

/// `n` unit vectors of dimension `dim`: 20 cluster centres (fixed by `dim`), each vector a
/// centre plus noise (drawn from `seed`), offset by a shared mean and scaled per dimension.
pub fn embedding_like(n: usize, dim: usize, seed: u64) -> Vec<f32> {
    let uniform = |seed: u64| {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        }
    };
    let mut shape = uniform(0xC0FFEE);
    let scale: Vec<f32> = (0..dim).map(|d| 0.1 + 0.9 * ((d * 7919) % dim) as f32 / dim as f32).collect();
    let mean: Vec<f32> = (0..dim).map(|_| 0.3 * shape()).collect();
    let centres: Vec<f32> = (0..20 * dim).map(|_| shape()).collect();
    let mut next = uniform(seed);
    let mut out = Vec::with_capacity(n * dim);
    for i in 0..n {
        let c = &centres[(i % 20) * dim..(i % 20 + 1) * dim];
        let v: Vec<f32> = (0..dim).map(|d| (mean[d] + c[d] + 0.6 * next()) * scale[d]).collect();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(f32::MIN_POSITIVE);
        out.extend(v.iter().map(|x| x / norm));
    }
    out
}
