//! Reports of a results set: Markdown tables (made with tabled) and CSV. They are derived
//! from `results.json` alone, so `attnbench report` regenerates them byte for byte.

mod comparison;
mod tables;

use std::path::Path;

pub use comparison::comparison_markdown;
pub use tables::markdown;

use crate::harness::{ResultsFile, RunError};

/// The CSV file: one row per point, the columns of [`crate::harness::PointResult`].
pub const CSV_FILE: &str = "results.csv";
/// The Markdown tables.
pub const MARKDOWN_FILE: &str = "results.md";

/// `results.csv` as text. The `csv` crate does the quoting (error messages hold commas).
pub fn csv(results: &ResultsFile) -> String {
    let mut writer = csv::Writer::from_writer(Vec::new());
    for point in &results.points {
        writer
            .serialize(point)
            .expect("a point result is one CSV record");
    }
    String::from_utf8(writer.into_inner().expect("writing to memory")).expect("CSV is UTF-8")
}

/// Writes `results.csv` and `results.md` into `dir`, atomically.
pub fn write_reports(dir: &Path, results: &ResultsFile) -> Result<(), RunError> {
    for (name, text) in [(CSV_FILE, csv(results)), (MARKDOWN_FILE, markdown(results))] {
        let path = dir.join(name);
        crate::fsutil::write_atomic(&path, text.as_bytes())
            .map_err(|source| RunError::Io { path, source })?;
    }
    Ok(())
}
