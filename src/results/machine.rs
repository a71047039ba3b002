//! The calibration file (`machine.json`): this machine's measured peaks per thread count.
//! Only the record and its JSON live here; measuring it, the rule for reusing it and the
//! roofline it gives are the `roofline` module's.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::environment::Environment;
use super::error::{ReadError, WriteError};
use super::json::{parse_json, read_text, write_json};

/// The `format` field of `machine.json`.
pub const MACHINE_FORMAT: &str = "attnbench-machine/1";

/// How big the calibration is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CalibrationSize {
    /// Side of the square f32 matrices multiplied.
    pub matmul_n: usize,
    /// Bytes of the array streamed; far beyond the last-level cache.
    pub read_bytes: usize,
    /// Repetitions; the best (fastest) is kept, as the peak is what the hardware can do.
    pub repeats: usize,
}

impl CalibrationSize {
    /// The real calibration: 2048² matmuls, a 1 GiB stream.
    pub const FULL: Self = Self {
        matmul_n: 2048,
        read_bytes: 1 << 30,
        repeats: 5,
    };
    /// A quick one for tests: numbers too low to publish.
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
    /// Peak f32 matmul GFLOP/s (faer, square products), by thread count.
    pub matmul_gflops: BTreeMap<usize, f64>,
    /// Streaming read bandwidth in GB/s (10⁹ bytes/s), by thread count.
    pub read_gbps: BTreeMap<usize, f64>,
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
