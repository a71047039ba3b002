//! Presets of real models (`variants/presets.toml`, compiled in), and the one resolver of
//! "preset + overrides → layer shape" that experiment files, `kv` and `export` share.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::config::{
    DEFAULT_RMS_NORM_EPS, DEFAULT_ROPE_THETA, GroupedConfig, LayerSpec, MlaConfig, MlaPath,
    ModelField, Variant, named_enum,
};

/// The preset file, compiled into the binary so the tool runs from any directory.
pub const PRESETS_TOML: &str = include_str!("../variants/presets.toml");

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
    /// Positions the model was trained for (Hugging Face's `max_position_embeddings`): the
    /// planner warns beyond it and caps its largest context at it.
    pub max_position_embeddings: Option<usize>,
    /// RoPE base, where the model uses RoPE and it is known.
    pub rope_theta: Option<f64>,
    /// Sliding-window span in tokens, where the model has one: a windowed layer attends to,
    /// and its rolling cache holds, at most this many tokens.
    pub sliding_window: Option<usize>,
    /// Which layers keep the window (see [`Preset::window`]).
    pub sliding_window_layers: Option<WindowLayers>,
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
    /// Caveats, shown with every plan of the model.
    pub notes: Option<String>,
}

impl Preset {
    /// The model's sliding window: `sliding_window` tokens on the layers
    /// `sliding_window_layers` names; without a pattern, every layer (what `sliding_window`
    /// means in a Hugging Face config unless the architecture says otherwise). `None` without
    /// a span. Every preset in `variants/presets.toml` names its pattern (a test checks).
    pub fn window(&self) -> Option<SlidingWindow> {
        self.sliding_window.map(|tokens| SlidingWindow {
            tokens,
            layers: self.sliding_window_layers.unwrap_or(WindowLayers::All),
        })
    }
}

/// Which layers of a model attend through a sliding window (and keep a rolling cache of at
/// most the window's tokens); the others attend to, and cache, the whole context.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WindowLayers {
    /// Every layer (Mistral 7B v0.1).
    All,
    /// Every other layer, starting with the first: layers 0, 2, 4, … windowed ("local"),
    /// 1, 3, 5, … global (Gemma 2).
    Alternate,
}

named_enum!(WindowLayers, "a window pattern", {
    All => "all",
    Alternate => "alternate",
});

impl WindowLayers {
    /// How many of `n_layers` layers are windowed: all, or the even-numbered ones
    /// (`⌈n_layers / 2⌉`).
    pub fn windowed(self, n_layers: usize) -> usize {
        match self {
            WindowLayers::All => n_layers,
            WindowLayers::Alternate => n_layers.div_ceil(2),
        }
    }
}

/// A sliding window and the layers that keep it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct SlidingWindow {
    /// Tokens a windowed layer attends to and caches at most (its rolling cache's size).
    pub tokens: usize,
    /// Which layers are windowed.
    pub layers: WindowLayers,
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

