//! `cargo bench`: criterion sweeps of every variant over sequence length, context, KV-head
//! count and head count, built with the same experiment parser and point preparation as
//! `attnbench run`.
//!
//! `ATTNBENCH_EXPERIMENT=variants/kv_heads.toml cargo bench` runs that file's grid instead of
//! the default sweeps. The `precision_*` groups time the stored types (docs/design.md §5).

mod benchmarks;

use criterion::criterion_main;

criterion_main!(benchmarks::sweeps::benches, benchmarks::precision::benches);
