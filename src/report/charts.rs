//! SVG charts of a results set, drawn with plotters' SVG backend. Which charts exist depends
//! only on the data ([`plan`]); each is a pure function of `results.json`, so the same file
//! gives the same bytes (no fonts are read: plotters' built-in text estimate lays out labels,
//! and the SVG names a generic font family).

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::coord::ranged1d::{Ranged, ValueFormatter};
use plotters::drawing::DrawingAreaErrorKind;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use thiserror::Error;

use super::rows::{
    KV_DTYPE_ORDER, MODES, RowKey, Varies, kv_dtype_rank, length_name, of_mode, shows_stored_types,
};
use crate::config::{MlaPath, Mode, Variant, WeightDtype};
use crate::results::{PointResult, ResultsDir, ResultsFile};

/// One chart a results set supports: its file name (in
/// [`ResultsDir::CHARTS_DIR`](crate::results::ResultsDir::CHARTS_DIR)) and title.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChartSpec {
    /// What it shows.
    kind: Kind,
    /// File name, e.g. `decode_latency.svg`.
    pub file: String,
    /// Title, also the alt text of its link in `results.md`.
    pub title: String,
}

impl ChartSpec {
    /// Its path relative to the results directory, e.g. `charts/decode_latency.svg`.
    pub fn path(&self) -> PathBuf {
        Path::new(ResultsDir::CHARTS_DIR).join(&self.file)
    }
}

/// Why plotters could not draw a chart. Each names the chart by its path relative to the
/// results directory (as [`ChartSpec::path`]); the words after the path are plotters' own.
#[derive(Debug, Error)]
pub enum ChartError {
    /// The SVG backend failed to draw an element, or to size a label's text.
    #[error("{}: cannot draw the chart", path.display())]
    Backend {
        /// The chart, e.g. `charts/decode_latency.svg`.
        path: PathBuf,
        /// plotters' complaint (its `BackendError`, holding the backend's own error).
        #[source]
        source: DrawingAreaErrorKind<io::Error>,
    },
    /// Two drawings held the canvas at once: a fault of the drawing code, not of the data.
    #[error(
        "{}: cannot draw the chart: Multiple backend operation in progress",
        path.display()
    )]
    Sharing {
        /// The chart.
        path: PathBuf,
    },
    /// A panel was laid out in an area that cannot hold it.
    #[error("{}: cannot draw the chart: Bad layout", path.display())]
    Layout {
        /// The chart.
        path: PathBuf,
    },
}

impl ChartError {
    /// Names the chart at `path` that plotters failed to draw with `cause`.
    fn new(path: PathBuf, cause: DrawingAreaErrorKind<io::Error>) -> Self {
        match cause {
            source @ DrawingAreaErrorKind::BackendError(_) => Self::Backend { path, source },
            DrawingAreaErrorKind::SharingError => Self::Sharing { path },
            DrawingAreaErrorKind::LayoutError => Self::Layout { path },
        }
    }
}

/// The charts there are, in the order `results.md` lists them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Step latency against length, a line per table row.
    Latency(Mode),
    /// Decode's KV-cache bytes against context, a line per table row.
    KvCache,
    /// % of the roofline, step and core, a bar per row and length.
    Roofline(Mode),
    /// MLA's two paths against length, a panel per mode that has both.
    MlaPaths,
    /// GQA's latency and KV-cache bytes against KV heads, a line per mode and length (and
    /// varying setting).
    KvHeads,
    /// Decode latency against the KV cache's stored type, a line per variant, at one context
    /// and weight type ([`KvDtypeSlice`]).
    KvDtypeLatency,
    /// Decode's KV-cache bytes against the cache's stored type, as [`KvDtypeLatency`](Kind::KvDtypeLatency).
    KvDtypeMemory,
}

impl Kind {
    const ALL: [Kind; 9] = [
        Kind::Latency(Mode::Prefill),
        Kind::Latency(Mode::Decode),
        Kind::KvCache,
        Kind::Roofline(Mode::Prefill),
        Kind::Roofline(Mode::Decode),
        Kind::MlaPaths,
        Kind::KvHeads,
        Kind::KvDtypeLatency,
        Kind::KvDtypeMemory,
    ];

