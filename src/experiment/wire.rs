//! The experiment file as written: private wire structs, every key documented in docs/experiment-files.md,
//! unknown keys refused. `mod.rs` turns them into a checked grid.

use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

use crate::config::{Dtype, Kernel, MlaPath, Mode, ModelField, Variant, WeightDtype};
use crate::presets::ModelFields;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ExperimentWire {
    pub name: Option<Spanned<String>>,
    pub description: Option<String>,
    pub seed: Option<u64>,
    pub model: Spanned<ModelWire>,
    pub sweep: Spanned<SweepWire>,
    #[serde(default)]
    pub measure: MeasureWire,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ModelWire {
    pub preset: Option<Spanned<String>>,
    pub d_model: Option<Spanned<usize>>,
    pub n_heads: Option<Spanned<usize>>,
    pub n_kv_heads: Option<Spanned<usize>>,
    pub head_dim: Option<Spanned<usize>>,
    pub rope_theta: Option<Spanned<f64>>,
    pub kv_lora_rank: Option<Spanned<usize>>,
    pub q_lora_rank: Option<Spanned<usize>>,
    pub qk_nope_head_dim: Option<Spanned<usize>>,
    pub qk_rope_head_dim: Option<Spanned<usize>>,
    pub v_head_dim: Option<Spanned<usize>>,
    pub rms_norm_eps: Option<Spanned<f64>>,
}

impl ModelWire {
    /// The fields the file sets, without their spans.
    pub fn fields(&self) -> ModelFields {
        fn value<T: Copy>(v: &Option<Spanned<T>>) -> Option<T> {
            v.as_ref().map(|s| *s.get_ref())
        }
        ModelFields {
            d_model: value(&self.d_model),
            n_heads: value(&self.n_heads),
            n_kv_heads: value(&self.n_kv_heads),
            head_dim: value(&self.head_dim),
            rope_theta: value(&self.rope_theta),
            kv_lora_rank: value(&self.kv_lora_rank),
            q_lora_rank: value(&self.q_lora_rank),
            qk_nope_head_dim: value(&self.qk_nope_head_dim),
            qk_rope_head_dim: value(&self.qk_rope_head_dim),
            v_head_dim: value(&self.v_head_dim),
            rms_norm_eps: value(&self.rms_norm_eps),
            n_layers: None,
            params: None,
        }
    }

    /// Where the file sets each field it sets.
    pub fn spans(&self) -> Vec<(ModelField, Range<usize>)> {
        fn span<T>(v: &Option<Spanned<T>>) -> Option<Range<usize>> {
            v.as_ref().map(Spanned::span)
        }
        [
            (ModelField::DModel, span(&self.d_model)),
            (ModelField::NHeads, span(&self.n_heads)),
            (ModelField::NKvHeads, span(&self.n_kv_heads)),
            (ModelField::HeadDim, span(&self.head_dim)),
            (ModelField::RopeTheta, span(&self.rope_theta)),
            (ModelField::KvLoraRank, span(&self.kv_lora_rank)),
            (ModelField::QLoraRank, span(&self.q_lora_rank)),
            (ModelField::QkNopeHeadDim, span(&self.qk_nope_head_dim)),
            (ModelField::QkRopeHeadDim, span(&self.qk_rope_head_dim)),
            (ModelField::VHeadDim, span(&self.v_head_dim)),
            (ModelField::RmsNormEps, span(&self.rms_norm_eps)),
        ]
        .into_iter()
        .filter_map(|(field, span)| Some((field, span?)))
        .collect()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SweepWire {
    pub variant: Spanned<Vec<Variant>>,
    pub mla_path: Option<Spanned<Vec<MlaPath>>>,
    pub mode: Spanned<Vec<Mode>>,
    pub seq_len: Option<Spanned<Vec<usize>>>,
    pub cache_len: Option<Spanned<Vec<usize>>>,
    pub context: Option<Spanned<Vec<usize>>>,
    pub n_heads: Option<Spanned<Vec<usize>>>,
    pub n_kv_heads: Option<Spanned<Vec<usize>>>,
    pub batch: Option<Spanned<Vec<usize>>>,
    pub threads: Option<Spanned<Vec<usize>>>,
    pub kernel: Option<Spanned<Vec<Kernel>>>,
    pub kv_dtype: Option<Spanned<Vec<Dtype>>>,
    pub weight_dtype: Option<Spanned<Vec<WeightDtype>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MeasureWire {
    pub warmup_iters: Option<Spanned<usize>>,
    pub warmup_ms: Option<Spanned<u64>>,
    pub min_samples: Option<Spanned<usize>>,
    pub max_samples: Option<Spanned<usize>>,
    pub time_budget_ms: Option<Spanned<u64>>,
    pub memory_limit_gib: Option<Spanned<f64>>,
    pub flush_caches: Option<Spanned<bool>>,
}
