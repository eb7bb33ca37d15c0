//! The GPU engine (cargo feature `cuda`): the index's matrix resident in device memory, our own
//! CUDA kernels compiled with NVRTC at start, driven through `cudarc` with dynamic loading (the
//! build needs no CUDA; a machine without the driver or NVRTC gets [`GpuError::Unavailable`],
//! never a panic).
//!
//! Kernels ([`KERNELS`]):
//! - `scores_f32` / `scores_f16`: S = Q·Vᵀ for a batch of queries against the resident rows,
//!   64 × 64 output tiles per block of 256 threads, shared-memory tiles of 64 queries × 16
//!   dimensions and 64 rows × 16 dimensions, 4 × 4 outputs per thread in registers; f16 rows are
//!   widened on load, accumulation is f32;
//! - `scores_rows_f32` / `scores_rows_f16`: the same scores for small batches, every row read once:
//!   one warp per group of 4 rows, lanes striding over the dimensions with 16-byte (f32) or
//!   8-byte (f16) loads, up to 8 queries per launch held in shared memory, warp-shuffle sums
//!   (the tiled kernel computes 64 query slots per block: a batch of one wastes 63/64 of its
//!   multiply-adds). [`ScorePlan`] picks between them;
//! - `topk_partial`: per query and per slice of rows, each thread keeps a sorted top-k of its
//!   strided candidates, then the block merges the 128 lists pairwise in shared memory (7
//!   rounds) and writes the slice's top-k; the host merges the slices' lists.
//!
//! Queries go up and partial lists come down on one stream; the matrix never moves after
//! upload. Same ordering as the CPU engine: higher score first, then lower id.

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, LaunchConfig, PushKernelArg};
use half::f16;

