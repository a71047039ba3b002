//! Comparing two result sets (`attnbench compare A B`): points matched by configuration, the
//! ratio of medians per point, and a verdict that accounts for each side's noise.
//!
//! The statistics: each side's step time is summarised by its median `m`, its median absolute
//! deviation `MAD` and its sample count `n`. `1.4826 · MAD` estimates the standard deviation σ
//! (exact for normal samples, robust to the outliers a shared machine adds), and the median's
//! standard error is about `1.2533 · σ / √n`. On the log scale the relative standard errors
//! of the two medians combine as `s = √(se_A² + se_B²)`, with `se = 1.2533 · 1.4826 · MAD /
//! (m · √n)`. The change `d = ln(m_B / m_A)` is called *slower* (or *faster*) only when `|d|`
//! is beyond both `noise_k · s` and `ln(1 + min_change_pct / 100)`; otherwise it is *within
//! noise*. The first bound is what the samples support; the second is the drift a shared
//! machine shows between runs even when each run's samples are tight (frequency, other
//! processes, cache placement), which no within-run spread can reveal.
//!
//! What is judged is one *metric* ([`Metric`]): the step (the default, what a user of the
//! layer pays) or the attention core alone. A peer implementation (`tools/peers/`) measures
//! the core alone ([`PointResult::is_core_only`]): paired with attnbench's points (matched
//! ignoring [`Axis::Implementation`]) only the cores compare, so such a comparison must judge
//! the core, and its step columns stay empty.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::Serialize;
use thiserror::Error;

use crate::config::{Dtype, Kernel, MlaPath, Mode, Precision, Variant, WeightDtype};
use crate::results::{PointResult, ReadError, ResultsDir, ResultsFile, Summary, read_results};

/// `σ ≈ MAD_SCALE · MAD` for normal samples.
pub const MAD_SCALE: f64 = 1.4826;
/// The standard error of a median of `n` normal samples is `≈ MEDIAN_SE_SCALE · σ / √n`
/// (`√(π/2)`).
pub const MEDIAN_SE_SCALE: f64 = 1.2533;
/// Default `noise_k`: a change must exceed this many combined standard errors.
pub const DEFAULT_NOISE_K: f64 = 3.0;
/// Default `min_change_pct`: a change must exceed this many percent.
pub const DEFAULT_MIN_CHANGE_PCT: f64 = 5.0;

/// What a comparison can refuse.
#[derive(Debug, Error)]
pub enum CompareError {
    /// A result set could not be read.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// A setting is out of range.
    #[error("{name} = {value}: must be a finite number ≥ 0")]
    Setting {
        /// The setting, e.g. `noise_k`.
        name: &'static str,
        /// The value given.
        value: f64,
    },
    /// The step is judged, but one side of a pair measured the attention core alone and the
    /// other a whole layer: their step times are not the same work.
    #[error(
        "{side}'s `{key}` ({implementation}) measured the attention core alone and the other side a whole layer: \
         their step times are not comparable; judge the cores instead (metric core, `--metric core`)"
    )]
    CoreOnly {
        /// `A` or `B`: the side that measured the core alone.
        side: &'static str,
        /// That side's key.
        key: String,
        /// That side's implementation, e.g. `pytorch-sdpa`.
        implementation: String,
    },
    /// Two points of one side have the same configuration once the ignored axes are left out,
    /// so a point of the other side could match either.
    #[error(
        "{side} has two points with the same configuration ignoring {ignored}: `{first}` and `{second}`; \
         compare result sets with one value of the ignored axes, or ignore fewer axes"
    )]
    Ambiguous {
        /// `A` or `B`.
        side: &'static str,
        /// The ignored axes, e.g. `threads`.
        ignored: String,
        /// One point's key.
        first: String,
        /// The other's.
        second: String,
    },
}

/// An axis of a point's configuration that matching may leave out, to compare runs that
/// differ on purpose (e.g. a 1-thread run against a 2-thread run).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Axis {
    /// The rayon pool size (`threads`, `_t2` in the key).
    Threads,
    /// The attention-core kernel (`naive`, `tiled`).
    Kernel,
    /// What measured the point (`attnbench`, `pytorch-sdpa`, ...): ignored to set a peer's
    /// result set against attnbench's, point by point.
    Implementation,
}

impl Axis {
    /// Every axis, with its name on the command line.
    pub const ALL: [Axis; 3] = [Axis::Threads, Axis::Kernel, Axis::Implementation];

