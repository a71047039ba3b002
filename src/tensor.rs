//! A dense row-major `f32` matrix and its faer views.

use faer::{MatMut, MatRef};

use crate::error::{Error, Result};

/// A dense row-major matrix of `f32`: `rows × cols`, element `(r, c)` at `data[r * cols + c]`.
///
/// Activations are `(tokens, features)`, one row per token; a weight is `(d_in, d_out)` and a
/// projection is `y = x · W`. Row-major storage makes a row a contiguous slice (one token, one
/// cache entry) and has no padding, so `len() * 4` is exactly the bytes it holds.
#[derive(Clone, Debug, PartialEq)]
pub struct Matrix {
    rows: usize,
    cols: usize,
    data: Vec<f32>,
}

impl Matrix {
    /// A `rows × cols` matrix of zeros.
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Self {
            rows,
            cols,
            data: vec![0.0; rows * cols],
        }
    }

    /// Wraps `data` (row-major, length `rows * cols`) as a matrix.
    pub fn from_vec(rows: usize, cols: usize, data: Vec<f32>) -> Result<Self> {
        if rows.checked_mul(cols) != Some(data.len()) {
            return Err(Error::Shape {
                what: "matrix data",
                expected: format!("{rows} × {cols} values"),
                actual: format!("{} values", data.len()),
            });
        }
        Ok(Self { rows, cols, data })
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// `(rows, cols)`.
    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// Number of elements, `rows * cols`.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// True when the matrix holds no element.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The elements, row-major.
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// The elements, row-major, mutable.
    pub fn data_mut(&mut self) -> &mut [f32] {
        &mut self.data
    }

    /// Row `r` as a slice of `cols` values.
    pub fn row(&self, r: usize) -> &[f32] {
        &self.data[r * self.cols..(r + 1) * self.cols]
    }

    /// Row `r` as a mutable slice of `cols` values.
    pub fn row_mut(&mut self, r: usize) -> &mut [f32] {
        &mut self.data[r * self.cols..(r + 1) * self.cols]
    }

    /// A faer view, `rows × cols`, row stride `cols`.
    pub fn view(&self) -> MatRef<'_, f32> {
        MatRef::from_row_major_slice(&self.data, self.rows, self.cols)
    }

    /// A mutable faer view, `rows × cols`, row stride `cols`.
    pub fn view_mut(&mut self) -> MatMut<'_, f32> {
        MatMut::from_row_major_slice_mut(&mut self.data, self.rows, self.cols)
    }

    /// Checks the shape, for operands handed in by a caller.
    pub(crate) fn expect_shape(&self, what: &'static str, rows: usize, cols: usize) -> Result<()> {
        if self.shape() != (rows, cols) {
            return Err(Error::Shape {
                what,
                expected: format!("({rows}, {cols})"),
                actual: format!("({}, {})", self.rows, self.cols),
            });
        }
        Ok(())
    }
}
