//! ragd-exact: exact nearest-neighbour search by inner product, cosine or L2 over a resident
//! matrix of vectors, the way faiss `IndexFlatIP` / `IndexFlatL2` do it.
//!
//! - [`ExactIndex`]: vectors by `u64` id (add replaces, remove swaps the last row in), f32 or
//!   f16 storage, rows zero-padded to a multiple of 16 floats.
//! - Search streams the matrix once per batch of queries: rows in cache-sized blocks, each block
//!   scored against every query by the register-blocked SIMD [`kernel`] (AVX-512 / AVX2+FMA /
//!   baseline, chosen at run time), then a per-query [`topk::TopK`] keeps the k best with one
//!   comparison per candidate. Rows are split over threads, each with its own top-k, merged.
//! - `gpu::GpuIndex` (feature `cuda`): the rows resident on a GPU, our own tiled-GEMM and
//!   top-k kernels compiled by NVRTC, same results.
//! - [`coalesce::Coalescer`]: concurrent single-query searches that arrive while a batch runs
//!   are executed together as the next batch (where batched scoring pays off).
//!
//! Scores: inner product and cosine are similarities (higher first); L2 is the squared distance
//! (lower first), as faiss reports it. Ties rank the lower id first.

pub mod coalesce;
#[cfg(feature = "cuda")]
pub mod gpu;
pub mod kernel;
pub mod topk;

use std::collections::HashMap;

use half::f16;
use half::slice::HalfFloatSliceExt;

pub use kernel::Isa;
pub use topk::Neighbor;
use topk::TopK;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    InnerProduct,
    /// Inner product of L2-normalised vectors (stored normalised; queries normalised).
    Cosine,
    /// Squared euclidean distance.
    L2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    F32,
    /// Half the memory and bandwidth; scores accumulate in f32.
    F16,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ExactError {
    /// The caller's input is malformed; `field` names it.
    #[error("invalid {field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    /// The coalescer's batching thread is gone (shut down, or it could not be started): the
    /// search can be retried elsewhere or later.
    #[error("the exact engine's batching thread {0}")]
    Stopped(&'static str),
    /// A writer panicked while holding the index lock; the index may be half-updated.
    #[error("the exact index lock is poisoned")]
    Poisoned,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ExactError {
    ExactError::InvalidArgument { field, reason: reason.into() }
}

#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Threads a search uses (rows split between them); 0 = available cores.
    pub threads: usize,
    pub precision: Precision,
    /// Rows scored per block (a block and a query group stay in L2 cache).
    pub block_rows: usize,
    /// Queries scored together against a block.
    pub query_group: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self { threads: 0, precision: Precision::F32, block_rows: 256, query_group: 64 }
    }
}

#[derive(Debug, Clone)]
enum Storage {
    F32(Vec<f32>),
    F16(Vec<f16>),
}

/// Exact search over resident vectors.
#[derive(Debug, Clone)]
pub struct ExactIndex {
    dim: usize,
    stride: usize,
    metric: Metric,
    isa: Isa,
    options: Options,
    ids: Vec<u64>,
    rows: HashMap<u64, usize>,
    data: Storage,
    /// Squared norms of the stored rows (L2 only).
    norms: Vec<f32>,
}

fn check_finite(field: &'static str, v: &[f32]) -> Result<(), ExactError> {
    match v.iter().position(|x| !x.is_finite()) {
        Some(i) => Err(invalid(field, format!("value {} at index {i} is not finite", v[i]))),
        None => Ok(()),
    }
}

