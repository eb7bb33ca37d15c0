//! The GPU engine (cargo feature `cuda`): the index's matrix resident in device memory, our own
//! CUDA kernels compiled with NVRTC at start, driven through `cudarc` with dynamic loading (the
//! build needs no CUDA; a machine without the driver or NVRTC gets [`GpuError::Unavailable`],
//! never a panic).
//!
//! Kernels ([`KERNELS`]), each score kernel in five forms — `_f32`, `_f16`, `_bf16`, `_u8`
//! (per-dimension int8 codes) and `_i8` (per-vector int8 codes) — that read the rows as stored
//! (4, 2, 2, 1, 1 bytes per value) and widen them in registers; accumulation is f32 and the
//! queries are f32 (not rounded or quantised, unlike the CPU's bf16/VNNI kernels):
//! - `scores_*`: S = Q·Vᵀ for a batch of queries against the resident rows, 64 × 64 output tiles
//!   per block of 256 threads, shared-memory tiles of 64 queries × 16 dimensions and 64 rows × 16
//!   dimensions, 4 × 4 outputs per thread in registers;
//! - `scores_rows_*`: the same scores for small batches, every row read once: one warp per group
//!   of 4 rows, lanes striding over the dimensions with 4-value loads (16 bytes for f32, 8 for
//!   f16/bf16, 4 for codes), up to 8 queries per launch held in shared memory, warp-shuffle sums
//!   (the tiled kernel computes 64 query slots per block: a batch of one wastes 63/64 of its
//!   multiply-adds). [`ScorePlan`] picks between them;
//! - `topk_partial`: per query and per slice of rows, each thread keeps a sorted top-k of its
//!   strided candidates (scores times the row's scale for per-vector codes, L2's norms
//!   subtracted), then the block merges the 128 lists pairwise in shared memory (7 rounds) and
//!   writes the slice's top-k; the host merges the slices' lists.
//!
//! Codes are scored as the CPU engine scores them: per-dimension codes with the query in code
//! space (`q ∘ step`, its `q · lo` added on the host, a per-query constant that leaves the
//! ranking alone), per-vector codes times their row's scale. An index that rescores keeps its f32
//! rows in host memory and re-ranks the GPU's best `k × oversampling` (≤ [`MAX_K`]) with them.
//!
//! Queries go up and partial lists come down on one stream; the matrix never moves after
//! upload. Same ordering as the CPU engine: higher score first, then lower id.

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, LaunchConfig, PushKernelArg};
use half::{bf16, f16};

use crate::topk::{Neighbor, TopK};
use crate::{ExactIndex, Metric, Storage};

/// Largest k the GPU selection kernel handles (larger k: use the CPU engine).
pub const MAX_K: usize = 32;
/// Queries per launch of the row-group kernel (its `RG_MAXQ`).
const RG_MAXQ: usize = 8;
/// Shared memory the row-group kernel may take for its queries without an opt-in.
const RG_SHARED_BYTES: usize = 48 * 1024;
/// Largest batch [`ScorePlan::Auto`] scores with the row-group kernel.
pub const ROW_GROUPS_MAX_BATCH: usize = 32;

/// Which score kernel a search uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScorePlan {
    /// Row groups up to [`ROW_GROUPS_MAX_BATCH`] queries (where 8 queries of the index's width fit
    /// in 48 KB of shared memory), tiles above.
    Auto,
    /// `scores_f32`/`scores_f16`: 64 × 64 tiles.
    Tiled,
    /// `scores_rows_f32`/`scores_rows_f16`: each row read once per 8 queries.
    RowGroups,
}
const THREADS_TOPK: u32 = 128;
/// Rows per top-k slice (one block each).
const SLICE: usize = 8192;

#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error("no CUDA GPU available: {0}")]
    Unavailable(String),
    #[error("CUDA: {0}")]
    Cuda(String),
    #[error("invalid {field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
}

impl From<crate::ExactError> for GpuError {
    fn from(e: crate::ExactError) -> Self {
        match e {
            crate::ExactError::InvalidArgument { field, reason } => {
                GpuError::InvalidArgument { field, reason }
            }
            e @ (crate::ExactError::Stopped(_) | crate::ExactError::Poisoned) => {
                GpuError::Cuda(e.to_string())
            }
        }
    }
}

fn cuda(e: impl std::fmt::Display) -> GpuError {
    GpuError::Cuda(e.to_string())
}

/// CUDA C source of the kernels (no headers: f16 is widened with inline PTX).
pub const KERNELS: &str = r#"
#define TILE 64
#define TK 16
#define MAXK 32

