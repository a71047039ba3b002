//! `results.json`: the experiment, the environment, the calibration, what was skipped, and
//! every point.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::environment::Environment;
use super::error::ReadError;
use super::grid::Grid;
use super::json::{parse_json, read_text};
use super::machine::Machine;
use super::point::PointResult;
use crate::experiment::{Experiment, MeasureSettings, Skipped};

/// The `format` field of `results.json`.
pub const RESULTS_FORMAT: &str = "attnbench-results/1";

/// What `results.json` says of the experiment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExperimentRecord {
    /// Name.
    pub name: String,
    /// Description from the file.
    pub description: String,
    /// The experiment file.
    pub file: String,
    /// Seed of weights and inputs.
    pub seed: u64,
    /// Sampling settings.
    pub measure: MeasureSettings,
    /// Points of the grid.
    pub points_planned: usize,
    /// Points taken from the log of an interrupted run instead of measured again.
    pub points_resumed: usize,
    /// The hash of the resolved grid ([`Grid::hash`]): every point's whole configuration,
    /// the seed and the sampling settings. `None` in files written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grid_hash: Option<String>,
}

impl ExperimentRecord {
    /// The record of `experiment`, whose grid is `grid` ([`Grid::of`]), `resumed` of whose
    /// points came from a log.
    pub fn new(experiment: &Experiment, grid: &Grid, resumed: usize) -> Self {
        Self {
            name: experiment.name.clone(),
            description: experiment.description.clone(),
            file: experiment.file.clone(),
            seed: experiment.seed,
            measure: experiment.measure.clone(),
            points_planned: experiment.points.len(),
            points_resumed: resumed,
            grid_hash: Some(grid.hash().to_string()),
        }
    }
}

/// `results.json`: the experiment, the environment, what was skipped, every point.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResultsFile {
    /// Always [`RESULTS_FORMAT`].
    pub format: String,
    /// The experiment.
    pub experiment: ExperimentRecord,
    /// Where and how it ran.
    pub environment: Environment,
    /// The calibration the roofline columns use, if any.
    pub machine: Option<Machine>,
    /// Combinations of the grid not measured, with the reason.
    pub skipped: Vec<Skipped>,
    /// Every point, in grid order.
    pub points: Vec<PointResult>,
}

/// Reads a `results.json` (whatever its name), refusing another format version before
/// anything else (a newer file may not even parse as this one), and a point that neither
/// failed nor has every field the report shows ([`ReadError::MissingField`]).
pub fn read_results(path: &Path) -> Result<ResultsFile, ReadError> {
    /// Just the version, read first.
    #[derive(Deserialize)]
    struct Format {
        format: String,
    }
    const WHAT: &str = "an attnbench results file";
    let text = read_text(path)?;
    let Format { format } = parse_json(path, &text, WHAT)?;
    if format != RESULTS_FORMAT {
        return Err(ReadError::UnknownFormat {
            path: path.to_path_buf(),
            found: format,
            expected: RESULTS_FORMAT,
        });
    }
    let results: ResultsFile = parse_json(path, &text, WHAT)?;
    for point in &results.points {
        if let Some(field) = point.missing_field(results.machine.as_ref()) {
            return Err(ReadError::MissingField {
                path: path.to_path_buf(),
                key: point.key.clone(),
                field,
            });
        }
    }
    Ok(results)
}
