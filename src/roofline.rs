//! This machine's limits, measured by the tool itself, and the roofline of every point:
//! `ideal = max(flops / peak_flops, bytes / read_bandwidth)` for the point's thread count.
//! The calibration's record and its file are the results store's ([`Machine`]); measuring
//! it, deciding when a saved one can be reused, and what it implies for a point are here.

mod reuse;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Instant;

use faer::{Accum, Mat, Par};

pub use reuse::{Difference, Mismatch};

use crate::results::{
    CalibrationSize, Environment, MACHINE_FORMAT, Machine, PointResult, ReadError, WriteError,
    read_machine, write_machine,
};

/// What a calibration reports as it goes; its `Display` is the line to show a user.
#[derive(Clone, Copy, Debug)]
pub enum CalibrationEvent<'a> {
    /// The calibration file at `path` is not used, for the reason given: a new one is made.
    Stale {
        /// The file.
        path: &'a Path,
        /// Why it is not used.
        why: &'a Mismatch,
    },
    /// About to measure `size` on `threads` (sorted, each once): seconds to minutes.
    Start {
        /// The calibration's size.
        size: CalibrationSize,
        /// The thread counts.
        threads: &'a [usize],
    },
    /// The calibration was saved at this path.
    Saved(&'a Path),
}

impl fmt::Display for CalibrationEvent<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Stale { path, why } => match why {
                Mismatch::Missing => write!(f, "{} {why}", path.display()),
                _ => write!(f, "{} {why}; calibrating again", path.display()),
            },
            Self::Start { size, threads } => write!(
                f,
                "calibrating: f32 matmul {n}×{n} and a {} MiB read, threads {threads:?} ...",
                size.read_bytes >> 20,
                n = size.matmul_n
            ),
            Self::Saved(path) => write!(f, "saved {}", path.display()),
        }
    }
}

/// 1 and every core: the thread counts a run uses unless told otherwise.
pub fn default_calibration_threads() -> Vec<usize> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores == 1 { vec![1] } else { vec![1, cores] }
}

