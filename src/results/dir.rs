//! Where results live on disk: a results directory (one experiment) and a folder of them
//! (such as `results/`). Every file name the tool writes is defined here and nowhere else.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use super::error::{ReadError, WriteError};
use super::file::{ResultsFile, read_results};
use super::grid::{Grid, RecordedGrid};
use super::json::write_json;
use super::machine::{Machine, read_machine};
use super::point::PointResult;

/// One experiment's results directory: `results.json`, the log of finished points, and what
/// the report derives from the JSON (CSV, Markdown, charts).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResultsDir {
    path: PathBuf,
}

impl ResultsDir {
    /// The final results: every point's summary, the experiment and the environment.
    pub const JSON_FILE: &'static str = "results.json";
    /// The log of finished points, one JSON object per line, appended as each point finishes.
    pub const LOG_FILE: &'static str = "points.jsonl";
    /// The CSV: one row per point, the columns of [`PointResult`].
    pub const CSV_FILE: &'static str = "results.csv";
    /// The Markdown tables.
    pub const MARKDOWN_FILE: &'static str = "results.md";
    /// The folder of SVG charts.
    pub const CHARTS_DIR: &'static str = "charts";
    /// The extension of the charts in [`CHARTS_DIR`](Self::CHARTS_DIR).
    pub const CHART_EXTENSION: &'static str = "svg";

    /// The results directory at `path` (which need not exist yet).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its `results.json`.
    pub fn json(&self) -> PathBuf {
        self.path.join(Self::JSON_FILE)
    }

    /// Its log of finished points.
    pub fn log(&self) -> PathBuf {
        self.path.join(Self::LOG_FILE)
    }

    /// Its charts folder.
    pub fn charts(&self) -> PathBuf {
        self.path.join(Self::CHARTS_DIR)
    }

    /// True when it holds results of a run, finished (`results.json`) or not (the log).
    pub fn holds_results(&self) -> bool {
        self.log().exists() || self.json().exists()
    }

    /// Reads its `results.json`.
    pub fn read_results(&self) -> Result<ResultsFile, ReadError> {
        read_results(&self.json())
    }

    /// Writes its `results.json` atomically.
    pub fn write_results(&self, results: &ResultsFile) -> Result<(), WriteError> {
        write_json(&self.json(), results)
    }

    /// Deletes what the tool writes here (the JSON, the log, the CSV, the Markdown and the
    /// charts) and nothing else, for a run that starts over (`--force`). The charts folder
    /// goes too once it is empty.
    pub fn clear(&self) -> Result<(), WriteError> {
        for name in [
            Self::LOG_FILE,
            Self::JSON_FILE,
            Self::CSV_FILE,
            Self::MARKDOWN_FILE,
        ] {
            remove_file_if_present(&self.path.join(name))?;
        }
        for chart in self.chart_files() {
            remove_file_if_present(&chart)?;
        }
        let charts = self.charts();
        // Left in place when something else is in it: that is not the tool's to delete.
        if charts.is_dir() && fs::read_dir(&charts).is_ok_and(|mut d| d.next().is_none()) {
            fs::remove_dir(&charts).map_err(WriteError::at(&charts))?;
        }
        Ok(())
    }

    /// The charts in its charts folder (none if there is no folder).
    pub fn chart_files(&self) -> Vec<PathBuf> {
        let Ok(entries) = fs::read_dir(self.charts()) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == Self::CHART_EXTENSION))
            .collect()
    }

    /// Reads the log of finished points (without the grid it opens with). A torn last line
    /// (the run was killed while writing it) is cut off the file so that appending continues
    /// cleanly; any other bad line is an error, a point that did not fail and lacks a field
    /// the report shows ([`PointResult::missing_field`], roofline aside) included.
    pub fn read_log(&self) -> Result<Vec<PointResult>, ReadError> {
        read_log(&self.log())
    }

    /// Reads the log of finished points and the grid it was run with, as
    /// [`read_log`](Self::read_log).
    pub fn read_logged_run(&self) -> Result<LoggedRun, ReadError> {
        read_logged_run(&self.log())
    }

    /// Opens the log for appending, creating the directory and the log if needed. A log that
    /// holds nothing yet (or only blank lines) gets `grid` ([`Grid`]) as its first line; the caller checks that a
    /// log holding points was run with `grid` ([`Grid::change_since`]) before appending.
    pub fn open_log(&self, grid: &Grid) -> Result<PointLog, WriteError> {
        fs::create_dir_all(&self.path).map_err(WriteError::at(&self.path))?;
        let path = self.log();
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(WriteError::at(&path))?;
        // Blank lines (a kill before the first line was whole, then its cut) are no record.
        let record = BufReader::new(File::open(&path).map_err(WriteError::at(&path))?)
            .bytes()
            .find(|b| !matches!(b, Ok(b) if b.is_ascii_whitespace()))
            .transpose()
            .map_err(WriteError::at(&path))?;
        let blank = record.is_none();
        let mut log = PointLog { path, file };
        if blank {
            log.file.set_len(0).map_err(WriteError::at(&log.path))?;
            log.append_line(format!(
                "{{\"grid_hash\":{},\"grid\":{}}}",
                serde_json::Value::from(grid.hash()),
                grid.json()
            ))?;
        }
        Ok(log)
    }
}

