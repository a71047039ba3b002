//! The accuracy table of a set with stored types other than f32: each point's `max_rel_err`
//! (docs/design.md §5) beside the bound its types are held to, a flag on those above it.

use std::fmt::Write;

use tabled::builder::Builder;
use tabled::settings::Style;

use super::rows::{MODES, RowKey, Varies, of_mode};
use super::tables::{row_head, row_head_header};
use crate::config::{Dtype, WeightDtype};
use crate::results::PointResult;

/// The flag of an error above its bound, in a cell and in the note under the table.
const ABOVE_BOUND: &str = "✗";

/// The bound on `max_rel_err` a point with these stored types is held to (the issue's
/// targets, on the default random weights): bf16 weights or a bf16 cache 2e-2, an f16 cache
/// 2e-3, an int8 cache 3e-2; a combination is held to the loosest of its types' bounds.
/// `None` for f32 and f32, whose error is that of the same f32 arithmetic and has no bound.
pub fn accuracy_bound(kv_dtype: Dtype, weight_dtype: WeightDtype) -> Option<f64> {
    let kv: Option<f64> = match kv_dtype {
        Dtype::F32 => None,
        Dtype::Bf16 => Some(2e-2),
        Dtype::F16 => Some(2e-3),
        Dtype::Int8 => Some(3e-2),
    };
    let weights = match weight_dtype {
        WeightDtype::F32 => None,
        WeightDtype::Bf16 => Some(2e-2),
    };
    match (kv, weights) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// A relative error with two significant digits, e.g. `1.3e-3`.
fn fmt_err(err: f64) -> String {
    format!("{err:.1e}")
}

/// The cell of `err` held to `bound`: flagged when above it (or not a number).
fn err_cell(err: f64, bound: Option<f64>) -> String {
    match bound {
        // A NaN error is above every bound.
        Some(b) if err.is_nan() || err > b => format!("{} {ABOVE_BOUND}", fmt_err(err)),
        _ => fmt_err(err),
    }
}

/// Writes `## Accuracy` with a row per point of `points` that has a `max_rel_err`, by mode,
/// then in table-row order, by length, and by stored types last (so the types of one
/// variant and length sit together); nothing when no point has one.
pub(super) fn write_table(out: &mut String, points: &[PointResult]) {
    let mut builder = Builder::default();
    let mut header = row_head_header(true);
    header.splice(1..1, ["mode".to_string(), "length".to_string()]);
    header.extend(["max_rel_err".to_string(), "bound".to_string()]);
    builder.push_record(header);
    let (mut rows, mut above) = (0, 0);
    for mode in MODES {
        let of_mode = of_mode(points, mode);
        let varies = Varies::of(&of_mode, false);
        let mut measured: Vec<(&PointResult, f64)> = of_mode
            .iter()
            .filter_map(|&p| Some((p, p.max_rel_err?)))
            .collect();
        // The types of one variant and length together.
        measured.sort_by_key(|(p, _)| (RowKey::ignoring_stored(p), p.length(), RowKey::of(p)));
        for (p, err) in measured {
            let bound = accuracy_bound(p.kv_dtype, p.weight_dtype);
            let cell = err_cell(err, bound);
            above += usize::from(cell.ends_with(ABOVE_BOUND));
            let mut record = row_head(&varies, true, p);
            record.splice(1..1, [mode.to_string(), p.length().to_string()]);
            record.extend([cell, bound.map(fmt_err_bound).unwrap_or("—".into())]);
            builder.push_record(record);
            rows += 1;
        }
    }
    if rows == 0 {
        return;
    }
    let _ = writeln!(out, "## Accuracy\n");
    let _ = writeln!(
        out,
        "`max_rel_err` = max|y − y_ref| / max|y_ref| over one step's output, against the same step \
         of the f32 layer with the unrounded weights, on the same input and cache contents \
         (docs/design.md §5); length is `seq_len` for prefill, the context for decode. Bounds: \
         bf16 weights or cache 2e-2, f16 cache 2e-3, int8 cache 3e-2; a combination is held to \
         the loosest of its types' bounds; f32 and f32 has none.\n"
    );
    let _ = writeln!(out, "{}\n", builder.build().with(Style::markdown()));
    if above > 0 {
        let _ = writeln!(
            out,
            "{ABOVE_BOUND} above its bound: {above} point(s) lose more accuracy than their types \
             are held to.\n"
        );
    }
}

/// A bound as the docs write it, e.g. `2e-2`.
fn fmt_err_bound(bound: f64) -> String {
    format!("{bound:.0e}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_combination_is_held_to_its_loosest_bound() {
        assert_eq!(accuracy_bound(Dtype::F32, WeightDtype::F32), None);
        assert_eq!(accuracy_bound(Dtype::F16, WeightDtype::F32), Some(2e-3));
        assert_eq!(accuracy_bound(Dtype::F32, WeightDtype::Bf16), Some(2e-2));
        assert_eq!(accuracy_bound(Dtype::F16, WeightDtype::Bf16), Some(2e-2));
        assert_eq!(accuracy_bound(Dtype::Int8, WeightDtype::Bf16), Some(3e-2));
        assert_eq!(accuracy_bound(Dtype::Bf16, WeightDtype::F32), Some(2e-2));
    }

    #[test]
    fn errors_have_two_significant_digits_and_a_flag_above_the_bound() {
        assert_eq!(err_cell(1.234e-3, Some(2e-3)), "1.2e-3");
        assert_eq!(err_cell(2.5e-3, Some(2e-3)), "2.5e-3 ✗");
        assert_eq!(err_cell(f64::NAN, Some(2e-2)), "NaN ✗");
        assert_eq!(err_cell(0.0, None), "0.0e0");
        assert_eq!(fmt_err_bound(3e-2), "3e-2");
    }
}
