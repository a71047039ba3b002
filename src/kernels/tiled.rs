//! Flash-style grouped attention: the kernel the harness times by default.
//!
//! Work is split into tasks of (sequence, KV head, query tile). A task packs every query head
//! of its group and every query of its tile into one matrix, so each block of keys and values
//! is read once for the whole group (GQA's and MQA's real saving at decode; MLA absorbed packs
//! all heads over the one latent). Keys are visited in blocks with an online softmax, so the
//! `s_q × s_k` score matrix never exists; blocks entirely in the causal future are skipped.
//! When there are fewer tasks than threads (decode with few KV heads), each task's keys are
//! split into ranges that run in parallel and are merged by log-sum-exp, so every core streams
//! the cache. Matmuls inside run sequentially: the parallelism is over tasks.
//!
//! A call whose sequences all have one query row (decode) goes to `decode.rs` first, which
//! takes it unless its groups are wide (more than eight rows) over keys narrower than 256.

use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

use super::layout::{AttentionOperands, HeadLayout, KvHead};
use super::microkernel::ManyRows;
use super::narrow::{StoredRows, narrow_add_values, narrow_scores};
use super::simd::{FEW_ROWS_MAX, exp_shifted_sum, few_row_scores, max_keeping_nan, max_of};

/// Rows of a packed query block (group heads × tile queries) aimed for. 128 rather than 64:
/// each block of keys and values read from memory then serves twice the rows, which at 8192
/// tokens (a head's keys and values no longer in L3 beside the other thread's) made MHA's and
/// GQA-8's prefill cores 3–8% faster and left 2048 tokens as it was; the block's scores,
/// weights and accumulators (128 KiB, 128 KiB, 64 KiB at width 128) still fit in L2.
const TARGET_ROWS: usize = 128;
/// Keys per block of the online softmax.
const KEY_BLOCK: usize = 256;
/// Largest packed block (rows) whose keys are taken in one long block instead of blocks of
/// [`KEY_BLOCK`]; such blocks also get their scores from [`few_row_scores`] when their keys
/// are contiguous.
const WIDE_BLOCK_MAX_ROWS: usize = FEW_ROWS_MAX;
/// Longest such block.
const WIDE_BLOCK_MAX_KEYS: usize = 16384;
/// Fewest keys worth a split of their own.
const MIN_KEYS_PER_SPLIT: usize = 512;

/// Causal grouped attention, tiled. Same contract as [`attention`](super::attention): `out` is
/// head-major `(batch, n_heads, s_q, v_dim)`.
///
/// # Panics
/// If the operands disagree with `layout` or `out` has the wrong length (the layers build
/// them; this is not user input).
pub fn tiled_attention(seqs: &[AttentionOperands<'_>], layout: &HeadLayout, out: &mut [f32]) {
    let s_q = seqs.first().map_or(0, |s| s.q.nrows());
    let group = layout.n_heads / layout.n_kv_heads;
    let dv = layout.v_dim;
    assert_eq!(
        out.len(),
        seqs.len() * layout.n_heads * s_q * dv,
        "output length"
    );
    if s_q == 0 || dv == 0 || super::decode::decode_attention(seqs, layout, out) {
        return;
    }
    let tile = (TARGET_ROWS / group).clamp(1, s_q);
    let n_tiles = s_q.div_ceil(tile);
    let tasks = seqs.len() * layout.n_kv_heads * n_tiles;
    let threads = rayon::current_num_threads();
    let longest = seqs.iter().map(|s| s.k[0].nrows()).max().unwrap_or(0);
    let splits = if tasks >= threads {
        1
    } else {
        (2 * threads)
            .div_ceil(tasks)
            .min(longest / MIN_KEYS_PER_SPLIT)
            .max(1)
    };

    // Heads of one group are adjacent in the head-major output: one chunk per (sequence, KV head).
    out.par_chunks_mut(group * s_q * dv)
        .enumerate()
        .for_each(|(index, chunk)| {
            let (b, g) = (index / layout.n_kv_heads, index % layout.n_kv_heads);
            let seq = &seqs[b];
            let mut heads: Vec<&mut [f32]> = chunk.chunks_mut(s_q * dv).collect();
            let mut tiles = Vec::with_capacity(n_tiles);
            for q0 in (0..s_q).step_by(tile) {
                let tq = tile.min(s_q - q0);
                let parts: Vec<&mut [f32]> = heads
                    .iter_mut()
                    .map(|rest| {
                        let (now, later) = std::mem::take(rest).split_at_mut(tq * dv);
                        *rest = later;
                        now
                    })
                    .collect();
                tiles.push((q0, tq, parts));
            }
            // Latest tiles first: causal work grows with the tile's position, so the last
            // tasks left for a thread to steal are the small ones and both cores finish
            // together.
            tiles.into_par_iter().rev().for_each(|(q0, tq, mut parts)| {
                let task = Task {
                    seq,
                    layout,
                    g,
                    group,
                    q0,
                    tq,
                };
                task.run(splits, &mut parts);
            });
        });
}

/// One (sequence, KV head, query tile).
struct Task<'a> {
    seq: &'a AttentionOperands<'a>,
    layout: &'a HeadLayout,
    g: usize,
    group: usize,
    q0: usize,
    tq: usize,
}

