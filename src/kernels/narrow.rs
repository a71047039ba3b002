//! Decode over a KV cache stored in bf16, f16 or int8 (docs/design.md §5): the scores of a few
//! packed f32 query rows against stored keys, and the weighted sum `acc += p · v` over stored
//! values. Both read each stored row once and widen it in registers, eight or sixteen values
//! at a time, so no f32 copy of the cache is ever made; products and sums are f32.
//!
//! Checked at run time ([`narrow_path`] says which path runs): on x86-64 with AVX-512F and BW
//! both run sixteen lanes at a time (`narrow512.rs`); else with AVX2, FMA and F16C on the
//! eight-lane vector instructions here; elsewhere on portable loops of the same contract. AVX-512 BF16's `vdpbf16ps` is not used: it multiplies bf16 by bf16, so the f32
//! query would be rounded to bf16, and §5 keeps activations in f32.

use faer::ColRef;

use super::convert::{bf16, dequantize_int8, f16, widen_bf16, widen_f16};
use super::simd::{
    FEW_ROWS_MAX, RowScales, RowsRef, Unscaled, Widen, check_few_rows, stored_row_scores,
};
use crate::config::Dtype;

/// Keys or values of one KV head in a stored type, as the narrow kernels read them: `n` rows
/// (tokens) of `d` values, each row contiguous, any row stride (a head's columns of a cache
/// plane `(tokens, n_kv_heads · d)` have stride `n_kv_heads · d`).
#[derive(Clone, Copy, Debug)]
pub enum StoredRows<'a> {
    /// bf16 rows `(n, d)`.
    Bf16(RowsRef<'a, bf16>),
    /// f16 rows `(n, d)`.
    F16(RowsRef<'a, f16>),
    /// int8 rows: `codes: (n, d)` and `scales: (n)`, row `j` read as `codes[j] · scales[j]`
    /// with [`INT8_NON_FINITE`](super::INT8_NON_FINITE) read as NaN.
    Int8 {
        /// The quantised values.
        codes: RowsRef<'a, i8>,
        /// One scale per row (any stride: a head's column of a `(tokens, n_kv_heads)` plane).
        scales: ColRef<'a, f32>,
    },
}

impl<'a> StoredRows<'a> {
    /// The stored type.
    pub fn dtype(&self) -> Dtype {
        match self {
            StoredRows::Bf16(_) => Dtype::Bf16,
            StoredRows::F16(_) => Dtype::F16,
            StoredRows::Int8 { .. } => Dtype::Int8,
        }
    }

    /// Rows (tokens), `n`.
    pub fn nrows(&self) -> usize {
        match self {
            StoredRows::Bf16(rows) => rows.nrows(),
            StoredRows::F16(rows) => rows.nrows(),
            StoredRows::Int8 { codes, .. } => codes.nrows(),
        }
    }

    /// Values per row, `d`.
    pub fn ncols(&self) -> usize {
        match self {
            StoredRows::Bf16(rows) => rows.ncols(),
            StoredRows::F16(rows) => rows.ncols(),
            StoredRows::Int8 { codes, .. } => codes.ncols(),
        }
    }

    /// Rows `start..start + n` (with their scales).
    ///
    /// # Panics
    /// If the range is not within the rows.
    #[track_caller]
    pub fn subrows(self, start: usize, n: usize) -> Self {
        match self {
            StoredRows::Bf16(rows) => StoredRows::Bf16(rows.subrows(start, n)),
            StoredRows::F16(rows) => StoredRows::F16(rows.subrows(start, n)),
            StoredRows::Int8 { codes, scales } => StoredRows::Int8 {
                codes: codes.subrows(start, n),
                scales: scales.subrows(start, n),
            },
        }
    }
}

impl<'a> StoredRows<'a> {
    /// Columns `start..start + n` of every row (an int8 row keeps its one scale: the caller
    /// takes columns that share it).
    ///
    /// # Panics
    /// If the range is not within the columns.
    #[track_caller]
    pub fn subcols(self, start: usize, n: usize) -> Self {
        match self {
            StoredRows::Bf16(rows) => StoredRows::Bf16(rows.subcols(start, n)),
            StoredRows::F16(rows) => StoredRows::F16(rows.subcols(start, n)),
            StoredRows::Int8 { codes, scales } => StoredRows::Int8 {
                codes: codes.subcols(start, n),
                scales,
            },
        }
    }

    /// The rows widened to f32 (int8: dequantised, docs/design.md §5), into `dst`, row-major
    /// `(n, d)` with row stride `stride ≥ d`: the values the narrow kernels read.
    ///
    /// # Panics
    /// If `dst` is too short for `n` rows of stride `stride`, or `stride < d`.
    #[track_caller]
    pub fn widen_into(&self, dst: &mut [f32], stride: usize) {
        let (n, d) = (self.nrows(), self.ncols());
        assert!(stride >= d, "row stride {stride} below the width {d}");
        assert!(
            n == 0 || dst.len() >= (n - 1) * stride + d,
            "widened rows buffer"
        );
        for j in 0..n {
            let out = &mut dst[j * stride..][..d];
            match self {
                StoredRows::Bf16(rows) => widen_bf16(rows.row(j).as_slice(), out),
                StoredRows::F16(rows) => widen_f16(rows.row(j).as_slice(), out),
                StoredRows::Int8 { codes, scales } => {
                    #[cfg(target_arch = "x86_64")]
                    if super::simd::has_avx2_fma_f16c() {
                        let row = (codes.row(j).as_slice(), *scales.get(j));
                        // SAFETY: the CPU has AVX2 (checked above); `out` has the row's length.
                        unsafe { avx2::dequantize_int8(row, out) };
                        continue;
                    }
                    dequantize_int8(codes.row(j).as_slice(), *scales.get(j), out);
                }
            }
        }
    }
}

/// The code the narrow kernels run on this CPU, for the results to record: `"avx512f"`
/// (sixteen lanes, `narrow512.rs`), `"avx2+fma+f16c"` (eight lanes) or `"portable"`.
pub fn narrow_path() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if super::narrow512::available() {
            return "avx512f";
        }
        if super::simd::has_avx2_fma_f16c() {
            return "avx2+fma+f16c";
        }
    }
    "portable"
}

