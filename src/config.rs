//! Layer shapes and their validation, the names of the small enums (variant, MLA path,
//! kernel, mode, storage type, model field; see `names.rs`), and the one GiB-to-bytes conversion.
//!
//! Field names follow the Hugging Face configs (`n_heads` = `num_attention_heads`,
//! `n_kv_heads` = `num_key_value_heads`, `kv_lora_rank`, ...), so a user can copy numbers from a
//! model card or a `config.json`.

mod names;

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
pub use names::{Named, UnknownName};
pub(crate) use names::{clap_value_enum, named_enum};

/// Largest accepted value for any one dimension. Far above every real model (DeepSeek-V3's
/// largest is 18432 wide) and small enough that products of a few of them cannot overflow.
pub const MAX_DIMENSION: usize = 1 << 20;

/// Default RoPE base, as in Llama 2 and most models without a `rope_theta` of their own.
pub const DEFAULT_ROPE_THETA: f64 = 10000.0;

/// Default RMSNorm epsilon of the DeepSeek configs.
pub const DEFAULT_RMS_NORM_EPS: f64 = 1e-6;

/// Bytes in one GiB (2^30): memory limits and budgets are given in GiB.
pub const BYTES_PER_GIB: u64 = 1 << 30;

/// Why a number of GiB is not a memory size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GibError {
    /// Zero, negative, infinite or NaN.
    #[error("must be a positive finite number")]
    NotPositive,
    /// So large that its bytes do not fit in a `u64`.
    #[error("must be below 2^64 bytes (16 EiB)")]
    TooLarge,
}

/// `gib` GiB in bytes, rounded down: the one conversion of the memory limit and the budget.
///
/// # Errors
/// [`GibError::NotPositive`] unless `gib` is positive and finite; [`GibError::TooLarge`] if
/// the bytes would not fit in a `u64` (a float-to-int cast would saturate silently).
pub fn gib_to_bytes(gib: f64) -> std::result::Result<u64, GibError> {
    if !(gib.is_finite() && gib > 0.0) {
        return Err(GibError::NotPositive);
    }
    let bytes = gib * BYTES_PER_GIB as f64;
    // u64::MAX rounds up to 2^64 as an f64, so this refuses exactly the sizes of 2^64 and up.
    if bytes >= u64::MAX as f64 {
        return Err(GibError::TooLarge);
    }
    Ok(bytes as u64)
}

/// Bytes for a reader: `N B` below 1 KiB, then KiB and MiB with one decimal, and from 1 GiB
/// whole MiB with GiB beside them (`1024 MiB (1.00 GiB)`). Binary units.
pub fn human_bytes(bytes: u64) -> String {
    let b = bytes as f64;
    if bytes < 1 << 10 {
        format!("{bytes} B")
    } else if bytes < 1 << 20 {
        format!("{:.1} KiB", b / 1024.0)
    } else if bytes < 1 << 30 {
        format!("{:.1} MiB", b / (1u64 << 20) as f64)
    } else {
        format!(
            "{:.0} MiB ({:.2} GiB)",
            b / (1u64 << 20) as f64,
            b / BYTES_PER_GIB as f64
        )
    }
}

/// The attention variants attnbench compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    /// Multi-head: one key/value head per query head (`n_kv_heads == n_heads`).
    Mha,
    /// Multi-query: one key/value head shared by all query heads (`n_kv_heads == 1`).
    Mqa,
    /// Grouped-query: `n_heads / n_kv_heads` consecutive query heads share a key/value head.
    Gqa,
    /// Multi-head latent attention (DeepSeek-V2/V3): a compressed latent is cached.
    Mla,
}

named_enum!(Variant, "a variant", {
    Mha => "mha",
    Mqa => "mqa",
    Gqa => "gqa",
    Mla => "mla",
});
clap_value_enum!(Variant);

/// The two execution paths of MLA over the same weights and the same latent cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MlaPath {
    /// Expand the cached latent into per-head keys and values every step.
    Naive,
    /// Fold `W_uk` into the query and `W_uv` after the weighted sum: MQA over the latent.
    Absorbed,
}

named_enum!(MlaPath, "an MLA path", {
    Naive => "naive",
    Absorbed => "absorbed",
});
clap_value_enum!(MlaPath);

/// Which attention-core kernel a layer runs.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Kernel {
    /// One head at a time, the whole `s_q × s_k` score block materialised: the plain
    /// formulation, kept to show what the tiled kernel gains.
    Naive,
    /// Flash style: query heads of a group packed, keys in blocks with an online softmax,
    /// long key ranges split across threads. The default.
    #[default]
    Tiled,
}

