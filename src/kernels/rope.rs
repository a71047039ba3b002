//! Rotary position embedding, half-split ("rotate half", GPT-NeoX / Hugging Face Llama).

use crate::tensor::Matrix;

/// `cos` and `sin` of `p · θ_i` for each row's position `p` and each `i < rotary_dim / 2`,
/// with `θ_i = rope_theta^(-2i / rotary_dim)`.
///
/// Angles are formed in f64 because `p · θ_0 = p` reaches 10⁵ radians at long context, where f32
/// keeps only about two decimal places of the angle.
#[derive(Clone, Debug)]
pub struct RopeTable {
    half: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl RopeTable {
    /// A table with one row per entry of `positions`. `rotary_dim` must be even.
    pub fn new(positions: &[usize], rotary_dim: usize, rope_theta: f64) -> Self {
        debug_assert!(rotary_dim.is_multiple_of(2), "rotary_dim must be even");
        let half = rotary_dim / 2;
        let inv_freq: Vec<f64> = (0..half)
            .map(|i| rope_theta.powf(-2.0 * i as f64 / rotary_dim as f64))
            .collect();
        let mut cos = Vec::with_capacity(positions.len() * half);
        let mut sin = Vec::with_capacity(positions.len() * half);
        for &p in positions {
            for &f in &inv_freq {
                let (s, c) = (p as f64 * f).sin_cos();
                cos.push(c as f32);
                sin.push(s as f32);
            }
        }
        Self { half, cos, sin }
    }

    /// Rotates `v` (length `rotary_dim`) for the position of table row `row`: the pair
    /// `(a, b) = (v[i], v[i + half])` becomes `(a·cos − b·sin, b·cos + a·sin)`.
    pub fn rotate(&self, row: usize, v: &mut [f32]) {
        let cos = &self.cos[row * self.half..(row + 1) * self.half];
        let sin = &self.sin[row * self.half..(row + 1) * self.half];
        let (first, second) = v.split_at_mut(self.half);
        for i in 0..self.half {
            let (a, b) = (first[i], second[i]);
            first[i] = a * cos[i] - b * sin[i];
            second[i] = b * cos[i] + a * sin[i];
        }
    }

    /// Rotates, in every row `r` of `x` and for every head `h < n_heads`, the slice
    /// `x[r][h·head_stride + offset ..][..rotary_dim]`, at table row `r`.
    /// `x: (positions, ≥ n_heads·head_stride)`.
    pub fn rotate_heads(&self, x: &mut Matrix, n_heads: usize, head_stride: usize, offset: usize) {
        let width = 2 * self.half;
        for r in 0..x.rows() {
            let row = x.row_mut(r);
            for h in 0..n_heads {
                let start = h * head_stride + offset;
                self.rotate(r, &mut row[start..start + width]);
            }
        }
    }
}
