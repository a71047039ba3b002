//! The operand and head-layout types every attention kernel takes, and the gather from the
//! kernels' head-major output to the row-major layout the output projection reads.

use faer::MatRef;

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

/// Gathers a head-major `(batch, n_heads, s_q, d)` buffer into the row-major concatenation
/// `(batch · s_q, n_heads · d)` that the output projection reads: row `b · s_q + i` holds
/// heads `0..n_heads` of token `i` of sequence `b`, side by side.
///
/// # Panics
/// If `heads` is not `batch · n_heads · s_q · d` long or `rows` is not as long as `heads`.
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
