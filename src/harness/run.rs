//! Running an experiment: every point in its own rayon pool, each finished point appended to
//! the directory's log at once (after the resolved grid, its first line), `--resume` after an
//! interruption, only over the grid the log records. The caller writes the final files
//! (atomically, through the results store) once the run returns.

use std::collections::{BTreeMap, HashMap};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::alloc::measure_peak;
use super::measure::{PreparedPoint, sample};
use crate::experiment::{Experiment, MeasureSettings, Point};
use crate::results::{
    Environment, ExperimentRecord, Grid, Machine, PointResult, RESULTS_FORMAT, ReadError,
    ResultsDir, ResultsFile, RunProbe, WriteError,
};

/// What can stop a run (a failing point does not: it becomes a row with `error`).
#[derive(Debug, Error)]
pub enum RunError {
    /// The output directory already holds results and neither resume nor force was asked.
    #[error(
        "{0} already holds results; pass --resume to continue that run or --force to start over"
    )]
    ExistingResults(PathBuf),
    /// `--resume` on a directory run with another grid than the experiment file gives now: its
    /// points measured something else.
    #[error("{dir} was run with a different grid: {change}; rerun with --force to start over")]
    GridChanged {
        /// The output directory.
        dir: PathBuf,
        /// What changed ([`Grid::change_since`]), e.g. ``point 3
        /// `gqa/decode/ctx4096_h32_kv8_b1_t2` had d_model 512, the file now gives 1024 (points
        /// changed: 8, new: 0, gone: 0)``.
        change: String,
    },
    /// `--resume` on a directory whose log (or `results.json`) does not record its grid, having
    /// been written before grids were recorded: nothing says what its points measured.
    #[error(
        "{0} does not record the grid it was run with (it was written before attnbench recorded grids), so its points cannot be checked against the file; rerun with --force to start over"
    )]
    GridNotRecorded(PathBuf),
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
    /// Keep the finished points of its log and measure the rest, once the grid it records is
    /// the one the experiment gives now (else [`RunError::GridChanged`] or
    /// [`RunError::GridNotRecorded`]).
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
/// the report (`report::render` and `report::write_rendered`). With a `machine`, its matmul
/// rate (`Machine::probe_matmul`) and its read bandwidth (`Machine::read_prober`) are probed
/// before every point, recorded on the point, and before the first point and after the last,
/// recorded in the environment.
pub fn run_experiment(
    experiment: &Experiment,
    dir: &Path,
    existing: Existing,
    machine: Option<&Machine>,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<ResultsFile, RunError> {
    let results_dir = ResultsDir::new(dir);
    let grid = Grid::of(experiment);
    let mut finished: HashMap<String, PointResult> = HashMap::new();
    match existing {
        Existing::Refuse if results_dir.holds_results() => {
            return Err(RunError::ExistingResults(dir.to_path_buf()));
        }
        Existing::Overwrite if results_dir.holds_results() => results_dir.clear()?,
        Existing::Resume => {
            for result in finished_points(&results_dir, &grid)? {
                finished.insert(result.key.clone(), result);
            }
        }
        _ => {}
    }
    let mut log = results_dir.open_log(&grid)?;

    let resumed = experiment
        .points
        .iter()
        .filter(|p| finished.contains_key(&p.key()))
        .count();
    progress(Progress::Resumed(resumed));
    let mut threads: Vec<usize> = experiment.points.iter().map(|p| p.threads).collect();
    threads.sort_unstable();
    threads.dedup();
    let probe_threads = threads.clone();
    let mut environment = Environment::capture(threads);
    let prober = machine.map(Machine::read_prober);
    let probe_start = prober.as_ref().map(|p| p.probe_all(&probe_threads));
    let matmul_start = machine.map(|m| m.probe_matmul_all(&probe_threads));

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
        let matmul_probed = machine.and_then(|m| m.probe_matmul(point.threads));
        let probed = prober.as_ref().and_then(|p| p.probe(point.threads));
        let mut result = measure_point(point, experiment.seed, &experiment.measure);
        result.read_probe_gbps = probed;
        result.matmul_probe_gflops = matmul_probed;
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
    if let (Some(prober), Some(start)) = (&prober, probe_start) {
        environment.read_probe_gbps = Some(run_probes(start, prober.probe_all(&probe_threads)));
    }
    if let (Some(machine), Some(start)) = (machine, matmul_start) {
        let end = machine.probe_matmul_all(&probe_threads);
        environment.matmul_probe_gflops = Some(run_probes(start, end));
    }
    Ok(ResultsFile {
        format: RESULTS_FORMAT.to_string(),
        experiment: ExperimentRecord::new(experiment, &grid, resumed),
        environment,
        machine: machine.cloned(),
        skipped: experiment.skipped.clone(),
        points,
        runs: Vec::new(),
    })
}

/// The probes of each thread count at the start and at the end of a run, paired (a count
/// probed only once is left out).
fn run_probes(start: BTreeMap<usize, f64>, end: BTreeMap<usize, f64>) -> BTreeMap<usize, RunProbe> {
    start
        .into_iter()
        .filter_map(|(t, start)| {
            let end = *end.get(&t)?;
            Some((t, RunProbe { start, end }))
        })
        .collect()
}

/// The points of `dir` that `--resume` keeps: those of its log, once the grid the log records
/// is found to be `grid`. Without a log, a `results.json` must record `grid`'s hash (its
/// points are measured again: only the log holds points to keep). A directory that records
/// no grid is refused: its points cannot be told to measure what the file now asks.
fn finished_points(dir: &ResultsDir, grid: &Grid) -> Result<Vec<PointResult>, RunError> {
    let refuse = |change: String| RunError::GridChanged {
        dir: dir.path().to_path_buf(),
        change,
    };
    if dir.log().exists() {
        let logged = dir.read_logged_run()?;
        match &logged.grid {
            Some(recorded) => {
                if let Some(change) = grid.change_since(recorded) {
                    return Err(refuse(change));
                }
            }
            // Killed before its first line was whole: nothing was measured.
            None if logged.points.is_empty() => {}
            None => return Err(RunError::GridNotRecorded(dir.log())),
        }
        return Ok(logged.points);
    }
    if dir.json().exists() {
        match dir.read_results()?.experiment.grid_hash {
            None => return Err(RunError::GridNotRecorded(dir.json())),
            Some(hash) if hash != grid.hash() => {
                return Err(refuse(format!(
                    "its results.json records grid {hash}, the file gives {} (its log, which \
                     would say what changed, is gone)",
                    grid.hash()
                )));
            }
            Some(_) => {}
        }
    }
    Ok(Vec::new())
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
            // Before the timing: the reference it builds is gone by the time sampling starts.
            result.max_rel_err = prepared.max_rel_err().map_err(|e| e.to_string())?;
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
