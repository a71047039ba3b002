//! The vector helpers of the kernels and the CPU feature checks they share: the softmax's
//! branch-free exponential and its eight-lane reductions (used by both kernels' softmax), how
//! each element type reads as f32 lanes ([`Widen`]), and the scores of a few packed query rows
//! against keys stored in any of those types (the tiled kernel's decode path for f32 keys,
//! `narrow.rs` for the stored types of docs/design.md §5).
//!
//! The crate is built for the x86-64 baseline (SSE2, no FMA). Code that wants AVX2 and FMA is
//! written as functions marked `#[target_feature(enable = "avx2,fma")]` (the `avx2_fma` module
//! here, the tiled kernel's block loop), and every call to one sits behind [`has_avx2_fma`], a
//! run-time check; code that also widens f16 with F16C is marked `"avx2,fma,f16c"` (the
//! `avx2_fma_f16c` module here, `narrow.rs`) and sits behind [`has_avx2_fma_f16c`]. Without
//! the features the same loops run as compiled for the baseline.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use faer::{ColRef, ContiguousFwd, MatRef};

use super::convert::{bf16, bf16_bits_to_f32, f16, int8_code_to_f32};

/// True when the CPU runs AVX2 and FMA, the features the `#[target_feature]` functions of the
/// kernels are compiled for. x86-64 only: elsewhere those functions do not exist and the
/// portable loops always run. Cheap to call in a loop: the standard library caches the CPUID
/// answer after the first call.
#[cfg(target_arch = "x86_64")]
#[inline]
pub fn has_avx2_fma() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

/// True when the CPU runs AVX-512F besides AVX2 and FMA: the decode micro-kernels then run
/// on sixteen-lane vectors (32 of them). x86-64 only, cheap like [`has_avx2_fma`].
#[cfg(target_arch = "x86_64")]
#[inline]
pub fn has_avx512f() -> bool {
    has_avx2_fma() && std::arch::is_x86_feature_detected!("avx512f")
}

/// True when the CPU runs AVX2, FMA and F16C, the features of the kernels that read the stored
/// types (F16C widens eight f16 in one instruction). Every CPU with AVX2 has F16C, but it is
/// checked all the same. x86-64 only, cheap like [`has_avx2_fma`].
#[cfg(target_arch = "x86_64")]
#[inline]
pub fn has_avx2_fma_f16c() -> bool {
    has_avx2_fma() && std::arch::is_x86_feature_detected!("f16c")
}

/// `e^x` for `x ≤ 0` (softmax arguments after the max shift), branch-free so that loops over
/// it vectorise: `x = n·ln 2 + r` with `|r| ≤ ln 2 / 2`, `e^r` by a degree-6 polynomial
/// (relative error below 2e-7), `2^n` put straight into the exponent bits. Arguments below
/// −87 (−∞ included) give `e^−87` (about 1.6e-38), as `e^x` underflows f32 there anyway; NaN
/// gives NaN, so a NaN score reaches the output instead of becoming a weight of about 0.
#[inline]
pub fn fast_exp(x: f32) -> f32 {
    // Not `x.max(-87.0)`: `f32::max` returns −87 for a NaN. The comparison is false for a NaN,
    // which passes through (`n`, `r` and `p` are then NaN). Still one select (x86's
    // `maxps` with the operands in this order), no branch.
    let x = if x < -87.0 { -87.0 } else { x };
    let n = (x * std::f32::consts::LOG2_E).round();
    // ln 2 in two parts (Cody–Waite): n · LN2_HI is exact in f32, so the reduction loses
    // nothing even for n near −126.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // 2^n without a float-to-int cast, whose saturating semantics (NaN to 0, clamping) do not
    // vectorise: n is a small integer, so n + 127 + 1.5 · 2^23 is exact and its low mantissa
    // bits are n + 127, which the shift moves into the exponent field. The same bits as
    // `((n as i32 + 127) as u32) << 23` for every n from −126 up, and a NaN n still gives
    // a NaN `p`.
    const MANTISSA_INTEGER: f32 = 12_582_912.0;
    let scale = f32::from_bits((n + (MANTISSA_INTEGER + 127.0)).to_bits() << 23);
    p * scale
}

