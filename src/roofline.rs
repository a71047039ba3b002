//! This machine's limits, measured by the tool itself, and the roofline of every point:
//! `ideal = max(flops / peak_flops, bytes / read_bandwidth)` for the point's thread count.
//! The calibration's record and its file are the results store's ([`Machine`]); measuring
//! it (and on which thread counts), deciding when a saved one can be reused, and what it
//! implies for a point are here.
//!
//! A ceiling is only one if nothing the tool runs beats it, so each is the best of several
//! ways of doing the work: the read bandwidth over access patterns (`read`), the matmul rate
//! over faer products of several shapes, layouts and thread splits (`matmul`). Which one won
//! is recorded per thread count. When a saved calibration may be reused is `reuse`'s rule.

mod matmul;
mod read;
mod reuse;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

pub use reuse::{Difference, Mismatch};

use crate::experiment::MAX_THREADS;
use crate::results::{
    CalibrationSize, Environment, MACHINE_FORMAT, Machine, MatmulPattern, PointResult, ReadError,
    ReadPattern, WriteError, read_machine, write_machine,
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
    /// The ceilings of one thread count, and the patterns that reached them.
    Measured {
        /// The thread count.
        threads: usize,
        /// The best matmul rate, GFLOP/s.
        matmul_gflops: f64,
        /// The product that reached it.
        matmul: &'a MatmulPattern,
        /// The best read bandwidth, GB/s.
        read_gbps: f64,
        /// The read that reached it.
        read: &'a ReadPattern,
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
                "calibrating: f32 matmuls of several shapes up to {n}×{n} and reads of {} MiB in \
                 several patterns, threads {threads:?} ...",
                size.read_bytes >> 20,
                n = size.matmul_n
            ),
            Self::Measured {
                threads,
                matmul_gflops,
                matmul,
                read_gbps,
                read,
            } => write!(
                f,
                "{threads} thread(s): {matmul_gflops:.1} GFLOP/s by {matmul}; \
                 {read_gbps:.1} GB/s by {read}"
            ),
            Self::Saved(path) => write!(f, "saved {}", path.display()),
        }
    }
}

/// Bytes the read probe of a run streams ([`ReadProber`]): eight times the largest
/// last-level cache seen on the hosts so far, read three times in well under a second.
pub const PROBE_BYTES: usize = 256 << 20;

/// Probes of the read bandwidth with a calibration's patterns, over one array allocated (and
/// written, so that its pages exist) once: a run probes before every point and around the
/// whole run, and says how far the machine's bandwidth was from the ceiling its percentages
/// divide by.
pub struct ReadProber<'m> {
    machine: &'m Machine,
    stream: Vec<f32>,
}

impl<'m> ReadProber<'m> {
    /// A prober of `machine`'s patterns over [`PROBE_BYTES`] (or the calibration's own read
    /// size, if smaller).
    pub fn new(machine: &'m Machine) -> Self {
        let values = machine.size.read_bytes.min(PROBE_BYTES) / size_of::<f32>();
        let stream = (0..values).map(|i| (i % 7) as f32).collect();
        Self { machine, stream }
    }

    /// The read bandwidth now on `threads` threads, GB/s: the calibration's best pattern for
    /// that count, the fastest of three passes; `None` when the calibration has no pattern
    /// for it.
    pub fn probe(&self, threads: usize) -> Option<f64> {
        let pattern = self.machine.read_pattern.get(&threads)?;
        let (gbps, _) = in_pool(threads, || {
            read::read_ceiling(&self.stream, std::slice::from_ref(pattern), 2)
        });
        Some(gbps)
    }

    /// [`probe`](Self::probe) on each of `threads` the calibration covers (others are left
    /// out).
    pub fn probe_all(&self, threads: &[usize]) -> BTreeMap<usize, f64> {
        threads
            .iter()
            .filter_map(|&t| Some((t, self.probe(t)?)))
            .collect()
    }
}

/// Runs `f` in a rayon pool of `threads` threads (a probe's, as the calibration ran).
fn in_pool<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool")
        .install(f)
}

/// 1 and every core: the thread counts a run uses unless told otherwise.
pub fn default_calibration_threads() -> Vec<usize> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores == 1 { vec![1] } else { vec![1, cores] }
}

/// A thread count no calibration runs on: 0, or more than [`MAX_THREADS`] (no point may ask
/// for more, so no run needs them calibrated).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("must be between 1 and {MAX_THREADS}")]
pub struct ThreadCountError(pub usize);

