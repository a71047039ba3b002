//! The environment a run records: machine, toolchain, revision, date, command line.

use serde::{Deserialize, Serialize};

use crate::config::{GibError, gib_to_bytes};

/// Where and how a result set was measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Environment {
    /// `model name` from `/proc/cpuinfo`, or `unknown`.
    pub cpu_model: String,
    /// Logical cores available to the process.
    pub cores: usize,
    /// Distinct thread counts the points ran with.
    pub threads: Vec<usize>,
    /// Total memory, from `/proc/meminfo`.
    pub memory_bytes: Option<u64>,
    /// `std::env::consts::OS` / `ARCH`.
    pub os: String,
    /// `rustc --version` of the compiler that built the binary.
    pub rustc: String,
    /// attnbench's version.
    pub crate_version: String,
    /// `git rev-parse HEAD` of the sources the binary was built from, `+dirty` when they had
    /// uncommitted changes.
    pub git_revision: String,
    /// When the run started, UTC, ISO 8601.
    pub date: String,
    /// The command line.
    pub command_line: String,
}

impl Environment {
    /// Reads the environment now.
    pub fn capture(threads: Vec<usize>) -> Self {
        Self {
            cpu_model: cpu_model(),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            threads,
            memory_bytes: total_memory_bytes(),
            os: format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH),
            rustc: env!("ATTNBENCH_RUSTC_VERSION").to_string(),
            crate_version: env!("CARGO_PKG_VERSION").to_string(),
            git_revision: env!("ATTNBENCH_GIT_REVISION").to_string(),
            date: utc_now_iso8601(),
            command_line: std::env::args().collect::<Vec<_>>().join(" "),
        }
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Total memory of this machine, from `/proc/meminfo`.
pub fn total_memory_bytes() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The memory limit per point when nobody gives one and this machine's memory is unknown.
const FALLBACK_MEMORY_LIMIT_BYTES: u64 = 8 << 30;

/// The memory limit per point, in bytes, that an experiment gets when its file sets no
/// `measure.memory_limit_gib` (the `memory_limit_default` of
/// [`load_experiment`](crate::experiment::load_experiment)): `limit_gib` GiB when given, else
/// half of this machine's memory, 8 GiB when that is unknown.
///
/// # Errors
/// [`GibError`] when `limit_gib` is not a positive finite size below 2^64 bytes.
pub fn memory_limit_bytes(limit_gib: Option<f64>) -> Result<u64, GibError> {
    match limit_gib {
        Some(gib) => gib_to_bytes(gib),
        None => Ok(total_memory_bytes().map_or(FALLBACK_MEMORY_LIMIT_BYTES, |m| m / 2)),
    }
}

/// Now, UTC, as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc_now_iso8601() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_limit_is_the_given_size_else_half_the_machine() {
        assert_eq!(memory_limit_bytes(Some(1.5)), Ok(3 << 29));
        assert_eq!(memory_limit_bytes(Some(0.0)), Err(GibError::NotPositive));
        let expected = total_memory_bytes().map_or(FALLBACK_MEMORY_LIMIT_BYTES, |m| m / 2);
        assert_eq!(memory_limit_bytes(None), Ok(expected));
    }
}
