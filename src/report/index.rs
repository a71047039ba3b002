//! The index of a folder of results directories (`results/README.md`): which experiments,
//! where and when they ran, their tables and charts. Generated from the JSON like the rest.

use std::fmt::Write;

use super::charts::ChartSpec;
use super::machines::machine_cell;
use super::tables::peaks;
use crate::results::{Machine, ResultsDir, ResultsFile, ResultsFolder};

/// One experiment of the index.
#[derive(Clone, Copy, Debug)]
pub struct IndexEntry<'a> {
    /// Its directory's name in the folder.
    pub name: &'a str,
    /// Its results.
    pub results: &'a ResultsFile,
    /// Its charts: the [`chart_plan`](super::chart_plan) of `results`, computed once for
    /// the report.
    pub charts: &'a [ChartSpec],
}

/// A revision as people quote it: twelve hex digits, and `+dirty` if the sources had changes.
fn short_revision(revision: &str) -> String {
    let (hash, rest) = revision.split_at(revision.find('+').unwrap_or(revision.len()));
    format!("{}{rest}", hash.chars().take(12).collect::<String>())
}

/// The index of `experiments`, in the given order, and of the folder's calibration when it
/// has one.
pub fn index(experiments: &[IndexEntry<'_>], machine: Option<&Machine>) -> String {
    let mut out = String::new();
    out.push_str(
        "# Published results\n\n\
         Each directory holds one experiment of `variants/` run by `attnbench run`: \
         `results.json` (every point and the environment: CPU, cores, rustc, revision, date, \
         command line), `results.csv`, `results.md` (the tables) and `charts/` (SVG). The \
         tables, the charts and this index are generated from the JSON alone by \
         `attnbench report results/`, which measures nothing; nothing here is typed by hand.\n\n",
    );
    write_listing(&mut out, experiments);
    for entry in experiments {
        write_section(&mut out, entry);
    }
    if let Some(m) = machine {
        let _ = writeln!(
            out,
            "`{machine_file}` is the latest calibration (`attnbench calibrate`, {} on {}, {} cores): {}. Each `results.json` records the calibration its own run used, and its tables divide by that one.",
            m.environment.date,
            m.environment.cpu_model,
            m.environment.cores,
            peaks(m),
            machine_file = ResultsFolder::MACHINE_FILE,
        );
    }
    out
}

/// The table of experiments: a row each, linking its tables.
fn write_listing(out: &mut String, experiments: &[IndexEntry<'_>]) {
    out.push_str("| experiment | file | points | measured (UTC) | machine | attnbench at |\n");
    out.push_str("|---|---|---|---|---|---|\n");
    for IndexEntry { name, results, .. } in experiments {
        let env = &results.environment;
        let failed = results.points.iter().filter(|p| p.error.is_some()).count();
        let points = match failed {
            0 => results.points.len().to_string(),
            n => format!("{} ({n} failed)", results.points.len()),
        };
        let _ = writeln!(
            out,
            "| [{name}]({name}/{markdown}) | `{}` | {points} | {} | {} | `{}` |",
            results.experiment.file,
            env.date,
            machine_cell(results),
            short_revision(&env.git_revision),
            markdown = ResultsDir::MARKDOWN_FILE,
        );
    }
    out.push('\n');
}

/// An experiment's section: its description and links to its charts.
fn write_section(out: &mut String, entry: &IndexEntry<'_>) {
    let IndexEntry {
        name,
        results,
        charts,
    } = entry;
    let _ = writeln!(out, "## [{name}]({name}/{})\n", ResultsDir::MARKDOWN_FILE);
    let description = results.experiment.description.trim();
    if !description.is_empty() {
        let _ = writeln!(out, "{description}\n");
    }
    let links: Vec<String> = charts
        .iter()
        .map(|c| {
            format!(
                "[{}]({name}/{}/{})",
                c.title,
                ResultsDir::CHARTS_DIR,
                c.file
            )
        })
        .collect();
    if !links.is_empty() {
        let _ = writeln!(out, "Charts: {}.\n", links.join(" · "));
    }
}