// How each stored form is read: one value (`one`) or four consecutive values (`four`, at an index
// that is a multiple of 4 in a row of a multiple of 16, so the 16-, 8- or 4-byte load is aligned),
// widened to f32 in registers. Codes are read as their integer values: the host scores per-dimension
// codes with the query in code space (q ∘ step, plus q · lo per query) and per-vector codes with
// the row's scale in `topk_partial`.
__device__ __forceinline__ float h2f(unsigned short h) {
    float f; asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h)); return f;
}
__device__ __forceinline__ float b2f(unsigned int b) { return __int_as_float((int)(b << 16)); }
struct F32 {
    typedef float T;
    static __device__ __forceinline__ float one(const T* p, long long i) { return p[i]; }
    static __device__ __forceinline__ float4 four(const T* p, long long i) {
        return *reinterpret_cast<const float4*>(p + i);
    }
};
// 2-byte floats (f16, bf16): 8-byte loads of four.
#define HALF(Name, widen) \
    struct Name { \
        typedef unsigned short T; \
        static __device__ __forceinline__ float one(const T* p, long long i) { return widen(p[i]); } \
        static __device__ __forceinline__ float4 four(const T* p, long long i) { \
            const uint2 u = *reinterpret_cast<const uint2*>(p + i); \
            return make_float4(widen(u.x & 0xffff), widen(u.x >> 16), widen(u.y & 0xffff), widen(u.y >> 16)); \
        } \
    };
HALF(F16, h2f)
HALF(BF16, b2f)
// 1-byte codes (u8, i8): 4-byte loads of four.
#define CODES(Name, Elem, Vec4) \
    struct Name { \
        typedef Elem T; \
        static __device__ __forceinline__ float one(const T* p, long long i) { return (float)p[i]; } \
        static __device__ __forceinline__ float4 four(const T* p, long long i) { \
            const Vec4 u = *reinterpret_cast<const Vec4*>(p + i); \
            return make_float4((float)u.x, (float)u.y, (float)u.z, (float)u.w); \
        } \
    };
CODES(U8, unsigned char, uchar4)
CODES(I8, signed char, char4)

template <typename C>
__device__ void scores_tile(const float* Q, const typename C::T* V, float* S, int nq, int n, int stride) {
    __shared__ float qs[TK][TILE + 4];
    __shared__ float vs[TK][TILE + 4];
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    const int q0 = blockIdx.y * TILE, r0 = blockIdx.x * TILE;
    float acc[4][4];
    #pragma unroll
    for (int i = 0; i < 4; i++)
        #pragma unroll
        for (int j = 0; j < 4; j++) acc[i][j] = 0.f;
    for (int k0 = 0; k0 < stride; k0 += TK) {
        for (int e = threadIdx.x; e < TILE * TK; e += blockDim.x) {
            const int row = e / TK, col = e % TK;
            const int q = q0 + row, r = r0 + row;
            qs[col][row] = q < nq ? Q[(long long)q * stride + k0 + col] : 0.f;
            vs[col][row] = r < n ? C::one(V, (long long)r * stride + k0 + col) : 0.f;
        }
        __syncthreads();
        #pragma unroll
        for (int k = 0; k < TK; k++) {
            float a[4], b[4];
            #pragma unroll
            for (int i = 0; i < 4; i++) a[i] = qs[k][ty + 16 * i];
            #pragma unroll
            for (int j = 0; j < 4; j++) b[j] = vs[k][tx + 16 * j];
            #pragma unroll
            for (int i = 0; i < 4; i++)
                #pragma unroll
                for (int j = 0; j < 4; j++) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
        }
        __syncthreads();
    }
    #pragma unroll
    for (int i = 0; i < 4; i++) {
        const int q = q0 + ty + 16 * i;
        #pragma unroll
        for (int j = 0; j < 4; j++) {
            const int r = r0 + tx + 16 * j;
            if (q < nq && r < n) S[(long long)q * n + r] = acc[i][j];
        }
    }
}

#define TILED(name, C) \
    extern "C" __global__ void name(const float* Q, const C::T* V, float* S, int nq, int n, int stride) { \
        scores_tile<C>(Q, V, S, nq, n, stride); \
    }
TILED(scores_f32, F32)
TILED(scores_f16, F16)
TILED(scores_bf16, BF16)
TILED(scores_u8, U8)
TILED(scores_i8, I8)

