//! What a run records of one point.

use serde::{Deserialize, Serialize};

use super::machine::Machine;
use super::summary::{SampleStats, Summary};
use super::wire::{PointRow, PointWire};
use crate::config::{Dtype, Kernel, LayerSpec, MlaPath, Mode, Variant, WeightDtype};
use crate::cost::{core_cost, step_cost};
use crate::experiment::Point;

/// The implementation attnbench's own runs record: the default of
/// [`PointResult::implementation`], left out of `results.json` so that files from before the
/// field read and write back as they were.
pub const DEFAULT_IMPLEMENTATION: &str = "attnbench";

/// The attention core of a point as the core computes it (docs/design.md §1): every query head
/// against its KV head, causal, over the cache after the step. What a peer must time to
/// measure the same work (`attnbench validate --json` prints it per point).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CoreShape {
    /// Query heads.
    pub n_heads: usize,
    /// KV heads the query heads share, `n_heads / n_kv_heads` each: GQA's; 1 for MLA absorbed
    /// (MQA over the latent); `n_heads` for MLA naive (its keys and values expanded per head).
    pub n_kv_heads: usize,
    /// Query and key width per head: `head_dim`; MLA naive `qk_nope_head_dim +
    /// qk_rope_head_dim`; MLA absorbed `kv_lora_rank + qk_rope_head_dim` (the latent row).
    pub qk_dim: usize,
    /// Value width per head: `head_dim`; MLA naive `v_head_dim`; MLA absorbed `kv_lora_rank`.
    pub v_dim: usize,
    /// Whether a head's values are the first `v_dim` columns of its keys (MLA absorbed: one
    /// cached latent row is both), not a tensor of their own.
    pub values_in_keys: bool,
    /// The factor on the scores before the softmax: `1 / √head_dim`; MLA (both paths)
    /// `1 / √(qk_nope_head_dim + qk_rope_head_dim)`, the dot product absorption preserves.
    pub scale: f64,
    /// Causal: the query at position `p` sees the keys at positions `0..=p`.
    pub causal: bool,
    /// Queries per sequence: the step's `seq_len` (1 for decode).
    pub queries: usize,
    /// Keys per sequence: `context + seq_len`, the cache after the step.
    pub keys: usize,
    /// Position of the first query, `context`: the queries are the last `seq_len` positions,
    /// so a decode query sees every key (a mask aligned to the bottom right).
    pub first_query_position: usize,
}

impl CoreShape {
    /// The core of `point`.
    pub fn of(point: &Point) -> Self {
        let (n_heads, n_kv_heads, qk_dim, v_dim, values_in_keys, scale_dim) = match &point.spec {
            LayerSpec::Grouped { config: c, .. } => (
                c.n_heads,
                c.n_kv_heads,
                c.head_dim,
                c.head_dim,
                false,
                c.head_dim,
            ),
            LayerSpec::Mla { config: c, path } => match path {
                MlaPath::Naive => (
                    c.n_heads,
                    c.n_heads,
                    c.qk_head_dim(),
                    c.v_head_dim,
                    false,
                    c.qk_head_dim(),
                ),
                MlaPath::Absorbed => (
                    c.n_heads,
                    1,
                    c.kv_values_per_token(),
                    c.kv_lora_rank,
                    true,
                    c.qk_head_dim(),
                ),
            },
        };
        Self {
            n_heads,
            n_kv_heads,
            qk_dim,
            v_dim,
            values_in_keys,
            scale: 1.0 / (scale_dim as f64).sqrt(),
            causal: true,
            queries: point.seq_len,
            keys: point.context + point.seq_len,
            first_query_position: point.context,
        }
    }
}

