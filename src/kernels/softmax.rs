//! Numerically stable softmax.

/// Replaces `row` with `softmax(row)`, subtracting the maximum first so that scores of any
/// magnitude give finite results. An empty row is left empty.
pub fn softmax_in_place(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
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
