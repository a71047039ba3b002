//! The narrow kernels of `narrow.rs` on AVX-512F: the same contracts (scores of a few packed
//! f32 query rows against keys stored in bf16, f16 or int8, and the weighted sum of stored
//! values), sixteen lanes per instruction where the AVX2 path has eight.
//!
//! Why a path of its own: reading a stored type costs a widening instruction or two per vector
//! beside the multiply-adds, and on AVX2 those share the two vector ports with the FMAs. On a
//! Xeon with AVX-512 (two 512-bit FMA units) the AVX2 int8 decode core was compute-bound: GQA-8
//! at 8192 tokens took about as long as its f32 core, which reads four times the bytes. At
//! sixteen lanes each widening serves twice the values, and the FMAs go to both 512-bit units.
//! Products and sums stay f32 (docs/design.md §5); values are widened in order (no even/odd
//! pairing, which AVX2 uses to save a shuffle, is needed at this width).
//!
//! x86-64 only; [`available`] is the run-time check every caller makes first.

use std::arch::x86_64::*;

use super::convert::{bf16, f16};
use super::narrow::for_each_value_block;
use super::simd::{RowScales, RowsRef, Widen, key_streams};

/// True when the CPU runs AVX-512F and AVX-512BW (byte comparisons, for int8's check). Cheap to call in a
/// loop (the standard library caches the CPUID answer).
#[inline]
pub(super) fn available() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
}

/// Lanes of one vector.
const LANES: usize = 16;

/// Vectors of columns per pass of the weighted sum at one query row.
const ONE_ROW_C: usize = 8;
/// Columns per pass of the weighted sum at one query row (see
/// [`super::narrow::f32_values_beat_faer`]).
pub(super) const ONE_ROW_PASS_COLUMNS: usize = LANES * ONE_ROW_C;

/// A stored type read sixteen values at a time.
pub(super) trait Lanes16: Widen {
    /// The sixteen elements from `ptr` as f32 lanes, [`Widen::widen`] of each (int8's
    /// non-finite code as NaN).
    ///
    /// # Safety
    /// The CPU has AVX-512F; sixteen elements are readable at `ptr`.
    unsafe fn lanes(ptr: *const Self) -> __m512;

    /// [`Lanes16::lanes`] for sixteen elements none of which is a pattern
    /// [`Widen::any_non_finite`] finds: the same lanes in fewer instructions.
    ///
    /// # Safety
    /// As [`Lanes16::lanes`].
    #[inline(always)]
    unsafe fn lanes_finite(ptr: *const Self) -> __m512 {
        // SAFETY: the caller's contract.
        unsafe { Self::lanes(ptr) }
    }

    /// [`Widen::any_non_finite`]: true when `row` holds a pattern
    /// [`Lanes16::lanes_finite`] would read as a finite value.
    ///
    /// # Safety
    /// The CPU has AVX-512F and AVX-512BW.
    #[inline(always)]
    unsafe fn holds_non_finite(row: &[Self]) -> bool {
        Self::any_non_finite(row)
    }
}

/// f32 rows as they are, for decode's weighted sum over an f32 cache (`add_f32_values`).
impl Lanes16 for f32 {
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn lanes(ptr: *const Self) -> __m512 {
        // SAFETY: the caller's contract: 64 readable bytes.
        unsafe { _mm512_loadu_ps(ptr) }
    }
}

impl Lanes16 for bf16 {
    /// Zero-extends the sixteen 16-bit patterns and shifts them into the upper halves.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn lanes(ptr: *const Self) -> __m512 {
        // SAFETY: the caller's contract: 32 readable bytes.
        let bits = unsafe { _mm256_loadu_si256(ptr.cast()) };
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(bits)))
    }
}

impl Lanes16 for f16 {
    /// `vcvtph2ps` on sixteen lanes: exact, subnormals included, NaNs made quiet.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn lanes(ptr: *const Self) -> __m512 {
        // SAFETY: the caller's contract: 32 readable bytes.
        _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(ptr.cast()) })
    }
}

