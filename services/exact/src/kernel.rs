//! The scoring kernel: `scores[q][j] = <query q, row j>` for a batch of queries against a block
//! of rows, register-blocked 4 queries × 4 rows with 16-lane accumulators, so each row loaded
//! from cache serves 4 queries and each query chunk serves 4 rows (2 loads per FMA vector →
//! compute-bound at batch ≥ 4, bandwidth-bound at batch 1 as it must be).
//!
//! Three builds of the kernel, the best one the CPU supports picked at run time:
//! - AVX-512F: explicit 512-bit intrinsics (`mod avx512`: a 4 × 4 and a 1 × 4 micro-kernel) that
//!   load through raw pointers, generic over the stored row type (`Row`: f32, or f16 bits widened
//!   by `vcvtph2ps` as they are loaded);
//! - AVX2 + FMA and the baseline target: the same plain-Rust, bounds-checked kernel compiled for
//!   each target (LLVM vectorises it), with no `unsafe` inside.
//!
//! The `unsafe` in this file is of two kinds, each with a `// SAFETY:` comment: calling a
//! `#[target_feature]` function (sound exactly when the CPU has the feature, which the
//! dispatchers check first with `is_x86_feature_detected!`), and the AVX-512 micro-kernels'
//! pointer loads. Every bound those loads rely on (slice lengths against `stride`, `stride` a
//! multiple of [`LANES`]) is checked with `assert!` — in release builds too — once per tile, before
//! the inner loop, so a wrong caller panics instead of reading out of bounds.
//!
//! Rows and queries are stored with a stride that is a multiple of [`LANES`], zero-padded, so the
//! inner loop has no remainder.

/// Floats per accumulator vector (one AVX-512 register).
pub const LANES: usize = 16;
const TQ: usize = 4;
const TR: usize = 4;

/// Row stride for dimension `dim`: `dim` rounded up to a multiple of [`LANES`].
pub fn stride(dim: usize) -> usize {
    dim.div_ceil(LANES) * LANES
}

/// Which instruction set the kernel runs with on this CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    Avx512,
    Avx2Fma,
    Baseline,
}

impl Isa {
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Isa::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                return Isa::Avx2Fma;
            }
        }
        Isa::Baseline
    }

    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512 => "avx512f",
            Isa::Avx2Fma => "avx2+fma",
            Isa::Baseline => "baseline",
        }
    }
}

/// Multiply-add: a fused instruction where the target has one (the FMA builds), else separate
/// multiply and add (a software `fmaf` call would be far slower).
trait Madd {
    fn madd(a: f32, b: f32, c: f32) -> f32;
}
struct Fused;
struct Unfused;
impl Madd for Fused {
    #[inline(always)]
    fn madd(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
}
impl Madd for Unfused {
    #[inline(always)]
    fn madd(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
}

#[inline(always)]
fn lanes(s: &[f32], at: usize) -> &[f32; LANES] {
    s[at..at + LANES].try_into().unwrap_or_else(|_| unreachable!("slice of LANES"))
}

#[inline(always)]
fn hsum(acc: &[f32; LANES]) -> f32 {
    // Pairwise, so the result does not depend on how the lanes were vectorised.
    let mut v = *acc;
    let mut w = LANES / 2;
    while w > 0 {
        for i in 0..w {
            v[i] += v[i + w];
        }
        w /= 2;
    }
    v[0]
}

/// A `nq × nr` tile (`nq ≤ TQ`, `nr ≤ TR`) of dot products. `q` and `r` hold rows of `stride`
/// floats; `out[i * out_stride + j]`.
#[inline(always)]
fn tile<M: Madd, const NQ: usize, const NR: usize>(
    q: &[f32],
    r: &[f32],
    stride: usize,
    out: &mut [f32],
    out_stride: usize,
) {
    let mut acc = [[[0.0f32; LANES]; NR]; NQ];
    let mut at = 0;
    while at < stride {
        let qs: [&[f32; LANES]; NQ] = std::array::from_fn(|i| lanes(q, i * stride + at));
        let rs: [&[f32; LANES]; NR] = std::array::from_fn(|j| lanes(r, j * stride + at));
        for i in 0..NQ {
            for j in 0..NR {
                for l in 0..LANES {
                    acc[i][j][l] = M::madd(qs[i][l], rs[j][l], acc[i][j][l]);
                }
            }
        }
        at += LANES;
    }
    for i in 0..NQ {
        for j in 0..NR {
            out[i * out_stride + j] = hsum(&acc[i][j]);
        }
    }
}

#[inline(always)]
fn tile_dyn<M: Madd>(nq: usize, nr: usize, q: &[f32], r: &[f32], stride: usize, out: &mut [f32], os: usize) {
    // Edge tiles: dispatch to the const-size kernel of that shape.
    macro_rules! shapes {
        ($($a:literal $b:literal),*) => {
            match (nq, nr) {
                $(($a, $b) => tile::<M, $a, $b>(q, r, stride, out, os),)*
                _ => unreachable!("tile shapes are at most {TQ}×{TR}"),
            }
        };
    }
    shapes!(1 1, 1 2, 1 3, 1 4, 2 1, 2 2, 2 3, 2 4, 3 1, 3 2, 3 3, 3 4, 4 1, 4 2, 4 3, 4 4)
}

/// Walks the `nq × nr` output in tiles of at most `TQ × TR` and runs `$body` for each, with
/// `$tq × $tr` its shape, `$q` the tile's query rows, `$r` its rows and `$o` the output from the
/// tile on (row stride nr). A macro rather than a function taking a closure: a closure is
/// compiled as a function of its own, without the target features of the function it is
/// written in, so the AVX2 + FMA build's multiply-adds became calls of the software `fmaf`
/// (measured on a 40 × 40 × 384 matrix: 2.5 ms, against 0.43 ms for the baseline build).
macro_rules! walk_tiles {
    ($queries:expr, $nq:expr, $rows:expr, $nr:expr, $stride:expr, $out:expr,
     |$tq:ident, $tr:ident, $q:ident, $r:ident, $o:ident| $body:block) => {{
        // Rows are f32 or f16 bits (u16), whatever `$rows` is.
        let (queries, nq, rows, nr, stride, out): (&[f32], usize, &[_], usize, usize, &mut [f32]) =
            ($queries, $nq, $rows, $nr, $stride, $out);
        let mut qi = 0;
        while qi < nq {
            let $tq = $crate::kernel::TQ.min(nq - qi);
            let $q = &queries[qi * stride..(qi + $tq) * stride];
            let mut rj = 0;
            while rj < nr {
                let $tr = $crate::kernel::TR.min(nr - rj);
                let $r = &rows[rj * stride..(rj + $tr) * stride];
                let $o = &mut out[qi * nr + rj..];
                $body
                rj += $tr;
            }
            qi += $tq;
        }
    }};
}

#[inline(always)]
fn scores_impl<M: Madd>(queries: &[f32], nq: usize, rows: &[f32], nr: usize, stride: usize, out: &mut [f32]) {
    walk_tiles!(queries, nq, rows, nr, stride, out, |tq, tr, q, r, o| {
        if tq == TQ && tr == TR {
            tile::<M, TQ, TR>(q, r, stride, o, nr);
        } else {
            tile_dyn::<M>(tq, tr, q, r, stride, o, nr);
        }
    })
}

/// What rows are stored as, as the kernel reads them: f32; f16 or bf16 bits; u8 or i8 codes
/// (scalar quantisation: the kernel scores the code values, the caller applies the affine map —
/// see `ExactIndex`). The AVX-512 micro-kernels widen 16 values to f32 lanes as they load them,
/// so a row is read at its stored width; elsewhere blocks are widened to f32 first.
#[allow(unsafe_code)]
pub trait Row: Copy + Send + Sync + 'static {
    /// Bytes per stored value.
    const BYTES: usize;

