//! Multi-head latent attention (DeepSeek-V2/V3), naive and absorbed, over one latent cache.

use faer::MatRef;

use crate::config::{Kernel, LayerSpec, MlaConfig, MlaPath, Precision, WeightDtype};
use crate::error::Result;
use crate::kernels::{
    AttentionOperands, HeadLayout, KvHead, RopeTable, Weight, attention, heads_to_rows,
    matmul_heads, matmul_heads_transposed, project, project_to, rms_norm_rows,
};
use crate::kv_cache::{KvCache, PlaneSpec, SequenceCache};
use crate::layer::{AttentionLayer, CoreInputs, LayerInfo, check_step, row_positions};
use crate::tensor::Matrix;
use crate::weights::{norm_scale, projection_weight};

/// How the query is projected.
#[derive(Clone, Debug)]
enum QueryProjection {
    /// `q = x · w_q`, `w_q: (d_model, n_heads · qk_head_dim)`.
    Direct { w_q: Weight },
    /// `q = RMSNorm_q(x · w_dq) · w_uq`, `w_dq: (d_model, q_lora_rank)`,
    /// `q_norm: (1, q_lora_rank)`, `w_uq: (q_lora_rank, n_heads · qk_head_dim)`.
    Compressed {
        w_dq: Weight,
        q_norm: Weight,
        w_uq: Weight,
    },
}

impl QueryProjection {
    /// The same projection with its projection weights stored as `dtype` (the norm stays f32).
    fn into_dtype(self, dtype: WeightDtype) -> Self {
        match self {
            QueryProjection::Direct { w_q } => QueryProjection::Direct {
                w_q: w_q.into_dtype(dtype),
            },
            QueryProjection::Compressed { w_dq, q_norm, w_uq } => QueryProjection::Compressed {
                w_dq: w_dq.into_dtype(dtype),
                q_norm,
                w_uq: w_uq.into_dtype(dtype),
            },
        }
    }
}

/// The values of an RMSNorm scale, which is built f32 and never rounded (docs/design.md §5).
fn norm_values(scale: &Weight) -> &[f32] {
    scale
        .as_f32()
        .expect("RMSNorm scales are built f32 and never rounded")
        .data()
}

/// MLA as docs/design.md §1 defines it. The cache holds one plane per sequence, `latent`, of width
/// `kv_lora_rank + qk_rope_head_dim`: each row is `[c_kv (after RMSNorm) | k_rope (after
/// RoPE)]`, the same for every head. Keeping both in one row lets the absorbed path read the
/// cache as a single MQA key of width `d_c + d_rope` whose first `d_c` columns are the value.
#[derive(Clone, Debug)]
pub struct MultiHeadLatentAttention {
    config: MlaConfig,
    path: MlaPath,
    kernel: Kernel,
    /// How the cache and the projection weights are stored.
    precision: Precision,
    query: QueryProjection,
    /// `(d_model, kv_lora_rank + qk_rope_head_dim)`: `[c_kv | k_rope_raw] = x · w_dkv`.
    w_dkv: Weight,
    /// `(1, kv_lora_rank)`, always f32.
    kv_norm: Weight,
    /// `(kv_lora_rank, n_heads · qk_nope_head_dim)`; head `h` owns columns `h·nope ..`.
    w_uk: Weight,
    /// `(kv_lora_rank, n_heads · v_head_dim)`; head `h` owns columns `h·v ..`.
    w_uv: Weight,
    /// `(n_heads · v_head_dim, d_model)`.
    w_o: Weight,
}

