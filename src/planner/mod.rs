//! The KV-cache planner: what a whole model's KV cache costs in memory, per token and at a
//! context and batch, in f32, f16, bf16 and int8 storage, for the model's own attention variant
//! and for the other variants at its shape; and how large a batch or a context fits a memory
//! budget.
//!
//! The per-layer bytes of every row that is a layer the crate can build come from
//! [`LayerSpec::kv_bytes_per_token`], the one formula for a token's stored cache bytes in each
//! storage type, int8's scales included (docs/design.md §5): a grouped int8 cache takes
//! `2 · n_kv_heads · (head_dim + 4)` bytes per token and layer, an MLA one
//! `kv_lora_rank + qk_rope_head_dim + 8`. Only the hypothetical MHA/GQA/MQA rows of an MLA
//! model, whose keys and values differ in width (a shape
//! [`GroupedConfig`](crate::GroupedConfig) does not describe), count
//! `n_kv_heads · (row bytes of k_head_dim + row bytes of v_head_dim)` themselves, through the
//! same [`Dtype::row_bytes`].
//!
//! A model with a sliding window ([`ModelShape::window`]) caches at most the window's tokens in
//! each windowed layer: the figures at a context, and the budget's answers, count
//! `Σ_layers min(context, window of the layer)` tokens per sequence, for every row (the
//! hypothetical rows keep the model's window pattern). The largest context is capped at the
//! model's trained maximum where one is known; a context beyond it is planned with a warning.
//!
//! Everything is computed in exact bytes; nothing here rounds except [`human_bytes`].

mod rows;
mod window;

use std::fmt;

use serde::Serialize;

pub use crate::config::{Dtype, human_bytes};
use crate::config::{
    LayerSpec, MAX_DIMENSION, MlaPath, ModelField, Variant, gib_to_bytes, named_enum,
};
use crate::error::{Error, Result};
use crate::presets::{MissingField, ModelFields, Preset, SlidingWindow};
use rows::{RowShape, variant_shapes};
use window::LayerTokens;
pub use window::WindowFigures;

/// Format tag of the planner's JSON. `/2`: int8 figures include the f32 scales (one per
/// token per K and V row of each KV head; MLA: one for `c_kv`, one for `k_rope`), which `/1`
/// left out; every other figure means what it meant.
pub const PLAN_FORMAT: &str = "attnbench-kv-plan/2";

/// Most KV heads a hypothetical GQA row gets by default: Llama 2 70B, Llama 3 and Mistral use 8.
pub const DEFAULT_GQA_MAX_KV_HEADS: usize = 8;

/// A whole model as far as its KV cache is concerned.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelShape {
    /// The preset's name, or a label for an explicit shape.
    pub name: String,
    /// Decoder layers; each holds its own cache.
    pub n_layers: usize,
    /// One layer of the model's own variant. `d_model`, `rope_theta` and the MLA path do not
    /// enter the cache.
    pub layer: LayerSpec,
    /// Parameters of the whole model (all experts of a mixture), when known: the weights the
    /// budget must hold besides the cache.
    pub params: Option<u64>,
    /// The sliding window and the layers that keep it; `None`: every layer caches the whole
    /// context.
    pub window: Option<SlidingWindow>,
    /// Positions the model was trained for, when known: a longer context is planned with a
    /// warning, and the largest context is capped at it.
    pub max_position_embeddings: Option<usize>,
    /// The preset's caveats, carried into the plan.
    pub notes: Option<String>,
}

impl ModelShape {
    /// The model of a preset, with its window, trained maximum and notes.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] if an MLA preset lacks one of its latent widths.
    pub fn from_preset(p: &Preset) -> Result<Self> {
        Self::from_fields(p.name.clone(), p.variant, &ModelFields::of_preset(p))
            .map(|model| model.with_preset_extras(p))
            .map_err(|MissingField(field)| Error::InvalidConfig {
                field: field.name(),
                value: "absent".into(),
                reason: format!("preset `{}` is MLA and needs it", p.name),
            })
    }