    /// The file name without its extension.
    fn stem(self) -> String {
        match self {
            Kind::Latency(mode) => format!("{mode}_latency"),
            Kind::KvCache => "kv_cache".into(),
            Kind::Roofline(mode) => format!("roofline_{mode}"),
            Kind::MlaPaths => "mla_paths".into(),
            Kind::KvHeads => "kv_heads".into(),
            Kind::KvDtypeLatency => "decode_latency_by_kv_dtype".into(),
            Kind::KvDtypeMemory => "kv_cache_by_kv_dtype".into(),
        }
    }

    /// The title; the charts against `kv_dtype` name the context and weights they show.
    fn title(self, results: &ResultsFile) -> String {
        let slice = || {
            kv_dtype_slice(results).map_or_else(String::new, |s| {
                format!(" at context {} ({} weights)", s.context, s.weight_dtype)
            })
        };
        match self {
            Kind::KvDtypeLatency => format!("decode latency against kv_dtype{}", slice()),
            Kind::KvDtypeMemory => format!("KV-cache memory against kv_dtype{}", slice()),
            Kind::Latency(Mode::Prefill) => "prefill latency against prefill length".into(),
            Kind::Latency(Mode::Decode) => "decode latency against context".into(),
            Kind::KvCache => "KV-cache memory against context".into(),
            Kind::Roofline(mode) => {
                format!("{mode}: % of this machine's roofline, step and attention core")
            }
            Kind::MlaPaths => "MLA naive against absorbed".into(),
            Kind::KvHeads => "GQA: latency and KV-cache memory against KV heads".into(),
        }
    }

    /// Whether `results` holds what the chart draws: a line needs two lengths (two KV-head
    /// counts for [`KvHeads`](Kind::KvHeads)), a bar a roofline.
    fn has_data(self, results: &ResultsFile) -> bool {
        let spans_lengths = |points: &[&PointResult]| distinct(points, PointResult::length) > 1;
        match self {
            Kind::Latency(mode) => spans_lengths(&measured_of(results, mode)),
            Kind::KvCache => {
                let decode = measured_of(results, Mode::Decode);
                spans_lengths(&decode) && decode.iter().any(|p| p.kv_cache_bytes.is_some())
            }
            Kind::Roofline(mode) => measured_of(results, mode)
                .iter()
                .any(|p| p.step.roofline_pct.is_some()),
            Kind::MlaPaths => MODES.iter().any(|&m| !mla_points(results, m).is_empty()),
            Kind::KvHeads => MODES
                .iter()
                .any(|&m| !kv_head_points(results, m).is_empty()),
            Kind::KvDtypeLatency | Kind::KvDtypeMemory => kv_dtype_slice(results).is_some(),
        }
    }
}

/// A point with a timing (failed points are in the tables, not in the charts).
fn measured(p: &PointResult) -> bool {
    p.error.is_none() && p.step.median_ns.is_some()
}

fn distinct<T: Ord>(points: &[&PointResult], f: impl Fn(&PointResult) -> T) -> usize {
    points.iter().map(|p| f(p)).collect::<BTreeSet<_>>().len()
}

/// The measured points of `mode`.
fn measured_of(results: &ResultsFile, mode: Mode) -> Vec<&PointResult> {
    of_mode(&results.points, mode)
        .into_iter()
        .filter(|p| measured(p))
        .collect()
}

/// MLA's points of `mode`, when both paths were measured and the points span two lengths or
/// more.
fn mla_points(results: &ResultsFile, mode: Mode) -> Vec<&PointResult> {
    let points: Vec<&PointResult> = measured_of(results, mode)
        .into_iter()
        .filter(|p| p.variant == Variant::Mla)
        .collect();
    let both = MlaPath::ALL
        .iter()
        .all(|&path| points.iter().any(|p| p.mla_path == Some(path)));
    if both && distinct(&points, PointResult::length) > 1 {
        points
    } else {
        Vec::new()
    }
}

/// GQA's points of `mode`, when two KV-head counts or more were measured.
fn kv_head_points(results: &ResultsFile, mode: Mode) -> Vec<&PointResult> {
    let points: Vec<&PointResult> = measured_of(results, mode)
        .into_iter()
        .filter(|p| p.variant == Variant::Gqa)
        .collect();
    if distinct(&points, |p| p.n_kv_heads) > 1 {
        points
    } else {
        Vec::new()
    }
}

/// Decode points of one context and one weight type, over two KV-cache types or more: what
/// the charts against `kv_dtype` draw.
struct KvDtypeSlice<'a> {
    /// The longest context where every variant has every KV-cache type of the set (failing
    /// that, the one with the most points, the longest of those).
    context: usize,
    /// f32 when some point has f32 weights, else the first type there is.
    weight_dtype: WeightDtype,
    /// The measured decode points at that context and weight type.
    points: Vec<&'a PointResult>,
}

