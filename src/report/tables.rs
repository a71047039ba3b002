//! The Markdown tables a person reads at a glance: per mode, latency and KV memory by
//! configuration × length, and speed-up and memory ratio against MHA; then links to the charts.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use tabled::builder::Builder;
use tabled::settings::Style;

use super::charts::plan as chart_plan;
use super::rows::{RowKey, Setting, Varies, fmt_mib, fmt_ms, length_name, of_mode};
use crate::config::{Mode, Variant};
use crate::results::{Machine, PointResult, ResultsDir, ResultsFile};

/// The baseline of a point: MHA (or GQA with as many KV heads as query heads) at the same
/// setting and length.
fn baseline<'a>(points: &[&'a PointResult], p: &PointResult) -> Option<&'a PointResult> {
    points.iter().copied().find(|b| {
        let is_mha = b.variant == Variant::Mha
            || (b.variant == Variant::Gqa && b.n_kv_heads == Some(b.n_heads));
        is_mha && Setting::of(b) == Setting::of(p) && b.length() == p.length() && b.error.is_none()
    })
}

/// One table: a row per configuration, a column per length, `cell` for each point.
fn table(
    points: &[&PointResult],
    varies: &Varies,
    first_header: &str,
    length_name: &str,
    cell: &dyn Fn(&PointResult) -> String,
) -> String {
    let lengths: BTreeSet<usize> = points.iter().map(|p| p.length()).collect();
    let mut rows: BTreeMap<RowKey, (String, BTreeMap<usize, String>)> = BTreeMap::new();
    for p in points {
        let entry = rows
            .entry(RowKey::of(p))
            .or_insert_with(|| (varies.label(p), BTreeMap::new()));
        entry.1.insert(p.length(), cell(p));
    }
    let mut builder = Builder::default();
    let mut header = vec![first_header.to_string()];
    header.extend(lengths.iter().map(|l| format!("{length_name} {l}")));
    builder.push_record(header);
    for (name, cells) in rows.values() {
        let mut record = vec![name.clone()];
        record.extend(
            lengths
                .iter()
                .map(|l| cells.get(l).cloned().unwrap_or_default()),
        );
        builder.push_record(record);
    }
    builder.build().with(Style::markdown()).to_string()
}

/// A calibration's peaks per thread count, e.g. `1 thread(s): 40.1 GFLOP/s, 12.3 GB/s; ...`.
pub(super) fn peaks(m: &Machine) -> String {
    let peaks: Vec<String> = m
        .matmul_gflops
        .iter()
        .map(|(t, g)| {
            format!(
                "{t} thread(s): {g:.1} GFLOP/s, {:.1} GB/s",
                m.read_gbps.get(t).copied().unwrap_or(f64::NAN)
            )
        })
        .collect();
    peaks.join("; ")
}

