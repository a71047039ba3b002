//! Presets of real models (`variants/presets.toml`, compiled in).

use serde::Deserialize;

use crate::config::Variant;

/// The preset file, compiled into the binary so the tool runs from any directory.
pub const PRESETS_TOML: &str = include_str!("../../variants/presets.toml");

/// One real model's attention shape, with its source.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preset {
    /// Name used in experiment files, e.g. `llama-3-8b`.
    pub name: String,
    /// Where the numbers come from.
    pub source: String,
    /// The model's own attention variant.
    pub variant: Variant,
    /// `hidden_size`.
    pub d_model: usize,
    /// `num_attention_heads`.
    pub n_heads: usize,
    /// `num_key_value_heads` (nominal for MLA).
    pub n_kv_heads: usize,
    /// Width of one head (MLA: the paper's d_h).
    pub head_dim: usize,
    /// Decoder layers.
    pub n_layers: usize,
    /// Context the model was configured for.
    pub max_position_embeddings: Option<usize>,
    /// RoPE base, where the model uses RoPE and it is known.
    pub rope_theta: Option<f64>,
    /// Sliding-window span, where the model has one.
    pub sliding_window: Option<usize>,
    /// MLA: query latent width (absent: no query compression).
    pub q_lora_rank: Option<usize>,
    /// MLA: key/value latent width.
    pub kv_lora_rank: Option<usize>,
    /// MLA: per-head query/key width without RoPE.
    pub qk_nope_head_dim: Option<usize>,
    /// MLA: rope width.
    pub qk_rope_head_dim: Option<usize>,
    /// MLA: per-head value width.
    pub v_head_dim: Option<usize>,
    /// Parameters of the whole model (every expert of a mixture), only where a public source
    /// gives them (cited in `source`); absent: the planner does not count the weights.
    pub params: Option<u64>,
    /// The verified cache width per token and layer.
    pub kv_values_per_token_per_layer: usize,
    /// Caveats.
    pub notes: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PresetFile {
    preset: Vec<Preset>,
}

/// Every preset, in file order.
///
/// # Panics
/// If the compiled-in file does not parse; a test guards it.
pub fn presets() -> Vec<Preset> {
    toml::from_str::<PresetFile>(PRESETS_TOML)
        .expect("variants/presets.toml is valid")
        .preset
}

/// The preset called `name`.
pub fn preset(name: &str) -> Option<Preset> {
    presets().into_iter().find(|p| p.name == name)
}
