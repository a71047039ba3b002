//! The four variants. MHA, MQA and GQA are one grouped layer with different `n_kv_heads`;
//! MLA has its own, with two execution paths over one latent cache.

pub mod gqa;
mod grouped;
pub mod mha;
mod mla;
pub mod mqa;

pub use grouped::GroupedAttention;
pub use mla::MultiHeadLatentAttention;

use crate::config::{Kernel, LayerSpec, Precision};
use crate::error::Result;
use crate::layer::AttentionLayer;

/// Builds the layer a spec describes, weights drawn from `seed`. The harness, the benches and
/// `export` all build layers here, so they time and check the same thing.
pub fn build_layer(spec: &LayerSpec, seed: u64) -> Result<Box<dyn AttentionLayer>> {
    build_layer_with_kernel(spec, Kernel::default(), seed)
}

/// [`build_layer`] with the attention core on `kernel`.
pub fn build_layer_with_kernel(
    spec: &LayerSpec,
    kernel: Kernel,
    seed: u64,
) -> Result<Box<dyn AttentionLayer>> {
    build_layer_with(spec, kernel, Precision::default(), seed)
}

/// [`build_layer`] with the attention core on `kernel` and the cache and weights stored as
/// `precision` says. The master weights drawn from `seed` are the same whatever `precision`:
/// a bf16 layer's weights are the f32 layer's, rounded (docs/design.md §5).
pub fn build_layer_with(
    spec: &LayerSpec,
    kernel: Kernel,
    precision: Precision,
    seed: u64,
) -> Result<Box<dyn AttentionLayer>> {
    Ok(match spec {
        LayerSpec::Grouped { variant, config } => Box::new(
            GroupedAttention::new(*variant, config.clone(), seed)?
                .with_kernel(kernel)
                .with_precision(precision),
        ),
        LayerSpec::Mla { config, path } => Box::new(
            MultiHeadLatentAttention::new(config.clone(), *path, seed)?
                .with_kernel(kernel)
                .with_precision(precision),
        ),
    })
}