/// Scores of stored keys against a few packed f32 query rows, reading each key once:
/// `out[r · n + j] = scale · key_j · queries[r]`, with `key_j` row `j` of `keys` widened to
/// f32 (for int8 the code row times its scale, the scale applied once to the dot product of
/// the codes), `queries` row-major `(rows, d)` and `out` row-major `(rows, n)`, as
/// the few-row scores of f32 keys.
///
/// A NaN or infinite query element makes its row's scores non-finite, a non-finite key value
/// (int8's −128) its key's scores.
///
/// # Panics
/// If `rows` is 0 or above 8, the slices disagree with the shapes, or an int8 block has not one
/// scale per row.
pub fn narrow_scores(
    keys: StoredRows<'_>,
    queries: &[f32],
    rows: usize,
    scale: f32,
    out: &mut [f32],
) {
    match keys {
        StoredRows::Bf16(k) => scores(k, Unscaled, queries, rows, scale, out),
        StoredRows::F16(k) => scores(k, Unscaled, queries, rows, scale, out),
        StoredRows::Int8 { codes, scales } => {
            check_scales(codes.nrows(), scales);
            scores(codes, scales, queries, rows, scale, out);
        }
    }
}

/// [`narrow_scores`] for one element type: the AVX-512 path when the CPU has it, else
/// [`stored_row_scores`] (AVX2 or portable).
#[track_caller]
fn scores<T: Stored, S: RowScales>(
    keys: RowsRef<'_, T>,
    scales: S,
    queries: &[f32],
    rows: usize,
    scale: f32,
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if super::narrow512::available() {
        check_few_rows(keys.nrows(), keys.ncols(), queries, rows, out);
        // SAFETY: the CPU has AVX-512F (checked above); the shapes are checked above.
        unsafe { super::narrow512::scores(keys, scales, queries, rows, scale, out) };
        return;
    }
    stored_row_scores(keys, scales, queries, rows, scale, out);
}

/// The stored element types: [`Widen`], and on x86-64 sixteen lanes at a time too.
#[cfg(target_arch = "x86_64")]
pub trait Stored: super::narrow512::Lanes16 {}
#[cfg(target_arch = "x86_64")]
impl<T: super::narrow512::Lanes16> Stored for T {}
/// The stored element types: [`Widen`].
#[cfg(not(target_arch = "x86_64"))]
pub trait Stored: Widen {}
#[cfg(not(target_arch = "x86_64"))]
impl<T: Widen> Stored for T {}

/// The weighted sum over stored values for a few packed rows, reading each value row once:
/// `acc[r · d + c] += Σ_j weights[r · n + j] · value_j[c]`, with `value_j` row `j` of `values`
/// widened to f32 (for int8 the codes times the row's scale, the scale folded into the
/// weight), `weights` row-major `(rows, n)` and `acc` row-major `(rows, d)`: the online
/// softmax's `acc += p · V` at decode.
///
/// A non-finite value element reaches column `c` of every row, even a row whose weight for it
/// is 0 (`0 · NaN` is NaN): a caller whose rows do not all see every key passes each row its
/// visible keys only.
///
/// # Panics
/// If `rows` is 0 or above 8, the slices disagree with the shapes, or an int8 block has not one
/// scale per row.
pub fn narrow_add_values(values: StoredRows<'_>, weights: &[f32], rows: usize, acc: &mut [f32]) {
    match values {
        StoredRows::Bf16(v) => add_values(v, Unscaled, weights, rows, acc),
        StoredRows::F16(v) => add_values(v, Unscaled, weights, rows, acc),
        StoredRows::Int8 { codes, scales } => {
            check_scales(codes.nrows(), scales);
            add_values(codes, scales, weights, rows, acc);
        }
    }
}

