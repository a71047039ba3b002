//! The one trait every attention layer implements.

use serde::Serialize;

use crate::config::{LayerSpec, MlaPath, Precision, Variant};
use crate::error::{Error, Result};
use crate::kernels::Weight;
use crate::kv_cache::{KvCache, PlaneSpec};
use crate::tensor::Matrix;

/// What a layer is, for tables and files.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LayerInfo {
    /// The variant.
    pub variant: Variant,
    /// The MLA path, `None` for the grouped variants.
    pub mla_path: Option<MlaPath>,
    /// The full shape.
    pub spec: LayerSpec,
    /// Weights, counted from the allocated matrices (norm scales included), whatever their
    /// stored type.
    pub params: usize,
    /// How the layer stores its cache and its projection weights.
    pub precision: Precision,
    /// Values the cache holds per token (K and V, or MLA's latent and rope key).
    pub kv_values_per_token: usize,
    /// Bytes the cache stores per token in the layer's `kv_dtype`, int8's scales included
    /// ([`LayerSpec::kv_bytes_per_token`]; `kv_values_per_token · 4` for f32): what
    /// [`KvCache::analytic_bytes`] counts per token of capacity.
    pub kv_bytes_per_token: usize,
}

impl LayerInfo {
    /// The record of a layer of shape `spec` storing as `precision` and holding `weights`:
    /// the variant and path from the shape, the parameters counted from the matrices, the
    /// cache width and bytes by formula.
    pub fn of(spec: LayerSpec, precision: Precision, weights: &[(&'static str, &Weight)]) -> Self {
        let kv_values_per_token = spec.kv_values_per_token();
        let kv_bytes = spec.kv_bytes_per_token(precision.kv_dtype);
        Self {
            variant: spec.variant(),
            mla_path: spec.mla_path(),
            params: weights.iter().map(|(_, w)| w.len()).sum(),
            precision,
            kv_values_per_token,
            kv_bytes_per_token: kv_bytes
                .and_then(|b| b.try_into().ok())
                .unwrap_or(usize::MAX),
            spec,
        }
    }
}

/// A full attention layer: projections, RoPE, causal attention over a KV cache, output
/// projection (docs/design.md §1).
///
/// Activations are row-major, one row per token, sequences one after another: a batch of
/// `batch` sequences of `seq_len` tokens is `(batch · seq_len, d_model)`, and `batch` is the
/// cache's. Each sequence's new tokens sit at the positions after those its cache holds.
pub trait AttentionLayer: Send + Sync {
    /// Variant, shape, parameter count and analytic KV bytes per token. Builds a new record
    /// (the shape cloned, the weights counted): for tables and files, not for a timed step.
    fn info(&self) -> LayerInfo;

    /// Width of a token's activation, the columns of every step's input and output.
    fn d_model(&self) -> usize;

    /// The cache planes one sequence needs, in order.
    fn cache_planes(&self) -> Vec<PlaneSpec>;

    /// The weights as stored, by their names in docs/design.md (`w_q`, `w_k`, ..., `kv_norm`),
    /// in export order: projections in the layer's `weight_dtype`, RMSNorm scales in f32.
    fn weights(&self) -> Vec<(&'static str, &Weight)>;

    /// Runs `seq_len` new tokens per sequence through the layer, appending them to the cache.
    ///
    /// `x: (batch · seq_len, d_model)`, `out: (batch · seq_len, d_model)`. On error (a wrong
    /// shape, a cache without room) the cache is left as it was.
    fn prefill(&self, x: &Matrix, cache: &mut KvCache, out: &mut Matrix) -> Result<()>;

    /// Runs one new token per sequence: `x: (batch, d_model)`, `out: (batch, d_model)`.
    fn decode(&self, x: &Matrix, cache: &mut KvCache, out: &mut Matrix) -> Result<()> {
        x.expect_shape("decode input", cache.batch(), self.d_model())?;
        self.prefill(x, cache, out)
    }

    /// Random queries (and, for a layer that expands its cache, the expanded keys and
    /// values) for timing the attention core alone over `cache`, which already holds the
    /// `seq_len` new tokens of a step after its context.
    fn core_inputs(&self, cache: &KvCache, seq_len: usize, seed: u64) -> CoreInputs;

    /// The attention core alone (scores, softmax, weighted sum over the cache) on `inputs`;
    /// `out` has `inputs.out_len` values. Uses the same code as the full step.
    fn run_core(&self, inputs: &CoreInputs, cache: &KvCache, out: &mut [f32]);

    /// A cache of `capacity` tokens for each of `batch` sequences, stored in the layer's
    /// `kv_dtype`, allocated up front.
    fn new_cache(&self, batch: usize, capacity: usize) -> Result<KvCache> {
        let dtype = self.info().precision.kv_dtype;
        KvCache::new(batch, capacity, &self.cache_planes(), dtype)
    }
}

/// What the attention core reads besides the cache, prepared outside any timing.
#[derive(Clone, Debug)]
pub struct CoreInputs {
    /// Queries as the core reads them, `(batch · seq_len, n_heads · width)`, random normal.
    pub queries: Matrix,
    /// Per sequence, keys and values expanded from the cache (MLA naive); empty otherwise.
    pub expanded: Vec<(Matrix, Matrix)>,
    /// Position of each sequence's first query.
    pub first_positions: Vec<usize>,
    /// Length of the head-major output, `batch · n_heads · seq_len · value width`.
    pub out_len: usize,
}

impl CoreInputs {
    /// Random queries of `query_width` values per token for the last `seq_len` tokens of each
    /// sequence of `cache`, and an output of `out_width` values per token.
    pub fn random(
        cache: &KvCache,
        seq_len: usize,
        query_width: usize,
        out_width: usize,
        seed: u64,
    ) -> Self {
        let rows = cache.batch() * seq_len;
        Self {
            queries: crate::weights::input(seed, "core/queries", rows, query_width),
            expanded: Vec::new(),
            first_positions: cache
                .sequences()
                .iter()
                .map(|s| s.len().saturating_sub(seq_len))
                .collect(),
            out_len: rows * out_width,
        }
    }
}

/// Checks a step's operands against the layer and the cache; returns `seq_len`.
pub(crate) fn check_step(
    d_model: usize,
    x: &Matrix,
    cache: &KvCache,
    out: &Matrix,
) -> Result<usize> {
    let batch = cache.batch();
    if batch == 0 || x.rows() == 0 || !x.rows().is_multiple_of(batch) {
        return Err(Error::Shape {
            what: "layer input",
            expected: format!("a positive multiple of batch {batch} rows"),
            actual: format!("{} rows", x.rows()),
        });
    }
    x.expect_shape("layer input", x.rows(), d_model)?;
    out.expect_shape("layer output", x.rows(), d_model)?;
    let seq_len = x.rows() / batch;
    cache.check_room(seq_len)?;
    Ok(seq_len)
}

/// The absolute position of every input row: sequence `b`'s token `i` sits at
/// `cache_len(b) + i`. Rows are ordered as in the layer input.
pub(crate) fn row_positions(cache: &KvCache, seq_len: usize) -> Vec<usize> {
    cache
        .sequences()
        .iter()
        .flat_map(|s| s.len()..s.len() + seq_len)
        .collect()
}
