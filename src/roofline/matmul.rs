//! The matmul ceiling: the fastest f32 product faer computes among several shapes, operand
//! layouts and ways of sharing the threads. One square size is not a ceiling: an attention
//! kernel multiplying other shapes, or one product per thread as the kernels run their heads,
//! can beat it (PyTorch's causal prefill beat a 2048² square by 9% on another machine).
//!
//! faer 0.24 has no packing switch: `faer::linalg::matmul::matmul(dst, accum, lhs, rhs, alpha,
//! par)` is the whole interface, and its x86-64 kernel decides for itself, packing the left
//! operand when its rows are not contiguous in memory or the shape is large. So packing is tried
//! the one way faer exposes it: the left operand column-major (read in place when the shape
//! allows) and row-major (always packed).

use std::sync::Mutex;
use std::time::Instant;

use faer::{Accum, Mat, MatRef, Par};

use crate::results::{Layout, MatmulParallel, MatmulPattern};

/// Head width of the attention-like shapes: 128, as in Llama 3, Mistral and DeepSeek's values.
const HEAD_DIM: usize = 128;

/// The products tried for a largest side `n`, as `(m, k, n)`: squares of `n / 2` and `n`; the
/// two products of attention over `n` tokens, scores `(n × d)·(d × n)` and weighted values
/// `(n × n)·(n × d)` with `d` = [`HEAD_DIM`] (at most `n`); and a tall-skinny projection of
/// `4n` rows, `(4n × n/4)·(n/4 × n/4)`.
fn shapes(n: usize) -> [(usize, usize, usize); 5] {
    let d = HEAD_DIM.min(n);
    let (half, quarter) = ((n / 2).max(1), (n / 4).max(1));
    [
        (half, half, half),
        (n, n, n),
        (n, d, n),
        (n, n, d),
        (4 * n, quarter, quarter),
    ]
}

/// Every pattern for a largest side `n` on `threads` threads: each shape of [`shapes`] with
/// the left operand column- and row-major, split over the threads and, with more than one,
/// also one product per thread.
pub(super) fn patterns(n: usize, threads: usize) -> Vec<MatmulPattern> {
    let parallel: &[MatmulParallel] = if threads == 1 {
        &[MatmulParallel::Split]
    } else {
        &[MatmulParallel::Split, MatmulParallel::PerThread]
    };
    let mut patterns = Vec::new();
    for (m, k, n) in shapes(n) {
        for lhs in [Layout::ColumnMajor, Layout::RowMajor] {
            for &parallel in parallel {
                patterns.push(MatmulPattern {
                    m,
                    k,
                    n,
                    lhs,
                    parallel,
                });
            }
        }
    }
    patterns
}

/// The best GFLOP/s of `patterns` on `threads` threads (the current rayon pool's, for
/// [`MatmulParallel::PerThread`]), and the pattern that reached it. Each product runs
/// `repeats + 1` times, the fastest counting; FLOPs are `2·m·k·n` per product.
///
/// # Panics
/// If `patterns` is empty.
pub(super) fn matmul_ceiling(
    patterns: &[MatmulPattern],
    threads: usize,
    repeats: usize,
) -> (f64, MatmulPattern) {
    patterns
        .iter()
        .map(|p| (gflops(p, threads, repeats), *p))
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .expect("at least one matmul pattern")
}

/// The GFLOP/s of the fastest of `repeats + 1` runs of `pattern`.
fn gflops(pattern: &MatmulPattern, threads: usize, repeats: usize) -> f64 {
    let &MatmulPattern {
        m,
        k,
        n,
        lhs,
        parallel,
    } = pattern;
    let value = |i: usize, j: usize| ((i * 3 + j) % 5) as f32 * 0.1;
    let storage = match lhs {
        Layout::ColumnMajor => Mat::<f32>::from_fn(m, k, value),
        // Stored `k × m` and viewed transposed: rows contiguous.
        Layout::RowMajor => Mat::<f32>::from_fn(k, m, |j, i| value(i, j)),
    };
    let a = match lhs {
        Layout::ColumnMajor => storage.as_ref(),
        Layout::RowMajor => storage.as_ref().transpose(),
    };
    let b = Mat::<f32>::from_fn(k, n, |i, j| ((i + 2 * j) % 7) as f32 * 0.1);
    let products = match parallel {
        MatmulParallel::Split => 1,
        MatmulParallel::PerThread => threads,
    };
    let outputs: Vec<Mutex<Mat<f32>>> = (0..products)
        .map(|_| Mutex::new(Mat::zeros(m, n)))
        .collect();
    let mut best = f64::INFINITY;
    for _ in 0..=repeats {
        let start = Instant::now();
        match parallel {
            MatmulParallel::Split => {
                let par = if threads == 1 {
                    Par::Seq
                } else {
                    Par::rayon(threads)
                };
                multiply(&outputs[0], a, b.as_ref(), par);
            }
            MatmulParallel::PerThread => {
                rayon::broadcast(|ctx| multiply(&outputs[ctx.index()], a, b.as_ref(), Par::Seq));
            }
        }
        best = best.min(start.elapsed().as_secs_f64());
    }
    std::hint::black_box(&outputs);
    products as f64 * 2.0 * (m * k * n) as f64 / best / 1e9
}

/// `dst = a · b` with faer.
fn multiply(dst: &Mutex<Mat<f32>>, a: MatRef<'_, f32>, b: MatRef<'_, f32>, par: Par) {
    let mut dst = dst.lock().unwrap_or_else(|e| e.into_inner());
    faer::linalg::matmul::matmul(dst.as_mut(), Accum::Replace, a, b, 1.0f32, par);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_include_squares_attention_and_tall_skinny_products() {
        assert_eq!(
            shapes(2048),
            [
                (1024, 1024, 1024),
                (2048, 2048, 2048),
                (2048, 128, 2048),
                (2048, 2048, 128),
                (8192, 512, 512)
            ]
        );
        assert!(
            shapes(1)
                .iter()
                .all(|&(m, k, n)| m >= 1 && k >= 1 && n >= 1)
        );
    }

    #[test]
    fn one_thread_splits_nothing_and_more_also_run_a_product_each() {
        let one = patterns(256, 1);
        assert_eq!(one.len(), 10);
        assert!(one.iter().all(|p| p.parallel == MatmulParallel::Split));
        let two = patterns(256, 2);
        assert_eq!(two.len(), 20);
        assert!(two.iter().any(|p| p.parallel == MatmulParallel::PerThread));
    }
}