    /// What a preset says besides the shape: its window, trained maximum and notes.
    fn with_preset_extras(self, p: &Preset) -> Self {
        Self {
            window: p.window(),
            max_position_embeddings: p.max_position_embeddings,
            notes: p.notes.clone(),
            ..self
        }
    }

    /// A model of `variant` called `name` from its fields, without a window, trained maximum
    /// or notes; an MLA layer takes the absorbed path (the path does not change the cache).
    ///
    /// # Errors
    /// [`MissingField`]: `n_layers`, then whatever [`ModelFields::layer`] misses.
    pub fn from_fields(
        name: String,
        variant: Variant,
        fields: &ModelFields,
    ) -> Result<Self, MissingField> {
        Ok(Self {
            name,
            n_layers: fields.n_layers.ok_or(MissingField(ModelField::NLayers))?,
            layer: fields.layer(variant, MlaPath::Absorbed)?,
            params: fields.params,
            window: None,
            max_position_embeddings: None,
            notes: None,
        })
    }

    /// The model `kv` plans: the preset's fields (if any) with `overrides` over them, as a
    /// model of `variant` (a preset's own). An MHA or MQA model's `n_kv_heads` follows from
    /// `n_heads` unless overridden. Named after the preset, `NAME (modified)` when the
    /// overrides change its layer or its layer count, `custom` without a preset. The preset's
    /// window pattern, trained maximum and notes stay with a modified model.
    ///
    /// # Errors
    /// [`ModelError::Missing`] for `n_layers` or `n_heads`, then
    /// [`ModelError::NotApplicable`] for an override the variant has no use for (`n_kv_heads`
    /// or `head_dim` of MLA, `qk_nope_head_dim` or `v_head_dim` of the others), then
    /// [`ModelError::Missing`] for the layer's other fields.
    pub fn resolve(
        preset: Option<&Preset>,
        variant: Variant,
        overrides: &ModelFields,
    ) -> std::result::Result<Self, ModelError> {
        let mut fields = preset.map(ModelFields::of_preset).unwrap_or_default();
        if matches!(variant, Variant::Mha | Variant::Mqa) {
            fields.n_kv_heads = None;
        }
        fields.overlay(overrides);
        for field in [ModelField::NLayers, ModelField::NHeads] {
            if !fields.is_set(field) {
                return Err(ModelError::Missing(field));
            }
        }
        let foreign = match variant {
            Variant::Mla => [ModelField::NKvHeads, ModelField::HeadDim],
            _ => [ModelField::QkNopeHeadDim, ModelField::VHeadDim],
        };
        if let Some(field) = foreign.into_iter().find(|&f| overrides.is_set(f)) {
            return Err(ModelError::NotApplicable { field, variant });
        }
        let mut model = Self::from_fields(String::new(), variant, &fields)
            .map_err(|MissingField(field)| ModelError::Missing(field))?;
        if let Some(p) = preset {
            model = model.with_preset_extras(p);
        }
        model.name = match preset {
            Some(p)
                if Self::from_preset(p)
                    .is_ok_and(|m| m.layer == model.layer && m.n_layers == model.n_layers) =>
            {
                p.name.clone()
            }
            Some(p) => format!("{} (modified)", p.name),
            None => "custom".to_string(),
        };
        Ok(model)
    }
}

/// Why [`ModelShape::resolve`] has no model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// A field the model needs, given neither by the preset nor by an override.
    #[error("missing field `{0}`")]
    Missing(ModelField),
    /// An override of a field the model's variant does not have.
    #[error("`{field}` does not describe a {variant} model")]
    NotApplicable {
        /// The field.
        field: ModelField,
        /// The model's variant.
        variant: Variant,
    },
}

/// Choices for the hypothetical rows; `None` takes the documented default.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Alternatives {
    /// KV heads of the GQA row of a model that is not GQA itself. Default:
    /// [`default_gqa_kv_heads`].
    pub gqa_kv_heads: Option<usize>,
    /// Latent width of the MLA row of a model that is not MLA. Default: `4 · head_dim`
    /// (DeepSeek-V2/V3: 512 = 4 · 128).
    pub kv_lora_rank: Option<usize>,
    /// Rope-key width of the MLA row of a model that is not MLA. Default: `head_dim / 2`
    /// rounded down to an even number (DeepSeek-V2/V3: 64 = 128 / 2).
    pub qk_rope_head_dim: Option<usize>,
}

