//! What a step costs by formula: matmul FLOPs, minimum bytes moved (docs/design.md §3), and a memory
//! estimate used to refuse points before anything is allocated. The roofline (`roofline.rs`,
//! above this module) turns the FLOPs and bytes into an ideal time.
//!
//! Every figure is computed with checked arithmetic (`Size`): the sizes come from a user's
//! file, and a count past 2^64 is an answer of `None`, never a wrapped number.

use std::ops::{Add, Mul};
use std::sync::OnceLock;

use crate::sysinfo::{FALLBACK_LLC_BYTES, largest_cache_bytes};

use serde::{Deserialize, Serialize};

use crate::config::{Dtype, Kernel, LayerSpec, MlaConfig, MlaPath, Precision, WeightDtype};

const F32: u64 = size_of::<f32>() as u64;
const USIZE: u64 = size_of::<usize>() as u64;

/// A count computed from sizes a user gave: `None` once any step of it passed `u64::MAX`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Size(Option<u64>);

/// `value` as a [`Size`].
fn n(value: usize) -> Size {
    Size(u64::try_from(value).ok())
}

impl Size {
    fn get(self) -> Option<u64> {
        self.0
    }

    fn max(self, other: Size) -> Size {
        Size(self.0.zip(other.0).map(|(a, b)| a.max(b)))
    }

    fn min(self, other: Size) -> Size {
        Size(self.0.zip(other.0).map(|(a, b)| a.min(b)))
    }

    fn half(self) -> Size {
        Size(self.0.map(|v| v / 2))
    }
}

impl Add for Size {
    type Output = Size;
    fn add(self, other: Size) -> Size {
        Size(self.0.zip(other.0).and_then(|(a, b)| a.checked_add(b)))
    }
}

impl Mul for Size {
    type Output = Size;
    fn mul(self, other: Size) -> Size {
        Size(self.0.zip(other.0).and_then(|(a, b)| a.checked_mul(b)))
    }
}

impl Mul<u64> for Size {
    type Output = Size;
    fn mul(self, other: u64) -> Size {
        self * Size(Some(other))
    }
}

/// Matmul FLOPs and minimum traffic of one step.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepCost {
    /// `2 · rows · d_in · d_out` over every projection, MLA's latent expansion (naive) or
    /// absorption (absorbed) included.
    pub projection_flops: u64,
    /// `2 · batch · n_heads · visible (query, key) pairs · (d_qk + d_v)`.
    pub attention_flops: u64,
    /// Bytes moved, each tensor at its stored width: the weights once (at `weight_dtype`), the
    /// KV cache read and the cache appended (at `kv_dtype`, int8's scales included), the
    /// activations in and out (f32).
    pub bytes: u64,
}

impl StepCost {
    /// Projections plus attention (a cost from [`checked_step_cost`] guarantees the sum fits).
    pub fn flops(&self) -> u64 {
        self.projection_flops + self.attention_flops
    }

    /// The cost, `None` if a figure or the FLOPs' sum passed `u64::MAX`.
    fn checked(projection_flops: Size, attention_flops: Size, bytes: Size) -> Option<StepCost> {
        (projection_flops + attention_flops).get()?;
        Some(StepCost {
            projection_flops: projection_flops.get()?,
            attention_flops: attention_flops.get()?,
            bytes: bytes.get()?,
        })
    }
}

/// Visible causal (query, key) pairs of one sequence: `s_q` queries after `context` cached
/// tokens, query `i` sees `context + i + 1` keys. `None` past `u64::MAX`.
pub fn visible_pairs(s_q: usize, context: usize) -> Option<u64> {
    pairs(s_q, context).get()
}

fn pairs(s_q: usize, context: usize) -> Size {
    n(s_q) * n(context) + (n(s_q) * (n(s_q) + n(1))).half()
}

/// `2 · rows · d_in · d_out`.
fn mm(rows: Size, d_in: Size, d_out: Size) -> Size {
    rows * d_in * d_out * 2
}