    /// The name used on the command line and in the JSON.
    pub fn name(self) -> &'static str {
        match self {
            Axis::Threads => "threads",
            Axis::Kernel => "kernel",
            Axis::Implementation => "implementation",
        }
    }
}

impl fmt::Display for Axis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The name is not an axis that matching can ignore.
#[derive(Debug, Error)]
#[error("`{0}` is not an axis compare can ignore (threads, kernel, implementation)")]
pub struct UnknownAxis(String);

impl FromStr for Axis {
    type Err = UnknownAxis;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Axis::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| UnknownAxis(s.to_string()))
    }
}

/// Which time of a pair the counts, the gate and the headline verdict judge.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// The whole step (`median_ns`): what a user of the layer pays.
    #[default]
    Step,
    /// The attention core alone (`core_median_ns`): what a peer implementation measures.
    Core,
}

impl Metric {
    /// Both metrics, with their names on the command line.
    pub const ALL: [Metric; 2] = [Metric::Step, Metric::Core];

    /// The name used on the command line and in the JSON.
    pub fn name(self) -> &'static str {
        match self {
            Metric::Step => "step",
            Metric::Core => "core",
        }
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The name is not a metric.
#[derive(Debug, Error)]
#[error("`{0}` is not a metric compare can judge (step, core)")]
pub struct UnknownMetric(String);

impl FromStr for Metric {
    type Err = UnknownMetric;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Metric::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| UnknownMetric(s.to_string()))
    }
}

/// How points are matched and when a change counts.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CompareSettings {
    /// A change must exceed this many combined standard errors of the two medians.
    pub noise_k: f64,
    /// A change must exceed this many percent, whatever the samples say.
    pub min_change_pct: f64,
    /// Axes left out of matching.
    pub ignore: Vec<Axis>,
    /// The time the counts and the gate judge.
    pub metric: Metric,
}

impl Default for CompareSettings {
    fn default() -> Self {
        Self {
            noise_k: DEFAULT_NOISE_K,
            min_change_pct: DEFAULT_MIN_CHANGE_PCT,
            ignore: Vec::new(),
            metric: Metric::Step,
        }
    }
}

impl CompareSettings {
    /// Refuses negative, infinite or NaN thresholds.
    pub fn validate(&self) -> Result<(), CompareError> {
        check_setting("noise_k", self.noise_k)?;
        check_setting("min_change_pct", self.min_change_pct)
    }
}

/// Refuses a threshold that is not a finite number ≥ 0.
pub fn check_setting(name: &'static str, value: f64) -> Result<(), CompareError> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(CompareError::Setting { name, value })
    }
}

/// Reads a result set: a results directory (its `results.json`) or a `results.json` itself.
pub fn load_results(path: &Path) -> Result<ResultsFile, CompareError> {
    let results = if path.is_dir() {
        ResultsDir::new(path).read_results()
    } else {
        read_results(path)
    };
    Ok(results?)
}

/// One side's timing summary of a point.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Timing {
    /// Median, ns.
    pub median_ns: f64,
    /// Median absolute deviation, ns.
    pub mad_ns: f64,
    /// Samples behind the median.
    pub samples: usize,
}

impl Timing {
    /// The timing if all three are present and usable (median > 0, MAD ≥ 0, a sample):
    /// anything else cannot be compared.
    pub fn new(
        median_ns: Option<f64>,
        mad_ns: Option<f64>,
        samples: Option<usize>,
    ) -> Option<Self> {
        let (median_ns, mad_ns, samples) = (median_ns?, mad_ns?, samples?);
        let usable =
            median_ns.is_finite() && median_ns > 0.0 && mad_ns.is_finite() && mad_ns >= 0.0;
        (usable && samples > 0).then_some(Self {
            median_ns,
            mad_ns,
            samples,
        })
    }

    /// The timing of one summary of a point ([`PointResult::step`] or [`PointResult::core`]).
    pub fn of(summary: &Summary) -> Option<Self> {
        Self::new(summary.median_ns, summary.mad_ns, summary.samples)
    }

    /// The step time of a point.
    pub fn step(p: &PointResult) -> Option<Self> {
        Self::of(&p.step)
    }

    /// The attention core's time of a point.
    pub fn core(p: &PointResult) -> Option<Self> {
        Self::of(&p.core)
    }

    /// The median's standard error relative to the median (the standard error of its log).
    pub fn relative_standard_error(&self) -> f64 {
        MEDIAN_SE_SCALE * MAD_SCALE * self.mad_ns / (self.median_ns * (self.samples as f64).sqrt())
    }
}

