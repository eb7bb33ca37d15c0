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
pub mod synthetic;
pub mod topk;

use std::collections::HashMap;

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

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

/// How the rows are stored, and so how many bytes a scan reads per dimension. Every precision is
/// scored by the kernel on its stored form (widened to f32 in registers, accumulated in f32);
/// queries stay f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    F32,
    /// IEEE half: 2 bytes, 11 significant bits, range ±65504.
    F16,
    /// bfloat16: 2 bytes, f32's exponent range with 8 significant bits.
    Bf16,
    /// 1 byte per dimension, asymmetric per dimension (faiss `SQ8`): `x_d ≈ lo_d + step_d · c_d`
    /// with `c_d` in 0..=255 over the range of dimension d seen so far (re-encoded when a new
    /// vector falls outside it).
    Int8,
    /// 1 byte per dimension plus a 4-byte scale per vector, symmetric: `x ≈ s · c` with `c` in
    /// -127..=127 and `s = max|x_d| / 127`.
    Int8PerVector,
}

impl Precision {
    /// Bytes a scan reads per vector of `stride` padded dimensions.
    pub fn bytes_per_vector(self, stride: usize) -> usize {
        match self {
            Precision::F32 => stride * 4,
            Precision::F16 | Precision::Bf16 => stride * 2,
            Precision::Int8 => stride,
            Precision::Int8PerVector => stride + 4,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::Bf16 => "bf16",
            Precision::Int8 => "int8",
            Precision::Int8PerVector => "int8-per-vector",
        }
    }
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
    /// Rescoring of compressed precisions: 0 = off; n = keep the f32 vectors too (resident, not
    /// scanned), take the best `k × n` by the compressed scores and return the best k of those
    /// by their f32 scores (Qdrant's `oversampling` + `rescore`). Ignored for f32.
    pub rescore: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self { threads: 0, precision: Precision::F32, block_rows: 256, query_group: 64, rescore: 0 }
    }
}

/// The scanned rows, `stride` values each (padding dimensions zero / code 0).
#[derive(Debug, Clone)]
enum Storage {
    F32(Vec<f32>),
    F16(Vec<f16>),
    Bf16(Vec<bf16>),
    /// Per-dimension codes: `x_d ≈ lo[d] + step[d] · c_d` (padding dimensions: lo = step = 0).
    U8 {
        codes: Vec<u8>,
        lo: Vec<f32>,
        step: Vec<f32>,
    },
    /// Per-vector codes: `x ≈ scale[row] · c`.
    I8 {
        codes: Vec<i8>,
        scale: Vec<f32>,
    },
}

/// Runs `$body` with `$v` bound to the storage's row values (a `Vec` of the stored type).
macro_rules! with_values {
    ($storage:expr, $v:ident => $body:expr) => {
        match $storage {
            Storage::F32($v) => $body,
            Storage::F16($v) => $body,
            Storage::Bf16($v) => $body,
            Storage::U8 { codes: $v, .. } => $body,
            Storage::I8 { codes: $v, .. } => $body,
        }
    };
}

impl Storage {
    fn new(precision: Precision, stride: usize) -> Self {
        match precision {
            Precision::F32 => Storage::F32(Vec::new()),
            Precision::F16 => Storage::F16(Vec::new()),
            Precision::Bf16 => Storage::Bf16(Vec::new()),
            Precision::Int8 => {
                Storage::U8 { codes: Vec::new(), lo: vec![0.0; stride], step: vec![0.0; stride] }
            }
            Precision::Int8PerVector => Storage::I8 { codes: Vec::new(), scale: Vec::new() },
        }
    }

    /// Appends a zero row.
    fn push_row(&mut self, stride: usize) {
        with_values!(self, v => v.resize(v.len() + stride, Default::default()));
        if let Storage::I8 { scale, .. } = self {
            scale.push(0.0);
        }
    }

    /// Row `from` overwrites row `to`.
    fn move_row(&mut self, from: usize, to: usize, stride: usize) {
        with_values!(self, v => v.copy_within(from * stride..(from + 1) * stride, to * stride));
        if let Storage::I8 { scale, .. } = self {
            scale[to] = scale[from];
        }
    }

