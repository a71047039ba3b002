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
    for point in &experiment.points {
        outln!("  {}", point.key());
    }
    for skipped in &experiment.skipped {
        outln!("  skipped {}: {}", skipped.what, skipped.reason);
    }
    Ok(())
}