/// Whether B is faster or slower than A, or indistinguishable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// B's median is below A's beyond the noise and the minimum change.
    Faster,
    /// B's median is above A's beyond the noise and the minimum change.
    Slower,
    /// The change is within the noise or below the minimum change.
    WithinNoise,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Faster => "faster",
            Verdict::Slower => "slower",
            Verdict::WithinNoise => "within noise",
        })
    }
}

/// A's and B's timing of one quantity (the step, or the core) and what the change means.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Change {
    /// A's timing.
    pub a: Timing,
    /// B's timing.
    pub b: Timing,
    /// `b.median_ns / a.median_ns`: above 1, B takes longer.
    pub ratio: f64,
    /// The noise bound in percent: `100 · (exp(noise_k · s) − 1)`, `s` the combined relative
    /// standard error. A change must exceed it (and `min_change_pct`) to count.
    pub noise_pct: f64,
    /// The verdict.
    pub verdict: Verdict,
}

impl Change {
    /// Compares B's timing with A's (see the module documentation for the statistics).
    pub fn new(a: Timing, b: Timing, settings: &CompareSettings) -> Self {
        let combined = a
            .relative_standard_error()
            .hypot(b.relative_standard_error());
        let noise = settings.noise_k * combined;
        let bound = noise.max((settings.min_change_pct / 100.0).ln_1p());
        let log_ratio = (b.median_ns / a.median_ns).ln();
        let verdict = if log_ratio > bound {
            Verdict::Slower
        } else if log_ratio < -bound {
            Verdict::Faster
        } else {
            Verdict::WithinNoise
        };
        Self {
            a,
            b,
            ratio: b.median_ns / a.median_ns,
            noise_pct: 100.0 * noise.exp_m1(),
            verdict,
        }
    }

    /// How much longer B takes than A, in percent (negative: B is faster).
    pub fn change_pct(&self) -> f64 {
        100.0 * (self.ratio - 1.0)
    }
}

/// What became of a matched pair of points.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "status")]
pub enum Outcome {
    /// Both sides measured the judged metric: the step time and the core time compared, each
    /// when both sides have it.
    Compared {
        /// The step time; `None` when one side measured the core alone (its step is not a
        /// layer's) or lacks it.
        step: Option<Change>,
        /// The attention core's time alone.
        core: Option<Change>,
    },
    /// At least one side failed (or has no usable timing): listed, not compared.
    Failed {
        /// A's error, if A failed.
        a_error: Option<String>,
        /// B's error, if B failed.
        b_error: Option<String>,
    },
}

/// One matched pair.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PointComparison {
    /// A's key.
    pub key_a: String,
    /// B's key (differs from A's only in ignored axes).
    pub key_b: String,
    /// The KV cache's stored type, the same on both sides (it is part of a point's identity);
    /// left out of the JSON when f32, as in `results.json`.
    #[serde(skip_serializing_if = "is_f32")]
    pub kv_dtype: Dtype,
    /// The weights' stored type, the same on both sides; left out of the JSON when f32.
    #[serde(skip_serializing_if = "is_f32_weights")]
    pub weight_dtype: WeightDtype,
    /// The comparison.
    #[serde(flatten)]
    pub outcome: Outcome,
}

fn is_f32(dtype: &Dtype) -> bool {
    *dtype == Dtype::F32
}

fn is_f32_weights(dtype: &WeightDtype) -> bool {
    *dtype == WeightDtype::F32
}

impl PointComparison {
    /// Whether the pair is stored in a type other than f32 (cache or weights).
    pub fn is_narrow(&self) -> bool {
        !Precision {
            kv_dtype: self.kv_dtype,
            weight_dtype: self.weight_dtype,
        }
        .is_f32()
    }

    /// The step's change, when both sides have comparable steps.
    pub fn step(&self) -> Option<&Change> {
        match &self.outcome {
            Outcome::Compared { step, .. } => step.as_ref(),
            Outcome::Failed { .. } => None,
        }
    }

    /// The change of `metric`: [`step`](Self::step) or [`core`](Self::core).
    pub fn of(&self, metric: Metric) -> Option<&Change> {
        match metric {
            Metric::Step => self.step(),
            Metric::Core => self.core(),
        }
    }

    /// The core's change, when both sides have one.
    pub fn core(&self) -> Option<&Change> {
        match &self.outcome {
            Outcome::Compared { core, .. } => core.as_ref(),
            Outcome::Failed { .. } => None,
        }
    }
}