impl Machine {
    /// The calibration at `path` if it was measured on this machine by this build and covers
    /// `threads` ([`mismatch`](Self::mismatch)); otherwise, after reporting why
    /// ([`CalibrationEvent::Stale`]), a new full one, covering `threads`, 1 and all cores,
    /// saved at `path`. A missing or unreadable file is calibrated over, not an error.
    pub fn load_or_calibrate(
        path: &Path,
        threads: &[usize],
        report: &mut dyn FnMut(CalibrationEvent<'_>),
    ) -> Result<Machine, WriteError> {
        let now = Environment::capture(threads.to_vec());
        let why = match read_machine(path) {
            Ok(machine) => match machine.mismatch(&now, threads) {
                None => return Ok(machine),
                Some(why) => why,
            },
            Err(ReadError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                Mismatch::Missing
            }
            Err(e) => Mismatch::Unreadable(e.to_string()),
        };
        report(CalibrationEvent::Stale { path, why: &why });
        let mut wanted = default_calibration_threads();
        wanted.extend_from_slice(threads);
        Self::calibrate_and_save(path, &wanted, CalibrationSize::FULL, report)
    }

    /// Calibrates `size` on `threads` (sorted and deduplicated first) and saves it at `path`.
    pub fn calibrate_and_save(
        path: &Path,
        threads: &[usize],
        size: CalibrationSize,
        report: &mut dyn FnMut(CalibrationEvent<'_>),
    ) -> Result<Machine, WriteError> {
        let mut threads = threads.to_vec();
        threads.sort_unstable();
        threads.dedup();
        report(CalibrationEvent::Start {
            size,
            threads: &threads,
        });
        let machine = calibrate(&threads, size, Environment::capture(threads.clone()));
        write_machine(path, &machine)?;
        report(CalibrationEvent::Saved(path));
        Ok(machine)
    }

    /// The ideal time of a step in ns, on `threads` threads; `None` without calibration for
    /// that count.
    pub fn ideal_ns(&self, flops: u64, bytes: u64, threads: usize) -> Option<f64> {
        let gflops = self.matmul_gflops.get(&threads)?;
        let gbps = self.read_gbps.get(&threads)?;
        Some((flops as f64 / gflops).max(bytes as f64 / gbps))
    }

    /// Fills in the ideal times of `point`'s step and core, and the percentage of each that
    /// the measured median reaches.
    pub fn fill_roofline(&self, point: &mut PointResult) {
        let threads = point.threads;
        let step = self.ideal_ns(point.flops, point.bytes, threads);
        let core = self.ideal_ns(point.attention_flops, point.core_bytes, threads);
        point.step.set_ideal(step);
        point.core.set_ideal(core);
    }
}

/// Measures the peaks for each thread count in `threads`.
pub fn calibrate(threads: &[usize], size: CalibrationSize, environment: Environment) -> Machine {
    let mut matmul_gflops = BTreeMap::new();
    let mut read_gbps = BTreeMap::new();
    let values = size.read_bytes / size_of::<f32>();
    // Written, not just reserved, so that the pages are real before the first pass.
    let stream: Vec<f32> = (0..values).map(|i| (i % 7) as f32).collect();
    for &t in threads {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build()
            .expect("thread pool");
        pool.install(|| {
            matmul_gflops.insert(t, matmul_peak_gflops(size, t));
            read_gbps.insert(t, read_bandwidth_gbps(&stream, size.repeats));
        });
    }
    Machine {
        format: MACHINE_FORMAT.to_string(),
        environment,
        size,
        matmul_gflops,
        read_gbps,
    }
}

fn matmul_peak_gflops(size: CalibrationSize, threads: usize) -> f64 {
    let n = size.matmul_n;
    let a = Mat::<f32>::from_fn(n, n, |i, j| ((i * 3 + j) % 5) as f32 * 0.1);
    let b = Mat::<f32>::from_fn(n, n, |i, j| ((i + 2 * j) % 7) as f32 * 0.1);
    let mut c = Mat::<f32>::zeros(n, n);
    let par = if threads == 1 {
        Par::Seq
    } else {
        Par::rayon(threads)
    };
    let mut best = f64::INFINITY;
    for _ in 0..=size.repeats {
        let start = Instant::now();
        faer::linalg::matmul::matmul(
            c.as_mut(),
            Accum::Replace,
            a.as_ref(),
            b.as_ref(),
            1.0f32,
            par,
        );
        best = best.min(start.elapsed().as_secs_f64());
        std::hint::black_box(&c);
    }
    2.0 * (n as f64).powi(3) / best / 1e9
}

/// Interleaved streams each thread reads at once: one sequential stream per core is limited by
/// the line fills a core keeps in flight (here 16.7 GB/s on 2 threads against 25.6 GB/s with
/// four), and a kernel reading keys and values does better than one stream, so a peak must too.
const STREAMS_PER_THREAD: usize = 4;

/// Sums `stream` split over the current pool's threads, each reading its part as
/// [`STREAMS_PER_THREAD`] interleaved streams; sixteen independent accumulators per stream let
/// the compiler vectorise, so the loop is limited by memory, not by adds.
fn read_bandwidth_gbps(stream: &[f32], repeats: usize) -> f64 {
    use rayon::prelude::*;
    let threads = rayon::current_num_threads();
    let chunk = stream.len().div_ceil(threads);
    let mut best = f64::INFINITY;
    for _ in 0..=repeats {
        let start = Instant::now();
        let total: f32 = stream.par_chunks(chunk).map(sum_interleaved).sum();
        best = best.min(start.elapsed().as_secs_f64());
        std::hint::black_box(total);
    }
    std::mem::size_of_val(stream) as f64 / best / 1e9
}

/// The sum of `part`, read as [`STREAMS_PER_THREAD`] streams advancing side by side.
fn sum_interleaved(part: &[f32]) -> f32 {
    const LANES: usize = 16;
    let per = part.len() / STREAMS_PER_THREAD / LANES * LANES;
    let streams: [&[f32]; STREAMS_PER_THREAD] =
        std::array::from_fn(|s| &part[s * per..(s + 1) * per]);
    let mut acc = [[0.0f32; LANES]; STREAMS_PER_THREAD];
    for i in (0..per).step_by(LANES) {
        for (acc_s, stream) in acc.iter_mut().zip(&streams) {
            for (a, v) in acc_s.iter_mut().zip(&stream[i..i + LANES]) {
                *a += v;
            }
        }
    }
    let rest: f32 = part[STREAMS_PER_THREAD * per..].iter().sum();
    acc.iter().flatten().sum::<f32>() + rest
}

#[cfg(test)]
mod tests {
    #[test]
    fn interleaved_sum_counts_every_value_once() {
        for len in [0, 1, 63, 64, 65, 1000, 4099] {
            let part: Vec<f32> = (0..len).map(|i| (i % 5) as f32).collect();
            let exact: f32 = part.iter().sum();
            assert_eq!(super::sum_interleaved(&part), exact, "len {len}");
        }
    }
}