    fn truncate_rows(&mut self, rows: usize, stride: usize) {
        with_values!(self, v => v.truncate(rows * stride));
        if let Storage::I8 { scale, .. } = self {
            scale.truncate(rows);
        }
    }

    /// Encodes `row` (`stride` floats, padding zero) into row `at`. Int8: the ranges must
    /// already cover `row` (see [`ExactIndex::fit_ranges`]).
    fn set_row(&mut self, at: usize, row: &[f32]) {
        let span = at * row.len()..(at + 1) * row.len();
        match self {
            Storage::F32(d) => d[span].copy_from_slice(row),
            Storage::F16(d) => d[span].convert_from_f32_slice(row),
            Storage::Bf16(d) => d[span].convert_from_f32_slice(row),
            Storage::U8 { codes, lo, step } => {
                for (((c, x), l), s) in codes[span].iter_mut().zip(row).zip(lo.iter()).zip(step.iter()) {
                    *c = if *s > 0.0 { ((x - l) / s).round().clamp(0.0, 255.0) as u8 } else { 0 };
                }
            }
            Storage::I8 { codes, scale } => {
                let max = row.iter().fold(0.0f32, |m, x| m.max(x.abs()));
                let s = max / 127.0;
                scale[at] = s;
                for (c, x) in codes[span].iter_mut().zip(row) {
                    *c = if s > 0.0 { (x / s).round().clamp(-127.0, 127.0) as i8 } else { 0 };
                }
            }
        }
    }

    /// Row `at` as the f32 values its codes stand for.
    fn row_f32(&self, at: usize, stride: usize) -> Vec<f32> {
        let span = at * stride..(at + 1) * stride;
        let mut out = vec![0.0; stride];
        match self {
            Storage::F32(d) => out.copy_from_slice(&d[span]),
            Storage::F16(d) => d[span].convert_to_f32_slice(&mut out),
            Storage::Bf16(d) => d[span].convert_to_f32_slice(&mut out),
            Storage::U8 { codes, lo, step } => {
                for (((o, c), l), s) in out.iter_mut().zip(&codes[span]).zip(lo).zip(step) {
                    *o = l + s * f32::from(*c);
                }
            }
            Storage::I8 { codes, scale } => {
                for (o, c) in out.iter_mut().zip(&codes[span]) {
                    *o = scale[at] * f32::from(*c);
                }
            }
        }
        out
    }

