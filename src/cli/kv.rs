//! `attnbench kv`: plan a model's KV cache.

use anyhow::{Result, anyhow, bail};
use attnbench::Variant;
use attnbench::planner::{self, Alternatives, Dtype, ModelError, ModelShape, PlanRequest};
use attnbench::presets::{ModelFields, preset, preset_names};
use attnbench::report::kv_plan_markdown;
use clap::Args;

use super::{flag, flag_error, outln};

/// `attnbench kv --help`: what the rows are and where their shapes come from.
pub const LONG_ABOUT: &str = "\
Plan a model's KV cache: bytes per token per layer, per token over all layers and at a context
and batch, in f32, f16, bf16 and int8 storage (int8: one byte per value plus one f32 scale per
stored row, docs/design.md §5), side by side for MHA, GQA, MQA and MLA at the model's shape. With --budget-gib: the largest
batch at --context and the largest context at --batch that fit beside the weights.

The model is a preset (`attnbench list`), explicit shape flags, or a preset with flags
overriding its fields. One row is the model's own variant; the others are hypothetical, at its
shape:
  MHA  n_kv_heads = n_heads.
  MQA  n_kv_heads = 1.
  GQA  --gqa-kv-heads, else the largest divisor of n_heads up to 8 strictly between 1 and
       n_heads (32 heads: 8); no row when there is none (a prime head count).
  MLA  --kv-lora-rank and --qk-rope-head-dim, else DeepSeek-V2/V3's ratios:
       kv_lora_rank = 4 * head_dim, qk_rope_head_dim = head_dim / 2 (rounded down to even).
For an MLA model, the MHA/GQA/MQA rows cache keys of qk_nope_head_dim + qk_rope_head_dim and
values of v_head_dim per KV head.

Weights: --params, else the preset's cited parameter count (llama-3-8b, deepseek-v3), else
not counted. They are stored in the same type as the cache, and the model's own count is used
for every row.

The per-layer figure in each type is the one formula the layers' caches are sized by
(int8 rows: 2 * n_kv_heads * (head_dim + 4) bytes; MLA: kv_lora_rank + qk_rope_head_dim + 8).
Bytes are binary (1 GiB = 2^30); --json gives them exactly.";

// Not `export`'s flags (ExportArgs): those default to a tiny layer for a small case file,
// while the planner must not invent a model, so every shape field here is optional and comes
// from the preset unless given.
#[derive(Debug, Args)]
pub struct KvArgs {
    /// A preset of a real model (`attnbench list`); shape flags override its fields.
    #[arg(long)]
    preset: Option<String>,
    /// The model's own variant, when there is no preset (a preset knows its own).
    #[arg(
        long,
        value_enum,
        conflicts_with = "preset",
        required_unless_present = "preset"
    )]
    variant: Option<Variant>,
    /// Decoder layers (each caches its own KV) [default: the preset's].
    #[arg(long)]
    n_layers: Option<usize>,
    /// Query heads [default: the preset's].
    #[arg(long)]
    n_heads: Option<usize>,
    /// Key/value heads of an MHA/GQA/MQA model [default: the preset's; MHA: n_heads; MQA: 1].
    #[arg(long)]
    n_kv_heads: Option<usize>,
    /// Width of one head of an MHA/GQA/MQA model [default: the preset's].
    #[arg(long)]
    head_dim: Option<usize>,
    /// MLA: width of the cached latent c_kv; for a model that is not MLA, of the hypothetical
    /// MLA row [default: the preset's; not MLA: 4 * head_dim].
    #[arg(long)]
    kv_lora_rank: Option<usize>,
    /// MLA: width of the cached rope key; for a model that is not MLA, of the hypothetical MLA
    /// row [default: the preset's; not MLA: head_dim / 2].
    #[arg(long)]
    qk_rope_head_dim: Option<usize>,
    /// MLA model: per-head query/key width without RoPE (the hypothetical rows' keys are
    /// qk_nope_head_dim + qk_rope_head_dim wide) [default: the preset's].
    #[arg(long)]
    qk_nope_head_dim: Option<usize>,
    /// MLA model: per-head value width (the hypothetical rows' values) [default: the preset's].
    #[arg(long)]
    v_head_dim: Option<usize>,
    /// KV heads of the hypothetical GQA row of a model that is not GQA [default: the largest
    /// divisor of n_heads up to 8, strictly between 1 and n_heads].
    #[arg(long)]
    gqa_kv_heads: Option<usize>,
    /// Tokens cached per sequence.
    #[arg(long, value_name = "TOKENS")]
    context: usize,
    /// Sequences.
    #[arg(long, value_name = "SEQUENCES", default_value_t = 1)]
    batch: usize,
    /// Storage types, comma-separated [default: all four].
    #[arg(long, value_enum, value_delimiter = ',')]
    dtype: Vec<Dtype>,
    /// Memory budget for weights and cache, in GiB (2^30 bytes): adds the largest batch at
    /// --context and the largest context at --batch that fit.
    #[arg(long)]
    budget_gib: Option<f64>,
    /// Parameters of the whole model, for the weights' share of the budget [default: the
    /// preset's cited count; otherwise weights are not counted].
    #[arg(long)]
    params: Option<u64>,
    /// Print the plan as JSON (exact bytes) instead of a table.
    #[arg(long)]
    json: bool,
}

