//! `attnbench report`: regenerate the tables and charts of results directories.

use std::path::PathBuf;

use anyhow::Result;
use attnbench::report::report;
use clap::Args;

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// A results directory (holding results.json), or a folder of them.
    dir: PathBuf,
}

pub fn run(args: &ReportArgs) -> Result<()> {
    let done = report(&args.dir)?;
    for (dir, files) in &done.dirs {
        eprintln!(
            "wrote {dir}/{{results.csv,results.md}} and {} charts",
            files.len() - 2,
            dir = dir.display()
        );
    }
    if let Some(index) = &done.index {
        eprintln!("wrote {}", index.display());
    }
    Ok(())
}