/// The slice the charts against `kv_dtype` draw, when `results` has one with two KV-cache
/// types or more.
fn kv_dtype_slice(results: &ResultsFile) -> Option<KvDtypeSlice<'_>> {
    let decode = measured_of(results, Mode::Decode);
    let weight_dtype = if decode.iter().any(|p| p.weight_dtype == WeightDtype::F32) {
        WeightDtype::F32
    } else {
        decode.iter().map(|p| p.weight_dtype).min()?
    };
    let decode: Vec<&PointResult> = decode
        .into_iter()
        .filter(|p| p.weight_dtype == weight_dtype)
        .collect();
    // The context with the most points (a point per variant and KV-cache type), the
    // longest of those: the longest where every variant has every type, when there is one.
    let mut counts: BTreeMap<usize, usize> = BTreeMap::new();
    for p in &decode {
        *counts.entry(p.context).or_default() += 1;
    }
    let context = counts
        .into_iter()
        .max_by_key(|&(context, count)| (count, context))?
        .0;
    let points: Vec<&PointResult> = decode
        .into_iter()
        .filter(|p| p.context == context)
        .collect();
    (distinct(&points, |p| p.kv_dtype) > 1).then_some(KvDtypeSlice {
        context,
        weight_dtype,
        points,
    })
}

/// The charts `results` has data for, in the order `results.md` shows them. The report
/// computes this once per results set and hands it to the tables, the charts and the index.
pub fn plan(results: &ResultsFile) -> Vec<ChartSpec> {
    Kind::ALL
        .into_iter()
        .filter(|kind| kind.has_data(results))
        .map(|kind| ChartSpec {
            kind,
            file: format!("{}.{}", kind.stem(), ResultsDir::CHART_EXTENSION),
            title: kind.title(results),
        })
        .collect()
}

/// Draws `spec`'s chart of `results` as SVG text.
pub fn render(spec: &ChartSpec, results: &ResultsFile) -> Result<String, ChartError> {
    let title = format!("{}: {}", results.experiment.name, spec.title);
    let drawn = match spec.kind {
        Kind::Latency(mode) => line_chart(&title, &[latency_panel(results, mode)]),
        Kind::KvCache => line_chart(&title, &[kv_cache_panel(results)]),
        Kind::MlaPaths => line_chart(&title, &mla_path_panels(results)),
        Kind::KvHeads => line_chart(&title, &kv_head_panels(results)),
        Kind::Roofline(mode) => roofline_chart(
            &title,
            &measured_of(results, mode),
            shows_stored_types(&results.points),
        ),
        Kind::KvDtypeLatency => line_chart(&title, &[kv_dtype_panel(results, KV_LATENCY)]),
        Kind::KvDtypeMemory => line_chart(&title, &[kv_dtype_panel(results, KV_MEMORY)]),
    };
    drawn.map_err(|cause| ChartError::new(spec.path(), cause))
}

/// A point's step latency, ms (median).
fn latency_ms(p: &PointResult) -> Option<f64> {
    p.step.median_ns.map(|ns| ns / 1e6)
}

/// A point's KV cache, MiB (measured).
fn kv_cache_mib(p: &PointResult) -> Option<f64> {
    p.kv_cache_bytes
        .map(|bytes| bytes as f64 / (1u64 << 20) as f64)
}