/// Two result sets compared point by point.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Comparison {
    /// The settings used.
    pub settings: CompareSettings,
    /// Matched pairs, in A's order.
    pub points: Vec<PointComparison>,
    /// Keys of A's points that match nothing in B, in A's order.
    pub only_in_a: Vec<String>,
    /// Keys of B's points that match nothing in A, in B's order.
    pub only_in_b: Vec<String>,
}

/// How many points ended how, for one metric. `failed` counts the points without a change of
/// that metric.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// B faster.
    pub faster: usize,
    /// B slower.
    pub slower: usize,
    /// No change beyond the noise.
    pub within_noise: usize,
    /// Failed on either side.
    pub failed: usize,
    /// Only in A.
    pub only_in_a: usize,
    /// Only in B.
    pub only_in_b: usize,
}

impl Comparison {
    /// Counts of the judged metric's verdicts (`settings.metric`) and of the points not
    /// compared.
    pub fn counts(&self) -> Counts {
        self.counts_of(self.settings.metric)
    }

    /// The same counts for the attention core (a point without a core time counts as failed).
    pub fn core_counts(&self) -> Counts {
        self.counts_of(Metric::Core)
    }

    /// The counts of `metric`'s verdicts (a point without a change of it counts as failed).
    pub fn counts_of(&self, metric: Metric) -> Counts {
        let mut counts = Counts {
            only_in_a: self.only_in_a.len(),
            only_in_b: self.only_in_b.len(),
            ..Counts::default()
        };
        for point in &self.points {
            match point.of(metric).map(|c| c.verdict) {
                Some(Verdict::Faster) => counts.faster += 1,
                Some(Verdict::Slower) => counts.slower += 1,
                Some(Verdict::WithinNoise) => counts.within_noise += 1,
                None => counts.failed += 1,
            }
        }
        counts
    }

    /// Why a CI gate cannot vouch for B whatever the regressions, one sentence each: no
    /// point compared (nothing matched, or every match failed), points that failed on either
    /// side, points of A that B lacks. Empty when there is nothing; points only in B are new
    /// and pass.
    pub fn gate_problems(&self) -> Vec<String> {
        let failed: Vec<&str> = self
            .points
            .iter()
            .filter(|p| p.of(self.settings.metric).is_none())
            .map(|p| p.key_a.as_str())
            .collect();
        let mut problems = Vec::new();
        if failed.len() == self.points.len() {
            problems.push(format!(
                "no point was compared ({} matched, {} failed)",
                self.points.len(),
                failed.len()
            ));
        }
        if !failed.is_empty() {
            problems.push(format!(
                "{} point(s) failed on either side: {}",
                failed.len(),
                failed.join(", ")
            ));
        }
        if !self.only_in_a.is_empty() {
            problems.push(format!(
                "{} point(s) of A are missing from B: {}",
                self.only_in_a.len(),
                self.only_in_a.join(", ")
            ));
        }
        problems
    }

    /// The points whose judged time (`settings.metric`: the step by default) is *slower* by
    /// more than `fail_above_pct` percent: the regressions a CI gate fails on. By default the
    /// core's verdict is not gated: the step is what a user pays, and the core is timed
    /// separately only to explain it.
    pub fn regressions(&self, fail_above_pct: f64) -> Vec<&PointComparison> {
        self.points
            .iter()
            .filter(|p| {
                p.of(self.settings.metric).is_some_and(|c| {
                    c.verdict == Verdict::Slower && c.change_pct() > fail_above_pct
                })
            })
            .collect()
    }
}

/// What identifies a point for matching: its whole configuration (the key's fields, the
/// shape fields the key leaves out, and the stored types), with the ignored axes blanked.
/// The stored types are never ignored: a bf16 point is another measurement than an f32 one,
/// not the same one run again.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Identity {
    variant: Variant,
    precision: Precision,
    mla_path: Option<MlaPath>,
    mode: Mode,
    seq_len: usize,
    context: usize,
    batch: usize,
    shape: [Option<usize>; 9],
    threads: Option<usize>,
    kernel: Option<Kernel>,
    implementation: Option<String>,
}

impl Identity {
    fn of(p: &PointResult, ignore: &[Axis]) -> Self {
        Self {
            variant: p.variant,
            precision: Precision {
                kv_dtype: p.kv_dtype,
                weight_dtype: p.weight_dtype,
            },
            mla_path: p.mla_path,
            mode: p.mode,
            seq_len: p.seq_len,
            context: p.context,
            batch: p.batch,
            shape: [
                Some(p.d_model),
                Some(p.n_heads),
                p.n_kv_heads,
                p.head_dim,
                p.kv_lora_rank,
                p.q_lora_rank,
                p.qk_nope_head_dim,
                p.qk_rope_head_dim,
                p.v_head_dim,
            ],
            threads: (!ignore.contains(&Axis::Threads)).then_some(p.threads),
            kernel: (!ignore.contains(&Axis::Kernel)).then_some(p.kernel),
            implementation: (!ignore.contains(&Axis::Implementation))
                .then(|| p.implementation.clone()),
        }
    }
}