impl Lanes16 for i8 {
    /// Sign-extends and converts the sixteen codes, then sets every bit of the lanes that held
    /// −128 (all ones is a NaN), as the AVX2 path does.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn lanes(ptr: *const Self) -> __m512 {
        // SAFETY: the caller's contract: 16 readable bytes.
        let codes = _mm512_cvtepi8_epi32(unsafe { _mm_loadu_si128(ptr.cast()) });
        let non_finite = _mm512_cmpeq_epi32_mask(codes, _mm512_set1_epi32(i32::from(i8::MIN)));
        let all_ones = _mm512_castsi512_ps(_mm512_set1_epi32(-1));
        _mm512_mask_mov_ps(_mm512_cvtepi32_ps(codes), non_finite, all_ones)
    }

    /// Sign-extends and converts only: the codes hold no −128.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn lanes_finite(ptr: *const Self) -> __m512 {
        // SAFETY: the caller's contract: 16 readable bytes.
        _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(unsafe { _mm_loadu_si128(ptr.cast()) }))
    }

    /// Sixty-four codes per comparison: the baseline's fold compiles to sixteen-byte steps,
    /// which cost the score pass of a 128-wide head about as much as its multiply-adds.
    #[target_feature(enable = "avx512f,avx512bw")]
    #[inline]
    unsafe fn holds_non_finite(row: &[Self]) -> bool {
        let min = _mm512_set1_epi8(i8::MIN);
        let mut chunks = row.chunks_exact(64);
        let mut seen = 0u64;
        for chunk in &mut chunks {
            // SAFETY: 64 readable bytes.
            let codes = unsafe { _mm512_loadu_si512(chunk.as_ptr().cast()) };
            seen |= _mm512_cmpeq_epi8_mask(codes, min);
        }
        seen != 0 || Self::any_non_finite(chunks.remainder())
    }
}

/// [`narrow_scores`](super::narrow_scores) on AVX-512F, shapes already checked:
/// `out[r · n + j] = scale · scales.at(j) · (keys[j] · queries[r])`.
///
/// # Safety
/// The CPU has AVX-512F; `queries` is `(rows, d)`, `out` `(rows, n)`, `rows` in `1..=8`.
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) unsafe fn scores<T: Lanes16, S: RowScales>(
    keys: RowsRef<'_, T>,
    scales: S,
    queries: &[f32],
    rows: usize,
    scale: f32,
    out: &mut [f32],
) {
    let k = (keys, scales);
    // Up to sixteen accumulators (R · J), summed across their lanes together: more keys at a
    // time when there are fewer rows.
    // SAFETY (all arms): same contract as this function's.
    unsafe {
        match rows {
            1 => scores_by::<T, S, 1, 16>(k, queries, scale, out),
            2 => scores_by::<T, S, 2, 8>(k, queries, scale, out),
            3 => scores_by::<T, S, 3, 5>(k, queries, scale, out),
            4 => scores_by::<T, S, 4, 4>(k, queries, scale, out),
            5 => scores_by::<T, S, 5, 3>(k, queries, scale, out),
            6 => scores_by::<T, S, 6, 2>(k, queries, scale, out),
            7 => scores_by::<T, S, 7, 2>(k, queries, scale, out),
            _ => scores_by::<T, S, 8, 2>(k, queries, scale, out),
        }
    }
}

/// `R` query rows, `J` keys at a time taken from `J` equal ranges of the block (`J` streams
/// of keys in flight), then the leftover keys one at a time.
///
/// # Safety
/// AVX-512F; `queries.len() == R · d`, `out.len() == R · n`.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn scores_by<T: Lanes16, S: RowScales, const R: usize, const J: usize>(
    keys: (RowsRef<'_, T>, S),
    queries: &[f32],
    scale: f32,
    out: &mut [f32],
) {
    let (groups, leftovers) = key_streams::<J>(keys.0.nrows());
    for js in groups {
        // SAFETY: every index is below n; the caller's contract covers the rest.
        unsafe { score_keys::<T, S, R, J>(keys, js, queries, scale, out) };
    }
    for j in leftovers {
        // SAFETY: as above, for one key.
        unsafe { score_keys::<T, S, R, 1>(keys, [j], queries, scale, out) };
    }
}

