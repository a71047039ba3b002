//! One point: build it outside the timing, measure its accuracy against the f32 layer, and
//! sample its step; the statistics of the samples are the results store's
//! ([`crate::results::SampleStats`]).

use std::time::{Duration, Instant};

use super::flush::CacheFlusher;
use crate::config::{Mode, Precision};
use crate::error::Result;
use crate::experiment::{MeasureSettings, Point};
use crate::kv_cache::KvCache;
use crate::layer::{AttentionLayer, CoreInputs};
use crate::tensor::Matrix;
use crate::variants::build_layer_with;
use crate::weights::input;

/// A point ready to time: layer, inputs, output buffer and a cache holding `context` tokens,
/// all built before any timing. Shared by `attnbench run` and the criterion benches.
pub struct PreparedPoint {
    layer: Box<dyn AttentionLayer>,
    point: Point,
    x: Matrix,
    out: Matrix,
    cache: KvCache,
    seed: u64,
    core: Option<(CoreInputs, Vec<f32>)>,
}

/// A layer with its own cache (capacity `context + seq_len` per sequence, holding `context`
/// synthetic tokens from `seed`), as the point stores them.
fn build(
    point: &Point,
    precision: Precision,
    seed: u64,
) -> Result<(Box<dyn AttentionLayer>, KvCache)> {
    let layer = build_layer_with(&point.spec, point.kernel, precision, seed)?;
    let mut cache = layer.new_cache(point.batch, point.context + point.seq_len)?;
    cache.fill_synthetic(point.context, seed)?;
    Ok((layer, cache))
}

/// One step of `mode` from `context` cached tokens: the cache rolled back (O(1): a cursor
/// moves), then the prefill or decode.
fn run_step(
    layer: &dyn AttentionLayer,
    mode: Mode,
    context: usize,
    x: &Matrix,
    cache: &mut KvCache,
    out: &mut Matrix,
) -> Result<()> {
    cache.truncate(context);
    match mode {
        Mode::Prefill => layer.prefill(x, cache, out),
        Mode::Decode => layer.decode(x, cache, out),
    }
}

impl PreparedPoint {
    /// Builds the layer (weights from `seed`, stored as the point's precision says), the
    /// inputs, and a cache of capacity `context + seq_len` per sequence already holding
    /// `context` tokens.
    pub fn new(point: &Point, seed: u64) -> Result<Self> {
        let (layer, cache) = build(point, point.precision, seed)?;
        let d_model = point.spec.d_model();
        let rows = point.batch * point.seq_len;
        let x = input(seed, "harness/input", rows, d_model);
        Ok(Self {
            layer,
            point: point.clone(),
            x,
            out: Matrix::zeros(rows, d_model),
            cache,
            seed,
            core: None,
        })
    }

    /// The accuracy of the point's stored types (docs/design.md §5): one step of the point's
    /// mode from its prepared state, `y`, against the same step of the f32 layer with the same
    /// master weights (same seed), on the same input, over an f32 cache holding the same
    /// synthetic tokens unrounded, `y_ref`: [`max_rel_err`]`(y, y_ref)`. `None` when an output
    /// is not finite (the point's own non-finite output is reported by its checks). Run it
    /// outside any timing: the reference layer and cache live only inside this call, and the
    /// point's cache is left as it was prepared.
    pub fn max_rel_err(&mut self) -> Result<Option<f64>> {
        if self.point.precision.is_f32() {
            // Set, not computed: an f32 point's layer is its own reference (the same build
            // from the same seed, input and cache), so the error is 0 by construction, and
            // building a second copy would double the point's memory for nothing.
            return Ok(Some(0.0));
        }
        let y_ref = self.reference_output()?;
        self.step()?;
        self.cache.truncate(self.point.context);
        Ok(max_rel_err(self.out.data(), y_ref.data()))
    }

    /// The f32 layer's output for the step, its layer and cache dropped on return.
    fn reference_output(&self) -> Result<Matrix> {
        let p = &self.point;
        let (layer, mut cache) = build(p, Precision::default(), self.seed)?;
        let mut y_ref = Matrix::zeros(self.x.rows(), p.spec.d_model());
        run_step(&*layer, p.mode, p.context, &self.x, &mut cache, &mut y_ref)?;
        Ok(y_ref)
    }

    /// Runs one step so the cache holds `context + seq_len` tokens, then prepares the
    /// attention core's own inputs (random queries; MLA naive's expanded keys and values).
    pub fn prepare_core(&mut self) -> Result<()> {
        self.step()?;
        let inputs = self
            .layer
            .core_inputs(&self.cache, self.point.seq_len, self.seed);
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
        let (mode, context) = (self.point.mode, self.point.context);
        run_step(
            &*self.layer,
            mode,
            context,
            &self.x,
            &mut self.cache,
            &mut self.out,
        )
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

/// `max|y − y_ref| / max|y_ref|` over two outputs of the same shape, in f64: the largest
/// error relative to the largest reference value (docs/design.md §5), so that outputs near
/// zero do not inflate it. 0 when both are all zeros, infinite when only `y_ref` is; `None`
/// when a value of either is not finite.
///
/// # Panics
/// If the slices differ in length.
pub fn max_rel_err(y: &[f32], y_ref: &[f32]) -> Option<f64> {
    assert_eq!(y.len(), y_ref.len(), "outputs of different shapes");
    let (mut error, mut scale) = (0.0f64, 0.0f64);
    for (&a, &b) in y.iter().zip(y_ref) {
        if !a.is_finite() || !b.is_finite() {
            return None;
        }
        error = error.max((f64::from(a) - f64::from(b)).abs());
        scale = scale.max(f64::from(b).abs());
    }
    Some(if error == 0.0 { 0.0 } else { error / scale })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_rel_err_is_the_largest_error_over_the_largest_reference() {
        assert_eq!(max_rel_err(&[1.0, 2.0], &[1.0, 2.0]), Some(0.0));
        assert_eq!(max_rel_err(&[0.0, 0.0], &[0.0, 0.0]), Some(0.0));
        // 0.5 off at a small value, over the largest reference 4: 0.125, not 0.5 / 0.5.
        assert_eq!(max_rel_err(&[1.0, 4.0], &[0.5, 4.0]), Some(0.125));
        // The largest error wherever it is: 8 at the sign flip.
        assert_eq!(max_rel_err(&[1.0, 4.0], &[0.5, -4.0]), Some(2.0));
        assert_eq!(max_rel_err(&[1.0], &[0.0]), Some(f64::INFINITY));
        assert_eq!(max_rel_err(&[f32::NAN], &[1.0]), None);
        assert_eq!(max_rel_err(&[1.0], &[f32::INFINITY]), None);
    }
}
