//! Errors in experiment files, located by file, line, column and key.

use std::fmt;
use std::ops::Range;

/// A problem with an experiment file, found before anything runs.
#[derive(Clone, Debug, PartialEq)]
pub struct ExperimentError {
    /// The file, as the user named it.
    pub file: String,
    /// 1-based line and column of the value at fault, when known.
    pub location: Option<(usize, usize)>,
    /// Dotted key at fault, e.g. `sweep.n_kv_heads`, when known.
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ExperimentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some((line, column)) = self.location {
            write!(f, ":{line}:{column}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": key `{key}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ExperimentError {}

/// 1-based (line, column) of byte `offset` in `text`, the column in characters (as editors
/// count them), not bytes.
pub(crate) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..char_floor(text, offset)];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |nl| nl + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// `offset` clamped to `text` and moved back to the start of the character it falls in.
fn char_floor(text: &str, offset: usize) -> usize {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
}

/// The dotted key whose value sits at byte `offset`: the `key =` on that line, prefixed by the
/// nearest `[table]` header above it. Best effort, for messages only.
pub(crate) fn key_at(text: &str, offset: usize) -> Option<String> {
    let offset = char_floor(text, offset);
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
    let line = &text[line_start..line_end];
    let key = line.split_once('=').map(|(k, _)| k.trim())?;
    if key.is_empty() || key.starts_with('#') || key.starts_with('[') {
        return None;
    }
    let table = text[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('[') && !l.starts_with("[["))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_string());
    Some(match table {
        Some(t) => format!("{t}.{key}"),
        None => key.to_string(),
    })
}

/// An error located at `span` of `text`.
pub(crate) fn at_span(
    file: &str,
    text: &str,
    span: Range<usize>,
    key: &str,
    message: String,
) -> ExperimentError {
    ExperimentError {
        file: file.to_string(),
        location: Some(line_column(text, span.start)),
        key: Some(key.to_string()),
        message,
    }
}
