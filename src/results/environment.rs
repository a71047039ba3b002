//! The environment a run records: machine, toolchain, revision, date, command line.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::{GibError, gib_to_bytes};
use crate::kernels::{decode_path, narrow_path, prefill_path};
use crate::sysinfo::cache_bytes;

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
    /// The CPU features the kernels and faer choose their code by, as the standard library
    /// detects them at run time ([`cpu_features`]), e.g. `avx2`, `fma`, `avx512f`. `None` in
    /// files written before they were recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_features: Option<Vec<String>>,
    /// CPU 0's caches, bytes by level and kind (`L1d`, `L1i`, `L2`, `L3`), from Linux's sysfs
    /// ([`cache_bytes`]; empty where the system does not say). `None` in files written before
    /// they were recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_bytes: Option<BTreeMap<String, u64>>,
    /// The code the kernels over a bf16, f16 or int8 cache run on this machine
    /// ([`narrow_path`]): `avx512f`, `avx2+fma+f16c` or `portable`. Recorded on every run, since it is
    /// the machine's and the binary's, whatever the points store. `None` in files written
    /// before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub narrow_path: Option<String>,
    /// The code the wide decode tiles (many query rows over keys 256 values wide and more:
    /// MLA absorbed) run on this machine ([`decode_path`]): `avx512f`, `avx2+fma` or
    /// `portable`. `None` in files written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decode_path: Option<String>,
    /// The code prefill's block loop over more than 8 packed query rows runs on this machine
    /// ([`prefill_path`]): `avx512f` or `faer`. `None` in files written before it was
    /// recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefill_path: Option<String>,
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
    /// What measured the set when it is not attnbench: a peer's implementation (e.g.
    /// `pytorch-sdpa`, written by tools/peers/pytorch_core.py). `None` for attnbench's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub implementation: Option<String>,
    /// The peer's versions and build by name, sorted (e.g. `cpu_capability`,
    /// `parallel_backend`, `python`, `torch`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub implementation_versions: Option<BTreeMap<String, serde_json::Value>>,
    /// The read bandwidth, GB/s, probed at the start and at the end of the run by thread
    /// count, with the calibration's best pattern for that count (`roofline::ReadProber`): a
    /// shared machine's bandwidth moves with its neighbours' load, and a roofline percentage
    /// divides by the calibration's. `None` for a run without calibration and in files
    /// written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_probe_gbps: Option<BTreeMap<usize, RunProbe>>,
    /// The matmul rate, GFLOP/s, probed at the start and at the end of the run by thread
    /// count, with the calibration's best product for that count (`Machine::probe_matmul`),
    /// for the same reason: the compute-bound percentages divide by the calibration's rate.
    /// `None` as for `read_probe_gbps`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matmul_probe_gflops: Option<BTreeMap<usize, RunProbe>>,
}

/// A ceiling of one thread count probed around a run: the read bandwidth (GB/s) or the
/// matmul rate (GFLOP/s).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunProbe {
    /// Before the first point.
    pub start: f64,
    /// After the last point.
    pub end: f64,
}

impl Environment {
    /// Whether two environments are the same machine as far as a measurement can tell: the
    /// same CPU model, cores, memory, CPU features, caches and OS. The date, the command line
    /// and the toolchain do not count; ratios between points of different machines are not
    /// comparable.
    pub fn same_machine(&self, other: &Environment) -> bool {
        (
            &self.cpu_model,
            self.cores,
            self.memory_bytes,
            &self.cpu_features,
            &self.cache_bytes,
            &self.os,
        ) == (
            &other.cpu_model,
            other.cores,
            other.memory_bytes,
            &other.cpu_features,
            &other.cache_bytes,
            &other.os,
        )
    }

    /// Reads the environment now.
    pub fn capture(threads: Vec<usize>) -> Self {
        Self {
            cpu_model: cpu_model(),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            threads,
            memory_bytes: total_memory_bytes(),
            cpu_features: Some(cpu_features()),
            cache_bytes: Some(cache_bytes()),
            narrow_path: Some(narrow_path().to_string()),
            decode_path: Some(decode_path().to_string()),
            prefill_path: Some(prefill_path().to_string()),
            os: format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH),
            rustc: env!("ATTNBENCH_RUSTC_VERSION").to_string(),
            crate_version: env!("CARGO_PKG_VERSION").to_string(),
            git_revision: env!("ATTNBENCH_GIT_REVISION").to_string(),
            date: utc_now_iso8601(),
            command_line: std::env::args().collect::<Vec<_>>().join(" "),
            implementation: None,
            implementation_versions: None,
            read_probe_gbps: None,
            matmul_probe_gflops: None,
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

/// The CPU features this CPU has, detected at run time, of a fixed list: the vector
/// instruction sets the kernels, faer and the calibration choose code by (`avx2`, `fma`,
/// `avx512f`, ... on x86-64; `neon`, `sve`, ... on AArch64; none elsewhere), in its order.
pub fn cpu_features() -> Vec<String> {
    FEATURES
        .iter()
        .filter(|(_, has)| has())
        .map(|(name, _)| name.to_string())
        .collect()
}

/// A CPU feature's name and its run-time check.
type FeatureCheck = (&'static str, fn() -> bool);

/// The CPU features recorded in an environment, each with its run-time check: the vector
/// instruction sets the kernels, faer and the calibration choose code by (and the arithmetic
/// extensions beside them), named as `is_x86_feature_detected!` names them.
#[cfg(target_arch = "x86_64")]
const FEATURES: &[FeatureCheck] = {
    use std::arch::is_x86_feature_detected as has;
    &[
        ("sse3", || has!("sse3")),
        ("ssse3", || has!("ssse3")),
        ("sse4.1", || has!("sse4.1")),
        ("sse4.2", || has!("sse4.2")),
        ("avx", || has!("avx")),
        ("avx2", || has!("avx2")),
        ("fma", || has!("fma")),
        ("f16c", || has!("f16c")),
        ("avx512f", || has!("avx512f")),
        ("avx512cd", || has!("avx512cd")),
        ("avx512dq", || has!("avx512dq")),
        ("avx512bw", || has!("avx512bw")),
        ("avx512vl", || has!("avx512vl")),
        ("avx512vnni", || has!("avx512vnni")),
        ("avx512bf16", || has!("avx512bf16")),
        ("avx512fp16", || has!("avx512fp16")),
    ]
};

/// As on x86-64, with `is_aarch64_feature_detected!`'s names.
#[cfg(target_arch = "aarch64")]
const FEATURES: &[FeatureCheck] = {
    use std::arch::is_aarch64_feature_detected as has;
    &[
        ("neon", || has!("neon")),
        ("fp16", || has!("fp16")),
        ("dotprod", || has!("dotprod")),
        ("bf16", || has!("bf16")),
        ("i8mm", || has!("i8mm")),
        ("sve", || has!("sve")),
        ("sve2", || has!("sve2")),
    ]
};

/// Elsewhere no feature is checked, and none recorded.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const FEATURES: &[FeatureCheck] = &[];

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