/// Bytes of the layer's weights stored as `weight_dtype` (docs/design.md §5): every projection
/// matrix at that width, MLA's RMSNorm scales in f32 whatever it says. `None` on overflow.
pub fn weights_bytes(spec: &LayerSpec, weight_dtype: WeightDtype) -> Option<u64> {
    weights(spec, weight_dtype).get()
}

fn weights(spec: &LayerSpec, weight_dtype: WeightDtype) -> Size {
    let norm_scales = match spec {
        LayerSpec::Grouped { .. } => 0,
        LayerSpec::Mla { config: c, .. } => c.kv_lora_rank + c.q_lora_rank.unwrap_or(0),
    };
    let projections = spec.param_count().saturating_sub(norm_scales);
    n(projections) * weight_dtype.dtype().bytes() + n(norm_scales) * F32
}

/// Bytes of one token's cache row stored as `kv_dtype`: [`LayerSpec::kv_bytes_per_token`].
fn kv_token(spec: &LayerSpec, kv_dtype: Dtype) -> Size {
    Size(spec.kv_bytes_per_token(kv_dtype))
}

/// The cost of a step of `batch` sequences of `s_q` new tokens over `context` cached ones,
/// with the cache and the weights stored as `precision` says.
///
/// # Panics
/// If a figure passes `u64::MAX`; the experiment loader refuses such points
/// ([`checked_step_cost`]).
pub fn step_cost(
    spec: &LayerSpec,
    precision: Precision,
    batch: usize,
    s_q: usize,
    context: usize,
) -> StepCost {
    checked_step_cost(spec, precision, batch, s_q, context)
        .expect("the experiment loader refuses points whose cost passes 2^64")
}

/// [`step_cost`], `None` when a figure (or the FLOPs' sum) passes `u64::MAX`.
pub fn checked_step_cost(
    spec: &LayerSpec,
    precision: Precision,
    batch: usize,
    s_q: usize,
    context: usize,
) -> Option<StepCost> {
    let (b, t) = (n(batch), n(batch) * n(s_q));
    let total = n(context) + n(s_q);
    let pairs = pairs(s_q, context);
    let d = n(spec.d_model());
    let (projection_flops, attention_flops) = match spec {
        LayerSpec::Grouped { config: c, .. } => {
            let head_dim = n(c.head_dim);
            let (q, kv) = (n(c.n_heads) * head_dim, n(c.n_kv_heads) * head_dim);
            let proj = mm(t, d, q) + mm(t, d, kv) * 2 + mm(t, q, d);
            (proj, b * n(c.n_heads) * pairs * head_dim * 4)
        }
        LayerSpec::Mla { config: c, path } => {
            let h = n(c.n_heads);
            let (qk, v, nope) = (n(c.qk_head_dim()), n(c.v_head_dim), n(c.qk_nope_head_dim));
            let query = match c.q_lora_rank {
                None => mm(t, d, h * qk),
                Some(r) => mm(t, d, n(r)) + mm(t, n(r), h * qk),
            };
            let latent = n(c.kv_values_per_token());
            let shared = query + mm(t, d, latent) + mm(t, h * v, d);
            let d_c = n(c.kv_lora_rank);
            match path {
                MlaPath::Naive => (
                    shared + b * (mm(total, d_c, h * nope) + mm(total, d_c, h * v)),
                    b * h * pairs * (qk + v) * 2,
                ),
                MlaPath::Absorbed => (
                    shared + mm(t, nope, d_c) * h + mm(t, d_c, v) * h,
                    b * h * pairs * (latent + d_c) * 2,
                ),
            }
        }
    };
    let kv = kv_token(spec, precision.kv_dtype);
    let bytes = weights(spec, precision.weight_dtype) + b * total * kv + t * kv + t * d * 2 * F32;
    StepCost::checked(projection_flops, attention_flops, bytes)
}

/// The attention core alone: its FLOPs (the step's `attention_flops`) and its minimum
/// traffic: what it reads as keys and values (the cache at `precision.kv_dtype`, int8's
/// scales included; MLA naive: the expanded per-head keys and values, f32 activations), the
/// queries in and the head outputs out, f32. `projection_flops` is 0.
///
/// # Panics
/// If a figure passes `u64::MAX`, as [`step_cost`].
pub fn core_cost(
    spec: &LayerSpec,
    precision: Precision,
    batch: usize,
    s_q: usize,
    context: usize,
) -> StepCost {
    checked_core_cost(spec, precision, batch, s_q, context)
        .expect("the experiment loader refuses points whose cost passes 2^64")
}