/// [`narrow_add_values`] over f32 value rows `(n, d)`, the same kernels: decode's few-row
/// path over an f32 cache, where [`f32_values_beat_faer`] says so. They stream the rows in
/// blocks with the next block prefetched, which on the 2-core Xeon (AVX-512) read the values
/// of 32 heads × 8192 keys × 128 at 16.2 GB/s on 1 thread, against 11.2 for faer's
/// matrix-vector product (as fast or faster at every shape measured: 512 to 8192 keys, 1 to 8
/// rows).
///
/// # Panics
/// As [`narrow_add_values`].
pub(super) fn add_f32_values(
    values: RowsRef<'_, f32>,
    weights: &[f32],
    rows: usize,
    acc: &mut [f32],
) {
    add_values(values, Unscaled, weights, rows, acc);
}

/// Whether [`add_f32_values`] weighs `rows` query rows over f32 values `d` wide faster than
/// faer's product does.
///
/// The kernels hold `R · C` accumulators in registers and read a block's rows in passes of
/// `C` vectors of columns. faer's matrix-vector product (one row) keeps its accumulators in
/// L1 and reads each value row whole, in order. Where one pass covers the row (one row on
/// AVX-512: 128 columns), the kernels win: 0.84–0.96× the decode core's time on the Xeon.
/// Where it does not (one row on AVX2: 32 columns, four strided passes over a block of
/// 128-wide rows), faer's in-order read wins: on a 2-core AMD EPYC with AVX2 and no
/// AVX-512, one row over 64 heads × 8192 keys × 128 took 1.3–1.7× faer's time whatever the
/// prefetching, and the MHA decode core 1.2–1.8× (context 512 to 8192, 1 and 2 threads).
/// At two rows or more faer runs a matrix product, and the kernels were faster on both hosts
/// (GQA-8's decode core: 0.89–0.90× on the Xeon, 0.70–0.97× on the EPYC). The portable path
/// is scalar, so faer wins there.
pub(super) fn f32_values_beat_faer(rows: usize, d: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        if super::narrow512::available() {
            return rows > 1 || d <= super::narrow512::ONE_ROW_PASS_COLUMNS;
        }
        if super::simd::has_avx2_fma_f16c() {
            return rows > 1 || d <= avx2::ONE_ROW_PASS_COLUMNS;
        }
    }
    let _ = (rows, d);
    false
}

#[track_caller]
fn check_scales(n: usize, scales: ColRef<'_, f32>) {
    assert_eq!(scales.nrows(), n, "one int8 scale per row");
}

/// [`narrow_add_values`] for one element type: the shape checks and the path.
#[track_caller]
fn add_values<T: Stored, S: RowScales>(
    values: RowsRef<'_, T>,
    scales: S,
    weights: &[f32],
    rows: usize,
    acc: &mut [f32],
) {
    assert!(
        (1..=FEW_ROWS_MAX).contains(&rows),
        "narrow_add_values takes 1 to {FEW_ROWS_MAX} rows, not {rows}"
    );
    assert_eq!(weights.len(), rows * values.nrows(), "weights");
    assert_eq!(acc.len(), rows * values.ncols(), "accumulators");
    #[cfg(target_arch = "x86_64")]
    {
        if super::narrow512::available() {
            // SAFETY: the CPU has AVX-512F (checked above); the shapes are checked above.
            unsafe { super::narrow512::add_values(values, scales, weights, rows, acc) };
            return;
        }
        if super::simd::has_avx2_fma_f16c() {
            // SAFETY: the CPU has AVX2, FMA and F16C (checked above); the shapes are checked
            // above.
            unsafe { avx2::add_values(values, scales, weights, rows, acc) };
            return;
        }
    }
    portable_add_values(values, scales, weights, rows, acc);
}

/// The portable path of [`narrow_add_values`], shapes already checked.
fn portable_add_values<T: Widen, S: RowScales>(
    values: RowsRef<'_, T>,
    scales: S,
    weights: &[f32],
    rows: usize,
    acc: &mut [f32],
) {
    let (n, d) = (values.nrows(), values.ncols());
    for j in 0..n {
        let (value, row_scale) = (values.row(j).as_slice(), scales.at(j));
        for r in 0..rows {
            let w = weights[r * n + j] * row_scale;
            for (a, v) in acc[r * d..(r + 1) * d].iter_mut().zip(value) {
                *a += w * v.widen();
            }
        }
    }
}

/// Bytes of value rows per block: a block stays in L1 while every column range of the
/// accumulators passes over it.
const VALUE_BLOCK_BYTES: usize = 32 << 10;

/// Most value rows per block (the whole 16 KiB at d = 128 in bf16).
const VALUE_BLOCK: usize = 64;