    /// bf16 rows as such (for [`bf16_dots`]); None for the other types.
    fn as_bf16(values: &[Self]) -> Option<&[half::bf16]> {
        let _ = values;
        None
    }

    /// 8-bit codes: whether they are signed (scored by [`code_dots`] as `c + 128`). None for
    /// the float types.
    const SIGNED_CODE: Option<bool> = None;

    /// The 16 values at `p` as f32 lanes.
    ///
    /// # Safety
    /// The CPU supports AVX-512F and `p .. p + 16` is readable.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512;

    /// The values as f32 into `out` (same length): the widened blocks of large batches and of
    /// the instruction sets without a direct kernel.
    fn widen_into(values: &[Self], out: &mut [f32]);

    /// The values as f32 (edge tiles).
    fn widen(values: &[Self]) -> std::borrow::Cow<'_, [f32]> {
        let mut out = vec![0.0; values.len()];
        Self::widen_into(values, &mut out);
        std::borrow::Cow::Owned(out)
    }
}

/// bf16 bits (the upper half of an f32).
pub type Bf16 = half::bf16;

#[allow(unsafe_code)]
mod rows {
    #[cfg(target_arch = "x86_64")]
    use std::arch::x86_64::*;
    use std::borrow::Cow;

    use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};

    use super::Row;

    impl Row for f32 {
        const BYTES: usize = 4;

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f")]
        #[inline]
        unsafe fn load16(p: *const f32) -> __m512 {
            // SAFETY: the caller guarantees 16 readable floats at `p`; `loadu` has no alignment
            // requirement.
            unsafe { _mm512_loadu_ps(p) }
        }

        fn widen_into(values: &[f32], out: &mut [f32]) {
            out.copy_from_slice(values);
        }

        fn widen(values: &[f32]) -> Cow<'_, [f32]> {
            Cow::Borrowed(values)
        }
    }

    /// f16 bits: `vcvtph2ps` (AVX-512F) widens 16 of them in a register.
    impl Row for u16 {
        const BYTES: usize = 2;

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f")]
        #[inline]
        unsafe fn load16(p: *const u16) -> __m512 {
            // SAFETY: the caller guarantees 16 readable u16 (32 bytes) at `p`; `loadu` has no
            // alignment requirement.
            unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p.cast::<__m256i>())) }
        }

        fn widen_into(values: &[u16], out: &mut [f32]) {
            values.reinterpret_cast::<half::f16>().convert_to_f32_slice(out);
        }
    }

    /// bf16: zero-extend each 16-bit value to 32 bits and shift it into the upper half.
    impl Row for half::bf16 {
        const BYTES: usize = 2;

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f")]
        #[inline]
        unsafe fn load16(p: *const half::bf16) -> __m512 {
            // SAFETY: the caller guarantees 16 readable bf16 (32 bytes) at `p`; `loadu` has no
            // alignment requirement.
            unsafe {
                let wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(p.cast::<__m256i>()));
                _mm512_castsi512_ps(_mm512_slli_epi32::<16>(wide))
            }
        }

        fn widen_into(values: &[half::bf16], out: &mut [f32]) {
            values.convert_to_f32_slice(out);
        }

        fn as_bf16(values: &[half::bf16]) -> Option<&[half::bf16]> {
            Some(values)
        }
    }

    /// Unsigned 8-bit codes (per-dimension scalar quantisation), as their values 0..=255.
    impl Row for u8 {
        const BYTES: usize = 1;
        const SIGNED_CODE: Option<bool> = Some(false);

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f")]
        #[inline]
        unsafe fn load16(p: *const u8) -> __m512 {
            // SAFETY: the caller guarantees 16 readable bytes at `p`; `loadu` has no alignment
            // requirement.
            unsafe { _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(p.cast::<__m128i>()))) }
        }

        fn widen_into(values: &[u8], out: &mut [f32]) {
            out.iter_mut().zip(values).for_each(|(o, &c)| *o = f32::from(c));
        }
    }

    /// Signed 8-bit codes (per-vector symmetric quantisation), as their values -127..=127.
    impl Row for i8 {
        const BYTES: usize = 1;
        const SIGNED_CODE: Option<bool> = Some(true);

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f")]
        #[inline]
        unsafe fn load16(p: *const i8) -> __m512 {
            // SAFETY: the caller guarantees 16 readable bytes at `p`; `loadu` has no alignment
            // requirement.
            unsafe { _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p.cast::<__m128i>()))) }
        }

        fn widen_into(values: &[i8], out: &mut [f32]) {
            out.iter_mut().zip(values).for_each(|(o, &c)| *o = f32::from(c));
        }
    }
}

