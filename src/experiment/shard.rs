//! Splitting a grid into shards for a cluster's scheduler (Slurm array jobs, Kubernetes indexed
//! Jobs, GNU parallel): which points shard K of N runs, decided from the grid alone so that
//! every machine computes the same split, and balanced by each point's estimated cost so that
//! one shard does not hold every long point.
//!
//! The split is greedy longest-processing-time: the points sorted by estimated cost, most
//! expensive first (ties by key), each given to the shard with the least estimated cost so far
//! (ties to the lowest shard). No shard then exceeds the ideal share (total / N) by more than
//! the largest single point.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{Experiment, MeasureSettings, Point};
use crate::cost::{core_cost, step_cost};

/// One shard of a grid split N ways: `index` of `count`, 1-based, written `K/N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Shard {
    /// 1-based: 1 to `count`.
    pub index: usize,
    /// How many shards the grid is split into, at least 1.
    pub count: usize,
}

/// A shard that cannot be: the text that asked for it and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{text}`: {reason}")]
pub struct ShardError {
    /// The value as given, e.g. `0/3`.
    pub text: String,
    /// Why it is refused.
    pub reason: String,
}

impl Shard {
    /// Shard `index` of `count` (1-based), refused unless `1 <= index <= count`.
    pub fn new(index: usize, count: usize) -> Result<Self, ShardError> {
        let refuse = |reason: &str| ShardError {
            text: format!("{index}/{count}"),
            reason: reason.to_string(),
        };
        if count == 0 {
            return Err(refuse("the shard count N must be at least 1"));
        }
        if index == 0 || index > count {
            return Err(refuse(&format!(
                "the shard index K must be 1 to {count} (shards count from 1)"
            )));
        }
        Ok(Self { index, count })
    }

