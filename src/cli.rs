//! Command-line arguments and the wiring of each subcommand.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow, bail};
use attnbench::compare::{
    Axis, CompareSettings, DEFAULT_MIN_CHANGE_PCT, DEFAULT_NOISE_K, UnknownAxis, check_setting,
    compare, load_results,
};
use attnbench::config::{DEFAULT_RMS_NORM_EPS, DEFAULT_ROPE_THETA, GibError};
use attnbench::experiment::{experiment_files, load_experiment};
use attnbench::export::{CaseRequest, export_case};
use attnbench::fsutil::write_atomic;
use attnbench::harness::{Existing, Progress, run_experiment};
use attnbench::planner::{self, Alternatives, Dtype, ModelError, ModelShape, PlanRequest};
use attnbench::presets::{MissingField, ModelFields, preset, preset_names};
use attnbench::report::{comparison_markdown, kv_plan_markdown, markdown, report, write_outputs};
use attnbench::results::{CalibrationSize, Machine, ResultsDir, ResultsFile, memory_limit_bytes};
use attnbench::roofline::calibration_threads;
use attnbench::{LayerSpec, MlaPath, Variant};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use tabled::settings::Style;
use tabled::{Table, Tabled};

/// `println!` that ends quietly when standard output is closed (e.g. piped into `head`)
/// instead of panicking.
macro_rules! outln {
    ($($arg:tt)*) => {
        emit(&format!("{}\n", format_args!($($arg)*)))
    };
}

/// Writes `text` to standard output; a closed pipe ends the process quietly with success,
/// as the reader has all it wanted.
fn emit(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write to standard output: {e}");
        std::process::exit(1);
    }
}

/// Measures what attention variants (MHA, MQA, GQA, MLA) cost on this machine.
#[derive(Debug, Parser)]
#[command(name = "attnbench", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run an experiment file: measure every point of its grid, write results.json,
    /// results.csv, results.md and charts/*.svg to the output directory, and print the tables.
    Run(RunArgs),
    /// Regenerate results.csv, results.md and charts/*.svg of a results directory from its
    /// results.json, measuring nothing: the same bytes the run wrote. Given a folder of
    /// results directories (e.g. results/), regenerate each and write its README.md index.
    Report {
        /// A results directory (holding results.json), or a folder of them.
        dir: PathBuf,
    },
    /// Check an experiment file without running it: print its grid and what it skips.
    Validate {
        /// The experiment file (TOML).
        file: PathBuf,
        /// Memory limit per point in GiB [default: half of this machine's memory].
        #[arg(long)]
        memory_limit_gib: Option<f64>,
    },
    /// Measure this machine's peak f32 matmul GFLOP/s (faer) and streaming read bandwidth per
    /// thread count, and save them: every run's roofline columns use them.
    Calibrate {
        /// Where to save [default: results/machine.json].
        #[arg(long, default_value = "results/machine.json")]
        out: PathBuf,
        /// Thread counts to calibrate, comma-separated [default: 1 and all cores].
        #[arg(long, value_delimiter = ',')]
        threads: Vec<usize>,
        /// A small, fast calibration (for tests; too small to publish).
        #[arg(long)]
        quick: bool,
    },
    /// List the presets of real models and the experiment files.
    List {
        /// Directory of experiment files.
        #[arg(long, default_value = "variants")]
        dir: PathBuf,
    },
    /// Write an export case: one layer, its weights, a prefill then single-token decodes on one
    /// cache, the outputs and the final cache, as JSON (format `attnbench-case/1`).
    Export(ExportArgs),
    /// Plan a model's KV cache: bytes per token per layer, per token over all layers and at a
    /// context and batch, in f32, f16, bf16 and int8, side by side for MHA, GQA, MQA and MLA
    /// at the model's shape; with --budget-gib, the largest batch and context that fit.
    #[command(
        allow_negative_numbers = true,
        long_about = KV_LONG_ABOUT,
    )]
    Kv(KvArgs),
    /// Compare two result sets point by point: the ratio of medians B/A of the step and of the
    /// attention core, with a verdict that accounts for noise (faster, slower, within noise).
    ///
    /// Points are matched by configuration (the key and the shape fields), in A's order;
    /// points only in A or only in B, and points that failed on either side, are listed, not
    /// compared.
    ///
    /// Statistics: each side's noise is estimated from its own samples: σ ≈ 1.4826·MAD, and
    /// the median's standard error ≈ 1.2533·σ/√n. A change ln(B/A) counts as slower or faster
    /// only when it exceeds both NOISE_K combined relative standard errors
    /// √(se_A² + se_B²) and MIN_CHANGE_PCT percent, because runs on a shared machine drift
    /// by a few percent even when each run's samples are tight.
    ///
    /// Exit status: 0 when no point's step time regressed beyond --fail-above-pct (or the flag
    /// is not given), 1 when some point did, 2 for bad arguments or an unreadable result set.
    Compare(CompareArgs),
}

