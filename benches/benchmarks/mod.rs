//! Benchmark groups, one module per group family, and the glue that turns an experiment grid
//! into criterion benchmarks.

pub mod precision;
pub mod sweeps;

use std::time::{Duration, Instant};

use attnbench::experiment::parse_experiment;
use attnbench::harness::PreparedPoint;
use criterion::{AxisScale, BenchmarkId, Criterion, PlotConfiguration, SamplingMode, Throughput};

/// True when `ATTNBENCH_EXPERIMENT` names an experiment file: then only its grid runs.
pub fn experiment_requested() -> bool {
    std::env::var_os("ATTNBENCH_EXPERIMENT").is_some()
}

/// Runs every point of an experiment grid (TOML text, as in `variants/`) as one criterion
/// group named `group`. Ids name the point: `gqa/decode/ctx4096_h32_kv8_b1_t2`.
pub fn bench_grid(c: &mut Criterion, group: &str, file: &str, toml: &str) {
    let experiment =
        parse_experiment(toml, file, group, u64::MAX).unwrap_or_else(|e| panic!("{e}"));
    let mut g = c.benchmark_group(group);
    // Lengths double along every axis: a log axis shows them evenly.
    g.plot_config(PlotConfiguration::default().summary_scale(AxisScale::Logarithmic));
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_millis(1500))
        // Steps take milliseconds: flat sampling keeps long points from taking minutes.
        .sampling_mode(SamplingMode::Flat);
    for point in &experiment.points {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(point.threads)
            .build()
            .unwrap();
        let mut prepared = PreparedPoint::new(point, experiment.seed).unwrap();
        g.throughput(Throughput::Elements((point.batch * point.seq_len) as u64));
        let id = BenchmarkId::new(
            format!("{}/{}", point.spec.label(), point.mode),
            point.parameters(),
        );
        // The timing runs inside the point's pool, so that the step's parallel regions use
        // exactly `threads` threads and no per-iteration hand-off to the pool is timed.
        g.bench_function(id, |b| {
            b.iter_custom(|iters| {
                pool.install(|| {
                    let start = Instant::now();
                    for _ in 0..iters {
                        prepared.step().unwrap();
                        std::hint::black_box(prepared.output());
                    }
                    start.elapsed()
                })
            })
        });
    }
    g.finish();
}