impl Alternatives {
    /// The choices when one set of fields describes both the model and its hypothetical rows,
    /// as `attnbench kv`'s flags do: `kv_lora_rank` and `qk_rope_head_dim` of `overrides` are
    /// an MLA model's own widths (taken by [`ModelShape::resolve`]) and, for a model of any
    /// other `variant`, the hypothetical MLA row's.
    pub fn from_overrides(
        variant: Variant,
        overrides: &ModelFields,
        gqa_kv_heads: Option<usize>,
    ) -> Self {
        let not_mla = variant != Variant::Mla;
        Self {
            gqa_kv_heads,
            kv_lora_rank: overrides.kv_lora_rank.filter(|_| not_mla),
            qk_rope_head_dim: overrides.qk_rope_head_dim.filter(|_| not_mla),
        }
    }
}

/// What to plan.
#[derive(Clone, Debug, PartialEq)]
pub struct PlanRequest {
    /// The model.
    pub model: ModelShape,
    /// How the hypothetical rows are shaped.
    pub alternatives: Alternatives,
    /// Tokens per sequence (a global layer caches them all, a windowed one at most its window).
    pub context: usize,
    /// Sequences.
    pub batch: usize,
    /// Storage types, one set of figures each, in this order.
    pub dtypes: Vec<Dtype>,
    /// Memory for weights and cache together, in GiB (2^30 bytes); `None`: no budget figures.
    pub budget_gib: Option<f64>,
}

/// What one token of one layer caches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum CacheShape {
    /// Keys and values per KV head (MHA, GQA, MQA).
    Heads {
        /// KV heads.
        n_kv_heads: usize,
        /// Width of one key head.
        k_head_dim: usize,
        /// Width of one value head.
        v_head_dim: usize,
    },
    /// MLA's shared latent row `[c_kv | k_rope]`.
    Latent {
        /// Width of `c_kv`.
        kv_lora_rank: usize,
        /// Width of the rotated rope key shared by all heads.
        qk_rope_head_dim: usize,
    },
}

impl fmt::Display for CacheShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            CacheShape::Heads {
                n_kv_heads,
                k_head_dim,
                v_head_dim,
            } => write!(f, "{n_kv_heads} × ({k_head_dim} K + {v_head_dim} V)"),
            CacheShape::Latent {
                kv_lora_rank,
                qk_rope_head_dim,
            } => write!(f, "{kv_lora_rank} c_kv + {qk_rope_head_dim} rope"),
        }
    }
}

/// The figures of one variant in one storage type.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DtypeFigures {
    /// The storage type.
    pub dtype: Dtype,
    /// Cache bytes of one token in one layer, int8's scales included
    /// ([`LayerSpec::kv_bytes_per_token`]).
    pub bytes_per_token_per_layer: u64,
    /// Cache bytes of one token held in every one of the `n_layers` layers: what each token
    /// adds while the context is within the sliding window (always, without one).
    pub bytes_per_token: u64,
    /// Cache bytes of `batch` sequences of `context` tokens over all layers, a windowed layer
    /// holding `min(context, window)` tokens.
    pub cache_bytes: u64,
    /// Most sequences of `context` tokens whose cache fits the budget beside the weights
    /// (0: not even one); `None` without a budget.
    pub max_batch: Option<u64>,
    /// Most tokens per sequence for `batch` sequences whose cache fits the budget beside the
    /// weights, capped at the model's trained maximum (0: not even one); `None` without a
    /// budget, or when nothing bounds it (`max_context_bound` is
    /// [`ContextBound::Unbounded`]).
    pub max_context: Option<u64>,
    /// Cache bytes each token adds once the context is past the window: one token in each
    /// global layer (0 when every layer is windowed); `None` without a window.
    pub bytes_per_token_past_window: Option<u64>,
    /// What stops `max_context`; `None` without a budget.
    pub max_context_bound: Option<ContextBound>,
    /// The budget's own largest context, before the cap at the trained maximum; `None`
    /// without a budget, or when the cache stops growing within the budget (every layer
    /// windowed and the whole window fits).
    pub max_context_by_budget: Option<u64>,
}

