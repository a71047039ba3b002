//! Command-line arguments and the wiring of each subcommand.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use attnbench::compare::{
    Axis, CompareSettings, DEFAULT_MIN_CHANGE_PCT, DEFAULT_NOISE_K, UnknownAxis, check_setting,
    compare, load_results,
};
use attnbench::config::{DEFAULT_RMS_NORM_EPS, DEFAULT_ROPE_THETA};
use attnbench::experiment::{MAX_THREADS, load_experiment};
use attnbench::export::{CaseRequest, export_case};
use attnbench::fsutil::write_atomic;
use attnbench::harness::{
    Environment, Existing, Progress, ResultsFile, run_experiment, total_memory_bytes,
    write_results_json,
};
use attnbench::report::{comparison_markdown, markdown, report, write_outputs};
use attnbench::roofline::{CalibrationSize, Machine, calibrate, read_machine, write_machine};
use attnbench::{GroupedConfig, LayerSpec, MlaConfig, MlaPath, Variant};
use clap::{Args, Parser, Subcommand, ValueEnum};
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
            let threads = if threads.is_empty() {
                default_calibration_threads()
            } else {
                threads
            };
            if let Some(&bad) = threads.iter().find(|&&t| t == 0 || t > MAX_THREADS) {
                bail!("--threads {bad}: must be between 1 and {MAX_THREADS}");
            }
            let machine = calibrate_and_save(&out, &threads, size)?;
            outln!("{}", serde_json::to_string_pretty(&machine)?);
            Ok(())
        }
        Command::Export(args) => export(&args),
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

/// The memory limit: the flag, else half of this machine's memory (8 GiB if unknown).
fn memory_limit(flag_gib: Option<f64>) -> Result<u64> {
    match flag_gib {
        Some(gib) if gib.is_finite() && gib > 0.0 => Ok((gib * (1u64 << 30) as f64) as u64),
        Some(gib) => bail!("--memory-limit-gib {gib} is not a positive number"),
        None => Ok(total_memory_bytes().map_or(8 << 30, |m| m / 2)),
    }
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
    let machine = machine_for(&args.machine, &threads)?;
    let mut reporter = ProgressReporter::new(experiment.points.len());
    let results = run_experiment(&experiment, &dir, existing, Some(&machine), &mut |event| {
        reporter.event(event)
    })?;
    reporter.finish();
    write_results_json(&dir, &results)?;
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

/// 1 and every core: the thread counts a run uses unless told otherwise.
fn default_calibration_threads() -> Vec<usize> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores == 1 { vec![1] } else { vec![1, cores] }
}

fn calibrate_and_save(path: &Path, threads: &[usize], size: CalibrationSize) -> Result<Machine> {
    let mut threads = threads.to_vec();
    threads.sort_unstable();
    threads.dedup();
    eprintln!(
        "calibrating: f32 matmul {n}×{n} and a {} MiB read, threads {threads:?} ...",
        size.read_bytes >> 20,
        n = size.matmul_n
    );
    let machine = calibrate(&threads, size, Environment::capture(threads.clone()));
    write_machine(path, &machine)?;
    eprintln!("saved {}", path.display());
    Ok(machine)
}

/// The calibration at `path` if it describes this machine and covers `threads`; otherwise a
/// new one, saved there, covering `threads`, 1 and all cores.
fn machine_for(path: &Path, threads: &[usize]) -> Result<Machine> {
    let now = Environment::capture(threads.to_vec());
    if let Ok(machine) = read_machine(path)
        && machine.matches(&now, threads)
    {
        return Ok(machine);
    }
    let mut wanted = default_calibration_threads();
    wanted.extend_from_slice(threads);
    calibrate_and_save(path, &wanted, CalibrationSize::FULL)
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
            (Progress::Done { result, .. }, None) => match (&result.error, result.median_ns) {
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
    let presets: Vec<PresetRow> = attnbench::experiment::presets()
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

    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list experiments in {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|e| e == "toml")
                && p.file_name().is_some_and(|n| n != "presets.toml")
        })
        .collect();
    files.sort();
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
