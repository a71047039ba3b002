//! When a saved calibration is reused: only on the machine it was measured on. The CPU model
//! string alone does not say that (a virtual machine's is generic, and one name covers parts
//! with different caches), so the CPU features, cache sizes, core count and memory must match
//! too; and the file must be of this build's format and cover the thread counts asked for.
//! Otherwise the reason is returned, for the run to say before it calibrates again.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::results::{Environment, MACHINE_FORMAT, Machine};

/// Why a saved calibration is not reused. Its `Display` completes a sentence whose subject is
/// the file (see [`CalibrationEvent::Stale`](super::CalibrationEvent::Stale)).
#[derive(Clone, Debug, PartialEq)]
pub enum Mismatch {
    /// There is no file.
    Missing,
    /// The file could not be read as a calibration; the reader's message, which names it.
    Unreadable(String),
    /// It was measured on another machine: what differs.
    OtherMachine(Vec<Difference>),
    /// It does not record enough of its machine to show it is this one (a file from before
    /// these were recorded): what it leaves out, e.g. `cache sizes`.
    Unrecorded(Vec<&'static str>),
    /// It was made by another version of the calibration: its `format`.
    OtherFormat(String),
    /// It has no calibration for these thread counts.
    MissingThreads(Vec<usize>),
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing => f.write_str("does not exist yet"),
            Self::Unreadable(message) => write!(f, "cannot be read ({message})"),
            Self::OtherMachine(differences) => {
                let list: Vec<String> = differences.iter().map(ToString::to_string).collect();
                write!(f, "was measured on another machine ({})", list.join("; "))
            }
            Self::Unrecorded(what) => write!(
                f,
                "does not record the {} of the machine it was measured on (an older file)",
                what.join(" and ")
            ),
            Self::OtherFormat(format) => write!(
                f,
                "was made by another version of the calibration (`{format}`; this attnbench \
                 makes `{MACHINE_FORMAT}`)"
            ),
            Self::MissingThreads(threads) => {
                write!(f, "has no calibration for threads {threads:?}")
            }
        }
    }
}

/// One way the machine of a calibration file differs from this one ("there" is the file's,
/// "here" this machine's).
#[derive(Clone, Debug, PartialEq)]
pub enum Difference {
    /// The CPU's model name.
    CpuModel {
        /// The file's.
        there: String,
        /// This machine's.
        here: String,
    },
    /// The logical cores available to the process.
    Cores {
        /// The file's.
        there: usize,
        /// This machine's.
        here: usize,
    },
    /// Total memory in bytes, `None` where unknown.
    Memory {
        /// The file's.
        there: Option<u64>,
        /// This machine's.
        here: Option<u64>,
    },
    /// The CPU features one side has and the other has not.
    CpuFeatures {
        /// Only the file's machine has these.
        only_there: Vec<String>,
        /// Only this machine has these.
        only_here: Vec<String>,
    },
    /// The caches whose sizes differ, bytes by name (`L1d`, `L2`, ...); a cache one side does
    /// not list is absent from its map.
    CacheSizes {
        /// The file's sizes of those caches.
        there: BTreeMap<String, u64>,
        /// This machine's.
        here: BTreeMap<String, u64>,
    },
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::CpuModel { there, here } => {
                write!(f, "CPU models differ: `{there}` there, `{here}` here")
            }
            Self::Cores { there, here } => {
                write!(f, "core counts differ: {there} there, {here} here")
            }
            Self::Memory { there, here } => {
                let show = |m: &Option<u64>| m.map_or("unknown".into(), |b| format!("{b} bytes"));
                write!(
                    f,
                    "memory sizes differ: {} there, {} here",
                    show(there),
                    show(here)
                )
            }
            Self::CpuFeatures {
                only_there,
                only_here,
            } => {
                let show = |v: &[String]| match v {
                    [] => "none".to_string(),
                    _ => v.join(" "),
                };
                write!(
                    f,
                    "CPU features differ: {} only there, {} only here",
                    show(only_there),
                    show(only_here)
                )
            }
            Self::CacheSizes { there, here } => {
                let names: BTreeSet<&String> = there.keys().chain(here.keys()).collect();
                let show = |m: &BTreeMap<String, u64>, name: &String| {
                    m.get(name).map_or("none".into(), |&b| cache_size(b))
                };
                let each: Vec<String> = names
                    .into_iter()
                    .map(|name| {
                        format!(
                            "{name} {} there, {} here",
                            show(there, name),
                            show(here, name)
                        )
                    })
                    .collect();
                write!(f, "cache sizes differ: {}", each.join(", "))
            }
        }
    }
}