/// The largest value of `x`, −∞ for an empty slice, and NaN when any value is not finite,
/// with eight independent lanes so that the reduction is not one long dependency chain.
///
/// Why NaN for a non-finite score: a softmax row shifted by a NaN maximum is NaN throughout
/// (`fast_exp(NaN)` is NaN), so the poison reaches the output. Without it a NaN score would be
/// skipped (`f32::max` and the comparison below ignore NaN), and a −∞ score (from an infinite
/// query or key element, or a dot product that overflows) would become a silent weight of 0;
/// a +∞ score gives NaN in plain maths anyway (`e^(∞ − ∞)`). `v · 0` is 0 for a finite `v` and NaN otherwise:
/// summed in lanes of its own beside the maxima (a multiply and an add per value, no branch)
/// and added to the result, it leaves a finite maximum exactly as it is.
#[inline(always)]
pub fn max_of(x: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let mut poison = [0.0f32; 8];
    let chunks = x.chunks_exact(8);
    let (tail, tail_poison) = chunks
        .remainder()
        .iter()
        .fold((f32::NEG_INFINITY, 0.0f32), |(m, p), &v| {
            (m.max(v), p + v * 0.0)
        });
    for c in chunks {
        for i in 0..8 {
            lanes[i] = if c[i] > lanes[i] { c[i] } else { lanes[i] };
            poison[i] += c[i] * 0.0;
        }
    }
    lanes.iter().copied().fold(tail, f32::max) + (poison.iter().sum::<f32>() + tail_poison)
}

/// The larger of `a` and `b`, NaN when either is NaN (`f32::max` returns the other one): for
/// running maxima that must keep a poisoned block's NaN from [`max_of`].
#[inline]
pub fn max_keeping_nan(a: f32, b: f32) -> f32 {
    if a.is_nan() || b.is_nan() {
        f32::NAN
    } else {
        a.max(b)
    }
}

/// Replaces every `v` of `x` by `fast_exp(v − shift)` and returns their sum, accumulated in
/// eight lanes.
#[inline(always)]
pub fn exp_shifted_sum(x: &mut [f32], shift: f32) -> f32 {
    let mut lanes = [0.0f32; 8];
    let mut chunks = x.chunks_exact_mut(8);
    for c in &mut chunks {
        for i in 0..8 {
            c[i] = fast_exp(c[i] - shift);
            lanes[i] += c[i];
        }
    }
    let mut tail = 0.0f32;
    for v in chunks.into_remainder() {
        *v = fast_exp(*v - shift);
        tail += *v;
    }
    lanes.iter().sum::<f32>() + tail
}

/// Rows of `T` that are each contiguous, `(n_rows, width)`, any row stride: a block of keys or
/// values, in f32 or a stored type.
pub type RowsRef<'a, T> = MatRef<'a, T, usize, usize, isize, ContiguousFwd>;

/// A block of f32 keys whose rows are contiguous: `(n_keys, d)`, any row stride.
pub type KeyRows<'a> = RowsRef<'a, f32>;