/// What a panel's y axis shows: its description and a point's value.
type Quantity = (&'static str, fn(&PointResult) -> Option<f64>);

const KV_LATENCY: Quantity = ("latency, ms (median)", latency_ms);
const KV_MEMORY: Quantity = ("KV cache, MiB (measured from the allocation)", kv_cache_mib);

fn latency_panel(results: &ResultsFile, mode: Mode) -> Panel {
    Panel {
        title: String::new(),
        x: XAxis::Log(length_desc(mode)),
        y_desc: "latency, ms (median)",
        series: by_row(&measured_of(results, mode), stored_in(results), latency_ms),
    }
}

fn kv_cache_panel(results: &ResultsFile) -> Panel {
    Panel {
        title: String::new(),
        x: XAxis::Log(length_desc(Mode::Decode)),
        y_desc: "KV cache, MiB (measured from the allocation)",
        series: by_row(
            &measured_of(results, Mode::Decode),
            stored_in(results),
            kv_cache_mib,
        ),
    }
}

/// Whether the labels of `results`' charts name the stored types.
fn stored_in(results: &ResultsFile) -> bool {
    shows_stored_types(&results.points)
}

/// `quantity` against the KV cache's type, a line per variant, over [`kv_dtype_slice`].
fn kv_dtype_panel(results: &ResultsFile, (y_desc, value): Quantity) -> Panel {
    let points = kv_dtype_slice(results).map_or_else(Vec::new, |s| s.points);
    let varies = Varies::of(&points, false);
    let mut lines: BTreeMap<RowKey, Series> = BTreeMap::new();
    for p in &points {
        if let Some(v) = value(p) {
            lines
                .entry(RowKey::ignoring_stored(p))
                .or_insert_with(|| Series {
                    label: varies.label(p),
                    points: Vec::new(),
                })
                .points
                .push((kv_dtype_rank(p.kv_dtype) as f64, v));
        }
    }
    Panel {
        title: String::new(),
        x: XAxis::Categories("kv_dtype, the KV cache's stored type"),
        y_desc,
        series: finish(lines.into_values()),
    }
}

/// A latency panel per mode where MLA ran both paths.
fn mla_path_panels(results: &ResultsFile) -> Vec<Panel> {
    MODES
        .into_iter()
        .filter_map(|mode| {
            let points = mla_points(results, mode);
            (!points.is_empty()).then(|| Panel {
                title: format!("{mode}"),
                x: XAxis::Log(length_desc(mode)),
                y_desc: "latency, ms (median)",
                series: by_row(&points, stored_in(results), latency_ms),
            })
        })
        .collect()
}

/// Latency and KV cache against KV heads, each with a line per mode and length.
fn kv_head_panels(results: &ResultsFile) -> [Panel; 2] {
    [
        ("latency", "latency, ms (median)", latency_ms as fn(&_) -> _),
        ("KV cache", "KV cache, MiB (measured)", kv_cache_mib),
    ]
    .map(|(panel_title, y_desc, value)| Panel {
        title: panel_title.to_string(),
        x: XAxis::Log("KV heads (n_kv_heads)"),
        y_desc,
        series: MODES
            .into_iter()
            .flat_map(|mode| by_length(&kv_head_points(results, mode), stored_in(results), value))
            .collect(),
    })
}

fn length_desc(mode: Mode) -> &'static str {
    match mode {
        Mode::Prefill => "seq_len, new tokens per sequence",
        Mode::Decode => "context, tokens already in the cache",
    }
}

/// One line of a chart: a label and its (x, y) points, x ascending.
struct Series {
    label: String,
    points: Vec<(f64, f64)>,
}

/// One series per table row (labelled as the tables label it, and by its stored types when
/// `stored`), x the point's length.
fn by_row(
    points: &[&PointResult],
    stored: bool,
    value: impl Fn(&PointResult) -> Option<f64>,
) -> Vec<Series> {
    let varies = Varies::of(points, stored);
    let mut rows: BTreeMap<RowKey, Series> = BTreeMap::new();
    for p in points {
        if let Some(v) = value(p) {
            rows.entry(RowKey::of(p))
                .or_insert_with(|| Series {
                    label: varies.label(p),
                    points: Vec::new(),
                })
                .points
                .push((p.length() as f64, v));
        }
    }
    finish(rows.into_values())
}

/// One series per length (and varying setting) of one mode, x the point's KV heads: the
/// KV-head sweep. Labelled by the mode and the tables' column header, e.g. `decode ctx 2048`
/// (and the stored types when `stored`).
fn by_length(
    points: &[&PointResult],
    stored: bool,
    value: fn(&PointResult) -> Option<f64>,
) -> Vec<Series> {
    let varies = Varies::of(points, stored);
    let mut lines: BTreeMap<(String, usize), Series> = BTreeMap::new();
    for p in points {
        if let (Some(kv), Some(v)) = (p.n_kv_heads, value(p)) {
            let setting = varies.setting_label(p);
            lines
                .entry((setting.clone(), p.length()))
                .or_insert_with(|| Series {
                    label: format!("{} {} {}{setting}", p.mode, length_name(p.mode), p.length()),
                    points: Vec::new(),
                })
                .points
                .push((kv as f64, v));
        }
    }
    finish(lines.into_values())
}

fn finish(series: impl Iterator<Item = Series>) -> Vec<Series> {
    series
        .map(|mut s| {
            s.points.sort_by(|a, b| a.0.total_cmp(&b.0));
            s
        })
        .collect()
}