fn remove_file_if_present(path: &Path) -> Result<(), WriteError> {
    if path.exists() {
        fs::remove_file(path).map_err(WriteError::at(path))?;
    }
    Ok(())
}

/// The log of finished points, open for appending.
#[derive(Debug)]
pub struct PointLog {
    path: PathBuf,
    file: File,
}

impl PointLog {
    /// Appends `result` as one line and syncs it to disk, so that a kill loses at most the
    /// point being written.
    pub fn append(&mut self, result: &PointResult) -> Result<(), WriteError> {
        self.append_line(serde_json::to_string(result).expect("a point result serialises"))
    }

    fn append_line(&mut self, mut line: String) -> Result<(), WriteError> {
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .map_err(WriteError::at(&self.path))?;
        self.file.sync_data().map_err(WriteError::at(&self.path))
    }
}

/// What a log holds: the grid its run measured (its first line) and the points finished.
#[derive(Clone, Debug, PartialEq)]
pub struct LoggedRun {
    /// The grid, `None` in a log written before grids were recorded (or one killed before its
    /// first line was whole).
    pub grid: Option<RecordedGrid>,
    /// The finished points, in the order measured.
    pub points: Vec<PointResult>,
}

/// Reads the points of the log at `path`; see [`ResultsDir::read_log`].
pub fn read_log(path: &Path) -> Result<Vec<PointResult>, ReadError> {
    read_logged_run(path).map(|run| run.points)
}

/// Reads the log at `path`; see [`ResultsDir::read_logged_run`].
pub fn read_logged_run(path: &Path) -> Result<LoggedRun, ReadError> {
    let io = ReadError::at;
    let file = File::open(path).map_err(io(path))?;
    let mut run = LoggedRun {
        grid: None,
        points: Vec::new(),
    };
    let mut good_bytes = 0u64;
    let lines: Vec<String> = BufReader::new(file)
        .lines()
        .collect::<Result<_, _>>()
        .map_err(io(path))?;
    let text_len = fs::metadata(path).map_err(io(path))?.len();
    for (i, line) in lines.iter().enumerate() {
        let first_record = run.grid.is_none() && run.points.is_empty();
        if line.trim().is_empty() {
            good_bytes += line.len() as u64 + 1;
            continue;
        }
        // The grid opens the log; a point line is never one (it has no `grid_hash`).
        if first_record && let Ok(grid) = serde_json::from_str::<RecordedGrid>(line) {
            run.grid = Some(grid);
            good_bytes += line.len() as u64 + 1;
            continue;
        }
        match serde_json::from_str::<PointResult>(line) {
            Ok(r) => {
                // Its roofline is not checked: the log does not record the calibration.
                if let Some(field) = r.missing_field(None) {
                    return Err(ReadError::CorruptLog {
                        path: path.to_path_buf(),
                        line: i + 1,
                        message: format!("point `{}` has no `{field}` and no `error`", r.key),
                    });
                }
                run.points.push(r);
                good_bytes += line.len() as u64 + 1;
            }
            // A torn last line: the run was killed while writing it.
            Err(_) if i + 1 == lines.len() => {
                let file = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(io(path))?;
                file.set_len(good_bytes.min(text_len)).map_err(io(path))?;
            }
            Err(e) => {
                return Err(ReadError::CorruptLog {
                    path: path.to_path_buf(),
                    line: i + 1,
                    message: e.to_string(),
                });
            }
        }
    }
    Ok(run)
}

/// A folder of results directories (such as `results/`): one directory per experiment, the
/// index of them all, and the calibration the runs used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResultsFolder {
    path: PathBuf,
}

impl ResultsFolder {
    /// The index of the folder's experiments.
    pub const INDEX_FILE: &'static str = "README.md";
    /// The calibration file a folder may hold beside the experiments (and the default place
    /// of `attnbench calibrate`'s output, `results/machine.json`).
    pub const MACHINE_FILE: &'static str = "machine.json";

    /// The folder at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its index.
    pub fn index(&self) -> PathBuf {
        self.path.join(Self::INDEX_FILE)
    }

    /// Its calibration file.
    pub fn machine(&self) -> PathBuf {
        self.path.join(Self::MACHINE_FILE)
    }

    /// The results directory `name` inside it.
    pub fn dir(&self, name: &str) -> ResultsDir {
        ResultsDir::new(self.path.join(name))
    }

    /// The names of the directories inside it that hold a `results.json`, sorted.
    pub fn experiments(&self) -> Result<Vec<String>, ReadError> {
        let mut names: Vec<String> = fs::read_dir(&self.path)
            .map_err(ReadError::at(&self.path))?
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join(ResultsDir::JSON_FILE).is_file())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        Ok(names)
    }

    /// Its calibration, when it has one.
    pub fn read_machine(&self) -> Result<Option<Machine>, ReadError> {
        let path = self.machine();
        if path.exists() {
            read_machine(&path).map(Some)
        } else {
            Ok(None)
        }
    }
}