/// One measured point: what was measured, the timing summary, the cost by formula, the
/// memory measured, and `error` when it failed (a failure is data; the sweep goes on).
///
/// On disk (`results.json`, `points.jsonl`, `results.csv`) it is one flat record, the
/// `attnbench-results/1` format, in which the core's fields are prefixed `core_`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(from = "PointWire", into = "PointWire")]
pub struct PointResult {
    /// Unique key, e.g. `gqa/decode/ctx4096_h32_kv8_b1_t2`.
    pub key: String,
    /// What measured the point: [`DEFAULT_IMPLEMENTATION`] for attnbench itself, another name
    /// for a peer timed on the same shapes (`pytorch-sdpa`, `pytorch-matmul`, `numpy-matmul`
    /// from `tools/peers/pytorch_core.py`). A peer measures the attention core alone: its
    /// step is its core ([`is_core_only`](Self::is_core_only)).
    pub implementation: String,
    /// Variant.
    pub variant: Variant,
    /// MLA path (MLA only).
    pub mla_path: Option<MlaPath>,
    /// Prefill or decode.
    pub mode: Mode,
    /// New tokens per sequence (1 for decode).
    pub seq_len: usize,
    /// Tokens already in each sequence's cache before the step.
    pub context: usize,
    /// Sequences.
    pub batch: usize,
    /// Residual width.
    pub d_model: usize,
    /// Query heads.
    pub n_heads: usize,
    /// KV heads (MHA/GQA/MQA).
    pub n_kv_heads: Option<usize>,
    /// Head width (MHA/GQA/MQA).
    pub head_dim: Option<usize>,
    /// MLA latent width.
    pub kv_lora_rank: Option<usize>,
    /// MLA query latent width (absent: no query compression).
    pub q_lora_rank: Option<usize>,
    /// MLA per-head non-rope query/key width.
    pub qk_nope_head_dim: Option<usize>,
    /// MLA rope width.
    pub qk_rope_head_dim: Option<usize>,
    /// MLA per-head value width.
    pub v_head_dim: Option<usize>,
    /// Threads of the rayon pool.
    pub threads: usize,
    /// The attention-core kernel (`naive` or `tiled`).
    pub kernel: Kernel,
    /// The KV cache's stored type (f32 in files from before the stored types).
    pub kv_dtype: Dtype,
    /// The projection weights' stored type (f32 in files from before the stored types).
    pub weight_dtype: WeightDtype,
    /// `max|y − y_ref| / max|y_ref|` of one step's output `y` against the same step of the
    /// f32 layer with the unrounded weights on the same input and cache contents
    /// (docs/design.md §5), computed outside the timing; `None` when not measured.
    pub max_rel_err: Option<f64>,
    /// The whole step: its timing summary, rates and roofline, over `flops` and `bytes`.
    pub step: Summary,
    /// `batch · seq_len / step median`.
    pub tokens_per_s: Option<f64>,
    /// Matmul FLOPs of the step: `projection_flops + attention_flops`.
    pub flops: u64,
    /// Projection FLOPs (MLA's expansion or absorption included).
    pub projection_flops: u64,
    /// Attention FLOPs over the visible (query, key) pairs.
    pub attention_flops: u64,
    /// Minimum bytes the step moves, each tensor at its stored width: weights at
    /// `weight_dtype`, KV read and appended at `kv_dtype` (int8's scales included), activations
    /// in and out in f32.
    pub bytes: u64,
    /// The attention core alone (scores, softmax, weighted sum over the cache), over
    /// `attention_flops` and `core_bytes`. Its `min_ns` and `max_ns` stay `None`: the results
    /// format records no extremes for the core.
    pub core: Summary,
    /// `100 · core median / step median`: the core's share of the step.
    pub core_share_pct: Option<f64>,
    /// Minimum bytes the core moves: keys and values read (the cache at `kv_dtype`; MLA naive:
    /// the expanded ones, f32), queries in, head outputs out (f32).
    pub core_bytes: u64,
    /// Peak heap the core allocates in one call (counting allocator, untimed run).
    pub core_peak_transient_bytes: Option<u64>,
    /// KV-cache bytes read from the cache's allocation.
    pub kv_cache_bytes: Option<u64>,
    /// KV-cache bytes by formula: `batch · (context + seq_len) · kv_bytes_per_token`.
    pub kv_cache_bytes_analytic: u64,
    /// `kv_cache_bytes − kv_cache_bytes_analytic` (0 for unpadded storage).
    pub kv_cache_padding_bytes: Option<u64>,
    /// Cache bytes per token of one layer at `kv_dtype`, int8's scales included
    /// ([`LayerSpec::kv_bytes_per_token`]).
    pub kv_bytes_per_token: usize,
    /// Peak heap one step allocates beyond the cache and weights, from the counting allocator
    /// in a separate, untimed run of the step.
    pub peak_transient_bytes: Option<u64>,
    /// Weights of the layer.
    pub params: usize,
    /// Why the point failed, if it did.
    pub error: Option<String>,
    /// In a merged set, the index in [`ResultsFile::runs`](super::ResultsFile::runs) of the
    /// run (and so the machine) that measured it; `None` in a set one run measured.
    pub run: Option<usize>,
    /// The read bandwidth, GB/s, probed just before the point on its thread count with the
    /// calibration's pattern (`roofline::ReadProber`): what the machine offered a memory-bound
    /// step at that moment. `None` without calibration and in files from before.
    pub read_probe_gbps: Option<f64>,
    /// The matmul rate, GFLOP/s, probed just before the point on its thread count with the
    /// calibration's product (`Machine::probe_matmul`): what the machine offered a
    /// compute-bound step at that moment. `None` without calibration and in files from before.
    pub matmul_probe_gflops: Option<f64>,
}

