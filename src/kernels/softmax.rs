//! Numerically stable softmax over whole rows, the naive kernel's. The tiled kernel keeps an
//! online softmax of its own over the same vector helpers.

use super::simd::{exp_shifted_sum, max_of};

/// Replaces `row` with `softmax(row)`, subtracting the maximum first so that finite scores of
/// any magnitude give finite results. A row holding a score that is not finite (NaN or ±∞)
/// comes out all NaN, so the poison reaches the output (the maximum is then NaN, see
/// `simd.rs`). An empty row is left empty.
///
/// The exponentials are the branch-free [`fast_exp`](super::simd::fast_exp) in eight lanes,
/// as in the tiled kernel, not libm's `expf`: one scalar libm call per score, right after
/// faer's AVX-512 products, stalled on Intel CPUs (a perf profile of a 256-token prefill put
/// 82% of `expf` on one instruction) and made this baseline 12× slower than its arithmetic, a
/// cost of the call, not of the algorithm.
pub fn softmax_in_place(row: &mut [f32]) {
    if row.is_empty() {
        return;
    }
    let max = max_of(row);
    let sum = exp_shifted_sum(row, max);
    let inv = 1.0 / sum;
    for v in row.iter_mut() {
        *v *= inv;
    }
}

/// Causal softmax over a `(s_q, s_k)` row-major score block whose query `i` sits at absolute
/// position `first_query_position + i` and whose keys sit at positions `0..s_k`: row `i` is
/// normalised over its visible keys `0..=first_query_position + i`, later keys get weight 0.
pub fn causal_softmax_rows(scores: &mut [f32], s_k: usize, first_query_position: usize) {
    for (i, row) in scores.chunks_exact_mut(s_k).enumerate() {
        let visible = (first_query_position + i + 1).min(s_k);
        let (seen, masked) = row.split_at_mut(visible);
        softmax_in_place(seen);
        masked.fill(0.0);
    }
}