/// Every preset's name, in file order, comma-separated: what an unknown name is told.
pub fn preset_names() -> String {
    presets()
        .into_iter()
        .map(|p| p.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A field a layer needs and nobody gave.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[error("missing field `{0}`")]
pub struct MissingField(pub ModelField);

/// The shape fields of a model, each optional: a preset fills those it knows
/// ([`ModelFields::of_preset`]), overrides replace any ([`ModelFields::overlay`]), and the
/// result becomes a layer ([`ModelFields::layer`]) or fails naming the first field missing.
/// Widths are counts of values, `params` a count of weights.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ModelFields {
    /// Width of the residual stream; absent: `n_heads · head_dim` (MLA: `n_heads ·
    /// v_head_dim`), as it does not enter the cache.
    pub d_model: Option<usize>,
    /// Query heads.
    pub n_heads: Option<usize>,
    /// Key/value heads; absent: `n_heads` for MHA, 1 for MQA, required for GQA.
    pub n_kv_heads: Option<usize>,
    /// Width of one head of an MHA/GQA/MQA layer.
    pub head_dim: Option<usize>,
    /// RoPE base; absent: [`DEFAULT_ROPE_THETA`].
    pub rope_theta: Option<f64>,
    /// MLA: width of the cached latent `c_kv`.
    pub kv_lora_rank: Option<usize>,
    /// MLA: width of the query latent; absent: no query compression.
    pub q_lora_rank: Option<usize>,
    /// MLA: per-head query/key width without RoPE.
    pub qk_nope_head_dim: Option<usize>,
    /// MLA: per-head query/key width with RoPE.
    pub qk_rope_head_dim: Option<usize>,
    /// MLA: per-head value width.
    pub v_head_dim: Option<usize>,
    /// MLA: RMSNorm epsilon; absent: [`DEFAULT_RMS_NORM_EPS`].
    pub rms_norm_eps: Option<f64>,
    /// Decoder layers of the whole model (the planner's).
    pub n_layers: Option<usize>,
    /// Parameters of the whole model (the planner's).
    pub params: Option<u64>,
}

impl ModelFields {
    /// What a preset gives: every field it has (it has no `rms_norm_eps`).
    pub fn of_preset(p: &Preset) -> Self {
        Self {
            d_model: Some(p.d_model),
            n_heads: Some(p.n_heads),
            n_kv_heads: Some(p.n_kv_heads),
            head_dim: Some(p.head_dim),
            rope_theta: p.rope_theta,
            kv_lora_rank: p.kv_lora_rank,
            q_lora_rank: p.q_lora_rank,
            qk_nope_head_dim: p.qk_nope_head_dim,
            qk_rope_head_dim: p.qk_rope_head_dim,
            v_head_dim: p.v_head_dim,
            rms_norm_eps: None,
            n_layers: Some(p.n_layers),
            params: p.params,
        }
    }

    /// Replaces every field `overrides` sets.
    pub fn overlay(&mut self, overrides: &ModelFields) {
        fn set<T: Copy>(slot: &mut Option<T>, value: Option<T>) {
            if value.is_some() {
                *slot = value;
            }
        }
        set(&mut self.d_model, overrides.d_model);
        set(&mut self.n_heads, overrides.n_heads);
        set(&mut self.n_kv_heads, overrides.n_kv_heads);
        set(&mut self.head_dim, overrides.head_dim);
        set(&mut self.rope_theta, overrides.rope_theta);
        set(&mut self.kv_lora_rank, overrides.kv_lora_rank);
        set(&mut self.q_lora_rank, overrides.q_lora_rank);
        set(&mut self.qk_nope_head_dim, overrides.qk_nope_head_dim);
        set(&mut self.qk_rope_head_dim, overrides.qk_rope_head_dim);
        set(&mut self.v_head_dim, overrides.v_head_dim);
        set(&mut self.rms_norm_eps, overrides.rms_norm_eps);
        set(&mut self.n_layers, overrides.n_layers);
        set(&mut self.params, overrides.params);
    }

    /// Whether `field` is given.
    pub fn is_set(&self, field: ModelField) -> bool {
        match field {
            ModelField::DModel => self.d_model.is_some(),
            ModelField::NHeads => self.n_heads.is_some(),
            ModelField::NKvHeads => self.n_kv_heads.is_some(),
            ModelField::HeadDim => self.head_dim.is_some(),
            ModelField::RopeTheta => self.rope_theta.is_some(),
            ModelField::KvLoraRank => self.kv_lora_rank.is_some(),
            ModelField::QLoraRank => self.q_lora_rank.is_some(),
            ModelField::QkNopeHeadDim => self.qk_nope_head_dim.is_some(),
            ModelField::QkRopeHeadDim => self.qk_rope_head_dim.is_some(),
            ModelField::VHeadDim => self.v_head_dim.is_some(),
            ModelField::RmsNormEps => self.rms_norm_eps.is_some(),
            ModelField::NLayers => self.n_layers.is_some(),
            ModelField::Params => self.params.is_some(),
        }
    }

    /// The shape of an MHA, GQA or MQA layer, unchecked (see [`GroupedConfig::validate`]).
    ///
    /// # Errors
    /// The first of `n_heads`, `head_dim`, `n_kv_heads` (GQA) that is missing.
    pub fn grouped(&self, variant: Variant) -> Result<GroupedConfig, MissingField> {
        let n_heads = need(self.n_heads, ModelField::NHeads)?;
        let head_dim = need(self.head_dim, ModelField::HeadDim)?;
        let n_kv_heads = match (self.n_kv_heads, variant) {
            (Some(n), _) => n,
            (None, Variant::Mha) => n_heads,
            (None, Variant::Mqa) => 1,
            (None, _) => return Err(MissingField(ModelField::NKvHeads)),
        };
        Ok(GroupedConfig {
            // Saturating: a product past usize is refused by validation as too wide, not wrapped.
            d_model: self.d_model.unwrap_or(n_heads.saturating_mul(head_dim)),
            n_heads,
            n_kv_heads,
            head_dim,
            rope_theta: self.rope_theta.unwrap_or(DEFAULT_ROPE_THETA),
        })
    }

    /// The shape of an MLA layer, unchecked (see [`MlaConfig::validate`]).
    ///
    /// # Errors
    /// The first of `n_heads`, `kv_lora_rank`, `qk_nope_head_dim`, `qk_rope_head_dim`,
    /// `v_head_dim` that is missing.
    pub fn mla(&self) -> Result<MlaConfig, MissingField> {
        let n_heads = need(self.n_heads, ModelField::NHeads)?;
        let kv_lora_rank = need(self.kv_lora_rank, ModelField::KvLoraRank)?;
        let qk_nope_head_dim = need(self.qk_nope_head_dim, ModelField::QkNopeHeadDim)?;
        let qk_rope_head_dim = need(self.qk_rope_head_dim, ModelField::QkRopeHeadDim)?;
        let v_head_dim = need(self.v_head_dim, ModelField::VHeadDim)?;
        Ok(MlaConfig {
            d_model: self.d_model.unwrap_or(n_heads.saturating_mul(v_head_dim)),
            n_heads,
            kv_lora_rank,
            q_lora_rank: self.q_lora_rank,
            qk_nope_head_dim,
            qk_rope_head_dim,
            v_head_dim,
            rope_theta: self.rope_theta.unwrap_or(DEFAULT_ROPE_THETA),
            rms_norm_eps: self.rms_norm_eps.unwrap_or(DEFAULT_RMS_NORM_EPS),
        })
    }

    /// The layer of `variant` (`path` applies to MLA only), unchecked (see
    /// [`LayerSpec::validate`]).
    ///
    /// # Errors
    /// The first field missing, as [`ModelFields::grouped`] and [`ModelFields::mla`] say.
    pub fn layer(&self, variant: Variant, path: MlaPath) -> Result<LayerSpec, MissingField> {
        Ok(match variant {
            Variant::Mla => LayerSpec::Mla {
                config: self.mla()?,
                path,
            },
            variant => LayerSpec::Grouped {
                variant,
                config: self.grouped(variant)?,
            },
        })
    }
}

fn need<T>(value: Option<T>, field: ModelField) -> Result<T, MissingField> {
    value.ok_or(MissingField(field))
}