/// Checks a search's queries (nq × dim, finite) and k, and returns them zero-padded to `stride`
/// (normalised for cosine): the form every engine scores.
fn prepare_queries(
    dim: usize,
    stride: usize,
    metric: Metric,
    queries: &[f32],
    k: usize,
) -> Result<Vec<f32>, ExactError> {
    if queries.is_empty() || !queries.len().is_multiple_of(dim) {
        return Err(invalid(
            "queries",
            format!("{} floats is not a positive multiple of dimension {dim}", queries.len()),
        ));
    }
    if k == 0 {
        return Err(invalid("k", "must be at least 1"));
    }
    check_finite("queries", queries)?;
    let mut padded = vec![0.0f32; queries.len() / dim * stride];
    for (dst, src) in padded.chunks_exact_mut(stride).zip(queries.chunks_exact(dim)) {
        dst[..dim].copy_from_slice(src);
        if metric == Metric::Cosine {
            normalise(&mut dst[..dim]);
        }
    }
    Ok(padded)
}

/// Hits as reported: L2 is ranked by `2<q,v> - |v|^2` and reported as `|q - v|^2`, that is
/// `|q|^2` minus the ranking score; the other metrics as ranked.
fn reported(metric: Metric, padded_query: &[f32], mut hits: Vec<Neighbor>) -> Vec<Neighbor> {
    if metric == Metric::L2 {
        let qn: f32 = padded_query.iter().map(|x| x * x).sum();
        hits.iter_mut().for_each(|h| h.score = (qn - h.score).max(0.0));
    }
    hits
}

fn normalise(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
}

impl ExactIndex {
    pub fn new(dim: usize, metric: Metric, options: Options) -> Result<Self, ExactError> {
        if dim == 0 {
            return Err(invalid("dim", "must be at least 1"));
        }
        let data = match options.precision {
            Precision::F32 => Storage::F32(Vec::new()),
            Precision::F16 => Storage::F16(Vec::new()),
        };
        Ok(Self {
            dim,
            stride: kernel::stride(dim),
            metric,
            isa: Isa::detect(),
            options,
            ids: Vec::new(),
            rows: HashMap::new(),
            data,
            norms: Vec::new(),
        })
    }