/// AVX-512 micro-kernels with explicit 512-bit intrinsics (LLVM prefers 256-bit vectors even
/// with AVX-512 enabled, and then spills the 4 × 4 tile's accumulators).
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{LANES, Row, TQ, TR};

    /// A full 4 × 4 tile: 16 zmm accumulators, 8 loads per 16 FMAs.
    ///
    /// # Safety
    /// The CPU supports AVX-512F. The slice bounds the loads rely on (`q` holds 4 rows of `stride`
    /// floats and `r` 4 rows of `stride` values, `stride` a multiple of 16) are checked here, once
    /// per tile, and a violation panics; `out` is written through bounds-checked indexing.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn tile4x4<T: Row>(q: &[f32], r: &[T], stride: usize, out: &mut [f32], os: usize) {
        assert!(
            stride.is_multiple_of(LANES) && q.len() >= TQ * stride && r.len() >= TR * stride,
            "tile4x4: stride {stride}, q {} floats, r {} values",
            q.len(),
            r.len()
        );
        let (qp, rp) = (q.as_ptr(), r.as_ptr());
        let mut acc = [_mm512_setzero_ps(); 16];
        let mut at = 0;
        while at < stride {
            // SAFETY: `stride` is a multiple of 16 and `at < stride`, so `at + 16 <= stride`; the
            // loads read `[k * stride + at, k * stride + at + 16)` for k < 4, inside `r` and `q`,
            // which hold at least `4 * stride` floats (asserted above). `loadu` has no alignment
            // requirement.
            unsafe {
                let r0 = T::load16(rp.add(at));
                let r1 = T::load16(rp.add(stride + at));
                let r2 = T::load16(rp.add(2 * stride + at));
                let r3 = T::load16(rp.add(3 * stride + at));
                for i in 0..4 {
                    let qi = _mm512_loadu_ps(qp.add(i * stride + at));
                    acc[i * 4] = _mm512_fmadd_ps(qi, r0, acc[i * 4]);
                    acc[i * 4 + 1] = _mm512_fmadd_ps(qi, r1, acc[i * 4 + 1]);
                    acc[i * 4 + 2] = _mm512_fmadd_ps(qi, r2, acc[i * 4 + 2]);
                    acc[i * 4 + 3] = _mm512_fmadd_ps(qi, r3, acc[i * 4 + 3]);
                }
            }
            at += LANES;
        }
        let sums = tsum_ps(acc);
        for i in 0..4 {
            for j in 0..4 {
                out[i * os + j] = sums[4 * j + i];
            }
        }
    }

    /// The transposing reduction of a 4 × 4 tile's 16 accumulators: `out[4 * j + i]` is the sum
    /// of the lanes of `acc[4 * i + j]`. Pairs of vectors are folded together (halves, quarters,
    /// then lanes within each 128-bit quarter), 45 shuffles and adds for all 16 sums where 16
    /// horizontal reductions take 8 each. `$add` adds lanes of the element type on f32 bit
    /// patterns (shuffles only move bits); the result is those bit patterns.
    macro_rules! tsum {
        ($name:ident, $add:ident) => {
            #[inline]
            #[target_feature(enable = "avx512f")]
            fn $name(a: [__m512; 16]) -> [f32; 16] {
                let mut x = [_mm512_setzero_ps(); 8];
                for k in 0..8 {
                    let (p, q) = (a[2 * k], a[2 * k + 1]);
                    // [p0 + p2, p1 + p3, q0 + q2, q1 + q3] (128-bit quarters)
                    x[k] = $add(_mm512_shuffle_f32x4::<0x44>(p, q), _mm512_shuffle_f32x4::<0xEE>(p, q));
                }
                let mut y = [_mm512_setzero_ps(); 4];
                for m in 0..4 {
                    let (p, q) = (x[2 * m], x[2 * m + 1]);
                    // quarter l: four partial sums of a[4m + l]
                    y[m] = $add(_mm512_shuffle_f32x4::<0x88>(p, q), _mm512_shuffle_f32x4::<0xDD>(p, q));
                }
                let mut z = [_mm512_setzero_ps(); 2];
                for t in 0..2 {
                    let (p, q) = (y[2 * t], y[2 * t + 1]);
                    // quarter l: two partial sums of a[8t + l], then two of a[8t + 4 + l]
                    z[t] = $add(_mm512_shuffle_ps::<0x88>(p, q), _mm512_shuffle_ps::<0xDD>(p, q));
                }
                // quarter l: the sums of a[l], a[4 + l], a[8 + l], a[12 + l]
                let w = $add(_mm512_shuffle_ps::<0x88>(z[0], z[1]), _mm512_shuffle_ps::<0xDD>(z[0], z[1]));
                let mut out = [0.0f32; 16];
                // SAFETY: `out` holds 16 floats, the 64 bytes an unaligned store writes.
                unsafe { _mm512_storeu_ps(out.as_mut_ptr(), w) };
                out
            }
        };
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn add_f32(a: __m512, b: __m512) -> __m512 {
        _mm512_add_ps(a, b)
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn add_i32(a: __m512, b: __m512) -> __m512 {
        _mm512_castsi512_ps(_mm512_add_epi32(_mm512_castps_si512(a), _mm512_castps_si512(b)))
    }

    tsum!(tsum_ps, add_f32);
    tsum!(tsum_bits_i32, add_i32);

    /// [`tsum_ps`] for i32 accumulators.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn tsum_epi32(acc: [__m512i; 16]) -> [i32; 16] {
        let mut a = [_mm512_setzero_ps(); 16];
        for (a, v) in a.iter_mut().zip(acc) {
            *a = _mm512_castsi512_ps(v);
        }
        tsum_bits_i32(a).map(|x| x.to_bits() as i32)
    }

    /// [`tsum_ps`] and [`tsum_epi32`] for tests: the sums of 16 vectors given as arrays (None
    /// without AVX-512F).
    #[cfg(test)]
    pub fn tsum_for_test(acc: [[f32; 16]; 16]) -> Option<([f32; 16], [i32; 16])> {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            return None;
        }
        // SAFETY: the CPU supports AVX-512F (checked above); each load reads one 16-element array.
        unsafe {
            let fv = acc.map(|a| _mm512_loadu_ps(a.as_ptr()));
            let iv = acc.map(|a| _mm512_loadu_si512(a.map(|x| x as i32).as_ptr().cast()));
            Some((tsum_ps(fv), tsum_epi32(iv)))
        }
    }

    /// One query against 4 rows (batch 1: bandwidth-bound, 4 independent chains).
    ///
    /// # Safety
    /// The CPU supports AVX-512F. As [`tile4x4`] with one query row: the bounds are checked here,
    /// once per tile.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn tile1x4<T: Row>(q: &[f32], r: &[T], stride: usize, out: &mut [f32]) {
        assert!(
            stride.is_multiple_of(LANES) && q.len() >= stride && r.len() >= TR * stride,
            "tile1x4: stride {stride}, q {} floats, r {} values",
            q.len(),
            r.len()
        );
        let (qp, rp) = (q.as_ptr(), r.as_ptr());
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut at = 0;
        while at < stride {
            // SAFETY: `at + 16 <= stride` (stride a multiple of 16, `at < stride`); `q` holds
            // `stride` floats and `r` `4 * stride` (asserted above), so every load is in bounds.
            unsafe {
                let qv = _mm512_loadu_ps(qp.add(at));
                for (j, a) in acc.iter_mut().enumerate() {
                    *a = _mm512_fmadd_ps(qv, T::load16(rp.add(j * stride + at)), *a);
                }
            }
            at += LANES;
        }
        for j in 0..4 {
            out[j] = _mm512_reduce_add_ps(acc[j]);
        }
    }

    /// `R` rows from `rows[j * stride..]` against the int8 query: `R` i32 accumulators of
    /// `vpdpbusd` (u8 row bytes × i8 query bytes, 4 products summed per lane), 64 bytes per step,
    /// the last partial step masked. `flip` XORs each row byte with 0x80 (i8 `c` read as `c + 128`).
    ///
    /// # Safety
    /// The CPU supports AVX-512F, BW and VNNI. `q` holds `stride` bytes and `rows` holds
    /// `(j + R) * stride` bytes (checked by the caller, [`dots`], before the loop).
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn dots_block<const R: usize>(
        q: &[i8],
        rows: &[u8],
        j: usize,
        stride: usize,
        flip: bool,
    ) -> [i32; R] {
        let full = stride / 64 * 64;
        let tail = stride - full;
        let flipv = _mm512_set1_epi8(if flip { i8::MIN } else { 0 });
        let (qp, rp) = (q.as_ptr(), rows.as_ptr());
        let mut acc = [_mm512_setzero_si512(); R];
        let mut at = 0;
        while at < full {
            // SAFETY: `at + 64 <= full <= stride`: the query load reads `q[at..at + 64]` and each
            // row load `rows[(j + r) * stride + at..][..64]`, inside the bounds the caller
            // checked; `loadu` has no alignment requirement.
            unsafe {
                let qv = _mm512_loadu_si512(qp.add(at).cast());
                for (r, a) in acc.iter_mut().enumerate() {
                    let rv = _mm512_loadu_si512(rp.add((j + r) * stride + at).cast());
                    *a = _mm512_dpbusd_epi32(*a, _mm512_xor_si512(rv, flipv), qv);
                }
            }
            at += 64;
        }
        if tail > 0 {
            let mask: __mmask64 = (1u64 << tail) - 1;
            // SAFETY: masked loads read only the `tail` bytes `[at, stride)` of the query and of
            // each row, inside the checked bounds; masked-off query bytes are zero, so the
            // masked-off row bytes (0x80 after the flip) add nothing.
            unsafe {
                let qv = _mm512_maskz_loadu_epi8(mask, qp.add(at));
                for (r, a) in acc.iter_mut().enumerate() {
                    let rv = _mm512_maskz_loadu_epi8(mask, rp.add((j + r) * stride + at).cast());
                    *a = _mm512_dpbusd_epi32(*a, _mm512_xor_si512(rv, flipv), qv);
                }
            }
        }
        acc.map(|a| _mm512_reduce_add_epi32(a))
    }

    /// The walk of [`dots`] and [`bf16_rows`]: `nq` queries (`$q`, `stride` each) against `nr`
    /// rows into `$out[i * nr + j]`, 4 queries × 4 rows by `$tile` (queries `$tq`, the 4 from
    /// query i on; rows from `$tj`; result `[4 * r + a]` for query i + a, row j + r), the rows a
    /// tile row leaves over and the queries left over one query (`$bq`) against 4 rows (`$b4`,
    /// from row `$bj`) or one (`$b1`).
    macro_rules! dot_tiles {
        ($q:expr, $nq:expr, $nr:expr, $stride:expr, $out:expr,
         |$tq:ident, $tj:ident| $tile:expr,
         |$bq:ident, $bj:ident| $b4:expr, $b1:expr) => {{
            let (q, nq, nr, stride, out) = ($q, $nq, $nr, $stride, $out);
            let mut i = 0;
            while i + TQ <= nq {
                let $tq = &q[i * stride..(i + TQ) * stride];
                let mut j = 0;
                while j + TR <= nr {
                    let $tj = j;
                    let t = $tile;
                    for a in 0..TQ {
                        for r in 0..TR {
                            out[(i + a) * nr + j + r] = t[4 * r + a];
                        }
                    }
                    j += TR;
                }
                for a in 0..TQ {
                    let $bq = &q[(i + a) * stride..(i + a + 1) * stride];
                    for $bj in j..nr {
                        out[(i + a) * nr + $bj] = $b1[0];
                    }
                }
                i += TQ;
            }
            while i < nq {
                let $bq = &q[i * stride..(i + 1) * stride];
                let o = &mut out[i * nr..(i + 1) * nr];
                let mut $bj = 0;
                while $bj + TR <= nr {
                    o[$bj..$bj + TR].copy_from_slice(&$b4);
                    $bj += TR;
                }
                while $bj < nr {
                    o[$bj] = $b1[0];
                    $bj += 1;
                }
                i += 1;
            }
        }};
    }

    /// A 4 × 4 tile of integer dots: queries `q[i * stride..]` (i < 4) against rows `j..j + 4`,
    /// 16 `vpdpbusd` accumulators, each row and query vector loaded once per 64-byte step and
    /// used 4 times. `out[4 * r + i]` is query i against row j + r. `FLIP`: signed codes, each
    /// byte XORed with 0x80 (read as `c + 128`).
    ///
    /// # Safety
    /// The CPU supports AVX-512F, BW and VNNI. `q` holds `4 * stride` bytes and `rows`
    /// `(j + 4) * stride` (checked by the caller, [`dots`], before the loop).
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn codes_tile<const FLIP: bool>(q: &[i8], rows: &[u8], j: usize, stride: usize) -> [i32; 16] {
        let full = stride / 64 * 64;
        let tail = stride - full;
        let flipv = _mm512_set1_epi8(i8::MIN);
        // Unsigned codes as they are; signed ones + 128 (the XOR only where they are signed).
        let code = |v: __m512i| if FLIP { _mm512_xor_si512(v, flipv) } else { v };
        let (qp, rp) = (q.as_ptr(), rows.as_ptr());
        let mut acc = [_mm512_setzero_si512(); 16];
        let mut at = 0;
        while at < full {
            // SAFETY: `at + 64 <= full <= stride`: query i reads `q[i * stride + at..][..64]` and
            // row r `rows[(j + r) * stride + at..][..64]`, inside the bounds the caller checked.
            unsafe {
                let mut rv = [_mm512_setzero_si512(); 4];
                for (r, v) in rv.iter_mut().enumerate() {
                    *v = code(_mm512_loadu_si512(rp.add((j + r) * stride + at).cast()));
                }
                for i in 0..4 {
                    let qv = _mm512_loadu_si512(qp.add(i * stride + at).cast());
                    for r in 0..4 {
                        acc[4 * i + r] = _mm512_dpbusd_epi32(acc[4 * i + r], rv[r], qv);
                    }
                }
            }
            at += 64;
        }
        if tail > 0 {
            let mask: __mmask64 = (1u64 << tail) - 1;
            // SAFETY: masked loads read only the `tail` bytes `[at, stride)` of each query and
            // row, inside the checked bounds; masked-off query bytes are zero and add nothing.
            unsafe {
                let mut rv = [_mm512_setzero_si512(); 4];
                for (r, v) in rv.iter_mut().enumerate() {
                    *v = code(_mm512_maskz_loadu_epi8(mask, rp.add((j + r) * stride + at).cast()));
                }
                for i in 0..4 {
                    let qv = _mm512_maskz_loadu_epi8(mask, qp.add(i * stride + at));
                    for r in 0..4 {
                        acc[4 * i + r] = _mm512_dpbusd_epi32(acc[4 * i + r], rv[r], qv);
                    }
                }
            }
        }
        tsum_epi32(acc)
    }

    /// [`super::code_dots`]' kernel: 4 queries × 4 rows at a time ([`codes_tile`]); the rows
    /// left over, and the queries left over, one query against 4 rows and then single rows.
    ///
    /// # Safety
    /// The CPU supports AVX-512F, BW and VNNI. The bounds the loads rely on (`q` holds
    /// `nq * stride` bytes, `rows` `nr * stride`, `out` `nq * nr`) are checked here, in release
    /// builds too.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn dots(
        q: &[i8],
        nq: usize,
        rows: &[u8],
        nr: usize,
        stride: usize,
        flip: bool,
        out: &mut [i32],
    ) {
        assert!(
            q.len() >= nq * stride && rows.len() >= nr * stride && out.len() >= nq * nr,
            "dots: stride {stride}, q {} bytes for {nq}, rows {} bytes for {nr}",
            q.len(),
            rows.len()
        );
        // SAFETY (every call below): the CPU supports AVX-512F, BW and VNNI (this function's
        // contract); the 4 queries `qs` / the query `qi` are slices of `q` and rows j..j + 4 (or
        // row j) lie inside `rows` (bounds checked above), as the kernels require.
        dot_tiles!(
            q,
            nq,
            nr,
            stride,
            out,
            |qs, j| unsafe {
                if flip {
                    codes_tile::<true>(qs, rows, j, stride)
                } else {
                    codes_tile::<false>(qs, rows, j, stride)
                }
            },
            |qi, j| unsafe { dots_block::<TR>(qi, rows, j, stride, flip) },
            unsafe { dots_block::<1>(qi, rows, j, stride, flip) }
        )
    }

    /// `R` bf16 rows from row `j` against the bf16 query: `R` f32 accumulators of `vdpbf16ps`
    /// (pairs of bf16 products added into each f32 lane), 32 values per step, the last 16 (where
    /// the stride is not a multiple of 32) masked.
    ///
    /// # Safety
    /// The CPU supports AVX-512F, BW and BF16. `q` holds `stride` values and `rows`
    /// `(j + R) * stride` (checked by the caller, [`bf16_rows`], before the loop).
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn bf16_block<const R: usize>(
        q: &[half::bf16],
        rows: &[half::bf16],
        j: usize,
        stride: usize,
    ) -> [f32; R] {
        let full = stride / 32 * 32;
        let (qp, rp) = (q.as_ptr().cast::<u16>(), rows.as_ptr().cast::<u16>());
        let mut acc = [_mm512_setzero_ps(); R];
        let mut at = 0;
        while at < full {
            // SAFETY: `at + 32 <= full <= stride`: the loads read 32 values of the query and of
            // each row, inside the bounds the caller checked; `loadu` has no alignment
            // requirement. A bf16 vector is 32 u16 bit patterns, as loaded.
            unsafe {
                let qv: __m512bh = std::mem::transmute(_mm512_loadu_si512(qp.add(at).cast()));
                for (r, a) in acc.iter_mut().enumerate() {
                    let rv: __m512bh =
                        std::mem::transmute(_mm512_loadu_si512(rp.add((j + r) * stride + at).cast()));
                    *a = _mm512_dpbf16_ps(*a, rv, qv);
                }
            }
            at += 32;
        }
        if at < stride {
            // The remaining 16 values (stride is a multiple of 16).
            let mask: __mmask32 = 0xFFFF;
            // SAFETY: masked loads read only the 16 values `[at, stride)` of the query and of
            // each row, inside the checked bounds; masked-off lanes are zero and add nothing.
            unsafe {
                let qv: __m512bh = std::mem::transmute(_mm512_maskz_loadu_epi16(mask, qp.add(at).cast()));
                for (r, a) in acc.iter_mut().enumerate() {
                    let rv: __m512bh = std::mem::transmute(_mm512_maskz_loadu_epi16(
                        mask,
                        rp.add((j + r) * stride + at).cast(),
                    ));
                    *a = _mm512_dpbf16_ps(*a, rv, qv);
                }
            }
        }
        acc.map(|a| _mm512_reduce_add_ps(a))
    }

    /// A 4 × 4 tile of bf16 dots: queries `q[i * stride..]` (i < 4) against rows `j..j + 4`, 16
    /// `vdpbf16ps` accumulators, each vector loaded once per 32-value step and used 4 times.
    /// `out[4 * r + i]` is query i against row j + r.
    ///
    /// # Safety
    /// The CPU supports AVX-512F, BW and BF16. `q` holds `4 * stride` values and `rows`
    /// `(j + 4) * stride` (checked by the caller, [`bf16_rows`], before the loop).
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn bf16_tile(q: &[half::bf16], rows: &[half::bf16], j: usize, stride: usize) -> [f32; 16] {
        let full = stride / 32 * 32;
        let (qp, rp) = (q.as_ptr().cast::<u16>(), rows.as_ptr().cast::<u16>());
        let mut acc = [_mm512_setzero_ps(); 16];
        let mut at = 0;
        // The last step masked to 16 values where the stride is not a multiple of 32.
        while at < stride {
            let mask: __mmask32 = if at < full { u32::MAX } else { 0xFFFF };
            // SAFETY: `at < stride` and either `at + 32 <= full` or the mask reads only the 16
            // values `[at, stride)` (stride a multiple of 16): query i reads inside
            // `q[i * stride..(i + 1) * stride]`, row r inside its row, within the bounds the
            // caller checked. A bf16 vector is 32 u16 bit patterns, as loaded; masked-off lanes
            // are zero and add nothing.
            unsafe {
                let load = |r: usize| _mm512_maskz_loadu_epi16(mask, rp.add((j + r) * stride + at).cast());
                let rv: [__m512bh; 4] = [
                    std::mem::transmute::<__m512i, __m512bh>(load(0)),
                    std::mem::transmute::<__m512i, __m512bh>(load(1)),
                    std::mem::transmute::<__m512i, __m512bh>(load(2)),
                    std::mem::transmute::<__m512i, __m512bh>(load(3)),
                ];
                for i in 0..4 {
                    let qv = std::mem::transmute::<__m512i, __m512bh>(_mm512_maskz_loadu_epi16(
                        mask,
                        qp.add(i * stride + at).cast(),
                    ));
                    for r in 0..4 {
                        acc[4 * i + r] = _mm512_dpbf16_ps(acc[4 * i + r], rv[r], qv);
                    }
                }
            }
            at += 32;
        }
        tsum_ps(acc)
    }

    /// [`super::bf16_dots`]' kernel: 4 queries × 4 rows at a time ([`bf16_tile`]); the rows and
    /// queries left over, one query against 4 rows and then single rows.
    ///
    /// # Safety
    /// The CPU supports AVX-512F, BW and BF16. The bounds the loads rely on (`q` holds
    /// `nq * stride` values, `rows` `nr * stride`, `out` `nq * nr`) are checked here, in release
    /// builds too.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub unsafe fn bf16_rows(
        q: &[half::bf16],
        nq: usize,
        rows: &[half::bf16],
        nr: usize,
        stride: usize,
        out: &mut [f32],
    ) {
        assert!(
            q.len() >= nq * stride && rows.len() >= nr * stride && out.len() >= nq * nr,
            "bf16_rows: stride {stride}, q {} values for {nq}, rows {} values for {nr}",
            q.len(),
            rows.len()
        );
        // SAFETY (every call below): the CPU supports AVX-512F, BW and BF16 (this function's
        // contract); the 4 queries `qs` / the query `qi` are slices of `q` and rows j..j + 4 (or
        // row j) lie inside `rows` (bounds checked above), as the kernels require.
        dot_tiles!(
            q,
            nq,
            nr,
            stride,
            out,
            |qs, j| unsafe { bf16_tile(qs, rows, j, stride) },
            |qi, j| unsafe { bf16_block::<TR>(qi, rows, j, stride) },
            unsafe { bf16_block::<1>(qi, rows, j, stride) }
        )
    }

    /// 12 independent `vdpbf16ps` chains in registers, `iters` times: the core's bf16
    /// dot-product peak (64 FLOPs per instruction: 32 products, 32 additions).
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub fn bf16_probe(iters: usize) -> f32 {
        let b: __m512bh = _mm512_cvtne2ps_pbh(
            _mm512_set1_ps(std::hint::black_box(1e-3)),
            _mm512_set1_ps(std::hint::black_box(1e-3)),
        );
        let mut acc = [_mm512_setzero_ps(); 12];
        for _ in 0..iters {
            for a in acc.iter_mut() {
                *a = _mm512_dpbf16_ps(*a, b, b);
            }
        }
        acc.iter().map(|a| _mm512_reduce_add_ps(*a)).sum()
    }

    /// 12 independent `vpdpbusd` chains in registers, `iters` times: the core's int8
    /// dot-product peak (128 integer ops per instruction: 64 products, 64 additions).
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub fn vnni_probe(iters: usize) -> i32 {
        let b = _mm512_set1_epi8(std::hint::black_box(1));
        let mut acc = [_mm512_setzero_si512(); 12];
        for _ in 0..iters {
            for a in acc.iter_mut() {
                *a = _mm512_dpbusd_epi32(*a, b, b);
            }
        }
        acc.iter().map(|a| _mm512_reduce_add_epi32(*a)).fold(0, i32::wrapping_add)
    }

    /// 12 independent FMA chains in registers, `iters` times: the core's FMA peak.
    #[target_feature(enable = "avx512f")]
    pub fn probe(iters: usize) -> f32 {
        let b = _mm512_set1_ps(std::hint::black_box(0.999_999_9));
        let c = _mm512_set1_ps(std::hint::black_box(1e-7));
        let mut acc = [_mm512_setzero_ps(); 12];
        for _ in 0..iters {
            for a in acc.iter_mut() {
                *a = _mm512_fmadd_ps(*a, b, c);
            }
        }
        acc.iter().map(|a| _mm512_reduce_add_ps(*a)).sum()
    }

    /// The kernel over rows of `T`: 4 × 4 and 1 × 4 tiles in AVX-512; edge tiles (fewer than 4
    /// rows) run the portable tile on their rows widened to f32.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub fn scores<T: Row>(queries: &[f32], nq: usize, rows: &[T], nr: usize, stride: usize, out: &mut [f32]) {
        walk_tiles!(queries, nq, rows, nr, stride, out, |tq, tr, q, r, o| {
            if tq == TQ && tr == TR {
                // SAFETY: this function is compiled with AVX-512F and only called after the CPU
                // was checked for it; tile4x4 checks its slice bounds itself.
                unsafe { tile4x4(q, r, stride, o, nr) }
            } else if tr == TR {
                for i in 0..tq {
                    // SAFETY: AVX-512F as above; tile1x4 checks its slice bounds itself.
                    unsafe { tile1x4(&q[i * stride..], r, stride, &mut o[i * nr..]) }
                }
            } else {
                let wide = T::widen(&r[..tr * stride]);
                super::tile_dyn::<super::Fused>(tq, tr, q, &wide, stride, o, nr);
            }
        })
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn scores_avx2(queries: &[f32], nq: usize, rows: &[f32], nr: usize, stride: usize, out: &mut [f32]) {
    scores_impl::<Fused>(queries, nq, rows, nr, stride, out)
}

