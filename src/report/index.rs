//! The index of a folder of results directories (`results/README.md`): which experiments,
//! where and when they ran, their tables and charts. Generated from the JSON like the rest.

use std::fmt::Write;

use super::charts::plan as chart_plan;
use super::tables::peaks;
use crate::results::{Machine, ResultsDir, ResultsFile, ResultsFolder};

/// A revision as people quote it: twelve hex digits, and `+dirty` if the sources had changes.
fn short_revision(revision: &str) -> String {
    let (hash, rest) = revision.split_at(revision.find('+').unwrap_or(revision.len()));
    format!("{}{rest}", hash.chars().take(12).collect::<String>())
}

/// The index of `experiments` (directory name, results), in the given order, and of the
/// folder's calibration when it has one.
pub fn index(experiments: &[(&str, &ResultsFile)], machine: Option<&Machine>) -> String {
    let mut out = String::new();
    out.push_str(
        "# Published results\n\n\
         Each directory holds one experiment of `variants/` run by `attnbench run`: \
         `results.json` (every point and the environment: CPU, cores, rustc, revision, date, \
         command line), `results.csv`, `results.md` (the tables) and `charts/` (SVG). The \
         tables, the charts and this index are generated from the JSON alone by \
         `attnbench report results/`, which measures nothing; nothing here is typed by hand.\n\n",
    );
    out.push_str("| experiment | file | points | measured (UTC) | machine | attnbench at |\n");
    out.push_str("|---|---|---|---|---|---|\n");
    let (markdown, charts_dir) = (ResultsDir::MARKDOWN_FILE, ResultsDir::CHARTS_DIR);
    for (name, results) in experiments {
        let env = &results.environment;
        let failed = results.points.iter().filter(|p| p.error.is_some()).count();
        let points = match failed {
            0 => results.points.len().to_string(),
            n => format!("{} ({n} failed)", results.points.len()),
        };
        let _ = writeln!(
            out,
            "| [{name}]({name}/{markdown}) | `{}` | {points} | {} | {}, {} cores | `{}` |",
            results.experiment.file,
            env.date,
            env.cpu_model,
            env.cores,
            short_revision(&env.git_revision)
        );
    }
    out.push('\n');
    for (name, results) in experiments {
        let _ = writeln!(out, "## [{name}]({name}/{markdown})\n");
        let description = results.experiment.description.trim();
        if !description.is_empty() {
            let _ = writeln!(out, "{description}\n");
        }
        let charts: Vec<String> = chart_plan(results)
            .iter()
            .map(|c| format!("[{}]({name}/{charts_dir}/{})", c.title, c.file))
            .collect();
        if !charts.is_empty() {
            let _ = writeln!(out, "Charts: {}.\n", charts.join(" · "));
        }
    }
    if let Some(m) = machine {
        let _ = writeln!(
            out,
            "`{machine_file}` is the calibration the runs used (`attnbench calibrate`, {} on {}, {} cores): {}.",
            m.environment.date,
            m.environment.cpu_model,
            m.environment.cores,
            peaks(m),
            machine_file = ResultsFolder::MACHINE_FILE,
        );
    }
    out
}
