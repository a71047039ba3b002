//! Reports as a person reads them: a results set's Markdown tables (made with tabled), CSV
//! and SVG charts (plotters), the index of a folder of results, a comparison of two result
//! sets, and the kv planner's table. A results set's files are derived from `results.json`
//! alone: a run and `attnbench report` ([`report`]) both draw them with [`render`] and write
//! them with [`write_rendered`], so a report regenerates what the run wrote byte for byte.

mod accuracy;
mod charts;
mod comparison;
mod index;
mod kv_plan;
mod machines;
mod rows;
mod tables;

use std::fs;
use std::path::{Path, PathBuf};

use thiserror::Error;

pub use accuracy::accuracy_bound;
pub use charts::{ChartError, ChartSpec, plan as chart_plan};
pub use comparison::comparison_markdown;
pub use index::{IndexEntry, index};
pub use kv_plan::kv_plan_markdown;

use crate::results::{ReadError, ResultsDir, ResultsFile, ResultsFolder, WriteError, write_file};

/// What can stop a report.
#[derive(Debug, Error)]
pub enum ReportError {
    /// A results or calibration file is missing, unreadable, or not one.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// An output could not be written.
    #[error(transparent)]
    Write(#[from] WriteError),
    /// The directory holds no results.
    #[error(
        "{0}: no results.json there nor in any directory inside it (give a results directory, or the folder of several)"
    )]
    NoResults(PathBuf),
    /// plotters could not draw a chart.
    #[error(transparent)]
    Chart(#[from] ChartError),
}

/// One output file, its path relative to the results directory, and its contents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputFile {
    /// E.g. `results.md`, `charts/decode_latency.svg`.
    pub path: PathBuf,
    /// What it holds.
    pub text: String,
}

/// `results.csv` as text: a point's flat record per row, without its samples, every column
/// on every row ([`crate::results::PointResult::csv_record`]: the stored types and the accuracy are written
/// even where results.json leaves them out). The `csv` crate does the quoting (error messages
/// hold commas).
pub fn csv(results: &ResultsFile) -> String {
    let mut writer = csv::Writer::from_writer(Vec::new());
    let implementation = results.points.iter().any(|p| !p.is_attnbench());
    for point in &results.points {
        writer
            .serialize(point.csv_record(implementation))
            .expect("a point result is one CSV record");
    }
    String::from_utf8(writer.into_inner().expect("writing to memory")).expect("CSV is UTF-8")
}

/// `results.md` as text: the tables of `results` and the links to its charts.
pub fn markdown(results: &ResultsFile) -> String {
    tables::markdown(results, &chart_plan(results))
}

/// Every file derived from `results`: `results.csv`, `results.md` and the charts of
/// [`chart_plan`] in `charts/`, in memory.
pub fn render(results: &ResultsFile) -> Result<Vec<OutputFile>, ReportError> {
    render_planned(results, &chart_plan(results))
}

/// [`render`] with the chart plan of `results` already made, so that the tables link
/// exactly the charts drawn.
fn render_planned(
    results: &ResultsFile,
    charts: &[ChartSpec],
) -> Result<Vec<OutputFile>, ReportError> {
    let mut files = vec![
        OutputFile {
            path: ResultsDir::CSV_FILE.into(),
            text: csv(results),
        },
        OutputFile {
            path: ResultsDir::MARKDOWN_FILE.into(),
            text: tables::markdown(results, charts),
        },
    ];
    for spec in charts {
        files.push(OutputFile {
            path: spec.path(),
            text: charts::render(spec, results)?,
        });
    }
    Ok(files)
}

/// Writes `files` (from [`render`]) into `dir`, first removing the charts there that are not
/// among them. Returns the paths written.
pub fn write_rendered(dir: &ResultsDir, files: &[OutputFile]) -> Result<Vec<PathBuf>, ReportError> {
    for path in dir.chart_files() {
        if !files.iter().any(|f| dir.path().join(&f.path) == path) {
            fs::remove_file(&path).map_err(WriteError::at(&path))?;
        }
    }
    let mut written = Vec::with_capacity(files.len());
    for file in files {
        let path = dir.path().join(&file.path);
        write_file(&path, file.text.as_bytes())?;
        written.push(path);
    }
    Ok(written)
}

/// What [`report`] regenerated.
#[derive(Debug)]
pub struct Regenerated {
    /// Each results directory and the files written into it.
    pub dirs: Vec<(PathBuf, Vec<PathBuf>)>,
    /// The index, when `dir` was a folder of results directories.
    pub index: Option<PathBuf>,
}

/// `attnbench report DIR`: regenerates the tables and charts of a results directory (one
/// holding `results.json`) from that file, or, given a folder of them (such as `results/`),
/// of every directory inside it that holds one, and that folder's index
/// ([`ResultsFolder::INDEX_FILE`]).
/// Everything is read and drawn before the first file is written, so a missing or bad
/// `results.json` leaves every file as it was.
pub fn report(dir: &Path) -> Result<Regenerated, ReportError> {
    let single = ResultsDir::new(dir);
    if single.json().exists() || !dir.is_dir() {
        let files = render(&single.read_results()?)?;
        let written = write_rendered(&single, &files)?;
        return Ok(Regenerated {
            dirs: vec![(dir.to_path_buf(), written)],
            index: None,
        });
    }
    report_folder(&ResultsFolder::new(dir))
}

/// One experiment of a folder, read and drawn, not yet written.
struct Drawn {
    name: String,
    results: ResultsFile,
    charts: Vec<ChartSpec>,
    files: Vec<OutputFile>,
}

/// [`report`] of a folder of results directories.
fn report_folder(folder: &ResultsFolder) -> Result<Regenerated, ReportError> {
    let names = folder.experiments()?;
    if names.is_empty() {
        return Err(ReportError::NoResults(folder.path().to_path_buf()));
    }
    let mut experiments = Vec::with_capacity(names.len());
    for name in names {
        let results = folder.dir(&name).read_results()?;
        let charts = chart_plan(&results);
        let files = render_planned(&results, &charts)?;
        experiments.push(Drawn {
            name,
            results,
            charts,
            files,
        });
    }
    let machine = folder.read_machine()?;
    let entries: Vec<IndexEntry<'_>> = experiments
        .iter()
        .map(|e| IndexEntry {
            name: &e.name,
            results: &e.results,
            charts: &e.charts,
        })
        .collect();
    let index_text = index(&entries, machine.as_ref());

    let mut dirs = Vec::with_capacity(experiments.len());
    for Drawn { name, files, .. } in &experiments {
        let sub = folder.dir(name);
        let written = write_rendered(&sub, files)?;
        dirs.push((sub.path().to_path_buf(), written));
    }
    let index_path = folder.index();
    write_file(&index_path, index_text.as_bytes())?;
    Ok(Regenerated {
        dirs,
        index: Some(index_path),
    })
}