/// An element type the kernels read as f32: f32 itself or a stored type of docs/design.md §5
/// (bf16 and f16 widened exactly, an int8 code as its integer before the row's scale, NaN for
/// [`INT8_NON_FINITE`](super::convert::INT8_NON_FINITE)).
pub trait Widen: Copy + Send + Sync + 'static {
    /// This element as an f32.
    fn widen(self) -> f32;

    /// The eight elements from `ptr` as f32 lanes, [`Widen::widen`] of each. Each type's
    /// function enables only the features it needs, so that it inlines into every caller
    /// compiled for those features (f32, bf16 and int8 into `avx2_fma` and `avx2_fma_f16c`,
    /// f16 into `avx2_fma_f16c` only).
    ///
    /// # Safety
    /// The CPU has the features of the caller's module; eight elements are readable at `ptr`.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load8(ptr: *const Self) -> __m256;

    /// True when a stored pattern of the type stands for a non-finite value that the plain
    /// conversion does not produce (int8's [`INT8_NON_FINITE`](super::convert::INT8_NON_FINITE)),
    /// so that [`Widen::load8`] spends instructions on each lane to mark it. The kernels check
    /// a row for the pattern once ([`Widen::any_non_finite`]) and widen rows without it by
    /// [`Widen::load8_finite`].
    const MARKS_NON_FINITE: bool = false;

    /// True when `row` holds a pattern [`Widen::load8_finite`] would read as a finite value.
    #[inline(always)]
    fn any_non_finite(row: &[Self]) -> bool {
        let _ = row;
        false
    }

    /// True when [`Widen::load16`] returns its sixteen elements as even and odd lanes
    /// instead of in order: the callers then put their f32 operands in the same order.
    const PAIRED: bool = false;

    /// Sixteen elements from `ptr` as two f32 vectors: elements `0..8` and `8..16` (two
    /// [`Widen::load8`]), or when [`Widen::PAIRED`] the even elements and the odd ones.
    ///
    /// # Safety
    /// As [`Widen::load8`], for sixteen elements.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(ptr: *const Self) -> [__m256; 2] {
        // SAFETY: the caller's contract.
        unsafe { [Self::load8(ptr), Self::load8(ptr.add(8))] }
    }

    /// [`Widen::load8`] for eight elements none of which is a pattern
    /// [`Widen::any_non_finite`] finds: the same lanes in fewer instructions.
    ///
    /// # Safety
    /// As [`Widen::load8`].
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8_finite(ptr: *const Self) -> __m256 {
        // SAFETY: the caller's contract.
        unsafe { Self::load8(ptr) }
    }
}

impl Widen for f32 {
    #[inline(always)]
    fn widen(self) -> f32 {
        self
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn load8(ptr: *const Self) -> __m256 {
        // SAFETY: the caller's contract.
        unsafe { _mm256_loadu_ps(ptr) }
    }
}

impl Widen for bf16 {
    #[inline(always)]
    fn widen(self) -> f32 {
        bf16_bits_to_f32(self.to_bits())
    }

    /// Zero-extends the eight 16-bit patterns and shifts them into the upper halves.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn load8(ptr: *const Self) -> __m256 {
        // SAFETY: the caller's contract: 16 readable bytes.
        let bits = unsafe { _mm_loadu_si128(ptr.cast()) };
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(bits)))
    }

    const PAIRED: bool = true;

    /// One 32-byte load: each 32-bit lane holds an even element in its low half and the next
    /// odd one in its high half, so a shift widens the even ones and a mask the odd ones. One
    /// shift and one logical operation where the in-order widening takes two widening
    /// shuffles and two shifts, which compete with the FMAs for the same execution ports.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn load16(ptr: *const Self) -> [__m256; 2] {
        // SAFETY: the caller's contract: 32 readable bytes.
        unsafe {
            let pairs = _mm256_loadu_si256(ptr.cast());
            let even = _mm256_slli_epi32::<16>(pairs);
            let odd = _mm256_and_si256(pairs, _mm256_set1_epi32(-65_536));
            [_mm256_castsi256_ps(even), _mm256_castsi256_ps(odd)]
        }
    }
}

impl Widen for f16 {
    #[inline(always)]
    fn widen(self) -> f32 {
        self.to_f32()
    }

    /// F16C's `vcvtph2ps`: exact, subnormals included, NaNs made quiet like `to_f32`.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,f16c")]
    #[inline]
    unsafe fn load8(ptr: *const Self) -> __m256 {
        // SAFETY: the caller's contract: 16 readable bytes.
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(ptr.cast())) }
    }
}

impl Widen for i8 {
    #[inline(always)]
    fn widen(self) -> f32 {
        int8_code_to_f32(self)
    }

    /// Sign-extends and converts the eight codes, then sets every bit of the lanes that held
    /// −128 (all ones is a NaN).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn load8(ptr: *const Self) -> __m256 {
        // SAFETY: the caller's contract: 8 readable bytes.
        let codes = _mm256_cvtepi8_epi32(unsafe { _mm_loadl_epi64(ptr.cast()) });
        let non_finite = _mm256_cmpeq_epi32(codes, _mm256_set1_epi32(i32::from(i8::MIN)));
        _mm256_or_ps(_mm256_cvtepi32_ps(codes), _mm256_castsi256_ps(non_finite))
    }

    const MARKS_NON_FINITE: bool = true;

    /// A fold, not `any`: without the early exit the comparison vectorises.
    #[inline(always)]
    fn any_non_finite(row: &[Self]) -> bool {
        row.iter().fold(false, |seen, &c| seen | (c == i8::MIN))
    }

    /// Sign-extends and converts only: the codes hold no −128.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn load8_finite(ptr: *const Self) -> __m256 {
        // SAFETY: the caller's contract: 8 readable bytes.
        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(unsafe { _mm_loadl_epi64(ptr.cast()) }))
    }
}