/// The running state of an online softmax over some keys: unnormalised output rows, row
/// maxima and row sums.
struct Partial {
    acc: Vec<f32>,
    max: Vec<f32>,
    sum: Vec<f32>,
}

impl Partial {
    /// Nothing seen yet, for `rows` rows of `dv` values.
    fn new(rows: usize, dv: usize) -> Self {
        Self {
            acc: vec![0.0; rows * dv],
            max: vec![f32::NEG_INFINITY; rows],
            sum: vec![0.0; rows],
        }
    }
}

/// Where the f32 block loop reads its keys and values: `block(j0, nb)` gives keys
/// `(nb, qk_dim)` and values `(nb, v_dim)` of keys `j0..j0 + nb` as f32.
trait Blocks {
    fn block(&mut self, j0: usize, nb: usize) -> (MatRef<'_, f32>, MatRef<'_, f32>);
}

/// f32 heads: the blocks are views of them.
struct F32Blocks<'a> {
    k: MatRef<'a, f32>,
    v: MatRef<'a, f32>,
}

impl Blocks for F32Blocks<'_> {
    #[inline(always)]
    fn block(&mut self, j0: usize, nb: usize) -> (MatRef<'_, f32>, MatRef<'_, f32>) {
        (self.k.subrows(j0, nb), self.v.subrows(j0, nb))
    }
}

/// Heads in any type, each block widened into f32 buffers that grow to the largest block
/// and are reused (allocated once per range, not per block).
struct Widened<'a> {
    k: KvHead<'a>,
    v: KvHead<'a>,
    k_buf: Vec<f32>,
    v_buf: Vec<f32>,
}

impl<'a> Widened<'a> {
    fn new(k: KvHead<'a>, v: KvHead<'a>) -> Self {
        Self {
            k,
            v,
            k_buf: Vec::new(),
            v_buf: Vec::new(),
        }
    }
}

impl Blocks for Widened<'_> {
    fn block(&mut self, j0: usize, nb: usize) -> (MatRef<'_, f32>, MatRef<'_, f32>) {
        let widen = |head: KvHead<'_>, buf: &mut Vec<f32>| {
            let n = nb * head.ncols();
            if buf.len() < n {
                buf.resize(n, 0.0);
            }
            head.subrows(j0, nb).widen_into(&mut buf[..n]);
        };
        widen(self.k, &mut self.k_buf);
        widen(self.v, &mut self.v_buf);
        let (dk, dv) = (self.k.ncols(), self.v.ncols());
        (
            MatRef::from_row_major_slice(&self.k_buf[..nb * dk], nb, dk),
            MatRef::from_row_major_slice(&self.v_buf[..nb * dv], nb, dv),
        )
    }
}

