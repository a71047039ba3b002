//! Projections `y = x · W` on faer, parallel over the current rayon pool, with `W` stored in f32
//! or bf16 ([`Weight`]).
//!
//! - A few rows of `x` (at most eight: decode) read each weight once, widened in registers for
//!   bf16 (the narrow kernels), by an f32 loop of fused multiply-adds for f32: the product is
//!   bound by the weight bytes, so the work is cut so that every thread streams long runs of
//!   its own weights: `x · W` by the weight's depth (chunks of whole rows, their partial
//!   products added in a fixed order), `x · Wᵀ` by output ranges (blocks of whole rows).
//! - More rows (prefill): f32 goes straight to faer; bf16 widens [`WEIGHT_ROW_BLOCK`] weight
//!   rows at a time into one f32 buffer, allocated once per call and reused, and faer
//!   accumulates block after block.
//! - MLA's per-head products ([`matmul_heads_transposed`], [`matmul_heads`]): every head in one
//!   parallel region, each head's product sequential on the paths above.

use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

use super::convert::{bf16, widen_bf16};
use super::narrow::{StoredRows, narrow_add_values, narrow_scores};
#[cfg(target_arch = "x86_64")]
use super::simd::has_avx2_fma;
use super::simd::{FEW_ROWS_MAX, RowsRef, few_row_scores};
use super::weight::WeightRef;
use crate::tensor::Matrix;

/// Weight rows widened at a time by the prefill path of a bf16 weight: deep enough that faer's
/// inner products run long (its own depth blocking is of this order), small enough that the
/// buffer (`256 · d_out` f32) stays a fraction of the weight.
pub const WEIGHT_ROW_BLOCK: usize = 256;

/// Output ranges per thread of the few-row `x · Wᵀ`: one. Narrower ranges make a thread
/// read more rows of the weight at once in shorter runs (a range of 512 bf16 columns of a
/// 4096-wide weight is 1 KiB every 8 KiB), which the prefetchers follow badly: at Llama 3 8B's
/// 4096 × 4096 on the 2-core EPYC, ranges of 512 columns read about half as fast as ranges
/// of 2048 (the `precision/projection` benchmark times this product in f32 and bf16).
const RANGES_PER_THREAD: usize = 1;

/// The narrowest output range of the few-row `x · Wᵀ`, a multiple of 32 outputs.
const MIN_RANGE: usize = 64;

/// The parallelism for a matmul that is not already inside a parallel region: every thread of
/// the current rayon pool (the harness sizes the pool per point), or sequential for a pool of 1.
pub fn matmul_threads() -> Par {
    match rayon::current_num_threads() {
        1 => Par::Seq,
        n => Par::rayon(n),
    }
}

/// `x · w` as a new matrix. `x: (t, d_in)`, `w: (d_in, d_out)` (a [`Weight`](super::Weight),
/// its view, or an f32 [`Matrix`]), result `(t, d_out)`.
///
/// # Panics
/// If `x.cols() != w.rows()`; callers check user-supplied shapes before.
pub fn project<'w>(x: MatRef<'_, f32>, w: impl Into<WeightRef<'w>>) -> Matrix {
    let w = w.into();
    let mut y = Matrix::zeros(x.nrows(), w.ncols());
    matmul_weight(y.view_mut(), x, w, matmul_threads());
    y
}

/// `out = x · w`, into a matrix the caller owns. `x: (t, d_in)`, `w: (d_in, d_out)`,
/// `out: (t, d_out)`.
///
/// # Panics
/// If the shapes disagree; callers check user-supplied shapes before.
pub fn project_to<'w>(out: &mut Matrix, x: MatRef<'_, f32>, w: impl Into<WeightRef<'w>>) {
    matmul_weight(out.view_mut(), x, w.into(), matmul_threads());
}

/// `dst = lhs · rhs` on views, with the given parallelism (`Par::Seq` inside a parallel region).
#[track_caller]
pub fn matmul(dst: MatMut<'_, f32>, lhs: MatRef<'_, f32>, rhs: MatRef<'_, f32>, par: Par) {
    faer::linalg::matmul::matmul(dst, Accum::Replace, lhs, rhs, 1.0f32, par);
}

