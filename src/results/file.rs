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
use crate::experiment::{Experiment, MeasureSettings, Shard, Skipped};

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
    /// The shard of the grid this run measured (`attnbench run --shard K/N`); `None` for the
    /// whole grid, a merge of shards, and files written before shards. `grid_hash` is then
    /// the whole grid's, so that every shard of one experiment records the same hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<ShardRecord>,
}

/// Which part of a grid a shard's run measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShardRecord {
    /// `K/N`.
    pub shard: Shard,
    /// Points of the whole grid (of all N shards).
    pub grid_points: usize,
    /// The 0-based grid position of each of this run's points, in the order of `points`:
    /// where `attnbench merge` puts them back, and how it finds the points no piece holds.
    pub positions: Vec<usize>,
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
            shard: None,
        }
    }
}

/// One of the runs a merged result set comes from (`attnbench merge`): the shard it ran, the
/// machine and toolchain it ran on, and the calibration its roofline used. A point's
/// [`run`](PointResult::run) is its index in [`ResultsFile::runs`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// The shard it measured, `None` when it measured a grid unsharded.
    pub shard: Option<Shard>,
    /// Where and how it ran.
    pub environment: Environment,
    /// The calibration its points' roofline columns used, if any.
    pub machine: Option<Machine>,
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
    /// The runs a merge put together, each point naming its own ([`PointResult::run`]); empty
    /// (and left out of the file) for a set one run measured, whose machine is `environment`.
    /// In a merged set `environment` and `machine` are those of the first run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runs: Vec<RunRecord>,
}

impl ResultsFile {
    /// Records that these results are of `shard` only: the points at `positions` (0-based,
    /// in the order of `points`) of `grid` (the whole grid, of `grid_points` points), whose
    /// hash becomes the experiment's `grid_hash`, the same in every shard.
    pub fn record_shard(
        &mut self,
        shard: Shard,
        grid: &Grid,
        grid_points: usize,
        positions: Vec<usize>,
    ) {
        self.experiment.grid_hash = Some(grid.hash().to_string());
        self.experiment.shard = Some(ShardRecord {
            shard,
            grid_points,
            positions,
        });
    }

    /// The environment a point was measured in: its run's ([`PointResult::run`]) in a merged
    /// set, else the set's.
    pub fn environment_of(&self, point: &PointResult) -> &Environment {
        self.run_of(point)
            .map_or(&self.environment, |run| &run.environment)
    }

    /// The calibration a point's roofline used: its run's in a merged set, else the set's.
    pub fn machine_of(&self, point: &PointResult) -> Option<&Machine> {
        self.run_of(point)
            .map_or(self.machine.as_ref(), |run| run.machine.as_ref())
    }

    fn run_of(&self, point: &PointResult) -> Option<&RunRecord> {
        point.run.and_then(|i| self.runs.get(i))
    }

    /// The points grouped by the machine that measured them ([`Environment::same_machine`]),
    /// the groups in the order of their first run (a merge orders its runs by shard), each
    /// with its machine's environment (its first run's). One group for a set measured on
    /// one machine.
    pub fn machine_groups(&self) -> Vec<(&Environment, Vec<&PointResult>)> {
        let mut groups: Vec<(usize, &Environment, Vec<&PointResult>)> = Vec::new();
        for point in &self.points {
            let (run, env) = (point.run.unwrap_or(0), self.environment_of(point));
            match groups.iter_mut().find(|(_, e, _)| e.same_machine(env)) {
                Some((first, e, points)) => {
                    if run < *first {
                        (*first, *e) = (run, env);
                    }
                    points.push(point);
                }
                None => groups.push((run, env, vec![point])),
            }
        }
        groups.sort_by_key(|(run, _, _)| *run);
        let mut groups: Vec<_> = groups.into_iter().map(|(_, e, p)| (e, p)).collect();
        if groups.is_empty() {
            groups.push((&self.environment, Vec::new()));
        }
        groups
    }
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
        if let Some(run) = point.run.filter(|&run| run >= results.runs.len()) {
            return Err(ReadError::UnknownRun {
                path: path.to_path_buf(),
                key: point.key.clone(),
                run,
                runs: results.runs.len(),
            });
        }
        if let Some(field) = point.missing_field(results.machine_of(point)) {
            return Err(ReadError::MissingField {
                path: path.to_path_buf(),
                key: point.key.clone(),
                field,
            });
        }
    }
    Ok(results)
}