// Small batches: S[(q0 + q) * n + r] for the nq (≤ RG_MAXQ) queries from q0 and every row, each row
// read once. One warp per group of RG_ROWS rows (grid-stride), the lanes striding over the
// dimensions four at a time (16-byte loads for f32, 8-byte for f16; stride is a multiple of 16, so
// every row starts aligned), the queries in shared memory (nq × stride floats, dynamic), then a
// warp-shuffle sum per (row, query). The tiled kernel above computes 64 query slots per block and
// so wastes most of its multiply-adds on a batch of one.
#define RG_ROWS 4
#define RG_MAXQ 8
template <typename C>
__device__ void scores_rows(const float* Q, const typename C::T* V, float* S, int q0, int nq, int n, int stride) {
    extern __shared__ float4 qs4[];
    const int s4 = stride / 4;
    const float4* q4 = reinterpret_cast<const float4*>(Q + (long long)q0 * stride);
    for (int e = threadIdx.x; e < nq * s4; e += blockDim.x) qs4[e] = q4[e];
    __syncthreads();
    const int lane = threadIdx.x & 31;
    const long long warp = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const long long warps = ((long long)gridDim.x * blockDim.x) >> 5;
    for (long long r0 = warp * RG_ROWS; r0 < n; r0 += warps * RG_ROWS) {
        float acc[RG_ROWS][RG_MAXQ];
        #pragma unroll
        for (int i = 0; i < RG_ROWS; i++)
            #pragma unroll
            for (int q = 0; q < RG_MAXQ; q++) acc[i][q] = 0.f;
        for (int c = lane; c < s4; c += 32) {
            float4 v[RG_ROWS];
            #pragma unroll
            for (int i = 0; i < RG_ROWS; i++)
                v[i] = r0 + i < n ? C::four(V, (r0 + i) * stride + 4LL * c) : make_float4(0.f, 0.f, 0.f, 0.f);
            #pragma unroll
            for (int q = 0; q < RG_MAXQ; q++) {
                if (q < nq) {
                    const float4 x = qs4[q * s4 + c];
                    #pragma unroll
                    for (int i = 0; i < RG_ROWS; i++)
                        acc[i][q] = fmaf(x.w, v[i].w, fmaf(x.z, v[i].z, fmaf(x.y, v[i].y, fmaf(x.x, v[i].x, acc[i][q]))));
                }
            }
        }
        #pragma unroll
        for (int i = 0; i < RG_ROWS; i++)
            #pragma unroll
            for (int q = 0; q < RG_MAXQ; q++)
                if (q < nq) {
                    #pragma unroll
                    for (int off = 16; off > 0; off /= 2) acc[i][q] += __shfl_xor_sync(0xffffffffu, acc[i][q], off);
                }
        if (lane == 0) {
            #pragma unroll
            for (int i = 0; i < RG_ROWS; i++)
                #pragma unroll
                for (int q = 0; q < RG_MAXQ; q++)
                    if (q < nq && r0 + i < n) S[(long long)(q0 + q) * n + r0 + i] = acc[i][q];
        }
    }
}

#define ROWS(name, C) \
    extern "C" __global__ void name(const float* Q, const C::T* V, float* S, int q0, int nq, int n, int stride) { \
        scores_rows<C>(Q, V, S, q0, nq, n, stride); \
    }
ROWS(scores_rows_f32, F32)
ROWS(scores_rows_f16, F16)
ROWS(scores_rows_bf16, BF16)
ROWS(scores_rows_u8, U8)
ROWS(scores_rows_i8, I8)

// Is (s1, i1) ranked before (s2, i2)? Higher score, then lower row.
__device__ __forceinline__ bool better(float s1, int i1, float s2, int i2) {
    return s1 > s2 || (s1 == s2 && i1 < i2);
}

// Row j of query q scores S[q*n + j] * scale * (use_row_scale ? row_scale[j] : 1) - (use_bias ?
// bias[j] : 0): L2 ranks by 2<q,v> - |v|^2 (scale 2, bias |v|^2); per-vector codes score
// <q, c> times the row's scale. Block (slice, q) writes its top-k to out_s/out_i[(q * slices +
// slice) * k ..].
extern "C" __global__ void topk_partial(const float* S, const float* bias, int use_bias, const float* row_scale,
                                        int use_row_scale, float scale, int n, int k, int slice_len, int slices,
                                        float* out_s, int* out_i) {
    __shared__ float ss[128 * MAXK];
    __shared__ int si[128 * MAXK];
    const int q = blockIdx.y, slice = blockIdx.x, t = threadIdx.x;
    const int lo = slice * slice_len, hi = min(n, lo + slice_len);
    float ls[MAXK]; int li[MAXK]; int cnt = 0;
    for (int j = lo + t; j < hi; j += blockDim.x) {
        float s = S[(long long)q * n + j] * scale * (use_row_scale ? row_scale[j] : 1.f) - (use_bias ? bias[j] : 0.f);
        if (cnt == k && !better(s, j, ls[k - 1], li[k - 1])) continue;
        int p = cnt < k ? cnt++ : k - 1;
        while (p > 0 && better(s, j, ls[p - 1], li[p - 1])) { ls[p] = ls[p - 1]; li[p] = li[p - 1]; p--; }
        ls[p] = s; li[p] = j;
    }
    for (int c = 0; c < k; c++) {
        ss[t * MAXK + c] = c < cnt ? ls[c] : __int_as_float(0xff800000);
        si[t * MAXK + c] = c < cnt ? li[c] : 0x7fffffff;
    }
    __syncthreads();
    // Pairwise merges of sorted lists: after the round with `width`, list t (t % (2*width) == 0)
    // holds the top-k of lists t .. t + 2*width - 1.
    for (int width = 1; width < blockDim.x; width *= 2) {
        if (t % (2 * width) == 0 && t + width < blockDim.x) {
            float ms[MAXK]; int mi[MAXK];
            int a = 0, b = 0;
            const int A = t * MAXK, B = (t + width) * MAXK;
            for (int c = 0; c < k; c++) {
                if (better(ss[A + a], si[A + a], ss[B + b], si[B + b])) { ms[c] = ss[A + a]; mi[c] = si[A + a]; a++; }
                else { ms[c] = ss[B + b]; mi[c] = si[B + b]; b++; }
            }
            for (int c = 0; c < k; c++) { ss[A + c] = ms[c]; si[A + c] = mi[c]; }
        }
        __syncthreads();
    }
    if (t == 0) {
        const long long o = ((long long)q * slices + slice) * k;
        for (int c = 0; c < k; c++) { out_s[o + c] = ss[c]; out_i[o + c] = si[c]; }
    }
}
"#;