/// Indexes one side's points by identity, refusing two points with the same identity.
fn index<'a>(
    side: &'static str,
    points: &'a [PointResult],
    ignore: &[Axis],
) -> Result<HashMap<Identity, &'a PointResult>, CompareError> {
    let mut index = HashMap::with_capacity(points.len());
    for p in points {
        if let Some(first) = index.insert(Identity::of(p, ignore), p) {
            let ignored: Vec<&str> = ignore.iter().map(|a| a.name()).collect();
            return Err(CompareError::Ambiguous {
                side,
                ignored: if ignored.is_empty() {
                    "nothing".into()
                } else {
                    ignored.join(", ")
                },
                first: first.key.clone(),
                second: p.key.clone(),
            });
        }
    }
    Ok(index)
}

/// The outcome of a pair that neither side failed: the step compared when both steps are the
/// same work (both layers, or both cores alone), the core compared, and the pair failed when the
/// judged metric has no usable timing on a side. Refuses to judge the step of a pair of which
/// one side measured the core alone ([`CompareError::CoreOnly`]).
fn measured_outcome(
    pa: &PointResult,
    pb: &PointResult,
    settings: &CompareSettings,
) -> Result<Outcome, CompareError> {
    let same_work = pa.is_core_only() == pb.is_core_only();
    if !same_work && settings.metric == Metric::Step {
        let (side, p) = if pb.is_core_only() {
            ("B", pb)
        } else {
            ("A", pa)
        };
        return Err(CompareError::CoreOnly {
            side,
            key: p.key.clone(),
            implementation: p.implementation.clone(),
        });
    }
    let timing = |p: &PointResult| match settings.metric {
        Metric::Step => Timing::step(p),
        Metric::Core => Timing::core(p),
    };
    let (ta, tb) = (timing(pa), timing(pb));
    if ta.is_none() || tb.is_none() {
        return Ok(Outcome::Failed {
            a_error: ta.is_none().then(|| "no usable timing".to_string()),
            b_error: tb.is_none().then(|| "no usable timing".to_string()),
        });
    }
    let change = |of: fn(&PointResult) -> Option<Timing>| {
        of(pa).zip(of(pb)).map(|(a, b)| Change::new(a, b, settings))
    };
    Ok(Outcome::Compared {
        step: if same_work {
            change(Timing::step)
        } else {
            None
        },
        core: change(Timing::core),
    })
}

