//! The Markdown tables a person reads at a glance: per mode, latency and KV memory by
//! configuration × length, and speed-up and memory ratio against MHA.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use tabled::builder::Builder;
use tabled::settings::Style;

use crate::config::{Kernel, Mode, Variant};
use crate::harness::{PointResult, ResultsFile};

/// Everything that identifies a point except its length and its variant's shape.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Setting {
    n_heads: usize,
    batch: usize,
    threads: usize,
    cache_len: usize,
    kernel: Kernel,
}

impl Setting {
    fn of(p: &PointResult) -> Self {
        Self {
            n_heads: p.n_heads,
            batch: p.batch,
            threads: p.threads,
            cache_len: if p.mode == Mode::Prefill {
                p.context
            } else {
                0
            },
            kernel: p.kernel,
        }
    }
}

/// A table row: the configuration a point belongs to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct RowKey {
    setting: Setting,
    variant_rank: (Variant, String),
    n_kv_heads: Option<usize>,
}

fn row_key(p: &PointResult) -> RowKey {
    RowKey {
        setting: Setting::of(p),
        variant_rank: (p.variant, p.variant_label()),
        // Descending KV heads read naturally (MHA-like first), hence the reversal.
        n_kv_heads: p.n_kv_heads.map(|k| usize::MAX - k),
    }
}

/// Which parts of the setting vary across the points of a mode, so that labels name only those.
struct Varies {
    n_heads: bool,
    batch: bool,
    threads: bool,
    cache_len: bool,
    kernel: bool,
}

fn label(p: &PointResult, varies: &Varies) -> String {
    let mut s = p.variant_label();
    if let Some(kv) = p.n_kv_heads
        && p.variant == Variant::Gqa
    {
        let _ = write!(s, " kv{kv}");
    }
    if varies.n_heads {
        let _ = write!(s, " h{}", p.n_heads);
    }
    if varies.batch {
        let _ = write!(s, " b{}", p.batch);
    }
    if varies.threads {
        let _ = write!(s, " t{}", p.threads);
    }
    if varies.cache_len {
        let _ = write!(s, " cache{}", p.context);
    }
    if varies.kernel {
        let _ = write!(s, " {}", p.kernel);
    }
    s
}

/// The baseline of a point: MHA (or GQA with as many KV heads as query heads) at the same
/// setting and length.
fn baseline<'a>(points: &[&'a PointResult], p: &PointResult) -> Option<&'a PointResult> {
    points.iter().copied().find(|b| {
        let is_mha = b.variant == Variant::Mha
            || (b.variant == Variant::Gqa && b.n_kv_heads == Some(b.n_heads));
        is_mha && Setting::of(b) == Setting::of(p) && b.length() == p.length() && b.error.is_none()
    })
}

fn fmt_ms(ns: f64) -> String {
    let ms = ns / 1e6;
    if ms >= 100.0 {
        format!("{ms:.0}")
    } else if ms >= 10.0 {
        format!("{ms:.1}")
    } else if ms >= 1.0 {
        format!("{ms:.2}")
    } else {
        format!("{ms:.3}")
    }
}

fn fmt_mib(bytes: u64) -> String {
    let mib = bytes as f64 / (1u64 << 20) as f64;
    if mib >= 100.0 {
        format!("{mib:.0}")
    } else if mib >= 1.0 {
        format!("{mib:.1}")
    } else {
        format!("{mib:.3}")
    }
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
            .entry(row_key(p))
            .or_insert_with(|| (label(p, varies), BTreeMap::new()));
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
        "Measured {} on {} ({} cores), attnbench {} at {}, {}. f32; latency is the median of the samples, ± the median absolute deviation.\n",
        env.date, env.cpu_model, env.cores, env.crate_version, env.git_revision, env.rustc
    );
    if let Some(m) = &results.machine {
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
        let _ = writeln!(
            out,
            "Calibration ({}): {}.\n",
            m.environment.date,
            peaks.join("; ")
        );
    }

    for mode in [Mode::Prefill, Mode::Decode] {
        let points: Vec<&PointResult> = results.points.iter().filter(|p| p.mode == mode).collect();
        if points.is_empty() {
            continue;
        }
        let distinct = |f: &dyn Fn(&PointResult) -> usize| {
            points.iter().map(|p| f(p)).collect::<BTreeSet<_>>().len() > 1
        };
        let varies = Varies {
            n_heads: distinct(&|p| p.n_heads),
            batch: distinct(&|p| p.batch),
            threads: distinct(&|p| p.threads),
            cache_len: mode == Mode::Prefill && distinct(&|p| p.context),
            kernel: points
                .iter()
                .map(|p| p.kernel)
                .collect::<BTreeSet<_>>()
                .len()
                > 1,
        };
        let (length_name, what) = match mode {
            Mode::Prefill => ("seq", "new tokens per sequence"),
            Mode::Decode => ("ctx", "tokens already in the cache"),
        };
        let _ = writeln!(out, "## {mode}\n");
        let _ = writeln!(out, "Columns: {length_name} = {what}.\n");
        let _ = writeln!(out, "### {mode}: latency, ms (median ± MAD)\n");
        let latency = |p: &PointResult| match (p.median_ns, p.mad_ns, &p.error) {
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
        let core = |p: &PointResult| match (p.core_median_ns, p.core_share_pct) {
            (Some(c), Some(share)) => format!("{} ({share:.0}%)", fmt_ms(c)),
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "{}\n",
            table(&points, &varies, "variant", length_name, &core)
        );
        if points.iter().any(|p| p.roofline_pct.is_some()) {
            let _ = writeln!(
                out,
                "### {mode}: roofline, % of this machine's ideal time (step / core)\n\nIdeal = max(FLOPs / peak matmul FLOP/s, bytes / read bandwidth), from `attnbench calibrate`.\n"
            );
            let roof = |p: &PointResult| match (p.roofline_pct, p.core_roofline_pct) {
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
            let ratio =
                |p: &PointResult| match (baseline(&points, p), p.median_ns, p.kv_cache_bytes) {
                    (Some(b), Some(m), Some(kv)) => match (b.median_ns, b.kv_cache_bytes) {
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
