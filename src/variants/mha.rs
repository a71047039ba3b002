//! Multi-head attention: one key/value head per query head.

use super::GroupedAttention;
use crate::config::Variant;
use crate::error::Result;

/// An MHA layer: `n_heads` query heads and as many KV heads, each `head_dim` wide.
pub fn new(
    d_model: usize,
    n_heads: usize,
    head_dim: usize,
    rope_theta: f64,
    seed: u64,
) -> Result<GroupedAttention> {
    GroupedAttention::with_shape(
        Variant::Mha,
        [d_model, n_heads, n_heads, head_dim],
        rope_theta,
        seed,
    )
}