    pub fn dim(&self) -> usize {
        self.dim
    }
    pub fn metric(&self) -> Metric {
        self.metric
    }
    pub fn len(&self) -> usize {
        self.ids.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
    pub fn isa(&self) -> Isa {
        self.isa
    }
    /// Bytes of vector storage (what a batch-1 search reads).
    pub fn bytes(&self) -> usize {
        match &self.data {
            Storage::F32(v) => v.len() * 4,
            Storage::F16(v) => v.len() * 2,
        }
    }

    /// Forces an instruction set (tests and benchmarks); the kernel falls back to the baseline
    /// if the CPU lacks it.
    pub fn with_isa(mut self, isa: Isa) -> Self {
        self.isa = isa;
        self
    }

    fn threads(&self) -> usize {
        match self.options.threads {
            0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            n => n,
        }
    }

    /// Adds `ids.len()` vectors (`vectors` is ids.len() × dim, row-major); an existing id is
    /// replaced. Nothing is written if any vector is malformed.
    pub fn add(&mut self, ids: &[u64], vectors: &[f32]) -> Result<(), ExactError> {
        if vectors.len() != ids.len() * self.dim {
            return Err(invalid(
                "vectors",
                format!("{} floats for {} ids of dimension {}", vectors.len(), ids.len(), self.dim),
            ));
        }
        check_finite("vectors", vectors)?;
        let mut row = vec![0.0f32; self.stride];
        for (id, v) in ids.iter().zip(vectors.chunks_exact(self.dim)) {
            row[..self.dim].copy_from_slice(v);
            if self.metric == Metric::Cosine {
                normalise(&mut row[..self.dim]);
            }
            let at = match self.rows.get(id) {
                Some(&at) => at,
                None => {
                    let at = self.ids.len();
                    self.ids.push(*id);
                    self.rows.insert(*id, at);
                    match &mut self.data {
                        Storage::F32(d) => d.resize(d.len() + self.stride, 0.0),
                        Storage::F16(d) => d.resize(d.len() + self.stride, f16::ZERO),
                    }
                    self.norms.push(0.0);
                    at
                }
            };
            let span = at * self.stride..(at + 1) * self.stride;
            match &mut self.data {
                Storage::F32(d) => d[span].copy_from_slice(&row),
                Storage::F16(d) => d[span.clone()].convert_from_f32_slice(&row),
            }
            // The norm of what is stored (after rounding to f16), so L2 stays consistent.
            let stored = self.row_f32(at);
            self.norms[at] = stored.iter().map(|x| x * x).sum();
        }
        Ok(())
    }

    fn row_f32(&self, at: usize) -> Vec<f32> {
        let span = at * self.stride..(at + 1) * self.stride;
        match &self.data {
            Storage::F32(d) => d[span].to_vec(),
            Storage::F16(d) => {
                let mut out = vec![0.0; self.stride];
                d[span].convert_to_f32_slice(&mut out);
                out
            }
        }
    }

    /// Removes the given ids (unknown ones are ignored); returns how many were removed.
    pub fn remove(&mut self, ids: &[u64]) -> usize {
        let mut removed = 0;
        for id in ids {
            let Some(at) = self.rows.remove(id) else { continue };
            let last = self.ids.len() - 1;
            if at != last {
                let moved = self.ids[last];
                self.ids[at] = moved;
                self.rows.insert(moved, at);
                self.norms[at] = self.norms[last];
                let s = self.stride;
                match &mut self.data {
                    Storage::F32(d) => d.copy_within(last * s..(last + 1) * s, at * s),
                    Storage::F16(d) => d.copy_within(last * s..(last + 1) * s, at * s),
                }
            }
            self.ids.pop();
            self.norms.pop();
            match &mut self.data {
                Storage::F32(d) => d.truncate(last * self.stride),
                Storage::F16(d) => d.truncate(last * self.stride),
            }
            removed += 1;
        }
        removed
    }

    pub fn contains(&self, id: u64) -> bool {
        self.rows.contains_key(&id)
    }

    /// The k nearest rows of each query (`queries` is nq × dim), best first.
    pub fn search(&self, queries: &[f32], k: usize) -> Result<Vec<Vec<Neighbor>>, ExactError> {
        let padded = prepare_queries(self.dim, self.stride, self.metric, queries, k)?;
        let nq = queries.len() / self.dim;
        let n = self.len();
        let threads = self.threads().min(n.div_ceil(self.options.block_rows.max(1)).max(1));
        let per = n.div_ceil(threads.max(1)).max(1);
        let ranges: Vec<(usize, usize)> =
            (0..threads).map(|t| (t * per, ((t + 1) * per).min(n))).filter(|(lo, hi)| lo < hi).collect();
        let mut merged: Vec<TopK> = (0..nq).map(|_| TopK::new(k)).collect();
        let partials: Vec<Vec<TopK>> = match ranges.as_slice() {
            [] => Vec::new(),
            [only] => vec![self.scan(&padded, nq, k, *only)],
            [first, rest @ ..] => std::thread::scope(|s| {
                let handles: Vec<_> =
                    rest.iter().map(|r| s.spawn(|| self.scan(&padded, nq, k, *r))).collect();
                let mut out = vec![self.scan(&padded, nq, k, *first)];
                out.extend(
                    handles.into_iter().map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))),
                );
                out
            }),
        };
        for part in partials {
            for (m, p) in merged.iter_mut().zip(part) {
                m.merge(p);
            }
        }
        Ok(merged
            .into_iter()
            .zip(padded.chunks_exact(self.stride))
            .map(|(t, q)| reported(self.metric, q, t.into_sorted()))
            .collect())
    }

    /// Top-k of every query over rows `lo..hi`, block by block.
    fn scan(&self, queries: &[f32], nq: usize, k: usize, (lo, hi): (usize, usize)) -> Vec<TopK> {
        let br = self.options.block_rows.max(1);
        let qg = self.options.query_group.max(1);
        let s = self.stride;
        let mut tops: Vec<TopK> = (0..nq).map(|_| TopK::new(k)).collect();
        let mut scores = vec![0.0f32; qg.min(nq) * br];
        // f16 rows: batches of 1–3 queries are scored on the f16 rows directly where the kernel
        // can (AVX-512: half the bytes read, widened in registers); larger batches widen each
        // block once and reuse it for every query (the direct kernel would widen each row once
        // per 4 queries: measured 0.6× the widened path at batch 64).
        let direct = kernel::f16_direct(self.isa) && nq < F16_DIRECT_BELOW;
        let mut converted = match self.data {
            Storage::F16(_) if !direct => vec![0.0f32; br * s],
            _ => Vec::new(),
        };
        let mut start = lo;
        while start < hi {
            let end = (start + br).min(hi);
            let nr = end - start;
            let block = match &self.data {
                Storage::F32(d) => Block::F32(&d[start * s..end * s]),
                Storage::F16(d) if direct => Block::F16(d[start * s..end * s].reinterpret_cast()),
                Storage::F16(d) => {
                    d[start * s..end * s].convert_to_f32_slice(&mut converted[..nr * s]);
                    Block::F32(&converted[..nr * s])
                }
            };
            let ids = &self.ids[start..end];
            let mut q0 = 0;
            while q0 < nq {
                let g = qg.min(nq - q0);
                let out = &mut scores[..g * nr];
                let group = &queries[q0 * s..(q0 + g) * s];
                match block {
                    Block::F32(rows) => kernel::scores(self.isa, group, g, rows, nr, s, out),
                    Block::F16(bits) => kernel::scores_f16(self.isa, group, g, bits, nr, s, out),
                }
                if self.metric == Metric::L2 {
                    for row in out.chunks_exact_mut(nr) {
                        for (x, n) in row.iter_mut().zip(&self.norms[start..end]) {
                            *x = 2.0 * *x - n;
                        }
                    }
                }
                for (i, row) in out.chunks_exact(nr).enumerate() {
                    tops[q0 + i].offer(row, ids);
                }
                q0 += g;
            }
            start = end;
        }
        tops
    }
}