/// [`core_cost`], `None` when a figure passes `u64::MAX`.
pub fn checked_core_cost(
    spec: &LayerSpec,
    precision: Precision,
    batch: usize,
    s_q: usize,
    context: usize,
) -> Option<StepCost> {
    let step = checked_step_cost(spec, precision, batch, s_q, context)?;
    let (b, t, total) = (n(batch), n(batch) * n(s_q), n(context) + n(s_q));
    let cache_read = b * total * kv_token(spec, precision.kv_dtype);
    let (kv_read, q_width, out_width) = match spec {
        LayerSpec::Grouped { config: c, .. } => {
            let width = n(c.n_heads) * n(c.head_dim);
            (cache_read, width, width)
        }
        LayerSpec::Mla { config: c, path } => {
            let h = n(c.n_heads);
            match path {
                MlaPath::Naive => (
                    b * total * h * (n(c.qk_head_dim()) + n(c.v_head_dim)) * F32,
                    h * n(c.qk_head_dim()),
                    h * n(c.v_head_dim),
                ),
                MlaPath::Absorbed => (
                    cache_read,
                    h * n(c.kv_values_per_token()),
                    h * n(c.kv_lora_rank),
                ),
            }
        }
    };
    Some(StepCost {
        projection_flops: 0,
        attention_flops: step.attention_flops,
        bytes: (kv_read + t * (q_width + out_width) * F32).get()?,
    })
}

/// Memory a point needs, by formula, before anything is allocated: an upper bound of what the
/// harness holds while it measures the point (the process-wide cache-eviction buffer aside).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemoryEstimate {
    /// The layer's weights at their stored width ([`weights_bytes`]).
    pub weights_bytes: u64,
    /// The KV cache at capacity (`context + s_q` tokens per sequence), at its stored width,
    /// int8's scales included.
    pub cache_bytes: u64,
    /// The step's input and output, `(batch · s_q, d_model)` each, held while the point runs.
    pub activations_bytes: u64,
    /// An upper bound of what one step allocates beyond the above (the results'
    /// `peak_transient_bytes`): the projections of the `batch · s_q` new rows, the RoPE table,
    /// the attention output and its row-major copy, MLA's latents, expanded keys and values
    /// (naive) or absorbed queries (absorbed), the kernel's scratch on every thread, and, for
    /// a narrow cache or narrow weights, the f32 buffers they are widened into. It covers the
    /// attention core measured alone too, whose inputs are a subset of these.
    pub transient_bytes: u64,
    /// The packing buffers faer's matmul keeps per thread, sized by the CPU's caches
    /// ([`matmul_workspace_bytes_per_thread`]); a thread allocates them on its first large
    /// matmul, so they show in a step's measured peak on a fresh thread.
    pub matmul_workspace_bytes: u64,
    /// For a point not all in f32: the f32 layer, its f32 cache and its output that the
    /// accuracy check (`max_rel_err`) holds beside the point's own, before the timing. 0 for
    /// f32 points, which are their own reference.
    #[serde(default)]
    pub reference_bytes: u64,
}

impl MemoryEstimate {
    /// All six (an estimate from [`memory_estimate`] guarantees the sum fits).
    pub fn total(&self) -> u64 {
        self.weights_bytes
            + self.cache_bytes
            + self.activations_bytes
            + self.transient_bytes
            + self.matmul_workspace_bytes
            + self.reference_bytes
    }
}

