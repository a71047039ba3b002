//! What a step costs by formula: matmul FLOPs, minimum bytes moved (docs/design.md §3), and a memory
//! estimate used to refuse points before anything is allocated. The roofline (`roofline.rs`,
//! above this module) turns the FLOPs and bytes into an ideal time.

use serde::{Deserialize, Serialize};

use crate::config::LayerSpec;

const F32: u64 = size_of::<f32>() as u64;

/// Matmul FLOPs and minimum traffic of one step.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepCost {
    /// `2 · rows · d_in · d_out` over every projection, MLA's latent expansion (naive) or
    /// absorption (absorbed) included.
    pub projection_flops: u64,
    /// `2 · batch · n_heads · visible (query, key) pairs · (d_qk + d_v)`.
    pub attention_flops: u64,
    /// Weights once, the KV cache read, the cache appended, activations in and out, f32.
    pub bytes: u64,
}

impl StepCost {
    /// Projections plus attention.
    pub fn flops(&self) -> u64 {
        self.projection_flops + self.attention_flops
    }
}

/// Visible causal (query, key) pairs of one sequence: `s_q` queries after `context` cached
/// tokens, query `i` sees `context + i + 1` keys.
pub fn visible_pairs(s_q: usize, context: usize) -> u64 {
    let (s, c) = (s_q as u64, context as u64);
    s * c + s * (s + 1) / 2
}

/// The cost of a step of `batch` sequences of `s_q` new tokens over `context` cached ones.
pub fn step_cost(spec: &LayerSpec, batch: usize, s_q: usize, context: usize) -> StepCost {
    let (b, t) = (batch as u64, (batch * s_q) as u64);
    let total = (context + s_q) as u64;
    let pairs = visible_pairs(s_q, context);
    let mm = |rows: u64, d_in: usize, d_out: usize| 2 * rows * d_in as u64 * d_out as u64;
    let (projection_flops, attention_flops) = match spec {
        LayerSpec::Grouped { config: c, .. } => {
            let (q, kv) = (c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
            let proj = mm(t, c.d_model, q) + 2 * mm(t, c.d_model, kv) + mm(t, q, c.d_model);
            (
                proj,
                2 * b * c.n_heads as u64 * pairs * (2 * c.head_dim) as u64,
            )
        }
        LayerSpec::Mla { config: c, path } => {
            let h = c.n_heads;
            let query = match c.q_lora_rank {
                None => mm(t, c.d_model, h * c.qk_head_dim()),
                Some(r) => mm(t, c.d_model, r) + mm(t, r, h * c.qk_head_dim()),
            };
            let shared = query
                + mm(t, c.d_model, c.kv_values_per_token())
                + mm(t, h * c.v_head_dim, c.d_model);
            let d_c = c.kv_lora_rank;
            match path {
                crate::config::MlaPath::Naive => (
                    shared
                        + b * (mm(total, d_c, h * c.qk_nope_head_dim)
                            + mm(total, d_c, h * c.v_head_dim)),
                    2 * b * h as u64 * pairs * (c.qk_head_dim() + c.v_head_dim) as u64,
                ),
                crate::config::MlaPath::Absorbed => (
                    shared
                        + mm(t, c.qk_nope_head_dim, d_c) * h as u64
                        + mm(t, d_c, c.v_head_dim) * h as u64,
                    2 * b * h as u64 * pairs * (c.kv_values_per_token() + d_c) as u64,
                ),
            }
        }
    };
    let kv = spec.kv_values_per_token() as u64;
    let bytes =
        F32 * (spec.param_count() as u64 + b * total * kv + t * kv + 2 * t * spec.d_model() as u64);
    StepCost {
        projection_flops,
        attention_flops,
        bytes,
    }
}

/// The attention core alone: its FLOPs (the step's `attention_flops`) and its minimum
/// traffic: what it reads as keys and values (the cache; MLA naive: the expanded per-head keys
/// and values), the queries in and the head outputs out, f32. `projection_flops` is 0.
pub fn core_cost(spec: &LayerSpec, batch: usize, s_q: usize, context: usize) -> StepCost {
    let step = step_cost(spec, batch, s_q, context);
    let (b, t, total) = (batch as u64, (batch * s_q) as u64, (context + s_q) as u64);
    let (kv_read, q_width, out_width) = match spec {
        LayerSpec::Grouped { config: c, .. } => (
            b * total * c.kv_values_per_token() as u64,
            c.n_heads * c.head_dim,
            c.n_heads * c.head_dim,
        ),
        LayerSpec::Mla {
            config: c,
            path: crate::config::MlaPath::Naive,
        } => (
            b * total * (c.n_heads * (c.qk_head_dim() + c.v_head_dim)) as u64,
            c.n_heads * c.qk_head_dim(),
            c.n_heads * c.v_head_dim,
        ),
        LayerSpec::Mla {
            config: c,
            path: crate::config::MlaPath::Absorbed,
        } => (
            b * total * c.kv_values_per_token() as u64,
            c.n_heads * c.kv_values_per_token(),
            c.n_heads * c.kv_lora_rank,
        ),
    };
    StepCost {
        projection_flops: 0,
        attention_flops: step.attention_flops,
        bytes: F32 * (kv_read + t * (q_width + out_width) as u64),
    }
}

/// Memory a point needs, by formula, before anything is allocated.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemoryEstimate {
    /// The layer's weights.
    pub weights_bytes: u64,
    /// The KV cache at capacity (`context + s_q` tokens per sequence).
    pub cache_bytes: u64,
    /// An estimate, not a bound, of what one step allocates: its activation buffers and one
    /// `s_q × s_k` score block per thread.
    pub transient_bytes: u64,
}

impl MemoryEstimate {
    /// All three.
    pub fn total(&self) -> u64 {
        self.weights_bytes + self.cache_bytes + self.transient_bytes
    }
}

/// Memory for a step of `batch × s_q` new tokens over `context` cached ones, run on `threads`
/// threads, counting one `s_q × s_k` score block per thread (as the naive kernel holds).
pub fn memory_estimate(
    spec: &LayerSpec,
    batch: usize,
    s_q: usize,
    context: usize,
    threads: usize,
) -> MemoryEstimate {
    let (b, t) = (batch as u64, (batch * s_q) as u64);
    let total = (context + s_q) as u64;
    let scores = threads as u64 * s_q as u64 * total;
    let values = match spec {
        LayerSpec::Grouped { config: c, .. } => {
            let (q, kv) = (
                (c.n_heads * c.head_dim) as u64,
                (c.n_kv_heads * c.head_dim) as u64,
            );
            t * (3 * q + 2 * kv + c.head_dim as u64) + scores
        }
        LayerSpec::Mla { config: c, .. } => {
            let h = c.n_heads as u64;
            let (qk, v, d_c) = (
                c.qk_head_dim() as u64,
                c.v_head_dim as u64,
                c.kv_lora_rank as u64,
            );
            let latent = c.kv_values_per_token() as u64;
            let query = t * (h * qk + c.q_lora_rank.unwrap_or(0) as u64);
            // The larger of the two paths' buffers: naive expands keys and values for every
            // cached token, absorbed widens every query head to the latent.
            let naive = b * total * h * (qk + c.qk_nope_head_dim as u64 + v);
            let absorbed = t * h * (latent + d_c);
            query + t * latent + naive.max(absorbed) + 2 * t * h * v + scores
        }
    };
    MemoryEstimate {
        weights_bytes: F32 * spec.param_count() as u64,
        cache_bytes: F32 * b * total * spec.kv_values_per_token() as u64,
        transient_bytes: F32 * values,
    }
}
