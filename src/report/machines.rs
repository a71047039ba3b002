//! What the tables say of a result set merged from several runs (`attnbench merge`): when and
//! where they ran, which shards, what is missing, and which machine each group of tables is.
//! A set one run measured says none of it, and its tables read as they always have.

use std::fmt::Write;

use crate::results::{ResultsFile, RunRecord};

/// The machine column of the index: `{cpu}, {cores} cores`, or `{n} machines` for a merged
/// set that spans several.
pub(super) fn machine_cell(results: &ResultsFile) -> String {
    let groups = results.machine_groups();
    match groups.as_slice() {
        [(env, _)] => format!("{}, {} cores", env.cpu_model, env.cores),
        _ => format!("{} machines", groups.len()),
    }
}

/// When and where the set was measured, for the header's `Measured ...` sentence: `{date} on
/// {cpu} ({cores} cores)` for one run; for a merge, the first and last run's dates and the
/// machine, or how many machines when there are several.
pub(super) fn measured(results: &ResultsFile) -> String {
    let env = &results.environment;
    if results.runs.is_empty() {
        return format!("{} on {} ({} cores)", env.date, env.cpu_model, env.cores);
    }
    let dates = dates(&results.runs);
    let groups = results.machine_groups();
    match groups.as_slice() {
        [(env, _)] => format!("{dates} on {} ({} cores)", env.cpu_model, env.cores),
        _ => format!("{dates} on {} machines (listed below)", groups.len()),
    }
}

/// The runs' dates: the one, or `first to last`.
fn dates(runs: &[RunRecord]) -> String {
    // ISO 8601 in UTC sorts as text.
    let first = runs.iter().map(|r| r.environment.date.as_str()).min();
    let last = runs.iter().map(|r| r.environment.date.as_str()).max();
    match (first, last) {
        (Some(a), Some(b)) if a != b => format!("{a} to {b}"),
        (Some(a), _) => a.to_string(),
        _ => String::new(),
    }
}

/// A run as the header lists it: `shard 2/3 (date)` or `a whole run (date)`.
fn run_name(run: &RunRecord) -> String {
    match run.shard {
        Some(shard) => format!("shard {shard} ({})", run.environment.date),
        None => format!("a whole run ({})", run.environment.date),
    }
}

/// For one shard's set, which shard. For a merged set: the runs it was merged from, the points missing, and, when the runs
/// span several machines, the list of machines the tables are grouped by. Nothing for a set
/// one run of the whole grid measured.
pub(super) fn write_runs(out: &mut String, results: &ResultsFile) {
    if let Some(shard) = &results.experiment.shard {
        let _ = writeln!(
            out,
            "Shard {} of the grid (`attnbench run --shard`): {} of its {} points; `attnbench merge` puts the shards together.\n",
            shard.shard,
            shard.positions.len(),
            shard.grid_points
        );
    }
    if results.runs.is_empty() {
        return;
    }
    let names: Vec<String> = results.runs.iter().map(run_name).collect();
    let _ = write!(
        out,
        "Merged by `attnbench merge` from {} runs: {}.",
        results.runs.len(),
        names.join(", ")
    );
    let (held, planned) = (results.points.len(), results.experiment.points_planned);
    if held < planned {
        let _ = write!(
            out,
            " {} of the grid's {planned} points are missing (no piece merged held them).",
            planned - held
        );
    }
    out.push_str("\n\n");
    let groups = results.machine_groups();
    if groups.len() < 2 {
        return;
    }
    let _ = writeln!(
        out,
        "The runs span {} machines, and times on different machines are not comparable: each \
         machine has its own tables below, and every ratio in them is between points of one \
         machine.\n",
        groups.len()
    );
    for (i, (env, points)) in groups.iter().enumerate() {
        let runs: Vec<String> = results
            .runs
            .iter()
            .filter(|r| r.environment.same_machine(env))
            .map(run_name)
            .collect();
        let _ = writeln!(
            out,
            "- machine {}: {} ({} cores), {} points, from {}",
            i + 1,
            env.cpu_model,
            env.cores,
            points.len(),
            runs.join(", ")
        );
    }
    out.push('\n');
}