/// `out[q * nr + j] = <queries[q], rows[j]>` for `nq` queries and `nr` rows of `stride` floats.
#[allow(unsafe_code)]
pub fn scores(isa: Isa, queries: &[f32], nq: usize, rows: &[f32], nr: usize, stride: usize, out: &mut [f32]) {
    assert!(stride.is_multiple_of(LANES), "stride is a multiple of LANES");
    assert!(queries.len() >= nq * stride && rows.len() >= nr * stride && out.len() >= nq * nr);
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 if std::arch::is_x86_feature_detected!("avx512f") => {
            // SAFETY: the CPU supports AVX-512F (checked just above; AVX-512F implies AVX2 and
            // FMA on every x86-64 CPU that has it).
            unsafe { avx512::scores(queries, nq, rows, nr, stride, out) }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") =>
        {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above).
            unsafe { scores_avx2(queries, nq, rows, nr, stride, out) }
        }
        _ => scores_impl::<Unfused>(queries, nq, rows, nr, stride, out),
    }
}

/// Can [`code_dots`] run on this CPU with `isa` (AVX-512 VNNI and BW)?
pub fn vnni(isa: Isa) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        direct(isa)
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = isa;
        false
    }
}

/// Integer dot products of `nq` int8 queries with `nr` rows of 8-bit codes (`stride` each):
/// `out[i * nr + j] = Σ_d q_i[d] · c_jd`, by AVX-512 VNNI `vpdpbusd` (64 products per instruction,
/// 4 queries × 4 rows per tile; signed codes are scored as `c + 128` and each query's sum × 128
/// taken off). None when the CPU lacks VNNI ([`vnni`]) or `T` is not an 8-bit code.
#[allow(unsafe_code)]
pub fn code_dots<T: Row>(
    isa: Isa,
    q: &[i8],
    nq: usize,
    rows: &[T],
    nr: usize,
    stride: usize,
    out: &mut [i32],
) -> Option<()> {
    let signed = T::SIGNED_CODE?;
    assert!(stride.is_multiple_of(LANES), "stride is a multiple of LANES");
    assert!(q.len() >= nq * stride && rows.len() >= nr * stride && out.len() >= nq * nr);
    assert_eq!(std::mem::size_of::<T>(), 1, "8-bit codes");
    if !vnni(isa) {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: T is one byte (asserted above: u8 or i8, any bit pattern a valid u8), so the
        // rows are `rows.len()` readable bytes.
        let bytes = unsafe { std::slice::from_raw_parts(rows.as_ptr().cast::<u8>(), rows.len()) };
        // SAFETY: the CPU supports AVX-512F, BW and VNNI (`vnni` checked it); `dots` checks
        // its slice bounds itself.
        unsafe { avx512::dots(q, nq, bytes, nr, stride, signed, out) };
        if signed {
            for (qi, o) in q.chunks_exact(stride).zip(out.chunks_exact_mut(nr)).take(nq) {
                let qsum: i32 = qi.iter().map(|&x| i32::from(x)).sum();
                o.iter_mut().for_each(|x| *x -= 128 * qsum);
            }
        }
        Some(())
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (signed, q, rows, nr, stride, out);
        None
    }
}

