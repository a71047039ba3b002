//! The grouped attention core shared by MHA, MQA, GQA and both MLA paths: per query head,
//! `softmax_causal(q_h · k_gᵀ · scale) · v_g`, where query head `h` reads KV head
//! `g = h / (n_heads / n_kv_heads)`.

use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

use super::softmax::causal_softmax_rows;

/// How query heads map onto key/value heads, and the widths of each.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HeadLayout {
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads; divides `n_heads`.
    pub n_kv_heads: usize,
    /// Width of one query (and key) head.
    pub qk_dim: usize,
    /// Width of one value head (MLA absorbed: `kv_lora_rank`).
    pub v_dim: usize,
    /// Multiplier of the scores, usually `1 / sqrt(qk_dim)`; MLA absorbed keeps the scale of
    /// the unabsorbed head width.
    pub scale: f32,
}

/// One sequence's operands. Query column blocks of width `qk_dim` are heads.
#[derive(Clone, Debug)]
pub struct AttentionOperands<'a> {
    /// Queries, `(s_q, n_heads · qk_dim)`, already rotated.
    pub q: MatRef<'a, f32>,
    /// Keys per KV head, each `(s_k, qk_dim)`, at positions `0..s_k`.
    pub k: Vec<MatRef<'a, f32>>,
    /// Values per KV head, each `(s_k, v_dim)`.
    pub v: Vec<MatRef<'a, f32>>,
    /// Absolute position of query row 0; query `i` sees keys `0..=first_query_position + i`.
    pub first_query_position: usize,
}

/// Causal grouped attention over a batch of sequences, parallel over (sequence, head).
///
/// `out` is head-major, `(batch, n_heads, s_q, v_dim)`: the block of sequence `b`, head `h` is
/// `out[((b · n_heads) + h) · s_q · v_dim ..][.. s_q · v_dim]`, row-major `(s_q, v_dim)`.
/// Every sequence has the same `s_q`; each may hold a different number of keys.
///
/// # Panics
/// If the operands disagree with `layout` or `out` has the wrong length (the layers build
/// them; this is not user input).
pub fn grouped_attention(seqs: &[AttentionOperands<'_>], layout: &HeadLayout, out: &mut [f32]) {
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
            let (k_g, v_g) = (seq.k[g], seq.v[g]);
            let out_h = MatMut::from_row_major_slice_mut(out_h, s_q, layout.v_dim);
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
    out: MatMut<'_, f32>,
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
    faer::linalg::matmul::matmul(out, Accum::Replace, probs, v, 1.0f32, Par::Seq);
}

/// Gathers a head-major `(batch, n_heads, s_q, d)` buffer into the row-major concatenation
/// `(batch · s_q, n_heads · d)` that the output projection reads: row `b · s_q + i` holds
/// heads `0..n_heads` of token `i` of sequence `b`, side by side.
pub fn heads_to_rows(
    heads: &[f32],
    batch: usize,
    n_heads: usize,
    s_q: usize,
    d: usize,
    rows: &mut [f32],
) {
    assert_eq!(heads.len(), batch * n_heads * s_q * d, "head buffer length");
    assert_eq!(rows.len(), heads.len(), "row buffer length");
    for b in 0..batch {
        for h in 0..n_heads {
            for i in 0..s_q {
                let src = ((b * n_heads + h) * s_q + i) * d;
                let dst = (b * s_q + i) * n_heads * d + h * d;
                rows[dst..dst + d].copy_from_slice(&heads[src..src + d]);
            }
        }
    }
}