/// `dst = lhs · w` on views: `lhs: (t, d_in)`, `w: (d_in, d_out)`, `dst: (t, d_out)`. For
/// `t ≤ 8` (decode) every weight is read once by a few-row loop, the output columns split
/// into one range per thread (f32 weights whose rows are contiguous, and bf16); otherwise f32
/// is [`matmul`] and bf16 is widened by row blocks for faer.
///
/// # Panics
/// If the shapes disagree.
#[track_caller]
pub fn matmul_weight(dst: MatMut<'_, f32>, lhs: MatRef<'_, f32>, w: WeightRef<'_>, par: Par) {
    check_shapes(&dst, &lhs, (w.nrows(), w.ncols()));
    if few_rows(&dst)
        && let Some(rows) = RowsWeight::of(w)
    {
        return few_rows_product(dst, lhs, rows, par, Product::Forward);
    }
    match w {
        WeightRef::F32(w) => matmul(dst, lhs, w, par),
        WeightRef::Bf16(w) => blocks_bf16(dst, lhs, w, par),
    }
}

/// `dst = lhs · wᵀ` on views: `lhs: (t, d_out)`, `w: (d_in, d_out)`, `dst: (t, d_in)` (MLA's
/// absorb, `q_nope_h · W_uk_hᵀ`). For `t ≤ 8` each weight row is read once and dotted with
/// every `lhs` row (f32 rows contiguous, and bf16); otherwise f32 is [`matmul`] on the
/// transpose and bf16 is widened whole once (a per-head block, small) for faer.
///
/// # Panics
/// If the shapes disagree.
#[track_caller]
pub fn matmul_weight_transposed(
    dst: MatMut<'_, f32>,
    lhs: MatRef<'_, f32>,
    w: WeightRef<'_>,
    par: Par,
) {
    check_shapes(&dst, &lhs, (w.ncols(), w.nrows()));
    if few_rows(&dst)
        && let Some(rows) = RowsWeight::of(w)
    {
        return few_rows_product(dst, lhs, rows, par, Product::Transposed);
    }
    match w {
        WeightRef::F32(w) => matmul(dst, lhs, w.transpose(), par),
        WeightRef::Bf16(w) => {
            let mut wide = vec![0.0f32; w.nrows() * w.ncols()];
            widen_rows(w, &mut wide, par);
            let wide = MatRef::from_row_major_slice(&wide, w.nrows(), w.ncols());
            matmul(dst, lhs, wide.transpose(), par);
        }
    }
}

/// Per-head products with the transpose of a per-head weight (MLA's absorb at every head in
/// one call): for every head `h < n_heads`,
/// `dst[:, h·dst_stride ..][.. d_in] = lhs[:, h·lhs_stride ..][.. n] · W_hᵀ`, with
/// `W_h = w[:, h·n ..][.. n]` the head's column block, `n = d_out / n_heads`. `w: (d_in,
/// d_out)`, `lhs: (t, ≥ (n_heads − 1)·lhs_stride + n)`, `dst: (t, ≥ (n_heads − 1)·dst_stride +
/// d_in)`; other columns of `dst` are left as they are.
///
/// One parallel region over the heads (each thread takes a contiguous run of heads, so the
/// weight is streamed once, each thread its own column blocks), each head's product
/// sequential: the few-row loop for `t ≤ 8`, faer otherwise.
///
/// # Panics
/// If `n_heads` is 0 or does not divide `d_out`, or a head's columns are out of range.
#[track_caller]
pub fn matmul_heads_transposed(
    dst: MatMut<'_, f32>,
    dst_stride: usize,
    lhs: MatRef<'_, f32>,
    lhs_stride: usize,
    w: WeightRef<'_>,
    n_heads: usize,
) {
    let (d_in, n) = head_block(w, n_heads);
    let heads = head_columns(dst, dst_stride, d_in, n_heads);
    let work = |(h, dst): (usize, MatMut<'_, f32>)| {
        let lhs = lhs.subcols(h * lhs_stride, n);
        matmul_weight_transposed(dst, lhs, w.subcols(h * n, n), Par::Seq);
    };
    let per_thread = n_heads.div_ceil(rayon::current_num_threads());
    heads
        .into_par_iter()
        .enumerate()
        .with_min_len(per_thread)
        .for_each(work);
}

