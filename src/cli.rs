//! Command-line arguments and the wiring of each subcommand.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use attnbench::config::{DEFAULT_RMS_NORM_EPS, DEFAULT_ROPE_THETA};
use attnbench::export::{CaseRequest, export_case};
use attnbench::fsutil::write_atomic;
use attnbench::{GroupedConfig, LayerSpec, Matrix, MlaConfig, MlaPath, Variant, build_layer};
use clap::{Args, Parser, Subcommand, ValueEnum};
use tabled::settings::Style;
use tabled::{Table, Tabled};

/// Measures what attention variants (MHA, MQA, GQA, MLA) cost on this machine.
#[derive(Debug, Parser)]
#[command(name = "attnbench", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run every variant on one small shape and print a short table (a quick look, not a
    /// benchmark: five samples per cell).
    Demo,
    /// Write an export case: one layer, its weights, a prefill then single-token decodes on one
    /// cache, the outputs and the final cache, as JSON (format `attnbench-case/1`).
    Export(ExportArgs),
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum VariantArg {
    Mha,
    Mqa,
    Gqa,
    Mla,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum MlaPathArg {
    Naive,
    Absorbed,
}

#[derive(Debug, Args)]
struct ExportArgs {
    /// Attention variant.
    #[arg(long, value_enum)]
    variant: VariantArg,
    /// MLA execution path (MLA only).
    #[arg(long, value_enum, default_value = "absorbed")]
    mla_path: MlaPathArg,
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
    /// Seed of the weights and inputs.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output file; standard output when left out.
    #[arg(long)]
    out: Option<PathBuf>,
}

impl ExportArgs {
    fn spec(&self) -> Result<LayerSpec> {
        let variant = match self.variant {
            VariantArg::Mha => Variant::Mha,
            VariantArg::Mqa => Variant::Mqa,
            VariantArg::Gqa => Variant::Gqa,
            VariantArg::Mla => Variant::Mla,
        };
        if variant == Variant::Mla {
            let path = match self.mla_path {
                MlaPathArg::Naive => MlaPath::Naive,
                MlaPathArg::Absorbed => MlaPath::Absorbed,
            };
            return Ok(LayerSpec::Mla {
                config: MlaConfig {
                    d_model: self.d_model,
                    n_heads: self.n_heads,
                    kv_lora_rank: self.kv_lora_rank,
                    q_lora_rank: self.q_lora_rank,
                    qk_nope_head_dim: self.qk_nope_head_dim,
                    qk_rope_head_dim: self.qk_rope_head_dim,
                    v_head_dim: self.v_head_dim,
                    rope_theta: self.rope_theta,
                    rms_norm_eps: self.rms_norm_eps,
                },
                path,
            });
        }
        let n_kv_heads = match (variant, self.n_kv_heads) {
            (_, Some(n)) => n,
            (Variant::Mha, None) => self.n_heads,
            (Variant::Mqa, None) => 1,
            _ => bail!("--n-kv-heads is required for --variant gqa"),
        };
        Ok(LayerSpec::Grouped {
            variant,
            config: GroupedConfig {
                d_model: self.d_model,
                n_heads: self.n_heads,
                n_kv_heads,
                head_dim: self.head_dim,
                rope_theta: self.rope_theta,
            },
        })
    }
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Demo => demo(),
        Command::Export(args) => export(&args),
    }
}

fn export(args: &ExportArgs) -> Result<()> {
    let request = CaseRequest {
        spec: args.spec()?,
        seq_len: args.seq_len,
        decode_steps: args.decode_steps,
        seed: args.seed,
    };
    request.spec.validate()?;
    let case = export_case(&request)?;
    let text = serde_json::to_string(&case)?;
    match &args.out {
        Some(path) => write_atomic(path, text.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => println!("{text}"),
    }
    Ok(())
}

#[derive(Tabled)]
struct DemoRow {
    variant: String,
    params: usize,
    #[tabled(rename = "KV B/token")]
    kv_bytes_per_token: usize,
    #[tabled(rename = "KV cache B (allocated)")]
    kv_cache_bytes: usize,
    #[tabled(rename = "prefill 256 ms")]
    prefill_ms: String,
    #[tabled(rename = "decode @256 µs")]
    decode_us: String,
}

/// The median of `samples` timings of `step`, in seconds.
fn median_seconds(samples: usize, mut step: impl FnMut() -> Result<()>) -> Result<f64> {
    let mut times = Vec::with_capacity(samples);
    for _ in 0..samples {
        let start = Instant::now();
        step()?;
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

fn demo() -> Result<()> {
    const SEQ: usize = 256;
    const SAMPLES: usize = 5;
    let grouped = |variant, n_kv_heads| LayerSpec::Grouped {
        variant,
        config: GroupedConfig {
            d_model: 512,
            n_heads: 8,
            n_kv_heads,
            head_dim: 64,
            rope_theta: DEFAULT_ROPE_THETA,
        },
    };
    let mla = |path| LayerSpec::Mla {
        config: MlaConfig {
            d_model: 512,
            n_heads: 8,
            kv_lora_rank: 128,
            q_lora_rank: Some(192),
            qk_nope_head_dim: 64,
            qk_rope_head_dim: 32,
            v_head_dim: 64,
            rope_theta: DEFAULT_ROPE_THETA,
            rms_norm_eps: DEFAULT_RMS_NORM_EPS,
        },
        path,
    };
    let specs = [
        grouped(Variant::Mha, 8),
        grouped(Variant::Gqa, 2),
        grouped(Variant::Mqa, 1),
        mla(MlaPath::Naive),
        mla(MlaPath::Absorbed),
    ];
    let mut rows = Vec::new();
    for spec in &specs {
        let layer = build_layer(spec, 0)?;
        let info = layer.info();
        let x = attnbench::weights::input(1, "demo/prefill", SEQ, spec.d_model());
        let mut y = Matrix::zeros(SEQ, spec.d_model());
        let prefill = median_seconds(SAMPLES, || {
            let mut cache = layer.new_cache(1, SEQ + 1)?;
            Ok(layer.prefill(&x, &mut cache, &mut y)?)
        })?;
        let mut cache = layer.new_cache(1, SEQ + 1)?;
        layer.prefill(&x, &mut cache, &mut y)?;
        let token = attnbench::weights::input(1, "demo/decode", 1, spec.d_model());
        let mut out = Matrix::zeros(1, spec.d_model());
        let decode = median_seconds(SAMPLES, || {
            cache.truncate(SEQ);
            Ok(layer.decode(&token, &mut cache, &mut out)?)
        })?;
        rows.push(DemoRow {
            variant: spec.label(),
            params: info.params,
            kv_bytes_per_token: info.kv_bytes_per_token,
            kv_cache_bytes: cache.allocated_bytes(),
            prefill_ms: format!("{:.3}", prefill * 1e3),
            decode_us: format!("{:.1}", decode * 1e6),
        });
    }
    println!(
        "attnbench demo: d_model 512, 8 heads, f32, batch 1, {} threads; median of {SAMPLES} samples",
        rayon::current_num_threads()
    );
    println!("{}", Table::new(rows).with(Style::markdown()));
    Ok(())
}