impl KvArgs {
    /// The model and the hypothetical rows' choices, from the preset and the flags.
    fn model(&self) -> Result<(ModelShape, Alternatives)> {
        let preset = match &self.preset {
            Some(name) => Some(preset(name).ok_or_else(|| {
                anyhow!("--preset {name}: unknown preset; known: {}", preset_names())
            })?),
            None => None,
        };
        // clap requires one of the two.
        let variant = match (&preset, self.variant) {
            (Some(p), _) => p.variant,
            (None, Some(v)) => v,
            (None, None) => bail!("--variant or --preset is required"),
        };
        let overrides = ModelFields {
            n_layers: self.n_layers,
            n_heads: self.n_heads,
            n_kv_heads: self.n_kv_heads,
            head_dim: self.head_dim,
            kv_lora_rank: self.kv_lora_rank,
            qk_rope_head_dim: self.qk_rope_head_dim,
            qk_nope_head_dim: self.qk_nope_head_dim,
            v_head_dim: self.v_head_dim,
            params: self.params,
            ..ModelFields::default()
        };
        let model =
            ModelShape::resolve(preset.as_ref(), variant, &overrides).map_err(model_error)?;
        let alternatives = Alternatives::from_overrides(variant, &overrides, self.gqa_kv_heads);
        Ok((model, alternatives))
    }
}

/// A model that cannot be resolved, in terms of the flags.
fn model_error(error: ModelError) -> anyhow::Error {
    match error {
        ModelError::Missing(field) => {
            anyhow!(
                "--{} is required without a preset that gives it",
                flag(field.name())
            )
        }
        ModelError::NotApplicable {
            field,
            variant: Variant::Mla,
        } => {
            anyhow!(
                "--{} describes an MHA/GQA/MQA model; this one is MLA",
                flag(field.name())
            )
        }
        ModelError::NotApplicable { field, variant } => anyhow!(
            "--{} describes an MLA model; this one is {variant} (the hypothetical MLA row caches only --kv-lora-rank and --qk-rope-head-dim)",
            flag(field.name())
        ),
    }
}

impl KvArgs {
    /// Turns a library error about a field into one naming the flag a user typed.
    fn flag_error(&self, error: attnbench::Error) -> anyhow::Error {
        match error {
            attnbench::Error::InvalidConfig {
                field: "d_model",
                value,
                reason,
            } => self.d_model_error(&value, &reason),
            other => flag_error(other),
        }
    }

    /// kv has no --d-model: without a preset, d_model is n_heads × head_dim (MLA: n_heads ×
    /// v_head_dim), so a d_model refused is the product of those two flags.
    fn d_model_error(&self, value: &str, reason: &str) -> anyhow::Error {
        let width = match self.variant {
            Some(Variant::Mla) => ("--v-head-dim", self.v_head_dim),
            _ => ("--head-dim", self.head_dim),
        };
        match (self.n_heads, width) {
            (Some(0), _) => anyhow!("--n-heads 0: {reason}"),
            (_, (width_flag, Some(0))) => anyhow!("{width_flag} 0: {reason}"),
            (Some(heads), (width_flag, Some(width))) => {
                let product = heads
                    .checked_mul(width)
                    .map_or(" (past 2^64)".to_string(), |p| format!(" = {p}"));
                anyhow!(
                    "--n-heads {heads} × {width_flag} {width}{product}: the d_model (hidden_size) kv takes without a preset {reason}"
                )
            }
            _ => anyhow!("d_model {value} of the model: {reason}"),
        }
    }
}

pub fn run(args: &KvArgs) -> Result<()> {
    let (model, alternatives) = args.model()?;
    let dtypes = if args.dtype.is_empty() {
        Dtype::ALL.to_vec()
    } else {
        let mut dtypes = args.dtype.clone();
        dtypes.dedup();
        dtypes
    };
    let plan = planner::plan(&PlanRequest {
        model,
        alternatives,
        context: args.context,
        batch: args.batch,
        dtypes,
        budget_gib: args.budget_gib,
    })
    .map_err(|e| args.flag_error(e))?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&plan)?);
    } else {
        outln!("{}", kv_plan_markdown(&plan));
    }
    Ok(())
}
