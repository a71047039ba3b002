//! `attnbench run`: measure an experiment's grid, write its results and report progress.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow};
use attnbench::experiment::{Experiment, Shard, ShardSpec, load_experiment, shard_from_env};
use attnbench::harness::{Existing, Progress, run_experiment};
use attnbench::report::{render, write_rendered};
use attnbench::results::{Environment, Grid, Machine, ResultsDir, ResultsFile};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use super::{memory_limit, outln};

#[derive(Debug, Args)]
pub struct RunArgs {
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
    /// Run only shard K of N of the grid (1-based, e.g. 2/3), split by estimated cost and the
    /// same on every machine; `auto` reads it from Slurm (SLURM_ARRAY_TASK_ID, _MIN, _COUNT),
    /// `auto/N` also from Kubernetes (JOB_COMPLETION_INDEX, 0-based, of N). Merge the shards
    /// with `attnbench merge` [default output: results/<experiment name>/shard-K-of-N/].
    #[arg(long, value_name = "K/N|auto|auto/N")]
    shard: Option<ShardSpec>,
}

/// The shard `--shard` asks for, `auto` read from the scheduler's environment.
fn shard(spec: Option<ShardSpec>) -> Result<Option<Shard>> {
    match spec {
        None => Ok(None),
        Some(ShardSpec::Given(shard)) => Ok(Some(shard)),
        Some(ShardSpec::Auto(count)) => shard_from_env(count, &|name| std::env::var(name).ok())
            .map(Some)
            .map_err(|e| anyhow!(e)),
    }
}

/// The points a run measures: the whole experiment, or one shard of it with the grid
/// positions of its points.
struct Planned {
    experiment: Experiment,
    shard: Option<(Shard, Vec<usize>)>,
}

impl Planned {
    fn of(whole: Experiment, shard: Option<Shard>) -> Self {
        let Some(shard) = shard else {
            return Self {
                experiment: whole,
                shard: None,
            };
        };
        let positions = whole.shard_positions(shard);
        Self {
            experiment: whole.only(&positions),
            shard: Some((shard, positions)),
        }
    }

    /// `results/<name>/`, or `results/<name>/shard-K-of-N/` for a shard.
    fn default_dir(&self) -> PathBuf {
        let dir = Path::new("results").join(&self.experiment.name);
        match &self.shard {
            Some((s, _)) => dir.join(format!("shard-{}-of-{}", s.index, s.count)),
            None => dir,
        }
    }
}

pub fn run(args: &RunArgs) -> Result<()> {
    // Everything is checked before the output directory is touched.
    let shard = shard(args.shard)?;
    let whole = load_experiment(&args.file, memory_limit(args.memory_limit_gib)?)?;
    let (grid, grid_points) = (Grid::of(&whole), whole.points.len());
    let planned = Planned::of(whole, shard);
    let experiment = &planned.experiment;
    let dir = args.out.clone().unwrap_or_else(|| planned.default_dir());
    if let Some((shard, positions)) = &planned.shard {
        eprintln!(
            "shard {shard}: {} of the grid's {grid_points} points",
            positions.len()
        );
    }
    if args.resume
        && let Some((shard, _)) = &planned.shard
    {
        check_resumed_shard(&dir, *shard)?;
    }
    let existing = match (args.resume, args.force) {
        (true, _) => Existing::Resume,
        (_, true) => Existing::Overwrite,
        _ => Existing::Refuse,
    };
    let threads: Vec<usize> = experiment.points.iter().map(|p| p.threads).collect();
    let machine = Machine::load_or_calibrate(&args.machine, &threads, &mut |e| eprintln!("{e}"))?;
    let mut reporter = ProgressReporter::new(experiment.points.len());
    let mut results = run_experiment(experiment, &dir, existing, Some(&machine), &mut |event| {
        reporter.event(event)
    })?;
    reporter.finish();
    warn_of_drift(&results.environment, &machine);
    if let Some((shard, positions)) = planned.shard {
        results.record_shard(shard, &grid, grid_points, positions);
    }
    let charts = write_results(&dir, &results, args.quiet)?;
    let failed = results.points.iter().filter(|p| p.error.is_some()).count();
    eprintln!(
        "wrote {dir}/{{results.json,results.csv,results.md}} and {charts} charts: {} points ({} resumed, {failed} failed), {} skipped",
        results.points.len(),
        results.experiment.points_resumed,
        results.skipped.len(),
        dir = dir.display()
    );
    Ok(())
}

