//! `attnbench merge`: put the result sets of a grid's shards together into one results
//! directory, written as `run` writes one.

use std::path::PathBuf;

use anyhow::{Result, bail};
use attnbench::results::{Missing, Piece, ResultsDir, merge};
use clap::Args;

use super::run::write_results;

#[derive(Debug, Args)]
pub struct MergeArgs {
    /// The results directory to write (results.json, results.csv, results.md, charts/).
    out: PathBuf,
    /// The results directories of the pieces (each holding a results.json), e.g. the
    /// shard-K-of-N/ directories of `attnbench run --shard`.
    #[arg(required = true)]
    dirs: Vec<PathBuf>,
    /// Refuse to merge when the pieces do not cover the whole grid, instead of writing what
    /// they hold and warning.
    #[arg(long)]
    complete: bool,
    /// Replace the results already in OUT.
    #[arg(long)]
    force: bool,
    /// Print no tables, only where the files went.
    #[arg(long)]
    quiet: bool,
}

pub fn run(args: &MergeArgs) -> Result<()> {
    // Everything is read and checked before OUT is touched.
    let out = ResultsDir::new(&args.out);
    let mut pieces = Vec::with_capacity(args.dirs.len());
    for dir in &args.dirs {
        let piece = ResultsDir::new(dir);
        if !piece.json().exists() && piece.log().exists() {
            bail!(
                "{}: no results.json, only the log of an unfinished run; finish it with `attnbench run --resume` first",
                dir.display()
            );
        }
        if same_dir(dir, &args.out) {
            bail!(
                "{}: the output directory is also a piece; write the merge elsewhere",
                dir.display()
            );
        }
        pieces.push(Piece {
            dir: dir.clone(),
            results: piece.read_results()?,
        });
    }
    let merged = merge(&pieces)?;
    let gap = describe_missing(&merged.missing);
    if let Some(gap) = &gap
        && args.complete
    {
        bail!("{gap}; nothing written (--complete)");
    }
    if out.holds_results() {
        if !args.force {
            bail!(
                "{} already holds results; pass --force to replace them",
                args.out.display()
            );
        }
        out.clear()?;
    }
    let results = &merged.results;
    let charts = write_results(&args.out, results, args.quiet)?;
    let (runs, machines) = (results.runs.len(), results.machine_groups().len());
    eprintln!(
        "wrote {dir}/{{results.json,results.csv,results.md}} and {charts} charts: {} points from {}",
        results.points.len(),
        format_args!(
            "{runs} {} on {machines} {}",
            if runs == 1 { "run" } else { "runs" },
            if machines == 1 { "machine" } else { "machines" }
        ),
        dir = args.out.display()
    );
    if let Some(gap) = gap {
        eprintln!("warning: {gap}");
    }
    Ok(())
}

/// Whether two paths name the same directory (when both exist), else the same path.
fn same_dir(a: &std::path::Path, b: &std::path::Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// What the pieces lack, in words, e.g. `4 of 24 grid points missing (positions 2, 5, 9, 17);
/// shard 2/3 was not given`; `None` when nothing is.
fn describe_missing(missing: &Missing) -> Option<String> {
    if missing.positions.is_empty() {
        return None;
    }
    const SHOWN: usize = 10;
    let mut shown: Vec<String> = missing
        .positions
        .iter()
        .take(SHOWN)
        .map(|p| (p + 1).to_string())
        .collect();
    if missing.positions.len() > SHOWN {
        shown.push("...".into());
    }
    let mut text = format!(
        "{} of {} grid points missing (points {}, counted from 1 in the file's order)",
        missing.positions.len(),
        missing.grid_points,
        shown.join(", ")
    );
    if !missing.shards.is_empty() {
        let shards: Vec<String> = missing.shards.iter().map(|s| s.to_string()).collect();
        text.push_str(&format!("; shard(s) {} not given", shards.join(", ")));
    }
    Some(text)
}