/// Value rows per block for rows of `d` values of `T`: [`VALUE_BLOCK_BYTES`] worth, at
/// least 1 and at most [`VALUE_BLOCK`]. Long rows (a bf16 weight matrix's, thousands of
/// values) take few rows per block, so that a column pass reads a few long runs of memory
/// in turn instead of one cache line from each of 64 rows kilobytes apart, which the
/// hardware prefetchers cannot follow.
fn block_rows<T>(d: usize) -> usize {
    (VALUE_BLOCK_BYTES / (d * size_of::<T>()).max(1)).clamp(1, VALUE_BLOCK)
}

/// One block of value rows as the weighted sum's column passes read it.
pub(super) struct ValueBlock<'a, 's, T, const R: usize> {
    /// The block's rows `(nb, d)`.
    pub block: RowsRef<'a, T>,
    /// The next block's rows (empty after the last), for the passes to prefetch.
    pub ahead: RowsRef<'a, T>,
    /// Per row of the block, its weight for each of the `R` rows times the row's scale.
    pub scaled: &'s [[f32; R]],
    /// The block may hold int8's non-finite code: the passes widen with marking.
    pub marked: bool,
}

/// The walk of the weighted sum over `values`: blocks of [`block_rows`] rows; for each, its
/// weights times the rows' scales are gathered once into a small row-major `(nb, R)` table,
/// so that each column pass broadcasts them straight from memory (a load, not a multiply and
/// a shuffle per row per pass), and whether the block holds int8's non-finite code is checked
/// once by `holds_non_finite` (a block without it is widened without the per-lane marking),
/// `columns` then runs the
/// vector passes over columns `0..whole`, and the walk adds the columns `whole..d` one by one.
/// Inlined into the vector paths, so that `columns`, a closure of theirs, keeps their target
/// features.
#[inline(always)]
pub(super) fn for_each_value_block<T: Widen, S: RowScales, const R: usize>(
    (values, scales): (RowsRef<'_, T>, S),
    weights: &[f32],
    acc: &mut [f32],
    (whole, holds_non_finite): (usize, impl Fn(&[T]) -> bool),
    mut columns: impl FnMut(ValueBlock<'_, '_, T, R>, &mut [f32]),
) {
    let (n, d) = (values.nrows(), values.ncols());
    let block_rows = block_rows::<T>(d);
    let mut scaled = [[0.0f32; R]; VALUE_BLOCK];
    for j0 in (0..n).step_by(block_rows) {
        let block = values.subrows(j0, block_rows.min(n - j0));
        let next = j0 + block.nrows();
        let ahead = values.subrows(next, block_rows.min(n - next));
        let scaled = &mut scaled[..block.nrows()];
        for (j, w) in scaled.iter_mut().enumerate() {
            let row_scale = scales.at(j0 + j);
            for (r, w) in w.iter_mut().enumerate() {
                *w = weights[r * n + j0 + j] * row_scale;
            }
        }
        let marked = T::MARKS_NON_FINITE
            && (0..block.nrows()).any(|j| holds_non_finite(block.row(j).as_slice()));
        let pass = ValueBlock {
            block,
            ahead,
            scaled,
            marked,
        };
        columns(pass, acc);
        for (j, w) in scaled.iter().enumerate() {
            let value = block.row(j).as_slice();
            for (r, &p) in w.iter().enumerate() {
                for c in whole..d {
                    acc[r * d + c] = p.mul_add(value[c].widen(), acc[r * d + c]);
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::super::simd::{RowScales, RowsRef, Widen};
    use super::ValueBlock;

    /// [`dequantize_int8`](super::dequantize_int8) eight codes at a time: the same values
    /// (each code, NaN for −128, times the scale, one rounding), in a quarter of the
    /// instructions of the baseline loop, which dominated the widening of MLA's int8 latent.
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C; `codes.len() == out.len()`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dequantize_int8((codes, scale): (&[i8], f32), out: &mut [f32]) {
        let whole = codes.len() - codes.len() % 8;
        let factor = _mm256_set1_ps(scale);
        for c in (0..whole).step_by(8) {
            // SAFETY: c + 8 ≤ whole ≤ both lengths.
            unsafe {
                let lanes = i8::load8(codes.as_ptr().add(c));
                _mm256_storeu_ps(out.as_mut_ptr().add(c), _mm256_mul_ps(lanes, factor));
            }
        }
        for (o, code) in out[whole..].iter_mut().zip(&codes[whole..]) {
            *o = code.widen() * scale;
        }
    }

    /// Vectors of columns per pass at one query row.
    const ONE_ROW_C: usize = 4;
    /// Columns per pass at one query row (see [`super::f32_values_beat_faer`]).
    pub const ONE_ROW_PASS_COLUMNS: usize = 8 * ONE_ROW_C;

    /// [`super::narrow_add_values`] on AVX2 + FMA + F16C, shapes already checked.
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C; `weights` is `(rows, n)`, `acc` `(rows, d)`, `rows`
    /// in `1..=8`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn add_values<T: Widen, S: RowScales>(
        values: RowsRef<'_, T>,
        scales: S,
        weights: &[f32],
        rows: usize,
        acc: &mut [f32],
    ) {
        let v = (values, scales);
        // SAFETY (all arms): same contract as this function's.
        unsafe {
            match rows {
                1 => add_by::<T, S, 1, ONE_ROW_C>(v, weights, acc),
                2 => add_by::<T, S, 2, 4>(v, weights, acc),
                3 => add_by::<T, S, 3, 2>(v, weights, acc),
                4 => add_by::<T, S, 4, 2>(v, weights, acc),
                5 => add_by::<T, S, 5, 1>(v, weights, acc),
                6 => add_by::<T, S, 6, 1>(v, weights, acc),
                7 => add_by::<T, S, 7, 1>(v, weights, acc),
                _ => add_by::<T, S, 8, 1>(v, weights, acc),
            }
        }
    }

    /// `R` rows over the value blocks of [`for_each_value_block`](super::for_each_value_block):
    /// in each block the columns `8 · C` at a time (`R · C` accumulators held in registers
    /// across the block), then eight at a time; the block walk adds the last `d mod 8`.
    ///
    /// # Safety
    /// AVX2, FMA and F16C; `weights.len() == R · n`, `acc.len() == R · d`.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn add_by<T: Widen, S: RowScales, const R: usize, const C: usize>(
        values: (RowsRef<'_, T>, S),
        weights: &[f32],
        acc: &mut [f32],
    ) {
        let d = values.0.ncols();
        let wide = d - d % (8 * C);
        let whole = d - d % 8;
        let check = (whole, T::any_non_finite);
        super::for_each_value_block::<T, S, R>(values, weights, acc, check, |pass, acc| {
            let ValueBlock {
                block,
                ahead,
                scaled,
                marked,
            } = pass;
            for c in (0..wide).step_by(8 * C) {
                // SAFETY: c + 8 · C ≤ d; the caller's contract covers the rest.
                unsafe {
                    if marked {
                        columns::<T, R, C, true>(block, ahead, scaled, c, acc);
                    } else {
                        columns::<T, R, C, false>(block, ahead, scaled, c, acc);
                    }
                }
            }
            for c in (wide..whole).step_by(8) {
                // SAFETY: c + 8 ≤ d; as above. The marking path: at most one pass per block.
                unsafe { columns::<T, R, 1, true>(block, ahead, scaled, c, acc) };
            }
        });
    }

    /// Columns `c..c + 8 · C` of the `R` accumulator rows, over the rows of `block`:
    /// `acc[r][c..] += scaled[j][r] · value_j[c..]`, values widened by [`Widen::load8`]
    /// when `MARKED` (the block may hold int8's non-finite code), else by
    /// [`Widen::load8_finite`]. The same columns of the rows of `ahead` (the next block) are
    /// prefetched into L2 meanwhile: a pass reads a few bytes of each of many rows, a pattern
    /// the hardware prefetchers do not follow, and without it the loads wait on memory (the
    /// value pass of a bf16 decode ran at a third of the speed of the score pass over the
    /// same bytes).
    ///
    /// # Safety
    /// AVX2, FMA and F16C; `c + 8 · C ≤ d`; `scaled` has one entry per row of `block`,
    /// `acc.len() == R · d`; `ahead` has `d` columns.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn columns<T: Widen, const R: usize, const C: usize, const MARKED: bool>(
        block: RowsRef<'_, T>,
        ahead: RowsRef<'_, T>,
        scaled: &[[f32; R]],
        c: usize,
        acc: &mut [f32],
    ) {
        let d = block.ncols();
        // Sixteen columns per load when the type pairs them: the accumulators are held as the
        // even columns and the odd ones, the order `load16` widens them in.
        let paired = T::PAIRED && !MARKED && C.is_multiple_of(2);
        let mut sums = [[_mm256_setzero_ps(); C]; R];
        for (r, row) in sums.iter_mut().enumerate() {
            for (k, sum) in row.iter_mut().enumerate() {
                // SAFETY: r · d + c + 8 · k + 8 ≤ R · d = acc.len().
                *sum = unsafe { _mm256_loadu_ps(acc.as_ptr().add(r * d + c + 8 * k)) };
            }
            if paired {
                for k in (0..C).step_by(2) {
                    [row[k], row[k + 1]] = even_odd(row[k], row[k + 1]);
                }
            }
        }
        for (j, w) in scaled.iter().enumerate() {
            if j < ahead.nrows() {
                // SAFETY: c < d, the row's length; a prefetch never faults anyway.
                let later = unsafe { ahead.row(j).as_slice().as_ptr().add(c) };
                _mm_prefetch::<_MM_HINT_T1>(later.cast::<i8>());
            }
            let value = block.row(j).as_slice().as_ptr();
            let mut v = [_mm256_setzero_ps(); C];
            if paired {
                for k in (0..C).step_by(2) {
                    // SAFETY: c + 8 · k + 16 ≤ c + 8 · C ≤ d, the row's length.
                    [v[k], v[k + 1]] = unsafe { T::load16(value.add(c + 8 * k)) };
                }
            }
            for (k, lanes) in v.iter_mut().enumerate().filter(|_| !paired) {
                // SAFETY: c + 8 · k + 8 ≤ c + 8 · C ≤ d, the row's length; without MARKED
                // the block holds no non-finite code (checked by the caller).
                *lanes = unsafe {
                    if MARKED {
                        T::load8(value.add(c + 8 * k))
                    } else {
                        T::load8_finite(value.add(c + 8 * k))
                    }
                };
            }
            for (row, p) in sums.iter_mut().zip(w) {
                let p = _mm256_broadcast_ss(p);
                for (sum, lanes) in row.iter_mut().zip(&v) {
                    *sum = _mm256_fmadd_ps(p, *lanes, *sum);
                }
            }
        }
        for (r, row) in sums.iter_mut().enumerate() {
            if paired {
                for k in (0..C).step_by(2) {
                    [row[k], row[k + 1]] = in_order(row[k], row[k + 1]);
                }
            }
            for (k, sum) in row.iter().enumerate() {
                // SAFETY: as for the loads.
                unsafe { _mm256_storeu_ps(acc.as_mut_ptr().add(r * d + c + 8 * k), *sum) };
            }
        }
    }

    /// Sixteen columns in order (`a`: 0..8, `b`: 8..16) as their even and odd ones.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn even_odd(a: __m256, b: __m256) -> [__m256; 2] {
        // Within each 128-bit half: a's two evens (odds), then b's; then the 64-bit quarters
        // put in order.
        let even = _mm256_shuffle_ps::<0b10_00_10_00>(a, b);
        let odd = _mm256_shuffle_ps::<0b11_01_11_01>(a, b);
        let order = |x: __m256| {
            _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(x)))
        };
        [order(even), order(odd)]
    }

    /// The inverse of [`even_odd`].
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn in_order(even: __m256, odd: __m256) -> [__m256; 2] {
        let low = _mm256_unpacklo_ps(even, odd);
        let high = _mm256_unpackhi_ps(even, odd);
        [
            _mm256_permute2f128_ps::<0x20>(low, high),
            _mm256_permute2f128_ps::<0x31>(low, high),
        ]
    }
}

