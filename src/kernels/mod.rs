//! Numerical kernels: RoPE, RMSNorm, softmax, projections and the grouped attention core.
//! They know nothing of layers, caches or files.

mod attention;
mod norm;
mod projection;
mod rope;
mod simd;
mod softmax;
mod tiled;

pub use attention::{AttentionOperands, HeadLayout, grouped_attention, heads_to_rows};
pub use norm::rms_norm_rows;
pub use projection::{matmul, matmul_threads, project, project_to};
pub use rope::RopeTable;
pub use softmax::{causal_softmax_rows, softmax_in_place};
pub use tiled::{fast_exp, tiled_attention};

use crate::config::Kernel;

/// Causal grouped attention on the chosen kernel; both share one contract (see
/// [`grouped_attention`]): `out` is head-major `(batch, n_heads, s_q, v_dim)`.
pub fn attention(
    kernel: Kernel,
    seqs: &[AttentionOperands<'_>],
    layout: &HeadLayout,
    out: &mut [f32],
) {
    match kernel {
        Kernel::Naive => grouped_attention(seqs, layout, out),
        Kernel::Tiled => tiled_attention(seqs, layout, out),
    }
}