/// Scores of keys `js` against the `R` rows: sixteen columns at a time in vectors, the last
/// `d mod 16` one by one.
///
/// # Safety
/// AVX-512F; every key of `js` exists; `queries.len() == R · d`, `out.len() == R · n`.
#[target_feature(enable = "avx512f,avx512bw")]
#[inline]
unsafe fn score_keys<T: Lanes16, S: RowScales, const R: usize, const J: usize>(
    (keys, scales): (RowsRef<'_, T>, S),
    js: [usize; J],
    queries: &[f32],
    scale: f32,
    out: &mut [f32],
) {
    let (n, d) = (keys.nrows(), keys.ncols());
    let whole = d - d % LANES;
    let key_rows: [&[T]; J] = js.map(|j| keys.row(j).as_slice());
    // A row with int8's non-finite code is rare: checking the rows once lets the common case
    // widen without marking each lane.
    // SAFETY: the CPU has AVX-512BW (the caller's contract).
    let marked = T::MARKS_NON_FINITE
        && key_rows
            .iter()
            .any(|row| unsafe { T::holds_non_finite(row) });
    // SAFETY: every row has d ≥ whole elements, unmarked rows no non-finite code (checked
    // above); queries.len() == R · d.
    let acc = unsafe {
        if marked {
            dots::<T, R, J, true>(key_rows, queries, d)
        } else {
            dots::<T, R, J, false>(key_rows, queries, d)
        }
    };
    // The R · J ≤ 16 dot products summed across their lanes together, in the order
    // `sum_lanes` wants them.
    let mut spread = [_mm512_setzero_ps(); LANES];
    for (jj, sums) in acc.iter().enumerate() {
        for (r, sum) in sums.iter().enumerate() {
            spread[TRANSPOSED[jj * R + r]] = *sum;
        }
    }
    let mut dots = [0.0f32; LANES];
    // SAFETY: sixteen f32 are writable at `dots`.
    unsafe { _mm512_storeu_ps(dots.as_mut_ptr(), sum_lanes(spread)) };
    for (jj, &j) in js.iter().enumerate() {
        let row_scale = scales.at(j);
        for r in 0..R {
            let q = &queries[r * d..(r + 1) * d];
            let tail = key_rows[jj][whole..]
                .iter()
                .zip(&q[whole..])
                .fold(0.0f32, |s, (a, b)| a.widen().mul_add(*b, s));
            out[r * n + j] = scale * (row_scale * (dots[jj * R + r] + tail));
        }
    }
}

/// The sixteen-lane partial dot products of the first `d - d mod 16` values of each key row
/// with each query row, `acc[key][row]`, keys widened by [`Lanes16::lanes`] when `MARKED`,
/// else by [`Lanes16::lanes_finite`] (a parameter of the type, so that the loop has no branch).
///
/// # Safety
/// AVX-512F; every row of `key_rows` has at least `d - d mod 16` values, and without `MARKED`
/// none holds a pattern [`Lanes16::holds_non_finite`] finds; `queries.len() == R · d`.
#[target_feature(enable = "avx512f,avx512bw")]
#[inline]
unsafe fn dots<T: Lanes16, const R: usize, const J: usize, const MARKED: bool>(
    key_rows: [&[T]; J],
    queries: &[f32],
    d: usize,
) -> [[__m512; R]; J] {
    let mut acc = [[_mm512_setzero_ps(); R]; J];
    for c in (0..d - d % LANES).step_by(LANES) {
        let kv: [__m512; J] = std::array::from_fn(|jj| {
            // SAFETY: c + 16 ≤ the row's length; the caller's contract for MARKED.
            unsafe {
                let at = key_rows[jj].as_ptr().add(c);
                if MARKED {
                    T::lanes(at)
                } else {
                    T::lanes_finite(at)
                }
            }
        });
        for r in 0..R {
            // SAFETY: r · d + c + 16 ≤ R · d = queries.len().
            let qv = unsafe { _mm512_loadu_ps(queries.as_ptr().add(r * d + c)) };
            for (sums, k) in acc.iter_mut().zip(&kv) {
                sums[r] = _mm512_fmadd_ps(*k, qv, sums[r]);
            }
        }
    }
    acc
}

/// `TRANSPOSED[i] = 4 · (i mod 4) + i / 4`: where [`sum_lanes`] takes the vector whose sum
/// it returns in lane `i` (the transposition of a 4 × 4 index, its own inverse).
const TRANSPOSED: [usize; LANES] = {
    let mut t = [0; LANES];
    let mut i = 0;
    while i < LANES {
        t[i] = 4 * (i % 4) + i / 4;
        i += 1;
    }
    t
};

/// The sums of the lanes of sixteen vectors at once, lane `i` of the result the sum of
/// `v[TRANSPOSED[i]]`, in 45 shuffles and additions: each level adds the halves of pairs of
/// vectors into one (256-bit halves, then 128-bit quarters, then within the quarters). One
/// `_mm512_reduce_add_ps` per dot product took about as many instructions as the dot product's
/// multiply-adds over a 128-wide head.
#[target_feature(enable = "avx512f")]
#[inline]
fn sum_lanes(v: [__m512; LANES]) -> __m512 {
    // Halves: [x.q0 + x.q2, x.q1 + x.q3, y.q0 + y.q2, y.q1 + y.q3] for pairs (x, y).
    let halves: [__m512; 8] = std::array::from_fn(|p| {
        let (x, y) = (v[2 * p], v[2 * p + 1]);
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0b01_00_01_00>(x, y),
            _mm512_shuffle_f32x4::<0b11_10_11_10>(x, y),
        )
    });
    // Quarters: quarter k of `quarters[p]` holds four partial sums of `v[4p + k]`.
    let quarters: [__m512; 4] = std::array::from_fn(|p| {
        let (a, b) = (halves[2 * p], halves[2 * p + 1]);
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0b10_00_10_00>(a, b),
            _mm512_shuffle_f32x4::<0b11_01_11_01>(a, b),
        )
    });
    // Within each quarter: two partial sums of each of two vectors, then one of each of four.
    let pairs: [__m512; 2] = std::array::from_fn(|p| {
        let (a, b) = (quarters[2 * p], quarters[2 * p + 1]);
        _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b))
    });
    _mm512_add_ps(
        _mm512_shuffle_ps::<0b01_00_01_00>(pairs[0], pairs[1]),
        _mm512_shuffle_ps::<0b11_10_11_10>(pairs[0], pairs[1]),
    )
}