/// The factor each row of a block is read with: 1 for f32, bf16 and f16, the row's scale for
/// int8.
pub trait RowScales: Copy + Send + Sync {
    /// The factor of row `j`.
    fn at(self, j: usize) -> f32;
}

/// Rows read as they are (a factor of 1, which the compiler folds away).
#[derive(Clone, Copy, Debug)]
pub struct Unscaled;

impl RowScales for Unscaled {
    #[inline(always)]
    fn at(self, _: usize) -> f32 {
        1.0
    }
}

/// Row `j` is multiplied by `scales[j]` (int8 rows and their scales).
impl RowScales for ColRef<'_, f32> {
    #[inline(always)]
    fn at(self, j: usize) -> f32 {
        *self.get(j)
    }
}

/// Most packed query rows [`few_row_scores`] takes.
pub const FEW_ROWS_MAX: usize = 8;

/// Scores of a block of keys against a few packed query rows, reading each key once:
/// `out[r · n_keys + j] = scale · keys[j] · queries[r]`, with `keys: (n_keys, d)`, `queries`
/// row-major `(rows, d)` and `out: (rows, n_keys)` row-major (which is the column-major
/// `(n_keys, rows)` block the tiled kernel works on).
///
/// Why not faer: with a handful of query columns a general product packs (copies) the keys
/// before its microkernel, so decode reads the cache twice and writes it once; here every key
/// row is loaded once and dotted with all rows, which keeps decode at the speed of memory.
/// Several keys go through together when there are few rows, so there are always about eight
/// independent accumulations in flight. On x86-64 with AVX2 and FMA this runs on explicit
/// vector instructions; elsewhere on a portable loop of the same shape.
///
/// # Panics
/// If `rows` is 0 or above [`FEW_ROWS_MAX`], or the slices disagree with the shapes.
pub fn few_row_scores(
    keys: KeyRows<'_>,
    queries: &[f32],
    rows: usize,
    scale: f32,
    out: &mut [f32],
) {
    check_few_rows(keys.nrows(), keys.ncols(), queries, rows, out);
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA (checked above); the shapes are checked above.
        unsafe { avx2_fma::few_row_scores(keys, Unscaled, queries, rows, scale, out) };
        return;
    }
    portable_scores(keys, Unscaled, queries, rows, scale, out);
}

/// [`few_row_scores`] for keys in a stored type, row `j` read as `scales.at(j) · keys[j]`:
/// `out[r · n_keys + j] = scale · scales.at(j) · (keys[j] · queries[r])`. On x86-64 with AVX2,
/// FMA and F16C on explicit vector instructions, elsewhere on the portable loop.
///
/// # Panics
/// As [`few_row_scores`].
pub fn stored_row_scores<T: Widen, S: RowScales>(
    keys: RowsRef<'_, T>,
    scales: S,
    queries: &[f32],
    rows: usize,
    scale: f32,
    out: &mut [f32],
) {
    check_few_rows(keys.nrows(), keys.ncols(), queries, rows, out);
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma_f16c() {
        // SAFETY: the CPU has AVX2, FMA and F16C (checked above); the shapes are checked above.
        unsafe { avx2_fma_f16c::few_row_scores(keys, scales, queries, rows, scale, out) };
        return;
    }
    portable_scores(keys, scales, queries, rows, scale, out);
}

/// The order in which the few-row scores take the keys of a block of `n`: `J` at a time, one
/// from each of `J` equal ranges, so that `J` streams of keys are in flight (one sequential
/// stream per core does not reach the memory's bandwidth); then the leftover keys
/// `J · (n / J)..n`, one at a time.
pub(super) fn key_streams<const J: usize>(
    n: usize,
) -> (impl Iterator<Item = [usize; J]>, std::ops::Range<usize>) {
    let per = n / J;
    let groups = (0..per).map(move |i| std::array::from_fn(|s| s * per + i));
    (groups, J * per..n)
}

