//! Projections `y = x · W` on faer, parallel over the current rayon pool.

use faer::{Accum, MatMut, MatRef, Par};

use crate::tensor::Matrix;

/// The parallelism for a matmul that is not already inside a parallel region: every thread of
/// the current rayon pool (the harness sizes the pool per point), or sequential for a pool of 1.
pub fn matmul_threads() -> Par {
    match rayon::current_num_threads() {
        1 => Par::Seq,
        n => Par::rayon(n),
    }
}

/// `x · w` as a new matrix. `x: (t, d_in)`, `w: (d_in, d_out)`, result `(t, d_out)`.
///
/// # Panics
/// If `x.cols() != w.rows()`; callers check user-supplied shapes before.
pub fn project(x: MatRef<'_, f32>, w: &Matrix) -> Matrix {
    let mut y = Matrix::zeros(x.nrows(), w.cols());
    matmul(y.view_mut(), x, w.view(), matmul_threads());
    y
}

/// `out = x · w`, into a matrix the caller owns. `x: (t, d_in)`, `w: (d_in, d_out)`,
/// `out: (t, d_out)`.
///
/// # Panics
/// If the shapes disagree; callers check user-supplied shapes before.
pub fn project_to(out: &mut Matrix, x: MatRef<'_, f32>, w: &Matrix) {
    matmul(out.view_mut(), x, w.view(), matmul_threads());
}

/// `dst = lhs · rhs` on views, with the given parallelism (`Par::Seq` inside a parallel region).
#[track_caller]
pub fn matmul(dst: MatMut<'_, f32>, lhs: MatRef<'_, f32>, rhs: MatRef<'_, f32>, par: Par) {
    faer::linalg::matmul::matmul(dst, Accum::Replace, lhs, rhs, 1.0f32, par);
}