/// The rows in device memory, as stored (f16/bf16 as their bits).
enum DeviceRows {
    F32(CudaSlice<f32>),
    F16(CudaSlice<u16>),
    Bf16(CudaSlice<u16>),
    /// Per-dimension codes, scored in code space (see [`Host::Codes`]).
    U8(CudaSlice<u8>),
    /// Per-vector codes; their scales go to `topk_partial` as `row_scale`.
    I8(CudaSlice<i8>),
}

/// Runs `$body` with `$r` bound to the device rows (a `CudaSlice` of the stored element type).
macro_rules! on_rows {
    ($rows:expr, $r:ident => $body:expr) => {
        match $rows {
            DeviceRows::F32($r) => $body,
            DeviceRows::F16($r) | DeviceRows::Bf16($r) => $body,
            DeviceRows::U8($r) => $body,
            DeviceRows::I8($r) => $body,
        }
    };
}

/// The kernels' entry points for each stored form: (tiled, row groups).
fn entry_points(rows: &DeviceRows) -> (&'static str, &'static str) {
    match rows {
        DeviceRows::F32(_) => ("scores_f32", "scores_rows_f32"),
        DeviceRows::F16(_) => ("scores_f16", "scores_rows_f16"),
        DeviceRows::Bf16(_) => ("scores_bf16", "scores_rows_bf16"),
        DeviceRows::U8(_) => ("scores_u8", "scores_rows_u8"),
        DeviceRows::I8(_) => ("scores_i8", "scores_rows_i8"),
    }
}

/// What the host keeps to turn the kernels' scores into the CPU engine's answers.
struct Host {
    /// Per-dimension codes: the queries are scored as `q ∘ step` and each gets `q · lo` added.
    codes: Option<(Vec<f32>, Vec<f32>)>,
    /// The f32 rows of an index that rescores (resident in host memory, as on the CPU), and the
    /// oversampling factor.
    originals: Option<(Vec<f32>, usize)>,
}

impl Host {
    /// Candidates per query for an answer of k (k ≤ [`MAX_K`]): k, or with rescoring the best
    /// `k × oversampling`, at most [`MAX_K`].
    fn candidates(&self, k: usize) -> usize {
        match &self.originals {
            Some((_, oversample)) => k.saturating_mul(*oversample).clamp(k, MAX_K),
            None => k,
        }
    }
}

/// What the host needs to turn one query's candidates from `topk_partial` into its answer.
struct HostView<'a> {
    ids: &'a [u64],
    host: &'a Host,
    metric: Metric,
    stride: usize,
}

impl HostView<'_> {
    /// One query's answer from its slices' candidate lists (`scores`, `rows`; padding entries
    /// have row −1 or beyond the rows, or a score that is not finite): the best by score (then
    /// lower id), `shift` added (per-dimension codes: the query's offset, ×2 for L2), rescored
    /// with the f32 rows where kept, the best k, reported as the CPU engine reports them.
    fn answer(&self, query: &[f32], (scores, rows): (&[f32], &[i32]), shift: f32, k: usize) -> Vec<Neighbor> {
        let n = self.ids.len();
        let mut top = TopK::new(self.host.candidates(k));
        for (&score, &row) in scores.iter().zip(rows) {
            if let Ok(row) = usize::try_from(row)
                && row < n
                && score.is_finite()
            {
                top.push(Neighbor { id: self.ids[row], score: score + shift });
            }
        }
        let mut hits = top.into_sorted();
        if let Some((originals, _)) = &self.host.originals {
            let row_of: std::collections::HashMap<u64, usize> = scores
                .iter()
                .zip(rows)
                .filter_map(|(_, &r)| usize::try_from(r).ok().filter(|r| *r < n).map(|r| (self.ids[r], r)))
                .collect();
            hits = crate::rescore(self.metric, self.stride, originals, query, hits, |id| row_of[&id], k);
        }
        hits.truncate(k);
        crate::reported(self.metric, query, hits)
    }
}

