//! A projection weight as a layer stores it (docs/design.md §5): f32, or bf16 rounded once from
//! the f32 master matrix. Products with it are in `projection.rs`; they widen the stored values
//! as they read them and accumulate in f32.

use faer::MatRef;

use super::convert::{bf16, round_to_bf16, widen_bf16};
use super::simd::RowsRef;
use crate::config::WeightDtype;
use crate::tensor::Matrix;

/// One projection matrix `W: (d_in, d_out)` of `y = x · W`, stored in its [`WeightDtype`].
///
/// f32 is the row-major [`Matrix`] the layers always had (faer takes its products, but for a
/// few rows, which `projection.rs`'s f32 loop takes); bf16 is the same row-major layout `(d_in, d_out)` in 2 bytes a value, each value
/// the master f32 rounded to nearest even with [`round_to_bf16`].
#[derive(Clone, Debug, PartialEq)]
pub struct Weight {
    stored: Stored,
}

#[derive(Clone, Debug, PartialEq)]
enum Stored {
    F32(Matrix),
    Bf16 {
        rows: usize,
        cols: usize,
        /// Row-major `(rows, cols)`.
        data: Vec<bf16>,
    },
}

/// A view of a [`Weight`] (or of a block of its columns), as the products read it: `(d_in,
/// d_out)`, rows contiguous for bf16.
#[derive(Clone, Copy, Debug)]
pub enum WeightRef<'a> {
    /// f32 values, any strides.
    F32(MatRef<'a, f32>),
    /// bf16 values, each row contiguous, any row stride.
    Bf16(RowsRef<'a, bf16>),
}

impl Weight {
    /// The weight `master: (d_in, d_out)` stored as `dtype`: kept as it is for f32, rounded
    /// once to bf16 otherwise.
    pub fn new(master: Matrix, dtype: WeightDtype) -> Self {
        match dtype {
            WeightDtype::F32 => Self {
                stored: Stored::F32(master),
            },
            WeightDtype::Bf16 => {
                let mut data = vec![bf16::ZERO; master.len()];
                round_to_bf16(master.data(), &mut data);
                Self {
                    stored: Stored::Bf16 {
                        rows: master.rows(),
                        cols: master.cols(),
                        data,
                    },
                }
            }
        }
    }

    /// The same weight stored as `dtype`, from the values it stores now: f32 to bf16 rounds
    /// (once: rounding a bf16 value again changes nothing), bf16 to f32 keeps the bf16 values
    /// widened (the unrounded master is not kept).
    pub fn into_dtype(self, dtype: WeightDtype) -> Self {
        if self.dtype() == dtype {
            return self;
        }
        Self::new(self.to_f32(), dtype)
    }

    /// `d_in`, the rows.
    pub fn rows(&self) -> usize {
        match &self.stored {
            Stored::F32(m) => m.rows(),
            Stored::Bf16 { rows, .. } => *rows,
        }
    }

    /// `d_out`, the columns.
    pub fn cols(&self) -> usize {
        match &self.stored {
            Stored::F32(m) => m.cols(),
            Stored::Bf16 { cols, .. } => *cols,
        }
    }

    /// Values stored, `d_in · d_out`.
    pub fn len(&self) -> usize {
        self.rows() * self.cols()
    }

    /// True when the weight has no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The stored type.
    pub fn dtype(&self) -> WeightDtype {
        match &self.stored {
            Stored::F32(_) => WeightDtype::F32,
            Stored::Bf16 { .. } => WeightDtype::Bf16,
        }
    }

    /// Bytes the stored values take, from the allocated buffer: `len · 4` for f32, `len · 2`
    /// for bf16.
    pub fn stored_bytes(&self) -> usize {
        match &self.stored {
            Stored::F32(m) => size_of_val(m.data()),
            Stored::Bf16 { data, .. } => size_of_val(data.as_slice()),
        }
    }

    /// The stored values widened to f32 (exact), `(d_in, d_out)`: what export writes and what
    /// a reference computes with.
    pub fn to_f32(&self) -> Matrix {
        match &self.stored {
            Stored::F32(m) => m.clone(),
            Stored::Bf16 { rows, cols, data } => {
                let mut wide = Matrix::zeros(*rows, *cols);
                widen_bf16(data, wide.data_mut());
                wide
            }
        }
    }

    /// The f32 matrix, when stored in f32 (a norm scale always is).
    pub fn as_f32(&self) -> Option<&Matrix> {
        match &self.stored {
            Stored::F32(m) => Some(m),
            Stored::Bf16 { .. } => None,
        }
    }

    /// The whole weight as a view.
    pub fn view(&self) -> WeightRef<'_> {
        match &self.stored {
            Stored::F32(m) => WeightRef::F32(m.view()),
            Stored::Bf16 { rows, cols, data } => WeightRef::Bf16(
                MatRef::from_row_major_slice(data, *rows, *cols)
                    .try_as_row_major()
                    .expect("a row-major slice has contiguous rows"),
            ),
        }
    }
}