/// A cache size as sysfs gives it: whole KiB or MiB when it is one.
fn cache_size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} bytes"),
    }
}

impl Machine {
    /// Why this calibration must not be used for a run on `threads` threads on the machine
    /// described by `now`, or `None` when it may: it was measured on the same machine (CPU
    /// model, CPU features, cache sizes, cores and memory all match; a file that does not
    /// record one of them does not match), by this build's calibration, for every count in
    /// `threads`.
    pub fn mismatch(&self, now: &Environment, threads: &[usize]) -> Option<Mismatch> {
        let (differences, unrecorded) = compare(&self.environment, now);
        if !differences.is_empty() {
            return Some(Mismatch::OtherMachine(differences));
        }
        if !unrecorded.is_empty() {
            return Some(Mismatch::Unrecorded(unrecorded));
        }
        if self.format != MACHINE_FORMAT {
            return Some(Mismatch::OtherFormat(self.format.clone()));
        }
        let missing: Vec<usize> = threads
            .iter()
            .copied()
            .filter(|&t| !self.covers(t))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        (!missing.is_empty()).then_some(Mismatch::MissingThreads(missing))
    }
}

/// What differs between the machine of `there` and that of `here`, and what `there` does not
/// record.
fn compare(there: &Environment, here: &Environment) -> (Vec<Difference>, Vec<&'static str>) {
    let mut differences = Vec::new();
    let mut unrecorded = Vec::new();
    if there.cpu_model != here.cpu_model {
        differences.push(Difference::CpuModel {
            there: there.cpu_model.clone(),
            here: here.cpu_model.clone(),
        });
    }
    if there.cores != here.cores {
        differences.push(Difference::Cores {
            there: there.cores,
            here: here.cores,
        });
    }
    if there.memory_bytes != here.memory_bytes {
        differences.push(Difference::Memory {
            there: there.memory_bytes,
            here: here.memory_bytes,
        });
    }
    match (&there.cpu_features, &here.cpu_features) {
        (None, _) => unrecorded.push("CPU features"),
        (Some(t), Some(h)) if t != h => differences.push(Difference::CpuFeatures {
            only_there: t.iter().filter(|f| !h.contains(f)).cloned().collect(),
            only_here: h.iter().filter(|f| !t.contains(f)).cloned().collect(),
        }),
        _ => {}
    }
    match (&there.cache_bytes, &here.cache_bytes) {
        (None, _) => unrecorded.push("cache sizes"),
        (Some(t), Some(h)) if t != h => {
            let differs = |name: &String| t.get(name) != h.get(name);
            let only = |m: &BTreeMap<String, u64>| -> BTreeMap<String, u64> {
                m.iter()
                    .filter(|(name, _)| differs(name))
                    .map(|(name, &b)| (name.clone(), b))
                    .collect()
            };
            differences.push(Difference::CacheSizes {
                there: only(t),
                here: only(h),
            });
        }
        _ => {}
    }
    (differences, unrecorded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_sizes_read_as_sysfs_writes_them() {
        assert_eq!(cache_size(48 << 10), "48 KiB");
        assert_eq!(cache_size(32 << 20), "32 MiB");
        assert_eq!(cache_size(1536 << 10), "1536 KiB");
        assert_eq!(cache_size(1000), "1000 bytes");
    }
}