/// Can [`bf16_dots`] run on this CPU with `isa` (AVX-512 BF16 and BW)?
pub fn bf16_dot(isa: Isa) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        direct(isa)
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = isa;
        false
    }
}

/// Dot products of `nq` bf16 queries with `nr` bf16 rows (`stride` each), f32 accumulation,
/// `out[i * nr + j]`: AVX-512 BF16 `vdpbf16ps`, 32 products per instruction, 4 queries × 4 rows
/// per tile. None when the CPU lacks it ([`bf16_dot`]) or the rows are not bf16.
#[allow(unsafe_code)]
pub fn bf16_dots<T: Row>(
    isa: Isa,
    q: &[half::bf16],
    nq: usize,
    rows: &[T],
    nr: usize,
    stride: usize,
    out: &mut [f32],
) -> Option<()> {
    let rows = T::as_bf16(rows)?;
    assert!(stride.is_multiple_of(LANES), "stride is a multiple of LANES");
    if !bf16_dot(isa) {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: the CPU supports AVX-512F, BW and BF16 (`bf16_dot` checked it); `bf16_rows`
        // checks its slice bounds itself.
        unsafe { avx512::bf16_rows(q, nq, rows, nr, stride, out) };
        Some(())
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (q, nq, rows, nr, out);
        None
    }
}