/// What stops the largest context that fits a budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ContextBound {
    /// The budget: one token more does not fit.
    Budget,
    /// The model's trained maximum (`max_position_embeddings`): the budget holds more.
    TrainedMaximum,
    /// Nothing: every layer is windowed, the whole window fits, and no trained maximum is
    /// known, so the cache stops growing below the budget at any context.
    Unbounded,
}

named_enum!(ContextBound, "a context bound", {
    Budget => "budget",
    TrainedMaximum => "trained_maximum",
    Unbounded => "unbounded",
});

/// One variant at the model's shape.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct VariantPlan {
    /// The variant.
    pub variant: Variant,
    /// `true` for the model's own variant; `false` for a hypothetical one at its shape.
    pub own: bool,
    /// How this row's shape follows from the model's, e.g. `n_kv_heads = n_heads = 32`.
    pub derivation: String,
    /// What one token of one layer caches.
    pub cache: CacheShape,
    /// Values one token caches in one layer.
    pub values_per_token_per_layer: u64,
    /// One entry per requested storage type.
    pub dtypes: Vec<DtypeFigures>,
    /// The layer whose analytic figure this row uses, with the model's `d_model`; `None` for
    /// a shape no layer of the crate has (keys and values of different widths).
    #[serde(skip)]
    pub layer: Option<LayerSpec>,
}

/// A variant left out, and why.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Omitted {
    /// The variant.
    pub variant: Variant,
    /// Why it has no row.
    pub reason: String,
}

/// The weights in one storage type.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WeightFigures {
    /// The storage type.
    pub dtype: Dtype,
    /// `params · dtype bytes`.
    pub weights_bytes: u64,
    /// `weights_bytes` over the budget, in percent; `None` without a budget.
    pub budget_share_pct: Option<f64>,
}

/// The planner's answer.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Plan {
    /// [`PLAN_FORMAT`].
    pub format: &'static str,
    /// The model's name.
    pub model: String,
    /// The model's own variant.
    pub variant: Variant,
    /// Decoder layers.
    pub n_layers: usize,
    /// Tokens per sequence (a global layer caches them all, a windowed one at most its window).
    pub context: usize,
    /// Sequences.
    pub batch: usize,
    /// The budget in bytes; `None` without one.
    pub budget_bytes: Option<u64>,
    /// Parameters of the whole model; `None`: unknown, weights not counted.
    pub params: Option<u64>,
    /// The weights per storage type, with their share of the budget (empty when `params` is
    /// unknown). The own model's count is used for every row: a hypothetical variant's
    /// different projection sizes are not re-counted.
    pub weights: Vec<WeightFigures>,
    /// MHA, GQA, MQA, MLA, in that order, those that exist at this shape.
    pub rows: Vec<VariantPlan>,
    /// Variants with no row, and why.
    pub omitted: Vec<Omitted>,
    /// Positions the model was trained for; `None`: unknown.
    pub max_position_embeddings: Option<usize>,
    /// The sliding window at `context`; `None`: every layer caches the whole context.
    pub window: Option<WindowFigures>,
    /// What a reader must know before trusting the figures: a context beyond the trained
    /// maximum. Empty when there is nothing.
    pub warnings: Vec<String>,
    /// The preset's caveats (e.g. that an encoder keeps no autoregressive cache); `None`
    /// without any.
    pub notes: Option<String>,
}

/// The default KV-head count of a hypothetical GQA row: the largest divisor of `n_heads` that
/// is at most [`DEFAULT_GQA_MAX_KV_HEADS`] and strictly between 1 and `n_heads` (32 heads: 8;
/// 12 heads: 6; 8 heads: 4). `None` when there is none (a prime head count): GQA at such a
/// shape is MHA or MQA.
pub fn default_gqa_kv_heads(n_heads: usize) -> Option<usize> {
    (2..=DEFAULT_GQA_MAX_KV_HEADS)
        .rev()
        .find(|&g| g < n_heads && n_heads.is_multiple_of(g))
}

