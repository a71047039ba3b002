//! `results.md`, the tables a person reads at a glance: a header naming the experiment and
//! the machine; per mode, the tables of [`TABLES`], each a row per configuration and a column
//! per length; then links to the charts, the failed points and the skipped combinations.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use tabled::builder::Builder;
use tabled::settings::Style;

use super::accuracy;
use super::charts::ChartSpec;
use super::machines;
use super::rows::{
    KV_DTYPE_ORDER, MODES, RowKey, Setting, Stored, Varies, fmt_mib, fmt_ms, length_name,
    shows_stored_types,
};
use crate::config::{Mode, Variant, WeightDtype};
use crate::experiment::Skipped;
use crate::results::{Environment, Machine, PointResult, ResultsDir, ResultsFile, Summary};

/// The points of one mode's section, and whether their set shows the stored types.
struct Section<'a> {
    /// The points of the mode, in file order.
    points: Vec<&'a PointResult>,
    /// The whole set, for the calibration each point's roofline used.
    results: &'a ResultsFile,
    /// Some point of the whole set (not only of this mode) is stored in a type other than
    /// f32: the tables gain `kv` and `weights` columns and the notes say how bytes count.
    stored: bool,
}

/// One table of a mode's section, as data: every one of [`TABLES`] is written the same way.
struct TableDef {
    /// The heading, after `### {mode}: `.
    heading: &'static str,
    /// The paragraph under the heading, when the heading does not say it all.
    note: Option<&'static str>,
    /// Whether the points of the mode call for the table.
    shown: fn(&Section<'_>) -> bool,
    /// The cell of a point, given its mode's section (where the speed-up finds its baseline
    /// and the phases their calibration); empty when the point has no value.
    cell: fn(&Section<'_>, &PointResult) -> String,
    /// The paragraphs under the table, given the section: what its figures count, and what a
    /// flag in its cells means when a cell has one. Empty for none.
    footer: fn(&Section<'_>) -> String,
}

/// The tables of each mode, in the order they are shown.
const TABLES: [TableDef; 8] = [
    TableDef {
        heading: "latency, ms (median ± MAD)",
        note: None,
        shown: always,
        cell: latency_cell,
        footer: no_footer,
    },
    TableDef {
        heading: "KV cache, MiB (measured from the allocation)",
        note: None,
        shown: always,
        cell: kv_cache_cell,
        footer: no_footer,
    },
    TableDef {
        heading: "attention core alone, ms (share of the step)",
        note: None,
        shown: always,
        cell: core_cell,
        footer: no_footer,
    },
    TableDef {
        heading: "roofline, % of this machine's ideal time (step / core)",
        note: Some(
            "Ideal = max(FLOPs / peak matmul FLOP/s, bytes / read bandwidth), from `attnbench calibrate`.",
        ),
        shown: any_roofline,
        cell: roofline_cell,
        footer: roofline_footer,
    },
    TableDef {
        heading: "roofline with the phases in turn, % (the step's share of that ideal / the most the roofline above can read)",
        note: Some(
            "The roofline's ideal lets the step's arithmetic and its reads overlap from end to end. A layer runs its attention core and the rest of the step (the projections, which read the weights) one after the other, so its ideal with the phases in turn is the core's ideal plus the rest's, each max(FLOPs / peak matmul FLOP/s, bytes / read bandwidth). The second figure is the step's ideal over this one: the most the roofline table can read for a step that runs its phases in turn. It is below 100% where one phase is bound by arithmetic and the other by memory.",
        ),
        shown: phases_bound,
        cell: phases_cell,
        footer: phases_footer,
    },
    TableDef {
        heading: "matmul rate probed before the point, GFLOP/s (the step's and the core's rate, % of it)",
        note: Some(
            "The machine's f32 matmul rate just before the point, by the calibration's product, and the step's and the core's FLOPs per second as a share of it: a step or core bound by arithmetic reaches at most about 100% of what the machine offered then.",
        ),
        shown: any_matmul_probe,
        cell: matmul_probe_cell,
        footer: no_footer,
    },
    TableDef {
        heading: "read bandwidth probed before the point, GB/s (the step's and the core's bandwidth, % of it)",
        note: Some(
            "The machine's read bandwidth just before the point, by the calibration's pattern, and what the step and the core read per second as a share of it: a step or core bound by memory reads at most about 100% of what the machine offered then (more when part of it came from the CPU caches).",
        ),
        shown: any_read_probe,
        cell: read_probe_cell,
        footer: no_footer,
    },
    TableDef {
        heading: "against MHA (speed-up ×, KV memory ratio)",
        note: Some(
            "MHA's median time over the variant's, and the variant's KV bytes over MHA's, at the same setting and length.",
        ),
        shown: any_baseline,
        cell: against_mha_cell,
        footer: no_footer,
    },
];

/// The flag of a figure above the calibrated ceiling, in a cell and in the note under it.
const ABOVE_CEILING: &str = "⚠";

/// What the roofline's FLOPs and bytes count ([`crate::cost`]'s formulas), said under its
/// table; in a set of f32 only, [`BYTES_ALL_F32`] stands for `{bytes}`, otherwise
/// [`BYTES_STORED`].
const ROOFLINE_COUNTS: &str = "FLOPs count matmul multiply-adds only, 2 each (not the softmax, \
    RoPE or norms): the projections, 2 · tokens · d_in · d_out each (MLA's expansion of the cached \
    latent (naive) or its absorption into the queries and outputs (absorbed) among them), and \
    attention over the causally visible (query, key) pairs only, 2 · heads · (query-key width + \
    value width) per pair (MLA absorbed: the latent and rope widths for the scores, the latent \
    for the values). {bytes} are the least the step must move: the weights once, the KV \
    cache read (every token it holds after the step) and the new tokens appended, the activations \
    in and out; the core's are the keys and values read (MLA naive: the expanded per-head ones), \
    the queries in and the head outputs out.";

/// How bytes count in a set of f32 only.
const BYTES_ALL_F32: &str = "Bytes, all f32,";

/// How bytes count in a set with other stored types.
const BYTES_STORED: &str = "Bytes, each tensor at its stored width (the weights at the \
    point's `weights` type, the KV cache at its `kv` type, int8's per-row f32 scales included; \
    activations f32),";

fn no_footer(_: &Section<'_>) -> String {
    String::new()
}

/// What the roofline figures count, and the meaning of [`ABOVE_CEILING`] when a point has it.
fn roofline_footer(section: &Section<'_>) -> String {
    let bytes = if section.stored {
        BYTES_STORED
    } else {
        BYTES_ALL_F32
    };
    let mut out = ROOFLINE_COUNTS.replace("{bytes}", bytes);
    if section.points.iter().any(|p| !p.above_ceiling().is_empty()) {
        let _ = write!(
            out,
            "\n\n{ABOVE_CEILING} above the calibrated ceiling: calibrate again (`attnbench calibrate`, \
             on a quiet machine) before reading it as a result."
        );
    }
    out
}

fn always(_: &Section<'_>) -> bool {
    true
}

/// Some point has a roofline (the run had a calibration).
fn any_roofline(section: &Section<'_>) -> bool {
    section.points.iter().any(|p| p.step.roofline_pct.is_some())
}

/// The ideal time of `p`'s step with its phases in turn, ns, by the calibration its roofline
/// used ([`Machine::phases_ideal_ns`]).
fn phases_ideal_ns(section: &Section<'_>, p: &PointResult) -> Option<f64> {
    section.results.machine_of(p)?.phases_ideal_ns(p)
}

/// `step ideal / phases ideal`, percent: the most of the roofline `p`'s step can reach with
/// its phases in turn.
fn phases_reach_pct(section: &Section<'_>, p: &PointResult) -> Option<f64> {
    let phases = phases_ideal_ns(section, p).filter(|ns| *ns > 0.0)?;
    Some(100.0 * p.step.ideal_ns? / phases)
}

/// Some point's phases in turn keep its step below its roofline by at least half a percent:
/// below that the table would repeat the roofline's.
fn phases_bound(section: &Section<'_>) -> bool {
    section
        .points
        .iter()
        .any(|p| phases_reach_pct(section, p).is_some_and(|pct| pct < 99.5))
}

/// The step's median against its ideal with the phases in turn, percent.
fn phases_share_pct(section: &Section<'_>, p: &PointResult) -> Option<f64> {
    let ideal = phases_ideal_ns(section, p)?;
    Some(100.0 * ideal / p.step.median_ns?)
}

/// `step% / reach%`: the step's median against its ideal with the phases in turn, and the
/// most of the roofline that allows; a share above 100% keeps a decimal and is flagged, as
/// the roofline's are.
fn phases_cell(section: &Section<'_>, p: &PointResult) -> String {
    match (phases_share_pct(section, p), phases_reach_pct(section, p)) {
        (Some(share), Some(reach)) if share > 100.0 => {
            format!("{share:.1}% {ABOVE_CEILING} / {reach:.0}%")
        }
        (Some(share), Some(reach)) => format!("{share:.0}% / {reach:.0}%"),
        _ => String::new(),
    }
}

/// What [`ABOVE_CEILING`] means in the phases' table, when a cell has it.
fn phases_footer(section: &Section<'_>) -> String {
    let above = section
        .points
        .iter()
        .any(|p| phases_share_pct(section, p).is_some_and(|pct| pct > 100.0));
    if !above {
        return String::new();
    }
    format!(
        "{ABOVE_CEILING} faster than its ideal with the phases in turn: part of its bytes came \
         from the CPU caches (a run that does not evict them), or the calibration was slower \
         than the machine during the run."
    )
}

/// Some point recorded the bandwidth probed before it.
fn any_read_probe(section: &Section<'_>) -> bool {
    section.points.iter().any(|p| p.read_probe_gbps.is_some())
}

/// `probe (step% / core%)`: the probed GB/s, and the step's and the core's GB/s over it.
fn read_probe_cell(_: &Section<'_>, p: &PointResult) -> String {
    probe_cell(p, p.read_probe_gbps, |s| s.gbps)
}

/// Some point recorded the matmul rate probed before it.
fn any_matmul_probe(section: &Section<'_>) -> bool {
    section
        .points
        .iter()
        .any(|p| p.matmul_probe_gflops.is_some())
}

/// `probe (step% / core%)`: the probed GFLOP/s, and the step's and the core's GFLOP/s over it.
fn matmul_probe_cell(_: &Section<'_>, p: &PointResult) -> String {
    probe_cell(p, p.matmul_probe_gflops, |s| s.gflops)
}

/// `probe (step% / core%)`: a ceiling probed before `p`, and the rate of its step and of its
/// core (`rate` of each summary) as a share of it; empty without a probe.
fn probe_cell(p: &PointResult, probe: Option<f64>, rate: fn(&Summary) -> Option<f64>) -> String {
    let Some(probe) = probe.filter(|g| *g > 0.0) else {
        return String::new();
    };
    let pct = |s: &Summary| rate(s).map(|g| format!("{:.0}%", 100.0 * g / probe));
    match (pct(&p.step), pct(&p.core)) {
        (Some(step), Some(core)) => format!("{probe:.1} ({step} / {core})"),
        (Some(step), None) => format!("{probe:.1} ({step})"),
        _ => format!("{probe:.1}"),
    }
}

/// Some point has a baseline other than itself.
fn any_baseline(section: &Section<'_>) -> bool {
    let points = &section.points;
    points
        .iter()
        .any(|p| baseline(points, p).is_some_and(|b| b.key != p.key))
}

/// `median ± MAD`, or `error` for a failed point.
fn latency_cell(_: &Section<'_>, p: &PointResult) -> String {
    match (p.step.median_ns, p.step.mad_ns, &p.error) {
        (_, _, Some(_)) => "error".to_string(),
        (Some(m), Some(d), None) => format!("{} ± {}", fmt_ms(m), fmt_ms(d)),
        _ => String::new(),
    }
}

fn kv_cache_cell(_: &Section<'_>, p: &PointResult) -> String {
    p.kv_cache_bytes.map(fmt_mib).unwrap_or_default()
}

/// `core median (share%)`.
fn core_cell(_: &Section<'_>, p: &PointResult) -> String {
    match (p.core.median_ns, p.core_share_pct) {
        (Some(c), Some(share)) => format!("{} ({share:.0}%)", fmt_ms(c)),
        _ => String::new(),
    }
}

/// `step% / core%`, or the step's alone when the core has none; a figure above the calibrated
/// ceiling has a decimal and [`ABOVE_CEILING`], e.g. `88% / 102.6% ⚠`.
fn roofline_cell(_: &Section<'_>, p: &PointResult) -> String {
    // A flagged figure keeps a decimal: 100.4% must not read as a plain 100%.
    let pct = |s: &Summary| {
        s.roofline_pct.map(|pct| match s.above_ceiling() {
            true => format!("{pct:.1}% {ABOVE_CEILING}"),
            false => format!("{pct:.0}%"),
        })
    };
    match (pct(&p.step), pct(&p.core)) {
        (Some(step), Some(core)) => format!("{step} / {core}"),
        (Some(step), None) => step,
        _ => String::new(),
    }
}

/// `speed-up× / KV ratio` against the point's baseline.
fn against_mha_cell(section: &Section<'_>, p: &PointResult) -> String {
    let Some(b) = baseline(&section.points, p) else {
        return String::new();
    };
    match (
        p.step.median_ns,
        p.kv_cache_bytes,
        b.step.median_ns,
        b.kv_cache_bytes,
    ) {
        (Some(m), Some(kv), Some(bm), Some(bkv)) => {
            format!("{:.2}× / {:.3}", bm / m, kv as f64 / bkv as f64)
        }
        _ => String::new(),
    }
}

/// The baseline of a point: MHA (or GQA with as many KV heads as query heads) at the same
/// setting, length and stored types, that did not fail.
fn baseline<'a>(points: &[&'a PointResult], p: &PointResult) -> Option<&'a PointResult> {
    points.iter().copied().find(|b| {
        let is_mha = b.variant == Variant::Mha
            || (b.variant == Variant::Gqa && b.n_kv_heads == Some(b.n_heads));
        is_mha
            && Setting::of(b) == Setting::of(p)
            && Stored::of(b) == Stored::of(p)
            && b.length() == p.length()
            && b.error.is_none()
    })
}

