//! The one layer behind MHA, MQA and GQA: they differ only in `n_kv_heads`.

use crate::config::{GroupedConfig, Kernel, LayerSpec, Precision, Variant};
use crate::error::Result;
use crate::kernels::{
    AttentionOperands, HeadLayout, RopeTable, Weight, attention, heads_to_rows, project, project_to,
};
use crate::kv_cache::{KvCache, PlaneSpec};
use crate::layer::{AttentionLayer, CoreInputs, LayerInfo, check_step, row_positions};
use crate::tensor::Matrix;
use crate::weights::projection_weight;

/// MHA, MQA or GQA (docs/design.md §1): `Q = x·W_q`, `K = x·W_k`, `V = x·W_v`, RoPE on every query
/// and key head, causal attention with query head `h` reading KV head
/// `h / (n_heads / n_kv_heads)`, `y = concat_h(o_h)·W_o`. The cache holds post-RoPE K and V.
#[derive(Clone, Debug)]
pub struct GroupedAttention {
    variant: Variant,
    config: GroupedConfig,
    kernel: Kernel,
    /// How the cache and the projection weights are stored.
    precision: Precision,
    /// `(d_model, n_heads · head_dim)`
    w_q: Weight,
    /// `(d_model, n_kv_heads · head_dim)`
    w_k: Weight,
    /// `(d_model, n_kv_heads · head_dim)`
    w_v: Weight,
    /// `(n_heads · head_dim, d_model)`
    w_o: Weight,
}

impl GroupedAttention {
    /// Builds the layer with weights drawn from `seed`; refuses a shape `variant` cannot have.
    pub fn new(variant: Variant, config: GroupedConfig, seed: u64) -> Result<Self> {
        config.validate(variant)?;
        let (d, q_width, kv_width) = (
            config.d_model,
            config.n_heads * config.head_dim,
            config.n_kv_heads * config.head_dim,
        );
        Ok(Self {
            w_q: projection_weight(seed, "w_q", d, q_width).into(),
            w_k: projection_weight(seed, "w_k", d, kv_width).into(),
            w_v: projection_weight(seed, "w_v", d, kv_width).into(),
            w_o: projection_weight(seed, "w_o", q_width, d).into(),
            variant,
            config,
            kernel: Kernel::default(),
            precision: Precision::default(),
        })
    }

    /// The same layer running the attention core on `kernel`.
    pub fn with_kernel(self, kernel: Kernel) -> Self {
        Self { kernel, ..self }
    }

    /// The same layer with its cache and projection weights stored as `precision` says
    /// (docs/design.md §5): the weights are rounded here, once.
    pub fn with_precision(self, precision: Precision) -> Self {
        let dtype = precision.weight_dtype;
        Self {
            precision,
            w_q: self.w_q.into_dtype(dtype),
            w_k: self.w_k.into_dtype(dtype),
            w_v: self.w_v.into_dtype(dtype),
            w_o: self.w_o.into_dtype(dtype),
            ..self
        }
    }

    /// How the cache and the projection weights are stored.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Builds from `[d_model, n_heads, n_kv_heads, head_dim]`: the thin `mha`, `mqa` and `gqa`
    /// constructors all come here.
    pub(crate) fn with_shape(
        variant: Variant,
        shape: [usize; 4],
        rope_theta: f64,
        seed: u64,
    ) -> Result<Self> {
        let [d_model, n_heads, n_kv_heads, head_dim] = shape;
        let config = GroupedConfig {
            d_model,
            n_heads,
            n_kv_heads,
            head_dim,
            rope_theta,
        };
        Self::new(variant, config, seed)
    }

    /// The shape.
    pub fn config(&self) -> &GroupedConfig {
        &self.config
    }
}

impl AttentionLayer for GroupedAttention {
    fn info(&self) -> LayerInfo {
        let spec = LayerSpec::Grouped {
            variant: self.variant,
            config: self.config.clone(),
        };
        LayerInfo::of(spec, self.precision, &self.weights())
    }

    fn d_model(&self) -> usize {
        self.config.d_model
    }