impl MultiHeadLatentAttention {
    /// Builds the layer with weights drawn from `seed`.
    pub fn new(config: MlaConfig, path: MlaPath, seed: u64) -> Result<Self> {
        config.validate()?;
        let c = &config;
        let q_width = c.n_heads * c.qk_head_dim();
        let query = match c.q_lora_rank {
            None => QueryProjection::Direct {
                w_q: projection_weight(seed, "w_q", c.d_model, q_width).into(),
            },
            Some(rank) => QueryProjection::Compressed {
                w_dq: projection_weight(seed, "w_dq", c.d_model, rank).into(),
                q_norm: norm_scale(seed, "q_norm", rank).into(),
                w_uq: projection_weight(seed, "w_uq", rank, q_width).into(),
            },
        };
        Ok(Self {
            query,
            w_dkv: projection_weight(seed, "w_dkv", c.d_model, c.kv_values_per_token()).into(),
            kv_norm: norm_scale(seed, "kv_norm", c.kv_lora_rank).into(),
            w_uk: projection_weight(seed, "w_uk", c.kv_lora_rank, c.n_heads * c.qk_nope_head_dim)
                .into(),
            w_uv: projection_weight(seed, "w_uv", c.kv_lora_rank, c.n_heads * c.v_head_dim).into(),
            w_o: projection_weight(seed, "w_o", c.n_heads * c.v_head_dim, c.d_model).into(),
            config,
            path,
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
            query: self.query.into_dtype(dtype),
            w_dkv: self.w_dkv.into_dtype(dtype),
            w_uk: self.w_uk.into_dtype(dtype),
            w_uv: self.w_uv.into_dtype(dtype),
            w_o: self.w_o.into_dtype(dtype),
            ..self
        }
    }

    /// How the cache and the projection weights are stored.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The shape.
    pub fn config(&self) -> &MlaConfig {
        &self.config
    }

    /// Queries `(t, n_heads · qk_head_dim)`, each head `[q_nope | q_rope]`, RoPE applied.
    fn queries(&self, x: &Matrix, rope: &RopeTable) -> Matrix {
        let c = &self.config;
        let mut q = match &self.query {
            QueryProjection::Direct { w_q } => project(x.view(), w_q),
            QueryProjection::Compressed { w_dq, q_norm, w_uq } => {
                let mut c_q = project(x.view(), w_dq);
                rms_norm_rows(&mut c_q, 0, norm_values(q_norm), c.rms_norm_eps);
                project(c_q.view(), w_uq)
            }
        };
        rope.rotate_heads(&mut q, c.n_heads, c.qk_head_dim(), c.qk_nope_head_dim);
        q
    }

    /// New latent rows `(t, d_c + d_rope)`: `[RMSNorm_kv(c_kv) | RoPE(k_rope_raw)]`.
    fn latents(&self, x: &Matrix, rope: &RopeTable) -> Matrix {
        let c = &self.config;
        let mut latent = project(x.view(), &self.w_dkv);
        rms_norm_rows(&mut latent, 0, norm_values(&self.kv_norm), c.rms_norm_eps);
        rope.rotate_heads(&mut latent, 1, 0, c.kv_lora_rank);
        latent
    }

    /// Naive path, first half: each sequence's latent, as stored and widened to f32,
    /// expanded into per-head keys `[k_nope_h | k_rope]` `(len, n_heads · qk_head_dim)` and
    /// values `(len, n_heads · v)`.
    fn expand(&self, seqs: &[SequenceCache]) -> Vec<(Matrix, Matrix)> {
        let c = &self.config;
        let (nope, qk, latent_width) =
            (c.qk_nope_head_dim, c.qk_head_dim(), c.kv_values_per_token());
        seqs.iter()
            .map(|seq| {
                // One head: token-major is the head's own layout, so for f32 this is the
                // cache's values in the cache's strides.
                let rows = seq.token_rows(0);
                let latent = MatRef::from_row_major_slice(&rows, seq.len(), latent_width);
                let c_kv = latent.subcols(0, c.kv_lora_rank);
                let k_nope = project(c_kv, &self.w_uk);
                let values = project(c_kv, &self.w_uv);
                let mut keys = Matrix::zeros(seq.len(), c.n_heads * qk);
                for (j, latent) in rows.chunks_exact(latent_width).enumerate() {
                    let k_rope = &latent[c.kv_lora_rank..];
                    let row = keys.row_mut(j);
                    for h in 0..c.n_heads {
                        row[h * qk..h * qk + nope]
                            .copy_from_slice(&k_nope.row(j)[h * nope..(h + 1) * nope]);
                        row[h * qk + nope..(h + 1) * qk].copy_from_slice(k_rope);
                    }
                }
                (keys, values)
            })
            .collect()
    }

    /// Naive path, second half: MHA of `q: (batch · s_q, n_heads · qk_head_dim)` over the
    /// expanded keys and values. Writes head-major `(batch, n_heads, s_q, v_head_dim)`.
    fn attend_expanded(
        &self,
        q: &Matrix,
        expanded: &[(Matrix, Matrix)],
        first: &[usize],
        heads: &mut [f32],
    ) {
        let qk = self.config.qk_head_dim();
        let c = &self.config;
        let s_q = q.rows() / expanded.len();
        let operands: Vec<AttentionOperands<'_>> = expanded
            .iter()
            .enumerate()
            .map(|(b, (keys, values))| AttentionOperands {
                q: q.view().subrows(b * s_q, s_q),
                k: (0..c.n_heads)
                    .map(|h| KvHead::F32(keys.view().subcols(h * qk, qk)))
                    .collect(),
                v: (0..c.n_heads)
                    .map(|h| KvHead::F32(values.view().subcols(h * c.v_head_dim, c.v_head_dim)))
                    .collect(),
                first_query_position: first[b],
            })
            .collect();
        let layout = HeadLayout {
            n_heads: c.n_heads,
            n_kv_heads: c.n_heads,
            qk_dim: c.qk_head_dim(),
            v_dim: c.v_head_dim,
            scale: self.score_scale(),
        };
        attention(self.kernel, &operands, &layout, heads);
    }

    /// Absorbed path, queries: head `h` becomes `[q_nope_h · W_uk_hᵀ | q_rope_h]`,
    /// `(t, n_heads · (kv_lora_rank + qk_rope_head_dim))`.
    fn absorb_queries(&self, q: &Matrix) -> Matrix {
        let c = &self.config;
        let (d_c, nope, qk) = (c.kv_lora_rank, c.qk_nope_head_dim, c.qk_head_dim());
        let latent_width = c.kv_values_per_token();
        let mut q_latent = Matrix::zeros(q.rows(), c.n_heads * latent_width);
        // Every head's `q_nope_h · W_uk_hᵀ` in one parallel region, W_uk streamed once.
        matmul_heads_transposed(
            q_latent.view_mut(),
            latent_width,
            q.view(),
            qk,
            self.w_uk.view(),
            c.n_heads,
        );
        for r in 0..q.rows() {
            for h in 0..c.n_heads {
                let q_rope = &q.row(r)[h * qk + nope..(h + 1) * qk];
                q_latent.row_mut(r)[h * latent_width + d_c..(h + 1) * latent_width]
                    .copy_from_slice(q_rope);
            }
        }
        q_latent
    }

    /// Absorbed path, core: MQA of the absorbed queries over each sequence's latent rows (key:
    /// the whole row, value: its `c_kv` part). Writes head-major `(batch, n_heads, s_q, d_c)`.
    fn attend_latent(
        &self,
        q_latent: &Matrix,
        seqs: &[SequenceCache],
        first: &[usize],
        heads_latent: &mut [f32],
    ) {
        let c = &self.config;
        let s_q = q_latent.rows() / seqs.len();
        let operands: Vec<AttentionOperands<'_>> = seqs
            .iter()
            .enumerate()
            .map(|(b, seq)| AttentionOperands {
                q: q_latent.view().subrows(b * s_q, s_q),
                k: vec![seq.head(0, 0)],
                v: vec![seq.head(0, 0).subcols(0, c.kv_lora_rank)],
                first_query_position: first[b],
            })
            .collect();
        let layout = HeadLayout {
            n_heads: c.n_heads,
            n_kv_heads: 1,
            qk_dim: c.kv_values_per_token(),
            v_dim: c.kv_lora_rank,
            scale: self.score_scale(),
        };
        attention(self.kernel, &operands, &layout, heads_latent);
    }

    /// Absorbed path, output: `o_h = õ_h · W_uv_h` for every (sequence, head) block, in one
    /// parallel region. `heads_latent: (batch, n_heads, s_q, d_c)` → `heads: (batch, n_heads,
    /// s_q, v)`.
    fn unabsorb(&self, heads_latent: &[f32], s_q: usize, heads: &mut [f32]) {
        matmul_heads(
            heads,
            heads_latent,
            s_q,
            self.w_uv.view(),
            self.config.n_heads,
        );
    }

    /// `1 / sqrt(qk_nope_head_dim + qk_rope_head_dim)`, on both paths.
    fn score_scale(&self) -> f32 {
        1.0 / (self.config.qk_head_dim() as f32).sqrt()
    }
}

impl AttentionLayer for MultiHeadLatentAttention {
    fn info(&self) -> LayerInfo {
        let spec = LayerSpec::Mla {
            config: self.config.clone(),
            path: self.path,
        };
        LayerInfo::of(spec, self.precision, &self.weights())
    }