/// What a line panel's x axis is.
#[derive(Clone, Copy)]
enum XAxis {
    /// Lengths or head counts on a log scale, described by the text.
    Log(&'static str),
    /// The KV-cache types of [`KV_DTYPE_ORDER`], evenly spaced (x is the type's place in
    /// it), described by the text.
    Categories(&'static str),
}

/// One panel of a line chart, y on a log scale.
struct Panel {
    title: String,
    x: XAxis,
    y_desc: &'static str,
    series: Vec<Series>,
}

/// Tableau's ten colours: distinguishable, and readable on white.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// The colour of series `i`; past ten, the colours repeat with another marker.
fn colour(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

const FONT: &str = "sans-serif";
const PANEL_W: u32 = 560;
const PANEL_H: u32 = 420;
const TITLE_H: u32 = 36;
/// Width per character of legend text (plotters' estimate for 14 px text is about 6.4 px).
const LEGEND_CHAR_W: u32 = 8;

/// What plotters' drawing calls on the SVG backend return.
type DrawResult<T> = Result<T, DrawingAreaErrorKind<io::Error>>;

/// The SVG text `draw` writes.
fn to_string(draw: impl FnOnce(&mut String) -> DrawResult<()>) -> DrawResult<String> {
    let mut svg = String::new();
    draw(&mut svg)?;
    Ok(svg)
}

/// A title across the top and a legend down the right of `root`; returns the area left for
/// the panels.
fn frame<'a>(
    root: &DrawingArea<SVGBackend<'a>, Shift>,
    title: &str,
    legend: &[(String, RGBColor, usize)],
    legend_w: u32,
    bars: bool,
) -> DrawResult<DrawingArea<SVGBackend<'a>, Shift>> {
    root.fill(&WHITE)?;
    let (w, _) = root.dim_in_pixel();
    let (top, body) = root.split_vertically(TITLE_H);
    top.draw(&Text::new(
        title.to_string(),
        (12, 10),
        (FONT, 18).into_font().color(&BLACK),
    ))?;
    let (panels, side) = body.split_horizontally(w - legend_w);
    for (row, (label, colour, marker)) in legend.iter().enumerate() {
        let y = 40 + 22 * row as i32;
        if bars {
            side.draw(&Rectangle::new([(8, y - 6), (24, y + 6)], colour.filled()))?;
        } else {
            side.draw(&PathElement::new(
                vec![(4, y), (28, y)],
                colour.stroke_width(2),
            ))?;
            side.draw(&marker_at((16, y), *colour, *marker))?;
        }
        side.draw(&Text::new(
            label.clone(),
            (34, y - 7),
            (FONT, 14).into_font().color(&BLACK),
        ))?;
    }
    Ok(panels)
}

/// The marker of series `index`: a filled circle for the first ten series (one per colour),
/// a filled triangle for the next ten, an × (two diagonal strokes) for the ten after, then
/// circles again.
fn marker_at<DB: DrawingBackend, C>(
    at: C,
    colour: RGBColor,
    index: usize,
) -> DynElement<'static, DB, C>
where
    C: Clone + 'static,
{
    let style = colour.filled();
    match (index / PALETTE.len()) % 3 {
        0 => Circle::new(at, 4, style).into_dyn(),
        1 => TriangleMarker::new(at, 5, style).into_dyn(),
        _ => Cross::new(at, 4, colour.stroke_width(2)).into_dyn(),
    }
}

fn legend_width(labels: impl Iterator<Item = usize>) -> u32 {
    let chars = labels.max().unwrap_or(0) as u32;
    48 + LEGEND_CHAR_W * chars
}

/// Panels side by side, log-log, one shared legend (a label keeps its colour in every panel).
fn line_chart(title: &str, panels: &[Panel]) -> DrawResult<String> {
    let mut labels: Vec<String> = Vec::new();
    for s in panels.iter().flat_map(|p| &p.series) {
        if !labels.contains(&s.label) {
            labels.push(s.label.clone());
        }
    }
    let legend: Vec<(String, RGBColor, usize)> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (l.clone(), colour(i), i))
        .collect();
    let legend_w = legend_width(labels.iter().map(|l| l.chars().count()));
    let size = (
        PANEL_W * panels.len() as u32 + legend_w,
        (PANEL_H + TITLE_H).max(60 + 22 * labels.len() as u32),
    );
    to_string(|svg| {
        let root = SVGBackend::with_string(svg, size).into_drawing_area();
        let body = frame(&root, title, &legend, legend_w, false)?;
        for (area, panel) in body.split_evenly((1, panels.len())).iter().zip(panels) {
            draw_panel(area, panel, &labels)?;
        }
        root.present()?;
        Ok(())
    })
}