/// Per-block products with a per-head weight (MLA's un-absorb at every head in one call):
/// `lhs` and `dst` are `blocks` row-major blocks one after another, block `i` `(rows, d_in)`
/// in `lhs` and `(rows, n)` in `dst`, and `dst_i = lhs_i · W_{i mod n_heads}` with
/// `W_h = w[:, h·n ..][.. n]`, `w: (d_in, n_heads · n)`. Head-major `(batch, n_heads, rows,
/// ·)` activations are such blocks.
///
/// One parallel region over the blocks (contiguous runs of blocks per thread), each product
/// sequential: the few-row loop for `rows ≤ 8`, faer otherwise.
///
/// # Panics
/// If `n_heads` is 0 or does not divide `w`'s columns, or the slices are not whole blocks of
/// the same count.
#[track_caller]
pub fn matmul_heads(dst: &mut [f32], lhs: &[f32], rows: usize, w: WeightRef<'_>, n_heads: usize) {
    let (d_in, n) = head_block(w, n_heads);
    if rows == 0 || n == 0 || d_in == 0 {
        dst.fill(0.0);
        return;
    }
    let blocks = lhs.len() / (rows * d_in);
    assert_eq!(lhs.len(), blocks * rows * d_in, "matmul_heads: lhs blocks");
    assert_eq!(dst.len(), blocks * rows * n, "matmul_heads: dst blocks");
    let per_thread = blocks.div_ceil(rayon::current_num_threads());
    dst.par_chunks_mut(rows * n)
        .zip(lhs.par_chunks(rows * d_in))
        .enumerate()
        .with_min_len(per_thread)
        .for_each(|(i, (o, x))| {
            let dst = MatMut::from_row_major_slice_mut(o, rows, n);
            let lhs = MatRef::from_row_major_slice(x, rows, d_in);
            let h = i % n_heads;
            matmul_weight(dst, lhs, w.subcols(h * n, n), Par::Seq);
        });
}

/// `(d_in, n)`: the shape of one head's column block of `w`.
#[track_caller]
fn head_block(w: WeightRef<'_>, n_heads: usize) -> (usize, usize) {
    assert!(
        n_heads > 0 && w.ncols().is_multiple_of(n_heads),
        "per-head weight: {} heads over {} columns",
        n_heads,
        w.ncols()
    );
    (w.nrows(), w.ncols() / n_heads)
}

/// Head `h`'s columns `h·stride .. h·stride + width` of `dst`, as separate mutable views.
#[track_caller]
fn head_columns(
    dst: MatMut<'_, f32>,
    stride: usize,
    width: usize,
    n_heads: usize,
) -> Vec<MatMut<'_, f32>> {
    assert!(
        width <= stride || n_heads == 1,
        "head columns overlap: width {width}, stride {stride}"
    );
    let mut heads = Vec::with_capacity(n_heads);
    let mut rest = dst;
    for h in 0..n_heads {
        let skip = if h == 0 { 0 } else { stride - width };
        let (_, tail) = rest.split_at_col_mut(skip);
        let (head, tail) = tail.split_at_col_mut(width);
        heads.push(head);
        rest = tail;
    }
    heads
}

/// `dst: (t, n)`, `lhs: (t, k)` and the right operand `(k, n)`.
#[track_caller]
fn check_shapes(dst: &MatMut<'_, f32>, lhs: &MatRef<'_, f32>, (k, n): (usize, usize)) {
    assert_eq!(lhs.ncols(), k, "projection: lhs columns vs weight rows");
    assert_eq!(dst.nrows(), lhs.nrows(), "projection: output rows");
    assert_eq!(dst.ncols(), n, "projection: output columns");
}

/// True when the few-row loops take the product (they take 1 to 8 rows).
fn few_rows(dst: &MatMut<'_, f32>) -> bool {
    (1..=FEW_ROWS_MAX).contains(&dst.nrows())
}

/// Which product of a weight the few-row path computes.
#[derive(Clone, Copy)]
enum Product {
    /// `lhs · w`: output columns are the weight's columns.
    Forward,
    /// `lhs · wᵀ`: output columns are the weight's rows.
    Transposed,
}