    fn d_model(&self) -> usize {
        self.config.d_model
    }

    fn cache_planes(&self) -> Vec<PlaneSpec> {
        vec![PlaneSpec {
            name: "latent",
            heads: 1,
            head_width: self.config.kv_values_per_token(),
            // int8: one scale for `c_kv`, one for `k_rope` (docs/design.md §5).
            scale_split: Some(self.config.kv_lora_rank),
        }]
    }

    fn weights(&self) -> Vec<(&'static str, &Weight)> {
        let mut weights = match &self.query {
            QueryProjection::Direct { w_q } => vec![("w_q", w_q)],
            QueryProjection::Compressed { w_dq, q_norm, w_uq } => {
                vec![("w_dq", w_dq), ("q_norm", q_norm), ("w_uq", w_uq)]
            }
        };
        weights.extend([
            ("w_dkv", &self.w_dkv),
            ("kv_norm", &self.kv_norm),
            ("w_uk", &self.w_uk),
            ("w_uv", &self.w_uv),
            ("w_o", &self.w_o),
        ]);
        weights
    }

    fn prefill(&self, x: &Matrix, cache: &mut KvCache, out: &mut Matrix) -> Result<()> {
        let c = &self.config;
        let seq_len = check_step(c.d_model, x, cache, out)?;
        let batch = cache.batch();
        let rope = RopeTable::new(
            &row_positions(cache, seq_len),
            c.qk_rope_head_dim,
            c.rope_theta,
        );
        let q = self.queries(x, &rope);
        let latent = self.latents(x, &rope);
        let first: Vec<usize> = cache.sequences().iter().map(|s| s.len()).collect();
        let block = seq_len * latent.cols();
        for (b, seq) in cache.sequences_mut().iter_mut().enumerate() {
            seq.append(b, seq_len, &[&latent.data()[b * block..(b + 1) * block]])?;
        }

        let mut heads = vec![0.0f32; batch * c.n_heads * seq_len * c.v_head_dim];
        match self.path {
            MlaPath::Naive => {
                let expanded = self.expand(cache.sequences());
                self.attend_expanded(&q, &expanded, &first, &mut heads);
            }
            MlaPath::Absorbed => {
                let q_latent = self.absorb_queries(&q);
                let mut heads_latent = vec![0.0f32; batch * c.n_heads * seq_len * c.kv_lora_rank];
                self.attend_latent(&q_latent, cache.sequences(), &first, &mut heads_latent);
                self.unabsorb(&heads_latent, seq_len, &mut heads);
            }
        }
        let mut concat = Matrix::zeros(batch * seq_len, c.n_heads * c.v_head_dim);
        heads_to_rows(
            &heads,
            batch,
            c.n_heads,
            seq_len,
            c.v_head_dim,
            concat.data_mut(),
        );
        project_to(out, concat.view(), &self.w_o);
        Ok(())
    }

    fn core_inputs(&self, cache: &KvCache, seq_len: usize, seed: u64) -> CoreInputs {
        let c = &self.config;
        match self.path {
            MlaPath::Naive => {
                let width = c.n_heads * c.qk_head_dim();
                let mut inputs =
                    CoreInputs::random(cache, seq_len, width, c.n_heads * c.v_head_dim, seed);
                inputs.expanded = self.expand(cache.sequences());
                inputs
            }
            MlaPath::Absorbed => {
                let width = c.n_heads * c.kv_values_per_token();
                CoreInputs::random(cache, seq_len, width, c.n_heads * c.kv_lora_rank, seed)
            }
        }
    }

    fn run_core(&self, inputs: &CoreInputs, cache: &KvCache, out: &mut [f32]) {
        match self.path {
            MlaPath::Naive => self.attend_expanded(
                &inputs.queries,
                &inputs.expanded,
                &inputs.first_positions,
                out,
            ),
            MlaPath::Absorbed => self.attend_latent(
                &inputs.queries,
                cache.sequences(),
                &inputs.first_positions,
                out,
            ),
        }
    }
}