/// Whole units of `unit_bytes` in `available_bytes` (a unit past 2^64 bytes fits none).
fn largest_count(available_bytes: u64, unit_bytes: u128) -> u64 {
    assert!(unit_bytes > 0, "a cache unit has at least one byte");
    (available_bytes as u128 / unit_bytes) as u64
}

/// Plans the KV cache of `request.model`: every variant at its shape, in every requested
/// storage type, at `context × batch`, and against the budget.
///
/// # Errors
/// [`Error::InvalidConfig`] naming the field and value when: `context`, `batch`, `n_layers`,
/// `params`, the window or the trained maximum is 0; `dtypes` is empty; the model's layer is
/// invalid; a hypothetical row's explicit width is invalid; the budget is not a positive finite
/// number or the weights fill it in every requested storage type; a cache size does not fit in
/// 64 bits. A context beyond the trained maximum is planned, with a warning.
pub fn plan(request: &PlanRequest) -> Result<Plan> {
    let model = &request.model;
    check_request(request)?;
    let budget_bytes = request.budget_gib.map(budget_bytes).transpose()?;
    let weights = weight_figures(request, budget_bytes)?;
    let window = model
        .window
        .map(|w| WindowFigures::new(w, model.n_layers, request.context));
    let (shapes, omitted) = variant_shapes(model, &request.alternatives)?;
    let rows = shapes
        .into_iter()
        .map(|mut shape| {
            if let Some(w) = &window {
                shape.derivation += &w.derivation_note(shape.variant == model.layer.variant());
            }
            row_figures(shape, request, budget_bytes, &weights)
        })
        .collect::<Result<_>>()?;
    Ok(Plan {
        format: PLAN_FORMAT,
        model: model.name.clone(),
        variant: model.layer.variant(),
        n_layers: model.n_layers,
        context: request.context,
        batch: request.batch,
        budget_bytes,
        params: model.params,
        weights,
        rows,
        omitted,
        max_position_embeddings: model.max_position_embeddings,
        window,
        warnings: warnings(request),
        notes: model.notes.clone(),
    })
}

/// What the figures do not say by themselves: a context beyond the trained maximum.
fn warnings(request: &PlanRequest) -> Vec<String> {
    let model = &request.model;
    model
        .max_position_embeddings
        .filter(|&maximum| request.context > maximum)
        .map(|maximum| {
            format!(
                "context {} exceeds {}'s trained maximum of {maximum} positions (max_position_embeddings)",
                request.context, model.name
            )
        })
        .into_iter()
        .collect()
}

/// Refuses a request with nothing to plan: a zero count, too many layers, no storage type, an
/// invalid layer.
fn check_request(request: &PlanRequest) -> Result<()> {
    let model = &request.model;
    positive("context", request.context)?;
    positive("batch", request.batch)?;
    positive("n_layers", model.n_layers)?;
    if let Some(window) = model.window {
        positive("sliding_window", window.tokens)?;
    }
    if let Some(maximum) = model.max_position_embeddings {
        positive("max_position_embeddings", maximum)?;
    }
    if model.n_layers > MAX_DIMENSION {
        return Err(invalid(
            "n_layers",
            model.n_layers,
            format!("must be at most {MAX_DIMENSION}"),
        ));
    }
    if model.params == Some(0) {
        return Err(invalid("params", 0, "must be at least 1".into()));
    }
    if request.dtypes.is_empty() {
        return Err(invalid("dtype", "none", "name at least one".into()));
    }
    model.layer.validate()
}

