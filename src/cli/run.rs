//! `attnbench run`: measure an experiment's grid, write its results and report progress.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::Result;
use attnbench::experiment::load_experiment;
use attnbench::harness::{Existing, Progress, run_experiment};
use attnbench::report::{render, write_rendered};
use attnbench::results::{Machine, ResultsDir};
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
}

pub fn run(args: &RunArgs) -> Result<()> {
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
    // Rendered once: the tables printed are the results.md written, charts planned once.
    let files = render(&results)?;
    let written = write_rendered(&ResultsDir::new(&dir), &files)?;
    if !args.quiet
        && let Some(tables) = files
            .iter()
            .find(|f| f.path == Path::new(ResultsDir::MARKDOWN_FILE))
    {
        outln!("{}", tables.text);
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