impl Cli {
    /// The exit status of an error: 2 for `compare`, whose 1 means "regressed", so that a CI
    /// gate tells a regression from a broken invocation; 1 for every other command.
    pub fn error_exit_code(&self) -> ExitCode {
        match self.command {
            Command::Compare(_) => ExitCode::from(2),
            _ => ExitCode::FAILURE,
        }
    }
}

#[derive(Debug, Args)]
struct CompareArgs {
    /// Baseline: a results directory or its results.json.
    a: PathBuf,
    /// Candidate: a results directory or its results.json.
    b: PathBuf,
    /// Match points ignoring these axes, comma-separated (threads, kernel): e.g. a 1-thread
    /// run against a 2-thread run. Two points of one side that then look alike are an error.
    #[arg(long, value_delimiter = ',', value_parser = parse_axis)]
    ignore: Vec<Axis>,
    /// A change counts only beyond this many combined standard errors of the two medians.
    #[arg(long, default_value_t = DEFAULT_NOISE_K)]
    noise_k: f64,
    /// A change counts only beyond this many percent, however tight the samples.
    #[arg(long, default_value_t = DEFAULT_MIN_CHANGE_PCT)]
    min_change_pct: f64,
    /// CI gate: exit with status 1 when a point's step time is "slower" by more than this
    /// many percent. The core's verdict is shown but not gated.
    #[arg(long)]
    fail_above_pct: Option<f64>,
    /// Print the comparison as JSON instead of tables.
    #[arg(long)]
    json: bool,
}

fn parse_axis(name: &str) -> Result<Axis, UnknownAxis> {
    name.parse()
}

const KV_LONG_ABOUT: &str = "\
Plan a model's KV cache: bytes per token per layer, per token over all layers and at a context
and batch, in f32, f16, bf16 and int8 storage (int8: one byte per value, scales not counted),
side by side for MHA, GQA, MQA and MLA at the model's shape. With --budget-gib: the largest
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

The per-layer f32 figure is the one the layers report and the harness reads from the cache's
allocation. Bytes are binary (1 GiB = 2^30); --json gives them exactly.";

#[derive(Debug, Args)]
struct RunArgs {
    /// The experiment file (TOML), e.g. variants/smoke.toml.
    file: PathBuf,
    /// Output directory [default: results/<experiment name>/].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue an interrupted run: keep the points its log holds, measure the rest.
    #[arg(long, conflicts_with = "force")]
    resume: bool,
    /// Delete the results already in the output directory and start over.
    #[arg(long)]
    force: bool,
    /// Refuse points whose estimated memory exceeds this many GiB [default: half of this
    /// machine's memory; the file's measure.memory_limit_gib wins over both].
    #[arg(long)]
    memory_limit_gib: Option<f64>,
    /// Print no tables, only where the files went.
    #[arg(long)]
    quiet: bool,
    /// This machine's calibration; made (and saved there) first if it is missing or was
    /// measured on another machine.
    #[arg(long, default_value = "results/machine.json")]
    machine: PathBuf,
}