    /// Bytes a full scan reads.
    fn bytes(&self) -> usize {
        let values = with_values!(self, v => std::mem::size_of_val(v.as_slice()));
        match self {
            Storage::I8 { scale, .. } => values + scale.len() * 4,
            _ => values,
        }
    }
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
    /// Squared norms of the stored rows as their codes stand for them (L2 ranks by them).
    norms: Vec<f32>,
    /// The f32 rows (padded, normalised for cosine) of a compressed index that rescores.
    originals: Option<Vec<f32>>,
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

/// Per-dimension codes (`x_d ≈ lo_d + step_d · c_d`) are scored in code space: `<q, x̂> = <q ∘ step,
/// c> + <q, lo>`. Returns the padded queries multiplied by `step` and each query's `<q, lo>`.
fn code_space(padded: &[f32], stride: usize, lo: &[f32], step: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let scaled = padded.chunks_exact(stride).flat_map(|q| q.iter().zip(step).map(|(a, b)| a * b)).collect();
    let offsets = padded.chunks_exact(stride).map(|q| q.iter().zip(lo).map(|(a, b)| a * b).sum()).collect();
    (scaled, offsets)
}

/// Rescoring: `hits` re-ranked by the f32 scores of their rows in `originals` (`stride` floats
/// each, row of a hit given by `row_of(id)`), in the kernels' ranking form (L2: `2<q,v> - |v|^2`),
/// best k first (ties: lower id).
fn rescore(
    metric: Metric,
    stride: usize,
    originals: &[f32],
    query: &[f32],
    mut hits: Vec<Neighbor>,
    row_of: impl Fn(u64) -> usize,
    k: usize,
) -> Vec<Neighbor> {
    for h in &mut hits {
        let at = row_of(h.id);
        let row = &originals[at * stride..(at + 1) * stride];
        let dot: f32 = row.iter().zip(query).map(|(a, b)| a * b).sum();
        h.score = match metric {
            Metric::L2 => 2.0 * dot - row.iter().map(|x| x * x).sum::<f32>(),
            _ => dot,
        };
    }
    hits.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.id.cmp(&b.id)));
    hits.truncate(k);
    hits
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
        let stride = kernel::stride(dim);
        let rescores = options.rescore > 0 && options.precision != Precision::F32;
        Ok(Self {
            dim,
            stride,
            metric,
            isa: Isa::detect(),
            options,
            ids: Vec::new(),
            rows: HashMap::new(),
            data: Storage::new(options.precision, stride),
            norms: Vec::new(),
            originals: rescores.then(Vec::new),
        })
    }

    pub fn dim(&self) -> usize {
        self.dim
    }
    pub fn metric(&self) -> Metric {
        self.metric
    }
    pub fn precision(&self) -> Precision {
        self.options.precision
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
    /// Bytes of vector storage a search scans (what bounds a batch-1 search).
    pub fn bytes(&self) -> usize {
        self.data.bytes()
    }
    /// Bytes a search scans per vector (padded dimensions at the stored precision).
    pub fn bytes_per_vector(&self) -> usize {
        self.options.precision.bytes_per_vector(self.stride)
    }
    /// Resident bytes: the scanned rows, the f32 rows kept for rescoring, norms and ids.
    pub fn resident_bytes(&self) -> usize {
        let originals = self.originals.as_ref().map_or(0, |o| o.len() * 4);
        let per_row = 4 + 8 + std::mem::size_of::<(u64, usize)>();
        self.bytes() + originals + self.len() * per_row
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
        let mut padded = vec![0.0f32; ids.len() * self.stride];
        for (row, v) in padded.chunks_exact_mut(self.stride).zip(vectors.chunks_exact(self.dim)) {
            row[..self.dim].copy_from_slice(v);
            if self.metric == Metric::Cosine {
                normalise(&mut row[..self.dim]);
            }
        }
        if self.options.precision == Precision::F16
            && let Some(i) = padded.iter().position(|x| x.abs() > f32::from(f16::MAX))
        {
            return Err(invalid(
                "vectors",
                format!("value {} of vector {} is beyond the f16 range (±65504)", padded[i], i / self.stride),
            ));
        }
        self.fit_ranges(&padded);
        for (id, row) in ids.iter().zip(padded.chunks_exact(self.stride)) {
            let at = match self.rows.get(id) {
                Some(&at) => at,
                None => {
                    let at = self.ids.len();
                    self.ids.push(*id);
                    self.rows.insert(*id, at);
                    self.data.push_row(self.stride);
                    self.norms.push(0.0);
                    if let Some(o) = &mut self.originals {
                        o.resize(o.len() + self.stride, 0.0);
                    }
                    at
                }
            };
            self.data.set_row(at, row);
            if let Some(o) = &mut self.originals {
                o[at * self.stride..(at + 1) * self.stride].copy_from_slice(row);
            }
            // The norm of what is stored (after rounding or quantising), so L2 stays consistent.
            self.norms[at] = match &self.data {
                Storage::F32(_) => row.iter().map(|x| x * x).sum(),
                _ => self.data.row_f32(at, self.stride).iter().map(|x| x * x).sum(),
            };
        }
        Ok(())
    }

    /// Int8 (per dimension): widens the ranges to cover `rows` (padded rows), with a margin of
    /// 1/8 of the range on a side that grew so that slowly drifting data re-encodes rarely, and
    /// re-encodes the stored rows (from the f32 rows where kept, else from their codes).
    fn fit_ranges(&mut self, rows: &[f32]) {
        let Storage::U8 { lo, step, .. } = &self.data else { return };
        let (mut new_lo, mut new_hi): (Vec<f32>, Vec<f32>) = if self.ids.is_empty() {
            (vec![f32::INFINITY; self.dim], vec![f32::NEG_INFINITY; self.dim])
        } else {
            (lo[..self.dim].to_vec(), (0..self.dim).map(|d| lo[d] + 255.0 * step[d]).collect())
        };
        let mut grew = false;
        for row in rows.chunks_exact(self.stride) {
            for d in 0..self.dim {
                if row[d] < new_lo[d] || row[d] > new_hi[d] {
                    grew = true;
                    new_lo[d] = new_lo[d].min(row[d]);
                    new_hi[d] = new_hi[d].max(row[d]);
                }
            }
        }
        if !grew {
            return;
        }
        let old: Vec<Vec<f32>> = match &self.originals {
            Some(_) => Vec::new(),
            None => (0..self.len()).map(|at| self.data.row_f32(at, self.stride)).collect(),
        };
        let first = self.ids.is_empty();
        let Storage::U8 { lo, step, .. } = &mut self.data else { return };
        for d in 0..self.dim {
            let (l, h) = (new_lo[d], new_hi[d]);
            let margin = if first { 0.0 } else { (h - l) / 8.0 };
            let grew_low = l < lo[d];
            let grew_high = h > lo[d] + 255.0 * step[d];
            let l = if grew_low { l - margin } else { l };
            let h = if grew_high { h + margin } else { h };
            lo[d] = l;
            step[d] = (h - l) / 255.0;
        }
        for at in 0..self.len() {
            let row = match &self.originals {
                Some(o) => o[at * self.stride..(at + 1) * self.stride].to_vec(),
                None => old[at].clone(),
            };
            self.data.set_row(at, &row);
            self.norms[at] = self.data.row_f32(at, self.stride).iter().map(|x| x * x).sum();
        }
    }

    /// Removes the given ids (unknown ones are ignored); returns how many were removed.
    pub fn remove(&mut self, ids: &[u64]) -> usize {
        let mut removed = 0;
        let s = self.stride;
        for id in ids {
            let Some(at) = self.rows.remove(id) else { continue };
            let last = self.ids.len() - 1;
            if at != last {
                let moved = self.ids[last];
                self.ids[at] = moved;
                self.rows.insert(moved, at);
                self.norms[at] = self.norms[last];
                self.data.move_row(last, at, s);
                if let Some(o) = &mut self.originals {
                    o.copy_within(last * s..(last + 1) * s, at * s);
                }
            }
            self.ids.pop();
            self.norms.pop();
            self.data.truncate_rows(last, s);
            if let Some(o) = &mut self.originals {
                o.truncate(last * s);
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
        let (scored, offsets) = match &self.data {
            Storage::U8 { lo, step, .. } => {
                let (scaled, offsets) = code_space(&padded, self.stride, lo, step);
                (std::borrow::Cow::Owned(scaled), offsets)
            }
            _ => (std::borrow::Cow::Borrowed(padded.as_slice()), Vec::new()),
        };
        let n = self.len();
        // Rescoring: k × rescore candidates (at most every row) by compressed score.
        let kk = match &self.originals {
            Some(_) => k.saturating_mul(self.options.rescore).min(n.max(k)),
            None => k,
        };
        let threads = self.threads().min(n.div_ceil(self.options.block_rows.max(1)).max(1));
        let per = n.div_ceil(threads.max(1)).max(1);
        let ranges: Vec<(usize, usize)> =
            (0..threads).map(|t| (t * per, ((t + 1) * per).min(n))).filter(|(lo, hi)| lo < hi).collect();
        // Codes on a CPU with VNNI: the queries quantised to int8 as well (symmetric, per
        // query), integer dot products 64 at a time, 4 queries × 4 rows per tile in batches; with
        // rescoring the answer is f32's.
        let quantised = (matches!(self.data, Storage::U8 { .. } | Storage::I8 { .. })
            && kernel::vnni(self.isa))
        .then(|| Quantised::of(&scored, self.stride));
        // bf16 rows on a CPU with AVX-512 BF16: the queries rounded to bf16 too, `vdpbf16ps` 32
        // products at a time, 4 × 4 tiles in batches.
        let bf16_queries: Option<Vec<bf16>> = (matches!(self.data, Storage::Bf16(_))
            && kernel::bf16_dot(self.isa))
        .then(|| scored.iter().map(|x| bf16::from_f32(*x)).collect());
        let queries = Queries {
            f32: &scored,
            quantised: quantised.as_ref(),
            bf16: bf16_queries.as_deref(),
            offsets: &offsets,
            nq,
        };
        let scan = |r: (usize, usize)| self.scan(queries, kk, r);
        let mut merged: Vec<TopK> = (0..nq).map(|_| TopK::new(kk)).collect();
        let partials: Vec<Vec<TopK>> = match ranges.as_slice() {
            [] => Vec::new(),
            [only] => vec![scan(*only)],
            [first, rest @ ..] => std::thread::scope(|s| {
                let handles: Vec<_> = rest.iter().map(|r| s.spawn(move || scan(*r))).collect();
                let mut out = vec![scan(*first)];
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
            .map(|(t, q)| reported(self.metric, q, self.rescored(q, t.into_sorted(), k)))
            .collect())
    }

    /// With f32 rows kept: the candidates re-ranked by their f32 scores (ranking form, as the
    /// kernel's), the best k; otherwise the candidates as they are.
    fn rescored(&self, query: &[f32], hits: Vec<Neighbor>, k: usize) -> Vec<Neighbor> {
        match &self.originals {
            Some(o) => rescore(self.metric, self.stride, o, query, hits, |id| self.rows[&id], k),
            None => hits,
        }
    }

    /// Top-k of every query over rows `lo..hi`.
    fn scan(&self, q: Queries<'_>, k: usize, range: (usize, usize)) -> Vec<TopK> {
        match &self.data {
            Storage::F32(d) => self.scan_rows(d, q, k, range),
            Storage::F16(d) => self.scan_rows(d.reinterpret_cast(), q, k, range),
            Storage::Bf16(d) => self.scan_rows(d, q, k, range),
            Storage::U8 { codes, .. } => self.scan_rows(codes, q, k, range),
            Storage::I8 { codes, .. } => self.scan_rows(codes, q, k, range),
        }
    }

    /// Top-k of every query over rows `lo..hi` of `data` (the stored values), block by block.
    fn scan_rows<T: kernel::Row>(
        &self,
        data: &[T],
        q: Queries<'_>,
        k: usize,
        (lo, hi): (usize, usize),
    ) -> Vec<TopK> {
        let Queries { f32: queries, quantised, bf16: bf16_queries, offsets, nq } = q;
        let br = self.options.block_rows.max(1);
        let qg = self.options.query_group.max(1);
        let s = self.stride;
        let mut tops: Vec<TopK> = (0..nq).map(|_| TopK::new(k)).collect();
        let mut scores = vec![0.0f32; qg.min(nq) * br];
        // Compressed rows: bf16 and codes with their own dot-product instructions are scored as
        // stored at every batch size (above). f16 (and the others on CPUs without those
        // instructions): batches of 1–3 queries on the stored rows directly where the kernel can
        // (AVX-512: the stored bytes read, widened in registers); larger batches widen each
        // block once and reuse it for every query (the direct kernel would widen each row once
        // per 4 queries: measured for f16 at 0.6× the widened path at batch 64).
        let own_dots = quantised.is_some() || bf16_queries.is_some();
        let widen = T::BYTES != 4 && !own_dots && !(kernel::direct(self.isa) && nq < DIRECT_BELOW);
        let mut converted = if widen { vec![0.0f32; br * s] } else { Vec::new() };
        let mut dots = if quantised.is_some() { vec![0i32; qg.min(nq) * br] } else { Vec::new() };
        let scale = match &self.data {
            Storage::I8 { scale, .. } => scale.as_slice(),
            _ => &[],
        };
        let mut start = lo;
        while start < hi {
            let end = (start + br).min(hi);
            let nr = end - start;
            let rows = &data[start * s..end * s];
            if widen {
                T::widen_into(rows, &mut converted[..nr * s]);
            }
            let ids = &self.ids[start..end];
            let mut q0 = 0;
            while q0 < nq {
                let g = qg.min(nq - q0);
                let out = &mut scores[..g * nr];
                let group = &queries[q0 * s..(q0 + g) * s];
                if widen {
                    kernel::scores(self.isa, group, g, &converted[..nr * s], nr, s, out);
                } else if let Some(qb) = bf16_queries {
                    let done = kernel::bf16_dots(self.isa, &qb[q0 * s..(q0 + g) * s], g, rows, nr, s, out);
                    debug_assert!(done.is_some(), "bf16 queries only for bf16 rows on a BF16 CPU");
                } else if let Some(qq) = quantised {
                    let dots = &mut dots[..g * nr];
                    let done =
                        kernel::code_dots(self.isa, &qq.codes[q0 * s..(q0 + g) * s], g, rows, nr, s, dots);
                    debug_assert!(done.is_some(), "quantised only for codes on a VNNI CPU");
                    for (i, (row, d)) in out.chunks_exact_mut(nr).zip(dots.chunks_exact(nr)).enumerate() {
                        let scale = qq.scale[q0 + i];
                        row.iter_mut().zip(d).for_each(|(x, d)| *x = *d as f32 * scale);
                    }
                } else {
                    kernel::scores_rows(self.isa, group, g, rows, nr, s, out);
                }
                for (i, row) in out.chunks_exact_mut(nr).enumerate() {
                    // From code space to `<q, x̂>`: per-dimension codes add the query's offset,
                    // per-vector codes multiply by the row's scale.
                    if let Some(off) = offsets.get(q0 + i) {
                        row.iter_mut().for_each(|x| *x += off);
                    }
                    if !scale.is_empty() {
                        row.iter_mut().zip(&scale[start..end]).for_each(|(x, sc)| *x *= sc);
                    }
                    if self.metric == Metric::L2 {
                        row.iter_mut().zip(&self.norms[start..end]).for_each(|(x, n)| *x = 2.0 * *x - n);
                    }
                    tops[q0 + i].offer(row, ids);
                }
                q0 += g;
            }
            start = end;
        }
        tops
    }
}

/// A search's queries as the scan scores them.
#[derive(Clone, Copy)]
struct Queries<'a> {
    /// Padded f32 queries (code space for per-dimension codes).
    f32: &'a [f32],
    /// The same quantised to int8, where the VNNI kernel scores codes.
    quantised: Option<&'a Quantised>,
    /// The same rounded to bf16, where the BF16 kernel scores bf16 rows.
    bf16: Option<&'a [bf16]>,
    /// Per query, added to each score (per-dimension codes: `q · lo`); empty otherwise.
    offsets: &'a [f32],
    nq: usize,
}

/// Queries quantised to int8, symmetric per query: `q ≈ scale · codes`.
struct Quantised {
    codes: Vec<i8>,
    scale: Vec<f32>,
}

impl Quantised {
    fn of(queries: &[f32], stride: usize) -> Self {
        let mut codes = vec![0i8; queries.len()];
        let mut scale = Vec::with_capacity(queries.len() / stride);
        for (q, c) in queries.chunks_exact(stride).zip(codes.chunks_exact_mut(stride)) {
            let s = q.iter().fold(0.0f32, |m, x| m.max(x.abs())) / 127.0;
            if s > 0.0 {
                c.iter_mut().zip(q).for_each(|(c, x)| *c = (x / s).round().clamp(-127.0, 127.0) as i8);
            }
            scale.push(s);
        }
        Self { codes, scale }
    }
}

/// Batches below this many queries score compressed rows directly (see `ExactIndex::scan_rows`).
const DIRECT_BELOW: usize = 4;

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