/// Memory for a step of `batch × s_q` new tokens over `context` cached ones, run on `threads`
/// threads with the attention core on `kernel`, the cache and weights stored as `precision`
/// says. `None` when a part or the total passes `u64::MAX` bytes.
pub fn memory_estimate(
    spec: &LayerSpec,
    kernel: Kernel,
    precision: Precision,
    batch: usize,
    s_q: usize,
    context: usize,
    threads: usize,
) -> Option<MemoryEstimate> {
    let step = StepShape {
        kernel,
        precision,
        batch,
        s_q,
        keys: n(context) + n(s_q),
        threads,
    };
    let t = step.rows();
    let activations = t * n(spec.d_model()) * 2 * F32;
    let cache = |kv_dtype| n(batch) * step.keys * kv_token(spec, kv_dtype);
    let reference = if precision.is_f32() {
        Size(Some(0))
    } else {
        weights(spec, WeightDtype::F32) + cache(Dtype::F32) + activations.half()
    };
    let estimate = MemoryEstimate {
        weights_bytes: weights(spec, precision.weight_dtype).get()?,
        cache_bytes: cache(precision.kv_dtype).get()?,
        activations_bytes: activations.get()?,
        transient_bytes: step.transient_bytes(spec).get()?,
        matmul_workspace_bytes: (n(threads) * Size(Some(matmul_workspace_bytes_per_thread())))
            .get()?,
        reference_bytes: reference.get()?,
    };
    let parts = [
        estimate.cache_bytes,
        estimate.activations_bytes,
        estimate.transient_bytes,
        estimate.matmul_workspace_bytes,
        estimate.reference_bytes,
    ];
    parts
        .iter()
        .try_fold(estimate.weights_bytes, |sum, &part| sum.checked_add(part))?;
    Some(estimate)
}

/// The packing buffers faer's matmul may hold per thread: three times the CPU's largest cache.
/// On x86-64 with AVX2, faer multiplies through private-gemm-x86, which keeps two buffers of
/// the last-level cache's size per thread; elsewhere through the gemm crate, which keeps one of
/// the L2's size per thread and packs at most a last-level cache's worth per call.
pub fn matmul_workspace_bytes_per_thread() -> u64 {
    static BYTES: OnceLock<u64> = OnceLock::new();
    *BYTES.get_or_init(|| 3 * largest_cache_bytes().unwrap_or(FALLBACK_LLC_BYTES))
}

/// The step a memory estimate is for.
struct StepShape {
    kernel: Kernel,
    precision: Precision,
    batch: usize,
    s_q: usize,
    /// Keys per sequence during the step: `context + s_q`.
    keys: Size,
    threads: usize,
}

/// How the attention core sees its operands: query heads, KV heads and their widths (the
/// kernels' `HeadLayout`), and whether it reads them from the stored cache (false for MLA
/// naive, whose expanded keys and values are f32 activations).
struct CoreShape {
    n_heads: usize,
    n_kv_heads: usize,
    qk_dim: usize,
    v_dim: usize,
    from_cache: bool,
}

/// Bytes of a faer view (pointer, rows, columns, two strides).
const VIEW_BYTES: u64 = 5 * USIZE;
/// Bytes of one sequence's kernel operands besides its views: the query view, two `Vec`s of
/// head views and the first query's position.
const OPERANDS_BYTES: u64 = VIEW_BYTES + 6 * USIZE + USIZE;
/// Bytes of a `Matrix` value (rows, columns and a `Vec`).
const MATRIX_BYTES: u64 = 5 * USIZE;
/// The tiled kernel's constants (`kernels/tiled.rs`): rows of a packed query block aimed for,
/// keys per block, the largest block that takes its keys in one long block, and that block's
/// longest.
const TILED_TARGET_ROWS: usize = 64;
const TILED_KEY_BLOCK: usize = 256;
const TILED_WIDE_MAX_ROWS: usize = 8;
const TILED_WIDE_MAX_KEYS: usize = 16384;

impl StepShape {
    /// New rows of the step, `batch · s_q`.
    fn rows(&self) -> Size {
        n(self.batch) * n(self.s_q)
    }

