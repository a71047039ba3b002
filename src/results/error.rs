//! What can go wrong reading or writing a results file: each error names the file.
//!
//! An I/O error's message holds the operating system's reason itself and the error returns no
//! [`source`](std::error::Error::source): a printer that walks the chain (the command line's
//! `{:#}`) would otherwise print the reason twice, and one that prints only the message (a
//! calibration's "unreadable" note) would lose it.

use std::path::{Path, PathBuf};

use thiserror::Error;

/// A results, log or calibration file could not be read as one.
#[derive(Debug, Error)]
pub enum ReadError {
    /// The file (or directory) could not be read.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why (in the message, not a source: see the module doc).
        error: std::io::Error,
    },
    /// A JSON file the tool wrote (results, calibration) does not parse as one.
    #[error("{path}:{line}:{column}: not {what}: {message}")]
    BadJson {
        /// The file.
        path: PathBuf,
        /// What it should hold, e.g. `an attnbench results file`.
        what: &'static str,
        /// 1-based line of the problem.
        line: usize,
        /// 1-based column.
        column: usize,
        /// The parser's complaint.
        message: String,
    },
    /// A results file of another format version than this build reads.
    #[error("{path}: format `{found}`; this attnbench reads `{expected}`")]
    UnknownFormat {
        /// The file.
        path: PathBuf,
        /// Its `format` field.
        found: String,
        /// The one this build reads.
        expected: &'static str,
    },
    /// A point that did not fail lacks a field the report shows
    /// ([`PointResult::missing_field`](super::PointResult::missing_field)): a blank cell would
    /// hide it.
    #[error("{path}: point `{key}` has no `{field}` and no `error`")]
    MissingField {
        /// The file.
        path: PathBuf,
        /// The point's key.
        key: String,
        /// The field, by its name on disk, e.g. `median_ns`.
        field: &'static str,
    },
    /// A point of a merged set names a run the set does not list.
    #[error("{path}: point `{key}` names run {run}, but the file lists {runs} runs")]
    UnknownRun {
        /// The file.
        path: PathBuf,
        /// The point's key.
        key: String,
        /// Its `run`.
        run: usize,
        /// How many `runs` the file has.
        runs: usize,
    },
    /// The log holds a line that is not a point result (other than a torn last line).
    #[error("{path}:{line}: not a point result: {message}")]
    CorruptLog {
        /// The log.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// The parser's complaint.
        message: String,
    },
}

impl ReadError {
    /// Wraps an I/O error reading `path`, e.g. `.map_err(ReadError::at(path))`.
    pub fn at(path: &Path) -> impl FnOnce(std::io::Error) -> Self + '_ {
        move |error| Self::Io {
            path: path.to_path_buf(),
            error,
        }
    }
}

/// A file or directory of results could not be written (or removed).
#[derive(Debug, Error)]
#[error("{path}: {error}")]
pub struct WriteError {
    /// The file.
    pub path: PathBuf,
    /// Why (in the message, not a source: see the module doc).
    pub error: std::io::Error,
}

impl WriteError {
    /// Wraps an I/O error writing `path`, e.g. `.map_err(WriteError::at(path))`.
    pub fn at(path: &Path) -> impl FnOnce(std::io::Error) -> Self + '_ {
        move |error| Self {
            path: path.to_path_buf(),
            error,
        }
    }
}