/// A weight whose rows are contiguous, as the few-row loops read it.
#[derive(Clone, Copy)]
enum RowsWeight<'a> {
    F32(RowsRef<'a, f32>),
    Bf16(RowsRef<'a, bf16>),
}

impl<'a> RowsWeight<'a> {
    /// `w` with contiguous rows; `None` for an f32 view whose rows are not (a transpose).
    fn of(w: WeightRef<'a>) -> Option<Self> {
        match w {
            WeightRef::F32(w) => w.try_as_row_major().map(RowsWeight::F32),
            WeightRef::Bf16(w) => Some(RowsWeight::Bf16(w)),
        }
    }

    /// Rows `start..start + n`.
    fn subrows(self, start: usize, n: usize) -> Self {
        match self {
            RowsWeight::F32(w) => RowsWeight::F32(w.subrows(start, n)),
            RowsWeight::Bf16(w) => RowsWeight::Bf16(w.subrows(start, n)),
        }
    }

    /// `out = x · w` or `x · wᵀ`, sequential: `x` row-major `(rows, k)`, `out` row-major
    /// `(rows, outputs)`.
    fn product(self, product: Product, x: &[f32], rows: usize, out: &mut [f32]) {
        match (self, product) {
            (RowsWeight::F32(w), Product::Forward) => forward_f32(w, x, rows, out),
            (RowsWeight::F32(w), Product::Transposed) => few_row_scores(w, x, rows, 1.0, out),
            (RowsWeight::Bf16(w), Product::Forward) => {
                out.fill(0.0);
                narrow_add_values(StoredRows::Bf16(w), x, rows, out);
            }
            (RowsWeight::Bf16(w), Product::Transposed) => {
                narrow_scores(StoredRows::Bf16(w), x, rows, 1.0, out);
            }
        }
    }
}

/// The few-row product, into `dst` through one buffer of its `(t, n)` values (with one row
/// the buffer is `dst`'s own row when that row is contiguous, and `lhs`'s row is read in
/// place: no copy either way). [`Product::Transposed`] splits its outputs (the weight's rows)
/// into one contiguous range per thread; [`Product::Forward`] splits the weight's depth
/// ([`forward_by_depth`]). Either way each thread reads long contiguous runs of the weight.
fn few_rows_product(
    mut dst: MatMut<'_, f32>,
    lhs: MatRef<'_, f32>,
    w: RowsWeight<'_>,
    par: Par,
    product: Product,
) {
    let (rows, n) = (dst.nrows(), dst.ncols());
    if n == 0 {
        return;
    }
    // The loops read `lhs` as row-major `(rows, k)`: borrowed when one contiguous row is
    // that, else a few rows copied once.
    let packed: Vec<f32>;
    let x: &[f32] = match lhs.try_as_row_major() {
        Some(row) if rows == 1 => row.row(0).as_slice(),
        _ => {
            packed = (0..rows)
                .flat_map(|r| (0..lhs.ncols()).map(move |c| lhs[(r, c)]))
                .collect();
            &packed
        }
    };
    let width = range_width(n, par);
    let compute = |out: &mut [f32]| match product {
        Product::Forward => forward_by_depth(w, x, rows, out, par),
        Product::Transposed if width < n => transposed_by_range(w, x, rows, out, width),
        Product::Transposed => w.product(product, x, rows, out),
    };
    if rows == 1
        && let Some(row) = dst.as_mut().try_as_row_major_mut()
    {
        return compute(row.row_mut(0).as_slice_mut());
    }
    let mut out = vec![0.0f32; rows * n];
    compute(&mut out);
    for r in 0..rows {
        for (c, v) in out[r * n..(r + 1) * n].iter().enumerate() {
            dst[(r, c)] = *v;
        }
    }
}

/// `out = x · wᵀ` for a few rows (`x: (rows, k)`, `out: (rows, n)`, both row-major), the
/// outputs (the weight's rows, so each range is one contiguous block of the weight) in ranges
/// of `width` run in parallel. With several rows each range's `(rows, width)` block is
/// computed apart and copied into place.
fn transposed_by_range(w: RowsWeight<'_>, x: &[f32], rows: usize, out: &mut [f32], width: usize) {
    let n = out.len() / rows;
    let run = |(i, acc): (usize, &mut [f32])| {
        let cols = acc.len() / rows;
        w.subrows(i * width, cols)
            .product(Product::Transposed, x, rows, acc);
    };
    if rows == 1 {
        return out.par_chunks_mut(width).enumerate().for_each(run);
    }
    let mut blocks = vec![0.0f32; rows * n];
    blocks
        .par_chunks_mut(rows * width)
        .enumerate()
        .for_each(run);
    for (i, block) in blocks.chunks(rows * width).enumerate() {
        let cols = block.len() / rows;
        for (r, values) in block.chunks(cols).enumerate() {
            out[r * n + i * width..][..cols].copy_from_slice(values);
        }
    }
}

/// Weight rows per depth chunk of the forward few-row product: a chunk is a contiguous block
/// of the weight (4 MiB of a 4096-wide f32 weight), so a thread that takes a run of chunks
/// streams one long piece of memory.
const DEPTH_CHUNK: usize = 256;

/// `out = x · w` for a few rows (`x: (rows, k)` row-major, `out: (rows, n)` row-major), the
/// weight's depth cut into chunks of [`DEPTH_CHUNK`] rows, the chunks run in parallel when
/// `par` is, their partial products added in chunk order. The chunks do not depend on the
/// thread count, so neither do the bits.
///
/// Why the depth and not the output columns: a thread that owns a range of columns reads a
/// part of every weight row, runs of `n / threads` values kilobytes apart, which the hardware
/// prefetchers follow badly (ranges of 512 columns of a 4096-wide weight read about half as
/// fast as 2048); a chunk of whole rows is one run.
fn forward_by_depth(w: RowsWeight<'_>, x: &[f32], rows: usize, out: &mut [f32], par: Par) {
    let k = x.len() / rows;
    let chunks = k.div_ceil(DEPTH_CHUNK);
    if chunks <= 1 {
        return w.product(Product::Forward, x, rows, out);
    }
    // Each chunk's `(rows, len)` block of `x` contiguous: for one row, `x` itself.
    let by_chunk: Vec<f32>;
    let xc: &[f32] = if rows == 1 {
        x
    } else {
        by_chunk = (0..chunks)
            .flat_map(|c| {
                let (start, len) = (c * DEPTH_CHUNK, DEPTH_CHUNK.min(k - c * DEPTH_CHUNK));
                (0..rows).flat_map(move |r| x[r * k + start..][..len].iter().copied())
            })
            .collect();
        &by_chunk
    };
    let block = out.len();
    let mut partials = vec![0.0f32; chunks * block];
    let run = |(c, part): (usize, &mut [f32])| {
        let (start, len) = (c * DEPTH_CHUNK, DEPTH_CHUNK.min(k - c * DEPTH_CHUNK));
        let x = &xc[rows * start..][..rows * len];
        w.subrows(start, len)
            .product(Product::Forward, x, rows, part);
    };
    match par {
        Par::Seq => partials.chunks_mut(block).enumerate().for_each(run),
        Par::Rayon(_) => partials.par_chunks_mut(block).enumerate().for_each(run),
    }
    out.copy_from_slice(&partials[..block]);
    for part in partials.chunks(block).skip(1) {
        for (o, p) in out.iter_mut().zip(part) {
            *o += p;
        }
    }
}

/// `out = x · w` for f32 weight rows: `w: (k, n)`, `x` row-major `(rows, k)`, `out` row-major
/// `(rows, n)`, `rows` in `1..=8`. Each output value is one chain of fused multiply-adds over
/// `k` in order, so the column split changes no bit. Why not faer: with one row its product
/// runs at well under the read bandwidth (about 18 of 62 GB/s on the 2-core EPYC at 4096 ×
/// 4096), and decode's step is those weight reads.
fn forward_f32(w: RowsRef<'_, f32>, x: &[f32], rows: usize, out: &mut [f32]) {
    let (k, n) = (w.nrows(), w.ncols());
    assert!(
        (1..=FEW_ROWS_MAX).contains(&rows),
        "forward_f32 takes 1 to {FEW_ROWS_MAX} rows"
    );
    assert_eq!(x.len(), rows * k, "forward_f32: rows of x");
    assert_eq!(out.len(), rows * n, "forward_f32: output");
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA (checked above); the shapes are checked above.
        unsafe {
            match rows {
                1 => avx2_fma::forward::<1>(w, x, out),
                2 => avx2_fma::forward::<2>(w, x, out),
                3 => avx2_fma::forward::<3>(w, x, out),
                4 => avx2_fma::forward::<4>(w, x, out),
                5 => avx2_fma::forward::<5>(w, x, out),
                6 => avx2_fma::forward::<6>(w, x, out),
                7 => avx2_fma::forward::<7>(w, x, out),
                _ => avx2_fma::forward::<8>(w, x, out),
            }
        }
        return;
    }
    out.fill(0.0);
    for j in 0..k {
        let row = w.row(j).as_slice();
        for r in 0..rows {
            let a = x[r * k + j];
            for (o, &v) in out[r * n..(r + 1) * n].iter_mut().zip(row) {
                *o += a * v;
            }
        }
    }
}

