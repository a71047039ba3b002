//! The rows of a plan before their figures: MHA, GQA, MQA and MLA at the model's shape, one
//! function each, and the variants that have no row.

use crate::config::{
    DEFAULT_RMS_NORM_EPS, DEFAULT_ROPE_THETA, Dtype, GroupedConfig, LayerSpec, MlaConfig, MlaPath,
    Variant,
};
use crate::error::Result;

use super::{
    Alternatives, CacheShape, DEFAULT_GQA_MAX_KV_HEADS, ModelShape, Omitted, default_gqa_kv_heads,
    invalid,
};

/// One row's shape before the figures.
pub(super) struct RowShape {
    pub variant: Variant,
    pub derivation: String,
    pub cache: CacheShape,
    pub layer: Option<LayerSpec>,
}

impl RowShape {
    /// Values one token caches in one layer.
    pub fn values_per_token_per_layer(&self) -> usize {
        match &self.layer {
            // The layers' own analytic figure, the one checked against their allocations.
            Some(layer) => layer.kv_values_per_token(),
            None => {
                let (n_kv_heads, k_head_dim, v_head_dim) = self.unequal_heads();
                n_kv_heads * (k_head_dim + v_head_dim)
            }
        }
    }

    /// Bytes one token caches in one layer stored as `dtype`, int8's scales included
    /// (docs/design.md §5); `None` past 2^64.
    pub fn bytes_per_token_per_layer(&self, dtype: Dtype) -> Option<u64> {
        match &self.layer {
            // The one formula the layers' caches are allocated by.
            Some(layer) => layer.kv_bytes_per_token(dtype),
            // Each K and each V row is one stored row with its own scale, as in that formula.
            None => {
                let (n_kv_heads, k_head_dim, v_head_dim) = self.unequal_heads();
                dtype
                    .row_bytes(k_head_dim as u64)?
                    .checked_add(dtype.row_bytes(v_head_dim as u64)?)?
                    .checked_mul(n_kv_heads as u64)
            }
        }
    }

    /// `(n_kv_heads, k_head_dim, v_head_dim)` of a row without a layer: keys and values of
    /// different widths, a shape no layer of the crate has.
    fn unequal_heads(&self) -> (usize, usize, usize) {
        match self.cache {
            CacheShape::Heads {
                n_kv_heads,
                k_head_dim,
                v_head_dim,
            } => (n_kv_heads, k_head_dim, v_head_dim),
            CacheShape::Latent { .. } => unreachable!("every latent row is an MLA layer"),
        }
    }
}

/// What the grouped rows derive from: the model's own variant and query heads, and the key
/// and value widths of a grouped head at its shape (an MLA model's differ).
struct Shape {
    own: Variant,
    d_model: usize,
    n_heads: usize,
    k: usize,
    v: usize,
    /// How `k` and `v` follow from an MLA model's widths; empty for a grouped model.
    widths_note: String,
}

impl Shape {
    fn of(model: &ModelShape) -> Self {
        let (k, v, widths_note) = match &model.layer {
            LayerSpec::Grouped { config, .. } => (config.head_dim, config.head_dim, String::new()),
            LayerSpec::Mla { config, .. } => (
                config.qk_head_dim(),
                config.v_head_dim,
                format!(
                    "; K = qk_nope_head_dim + qk_rope_head_dim = {}, V = v_head_dim = {}",
                    config.qk_head_dim(),
                    config.v_head_dim
                ),
            ),
        };
        Self {
            own: model.layer.variant(),
            d_model: model.layer.d_model(),
            n_heads: model.layer.n_heads(),
            k,
            v,
            widths_note,
        }
    }

    /// A grouped row of `variant` with `n_kv_heads` heads; `rule` says how `n_kv_heads`
    /// follows, and the derivation adds whose row it is or how the widths follow.
    fn heads_row(&self, variant: Variant, n_kv_heads: usize, rule: String) -> Result<RowShape> {
        let derivation = if variant == self.own {
            own_label(&rule)
        } else {
            format!("{rule}{}", self.widths_note)
        };
        heads_row(
            variant,
            derivation,
            (self.d_model, self.n_heads, n_kv_heads),
            (self.k, self.v),
        )
    }
}

fn own_label(what: &str) -> String {
    format!("the model's own: {what}")
}

/// MHA, GQA, MQA and MLA at the model's shape (see [`Alternatives`] and the module docs of
/// the planner), and the variants left out.
pub(super) fn variant_shapes(
    model: &ModelShape,
    alt: &Alternatives,
) -> Result<(Vec<RowShape>, Vec<Omitted>)> {
    let shape = Shape::of(model);
    let n_heads = shape.n_heads;
    let mut rows = vec![shape.heads_row(
        Variant::Mha,
        n_heads,
        format!("n_kv_heads = n_heads = {n_heads}"),
    )?];
    let mut omitted = Vec::new();
    match gqa_kv_heads(model, alt)? {
        Some((g, rule)) => rows.push(shape.heads_row(Variant::Gqa, g, rule)?),
        None => omitted.push(Omitted {
            variant: Variant::Gqa,
            reason: format!(
                "no KV-head count strictly between 1 and n_heads = {n_heads} divides it"
            ),
        }),
    }
    rows.push(shape.heads_row(Variant::Mqa, 1, "n_kv_heads = 1".into())?);
    rows.push(mla_row(model, alt)?);
    Ok((rows, omitted))
}