/// The lowest and highest positive value, widened a little so that markers are not cut.
fn log_range(values: impl Iterator<Item = f64>, widen: f64) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite() && *v > 0.0)
        .fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if !lo.is_finite() {
        return (1.0, 10.0);
    }
    (lo / widen, hi * widen)
}

/// Ticks at 1, 2 and 5 times the powers of ten within `lo..=hi` (more steps when that gives
/// fewer than four).
fn decade_ticks(lo: f64, hi: f64) -> Vec<(f64, String)> {
    let ticks = |mantissas: &[f64]| {
        let mut ticks = Vec::new();
        for exponent in lo.log10().floor() as i32..=hi.log10().ceil() as i32 {
            for &mantissa in mantissas {
                let v = mantissa * 10f64.powi(exponent);
                if v >= lo && v <= hi {
                    ticks.push((v, tick_label(v)));
                }
            }
        }
        ticks
    };
    let coarse = ticks(&[1.0, 2.0, 5.0]);
    if coarse.len() >= 4 {
        return coarse;
    }
    ticks(&[1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0])
}

/// A tick value with the decimals it needs and no more: `0.05`, `1.5`, `200`.
fn tick_label(v: f64) -> String {
    let text = format!("{v:.6}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// A line panel's y axis (log): its range and ticks, from every value of its series.
struct LogY {
    range: Range<f64>,
    ticks: Vec<(f64, String)>,
}

impl LogY {
    fn of(panel: &Panel) -> Self {
        let (lo, hi) = log_range(
            panel
                .series
                .iter()
                .flat_map(|s| s.points.iter().map(|p| p.1)),
            1.25,
        );
        Self {
            range: lo..hi,
            ticks: decade_ticks(lo, hi),
        }
    }
}

/// Draws `panel` in `area`: its x axis as [`XAxis`] says, y on a log scale.
fn draw_panel(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    panel: &Panel,
    labels: &[String],
) -> DrawResult<()> {
    let y = LogY::of(panel);
    let y_coord = y
        .range
        .clone()
        .log_scale()
        .with_key_points(y.ticks.iter().map(|t| t.0).collect());
    let mut builder = ChartBuilder::on(area);
    builder
        .caption(&panel.title, (FONT, 16))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(64);
    match panel.x {
        XAxis::Log(x_desc) => {
            // Distinct lengths (or KV heads): whole numbers, each labelled.
            let xs: BTreeSet<u64> = panel
                .series
                .iter()
                .flat_map(|s| s.points.iter().map(|p| p.0 as u64))
                .collect();
            let xs: Vec<f64> = xs.into_iter().map(|x| x as f64).collect();
            let (x_lo, x_hi) = log_range(xs.iter().copied(), 1.15);
            let x_coord = (x_lo..x_hi).log_scale().with_key_points(xs);
            let mut chart = builder.build_cartesian_2d(x_coord, y_coord)?;
            let label = |x: &f64| format!("{}", x.round() as u64);
            let x = XLabels {
                desc: x_desc,
                label: &label,
                count: None,
            };
            draw_lines(&mut chart, panel, labels, x, &y.ticks)
        }
        XAxis::Categories(x_desc) => {
            let places = KV_DTYPE_ORDER.len();
            let mut chart = builder.build_cartesian_2d(-0.5..places as f64 - 0.5, y_coord)?;
            // One label per place: plotters' nice steps over a span of `places` with at most
            // `places` labels are the whole numbers; anything between is left blank.
            let label = |x: &f64| match KV_DTYPE_ORDER.get(x.round() as usize) {
                Some(d) if (x - x.round()).abs() < 1e-9 => d.to_string(),
                _ => String::new(),
            };
            let x = XLabels {
                desc: x_desc,
                label: &label,
                count: Some(places),
            };
            draw_lines(&mut chart, panel, labels, x, &y.ticks)
        }
    }
}

/// How a panel's x axis is described and labelled.
struct XLabels<'a> {
    desc: &'a str,
    label: &'a dyn Fn(&f64) -> String,
    /// At most this many labels, when not plotters' default.
    count: Option<usize>,
}

/// The mesh, then `panel`'s lines and markers, each in its label's colour in `labels`. The x
/// axis is described and labelled by `x`; y is labelled at `y_ticks`.
fn draw_lines<X, Y>(
    chart: &mut ChartContext<'_, SVGBackend<'_>, Cartesian2d<X, Y>>,
    panel: &Panel,
    labels: &[String],
    x: XLabels<'_>,
    y_ticks: &[(f64, String)],
) -> DrawResult<()>
where
    X: Ranged<ValueType = f64> + ValueFormatter<f64>,
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let mut mesh = chart.configure_mesh();
    if let Some(count) = x.count {
        mesh.x_labels(count);
    }
    mesh.x_desc(x.desc)
        .y_desc(panel.y_desc)
        .x_label_formatter(x.label)
        .y_label_formatter(&|y| {
            y_ticks
                .iter()
                .find(|t| t.0 == *y)
                .map(|t| t.1.clone())
                .unwrap_or_default()
        })
        .label_style((FONT, 12))
        .axis_desc_style((FONT, 13))
        .light_line_style(WHITE)
        .bold_line_style(RGBColor(225, 225, 225))
        .draw()?;
    for series in &panel.series {
        let index = labels.iter().position(|l| *l == series.label).unwrap_or(0);
        let c = colour(index);
        chart.draw_series(LineSeries::new(
            series.points.iter().copied(),
            c.stroke_width(2),
        ))?;
        chart.draw_series(series.points.iter().map(|&p| marker_at(p, c, index)))?;
    }
    Ok(())
}

