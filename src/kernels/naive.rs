//! The naive kernel: per query head, `softmax_causal(q_h · k_gᵀ · scale) · v_g` with the whole
//! `s_q × s_k` score block materialised, where query head `h` reads KV head
//! `g = h / (n_heads / n_kv_heads)`. The plain formulation, kept to show what the tiled kernel
//! gains. A head stored in bf16, f16 or int8 is widened to f32 whole before it is read.

use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

use super::layout::{AttentionOperands, HeadLayout};
use super::softmax::causal_softmax_rows;

/// Causal grouped attention over a batch of sequences, one task per (sequence, head) in
/// parallel, each allocating its own `s_q × s_k` score block. Same contract as
/// [`attention`](super::attention): `out` is head-major `(batch, n_heads, s_q, v_dim)`.
///
/// # Panics
/// If the operands disagree with `layout` or `out` has the wrong length (the layers build
/// them; this is not user input).
pub fn naive_attention(seqs: &[AttentionOperands<'_>], layout: &HeadLayout, out: &mut [f32]) {
    let s_q = seqs.first().map_or(0, |s| s.q.nrows());
    let block = s_q * layout.v_dim;
    assert_eq!(
        out.len(),
        seqs.len() * layout.n_heads * block,
        "output length"
    );
    if block == 0 {
        return;
    }
    let group = layout.n_heads / layout.n_kv_heads;
    out.par_chunks_mut(block)
        .enumerate()
        .for_each(|(i, out_h)| {
            let (b, h) = (i / layout.n_heads, i % layout.n_heads);
            let seq = &seqs[b];
            let g = h / group;
            let q_h = seq.q.subcols(h * layout.qk_dim, layout.qk_dim);
            let out_h = MatMut::from_row_major_slice_mut(out_h, s_q, layout.v_dim);
            // A stored head is widened to f32 whole, then read as an f32 one: the plain
            // baseline, with the values the tiled kernel reads.
            let (mut k_wide, mut v_wide) = (Vec::new(), Vec::new());
            let k_g = seq.k[g].to_f32(&mut k_wide);
            let v_g = seq.v[g].to_f32(&mut v_wide);
            attend_one_head(q_h, k_g, v_g, layout.scale, seq.first_query_position, out_h);
        });
}

/// `out = softmax_causal(q · kᵀ · scale) · v` for one head. `q: (s_q, d)`, `k: (s_k, d)`,
/// `v: (s_k, d_v)`, `out: (s_q, d_v)`. Runs sequentially: it is called inside the parallel
/// region, and nested parallelism only adds overhead.
fn attend_one_head(
    q: MatRef<'_, f32>,
    k: MatRef<'_, f32>,
    v: MatRef<'_, f32>,
    scale: f32,
    first_query_position: usize,
    mut out: MatMut<'_, f32>,
) {
    let (s_q, s_k) = (q.nrows(), k.nrows());
    assert!(
        first_query_position + s_q <= s_k,
        "a query must see its own key: queries end at {} but only {s_k} keys",
        first_query_position + s_q
    );
    let mut scores = vec![0.0f32; s_q * s_k];
    let scores_view = MatMut::from_row_major_slice_mut(&mut scores, s_q, s_k);
    faer::linalg::matmul::matmul(
        scores_view,
        Accum::Replace,
        q,
        k.transpose(),
        scale,
        Par::Seq,
    );
    causal_softmax_rows(&mut scores, s_k, first_query_position);
    let probs = MatRef::from_row_major_slice(&scores, s_q, s_k);
    // Keys after `first_query_position` are hidden from some queries, which give them weight
    // 0; but 0 · NaN (or 0 · ∞) is NaN, so the one product below would leak a non-finite
    // hidden value into queries that cannot see it. Checking those value rows (`s_q − 1` when
    // the keys end at the last query) is cheap beside the product; when one is not finite
    // (the run is failing anyway), each query takes its own product over its visible keys.
    let hidden = (first_query_position + 1).min(s_k);
    if v.subrows(hidden, s_k - hidden).is_all_finite() {
        faer::linalg::matmul::matmul(out, Accum::Replace, probs, v, 1.0f32, Par::Seq);
        return;
    }
    for i in 0..s_q {
        let visible = (first_query_position + i + 1).min(s_k);
        faer::linalg::matmul::matmul(
            out.as_mut().subrows_mut(i, 1),
            Accum::Replace,
            probs.submatrix(i, 0, 1, visible),
            v.subrows(0, visible),
            1.0f32,
            Par::Seq,
        );
    }
}