/// [`narrow_add_values`](super::narrow_add_values) on AVX-512F, shapes already checked:
/// `acc[r · d + c] += Σ_j weights[r · n + j] · scales.at(j) · values[j][c]`.
///
/// # Safety
/// The CPU has AVX-512F; `weights` is `(rows, n)`, `acc` `(rows, d)`, `rows` in `1..=8`.
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) unsafe fn add_values<T: Lanes16, S: RowScales>(
    values: RowsRef<'_, T>,
    scales: S,
    weights: &[f32],
    rows: usize,
    acc: &mut [f32],
) {
    let v = (values, scales);
    // `R · C` accumulators, 8 to 16, and `C` value vectors per key.
    // SAFETY (all arms): same contract as this function's.
    unsafe {
        match rows {
            1 => add_by::<T, S, 1, ONE_ROW_C>(v, weights, acc),
            2 => add_by::<T, S, 2, 4>(v, weights, acc),
            3 => add_by::<T, S, 3, 4>(v, weights, acc),
            4 => add_by::<T, S, 4, 4>(v, weights, acc),
            5 => add_by::<T, S, 5, 2>(v, weights, acc),
            6 => add_by::<T, S, 6, 2>(v, weights, acc),
            7 => add_by::<T, S, 7, 2>(v, weights, acc),
            _ => add_by::<T, S, 8, 2>(v, weights, acc),
        }
    }
}