#[derive(Debug, Args)]
struct ExportArgs {
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
    /// Seed of the weights and inputs.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output file; standard output when left out.
    #[arg(long)]
    out: Option<PathBuf>,
}

// Not ExportArgs' fields: those default to a tiny layer for a small case file, while the planner
// must not invent a model, so every shape field here is optional and comes from the preset
// unless given.
#[derive(Debug, Args)]
struct KvArgs {
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

/// Runs the parsed command; its exit status when it did not fail.
pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Compare(args) => return compare_results(&args),
        Command::Run(args) => run_file(&args),
        Command::Validate {
            file,
            memory_limit_gib,
        } => validate(&file, memory_limit_gib),
        Command::List { dir } => list(&dir),
        Command::Report { dir } => regenerate(&dir),
        Command::Calibrate {
            out,
            threads,
            quick,
        } => {
            let size = if quick {
                CalibrationSize::QUICK
            } else {
                CalibrationSize::FULL
            };
            let threads =
                calibration_threads(threads).map_err(|e| anyhow!("--threads {}: {e}", e.0))?;
            let machine =
                Machine::calibrate_and_save(&out, &threads, size, &mut |e| eprintln!("{e}"))?;
            outln!("{}", serde_json::to_string_pretty(&machine)?);
            Ok(())
        }
        Command::Export(args) => export(&args),
        Command::Kv(args) => kv(&args),
    }?;
    Ok(ExitCode::SUCCESS)
}

/// One line on a result set: where it came from and how it ran.
fn describe(label: &str, path: &Path, results: &ResultsFile) -> String {
    let env = &results.environment;
    format!(
        "{label}: {} (experiment `{}`, {} points, {}, {} at {}, threads {:?})",
        path.display(),
        results.experiment.name,
        results.points.len(),
        env.date,
        env.cpu_model,
        env.git_revision,
        env.threads
    )
}

fn compare_results(args: &CompareArgs) -> Result<ExitCode> {
    if let Some(pct) = args.fail_above_pct {
        check_setting("fail_above_pct", pct)?;
    }
    let settings = CompareSettings {
        noise_k: args.noise_k,
        min_change_pct: args.min_change_pct,
        ignore: args.ignore.clone(),
    };
    settings.validate()?;
    let a = load_results(&args.a)?;
    let b = load_results(&args.b)?;
    let comparison = compare(&a.points, &b.points, &settings)?;
    let regressions = args
        .fail_above_pct
        .map(|pct| comparison.regressions(pct))
        .unwrap_or_default();
    if args.json {
        let regressed: Vec<&str> = regressions.iter().map(|p| p.key_a.as_str()).collect();
        let json = serde_json::json!({
            "a": args.a,
            "b": args.b,
            "counts": comparison.counts(),
            "core_counts": comparison.core_counts(),
            "fail_above_pct": args.fail_above_pct,
            "regressions": regressed,
            "comparison": comparison,
        });
        outln!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        outln!("{}", describe("A", &args.a, &a));
        outln!("{}\n", describe("B", &args.b, &b));
        outln!("{}", comparison_markdown(&comparison));
    }
    match (args.fail_above_pct, regressions.as_slice()) {
        (Some(pct), [_, ..]) => {
            let list: Vec<String> = regressions
                .iter()
                .filter_map(|p| {
                    p.step()
                        .map(|c| format!("{} (+{:.1}%)", p.key_a, c.change_pct()))
                })
                .collect();
            eprintln!(
                "regression: {} point(s) slower by more than {pct}%: {}",
                regressions.len(),
                list.join(", ")
            );
            Ok(ExitCode::FAILURE)
        }
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// Turns a library error about a field into one naming the flag a user types.
fn flag_error(error: attnbench::Error) -> anyhow::Error {
    match error {
        attnbench::Error::InvalidConfig {
            field,
            value,
            reason,
        } => anyhow!("--{} {value}: {reason}", flag(field)),
        other => other.into(),
    }
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
        let model = ModelShape::resolve(preset.as_ref(), variant, &overrides).map_err(|e| match e {
            ModelError::Missing(field) => {
                anyhow!("--{} is required without a preset that gives it", flag(field.name()))
            }
            ModelError::NotApplicable { field, variant: Variant::Mla } => {
                anyhow!("--{} describes an MHA/GQA/MQA model; this one is MLA", flag(field.name()))
            }
            ModelError::NotApplicable { field, variant } => anyhow!(
                "--{} describes an MLA model; this one is {variant} (the hypothetical MLA row caches only --kv-lora-rank and --qk-rope-head-dim)",
                flag(field.name())
            ),
        })?;
        let alternatives = Alternatives::from_overrides(variant, &overrides, self.gqa_kv_heads);
        Ok((model, alternatives))
    }
}

/// The command-line flag of a field, e.g. `n-kv-heads` for `n_kv_heads`.
fn flag(field: &str) -> String {
    field.replace('_', "-")
}

fn kv(args: &KvArgs) -> Result<()> {
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
    .map_err(flag_error)?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&plan)?);
    } else {
        outln!("{}", kv_plan_markdown(&plan));
    }
    Ok(())
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
        None => outln!("{text}"),
    }
    Ok(())
}

