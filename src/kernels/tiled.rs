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

use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

use super::layout::{AttentionOperands, HeadLayout};
use super::simd::{FEW_ROWS_MAX, exp_shifted_sum, few_row_scores, max_keeping_nan, max_of};

/// Rows of a packed query block (group heads × tile queries) aimed for.
const TARGET_ROWS: usize = 64;
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
    if s_q == 0 || dv == 0 {
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
            tiles.into_par_iter().for_each(|(q0, tq, mut parts)| {
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
            let q_h = self.seq.q.subcols(h * d, d);
            for i in 0..self.tq {
                let row = &mut packed[(h_local * self.tq + i) * d..][..d];
                for (c, v) in row.iter_mut().enumerate() {
                    *v = q_h[(self.q0 + i, c)];
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

    #[inline(always)]
    fn attend_blocks(&self, packed: &[f32], (start, end): (usize, usize)) -> Partial {
        let (d, dv, rows) = (self.layout.qk_dim, self.layout.v_dim, self.rows());
        let (k, v) = (self.seq.k[self.g], self.seq.v[self.g]);
        let q = MatRef::from_row_major_slice(packed, rows, d);
        // Few rows (decode): one block spans the whole range, so the group's keys are scored
        // in one pass (`few_row_scores`, or one faer matmul for keys that are not contiguous)
        // and its values read by one long matmul (faer's matrix-vector path streams them),
        // instead of many short calls; the score buffer stays small because the rows are few.
        let block_len = if rows <= WIDE_BLOCK_MAX_ROWS {
            (end - start).clamp(1, WIDE_BLOCK_MAX_KEYS)
        } else {
            KEY_BLOCK
        };
        let mut partial = Partial {
            acc: vec![0.0; rows * dv],
            max: vec![f32::NEG_INFINITY; rows],
            sum: vec![0.0; rows],
        };
        let mut scores = vec![0.0f32; rows * block_len];
        // Keys after the tile's first query are hidden from some rows, which give them weight
        // 0; but 0 · NaN (or 0 · ∞) is NaN, so a non-finite value among them would leak into
        // rows that cannot see it. They are fewer than `tq` (none at decode): checked once
        // here, they decide how `add_values` weighs the values.
        let hidden = (self.seq.first_query_position + self.q0 + 1).clamp(start, end);
        let hidden_finite = v.subrows(hidden, end - hidden).is_all_finite();
        for j0 in (start..end).step_by(block_len) {
            let nb = block_len.min(end - j0);
            let block = &mut scores[..rows * nb];
            if rows <= WIDE_BLOCK_MAX_ROWS
                && let Some(keys) = k.subrows(j0, nb).try_as_row_major()
            {
                few_row_scores(keys, packed, rows, self.layout.scale, block);
            } else {
                // Written as `blockᵀ = K_block · qᵀ` (and `accᵀ += V_blockᵀ · blockᵀ` in
                // `add_values`): the long key dimension becomes faer's row dimension, which
                // its kernels stream without repacking the keys for every few query rows.
                faer::linalg::matmul::matmul(
                    MatMut::from_column_major_slice_mut(block, nb, rows),
                    Accum::Replace,
                    k.subrows(j0, nb),
                    q.transpose(),
                    self.layout.scale,
                    Par::Seq,
                );
            }
            for r in 0..rows {
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
            self.add_values(&mut partial.acc, block, (j0, nb), hidden_finite);
        }
        partial
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
    /// column-major `(nb, rows)` block of keys `j0..j0 + nb`, 0 where a row cannot see a key.
    /// One product for the block when `hidden_finite` (the values of keys hidden from some row
    /// are all finite, so their zero weights add exactly 0); otherwise one product per row
    /// over its visible keys only, so that 0 · NaN never reaches a row that cannot see the
    /// NaN (slower, and only taken when the run is failing anyway).
    #[inline(always)]
    fn add_values(
        &self,
        acc: &mut [f32],
        weights: &[f32],
        (j0, nb): (usize, usize),
        hidden_finite: bool,
    ) {
        let (dv, rows) = (self.layout.v_dim, self.rows());
        let v = self.seq.v[self.g];
        if hidden_finite {
            faer::linalg::matmul::matmul(
                MatMut::from_column_major_slice_mut(acc, dv, rows),
                Accum::Add,
                v.subrows(j0, nb).transpose(),
                MatRef::from_column_major_slice(weights, nb, rows),
                1.0f32,
                Par::Seq,
            );
            return;
        }
        for r in 0..rows {
            let visible = self.visible(r, j0, nb);
            faer::linalg::matmul::matmul(
                MatMut::from_row_major_slice_mut(&mut acc[r * dv..][..dv], 1, dv),
                Accum::Add,
                MatRef::from_row_major_slice(&weights[r * nb..][..visible], 1, visible),
                v.subrows(j0, visible),
                1.0f32,
                Par::Seq,
            );
        }
    }
}
