//! One point: build it outside the timing and sample its step; the statistics of the samples
//! are the results store's ([`crate::results::SampleStats`]).

use std::time::{Duration, Instant};

use super::flush::CacheFlusher;
use crate::config::Mode;
use crate::error::Result;
use crate::experiment::{MeasureSettings, Point};
use crate::kv_cache::KvCache;
use crate::layer::{AttentionLayer, CoreInputs};
use crate::tensor::Matrix;
use crate::variants::build_layer_with_kernel;
use crate::weights::input;

/// A point ready to time: layer, inputs, output buffer and a cache holding `context` tokens,
/// all built before any timing. Shared by `attnbench run` and the criterion benches.
pub struct PreparedPoint {
    layer: Box<dyn AttentionLayer>,
    mode: Mode,
    x: Matrix,
    out: Matrix,
    cache: KvCache,
    context: usize,
    seq_len: usize,
    seed: u64,
    core: Option<(CoreInputs, Vec<f32>)>,
}

impl PreparedPoint {
    /// Builds the layer (weights from `seed`), the inputs, and a cache of capacity
    /// `context + seq_len` per sequence already holding `context` tokens.
    pub fn new(point: &Point, seed: u64) -> Result<Self> {
        let layer = build_layer_with_kernel(&point.spec, point.kernel, seed)?;
        let d_model = point.spec.d_model();
        let rows = point.batch * point.seq_len;
        let x = input(seed, "harness/input", rows, d_model);
        let mut cache = layer.new_cache(point.batch, point.context + point.seq_len)?;
        cache.fill_synthetic(point.context, seed)?;
        Ok(Self {
            layer,
            mode: point.mode,
            x,
            out: Matrix::zeros(rows, d_model),
            cache,
            context: point.context,
            seq_len: point.seq_len,
            seed,
            core: None,
        })
    }

    /// Runs one step so the cache holds `context + seq_len` tokens, then prepares the
    /// attention core's own inputs (random queries; MLA naive's expanded keys and values).
    pub fn prepare_core(&mut self) -> Result<()> {
        self.step()?;
        let inputs = self.layer.core_inputs(&self.cache, self.seq_len, self.seed);
        let out = vec![0.0f32; inputs.out_len];
        self.core = Some((inputs, out));
        Ok(())
    }

    /// The attention core alone, over the cache as [`prepare_core`](Self::prepare_core) left
    /// it. Does nothing before that.
    pub fn core_step(&mut self) {
        if let Some((inputs, out)) = &mut self.core {
            self.layer.run_core(inputs, &self.cache, out);
        }
    }

    /// The last core step's output (empty before [`prepare_core`](Self::prepare_core)).
    pub fn core_output(&self) -> &[f32] {
        self.core.as_ref().map_or(&[], |(_, out)| out)
    }

    /// One step: roll the cache back to `context` tokens (O(1): a cursor moves) and run the
    /// prefill or decode that the point names.
    pub fn step(&mut self) -> Result<()> {
        self.cache.truncate(self.context);
        match self.mode {
            Mode::Prefill => self.layer.prefill(&self.x, &mut self.cache, &mut self.out),
            Mode::Decode => self.layer.decode(&self.x, &mut self.cache, &mut self.out),
        }
    }

    /// The last step's output, `(batch · seq_len, d_model)`.
    pub fn output(&self) -> &Matrix {
        &self.out
    }

    /// The cache.
    pub fn cache(&self) -> &KvCache {
        &self.cache
    }
}

/// Warm-up bounded by `warmup_iters` and `warmup_ms`, then samples until `max_samples`, or
/// until `time_budget_ms` has passed with at least `min_samples`. Each sample times one call
/// of `step`; with `flush_caches`, the CPU caches are evicted before each (untimed, but inside
/// the time budget). Checks on the output happen after, outside the timing.
pub fn sample(
    settings: &MeasureSettings,
    mut step: impl FnMut() -> Result<()>,
) -> Result<Vec<f64>> {
    let warmup_start = Instant::now();
    for _ in 0..settings.warmup_iters {
        if warmup_start.elapsed() >= settings.warmup() {
            break;
        }
        step()?;
    }
    let mut samples = Vec::with_capacity(settings.max_samples.min(4096));
    let start = Instant::now();
    while samples.len() < settings.max_samples
        && (samples.len() < settings.min_samples || start.elapsed() < settings.time_budget())
    {
        if settings.flush_caches {
            CacheFlusher::shared().flush();
        }
        let t0 = Instant::now();
        step()?;
        samples.push(duration_ns(t0.elapsed()));
    }
    Ok(samples)
}

fn duration_ns(d: Duration) -> f64 {
    d.as_secs_f64() * 1e9
}