    /// What one step of `spec` allocates, in bytes (see [`MemoryEstimate::transient_bytes`]).
    fn transient_bytes(&self, spec: &LayerSpec) -> Size {
        let t = self.rows();
        // The new rows' positions (collected from an iterator of unknown length: up to twice
        // their count) and each sequence's first position.
        let positions = (t * 2 + n(self.batch)) * USIZE;
        match spec {
            LayerSpec::Grouped { config: c, .. } => {
                let (q, kv) = (
                    n(c.n_heads) * n(c.head_dim),
                    n(c.n_kv_heads) * n(c.head_dim),
                );
                // Q, K and V; the attention output and its row-major copy.
                let activations = t * (q * 3 + kv * 2) * F32;
                let core = CoreShape {
                    n_heads: c.n_heads,
                    n_kv_heads: c.n_kv_heads,
                    qk_dim: c.head_dim,
                    v_dim: c.head_dim,
                    from_cache: true,
                };
                positions
                    + rope_table_bytes(t, c.head_dim)
                    + activations
                    + self.attention(&core)
                    + self.weight_widening(spec)
            }
            LayerSpec::Mla { config: c, path } => {
                let h = n(c.n_heads);
                let (qk, v, latent) = (
                    n(c.qk_head_dim()),
                    n(c.v_head_dim),
                    n(c.kv_values_per_token()),
                );
                // The query latent (compressed queries), the queries, the new latent rows, the
                // attention output and its row-major copy.
                let query_latent = n(c.q_lora_rank.unwrap_or(0));
                let activations = t * (query_latent + h * qk + latent + h * v * 2) * F32;
                let path_bytes = match path {
                    MlaPath::Naive => self.expansion_bytes(c),
                    // The absorbed queries and the attention output in latent width.
                    MlaPath::Absorbed => {
                        t * h * (latent + n(c.kv_lora_rank)) * F32
                            + self.attention(&CoreShape {
                                n_heads: c.n_heads,
                                n_kv_heads: 1,
                                qk_dim: c.kv_values_per_token(),
                                v_dim: c.kv_lora_rank,
                                from_cache: true,
                            })
                    }
                };
                positions
                    + rope_table_bytes(t, c.qk_rope_head_dim)
                    + activations
                    + path_bytes
                    + self.weight_widening(spec)
            }
        }
    }

    /// MLA naive: every sequence's keys and values expanded per head, plus, while one sequence
    /// expands, its `k_nope` and its gathered latent rows; then MHA over them.
    fn expansion_bytes(&self, c: &MlaConfig) -> Size {
        let (h, keys) = (n(c.n_heads), self.keys);
        let (qk, v, nope) = (n(c.qk_head_dim()), n(c.v_head_dim), n(c.qk_nope_head_dim));
        let expanded = n(self.batch) * keys * h * (qk + v) * F32 + n(self.batch) * MATRIX_BYTES * 2;
        let one_sequence = keys * (h * nope + n(c.kv_values_per_token())) * F32;
        let core = CoreShape {
            n_heads: c.n_heads,
            n_kv_heads: c.n_heads,
            qk_dim: c.qk_head_dim(),
            v_dim: c.v_head_dim,
            from_cache: false,
        };
        expanded + one_sequence + self.attention(&core)
    }

    /// The attention core's allocations: each sequence's operands, the kernel's scratch, and
    /// the f32 buffers a narrow cache's keys and values are widened into.
    fn attention(&self, core: &CoreShape) -> Size {
        let b = n(self.batch);
        let operands = b * (Size(Some(OPERANDS_BYTES)) + n(core.n_kv_heads) * 2 * VIEW_BYTES);
        let scratch = match self.kernel {
            Kernel::Naive => self.naive_scratch(core),
            Kernel::Tiled => self.tiled_scratch(core),
        };
        operands + scratch + self.cache_widening(core)
    }

    /// A narrow cache read by the core: a task widens the keys and values it attends into f32
    /// (prefill: blocks of at most 256 keys; decode widens in registers and needs none). As
    /// an upper bound: every range of keys alive at once ([`Self::tiled_scratch`]: fewer than
    /// three per thread) widens its whole block; the naive kernel's running tasks their whole
    /// key range.
    fn cache_widening(&self, core: &CoreShape) -> Size {
        if self.precision.kv_dtype == Dtype::F32 || !core.from_cache {
            return Size(Some(0));
        }
        let (ranges, keys) = match self.kernel {
            Kernel::Naive => (
                n(self.threads).min(n(self.batch) * n(core.n_heads)),
                self.keys,
            ),
            Kernel::Tiled => (n(self.threads) * 3, self.tiled_block(core)),
        };
        ranges * keys * (n(core.qk_dim) + n(core.v_dim)) * F32
    }

