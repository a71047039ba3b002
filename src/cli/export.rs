//! `attnbench export`: write one layer's export case as JSON.

use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use attnbench::config::{DEFAULT_RMS_NORM_EPS, DEFAULT_ROPE_THETA, human_bytes};
use attnbench::export::{CaseRequest, export_case};
use attnbench::fsutil::write_atomic;
use attnbench::presets::{MissingField, ModelFields};
use attnbench::results::memory_limit_bytes;
use attnbench::{Dtype, LayerSpec, MlaPath, Precision, Variant, WeightDtype};
use clap::Args;

use super::{flag, flag_error, outln};

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Attention variant.
    #[arg(long, value_enum)]
    variant: Variant,
    /// MLA execution path (MLA only).
    #[arg(long, value_enum, default_value = "absorbed")]
    mla_path: MlaPath,
    /// Width of the residual stream.
    #[arg(long, default_value_t = 64)]
    d_model: usize,
    /// Query heads.
    #[arg(long, default_value_t = 4)]
    n_heads: usize,
    /// Key/value heads: defaults to n_heads for MHA and 1 for MQA; required for GQA.
    #[arg(long)]
    n_kv_heads: Option<usize>,
    /// Width of one head (MHA/MQA/GQA).
    #[arg(long, default_value_t = 16)]
    head_dim: usize,
    /// RoPE base.
    #[arg(long, default_value_t = DEFAULT_ROPE_THETA)]
    rope_theta: f64,
    /// MLA: width of the cached latent c_kv.
    #[arg(long, default_value_t = 32)]
    kv_lora_rank: usize,
    /// MLA: width of the query latent; leave out for no query compression.
    #[arg(long)]
    q_lora_rank: Option<usize>,
    /// MLA: per-head query/key width without RoPE.
    #[arg(long, default_value_t = 16)]
    qk_nope_head_dim: usize,
    /// MLA: per-head query/key width with RoPE (the shared rope key's width).
    #[arg(long, default_value_t = 8)]
    qk_rope_head_dim: usize,
    /// MLA: per-head value width.
    #[arg(long, default_value_t = 16)]
    v_head_dim: usize,
    /// MLA: RMSNorm epsilon.
    #[arg(long, default_value_t = DEFAULT_RMS_NORM_EPS)]
    rms_norm_eps: f64,
    /// Tokens of the prefill step.
    #[arg(long, default_value_t = 8)]
    seq_len: usize,
    /// Single-token decode steps after the prefill.
    #[arg(long, default_value_t = 2)]
    decode_steps: usize,
    /// How the KV cache is stored (docs/design.md §5): each new K and V row (MLA: the latent
    /// row) rounded once when appended; int8 with one f32 scale per row.
    #[arg(long, value_enum, default_value = "f32")]
    kv_dtype: Dtype,
    /// How the projection weights are stored (RMSNorm scales stay f32).
    #[arg(long, value_enum, default_value = "f32")]
    weight_dtype: WeightDtype,
    /// Seed of the weights and inputs.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output file; standard output when left out.
    #[arg(long)]
    out: Option<PathBuf>,
}

impl ExportArgs {
    fn spec(&self) -> Result<LayerSpec> {
        let fields = ModelFields {
            d_model: Some(self.d_model),
            n_heads: Some(self.n_heads),
            n_kv_heads: self.n_kv_heads,
            head_dim: Some(self.head_dim),
            rope_theta: Some(self.rope_theta),
            kv_lora_rank: Some(self.kv_lora_rank),
            q_lora_rank: self.q_lora_rank,
            qk_nope_head_dim: Some(self.qk_nope_head_dim),
            qk_rope_head_dim: Some(self.qk_rope_head_dim),
            v_head_dim: Some(self.v_head_dim),
            rms_norm_eps: Some(self.rms_norm_eps),
            ..ModelFields::default()
        };
        // Every other field has a default: only GQA's n_kv_heads can be missing.
        fields
            .layer(self.variant, self.mla_path)
            .map_err(|MissingField(field)| {
                anyhow!(
                    "--{} is required for --variant {}",
                    flag(field.name()),
                    self.variant
                )
            })
    }
}

/// Memory a case takes per value it holds, at most: the f32, its JSON value and its text.
const CASE_BYTES_PER_VALUE: u64 = 64;

impl ExportArgs {
    /// Refuses a case too large to build on this machine (half its memory): its weights, every
    /// step's input and output, and the cache at `--seq-len + --decode-steps` tokens (an int8
    /// cache twice: its values and its codes), each value held as an f32, a JSON value and
    /// text. `spec` is checked.
    fn check_size(&self, spec: &LayerSpec) -> Result<()> {
        let (seq_len, steps) = (self.seq_len, self.decode_steps);
        let tokens = seq_len.checked_add(steps).ok_or_else(|| {
            anyhow!("--seq-len {seq_len} + --decode-steps {steps} pass 2^64 tokens")
        })? as u64;
        let copies = if self.kv_dtype == Dtype::Int8 { 2 } else { 1 };
        let cache_values = copies * spec.kv_values_per_token() as u64;
        let bytes = (tokens.checked_mul(2 * spec.d_model() as u64))
            .and_then(|rows| rows.checked_add(spec.param_count() as u64))
            .and_then(|v| v.checked_add(tokens.checked_mul(cache_values)?))
            .and_then(|values| values.checked_mul(CASE_BYTES_PER_VALUE));
        let limit = memory_limit_bytes(None)?;
        if bytes.is_none_or(|b| b > limit) {
            let size = bytes.map_or("more than 2^64 bytes".into(), human_bytes);
            bail!(
                "the case would take about {size} ({} weights, {tokens} tokens of --d-model {}), over half this machine's memory ({}); export a smaller layer (its shape flags) or fewer tokens (--seq-len, --decode-steps)",
                spec.param_count(),
                self.d_model,
                human_bytes(limit)
            );
        }
        Ok(())
    }
}

pub fn run(args: &ExportArgs) -> Result<()> {
    let request = CaseRequest {
        spec: args.spec()?,
        precision: Precision {
            kv_dtype: args.kv_dtype,
            weight_dtype: args.weight_dtype,
        },
        seq_len: args.seq_len,
        decode_steps: args.decode_steps,
        seed: args.seed,
    };
    request.spec.validate().map_err(flag_error)?;
    args.check_size(&request.spec)?;
    let case = export_case(&request).map_err(flag_error)?;
    let text = serde_json::to_string(&case)?;
    match &args.out {
        Some(path) => write_atomic(path, text.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => outln!("{text}"),
    }
    Ok(())
}