/// Weight rows the f32 few-row loop takes per pass over its columns: eight streams of
/// memory read side by side per thread (the read calibration's best patterns read eight or
/// more), the accumulators loaded and stored once per eight rows.
const F32_ROW_BLOCK: usize = 8;

#[cfg(target_arch = "x86_64")]
mod avx2_fma {
    use std::arch::x86_64::*;

    use super::{F32_ROW_BLOCK, RowsRef};

    /// [`super::forward_f32`] for `R` rows on AVX2 + FMA: weight rows in blocks of
    /// [`F32_ROW_BLOCK`]; in each block the columns eight at a time, `R` accumulators in
    /// registers across the block's rows; the last `n mod 8` columns one by one, in the same
    /// order. Each pass prefetches the same columns of the next block's rows into L2: with
    /// short rows (576 or 1024 values) a block's rows are short runs that the hardware
    /// prefetchers pick up too late, and without it the loop read such a weight at about half
    /// the speed faer did.
    ///
    /// # Safety
    /// AVX2 and FMA; `x.len() == R · k`, `out.len() == R · n`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn forward<const R: usize>(w: RowsRef<'_, f32>, x: &[f32], out: &mut [f32]) {
        let (k, n) = (w.nrows(), w.ncols());
        let whole = n - n % 8;
        out.fill(0.0);
        for j0 in (0..k).step_by(F32_ROW_BLOCK) {
            let depth = F32_ROW_BLOCK.min(k - j0);
            let mut row_ptrs = [w.row(j0).as_slice().as_ptr(); F32_ROW_BLOCK];
            let mut a = [[0.0f32; R]; F32_ROW_BLOCK];
            for j in 0..depth {
                row_ptrs[j] = w.row(j0 + j).as_slice().as_ptr();
                for (r, a) in a[j].iter_mut().enumerate() {
                    *a = x[r * k + j0 + j];
                }
            }
            for c in (0..whole).step_by(8) {
                if c % 16 == 0 {
                    for &row in &row_ptrs[..depth] {
                        // The same line of the next block's row. A prefetch never faults.
                        let ahead = row.wrapping_add(F32_ROW_BLOCK * n + c);
                        _mm_prefetch::<_MM_HINT_T1>(ahead.cast::<i8>());
                    }
                }
                // SAFETY: c + 8 ≤ n, the length of every row and of every output row.
                unsafe {
                    let mut sums = [_mm256_setzero_ps(); R];
                    for (r, s) in sums.iter_mut().enumerate() {
                        *s = _mm256_loadu_ps(out.as_ptr().add(r * n + c));
                    }
                    for j in 0..depth {
                        let v = _mm256_loadu_ps(row_ptrs[j].add(c));
                        for (r, s) in sums.iter_mut().enumerate() {
                            *s = _mm256_fmadd_ps(_mm256_set1_ps(a[j][r]), v, *s);
                        }
                    }
                    for (r, s) in sums.iter().enumerate() {
                        _mm256_storeu_ps(out.as_mut_ptr().add(r * n + c), *s);
                    }
                }
            }
            for c in whole..n {
                for r in 0..R {
                    let mut s = out[r * n + c];
                    for j in 0..depth {
                        // SAFETY: c < n, the row's length.
                        s = a[j][r].mul_add(unsafe { *row_ptrs[j].add(c) }, s);
                    }
                    out[r * n + c] = s;
                }
            }
        }
    }
}

