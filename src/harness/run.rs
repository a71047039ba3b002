//! Running an experiment: every point in its own rayon pool, each finished point appended to
//! the directory's log at once, `--resume` after an interruption. The caller writes the final
//! files (atomically, through the results store) once the run returns.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::alloc::measure_peak;
use super::measure::{PreparedPoint, sample};
use crate::experiment::{Experiment, MeasureSettings, Point};
use crate::results::{
    Environment, ExperimentRecord, Machine, PointResult, RESULTS_FORMAT, ReadError, ResultsDir,
    ResultsFile, WriteError,
};

/// What can stop a run (a failing point does not: it becomes a row with `error`).
#[derive(Debug, Error)]
pub enum RunError {
    /// The output directory already holds results and neither resume nor force was asked.
    #[error(
        "{0} already holds results; pass --resume to continue that run or --force to start over"
    )]
    ExistingResults(PathBuf),
    /// The log of the run to resume could not be read.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The log or the output directory could not be written.
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// How to treat an output directory that already holds results.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Existing {
    /// Refuse to touch it.
    Refuse,
    /// Keep the finished points of its log and measure the rest.
    Resume,
    /// Delete its results ([`ResultsDir::clear`]) and start over.
    Overwrite,
}

/// What the run reports as it goes.
#[derive(Debug)]
pub enum Progress<'a> {
    /// Points taken from the log, not measured again.
    Resumed(usize),
    /// About to measure point `index` (0-based) of `total`.
    Start {
        /// Position in the grid.
        index: usize,
        /// Points in the grid.
        total: usize,
        /// The point.
        point: &'a Point,
    },
    /// Finished point `index`.
    Done {
        /// Position in the grid.
        index: usize,
        /// The result.
        result: &'a PointResult,
    },
}

/// Runs (or resumes) `experiment` into `dir`, calling `progress` as it goes. Returns the
/// results; the caller writes the final files with [`ResultsDir::write_results`] and
/// the report (`report::render` and `report::write_rendered`).
pub fn run_experiment(
    experiment: &Experiment,
    dir: &Path,
    existing: Existing,
    machine: Option<&Machine>,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<ResultsFile, RunError> {
    let results_dir = ResultsDir::new(dir);
    let mut finished: HashMap<String, PointResult> = HashMap::new();
    match existing {
        Existing::Refuse if results_dir.holds_results() => {
            return Err(RunError::ExistingResults(dir.to_path_buf()));
        }
        Existing::Overwrite if results_dir.holds_results() => results_dir.clear()?,
        Existing::Resume if results_dir.log().exists() => {
            for result in results_dir.read_log()? {
                finished.insert(result.key.clone(), result);
            }
        }
        _ => {}
    }
    let mut log = results_dir.open_log()?;

    let resumed = experiment
        .points
        .iter()
        .filter(|p| finished.contains_key(&p.key()))
        .count();
    progress(Progress::Resumed(resumed));
    let mut threads: Vec<usize> = experiment.points.iter().map(|p| p.threads).collect();
    threads.sort_unstable();
    threads.dedup();
    let environment = Environment::capture(threads);

    let total = experiment.points.len();
    let mut points = Vec::with_capacity(total);
    for (index, point) in experiment.points.iter().enumerate() {
        if let Some(done) = finished.remove(&point.key()) {
            points.push(done);
            continue;
        }
        progress(Progress::Start {
            index,
            total,
            point,
        });
        let mut result = measure_point(point, experiment.seed, &experiment.measure);
        if let Some(machine) = machine {
            machine.fill_roofline(&mut result);
        }
        log.append(&result)?;
        progress(Progress::Done {
            index,
            result: &result,
        });
        points.push(result);
    }
    Ok(ResultsFile {
        format: RESULTS_FORMAT.to_string(),
        experiment: ExperimentRecord::new(experiment, resumed),
        environment,
        machine: machine.cloned(),
        skipped: experiment.skipped.clone(),
        points,
    })
}

/// Measures one point in a rayon pool of its thread count. Never panics and never fails: a
/// problem becomes the row's `error`.
pub fn measure_point(point: &Point, seed: u64, settings: &MeasureSettings) -> PointResult {
    let mut result = PointResult::unmeasured(point);
    let outcome = catch_unwind(AssertUnwindSafe(|| -> Result<(), String> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(point.threads)
            .build()
            .map_err(|e| format!("cannot start {} threads: {e}", point.threads))?;
        pool.install(|| {
            let mut prepared = PreparedPoint::new(point, seed).map_err(|e| e.to_string())?;
            let samples = sample(settings, || prepared.step()).map_err(|e| e.to_string())?;
            if let Some(bad) = prepared.output().data().iter().find(|v| !v.is_finite()) {
                return Err(format!("the step produced a non-finite output ({bad})"));
            }
            result.set_step_samples(samples);
            let cache = prepared.cache();
            result.kv_cache_bytes = Some(cache.allocated_bytes() as u64);
            result.kv_cache_padding_bytes = Some(cache.padding_bytes() as u64);
            let (step, peak) = measure_peak(|| prepared.step());
            step.map_err(|e| e.to_string())?;
            result.peak_transient_bytes = peak;

            // The attention core on its own, over the same cache.
            prepared.prepare_core().map_err(|e| e.to_string())?;
            let core_samples = sample(settings, || {
                prepared.core_step();
                Ok(())
            })
            .map_err(|e| e.to_string())?;
            if let Some(bad) = prepared.core_output().iter().find(|v| !v.is_finite()) {
                return Err(format!(
                    "the attention core produced a non-finite output ({bad})"
                ));
            }
            result.set_core_samples(core_samples);
            let ((), core_peak) = measure_peak(|| prepared.core_step());
            result.core_peak_transient_bytes = core_peak;
            Ok(())
        })
    }));
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(message)) => result.error = Some(message),
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into());
            result.error = Some(format!("internal error: {message}"));
        }
    }
    result
}
