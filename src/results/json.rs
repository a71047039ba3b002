//! JSON in and out: errors that name the file and the line and column, and atomic writes
//! (pretty-printed, one trailing newline) so that a reader never sees half a file.

use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::error::{ReadError, WriteError};

/// Parses `text`, the contents of `path`, as JSON holding `what` (e.g. `a calibration file`).
pub(super) fn parse_json<T: DeserializeOwned>(
    path: &Path,
    text: &str,
    what: &'static str,
) -> Result<T, ReadError> {
    serde_json::from_str(text).map_err(|e| ReadError::BadJson {
        path: path.to_path_buf(),
        what,
        line: e.line(),
        column: e.column(),
        message: e.to_string(),
    })
}

/// Reads `path` as text.
pub(super) fn read_text(path: &Path) -> Result<String, ReadError> {
    std::fs::read_to_string(path).map_err(ReadError::at(path))
}

/// Writes `value` to `path` as pretty-printed JSON and a newline, atomically.
pub(super) fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), WriteError> {
    let mut text = serde_json::to_string_pretty(value).expect("a results record serialises");
    text.push('\n');
    write_file(path, text.as_bytes())
}

/// Writes `bytes` to `path` atomically ([`crate::fsutil::write_atomic`]), creating its
/// directory if needed.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    crate::fsutil::write_atomic(path, bytes).map_err(WriteError::at(path))
}
