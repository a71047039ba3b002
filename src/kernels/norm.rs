//! RMSNorm.

use crate::tensor::Matrix;

/// For every row of `x`, normalises the slice `row[offset .. offset + scale.len()]`:
/// `v / sqrt(mean(v²) + eps) ⊙ scale`. The mean is accumulated in f64.
pub fn rms_norm_rows(x: &mut Matrix, offset: usize, scale: &[f32], eps: f64) {
    let width = scale.len();
    for r in 0..x.rows() {
        let v = &mut x.row_mut(r)[offset..offset + width];
        let mean_sq = v.iter().map(|&a| f64::from(a) * f64::from(a)).sum::<f64>() / width as f64;
        let inv_rms = (1.0 / (mean_sq + eps).sqrt()) as f32;
        for (a, &g) in v.iter_mut().zip(scale) {
            *a = *a * inv_rms * g;
        }
    }
}
