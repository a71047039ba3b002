//! Small vector loops of the softmax, and running them with the best instructions the CPU
//! has. The crate is built for the x86-64 baseline (SSE2, no FMA); [`with_best_features`]
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