/// Does [`scores_rows`] compute on compressed rows directly with `isa` on this CPU? (AVX-512F:
/// widening in registers. Elsewhere blocks of rows are widened to f32 first.)
pub fn direct(isa: Isa) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        isa == Isa::Avx512 && std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = isa;
        false
    }
}

/// [`scores`] against rows stored as `T` (f16/bf16 bits, u8/i8 codes), computed on them directly
/// where [`direct`] (rows are read at their stored width and widened in registers); elsewhere
/// the rows are widened to f32 first.
#[allow(unsafe_code)]
pub fn scores_rows<T: Row>(
    isa: Isa,
    queries: &[f32],
    nq: usize,
    rows: &[T],
    nr: usize,
    stride: usize,
    out: &mut [f32],
) {
    assert!(stride.is_multiple_of(LANES), "stride is a multiple of LANES");
    assert!(queries.len() >= nq * stride && rows.len() >= nr * stride && out.len() >= nq * nr);
    #[cfg(target_arch = "x86_64")]
    if direct(isa) {
        // SAFETY: the CPU supports AVX-512F (`direct` checked it; AVX-512F implies AVX2 and FMA).
        unsafe { avx512::scores(queries, nq, rows, nr, stride, out) };
        return;
    }
    scores(isa, queries, nq, &T::widen(&rows[..nr * stride]), nr, stride, out)
}