    /// Narrow weights widened into f32 by blocks for the products that need them (prefill;
    /// decode reads them directly). As an upper bound: the largest projection matrix whole, on
    /// every thread.
    fn weight_widening(&self, spec: &LayerSpec) -> Size {
        if self.precision.weight_dtype == WeightDtype::F32 {
            return Size(Some(0));
        }
        n(self.threads) * largest_projection(spec) * F32
    }

    /// One `s_q × keys` score block per (sequence, head) task running, at most one per thread.
    fn naive_scratch(&self, core: &CoreShape) -> Size {
        let running = n(self.threads).min(n(self.batch) * n(core.n_heads));
        running * n(self.s_q) * self.keys * F32
    }

    /// The tiled kernel (`kernels/tiled.rs`) runs tasks of (sequence, KV head, query tile),
    /// each packing its `group · tile` query rows and keeping, per range of keys it attends,
    /// a score block and the running output, maxima and sums. A thread runs one such range
    /// at a time; the ranges of all tasks alive at once are fewer than three per thread (a
    /// task splits its keys only when tasks are fewer than threads, into at most
    /// `2 · threads / tasks` ranges), so three per thread bound both. Besides, each
    /// (sequence, KV head) keeps its list of tiles and of output slices.
    fn tiled_scratch(&self, core: &CoreShape) -> Size {
        let (group, tile) = self.tiled_tile(core);
        let rows = n(group) * n(tile);
        let n_tiles = n(self.s_q.div_ceil(tile));
        let block = self.tiled_block(core);
        // Packed queries; scores, output, maxima and sums; a range and a `Partial` record.
        let per_range = rows * (n(core.qk_dim) + block + n(core.v_dim) + n(2)) * F32
            + Size(Some(2 * USIZE + 9 * USIZE));
        let ranges = n(self.threads) * 3 * per_range;
        let slice = 2 * USIZE;
        let per_chunk = n(group) * slice + n_tiles * (Size(Some(5 * USIZE)) + n(group) * slice);
        ranges + n(self.batch) * n(core.n_kv_heads) * per_chunk
    }

    /// Query heads per KV head (`group`) and the tiled kernel's query tile (rows of each query
    /// head in a packed block).
    fn tiled_tile(&self, core: &CoreShape) -> (usize, usize) {
        let group = core.n_heads / core.n_kv_heads.max(1);
        let tile = (TILED_TARGET_ROWS / group.max(1)).clamp(1, self.s_q.max(1));
        (group, tile)
    }

    /// Keys of one block of the tiled kernel: few packed rows take a long block, more rows
    /// blocks of 256.
    fn tiled_block(&self, core: &CoreShape) -> Size {
        let (group, tile) = self.tiled_tile(core);
        if group * tile <= TILED_WIDE_MAX_ROWS {
            self.keys.min(n(TILED_WIDE_MAX_KEYS)).max(n(1))
        } else {
            n(TILED_KEY_BLOCK)
        }
    }
}

/// Weights of the layer's largest projection matrix.
fn largest_projection(spec: &LayerSpec) -> Size {
    let d = n(spec.d_model());
    match spec {
        LayerSpec::Grouped { config: c, .. } => {
            d * n(c.n_heads) * n(c.head_dim) // W_q and W_o; W_k and W_v are no larger
        }
        LayerSpec::Mla { config: c, .. } => {
            let h = n(c.n_heads);
            let (qk, d_c) = (h * n(c.qk_head_dim()), n(c.kv_lora_rank));
            let query = match c.q_lora_rank {
                None => d * qk,
                Some(r) => (d * n(r)).max(n(r) * qk),
            };
            [
                d * n(c.kv_values_per_token()),
                d_c * h * n(c.qk_nope_head_dim),
                d_c * h * n(c.v_head_dim),
                h * n(c.v_head_dim) * d,
            ]
            .into_iter()
            .fold(query, Size::max)
        }
    }
}