/// `R` rows over the value blocks of [`for_each_value_block`]: in each block the columns
/// `16 · C` at a time (`R · C` accumulators held in registers across the block), then sixteen
/// at a time; the block walk adds the last `d mod 16` columns.
///
/// # Safety
/// AVX-512F; `weights.len() == R · n`, `acc.len() == R · d`.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn add_by<T: Lanes16, S: RowScales, const R: usize, const C: usize>(
    values: (RowsRef<'_, T>, S),
    weights: &[f32],
    acc: &mut [f32],
) {
    let d = values.0.ncols();
    let wide = d - d % (LANES * C);
    let whole = d - d % LANES;
    // SAFETY: the CPU has AVX-512BW (the caller's contract).
    let check = (whole, |row: &[T]| unsafe { T::holds_non_finite(row) });
    for_each_value_block::<T, S, R>(values, weights, acc, check, |pass, acc| {
        for c in (0..wide).step_by(LANES * C) {
            // SAFETY: c + 16 · C ≤ d; the caller's contract covers the rest.
            unsafe {
                if pass.marked {
                    columns::<T, R, C, true>(&pass, c, acc);
                } else {
                    columns::<T, R, C, false>(&pass, c, acc);
                }
            }
        }
        for c in (wide..whole).step_by(LANES) {
            // SAFETY: c + 16 ≤ d; as above. The marking path: at most one pass per block.
            unsafe { columns::<T, R, 1, true>(&pass, c, acc) };
        }
    });
}

/// Columns `c..c + 16 · C` of the `R` accumulator rows over the rows of the pass's block:
/// `acc[r][c..] += scaled[j][r] · value_j[c..]`, widened by [`Lanes16::lanes`] when `MARKED`
/// (the block may hold int8's non-finite code), else by [`Lanes16::lanes_finite`]. The same
/// columns of the next block's rows are prefetched into L2 meanwhile, as on the AVX2 path.
///
/// # Safety
/// AVX-512F; `c + 16 · C ≤ d`; `acc.len() == R · d`.
#[target_feature(enable = "avx512f,avx512bw")]
#[inline]
unsafe fn columns<T: Lanes16, const R: usize, const C: usize, const MARKED: bool>(
    pass: &super::narrow::ValueBlock<'_, '_, T, R>,
    c: usize,
    acc: &mut [f32],
) {
    let d = pass.block.ncols();
    let mut sums = [[_mm512_setzero_ps(); C]; R];
    for (r, row) in sums.iter_mut().enumerate() {
        for (k, sum) in row.iter_mut().enumerate() {
            // SAFETY: r · d + c + 16 · k + 16 ≤ R · d = acc.len().
            *sum = unsafe { _mm512_loadu_ps(acc.as_ptr().add(r * d + c + LANES * k)) };
        }
    }
    for (j, w) in pass.scaled.iter().enumerate() {
        if j < pass.ahead.nrows() {
            // SAFETY: c < d, the row's length; a prefetch never faults anyway.
            let later = unsafe { pass.ahead.row(j).as_slice().as_ptr().add(c) };
            _mm_prefetch::<_MM_HINT_T1>(later.cast::<i8>());
        }
        let value = pass.block.row(j).as_slice().as_ptr();
        let v: [__m512; C] = std::array::from_fn(|k| {
            // SAFETY: c + 16 · k + 16 ≤ c + 16 · C ≤ d, the row's length; without MARKED the
            // block holds no non-finite code (checked by the block walk).
            unsafe {
                let at = value.add(c + LANES * k);
                if MARKED {
                    T::lanes(at)
                } else {
                    T::lanes_finite(at)
                }
            }
        });
        for (row, p) in sums.iter_mut().zip(w) {
            let p = _mm512_set1_ps(*p);
            for (sum, lanes) in row.iter_mut().zip(&v) {
                *sum = _mm512_fmadd_ps(p, *lanes, *sum);
            }
        }
    }
    for (r, row) in sums.iter().enumerate() {
        for (k, sum) in row.iter().enumerate() {
            // SAFETY: as for the loads.
            unsafe { _mm512_storeu_ps(acc.as_mut_ptr().add(r * d + c + LANES * k), *sum) };
        }
    }
}
