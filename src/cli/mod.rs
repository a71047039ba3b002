//! The command line: the parser, the subcommands, the dispatch and the exit status of an
//! error. Each subcommand's file owns its flags and its `run`, and only parses and wires: what
//! a flag means is decided in the library.

mod calibrate;
mod compare;
mod export;
mod kv;
mod list;
mod merge;
mod report;
mod run;
mod validate;

use std::process::ExitCode;

use anyhow::{Result, anyhow};
use attnbench::config::GibError;
use attnbench::results::memory_limit_bytes;
use clap::{Parser, Subcommand};

/// `println!` that ends quietly when standard output is closed (e.g. piped into `head`)
/// instead of panicking.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::emit(&format!("{}\n", format_args!($($arg)*)))
    };
}
use outln;

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
    Run(run::RunArgs),
    /// Merge the result sets of a grid's shards (`run --shard K/N`) into one results
    /// directory, written as `run` writes one. Refuses pieces of different experiments (grid
    /// hashes) or attnbench revisions and overlapping points, writing nothing; warns of grid
    /// points no piece holds (an error with --complete). Each point keeps the machine that
    /// measured it; the tables group points by machine when there are several.
    Merge(merge::MergeArgs),
    /// Regenerate results.csv, results.md and charts/*.svg of a results directory from its
    /// results.json, measuring nothing: the same bytes the run wrote. Given a folder of
    /// results directories (e.g. results/), regenerate each and write its README.md index.
    Report(report::ReportArgs),
    /// Check an experiment file without running it: print its grid and what it skips.
    Validate(validate::ValidateArgs),
    /// Measure this machine's peak f32 matmul GFLOP/s (faer) and streaming read bandwidth per
    /// thread count, and save them: every run's roofline columns use them.
    Calibrate(calibrate::CalibrateArgs),
    /// List the presets of real models and the experiment files.
    List(list::ListArgs),
    /// Write an export case: one layer, its weights, a prefill then single-token decodes on one
    /// cache, the outputs and the final cache, as JSON (format `attnbench-case/1`).
    Export(export::ExportArgs),
    /// Plan a model's KV cache: bytes per token per layer, per token over all layers and at a
    /// context and batch, in f32, f16, bf16 and int8, side by side for MHA, GQA, MQA and MLA
    /// at the model's shape; with --budget-gib, the largest batch and context that fit.
    #[command(
        allow_negative_numbers = true,
        long_about = kv::LONG_ABOUT,
    )]
    Kv(kv::KvArgs),
    /// Compare two result sets point by point: the ratio of medians B/A of the step and of the
    /// attention core, with a verdict that accounts for noise (faster, slower, within noise).
    ///
    /// Points are matched by configuration (the key and the shape fields), in A's order;
    /// points only in A or only in B, and points that failed on either side, are listed, not
    /// compared. `--ignore implementation` pairs a peer's result set (PyTorch's, from
    /// tools/peers/pytorch_core.py) with attnbench's; such a set measures the attention core
    /// alone, so judge it with `--metric core`.
    ///
    /// Statistics: each side's noise is estimated from its own samples: σ ≈ 1.4826·MAD, and
    /// the median's standard error ≈ 1.2533·σ/√n. A change ln(B/A) counts as slower or faster
    /// only when it exceeds both NOISE_K combined relative standard errors
    /// √(se_A² + se_B²) and MIN_CHANGE_PCT percent, because runs on a shared machine drift
    /// by a few percent even when each run's samples are tight.
    ///
    /// Exit status: 0 when no point's time (the step, or the core with `--metric core`) regressed beyond --fail-above-pct (or the flag
    /// is not given), 1 when some point did or, with the flag, when no point was compared, a
    /// point failed on either side or a point of A is missing from B; 2 for bad arguments or an
    /// unreadable result set.
    Compare(compare::CompareArgs),
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

/// Runs the parsed command; its exit status when it did not fail.
pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Compare(args) => return compare::run(&args),
        Command::Run(args) => run::run(&args),
        Command::Merge(args) => merge::run(&args),
        Command::Report(args) => report::run(&args),
        Command::Validate(args) => validate::run(&args),
        Command::Calibrate(args) => calibrate::run(args),
        Command::List(args) => list::run(&args),
        Command::Export(args) => export::run(&args),
        Command::Kv(args) => kv::run(&args),
    }?;
    Ok(ExitCode::SUCCESS)
}

/// The command-line flag of a field, e.g. `n-kv-heads` for `n_kv_heads`.
fn flag(field: &str) -> String {
    field.replace('_', "-")
}

/// A library error about a field, as one naming the flag a user types (`--n-kv-heads 5: must
/// divide n_heads = 32`); other errors as they are.
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