/// The shape checks of the few-row scores: `queries: (rows, d)`, `out: (rows, n_keys)`.
#[track_caller]
pub(super) fn check_few_rows(n_keys: usize, d: usize, queries: &[f32], rows: usize, out: &[f32]) {
    assert!(
        (1..=FEW_ROWS_MAX).contains(&rows),
        "few_row_scores takes 1 to {FEW_ROWS_MAX} rows, not {rows}"
    );
    assert_eq!(queries.len(), rows * d, "packed queries");
    assert_eq!(out.len(), rows * n_keys, "score block");
}

/// The portable path of [`few_row_scores`] and [`stored_row_scores`], same contract.
pub fn portable_scores<T: Widen, S: RowScales>(
    keys: RowsRef<'_, T>,
    scales: S,
    queries: &[f32],
    rows: usize,
    scale: f32,
    out: &mut [f32],
) {
    let (n, d) = (keys.nrows(), keys.ncols());
    for j in 0..n {
        let (key, row_scale) = (keys.row(j).as_slice(), scales.at(j));
        for r in 0..rows {
            let dot = dot_in_lanes(key, &queries[r * d..(r + 1) * d]);
            out[r * n + j] = scale * (row_scale * dot);
        }
    }
}

/// `a · b` in eight lanes (the portable path of the few-row scores), `a` widened to f32.
#[inline(always)]
fn dot_in_lanes<T: Widen>(a: &[T], b: &[f32]) -> f32 {
    let (a_chunks, a_tail) = a.as_chunks::<8>();
    let (b_chunks, b_tail) = b.as_chunks::<8>();
    let mut lanes = [0.0f32; 8];
    for (x, y) in a_chunks.iter().zip(b_chunks) {
        for i in 0..8 {
            lanes[i] += x[i].widen() * y[i];
        }
    }
    let tail: f32 = a_tail.iter().zip(b_tail).map(|(x, y)| x.widen() * y).sum();
    lanes.iter().sum::<f32>() + tail
}

/// Rows of `d` f32 values, row-major, with each whole sixteen columns reordered as
/// [`Widen::load16`] of a paired type widens keys: the eight even columns, then the eight odd
/// ones; the last `d mod 16` columns as they are.
#[cfg(target_arch = "x86_64")]
fn paired_columns(rows: &[f32], d: usize) -> Vec<f32> {
    let mut out = rows.to_vec();
    for (row, src) in out.chunks_exact_mut(d).zip(rows.chunks_exact(d)) {
        for (dst, src) in row.chunks_exact_mut(16).zip(src.chunks_exact(16)) {
            for i in 0..8 {
                dst[i] = src[2 * i];
                dst[8 + i] = src[2 * i + 1];
            }
        }
    }
    out
}