#[inline(always)]
fn probe_impl<M: Madd>(iters: usize) -> f32 {
    // 12 independent 16-lane FMA chains: enough to cover FMA latency × units.
    let mut acc = [[0.0f32; LANES]; 12];
    let b = std::hint::black_box([0.999_999_9f32; LANES]);
    let c = std::hint::black_box([1e-7f32; LANES]);
    for _ in 0..iters {
        for a in acc.iter_mut() {
            for l in 0..LANES {
                a[l] = M::madd(a[l], b[l], c[l]);
            }
        }
    }
    acc.iter().map(|a| a.iter().sum::<f32>()).sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn probe_avx2(iters: usize) -> f32 {
    probe_impl::<Fused>(iters)
}

/// FLOPs per [`fma_probe`] iteration.
pub const PROBE_FLOPS_PER_ITER: usize = 12 * LANES * 2;

/// A register-only FMA loop (no memory traffic) on `isa`: with [`PROBE_FLOPS_PER_ITER`] it
/// measures the core's practical FMA peak, the yardstick of the batched kernel's GFLOP/s.
#[allow(unsafe_code)]
pub fn fma_probe(isa: Isa, iters: usize) -> f32 {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 if std::arch::is_x86_feature_detected!("avx512f") => {
            // SAFETY: the CPU supports AVX-512F (checked just above).
            unsafe { avx512::probe(iters) }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") =>
        {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above).
            unsafe { probe_avx2(iters) }
        }
        _ => probe_impl::<Unfused>(iters),
    }
}

/// Operations (multiplies and adds) per [`dot_probe`] iteration: 12 instructions of 32 bf16
/// products (`vdpbf16ps`) or 64 int8 products (`vpdpbusd`), each product with its addition.
pub fn dot_probe_ops_per_iter(kind: DotKind) -> usize {
    match kind {
        DotKind::Bf16 => 12 * 32 * 2,
        DotKind::Int8 => 12 * 64 * 2,
    }
}

/// The compressed dot-product instructions the kernels use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DotKind {
    /// AVX-512 BF16 `vdpbf16ps`.
    Bf16,
    /// AVX-512 VNNI `vpdpbusd`.
    Int8,
}