impl Task<'_> {
    fn rows(&self) -> usize {
        self.group * self.tq
    }

    /// Keys any row of the tile may see: up to the last query's position.
    fn visible_keys(&self) -> usize {
        (self.seq.first_query_position + self.q0 + self.tq).min(self.seq.k[self.g].nrows())
    }

    fn run(&self, splits: usize, parts: &mut [&mut [f32]]) {
        let dv = self.layout.v_dim;
        let q = self.packed_queries();
        let keys = self.visible_keys();
        let ranges: Vec<(usize, usize)> = if splits <= 1 || keys < 2 * MIN_KEYS_PER_SPLIT {
            vec![(0, keys)]
        } else {
            let per = keys.div_ceil(splits).next_multiple_of(KEY_BLOCK);
            (0..keys)
                .step_by(per)
                .map(|s| (s, (s + per).min(keys)))
                .collect()
        };
        let partials: Vec<Partial> = if ranges.len() == 1 {
            vec![self.attend(&q, ranges[0])]
        } else {
            ranges.par_iter().map(|&r| self.attend(&q, r)).collect()
        };
        // Merge by log-sum-exp and normalise: o = Σ e^(m_s − M) acc_s / Σ e^(m_s − M) l_s. A
        // range that saw a non-finite score has a NaN maximum and sum (`max_of`), so its
        // weight and the total are NaN and the row comes out NaN.
        for r in 0..self.rows() {
            let top = partials
                .iter()
                .map(|p| p.max[r])
                .fold(f32::NEG_INFINITY, f32::max);
            let mut total = 0.0f32;
            let (h_local, i) = (r / self.tq, r % self.tq);
            let dst = &mut parts[h_local][i * dv..(i + 1) * dv];
            dst.fill(0.0);
            for p in &partials {
                let w = if p.max[r] == f32::NEG_INFINITY {
                    0.0
                } else {
                    (p.max[r] - top).exp()
                };
                total += w * p.sum[r];
                for (d, a) in dst.iter_mut().zip(&p.acc[r * dv..(r + 1) * dv]) {
                    *d += w * a;
                }
            }
            let inv = 1.0 / total;
            dst.iter_mut().for_each(|d| *d *= inv);
        }
    }

    /// `(group · tq, qk_dim)`: row `h_local · tq + i` is query `q0 + i` of head
    /// `g · group + h_local`.
    fn packed_queries(&self) -> Vec<f32> {
        let d = self.layout.qk_dim;
        let mut packed = vec![0.0f32; self.rows() * d];
        for h_local in 0..self.group {
            let h = self.g * self.group + h_local;
            let q_h = self.seq.q.subcols(h * d, d).subrows(self.q0, self.tq);
            // Rows that are contiguous copy as slices: element by element, the copy took a
            // few percent of a prefill task.
            let rows = q_h.try_as_row_major();
            for i in 0..self.tq {
                let row = &mut packed[(h_local * self.tq + i) * d..][..d];
                match rows {
                    Some(rows) => row.copy_from_slice(rows.row(i).as_slice()),
                    None => row
                        .iter_mut()
                        .enumerate()
                        .for_each(|(c, v)| *v = q_h[(i, c)]),
                }
            }
        }
        packed
    }

    /// Online softmax over keys `range`, block by block, compiled for AVX2 and FMA when the
    /// CPU has them (checked by [`has_avx2_fma`](super::simd::has_avx2_fma); the crate itself
    /// targets the x86-64 baseline).
    fn attend(&self, packed: &[f32], range: (usize, usize)) -> Partial {
        #[cfg(target_arch = "x86_64")]
        if super::simd::has_avx2_fma() {
            // SAFETY: `attend_avx2_fma` only needs AVX2 and FMA, and the CPU has both.
            return unsafe { self.attend_avx2_fma(packed, range) };
        }
        self.attend_blocks(packed, range)
    }

    /// [`Self::attend_blocks`] compiled for AVX2 and FMA. A real function carries the target
    /// features: a closure handed to a feature-enabled wrapper is not reliably inlined into
    /// it, and then its loops (and `mul_add`) are compiled for the baseline.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn attend_avx2_fma(&self, packed: &[f32], range: (usize, usize)) -> Partial {
        self.attend_blocks(packed, range)
    }

    /// Dispatches on how the group's keys and values are stored: f32 heads go through the
    /// f32 block loop as they are; stored ones, for a few rows (decode), through the narrow
    /// kernels that widen each row in registers; otherwise (prefill) each block of keys and
    /// values is widened into f32 buffers reused across blocks, then read as f32.
    #[inline(always)]
    fn attend_blocks(&self, packed: &[f32], range: (usize, usize)) -> Partial {
        let few = self.rows() <= WIDE_BLOCK_MAX_ROWS;
        match (self.seq.k[self.g], self.seq.v[self.g]) {
            (KvHead::F32(k), KvHead::F32(v)) => self.attend_f32(packed, range, F32Blocks { k, v }),
            (KvHead::Stored(k), KvHead::Stored(v)) if few => {
                self.attend_narrow(packed, range, (k, None), v)
            }
            (KvHead::Split(a, b), KvHead::Stored(v)) if few => {
                self.attend_narrow(packed, range, (a, Some(b)), v)
            }
            (k, v) => self.attend_f32(packed, range, Widened::new(k, v)),
        }
    }

    /// The block length of a key range: the whole range (up to [`WIDE_BLOCK_MAX_KEYS`]) for a
    /// few rows, else [`KEY_BLOCK`].
    fn block_len(&self, (start, end): (usize, usize)) -> usize {
        if self.rows() <= WIDE_BLOCK_MAX_ROWS {
            (end - start).clamp(1, WIDE_BLOCK_MAX_KEYS)
        } else {
            KEY_BLOCK
        }
    }

    /// Whether the values of keys after the tile's first query (hidden from some rows, which
    /// give them weight 0) are all finite. 0 · NaN (or 0 · ∞) is NaN, so a non-finite value
    /// among them would leak into rows that cannot see it. They are fewer than `tq` (none at
    /// decode): checked once per range, this decides how the values are weighed.
    fn hidden_values_finite(&self, v: KvHead<'_>, (start, end): (usize, usize)) -> bool {
        let hidden = (self.seq.first_query_position + self.q0 + 1).clamp(start, end);
        match v.subrows(hidden, end - hidden) {
            // Row by row: one head's rows of a cache plane are far apart, and a check that
            // walks each column down them misses the cache on every value (it took 5% of
            // MHA's prefill, 63 hidden rows a task).
            KvHead::F32(m) if let Some(rows) = m.try_as_row_major() => {
                (0..rows.nrows()).all(|j| rows.row(j).as_slice().iter().all(|x| x.is_finite()))
            }
            hidden => hidden.is_all_finite(),
        }
    }

    /// The online softmax over keys `range` with keys and values read as f32 blocks from
    /// `blocks` (the heads themselves, or stored heads widened block by block).
    #[inline(always)]
    fn attend_f32(
        &self,
        packed: &[f32],
        (start, end): (usize, usize),
        mut blocks: impl Blocks,
    ) -> Partial {
        let (d, rows) = (self.layout.qk_dim, self.rows());
        let q = MatRef::from_row_major_slice(packed, rows, d);
        // Few rows (decode): one block spans the whole range, so the group's keys are scored
        // in one pass (`few_row_scores`, or one faer matmul for keys that are not contiguous)
        // and its values read by one long matmul (faer's matrix-vector path streams them),
        // instead of many short calls; the score buffer stays small because the rows are few.
        let block_len = self.block_len((start, end));
        let mut partial = Partial::new(rows, self.layout.v_dim);
        let hidden_finite = self.hidden_values_finite(self.seq.v[self.g], (start, end));
        if rows > WIDE_BLOCK_MAX_ROWS
            && let Some(mut many) = self.many_rows(packed)
        {
            for j0 in (start..end).step_by(block_len) {
                let nb = block_len.min(end - j0);
                let (k, v) = blocks.block(j0, nb);
                many.block(k, v, j0, &mut partial.acc, hidden_finite);
            }
            many.stats_into(&mut partial.max, &mut partial.sum);
            return partial;
        }
        let mut scores = vec![0.0f32; rows * block_len];
        for j0 in (start..end).step_by(block_len) {
            let nb = block_len.min(end - j0);
            let block = &mut scores[..rows * nb];
            let (k, v) = blocks.block(j0, nb);
            if rows <= WIDE_BLOCK_MAX_ROWS
                && let Some(keys) = k.try_as_row_major()
            {
                few_row_scores(keys, packed, rows, self.layout.scale, block);
            } else {
                // Written as `blockᵀ = K_block · qᵀ` (and `accᵀ += V_blockᵀ · blockᵀ` in
                // `add_values`): the long key dimension becomes faer's row dimension, which
                // its kernels stream without repacking the keys for every few query rows.
                faer::linalg::matmul::matmul(
                    MatMut::from_column_major_slice_mut(block, nb, rows),
                    Accum::Replace,
                    k,
                    q.transpose(),
                    self.layout.scale,
                    Par::Seq,
                );
            }
            self.softmax_block(&mut partial, block, (j0, nb));
            self.add_values(&mut partial.acc, block, v, (j0, nb), hidden_finite);
        }
        partial
    }

    /// The many-row block loop's micro-kernels for this task's packed queries, where the CPU
    /// runs them (`microkernel.rs`).
    fn many_rows(&self, packed: &[f32]) -> Option<ManyRows> {
        let l = self.layout;
        let last_seen = |r: usize| self.seq.first_query_position + self.q0 + r % self.tq;
        ManyRows::new(packed, self.rows(), (l.qk_dim, l.v_dim), l.scale, last_seen)
    }

    /// The online softmax at decode over keys and values stored in bf16, f16 or int8, read
    /// by the narrow kernels: one block over the whole range, like the f32 few-row path, and
    /// no f32 copy of the cache. `keys` is one stored part, or two side by side with a scale
    /// each (MLA's int8 latent): then each part is scored against its columns of the queries
    /// and the scores added.
    #[inline(always)]
    fn attend_narrow(
        &self,
        packed: &[f32],
        (start, end): (usize, usize),
        keys: (StoredRows<'_>, Option<StoredRows<'_>>),
        values: StoredRows<'_>,
    ) -> Partial {
        let (dv, rows) = (self.layout.v_dim, self.rows());
        let block_len = self.block_len((start, end));
        let mut partial = Partial::new(rows, dv);
        let mut scores = vec![0.0f32; rows * block_len];
        // Split keys: the queries' columns of each part, and the second part's scores.
        let mut split = keys.1.map(|_| {
            let (d, first) = (self.layout.qk_dim, keys.0.ncols());
            let columns = |range: std::ops::Range<usize>| -> Vec<f32> {
                packed
                    .chunks_exact(d)
                    .flat_map(|q| q[range.clone()].iter().copied())
                    .collect()
            };
            let second_scores = vec![0.0f32; rows * block_len];
            (columns(0..first), columns(first..d), second_scores)
        });
        let hidden_finite = self.hidden_values_finite(KvHead::Stored(values), (start, end));
        let scale = self.layout.scale;
        for j0 in (start..end).step_by(block_len) {
            let nb = block_len.min(end - j0);
            let block = &mut scores[..rows * nb];
            match (keys.1, &mut split) {
                (Some(second), Some((q_first, q_second, more))) => {
                    let more = &mut more[..rows * nb];
                    narrow_scores(keys.0.subrows(j0, nb), q_first, rows, scale, block);
                    narrow_scores(second.subrows(j0, nb), q_second, rows, scale, more);
                    block.iter_mut().zip(more.iter()).for_each(|(s, m)| *s += m);
                }
                _ => narrow_scores(keys.0.subrows(j0, nb), packed, rows, scale, block),
            }
            self.softmax_block(&mut partial, block, (j0, nb));
            if hidden_finite {
                narrow_add_values(values.subrows(j0, nb), block, rows, &mut partial.acc);
                continue;
            }
            // Each row over its visible keys only, so 0 · NaN never reaches a row that cannot
            // see the NaN (as in `add_values`).
            for r in 0..rows {
                let visible = self.visible(r, j0, nb);
                narrow_add_values(
                    values.subrows(j0, visible),
                    &block[r * nb..][..visible],
                    1,
                    &mut partial.acc[r * dv..][..dv],
                );
            }
        }
        partial
    }

    /// One block's step of the online softmax: `block` holds the scores of keys
    /// `j0..j0 + nb`, row-major `(rows, nb)`; each row's are turned into its weights (0 for
    /// keys it cannot see), and its maximum, sum and accumulators rescaled.
    #[inline(always)]
    fn softmax_block(&self, partial: &mut Partial, block: &mut [f32], (j0, nb): (usize, usize)) {
        let dv = self.layout.v_dim;
        for r in 0..self.rows() {
            let visible = self.visible(r, j0, nb);
            let row = &mut block[r * nb..(r + 1) * nb];
            let acc = &mut partial.acc[r * dv..(r + 1) * dv];
            if visible == 0 {
                row.fill(0.0);
                continue;
            }
            let block_max = max_of(&row[..visible]);
            let new_max = max_keeping_nan(partial.max[r], block_max);
            let rescale = if partial.max[r] == f32::NEG_INFINITY {
                0.0
            } else {
                (partial.max[r] - new_max).exp()
            };
            let block_sum = exp_shifted_sum(&mut row[..visible], new_max);
            row[visible..].fill(0.0);
            partial.sum[r] = partial.sum[r] * rescale + block_sum;
            partial.max[r] = new_max;
            if rescale != 1.0 {
                acc.iter_mut().for_each(|a| *a *= rescale);
            }
        }
    }

    /// Keys of the `nb` from `j0` that row `r` sees: row r is query `q0 + i`, `i = r mod tq`,
    /// which sees keys up to position `first_query_position + q0 + i`.
    #[inline(always)]
    fn visible(&self, r: usize, j0: usize, nb: usize) -> usize {
        (self.seq.first_query_position + self.q0 + r % self.tq + 1)
            .saturating_sub(j0)
            .min(nb)
    }

    /// `accᵀ += V_blockᵀ · weights`: `acc` column-major `(v_dim, rows)`, `weights` the
    /// column-major `(nb, rows)` block of keys `j0..j0 + nb`, 0 where a row cannot see a key,
    /// `v` those keys' values `(nb, v_dim)`.
    /// One product for the block when `hidden_finite` (the values of keys hidden from some row
    /// are all finite, so their zero weights add exactly 0); otherwise one product per row
    /// over its visible keys only, so that 0 · NaN never reaches a row that cannot see the
    /// NaN (slower, and only taken when the run is failing anyway).
    #[inline(always)]
    fn add_values(
        &self,
        acc: &mut [f32],
        weights: &[f32],
        v: MatRef<'_, f32>,
        (j0, nb): (usize, usize),
        hidden_finite: bool,
    ) {
        let (dv, rows) = (self.layout.v_dim, self.rows());
        if hidden_finite {
            add_weighted_values(acc, weights, v, rows);
            return;
        }
        for r in 0..rows {
            let visible = self.visible(r, j0, nb);
            faer::linalg::matmul::matmul(
                MatMut::from_row_major_slice_mut(&mut acc[r * dv..][..dv], 1, dv),
                Accum::Add,
                MatRef::from_row_major_slice(&weights[r * nb..][..visible], 1, visible),
                v.subrows(0, visible),
                1.0f32,
                Par::Seq,
            );
        }
    }
}

/// `accᵀ += Vᵀ · weights` for `rows` packed rows: `acc` column-major `(v.ncols(), rows)`,
/// `weights` column-major `(v.nrows(), rows)`, `v` the block's f32 values `(nb, v_dim)`.
/// faer's matrix-vector path streams the values at the memory's speed; prefill's block loop
/// and decode's few-row path both take it.
#[inline(always)]
pub(super) fn add_weighted_values(
    acc: &mut [f32],
    weights: &[f32],
    v: MatRef<'_, f32>,
    rows: usize,
) {
    faer::linalg::matmul::matmul(
        MatMut::from_column_major_slice_mut(acc, v.ncols(), rows),
        Accum::Add,
        v.transpose(),
        MatRef::from_column_major_slice(weights, v.nrows(), rows),
        1.0f32,
        Par::Seq,
    );
}
