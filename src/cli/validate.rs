//! `attnbench validate`: check an experiment file and print its grid, running nothing; with
//! `--json`, the resolved grid as a program reads it (`tools/peers/` times a peer on it).

use std::path::PathBuf;

use anyhow::Result;
use attnbench::config::Mode;
use attnbench::experiment::{Experiment, Skipped, load_experiment};
use attnbench::results::{CoreShape, ExperimentRecord, Grid, PointResult};
use attnbench::{Dtype, Kernel, WeightDtype};
use clap::Args;
use serde::Serialize;

use super::{memory_limit, outln};

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// The experiment file (TOML).
    file: PathBuf,
    /// Memory limit per point in GiB [default: half of this machine's memory].
    #[arg(long)]
    memory_limit_gib: Option<f64>,
    /// Print the resolved grid as JSON (format `attnbench-grid/1`): the experiment as
    /// results.json records it (grid_hash included), the attnbench that resolved it, and per
    /// point its configuration, its attention core's shape and the record a run starts from.
    #[arg(long)]
    json: bool,
}

/// The format of `validate --json`.
const GRID_FORMAT: &str = "attnbench-grid/1";

/// `validate --json`: what a peer needs to time an experiment's points and write them as
/// results.json does.
#[derive(Serialize)]
struct GridJson<'a> {
    format: &'static str,
    /// As results.json records it ([`ExperimentRecord`]), its `grid_hash` included.
    experiment: ExperimentRecord,
    grid_hash: String,
    /// The attnbench that resolved the grid (a peer's environment records it).
    attnbench: Build,
    points: Vec<GridPoint>,
    skipped: &'a [Skipped],
}

#[derive(Serialize)]
struct Build {
    crate_version: &'static str,
    git_revision: &'static str,
    rustc: &'static str,
}

/// One point: how it runs, its core's shape, and its record unmeasured (identity and cost by
/// formula, in the `attnbench-results/1` row a peer fills in).
#[derive(Serialize)]
struct GridPoint {
    key: String,
    variant: String,
    mode: Mode,
    threads: usize,
    /// Caches evicted before every sample (the experiment's `flush_caches`).
    flush_caches: bool,
    batch: usize,
    seq_len: usize,
    context: usize,
    kernel: Kernel,
    kv_dtype: Dtype,
    weight_dtype: WeightDtype,
    core: CoreShape,
    record: PointResult,
}

impl GridJson<'_> {
    fn of(experiment: &Experiment) -> GridJson<'_> {
        let grid = Grid::of(experiment);
        let flush_caches = experiment.measure.flush_caches;
        let points = experiment
            .points
            .iter()
            .map(|point| {
                let record = PointResult::unmeasured(point);
                GridPoint {
                    key: point.key(),
                    variant: record.variant_label(),
                    mode: point.mode,
                    threads: point.threads,
                    flush_caches,
                    batch: point.batch,
                    seq_len: point.seq_len,
                    context: point.context,
                    kernel: point.kernel,
                    kv_dtype: point.precision.kv_dtype,
                    weight_dtype: point.precision.weight_dtype,
                    core: CoreShape::of(point),
                    record,
                }
            })
            .collect();
        GridJson {
            format: GRID_FORMAT,
            experiment: ExperimentRecord::new(experiment, &grid, 0),
            grid_hash: grid.hash().to_string(),
            attnbench: Build {
                crate_version: env!("CARGO_PKG_VERSION"),
                git_revision: env!("ATTNBENCH_GIT_REVISION"),
                rustc: env!("ATTNBENCH_RUSTC_VERSION"),
            },
            points,
            skipped: &experiment.skipped,
        }
    }
}

pub fn run(args: &ValidateArgs) -> Result<()> {
    let experiment = load_experiment(&args.file, memory_limit(args.memory_limit_gib)?)?;
    if args.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&GridJson::of(&experiment))?
        );
        return Ok(());
    }
    outln!(
        "{}: experiment `{}`, {} points, {} skipped",
        args.file.display(),
        experiment.name,
        experiment.points.len(),
        experiment.skipped.len()
    );
    // The key names a stored type only when it is not f32: say which types the grid holds.
    let mut precisions: Vec<String> = Vec::new();
    for point in &experiment.points {
        let p = point.precision;
        let shown = format!("kv_dtype {}, weight_dtype {}", p.kv_dtype, p.weight_dtype);
        if !precisions.contains(&shown) {
            precisions.push(shown);
        }
    }
    outln!("  stored types: {}", precisions.join("; "));
    for point in &experiment.points {
        outln!("  {}", point.key());
    }
    for skipped in &experiment.skipped {
        outln!("  skipped {}: {}", skipped.what, skipped.reason);
    }
    Ok(())
}