use crate::topk::{Neighbor, TopK};
use crate::{ExactIndex, Metric};

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
    /// The index is stored in a precision the GPU kernels do not read (bf16, int8).
    #[error("the GPU engine scores f32 and f16 rows; this index stores {0}")]
    Unsupported(&'static str),
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

__device__ __forceinline__ float ld(const float* p, long long i) { return p[i]; }
__device__ __forceinline__ float ld(const unsigned short* p, long long i) {
    float f; unsigned short h = p[i];
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

template <typename T>
__device__ void scores_tile(const float* Q, const T* V, float* S, int nq, int n, int stride) {
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
            vs[col][row] = r < n ? ld(V, (long long)r * stride + k0 + col) : 0.f;
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

extern "C" __global__ void scores_f32(const float* Q, const float* V, float* S, int nq, int n, int stride) {
    scores_tile<float>(Q, V, S, nq, n, stride);
}

extern "C" __global__ void scores_f16(const float* Q, const unsigned short* V, float* S, int nq, int n, int stride) {
    scores_tile<unsigned short>(Q, V, S, nq, n, stride);
}

// Small batches: S[(q0 + q) * n + r] for the nq (≤ RG_MAXQ) queries from q0 and every row, each row
// read once. One warp per group of RG_ROWS rows (grid-stride), the lanes striding over the
// dimensions four at a time (16-byte loads for f32, 8-byte for f16; stride is a multiple of 16, so
// every row starts aligned), the queries in shared memory (nq × stride floats, dynamic), then a
// warp-shuffle sum per (row, query). The tiled kernel above computes 64 query slots per block and
// so wastes most of its multiply-adds on a batch of one.
#define RG_ROWS 4
#define RG_MAXQ 8
__device__ __forceinline__ float4 ld4(const float* p, long long i) {
    return *reinterpret_cast<const float4*>(p + i);
}
__device__ __forceinline__ float h2f(unsigned short h) {
    float f; asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h)); return f;
}
__device__ __forceinline__ float4 ld4(const unsigned short* p, long long i) {
    const uint2 u = *reinterpret_cast<const uint2*>(p + i);
    return make_float4(h2f(u.x & 0xffff), h2f(u.x >> 16), h2f(u.y & 0xffff), h2f(u.y >> 16));
}

template <typename T>
__device__ void scores_rows(const float* Q, const T* V, float* S, int q0, int nq, int n, int stride) {
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
                v[i] = r0 + i < n ? ld4(V, (r0 + i) * stride + 4LL * c) : make_float4(0.f, 0.f, 0.f, 0.f);
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

extern "C" __global__ void scores_rows_f32(const float* Q, const float* V, float* S, int q0, int nq, int n, int stride) {
    scores_rows<float>(Q, V, S, q0, nq, n, stride);
}

extern "C" __global__ void scores_rows_f16(const float* Q, const unsigned short* V, float* S, int q0, int nq, int n, int stride) {
    scores_rows<unsigned short>(Q, V, S, q0, nq, n, stride);
}

// Is (s1, i1) ranked before (s2, i2)? Higher score, then lower row.
__device__ __forceinline__ bool better(float s1, int i1, float s2, int i2) {
    return s1 > s2 || (s1 == s2 && i1 < i2);
}

// Row j of query q scores S[q*n + j] * scale - (use_bias ? bias[j] : 0): L2 ranks by
// 2<q,v> - |v|^2 (scale 2, bias |v|^2). Block (slice, q) writes its top-k to
// out_s/out_i[(q * slices + slice) * k ..].
extern "C" __global__ void topk_partial(const float* S, const float* bias, int use_bias, float scale, int n,
                                        int k, int slice_len, int slices, float* out_s, int* out_i) {
    __shared__ float ss[128 * MAXK];
    __shared__ int si[128 * MAXK];
    const int q = blockIdx.y, slice = blockIdx.x, t = threadIdx.x;
    const int lo = slice * slice_len, hi = min(n, lo + slice_len);
    float ls[MAXK]; int li[MAXK]; int cnt = 0;
    for (int j = lo + t; j < hi; j += blockDim.x) {
        float s = S[(long long)q * n + j] * scale - (use_bias ? bias[j] : 0.f);
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

enum DeviceRows {
    F32(CudaSlice<f32>),
    F16(CudaSlice<u16>),
}

/// An [`ExactIndex`]'s rows resident on a GPU.
pub struct GpuIndex {
    stream: Arc<CudaStream>,
    scores_f32: CudaFunction,
    scores_f16: CudaFunction,
    rows_f32: CudaFunction,
    rows_f16: CudaFunction,
    topk: CudaFunction,
    rows: DeviceRows,
    norms: Option<CudaSlice<f32>>,
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

/// Launches `scores_f32` or `scores_f16` (same parameters; `rows` of the kernel's element type):
/// S (nq × n) = Q (nq × stride) · rowsᵀ (n × stride), 64 × 64 tiles per 256-thread block.
#[allow(unsafe_code, clippy::too_many_arguments)]
fn launch_scores<T: cudarc::driver::DeviceRepr>(
    s: &CudaStream,
    kernel: &CudaFunction,
    queries: &CudaSlice<f32>,
    rows: &CudaSlice<T>,
    scores: &mut CudaSlice<f32>,
    nq: usize,
    n: usize,
    stride: usize,
) -> Result<(), GpuError> {
    check_score_buffers("launch_scores", queries, rows, scores, (nq, n, stride));
    let (nq_i, n_i, stride_i) = (kernel_int(nq)?, kernel_int(n)?, kernel_int(stride)?);
    let grid = (n.div_ceil(64) as u32, nq.div_ceil(64) as u32, 1);
    let cfg = LaunchConfig { grid_dim: grid, block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: the arguments match the kernels' parameters in type and order (`rows` is f32 for
    // `scores_f32`, the f16 bits as u16 for `scores_f16`); Q holds nq × stride floats, the rows
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

/// Launches `scores_rows_f32` or `scores_rows_f16` once per group of up to [`RG_MAXQ`] queries:
/// S (nq × n) = Q (nq × stride) · rowsᵀ (n × stride), each row read once per group.
#[allow(unsafe_code, clippy::too_many_arguments)]
fn launch_rows<T: cudarc::driver::DeviceRepr>(
    s: &CudaStream,
    kernel: &CudaFunction,
    queries: &CudaSlice<f32>,
    rows: &CudaSlice<T>,
    scores: &mut CudaSlice<f32>,
    nq: usize,
    n: usize,
    stride: usize,
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
        // SAFETY: the arguments match the kernels' parameters in type and order (`rows` is f32
        // for `scores_rows_f32`, the f16 bits as u16 for `scores_rows_f16`); Q holds nq × stride
        // floats, of which the kernel reads queries q0 .. q0 + group (≤ RG_MAXQ) into `group ×
        // stride` floats of dynamic shared memory (≤ 48 KB); the rows are n × stride elements with
        // stride a multiple of 16, so its 4-element vector loads stay aligned and inside each row;
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
    /// Uploads `index` to GPU `ordinal`.
    pub fn upload(index: &ExactIndex, ordinal: usize) -> Result<Self, GpuError> {
        libraries_present()?;
        let ctx =
            CudaContext::new(ordinal).map_err(|e| GpuError::Unavailable(format!("GPU {ordinal}: {e}")))?;
        let device_name = ctx.name().unwrap_or_else(|_| format!("GPU {ordinal}"));
        let ptx = compile_kernels()?;
        let module = ctx.load_module(ptx).map_err(cuda)?;
        let stream = ctx.default_stream();
        let load = |name: &str| module.load_function(name).map_err(cuda);
        let (scores_f32, scores_f16, topk) =
            (load("scores_f32")?, load("scores_f16")?, load("topk_partial")?);
        let (rows_f32, rows_f16) = (load("scores_rows_f32")?, load("scores_rows_f16")?);
        let rows = match &index.data {
            crate::Storage::F32(d) => DeviceRows::F32(stream.clone_htod(d).map_err(cuda)?),
            crate::Storage::F16(d) => {
                let bits: Vec<u16> = d.iter().map(|h: &f16| h.to_bits()).collect();
                DeviceRows::F16(stream.clone_htod(&bits).map_err(cuda)?)
            }
            _ => return Err(GpuError::Unsupported(index.precision().name())),
        };
        let norms = match index.metric {
            Metric::L2 => Some(stream.clone_htod(&index.norms).map_err(cuda)?),
            _ => None,
        };
        Ok(Self {
            stream,
            scores_f32,
            scores_f16,
            rows_f32,
            rows_f16,
            topk,
            rows,
            norms,
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
    /// row groups on an index too wide for them fall back to tiles.
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
        let s = &self.stream;
        let q_dev = s.clone_htod(&padded).map_err(cuda)?;
        let mut scores = s.alloc_zeros::<f32>(nq * n).map_err(cuda)?;
        let n_i = n as i32;
        let plan = match plan {
            ScorePlan::Auto => self.plan(nq),
            ScorePlan::RowGroups if !rows_fit(self.stride) => ScorePlan::Tiled,
            p => p,
        };
        match (&self.rows, plan) {
            (DeviceRows::F32(rows), ScorePlan::RowGroups) => {
                launch_rows(s, &self.rows_f32, &q_dev, rows, &mut scores, nq, n, self.stride)
            }
            (DeviceRows::F16(rows), ScorePlan::RowGroups) => {
                launch_rows(s, &self.rows_f16, &q_dev, rows, &mut scores, nq, n, self.stride)
            }
            (DeviceRows::F32(rows), _) => {
                launch_scores(s, &self.scores_f32, &q_dev, rows, &mut scores, nq, n, self.stride)
            }
            (DeviceRows::F16(rows), _) => {
                launch_scores(s, &self.scores_f16, &q_dev, rows, &mut scores, nq, n, self.stride)
            }
        }?;
        let slices = n.div_ceil(SLICE);
        let mut out_s = s.alloc_zeros::<f32>(nq * slices * k).map_err(cuda)?;
        let mut out_i = s.alloc_zeros::<i32>(nq * slices * k).map_err(cuda)?;
        let use_bias = i32::from(self.norms.is_some());
        let (scale, k_i, slice_i, slices_i) =
            (if self.metric == Metric::L2 { 2.0f32 } else { 1.0 }, k as i32, SLICE as i32, slices as i32);
        let cfg = LaunchConfig {
            grid_dim: (slices as u32, nq as u32, 1),
            block_dim: (THREADS_TOPK, 1, 1),
            shared_mem_bytes: 0,
        };
        let no_bias: CudaSlice<f32> = s.alloc_zeros::<f32>(1).map_err(cuda)?;
        let bias = self.norms.as_ref();
        // The bounds `topk_partial` relies on, checked in every build (once per search).
        assert!(
            (1..=MAX_K).contains(&k)
                && scores.len() >= nq * n
                && bias.is_none_or(|b| b.len() >= n)
                && out_s.len() >= nq * slices * k
                && out_i.len() >= nq * slices * k
                && i32::try_from(nq * slices * k).is_ok(),
            "topk_partial: k {k}, nq {nq}, n {n}, slices {slices}"
        );
        // SAFETY: parameters match `topk_partial` in type and order; k ≤ MAXK (the kernel's
        // per-thread list); S is nq × n floats; bias is n floats when use_bias is 1 (L2), else a
        // 1-float dummy the kernel never reads; outputs nq × slices × k (all asserted above).
        unsafe {
            let mut b = s.launch_builder(&self.topk);
            b.arg(&scores);
            match bias {
                Some(norms) => b.arg(norms),
                None => b.arg(&no_bias),
            };
            b.arg(&use_bias)
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
        let mut out = Vec::with_capacity(nq);
        for (qi, q) in padded.chunks_exact(self.stride).enumerate() {
            let mut top = TopK::new(k);
            let base = qi * slices * k;
            for c in base..base + slices * k {
                let row = hi[c];
                if row >= 0 && (row as usize) < n && hs[c].is_finite() {
                    top.push(Neighbor { id: self.ids[row as usize], score: hs[c] });
                }
            }
            out.push(crate::reported(self.metric, q, top.into_sorted()));
        }
        Ok(out)
    }
}