    fn cache_planes(&self) -> Vec<PlaneSpec> {
        vec![
            PlaneSpec {
                name: "k",
                heads: self.config.n_kv_heads,
                head_width: self.config.head_dim,
                scale_split: None,
            },
            PlaneSpec {
                name: "v",
                heads: self.config.n_kv_heads,
                head_width: self.config.head_dim,
                scale_split: None,
            },
        ]
    }

    fn weights(&self) -> Vec<(&'static str, &Weight)> {
        vec![
            ("w_q", &self.w_q),
            ("w_k", &self.w_k),
            ("w_v", &self.w_v),
            ("w_o", &self.w_o),
        ]
    }

    fn prefill(&self, x: &Matrix, cache: &mut KvCache, out: &mut Matrix) -> Result<()> {
        let cfg = &self.config;
        let seq_len = check_step(cfg.d_model, x, cache, out)?;
        let batch = cache.batch();

        let mut q = project(x.view(), &self.w_q);
        let mut k = project(x.view(), &self.w_k);
        let v = project(x.view(), &self.w_v);
        let first_positions: Vec<usize> = cache.sequences().iter().map(|s| s.len()).collect();
        let rope = RopeTable::new(&row_positions(cache, seq_len), cfg.head_dim, cfg.rope_theta);
        rope.rotate_heads(&mut q, cfg.n_heads, cfg.head_dim, 0);
        rope.rotate_heads(&mut k, cfg.n_kv_heads, cfg.head_dim, 0);

        // Sequence b's new rows are contiguous in K and V: rows b·seq_len .. (b+1)·seq_len.
        let kv_block = seq_len * cfg.n_kv_heads * cfg.head_dim;
        for (b, seq) in cache.sequences_mut().iter_mut().enumerate() {
            let rows = b * kv_block..(b + 1) * kv_block;
            seq.append(b, seq_len, &[&k.data()[rows.clone()], &v.data()[rows]])?;
        }

        let q_width = cfg.n_heads * cfg.head_dim;
        let mut heads = vec![0.0f32; batch * seq_len * q_width];
        self.attend(&q, cache, &first_positions, &mut heads);
        let mut concat = Matrix::zeros(batch * seq_len, q_width);
        heads_to_rows(
            &heads,
            batch,
            cfg.n_heads,
            seq_len,
            cfg.head_dim,
            concat.data_mut(),
        );
        project_to(out, concat.view(), &self.w_o);
        Ok(())
    }

    fn core_inputs(&self, cache: &KvCache, seq_len: usize, seed: u64) -> CoreInputs {
        let cfg = &self.config;
        CoreInputs::random(
            cache,
            seq_len,
            cfg.n_heads * cfg.head_dim,
            cfg.n_heads * cfg.head_dim,
            seed,
        )
    }

    fn run_core(&self, inputs: &CoreInputs, cache: &KvCache, out: &mut [f32]) {
        self.attend(&inputs.queries, cache, &inputs.first_positions, out);
    }
}

impl GroupedAttention {
    /// The attention core: rotated queries `q: (batch · s_q, n_heads · head_dim)` against
    /// each sequence's cached K and V, whose first query sits at `first[b]`. Writes head-major
    /// `(batch, n_heads, s_q, head_dim)`.
    fn attend(&self, q: &Matrix, cache: &KvCache, first: &[usize], heads: &mut [f32]) {
        let cfg = &self.config;
        let s_q = q.rows() / cache.batch();
        let operands: Vec<AttentionOperands<'_>> = cache
            .sequences()
            .iter()
            .enumerate()
            .map(|(b, seq)| AttentionOperands {
                q: q.view().subrows(b * s_q, s_q),
                k: seq.heads(0),
                v: seq.heads(1),
                first_query_position: first[b],
            })
            .collect();
        let layout = HeadLayout {
            n_heads: cfg.n_heads,
            n_kv_heads: cfg.n_kv_heads,
            qk_dim: cfg.head_dim,
            v_dim: cfg.head_dim,
            scale: 1.0 / (cfg.head_dim as f32).sqrt(),
        };
        attention(self.kernel, &operands, &layout, heads);
    }
}