/// An [`ExactIndex`]'s rows resident on a GPU.
pub struct GpuIndex {
    stream: Arc<CudaStream>,
    tiled: CudaFunction,
    row_groups: CudaFunction,
    topk: CudaFunction,
    rows: DeviceRows,
    norms: Option<CudaSlice<f32>>,
    row_scale: Option<CudaSlice<f32>>,
    host: Host,
    ids: Vec<u64>,
    dim: usize,
    stride: usize,
    metric: Metric,
    device_name: String,
}

impl std::fmt::Debug for GpuIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuIndex").field("device", &self.device_name).field("rows", &self.ids.len()).finish()
    }
}

/// Are the CUDA driver and NVRTC libraries loadable? (cudarc panics on first use otherwise.)
#[allow(unsafe_code)]
pub fn libraries_present() -> Result<(), GpuError> {
    // SAFETY: these only try to dlopen the libraries by their usual names.
    let (driver, nvrtc) =
        unsafe { (cudarc::driver::sys::is_culib_present(), cudarc::nvrtc::sys::is_culib_present()) };
    match (driver, nvrtc) {
        (true, true) => Ok(()),
        (false, _) => {
            Err(GpuError::Unavailable("the CUDA driver library (libcuda.so) is not installed".into()))
        }
        (true, false) => Err(GpuError::Unavailable("NVRTC (libnvrtc.so) is not installed".into())),
    }
}

/// Compiles [`KERNELS`] to PTX with NVRTC (needs only libnvrtc, no GPU).
pub fn compile_kernels() -> Result<cudarc::nvrtc::Ptx, GpuError> {
    #[allow(unsafe_code)]
    // SAFETY: only dlopens libnvrtc by its usual names.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(GpuError::Unavailable("NVRTC (libnvrtc.so) is not installed".into()));
    }
    let opts = cudarc::nvrtc::CompileOptions {
        options: vec!["--std=c++14".into(), "-default-device".into()],
        ..Default::default()
    };
    cudarc::nvrtc::compile_ptx_with_opts(KERNELS, opts).map_err(|e| GpuError::Cuda(format!("NVRTC: {e}")))
}

/// A size as the kernels' `int` parameters take it.
fn kernel_int(v: usize) -> Result<i32, GpuError> {
    i32::try_from(v).map_err(|_| GpuError::Cuda(format!("{v} exceeds the kernels' int range")))
}

/// The buffer bounds both score kernels rely on, checked in every build (once per launch):
/// stride a multiple of 16, Q nq × stride floats, the rows n × stride elements, S nq × n floats.
fn check_score_buffers<T>(
    kernel: &str,
    queries: &CudaSlice<f32>,
    rows: &CudaSlice<T>,
    scores: &CudaSlice<f32>,
    (nq, n, stride): (usize, usize, usize),
) {
    assert!(
        stride.is_multiple_of(16)
            && queries.len() >= nq * stride
            && rows.len() >= n * stride
            && scores.len() >= nq * n,
        "{kernel}: nq {nq}, n {n}, stride {stride}; buffers {} / {} / {}",
        queries.len(),
        rows.len(),
        scores.len()
    );
}

/// Do 8 queries of this stride fit the row-group kernel's shared memory (no opt-in)?
fn rows_fit(stride: usize) -> bool {
    RG_MAXQ * stride * std::mem::size_of::<f32>() <= RG_SHARED_BYTES
}

