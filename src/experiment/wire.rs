//! The experiment file as written: private wire structs, every key documented in the README,
//! unknown keys refused. `mod.rs` turns them into a checked grid.

use serde::Deserialize;
use toml::Spanned;

use crate::config::{Kernel, MlaPath, Mode, Variant};

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
