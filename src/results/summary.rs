//! What the timed samples of a point come to: the statistics a record keeps of them.

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