/// A RoPE table for `rows` rows of `rotary_dim` rotated values: a cosine and a sine per pair,
/// and the pairs' frequencies in f64.
fn rope_table_bytes(rows: Size, rotary_dim: usize) -> Size {
    rows * n(rotary_dim) * F32 + n(rotary_dim / 2) * 8
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DEFAULT_ROPE_THETA, GroupedConfig, Variant};

    fn llama_gqa() -> LayerSpec {
        LayerSpec::Grouped {
            variant: Variant::Gqa,
            config: GroupedConfig {
                d_model: 4096,
                n_heads: 32,
                n_kv_heads: 8,
                head_dim: 128,
                rope_theta: DEFAULT_ROPE_THETA,
            },
        }
    }

    fn deepseek_mla(path: MlaPath) -> LayerSpec {
        LayerSpec::Mla {
            config: MlaConfig {
                d_model: 5120,
                n_heads: 128,
                kv_lora_rank: 512,
                q_lora_rank: Some(1536),
                qk_nope_head_dim: 128,
                qk_rope_head_dim: 64,
                v_head_dim: 128,
                rope_theta: DEFAULT_ROPE_THETA,
                rms_norm_eps: 1e-6,
            },
            path,
        }
    }

    fn precision(kv_dtype: Dtype, weight_dtype: WeightDtype) -> Precision {
        Precision {
            kv_dtype,
            weight_dtype,
        }
    }

    /// Every (kv_dtype, weight_dtype) pair.
    fn precisions() -> impl Iterator<Item = Precision> {
        Dtype::ALL
            .into_iter()
            .flat_map(|kv| WeightDtype::ALL.into_iter().map(move |w| precision(kv, w)))
    }

    #[test]
    fn f32_step_bytes_are_the_design_formula() {
        // docs/design.md §3: 4 · (params + batch·(c + s)·kv + batch·s·kv + 2·batch·s·d).
        let spec = llama_gqa();
        let (b, s, c) = (2u64, 3u64, 1000u64);
        let params = 2 * 4096 * 4096 + 2 * 4096 * 1024;
        let kv = 2 * 8 * 128;
        let expected = 4 * (params + b * (c + s) * kv + b * s * kv + 2 * b * s * 4096);
        let cost = step_cost(&spec, Precision::default(), 2, 3, 1000);
        assert_eq!(cost.bytes, expected);
    }

    #[test]
    fn step_bytes_count_weights_and_cache_at_their_stored_widths() {
        let spec = llama_gqa();
        let (b, s, c) = (2u64, 3u64, 1000u64);
        let params = 2 * 4096 * 4096 + 2 * 4096 * 1024;
        let activations = 4 * 2 * b * s * 4096;
        // K and V rows of 128 per KV head: 8 KV heads, int8 with one f32 scale per row.
        let kv_row = |dtype| match dtype {
            Dtype::F32 => 2 * 8 * 128 * 4,
            Dtype::F16 | Dtype::Bf16 => 2 * 8 * 128 * 2,
            Dtype::Int8 => 2 * 8 * (128 + 4),
        };
        for p in precisions() {
            let weight_width = if p.weight_dtype == WeightDtype::Bf16 {
                2
            } else {
                4
            };
            let expected =
                params * weight_width + (b * (c + s) + b * s) * kv_row(p.kv_dtype) + activations;
            assert_eq!(step_cost(&spec, p, 2, 3, 1000).bytes, expected, "{p:?}");
            // The FLOPs do not depend on what is stored.
            assert_eq!(
                step_cost(&spec, p, 2, 3, 1000).flops(),
                step_cost(&spec, Precision::default(), 2, 3, 1000).flops()
            );
        }
    }

    #[test]
    fn mla_norm_scales_stay_f32_when_the_weights_are_bf16() {
        let spec = deepseek_mla(MlaPath::Absorbed);
        let norms = 512 + 1536;
        let params = spec.param_count() as u64;
        assert_eq!(weights_bytes(&spec, WeightDtype::F32), Some(4 * params));
        assert_eq!(
            weights_bytes(&spec, WeightDtype::Bf16),
            Some(2 * (params - norms) + 4 * norms)
        );
    }

    #[test]
    fn the_core_reads_the_cache_at_its_width_but_mla_naive_reads_f32_expansions() {
        let (b, s, c) = (1u64, 1u64, 4095u64);
        let gqa = llama_gqa();
        let queries_and_outputs = 4 * b * s * (32 * 128 + 32 * 128);
        let absorbed = deepseek_mla(MlaPath::Absorbed);
        let absorbed_q_out = 4 * b * s * 128 * ((512 + 64) + 512);
        let naive = deepseek_mla(MlaPath::Naive);
        let naive_f32 = core_cost(&naive, Precision::default(), 1, 1, 4095).bytes;
        assert_eq!(
            naive_f32,
            4 * (b * (c + s) * 128 * (192 + 128) + b * s * 128 * (192 + 128))
        );
        for p in precisions() {
            let kv = p.kv_dtype;
            assert_eq!(
                core_cost(&gqa, p, 1, 1, 4095).bytes,
                b * (c + s) * gqa.kv_bytes_per_token(kv).unwrap() + queries_and_outputs,
                "{p:?}"
            );
            // c_kv and k_rope rows, each with its own int8 scale.
            let latent_row = match kv {
                Dtype::F32 => (512 + 64) * 4,
                Dtype::F16 | Dtype::Bf16 => (512 + 64) * 2,
                Dtype::Int8 => 512 + 64 + 8,
            };
            assert_eq!(
                core_cost(&absorbed, p, 1, 1, 4095).bytes,
                b * (c + s) * latent_row + absorbed_q_out,
                "{p:?}"
            );
            assert_eq!(core_cost(&naive, p, 1, 1, 4095).bytes, naive_f32, "{p:?}");
        }
    }

    #[test]
    fn the_memory_estimate_holds_the_stored_cache_and_weights_and_an_f32_reference() {
        let spec = llama_gqa();
        let estimate =
            |p, s_q, context| memory_estimate(&spec, Kernel::Tiled, p, 1, s_q, context, 2).unwrap();
        let f32 = estimate(Precision::default(), 512, 1024);
        assert_eq!(f32.reference_bytes, 0);
        for p in precisions().filter(|p| !p.is_f32()) {
            let e = estimate(p, 512, 1024);
            let cache = 1536 * spec.kv_bytes_per_token(p.kv_dtype).unwrap();
            assert_eq!(e.cache_bytes, cache, "{p:?}");
            assert_eq!(
                e.weights_bytes,
                weights_bytes(&spec, p.weight_dtype).unwrap()
            );
            // The f32 layer, its f32 cache and its output, beside the point's own.
            assert_eq!(
                e.reference_bytes,
                f32.weights_bytes + f32.cache_bytes + f32.activations_bytes / 2,
                "{p:?}"
            );
            // Narrow storage is widened into f32 buffers: the step allocates more.
            assert!(e.transient_bytes > f32.transient_bytes, "{p:?}");
            assert_eq!(
                e.total(),
                e.weights_bytes
                    + e.cache_bytes
                    + e.activations_bytes
                    + e.transient_bytes
                    + e.matmul_workspace_bytes
                    + e.reference_bytes
            );
        }
        // The widening buffers are those the precision needs and no others.
        let kv_only = estimate(precision(Dtype::Int8, WeightDtype::F32), 512, 1024);
        let weights_only = estimate(precision(Dtype::F32, WeightDtype::Bf16), 512, 1024);
        let both = estimate(precision(Dtype::Int8, WeightDtype::Bf16), 512, 1024);
        assert_eq!(
            both.transient_bytes - f32.transient_bytes,
            (kv_only.transient_bytes - f32.transient_bytes)
                + (weights_only.transient_bytes - f32.transient_bytes)
        );
        // Bf16 weights: the largest projection (W_q, 4096 × 4096) in f32 on each thread.
        assert_eq!(
            weights_only.transient_bytes - f32.transient_bytes,
            2 * 4096 * 4096 * 4
        );
        // An int8 cache at 512 new rows: 3 ranges per thread, blocks of 256 keys of K and V.
        assert_eq!(
            kv_only.transient_bytes - f32.transient_bytes,
            2 * 3 * 256 * (128 + 128) * 4
        );
    }
}