/// Output columns per range of the few-row path: all `n` when sequential, else about
/// `n / (threads · RANGES_PER_THREAD)`, rounded up to a multiple of 32 and at least
/// [`MIN_RANGE`].
fn range_width(n: usize, par: Par) -> usize {
    let threads = match par {
        Par::Seq => 1,
        Par::Rayon(threads) => threads.get(),
    };
    if threads == 1 {
        return n;
    }
    let per_range = n.div_ceil(threads * RANGES_PER_THREAD).next_multiple_of(32);
    per_range.max(MIN_RANGE)
}

/// The prefill bf16 product: [`WEIGHT_ROW_BLOCK`] weight rows at a time widened into one
/// reused buffer, faer adding each block's `lhs` columns times it into `dst`.
fn blocks_bf16(mut dst: MatMut<'_, f32>, lhs: MatRef<'_, f32>, w: RowsRef<'_, bf16>, par: Par) {
    let (k, n) = (w.nrows(), w.ncols());
    if k == 0 {
        // An empty sum: faer with depth 0 would do the same.
        dst.fill(0.0);
        return;
    }
    let mut wide = vec![0.0f32; WEIGHT_ROW_BLOCK.min(k) * n];
    for start in (0..k).step_by(WEIGHT_ROW_BLOCK) {
        let depth = WEIGHT_ROW_BLOCK.min(k - start);
        let block = &mut wide[..depth * n];
        widen_rows(w.subrows(start, depth), block, par);
        let accum = if start == 0 {
            Accum::Replace
        } else {
            Accum::Add
        };
        let rhs = MatRef::from_row_major_slice(block, depth, n);
        let lhs = lhs.subcols(start, depth);
        faer::linalg::matmul::matmul(dst.as_mut(), accum, lhs, rhs, 1.0f32, par);
    }
}