named_enum!(Kernel, "a kernel", {
    Naive => "naive",
    Tiled => "tiled",
});

/// What a step does (docs/design.md §2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// `batch` sequences of `seq_len` new tokens each, causal, appended to the cache.
    Prefill,
    /// `batch` sequences of one new token each, over a cache of `context` tokens.
    Decode,
}

named_enum!(Mode, "a mode", {
    Prefill => "prefill",
    Decode => "decode",
});

/// How a tensor is stored in memory (docs/design.md §5): arithmetic is f32 whatever the
/// type; a value is rounded when stored and widened back to f32 when read.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    /// 4 bytes: the default, and what every file written before the stored types meant.
    #[default]
    F32,
    /// 2 bytes, IEEE 754 binary16, rounded to nearest even.
    F16,
    /// 2 bytes, bfloat16 (the upper half of an f32), rounded to nearest even.
    Bf16,
    /// 1 byte per value, symmetric, plus one f32 scale per row (per token and KV head; MLA:
    /// per token for `c_kv` and per token for `k_rope`) that [`Dtype::bytes`] does not count
    /// and [`Dtype::row_bytes`] does. KV cache only.
    Int8,
}

named_enum!(Dtype, "a storage type", {
    F32 => "f32",
    F16 => "f16",
    Bf16 => "bf16",
    Int8 => "int8",
});
clap_value_enum!(Dtype);

impl Dtype {
    /// Bytes per stored value, scales not included.
    pub fn bytes(self) -> u64 {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::Bf16 => 2,
            Dtype::Int8 => 1,
        }
    }

    /// Bytes one stored row of `values` values takes, its scale included: `values · bytes`,
    /// plus 4 for int8's f32 scale. The one formula the cache's analytic bytes, the cost model
    /// and the planner all use. `None` on overflow.
    pub fn row_bytes(self, values: u64) -> Option<u64> {
        let scale = if self == Dtype::Int8 { 4 } else { 0 };
        values.checked_mul(self.bytes())?.checked_add(scale)
    }
}

/// How the projection weights of a layer are stored (docs/design.md §5): every projection
/// matrix in this type, RMSNorm scales always f32.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum WeightDtype {
    /// 4 bytes per weight: the default.
    #[default]
    F32,
    /// 2 bytes per weight, bfloat16 rounded to nearest even (how Llama 3 and DeepSeek ship).
    Bf16,
}

named_enum!(WeightDtype, "a weight type", {
    F32 => "f32",
    Bf16 => "bf16",
});
clap_value_enum!(WeightDtype);

impl WeightDtype {
    /// The same type as a [`Dtype`].
    pub fn dtype(self) -> Dtype {
        match self {
            WeightDtype::F32 => Dtype::F32,
            WeightDtype::Bf16 => Dtype::Bf16,
        }
    }
}

/// What a layer stores in which type: its KV cache and its projection weights. Activations,
/// accumulation and softmax are f32 whatever these say. The default, f32 and f32, is what an
/// experiment file or results file that names no types means.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Precision {
    /// The KV cache's stored type.
    pub kv_dtype: Dtype,
    /// The projection weights' stored type.
    pub weight_dtype: WeightDtype,
}

impl Precision {
    /// True for f32 cache and f32 weights, the default (files leave the fields out then).
    pub fn is_f32(&self) -> bool {
        *self == Precision::default()
    }
}

/// A shape field of a layer, or of a whole model (`n_layers`, `params`), by its name in the
/// Hugging Face configs, the `[model]` table of an experiment file and (with `-` for `_`) the
/// command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ModelField {
    /// `d_model` (`hidden_size`).
    DModel,
    /// `n_heads` (`num_attention_heads`).
    NHeads,
    /// `n_kv_heads` (`num_key_value_heads`).
    NKvHeads,
    /// `head_dim`.
    HeadDim,
    /// `rope_theta`.
    RopeTheta,
    /// `kv_lora_rank` (MLA).
    KvLoraRank,
    /// `q_lora_rank` (MLA).
    QLoraRank,
    /// `qk_nope_head_dim` (MLA).
    QkNopeHeadDim,
    /// `qk_rope_head_dim` (MLA).
    QkRopeHeadDim,
    /// `v_head_dim` (MLA).
    VHeadDim,
    /// `rms_norm_eps` (MLA).
    RmsNormEps,
    /// `n_layers` (`num_hidden_layers`), of a whole model.
    NLayers,
    /// `params`, the parameters of a whole model.
    Params,
}