/// The weights in each requested storage type and their share of the budget (none when the
/// parameter count is unknown); refuses a budget the weights fill in every type.
fn weight_figures(request: &PlanRequest, budget_bytes: Option<u64>) -> Result<Vec<WeightFigures>> {
    let Some(params) = request.model.params else {
        return Ok(Vec::new());
    };
    let weights: Vec<WeightFigures> = request
        .dtypes
        .iter()
        .map(|&dtype| {
            let weights_bytes = params.checked_mul(dtype.bytes()).ok_or_else(|| {
                invalid(
                    "params",
                    params,
                    format!("the weights in {dtype} exceed 2^64 bytes (16 EiB)"),
                )
            })?;
            Ok(WeightFigures {
                dtype,
                weights_bytes,
                budget_share_pct: budget_bytes.map(|b| 100.0 * weights_bytes as f64 / b as f64),
            })
        })
        .collect::<Result<_>>()?;
    if let (Some(budget), Some(gib)) = (budget_bytes, request.budget_gib)
        && weights.iter().all(|w| w.weights_bytes >= budget)
    {
        let smallest = weights.iter().map(|w| w.weights_bytes).min().unwrap_or(0);
        return Err(invalid(
            "budget_gib",
            gib,
            format!(
                "the weights alone ({params} params, {} in the narrowest storage asked for) fill it",
                human_bytes(smallest)
            ),
        ));
    }
    Ok(weights)
}

/// One row with its figures in every requested storage type.
fn row_figures(
    shape: RowShape,
    request: &PlanRequest,
    budget_bytes: Option<u64>,
    weights: &[WeightFigures],
) -> Result<VariantPlan> {
    let values = shape.values_per_token_per_layer() as u64;
    let dtypes = request
        .dtypes
        .iter()
        .map(|&dtype| {
            // The budget left beside this storage type's weights.
            let available = budget_bytes.map(|budget| {
                let weights = weights
                    .iter()
                    .find(|w| w.dtype == dtype)
                    .map_or(0, |w| w.weights_bytes);
                budget.saturating_sub(weights)
            });
            let per_layer = shape
                .bytes_per_token_per_layer(dtype)
                .ok_or_else(|| too_large("n_kv_heads", shape.values_per_token_per_layer()))?;
            dtype_figures(request, per_layer, dtype, available)
        })
        .collect::<Result<_>>()?;
    Ok(VariantPlan {
        variant: shape.variant,
        own: shape.variant == request.model.layer.variant(),
        derivation: shape.derivation,
        cache: shape.cache,
        values_per_token_per_layer: values,
        dtypes,
        layer: shape.layer,
    })
}

/// The cache figures of `per_layer` bytes per token and layer stored as `dtype`, and the
/// largest batch and context that fit in `available` bytes.
fn dtype_figures(
    request: &PlanRequest,
    per_layer: u64,
    dtype: Dtype,
    available: Option<u64>,
) -> Result<DtypeFigures> {
    let model = &request.model;
    let n_layers = model.n_layers;
    let tokens = LayerTokens::new(n_layers, model.window);
    let per_token = checked(per_layer, n_layers as u64, "n_layers", n_layers)?;
    let (context, batch) = (request.context, request.batch);
    let held = tokens
        .at(context as u64)
        .ok_or_else(|| too_large("context", context))?;
    let per_sequence = checked(per_layer, held, "context", context)?;
    let cache_bytes = checked(per_sequence, batch as u64, "batch", batch)?;
    let budget = available.map(|available| {
        let largest_context =
            tokens.largest_context(largest_count(available, per_layer as u128 * batch as u128));
        Budget {
            max_batch: largest_count(available, per_sequence.into()),
            largest_context,
            maximum: model.max_position_embeddings.map(|m| m as u64),
        }
    });
    let (max_context, max_context_bound) = match budget {
        Some(b) => (b.max_context(), Some(b.bound())),
        None => (None, None),
    };
    Ok(DtypeFigures {
        dtype,
        bytes_per_token_per_layer: per_layer,
        bytes_per_token: per_token,
        cache_bytes,
        max_batch: budget.map(|b| b.max_batch),
        max_context,
        // At most `per_token`, so it fits.
        bytes_per_token_past_window: model.window.map(|_| per_layer * tokens.global()),
        max_context_bound,
        max_context_by_budget: budget.and_then(|b| b.largest_context),
    })
}

