//! `attnbench validate`: check an experiment file and print its grid, running nothing.

use std::path::PathBuf;

use anyhow::Result;
use attnbench::experiment::load_experiment;
use clap::Args;

use super::{memory_limit, outln};

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// The experiment file (TOML).
    file: PathBuf,
    /// Memory limit per point in GiB [default: half of this machine's memory].
    #[arg(long)]
    memory_limit_gib: Option<f64>,
}

pub fn run(args: &ValidateArgs) -> Result<()> {
    let experiment = load_experiment(&args.file, memory_limit(args.memory_limit_gib)?)?;
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