/// `wide` (row-major, `w`'s shape) = `w` widened, rows in parallel when `par` is.
fn widen_rows(w: RowsRef<'_, bf16>, wide: &mut [f32], par: Par) {
    let n = w.ncols();
    if n == 0 {
        return;
    }
    let widen = |(r, row): (usize, &mut [f32])| widen_bf16(w.row(r).as_slice(), row);
    match par {
        Par::Seq => wide.chunks_mut(n).enumerate().for_each(widen),
        Par::Rayon(_) => wide.par_chunks_mut(n).enumerate().for_each(widen),
    }
}

#[cfg(test)]
mod tests {
    use super::super::simd::tests::values;
    use super::super::weight::Weight;
    use super::*;
    use crate::config::WeightDtype;

    fn random(state: &mut u64, rows: usize, cols: usize) -> Matrix {
        Matrix::from_vec(rows, cols, values(state, rows * cols)).unwrap()
    }

    #[test]
    fn ranges_are_whole_vector_widths_a_few_per_thread() {
        assert_eq!(range_width(4096, Par::Seq), 4096);
        assert_eq!(range_width(4096, Par::rayon(1)), 4096);
        // Llama 3 8B's 4096 columns on 2 threads: 2 ranges of 2048.
        assert_eq!(range_width(4096, Par::rayon(2)), 2048);
        assert_eq!(range_width(4100, Par::rayon(2)), 2080);
        assert_eq!(range_width(7, Par::rayon(2)), MIN_RANGE);
        for n in [1, 33, 1000, 14336] {
            let width = range_width(n, Par::rayon(4));
            assert!(
                width.is_multiple_of(32) && width >= MIN_RANGE,
                "{n}: {width}"
            );
        }
    }