/// A block of rows as the kernel scores it: f32 (stored so, or f16 widened), or f16 bits.
#[derive(Clone, Copy)]
enum Block<'a> {
    F32(&'a [f32]),
    F16(&'a [u16]),
}

/// Batches below this many queries score f16 rows directly (see `ExactIndex::scan`).
const F16_DIRECT_BELOW: usize = 4;

/// The obvious implementation, for tests: full scores, full sort.
pub fn naive_search(
    metric: Metric,
    ids: &[u64],
    vectors: &[f32],
    dim: usize,
    query: &[f32],
    k: usize,
) -> Vec<Neighbor> {
    let norm = |v: &[f32]| v.iter().map(|x| (*x as f64) * (*x as f64)).sum::<f64>().sqrt();
    let mut all: Vec<Neighbor> = ids
        .iter()
        .zip(vectors.chunks_exact(dim))
        .map(|(id, v)| {
            let dot: f64 = v.iter().zip(query).map(|(a, b)| *a as f64 * *b as f64).sum();
            let score = match metric {
                Metric::InnerProduct => dot,
                Metric::Cosine => {
                    let (a, b) = (norm(v), norm(query));
                    if a == 0.0 || b == 0.0 { 0.0 } else { dot / (a * b) }
                }
                Metric::L2 => v.iter().zip(query).map(|(a, b)| ((*a - *b) as f64).powi(2)).sum::<f64>(),
            };
            Neighbor { id: *id, score: score as f32 }
        })
        .collect();
    match metric {
        Metric::L2 => all.sort_by(|a, b| a.score.total_cmp(&b.score).then(a.id.cmp(&b.id))),
        _ => all.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.id.cmp(&b.id))),
    }
    all.truncate(k);
    all
}