named_enum!(ModelField, "a model field", {
    DModel => "d_model",
    NHeads => "n_heads",
    NKvHeads => "n_kv_heads",
    HeadDim => "head_dim",
    RopeTheta => "rope_theta",
    KvLoraRank => "kv_lora_rank",
    QLoraRank => "q_lora_rank",
    QkNopeHeadDim => "qk_nope_head_dim",
    QkRopeHeadDim => "qk_rope_head_dim",
    VHeadDim => "v_head_dim",
    RmsNormEps => "rms_norm_eps",
    NLayers => "n_layers",
    Params => "params",
});

/// Shape of an MHA, GQA or MQA layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroupedConfig {
    /// Width of the residual stream (`hidden_size`).
    pub d_model: usize,
    /// Query heads (`num_attention_heads`).
    pub n_heads: usize,
    /// Key/value heads (`num_key_value_heads`); divides `n_heads`.
    pub n_kv_heads: usize,
    /// Width of one head; independent of `d_model` (Gemma 2: 16 × 256 over 3584).
    pub head_dim: usize,
    /// RoPE base.
    pub rope_theta: f64,
}

impl GroupedConfig {
    /// Checks the shape for `variant` (MHA needs `n_kv_heads == n_heads`, MQA needs 1).
    pub fn validate(&self, variant: Variant) -> Result<()> {
        dimension(ModelField::DModel, self.d_model)?;
        dimension(ModelField::NHeads, self.n_heads)?;
        dimension(ModelField::NKvHeads, self.n_kv_heads)?;
        dimension(ModelField::HeadDim, self.head_dim)?;
        even(ModelField::HeadDim, self.head_dim)?;
        positive_finite(ModelField::RopeTheta, self.rope_theta)?;
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return Err(invalid(
                ModelField::NKvHeads.name(),
                self.n_kv_heads,
                format!("must divide n_heads = {}", self.n_heads),
            ));
        }
        match variant {
            Variant::Mha if self.n_kv_heads != self.n_heads => Err(invalid(
                ModelField::NKvHeads.name(),
                self.n_kv_heads,
                format!(
                    "MHA has one KV head per query head: must equal n_heads = {}",
                    self.n_heads
                ),
            )),
            Variant::Mqa if self.n_kv_heads != 1 => Err(invalid(
                ModelField::NKvHeads.name(),
                self.n_kv_heads,
                "MQA has a single KV head: must be 1".to_string(),
            )),
            Variant::Mla => Err(invalid(
                "variant",
                "mla",
                "MLA takes an MlaConfig, not a GroupedConfig".to_string(),
            )),
            _ => Ok(()),
        }
    }

    /// Weights by formula: `W_q`, `W_k`, `W_v`, `W_o`.
    pub fn param_count(&self) -> usize {
        let (q, kv) = (
            self.n_heads * self.head_dim,
            self.n_kv_heads * self.head_dim,
        );
        2 * self.d_model * q + 2 * self.d_model * kv
    }

    /// Values the cache holds per token: post-RoPE K and V, `2 · n_kv_heads · head_dim`.
    pub fn kv_values_per_token(&self) -> usize {
        2 * self.n_kv_heads * self.head_dim
    }
}

/// Shape of a DeepSeek-V2/V3 multi-head latent attention layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MlaConfig {
    /// Width of the residual stream (`hidden_size`).
    pub d_model: usize,
    /// Query heads (`num_attention_heads`).
    pub n_heads: usize,
    /// Width of the cached key/value latent `c_kv` (d_c).
    pub kv_lora_rank: usize,
    /// Width of the query latent; `None` means no query compression (`q = x · W_q`).
    pub q_lora_rank: Option<usize>,
    /// Per-head query/key width without position (compared against `c_kv · W_uk`).
    pub qk_nope_head_dim: usize,
    /// Per-head query/key width with RoPE; the rope key is one head shared by all.
    pub qk_rope_head_dim: usize,
    /// Per-head value width.
    pub v_head_dim: usize,
    /// RoPE base.
    pub rope_theta: f64,
    /// RMSNorm epsilon of the query and key/value latents.
    pub rms_norm_eps: f64,
}