/// The memory limit per point of `--memory-limit-gib` ([`memory_limit_bytes`]), its errors
/// naming the flag.
fn memory_limit(flag_gib: Option<f64>) -> Result<u64> {
    memory_limit_bytes(flag_gib).map_err(|e| {
        // Only a given size is refused, never the default.
        let gib = flag_gib.unwrap_or_default();
        match e {
            GibError::NotPositive => anyhow!("--memory-limit-gib {gib} is not a positive number"),
            e => anyhow!("--memory-limit-gib {gib}: {e}"),
        }
    })
}

fn validate(file: &Path, memory_limit_gib: Option<f64>) -> Result<()> {
    let experiment = load_experiment(file, memory_limit(memory_limit_gib)?)?;
    outln!(
        "{}: experiment `{}`, {} points, {} skipped",
        file.display(),
        experiment.name,
        experiment.points.len(),
        experiment.skipped.len()
    );
    for point in &experiment.points {
        outln!("  {}", point.key());
    }
    for skipped in &experiment.skipped {
        outln!("  skipped {}: {}", skipped.what, skipped.reason);
    }
    Ok(())
}

fn run_file(args: &RunArgs) -> Result<()> {
    // Everything is checked before the output directory is touched.
    let experiment = load_experiment(&args.file, memory_limit(args.memory_limit_gib)?)?;
    let dir = args
        .out
        .clone()
        .unwrap_or_else(|| Path::new("results").join(&experiment.name));
    let existing = match (args.resume, args.force) {
        (true, _) => Existing::Resume,
        (_, true) => Existing::Overwrite,
        _ => Existing::Refuse,
    };
    let threads: Vec<usize> = experiment.points.iter().map(|p| p.threads).collect();
    let machine = Machine::load_or_calibrate(&args.machine, &threads, &mut |e| eprintln!("{e}"))?;
    let mut reporter = ProgressReporter::new(experiment.points.len());
    let results = run_experiment(&experiment, &dir, existing, Some(&machine), &mut |event| {
        reporter.event(event)
    })?;
    reporter.finish();
    ResultsDir::new(&dir).write_results(&results)?;
    let written = write_outputs(&dir, &results)?;
    if !args.quiet {
        outln!("{}", markdown(&results));
    }
    let failed = results.points.iter().filter(|p| p.error.is_some()).count();
    eprintln!(
        "wrote {dir}/{{results.json,results.csv,results.md}} and {} charts: {} points ({} resumed, {failed} failed), {} skipped",
        written.len() - 2,
        results.points.len(),
        results.experiment.points_resumed,
        results.skipped.len(),
        dir = dir.display()
    );
    Ok(())
}