/// One bar of a roofline panel: its group (table row), its length's index, its % of the
/// roofline.
type Bar = (usize, usize, f64);

/// The bars of a roofline chart: a group per table row, in table order, a bar per length.
struct BarGroups {
    /// The rows' labels, as the tables label them.
    labels: Vec<String>,
    /// The lengths, ascending; a bar takes its length's colour.
    lengths: Vec<usize>,
    /// The step's bars.
    step: Vec<Bar>,
    /// The attention core's bars.
    core: Vec<Bar>,
}

impl BarGroups {
    /// The bars of `points`, their rows labelled by their stored types too when `stored`.
    fn of(points: &[&PointResult], stored: bool) -> Self {
        let varies = Varies::of(points, stored);
        let mut rows: BTreeMap<RowKey, String> = BTreeMap::new();
        for p in points {
            rows.entry(RowKey::of(p)).or_insert_with(|| varies.label(p));
        }
        let lengths: Vec<usize> = points
            .iter()
            .map(|p| p.length())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let row_keys: Vec<&RowKey> = rows.keys().collect();
        let bars = |value: fn(&PointResult) -> Option<f64>| -> Vec<Bar> {
            points
                .iter()
                .filter_map(|p| {
                    let row = row_keys.iter().position(|k| **k == RowKey::of(p))?;
                    let length = lengths.iter().position(|&l| l == p.length())?;
                    Some((row, length, value(p)?))
                })
                .collect()
        };
        let (step, core) = (bars(|p| p.step.roofline_pct), bars(|p| p.core.roofline_pct));
        Self {
            labels: rows.into_values().collect(),
            lengths,
            step,
            core,
        }
    }

    /// Vertical slots: one per bar, and one empty slot between groups.
    fn slots(&self) -> usize {
        self.labels.len() * (self.lengths.len() + 1)
    }

    /// The top of the bar of `row` and `length` (index), in slots from the bottom.
    fn top(&self, row: usize, length: usize) -> f64 {
        (self.slots() - row * (self.lengths.len() + 1) - length) as f64
    }
}

/// Horizontal bars, one group per table row, one bar per length, for the step (left) and the
/// attention core alone (right).
fn roofline_chart(title: &str, points: &[&PointResult], stored: bool) -> DrawResult<String> {
    let groups = BarGroups::of(points, stored);
    let mode = points.first().map_or(Mode::Decode, |p| p.mode);
    let legend: Vec<(String, RGBColor, usize)> = groups
        .lengths
        .iter()
        .enumerate()
        .map(|(i, l)| (format!("{} {l}", length_name(mode)), colour(i), i))
        .collect();
    let legend_w = legend_width(legend.iter().map(|l| l.0.chars().count()));
    let label_w = 16
        + 7 * groups
            .labels
            .iter()
            .map(|l| l.chars().count())
            .max()
            .unwrap_or(0) as u32;
    let size = (
        2 * (PANEL_W + label_w) + legend_w,
        TITLE_H + 110 + 12 * groups.slots() as u32,
    );
    let panels = [
        ("step", &groups.step),
        ("attention core alone", &groups.core),
    ];
    to_string(|svg| {
        let root = SVGBackend::with_string(svg, size).into_drawing_area();
        let body = frame(&root, title, &legend, legend_w, true)?;
        for (area, (panel_title, bars)) in body.split_evenly((1, 2)).iter().zip(panels) {
            let panel = BarPanel {
                title: panel_title,
                bars,
                label_w,
            };
            draw_bar_panel(&root, area, &panel, &groups)?;
        }
        root.present()?;
        Ok(())
    })
}

