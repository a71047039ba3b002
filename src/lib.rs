//! attnbench: what attention variants cost on the CPU.
//!
//! Multi-head (MHA), multi-query (MQA), grouped-query (GQA) and multi-head latent attention
//! (MLA) as full layers (projections, RoPE, causal attention over a KV cache, output
//! projection), built on faer and run in parallel with rayon. The maths is docs/design.md §1
//! of the repository; every layer implements [`AttentionLayer`].
//!
//! Layers of the crate, lowest first. A module imports only modules of lower layers, so no
//! module reaches one above it and no two import each other (`tests/layering.rs` reads this
//! list and checks every `crate::` path in `src/` against it):
//! 1. [`error`], [`fsutil`], [`sysinfo`]: the library's error type; atomic file writes; the
//!    CPU caches as the operating system reports them.
//! 2. [`config`], [`tensor`]: layer shapes, enums and their checks; the row-major matrix.
//! 3. [`weights`], [`kernels`], [`cost`], [`presets`]: seeded weights; the numerical kernels;
//!    FLOPs, bytes and memory by formula; the real models' shapes and their resolver.
//! 4. [`kv_cache`]: the cache, allocated to capacity.
//! 5. [`layer`]: the trait every variant implements.
//! 6. [`variants`]: MHA, MQA, GQA (one grouped layer) and MLA.
//! 7. [`experiment`], [`planner`], [`export`]: experiment files into a checked grid; the
//!    KV-cache planner; export cases.
//! 8. [`results`]: the results files, their directory, the environment record.
//! 9. [`harness`], [`roofline`], [`compare`]: measuring points and running experiments; the
//!    machine's ceilings; two result sets point by point.
//! 10. [`report`]: tables and charts from a results file.
//!
//! The `attnbench` binary (`src/main.rs`, `src/cli/`) sits above them all.
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
pub mod sysinfo;
pub mod tensor;
pub mod variants;
pub mod weights;

pub use config::{
    Dtype, GroupedConfig, Kernel, LayerSpec, MlaConfig, MlaPath, Precision, Variant, WeightDtype,
};
pub use error::{Error, Result};
pub use kv_cache::KvCache;
pub use layer::{AttentionLayer, LayerInfo};
pub use tensor::Matrix;
pub use variants::{
    GroupedAttention, MultiHeadLatentAttention, build_layer, build_layer_with,
    build_layer_with_kernel,
};