impl From<Matrix> for Weight {
    /// An f32 weight.
    fn from(m: Matrix) -> Self {
        Self::new(m, WeightDtype::F32)
    }
}

impl<'a> WeightRef<'a> {
    /// `d_in`.
    pub fn nrows(&self) -> usize {
        match self {
            WeightRef::F32(w) => w.nrows(),
            WeightRef::Bf16(w) => w.nrows(),
        }
    }

    /// `d_out`.
    pub fn ncols(&self) -> usize {
        match self {
            WeightRef::F32(w) => w.ncols(),
            WeightRef::Bf16(w) => w.ncols(),
        }
    }

    /// Columns `start..start + n` (one head's block of a per-head weight).
    ///
    /// # Panics
    /// If the range is not within the columns.
    #[track_caller]
    pub fn subcols(self, start: usize, n: usize) -> Self {
        match self {
            WeightRef::F32(w) => WeightRef::F32(w.subcols(start, n)),
            WeightRef::Bf16(w) => WeightRef::Bf16(w.subcols(start, n)),
        }
    }
}

impl<'a> From<&'a Weight> for WeightRef<'a> {
    fn from(w: &'a Weight) -> Self {
        w.view()
    }
}

impl<'a> From<&'a Matrix> for WeightRef<'a> {
    fn from(w: &'a Matrix) -> Self {
        WeightRef::F32(w.view())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn master() -> Matrix {
        let data = (0..12).map(|i| 1.0 + i as f32 * 1.0e-3).collect();
        Matrix::from_vec(3, 4, data).unwrap()
    }

    #[test]
    fn bf16_stores_the_rounded_master_in_half_the_bytes() {
        let m = master();
        let w = Weight::new(m.clone(), WeightDtype::Bf16);
        assert_eq!((w.rows(), w.cols(), w.len()), (3, 4, 12));
        assert_eq!(w.dtype(), WeightDtype::Bf16);
        assert_eq!(w.stored_bytes(), 24);
        let mut rounded = vec![bf16::ZERO; 12];
        round_to_bf16(m.data(), &mut rounded);
        let want: Vec<f32> = rounded.iter().map(|v| v.to_f32()).collect();
        assert_eq!(w.to_f32().data(), want.as_slice());
        // The rounding did something: 1.001 is not a bf16.
        assert_ne!(w.to_f32(), m);
        assert!(w.as_f32().is_none());
    }

    #[test]
    fn f32_keeps_the_master_and_conversions_round_once() {
        let m = master();
        let w = Weight::from(m.clone());
        assert_eq!((w.dtype(), w.stored_bytes()), (WeightDtype::F32, 48));
        assert_eq!(w.as_f32(), Some(&m));
        let once = w.into_dtype(WeightDtype::Bf16);
        let twice = once.clone().into_dtype(WeightDtype::Bf16);
        assert_eq!(once, twice);
        let back = once.clone().into_dtype(WeightDtype::F32);
        assert_eq!(back.as_f32(), Some(&once.to_f32()));
    }

    #[test]
    fn a_column_block_views_the_same_values() {
        let w = Weight::new(master(), WeightDtype::Bf16);
        let wide = w.to_f32();
        match w.view().subcols(1, 2) {
            WeightRef::Bf16(block) => {
                assert_eq!((block.nrows(), block.ncols()), (3, 2));
                for r in 0..3 {
                    for c in 0..2 {
                        assert_eq!(block[(r, c)].to_f32(), wide.row(r)[1 + c]);
                    }
                }
            }
            WeightRef::F32(_) => panic!("a bf16 weight viewed as f32"),
        }
    }
}