#[cfg(test)]
mod tests {
    use faer::MatRef;

    use super::super::convert::{
        dequantize_int8, quantize_int8, round_to_bf16, round_to_f16, widen_bf16, widen_f16,
    };
    use super::super::simd::portable_scores;
    use super::super::simd::tests::values;
    use super::*;

    /// Columns around a block's `d` in its buffer (2 before, 3 after), and scales around its
    /// scale (1 before, 1 after): NaN, so that a read outside the view shows in the outputs.
    const BEFORE: usize = 2;
    const PAD: usize = 5;

    /// `n` rows of `d` random values stored in one type, as a strided view of a wider buffer,
    /// and the values the kernels must read (`(n, d)` row-major): widened, or dequantised.
    struct Block {
        dtype: Dtype,
        n: usize,
        d: usize,
        bf16: Vec<bf16>,
        f16: Vec<f16>,
        codes: Vec<i8>,
        scales: Vec<f32>,
        read: Vec<f32>,
    }

    impl Block {
        /// Random values, with `bad` written at `(row, column)` when given.
        fn new(
            dtype: Dtype,
            (n, d): (usize, usize),
            state: &mut u64,
            bad: Option<(usize, usize, f32)>,
        ) -> Self {
            let w = d + PAD;
            let mut wide = vec![f32::NAN; n * w];
            for (j, row) in values(state, n * d).chunks(d).enumerate() {
                wide[j * w + BEFORE..][..d].copy_from_slice(row);
            }
            if let Some((j, c, v)) = bad {
                wide[j * w + BEFORE + c] = v;
            }
            let mut block = Block {
                dtype,
                n,
                d,
                bf16: vec![bf16::ZERO; n * w],
                f16: vec![f16::ZERO; n * w],
                codes: vec![i8::MIN; n * w],
                scales: vec![f32::NAN; n * 3],
                read: vec![0.0; n * d],
            };
            round_to_bf16(&wide, &mut block.bf16);
            round_to_f16(&wide, &mut block.f16);
            for j in 0..n {
                let (at, read) = (j * w + BEFORE, &mut block.read[j * d..][..d]);
                match dtype {
                    Dtype::Bf16 => widen_bf16(&block.bf16[at..][..d], read),
                    Dtype::F16 => widen_f16(&block.f16[at..][..d], read),
                    _ => {
                        let codes = &mut block.codes[at..][..d];
                        block.scales[j * 3 + 1] = quantize_int8(&wide[at..][..d], codes);
                        dequantize_int8(codes, block.scales[j * 3 + 1], read);
                    }
                }
            }
            block
        }

