//! Multi-query attention: all query heads share one key/value head.

use super::GroupedAttention;
use crate::config::Variant;
use crate::error::Result;

/// An MQA layer: `n_heads` query heads over a single KV head, each `head_dim` wide.
pub fn new(
    d_model: usize,
    n_heads: usize,
    head_dim: usize,
    rope_theta: f64,
    seed: u64,
) -> Result<GroupedAttention> {
    GroupedAttention::with_shape(
        Variant::Mqa,
        [d_model, n_heads, 1, head_dim],
        rope_theta,
        seed,
    )
}
