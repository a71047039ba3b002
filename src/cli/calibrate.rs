//! `attnbench calibrate`: measure this machine's peaks and save them.

use std::path::PathBuf;

use anyhow::{Result, anyhow};
use attnbench::results::{CalibrationSize, Machine};
use attnbench::roofline::calibration_threads;
use clap::Args;

use super::outln;

#[derive(Debug, Args)]
pub struct CalibrateArgs {
    /// Where to save [default: results/machine.json].
    #[arg(long, default_value = "results/machine.json")]
    out: PathBuf,
    /// Thread counts to calibrate, comma-separated [default: 1 and all cores].
    #[arg(long, value_delimiter = ',')]
    threads: Vec<usize>,
    /// A small, fast calibration (for tests; too small to publish).
    #[arg(long)]
    quick: bool,
}

pub fn run(args: CalibrateArgs) -> Result<()> {
    let size = if args.quick {
        CalibrationSize::QUICK
    } else {
        CalibrationSize::FULL
    };
    let threads =
        calibration_threads(args.threads).map_err(|e| anyhow!("--threads {}: {e}", e.0))?;
    let machine =
        Machine::calibrate_and_save(&args.out, &threads, size, &mut |e| eprintln!("{e}"))?;
    outln!("{}", serde_json::to_string_pretty(&machine)?);
    Ok(())
}