impl MlaConfig {
    /// Checks every size (non-zero, even rope width) and the norm epsilon.
    pub fn validate(&self) -> Result<()> {
        dimension(ModelField::DModel, self.d_model)?;
        dimension(ModelField::NHeads, self.n_heads)?;
        dimension(ModelField::KvLoraRank, self.kv_lora_rank)?;
        if let Some(rank) = self.q_lora_rank {
            if rank == 0 {
                return Err(invalid(
                    ModelField::QLoraRank.name(),
                    rank,
                    "must be at least 1; leave it out for no query compression".to_string(),
                ));
            }
            dimension(ModelField::QLoraRank, rank)?;
        }
        dimension(ModelField::QkNopeHeadDim, self.qk_nope_head_dim)?;
        dimension(ModelField::QkRopeHeadDim, self.qk_rope_head_dim)?;
        even(ModelField::QkRopeHeadDim, self.qk_rope_head_dim)?;
        dimension(ModelField::VHeadDim, self.v_head_dim)?;
        positive_finite(ModelField::RopeTheta, self.rope_theta)?;
        positive_finite(ModelField::RmsNormEps, self.rms_norm_eps)?;
        Ok(())
    }

    /// Per-head query/key width, `qk_nope_head_dim + qk_rope_head_dim`.
    pub fn qk_head_dim(&self) -> usize {
        self.qk_nope_head_dim + self.qk_rope_head_dim
    }

    /// Weights by formula: the query path (`W_q`, or `W_dq`, its norm and `W_uq`), `W_dkv`,
    /// the latent norm, `W_uk`, `W_uv`, `W_o`.
    pub fn param_count(&self) -> usize {
        let q_width = self.n_heads * self.qk_head_dim();
        let query = match self.q_lora_rank {
            None => self.d_model * q_width,
            Some(rank) => self.d_model * rank + rank + rank * q_width,
        };
        let d_c = self.kv_lora_rank;
        query
            + self.d_model * self.kv_values_per_token()
            + d_c
            + d_c * self.n_heads * (self.qk_nope_head_dim + self.v_head_dim)
            + self.n_heads * self.v_head_dim * self.d_model
    }

    /// Values the cache holds per token: `kv_lora_rank + qk_rope_head_dim`, whatever `n_heads`.
    pub fn kv_values_per_token(&self) -> usize {
        self.kv_lora_rank + self.qk_rope_head_dim
    }
}

/// One layer to build: its variant, its shape and, for MLA, its execution path.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum LayerSpec {
    /// MHA, MQA or GQA.
    Grouped {
        /// Which of the three; it constrains `n_kv_heads`.
        variant: Variant,
        /// The shape.
        config: GroupedConfig,
    },
    /// Multi-head latent attention.
    Mla {
        /// The shape.
        config: MlaConfig,
        /// Naive or absorbed.
        path: MlaPath,
    },
}

impl LayerSpec {
    /// Checks the shape for the variant.
    pub fn validate(&self) -> Result<()> {
        match self {
            LayerSpec::Grouped { variant, config } => config.validate(*variant),
            LayerSpec::Mla { config, .. } => config.validate(),
        }
    }

    /// The variant.
    pub fn variant(&self) -> Variant {
        match self {
            LayerSpec::Grouped { variant, .. } => *variant,
            LayerSpec::Mla { .. } => Variant::Mla,
        }
    }

    /// The MLA path, `None` for the grouped variants.
    pub fn mla_path(&self) -> Option<MlaPath> {
        match self {
            LayerSpec::Grouped { .. } => None,
            LayerSpec::Mla { path, .. } => Some(*path),
        }
    }

    /// Width of the residual stream.
    pub fn d_model(&self) -> usize {
        match self {
            LayerSpec::Grouped { config, .. } => config.d_model,
            LayerSpec::Mla { config, .. } => config.d_model,
        }
    }

    /// Values the cache holds per token (see the configs' `kv_values_per_token`).
    pub fn kv_values_per_token(&self) -> usize {
        match self {
            LayerSpec::Grouped { config, .. } => config.kv_values_per_token(),
            LayerSpec::Mla { config, .. } => config.kv_values_per_token(),
        }
    }

    /// Bytes the cache holds per token stored as `dtype`, int8's scales included
    /// (docs/design.md §5): K and V rows of `head_dim` per KV head, each with its own scale;
    /// for MLA the `c_kv` row and the `k_rope` row, each with its own scale. The one formula
    /// the cache's analytic bytes, the cost model and the planner share. `None` on overflow.
    pub fn kv_bytes_per_token(&self, dtype: Dtype) -> Option<u64> {
        match self {
            LayerSpec::Grouped { config, .. } => dtype
                .row_bytes(config.head_dim as u64)?
                .checked_mul(2 * config.n_kv_heads as u64),
            LayerSpec::Mla { config, .. } => dtype
                .row_bytes(config.kv_lora_rank as u64)?
                .checked_add(dtype.row_bytes(config.qk_rope_head_dim as u64)?),
        }
    }