    /// The 0-based position of this shard among the `count`.
    fn position(self) -> usize {
        self.index - 1
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl FromStr for Shard {
    type Err = ShardError;

    /// `K/N`, e.g. `2/3`.
    fn from_str(text: &str) -> Result<Self, ShardError> {
        let refuse = |reason: String| ShardError {
            text: text.to_string(),
            reason,
        };
        let (k, n) = text.split_once('/').ok_or_else(|| {
            refuse("expected K/N, shard K of N counted from 1, e.g. 2/3".to_string())
        })?;
        let number = |part: &str, what: &str| {
            part.trim().parse::<usize>().map_err(|_| {
                refuse(format!(
                    "{what} `{part}` is not a whole number (expected K/N, e.g. 2/3)"
                ))
            })
        };
        let (k, n) = (number(k, "K")?, number(n, "N")?);
        Shard::new(k, n).map_err(|e| refuse(e.reason))
    }
}

impl Serialize for Shard {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Shard {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Where `--shard auto` finds the shard: the scheduler's environment variables.
pub mod env {
    /// Slurm: this task's array index.
    pub const SLURM_TASK_ID: &str = "SLURM_ARRAY_TASK_ID";
    /// Slurm: the array's lowest index.
    pub const SLURM_TASK_MIN: &str = "SLURM_ARRAY_TASK_MIN";
    /// Slurm: how many tasks the array has.
    pub const SLURM_TASK_COUNT: &str = "SLURM_ARRAY_TASK_COUNT";
    /// Slurm: the array's step (`--array=0-20:2`), 1 when absent.
    pub const SLURM_TASK_STEP: &str = "SLURM_ARRAY_TASK_STEP";
    /// Kubernetes indexed Job: this pod's completion index, 0-based.
    pub const K8S_COMPLETION_INDEX: &str = "JOB_COMPLETION_INDEX";
}

/// The shard `--shard auto` (or `auto/N`) means, read from the scheduler's environment through
/// `var` (e.g. `|name| std::env::var(name).ok()`):
///
/// - Slurm, when `SLURM_ARRAY_TASK_ID` is set: K = (ID − `SLURM_ARRAY_TASK_MIN`) /
///   `SLURM_ARRAY_TASK_STEP` (1 when unset) + 1, N = `SLURM_ARRAY_TASK_COUNT`, so an array
///   `--array=0-7`, `1-8` or `0-14:2` all give shards 1/8 to 8/8.
/// - Kubernetes, when `JOB_COMPLETION_INDEX` is set: K = index + 1, N = `count` (the Job's
///   `completions`, which Kubernetes does not put in the environment).
///
/// `count` (from `auto/N`) must agree with Slurm's count when both are given.
///
/// # Errors
/// A message naming the variable and its value (or the flag) when neither scheduler's variable
/// is set, a value is not a whole number, or the shard is out of range.
pub fn shard_from_env(
    count: Option<usize>,
    var: &dyn Fn(&str) -> Option<String>,
) -> Result<Shard, String> {
    use env::*;
    let number = |name: &str| -> Result<Option<usize>, String> {
        var(name)
            .map(|v| {
                v.trim()
                    .parse::<usize>()
                    .map_err(|_| format!("--shard auto: {name}={v:?} is not a whole number"))
            })
            .transpose()
    };
    let need = |name: &str| -> Result<usize, String> {
        number(name)?.ok_or_else(|| {
            format!("--shard auto: {SLURM_TASK_ID} is set but {name} is not (is this a Slurm array job?)")
        })
    };
    let out_of_range = |what: String, e: ShardError| format!("--shard auto: {what}: {}", e.reason);
    if let Some(id) = number(SLURM_TASK_ID)? {
        let (min, n) = (need(SLURM_TASK_MIN)?, need(SLURM_TASK_COUNT)?);
        let step = number(SLURM_TASK_STEP)?.unwrap_or(1).max(1);
        let from = format!("{SLURM_TASK_ID}={id}, {SLURM_TASK_MIN}={min}, {SLURM_TASK_COUNT}={n}");
        if id < min || (id - min) % step != 0 {
            return Err(format!(
                "--shard auto: {from}: the task id is not on the array's range (step {step})"
            ));
        }
        if let Some(c) = count.filter(|&c| c != n) {
            return Err(format!(
                "--shard auto/{c}: Slurm says the array has {n} tasks ({from})"
            ));
        }
        return Shard::new((id - min) / step + 1, n).map_err(|e| out_of_range(from, e));
    }
    if let Some(index) = number(K8S_COMPLETION_INDEX)? {
        let Some(n) = count else {
            return Err(format!(
                "--shard auto: {K8S_COMPLETION_INDEX}={index} is set but the number of shards is \
                 not: give it as --shard auto/N (N = the Job's spec.completions)"
            ));
        };
        let from = format!("{K8S_COMPLETION_INDEX}={index} (0-based) with N={n}");
        return Shard::new(index + 1, n).map_err(|e| out_of_range(from, e));
    }
    Err(format!(
        "--shard auto: neither {SLURM_TASK_ID} (a Slurm array job) nor {K8S_COMPLETION_INDEX} \
         (a Kubernetes indexed Job) is set; give the shard as --shard K/N"
    ))
}

/// What `--shard` asks for: a shard given outright, or one to read from the scheduler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShardSpec {
    /// `K/N`.
    Given(Shard),
    /// `auto` or `auto/N`: [`shard_from_env`] with N when given.
    Auto(Option<usize>),
}

impl FromStr for ShardSpec {
    type Err = ShardError;

    /// `K/N`, `auto` or `auto/N`.
    fn from_str(text: &str) -> Result<Self, ShardError> {
        let Some(rest) = text.strip_prefix("auto") else {
            return text.parse().map(Self::Given);
        };
        match rest.strip_prefix('/') {
            None if rest.is_empty() => Ok(Self::Auto(None)),
            Some(n) => match n.trim().parse::<usize>() {
                Ok(n) if n > 0 => Ok(Self::Auto(Some(n))),
                _ => Err(ShardError {
                    text: text.to_string(),
                    reason: format!("N `{n}` must be a whole number of at least 1 (auto/N)"),
                }),
            },
            None => Err(ShardError {
                text: text.to_string(),
                reason: "expected K/N, auto or auto/N".to_string(),
            }),
        }
    }
}

/// Nominal ceilings the estimate divides by, per thread of the point. Only the ratios between
/// points matter to the split, and the split must not depend on the machine that computes
/// it, so these are fixed constants, not a calibration: a CPU core of the 2020s.
const NOMINAL_FLOPS_PER_NS_PER_THREAD: f64 = 50.0;
/// Read bandwidth per thread, bytes per ns (GB/s), up to [`BANDWIDTH_THREADS`] threads.
const NOMINAL_BYTES_PER_NS_PER_THREAD: f64 = 15.0;
/// Threads past which the nominal read bandwidth grows no more: memory saturates long before
/// the cores do.
const BANDWIDTH_THREADS: usize = 8;
/// Evicting the caches before a sample: a buffer of a few tens of MiB written at the nominal
/// bandwidth.
const NOMINAL_FLUSH_NS: f64 = 2.0e6;
/// Per point besides sampling: building the layer and its seeded weights, per weight.
const NOMINAL_NS_PER_PARAM: f64 = 5.0;
/// Steps run outside sampling: the f32 reference of the accuracy, the step checked, the step
/// and the core run once more under the counting allocator.
const UNTIMED_STEPS: f64 = 4.0;

/// The estimated wall time of measuring `point` with `measure`, in nanoseconds of a nominal
/// machine: the step and the core timed on a roofline of fixed ceilings (per thread of the
/// point, the bandwidth's up to 8 threads), the warm-up and the
/// samples the settings allow (bounded below by `min_samples`, above by `max_samples`, between
/// by the time budget), the cache eviction before each sample, the untimed runs and the
/// weights. A ranking of points, not a prediction of seconds.
pub fn estimated_cost_ns(point: &Point, measure: &MeasureSettings) -> f64 {
    let threads = point.threads.max(1);
    let flops_per_ns = NOMINAL_FLOPS_PER_NS_PER_THREAD * threads as f64;
    let bytes_per_ns = NOMINAL_BYTES_PER_NS_PER_THREAD * threads.min(BANDWIDTH_THREADS) as f64;
    let ideal =
        |flops: u64, bytes: u64| (flops as f64 / flops_per_ns).max(bytes as f64 / bytes_per_ns);
    let (spec, precision) = (&point.spec, point.precision);
    let step = step_cost(spec, precision, point.batch, point.seq_len, point.context);
    let core = core_cost(spec, precision, point.batch, point.seq_len, point.context);
    let step_ns = ideal(step.flops(), step.bytes);
    let core_ns = ideal(core.flops(), core.bytes);
    let flush_ns = if measure.flush_caches {
        NOMINAL_FLUSH_NS
    } else {
        0.0
    };
    let budget_ns = measure.time_budget_ms as f64 * 1e6;
    let sampling = |one_ns: f64| {
        let sample_ns = one_ns + flush_ns;
        let warmup = (measure.warmup_iters as f64 * one_ns).min(measure.warmup_ms as f64 * 1e6);
        let bounds = (
            measure.min_samples as f64 * sample_ns,
            measure.max_samples as f64 * sample_ns,
        );
        warmup + budget_ns.min(bounds.1).max(bounds.0)
    };
    sampling(step_ns)
        + sampling(core_ns)
        + UNTIMED_STEPS * step_ns
        + spec.param_count() as f64 * NOMINAL_NS_PER_PARAM
}

/// The split of `points` (measured with `measure`) into `count` shards: for each shard, the
/// grid positions (0-based indices into `points`) it runs, ascending. Disjoint, covering every
/// position, the same for the same grid on every machine; greedy longest-processing-time over
/// [`estimated_cost_ns`] (see the module doc), so no shard's estimated cost exceeds
/// `total / count` by more than the largest point's.
///
/// # Panics
/// If `count` is 0 (a [`Shard`] never has it).
pub fn split(points: &[Point], measure: &MeasureSettings, count: usize) -> Vec<Vec<usize>> {
    assert!(count > 0, "a grid splits into at least one shard");
    let mut order: Vec<(f64, String, usize)> = points
        .iter()
        .enumerate()
        .map(|(i, p)| (estimated_cost_ns(p, measure), p.key(), i))
        .collect();
    // Most expensive first; equal costs by key, so the order never depends on the file's.
    order.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    let mut loads = vec![0.0f64; count];
    let mut shards = vec![Vec::new(); count];
    for (cost, _, position) in order {
        let lightest = (0..count)
            .min_by(|&a, &b| loads[a].total_cmp(&loads[b]).then(a.cmp(&b)))
            .expect("at least one shard");
        loads[lightest] += cost;
        shards[lightest].push(position);
    }
    for shard in &mut shards {
        shard.sort_unstable();
    }
    shards
}

impl Experiment {
    /// The grid positions (0-based, ascending) of `shard`'s points ([`split`]).
    pub fn shard_positions(&self, shard: Shard) -> Vec<usize> {
        split(&self.points, &self.measure, shard.count).swap_remove(shard.position())
    }

    /// This experiment with only the points at `positions` (0-based, as
    /// [`shard_positions`](Self::shard_positions) gives), in grid order; the skipped
    /// combinations stay, as they are the whole grid's.
    pub fn only(&self, positions: &[usize]) -> Experiment {
        Experiment {
            points: positions.iter().map(|&i| self.points[i].clone()).collect(),
            ..self.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn shards_parse_and_refuse_naming_the_value() {
        assert_eq!("2/3".parse(), Ok(Shard { index: 2, count: 3 }));
        assert_eq!(Shard::new(2, 3).unwrap().to_string(), "2/3");
        for (bad, says) in [
            ("0/3", "K must be 1 to 3"),
            ("4/3", "K must be 1 to 3"),
            ("1/0", "at least 1"),
            ("x/y", "`x` is not a whole number"),
            ("3", "expected K/N"),
            ("-1/3", "not a whole number"),
        ] {
            let e = bad.parse::<Shard>().unwrap_err();
            assert_eq!(e.text, bad);
            assert!(e.to_string().contains(says), "{bad}: {e}");
        }
        assert_eq!("auto".parse(), Ok(ShardSpec::Auto(None)));
        assert_eq!("auto/4".parse(), Ok(ShardSpec::Auto(Some(4))));
        assert!("auto/0".parse::<ShardSpec>().is_err());
        assert!("autox".parse::<ShardSpec>().is_err());
        let json = serde_json::to_string(&Shard::new(1, 2).unwrap()).unwrap();
        assert_eq!(json, "\"1/2\"");
        assert!(serde_json::from_str::<Shard>("\"3/2\"").is_err());
    }

    fn from(vars: &[(&str, &str)], count: Option<usize>) -> Result<Shard, String> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        shard_from_env(count, &|name| vars.get(name).cloned())
    }

    #[test]
    fn auto_reads_slurm_and_kubernetes() {
        let slurm = |id: &str, min: &str, n: &str| {
            from(
                &[
                    ("SLURM_ARRAY_TASK_ID", id),
                    ("SLURM_ARRAY_TASK_MIN", min),
                    ("SLURM_ARRAY_TASK_COUNT", n),
                ],
                None,
            )
        };
        assert_eq!(slurm("0", "0", "3"), Ok(Shard::new(1, 3).unwrap()));
        assert_eq!(slurm("3", "1", "3"), Ok(Shard::new(3, 3).unwrap()));
        let stepped = from(
            &[
                ("SLURM_ARRAY_TASK_ID", "4"),
                ("SLURM_ARRAY_TASK_MIN", "0"),
                ("SLURM_ARRAY_TASK_COUNT", "3"),
                ("SLURM_ARRAY_TASK_STEP", "2"),
            ],
            None,
        );
        assert_eq!(stepped, Ok(Shard::new(3, 3).unwrap()));
        let e = slurm("5", "1", "3").unwrap_err();
        assert!(
            e.contains("SLURM_ARRAY_TASK_ID=5") && e.contains("1 to 3"),
            "{e}"
        );
        let e = slurm("x", "0", "3").unwrap_err();
        assert!(
            e.contains("SLURM_ARRAY_TASK_ID=\"x\" is not a whole number"),
            "{e}"
        );
        let e = from(&[("SLURM_ARRAY_TASK_ID", "1")], None).unwrap_err();
        assert!(e.contains("SLURM_ARRAY_TASK_MIN is not"), "{e}");

        let k8s = |i: &str, n| from(&[("JOB_COMPLETION_INDEX", i)], n);
        assert_eq!(k8s("0", Some(4)), Ok(Shard::new(1, 4).unwrap()));
        assert_eq!(k8s("3", Some(4)), Ok(Shard::new(4, 4).unwrap()));
        let e = k8s("4", Some(4)).unwrap_err();
        assert!(e.contains("JOB_COMPLETION_INDEX=4"), "{e}");
        let e = k8s("1", None).unwrap_err();
        assert!(e.contains("--shard auto/N"), "{e}");
        let e = from(&[], Some(2)).unwrap_err();
        assert!(e.contains("neither SLURM_ARRAY_TASK_ID"), "{e}");
    }
}
