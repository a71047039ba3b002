//! Grouped-query attention: consecutive groups of `n_heads / n_kv_heads` query heads share a
//! key/value head (Hugging Face `repeat_kv` order).

use super::GroupedAttention;
use crate::config::Variant;
use crate::error::Result;

/// A GQA layer: `n_heads` query heads over `n_kv_heads` KV heads (`n_kv_heads` divides
/// `n_heads`; `n_heads` itself gives MHA's maths, 1 gives MQA's).
pub fn new(
    d_model: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    rope_theta: f64,
    seed: u64,
) -> Result<GroupedAttention> {
    GroupedAttention::with_shape(
        Variant::Gqa,
        [d_model, n_heads, n_kv_heads, head_dim],
        rope_theta,
        seed,
    )
}