/// The GQA row's KV heads and how they follow (without the widths note): a GQA model's own,
/// the given count, or the default; `None` when no count fits.
fn gqa_kv_heads(model: &ModelShape, alt: &Alternatives) -> Result<Option<(usize, String)>> {
    let n_heads = model.layer.n_heads();
    if let LayerSpec::Grouped {
        variant: Variant::Gqa,
        config,
    } = &model.layer
    {
        if let Some(g) = alt.gqa_kv_heads {
            return Err(invalid(
                "gqa_kv_heads",
                g,
                format!(
                    "the model is GQA itself with n_kv_heads = {}; change that instead",
                    config.n_kv_heads
                ),
            ));
        }
        return Ok(Some((
            config.n_kv_heads,
            format!("n_kv_heads = {}", config.n_kv_heads),
        )));
    }
    match alt.gqa_kv_heads {
        Some(g) if !(g > 1 && g < n_heads && n_heads.is_multiple_of(g)) => Err(invalid(
            "gqa_kv_heads",
            g,
            format!("must divide n_heads = {n_heads} and lie strictly between 1 and it"),
        )),
        Some(g) => Ok(Some((g, format!("n_kv_heads = {g} (given)")))),
        None => Ok(default_gqa_kv_heads(n_heads).map(|g| {
            (
                g,
                format!(
                    "n_kv_heads = {g}: the largest divisor of n_heads = {n_heads} up to {DEFAULT_GQA_MAX_KV_HEADS}"
                ),
            )
        })),
    }
}

/// The MLA row: an MLA model's own layer, or a hypothetical one at DeepSeek-V2/V3's ratios to
/// the model's head width unless the widths are given.
fn mla_row(model: &ModelShape, alt: &Alternatives) -> Result<RowShape> {
    let (config, derivation) = match &model.layer {
        LayerSpec::Mla { config, .. } => {
            for (field, given) in [
                ("kv_lora_rank", alt.kv_lora_rank),
                ("qk_rope_head_dim", alt.qk_rope_head_dim),
            ] {
                if let Some(value) = given {
                    return Err(invalid(
                        field,
                        value,
                        "the model is MLA itself: this is its own width, not a hypothetical one"
                            .into(),
                    ));
                }
            }
            let derivation = own_label(&format!(
                "kv_lora_rank = {}, qk_rope_head_dim = {}",
                config.kv_lora_rank, config.qk_rope_head_dim
            ));
            (config.clone(), derivation)
        }
        LayerSpec::Grouped { config, .. } => hypothetical_mla(config, alt),
    };
    config.validate()?;
    Ok(RowShape {
        variant: Variant::Mla,
        derivation,
        cache: CacheShape::Latent {
            kv_lora_rank: config.kv_lora_rank,
            qk_rope_head_dim: config.qk_rope_head_dim,
        },
        layer: Some(LayerSpec::Mla {
            config,
            path: MlaPath::Absorbed,
        }),
    })
}

/// MLA at a grouped model's shape: `kv_lora_rank = 4 · head_dim`, `qk_rope_head_dim =
/// head_dim / 2` rounded down to even, unless given; the uncached widths equal `head_dim`.
fn hypothetical_mla(config: &GroupedConfig, alt: &Alternatives) -> (MlaConfig, String) {
    let head_dim = config.head_dim;
    let rank = alt.kv_lora_rank.unwrap_or(4 * head_dim);
    let rope = alt.qk_rope_head_dim.unwrap_or(head_dim / 4 * 2);
    let said = |given: bool, rule: &str, value: usize| {
        if given {
            format!("{value} (given)")
        } else {
            format!("{rule} = {value}")
        }
    };
    let derivation = format!(
        "kv_lora_rank = {}, qk_rope_head_dim = {} (DeepSeek-V2/V3's ratios); qk_nope_head_dim = v_head_dim = head_dim, not cached",
        said(alt.kv_lora_rank.is_some(), "4 · head_dim", rank),
        said(alt.qk_rope_head_dim.is_some(), "head_dim / 2", rope),
    );
    let mla = MlaConfig {
        d_model: config.d_model,
        n_heads: config.n_heads,
        kv_lora_rank: rank,
        q_lora_rank: None,
        qk_nope_head_dim: head_dim,
        qk_rope_head_dim: rope,
        v_head_dim: head_dim,
        rope_theta: DEFAULT_ROPE_THETA,
        rms_norm_eps: DEFAULT_RMS_NORM_EPS,
    };
    (mla, derivation)
}

/// A grouped row of `n_kv_heads` heads with keys `k` and values `v` wide; a buildable layer
/// when `k == v`.
fn heads_row(
    variant: Variant,
    derivation: String,
    (d_model, n_heads, n_kv_heads): (usize, usize, usize),
    (k, v): (usize, usize),
) -> Result<RowShape> {
    let layer = (k == v).then_some(LayerSpec::Grouped {
        variant,
        config: GroupedConfig {
            d_model,
            n_heads,
            n_kv_heads,
            head_dim: k,
            rope_theta: DEFAULT_ROPE_THETA,
        },
    });
    if let Some(layer) = &layer {
        layer.validate()?;
    }
    Ok(RowShape {
        variant,
        derivation,
        cache: CacheShape::Heads {
            n_kv_heads,
            k_head_dim: k,
            v_head_dim: v,
        },
        layer,
    })
}