/// What a budget holds for one row in one storage type.
#[derive(Clone, Copy)]
struct Budget {
    /// Sequences of the request's context.
    max_batch: u64,
    /// Tokens per sequence for the request's batch; `None`: the cache stops growing within it.
    largest_context: Option<u64>,
    /// The model's trained maximum, when known.
    maximum: Option<u64>,
}

impl Budget {
    /// The largest context, capped at the trained maximum; `None` when nothing bounds it.
    fn max_context(self) -> Option<u64> {
        match (self.largest_context, self.maximum) {
            (Some(c), Some(m)) => Some(c.min(m)),
            (c, m) => c.or(m),
        }
    }

    /// What stops [`Budget::max_context`].
    fn bound(self) -> ContextBound {
        match (self.largest_context, self.maximum) {
            (Some(c), Some(m)) if c > m => ContextBound::TrainedMaximum,
            (Some(_), _) => ContextBound::Budget,
            (None, Some(_)) => ContextBound::TrainedMaximum,
            (None, None) => ContextBound::Unbounded,
        }
    }
}

fn budget_bytes(gib: f64) -> Result<u64> {
    gib_to_bytes(gib).map_err(|e| invalid("budget_gib", gib, e.to_string()))
}

fn checked(a: u64, b: u64, field: &'static str, value: usize) -> Result<u64> {
    a.checked_mul(b).ok_or_else(|| too_large(field, value))
}

fn too_large(field: &'static str, value: usize) -> Error {
    invalid(
        field,
        value,
        "the cache at this size exceeds 2^64 bytes (16 EiB)".into(),
    )
}

fn positive(field: &'static str, value: usize) -> Result<()> {
    if value == 0 {
        return Err(invalid(field, value, "must be at least 1".into()));
    }
    Ok(())
}

fn invalid(field: &'static str, value: impl fmt::Display, reason: String) -> Error {
    Error::InvalidConfig {
        field,
        value: value.to_string(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_gqa_kv_heads_is_the_largest_divisor_up_to_8() {
        assert_eq!(default_gqa_kv_heads(32), Some(8));
        assert_eq!(default_gqa_kv_heads(12), Some(6));
        assert_eq!(default_gqa_kv_heads(8), Some(4));
        assert_eq!(default_gqa_kv_heads(71), None);
        assert_eq!(default_gqa_kv_heads(2), None);
        assert_eq!(default_gqa_kv_heads(1), None);
    }

    /// The JSON names are the table names `Display` prints.
    #[test]
    fn context_bound_and_window_layer_names_are_their_json_names() {
        use crate::presets::WindowLayers;
        for bound in ContextBound::ALL {
            let json = serde_json::to_string(&bound).unwrap();
            assert_eq!(json, format!("\"{bound}\""));
        }
        for layers in WindowLayers::ALL {
            let json = serde_json::to_string(&layers).unwrap();
            assert_eq!(json, format!("\"{layers}\""));
        }
    }

    #[test]
    fn latent_overrides_shape_the_hypothetical_mla_row_only_of_a_model_that_is_not_mla() {
        let overrides = ModelFields {
            kv_lora_rank: Some(256),
            qk_rope_head_dim: Some(32),
            ..ModelFields::default()
        };
        let gqa = Alternatives::from_overrides(Variant::Gqa, &overrides, Some(4));
        assert_eq!(
            gqa,
            Alternatives {
                gqa_kv_heads: Some(4),
                kv_lora_rank: Some(256),
                qk_rope_head_dim: Some(32),
            }
        );
        let mla = Alternatives::from_overrides(Variant::Mla, &overrides, None);
        assert_eq!(mla, Alternatives::default());
    }

    #[test]
    fn human_bytes_shows_mib_and_gib_from_one_gib() {
        assert_eq!(human_bytes(1 << 30), "1024 MiB (1.00 GiB)");
        assert_eq!(human_bytes(61 * 576 * 2 * 32768), "2196 MiB (2.14 GiB)");
        assert_eq!(human_bytes(131072), "128.0 KiB");
        assert_eq!(human_bytes(1000), "1000 B");
        assert_eq!(human_bytes(3 << 20), "3.0 MiB");
    }
}
