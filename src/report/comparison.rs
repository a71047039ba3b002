//! The comparison of two result sets as a person reads it: one row per matched point (step
//! and core, A and B, ratio, noise bound, verdict), the points not compared, and the counts.

use std::fmt::Write;

use tabled::builder::Builder;
use tabled::settings::Style;

use crate::compare::{
    Change, CompareSettings, Comparison, Counts, Metric, Outcome, PointComparison, Verdict,
};

/// Milliseconds to four significant digits (whole milliseconds from 10 s up): the points of
/// one comparison span microseconds to seconds, and a few percent must stay visible at
/// either end.
fn fmt_ms(ns: f64) -> String {
    let ms = ns / 1e6;
    let decimals = (3 - ms.log10().floor() as i32).clamp(0, 9) as usize;
    format!("{ms:.decimals$}")
}

/// The verdict with the factor in the direction it names: `slower 1.52×` (B takes 1.52 times
/// as long), `faster 2.00×` (B runs twice as fast).
fn verdict_cell(change: &Change) -> String {
    match change.verdict {
        Verdict::Slower => format!("slower {:.2}×", change.ratio),
        Verdict::Faster => format!("faster {:.2}×", 1.0 / change.ratio),
        Verdict::WithinNoise => "within noise".into(),
    }
}

/// A's median, B's median, B/A, the noise bound and the verdict of one quantity.
fn change_cells(change: Option<&Change>) -> [String; 5] {
    match change {
        Some(c) => [
            fmt_ms(c.a.median_ns),
            fmt_ms(c.b.median_ns),
            format!("{:.3}", c.ratio),
            format!("±{:.1}%", c.noise_pct),
            verdict_cell(c),
        ],
        None => Default::default(),
    }
}

fn counts_line(counts: &Counts) -> String {
    format!(
        "{} faster, {} slower, {} within noise, {} failed, {} only in A, {} only in B",
        counts.faster,
        counts.slower,
        counts.within_noise,
        counts.failed,
        counts.only_in_a,
        counts.only_in_b
    )
}

/// The comparison as Markdown: the table of matched points in A's order, the failed and
/// unmatched points, and the counts of step (and core) verdicts.
pub fn comparison_markdown(comparison: &Comparison) -> String {
    let mut out = intro(&comparison.settings);
    let (table, failed) = matched_table(comparison);
    if comparison.points.is_empty() {
        // The usual cause: runs that differ on purpose in an axis the key carries (`_t1` against
        // `_t2`).
        let _ = writeln!(
            out,
            "No point matched. If the runs differ on purpose in threads, kernel or implementation, \
             match with `--ignore threads` (or `kernel`, or `implementation`)."
        );
    } else {
        let _ = writeln!(out, "{table}");
    }
    write_not_compared(&mut out, comparison, &failed);
    write_counts(&mut out, comparison);
    out
}

/// What the numbers are and when a change counts.
fn intro(settings: &CompareSettings) -> String {
    let ignored: Vec<&str> = settings.ignore.iter().map(|a| a.name()).collect();
    format!(
        "Times in ms (medians); B/A above 1 means B takes longer. A change counts when it is beyond \
         ±noise ({} combined standard errors of the two medians) and beyond {}%.{}\n\n",
        settings.noise_k,
        settings.min_change_pct,
        if ignored.is_empty() {
            String::new()
        } else {
            format!(" Points matched ignoring {}.", ignored.join(", "))
        },
    ) + match settings.metric {
        Metric::Step => "",
        Metric::Core => {
            "The counts and the gate judge the attention core (`--metric core`); a step is \
             compared only where both sides measured the same work.\n\n"
        }
    }
}

/// The Markdown table of the compared points, and the points that failed on either side.
/// When a pair is stored in a type other than f32, the table says each pair's types (`kv`,
/// `weights`) after its key; a comparison of f32 only reads as it always has.
fn matched_table(comparison: &Comparison) -> (String, Vec<&PointComparison>) {
    let stored = comparison.points.iter().any(PointComparison::is_narrow);
    let mut table = Builder::default();
    let mut header = vec!["point"];
    if stored {
        header.extend(["kv", "weights"]);
    }
    header.extend([
        "A",
        "B",
        "B/A",
        "noise",
        "step",
        "core A",
        "core B",
        "core B/A",
        "core noise",
        "core",
    ]);
    table.push_record(header);
    let mut failed = Vec::new();
    for point in &comparison.points {
        let Outcome::Compared { step, core } = &point.outcome else {
            failed.push(point);
            continue;
        };
        let mut row = vec![if point.key_a == point.key_b {
            point.key_a.clone()
        } else {
            format!("{} ↔ {}", point.key_a, point.key_b)
        }];
        if stored {
            row.extend([point.kv_dtype.to_string(), point.weight_dtype.to_string()]);
        }
        row.extend(change_cells(step.as_ref()));
        row.extend(change_cells(core.as_ref()));
        table.push_record(row);
    }
    (table.build().with(Style::markdown()).to_string(), failed)
}

/// A line per failed point and per point found on one side only.
fn write_not_compared(out: &mut String, comparison: &Comparison, failed: &[&PointComparison]) {
    if !(failed.is_empty() && comparison.only_in_a.is_empty() && comparison.only_in_b.is_empty()) {
        out.push('\n');
    }
    for point in failed {
        if let Outcome::Failed { a_error, b_error } = &point.outcome {
            let side = |e: &Option<String>| e.as_deref().unwrap_or("ok").to_string();
            let _ = writeln!(
                out,
                "failed: {}: A: {}; B: {}",
                point.key_a,
                side(a_error),
                side(b_error)
            );
        }
    }
    for key in &comparison.only_in_a {
        let _ = writeln!(out, "only in A: {key}");
    }
    for key in &comparison.only_in_b {
        let _ = writeln!(out, "only in B: {key}");
    }
}

/// The counts of the judged metric's verdicts (the step's by default), then of the other's.
fn write_counts(out: &mut String, comparison: &Comparison) {
    let metric = comparison.settings.metric;
    let _ = writeln!(
        out,
        "\n{metric}: {} points: {}",
        comparison.points.len() + comparison.only_in_a.len() + comparison.only_in_b.len(),
        counts_line(&comparison.counts())
    );
    let other = match metric {
        Metric::Step => Metric::Core,
        Metric::Core => Metric::Step,
    };
    let counts = comparison.counts_of(other);
    let _ = writeln!(
        out,
        "{other}: {} faster, {} slower, {} within noise, {} not compared",
        counts.faster, counts.slower, counts.within_noise, counts.failed
    );
}

#[cfg(test)]
mod tests {
    use super::fmt_ms;

    #[test]
    fn times_keep_four_significant_digits() {
        assert_eq!(fmt_ms(6_123.0), "0.006123");
        assert_eq!(fmt_ms(12_345_678.0), "12.35");
        assert_eq!(fmt_ms(1_234_000_000.0), "1234");
        assert_eq!(fmt_ms(99_999_000_000.0), "99999");
    }
}