/// How far a ceiling probed around a run may stray from the calibration's before the run
/// warns: a shared machine's read bandwidth moves by more than this with its neighbours' load
/// (from 33.1 to 70.9 GB/s on the 2-core EPYC, probed before the points of one run of five
/// minutes), and so did a Xeon's 2-thread matmul rate (322 GFLOP/s calibrated, 183 to 232
/// within the hour); every roofline percentage moves with them.
const DRIFT_WARNING: f64 = 0.15;

/// Warns on stderr when a probe of the run (its start or end, of the matmul rate or of the
/// read bandwidth) differs from `machine`'s calibrated ceiling by more than
/// [`DRIFT_WARNING`], naming both and what to do.
fn warn_of_drift(environment: &Environment, machine: &Machine) {
    let kinds = [
        (
            "computed at",
            "GFLOP/s",
            &environment.matmul_probe_gflops,
            &machine.matmul_gflops,
        ),
        (
            "read at",
            "GB/s",
            &environment.read_probe_gbps,
            &machine.read_gbps,
        ),
    ];
    for (verb, unit, probes, calibration) in kinds {
        let Some(probes) = probes else {
            continue;
        };
        for (threads, probe) in probes {
            let Some(&calibrated) = calibration.get(threads) else {
                continue;
            };
            let worst = [probe.start, probe.end]
                .into_iter()
                .max_by(|a, b| (a - calibrated).abs().total_cmp(&(b - calibrated).abs()))
                .expect("two probes");
            if (worst - calibrated).abs() > DRIFT_WARNING * calibrated {
                eprintln!(
                    "warning: on {threads} thread(s) this machine {verb} {worst:.1} {unit} \
                     during the run, {:.0}% of the {calibrated:.1} {unit} its calibration ({}) \
                     measured: the roofline percentages divide by the calibration. Calibrate \
                     again when the machine is as it will be for the run (`attnbench \
                     calibrate`), or read them knowing this (results.md gives both probes).",
                    100.0 * worst / calibrated,
                    machine.environment.date
                );
            }
        }
    }
}

/// Refuses to resume `shard` in a directory whose `results.json` records another shard (or
/// the whole grid), naming both: its log would be refused too, but as a changed grid. A file
/// that cannot be read is left to the run, which reports it.
fn check_resumed_shard(dir: &Path, shard: Shard) -> Result<()> {
    let Ok(results) = ResultsDir::new(dir).read_results() else {
        return Ok(());
    };
    match results.experiment.shard.map(|s| s.shard) {
        Some(recorded) if recorded == shard => Ok(()),
        recorded => Err(anyhow!(
            "{}: holds {}, not shard {shard}; resume it with that --shard, or give another --out",
            dir.display(),
            recorded.map_or("a run of the whole grid".to_string(), |s| format!(
                "shard {s}"
            ))
        )),
    }
}

/// Writes `results` into `dir`: `results.json`, then the CSV, the tables and the charts
/// rendered from it, printing the tables unless `quiet`. Returns how many charts were
/// written. `run` and `merge` both write through here.
pub(super) fn write_results(dir: &Path, results: &ResultsFile, quiet: bool) -> Result<usize> {
    let out = ResultsDir::new(dir);
    out.write_results(results)?;
    // Rendered once: the tables printed are the results.md written, charts planned once.
    let files = render(results)?;
    let written = write_rendered(&out, &files)?;
    if !quiet
        && let Some(tables) = files
            .iter()
            .find(|f| f.path == Path::new(ResultsDir::MARKDOWN_FILE))
    {
        outln!("{}", tables.text);
    }
    Ok(written.len() - 2)
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