/// All tables of a results set, as Markdown, with a short header naming the experiment and
/// the machine.
pub fn markdown(results: &ResultsFile) -> String {
    let env = &results.environment;
    let exp = &results.experiment;
    let mut out = String::new();
    let _ = writeln!(out, "# {}\n", exp.name);
    if !exp.description.is_empty() {
        let _ = writeln!(out, "{}\n", exp.description.trim());
    }
    let _ = writeln!(
        out,
        "Measured {} on {} ({} cores), attnbench {} at {}, {}. f32; latency is the median of the samples, ± the median absolute deviation; {}.\n",
        env.date,
        env.cpu_model,
        env.cores,
        env.crate_version,
        env.git_revision,
        env.rustc,
        if exp.measure.flush_caches {
            "the CPU caches were evicted before every sample, so weights and KV cache come from memory"
        } else {
            "the CPU caches were not evicted between samples, so a layer that fits in them reads it faster than memory"
        }
    );
    if let Some(m) = &results.machine {
        let _ = writeln!(out, "Calibration ({}): {}.\n", m.environment.date, peaks(m));
    }

    for mode in [Mode::Prefill, Mode::Decode] {
        let points = of_mode(&results.points, mode);
        if points.is_empty() {
            continue;
        }
        let varies = Varies::of(&points);
        let length_name = length_name(mode);
        let what = match mode {
            Mode::Prefill => "new tokens per sequence",
            Mode::Decode => "tokens already in the cache",
        };
        let _ = writeln!(out, "## {mode}\n");
        let _ = writeln!(out, "Columns: {length_name} = {what}.\n");
        let _ = writeln!(out, "### {mode}: latency, ms (median ± MAD)\n");
        let latency = |p: &PointResult| match (p.step.median_ns, p.step.mad_ns, &p.error) {
            (_, _, Some(_)) => "error".to_string(),
            (Some(m), Some(d), None) => format!("{} ± {}", fmt_ms(m), fmt_ms(d)),
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "{}\n",
            table(&points, &varies, "variant", length_name, &latency)
        );
        let _ = writeln!(
            out,
            "### {mode}: KV cache, MiB (measured from the allocation)\n"
        );
        let kv = |p: &PointResult| p.kv_cache_bytes.map(fmt_mib).unwrap_or_default();
        let _ = writeln!(
            out,
            "{}\n",
            table(&points, &varies, "variant", length_name, &kv)
        );
        let _ = writeln!(
            out,
            "### {mode}: attention core alone, ms (share of the step)\n"
        );
        let core = |p: &PointResult| match (p.core.median_ns, p.core_share_pct) {
            (Some(c), Some(share)) => format!("{} ({share:.0}%)", fmt_ms(c)),
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "{}\n",
            table(&points, &varies, "variant", length_name, &core)
        );
        if points.iter().any(|p| p.step.roofline_pct.is_some()) {
            let _ = writeln!(
                out,
                "### {mode}: roofline, % of this machine's ideal time (step / core)\n\nIdeal = max(FLOPs / peak matmul FLOP/s, bytes / read bandwidth), from `attnbench calibrate`.\n"
            );
            let roof = |p: &PointResult| match (p.step.roofline_pct, p.core.roofline_pct) {
                (Some(l), Some(c)) => format!("{l:.0}% / {c:.0}%"),
                (Some(l), None) => format!("{l:.0}%"),
                _ => String::new(),
            };
            let _ = writeln!(
                out,
                "{}\n",
                table(&points, &varies, "variant", length_name, &roof)
            );
        }
        if points
            .iter()
            .any(|p| baseline(&points, p).is_some_and(|b| b.key != p.key))
        {
            let _ = writeln!(
                out,
                "### {mode}: against MHA (speed-up ×, KV memory ratio)\n\nMHA's median time over the variant's, and the variant's KV bytes over MHA's, at the same setting and length.\n"
            );
            let ratio = |p: &PointResult| match (
                baseline(&points, p),
                p.step.median_ns,
                p.kv_cache_bytes,
            ) {
                (Some(b), Some(m), Some(kv)) => match (b.step.median_ns, b.kv_cache_bytes) {
                    (Some(bm), Some(bkv)) => {
                        format!("{:.2}× / {:.3}", bm / m, kv as f64 / bkv as f64)
                    }
                    _ => String::new(),
                },
                _ => String::new(),
            };
            let _ = writeln!(
                out,
                "{}\n",
                table(&points, &varies, "variant", length_name, &ratio)
            );
        }
    }
    let charts = chart_plan(results);
    if !charts.is_empty() {
        let _ = writeln!(out, "## Charts\n");
        for chart in charts {
            let _ = writeln!(
                out,
                "![{title}]({charts}/{file})\n",
                charts = ResultsDir::CHARTS_DIR,
                title = chart.title,
                file = chart.file
            );
        }
    }
    let failed: Vec<&PointResult> = results
        .points
        .iter()
        .filter(|p| p.error.is_some())
        .collect();
    if !failed.is_empty() {
        let _ = writeln!(out, "## Failed points\n");
        for p in failed {
            let _ = writeln!(
                out,
                "- `{}`: {}",
                p.key,
                p.error.as_deref().unwrap_or_default()
            );
        }
        out.push('\n');
    }
    if !results.skipped.is_empty() {
        let _ = writeln!(out, "## Skipped combinations\n");
        for s in &results.skipped {
            let _ = writeln!(out, "- {}: {}", s.what, s.reason);
        }
        out.push('\n');
    }
    out
}
