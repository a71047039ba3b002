//! attnbench: what attention variants cost on the CPU.
//!
//! Multi-head (MHA), multi-query (MQA), grouped-query (GQA) and multi-head latent attention
//! (MLA) as full layers (projections, RoPE, causal attention over a KV cache, output
//! projection), built on faer and run in parallel with rayon. The maths is DESIGN §1 of the
//! project; every layer implements [`AttentionLayer`].
//!
//! Layers of the crate, each using only those below it: [`config`], [`kernels`] and
//! [`tensor`]; [`kv_cache`], [`weights`], [`cost`]; [`layer`]; [`variants`]; [`export`]
//! and [`planner`].
#![warn(missing_docs)]

pub mod compare;
pub mod config;
pub mod cost;
pub mod error;
pub mod experiment;
pub mod export;
pub mod fsutil;
pub mod harness;
pub mod kernels;
pub mod kv_cache;
pub mod layer;
pub mod planner;
pub mod presets;
pub mod report;
pub mod results;
pub mod roofline;
pub mod tensor;
pub mod variants;
pub mod weights;

pub use config::{GroupedConfig, Kernel, LayerSpec, MlaConfig, MlaPath, Variant};
pub use error::{Error, Result};
pub use kv_cache::KvCache;
pub use layer::{AttentionLayer, LayerInfo};
pub use tensor::Matrix;
pub use variants::{
    GroupedAttention, MultiHeadLatentAttention, build_layer, build_layer_with_kernel,
};