/// The explicit-vector few-row scores, written once and compiled for each feature set that
/// runs them: `$features` is the `target_feature` list of every function, and the callers
/// check it at run time.
macro_rules! few_row_kernels {
    ($features:literal) => {
        use std::arch::x86_64::*;

        use super::{RowScales, RowsRef, Widen};

        /// The few-row scores ([`super::stored_row_scores`]'s contract), shapes already
        /// checked.
        ///
        /// # Safety
        /// The CPU has the module's features; `queries` is `(rows, d)` and `out`
        /// `(rows, n_keys)`, `rows` in `1..=FEW_ROWS_MAX`.
        #[target_feature(enable = $features)]
        pub unsafe fn few_row_scores<T: Widen, S: RowScales>(
            keys: RowsRef<'_, T>,
            scales: S,
            queries: &[f32],
            rows: usize,
            scale: f32,
            out: &mut [f32],
        ) {
            // Keys widened as even and odd lanes meet query rows in the same order.
            let paired;
            let queries = if T::PAIRED {
                paired = super::paired_columns(queries, keys.ncols());
                &paired[..]
            } else {
                queries
            };
            let k = (keys, scales);
            // SAFETY (all arms): same contract as this function's.
            unsafe {
                match rows {
                    1 => scores_by::<T, S, 1, 8>(k, queries, scale, out),
                    2 => scores_by::<T, S, 2, 4>(k, queries, scale, out),
                    3 => scores_by::<T, S, 3, 3>(k, queries, scale, out),
                    4 => scores_by::<T, S, 4, 3>(k, queries, scale, out),
                    5 => scores_by::<T, S, 5, 1>(k, queries, scale, out),
                    6 => scores_by::<T, S, 6, 1>(k, queries, scale, out),
                    7 => scores_by::<T, S, 7, 1>(k, queries, scale, out),
                    _ => scores_by::<T, S, 8, 1>(k, queries, scale, out),
                }
            }
        }

        /// `R` query rows, `J` keys at a time, taken from `J` equal ranges of the block so
        /// that `J` streams of keys are in flight (one sequential stream per core does not
        /// reach the memory's bandwidth); then the leftover keys one at a time.
        ///
        /// # Safety
        /// The module's features; `queries.len() == R · d`, `out.len() == R · n_keys`.
        #[target_feature(enable = $features)]
        unsafe fn scores_by<T: Widen, S: RowScales, const R: usize, const J: usize>(
            keys: (RowsRef<'_, T>, S),
            queries: &[f32],
            scale: f32,
            out: &mut [f32],
        ) {
            let (groups, leftovers) = super::key_streams::<J>(keys.0.nrows());
            for js in groups {
                // SAFETY: every index is below n; the caller's contract covers the rest.
                unsafe { block::<T, S, R, J>(keys, js, queries, scale, out) };
            }
            for j in leftovers {
                // SAFETY: as above, for one row.
                unsafe { block::<T, S, R, 1>(keys, [j], queries, scale, out) };
            }
        }

        /// Scores of keys `js` against the `R` rows.
        ///
        /// # Safety
        /// The module's features; every key of `js` exists; `queries.len() == R · d`,
        /// `out.len() == R · n_keys`.
        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn block<T: Widen, S: RowScales, const R: usize, const J: usize>(
            (keys, scales): (RowsRef<'_, T>, S),
            js: [usize; J],
            queries: &[f32],
            scale: f32,
            out: &mut [f32],
        ) {
            let (n, d) = (keys.nrows(), keys.ncols());
            let whole = d - d % 8;
            let mut key_rows = [&[][..]; J];
            for (row, &j) in key_rows.iter_mut().zip(&js) {
                *row = keys.row(j).as_slice();
            }
            // A row with int8's non-finite code is rare: checking the rows once lets the
            // common case widen without marking each lane.
            let marked = T::MARKS_NON_FINITE && key_rows.iter().any(|row| T::any_non_finite(row));
            // SAFETY: every row has d ≥ whole elements; queries.len() == R · d.
            let acc = unsafe {
                if marked {
                    dots::<T, R, J, true>(key_rows, queries, d)
                } else {
                    dots::<T, R, J, false>(key_rows, queries, d)
                }
            };
            for jj in 0..J {
                let row_scale = scales.at(js[jj]);
                for r in 0..R {
                    let q = &queries[r * d..(r + 1) * d];
                    let tail = key_rows[jj][whole..]
                        .iter()
                        .zip(&q[whole..])
                        .fold(0.0f32, |s, (a, b)| a.widen().mul_add(*b, s));
                    out[r * n + js[jj]] = scale * (row_scale * (horizontal_sum(acc[jj][r]) + tail));
                }
            }
        }

        /// The eight-lane partial dot products of the first `d - d mod 8` values of each key
        /// row with each query row, `acc[key][row]`, keys widened by [`Widen::load8`] when
        /// `MARKED`, else by [`Widen::load8_finite`].
        ///
        /// # Safety
        /// The module's features; every row of `key_rows` has at least `d - d mod 8`
        /// values, and without `MARKED` none holds a pattern [`Widen::any_non_finite`]
        /// finds; `queries.len() == R · d`.
        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn dots<T: Widen, const R: usize, const J: usize, const MARKED: bool>(
            key_rows: [&[T]; J],
            queries: &[f32],
            d: usize,
        ) -> [[__m256; R]; J] {
            let (whole, pairs) = (d - d % 8, d - d % 16);
            let mut acc = [[_mm256_setzero_ps(); R]; J];
            // Sixteen columns at a time by `load16` when the type pairs them (bf16 without
            // marking), then eight at a time.
            let sixteens = if T::PAIRED && !MARKED { pairs } else { 0 };
            for c in (0..sixteens).step_by(16) {
                let mut kv = [[_mm256_setzero_ps(); 2]; J];
                for (v, row) in kv.iter_mut().zip(&key_rows) {
                    // SAFETY: c + 16 ≤ pairs ≤ row.len().
                    *v = unsafe { T::load16(row.as_ptr().add(c)) };
                }
                for h in 0..2 {
                    // SAFETY: c + 8 · h + 8 ≤ d, within each query row.
                    unsafe { fma_rows::<R, J>(&mut acc, kv.map(|v| v[h]), queries, d, c + 8 * h) };
                }
            }
            for c in (sixteens..whole).step_by(8) {
                let mut kv = [_mm256_setzero_ps(); J];
                for (v, row) in kv.iter_mut().zip(&key_rows) {
                    // SAFETY: c + 8 ≤ whole ≤ row.len(); MARKED as the caller's contract says.
                    *v = unsafe {
                        if MARKED {
                            T::load8(row.as_ptr().add(c))
                        } else {
                            T::load8_finite(row.as_ptr().add(c))
                        }
                    };
                }
                // SAFETY: c + 8 ≤ d.
                unsafe { fma_rows::<R, J>(&mut acc, kv, queries, d, c) };
            }
            acc
        }

        /// `acc[key][row] += keys[key] · queries[row][c..c + 8]` for eight widened columns
        /// of each key.
        ///
        /// # Safety
        /// The module's features; `c + 8 ≤ d`, `queries.len() == R · d`.
        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn fma_rows<const R: usize, const J: usize>(
            acc: &mut [[__m256; R]; J],
            kv: [__m256; J],
            queries: &[f32],
            d: usize,
            c: usize,
        ) {
            // Not `expect`: clippy does not lint inside a macro's expansion.
            #[allow(
                clippy::needless_range_loop,
                reason = "r walks the query rows and the accumulators in lockstep"
            )]
            for r in 0..R {
                // SAFETY: r · d + c + 8 ≤ R · d = queries.len().
                let qv = unsafe { _mm256_loadu_ps(queries.as_ptr().add(r * d + c)) };
                for jj in 0..J {
                    acc[jj][r] = _mm256_fmadd_ps(kv[jj], qv, acc[jj][r]);
                }
            }
        }

        /// The sum of the eight lanes of `v`.
        #[target_feature(enable = $features)]
        #[inline]
        fn horizontal_sum(v: __m256) -> f32 {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps::<1>(s, s)))
        }
    };
}

