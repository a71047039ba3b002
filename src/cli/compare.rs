//! `attnbench compare`: two result sets point by point, and the CI gate on regressions.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Result, anyhow};
use attnbench::compare::{
    Axis, CompareError, CompareSettings, DEFAULT_MIN_CHANGE_PCT, DEFAULT_NOISE_K, Metric,
    UnknownAxis, UnknownMetric, check_setting, compare, load_results,
};
use attnbench::report::comparison_markdown;
use attnbench::results::{DEFAULT_IMPLEMENTATION, ResultsFile};
use clap::Args;

use super::{flag, outln};

#[derive(Debug, Args)]
pub struct CompareArgs {
    /// Baseline: a results directory or its results.json.
    a: PathBuf,
    /// Candidate: a results directory or its results.json.
    b: PathBuf,
    /// Match points ignoring these axes, comma-separated (threads, kernel, implementation):
    /// e.g. a 1-thread run against a 2-thread run, or a peer's result set (PyTorch, from
    /// tools/peers/) against attnbench's. Two points of one side that then look alike are an
    /// error.
    #[arg(long, value_delimiter = ',', value_parser = parse_axis)]
    ignore: Vec<Axis>,
    /// The time the counts and the gate judge: `step` (the whole layer step) or `core` (the
    /// attention core alone). A peer's result set measures only the core: compare it with
    /// attnbench's with `--metric core`.
    #[arg(long, default_value = "step", value_parser = parse_metric)]
    metric: Metric,
    /// A change counts only beyond this many combined standard errors of the two medians.
    #[arg(long, default_value_t = DEFAULT_NOISE_K, allow_negative_numbers = true)]
    noise_k: f64,
    /// A change counts only beyond this many percent, however tight the samples.
    #[arg(long, default_value_t = DEFAULT_MIN_CHANGE_PCT, allow_negative_numbers = true)]
    min_change_pct: f64,
    /// CI gate: exit with status 1 when a point's judged time (--metric: the step by default)
    /// is "slower" by more than this many percent, or when no point was compared, a point
    /// failed on either side, or a point of A is missing from B. With the step judged, the
    /// core's verdict is shown but not gated.
    #[arg(long, allow_negative_numbers = true)]
    fail_above_pct: Option<f64>,
    /// Print the comparison as JSON instead of tables.
    #[arg(long)]
    json: bool,
}

fn parse_axis(name: &str) -> Result<Axis, UnknownAxis> {
    name.parse()
}

fn parse_metric(name: &str) -> Result<Metric, UnknownMetric> {
    name.parse()
}

/// One line on a result set: where it came from and how it ran, and what measured it when
/// that is not attnbench alone.
fn describe(label: &str, path: &Path, results: &ResultsFile) -> String {
    let env = &results.environment;
    let mut implementations: Vec<&str> = Vec::new();
    for p in &results.points {
        if !implementations.contains(&p.implementation.as_str()) {
            implementations.push(&p.implementation);
        }
    }
    let by = match implementations.as_slice() {
        [] => String::new(),
        [only] if *only == DEFAULT_IMPLEMENTATION => String::new(),
        names => format!(", implementation {}", names.join(", ")),
    };
    format!(
        "{label}: {} (experiment `{}`, {} points{by}, {}, {} at {}, threads {:?})",
        path.display(),
        results.experiment.name,
        results.points.len(),
        env.date,
        env.cpu_model,
        env.git_revision,
        env.threads
    )
}

pub fn run(args: &CompareArgs) -> Result<ExitCode> {
    if let Some(pct) = args.fail_above_pct {
        check_setting("fail_above_pct", pct).map_err(setting_error)?;
    }
    let settings = CompareSettings {
        noise_k: args.noise_k,
        min_change_pct: args.min_change_pct,
        ignore: args.ignore.clone(),
        metric: args.metric,
    };
    settings.validate().map_err(setting_error)?;
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
    let Some(pct) = args.fail_above_pct else {
        return Ok(ExitCode::SUCCESS);
    };
    let mut passed = true;
    if !regressions.is_empty() {
        let list: Vec<String> = regressions
            .iter()
            .filter_map(|p| {
                p.of(args.metric)
                    .map(|c| format!("{} (+{:.1}%)", p.key_a, c.change_pct()))
            })
            .collect();
        eprintln!(
            "regression: {} point(s) slower{} by more than {pct}%: {}",
            regressions.len(),
            match args.metric {
                Metric::Step => "",
                Metric::Core => " (core)",
            },
            list.join(", ")
        );
        passed = false;
    }
    for problem in comparison.gate_problems() {
        eprintln!("gate failed: {problem}");
        passed = false;
    }
    Ok(if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// A setting out of range, naming its flag.
fn setting_error(error: CompareError) -> anyhow::Error {
    match error {
        CompareError::Setting { name, value } => {
            anyhow!("--{} {value}: must be a finite number ≥ 0", flag(name))
        }
        other => other.into(),
    }
}
