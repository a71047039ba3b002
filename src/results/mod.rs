//! The results store: the records a run writes (`results.json`, its log `points.jsonl`, the
//! calibration `machine.json`), the resolved grid a run records to be resumed only over the
//! same one ([`Grid`]), reading and writing them, and the directories they live in.
//!
//! Everything that reads or writes results goes through here: the harness (which records),
//! the roofline (which calibrates), the report (which renders) and compare (which reads two
//! sets). It imports none of them, only the experiment types a record names and the cost
//! formulas. Reading fails with a [`ReadError`] that names the file (and the line and column
//! of a JSON error, or the point and the field a report needs); writing is atomic and fails
//! with a [`WriteError`].

mod dir;
mod environment;
mod error;
mod file;
mod grid;
mod json;
mod machine;
mod merge;
mod point;
mod summary;
mod wire;

pub use dir::{LoggedRun, PointLog, ResultsDir, ResultsFolder, read_log, read_logged_run};
pub use environment::{
    Environment, RunProbe, cpu_features, memory_limit_bytes, total_memory_bytes, utc_now_iso8601,
};
pub use error::{ReadError, WriteError};
pub use file::{
    ExperimentRecord, RESULTS_FORMAT, ResultsFile, RunRecord, ShardRecord, read_results,
};
pub use grid::{Grid, RecordedGrid, fnv1a64};
pub use json::write_file;
pub use machine::{
    CalibrationSize, Layout, MACHINE_FORMAT, Machine, MatmulParallel, MatmulPattern, ReadPattern,
    VectorLoads, read_machine, write_machine,
};
pub use merge::{MergeError, Merged, Missing, Piece, Recorded, merge};
pub use point::{CoreShape, DEFAULT_IMPLEMENTATION, PointResult};
pub use summary::{SampleStats, Summary};
