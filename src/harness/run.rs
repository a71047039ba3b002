//! Running an experiment: every point in its own rayon pool, each finished point appended to
//! a log at once, final files written atomically, `--resume` after an interruption.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::alloc::measure_peak;
use super::environment::Environment;
use super::measure::{PreparedPoint, SampleStats, sample};
use super::result::{ExperimentRecord, PointResult, RESULTS_FORMAT, ResultsFile};
use crate::experiment::{Experiment, MeasureSettings, Point};
use crate::roofline::Machine;

/// The log of finished points, one JSON object per line, appended as each point finishes.
pub const LOG_FILE: &str = "points.jsonl";
/// The final results with every sample summary and the environment.
pub const JSON_FILE: &str = "results.json";

/// What can stop a run (a failing point does not: it becomes a row with `error`).
#[derive(Debug, Error)]
pub enum RunError {
    /// The output directory already holds results and neither resume nor force was asked.
    #[error(
        "{0} already holds results; pass --resume to continue that run or --force to start over"
    )]
    ExistingResults(PathBuf),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The log holds a line that is not a point result (other than a torn last line).
    #[error("{path}:{line}: not a point result: {message}")]
    CorruptLog {
        /// The log.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// The parser's complaint.
        message: String,
    },
    /// A file read as `results.json` is not one: unreadable JSON, missing fields, or another
    /// `format`.
    #[error("{path}: not an attnbench results file ({RESULTS_FORMAT}): {message}")]
    NotResults {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RunError + '_ {
    move |source| RunError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// How to treat an output directory that already holds results.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Existing {
    /// Refuse to touch it.
    Refuse,
    /// Keep the finished points of its log and measure the rest.
    Resume,
    /// Delete its results and start over.
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
/// results; the caller writes the final files with [`write_results_json`] and the reports.
pub fn run_experiment(
    experiment: &Experiment,
    dir: &Path,
    existing: Existing,
    machine: Option<&Machine>,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<ResultsFile, RunError> {
    let log_path = dir.join(LOG_FILE);
    let has_results = log_path.exists() || dir.join(JSON_FILE).exists();
    let mut finished: HashMap<String, PointResult> = HashMap::new();
    match existing {
        Existing::Refuse if has_results => {
            return Err(RunError::ExistingResults(dir.to_path_buf()));
        }
        Existing::Overwrite if has_results => {
            for name in [LOG_FILE, JSON_FILE, "results.csv", "results.md"] {
                let path = dir.join(name);
                if path.exists() {
                    fs::remove_file(&path).map_err(io(&path))?;
                }
            }
        }
        Existing::Resume if log_path.exists() => {
            for result in read_log(&log_path)? {
                finished.insert(result.key.clone(), result);
            }
        }
        _ => {}
    }
    fs::create_dir_all(dir).map_err(io(dir))?;
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(io(&log_path))?;

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
            result.set_roofline(machine);
        }
        let mut line = serde_json::to_string(&result).expect("a point result serialises");
        line.push('\n');
        log.write_all(line.as_bytes()).map_err(io(&log_path))?;
        log.sync_data().map_err(io(&log_path))?;
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

/// Reads a log of finished points. A torn last line (the run was killed while writing it) is
/// cut off the file so that appending continues cleanly; any other bad line is an error.
pub fn read_log(path: &Path) -> Result<Vec<PointResult>, RunError> {
    let file = File::open(path).map_err(io(path))?;
    let mut results = Vec::new();
    let mut good_bytes = 0u64;
    let lines: Vec<String> = BufReader::new(file)
        .lines()
        .collect::<Result<_, _>>()
        .map_err(io(path))?;
    let text_len = fs::metadata(path).map_err(io(path))?.len();
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            good_bytes += line.len() as u64 + 1;
            continue;
        }
        match serde_json::from_str::<PointResult>(line) {
            Ok(r) => {
                results.push(r);
                good_bytes += line.len() as u64 + 1;
            }
            // A torn last line: the run was killed while writing it.
            Err(_) if i + 1 == lines.len() => {
                let file = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(io(path))?;
                file.set_len(good_bytes.min(text_len)).map_err(io(path))?;
            }
            Err(e) => {
                return Err(RunError::CorruptLog {
                    path: path.to_path_buf(),
                    line: i + 1,
                    message: e.to_string(),
                });
            }
        }
    }
    Ok(results)
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
            result.set_timing(&SampleStats::from_samples(&samples));
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
            result.set_core_timing(&SampleStats::from_samples(&core_samples));
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

/// Writes `results.json` atomically.
pub fn write_results_json(dir: &Path, results: &ResultsFile) -> Result<(), RunError> {
    let path = dir.join(JSON_FILE);
    let mut text = serde_json::to_string_pretty(results).expect("results serialise");
    text.push('\n');
    crate::fsutil::write_atomic(&path, text.as_bytes()).map_err(io(&path))
}

/// Reads a `results.json`, refusing a file of another `format`.
pub fn read_results_json(path: &Path) -> Result<ResultsFile, RunError> {
    let not_results = |message: String| RunError::NotResults {
        path: path.to_path_buf(),
        message,
    };
    let text = fs::read_to_string(path).map_err(io(path))?;
    // The format is checked first so that a file of another version is named as such rather
    // than reported as a missing field.
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| not_results(e.to_string()))?;
    match value.get("format").and_then(|f| f.as_str()) {
        Some(RESULTS_FORMAT) => {}
        Some(other) => return Err(not_results(format!("format is `{other}`"))),
        None => return Err(not_results("no `format` field".into())),
    }
    serde_json::from_value(value).map_err(|e| not_results(e.to_string()))
}