impl PointResult {
    /// A row with the point's identity and its cost by formula; timing and memory unset.
    pub fn unmeasured(point: &Point) -> Self {
        let spec = &point.spec;
        let (precision, batch) = (point.precision, point.batch);
        let cost = step_cost(spec, precision, batch, point.seq_len, point.context);
        let core = core_cost(spec, precision, batch, point.seq_len, point.context);
        // The loader refused every point whose cost overflows, and the cache's bytes are part
        // of the cost: these fit.
        let kv_bytes_per_token = spec
            .kv_bytes_per_token(precision.kv_dtype)
            .expect("the loader refuses points whose cache bytes overflow");
        let (mut n_kv_heads, mut head_dim, mut mla) = (None, None, None);
        match spec {
            LayerSpec::Grouped { config, .. } => {
                n_kv_heads = Some(config.n_kv_heads);
                head_dim = Some(config.head_dim);
            }
            LayerSpec::Mla { config, .. } => mla = Some(config),
        }
        Self {
            key: point.key(),
            implementation: DEFAULT_IMPLEMENTATION.to_string(),
            variant: spec.variant(),
            mla_path: spec.mla_path(),
            mode: point.mode,
            seq_len: point.seq_len,
            context: point.context,
            batch: point.batch,
            d_model: spec.d_model(),
            n_heads: spec.n_heads(),
            n_kv_heads,
            head_dim,
            kv_lora_rank: mla.map(|c| c.kv_lora_rank),
            q_lora_rank: mla.and_then(|c| c.q_lora_rank),
            qk_nope_head_dim: mla.map(|c| c.qk_nope_head_dim),
            qk_rope_head_dim: mla.map(|c| c.qk_rope_head_dim),
            v_head_dim: mla.map(|c| c.v_head_dim),
            threads: point.threads,
            kernel: point.kernel,
            kv_dtype: point.precision.kv_dtype,
            weight_dtype: point.precision.weight_dtype,
            max_rel_err: None,
            step: Summary::default(),
            tokens_per_s: None,
            flops: cost.flops(),
            projection_flops: cost.projection_flops,
            attention_flops: cost.attention_flops,
            bytes: cost.bytes,
            core: Summary::default(),
            core_share_pct: None,
            core_bytes: core.bytes,
            core_peak_transient_bytes: None,
            kv_cache_bytes: None,
            kv_cache_bytes_analytic: batch as u64
                * (point.context + point.seq_len) as u64
                * kv_bytes_per_token,
            kv_cache_padding_bytes: None,
            kv_bytes_per_token: kv_bytes_per_token as usize,
            peak_transient_bytes: None,
            params: spec.param_count(),
            error: None,
            run: None,
            read_probe_gbps: None,
            matmul_probe_gflops: None,
        }
    }

    /// Fills in the step's timing summary and what derives from it (without samples: see
    /// [`set_step_samples`](Self::set_step_samples)).
    pub fn set_timing(&mut self, stats: &SampleStats) {
        let seconds = stats.median_ns * 1e-9;
        self.step = Summary::measured(stats, self.flops, self.bytes);
        self.tokens_per_s = Some((self.batch * self.seq_len) as f64 / seconds);
    }

    /// Fills in the step's timing summary from its samples (ns, at least one), keeping them.
    pub fn set_step_samples(&mut self, samples_ns: Vec<f64>) {
        self.set_timing(&SampleStats::from_samples(&samples_ns));
        self.step.samples_ns = samples_ns;
    }

    /// Fills in the core's timing summary from its samples (ns, at least one), keeping them.
    pub fn set_core_samples(&mut self, samples_ns: Vec<f64>) {
        self.set_core_timing(&SampleStats::from_samples(&samples_ns));
        self.core.samples_ns = samples_ns;
    }