/// Launches a tiled score kernel (`scores_f32`, `_f16`, `_bf16`, `_u8`, `_i8`: same parameters,
/// `rows` of the kernel's element type, as [`entry_points`] pairs them):
/// S (nq × n) = Q (nq × stride) · rowsᵀ (n × stride), 64 × 64 tiles per 256-thread block.
#[allow(unsafe_code)]
fn launch_scores<T: cudarc::driver::DeviceRepr>(
    s: &CudaStream,
    kernel: &CudaFunction,
    queries: &CudaSlice<f32>,
    rows: &CudaSlice<T>,
    scores: &mut CudaSlice<f32>,
    (nq, n, stride): (usize, usize, usize),
) -> Result<(), GpuError> {
    check_score_buffers("launch_scores", queries, rows, scores, (nq, n, stride));
    let (nq_i, n_i, stride_i) = (kernel_int(nq)?, kernel_int(n)?, kernel_int(stride)?);
    let grid = (n.div_ceil(64) as u32, nq.div_ceil(64) as u32, 1);
    let cfg = LaunchConfig { grid_dim: grid, block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: the arguments match the kernels' parameters in type and order (`rows` holds the
    // element type of the kernel [`entry_points`] chose for the same `DeviceRows` variant: f32,
    // u16 bits for f16/bf16, u8 or i8 codes); Q holds nq × stride floats, the rows
    // n × stride elements, S nq × n floats, stride is a multiple of the kernel's 16-wide k-tile
    // and every size fits the kernels' int parameters (all asserted above).
    unsafe {
        s.launch_builder(kernel)
            .arg(queries)
            .arg(rows)
            .arg(scores)
            .arg(&nq_i)
            .arg(&n_i)
            .arg(&stride_i)
            .launch(cfg)
    }
    .map(|_| ())
    .map_err(cuda)
}

/// Launches a row-group score kernel (`scores_rows_f32`, `_f16`, `_bf16`, `_u8`, `_i8`) once per group of up to [`RG_MAXQ`] queries:
/// S (nq × n) = Q (nq × stride) · rowsᵀ (n × stride), each row read once per group.
#[allow(unsafe_code)]
fn launch_rows<T: cudarc::driver::DeviceRepr>(
    s: &CudaStream,
    kernel: &CudaFunction,
    queries: &CudaSlice<f32>,
    rows: &CudaSlice<T>,
    scores: &mut CudaSlice<f32>,
    (nq, n, stride): (usize, usize, usize),
) -> Result<(), GpuError> {
    check_score_buffers("launch_rows", queries, rows, scores, (nq, n, stride));
    assert!(rows_fit(stride), "launch_rows: 8 queries of stride {stride} exceed the shared memory");
    let (n_i, stride_i) = (kernel_int(n)?, kernel_int(stride)?);
    kernel_int(nq * n)?;
    // 8 warps per block, 4 rows per warp; enough blocks to fill any current GPU, grid-stride above.
    let blocks = n.div_ceil(32).clamp(1, 4096) as u32;
    for q0 in (0..nq).step_by(RG_MAXQ) {
        let group = RG_MAXQ.min(nq - q0);
        let (q0_i, group_i) = (kernel_int(q0)?, kernel_int(group)?);
        let cfg = LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: (group * stride * std::mem::size_of::<f32>()) as u32,
        };
        // SAFETY: the arguments match the kernels' parameters in type and order (`rows` holds
        // the element type of the kernel [`entry_points`] chose for the same `DeviceRows`
        // variant); Q holds nq × stride
        // floats, of which the kernel reads queries q0 .. q0 + group (≤ RG_MAXQ) into `group ×
        // stride` floats of dynamic shared memory (≤ 48 KB); the rows are n × stride elements with
        // stride a multiple of 16, so its 4-element vector loads (16, 8 or 4 bytes) stay aligned
        // and inside each row;
        // S holds nq × n floats and every index fits an int (all asserted above).
        unsafe {
            s.launch_builder(kernel)
                .arg(queries)
                .arg(rows)
                .arg(&mut *scores)
                .arg(&q0_i)
                .arg(&group_i)
                .arg(&n_i)
                .arg(&stride_i)
                .launch(cfg)
        }
        .map_err(cuda)?;
    }
    Ok(())
}

impl GpuIndex {
    /// Uploads `index` to GPU `ordinal`: its rows as stored (f32, f16, bf16, int8 codes), their
    /// norms for L2 and per-vector scales; an index that rescores keeps its f32 rows in host
    /// memory for that.
    pub fn upload(index: &ExactIndex, ordinal: usize) -> Result<Self, GpuError> {
        libraries_present()?;
        let ctx =
            CudaContext::new(ordinal).map_err(|e| GpuError::Unavailable(format!("GPU {ordinal}: {e}")))?;
        let device_name = ctx.name().unwrap_or_else(|_| format!("GPU {ordinal}"));
        let ptx = compile_kernels()?;
        let module = ctx.load_module(ptx).map_err(cuda)?;
        let stream = ctx.default_stream();
        let up = |bits: Vec<u16>| stream.clone_htod(&bits).map_err(cuda);
        let (rows, row_scale, codes) = match &index.data {
            Storage::F32(d) => (DeviceRows::F32(stream.clone_htod(d).map_err(cuda)?), None, None),
            Storage::F16(d) => {
                (DeviceRows::F16(up(d.iter().map(|h: &f16| h.to_bits()).collect())?), None, None)
            }
            Storage::Bf16(d) => {
                (DeviceRows::Bf16(up(d.iter().map(|h: &bf16| h.to_bits()).collect())?), None, None)
            }
            Storage::U8 { codes, lo, step } => (
                DeviceRows::U8(stream.clone_htod(codes).map_err(cuda)?),
                None,
                Some((lo.clone(), step.clone())),
            ),
            Storage::I8 { codes, scale } => (
                DeviceRows::I8(stream.clone_htod(codes).map_err(cuda)?),
                Some(stream.clone_htod(scale).map_err(cuda)?),
                None,
            ),
        };
        let (tiled, row_groups) = entry_points(&rows);
        let load = |name: &str| module.load_function(name).map_err(cuda);
        let norms = match index.metric {
            Metric::L2 => Some(stream.clone_htod(&index.norms).map_err(cuda)?),
            _ => None,
        };
        let originals = index.originals.clone().map(|o| (o, index.options.rescore));
        Ok(Self {
            tiled: load(tiled)?,
            row_groups: load(row_groups)?,
            topk: load("topk_partial")?,
            stream,
            rows,
            norms,
            row_scale,
            host: Host { codes, originals },
            ids: index.ids.clone(),
            dim: index.dim,
            stride: index.stride,
            metric: index.metric,
            device_name,
        })
    }

