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
