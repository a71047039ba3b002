//! What the timed samples of a point come to: their statistics, and the record a point keeps
//! of each timed quantity (the step, the attention core).

use serde::{Deserialize, Serialize};

/// Summary of the timed samples of one point.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SampleStats {
    /// Median, the headline: robust to the outliers a shared machine produces.
    pub median_ns: f64,
    /// Median absolute deviation from the median.
    pub mad_ns: f64,
    /// Fastest sample.
    pub min_ns: f64,
    /// Slowest sample.
    pub max_ns: f64,
    /// Number of timed samples.
    pub samples: usize,
}

impl SampleStats {
    /// Summarises `samples_ns` (at least one).
    pub fn from_samples(samples_ns: &[f64]) -> Self {
        let mut sorted = samples_ns.to_vec();
        sorted.sort_by(f64::total_cmp);
        let median = median_of_sorted(&sorted);
        let mut deviations: Vec<f64> = sorted.iter().map(|s| (s - median).abs()).collect();
        deviations.sort_by(f64::total_cmp);
        Self {
            median_ns: median,
            mad_ns: median_of_sorted(&deviations),
            min_ns: sorted[0],
            max_ns: sorted[sorted.len() - 1],
            samples: sorted.len(),
        }
    }
}

fn median_of_sorted(v: &[f64]) -> f64 {
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The record of one timed quantity of a point (the whole step, or the attention core
/// alone): the statistics of its samples, the samples themselves, and what derives from the
/// median. Every field is `None` (no samples) until measured, and stays so for a point that
/// failed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summary {
    /// Median time, ns: the headline.
    pub median_ns: Option<f64>,
    /// Median absolute deviation of the times, ns.
    pub mad_ns: Option<f64>,
    /// Fastest sample, ns.
    pub min_ns: Option<f64>,
    /// Slowest sample, ns.
    pub max_ns: Option<f64>,
    /// Timed samples.
    pub samples: Option<usize>,
    /// `flops / median`, GFLOP/s (FLOPs by formula).
    pub gflops: Option<f64>,
    /// `bytes / median`, GB/s (10⁹ bytes/s; bytes by formula, the minimum moved).
    pub gbps: Option<f64>,
    /// Ideal time on this machine: `max(flops / peak_gflops, bytes / read_gbps)` at the
    /// point's thread count, from the calibration (`attnbench calibrate`).
    pub ideal_ns: Option<f64>,
    /// `100 · ideal_ns / median_ns`: how close it runs to this machine's roofline.
    pub roofline_pct: Option<f64>,
    /// Every timed sample, ns, in the order taken, so that the statistics can be recomputed
    /// (as criterion and hyperfine keep theirs). Empty in files from before they were kept.
    pub samples_ns: Vec<f64>,
}

impl Summary {
    /// The summary of `stats` for a quantity that does `flops` FLOPs and moves `bytes` bytes,
    /// without its samples; the roofline is not known yet ([`set_ideal`](Self::set_ideal)).
    pub fn measured(stats: &SampleStats, flops: u64, bytes: u64) -> Self {
        Self {
            median_ns: Some(stats.median_ns),
            mad_ns: Some(stats.mad_ns),
            min_ns: Some(stats.min_ns),
            max_ns: Some(stats.max_ns),
            samples: Some(stats.samples),
            gflops: Some(flops as f64 / stats.median_ns),
            gbps: Some(bytes as f64 / stats.median_ns),
            ideal_ns: None,
            roofline_pct: None,
            samples_ns: Vec::new(),
        }
    }

    /// True when the median beat the ideal time: above 100% of the calibrated ceiling, which a
    /// ceiling should not allow (the calibration was noisy, or missed a pattern the kernel
    /// found): calibrate again before reading the figure.
    pub fn above_ceiling(&self) -> bool {
        self.roofline_pct.is_some_and(|pct| pct > 100.0)
    }

    /// Sets the ideal time (ns) and the percentage of it the median reaches.
    pub fn set_ideal(&mut self, ideal_ns: Option<f64>) {
        self.ideal_ns = ideal_ns;
        self.roofline_pct = ideal_ns.zip(self.median_ns).map(|(i, m)| 100.0 * i / m);
    }
}