    /// Each output value sums its terms in the same order however the work is split (depth
    /// chunks that do not depend on the threads, output ranges), so the thread count changes
    /// no bit, for f32 and bf16 weights, over several depth chunks.
    #[test]
    fn the_thread_count_changes_no_bit() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let k = 2 * DEPTH_CHUNK + 70;
        for dtype in [WeightDtype::F32, WeightDtype::Bf16] {
            let w = Weight::new(random(&mut state, k, 1000), dtype);
            for t in [1, 3, 8] {
                let x = random(&mut state, t, k);
                let [seq, split] = [Par::Seq, Par::rayon(3)].map(|par| {
                    let mut y = Matrix::zeros(t, 1000);
                    matmul_weight(y.view_mut(), x.view(), w.view(), par);
                    y
                });
                assert_eq!(seq, split, "{dtype:?} t {t}");
            }
        }
    }

    /// `x · w` (or `x · wᵀ`) of the stored values, in f64.
    fn reference(x: MatRef<'_, f32>, w: &Matrix, transposed: bool) -> Vec<f64> {
        let (k, n) = if transposed {
            (w.cols(), w.rows())
        } else {
            (w.rows(), w.cols())
        };
        let at = |j: usize, c: usize| {
            let v = if transposed { w.row(c)[j] } else { w.row(j)[c] };
            f64::from(v)
        };
        (0..x.nrows())
            .flat_map(|r| (0..n).map(move |c| (r, c)))
            .map(|(r, c)| (0..k).map(|j| f64::from(x[(r, j)]) * at(j, c)).sum())
            .collect()
    }

    #[track_caller]
    fn assert_close(got: MatRef<'_, f32>, want: &[f64], label: &str) {
        let n = got.ncols();
        let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
        for (i, &w) in want.iter().enumerate() {
            let g = f64::from(got[(i / n, i % n)]);
            assert!((g - w).abs() <= 1e-5 * scale, "{label} [{i}]: {g} vs {w}");
        }
    }

    /// Both products, every path (few rows and faer; f32 and bf16; sequential and split), at
    /// odd shapes, against the f64 product of the stored values.
    #[test]
    fn products_match_a_plain_reference() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for dtype in [WeightDtype::F32, WeightDtype::Bf16] {
            for (k, n) in [(1, 1), (7, 9), (33, 70), (17, 129), (DEPTH_CHUNK + 3, 37)] {
                let w = Weight::new(random(&mut state, k, n), dtype);
                let wide = w.to_f32();
                for t in [1, 2, 5, 8, 9] {
                    for par in [Par::Seq, Par::rayon(3)] {
                        let label = format!("{dtype:?} {k}x{n} t {t} {par:?}");
                        let x = random(&mut state, t, k);
                        let mut y = Matrix::zeros(t, n);
                        matmul_weight(y.view_mut(), x.view(), w.view(), par);
                        assert_close(y.view(), &reference(x.view(), &wide, false), &label);
                        let x = random(&mut state, t, n);
                        let mut y = Matrix::zeros(t, k);
                        matmul_weight_transposed(y.view_mut(), x.view(), w.view(), par);
                        assert_close(y.view(), &reference(x.view(), &wide, true), &label);
                    }
                }
            }
        }
    }

    /// The per-head products against each head's plain product: odd head widths, strided head
    /// columns, 1 to 11 rows, f32 and bf16, in pools of 1 and 3 threads; the columns between
    /// heads are left as they were.
    #[test]
    fn per_head_products_match_each_heads_reference() {
        let mut state = 0x0123_4567_89ab_cdefu64;
        let (n_heads, d_in, n) = (3, 7, 5);
        let (lhs_stride, dst_stride) = (8, 9);
        for dtype in [WeightDtype::F32, WeightDtype::Bf16] {
            let w = Weight::new(random(&mut state, d_in, n_heads * n), dtype);
            let wide = w.to_f32();
            let head_weight = |h: usize| {
                let data = (0..d_in)
                    .flat_map(|j| wide.row(j)[h * n..(h + 1) * n].to_vec())
                    .collect();
                Matrix::from_vec(d_in, n, data).unwrap()
            };
            for threads in [1, 3] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                for t in [1, 2, 8, 11] {
                    let label = format!("{dtype:?} t {t} threads {threads}");
                    let q = random(&mut state, t, n_heads * lhs_stride);
                    let mut dst =
                        Matrix::from_vec(t, n_heads * dst_stride, vec![7.0; t * 27]).unwrap();
                    pool.install(|| {
                        matmul_heads_transposed(
                            dst.view_mut(),
                            dst_stride,
                            q.view(),
                            lhs_stride,
                            w.view(),
                            n_heads,
                        )
                    });
                    for h in 0..n_heads {
                        let lhs = q.view().subcols(h * lhs_stride, n);
                        let want = reference(lhs, &head_weight(h), true);
                        let got = dst.view().subcols(h * dst_stride, d_in);
                        assert_close(got, &want, &format!("{label} head {h}"));
                        let gap = dst.view().subcols(h * dst_stride + d_in, dst_stride - d_in);
                        assert!(
                            gap.row_iter().all(|r| r.iter().all(|&v| v == 7.0)),
                            "{label}"
                        );
                    }

                    // Un-absorb: two sequences of n_heads head-major blocks.
                    let blocks = 2 * n_heads;
                    let lhs = values(&mut state, blocks * t * d_in);
                    let mut out = vec![f32::NAN; blocks * t * n];
                    pool.install(|| matmul_heads(&mut out, &lhs, t, w.view(), n_heads));
                    for i in 0..blocks {
                        let x =
                            MatRef::from_row_major_slice(&lhs[i * t * d_in..][..t * d_in], t, d_in);
                        let want = reference(x, &head_weight(i % n_heads), false);
                        let got = MatRef::from_row_major_slice(&out[i * t * n..][..t * n], t, n);
                        assert_close(got, &want, &format!("{label} block {i}"));
                    }
                }
            }
        }
    }
}
