//! Small vector loops for the decode path, and running them with the best instructions the
//! CPU has. The crate is built for the x86-64 baseline (SSE2, no FMA); [`with_best_features`]
//! recompiles the closure it is given for AVX2 + FMA and runs that when the CPU has them.

/// Runs `f`, compiled for AVX2 and FMA when the CPU supports them (checked at run time).
#[inline(always)]
pub fn with_best_features<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: `with_avx2_fma` only needs AVX2 and FMA, and the CPU has both (checked above).
        return unsafe { with_avx2_fma(f) };
    }
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn with_avx2_fma<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// `y += alpha · x`.
#[inline(always)]
pub fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += alpha * xi;
    }
}

/// `out[r] = scale · Σ_i queries[r·d + i] · key[i]` for up to 8 rows at once, each key value
/// loaded once for all rows. `queries: (rows, d)` row-major, `key: (d)`.
#[inline(always)]
pub fn dots(queries: &[f32], key: &[f32], scale: f32, out: &mut [f32]) {
    let d = key.len();
    let rows = out.len();
    debug_assert!(rows <= 8 && queries.len() == rows * d);
    let mut acc = [[0.0f32; 8]; 8];
    let chunks = d / 8;
    for c in 0..chunks {
        let k = &key[c * 8..c * 8 + 8];
        for (r, acc_r) in acc.iter_mut().enumerate().take(rows) {
            let q = &queries[r * d + c * 8..r * d + c * 8 + 8];
            for i in 0..8 {
                acc_r[i] += q[i] * k[i];
            }
        }
    }
    for (r, o) in out.iter_mut().enumerate() {
        let tail: f32 = (chunks * 8..d).map(|i| queries[r * d + i] * key[i]).sum();
        *o = (acc[r].iter().sum::<f32>() + tail) * scale;
    }
}

/// The largest value of `x` (−∞ for an empty slice), with eight independent lanes so that
/// the reduction is not one long dependency chain.
#[inline(always)]
pub fn max_of(x: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let chunks = x.chunks_exact(8);
    let tail = chunks
        .remainder()
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    for c in chunks {
        for i in 0..8 {
            lanes[i] = if c[i] > lanes[i] { c[i] } else { lanes[i] };
        }
    }
    lanes.iter().copied().fold(tail, f32::max)
}

/// Replaces every `v` of `x` by `fast_exp(v − shift)` and returns their sum, accumulated in
/// eight lanes.
#[inline(always)]
pub fn exp_shifted_sum(x: &mut [f32], shift: f32) -> f32 {
    let mut lanes = [0.0f32; 8];
    let mut chunks = x.chunks_exact_mut(8);
    for c in &mut chunks {
        for i in 0..8 {
            c[i] = super::tiled::fast_exp(c[i] - shift);
            lanes[i] += c[i];
        }
    }
    let mut tail = 0.0f32;
    for v in chunks.into_remainder() {
        *v = super::tiled::fast_exp(*v - shift);
        tail += *v;
    }
    lanes.iter().sum::<f32>() + tail
}