/// One panel of a roofline chart.
struct BarPanel<'a> {
    title: &'a str,
    bars: &'a [Bar],
    /// Width left of the axis for the row labels, px.
    label_w: u32,
}

/// Draws `panel` in `area`; the row labels go on `root`, right-aligned against the axis.
fn draw_bar_panel(
    root: &DrawingArea<SVGBackend<'_>, Shift>,
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    panel: &BarPanel<'_>,
    groups: &BarGroups,
) -> DrawResult<()> {
    let slots = groups.slots();
    let x_hi = panel.bars.iter().fold(0.0f64, |m, b| m.max(b.2)).max(1.0) * 1.12;
    let mut chart = ChartBuilder::on(area)
        .caption(panel.title, (FONT, 16))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(panel.label_w)
        .build_cartesian_2d(0.0..x_hi, 0.0..slots as f64)?;
    chart
        .configure_mesh()
        .x_desc("% of the roofline (ideal time / median)")
        .disable_y_mesh()
        .y_labels(0)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .label_style((FONT, 12))
        .axis_desc_style((FONT, 13))
        .light_line_style(WHITE)
        .bold_line_style(RGBColor(225, 225, 225))
        .draw()?;
    chart.draw_series(panel.bars.iter().map(|&(row, length, pct)| {
        let y = groups.top(row, length);
        Rectangle::new([(0.0, y - 0.1), (pct, y - 0.9)], colour(length).filled())
    }))?;
    // The machine's limit, where it is in view.
    if x_hi > 100.0 {
        chart.draw_series(LineSeries::new(
            [(100.0, 0.0), (100.0, slots as f64)],
            BLACK.mix(0.6).stroke_width(1),
        ))?;
    }
    for (row, label) in groups.labels.iter().enumerate() {
        let centre = groups.top(row, 0) - groups.lengths.len() as f64 / 2.0;
        let (x, y) = chart.backend_coord(&(0.0, centre));
        root.draw(&Text::new(
            label.clone(),
            (x - 8, y),
            (FONT, 12)
                .into_font()
                .color(&BLACK)
                .pos(Pos::new(HPos::Right, VPos::Center)),
        ))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SVG of one marker of series `index`.
    fn marker_svg(index: usize) -> String {
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, (40, 40)).into_drawing_area();
            root.draw(&marker_at((20, 20), colour(index), index))
                .unwrap();
            root.present().unwrap();
        }
        svg
    }

    #[test]
    fn markers_are_circles_then_triangles_then_crosses() {
        let shapes = |svg: &str| {
            ["<circle", "<polygon", "<line"].map(|element| svg.matches(element).count())
        };
        assert_eq!(shapes(&marker_svg(0)), [1, 0, 0]);
        assert_eq!(shapes(&marker_svg(9)), [1, 0, 0]);
        assert_eq!(shapes(&marker_svg(10)), [0, 1, 0]);
        // A cross is two diagonal strokes: an ×, not a +.
        let cross = marker_svg(20);
        assert_eq!(shapes(&cross), [0, 0, 2]);
        assert!(
            cross.contains(r#"x1="16" y1="16" x2="24" y2="24""#),
            "{cross}"
        );
        assert!(
            cross.contains(r#"x1="16" y1="24" x2="24" y2="16""#),
            "{cross}"
        );
        assert_eq!(shapes(&marker_svg(30)), [1, 0, 0]);
    }

    #[test]
    fn chart_errors_name_the_chart_and_the_cause() {
        let path = || PathBuf::from("charts/kv_cache.svg");
        let layout = ChartError::new(path(), DrawingAreaErrorKind::LayoutError);
        assert_eq!(
            layout.to_string(),
            "charts/kv_cache.svg: cannot draw the chart: Bad layout"
        );
        let sharing = ChartError::new(path(), DrawingAreaErrorKind::SharingError);
        assert!(
            matches!(sharing, ChartError::Sharing { path } if path == Path::new("charts/kv_cache.svg"))
        );
    }
}
