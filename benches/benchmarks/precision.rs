//! The stored types (docs/design.md §5): decode over a KV cache in every stored type with f32
//! and bf16 weights, and the one product that bf16 weights must make faster, a decode
//! projection `x · W` at Llama 3 8B's 4096 × 4096.

use std::time::Instant;

use attnbench::WeightDtype;
use attnbench::kernels::{Weight, project};
use attnbench::weights::{input, projection_weight};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group};

use super::bench_grid;
use super::sweeps::MODEL;

/// Decode at one context over every stored cache type and both weight types.
const DECODE: &str = r#"
variant = ["gqa", "mla"]
mla_path = ["absorbed"]
mode = ["decode"]
context = [2048]
kv_dtype = ["f32", "bf16", "f16", "int8"]
weight_dtype = ["f32", "bf16"]
"#;

/// Llama 3 8B's query projection, `d_model` to `n_heads · head_dim`.
const PROJECTION: usize = 4096;

/// Copies of the weight cycled through, so that each product streams its weight from memory
/// (16 × 64 MiB in f32) rather than from a cache that kept the previous one.
const COPIES: usize = 16;

fn decode(c: &mut Criterion) {
    if super::experiment_requested() {
        return;
    }
    bench_grid(
        c,
        "precision_decode",
        "benches: precision_decode",
        &format!("{MODEL}\n[sweep]\n{DECODE}"),
    );
}

/// One decode row times a `4096 × 4096` weight in each weight type, the bytes it streams as
/// the throughput.
fn projection(c: &mut Criterion) {
    if super::experiment_requested() {
        return;
    }
    let mut g = c.benchmark_group("precision_projection");
    g.sample_size(10);
    let master = projection_weight(0, "bench/w", PROJECTION, PROJECTION);
    let x = input(0, "bench/x", 1, PROJECTION);
    for dtype in [WeightDtype::F32, WeightDtype::Bf16] {
        let copies: Vec<Weight> = (0..COPIES)
            .map(|_| Weight::new(master.clone(), dtype))
            .collect();
        let bytes = PROJECTION * PROJECTION * dtype.dtype().bytes() as usize;
        g.throughput(Throughput::Bytes(bytes as u64));
        g.bench_function(BenchmarkId::new("x_times_w_4096", dtype), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for i in 0..iters as usize {
                    std::hint::black_box(project(x.view(), &copies[i % COPIES]));
                }
                start.elapsed()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, decode, projection);
