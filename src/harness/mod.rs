//! The harness: preparing points outside the timing, sampling them, counting their heap,
//! recording the environment, and running whole experiments with a log that survives a kill.

pub mod alloc;
mod environment;
mod flush;
mod measure;
mod result;
mod run;

pub use alloc::{CountingAllocator, measure_peak};
pub use environment::{Environment, total_memory_bytes, utc_now_iso8601};
pub use flush::CacheFlusher;
pub use measure::{PreparedPoint, SampleStats, sample};
pub use result::{ExperimentRecord, PointResult, RESULTS_FORMAT, ResultsFile};
pub(crate) use run::parse_json;
pub use run::{
    Existing, JSON_FILE, LOG_FILE, Progress, RunError, measure_point, read_log, read_results_json,
    run_experiment, write_results_json,
};