fn regenerate(dir: &Path) -> Result<()> {
    let done = report(dir)?;
    for (dir, files) in &done.dirs {
        eprintln!(
            "wrote {dir}/{{results.csv,results.md}} and {} charts",
            files.len() - 2,
            dir = dir.display()
        );
    }
    if let Some(index) = &done.index {
        eprintln!("wrote {}", index.display());
    }
    Ok(())
}

/// Progress on stderr: a bar with the current point and an ETA on a terminal, one plain line
/// per point otherwise (logs, CI).
struct ProgressReporter {
    bar: Option<ProgressBar>,
    total: usize,
}

impl ProgressReporter {
    fn new(total: usize) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total as u64);
            bar.set_style(
                ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} [{elapsed_precise}, ETA {eta}] {msg}",
                )
                .expect("valid template"),
            );
            bar
        });
        Self { bar, total }
    }

    fn event(&mut self, event: Progress<'_>) {
        match (event, &self.bar) {
            (Progress::Resumed(n), bar) if n > 0 => {
                let line = format!("resuming: {n} of {} points already measured", self.total);
                match bar {
                    Some(bar) => {
                        bar.set_position(n as u64);
                        bar.reset_eta();
                        bar.println(line);
                    }
                    None => eprintln!("{line}"),
                }
            }
            (Progress::Start { point, .. }, Some(bar)) => bar.set_message(point.key()),
            (
                Progress::Start {
                    index,
                    total,
                    point,
                },
                None,
            ) => {
                eprint!("[{}/{total}] {} ... ", index + 1, point.key());
            }
            (Progress::Done { result, .. }, Some(bar)) => {
                if let Some(error) = &result.error {
                    bar.println(format!("{}: error: {error}", result.key));
                }
                bar.inc(1);
            }
            (Progress::Done { result, .. }, None) => match (&result.error, result.step.median_ns) {
                (Some(error), _) => eprintln!("error: {error}"),
                (None, Some(ns)) => eprintln!("{:.3} ms", ns / 1e6),
                (None, None) => eprintln!("done"),
            },
            _ => {}
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

#[derive(Tabled)]
struct PresetRow {
    name: String,
    variant: String,
    d_model: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    #[tabled(rename = "MLA d_c+rope")]
    mla_latent: String,
    layers: usize,
    #[tabled(rename = "KV values/token/layer")]
    kv_values: usize,
}

#[derive(Tabled)]
struct ExperimentRow {
    file: String,
    points: String,
    description: String,
}

fn list(dir: &Path) -> Result<()> {
    let presets: Vec<PresetRow> = attnbench::presets::presets()
        .into_iter()
        .map(|p| PresetRow {
            variant: p.variant.to_string(),
            d_model: p.d_model,
            n_heads: p.n_heads,
            n_kv_heads: p.n_kv_heads,
            head_dim: p.head_dim,
            mla_latent: match (p.kv_lora_rank, p.qk_rope_head_dim) {
                (Some(c), Some(r)) => format!("{c}+{r}"),
                _ => String::new(),
            },
            layers: p.n_layers,
            kv_values: p.kv_values_per_token_per_layer,
            name: p.name,
        })
        .collect();
    outln!("Presets (use as `preset = \"NAME\"` in an experiment's [model]):\n");
    outln!("{}\n", Table::new(presets).with(Style::markdown()));

    let files = experiment_files(dir)
        .with_context(|| format!("cannot list experiments in {}", dir.display()))?;
    let limit = memory_limit(None)?;
    let experiments: Vec<ExperimentRow> = files
        .iter()
        .map(|path| match load_experiment(path, limit) {
            Ok(e) => ExperimentRow {
                file: path.display().to_string(),
                points: e.points.len().to_string(),
                description: e.description.lines().next().unwrap_or_default().to_string(),
            },
            Err(err) => ExperimentRow {
                file: path.display().to_string(),
                points: "invalid".into(),
                description: err.to_string(),
            },
        })
        .collect();
    outln!(
        "Experiments in {} (run with `attnbench run FILE`):\n",
        dir.display()
    );
    outln!("{}", Table::new(experiments).with(Style::markdown()));
    Ok(())
}