/// Compares B against A: every point of A matched with the point of B of the same
/// configuration (ignoring `settings.ignore`), in A's order; unmatched points listed per side.
/// `a` and `b` are the `points` of two [`ResultsFile`]s.
pub fn compare(
    a: &[PointResult],
    b: &[PointResult],
    settings: &CompareSettings,
) -> Result<Comparison, CompareError> {
    settings.validate()?;
    let ignore = &settings.ignore;
    let a_index = index("A", a, ignore)?;
    let b_index = index("B", b, ignore)?;
    let mut points = Vec::new();
    let mut only_in_a = Vec::new();
    for pa in a {
        let Some(pb) = b_index.get(&Identity::of(pa, ignore)) else {
            only_in_a.push(pa.key.clone());
            continue;
        };
        let outcome = match (pa.error.is_none(), pb.error.is_none()) {
            (true, true) => measured_outcome(pa, pb, settings)?,
            _ => Outcome::Failed {
                a_error: pa.error.clone(),
                b_error: pb.error.clone(),
            },
        };
        points.push(PointComparison {
            key_a: pa.key.clone(),
            key_b: pb.key.clone(),
            kv_dtype: pa.kv_dtype,
            weight_dtype: pa.weight_dtype,
            outcome,
        });
    }
    let only_in_b = b
        .iter()
        .filter(|p| !a_index.contains_key(&Identity::of(p, ignore)))
        .map(|p| p.key.clone())
        .collect();
    Ok(Comparison {
        settings: settings.clone(),
        points,
        only_in_a,
        only_in_b,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DEFAULT_ROPE_THETA, GroupedConfig, LayerSpec};
    use crate::experiment::Point;
    use crate::results::SampleStats;

    /// A measured GQA decode point: step `median_ns ± mad_ns` over 20 samples, core half of it.
    fn point(context: usize, threads: usize, median_ns: f64, mad_ns: f64) -> PointResult {
        let point = Point {
            spec: LayerSpec::Grouped {
                variant: Variant::Gqa,
                config: GroupedConfig {
                    d_model: 64,
                    n_heads: 4,
                    n_kv_heads: 2,
                    head_dim: 16,
                    rope_theta: DEFAULT_ROPE_THETA,
                },
            },
            mode: Mode::Decode,
            seq_len: 1,
            context,
            batch: 1,
            threads,
            kernel: Kernel::Tiled,
            precision: Default::default(),
        };
        let mut result = PointResult::unmeasured(&point);
        let stats = |median_ns: f64, mad_ns: f64| SampleStats {
            median_ns,
            mad_ns,
            min_ns: median_ns - mad_ns,
            max_ns: median_ns + 3.0 * mad_ns,
            samples: 20,
        };
        result.set_timing(&stats(median_ns, mad_ns));
        result.set_core_timing(&stats(median_ns / 2.0, mad_ns / 2.0));
        result
    }

    fn failed(context: usize, threads: usize) -> PointResult {
        let mut p = point(context, threads, 1.0, 0.0);
        p.step.median_ns = None;
        p.core.median_ns = None;
        p.error = Some("cannot allocate".into());
        p
    }

    fn only_step(c: &Comparison) -> Vec<Verdict> {
        c.points.iter().map(|p| p.step().unwrap().verdict).collect()
    }

    #[test]
    fn identical_runs_are_within_noise() {
        let a = vec![point(64, 2, 1e6, 1e4), point(128, 2, 2e6, 0.0)];
        let c = compare(&a, &a, &CompareSettings::default()).unwrap();
        assert_eq!(only_step(&c), vec![Verdict::WithinNoise; 2]);
        assert!(c.points.iter().all(|p| p.core().unwrap().ratio == 1.0));
        assert!(c.regressions(0.0).is_empty());
        assert_eq!(c.counts().within_noise, 2);
    }

    #[test]
    fn twice_as_slow_with_small_spread_is_slower_and_gated() {
        let a = vec![point(64, 2, 1e6, 1e4)];
        let b = vec![point(64, 2, 2e6, 2e4)];
        let c = compare(&a, &b, &CompareSettings::default()).unwrap();
        let step = c.points[0].step().unwrap();
        assert_eq!(step.verdict, Verdict::Slower);
        assert!((step.ratio - 2.0).abs() < 1e-12);
        assert!((step.change_pct() - 100.0).abs() < 1e-9);
        assert_eq!(c.points[0].core().unwrap().verdict, Verdict::Slower);
        assert_eq!(c.regressions(20.0).len(), 1);
        assert!(c.regressions(150.0).is_empty(), "gate is on the percentage");
        // The other way round it is a speed-up, never a regression.
        let c = compare(&b, &a, &CompareSettings::default()).unwrap();
        assert_eq!(only_step(&c), vec![Verdict::Faster]);
        assert!(c.regressions(0.0).is_empty());
    }

    #[test]
    fn a_change_inside_a_wide_spread_is_within_noise() {
        // MAD of half the median over 20 samples: se ≈ 0.21 per side, 3 · 0.29 ≈ 0.88 in log,
        // so 2× (ln 2 ≈ 0.69) is not beyond the noise.
        let a = vec![point(64, 2, 1e6, 5e5)];
        let b = vec![point(64, 2, 2e6, 1e6)];
        let c = compare(&a, &b, &CompareSettings::default()).unwrap();
        let step = c.points[0].step().unwrap();
        assert_eq!(step.verdict, Verdict::WithinNoise);
        assert!(step.noise_pct > 100.0, "{}", step.noise_pct);
        assert!(c.regressions(20.0).is_empty());
        // With a looser k the same change counts.
        let loose = CompareSettings {
            noise_k: 1.0,
            ..CompareSettings::default()
        };
        assert_eq!(
            only_step(&compare(&a, &b, &loose).unwrap()),
            vec![Verdict::Slower]
        );
    }

    #[test]
    fn a_tight_change_below_the_minimum_is_within_noise() {
        // No spread at all, so only the minimum change decides: 3% < 5%, 8% > 5%.
        let a = vec![point(64, 2, 1e6, 0.0), point(128, 2, 1e6, 0.0)];
        let b = vec![point(64, 2, 1.03e6, 0.0), point(128, 2, 1.08e6, 0.0)];
        let c = compare(&a, &b, &CompareSettings::default()).unwrap();
        assert_eq!(only_step(&c), vec![Verdict::WithinNoise, Verdict::Slower]);
    }

    #[test]
    fn unmatched_and_failed_points_are_listed_not_compared() {
        let a = vec![
            point(64, 2, 1e6, 0.0),
            failed(128, 2),
            point(256, 2, 1e6, 0.0),
        ];
        let b = vec![
            point(512, 2, 1e6, 0.0),
            point(128, 2, 1e6, 0.0),
            point(64, 2, 1e6, 0.0),
        ];
        let c = compare(&a, &b, &CompareSettings::default()).unwrap();
        let keys: Vec<&str> = c.points.iter().map(|p| p.key_a.as_str()).collect();
        assert_eq!(
            keys,
            [
                "gqa/decode/ctx64_h4_kv2_b1_t2",
                "gqa/decode/ctx128_h4_kv2_b1_t2"
            ]
        );
        assert_eq!(
            c.points[1].outcome,
            Outcome::Failed {
                a_error: Some("cannot allocate".into()),
                b_error: None
            }
        );
        assert_eq!(c.only_in_a, ["gqa/decode/ctx256_h4_kv2_b1_t2"]);
        assert_eq!(c.only_in_b, ["gqa/decode/ctx512_h4_kv2_b1_t2"]);
        let counts = c.counts();
        assert_eq!(
            (
                counts.within_noise,
                counts.failed,
                counts.only_in_a,
                counts.only_in_b
            ),
            (1, 1, 1, 1)
        );
    }

    #[test]
    fn ignoring_threads_matches_across_thread_counts() {
        let a = vec![point(64, 2, 1e6, 1e3)];
        let b = vec![point(64, 1, 1.9e6, 1e3)];
        let strict = compare(&a, &b, &CompareSettings::default()).unwrap();
        assert!(strict.points.is_empty());
        assert_eq!((strict.only_in_a.len(), strict.only_in_b.len()), (1, 1));
        let settings = CompareSettings {
            ignore: vec![Axis::Threads],
            ..CompareSettings::default()
        };
        let c = compare(&a, &b, &settings).unwrap();
        assert_eq!(c.points[0].key_b, "gqa/decode/ctx64_h4_kv2_b1_t1");
        assert_eq!(only_step(&c), vec![Verdict::Slower]);
    }

    #[test]
    fn an_ambiguous_match_is_refused_naming_both_points() {
        let a = vec![point(64, 1, 1e6, 0.0), point(64, 2, 1e6, 0.0)];
        let b = vec![point(64, 1, 1e6, 0.0)];
        let settings = CompareSettings {
            ignore: vec![Axis::Threads],
            ..CompareSettings::default()
        };
        let err = compare(&a, &b, &settings).unwrap_err().to_string();
        for needle in ["A has two points", "threads", "_t1`", "_t2`"] {
            assert!(err.contains(needle), "`{needle}` not in {err}");
        }
        let err = compare(&b, &a, &settings).unwrap_err().to_string();
        assert!(err.contains("B has two points"), "{err}");
    }

    #[test]
    fn bad_settings_are_errors() {
        let a = vec![point(64, 2, 1e6, 0.0)];
        for (noise_k, min_change_pct) in [(-1.0, 5.0), (f64::NAN, 5.0), (3.0, f64::INFINITY)] {
            let settings = CompareSettings {
                noise_k,
                min_change_pct,
                ignore: vec![],
                metric: Metric::Step,
            };
            assert!(compare(&a, &a, &settings).is_err());
        }
    }

    #[test]
    fn unusable_timings_are_failed_not_compared() {
        let mut zero = point(64, 2, 1e6, 0.0);
        zero.step.median_ns = Some(0.0);
        let c = compare(
            &[point(64, 2, 1e6, 0.0)],
            &[zero],
            &CompareSettings::default(),
        )
        .unwrap();
        assert!(matches!(c.points[0].outcome, Outcome::Failed { .. }));
        assert_eq!(c.counts().failed, 1);
    }

    #[test]
    fn points_of_other_stored_types_never_pair_up() {
        // The same configuration and key in bf16: another point, whatever is ignored.
        let bf16 = |p: PointResult| PointResult {
            kv_dtype: Dtype::Bf16,
            weight_dtype: WeightDtype::Bf16,
            ..p
        };
        let a = vec![point(64, 2, 1e6, 0.0), bf16(point(64, 2, 1e6, 0.0))];
        let b = vec![bf16(point(64, 1, 2e6, 0.0))];
        let settings = CompareSettings {
            ignore: vec![Axis::Threads, Axis::Kernel],
            ..CompareSettings::default()
        };
        let c = compare(&a, &b, &settings).unwrap();
        assert_eq!(c.points.len(), 1);
        let pair = &c.points[0];
        assert_eq!(
            (pair.kv_dtype, pair.weight_dtype),
            (Dtype::Bf16, WeightDtype::Bf16)
        );
        assert!(pair.is_narrow());
        assert_eq!(c.only_in_a, ["gqa/decode/ctx64_h4_kv2_b1_t2"]);
        let json = serde_json::to_string(pair).unwrap();
        assert!(
            json.contains(r#""kv_dtype":"bf16","weight_dtype":"bf16""#),
            "{json}"
        );
        // f32 pairs write the JSON they always have.
        let c = compare(&a[..1], &a[..1], &settings).unwrap();
        assert!(!c.points[0].is_narrow());
        let json = serde_json::to_string(&c.points[0]).unwrap();
        assert!(!json.contains("dtype"), "{json}");
    }

    /// `p` as a peer measured it: the core alone, its step the core's samples.
    fn peer(mut p: PointResult, core_ns: f64) -> PointResult {
        p.implementation = "pytorch-sdpa".into();
        p.projection_flops = 0;
        p.flops = p.attention_flops;
        let stats = SampleStats {
            median_ns: core_ns,
            mad_ns: 0.0,
            min_ns: core_ns,
            max_ns: core_ns,
            samples: 20,
        };
        p.set_timing(&stats);
        p.set_core_timing(&stats);
        p
    }

    #[test]
    fn a_peer_pairs_by_ignoring_the_implementation_and_compares_cores_only() {
        // attnbench: step 1 ms, core 0.5 ms; the peer's core 1 ms: twice as slow.
        let a = vec![point(64, 2, 1e6, 0.0), point(128, 2, 1e6, 0.0)];
        let b = vec![
            peer(point(64, 2, 1e6, 0.0), 1e6),
            peer(point(128, 2, 1e6, 0.0), 2.5e5),
        ];
        assert!(b[0].is_core_only() && !a[0].is_core_only());
        let strict = compare(&a, &b, &CompareSettings::default()).unwrap();
        assert!(
            strict.points.is_empty(),
            "implementations pair only if ignored"
        );
        assert_eq!((strict.only_in_a.len(), strict.only_in_b.len()), (2, 2));
        let ignore = vec![Axis::Implementation];
        let step = CompareSettings {
            ignore: ignore.clone(),
            ..CompareSettings::default()
        };
        let err = compare(&a, &b, &step).unwrap_err().to_string();
        for needle in [
            "B's `gqa/decode/ctx64_h4_kv2_b1_t2`",
            "pytorch-sdpa",
            "--metric core",
        ] {
            assert!(err.contains(needle), "`{needle}` not in {err}");
        }
        let core = CompareSettings {
            ignore,
            metric: Metric::Core,
            ..CompareSettings::default()
        };
        let c = compare(&a, &b, &core).unwrap();
        assert_eq!(c.points.len(), 2);
        assert!(
            c.points.iter().all(|p| p.step().is_none()),
            "a core is no step"
        );
        let ratios: Vec<f64> = c.points.iter().map(|p| p.core().unwrap().ratio).collect();
        assert_eq!(ratios, [2.0, 0.5]);
        let counts = c.counts();
        assert_eq!((counts.slower, counts.faster, counts.failed), (1, 1, 0));
        assert_eq!(counts, c.core_counts());
        assert_eq!(c.counts_of(Metric::Step).failed, 2);
        assert_eq!(c.regressions(50.0).len(), 1);
        assert!(c.gate_problems().is_empty(), "{:?}", c.gate_problems());
        // Two peers measured the same work: their steps (their cores) compare too.
        let c = compare(&b, &b, &core).unwrap();
        assert!(c.points.iter().all(|p| p.step().is_some()));
    }

    #[test]
    fn axes_parse_by_name() {
        assert_eq!("threads".parse::<Axis>().unwrap(), Axis::Threads);
        assert_eq!("kernel".parse::<Axis>().unwrap(), Axis::Kernel);
        assert_eq!(
            "implementation".parse::<Axis>().unwrap(),
            Axis::Implementation
        );
        assert_eq!("core".parse::<Metric>().unwrap(), Metric::Core);
        assert!("median".parse::<Metric>().is_err());
        assert!("batch".parse::<Axis>().is_err());
    }
}
