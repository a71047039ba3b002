//! The calibration file (`machine.json`): this machine's measured peaks per thread count, and
//! the access pattern and matmul shape that reached each. Only the record and its JSON live
//! here; measuring it, the rule for reusing it and the roofline it gives are the `roofline`
//! module's.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::environment::Environment;
use super::error::{ReadError, WriteError};
use super::json::{parse_json, read_text, write_json};

/// The `format` field of `machine.json`. Version 2 takes the best of several read patterns and
/// matmul shapes and records which won, and its environment records the CPU features and cache
/// sizes; a version 1 file still reads (without patterns), but is not reused.
pub const MACHINE_FORMAT: &str = "attnbench-machine/2";

/// How big the calibration is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CalibrationSize {
    /// The largest side of the f32 products tried: squares of `matmul_n / 2` and `matmul_n`,
    /// and attention-like and tall-skinny shapes with `matmul_n` rows
    /// ([`MatmulPattern`]).
    pub matmul_n: usize,
    /// Bytes of the array streamed; far beyond the last-level cache.
    pub read_bytes: usize,
    /// Repetitions; the best (fastest) is kept, as the peak is what the hardware can do.
    pub repeats: usize,
}

impl CalibrationSize {
    /// The real calibration: products up to 2048 (squares of 1024 and 2048, attention's at
    /// 2048 tokens, a tall-skinny one of 8192 rows), a 1 GiB stream.
    pub const FULL: Self = Self {
        matmul_n: 2048,
        read_bytes: 1 << 30,
        repeats: 5,
    };
    /// A quick one for tests, not to publish: products up to 256, and a 16 MiB stream that a
    /// last-level cache may hold (so its bandwidth may be the cache's, not the memory's).
    pub const QUICK: Self = Self {
        matmul_n: 256,
        read_bytes: 16 << 20,
        repeats: 2,
    };
}

/// This machine's measured peaks, per thread count: what `machine.json` holds, and what a
/// results file records of the calibration its roofline columns use.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// Always [`MACHINE_FORMAT`].
    pub format: String,
    /// Where it was measured.
    pub environment: Environment,
    /// The calibration's size.
    pub size: CalibrationSize,
    /// Peak f32 matmul GFLOP/s (faer, the best of the shapes tried), by thread count.
    pub matmul_gflops: BTreeMap<usize, f64>,
    /// The product that reached `matmul_gflops`, by thread count. Empty in format 1 files,
    /// which multiplied squares of `matmul_n` only.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub matmul_pattern: BTreeMap<usize, MatmulPattern>,
    /// Streaming read bandwidth in GB/s (10⁹ bytes/s, the best of the patterns tried), by
    /// thread count.
    pub read_gbps: BTreeMap<usize, f64>,
    /// The access pattern that reached `read_gbps`, by thread count. Empty in format 1 files,
    /// which read four interleaved streams per thread with the portable loop only.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub read_pattern: BTreeMap<usize, ReadPattern>,
}

impl Machine {
    /// True when it has both ceilings (matmul and read) for `threads` threads, so that a point
    /// run on that many threads has a roofline.
    pub fn covers(&self, threads: usize) -> bool {
        self.matmul_gflops.contains_key(&threads) && self.read_gbps.contains_key(&threads)
    }
}

/// How a read of the calibration array was done: each thread cuts its part into
/// `streams_per_thread` pieces and reads them side by side, one cache line of each in turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadPattern {
    /// Streams each thread reads at once (1 to 16): more streams keep more line fills in
    /// flight, as the decode kernel's eight key streams do.
    pub streams_per_thread: usize,
    /// The loads the loop is written with.
    pub loads: VectorLoads,
    /// Whether every stream is also prefetched in software, some lines ahead of its loads.
    pub prefetch: bool,
}

impl fmt::Display for ReadPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} stream(s) per thread, {} loads, {}",
            self.streams_per_thread,
            self.loads,
            if self.prefetch {
                "software prefetch"
            } else {
                "no software prefetch"
            }
        )
    }
}

/// The vector loads of a read loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VectorLoads {
    /// 512-bit loads (x86-64 with AVX-512F, detected at run time).
    Avx512,
    /// 256-bit loads (x86-64 with AVX2, detected at run time).
    Avx2,
    /// The loop as compiled for the crate's target (SSE2's 128 bits on x86-64).
    Portable,
}

impl fmt::Display for VectorLoads {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Avx512 => "avx512",
            Self::Avx2 => "avx2",
            Self::Portable => "portable",
        })
    }
}

/// One f32 product faer was timed on: `(m × k) · (k × n)`, its left operand's layout, and how
/// the threads shared the work.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MatmulPattern {
    /// Rows of the left operand and of the product.
    pub m: usize,
    /// Columns of the left operand, rows of the right one.
    pub k: usize,
    /// Columns of the right operand and of the product.
    pub n: usize,
    /// The left operand's layout (the right operand and the product are column-major).
    pub lhs: Layout,
    /// How the threads shared the work.
    pub parallel: MatmulParallel,
}

impl fmt::Display for MatmulPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "({m}×{k})·({k}×{n}), left operand {}, {}",
            self.lhs,
            self.parallel,
            m = self.m,
            k = self.k,
            n = self.n
        )
    }
}

/// A matrix operand's memory layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Layout {
    /// Columns contiguous: faer reads the left operand in place unless the shape calls for
    /// packing it.
    ColumnMajor,
    /// Rows contiguous (a transposed view): faer always packs it first.
    RowMajor,
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ColumnMajor => "column-major",
            Self::RowMajor => "row-major",
        })
    }
}

/// How the threads of a calibration share its matmuls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MatmulParallel {
    /// One product, split by faer over the threads (`Par::rayon`; `Par::Seq` on one thread),
    /// as the projections run.
    Split,
    /// One product per thread, each sequential (`Par::Seq`), as the attention kernels run
    /// their heads.
    PerThread,
}

impl fmt::Display for MatmulParallel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Split => "one product over the threads",
            Self::PerThread => "one product per thread",
        })
    }
}

/// Reads a machine file. Its format version is not checked here: a caller that reuses the
/// calibration checks it with the rest of what must match.
pub fn read_machine(path: &Path) -> Result<Machine, ReadError> {
    parse_json(path, &read_text(path)?, "a calibration file")
}

/// Writes a machine file atomically.
pub fn write_machine(path: &Path, machine: &Machine) -> Result<(), WriteError> {
    write_json(path, machine)
}