    pub fn device_name(&self) -> &str {
        &self.device_name
    }

    /// The k nearest rows of each query, like [`ExactIndex::search`] (k ≤ [`MAX_K`]).
    pub fn search(&self, queries: &[f32], k: usize) -> Result<Vec<Vec<Neighbor>>, GpuError> {
        self.search_with(queries, k, ScorePlan::Auto)
    }

    /// The kernel [`ScorePlan::Auto`] uses for `nq` queries on this index.
    pub fn plan(&self, nq: usize) -> ScorePlan {
        if rows_fit(self.stride) && nq <= ROW_GROUPS_MAX_BATCH {
            ScorePlan::RowGroups
        } else {
            ScorePlan::Tiled
        }
    }

    /// [`GpuIndex::search`] with the score kernel chosen by the caller (benches and tests);
    /// row groups on an index too wide for them fall back to tiles. An index that rescores takes
    /// the best `k × oversampling` (at most [`MAX_K`], at least k) by the stored form's scores and
    /// re-ranks them with the f32 rows, as the CPU engine does.
    #[allow(unsafe_code)]
    pub fn search_with(
        &self,
        queries: &[f32],
        k: usize,
        plan: ScorePlan,
    ) -> Result<Vec<Vec<Neighbor>>, GpuError> {
        if k > MAX_K {
            return Err(GpuError::InvalidArgument {
                field: "k",
                reason: format!("must be 1..={MAX_K} on the GPU"),
            });
        }
        let padded = crate::prepare_queries(self.dim, self.stride, self.metric, queries, k)?;
        let n = self.ids.len();
        let nq = queries.len() / self.dim;
        if n == 0 {
            return Ok(vec![Vec::new(); nq]);
        }
        // Per-dimension codes: the queries in code space, each query's offset added on the host
        // (a constant per query does not change its ranking).
        let (scored, offsets) = match &self.host.codes {
            Some((lo, step)) => crate::code_space(&padded, self.stride, lo, step),
            None => (Vec::new(), Vec::new()),
        };
        let scored = if scored.is_empty() { &padded } else { &scored };
        let kk = self.host.candidates(k);
        let s = &self.stream;
        let q_dev = s.clone_htod(scored).map_err(cuda)?;
        let mut scores = s.alloc_zeros::<f32>(nq * n).map_err(cuda)?;
        let n_i = n as i32;
        let plan = match plan {
            ScorePlan::Auto => self.plan(nq),
            ScorePlan::RowGroups if !rows_fit(self.stride) => ScorePlan::Tiled,
            p => p,
        };
        let dims = (nq, n, self.stride);
        let row_groups = plan == ScorePlan::RowGroups;
        on_rows!(&self.rows, r => if row_groups {
            launch_rows(s, &self.row_groups, &q_dev, r, &mut scores, dims)
        } else {
            launch_scores(s, &self.tiled, &q_dev, r, &mut scores, dims)
        })?;
        let slices = n.div_ceil(SLICE);
        let mut out_s = s.alloc_zeros::<f32>(nq * slices * kk).map_err(cuda)?;
        let mut out_i = s.alloc_zeros::<i32>(nq * slices * kk).map_err(cuda)?;
        let (use_bias, use_row_scale) =
            (i32::from(self.norms.is_some()), i32::from(self.row_scale.is_some()));
        let scale = if self.metric == Metric::L2 { 2.0f32 } else { 1.0 };
        let (k_i, slice_i, slices_i) = (kk as i32, SLICE as i32, slices as i32);
        let cfg = LaunchConfig {
            grid_dim: (slices as u32, nq as u32, 1),
            block_dim: (THREADS_TOPK, 1, 1),
            shared_mem_bytes: 0,
        };
        let dummy: CudaSlice<f32> = s.alloc_zeros::<f32>(1).map_err(cuda)?;
        let (bias, row_scale) = (self.norms.as_ref(), self.row_scale.as_ref());
        // The bounds `topk_partial` relies on, checked in every build (once per search).
        assert!(
            (1..=MAX_K).contains(&kk)
                && scores.len() >= nq * n
                && bias.is_none_or(|b| b.len() >= n)
                && row_scale.is_none_or(|r| r.len() >= n)
                && out_s.len() >= nq * slices * kk
                && out_i.len() >= nq * slices * kk
                && i32::try_from(nq * slices * kk).is_ok(),
            "topk_partial: k {kk}, nq {nq}, n {n}, slices {slices}"
        );
        // SAFETY: parameters match `topk_partial` in type and order; k ≤ MAXK (the kernel's
        // per-thread list); S is nq × n floats; bias and row_scale are n floats each when their
        // flag is 1, else a 1-float dummy the kernel never reads; outputs nq × slices × k (all
        // asserted above).
        unsafe {
            let mut b = s.launch_builder(&self.topk);
            b.arg(&scores);
            b.arg(bias.unwrap_or(&dummy));
            b.arg(&use_bias);
            b.arg(row_scale.unwrap_or(&dummy));
            b.arg(&use_row_scale)
                .arg(&scale)
                .arg(&n_i)
                .arg(&k_i)
                .arg(&slice_i)
                .arg(&slices_i)
                .arg(&mut out_s)
                .arg(&mut out_i);
            b.launch(cfg)
        }
        .map_err(cuda)?;
        let (hs, hi) = (s.clone_dtoh(&out_s).map_err(cuda)?, s.clone_dtoh(&out_i).map_err(cuda)?);
        let per_query = slices * kk;
        let view = HostView { ids: &self.ids, host: &self.host, metric: self.metric, stride: self.stride };
        let out = padded
            .chunks_exact(self.stride)
            .enumerate()
            .map(|(qi, q)| {
                let span = qi * per_query..(qi + 1) * per_query;
                let shift = offsets.get(qi).map_or(0.0, |off| off * scale);
                view.answer(q, (&hs[span.clone()], &hi[span]), shift, k)
            })
            .collect();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view<'a>(ids: &'a [u64], host: &'a Host, metric: Metric) -> HostView<'a> {
        HostView { ids, host, metric, stride: 2 }
    }

    /// The host's half of a GPU search, fed candidate lists written by hand (what `topk_partial`
    /// would return, padding included): no GPU is needed for this part.
    #[test]
    fn candidates_become_the_cpu_engines_answer() {
        let ids = [10, 20, 30, 40];
        let plain = Host { codes: None, originals: None };
        // Two slices of 3: padding rows (−1, out of range, −inf) are dropped, ties go to the lower id.
        let scores = [0.5, 0.9, f32::NEG_INFINITY, 0.9, 0.1, 7.0];
        let rows = [0, 3, -1, 1, 2, 4];
        let got = view(&ids, &plain, Metric::InnerProduct).answer(&[1.0, 0.0], (&scores, &rows), 0.0, 2);
        assert_eq!(got, vec![Neighbor { id: 20, score: 0.9 }, Neighbor { id: 40, score: 0.9 }]);
        // A per-query shift (per-dimension codes' offset) is added; L2 reports |q|² − ranking score.
        let got = view(&ids, &plain, Metric::L2).answer(&[1.0, 1.0], (&scores, &rows), 0.5, 1);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].id, 20);
        assert!((got[0].score - 0.6).abs() < 1e-6, "{got:?}");
    }

    #[test]
    fn rescoring_reranks_the_candidates_with_the_f32_rows() {
        let ids = [10, 20, 30];
        // f32 rows (stride 2): row 0 = (0, 1), row 1 = (1, 0), row 2 = (0.5, 0.5).
        let host = Host { codes: None, originals: Some((vec![0.0, 1.0, 1.0, 0.0, 0.5, 0.5], 3)) };
        assert_eq!(host.candidates(2), 6);
        assert_eq!(host.candidates(20), MAX_K, "at most MAX_K candidates");
        // The compressed scores rank row 0 first; the f32 rows rank row 1 (id 20) for q = (1, 0).
        let (scores, rows) = ([0.9, 0.8, 0.7], [0, 1, 2]);
        let got = view(&ids, &host, Metric::InnerProduct).answer(&[1.0, 0.0], (&scores, &rows), 0.0, 2);
        assert_eq!(got, vec![Neighbor { id: 20, score: 1.0 }, Neighbor { id: 30, score: 0.5 }]);
        // L2: ranked by 2<q,v> − |v|², reported as |q − v|².
        let got = view(&ids, &host, Metric::L2).answer(&[0.0, 1.0], (&scores, &rows), 0.0, 1);
        assert_eq!(got, vec![Neighbor { id: 10, score: 0.0 }]);
    }
}
