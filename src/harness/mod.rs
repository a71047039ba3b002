//! The harness: preparing points outside the timing, sampling them, counting their heap, and
//! running whole experiments with a log that survives a kill. What it records, and where,
//! is the results store's ([`crate::results`]).

pub mod alloc;
mod flush;
mod measure;
mod run;

pub use alloc::{CountingAllocator, measure_peak};
pub use flush::CacheFlusher;
pub use measure::{PreparedPoint, max_rel_err, sample};
pub use run::{Existing, Progress, RunError, measure_point, run_experiment};
