//! Numerical kernels: RoPE, RMSNorm, softmax, projections and the grouped attention core.
//! They know nothing of layers, caches or files.

mod attention;
mod norm;
mod projection;
mod rope;
mod softmax;

pub use attention::{AttentionOperands, HeadLayout, grouped_attention, heads_to_rows};
pub use norm::rms_norm_rows;
pub use projection::{matmul, matmul_threads, project, project_to};
pub use rope::RopeTable;
pub use softmax::{causal_softmax_rows, softmax_in_place};