    /// Weights by formula (equal to what the built layer allocates).
    pub fn param_count(&self) -> usize {
        match self {
            LayerSpec::Grouped { config, .. } => config.param_count(),
            LayerSpec::Mla { config, .. } => config.param_count(),
        }
    }

    /// Query heads.
    pub fn n_heads(&self) -> usize {
        match self {
            LayerSpec::Grouped { config, .. } => config.n_heads,
            LayerSpec::Mla { config, .. } => config.n_heads,
        }
    }

    /// A short label such as `gqa`, `mla-absorbed`.
    pub fn label(&self) -> String {
        match self.mla_path() {
            Some(path) => format!("mla-{path}"),
            None => self.variant().to_string(),
        }
    }
}

fn invalid(field: &'static str, value: impl fmt::Display, reason: String) -> Error {
    Error::InvalidConfig {
        field,
        value: value.to_string(),
        reason,
    }
}

fn dimension(field: ModelField, value: usize) -> Result<()> {
    if value == 0 {
        return Err(invalid(
            field.name(),
            value,
            "must be at least 1".to_string(),
        ));
    }
    if value > MAX_DIMENSION {
        return Err(invalid(
            field.name(),
            value,
            format!("must be at most {MAX_DIMENSION}"),
        ));
    }
    Ok(())
}

fn even(field: ModelField, value: usize) -> Result<()> {
    if !value.is_multiple_of(2) {
        return Err(invalid(
            field.name(),
            value,
            "must be even: RoPE rotates pairs of values".to_string(),
        ));
    }
    Ok(())
}

fn positive_finite(field: ModelField, value: f64) -> Result<()> {
    if !(value.is_finite() && value > 0.0) {
        return Err(invalid(
            field.name(),
            value,
            "must be a positive finite number".to_string(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_bytes_per_token_counts_each_row_at_its_width_and_int8_scales() {
        let gqa = LayerSpec::Grouped {
            variant: Variant::Gqa,
            config: GroupedConfig {
                d_model: 4096,
                n_heads: 32,
                n_kv_heads: 8,
                head_dim: 128,
                rope_theta: DEFAULT_ROPE_THETA,
            },
        };
        let bytes = |spec: &LayerSpec, dtype| spec.kv_bytes_per_token(dtype).unwrap();
        // Llama 3 8B: 2 · 8 · 128 values per token.
        assert_eq!(bytes(&gqa, Dtype::F32), 2 * 8 * 128 * 4);
        assert_eq!(bytes(&gqa, Dtype::Bf16), 2 * 8 * 128 * 2);
        assert_eq!(bytes(&gqa, Dtype::F16), 2 * 8 * 128 * 2);
        assert_eq!(bytes(&gqa, Dtype::Int8), 2 * 8 * (128 + 4));
        let mla = LayerSpec::Mla {
            config: MlaConfig {
                d_model: 7168,
                n_heads: 128,
                kv_lora_rank: 512,
                q_lora_rank: Some(1536),
                qk_nope_head_dim: 128,
                qk_rope_head_dim: 64,
                v_head_dim: 128,
                rope_theta: DEFAULT_ROPE_THETA,
                rms_norm_eps: 1e-6,
            },
            path: MlaPath::Absorbed,
        };
        assert_eq!(bytes(&mla, Dtype::F32), (512 + 64) * 4);
        assert_eq!(bytes(&mla, Dtype::Bf16), (512 + 64) * 2);
        assert_eq!(bytes(&mla, Dtype::Int8), 512 + 64 + 8);
    }

    #[test]
    fn gib_to_bytes_refuses_what_is_not_a_memory_size() {
        assert_eq!(gib_to_bytes(1.0), Ok(1 << 30));
        assert_eq!(gib_to_bytes(0.5), Ok(1 << 29));
        assert_eq!(gib_to_bytes(24.0), Ok(24 << 30));
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert_eq!(gib_to_bytes(bad), Err(GibError::NotPositive), "{bad}");
        }
        // 2^34 GiB is 2^64 bytes: one past u64::MAX.
        assert_eq!(gib_to_bytes(2f64.powi(34)), Err(GibError::TooLarge));
        assert_eq!(gib_to_bytes(1e30), Err(GibError::TooLarge));
        assert_eq!(gib_to_bytes(f64::MAX), Err(GibError::TooLarge));
        // Just below 2^64 bytes still converts.
        let below = 2f64.powi(34) * (1.0 - f64::EPSILON);
        assert!(gib_to_bytes(below).unwrap() > u64::MAX / 2);
    }
}