/// The thread counts `attnbench calibrate` measures: `requested`, or
/// [`default_calibration_threads`] when it is empty.
///
/// # Errors
/// [`ThreadCountError`] with the first requested count that is 0 or above [`MAX_THREADS`].
pub fn calibration_threads(requested: Vec<usize>) -> Result<Vec<usize>, ThreadCountError> {
    if requested.is_empty() {
        return Ok(default_calibration_threads());
    }
    match requested.iter().find(|&&t| t == 0 || t > MAX_THREADS) {
        Some(&bad) => Err(ThreadCountError(bad)),
        None => Ok(requested),
    }
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
            Err(ReadError::Io { error, .. }) if error.kind() == std::io::ErrorKind::NotFound => {
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
        let machine = calibrate(
            &threads,
            size,
            Environment::capture(threads.clone()),
            report,
        );
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

    /// The matmul rate now on `threads` threads, GFLOP/s: the calibration's best product for
    /// that count, the fastest of three runs (tens of milliseconds); `None` when the
    /// calibration has no pattern for it. Why probe it: on a shared machine the second core's
    /// rate moved with its neighbours' load (322 GFLOP/s calibrated on 2 threads of a Xeon,
    /// 183 to 232 in quick calibrations an hour later), and every prefill percentage divides
    /// by the calibration's.
    pub fn probe_matmul(&self, threads: usize) -> Option<f64> {
        let pattern = self.matmul_pattern.get(&threads)?;
        let (gflops, _) = in_pool(threads, || {
            matmul::matmul_ceiling(std::slice::from_ref(pattern), threads, 2)
        });
        Some(gflops)
    }

    /// [`probe_matmul`](Self::probe_matmul) on each of `threads` the calibration covers
    /// (others are left out).
    pub fn probe_matmul_all(&self, threads: &[usize]) -> BTreeMap<usize, f64> {
        threads
            .iter()
            .filter_map(|&t| Some((t, self.probe_matmul(t)?)))
            .collect()
    }

    /// A [`ReadProber`] of this calibration's patterns (one array for all its probes).
    pub fn read_prober(&self) -> ReadProber<'_> {
        ReadProber::new(self)
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

    /// The ideal time in ns of `point`'s step when its attention core and the rest of the step
    /// (the projections, reading the weights) run one after the other, as a layer runs them:
    /// the core's ideal plus the rest's, each `max(flops / peak, bytes / bandwidth)`. The
    /// step's [`ideal_ns`](Self::ideal_ns) lets the two overlap, so when one is bound by
    /// arithmetic and the other by memory (MQA's and MLA absorbed's cores at long contexts
    /// beside projections that read the weights) this one is longer, and
    /// `step ideal / this` is the most of the step's roofline a layer that runs its phases in
    /// turn can reach. `None` without calibration for the point's thread count, and for a
    /// point without projections (a peer's core alone).
    pub fn phases_ideal_ns(&self, point: &PointResult) -> Option<f64> {
        if point.is_core_only() {
            return None;
        }
        let threads = point.threads;
        let core = self.ideal_ns(point.attention_flops, point.core_bytes, threads)?;
        let rest = self.ideal_ns(point.projection_flops, point.rest_bytes(), threads)?;
        Some(core + rest)
    }
}

/// Measures the ceilings for each thread count in `threads`, in a rayon pool of that many
/// threads: the best matmul rate of faer over several products (shapes, layouts, thread
/// splits) and the best read bandwidth over several access patterns (streams per thread,
/// vector loads, prefetch), reporting each ([`CalibrationEvent::Measured`]) and recording
/// which pattern won.
pub fn calibrate(
    threads: &[usize],
    size: CalibrationSize,
    environment: Environment,
    report: &mut dyn FnMut(CalibrationEvent<'_>),
) -> Machine {
    let mut machine = Machine {
        format: MACHINE_FORMAT.to_string(),
        environment,
        size,
        matmul_gflops: BTreeMap::new(),
        matmul_pattern: BTreeMap::new(),
        read_gbps: BTreeMap::new(),
        read_pattern: BTreeMap::new(),
    };
    let values = size.read_bytes / size_of::<f32>();
    // Written, not just reserved, so that the pages are real before the first pass.
    let stream: Vec<f32> = (0..values).map(|i| (i % 7) as f32).collect();
    let read_patterns = read::patterns();
    for &t in threads {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build()
            .expect("thread pool");
        let ((gflops, matmul), (gbps, read)) = pool.install(|| {
            let matmul_patterns = matmul::patterns(size.matmul_n, t);
            (
                matmul::matmul_ceiling(&matmul_patterns, t, size.repeats),
                read::read_ceiling(&stream, &read_patterns, size.repeats),
            )
        });
        report(CalibrationEvent::Measured {
            threads: t,
            matmul_gflops: gflops,
            matmul: &matmul,
            read_gbps: gbps,
            read: &read,
        });
        machine.matmul_gflops.insert(t, gflops);
        machine.matmul_pattern.insert(t, matmul);
        machine.read_gbps.insert(t, gbps);
        machine.read_pattern.insert(t, read);
    }
    machine
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calibration_threads_default_to_one_and_all_cores_and_refuse_impossible_counts() {
        assert_eq!(
            calibration_threads(vec![]),
            Ok(default_calibration_threads())
        );
        assert_eq!(calibration_threads(vec![3, 1]), Ok(vec![3, 1]));
        assert_eq!(calibration_threads(vec![2, 0]), Err(ThreadCountError(0)));
        let too_many = MAX_THREADS + 1;
        assert_eq!(
            calibration_threads(vec![too_many]),
            Err(ThreadCountError(too_many))
        );
    }
}