/// The few-row scores for f32 keys, on AVX2 + FMA.
#[cfg(target_arch = "x86_64")]
mod avx2_fma {
    few_row_kernels!("avx2,fma");
}

/// The few-row scores for keys in a stored type, on AVX2 + FMA + F16C.
#[cfg(target_arch = "x86_64")]
mod avx2_fma_f16c {
    few_row_kernels!("avx2,fma,f16c");
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// `count` values uniform in `[-1.7, 1.7)` (variance near 1) from an xorshift stream: a
    /// kernel's test needs no generator from the layers above it.
    pub(in crate::kernels) fn values(state: &mut u64, count: usize) -> Vec<f32> {
        (0..count)
            .map(|_| {
                *state ^= *state << 13;
                *state ^= *state >> 7;
                *state ^= *state << 17;
                let unit = (*state >> 40) as f32 / (1u64 << 24) as f32;
                1.7 * (2.0 * unit - 1.0)
            })
            .collect()
    }

    /// Both paths against an f64 dot product, at every row count, widths at the edges of the
    /// eight lanes, and a key block that is a strided view (a column block of a wider matrix).
    #[test]
    fn few_row_scores_equal_f64_dot_products() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for d in [1, 7, 8, 13, 128, 129] {
            for n in [1, 3, 17] {
                let wide = values(&mut state, n * (d + 5));
                let keys = MatRef::from_row_major_slice(&wide, n, d + 5)
                    .subcols(2, d)
                    .try_as_row_major()
                    .unwrap();
                for rows in 1..=FEW_ROWS_MAX {
                    let queries = values(&mut state, rows * d);
                    let q = &queries[..];
                    let scale = 0.37f32;
                    let expected: Vec<f64> = (0..rows * n)
                        .map(|i| {
                            let (r, j) = (i / n, i % n);
                            let key = keys.row(j).as_slice();
                            let dot: f64 = (0..d)
                                .map(|c| f64::from(key[c]) * f64::from(q[r * d + c]))
                                .sum();
                            f64::from(scale) * dot
                        })
                        .collect();
                    let mut fast = vec![0.0f32; rows * n];
                    let mut portable = vec![0.0f32; rows * n];
                    few_row_scores(keys, q, rows, scale, &mut fast);
                    portable_scores(keys, Unscaled, q, rows, scale, &mut portable);
                    for (i, want) in expected.iter().enumerate() {
                        let tol = 1e-5 * (1.0 + (d as f64).sqrt());
                        let label = format!("d {d} n {n} rows {rows} at {i}");
                        assert!(
                            (f64::from(fast[i]) - want).abs() < tol,
                            "{label}: {} vs {want}",
                            fast[i]
                        );
                        assert!(
                            (f64::from(portable[i]) - want).abs() < tol,
                            "{label}: portable {} vs {want}",
                            portable[i]
                        );
                    }
                }
            }
        }
    }

    /// The exponent bits built without a cast are those of the cast for every `n` the
    /// clamped argument reaches (and a few beyond), so `fast_exp` gives the same bits as
    /// before the change that vectorised it.
    #[test]
    fn fast_exp_scale_bits_equal_the_cast() {
        for n in -126..=200 {
            let n = n as f32;
            let cast = ((n as i32 + 127) as u32) << 23;
            let built = (n + (12_582_912.0f32 + 127.0)).to_bits() << 23;
            assert_eq!(built, cast, "n {n}");
        }
    }

    /// A non-finite value anywhere, in the eight lanes or the tail, makes the maximum NaN;
    /// finite values keep their exact maximum, and an empty slice gives −∞.
    #[test]
    fn max_of_is_nan_when_any_value_is_not_finite() {
        assert_eq!(max_of(&[]), f32::NEG_INFINITY);
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for len in 1..=20 {
            let x = values(&mut state, len);
            let exact = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(max_of(&x), exact, "len {len}");
            for at in 0..len {
                for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                    let mut y = x.clone();
                    y[at] = bad;
                    assert!(max_of(&y).is_nan(), "len {len}, {bad} at {at}");
                }
            }
        }
    }

    /// Both score paths carry a NaN or infinite query or key element into exactly the scores
    /// it takes part in (the portable path is the only one the kernels' tests cannot reach on
    /// a CPU with AVX2).
    #[test]
    fn few_row_scores_carry_non_finite_inputs() {
        let mut state = 0x51_7cc1_b727_220au64;
        let (n, d) = (11, 13);
        for rows in 1..=FEW_ROWS_MAX {
            for bad in [f32::NAN, f32::INFINITY] {
                for poisoned_key in [false, true] {
                    let mut key_data = values(&mut state, n * d);
                    let mut queries = values(&mut state, rows * d);
                    let (bad_key, bad_row) = (n / 2, rows / 2);
                    if poisoned_key {
                        key_data[bad_key * d + d - 1] = bad;
                    } else {
                        queries[bad_row * d + 3] = bad;
                    }
                    let keys = MatRef::from_row_major_slice(&key_data, n, d)
                        .try_as_row_major()
                        .unwrap();
                    let mut fast = vec![0.0f32; rows * n];
                    let mut portable = vec![0.0f32; rows * n];
                    few_row_scores(keys, &queries, rows, 0.5, &mut fast);
                    portable_scores(keys, Unscaled, &queries, rows, 0.5, &mut portable);
                    for (path, out) in [("dispatched", &fast), ("portable", &portable)] {
                        for (i, score) in out.iter().enumerate() {
                            let (r, j) = (i / n, i % n);
                            let reached = if poisoned_key {
                                j == bad_key
                            } else {
                                r == bad_row
                            };
                            assert_eq!(
                                !score.is_finite(),
                                reached,
                                "{path}: rows {rows}, {bad} in a key {poisoned_key}, score ({r}, {j}) = {score}"
                            );
                        }
                    }
                }
            }
        }
    }
}