/// The first cells of a point's row: its label, then its stored types when the set shows
/// them.
pub(super) fn row_head(varies: &Varies, stored: bool, p: &PointResult) -> Vec<String> {
    let mut head = vec![varies.label(p)];
    if stored {
        head.extend([p.kv_dtype.to_string(), p.weight_dtype.to_string()]);
    }
    head
}

/// The headers of [`row_head`]'s cells.
pub(super) fn row_head_header(stored: bool) -> Vec<String> {
    let names: &[&str] = if stored {
        &["variant", "kv", "weights"]
    } else {
        &["variant"]
    };
    names.iter().map(|n| n.to_string()).collect()
}

/// One table: a row per configuration, a column per length, `cell` for each point.
fn table(
    section: &Section<'_>,
    varies: &Varies,
    length_name: &str,
    cell: &dyn Fn(&PointResult) -> String,
) -> String {
    let points = &section.points;
    let lengths: BTreeSet<usize> = points.iter().map(|p| p.length()).collect();
    let mut rows: BTreeMap<RowKey, (Vec<String>, BTreeMap<usize, String>)> = BTreeMap::new();
    for p in points {
        let entry = rows
            .entry(RowKey::of(p))
            .or_insert_with(|| (row_head(varies, section.stored, p), BTreeMap::new()));
        entry.1.insert(p.length(), cell(p));
    }
    let mut builder = Builder::default();
    let mut header = row_head_header(section.stored);
    header.extend(lengths.iter().map(|l| format!("{length_name} {l}")));
    builder.push_record(header);
    for (head, cells) in rows.values() {
        let mut record = head.clone();
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

/// The sentences on the ceilings probed around the run (`environment.matmul_probe_gflops`
/// and `read_probe_gbps`) against calibration `m`'s, e.g. `Read bandwidth probed ...: 2
/// thread(s): 37.7 and 38.1 GB/s (61% and 62% of the calibration's)`; `None` when the run
/// recorded no probe.
pub(super) fn run_probes(env: &Environment, m: &Machine) -> Option<String> {
    let sentences: Vec<String> = [
        (
            "Matmul rate",
            "best product",
            "GFLOP/s",
            &env.matmul_probe_gflops,
            &m.matmul_gflops,
        ),
        (
            "Read bandwidth",
            "best pattern",
            "GB/s",
            &env.read_probe_gbps,
            &m.read_gbps,
        ),
    ]
    .into_iter()
    .filter_map(|(what, pattern, unit, probes, calibrated)| {
        let probes = probes.as_ref().filter(|p| !p.is_empty())?;
        let per_thread: Vec<String> = probes
            .iter()
            .map(|(t, p)| {
                let of = |rate: f64| match calibrated.get(t) {
                    Some(&c) if c > 0.0 => format!("{:.0}%", 100.0 * rate / c),
                    _ => "?%".to_string(),
                };
                format!(
                    "{t} thread(s): {:.1} and {:.1} {unit} ({} and {})",
                    p.start,
                    p.end,
                    of(p.start),
                    of(p.end)
                )
            })
            .collect();
        Some(format!(
            "{what} probed at the start and at the end of the run, by the calibration's \
             {pattern} (percent of the calibration's, which the roofline columns divide by): {}.",
            per_thread.join("; ")
        ))
    })
    .collect();
    (!sentences.is_empty()).then(|| sentences.join(" "))
}

/// All tables of `results`, as Markdown: the header, each mode's tables, the links to
/// `charts` (the results' [`plan`](super::charts::plan)), the failed points and the skipped
/// combinations.
pub(super) fn markdown(results: &ResultsFile, charts: &[ChartSpec]) -> String {
    let mut out = header(results);
    let stored = shows_stored_types(&results.points);
    let groups = results.machine_groups();
    // Ratios between points of different machines mean nothing: each machine gets its own
    // sections, so every table (and every speed-up in it) stays within one machine.
    let several = groups.len() > 1;
    for (i, (_, group)) in groups.iter().enumerate() {
        for mode in MODES {
            let points: Vec<&PointResult> =
                group.iter().copied().filter(|p| p.mode == mode).collect();
            if points.is_empty() {
                continue;
            }
            let title = match several {
                true => format!("{mode} on machine {}", i + 1),
                false => mode.to_string(),
            };
            let section = Section {
                points,
                results,
                stored,
            };
            write_mode(&mut out, &title, mode, &section);
        }
    }
    if stored {
        accuracy::write_table(&mut out, &results.points);
    }
    write_charts(&mut out, charts);
    write_failed(&mut out, &results.points);
    write_skipped(&mut out, &results.skipped);
    out
}

/// The experiment's name and description, where and how it was measured, and the
/// calibration.
fn header(results: &ResultsFile) -> String {
    let env = &results.environment;
    let exp = &results.experiment;
    let mut out = String::new();
    let _ = writeln!(out, "# {}\n", exp.name);
    if !exp.description.is_empty() {
        let _ = writeln!(out, "{}\n", exp.description.trim());
    }
    let _ = writeln!(
        out,
        "Measured {}, attnbench {} at {}, {}. {}; latency is the median of the samples, ± the median absolute deviation; {}.\n",
        machines::measured(results),
        env.crate_version,
        env.git_revision,
        env.rustc,
        stored_types(&results.points),
        if exp.measure.flush_caches {
            "the CPU caches were evicted before every sample, so weights and KV cache come from memory"
        } else {
            "the CPU caches were not evicted between samples, so a layer that fits in them reads it faster than memory"
        }
    );
    if let Some(m) = &results.machine {
        let _ = writeln!(out, "Calibration ({}): {}.\n", m.environment.date, peaks(m));
        if let Some(probes) = run_probes(env, m) {
            let _ = writeln!(out, "{probes}\n");
        }
    }
    machines::write_runs(&mut out, results);
    out
}

/// What the header says of the types: `f32` for a set of f32 only, else which types the KV
/// cache and the weights were stored in.
fn stored_types(points: &[PointResult]) -> String {
    if !shows_stored_types(points) {
        return "f32".into();
    }
    let kv: Vec<&str> = KV_DTYPE_ORDER
        .iter()
        .filter(|&&d| points.iter().any(|p| p.kv_dtype == d))
        .map(|d| d.name())
        .collect();
    let weights: Vec<&str> = WeightDtype::ALL
        .iter()
        .filter(|&&w| points.iter().any(|p| p.weight_dtype == w))
        .map(|w| w.name())
        .collect();
    format!(
        "Arithmetic in f32; KV cache stored in {}, weights in {} (the `kv` and `weights` columns)",
        kv.join(", "),
        weights.join(", ")
    )
}

/// A mode's section, headed `title` (the mode, and its machine when there are several): what
/// its columns are, then each of [`TABLES`] it calls for.
fn write_mode(out: &mut String, title: &str, mode: Mode, section: &Section<'_>) {
    let points = &section.points;
    let varies = Varies::of(points, false);
    let length_name = length_name(mode);
    let what = match mode {
        Mode::Prefill => "new tokens per sequence",
        Mode::Decode => "tokens already in the cache",
    };
    let _ = writeln!(out, "## {title}\n");
    let _ = writeln!(out, "Columns: {length_name} = {what}.\n");
    for def in TABLES.iter().filter(|def| (def.shown)(section)) {
        let _ = writeln!(out, "### {title}: {}\n", def.heading);
        if let Some(note) = def.note {
            let _ = writeln!(out, "{note}\n");
        }
        let cell = |p: &PointResult| (def.cell)(section, p);
        let _ = writeln!(out, "{}\n", table(section, &varies, length_name, &cell));
        let footer = (def.footer)(section);
        if !footer.is_empty() {
            let _ = writeln!(out, "{footer}\n");
        }
    }
}

fn write_charts(out: &mut String, charts: &[ChartSpec]) {
    if charts.is_empty() {
        return;
    }
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

fn write_failed(out: &mut String, points: &[PointResult]) {
    let failed: Vec<(&str, &str)> = points
        .iter()
        .filter_map(|p| Some((p.key.as_str(), p.error.as_deref()?)))
        .collect();
    if failed.is_empty() {
        return;
    }
    let _ = writeln!(out, "## Failed points\n");
    for (key, error) in failed {
        let _ = writeln!(out, "- `{key}`: {error}");
    }
    out.push('\n');
}

fn write_skipped(out: &mut String, skipped: &[Skipped]) {
    if skipped.is_empty() {
        return;
    }
    let _ = writeln!(out, "## Skipped combinations\n");
    for s in skipped {
        let _ = writeln!(out, "- {}: {}", s.what, s.reason);
    }
    out.push('\n');
}