/// A register-only loop of `kind`'s dot-product instruction: with [`dot_probe_ops_per_iter`] it
/// measures the core's practical peak for that instruction, the yardstick of the batched bf16
/// and int8 kernels. None where the CPU lacks the instruction ([`bf16_dot`], [`vnni`]).
#[allow(unsafe_code)]
pub fn dot_probe(isa: Isa, kind: DotKind, iters: usize) -> Option<f32> {
    match kind {
        DotKind::Bf16 if bf16_dot(isa) => {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the CPU supports AVX-512F, BW and BF16 (`bf16_dot` checked it).
            return Some(unsafe { avx512::bf16_probe(iters) });
        }
        DotKind::Int8 if vnni(isa) => {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the CPU supports AVX-512F, BW and VNNI (`vnni` checked it).
            return Some(unsafe { avx512::vnni_probe(iters) } as f32);
        }
        _ => {}
    }
    let _ = iters;
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every stored row type, on every ISA and tile shape, scores what its values stand for
    /// (decoded here by hand, not by the kernel's own widening).
    fn rows_match_a_naive_dot<T: Row>(encode: impl Fn(f32) -> T, decode: impl Fn(T) -> f32) {
        let dim = 37;
        let s = stride(dim);
        let mut state = 11u64;
        let mut next = || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        };
        for (nq, nr) in [(1, 1), (1, 4), (3, 7), (4, 4), (5, 9), (9, 13)] {
            let mut q = vec![0.0; nq * s];
            let mut r = vec![encode(0.0); nr * s];
            for i in 0..nq {
                q[i * s..i * s + dim].iter_mut().for_each(|x| *x = next());
            }
            for j in 0..nr {
                r[j * s..j * s + dim].iter_mut().for_each(|x| *x = encode(next()));
            }
            for isa in [Isa::Baseline, Isa::Avx2Fma, Isa::Avx512] {
                let mut out = vec![0.0; nq * nr];
                scores_rows(isa, &q, nq, &r, nr, s, &mut out);
                for i in 0..nq {
                    for j in 0..nr {
                        let naive: f32 = (0..dim).map(|t| q[i * s + t] * decode(r[j * s + t])).sum();
                        let tol = 1e-5 * (1.0 + naive.abs());
                        assert!((out[i * nr + j] - naive).abs() < tol, "{isa:?} {nq}x{nr} ({i},{j})");
                    }
                }
            }
        }
    }

    #[test]
    fn compressed_rows_match_a_naive_dot_on_every_isa_and_tile_shape() {
        rows_match_a_naive_dot(|x| half::f16::from_f32(x).to_bits(), |b| half::f16::from_bits(b).to_f32());
        rows_match_a_naive_dot(half::bf16::from_f32, |b| f32::from_bits(u32::from(b.to_bits()) << 16));
        rows_match_a_naive_dot(|x| ((x + 0.5) * 255.0) as u8, f32::from);
        rows_match_a_naive_dot(|x| (x * 254.0) as i8, f32::from);
        rows_match_a_naive_dot(|x| x, |x| x);
    }

    #[test]
    fn vnni_code_dots_match_an_integer_dot() {
        if !vnni(Isa::detect()) {
            eprintln!("SKIPPED: code_dots needs AVX-512 VNNI; this CPU lacks it");
            return;
        }
        let mut state = 5u64;
        let mut next = || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 56) as u8
        };
        // Strides with no, one, two and three 16-byte tails after the 64-byte steps; query counts
        // with no 4 × 4 tile, one, one and a query left over, two and one left over; row counts
        // likewise.
        for dim in [16, 37, 100, 384, 390] {
            let s = stride(dim);
            for (nq, nr) in [(1, 1), (1, 9), (1, 37), (4, 4), (4, 3), (5, 9), (6, 21), (9, 13)] {
                let q: Vec<i8> = (0..nq * s).map(|_| next() as i8).map(|x| x.max(-127)).collect();
                let rows_u8: Vec<u8> = (0..nr * s).map(|_| next()).collect();
                let rows_i8: Vec<i8> = rows_u8.iter().map(|&x| (x as i8).max(-127)).collect();
                let naive = |row: &dyn Fn(usize) -> i32, i: usize, j: usize| -> i32 {
                    (0..s).map(|d| i32::from(q[i * s + d]) * row(j * s + d)).sum()
                };
                let mut out = vec![0i32; nq * nr];
                code_dots(Isa::Avx512, &q, nq, &rows_u8, nr, s, &mut out).expect("vnni");
                for (at, got) in out.iter().enumerate() {
                    let (i, j) = (at / nr, at % nr);
                    let want = naive(&|x| i32::from(rows_u8[x]), i, j);
                    assert_eq!(*got, want, "u8 dim {dim} {nq}x{nr} ({i},{j})");
                }
                code_dots(Isa::Avx512, &q, nq, &rows_i8, nr, s, &mut out).expect("vnni");
                for (at, got) in out.iter().enumerate() {
                    let (i, j) = (at / nr, at % nr);
                    let want = naive(&|x| i32::from(rows_i8[x]), i, j);
                    assert_eq!(*got, want, "i8 dim {dim} {nq}x{nr} ({i},{j})");
                }
            }
        }
        // Not codes, or not VNNI: None.
        assert!(code_dots(Isa::Avx512, &[0i8; 16], 1, &[0.0f32; 16], 1, 16, &mut [0]).is_none());
        assert!(code_dots(Isa::Baseline, &[0i8; 16], 1, &[0u8; 16], 1, 16, &mut [0]).is_none());
    }

    #[test]
    fn bf16_dots_match_a_naive_dot() {
        if !bf16_dot(Isa::detect()) {
            eprintln!("SKIPPED: bf16_dots needs AVX-512 BF16; this CPU lacks it");
            return;
        }
        let mut state = 3u64;
        let mut next = || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            half::bf16::from_f32(((state >> 33) as f32 / (1u64 << 31) as f32) - 0.5)
        };
        // Strides with and without a 16-value tail after the 32-value steps; query and row
        // counts as in the VNNI test.
        for dim in [16, 37, 100, 384] {
            let s = stride(dim);
            for (nq, nr) in [(1, 1), (1, 9), (1, 37), (4, 4), (4, 3), (5, 9), (6, 21), (9, 13)] {
                let q: Vec<half::bf16> = (0..nq * s).map(|_| next()).collect();
                let rows: Vec<half::bf16> = (0..nr * s).map(|_| next()).collect();
                // Decoded by hand: a bf16 is the upper half of an f32.
                let f = |b: half::bf16| f32::from_bits(u32::from(b.to_bits()) << 16);
                let mut out = vec![0.0f32; nq * nr];
                bf16_dots(Isa::Avx512, &q, nq, &rows, nr, s, &mut out).expect("bf16");
                for (at, got) in out.iter().enumerate() {
                    let (i, j) = (at / nr, at % nr);
                    let naive: f32 = (0..s).map(|d| f(q[i * s + d]) * f(rows[j * s + d])).sum();
                    let tol = 1e-5 * (1.0 + naive.abs());
                    assert!((got - naive).abs() < tol, "dim {dim} {nq}x{nr} ({i},{j}): {got} vs {naive}");
                }
            }
        }
        let z = [half::bf16::ZERO; 16];
        assert!(bf16_dots(Isa::Avx512, &z, 1, &[0u8; 16], 1, 16, &mut [0.0]).is_none());
        assert!(bf16_dots(Isa::Baseline, &z, 1, &z, 1, 16, &mut [0.0]).is_none());
    }

    #[test]
    fn the_transposing_reduction_sums_each_accumulator_into_its_place() {
        #[cfg(target_arch = "x86_64")]
        {
            // Accumulator t holds lanes t * 100 + l (l < 16): its sum is 1600 t + 120, distinct
            // for each t, so a misplaced or mixed sum shows.
            let acc: [[f32; 16]; 16] = std::array::from_fn(|t| std::array::from_fn(|l| (t * 100 + l) as f32));
            let Some((f, i)) = avx512::tsum_for_test(acc) else {
                eprintln!("SKIPPED: the reduction needs AVX-512F; this CPU lacks it");
                return;
            };
            for q in 0..4 {
                for r in 0..4 {
                    let want = (1600 * (4 * q + r) + 120) as f32;
                    assert_eq!(f[4 * r + q], want, "f32: query {q} row {r}");
                    assert_eq!(i[4 * r + q], want as i32, "i32: query {q} row {r}");
                }
            }
        }
    }

    #[test]
    fn dot_probes_run_where_the_instructions_exist() {
        let isa = Isa::detect();
        // 3 iterations from zero: every chain adds 3 instructions' products of the probe's
        // constants; the result is finite and positive, and None exactly without the instruction.
        match dot_probe(isa, DotKind::Bf16, 3) {
            Some(x) => assert!(bf16_dot(isa) && x.is_finite() && x > 0.0, "{x}"),
            None => assert!(!bf16_dot(isa)),
        }
        match dot_probe(isa, DotKind::Int8, 3) {
            // 12 chains × 16 lanes × 4 products of 1 · 1 per instruction, 3 iterations.
            Some(x) => assert_eq!(x, (12 * 16 * 4 * 3) as f32),
            None => assert!(!vnni(isa)),
        }
    }

    #[test]
    fn every_isa_and_tile_shape_matches_a_naive_dot() {
        let dim = 37;
        let s = stride(dim);
        let mut state = 7u64;
        let mut next = || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        };
        for (nq, nr) in [(1, 1), (3, 7), (4, 4), (5, 9), (9, 13)] {
            let mut q = vec![0.0; nq * s];
            let mut r = vec![0.0; nr * s];
            for i in 0..nq {
                q[i * s..i * s + dim].iter_mut().for_each(|x| *x = next());
            }
            for j in 0..nr {
                r[j * s..j * s + dim].iter_mut().for_each(|x| *x = next());
            }
            for isa in [Isa::Baseline, Isa::Avx2Fma, Isa::Avx512] {
                let mut out = vec![0.0; nq * nr];
                scores(isa, &q, nq, &r, nr, s, &mut out);
                for i in 0..nq {
                    for j in 0..nr {
                        let naive: f32 = (0..dim).map(|t| q[i * s + t] * r[j * s + t]).sum();
                        assert!((out[i * nr + j] - naive).abs() < 1e-5, "{isa:?} {nq}x{nr} ({i},{j})");
                    }
                }
            }
        }
    }
}