    /// Fills in the core's timing summary and its share of the step.
    pub fn set_core_timing(&mut self, stats: &SampleStats) {
        self.core = Summary {
            min_ns: None,
            max_ns: None,
            ..Summary::measured(stats, self.attention_flops, self.core_bytes)
        };
        self.core_share_pct = self.step.median_ns.map(|m| 100.0 * stats.median_ns / m);
    }

    /// Which of the step and the core ran above 100% of the calibrated ceiling
    /// ([`Summary::above_ceiling`]), by the names `results.json` lists them under
    /// `above_ceiling`: `step`, `core`.
    pub fn above_ceiling(&self) -> Vec<&'static str> {
        [("step", &self.step), ("core", &self.core)]
            .into_iter()
            .filter(|(_, summary)| summary.above_ceiling())
            .map(|(name, _)| name)
            .collect()
    }

    /// The first field a report shows that this point lacks, by its name on disk, when it did
    /// not fail (a failed point shows `error` instead): the step's summary (median, MAD, min,
    /// max, samples), the core's (median, MAD, samples, share of the step), the KV cache
    /// measured, and, when `machine` has ceilings for the point's thread count (as the run's
    /// calibration has for every point it measured), both roofline percentages. `None` when
    /// it has them all.
    pub fn missing_field(&self, machine: Option<&Machine>) -> Option<&'static str> {
        if self.error.is_some() {
            return None;
        }
        let (step, core) = (&self.step, &self.core);
        let roofline = machine.is_some_and(|m| m.covers(self.threads));
        [
            ("median_ns", step.median_ns.is_some()),
            ("mad_ns", step.mad_ns.is_some()),
            ("min_ns", step.min_ns.is_some()),
            ("max_ns", step.max_ns.is_some()),
            ("samples", step.samples.is_some()),
            ("core_median_ns", core.median_ns.is_some()),
            ("core_mad_ns", core.mad_ns.is_some()),
            ("core_samples", core.samples.is_some()),
            ("core_share_pct", self.core_share_pct.is_some()),
            ("kv_cache_bytes", self.kv_cache_bytes.is_some()),
            ("roofline_pct", !roofline || step.roofline_pct.is_some()),
            (
                "core_roofline_pct",
                !roofline || core.roofline_pct.is_some(),
            ),
        ]
        .into_iter()
        .find(|&(_, present)| !present)
        .map(|(field, _)| field)
    }

    /// The point as one CSV record: the fields of its JSON record but the samples, in the
    /// same order (`results.csv`'s columns), and those the JSON leaves out at their default
    /// (`kv_dtype`, `weight_dtype`, `max_rel_err`) always, so that every row has every column.
    /// `implementation` is a column when `implementation_column`, which must be the same for
    /// every row of a file: true when some point of the set is not attnbench's
    /// ([`is_attnbench`](Self::is_attnbench)), so that a set of attnbench's own writes the
    /// columns it always has.
    pub fn csv_record(&self, implementation_column: bool) -> impl Serialize {
        PointRow::csv(self, implementation_column)
    }

    /// Whether attnbench itself measured the point ([`DEFAULT_IMPLEMENTATION`]).
    pub fn is_attnbench(&self) -> bool {
        self.implementation == DEFAULT_IMPLEMENTATION
    }

    /// Whether the point measured the attention core alone, without a layer around it: its
    /// step runs no projections (`projection_flops` 0), so its step is its core and its step
    /// time is not comparable with a layer's. True of a peer's points, never of attnbench's
    /// (every layer has projections).
    pub fn is_core_only(&self) -> bool {
        self.projection_flops == 0
    }

    /// Bytes of the step outside its attention core: the step's `bytes` less the KV cache the
    /// core reads itself (`kv_cache_bytes_analytic`). MLA naive's core reads the keys and
    /// values the expansion made, not the cache, so its expansion keeps the cache's bytes.
    pub fn rest_bytes(&self) -> u64 {
        if self.mla_path == Some(MlaPath::Naive) {
            self.bytes
        } else {
            self.bytes.saturating_sub(self.kv_cache_bytes_analytic)
        }
    }

    /// The label of the variant, e.g. `gqa`, `mla-absorbed`.
    pub fn variant_label(&self) -> String {
        match self.mla_path {
            Some(path) => format!("mla-{path}"),
            None => self.variant.to_string(),
        }
    }

    /// The length the tables sweep: `seq_len` for prefill, `context` for decode.
    pub fn length(&self) -> usize {
        match self.mode {
            Mode::Prefill => self.seq_len,
            Mode::Decode => self.context,
        }
    }
}