        fn rows(&self) -> StoredRows<'_> {
            fn view<T>(data: &[T], n: usize, d: usize) -> RowsRef<'_, T> {
                MatRef::from_row_major_slice(data, n, d + PAD)
                    .subcols(BEFORE, d)
                    .try_as_row_major()
                    .unwrap()
            }
            match self.dtype {
                Dtype::Bf16 => StoredRows::Bf16(view(&self.bf16, self.n, self.d)),
                Dtype::F16 => StoredRows::F16(view(&self.f16, self.n, self.d)),
                _ => StoredRows::Int8 {
                    codes: view(&self.codes, self.n, self.d),
                    scales: MatRef::from_row_major_slice(&self.scales, self.n, 3).col(1),
                },
            }
        }

        /// The scores on every path: the dispatched one, the eight-lane one (AVX2 where the
        /// CPU has it, so that a host with AVX-512 tests both vector paths; else the portable
        /// loop again), then the portable loop.
        fn scores(&self, queries: &[f32], rows: usize, scale: f32) -> [Vec<f32>; 3] {
            let mut out: [Vec<f32>; 3] = std::array::from_fn(|_| vec![0.0; rows * self.n]);
            narrow_scores(self.rows(), queries, rows, scale, &mut out[0]);
            let (q, [_, eight, portable]) = (queries, &mut out);
            match self.rows() {
                StoredRows::Bf16(k) => {
                    stored_row_scores(k, Unscaled, q, rows, scale, eight);
                    portable_scores(k, Unscaled, q, rows, scale, portable);
                }
                StoredRows::F16(k) => {
                    stored_row_scores(k, Unscaled, q, rows, scale, eight);
                    portable_scores(k, Unscaled, q, rows, scale, portable);
                }
                StoredRows::Int8 { codes, scales } => {
                    stored_row_scores(codes, scales, q, rows, scale, eight);
                    portable_scores(codes, scales, q, rows, scale, portable);
                }
            }
            out
        }

        /// `acc + weights · values` on every path, as [`Self::scores`].
        fn add_values(&self, weights: &[f32], rows: usize, acc: &[f32]) -> [Vec<f32>; 3] {
            let mut out: [Vec<f32>; 3] = std::array::from_fn(|_| acc.to_vec());
            narrow_add_values(self.rows(), weights, rows, &mut out[0]);
            let (w, [_, eight, portable]) = (weights, &mut out);
            match self.rows() {
                StoredRows::Bf16(v) => {
                    eight_lane_add_values(v, Unscaled, w, rows, eight);
                    portable_add_values(v, Unscaled, w, rows, portable);
                }
                StoredRows::F16(v) => {
                    eight_lane_add_values(v, Unscaled, w, rows, eight);
                    portable_add_values(v, Unscaled, w, rows, portable);
                }
                StoredRows::Int8 { codes, scales } => {
                    eight_lane_add_values(codes, scales, w, rows, eight);
                    portable_add_values(codes, scales, w, rows, portable);
                }
            }
            out
        }
    }

    /// The AVX2 weighted sum where the CPU has AVX2, FMA and F16C, else the portable loop.
    fn eight_lane_add_values<T: Widen, S: RowScales>(
        values: RowsRef<'_, T>,
        scales: S,
        weights: &[f32],
        rows: usize,
        acc: &mut [f32],
    ) {
        #[cfg(target_arch = "x86_64")]
        if super::super::simd::has_avx2_fma_f16c() {
            // SAFETY: the CPU has the features; the callers pass consistent shapes.
            unsafe { avx2::add_values(values, scales, weights, rows, acc) };
            return;
        }
        portable_add_values(values, scales, weights, rows, acc);
    }

    const STORED: [Dtype; 3] = [Dtype::Bf16, Dtype::F16, Dtype::Int8];

    /// Both paths against f64 sums of the values read back, `got` (f32) beside `want` (f64):
    /// a tolerance that grows with the number of terms summed.
    fn assert_near(got: &[Vec<f32>; 3], want: &[f64], terms: usize, label: &str) {
        let tol = 1e-5 * (1.0 + (terms as f64).sqrt());
        for (path, out) in ["dispatched", "eight-lane", "portable"].iter().zip(got) {
            for (i, (g, w)) in out.iter().zip(want).enumerate() {
                let err = (f64::from(*g) - w).abs();
                assert!(err < tol, "{label} {path} at {i}: {g} vs {w}");
            }
        }
    }

    #[test]
    fn narrow_scores_equal_f64_dot_products_of_the_values_read_back() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for dtype in STORED {
            for d in 1..=129 {
                for n in [1, 3, 17] {
                    let block = Block::new(dtype, (n, d), &mut state, None);
                    for rows in 1..=FEW_ROWS_MAX {
                        let q = values(&mut state, rows * d);
                        let scale = 0.37f32;
                        let want: Vec<f64> = (0..rows * n)
                            .map(|i| {
                                let (r, j) = (i / n, i % n);
                                let dot: f64 = (0..d)
                                    .map(|c| {
                                        f64::from(block.read[j * d + c]) * f64::from(q[r * d + c])
                                    })
                                    .sum();
                                f64::from(scale) * dot
                            })
                            .collect();
                        let label = format!("{dtype} d {d} n {n} rows {rows}");
                        assert_near(&block.scores(&q, rows, scale), &want, d, &label);
                    }
                }
            }
        }
    }

    #[test]
    fn narrow_add_values_equal_f64_weighted_sums_of_the_values_read_back() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for dtype in STORED {
            for d in 1..=129 {
                // 67 rows: a whole block of 64 and a short one.
                for n in [1, 5, 67] {
                    let block = Block::new(dtype, (n, d), &mut state, None);
                    for rows in 1..=FEW_ROWS_MAX {
                        let weights = values(&mut state, rows * n);
                        let acc = values(&mut state, rows * d);
                        let want: Vec<f64> = (0..rows * d)
                            .map(|i| {
                                let (r, c) = (i / d, i % d);
                                let sum: f64 = (0..n)
                                    .map(|j| {
                                        f64::from(weights[r * n + j])
                                            * f64::from(block.read[j * d + c])
                                    })
                                    .sum();
                                f64::from(acc[i]) + sum
                            })
                            .collect();
                        let label = format!("{dtype} d {d} n {n} rows {rows}");
                        assert_near(&block.add_values(&weights, rows, &acc), &want, n, &label);
                    }
                }
            }
        }
    }

    /// A NaN or an infinity stored in a key makes that key's scores non-finite and no other;
    /// in a value, column `c` of every row and no other (int8 stores both as its −128), on both
    /// paths, at a column in the eight lanes and one in the tail. The wider shapes put it in
    /// the columns taken several vectors at a time, in either of two value blocks, beside a
    /// block without it (which the kernels widen without marking), and in the 64-code chunks
    /// the AVX-512 path checks for int8's non-finite code at once.
    #[test]
    fn non_finite_stored_values_reach_exactly_their_outputs() {
        let mut state = 0x51_7cc1_b727_220au64;
        let cases = [
            ((11, 13), (4, 3)),
            ((11, 13), (7, 12)),
            ((70, 40), (4, 17)),
            ((70, 40), (66, 30)),
            ((70, 40), (69, 39)),
            ((20, 130), (5, 100)),
            ((20, 130), (19, 129)),
        ];
        for dtype in STORED {
            for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                for ((n, d), (bad_j, bad_c)) in cases {
                    let poison = Some((bad_j, bad_c, bad));
                    let block = Block::new(dtype, (n, d), &mut state, poison);
                    for rows in 1..=FEW_ROWS_MAX {
                        let label = format!("{dtype} {bad} at ({bad_j}, {bad_c}), rows {rows}");
                        let q = values(&mut state, rows * d);
                        for out in block.scores(&q, rows, 0.5) {
                            for (i, s) in out.iter().enumerate() {
                                assert_eq!(!s.is_finite(), i % n == bad_j, "{label}: score {i}");
                            }
                        }
                        let weights = values(&mut state, rows * n);
                        let acc = values(&mut state, rows * d);
                        for out in block.add_values(&weights, rows, &acc) {
                            for (i, a) in out.iter().enumerate() {
                                assert_eq!(!a.is_finite(), i % d == bad_c, "{label}: acc {i}");
                            }
                        }
                    }
                }
            }
        }
    }

    /// Widening int8 rows (the dispatched path) gives the bits of the baseline's
    /// `dequantize_int8`, and a NaN for the non-finite code, at widths around the eight lanes.
    #[test]
    fn widened_int8_rows_equal_the_baseline_dequantisation() {
        let mut state = 0x3c6e_f372_fe94_f82bu64;
        for d in [1, 7, 8, 9, 16, 23, 64, 129] {
            let n = 5;
            let block = Block::new(Dtype::Int8, (n, d), &mut state, Some((2, d - 1, f32::NAN)));
            let mut got = vec![0.0f32; n * d];
            block.rows().widen_into(&mut got, d);
            for j in 0..n {
                let at = j * (d + PAD) + BEFORE;
                let mut want = vec![0.0f32; d];
                dequantize_int8(&block.codes[at..][..d], block.scales[j * 3 + 1], &mut want);
                for (c, (g, w)) in got[j * d..][..d].iter().zip(&want).enumerate() {
                    // Any NaN for the non-finite code (the vector path's has another payload).
                    let same = g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan());
                    assert!(same, "d {d} row {j} column {c}: {g} vs {w}");
                }
            }
        }
    }

    #[test]
    fn the_path_is_named() {
        let path = narrow_path();
        assert!(
            ["avx512f", "avx2+fma+f16c", "portable"].contains(&path),
            "{path}"
        );
        #[cfg(target_arch = "x86_64")]
        {
            let avx512 = super::super::narrow512::available();
            assert_eq!(path == "avx512f", avx512);
            let avx2 = super::super::simd::has_avx2_fma_f16c();
            assert_eq!(path == "avx2+fma+f16c", avx2 && !avx512);
        }
    }
}
