//! Projections `y = x · W` on faer, parallel over the current rayon pool, with `W` stored in f32
//! or bf16 ([`Weight`]).
//!
//! f32 weights go straight to faer. bf16 weights are read two ways:
//! - a few rows of `x` (at most eight: decode) read each weight once through the narrow
//!   kernels ([`narrow_add_values`], or [`narrow_scores`] for `x · Wᵀ`), widened in
//!   registers: the product is bound by the weight bytes, so the output columns are split
//!   into a few contiguous ranges per thread and every thread streams its own weights;
//! - more rows (prefill): [`WEIGHT_ROW_BLOCK`] weight rows at a time widened into one f32
//!   buffer, allocated once per call and reused, and faer accumulates block after block.

use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

use super::convert::{bf16, widen_bf16};
use super::narrow::{StoredRows, narrow_add_values, narrow_scores};
use super::simd::{FEW_ROWS_MAX, RowsRef};
use super::weight::WeightRef;
use crate::tensor::Matrix;

/// Weight rows widened at a time by the prefill path of a bf16 weight: deep enough that faer's
/// inner products run long (its own depth blocking is of this order), small enough that the
/// buffer (`256 · d_out` f32) stays a fraction of the weight.
pub const WEIGHT_ROW_BLOCK: usize = 256;

/// Output column ranges per thread on the few-row path: several, so a thread that finishes
/// early takes another instead of waiting on the slowest.
const RANGES_PER_THREAD: usize = 4;

/// The narrowest output column range on the few-row path, a multiple of the 32 columns the
/// vector loop of `narrow_add_values` takes at once.
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

/// `dst = lhs · w` on views: `lhs: (t, d_in)`, `w: (d_in, d_out)`, `dst: (t, d_out)`. f32 is
/// [`matmul`]; bf16 reads each weight once for `t ≤ 8`, by widened row blocks otherwise.
///
/// # Panics
/// If the shapes disagree.
#[track_caller]
pub fn matmul_weight(dst: MatMut<'_, f32>, lhs: MatRef<'_, f32>, w: WeightRef<'_>, par: Par) {
    match w {
        WeightRef::F32(w) => matmul(dst, lhs, w, par),
        WeightRef::Bf16(w) => {
            check_shapes(&dst, &lhs, (w.nrows(), w.ncols()));
            if few_rows(&dst) {
                few_rows_bf16(dst, lhs, w, par, Product::Forward);
            } else {
                blocks_bf16(dst, lhs, w, par);
            }
        }
    }
}

/// `dst = lhs · wᵀ` on views: `lhs: (t, d_out)`, `w: (d_in, d_out)`, `dst: (t, d_in)` (MLA's
/// absorb, `q_nope_h · W_uk_hᵀ`). f32 is [`matmul`] on the transpose; bf16 reads each weight
/// once for `t ≤ 8` (a dot product of each `lhs` row with each weight row), and otherwise
/// widens the whole view once (a per-head block, small) for faer.
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
    match w {
        WeightRef::F32(w) => matmul(dst, lhs, w.transpose(), par),
        WeightRef::Bf16(w) => {
            check_shapes(&dst, &lhs, (w.ncols(), w.nrows()));
            if few_rows(&dst) {
                few_rows_bf16(dst, lhs, w, par, Product::Transposed);
            } else {
                let mut wide = vec![0.0f32; w.nrows() * w.ncols()];
                widen_rows(w, &mut wide, par);
                let wide = MatRef::from_row_major_slice(&wide, w.nrows(), w.ncols());
                matmul(dst, lhs, wide.transpose(), par);
            }
        }
    }
}

/// `dst: (t, n)`, `lhs: (t, k)` and the right operand `(k, n)`.
#[track_caller]
fn check_shapes(dst: &MatMut<'_, f32>, lhs: &MatRef<'_, f32>, (k, n): (usize, usize)) {
    assert_eq!(lhs.ncols(), k, "projection: lhs columns vs weight rows");
    assert_eq!(dst.nrows(), lhs.nrows(), "projection: output rows");
    assert_eq!(dst.ncols(), n, "projection: output columns");
}

/// True when the narrow kernels take the product (they take 1 to 8 rows).
fn few_rows(dst: &MatMut<'_, f32>) -> bool {
    (1..=FEW_ROWS_MAX).contains(&dst.nrows())
}

/// Which product of a bf16 weight the few-row path computes.
#[derive(Clone, Copy)]
enum Product {
    /// `lhs · w`: output columns are the weight's columns.
    Forward,
    /// `lhs · wᵀ`: output columns are the weight's rows.
    Transposed,
}

/// The few-row bf16 product: output columns in contiguous ranges (several per thread when
/// `par` is parallel), each range's `(t, width)` block accumulated in its own part of one
/// buffer by the narrow kernels, then copied to `dst`.
fn few_rows_bf16(
    mut dst: MatMut<'_, f32>,
    lhs: MatRef<'_, f32>,
    w: RowsRef<'_, bf16>,
    par: Par,
    product: Product,
) {
    let (rows, n) = (dst.nrows(), dst.ncols());
    if n == 0 {
        return;
    }
    // The narrow kernels read `lhs` as row-major `(rows, k)`: a few rows, copied once.
    let x: Vec<f32> = (0..rows)
        .flat_map(|r| (0..lhs.ncols()).map(move |c| lhs[(r, c)]))
        .collect();
    let width = range_width(n, par);
    let mut out = vec![0.0f32; rows * n];
    let run = |(i, acc): (usize, &mut [f32])| {
        let (start, cols) = (i * width, acc.len() / rows);
        match product {
            Product::Forward => {
                let values = StoredRows::Bf16(w.subcols(start, cols));
                narrow_add_values(values, &x, rows, acc);
            }
            Product::Transposed => {
                narrow_scores(StoredRows::Bf16(w.subrows(start, cols)), &x, rows, 1.0, acc);
            }
        }
    };
    if width < n {
        out.par_chunks_mut(rows * width).enumerate().for_each(run);
    } else {
        run((0, &mut out));
    }
    for (i, block) in out.chunks(rows * width).enumerate() {
        let cols = block.len() / rows;
        for r in 0..rows {
            for (c, v) in block[r * cols..(r + 1) * cols].iter().enumerate() {
                dst[(r, i * width + c)] = *v;
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
        // Llama 3 8B's 4096 columns on 2 threads: 8 ranges of 512.
        assert_eq!(range_width(4096, Par::rayon(2)), 512);
        assert_eq!(range_width(4100, Par::rayon(2)), 544);
        assert_eq!(range_width(7, Par::rayon(2)), MIN_RANGE);
        for n in [1, 33, 1000, 14336] {
            let width = range_width(n, Par::rayon(4));
            assert!(
                width.is_multiple_of(32) && width >= MIN_RANGE,
                "{n}: {width}"
            );
        }
    }

    /// Each output column sums its terms in the same order however the columns are split, so
    /// the split changes no bit.
    #[test]
    fn the_column_split_changes_no_bit() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let w = Weight::new(random(&mut state, 70, 1000), WeightDtype::Bf16);
        for t in [1, 3, 8] {
            let x = random(&mut state, t, 70);
            let [seq, split] = [Par::Seq, Par::rayon(3)].map(|par| {
                let mut y = Matrix::zeros(t, 1000);
                matmul_weight(y.view_mut(), x.view(), w.view(), par);
                y
            });
            assert_eq!(seq, split, "t {t}");
        }
    }
}
